//! Nothing lost across crashes: `kill -9` of the remote (Mosquitto) while
//! 10,000 QoS 1 messages cross the bridge, and `kill -9` of Midge itself
//! (a `midge serve` process with persistence on) under load, QoS 1 and 2.
//!
//! When Midge is killed (the remote being Mosquitto, or for QoS 2 also
//! another Midge process), the remote's subscriber is paho-mqtt
//! (durable_sub.py: clean session 0, reconnecting, QoS 2 receive state
//! kept), so what arrives is seen by an implementation that is not ours.
//!
//! When the remote is killed, what it acknowledged but had not yet passed on
//! dies with it (Mosquitto acknowledges on receipt and saves to disk once a
//! second): that is the remote's loss, not the bridge's. So the load is
//! paced (2,000 messages/s) and the remote's subscriber is a fast rumqttc
//! client: Mosquitto hands each message to its subscriber's socket before it
//! acknowledges it, and that subscriber never falls far behind. Mosquitto
//! runs with persistence (saved every second) so the subscriber's session
//! survives the crash. The same test against a Midge remote (whose
//! acknowledgement means "stored") needs no pacing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use midge_e2e::mosquitto::Mosquitto;
use midge_e2e::process::BrokerProcess;
use midge_e2e::*;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};

use super::{bridges, linked};
use crate::persistence::{
    check_delivery, paho_ok, publish_one, publish_until_gone, received, tempfile_dir, PahoSub,
};

/// Topics the load goes to, round robin: message `seq` to `load/{seq % 4}`.
const TOPICS: u64 = 4;

fn bridge_toml(port: u16, client_id: &str, qos: u8) -> String {
    format!(
        r#"
[[bridges]]
name = "cloud"
remote = "mqtt://127.0.0.1:{port}"
client_id = "{client_id}"
[bridges.reconnect]
initial_ms = 100
max_ms = 500
jitter = 0.0
[[bridges.out]]
filter = "load/#"
add_prefix = "site1/"
qos = {qos}
"#
    )
}

