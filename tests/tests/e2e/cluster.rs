//! Several Midge nodes (separate processes) acting as one broker on the
//! 3-server NATS JetStream cluster scripts/test.sh starts
//! (`MIDGE_TEST_NATS`); each test has its own cluster name, so its own
//! stream and buckets. Clients: rumqttc (3.1.1 and 5.0) and Paho.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use midge_e2e::nats::{shared_urls, MidgeCluster};
use midge_e2e::process::BrokerProcess;
use midge_e2e::*;
use rumqttc::QoS;

/// Interest reaches the other NATS servers over their routes a moment after
/// the subscribing node's server has it: publish QoS 0 probes on `probe`
/// from `port` until `sub` gets one, then drain the late copies.
async fn settle(port: u16, sub: &mut V4, probe: &str) {
    let mut p = V4::new_at(port).await;
    for _ in 0..100 {
        p.publish(probe, QoS::AtMostOnce, false, "probe").await;
        if tokio::time::timeout(Duration::from_millis(100), sub.next_publish())
            .await
            .is_ok()
        {
            while tokio::time::timeout(Duration::from_millis(200), sub.next_publish())
                .await
                .is_ok()
            {}
            p.disconnect().await;
            return;
        }
    }
    panic!("interest never reached the node on port {port}");
}

