//! `GET /api/v1/bridges` and `GET /api/v1/bridges/{name}`: each bridge's
//! link state, last error, buffer and rates (crate::bridge).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, ApiResult, Shared};
use crate::bridge::status::Dropped;
use crate::bridge::Bridge;

pub async fn list(State(s): State<Shared>) -> ApiResult {
    let data: Vec<Value> = s.bridges.list().iter().map(|b| view(b)).collect();
    Ok(Json(json!({ "data": data })))
}

pub async fn get(
    State(s): State<Shared>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult {
    let Path(name) = name?;
    match s.bridges.get(&name) {
        Some(b) => Ok(Json(view(b))),
        None => Err(ApiError::not_found(format!("no bridge named `{name}`"))),
    }
}

/// One bridge as the API shows it (also the dashboard's source).
pub fn view(b: &Bridge) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let st = &b.status;
    let (messages, bytes) = b.buffered();
    let inflight = b.session.state.lock().inflight.len();
    let (sent_rate, received_rate) = st.rates();
    let since = st.connected_since_ms.load(Relaxed);
    let spec = &b.spec;
    json!({
        "name": b.name(),
        "remote": spec.remote.to_string(),
        "protocol": if spec.version == midge_protocol::Version::V5 { "5.0" } else { "3.1.1" },
        "client_id": spec.client_id,
        "connected": st.is_connected(),
        "connected_since_ms": (since > 0).then_some(since),
        "subscribed": st.subscribed.load(Relaxed),
        "last_error": st.last_error().map(|(at, message)| json!({"at_ms": at, "message": message})),
        "buffered": {
            "messages": messages,
            "bytes": bytes,
            "inflight": inflight,
            "max_messages": spec.buffer.max_messages,
            "max_bytes": spec.buffer.max_bytes,
            "full_policy": match spec.buffer.full_policy {
                crate::config::QueueFullPolicy::DropNew => "drop_new",
                crate::config::QueueFullPolicy::DropOldest => "drop_oldest",
            },
        },
        "rates": {
            "sent_per_second": sent_rate,
            "received_per_second": received_rate,
        },
        "counters": {
            "sent": st.sent.load(Relaxed),
            "acked": st.acked.load(Relaxed),
            "received": st.received.load(Relaxed),
            "connects": st.connects.load(Relaxed),
            "connect_failures": st.connect_failures.load(Relaxed),
            "disconnects": st.disconnects.load(Relaxed),
            "dropped_buffer_full": b.dropped_full(),
            "dropped_unmappable": st.dropped(Dropped::Unmappable),
            "dropped_too_large": st.dropped(Dropped::TooLarge),
            "dropped_expired": st.dropped(Dropped::Expired),
            "refused_by_remote": st.dropped(Dropped::Refused),
            "dropped_looped": st.dropped(Dropped::Looped),
        },
    })
}
