//! Listeners (TCP, WebSocket) and connection tasks.

mod connection;
mod writer;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
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
    #[error("rules refused: {}", .0.join("; "))]
    Rules(Vec<String>),
    #[error("plugins: {0}")]
    Plugins(#[from] midge_plugin::PluginError),
    #[error("persistence: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// A bound, not yet running broker.
#[derive(Debug)]
pub struct Server {
    config: Config,
    broker: Arc<Broker>,
    mqtt: Option<TcpListener>,
    ws: Option<TcpListener>,
    /// The admin HTTP API listener and the token it requires.
    admin: Option<(TcpListener, String)>,
    /// The admin token was generated at start-up (no config, no env).
    admin_token_generated: bool,
    /// The config file, for the admin API's config reload.
    config_path: Option<std::path::PathBuf>,
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
        let mqtt = match config.listeners.mqtt {
            Some(a) => Some(bind("mqtt", a).await?),
            None => None,
        };
        let ws = match config.listeners.ws {
            Some(a) => Some(bind("websocket", a).await?),
            None => None,
        };
        let (admin, admin_token_generated) = match config.admin.listen {
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
        let broker = Arc::new(Broker::with_store(config.mqtt.clone(), store));
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
        broker
            .rules
            .load(&config.rules)
            .map_err(ServerError::Rules)?;
        if !config.plugins.plugins.is_empty() {
            let host = crate::plugins::load(&config.plugins, &broker).await?;
            info!(plugins = ?host.plugins(), "plugins loaded");
            let _ = broker.plugins.set(host);
        }
        Ok(Server {
            broker,
            config,
            mqtt,
            ws,
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

    /// The broker state (for embedding and tests).
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Serves until `shutdown` completes, then disconnects clients (5.0
    /// clients get DISCONNECT 0x8B) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(rx) = self.broker.rules.take_receiver() {
            tasks.spawn(crate::rules::run_actions(self.broker.clone(), rx));
        }
        if let Some(l) = self.mqtt {
            info!(addr = ?l.local_addr().ok(), "MQTT listener up");
            tasks.spawn(accept_tcp(l, self.broker.clone()));
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
            info!(addr = ?l.local_addr().ok(), path = %self.config.listeners.ws_path, "WebSocket listener up");
            tasks.spawn(accept_ws(
                l,
                self.broker.clone(),
                self.config.listeners.ws_path.clone(),
            ));
        }
        shutdown.await;
        info!("shutting down");
        tasks.abort_all();
        let waits = self
            .broker
            .kick_all(midge_protocol::reason::SERVER_SHUTTING_DOWN);
        let all = futures_util::future::join_all(waits);
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
        if let Some(store) = self.broker.store.clone() {
            // Everything the sessions wrote on the way out, then stop.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
            info!("store closed");
        }
        Ok(())
    }
}

async fn accept_tcp(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let (rd, wr) = stream.into_split();
                tokio::spawn(connection::serve(broker.clone(), rd, wr, peer));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_ws(listener: TcpListener, broker: Arc<Broker>, path: String) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let broker = broker.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    if let Some(s) = ws::accept(stream, path).await {
                        let (rd, wr) = tokio::io::split(s);
                        connection::serve(broker, rd, wr, peer).await;
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
