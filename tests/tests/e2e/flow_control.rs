//! Flow control: receive maximum both ways, maximum packet size both ways, slow subscribers.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use midge_e2e::raw::*;
use midge_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_exceeding_receive_maximum_gets_0x93() {
    let b = start_broker(|c| c.mqtt.receive_maximum = 2).await;
    let t = topic("rmx");
    let (mut p, ack) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("rmx"))).await;
    assert_eq!(ack.props.num(prop::RECEIVE_MAXIMUM), Some(2));
    for pid in 1..=2u16 {
        p.send(&publish(true, &t, 2, false, false, pid, &[], b"x"))
            .await;
        assert_eq!(p.recv_kind(PUBREC).await.ack().pid, pid);
    }
    // Two QoS 2 publishes unacknowledged (no PUBREL): a third exceeds the window.
    p.send(&publish(true, &t, 2, false, false, 3, &[], b"x"))
        .await;
    p.expect_disconnect(0x93).await;
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_within_receive_maximum_is_fine() {
    let b = start_broker(|c| c.mqtt.receive_maximum = 2).await;
    let t = topic("rmok");
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("rmok"))).await;
    for pid in 1..=10u16 {
        p.publish(&t, 2, false, pid, &[], b"x").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_respects_client_receive_maximum() {
    let b = start_broker(|_| {}).await;
    let t = topic("crm");
    let (mut s, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&unique("crm")).prop(Prop::receive_maximum(2)),
    )
    .await;
    s.subscribe(1, &[], &[(&t, 1)]).await;
    let mut p = V5::new(&b, "pub").await;
    for i in 0..6 {
        p.publish(&t, v5::QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    let mut received = Vec::new();
    let mut unacked = Vec::new();
    while received.len() < 6 {
        // Read everything available; never more than 2 unacknowledged.
        match s.recv_within(Duration::from_millis(300)).await {
            Recv::Packet(pk) if pk.kind == PUBLISH => {
                let m = pk.publish(true);
                unacked.push(m.pid);
                received.push(text(&m.payload));
                assert!(
                    unacked.len() <= 2,
                    "more than Receive Maximum in flight: {received:?}"
                );
            }
            Recv::Packet(_) => {}
            Recv::Timeout => {
                assert_eq!(unacked.len(), 2, "stalled with {} in flight", unacked.len());
                let pid = unacked.remove(0);
                s.send(&puback(pid)).await;
            }
            Recv::Closed => panic!("closed"),
        }
    }
    assert_eq!(received, (0..6).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_packet_over_maximum_size_gets_0x95() {
    let b = start_broker(|c| c.mqtt.max_packet_size = 128).await;
    let (mut p, ack) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("big"))).await;
    assert_eq!(ack.props.num(prop::MAXIMUM_PACKET_SIZE), Some(128));
    p.send(&publish(
        true,
        &topic("big"),
        0,
        false,
        false,
        0,
        &[],
        &[b'x'; 200],
    ))
    .await;
    p.expect_disconnect(0x95).await;
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_packet_over_maximum_size_closes_connection() {
    let b = start_broker(|c| c.mqtt.max_packet_size = 128).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("big"))).await;
    p.send(&publish(
        false,
        &topic("big"),
        0,
        false,
        false,
        0,
        &[],
        &[b'x'; 200],
    ))
    .await;
    p.expect_disconnect(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_at_maximum_size_is_accepted() {
    let b = start_broker(|c| c.mqtt.max_packet_size = 128).await;
    let t = "e2e/exact";
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("exact"))).await;
    // 2 bytes fixed header + 2 + len(t) topic + payload = 128.
    let payload = vec![b'y'; 128 - 2 - 2 - t.len()];
    let pkt = publish(false, t, 0, false, false, 0, &[], &payload);
    assert_eq!(pkt.len(), 128);
    p.send(&pkt).await;
    assert!(p.ping().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_larger_than_client_maximum_packet_size_not_sent() {
    let b = start_broker(|_| {}).await;
    let t = topic("cmps");
    let (mut s, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&unique("cmps")).prop(Prop::maximum_packet_size(100)),
    )
    .await;
    s.subscribe(1, &[], &[(&t, 1)]).await;
    let mut p = V5::new(&b, "pub").await;
    p.publish(&t, v5::QoS::AtLeastOnce, false, vec![b'z'; 300])
        .await;
    p.publish(&t, v5::QoS::AtLeastOnce, false, "small").await;
    let m = s.recv_publish().await;
    assert_eq!(m.payload, b"small");
    s.send(&puback(m.pid)).await;
    assert!(s.ping().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_does_not_stall_publisher_or_broker() {
    let b = start_broker(|c| c.mqtt.max_queued_messages = 10).await;
    let t = topic("slow");
    // A subscriber that never reads its socket.
    let (mut slow, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("slow"))).await;
    slow.subscribe(1, &[], &[(&t, 1), (&format!("{t}/q0"), 0)])
        .await;
    let mut p = V4::new(&b, "pub").await;
    let payload = vec![b'p'; 4096];
    let bound = Duration::from_secs(30);
    tokio::time::timeout(bound, async {
        for _ in 0..1000 {
            p.publish(
                &format!("{t}/q0"),
                rumqttc::QoS::AtMostOnce,
                false,
                payload.clone(),
            )
            .await;
        }
        for _ in 0..200 {
            p.publish(&t, rumqttc::QoS::AtLeastOnce, false, payload.clone())
                .await;
        }
    })
    .await
    .expect("publisher stalled by a slow subscriber");
    // A third client is served normally.
    assert_alive(&b).await;
    drop(slow);
}

/// MQTT-3.1.2-24: no packet larger than the client's Maximum Packet Size,
/// refusals included; the Reason String and User Properties go first
/// (MQTT-3.2.2-19/20). Without the limit the same refusal carries its Reason
/// String, so the test sees the limit at work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_connack_fits_the_clients_maximum_packet_size() {
    let b = start_broker(|_| {}).await;
    let unsupported = || {
        ConnectOpts::v5(&unique("cmps-refused"))
            .prop(Prop::Str(prop::AUTHENTICATION_METHOD, "SCRAM-SHA-1".into()))
    };
    let mut free = RawClient::connect(b.addr).await;
    free.send(&unsupported().encode()).await;
    let p = free.recv().await;
    let ack = p.connack(true);
    assert_eq!(ack.code, 0x8C);
    assert!(ack.props.has(prop::REASON_STRING), "{ack:?}");
    assert!(
        p.wire_len() > 20,
        "the unlimited refusal is {} bytes",
        p.wire_len()
    );

    let mut limited = RawClient::connect(b.addr).await;
    limited
        .send(&unsupported().prop(Prop::maximum_packet_size(20)).encode())
        .await;
    let p = limited.recv().await;
    assert!(
        p.wire_len() <= 20,
        "CONNACK of {} bytes: {p:?}",
        p.wire_len()
    );
    let ack = p.connack(true);
    assert_eq!(ack.code, 0x8C);
    assert!(!ack.props.has(prop::REASON_STRING), "{ack:?}");
    limited.expect_closed().await;
}

/// A refusal after the CONNECT checks (client identifier too long, 0x85).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_refusal_fits_the_clients_maximum_packet_size() {
    let b = start_broker(|c| c.mqtt.max_client_id_len = 23).await;
    let long_id = format!("{}-{}", unique("cmps-id"), "x".repeat(40));
    let mut c = RawClient::connect(b.addr).await;
    c.send(
        &ConnectOpts::v5(&long_id)
            .prop(Prop::maximum_packet_size(12))
            .encode(),
    )
    .await;
    let p = c.recv().await;
    assert!(
        p.wire_len() <= 12,
        "CONNACK of {} bytes: {p:?}",
        p.wire_len()
    );
    assert_eq!(p.connack(true).code, 0x85);
    c.expect_closed().await;
}

/// The accepting CONNACK carries the server's limits; for a client whose
/// own limit is smaller, those that say what their absence says go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepting_connack_fits_a_small_maximum_packet_size() {
    let b = start_broker(|_| {}).await;
    let mut c = RawClient::connect(b.addr).await;
    c.send(
        &ConnectOpts::v5(&unique("cmps-ok"))
            .prop(Prop::maximum_packet_size(20))
            .encode(),
    )
    .await;
    let p = c.recv().await;
    assert!(
        p.wire_len() <= 20,
        "CONNACK of {} bytes: {p:?}",
        p.wire_len()
    );
    let ack = p.connack(true);
    assert_eq!(ack.code, 0);
    assert!(ack.props.has(prop::RECEIVE_MAXIMUM), "{ack:?}");
    // Still a working connection.
    assert!(c.ping().await.is_empty());
}

/// Issue 26, item 3: a client still writing when the server disconnects it
/// (Paho's interoperability flow-control case: one QoS 2 PUBLISH over the
/// Receive Maximum, then a PUBREL for each PUBREC read) reads DISCONNECT
/// 0x93, not a broken pipe: the server closes gracefully (lingering close).
/// The client is tests/python/flow_control_linger.py (raw socket, Python).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_writing_while_disconnected_reads_the_reason_code() {
    let b = start_broker(|c| c.mqtt.receive_maximum = 5).await;
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join("flow_control_linger.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script).arg(b.port().to_string());
    let out = run_command(cmd, Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_alive(&b).await;
}
