//! Batches of messages for [`Plugin::on_publish_batch`](crate::Plugin::on_publish_batch).
//!
//! The broker packs the messages of a batch into a few buffers (all topics
//! in one string, all payloads in one byte list) so that handing 64 messages
//! to a plugin costs a few copies, not several per message. [`Batch`] reads
//! them as [`MessageRef`]s borrowed from those buffers; [`BatchDecisions`]
//! collects one decision per message and packs the new topics, payloads and
//! properties the same way.

use crate::h::{BatchDecision, BatchMessage, MessageBatch, MessageChange, Span};
use crate::{Message, MessageProperties, PublishDecision, Qos, ReasonCode};

/// The messages of one `on-publish-batch` call, in the order the publisher
/// sent them.
pub struct Batch {
    raw: MessageBatch,
}

/// One message of a [`Batch`], borrowed from it.
#[derive(Clone, Copy)]
pub struct MessageRef<'a> {
    /// The topic name.
    pub topic: &'a str,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// The QoS the message was published with.
    pub qos: Qos,
    /// The retain flag.
    pub retain: bool,
    /// MQTT 5.0 properties; `None` when the message has none.
    pub properties: Option<&'a MessageProperties>,
}

fn range(s: Span) -> std::ops::Range<usize> {
    let start = s.offset as usize;
    start..start + s.len as usize
}

impl Batch {
    #[doc(hidden)]
    pub fn from_raw(raw: MessageBatch) -> Self {
        Batch { raw }
    }

    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.raw.messages.len()
    }

    /// Whether the batch is empty (the broker never sends an empty one).
    pub fn is_empty(&self) -> bool {
        self.raw.messages.is_empty()
    }

    /// The `i`th message, if there is one.
    pub fn get(&self, i: usize) -> Option<MessageRef<'_>> {
        self.raw.messages.get(i).map(|m| self.view(m))
    }

    /// The messages in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = MessageRef<'_>> + '_ {
        self.raw.messages.iter().map(|m| self.view(m))
    }

    fn view<'a>(&'a self, m: &BatchMessage) -> MessageRef<'a> {
        MessageRef {
            topic: &self.raw.topics[range(m.topic)],
            payload: &self.raw.payloads[range(m.payload)],
            qos: m.qos,
            retain: m.retain,
            properties: m
                .properties
                .and_then(|i| self.raw.properties.get(i as usize)),
        }
    }
}

impl MessageRef<'_> {
    /// An owned copy, as [`Plugin::on_publish`](crate::Plugin::on_publish) takes it.
    pub fn to_message(&self) -> Message {
        Message {
            topic: self.topic.to_string(),
            payload: self.payload.to_vec(),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.cloned().unwrap_or_default(),
        }
    }
}

/// A topic added with [`BatchDecisions::add_topic`], for a [`Change`].
#[derive(Clone, Copy, Debug)]
pub struct NewTopic(Span);

/// A payload added with [`BatchDecisions::add_payload`] or
/// [`BatchDecisions::write_payload`], for a [`Change`].
#[derive(Clone, Copy, Debug)]
pub struct NewPayload(Span);

/// Properties added with [`BatchDecisions::add_properties`], for a
/// [`Change`]; any number of messages may use the same ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewProperties(u32);

/// What [`BatchDecisions::modify`] changes in a message: fields left `None`
/// keep the message's own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Change {
    /// The new topic name.
    pub topic: Option<NewTopic>,
    /// The new payload.
    pub payload: Option<NewPayload>,
    /// The new QoS.
    pub qos: Option<Qos>,
    /// The new retain flag.
    pub retain: Option<bool>,
    /// The new properties (they replace all of the message's).
    pub properties: Option<NewProperties>,
}

/// The decisions on a [`Batch`]: push exactly one per message, in order
/// (another count fails the call for the whole batch).
pub struct BatchDecisions {
    decisions: Vec<BatchDecision>,
    topics: String,
    payloads: Vec<u8>,
    properties: Vec<MessageProperties>,
}

fn span(start: usize, end: usize) -> Span {
    // The broker never sends a batch near 4 GiB; a plugin producing one is
    // refused by the broker (the span would not fit its buffer).
    Span {
        offset: u32::try_from(start).unwrap_or(u32::MAX),
        len: u32::try_from(end - start).unwrap_or(u32::MAX),
    }
}

