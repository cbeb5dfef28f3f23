//! Session ownership across nodes: who owns a client id is a record in the
//! cluster's `sessions` bucket, taken by compare-and-set on CONNECT
//! ([`claim`]). When the record named another node, that node is asked over
//! its control subject (`<c>.ctl.<node>`) to let the session go: it sends its
//! connection DISCONNECT 0x8E, waits for it to detach, hands back the
//! session's state (subscriptions, queued and inflight QoS 1/2 messages,
//! incoming QoS 2 ids, expiry) and forgets it; this node installs that state
//! so the CONNECT resumes it (`session present`).
//!
//! Fencing: every node watches the bucket; a record naming another node for
//! a client id connected here closes that connection (0x8E), so a lost
//! control request still never leaves two live connections.
//!
//! Without NATS a node cannot fence: it refuses CONNECTs that would resume
//! or keep a session (CONNACK 0x88 server unavailable) and lets clean
//! sessions without expiry connect (they own nothing to fence).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use midge_cluster::Cluster;
use midge_protocol::reason;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::router::split_filter;
use crate::router::SubEntry;
use crate::session::{Inflight, Session};
use crate::store::codec;

/// Largest state handed over in one control reply (NATS' default
/// max_payload is 1 MiB): past it the oldest queued messages stay behind.
const MAX_STATE: usize = 900 * 1024;

/// How long the old owner waits for its connection to detach.
const DETACH_WAIT: Duration = Duration::from_secs(3);

/// A takeover request on `<c>.ctl.<node>`.
#[derive(Debug, Serialize, Deserialize)]
struct Take {
    client_id: String,
    /// The new owner and its epoch.
    node: String,
    epoch: u64,
    /// The new connection resumes the session (not clean start).
    want_state: bool,
}

/// Claims `client_id` for this node on CONNECT (nothing when not
/// clustered). `Err((reason code, why))` refuses the CONNECT.
pub async fn claim(
    broker: &Arc<Broker>,
    client_id: &Arc<str>,
    clean_start: bool,
    expiry: u32,
) -> Result<(), (u8, &'static str)> {
    let Some(node) = broker.cluster.get() else {
        return Ok(());
    };
    let c = node.cluster();
    let persistent = !clean_start || expiry > 0;
    let claim = match c.claim(client_id).await {
        Ok(claim) => claim,
        Err(e) if persistent => {
            warn!(%client_id, error = %e, "cluster: session not claimed; CONNECT refused (0x88)");
            return Err((
                reason::SERVER_UNAVAILABLE,
                "cluster: the session's owner cannot be checked (NATS unavailable)",
            ));
        }
        Err(e) => {
            debug!(%client_id, error = %e, "cluster: clean session connected without a claim");
            return Ok(());
        }
    };
    let mut pre = Vec::new();
    let imported = match claim.previous.filter(|p| p.node != c.node()) {
        Some(prev) => {
            if !clean_start {
                pre = super::sessions::pre_subscribe(c, client_id).await;
            }
            take_from(broker, c, client_id, &prev, claim.epoch, clean_start).await
        }
        None => None,
    };
    super::sessions::after_claim(
        broker,
        c,
        client_id,
        claim.epoch,
        clean_start,
        persistent,
        imported,
    )
    .await;
    super::sessions::release_later(c, pre);
    Ok(())
}

/// Asks `prev`'s node to let `client_id` go; when it handed over a session
/// that is now installed here, the old node's checkpoint of it.
async fn take_from(
    broker: &Arc<Broker>,
    c: &Arc<Cluster>,
    client_id: &Arc<str>,
    prev: &midge_cluster::ownership::Owner,
    epoch: u64,
    clean_start: bool,
) -> Option<u64> {
    let take = Take {
        client_id: client_id.to_string(),
        node: c.node().to_string(),
        epoch,
        want_state: !clean_start,
    };
    let subject = control_subject(c, &prev.node);
    let body = Bytes::from(serde_json::to_vec(&take).unwrap_or_default());
    let t = c.config().request_timeout();
    match tokio::time::timeout(t, c.client().request(subject, body)).await {
        Ok(Ok(reply)) if !reply.payload.is_empty() && !clean_start => {
            match import(broker, client_id, reply.payload) {
                Ok((n, floor)) => {
                    info!(%client_id, from = %prev.node, messages = n, "cluster: session taken over");
                    return Some(floor);
                }
                Err(e) => {
                    warn!(%client_id, from = %prev.node, error = %e, "cluster: session state from the old owner refused")
                }
            }
        }
        Ok(Ok(_)) => debug!(%client_id, from = %prev.node, "cluster: old owner had no session"),
        Ok(Err(e)) => {
            info!(%client_id, from = %prev.node, error = %e, "cluster: old owner did not answer (gone?)")
        }
        Err(_) => {
            c.metrics.timeouts.fetch_add(1, Relaxed);
            info!(%client_id, from = %prev.node, "cluster: old owner did not answer in time")
        }
    }
    None
}

fn control_subject(c: &Cluster, node: &str) -> String {
    format!("{}.ctl.{node}", c.config().name)
}

