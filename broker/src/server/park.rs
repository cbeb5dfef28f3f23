//! Parking idle connections (`[limits] park_after`).
//!
//! While a connection's loop (`connection::live`) runs, its task holds the
//! loop's futures: the read and its timer, the write, the session's
//! notification, the kick, the stall timer, and the states of the steps
//! between them. That is most of what the task weighs (docs/BENCHMARKS.md,
//! "Memory per idle connection"), and an idle connection needs none of it.
//! So once a connection has gone `park_after` without traffic, with nothing
//! under way (no unwritten output, no partial packet, no pending
//! re-authentication, nothing held back), the loop returns and its future,
//! which runs boxed (`connection::run`), is freed. The connection's state
//! (the session handle, keep-alive, aliases, limits) stays where it was,
//! its buffers already given back (`super::idle`), and the task waits in
//! [`wait`]: a one-byte read of the socket, the session's notification, the
//! kick (takeover, admin, shutdown) and the keep-alive deadline, a few
//! hundred bytes. Whichever comes first is handled as the loop handles it:
//! a byte goes into the read buffer and the loop runs again (it reads the
//! rest); a notification runs the loop to collect the deliveries; a close,
//! a kick or a passed keep-alive ends the connection through the loop's
//! `close`, as for any connection (will, `Disconnected`, DISCONNECT to a
//! 5.0 client).
//!
//! A busy connection never waits `park_after`, so it pays nothing; waking a
//! parked one costs an allocation (the loop's future) and one more read.
//! The `midge_connections_parked` gauge counts the parked connections.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use midge_protocol::reason;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::config::LimitsConfig;

/// `[limits] park_after` as the loop uses it (`None`: never park).
pub fn after(limits: &LimitsConfig) -> Option<Duration> {
    (limits.park_after > 0).then(|| Duration::from_secs(u64::from(limits.park_after)))
}

/// Whether a connection last active at `active` has been idle for `after`.
pub fn due(after: Option<Duration>, active: Instant) -> bool {
    after.is_some_and(|d| Instant::now() >= active + d)
}

/// When the loop should wake to park (`None`: never, or due already: a
/// connection that could not park when due, say with output its client
/// does not read, tries again after its next activity, not in a loop).
/// `quiet`: the wake-up before was no activity, so `active` may be long
/// past (otherwise it is now, and the clock is not read again).
pub fn at(after: Option<Duration>, active: Instant, quiet: bool) -> Option<Instant> {
    let t = active + after?;
    (!quiet || t > Instant::now()).then_some(t)
}

/// What ended a parked wait.
#[derive(Debug)]
pub enum Wake {
    /// The read: `Ok(0)` is the peer's close; `Ok(1)`: the byte read was
    /// appended to the read buffer.
    Read(std::io::Result<usize>),
    /// The session has something for the client.
    Notified,
    /// Taken over or kicked, with this DISCONNECT reason.
    Kicked(u8),
    /// `until` (the keep-alive deadline) passed.
    Deadline,
}

/// Waits, parked, for the first of: a byte from the client (appended to
/// `buf`), the session's notification, the kick, `until`. Counted in
/// `parked` (the gauge) while it waits.
pub async fn wait<R>(
    parked: &AtomicU64,
    rd: &mut R,
    buf: &mut BytesMut,
    notify: &Notify,
    kicked: &mut oneshot::Receiver<u8>,
    until: Option<Instant>,
) -> Wake
where
    R: AsyncRead + Unpin,
{
    let _parked = Gauge::up(parked);
    // One byte, in the future: no read buffer is held while parked.
    let read = async {
        let mut byte = [0u8; 1];
        rd.read(&mut byte).await.map(|n| (n, byte[0]))
    };
    let woken = async {
        tokio::select! {
            r = read => Wake::Read(r.map(|(n, byte)| {
                if n > 0 {
                    buf.extend_from_slice(&[byte]);
                }
                n
            })),
            () = notify.notified() => Wake::Notified,
            k = &mut *kicked => Wake::Kicked(k.unwrap_or(reason::SESSION_TAKEN_OVER)),
            () = deadline(until) => Wake::Deadline,
        }
    };
    let mut woken = std::pin::pin!(woken);
    std::future::poll_fn(|cx| {
        let r = woken.as_mut().poll(cx);
        if r.is_pending() {
            // A poll that does not end the wait (a spurious wake-up) does
            // not keep the span made for it (super::span).
            super::span::release();
        }
        r
    })
    .await
}

