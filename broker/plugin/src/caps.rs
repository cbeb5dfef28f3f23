//! Capabilities: what a plugin may call in the host, and the per-instance
//! store state that implements them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::midge::plugin::{clock, kafka, kv, log, publish, sql, types};
use crate::types::Message;
use crate::validate::{self, OutputLimits, View};

/// A boxed future, for the dyn-compatible backend traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the broker offers plugins: publishing into the broker.
///
/// `publish` is called from inside a plugin call, so it must not block: queue
/// the message (or spawn its publication) and return.
pub trait BrokerHandle: Send + Sync + 'static {
    /// Publish `message` on behalf of `plugin`. The host has checked the
    /// grant and the topic's validity. `Err` carries the reason shown to the
    /// plugin as `publish-error.rejected`.
    fn publish(&self, plugin: &str, message: Message) -> Result<(), String>;
}

pub use crate::bindings::midge::plugin::kafka::KafkaError;
pub use crate::bindings::midge::plugin::sql::{Rows as SqlRows, SqlError, SqlRejection, SqlValue};

/// A SQL backend (PostgreSQL) behind the `sql` capability. `plugin` is the
/// caller (for logs), `database` its grant. The broker provides one
/// (`midge::services::postgres`); a host without one answers granted
/// plugins `sql-error.unavailable`.
pub trait SqlBackend: Send + Sync + 'static {
    /// Run one statement; rows affected.
    fn execute<'a>(
        &'a self,
        plugin: &'a str,
        database: &'a str,
        statement: String,
        params: Vec<SqlValue>,
    ) -> BoxFuture<'a, Result<u64, SqlError>>;
    /// Run one query; its rows.
    fn query<'a>(
        &'a self,
        plugin: &'a str,
        database: &'a str,
        statement: String,
        params: Vec<SqlValue>,
    ) -> BoxFuture<'a, Result<SqlRows, SqlError>>;
    /// Queue a statement for batched execution; must not wait for it.
    fn enqueue(
        &self,
        plugin: &str,
        database: &str,
        statement: String,
        params: Vec<SqlValue>,
    ) -> Result<(), SqlError>;
}

/// A Kafka producer behind the `kafka` capability. The host has checked the
/// topic grant. The broker provides one (librdkafka, `midge::services::kafka`)
/// when `[plugins.kafka]` is set; without one, granted plugins get
/// `kafka-error.unavailable`.
pub trait KafkaBackend: Send + Sync + 'static {
    /// Queue one record (batching is the producer's); must not wait for delivery.
    fn produce<'a>(
        &'a self,
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'a, Result<(), KafkaError>>;
}

/// Where plugins' `log` records go instead of the broker's log (`midge
/// plugin run` prints them with each call's answer).
pub trait LogSink: Send + Sync + 'static {
    /// One record of `plugin`.
    fn log(&self, plugin: &str, level: LogLevel, message: &str);
}

pub use crate::bindings::midge::plugin::log::Level as LogLevel;

/// The broker-side services the host hands to plugins. All optional.
#[derive(Clone, Default)]
pub struct Services {
    /// Target of the `publish` capability.
    pub broker: Option<Arc<dyn BrokerHandle>>,
    /// Backend of the `sql` capability.
    pub sql: Option<Arc<dyn SqlBackend>>,
    /// Backend of the `kafka` capability.
    pub kafka: Option<Arc<dyn KafkaBackend>>,
    /// The broker's limits plugin output is checked against (default:
    /// MQTT's own).
    pub limits: OutputLimits,
    /// Where plugin log records go (default: the broker's `tracing` log,
    /// target `midge::plugin`).
    pub log: Option<Arc<dyn LogSink>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("broker", &self.broker.is_some())
            .field("sql", &self.sql.is_some())
            .field("kafka", &self.kafka.is_some())
            .field("limits", &self.limits)
            .field("log", &self.log.is_some())
            .finish()
    }
}

