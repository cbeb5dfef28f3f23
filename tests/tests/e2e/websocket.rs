//! MQTT over WebSocket.

#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use midge_e2e::raw::*;
use midge_e2e::*;
use rumqttc::QoS;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn ws_v4(b: &TestBroker, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(unique(id), b.ws_url(), b.ws_port());
    o.set_transport(rumqttc::Transport::Ws);
    o.set_keep_alive(std::time::Duration::from_secs(30));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_publisher_to_tcp_subscriber() {
    let b = start_broker(|_| {}).await;
    let t = topic("ws2tcp");
    let mut s = V4::new(&b, "tcp-sub").await;
    s.subscribe(&t, QoS::AtLeastOnce).await;
    let (mut p, _) = V4::connect(ws_v4(&b, "ws-pub")).await;
    p.publish(&t, QoS::AtLeastOnce, false, "over-ws").await;
    let m = s.next_publish().await;
    assert_eq!(m.payload.as_ref(), b"over-ws");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_publisher_to_ws_subscriber() {
    let b = start_broker(|_| {}).await;
    let t = topic("tcp2ws");
    let (mut s, _) = V4::connect(ws_v4(&b, "ws-sub")).await;
    s.subscribe(&t, QoS::ExactlyOnce).await;
    let mut p = V4::new(&b, "tcp-pub").await;
    p.publish(&t, QoS::ExactlyOnce, false, "to-ws").await;
    let m = s.next_publish().await;
    assert_eq!(
        (m.payload.as_ref(), m.qos),
        (&b"to-ws"[..], QoS::ExactlyOnce)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_v5_client_round_trip() {
    let b = start_broker(|_| {}).await;
    let t = topic("ws5");
    let mut o = rumqttc::v5::MqttOptions::new(unique("ws5"), b.ws_url(), b.ws_port());
    o.set_transport(rumqttc::Transport::Ws);
    let (mut c, _) = V5::connect(o).await;
    c.subscribe(&t, v5::QoS::AtLeastOnce).await;
    c.publish(&t, v5::QoS::AtLeastOnce, false, "v5-ws").await;
    assert_eq!(c.next_publish().await.payload.as_ref(), b"v5-ws");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_handshake_negotiates_mqtt_subprotocol_and_carries_raw_packets() {
    let b = start_broker(|_| {}).await;
    let mut req = b.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, resp) = within("ws connect", tokio_tungstenite::connect_async(req))
        .await
        .expect("ws handshake");
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("mqtt".to_string())
    );
    ws.send(Message::Binary(
        ConnectOpts::v4(&unique("wsraw")).encode().into(),
    ))
    .await
    .unwrap();
    let msg = within("CONNACK over ws", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return b.to_vec(),
                Some(Ok(_)) => {}
                other => panic!("ws closed: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(msg, vec![0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_wrong_path_is_refused() {
    let b = start_broker(|_| {}).await;
    let url = format!("ws://127.0.0.1:{}/not-mqtt", b.ws_port());
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let r = within("ws connect", tokio_tungstenite::connect_async(req)).await;
    assert!(r.is_err(), "handshake on a wrong path must fail");

    let mut o = rumqttc::MqttOptions::new(unique("wspath"), url, b.ws_port());
    o.set_transport(rumqttc::Transport::Ws);
    let mut c = V4::start(o);
    let err = c.closed().await;
    assert!(!err.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_custom_path() {
    let b = start_broker(|c| c.listeners.ws_paths = vec!["/custom/mqtt".into()]).await;
    assert!(b.ws_url().ends_with("/custom/mqtt"));
    let t = topic("wscustom");
    let (mut c, _) = V4::connect(ws_v4(&b, "wscustom")).await;
    c.subscribe(&t, QoS::AtMostOnce).await;
    c.publish(&t, QoS::AtMostOnce, false, "c").await;
    assert_eq!(c.next_publish().await.payload.as_ref(), b"c");
}

/// MQTT.js's CLI over WebSocket at its default path (`/`) and at `/mqtt`:
/// both are endpoints by default (`listeners.ws_paths`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_cli_over_websocket_default_path() {
    let Some(cli) = mqttjs_cli() else {
        return;
    };
    let b = start_broker(|_| {}).await;
    let t = topic("mqttjs");
    let mut s = V4::new(&b, "js-sub").await;
    s.subscribe(&t, QoS::AtLeastOnce).await;
    for (i, path) in [None, Some("/mqtt")].into_iter().enumerate() {
        let mut c = std::process::Command::new(&cli);
        c.args([
            "pub",
            "-C",
            "ws",
            "-h",
            "127.0.0.1",
            "-p",
            &b.ws_port().to_string(),
        ])
        .args(["-q", "1", "-t", &t, "-m", &format!("js-{i}")]);
        if let Some(p) = path {
            c.args(["--path", p]);
        }
        // MQTT.js retries a refused upgrade forever: a timeout is the failure.
        let o = run_command(c, std::time::Duration::from_secs(30)).await;
        assert!(
            o.status.success(),
            "mqtt pub over ws (path {path:?}): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let m = s.next_publish().await;
        assert_eq!(m.payload.as_ref(), format!("js-{i}").as_bytes());
    }
}

/// An upgrade on a path that is not an endpoint gets 404 naming the
/// endpoints, and a configured list replaces the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_paths_list_is_configurable() {
    let b = start_broker(|c| c.listeners.ws_paths = vec!["/a".into(), "/b/mqtt".into()]).await;
    for ok in ["/a", "/b/mqtt"] {
        let url = format!("ws://127.0.0.1:{}{ok}", b.ws_port());
        let r = within("ws connect", tokio_tungstenite::connect_async(url)).await;
        assert!(r.is_ok(), "{ok}: {r:?}");
    }
    for refused in ["/", "/mqtt"] {
        let url = format!("ws://127.0.0.1:{}{refused}", b.ws_port());
        match within("ws connect", tokio_tungstenite::connect_async(url)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 404, "{refused}");
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains("/a, /b/mqtt"), "{refused}: {body}");
            }
            other => panic!("{refused}: expected 404, got {other:?}"),
        }
    }
}

/// A refused upgrade is logged at debug with its path (the operator's
/// answer to "my client retries forever").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_is_logged_with_its_path() {
    let dir = TempDir::new("midge-ws-log");
    let cfg = dir.0.join("midge.toml");
    std::fs::write(&cfg, "").unwrap();
    let b = midge_e2e::process::BrokerProcess::start_full(
        &cfg,
        0,
        true,
        &[("RUST_LOG", "info,midge::server::ws=debug")],
    );
    let ws = b.ws_addr.expect("ws listener");
    let url = format!("ws://{ws}/wrong/path");
    let r = within("ws connect", tokio_tungstenite::connect_async(url)).await;
    assert!(r.is_err(), "/wrong/path is no endpoint");
    within("the refusal in the log", async {
        while !b.log().contains("websocket upgrade refused") {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let log = b.log();
    let line = log
        .lines()
        .find(|l| l.contains("websocket upgrade refused"))
        .unwrap();
    assert!(line.contains("/wrong/path"), "{line}");
    assert!(line.contains("DEBUG"), "{line}");
}
