//! Rule actions: `republish` (templated topic, payload and 5.0 properties),
//! `log`, `plugin` (hand rows to a Wasm plugin) and `bridge` (the message a
//! `republish` would make, put into a named bridge's outbound buffer
//! instead of published here: the bridges implement
//! [`ActionContext::bridge`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use midge_protocol::{topic, ByteStr, Properties, QoS};
use serde::Deserialize;
use tracing::info;

use super::template::Template;
use super::Job;
use crate::message::{Message, Stamp};

/// What rule actions run against (the broker implements it; the rule
/// engine does not know the broker): the lanes, the plugins for the
/// `plugin` action, and the publish pipeline for `republish`.
pub trait ActionContext: Send + Sync + 'static {
    fn rules(&self) -> &super::RuleEngine;
    fn plugins(&self) -> Option<&midge_plugin::PluginHost>;
    /// Publishes a rule's output message through the whole pipeline.
    fn republish(&self, msg: Arc<Message>);
    /// Puts a rule's output message into bridge `name`'s outbound buffer
    /// (its topic is the topic at the remote). Without bridges (the
    /// broker alone): an error, counted as a failed action.
    fn bridge(&self, name: &str, msg: Arc<Message>) -> Result<(), String> {
        drop(msg);
        Err(format!("bridge `{name}`: no bridges are running"))
    }
}

/// An action as written in the config (`actions = [{ type = "republish", ... }]`).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionConfig {
    /// Publish the output as a new message. `${field}` placeholders are
    /// filled from the output row; without `payload` the row is sent as JSON.
    Republish {
        topic: String,
        #[serde(default)]
        qos: u8,
        #[serde(default)]
        retain: bool,
        #[serde(default)]
        payload: Option<String>,
        #[serde(default)]
        user_properties: BTreeMap<String, String>,
        #[serde(default)]
        content_type: Option<String>,
        #[serde(default)]
        response_topic: Option<String>,
        #[serde(default)]
        correlation_data: Option<String>,
        #[serde(default)]
        message_expiry_interval: Option<u32>,
        #[serde(default)]
        payload_format_indicator: Option<u8>,
    },
    /// Log each output row (info level, target `midge::rules`).
    Log {},
    /// Hand the output (a one-row JSON array) to the named Wasm plugin's
    /// `on-rule-output`; the plugin must be enabled in `[plugins]`. A binary
    /// that is not UTF-8 crosses as `{"$binary": "<base64>"}` (see
    /// `midge_rules::Value`), so the plugin gets the exact bytes.
    Plugin { plugin: String },
    /// Send the output to the remote of the named `[[bridges]]` entry: the
    /// other fields are `republish`'s, `topic` is the topic at the remote
    /// (the bridge's `out` mappings do not apply). Buffered like the
    /// bridge's other messages (in the store with persistence on).
    Bridge {
        bridge: String,
        topic: String,
        #[serde(default)]
        qos: u8,
        #[serde(default)]
        retain: bool,
        #[serde(default)]
        payload: Option<String>,
        #[serde(default)]
        user_properties: BTreeMap<String, String>,
        #[serde(default)]
        content_type: Option<String>,
        #[serde(default)]
        response_topic: Option<String>,
        #[serde(default)]
        correlation_data: Option<String>,
        #[serde(default)]
        message_expiry_interval: Option<u32>,
        #[serde(default)]
        payload_format_indicator: Option<u8>,
    },
}

impl ActionConfig {
    /// A `bridge` action as its bridge's name and the `republish` that
    /// makes the same message; `None` for other actions.
    pub fn as_bridge(&self) -> Option<(&str, ActionConfig)> {
        match self {
            ActionConfig::Bridge {
                bridge,
                topic,
                qos,
                retain,
                payload,
                user_properties,
                content_type,
                response_topic,
                correlation_data,
                message_expiry_interval,
                payload_format_indicator,
            } => Some((
                bridge,
                ActionConfig::Republish {
                    topic: topic.clone(),
                    qos: *qos,
                    retain: *retain,
                    payload: payload.clone(),
                    user_properties: user_properties.clone(),
                    content_type: content_type.clone(),
                    response_topic: response_topic.clone(),
                    correlation_data: correlation_data.clone(),
                    message_expiry_interval: *message_expiry_interval,
                    payload_format_indicator: *payload_format_indicator,
                },
            )),
            _ => None,
        }
    }
}

