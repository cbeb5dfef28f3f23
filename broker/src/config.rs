//! Configuration: TOML -> serde types (unknown keys refused) -> `validate()`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use crate::logging::LogConfig;
pub use crate::session::QueueFullPolicy;

pub mod bridges;

/// Errors loading or validating a configuration, naming the file and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {}", errors.join("; "))]
    Rules { path: String, errors: Vec<String> },
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        path: String,
        field: &'static str,
        message: String,
    },
    /// A rule error placed in the file (see [`crate::rules::in_file`]):
    /// `file:line:column: rule ...`, as `midge check` shows TOML errors.
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: plugin `{plugin}`: path: {message}")]
    Plugin {
        path: String,
        plugin: String,
        message: String,
    },
    /// A problem of a key in a list (`bridges[0].remote`).
    #[error("{path}: field `{field}`: {message}")]
    Key {
        path: String,
        field: String,
        message: String,
    },
    /// Several of the above, one per line.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Multiple(Vec<ConfigError>),
}

/// The whole broker configuration (one TOML file).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listeners: Listeners,
    pub mqtt: MqttConfig,
    pub log: LogConfig,
    /// `[[rules]]`: SQL rules and their actions.
    pub rules: Vec<crate::rules::RuleConfig>,
    /// `[plugins]`: Wasm plugins, their grants and limits.
    pub plugins: midge_plugin::PluginsConfig,
    /// `[persistence]`: durable sessions and retained messages.
    pub persistence: crate::store::PersistenceConfig,
    /// `[limits]`: connection and per-client limits.
    pub limits: LimitsConfig,
    /// `[admin]`: the admin HTTP API and Prometheus metrics.
    pub admin: AdminConfig,
    /// `[sys]`: `$SYS/brokers/...` topics.
    pub sys: SysConfig,
    /// `[cluster]`: nodes acting as one broker on NATS JetStream (off by default).
    pub cluster: midge_cluster::ClusterConfig,
    /// `[[bridges]]`: connections to other brokers (the bridge/ module).
    pub bridges: Vec<bridges::BridgeConfig>,
}

/// Where the broker listens. `None` disables a listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// MQTT over TCP. Listen addresses are `IP:port` or `host:port` (a
    /// host name is resolved when the file is read; see [`resolve_listen`]).
    #[serde(deserialize_with = "listen_addr")]
    pub mqtt: Option<SocketAddr>,
    /// MQTT over WebSocket.
    #[serde(deserialize_with = "listen_addr")]
    pub ws: Option<SocketAddr>,
    /// HTTP paths where WebSocket upgrades are accepted (`ws` and `wss`).
    /// A single string is read as a list of one (the key's old form,
    /// `ws_path`, still works). Default `["/mqtt", "/"]`: MQTT.js and
    /// Paho use `/mqtt`, several CLIs and Mosquitto's clients `/`.
    #[serde(alias = "ws_path", deserialize_with = "one_or_many")]
    pub ws_paths: Vec<String>,
    /// MQTT over TLS (needs `[listeners.tls]`).
    #[serde(deserialize_with = "listen_addr")]
    pub mqtts: Option<SocketAddr>,
    /// MQTT over secure WebSocket, same paths as `ws_paths` (needs `[listeners.tls]`).
    #[serde(deserialize_with = "listen_addr")]
    pub wss: Option<SocketAddr>,
    /// Certificates for `mqtts` and `wss`.
    pub tls: Option<TlsConfig>,
}

/// `[listeners.tls]`: server certificate and optional client verification.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file of CA certificates that client certificates are verified
    /// against; set it to turn on mTLS.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients without a certificate (true), or
    /// verify only those that present one (false).
    #[serde(default = "yes")]
    pub require_client_cert: bool,
    /// Use the client certificate's subject common name as the username
    /// (replacing any username in CONNECT) on `mqtts` and `wss`. A client
    /// without a certificate (`require_client_cert = false`), or whose
    /// certificate has no CN, connects with no username. Needs `client_ca`.
    #[serde(default)]
    pub cn_as_username: bool,
}

fn yes() -> bool {
    true
}

/// A listen address: `IP:port`, `[IPv6]:port` or `host:port`. A host name
/// is resolved now, and the broker listens on the first address it
/// resolves to, IPv4 first (`localhost:1883` is 127.0.0.1:1883).
pub fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}`: expected HOST:PORT or IP:PORT"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{text}`: `{port}` is not a port number"))?;
    if host.is_empty() {
        return Err(format!(
            "`{text}`: no host (0.0.0.0:{port} listens on every address)"
        ));
    }
    let found: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("`{text}`: cannot resolve `{host}`: {e}"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("`{text}`: `{host}` resolves to no address"))
}

