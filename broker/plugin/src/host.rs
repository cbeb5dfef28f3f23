//! The plugin host: the configured plugin chain and the hooks the broker calls.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::batch::{check, current_topic, pack, unpack, BatchItem, BatchVerdict, Unpacked};
use crate::bindings::Plugin;
use crate::caps::{Granted, Services, StoreState};
use crate::config::{FailurePolicy, PluginConfig, PluginsConfig};
use crate::error::{Hook, PluginError};
use crate::slot::{event_bits, hook_bits, Call, Loaded, Reply, Runtime, Slot, PUBLISH_ALL};
use crate::types::{
    AuthDecision, AuthRequest, AuthzDecision, AuthzRequest, ClientInfo, Event, EventSet,
    FunctionError, HookError, HookSet, Manifest, Message, Outcome, PublishDecision, PublishVerdict,
    RuleFunction,
};
use crate::validate::{self, View};

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

impl Inner {
    /// Recomputes [`Inner::summary`] from the chain as it is now. Under a
    /// lock, so that the last refresh to store also read last.
    fn refresh(&self) {
        let _one = self.refresh_lock.lock();
        let bits = self.chain.load().iter().fold(0, |b, s| b | s.summary());
        self.summary.store(bits, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chain = self.inner.chain.load();
        let names: Vec<&str> = chain.iter().map(|s| &*s.name).collect();
        f.debug_struct("PluginHost")
            .field("plugins", &names)
            .finish()
    }
}

struct Inner {
    rt: Runtime,
    /// The chain, in configured order. Read on every hook call (one atomic
    /// load, no lock); [`PluginHost::apply`] swaps in a new list.
    chain: ArcSwap<Vec<Arc<Slot>>>,
    /// What the enabled plugins ask for, all together (the slots' summary
    /// bits OR-ed): the broker's per-message checks read this one word.
    /// Refreshed after every change to the chain, a slot's version or its
    /// switch ([`Inner::refresh`]).
    summary: AtomicU64,
    refresh_lock: parking_lot::Mutex<()>,
    /// Names the configuration lists with `enabled = false` (not loaded).
    disabled: ArcSwap<Vec<String>>,
    ticker_stop: Arc<AtomicBool>,
    /// The sled store behind kv grants, opened when a plugin first has one.
    kv_db: tokio::sync::OnceCell<sled::Db>,
    /// kv grants use a temporary store, not `kv_path`
    /// ([`PluginHost::load_sandboxed`], [`PluginHost::check`]).
    kv_sandboxed: bool,
    /// The configuration the host started with: its host-wide settings
    /// (kv store, epoch tick, databases, Kafka) stay for the host's life.
    settings: PluginsConfig,
    services: Services,
    /// One [`PluginHost::apply`] at a time.
    apply_lock: tokio::sync::Mutex<()>,
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
    /// Calls whose answer (or a capability call in them) broke the output
    /// rules: invalid topic, property, size, reason code, batch answer.
    pub invalid_outputs: u64,
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
        Self::load_with(config, services, false).await
    }

    /// [`PluginHost::load`] with side effects kept inside the sandbox: every
    /// kv grant gets a temporary store (dropped with the host) instead of
    /// `kv_path`, which a running broker may hold. `midge rule test
    /// --config` and `midge plugin run` use it.
    pub async fn load_sandboxed(
        config: &PluginsConfig,
        services: Services,
    ) -> Result<PluginHost, PluginError> {
        Self::load_with(config, services, true).await
    }

    async fn load_with(
        config: &PluginsConfig,
        services: Services,
        sandboxed: bool,
    ) -> Result<PluginHost, PluginError> {
        if let Some(e) = validate(config).into_iter().next() {
            return Err(e);
        }
        // An early return drops `inner`, which stops its epoch ticker.
        let inner = Inner::start(config, services, sandboxed)?;
        let mut slots = Vec::new();
        for p in config.plugins.iter().filter(|p| p.enabled) {
            let granted = inner.grant(p).await?;
            let slot = Slot::load(&inner.rt, p.clone(), granted).await?;
            let m = &slot.current.load().manifest;
            tracing::info!(plugin = %p.name, manifest = %m.name, version = %m.version, "plugin loaded");
            slots.push(slot);
        }
        inner.chain.store(Arc::new(slots));
        inner.refresh();
        Ok(PluginHost {
            inner: Arc::new(inner),
        })
    }