/// A compiled action.
#[derive(Debug)]
pub enum Action {
    Republish(Box<Republish>),
    Log,
    Plugin {
        plugin: String,
    },
    /// The message a republish would make, for bridge `bridge`.
    Bridge {
        bridge: String,
        message: Box<Republish>,
    },
}

/// A compiled republish action.
#[derive(Debug)]
pub struct Republish {
    topic: Template,
    /// The topic when it has no placeholders (validated when built).
    topic_literal: Option<ByteStr>,
    qos: QoS,
    retain: bool,
    payload: Option<Template>,
    user_properties: Vec<(Template, Template)>,
    content_type: Option<Template>,
    response_topic: Option<Template>,
    correlation_data: Option<Template>,
    message_expiry_interval: Option<u32>,
    payload_format_indicator: Option<u8>,
}

fn tpl(field: &str, text: &str) -> Result<Template, String> {
    Template::parse(text).map_err(|e| format!("`{field}`: {e}"))
}

fn opt_tpl(field: &str, text: &Option<String>) -> Result<Option<Template>, String> {
    text.as_deref().map(|t| tpl(field, t)).transpose()
}

impl Action {
    /// Validates an action config.
    pub fn build(c: &ActionConfig) -> Result<Action, String> {
        match c {
            ActionConfig::Republish {
                topic: t,
                qos,
                retain,
                payload,
                user_properties,
                content_type,
                response_topic,
                correlation_data,
                message_expiry_interval,
                payload_format_indicator,
            } => {
                let qos = QoS::from_u8(*qos).ok_or("`qos` must be 0, 1 or 2")?;
                let topic_t = tpl("topic", t)?;
                if topic_t.is_literal() && !topic::valid_name(t) {
                    return Err(format!("`topic`: `{t}` is not a valid topic name"));
                }
                if payload_format_indicator.is_some_and(|p| p > 1) {
                    return Err("`payload_format_indicator` must be 0 or 1".into());
                }
                let user_properties = user_properties
                    .iter()
                    .map(|(k, v)| Ok((tpl("user_properties", k)?, tpl("user_properties", v)?)))
                    .collect::<Result<_, String>>()?;
                let topic_literal = topic_t.is_literal().then(|| ByteStr::from(t.as_str()));
                Ok(Action::Republish(Box::new(Republish {
                    topic_literal,
                    topic: topic_t,
                    qos,
                    retain: *retain,
                    payload: opt_tpl("payload", payload)?,
                    user_properties,
                    content_type: opt_tpl("content_type", content_type)?,
                    response_topic: opt_tpl("response_topic", response_topic)?,
                    correlation_data: opt_tpl("correlation_data", correlation_data)?,
                    message_expiry_interval: *message_expiry_interval,
                    payload_format_indicator: *payload_format_indicator,
                })))
            }
            ActionConfig::Bridge { bridge, .. } => {
                if bridge.trim().is_empty() {
                    return Err("`bridge` must name a bridge".into());
                }
                match c.as_bridge().map(|(_, r)| Action::build(&r)).transpose()? {
                    Some(Action::Republish(message)) => Ok(Action::Bridge {
                        bridge: bridge.clone(),
                        message,
                    }),
                    _ => Err("the message part did not build as a republish".into()),
                }
            }
            ActionConfig::Log {} => Ok(Action::Log),
            ActionConfig::Plugin { plugin } => {
                if plugin.trim().is_empty() {
                    return Err("`plugin` must name a plugin".into());
                }
                Ok(Action::Plugin {
                    plugin: plugin.clone(),
                })
            }
        }
    }
}

/// Serves one action lane: runs the actions of its outputs, in order, one
/// batch at a time. Ends when the task is aborted (server shutdown).
pub async fn run_actions<C: ActionContext>(ctx: Arc<C>, lane: usize) {
    let mut batch = Vec::new();
    loop {
        ctx.rules().lanes.take(lane, &mut batch).await;
        let n = batch.len();
        // One clock reading per batch for the republished messages (read
        // again after a plugin action, which may have taken a while).
        let mut at = now();
        for job in batch.drain(..) {
            let r = &job.set.rules[job.rule];
            for a in &r.actions {
                let timer = ActionTimer::start(&r.metrics);
                let ok = match a {
                    Action::Plugin { plugin } => match ctx.plugins() {
                        Some(host) => {
                            let rows = serde_json::to_string(&[&job.row])
                                .unwrap_or_else(|_| "[]".to_owned());
                            let done = host
                                .on_rule_output(plugin, r.rule.id(), &rows)
                                .await
                                .map_err(|e| e.to_string());
                            at = now();
                            done
                        }
                        None => Err(format!("plugin `{plugin}` unavailable: no plugins loaded")),
                    },
                    sync => run_one(&*ctx, sync, &job, at),
                };
                timer.finish(r.rule.id(), ok);
            }
        }
        ctx.rules().lanes.done(lane, n);
    }
}

