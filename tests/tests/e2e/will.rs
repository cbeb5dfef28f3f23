//! Will messages.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use midge_e2e::raw::*;
use midge_e2e::*;

fn will(topic: &str, payload: &[u8], props: Vec<Prop>) -> RawWill {
    RawWill {
        topic: topic.into(),
        payload: payload.to_vec(),
        qos: 1,
        retain: false,
        props,
    }
}

async fn watcher(b: &TestBroker, t: &str) -> RawClient {
    let (mut w, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("watch"))).await;
    w.subscribe(1, &[], &[(t, 1)]).await;
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_will_published_on_abnormal_close() {
    let b = start_broker(|_| {}).await;
    let t = topic("will");
    let mut w = watcher(&b, &t).await;
    let (c, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v4(&unique("w")).will(will(&t, b"gone", vec![])),
    )
    .await;
    drop(c);
    let m = w.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice(), m.qos),
        (t.as_str(), &b"gone"[..], 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_published_on_abnormal_close() {
    let b = start_broker(|_| {}).await;
    let t = topic("will5");
    let mut w = watcher(&b, &t).await;
    let (c, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&unique("w")).will(will(&t, b"gone5", vec![])),
    )
    .await;
    drop(c);
    assert_eq!(w.recv_publish().await.payload, b"gone5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_will_not_published_on_normal_disconnect() {
    let b = start_broker(|_| {}).await;
    let t = topic("nowill");
    let mut w = watcher(&b, &t).await;
    let (mut c, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v4(&unique("w")).will(will(&t, b"x", vec![])),
    )
    .await;
    c.send(&disconnect(false, 0, &[])).await;
    c.expect_closed().await;
    w.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_not_published_on_normal_disconnect() {
    let b = start_broker(|_| {}).await;
    let t = topic("nowill5");
    let mut w = watcher(&b, &t).await;
    let (mut c, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&unique("w")).will(will(&t, b"x", vec![])),
    )
    .await;
    c.send(&disconnect(true, 0, &[])).await;
    c.expect_closed().await;
    w.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_published_on_disconnect_with_will_0x04() {
    let b = start_broker(|_| {}).await;
    let t = topic("will04");
    let mut w = watcher(&b, &t).await;
    let (mut c, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&unique("w")).will(will(&t, b"04", vec![])),
    )
    .await;
    c.send(&disconnect(true, 0x04, &[])).await;
    c.expect_closed().await;
    assert_eq!(w.recv_publish().await.payload, b"04");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v4_will_published_when_keepalive_expires() {
    let b = start_broker(|_| {}).await;
    let t = topic("willka");
    let mut w = watcher(&b, &t).await;
    // Raw client with keep alive 1 that goes silent.
    let (_c, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v4(&unique("w"))
            .keep_alive(1)
            .will(will(&t, b"ka", vec![])),
    )
    .await;
    assert_eq!(w.recv_publish().await.payload, b"ka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will_is_stored() {
    let b = start_broker(|_| {}).await;
    let t = topic("willret");
    let mut wl = will(&t, b"retained-will", vec![]);
    wl.retain = true;
    let (c, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("w")).will(wl)).await;
    let mut w = watcher(&b, &t).await;
    drop(c);
    let live = w.recv_publish().await;
    assert_eq!(live.payload, b"retained-will");
    w.send(&puback(live.pid)).await;
    let (mut late, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("late"))).await;
    late.subscribe(1, &[], &[(&t, 1)]).await;
    let m = late.recv_publish().await;
    assert!(m.retain);
    assert_eq!(m.payload, b"retained-will");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_interval_delays_publication() {
    let b = start_broker(|_| {}).await;
    let t = topic("willdelay");
    let mut w = watcher(&b, &t).await;
    let opts = ConnectOpts::v5(&unique("w"))
        .prop(Prop::session_expiry(60))
        .will(will(
            &t,
            b"late",
            vec![Prop::U32(prop::WILL_DELAY_INTERVAL, 2)],
        ));
    let (c, _) = RawClient::handshake(b.addr, opts).await;
    drop(c);
    let start = Instant::now();
    w.expect_silence(Duration::from_millis(1000)).await;
    let m = w.recv_publish().await;
    assert_eq!(m.payload, b"late");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "will published after {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_not_published_if_client_reconnects_before_delay() {
    let b = start_broker(|_| {}).await;
    let t = topic("willback");
    let id = unique("w");
    let mut w = watcher(&b, &t).await;
    let opts = ConnectOpts::v5(&id)
        .prop(Prop::session_expiry(60))
        .will(will(
            &t,
            b"never",
            vec![Prop::U32(prop::WILL_DELAY_INTERVAL, 2)],
        ));
    let (c, _) = RawClient::handshake(b.addr, opts).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_c2, ack) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&id)
            .clean(false)
            .prop(Prop::session_expiry(60)),
    )
    .await;
    assert!(ack.session_present);
    w.expect_silence(Duration::from_millis(3000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_published_at_session_end_when_shorter_than_delay() {
    let b = start_broker(|_| {}).await;
    let t = topic("willse");
    let mut w = watcher(&b, &t).await;
    let opts = ConnectOpts::v5(&unique("w"))
        .prop(Prop::session_expiry(1))
        .will(will(
            &t,
            b"session-end",
            vec![Prop::U32(prop::WILL_DELAY_INTERVAL, 30)],
        ));
    let (c, _) = RawClient::handshake(b.addr, opts).await;
    drop(c);
    assert_eq!(w.recv_publish().await.payload, b"session-end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_properties_forwarded() {
    let b = start_broker(|_| {}).await;
    let t = topic("willprops");
    let mut w = watcher(&b, &t).await;
    let props = vec![
        Prop::Byte(prop::PAYLOAD_FORMAT_INDICATOR, 1),
        Prop::Str(prop::CONTENT_TYPE, "text/plain".into()),
        Prop::Str(prop::RESPONSE_TOPIC, "reply/here".into()),
        Prop::Bin(prop::CORRELATION_DATA, vec![1, 2, 3]),
        Prop::user("k1", "v1"),
        Prop::user("k2", "v2"),
        Prop::user("k1", "v3"),
    ];
    let (c, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&unique("w")).will(will(&t, b"props", props)),
    )
    .await;
    drop(c);
    let m = w.recv_publish().await;
    assert_eq!(m.payload, b"props");
    assert_eq!(m.props.num(prop::PAYLOAD_FORMAT_INDICATOR), Some(1));
    assert_eq!(m.props.str(prop::CONTENT_TYPE), Some("text/plain"));
    assert_eq!(m.props.str(prop::RESPONSE_TOPIC), Some("reply/here"));
    assert_eq!(m.props.bin(prop::CORRELATION_DATA), Some(&[1u8, 2, 3][..]));
    assert_eq!(
        m.props.user_properties(),
        vec![
            ("k1".into(), "v1".into()),
            ("k2".into(), "v2".into()),
            ("k1".into(), "v3".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_will_with_properties() {
    let b = start_broker(|_| {}).await;
    let t = topic("willrq");
    let mut w = V5::new(&b, "watch").await;
    w.subscribe(&t, v5::QoS::AtLeastOnce).await;
    let mut o = v5_options(&b, "dying");
    let wp = v5::LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: Some("application/json".into()),
        response_topic: None,
        correlation_data: None,
        user_properties: vec![("a".into(), "b".into())],
    };
    o.set_last_will(v5::LastWill::new(
        &t,
        "{}",
        v5::QoS::AtLeastOnce,
        false,
        Some(wp),
    ));
    let (c, _) = V5::connect(o).await;
    drop(c); // aborts the event loop task: abnormal close
    let m = w.next_publish().await;
    assert_eq!(m.payload.as_ref(), b"{}");
    let p = m.properties.expect("properties");
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.user_properties, vec![("a".to_string(), "b".to_string())]);
}
