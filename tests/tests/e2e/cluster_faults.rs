//! The cluster under takeovers and faults: sessions moving between nodes,
//! two nodes racing for one client id, `kill -9` of a Midge node and of a
//! nats-server under load, every NATS server stopped and started again, and
//! clients going through HAProxy. Tests that harm NATS start their own
//! 3-server cluster ([`NatsCluster`]); the others share scripts/test.sh's.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use midge_e2e::nats::{shared_urls, Haproxy, MidgeCluster, NatsCluster};
use midge_e2e::*;
use rumqttc::QoS;
use std::sync::atomic::AtomicBool;

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
/// counting each PUBACK in `acked`, until the connection fails.
async fn qos1_load(port: u16, topic: &'static str, acked: Arc<AtomicU64>) {
    qos1_load_from(port, topic, acked, 0, Arc::default()).await
}

/// [`qos1_load`] starting at `first`, until `stop` is set (or the
/// connection fails).
async fn qos1_load_from(
    port: u16,
    topic: &'static str,
    acked: Arc<AtomicU64>,
    first: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut p = connect_retry(port).await;
    for i in first.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if p.client
            .publish(topic, QoS::AtLeastOnce, false, i.to_string())
            .await
            .is_err()
        {
            return;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(30), p.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))))) => break,
                Ok(Some(Ok(_))) => {}
                _ => return,
            }
        }
        acked.fetch_add(1, Ordering::SeqCst);
    }
}

