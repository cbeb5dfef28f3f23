//! Live reload: on SIGHUP, when the config file changes, or when a plugin's
//! `.wasm` file changes (all polled), and on `POST /api/v1/config/reload`.
//! The `[[plugins.plugin]]` entries are applied first
//! (`PluginHost::apply`: changed entries and files are rebuilt and swapped
//! in, new ones added, removed ones dropped, the chain reordered; one that
//! fails is refused by name and its previous version keeps running), then
//! the rules (the file's, with the admin API's overlay applied again; a bad new set is refused whole, with the errors, and the
//! running set stays; they compile against the plugins' functions as they
//! are now) and the log filter. Connections are untouched. Other changes,
//! including the host-wide `[plugins]` settings, are reported as needing a
//! restart.

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

/// Reloads the rules (and the log filter) from `path` now, leaving the
/// plugins alone. Returns the number of rules loaded.
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
            info!(level = %config.log.level, trace_clients = %crate::logging::list(&config.log.trace_clients), "log filter applied")
        }
        Ok(false) => {}
        Err(e) => warn!(error = %e, "log filter not reloaded"),
    }
    let later = restart_needed(config, running);
    if !later.is_empty() && newly_pending(path, &later) {
        warn!(file = %path.display(), sections = %crate::logging::list(&later), "these settings changed and take effect after a restart (rules, log level and trace_clients, and each [[plugins.plugin]] entry and its .wasm file reload live)");
    }
    Ok(n)
}

/// Has the set of sections waiting for a restart changed since the last
/// reload of `path`? The warning is given once per change, not on every
/// reload (a file edited often would repeat it each time).
fn newly_pending(path: &Path, sections: &[&'static str]) -> bool {
    static WARNED: parking_lot::Mutex<Vec<(PathBuf, Vec<&'static str>)>> =
        parking_lot::Mutex::new(Vec::new());
    let mut warned = WARNED.lock();
    match warned.iter_mut().find(|(p, _)| p == path) {
        Some((_, last)) if last.as_slice() == sections => false,
        Some((_, last)) => {
            *last = sections.to_vec();
            true
        }
        None => {
            warned.push((path.to_path_buf(), sections.to_vec()));
            true
        }
    }
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
    // The plugin host is started with the broker when the file configures
    // any plugin; a broker started without one gets its first at a restart.
    check(
        running.plugins.plugins.is_empty() && !new.plugins.plugins.is_empty(),
        "plugins.plugin (the broker started without plugins)",
    );
    check(new.limits != running.limits, "limits");
    check(new.admin != running.admin, "admin");
    check(new.sys != running.sys, "sys");
    check(new.cluster != running.cluster, "cluster");
    check(new.bridges != running.bridges, "bridges");
    // Host-wide [plugins] settings, by name (plugins.kafka, plugins.databases, ...).
    out.extend(new.plugins.restart_needed(&running.plugins));
    out
}

/// A plugin a reload refused, and why (its previous version, if any,
/// keeps running).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PluginRefusal {
    /// The plugin's configured name.
    pub plugin: String,
    /// The error, naming the plugin.
    pub error: String,
}

/// What a reload did to the plugin chain.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PluginChanges {
    /// New plugins, loaded and in the chain.
    pub plugins_added: Vec<String>,
    /// Plugins taken out of the chain (no longer listed, or `enabled = false`).
    pub plugins_removed: Vec<String>,
    /// Plugins whose entry (config, limits, grants, ...) or `.wasm` changed
    /// and whose new version runs now.
    pub plugins_reloaded: Vec<String>,
    /// Plugins refused: a running one keeps its previous version, a new one
    /// was not added.
    pub plugins_refused: Vec<PluginRefusal>,
}

impl PluginChanges {
    fn is_empty(&self) -> bool {
        self == &PluginChanges::default()
    }

    pub fn log(&self, trigger: &str) {
        if !self.is_empty() {
            info!(
                trigger,
                added = %crate::logging::list(&self.plugins_added),
                removed = %crate::logging::list(&self.plugins_removed),
                reloaded = %crate::logging::list(&self.plugins_reloaded),
                refused = %crate::logging::list(&self.plugins_refused.iter().map(|r| &r.plugin).collect::<Vec<_>>()),
                "plugins applied"
            );
        }
        for r in &self.plugins_refused {
            error!(trigger, plugin = %r.plugin, error = %r.error, "plugin refused; its previous version (if any) keeps running");
        }
    }
}

/// Applies `config`'s `[[plugins.plugin]]` entries to the running plugin
/// host (nothing without one: see [`restart_needed`]). The rules' plugin
/// functions are the host's, so rules compiled afterwards see the new set.
pub async fn apply_plugins(broker: &Broker, config: &Config) -> PluginChanges {
    let Some(host) = broker.plugins() else {
        return PluginChanges::default();
    };
    let report = host.apply(&config.plugins).await;
    PluginChanges {
        plugins_added: report.added,
        plugins_removed: report.removed,
        plugins_reloaded: report.reloaded,
        plugins_refused: report
            .refused
            .into_iter()
            .map(|(plugin, e)| PluginRefusal {
                error: format!("plugin `{plugin}`: {e}"),
                plugin,
            })
            .collect(),
    }
}