/// What one plugin was granted, resolved (kv tree opened).
pub(crate) struct Granted {
    pub plugin: Arc<str>,
    pub log: bool,
    pub kv: Option<sled::Tree>,
    pub kv_max_value: usize,
    pub publish: Vec<String>,
    pub sql: Option<String>,
    pub kafka: Vec<String>,
    pub services: Services,
}

/// Memory / table caps, remembering whether the cap was hit (so a trap that
/// follows is reported as out of memory).
pub(crate) struct Limiter {
    pub max_memory: usize,
    pub hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The data of one instance's store.
pub(crate) struct StoreState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: Limiter,
    pub granted: Arc<Granted>,
    /// Start and deadline of the current call (checked on each epoch tick).
    pub call_started: Instant,
    pub deadline: Duration,
    pub timed_out: bool,
    /// Capability calls of the current hook call that broke the output
    /// rules (see [`validate`]): refused to the plugin, and counted as a
    /// failure of the call once it returns.
    pub violations: Vec<String>,
    /// The SDK's panic hook logs the panic message (`panicked at ...`) just
    /// before the trap: kept here so the trap's error carries it.
    pub panic: Option<String>,
}

/// Longest panic message kept for a trap's error.
const PANIC_MAX: usize = 2000;

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StoreState {}

impl log::Host for StoreState {
    fn log(&mut self, level: log::Level, message: String) {
        if level == log::Level::Error && message.starts_with("panicked at ") {
            let mut m = message.clone();
            if m.len() > PANIC_MAX {
                let mut cut = PANIC_MAX;
                while !m.is_char_boundary(cut) {
                    cut -= 1;
                }
                m.truncate(cut);
            }
            self.panic = Some(m);
        }
        if !self.granted.log {
            return;
        }
        let plugin = &*self.granted.plugin;
        if let Some(sink) = &self.granted.services.log {
            sink.log(plugin, level, &message);
            return;
        }
        match level {
            log::Level::Trace => tracing::trace!(target: "midge::plugin", plugin, "{message}"),
            log::Level::Debug => tracing::debug!(target: "midge::plugin", plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "midge::plugin", plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "midge::plugin", plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "midge::plugin", plugin, "{message}"),
        }
    }
}

impl clock::Host for StoreState {
    fn now_millis(&mut self) -> u64 {
        now_millis()
    }

    fn monotonic_nanos(&mut self) -> u64 {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Wall-clock time in Unix milliseconds.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn kv_err(e: sled::Error) -> kv::KvError {
    kv::KvError::Storage(e.to_string())
}

impl StoreState {
    fn kv_tree(&self, key: &str) -> Result<&sled::Tree, kv::KvError> {
        let tree = self.granted.kv.as_ref().ok_or(kv::KvError::NotGranted)?;
        if key.is_empty() || key.len() > 1024 {
            return Err(kv::KvError::InvalidKey);
        }
        Ok(tree)
    }
}

impl kv::Host for StoreState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        let tree = self.kv_tree(&key)?;
        Ok(tree
            .get(key.as_bytes())
            .map_err(kv_err)?
            .map(|v| v.to_vec()))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::KvError> {
        let tree = self.kv_tree(&key)?;
        if value.len() > self.granted.kv_max_value {
            return Err(kv::KvError::ValueTooLarge);
        }
        tree.insert(key.as_bytes(), value).map_err(kv_err)?;
        Ok(())
    }

    fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        let tree = self.kv_tree(&key)?;
        Ok(tree.remove(key.as_bytes()).map_err(kv_err)?.is_some())
    }

    fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, kv::KvError> {
        let tree = self.granted.kv.as_ref().ok_or(kv::KvError::NotGranted)?;
        let mut keys = Vec::new();
        for item in tree.scan_prefix(prefix.as_bytes()).keys() {
            if keys.len() >= limit as usize {
                break;
            }
            let key = item.map_err(kv_err)?;
            keys.push(String::from_utf8_lossy(&key).into_owned());
        }
        Ok(keys)
    }

