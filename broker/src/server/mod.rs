//! Listeners (TCP, WebSocket, and both over TLS) and connection tasks. This
//! layer only listens and accepts: the `app` module builds the broker and
//! hands it to [`Server::spawn`].
//!
//! Each listener has an accept loop that only accepts, asks the [`Gate`]
//! whether the connection is within `[limits]`, and spawns the connection's
//! task; TLS and WebSocket handshakes run in that task, within the connect
//! timeout, and then `connection::serve` takes the byte stream.

mod admission;
mod connection;
pub(crate) mod descriptors;
mod enhanced_auth;
mod handshake;
mod idle;
mod park;
mod span;
pub(crate) mod tls;
mod writer;
pub(crate) mod ws;

pub use admission::{Gate, Listener, Refusal};
pub use connection::Incoming;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::Listeners;
use crate::Config;

/// Errors binding the listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A TLS certificate or key file that cannot be used.
    #[error("{field}: {path}: {message}")]
    Tls {
        field: &'static str,
        path: String,
        message: String,
    },
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

/// The bound, not yet accepting listeners.
#[derive(Debug)]
pub struct Server {
    mqtt: Option<TcpListener>,
    ws: Option<TcpListener>,
    mqtts: Option<TcpListener>,
    wss: Option<TcpListener>,
    /// Loaded when `mqtts` or `wss` is set.
    tls: Option<tls::Tls>,
    /// `[listeners] ws_paths`, for `ws` and `wss`.
    ws_paths: Arc<[String]>,
}

/// A listener's address for the log (empty if the socket cannot say).
fn local(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// Pending connections the kernel queues per listener before `accept`
/// (std's default is 128: a reconnect storm beyond it waits for SYN retries).
const BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with [`BACKLOG`] (`what` names it in errors).
pub async fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
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

/// Binds `addr` for `what` (a name for errors), or nothing when unset.
async fn listen_opt(
    what: &'static str,
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, ServerError> {
    match addr {
        Some(a) => Ok(Some(listen(what, a).await?)),
        None => Ok(None),
    }
}

impl Server {
    /// Loads `[listeners.tls]` (when `mqtts` or `wss` is set) and binds the
    /// configured listeners (port 0 picks a free port). Certificates first:
    /// a bad file is reported before any port is taken.
    pub async fn bind(l: &Listeners) -> Result<Server, ServerError> {
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
        Ok(Server {
            mqtt: listen_opt("mqtt", l.mqtt).await?,
            ws: listen_opt("websocket", l.ws).await?,
            mqtts: listen_opt("mqtts", l.mqtts).await?,
            wss: listen_opt("wss", l.wss).await?,
            tls,
            ws_paths: l.ws_paths.as_slice().into(),
        })
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

    /// Starts one accept loop per listener in `tasks`: each admits through
    /// `gate` and serves its connections with `broker`.
    pub fn spawn(self, broker: &Arc<Broker>, gate: &Arc<Gate>, tasks: &mut JoinSet<()>) {
        let path = self.ws_paths;
        if let Some(l) = self.mqtt {
            info!(addr = %local(&l), "MQTT listener up");
            let b = broker.clone();
            tasks.spawn(accept_loop(l, Listener::Mqtt, gate.clone(), move |s, i| {
                plain(b.clone(), s, i)
            }));
        }
        if let Some(l) = self.ws {
            info!(addr = %local(&l), paths = %path.join(", "), "WebSocket listener up");
            let (b, p) = (broker.clone(), path.clone());
            tasks.spawn(accept_loop(l, Listener::Ws, gate.clone(), move |s, i| {
                websocket(b.clone(), s, p.clone(), i)
            }));
        }
        if let (Some(l), Some(t)) = (self.mqtts, self.tls.clone()) {
            info!(addr = %local(&l), "MQTT/TLS listener up");
            let b = broker.clone();
            tasks.spawn(accept_loop(
                l,
                Listener::Mqtts,
                gate.clone(),
                move |s, i| mqtts(b.clone(), t.clone(), s, i),
            ));
        }
        if let (Some(l), Some(t)) = (self.wss, self.tls) {
            info!(addr = %local(&l), paths = %path.join(", "), "secure WebSocket listener up");
            let b = broker.clone();
            tasks.spawn(accept_loop(l, Listener::Wss, gate.clone(), move |s, i| {
                wss(b.clone(), t.clone(), s, path.clone(), i)
            }));
        }
    }
}

/// Accepts on `listener` until aborted. Per socket: admission by `gate`
/// (cheap, no I/O), then `handle` runs in the connection's own task, which
/// holds the admitted slot until it ends.
async fn accept_loop<F, Fut>(listener: TcpListener, kind: Listener, gate: Arc<Gate>, handle: F)
where
    F: Fn(TcpStream, Incoming) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let admitted = gate.admit(kind);
                let info = Incoming {
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
async fn plain(broker: Arc<Broker>, stream: TcpStream, info: Incoming) {
    let (rd, wr) = stream.into_split();
    connection::serve(broker, rd, wr, info).await;
}

/// `ws` (and `wss` after TLS): the WebSocket upgrade, then the bridged byte stream.
async fn websocket<S>(broker: Arc<Broker>, stream: S, path: Arc<[String]>, info: Incoming)
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
        Err(_) => handshake::connect_timed_out(&broker, info.peer, info.listener),
    }
}

/// The TLS handshake of `mqtts` and `wss`, within the connect timeout.
async fn handshake(
    broker: &Broker,
    tls: &tls::Tls,
    stream: TcpStream,
    info: &mut Incoming,
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
            handshake::connect_timed_out(broker, info.peer, info.listener);
            None
        }
    }
}

/// `mqtts`: TLS, then MQTT.
async fn mqtts(broker: Arc<Broker>, tls: tls::Tls, stream: TcpStream, mut info: Incoming) {
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
    mut info: Incoming,
) {
    let Some(s) = Box::pin(handshake(&broker, &tls, stream, &mut info)).await else {
        return;
    };
    drop(tls);
    websocket(broker, s, path, info).await;
}
