//! The rule action `bridge`: what rule actions run against when the broker
//! has bridges. [`RuleActions`] is the broker's own action context (the
//! lanes, plugins and `republish` go to the [`Broker`]) plus the bridges,
//! so a rule's output message can go into a bridge's outbound buffer as it
//! is (its topic is the remote one: no `out` mapping), buffered, stored and
//! sent like the bridge's other messages.

use std::sync::Arc;

use crate::broker::Broker;
use crate::message::Message;
use crate::rules::{ActionContext, RuleEngine};
use crate::session::Delivery;

use super::Registry;

/// The rule action lanes' context: the broker and its bridges.
#[derive(Debug)]
pub struct RuleActions {
    broker: Arc<Broker>,
    bridges: Arc<Registry>,
}

impl RuleActions {
    pub fn new(broker: Arc<Broker>, bridges: Arc<Registry>) -> RuleActions {
        RuleActions { broker, bridges }
    }
}

impl ActionContext for RuleActions {
    fn rules(&self) -> &RuleEngine {
        ActionContext::rules(&*self.broker)
    }

    fn plugins(&self) -> Option<&midge_plugin::PluginHost> {
        ActionContext::plugins(&*self.broker)
    }

    fn republish(&self, msg: Arc<Message>) {
        ActionContext::republish(&*self.broker, msg);
    }

    /// Into bridge `name`'s buffer with the message's own QoS and retain
    /// flag. An error when there is no such bridge, its buffer is full with
    /// `drop_new`, or a QoS 0 message finds the link down (not buffered,
    /// as for the bridge's own messages).
    fn bridge(&self, name: &str, msg: Arc<Message>) -> Result<(), String> {
        let d = Delivery {
            qos: msg.qos,
            retain: msg.retain,
            msg,
            sub_ids: Default::default(),
            shared: None,
            seq: 0,
        };
        self.bridges.send(name, d).map(drop)
    }
}