    /// Applies a new `[plugins]` configuration to the running host, plugin
    /// by plugin (by name), without touching the others or any connection:
    ///
    /// - an entry equal to the running one, whose file has the same content,
    ///   keeps its running version (warm instances, metrics, the runtime
    ///   switch of [`PluginHost::set_enabled`]);
    /// - a changed entry (config, limits, grants, failure policies, path) or
    ///   file content is loaded anew (compiled, one instance started with the
    ///   new `init` config, manifest checked) and swapped in atomically: calls
    ///   in flight finish on the old version. Metrics carry over (`reloads`);
    /// - a new name is loaded; a name no longer listed, or listed with
    ///   `enabled = false`, leaves the chain; the chain takes the new order;
    /// - an entry that fails (invalid, unreadable file, compile error,
    ///   `init` refuses, bad manifest, a grant naming a database or Kafka
    ///   producer the running host lacks) is refused with the error: its
    ///   previous version keeps running (in the new order), a new one is not
    ///   added. The others still apply.
    ///
    /// Host-wide settings (kv store, epoch tick, databases, Kafka) are not
    /// applied: [`ApplyReport::restart_needed`] names those that differ.
    pub async fn apply(&self, config: &PluginsConfig) -> ApplyReport {
        let inner = &*self.inner;
        let _one_at_a_time = inner.apply_lock.lock().await;
        let mut report = ApplyReport {
            restart_needed: config.restart_needed(&inner.settings),
            ..ApplyReport::default()
        };
        let old = inner.chain.load_full();
        let mut next: Vec<Arc<Slot>> = Vec::new();
        let mut seen = HashSet::new();
        for p in config.plugins.iter().filter(|p| p.enabled) {
            if !seen.insert(p.name.as_str()) {
                let e = PluginError::Config(format!("duplicate plugin name {:?}", p.name));
                report.refused.push((p.name.clone(), e));
                continue;
            }
            let running = old.iter().find(|s| *s.name == p.name);
            let result = async {
                if let Some(e) = join_errors(validate_plugin(config, p)) {
                    return Err(e);
                }
                if let Some(e) = join_errors(inner.validate_against_running(p)) {
                    return Err(e);
                }
                let granted = inner.grant(p).await?;
                match running {
                    Some(slot) => slot
                        .apply(&inner.rt, p.clone(), granted)
                        .await
                        .map(|changed| (slot.clone(), changed)),
                    None => Slot::load(&inner.rt, p.clone(), granted)
                        .await
                        .map(|slot| (slot, true)),
                }
            }
            .await;
            match (result, running) {
                (Ok((slot, changed)), Some(_)) => {
                    if changed {
                        report.reloaded.push(p.name.clone());
                    }
                    next.push(slot);
                }
                (Ok((slot, _)), None) => {
                    let m = &slot.current.load().manifest;
                    tracing::info!(plugin = %p.name, manifest = %m.name, version = %m.version, "plugin added");
                    report.added.push(p.name.clone());
                    next.push(slot);
                }
                (Err(e), Some(slot)) => {
                    // Errors from `Slot::apply` are counted there.
                    if !matches!(e, PluginError::Load { .. }) {
                        slot.reload_failed(&e);
                    }
                    report.refused.push((p.name.clone(), e));
                    next.push(slot.clone());
                }
                (Err(e), None) => {
                    tracing::warn!(plugin = %p.name, error = %e, "new plugin refused, not added");
                    report.refused.push((p.name.clone(), e));
                }
            }
        }
        for slot in old.iter() {
            if !next.iter().any(|n| Arc::ptr_eq(n, slot)) {
                tracing::info!(plugin = &*slot.name, "plugin removed");
                report.removed.push(slot.name.to_string());
            }
        }
        report.chain = next.iter().map(|s| s.name.to_string()).collect();
        inner.chain.store(Arc::new(next));
        inner.refresh();
        inner.disabled.store(Arc::new(disabled_names(config)));
        report
    }

