//! The edges of a connection, before and after its session: reading the
//! CONNECT, refusing it, and closing gracefully.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use midge_protocol::{
    decode, encode, reason, ConnAck, Connect, DecodeError, Packet, Properties, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

use super::admission::Listener;
use crate::broker::Broker;
use crate::events::{self, ConnectFlags, Event};
use crate::session::proto;

/// How long the last packets may take to be written when closing.
pub const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// How long a connection the server closes goes on reading (and
/// discarding) what its client still sends: see [`linger`].
pub const LINGER: Duration = Duration::from_secs(1);

/// Counts and logs a connection closed for not completing its handshake or
/// CONNECT within `limits.connect_timeout`.
pub fn connect_timed_out(broker: &Broker, peer: SocketAddr, listener: Listener) {
    broker
        .stats
        .connections_refused_connect_timeout
        .fetch_add(1, Ordering::Relaxed);
    debug!(%peer, listener = listener.name(), "no CONNECT within the connect timeout");
}

/// Why no CONNECT was read.
pub enum NoConnect {
    /// The deadline passed.
    TimedOut,
    /// Closed, another packet first, or a bad CONNECT (answered already).
    Failed,
}

/// Reads the first packet, which must be CONNECT, by `deadline`. Answers
/// unsupported protocol levels and malformed CONNECTs itself.
pub async fn read_connect<R, W>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    max: usize,
    deadline: Instant,
    stats: &crate::broker::Stats,
) -> Result<Box<Connect>, NoConnect>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        match decode(buf, None, max) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(other)) => {
                debug!(packet = other.name(), "first packet is not CONNECT");
                return Err(NoConnect::Failed);
            }
            Ok(None) => {}
            Err(DecodeError::UnsupportedProtocol { level }) => {
                debug!(level, "unsupported protocol level");
                let (v, code) = if level > 5 {
                    (Version::V5, reason::UNSUPPORTED_PROTOCOL_VERSION)
                } else {
                    (Version::V311, reason::v311::UNACCEPTABLE_PROTOCOL_VERSION)
                };
                send_connack(rd, wr, v, code, Properties::default(), usize::MAX).await;
                return Err(NoConnect::Failed);
            }
            Err(e) => {
                debug!(error = %e, "bad CONNECT");
                if peek_connect_level(buf) == Some(5) {
                    send_connack(
                        rd,
                        wr,
                        Version::V5,
                        e.reason_code(),
                        Properties::default(),
                        usize::MAX,
                    )
                    .await;
                }
                return Err(NoConnect::Failed);
            }
        }
        match tokio::time::timeout_at(deadline, rd.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {
                stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(_) => return Err(NoConnect::Failed),
            Err(_) => return Err(NoConnect::TimedOut),
        }
    }
}

/// Protocol level byte of a (possibly malformed) CONNECT at the front of `buf`.
fn peek_connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while buf.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    // remaining length, then protocol name (2-byte length + "MQTT"), then level.
    let name_len = usize::from(*buf.get(i + 1)?) << 8 | usize::from(*buf.get(i + 2)?);
    buf.get(i + 3 + name_len).copied()
}

/// Answers a CONNACK (a refusal: 3.1.1 gets its return code), fitted to the
/// client's Maximum Packet Size `max` (`usize::MAX`: none, or unknown
/// before a CONNECT could be read), then closes the connection gracefully
/// (see [`linger`]).
pub async fn send_connack<R, W>(
    rd: &mut R,
    wr: &mut W,
    v: Version,
    code: u8,
    properties: Properties,
    max: usize,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let code = if v == Version::V311 && code >= 0x80 {
        reason::connack_v311(code)
    } else {
        code
    };
    let mut connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties,
    });
    let mut out = BytesMut::new();
    if proto::fit(&mut connack, v, max) {
        encode(&connack, v, &mut out);
    } else {
        debug!(
            max,
            "CONNACK not sent: larger than the client's Maximum Packet Size"
        );
    }
    if shut(wr, &out).await {
        linger(rd).await;
    }
}

/// Writes a closing connection's last bytes and shuts its write side down,
/// within [`CLOSE_FLUSH`]. `false` when that failed.
pub async fn shut<W: AsyncWrite + Unpin>(wr: &mut W, last: &[u8]) -> bool {
    let flush = async {
        wr.write_all(last).await?;
        wr.flush().await?;
        wr.shutdown().await
    };
    matches!(tokio::time::timeout(CLOSE_FLUSH, flush).await, Ok(Ok(())))
}

/// The second half of a lingering close (as HTTP servers do it): after the
/// server's last packet (a DISCONNECT or a refusing CONNACK) and the
/// shutdown of its write side, what the client still sends is read and
/// discarded until it closes or [`LINGER`] passes. Closing a socket with
/// unread bytes makes the kernel answer with a reset, and a client still
/// writing (PUBRELs for the PUBRECs it reads, say) then gets a broken pipe
/// before it reads the reason code waiting in its receive buffer.
pub async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    // On the heap: callers keep this future out of long-lived state.
    let mut sink = vec![0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

pub fn reason_props(v: Version, text: &str) -> Properties {
    let mut p = Properties::default();
    if v == Version::V5 {
        p.reason_string = Some(text.into());
    }
    p
}

/// Counts a refused CONNECT by reason code and raises its event.
pub fn refused(broker: &Broker, c: &Connect, peer: SocketAddr, code: u8) {
    broker.stats.connacks_refused.add(code);
    broker.emit(Event::ConnackRefused {
        client: events::Client {
            client_id: &c.client_id,
            username: c.username.as_deref(),
            peer,
        },
        connect: ConnectFlags {
            version: c.version,
            keep_alive: c.keep_alive,
            clean_start: c.clean_start,
        },
        code,
    });
}

/// A client id for a client that gave none.
pub fn generate_client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("midge-{:x}-{n}", t & 0xffff_ffff_ffff)
}
