//! Persistent sessions that survive their node: the node holding a session
//! is killed (`kill -9`) and the client resumes it on another node, with
//! every message acknowledged to its publisher delivered (rumqttc, and
//! mosquitto_sub as an independent client).

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use midge_e2e::nats::{shared_urls, MidgeCluster};
use midge_e2e::*;
use rumqttc::QoS;

fn opts(port: u16, id: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o
}

/// Publishes QoS 0 probes on `probe` at `port` until `sub` gets one: the
/// node at `port` then knows the subscriber's node wants the filter.
async fn settle(port: u16, sub: &mut V4, probe: &str) {
    let mut p = V4::new_at(port).await;
    for _ in 0..100 {
        p.publish(probe, QoS::AtMostOnce, false, "probe").await;
        if tokio::time::timeout(Duration::from_millis(100), sub.next_publish())
            .await
            .is_ok()
        {
            while tokio::time::timeout(Duration::from_millis(200), sub.next_publish())
                .await
                .is_ok()
            {}
            p.disconnect().await;
            return;
        }
    }
    panic!("interest never reached the node on port {port}");
}

/// Publishes 0, 1, 2, ... (QoS 1) on `topic` at `port`, one at a time,
/// counting each PUBACK in `acked`, until `stop` is set.
async fn qos1_load(port: u16, topic: &'static str, acked: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut p = V4::new_at(port).await;
    for i in 0u64.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        p.client
            .publish(topic, QoS::AtLeastOnce, false, i.to_string())
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(30), p.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))))) => break,
                Ok(Some(Ok(_))) => {}
                other => panic!("publisher's connection failed: {other:?}"),
            }
        }
        acked.fetch_add(1, Ordering::SeqCst);
    }
}

/// Collects the numbers `sub` receives on `topic` until its connection fails.
async fn collect(mut sub: V4, topic: &'static str, got: Arc<Mutex<HashSet<u64>>>) {
    loop {
        match sub.events.recv().await {
            Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(m)))) if m.topic == topic => {
                if let Ok(i) = text(&m.payload).parse::<u64>() {
                    got.lock().unwrap().insert(i);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_sessions_node_under_load_resumes_it_elsewhere_with_nothing_acked_lost() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2, n3) = (c.start("n1"), c.start("n2"), c.start("n3"));
    let (p2, p3) = (n2.port(), n3.port());
    let id = unique("survivor");
    // A persistent session on n1, publishers on n3.
    let (mut s, ack) = V4::connect(opts(n1.port(), &id, false)).await;
    assert!(!ack.session_present);
    s.subscribe("ks/#", QoS::AtLeastOnce).await;
    settle(p3, &mut s, "ks/probe").await;
    let got = Arc::new(Mutex::new(HashSet::new()));
    let reader = tokio::spawn(collect(s, "ks/x", got.clone()));
    let (acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = tokio::spawn(qos1_load(p3, "ks/x", acked.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    n1.kill9();
    let _ = reader.await;
    let before = got.lock().unwrap().len();
    // Publishing goes on while the session's node is dead.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let n = acked.load(Ordering::SeqCst);
    assert!(
        n > 20 && before > 0 && (before as u64) < n,
        "load ran past the kill ({n} acked, {before} received on n1)"
    );
    // The client comes back on n2: its session is there.
    let (mut s2, ack) = V4::connect(opts(p2, &id, false)).await;
    assert!(ack.session_present, "session resumed on n2 from its record");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<u64> = {
            let g = got.lock().unwrap();
            (0..n).filter(|i| !g.contains(i)).collect()
        };
        if missing.is_empty() {
            break;
        }
        let m = match tokio::time::timeout_at(deadline, s2.events.recv()).await {
            Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(m))))) => m,
            Ok(Some(Ok(_))) => continue,
            other => panic!(
                "{} of {n} acknowledged messages never arrived (first {:?}; {before} came before the kill): {other:?}",
                missing.len(),
                missing.first()
            ),
        };
        if m.topic == "ks/x" {
            if let Ok(i) = text(&m.payload).parse::<u64>() {
                got.lock().unwrap().insert(i);
            }
        }
    }
    // Its subscription lives on n2 now: a new publish on n3 reaches it.
    let mut p = V4::new_at(p3).await;
    p.publish("ks/after", QoS::AtLeastOnce, false, "a").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, s2.next_publish())
            .await
            .expect("a publish after the resume");
        if m.topic == "ks/after" {
            break;
        }
    }
}

