//! The plain records a session holds and the durable store writes: a
//! [`Delivery`] (a message on its way to one session), the [`Stage`] of an
//! outgoing QoS 1/2 handshake, a [`SubscriptionRecord`] and the
//! [`SharedKey`] of a shared subscription group. Below both `session` and
//! `store` (and `router`), which re-export them, so neither imports the
//! other's types.

use std::sync::Arc;

use midge_protocol::{QoS, SubOptions};
use smallvec::SmallVec;

use crate::message::Message;

/// A message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: SmallVec<[u32; 2]>,
    pub shared: Option<SharedKey>,
    /// Sequence number in the durable store (0: not stored).
    pub seq: u64,
}

/// Where an outgoing QoS 1/2 message is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent, PUBACK (QoS 1) or PUBREC (QoS 2) awaited.
    Published,
    /// PUBREL sent, PUBCOMP awaited.
    Released,
}

/// A subscription as the session records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub opts: SubOptions,
    pub id: Option<u32>,
}

/// Identifies a shared subscription group: `$share/{group}/{filter}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharedKey {
    pub group: Arc<str>,
    pub filter: Arc<str>,
}
