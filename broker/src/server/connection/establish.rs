//! From an accepted CONNECT to a live session: authentication (plugins, then
//! the auth hook: enhanced_auth.rs), the session core's decision
//! (`proto::accept`), the cluster's claim, attach (with takeover), the
//! CONNACK, the `Connected` event, and the connection's inbound state.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use midge_protocol::{encode, reason, ConnAck, Connect, Packet};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::info;

use super::super::enhanced_auth::{self, Authenticated, Reauth};
use super::super::handshake::{generate_client_id, reason_props, refused, send_connack};
use super::super::span;
use super::inbound::Inbound;
use super::Io;
use crate::broker::{Attached, Broker};
use crate::events::{ConnectFlags, Event};
use crate::limits::PublishLimiter;
use crate::message::{ClientInfo, Message};
use crate::plugins;
use crate::session::proto::{self, Accepted, ClientLimits, Refused, TopicAliasesIn};
use crate::session::{ConnInfo, PendingWill, Session};

/// A connection whose CONNECT was accepted and answered.
pub(super) struct Established {
    pub(super) broker: Arc<Broker>,
    pub(super) session: Arc<Session>,
    pub(super) conn_id: u64,
    /// Fired when the session is taken over or the client kicked.
    pub(super) kicked: oneshot::Receiver<u8>,
    pub(super) will: Option<PendingWill>,
    /// What the CONNECT asked for, as events report it.
    pub(super) meta: ConnectFlags,
    /// The session expiry granted.
    pub(super) expiry: u32,
    pub(super) inbound: Inbound,
}

/// The accepted connection's terms, for its loop to set itself up with.
pub(super) struct Terms {
    /// Keep alive in force (seconds; 0: none).
    pub(super) keep_alive: u16,
    pub(super) limits: ClientLimits,
}

/// Authenticates and decides the CONNECT, attaches its session and sends
/// CONNACK. `None`: the connection is over (refused, gone, or CONNACK could
/// not be written).
pub(super) async fn establish<R, W>(
    broker: Arc<Broker>,
    c: Box<Connect>,
    peer: SocketAddr,
    io: &mut Io<R, W>,
    deadline: Instant,
) -> Option<(Established, Terms)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let auth = enhanced_auth::authenticate(
        &broker,
        &c,
        peer,
        &mut io.rd,
        &mut io.wr,
        &mut io.buf,
        deadline,
    )
    .await?;
    let (authenticated, auth_data) = match auth {
        Ok(mut a) => {
            let data = a.auth_data.take();
            (a, Ok(data))
        }
        Err(r) => (Authenticated::default(), Err(r)),
    };
    let mut accepted = match proto::accept(&c, &broker.config.offer(), auth_data) {
        Ok(a) => a,
        Err(r) => {
            refuse(&broker, &c, peer, io, r).await;
            return None;
        }
    };
    let client_id: Arc<str> = if accepted.assign_client_id {
        let id = generate_client_id();
        accepted.assign(c.version, &id);
        id.into()
    } else {
        c.client_id.as_str().into()
    };
    span::client_id(&client_id);
    let origin = Arc::new(ClientInfo {
        client_id,
        username: c.username.as_deref().map(Arc::from),
        peer,
        cluster: crate::cluster::acks_for(&broker),
    });
    let will = pending_will(&c, &origin);
    let attached = attach(&broker, &c, &origin, &mut accepted, &will, io).await?;
    let session = attached.session;
    info!(version = %c.version, clean_start = c.clean_start, keep_alive = accepted.keep_alive, session_present = attached.session_present, "connected");
    let inbound = inbound(&broker, &session, &c, origin, &authenticated);
    // Keep only what the events need; the CONNECT itself is dropped here.
    let meta = ConnectFlags {
        version: c.version,
        keep_alive: c.keep_alive,
        clean_start: c.clean_start,
    };
    broker.emit(Event::Connected {
        client: inbound.client(),
        connect: meta,
        expiry: accepted.expiry,
        anonymous: c.username.is_none(),
        superuser: authenticated.superuser,
        attributes: &authenticated.attributes,
        connected_at_ms: crate::message::now_ms(),
    });
    let established = Established {
        broker,
        session,
        conn_id: attached.conn_id,
        kicked: attached.kicked,
        will,
        meta,
        expiry: accepted.expiry,
        inbound,
    };
    let terms = Terms {
        keep_alive: accepted.keep_alive,
        limits: accepted.limits,
    };
    Some((established, terms))
}

