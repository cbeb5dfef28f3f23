//! One plugin in a host of its own, with no broker: what `midge plugin run`
//! and `midge plugin test` feed messages, CONNECTs, rule rows and function
//! calls to. The plugin is loaded as the broker would load it (same
//! limits, grants, output checks), kv grants get a temporary store, log
//! records and messages published through the `publish` capability are
//! captured per call instead of going anywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use midge_plugin::types as pt;
use midge_plugin::{
    BrokerHandle, LogLevel, LogSink, OutputLimits, PluginConfig, PluginError, PluginHost,
    PluginsConfig, PublishVerdict, Services,
};
use parking_lot::Mutex;
use serde::Deserialize;

/// What to hand the plugin: one hook call.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// A PUBLISH through `on-publish`.
    Publish(PublishInput),
    /// A CONNECT through `authenticate`.
    Connect(ConnectInput),
    /// A publish or subscribe through `authorize`.
    Authorize(AuthorizeInput),
    /// A rule's rows through `on-rule-output`.
    RuleOutput(RuleOutputInput),
    /// A rule function call.
    Function(FunctionInput),
}

/// A message from a client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishInput {
    pub topic: String,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    /// MQTT 5.0 properties.
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub payload_is_utf8: bool,
    #[serde(default)]
    pub user_properties: Vec<(String, String)>,
    /// The publisher.
    #[serde(default = "default_client")]
    pub client_id: String,
    #[serde(default)]
    pub username: Option<String>,
}

/// A CONNECT.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectInput {
    #[serde(default = "default_client")]
    pub client_id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// MQTT 5.0 enhanced authentication.
    #[serde(default)]
    pub auth_method: Option<String>,
    #[serde(default)]
    pub auth_data: Option<String>,
    /// 4 (3.1.1) or 5.
    #[serde(default = "five")]
    pub protocol: u8,
}

/// A publish or subscribe to authorize.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeInput {
    /// "publish" or "subscribe".
    pub action: String,
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
    #[serde(default = "default_client")]
    pub client_id: String,
    #[serde(default)]
    pub username: Option<String>,
}

/// Rows of a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleOutputInput {
    pub rule: String,
    /// A JSON array of objects, as the rule engine hands them.
    pub rows: serde_json::Value,
}

/// A rule function call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionInput {
    pub name: String,
    #[serde(default)]
    pub args: Vec<serde_json::Value>,
}

fn default_client() -> String {
    "c_test".into()
}

fn five() -> u8 {
    5
}

/// What the plugin answered, for printing and comparing.
#[derive(Debug, Clone)]
pub enum Answer {
    /// on-publish: pass.
    Pass,
    /// on-publish: a changed message.
    Modify(pt::Message),
    /// on-publish: drop.
    Drop,
    /// on-publish / authenticate: refused with this reason code.
    Deny(u8),
    /// authenticate: accepted.
    Allow { superuser: bool },
    /// authenticate: enhanced authentication continues with this data.
    Continue(Vec<u8>),
    /// authenticate / authorize: no opinion.
    Ignore,
    /// authorize: allowed / denied.
    Authz(bool),
    /// on-rule-output: taken.
    Ok,
    /// A rule function's result.
    Value(serde_json::Value),
    /// The hook is not in the manifest (or, for on-publish, no filter
    /// matches): the broker would not call it.
    NotCalled(&'static str),
    /// The plugin reported an error, or the call failed (trap, deadline,
    /// invalid output, ...).
    Failed(String),
}

/// One call: the answer, the log records and published messages it
/// produced, and how long it took.
#[derive(Debug)]
pub struct Outcome {
    pub answer: Answer,
    pub log: Vec<(LogLevel, String)>,
    pub published: Vec<pt::Message>,
    pub took: Duration,
}

#[derive(Default)]
struct Capture {
    log: Mutex<Vec<(LogLevel, String)>>,
    published: Mutex<Vec<pt::Message>>,
}

struct Sink(Arc<Capture>);

impl LogSink for Sink {
    fn log(&self, _plugin: &str, level: LogLevel, message: &str) {
        self.0.log.lock().push((level, message.to_string()));
    }
}

impl BrokerHandle for Sink {
    fn publish(&self, _plugin: &str, message: pt::Message) -> Result<(), String> {
        self.0.published.lock().push(message);
        Ok(())
    }
}

/// The plugin, loaded.
pub struct Harness {
    host: PluginHost,
    name: String,
    capture: Arc<Capture>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("plugin", &self.name)
            .finish()
    }
}

