//! QoS 2 coming in over a link (a remote -> this broker): the remote's
//! PUBLISH goes through the session core as a client's does
//! (`Session::on_publish`), so each message is delivered here once: PUBREC
//! for a resend (DUP) without a second delivery, PUBCOMP for PUBREL, the
//! packet id free again afterwards, and more unreleased ids than our
//! Receive Maximum end the link. Against a real Mosquitto, and against a
//! remote written with the tests' own raw codec (tests/src/raw.rs), which
//! can send the resend at a chosen moment.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use midge_e2e::mosquitto::Mosquitto;
use midge_e2e::raw::{self, RawClient};
use midge_e2e::v5::QoS;
use midge_e2e::*;

use super::{bridges, linked, v5_at, wait_until};

fn config(port: u16, protocol: &str) -> String {
    format!(
        r#"
[[bridges]]
name = "cloud"
remote = "mqtt://127.0.0.1:{port}"
protocol = "{protocol}"
client_id = "{id}"
keep_alive = 60
[bridges.reconnect]
initial_ms = 100
max_ms = 1000
[[bridges.in]]
filter = "cmd/site1/#"
strip_prefix = "cmd/site1/"
add_prefix = "commands/"
qos = 2
"#,
        id = unique("edge")
    )
}

#[tokio::test]
async fn qos2_messages_published_on_mosquitto_arrive_once_in_order() {
    const N: usize = 200;
    for protocol in ["5.0", "3.1.1"] {
        let Some(remote) = Mosquitto::start("") else {
            return;
        };
        let cfg = config(remote.port, protocol);
        let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
        linked(&b, "cloud").await;
        let mut near = V5::new(&b, "near").await;
        near.subscribe("commands/#", QoS::ExactlyOnce).await;
        let mut far = v5_at(remote.port, "far").await;
        for i in 0..N {
            // Each waits for its PUBCOMP from Mosquitto.
            far.publish(
                &format!("cmd/site1/valve/{}", i % 3),
                QoS::ExactlyOnce,
                false,
                i.to_string(),
            )
            .await;
        }
        for i in 0..N {
            let p = near.next_publish().await;
            assert_eq!(
                (p.topic, p.payload, p.qos),
                (
                    Bytes::from(format!("commands/valve/{}", i % 3)),
                    Bytes::from(i.to_string()),
                    QoS::ExactlyOnce
                ),
                "{protocol}: message {i}"
            );
        }
        near.expect_no_publish(QUIET).await;
        let bridge = b.bridges.get("cloud").unwrap().clone();
        assert_eq!(bridge.status.received.load(Ordering::Relaxed), N as u64);
        // Every PUBREL came and was answered: no id left awaiting one.
        wait_until("every QoS 2 id released", 10, || {
            bridge.session.state.lock().incoming_qos2.is_empty()
        })
        .await;
        assert_eq!(bridge.status.disconnects.load(Ordering::Relaxed), 0);
        b.shutdown().await;
    }
}

/// Plays the remote's side of the connection the edge opened: reads its
/// CONNECT and SUBSCRIBE, answers CONNACK and SUBACK (QoS 2 granted).
async fn accept_link(listener: &tokio::net::TcpListener, v5: bool) -> RawClient {
    let (stream, _) = within("the bridge's connection", listener.accept())
        .await
        .unwrap();
    let mut remote = RawClient::accepted(stream, v5);
    let connect = remote.recv().await;
    assert_eq!(connect.kind, raw::CONNECT, "{connect:?}");
    let connack: &[u8] = if v5 { &[0, 0, 0] } else { &[0, 0] };
    remote.send(&raw::frame(0x20, connack)).await;
    let sub = remote.recv_kind(raw::SUBSCRIBE).await;
    let mut suback = sub.body[..2].to_vec();
    if v5 {
        suback.push(0); // no properties
    }
    suback.push(2);
    remote.send(&raw::frame(0x90, &suback)).await;
    remote
}

#[tokio::test]
async fn a_resent_qos2_publish_from_the_remote_is_delivered_once() {
    for protocol in ["5.0", "3.1.1"] {
        let v5 = protocol == "5.0";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = config(port, protocol);
        let b = start_broker(|c| {
            c.bridges = bridges(&cfg);
            // Our Receive Maximum, in the bridge's CONNECT: at most 3 QoS 2
            // messages from the remote awaiting PUBREL.
            c.mqtt.receive_maximum = 3;
        })
        .await;
        let mut near = V5::new(&b, "near").await;
        near.subscribe("commands/#", QoS::ExactlyOnce).await;
        let mut remote = accept_link(&listener, v5).await;
        linked(&b, "cloud").await;

        let publish = |dup: bool, id: u16, payload: &[u8]| {
            raw::publish(v5, "cmd/site1/door", 2, false, dup, id, &[], payload)
        };
        let ack = |p: raw::RawPacket| {
            let a = p.ack();
            (a.pid, a.reason)
        };
        remote.send(&publish(false, 7, b"open")).await;
        assert_eq!(ack(remote.recv_kind(raw::PUBREC).await), (7, 0));
        let p = near.next_publish().await;
        assert_eq!(
            (p.topic.as_ref(), p.payload.as_ref()),
            (&b"commands/door"[..], &b"open"[..])
        );
        // The resend before PUBREL (DUP): PUBREC again, not delivered again.
        remote.send(&publish(true, 7, b"open")).await;
        assert_eq!(ack(remote.recv_kind(raw::PUBREC).await), (7, 0));
        near.expect_no_publish(QUIET).await;
        // PUBREL frees the id; a second PUBREL finds none (0x92 in 5.0).
        remote.send(&raw::pubrel(7)).await;
        assert_eq!(ack(remote.recv_kind(raw::PUBCOMP).await), (7, 0));
        remote.send(&raw::pubrel(7)).await;
        let unknown = if v5 { 0x92 } else { 0 };
        assert_eq!(ack(remote.recv_kind(raw::PUBCOMP).await), (7, unknown));
        // The same id now carries a new message: delivered.
        remote.send(&publish(false, 7, b"close")).await;
        assert_eq!(ack(remote.recv_kind(raw::PUBREC).await), (7, 0));
        assert_eq!(near.next_publish().await.payload.as_ref(), b"close");
        let bridge = b.bridges.get("cloud").unwrap().clone();
        assert_eq!(bridge.status.received.load(Ordering::Relaxed), 2);

        // Ids 7, 8, 9 await PUBREL (our Receive Maximum is 3); a resend of
        // one is fine, a fourth id ends the link.
        for id in [8, 9] {
            remote.send(&publish(false, id, b"more")).await;
            assert_eq!(ack(remote.recv_kind(raw::PUBREC).await), (id, 0));
        }
        remote.send(&publish(true, 9, b"more")).await;
        assert_eq!(ack(remote.recv_kind(raw::PUBREC).await), (9, 0));
        remote.send(&publish(false, 10, b"too many")).await;
        let before = remote.expect_closed().await;
        assert!(
            before.iter().all(|p| p.kind != raw::PUBREC),
            "no PUBREC for the id over the maximum: {before:?}"
        );
        wait_until("the link's end in the status", 10, || {
            bridge
                .status
                .last_error()
                .is_some_and(|(_, e)| e.contains("receive maximum exceeded"))
        })
        .await;
        for _ in 0..2 {
            assert_eq!(near.next_publish().await.payload.as_ref(), b"more");
        }
        near.expect_no_publish(QUIET).await;
        b.shutdown().await;
    }
}
