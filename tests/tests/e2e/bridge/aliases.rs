//! Topic aliases on a 5.0 link: the bridge gives the topics it sends
//! aliases up to the remote's Topic Alias Maximum, and a topic alias a
//! client used towards this broker is never forwarded (it means nothing at
//! the remote). The remote is a Midge node allowing 3 aliases; between the
//! edge and the remote a tap copies the bytes and decodes the edge's
//! PUBLISH packets with the tests' own codec (tests/src/raw.rs), so the
//! aliases on the wire are checked as well as what the remote's subscriber
//! gets.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use midge_e2e::raw::{self, ConnectOpts, Prop, RawClient};
use midge_e2e::v5::QoS;
use midge_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{bridges, linked, v5_at};

/// Topic Alias Maximum of the remote.
const REMOTE_ALIASES: u16 = 3;
/// The alias the edge's client uses (above the remote's maximum: had the
/// bridge forwarded it, the remote would close the link with 0x94).
const CLIENT_ALIAS: u16 = 5;
const ROUNDS: usize = 40;
/// Property id of Topic Alias.
const TOPIC_ALIAS: u8 = 0x23;

/// A TCP proxy to 127.0.0.1:`upstream` keeping the PUBLISH packets that go
/// upstream, decoded as 5.0.
struct Tap {
    port: u16,
    seen: Arc<Mutex<Vec<raw::PublishP>>>,
    task: JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    async fn start(upstream: u16) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                tokio::spawn(relay(down, up, keep.clone()));
            }
        });
        Tap { port, seen, task }
    }

    fn publishes(&self) -> Vec<raw::PublishP> {
        self.seen.lock().unwrap().clone()
    }
}

async fn relay(down: TcpStream, up: TcpStream, seen: Arc<Mutex<Vec<raw::PublishP>>>) {
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut ur, &mut dw).await;
    });
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match dr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Kept before it goes on: once the remote has it, so has the tap.
        buf.extend_from_slice(&chunk[..n]);
        while let Some(p) = raw::split_packet(&mut buf) {
            if p.kind == raw::PUBLISH {
                seen.lock().unwrap().push(p.publish(true));
            }
        }
        if uw.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    back.abort();
}

#[tokio::test]
async fn the_remote_gets_the_right_topics_with_aliases_and_no_client_alias() {
    let remote = start_broker(|c| c.mqtt.topic_alias_maximum = REMOTE_ALIASES).await;
    let mut far = v5_at(remote.port(), "far").await;
    far.subscribe("fleet/#", QoS::AtLeastOnce).await;
    let tap = Tap::start(remote.port()).await;
    let cfg = format!(
        r#"
[[bridges]]
name = "cloud"
remote = "mqtt://127.0.0.1:{port}"
protocol = "5.0"
client_id = "{id}"
[[bridges.out]]
filter = "fleet/#"
qos = 1
"#,
        port = tap.port,
        id = unique("edge")
    );
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    linked(&b, "cloud").await;

    // A raw 5.0 client of the edge: five topics by name, and a sixth by
    // its own alias after the first message.
    let (mut near, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("near"))).await;
    let topics = ["fleet/a", "fleet/b", "fleet/c", "fleet/d", "fleet/e"];
    let mut expected = Vec::new();
    let mut id = 0u16;
    for round in 0..ROUNDS {
        let mut sends: Vec<(&str, Vec<Prop>, String, String)> = topics
            .iter()
            .map(|t| (*t, Vec::new(), t.to_string(), format!("{t}:{round}")))
            .collect();
        let own = if round == 0 { "fleet/own" } else { "" };
        sends.push((
            own,
            vec![Prop::topic_alias(CLIENT_ALIAS)],
            "fleet/own".into(),
            format!("own:{round}"),
        ));
        for (topic, props, meant, payload) in sends {
            id += 1;
            near.send(&raw::publish(
                true,
                topic,
                1,
                false,
                false,
                id,
                &props,
                payload.as_bytes(),
            ))
            .await;
            let ack = near.recv_kind(raw::PUBACK).await.ack();
            assert_eq!((ack.pid, ack.reason), (id, 0));
            expected.push((meant, payload));
        }
    }

    // The remote's subscriber: every message on its own topic, in order.
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let p = far.next_publish().await;
        assert!(p
            .properties
            .as_ref()
            .is_none_or(|p| p.topic_alias.is_none()));
        got.push((text(&p.topic), text(&p.payload)));
    }
    assert_eq!(got, expected);
    far.expect_no_publish(QUIET).await;

    // On the wire: an alias set with its topic, then used with an empty
    // one; never above the remote's maximum; the client's alias nowhere.
    let wire = tap.publishes();
    let mut names: HashMap<u16, String> = HashMap::new();
    let mut resolved = Vec::new();
    let mut by_alias = 0;
    for p in &wire {
        let alias = p.props.num(TOPIC_ALIAS).map(|a| a as u16);
        let topic = match (p.topic.is_empty(), alias) {
            (false, Some(a)) => {
                assert!(
                    (1..=REMOTE_ALIASES).contains(&a),
                    "alias {a} is above the remote's maximum: {p:?}"
                );
                names.insert(a, p.topic.clone());
                p.topic.clone()
            }
            (false, None) => p.topic.clone(),
            (true, Some(a)) => {
                by_alias += 1;
                names
                    .get(&a)
                    .cloned()
                    .unwrap_or_else(|| panic!("alias {a} used before it was set: {p:?}"))
            }
            (true, None) => panic!("an empty topic without an alias: {p:?}"),
        };
        resolved.push((topic, text(&p.payload)));
    }
    assert_eq!(
        resolved, expected,
        "what went to the remote, aliases resolved"
    );
    assert_eq!(
        names.len(),
        usize::from(REMOTE_ALIASES),
        "the first topics took every alias the remote allows: {names:?}"
    );
    assert_eq!(
        by_alias,
        usize::from(REMOTE_ALIASES) * (ROUNDS - 1),
        "after its first message, an aliased topic goes by its alias"
    );
    for p in wire.iter().filter(|p| p.payload.starts_with(b"own:")) {
        assert_eq!(p.topic, "fleet/own", "{p:?}");
        assert!(
            !p.props.has(TOPIC_ALIAS),
            "the client's alias went on: {p:?}"
        );
    }
    let st = &b.bridges.get("cloud").unwrap().status;
    assert_eq!(
        st.connects.load(Ordering::Relaxed),
        1,
        "one link throughout"
    );
    assert_eq!(st.disconnects.load(Ordering::Relaxed), 0);
    b.shutdown().await;
    remote.shutdown().await;
}
