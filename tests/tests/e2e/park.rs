//! Parked connections (`[limits] park_after`, broker/src/server/park.rs):
//! an idle connection's loop is freed and the connection waits parked.
//! Everything must work as for a connection that never parked: deliveries
//! (QoS 0, 1, 2, queued behind a full window), both sides of the QoS 1/2
//! handshakes, keep-alive expiry, takeover, admin kick, will on socket
//! close, shutdown; with rumqttc, the raw codec, mosquitto_sub/pub, over
//! TCP and WebSocket. The brokers here park after 1 s, and each test waits
//! until the connections it is about are parked (the broker's gauge, also
//! `midge_connections_parked`) before it acts on them.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use midge_e2e::http::Admin;
use midge_e2e::raw::*;
use midge_e2e::*;

async fn parking_broker() -> TestBroker {
    start_broker(|c| {
        c.limits.park_after = 1;
        // No $SYS: nothing but the tests' own traffic.
        c.sys.interval = 0;
    })
    .await
}

/// Waits (bounded) until exactly `n` connections are parked.
async fn parked(b: &TestBroker, n: u64) {
    let gauge = &b.broker.stats.connections_parked;
    within(&format!("{n} parked connections"), async {
        while gauge.load(Ordering::Relaxed) != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Waits (bounded) until the broker holds `n` subscriptions.
async fn subscriptions(b: &TestBroker, n: usize) {
    within(&format!("{n} subscriptions"), async {
        while b.broker.client_counts().2 != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_subscriber_gets_qos_0_1_2() {
    let b = parking_broker().await;
    let t = topic("park");
    let mut sub = V4::new(&b, "parked-sub").await;
    sub.subscribe(&t, rumqttc::QoS::ExactlyOnce).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("pub"))).await;
    parked(&b, 2).await;
    for (qos, pid) in [(0u8, 0u16), (1, 1), (2, 2)] {
        let payload = format!("m{qos}");
        // The publisher wakes with its PUBLISH, the subscriber with the delivery.
        p.publish(&t, qos, false, pid, &[], payload.as_bytes())
            .await;
        let m = sub.next_publish().await;
        assert_eq!(m.qos as u8, qos);
        assert_eq!(&m.payload[..], payload.as_bytes());
        // Both park again before the next one.
        parked(&b, 2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_and_queued_messages_across_parking() {
    let b = parking_broker().await;
    let t = topic("park-q");
    // Receive Maximum 1: the second and third messages wait in the session's queue.
    let opts = ConnectOpts::v5(&unique("sub")).prop(Prop::receive_maximum(1));
    let (mut sub, _) = RawClient::handshake(b.addr, opts).await;
    sub.subscribe(1, &[], &[(&t, 2)]).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("pub"))).await;
    parked(&b, 2).await;
    for i in 1..=3u16 {
        p.publish(&t, 1, false, i, &[], format!("q{i}").as_bytes())
            .await;
    }
    // Each PUBACK, sent by a parked client, frees the window for the next.
    for i in 1..=3 {
        let m = sub.recv_publish().await;
        assert_eq!(
            (m.qos, m.payload.clone()),
            (1, format!("q{i}").into_bytes())
        );
        parked(&b, 2).await;
        sub.send(&puback(m.pid)).await;
    }
    // QoS 2 to the parked subscriber: each step of its side after a park.
    parked(&b, 2).await;
    p.publish(&t, 2, false, 9, &[], b"two").await;
    let m = sub.recv_publish().await;
    assert_eq!((m.qos, &m.payload[..]), (2, &b"two"[..]));
    parked(&b, 2).await;
    sub.send(&pubrec(m.pid)).await;
    let rel = sub.recv_kind(PUBREL).await.ack();
    assert_eq!(rel.pid, m.pid);
    parked(&b, 2).await;
    sub.send(&pubcomp(m.pid)).await;
    // QoS 2 from a parked publisher: its PUBREL after a park.
    let other = topic("park-nobody");
    p.send(&publish(false, &other, 2, false, false, 10, &[], b"in"))
        .await;
    assert_eq!(p.recv_kind(PUBREC).await.ack().pid, 10);
    parked(&b, 2).await;
    p.send(&pubrel(10)).await;
    assert_eq!(p.recv_kind(PUBCOMP).await.ack().pid, 10);
    // Nothing else came, and nothing is left in flight or queued.
    assert!(sub.ping().await.is_empty());
    assert!(p.ping().await.is_empty());
    let s = b.broker.sessions();
    assert!(s.iter().all(|s| {
        let st = s.state.lock();
        st.inflight.is_empty() && st.queue.is_empty()
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_silent_client_closed_after_one_and_a_half_keep_alive_with_its_will() {
    let b = parking_broker().await;
    let t = topic("park-will");
    let mut watch = V4::new(&b, "watch").await;
    watch.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    let will = RawWill {
        topic: t.clone(),
        payload: b"silent".to_vec(),
        qos: 1,
        retain: false,
        props: vec![],
    };
    let opts = ConnectOpts::v5(&unique("ka")).keep_alive(2).will(will);
    let (mut c, _) = RawClient::handshake(b.addr, opts).await;
    let start = Instant::now();
    parked(&b, 2).await;
    c.expect_disconnect(0x8D).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2900),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(4500),
        "closed too late: {elapsed:?}"
    );
    assert_eq!(&watch.next_publish().await.payload[..], b"silent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_client_that_pings_stays_connected() {
    let b = parking_broker().await;
    let opts = ConnectOpts::v4(&unique("ka")).keep_alive(2);
    let (mut c, _) = RawClient::handshake(b.addr, opts).await;
    // Each ping comes about 2.2 s after the last one (the deadline is
    // 3 s), sent to a parked connection: 6.6 s in all.
    for _ in 0..3 {
        parked(&b, 1).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(c.ping().await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connection_is_taken_over_and_its_session_goes_on() {
    let b = parking_broker().await;
    let id = unique("takeover");
    let t = topic("takeover");
    let opts = || {
        ConnectOpts::v5(&id)
            .clean(false)
            .prop(Prop::session_expiry(60))
    };
    let (mut old, _) = RawClient::handshake(b.addr, opts()).await;
    old.subscribe(1, &[], &[(&t, 1)]).await;
    parked(&b, 1).await;
    let (mut new, ack) = RawClient::handshake(b.addr, opts()).await;
    assert!(ack.session_present);
    old.expect_disconnect(0x8E).await;
    // 3.1.1 with rumqttc: the same.
    let id4 = unique("takeover4");
    let o4 = rumqttc::MqttOptions::new(id4.clone(), "127.0.0.1", b.port());
    let (mut old4, _) = V4::connect(o4.clone()).await;
    parked(&b, 2).await;
    let (_new4, _) = V4::connect(o4).await;
    old4.closed().await;
    // The session taken over (and its subscription) serves the new connection.
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, "after")
        .await;
    assert_eq!(new.recv_publish().await.payload, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_clients_are_kicked_by_the_admin_api() {
    let b = parking_broker().await;
    let a = Admin::of(&b);
    let id5 = unique("kick5");
    let (mut c5, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&id5)).await;
    let id4 = unique("kick4");
    let (mut c4, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&id4)).await;
    parked(&b, 2).await;
    let (status, _) = a
        .send("DELETE", &format!("/api/v1/clients/{id5}"), None)
        .await;
    assert_eq!(status, 204);
    c5.expect_disconnect(0x98).await;
    let (status, _) = a
        .send("DELETE", &format!("/api/v1/clients/{id4}"), None)
        .await;
    assert_eq!(status, 204);
    c4.expect_disconnect(0).await;
    parked(&b, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connection_closed_by_its_client_leaves_its_will() {
    let b = parking_broker().await;
    let t = topic("park-will");
    let mut watch = V4::new(&b, "watch").await;
    watch.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    let will = RawWill {
        topic: t.clone(),
        payload: b"gone".to_vec(),
        qos: 1,
        retain: false,
        props: vec![],
    };
    let (c, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("will")).will(will)).await;
    parked(&b, 2).await;
    drop(c);
    assert_eq!(&watch.next_publish().await.payload[..], b"gone");
    // A parked client that says DISCONNECT leaves none.
    let will = RawWill {
        topic: t.clone(),
        payload: b"not this".to_vec(),
        qos: 1,
        retain: false,
        props: vec![],
    };
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("bye")).will(will)).await;
    parked(&b, 2).await;
    c.send(&disconnect(false, 0, &[])).await;
    assert!(c.expect_closed().await.is_empty());
    watch.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_parked_connections_at_once() {
    let b = parking_broker().await;
    let (mut c5, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("down"))).await;
    let mut c4 = V4::new(&b, "down4").await;
    parked(&b, 2).await;
    let broker = b.broker.clone();
    let start = Instant::now();
    b.shutdown().await;
    // The shutdown waits up to 5 s for connections to detach: parked ones
    // must answer the kick, not run into that bound.
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    c5.expect_disconnect(0x8B).await;
    c4.closed().await;
    assert_eq!(broker.stats.connections_parked.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_websocket_subscriber_wakes_for_deliveries_and_its_own_packets() {
    let b = parking_broker().await;
    let t = topic("park-ws");
    let mut o = rumqttc::MqttOptions::new(unique("ws-sub"), b.ws_url(), b.ws_port());
    o.set_transport(rumqttc::Transport::Ws);
    o.set_keep_alive(Duration::from_secs(30));
    let (mut ws, _) = V4::connect(o).await;
    ws.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    let mut p = V4::new(&b, "tcp-pub").await;
    parked(&b, 2).await;
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, "to-parked-ws")
        .await;
    assert_eq!(&ws.next_publish().await.payload[..], b"to-parked-ws");
    parked(&b, 2).await;
    // Its own PUBLISH wakes it (the first byte read parked, the rest by the loop).
    ws.publish(&t, rumqttc::QoS::AtLeastOnce, false, "from-parked-ws")
        .await;
    assert_eq!(&ws.next_publish().await.payload[..], b"from-parked-ws");
}

fn mosquitto_tools() -> bool {
    ["mosquitto_pub", "mosquitto_sub"]
        .iter()
        .all(|t| Command::new(t).arg("--help").output().is_ok())
}

/// mosquitto_sub, parked, receives what mosquitto_pub sends, at each QoS
/// and in both protocol versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_parked_receives_from_mosquitto_pub() {
    if !mosquitto_tools() {
        missing_tool("mosquitto_pub / mosquitto_sub (apt-get install mosquitto-clients)");
        return;
    }
    let b = parking_broker().await;
    let port = b.port().to_string();
    for (version, qos) in [
        ("mqttv311", "1"),
        ("mqttv311", "2"),
        ("mqttv5", "0"),
        ("mqttv5", "2"),
    ] {
        let t = topic("park-mosq");
        let mut sub = Command::new("mosquitto_sub");
        sub.args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-t", &t])
            .args(["-q", qos, "-C", "1", "-W", "15", "-i", &unique("msub")]);
        let sub = tokio::spawn(run_command(sub, Duration::from_secs(20)));
        subscriptions(&b, 1).await;
        parked(&b, 1).await;
        let mut publ = Command::new("mosquitto_pub");
        publ.args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-t", &t])
            .args(["-q", qos, "-m", "to-parked", "-i", &unique("mpub")]);
        let o = run_command(publ, Duration::from_secs(10)).await;
        assert!(o.status.success(), "mosquitto_pub: {o:?}");
        let o = sub.await.unwrap();
        assert!(
            o.status.success(),
            "mosquitto_sub ({version}, QoS {qos}): {o:?}"
        );
        assert_eq!(text(&o.stdout).trim(), "to-parked");
        subscriptions(&b, 0).await;
    }
}
