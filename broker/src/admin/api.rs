//! Status, clients, sessions and subscriptions: read from the session
//! registry (`Broker::sessions`), one session lock at a time.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use midge_protocol::{topic, Version};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{paging, ApiError, ApiResult, Shared};
use crate::session::Session;

/// How long `DELETE /clients/{id}` waits for the connection to close.
pub(super) const KICK_WAIT: Duration = Duration::from_secs(5);

/// One session as the API shows it (taken under its lock, then released).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionView {
    pub clientid: String,
    /// The cluster node holding the session.
    pub node: String,
    pub connected: bool,
    pub username: Option<String>,
    /// 4 (3.1.1) or 5; absent when offline.
    pub proto_ver: Option<u8>,
    pub peer: Option<String>,
    pub keep_alive: Option<u16>,
    pub clean_start: Option<bool>,
    /// Milliseconds since the epoch.
    pub connected_at: Option<i64>,
    pub offline_since: Option<i64>,
    pub expiry_interval: u32,
    /// Kept in the durable store.
    pub persistent: bool,
    pub subscriptions: usize,
    pub queue_len: usize,
    pub queued_bytes: usize,
    pub inflight: usize,
    /// Deliveries dropped because the queue was full.
    pub dropped: u64,
}

pub fn view(s: &Session) -> SessionView {
    let st = s.state.lock();
    let link = st.conn.as_ref();
    SessionView {
        clientid: s.client_id.to_string(),
        node: crate::node::name().to_string(),
        connected: link.is_some(),
        username: link.and_then(|l| l.info.username.as_deref().map(str::to_string)),
        proto_ver: link.map(|l| match l.version {
            Version::V311 => 4,
            Version::V5 => 5,
        }),
        peer: link.map(|l| l.info.peer.to_string()),
        keep_alive: link.map(|l| l.info.keep_alive),
        clean_start: link.map(|l| l.info.clean_start),
        connected_at: link.map(|l| l.info.connected_at_ms),
        offline_since: if link.is_some() {
            None
        } else {
            st.offline_since_ms
        },
        expiry_interval: st.expiry_interval,
        persistent: st.persist,
        subscriptions: st.subscriptions.len(),
        queue_len: st.queue.len(),
        queued_bytes: st.queued_bytes,
        inflight: st.inflight.len(),
        dropped: st.dropped,
    }
}

pub async fn status(State(s): State<Shared>) -> Json<Value> {
    let views: Vec<SessionView> = s.broker.sessions().iter().map(|x| view(x)).collect();
    let connected = views.iter().filter(|v| v.connected).count();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node": crate::node::name(),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "connections": connected,
        "sessions": views.len(),
        "subscriptions": views.iter().map(|v| v.subscriptions).sum::<usize>(),
        // Clients' retained messages; the broker's own $SYS topics apart.
        "retained": s.broker.retained.len_published(),
        "retained_sys": s.broker.retained.len_sys(),
        "retained_bytes": s.broker.retained.bytes(),
        "retained_refused": s.broker.retained.refused(),
        "persistence": s.broker.store.is_some(),
        "plugins": s.broker.plugins().map(|h| h.plugins().len()).unwrap_or(0),
        "rules": s.broker.rules.configs().len(),
        "listeners": listener_counts(&s),
    }))
}

/// `{"mqtt": open connections, ...}` for every bound listener.
fn listener_counts(s: &Shared) -> serde_json::Map<String, Value> {
    let counts = s.listeners.counts();
    crate::server::Listener::ALL
        .iter()
        .zip(counts)
        .map(|(l, n)| (l.name().to_string(), Value::from(n)))
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientQuery {
    page: Option<u64>,
    limit: Option<u64>,
    /// Exact username.
    username: Option<String>,
    /// Substring of the client id.
    clientid_like: Option<String>,
    connected: Option<bool>,
    /// `node` (default) or `cluster`: every node's clients.
    scope: Option<String>,
}

/// Whether `scope` asks for the whole cluster.
fn cluster_scope(scope: Option<&str>) -> Result<bool, ApiError> {
    match scope {
        None | Some("node") => Ok(false),
        Some("cluster") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "scope must be `node` or `cluster` (got `{other}`)"
        ))),
    }
}

pub async fn list_clients(
    State(s): State<Shared>,
    q: Result<Query<ClientQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let p = paging(q.page, q.limit)?;
    if cluster_scope(q.scope.as_deref())? {
        let ask = super::cluster::Ask {
            username: q.username,
            clientid_like: q.clientid_like,
            connected: q.connected,
            ..Default::default()
        };
        return super::cluster::gather(&s, p, ask).await;
    }
    let views: Vec<SessionView> = s
        .broker
        .sessions()
        .iter()
        .filter(|x| {
            q.clientid_like
                .as_deref()
                .is_none_or(|like| x.client_id.contains(like))
        })
        .map(|x| view(x))
        .filter(|v| q.connected.is_none_or(|c| v.connected == c))
        .filter(|v| {
            q.username
                .as_deref()
                .is_none_or(|u| v.username.as_deref() == Some(u))
        })
        .collect();
    Ok(p.answer(views))
}

fn find(s: &Shared, clientid: &str) -> Result<Arc<Session>, ApiError> {
    s.broker
        .session(clientid)
        .ok_or_else(|| ApiError::not_found(format!("no client `{clientid}`")))
}

