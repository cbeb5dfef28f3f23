//! MQTT 5.0 features: topic aliases, message expiry, property forwarding, problem information.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use midge_e2e::raw::*;
use midge_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_topic_alias_set_then_reused() {
    let b = start_broker(|c| c.mqtt.topic_alias_maximum = 4).await;
    let t = topic("alias");
    let mut s = V5::new(&b, "sub").await;
    s.subscribe(&t, v5::QoS::AtLeastOnce).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("alias"))).await;
    p.publish(&t, 1, false, 1, &[Prop::topic_alias(3)], b"first")
        .await;
    p.publish("", 1, false, 2, &[Prop::topic_alias(3)], b"second")
        .await;
    for want in ["first", "second"] {
        let m = s.next_publish().await;
        assert_eq!(
            (m.topic.as_ref(), m.payload.as_ref()),
            (t.as_bytes(), want.as_bytes())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_topic_alias_can_be_remapped() {
    let b = start_broker(|c| c.mqtt.topic_alias_maximum = 4).await;
    let t1 = topic("alias1");
    let t2 = topic("alias2");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("s"))).await;
    s.subscribe(1, &[], &[(&t1, 0), (&t2, 0)]).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("p"))).await;
    p.publish(&t1, 0, false, 0, &[Prop::topic_alias(1)], b"a")
        .await;
    p.publish(&t2, 0, false, 0, &[Prop::topic_alias(1)], b"b")
        .await;
    p.publish("", 0, false, 0, &[Prop::topic_alias(1)], b"c")
        .await;
    let got: Vec<(String, Vec<u8>)> = [
        s.recv_publish().await,
        s.recv_publish().await,
        s.recv_publish().await,
    ]
    .into_iter()
    .map(|m| (m.topic, m.payload))
    .collect();
    assert_eq!(
        got,
        vec![
            (t1.clone(), b"a".to_vec()),
            (t2.clone(), b"b".to_vec()),
            (t2, b"c".to_vec())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_zero_gets_disconnect_0x94() {
    let b = start_broker(|c| c.mqtt.topic_alias_maximum = 4).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("a0"))).await;
    p.send(&publish(
        true,
        &topic("a0"),
        0,
        false,
        false,
        0,
        &[Prop::topic_alias(0)],
        b"x",
    ))
    .await;
    p.expect_disconnect(0x94).await;
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_above_maximum_gets_disconnect_0x94() {
    let b = start_broker(|c| c.mqtt.topic_alias_maximum = 2).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("a3"))).await;
    p.send(&publish(
        true,
        &topic("a3"),
        0,
        false,
        false,
        0,
        &[Prop::topic_alias(3)],
        b"x",
    ))
    .await;
    p.expect_disconnect(0x94).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_when_disabled_gets_disconnect_0x94() {
    let b = start_broker(|c| c.mqtt.topic_alias_maximum = 0).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("adis"))).await;
    p.send(&publish(
        true,
        &topic("adis"),
        0,
        false,
        false,
        0,
        &[Prop::topic_alias(1)],
        b"x",
    ))
    .await;
    p.expect_disconnect(0x94).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_alias_with_empty_topic_is_protocol_error() {
    let b = start_broker(|c| c.mqtt.topic_alias_maximum = 4).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("aunk"))).await;
    p.send(&publish(
        true,
        "",
        0,
        false,
        false,
        0,
        &[Prop::topic_alias(2)],
        b"x",
    ))
    .await;
    p.expect_disconnect(0x82).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_assigns_outgoing_topic_alias_when_allowed() {
    let b = start_broker(|_| {}).await;
    let t = topic("outalias");
    let (mut s, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&unique("oa")).prop(Prop::topic_alias_maximum(5)),
    )
    .await;
    s.subscribe(1, &[], &[(&t, 0)]).await;
    let mut p = V5::new(&b, "pub").await;
    p.publish(&t, v5::QoS::AtMostOnce, false, "one").await;
    p.publish(&t, v5::QoS::AtMostOnce, false, "two").await;
    let m1 = s.recv_publish().await;
    let m2 = s.recv_publish().await;
    assert_eq!(m1.payload, b"one");
    assert_eq!(m2.payload, b"two");
    let alias2 = m2
        .props
        .num(prop::TOPIC_ALIAS)
        .expect("second publish should use a topic alias") as u16;
    assert!(
        (1..=5).contains(&alias2),
        "alias {alias2} outside the client's maximum"
    );
    assert_eq!(m2.topic, "", "second publish should carry an empty topic");
    // The first one established the mapping.
    assert_eq!(m1.topic, t);
    assert_eq!(m1.props.num(prop::TOPIC_ALIAS), Some(alias2 as u32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sends_no_topic_alias_when_client_does_not_allow() {
    let b = start_broker(|_| {}).await;
    let t = topic("noalias");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("na"))).await;
    s.subscribe(1, &[], &[(&t, 0)]).await;
    let mut p = V5::new(&b, "pub").await;
    for _ in 0..3 {
        p.publish(&t, v5::QoS::AtMostOnce, false, "x").await;
    }
    for _ in 0..3 {
        let m = s.recv_publish().await;
        assert_eq!(m.topic, t);
        assert!(!m.props.has(prop::TOPIC_ALIAS));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expired_while_queued_is_not_delivered() {
    let b = start_broker(|_| {}).await;
    let id = unique("exp");
    let t = topic("exp");
    let (mut s, _) =
        RawClient::handshake(b.addr, ConnectOpts::v5(&id).prop(Prop::session_expiry(60))).await;
    s.subscribe(1, &[], &[(&t, 1)]).await;
    s.send(&disconnect(true, 0, &[])).await;
    s.expect_closed().await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("p"))).await;
    p.publish(
        &t,
        1,
        false,
        1,
        &[Prop::U32(prop::MESSAGE_EXPIRY_INTERVAL, 1)],
        b"expires",
    )
    .await;
    p.publish(&t, 1, false, 2, &[], b"stays").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (mut s, ack) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&id)
            .clean(false)
            .prop(Prop::session_expiry(60)),
    )
    .await;
    assert!(ack.session_present);
    let m = s.recv_publish().await;
    assert_eq!(m.payload, b"stays");
    s.send(&puback(m.pid)).await;
    let extra = s.ping().await;
    assert!(extra.is_empty(), "{extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_remaining_interval_forwarded() {
    let b = start_broker(|_| {}).await;
    let id = unique("expfwd");
    let t = topic("expfwd");
    let (mut s, _) =
        RawClient::handshake(b.addr, ConnectOpts::v5(&id).prop(Prop::session_expiry(60))).await;
    s.subscribe(1, &[], &[(&t, 1)]).await;
    s.send(&disconnect(true, 0, &[])).await;
    s.expect_closed().await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("p"))).await;
    p.publish(
        &t,
        1,
        false,
        1,
        &[Prop::U32(prop::MESSAGE_EXPIRY_INTERVAL, 60)],
        b"m",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut s, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&id)
            .clean(false)
            .prop(Prop::session_expiry(60)),
    )
    .await;
    let m = s.recv_publish().await;
    let left = m
        .props
        .num(prop::MESSAGE_EXPIRY_INTERVAL)
        .expect("Message Expiry Interval must be forwarded");
    assert!((50..60).contains(&left), "remaining interval {left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_expires() {
    let b = start_broker(|_| {}).await;
    let t = topic("retexp");
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("p"))).await;
    p.publish(
        &t,
        1,
        true,
        1,
        &[Prop::U32(prop::MESSAGE_EXPIRY_INTERVAL, 1)],
        b"short",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("s"))).await;
    s.send(&subscribe(true, 1, &[], &[(&t, 1)])).await;
    let got = s.ping().await;
    assert!(
        got.iter().all(|p| p.kind != PUBLISH),
        "expired retained message delivered: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_forwarded_unaltered() {
    let b = start_broker(|_| {}).await;
    let t = topic("props");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("s"))).await;
    s.subscribe(1, &[], &[(&t, 1)]).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("p"))).await;
    let props = vec![
        Prop::Byte(prop::PAYLOAD_FORMAT_INDICATOR, 1),
        Prop::Str(prop::CONTENT_TYPE, "application/json; charset=utf-8".into()),
        Prop::Str(prop::RESPONSE_TOPIC, "replies/ünïcode".into()),
        Prop::Bin(prop::CORRELATION_DATA, vec![0, 0xFF, 0x10, 0]),
        Prop::user("z", "1"),
        Prop::user("a", "2"),
        Prop::user("z", "3"),
        Prop::user("", ""),
    ];
    p.publish(&t, 1, false, 1, &props, b"{\"k\":1}").await;
    let m = s.recv_publish().await;
    assert_eq!(m.payload, b"{\"k\":1}");
    assert_eq!(m.props.num(prop::PAYLOAD_FORMAT_INDICATOR), Some(1));
    assert_eq!(
        m.props.str(prop::CONTENT_TYPE),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(m.props.str(prop::RESPONSE_TOPIC), Some("replies/ünïcode"));
    assert_eq!(
        m.props.bin(prop::CORRELATION_DATA),
        Some(&[0u8, 0xFF, 0x10, 0][..])
    );
    assert_eq!(
        m.props.user_properties(),
        vec![
            ("z".to_string(), "1".to_string()),
            ("a".into(), "2".into()),
            ("z".into(), "3".into()),
            ("".into(), "".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_user_properties_and_response_topic_round_trip() {
    let b = start_broker(|_| {}).await;
    let t = topic("rprops");
    let mut s = V5::new(&b, "sub").await;
    s.subscribe(&t, v5::QoS::AtLeastOnce).await;
    let mut p = V5::new(&b, "pub").await;
    let props = v5::PublishProperties {
        response_topic: Some("resp/x".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"cid")),
        user_properties: vec![("b".into(), "1".into()), ("a".into(), "2".into())],
        content_type: Some("text/plain".into()),
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    p.publish_props(&t, v5::QoS::AtLeastOnce, false, "req", props)
        .await;
    let m = s.next_publish().await;
    let got = m.properties.expect("properties");
    assert_eq!(got.response_topic.as_deref(), Some("resp/x"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"cid"[..]));
    assert_eq!(
        got.user_properties,
        vec![("b".to_string(), "1".to_string()), ("a".into(), "2".into())]
    );
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.payload_format_indicator, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_not_forwarded_to_v311_subscriber() {
    let b = start_broker(|_| {}).await;
    let t = topic("props4");
    let (mut s, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("s"))).await;
    s.subscribe(1, &[], &[(&t, 0)]).await;
    let (mut p, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("p"))).await;
    p.publish(
        &t,
        0,
        false,
        0,
        &[
            Prop::user("k", "v"),
            Prop::Str(prop::CONTENT_TYPE, "c".into()),
        ],
        b"plain",
    )
    .await;
    let raw = s.recv_kind(PUBLISH).await;
    let mut want = Vec::new();
    put_str(&mut want, t.as_bytes());
    want.extend_from_slice(b"plain");
    assert_eq!(raw.body, want, "3.1.1 PUBLISH must carry no properties");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_problem_information_0_suppresses_reason_strings() {
    let b = start_broker(|c| c.mqtt.wildcard_subscriptions = false).await;
    let t = topic("rpi");
    let (mut c, _) = RawClient::handshake(
        b.addr,
        ConnectOpts::v5(&unique("rpi")).prop(Prop::Byte(prop::REQUEST_PROBLEM_INFORMATION, 0)),
    )
    .await;
    let sa = c.subscribe(1, &[], &[(&format!("{t}/#"), 1)]).await;
    assert_eq!(sa.codes, vec![0xA2]);
    assert!(!sa.props.has(prop::REASON_STRING), "{:?}", sa.props);
    assert!(!sa.props.has(prop::USER_PROPERTY), "{:?}", sa.props);
    c.send(&unsubscribe(true, 2, &[&t])).await;
    let ua = c.recv_kind(UNSUBACK).await.suback(true);
    assert_eq!(ua.codes, vec![0x11]);
    assert!(!ua.props.has(prop::REASON_STRING), "{:?}", ua.props);
    c.send(&pubrel(777)).await;
    let comp = c.recv_kind(PUBCOMP).await.ack();
    assert!(!comp.props.has(prop::REASON_STRING), "{:?}", comp.props);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_authentication_method_without_auth_configured_gets_0x8c() {
    let b = start_broker(|_| {}).await;
    let (_c5, _) = V5::connect(v5_options(&b, "ok")).await;
    let mut o = v5_options(&b, "auth");
    o.set_authentication_method(Some("PLAIN".into()));
    let mut c = V5::start(o);
    let err = c.closed().await;
    assert!(err.contains("BadAuthenticationMethod"), "{err}");
}
