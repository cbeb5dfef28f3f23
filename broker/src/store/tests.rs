//! Store unit tests: folding, and the sled backend end to end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use midge_protocol::{QoS, SubOptions};
use smallvec::SmallVec;

use super::*;
use crate::records::Delivery;

fn delivery(payload: &'static [u8]) -> Delivery {
    Delivery {
        msg: Arc::new(Message::new(
            "t/1".into(),
            Bytes::from_static(payload),
            QoS::AtLeastOnce,
            false,
            Default::default(),
        )),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: SmallVec::new(),
        shared: None,
        seq: 0,
    }
}

/// Opens the store again after `close`: sled's own flusher thread may hold
/// the directory's lock for a moment after the last handle is dropped, so a
/// reopen in the same process retries `Locked` for up to 5 s.
fn reopen(cfg: &PersistenceConfig) -> (Store, Snapshot) {
    for _ in 0..100 {
        match Store::open(cfg) {
            Err(StoreError::Locked { .. }) => std::thread::sleep(Duration::from_millis(50)),
            other => return other.unwrap(),
        }
    }
    Store::open(cfg).unwrap()
}

fn c(s: &str) -> Arc<str> {
    Arc::from(s)
}

#[test]
fn fold_keeps_the_last_write_and_skips_short_lived_deliveries() {
    let rec = SessionRecord {
        expiry: 60,
        disconnected_at_ms: None,
        will: None,
    };
    let b = fold(vec![
        Op::PutSession(c("a"), rec.clone()),
        Op::Queue(c("a"), 1, delivery(b"one")),
        Op::Queue(c("a"), 2, delivery(b"two")),
        Op::Inflight(c("a"), 1, 7, Stage::Published),
        Op::Dequeue(c("a"), 1),
        Op::PutSub(
            c("a"),
            "x/#".into(),
            SubscriptionRecord {
                opts: SubOptions::qos(QoS::AtLeastOnce),
                id: None,
            },
        ),
        Op::DelSub(c("a"), "x/#".into()),
        Op::Dequeue(c("a"), 0xdead),
    ]);
    assert!(b.cleared.is_empty());
    let keys: Vec<String> = b
        .writes
        .iter()
        .map(|(k, v)| format!("{k}={}", v.is_some()))
        .collect();
    assert_eq!(
        keys,
        [
            "session \"a\"=true",
            "queued message 2 of \"a\"=true",
            "subscription \"x/#\" of \"a\"=false",
            "queued message 57005 of \"a\"=false",
            "inflight state of message 57005 of \"a\"=false",
        ]
    );
}

#[test]
fn fold_drop_session_clears_earlier_writes_but_keeps_later_ones() {
    let rec = SessionRecord {
        expiry: 60,
        disconnected_at_ms: None,
        will: None,
    };
    let b = fold(vec![
        Op::PutSession(c("a"), rec.clone()),
        Op::Queue(c("a"), 1, delivery(b"one")),
        Op::PutSession(c("b"), rec.clone()),
        Op::DropSession(c("a")),
        Op::PutSession(c("a"), rec),
    ]);
    assert_eq!(b.cleared, vec![c("a")]);
    let keys: Vec<String> = b.writes.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(keys, ["session \"a\"", "session \"b\""]);
}

