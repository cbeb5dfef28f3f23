//! Between the broker and the Wasm plugin host (`midge-plugin`): type
//! conversions both ways, and the plugins' rule functions for the rule
//! engine. The hooks are called from server/connection/ (authorize,
//! on-publish), server/enhanced_auth.rs (authenticate,
//! including AUTH exchanges), rules/action.rs (on-rule-output) and the
//! event task (`events::plugin_event`, on-event). The host is loaded by
//! `app`; the `publish` capability is `broker::PublishHandle`.

use std::sync::Arc;

use bytes::Bytes;
use midge_plugin::types as pt;
use midge_plugin::PluginHost;
use midge_protocol::{ByteStr, Properties, PropertyValues, QoS, Version};

use crate::message::{ClientInfo, Message};

/// The plugins' rule functions, for the rule engine. Arity comes from the
/// loaded manifests; a call runs the plugin on the calling thread's runtime
/// (the publish path waits for it, as for `on-publish`, bounded by the
/// plugin's deadline).
pub struct PluginFunctions(pub PluginHost);

impl std::fmt::Debug for PluginFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PluginFunctions")
            .field(&self.0.plugins())
            .finish()
    }
}

impl midge_rules::ExternalFunctions for PluginFunctions {
    fn arity(&self, name: &str) -> Option<(usize, Option<usize>)> {
        self.0
            .functions()
            .into_iter()
            .find(|(_, f)| f.name == name)
            .map(|(_, f)| (f.min_args as usize, f.max_args.map(|m| m as usize)))
    }

    /// Arguments cross as JSON text, results come back as JSON text; a
    /// binary that is not UTF-8 crosses either way as `{"$binary":
    /// "<base64>"}` and comes back as bytes.
    fn call(&self, name: &str, args: &[midge_rules::Value]) -> Result<midge_rules::Value, String> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let handle = Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
            .ok_or_else(|| {
                format!(
                    "plugin function `{name}` can only run on the broker's multi-threaded runtime"
                )
            })?;
        let args: Vec<String> = args.iter().map(midge_rules::Value::to_json).collect();
        let text =
            tokio::task::block_in_place(|| handle.block_on(self.0.call_function(name, &args)))
                .map_err(|e| e.to_string())?;
        midge_rules::Value::from_json(text.as_bytes())
            .map(midge_rules::decode_binary_tags)
            .map_err(|e| format!("plugin function `{name}` returned invalid JSON {text:?}: {e}"))
    }
}

/// Any name, any arity: config validation's stand-in for the plugins'
/// functions before they are loaded. Never called.
#[derive(Debug)]
pub struct AnyFunction;

impl midge_rules::ExternalFunctions for AnyFunction {
    fn arity(&self, _: &str) -> Option<(usize, Option<usize>)> {
        Some((0, None))
    }

    fn call(&self, name: &str, _: &[midge_rules::Value]) -> Result<midge_rules::Value, String> {
        Err(format!("plugin function `{name}` is not loaded"))
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
    plugin_message(&m.topic, &m.payload, m.qos, m.retain, &m.properties)
}

/// A client's PUBLISH as a plugin sees it: [`to_plugin`] of the message it
/// becomes, without building that message first.
pub fn publish_to_plugin(p: &midge_protocol::Publish) -> pt::Message {
    plugin_message(&p.topic, &p.payload, p.qos, p.retain, &p.properties)
}

fn plugin_message(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    p: &Properties,
) -> pt::Message {
    pt::Message {
        topic: topic.to_string(),
        payload: payload.to_vec(),
        qos: qos_to(qos),
        retain,
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

/// The properties of a PUBLISH a plugin sees, `None` when it has none of
/// them (the common case: nothing to convert or copy).
pub fn plugin_properties(p: &Properties) -> Option<pt::MessageProperties> {
    let any = p.payload_format_indicator == Some(1)
        || p.message_expiry_interval.is_some()
        || p.content_type.is_some()
        || p.response_topic.is_some()
        || p.correlation_data.is_some()
        || !p.user_properties.is_empty();
    any.then(|| plugin_message("", &[], QoS::AtMostOnce, false, p).properties)
}

/// A client's PUBLISH as one message of an `on-publish-batch` call,
/// borrowed; `properties` from [`plugin_properties`].
pub fn batch_item<'a>(
    p: &'a midge_protocol::Publish,
    properties: Option<&'a pt::MessageProperties>,
) -> midge_plugin::BatchItem<'a> {
    midge_plugin::BatchItem {
        topic: &p.topic,
        payload: &p.payload,
        qos: qos_to(p.qos),
        retain: p.retain,
        properties,
    }
}

/// The last plugin properties converted to the broker's, by identity: the
/// messages of a batch that a plugin changed alike share one `Arc`.
#[derive(Debug, Default)]
pub struct PropertiesCache(Option<(Arc<pt::MessageProperties>, Properties)>);

impl PropertiesCache {
    fn get(&mut self, p: Arc<pt::MessageProperties>) -> Properties {
        match &self.0 {
            Some((last, converted)) if Arc::ptr_eq(last, &p) => converted.clone(),
            _ => {
                let converted = properties_from_plugin(&p);
                self.0 = Some((p, converted.clone()));
                converted
            }
        }
    }
}

/// The message a client's PUBLISH becomes after the `on-publish` chain
/// changed it (`c`: what differs; the rest is the PUBLISH's, shared, not
/// copied).
pub fn changed_message(
    p: &midge_protocol::Publish,
    c: midge_plugin::Changed,
    cache: &mut PropertiesCache,
    origin: Option<Arc<ClientInfo>>,
) -> Message {
    let properties = match c.properties {
        Some(props) => cache.get(props),
        None => publish_properties(&p.properties),
    };
    let mut msg = Message::new(
        c.topic.unwrap_or_else(|| p.topic.clone()),
        c.payload.unwrap_or_else(|| p.payload.clone()),
        c.qos.map_or(p.qos, qos_from),
        c.retain.unwrap_or(p.retain),
        properties,
    );
    msg.origin = origin;
    msg
}

/// The properties of a received PUBLISH that travel with its message (not
/// its topic alias or subscription identifiers), as [`Message::from_publish`]
/// keeps them.
fn publish_properties(p: &Properties) -> Properties {
    let mut properties = p.clone();
    if properties.topic_alias.is_some() {
        properties.topic_alias = None;
    }
    if !properties.subscription_identifiers.is_empty() {
        properties.subscription_identifiers.clear();
    }
    properties
}

fn properties_from_plugin(p: &pt::MessageProperties) -> Properties {
    Properties::from(PropertyValues {
        payload_format_indicator: p.payload_is_utf8.then_some(1),
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type.as_deref().map(ByteStr::from),
        response_topic: p.response_topic.as_deref().map(ByteStr::from),
        correlation_data: p.correlation_data.as_deref().map(Bytes::copy_from_slice),
        user_properties: p
            .user_properties
            .iter()
            .map(|(k, v)| (ByteStr::from(k.as_str()), ByteStr::from(v.as_str())))
            .collect(),
        ..PropertyValues::default()
    })
}

/// A plugin's message (changed by on-publish, or published by it) as the broker's.
pub fn from_plugin(m: pt::Message, origin: Option<Arc<ClientInfo>>) -> Message {
    let properties = properties_from_plugin(&m.properties);
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
