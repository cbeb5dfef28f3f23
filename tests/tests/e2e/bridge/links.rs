//! The other transports and what goes wrong with them: a TLS link to
//! Mosquitto with a test CA and a client certificate, a wrong CA (a clear
//! error in the log and in the admin API), WebSocket and secure WebSocket
//! links to a Midge remote, a remote that refuses the CONNECT (its CONNACK
//! code in words), and an unreachable remote.

use std::time::Duration;

use midge_e2e::mosquitto::{free_port, Mosquitto};
use midge_e2e::process::BrokerProcess;
use midge_e2e::v5::QoS;
use midge_e2e::*;

use super::{bridges, linked, v5_at, wait_until};
use crate::tls::Ca;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// files in `dir`.
struct Files {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

fn files(dir: &std::path::Path, ca: &Ca) -> Files {
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert, key) = ca.server();
    let (client_cert, client_key) = ca.client("edge-17");
    Files {
        ca: write("ca.pem", ca.pem()),
        cert: write("server.pem", cert),
        key: write("server.key", key),
        client_cert: write("client.pem", client_cert),
        client_key: write("client.key", client_key),
    }
}

#[tokio::test]
async fn tls_link_with_a_test_ca_and_a_client_certificate() {
    let dir = TempDir::new("midge-bridge-tls");
    let f = files(&dir.0, &Ca::new("Bridge Test CA"));
    let tls_port = free_port();
    // Mosquitto's TLS listener requires a client certificate from our CA.
    let extra = format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        f.ca.display(),
        f.cert.display(),
        f.key.display()
    );
    let Some(remote) = Mosquitto::start(&extra) else {
        return;
    };
    let cfg = format!(
        r#"
[[bridges]]
name = "cloud"
remote = "mqtts://127.0.0.1:{tls_port}"
client_id = "{id}"
tls = {{ ca = {ca:?}, cert = {cert:?}, key = {key:?} }}
[[bridges.out]]
filter = "up/#"
[[bridges.in]]
filter = "down/#"
"#,
        id = unique("edge"),
        ca = f.ca.display().to_string(),
        cert = f.client_cert.display().to_string(),
        key = f.client_key.display().to_string(),
    );
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    linked(&b, "cloud").await;
    let mut far = v5_at(remote.port, "far").await;
    far.subscribe("up/#", QoS::AtLeastOnce).await;
    let mut near = V5::new(&b, "near").await;
    near.subscribe("down/#", QoS::AtLeastOnce).await;
    near.publish("up/x", QoS::AtLeastOnce, false, "over tls")
        .await;
    assert_eq!(&far.next_publish().await.payload[..], b"over tls");
    far.publish("down/y", QoS::AtLeastOnce, false, "back").await;
    assert_eq!(&near.next_publish().await.payload[..], b"back");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_clear_error_in_the_log_and_the_api() {
    let dir = TempDir::new("midge-bridge-tls");
    let f = files(&dir.0, &Ca::new("The Remote's CA"));
    let other = Ca::new("Some Other CA");
    let wrong_ca = dir.0.join("wrong-ca.pem");
    std::fs::write(&wrong_ca, other.pem()).unwrap();
    let tls_port = free_port();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
        f.cert.display(),
        f.key.display()
    );
    let Some(_remote) = Mosquitto::start(&extra) else {
        return;
    };
    let file = dir.0.join("midge.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[bridges]]
name = "cloud"
remote = "mqtts://127.0.0.1:{tls_port}"
tls = {{ ca = {ca:?} }}
[bridges.reconnect]
initial_ms = 100
max_ms = 200
[[bridges.out]]
filter = "up/#"
"#,
            ca = wrong_ca.display().to_string()
        ),
    )
    .unwrap();
    let p = BrokerProcess::start(&file, 0);
    let admin = http::Admin::of_process(&p);
    let mut error = String::new();
    within("the bridge's error in the API", async {
        loop {
            let v = admin.get("/api/v1/bridges/cloud").await;
            assert_eq!(v["connected"], false, "{v}");
            if let Some(m) = v["last_error"]["message"].as_str() {
                error = m.to_string();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        error.contains("TLS handshake") && error.contains(&format!("mqtts://127.0.0.1:{tls_port}")),
        "{error}"
    );
    assert!(
        error.contains("UnknownIssuer") || error.contains("unknown issuer"),
        "{error}"
    );
    let log = p.log();
    assert!(
        log.contains("bridge cannot connect")
            && log.contains("UnknownIssuer")
            && log.contains("cloud"),
        "log:\n{log}"
    );
    // Metrics say the same.
    let r = admin.call("GET", "/metrics", None).await;
    let text = r.text();
    assert!(
        text.contains("midge_bridge_connected{bridge=\"cloud\"} 0"),
        "{text}"
    );
    assert!(
        !text.contains("midge_bridge_connect_failures_total{bridge=\"cloud\"} 0\n"),
        "failures counted"
    );
    // Not found is a JSON 404.
    let r = admin.call("GET", "/api/v1/bridges/nope", None).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no bridge named"), "{}", r.text());
}

/// A remote that refuses the CONNECT: the error names the CONNACK's code
/// in words, for 3.1.1 (return code) and 5.0 (reason code), in the status
/// the API shows; the link keeps trying (counted) and never counts as up.
#[tokio::test]
async fn a_refused_connect_is_named_by_its_connack_code() {
    // Mosquitto refuses every client without a user name.
    let Some(remote) = Mosquitto::start("allow_anonymous false") else {
        return;
    };
    let cfg = format!(
        r#"
[[bridges]]
name = "old"
remote = "mqtt://127.0.0.1:{port}"
protocol = "3.1.1"
[bridges.reconnect]
initial_ms = 50
max_ms = 100
[[bridges.out]]
filter = "up/#"
[[bridges]]
name = "new"
remote = "mqtt://127.0.0.1:{port}"
[bridges.reconnect]
initial_ms = 50
max_ms = 100
[[bridges.out]]
filter = "up/#"
"#,
        port = remote.port
    );
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    let old = b.bridges.get("old").unwrap().clone();
    let new = b.bridges.get("new").unwrap().clone();
    wait_until("both refused twice", 10, || {
        [&old, &new].iter().all(|x| {
            x.status
                .connect_failures
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 2
        })
    })
    .await;
    let error = |x: &midge::bridge::Bridge| x.status.last_error().unwrap().1;
    let at = format!("mqtt://127.0.0.1:{}", remote.port);
    assert_eq!(
        error(&old),
        format!(
            "{at}: the remote refused the connection: CONNACK return code 0x05 (not authorized)"
        )
    );
    assert_eq!(
        error(&new),
        format!(
            "{at}: the remote refused the connection: CONNACK reason code 0x87 (not authorized)"
        )
    );
    assert!(!old.status.is_connected() && !new.status.is_connected());
    let admin = http::Admin::of(&b);
    let v = admin.get("/api/v1/bridges/new").await;
    assert_eq!(v["connected"], false, "{v}");
    assert_eq!(v["counters"]["connects"], 0, "{v}");
    assert!(
        v["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("0x87 (not authorized)")),
        "{v}"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn websocket_and_secure_websocket_links_to_a_midge_remote() {
    let dir = TempDir::new("midge-bridge-wss");
    let f = files(&dir.0, &Ca::new("Bridge WSS CA"));
    let remote = start_broker(|c| {
        c.listeners.wss = Some("127.0.0.1:0".parse().unwrap());
        c.listeners.tls = Some(midge::config::TlsConfig {
            cert: f.cert.clone(),
            key: f.key.clone(),
            client_ca: None,
            require_client_cert: false,
            cn_as_username: false,
        });
    })
    .await;
    let cfg = format!(
        r#"
[[bridges]]
name = "plain"
remote = "{ws}"
[[bridges.out]]
filter = "a/#"
add_prefix = "ws/"
[[bridges]]
name = "secure"
remote = "{wss}"
tls = {{ ca = {ca:?} }}
[[bridges.out]]
filter = "a/#"
add_prefix = "wss/"
"#,
        ws = remote.ws_url(),
        wss = remote.wss_url(),
        ca = f.ca.display().to_string(),
    );
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    linked(&b, "plain").await;
    linked(&b, "secure").await;
    let mut far = V5::new(&remote, "far").await;
    far.subscribe("+/a/#", QoS::AtLeastOnce).await;
    let mut near = V5::new(&b, "near").await;
    near.publish("a/b", QoS::AtLeastOnce, false, "hi").await;
    let mut topics = vec![
        String::from_utf8_lossy(&far.next_publish().await.topic).into_owned(),
        String::from_utf8_lossy(&far.next_publish().await.topic).into_owned(),
    ];
    topics.sort();
    assert_eq!(topics, ["ws/a/b", "wss/a/b"]);
    b.shutdown().await;
    remote.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_remote_is_reported_and_the_bounded_buffer_drains_when_it_returns() {
    let port = free_port();
    let cfg = format!(
        r#"
[[bridges]]
name = "oldest"
remote = "mqtt://127.0.0.1:{port}"
[bridges.reconnect]
initial_ms = 50
max_ms = 100
[bridges.buffer]
max_messages = 3
full_policy = "drop_oldest"
[[bridges.out]]
filter = "up/#"
[[bridges]]
name = "newest"
remote = "mqtt://127.0.0.1:{port}"
[bridges.reconnect]
initial_ms = 50
max_ms = 100
[bridges.buffer]
max_messages = 3
full_policy = "drop_new"
[[bridges.out]]
filter = "up/#"
"#
    );
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    let oldest = b.bridges.get("oldest").unwrap().clone();
    let newest = b.bridges.get("newest").unwrap().clone();
    wait_until("a failed attempt", 10, || {
        oldest.status.last_error().is_some()
    })
    .await;
    let (_, e) = oldest.status.last_error().unwrap();
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && e.contains("TCP connect"),
        "{e}"
    );
    // While it is down, QoS 1 is buffered (bounded, by policy), QoS 0 not.
    let mut near = V5::new(&b, "near").await;
    for i in 0..5 {
        near.publish("up/x", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    near.publish("up/x", QoS::AtMostOnce, false, "q0").await;
    let held = |x: &midge::bridge::Bridge| -> Vec<String> {
        let st = x.session.state.lock();
        st.queue
            .iter()
            .map(|d| String::from_utf8_lossy(&d.msg.payload).into_owned())
            .collect()
    };
    assert_eq!(held(&oldest), ["m2", "m3", "m4"]);
    assert_eq!(held(&newest), ["m0", "m1", "m2"]);
    assert_eq!((oldest.dropped_full(), newest.dropped_full()), (2, 2));
    // The API shows the buffer and the drops.
    let admin = http::Admin::of(&b);
    let v = admin.get("/api/v1/bridges").await;
    let first = &v["data"][0];
    assert_eq!(first["name"], "oldest");
    assert_eq!(first["buffered"]["messages"], 3);
    assert_eq!(first["counters"]["dropped_buffer_full"], 2);
    assert_eq!(first["buffered"]["full_policy"], "drop_oldest");
    // The remote comes up on that port: both buffers drain, acknowledged.
    let Some(_remote) = Mosquitto::start_on(port, "") else {
        return;
    };
    for x in [&oldest, &newest] {
        wait_until("the buffer to drain", 20, || {
            x.buffered().0 == 0 && x.status.acked.load(std::sync::atomic::Ordering::Relaxed) == 3
        })
        .await;
    }
    b.shutdown().await;
}
