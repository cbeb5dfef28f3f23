//! Listener-level `[limits]`: `max_connections`, `max_listener_connections`,
//! `max_connection_rate` and `connect_timeout`, with the broker's refusal
//! counters and the current-connections gauge.
//!
//! Run: cargo nextest run -p midge-e2e --test limits_listener

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use midge::server::Listener;
use midge_e2e::raw::*;
use midge_e2e::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const QUOTA_EXCEEDED: u8 = 0x97;
const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
const V311_SERVER_UNAVAILABLE: u8 = 3;
const REASON_STRING: u8 = 0x1F;

fn current(b: &TestBroker) -> u64 {
    b.broker.stats.connections_current.load(Ordering::Relaxed)
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    within(what, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Sends CONNECT and returns the CONNACK, asserting the broker then closes
/// the connection when it refused.
async fn try_connect(addr: std::net::SocketAddr, opts: ConnectOpts) -> ConnAckP {
    let mut c = RawClient::connect(addr).await;
    let ack = c.send_connect(&opts).await;
    if ack.code != 0 {
        assert!(
            matches!(c.recv_within(WAIT).await, Recv::Closed),
            "refused connection left open"
        );
    }
    ack
}

/// The rumqttc 5.0 client's connection error (it must not connect).
async fn refused_v5(opts: rumqttc::v5::MqttOptions) -> String {
    let mut c = V5::start(opts);
    within("CONNACK refusal", async {
        loop {
            match c.events.recv().await {
                Some(Ok(v5::Event::Incoming(v5::Packet::ConnAck(a)))) => {
                    panic!("connected: {a:?}")
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => panic!("event loop ended"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_quota_exceeded() {
    let b = start_broker(|c| c.limits.max_connections = 2).await;
    let first = V4::new(&b, "one").await;
    let _second = V5::new(&b, "two").await;
    assert_eq!(current(&b), 2);

    let e = refused_v5(v5_options(&b, "three")).await;
    assert!(e.contains("QuotaExceeded"), "{e}");
    let ack = try_connect(b.addr, ConnectOpts::v5(&unique("raw5"))).await;
    assert_eq!(ack.code, QUOTA_EXCEEDED);
    assert_eq!(ack.props.str(REASON_STRING), Some("too many connections"));
    let ack = try_connect(b.addr, ConnectOpts::v4(&unique("raw4"))).await;
    assert_eq!(ack.code, V311_SERVER_UNAVAILABLE);
    // The limit is global: the WebSocket listener is full too.
    let mut o = rumqttc::MqttOptions::new(unique("ws"), b.ws_url(), b.ws_port());
    o.set_transport(rumqttc::Transport::Ws);
    let mut ws = V4::start(o);
    let e = ws.closed().await;
    assert!(e.contains("ServiceUnavailable"), "{e}");

    let stats = &b.broker.stats;
    assert_eq!(
        stats
            .connections_refused_max_connections
            .load(Ordering::Relaxed),
        4
    );
    assert_eq!(current(&b), 2, "refused connections hold no slot");

    // A place frees up when a client leaves.
    first.disconnect().await;
    eventually("the gauge to drop", || current(&b) == 1).await;
    V4::new(&b, "four").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_limit_applies_to_its_listener_only() {
    let b = start_broker(|c| {
        c.limits.max_listener_connections.insert("mqtt".into(), 1);
    })
    .await;
    let _one = V5::new(&b, "one").await;
    let e = refused_v5(v5_options(&b, "two")).await;
    assert!(e.contains("QuotaExceeded"), "{e}");
    let ack = try_connect(b.addr, ConnectOpts::v4(&unique("raw4"))).await;
    assert_eq!(ack.code, V311_SERVER_UNAVAILABLE);
    let ack = try_connect(b.addr, ConnectOpts::v5(&unique("raw5"))).await;
    assert_eq!(ack.code, QUOTA_EXCEEDED);
    assert_eq!(
        ack.props.str(REASON_STRING),
        Some("too many connections on this listener")
    );
    // The WebSocket listener has no limit.
    let mut o = rumqttc::MqttOptions::new(unique("ws"), b.ws_url(), b.ws_port());
    o.set_transport(rumqttc::Transport::Ws);
    let (_ws, _) = V4::connect(o).await;

    assert_eq!(
        b.broker
            .stats
            .connections_refused_listener_limit
            .load(Ordering::Relaxed),
        3
    );
    assert_eq!(b.gate.current(Listener::Mqtt), 1);
    assert_eq!(b.gate.current(Listener::Ws), 1);
    assert_eq!(current(&b), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_refuses_part_of_a_burst() {
    let b = start_broker(|c| c.limits.max_connection_rate = 2).await;
    // Ten connections at once, half 5.0 and half 3.1.1. The bucket holds two
    // tokens and refills two per second: some are refused however the
    // scheduler orders them (unless the burst takes seconds).
    let attempts = (0..10).map(|i| {
        let addr = b.addr;
        tokio::spawn(async move {
            let v5 = i % 2 == 0;
            let opts = if v5 {
                ConnectOpts::v5(&unique("burst5"))
            } else {
                ConnectOpts::v4(&unique("burst4"))
            };
            let mut c = RawClient::connect(addr).await;
            let ack = c.send_connect(&opts).await;
            (v5, ack.code, c)
        })
    });
    let results = futures_util::future::join_all(attempts).await;
    let (mut accepted, mut refused) = (0, 0);
    let mut _open = Vec::new();
    for r in results {
        let (v5, code, c) = r.unwrap();
        match (v5, code) {
            (_, 0) => {
                accepted += 1;
                _open.push(c);
            }
            (true, CONNECTION_RATE_EXCEEDED) | (false, V311_SERVER_UNAVAILABLE) => refused += 1,
            other => panic!("unexpected CONNACK {other:?}"),
        }
    }
    assert!(accepted >= 2, "accepted {accepted}");
    assert!(refused >= 1, "refused {refused}");
    assert_eq!(
        b.broker
            .stats
            .connections_refused_rate
            .load(Ordering::Relaxed),
        refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_connect_timeout() {
    let b = start_broker(|c| c.limits.connect_timeout = 1).await;
    // Plain TCP and WebSocket (no HTTP upgrade either): nothing sent.
    for addr in [b.addr, b.ws_addr] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "silent connection to {addr} not closed: {r:?}"
        );
    }
    eventually("the timeouts to be counted", || {
        b.broker
            .stats
            .connections_refused_connect_timeout
            .load(Ordering::Relaxed)
            == 2
    })
    .await;
    eventually("the gauge to return to zero", || current(&b) == 0).await;
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_connections_gauge_follows_clients() {
    let b = start_broker(|_| {}).await;
    let v4 = V4::new(&b, "g4").await;
    let v5 = V5::new(&b, "g5").await;
    let (raw, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("graw"))).await;
    let mut o = rumqttc::MqttOptions::new(unique("gws"), b.ws_url(), b.ws_port());
    o.set_transport(rumqttc::Transport::Ws);
    let (ws, _) = V4::connect(o).await;
    assert_eq!(current(&b), 4);
    assert_eq!(b.gate.current(Listener::Mqtt), 3);
    assert_eq!(b.gate.current(Listener::Ws), 1);

    v4.disconnect().await;
    v5.disconnect().await;
    drop(raw); // no DISCONNECT: the socket just closes
    drop(ws);
    eventually("the gauge to return to zero", || current(&b) == 0).await;
    assert_eq!(b.gate.current(Listener::Mqtt), 0);
    assert_eq!(b.gate.current(Listener::Ws), 0);
}
