//! Subscriptions: matching, SUBACK/UNSUBACK codes, replacement, overlap, no local, identifiers.

#![allow(clippy::unwrap_used)]

use midge_e2e::raw::*;
use midge_e2e::*;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_matching() {
    let b = start_broker(|_| {}).await;
    let base = topic("wc");
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&format!("{base}/+/x"), QoS::AtMostOnce).await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&format!("{base}/a/x"), QoS::AtMostOnce, false, "1")
        .await;
    p.publish(&format!("{base}/a/y"), QoS::AtMostOnce, false, "no")
        .await;
    p.publish(&format!("{base}/a/b/x"), QoS::AtMostOnce, false, "no")
        .await;
    p.publish(&format!("{base}//x"), QoS::AtMostOnce, false, "2")
        .await;
    assert_eq!(text(&s.next_publish().await.payload), "1");
    assert_eq!(text(&s.next_publish().await.payload), "2");
    s.expect_no_publish(QUIET).await;

    let mut h = V4::new(&b, "hash").await;
    h.subscribe(&format!("{base}/#"), QoS::AtMostOnce).await;
    p.publish(&base, QoS::AtMostOnce, false, "parent").await; // '#' also matches the parent level
    p.publish(&format!("{base}/a/b/c"), QoS::AtMostOnce, false, "deep")
        .await;
    assert_eq!(text(&h.next_publish().await.payload), "parent");
    assert_eq!(text(&h.next_publish().await.payload), "deep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_not_matched_by_leading_wildcards() {
    let b = start_broker(|_| {}).await;
    let name = unique("sys");
    let dollar = format!("$e2e{}/x", name.replace(['-'], ""));
    let mut all = V4::new(&b, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut plus = V4::new(&b, "plus").await;
    plus.subscribe("+/x", QoS::AtMostOnce).await;
    let prefix = dollar.split('/').next().unwrap().to_string();
    let mut explicit = V4::new(&b, "explicit").await;
    explicit
        .subscribe(&format!("{prefix}/#"), QoS::AtMostOnce)
        .await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&dollar, QoS::AtMostOnce, false, "dollar").await;
    assert_eq!(text(&explicit.next_publish().await.payload), "dollar");
    all.expect_no_publish(QUIET).await;
    plus.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_one_code_per_filter_v311() {
    let b = start_broker(|_| {}).await;
    let t = topic("codes");
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("codes"))).await;
    let a = c
        .subscribe(
            3,
            &[],
            &[
                (&format!("{t}/0"), 0),
                (&format!("{t}/1"), 1),
                (&format!("{t}/2"), 2),
            ],
        )
        .await;
    assert_eq!(a.codes, vec![0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_one_code_per_filter_v5() {
    let b = start_broker(|_| {}).await;
    let t = topic("codes5");
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("codes"))).await;
    let a = c
        .subscribe(
            3,
            &[],
            &[
                (&format!("{t}/2"), 2),
                (&format!("{t}/0"), 0),
                (&format!("{t}/1"), 1),
            ],
        )
        .await;
    assert_eq!(a.codes, vec![2, 0, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_qos_capped_by_max_qos() {
    let b = start_broker(|c| c.mqtt.max_qos = 1).await;
    let t = topic("maxq");
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("maxq"))).await;
    let a = c.subscribe(1, &[], &[(&t, 2)]).await;
    assert_eq!(a.codes, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_wildcards_disabled_suback_0xa2() {
    let b = start_broker(|c| c.mqtt.wildcard_subscriptions = false).await;
    let t = topic("nowild");
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("nowild"))).await;
    let a = c
        .subscribe(1, &[], &[(&format!("{t}/#"), 1), (&t, 1)])
        .await;
    assert_eq!(a.codes, vec![0xA2, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_identifiers_disabled_is_protocol_error() {
    let b = start_broker(|c| c.mqtt.subscription_identifiers = false).await;
    let t = topic("nosid");
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("nosid"))).await;
    c.send(&subscribe(true, 1, &[Prop::subscription_id(5)], &[(&t, 1)]))
        .await;
    // Spec 3.8.2.1.2 / 0xA1: SUBACK 0xA1 or DISCONNECT 0xA1.
    let p = c.recv().await;
    match p.kind {
        SUBACK => assert_eq!(p.suback(true).codes, vec![0xA1]),
        DISCONNECT => assert_eq!(p.disconnect().reason, 0xA1),
        _ => panic!("unexpected {p:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_subscription_on_same_filter_replaces_old() {
    let b = start_broker(|_| {}).await;
    let t = topic("replace");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("replace"))).await;
    assert_eq!(s.subscribe(1, &[], &[(&t, 0)]).await.codes, vec![0]);
    assert_eq!(s.subscribe(2, &[], &[(&t, 1)]).await.codes, vec![1]);
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtLeastOnce, false, "once").await;
    let m = s.recv_publish().await;
    assert_eq!((m.qos, m.payload.clone()), (1, b"once".to_vec()));
    s.send(&puback(m.pid)).await;
    let extra = s.ping().await;
    assert!(extra.is_empty(), "duplicate delivery: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_resubscribe_replaces_subscription_identifier() {
    let b = start_broker(|_| {}).await;
    let t = topic("replid");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("replid"))).await;
    s.subscribe(1, &[Prop::subscription_id(1)], &[(&t, 0)])
        .await;
    s.subscribe(2, &[Prop::subscription_id(2)], &[(&t, 0)])
        .await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtMostOnce, false, "x").await;
    let m = s.recv_publish().await;
    assert_eq!(m.props.subscription_ids(), vec![2]);
    assert!(s.ping().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_and_v311_unsuback_bytes() {
    let b = start_broker(|_| {}).await;
    let t = topic("unsub");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("unsub"))).await;
    s.subscribe(1, &[], &[(&t, 0)]).await;
    s.send(&unsubscribe(false, 0x0203, &[&t])).await;
    let u = s.recv().await;
    assert_eq!(
        (u.kind, u.flags, u.body.clone()),
        (UNSUBACK, 0, vec![0x02, 0x03])
    );
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtMostOnce, false, "x").await;
    s.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unsuback_one_code_per_filter_0x11_when_not_subscribed() {
    let b = start_broker(|_| {}).await;
    let t = topic("unsub5");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("unsub5"))).await;
    s.subscribe(1, &[], &[(&t, 0)]).await;
    let other = format!("{t}/other");
    s.send(&unsubscribe(true, 9, &[&t, &other])).await;
    let u = s.recv_kind(UNSUBACK).await.suback(true);
    assert_eq!((u.pid, u.codes), (9, vec![0x00, 0x11]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_unsubscribe() {
    let b = start_broker(|_| {}).await;
    let t = topic("unsubr");
    let mut s = V5::new(&b, "sub").await;
    s.subscribe(&t, v5::QoS::AtLeastOnce).await;
    s.client.unsubscribe(&t).await.unwrap();
    let u = s
        .wait("UNSUBACK", |e| match e {
            v5::Event::Incoming(v5::Packet::UnsubAck(u)) => Some(u.clone()),
            _ => None,
        })
        .await;
    assert_eq!(u.reasons, vec![v5::UnsubAckReason::Success]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_overlapping_subscriptions_one_copy_highest_qos_all_identifiers() {
    let b = start_broker(|_| {}).await;
    let base = topic("overlap");
    let t = format!("{base}/a/b");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("overlap"))).await;
    s.subscribe(
        1,
        &[Prop::subscription_id(1)],
        &[(&format!("{base}/a/+"), 0)],
    )
    .await;
    s.subscribe(2, &[Prop::subscription_id(2)], &[(&format!("{base}/#"), 2)])
        .await;
    s.subscribe(3, &[Prop::subscription_id(3)], &[(&t, 1)])
        .await;
    s.subscribe(4, &[], &[(&format!("{base}/+/b"), 0)]).await; // no identifier
    let mut p = V5::new(&b, "pub").await;
    p.publish(&t, v5::QoS::ExactlyOnce, false, "one").await;
    let m = s.recv_publish().await;
    assert_eq!(m.qos, 2);
    let mut ids = m.props.subscription_ids();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
    s.send(&pubrec(m.pid)).await;
    let rel = s.recv_kind(PUBREL).await.ack();
    s.send(&pubcomp(rel.pid)).await;
    let extra = s.ping().await;
    assert!(
        extra.iter().all(|p| p.kind != PUBLISH),
        "second copy: {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_overlapping_subscriptions_delivered_at_highest_qos() {
    let b = start_broker(|_| {}).await;
    let base = topic("overlap4");
    let t = format!("{base}/x");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("overlap4"))).await;
    s.subscribe(1, &[], &[(&format!("{base}/#"), 0), (&t, 1)])
        .await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtLeastOnce, false, "x").await;
    let first = s.recv_publish().await;
    s.send(&puback(first.pid)).await;
    let mut qos = vec![first.qos];
    for pk in s.ping().await {
        if pk.kind == PUBLISH {
            let m = pk.publish(false);
            if m.qos > 0 {
                s.send(&puback(m.pid)).await;
            }
            qos.push(m.qos);
        }
    }
    assert!(qos.contains(&1), "a copy at QoS 1 expected: {qos:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_identifier_on_delivered_message() {
    let b = start_broker(|_| {}).await;
    let t = topic("sid");
    let mut s = V5::new(&b, "sub").await;
    let props = v5::SubscribeProperties {
        id: Some(4242),
        user_properties: vec![],
    };
    s.subscribe_filter(v5::Filter::new(&t, v5::QoS::AtLeastOnce), Some(props))
        .await;
    let mut p = V5::new(&b, "pub").await;
    p.publish(&t, v5::QoS::AtLeastOnce, false, "sid").await;
    let m = s.next_publish().await;
    assert_eq!(
        m.properties.expect("properties").subscription_identifiers,
        vec![4242]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_large_subscription_identifier_varint() {
    let b = start_broker(|_| {}).await;
    let t = topic("sidbig");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("sidbig"))).await;
    s.subscribe(1, &[Prop::subscription_id(268_435_455)], &[(&t, 0)])
        .await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtMostOnce, false, "x").await;
    assert_eq!(
        s.recv_publish().await.props.subscription_ids(),
        vec![268_435_455]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_no_local_suppresses_own_messages() {
    let b = start_broker(|_| {}).await;
    let t = topic("nolocal");
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("nolocal"))).await;
    c.subscribe(1, &[], &[(&t, 0x04 | 1)]).await;
    c.publish(&t, 1, false, 5, &[], b"mine").await;
    let extra = c.ping().await;
    assert!(
        extra.iter().all(|p| p.kind != PUBLISH),
        "own message delivered: {extra:?}"
    );
    let mut other = V5::new(&b, "other").await;
    other
        .publish(&t, v5::QoS::AtLeastOnce, false, "theirs")
        .await;
    assert_eq!(c.recv_publish().await.payload, b"theirs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_no_local_own_messages_delivered() {
    let b = start_broker(|_| {}).await;
    let t = topic("local");
    let mut c = V5::new(&b, "self").await;
    c.subscribe(&t, v5::QoS::AtMostOnce).await;
    c.publish(&t, v5::QoS::AtMostOnce, false, "echo").await;
    assert_eq!(c.next_publish().await.payload.as_ref(), b"echo");
}
