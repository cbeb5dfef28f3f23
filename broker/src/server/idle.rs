//! What an idle connection gives back. A connection's buffers (read buffer,
//! encoded output, the batch of items taken from its session, the acks of
//! a read) grow with its traffic and are kept while it is busy, so a busy
//! connection never pays to grow them again; once it is idle they go:
//!
//! - at once, when they are empty and small (at most [`SMALL`] bytes: a
//!   SUBACK's worth, which an allocation serves from the thread's cache);
//! - after [`RELEASE_AFTER`] without traffic, whatever their size: the
//!   connection's read then waits on the earliest of its keep-alive, a
//!   pending re-authentication and this deadline, one timer, and a wake-up
//!   at the deadline only releases (see `connection::run`).
//!
//! A million mostly idle devices then hold no buffer capacity besides the
//! read buffer's smallest reservation.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;

/// How long a connection without traffic keeps buffers larger than [`SMALL`].
pub const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Empty buffers up to this many bytes of capacity are released as soon as
/// the connection waits (their next allocation is cheap).
pub const SMALL: usize = 1024;

/// The read buffer's reservation while idle (and a new connection's first).
pub const READ_MIN: usize = 64;

/// Releases `v`'s capacity when it is empty and small, or `quiet`. Returns
/// whether it still holds capacity.
pub fn vec<T>(v: &mut Vec<T>, quiet: bool) -> bool {
    if v.capacity() == 0 {
        return false;
    }
    if v.is_empty() && (quiet || v.capacity() * size_of::<T>() <= SMALL) {
        *v = Vec::new();
        return false;
    }
    true
}

/// [`vec`] for a `VecDeque`.
pub fn deque<T>(v: &mut VecDeque<T>, quiet: bool) -> bool {
    if v.capacity() == 0 {
        return false;
    }
    if v.is_empty() && (quiet || v.capacity() * size_of::<T>() <= SMALL) {
        *v = VecDeque::new();
        return false;
    }
    true
}

/// [`vec`] for an output buffer (nothing unwritten in it).
pub fn bytes(b: &mut BytesMut, quiet: bool) -> bool {
    if b.capacity() == 0 {
        return false;
    }
    if b.is_empty() && (quiet || b.capacity() <= SMALL) {
        *b = BytesMut::new();
        return false;
    }
    true
}

/// The read buffer: when `quiet` and it holds no partial packet, back to
/// [`READ_MIN`] (and `chunk`, how much the next read reserves, with it; a
/// busy connection doubles it again on every read that fills the buffer).
/// Returns whether it holds more than [`READ_MIN`].
pub fn read_buf(buf: &mut BytesMut, chunk: &mut usize, quiet: bool) -> bool {
    if quiet && buf.is_empty() {
        *chunk = READ_MIN;
        if buf.capacity() > READ_MIN {
            *buf = BytesMut::new();
        }
    }
    buf.capacity() > READ_MIN || *chunk > READ_MIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_empty_buffers_go_at_once_large_ones_when_quiet() {
        let mut v: Vec<u64> = Vec::with_capacity(4);
        assert!(!vec(&mut v, false));
        assert_eq!(v.capacity(), 0);

        let mut big: Vec<u64> = Vec::with_capacity(4096);
        assert!(vec(&mut big, false), "a busy connection keeps it");
        assert_eq!(big.capacity(), 4096);
        assert!(!vec(&mut big, true));
        assert_eq!(big.capacity(), 0);

        let mut full: Vec<u64> = vec![1];
        assert!(vec(&mut full, true), "never drops what it holds");
        assert_eq!(full, [1]);

        let mut d: VecDeque<u64> = VecDeque::with_capacity(4096);
        assert!(deque(&mut d, false));
        assert!(!deque(&mut d, true));
        assert_eq!(d.capacity(), 0);

        let mut b = BytesMut::with_capacity(64 * 1024);
        assert!(bytes(&mut b, false));
        assert!(!bytes(&mut b, true));
        assert_eq!(b.capacity(), 0);
        let mut b = BytesMut::with_capacity(100);
        assert!(!bytes(&mut b, false));
    }

    #[test]
    fn read_buffer_shrinks_only_when_quiet_and_empty() {
        let mut chunk = 64 * 1024;
        let mut b = BytesMut::with_capacity(chunk);
        assert!(read_buf(&mut b, &mut chunk, false));
        assert_eq!(chunk, 64 * 1024);
        b.extend_from_slice(b"\x30");
        assert!(read_buf(&mut b, &mut chunk, true), "a partial packet stays");
        b.clear();
        assert!(!read_buf(&mut b, &mut chunk, true));
        assert_eq!((b.capacity(), chunk), (0, READ_MIN));
    }
}