/// Connects a clean client to `port`, retrying for up to 20 s (a balancer
/// may still send the first attempts to a node that just died).
async fn connect_retry(port: u16) -> V4 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = V4::start(opts(port, &unique("loader"), true));
        loop {
            match tokio::time::timeout(WAIT, c.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)))))
                    if a.code == rumqttc::ConnectReturnCode::Success =>
                {
                    return c
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection to port {port} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn opts(port: u16, id: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_to_another_node_with_its_queued_messages() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2) = (c.start("n1"), c.start("n2"));
    let id = unique("mover");
    let (mut s, ack) = V4::connect(opts(n1.port(), &id, false)).await;
    assert!(!ack.session_present);
    s.subscribe("tk/#", QoS::AtLeastOnce).await;
    settle(n2.port(), &mut s, "tk/probe").await;
    s.disconnect().await;
    // Offline on n1: published on n2, queued on n1.
    let mut p = V4::new_at(n2.port()).await;
    for i in 0..5 {
        p.publish(&format!("tk/{i}"), QoS::AtLeastOnce, false, format!("q{i}"))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client comes back on n2: the session (subscription and queue) moves.
    let (mut s2, ack) = V4::connect(opts(n2.port(), &id, false)).await;
    assert!(ack.session_present, "session taken over from n1");
    for i in 0..5 {
        let m = s2.next_publish().await;
        assert_eq!(
            (m.topic.as_str(), text(&m.payload)),
            (format!("tk/{i}").as_str(), format!("q{i}"))
        );
    }
    // Its subscription now lives on n2: a publish on n1 reaches it.
    let mut p1 = V4::new_at(n1.port()).await;
    p1.publish("tk/after", QoS::AtLeastOnce, false, "a").await;
    assert_eq!(s2.next_publish().await.topic, "tk/after");
    // n1 forgot it: none of its own clients, and asked for it, n1 shows
    // n2's.
    let admin1 = http::Admin::of_process(&n1);
    let mine = admin1
        .get(&format!("/api/v1/clients?clientid_like={id}"))
        .await;
    assert_eq!(mine["meta"]["count"], 0, "{mine}");
    let v = admin1
        .get(&format!("/api/v1/clients/{}", http::encode_segment(&id)))
        .await;
    assert_eq!(v["node"], "n2", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_connection_is_taken_over_with_0x8e() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2) = (c.start("n1"), c.start("n2"));
    let id = unique("live");
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let (mut old, _) = raw::RawClient::handshake(addr(n1.port()), raw::ConnectOpts::v5(&id)).await;
    let (mut new, _) = raw::RawClient::handshake(addr(n2.port()), raw::ConnectOpts::v5(&id)).await;
    old.expect_disconnect(0x8E).await;
    assert!(new.ping().await.is_empty(), "the new connection lives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_connects_from_two_nodes_leave_one_connection_100_times() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2) = (c.start("n1"), c.start("n2"));
    let (p1, p2) = (n1.port(), n2.port());
    let mut rounds = tokio::task::JoinSet::new();
    let done = Arc::new(tokio::sync::Semaphore::new(10));
    for round in 0..100 {
        let permit = done.clone().acquire_owned().await.unwrap();
        rounds.spawn(async move {
            let id = unique(&format!("race{round}"));
            let mut a = V4::start(opts(p1, &id, true));
            let mut b = V4::start(opts(p2, &id, true));
            let (ra, rb) = tokio::join!(a.connack(), b.connack());
            assert_eq!(ra.code, rumqttc::ConnectReturnCode::Success);
            assert_eq!(rb.code, rumqttc::ConnectReturnCode::Success);
            // Within a bound, exactly one of them is closed.
            let (ca, cb) = tokio::join!(
                tokio::time::timeout(Duration::from_secs(3), a.closed()),
                tokio::time::timeout(Duration::from_secs(3), b.closed()),
            );
            drop(permit);
            assert!(
                ca.is_ok() ^ cb.is_ok(),
                "round {round}: exactly one connection closed (a closed: {}, b closed: {})",
                ca.is_ok(),
                cb.is_ok()
            );
        });
    }
    while let Some(r) = rounds.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_node_under_qos1_load_loses_nothing_acked_and_its_wills_fire_once() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2, n3) = (c.start("n1"), c.start("n2"), c.start("n3"));
    // Subscribers on n2 and n3, for the load and the will.
    let mut sub = V4::new_at(n2.port()).await;
    sub.subscribe("ld/#", QoS::AtLeastOnce).await;
    settle(n1.port(), &mut sub, "ld/probe").await;
    let mut wills2 = V4::new_at(n2.port()).await;
    wills2.subscribe("wl/#", QoS::AtLeastOnce).await;
    let mut wills3 = V4::new_at(n3.port()).await;
    wills3.subscribe("wl/#", QoS::AtLeastOnce).await;
    settle(n1.port(), &mut wills3, "wl/probe").await;
    while tokio::time::timeout(Duration::from_millis(300), wills2.next_publish())
        .await
        .is_ok()
    {}
    // A client with a will on n1.
    let mut wo = opts(n1.port(), &unique("willer"), true);
    wo.set_last_will(rumqttc::LastWill::new(
        "wl/gone",
        "bye",
        QoS::AtLeastOnce,
        false,
    ));
    let (_willer, _) = V4::connect(wo).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Sustained QoS 1 publishing on n1, counting PUBACKs.
    let acked = Arc::new(AtomicU64::new(0));
    let a = acked.clone();
    let port = n1.port();
    let load = tokio::spawn(qos1_load(port, "ld/x", a));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    n1.kill9();
    let _ = load.await;
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked > 10, "load ran ({acked} acked)");
    // Every acknowledged message reached the subscriber on n2, in order.
    for i in 0..acked {
        let m = sub.next_publish().await;
        assert_eq!(text(&m.payload), i.to_string(), "message {i} of {acked}");
    }
    // The will fires once cluster-wide (after the node timeout): each
    // subscriber gets exactly one copy.
    for s in [&mut wills2, &mut wills3] {
        let m = tokio::time::timeout(Duration::from_secs(15), s.next_publish())
            .await
            .expect("the dead node's client's will");
        assert_eq!(
            (m.topic.as_str(), text(&m.payload).as_str()),
            ("wl/gone", "bye")
        );
    }
    wills2.expect_no_publish(Duration::from_secs(2)).await;
    wills3.expect_no_publish(QUIET).await;
}

