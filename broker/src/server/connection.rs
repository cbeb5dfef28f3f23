//! One client connection: the CONNECT handshake, then one loop that decodes
//! packets and drives the session, and writes what the session has for the
//! client (`writer::Output`), in the connection's single task.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use midge_protocol::{
    decode, encode, reason, topic, Ack, ConnAck, Connect, Disconnect, Packet, Properties, Publish,
    QoS, SubAck, Subscribe, UnsubAck, Unsubscribe, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::enhanced_auth::{self, ConnectAuth};
use super::handshake::{
    self, connect_timed_out, generate_client_id, read_connect, reason_props, refused, send_connack,
    NoConnect,
};
use super::idle;
use super::limits::{Listener, Refusal, Slot};
use super::span::{self, InConnSpan};
use super::writer::{ClientLimits, Output};
use crate::auth::{AuthDecision, ConnectInfo};
use crate::broker::Broker;
use crate::events::{self, AuthzAction, ConnectFlags, Event, Kind};
use crate::limits::{Exceeded, PublishLimiter};
use crate::message::{ClientInfo, Message};
use crate::plugins;
use crate::router::split_filter;
use crate::session::proto::{self, PubRec, Qos2Arrival, TopicAliasesIn, Violation};
use crate::session::{Delivery, PendingWill, Session, Stage, SubscriptionRecord};
use crate::store::Op;
use midge_plugin::types::{self as pt, HookSet};
use midge_plugin::{BatchItem, BatchVerdict, PublishVerdict};

/// Largest read buffer reservation for a busy connection.
const READ_CHUNK: usize = 64 * 1024;
/// Acks and other control packets a connection may have waiting for its
/// client before the broker stops reading from it: a client that publishes
/// QoS 1 without reading its PUBACKs otherwise grows the queue without bound.
const CONTROL_BACKLOG_MAX: usize = 8192;
/// How long a connection held back by [`CONTROL_BACKLOG_MAX`] may go without
/// its client reading anything before it is closed (without a keep-alive;
/// with one, 1.5 times the keep-alive).
const STALLED_MAX: Duration = Duration::from_secs(60);
/// Most PUBLISHes handed to the on-publish plugins in one batch.
const PUBLISH_BATCH_MAX: usize = 64;

/// What the listener knows about a connection before its CONNECT.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub listener: Listener,
    /// When the CONNECT must have arrived (accept + `limits.connect_timeout`;
    /// a TLS or WebSocket handshake spends from the same budget).
    pub deadline: Instant,
    /// A limit refused the connection at accept: its CONNECT is read and
    /// answered with this refusal, then the connection is closed.
    pub refusal: Option<Refusal>,
    /// The admitted connection's place (`None` when refused), held until
    /// the connection ends.
    pub slot: Option<Slot>,
    /// `cn_as_username` on a TLS listener: the username is the subject CN of
    /// the verified client certificate (`None`: no certificate, or no CN),
    /// whatever CONNECT says.
    pub cert_username: Option<Option<String>>,
}

/// Serves one client, given the two halves of its stream, until it goes away.
pub async fn serve<R, W>(broker: Arc<Broker>, mut rd: R, mut wr: W, mut info: ConnInfo)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Small at first: idle connections should cost little memory.
    let mut buf = BytesMut::with_capacity(256);
    let max_in = broker.config.max_packet_size as usize;
    let peer = info.peer;
    // Boxed: the handshake's state is freed once it is done, keeping the
    // long-lived connection future small (idle connections cost memory).
    let read = read_connect(
        &mut rd,
        &mut wr,
        &mut buf,
        max_in,
        info.deadline,
        &broker.stats,
    );
    let mut connect = match Box::pin(read).await {
        Ok(c) => c,
        Err(NoConnect::TimedOut) => {
            connect_timed_out(&broker, peer, info.listener);
            return;
        }
        Err(NoConnect::Failed) => return,
    };
    if let Some(r) = info.refusal {
        let v = connect.version;
        // debug: a connection storm must not flood the log; the refusals are counted.
        debug!(%peer, listener = info.listener.name(), reason = r.text(), "connection refused");
        refused(&broker, &connect, peer, r.reason_code());
        Box::pin(send_connack(
            &mut rd,
            &mut wr,
            v,
            r.reason_code(),
            reason_props(v, r.text()),
            proto::client_max_packet(&connect.properties),
        ))
        .await;
        return;
    }
    if let Some(name) = info.cert_username {
        // Before authentication: plugins and the auth hook see the CN.
        connect.username = name.map(Into::into);
    }
    // The client id is a span field from the start when the client gave one
    // (span filters such as `[log] trace_clients` match from the first
    // packet); an assigned one is recorded once chosen. The span is held
    // only while the connection is active (super::span).
    let id = (!connect.client_id.is_empty()).then(|| Arc::from(connect.client_id.as_str()));
    // The session runs in a task of its own: this one ends here, and with
    // it everything the handshake needed (what an idle connection keeps is
    // only `run`'s state).
    let slot = info.slot.take();
    let task = run(broker, connect, peer, rd, wr, buf, info.deadline);
    let task = InConnSpan::new(task, id, peer, info.listener.name()).map(move |()| drop(slot));
    // What every connection's task holds, idle or not (docs/BENCHMARKS.md).
    debug!(%peer, future_bytes = std::mem::size_of_val(&task), "connection task");
    tokio::spawn(task);
}

