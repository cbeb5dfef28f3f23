//! Plugin outputs checked as if a client had sent them.
//!
//! What a plugin answers goes on to the router, the retained store, other
//! plugins and subscribers, so it gets the checks a client's PUBLISH or the
//! broker's own packets get, before any of them sees it:
//!
//! | output | rule | MQTT 5.0 |
//! |---|---|---|
//! | topic name | not empty, at most 65,535 bytes, no `+` / `#`, no U+0000 | 4.7.3, 1.5.4 |
//! | `$`-topic | only onto topics a `grants.publish` filter names | 4.7.2 |
//! | strings of properties | at most 65,535 bytes, no U+0000 | 1.5.4 |
//! | Response Topic | a topic name (no wildcards) | 3.3.2.3.5 |
//! | Correlation Data | at most 65,535 bytes | 1.5.6 |
//! | payload-format indicator | UTF-8 payload when it says so | 3.3.2.3.2 |
//! | the PUBLISH | within the broker's `max_packet_size` | 3.1.2.24 |
//! | QoS, retain | within `max_qos`, `retain_available` | 3.2.2.3.4, .5 |
//! | on-publish deny | a PUBACK failure code | 3.4.2.1 |
//! | authenticate deny | a CONNACK failure code | 3.2.2.2 |
//! | auth data | at most 65,535 bytes | 3.15.2.2.3 |
//! | rule function result | JSON, at most `max_function_result` bytes | |
//!
//! A violation is returned as text naming what was wrong; the host turns it
//! into [`PluginError::Invalid`](crate::PluginError::Invalid) (logged,
//! counted, answered by the failure policy, counted toward suspension).

use crate::types::{AuthDecision, MessageProperties, Qos, ReasonCode};

/// The broker's limits that plugin output must keep, as a client's
/// PUBLISH must. [`Services::limits`](crate::Services::limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// The broker's `mqtt.max_packet_size`: a message a plugin makes or
    /// publishes must encode (as an MQTT 5.0 PUBLISH) within it.
    pub max_packet_size: u32,
    /// The broker's `mqtt.max_qos`.
    pub max_qos: u8,
    /// The broker's `mqtt.retain_available`.
    pub retain_available: bool,
    /// Largest rule function result (JSON text), in bytes. A result is a
    /// value of one rule row; it may end up in a republished payload, so
    /// the broker's default is its `max_packet_size`.
    pub max_function_result: usize,
}

/// Largest MQTT packet: 1 byte of header, 4 of remaining length and the
/// largest remaining length a variable byte integer holds.
const MQTT_MAX_PACKET: u32 = 268_435_460;

impl Default for OutputLimits {
    /// MQTT's own limits (a host without a broker, e.g. `midge plugin run`).
    fn default() -> Self {
        OutputLimits {
            max_packet_size: MQTT_MAX_PACKET,
            max_qos: 2,
            retain_available: true,
            max_function_result: 1 << 20,
        }
    }
}

/// Longest MQTT string or binary field.
const MAX_FIELD: usize = u16::MAX as usize;

/// A message as a plugin left it, borrowed (single and batch paths).
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: Qos,
    pub retain: bool,
    pub properties: Option<&'a MessageProperties>,
}

/// `s` for an error message: at most 64 characters, quoted.
pub(crate) fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &s[..cut], s.len()),
        None => format!("{s:?}"),
    }
}

/// An MQTT UTF-8 string field (Rust strings are UTF-8 already).
fn string(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_FIELD {
        return Err(format!("{what} is {} bytes (at most 65,535)", s.len()));
    }
    if s.contains('\0') {
        return Err(format!("{what} {} holds U+0000", shown(s)));
    }
    Ok(())
}

/// A topic name, as the decoder checks a client's.
pub(crate) fn topic_name(what: &str, t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err(format!("{what} is empty"));
    }
    string(what, t)?;
    if t.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(format!(
            "{what} {} has a wildcard (+ or #): a topic name cannot",
            shown(t)
        ));
    }
    Ok(())
}

/// A `$`-topic needs a `grants.publish` filter naming it (filters starting
/// with a wildcard never match `$`-topics, so the grant is explicit).
pub(crate) fn dollar(t: &str, grants: &[String]) -> Result<(), String> {
    if t.starts_with('$') && !grants.iter().any(|f| midge_protocol::topic::matches(f, t)) {
        return Err(format!(
            "topic {} starts with $ and no grants.publish filter of the plugin names it",
            shown(t)
        ));
    }
    Ok(())
}