/// What [`reload_all`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReloadReport {
    /// Rules now running (the file's with the admin API's overlay applied).
    pub rules: usize,
    /// What happened to the plugins.
    #[serde(flatten)]
    pub plugins: PluginChanges,
    /// Changed sections that need a restart.
    pub restart_needed: Vec<&'static str>,
}

/// A reload whose rules were refused (the running rules stay). The plugins
/// were applied before the rules were read: `plugins` says how.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadRefused {
    /// Why: the file does not load, or its rules do not compile.
    pub error: String,
    /// What the plugins did (empty when the file did not load).
    pub plugins: PluginChanges,
}

impl std::fmt::Display for ReloadRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// What SIGHUP does: the file's plugin entries (applied live, one refused
/// plugin keeping its previous version), then its rules (refused whole on
/// error: `Err`, the running set stays) and log filter.
pub async fn reload_all(
    broker: &Broker,
    path: &Path,
    running: &Config,
) -> Result<ReloadReport, ReloadRefused> {
    let config = Config::load_effective(path).map_err(|e| ReloadRefused {
        error: e.to_string(),
        plugins: PluginChanges::default(),
    })?;
    // Plugins first: the rules may call functions a new version offers.
    let plugins = apply_plugins(broker, &config).await;
    if let Err(e) =
        crate::auth::check_authenticator(broker.limits.allow_anonymous, broker.plugins())
    {
        error!(error = %e, "after this reload every client is refused");
    }
    let rules = match apply(broker, &config, path, running) {
        Ok(n) => n,
        Err(error) => return Err(ReloadRefused { error, plugins }),
    };
    Ok(ReloadReport {
        rules,
        plugins,
        restart_needed: restart_needed(&config, running),
    })
}

/// Recompiles and swaps in every plugin whose `.wasm` content changed.
/// Returns the names reloaded, or every refusal (plugin name and error);
/// a refused plugin keeps running its previous version.
pub async fn reload_plugins(broker: &Broker) -> Result<Vec<String>, String> {
    let Some(host) = broker.plugins() else {
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

/// The `.wasm` files of the running plugins (following the last applied
/// configuration) and their modification times.
fn plugin_mtimes(broker: &Broker) -> Vec<(PathBuf, Option<SystemTime>)> {
    let Some(host) = broker.plugins() else {
        return Vec::new();
    };
    host.plugins()
        .iter()
        .filter_map(|name| host.plugin_config(name))
        .map(|p| {
            let t = mtime(&p.path);
            (p.path, t)
        })
        .collect()
}

/// Watches `path` (SIGHUP or a changed file) and the running plugins'
/// `.wasm` files until the task is dropped.
///
/// The SIGHUP handler is installed by this call, not when the returned
/// future first runs: a caller that announces it is ready after calling it
/// (the "listening" lines) cannot be killed by an early SIGHUP, whose
/// default action ends the process. Call it within the tokio runtime.
pub fn watch(
    broker: Arc<Broker>,
    path: PathBuf,
    running: Config,
) -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hup: Option<()> = None;
    watch_with(broker, path, running, hup)
}

async fn watch_with(
    broker: Arc<Broker>,
    path: PathBuf,
    running: Config,
    #[cfg(unix)] mut hup: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))] _hup: Option<()>,
) {
    let mut last = mtime(&path);
    let mut last_wasm = plugin_mtimes(&broker);
    let mut tick = tokio::time::interval(POLL);
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
        let config_changed = now != last;
        let wasm_changed = plugin_mtimes(&broker) != last_wasm;
        if why == "file change" && !config_changed && !wasm_changed {
            continue;
        }
        last = now;
        if why == "SIGHUP" || config_changed {
            // The whole file: plugin entries (and changed .wasm), then rules.
            match reload_all(&broker, &path, &running).await {
                Ok(r) => {
                    r.plugins.log(why);
                    info!(trigger = why, rules = r.rules, file = %path.display(), "rules reloaded");
                }
                Err(e) => {
                    e.plugins.log(why);
                    error!(trigger = why, error = %e, "reload refused; the previous rules keep running")
                }
            }
        } else {
            // Only .wasm files changed: swap in those, configs unchanged.
            match reload_plugins(&broker).await {
                Ok(names) if names.is_empty() => {}
                Ok(names) => {
                    info!(trigger = why, plugins = %crate::logging::list(&names), "plugins reloaded")
                }
                Err(e) => {
                    error!(trigger = why, error = %e, "plugin reload refused; the previous version keeps running")
                }
            }
        }
        // The chain may have changed: watch the files it runs now.
        last_wasm = plugin_mtimes(&broker);
    }
}
