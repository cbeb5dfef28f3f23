//! Sessions: takeover, clean start vs resume, offline queueing, expiry.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use midge_e2e::raw::*;
use midge_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_takeover_old_connection_gets_0x8e() {
    let b = start_broker(|_| {}).await;
    let id = unique("take");
    let (mut old, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&id)).await;
    let (mut new, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&id)).await;
    old.expect_disconnect(0x8E).await;
    assert!(new.ping().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_session_takeover_closes_old_connection() {
    let b = start_broker(|_| {}).await;
    let id = unique("take");
    let (mut old, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&id)).await;
    let (mut new, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&id)).await;
    old.expect_disconnect(0).await;
    assert!(new.ping().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_takeover_keeps_session_and_subscriptions() {
    let b = start_broker(|_| {}).await;
    let id = unique("take");
    let t = topic("take");
    let (mut old, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&id).clean(false)).await;
    old.subscribe(1, &[], &[(&t, 1)]).await;
    let (mut new, ack) = RawClient::handshake(b.addr, ConnectOpts::v4(&id).clean(false)).await;
    assert!(ack.session_present);
    old.expect_closed().await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, "after-takeover")
        .await;
    let m = new.recv_publish().await;
    assert_eq!(m.payload, b"after-takeover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_clean_session_has_no_session_present() {
    let b = start_broker(|_| {}).await;
    let id = unique("cs");
    let (c, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&id).clean(false)).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_c, ack) = RawClient::handshake(b.addr, ConnectOpts::v4(&id).clean(true)).await;
    assert!(!ack.session_present);
    let mut c = RawClient::connect(b.addr).await;
    c.send(&ConnectOpts::v4(&id).clean(true).encode()).await;
    // Raw bytes: session present 0 with clean session.
    assert_eq!(c.recv().await.body, vec![0x00, 0x00]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_resumed_session_present_and_queued_messages_delivered() {
    let b = start_broker(|_| {}).await;
    let id = unique("resume");
    let t = topic("resume");
    let (mut s, ack) = RawClient::handshake(b.addr, ConnectOpts::v4(&id).clean(false)).await;
    assert!(!ack.session_present);
    let sa = s
        .subscribe(1, &[], &[(&format!("{t}/1"), 1), (&format!("{t}/2"), 2)])
        .await;
    assert_eq!(sa.codes, vec![1, 2]);
    s.send(&disconnect(false, 0, &[])).await;
    s.expect_closed().await;

    let mut p = V4::new(&b, "pub").await;
    p.publish(&format!("{t}/1"), rumqttc::QoS::AtLeastOnce, false, "q1")
        .await;
    p.publish(&format!("{t}/2"), rumqttc::QoS::ExactlyOnce, false, "q2")
        .await;

    let mut c = RawClient::connect(b.addr).await;
    c.send(&ConnectOpts::v4(&id).clean(false).encode()).await;
    let p0 = c.recv().await;
    // Raw bytes: CONNACK with session present = 1.
    assert_eq!((p0.kind, p0.body.clone()), (CONNACK, vec![0x01, 0x00]));
    let m1 = c.recv_publish().await;
    assert_eq!(
        (m1.topic.clone(), m1.qos, m1.payload.clone()),
        (format!("{t}/1"), 1, b"q1".to_vec())
    );
    c.send(&puback(m1.pid)).await;
    let m2 = c.recv_publish().await;
    assert_eq!(
        (m2.topic.clone(), m2.qos, m2.payload.clone()),
        (format!("{t}/2"), 2, b"q2".to_vec())
    );
    c.send(&pubrec(m2.pid)).await;
    let rel = c.recv_kind(PUBREL).await;
    assert_eq!(rel.flags, 0x2, "PUBREL fixed header flags");
    assert_eq!(rel.ack().pid, m2.pid);
    c.send(&pubcomp(m2.pid)).await;
    // Subscriptions kept: a live message arrives too.
    p.publish(&format!("{t}/1"), rumqttc::QoS::AtLeastOnce, false, "live")
        .await;
    let m3 = c.recv_publish().await;
    assert_eq!(m3.payload, b"live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v4_persistent_session_receives_offline_messages() {
    let b = start_broker(|_| {}).await;
    let t = topic("persist");
    let mut o = v4_options(&b, "persist");
    o.set_clean_session(false);
    let (mut s, _) = V4::connect(o.clone()).await;
    s.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = V4::new(&b, "pub").await;
    for i in 0..5 {
        p.publish(&t, rumqttc::QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let (mut s, ack) = V4::connect(o).await;
    assert!(ack.session_present);
    for i in 0..5 {
        assert_eq!(text(&s.next_publish().await.payload), format!("m{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_clean_session_discards_previous_session() {
    let b = start_broker(|_| {}).await;
    let id = unique("discard");
    let t = topic("discard");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&id).clean(false)).await;
    s.subscribe(1, &[], &[(&t, 1)]).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, "lost")
        .await;
    let (mut c, ack) = RawClient::handshake(b.addr, ConnectOpts::v4(&id).clean(true)).await;
    assert!(!ack.session_present);
    c.expect_silence(QUIET).await;
    // And the subscription is gone.
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, "gone")
        .await;
    c.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_resumed_session_with_expiry_delivers_queued_messages() {
    let b = start_broker(|_| {}).await;
    let id = unique("resume5");
    let t = topic("resume5");
    let (mut s, ack) =
        RawClient::handshake(b.addr, ConnectOpts::v5(&id).prop(Prop::session_expiry(60))).await;
    assert!(!ack.session_present);
    s.subscribe(1, &[], &[(&t, 2)]).await;
    s.send(&disconnect(true, 0, &[])).await;
    s.expect_closed().await;
    let mut p = V5::new(&b, "pub").await;
    p.publish(&t, v5::QoS::AtLeastOnce, false, "one").await;
    p.publish(&t, v5::QoS::ExactlyOnce, false, "two").await;
    let (mut c, ack) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&id)
            .clean(false)
            .prop(Prop::session_expiry(60)),
    )
    .await;
    assert!(ack.session_present);
    let m1 = c.recv_publish().await;
    assert_eq!((m1.qos, m1.payload.clone()), (1, b"one".to_vec()));
    c.send(&puback(m1.pid)).await;
    let m2 = c.recv_publish().await;
    assert_eq!((m2.qos, m2.payload.clone()), (2, b"two".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_clean_start_discards_session() {
    let b = start_broker(|_| {}).await;
    let id = unique("cs5");
    let (s, _) =
        RawClient::handshake(b.addr, ConnectOpts::v5(&id).prop(Prop::session_expiry(60))).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_c, ack) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&id)
            .clean(true)
            .prop(Prop::session_expiry(60)),
    )
    .await;
    assert!(!ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_zero_ends_session_at_disconnect() {
    let b = start_broker(|_| {}).await;
    let id = unique("se0");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&id)).await;
    s.send(&disconnect(true, 0, &[])).await;
    s.expect_closed().await;
    let (_c, ack) = RawClient::handshake(b.addr, ConnectOpts::v5(&id).clean(false)).await;
    assert!(!ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expires_after_interval() {
    let b = start_broker(|_| {}).await;
    let id = unique("se1");
    let (mut s, _) =
        RawClient::handshake(b.addr, ConnectOpts::v5(&id).prop(Prop::session_expiry(1))).await;
    s.send(&disconnect(true, 0, &[])).await;
    s.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_c, ack) = RawClient::handshake(b.addr, ConnectOpts::v5(&id).clean(false)).await;
    assert!(!ack.session_present, "session should have expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_present_before_expiry() {
    let b = start_broker(|_| {}).await;
    let id = unique("se3");
    let (mut s, _) =
        RawClient::handshake(b.addr, ConnectOpts::v5(&id).prop(Prop::session_expiry(30))).await;
    s.send(&disconnect(true, 0, &[])).await;
    s.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_c, ack) = RawClient::handshake(b.addr, ConnectOpts::v5(&id).clean(false)).await;
    assert!(ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_session_expiry_extends_session() {
    let b = start_broker(|_| {}).await;
    let id = unique("sed");
    let (mut s, _) =
        RawClient::handshake(b.addr, ConnectOpts::v5(&id).prop(Prop::session_expiry(1))).await;
    s.send(&disconnect(true, 0, &[Prop::session_expiry(60)]))
        .await;
    s.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_c, ack) = RawClient::handshake(b.addr, ConnectOpts::v5(&id).clean(false)).await;
    assert!(
        ack.session_present,
        "DISCONNECT's session expiry interval should apply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_session_expiry_zero_ends_session() {
    let b = start_broker(|_| {}).await;
    let id = unique("sed0");
    let (mut s, _) =
        RawClient::handshake(b.addr, ConnectOpts::v5(&id).prop(Prop::session_expiry(60))).await;
    s.send(&disconnect(true, 0, &[Prop::session_expiry(0)]))
        .await;
    s.expect_closed().await;
    let (_c, ack) = RawClient::handshake(b.addr, ConnectOpts::v5(&id).clean(false)).await;
    assert!(!ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_nonzero_expiry_after_zero_is_protocol_error() {
    let b = start_broker(|_| {}).await;
    let id = unique("seerr");
    let will_topic = topic("seerr-will");
    let mut w = V5::new(&b, "watch").await;
    w.subscribe(&will_topic, v5::QoS::AtLeastOnce).await;
    let opts = ConnectOpts::v5(&id).will(RawWill {
        topic: will_topic.clone(),
        payload: b"will".to_vec(),
        qos: 1,
        retain: false,
        props: vec![],
    });
    let (mut s, _) = RawClient::handshake(b.addr, opts).await;
    s.send(&disconnect(true, 0, &[Prop::session_expiry(30)]))
        .await;
    s.expect_disconnect(0x82).await;
    // Not a valid DISCONNECT, so the will is published.
    let m = w.next_publish().await;
    assert_eq!(text(&m.payload), "will");
}
