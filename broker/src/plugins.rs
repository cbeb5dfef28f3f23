//! The bridge between the broker and the Wasm plugin host (`midge-plugin`):
//! type conversions, and the broker side of the `publish` capability.
//! The hooks are called from server/connection.rs (authenticate, authorize,
//! on-publish) and rules/action.rs (on-rule-output).

use std::sync::{Arc, Weak};

use bytes::Bytes;
use midge_plugin::types as pt;
use midge_plugin::{BrokerHandle, KafkaBackend, PluginHost, PluginsConfig, Services};
use midge_protocol::{topic, ByteStr, Properties, QoS, Version};

use crate::broker::Broker;
use crate::message::{ClientInfo, Message};
use crate::services::kafka::KafkaProducer;
use crate::ServerError;

/// Loads the configured plugins; their `publish` capability publishes into
/// `broker`, their `kafka` capability produces through the `[plugins.kafka]`
/// producer (built here, kept in `broker.kafka`).
pub async fn load(config: &PluginsConfig, broker: &Arc<Broker>) -> Result<PluginHost, ServerError> {
    let kafka: Option<Arc<dyn KafkaBackend>> = match &config.kafka {
        Some(k) => {
            let producer = Arc::new(KafkaProducer::new(k)?);
            let _ = broker.kafka.set(producer.clone());
            Some(producer)
        }
        None => None,
    };
    let services = Services {
        broker: Some(Arc::new(Publisher(Arc::downgrade(broker)))),
        sql: None,
        kafka,
    };
    Ok(PluginHost::load(config, services).await?)
}

/// The broker as the target of plugins' `publish` capability.
#[derive(Debug)]
struct Publisher(Weak<Broker>);

impl BrokerHandle for Publisher {
    fn publish(&self, plugin: &str, message: pt::Message) -> Result<(), String> {
        let broker = self.0.upgrade().ok_or("the broker is shutting down")?;
        if !topic::valid_name(&message.topic) {
            return Err(format!(
                "plugin `{plugin}`: `{}` is not a valid topic name",
                message.topic
            ));
        }
        broker.publish(Arc::new(from_plugin(message, None)));
        Ok(())
    }
}

pub fn qos_to(q: QoS) -> pt::Qos {
    match q {
        QoS::AtMostOnce => pt::Qos::AtMostOnce,
        QoS::AtLeastOnce => pt::Qos::AtLeastOnce,
        QoS::ExactlyOnce => pt::Qos::ExactlyOnce,
    }
}

fn qos_from(q: pt::Qos) -> QoS {
    match q {
        pt::Qos::AtMostOnce => QoS::AtMostOnce,
        pt::Qos::AtLeastOnce => QoS::AtLeastOnce,
        pt::Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub fn version_to(v: Version) -> pt::ProtocolVersion {
    match v {
        Version::V311 => pt::ProtocolVersion::V311,
        Version::V5 => pt::ProtocolVersion::V5,
    }
}

/// The broker's message as a plugin sees it (payload copied once).
pub fn to_plugin(m: &Message) -> pt::Message {
    let p = &m.properties;
    pt::Message {
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: qos_to(m.qos),
        retain: m.retain,
        properties: pt::MessageProperties {
            payload_is_utf8: p.payload_format_indicator == Some(1),
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.as_ref().map(|s| s.to_string()),
            response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
            correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
    }
}

/// A plugin's message (changed by on-publish, or published by it) as the broker's.
pub fn from_plugin(m: pt::Message, origin: Option<Arc<ClientInfo>>) -> Message {
    let p = m.properties;
    let properties = Properties {
        payload_format_indicator: p.payload_is_utf8.then_some(1),
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type.map(ByteStr::from),
        response_topic: p.response_topic.map(ByteStr::from),
        correlation_data: p.correlation_data.map(Bytes::from),
        user_properties: p
            .user_properties
            .into_iter()
            .map(|(k, v)| (ByteStr::from(k), ByteStr::from(v)))
            .collect(),
        ..Properties::default()
    };
    let mut msg = Message::new(
        ByteStr::from(m.topic),
        Bytes::from(m.payload),
        qos_from(m.qos),
        m.retain,
        properties,
    );
    msg.origin = origin;
    msg
}

/// What plugins know of a connected client.
pub fn client_info(
    c: &ClientInfo,
    version: Version,
    superuser: bool,
    attributes: &[(String, String)],
) -> pt::ClientInfo {
    pt::ClientInfo {
        client_id: c.client_id.to_string(),
        username: c.username.as_deref().map(str::to_string),
        peer_address: c.peer.to_string(),
        protocol_version: version_to(version),
        superuser,
        attributes: attributes.to_vec(),
    }
}