fn listen_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    resolve_listen(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A string or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// `[limits]`: limits on connections and on each client. 0 = no limit.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections open at once, all listeners together.
    pub max_connections: usize,
    /// Connections open at once per listener, by listener name
    /// (`mqtt`, `ws`, `mqtts`, `wss`), e.g. `{ mqtt = 10000, ws = 500 }`.
    pub max_listener_connections: BTreeMap<String, usize>,
    /// New connections accepted per second, all listeners together (a burst
    /// of one second's worth is allowed).
    pub max_connection_rate: u32,
    /// Seconds a new connection has to send CONNECT before it is closed
    /// (TLS and WebSocket handshakes included).
    pub connect_timeout: u32,
    /// PUBLISH packets per second one client may send (5.0: DISCONNECT 0x96 beyond it).
    pub max_publish_rate: u32,
    /// Payload bytes per second one client may publish (5.0: DISCONNECT 0x97 beyond it).
    pub max_publish_bytes_rate: u64,
    /// Subscriptions one client may hold (5.0: SUBACK 0x97 for the excess).
    pub max_subscriptions: usize,
    /// Seconds without traffic after which a connection is parked: its
    /// loop's memory is freed until the client sends, a message is due to
    /// it, it is kicked or its keep-alive passes (server/park.rs). 0 = never.
    pub park_after: u32,
    /// true: clients no authenticator accepted are let in (a client an
    /// auth plugin refuses is still refused). false: only clients an
    /// authenticating plugin accepted get in (others: CONNACK 0x87 / 3.1.1
    /// code 5, username or not), and the broker refuses to start without
    /// such a plugin (see `crate::auth`).
    pub allow_anonymous: bool,
}

/// `[admin]`: HTTP API (JSON) and Prometheus `/metrics`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the API (`--no-admin` turns it off too).
    pub enabled: bool,
    /// Listen address (`IP:port` or `host:port`).
    #[serde(deserialize_with = "listen_addr")]
    pub listen: Option<SocketAddr>,
    /// Bearer token required on every request except `/metrics` when
    /// `metrics_public`. Unset: `MIDGE_ADMIN_TOKEN` from the environment,
    /// or a random token printed at start-up.
    pub token: Option<String>,
    /// Serve `/metrics` without the token (for Prometheus scrapers).
    pub metrics_public: bool,
    /// JSON file keeping the rules created, changed or deleted through the
    /// API over the config's `[[rules]]` (they survive reloads and
    /// restarts). Unset: `api-rules.json` in `persistence.data_dir`.
    pub api_rules_file: Option<PathBuf>,
}

/// `[sys]`: broker status under `$SYS/brokers/<node>/...`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between updates; 0 turns `$SYS` off.
    pub interval: u32,
    /// Publish `$SYS/brokers/<node>/clients/<id>/connected|disconnected` notices.
    pub client_notices: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 0,
            max_listener_connections: BTreeMap::new(),
            max_connection_rate: 0,
            connect_timeout: 10,
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
            max_subscriptions: 0,
            park_after: 5,
            allow_anonymous: true,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 18083))),
            token: None,
            metrics_public: false,
            api_rules_file: None,
        }
    }
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig {
            interval: 10,
            client_notices: true,
        }
    }
}