/// Completes at `until` (never when `None`).
async fn deadline(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// One parked connection in the gauge, for as long as it lives (a task
/// dropped while parked, at runtime shutdown, is counted out too).
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(gauge: &'a AtomicU64) -> Gauge<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::AsyncWriteExt;

    struct Parked {
        gauge: AtomicU64,
        notify: Notify,
        kick: Option<oneshot::Sender<u8>>,
        kicked: oneshot::Receiver<u8>,
        buf: BytesMut,
    }

    impl Parked {
        async fn wait<R: AsyncRead + Unpin>(&mut self, rd: &mut R, until: Option<Instant>) -> Wake {
            let p = self;
            wait(&p.gauge, rd, &mut p.buf, &p.notify, &mut p.kicked, until).await
        }
    }

    fn parked() -> Parked {
        let (kick, kicked) = oneshot::channel();
        Parked {
            gauge: AtomicU64::new(0),
            notify: Notify::new(),
            kick: Some(kick),
            kicked,
            buf: BytesMut::new(),
        }
    }

    const SOON: Duration = Duration::from_millis(30);

    #[tokio::test]
    async fn a_byte_wakes_it_and_lands_in_the_buffer() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut p = parked();
        let mut w = Box::pin(wait(
            &p.gauge,
            &mut server,
            &mut p.buf,
            &p.notify,
            &mut p.kicked,
            None,
        ));
        assert!((&mut w).now_or_never().is_none(), "nothing yet");
        assert_eq!(p.gauge.load(Ordering::Relaxed), 1, "counted while parked");
        client.write_all(&[0xC0, 0x00]).await.expect("write");
        assert!(matches!(w.await, Wake::Read(Ok(1))));
        assert_eq!(p.gauge.load(Ordering::Relaxed), 0, "counted out");
        assert_eq!(&p.buf[..], &[0xC0], "one byte; the loop reads the rest");
    }

    #[tokio::test]
    async fn the_peer_closing_wakes_it() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let mut p = parked();
        let w = p.wait(&mut server, None).await;
        assert!(matches!(w, Wake::Read(Ok(0))));
        assert!(p.buf.is_empty());
    }

    #[tokio::test]
    async fn a_notification_kept_from_before_wakes_it() {
        let (_client, mut server) = tokio::io::duplex(64);
        let mut p = parked();
        // Delivered while the loop was ending: the permit is kept.
        p.notify.notify_one();
        let w = p.wait(&mut server, None).await;
        assert!(matches!(w, Wake::Notified));
    }

    #[tokio::test]
    async fn a_kick_wakes_it_with_its_reason() {
        let (_client, mut server) = tokio::io::duplex(64);
        let mut p = parked();
        if let Some(k) = p.kick.take() {
            let _ = k.send(reason::ADMINISTRATIVE_ACTION);
        }
        let w = p.wait(&mut server, None).await;
        assert!(matches!(w, Wake::Kicked(r) if r == reason::ADMINISTRATIVE_ACTION));
        // A kick whose sender went away counts as a takeover, as in the loop.
        let mut p = parked();
        drop(p.kick.take());
        let w = p.wait(&mut server, None).await;
        assert!(matches!(w, Wake::Kicked(r) if r == reason::SESSION_TAKEN_OVER));
    }

    #[tokio::test]
    async fn the_deadline_wakes_it_not_before() {
        let (_client, mut server) = tokio::io::duplex(64);
        let mut p = parked();
        let until = Instant::now() + SOON;
        let w = p.wait(&mut server, Some(until)).await;
        assert!(matches!(w, Wake::Deadline));
        assert!(Instant::now() >= until);
    }

    #[test]
    fn due_and_at() {
        let now = Instant::now();
        let five = Some(Duration::from_secs(5));
        assert!(!due(five, now));
        assert!(!due(None, now - Duration::from_secs(60)));
        assert!(due(five, now - Duration::from_secs(6)));
        assert_eq!(at(five, now, false), Some(now + Duration::from_secs(5)));
        assert_eq!(at(five, now, true), Some(now + Duration::from_secs(5)));
        let long_ago = now - Duration::from_secs(6);
        assert_eq!(at(five, long_ago, true), None, "no wake-up in the past");
        assert_eq!(at(None, now, false), None);
        let mut limits = LimitsConfig::default();
        assert_eq!(after(&limits), Some(Duration::from_secs(5)), "the default");
        limits.park_after = 0;
        assert_eq!(after(&limits), None, "0: never");
    }
}
