//! Live reload of the config file's rules: on SIGHUP and when the file
//! changes (polled). A bad new rule set is refused whole, with the errors,
//! and the running set stays. Connections are untouched.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use crate::broker::Broker;
use crate::Config;

/// How often the file's modification time is checked.
const POLL: Duration = Duration::from_secs(2);

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reloads the rules from `path` now. Returns the number of rules loaded.
pub fn reload(broker: &Broker, path: &Path, running: &Config) -> Result<usize, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let n = broker
        .rules
        .load(&config.rules)
        .map_err(|errors| format!("{}: {}", path.display(), errors.join("; ")))?;
    if config.listeners != running.listeners
        || config.mqtt != running.mqtt
        || config.log != running.log
    {
        warn!(file = %path.display(), "listener, mqtt and log settings changed: they take effect after a restart");
    }
    Ok(n)
}

/// Watches `path` (SIGHUP or a changed file) until the task is dropped.
pub async fn watch(broker: Arc<Broker>, path: PathBuf, running: Config) {
    let mut last = mtime(&path);
    let mut tick = tokio::time::interval(POLL);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let why = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => "SIGHUP",
            _ = tick.tick() => "file change",
        };
        #[cfg(not(unix))]
        let why = {
            tick.tick().await;
            "file change"
        };
        let now = mtime(&path);
        if why == "file change" && now == last {
            continue;
        }
        last = now;
        match reload(&broker, &path, &running) {
            Ok(n) => info!(trigger = why, rules = n, file = %path.display(), "rules reloaded"),
            Err(e) => {
                error!(trigger = why, error = %e, "reload refused; the previous rules keep running")
            }
        }
    }
}