    /// Makes every kv write so far durable (graceful shutdown calls it;
    /// otherwise sled syncs every few hundred milliseconds).
    pub async fn flush(&self) -> Result<(), PluginError> {
        let Some(db) = self.inner.kv_db.get().cloned() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| PluginError::Config(format!("kv store flush: {e}")))?
            .map(|_| ())
            .map_err(|e| PluginError::Config(format!("kv store flush: {e}")))
    }

    /// Checks a `[plugins]` configuration as loading it would (`midge
    /// check`): names, grants and limits, then each enabled plugin is
    /// compiled, linked, instantiated and its `init` run with its config,
    /// under its limits (memory, `init_deadline_ms`), and its manifest
    /// checked. Every problem is returned, each naming its plugin. Side
    /// effects stay in the sandbox: kv grants get a temporary store (a
    /// running broker holds `kv_path`); `publish`, `sql` and `kafka` answer
    /// that no broker, database or producer is attached.
    pub async fn check(config: &PluginsConfig) -> Vec<PluginError> {
        let mut errors = validate(config);
        let inner = match Inner::start(config, Services::default(), true) {
            Ok(inner) => inner,
            Err(e) => {
                errors.push(e);
                return errors;
            }
        };
        let mut seen = HashSet::new();
        for p in config.plugins.iter().filter(|p| p.enabled) {
            if !seen.insert(p.name.as_str()) {
                continue;
            }
            let loaded = match inner.grant(p).await {
                Ok(granted) => Slot::load(&inner.rt, p.clone(), granted).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = loaded {
                errors.push(e);
            }
        }
        errors
    }

    /// Names of the loaded plugins, in chain order.
    pub fn plugins(&self) -> Vec<String> {
        self.inner
            .chain
            .load()
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    }

    /// Names the configuration lists with `enabled = false` (not loaded),
    /// as of the last load or [`PluginHost::apply`].
    pub fn disabled_in_config(&self) -> Vec<String> {
        self.inner.disabled.load().to_vec()
    }

    /// The configuration entry of a plugin's running version.
    pub fn plugin_config(&self, plugin: &str) -> Option<PluginConfig> {
        self.slot(plugin)
            .ok()
            .map(|s| s.current.load().config.clone())
    }

    /// The manifest of a plugin's current version.
    pub fn manifest(&self, plugin: &str) -> Option<Manifest> {
        self.slot(plugin)
            .ok()
            .map(|s| s.current.load().manifest.clone())
    }

    fn slot(&self, plugin: &str) -> Result<Arc<Slot>, PluginError> {
        self.inner
            .chain
            .load()
            .iter()
            .find(|s| &*s.name == plugin)
            .cloned()
            .ok_or_else(|| PluginError::UnknownPlugin(plugin.to_string()))
    }

    /// The chain as it is now; a concurrent [`PluginHost::apply`] does not
    /// change this copy (calls in flight finish on the chain they started).
    fn chain(&self) -> Arc<Vec<Arc<Slot>>> {
        self.inner.chain.load_full()
    }

    /// Does `f` hold for any enabled plugin implementing `hook`? (The cheap
    /// checks of the publish path: no `Arc` clone, no lock.)
    fn any_with_hook(&self, hook: HookSet, f: impl Fn(&Slot) -> bool) -> bool {
        let bits = hook_bits(hook);
        self.inner.summary.load(Ordering::Relaxed) & bits != 0
            && self
                .inner
                .chain
                .load()
                .iter()
                .any(|s| s.wants(bits) && f(s))
    }

    /// Turns a loaded plugin on or off at run time: a disabled plugin is
    /// skipped by every hook (as if its manifest named none) until enabled
    /// again. Its instances stay warm.
    pub fn set_enabled(&self, plugin: &str, enabled: bool) -> Result<(), PluginError> {
        self.slot(plugin)?.enabled.store(enabled, Ordering::Relaxed);
        self.inner.refresh();
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
        self.inner.summary.load(Ordering::Relaxed) & hook_bits(hook) != 0
    }

    /// Would `on_publish` call any plugin for this topic?
    pub fn wants_publish(&self, topic: &str) -> bool {
        let summary = self.inner.summary.load(Ordering::Relaxed);
        if summary & PUBLISH_ALL != 0 && !topic.starts_with('$') {
            return true;
        }
        summary & hook_bits(HookSet::ON_PUBLISH) != 0
            && self.any_with_hook(HookSet::ON_PUBLISH, |s| s.current.load().wants_topic(topic))
    }

    /// Would `on_event` call any plugin for this kind of event?
    pub fn wants_event(&self, kind: EventSet) -> bool {
        self.inner.summary.load(Ordering::Relaxed) & event_bits(kind) != 0
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
        let chain = self.chain();
        for slot in chain.iter().filter(|s| has(s, HookSet::AUTHENTICATE)) {
            let name = Some(slot.name.to_string());
            match self.authenticate_one(slot, request).await {
                Ok(AuthDecision::Ignore) => {}
                Ok(d) => return (Outcome::new(d, failures), name),
                Err(e) => {
                    failures.push(e);
                    if slot.current.load().config.failure.authenticate == FailurePolicy::Closed {
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
            .slot(plugin)
            .ok()
            .filter(|s| has(s, HookSet::AUTHENTICATE))
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
        match self.authenticate_one(&slot, request).await {
            Ok(d) => Outcome::new(d, Vec::new()),
            Err(e) => Outcome::new(deny, vec![e]),
        }
    }

    /// One plugin's `authenticate`, its answer checked (a deny needs a
    /// CONNACK refusal code, data fits an MQTT field).
    async fn authenticate_one(
        &self,
        slot: &Slot,
        request: &AuthRequest,
    ) -> Result<AuthDecision, PluginError> {
        slot.call_checked(
            &self.inner.rt,
            Call::Authenticate(request),
            |r, _| match r {
                Reply::Auth(d) => validate::auth_decision(&d).map(|()| (d, None)),
                _ => unreachable_reply(),
            },
        )
        .await
        .map(|(d, _)| d)
    }

    /// Ask the `authorize` chain: first answer other than `Ignore` decides.
    /// A failed fail-closed plugin answers `Deny`.
    pub async fn authorize(&self, request: &AuthzRequest) -> Outcome<AuthzDecision> {
        let mut failures = Vec::new();
        let chain = self.chain();
        for slot in chain.iter().filter(|s| has(s, HookSet::AUTHORIZE)) {
            match slot.call(&self.inner.rt, Call::Authorize(request)).await {
                Ok(Reply::Authz(AuthzDecision::Ignore)) => {}
                Ok(Reply::Authz(d)) => return Outcome::new(d, failures),
                Ok(_) => unreachable_reply(),
                Err(e) => {
                    failures.push(e);
                    if slot.current.load().config.failure.authorize == FailurePolicy::Closed {
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
        let chain = self.chain();
        for slot in chain.iter().filter(|s| has(s, HookSet::ON_PUBLISH)) {
            if skip == Some(&*slot.name) {
                continue;
            }
            let current = changed.as_ref().unwrap_or(message);
            if !slot.current.load().wants_topic(&current.topic) {
                continue;
            }
            let result = slot
                .call_checked(
                    &self.inner.rt,
                    Call::OnPublish(current, publisher),
                    |r, loaded| match r {
                        Reply::Publish(d) => {
                            check_publish(&d, &current.topic, loaded).map(|()| (d, None))
                        }
                        _ => unreachable_reply(),
                    },
                )
                .await;
            if let Ok((_, Some(e))) = &result {
                failures.push(e.clone());
            }
            match result.map(|(d, _)| d) {
                Ok(PublishDecision::Pass) => {}
                Ok(PublishDecision::Modify(m)) => changed = Some(m),
                Ok(PublishDecision::Drop) => return Outcome::new(PublishVerdict::Drop, failures),
                Ok(PublishDecision::Deny(rc)) => {
                    return Outcome::new(PublishVerdict::Deny(rc), failures)
                }
                Err(e) => {
                    failures.push(e);
                    if slot.current.load().config.failure.on_publish == FailurePolicy::Closed {
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

    /// [`PluginHost::on_publish`] for several messages of one publisher, in
    /// the order they were read: each plugin in the chain gets one
    /// `on-publish-batch` call with the messages its filters want, as the
    /// plugins before it left them, packed into a few buffers (see
    /// [`BatchItem`]), instead of one call per message. One outcome per
    /// message, in order; a failed call, or an answer that does not fit the
    /// batch, fails each message in it under the plugin's failure policy.
    pub async fn on_publish_batch(
        &self,
        items: &[BatchItem<'_>],
        publisher: Option<&ClientInfo>,
    ) -> Vec<Outcome<BatchVerdict>> {
        // Each message's outcome so far: `Pass`, `Modified` with what the
        // plugins before changed, or final (`Drop`, `Deny`).
        let mut st: Vec<Outcome<BatchVerdict>> = items
            .iter()
            .map(|_| Outcome::new(BatchVerdict::Pass, Vec::new()))
            .collect();
        let chain = self.chain();
        let mut picked: Vec<usize> = Vec::with_capacity(items.len());
        for slot in chain.iter().filter(|s| has(s, HookSet::ON_PUBLISH)) {
            let closed = {
                let loaded = slot.current.load();
                picked.clear();
                picked.extend((0..items.len()).filter(|&i| match &st[i].decision {
                    BatchVerdict::Pass => loaded.wants_topic(items[i].topic),
                    BatchVerdict::Modified(c) => {
                        loaded.wants_topic(current_topic(&items[i], Some(c)))
                    }
                    BatchVerdict::Drop | BatchVerdict::Deny(_) => false,
                }));
                loaded.config.failure.on_publish == FailurePolicy::Closed
            };
            if picked.is_empty() {
                continue;
            }
            let batch = pack(items, &picked, |i| match &st[i].decision {
                BatchVerdict::Modified(c) => Some(c),
                _ => None,
            });
            let changed_before = |i: usize| match &st[i].decision {
                BatchVerdict::Modified(c) => Some(c),
                _ => None,
            };
            let reply = slot
                .call_checked(
                    &self.inner.rt,
                    Call::OnPublishBatch(&batch, publisher),
                    |r, loaded| {
                        let Reply::PublishBatch(d) = r else {
                            unreachable_reply()
                        };
                        let mut decisions = unpack(d, picked.len())?;
                        let problem = check(
                            &mut decisions,
                            items,
                            &picked,
                            changed_before,
                            loaded.limits(),
                            loaded.publish_grants(),
                        );
                        Ok((decisions, problem))
                    },
                )
                .await;
            let decisions = match reply {
                Ok((decisions, _)) => decisions,
                Err(e) => {
                    for &i in &picked {
                        let s = &mut st[i];
                        s.failures.push(e.clone());
                        if closed {
                            s.decision = BatchVerdict::Deny(FAIL_CLOSED_PUBLISH_REASON);
                        }
                    }
                    continue;
                }
            };
            for (d, &i) in decisions.into_iter().zip(&picked) {
                let s = &mut st[i];
                match d {
                    Unpacked::Pass => {}
                    Unpacked::Modify(c) => match &mut s.decision {
                        BatchVerdict::Modified(earlier) => earlier.apply(c),
                        other => *other = BatchVerdict::Modified(c),
                    },
                    Unpacked::Drop => s.decision = BatchVerdict::Drop,
                    Unpacked::Deny(rc) => s.decision = BatchVerdict::Deny(rc),
                    Unpacked::Invalid(problem) => {
                        // Logged and counted once for the call.
                        s.failures.push(PluginError::Invalid {
                            plugin: slot.name.to_string(),
                            hook: Hook::OnPublish,
                            problem,
                        });
                        if closed {
                            s.decision = BatchVerdict::Deny(FAIL_CLOSED_PUBLISH_REASON);
                        }
                    }
                }
            }
        }
        st
    }

    /// Hand an event to every plugin that wants its kind, in order. Returns
    /// the failures (already logged and counted). The broker usually spawns
    /// this.
    pub async fn on_event(&self, event: &Event, timestamp_millis: u64) -> Vec<PluginError> {
        let kind = event.kind();
        let mut failures = Vec::new();
        let chain = self.chain();
        for slot in chain.iter().filter(|s| has(s, HookSet::ON_EVENT)) {
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
        let chain = self.chain();
        for slot in chain.iter().filter(|s| has(s, HookSet::RULE_FUNCTIONS)) {
            for f in &slot.current.load().manifest.functions {
                if !out.iter().any(|(_, g)| g.name == f.name) {
                    out.push((slot.name.to_string(), f.clone()));
                }
            }
        }
        out
    }

    /// Evaluate rule function `name`; arguments and result are JSON text.
    /// The result must be one JSON value of at most
    /// [`OutputLimits::max_function_result`] bytes: anything else is an
    /// invalid answer ([`PluginError::Invalid`]).
    pub async fn call_function(
        &self,
        name: &str,
        args_json: &[String],
    ) -> Result<String, PluginError> {
        let chain = self.chain();
        let slot = chain
            .iter()
            .filter(|s| has(s, HookSet::RULE_FUNCTIONS))
            .find(|s| {
                s.current
                    .load()
                    .manifest
                    .functions
                    .iter()
                    .any(|f| f.name == name)
            })
            .ok_or_else(|| PluginError::UnknownFunction(name.to_string()))?;
        let (reply, _) = slot
            .call_checked(
                &self.inner.rt,
                Call::CallFunction(name, args_json),
                |r, loaded| match r {
                    Reply::Function(Ok(text)) => {
                        validate::function_result(&text, loaded.limits()).map(|()| (Ok(text), None))
                    }
                    Reply::Function(Err(e)) => Ok((Err(e), None)),
                    _ => unreachable_reply(),
                },
            )
            .await?;
        match reply {
            Ok(v) => Ok(v),
            Err(e) => Err(PluginError::Reported {
                plugin: slot.name.to_string(),
                hook: Hook::CallFunction,
                message: match e {
                    FunctionError::UnknownFunction(s) => format!("unknown function {s}"),
                    FunctionError::BadArguments(s) => format!("bad arguments: {s}"),
                    FunctionError::Failed(s) => s,
                },
            }),
        }
    }

    /// Reload one plugin from its path (even if unchanged): load the new
    /// version, then swap it in atomically. Calls in flight finish on the old
    /// version. A failed load keeps the old version and returns the error.
    /// A successful reload lifts a suspension.
    pub async fn reload(&self, plugin: &str) -> Result<(), PluginError> {
        let result = self.slot(plugin)?.reload(&self.inner.rt, false).await;
        self.inner.refresh();
        result.map(|_| ())
    }

    /// Reload every plugin whose file content changed. Returns, per plugin
    /// looked at, whether it was reloaded or why not.
    pub async fn reload_changed(&self) -> Vec<(String, Result<bool, PluginError>)> {
        let mut out = Vec::new();
        for slot in self.chain().iter() {
            out.push((
                slot.name.to_string(),
                slot.reload(&self.inner.rt, true).await,
            ));
        }
        self.inner.refresh();
        out
    }

    /// Counters of every plugin, in chain order.
    pub fn metrics(&self) -> Vec<PluginMetrics> {
        self.inner
            .chain
            .load()
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
                    invalid_outputs: l(&m.invalid_outputs),
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

/// What [`PluginHost::apply`] did.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// New names, loaded and in the chain.
    pub added: Vec<String>,
    /// Names that left the chain (no longer listed, or `enabled = false`).
    pub removed: Vec<String>,
    /// Plugins whose entry or file changed and whose new version runs now.
    pub reloaded: Vec<String>,
    /// Plugins refused, with why: a running one keeps its previous version,
    /// a new one was not added.
    pub refused: Vec<(String, PluginError)>,
    /// The chain now, in order.
    pub chain: Vec<String>,
    /// Host-wide `[plugins]` settings that differ and were not applied (see
    /// [`PluginsConfig::restart_needed`]).
    pub restart_needed: Vec<&'static str>,
}

/// An `on-publish` answer against the output rules: a changed message as
/// a client's PUBLISH (`topic`: the one the plugin was given), a deny code
/// a PUBACK can carry.
fn check_publish(d: &PublishDecision, topic: &str, loaded: &Loaded) -> Result<(), String> {
    match d {
        PublishDecision::Modify(m) => {
            let view = View {
                topic: &m.topic,
                payload: &m.payload,
                qos: m.qos,
                retain: m.retain,
                properties: Some(&m.properties),
            };
            validate::message(&view, Some(topic), loaded.limits(), loaded.publish_grants())
        }
        PublishDecision::Deny(code) => validate::publish_deny(*code),
        PublishDecision::Pass | PublishDecision::Drop => Ok(()),
    }
}

/// Is the plugin enabled (runtime switch) and does its current manifest
/// name `hook`?
fn has(slot: &Slot, hook: HookSet) -> bool {
    slot.wants(hook_bits(hook))
}

fn disabled_names(config: &PluginsConfig) -> Vec<String> {
    config
        .plugins
        .iter()
        .filter(|p| !p.enabled)
        .map(|p| p.name.clone())
        .collect()
}

/// One error for several (the first plugin's problems, joined).
fn join_errors(errors: Vec<PluginError>) -> Option<PluginError> {
    match errors.len() {
        0 => None,
        1 => errors.into_iter().next(),
        _ => Some(PluginError::Config(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

impl Inner {
    /// The engine, its epoch ticker (deadlines) and an empty chain.
    fn start(
        config: &PluginsConfig,
        services: Services,
        kv_sandboxed: bool,
    ) -> Result<Inner, PluginError> {
        let rt = runtime()?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
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
        let mut settings = config.clone();
        settings.plugins.clear();
        Ok(Inner {
            rt,
            chain: ArcSwap::from_pointee(Vec::new()),
            summary: AtomicU64::new(0),
            refresh_lock: parking_lot::Mutex::new(()),
            disabled: ArcSwap::from_pointee(disabled_names(config)),
            ticker_stop,
            kv_db: tokio::sync::OnceCell::new(),
            kv_sandboxed,
            settings,
            services,
            apply_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Resolves what `p` is granted (opening the kv store and its namespace
    /// when it has a kv grant).
    async fn grant(&self, p: &PluginConfig) -> Result<Arc<Granted>, PluginError> {
        let kv = match &p.grants.kv {
            Some(ns) => {
                let path = self.settings.kv_path.clone();
                let sandboxed = self.kv_sandboxed;
                let db = self
                    .kv_db
                    .get_or_try_init(|| async {
                        let shown = path.display().to_string();
                        tokio::task::spawn_blocking(move || {
                            if sandboxed {
                                sled::Config::new().temporary(true).open()
                            } else {
                                sled::open(path)
                            }
                        })
                        .await
                        .map_err(|e| PluginError::Config(format!("kv store: {e}")))?
                        .map_err(|e| PluginError::Config(format!("kv store {shown}: {e}")))
                    })
                    .await
                    .map_err(|e| PluginError::Config(format!("plugin {}: {e}", p.name)))?;
                Some(db.open_tree(format!("ns/{ns}")).map_err(|e| {
                    PluginError::Config(format!("plugin {}: kv namespace {ns}: {e}", p.name))
                })?)
            }
            None => None,
        };
        Ok(Arc::new(Granted {
            plugin: Arc::from(p.name.as_str()),
            log: p.grants.log,
            kv,
            kv_max_value: self.settings.kv_max_value_bytes,
            publish: p.grants.publish.clone(),
            sql: p.grants.sql.clone(),
            kafka: p.grants.kafka.clone(),
            services: self.services.clone(),
        }))
    }

    /// Grants a live change cannot satisfy: a database or Kafka producer
    /// the host did not start with (those need a restart).
    fn validate_against_running(&self, p: &PluginConfig) -> Vec<PluginError> {
        let mut errors = Vec::new();
        if let Some(db) = &p.grants.sql {
            if !self.settings.databases.contains_key(db) {
                errors.push(PluginError::Config(format!(
                    "plugin {}: grants.sql names database {db:?}, which the running broker does not have (a new [plugins.databases.{db}] needs a restart)",
                    p.name
                )));
            }
        }
        if !p.grants.kafka.is_empty() && self.settings.kafka.is_none() {
            errors.push(PluginError::Config(format!(
                "plugin {}: grants.kafka needs a Kafka producer, which the running broker does not have (a new [plugins.kafka] needs a restart)",
                p.name
            )));
        }
        errors
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
        errors.extend(validate_plugin(config, p));
    }
    errors
}

/// One plugin's grants and limits against `config`: every problem found.
fn validate_plugin(config: &PluginsConfig, p: &PluginConfig) -> Vec<PluginError> {
    let mut errors = Vec::new();
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
        return errors;
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
    errors
}

/// The engine (epoch interruption, component model) and the linker with
/// WASI and the host's capabilities.
fn runtime() -> Result<Runtime, PluginError> {
    let mut wcfg = Config::new();
    wcfg.epoch_interruption(true);
    if std::env::var_os("MIDGE_WASM_PERFMAP").is_some() {
        wcfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
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
