//! Packing messages for `on-publish-batch` and unpacking the plugin's
//! answer (see `message-batch` and `batch-decisions` in the WIT package).
//!
//! A batch crosses into the plugin as one string of topics, one byte list of
//! payloads and a small record per message pointing into them: a few copies
//! per batch instead of an allocation and a copy per field and message. The
//! answer comes back the same way; the new payloads are slices of one
//! [`Bytes`] (no copy per message).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use midge_protocol::ByteStr;

use crate::validate::{self, OutputLimits, View};

use crate::types::{
    BatchDecision, BatchDecisions, BatchMessage, Message, MessageBatch, MessageProperties,
    PublishVerdict, Qos, ReasonCode, Span,
};

/// One message for [`PluginHost::on_publish_batch`](crate::PluginHost::on_publish_batch),
/// borrowed from wherever the broker holds it.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: Qos,
    pub retain: bool,
    /// MQTT 5.0 properties; `None` when the message has none.
    pub properties: Option<&'a MessageProperties>,
}

impl<'a> From<&'a Message> for BatchItem<'a> {
    fn from(m: &'a Message) -> Self {
        BatchItem {
            topic: &m.topic,
            payload: &m.payload,
            qos: m.qos,
            retain: m.retain,
            properties: (!no_properties(&m.properties)).then_some(&m.properties),
        }
    }
}

fn no_properties(p: &MessageProperties) -> bool {
    !p.payload_is_utf8
        && p.message_expiry_interval.is_none()
        && p.content_type.is_none()
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty()
}

/// A message as the `on-publish` chain changed it; `None` fields keep the
/// original's.
#[derive(Debug, Clone, Default)]
pub struct Changed {
    pub topic: Option<ByteStr>,
    pub payload: Option<Bytes>,
    pub qos: Option<Qos>,
    pub retain: Option<bool>,
    /// Replaces all of the message's properties. Messages changed alike by
    /// one call share one `Arc`.
    pub properties: Option<Arc<MessageProperties>>,
}

impl Changed {
    /// `later` on top of `self`.
    pub(crate) fn apply(&mut self, later: Changed) {
        if later.topic.is_some() {
            self.topic = later.topic;
        }
        if later.payload.is_some() {
            self.payload = later.payload;
        }
        if later.qos.is_some() {
            self.qos = later.qos;
        }
        if later.retain.is_some() {
            self.retain = later.retain;
        }
        if later.properties.is_some() {
            self.properties = later.properties;
        }
    }
}

/// What the `on-publish` chain made of one message of a batch.
#[derive(Debug, Clone)]
pub enum BatchVerdict {
    /// Route the original message unchanged.
    Pass,
    /// Route the original with these changes.
    Modified(Changed),
    /// Discard the message (the publisher still gets its ack).
    Drop,
    /// Refuse the message with this reason code.
    Deny(ReasonCode),
}

impl BatchVerdict {
    /// The verdict [`PluginHost::on_publish`](crate::PluginHost::on_publish)
    /// gives, for `original`, the message this one was reached for: a
    /// changed message is built whole.
    pub fn into_verdict(self, original: &Message) -> PublishVerdict {
        match self {
            BatchVerdict::Pass => PublishVerdict::Pass,
            BatchVerdict::Drop => PublishVerdict::Drop,
            BatchVerdict::Deny(rc) => PublishVerdict::Deny(rc),
            BatchVerdict::Modified(c) => PublishVerdict::Modified(Message {
                topic: c
                    .topic
                    .map_or_else(|| original.topic.clone(), |t| t.to_string()),
                payload: c
                    .payload
                    .map_or_else(|| original.payload.clone(), |p| p.to_vec()),
                qos: c.qos.unwrap_or(original.qos),
                retain: c.retain.unwrap_or(original.retain),
                properties: c
                    .properties
                    .map_or_else(|| original.properties.clone(), |p| (*p).clone()),
            }),
        }
    }
}

