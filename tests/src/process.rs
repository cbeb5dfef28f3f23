//! The broker as a separate process (for restarts and `kill -9`), and the
//! PostgreSQL database the persistence tests use.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of the `midge` binary, built (once per test process) if needed.
pub fn midge_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test> -> target/<profile>/midge
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary under target/<profile>/deps");
        // `--workspace`: the feature set of the workspace build that made
        // this test binary, so only the binary links (`-p midge` would
        // resolve features differently and rebuild the dependencies).
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--workspace", "--bin", "midge"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the midge binary");
        assert!(status.success(), "cargo build -p midge failed");
        let bin = profile_dir.join("midge");
        assert!(bin.exists(), "no broker binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A `midge serve` child process. Killed (by its PID) when dropped.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The admin API (always on port 0 here) and the token the broker
    /// printed (`None` when the config or `MIDGE_ADMIN_TOKEN` set one).
    pub admin_addr: SocketAddr,
    pub admin_token: Option<String>,
    /// The WebSocket listener ([`BrokerProcess::start_full`] with `ws`).
    pub ws_addr: Option<SocketAddr>,
    /// The `mqtts` listener, when the config has one.
    pub mqtts_addr: Option<SocketAddr>,
    /// Everything the broker wrote to stderr (its log), collected by a thread.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl BrokerProcess {
    /// Starts `midge serve --config config --listen 127.0.0.1:port --no-ws
    /// --admin-listen 127.0.0.1:0` (port 0 picks one) and waits (bounded)
    /// for its listening lines.
    pub fn start(config: &Path, port: u16) -> BrokerProcess {
        BrokerProcess::start_env(config, port, &[])
    }

    /// [`BrokerProcess::start`] with extra environment variables (e.g. a
    /// `RUST_LOG` of its own, which replaces the default one).
    pub fn start_env(config: &Path, port: u16, env: &[(&str, &str)]) -> BrokerProcess {
        BrokerProcess::start_full(config, port, false, env)
    }

    /// [`BrokerProcess::start_env`], with the WebSocket listener on
    /// 127.0.0.1:0 when `ws` (its address in [`BrokerProcess::ws_addr`]).
    pub fn start_full(config: &Path, port: u16, ws: bool, env: &[(&str, &str)]) -> BrokerProcess {
        BrokerProcess::start_wrapped(config, port, ws, env, &[])
    }

    /// [`BrokerProcess::start_full`], run through `wrapper` (a command and
    /// its arguments that exec the broker's command line after them, e.g.
    /// `["prlimit", "--nofile=64:4096"]`); empty: the broker itself.
    pub fn start_wrapped(
        config: &Path,
        port: u16,
        ws: bool,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> BrokerProcess {
        let ws_args: &[&str] = if ws {
            &["--ws-listen", "127.0.0.1:0"]
        } else {
            &["--no-ws"]
        };
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(midge_bin());
                c
            }
            None => Command::new(midge_bin()),
        };
        let mut child = cmd
            .arg("serve")
            .args(ws_args)
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            // Never the default admin port: brokers of parallel tests would collide.
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn,midge::server=info,midge::store=info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn midge");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap_or_else(|e| e.into_inner());
                g.push_str(&line);
                g.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The binary prints the token (if generated) before the admin
            // listening line, and that one last.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                for (key, prefix) in [
                    ("mqtt", "midge: mqtt listening on "),
                    ("ws", "midge: websocket listening on "),
                    ("mqtts", "midge: mqtts listening on "),
                    ("token", "midge: admin token "),
                    ("admin", "midge: admin listening on "),
                ] {
                    if let Some(v) = line.strip_prefix(prefix) {
                        let _ = tx.send((key, v.trim().to_string()));
                    }
                }
            }
        });
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut p = BrokerProcess {
            child: Some(child),
            addr: unset,
            admin_addr: unset,
            admin_token: None,
            ws_addr: None,
            mqtts_addr: None,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.addr == unset || p.admin_addr == unset {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("mqtt", a)) => p.addr = a.parse().expect("listening address"),
                Ok(("ws", a)) => p.ws_addr = Some(a.parse().expect("websocket address")),
                Ok(("mqtts", a)) => p.mqtts_addr = Some(a.parse().expect("mqtts address")),
                Ok(("admin", a)) => p.admin_addr = a.parse().expect("admin address"),
                Ok((_, token)) => p.admin_token = Some(token),
                Err(_) => {
                    let status = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                    let log = p.log();
                    panic!("broker did not start (exit: {status:?}); log:\n{log}");
                }
            }
        }
        p
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Sends a signal by name (e.g. "HUP") to the broker process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill9(mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.pid().to_string()])
            .status();
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("broker did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh PostgreSQL database for one test, as a connection string, from
/// the server in `MIDGE_TEST_PG` (set by scripts/test.sh, e.g.
/// "host=127.0.0.1 port=15432 user=postgres"). `None` (test skipped) when
/// unset outside CI; a panic under CI=true.
pub fn pg_database(prefix: &str) -> Option<String> {
    let Ok(base) = std::env::var("MIDGE_TEST_PG") else {
        crate::missing_tool("PostgreSQL: MIDGE_TEST_PG is not set (scripts/test.sh starts one)");
        return None;
    };
    let name = crate::unique(prefix)
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!("{base} dbname=postgres"))
        .args(["-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "CREATE DATABASE failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(format!("{base} dbname={name}"))
}