/// Refuses the CONNECT: counted, its event raised, CONNACK with the reason.
async fn refuse<R, W>(broker: &Broker, c: &Connect, peer: SocketAddr, io: &mut Io<R, W>, r: Refused)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    info!(code = r.code, reason = r.why, "connection refused");
    refused(broker, c, peer, r.code);
    let v = c.version;
    let max = proto::client_max_packet(&c.properties);
    let refusal = send_connack(
        &mut io.rd,
        &mut io.wr,
        v,
        r.code,
        reason_props(v, r.why),
        max,
    );
    Box::pin(refusal).await;
}

/// The CONNECT's will, waiting for the connection to end.
fn pending_will(c: &Connect, origin: &Arc<ClientInfo>) -> Option<PendingWill> {
    c.will.as_ref().map(|w| {
        let mut properties = w.properties.clone();
        let delay = properties.will_delay_interval.take().unwrap_or(0);
        PendingWill {
            msg: Arc::new({
                let mut m = Message::new(
                    w.topic.clone(),
                    w.payload.clone(),
                    w.qos,
                    w.retain,
                    properties,
                );
                m.origin = Some(origin.clone());
                m
            }),
            delay,
        }
    })
}

/// The cluster's claim on the client id (it may refuse), attach (taking
/// over any live connection), the session durable, then CONNACK. `None`:
/// refused, or the CONNACK could not be written (detached again).
async fn attach<R, W>(
    broker: &Arc<Broker>,
    c: &Connect,
    origin: &Arc<ClientInfo>,
    accepted: &mut Accepted,
    will: &Option<PendingWill>,
    io: &mut Io<R, W>,
) -> Option<Attached>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client_id = &origin.client_id;
    let info = Arc::new(ConnInfo {
        username: origin.username.clone(),
        peer: origin.peer,
        keep_alive: accepted.keep_alive,
        clean_start: c.clean_start,
        connected_at_ms: crate::message::now_ms(),
    });
    let claim = crate::cluster::takeover::claim(broker, client_id, c.clean_start, accepted.expiry);
    if let Err((code, why)) = Box::pin(claim).await {
        refuse(broker, c, origin.peer, io, Refused::new(code, why)).await;
        return None;
    }
    let attached = Box::pin(broker.attach(
        client_id.clone(),
        accepted.expiry,
        c.version,
        accepted.limits.window,
        will.as_ref().map(|w| (w.msg.clone(), w.delay)),
        info,
    ))
    .await;
    if let Some(store) = &broker.store {
        // A persistent session exists durably before the client is told so.
        Box::pin(store.durable(attached.ticket)).await;
    }
    crate::cluster::attached(broker, client_id);
    let mut connack = Packet::ConnAck(ConnAck {
        session_present: attached.session_present,
        code: reason::SUCCESS,
        properties: std::mem::take(&mut accepted.connack),
    });
    let mut out = BytesMut::new();
    if proto::fit(&mut connack, c.version, accepted.limits.max_packet_size) {
        encode(&connack, c.version, &mut out);
    } else {
        info!("closing: the CONNACK does not fit the client's Maximum Packet Size");
    }
    drop(connack);
    if out.is_empty() || io.wr.write_all(&out).await.is_err() {
        broker.detach(&attached.session, attached.conn_id, will.clone());
        return None;
    }
    Some(attached)
}

/// The connection's inbound state, for an accepted client.
fn inbound(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    c: &Connect,
    origin: Arc<ClientInfo>,
    auth: &Authenticated,
) -> Inbound {
    let v = c.version;
    Inbound {
        broker: broker.clone(),
        session: session.clone(),
        version: v,
        plugin_client: broker.plugins().map(|_| {
            Box::new(plugins::client_info(
                &origin,
                v,
                auth.superuser,
                &auth.attributes,
            ))
        }),
        origin,
        aliases: TopicAliasesIn::new(broker.config.topic_alias_maximum),
        control: Vec::new(),
        ticket: 0,
        retained: Vec::new(),
        limiter: PublishLimiter::from_config(&broker.limits).map(Box::new),
        reauth: Reauth::new(c.properties.authentication_method.clone()),
        rules_lane: None,
    }
}