/// One decision of a plugin's answer, checked and unpacked.
pub(crate) enum Unpacked {
    Pass,
    Modify(Changed),
    Drop,
    Deny(ReasonCode),
    /// The decision breaks the output rules (see [`crate::validate`]):
    /// this message is answered by the failure policy.
    Invalid(String),
}

/// Checks each decision of an unpacked answer against the output rules,
/// as the message it leaves (`picked[k]` of `items`, as `changed` says the
/// plugins before left it); a decision that breaks them becomes
/// [`Unpacked::Invalid`]. Returns what was wrong, if anything.
pub(crate) fn check<'a>(
    decisions: &mut [Unpacked],
    items: &'a [BatchItem<'_>],
    picked: &[usize],
    changed: impl Fn(usize) -> Option<&'a Changed>,
    limits: &OutputLimits,
    grants: &[String],
) -> Option<String> {
    let mut problems = Vec::new();
    for (k, (d, &i)) in decisions.iter_mut().zip(picked).enumerate() {
        let item = &items[i];
        let before = changed(i);
        let result = match d {
            Unpacked::Deny(code) => validate::publish_deny(*code),
            Unpacked::Invalid(problem) => Err(problem.clone()),
            Unpacked::Modify(c) => {
                let view = View {
                    topic: c.topic.as_deref().unwrap_or(current_topic(item, before)),
                    payload: c
                        .payload
                        .as_deref()
                        .or_else(|| before.and_then(|b| b.payload.as_deref()))
                        .unwrap_or(item.payload),
                    qos: c
                        .qos
                        .or_else(|| before.and_then(|b| b.qos))
                        .unwrap_or(item.qos),
                    retain: c
                        .retain
                        .or_else(|| before.and_then(|b| b.retain))
                        .unwrap_or(item.retain),
                    properties: c
                        .properties
                        .as_deref()
                        .or_else(|| before.and_then(|b| b.properties.as_deref()))
                        .or(item.properties),
                };
                validate::message(&view, Some(current_topic(item, before)), limits, grants)
            }
            _ => Ok(()),
        };
        if let Err(problem) = result {
            problems.push(format!("message {k}: {problem}"));
            *d = Unpacked::Invalid(problem);
        }
    }
    match problems.len() {
        0 => None,
        1..=3 => Some(problems.join("; ")),
        n => Some(format!("{}; and {} more", problems[..3].join("; "), n - 3)),
    }
}

/// The topic of `item` as changed so far.
pub(crate) fn current_topic<'a>(item: &'a BatchItem<'_>, changed: Option<&'a Changed>) -> &'a str {
    match changed.and_then(|c| c.topic.as_ref()) {
        Some(t) => t,
        None => item.topic,
    }
}

fn span(start: usize, end: usize) -> Span {
    // A batch holds at most a few hundred messages of at most 256 MiB each.
    Span {
        offset: u32::try_from(start).unwrap_or(u32::MAX),
        len: u32::try_from(end - start).unwrap_or(u32::MAX),
    }
}

