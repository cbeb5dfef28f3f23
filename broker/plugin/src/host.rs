//! The plugin host: the configured plugin chain and the hooks the broker calls.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::Plugin;
use crate::caps::{Granted, Services, StoreState};
use crate::config::{FailurePolicy, PluginsConfig};
use crate::error::{Hook, PluginError};
use crate::slot::{Call, Reply, Runtime, Slot};
use crate::types::{
    AuthDecision, AuthRequest, AuthzDecision, AuthzRequest, ClientInfo, Event, EventSet,
    FunctionError, HookError, HookSet, Manifest, Message, Outcome, PublishDecision, PublishVerdict,
    RuleFunction,
};

/// Reason code answered by a fail-closed `authenticate` (0x88 server unavailable).
pub const FAIL_CLOSED_AUTH_REASON: u8 = 0x88;
/// Reason code answered by a fail-closed `on-publish` (0x80 unspecified error).
pub const FAIL_CLOSED_PUBLISH_REASON: u8 = 0x80;

/// The loaded plugin chain. Cheap to clone (one `Arc`); every method takes
/// `&self` and may be called from any task concurrently.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.slots.iter().map(|s| &*s.name).collect();
        f.debug_struct("PluginHost")
            .field("plugins", &names)
            .finish()
    }
}

struct Inner {
    rt: Runtime,
    slots: Vec<Arc<Slot>>,
    ticker_stop: Arc<AtomicBool>,
    /// The sled store behind kv grants (when any plugin has one).
    kv_db: Option<sled::Db>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Counters of one plugin (since the host started; they survive reloads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginMetrics {
    /// Configured name.
    pub name: String,
    /// Calls that reached an instance.
    pub calls: u64,
    /// Failed calls of any kind (trap, timeout, out of memory, busy,
    /// suspended, failed instantiation).
    pub failures: u64,
    /// Traps.
    pub traps: u64,
    /// Deadline overruns.
    pub timeouts: u64,
    /// Memory cap hits.
    pub out_of_memory: u64,
    /// Calls that found every instance busy.
    pub busy: u64,
    /// Calls answered without calling because the plugin was suspended.
    pub suspended_calls: u64,
    /// Times the plugin was suspended.
    pub suspensions: u64,
    /// Whether it is suspended now.
    pub suspended: bool,
    /// Whether it is enabled (see [`PluginHost::set_enabled`]).
    pub enabled: bool,
    /// Instances started (including the one per load).
    pub instances_created: u64,
    /// Warm instances waiting in the pool now.
    pub idle_instances: u64,
    /// Total time spent in calls, in nanoseconds.
    pub call_nanos: u64,
    /// Successful reloads.
    pub reloads: u64,
    /// Failed reloads (the previous version stayed).
    pub reload_failures: u64,
}

impl PluginMetrics {
    /// "disabled", "suspended" or "running" (the admin API and `/metrics`).
    pub fn state(&self) -> &'static str {
        if !self.enabled {
            "disabled"
        } else if self.suspended {
            "suspended"
        } else {
            "running"
        }
    }
}

impl PluginHost {
    /// Load every enabled plugin of `config` (compile, start one instance,
    /// run `init`), in chain order. Fails on the first plugin that cannot be
    /// loaded, or on an invalid configuration.
    pub async fn load(
        config: &PluginsConfig,
        services: Services,
    ) -> Result<PluginHost, PluginError> {
        if let Some(e) = validate(config).into_iter().next() {
            return Err(e);
        }
        let rt = runtime()?;

        let kv_db = if config
            .plugins
            .iter()
            .any(|p| p.enabled && p.grants.kv.is_some())
        {
            let path = config.kv_path.clone();
            let db = tokio::task::spawn_blocking(move || sled::open(path))
                .await
                .map_err(|e| PluginError::Config(format!("kv store: {e}")))?
                .map_err(|e| {
                    PluginError::Config(format!("kv store {}: {e}", config.kv_path.display()))
                })?;
            Some(db)
        } else {
            None
        };

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = rt.engine.clone();
            let stop = ticker_stop.clone();
            let tick = Duration::from_millis(config.epoch_tick_ms.max(1));
            std::thread::Builder::new()
                .name("midge-plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Config(format!("epoch thread: {e}")))?;
        }
        // From here on, an early return drops `inner`-to-be: stop the ticker.
        let stop_guard = StopOnDrop(ticker_stop.clone());

        let mut slots = Vec::new();
        for p in config.plugins.iter().filter(|p| p.enabled) {
            let kv = match (&p.grants.kv, &kv_db) {
                (Some(ns), Some(db)) => Some(
                    db.open_tree(format!("ns/{ns}"))
                        .map_err(|e| PluginError::Config(format!("kv namespace {ns}: {e}")))?,
                ),
                _ => None,
            };
            let granted = Arc::new(Granted {
                plugin: Arc::from(p.name.as_str()),
                log: p.grants.log,
                kv,
                kv_max_value: config.kv_max_value_bytes,
                publish: p.grants.publish.clone(),
                sql: p.grants.sql.clone(),
                kafka: p.grants.kafka.clone(),
                services: services.clone(),
            });
            let slot = Slot::load(&rt, p.clone(), granted).await?;
            let m = &slot.current.load().manifest;
            tracing::info!(plugin = %p.name, manifest = %m.name, version = %m.version, "plugin loaded");
            slots.push(slot);
        }
        std::mem::forget(stop_guard);
        Ok(PluginHost {
            inner: Arc::new(Inner {
                rt,
                slots,
                ticker_stop,
                kv_db,
            }),
        })
    }

