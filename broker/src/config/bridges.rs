//! `[[bridges]]`: serde types (unknown keys refused) -> [`BridgeConfig::build`]
//! -> [`BridgeSpec`], the checked runtime form (remote address parsed, TLS
//! files loaded, topic mappings compiled). `Config::problems` (and so
//! `midge check`) reports every error `build` finds, each naming its key
//! (`bridges[0].tls.ca`, `bridges[1].out[2].topic`, ...).

use std::path::PathBuf;
use std::sync::Arc;

use midge_protocol::{topic, QoS, Version};
use serde::Deserialize;

pub mod mapping;
pub mod tls;

use super::QueueFullPolicy;
use mapping::Mapping;

/// One `[[bridges]]` entry.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Names the bridge in the store, metrics, `$SYS`, the admin API and
    /// rule actions: letters, digits, `_`, `-` and `.`, at most 64.
    pub name: String,
    /// A disabled bridge neither connects nor buffers.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `mqtt://host:port`, `mqtts://host:port`, `ws://host:port/path` or
    /// `wss://host:port/path` (ports default to 1883, 8883, 80, 443; the
    /// WebSocket path to `/mqtt`).
    pub remote: String,
    /// "5.0" (default) or "3.1.1".
    #[serde(default)]
    pub protocol: Protocol,
    /// Client id at the remote. Default: `<host name>.<bridge name>`; it must
    /// stay the same across restarts for the remote to keep the session.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Seconds; PINGREQ when the link is idle this long (0: none).
    #[serde(default = "default_keep_alive")]
    pub keep_alive: u16,
    /// Start a new session at the remote on every connect. The default
    /// (false) keeps it, which QoS 2 exactly-once across reconnects and
    /// restarts needs (the remote remembers the packet ids it has seen).
    #[serde(default)]
    pub clean_start: bool,
    /// 5.0 only: seconds the remote keeps the session after the link drops
    /// (default 86400).
    #[serde(default)]
    pub session_expiry: Option<u32>,
    /// Most QoS 1/2 messages in flight to the remote at once (the remote's
    /// Receive Maximum lowers it).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Seconds for TCP, TLS, WebSocket and CONNACK together.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: u32,
    /// `mqtts://` and `wss://`: CA, client certificate, server name.
    #[serde(default)]
    pub tls: Option<BridgeTlsConfig>,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    #[serde(default)]
    pub buffer: BufferConfig,
    /// `[[bridges.out]]`: local filter -> remote.
    #[serde(default, rename = "out")]
    pub outbound: Vec<DirectionConfig>,
    /// `[[bridges.in]]`: remote filter -> local.
    #[serde(default, rename = "in")]
    pub inbound: Vec<DirectionConfig>,
}

impl std::fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("BridgeConfig")
            .field("name", &self.name)
            .field("remote", &self.remote)
            .field("protocol", &self.protocol)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// MQTT version of the link.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Protocol {
    #[serde(rename = "3.1.1")]
    V311,
    #[default]
    #[serde(rename = "5.0", alias = "5")]
    V5,
}

impl Protocol {
    pub fn version(self) -> Version {
        match self {
            Protocol::V311 => Version::V311,
            Protocol::V5 => Version::V5,
        }
    }
}

/// `[bridges.tls]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BridgeTlsConfig {
    /// PEM file of the CAs the remote's certificate is verified against.
    /// Default: the system's bundle (`SSL_CERT_FILE`, else
    /// /etc/ssl/certs/ca-certificates.crt).
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for remotes that require one (with `key`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name the certificate must carry. Default: the host of `remote`.
    pub server_name: Option<String>,
}

/// `[bridges.reconnect]`: exponential backoff between connection attempts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// Wait after the first failure (milliseconds); doubled after each.
    pub initial_ms: u64,
    /// Longest wait (milliseconds).
    pub max_ms: u64,
    /// Each wait is shortened by a random part of up to this fraction (0..=1),
    /// so many edges cut off together do not reconnect together.
    pub jitter: f64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial_ms: 500,
            max_ms: 30_000,
            jitter: 0.2,
        }
    }
}