/// How a connection ended.
enum End {
    /// DISCONNECT from the client with this reason (0x04: with will).
    Client { reason: u8 },
    /// We close it, sending DISCONNECT with this reason to a 5.0 client.
    Server { reason: u8, why: &'static str },
    /// Socket closed or failed, or keep alive expired (3.1.1).
    Lost(&'static str),
}

async fn run<R, W>(
    broker: Arc<Broker>,
    c: Box<Connect>,
    peer: SocketAddr,
    mut rd: R,
    mut wr: W,
    mut buf: BytesMut,
    deadline: Instant,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let v = c.version;
    let cfg = &broker.config;
    let fail = |code: u8, text: &'static str| (code, text);

    // Plugins decide first (in chain order), running any enhanced
    // authentication exchange; `Ignore` falls back to the broker's own hook.
    let plugin_auth = match broker.plugins() {
        Some(host) if host.has_hook(HookSet::AUTHENTICATE) => {
            let max_in = cfg.max_packet_size as usize;
            let exchange = enhanced_auth::connect_exchange(
                host,
                &c,
                peer,
                &mut rd,
                &mut wr,
                &mut buf,
                max_in,
                deadline,
                &broker.stats,
            );
            match Box::pin(exchange).await {
                ConnectAuth::Decided(d) => Some(Ok(d)),
                ConnectAuth::Refuse(code, why) => Some(Err((code, why))),
                ConnectAuth::Closed => {
                    debug!("closed during authentication");
                    return;
                }
                ConnectAuth::TimedOut => {
                    broker
                        .stats
                        .connections_refused_connect_timeout
                        .fetch_add(1, Ordering::Relaxed);
                    info!("authentication not finished within the connect timeout");
                    return;
                }
            }
        }
        _ => None,
    };
    let (superuser, attributes, final_auth_data) = match &plugin_auth {
        Some(Ok(pt::AuthDecision::Allow(a))) => {
            (a.superuser, a.attributes.clone(), a.auth_data.clone())
        }
        _ => (false, Vec::new(), None),
    };

    // Validate what the client asks for.
    let mut assigned = None;
    let check: Result<(), (u8, &str)> = (|| {
        let info = ConnectInfo {
            client_id: &c.client_id,
            username: c.username.as_deref(),
            password: c.password.as_ref(),
            peer,
            version: v,
            auth_method: c.properties.authentication_method.as_deref(),
            auth_data: c.properties.authentication_data.as_ref(),
        };
        match plugin_auth {
            Some(Err((code, why))) => return Err(fail(code, why)),
            Some(Ok(pt::AuthDecision::Allow(_))) => {}
            Some(Ok(pt::AuthDecision::Deny(code))) => {
                return Err(fail(code, "refused by an authentication plugin"))
            }
            Some(Ok(pt::AuthDecision::ContinueAuth(_))) => {
                // `connect_exchange` runs every continue-auth to its end.
                return Err(fail(
                    reason::BAD_AUTHENTICATION_METHOD,
                    "enhanced authentication did not finish",
                ));
            }
            // Nobody authenticated it: with anonymous access off, refused
            // whether or not it sent a username (see crate::auth).
            Some(Ok(pt::AuthDecision::Ignore)) | None if !broker.limits.allow_anonymous => {
                broker
                    .stats
                    .connections_refused_anonymous
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(fail(
                    reason::NOT_AUTHORIZED,
                    crate::auth::not_authenticated(c.username.is_some()),
                ));
            }
            Some(Ok(pt::AuthDecision::Ignore)) | None => match broker.auth.authenticate(&info) {
                AuthDecision::Allow { .. } => {}
                AuthDecision::Deny { reason } => return Err(fail(reason, "not authorized")),
                // Multi-step AUTH exchanges arrive with the plugin system.
                AuthDecision::Continue { .. } => {
                    return Err(fail(
                        reason::BAD_AUTHENTICATION_METHOD,
                        "authentication method not supported",
                    ))
                }
            },
        }
        if c.client_id.is_empty() && v == Version::V311 && !c.clean_start {
            return Err(fail(
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                "empty client id needs clean session",
            ));
        }
        if c.client_id.len() > cfg.max_client_id_len
            || crate::session::reserved_client_id(&c.client_id)
        {
            return Err(fail(
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                "client id too long, or reserved for bridges ($bridge/...)",
            ));
        }
        if let Some(w) = &c.will {
            if w.qos as u8 > cfg.max_qos {
                return Err(fail(
                    reason::QOS_NOT_SUPPORTED,
                    "will QoS above the maximum QoS",
                ));
            }
            if w.retain && !cfg.retain_available {
                return Err(fail(
                    reason::RETAIN_NOT_SUPPORTED,
                    "retain is not available",
                ));
            }
            if !topic::valid_name(&w.topic) {
                return Err(fail(reason::TOPIC_NAME_INVALID, "invalid will topic"));
            }
        }
        if v == Version::V311 && cfg.max_keep_alive > 0 && c.keep_alive > cfg.max_keep_alive {
            return Err(fail(
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                "keep alive above the maximum",
            ));
        }
        Ok(())
    })();
    if let Err((code, text)) = check {
        info!(code, reason = text, "connection refused");
        refused(&broker, &c, peer, code);
        let max = proto::client_max_packet(&c.properties);
        let refusal = send_connack(&mut rd, &mut wr, v, code, reason_props(v, text), max);
        Box::pin(refusal).await;
        return;
    }
    let client_id: Arc<str> = if c.client_id.is_empty() {
        let id = generate_client_id();
        assigned = Some(id.clone());
        id.into()
    } else {
        c.client_id.as_str().into()
    };
    span::client_id(&client_id);
    let origin = Arc::new(ClientInfo {
        client_id: client_id.clone(),
        username: c.username.as_deref().map(Arc::from),
        peer,
        cluster: crate::cluster::acks_for(&broker),
    });

    // Keep alive (5.0: the server may impose its own) and session expiry.
    let proto::KeepAlive {
        seconds: keep_alive,
        server: server_keep_alive,
    } = proto::negotiate_keep_alive(v, c.keep_alive, cfg.max_keep_alive);
    let (requested_expiry, expiry) = proto::negotiate_expiry(
        v,
        c.clean_start,
        c.properties.session_expiry_interval,
        cfg.max_session_expiry,
    );
    let client_receive_max = usize::from(c.properties.receive_maximum.unwrap_or(u16::MAX));
    let window = client_receive_max.min(usize::from(cfg.max_inflight));
    let limits = ClientLimits {
        version: v,
        max_packet_size: proto::client_max_packet(&c.properties),
        topic_alias_max: c.properties.topic_alias_maximum.unwrap_or(0),
        window,
        problem_info: c.properties.request_problem_information != Some(0),
    };
    let will = c.will.as_ref().map(|w| {
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
    });

    let info = Arc::new(crate::session::ConnInfo {
        username: origin.username.clone(),
        peer,
        keep_alive,
        clean_start: c.clean_start,
        connected_at_ms: crate::message::now_ms(),
    });
    let claim = crate::cluster::takeover::claim(&broker, &client_id, c.clean_start, expiry);
    if let Err((code, text)) = Box::pin(claim).await {
        info!(code, reason = text, "connection refused");
        refused(&broker, &c, peer, code);
        let max = proto::client_max_packet(&c.properties);
        let refusal = send_connack(&mut rd, &mut wr, v, code, reason_props(v, text), max);
        Box::pin(refusal).await;
        return;
    }
    let attached = Box::pin(broker.attach(
        client_id.clone(),
        expiry,
        v,
        window,
        will.as_ref().map(|w| (w.msg.clone(), w.delay)),
        info,
    ))
    .await;
    if let Some(store) = &broker.store {
        // A persistent session exists durably before the client is told so.
        Box::pin(store.durable(attached.ticket)).await;
    }
    crate::cluster::attached(&broker, &client_id);
    let session = attached.session.clone();
    let conn_id = attached.conn_id;
    let mut kicked = attached.kicked;

    // CONNACK.
    let out = {
        let mut props = Properties::default();
        if v == Version::V5 {
            props.assigned_client_identifier = assigned.map(Into::into);
            props.server_keep_alive = server_keep_alive;
            if requested_expiry != expiry {
                props.session_expiry_interval = Some(expiry);
            }
            props.receive_maximum = Some(cfg.receive_maximum);
            if cfg.max_qos < 2 {
                props.maximum_qos = Some(cfg.max_qos);
            }
            props.retain_available = Some(u8::from(cfg.retain_available));
            props.maximum_packet_size = Some(cfg.max_packet_size);
            props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            props.wildcard_subscription_available = Some(u8::from(cfg.wildcard_subscriptions));
            props.subscription_identifier_available = Some(u8::from(cfg.subscription_identifiers));
            props.shared_subscription_available = Some(u8::from(cfg.shared_subscriptions));
            // Enhanced authentication: the method, and any final data.
            props.authentication_method = c.properties.authentication_method.clone();
            if props.authentication_method.is_some() {
                props.authentication_data = final_auth_data.map(Into::into);
            }
        }
        let mut connack = Packet::ConnAck(ConnAck {
            session_present: attached.session_present,
            code: reason::SUCCESS,
            properties: props,
        });
        let mut out = BytesMut::new();
        if proto::fit(&mut connack, v, limits.max_packet_size) {
            encode(&connack, v, &mut out);
        } else {
            info!("closing: the CONNACK does not fit the client's Maximum Packet Size");
        }
        out
    };
    if out.is_empty() || wr.write_all(&out).await.is_err() {
        broker.detach(&session, conn_id, will);
        return;
    }
    drop(out);
    info!(version = ?v, clean_start = c.clean_start, keep_alive, session_present = attached.session_present, "connected");
    // Keep only what the events need; the CONNECT itself is dropped here.
    let meta = ConnectFlags {
        version: c.version,
        keep_alive: c.keep_alive,
        clean_start: c.clean_start,
    };
    let username = origin.username.clone();
    let anonymous = c.username.is_none();
    let auth_method = c.properties.authentication_method.clone();
    drop(c);
    let who = || events::Client {
        client_id: &client_id,
        username: username.as_deref(),
        peer,
    };
    broker.emit(Event::Connected {
        client: who(),
        connect: meta,
        expiry,
        anonymous,
        superuser,
        attributes: &attributes,
        connected_at_ms: crate::message::now_ms(),
    });

    let mut output = Output::new(limits);
    // Collect from the session on the first pass (resends after a reconnect).
    let mut collect = true;
    let mut write_failed = false;
    // Control packets waiting in the session (see CONTROL_BACKLOG_MAX).
    let mut backlog = 0usize;
    // Held back for a deep action lane until the deadline (see rules::queue).
    let mut rules_hold: Option<(usize, Instant)> = None;

    let mut reader = Reader {
        broker: broker.clone(),
        session: session.clone(),
        version: v,
        origin: origin.clone(),
        plugin_client: broker
            .plugins()
            .map(|_| Box::new(plugins::client_info(&origin, v, superuser, &attributes))),
        aliases: TopicAliasesIn::new(cfg.topic_alias_maximum),
        control: Vec::new(),
        ticket: 0,
        retained: Vec::new(),
        limiter: PublishLimiter::from_config(&broker.limits).map(Box::new),
        auth_method,
        reauth: None,
        reauth_by: None,
        rules_lane: None,
    };
    // Not needed from here on: dropped, so the connection's future does
    // not keep room for them across its awaits.
    drop((plugin_auth, attributes));
    let keep_alive = proto::keep_alive_deadline(keep_alive);
    let max_in = cfg.max_packet_size as usize;

    // The CONNECT's buffer goes once it is consumed (see super::idle).
    if buf.is_empty() {
        buf = BytesMut::new();
    }
    let mut chunk = idle::READ_MIN;
    // The last wake-up was the idle deadline: release what is held, and
    // count the keep-alive from the last real activity.
    let mut quiet = false;
    let mut active = Instant::now();
    // PUBLISHes read together, for the on-publish plugins (see publish_batch).
    let batch_publishes = broker
        .plugins()
        .is_some_and(|h| h.has_hook(HookSet::ON_PUBLISH));
    let mut publishes: Vec<Publish> = Vec::new();
    let end = 'conn: loop {
        loop {
            // The decode result is a temporary of this `let` only: kept as the
            // scrutinee of a match that awaits, it would reserve a packet's
            // worth of space in every connection's future.
            let p = match decode(&mut buf, Some(v), max_in) {
                Ok(Some(p)) => received(p),
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "protocol violation");
                    if e.reason_code() == reason::PACKET_TOO_LARGE {
                        broker
                            .stats
                            .limit_packet_too_large
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    // The publishes before the bad packet are handled first.
                    if !publishes.is_empty() {
                        if let Some(end) = Box::pin(reader.publish_batch(&mut publishes)).await {
                            break 'conn end;
                        }
                    }
                    break 'conn End::Server {
                        reason: e.reason_code(),
                        why: "protocol violation",
                    };
                }
            };
            // With on-publish plugins, consecutive PUBLISHes are handed to
            // them together (one call per plugin, not per message).
            if batch_publishes {
                if let Packet::Publish(p) = p {
                    publishes.push(p);
                    if publishes.len() >= PUBLISH_BATCH_MAX {
                        if let Some(end) = Box::pin(reader.publish_batch(&mut publishes)).await {
                            break 'conn end;
                        }
                    }
                    continue;
                }
                if !publishes.is_empty() {
                    if let Some(end) = Box::pin(reader.publish_batch(&mut publishes)).await {
                        break 'conn end;
                    }
                }
            }
            // Without plugins nothing in `handle` awaits: poll it once in
            // place so its state never enlarges the connection's future
            // (idle connections stay small). With plugins, box it.
            let end = if broker.plugins().is_some() {
                Box::pin(reader.handle(p)).await
            } else {
                reader.handle(p).now_or_never().unwrap_or(Some(End::Server {
                    reason: reason::IMPLEMENTATION_SPECIFIC_ERROR,
                    why: "packet handling unexpectedly suspended",
                }))
            };
            if let Some(end) = end {
                break 'conn end;
            }
        }
        if !publishes.is_empty() {
            if let Some(end) = Box::pin(reader.publish_batch(&mut publishes)).await {
                break 'conn end;
            }
        }
        let mut flushed = None;
        if reader.ticket != 0 || !reader.control.is_empty() || !reader.retained.is_empty() {
            flushed = Box::pin(reader.flush_control()).await;
            collect = true;
        }
        backlog = match flushed {
            Some(n) => n,
            // Held back: read again once the client has taken its acks.
            None if backlog >= CONTROL_BACKLOG_MAX => session.state.lock().control.len(),
            None => backlog,
        };
        // Outputs of this client's publishes wait in a deep action lane:
        // read no more until it drains, for at most HOLD_MAX.
        if let Some(lane) = reader.rules_lane.take() {
            if rules_hold.is_none() && broker.rules.lanes.should_hold(lane) {
                rules_hold = Some((lane, Instant::now() + crate::rules::queue::HOLD_MAX));
            }
        }
        let reading = backlog < CONTROL_BACKLOG_MAX && rules_hold.is_none();
        if collect && !output.pending() {
            // A full batch: take the rest once it is written.
            let (ticket, more) = output.collect(&session);
            collect = more;
            if ticket != 0 {
                if let Some(store) = &broker.store {
                    Box::pin(store.durable(ticket)).await;
                }
            }
            output.encode(&broker, &session);
        }
        // Buffers an idle connection does not need go (super::idle).
        let q = std::mem::take(&mut quiet);
        if q {
            span::release();
        } else {
            active = Instant::now();
        }
        let held = !output.pending()
            && (output.release(&session, q)
                | idle::vec(&mut reader.control, q)
                | idle::vec(&mut reader.retained, q)
                | idle::vec(&mut publishes, q)
                | idle::read_buf(&mut buf, &mut chunk, q));
        // Busy connections grow the read buffer (up to READ_CHUNK) each
        // time a read fills it.
        if buf.capacity() - buf.len() < chunk / 2 {
            buf.reserve(chunk);
        }
        let spare = buf.capacity() - buf.len();
        // The read waits at most until the keep-alive, a pending
        // re-authentication or (holding buffers, or after activity: the
        // span goes too) the idle deadline.
        let reauth_by = reader.reauth_by;
        let ka_by = keep_alive.map(|ka| active + ka);
        let release = held || !q;
        let until = [
            ka_by,
            reauth_by,
            release.then(|| Instant::now() + idle::RELEASE_AFTER),
        ]
        .into_iter()
        .flatten()
        .min();
        let read = async {
            match until {
                Some(t) => tokio::time::timeout_at(t, rd.read_buf(&mut buf)).await.ok(),
                None => Some(rd.read_buf(&mut buf).await),
            }
        };
        tokio::select! {
            r = read, if reading => match r {
                None if reauth_by.is_some_and(|t| Instant::now() >= t) => {
                    info!("re-authentication not completed within connect_timeout");
                    break End::Server { reason: reason::NOT_AUTHORIZED, why: "re-authentication not completed in time" };
                }
                None if ka_by.is_none_or(|t| Instant::now() < t) => quiet = true,
                None => break End::Server { reason: reason::KEEP_ALIVE_TIMEOUT, why: "keep alive timeout" },
                Some(Ok(0)) => break End::Lost("closed by peer"),
                Some(Ok(n)) => {
                    broker.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    if n == spare {
                        chunk = (chunk * 2).min(READ_CHUNK);
                    }
                }
                Some(Err(_)) => break End::Lost("read error"),
            },
            w = wr.write(output.unwritten()), if output.pending() => match w {
                Ok(n) if n > 0 => output.advance(&broker, n),
                _ => {
                    write_failed = true;
                    break End::Lost("write failed");
                }
            },
            // Deliveries, acks or a freed inflight slot for this client.
            _ = session.notify.notified(), if !output.pending() => collect = true,
            // Not reading while the client leaves its acks unread; every
            // write that makes progress starts this wait again.
            // Boxed: its timer and notification would otherwise enlarge
            // every connection's future, held or not.
            _ = async {
                if let Some((lane, by)) = rules_hold {
                    Box::pin(broker.rules.lanes.space(lane, by)).await;
                }
            }, if rules_hold.is_some() => rules_hold = None,
            _ = tokio::time::sleep(keep_alive.unwrap_or(STALLED_MAX)), if !reading && rules_hold.is_none() => {
                warn!(backlog, "client does not read its acknowledgements; closing");
                break End::Server { reason: reason::KEEP_ALIVE_TIMEOUT, why: "client stopped reading its acknowledgements" };
            }
            k = &mut kicked => {
                let reason = k.unwrap_or(reason::SESSION_TAKEN_OVER);
                break End::Server { reason, why: if reason == reason::SESSION_TAKEN_OVER { "session taken over" } else { "closed by the server" } };
            }
        }
    };

    Box::pin(reader.flush_control()).await;
    let disconnect_reason = match &end {
        End::Client { .. } => "normal",
        End::Server { reason: r, .. } if *r == reason::SESSION_TAKEN_OVER => "takenover",
        End::Server { reason: r, .. } if *r == reason::KEEP_ALIVE_TIMEOUT => "keepalive_timeout",
        End::Server { reason: r, .. }
            if *r == reason::SERVER_SHUTTING_DOWN || *r == reason::ADMINISTRATIVE_ACTION =>
        {
            "kicked"
        }
        End::Server { .. } => "protocol_error",
        End::Lost(_) => "sock_closed",
    };
    let (plugin_reason, description) = match &end {
        End::Client { reason } => (Some(*reason), "disconnected by the client"),
        End::Server { reason, why } => (Some(*reason), *why),
        End::Lost(why) => (None, *why),
    };
    // The server ends it: a lingering close, so that a client still writing
    // reads why (see handshake::linger).
    let lingering = matches!(end, End::Server { .. });
    let (last, will) = match end {
        End::Client { reason } => {
            let with_will = reason == reason::DISCONNECT_WITH_WILL;
            info!(with_will, "disconnected");
            (None, if with_will { will } else { None })
        }
        End::Server { reason, why } => {
            info!(reason, why, "closing connection");
            let last = (v == Version::V5).then(|| {
                Packet::Disconnect(Disconnect {
                    reason,
                    properties: Properties::default(),
                })
            });
            (last, will)
        }
        End::Lost(why) => {
            info!(why, "connection lost");
            (None, will)
        }
    };
    // What is still unwritten, the pending acks and the last packet.
    let shut = !write_failed && {
        output.finish(&broker, &session, last);
        Box::pin(handshake::shut(&mut wr, output.unwritten())).await
    };
    broker.detach(&session, conn_id, will);
    broker.emit(Event::Disconnected {
        client: who(),
        connect: meta,
        expiry,
        reason: disconnect_reason,
        code: plugin_reason,
        description,
        disconnected_at_ms: crate::message::now_ms(),
    });
    if shut && lingering {
        Box::pin(handshake::linger(&mut rd)).await;
    }
}

