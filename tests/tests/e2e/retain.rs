//! Retained messages and retain-related subscription options.

#![allow(clippy::unwrap_used)]

use midge_e2e::raw::*;
use midge_e2e::*;
use rumqttc::QoS;
use std::time::Duration;

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

/// `/metrics` over HTTP: the value of one sample.
async fn metric(b: &TestBroker, sample: &str) -> f64 {
    let r = midge_e2e::http::Admin::of(b)
        .call("GET", "/metrics", None)
        .await;
    assert_eq!(r.status, 200);
    midge_e2e::http::samples(&r.text())
        .into_iter()
        .find(|(k, _)| k == sample)
        .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{}", r.text()))
        .1
}

/// The retained messages under `base/#` as an independent client sees them:
/// `mosquitto_sub --retained-only`, `topic payload` lines, sorted. `None`
/// without mosquitto_sub (a failure under CI=true).
async fn retained_by_mosquitto_sub(b: &TestBroker, base: &str) -> Option<Vec<String>> {
    if std::process::Command::new("mosquitto_sub")
        .arg("--help")
        .output()
        .is_err()
    {
        missing_tool("mosquitto_sub");
        return None;
    }
    let mut cmd = std::process::Command::new("mosquitto_sub");
    cmd.args(["-h", "127.0.0.1", "-p", &b.port().to_string(), "-V", "311"])
        .args([
            "-t",
            &format!("{base}/#"),
            "-v",
            "--retained-only",
            "-W",
            "2",
        ]);
    let out = run_command(cmd, Duration::from_secs(20)).await;
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    Some(lines)
}

/// `[mqtt] max_retained`: when the budget is full, a retained message on a
/// new topic is delivered but not kept, and counted; replacing or deleting a
/// kept topic still works, and a deletion makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_budget_refuses_new_topics_when_full() {
    let b = start_broker(|c| c.mqtt.max_retained = 3).await;
    let base = topic("budget");
    let t = |s: &str| format!("{base}/{s}");
    let mut live = V4::new(&b, "live").await;
    live.subscribe(&format!("{base}/#"), QoS::AtLeastOnce).await;
    let mut p = V4::new(&b, "pub").await;
    for (s, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")] {
        // QoS 1: the PUBACK comes after the retained store decided.
        p.publish(&t(s), QoS::AtLeastOnce, true, v).await;
        // Delivered whether kept or not.
        assert_eq!(text(&live.next_publish().await.payload), v);
    }
    assert_eq!(metric(&b, "midge_retained_refused_total").await, 1.0);
    assert_eq!(metric(&b, "midge_retained_messages").await, 3.0);
    // A kept topic can still be replaced when full.
    p.publish(&t("a"), QoS::AtLeastOnce, true, "1b").await;
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&format!("{base}/#"), QoS::AtLeastOnce).await;
    let mut got: Vec<(String, String)> = Vec::new();
    for _ in 0..3 {
        let m = s.next_publish().await;
        assert!(m.retain, "{m:?}");
        got.push((m.topic.clone(), text(&m.payload)));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (t("a"), "1b".to_string()),
            (t("b"), "2".to_string()),
            (t("c"), "3".to_string())
        ]
    );
    s.expect_no_publish(QUIET).await;
    if let Some(lines) = retained_by_mosquitto_sub(&b, &base).await {
        assert_eq!(
            lines,
            vec![
                format!("{} 1b", t("a")),
                format!("{} 2", t("b")),
                format!("{} 3", t("c"))
            ]
        );
    }
    // Deleting one makes room for a new topic.
    p.publish(&t("b"), QoS::AtLeastOnce, true, "").await;
    p.publish(&t("e"), QoS::AtLeastOnce, true, "5").await;
    assert_eq!(metric(&b, "midge_retained_refused_total").await, 1.0);
    assert_eq!(metric(&b, "midge_retained_messages").await, 3.0);
    let mut s2 = V4::new(&b, "sub2").await;
    s2.subscribe(&t("e"), QoS::AtLeastOnce).await;
    assert_eq!(text(&s2.next_publish().await.payload), "5");
    let s = midge_e2e::http::Admin::of(&b).get("/api/v1/status").await;
    assert_eq!(s["retained_refused"], 1, "{s}");
}

/// `[mqtt] max_retained_bytes` counts topic + payload bytes: a message that
/// would go over it is not kept, and a replacement that does not fit drops
/// the old value too (no stale value served as the last one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_byte_budget_refuses_what_does_not_fit() {
    let base = topic("bytes");
    let t = |s: &str| format!("{base}/{s}");
    let one = t("a").len() + 40;
    // Room for two 40-byte messages, not three.
    let budget = 2 * one + 10;
    let b = start_broker(|c| c.mqtt.max_retained_bytes = budget).await;
    let mut p = V4::new(&b, "pub").await;
    let forty = "x".repeat(40);
    p.publish(&t("a"), QoS::AtLeastOnce, true, forty.as_str())
        .await;
    p.publish(&t("b"), QoS::AtLeastOnce, true, forty.as_str())
        .await;
    assert_eq!(metric(&b, "midge_retained_bytes").await, (2 * one) as f64);
    p.publish(&t("c"), QoS::AtLeastOnce, true, forty.as_str())
        .await;
    assert_eq!(metric(&b, "midge_retained_refused_total").await, 1.0);
    // A smaller replacement fits; a larger one does not, and drops `b`.
    p.publish(&t("a"), QoS::AtLeastOnce, true, "small").await;
    p.publish(&t("b"), QoS::AtLeastOnce, true, "y".repeat(100).as_str())
        .await;
    assert_eq!(metric(&b, "midge_retained_refused_total").await, 2.0);
    assert_eq!(
        metric(&b, "midge_retained_bytes").await,
        (t("a").len() + 5) as f64
    );
    let mut s = V4::new(&b, "sub").await;
    s.subscribe(&format!("{base}/#"), QoS::AtLeastOnce).await;
    let m = s.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), text(&m.payload).as_str()),
        (t("a").as_str(), "small")
    );
    s.expect_no_publish(QUIET).await;
    if let Some(lines) = retained_by_mosquitto_sub(&b, &base).await {
        assert_eq!(lines, vec![format!("{} small", t("a"))]);
    }
}