/// Protocol limits and policies.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Largest keep alive (seconds) a client may use; a 5.0 client asking for
    /// more, or for 0, is told this value as Server Keep Alive. 0 = no limit.
    pub max_keep_alive: u16,
    /// Largest packet (bytes) the broker accepts; announced in CONNACK.
    pub max_packet_size: u32,
    /// How many unacknowledged QoS 1/2 publishes a client may send us (Receive Maximum).
    pub receive_maximum: u16,
    /// Upper bound on QoS 1/2 messages in flight to one client (further capped by its Receive Maximum).
    pub max_inflight: u16,
    /// Messages queued per session (online backlog or offline) before the queue-full policy applies.
    pub max_queued_messages: usize,
    /// Payload bytes queued per session before the queue-full policy applies. 0 = no byte limit.
    pub max_queued_bytes: usize,
    /// What to do when a session queue is full: "drop_new" or "drop_oldest".
    pub queue_full_policy: QueueFullPolicy,
    /// Topic Alias Maximum announced to clients (aliases they may send us). 0 disables.
    pub topic_alias_maximum: u16,
    /// Largest session expiry interval (seconds) granted.
    pub max_session_expiry: u32,
    /// Highest QoS the broker accepts and grants (0, 1 or 2).
    pub max_qos: u8,
    pub retain_available: bool,
    /// Most retained topics clients may keep (the broker's `$SYS` topics
    /// not counted). When full, a retained message on a new topic is not
    /// kept (still delivered), counted in `midge_retained_refused_total`
    /// and logged. 0 = no limit.
    pub max_retained: usize,
    /// Most bytes (topic + payload) of retained messages clients may keep;
    /// past it, as for `max_retained` (a replacement that does not fit also
    /// drops the message it would replace). 0 = no limit.
    pub max_retained_bytes: usize,
    pub wildcard_subscriptions: bool,
    pub shared_subscriptions: bool,
    pub subscription_identifiers: bool,
    /// Longest client identifier accepted.
    pub max_client_id_len: usize,
    /// Seconds between resends of unacknowledged QoS 1/2 messages on a live
    /// connection (0 = only on reconnect, as MQTT 5.0 requires).
    pub retry_interval: u32,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            mqtt: Some(SocketAddr::from(([0, 0, 0, 0], 1883))),
            ws: Some(SocketAddr::from(([0, 0, 0, 0], 8083))),
            ws_paths: vec!["/mqtt".into(), "/".into()],
            mqtts: None,
            wss: None,
            tls: None,
        }
    }
}

impl MqttConfig {
    /// What the server offers every client, for the session core's
    /// decisions (CONNECT, SUBSCRIBE).
    pub fn offer(&self) -> crate::session::proto::Offer {
        crate::session::proto::Offer {
            max_client_id_len: self.max_client_id_len,
            max_qos: self.max_qos,
            retain_available: self.retain_available,
            max_keep_alive: self.max_keep_alive,
            max_session_expiry: self.max_session_expiry,
            max_inflight: self.max_inflight,
            receive_maximum: self.receive_maximum,
            max_packet_size: self.max_packet_size,
            topic_alias_maximum: self.topic_alias_maximum,
            wildcard_subscriptions: self.wildcard_subscriptions,
            subscription_identifiers: self.subscription_identifiers,
            shared_subscriptions: self.shared_subscriptions,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_keep_alive: 65535,
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            max_inflight: 1024,
            max_queued_messages: 10_000,
            max_queued_bytes: 0,
            queue_full_policy: QueueFullPolicy::DropNew,
            topic_alias_maximum: 64,
            max_session_expiry: u32::MAX,
            max_qos: 2,
            retain_available: true,
            max_retained: 0,
            max_retained_bytes: 0,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            max_client_id_len: 65535,
            retry_interval: 0,
        }
    }
}

/// `midge serve` flags that win over the file, applied again to every
/// reloaded file (so a flag is not mistaken for a changed setting).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub ws_listen: Option<SocketAddr>,
    pub no_ws: bool,
    pub admin_listen: Option<SocketAddr>,
    pub no_admin: bool,
    pub log_json: bool,
    pub persist: bool,
    pub data_dir: Option<PathBuf>,
    /// `--node-name`: `[cluster] node`.
    pub node_name: Option<String>,
    /// `--cluster-nats URL,...`: turns `[cluster]` on with these servers.
    pub cluster_nats: Option<Vec<String>>,
}

static OVERRIDES: std::sync::OnceLock<Overrides> = std::sync::OnceLock::new();

impl Overrides {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(a) = self.listen {
            cfg.listeners.mqtt = Some(a);
        }
        if let Some(a) = self.ws_listen {
            cfg.listeners.ws = Some(a);
        }
        if self.no_ws {
            cfg.listeners.ws = None;
        }
        if let Some(a) = self.admin_listen {
            cfg.admin.enabled = true;
            cfg.admin.listen = Some(a);
        }
        if self.no_admin {
            cfg.admin.enabled = false;
        }
        if self.log_json {
            cfg.log.json = true;
        }
        if self.persist {
            cfg.persistence.enabled = true;
        }
        if let Some(d) = &self.data_dir {
            cfg.persistence.data_dir = d.clone();
        }
        if let Some(n) = &self.node_name {
            cfg.cluster.node = Some(n.clone());
        }
        if let Some(urls) = &self.cluster_nats {
            cfg.cluster.enabled = true;
            cfg.cluster.nats = urls.clone();
        }
    }

    /// Makes these the process's overrides, for [`Config::load_effective`].
    pub fn install(self) {
        let _ = OVERRIDES.set(self);
    }
}

