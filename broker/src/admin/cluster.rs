//! `GET /api/v1/cluster`: this node, its link to NATS and every node with a
//! membership record (alive or, until its record ages out, dead); the
//! cluster-wide client and session lists (`scope=cluster`), gathered from
//! every alive node over NATS; one client wherever it is
//! (`GET` / `DELETE /api/v1/clients/{id}` for a client of another node).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{debug, warn};

use super::api::{view, SessionView};
use super::{ApiError, ApiResult, Paging, Shared};
use crate::broker::Broker;

pub async fn show(State(s): State<Shared>) -> ApiResult {
    let Some(node) = s.broker.cluster.get() else {
        return Ok(Json(json!({
            "enabled": false,
            "node": crate::node::name(),
            "nodes": [],
        })));
    };
    let c = node.cluster();
    let nodes = c
        .nodes()
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({
        "enabled": true,
        "node": c.node(),
        "name": c.config().name,
        "nats": {
            "connected": c.is_connected(),
            "servers": c.nats_urls(),
            "stream": c.stream_name(),
        },
        "interest": c.interest_count(),
        "pending": c.pending(),
        "nodes": nodes,
    })))
}

/// What a node asks the others for a cluster-wide client or session list
/// (`scope=cluster`), over NATS request / reply on `<c>.api.<node>`: their
/// sessions matching the filters, the first `take` by client id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ask {
    pub username: Option<String>,
    pub clientid_like: Option<String>,
    pub connected: Option<bool>,
    pub take: usize,
    /// Exactly this client id (one client's view, or its kick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clientid: Option<String>,
    /// Kick the client `clientid` names (its node closes the connection
    /// with 0x98 and discards the session); the answer lists it as it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kick: bool,
}

/// A node's answer: how many of its sessions match, and the first ones.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Answer {
    count: usize,
    items: Vec<SessionView>,
    /// Why a kick failed there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Largest answer a node sends (NATS' default max_payload is 1 MiB): past
/// it the list is cut (the asker's page then ends early; `count` stays true).
const MAX_ANSWER: usize = 900 * 1024;

/// This node's sessions matching `ask`, sorted by client id.
fn local(broker: &Broker, ask: &Ask) -> Answer {
    if let Some(id) = &ask.clientid {
        let items: Vec<SessionView> = broker.session(id).map(|s| view(&s)).into_iter().collect();
        return Answer {
            count: items.len(),
            items,
            error: None,
        };
    }
    let mut count = 0;
    let mut items = Vec::new();
    let mut size = 0;
    for x in broker.sessions() {
        if !ask
            .clientid_like
            .as_deref()
            .is_none_or(|like| x.client_id.contains(like))
        {
            continue;
        }
        let v = view(&x);
        if ask.connected.is_some_and(|c| v.connected != c)
            || ask
                .username
                .as_deref()
                .is_some_and(|u| v.username.as_deref() != Some(u))
        {
            continue;
        }
        count += 1;
        if items.len() < ask.take && size < MAX_ANSWER {
            size += 256 + v.clientid.len();
            items.push(v);
        }
    }
    Answer {
        count,
        items,
        error: None,
    }
}

/// A peer's question about one client: its view, and for a kick, the kick
/// (bounded by `api::KICK_WAIT`).
async fn one(broker: &Arc<Broker>, ask: &Ask) -> Answer {
    let mut answer = local(broker, ask);
    if !ask.kick {
        return answer;
    }
    let Some(session) = ask.clientid.as_deref().and_then(|id| broker.session(id)) else {
        return answer;
    };
    if let Err(e) = super::api::kick(broker, &session).await {
        answer.error = Some(e.message);
    }
    answer
}

fn subject(c: &midge_cluster::Cluster, node: &str) -> String {
    format!("{}.api.{node}", c.config().name)
}