/// One client: this node's, else (clustered) the node's that holds it.
pub async fn get_client(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<SessionView>> {
    let Path(id) = id?;
    if let Some(session) = s.broker.session(&id) {
        return Ok(Json(view(&session)));
    }
    super::cluster::elsewhere(&s, &id, false)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no client `{id}`")))
}

/// Closes the client's connection (5.0: DISCONNECT 0x98 Administrative
/// action), waits (bounded) for it to detach, then discards its session
/// unless the client already reconnected. Clustered, a client of another
/// node is kicked there.
pub async fn kick_client(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    match s.broker.session(&id) {
        Some(session) => kick(&s.broker, &session).await?,
        None => {
            let Some(v) = super::cluster::elsewhere(&s, &id, true).await? else {
                return Err(ApiError::not_found(format!("no client `{id}`")));
            };
            tracing::info!(client_id = %id, node = %v.node, "kicked through the admin API on its node");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The kick of `session` on this node (the admin API's, or a peer's).
pub(super) async fn kick(
    broker: &Arc<crate::broker::Broker>,
    session: &Arc<Session>,
) -> Result<(), ApiError> {
    let id = &session.client_id;
    if let Some(gone) = broker.kick(session, midge_protocol::reason::ADMINISTRATIVE_ACTION) {
        if tokio::time::timeout(KICK_WAIT, gone).await.is_err() {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("client `{id}` did not disconnect within {KICK_WAIT:?}"),
            ));
        }
    }
    if broker.discard(session) {
        crate::cluster::sessions::discarded(broker, id).await;
    }
    tracing::info!(client_id = %id, "kicked through the admin API");
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    page: Option<u64>,
    limit: Option<u64>,
    /// `node` (default) or `cluster`: every node's sessions.
    scope: Option<String>,
}

pub async fn list_sessions(
    State(s): State<Shared>,
    q: Result<Query<SessionQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let p = paging(q.page, q.limit)?;
    if cluster_scope(q.scope.as_deref())? {
        return super::cluster::gather(&s, p, super::cluster::Ask::default()).await;
    }
    let views: Vec<SessionView> = s.broker.sessions().iter().map(|x| view(x)).collect();
    Ok(p.answer(views))
}

/// One subscription as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SubView {
    pub clientid: String,
    /// As subscribed, including `$share/{group}/`.
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_identifier: Option<u32>,
}

fn subs_of(s: &Session) -> Vec<SubView> {
    let st = s.state.lock();
    let mut v: Vec<SubView> = st
        .subscriptions
        .iter()
        .map(|(f, r)| SubView {
            clientid: s.client_id.to_string(),
            filter: f.clone(),
            qos: r.opts.qos as u8,
            no_local: r.opts.no_local,
            retain_as_published: r.opts.retain_as_published,
            retain_handling: r.opts.retain_handling,
            subscription_identifier: r.id,
        })
        .collect();
    drop(st);
    v.sort_by(|a, b| a.filter.cmp(&b.filter));
    v
}

pub async fn session_subscriptions(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id?;
    let session = find(&s, &id)?;
    let subs = subs_of(&session);
    let count = subs.len();
    Ok(Json(json!({ "data": subs, "meta": { "count": count } })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubQuery {
    page: Option<u64>,
    limit: Option<u64>,
    /// A topic name: subscriptions whose filter matches it.
    topic: Option<String>,
    /// A filter: subscriptions on exactly this filter.
    filter: Option<String>,
    clientid: Option<String>,
}

/// Subscriptions of every session, optionally those matching a topic
/// (as a publish to it would: `$` topics skip leading wildcards; every
/// member of a shared group is listed) or on one filter.
pub async fn subscriptions(
    State(s): State<Shared>,
    q: Result<Query<SubQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let p = paging(q.page, q.limit)?;
    if let Some(t) = &q.topic {
        if !topic::valid_name(t) {
            return Err(ApiError::bad_request(format!(
                "topic `{t}` is not a valid topic name (no wildcards, not empty)"
            )));
        }
    }
    if let Some(f) = &q.filter {
        if !topic::valid_filter(f) {
            return Err(ApiError::bad_request(format!(
                "filter `{f}` is not a valid topic filter"
            )));
        }
    }
    let mut out = Vec::new();
    for session in s.broker.sessions() {
        if q.clientid
            .as_deref()
            .is_some_and(|c| c != &*session.client_id)
        {
            continue;
        }
        out.extend(subs_of(&session).into_iter().filter(|v| {
            q.topic
                .as_deref()
                .is_none_or(|t| topic::matches(&v.filter, t))
                && q.filter.as_deref().is_none_or(|f| v.filter == f)
        }));
    }
    Ok(p.answer(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicQuery {
    page: Option<u64>,
    limit: Option<u64>,
    /// Substring of the filter.
    like: Option<String>,
    /// A topic name: the filters that match it.
    topic: Option<String>,
}

/// The filters subscribed to (as subscribed, `$share/{group}/` included),
/// each with its number of subscribers, sorted by filter.
pub async fn topics(
    State(s): State<Shared>,
    q: Result<Query<TopicQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let p = paging(q.page, q.limit)?;
    if let Some(t) = &q.topic {
        if !topic::valid_name(t) {
            return Err(ApiError::bad_request(format!(
                "topic `{t}` is not a valid topic name (no wildcards, not empty)"
            )));
        }
    }
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for session in s.broker.sessions() {
        let st = session.state.lock();
        for f in st.subscriptions.keys() {
            *counts.entry(f.clone()).or_default() += 1;
        }
    }
    let data: Vec<Value> = counts
        .into_iter()
        .filter(|(f, _)| q.like.as_deref().is_none_or(|l| f.contains(l)))
        .filter(|(f, _)| q.topic.as_deref().is_none_or(|t| topic::matches(f, t)))
        .map(|(f, n)| json!({ "filter": f, "subscribers": n }))
        .collect();
    Ok(p.answer(data))
}
