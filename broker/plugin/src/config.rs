//! Plugin configuration: the `[plugins]` section of the broker configuration.
//!
//! ```toml
//! [plugins]
//! kv_path = "data/plugin-kv"      # sled directory behind every kv grant
//! epoch_tick_ms = 2               # deadline granularity
//!
//! [plugins.databases.main]       # a database for `grants.sql = "main"`
//! url = "host=127.0.0.1 port=5432 user=midge dbname=archive"   # libpq-style or postgres:// URL
//! connections = 2                 # connections kept open (queries, batches)
//! batch_max_rows = 1000           # rows per multi-row INSERT built from `enqueue`
//! batch_linger_ms = 5             # wait this long for more rows before a batch goes
//! queue_capacity = 100000         # queued statements; beyond it `enqueue` answers queue-full
//! timeout_ms = 5000               # per statement (execute, query, a batch)
//!
//! [plugins.kafka]                 # the producer behind `grants.kafka` topics
//! brokers = "127.0.0.1:9092"      # bootstrap.servers
//! linger_ms = 5                   # linger.ms: producer batching
//! queue_capacity = 100000         # queue.buffering.max.messages; beyond it queue-full
//! properties = { "compression.type" = "lz4" }   # any other librdkafka producer property
//!
//! [[plugins.plugin]]
//! name = "auth"                   # unique; used in logs, metrics, reloads
//! path = "plugins/auth_password.wasm"
//! config = { password_file = "/config/passwd", acl_default = "deny" }  # handed to init() as JSON
//!
//! [plugins.plugin.grants]
//! log = true                      # default true
//! kv = "auth"                     # kv namespace (none: no kv)
//! publish = ["alerts/#"]          # topic filters it may publish to (empty: none)
//! sql = "main"                    # database name (none: no sql)
//! kafka = ["archive"]             # Kafka topics it may produce to (empty: none)
//! dirs = [{ host = "/etc/midge", guest = "/config" }]   # read-only directories
//!
//! [plugins.plugin.limits]
//! memory_mib = 64                 # per instance
//! deadline_ms = 100               # per call
//! init_deadline_ms = 5000         # per instance start (init)
//! max_instances = 4               # warm instances kept / concurrent calls
//! queue_timeout_ms = 100          # wait for a free instance, then "busy"
//! suspend_after = 5               # consecutive failures before suspension
//! suspend_secs = 60               # suspension length
//!
//! [plugins.plugin.failure]        # "open": skip the plugin; "closed": refuse
//! authenticate = "closed"
//! authorize = "closed"
//! on_publish = "open"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The `[plugins]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// sled directory backing every `kv` grant (opened only if one exists).
    pub kv_path: PathBuf,
    /// Largest value a plugin may store in kv, in bytes.
    pub kv_max_value_bytes: usize,
    /// Epoch tick in milliseconds: deadlines are checked (and long calls
    /// yield to the async runtime) at this granularity.
    pub epoch_tick_ms: u64,
    /// The plugins, in chain order.
    #[serde(rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// PostgreSQL databases behind `sql` grants, by name.
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// The Kafka producer behind `kafka` grants.
    pub kafka: Option<KafkaConfig>,
}

impl PluginsConfig {
    /// The host-wide settings of `self` that differ from `running`'s, by
    /// name: they are fixed for a host's life (the kv store, the epoch
    /// ticker, the database pools and the Kafka producer are started once),
    /// so they take effect after a restart. The `[[plugins.plugin]]` entries
    /// apply live ([`crate::PluginHost::apply`]).
    pub fn restart_needed(&self, running: &PluginsConfig) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |changed: bool, name| {
            if changed {
                out.push(name);
            }
        };
        check(self.kv_path != running.kv_path, "plugins.kv_path");
        check(
            self.kv_max_value_bytes != running.kv_max_value_bytes,
            "plugins.kv_max_value_bytes",
        );
        check(
            self.epoch_tick_ms != running.epoch_tick_ms,
            "plugins.epoch_tick_ms",
        );
        check(self.databases != running.databases, "plugins.databases");
        check(self.kafka != running.kafka, "plugins.kafka");
        out
    }
}

