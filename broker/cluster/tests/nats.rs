//! The cluster layer against a real 3-server NATS JetStream cluster: the one
//! scripts/test.sh starts (`MIDGE_TEST_NATS`). Each test uses its own
//! cluster name, so its stream and buckets are its own.
//!
//!     . scripts/nats.sh && nats_start && cargo nextest run -p midge-cluster

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use midge_cluster::{Cluster, ClusterConfig, Envelope, Local};
use midge_protocol::{ByteStr, Properties, PropertyValues, QoS};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// NATS URLs from scripts/nats.sh; `None` (skipped) outside CI when unset.
fn nats() -> Option<Vec<String>> {
    match std::env::var("MIDGE_TEST_NATS") {
        Ok(v) => Some(v.split(',').map(str::to_string).collect()),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("MIDGE_TEST_NATS is not set under CI=true (scripts/test.sh starts NATS)")
        }
        Err(_) => {
            eprintln!("SKIPPED: MIDGE_TEST_NATS is not set (. scripts/nats.sh && nats_start)");
            None
        }
    }
}

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t{}x{n}x{t:x}", std::process::id())
}

fn config(urls: &[String], name: &str, node: &str) -> ClusterConfig {
    ClusterConfig {
        enabled: true,
        node: Some(node.into()),
        name: name.into(),
        nats: urls.to_vec(),
        replicas: 3,
        heartbeat_ms: 200,
        node_timeout_ms: 1000,
        ..Default::default()
    }
}

#[derive(Debug)]
enum Got {
    Msg(Envelope),
    Retained(String, Option<Envelope>),
    Shared(String, Envelope),
}

struct Sink(mpsc::UnboundedSender<Got>);

impl Local for Sink {
    fn deliver(&self, env: Envelope) {
        let _ = self.0.send(Got::Msg(env));
    }
    fn retained(&self, topic: String, env: Option<Envelope>) {
        let _ = self.0.send(Got::Retained(topic, env));
    }
    fn deliver_shared(&self, env: Envelope, group: &str, _filter: &str) {
        let _ = self.0.send(Got::Shared(group.to_string(), env));
    }
}

async fn node(
    urls: &[String],
    name: &str,
    node: &str,
) -> (Arc<Cluster>, mpsc::UnboundedReceiver<Got>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let c = Cluster::start(&config(urls, name, node), Arc::new(Sink(tx)))
        .await
        .unwrap();
    (c, rx)
}

fn env(topic: &str, qos: QoS, origin: &str) -> Envelope {
    Envelope {
        topic: ByteStr::from(topic),
        payload: Bytes::from(format!("p:{topic}")),
        qos,
        retain: false,
        properties: Properties::default(),
        origin: origin.into(),
        client_id: Some("pub".into()),
        timestamp_ms: Some(1),
    }
}

async fn next_msg(rx: &mut mpsc::UnboundedReceiver<Got>) -> Envelope {
    loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Got::Msg(e))) => return e,
            Ok(Some(Got::Retained(..) | Got::Shared(..))) => continue,
            other => panic!("no message within {WAIT:?}: {other:?}"),
        }
    }
}

/// Interest reaches the other NATS servers over their routes a moment after
/// the subscribing server has it: publish probes on `topic` until one
/// arrives, then drain any late copies.
async fn settle(a: &Arc<Cluster>, rx: &mut mpsc::UnboundedReceiver<Got>, topic: &str) {
    for _ in 0..100 {
        a.forward(&env(topic, QoS::AtMostOnce, "a")).await;
        if let Ok(Some(Got::Msg(_))) =
            tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
        {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
            {}
            return;
        }
    }
    panic!("interest in {topic} never reached the publishing node");
}

async fn quiet(rx: &mut mpsc::UnboundedReceiver<Got>) {
    if let Ok(Some(Got::Msg(e))) = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await
    {
        panic!("unexpected message {:?}", e.topic);
    }
}

