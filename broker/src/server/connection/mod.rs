//! One client connection, in the connection's single task: the CONNECT
//! handshake (establish.rs: authentication, the session core's `accept`,
//! attach with takeover, CONNACK), then one loop (live.rs) that decodes
//! packets and hands them to `Inbound` (inbound.rs, publish.rs), and writes
//! what the session has for the client (`writer::Output`), parked between
//! runs of the loop when idle (`super::park`), then the teardown (live.rs:
//! last packets, detach, will, the lingering close).

mod establish;
mod inbound;
mod live;
mod publish;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::FutureExt;
use midge_protocol::{Connect, Packet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;

use super::admission::{Admitted, Listener, Refusal};
use super::handshake::{
    connect_timed_out, read_connect, reason_props, refused, send_connack, NoConnect,
};
use super::span::InConnSpan;
use crate::broker::Broker;
use crate::session::proto::{self, Violation};

/// What the listener knows about a connection before its CONNECT.
#[derive(Debug)]
pub struct Incoming {
    pub peer: SocketAddr,
    pub listener: Listener,
    /// When the CONNECT must have arrived (accept + `limits.connect_timeout`;
    /// a TLS or WebSocket handshake spends from the same budget).
    pub deadline: Instant,
    /// A limit refused the connection at accept: its CONNECT is read and
    /// answered with this refusal, then the connection is closed.
    pub refusal: Option<Refusal>,
    /// The admitted connection's place (`None` when refused), held until
    /// the connection ends.
    pub slot: Option<Admitted>,
    /// `cn_as_username` on a TLS listener: the username is the subject CN of
    /// the verified client certificate (`None`: no certificate, or no CN),
    /// whatever CONNECT says.
    pub cert_username: Option<Option<String>>,
}

/// Serves one client, given the two halves of its stream, until it goes away.
pub async fn serve<R, W>(broker: Arc<Broker>, mut rd: R, mut wr: W, mut info: Incoming)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Small at first: idle connections should cost little memory.
    let mut buf = BytesMut::with_capacity(256);
    let max_in = broker.config.max_packet_size as usize;
    let peer = info.peer;
    // Boxed: the handshake's state is freed once it is done, keeping the
    // long-lived connection future small (idle connections cost memory).
    let read = read_connect(
        &mut rd,
        &mut wr,
        &mut buf,
        max_in,
        info.deadline,
        &broker.stats,
    );
    let mut connect = match Box::pin(read).await {
        Ok(c) => c,
        Err(NoConnect::TimedOut) => {
            connect_timed_out(&broker, peer, info.listener);
            return;
        }
        Err(NoConnect::Failed) => return,
    };
    if let Some(r) = info.refusal {
        let v = connect.version;
        // debug: a connection storm must not flood the log; the refusals are counted.
        debug!(%peer, listener = info.listener.name(), reason = r.text(), "connection refused");
        refused(&broker, &connect, peer, r.reason_code());
        Box::pin(send_connack(
            &mut rd,
            &mut wr,
            v,
            r.reason_code(),
            reason_props(v, r.text()),
            proto::client_max_packet(&connect.properties),
        ))
        .await;
        return;
    }
    if let Some(name) = info.cert_username {
        // Before authentication: plugins and the auth hook see the CN.
        connect.username = name.map(Into::into);
    }
    // The client id is a span field from the start when the client gave one
    // (span filters such as `[log] trace_clients` match from the first
    // packet); an assigned one is recorded once chosen. The span is held
    // only while the connection is active (super::span).
    let id = (!connect.client_id.is_empty()).then(|| Arc::from(connect.client_id.as_str()));
    // The session runs in a task of its own: this one ends here, and with
    // it everything the handshake needed (what an idle connection keeps is
    // only `run`'s state).
    let slot = info.slot.take();
    let task = run(broker, connect, peer, Io { rd, wr, buf }, info.deadline);
    let task = InConnSpan::new(task, id, peer, info.listener.name()).map(move |()| drop(slot));
    // What every connection's task holds, idle or not (docs/BENCHMARKS.md).
    debug!(%peer, future_bytes = std::mem::size_of_val(&task), "connection task");
    tokio::spawn(task);
}

/// How a connection ended.
pub(super) enum End {
    /// DISCONNECT from the client with this reason (0x04: with will).
    Client { reason: u8 },
    /// We close it, sending DISCONNECT with this reason to a 5.0 client.
    Server { reason: u8, why: &'static str },
    /// Socket closed or failed, or keep alive expired (3.1.1).
    Lost(&'static str),
}
/// A connection's stream halves and its read buffer.
struct Io<R, W> {
    rd: R,
    wr: W,
    buf: BytesMut,
}

/// The session part of a connection: from its CONNECT to its end.
async fn run<R, W>(
    broker: Arc<Broker>,
    c: Box<Connect>,
    peer: SocketAddr,
    mut io: Io<R, W>,
    deadline: Instant,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Boxed, as the loop below: the task's future holds neither once done.
    let setup = establish::establish(broker, c, peer, &mut io, deadline);
    let Some((established, terms)) = Box::pin(setup).await else {
        return;
    };
    let mut conn = live::Live::new(established, terms, &mut io);
    let end = loop {
        // Boxed: the loop's futures (the read and its timers, the write,
        // the session's notification) are freed when it parks an idle
        // connection (super::park); the task then holds `conn` and the
        // parked wait only.
        let serving = Box::pin(conn.serve());
        // What parking frees (docs/BENCHMARKS.md).
        debug!(
            loop_bytes = std::mem::size_of_val(&*serving),
            "connection loop"
        );
        if let Some(end) = serving.await {
            break end;
        }
        if let Some(end) = conn.parked().await {
            break end;
        }
    };
    conn.close(end).await;
}

/// Logs a received packet (per-client trace: `[log] trace_clients`). A plain
/// fn that takes the packet by value: borrowing it in the connection loop
/// would keep a packet's worth of space in every connection's future.
pub(super) fn received(p: Packet) -> Packet {
    debug!(packet = ?p, "received");
    p
}

/// Ends the connection with 0x82.
pub(super) fn protocol_violation(why: &'static str) -> End {
    broken(Violation::protocol(why))
}

/// Ends the connection for a rule the client broke.
pub(super) fn broken(v: Violation) -> End {
    End::Server {
        reason: v.reason,
        why: v.why,
    }
}
