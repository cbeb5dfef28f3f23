//! Midge nodes acting as one broker, on NATS JetStream.
//!
//! This crate is the cluster's NATS side; it knows MQTT only through
//! `midge-protocol`'s types and talks to the broker through [`Local`]. It
//! adds no consensus of its own: NATS core subjects carry messages between
//! nodes by interest, JetStream streams and KV buckets (replicated by NATS's
//! own Raft) hold what must survive a node.
//!
//! - [`subject`]: MQTT topics and filters <-> NATS subjects, KV keys (a
//!   bijection, property-tested).
//! - [`envelope`]: what crosses nodes: payload as is, a few short headers.
//! - [`node`]: [`Cluster`]: connect, stream and buckets, forward a publish
//!   (core NATS for QoS 0; the `<C>_MSGS` stream, acknowledged before the
//!   publisher's PUBACK, for QoS 1/2), interest subscriptions per distinct
//!   local filter, the inbound task.
//! - [`ownership`]: who owns a client id: compare-and-set with an epoch.
//! - [`membership`]: node records with a heartbeat and a max age.
//! - [`remote`]: what filters the other nodes hold (a publish nobody else
//!   wants stays on its node).
//! - [`retained`]: the retained bucket, watched into every node.
//! - [`state`]: persistent sessions' records (subscriptions, checkpoint in
//!   the stream), so another node resumes a session whose node died.
//! - [`wills`]: wills of connected clients, taken once when their node dies.
//! - [`metrics`]: counters and round-trip histograms of every NATS wait.
//! - [`config`]: the `[cluster]` section.

pub mod config;
pub mod envelope;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod ownership;
pub mod remote;
pub mod retained;
pub mod state;
pub mod subject;
pub mod wills;

pub use async_nats;
pub use config::ClusterConfig;
pub use envelope::Envelope;
pub use node::{Cluster, ClusterError, Local};