    fn increment(&mut self, key: String, delta: i64) -> Result<i64, kv::KvError> {
        let tree = self.kv_tree(&key)?;
        loop {
            let old = tree.get(key.as_bytes()).map_err(kv_err)?;
            let current = match &old {
                None => 0,
                Some(v) => {
                    let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                        kv::KvError::Storage(format!("value of {key} is not a counter"))
                    })?;
                    i64::from_be_bytes(bytes)
                }
            };
            let new = current.wrapping_add(delta);
            let swapped = tree
                .compare_and_swap(key.as_bytes(), old, Some(&new.to_be_bytes()[..]))
                .map_err(kv_err)?;
            if swapped.is_ok() {
                return Ok(new);
            }
        }
    }
}

impl publish::Host for StoreState {
    /// The message is checked as a client's PUBLISH would be (see
    /// [`validate`]); one that breaks the rules is refused to the plugin
    /// and counted as a failure of the hook call it was made in.
    fn publish(&mut self, message: Message) -> Result<(), publish::PublishError> {
        let granted = self.granted.clone();
        if granted.publish.is_empty() {
            return Err(publish::PublishError::NotGranted);
        }
        if let Err(problem) = validate::topic_name("topic", &message.topic) {
            self.violations
                .push(format!("publish capability: {problem}"));
            return Err(publish::PublishError::InvalidTopic);
        }
        if !granted
            .publish
            .iter()
            .any(|f| midge_protocol::topic::matches(f, &message.topic))
        {
            return Err(publish::PublishError::TopicNotGranted(message.topic));
        }
        let view = View {
            topic: &message.topic,
            payload: &message.payload,
            qos: message.qos,
            retain: message.retain,
            properties: Some(&message.properties),
        };
        if let Err(problem) =
            validate::message(&view, None, &granted.services.limits, &granted.publish)
        {
            let e = publish::PublishError::Rejected(problem.clone());
            self.violations
                .push(format!("publish capability: {problem}"));
            return Err(e);
        }
        let Some(broker) = &granted.services.broker else {
            return Err(publish::PublishError::Rejected(
                "no broker attached to the plugin host".into(),
            ));
        };
        broker
            .publish(&granted.plugin, message)
            .map_err(publish::PublishError::Rejected)
    }
}

impl sql::Host for StoreState {
    async fn execute(&mut self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError> {
        let (db, backend) = self.sql_backend()?;
        backend
            .execute(&self.granted.plugin, &db, statement, params)
            .await
    }

    async fn query(
        &mut self,
        statement: String,
        params: Vec<SqlValue>,
    ) -> Result<SqlRows, SqlError> {
        let (db, backend) = self.sql_backend()?;
        backend
            .query(&self.granted.plugin, &db, statement, params)
            .await
    }

    async fn enqueue(&mut self, statement: String, params: Vec<SqlValue>) -> Result<(), SqlError> {
        let (db, backend) = self.sql_backend()?;
        backend.enqueue(&self.granted.plugin, &db, statement, params)
    }
}

impl StoreState {
    fn sql_backend(&self) -> Result<(String, Arc<dyn SqlBackend>), SqlError> {
        let db = self.granted.sql.clone().ok_or(SqlError::NotGranted)?;
        let backend = self.granted.services.sql.clone().ok_or_else(|| {
            SqlError::Unavailable("no SQL backend is configured in this broker".into())
        })?;
        Ok((db, backend))
    }
}

impl kafka::Host for StoreState {
    async fn produce(
        &mut self,
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KafkaError> {
        let granted = self.granted.clone();
        if granted.kafka.is_empty() {
            return Err(KafkaError::NotGranted);
        }
        if !granted.kafka.contains(&topic) {
            return Err(KafkaError::TopicNotGranted(topic));
        }
        let Some(backend) = &granted.services.kafka else {
            return Err(KafkaError::Unavailable(
                "no Kafka producer is configured in this broker".into(),
            ));
        };
        backend.produce(topic, key, payload, headers).await
    }
}