impl BatchDecisions {
    #[doc(hidden)]
    pub fn with_capacity(messages: usize) -> Self {
        BatchDecisions {
            decisions: Vec::with_capacity(messages),
            topics: String::new(),
            payloads: Vec::new(),
            properties: Vec::new(),
        }
    }

    #[doc(hidden)]
    pub fn into_raw(self) -> crate::h::BatchDecisions {
        crate::h::BatchDecisions {
            decisions: self.decisions,
            topics: self.topics,
            payloads: self.payloads,
            properties: self.properties,
        }
    }

    /// How many decisions have been pushed.
    pub fn len(&self) -> usize {
        self.decisions.len()
    }

    /// Whether no decision has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.decisions.is_empty()
    }

    /// Pass the next message on unchanged.
    pub fn pass(&mut self) {
        self.decisions.push(BatchDecision::Pass);
    }

    /// Discard the next message (the publisher still gets its ack).
    pub fn discard(&mut self) {
        self.decisions.push(BatchDecision::Drop);
    }

    /// Refuse the next message with `code` (see [`reason`](crate::reason)).
    pub fn deny(&mut self, code: ReasonCode) {
        self.decisions.push(BatchDecision::Deny(code));
    }

    /// Pass the next message on with `change`.
    pub fn modify(&mut self, change: Change) {
        self.decisions.push(BatchDecision::Modify(MessageChange {
            topic: change.topic.map(|t| t.0),
            payload: change.payload.map(|p| p.0),
            qos: change.qos,
            retain: change.retain,
            properties: change.properties.map(|p| p.0),
        }));
    }

    /// A new topic name for a [`Change`].
    pub fn add_topic(&mut self, topic: &str) -> NewTopic {
        let start = self.topics.len();
        self.topics.push_str(topic);
        NewTopic(span(start, self.topics.len()))
    }

    /// A new payload for a [`Change`].
    pub fn add_payload(&mut self, payload: &[u8]) -> NewPayload {
        let start = self.payloads.len();
        self.payloads.extend_from_slice(payload);
        NewPayload(span(start, self.payloads.len()))
    }

    /// A new payload written in place: `write` appends its bytes to the
    /// buffer it is given (and must not touch what is already there).
    /// `write` returning `false` takes back whatever it appended and gives
    /// `None`.
    pub fn write_payload(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> Option<NewPayload> {
        let start = self.payloads.len();
        let ok = write(&mut self.payloads);
        assert!(
            self.payloads.len() >= start,
            "BatchDecisions::write_payload: the writer removed bytes it did not add"
        );
        if ok {
            Some(NewPayload(span(start, self.payloads.len())))
        } else {
            self.payloads.truncate(start);
            None
        }
    }

    /// New properties for one or more [`Change`]s.
    pub fn add_properties(&mut self, properties: MessageProperties) -> NewProperties {
        self.properties.push(properties);
        NewProperties(u32::try_from(self.properties.len() - 1).unwrap_or(u32::MAX))
    }

    /// Push an [`on_publish`](crate::Plugin::on_publish)-style decision on
    /// `message` (the message it was made for): a modified message is
    /// compared with it and only what differs is sent back.
    pub fn push(&mut self, message: &MessageRef<'_>, decision: PublishDecision) {
        match decision {
            PublishDecision::Pass => self.pass(),
            PublishDecision::Drop => self.discard(),
            PublishDecision::Deny(code) => self.deny(code),
            PublishDecision::Modify(m) => {
                let topic = (m.topic != message.topic).then(|| self.add_topic(&m.topic));
                let payload = (m.payload != message.payload).then(|| self.add_payload(&m.payload));
                let unchanged = match message.properties {
                    Some(p) => same_properties(p, &m.properties),
                    None => same_properties(&MessageProperties::default(), &m.properties),
                };
                let properties = (!unchanged).then(|| self.add_properties(m.properties));
                self.modify(Change {
                    topic,
                    payload,
                    qos: (m.qos != message.qos).then_some(m.qos),
                    retain: (m.retain != message.retain).then_some(m.retain),
                    properties,
                });
            }
        }
    }
}

fn same_properties(a: &MessageProperties, b: &MessageProperties) -> bool {
    a.payload_is_utf8 == b.payload_is_utf8
        && a.message_expiry_interval == b.message_expiry_interval
        && a.content_type == b.content_type
        && a.response_topic == b.response_topic
        && a.correlation_data == b.correlation_data
        && a.user_properties == b.user_properties
}