impl Harness {
    /// Loads `plugin` (instantiates it and runs `init` with its config) as
    /// the broker would, with `limits` for its output. Log records of
    /// `init` are returned.
    pub async fn load(
        plugin: PluginConfig,
        limits: OutputLimits,
    ) -> Result<(Harness, Vec<(LogLevel, String)>), PluginError> {
        let capture = Arc::new(Capture::default());
        let services = Services {
            broker: Some(Arc::new(Sink(capture.clone()))),
            log: Some(Arc::new(Sink(capture.clone()))),
            limits,
            ..Services::default()
        };
        let name = plugin.name.clone();
        let config = PluginsConfig {
            plugins: vec![plugin],
            ..PluginsConfig::default()
        };
        let host = PluginHost::load_sandboxed(&config, services).await?;
        let log = std::mem::take(&mut *capture.log.lock());
        Ok((
            Harness {
                host,
                name,
                capture,
            },
            log,
        ))
    }

    /// The plugin's manifest.
    pub fn manifest(&self) -> Option<pt::Manifest> {
        self.host.manifest(&self.name)
    }

    /// Counters of the plugin (failures by kind).
    pub fn metrics(&self) -> Option<midge_plugin::PluginMetrics> {
        self.host.plugin_metrics(&self.name)
    }

    /// Hands `input` to the plugin.
    pub async fn call(&self, input: &Input) -> Outcome {
        let started = Instant::now();
        let answer = self.answer(input).await;
        let took = started.elapsed();
        Outcome {
            answer,
            log: std::mem::take(&mut *self.capture.log.lock()),
            published: std::mem::take(&mut *self.capture.published.lock()),
            took,
        }
    }

    async fn answer(&self, input: &Input) -> Answer {
        let h = &self.host;
        let Some(manifest) = self.manifest() else {
            return Answer::Failed("the plugin is not loaded".into());
        };
        let has = |hook: pt::HookSet| manifest.hooks.contains(hook);
        let failed =
            |failures: &[PluginError]| failures.first().map(|e| Answer::Failed(e.to_string()));
        match input {
            Input::Publish(p) => {
                if !has(pt::HookSet::ON_PUBLISH) {
                    return Answer::NotCalled("the manifest names no on-publish hook");
                }
                if !h.wants_publish(&p.topic) {
                    return Answer::NotCalled(
                        "the topic matches none of the manifest's on-publish filters",
                    );
                }
                let message = publish_message(p);
                let client = client(&p.client_id, p.username.as_deref());
                let out = h.on_publish(&message, Some(&client)).await;
                if let Some(f) = failed(&out.failures) {
                    return f;
                }
                match out.decision {
                    PublishVerdict::Pass => Answer::Pass,
                    PublishVerdict::Modified(m) => Answer::Modify(m),
                    PublishVerdict::Drop => Answer::Drop,
                    PublishVerdict::Deny(rc) => Answer::Deny(rc),
                }
            }
            Input::Connect(c) => {
                if !has(pt::HookSet::AUTHENTICATE) {
                    return Answer::NotCalled("the manifest names no authenticate hook");
                }
                let req = pt::AuthRequest {
                    client_id: c.client_id.clone(),
                    username: c.username.clone(),
                    password: c.password.as_ref().map(|p| p.as_bytes().to_vec()),
                    peer_address: "127.0.0.1:50000".into(),
                    protocol_version: if c.protocol == 4 {
                        pt::ProtocolVersion::V311
                    } else {
                        pt::ProtocolVersion::V5
                    },
                    auth_method: c.auth_method.clone(),
                    auth_data: c.auth_data.as_ref().map(|d| d.as_bytes().to_vec()),
                    auth_state: None,
                };
                let out = h.authenticate(&req).await;
                if let Some(f) = failed(&out.failures) {
                    return f;
                }
                match out.decision {
                    pt::AuthDecision::Allow(a) => Answer::Allow {
                        superuser: a.superuser,
                    },
                    pt::AuthDecision::Deny(rc) => Answer::Deny(rc),
                    pt::AuthDecision::ContinueAuth(c) => Answer::Continue(c.data),
                    pt::AuthDecision::Ignore => Answer::Ignore,
                }
            }
            Input::Authorize(a) => {
                if !has(pt::HookSet::AUTHORIZE) {
                    return Answer::NotCalled("the manifest names no authorize hook");
                }
                let action = match a.action.as_str() {
                    "publish" => pt::Action::Publish,
                    "subscribe" => pt::Action::Subscribe,
                    other => {
                        return Answer::Failed(format!(
                            "action {other:?}: expected \"publish\" or \"subscribe\""
                        ))
                    }
                };
                let req = pt::AuthzRequest {
                    client: client(&a.client_id, a.username.as_deref()),
                    action,
                    topic: a.topic.clone(),
                    qos: qos(a.qos),
                    retain: false,
                };
                let out = h.authorize(&req).await;
                if let Some(f) = failed(&out.failures) {
                    return f;
                }
                match out.decision {
                    pt::AuthzDecision::Allow => Answer::Authz(true),
                    pt::AuthzDecision::Deny => Answer::Authz(false),
                    pt::AuthzDecision::Ignore => Answer::Ignore,
                }
            }
            Input::RuleOutput(r) => {
                if !has(pt::HookSet::ON_RULE_OUTPUT) {
                    return Answer::NotCalled("the manifest names no on-rule-output hook");
                }
                match h
                    .on_rule_output(&self.name, &r.rule, &r.rows.to_string())
                    .await
                {
                    Ok(()) => Answer::Ok,
                    Err(e) => Answer::Failed(e.to_string()),
                }
            }
            Input::Function(f) => {
                if !manifest.functions.iter().any(|g| g.name == f.name) {
                    return Answer::NotCalled("the manifest offers no function of that name");
                }
                let args: Vec<String> = f.args.iter().map(|a| a.to_string()).collect();
                match h.call_function(&f.name, &args).await {
                    // The host has checked it is JSON.
                    Ok(text) => match serde_json::from_str(&text) {
                        Ok(v) => Answer::Value(v),
                        Err(e) => Answer::Failed(format!("result {text:?}: {e}")),
                    },
                    Err(e) => Answer::Failed(e.to_string()),
                }
            }
        }
    }
}

