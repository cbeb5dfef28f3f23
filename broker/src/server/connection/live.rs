//! The live connection's loop: decode what the client sent and hand it to
//! `Inbound`, hand the acks over to the session, take what the session has
//! for the client into the output, then wait for the next read, write,
//! wake-up or deadline (keep alive, re-authentication, idle release);
//! and its end (`close`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use midge_plugin::types::HookSet;
use midge_protocol::{decode, reason, Packet, Publish};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::super::writer::Output;
use super::super::{handshake, idle, park, span};
use super::establish::{Established, Terms};
use super::{received, End, Io};
use crate::events::Event;
use crate::session::{proto, PendingWill};

/// Largest read buffer reservation for a busy connection.
const READ_CHUNK: usize = 64 * 1024;
/// Acks and other control packets a connection may have waiting for its
/// client before the broker stops reading from it: a client that publishes
/// QoS 1 without reading its PUBACKs otherwise grows the queue without bound.
const CONTROL_BACKLOG_MAX: usize = 8192;
/// How long a connection held back by [`CONTROL_BACKLOG_MAX`] may go without
/// its client reading anything before it is closed (without a keep-alive;
/// with one, 1.5 times the keep-alive).
const STALLED_MAX: Duration = Duration::from_secs(60);
/// Most PUBLISHes handed to the on-publish plugins in one batch.
const PUBLISH_BATCH_MAX: usize = 64;

/// What woke a waiting connection.
enum Woke {
    /// The read finished (`None`: its deadline passed first).
    Read(Option<std::io::Result<usize>>),
    Wrote(std::io::Result<usize>),
    /// The session has something for the client.
    Notified,
    /// The rules lane this client was held back for has room again.
    LaneSpace,
    /// Held back, and the client read nothing for too long.
    Stalled,
    /// Taken over or kicked, with this DISCONNECT reason.
    Kicked(u8),
}

/// A connection between its CONNACK and its end.
pub(super) struct Live<'a, R, W> {
    /// The stream, owned by the connection's task (not moved here: the
    /// task's future would keep room for it twice).
    io: &'a mut Io<R, W>,
    conn: Established,
    output: Output,
    /// Collect from the session (deliveries, acks, a freed inflight slot).
    collect: bool,
    write_failed: bool,
    /// Control packets waiting in the session (see CONTROL_BACKLOG_MAX).
    backlog: usize,
    /// Held back for a deep action lane until the deadline (see rules::queue).
    rules_hold: Option<(usize, Instant)>,
    /// How long the client may stay silent (1.5 times its keep alive).
    keep_alive: Option<Duration>,
    max_in: usize,
    /// Current read reservation (see idle::read_buf).
    chunk: usize,
    /// The last wake-up was the idle deadline: release what is held, and
    /// count the keep-alive from the last real activity.
    quiet: bool,
    active: Instant,
    /// PUBLISHes read together, for the on-publish plugins (see publish_batch).
    batch_publishes: bool,
    publishes: Vec<Publish>,
    /// `[limits] park_after` (see super::super::park; `None`: never).
    park_after: Option<Duration>,
}

