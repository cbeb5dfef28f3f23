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

use midge_e2e::process::{self, pg_database, BrokerProcess};
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

pub(crate) fn paho_ok() -> bool {
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
pub(crate) struct PahoSub {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl PahoSub {
    pub(crate) fn spawn(port: u16, id: &str, filter: &str, qos: u8, mode: &str) -> PahoSub {
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

    /// The lines so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (bounded) until a line satisfies `f`.
    pub(crate) async fn wait_line(&self, what: &str, f: impl Fn(&str) -> bool) {
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
    pub(crate) async fn finish(mut self, what: &str) -> Vec<String> {
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
pub(crate) fn received(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("m "))
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Publishes "0", "1", ... to `topic` until the broker goes away (or `max`),
/// returning the sequence numbers the broker acknowledged (PUBACK for QoS 1,
/// PUBCOMP for QoS 2).
pub(crate) async fn publish_until_gone(port: u16, topic: String, qos: QoS, max: u64) -> Vec<u64> {
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
pub(crate) async fn publish_one(port: u16, topic: &str, qos: QoS, retain: bool, payload: &str) {
    let mut opts = MqttOptions::new(unique("one"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    let mut c = V4::start(opts);
    c.connack().await;
    c.publish(topic, qos, retain, payload.as_bytes().to_vec())
        .await;
    c.disconnect().await;
}

/// Checks what one durable subscriber got against what was acknowledged.
pub(crate) fn check_delivery(who: &str, got: &[u64], acked: &[u64], qos: QoS) {
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

pub(crate) fn tempfile_dir() -> tempfile::TempDir {
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

/// Graceful restart: what MQTT 5.0 sessions hold comes back exactly —
/// subscription options and identifiers, queued messages with their
/// remaining expiry (expired ones purged), a will waiting for its delay,
/// retained messages — and sessions that expired while the broker was down
/// are gone.
async fn graceful_restart(backend: Backend) {
    use midge_e2e::raw::*;
    let dir = tempfile_dir();
    let Some(cfg) = write_config(dir.path(), backend, "") else {
        return;
    };
    let b1 = BrokerProcess::start(&cfg, 0);
    let port = b1.port();
    let t = topic("graceful");
    let will_t = format!("{t}-will");
    let keep_id = unique("keep");
    let short_id = unique("short");

    // A durable subscriber: QoS 2 with identifier 7 and no-local.
    let (mut keep, ack) = RawClient::handshake(
        b1.addr,
        ConnectOpts::v5(&keep_id)
            .clean(false)
            .prop(Prop::session_expiry(3600)),
    )
    .await;
    assert!(!ack.session_present);
    let s = keep
        .subscribe(1, &[Prop::subscription_id(7)], &[(&format!("{t}/+"), 2)])
        .await;
    assert_eq!(s.codes, vec![2]);
    keep.send(&disconnect(true, 0, &[])).await;
    // A session that will have expired by the time the broker is back.
    let (mut short, _) = RawClient::handshake(
        b1.addr,
        ConnectOpts::v5(&short_id)
            .clean(false)
            .prop(Prop::session_expiry(1)),
    )
    .await;
    short.subscribe(1, &[], &[(&format!("{t}/+"), 1)]).await;
    short.send(&disconnect(true, 0, &[])).await;

    let (mut p, _) = RawClient::handshake(b1.addr, ConnectOpts::v5(&unique("p"))).await;
    let expiry = |s: u32| Prop::U32(prop::MESSAGE_EXPIRY_INTERVAL, s);
    p.publish(&format!("{t}/a"), 2, false, 1, &[expiry(3600)], b"first")
        .await;
    p.publish(&format!("{t}/a"), 1, false, 2, &[expiry(1)], b"expires")
        .await;
    p.publish(
        &format!("{t}/b"),
        1,
        false,
        3,
        &[Prop::user("k", "v")],
        b"second",
    )
    .await;
    p.publish(&format!("{t}/r"), 1, true, 4, &[], b"retained")
        .await;
    // A client with a 5 s will delay, still connected at shutdown.
    let (_w, _) = RawClient::handshake(
        b1.addr,
        ConnectOpts::v5(&unique("w"))
            .prop(Prop::session_expiry(60))
            .will(RawWill {
                topic: will_t.clone(),
                payload: b"late will".to_vec(),
                qos: 1,
                retain: false,
                props: vec![Prop::U32(prop::WILL_DELAY_INTERVAL, 5)],
            }),
    )
    .await;
    let stopped = Instant::now();
    let status = b1.terminate();
    assert!(status.success(), "graceful exit: {status:?}");
    // Let the 1 s message and the 1 s session expire while the broker is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let b2 = BrokerProcess::start(&cfg, port);
    let (mut watch, _) = RawClient::handshake(b2.addr, ConnectOpts::v5(&unique("watch"))).await;
    watch.subscribe(1, &[], &[(&will_t, 1)]).await;

    let (mut keep, ack) = RawClient::handshake(
        b2.addr,
        ConnectOpts::v5(&keep_id)
            .clean(false)
            .prop(Prop::session_expiry(3600)),
    )
    .await;
    assert!(ack.session_present, "the durable session is back");
    let m1 = keep.recv_publish().await;
    assert_eq!((m1.payload.as_slice(), m1.qos), (&b"first"[..], 2));
    assert_eq!(m1.props.subscription_ids(), vec![7]);
    let left = m1.props.num(prop::MESSAGE_EXPIRY_INTERVAL).unwrap();
    assert!(
        (3590..3600).contains(&left),
        "remaining expiry forwarded: {left}"
    );
    let m2 = keep.recv_publish().await;
    assert_eq!(m2.payload, b"second", "the 1 s message was purged");
    assert_eq!(m2.props.user_properties(), vec![("k".into(), "v".into())]);
    assert_eq!(m2.props.subscription_ids(), vec![7]);
    keep.send(&puback(m2.pid)).await;
    keep.send(&pubrec(m1.pid)).await;
    keep.recv_kind(PUBREL).await;
    keep.send(&pubcomp(m1.pid)).await;
    // The subscription itself is back: a new message is routed to it.
    p = RawClient::handshake(b2.addr, ConnectOpts::v5(&unique("p")))
        .await
        .0;
    p.publish(&format!("{t}/c"), 1, false, 1, &[], b"after")
        .await;
    let m3 = keep.recv_publish().await;
    assert_eq!((m3.payload.as_slice(), m3.qos), (&b"after"[..], 1));
    keep.send(&puback(m3.pid)).await;

    let (_, ack) = RawClient::handshake(
        b2.addr,
        ConnectOpts::v5(&short_id)
            .clean(false)
            .prop(Prop::session_expiry(1)),
    )
    .await;
    assert!(
        !ack.session_present,
        "a session expired while down is purged"
    );

    // The will fires 5 s after its client went away, across the restart.
    let w = watch.recv_within(Duration::from_secs(10)).await;
    let Recv::Packet(w) = w else {
        panic!("no will: {w:?}")
    };
    assert_eq!(w.publish(true).payload, b"late will");
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(4500),
        "will after {waited:?}"
    );

    let (mut r, _) = RawClient::handshake(b2.addr, ConnectOpts::v5(&unique("r"))).await;
    r.subscribe(1, &[], &[(&format!("{t}/r"), 1)]).await;
    let m = r.recv_publish().await;
    assert_eq!((m.payload.as_slice(), m.retain), (&b"retained"[..], true));
    let status = b2.terminate();
    assert!(status.success(), "graceful exit: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_graceful_restart_restores_sessions_queues_wills_and_retained() {
    graceful_restart(Backend::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_graceful_restart_restores_sessions_queues_wills_and_retained() {
    graceful_restart(Backend::Postgres).await;
}

/// The broker refuses to start over a store it cannot read, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_store_refuses_to_start_and_midge_store_repairs_it() {
    let dir = tempfile_dir();
    let Some(cfg) = write_config(dir.path(), Backend::Sled, "") else {
        return;
    };
    {
        let b = BrokerProcess::start(&cfg, 0);
        let (mut c, _) = midge_e2e::raw::RawClient::handshake(
            b.addr,
            midge_e2e::raw::ConnectOpts::v4("victim").clean(false),
        )
        .await;
        c.subscribe(1, &[], &[("x/#", 1)]).await;
        assert!(b.terminate().success());
    }
    // Damage the store behind the broker's back: a session record that does not decode.
    let data = dir.path().join("data");
    {
        // Midge creates sled stores with 8 MiB segments, and sled opens a
        // store only with the size it was created with.
        let db = sled::Config::new()
            .path(&data)
            .segment_size(8 << 20)
            .open()
            .unwrap();
        db.insert(b"svictim", &[1u8, 2, 3][..]).unwrap();
        db.flush().unwrap();
    }
    let out = std::process::Command::new(process::midge_bin())
        .args(["serve", "--no-ws", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&data.display().to_string()), "{err}");
    assert!(err.contains("session \"victim\" is corrupt"), "{err}");

    // The operator's way out: check names the record, export shows the rest,
    // repair deletes what does not decode, and the broker starts again.
    let store = |action: &str| {
        std::process::Command::new(process::midge_bin())
            .args(["store", action, "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let check = store("check");
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("session \"victim\" is corrupt"), "{err}");
    assert!(err.contains("1 corrupt"), "{err}");
    let export = store("export");
    let lines = String::from_utf8_lossy(&export.stdout);
    let sub: serde_json::Value = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "subscription")
        .unwrap_or_else(|| panic!("no subscription in the export: {lines}"));
    assert_eq!(sub["client_id"], "victim");
    assert_eq!(sub["filter"], "x/#");
    assert_eq!(sub["qos"], 1);
    assert!(store("repair").status.success());
    assert!(store("check").status.success());
    let b = BrokerProcess::start(&cfg, 0);
    let (_, ack) = midge_e2e::raw::RawClient::handshake(
        b.addr,
        midge_e2e::raw::ConnectOpts::v4("victim").clean(false),
    )
    .await;
    assert!(
        !ack.session_present,
        "the damaged session was dropped, not half-restored"
    );
    assert!(b.terminate().success());
}
