//! Retained messages and publishing through the API.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use midge_protocol::{topic, ByteStr, Properties, PropertyValues, QoS};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{paging, ApiError, ApiResult, Shared};
use crate::message::Message;

/// A retained message without its payload (lists).
fn summary(m: &Message) -> Value {
    json!({
        "topic": m.topic.as_str(),
        "qos": m.qos as u8,
        "payload_size": m.payload.len(),
        "publisher": m.publisher(),
        "timestamp": m.timestamp_ms,
    })
}

/// A message whole: payload as base64, and as text when it is UTF-8.
fn full(m: &Message) -> Value {
    let mut v = summary(m);
    let p = &m.properties;
    let user: Vec<[&str; 2]> = p
        .user_properties
        .iter()
        .map(|(k, v)| [k.as_str(), v.as_str()])
        .collect();
    if let Some(o) = v.as_object_mut() {
        o.insert("payload".into(), B64.encode(&m.payload).into());
        o.insert(
            "payload_utf8".into(),
            std::str::from_utf8(&m.payload).ok().into(),
        );
        o.insert(
            "properties".into(),
            json!({
                "payload_format_indicator": p.payload_format_indicator,
                "message_expiry_interval": p.message_expiry_interval,
                "content_type": p.content_type.as_ref().map(|s| s.as_str()),
                "response_topic": p.response_topic.as_ref().map(|s| s.as_str()),
                "correlation_data": p.correlation_data.as_ref().map(|b| B64.encode(b)),
                "user_properties": user,
            }),
        );
    }
    v
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetainedQuery {
    page: Option<u64>,
    limit: Option<u64>,
    /// A topic filter (wildcards allowed): the messages whose topic it
    /// matches, as a subscription would (`#` does not match `$SYS/...`).
    filter: Option<String>,
}

/// Retained messages sorted by topic, all or those `filter` matches.
pub async fn list_retained(
    State(s): State<Shared>,
    q: Result<Query<RetainedQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let p = paging(q.page, q.limit)?;
    let messages = match &q.filter {
        Some(f) if !topic::valid_filter(f) => {
            return Err(ApiError::bad_request(format!(
                "filter `{f}` is not a valid topic filter"
            )))
        }
        Some(f) => {
            let mut v = s.broker.retained.matching(f);
            v.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
            v
        }
        None => s.broker.retained.list(),
    };
    let all: Vec<Value> = messages.iter().map(|m| summary(m)).collect();
    Ok(p.answer(all))
}

fn no_retained(t: &str) -> ApiError {
    ApiError::not_found(format!("no retained message on `{t}`"))
}

/// `{topic}` is the whole topic, URL-encoded (`a%2Fb` for `a/b`).
pub async fn get_retained(
    State(s): State<Shared>,
    t: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(t) = t?;
    let m = s.broker.retained.get(&t).ok_or_else(|| no_retained(&t))?;
    Ok(Json(full(&m)))
}

/// Deletes the retained message (and its stored record, waiting until the
/// store has it when persistence is on).
pub async fn delete_retained(
    State(s): State<Shared>,
    t: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(t) = t?;
    let ticket = s
        .broker
        .retained
        .remove(&t, s.broker.store.as_ref())
        .ok_or_else(|| no_retained(&t))?;
    if let Some(store) = &s.broker.store {
        store.durable(ticket).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum PayloadEncoding {
    #[default]
    Plain,
    Base64,
}

/// `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishReq {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    payload_encoding: PayloadEncoding,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: PublishProps,
}

/// MQTT 5.0 properties of an API publish (3.1.1 subscribers do not see them).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishProps {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    /// Base64.
    correlation_data: Option<String>,
    #[serde(default)]
    user_properties: BTreeMap<String, String>,
}

/// Publishes through `Broker::publish`: rules, retained store and
/// subscribers see it as they see a client's message (without a publisher,
/// so No Local does not apply). Answers once the store has it when
/// persistence is on.
pub async fn publish(
    State(s): State<Shared>,
    req: Result<Json<PublishReq>, JsonRejection>,
) -> ApiResult {
    let Json(req) = req?;
    let cfg = &s.broker.config;
    if !topic::valid_name(&req.topic) {
        return Err(ApiError::bad_request(format!(
            "topic `{}` is not a valid topic name (not empty, no `+` or `#`, at most 65535 bytes)",
            req.topic
        )));
    }
    let qos = match req.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        q => {
            return Err(ApiError::bad_request(format!(
                "qos must be 0, 1 or 2 (got {q})"
            )))
        }
    };
    if req.qos > cfg.max_qos {
        return Err(ApiError::bad_request(format!(
            "qos {} is above mqtt.max_qos ({})",
            req.qos, cfg.max_qos
        )));
    }
    if req.retain && !cfg.retain_available {
        return Err(ApiError::bad_request(
            "retain is not available (mqtt.retain_available = false)",
        ));
    }
    let payload = match req.payload_encoding {
        PayloadEncoding::Plain => Bytes::from(req.payload.into_bytes()),
        PayloadEncoding::Base64 => Bytes::from(
            B64.decode(req.payload.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        ),
    };
    if payload.len() > cfg.max_packet_size as usize {
        return Err(ApiError::bad_request(format!(
            "payload of {} bytes is larger than mqtt.max_packet_size ({})",
            payload.len(),
            cfg.max_packet_size
        )));
    }
    let pp = req.properties;
    if pp.payload_format_indicator.is_some_and(|p| p > 1) {
        return Err(ApiError::bad_request(
            "properties.payload_format_indicator must be 0 or 1",
        ));
    }
    if pp.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err() {
        return Err(ApiError::bad_request(
            "payload_format_indicator is 1 but the payload is not UTF-8",
        ));
    }
    if let Some(rt) = &pp.response_topic {
        if !topic::valid_name(rt) {
            return Err(ApiError::bad_request(format!(
                "properties.response_topic `{rt}` is not a valid topic name"
            )));
        }
    }
    let long = [pp.content_type.as_deref(), pp.response_topic.as_deref()]
        .into_iter()
        .flatten()
        .chain(
            pp.user_properties
                .iter()
                .flat_map(|(k, v)| [k.as_str(), v.as_str()]),
        )
        .any(|s| s.len() > usize::from(u16::MAX) || s.contains('\0'));
    if long || req.topic.contains('\0') {
        return Err(ApiError::bad_request(
            "topic and string properties must be at most 65535 bytes, without U+0000",
        ));
    }
    let correlation_data = match &pp.correlation_data {
        Some(c) => Some(Bytes::from(B64.decode(c.as_bytes()).map_err(|e| {
            ApiError::bad_request(format!("properties.correlation_data is not base64: {e}"))
        })?)),
        None => None,
    };
    if correlation_data
        .as_ref()
        .is_some_and(|c| c.len() > usize::from(u16::MAX))
    {
        return Err(ApiError::bad_request(
            "properties.correlation_data must be at most 65535 bytes",
        ));
    }
    let properties = Properties::from(PropertyValues {
        payload_format_indicator: pp.payload_format_indicator,
        message_expiry_interval: pp.message_expiry_interval,
        content_type: pp.content_type.map(ByteStr::from),
        response_topic: pp.response_topic.map(ByteStr::from),
        correlation_data,
        user_properties: pp
            .user_properties
            .into_iter()
            .map(|(k, v)| (ByteStr::from(k), ByteStr::from(v)))
            .collect(),
        ..PropertyValues::default()
    });
    let msg = Message::new(
        ByteStr::from(req.topic),
        payload,
        qos,
        req.retain,
        properties,
    );
    let id = format!("{:016X}", msg.id);
    let ticket = s.broker.publish(Arc::new(msg));
    if let Some(store) = &s.broker.store {
        store.durable(ticket).await;
    }
    Ok(Json(json!({ "id": id })))
}