/// Publishes `n` messages (payload = sequence number) round robin to
/// `load/0..4` and waits for every acknowledgement; returns them in order.
async fn publish_round_robin(port: u16, qos: QoS, n: u64, paced: bool) -> Vec<u64> {
    let mut opts = MqttOptions::new(unique("pub"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_inflight(64);
    let (client, mut el) = AsyncClient::new(opts, 128);
    let feeder = tokio::spawn(async move {
        for seq in 0..n {
            let topic = format!("load/{}", seq % TOPICS);
            if client
                .publish(topic, qos, false, seq.to_string())
                .await
                .is_err()
            {
                break;
            }
            if paced && seq % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let mut next = 0u64;
    let mut by_pkid: HashMap<u16, u64> = HashMap::new();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (acked.len() as u64) < n {
        assert!(Instant::now() < deadline, "publishing took over 120 s");
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                by_pkid.insert(pkid, next);
                next += 1;
            }
            Ok(Ok(Event::Incoming(Incoming::PubAck(a)))) => acked.extend(by_pkid.remove(&a.pkid)),
            Ok(Ok(Event::Incoming(Incoming::PubComp(a)))) => acked.extend(by_pkid.remove(&a.pkid)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher lost the broker: {e}"),
            Err(_) => panic!("publisher stalled for 10 s"),
        }
    }
    feeder.abort();
    acked
}

/// A durable paho subscriber at the remote on 127.0.0.1:`port`, set up
/// (subscribed) and running.
async fn remote_subscriber(port: u16, qos: u8) -> PahoSub {
    let id = unique("far");
    let lines = PahoSub::spawn(port, &id, "site1/#", qos, "setup")
        .finish("remote subscriber setup")
        .await;
    assert!(
        lines.iter().any(|l| l == &format!("s [{qos}]")),
        "{lines:?}"
    );
    let sub = PahoSub::spawn(port, &id, "site1/#", qos, "run");
    sub.wait_line("remote subscriber CONNACK", |l| l.starts_with("c 1"))
        .await;
    sub
}

/// A durable rumqttc 3.1.1 subscriber to `site1/#` at 127.0.0.1:`port`
/// that reconnects whenever the broker goes away and records the payloads
/// (sequence numbers) in arrival order.
struct Collector {
    got: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(port: u16) -> Collector {
        let mut opts = MqttOptions::new(unique("far"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(false);
        let (client, mut el) = AsyncClient::new(opts, 16);
        client.subscribe("site1/#", QoS::AtLeastOnce).await.unwrap();
        within("the remote subscriber's SUBACK", async {
            loop {
                if let Ok(Event::Incoming(Incoming::SubAck(_))) = el.poll().await {
                    return;
                }
            }
        })
        .await;
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        let task = tokio::spawn(async move {
            let _keep = client;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        if let Some(seq) = std::str::from_utf8(&p.payload)
                            .ok()
                            .and_then(|s| s.parse().ok())
                        {
                            g.lock().unwrap().push(seq);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Collector { got, task }
    }

    fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits (bounded) until every one of `0..n` arrived; returns all.
    async fn all(self, n: u64) -> Vec<u64> {
        let got = self.got.clone();
        let distinct = move || {
            let g = got.lock().unwrap();
            g.iter()
                .copied()
                .collect::<std::collections::HashSet<u64>>()
                .len() as u64
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while distinct() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.task.abort();
        let v = self.got.lock().unwrap().clone();
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_killed_during_10000_qos1_messages_all_arrive_in_order() {
    let Some(mut remote) = Mosquitto::start_persistent("") else {
        return;
    };
    let far = Collector::start(remote.port).await;
    // Mosquitto saves every second: let it save that subscription.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cfg = bridge_toml(remote.port, &unique("edge"), 1);
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    linked(&b, "cloud").await;
    let port = b.port();
    let publisher = tokio::spawn(publish_round_robin(port, QoS::AtLeastOnce, 10_000, true));
    super::wait_until("3000 messages at the remote", 60, || far.len() >= 3000).await;
    remote.kill9();
    let bridge = b.bridges.get("cloud").unwrap().clone();
    super::wait_until("the bridge to see the remote gone", 20, || {
        !bridge.status.is_connected()
    })
    .await;
    // Down for a while: the publisher goes on, the bridge buffers.
    tokio::time::sleep(Duration::from_millis(700)).await;
    remote.restart();
    let acked = within_secs(120, "every publish acknowledged by Midge", publisher)
        .await
        .unwrap();
    assert_eq!(acked.len(), 10_000);
    let got = far.all(10_000).await;
    eprintln!(
        "remote kill -9: {} deliveries of 10000 messages at the remote; bridge reconnects: {}",
        got.len(),
        bridge
            .status
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        bridge
            .status
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "the bridge reconnected"
    );
    check_delivery("remote subscriber", &got, &acked, QoS::AtLeastOnce);
    b.shutdown().await;
}

/// `fut`, bounded by `secs` seconds.
async fn within_secs<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s waiting for {what}"),
    }
}

/// The remote of [`midge_killed_under_load`]: Mosquitto, or another Midge.
enum Remote {
    Mosquitto(Mosquitto),
    Midge(BrokerProcess),
}

impl Remote {
    fn port(&self) -> u16 {
        match self {
            Remote::Mosquitto(m) => m.port,
            Remote::Midge(p) => p.port(),
        }
    }
}

/// `kill -9` of a persistent Midge (sled, or PostgreSQL with `postgres`)
/// under load, restart on the same store: everything Midge acknowledged
/// reaches the remote (Mosquitto, or a Midge process with `midge_remote`),
/// QoS 2 exactly once.
async fn midge_killed_under_load(qos: QoS, postgres: bool, midge_remote: bool) {
    if !paho_ok() {
        return;
    }
    // The broker binary, built now if needed (a blocking build, minutes
    // under load): not while the remote subscriber's own timeout runs.
    let _ = midge_e2e::process::midge_bin();
    let dir = tempfile_dir();
    let remote = if midge_remote {
        let file = dir.path().join("remote.toml");
        std::fs::write(&file, "[log]\nlevel = \"warn\"\n").unwrap();
        Remote::Midge(BrokerProcess::start(&file, 0))
    } else {
        let Some(m) = Mosquitto::start("") else {
            return;
        };
        Remote::Mosquitto(m)
    };
    let q = qos as u8;
    let store = if postgres {
        let Some(url) = midge_e2e::process::pg_database("midge_bridge") else {
            return;
        };
        format!("backend = \"postgres\"\npostgres_url = {url:?}\n")
    } else {
        format!(
            "data_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        )
    };
    let far = remote_subscriber(remote.port(), q).await;
    let file = dir.path().join("midge.toml");
    std::fs::write(
        &file,
        format!(
            "[log]\nlevel = \"warn\"\n[persistence]\nenabled = true\n{store}{}",
            bridge_toml(remote.port(), &unique("edge"), q)
        ),
    )
    .unwrap();
    let m1 = BrokerProcess::start(&file, 0);
    let port = m1.port();
    let publisher = tokio::spawn(publish_until_gone(port, "load/0".to_string(), qos, 10_000));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !far.lines().iter().any(|l| {
        l.strip_prefix("m ")
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s >= 2000)
    }) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for 2000 messages at the remote ({} lines); Midge's log:\n{}",
            far.lines().len(),
            m1.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m1.kill9();
    let acked = within("the publisher to notice the crash", publisher)
        .await
        .unwrap();
    assert!(acked.len() >= 1000, "only {} acknowledged", acked.len());
    let m2 = BrokerProcess::start(&file, port);
    // Published after the restart: it follows everything restored.
    publish_one(port, "load/0", qos, false, "end").await;
    let lines = far.finish("remote subscriber").await;
    let got = received(&lines);
    eprintln!(
        "Midge kill -9 ({qos:?}, postgres: {postgres}, remote Midge: {midge_remote}): {} acknowledged before the crash, {} deliveries at the remote",
        acked.len(),
        got.len()
    );
    check_delivery("remote subscriber", &got, &acked, qos);
    let status = m2.terminate();
    assert!(status.success(), "graceful exit: {status:?}");
    drop(remote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn midge_killed_during_qos1_load_loses_nothing_acknowledged() {
    midge_killed_under_load(QoS::AtLeastOnce, false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn midge_on_postgres_killed_during_qos1_load_loses_nothing_acknowledged() {
    midge_killed_under_load(QoS::AtLeastOnce, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn midge_killed_during_qos2_load_delivers_exactly_once() {
    midge_killed_under_load(QoS::ExactlyOnce, false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn midge_killed_during_qos2_load_to_a_midge_remote_delivers_exactly_once() {
    // Midge to Midge: the remote keeps the bridge's session (and its QoS 2
    // receive state) while the edge is killed and restarted.
    midge_killed_under_load(QoS::ExactlyOnce, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_midge_killed_during_10000_qos1_messages_all_arrive_in_order() {
    // The remote: a persistent Midge process, whose PUBACK means "stored
    // in the subscriber's queue": unpaced load, and still nothing lost.
    let dir = tempfile_dir();
    let file = dir.path().join("remote.toml");
    std::fs::write(
        &file,
        format!(
            "[log]\nlevel = \"warn\"\n[persistence]\nenabled = true\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    midge_e2e::process::midge_bin();
    let r1 = BrokerProcess::start(&file, 0);
    let rport = r1.port();
    let far = Collector::start(rport).await;
    let cfg = bridge_toml(rport, &unique("edge"), 1);
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    linked(&b, "cloud").await;
    let publisher = tokio::spawn(publish_round_robin(
        b.port(),
        QoS::AtLeastOnce,
        10_000,
        false,
    ));
    super::wait_until("3000 messages at the remote", 60, || far.len() >= 3000).await;
    r1.kill9();
    let bridge = b.bridges.get("cloud").unwrap().clone();
    super::wait_until("the bridge to see the remote gone", 20, || {
        !bridge.status.is_connected()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r2 = BrokerProcess::start(&file, rport);
    let acked = within_secs(120, "every publish acknowledged by Midge", publisher)
        .await
        .unwrap();
    assert_eq!(acked.len(), 10_000);
    let got = far.all(10_000).await;
    eprintln!(
        "remote Midge kill -9: {} deliveries of 10000 messages at the remote",
        got.len()
    );
    check_delivery("remote subscriber", &got, &acked, QoS::AtLeastOnce);
    b.shutdown().await;
    drop(r2);
}
