//! Live reload: on SIGHUP, when the config file changes, or when a plugin's
//! `.wasm` file changes (all polled). The rules are reloaded from the file (a
//! bad new set is refused whole, with the errors, and the running set
//! stays); plugins whose `.wasm` changed are recompiled and swapped in (one
//! that fails to load is refused by name and its previous version keeps
//! running). Connections are untouched. Other changes are reported as
//! needing a restart.

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
    let config = Config::load_effective(path).map_err(|e| e.to_string())?;
    apply(broker, &config, path, running)
}

/// Applies what reloads live from an already loaded `config`: the rules
/// (all or none) and the log filter; warns about the rest.
fn apply(broker: &Broker, config: &Config, path: &Path, running: &Config) -> Result<usize, String> {
    // The file's rules with the admin API's changes (in the running
    // config's rules file) applied.
    let n = crate::rules::overlay::load(&broker.rules, &config.rules, &running.api_rules_path())
        .map_err(|e| e.naming(path))?;
    // Applied every time: the file may have gone back to what the broker
    // started with after an earlier reload changed it.
    match crate::logging::reload(&config.log) {
        Ok(true) => {
            info!(level = %config.log.level, trace_clients = ?config.log.trace_clients, "log filter applied")
        }
        Ok(false) => {}
        Err(e) => warn!(error = %e, "log filter not reloaded"),
    }
    let later = restart_needed(config, running);
    if !later.is_empty() {
        warn!(file = %path.display(), sections = ?later, "these settings changed and take effect after a restart (rules, log level and trace_clients, and a plugin's .wasm file reload live)");
    }
    Ok(n)
}

/// Sections of `new` that differ from the `running` config and only take
/// effect after a restart.
pub fn restart_needed(new: &Config, running: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |changed: bool, name| {
        if changed {
            out.push(name);
        }
    };
    check(new.listeners != running.listeners, "listeners");
    check(new.mqtt != running.mqtt, "mqtt");
    check(new.log.json != running.log.json, "log.json");
    check(new.persistence != running.persistence, "persistence");
    check(new.plugins != running.plugins, "plugins");
    check(new.limits != running.limits, "limits");
    check(new.admin != running.admin, "admin");
    check(new.sys != running.sys, "sys");
    out
}

/// What [`reload_all`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReloadReport {
    /// Rules now running (all of the file's).
    pub rules: usize,
    /// Plugins whose `.wasm` changed and were swapped in.
    pub plugins_reloaded: Vec<String>,
    /// Plugins whose new `.wasm` was refused (the previous version runs).
    pub plugin_errors: Vec<String>,
    /// Changed sections that need a restart.
    pub restart_needed: Vec<&'static str>,
}

/// What SIGHUP does, for one caller (the admin API): every plugin whose
/// `.wasm` changed, then the rules from `path` (refused whole on error:
/// `Err`, the running set stays).
pub async fn reload_all(
    broker: &Broker,
    path: &Path,
    running: &Config,
) -> Result<ReloadReport, String> {
    let config = Config::load_effective(path).map_err(|e| e.to_string())?;
    // Plugins first: the rules may call functions a new version offers.
    let (plugins_reloaded, plugin_errors) = match reload_plugins(broker).await {
        Ok(names) => (names, Vec::new()),
        Err(e) => (Vec::new(), vec![e]),
    };
    let rules = apply(broker, &config, path, running)?;
    info!(rules, plugins = ?plugins_reloaded, file = %path.display(), "reloaded through the admin API");
    Ok(ReloadReport {
        rules,
        plugins_reloaded,
        plugin_errors,
        restart_needed: restart_needed(&config, running),
    })
}

/// Recompiles and swaps in every plugin whose `.wasm` content changed.
/// Returns the names reloaded, or every refusal (plugin name and error);
/// a refused plugin keeps running its previous version.
pub async fn reload_plugins(broker: &Broker) -> Result<Vec<String>, String> {
    let Some(host) = broker.plugins.get() else {
        return Ok(Vec::new());
    };
    let mut reloaded = Vec::new();
    let mut errors = Vec::new();
    for (name, r) in host.reload_changed().await {
        match r {
            Ok(true) => reloaded.push(name),
            Ok(false) => {}
            Err(e) => errors.push(format!("plugin `{name}`: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(reloaded)
    } else {
        Err(errors.join("; "))
    }
}

fn plugin_mtimes(running: &Config) -> Vec<Option<SystemTime>> {
    running
        .plugins
        .plugins
        .iter()
        .map(|p| mtime(Path::new(&p.path)))
        .collect()
}

/// Watches `path` (SIGHUP or a changed file) until the task is dropped.
pub async fn watch(broker: Arc<Broker>, path: PathBuf, running: Config) {
    let mut last = mtime(&path);
    let mut last_wasm = plugin_mtimes(&running);
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
        let wasm = plugin_mtimes(&running);
        let config_changed = now != last;
        let wasm_changed = wasm != last_wasm;
        if why == "file change" && !config_changed && !wasm_changed {
            continue;
        }
        last = now;
        last_wasm = wasm;
        // Plugins first: the rules may call functions a new version offers.
        match reload_plugins(&broker).await {
            Ok(names) if names.is_empty() => {}
            Ok(names) => info!(trigger = why, plugins = ?names, "plugins reloaded"),
            Err(e) => {
                error!(trigger = why, error = %e, "plugin reload refused; the previous version keeps running")
            }
        }
        if why == "SIGHUP" || config_changed {
            match reload(&broker, &path, &running) {
                Ok(n) => info!(trigger = why, rules = n, file = %path.display(), "rules reloaded"),
                Err(e) => {
                    error!(trigger = why, error = %e, "reload refused; the previous rules keep running")
                }
            }
        }
    }
}