#[test]
fn sled_store_round_trips_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PersistenceConfig {
        enabled: true,
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let (store, snap) = reopen(&cfg);
    assert!(snap.sessions.is_empty());
    let rec = SessionRecord {
        expiry: 3600,
        disconnected_at_ms: Some(5),
        will: None,
    };
    store.submit(Op::PutSession(c("dev-1"), rec.clone()));
    store.submit(Op::PutSub(
        c("dev-1"),
        "$share/g/a/+".into(),
        SubscriptionRecord {
            opts: SubOptions::qos(QoS::ExactlyOnce),
            id: Some(4),
        },
    ));
    for seq in 1..=3 {
        store.submit(Op::Queue(c("dev-1"), seq, delivery(b"m")));
    }
    store.submit(Op::Inflight(c("dev-1"), 2, 99, Stage::Released));
    store.submit(Op::Dequeue(c("dev-1"), 1));
    store.submit(Op::PutQos2(c("dev-1"), 12));
    store.submit(Op::PutSession(c("gone"), rec));
    store.submit(Op::Queue(c("gone"), 1, delivery(b"x")));
    let t = store.submit(Op::DropSession(c("gone")));
    let mut m = Message::new(
        "r/1".into(),
        Bytes::from_static(b"kept"),
        QoS::AtMostOnce,
        true,
        Default::default(),
    );
    m.timestamp_ms = 77;
    store.submit(Op::PutRetained(Arc::new(m)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), store.durable(t))
            .await
            .unwrap();
    });
    store.close();
    drop(store);

    let (store, snap) = reopen(&cfg);
    assert_eq!(snap.sessions.len(), 1);
    let s = &snap.sessions[0];
    assert_eq!(&*s.client_id, "dev-1");
    assert_eq!(s.record.expiry, 3600);
    assert_eq!(s.record.disconnected_at_ms, Some(5));
    assert_eq!(s.subscriptions.len(), 1);
    assert_eq!(s.subscriptions[0].0, "$share/g/a/+");
    assert_eq!(s.subscriptions[0].1.id, Some(4));
    let seqs: Vec<(u64, Option<(u16, Stage)>)> = s.queue.iter().map(|(d, i)| (d.seq, *i)).collect();
    assert_eq!(seqs, vec![(2, Some((99, Stage::Released))), (3, None)]);
    assert_eq!(s.incoming_qos2, vec![12]);
    assert_eq!(snap.retained.len(), 1);
    assert_eq!(snap.retained[0].payload, Bytes::from_static(b"kept"));
    assert_eq!(snap.retained[0].timestamp_ms, 77);
    store.close();
}

#[test]
fn a_corrupt_record_stops_the_load_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    {
        let db = ::sled::open(&path).unwrap();
        db.insert(b"sdev-9", &[1u8, 0, 0][..]).unwrap();
        db.flush().unwrap();
    }
    let cfg = PersistenceConfig {
        enabled: true,
        data_dir: path.clone(),
        ..Default::default()
    };
    // sled's flusher thread can hold the directory's lock for a moment after
    // the handle above is dropped: retry (bounded) while the lock is busy.
    let mut e = String::new();
    for _ in 0..100 {
        e = Store::open(&cfg).unwrap_err().to_string();
        if !e.contains("lock") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("session \"dev-9\""), "{e}");
    assert!(e.contains("corrupt"), "{e}");
}

#[test]
fn an_unopenable_store_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let cfg = PersistenceConfig {
        enabled: true,
        data_dir: file.clone(),
        ..Default::default()
    };
    let e = Store::open(&cfg).unwrap_err().to_string();
    assert!(e.contains("cannot open"), "{e}");
    assert!(e.contains(&file.display().to_string()), "{e}");
}

