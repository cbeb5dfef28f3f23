//! Durable sessions across restarts and crashes, for both backends.
//!
//! The broker runs as its own process (`midge serve`), so `kill -9` is a real
//! crash. Publishers are rumqttc (3.1.1) clients that record which messages
//! were acknowledged (PUBACK / PUBCOMP); subscribers are paho-mqtt (Python)
//! durable clients (clean session 0), which keep their QoS 2 receive state
//! across reconnects, so exactly-once is observable. PostgreSQL is the server
//! scripts/test.sh starts (`MIDGE_TEST_PG`), one fresh database per test.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use midge_e2e::process::{pg_database, BrokerProcess};
use midge_e2e::*;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sled,
    Postgres,
}

/// A config file for `backend` in `dir`; `None` when PostgreSQL is not available.
fn write_config(dir: &Path, backend: Backend, extra: &str) -> Option<PathBuf> {
    let store = match backend {
        Backend::Sled => format!(
            "backend = \"sled\"\ndata_dir = {:?}\n",
            dir.join("data").display().to_string()
        ),
        Backend::Postgres => {
            let url = pg_database("midge_persist")?;
            format!("backend = \"postgres\"\npostgres_url = {url:?}\n")
        }
    };
    let path = dir.join("midge.toml");
    std::fs::write(
        &path,
        format!("[log]\nlevel = \"warn\"\n\n[persistence]\nenabled = true\n{store}{extra}"),
    )
    .unwrap();
    Some(path)
}

fn paho_ok() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        missing_tool("python3 with paho-mqtt >= 2 (pip install paho-mqtt)");
    }
    ok
}

/// A running durable_sub.py; its stdout lines are collected.
struct PahoSub {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl PahoSub {
    fn spawn(port: u16, id: &str, filter: &str, qos: u8, mode: &str) -> PahoSub {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/durable_sub.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .args([&port.to_string(), id, filter, &qos.to_string(), mode, "90"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python3");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        let reader = tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(line)) = r.next_line().await {
                l.lock().unwrap().push(line);
            }
        });
        PahoSub {
            child,
            lines,
            reader,
        }
    }