/// Serves takeover requests for this node and closes local connections
/// whose client id another node claimed.
pub async fn serve(
    broker: &Arc<Broker>,
    c: &Arc<Cluster>,
) -> Result<(), midge_cluster::ClusterError> {
    let sub = c
        .client()
        .subscribe(control_subject(c, c.node()))
        .await
        .map_err(|e| midge_cluster::ClusterError::Nats {
            what: "control subscription".into(),
            message: e.to_string(),
        })?;
    let weak = Arc::downgrade(broker);
    let client = c.client().clone();
    tokio::spawn(control(weak.clone(), client, sub));
    let owners = c.watch_owners().await?;
    let me = c.node().to_string();
    tokio::spawn(fence(weak, me, owners));
    Ok(())
}

async fn control(
    broker: Weak<Broker>,
    client: midge_cluster::async_nats::Client,
    mut sub: midge_cluster::async_nats::Subscriber,
) {
    while let Some(msg) = sub.next().await {
        let Some(b) = broker.upgrade() else { return };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let take: Take = match serde_json::from_slice(&msg.payload) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "cluster: bad takeover request refused");
                continue;
            }
        };
        let client = client.clone();
        tokio::spawn(async move {
            let state = let_go(&b, &take).await;
            if let Err(e) = client.publish(reply, state).await {
                debug!(error = %e, "cluster: takeover reply not sent");
            }
        });
    }
}

/// Closes the local connection of `take.client_id` (0x8E), waits for it to
/// detach, and forgets the session; returns its state when asked for.
async fn let_go(b: &Arc<Broker>, take: &Take) -> Bytes {
    let Some(session) = b.session(&take.client_id) else {
        return Bytes::new();
    };
    if let Some(gone) = b.kick(&session, reason::SESSION_TAKEN_OVER) {
        let _ = tokio::time::timeout(DETACH_WAIT, gone).await;
    }
    let state = if take.want_state {
        let mark = b.cluster.get().map_or(0, |n| n.cluster().mark());
        export(&session, mark)
    } else {
        Bytes::new()
    };
    // Its record is the new owner's to write now.
    if let Some(node) = b.cluster.get() {
        node.cluster().let_go(&take.client_id);
    }
    hand_over(b, &session);
    info!(client_id = %take.client_id, to = %take.node, epoch = take.epoch, "cluster: session handed over");
    state
}

/// Closes the connection of a client id another node now owns.
async fn fence(
    broker: Weak<Broker>,
    me: String,
    mut w: midge_cluster::async_nats::jetstream::kv::Watch,
) {
    while let Some(e) = w.next().await {
        let Ok(e) = e else { continue };
        if e.operation != midge_cluster::async_nats::jetstream::kv::Operation::Put {
            continue;
        }
        let Ok(owner) = serde_json::from_slice::<midge_cluster::ownership::Owner>(&e.value) else {
            continue;
        };
        if owner.node == me {
            continue;
        }
        let Some(b) = broker.upgrade() else { return };
        let Some(client_id) = midge_cluster::subject::kv_key_decode(&e.key) else {
            continue;
        };
        if let Some(s) = b.session(&client_id) {
            if s.is_online() && b.kick(&s, reason::SESSION_TAKEN_OVER).is_some() {
                info!(%client_id, owner = %owner.node, "cluster: connection closed, its session is owned elsewhere");
            }
        }
    }
}