/// A clock reading for [`Message::new_at`].
pub(super) fn now() -> Stamp {
    (std::time::Instant::now(), crate::message::now_ms())
}

/// A `republish`, `bridge` or `log` action; the messages made are stamped `at`.
fn run_one<C: ActionContext>(ctx: &C, a: &Action, job: &Job, at: Stamp) -> Result<(), String> {
    let r = &job.set.rules[job.rule];
    match a {
        Action::Republish(rp) => {
            ctx.republish(Arc::new(message(rp, job, at)?));
            Ok(())
        }
        Action::Bridge { bridge, message: m } => ctx.bridge(bridge, Arc::new(message(m, job, at)?)),
        Action::Log => {
            let output = serde_json::to_string(&job.row).unwrap_or_default();
            info!(target: "midge::rules", rule = r.rule.id(), %output, "rule output");
            Ok(())
        }
        Action::Plugin { plugin } => Err(format!("plugin `{plugin}`: not a synchronous action")),
    }
}

/// Counts one action run and its outcome; times one run in `TIME_EVERY`.
struct ActionTimer<'a> {
    metrics: &'a super::RuleMetrics,
    started: Option<std::time::Instant>,
}

impl<'a> ActionTimer<'a> {
    fn start(metrics: &'a super::RuleMetrics) -> Self {
        let n = metrics.action_runs.fetch_add(1, Ordering::Relaxed);
        ActionTimer {
            metrics,
            started: n
                .is_multiple_of(super::TIME_EVERY)
                .then(std::time::Instant::now),
        }
    }

    fn finish(self, rule: &str, ok: Result<(), String>) {
        let m = self.metrics;
        if let Some(t) = self.started {
            m.action_nanos
                .fetch_add(super::nanos_since(t) * super::TIME_EVERY, Ordering::Relaxed);
        }
        match ok {
            Ok(()) => m.actions_success.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::debug!(rule, error = %e, "action failed");
                m.actions_failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// The message a `republish` (or `bridge`) action makes of an output row.
fn message(rp: &Republish, job: &Job, at: Stamp) -> Result<Message, String> {
    let row = &job.row;
    let topic = match &rp.topic_literal {
        Some(t) => t.clone(),
        None => {
            let topic = rp.topic.render(row).map_err(|e| format!("topic: {e}"))?;
            if !topic::valid_name(&topic) {
                return Err(format!(
                    "rendered topic `{topic}` is not a valid topic name"
                ));
            }
            ByteStr::from(topic)
        }
    };
    // `${payload}` of a binary message is its bytes; without a template the
    // row goes as JSON (binaries that are not UTF-8 tagged, never altered).
    let payload = match &rp.payload {
        Some(t) => t.render_bytes(row),
        None => Bytes::from(serde_json::to_vec(row).map_err(|e| e.to_string())?),
    };
    let any_props = !rp.user_properties.is_empty()
        || rp.content_type.is_some()
        || rp.response_topic.is_some()
        || rp.correlation_data.is_some()
        || rp.message_expiry_interval.is_some()
        || rp.payload_format_indicator.is_some();
    let mut props = Properties::default();
    // Properties allocate on the first write: none when the action sets none.
    if any_props {
        let p = &mut *props;
        let text = |field: &str, t: &Template| {
            t.render(row)
                .map(ByteStr::from)
                .map_err(|e| format!("{field}: {e}"))
        };
        for (k, v) in &rp.user_properties {
            p.user_properties
                .push((text("user_properties", k)?, text("user_properties", v)?));
        }
        p.content_type = match &rp.content_type {
            Some(t) => Some(text("content_type", t)?),
            None => None,
        };
        p.response_topic = match &rp.response_topic {
            Some(t) => Some(text("response_topic", t)?),
            None => None,
        };
        p.correlation_data = rp.correlation_data.as_ref().map(|t| t.render_bytes(row));
        p.message_expiry_interval = rp.message_expiry_interval;
        p.payload_format_indicator = rp.payload_format_indicator;
    }
    let mut msg = Message::new_at(topic, payload, rp.qos, rp.retain, props, at);
    msg.rule_depth = job.depth + 1;
    Ok(msg)
}