#[test]
fn a_bridge_handle_maps_session_ops_to_bridge_records() {
    let rec = SessionRecord {
        expiry: 60,
        disconnected_at_ms: None,
        will: None,
    };
    let mapped: Vec<Option<Op>> = vec![
        Op::Queue(c("cloud"), 1, delivery(b"m")),
        Op::Inflight(c("cloud"), 1, 5, Stage::Published),
        Op::Dequeue(c("cloud"), 1),
        Op::PutQos2(c("cloud"), 9),
        Op::DelQos2(c("cloud"), 9),
        Op::DropSession(c("cloud")),
        Op::PutSession(c("cloud"), rec),
        Op::DelSub(c("cloud"), "a/#".into()),
    ]
    .into_iter()
    .map(Op::for_bridge)
    .collect();
    let names: Vec<String> = mapped
        .iter()
        .map(|o| match o {
            Some(o) => format!("{o:?}").split('(').next().unwrap_or("").to_string(),
            None => "-".into(),
        })
        .collect();
    assert_eq!(
        names,
        [
            "BridgeQueue",
            "BridgeInflight",
            "BridgeDequeue",
            "BridgePutQos2",
            "BridgeDelQos2",
            "DropBridge",
            "-",
            "-"
        ]
    );
    // Folded like a session's: queued and acknowledged in one run is never
    // written; DropBridge clears what came before it.
    let b = fold(vec![
        Op::BridgeQueue(c("cloud"), 1, delivery(b"one")),
        Op::BridgeQueue(c("cloud"), 2, delivery(b"two")),
        Op::BridgeInflight(c("cloud"), 1, 3, Stage::Published),
        Op::BridgeDequeue(c("cloud"), 1),
        Op::Queue(c("cloud"), 1, delivery(b"session")),
        Op::BridgePutQos2(c("other"), 4),
        Op::DropBridge(c("other")),
    ]);
    assert_eq!(b.cleared_bridges, vec![c("other")]);
    assert!(b.cleared.is_empty());
    let keys: Vec<String> = b.writes.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(
        keys,
        [
            "buffered message 2 of bridge \"cloud\"",
            "queued message 1 of \"cloud\""
        ]
    );
}

#[test]
fn sled_keeps_bridge_buffers_apart_from_sessions_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PersistenceConfig {
        enabled: true,
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let (store, _) = Store::open(&cfg).unwrap();
    let bridges = store.for_bridges();
    let rec = SessionRecord {
        expiry: 3600,
        disconnected_at_ms: Some(5),
        will: None,
    };
    // A client whose id is the bridge's name.
    store.submit(Op::PutSession(c("cloud"), rec.clone()));
    store.submit(Op::Queue(c("cloud"), 1, delivery(b"for the client")));
    bridges.submit(Op::PutSession(c("cloud"), rec));
    for seq in 1..=4 {
        bridges.submit(Op::Queue(c("cloud"), seq, delivery(b"for the remote")));
    }
    bridges.submit(Op::Inflight(c("cloud"), 2, 17, Stage::Released));
    bridges.submit(Op::Dequeue(c("cloud"), 1));
    bridges.submit(Op::PutQos2(c("cloud"), 33));
    bridges.submit(Op::Queue(c("gone"), 1, delivery(b"x")));
    let t = bridges.submit(Op::DropSession(c("gone")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), store.durable(t))
            .await
            .unwrap();
    });
    store.close();
    drop((store, bridges));

    let (store, snap) = reopen(&cfg);
    assert_eq!(snap.sessions.len(), 1);
    assert_eq!(snap.sessions[0].queue.len(), 1);
    assert_eq!(
        snap.sessions[0].queue[0].0.msg.payload,
        Bytes::from_static(b"for the client")
    );
    assert!(snap.orphans.is_empty(), "{:?}", snap.orphans);
    assert_eq!(snap.bridges.len(), 1, "{:?}", snap.bridges);
    let b = &snap.bridges[0];
    assert_eq!(&*b.name, "cloud");
    let seqs: Vec<(u64, Option<(u16, Stage)>)> = b.queue.iter().map(|(d, i)| (d.seq, *i)).collect();
    assert_eq!(
        seqs,
        vec![(2, Some((17, Stage::Released))), (3, None), (4, None)]
    );
    assert!(b
        .queue
        .iter()
        .all(|(d, _)| d.msg.payload == Bytes::from_static(b"for the remote")));
    assert_eq!(b.incoming_qos2, vec![33]);
    // Every buffered message acknowledged: nothing of the bridge is left.
    let bridges = store.for_bridges();
    for seq in 2..=4 {
        bridges.submit(Op::Dequeue(c("cloud"), seq));
    }
    let t = bridges.submit(Op::DelQos2(c("cloud"), 33));
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), store.durable(t))
            .await
            .unwrap();
    });
    store.close();
    drop((store, bridges));
    let (store, snap) = reopen(&cfg);
    assert!(snap.bridges.is_empty(), "{:?}", snap.bridges);
    assert_eq!(snap.sessions.len(), 1);
    store.close();
}
