//! # midge-plugin: the WebAssembly plugin host of the Midge broker
//!
//! Plugins are WebAssembly components of the world `midge:plugin/plugin`
//! (`wit/midge-plugin.wit`, written with the `midge-sdk` crate). The host
//!
//! - compiles each plugin once at load (`Component`, `InstancePre`), starts
//!   one instance and runs its `init` to get its manifest;
//! - keeps a pool of warm instances per plugin (at most `max_instances`,
//!   started on demand, each initialised once) and calls a plugin only when
//!   its manifest names the hook (and, for `on-publish`, a filter matches);
//! - enforces limits per plugin: a memory cap per instance, a deadline per
//!   call (epoch interruption; long calls also yield to the async runtime
//!   every tick), an instance count;
//! - turns a trap, timeout or memory exhaustion into a [`PluginError`]
//!   naming plugin and hook, counts it in [`PluginMetrics`], answers per the
//!   hook's [`FailurePolicy`], discards the instance, and suspends a plugin
//!   after `suspend_after` consecutive failures;
//! - gives plugins WASI without files (except granted read-only
//!   directories), network or environment, plus the capabilities granted in
//!   the configuration: `log`, `clock`, `kv` (sled), `publish` (through
//!   [`BrokerHandle`]), `sql` and `kafka` (through [`SqlBackend`] /
//!   [`KafkaBackend`], which the broker provides; without one, granted
//!   plugins get `unavailable`);
//! - reloads a changed component by loading the new one and swapping it in
//!   atomically; a failed load keeps the old one;
//! - applies a new `[plugins]` configuration live ([`PluginHost::apply`]):
//!   changed entries (config, limits, grants, policies, file) are rebuilt
//!   and swapped in, unchanged ones keep running untouched, new ones are
//!   added, removed ones leave the chain, the chain follows the new order,
//!   and an entry that fails keeps its previous version. Host-wide settings
//!   (kv store, epoch tick, databases, Kafka) are fixed for the host's life.
//!
//! ```ignore
//! let host = PluginHost::load(&config.plugins, Services { broker: Some(handle), ..Default::default() }).await?;
//! if host.has_hook(HookSet::AUTHENTICATE) {
//!     match host.authenticate(&request).await.decision { .. }
//! }
//! if host.wants_publish(&topic) {
//!     match host.on_publish(&message, Some(&client)).await.decision { .. }
//! }
//! ```

mod batch;
mod bindings;
mod caps;
pub mod config;
mod error;
mod host;
mod slot;
#[doc(hidden)]
pub mod testing;
pub mod types;
mod validate;

pub use batch::{BatchItem, BatchVerdict, Changed};
pub use caps::{
    now_millis, BoxFuture, BrokerHandle, KafkaBackend, KafkaError, LogLevel, LogSink, Services,
    SqlBackend, SqlError, SqlRejection, SqlRows, SqlValue,
};
pub use config::{
    DatabaseConfig, DirGrant, FailurePolicies, FailurePolicy, Grants, KafkaConfig, Limits,
    PluginConfig, PluginsConfig,
};
pub use error::{Hook, PluginError};
pub use host::{
    ApplyReport, PluginHost, PluginMetrics, FAIL_CLOSED_AUTH_REASON, FAIL_CLOSED_PUBLISH_REASON,
};
pub use types::{Outcome, PublishVerdict};
pub use validate::OutputLimits;
