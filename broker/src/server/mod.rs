//! Listeners (TCP, WebSocket, and both over TLS) and connection tasks.
//!
//! Each listener has an accept loop that only accepts, asks the [`Gate`]
//! whether the connection is within `[limits]`, and spawns the connection's
//! task; TLS and WebSocket handshakes run in that task, within the connect
//! timeout, and then `connection::serve` takes the byte stream.

mod connection;
mod enhanced_auth;
mod limits;
mod tls;
mod writer;
mod ws;

pub use connection::ConnInfo;
pub use limits::{Gate, Listener, Refusal};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::store::Store;
use crate::Config;

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The config's rules with the admin API's (its rules file) applied
    /// do not load, or that file is unreadable or corrupt.
    #[error("rules refused: {0}")]
    Rules(#[from] crate::rules::overlay::LoadError),
    #[error("plugins: {0}")]
    Plugins(#[from] midge_plugin::PluginError),
    /// A `[plugins.kafka]` setting the producer refused.
    #[error("{0}")]
    Kafka(#[from] crate::services::kafka::KafkaSetupError),
    /// `allow_anonymous = false` and no plugin authenticates clients.
    #[error("{0}")]
    NoAuthenticator(String),
    #[error("persistence: {0}")]
    Store(#[from] crate::store::StoreError),
    /// `[cluster]` is on and NATS cannot be reached or set up.
    #[error("{0}")]
    Cluster(#[from] midge_cluster::ClusterError),
    /// A TLS certificate or key file that cannot be used.
    #[error("{field}: {path}: {message}")]
    Tls {
        field: &'static str,
        path: String,
        message: String,
    },
}

impl ServerError {
    /// An error about a setting of the configuration file (a TLS file, no
    /// authenticator), which `midge serve` prefixes with the file's name.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            ServerError::Tls { .. } | ServerError::NoAuthenticator(_)
        )
    }
}

/// Loads `[listeners.tls]` (certificate, key, client CA) as `serve` would,
/// for `midge check`: `None` when it loads or is not used.
pub fn check_tls(config: &Config) -> Option<String> {
    let l = &config.listeners;
    match &l.tls {
        Some(t) if l.mqtts.is_some() || l.wss.is_some() => {
            tls::Tls::load(t).err().map(|e| e.to_string())
        }
        _ => None,
    }
}

/// A bound, not yet running broker.
#[derive(Debug)]
pub struct Server {
    config: Config,
    broker: Arc<Broker>,
    mqtt: Option<TcpListener>,
    ws: Option<TcpListener>,
    mqtts: Option<TcpListener>,
    wss: Option<TcpListener>,
    /// Loaded when `mqtts` or `wss` is set.
    tls: Option<tls::Tls>,
    gate: Arc<Gate>,
    /// The admin HTTP API listener and the token it requires.
    admin: Option<(TcpListener, String)>,
    /// The admin token was generated at start-up (no config, no env).
    admin_token_generated: bool,
    /// The config file, for the admin API's config reload.
    config_path: Option<std::path::PathBuf>,
}

/// A listener's address for the log (empty if the socket cannot say).
fn local(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// Pending connections the kernel queues per listener before `accept`
/// (std's default is 128: a reconnect storm beyond it waits for SYN retries).
const BACKLOG: u32 = 4096;

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let err = |source| ServerError::Bind { what, addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    #[cfg(unix)]
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)
}

impl Server {
    /// Binds the configured listeners (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        // Certificates first: a bad file is reported before any port is taken.
        let l = &config.listeners;
        let tls = match (&l.tls, l.mqtts.is_some() || l.wss.is_some()) {
            (Some(t), true) => Some(tls::Tls::load(t)?),
            (None, true) => {
                return Err(ServerError::Tls {
                    field: "listeners.tls",
                    path: "(not set)".into(),
                    message: "must be set (cert and key) when `mqtts` or `wss` is".into(),
                })
            }
            (_, false) => None,
        };
        let mqtt = match config.listeners.mqtt {
            Some(a) => Some(bind("mqtt", a).await?),
            None => None,
        };
        let ws = match config.listeners.ws {
            Some(a) => Some(bind("websocket", a).await?),
            None => None,
        };
        let mqtts = match config.listeners.mqtts {
            Some(a) => Some(bind("mqtts", a).await?),
            None => None,
        };
        let wss = match config.listeners.wss {
            Some(a) => Some(bind("wss", a).await?),
            None => None,
        };
        let admin_listen = config.admin.listen.filter(|_| config.admin.enabled);
        let (admin, admin_token_generated) = match admin_listen {
            Some(a) => {
                let listener = bind("admin.listen", a).await?;
                let (token, generated) = crate::admin::resolve_token(config.admin.token.as_deref());
                (Some((listener, token)), generated)
            }
            None => (None, false),
        };
        // The store is read and every session restored before any listener
        // accepts: no publish is routed against a half-restored table.
        let (store, snapshot) = if config.persistence.enabled {
            let p = config.persistence.clone();
            let (store, snap) = tokio::task::spawn_blocking(move || Store::open(&p))
                .await
                .map_err(|e| {
                    ServerError::Store(crate::store::StoreError::Open {
                        store: "store".into(),
                        message: e.to_string(),
                    })
                })??;
            (Some(store), Some(snap))
        } else {
            (None, None)
        };
        let mut broker = Broker::with_store(config.mqtt.clone(), store);
        broker.limits = config.limits.clone();
        broker.sys = config.sys.clone();
        let broker = Arc::new(broker);
        // Before the restore: its subscriptions become the node's interest.
        crate::cluster::join(&config.cluster, &broker).await?;
        if let Some(snap) = snapshot {
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
        // Plugins first: rules may call the functions they offer.
        if !config.plugins.plugins.is_empty() {
            let host = crate::plugins::load(&config.plugins, &broker).await?;
            info!(plugins = %crate::logging::list(&host.plugins()), "plugins loaded");
            broker
                .rules
                .set_functions(Arc::new(crate::plugins::PluginFunctions(host.clone())));
            let _ = broker.plugins.set(host);
        }
        crate::auth::check_authenticator(&config.limits, broker.plugins.get())
            .map_err(ServerError::NoAuthenticator)?;
        // The config's rules with the admin API's changes applied.
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
        Ok(Server {
            broker,
            config,
            mqtt,
            ws,
            mqtts,
            wss,
            tls,
            gate,
            admin,
            admin_token_generated,
            config_path: None,
        })
    }

    /// The config file the broker was started from: the admin API's
    /// `POST /api/v1/config/reload` reads it.
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Server {
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

    /// Whether [`Server::admin_token`] was generated at start-up (neither
    /// `[admin] token` nor `MIDGE_ADMIN_TOKEN` set): the binary prints it.
    pub fn admin_token_generated(&self) -> bool {
        self.admin.is_some() && self.admin_token_generated
    }

    /// Bound address of the MQTT/TCP listener.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Bound address of the MQTT/WebSocket listener.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Bound address of the MQTT/TLS listener.
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.mqtts.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Bound address of the MQTT/secure WebSocket listener.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss.as_ref().and_then(|l| l.local_addr().ok())
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
    /// clients get DISCONNECT 0x8B) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let mut tasks = tokio::task::JoinSet::new();
        for lane in self.broker.rules.start_lanes() {
            tasks.spawn(crate::rules::run_actions(self.broker.clone(), lane));
        }
        if let Some(host) = self.broker.plugins.get() {
            if let Some(rx) = self.broker.plugin_events.take_receiver() {
                let span = tracing::info_span!("plugin_events");
                tasks.spawn(tracing::Instrument::instrument(
                    crate::plugins::run_events(host.clone(), rx),
                    span,
                ));
            }
        }
        let path: Arc<[String]> = self.config.listeners.ws_paths.as_slice().into();
        if let Some(l) = self.mqtt {
            info!(addr = %local(&l), "MQTT listener up");
            let b = self.broker.clone();
            tasks.spawn(accept_loop(
                l,
                Listener::Mqtt,
                self.gate.clone(),
                move |s, i| plain(b.clone(), s, i),
            ));
        }
        if let Some((l, token)) = self.admin {
            let state = crate::admin::AdminState::new(
                self.broker.clone(),
                token,
                self.config.clone(),
                self.config_path.clone(),
            );
            tasks.spawn(crate::admin::serve(l, Arc::new(state)));
        }
        if let Some(l) = self.ws {
            info!(addr = %local(&l), paths = %path.join(", "), "WebSocket listener up");
            let (b, p) = (self.broker.clone(), path.clone());
            tasks.spawn(accept_loop(
                l,
                Listener::Ws,
                self.gate.clone(),
                move |s, i| websocket(b.clone(), s, p.clone(), i),
            ));
        }
        if let (Some(l), Some(t)) = (self.mqtts, self.tls.clone()) {
            info!(addr = %local(&l), "MQTT/TLS listener up");
            let b = self.broker.clone();
            tasks.spawn(accept_loop(
                l,
                Listener::Mqtts,
                self.gate.clone(),
                move |s, i| mqtts(b.clone(), t.clone(), s, i),
            ));
        }
        if let (Some(l), Some(t)) = (self.wss, self.tls) {
            info!(addr = %local(&l), paths = %path.join(", "), "secure WebSocket listener up");
            let b = self.broker.clone();
            tasks.spawn(accept_loop(
                l,
                Listener::Wss,
                self.gate.clone(),
                move |s, i| wss(b.clone(), t.clone(), s, path.clone(), i),
            ));
        }
        if self.config.sys.interval > 0 {
            let every = Duration::from_secs(self.config.sys.interval.into());
            tasks.spawn(crate::sys::run(self.broker.clone(), every));
        }
        shutdown.await;
        info!("shutting down");
        tasks.abort_all();
        let waits = self
            .broker
            .kick_all(midge_protocol::reason::SERVER_SHUTTING_DOWN);
        let all = futures_util::future::join_all(waits);
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
        if let Some(plugins) = self.broker.plugins.get() {
            if let Err(e) = plugins.flush().await {
                tracing::error!("plugins: {e}");
            }
        }
        if let Some(sql) = self.broker.sql.get() {
            // What plugins enqueued (e.g. messages being archived), bounded.
            let flushed = sql.flush(Duration::from_secs(10)).await;
            info!(complete = flushed, "sql capability queues flushed");
        }
        if let Some(kafka) = self.broker.kafka.get().cloned() {
            // Records plugins queued before the clients left, bounded.
            let flush = move || kafka.flush(Duration::from_secs(5));
            let _ = tokio::task::spawn_blocking(flush).await;
        }
        if let Some(store) = self.broker.store.clone() {
            // Everything the sessions wrote on the way out, then stop.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
            info!("store closed");
        }
        Ok(())
    }
}

/// Accepts on `listener` until aborted. Per socket: admission by `gate`
/// (cheap, no I/O), then `handle` runs in the connection's own task, which
/// holds the admitted slot until it ends.
async fn accept_loop<F, Fut>(listener: TcpListener, kind: Listener, gate: Arc<Gate>, handle: F)
where
    F: Fn(TcpStream, ConnInfo) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let admitted = gate.admit(kind);
                let info = ConnInfo {
                    peer,
                    listener: kind,
                    deadline: Instant::now() + gate.connect_timeout,
                    refusal: admitted.as_ref().err().copied(),
                    slot: admitted.ok(),
                    cert_username: None,
                };
                // The handshake's task; the session's own task (which then
                // holds the slot) is spawned once CONNECT is accepted.
                tokio::spawn(handle(stream, info));
            }
            Err(e) => {
                warn!(error = %e, listener = kind.name(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `mqtt`: the socket as it is.
async fn plain(broker: Arc<Broker>, stream: TcpStream, info: ConnInfo) {
    let (rd, wr) = stream.into_split();
    connection::serve(broker, rd, wr, info).await;
}

/// `ws` (and `wss` after TLS): the WebSocket upgrade, then the bridged byte stream.
async fn websocket<S>(broker: Arc<Broker>, stream: S, path: Arc<[String]>, info: ConnInfo)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let upgrade = ws::accept(stream, path, info.peer);
    match tokio::time::timeout_at(info.deadline, upgrade).await {
        Ok(Some(s)) => {
            let (rd, wr) = tokio::io::split(s);
            connection::serve(broker, rd, wr, info).await;
        }
        Ok(None) => {}
        Err(_) => connection::connect_timed_out(&broker, info.peer, info.listener),
    }
}

/// The TLS handshake of `mqtts` and `wss`, within the connect timeout.
async fn handshake(
    broker: &Broker,
    tls: &tls::Tls,
    stream: TcpStream,
    info: &mut ConnInfo,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout_at(info.deadline, tls.accept(stream)).await {
        Ok(Ok(a)) => {
            if tls.cn_as_username() {
                info.cert_username = Some(a.cn);
            }
            Some(a.stream)
        }
        Ok(Err(e)) => {
            crate::ratelog::tls_failure(info.peer, info.listener.name(), &e);
            None
        }
        Err(_) => {
            connection::connect_timed_out(broker, info.peer, info.listener);
            None
        }
    }
}

/// `mqtts`: TLS, then MQTT.
async fn mqtts(broker: Arc<Broker>, tls: tls::Tls, stream: TcpStream, mut info: ConnInfo) {
    if let Some(s) = Box::pin(handshake(&broker, &tls, stream, &mut info)).await {
        drop(tls);
        let (rd, wr) = tokio::io::split(s);
        connection::serve(broker, rd, wr, info).await;
    }
}

/// `wss`: TLS, then the WebSocket upgrade, then MQTT.
async fn wss(
    broker: Arc<Broker>,
    tls: tls::Tls,
    stream: TcpStream,
    path: Arc<[String]>,
    mut info: ConnInfo,
) {
    let Some(s) = Box::pin(handshake(&broker, &tls, stream, &mut info)).await else {
        return;
    };
    drop(tls);
    websocket(broker, s, path, info).await;
}
