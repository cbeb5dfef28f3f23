//! Two-way bridges between two Midge nodes do not loop: one bridge with the
//! same topics out and in (5.0: No Local at the remote, exact; 3.1.1: the
//! remote echoes once, never forwarded again), and two bridges forwarding
//! the same topics in opposite directions (the `midge-bridge-via` marker:
//! a message comes back at most once).

use std::sync::atomic::Ordering::Relaxed;

use midge_e2e::mosquitto::free_port;
use midge_e2e::v5::QoS;
use midge_e2e::*;

use super::{bridges, linked};

/// Every PUBLISH `c` gets within [`QUIET`] after the first, with the first.
async fn drain(c: &mut V5) -> Vec<String> {
    let mut got = vec![String::from_utf8_lossy(&c.next_publish().await.payload).into_owned()];
    let deadline = tokio::time::Instant::now() + QUIET * 2;
    while let Ok(Some(Ok(ev))) = tokio::time::timeout_at(deadline, c.events.recv()).await {
        if let v5::Event::Incoming(v5::Packet::Publish(p)) = ev {
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    got
}

fn two_way(port: u16, protocol: &str) -> String {
    format!(
        r#"
[[bridges]]
name = "peer"
remote = "mqtt://127.0.0.1:{port}"
protocol = "{protocol}"
[[bridges.out]]
filter = "chat/#"
[[bridges.in]]
filter = "chat/#"
"#
    )
}

#[tokio::test]
async fn one_two_way_bridge_over_5_0_delivers_each_message_once_on_each_side() {
    let b = start_broker(|_| {}).await;
    let cfg = two_way(b.port(), "5.0");
    let a = start_broker(|c| c.bridges = bridges(&cfg)).await;
    linked(&a, "peer").await;
    let mut on_a = V5::new(&a, "on-a").await;
    on_a.subscribe("chat/#", QoS::AtLeastOnce).await;
    let mut on_b = V5::new(&b, "on-b").await;
    on_b.subscribe("chat/#", QoS::AtLeastOnce).await;
    on_a.publish("chat/x", QoS::AtLeastOnce, false, "from a")
        .await;
    assert_eq!(drain(&mut on_b).await, ["from a"]);
    assert_eq!(drain(&mut on_a).await, ["from a"], "no echo back to A");
    on_b.publish("chat/y", QoS::AtLeastOnce, false, "from b")
        .await;
    assert_eq!(drain(&mut on_a).await, ["from b"]);
    assert_eq!(drain(&mut on_b).await, ["from b"], "not sent back to B");
    let peer = &a.bridges.get("peer").unwrap().status;
    assert_eq!(
        (peer.sent.load(Relaxed), peer.received.load(Relaxed)),
        (1, 1)
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn one_two_way_bridge_over_3_1_1_echoes_at_most_once_and_never_loops() {
    let b = start_broker(|_| {}).await;
    let cfg = two_way(b.port(), "3.1.1");
    let a = start_broker(|c| c.bridges = bridges(&cfg)).await;
    linked(&a, "peer").await;
    let mut on_a = V5::new(&a, "on-a").await;
    on_a.subscribe("chat/#", QoS::AtLeastOnce).await;
    let mut on_b = V5::new(&b, "on-b").await;
    on_b.subscribe("chat/#", QoS::AtLeastOnce).await;
    on_a.publish("chat/x", QoS::AtLeastOnce, false, "from a")
        .await;
    assert_eq!(drain(&mut on_b).await, ["from a"]);
    // 3.1.1 has no No Local: B sends it back once; the bridge publishes it
    // here as its own, which its out subscription (No Local) skips.
    let here = drain(&mut on_a).await;
    assert!(here.len() <= 2, "{here:?}");
    let peer = &a.bridges.get("peer").unwrap().status;
    assert_eq!(peer.sent.load(Relaxed), 1, "forwarded once, not again");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn two_opposite_bridges_send_a_message_back_at_most_once() {
    // A bridges chat/# to B, and B bridges chat/# to A: without the marker
    // every message would circle between them for ever.
    let a_port = free_port();
    let to_a = format!(
        r#"
[[bridges]]
name = "to-a"
remote = "mqtt://127.0.0.1:{a_port}"
[bridges.reconnect]
initial_ms = 50
max_ms = 200
[[bridges.out]]
filter = "chat/#"
"#
    );
    let b = start_broker(|c| c.bridges = bridges(&to_a)).await;
    let to_b = format!(
        r#"
[[bridges]]
name = "to-b"
remote = "mqtt://127.0.0.1:{}"
[[bridges.out]]
filter = "chat/#"
"#,
        b.port()
    );
    let a = start_broker(|c| {
        c.listeners.mqtt = Some(format!("127.0.0.1:{a_port}").parse().unwrap());
        c.bridges = bridges(&to_b);
    })
    .await;
    linked(&a, "to-b").await;
    linked(&b, "to-a").await;
    let mut on_a = V5::new(&a, "on-a").await;
    on_a.subscribe("chat/#", QoS::AtLeastOnce).await;
    let mut on_b = V5::new(&b, "on-b").await;
    on_b.subscribe("chat/#", QoS::AtLeastOnce).await;
    on_a.publish("chat/x", QoS::AtLeastOnce, false, "from a")
        .await;
    assert_eq!(drain(&mut on_b).await, ["from a"]);
    let here = drain(&mut on_a).await;
    assert_eq!(here, ["from a", "from a"], "back once, then stopped");
    let to_b = &a.bridges.get("to-b").unwrap().status;
    let to_a = &b.bridges.get("to-a").unwrap().status;
    assert_eq!((to_b.sent.load(Relaxed), to_a.sent.load(Relaxed)), (1, 1));
    assert_eq!(
        to_b.dropped(midge::bridge::status::Dropped::Looped),
        1,
        "A's bridge recognised its own marker"
    );
    a.shutdown().await;
    b.shutdown().await;
}