/// `[bridges.buffer]`: the outbound buffer (in the store with persistence on).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Messages held for the remote (queued and in flight).
    pub max_messages: usize,
    /// Payload bytes held for the remote; 0: no byte limit.
    pub max_bytes: usize,
    /// When full: "drop_oldest" (default: the freshest data gets through)
    /// or "drop_new" (new messages are refused). Either is counted.
    pub full_policy: QueueFullPolicy,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_messages: 1_000_000,
            max_bytes: 1 << 30,
            full_policy: QueueFullPolicy::DropOldest,
        }
    }
}

/// One `[[bridges.out]]` or `[[bridges.in]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectionConfig {
    /// Topic filter on the sending side (local for `out`, remote for `in`).
    pub filter: String,
    /// Topic template on the receiving side (see [`mapping`]).
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub add_prefix: Option<String>,
    /// Highest QoS forwarded (messages keep a lower one). Default 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Forward the retain flag as published (default), or clear it.
    /// For `in`, a 5.0 subscription option (3.1.1 remotes decide themselves).
    #[serde(default)]
    pub retain_as_published: Option<bool>,
    /// Retained messages on subscribing: 0 sent (default), 1 only when the
    /// subscription is new, 2 never. For `in`, 5.0 only.
    #[serde(default)]
    pub retain_handling: Option<u8>,
}

fn yes() -> bool {
    true
}
fn default_keep_alive() -> u16 {
    60
}
fn default_max_inflight() -> u16 {
    256
}
fn default_connect_timeout() -> u32 {
    10
}
fn default_qos() -> u8 {
    1
}

/// Default session expiry asked of a 5.0 remote (seconds).
pub const DEFAULT_SESSION_EXPIRY: u32 = 86_400;

/// The transport of the remote address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl Scheme {
    pub fn tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }
}

