//! Operating Midge: per-client limits (publish rate and byte rate,
//! subscriptions), anonymous access off, `$SYS` topics and client notices,
//! and graceful shutdown with connected clients.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use midge_e2e::http::{samples, Admin};
use midge_e2e::raw::*;
use midge_e2e::*;

/// `/metrics` scraped over HTTP: the value of one sample (name with labels).
async fn metric(b: &TestBroker, sample: &str) -> f64 {
    let r = Admin::of(b).call("GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    samples(&r.text())
        .into_iter()
        .find(|(k, _)| k == sample)
        .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{}", r.text()))
        .1
}

/// Publishes QoS 0 messages until the broker closes the connection; returns
/// the packets received before the close.
async fn flood_until_closed(c: &mut RawClient, t: &str, payload: &[u8]) -> Vec<RawPacket> {
    let v5 = c.v5;
    // 200 publishes back to back: far over a limit of 5 per second (or 1000
    // bytes per second) however slowly this client runs.
    for _ in 0..200 {
        c.send(&publish(v5, t, 0, false, false, 0, &[], payload))
            .await;
    }
    c.expect_closed().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_limit_disconnects_v5_with_0x96_and_closes_v311() {
    let b = start_broker(|c| c.limits.max_publish_rate = 5).await;
    let t = topic("rate");
    let (mut c5, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("fast5"))).await;
    let got = flood_until_closed(&mut c5, &t, b"x").await;
    let d = got
        .iter()
        .find(|p| p.kind == DISCONNECT)
        .unwrap_or_else(|| panic!("no DISCONNECT: {got:?}"));
    assert_eq!(d.disconnect().reason, 0x96);

    let (mut c4, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("fast4"))).await;
    let got = flood_until_closed(&mut c4, &t, b"x").await;
    assert!(got.iter().all(|p| p.kind != DISCONNECT), "{got:?}");
    assert_eq!(b.broker.stats.limit_publish_rate.load(Ordering::Relaxed), 2);
    assert_eq!(
        metric(
            &b,
            r#"midge_limit_triggered_total{limit="max_publish_rate"}"#
        )
        .await,
        2.0
    );

    // A client within the rate is untouched.
    let mut slow = V5::new(&b, "slow").await;
    slow.subscribe(&t, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    slow.publish(&t, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "ok")
        .await;
    assert_eq!(text(&slow.next_publish().await.payload), "ok");
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_byte_rate_limit_disconnects_v5_with_0x97() {
    let b = start_broker(|c| c.limits.max_publish_bytes_rate = 1000).await;
    let t = topic("bytes");
    let (mut c5, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("big"))).await;
    let got = flood_until_closed(&mut c5, &t, &[7u8; 100]).await;
    let d = got
        .iter()
        .find(|p| p.kind == DISCONNECT)
        .unwrap_or_else(|| panic!("no DISCONNECT: {got:?}"));
    assert_eq!(d.disconnect().reason, 0x97);
    assert_eq!(
        b.broker
            .stats
            .limit_publish_bytes_rate
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscriptions_refuses_the_excess_with_0x97_or_0x80() {
    let b = start_broker(|c| c.limits.max_subscriptions = 2).await;
    let (mut c5, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("subs5"))).await;
    let s = c5
        .subscribe(1, &[], &[("a/1", 1), ("a/2", 1), ("a/3", 1)])
        .await;
    assert_eq!(s.codes, vec![1, 1, 0x97]);
    // Re-subscribing to a held filter replaces it: not over the limit.
    let s = c5.subscribe(2, &[], &[("a/1", 0)]).await;
    assert_eq!(s.codes, vec![0]);
    // After an unsubscribe there is room again.
    c5.send(&unsubscribe(true, 3, &["a/2"])).await;
    c5.recv_kind(UNSUBACK).await;
    let s = c5.subscribe(4, &[], &[("a/3", 1)]).await;
    assert_eq!(s.codes, vec![1]);

    let (mut c4, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("subs4"))).await;
    let s = c4
        .subscribe(1, &[], &[("b/1", 1), ("b/2", 2), ("b/3", 1)])
        .await;
    assert_eq!(s.codes, vec![1, 2, 0x80]);
    assert_eq!(
        b.broker.stats.limit_subscriptions.load(Ordering::Relaxed),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_reach_a_subscriber_and_wildcards_do_not_see_them() {
    let b = start_broker(|c| c.sys.interval = 1).await;
    let node = midge::rules::NODE;
    let t = topic("sys-traffic");
    // Some traffic the counters must show.
    let mut p = V4::new(&b, "sys-pub").await;
    for i in 0..5 {
        p.publish(&t, rumqttc::QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let mut all = V4::new(&b, "hash").await;
    all.subscribe("#", rumqttc::QoS::AtMostOnce).await;

    let mut s = V5::new(&b, "sys-sub").await;
    s.subscribe("$SYS/brokers/+/#", rumqttc::v5::mqttbytes::QoS::AtMostOnce)
        .await;
    let prefix = format!("$SYS/brokers/{node}");
    let mut seen = std::collections::HashMap::new();
    let wanted = [
        "version",
        "uptime",
        "clients/connected",
        "clients/total",
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
        "load/messages/received/1min",
        "load/bytes/sent/15min",
        "subscriptions/count",
    ];
    // Retained values arrive at once (from before the traffic); updated
    // ones follow every interval until they show it.
    let n = |seen: &std::collections::HashMap<String, String>, k: &str| -> u64 {
        seen.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    within("the $SYS topics to show the traffic", async {
        while !(wanted.iter().all(|k| seen.contains_key(*k))
            && n(&seen, "clients/connected") >= 3
            && n(&seen, "messages/received") >= 5
            && n(&seen, "bytes/received") > 0
            && n(&seen, "messages/sent") > 0
            && n(&seen, "subscriptions/count") >= 2)
        {
            let m = s.next_publish().await;
            let topic = String::from_utf8_lossy(&m.topic).to_string();
            if let Some(k) = topic.strip_prefix(&format!("{prefix}/")) {
                seen.insert(k.to_string(), text(&m.payload));
            }
        }
    })
    .await;
    assert_eq!(
        seen["version"],
        format!("midge {}", env!("CARGO_PKG_VERSION"))
    );
    let load: f64 = seen["load/messages/received/1min"].parse().unwrap();
    assert!(load >= 0.0);
    // `#` does not match topics starting with `$` (MQTT 4.7.2).
    all.expect_no_publish(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_client_notices_on_connect_and_disconnect() {
    let b = start_broker(|c| c.sys.interval = 60).await;
    let mut s = V4::new(&b, "notice-sub").await;
    s.subscribe("$SYS/brokers/+/clients/+/+", rumqttc::QoS::AtMostOnce)
        .await;
    let id = unique("noticed");
    let mut o = rumqttc::MqttOptions::new(&id, "127.0.0.1", b.port());
    o.set_credentials("bob", "pw");
    let (c, _) = V4::connect(o).await;
    let m = s.next_publish().await;
    assert_eq!(
        m.topic,
        format!("$SYS/brokers/{}/clients/{id}/connected", midge::rules::NODE)
    );
    let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["clientid"], id.as_str());
    assert_eq!(body["username"], "bob");
    assert_eq!(body["proto_ver"], 4);
    c.disconnect().await;
    let m = s.next_publish().await;
    assert!(
        m.topic.ends_with(&format!("/clients/{id}/disconnected")),
        "{:?}",
        m.topic
    );
    let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["reason"], "normal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_version_read_by_mosquitto_sub() {
    if Command::new("mosquitto_sub")
        .arg("--help")
        .output()
        .is_err()
    {
        missing_tool("mosquitto_sub");
        return;
    }
    let b = start_broker(|c| c.sys.interval = 1).await;
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(["-h", "127.0.0.1", "-p", &b.port().to_string(), "-V", "5"])
        .args(["-t", "$SYS/brokers/+/version", "-C", "1", "-W", "10"]);
    let out = run_command(cmd, Duration::from_secs(20)).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("midge {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_v5_clients_0x8b_and_closes_v311_clients() {
    let b = start_broker(|_| {}).await;
    let (mut c5, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("down5"))).await;
    let (mut c4, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&unique("down4"))).await;
    // An independent client too: mosquitto_sub -d prints the DISCONNECT.
    let msub = if Command::new("mosquitto_sub").arg("--help").output().is_ok() {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port().to_string(),
            "-V",
            "5",
            "-d",
        ])
        .args(["-t", "down/x", "-W", "15"]);
        let task = tokio::spawn(run_command(cmd, Duration::from_secs(20)));
        // Connected once the broker counts its session.
        within("mosquitto_sub to connect", async {
            while b.broker.client_counts().0 < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Some(task)
    } else {
        missing_tool("mosquitto_sub");
        None
    };
    let addr = b.addr;
    within("shutdown", b.shutdown()).await;
    c5.expect_disconnect(0x8B).await;
    c4.expect_disconnect(0).await;
    if let Some(msub) = msub {
        let out = msub.await.unwrap();
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(
            log.contains("Received DISCONNECT (139)"),
            "mosquitto_sub: {log}"
        );
    }
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_disconnects_clients_flushes_and_exits_0() {
    let dir = TempDir::new("midge-sigterm");
    let config = dir.0.join("midge.toml");
    std::fs::write(
        &config,
        format!(
            "[persistence]\nenabled = true\ndata_dir = \"{}\"\n",
            dir.0.join("data").display()
        ),
    )
    .unwrap();
    let broker = midge_e2e::process::BrokerProcess::start(&config, 0);
    let port = broker.port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // A persistent subscriber goes offline with a subscription; a message
    // is queued for it; a v5 client stays connected through the SIGTERM.
    let t = topic("sigterm");
    let sub_id = unique("sig-sub");
    let opts = ConnectOpts::v5(&sub_id)
        .clean(false)
        .prop(Prop::session_expiry(3600));
    let (mut s, _) = RawClient::handshake(addr, opts.clone()).await;
    s.subscribe(1, &[], &[(&t, 1)]).await;
    s.send(&disconnect(true, 0, &[])).await;
    s.expect_closed().await;
    let (mut p, _) = RawClient::handshake(addr, ConnectOpts::v5(&unique("sig-pub"))).await;
    p.publish(&t, 1, false, 1, &[], b"queued before SIGTERM")
        .await;
    let (mut live, _) = RawClient::handshake(addr, ConnectOpts::v5(&unique("sig-live"))).await;

    let status = tokio::task::spawn_blocking(move || broker.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    live.expect_disconnect(0x8B).await;

    // Restarted on the same store, the queued message is still there.
    let broker = midge_e2e::process::BrokerProcess::start(&config, port);
    let (mut s, ack) = RawClient::handshake(addr, opts).await;
    assert!(ack.session_present);
    let m = s.recv_publish().await;
    assert_eq!(m.payload, b"queued before SIGTERM");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn midge_check_lists_every_error_and_exits_non_zero() {
    let dir = TempDir::new("midge-check");
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        "[mqtt]\nmax_qos = 3\n[limits]\nmax_listener_connections = { tcp = 5 }\n\
         [[rules]]\nid = \"r1\"\nsql = \"SELECT FROM\"\n\
         [plugins]\n[[plugins.plugin]]\nname = \"gone\"\npath = \"/nonexistent/gone.wasm\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(midge_e2e::process::midge_bin());
    cmd.args(["check", "--config"]).arg(&bad);
    let out = run_command(cmd, Duration::from_secs(60)).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "field `mqtt.max_qos`",
        "limits.max_listener_connections",
        "unknown listener `tcp`",
        "rule r1: line 1, column 8",
        // ... placed in the file: line 7 (`sql = "SELECT FROM"`), column 15.
        "bad.toml:7:15: rule r1: line 1, column 8 of its SQL",
        "plugin gone",
        "/nonexistent/gone.wasm",
        "4 error(s)",
    ] {
        assert!(err.contains(want), "`{want}` missing from:\n{err}");
    }
    // The example config (every key, defaults) passes.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/midge.toml");
    let mut cmd = Command::new(midge_e2e::process::midge_bin());
    cmd.args(["check", "--config", example]);
    let out = run_command(cmd, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_clients_logs_one_clients_packets_without_raising_the_level() {
    let dir = TempDir::new("midge-trace");
    let config = dir.0.join("midge.toml");
    let traced = unique("traced");
    std::fs::write(
        &config,
        format!("[log]\nlevel = \"warn\"\ntrace_clients = [\"{traced}\"]\n"),
    )
    .unwrap();
    let broker = midge_e2e::process::BrokerProcess::start(&config, 0);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", broker.port()).parse().unwrap();
    let other = unique("untraced");
    for id in [&traced, &other] {
        let (mut c, _) = RawClient::handshake(addr, ConnectOpts::v5(id)).await;
        c.publish("trace/t", 1, false, 1, &[], b"payload-of-note")
            .await;
        c.send(&disconnect(true, 0, &[])).await;
        c.expect_closed().await;
    }
    // The log is read by a thread: give it a bounded moment.
    let mut log = broker.log();
    for _ in 0..100 {
        if log.contains("PubAck") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = broker.log();
    }
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("DEBUG")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&traced) && l.contains("received") && l.contains("Publish")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&traced) && l.contains("sent")),
        "{log}"
    );
    assert!(!lines.iter().any(|l| l.contains(&other)), "{log}");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_connection_span() {
    let dir = TempDir::new("midge-json");
    let config = dir.0.join("midge.toml");
    std::fs::write(&config, "[log]\njson = true\n").unwrap();
    let broker = midge_e2e::process::BrokerProcess::start(&config, 0);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", broker.port()).parse().unwrap();
    let id = unique("json");
    let (mut c, _) = RawClient::handshake(addr, ConnectOpts::v5(&id)).await;
    c.send(&disconnect(true, 0, &[])).await;
    c.expect_closed().await;
    let mut found = None;
    for _ in 0..100 {
        let log = broker.log();
        found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["span"]["client_id"] == id.as_str());
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = found.unwrap_or_else(|| panic!("no JSON line for {id}:\n{}", broker.log()));
    assert_eq!(line["span"]["name"], "conn");
    assert!(line["span"]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(line["level"].is_string() && line["timestamp"].is_string());
    // Every line is JSON.
    for l in broker.log().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_clients_reloads_without_a_restart() {
    let dir = TempDir::new("midge-trace-reload");
    let config = dir.0.join("midge.toml");
    std::fs::write(&config, "[log]\nlevel = \"warn\"\n").unwrap();
    let broker = midge_e2e::process::BrokerProcess::start(&config, 0);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", broker.port()).parse().unwrap();
    let id = unique("later-traced");
    let session = |n: u16| {
        let id = id.clone();
        async move {
            let (mut c, _) = RawClient::handshake(addr, ConnectOpts::v5(&id)).await;
            c.publish("trace/r", 1, false, n, &[], b"x").await;
            c.send(&disconnect(true, 0, &[])).await;
            c.expect_closed().await;
        }
    };
    session(1).await;
    // Rewrite the file: the broker polls it and applies the new filter.
    std::fs::write(
        &config,
        format!("[log]\nlevel = \"warn\"\ntrace_clients = [\"{id}\"]\n"),
    )
    .unwrap();
    // The broker polls the file (every 2 s): new sessions are traced once
    // it has applied the new filter.
    let mut log = String::new();
    for n in 7..40u16 {
        session(n).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        log = broker.log();
        if log.lines().any(|l| l.contains("DEBUG") && l.contains(&id)) {
            break;
        }
    }
    let debug: Vec<&str> = log.lines().filter(|l| l.contains("DEBUG")).collect();
    assert!(
        debug
            .iter()
            .any(|l| l.contains(&id) && l.contains("received")),
        "never traced after the reload:\n{log}"
    );
    assert!(
        !debug.iter().any(|l| l.contains("packet_id: 1,")),
        "traced before the reload:\n{log}"
    );
    // Only [log] changed: the command-line flags (--listen, --no-ws,
    // --admin-listen) are not mistaken for changed settings.
    assert!(!log.contains("after a restart"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_is_refused_with_0x95_and_counted() {
    let b = start_broker(|c| c.mqtt.max_packet_size = 1024).await;
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("big"))).await;
    c.send(&publish(
        true,
        "big/t",
        0,
        false,
        false,
        0,
        &[],
        &[0u8; 2000],
    ))
    .await;
    c.expect_disconnect(0x95).await;
    assert_eq!(
        metric(
            &b,
            r#"midge_limit_triggered_total{limit="max_packet_size"}"#
        )
        .await,
        1.0
    );
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_keeps_connections_and_names_restart_only_changes() {
    let dir = TempDir::new("midge-hup");
    let config = dir.0.join("midge.toml");
    std::fs::write(&config, "[log]\nlevel = \"warn\"\n").unwrap();
    let broker = midge_e2e::process::BrokerProcess::start(&config, 0);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", broker.port()).parse().unwrap();
    let (mut sub, _) = RawClient::handshake(addr, ConnectOpts::v5(&unique("hup-sub"))).await;
    sub.subscribe(1, &[], &[("hup/out/#", 1)]).await;
    let (mut publ, _) = RawClient::handshake(addr, ConnectOpts::v5(&unique("hup-pub"))).await;

    // New rule plus a [limits] change; the file keeps its old modification
    // time, so only the SIGHUP can make the broker read it.
    let before = std::fs::metadata(&config).unwrap().modified().unwrap();
    std::fs::write(
        &config,
        "[log]\nlevel = \"warn\"\n[limits]\nmax_subscriptions = 5\n\
         [[rules]]\nid = \"hup\"\nsql = 'SELECT payload, topic FROM \"hup/in/#\"'\n\
         actions = [{ type = \"republish\", topic = \"hup/out/${topic}\", payload = \"${payload}\" }]\n",
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&config)
        .unwrap()
        .set_modified(before)
        .unwrap();
    broker.signal("HUP");

    // Publish until the rule answers (bounded); the same connections serve.
    let mut got = None;
    for n in 1..=50u16 {
        publ.publish("hup/in/x", 1, false, n, &[], format!("m{n}").as_bytes())
            .await;
        if let Recv::Packet(p) = sub.recv_within(Duration::from_millis(200)).await {
            if p.kind == PUBLISH {
                got = Some(p.publish(true));
                break;
            }
        }
    }
    let p = got.unwrap_or_else(|| panic!("rule never ran after SIGHUP:\n{}", broker.log()));
    assert_eq!(p.topic, "hup/out/hup/in/x");
    assert!(String::from_utf8_lossy(&p.payload).starts_with('m'));
    let mut log = broker.log();
    for _ in 0..100 {
        if log.contains("after a restart") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = broker.log();
    }
    assert!(
        log.lines()
            .any(|l| l.contains("after a restart") && l.contains("limits")),
        "{log}"
    );
    // Both clients are still on their first connection.
    sub.ping().await;
    publ.ping().await;
}

/// The broker's `$SYS` updates are counted apart: not as messages dropped
/// for want of subscribers, and not in the retained count of the status
/// API and `/metrics`, which count clients' retained messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_traffic_is_counted_apart() {
    let b = start_broker(|c| c.sys.interval = 1).await;
    let admin = Admin::of(&b);
    // The first $SYS round, then two more with nobody subscribed.
    within("$SYS updates", async {
        while metric(&b, "midge_sys_retained_topics").await < 20.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(metric(&b, "midge_sys_messages_published_total").await >= 25.0);
    let s = admin.get("/api/v1/status").await;
    assert_eq!(s["retained"], 0, "{s}");
    assert!(s["retained_sys"].as_u64().unwrap() >= 20, "{s}");
    assert_eq!(metric(&b, "midge_retained_messages").await, 0.0);
    assert!(metric(&b, "midge_sys_retained_topics").await >= 20.0);
    assert_eq!(
        metric(
            &b,
            r#"midge_messages_dropped_total{reason="no_subscribers"}"#
        )
        .await,
        0.0
    );
    assert_eq!(metric(&b, "midge_messages_received_total").await, 0.0);
    // A client's retained message with no subscriber: one of each.
    let mut p = V4::new(&b, "sys-apart").await;
    p.publish(&topic("kept"), rumqttc::QoS::AtLeastOnce, true, "v")
        .await;
    let s = admin.get("/api/v1/status").await;
    assert_eq!(s["retained"], 1, "{s}");
    assert_eq!(metric(&b, "midge_retained_messages").await, 1.0);
    assert_eq!(
        metric(
            &b,
            r#"midge_messages_dropped_total{reason="no_subscribers"}"#
        )
        .await,
        1.0
    );
    assert_eq!(metric(&b, "midge_messages_received_total").await, 1.0);
}

/// A script that signals the broker as soon as it reads the "listening"
/// lines reaches its handlers: SIGHUP reloads (it does not end the process,
/// as the default action would) and SIGTERM then shuts down cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_sent_as_soon_as_the_broker_listens_are_handled() {
    let dir = TempDir::new("midge-early-signals");
    let config = dir.0.join("midge.toml");
    std::fs::write(&config, "[log]\nlevel = \"info\"\n").unwrap();
    for round in 0..5 {
        let broker = midge_e2e::process::BrokerProcess::start(&config, 0);
        broker.signal("HUP");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", broker.port()).parse().unwrap();
        let (mut c, ack) = RawClient::handshake(addr, ConnectOpts::v5(&unique("early"))).await;
        assert_eq!(ack.code, 0, "round {round}");
        c.ping().await;
        let status = broker.terminate();
        assert!(status.success(), "round {round}: exit {status:?}");
    }
}
