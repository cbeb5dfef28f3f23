//! Retained messages and retain-related subscription options.

#![allow(clippy::unwrap_used)]

use midge_e2e::raw::*;
use midge_e2e::*;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_delivered_to_new_subscriber_v311() {
    let b = start_broker(|_| {}).await;
    let t = topic("ret");
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtLeastOnce, true, "kept").await;
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&t, QoS::AtLeastOnce).await;
    let m = s.next_publish().await;
    assert_eq!(
        (m.payload.as_ref(), m.retain, m.qos),
        (&b"kept"[..], true, QoS::AtLeastOnce)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_delivered_to_new_subscriber_v5() {
    let b = start_broker(|_| {}).await;
    let t = topic("ret5");
    let mut p = V5::new(&b, "pub").await;
    p.publish(&t, v5::QoS::ExactlyOnce, true, "kept5").await;
    let mut s = V5::new(&b, "sub").await;
    s.subscribe(&t, v5::QoS::ExactlyOnce).await;
    let m = s.next_publish().await;
    assert_eq!(
        (m.payload.as_ref(), m.retain, m.qos),
        (&b"kept5"[..], true, v5::QoS::ExactlyOnce)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_qos_is_capped_by_subscription() {
    let b = start_broker(|_| {}).await;
    let t = topic("retq");
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::ExactlyOnce, true, "q2").await;
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&t, QoS::AtMostOnce).await;
    let m = s.next_publish().await;
    assert_eq!((m.qos, m.retain), (QoS::AtMostOnce, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_replaced() {
    let b = start_broker(|_| {}).await;
    let t = topic("repl");
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtLeastOnce, true, "old").await;
    p.publish(&t, QoS::AtLeastOnce, true, "new").await;
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&t, QoS::AtLeastOnce).await;
    assert_eq!(text(&s.next_publish().await.payload), "new");
    s.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_deleted_by_empty_payload() {
    let b = start_broker(|_| {}).await;
    let t = topic("del");
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtLeastOnce, true, "x").await;
    p.publish(&t, QoS::AtLeastOnce, true, "").await;
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&t, QoS::AtLeastOnce).await;
    s.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_retained_publish_still_forwarded_to_existing_subscribers() {
    let b = start_broker(|_| {}).await;
    let t = topic("delfwd");
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&t, QoS::AtLeastOnce).await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtLeastOnce, true, "").await;
    let m = s.next_publish().await;
    assert!(m.payload.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_match_wildcard_subscription() {
    let b = start_broker(|_| {}).await;
    let base = topic("wild");
    let mut p = V4::new(&b, "pub").await;
    p.publish(&format!("{base}/a"), QoS::AtLeastOnce, true, "a")
        .await;
    p.publish(&format!("{base}/b/c"), QoS::AtLeastOnce, true, "bc")
        .await;
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&format!("{base}/#"), QoS::AtLeastOnce).await;
    let mut got = vec![
        text(&s.next_publish().await.payload),
        text(&s.next_publish().await.payload),
    ];
    got.sort();
    assert_eq!(got, vec!["a", "bc"]);
    let mut s2 = V4::new(&b, "sub2").await;
    s2.subscribe(&format!("{base}/+"), QoS::AtLeastOnce).await;
    assert_eq!(text(&s2.next_publish().await.payload), "a");
    s2.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_live_message_to_existing_subscriber_has_retain_0() {
    let b = start_broker(|_| {}).await;
    let t = topic("live");
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&t, QoS::AtLeastOnce).await;
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtLeastOnce, true, "live").await;
    let m = s.next_publish().await;
    assert!(!m.retain, "3.1.1: retain must be 0 for a live match");
}

async fn live_retain_flag(rap: bool) -> bool {
    let b = start_broker(|_| {}).await;
    let t = topic("rap");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("rap"))).await;
    s.subscribe(1, &[], &[(&t, 1 | if rap { 0x08 } else { 0 })])
        .await;
    let mut p = V5::new(&b, "pub").await;
    p.publish(&t, v5::QoS::AtLeastOnce, true, "r").await;
    s.recv_publish().await.retain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_as_published_keeps_retain_flag() {
    assert!(live_retain_flag(true).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_without_retain_as_published_clears_retain_flag() {
    assert!(!live_retain_flag(false).await);
}

async fn retain_handling_case(rh: u8) -> (usize, usize) {
    // Returns how many retained messages arrive on the first and on a repeated subscribe.
    let b = start_broker(|_| {}).await;
    let t = topic("rh");
    let mut p = V5::new(&b, "pub").await;
    p.publish(&t, v5::QoS::AtLeastOnce, true, "ret").await;
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("rh"))).await;
    let opts = 1 | (rh << 4);
    let mut counts = Vec::new();
    for pid in 1..=2u16 {
        s.send(&subscribe(true, pid, &[], &[(&t, opts)])).await;
        // The SUBACK and any retained PUBLISH, in any order, until the connection is quiet.
        let mut subacks = 0;
        let mut n = 0;
        loop {
            match s.recv_within(QUIET).await {
                Recv::Packet(p) if p.kind == SUBACK => subacks += 1,
                Recv::Packet(p) if p.kind == PUBLISH => {
                    let m = p.publish(true);
                    assert!(m.retain);
                    s.send(&puback(m.pid)).await;
                    n += 1;
                }
                Recv::Packet(p) => panic!("unexpected {p:?}"),
                Recv::Timeout => break,
                Recv::Closed => panic!("connection closed"),
            }
        }
        assert_eq!(subacks, 1);
        counts.push(n);
    }
    (counts[0], counts[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling_0_sends_on_every_subscribe() {
    assert_eq!(retain_handling_case(0).await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling_1_sends_only_for_new_subscription() {
    assert_eq!(retain_handling_case(1).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling_2_never_sends() {
    assert_eq!(retain_handling_case(2).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_not_available_publish_retain_gets_0x9a() {
    let b = start_broker(|c| c.mqtt.retain_available = false).await;
    let t = topic("noret");
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("noret"))).await;
    c.send(&publish(true, &t, 0, true, false, 0, &[], b"x"))
        .await;
    c.expect_disconnect(0x9A).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_sent_with_subscription_identifier() {
    let b = start_broker(|_| {}).await;
    let t = topic("retid");
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, QoS::AtLeastOnce, true, "r").await;
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("retid"))).await;
    s.subscribe(1, &[Prop::subscription_id(99)], &[(&t, 1)])
        .await;
    let m = s.recv_publish().await;
    assert!(m.retain);
    assert_eq!(m.props.subscription_ids(), vec![99]);
}