/// Forgets `session` here without publishing its will (it lives on
/// elsewhere): out of the registry, the router and the store.
fn hand_over(b: &Broker, session: &Arc<Session>) {
    {
        let mut reg = b.registry().lock();
        let mine = reg
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session));
        if !mine || session.state.lock().conn.is_some() {
            return;
        }
        reg.remove(&session.client_id);
    }
    let filters: Vec<String> = {
        let mut st = session.state.lock();
        st.ended = true;
        st.generation += 1;
        st.will = None;
        if st.persist {
            st.persist = false;
            session.store_op(crate::store::Op::DropSession(session.client_id.clone()));
        }
        st.queue.clear();
        st.queued_bytes = 0;
        st.inflight.clear();
        st.subscriptions.drain().map(|(f, _)| f).collect()
    };
    for f in filters {
        let (group, filter) = split_filter(&f);
        b.router.unsubscribe(filter, group, session);
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

/// The state a session hands over: version, expiry, next packet id,
/// subscriptions, incoming QoS 2 ids, inflight then queued QoS 1/2
/// deliveries each with its stream mark (the oldest first; past
/// [`MAX_STATE`] the rest stays behind), and its checkpoint in the stream
/// (`mark`: this node's, read before the session was).
fn export(session: &Session, mark: u64) -> Bytes {
    let st = session.state.lock();
    let mut out = BytesMut::with_capacity(256);
    out.put_u8(2);
    out.put_u32(st.expiry_interval);
    out.put_u16(st.next_packet_id);
    out.put_u32(st.subscriptions.len() as u32);
    for (f, r) in &st.subscriptions {
        put_bytes(&mut out, f.as_bytes());
        put_bytes(&mut out, &codec::encode_sub(r));
    }
    out.put_u32(st.incoming_qos2.len() as u32);
    for id in &st.incoming_qos2 {
        out.put_u16(*id);
    }
    let inflight: Vec<&Inflight> = st
        .inflight
        .iter()
        .filter(|i| i.delivery.qos != midge_protocol::QoS::AtMostOnce)
        .collect();
    out.put_u32(inflight.len() as u32);
    for i in inflight {
        put_bytes(&mut out, &codec::encode_inflight(i.packet_id, i.stage));
        put_bytes(&mut out, &codec::encode_delivery(&i.delivery));
        out.put_u64(i.delivery.msg.stream_mark.load(Relaxed));
    }
    let mut queued = Vec::new();
    let mut size = out.len();
    for d in st
        .queue
        .iter()
        .filter(|d| d.qos != midge_protocol::QoS::AtMostOnce)
    {
        let e = codec::encode_delivery(d);
        size += e.len() + 12;
        if size > MAX_STATE {
            warn!(client_id = %session.client_id, "cluster: session state too large to hand over whole; newest queued messages stay behind");
            break;
        }
        queued.push((e, d.msg.stream_mark.load(Relaxed)));
    }
    out.put_u32(queued.len() as u32);
    for (e, m) in queued {
        put_bytes(&mut out, &e);
        out.put_u64(m);
    }
    out.put_u64(super::sessions::floor_of(&st, mark));
    out.freeze()
}

fn get_bytes(b: &mut Bytes) -> Result<Bytes, String> {
    if b.remaining() < 4 {
        return Err("truncated".into());
    }
    let n = b.get_u32() as usize;
    if b.remaining() < n {
        return Err("truncated".into());
    }
    Ok(b.split_to(n))
}

fn need(b: &Bytes, n: usize) -> Result<(), String> {
    if b.remaining() < n {
        Err("truncated".into())
    } else {
        Ok(())
    }
}

/// Installs state handed over by another node as an offline session of
/// `client_id` (unless one is already here); returns the messages it holds
/// and the old node's checkpoint of it.
fn import(b: &Broker, client_id: &Arc<str>, mut s: Bytes) -> Result<(usize, u64), String> {
    need(&s, 11)?;
    if s.get_u8() != 2 {
        return Err("unknown state version".into());
    }
    let expiry = s.get_u32();
    let next_packet_id = s.get_u16();
    let session = Arc::new(Session::new(client_id.clone(), expiry, b.store.clone()));
    let mut messages = 0;
    {
        let mut st = session.state.lock();
        st.next_packet_id = next_packet_id.max(1);
        need(&s, 4)?;
        for _ in 0..s.get_u32() {
            let f =
                String::from_utf8(get_bytes(&mut s)?.to_vec()).map_err(|_| "filter not UTF-8")?;
            let r = codec::decode_sub(&get_bytes(&mut s)?).map_err(|e| e.0)?;
            st.subscriptions.insert(f, r);
        }
        need(&s, 4)?;
        for _ in 0..s.get_u32() {
            need(&s, 2)?;
            st.incoming_qos2.insert(s.get_u16());
        }
        need(&s, 4)?;
        for _ in 0..s.get_u32() {
            let (packet_id, stage) =
                codec::decode_inflight(&get_bytes(&mut s)?).map_err(|e| e.0)?;
            let delivery = codec::decode_delivery(&get_bytes(&mut s)?, 0).map_err(|e| e.0)?;
            need(&s, 8)?;
            delivery.msg.stream_mark.store(s.get_u64(), Relaxed);
            st.inflight.push_back(Inflight {
                packet_id,
                delivery,
                stage,
            });
            messages += 1;
        }
        need(&s, 4)?;
        for _ in 0..s.get_u32() {
            let d = codec::decode_delivery(&get_bytes(&mut s)?, 0).map_err(|e| e.0)?;
            need(&s, 8)?;
            d.msg.stream_mark.store(s.get_u64(), Relaxed);
            st.queued_bytes += d.msg.payload.len();
            st.queue.push_back(d);
            messages += 1;
        }
        st.offline_since_ms = Some(crate::message::now_ms());
    }
    need(&s, 8)?;
    let floor = s.get_u64();
    install(b, &session)?;
    Ok((messages, floor))
}

/// Puts `session` (offline) into the registry, unless one of its client id
/// is here already, and its subscriptions into the router.
pub(super) fn install(b: &Broker, session: &Arc<Session>) -> Result<(), String> {
    let client_id = &session.client_id;
    {
        let mut reg = b.registry().lock();
        if reg.contains_key(client_id) {
            return Err("a session of this client id is already here".into());
        }
        reg.insert(client_id.clone(), session.clone());
    }
    let subs: Vec<(String, crate::session::SubscriptionRecord)> = session
        .state
        .lock()
        .subscriptions
        .iter()
        .map(|(f, r)| (f.clone(), r.clone()))
        .collect();
    for (f, r) in subs {
        let (group, filter) = split_filter(&f);
        b.router.subscribe(
            filter,
            group,
            SubEntry {
                session: session.clone(),
                opts: r.opts,
                id: r.id,
            },
        );
    }
    Ok(())
}