/// A parsed `remote`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// WebSocket request path (`/mqtt` when the URL has none).
    pub path: String,
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{host}:{}", self.port)?;
        if matches!(self.scheme, Scheme::Ws | Scheme::Wss) {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

impl Remote {
    /// Parses `scheme://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Remote, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("`{url}` is not a URL (expected mqtt://, mqtts://, ws:// or wss://host:port)")
        })?;
        let (scheme, default_port) = match scheme {
            "mqtt" | "tcp" => (Scheme::Mqtt, 1883),
            "mqtts" | "ssl" => (Scheme::Mqtts, 8883),
            "ws" => (Scheme::Ws, 80),
            "wss" => (Scheme::Wss, 443),
            other => {
                return Err(format!(
                    "unknown scheme `{other}` in `{url}` (expected mqtt, mqtts, ws or wss)"
                ))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!(
                "`{url}`: put the user name and password in `username` / `password`, not in the URL"
            ));
        }
        if !path.is_empty() && matches!(scheme, Scheme::Mqtt | Scheme::Mqtts) {
            return Err(format!(
                "`{url}`: a path only means something for ws:// and wss://"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}`: `[` without `]`"))?;
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(p.strip_prefix(':').ok_or_else(|| {
                        format!("`{url}`: expected `:port` after the IPv6 address")
                    })?),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let port =
            match port {
                None => default_port,
                Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("`{url}`: port `{p}` is not a number from 1 to 65535")
                })?,
            };
        let path = if path.is_empty() { "/mqtt" } else { path };
        Ok(Remote {
            scheme,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// A checked direction.
#[derive(Debug, Clone)]
pub struct Direction {
    /// The filter as configured (for `in` it may be a remote shared filter).
    pub filter: String,
    pub mapping: Mapping,
    pub qos: QoS,
    pub retain_as_published: bool,
    pub retain_handling: u8,
}

/// A checked bridge, ready to run.
#[derive(Debug, Clone)]
pub struct BridgeSpec {
    pub name: Arc<str>,
    pub remote: Remote,
    pub version: Version,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: u16,
    pub clean_start: bool,
    pub session_expiry: u32,
    pub max_inflight: u16,
    pub connect_timeout: std::time::Duration,
    /// The TLS client configuration for `mqtts` / `wss`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the remote's certificate is checked for.
    pub server_name: String,
    pub reconnect: ReconnectConfig,
    pub buffer: BufferConfig,
    pub outbound: Vec<Direction>,
    pub inbound: Vec<Direction>,
}

/// One problem: the key it is about and what is wrong.
pub type Problem = (String, String);

impl BridgeConfig {
    /// Checks the entry (`index` in `[[bridges]]`) and builds its runtime
    /// form; or every problem found, each with its key.
    pub fn build(&self, index: usize) -> Result<BridgeSpec, Vec<Problem>> {
        let at = |k: &str| format!("bridges[{index}].{k}");
        let mut errs: Vec<Problem> = Vec::new();
        if !valid_name(&self.name) {
            errs.push((
                at("name"),
                format!(
                    "`{}`: use 1 to 64 letters, digits, `_`, `-` or `.`",
                    self.name
                ),
            ));
        }
        let remote = Remote::parse(&self.remote).map_err(|m| errs.push((at("remote"), m)));
        let version = self.protocol.version();
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{}.{}", host_name(), self.name));
        if client_id.is_empty()
            || client_id.len() > usize::from(u16::MAX)
            || client_id.contains('\0')
        {
            errs.push((
                at("client_id"),
                "must be 1 to 65535 bytes without NUL".into(),
            ));
        }
        if self.password.is_some() && self.username.is_none() && version == Version::V311 {
            errs.push((
                at("password"),
                "MQTT 3.1.1 sends a password only with a user name".into(),
            ));
        }
        if self.session_expiry.is_some() && version == Version::V311 {
            errs.push((
                at("session_expiry"),
                "MQTT 3.1.1 has no session expiry (the remote keeps the session while clean_start = false)".into(),
            ));
        }
        if self.max_inflight == 0 {
            errs.push((at("max_inflight"), "must be at least 1".into()));
        }
        if self.connect_timeout == 0 {
            errs.push((at("connect_timeout"), "must be at least 1 second".into()));
        }
        let r = &self.reconnect;
        if r.initial_ms < 10 {
            errs.push((at("reconnect.initial_ms"), "must be at least 10".into()));
        }
        if r.max_ms < r.initial_ms {
            errs.push((
                at("reconnect.max_ms"),
                "must be at least reconnect.initial_ms".into(),
            ));
        }
        if !(0.0..=1.0).contains(&r.jitter) {
            errs.push((at("reconnect.jitter"), "must be from 0 to 1".into()));
        }
        if self.buffer.max_messages == 0 {
            errs.push((at("buffer.max_messages"), "must be at least 1".into()));
        }
        if self.outbound.is_empty() && self.inbound.is_empty() {
            errs.push((
                at("out"),
                "a bridge needs at least one [[bridges.out]] or [[bridges.in]]".into(),
            ));
        }
        let outbound = self.directions(index, "out", version, &mut errs);
        let inbound = self.directions(index, "in", version, &mut errs);
        let mut server_name = String::new();
        let tls = match &remote {
            Ok(remote) => {
                server_name = self
                    .tls
                    .as_ref()
                    .and_then(|t| t.server_name.clone())
                    .unwrap_or_else(|| remote.host.clone());
                self.tls_config(index, remote, &server_name, &mut errs)
            }
            Err(()) => None,
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let Ok(remote) = remote else {
            return Err(errs);
        };
        Ok(BridgeSpec {
            name: Arc::from(self.name.as_str()),
            remote,
            version,
            client_id,
            username: self.username.clone(),
            password: self.password.clone(),
            keep_alive: self.keep_alive,
            clean_start: self.clean_start,
            session_expiry: self.session_expiry.unwrap_or(DEFAULT_SESSION_EXPIRY),
            max_inflight: self.max_inflight,
            connect_timeout: std::time::Duration::from_secs(u64::from(self.connect_timeout)),
            tls,
            server_name,
            reconnect: self.reconnect.clone(),
            buffer: self.buffer.clone(),
            outbound,
            inbound,
        })
    }

    fn directions(
        &self,
        index: usize,
        side: &str,
        version: Version,
        errs: &mut Vec<Problem>,
    ) -> Vec<Direction> {
        let list = if side == "out" {
            &self.outbound
        } else {
            &self.inbound
        };
        let mut out = Vec::new();
        for (i, d) in list.iter().enumerate() {
            let at = |k: &str| format!("bridges[{index}].{side}[{i}].{k}");
            let n = errs.len();
            let plain = match topic::split_shared(&d.filter) {
                Some(_) if side == "out" => {
                    errs.push((
                        at("filter"),
                        format!("`{}`: a shared subscription cannot feed a bridge (each message must reach it)", d.filter),
                    ));
                    None
                }
                Some((_, f)) if topic::valid_filter(&d.filter) => Some(f),
                None if topic::valid_filter(&d.filter) => Some(d.filter.as_str()),
                _ => {
                    errs.push((
                        at("filter"),
                        format!("`{}` is not a valid topic filter", d.filter),
                    ));
                    None
                }
            };
            let qos = QoS::from_u8(d.qos).ok_or(()).map_err(|()| {
                errs.push((at("qos"), "must be 0, 1 or 2".into()));
            });
            if d.retain_handling.is_some_and(|h| h > 2) {
                errs.push((at("retain_handling"), "must be 0, 1 or 2".into()));
            }
            if side == "in" && version == Version::V311 {
                for (k, set) in [
                    ("retain_as_published", d.retain_as_published.is_some()),
                    ("retain_handling", d.retain_handling.is_some()),
                ] {
                    if set {
                        errs.push((
                            at(k),
                            "a 5.0 subscription option: not available with protocol = \"3.1.1\""
                                .into(),
                        ));
                    }
                }
            }
            let mapping = plain.and_then(|f| {
                Mapping::compile(
                    f,
                    d.topic.as_deref(),
                    d.strip_prefix.as_deref(),
                    d.add_prefix.as_deref(),
                )
                .map_err(|m| {
                    let key = if d.topic.is_some() {
                        "topic"
                    } else if d.strip_prefix.is_some() {
                        "strip_prefix"
                    } else {
                        "add_prefix"
                    };
                    errs.push((at(key), m));
                })
                .ok()
            });
            if errs.len() > n {
                continue;
            }
            if let (Some(mapping), Ok(qos)) = (mapping, qos) {
                out.push(Direction {
                    filter: d.filter.clone(),
                    mapping,
                    qos,
                    retain_as_published: d.retain_as_published.unwrap_or(true),
                    retain_handling: d.retain_handling.unwrap_or(0),
                });
            }
        }
        out
    }

    fn tls_config(
        &self,
        index: usize,
        remote: &Remote,
        server_name: &str,
        errs: &mut Vec<Problem>,
    ) -> Option<Arc<rustls::ClientConfig>> {
        let at = |k: &str| format!("bridges[{index}].tls{k}");
        let cfg = self.tls.clone().unwrap_or_default();
        if !remote.scheme.tls() {
            if self.tls.is_some() {
                errs.push((
                    at(""),
                    format!(
                        "`{}` is not a TLS address (use mqtts:// or wss://)",
                        self.remote
                    ),
                ));
            }
            return None;
        }
        match tls::client_config(&cfg, server_name) {
            Ok(c) => Some(c),
            Err((key, m)) => {
                errs.push((at(key), m));
                None
            }
        }
    }
}

/// Bridge names end up in store keys, metric labels and URL paths.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// This machine's host name (Linux), for default client ids.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "midge".into())
}

/// Problems of every bridge, plus names used twice.
pub fn problems(bridges: &[BridgeConfig]) -> Vec<Problem> {
    let mut errs = Vec::new();
    for (i, b) in bridges.iter().enumerate() {
        if let Err(e) = b.build(i) {
            errs.extend(e);
        }
        if bridges[..i].iter().any(|o| o.name == b.name) {
            errs.push((
                format!("bridges[{i}].name"),
                format!("`{}` names another bridge too", b.name),
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<BridgeConfig>, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct F {
            bridges: Vec<BridgeConfig>,
        }
        toml::from_str::<F>(text)
            .map(|f| f.bridges)
            .map_err(|e| e.to_string())
    }

    fn problems_of(text: &str) -> Vec<Problem> {
        problems(&parse(text).unwrap())
    }

    #[test]
    fn remote_addresses() {
        let r = Remote::parse("mqtt://example.com").unwrap();
        assert_eq!(
            (r.scheme, r.host.as_str(), r.port),
            (Scheme::Mqtt, "example.com", 1883)
        );
        let r = Remote::parse("mqtts://10.0.0.1:18883").unwrap();
        assert_eq!((r.scheme, r.port), (Scheme::Mqtts, 18883));
        let r = Remote::parse("ws://[::1]:8080/ws/mqtt").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.path.as_str()),
            ("::1", 8080, "/ws/mqtt")
        );
        assert_eq!(r.to_string(), "ws://[::1]:8080/ws/mqtt");
        let r = Remote::parse("wss://cloud.example").unwrap();
        assert_eq!((r.port, r.path.as_str()), (443, "/mqtt"));
        for (bad, why) in [
            ("example.com:1883", "not a URL"),
            ("http://x", "unknown scheme `http`"),
            ("mqtt://:1883", "no host"),
            ("mqtt://x:0", "port `0`"),
            ("mqtt://x:99999", "port `99999`"),
            ("mqtt://u:p@x", "username"),
            ("mqtt://x/path", "only means something"),
            ("ws://[::1/x", "without `]`"),
        ] {
            let e = Remote::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_full_entry_builds() {
        let b = parse(
            r#"
            [[bridges]]
            name = "cloud"
            remote = "mqtt://127.0.0.1:1883"
            protocol = "3.1.1"
            client_id = "edge-1"
            username = "u"
            password = "p"
            keep_alive = 30
            clean_start = true
            [bridges.reconnect]
            initial_ms = 100
            max_ms = 1000
            jitter = 0.5
            [bridges.buffer]
            max_messages = 10
            max_bytes = 0
            full_policy = "drop_new"
            [[bridges.out]]
            filter = "sensors/+/temp"
            topic = "site1/{2}"
            qos = 2
            retain_as_published = false
            [[bridges.in]]
            filter = "cmd/site1/#"
            strip_prefix = "cmd/site1/"
            add_prefix = "local/"
            qos = 0
            "#,
        )
        .unwrap();
        let s = b[0].build(0).unwrap();
        assert_eq!(s.version, Version::V311);
        assert_eq!(s.client_id, "edge-1");
        assert_eq!(s.outbound[0].qos, QoS::ExactlyOnce);
        assert!(!s.outbound[0].retain_as_published);
        assert_eq!(
            s.outbound[0].mapping.apply("sensors/k/temp").as_deref(),
            Some("site1/k")
        );
        assert_eq!(
            s.inbound[0].mapping.apply("cmd/site1/open").as_deref(),
            Some("local/open")
        );
        assert_eq!(s.buffer.full_policy, QueueFullPolicy::DropNew);
        assert!(s.tls.is_none());
        // Defaults.
        let d = parse(
            "[[bridges]]\nname = \"x\"\nremote = \"mqtt://h\"\n[[bridges.out]]\nfilter = \"#\"\n",
        )
        .unwrap()[0]
            .build(0)
            .unwrap();
        assert_eq!(d.version, Version::V5);
        assert!(d.client_id.ends_with(".x"), "{}", d.client_id);
        assert_eq!(d.session_expiry, DEFAULT_SESSION_EXPIRY);
        assert!(!d.clean_start);
        assert_eq!(d.outbound[0].qos, QoS::AtLeastOnce);
        assert!(d.outbound[0].retain_as_published);
        assert_eq!(d.buffer.full_policy, QueueFullPolicy::DropOldest);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = parse("[[bridges]]\nname = \"x\"\nremote = \"mqtt://h\"\nremot = 1\n").unwrap_err();
        assert!(e.contains("remot"), "{e}");
        let e = parse("[[bridges]]\nname = \"x\"\nremote = \"mqtt://h\"\n[[bridges.out]]\nfilter = \"#\"\nqso = 1\n")
            .unwrap_err();
        assert!(e.contains("qso"), "{e}");
        let e = parse("[[bridges]]\nname = \"x\"\nremote = \"mqtt://h\"\nprotocol = \"4\"\n")
            .unwrap_err();
        assert!(e.contains("protocol") || e.contains("3.1.1"), "{e}");
    }

    #[test]
    fn every_problem_names_its_key() {
        let p = problems_of(
            r#"
            [[bridges]]
            name = "a b"
            remote = "mqtt://h:70000"
            protocol = "3.1.1"
            session_expiry = 5
            max_inflight = 0
            [bridges.reconnect]
            initial_ms = 5
            max_ms = 1
            jitter = 2.0
            [[bridges.out]]
            filter = "$share/g/a"
            [[bridges.out]]
            filter = "a/+"
            topic = "{3}"
            qos = 3
            [[bridges.in]]
            filter = "a/#"
            retain_handling = 1
            [[bridges]]
            name = "dup"
            remote = "mqtt://h"
            [[bridges]]
            name = "dup"
            remote = "mqtt://h"
            tls = { ca = "/nonexistent/ca.pem" }
            [[bridges.in]]
            filter = "a/#"
            "#,
        );
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        for want in [
            "bridges[0].name",
            "bridges[0].remote",
            "bridges[0].session_expiry",
            "bridges[0].max_inflight",
            "bridges[0].reconnect.initial_ms",
            "bridges[0].reconnect.max_ms",
            "bridges[0].reconnect.jitter",
            "bridges[0].out[0].filter",
            "bridges[0].out[1].qos",
            "bridges[0].out[1].topic",
            "bridges[0].in[0].retain_handling",
            "bridges[1].out",
            "bridges[2].name",
            "bridges[2].tls",
        ] {
            assert!(keys.contains(&want), "{want} missing from {p:#?}");
        }
        let tls = &p.iter().find(|(k, _)| k == "bridges[2].tls").unwrap().1;
        assert!(tls.contains("not a TLS address"), "{tls}");
    }

    #[test]
    fn tls_files_are_read_and_errors_name_the_file() {
        let p = problems_of(
            "[[bridges]]\nname = \"t\"\nremote = \"mqtts://h\"\ntls = { ca = \"/nonexistent/ca.pem\" }\n[[bridges.out]]\nfilter = \"#\"\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "bridges[0].tls.ca");
        assert!(
            p[0].1.contains("/nonexistent/ca.pem") && p[0].1.contains("cannot read"),
            "{}",
            p[0].1
        );
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let text = format!(
            "[[bridges]]\nname = \"t\"\nremote = \"mqtts://h\"\ntls = {{ ca = {:?}, cert = {:?} }}\n[[bridges.out]]\nfilter = \"#\"\n",
            junk, junk
        );
        let p = problems_of(&text);
        assert!(
            p.iter()
                .any(|(k, m)| k == "bridges[0].tls.ca" && m.contains("no certificate")),
            "{p:?}"
        );
        // A certificate without its key.
        let p = problems_of(&text.replace(&format!("ca = {junk:?}, "), ""));
        assert!(p.iter().any(|(k, _)| k == "bridges[0].tls.key"), "{p:?}");
    }
}