/// One `[plugins.databases.NAME]` entry: a PostgreSQL database plugins
/// granted `sql = "NAME"` use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection string, libpq key=value form or a `postgres://` URL.
    pub url: String,
    /// Connections kept open.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Most rows in one multi-row statement built from `enqueue`.
    #[serde(default = "default_batch_max_rows")]
    pub batch_max_rows: usize,
    /// How long a batch waits for more rows before it is sent.
    #[serde(default = "default_linger_ms")]
    pub batch_linger_ms: u64,
    /// Statements `enqueue` may queue; beyond it the plugin gets `queue-full`.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Per statement (execute, query, a batch).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// `[plugins.kafka]`: the one producer behind every `kafka` grant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// `linger.ms`: how long the producer waits to fill a batch.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// `queue.buffering.max.messages`; beyond it the plugin gets `queue-full`.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Any other librdkafka producer property, passed through.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_connections() -> usize {
    2
}
fn default_batch_max_rows() -> usize {
    1000
}
fn default_linger_ms() -> u64 {
    5
}
fn default_queue_capacity() -> usize {
    100_000
}
fn default_timeout_ms() -> u64 {
    5000
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            kv_path: PathBuf::from("data/plugin-kv"),
            kv_max_value_bytes: 1 << 20,
            epoch_tick_ms: 2,
            plugins: Vec::new(),
            databases: BTreeMap::new(),
            kafka: None,
        }
    }
}

/// One `[[plugins.plugin]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unique name (logs, metrics, reload).
    pub name: String,
    /// The component file (`.wasm`).
    pub path: PathBuf,
    /// Skip this entry when false.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Free-form configuration handed to the plugin's `init` as JSON text.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Capabilities granted.
    #[serde(default)]
    pub grants: Grants,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// What a failed call (trap, timeout, out of memory, invalid output,
    /// busy, suspended) answers, per hook.
    #[serde(default)]
    pub failure: FailurePolicies,
}

fn yes() -> bool {
    true
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl PluginConfig {
    /// A plugin entry with default grants, limits and policies.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        PluginConfig {
            name: name.into(),
            path: path.into(),
            enabled: true,
            config: empty_object(),
            grants: Grants::default(),
            limits: Limits::default(),
            failure: FailurePolicies::default(),
        }
    }
}

/// Capabilities granted to one plugin. Nothing but `log` (and the clock) is
/// granted by default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// Plugin log records reach the broker's log.
    pub log: bool,
    /// kv namespace; plugins granted the same namespace share it.
    pub kv: Option<String>,
    /// Topic filters the plugin may publish to (the `publish` capability).
    /// They also let an `on-publish` answer move a message onto a topic
    /// starting with `$`, which is refused otherwise; a filter starting
    /// with a wildcard never matches such topics, so that grant is explicit
    /// (e.g. `"$SYS/brokers/+/app/#"`).
    pub publish: Vec<String>,
    /// Database name handed to the SQL backend.
    pub sql: Option<String>,
    /// Kafka topics the plugin may produce to.
    pub kafka: Vec<String>,
    /// Host directories mounted read-only into the plugin.
    pub dirs: Vec<DirGrant>,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            log: true,
            kv: None,
            publish: Vec::new(),
            sql: None,
            kafka: Vec::new(),
            dirs: Vec::new(),
        }
    }
}

/// A host directory mounted read-only at `guest` inside the plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the broker's machine.
    pub host: PathBuf,
    /// Path the plugin sees (e.g. "/config").
    pub guest: String,
}

/// Resource limits of one plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap per instance, in MiB.
    pub memory_mib: u64,
    /// Deadline of one hook call, in milliseconds.
    pub deadline_ms: u64,
    /// Deadline of instantiation plus `init`, in milliseconds.
    pub init_deadline_ms: u64,
    /// Maximum number of instances (concurrent calls) of this plugin.
    pub max_instances: usize,
    /// How long a call waits for a free instance before failing as busy.
    pub queue_timeout_ms: u64,
    /// Failures in a row (trap, timeout, out of memory, invalid output)
    /// before the plugin is suspended, counted per hook and added up over
    /// the hooks: a hook's success ends its own run only, so a plugin
    /// failing one hook every time is suspended however often its other
    /// hooks answer. 0: never suspend.
    pub suspend_after: u32,
    /// How long a suspension lasts, in seconds; afterwards the next call is
    /// tried again (and one more failure suspends again). A reload lifts it.
    pub suspend_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            deadline_ms: 100,
            init_deadline_ms: 5000,
            max_instances: 4,
            queue_timeout_ms: 100,
            suspend_after: 5,
            suspend_secs: 60,
        }
    }
}

/// Answer of a hook whose call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Skip the failed plugin: as if it had answered `ignore` / `pass`.
    Open,
    /// Refuse: authenticate denies (0x88 server unavailable), authorize
    /// denies, on-publish denies the message (0x80 unspecified error).
    Closed,
}

/// Failure policy per hook. Events and rule outputs have no answer: their
/// failures are only logged and counted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailurePolicies {
    /// Default `closed`.
    pub authenticate: FailurePolicy,
    /// Default `closed`.
    pub authorize: FailurePolicy,
    /// Default `open`.
    pub on_publish: FailurePolicy,
}

impl Default for FailurePolicies {
    fn default() -> Self {
        FailurePolicies {
            authenticate: FailurePolicy::Closed,
            authorize: FailurePolicy::Closed,
            on_publish: FailurePolicy::Open,
        }
    }
}