/// Answers the other nodes' `scope=cluster` questions (when clustered).
pub async fn serve_peers(broker: &Arc<Broker>) -> Result<(), midge_cluster::ClusterError> {
    let Some(node) = broker.cluster.get() else {
        return Ok(());
    };
    let c = node.cluster().clone();
    let mut sub = c
        .client()
        .subscribe(subject(&c, c.node()))
        .await
        .map_err(|e| midge_cluster::ClusterError::Nats {
            what: "admin API subscription".into(),
            message: e.to_string(),
        })?;
    let weak = Arc::downgrade(broker);
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(b) = weak.upgrade() else { return };
            let Some(reply) = msg.reply else { continue };
            let ask = match serde_json::from_slice::<Ask>(&msg.payload) {
                Ok(ask) => ask,
                Err(e) => {
                    warn!(error = %e, "cluster: bad admin API question from a peer ignored");
                    continue;
                }
            };
            let c = c.clone();
            // (A kick waits for the connection to close: not in this loop.)
            tokio::spawn(async move {
                let answer = if ask.clientid.is_some() {
                    one(&b, &ask).await
                } else {
                    local(&b, &ask)
                };
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = c.client().publish(reply, body.into()).await {
                    debug!(error = %e, "cluster: admin API answer not sent");
                }
            });
        }
    });
    Ok(())
}

/// Client `id`, not on this node, on whichever other alive node holds it
/// (asked over NATS, as `scope=cluster`); with `kick`, that node kicks it.
/// `Ok(None)`: no node has it (or not clustered); 503 when a node that
/// did not answer may have it; 500 naming the node when its kick failed.
pub(crate) async fn elsewhere(
    s: &Shared,
    id: &str,
    kick: bool,
) -> Result<Option<SessionView>, ApiError> {
    let Some(link) = s.broker.cluster.get() else {
        return Ok(None);
    };
    let ask = Ask {
        clientid: Some(id.to_string()),
        kick,
        take: 1,
        ..Ask::default()
    };
    let t = link.cluster().config().request_timeout()
        + if kick {
            super::api::KICK_WAIT
        } else {
            Default::default()
        };
    let mut unreachable = Vec::new();
    for (node, answer) in ask_others(link.cluster(), &ask, t).await? {
        match answer {
            Some(a) => {
                if let Some(e) = a.error {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("node {node}: {e}"),
                    ));
                }
                if let Some(v) = a.items.into_iter().find(|v| v.clientid == id) {
                    return Ok(Some(v));
                }
            }
            None => unreachable.push(node),
        }
    }
    if unreachable.is_empty() {
        Ok(None)
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no client `{id}` on the nodes that answered; {} did not answer within {t:?}",
                unreachable.join(", ")
            ),
        ))
    }
}

/// `scope=cluster`: every alive node's sessions matching `ask`, merged by
/// client id; `meta.unreachable` names the nodes that did not answer.
pub(crate) async fn gather(s: &Shared, p: Paging, mut ask: Ask) -> ApiResult {
    ask.take = (p.page * p.limit) as usize;
    let mine = local(&s.broker, &ask);
    let Some(link) = s.broker.cluster.get() else {
        return Ok(p.answer_counted(mine.items, mine.count, &[]));
    };
    let t = link.cluster().config().request_timeout();
    let (mut count, mut items) = (mine.count, mine.items);
    let mut unreachable = Vec::new();
    for (node, answer) in ask_others(link.cluster(), &ask, t).await? {
        match answer {
            Some(a) => {
                count += a.count;
                items.extend(a.items);
            }
            None => unreachable.push(node),
        }
    }
    items.sort_by(|a, b| a.clientid.cmp(&b.clientid).then(a.node.cmp(&b.node)));
    Ok(p.answer_counted(items, count, &unreachable))
}

/// Asks every other alive node `ask` over `<c>.api.<node>` at once, each
/// within `t`: (node, its answer; `None` when it did not answer in time or
/// answered what does not decode). 503 when the membership is unreadable.
async fn ask_others(
    c: &midge_cluster::Cluster,
    ask: &Ask,
    t: std::time::Duration,
) -> Result<Vec<(String, Option<Answer>)>, ApiError> {
    let nodes = c
        .nodes()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let body = bytes::Bytes::from(serde_json::to_vec(ask).unwrap_or_default());
    let asks = nodes
        .into_iter()
        .filter(|n| n.state == "alive" && n.node != c.node())
        .map(|n| {
            let (subject, body, client) = (subject(c, &n.node), body.clone(), c.client().clone());
            async move {
                let r = tokio::time::timeout(t, client.request(subject, body)).await;
                let answer = match r {
                    Ok(Ok(m)) => serde_json::from_slice::<Answer>(&m.payload).ok(),
                    _ => None,
                };
                (n.node, answer)
            }
        });
    Ok(futures_util::future::join_all(asks).await)
}