#[tokio::test]
async fn odd_topics_cross_nodes_exactly() {
    let Some(urls) = nats() else { return };
    let name = unique();
    let (a, _) = node(&urls, &name, "a").await;
    let (b, mut rx) = node(&urls, &name, "b").await;
    b.interest_added("#").await;
    settle(&a, &mut rx, "probe").await;
    let topics = [
        "a.b/c",
        "/lead",
        "x//y/",
        "sp ace",
        "*",
        ">/>",
        "~7E",
        "$aws/x",
        "é/中文/😀",
        "t\u{1}c",
    ];
    for t in topics {
        let mut e = env(t, QoS::AtMostOnce, "a");
        e.properties = Properties::from(PropertyValues {
            user_properties: vec![("k".into(), "2".into()), ("k".into(), "1".into())],
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            ..Default::default()
        });
        assert!(a.forward(&e).await.is_none());
    }
    for t in topics {
        let got = next_msg(&mut rx).await;
        assert_eq!(got.topic.as_str(), t);
        assert_eq!(got.payload, Bytes::from(format!("p:{t}")));
        assert_eq!(got.origin, "a");
        assert_eq!(got.properties.user_properties[0].1.as_str(), "2");
        assert_eq!(got.properties.user_properties[1].1.as_str(), "1");
    }
}

#[tokio::test]
async fn filters_select_by_interest_and_overlaps_deliver_once() {
    let Some(urls) = nats() else { return };
    let name = unique();
    let (a, _) = node(&urls, &name, "a").await;
    let (b, mut rx) = node(&urls, &name, "b").await;
    b.interest_added("s/#").await;
    b.interest_added("s/+/x").await;
    settle(&a, &mut rx, "s/probe/x").await;
    for t in ["s", "s/1/x", "s/2", "other/1", "s/3/x"] {
        a.forward(&env(t, QoS::AtMostOnce, "a")).await;
    }
    for t in ["s", "s/1/x", "s/2", "s/3/x"] {
        assert_eq!(next_msg(&mut rx).await.topic.as_str(), t);
    }
    quiet(&mut rx).await;
    // The last subscriber of a filter gone: nothing more for it.
    b.interest_removed("s/#");
    b.interest_removed("s/+/x");
    assert_eq!(b.interest_count(), 0);
    b.flush().await.unwrap();
    a.forward(&env("s/9/x", QoS::AtMostOnce, "a")).await;
    quiet(&mut rx).await;
}

#[tokio::test]
async fn qos1_is_stored_in_the_stream_before_its_handle_completes() {
    let Some(urls) = nats() else { return };
    let name = unique();
    let (a, _) = node(&urls, &name, "a").await;
    let (b, mut rx) = node(&urls, &name, "b").await;
    b.interest_added("d/+").await;
    settle(&a, &mut rx, "d/probe").await;
    for i in 0..50 {
        let h = a
            .forward(&env(&format!("d/{i}"), QoS::AtLeastOnce, "a"))
            .await
            .expect("a handle for QoS 1");
        assert!(h.await.unwrap(), "JetStream acknowledged");
    }
    for i in 0..50 {
        let got = next_msg(&mut rx).await;
        assert_eq!(got.topic.as_str(), format!("d/{i}"), "order per publisher");
        assert_eq!(got.qos, QoS::AtLeastOnce);
    }
    let mut s = a.jetstream().get_stream(a.stream_name()).await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 50);
    assert_eq!(a.metrics.publish_rtt.count(), 50);
}

