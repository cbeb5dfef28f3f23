//! `[cluster]`: which node this is, which NATS servers carry the cluster, how
//! to log in to them, and the limits of every wait on them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[cluster]` in the broker's TOML. Off by default: a single node needs no NATS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Turns clustering on.
    pub enabled: bool,
    /// This node's name, unique in the cluster (`A-Za-z0-9-_`, up to 64).
    /// Default: the host name.
    pub node: Option<String>,
    /// Name of the cluster: the prefix of its subjects, streams and buckets
    /// in NATS, so several Midge clusters can share one NATS system.
    pub name: String,
    /// NATS server URLs (`nats://host:port`, `tls://host:port`); the client
    /// fails over between them.
    pub nats: Vec<String>,
    /// Replicas of every stream and bucket (1..=5; 3 survives one NATS server lost).
    pub replicas: usize,
    /// NATS credentials file (JWT + NKey seed, as `nsc` writes it).
    pub credentials: Option<PathBuf>,
    /// User and password.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// TLS to NATS: CA bundle (PEM) that signs the servers' certificates.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require TLS even for `nats://` URLs.
    pub tls_required: bool,
    /// Longest wait for any NATS request (JetStream publish acknowledgement,
    /// KV operation), in milliseconds. A wait past it fails the operation
    /// (counted in `midge_cluster_nats_timeouts_total`).
    pub request_timeout_ms: u64,
    /// Longest wait at start, in milliseconds: for the first connection,
    /// and for JetStream to answer the setup of the node's stream and
    /// buckets (a JetStream without a quorum, or electing its leader, times
    /// out; those requests are tried again until then).
    pub connect_timeout_ms: u64,
    /// How often a node refreshes its membership record, in milliseconds.
    pub heartbeat_ms: u64,
    /// A node whose record is this old is dead (its wills fire, its
    /// sessions may be taken), in milliseconds. At least 3 heartbeats.
    pub node_timeout_ms: u64,
    /// Cross-node publishes waiting for NATS at once; past it publishers
    /// wait (back-pressure) instead of memory growing.
    pub max_pending: usize,
    /// How long the durable message stream keeps a message, in seconds
    /// (the window in which a node that died can be recovered from).
    pub stream_max_age_s: u64,
    /// Largest size of the durable message stream, in bytes (0: no limit).
    pub stream_max_bytes: i64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node: None,
            name: "midge".into(),
            nats: vec!["nats://127.0.0.1:4222".into()],
            replicas: 3,
            credentials: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 10_000,
            heartbeat_ms: 1_000,
            node_timeout_ms: 5_000,
            max_pending: 10_000,
            stream_max_age_s: 24 * 3600,
            stream_max_bytes: 0,
        }
    }
}

impl ClusterConfig {
    /// Every problem with the section, as (field, message); empty when
    /// clustering is off.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.enabled {
            return out;
        }
        let mut bad = |f, m: String| out.push((f, m));
        match &self.node {
            Some(n) if !crate::subject::valid_name(n) => bad(
                "cluster.node",
                format!("{n:?}: use 1 to 64 of A-Z a-z 0-9 - _"),
            ),
            _ => {}
        }
        if !crate::subject::valid_name(&self.name) || self.name.len() > 32 {
            bad(
                "cluster.name",
                format!("{:?}: use 1 to 32 of A-Z a-z 0-9 - _", self.name),
            );
        }
        if self.nats.is_empty() {
            bad("cluster.nats", "needs at least one NATS server URL".into());
        }
        for u in &self.nats {
            if let Err(e) = u.parse::<async_nats::ServerAddr>() {
                bad("cluster.nats", format!("{u:?}: {e}"));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            bad(
                "cluster.replicas",
                "must be 1 to 5 (JetStream's range)".into(),
            );
        }
        if self.password.is_some() != self.user.is_some() {
            bad("cluster.user", "`user` and `password` go together".into());
        }
        let auths = [
            self.credentials.is_some(),
            self.user.is_some(),
            self.token.is_some(),
        ];
        if auths.iter().filter(|a| **a).count() > 1 {
            bad(
                "cluster.credentials",
                "use one of `credentials`, `user`/`password` and `token`".into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bad(
                "cluster.tls_cert",
                "`tls_cert` and `tls_key` go together".into(),
            );
        }
        for (f, p) in [
            ("cluster.credentials", &self.credentials),
            ("cluster.tls_ca", &self.tls_ca),
            ("cluster.tls_cert", &self.tls_cert),
            ("cluster.tls_key", &self.tls_key),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    bad(f, format!("{}: no such file", p.display()));
                }
            }
        }
        if self.request_timeout_ms < 100 {
            bad("cluster.request_timeout_ms", "must be at least 100".into());
        }
        if self.connect_timeout_ms < 100 {
            bad("cluster.connect_timeout_ms", "must be at least 100".into());
        }
        if self.heartbeat_ms < 100 {
            bad("cluster.heartbeat_ms", "must be at least 100".into());
        }
        if self.node_timeout_ms < 3 * self.heartbeat_ms || self.node_timeout_ms < 1000 {
            bad(
                "cluster.node_timeout_ms",
                "must be at least 3 heartbeats and at least 1000".into(),
            );
        }
        if self.max_pending == 0 {
            bad("cluster.max_pending", "must be at least 1".into());
        }
        if self.stream_max_age_s == 0 {
            bad("cluster.stream_max_age_s", "must be at least 1".into());
        }
        out
    }

    /// The node name in force: `node`, else the host name made valid.
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.node {
            return n.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_else(|_| "midge".into());
        let n: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if n.is_empty() {
            "midge".into()
        } else {
            n
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> ClusterConfig {
        ClusterConfig {
            enabled: true,
            node: Some("n1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn off_has_no_problems_whatever_it_holds() {
        let c = ClusterConfig {
            nats: vec![],
            replicas: 0,
            ..Default::default()
        };
        assert!(c.problems().is_empty());
    }

    #[test]
    fn problems_name_the_field() {
        assert!(on().problems().is_empty(), "{:?}", on().problems());
        let c = ClusterConfig {
            node: Some("bad name".into()),
            nats: vec!["nats://127.0.0.1:notaport".into()],
            replicas: 7,
            user: Some("u".into()),
            heartbeat_ms: 1000,
            node_timeout_ms: 2000,
            credentials: Some("/nonexistent/x.creds".into()),
            ..on()
        };
        let fields: Vec<&str> = c.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "cluster.node",
                "cluster.nats",
                "cluster.replicas",
                "cluster.user",
                "cluster.credentials",
                "cluster.credentials",
                "cluster.node_timeout_ms"
            ]
        );
    }

    #[test]
    fn node_name_defaults_to_a_valid_host_name() {
        let c = ClusterConfig { node: None, ..on() };
        assert!(crate::subject::valid_name(&c.node_name()));
    }
}
