//! MQTT over WebSocket: the HTTP upgrade (path check, `mqtt` subprotocol)
//! and a bridge that turns binary frames into a byte stream for the
//! ordinary connection code.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::debug;

/// Completes the WebSocket handshake on one of `paths` (`listeners.ws_paths`)
/// and returns a byte stream carrying the MQTT bytes. Another path gets
/// HTTP 404, logged at debug with the path. `stream` is the TCP socket
/// (`ws`) or the TLS stream over it (`wss`).
// The callback's signature is tungstenite's.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(stream: S, paths: Arc<[String]>, peer: SocketAddr) -> Option<DuplexStream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path();
        if !paths.iter().any(|p| p == path) {
            debug!(
                %peer,
                path,
                endpoints = %paths.join(", "),
                "websocket upgrade refused (404): no MQTT endpoint at this path (listeners.ws_paths)"
            );
            let mut err = ErrorResponse::new(Some(format!(
                "no MQTT endpoint at {path}; MQTT over WebSocket is at {}\n",
                paths.join(", ")
            )));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| *p == "mqtt" || *p == "mqttv3.1");
        if let Some(p) = offered {
            if let Ok(v) = HeaderValue::from_str(p) {
                resp.headers_mut().insert("Sec-WebSocket-Protocol", v);
            }
        }
        Ok(resp)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => ws,
        Err(e) => {
            // Not an upgrade (a plain HTTP request), a bad one, or the 404 above.
            debug!(%peer, error = %e, "websocket handshake failed");
            return None;
        }
    };
    Some(byte_stream(ws))
}

/// Turns a WebSocket (server or client side) into a byte stream: binary
/// frames in, bytes out as binary frames. Two small tasks move the data;
/// both end when either side closes. Also the bridges' `ws` / `wss` transport.
pub(crate) fn byte_stream<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(ours);
    // frames -> bytes
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                WsMessage::Binary(b) => b,
                WsMessage::Close(_) => break,
                WsMessage::Text(_) => break, // MQTT over WebSocket is binary only
                _ => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    // bytes -> frames
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(WsMessage::binary(buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    theirs
}
