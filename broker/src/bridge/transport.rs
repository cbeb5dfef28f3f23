//! Outbound transports of a bridge: TCP, TLS over TCP, WebSocket and
//! WebSocket over TLS. Each gives the link one byte stream; the MQTT bytes
//! are the same over all four. The caller bounds the whole connect with the
//! bridge's `connect_timeout`.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::config::{BridgeSpec, Scheme};

/// A connected byte stream to the remote.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What [`connect`] returns.
pub struct Connected {
    pub io: Box<dyn Io>,
    pub peer: SocketAddr,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Opens the transport `spec.remote` names. The error says which step
/// failed (address, TCP, TLS, WebSocket) and why, for the log and the API.
pub async fn connect(spec: &BridgeSpec) -> Result<Connected, String> {
    let r = &spec.remote;
    let tcp = TcpStream::connect((r.host.as_str(), r.port))
        .await
        .map_err(|e| format!("TCP connect to {}:{}: {e}", r.host, r.port))?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp
        .peer_addr()
        .map_err(|e| format!("TCP connect to {}:{}: {e}", r.host, r.port))?;
    let io: Box<dyn Io> = match r.scheme {
        Scheme::Mqtt => Box::new(tcp),
        Scheme::Mqtts => Box::new(tls(spec, tcp).await?),
        Scheme::Ws => Box::new(websocket(spec, tcp).await?),
        Scheme::Wss => {
            let t = tls(spec, tcp).await?;
            Box::new(websocket(spec, t).await?)
        }
    };
    Ok(Connected { io, peer })
}

async fn tls(
    spec: &BridgeSpec,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let config = spec
        .tls
        .clone()
        .ok_or("no TLS configuration for a TLS address")?;
    let name = rustls::pki_types::ServerName::try_from(spec.server_name.clone())
        .map_err(|e| format!("TLS server name `{}`: {e}", spec.server_name))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {}: {e}", spec.remote))
}

async fn websocket<S>(spec: &BridgeSpec, stream: S) -> Result<tokio::io::DuplexStream, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let url = spec.remote.to_string();
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("WebSocket request for {url}: {e}"))?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, _resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| format!("WebSocket handshake with {url}: {e}"))?;
    Ok(crate::server::ws::byte_stream(ws))
}
