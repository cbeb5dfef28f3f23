//! `GET /api/v1/cluster`: this node, its link to NATS and every node with a
//! membership record (alive or, until its record ages out, dead).

use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::{ApiError, ApiResult, Shared};

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
