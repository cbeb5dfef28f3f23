//! The rule engine inside the broker: rules from the config compiled with
//! `midge-rules`, indexed by their FROM filters, evaluated on every publish
//! and event that a rule asks for.
//!
//! Where actions run: off the publisher's path. A rule is evaluated where
//! its message is published (or its event happens); its output rows go to
//! bounded action lanes ([`queue`]), each served by one task that runs the
//! rule's actions in order. A publisher whose messages feed a deep lane is
//! held back (not read) until the lane drains, for at most
//! [`queue::HOLD_MAX`]; past that the lane is marked overloaded and
//! outputs beyond its capacity are dropped and counted (`actions_dropped`,
//! and `actions_failed` per rule). A slow or failing action therefore slows
//! publishers down for a bounded time and never loses the publish itself,
//! which is routed before its outputs are queued.
//!
//! A publish with no matching rule pays one atomic load (no rules) or one
//! trie walk (rules on other filters). The payload is JSON-decoded at most
//! once per message, shared by all matching rules (`midge_rules::Input`).

mod action;
pub mod events;
pub mod in_file;
mod index;
pub mod overlay;
pub mod preview;
pub mod queue;
pub mod sample;
mod template;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use midge_rules::{EventKind, ExternalFunctions, Input, Map, Row, Rule, Value};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use smallvec::SmallVec;
use tracing::debug;

pub use action::{run_actions, Action, ActionConfig, ActionContext};
pub use events::EventFields;
use index::FilterIndex;

use crate::message::Message;

/// Evaluation and action times are measured on one run in this many (two
/// clock reads per rule and message were 7 % of the broker's CPU with 10
/// rules) and counted times this many: `eval_nanos` / `action_nanos` are
/// estimates, exact in the long run.
const TIME_EVERY: u64 = 16;
/// Republished messages are not fed to rules again beyond this depth.
const MAX_RULE_DEPTH: u8 = 8;
/// The single node's name, reported in the `node` field (a clustered
/// node reports `crate::node::name()`).
pub const NODE: &str = crate::node::DEFAULT;

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
    /// (outputs dropped for a full lane excluded: they never ran; sampled
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
}

/// Outputs of a publish's rules, for [`RuleEngine::enqueue`] once the
/// message is routed.
pub type Outputs = Vec<Job>;

/// A compiled rule set waiting for [`RuleEngine::install`].
#[derive(Debug)]
pub struct Prepared {
    set: RuleSet,
    configs: Vec<RuleConfig>,
    base: Vec<RuleConfig>,
    overlay: overlay::Overlay,
}

/// The broker's rule engine: the current rule set and the action lanes.
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
    /// Where outputs wait for their actions.
    pub lanes: queue::Lanes,
    /// Outputs dropped because their lane was full.
    pub actions_dropped: AtomicU64,
    /// Functions rules may call beyond the catalogue (the plugins').
    functions: RwLock<Option<Arc<dyn ExternalFunctions>>>,
}

impl Default for RuleEngine {
    fn default() -> Self {
        RuleEngine {
            set: RwLock::new(Arc::new(RuleSet::default())),
            configs: RwLock::new(Arc::new(Vec::new())),
            base: RwLock::new(Arc::new(Vec::new())),
            overlay: RwLock::new(Arc::new(overlay::Overlay::default())),
            edits: Mutex::new(()),
            message_rules: AtomicBool::new(false),
            event_mask: AtomicU32::new(0),
            lanes: queue::Lanes::default(),
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

    /// The functions beyond the catalogue rules may call (the plugins').
    pub fn functions(&self) -> Option<Arc<dyn ExternalFunctions>> {
        self.functions.read().clone()
    }

    /// Compiles one rule as [`RuleEngine::load`] would, without loading it.
    pub fn compile(&self, id: &str, sql: &str) -> Result<Rule, midge_rules::RuleError> {
        Rule::compile_with(id, sql, self.functions.read().as_ref())
    }

    /// The configs of the running rule set, in order.
    pub fn configs(&self) -> Arc<Vec<RuleConfig>> {
        self.configs.read().clone()
    }

    /// The lanes whose tasks the caller is to start ([`run_actions`]);
    /// empty after the first call.
    pub fn start_lanes(&self) -> std::ops::Range<usize> {
        if self.lanes.start() {
            0..self.lanes.count()
        } else {
            0..0
        }
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

    /// Runs the message rules whose FROM matches `msg.topic` and returns
    /// their outputs, for [`RuleEngine::enqueue`] once the message is routed.
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
                "id" => Some(Value::Str(format!("{:016X}", msg.id))),
                "pub_props" => Some(events::pub_props(&msg.properties)),
                "headers" => Some(Value::Map(Map::new())),
                "peername" => peer().map(Value::Str),
                "peerhost" => peer().and_then(|p| p.rsplit_once(':').map(|(h, _)| Value::from(h))),
                _ => None,
            }
        };
        // The payload is shared with the rows (`SELECT payload` clones the
        // `Bytes`): a republished binary is the bytes that came in.
        let mut input = Input::message_shared(&msg.topic, &msg.payload)
            .qos(msg.qos as u8)
            .flags(msg.retain, false)
            .timestamp(msg.timestamp_ms)
            .publish_received_at(msg.timestamp_ms)
            .node(crate::node::name())
            .lazy(&lazy);
        if let Some(o) = &msg.origin {
            input = input.clientid(&o.client_id).username(o.username.as_deref());
        }
        self.evaluate(&set, &hits, &input, msg.rule_depth, &mut out);
        out
    }

    /// The lane of `msg`'s outputs: its publisher's, or its topic's when it
    /// has none (wills keep their client; republished messages their topic).
    pub fn lane_of_message(&self, msg: &Message) -> usize {
        match &msg.origin {
            Some(o) => self.lanes.lane_of(&o.client_id),
            None => self.lanes.lane_of(&msg.topic),
        }
    }

    /// Queues `outputs` on `lane`; those beyond its capacity are dropped
    /// and counted (`actions_dropped`, and each of their actions as failed).
    pub fn enqueue(&self, lane: usize, outputs: Outputs) {
        if outputs.is_empty() {
            return;
        }
        for job in self.lanes.push(lane, outputs) {
            let r = &job.set.rules[job.rule];
            self.actions_dropped.fetch_add(1, Ordering::Relaxed);
            r.metrics
                .actions_failed
                .fetch_add(r.actions.len() as u64, Ordering::Relaxed);
            debug!(rule = r.rule.id(), lane, "action lane full: output dropped");
        }
    }

    /// Runs the rules listening to an event (callers check [`RuleEngine::wants`]
    /// first) and queues their outputs on the client's lane.
    pub fn on_event(&self, kind: EventKind, fields: &EventFields) {
        let set = self.set.read().clone();
        let Some(idx) = set.events.get(&kind) else {
            return;
        };
        let idx = idx.clone();
        let input = fields.input(kind);
        let mut out = Outputs::new();
        self.evaluate(&set, &idx, &input, 0, &mut out);
        let lane = self
            .lanes
            .lane_of(fields.clientid.as_deref().unwrap_or_default());
        self.enqueue(lane, out);
    }

    /// Evaluates the rules `idx`; outputs of rules with actions go to `out`.
    fn evaluate(
        &self,
        set: &Arc<RuleSet>,
        idx: &[usize],
        input: &Input<'_>,
        depth: u8,
        out: &mut Outputs,
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
                    out.extend(rows.into_iter().map(|row| Job {
                        set: set.clone(),
                        rule: i,
                        row,
                        depth,
                    }));
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