/// Logs a received packet (per-client trace: `[log] trace_clients`). A plain
/// fn that takes the packet by value: borrowing it in the connection loop
/// would keep a packet's worth of space in every connection's future.
fn received(p: Packet) -> Packet {
    debug!(packet = ?p, "received");
    p
}

/// Ends the connection with 0x82.
fn protocol_violation(why: &'static str) -> End {
    broken(Violation::protocol(why))
}

/// Ends the connection for a rule the client broke.
fn broken(v: Violation) -> End {
    End::Server {
        reason: v.reason,
        why: v.why,
    }
}

/// Per-connection inbound state.
struct Reader {
    broker: Arc<Broker>,
    session: Arc<Session>,
    version: Version,
    origin: Arc<ClientInfo>,
    /// The client as plugins see it (only when plugins are loaded).
    plugin_client: Option<Box<pt::ClientInfo>>,
    /// Inbound topic aliases.
    aliases: TopicAliasesIn,
    /// Acks produced while handling a batch of packets, handed to the writer at once.
    control: Vec<Packet>,
    /// Highest store ticket the acks in `control` wait for (0: none).
    ticket: u64,
    /// Retained messages for new subscriptions, queued after their SUBACK.
    retained: Vec<Delivery>,
    /// `max_publish_rate` / `max_publish_bytes_rate`, when configured.
    limiter: Option<Box<PublishLimiter>>,
    /// The Authentication Method of CONNECT (5.0 enhanced authentication);
    /// re-authentication uses the same one.
    auth_method: Option<midge_protocol::ByteStr>,
    /// A re-authentication in progress: the plugin that answered
    /// continue-auth and the state it asked to keep.
    reauth: Option<Box<(String, Vec<u8>)>>,
    /// When the client must have answered the pending re-authentication
    /// challenge (`[limits] connect_timeout` after it was sent); past it the
    /// connection is closed with 0x87.
    reauth_by: Option<Instant>,
    /// The action lane this batch's publishes queued rule outputs on, if
    /// any: the connection holds its client back while it is deep.
    rules_lane: Option<usize>,
}

