//! Logging through `tracing`: text or JSON lines on stderr, a filter from
//! `[log] level` (or `RUST_LOG`) plus `[log] trace_clients`, swappable at
//! run time so a reload can start or stop tracing a client.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::LogConfig;

type Swap = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Set by [`init`]: replaces the running filter.
static SWAP: OnceLock<Swap> = OnceLock::new();

/// `RUST_LOG` when set (it wins over `[log] level`).
fn env_filter_text() -> Option<String> {
    std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty())
}

/// Installs the global subscriber (once per process; later calls do nothing).
pub fn init(cfg: &LogConfig) {
    let filter = cfg
        .filter_with(env_filter_text().as_deref())
        .unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let (filter, handle) = reload::Layer::<EnvFilter, Registry>::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Logs go to stderr; stdout carries only the "listening on" lines scripts read.
    let installed = if cfg.json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    if installed.is_ok() {
        let _ = SWAP.set(Box::new(move |f| {
            handle.reload(f).map_err(|e| e.to_string())
        }));
    }
}

/// Applies a changed `[log] level` / `trace_clients` to the running
/// subscriber. `Ok(false)` when [`init`] did not install it (embedded use).
pub fn reload(cfg: &LogConfig) -> Result<bool, String> {
    let Some(swap) = SWAP.get() else {
        return Ok(false);
    };
    let filter = cfg.filter_with(env_filter_text().as_deref())?;
    swap(filter)?;
    Ok(true)
}
