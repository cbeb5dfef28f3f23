//! The rule engine inside the broker: rules from the config compiled with
//! `midge-rules`, indexed by their FROM filters, evaluated on every publish
//! and event that a rule asks for.
//!
//! Where actions run: the `republish` and `log` actions of rules on a
//! published message (by a client, the admin API, a will or a plugin) run
//! inline, on the publisher's path, right after the
//! message itself was routed ([`crate::broker::Broker::route`]): a publisher
//! whose messages trigger rules is slowed down by them instead of their
//! outputs being dropped. `plugin` actions (async Wasm calls), the actions
//! of rules on events, and those of rules on republished messages (depth
//! above 0, so a rule loop cannot hold a publisher) go to a bounded queue
//! served by one task; beyond [`ACTION_QUEUE`] waiting outputs they are
//! dropped and counted (`actions_dropped`).
//!
//! A publish with no matching rule pays one atomic load (no rules) or one
//! trie walk (rules on other filters). The payload is JSON-decoded at most
//! once per message, shared by all matching rules (`midge_rules::Input`).

mod action;
pub mod events;
mod index;
pub mod overlay;
pub mod sample;
mod template;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use midge_rules::{EventKind, ExternalFunctions, Input, Row, Rule};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde_json::{Map, Value};
use smallvec::SmallVec;
use tokio::sync::mpsc;
use tracing::debug;

pub use action::{run_actions, Action, ActionConfig};
pub use events::EventFields;
use index::FilterIndex;

use crate::message::Message;

/// Most rule outputs waiting for their queued actions; beyond it, outputs
/// are dropped and counted (`actions_dropped`), never blocking anyone.
const ACTION_QUEUE: usize = 10_000;
/// Evaluation and action times are measured on one run in this many (two
/// clock reads per rule and message were 7 % of the broker's CPU with 10
/// rules) and counted times this many: `eval_nanos` / `action_nanos` are
/// estimates, exact in the long run.
const TIME_EVERY: u64 = 16;
/// Republished messages are not fed to rules again beyond this depth.
const MAX_RULE_DEPTH: u8 = 8;
/// Node name reported in the `node` field.
pub const NODE: &str = "midge@127.0.0.1";

/// One `[[rules]]` entry of the config (also the admin API's rule body).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub id: String,
    pub sql: String,
    #[serde(default)]
    pub actions: Vec<ActionConfig>,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
}

fn enabled_default() -> bool {
    true
}

/// Per-rule counters, kept across reloads of a rule with the same id.
#[derive(Debug, Default)]
pub struct RuleMetrics {
    /// The rule's FROM matched the message or event.
    pub matched: AtomicU64,
    /// WHERE held: at least one output row.
    pub passed: AtomicU64,
    /// WHERE did not hold.
    pub no_result: AtomicU64,
    /// Evaluation failed (a runtime type error, ...).
    pub failed: AtomicU64,
    pub actions_success: AtomicU64,
    pub actions_failed: AtomicU64,
    /// Time spent evaluating the rule (WHERE and SELECT), over `matched`
    /// evaluations (sampled: one in [`TIME_EVERY`] is timed).
    pub eval_nanos: AtomicU64,
    /// Time spent running the rule's actions, over `action_runs` runs
    /// (outputs dropped for a full queue excluded: they never ran; sampled
    /// like `eval_nanos`).
    pub action_nanos: AtomicU64,
    /// Action runs timed in `action_nanos`.
    pub action_runs: AtomicU64,
}

/// A snapshot of one rule's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStats {
    pub id: String,
    pub enabled: bool,
    pub matched: u64,
    pub passed: u64,
    pub no_result: u64,
    pub failed: u64,
    pub actions_success: u64,
    pub actions_failed: u64,
    /// Total evaluation time in nanoseconds (over `matched`).
    pub eval_nanos: u64,
    /// Total action time in nanoseconds (over `action_runs`).
    pub action_nanos: u64,
    pub action_runs: u64,
}

#[derive(Debug)]
struct CompiledRule {
    rule: Rule,
    enabled: bool,
    actions: Vec<Action>,
    /// Has a `republish` or `log` action (run inline for a published message).
    has_inline_actions: bool,
    metrics: Arc<RuleMetrics>,
}

/// A compiled, indexed rule set; swapped whole on reload.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    index: FilterIndex,
    events: HashMap<EventKind, Vec<usize>>,
}