/// `errs` with each rule error placed in `text`, the TOML file the rules
/// came from: `file:line:column: rule r2: line 4, column 9 of its SQL: ...`
/// (see [`crate::rules::in_file`]). Other errors are left as they are.
pub fn place_rule_errors(errs: Vec<ConfigError>, text: &str) -> Vec<ConfigError> {
    let mut file = crate::rules::in_file::RulesInFile::read(text);
    errs.into_iter()
        .map(|e| match e {
            ConfigError::Rules { path, errors } if errors.len() == 1 => {
                match file.place(&errors[0]) {
                    Some(p) => ConfigError::At {
                        path,
                        line: p.line,
                        column: p.column,
                        message: p.message,
                    },
                    None => ConfigError::Rules { path, errors },
                }
            }
            e => e,
        })
        .collect()
}

impl Config {
    /// The admin API's rules file (`[admin] api_rules_file`, else
    /// `api-rules.json` in `persistence.data_dir`).
    pub fn api_rules_path(&self) -> PathBuf {
        match &self.admin.api_rules_file {
            Some(p) => p.clone(),
            None => self
                .persistence
                .data_dir
                .join(crate::rules::overlay::DEFAULT_FILE),
        }
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::parse(&text, &shown)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config = Config::parse_unvalidated(text, origin)?;
        let mut errs = config.resolve_builtins(origin);
        errs.extend(place_rule_errors(config.problems(origin), text));
        match errs.len() {
            0 => Ok(config),
            1 => Err(errs.remove(0)),
            _ => Err(ConfigError::Multiple(errs)),
        }
    }