fn qos(q: u8) -> pt::Qos {
    match q {
        0 => pt::Qos::AtMostOnce,
        1 => pt::Qos::AtLeastOnce,
        _ => pt::Qos::ExactlyOnce,
    }
}

fn client(id: &str, username: Option<&str>) -> pt::ClientInfo {
    pt::ClientInfo {
        client_id: id.to_string(),
        username: username.map(str::to_string),
        peer_address: "127.0.0.1:50000".into(),
        protocol_version: pt::ProtocolVersion::V5,
        superuser: false,
        attributes: Vec::new(),
    }
}

fn publish_message(p: &PublishInput) -> pt::Message {
    let mut m = pt::Message::new(p.topic.clone(), p.payload.clone().into_bytes());
    m.qos = qos(p.qos);
    m.retain = p.retain;
    m.properties.content_type = p.content_type.clone();
    m.properties.payload_is_utf8 = p.payload_is_utf8;
    m.properties.user_properties = p.user_properties.clone();
    m
}

/// `payload` as text when it is UTF-8, else as hex.
pub fn shown_payload(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(s) => format!("{s:?}"),
        Err(_) => {
            let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Pass => f.write_str("pass"),
            Answer::Modify(m) => {
                write!(
                    f,
                    "modify: topic {:?}, payload {} ({} bytes), qos {}, retain {}",
                    m.topic,
                    shown_payload(&m.payload),
                    m.payload.len(),
                    m.qos as u8,
                    m.retain
                )?;
                let p = &m.properties;
                if p.payload_is_utf8 {
                    f.write_str(", payload-format utf-8")?;
                }
                if let Some(ct) = &p.content_type {
                    write!(f, ", content type {ct:?}")?;
                }
                if let Some(rt) = &p.response_topic {
                    write!(f, ", response topic {rt:?}")?;
                }
                for (k, v) in &p.user_properties {
                    write!(f, ", user property {k:?}={v:?}")?;
                }
                Ok(())
            }
            Answer::Drop => f.write_str("drop"),
            Answer::Deny(rc) => write!(f, "deny 0x{rc:02x}"),
            Answer::Allow { superuser } => {
                write!(f, "allow{}", if *superuser { " (superuser)" } else { "" })
            }
            Answer::Continue(d) => write!(f, "continue-auth, data {}", shown_payload(d)),
            Answer::Ignore => f.write_str("ignore"),
            Answer::Authz(true) => f.write_str("allow"),
            Answer::Authz(false) => f.write_str("deny"),
            Answer::Ok => f.write_str("ok"),
            Answer::Value(v) => write!(f, "{v}"),
            Answer::NotCalled(why) => write!(f, "not called: {why}"),
            Answer::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// A log level as printed.
pub fn level_name(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Trace => "TRACE",
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}