    /// Waits (bounded) until a line satisfies `f`.
    async fn wait_line(&self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.lines.lock().unwrap().iter().any(|l| f(l)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; lines: {:?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) for the script to exit successfully; returns its lines.
    async fn finish(mut self, what: &str) -> Vec<String> {
        let status = tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{what}: subscriber did not finish"))
            .unwrap();
        let _ = tokio::time::timeout(WAIT, &mut self.reader).await;
        let lines = self.lines.lock().unwrap().clone();
        assert!(
            status.success(),
            "{what}: subscriber failed; lines: {lines:?}"
        );
        lines
    }
}

/// Sequence numbers of the messages in `lines` ("m <seq>"), in arrival order.
fn received(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("m "))
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Publishes "0", "1", ... to `topic` until the broker goes away (or `max`),
/// returning the sequence numbers the broker acknowledged (PUBACK for QoS 1,
/// PUBCOMP for QoS 2).
async fn publish_until_gone(port: u16, topic: String, qos: QoS, max: u64) -> Vec<u64> {
    let mut opts = MqttOptions::new(unique("pub"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_inflight(32);
    let (client, mut el) = AsyncClient::new(opts, 64);
    let feeder = tokio::spawn(async move {
        for seq in 0..max {
            if client
                .publish(topic.as_str(), qos, false, seq.to_string())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut next_seq = 0u64;
    let mut by_pkid: HashMap<u16, u64> = HashMap::new();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                // Requests go out in the order they were made.
                by_pkid.insert(pkid, next_seq);
                next_seq += 1;
            }
            Ok(Ok(Event::Incoming(Incoming::PubAck(a)))) if qos == QoS::AtLeastOnce => {
                acked.extend(by_pkid.remove(&a.pkid));
            }
            Ok(Ok(Event::Incoming(Incoming::PubComp(a)))) if qos == QoS::ExactlyOnce => {
                acked.extend(by_pkid.remove(&a.pkid));
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
        if acked.len() as u64 == max {
            break;
        }
    }
    feeder.abort();
    acked
}

/// Publishes one message with rumqttc and waits for its acknowledgement.
async fn publish_one(port: u16, topic: &str, qos: QoS, retain: bool, payload: &str) {
    let mut opts = MqttOptions::new(unique("one"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    let mut c = V4::start(opts);
    c.connack().await;
    c.publish(topic, qos, retain, payload.as_bytes().to_vec())
        .await;
    c.disconnect().await;
}

/// Checks what one durable subscriber got against what was acknowledged.
fn check_delivery(who: &str, got: &[u64], acked: &[u64], qos: QoS) {
    let set: HashSet<u64> = got.iter().copied().collect();
    let missing: Vec<u64> = acked.iter().filter(|s| !set.contains(s)).copied().collect();
    assert!(
        missing.is_empty(),
        "{who}: {} acknowledged messages never delivered (first: {:?}); got {} messages",
        missing.len(),
        &missing[..missing.len().min(10)],
        got.len()
    );
    if qos == QoS::ExactlyOnce {
        assert_eq!(
            set.len(),
            got.len(),
            "{who}: a QoS 2 message was delivered twice"
        );
    }
    // In order per publisher and topic: first deliveries are increasing
    // (QoS 1 redeliveries after the crash may repeat earlier ones).
    let mut seen = HashSet::new();
    let firsts: Vec<u64> = got.iter().copied().filter(|s| seen.insert(*s)).collect();
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "{who}: out of order: {:?}",
        firsts.windows(2).find(|w| w[0] >= w[1])
    );
}

/// The crash test: two durable subscribers (one online, one offline), a
/// retained message, a publisher under sustained load, `kill -9` mid-load,
/// restart on the same data, and every acknowledged message delivered.
async fn crash_during_load(backend: Backend, qos: QoS) {
    if !paho_ok() {
        return;
    }
    let dir = tempfile_dir();
    let Some(cfg) = write_config(dir.path(), backend, "") else {
        return;
    };
    let q = qos as u8;
    let b1 = BrokerProcess::start(&cfg, 0);
    let port = b1.port();
    let topic = topic("load");
    let on_id = unique("sub-on");
    let off_id = unique("sub-off");
    for id in [&on_id, &off_id] {
        let lines = PahoSub::spawn(port, id, &topic, q, "setup")
            .finish("setup")
            .await;
        assert!(lines.iter().any(|l| l == &format!("s [{q}]")), "{lines:?}");
    }
    let online = PahoSub::spawn(port, &on_id, &topic, q, "run");
    online
        .wait_line("online CONNACK", |l| l == "c 1 Success")
        .await;
    let retained_topic = format!("{topic}-retained");
    publish_one(port, &retained_topic, QoS::AtLeastOnce, true, "kept").await;

    // Sustained load; kill -9 once a good number of messages were acknowledged.
    let publisher = tokio::spawn(publish_until_gone(port, topic.clone(), qos, 200_000));
    online
        .wait_line("deliveries under load", |l| {
            l.strip_prefix("m ")
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s >= 2000)
        })
        .await;
    b1.kill9();
    let acked = within("publisher to notice the crash", publisher)
        .await
        .unwrap();
    assert!(acked.len() >= 1000, "only {} acknowledged", acked.len());

    let b2 = BrokerProcess::start(&cfg, port);
    let offline = PahoSub::spawn(port, &off_id, &topic, q, "run");
    offline
        .wait_line("offline CONNACK", |l| l.starts_with("c "))
        .await;
    // Published after the restart: it follows every restored message.
    publish_one(port, &topic, qos, false, "end").await;
    let on_lines = online.finish("online subscriber").await;
    let off_lines = offline.finish("offline subscriber").await;
    assert_eq!(
        off_lines
            .iter()
            .filter(|l| l.starts_with("c "))
            .collect::<Vec<_>>(),
        vec!["c 1 Success"],
        "the offline subscriber's session (and subscription) came back"
    );
    assert!(
        on_lines
            .iter()
            .filter(|l| l.starts_with("c "))
            .all(|l| l == "c 1 Success"),
        "every reconnect of the online subscriber found its session: {:?}",
        on_lines
            .iter()
            .filter(|l| l.starts_with("c "))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "{backend:?} {qos:?}: {} acknowledged before the crash; online subscriber got {}, offline {}",
        acked.len(),
        received(&on_lines).len(),
        received(&off_lines).len()
    );
    check_delivery("online subscriber", &received(&on_lines), &acked, qos);
    check_delivery("offline subscriber", &received(&off_lines), &acked, qos);

    // The retained message is back.
    let mut c = V4::new_at(port).await;
    c.subscribe(&retained_topic, QoS::AtLeastOnce).await;
    let p = c.next_publish().await;
    assert_eq!(p.payload.as_ref(), b"kept");
    assert!(p.retain);
    c.disconnect().await;
    let status = b2.terminate();
    assert!(status.success(), "graceful exit: {status:?}");
}

fn tempfile_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("midge-persist-")
        .tempdir()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_kill9_during_qos1_load_loses_nothing_acknowledged() {
    crash_during_load(Backend::Sled, QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_kill9_during_qos2_load_delivers_exactly_once() {
    crash_during_load(Backend::Sled, QoS::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill9_during_qos1_load_loses_nothing_acknowledged() {
    crash_during_load(Backend::Postgres, QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill9_during_qos2_load_delivers_exactly_once() {
    crash_during_load(Backend::Postgres, QoS::ExactlyOnce).await;
}