fn mosquitto_available() -> bool {
    ["mosquitto_sub"]
        .iter()
        .all(|t| std::process::Command::new(t).arg("--help").output().is_ok())
}

fn mosquitto_sub(port: u16, id: &str, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("mosquitto_sub");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311"])
        .args(["-i", id, "-c", "-q", "1", "-t", "km/#", "-v"])
        .args(args);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_resumes_its_offline_session_after_kill9_of_its_node() {
    let Some(urls) = shared_urls() else { return };
    if !mosquitto_available() {
        missing_tool("mosquitto_sub (apt-get install mosquitto-clients)");
        return;
    }
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2, n3) = (c.start("n1"), c.start("n2"), c.start("n3"));
    let id = unique("msurv");
    // mosquitto_sub makes a persistent session on n1 and leaves (-E: exit
    // once subscribed).
    let o = run_command(
        mosquitto_sub(n1.port(), &id, &["-E"]),
        Duration::from_secs(20),
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // n3 learns that n1 wants km/# (a probe subscriber beside it).
    let mut probe = V4::new_at(n1.port()).await;
    probe.subscribe("km/#", QoS::AtMostOnce).await;
    settle(n3.port(), &mut probe, "km/probe").await;
    probe.disconnect().await;
    // Published on n3 and acknowledged while the session is offline on n1.
    let mut p = V4::new_at(n3.port()).await;
    for i in 0..30 {
        p.publish("km/x", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    n1.kill9();
    // mosquitto_sub comes back on n2 and gets all 30.
    let o = run_command(
        mosquitto_sub(n2.port(), &id, &["-C", "30", "-W", "30"]),
        Duration::from_secs(40),
    )
    .await;
    let out = String::from_utf8_lossy(&o.stdout);
    let got: HashSet<&str> = out.lines().collect();
    let missing: Vec<String> = (0..30)
        .map(|i| format!("km/x m{i}"))
        .filter(|l| !got.contains(l.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}\nstdout:\n{out}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_session_taken_over_live_by_another_node_with_0x8e() {
    let Some(urls) = shared_urls() else { return };
    if std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing_tool("python3 with paho-mqtt");
        return;
    }
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2, n3) = (c.start("n1"), c.start("n2"), c.start("n3"));
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let mut child = tokio::process::Command::new("python3")
        .arg(dir.join("cluster_takeover.py"))
        .arg(n1.port().to_string())
        .arg(n2.port().to_string())
        .arg(unique("ptk"))
        .arg("10")
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the takeover within 30 s")
        .unwrap();
    if first.as_deref() != Some("taken over") {
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "paho takeover failed: {first:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // n3 learns that n2 wants pt/# now, then publishes there.
    let mut probe = V4::new_at(n2.port()).await;
    probe.subscribe("pt/#", QoS::AtMostOnce).await;
    settle(n3.port(), &mut probe, "pt/probe").await;
    let mut p = V4::new_at(n3.port()).await;
    for i in 0..10 {
        p.publish(&format!("pt/{i}"), QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let mut got = Vec::new();
    while got.len() < 10 {
        match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
            Ok(Ok(Some(l))) => got.push(l),
            other => panic!("paho subscriber stopped after {got:?}: {other:?}"),
        }
    }
    let want: Vec<String> = (0..10).map(|i| format!("pt/{i} m{i}")).collect();
    assert_eq!(got, want);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("paho script ended")
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_client_and_session_views_name_the_node_of_each() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2) = (c.start("n1"), c.start("n2"));
    let tag = unique("cv");
    let (a1, b1, b2) = (
        format!("{tag}-a1"),
        format!("{tag}-b1"),
        format!("{tag}-b2"),
    );
    let (_ca1, _) = V4::connect(opts(n1.port(), &a1, false)).await;
    let (_cb1, _) = V4::connect(opts(n2.port(), &b1, true)).await;
    let (cb2, _) = V4::connect(opts(n2.port(), &b2, false)).await;
    cb2.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (admin1, admin2) = (http::Admin::of_process(&n1), http::Admin::of_process(&n2));
    let rows = |v: &serde_json::Value| -> Vec<(String, String, bool)> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["clientid"].as_str().unwrap().to_string(),
                    c["node"].as_str().unwrap().to_string(),
                    c["connected"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    // Cluster-wide from n1: every node's clients, sorted, each with its node.
    let v = admin1
        .get(&format!(
            "/api/v1/clients?scope=cluster&clientid_like={tag}"
        ))
        .await;
    assert_eq!(
        rows(&v),
        vec![
            (a1.clone(), "n1".to_string(), true),
            (b1.clone(), "n2".to_string(), true),
            (b2.clone(), "n2".to_string(), false),
        ],
        "{v}"
    );
    assert_eq!(v["meta"]["count"], 3, "{v}");
    assert_eq!(v["meta"]["unreachable"], serde_json::json!([]), "{v}");
    // Filters and paging apply cluster-wide.
    let v = admin1
        .get(&format!(
            "/api/v1/clients?scope=cluster&clientid_like={tag}&connected=false"
        ))
        .await;
    assert_eq!(rows(&v), vec![(b2.clone(), "n2".to_string(), false)], "{v}");
    let v = admin1
        .get(&format!(
            "/api/v1/clients?scope=cluster&clientid_like={tag}&limit=1&page=2"
        ))
        .await;
    assert_eq!(rows(&v), vec![(b1.clone(), "n2".to_string(), true)], "{v}");
    assert_eq!(v["meta"]["count"], 3, "{v}");
    // Sessions from n2 the same way; this node's own view stays local.
    let v = admin2.get("/api/v1/sessions?scope=cluster").await;
    let ids: Vec<String> = rows(&v)
        .into_iter()
        .filter(|r| r.0.starts_with(&tag))
        .map(|r| format!("{}@{}", r.0, r.1))
        .collect();
    assert_eq!(
        ids,
        vec![format!("{a1}@n1"), format!("{b1}@n2"), format!("{b2}@n2")]
    );
    let v = admin1
        .get(&format!("/api/v1/clients?clientid_like={tag}"))
        .await;
    assert_eq!(rows(&v), vec![(a1.clone(), "n1".to_string(), true)], "{v}");
    let r = admin1
        .call("GET", "/api/v1/clients?scope=everywhere", None)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("scope"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_live_takeovers_under_load_lose_nothing_acked() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2, n3) = (c.start("n1"), c.start("n2"), c.start("n3"));
    let ports = [n1.port(), n2.port()];
    let id = unique("mover");
    let (mut s, _) = V4::connect(opts(ports[0], &id, false)).await;
    s.subscribe("mv/#", QoS::AtLeastOnce).await;
    settle(n3.port(), &mut s, "mv/probe").await;
    let got = Arc::new(Mutex::new(HashSet::new()));
    let mut readers = vec![tokio::spawn(collect(s, "mv/x", got.clone()))];
    let (acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = tokio::spawn(qos1_load(n3.port(), "mv/x", acked.clone(), stop.clone()));
    // The client moves between n1 and n2 while n3 publishes.
    for round in 1..=6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (s, ack) = V4::connect(opts(ports[round % 2], &id, false)).await;
        assert!(ack.session_present, "round {round}: session moved");
        readers.push(tokio::spawn(collect(s, "mv/x", got.clone())));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let n = acked.load(Ordering::SeqCst);
    assert!(n > 20, "load ran ({n} acked)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let missing: Vec<u64> = {
            let g = got.lock().unwrap();
            (0..n).filter(|i| !g.contains(i)).collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} acknowledged messages never arrived across the takeovers: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for r in readers {
        r.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_offline_session_past_its_expiry_is_not_resumed() {
    use midge_e2e::raw::{disconnect, ConnectOpts, Prop, RawClient};
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2) = (c.start("n1"), c.start("n2"));
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    // Two sessions offline on n1: one expiring after 1 s, one after 1 h.
    let (short, long) = (unique("short"), unique("long"));
    for (id, expiry) in [(&short, 1), (&long, 3600)] {
        let (mut s, ack) = RawClient::handshake(
            addr(n1.port()),
            ConnectOpts::v5(id)
                .clean(false)
                .prop(Prop::session_expiry(expiry)),
        )
        .await;
        assert!(!ack.session_present);
        s.subscribe(1, &[], &[("ex/#", 1)]).await;
        s.send(&disconnect(true, 0, &[])).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    n1.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let connect = |id: &String| {
        RawClient::handshake(
            addr(n2.port()),
            ConnectOpts::v5(id)
                .clean(false)
                .prop(Prop::session_expiry(60)),
        )
    };
    let (_s, ack) = connect(&long).await;
    assert!(ack.session_present, "the 1 h session resumed on n2");
    let (_s, ack) = connect(&short).await;
    assert!(
        !ack.session_present,
        "the 1 s session expired with its node"
    );
}

/// Publishes 0, 1, 2, ... (QoS 2) on `topic` at `port`, one at a time,
/// counting each PUBCOMP in `done`, until `stop` is set.
async fn qos2_load(port: u16, topic: &'static str, done: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut p = V4::new_at(port).await;
    for i in 0u64.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        p.client
            .publish(topic, QoS::ExactlyOnce, false, i.to_string())
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(30), p.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_))))) => break,
                Ok(Some(Ok(_))) => {}
                other => panic!("publisher's connection failed: {other:?}"),
            }
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
}

/// QoS 2 exactly once across `kill -9` of the subscriber's node: a
/// persistent 5.0 paho subscriber (which delivers a QoS 2 message on its
/// PUBREL and keeps its receive state across reconnects) on n1, a QoS 2
/// publisher on n2; n1 dies mid-stream and the subscriber moves to n2.
/// Every completed publish arrives once: none lost, none delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_exactly_once_for_a_paho_v5_subscriber_across_kill9_of_its_node() {
    let Some(urls) = shared_urls() else { return };
    if std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing_tool("python3 with paho-mqtt");
        return;
    }
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2, _n3) = (c.start("n1"), c.start("n2"), c.start("n3"));
    let p2 = n2.port();
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let mut child = tokio::process::Command::new("python3")
        .arg(dir.join("cluster_qos2_failover.py"))
        .arg(n1.port().to_string())
        .arg(p2.to_string())
        .arg(unique("eo"))
        .arg("eo/#")
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
            Ok(Ok(Some(l))) if l == "ready" => break,
            Ok(Ok(Some(l))) => got.lock().unwrap().push(l),
            other => panic!("paho subscriber not ready: {other:?}"),
        }
    }
    let reader = {
        let got = got.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                got.lock().unwrap().push(l);
            }
        })
    };
    let (done, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = tokio::spawn(qos2_load(p2, "eo/x", done.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    n1.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let n = done.load(Ordering::SeqCst);
    let mut p = V4::new_at(p2).await;
    p.publish("eo/x", QoS::ExactlyOnce, false, "end").await;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("paho subscriber ends")
        .unwrap();
    let _ = reader.await;
    let got = got.lock().unwrap().clone();
    let mut count = std::collections::HashMap::<u64, usize>::new();
    for l in &got {
        if let Some(i) = l.strip_prefix("m ").and_then(|v| v.parse::<u64>().ok()) {
            *count.entry(i).or_default() += 1;
        }
    }
    let missing: Vec<u64> = (0..n).filter(|i| !count.contains_key(i)).collect();
    let twice: Vec<(u64, usize)> = count
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(i, c)| (*i, *c))
        .collect();
    let moved = got.iter().any(|l| l.starts_with("c 1"));
    assert!(
        status.success() && moved,
        "subscriber resumed on n2 with its session: {got:?}"
    );
    assert!(n > 20, "the load ran ({n} completed)");
    assert!(
        missing.is_empty() && twice.is_empty(),
        "of {n} completed QoS 2 publishes: missing {missing:?}, delivered more than once {twice:?}"
    );
}

/// Sessions of dead nodes expired by `nodes`, summed over them.
async fn dead_sessions_expired(nodes: &[&midge_e2e::process::BrokerProcess]) -> f64 {
    let mut n = 0.0;
    for p in nodes {
        let t = http::Admin::of_process(p)
            .call("GET", "/metrics", None)
            .await
            .text();
        n += http::sample(&t, "midge_cluster_dead_node_sessions_expired_total");
    }
    n
}

/// A dead node's clients, cluster-wide: three mosquitto_sub clients (5.0,
/// persistent, with wills) are connected to n1 when it is killed (`kill
/// -9`), with session expiries of 4 s, 1 h and 3 s (the last with a will
/// delay of 1 h). Each will reaches the rumqttc subscribers on n2 and n3
/// exactly once, the 1 h-delay one when its 3 s session ends; the 3 s and
/// 4 s sessions expire that long after the death was noticed, not before
/// (each record deleted by exactly one node), and a client coming back
/// with such an id finds no session, while the 1 h session still resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_wills_fire_once_and_its_sessions_expire_on_schedule() {
    use midge_e2e::raw::{ConnectOpts, Prop, RawClient};
    let Some(urls) = shared_urls() else { return };
    if !mosquitto_available() {
        missing_tool("mosquitto_sub (apt-get install mosquitto-clients)");
        return;
    }
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2, n3) = (c.start("n1"), c.start("n2"), c.start("n3"));
    let mut wills2 = V4::new_at(n2.port()).await;
    wills2.subscribe("dw/#", QoS::AtLeastOnce).await;
    let mut wills3 = V4::new_at(n3.port()).await;
    wills3.subscribe("dw/#", QoS::AtLeastOnce).await;
    settle(n1.port(), &mut wills3, "dw/probe").await;
    while tokio::time::timeout(Duration::from_millis(300), wills2.next_publish())
        .await
        .is_ok()
    {}
    let (short, long, capped) = (unique("dwshort"), unique("dwlong"), unique("dwcap"));
    let admin1 = http::Admin::of_process(&n1);
    let mut subs = Vec::new();
    // `capped`: a 1 h will delay, a 3 s session: its will comes when the
    // session ends (MQTT 5.0 3.1.3.2.2), 3 s after the death is noticed.
    for (id, expiry, delay) in [
        (&short, "4", None),
        (&long, "3600", None),
        (&capped, "3", Some("3600")),
    ] {
        let child = tokio::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &n1.port().to_string()])
            .args(["-V", "mqttv5", "-i", id.as_str(), "-c", "-x", expiry])
            .args(["-q", "1", "-t", "dwx/#"])
            .args([
                "--will-topic",
                &format!("dw/{id}"),
                "--will-payload",
                "gone",
            ])
            .args(["--will-qos", "1"])
            .args(delay.map_or(vec![], |d| vec!["-D", "will", "will-delay-interval", d]))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        subs.push(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = admin1
                .call("GET", &format!("/api/v1/clients/{id}"), None)
                .await;
            if r.status == 200 && r.json()["connected"] == true {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto_sub {id} never connected to n1: {} {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The session and will records reach the cluster.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    n1.kill9();
    for s in &mut subs {
        let _ = s.start_kill();
    }
    // Each will once on each subscriber (after the node timeout).
    let want: HashSet<(String, String)> = [&short, &long]
        .iter()
        .map(|id| (format!("dw/{id}"), "gone".to_string()))
        .collect();
    for s in [&mut wills2, &mut wills3] {
        let mut got = HashSet::new();
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(15), s.next_publish())
                .await
                .expect("the wills of the dead node's clients");
            assert!(
                got.insert((m.topic.clone(), text(&m.payload))),
                "a will came twice: {}",
                m.topic
            );
        }
        assert_eq!(got, want);
    }
    let alive = [&n2, &n3];
    let expired = || dead_sessions_expired(&alive);
    // The death was just noticed (the wills fired): nothing expired yet.
    assert_eq!(expired().await, 0.0, "a session expired before its time");
    wills2.expect_no_publish(Duration::from_secs(1)).await;
    wills3.expect_no_publish(QUIET).await;
    // The capped will: when its 3 s session ends, not after its 1 h delay;
    // once, on each subscriber.
    for s in [&mut wills2, &mut wills3] {
        let m = tokio::time::timeout(Duration::from_secs(15), s.next_publish())
            .await
            .expect("the will whose delay outlasts its session, when the session ends");
        assert_eq!(m.topic, format!("dw/{capped}"));
        s.expect_no_publish(QUIET).await;
    }
    // The 3 s and 4 s sessions expire, each on one node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while expired().await < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 3 s and 4 s sessions of the dead node never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        expired().await,
        2.0,
        "two sessions expired, each by one node"
    );
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let connect = |id: &String| {
        RawClient::handshake(
            addr(n2.port()),
            ConnectOpts::v5(id)
                .clean(false)
                .prop(Prop::session_expiry(60)),
        )
    };
    let (_s, ack) = connect(&short).await;
    assert!(!ack.session_present, "the 4 s session is gone");
    let (_s, ack) = connect(&capped).await;
    assert!(!ack.session_present, "the 3 s session is gone");
    let (_s, ack) = connect(&long).await;
    assert!(ack.session_present, "the 1 h session resumed on n2");
}