    /// Makes every kv write so far durable (graceful shutdown calls it;
    /// otherwise sled syncs every few hundred milliseconds).
    pub async fn flush(&self) -> Result<(), PluginError> {
        let Some(db) = self.inner.kv_db.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| PluginError::Config(format!("kv store flush: {e}")))?
            .map(|_| ())
            .map_err(|e| PluginError::Config(format!("kv store flush: {e}")))
    }

    /// Checks a `[plugins]` configuration without running any plugin:
    /// names, grants and limits, and that each enabled plugin's file is a
    /// component that links against the host's world (`midge check`). Every
    /// problem is returned. `init` is not called and the kv store is not
    /// opened (a running broker holds it).
    pub async fn check(config: &PluginsConfig) -> Vec<PluginError> {
        let mut errors = validate(config);
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => {
                errors.push(e);
                return errors;
            }
        };
        for p in config.plugins.iter().filter(|p| p.enabled) {
            if let Err(e) = Slot::check(&rt, p).await {
                errors.push(e);
            }
        }
        errors
    }

    /// Names of the loaded plugins, in chain order.
    pub fn plugins(&self) -> Vec<String> {
        self.inner
            .slots
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    }

    /// The manifest of a plugin's current version.
    pub fn manifest(&self, plugin: &str) -> Option<Manifest> {
        self.slot(plugin)
            .ok()
            .map(|s| s.current.load().manifest.clone())
    }

    fn slot(&self, plugin: &str) -> Result<&Arc<Slot>, PluginError> {
        self.inner
            .slots
            .iter()
            .find(|s| &*s.name == plugin)
            .ok_or_else(|| PluginError::UnknownPlugin(plugin.to_string()))
    }

    fn with_hook(&self, hook: HookSet) -> impl Iterator<Item = &Arc<Slot>> {
        self.inner.slots.iter().filter(move |s| {
            s.enabled.load(Ordering::Relaxed) && s.current.load().manifest.hooks.contains(hook)
        })
    }

    /// Turns a loaded plugin on or off at run time: a disabled plugin is
    /// skipped by every hook (as if its manifest named none) until enabled
    /// again. Its instances stay warm.
    pub fn set_enabled(&self, plugin: &str, enabled: bool) -> Result<(), PluginError> {
        self.slot(plugin)?.enabled.store(enabled, Ordering::Relaxed);
        tracing::info!(plugin, enabled, "plugin switched");
        Ok(())
    }

    /// Is the plugin enabled (see [`PluginHost::set_enabled`])? `None`: not loaded.
    pub fn is_enabled(&self, plugin: &str) -> Option<bool> {
        self.slot(plugin)
            .ok()
            .map(|s| s.enabled.load(Ordering::Relaxed))
    }

    /// Does any plugin implement `hook`? (Cheap; lets the broker skip work.)
    pub fn has_hook(&self, hook: HookSet) -> bool {
        self.with_hook(hook).next().is_some()
    }

    /// Would `on_publish` call any plugin for this topic?
    pub fn wants_publish(&self, topic: &str) -> bool {
        self.with_hook(HookSet::ON_PUBLISH)
            .any(|s| s.current.load().wants_topic(topic))
    }

    /// Would `on_event` call any plugin for this kind of event?
    pub fn wants_event(&self, kind: EventSet) -> bool {
        self.with_hook(HookSet::ON_EVENT)
            .any(|s| s.current.load().manifest.events.contains(kind))
    }

    /// Ask the `authenticate` chain: the first answer other than `Ignore`
    /// decides; `Ignore` when nobody decided (the broker applies its own
    /// rules). A failed fail-closed plugin answers `Deny(0x88)`.
    pub async fn authenticate(&self, request: &AuthRequest) -> Outcome<AuthDecision> {
        self.authenticate_named(request).await.0
    }

    /// [`PluginHost::authenticate`], also naming the plugin whose answer
    /// decided (none when every plugin ignored): the one to ask for the
    /// next step after `ContinueAuth` ([`PluginHost::authenticate_continue`]).
    pub async fn authenticate_named(
        &self,
        request: &AuthRequest,
    ) -> (Outcome<AuthDecision>, Option<String>) {
        let mut failures = Vec::new();
        for slot in self.with_hook(HookSet::AUTHENTICATE) {
            let name = Some(slot.name.to_string());
            match slot.call(&self.inner.rt, Call::Authenticate(request)).await {
                Ok(Reply::Auth(AuthDecision::Ignore)) => {}
                Ok(Reply::Auth(d)) => return (Outcome::new(d, failures), name),
                Ok(_) => unreachable_reply(),
                Err(e) => {
                    failures.push(e);
                    if slot.config.failure.authenticate == FailurePolicy::Closed {
                        let d = AuthDecision::Deny(FAIL_CLOSED_AUTH_REASON);
                        return (Outcome::new(d, failures), name);
                    }
                }
            }
        }
        (Outcome::new(AuthDecision::Ignore, failures), None)
    }

    /// A later step of an enhanced-authentication exchange: only `plugin`
    /// (the one that answered `ContinueAuth`) is asked, not the chain. A
    /// failure of that plugin, or the plugin being gone, disabled or no
    /// longer implementing `authenticate`, answers `Deny(0x88)` whatever its
    /// failure policy: an exchange cannot fall open half-way.
    pub async fn authenticate_continue(
        &self,
        plugin: &str,
        request: &AuthRequest,
    ) -> Outcome<AuthDecision> {
        let deny = AuthDecision::Deny(FAIL_CLOSED_AUTH_REASON);
        let Some(slot) = self
            .with_hook(HookSet::AUTHENTICATE)
            .find(|s| &*s.name == plugin)
        else {
            let e = PluginError::Reported {
                plugin: plugin.to_string(),
                hook: Hook::Authenticate,
                message: "the plugin is no longer available to continue an authentication exchange"
                    .into(),
            };
            tracing::warn!(error = %e, "enhanced authentication refused");
            return Outcome::new(deny, vec![e]);
        };
        match slot.call(&self.inner.rt, Call::Authenticate(request)).await {
            Ok(Reply::Auth(d)) => Outcome::new(d, Vec::new()),
            Ok(_) => unreachable_reply(),
            Err(e) => Outcome::new(deny, vec![e]),
        }
    }

    /// Ask the `authorize` chain: first answer other than `Ignore` decides.
    /// A failed fail-closed plugin answers `Deny`.
    pub async fn authorize(&self, request: &AuthzRequest) -> Outcome<AuthzDecision> {
        let mut failures = Vec::new();
        for slot in self.with_hook(HookSet::AUTHORIZE) {
            match slot.call(&self.inner.rt, Call::Authorize(request)).await {
                Ok(Reply::Authz(AuthzDecision::Ignore)) => {}
                Ok(Reply::Authz(d)) => return Outcome::new(d, failures),
                Ok(_) => unreachable_reply(),
                Err(e) => {
                    failures.push(e);
                    if slot.config.failure.authorize == FailurePolicy::Closed {
                        return Outcome::new(AuthzDecision::Deny, failures);
                    }
                }
            }
        }
        Outcome::new(AuthzDecision::Ignore, failures)
    }

    /// Run the `on-publish` chain over a message from a client (or none for
    /// broker-internal messages). Each plugin whose filters match the topic
    /// (as changed by earlier plugins) sees the previous one's result.
    pub async fn on_publish(
        &self,
        message: &Message,
        publisher: Option<&ClientInfo>,
    ) -> Outcome<PublishVerdict> {
        self.publish_chain(message, publisher, None).await
    }

    /// Like [`PluginHost::on_publish`] for a message a plugin published
    /// through its `publish` capability: that plugin is skipped.
    pub async fn on_publish_from_plugin(
        &self,
        plugin: &str,
        message: &Message,
    ) -> Outcome<PublishVerdict> {
        self.publish_chain(message, None, Some(plugin)).await
    }

    async fn publish_chain(
        &self,
        message: &Message,
        publisher: Option<&ClientInfo>,
        skip: Option<&str>,
    ) -> Outcome<PublishVerdict> {
        let mut failures = Vec::new();
        let mut changed: Option<Message> = None;
        for slot in self.with_hook(HookSet::ON_PUBLISH) {
            if skip == Some(&*slot.name) {
                continue;
            }
            let current = changed.as_ref().unwrap_or(message);
            if !slot.current.load().wants_topic(&current.topic) {
                continue;
            }
            let result = match slot
                .call(&self.inner.rt, Call::OnPublish(current, publisher))
                .await
            {
                Ok(Reply::Publish(PublishDecision::Modify(m)))
                    if !midge_protocol::topic::valid_name(&m.topic) =>
                {
                    Err(PluginError::Reported {
                        plugin: slot.name.to_string(),
                        hook: Hook::OnPublish,
                        message: format!("modified message has an invalid topic {:?}", m.topic),
                    })
                }
                other => other,
            };
            match result {
                Ok(Reply::Publish(PublishDecision::Pass)) => {}
                Ok(Reply::Publish(PublishDecision::Modify(m))) => changed = Some(m),
                Ok(Reply::Publish(PublishDecision::Drop)) => {
                    return Outcome::new(PublishVerdict::Drop, failures)
                }
                Ok(Reply::Publish(PublishDecision::Deny(rc))) => {
                    return Outcome::new(PublishVerdict::Deny(rc), failures)
                }
                Ok(_) => unreachable_reply(),
                Err(e) => {
                    failures.push(e);
                    if slot.config.failure.on_publish == FailurePolicy::Closed {
                        return Outcome::new(
                            PublishVerdict::Deny(FAIL_CLOSED_PUBLISH_REASON),
                            failures,
                        );
                    }
                }
            }
        }
        let verdict = match changed {
            Some(m) => PublishVerdict::Modified(m),
            None => PublishVerdict::Pass,
        };
        Outcome::new(verdict, failures)
    }

    /// Hand an event to every plugin that wants its kind, in order. Returns
    /// the failures (already logged and counted). The broker usually spawns
    /// this.
    pub async fn on_event(&self, event: &Event, timestamp_millis: u64) -> Vec<PluginError> {
        let kind = event.kind();
        let mut failures = Vec::new();
        for slot in self.with_hook(HookSet::ON_EVENT) {
            if !slot.current.load().manifest.events.contains(kind) {
                continue;
            }
            if let Err(e) = slot
                .call(&self.inner.rt, Call::OnEvent(event, timestamp_millis))
                .await
            {
                failures.push(e);
            }
        }
        failures
    }

    /// Hand rows a rule produced (a JSON array) to one plugin.
    pub async fn on_rule_output(
        &self,
        plugin: &str,
        rule: &str,
        rows_json: &str,
    ) -> Result<(), PluginError> {
        let slot = self.slot(plugin)?;
        if !slot.enabled.load(Ordering::Relaxed) {
            return Err(PluginError::Reported {
                plugin: plugin.to_string(),
                hook: Hook::OnRuleOutput,
                message: "the plugin is disabled".into(),
            });
        }
        if !slot
            .current
            .load()
            .manifest
            .hooks
            .contains(HookSet::ON_RULE_OUTPUT)
        {
            return Err(PluginError::Reported {
                plugin: plugin.to_string(),
                hook: Hook::OnRuleOutput,
                message: "the plugin does not implement on-rule-output".into(),
            });
        }
        match slot
            .call(&self.inner.rt, Call::OnRuleOutput(rule, rows_json))
            .await?
        {
            Reply::RuleOutput(Ok(())) => Ok(()),
            Reply::RuleOutput(Err(e)) => Err(PluginError::Reported {
                plugin: plugin.to_string(),
                hook: Hook::OnRuleOutput,
                message: match e {
                    HookError::BadInput(s) => format!("bad input: {s}"),
                    HookError::Failed(s) => s,
                },
            }),
            _ => unreachable_reply(),
        }
    }

    /// Every rule function offered, with the plugin offering it (the first
    /// plugin in chain order wins a name offered twice).
    pub fn functions(&self) -> Vec<(String, RuleFunction)> {
        let mut out: Vec<(String, RuleFunction)> = Vec::new();
        for slot in self.with_hook(HookSet::RULE_FUNCTIONS) {
            for f in &slot.current.load().manifest.functions {
                if !out.iter().any(|(_, g)| g.name == f.name) {
                    out.push((slot.name.to_string(), f.clone()));
                }
            }
        }
        out
    }

    /// Evaluate rule function `name`; arguments and result are JSON text.
    pub async fn call_function(
        &self,
        name: &str,
        args_json: &[String],
    ) -> Result<String, PluginError> {
        let slot = self
            .with_hook(HookSet::RULE_FUNCTIONS)
            .find(|s| {
                s.current
                    .load()
                    .manifest
                    .functions
                    .iter()
                    .any(|f| f.name == name)
            })
            .ok_or_else(|| PluginError::UnknownFunction(name.to_string()))?;
        match slot
            .call(&self.inner.rt, Call::CallFunction(name, args_json))
            .await?
        {
            Reply::Function(Ok(v)) => Ok(v),
            Reply::Function(Err(e)) => Err(PluginError::Reported {
                plugin: slot.name.to_string(),
                hook: Hook::CallFunction,
                message: match e {
                    FunctionError::UnknownFunction(s) => format!("unknown function {s}"),
                    FunctionError::BadArguments(s) => format!("bad arguments: {s}"),
                    FunctionError::Failed(s) => s,
                },
            }),
            _ => unreachable_reply(),
        }
    }

    /// Reload one plugin from its path (even if unchanged): load the new
    /// version, then swap it in atomically. Calls in flight finish on the old
    /// version. A failed load keeps the old version and returns the error.
    /// A successful reload lifts a suspension.
    pub async fn reload(&self, plugin: &str) -> Result<(), PluginError> {
        self.slot(plugin)?
            .reload(&self.inner.rt, false)
            .await
            .map(|_| ())
    }

    /// Reload every plugin whose file content changed. Returns, per plugin
    /// looked at, whether it was reloaded or why not.
    pub async fn reload_changed(&self) -> Vec<(String, Result<bool, PluginError>)> {
        let mut out = Vec::new();
        for slot in &self.inner.slots {
            out.push((
                slot.name.to_string(),
                slot.reload(&self.inner.rt, true).await,
            ));
        }
        out
    }

    /// Counters of every plugin, in chain order.
    pub fn metrics(&self) -> Vec<PluginMetrics> {
        self.inner
            .slots
            .iter()
            .map(|s| {
                let m = &s.metrics;
                let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                PluginMetrics {
                    name: s.name.to_string(),
                    calls: l(&m.calls),
                    failures: l(&m.failures),
                    traps: l(&m.traps),
                    timeouts: l(&m.timeouts),
                    out_of_memory: l(&m.out_of_memory),
                    busy: l(&m.busy),
                    suspended_calls: l(&m.suspended_calls),
                    suspensions: l(&m.suspensions),
                    suspended: s.is_suspended(),
                    enabled: s.enabled.load(Ordering::Relaxed),
                    instances_created: l(&m.instances_created),
                    idle_instances: s.idle_instances() as u64,
                    call_nanos: l(&m.call_nanos),
                    reloads: l(&m.reloads),
                    reload_failures: l(&m.reload_failures),
                }
            })
            .collect()
    }

    /// Counters of one plugin.
    pub fn plugin_metrics(&self, plugin: &str) -> Option<PluginMetrics> {
        self.metrics().into_iter().find(|m| m.name == plugin)
    }
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cold]
fn unreachable_reply() -> ! {
    // `Slot::call` answers each `Call` variant with its matching `Reply`.
    unreachable!("plugin host: reply does not match the call")
}

