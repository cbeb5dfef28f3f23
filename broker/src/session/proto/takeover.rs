//! Takeover as a pure decision: what a CONNECT does to the session its
//! client id already has (live or offline), and how the session it attaches
//! to is written to the durable store. The registry (broker/registry.rs
//! `try_attach`) looks at the session under its lock, asks these functions
//! and does what they say (the kick, the wait, the store ops).
//!
//! The rules (MQTT-3.1.4-3, 3.1.2.4, 3.2.2.1.1):
//! - a live connection with the client id is taken over: it is told
//!   "Session taken over" (0x8E: the 5.0 client reads it in a DISCONNECT,
//!   a 3.1.1 one is closed, [`server_disconnect`]) and the CONNECT waits
//!   until it has detached, then is decided again;
//! - without Clean Start an offline session that has not ended is resumed
//!   (subscriptions, queue, inflight deliveries and QoS 2 ids carry over,
//!   inflight ones are resent with DUP), and CONNACK says Session Present;
//! - otherwise a new session: an old one is discarded (its stored records
//!   dropped before the new ones are written, its subscriptions and queue
//!   gone, a pending will published), Session Present is 0;
//! - either way a pending will of the old connection is cancelled (the
//!   client is back), the new expiry applies.

use midge_protocol::{reason, Disconnect, Packet, Properties, Version};

/// The client id's session as the registry holds it when a CONNECT comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    /// A connection is attached to it.
    pub live: bool,
    /// It is over (expired or replaced) though still registered.
    pub ended: bool,
}

/// What a CONNECT does to the client id's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// A connection is attached: tell it `reason`, wait until it has
    /// detached, then decide again.
    Kick { reason: u8 },
    /// Resume the offline session (Session Present).
    Resume,
    /// A new session; `discard_old`: end the one registered.
    Fresh { discard_old: bool },
}

impl Takeover {
    /// The CONNACK's Session Present flag for an attach decided so.
    pub fn session_present(self) -> bool {
        self == Takeover::Resume
    }
}

/// The decision for a CONNECT with `clean_start` finding `existing`.
pub fn takeover(existing: Option<Existing>, clean_start: bool) -> Takeover {
    match existing {
        Some(e) if e.live => Takeover::Kick {
            reason: reason::SESSION_TAKEN_OVER,
        },
        Some(e) if !clean_start && !e.ended => Takeover::Resume,
        other => Takeover::Fresh {
            discard_old: other.is_some(),
        },
    }
}

/// How the attached session is written to the durable store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Not durable, and was not.
    Nothing,
    /// Newly durable: its record, subscriptions, queue, inflight and QoS 2
    /// ids, all of it.
    All,
    /// Already durable: its record again (expiry, will).
    Record,
    /// No longer durable (expiry 0 now): its records dropped.
    Drop,
}

/// A session is durable when the broker has a store and the connection's
/// session expiry is above 0; `persisted`: it was so before this attach.
pub fn persistence(store: bool, expiry: u32, persisted: bool) -> Persist {
    match (store && expiry > 0, persisted) {
        (true, false) => Persist::All,
        (true, true) => Persist::Record,
        (false, true) => Persist::Drop,
        (false, false) => Persist::Nothing,
    }
}

/// The last packet of a connection the server ends with `reason`: a
/// DISCONNECT for 5.0; 3.1.1 has none (the connection is closed).
pub fn server_disconnect(version: Version, reason: u8) -> Option<Packet> {
    (version == Version::V5).then(|| {
        Packet::Disconnect(Disconnect {
            reason,
            properties: Properties::default(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Existing = Existing {
        live: true,
        ended: false,
    };
    const OFFLINE: Existing = Existing {
        live: false,
        ended: false,
    };
    const ENDED: Existing = Existing {
        live: false,
        ended: true,
    };

    #[test]
    fn a_live_connection_is_kicked_with_0x8e_whatever_clean_start_says() {
        for clean_start in [false, true] {
            assert_eq!(
                takeover(Some(LIVE), clean_start),
                Takeover::Kick { reason: 0x8E }
            );
        }
    }

    #[test]
    fn an_offline_session_is_resumed_without_clean_start_only() {
        let resumed = takeover(Some(OFFLINE), false);
        assert_eq!(resumed, Takeover::Resume);
        assert!(resumed.session_present());
        let fresh = takeover(Some(OFFLINE), true);
        assert_eq!(fresh, Takeover::Fresh { discard_old: true });
        assert!(!fresh.session_present());
    }

    #[test]
    fn an_ended_session_or_none_gives_a_fresh_one() {
        let f = takeover(Some(ENDED), false);
        assert_eq!(f, Takeover::Fresh { discard_old: true });
        assert!(!f.session_present());
        for clean_start in [false, true] {
            let f = takeover(None, clean_start);
            assert_eq!(f, Takeover::Fresh { discard_old: false });
            assert!(!f.session_present());
        }
    }

    #[test]
    fn persistence_follows_the_store_and_the_expiry() {
        assert_eq!(persistence(true, 60, false), Persist::All);
        assert_eq!(persistence(true, 60, true), Persist::Record);
        assert_eq!(persistence(true, 0, true), Persist::Drop);
        assert_eq!(persistence(true, 0, false), Persist::Nothing);
        assert_eq!(persistence(false, 60, false), Persist::Nothing);
        assert_eq!(persistence(false, 60, true), Persist::Drop);
    }

    #[test]
    fn the_server_says_why_it_ends_a_connection_in_5_0_only() {
        let d = server_disconnect(Version::V5, 0x8E);
        assert!(matches!(d, Some(Packet::Disconnect(d)) if d.reason == 0x8E));
        assert_eq!(server_disconnect(Version::V311, 0x8E), None);
    }
}
