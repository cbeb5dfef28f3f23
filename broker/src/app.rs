//! Assembly: the one place where a configuration becomes a running broker.
//!
//! [`App::bind`] goes config -> listeners (bound, not accepting) -> store
//! (opened, its records read) -> plugins -> rules -> [`Broker`] (complete
//! when constructed) -> restore of the stored sessions -> bridges (their
//! buffers restored, subscribed) -> admission gate; [`App::run`] starts the
//! background tasks (rule action lanes, the plugin event task, bridge links,
//! `$SYS`, the admin API), lets the listeners accept until shutdown, then
//! takes everything down in order (clients kicked, bridge links closed,
//! plugins, databases and Kafka flushed, the store closed last).
//!
//! Nothing else builds a `Broker` for production use, and nothing mutates
//! one after it is built: a capability that needs a part of the broker is
//! given it here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::info;

use midge_plugin::{KafkaBackend, PluginError, PluginHost, PluginsConfig, Services};

use crate::broker::{Broker, Parts, PublishHandle};
use crate::rules::RuleEngine;
use crate::server::{Gate, Server, ServerError};
use crate::services::kafka::KafkaProducer;
use crate::services::postgres::PgSql;
use crate::store::{Snapshot, Store, StoreError};
use crate::Config;

/// Errors assembling the broker (each names its file, field, store or plugin).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener that cannot be bound, or an unusable TLS file.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The config's rules with the admin API's (its rules file) applied
    /// do not load, or that file is unreadable or corrupt.
    #[error("rules refused: {0}")]
    Rules(#[from] crate::rules::overlay::LoadError),
    #[error(transparent)]
    Plugins(#[from] PluginLoadError),
    #[error("persistence: {0}")]
    Store(#[from] StoreError),
    /// `[cluster]` is on and NATS cannot be reached or set up.
    #[error("{0}")]
    Cluster(#[from] midge_cluster::ClusterError),
    /// A `[[bridges]]` entry that cannot be set up.
    #[error("bridges: {0}")]
    Bridge(String),
    /// `allow_anonymous = false` and no plugin authenticates clients.
    #[error("{0}")]
    NoAuthenticator(String),
}

impl StartError {
    /// An error about a setting of the configuration file (a TLS file, no
    /// authenticator), which `midge serve` prefixes with the file's name.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            StartError::Server(ServerError::Tls { .. }) | StartError::NoAuthenticator(_)
        )
    }
}

/// A broker assembled from its configuration, listening but not yet
/// accepting.
#[derive(Debug)]
pub struct App {
    config: Config,
    broker: Arc<Broker>,
    server: Server,
    gate: Arc<Gate>,
    /// The `[[bridges]]`, set up (sessions subscribed, buffers restored);
    /// their links start in [`App::run`].
    bridges: Arc<crate::bridge::Registry>,
    /// The admin HTTP API listener and the token it requires.
    admin: Option<(TcpListener, String)>,
    /// The admin token was generated at start-up (no config, no env).
    admin_token_generated: bool,
    /// The config file, for the admin API's config reload.
    config_path: Option<std::path::PathBuf>,
}

impl App {
    /// Assembles the broker `config` describes and binds its listeners
    /// (port 0 picks a free port). The stored sessions are restored before
    /// this returns, so nothing is accepted against a half-restored state.
    pub async fn bind(config: Config) -> Result<App, StartError> {
        crate::server::descriptors::raise(config.limits.max_connections);
        let server = Server::bind(&config.listeners).await?;
        let admin_listen = config.admin.listen.filter(|_| config.admin.enabled);
        let (admin, admin_token_generated) = match admin_listen {
            Some(a) => {
                let listener = crate::server::listen("admin.listen", a).await?;
                let (token, generated) = crate::admin::resolve_token(config.admin.token.as_deref());
                (Some((listener, token)), generated)
            }
            None => (None, false),
        };
        let (store, snapshot) = open_store(&config).await?;
        // Plugins first: rules may call the functions they offer. Their
        // `publish` capability reaches the broker built below.
        let publish = PublishHandle::new();
        let rules = RuleEngine::default();
        let plugins = if config.plugins.plugins.is_empty() {
            None
        } else {
            let loaded = load_plugins(&config.plugins, &config.mqtt, publish.clone()).await?;
            info!(plugins = %crate::logging::list(&loaded.host.plugins()), "plugins loaded");
            rules.set_functions(Arc::new(crate::plugins::PluginFunctions(
                loaded.host.clone(),
            )));
            Some(loaded)
        };
        let (plugins, sql, kafka) = match plugins {
            Some(l) => (Some(l.host), l.sql, l.kafka),
            None => (None, None, None),
        };
        crate::auth::check_authenticator(config.limits.allow_anonymous, plugins.as_ref())
            .map_err(StartError::NoAuthenticator)?;
        // Clustered: persistent sessions' records follow their events.
        let session_sink = config
            .cluster
            .enabled
            .then(crate::cluster::sessions::Sink::new);
        let mut sinks: Vec<Arc<dyn crate::events::EventSink>> = Vec::new();
        if let Some(s) = &session_sink {
            sinks.push(s.clone());
        }
        let broker = Arc::new(Broker::new(Parts {
            config: config.mqtt.clone(),
            limits: config.limits.clone(),
            sys: config.sys.clone(),
            auth: Arc::new(crate::auth::NoAuth),
            rules,
            plugins,
            sql,
            kafka,
            store,
            sinks,
        }));
        publish.bind(&broker);
        // Before the restore: its subscriptions become the node's interest.
        crate::cluster::join(&config.cluster, &broker, session_sink.as_deref()).await?;
        crate::admin::cluster::serve_peers(&broker).await?;
        let mut snapshot = snapshot;
        let buffers = snapshot.as_mut().map(|s| std::mem::take(&mut s.bridges));
        if let Some(snap) = snapshot {
            restore(&broker, snap);
        }
        // After the restore, before any listener accepts: no message routed
        // from now on misses a bridge's buffer.
        let bridges = Arc::new(crate::bridge::Registry::default());
        bridges
            .setup(&broker, &config.bridges, buffers.unwrap_or_default())
            .map_err(StartError::Bridge)?;
        // The config's rules with the admin API's changes applied (after
        // the restore: the wills it publishes never reached rules).
        let api_rules = config.api_rules_path();
        crate::rules::overlay::load(&broker.rules, &config.rules, &api_rules)?;
        let overlay = broker.rules.overlay();
        if !overlay.is_empty() {
            info!(
                file = %api_rules.display(),
                rules = overlay.rules.len(),
                deleted = overlay.deleted.len(),
                "rules changed through the admin API applied"
            );
        }
        let gate = Arc::new(Gate::new(broker.clone(), &config.limits));
        Ok(App {
            config,
            broker,
            server,
            gate,
            bridges,
            admin,
            admin_token_generated,
            config_path: None,
        })
    }

    /// The config file the broker was started from: the admin API's
    /// `POST /api/v1/config/reload` reads it.
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> App {
        self.config_path = Some(path);
        self
    }

    /// Bound address of the admin HTTP API listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The bearer token the admin API requires (when it listens).
    pub fn admin_token(&self) -> Option<&str> {
        self.admin.as_ref().map(|(_, t)| t.as_str())
    }

    /// Whether [`App::admin_token`] was generated at start-up (neither
    /// `[admin] token` nor `MIDGE_ADMIN_TOKEN` set): the binary prints it.
    pub fn admin_token_generated(&self) -> bool {
        self.admin.is_some() && self.admin_token_generated
    }

    /// Bound address of the MQTT/TCP listener.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.server.mqtt_addr()
    }

    /// Bound address of the MQTT/WebSocket listener.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.server.ws_addr()
    }

    /// Bound address of the MQTT/TLS listener.
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.server.mqtts_addr()
    }

    /// Bound address of the MQTT/secure WebSocket listener.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.server.wss_addr()
    }

    /// The bridges (for embedding and tests).
    pub fn bridges(&self) -> Arc<crate::bridge::Registry> {
        self.bridges.clone()
    }

    /// Admission state: per-listener connection counts.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// The broker state (for embedding and tests).
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Serves until `shutdown` completes, then disconnects clients (5.0
    /// clients get DISCONNECT 0x8B), flushes what plugins queued, closes
    /// the store and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartError> {
        let listeners = crate::admin::Listeners::of(&self.server, self.gate.clone());
        let broker = self.broker;
        let mut tasks = JoinSet::new();
        // Rule actions run against the broker and its bridges (the
        // `bridge` action).
        let actions = Arc::new(crate::bridge::RuleActions::new(
            broker.clone(),
            self.bridges.clone(),
        ));
        for lane in broker.rules.start_lanes() {
            tasks.spawn(crate::rules::run_actions(actions.clone(), lane));
        }
        if let Some(host) = broker.plugins() {
            if let Some(mut rx) = broker.plugin_events.take_receiver() {
                // Raised while restoring, before the broker ran (wills of
                // expired sessions): plugins start with what happens from now.
                while rx.try_recv().is_ok() {}
                let span = tracing::info_span!("plugin_events");
                tasks.spawn(tracing::Instrument::instrument(
                    crate::events::plugin_event::run(host.clone(), rx),
                    span,
                ));
            }
        }
        if let Some((l, token)) = self.admin {
            let state = crate::admin::AdminState::new(
                broker.clone(),
                token,
                self.config.clone(),
                self.config_path.clone(),
            )
            .with_listeners(listeners)
            .with_bridges(self.bridges.clone());
            tasks.spawn(crate::admin::serve(l, Arc::new(state)));
        }
        self.server.spawn(&broker, &self.gate, &mut tasks);
        self.bridges.start(&broker);
        if self.config.sys.interval > 0 {
            let every = Duration::from_secs(self.config.sys.interval.into());
            tasks.spawn(crate::sys::run(broker.clone(), self.bridges.clone(), every));
        }
        shutdown.await;
        info!("shutting down");
        tasks.abort_all();
        stop(&broker, &self.bridges).await;
        Ok(())
    }
}