/// Receives until every number in `0..n` arrived (duplicates allowed, as QoS
/// 1 allows them after a retry); panics naming the first missing one.
async fn receive_all(sub: &mut V4, n: u64, within: Duration) {
    let mut seen = vec![false; n as usize];
    let mut left = n;
    let deadline = tokio::time::Instant::now() + within;
    while left > 0 {
        // The raw event stream, not `next_publish` (which gives up after
        // 5 s): the whole `within` is the bound, a pause while JetStream
        // elects a new leader is not a loss.
        let got = tokio::time::timeout_at(deadline, sub.events.recv()).await;
        let m = match got {
            Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(m))))) => m,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("subscriber's connection failed: {e}"),
            Ok(None) | Err(_) => {
                let first = seen.iter().position(|s| !s).unwrap_or(0);
                panic!("{left} of {n} acknowledged messages never arrived (first: {first})");
            }
        };
        if let Ok(i) = text(&m.payload).parse::<u64>() {
            if i < n && !seen[i as usize] {
                seen[i as usize] = true;
                left -= 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_nats_server_under_load_loses_nothing_acked() {
    let Some(mut nats) = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .unwrap()
    else {
        return;
    };
    let c = MidgeCluster::new(&nats.urls(), "");
    let (n1, n2) = (c.start("n1"), c.start("n2"));
    let mut sub = V4::new_at(n2.port()).await;
    sub.subscribe("nl/#", QoS::AtLeastOnce).await;
    settle(n1.port(), &mut sub, "nl/probe").await;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(qos1_load_from(
        n1.port(),
        "nl/x",
        acked.clone(),
        0,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = acked.load(Ordering::SeqCst);
    nats.kill9(0);
    // Service goes on: more messages are acknowledged after the kill.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < before + 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing stalled after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = load.await;
    let n = acked.load(Ordering::SeqCst);
    receive_all(&mut sub, n, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nats_servers_stopped_and_started_again() {
    let Some(mut nats) = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .unwrap()
    else {
        return;
    };
    let c = MidgeCluster::new(&nats.urls(), "");
    let (n1, n2) = (c.start("n1"), c.start("n2"));
    let mut sub = V4::new_at(n2.port()).await;
    sub.subscribe("ns/#", QoS::AtLeastOnce).await;
    settle(n1.port(), &mut sub, "ns/probe").await;
    let mut local = V4::new_at(n1.port()).await;
    local.subscribe("loc/#", QoS::AtMostOnce).await;
    for i in 0..3 {
        nats.stop(i);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Local clients are still served.
    let mut lp = V4::new_at(n1.port()).await;
    lp.publish("loc/1", QoS::AtMostOnce, false, "here").await;
    assert_eq!(text(&local.next_publish().await.payload), "here");
    // A session it cannot fence is refused (3.1.1: code 3, server unavailable).
    let mut refused = V4::start(opts(n1.port(), &unique("persist"), false));
    let err = refused.closed().await;
    assert!(err.contains("ServiceUnavailable"), "CONNACK refusal: {err}");
    // A QoS 1 publish is held (not acknowledged) while NATS is away...
    let (mut held, _) = V4::connect(opts(n1.port(), &unique("held"), true)).await;
    held.client
        .publish("ns/held", QoS::AtLeastOnce, false, "kept")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        nats.restart(i);
    }
    let _nats = tokio::task::spawn_blocking(move || {
        nats.wait_healthy(Duration::from_secs(60));
        nats
    })
    .await
    .unwrap();
    // ...and acknowledged once NATS is back, and delivered on the other node.
    held.wait("PUBACK after NATS came back", |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
    })
    .await;
    let m = tokio::time::timeout(Duration::from_secs(30), sub.next_publish())
        .await
        .expect("the held message crossed once NATS was back");
    assert_eq!(
        (m.topic.as_str(), text(&m.payload).as_str()),
        ("ns/held", "kept")
    );
    // Cross-node traffic flows again.
    let mut p = V4::new_at(n1.port()).await;
    p.publish("ns/after", QoS::AtLeastOnce, false, "again")
        .await;
    loop {
        let m = sub.next_publish().await;
        if m.topic == "ns/after" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_haproxy_the_publishers_node_dies_and_nothing_acked_is_lost() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let nodes = [c.start("n1"), c.start("n2")];
    let Some(lb) = tokio::task::spawn_blocking({
        let ports = [nodes[0].port(), nodes[1].port()];
        move || Haproxy::start(&ports)
    })
    .await
    .unwrap() else {
        return;
    };
    // leastconn: the subscriber lands on one node, the publisher on the other.
    let mut sub = V4::new_at(lb.port).await;
    sub.subscribe("hp/#", QoS::AtLeastOnce).await;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Which node has the subscriber?
    let mut on = None;
    for (i, n) in nodes.iter().enumerate() {
        let v = http::Admin::of_process(n).get("/api/v1/clients").await;
        if v["data"].as_array().is_some_and(|a| !a.is_empty()) {
            on = Some(i);
        }
    }
    let sub_node = on.expect("the subscriber is on a node");
    let pub_node = 1 - sub_node;
    settle(nodes[pub_node].port(), &mut sub, "hp/probe").await;
    let load = tokio::spawn(qos1_load_from(
        lb.port,
        "hp/x",
        acked.clone(),
        0,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Kill the node the publisher went to (it is the one without the subscriber).
    let [a, b] = nodes;
    let (survivor, victim) = if pub_node == 0 { (b, a) } else { (a, b) };
    victim.kill9();
    let _ = load.await;
    let first = acked.load(Ordering::SeqCst);
    assert!(first > 10, "load ran before the kill ({first} acked)");
    // The publisher reconnects through HAProxy (to the survivor) and goes on.
    let more = Arc::new(AtomicU64::new(0));
    let stop2 = Arc::new(AtomicBool::new(false));
    let load2 = tokio::spawn(qos1_load_from(
        lb.port,
        "hp/x",
        more.clone(),
        first,
        stop2.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while more.load(Ordering::SeqCst) < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publishing through HAProxy after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop2.store(true, Ordering::SeqCst);
    let _ = load2.await;
    stop.store(true, Ordering::SeqCst);
    let total = first + more.load(Ordering::SeqCst);
    receive_all(&mut sub, total, Duration::from_secs(30)).await;
    drop(survivor);
}

/// A node started while JetStream has no quorum (one server of three up)
/// waits for it instead of exiting: its setup requests time out, are tried
/// again (said in its log), and succeed once a second server is back; then
/// it serves. (A fresh NATS cluster still electing its leader is the same
/// case, and once made a node exit at start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_jetstream_has_a_quorum_waits_for_it() {
    let Some(mut nats) = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .unwrap()
    else {
        return;
    };
    // The broker binary is built (when it is stale) before the clock starts.
    tokio::task::spawn_blocking(midge_e2e::process::midge_bin)
        .await
        .unwrap();
    nats.stop(1);
    nats.stop(2);
    let c = MidgeCluster::new(&nats.urls(), "connect_timeout_ms = 60000");
    let config = c.config("n1");
    let starting =
        tokio::task::spawn_blocking(move || midge_e2e::process::BrokerProcess::start(&config, 0));
    // Longer than the request timeout (3 s): the setup has timed out at
    // least once before the quorum comes back.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !starting.is_finished(),
        "the node started without a JetStream quorum"
    );
    nats.restart(1);
    let n1 = starting.await.unwrap();
    assert!(
        n1.log()
            .contains("JetStream not answering yet at start; trying again"),
        "no retry in the log:\n{}",
        n1.log()
    );
    let mut sub = V4::new_at(n1.port()).await;
    sub.subscribe("quorum/#", QoS::AtLeastOnce).await;
    let mut publisher = V4::new_at(n1.port()).await;
    publisher
        .publish("quorum/1", QoS::AtLeastOnce, false, "after the wait")
        .await;
    assert_eq!(text(&sub.next_publish().await.payload), "after the wait");
}