/// Names, grants and limits of the enabled plugins: every problem found.
fn validate(config: &PluginsConfig) -> Vec<PluginError> {
    let mut errors = Vec::new();
    let mut names = HashSet::new();
    for (name, db) in &config.databases {
        if db.connections == 0
            || db.batch_max_rows == 0
            || db.queue_capacity == 0
            || db.timeout_ms == 0
        {
            errors.push(PluginError::Config(format!(
                "plugins.databases.{name}: connections, batch_max_rows, queue_capacity and timeout_ms must be positive"
            )));
        }
    }
    if let Some(k) = &config.kafka {
        if k.brokers.trim().is_empty() || k.queue_capacity == 0 {
            errors.push(PluginError::Config(
                "plugins.kafka: brokers must be set and queue_capacity positive".into(),
            ));
        }
    }
    for p in config.plugins.iter().filter(|p| p.enabled) {
        if !names.insert(p.name.as_str()) {
            errors.push(PluginError::Config(format!(
                "duplicate plugin name {:?}",
                p.name
            )));
            continue;
        }
        if let Some(bad) = p
            .grants
            .publish
            .iter()
            .find(|f| !midge_protocol::topic::valid_filter(f))
        {
            errors.push(PluginError::Config(format!(
                "plugin {}: invalid publish grant filter {bad:?}",
                p.name
            )));
            continue;
        }
        if let Some(db) = &p.grants.sql {
            if !config.databases.contains_key(db) {
                errors.push(PluginError::Config(format!(
                    "plugin {}: grants.sql names database {db:?}, which no [plugins.databases.{db}] defines",
                    p.name
                )));
            }
        }
        if !p.grants.kafka.is_empty() && config.kafka.is_none() {
            errors.push(PluginError::Config(format!(
                "plugin {}: grants.kafka needs a [plugins.kafka] producer (brokers = ...)",
                p.name
            )));
        }
        if p.limits.max_instances == 0 || p.limits.deadline_ms == 0 || p.limits.memory_mib == 0 {
            errors.push(PluginError::Config(format!(
                "plugin {}: max_instances, deadline_ms and memory_mib must be positive",
                p.name
            )));
        }
    }

    errors
}

/// The engine (epoch interruption, component model) and the linker with
/// WASI and the host's capabilities.
fn runtime() -> Result<Runtime, PluginError> {
    let mut wcfg = Config::new();
    wcfg.epoch_interruption(true);
    wcfg.wasm_component_model(true);
    let engine =
        Engine::new(&wcfg).map_err(|e| PluginError::Config(format!("wasm engine: {e}")))?;
    let mut linker: Linker<StoreState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| PluginError::Config(format!("linking WASI: {e}")))?;
    Plugin::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)
        .map_err(|e| PluginError::Config(format!("linking capabilities: {e}")))?;
    Ok(Runtime { engine, linker })
}
