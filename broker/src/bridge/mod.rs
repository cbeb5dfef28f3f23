//! MQTT bridges: this broker as a client of another one, forwarding
//! local topics out (`[[bridges.out]]`) and remote topics in
//! (`[[bridges.in]]`), with a durable outbound buffer.
//!
//! - [`config`]: `[[bridges]]` -> checked [`config::BridgeSpec`].
//! - [`mapping`]: the topic mapping syntax of a direction.
//! - [`tls`], [`transport`]: the outbound byte stream (TCP, TLS, WebSocket).

pub mod config;
pub mod mapping;
pub mod tls;
pub mod transport;