impl<'a, R, W> Live<'a, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn new(conn: Established, terms: Terms, io: &'a mut Io<R, W>) -> Self {
        let broker = &conn.broker;
        let batch_publishes = broker
            .plugins()
            .is_some_and(|h| h.has_hook(HookSet::ON_PUBLISH));
        let max_in = broker.config.max_packet_size as usize;
        let park_after = park::after(&broker.limits);
        // The CONNECT's buffer goes once it is consumed (see super::idle).
        if io.buf.is_empty() {
            io.buf = bytes::BytesMut::new();
        }
        Live {
            io,
            output: Output::new(terms.limits),
            // Collect from the session on the first pass (resends after a reconnect).
            collect: true,
            write_failed: false,
            backlog: 0,
            rules_hold: None,
            keep_alive: proto::keep_alive_deadline(terms.keep_alive),
            max_in,
            chunk: idle::READ_MIN,
            quiet: false,
            active: Instant::now(),
            batch_publishes,
            publishes: Vec::new(),
            park_after,
            conn,
        }
    }

    /// Runs the connection until it ends (`Some`) or is parked (`None`:
    /// then `parked`, then `serve` again).
    pub(super) async fn serve(&mut self) -> Option<End> {
        loop {
            if let Some(end) = self.read_packets().await {
                return Some(end);
            }
            self.hand_over().await;
            if self.park_now() {
                return None;
            }
            if let Some(end) = self.wait().await {
                return Some(end);
            }
        }
    }

    /// Decodes and handles every whole packet in the read buffer.
    async fn read_packets(&mut self) -> Option<End> {
        let v = self.conn.inbound.version;
        loop {
            // The decode result is a temporary of this `let` only: kept as the
            // scrutinee of a match that awaits, it would reserve a packet's
            // worth of space in every connection's future.
            let p = match decode(&mut self.io.buf, Some(v), self.max_in) {
                Ok(Some(p)) => received(p),
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "protocol violation");
                    if e.reason_code() == reason::PACKET_TOO_LARGE {
                        let stats = &self.conn.broker.stats;
                        stats.limit_packet_too_large.fetch_add(1, Ordering::Relaxed);
                    }
                    // The publishes before the bad packet are handled first.
                    if let Some(end) = self.publish_batch().await {
                        return Some(end);
                    }
                    return Some(End::Server {
                        reason: e.reason_code(),
                        why: "protocol violation",
                    });
                }
            };
            // With on-publish plugins, consecutive PUBLISHes are handed to
            // them together (one call per plugin, not per message).
            if self.batch_publishes {
                if let Packet::Publish(p) = p {
                    self.publishes.push(p);
                    if self.publishes.len() >= PUBLISH_BATCH_MAX {
                        if let Some(end) = self.publish_batch().await {
                            return Some(end);
                        }
                    }
                    continue;
                }
                if let Some(end) = self.publish_batch().await {
                    return Some(end);
                }
            }
            // A PUBACK (one per QoS 1 delivery, the most frequent packet
            // of a subscriber) needs no future: handled in place.
            if let Packet::PubAck(a) = &p {
                self.conn.inbound.puback(a.packet_id);
                continue;
            }
            // Without plugins nothing in `handle` awaits: poll it once in
            // place so its state never enlarges the connection's future
            // (idle connections stay small). With plugins, box it.
            let inbound = &mut self.conn.inbound;
            let end = if self.conn.broker.plugins().is_some() {
                Box::pin(inbound.handle(p)).await
            } else {
                inbound
                    .handle(p)
                    .now_or_never()
                    .unwrap_or(Some(End::Server {
                        reason: reason::IMPLEMENTATION_SPECIFIC_ERROR,
                        why: "packet handling unexpectedly suspended",
                    }))
            };
            if end.is_some() {
                return end;
            }
        }
        self.publish_batch().await
    }

    /// Hands the PUBLISHes read so far to the on-publish plugins, if any.
    async fn publish_batch(&mut self) -> Option<End> {
        if self.publishes.is_empty() {
            return None;
        }
        Box::pin(self.conn.inbound.publish_batch(&mut self.publishes)).await
    }

    /// Hands the acks of what was read to the session (once durable), holds
    /// the client back while its acks or its rules' outputs pile up, and
    /// takes what the session has for the client into the output.
    async fn hand_over(&mut self) {
        let conn = &mut self.conn;
        let mut flushed = None;
        if conn.inbound.has_output() {
            flushed = Box::pin(conn.inbound.flush_control()).await;
            self.collect = true;
        }
        self.backlog = match flushed {
            Some(n) => n,
            // Held back: read again once the client has taken its acks.
            None if self.backlog >= CONTROL_BACKLOG_MAX => conn.session.control_len(),
            None => self.backlog,
        };
        // Outputs of this client's publishes wait in a deep action lane:
        // read no more until it drains, for at most HOLD_MAX.
        if let Some(lane) = conn.inbound.rules_lane.take() {
            if self.rules_hold.is_none() && conn.broker.rules.lanes.should_hold(lane) {
                self.rules_hold = Some((lane, Instant::now() + crate::rules::queue::HOLD_MAX));
            }
        }
        if self.collect && !self.output.pending() {
            // A full batch: take the rest once it is written.
            let (ticket, more) = self.output.collect(&conn.session);
            self.collect = more;
            if ticket != 0 {
                if let Some(store) = &conn.broker.store {
                    Box::pin(store.durable(ticket)).await;
                }
            }
            self.output.encode(&conn.broker, &conn.session);
        }
    }

    /// Waits for the next thing to do: bytes read, bytes written, a wake-up
    /// from the session, room in a rules lane, a deadline, a kick; then
    /// does it (`woke`). `Some(End)`: the connection ends.
    async fn wait(&mut self) -> Option<End> {
        let reading = self.backlog < CONTROL_BACKLOG_MAX && self.rules_hold.is_none();
        let (held, q) = self.release_idle();
        let ka_by = self.keep_alive_by();
        let buf = &mut self.io.buf;
        // Busy connections grow the read buffer (up to READ_CHUNK) each
        // time a read fills it.
        if buf.capacity() - buf.len() < self.chunk / 2 {
            buf.reserve(self.chunk);
        }
        let spare = buf.capacity() - buf.len();
        // The read waits at most until the keep-alive, a pending
        // re-authentication or (holding buffers, or after activity: the
        // span goes too) the idle deadline.
        let release = held || !q;
        let until = [
            ka_by,
            self.conn.inbound.reauth.by,
            release.then(|| Instant::now() + idle::RELEASE_AFTER),
            park::at(self.park_after, self.active, q),
        ]
        .into_iter()
        .flatten()
        .min();
        // Only what the futures below borrow lives across the wait; what
        // woke the connection is handled by `woke`, with all of it.
        let rd = &mut self.io.rd;
        let read = async {
            match until {
                Some(t) => tokio::time::timeout_at(t, rd.read_buf(buf)).await.ok(),
                None => Some(rd.read_buf(buf).await),
            }
        };
        let output = &self.output;
        let conn = &mut self.conn;
        let rules_hold = self.rules_hold;
        let stall = self.keep_alive.unwrap_or(STALLED_MAX);
        let woke = tokio::select! {
            r = read, if reading => Woke::Read(r),
            w = self.io.wr.write(output.unwritten()), if output.pending() => Woke::Wrote(w),
            // Deliveries, acks or a freed inflight slot for this client.
            _ = conn.session.notify.notified(), if !output.pending() => Woke::Notified,
            // Not reading while the client leaves its acks unread; every
            // write that makes progress starts this wait again.
            // Boxed: its timer and notification would otherwise enlarge
            // every connection's future, held or not.
            _ = async {
                if let Some((lane, by)) = rules_hold {
                    Box::pin(conn.broker.rules.lanes.space(lane, by)).await;
                }
            }, if rules_hold.is_some() => Woke::LaneSpace,
            _ = tokio::time::sleep(stall), if !reading && rules_hold.is_none() => Woke::Stalled,
            k = &mut conn.kicked => Woke::Kicked(k.unwrap_or(reason::SESSION_TAKEN_OVER)),
        };
        self.woke(woke, spare)
    }

    /// When the client must have sent something (its keep alive counted
    /// from the last activity).
    fn keep_alive_by(&self) -> Option<Instant> {
        self.keep_alive.map(|ka| self.active + ka)
    }

    /// Does what woke the connection (`spare`: the read buffer's room
    /// before the read). `Some(End)`: the connection ends.
    fn woke(&mut self, woke: Woke, spare: usize) -> Option<End> {
        match woke {
            Woke::Read(r) => match r {
                None if self
                    .conn
                    .inbound
                    .reauth
                    .by
                    .is_some_and(|t| Instant::now() >= t) =>
                {
                    info!("re-authentication not completed within connect_timeout");
                    return Some(End::Server {
                        reason: reason::NOT_AUTHORIZED,
                        why: "re-authentication not completed in time",
                    });
                }
                None if self.keep_alive_by().is_none_or(|t| Instant::now() < t) => {
                    self.quiet = true
                }
                None => {
                    return Some(End::Server {
                        reason: reason::KEEP_ALIVE_TIMEOUT,
                        why: "keep alive timeout",
                    })
                }
                Some(Ok(0)) => return Some(End::Lost("closed by peer")),
                Some(Ok(n)) => {
                    let stats = &self.conn.broker.stats;
                    stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    if n == spare {
                        self.chunk = (self.chunk * 2).min(READ_CHUNK);
                    }
                }
                Some(Err(_)) => return Some(End::Lost("read error")),
            },
            Woke::Wrote(w) => match w {
                Ok(n) if n > 0 => self.output.advance(&self.conn.broker, n),
                _ => {
                    self.write_failed = true;
                    return Some(End::Lost("write failed"));
                }
            },
            Woke::Notified => self.collect = true,
            Woke::LaneSpace => self.rules_hold = None,
            Woke::Stalled => {
                warn!(
                    backlog = self.backlog,
                    "client does not read its acknowledgements; closing"
                );
                return Some(End::Server {
                    reason: reason::KEEP_ALIVE_TIMEOUT,
                    why: "client stopped reading its acknowledgements",
                });
            }
            Woke::Kicked(reason) => {
                let why = if reason == reason::SESSION_TAKEN_OVER {
                    "session taken over"
                } else {
                    "closed by the server"
                };
                return Some(End::Server { reason, why });
            }
        }
        None
    }

    /// Whether to park the connection now (super::super::park): idle for
    /// `park_after` (this wake-up was quiet) with nothing under way. What it
    /// holds goes as after any quiet wake-up, the read buffer altogether.
    fn park_now(&mut self) -> bool {
        let idle = self.quiet
            && !self.collect
            && !self.output.pending()
            && self.rules_hold.is_none()
            && self.backlog < CONTROL_BACKLOG_MAX
            && self.conn.inbound.reauth.by.is_none()
            && self.io.buf.is_empty();
        if !idle || !park::due(self.park_after, self.active) {
            return false;
        }
        if self.release_idle().0 {
            // Something is still held: not parked, and the next wait is
            // still a quiet one (the keep-alive counts from before).
            self.quiet = true;
            return false;
        }
        self.io.buf = bytes::BytesMut::new();
        true
    }

    /// The parked connection's wait (super::super::park), handled as the
    /// loop's: a byte read (now in the read buffer), a wake-up from the
    /// session, a kick, the keep-alive deadline. `Some(End)`: the
    /// connection ends; `None`: `serve` runs it again.
    pub(super) async fn parked(&mut self) -> Option<End> {
        let until = self.keep_alive_by();
        let conn = &mut self.conn;
        let wake = park::wait(
            &conn.broker.stats.connections_parked,
            &mut self.io.rd,
            &mut self.io.buf,
            &conn.session.notify,
            &mut conn.kicked,
            until,
        )
        .await;
        let woke = match wake {
            park::Wake::Read(r) => Woke::Read(Some(r)),
            park::Wake::Deadline => Woke::Read(None),
            park::Wake::Notified => Woke::Notified,
            park::Wake::Kicked(code) => Woke::Kicked(code),
        };
        // The one-byte read never "fills" the buffer (see `woke`).
        self.woke(woke, usize::MAX)
    }

    /// Buffers an idle connection does not need go (super::idle), and its
    /// span after a quiet wake-up. Returns whether some are still held, and
    /// whether this wake-up was quiet.
    fn release_idle(&mut self) -> (bool, bool) {
        let q = std::mem::take(&mut self.quiet);
        if q {
            span::release();
        } else {
            self.active = Instant::now();
        }
        let inbound = &mut self.conn.inbound;
        let held = !self.output.pending()
            && (self.output.release(&self.conn.session, q)
                | idle::vec(&mut inbound.control, q)
                | idle::vec(&mut inbound.retained, q)
                | idle::vec(&mut self.publishes, q)
                | idle::read_buf(&mut self.io.buf, &mut self.chunk, q));
        (held, q)
    }

    /// Ends the connection: the batch's acks handed over, the last packets
    /// (a 5.0 DISCONNECT when the server ends it) written, the session
    /// detached (the will kept or dropped), the `Disconnected` event, and a
    /// lingering close when the server ended it (see handshake::linger).
    pub(super) async fn close(&mut self, end: End) {
        Box::pin(self.conn.inbound.flush_control()).await;
        // The server ends it: a lingering close, so that a client still writing
        // reads why (see handshake::linger).
        let lingering = matches!(end, End::Server { .. });
        let will = self.last_words(&end);
        // What is still unwritten, the pending acks and the last packet.
        let shut = !self.write_failed
            && Box::pin(handshake::shut(&mut self.io.wr, self.output.unwritten())).await;
        let conn = &mut self.conn;
        conn.broker.detach(&conn.session, conn.conn_id, will);
        let (code, description) = match &end {
            End::Client { reason } => (Some(*reason), "disconnected by the client"),
            End::Server { reason, why } => (Some(*reason), *why),
            End::Lost(why) => (None, *why),
        };
        conn.broker.emit(Event::Disconnected {
            client: conn.inbound.client(),
            connect: conn.meta,
            expiry: conn.expiry,
            reason: disconnect_reason(&end),
            code,
            description,
            disconnected_at_ms: crate::message::now_ms(),
        });
        if shut && lingering {
            Box::pin(handshake::linger(&mut self.io.rd)).await;
        }
    }

    /// Logs how the connection ended, puts the last packets into the
    /// output (a 5.0 DISCONNECT when the server ends it; nothing after a
    /// failed write) and returns the will to keep (none after a normal
    /// DISCONNECT). Not async: the last packet never lives in the
    /// connection's future.
    fn last_words(&mut self, end: &End) -> Option<PendingWill> {
        let conn = &mut self.conn;
        let will = conn.will.take();
        let (last, will) = match *end {
            End::Client { reason } => {
                let with_will = reason == reason::DISCONNECT_WITH_WILL;
                info!(with_will, "disconnected");
                (None, if with_will { will } else { None })
            }
            End::Server { reason, why } => {
                info!(reason, why, "closing connection");
                let last = proto::server_disconnect(conn.inbound.version, reason);
                (last, will)
            }
            End::Lost(why) => {
                info!(why, "connection lost");
                (None, will)
            }
        };
        if !self.write_failed {
            self.output.finish(&conn.broker, &conn.session, last);
        }
        will
    }
}

/// How the connection ended, as the `Disconnected` event's reason says it.
fn disconnect_reason(end: &End) -> &'static str {
    match end {
        End::Client { .. } => "normal",
        End::Server { reason: r, .. } if *r == reason::SESSION_TAKEN_OVER => "takenover",
        End::Server { reason: r, .. } if *r == reason::KEEP_ALIVE_TIMEOUT => "keepalive_timeout",
        End::Server { reason: r, .. }
            if *r == reason::SERVER_SHUTTING_DOWN || *r == reason::ADMINISTRATIVE_ACTION =>
        {
            "kicked"
        }
        End::Server { .. } => "protocol_error",
        End::Lost(_) => "sock_closed",
    }
}