impl Reader {
    /// Hands the batch's acks to the session's control queue, once the store
    /// has what they acknowledge; then queues retained messages of new
    /// subscriptions. No notify for the acks: the caller is the connection
    /// that writes them, and it collects right after (or `Output::finish`
    /// does, on close).
    ///
    /// Returns how many control packets the session holds once the batch's
    /// are added (`None` when the batch had none).
    async fn flush_control(&mut self) -> Option<usize> {
        crate::cluster::settled(&self.origin).await;
        if self.ticket != 0 {
            if let Some(store) = &self.broker.store {
                store.durable(self.ticket).await;
            }
            self.ticket = 0;
        }
        let mut backlog = None;
        if !self.control.is_empty() {
            let mut st = self.session.state.lock();
            st.control.extend(self.control.drain(..));
            backlog = Some(st.control.len());
        }
        if !self.retained.is_empty() {
            let limits = self.broker.queue_limits();
            for d in self.retained.drain(..) {
                let _ = self.session.enqueue(d, limits);
            }
        }
        backlog
    }

    fn wait_for(&mut self, ticket: u64) {
        self.ticket = self.ticket.max(ticket);
    }

    /// The `Acked` event for a message the client acknowledged.
    fn acked(&self, msg: &Message, qos: QoS, packet_id: u16) {
        self.broker.emit(Event::Acked {
            receiver: self.client(),
            msg,
            qos,
            packet_id,
        });
    }

