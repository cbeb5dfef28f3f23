//! A real Mosquitto broker (Debian's `mosquitto`, installed by
//! scripts/test.sh) as the remote of the bridge tests and the peer of
//! bench/bridge.sh: started with its own config on a free loopback port,
//! stopped (or `kill -9`ed) by its PID, restartable on the same port with the
//! same persistence directory.
//!
//! The config follows what the project learned about Mosquitto under load:
//! `set_tcp_nodelay true` and large `max_queued_messages` /
//! `max_inflight_messages`, or it silently drops QoS 1 messages.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::TempDir;

/// The `mosquitto` binary: on the PATH, or Debian's /usr/sbin/mosquitto
/// (not on a non-root PATH).
pub fn binary() -> &'static str {
    static BIN: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let runs = |b: &str| {
            Command::new(b)
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        if runs("mosquitto") {
            "mosquitto"
        } else {
            "/usr/sbin/mosquitto"
        }
    })
}

/// Is the `mosquitto` broker installed? (Skips the caller's test outside CI.)
pub fn available() -> bool {
    Command::new(binary())
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A free TCP port on 127.0.0.1 (bound and released: the broker started on
/// it right after has it to itself in practice).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A running Mosquitto. Killed by its PID when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    conf: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Mosquitto {
    /// Starts Mosquitto on a free port with `extra` config lines (TLS
    /// options, another listener, ...) after the defaults; `None` when it is
    /// not installed (a panic under CI=true).
    pub fn start(extra: &str) -> Option<Mosquitto> {
        Mosquitto::start_with(free_port(), false, extra)
    }

    /// Like [`Mosquitto::start`], with persistence on (saved every second):
    /// sessions and subscriptions survive a `kill -9` once saved.
    pub fn start_persistent(extra: &str) -> Option<Mosquitto> {
        Mosquitto::start_with(free_port(), true, extra)
    }

    /// Like [`Mosquitto::start`], on `port` (a remote that was unreachable
    /// appears).
    pub fn start_on(port: u16, extra: &str) -> Option<Mosquitto> {
        Mosquitto::start_with(port, false, extra)
    }

    fn start_with(port: u16, persist: bool, extra: &str) -> Option<Mosquitto> {
        if !available() {
            crate::missing_tool("mosquitto (apt-get install mosquitto; scripts/test.sh does)");
            return None;
        }
        let dir = TempDir::new("midge-mosquitto");
        let conf = dir.0.join("mosquitto.conf");
        let persistence = if persist {
            format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.0.display()
            )
        } else {
            "persistence false\n".to_string()
        };
        let text = format!(
            "# Written by the Midge tests.\n\
             user root\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             set_tcp_nodelay true\n\
             max_queued_messages 2000000\n\
             max_inflight_messages 0\n\
             max_queued_bytes 0\n\
             {persistence}\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             {extra}\n"
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
            conf,
            log: Arc::new(Mutex::new(String::new())),
        };
        m.spawn();
        Some(m)
    }

    /// A file path inside this broker's own directory (for certificates).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    fn spawn(&mut self) {
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = log.lock().unwrap_or_else(|e| e.into_inner());
                g.push_str(&line);
                g.push('\n');
            }
        });
        self.child = Some(child);
        // Up once it accepts a TCP connection (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("mosquitto exited at start ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {} within 10 s; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything Mosquitto logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `kill -9` by PID; no shutdown code runs (nothing saved since the
    /// last autosave).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-9", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same config and directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill9();
    }
}