fn nodes(c: &MidgeCluster, names: &[&str]) -> Vec<BrokerProcess> {
    names.iter().map(|n| c.start(n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_qos_0_1_2_in_order_and_wildcards() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let n = nodes(&c, &["n1", "n2", "n3"]);
    let mut sub = V4::new_at(n[1].port()).await;
    sub.subscribe("x/+/q/#", QoS::ExactlyOnce).await;
    settle(n[0].port(), &mut sub, "x/probe/q").await;
    // A node without the interest gets nothing.
    let mut other = V4::new_at(n[2].port()).await;
    other.subscribe("unrelated/#", QoS::AtLeastOnce).await;
    let mut publ = V4::new_at(n[0].port()).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for i in 0..30 {
            publ.publish(
                &format!("x/{}/q/{i}", qos as u8),
                qos,
                false,
                format!("{i}"),
            )
            .await;
        }
        for i in 0..30 {
            let p = sub.next_publish().await;
            assert_eq!(
                p.topic,
                format!("x/{}/q/{i}", qos as u8),
                "order per publisher"
            );
            assert_eq!(p.qos, qos, "granted QoS 2, so the publisher's QoS");
            assert_eq!(text(&p.payload), format!("{i}"));
        }
    }
    // Parent level of `#`: x/a/q matches x/+/q/#.
    publ.publish("x/a/q", QoS::AtLeastOnce, false, "parent")
        .await;
    assert_eq!(sub.next_publish().await.topic, "x/a/q");
    sub.expect_no_publish(QUIET).await;
    other.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_topics_round_trip_across_nodes() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let n = nodes(&c, &["a", "b"]);
    let mut sub = V4::new_at(n[1].port()).await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    settle(n[0].port(), &mut sub, "probe").await;
    let mut publ = V4::new_at(n[0].port()).await;
    let topics = [
        "dots.in.level/x",
        "/leading",
        "trailing/",
        "a//b",
        "with space/and\ttab",
        "star*/gt>/>",
        "~tilde/~7E",
        "é/中文/😀",
        "$notsys/x",
    ];
    for t in topics {
        publ.publish(t, QoS::AtLeastOnce, false, t).await;
    }
    // `#` does not match a `$` topic, across nodes as on one.
    let want: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|t| !t.starts_with('$'))
        .collect();
    let mut got = Vec::new();
    for _ in &want {
        let p = sub.next_publish().await;
        assert_eq!(text(&p.payload), p.topic, "payload names its topic");
        got.push(p.topic);
    }
    assert_eq!(got, want);
    sub.expect_no_publish(QUIET).await;
    // A subscriber of the `$` topic itself gets it from the other node.
    let mut dollar = V4::new_at(n[1].port()).await;
    dollar.subscribe("$notsys/+", QoS::AtLeastOnce).await;
    settle(n[0].port(), &mut dollar, "$notsys/probe").await;
    publ.publish("$notsys/x", QoS::AtLeastOnce, false, "d")
        .await;
    assert_eq!(dollar.next_publish().await.topic, "$notsys/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_replace_clear_seen_on_every_node() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let n = nodes(&c, &["n1", "n2", "n3"]);
    let mut p1 = V4::new_at(n[0].port()).await;
    p1.publish("r/one", QoS::AtLeastOnce, true, "v1").await;
    // Seen by a new subscriber on each other node (the bucket watch is
    // asynchronous: poll briefly).
    async fn retained_on(port: u16, want: Option<&str>) {
        for _ in 0..50 {
            let mut s = V4::new_at(port).await;
            s.subscribe("r/#", QoS::AtLeastOnce).await;
            let got = tokio::time::timeout(Duration::from_millis(300), s.next_publish()).await;
            let got = got.ok().map(|p| (text(&p.payload), p.retain));
            s.disconnect().await;
            if got.as_ref().map(|(v, _)| v.as_str()) == want {
                if let Some((_, retain)) = got {
                    assert!(retain, "delivered as retained");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("retained on port {port} never became {want:?}");
    }
    retained_on(n[1].port(), Some("v1")).await;
    retained_on(n[2].port(), Some("v1")).await;
    let mut p3 = V4::new_at(n[2].port()).await;
    p3.publish("r/one", QoS::AtMostOnce, true, "v2").await;
    retained_on(n[0].port(), Some("v2")).await;
    retained_on(n[1].port(), Some("v2")).await;
    let mut p2 = V4::new_at(n[1].port()).await;
    p2.publish("r/one", QoS::AtLeastOnce, true, "").await;
    retained_on(n[0].port(), None).await;
    retained_on(n[2].port(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_cross_nodes_with_expiry_counted() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let n = nodes(&c, &["a", "b"]);
    let mut sub = V4::new_at(n[1].port()).await;
    sub.subscribe("p/#", QoS::AtLeastOnce).await;
    settle(n[0].port(), &mut sub, "p/probe").await;
    drop(sub);
    let mut o = rumqttc::v5::MqttOptions::new(unique("v5sub"), "127.0.0.1", n[1].port());
    o.set_keep_alive(Duration::from_secs(30));
    let (mut s5, _) = V5::connect(o).await;
    s5.subscribe("p/#", v5::QoS::AtLeastOnce).await;
    let mut o = rumqttc::v5::MqttOptions::new(unique("v5pub"), "127.0.0.1", n[0].port());
    o.set_keep_alive(Duration::from_secs(30));
    let (mut p5, _) = V5::connect(o).await;
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some("application/json".into()),
        response_topic: Some("p/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("z".into(), "1".into()),
            ("a".into(), "2".into()),
            ("z".into(), "3".into()),
        ],
        ..Default::default()
    };
    p5.publish_props("p/x", v5::QoS::AtLeastOnce, false, "{}", props)
        .await;
    let got = s5.next_publish().await;
    let gp = got.properties.expect("properties carried");
    assert_eq!(gp.payload_format_indicator, Some(1));
    assert_eq!(gp.content_type.as_deref(), Some("application/json"));
    assert_eq!(gp.response_topic.as_deref(), Some("p/reply"));
    assert_eq!(gp.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    let up: Vec<(&str, &str)> = gp
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(up, [("z", "1"), ("a", "2"), ("z", "3")], "in order");
    let left = gp.message_expiry_interval.expect("expiry forwarded");
    assert!(
        (118..=120).contains(&left),
        "expiry counted from the origin: {left}"
    );
}

/// QoS 0 bursts cross nodes in batches: 2,000 5.0 PUBLISHes on two topics
/// written in one go to node a (raw client; every third with a content
/// type and a user property, every sixth with an expiry too) all reach
/// rumqttc on node b, in order per topic, each with exactly its own
/// properties; node a counts batches (several messages in one NATS message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_bursts_cross_nodes_in_batches_in_order_per_topic() {
    use midge_e2e::raw::{self, prop, ConnectOpts, Prop, RawClient};
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let n = nodes(&c, &["a", "b"]);
    // (Kept subscribed: the NATS interest for bq/# stays settled.)
    let mut sub = V4::new_at(n[1].port()).await;
    sub.subscribe("bq/#", QoS::AtMostOnce).await;
    settle(n[0].port(), &mut sub, "bq/probe").await;
    let mut o = rumqttc::v5::MqttOptions::new(unique("bqsub"), "127.0.0.1", n[1].port());
    o.set_keep_alive(Duration::from_secs(30));
    let (mut s5, _) = V5::connect(o).await;
    s5.subscribe("bq/#", v5::QoS::AtMostOnce).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], n[0].port()));
    let (mut publ, ack) = RawClient::handshake(addr, ConnectOpts::v5(&unique("bqpub"))).await;
    assert_eq!(ack.code, 0);
    const TOTAL: usize = 2000;
    let topic = |i: usize| {
        if i.is_multiple_of(2) {
            "bq/even"
        } else {
            "bq/odd"
        }
    };
    let mut burst = Vec::new();
    for i in 0..TOTAL {
        let mut props = Vec::new();
        if i % 3 == 0 {
            props.push(Prop::Str(prop::CONTENT_TYPE, "text/plain".into()));
            props.push(Prop::user("i", &i.to_string()));
        }
        if i % 6 == 0 {
            props.push(Prop::U32(prop::MESSAGE_EXPIRY_INTERVAL, 300));
        }
        let payload = i.to_string();
        burst.extend(raw::publish(
            true,
            topic(i),
            0,
            false,
            false,
            0,
            &props,
            payload.as_bytes(),
        ));
    }
    publ.send(&burst).await;
    let mut next = [0usize, 1];
    for _ in 0..TOTAL {
        let p = s5.next_publish().await;
        let i: usize = String::from_utf8_lossy(&p.payload).parse().unwrap();
        let slot = i % 2;
        assert_eq!(
            &p.topic[..],
            topic(i).as_bytes(),
            "message {i} on its topic"
        );
        assert_eq!(i, next[slot], "order per topic");
        next[slot] += 2;
        let props = p.properties.clone().unwrap_or_default();
        if i.is_multiple_of(3) {
            assert_eq!(
                props.content_type.as_deref(),
                Some("text/plain"),
                "message {i}"
            );
            assert_eq!(
                props.user_properties,
                vec![("i".to_string(), i.to_string())]
            );
        } else {
            assert!(
                props.content_type.is_none() && props.user_properties.is_empty(),
                "message {i}: {props:?}"
            );
        }
        assert_eq!(
            props.message_expiry_interval.is_some(),
            i.is_multiple_of(6),
            "message {i}"
        );
    }
    s5.expect_no_publish(QUIET).await;
    let text = http::Admin::of_process(&n[0])
        .call("GET", "/metrics", None)
        .await
        .text();
    assert!(http::sample(&text, "midge_cluster_forwarded_total{qos=\"0\"}") >= TOTAL as f64);
    assert!(
        http::sample(&text, "midge_cluster_batches_total") >= 1.0,
        "a burst written in one go leaves in batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_subscriber_gets_rumqttc_publishes_from_another_node() {
    let Some(urls) = shared_urls() else { return };
    if std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing_tool("python3 with paho-mqtt");
        return;
    }
    let c = MidgeCluster::new(&urls, "");
    let n = nodes(&c, &["a", "b"]);
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(dir.join("cluster_sub.py"))
        .arg(n[1].port().to_string())
        .arg("pc/#")
        .arg("20")
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // The script prints "subscribed" once SUBACK came; probes settle NATS.
    let probe = V4::new_at(n[0].port()).await;
    let mut publ = V4::new_at(n[0].port()).await;
    let mut waiter = V4::new_at(n[1].port()).await;
    waiter.subscribe("pc/#", QoS::AtMostOnce).await;
    settle(n[0].port(), &mut waiter, "pc/probe").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20 {
        publ.publish(&format!("pc/{i}"), QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    probe.disconnect().await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("paho script ended")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paho subscriber failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<&str> = stdout.lines().filter(|l| l.starts_with("pc/")).collect();
    let want: Vec<String> = (0..20).map(|i| format!("pc/{i} m{i}")).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_api_lists_nodes_and_metrics_count_traffic() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let n = nodes(&c, &["n1", "n2"]);
    let admin = http::Admin::of_process(&n[0]);
    let mut seen = Vec::new();
    for _ in 0..50 {
        let v = admin.get("/api/v1/cluster").await;
        assert_eq!(v["enabled"], true);
        assert_eq!(v["node"], "n1");
        seen = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["node"].as_str().unwrap().to_string(),
                    n["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        [
            ("n1".to_string(), "alive".to_string()),
            ("n2".to_string(), "alive".to_string())
        ]
    );
    // Traffic counted on both sides; the client view names the node.
    let mut sub = V4::new_at(n[1].port()).await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await;
    settle(n[0].port(), &mut sub, "m/probe").await;
    let mut publ = V4::new_at(n[0].port()).await;
    publ.publish("m/1", QoS::AtLeastOnce, false, "x").await;
    sub.next_publish().await;
    let text0 = admin.call("GET", "/metrics", None).await.text();
    assert!(http::sample(&text0, "midge_cluster_forwarded_total{qos=\"1\"}") >= 1.0);
    assert_eq!(http::sample(&text0, "midge_cluster_nats_connected"), 1.0);
    let admin1 = http::Admin::of_process(&n[1]);
    let text1 = admin1.call("GET", "/metrics", None).await.text();
    assert!(http::sample(&text1, "midge_cluster_received_total{qos=\"1\"}") >= 1.0);
    let clients = admin1.get("/api/v1/clients").await;
    assert!(clients["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["node"] == "n2"));
    // Every node's traffic in n1's view (the dashboard's cluster page):
    // its own now, n2's as of n2's last heartbeat.
    let traffic = |v: &serde_json::Value, node: &str, key: &str| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .map(|n| n["traffic"][key].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    let mut v = serde_json::Value::Null;
    for _ in 0..50 {
        v = admin.get("/api/v1/cluster").await;
        if traffic(&v, "n2", "received") >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(traffic(&v, "n1", "forwarded") >= 1, "{v}");
    assert!(traffic(&v, "n1", "forwarded_bytes") >= 1, "{v}");
    assert!(traffic(&v, "n2", "received") >= 1, "{v}");
    assert_eq!(traffic(&v, "n2", "forwarded"), 0, "{v}");
    for n in v["nodes"].as_array().unwrap() {
        let age = n["heartbeat_age_ms"].as_i64().unwrap();
        assert!((0..1500).contains(&age), "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nats_fails_start_naming_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let dir = TempDir::new("midge-cluster-bad");
    let cfg = dir.0.join("c.toml");
    std::fs::write(&cfg, "[cluster]\nconnect_timeout_ms = 500\n").unwrap();
    let out = std::process::Command::new(process::midge_bin())
        .args([
            "serve",
            "--no-ws",
            "--no-admin",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .args(["--node-name", "x1", "--cluster-nats", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_the_cluster_section() {
    let dir = TempDir::new("midge-cluster-check");
    let cfg = dir.0.join("c.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nenabled = true\nnode = \"bad name\"\nnats = [\"nats://127.0.0.1:x\"]\nreplicas = 9\n",
    )
    .unwrap();
    let out = std::process::Command::new(process::midge_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for field in ["cluster.node", "cluster.nats", "cluster.replicas"] {
        assert!(err.contains(field), "{field} in {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_no_other_node_wants_stays_on_its_node() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let n = nodes(&c, &["n1", "n2"]);
    let admin = http::Admin::of_process(&n[0]);
    let forwarded = |t: &str| http::sample(t, "midge_cluster_forwarded_total{qos=\"1\"}");
    let mut local = V4::new_at(n[0].port()).await;
    local.subscribe("solo/#", QoS::AtLeastOnce).await;
    let mut publ = V4::new_at(n[0].port()).await;
    for i in 0..20 {
        publ.publish(&format!("solo/{i}"), QoS::AtLeastOnce, false, "x")
            .await;
        local.next_publish().await;
    }
    let m = admin.call("GET", "/metrics", None).await.text();
    assert_eq!(forwarded(&m), 0.0, "no other node wants solo/#");
    // Once n2 has a subscriber, the same publishes cross.
    let mut remote = V4::new_at(n[1].port()).await;
    remote.subscribe("solo/#", QoS::AtLeastOnce).await;
    settle(n[0].port(), &mut remote, "solo/probe").await;
    publ.publish("solo/x", QoS::AtLeastOnce, false, "y").await;
    assert_eq!(remote.next_publish().await.topic, "solo/x");
    let m = admin.call("GET", "/metrics", None).await.text();
    assert!(forwarded(&m) >= 1.0);
}
