//! CONNECT / CONNACK behaviour (3.1.1 and 5.0).

#![allow(clippy::unwrap_used)]

use midge_e2e::raw::*;
use midge_e2e::*;

async fn v5_connack(broker: &TestBroker, opts: ConnectOpts) -> ConnAckP {
    let (_c, ack) = RawClient::handshake(broker.addr, opts).await;
    ack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_connack_success_raw_bytes() {
    let b = start_broker(|_| {}).await;
    let mut c = RawClient::connect(b.addr).await;
    c.send(&ConnectOpts::v4(&unique("c")).encode()).await;
    let p = c.recv().await;
    // 0x20 0x02 flags=0 rc=0, exactly.
    assert_eq!(
        (p.kind, p.flags, p.body.clone()),
        (CONNACK, 0, vec![0x00, 0x00])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v4_and_v5_connect() {
    let b = start_broker(|_| {}).await;
    let (_c4, a4) = V4::connect(v4_options(&b, "c4")).await;
    assert!(!a4.session_present);
    let (_c5, a5) = V5::connect(v5_options(&b, "c5")).await;
    assert!(!a5.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_assigned_client_identifier_for_empty_client_id() {
    let b = start_broker(|_| {}).await;
    let ack = v5_connack(&b, ConnectOpts::v5("")).await;
    let id = ack
        .props
        .str(prop::ASSIGNED_CLIENT_IDENTIFIER)
        .expect("Assigned Client Identifier missing");
    assert!(!id.is_empty());
    // Two empty-id clients get different identifiers.
    let ack2 = v5_connack(&b, ConnectOpts::v5("")).await;
    assert_ne!(ack2.props.str(prop::ASSIGNED_CLIENT_IDENTIFIER), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_no_assigned_client_identifier_when_client_id_given() {
    let b = start_broker(|_| {}).await;
    let ack = v5_connack(&b, ConnectOpts::v5(&unique("named"))).await;
    assert!(!ack.props.has(prop::ASSIGNED_CLIENT_IDENTIFIER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_client_id_with_clean_session_accepted() {
    let b = start_broker(|_| {}).await;
    let (_c, ack) = RawClient::handshake(b.addr, ConnectOpts::v4("")).await;
    assert_eq!(ack.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_client_id_without_clean_session_rejected_with_code_2() {
    let b = start_broker(|_| {}).await;
    let mut c = RawClient::connect(b.addr).await;
    c.send(&ConnectOpts::v4("").clean(false).encode()).await;
    let p = c.recv().await;
    assert_eq!((p.kind, p.body.clone()), (CONNACK, vec![0x00, 0x02]));
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_server_keep_alive_when_client_asks_more_than_max() {
    let b = start_broker(|c| c.mqtt.max_keep_alive = 10).await;
    let ack = v5_connack(&b, ConnectOpts::v5(&unique("ka")).keep_alive(60)).await;
    assert_eq!(ack.props.num(prop::SERVER_KEEP_ALIVE), Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_server_keep_alive_when_client_asks_zero() {
    let b = start_broker(|c| c.mqtt.max_keep_alive = 10).await;
    let ack = v5_connack(&b, ConnectOpts::v5(&unique("ka")).keep_alive(0)).await;
    assert_eq!(ack.props.num(prop::SERVER_KEEP_ALIVE), Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_keep_alive_within_limit_is_kept() {
    let b = start_broker(|c| c.mqtt.max_keep_alive = 10).await;
    let ack = v5_connack(&b, ConnectOpts::v5(&unique("ka")).keep_alive(5)).await;
    // Either no Server Keep Alive, or the value the client asked for.
    if let Some(v) = ack.props.num(prop::SERVER_KEEP_ALIVE) {
        assert_eq!(v, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connack_receive_maximum() {
    let b = start_broker(|c| c.mqtt.receive_maximum = 7).await;
    let ack = v5_connack(&b, ConnectOpts::v5(&unique("rm"))).await;
    assert_eq!(ack.props.num(prop::RECEIVE_MAXIMUM), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connack_maximum_qos_only_when_below_2() {
    let b = start_broker(|c| c.mqtt.max_qos = 1).await;
    let ack = v5_connack(&b, ConnectOpts::v5(&unique("mq"))).await;
    assert_eq!(ack.props.num(prop::MAXIMUM_QOS), Some(1));
    let b2 = start_broker(|c| c.mqtt.max_qos = 0).await;
    let ack = v5_connack(&b2, ConnectOpts::v5(&unique("mq"))).await;
    assert_eq!(ack.props.num(prop::MAXIMUM_QOS), Some(0));
    let b3 = start_broker(|_| {}).await;
    let ack = v5_connack(&b3, ConnectOpts::v5(&unique("mq"))).await;
    assert!(
        !ack.props.has(prop::MAXIMUM_QOS),
        "Maximum QoS 2 must not be sent: {:?}",
        ack.props
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connack_retain_available() {
    let b = start_broker(|c| c.mqtt.retain_available = false).await;
    let ack = v5_connack(&b, ConnectOpts::v5(&unique("ra"))).await;
    assert_eq!(ack.props.num(prop::RETAIN_AVAILABLE), Some(0));
    let b2 = start_broker(|_| {}).await;
    let ack = v5_connack(&b2, ConnectOpts::v5(&unique("ra"))).await;
    assert!(matches!(
        ack.props.num(prop::RETAIN_AVAILABLE),
        None | Some(1)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connack_maximum_packet_size() {
    let b = start_broker(|c| c.mqtt.max_packet_size = 4096).await;
    let ack = v5_connack(&b, ConnectOpts::v5(&unique("mps"))).await;
    assert_eq!(ack.props.num(prop::MAXIMUM_PACKET_SIZE), Some(4096));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connack_topic_alias_maximum() {
    let b = start_broker(|c| c.mqtt.topic_alias_maximum = 5).await;
    let ack = v5_connack(&b, ConnectOpts::v5(&unique("tam"))).await;
    assert_eq!(ack.props.num(prop::TOPIC_ALIAS_MAXIMUM), Some(5));
    let b2 = start_broker(|c| c.mqtt.topic_alias_maximum = 0).await;
    let ack = v5_connack(&b2, ConnectOpts::v5(&unique("tam"))).await;
    assert!(matches!(
        ack.props.num(prop::TOPIC_ALIAS_MAXIMUM),
        None | Some(0)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connack_feature_availability_flags() {
    let b = start_broker(|c| {
        c.mqtt.wildcard_subscriptions = false;
        c.mqtt.subscription_identifiers = false;
        c.mqtt.shared_subscriptions = false;
    })
    .await;
    let ack = v5_connack(&b, ConnectOpts::v5(&unique("fa"))).await;
    assert_eq!(
        ack.props.num(prop::WILDCARD_SUBSCRIPTION_AVAILABLE),
        Some(0)
    );
    assert_eq!(
        ack.props.num(prop::SUBSCRIPTION_IDENTIFIER_AVAILABLE),
        Some(0)
    );
    assert_eq!(ack.props.num(prop::SHARED_SUBSCRIPTION_AVAILABLE), Some(0));
    let b2 = start_broker(|_| {}).await;
    let ack = v5_connack(&b2, ConnectOpts::v5(&unique("fa"))).await;
    for id in [
        prop::WILDCARD_SUBSCRIPTION_AVAILABLE,
        prop::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        prop::SHARED_SUBSCRIPTION_AVAILABLE,
    ] {
        assert!(
            matches!(ack.props.num(id), None | Some(1)),
            "property {id:#x}: {:?}",
            ack.props
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connack_properties_not_sent_to_v311() {
    let b = start_broker(|c| c.mqtt.max_qos = 1).await;
    let mut c = RawClient::connect(b.addr).await;
    c.send(&ConnectOpts::v4(&unique("c")).encode()).await;
    let p = c.recv().await;
    assert_eq!(
        p.body,
        vec![0x00, 0x00],
        "3.1.1 CONNACK has exactly two bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_3_mqisdp_gets_connack_1() {
    let b = start_broker(|_| {}).await;
    let mut c = RawClient::connect(b.addr).await;
    // MQTT 3.1: protocol name "MQIsdp", level 3.
    let mut body = Vec::new();
    put_str(&mut body, b"MQIsdp");
    body.extend_from_slice(&[3, 0x02, 0, 30]);
    put_str(&mut body, unique("old").as_bytes());
    c.send(&frame(0x10, &body)).await;
    let got = c.expect_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].kind, got[0].body.clone()),
        (CONNACK, vec![0x00, 0x01])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_6_gets_unsupported_version_connack() {
    let b = start_broker(|_| {}).await;
    let mut c = RawClient::connect(b.addr).await;
    // Level 6 with 3.1.1 framing (no properties).
    let mut o = ConnectOpts::v4(&unique("l6"));
    o.level = 6;
    c.send(&o.encode()).await;
    let got = c.expect_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, CONNACK);
    // 3.1.1 form: rc 0x01; 5.0 form: reason 0x84 followed by properties.
    let b = &got[0].body;
    assert!(
        b == &vec![0x00, 0x01] || (b.len() >= 3 && b[0] == 0 && b[1] == 0x84),
        "CONNACK body {b:02x?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_6_with_v5_framing_gets_0x84() {
    let b = start_broker(|_| {}).await;
    let mut c = RawClient::connect(b.addr).await;
    let mut o = ConnectOpts::v5(&unique("l6"));
    o.level = 6;
    c.send(&o.encode()).await;
    let got = c.expect_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, CONNACK);
    let b = &got[0].body;
    assert!(
        b == &vec![0x00, 0x01] || (b.len() >= 3 && b[0] == 0 && b[1] == 0x84),
        "CONNACK body {b:02x?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_second_connect_closes_connection() {
    let b = start_broker(|_| {}).await;
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("twice"))).await;
    c.send(&ConnectOpts::v4(&unique("twice")).encode()).await;
    c.expect_disconnect(0).await;
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_second_connect_gets_disconnect_0x82() {
    let b = start_broker(|_| {}).await;
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("twice"))).await;
    c.send(&ConnectOpts::v5(&unique("twice")).encode()).await;
    c.expect_disconnect(0x82).await;
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_authentication_method_without_auth_configured_gets_0x8c() {
    let b = start_broker(|_| {}).await;
    let mut c = RawClient::connect(b.addr).await;
    let o = ConnectOpts::v5(&unique("auth"))
        .prop(Prop::Str(prop::AUTHENTICATION_METHOD, "SCRAM-SHA-1".into()));
    let ack = c.send_connect(&o).await;
    assert_eq!(ack.code, 0x8C);
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_not_connect_closes_connection() {
    let b = start_broker(|_| {}).await;
    let mut c = RawClient::connect(b.addr).await;
    c.send(&pingreq()).await;
    let got = c.expect_closed().await;
    assert!(got.iter().all(|p| p.kind != PINGRESP), "{got:?}");
}
