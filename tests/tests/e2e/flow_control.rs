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