/// rumqttc 5.0 options: clean start off, session expiry 300 s.
fn persistent_v5(id: &str, port: u16) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(false);
    o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(300),
        ..Default::default()
    });
    o
}

/// One client through any node's admin API: a 5.0 client connected to n2 is shown by n1 and n3 with n2's name; DELETE on n1
/// kicks it on n2 (it gets DISCONNECT 0x98 Administrative action) and its
/// session is gone from every node (and from the cluster's records: back
/// on n3, rumqttc finds none); an unknown client id is 404 everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_shown_and_kicked_through_any_nodes_admin_api() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2, n3) = (c.start("n1"), c.start("n2"), c.start("n3"));
    use midge_e2e::raw::{ConnectOpts, Prop, RawClient};
    let id = unique("kickfar");
    let (mut client, _) = RawClient::handshake(
        std::net::SocketAddr::from(([127, 0, 0, 1], n2.port())),
        ConnectOpts::v5(&id)
            .clean(false)
            .prop(Prop::session_expiry(300)),
    )
    .await;
    let (a1, a2, a3) = (
        http::Admin::of_process(&n1),
        http::Admin::of_process(&n2),
        http::Admin::of_process(&n3),
    );
    for a in [&a1, &a2, &a3] {
        let v = a.get(&format!("/api/v1/clients/{id}")).await;
        assert_eq!(v["clientid"], id.as_str(), "{v}");
        assert_eq!(v["node"], "n2", "{v}");
        assert_eq!(v["connected"], true, "{v}");
        assert_eq!(v["proto_ver"], 5, "{v}");
        assert_eq!(v["expiry_interval"], 300, "{v}");
    }
    let nobody = unique("nobody");
    for a in [&a1, &a3] {
        let r = a
            .call("GET", &format!("/api/v1/clients/{nobody}"), None)
            .await;
        assert_eq!(r.status, 404, "{}", r.text());
        assert!(r.text().contains(&nobody), "{}", r.text());
        let r = a
            .call("DELETE", &format!("/api/v1/clients/{nobody}"), None)
            .await;
        assert_eq!(r.status, 404, "{}", r.text());
    }
    // Kicked from n1: the client, on n2, gets 0x98.
    let r = a1
        .call("DELETE", &format!("/api/v1/clients/{id}"), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    client.expect_disconnect(0x98).await;
    for a in [&a1, &a2, &a3] {
        let r = a.call("GET", &format!("/api/v1/clients/{id}"), None).await;
        assert_eq!(r.status, 404, "{}", r.text());
    }
    // Discarded cluster-wide: coming back on n3, it finds no session.
    let (_back, ack) = V5::connect(persistent_v5(&id, n3.port())).await;
    assert!(!ack.session_present, "the kicked session was discarded");
}
