//! NATS for the cluster tests.
//!
//! - [`shared_urls`]: the 3-server JetStream cluster scripts/test.sh starts
//!   (`MIDGE_TEST_NATS`); tests that do not harm NATS share it, each with its
//!   own cluster name (so its own stream and buckets).
//! - [`NatsCluster`]: a private 3-server cluster for tests that kill or stop
//!   NATS servers: free loopback ports, one store directory per server,
//!   routes to each other; every server is a child process ended by its PID
//!   (`kill -9` or SIGTERM), and all are stopped when the value is dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared cluster's URLs; `None` (test skipped) outside CI when unset.
pub fn shared_urls() -> Option<Vec<String>> {
    match std::env::var("MIDGE_TEST_NATS") {
        Ok(v) => Some(v.split(',').map(str::to_string).collect()),
        Err(_) => {
            crate::missing_tool(
                "NATS: MIDGE_TEST_NATS is not set (scripts/test.sh starts a cluster)",
            );
            None
        }
    }
}

/// The nats-server binary: `MIDGE_NATS_SERVER` (scripts/nats.sh sets it) or
/// `nats-server` on PATH. `None` (test skipped) outside CI when neither works.
pub fn server_bin() -> Option<PathBuf> {
    let bin = std::env::var("MIDGE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let ok = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(PathBuf::from(bin))
    } else {
        crate::missing_tool("nats-server: set MIDGE_NATS_SERVER (scripts/nats.sh installs it)");
        None
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One server of a [`NatsCluster`].
#[derive(Debug)]
struct Server {
    name: String,
    client: u16,
    route: u16,
    monitor: u16,
    child: Option<Child>,
}

/// A private 3-server NATS JetStream cluster on 127.0.0.1.
#[derive(Debug)]
pub struct NatsCluster {
    bin: PathBuf,
    dir: crate::TempDir,
    servers: Vec<Server>,
}

impl NatsCluster {
    /// Starts three servers and waits (bounded) until each reports JetStream
    /// healthy. `None` when nats-server is missing (outside CI).
    pub fn start() -> Option<NatsCluster> {
        let bin = server_bin()?;
        let dir = crate::TempDir::new("midge-nats");
        let servers = (1..=3)
            .map(|i| Server {
                name: format!("n{i}"),
                client: free_port(),
                route: free_port(),
                monitor: free_port(),
                child: None,
            })
            .collect();
        let mut c = NatsCluster { bin, dir, servers };
        for i in 0..3 {
            c.spawn(i);
        }
        c.wait_healthy(Duration::from_secs(60));
        Some(c)
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.route))
            .collect();
        let s = &self.servers[i];
        let store = self.dir.0.join(&s.name);
        let log =
            std::fs::File::create(self.dir.0.join(format!("{}.log", s.name))).expect("log file");
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &s.client.to_string()])
            .args([
                "-m",
                &s.monitor.to_string(),
                "-n",
                &format!("midge-e2e-{}", s.name),
            ])
            .args(["-js", "-sd"])
            .arg(&store)
            .args(["--cluster_name", "midge-e2e"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", s.route)])
            .args(["--routes", &routes.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.servers[i].child = Some(child);
    }

    /// Client URLs of all three servers.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client))
            .collect()
    }

    fn healthy(&self, i: usize) -> bool {
        use std::io::{Read, Write};
        let s = &self.servers[i];
        let Ok(mut t) = std::net::TcpStream::connect(("127.0.0.1", s.monitor)) else {
            return false;
        };
        let _ = t.set_read_timeout(Some(Duration::from_secs(1)));
        let req = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if t.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = t.read_to_string(&mut out);
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
    }

    /// Waits until every running server reports healthy (JetStream current).
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let running: Vec<usize> = (0..3)
                .filter(|i| self.servers[*i].child.is_some())
                .collect();
            if running.iter().all(|i| self.healthy(*i)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "NATS servers not healthy within {within:?}; logs in {}",
                self.dir.0.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9` of server `i` (0..3): no shutdown, no goodbye to its routes.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = Command::new("kill")
                .args(["-9", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Stops server `i` with SIGTERM (lame duck off) and waits for it.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again with the same ports and store.
    pub fn restart(&mut self, i: usize) {
        if self.servers[i].child.is_none() {
            self.spawn(i);
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Midge nodes (separate `midge serve` processes) clustered on `urls`
/// under a cluster name of their own; `extra` is appended to each node's
/// TOML (e.g. a `[persistence]` section; `{node}` is replaced by the
/// node's name).
#[derive(Debug)]
pub struct MidgeCluster {
    pub name: String,
    pub urls: Vec<String>,
    pub dir: crate::TempDir,
    extra: String,
}

impl MidgeCluster {
    pub fn new(urls: &[String], extra: &str) -> MidgeCluster {
        // Cluster names: up to 32 of A-Za-z0-9-_ (they prefix subjects and buckets).
        let name: String = crate::unique("c")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .chars()
            .rev()
            .take(20)
            .collect();
        MidgeCluster {
            name: format!("c{name}"),
            urls: urls.to_vec(),
            dir: crate::TempDir::new("midge-cluster"),
            extra: extra.to_string(),
        }
    }

    /// The config file of `node`.
    pub fn config(&self, node: &str) -> PathBuf {
        let nats: Vec<String> = self.urls.iter().map(|u| format!("{u:?}")).collect();
        let text = format!(
            "[cluster]\nenabled = true\nnode = {node:?}\nname = {:?}\nnats = [{}]\nreplicas = 3\n\
             heartbeat_ms = 250\nnode_timeout_ms = 1500\nrequest_timeout_ms = 3000\n\n{}\n",
            self.name,
            nats.join(", "),
            self.extra.replace("{node}", node)
        );
        // MIDGE_E2E_PERSIST=sled: every node with its own sled store, as the
        // single-node suite runs a second time.
        let text = if std::env::var("MIDGE_E2E_PERSIST").as_deref() == Ok("sled") {
            let data = self.dir.0.join(format!("{node}-data"));
            format!(
                "{text}\n[persistence]\nenabled = true\ndata_dir = {:?}\n",
                data.display().to_string()
            )
        } else {
            text
        };
        let path = self.dir.0.join(format!("{node}.toml"));
        std::fs::write(&path, text).expect("write node config");
        path
    }

    /// Starts node `node` (a new process on a free MQTT port).
    pub fn start(&self, node: &str) -> crate::process::BrokerProcess {
        crate::process::BrokerProcess::start(&self.config(node), 0)
    }

    /// Starts node `node` on `port` (a restart on the same port).
    pub fn start_on(&self, node: &str, port: u16) -> crate::process::BrokerProcess {
        crate::process::BrokerProcess::start(&self.config(node), port)
    }
}

/// HAProxy (Debian's `haproxy`) on 127.0.0.1, plain TCP, `leastconn` over
/// `backends`; a child process ended by its PID when dropped.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    pub port: u16,
    _dir: crate::TempDir,
}

impl Haproxy {
    /// `None` (test skipped) outside CI when haproxy is missing.
    pub fn start(backends: &[u16]) -> Option<Haproxy> {
        let bin = ["/usr/sbin/haproxy", "haproxy"].into_iter().find(|b| {
            Command::new(b)
                .arg("-v")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        let Some(bin) = bin else {
            crate::missing_tool("haproxy (apt-get install haproxy)");
            return None;
        };
        let dir = crate::TempDir::new("midge-haproxy");
        let port = free_port();
        let mut cfg = format!(
            "global\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 1s\n    \
             timeout client 60s\n    timeout server 60s\nfrontend mqtt\n    bind 127.0.0.1:{port}\n    \
             default_backend midge\nbackend midge\n    balance leastconn\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!(
                "    server n{i} 127.0.0.1:{b} check inter 200ms fall 1 rise 1\n"
            ));
        }
        let path = dir.0.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let child = Command::new(bin)
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Haproxy {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