/// The plugin host and the native services it was given, as the broker keeps them.
#[derive(Debug)]
pub struct Loaded {
    pub host: PluginHost,
    /// The `sql` capability's databases (`[plugins.databases]`), for
    /// metrics and the shutdown flush.
    pub sql: Option<Arc<PgSql>>,
    /// The `kafka` capability's producer (`[plugins.kafka]`), for metrics
    /// and the shutdown flush.
    pub kafka: Option<Arc<KafkaProducer>>,
}

/// Errors loading the plugins.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    #[error("plugins: {0}")]
    Plugins(#[from] PluginError),
    /// A `[plugins.kafka]` setting the producer refused.
    #[error("{0}")]
    Kafka(#[from] crate::services::kafka::KafkaSetupError),
}

/// Loads the configured plugins; their `publish` capability publishes
/// through `publish`, their `sql` capability reaches `[plugins.databases]`
/// and their `kafka` capability produces through the `[plugins.kafka]`
/// producer (both built here).
pub async fn load_plugins(
    config: &PluginsConfig,
    mqtt: &crate::config::MqttConfig,
    publish: PublishHandle,
) -> Result<Loaded, PluginLoadError> {
    let sql = if config.databases.is_empty() {
        None
    } else {
        Some(Arc::new(
            PgSql::new(&config.databases).map_err(|e| PluginError::Config(e.to_string()))?,
        ))
    };
    let kafka = match &config.kafka {
        Some(k) => Some(Arc::new(KafkaProducer::new(k)?)),
        None => None,
    };
    let services = Services {
        broker: Some(Arc::new(publish)),
        sql: sql.clone().map(|s| s as Arc<dyn midge_plugin::SqlBackend>),
        kafka: kafka.clone().map(|k| k as Arc<dyn KafkaBackend>),
        limits: output_limits(mqtt),
        log: None,
    };
    let host = PluginHost::load(config, services).await?;
    Ok(Loaded { host, sql, kafka })
}

/// The limits plugin output is checked against: what the broker accepts
/// from a client.
pub fn output_limits(mqtt: &crate::config::MqttConfig) -> midge_plugin::OutputLimits {
    midge_plugin::OutputLimits {
        max_packet_size: mqtt.max_packet_size,
        max_qos: mqtt.max_qos,
        retain_available: mqtt.retain_available,
        max_function_result: mqtt.max_packet_size as usize,
    }
}

/// Opens the store when persistence is on, and reads every record.
async fn open_store(config: &Config) -> Result<(Option<Store>, Option<Snapshot>), StartError> {
    if !config.persistence.enabled {
        return Ok((None, None));
    }
    let p = config.persistence.clone();
    let (store, snap) = tokio::task::spawn_blocking(move || Store::open(&p))
        .await
        .map_err(|e| StoreError::Open {
            store: "store".into(),
            message: e.to_string(),
        })??;
    Ok((Some(store), Some(snap)))
}

/// Rebuilds the stored sessions in `broker` and logs what came back.
fn restore(broker: &Arc<Broker>, snap: Snapshot) {
    let started = std::time::Instant::now();
    let r = broker.restore(snap);
    info!(
        sessions = r.sessions,
        subscriptions = r.subscriptions,
        messages = r.messages,
        retained = r.retained,
        expired_sessions = r.expired_sessions,
        expired_messages = r.expired_messages,
        ms = started.elapsed().as_millis() as u64,
        "persistent state restored"
    );
}

/// The shutdown order: connections kicked and awaited (bounded), bridge
/// links closed (what the remote did not acknowledge stays buffered), then
/// what the plugins queued (kv, SQL, Kafka) flushed, then the store closed,
/// so the sessions' and bridges' last writes land.
async fn stop(broker: &Broker, bridges: &crate::bridge::Registry) {
    let waits = broker.kick_all(midge_protocol::reason::SERVER_SHUTTING_DOWN);
    let all = futures_util::future::join_all(waits);
    let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
    bridges.stop().await;
    if let Some(plugins) = broker.plugins() {
        if let Err(e) = plugins.flush().await {
            tracing::error!("plugins: {e}");
        }
    }
    if let Some(sql) = &broker.sql {
        // What plugins enqueued (e.g. messages being archived), bounded.
        let flushed = sql.flush(Duration::from_secs(10)).await;
        info!(complete = flushed, "sql capability queues flushed");
    }
    if let Some(kafka) = broker.kafka.clone() {
        // Records plugins queued before the clients left, bounded.
        let flush = move || kafka.flush(Duration::from_secs(5));
        let _ = tokio::task::spawn_blocking(flush).await;
    }
    if let Some(store) = broker.store.clone() {
        // Everything the sessions wrote on the way out, then stop.
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        info!("store closed");
    }
}
