//! The broker: the state every connection shares, split by concern.
//!
//! - `publish.rs`: the publish pipeline (rules, retain, route, enqueue),
//!   entered by [`Broker::publish`] and by a client's connection through
//!   [`Broker::publish_from_client`];
//! - `registry.rs`: which session each client id has, attach (with
//!   takeover) and detach, expiry, wills, subscriptions;
//! - `restore.rs`: sessions and retained messages rebuilt from the durable
//!   store at start;
//! - `events.rs`: the event fan-out, [`Broker::emit`];
//! - `stats.rs`: the counters `/metrics` and `$SYS` read;
//! - `handle.rs`: [`PublishHandle`], what plugins hold instead of the
//!   broker (rule actions see it through [`crate::rules::ActionContext`]).
//!
//! A `Broker` is complete when constructed ([`Broker::new`] from [`Parts`],
//! which the `app` module assembles from the configuration).

mod events;
mod handle;
mod publish;
mod registry;
mod restore;
mod stats;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;

pub use handle::{PublishHandle, Unavailable};
pub use registry::Attached;
pub(crate) use restore::rebase_expiry;
pub use restore::RestoreStats;
pub use stats::{ReasonCounters, Stats};

use crate::auth::{AuthHook, NoAuth};
use crate::config::MqttConfig;
use crate::message::Message;
use crate::router::{RetainedStore, Router};
use crate::rules::RuleEngine;
use crate::session::{QueueLimits, Session};
use crate::store::Store;

/// What the broker calls on its cluster link (the cluster module's `Node`, set
/// once by `cluster::join` when `[cluster]` is on; when it is off each call
/// site costs one `OnceLock` load). The cluster module sits above the
/// broker: it reaches the broker, the broker reaches it only through this.
pub trait ClusterLink: Send + Sync + std::fmt::Debug {
    /// The NATS side: ownership, membership, metrics.
    fn cluster(&self) -> &Arc<midge_cluster::Cluster>;
    /// A message published on this node, after it was retained and before
    /// local routing: for the subscribers on other nodes.
    fn forward(&self, msg: &Arc<Message>);
    /// The will of `client_id`'s connection here may have changed (it
    /// attached or detached).
    fn will_changed(&self, client_id: &Arc<str>);
    /// The interest barrier new connections' SUBACKs wait on.
    fn interest_sync(&self) -> Option<Arc<crate::message::InterestSync>> {
        None
    }
    /// What new connections' acks wait for besides JetStream.
    fn ack_gate(&self) -> Option<Arc<dyn crate::message::AckGate>> {
        None
    }
}

/// Shared broker state, complete when constructed ([`Broker::new`]; the
/// `app` module assembles its parts from the configuration).
#[derive(Debug)]
pub struct Broker {
    pub config: MqttConfig,
    /// `[limits]` that apply per client (the listeners apply the others).
    pub limits: crate::config::LimitsConfig,
    /// `[sys]`: `$SYS` interval and client notices.
    pub sys: crate::config::SysConfig,
    /// Decides who may connect (CONNECT and AUTH).
    pub auth: Arc<dyn AuthHook>,
    /// SQL rules over publishes and events.
    pub rules: RuleEngine,
    /// The Wasm plugins, when `[plugins]` configures any.
    plugins: Option<midge_plugin::PluginHost>,
    /// Events for plugins' `on-event`, drained by one task
    /// (`events::plugin_event::run`, started by `App::run`).
    pub plugin_events: crate::events::plugin_event::EventQueue,
    /// The `sql` capability's databases, when `[plugins.databases]` has any
    /// (metrics, flush at shutdown).
    pub sql: Option<Arc<crate::services::postgres::PgSql>>,
    /// The producer behind plugins' `kafka` capability, when
    /// `[plugins.kafka]` is set (metrics, flush at shutdown).
    pub kafka: Option<Arc<crate::services::kafka::KafkaProducer>>,
    pub router: Router,
    pub retained: RetainedStore,
    pub stats: Stats,
    /// The durable store, when persistence is on.
    pub store: Option<Store>,
    /// The cluster link, when `[cluster]` is on (set once at start-up).
    pub cluster: std::sync::OnceLock<Arc<dyn ClusterLink>>,
    /// Listeners to the event fan-out beyond rules, plugins and `$SYS`.
    sinks: events::Sinks,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    next_conn_id: AtomicU64,
}

/// What a [`Broker`] is built from. `Parts::default()` is a broker with
/// the default `[mqtt]` settings and nothing else (no store, no plugins,
/// no rules): what unit tests use.
#[derive(Debug)]
pub struct Parts {
    pub config: MqttConfig,
    pub limits: crate::config::LimitsConfig,
    pub sys: crate::config::SysConfig,
    pub auth: Arc<dyn AuthHook>,
    pub rules: RuleEngine,
    pub plugins: Option<midge_plugin::PluginHost>,
    pub sql: Option<Arc<crate::services::postgres::PgSql>>,
    pub kafka: Option<Arc<crate::services::kafka::KafkaProducer>>,
    pub store: Option<Store>,
    /// Listeners to the event fan-out ([`crate::events::EventSink`]).
    pub sinks: Vec<Arc<dyn crate::events::EventSink>>,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            config: MqttConfig::default(),
            limits: Default::default(),
            sys: Default::default(),
            auth: Arc::new(NoAuth),
            rules: RuleEngine::default(),
            plugins: None,
            sql: None,
            kafka: None,
            store: None,
            sinks: Vec::new(),
        }
    }
}

impl Broker {
    pub fn new(parts: Parts) -> Broker {
        let Parts {
            config,
            limits,
            sys,
            auth,
            rules,
            plugins,
            sql,
            kafka,
            store,
            sinks,
        } = parts;
        let budget = crate::router::RetainedBudget {
            max_topics: config.max_retained,
            max_bytes: config.max_retained_bytes,
        };
        Broker {
            store,
            config,
            limits,
            sys,
            auth,
            rules,
            plugins,
            plugin_events: Default::default(),
            sql,
            kafka,
            router: Router::default(),
            retained: RetainedStore::new(budget),
            stats: Stats::default(),
            cluster: std::sync::OnceLock::new(),
            sinks: events::Sinks::new(sinks),
            sessions: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
        }
    }

    /// The plugin host, when `[plugins]` configures any plugin.
    pub fn plugins(&self) -> Option<&midge_plugin::PluginHost> {
        self.plugins.as_ref()
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.config.max_queued_messages,
            max_bytes: self.config.max_queued_bytes,
            policy: self.config.queue_full_policy,
        }
    }
}