    /// The client, as events name it.
    fn client(&self) -> events::Client<'_> {
        events::Client {
            client_id: &self.origin.client_id,
            username: self.origin.username.as_deref(),
            peer: self.origin.peer,
        }
    }

    fn protocol_error(&self, why: &'static str) -> Option<End> {
        Some(protocol_violation(why))
    }

    /// Handles one packet; `Some(End)` closes the connection.
    async fn handle(&mut self, p: Packet) -> Option<End> {
        match p {
            Packet::Publish(p) => self.publish(p).await,
            Packet::PubAck(a) => {
                let mut st = self.session.state.lock();
                if let Some(done) = proto::puback(&mut st.inflight, a.packet_id) {
                    // A lost delete only means a duplicate QoS 1 resend: no wait.
                    self.session.forget(done.delivery.seq);
                    drop(st);
                    self.session.notify.notify_one();
                    self.acked(&done.delivery.msg, done.delivery.qos, a.packet_id);
                }
                None
            }
            Packet::PubRec(a) => {
                let mut st = self.session.state.lock();
                match proto::pubrec(&mut st.inflight, a.packet_id, a.reason) {
                    PubRec::Refused { seq } => {
                        self.session.forget(seq);
                        drop(st);
                        self.session.notify.notify_one();
                    }
                    PubRec::Release { seq } => {
                        // PUBREL only once "released" is durable: after a
                        // restart we resend PUBREL, never the PUBLISH again.
                        let t = if seq != 0 {
                            let c = self.session.client_id.clone();
                            self.session.store_op(Op::Inflight(
                                c,
                                seq,
                                a.packet_id,
                                Stage::Released,
                            ))
                        } else {
                            0
                        };
                        drop(st);
                        self.wait_for(t);
                        self.control.push(Packet::PubRel(Ack::new(a.packet_id, 0)));
                    }
                    PubRec::Unknown => {
                        drop(st);
                        self.control.push(Packet::PubRel(Ack::new(
                            a.packet_id,
                            reason::PACKET_IDENTIFIER_NOT_FOUND,
                        )));
                    }
                }
                None
            }
            Packet::PubComp(a) => {
                let mut st = self.session.state.lock();
                if let Some(done) = proto::pubcomp(&mut st.inflight, a.packet_id) {
                    self.session.forget(done.delivery.seq);
                    drop(st);
                    self.session.notify.notify_one();
                    self.acked(&done.delivery.msg, done.delivery.qos, a.packet_id);
                }
                None
            }
            Packet::PubRel(a) => {
                let known = {
                    let mut st = self.session.state.lock();
                    let known = st.incoming_qos2.remove(&a.packet_id);
                    if known && st.persist {
                        // PUBCOMP frees the id for reuse: the release must be durable first.
                        let t = self
                            .session
                            .store_op(Op::DelQos2(self.session.client_id.clone(), a.packet_id));
                        drop(st);
                        self.wait_for(t);
                    }
                    known
                };
                let code = proto::pubcomp_code(known, self.version);
                self.control
                    .push(Packet::PubComp(Ack::new(a.packet_id, code)));
                None
            }
            Packet::Subscribe(s) => self.subscribe(s).await,
            Packet::Unsubscribe(u) => self.unsubscribe(u),
            Packet::PingReq => {
                self.control.push(Packet::PingResp);
                None
            }
            Packet::Disconnect(d) => self.disconnect(d),
            Packet::Connect(_) => self.protocol_error("second CONNECT"),
            Packet::Auth(a) => self.auth(a).await,
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.protocol_error("server-only packet from a client")
            }
        }
    }

    /// AUTH after CONNACK: re-authentication (MQTT 5.0 section 4.12.1). 0x19
    /// starts an exchange with the whole authenticate chain, 0x18 continues
    /// it with the plugin that asked; the session keeps working meanwhile.
    /// Success answers AUTH 0x00; a refusal closes with DISCONNECT and the
    /// plugin's reason code.
    async fn auth(&mut self, a: midge_protocol::Auth) -> Option<End> {
        let Some(method) = self.auth_method.clone() else {
            return self
                .protocol_error("AUTH from a client that did not use enhanced authentication");
        };
        if a.properties.authentication_method.as_ref() != Some(&method) {
            return Some(End::Server {
                reason: reason::BAD_AUTHENTICATION_METHOD,
                why: "AUTH with another authentication method",
            });
        }
        self.reauth_by = None;
        let step = match (a.reason, self.reauth.take().map(|b| *b)) {
            (reason::RE_AUTHENTICATE, None) => None,
            (reason::CONTINUE_AUTHENTICATION, Some(step)) => Some(step),
            _ => return self.protocol_error("AUTH out of sequence"),
        };
        let req = pt::AuthRequest {
            client_id: self.origin.client_id.to_string(),
            username: self.origin.username.as_deref().map(str::to_string),
            password: None,
            peer_address: self.origin.peer.to_string(),
            protocol_version: plugins::version_to(self.version),
            auth_method: Some(method.to_string()),
            auth_data: a
                .properties
                .authentication_data
                .as_ref()
                .map(|d| d.to_vec()),
            auth_state: step.as_ref().map(|(_, state)| state.clone()),
        };
        let host = self.broker.plugins();
        let (decision, by) = match (host, step) {
            (Some(host), Some((plugin, _))) => {
                let d = Box::pin(host.authenticate_continue(&plugin, &req))
                    .await
                    .decision;
                let d = match d {
                    pt::AuthDecision::Ignore => pt::AuthDecision::Deny(reason::NOT_AUTHORIZED),
                    d => d,
                };
                (d, Some(plugin))
            }
            (Some(host), None) if host.has_hook(HookSet::AUTHENTICATE) => {
                let (out, by) = Box::pin(host.authenticate_named(&req)).await;
                (out.decision, by)
            }
            _ => (pt::AuthDecision::Ignore, None),
        };
        match decision {
            pt::AuthDecision::Allow(allow) => {
                if let Some(client) = &mut self.plugin_client {
                    client.superuser = allow.superuser;
                    client.attributes = allow.attributes;
                }
                info!(plugin = by.as_deref(), "re-authenticated");
                self.control.push(enhanced_auth::auth_packet(
                    reason::SUCCESS,
                    &method,
                    allow.auth_data,
                ));
                None
            }
            pt::AuthDecision::Deny(code) => {
                let code = enhanced_auth::refusal_code(by.as_deref(), code);
                info!(plugin = by.as_deref(), code, "re-authentication refused");
                Some(End::Server {
                    reason: code,
                    why: "re-authentication refused",
                })
            }
            pt::AuthDecision::ContinueAuth(cont) => match by {
                Some(plugin) => {
                    self.control.push(enhanced_auth::auth_packet(
                        reason::CONTINUE_AUTHENTICATION,
                        &method,
                        Some(cont.data),
                    ));
                    self.reauth = Some(Box::new((plugin, cont.state)));
                    let within = u64::from(self.broker.limits.connect_timeout.max(1));
                    self.reauth_by = Some(Instant::now() + Duration::from_secs(within));
                    None
                }
                None => Some(End::Server {
                    reason: reason::BAD_AUTHENTICATION_METHOD,
                    why: "re-authentication continued by no plugin",
                }),
            },
            pt::AuthDecision::Ignore => {
                let data = a.properties.authentication_data.as_ref();
                let info = ConnectInfo {
                    client_id: &self.origin.client_id,
                    username: self.origin.username.as_deref(),
                    password: None,
                    peer: self.origin.peer,
                    version: self.version,
                    auth_method: Some(&method),
                    auth_data: data,
                };
                match self.broker.auth.authenticate(&info) {
                    AuthDecision::Allow { .. } => {
                        self.control.push(enhanced_auth::auth_packet(
                            reason::SUCCESS,
                            &method,
                            None,
                        ));
                        None
                    }
                    AuthDecision::Deny { reason } => Some(End::Server {
                        reason,
                        why: "re-authentication refused",
                    }),
                    AuthDecision::Continue { .. } => Some(End::Server {
                        reason: reason::BAD_AUTHENTICATION_METHOD,
                        why: "authentication method not supported",
                    }),
                }
            }
        }
    }

    /// Asks the authorize plugins (unless the client is a superuser); without
    /// plugins everything is allowed. Emits `client_check_authz_complete`
    /// when a rule listens for it.
    async fn authorized(&self, action: pt::Action, topic: &str, qos: QoS, retain: bool) -> bool {
        let (allow, source) = match (self.broker.plugins(), &self.plugin_client) {
            (Some(host), Some(client))
                if !client.superuser && host.has_hook(HookSet::AUTHORIZE) =>
            {
                let req = pt::AuthzRequest {
                    client: (**client).clone(),
                    action,
                    topic: topic.to_string(),
                    qos: plugins::qos_to(qos),
                    retain,
                };
                match Box::pin(host.authorize(&req)).await.decision {
                    pt::AuthzDecision::Deny => (false, "plugin"),
                    pt::AuthzDecision::Allow => (true, "plugin"),
                    pt::AuthzDecision::Ignore => (true, "default"),
                }
            }
            (Some(_), Some(client)) if client.superuser => (true, "superuser"),
            _ => (true, "default"),
        };
        self.broker.emit(Event::AuthzChecked {
            client: self.client(),
            action: match action {
                pt::Action::Publish => AuthzAction::Publish,
                pt::Action::Subscribe => AuthzAction::Subscribe,
            },
            topic,
            allowed: allow,
            source,
        });
        allow
    }

    /// Runs the on-publish plugins: `Ok(Some(msg))` to route, `Ok(None)` to
    /// drop silently, `Err(code)` to refuse.
    async fn transform(&self, msg: Message) -> Result<Option<Message>, u8> {
        let Some(host) = self.broker.plugins() else {
            return Ok(Some(msg));
        };
        if !host.wants_publish(&msg.topic) {
            return Ok(Some(msg));
        }
        let out =
            Box::pin(host.on_publish(&plugins::to_plugin(&msg), self.plugin_client.as_deref()))
                .await;
        match out.decision {
            PublishVerdict::Pass => Ok(Some(msg)),
            PublishVerdict::Modified(m) => Ok(Some(plugins::from_plugin(m, msg.origin.clone()))),
            PublishVerdict::Drop => Ok(None),
            PublishVerdict::Deny(code) => Err(code),
        }
    }

    async fn publish(&mut self, p: Publish) -> Option<End> {
        let p = match self.publish_checks(p) {
            Ok(p) => p,
            Err(end) => return Some(end),
        };
        // Plugins (authorize, then on-publish) decide first; a refused message
        // is acknowledged with the reason (5.0) or silently dropped (3.1.1).
        let mut code = reason::SUCCESS;
        let mut routed = None;
        let plugins = self.broker.plugins().is_some();
        if plugins || self.broker.wants(Kind::AUTHZ_CHECKED) {
            if !self
                .authorized(pt::Action::Publish, &p.topic, p.qos, p.retain)
                .await
            {
                code = reason::NOT_AUTHORIZED;
            } else if plugins {
                match self
                    .transform(Message::from_publish(p.clone(), Some(self.origin.clone())))
                    .await
                {
                    Ok(m) => routed = Some(m),
                    Err(c) => code = c,
                }
            }
        }
        self.publish_finish(p, code, routed)
    }

    /// Consecutive PUBLISH packets read in one go, with on-publish plugins
    /// loaded: each is checked and authorized in order, then the plugins see
    /// all of them in one `on-publish-batch` call per plugin, then each is
    /// routed and acknowledged in order. A packet that ends the connection
    /// ends it after the ones before it are handled.
    async fn publish_batch(&mut self, batch: &mut Vec<Publish>) -> Option<End> {
        if batch.len() == 1 {
            let p = batch.pop()?;
            return self.publish(p).await;
        }
        let Some(host) = self.broker.plugins().cloned() else {
            for p in batch.drain(..) {
                if let Some(end) = self.publish(p).await {
                    return Some(end);
                }
            }
            return None;
        };
        let mut ready: Vec<(Publish, u8)> = Vec::with_capacity(batch.len());
        let mut end = None;
        // Without an authorize plugin or a rule on the authorization event,
        // every publish is allowed: nothing to ask per message.
        let ask = host.has_hook(HookSet::AUTHORIZE) || self.broker.wants(Kind::AUTHZ_CHECKED);
        for p in batch.drain(..) {
            let p = match self.publish_checks(p) {
                Ok(p) => p,
                Err(e) => {
                    end = Some(e);
                    break;
                }
            };
            let allowed = !ask
                || self
                    .authorized(pt::Action::Publish, &p.topic, p.qos, p.retain)
                    .await;
            let code = if allowed {
                reason::SUCCESS
            } else {
                reason::NOT_AUTHORIZED
            };
            ready.push((p, code));
        }
        batch.clear();
        // The messages some plugin wants, in order, with their index in
        // `ready` (v5 properties converted only for messages that have any).
        let mut picked = Vec::new();
        let mut props = Vec::new();
        for (i, (p, code)) in ready.iter().enumerate() {
            if *code == reason::SUCCESS && host.wants_publish(&p.topic) {
                picked.push(i);
                props.push(plugins::plugin_properties(&p.properties));
            }
        }
        let mut outcomes = Vec::new();
        if !picked.is_empty() {
            let items: Vec<BatchItem> = picked
                .iter()
                .zip(&props)
                .map(|(&i, props)| plugins::batch_item(&ready[i].0, props.as_ref()))
                .collect();
            outcomes = Box::pin(host.on_publish_batch(&items, self.plugin_client.as_deref())).await;
        }
        // The outcomes of the picked messages, in order, met as the loop
        // below reaches their index.
        let mut outcomes = picked.into_iter().zip(outcomes).peekable();
        // Messages changed alike share their properties: converted once.
        let mut converted = plugins::PropertiesCache::default();
        for (i, (p, mut code)) in ready.into_iter().enumerate() {
            let verdict = outcomes.next_if(|(k, _)| *k == i).map(|(_, o)| o.decision);
            let routed = match verdict {
                None | Some(BatchVerdict::Pass) => None,
                Some(BatchVerdict::Modified(c)) => Some(Some(plugins::changed_message(
                    &p,
                    c,
                    &mut converted,
                    Some(self.origin.clone()),
                ))),
                Some(BatchVerdict::Drop) => Some(None),
                Some(BatchVerdict::Deny(c)) => {
                    code = c;
                    None
                }
            };
            if let Some(e) = self.publish_finish(p, code, routed) {
                return Some(e);
            }
        }
        end
    }

    /// The checks of a PUBLISH before anyone decides on it: rate limits,
    /// maximum QoS, retain, topic alias. `Err`: the connection ends.
    fn publish_checks(&mut self, mut p: Publish) -> Result<Publish, End> {
        self.broker.stats.publish_received[p.qos as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(l) = &mut self.limiter {
            if let Err(e) = l.check(p.payload.len()) {
                let stats = &self.broker.stats;
                let (counter, why) = match e {
                    Exceeded::Messages => {
                        (&stats.limit_publish_rate, "publish rate limit exceeded")
                    }
                    Exceeded::Bytes => (
                        &stats.limit_publish_bytes_rate,
                        "publish byte-rate limit exceeded",
                    ),
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(client_id = %self.origin.client_id, why, "disconnecting");
                return Err(End::Server {
                    reason: e.reason(),
                    why,
                });
            }
        }
        let cfg = &self.broker.config;
        if p.qos as u8 > cfg.max_qos {
            return Err(End::Server {
                reason: reason::QOS_NOT_SUPPORTED,
                why: "QoS above the maximum QoS",
            });
        }
        if p.retain && !cfg.retain_available {
            return Err(End::Server {
                reason: reason::RETAIN_NOT_SUPPORTED,
                why: "retain is not available",
            });
        }
        proto::client_publish(&p.properties).map_err(broken)?;
        self.aliases
            .resolve(&mut p.topic, p.properties.topic_alias)
            .map_err(broken)?;
        Ok(p)
    }

    /// Routes (unless refused) and acknowledges a checked PUBLISH. `code`:
    /// success or why it was refused; `routed`: what on-publish made of it
    /// (`None`: route it as it is; `Some(None)`: dropped).
    fn publish_finish(
        &mut self,
        p: Publish,
        code: u8,
        routed: Option<Option<Message>>,
    ) -> Option<End> {
        let cfg = &self.broker.config;
        let packet_id = p.packet_id;
        let ack_code = proto::publish_ack_code(code, self.version);
        let route = |broker: &Broker,
                     p: Publish,
                     origin: &Arc<ClientInfo>,
                     routed: Option<Option<Message>>| {
            if code != reason::SUCCESS {
                return (0, None);
            }
            match routed {
                Some(Some(m)) => broker.publish_from_client(Arc::new(m)),
                Some(None) => (0, None),
                None => broker
                    .publish_from_client(Arc::new(Message::from_publish(p, Some(origin.clone())))),
            }
        };
        match p.qos {
            QoS::AtMostOnce => {
                let (_, lane) = route(&self.broker, p, &self.origin, routed);
                self.rules_lane = self.rules_lane.or(lane);
            }
            QoS::AtLeastOnce => {
                let (t, lane) = route(&self.broker, p, &self.origin, routed);
                self.rules_lane = self.rules_lane.or(lane);
                self.wait_for(t);
                self.control
                    .push(Packet::PubAck(Ack::new(packet_id, ack_code)));
            }
            QoS::ExactlyOnce => {
                let arrival = {
                    let mut st = self.session.state.lock();
                    let arrival =
                        proto::qos2_arrived(&mut st.incoming_qos2, packet_id, cfg.receive_maximum);
                    if arrival == Qos2Arrival::Fresh && st.persist && code == reason::SUCCESS {
                        let t = self
                            .session
                            .store_op(Op::PutQos2(self.session.client_id.clone(), packet_id));
                        self.ticket = self.ticket.max(t);
                    }
                    arrival
                };
                match arrival {
                    Qos2Arrival::OverReceiveMaximum => {
                        self.broker
                            .stats
                            .limit_receive_maximum
                            .fetch_add(1, Ordering::Relaxed);
                        return Some(End::Server {
                            reason: reason::RECEIVE_MAXIMUM_EXCEEDED,
                            why: "receive maximum exceeded",
                        });
                    }
                    Qos2Arrival::Fresh if code != reason::SUCCESS => {
                        // Refused: forget the id again, nothing awaits a PUBREL.
                        self.session.state.lock().incoming_qos2.remove(&packet_id);
                    }
                    Qos2Arrival::Fresh => {
                        let (t, lane) = route(&self.broker, p, &self.origin, routed);
                        self.rules_lane = self.rules_lane.or(lane);
                        self.wait_for(t);
                    }
                    Qos2Arrival::Duplicate => {} // a resend before PUBREL: already routed once
                }
                self.control
                    .push(Packet::PubRec(Ack::new(packet_id, ack_code)));
            }
        }
        None
    }

    async fn subscribe(&mut self, s: Subscribe) -> Option<End> {
        let cfg = &self.broker.config;
        let sub_id = s.properties.subscription_identifiers.first().copied();
        if sub_id.is_some() && !cfg.subscription_identifiers {
            return Some(End::Server {
                reason: reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                why: "subscription identifiers are not supported",
            });
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained: Vec<Delivery> = Vec::new();
        for (filter, opts) in &s.filters {
            let (group, f) = split_filter(filter);
            if group.is_some() && opts.no_local {
                return self.protocol_error("no local on a shared subscription");
            }
            let refuse = if !self
                .authorized(pt::Action::Subscribe, filter, opts.qos, false)
                .await
            {
                Some(reason::NOT_AUTHORIZED)
            } else if self.over_subscription_limit(filter) {
                self.broker
                    .stats
                    .limit_subscriptions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(reason::QUOTA_EXCEEDED)
            } else if group.is_some() && !cfg.shared_subscriptions {
                Some(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
            } else if !cfg.wildcard_subscriptions && f.contains(['+', '#']) {
                Some(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
            } else {
                None
            };
            if let Some(code) = refuse {
                codes.push(match self.version {
                    Version::V5 => code,
                    Version::V311 => reason::v311::SUBACK_FAILURE,
                });
                continue;
            }
            let granted = QoS::from_u8((*opts as midge_protocol::SubOptions).qos as u8)
                .unwrap_or(QoS::AtMostOnce)
                .min(QoS::from_u8(cfg.max_qos).unwrap_or(QoS::ExactlyOnce));
            let mut opts = *opts;
            opts.qos = granted;
            let (existed, t) = self.broker.subscribe(
                &self.session,
                filter,
                SubscriptionRecord { opts, id: sub_id },
            );
            self.ticket = self.ticket.max(t);
            codes.push(granted as u8);
            self.broker.emit(Event::Subscribed {
                client: self.client(),
                filter,
                qos: granted,
            });
            let send_retained = group.is_none()
                && (opts.retain_handling == 0 || (opts.retain_handling == 1 && !existed));
            if send_retained && cfg.retain_available {
                for m in self.broker.retained.matching(f) {
                    retained.push(Delivery {
                        qos: granted.min(m.qos),
                        msg: m,
                        retain: true,
                        sub_ids: sub_id.into_iter().collect(),
                        shared: None,
                        seq: 0,
                    });
                }
            }
        }
        // SUBACK goes out before any retained message: they are queued
        // after the batch's acks are handed over (see `flush_control`).
        self.control.push(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            codes,
        }));
        self.retained.extend(retained);
        None
    }

    /// `max_subscriptions`: would subscribing to `filter` (not a
    /// replacement of an existing subscription) go over it?
    fn over_subscription_limit(&self, filter: &str) -> bool {
        let max = self.broker.limits.max_subscriptions;
        if max == 0 {
            return false;
        }
        let st = self.session.state.lock();
        st.subscriptions.len() >= max && !st.subscriptions.contains_key(filter)
    }

    fn unsubscribe(&mut self, u: Unsubscribe) -> Option<End> {
        let codes = u
            .filters
            .iter()
            .map(|f| {
                self.broker.emit(Event::Unsubscribed {
                    client: self.client(),
                    filter: f,
                });
                let (existed, t) = self.broker.unsubscribe(&self.session, f);
                self.ticket = self.ticket.max(t);
                if existed {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.control.push(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            codes,
        }));
        None
    }

    fn disconnect(&mut self, d: Disconnect) -> Option<End> {
        if let Some(new) = d.properties.session_expiry_interval {
            let mut st = self.session.state.lock();
            if st.expiry_interval == 0 && new != 0 {
                drop(st);
                return self.protocol_error("session expiry set in DISCONNECT after 0 in CONNECT");
            }
            st.expiry_interval = new.min(self.broker.config.max_session_expiry);
        }
        Some(End::Client { reason: d.reason })
    }
}
