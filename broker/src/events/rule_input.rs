//! Events as the rule engine's `$events/...` inputs (EMQX's field names).

use midge_protocol::{reason, Version};
use midge_rules::EventKind;
use serde_json::json;

use super::{AuthzAction, Client, ConnectFlags, Event};
use crate::rules::events::{client_fields, delivery_fields, message_fields, EventFields};
use crate::rules::RuleEngine;

/// Runs the rules listening to `e` (each `$events/...` source it feeds that
/// some enabled rule reads; the fields are built only for those).
pub fn raise(rules: &RuleEngine, e: &Event<'_>) {
    for &kind in e.kind().rule_kinds() {
        if rules.wants(kind) {
            rules.on_event(kind, &fields(kind, e));
        }
    }
}

/// The input of `kind` for `e`.
fn fields(kind: EventKind, e: &Event<'_>) -> EventFields {
    match *e {
        Event::Connected {
            client,
            connect,
            expiry,
            anonymous,
            connected_at_ms,
            ..
        } => {
            let mut f = client_event(&client);
            conn_fields(&mut f, &connect);
            f.set("expiry_interval", expiry);
            match kind {
                EventKind::ClientCheckAuthnComplete => {
                    f.set("reason_code", "success");
                    f.set("is_superuser", false);
                    f.set("is_anonymous", anonymous);
                }
                EventKind::ClientConnack => {
                    f.set("reason_code", "success");
                    f.set("connected_at", connected_at_ms);
                }
                _ => {
                    f.set("connected_at", connected_at_ms);
                    f.set("is_bridge", false);
                }
            }
            f
        }
        Event::ConnackRefused {
            client,
            connect,
            code,
        } => {
            let mut f = client_event(&client);
            f.set("reason_code", connack_reason_name(code));
            conn_fields(&mut f, &connect);
            f
        }
        Event::Disconnected {
            client,
            connect,
            expiry,
            reason,
            disconnected_at_ms,
            ..
        } => {
            let mut f = client_event(&client);
            conn_fields(&mut f, &connect);
            f.set("expiry_interval", expiry);
            f.set("reason", reason);
            f.set("disconnected_at", disconnected_at_ms);
            f
        }
        Event::AuthzChecked {
            client,
            action,
            topic,
            allowed,
            source,
        } => {
            let mut f = client_event(&client);
            f.topic = Some(topic.to_string());
            f.set(
                "action",
                match action {
                    AuthzAction::Publish => "publish",
                    AuthzAction::Subscribe => "subscribe",
                },
            );
            f.set("authz_source", source);
            f.set("result", if allowed { "allow" } else { "deny" });
            f
        }
        Event::Subscribed {
            client,
            filter,
            qos,
        } => {
            let mut f = client_event(&client);
            f.topic = Some(filter.to_string());
            f.qos = Some(qos as u8);
            f.set("sub_props", json!({}));
            f
        }
        Event::Unsubscribed { client, filter } => {
            let mut f = client_event(&client);
            f.topic = Some(filter.to_string());
            f.set("unsub_props", json!({}));
            f
        }
        Event::Delivered { receiver, msg, .. } => delivery_fields(msg, receiver),
        Event::Acked { receiver, msg, .. } => {
            let mut f = delivery_fields(msg, receiver.client_id);
            f.username = receiver.username.map(str::to_string);
            f.set("puback_props", json!({}));
            f
        }
        Event::MessageDropped { msg } => {
            let mut f = message_fields(msg);
            f.set("reason", "no_subscribers");
            f
        }
        Event::DeliveryDropped {
            receiver,
            msg,
            reason,
            ..
        } => {
            let mut f = delivery_fields(msg, receiver);
            f.set("reason", reason.name());
            f
        }
        Event::WillPublished { .. } | Event::SessionExpired { .. } => EventFields::default(),
    }
}

fn client_event(c: &Client<'_>) -> EventFields {
    client_fields(c.client_id, c.username, c.peer)
}

/// CONNECT fields shared by connack / connected / disconnected events.
fn conn_fields(f: &mut EventFields, c: &ConnectFlags) {
    f.set("proto_name", "MQTT");
    f.set("proto_ver", if c.version == Version::V5 { 5 } else { 4 });
    f.set("keepalive", c.keep_alive);
    f.set("clean_start", c.clean_start);
    f.set("mountpoint", serde_json::Value::Null);
}

/// EMQX's names for CONNACK reason codes.
fn connack_reason_name(code: u8) -> &'static str {
    match code {
        reason::SUCCESS => "success",
        reason::UNSUPPORTED_PROTOCOL_VERSION => "unsupported_protocol_version",
        reason::CLIENT_IDENTIFIER_NOT_VALID => "client_identifier_not_valid",
        reason::BAD_USER_NAME_OR_PASSWORD => "bad_username_or_password",
        reason::NOT_AUTHORIZED => "not_authorized",
        reason::BAD_AUTHENTICATION_METHOD => "bad_authentication_method",
        reason::QOS_NOT_SUPPORTED => "qos_not_supported",
        reason::RETAIN_NOT_SUPPORTED => "retain_not_supported",
        reason::TOPIC_NAME_INVALID => "topic_name_invalid",
        reason::QUOTA_EXCEEDED => "quota_exceeded",
        reason::CONNECTION_RATE_EXCEEDED => "connection_rate_exceeded",
        _ => "unspecified_error",
    }
}
