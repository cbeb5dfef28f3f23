//! Midge: an MQTT 3.1.1 / 5.0 broker. See ARCHITECTURE.md for the layers.
//!
//! Data flows bytes -> [`midge_protocol`] packets -> `server::connection`
//! (one task per client, reading and writing) -> [`session`] ->
//! [`broker::Broker::publish`] -> [`router`] -> the matching sessions'
//! queues -> their connections' output (`server::writer::Output`).

pub mod admin;
pub mod app;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod builtin;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod config_errors;
pub mod events;
pub mod limits;
pub mod logging;
pub mod message;
pub mod node;
pub mod passwd;
pub mod pem;
pub mod plugins;
pub mod ratelog;
pub mod records;
pub mod reload;
pub mod router;
pub mod rules;
pub mod server;
pub mod services;
pub mod session;
pub mod store;
pub mod sys;

pub use app::{App, StartError};
pub use config::Config;
