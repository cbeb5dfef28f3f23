//! Logging through `tracing`: text or JSON lines on stderr, a filter from
//! `[log] level` (or `RUST_LOG`) plus `[log] trace_clients`, swappable at
//! run time so a reload can start or stop tracing a client.
//!
//! Colours only on a terminal (never into files and pipes; `NO_COLOR`
//! turns them off there too). Under systemd (`JOURNAL_STREAM` set: stderr
//! is the journal) lines carry no timestamp of their own, the journal
//! stamps them: `journalctl -u midge` reads them, and the journal rotates
//! and bounds them (`journald.conf`'s `SystemMaxUse=`). Without systemd,
//! send stderr where logs go (`midge serve 2>>/var/log/midge.log` with
//! logrotate's `copytruncate`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Logging.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as "info" or "midge=debug"; `RUST_LOG` wins when set.
    pub level: String,
    /// Log lines as JSON.
    pub json: bool,
    /// Client ids whose packets are logged (debug level, in and out) while
    /// the rest of the broker logs at `level`.
    pub trace_clients: Vec<String>,
}

impl LogConfig {
    /// The `tracing` filter: `level` (or `RUST_LOG` when `from_env`),
    /// plus debug for the connection spans of `trace_clients`.
    pub fn filter(&self) -> Result<tracing_subscriber::EnvFilter, String> {
        self.filter_with(None)
    }

    /// As [`LogConfig::filter`], starting from `base` (e.g. `RUST_LOG`) instead of `level`.
    pub fn filter_with(&self, base: Option<&str>) -> Result<tracing_subscriber::EnvFilter, String> {
        let base = base.unwrap_or(&self.level);
        let mut filter = tracing_subscriber::EnvFilter::try_new(base)
            .map_err(|e| format!("field `log.level`: `{base}`: {e}"))?;
        if !base.contains("rustls") {
            // rustls warns about what clients do (an IP address as SNI, as
            // mosquitto_pub sends) on every connection; failed handshakes
            // are logged by the broker itself (crate::ratelog).
            if let Ok(d) = "rustls=error".parse() {
                filter = filter.add_directive(d);
            }
        }
        for id in &self.trace_clients {
            if id.is_empty() || id.contains(['{', '}', '[', ']', ',', '=', '"', ' ']) {
                return Err(format!(
                    "field `log.trace_clients`: `{id}`: client ids with spaces, quotes or any of {{}}[],= cannot be traced"
                ));
            }
            let directive = format!("[conn{{client_id={id}}}]=debug");
            filter = filter.add_directive(
                directive
                    .parse()
                    .map_err(|e| format!("field `log.trace_clients`: `{id}`: {e}"))?,
            );
        }
        Ok(filter)
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            json: false,
            trace_clients: Vec::new(),
        }
    }
}

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
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let installed = if cfg.json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else if journal {
        registry
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .without_time()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_ansi(colours())
                    .with_writer(std::io::stderr),
            )
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

/// ANSI colours: only when stderr is a terminal and `NO_COLOR` is unset.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `error` and its sources as one line, `a: b: c`, leaving out a source
/// whose text the line already holds (errors that print their source in
/// their own message would otherwise read twice).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = e.source();
    }
    line
}

/// A list for a log field: `a, b, c` (Display, not Debug's `["a", "b"]`).
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 1.2.3.4:5: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_source_already_in_the_message_is_not_repeated() {
        let e = Outer(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        let source = e.0.to_string();
        assert_eq!(chain(&e), format!("cannot listen on 1.2.3.4:5: {source}"));
        let wrapped = anyhow::Error::new(e).context("start");
        let line = chain(wrapped.as_ref());
        assert_eq!(line.matches(&source).count(), 1, "{line}");
        assert!(line.starts_with("start: cannot listen"), "{line}");
    }

    #[test]
    fn lists_read_as_text() {
        assert_eq!(list(&["a", "b"]), "a, b");
        assert_eq!(list::<String>(&[]), "");
    }
}
