//! QoS 0/1/2 flows in both directions, ordering, exactly-once, retransmission, inflight window.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use midge_e2e::raw::*;
use midge_e2e::*;
use rumqttc::QoS;

async fn v4_round_trip(pub_qos: QoS, sub_qos: QoS, expect: QoS) {
    let b = start_broker(|_| {}).await;
    let t = topic("rt4");
    let mut s = V4::new(&b, "sub").await;
    let sa = s.subscribe(&t, sub_qos).await;
    assert_eq!(
        sa.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(sub_qos)]
    );
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, pub_qos, false, "hello").await;
    let m = s.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.qos, m.payload.as_ref(), m.retain),
        (t.as_str(), expect, &b"hello"[..], false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos0_round_trip() {
    v4_round_trip(QoS::AtMostOnce, QoS::ExactlyOnce, QoS::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos1_round_trip() {
    v4_round_trip(QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos2_round_trip() {
    v4_round_trip(QoS::ExactlyOnce, QoS::ExactlyOnce, QoS::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_delivery_qos_is_min_of_publish_and_subscription() {
    v4_round_trip(QoS::ExactlyOnce, QoS::AtMostOnce, QoS::AtMostOnce).await;
    v4_round_trip(QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::AtLeastOnce).await;
}

async fn v5_round_trip(q: v5::QoS) {
    let b = start_broker(|_| {}).await;
    let t = topic("rt5");
    let mut s = V5::new(&b, "sub").await;
    s.subscribe(&t, v5::QoS::ExactlyOnce).await;
    let mut p = V5::new(&b, "pub").await;
    p.publish(&t, q, false, "hello5").await;
    let m = s.next_publish().await;
    assert_eq!(
        (m.topic.as_ref(), m.qos, m.payload.as_ref()),
        (t.as_bytes(), q, &b"hello5"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos0_round_trip() {
    v5_round_trip(v5::QoS::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos1_round_trip() {
    v5_round_trip(v5::QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_round_trip() {
    v5_round_trip(v5::QoS::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos0_delivery_raw_bytes() {
    let b = start_broker(|_| {}).await;
    let t = "e2e/raw/q0";
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("rb"))).await;
    s.send(&subscribe(false, 0x1234, &[], &[(t, 0)])).await;
    let sa = s.recv().await;
    // SUBACK: 0x90 0x03 0x12 0x34 0x00
    assert_eq!(
        (sa.kind, sa.flags, sa.body.clone()),
        (SUBACK, 0, vec![0x12, 0x34, 0x00])
    );
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("rbp"))).await;
    p.send(&publish(false, t, 1, false, false, 0x0102, &[], b"AB"))
        .await;
    let ack = p.recv().await;
    // PUBACK: 0x40 0x02 0x01 0x02
    assert_eq!(
        (ack.kind, ack.flags, ack.body.clone()),
        (PUBACK, 0, vec![0x01, 0x02])
    );
    let m = s.recv().await;
    let mut want = vec![0x00, t.len() as u8];
    want.extend_from_slice(t.as_bytes());
    want.extend_from_slice(b"AB");
    assert_eq!((m.kind, m.flags, m.body), (PUBLISH, 0, want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos2_publisher_flow_raw_bytes() {
    let b = start_broker(|_| {}).await;
    let t = topic("q2raw");
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("q2"))).await;
    p.send(&publish(false, &t, 2, false, false, 0x0A0B, &[], b"x"))
        .await;
    let rec = p.recv().await;
    assert_eq!(
        (rec.kind, rec.flags, rec.body.clone()),
        (PUBREC, 0, vec![0x0A, 0x0B])
    );
    p.send(&pubrel(0x0A0B)).await;
    let comp = p.recv().await;
    assert_eq!(
        (comp.kind, comp.flags, comp.body.clone()),
        (PUBCOMP, 0, vec![0x0A, 0x0B])
    );
}

async fn ordering(qos: QoS) {
    let b = start_broker(|_| {}).await;
    let t = topic("order");
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&t, QoS::ExactlyOnce).await;
    let p = V4::new(&b, "pub").await;
    for i in 0..50 {
        p.client
            .publish(&t, qos, false, format!("{i}"))
            .await
            .unwrap();
    }
    for i in 0..50 {
        assert_eq!(text(&s.next_publish().await.payload), format!("{i}"));
    }
}

/// A subscriber that stops reading lets its session queue grow past one
/// write batch (512); once it reads again, everything arrives, in order,
/// with no further publish to wake its connection up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_one_write_batch_is_delivered_in_full() {
    let b = start_broker(|_| {}).await;
    let t = topic("backlog");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("bls"))).await;
    s.send(&subscribe(false, 1, &[], &[(&t, 0)])).await;
    assert_eq!(s.recv().await.kind, SUBACK);
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("blp"))).await;
    // 16 MiB: more than loopback socket buffers hold, so most of it waits
    // in the session's queue while the subscriber does not read.
    const N: usize = 2000;
    for i in 0..N {
        let mut payload = format!("{i:08}").into_bytes();
        payload.resize(8192, b'.');
        let qos = if i == N - 1 { 1 } else { 0 };
        p.send(&publish(false, &t, qos, false, false, 7, &[], &payload))
            .await;
    }
    // The PUBACK of the last one: everything was routed.
    assert_eq!(p.recv().await.kind, PUBACK);
    for i in 0..N {
        let m = s.recv().await;
        assert_eq!(m.kind, PUBLISH);
        let at = 2 + t.len();
        assert_eq!(
            &m.body[at..at + 8],
            format!("{i:08}").as_bytes(),
            "message {i}"
        );
    }
}

/// A client that publishes QoS 1 and never reads its PUBACKs: the broker
/// stops reading from it once 8,192 acks wait (so the client's writes
/// block) instead of queueing acks without bound, keeps serving others, and
/// closes it when it still reads nothing for 1.5 x its keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_never_reads_its_pubacks_is_held_back_and_then_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = start_broker(|_| {}).await;
    let t = topic("noread");
    // A small receive buffer, so unread PUBACKs fill it quickly.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c = within("connect", sock.connect(b.addr)).await.unwrap();
    c.write_all(&ConnectOpts::v4(&unique("nrp")).keep_alive(2).encode())
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    within("CONNACK", c.read_exact(&mut connack)).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    let mut batch = Vec::new();
    for i in 0..1000u16 {
        batch.extend(publish(false, &t, 1, false, false, i + 1, &[], b"x"));
    }
    // Up to 1,000,000 publishes; a write that makes no progress for 2 s
    // means the broker stopped reading.
    let mut sent = 0usize;
    let mut blocked = false;
    while sent < 1_000_000 {
        match tokio::time::timeout(Duration::from_secs(2), c.write_all(&batch)).await {
            Ok(r) => {
                r.unwrap();
                sent += 1000;
            }
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(
        blocked,
        "the broker kept reading: {sent} QoS 1 publishes taken, none of their PUBACKs read"
    );
    // Others are served meanwhile.
    let mut s = V4::new(&b, "other-sub").await;
    let t2 = topic("noread-other");
    s.subscribe(&t2, QoS::AtLeastOnce).await;
    let mut p = V4::new(&b, "other-pub").await;
    p.publish(&t2, QoS::AtLeastOnce, false, "fine").await;
    assert_eq!(s.next_publish().await.payload.as_ref(), b"fine");
    // Still not reading: after 1.5 x keep-alive (3 s) without progress the
    // broker closes it. Then its acks, and the end of the stream, arrive.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut sink = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        match within("the broker to close the connection", c.read(&mut sink)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        assert!(
            total <= (sent + 1000) * 4,
            "more acks than publishes: {total} bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_per_publisher_qos0() {
    ordering(QoS::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_per_publisher_qos1() {
    ordering(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_per_publisher_qos2() {
    ordering(QoS::ExactlyOnce).await;
}

async fn qos2_resend_before_pubrel_delivered_once(v5: bool) {
    let b = start_broker(|_| {}).await;
    let t = topic("eo");
    let level = if v5 {
        ConnectOpts::v5(&unique("s"))
    } else {
        ConnectOpts::v4(&unique("s"))
    };
    let (mut s, _) = RawClient::handshake(b.addr, level).await;
    s.subscribe(1, &[], &[(&t, 2)]).await;
    let level = if v5 {
        ConnectOpts::v5(&unique("p"))
    } else {
        ConnectOpts::v4(&unique("p"))
    };
    let (mut p, _) = RawClient::handshake(b.addr, level).await;
    p.send(&publish(v5, &t, 2, false, false, 77, &[], b"once"))
        .await;
    assert_eq!(p.recv_kind(PUBREC).await.ack().pid, 77);
    p.send(&publish(v5, &t, 2, false, true, 77, &[], b"once"))
        .await;
    let rec = p.recv_kind(PUBREC).await.ack();
    assert_eq!((rec.pid, rec.reason), (77, 0));
    p.send(&pubrel(77)).await;
    let comp = p.recv_kind(PUBCOMP).await.ack();
    assert_eq!((comp.pid, comp.reason), (77, 0));
    let m = s.recv_publish().await;
    assert_eq!(m.payload, b"once");
    s.send(&pubrec(m.pid)).await;
    let rel = s.recv_kind(PUBREL).await.ack();
    s.send(&pubcomp(rel.pid)).await;
    // No second copy.
    let extra = s.ping().await;
    assert!(
        extra.iter().all(|p| p.kind != PUBLISH),
        "duplicate delivery: {extra:?}"
    );
    s.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos2_resent_before_pubrel_delivered_once() {
    qos2_resend_before_pubrel_delivered_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_resent_before_pubrel_delivered_once() {
    qos2_resend_before_pubrel_delivered_once(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_pubrel_for_unknown_id_gets_pubcomp_0x92() {
    let b = start_broker(|_| {}).await;
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("rel"))).await;
    c.send(&pubrel(4242)).await;
    let comp = c.recv_kind(PUBCOMP).await.ack();
    assert_eq!((comp.pid, comp.reason), (4242, 0x92));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_pubrel_for_unknown_id_gets_pubcomp() {
    let b = start_broker(|_| {}).await;
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("rel"))).await;
    c.send(&pubrel(4243)).await;
    let comp = c.recv_kind(PUBCOMP).await;
    assert_eq!(comp.body, vec![0x10, 0x93]);
}

async fn redelivery_with_dup(v5: bool) {
    let b = start_broker(|_| {}).await;
    let id = unique("dup");
    let t = topic("dup");
    let opts = |clean: bool| {
        if v5 {
            ConnectOpts::v5(&id)
                .clean(clean)
                .prop(Prop::session_expiry(60))
        } else {
            ConnectOpts::v4(&id).clean(clean)
        }
    };
    // A fresh persistent session (unique id): clean session 0 for 3.1.1, expiry 60 s for 5.0.
    let (mut s, _) = RawClient::handshake(b.addr, opts(false)).await;
    s.subscribe(1, &[], &[(&t, 1)]).await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtLeastOnce, false, "again").await;
    let first = s.recv_publish().await;
    assert_eq!(
        (first.dup, first.qos, first.payload.clone()),
        (false, 1, b"again".to_vec())
    );
    // No PUBACK; drop the connection.
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut s, ack) = RawClient::handshake(b.addr, opts(false)).await;
    assert!(ack.session_present);
    let again = s.recv_publish().await;
    assert!(again.dup, "redelivery must have DUP=1");
    assert_eq!(
        (again.pid, again.qos, again.payload.clone()),
        (first.pid, 1, b"again".to_vec())
    );
    s.send(&puback(again.pid)).await;
    let extra = s.ping().await;
    assert!(extra.is_empty(), "{extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_unacked_qos1_redelivered_with_dup_on_reconnect() {
    redelivery_with_dup(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unacked_qos1_redelivered_with_dup_on_reconnect() {
    redelivery_with_dup(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_unacked_pubrec_resends_pubrel_on_reconnect() {
    let b = start_broker(|_| {}).await;
    let id = unique("rel");
    let t = topic("rel");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&id).clean(false)).await;
    s.subscribe(1, &[], &[(&t, 2)]).await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::ExactlyOnce, false, "q2").await;
    let m = s.recv_publish().await;
    s.send(&pubrec(m.pid)).await;
    let rel = s.recv_kind(PUBREL).await.ack();
    assert_eq!(rel.pid, m.pid);
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut s, ack) = RawClient::handshake(b.addr, ConnectOpts::v4(&id).clean(false)).await;
    assert!(ack.session_present);
    // After PUBREC the broker resends PUBREL, not the PUBLISH.
    let p2 = s.recv().await;
    assert_eq!(p2.kind, PUBREL, "{p2:?}");
    assert_eq!(p2.ack().pid, m.pid);
    s.send(&pubcomp(m.pid)).await;
    assert!(s.ping().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_window_limits_unacked_messages() {
    let b = start_broker(|c| c.mqtt.max_inflight = 2).await;
    let t = topic("win");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("win"))).await;
    s.subscribe(1, &[], &[(&t, 1)]).await;
    let mut p = V4::new(&b, "pub").await;
    for i in 0..5 {
        p.publish(&t, QoS::AtLeastOnce, false, format!("{i}")).await;
    }
    let a = s.recv_publish().await;
    let b2 = s.recv_publish().await;
    assert_eq!(
        (a.payload.clone(), b2.payload.clone()),
        (b"0".to_vec(), b"1".to_vec())
    );
    s.expect_silence(QUIET).await;
    s.send(&puback(a.pid)).await;
    let c = s.recv_publish().await;
    assert_eq!(c.payload, b"2");
    s.expect_silence(QUIET).await;
    s.send(&puback(b2.pid)).await;
    s.send(&puback(c.pid)).await;
    let d = s.recv_publish().await;
    let e = s.recv_publish().await;
    assert_eq!((d.payload, e.payload), (b"3".to_vec(), b"4".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_messages_are_not_limited_by_inflight_window() {
    let b = start_broker(|c| c.mqtt.max_inflight = 1).await;
    let t = topic("win0");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("win0"))).await;
    s.subscribe(1, &[], &[(&t, 0)]).await;
    let mut p = V4::new(&b, "pub").await;
    for i in 0..5 {
        p.publish(&t, QoS::AtLeastOnce, false, format!("{i}")).await;
    }
    for i in 0..5 {
        let m = s.recv_publish().await;
        assert_eq!((m.qos, m.payload), (0, format!("{i}").into_bytes()));
    }
}
