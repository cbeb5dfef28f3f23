//! The message as it travels through the broker: one `Arc<Message>` is
//! shared by every subscriber queue it is delivered to.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use midge_protocol::{ByteStr, Properties, Publish, QoS};

/// A published message, immutable once routed.
#[derive(Debug)]
pub struct Message {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Properties forwarded to subscribers (no topic alias, no subscription
    /// identifiers: those are per delivery).
    pub properties: Properties,
    /// Client id of the publisher (for No Local); `None` for wills and the broker itself.
    pub publisher: Option<Arc<str>>,
    pub received_at: Instant,
}

impl Message {
    /// Builds a message from a received PUBLISH whose topic alias is already resolved.
    pub fn from_publish(p: Publish, publisher: Option<Arc<str>>) -> Message {
        let mut properties = p.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            publisher,
            received_at: Instant::now(),
        }
    }

    /// Seconds of message expiry left, `Some(0)` never returned: an expired
    /// message yields `Err(())`. `Ok(None)` when the message does not expire.
    pub fn remaining_expiry(&self, now: Instant) -> Result<Option<u32>, Expired> {
        match self.properties.message_expiry_interval {
            None => Ok(None),
            Some(total) => {
                let elapsed = now.saturating_duration_since(self.received_at).as_secs();
                if elapsed >= u64::from(total) {
                    Err(Expired)
                } else {
                    Ok(Some(total - elapsed as u32))
                }
            }
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.remaining_expiry(now).is_err()
    }
}

/// Marker: the message's expiry interval has elapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;
