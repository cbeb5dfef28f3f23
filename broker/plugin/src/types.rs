//! The data types exchanged with plugins, generated from the WIT package
//! (`wit/midge-plugin.wit`); see that file for every field's meaning.

pub use crate::bindings::exports::midge::plugin::hooks::{
    Action, AuthAllow, AuthContinue, AuthDecision, AuthRequest, AuthzDecision, AuthzRequest,
    BatchDecision, BatchDecisions, BatchMessage, DeliveryEvent, DisconnectedEvent, DroppedEvent,
    Event, EventSet, FunctionError, HookError, HookSet, InitError, Manifest, MessageBatch,
    MessageChange, PublishDecision, RuleFunction, Span, SubscribedEvent, UnsubscribedEvent,
};
pub use crate::bindings::midge::plugin::types::{
    ClientInfo, Message, MessageProperties, ProtocolVersion, Qos,
};

/// An MQTT reason code.
pub type ReasonCode = u8;

impl Event {
    /// The [`EventSet`] flag of this event's kind.
    pub fn kind(&self) -> EventSet {
        match self {
            Event::Connected(_) => EventSet::CONNECTED,
            Event::Disconnected(_) => EventSet::DISCONNECTED,
            Event::Subscribed(_) => EventSet::SUBSCRIBED,
            Event::Unsubscribed(_) => EventSet::UNSUBSCRIBED,
            Event::Delivered(_) => EventSet::DELIVERED,
            Event::Acked(_) => EventSet::ACKED,
            Event::Dropped(_) => EventSet::DROPPED,
        }
    }
}

#[allow(clippy::derivable_impls)] // the type is generated
impl Default for MessageProperties {
    fn default() -> Self {
        MessageProperties {
            payload_is_utf8: false,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }
    }
}

impl Message {
    /// A QoS 0, non-retained message without properties.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos: Qos::AtMostOnce,
            retain: false,
            properties: MessageProperties::default(),
        }
    }
}

/// The result of the `on-publish` chain.
#[derive(Debug, Clone)]
pub enum PublishVerdict {
    /// Route the original message unchanged.
    Pass,
    /// Route this message instead.
    Modified(Message),
    /// Discard the message (the publisher still gets its ack).
    Drop,
    /// Refuse the message with this reason code.
    Deny(ReasonCode),
}

/// A chain's decision plus the failures met on the way (already logged,
/// counted and answered per the failure policy).
#[derive(Debug, Clone)]
pub struct Outcome<T> {
    /// The decision.
    pub decision: T,
    /// Plugins that failed while deciding.
    pub failures: Vec<crate::PluginError>,
}

impl<T> Outcome<T> {
    pub(crate) fn new(decision: T, failures: Vec<crate::PluginError>) -> Self {
        Outcome { decision, failures }
    }
}