    /// Replaces each `path = "builtin:NAME"` of `[[plugins.plugin]]` by
    /// the shipped component's file ([`crate::builtin`]); one that cannot
    /// be found is an error (for a disabled entry the path is left as is).
    pub fn resolve_builtins(&mut self, origin: &str) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        for p in &mut self.plugins.plugins {
            match crate::builtin::resolve(&p.path) {
                Ok(Some(file)) => p.path = file,
                Ok(None) => {}
                Err(_) if !p.enabled => {}
                Err(message) => errs.push(ConfigError::Plugin {
                    path: origin.to_string(),
                    plugin: p.name.clone(),
                    message,
                }),
            }
        }
        errs
    }

    /// [`Config::load`] with the process's command-line overrides applied
    /// (what a reload compares with the running configuration).
    pub fn load_effective(path: &Path) -> Result<Config, ConfigError> {
        let mut c = Config::load(path)?;
        if let Some(o) = OVERRIDES.get() {
            o.apply(&mut c);
        }
        Ok(c)
    }

    fn parse_unvalidated(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Checks values serde cannot.
    /// Every error is reported (`midge check` lists them all).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let mut errs = self.problems(origin);
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(ConfigError::Multiple(errs)),
        }
    }

    /// Every problem `validate` finds, in file order.
    pub fn problems(&self, origin: &str) -> Vec<ConfigError> {
        let errs = std::cell::RefCell::new(Vec::new());
        let invalid = |field, message: &str| {
            errs.borrow_mut().push(ConfigError::Invalid {
                path: origin.to_string(),
                field,
                message: message.to_string(),
            })
        };
        let m = &self.mqtt;
        if m.max_packet_size < 64 {
            invalid("mqtt.max_packet_size", "must be at least 64 bytes");
        }
        if m.max_packet_size > 268_435_460 {
            invalid(
                "mqtt.max_packet_size",
                "must be at most 268435460 (the MQTT limit)",
            );
        }
        if m.receive_maximum == 0 {
            invalid("mqtt.receive_maximum", "must be at least 1");
        }
        if m.max_inflight == 0 {
            invalid("mqtt.max_inflight", "must be at least 1");
        }
        if m.max_queued_messages == 0 {
            invalid("mqtt.max_queued_messages", "must be at least 1");
        }
        if m.max_qos > 2 {
            invalid("mqtt.max_qos", "must be 0, 1 or 2");
        }
        if m.max_client_id_len < 23 {
            invalid(
                "mqtt.max_client_id_len",
                "must be at least 23 (the MQTT minimum)",
            );
        }
        if self.listeners.ws_paths.is_empty() {
            invalid("listeners.ws_paths", "must name at least one path");
        }
        for p in &self.listeners.ws_paths {
            if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
                invalid(
                    "listeners.ws_paths",
                    &format!("`{p}`: a path starts with '/' and has no '?', '#' or space"),
                );
            }
        }
        let l = &self.listeners;
        if l.mqtt.is_none() && l.ws.is_none() && l.mqtts.is_none() && l.wss.is_none() {
            invalid(
                "listeners",
                "at least one of `mqtt`, `ws`, `mqtts` and `wss` must be set",
            );
        }
        if (l.mqtts.is_some() || l.wss.is_some()) && l.tls.is_none() {
            invalid(
                "listeners.tls",
                "must be set (cert and key) when `mqtts` or `wss` is",
            );
        }
        if let Some(t) = &l.tls {
            if t.cn_as_username && t.client_ca.is_none() {
                invalid(
                    "listeners.tls.cn_as_username",
                    "needs `client_ca` (the CN is taken from a verified client certificate)",
                );
            }
        }
        for name in self.limits.max_listener_connections.keys() {
            if !["mqtt", "ws", "mqtts", "wss"].contains(&name.as_str()) {
                invalid(
                    "limits.max_listener_connections",
                    &format!("unknown listener `{name}` (expected mqtt, ws, mqtts or wss)"),
                );
            }
        }
        if let Some(e) = crate::auth::config_problem(self.limits.allow_anonymous, &self.plugins) {
            invalid("limits.allow_anonymous", &e);
        }
        if self.limits.connect_timeout == 0 {
            invalid("limits.connect_timeout", "must be at least 1 second");
        }
        if let Err(e) = self.log.filter() {
            invalid("log", &e);
        }
        if let Some(t) = &self.admin.token {
            if t.len() < 8 {
                invalid("admin.token", "must be at least 8 characters");
            }
        }
        if self
            .admin
            .api_rules_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            invalid("admin.api_rules_file", "must not be empty");
        }
        let p = &self.persistence;
        if p.enabled {
            if p.backend == crate::store::BackendKind::Postgres && p.postgres_url.is_none() {
                invalid(
                    "persistence.postgres_url",
                    "must be set when persistence.backend = \"postgres\"",
                );
            }
            if p.backend == crate::store::BackendKind::Sled && p.data_dir.as_os_str().is_empty() {
                invalid("persistence.data_dir", "must not be empty");
            }
        }
        if p.sync == crate::store::SyncPolicy::Interval && p.sync_interval_ms == 0 {
            invalid("persistence.sync_interval_ms", "must be at least 1");
        }
        for (field, message) in self.cluster.problems() {
            invalid(field, &message);
        }
        errs.borrow_mut()
            .extend(
                bridges::problems(&self.bridges)
                    .into_iter()
                    .map(|(field, message)| ConfigError::Key {
                        path: origin.to_string(),
                        field,
                        message,
                    }),
            );
        errs.borrow_mut()
            .extend(self.rule_problems(&self.rules, origin));
        errs.into_inner()
    }

    /// Problems of `rules` checked against this config's plugins (the
    /// config's own, or the admin API's from its rules file for `midge
    /// check`); `origin` names where they come from.
    pub fn rule_problems(
        &self,
        rules: &[crate::rules::RuleConfig],
        origin: &str,
    ) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let plugin_names: Vec<&str> = self
            .plugins
            .plugins
            .iter()
            .filter(|p| p.enabled)
            .map(|p| p.name.as_str())
            .collect();
        for r in rules {
            for (i, a) in r.actions.iter().enumerate() {
                if let crate::rules::ActionConfig::Plugin { plugin } = a {
                    if !plugin_names.contains(&plugin.as_str()) {
                        errs.push(ConfigError::Rules {
                            path: origin.to_string(),
                            errors: vec![format!(
                                "rule `{}`: actions[{i}]: plugin `{plugin}` is not an enabled plugin in [plugins]",
                                r.id
                            )],
                        });
                    }
                }
                if let Some((bridge, _)) = a.as_bridge() {
                    if !self.bridges.iter().any(|b| b.enabled && b.name == bridge) {
                        errs.push(ConfigError::Rules {
                            path: origin.to_string(),
                            errors: vec![format!(
                                "rule `{}`: actions[{i}]: bridge `{bridge}` is not an enabled bridge in [[bridges]]",
                                r.id
                            )],
                        });
                    }
                }
            }
        }
        // Plugins offer rule functions only once loaded (their init says
        // which): with plugins configured, names the catalogue lacks are
        // accepted here and resolved when the broker loads the rules.
        let plugin_functions: Option<Arc<dyn midge_rules::ExternalFunctions>> = self
            .plugins
            .plugins
            .iter()
            .any(|p| p.enabled)
            .then(|| Arc::new(crate::plugins::AnyFunction) as _);
        if let Err(errors) = crate::rules::RuleSet::build(rules, None, plugin_functions.as_ref()) {
            // One problem per rule error, so each is listed and counted.
            errs.extend(errors.into_iter().map(|e| ConfigError::Rules {
                path: origin.to_string(),
                errors: vec![e],
            }));
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_valid_and_equals_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/midge.toml");
        let mut c = Config::load(Path::new(path)).expect("examples/midge.toml loads");
        assert_eq!(c.rules.len(), 1, "the example rule");
        assert!(!c.rules[0].enabled);
        c.rules.clear();
        assert_eq!(c.plugins.plugins.len(), 1, "the example plugin");
        let p = c.plugins.plugins.remove(0);
        assert!(!p.enabled);
        // Every key written out is the default.
        let mut d = midge_plugin::PluginConfig::new(&p.name, &p.path);
        d.enabled = false;
        d.config = p.config.clone();
        d.grants.kv = Some("archive".into());
        assert_eq!(p, d);
        assert_eq!(c, Config::default());
    }

    #[test]
    fn listen_addresses_take_host_names() {
        assert_eq!(
            resolve_listen("localhost:1883"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 1883)))
        );
        assert_eq!(
            resolve_listen("[::1]:8"),
            Ok(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 8)))
        );
        let c = Config::parse(
            "[listeners]\nmqtt = \"localhost:1999\"\n[admin]\nlisten = \"localhost:0\"\n",
            "h.toml",
        )
        .expect("host names");
        assert_eq!(
            c.listeners.mqtt,
            Some(SocketAddr::from(([127, 0, 0, 1], 1999)))
        );
        let e = Config::parse("[listeners]\nmqtt = \"localhost:http\"\n", "h.toml").unwrap_err();
        assert!(e.to_string().contains("not a port number"), "{e}");
        let e = Config::parse("[listeners]\nmqtt = \"no-such-host.invalid:1\"\n", "h.toml")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot resolve `no-such-host.invalid`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[mqtt]\nmax_keepalive = 5\n", "x.toml").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("x.toml"), "{text}");
        assert!(text.contains("max_keepalive"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "[mqtt]\nmax_qos = 3\nreceive_maximum = 0\n[limits]\nconnect_timeout = 0\n\
                    [[rules]]\nid = \"r1\"\nsql = \"SELECT FROM\"\n";
        let e = Config::parse(text, "z.toml").unwrap_err();
        let text = e.to_string();
        for want in [
            "mqtt.max_qos",
            "mqtt.receive_maximum",
            "limits.connect_timeout",
            "rule r1",
        ] {
            assert!(text.contains(want), "{want} missing from: {text}");
        }
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn invalid_value_names_the_field() {
        let e = Config::parse("[mqtt]\nmax_qos = 3\n", "y.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "y.toml: field `mqtt.max_qos`: must be 0, 1 or 2"
        );
        let e = Config::parse("[mqtt]\nqueue_full_policy = \"random\"\n", "y.toml").unwrap_err();
        assert!(e.to_string().contains("queue_full_policy"), "{e}");
    }

    #[test]
    fn tls_listeners_need_tls_and_cn_needs_a_ca() {
        let e = Config::parse("[listeners]\nmqtts = \"127.0.0.1:0\"\n", "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: field `listeners.tls`: must be set (cert and key) when `mqtts` or `wss` is"
        );
        let e = Config::parse("[listeners]\nwss = \"127.0.0.1:0\"\n", "t.toml").unwrap_err();
        assert!(e.to_string().contains("listeners.tls"), "{e}");
        let text = "[listeners]\nmqtts = \"127.0.0.1:0\"\n[listeners.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\ncn_as_username = true\n";
        let e = Config::parse(text, "t.toml").unwrap_err();
        assert!(
            e.to_string().contains("listeners.tls.cn_as_username"),
            "{e}"
        );
        let ok = text.replace("cn_as_username", "client_ca = \"ca.pem\"\ncn_as_username");
        Config::parse(&ok, "t.toml").expect("with client_ca");
        let e = Config::parse(
            "[limits]\nmax_listener_connections = { tcp = 1 }\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown listener `tcp`"), "{e}");
    }
}
