//! Midge broker library. See ARCHITECTURE.md.
pub mod config;
pub mod server;
pub use config::Config;
pub use server::{Server, ServerError};
