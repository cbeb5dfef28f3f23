//! [`PublishHandle`]: what plugins hold instead of the broker, and the
//! broker as the rule actions' [`crate::rules::ActionContext`].

use std::sync::Arc;

use super::Broker;
use crate::message::Message;

/// The narrow way into the publish pipeline for what the broker runs on its
/// own behalf (plugins' `publish` capability, rule actions): it can publish
/// and nothing else, and holds the broker weakly (the broker holds the
/// plugins). Made before the broker it points to (plugins are loaded before
/// the broker that holds them is built), then bound once with
/// [`PublishHandle::bind`]; a publish before that, or after the broker is
/// gone, is refused.
#[derive(Debug, Clone, Default)]
pub struct PublishHandle(Arc<std::sync::OnceLock<std::sync::Weak<Broker>>>);

/// Why [`PublishHandle::publish`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("the broker is starting")]
    Starting,
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl PublishHandle {
    /// A handle bound to nothing yet.
    pub fn new() -> PublishHandle {
        PublishHandle::default()
    }

    /// Points the handle (and its clones) at `broker`; later binds are ignored.
    pub fn bind(&self, broker: &Arc<Broker>) {
        let _ = self.0.set(Arc::downgrade(broker));
    }

    /// [`Broker::publish`] through the handle: the store ticket of the
    /// publish's durable writes.
    pub fn publish(&self, msg: Arc<Message>) -> Result<u64, Unavailable> {
        let weak = self.0.get().ok_or(Unavailable::Starting)?;
        let broker = weak.upgrade().ok_or(Unavailable::ShuttingDown)?;
        Ok(broker.publish(msg))
    }
}

/// The target of plugins' `publish` capability.
impl midge_plugin::BrokerHandle for PublishHandle {
    fn publish(&self, plugin: &str, message: midge_plugin::types::Message) -> Result<(), String> {
        if !midge_protocol::topic::valid_name(&message.topic) {
            return Err(format!(
                "plugin `{plugin}`: `{}` is not a valid topic name",
                message.topic
            ));
        }
        PublishHandle::publish(self, Arc::new(crate::plugins::from_plugin(message, None)))
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// What rule actions run against: the rule engine's lanes, the plugins
/// (the `plugin` action) and the publish pipeline (`republish`).
impl crate::rules::ActionContext for Broker {
    fn rules(&self) -> &crate::rules::RuleEngine {
        &self.rules
    }

    fn plugins(&self) -> Option<&midge_plugin::PluginHost> {
        self.plugins.as_ref()
    }

    fn republish(&self, msg: Arc<Message>) {
        self.publish(msg);
    }
}