/// Packs the messages `picked` (indexes into `items`) as the chain has left
/// them so far (`changed`).
pub(crate) fn pack<'a>(
    items: &'a [BatchItem<'_>],
    picked: &[usize],
    changed: impl Fn(usize) -> Option<&'a Changed>,
) -> MessageBatch {
    let (mut topic_len, mut payload_len) = (0, 0);
    for &i in picked {
        let c = changed(i);
        topic_len += current_topic(&items[i], c).len();
        payload_len += c
            .and_then(|c| c.payload.as_ref())
            .map_or(items[i].payload.len(), Bytes::len);
    }
    let mut batch = MessageBatch {
        topics: String::with_capacity(topic_len),
        payloads: Vec::with_capacity(payload_len),
        messages: Vec::with_capacity(picked.len()),
        properties: Vec::new(),
    };
    // Consecutive messages with the same properties (one `Arc` from an
    // earlier plugin, or the same borrowed value) share one entry.
    let mut last: Option<(*const MessageProperties, u32)> = None;
    for &i in picked {
        let item = &items[i];
        let c = changed(i);
        let start = batch.topics.len();
        batch.topics.push_str(current_topic(item, c));
        let topic = span(start, batch.topics.len());
        let start = batch.payloads.len();
        match c.and_then(|c| c.payload.as_ref()) {
            Some(p) => batch.payloads.extend_from_slice(p),
            None => batch.payloads.extend_from_slice(item.payload),
        }
        let payload = span(start, batch.payloads.len());
        let props: Option<&MessageProperties> = match c.and_then(|c| c.properties.as_ref()) {
            Some(p) => Some(&**p),
            None => item.properties,
        };
        let properties = props.map(|p| match last {
            Some((ptr, k)) if std::ptr::eq(ptr, p) => k,
            _ => {
                batch.properties.push(p.clone());
                let k = u32::try_from(batch.properties.len() - 1).unwrap_or(u32::MAX);
                last = Some((p, k));
                k
            }
        });
        batch.messages.push(BatchMessage {
            topic,
            payload,
            qos: c.and_then(|c| c.qos).unwrap_or(item.qos),
            retain: c.and_then(|c| c.retain).unwrap_or(item.retain),
            properties,
        });
    }
    batch
}

fn range(s: Span, len: usize, what: &str, k: usize) -> Result<Range<usize>, String> {
    let start = s.offset as usize;
    let end = start.checked_add(s.len as usize).filter(|&e| e <= len);
    match end {
        Some(end) => Ok(start..end),
        None => Err(format!(
            "on-publish-batch decision {k}: {what} span {}+{} is outside its buffer ({len} bytes)",
            s.offset, s.len
        )),
    }
}

/// Checks a plugin's answer for a batch of `n` messages and unpacks it.
/// `Err`: what does not fit (the call fails for the whole batch).
pub(crate) fn unpack(d: BatchDecisions, n: usize) -> Result<Vec<Unpacked>, String> {
    if d.decisions.len() != n {
        return Err(format!(
            "on-publish-batch returned {} decisions for {n} messages",
            d.decisions.len()
        ));
    }
    let topics = Bytes::from(d.topics.into_bytes());
    let payloads = Bytes::from(d.payloads);
    let properties: Vec<Arc<MessageProperties>> = d.properties.into_iter().map(Arc::new).collect();
    let mut out = Vec::with_capacity(n);
    for (k, decision) in d.decisions.into_iter().enumerate() {
        out.push(match decision {
            BatchDecision::Pass => Unpacked::Pass,
            BatchDecision::Drop => Unpacked::Drop,
            BatchDecision::Deny(rc) => Unpacked::Deny(rc),
            BatchDecision::Modify(c) => {
                let topic = match c.topic {
                    None => None,
                    Some(s) => {
                        let r = range(s, topics.len(), "topic", k)?;
                        let Ok(text) = std::str::from_utf8(&topics[r.clone()]) else {
                            return Err(format!(
                                "on-publish-batch decision {k}: topic span {}+{} is off a character boundary",
                                s.offset, s.len
                            ));
                        };
                        if let Err(problem) = validate::topic_name("topic", text) {
                            out.push(Unpacked::Invalid(problem));
                            continue;
                        }
                        Some(ByteStr::from_bytes(topics.slice(r)).ok_or_else(|| {
                            format!("on-publish-batch decision {k}: topic is not an MQTT string")
                        })?)
                    }
                };
                let payload = match c.payload {
                    None => None,
                    Some(s) => Some(payloads.slice(range(s, payloads.len(), "payload", k)?)),
                };
                let properties = match c.properties {
                    None => None,
                    Some(i) => Some(properties.get(i as usize).cloned().ok_or_else(|| {
                        format!(
                            "on-publish-batch decision {k}: properties index {i} out of range ({} given)",
                            properties.len()
                        )
                    })?),
                };
                Unpacked::Modify(Changed {
                    topic,
                    payload,
                    qos: c.qos,
                    retain: c.retain,
                    properties,
                })
            }
        });
    }
    Ok(out)
}