impl RuleSet {
    /// Compiles every rule; all errors are returned together, each naming its rule.
    /// `functions`: functions beyond the catalogue (the plugins').
    pub fn build(
        configs: &[RuleConfig],
        previous: Option<&RuleSet>,
        functions: Option<&Arc<dyn ExternalFunctions>>,
    ) -> Result<RuleSet, Vec<String>> {
        let mut errors = Vec::new();
        let mut set = RuleSet::default();
        let mut seen = HashMap::new();
        for (n, c) in configs.iter().enumerate() {
            if c.id.trim().is_empty() {
                errors.push(format!("rules[{n}]: `id` must not be empty"));
                continue;
            }
            if seen.insert(c.id.clone(), n).is_some() {
                errors.push(format!("rule `{}`: duplicate id", c.id));
                continue;
            }
            let rule = match Rule::compile_with(&c.id, &c.sql, functions) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            let mut actions = Vec::new();
            for (i, a) in c.actions.iter().enumerate() {
                match Action::build(a) {
                    Ok(a) => actions.push(a),
                    Err(e) => errors.push(format!("rule `{}`: actions[{i}]: {e}", c.id)),
                }
            }
            let metrics = previous
                .and_then(|p| p.rules.iter().find(|r| r.rule.id() == c.id))
                .map(|r| r.metrics.clone())
                .unwrap_or_default();
            let idx = set.rules.len();
            for f in rule.from_filters() {
                if !f.starts_with("$events/") {
                    set.index.insert(f, idx);
                }
            }
            for k in rule.event_kinds() {
                set.events.entry(*k).or_default().push(idx);
            }
            set.rules.push(CompiledRule {
                rule,
                enabled: c.enabled,
                has_inline_actions: actions.iter().any(|a| !matches!(a, Action::Plugin { .. })),
                actions,
                metrics,
            });
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    fn has_message_rules(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.enabled && r.rule.handles_messages())
    }

    fn event_mask(&self) -> u32 {
        self.events
            .iter()
            .filter(|(_, idx)| idx.iter().any(|&i| self.rules[i].enabled))
            .fold(0, |m, (k, _)| m | event_bit(*k))
    }
}

fn event_bit(k: EventKind) -> u32 {
    1 << (EventKind::ALL.iter().position(|x| *x == k).unwrap_or(0) as u32)
}

/// A rule output waiting for its actions.
#[derive(Debug)]
pub struct Job {
    set: Arc<RuleSet>,
    rule: usize,
    row: Row,
    depth: u8,
    /// Its `republish` / `log` actions ran inline already; only its
    /// `plugin` actions are left for the queue.
    inline_done: bool,
}

/// Outputs of a publish's rules whose actions the caller runs inline, once
/// the message is routed ([`RuleEngine::run_inline`]).
pub type Outputs = Vec<Job>;

/// A compiled rule set waiting for [`RuleEngine::install`].
#[derive(Debug)]
pub struct Prepared {
    set: RuleSet,
    configs: Vec<RuleConfig>,
    base: Vec<RuleConfig>,
    overlay: overlay::Overlay,
}

/// The broker's rule engine: the current rule set and the action queue.
#[derive(Debug)]
pub struct RuleEngine {
    set: RwLock<Arc<RuleSet>>,
    /// The configs the current set was built from: `base` with `overlay` applied.
    configs: RwLock<Arc<Vec<RuleConfig>>>,
    /// The config file's rules, as last loaded.
    base: RwLock<Arc<Vec<RuleConfig>>>,
    /// The admin API's changes over `base`, as last loaded.
    overlay: RwLock<Arc<overlay::Overlay>>,
    /// Serialises whole-set changes that read the running set or the
    /// overlay file first (admin API edits, reloads).
    edits: Mutex<()>,
    message_rules: AtomicBool,
    event_mask: AtomicU32,
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    /// Outputs dropped because the action queue was full.
    pub actions_dropped: AtomicU64,
    /// Functions rules may call beyond the catalogue (the plugins').
    functions: RwLock<Option<Arc<dyn ExternalFunctions>>>,
}

impl Default for RuleEngine {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(ACTION_QUEUE);
        RuleEngine {
            set: RwLock::new(Arc::new(RuleSet::default())),
            configs: RwLock::new(Arc::new(Vec::new())),
            base: RwLock::new(Arc::new(Vec::new())),
            overlay: RwLock::new(Arc::new(overlay::Overlay::default())),
            edits: Mutex::new(()),
            message_rules: AtomicBool::new(false),
            event_mask: AtomicU32::new(0),
            tx,
            rx: Mutex::new(Some(rx)),
            actions_dropped: AtomicU64::new(0),
            functions: RwLock::new(None),
        }
    }
}

