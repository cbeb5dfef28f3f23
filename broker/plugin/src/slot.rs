//! One configured plugin: its compiled component, warm instance pool,
//! health (suspension) and metrics.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::bindings::{Plugin, PluginPre};
use crate::caps::{Granted, Limiter, StoreState};
use crate::config::{Limits, PluginConfig};
use crate::error::{Hook, PluginError};
use crate::types::{
    AuthDecision, AuthRequest, AuthzDecision, AuthzRequest, BatchDecisions, ClientInfo, Event,
    EventSet, FunctionError, HookError, HookSet, InitError, Manifest, Message, MessageBatch,
    PublishDecision,
};

/// A hook call with its arguments.
#[allow(clippy::enum_variant_names)]
pub(crate) enum Call<'a> {
    Authenticate(&'a AuthRequest),
    Authorize(&'a AuthzRequest),
    OnPublish(&'a Message, Option<&'a ClientInfo>),
    OnPublishBatch(&'a MessageBatch, Option<&'a ClientInfo>),
    OnEvent(&'a Event, u64),
    OnRuleOutput(&'a str, &'a str),
    CallFunction(&'a str, &'a [String]),
}

impl Call<'_> {
    fn hook(&self) -> Hook {
        match self {
            Call::Authenticate(_) => Hook::Authenticate,
            Call::Authorize(_) => Hook::Authorize,
            Call::OnPublish(..) | Call::OnPublishBatch(..) => Hook::OnPublish,
            Call::OnEvent(..) => Hook::OnEvent,
            Call::OnRuleOutput(..) => Hook::OnRuleOutput,
            Call::CallFunction(..) => Hook::CallFunction,
        }
    }
}

/// A hook's answer.
pub(crate) enum Reply {
    Auth(AuthDecision),
    Authz(AuthzDecision),
    Publish(PublishDecision),
    PublishBatch(BatchDecisions),
    Unit,
    RuleOutput(Result<(), HookError>),
    Function(Result<String, FunctionError>),
}

/// A warm instance.
struct Warm {
    store: Store<StoreState>,
    plugin: Plugin,
}

/// One loaded version of a plugin: its component, the configuration entry
/// it was started with (config, limits, grants, failure policies), its warm
/// instances and its instance-count semaphore. A reload (file or config)
/// builds a new one and swaps it in; calls in flight finish on the old one.
pub(crate) struct Loaded {
    pre: PluginPre<StoreState>,
    pub manifest: Manifest,
    fingerprint: u64,
    idle: Mutex<Vec<Warm>>,
    permits: Arc<Semaphore>,
    /// The `[[plugins.plugin]]` entry of this version.
    pub config: PluginConfig,
    granted: Arc<Granted>,
    config_json: String,
    /// One of the on-publish filters is `#`: every topic is wanted but
    /// those starting with `$` (as `topic::matches` has it).
    match_all: bool,
}

impl Loaded {
    /// The limits plugin output is checked against.
    pub fn limits(&self) -> &crate::validate::OutputLimits {
        &self.granted.services.limits
    }

    /// The topic filters of the plugin's `publish` grant (also what lets it
    /// rewrite a message onto a `$`-topic).
    pub fn publish_grants(&self) -> &[String] {
        &self.granted.publish
    }

    /// Does `topic` match one of the manifest's on-publish filters?
    pub fn wants_topic(&self, topic: &str) -> bool {
        (self.match_all && !topic.starts_with('$'))
            || self
                .manifest
                .publish_filters
                .iter()
                .any(|f| midge_protocol::topic::matches(f, topic))
    }
}

/// What a version's manifest asks for, as bits of one word (see
/// [`Slot::wants`]): the checks on the publish path read it with one atomic
/// load instead of loading the current version.
/// Event bits count only with the on-event hook, [`PUBLISH_ALL`] only
/// with the on-publish hook.
fn summary(manifest: &Manifest) -> u64 {
    let mut bits = hook_bits(manifest.hooks);
    if manifest.hooks.contains(HookSet::ON_EVENT) {
        bits |= event_bits(manifest.events);
    }
    if manifest.hooks.contains(HookSet::ON_PUBLISH) && manifest_matches_all(manifest) {
        bits |= PUBLISH_ALL;
    }
    bits
}

/// The [`summary`] bit of an on-publish filter `#` (every topic but those
/// starting with `$`).
pub(crate) const PUBLISH_ALL: u64 = 1 << 40;

/// The bits of [`summary`] that stand for `hooks`.
pub(crate) fn hook_bits(hooks: HookSet) -> u64 {
    const HOOKS: [HookSet; 6] = [
        HookSet::AUTHENTICATE,
        HookSet::AUTHORIZE,
        HookSet::ON_PUBLISH,
        HookSet::ON_EVENT,
        HookSet::ON_RULE_OUTPUT,
        HookSet::RULE_FUNCTIONS,
    ];
    let mut bits = 0;
    for (i, h) in HOOKS.into_iter().enumerate() {
        if hooks.contains(h) {
            bits |= 1 << i;
        }
    }
    bits
}

/// The bits of [`summary`] that stand for `events`.
pub(crate) fn event_bits(events: EventSet) -> u64 {
    const EVENTS: [EventSet; 7] = [
        EventSet::CONNECTED,
        EventSet::DISCONNECTED,
        EventSet::SUBSCRIBED,
        EventSet::UNSUBSCRIBED,
        EventSet::DELIVERED,
        EventSet::ACKED,
        EventSet::DROPPED,
    ];
    let mut bits = 0;
    for (i, e) in EVENTS.into_iter().enumerate() {
        if events.contains(e) {
            bits |= 1 << (16 + i);
        }
    }
    bits
}

#[derive(Default)]
pub(crate) struct Metrics {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub out_of_memory: AtomicU64,
    pub busy: AtomicU64,
    pub suspended_calls: AtomicU64,
    pub invalid_outputs: AtomicU64,
    pub suspensions: AtomicU64,
    pub instances_created: AtomicU64,
    pub call_nanos: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

/// Failures in a row, per hook: a hook's success ends its own run only,
/// so a plugin failing one hook every time is suspended however often its
/// other hooks answer. The plugin is suspended when the runs add up to
/// `suspend_after`.
#[derive(Default)]
struct Health {
    runs: [u32; Hook::ALL.len()],
    suspended_until: Option<Instant>,
}

/// At most [`WARN_BURST`] failure warnings at once per plugin, then one per
/// [`WARN_EVERY`]: a plugin failing every message must not flood the log.
/// The next warning logged says how many were left out.
const WARN_BURST: f64 = 10.0;
const WARN_EVERY: Duration = Duration::from_secs(1);

struct WarnBudget {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

impl WarnBudget {
    fn new() -> Self {
        WarnBudget {
            tokens: WARN_BURST,
            at: Instant::now(),
            suppressed: 0,
        }
    }

    /// `Some(left out since the last one)` when a warning may be logged now.
    fn take(&mut self) -> Option<u64> {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() / WARN_EVERY.as_secs_f64();
        self.tokens = (self.tokens + refill).min(WARN_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// A configured plugin: what survives its reloads (name, metrics, the
/// runtime switch, health) around its current version.
pub(crate) struct Slot {
    pub name: Arc<str>,
    pub current: ArcSwap<Loaded>,
    /// [`summary`] of the current version's manifest, kept with it.
    wants: AtomicU64,
    pub metrics: Metrics,
    /// Runtime switch (admin API): a disabled plugin is skipped by every hook.
    pub enabled: std::sync::atomic::AtomicBool,
    health: Mutex<Health>,
    warn_budget: Mutex<WarnBudget>,
    reload_lock: tokio::sync::Mutex<()>,
}

/// How a hook's answer held up against the output rules: what to hand on,
/// and `Some(problem)` when part of it was refused (a batch's messages are
/// judged one by one). `Err(problem)`: the whole answer is refused.
pub(crate) type Checked<T> = Result<(T, Option<String>), String>;

/// Engine-wide things a slot needs to (re)load and instantiate.
pub(crate) struct Runtime {
    pub engine: Engine,
    pub linker: Linker<StoreState>,
}

fn wasm_error(e: &wasmtime::Error) -> String {
    let mut s = format!("{e:?}");
    if s.len() > 4000 {
        let mut cut = 4000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" ...");
    }
    s
}

fn manifest_matches_all(m: &Manifest) -> bool {
    m.publish_filters.iter().any(|f| f == "#")
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl Slot {
    /// Load the plugin for the first time.
    pub async fn load(
        rt: &Runtime,
        config: PluginConfig,
        granted: Arc<Granted>,
    ) -> Result<Arc<Slot>, PluginError> {
        let name: Arc<str> = Arc::from(config.name.as_str());
        let bytes = read(&name, &config.path).await?;
        let loaded = Self::build(rt, &name, config, granted, bytes, None).await?;
        let metrics = Metrics::default();
        metrics.instances_created.store(1, Ordering::Relaxed);
        Ok(Arc::new(Slot {
            name,
            wants: AtomicU64::new(summary(&loaded.manifest)),
            current: ArcSwap::from_pointee(loaded),
            metrics,
            enabled: std::sync::atomic::AtomicBool::new(true),
            health: Mutex::new(Health::default()),
            warn_budget: Mutex::new(WarnBudget::new()),
            reload_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// Compile `bytes`, start one instance, run `init`, check the manifest.
    async fn build(
        rt: &Runtime,
        name: &Arc<str>,
        config: PluginConfig,
        granted: Arc<Granted>,
        bytes: Vec<u8>,
        metrics: Option<&Metrics>,
    ) -> Result<Loaded, PluginError> {
        let load_err = |message: String| PluginError::Load {
            plugin: name.to_string(),
            message,
        };
        let config_json = config.config.to_string();
        let fingerprint = fingerprint(&bytes);
        let pre = compile(rt, name, bytes).await?;
        let (warm, manifest) =
            new_instance(rt, name, &config, &granted, &config_json, &pre).await?;
        if let Some(m) = metrics {
            m.instances_created.fetch_add(1, Ordering::Relaxed);
        }
        for f in &manifest.publish_filters {
            if !midge_protocol::topic::valid_filter(f) {
                return Err(load_err(format!("manifest: invalid topic filter {f:?}")));
            }
        }
        Ok(Loaded {
            pre,
            fingerprint,
            idle: Mutex::new(vec![warm]),
            permits: Arc::new(Semaphore::new(config.limits.max_instances.max(1))),
            config,
            granted,
            config_json,
            match_all: manifest_matches_all(&manifest),
            manifest,
        })
    }

    /// Reload from the configured path. With `only_if_changed`, a file with
    /// the same content is left alone (returns `Ok(false)`). A failed load
    /// keeps the current version.
    pub async fn reload(&self, rt: &Runtime, only_if_changed: bool) -> Result<bool, PluginError> {
        let _guard = self.reload_lock.lock().await;
        let current = self.current.load_full();
        let result = async {
            let bytes = read(&self.name, &current.config.path).await?;
            if only_if_changed && fingerprint(&bytes) == current.fingerprint {
                return Ok(false);
            }
            let (config, granted) = (current.config.clone(), current.granted.clone());
            self.swap_in(rt, config, granted, bytes).await?;
            Ok(true)
        }
        .await;
        if let Err(e) = &result {
            self.reload_failed(e);
        }
        result
    }

    /// Moves to a new configuration entry (`config` with its resolved
    /// grants): when the entry or the file's content differs from the
    /// running version, the new version is built (compiled, one instance
    /// started with the new config's `init`, manifest checked) and swapped
    /// in (`Ok(true)`); otherwise the running version stays, warm instances
    /// and all (`Ok(false)`). A failed build keeps the running version and
    /// is counted as a failed reload.
    pub async fn apply(
        &self,
        rt: &Runtime,
        config: PluginConfig,
        granted: Arc<Granted>,
    ) -> Result<bool, PluginError> {
        let _guard = self.reload_lock.lock().await;
        let current = self.current.load_full();
        let result = async {
            let bytes = read(&self.name, &config.path).await?;
            if config == current.config && fingerprint(&bytes) == current.fingerprint {
                return Ok(false);
            }
            self.swap_in(rt, config, granted, bytes).await?;
            Ok(true)
        }
        .await;
        if let Err(e) = &result {
            self.reload_failed(e);
        }
        result
    }

    /// Builds a version from `bytes` and makes it current (lifting any
    /// suspension). The caller holds `reload_lock`.
    async fn swap_in(
        &self,
        rt: &Runtime,
        config: PluginConfig,
        granted: Arc<Granted>,
        bytes: Vec<u8>,
    ) -> Result<(), PluginError> {
        let loaded =
            Self::build(rt, &self.name, config, granted, bytes, Some(&self.metrics)).await?;
        let wants = summary(&loaded.manifest);
        self.current.store(Arc::new(loaded));
        self.wants.store(wants, Ordering::Relaxed);
        *self.health.lock() = Health::default();
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(plugin = &*self.name, "plugin reloaded");
        Ok(())
    }

    /// Counts and logs a refused reload (the running version stays).
    pub fn reload_failed(&self, e: &PluginError) {
        self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = &*self.name, error = %e, "plugin reload failed, keeping the loaded version");
    }

    /// Is the slot enabled and does its manifest ask for any of `bits`
    /// ([`hook_bits`], [`event_bits`])? Two atomic loads, no version loaded.
    pub fn wants(&self, bits: u64) -> bool {
        self.summary() & bits != 0
    }

    /// The [`summary`] bits of the current version; none while disabled.
    pub fn summary(&self) -> u64 {
        if self.enabled.load(Ordering::Relaxed) {
            self.wants.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    pub fn is_suspended(&self) -> bool {
        let mut h = self.health.lock();
        match h.suspended_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                h.suspended_until = None;
                false
            }
            None => false,
        }
    }

    fn record_success(&self, hook: Hook) {
        let mut h = self.health.lock();
        let run = &mut h.runs[hook.index()];
        if *run != 0 {
            *run = 0;
        }
    }

    /// Counts a failure of its kind, logs it (WARN, rate-limited per
    /// plugin) and counts a fault toward suspension.
    pub(crate) fn record_failure(&self, e: &PluginError, limits: &Limits) {
        let m = &self.metrics;
        m.failures.fetch_add(1, Ordering::Relaxed);
        match e {
            PluginError::Trap { .. } => m.traps.fetch_add(1, Ordering::Relaxed),
            PluginError::Timeout { .. } => m.timeouts.fetch_add(1, Ordering::Relaxed),
            PluginError::OutOfMemory { .. } => m.out_of_memory.fetch_add(1, Ordering::Relaxed),
            PluginError::Busy { .. } => m.busy.fetch_add(1, Ordering::Relaxed),
            PluginError::Suspended { .. } => m.suspended_calls.fetch_add(1, Ordering::Relaxed),
            PluginError::Invalid { .. } => m.invalid_outputs.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        if !matches!(e, PluginError::Suspended { .. } | PluginError::Busy { .. }) {
            if let Some(left_out) = self.warn_budget.lock().take() {
                let hook = e.hook().map(|h| h.to_string()).unwrap_or_default();
                if left_out == 0 {
                    tracing::warn!(plugin = &*self.name, %hook, error = %e, "plugin call failed");
                } else {
                    tracing::warn!(
                        plugin = &*self.name,
                        %hook,
                        error = %e,
                        not_logged = left_out,
                        "plugin call failed (and {left_out} more not logged)"
                    );
                }
            }
        }
        if !e.is_fault() {
            return;
        }
        let limit = limits.suspend_after;
        if limit == 0 {
            return;
        }
        let hook = e.hook().unwrap_or(Hook::Init);
        let mut h = self.health.lock();
        let run = &mut h.runs[hook.index()];
        *run = run.saturating_add(1);
        let total = h.runs.iter().fold(0u32, |t, r| t.saturating_add(*r));
        if total >= limit {
            // The runs stay: once the suspension is over, one more failure
            // suspends again, until the failing hooks answer.
            h.suspended_until = Some(Instant::now() + Duration::from_secs(limits.suspend_secs));
            m.suspensions.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                plugin = &*self.name,
                failures = limit,
                secs = limits.suspend_secs,
                "plugin suspended after repeated failures"
            );
        }
    }

    /// Call one hook whose answer needs no checking (authorize, on-event,
    /// on-rule-output); see [`Slot::call_checked`].
    pub async fn call(&self, rt: &Runtime, call: Call<'_>) -> Result<Reply, PluginError> {
        self.call_checked(rt, call, |reply, _| Ok((reply, None)))
            .await
            .map(|(reply, _)| reply)
    }

    /// Call one hook: take (or start) an instance, run under the deadline,
    /// return the instance to the pool on success, discard it on failure.
    /// The answer is handed to `check` (with the version that gave it)
    /// before the call counts as a success: an answer it refuses, wholly
    /// (`Err`) or in part (`Ok((_, Some(problem)))`), is a failure of the
    /// call ([`PluginError::Invalid`]: logged, counted, toward suspension),
    /// and so is a capability call the plugin made against the output
    /// rules. The second value returned is that failure, if the answer was
    /// still (partly) usable.
    pub async fn call_checked<T>(
        &self,
        rt: &Runtime,
        call: Call<'_>,
        check: impl FnOnce(Reply, &Loaded) -> Checked<T>,
    ) -> Result<(T, Option<PluginError>), PluginError> {
        let hook = call.hook();
        let loaded = self.current.load_full();
        let limits = &loaded.config.limits;
        if self.is_suspended() {
            let e = PluginError::Suspended {
                plugin: self.name.to_string(),
                hook,
            };
            self.record_failure(&e, limits);
            return Err(e);
        }
        let queue_timeout = Duration::from_millis(limits.queue_timeout_ms);
        let _permit =
            match tokio::time::timeout(queue_timeout, loaded.permits.clone().acquire_owned()).await
            {
                Ok(Ok(p)) => p,
                _ => {
                    let e = PluginError::Busy {
                        plugin: self.name.to_string(),
                        hook,
                        max_instances: limits.max_instances,
                    };
                    self.record_failure(&e, limits);
                    return Err(e);
                }
            };
        self.metrics.calls.fetch_add(1, Ordering::Relaxed);
        let warm = loaded.idle.lock().pop();
        let mut warm = match warm {
            Some(w) => w,
            None => {
                match new_instance(
                    rt,
                    &self.name,
                    &loaded.config,
                    &loaded.granted,
                    &loaded.config_json,
                    &loaded.pre,
                )
                .await
                {
                    Ok((w, _)) => {
                        self.metrics
                            .instances_created
                            .fetch_add(1, Ordering::Relaxed);
                        w
                    }
                    Err(e) => {
                        self.record_failure(&e, limits);
                        return Err(e);
                    }
                }
            }
        };
        let deadline = Duration::from_millis(limits.deadline_ms);
        arm(&mut warm.store, deadline);
        let started = Instant::now();
        // The epoch callback interrupts wasm code; this outer timeout also
        // bounds time spent in host calls.
        let outer = deadline * 2 + Duration::from_millis(20);
        let result = tokio::time::timeout(outer, invoke(&mut warm, call)).await;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.metrics.call_nanos.fetch_add(nanos, Ordering::Relaxed);
        match result {
            Ok(Ok(reply)) => {
                let broke = std::mem::take(&mut warm.store.data_mut().violations);
                loaded.idle.lock().push(warm);
                let invalid = |problem: String| PluginError::Invalid {
                    plugin: self.name.to_string(),
                    hook,
                    problem,
                };
                let (value, problem) = match check(reply, &loaded) {
                    Ok(v) => v,
                    Err(problem) => {
                        let e = invalid(problem);
                        self.record_failure(&e, limits);
                        return Err(e);
                    }
                };
                let problems: Vec<String> = problem.into_iter().chain(broke).collect();
                if problems.is_empty() {
                    self.record_success(hook);
                    return Ok((value, None));
                }
                let e = invalid(problems.join("; "));
                self.record_failure(&e, limits);
                Ok((value, Some(e)))
            }
            Ok(Err(err)) => {
                let e = classify(&self.name, hook, &warm.store, &err, limits.memory_mib);
                self.record_failure(&e, limits);
                Err(e)
            }
            Err(_) => {
                let e = PluginError::Timeout {
                    plugin: self.name.to_string(),
                    hook,
                    deadline,
                };
                self.record_failure(&e, limits);
                Err(e)
            }
        }
    }

    pub fn idle_instances(&self) -> usize {
        self.current.load().idle.lock().len()
    }
}

/// Compiles a component (off the async threads) and links it against the
/// host's world: what loading and `midge check` share.
async fn compile(
    rt: &Runtime,
    name: &str,
    bytes: Vec<u8>,
) -> Result<PluginPre<StoreState>, PluginError> {
    let load_err = |message: String| PluginError::Load {
        plugin: name.to_string(),
        message,
    };
    let engine = rt.engine.clone();
    let component = tokio::task::spawn_blocking(move || Component::from_binary(&engine, &bytes))
        .await
        .map_err(|e| load_err(format!("compile task: {e}")))?
        .map_err(|e| load_err(format!("compile: {}", wasm_error(&e))))?;
    let pre = rt
        .linker
        .instantiate_pre(&component)
        .map_err(|e| load_err(format!("link: {}", wasm_error(&e))))?;
    PluginPre::new(pre).map_err(|e| load_err(format!("exports: {}", wasm_error(&e))))
}

async fn read(name: &str, path: &std::path::Path) -> Result<Vec<u8>, PluginError> {
    let owned = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || std::fs::read(owned))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    result.map_err(|e| PluginError::Load {
        plugin: name.to_string(),
        message: format!("read {}: {e}", path.display()),
    })
}

fn arm(store: &mut Store<StoreState>, deadline: Duration) {
    let data = store.data_mut();
    data.call_started = Instant::now();
    data.deadline = deadline;
    data.timed_out = false;
    data.limiter.hit = false;
    data.violations.clear();
    data.panic = None;
    store.set_epoch_deadline(1);
}

fn classify(
    plugin: &str,
    hook: Hook,
    store: &Store<StoreState>,
    err: &wasmtime::Error,
    memory_mib: u64,
) -> PluginError {
    let data = store.data();
    if data.timed_out {
        PluginError::Timeout {
            plugin: plugin.to_string(),
            hook,
            deadline: data.deadline,
        }
    } else if data.limiter.hit {
        PluginError::OutOfMemory {
            plugin: plugin.to_string(),
            hook,
            limit_bytes: memory_mib << 20,
        }
    } else {
        PluginError::Trap {
            plugin: plugin.to_string(),
            hook,
            message: trap_message(data.panic.as_deref(), err),
        }
    }
}

/// What a trap is reported as: the panic message the SDK's panic hook
/// logged just before it, if any (on one line); a stack overflow by name;
/// otherwise the trap with its wasm backtrace.
fn trap_message(panic: Option<&str>, err: &wasmtime::Error) -> String {
    let trap = err.downcast_ref::<wasmtime::Trap>();
    if let Some(p) = panic {
        let p = p.replace('\n', " ");
        return match trap {
            Some(t) => format!("{p} ({t})"),
            None => p,
        };
    }
    match trap {
        Some(wasmtime::Trap::StackOverflow) => {
            "stack overflow: the plugin's call stack is exhausted (unbounded recursion?)".into()
        }
        Some(wasmtime::Trap::MemoryOutOfBounds) => format!(
            "{} (a stack overflow of a Rust plugin's stack, which lives in linear memory, shows as this too)",
            wasm_error(err)
        ),
        _ => wasm_error(err),
    }
}

/// Start a fresh instance: WASI without files (except granted read-only
/// directories), network or environment; memory cap; epoch deadline; `init`.
async fn new_instance(
    rt: &Runtime,
    name: &Arc<str>,
    config: &PluginConfig,
    granted: &Arc<Granted>,
    config_json: &str,
    pre: &PluginPre<StoreState>,
) -> Result<(Warm, Manifest), PluginError> {
    let load_err = |message: String| PluginError::Load {
        plugin: name.to_string(),
        message,
    };
    let mut wasi = WasiCtxBuilder::new();
    wasi.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for dir in &config.grants.dirs {
        wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)
            .map_err(|e| {
                load_err(format!(
                    "grant dir {}: {}",
                    dir.host.display(),
                    wasm_error(&e)
                ))
            })?;
    }
    let state = StoreState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        limiter: Limiter {
            max_memory: usize::try_from(config.limits.memory_mib << 20).unwrap_or(usize::MAX),
            hit: false,
        },
        granted: granted.clone(),
        call_started: Instant::now(),
        deadline: Duration::from_millis(config.limits.init_deadline_ms),
        timed_out: false,
        violations: Vec::new(),
        panic: None,
    };
    let mut store = Store::new(&rt.engine, state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(|mut ctx| {
        let data = ctx.data_mut();
        if data.call_started.elapsed() >= data.deadline {
            data.timed_out = true;
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    arm(
        &mut store,
        Duration::from_millis(config.limits.init_deadline_ms),
    );
    let plugin = match pre.instantiate_async(&mut store).await {
        Ok(plugin) => plugin,
        // Not a trap, a timeout or the memory cap: the component's exports
        // do not have the types this broker's WIT gives them.
        Err(e)
            if e.downcast_ref::<wasmtime::Trap>().is_none()
                && !store.data().timed_out
                && !store.data().limiter.hit =>
        {
            return Err(load_err(format!(
                "does not match this broker's plugin interface (midge:plugin@0.1.0, wit/ in \
                 the broker's source; rebuild the plugin against it): {}",
                wasm_error(&e)
            )));
        }
        Err(e) => {
            let e = classify(name, Hook::Init, &store, &e, config.limits.memory_mib);
            return Err(load_err(unnamed(name, &e)));
        }
    };
    let started = async {
        let manifest = plugin
            .midge_plugin_hooks()
            .call_init(&mut store, config_json)
            .await?;
        Ok::<_, wasmtime::Error>((plugin, manifest))
    }
    .await;
    match started {
        Ok((plugin, Ok(manifest))) => Ok((Warm { store, plugin }, manifest)),
        Ok((_, Err(InitError::BadConfig(why)))) => {
            Err(load_err(format!("init refused its config: {why}")))
        }
        Ok((_, Err(InitError::Failed(why)))) => Err(load_err(format!("init failed: {why}"))),
        Err(e) => {
            let e = classify(name, Hook::Init, &store, &e, config.limits.memory_mib);
            Err(load_err(unnamed(name, &e)))
        }
    }
}

/// `e`'s text without the leading "plugin NAME: " (the load error wrapping
/// it names the plugin already).
fn unnamed(name: &str, e: &PluginError) -> String {
    let text = e.to_string();
    match text.strip_prefix(&format!("plugin {name}: ")) {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

async fn invoke(warm: &mut Warm, call: Call<'_>) -> wasmtime::Result<Reply> {
    let hooks = warm.plugin.midge_plugin_hooks();
    let store = &mut warm.store;
    Ok(match call {
        Call::Authenticate(r) => Reply::Auth(hooks.call_authenticate(store, r).await?),
        Call::Authorize(r) => Reply::Authz(hooks.call_authorize(store, r).await?),
        Call::OnPublish(m, p) => Reply::Publish(hooks.call_on_publish(store, m, p).await?),
        Call::OnPublishBatch(ms, p) => {
            Reply::PublishBatch(hooks.call_on_publish_batch(store, ms, p).await?)
        }
        Call::OnEvent(e, t) => {
            hooks.call_on_event(store, e, t).await?;
            Reply::Unit
        }
        Call::OnRuleOutput(rule, rows) => {
            Reply::RuleOutput(hooks.call_on_rule_output(store, rule, rows).await?)
        }
        Call::CallFunction(name, args) => {
            Reply::Function(hooks.call_call_function(store, name, args).await?)
        }
    })
}
