//! Protocol violations over raw sockets: v5 gets DISCONNECT with a reason code, 3.1.1 is closed,
//! other clients keep working.

#![allow(clippy::unwrap_used)]

use midge_e2e::raw::*;
use midge_e2e::*;

async fn connected(b: &TestBroker, v5: bool) -> RawClient {
    let o = if v5 {
        ConnectOpts::v5(&unique("bad"))
    } else {
        ConnectOpts::v4(&unique("bad"))
    };
    RawClient::handshake(b.addr, o).await.0
}

/// Sends `bytes` after CONNECT and checks the close (and the v5 reason, one of `reasons`).
async fn violation(v5: bool, bytes: Vec<u8>, reasons: &[u8]) {
    let b = start_broker(|_| {}).await;
    // A bystander that must not be affected.
    let t = topic("bystander");
    let mut by = V4::new(&b, "bystander").await;
    by.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;

    let mut c = connected(&b, v5).await;
    c.send(&bytes).await;
    let got = c.expect_closed().await;
    if v5 {
        let d = got
            .iter()
            .find(|p| p.kind == DISCONNECT)
            .unwrap_or_else(|| panic!("no DISCONNECT before close: {got:?}"));
        let r = d.disconnect().reason;
        assert!(
            reasons.contains(&r),
            "DISCONNECT reason {r:#04x}, expected one of {reasons:02x?}"
        );
    } else {
        assert!(got.iter().all(|p| p.kind != DISCONNECT), "{got:?}");
    }
    let mut p = V4::new(&b, "pub").await;
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, "still here")
        .await;
    assert_eq!(text(&by.next_publish().await.payload), "still here");
    assert_alive(&b).await;
}

fn bad_remaining_length() -> Vec<u8> {
    // Five continuation bytes: remaining length longer than 4 bytes.
    vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_malformed_remaining_length_gets_0x81() {
    violation(true, bad_remaining_length(), &[0x81]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_malformed_remaining_length_closes() {
    violation(false, bad_remaining_length(), &[]).await;
}

fn subscribe_bad_flags(v5: bool) -> Vec<u8> {
    let mut p = subscribe(v5, 1, &[], &[("e2e/flags", 0)]);
    p[0] = 0x80; // reserved bits must be 0b0010
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_reserved_flag_bits_get_0x81() {
    violation(true, subscribe_bad_flags(true), &[0x81]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_reserved_flag_bits_close() {
    violation(false, subscribe_bad_flags(false), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_pubrel_with_wrong_flags_gets_0x81() {
    violation(true, ack(0x60, 1), &[0x81]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_qos_3_gets_0x81() {
    let mut p = publish(true, "e2e/q3", 1, false, false, 1, &[], b"x");
    p[0] |= 0x06; // QoS bits 11
    violation(true, p, &[0x81]).await;
}

fn invalid_utf8_topic(v5: bool) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'a', b'/', 0xC3, 0x28]; // invalid 2-byte sequence
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(b"payload");
    frame(0x30, &body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_invalid_utf8_topic_gets_0x81() {
    violation(true, invalid_utf8_topic(true), &[0x81]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_invalid_utf8_topic_closes() {
    violation(false, invalid_utf8_topic(false), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_nul_character_in_topic_gets_0x81() {
    let mut body = vec![0x00, 0x03, b'a', 0x00, b'b', 0];
    body.extend_from_slice(b"x");
    violation(true, frame(0x30, &body), &[0x81]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_wildcard_in_publish_topic_gets_0x90() {
    // 0x90 Topic Name invalid; a codec may classify it as malformed/protocol error.
    violation(
        true,
        publish(true, "e2e/+/x", 0, false, false, 0, &[], b"x"),
        &[0x90, 0x81, 0x82],
    )
    .await;
    violation(
        true,
        publish(true, "e2e/#", 0, false, false, 0, &[], b"x"),
        &[0x90, 0x81, 0x82],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_wildcard_in_publish_topic_closes() {
    violation(
        false,
        publish(false, "e2e/+", 0, false, false, 0, &[], b"x"),
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_invalid_topic_filter_gets_disconnect() {
    // 0x8F Topic Filter invalid; a codec may classify it as malformed/protocol error.
    for f in ["e2e/a#", "e2e/#/x", "e2e/a+/b", ""] {
        violation(
            true,
            subscribe(true, 1, &[], &[(f, 0)]),
            &[0x8F, 0x81, 0x82],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_invalid_topic_filter_closes() {
    violation(false, subscribe(false, 1, &[], &[("e2e/#/x", 0)]), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_duplicate_property_gets_0x82() {
    let props = [
        Prop::U32(prop::MESSAGE_EXPIRY_INTERVAL, 5),
        Prop::U32(prop::MESSAGE_EXPIRY_INTERVAL, 6),
    ];
    violation(
        true,
        publish(true, "e2e/dup", 0, false, false, 0, &props, b"x"),
        &[0x82],
    )
    .await;
}

/// MQTT-3.3.4-6: a PUBLISH from a client MUST NOT carry a Subscription
/// Identifier; breaking a MUST is a Protocol Error (MQTT-4.13.1-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_with_a_subscription_identifier_gets_0x82() {
    let props = [Prop::VarInt(prop::SUBSCRIPTION_IDENTIFIER, 1)];
    violation(
        true,
        publish(true, "e2e/subid", 1, false, false, 1, &props, b"x"),
        &[0x82],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscribe_without_filters_is_rejected() {
    violation(true, frame(0x82, &[0x00, 0x01, 0x00]), &[0x81, 0x82]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscribe_reserved_option_bits_get_0x81() {
    violation(true, subscribe(true, 1, &[], &[("e2e/opt", 0xC0)]), &[0x81]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_qos1_packet_id_zero_is_rejected() {
    violation(
        true,
        publish(true, "e2e/pid0", 1, false, false, 0, &[], b"x"),
        &[0x81, 0x82],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unknown_packet_type_0_gets_0x81() {
    violation(true, vec![0x00, 0x00], &[0x81, 0x82]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_connect_reserved_flag_closes() {
    let b = start_broker(|_| {}).await;
    let mut c = RawClient::connect(b.addr).await;
    let mut pkt = ConnectOpts::v4(&unique("rsv")).encode();
    // Connect flags are at offset 2 (header) + 6 (name) + 1 (level) = 9.
    pkt[9] |= 0x01;
    c.send(&pkt).await;
    let got = c.expect_closed().await;
    assert!(
        got.iter().all(|p| p.kind != CONNACK || p.body[1] != 0),
        "{got:?}"
    );
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_connect_then_close_does_not_hurt_broker() {
    let b = start_broker(|_| {}).await;
    let mut c = RawClient::connect(b.addr).await;
    let pkt = ConnectOpts::v5(&unique("trunc")).encode();
    c.send(&pkt[..pkt.len() / 2]).await;
    drop(c);
    assert_alive(&b).await;
}