/// Checks `p` (with the payload it travels with) and returns its encoded
/// length in a PUBLISH.
fn properties(p: &MessageProperties, payload: &[u8]) -> Result<usize, String> {
    let mut len = 0;
    if p.payload_is_utf8 {
        if let Err(e) = std::str::from_utf8(payload) {
            return Err(format!(
                "the payload-format indicator says UTF-8 but the payload is not ({e})"
            ));
        }
        len += 2;
    }
    if p.message_expiry_interval.is_some() {
        len += 5;
    }
    if let Some(ct) = &p.content_type {
        string("content type", ct)?;
        len += 3 + ct.len();
    }
    if let Some(rt) = &p.response_topic {
        topic_name("response topic", rt)?;
        len += 3 + rt.len();
    }
    if let Some(cd) = &p.correlation_data {
        if cd.len() > MAX_FIELD {
            return Err(format!(
                "correlation data is {} bytes (at most 65,535)",
                cd.len()
            ));
        }
        len += 3 + cd.len();
    }
    for (k, v) in &p.user_properties {
        string("user property name", k)?;
        string("user property value", v)?;
        len += 5 + k.len() + v.len();
    }
    Ok(len)
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Encoded length of the MQTT 5.0 PUBLISH of `v` (before per-subscriber
/// topic aliases and subscription identifiers).
fn publish_len(v: &View<'_>, props_len: usize) -> usize {
    let id = if v.qos == Qos::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + v.topic.len() + id + varint_len(props_len) + props_len + v.payload.len();
    1 + varint_len(remaining) + remaining
}

fn qos_level(q: Qos) -> u8 {
    match q {
        Qos::AtMostOnce => 0,
        Qos::AtLeastOnce => 1,
        Qos::ExactlyOnce => 2,
    }
}

/// A message a plugin made (changed by `on-publish`, or handed to the
/// `publish` capability). `before`: the topic it was given (an unchanged
/// topic needs no `$` grant); `None` for a new message.
pub(crate) fn message(
    v: &View<'_>,
    before: Option<&str>,
    limits: &OutputLimits,
    grants: &[String],
) -> Result<(), String> {
    topic_name("topic", v.topic)?;
    if before != Some(v.topic) {
        dollar(v.topic, grants)?;
    }
    let props_len = match v.properties {
        Some(p) => properties(p, v.payload)?,
        None => 0,
    };
    let len = publish_len(v, props_len);
    if len > limits.max_packet_size as usize {
        return Err(format!(
            "the message is {len} bytes as a PUBLISH ({} of payload), above the broker's max_packet_size of {}",
            v.payload.len(),
            limits.max_packet_size
        ));
    }
    if qos_level(v.qos) > limits.max_qos {
        return Err(format!(
            "QoS {} is above the broker's max_qos of {}",
            qos_level(v.qos),
            limits.max_qos
        ));
    }
    if v.retain && !limits.retain_available {
        return Err("the retain flag is set but the broker has retain_available = false".into());
    }
    Ok(())
}

/// Reason codes a PUBACK / PUBREC may carry as a refusal (0x91 "packet
/// identifier in use" is about the publisher's packet, not the message).
fn puback_failure(code: ReasonCode) -> bool {
    matches!(code, 0x80 | 0x83 | 0x87 | 0x90 | 0x97 | 0x99)
}

/// `deny(code)` of `on-publish`: the publisher gets the code in its PUBACK.
pub(crate) fn publish_deny(code: ReasonCode) -> Result<(), String> {
    if puback_failure(code) {
        Ok(())
    } else {
        Err(format!(
            "deny(0x{code:02x}): not a refusal a PUBACK can carry (0x80, 0x83, 0x87, 0x90, 0x97 or 0x99)"
        ))
    }
}

/// Reason codes a CONNACK may carry as a refusal.
fn connack_failure(code: ReasonCode) -> bool {
    matches!(code, 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F)
}

/// An `authenticate` answer: a deny needs a CONNACK failure code, data for
/// the client fits an MQTT binary field.
pub(crate) fn auth_decision(d: &AuthDecision) -> Result<(), String> {
    let binary = |what: &str, b: &[u8]| {
        if b.len() > MAX_FIELD {
            Err(format!("{what} is {} bytes (at most 65,535)", b.len()))
        } else {
            Ok(())
        }
    };
    match d {
        AuthDecision::Deny(code) if !connack_failure(*code) => Err(format!(
            "deny(0x{code:02x}): not a refusal a CONNACK can carry (0x80-0x8a, 0x8c, 0x90, 0x95, 0x97, 0x99-0x9d, 0x9f)"
        )),
        AuthDecision::Allow(a) => {
            for (k, v) in &a.attributes {
                string("attribute name", k)?;
                string("attribute value", v)?;
            }
            match &a.auth_data {
                Some(d) => binary("auth-allow.auth-data", d),
                None => Ok(()),
            }
        }
        AuthDecision::ContinueAuth(c) => binary("continue-auth data", &c.data),
        AuthDecision::Deny(_) | AuthDecision::Ignore => Ok(()),
    }
}

/// A rule function's result: one JSON value within `limits`.
pub(crate) fn function_result(text: &str, limits: &OutputLimits) -> Result<(), String> {
    if text.len() > limits.max_function_result {
        return Err(format!(
            "the result is {} bytes, above the limit of {} (the broker's max_packet_size)",
            text.len(),
            limits.max_function_result
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| format!("the result {} is not JSON: {e}", shown(text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AuthAllow, AuthContinue};

    fn view<'a>(topic: &'a str, payload: &'a [u8], p: Option<&'a MessageProperties>) -> View<'a> {
        View {
            topic,
            payload,
            qos: Qos::AtLeastOnce,
            retain: false,
            properties: p,
        }
    }

    fn check(v: &View<'_>) -> Result<(), String> {
        let limits = OutputLimits {
            max_packet_size: 1024,
            ..OutputLimits::default()
        };
        message(v, Some("in"), &limits, &["$app/#".to_string()])
    }

    #[test]
    fn topics_follow_the_topic_name_rules() {
        assert!(check(&view("out/a", b"x", None)).is_ok());
        for bad in ["", "#", "a/+/b", "a/#", "out/a\0b"] {
            let e = check(&view(bad, b"x", None)).unwrap_err();
            assert!(e.starts_with("topic"), "{bad:?}: {e}");
        }
        let long = "t".repeat(70_000);
        assert!(check(&view(&long, b"", None))
            .unwrap_err()
            .contains("70000 bytes"));
    }

    #[test]
    fn dollar_topics_need_a_grant_unless_unchanged() {
        let e = check(&view("$SYS/brokers/spoofed", b"", None)).unwrap_err();
        assert!(e.contains("starts with $"), "{e}");
        assert!(check(&view("$app/x", b"", None)).is_ok(), "granted");
        let limits = OutputLimits::default();
        let v = view("$SYS/x", b"", None);
        assert!(
            message(&v, Some("$SYS/x"), &limits, &[]).is_ok(),
            "unchanged"
        );
        // A leading wildcard is no grant for `$`-topics.
        assert!(message(&v, None, &limits, &["#".into()]).is_err());
    }

    #[test]
    fn properties_follow_the_mqtt_rules() {
        let mut p = MessageProperties {
            response_topic: Some("resp/#".into()),
            ..MessageProperties::default()
        };
        let e = check(&view("t", b"", Some(&p))).unwrap_err();
        assert!(e.starts_with("response topic"), "{e}");
        p.response_topic = Some("resp/1".into());
        assert!(check(&view("t", b"", Some(&p))).is_ok());
        p.payload_is_utf8 = true;
        let e = check(&view("t", &[0xff, 0xfe], Some(&p))).unwrap_err();
        assert!(e.contains("payload-format indicator"), "{e}");
        assert!(check(&view("t", "héllo".as_bytes(), Some(&p))).is_ok());
        p.user_properties = vec![("k".into(), "a\0b".into())];
        assert!(check(&view("t", b"", Some(&p))).is_err());
        p.user_properties.clear();
        p.correlation_data = Some(vec![0; 70_000]);
        let limits = OutputLimits::default();
        assert!(message(&view("t", b"", Some(&p)), None, &limits, &[])
            .unwrap_err()
            .contains("correlation data"));
    }

    #[test]
    fn the_publish_must_fit_the_maximum_packet_size() {
        // 1024 bytes: header 1 + 2 (remaining length) + topic 2+1 + id 2 + props 1.
        let fits = vec![0u8; 1024 - 9];
        assert!(check(&view("t", &fits, None)).is_ok());
        let over = vec![0u8; 1024 - 8];
        let e = check(&view("t", &over, None)).unwrap_err();
        assert!(
            e.contains("above the broker's max_packet_size of 1024"),
            "{e}"
        );
    }

    #[test]
    fn qos_and_retain_within_the_brokers_settings() {
        let limits = OutputLimits {
            max_qos: 1,
            retain_available: false,
            ..OutputLimits::default()
        };
        let mut v = view("t", b"", None);
        v.qos = Qos::ExactlyOnce;
        assert!(message(&v, None, &limits, &[]).is_err());
        v.qos = Qos::AtLeastOnce;
        v.retain = true;
        assert!(message(&v, None, &limits, &[]).is_err());
    }

    #[test]
    fn deny_codes_must_be_refusals_of_the_hook() {
        assert!(publish_deny(0x99).is_ok());
        for bad in [0x00, 0x10, 0x07, 0x91, 0x8c] {
            assert!(publish_deny(bad).is_err(), "{bad:#x}");
        }
        assert!(auth_decision(&AuthDecision::Deny(0x86)).is_ok());
        assert!(auth_decision(&AuthDecision::Deny(0x00)).is_err());
        assert!(auth_decision(&AuthDecision::Deny(0x18)).is_err());
        let big = AuthDecision::Allow(AuthAllow {
            superuser: false,
            attributes: Vec::new(),
            auth_data: Some(vec![0; 70_000]),
        });
        assert!(auth_decision(&big).is_err());
        let cont = AuthDecision::ContinueAuth(AuthContinue {
            data: vec![0; 70_000],
            state: Vec::new(),
        });
        assert!(auth_decision(&cont).is_err());
    }

    #[test]
    fn function_results_are_bounded_json() {
        let limits = OutputLimits {
            max_function_result: 8,
            ..OutputLimits::default()
        };
        assert!(function_result("[1,2]", &limits).is_ok());
        assert!(function_result("nope", &limits).is_err());
        assert!(function_result("\"0123456789\"", &limits)
            .unwrap_err()
            .contains("above the limit"));
    }
}