#[tokio::test]
async fn concurrent_claims_leave_exactly_one_owner() {
    let Some(urls) = nats() else { return };
    let name = unique();
    let (a, _) = node(&urls, &name, "a").await;
    let (b, _) = node(&urls, &name, "b").await;
    for round in 0..100 {
        let id = format!("client {round}");
        let (ra, rb) = tokio::join!(a.claim(&id), b.claim(&id));
        let (ca, cb) = (ra.unwrap(), rb.unwrap());
        // Both claimed in turn (the CAS loop retries): distinct epochs, and
        // only the later one is still the owner.
        assert_ne!(ca.epoch, cb.epoch);
        let (sa, sb) = (
            a.still_owner(&id, &ca).await.unwrap(),
            b.still_owner(&id, &cb).await.unwrap(),
        );
        assert!(sa ^ sb, "round {round}: exactly one owner (a {sa}, b {sb})");
        let (owner, _) = a.owner(&id).await.unwrap().unwrap();
        assert_eq!(owner.epoch, ca.epoch.max(cb.epoch));
        assert_eq!(owner.node, if sa { "a" } else { "b" });
        // The loser cannot release the winner's record.
        let (loser, lclaim, winner, wclaim) = if sa {
            (&b, &cb, &a, &ca)
        } else {
            (&a, &ca, &b, &cb)
        };
        assert!(!loser.release(&id, lclaim).await.unwrap());
        assert!(winner.release(&id, wclaim).await.unwrap());
        assert!(a.owner(&id).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn membership_sees_nodes_and_a_dead_one_goes() {
    let Some(urls) = nats() else { return };
    let name = unique();
    let (a, _) = node(&urls, &name, "a").await;
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel();
    a.watch_nodes(move |n| {
        let _ = gone_tx.send(n);
    })
    .await
    .unwrap();
    let (b, _) = node(&urls, &name, "b").await;
    a.heartbeat().await.unwrap();
    b.heartbeat().await.unwrap();
    let nodes = a.nodes().await.unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(nodes.iter().all(|n| n.state == "alive"));
    assert!(nodes[0].this && !nodes[1].this);
    // b stops heartbeating (dropped): its record ages out.
    drop(b);
    let gone = tokio::time::timeout(WAIT, gone_rx.recv())
        .await
        .expect("b seen gone");
    assert_eq!(gone.as_deref(), Some("b"));
    let names: Vec<String> = a
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(names, ["a"]);
}

#[tokio::test]
async fn retained_set_and_clear_reach_other_nodes() {
    let Some(urls) = nats() else { return };
    let name = unique();
    let (a, _) = node(&urls, &name, "a").await;
    let mut e = env("r/one.two", QoS::AtLeastOnce, "a");
    e.retain = true;
    a.put_retained("r/one.two", Some(&e)).await.unwrap();
    // A node joining later loads it.
    let (b, mut rx) = node(&urls, &name, "b").await;
    let got = match tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Got::Retained(t, Some(e)) => (t, e),
        other => panic!("{other:?}"),
    };
    assert_eq!(got.0, "r/one.two");
    assert_eq!(got.1.payload, e.payload);
    assert_eq!(got.1.qos, QoS::AtLeastOnce);
    a.put_retained("r/one.two", None).await.unwrap();
    match tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Got::Retained(t, None) => assert_eq!(t, "r/one.two"),
        other => panic!("{other:?}"),
    }
    drop(b);
}

#[tokio::test]
async fn unreachable_nats_is_an_error_naming_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut cfg = config(std::slice::from_ref(&url), "x", "a");
    cfg.connect_timeout_ms = 500;
    let (tx, _rx) = mpsc::unbounded_channel();
    let e = Cluster::start(&cfg, Arc::new(Sink(tx))).await.unwrap_err();
    assert!(e.to_string().contains(&url), "{e}");
}

#[tokio::test]
async fn a_shared_group_gets_each_message_once_across_nodes() {
    let Some(urls) = nats() else { return };
    let name = unique();
    let (a, mut ra) = node(&urls, &name, "a").await;
    let (b, mut rb) = node(&urls, &name, "b").await;
    a.group_added("q/#", "g").await;
    b.group_added("q/#", "g").await;
    // Queue interest travels like plain interest: wait until probes arrive.
    let mut got = 0;
    for _ in 0..100 {
        a.forward(&env("q/probe", QoS::AtMostOnce, "a")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(m) = ra.try_recv().or_else(|_| rb.try_recv()) {
            if matches!(m, Got::Shared(..)) {
                got += 1;
            }
        }
        if got > 3 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    while ra.try_recv().is_ok() || rb.try_recv().is_ok() {}
    for i in 0..40 {
        let h = a
            .forward(&env(&format!("q/{i}"), QoS::AtLeastOnce, "a"))
            .await;
        assert!(h.unwrap().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut seen = std::collections::HashSet::new();
    let mut per = [0, 0];
    for (k, rx) in [&mut ra, &mut rb].into_iter().enumerate() {
        while let Ok(m) = rx.try_recv() {
            if let Got::Shared(g, e) = m {
                assert_eq!(g, "g");
                assert!(seen.insert(e.topic.to_string()), "duplicate {}", e.topic);
                per[k] += 1;
            }
        }
    }
    // The publishing node is a member too: its own publishes reach it.
    assert_eq!(seen.len(), 40, "each message once: {per:?}");
    assert!(per[0] > 0 && per[1] > 0, "spread: {per:?}");
    b.group_removed("q/#", "g");
}
