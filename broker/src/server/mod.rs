//! Listeners (TCP, WebSocket) and connection tasks.

use std::future::Future;
use std::net::SocketAddr;

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
}

/// A bound, not yet running broker.
#[derive(Debug)]
pub struct Server {
    _config: Config,
}

impl Server {
    /// Binds the configured listeners (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        todo!("{config:?}")
    }

    /// Bound address of the MQTT/TCP listener.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        todo!()
    }

    /// Bound address of the MQTT/WebSocket listener.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        todo!()
    }

    /// Serves until `shutdown` completes, then disconnects clients and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        shutdown.await;
        todo!()
    }
}
