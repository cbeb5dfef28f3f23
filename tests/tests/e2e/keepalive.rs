//! Keep alive enforcement (1.5 x the negotiated keep alive).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use midge_e2e::raw::*;
use midge_e2e::*;

/// Connects with keep alive 1 s, sends nothing, returns (elapsed until close, packets seen).
async fn silent_client(b: &TestBroker, opts: ConnectOpts) -> (Duration, Vec<RawPacket>) {
    let (mut c, _) = RawClient::handshake(b.addr, opts).await;
    let start = Instant::now();
    let got = c.expect_closed().await;
    (start.elapsed(), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_silent_client_disconnected_after_one_and_a_half_keep_alive() {
    let b = start_broker(|_| {}).await;
    let (elapsed, got) = silent_client(&b, ConnectOpts::v4(&unique("ka")).keep_alive(1)).await;
    assert!(
        elapsed >= Duration::from_millis(1000),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(4000),
        "closed too late: {elapsed:?}"
    );
    assert!(got.is_empty(), "3.1.1 gets no packet: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_silent_client_gets_disconnect_0x8d() {
    let b = start_broker(|_| {}).await;
    let (elapsed, got) = silent_client(&b, ConnectOpts::v5(&unique("ka")).keep_alive(1)).await;
    assert!(
        elapsed >= Duration::from_millis(1000),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(4000),
        "closed too late: {elapsed:?}"
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect().reason, 0x8D);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingreq_keeps_connection_alive() {
    let b = start_broker(|_| {}).await;
    let (mut c, _) =
        RawClient::handshake(b.addr, ConnectOpts::v4(&unique("ka")).keep_alive(1)).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = c.ping().await;
        assert!(before.is_empty(), "{before:?}");
    }
    // Raw PINGRESP bytes.
    c.send(&pingreq()).await;
    let p = c.recv().await;
    assert_eq!((p.kind, p.flags, p.body.len()), (PINGRESP, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_packet_counts_as_activity() {
    let b = start_broker(|_| {}).await;
    let t = topic("ka");
    let (mut c, _) =
        RawClient::handshake(b.addr, ConnectOpts::v4(&unique("ka")).keep_alive(1)).await;
    for i in 0..6u16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.publish(&t, 1, false, i + 1, &[], b"x").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_server_keep_alive_is_enforced() {
    let b = start_broker(|c| c.mqtt.max_keep_alive = 1).await;
    let (mut c, ack) =
        RawClient::handshake(b.addr, ConnectOpts::v5(&unique("ka")).keep_alive(60)).await;
    assert_eq!(ack.props.num(prop::SERVER_KEEP_ALIVE), Some(1));
    let start = Instant::now();
    c.expect_disconnect(0x8D).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000),
        "closed too early: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_is_not_enforced() {
    let b = start_broker(|c| c.mqtt.max_keep_alive = 0).await;
    let (mut c, _) =
        RawClient::handshake(b.addr, ConnectOpts::v4(&unique("ka")).keep_alive(0)).await;
    c.expect_silence(Duration::from_millis(2500)).await;
    assert!(c.ping().await.is_empty());
}
