//! Sans-IO MQTT 3.1.1 and 5.0 codec: the lowest layer of Midge.
//!
//! Bytes in, [`Packet`]s out, and back; no sockets, no tokio, no clocks.
//! The broker's connection task appends what it reads to a `BytesMut` and
//! calls [`decode`] until it returns `Ok(None)`; strings, topics, payloads
//! and binary properties in the decoded packets are `Bytes` slices of that
//! buffer (zero copy). [`encode`] writes a packet into an output buffer;
//! [`Publish::encode_header`] writes only a PUBLISH header so a writer can
//! send the payload `Bytes` without copying it.
//!
//! Decoding is strict: every malformed or forbidden input is a
//! [`DecodeError`] that carries the MQTT 5 reason code the broker sends
//! before closing the connection (0x81 malformed, 0x82 protocol error,
//! 0x95 packet too large, ...).
//!
//! Which error a rule breaks gives:
//!
//! - `Malformed`: reserved fixed-header / CONNECT / CONNACK / subscription
//!   option bits, QoS 3, DUP on QoS 0, bad remaining length (over 4 bytes or
//!   not minimal), invalid UTF-8 or U+0000, lengths past the end, leftover
//!   bytes, unknown property ids, invalid topic filter syntax, AUTH in 3.1.1,
//!   wrong protocol name.
//! - `Protocol`: anything but CONNECT before the version is known, packet
//!   id 0, duplicate or misplaced properties, forbidden property values (0 or
//!   not 0/1), Authentication Data without Method, topic names with
//!   wildcards or empty without a Topic Alias, SUBSCRIBE / UNSUBSCRIBE
//!   without filters, No Local on a shared subscription, reason / return
//!   codes the packet may not carry.
//! - `TopicAliasInvalid`: Topic Alias 0. `TooLarge`: over `max_size`.
//!   `UnsupportedProtocol`: "MQTT" with a level other than 4/5, or "MQIsdp".
//!
//! One file per packet kind; shared primitives in `codec.rs` and
//! `properties.rs`; topic name / filter validation and matching in `topic.rs`.

mod auth;
mod codec;
mod connack;
mod connect;
mod disconnect;
mod error;
mod packet;
mod pingreq;
mod pingresp;
mod properties;
mod puback;
mod pubcomp;
mod publish;
mod pubrec;
mod pubrel;
pub mod reason;
mod suback;
mod subscribe;
pub mod topic;
mod types;
mod unsuback;
mod unsubscribe;

pub use error::DecodeError;
pub use packet::{decode, encode, encoded_len, Packet};
pub use properties::{Properties, PropertyValues};
pub use types::*;

#[cfg(test)]
mod testutil;