impl RuleEngine {
    /// Compiles `configs` and swaps them in; on error the old set keeps
    /// running. They become the base, with no overlay.
    pub fn load(&self, configs: &[RuleConfig]) -> Result<usize, Vec<String>> {
        let _one_at_a_time = self.edit_lock();
        let prepared = self.prepare(configs.to_vec(), overlay::Overlay::default())?;
        Ok(self.install(prepared))
    }

    /// Held while reading the running set (or the overlay file) to build a
    /// new one from it, until [`RuleEngine::install`]: edits and reloads
    /// never interleave.
    pub fn edit_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.edits.lock()
    }

    /// Compiles `base` with `overlay` applied, without running it yet.
    pub fn prepare(
        &self,
        base: Vec<RuleConfig>,
        overlay: overlay::Overlay,
    ) -> Result<Prepared, Vec<String>> {
        let configs = overlay.apply(&base);
        let previous = self.set.read().clone();
        let functions = self.functions.read().clone();
        let set = RuleSet::build(&configs, Some(&previous), functions.as_ref())?;
        Ok(Prepared {
            set,
            configs,
            base,
            overlay,
        })
    }

    /// Swaps in a prepared set. Returns the number of rules.
    pub fn install(&self, p: Prepared) -> usize {
        let n = p.set.rules.len();
        self.message_rules
            .store(p.set.has_message_rules(), Ordering::Release);
        self.event_mask.store(p.set.event_mask(), Ordering::Release);
        let mut current = self.set.write();
        *current = Arc::new(p.set);
        *self.configs.write() = Arc::new(p.configs);
        *self.base.write() = Arc::new(p.base);
        *self.overlay.write() = Arc::new(p.overlay);
        drop(current);
        n
    }

    /// The config file's rules the running set was built from.
    pub fn base(&self) -> Arc<Vec<RuleConfig>> {
        self.base.read().clone()
    }

    /// The admin API's changes the running set was built with.
    pub fn overlay(&self) -> Arc<overlay::Overlay> {
        self.overlay.read().clone()
    }

    /// Functions beyond the catalogue that rules loaded from now on may call.
    pub fn set_functions(&self, functions: Arc<dyn ExternalFunctions>) {
        *self.functions.write() = Some(functions);
    }

    /// Compiles one rule as [`RuleEngine::load`] would, without loading it.
    pub fn compile(&self, id: &str, sql: &str) -> Result<Rule, midge_rules::RuleError> {
        Rule::compile_with(id, sql, self.functions.read().as_ref())
    }

    /// The configs of the running rule set, in order.
    pub fn configs(&self) -> Arc<Vec<RuleConfig>> {
        self.configs.read().clone()
    }

    /// The action queue's receiving end, taken once by the server.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Job>> {
        self.rx.lock().take()
    }

    /// Metrics of every rule in the current set.
    pub fn stats(&self) -> Vec<RuleStats> {
        let set = self.set.read().clone();
        set.rules
            .iter()
            .map(|r| {
                let m = &r.metrics;
                RuleStats {
                    id: r.rule.id().to_string(),
                    enabled: r.enabled,
                    matched: m.matched.load(Ordering::Relaxed),
                    passed: m.passed.load(Ordering::Relaxed),
                    no_result: m.no_result.load(Ordering::Relaxed),
                    failed: m.failed.load(Ordering::Relaxed),
                    actions_success: m.actions_success.load(Ordering::Relaxed),
                    actions_failed: m.actions_failed.load(Ordering::Relaxed),
                    eval_nanos: m.eval_nanos.load(Ordering::Relaxed),
                    action_nanos: m.action_nanos.load(Ordering::Relaxed),
                    action_runs: m.action_runs.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Is any enabled rule listening to `kind`? (one atomic load)
    pub fn wants(&self, kind: EventKind) -> bool {
        self.event_mask.load(Ordering::Relaxed) & event_bit(kind) != 0
    }

    /// Runs the message rules whose FROM matches `msg.topic`. The outputs
    /// whose actions are for the caller to run ([`RuleEngine::run_inline`])
    /// are returned: those of a published message (not a republished one)
    /// with `republish` or `log` actions. Everything else is queued.
    pub fn on_message(&self, msg: &Message) -> Outputs {
        if !self.message_rules.load(Ordering::Relaxed) || msg.rule_depth >= MAX_RULE_DEPTH {
            return Outputs::new();
        }
        let set = self.set.read().clone();
        let mut hits: SmallVec<[usize; 8]> = SmallVec::new();
        set.index.matches(&msg.topic, &mut hits);
        if hits.is_empty() {
            return Outputs::new();
        }
        let mut out = Outputs::with_capacity(hits.len());
        // Built only if a rule reads them: formatting the id and the peer
        // address and converting the properties cost more than most rules.
        let lazy = |name: &str| -> Option<Value> {
            let peer = || msg.origin.as_ref().map(|o| o.peer.to_string());
            match name {
                "id" => Some(Value::String(format!("{:016X}", msg.id))),
                "pub_props" => Some(events::pub_props(&msg.properties)),
                "headers" => Some(Value::Object(Map::new())),
                "peername" => peer().map(Value::String),
                "peerhost" => peer()
                    .and_then(|p| p.rsplit_once(':').map(|(h, _)| Value::String(h.to_owned()))),
                _ => None,
            }
        };
        let mut input = Input::message(&msg.topic, &msg.payload)
            .qos(msg.qos as u8)
            .flags(msg.retain, false)
            .timestamp(msg.timestamp_ms)
            .publish_received_at(msg.timestamp_ms)
            .node(NODE)
            .lazy(&lazy);
        if let Some(o) = &msg.origin {
            input = input.clientid(&o.client_id).username(o.username.as_deref());
        }
        let inline = (msg.rule_depth == 0).then_some(&mut out);
        self.evaluate(&set, &hits, &input, msg.rule_depth, inline);
        out
    }

    /// Runs the inline actions of `outputs` (from [`RuleEngine::on_message`]),
    /// then queues those that also have `plugin` actions.
    pub fn run_inline(&self, broker: &crate::broker::Broker, outputs: Outputs) {
        let at = action::now();
        for mut job in outputs {
            if action::run_sync(broker, &job, at) {
                job.inline_done = true;
                self.queue(job);
            }
        }
    }

    /// Queues `job` for the action task; counts it as dropped when the queue is full.
    fn queue(&self, job: Job) {
        if let Err(e) = self.tx.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            let r = &job.set.rules[job.rule];
            self.actions_dropped.fetch_add(1, Ordering::Relaxed);
            let n = r
                .actions
                .iter()
                .filter(|a| !job.inline_done || matches!(a, Action::Plugin { .. }))
                .count();
            r.metrics
                .actions_failed
                .fetch_add(n as u64, Ordering::Relaxed);
            debug!(rule = r.rule.id(), "action queue full: output dropped");
        }
    }

    /// Runs the rules listening to an event (callers check [`RuleEngine::wants`] first).
    pub fn on_event(&self, kind: EventKind, fields: &EventFields) {
        let set = self.set.read().clone();
        let Some(idx) = set.events.get(&kind) else {
            return;
        };
        let idx = idx.clone();
        let input = fields.input(kind);
        self.evaluate(&set, &idx, &input, 0, None);
    }

    /// Evaluates the rules `idx`; outputs go to `inline` when given and the
    /// rule has inline actions, else to the queue.
    fn evaluate(
        &self,
        set: &Arc<RuleSet>,
        idx: &[usize],
        input: &Input<'_>,
        depth: u8,
        mut inline: Option<&mut Outputs>,
    ) {
        for &i in idx {
            let r = &set.rules[i];
            if !r.enabled {
                continue;
            }
            let n = r.metrics.matched.fetch_add(1, Ordering::Relaxed);
            let started = n.is_multiple_of(TIME_EVERY).then(Instant::now);
            let evaluated = r.rule.evaluate(input);
            if let Some(t) = started {
                r.metrics
                    .eval_nanos
                    .fetch_add(nanos_since(t) * TIME_EVERY, Ordering::Relaxed);
            }
            match evaluated {
                Ok(rows) if rows.is_empty() => {
                    r.metrics.no_result.fetch_add(1, Ordering::Relaxed);
                }
                Ok(rows) => {
                    r.metrics.passed.fetch_add(1, Ordering::Relaxed);
                    if r.actions.is_empty() {
                        continue;
                    }
                    for row in rows {
                        let job = Job {
                            set: set.clone(),
                            rule: i,
                            row,
                            depth,
                            inline_done: false,
                        };
                        match inline.as_deref_mut() {
                            Some(out) if r.has_inline_actions => out.push(job),
                            _ => self.queue(job),
                        }
                    }
                }
                Err(e) => {
                    r.metrics.failed.fetch_add(1, Ordering::Relaxed);
                    debug!(rule = r.rule.id(), error = %e, "rule evaluation failed");
                }
            }
        }
    }
}

/// Nanoseconds since `started`, saturating.
pub(crate) fn nanos_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
