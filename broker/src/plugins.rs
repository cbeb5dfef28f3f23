//! The bridge between the broker and the Wasm plugin host (`midge-plugin`):
//! type conversions, and the broker side of the `publish` capability.
//! The hooks are called from server/connection.rs (authorize, on-publish),
//! server/enhanced_auth.rs and the reader (authenticate, including AUTH
//! exchanges), rules/action.rs (on-rule-output), and the event task here
//! (on-event, fed by [`Broker::plugin_event`] through [`EventQueue`]).

use std::sync::Arc;

use bytes::Bytes;
use midge_plugin::types as pt;
use midge_plugin::{BrokerHandle, KafkaBackend, PluginError, PluginHost, PluginsConfig, Services};
use midge_protocol::{topic, ByteStr, Properties, PropertyValues, QoS, Version};

use crate::broker::{Broker, PublishHandle};
use crate::message::{ClientInfo, Message};
use crate::services::kafka::KafkaProducer;
use crate::services::postgres::PgSql;

/// The plugin host and the native services it was given, as the broker keeps them.
#[derive(Debug)]
pub struct Loaded {
    pub host: PluginHost,
    /// The `sql` capability's databases (`[plugins.databases]`), for
    /// metrics and the shutdown flush.
    pub sql: Option<Arc<PgSql>>,
    /// The `kafka` capability's producer (`[plugins.kafka]`), for metrics
    /// and the shutdown flush.
    pub kafka: Option<Arc<KafkaProducer>>,
}

/// Errors loading the plugins.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugins: {0}")]
    Plugins(#[from] PluginError),
    /// A `[plugins.kafka]` setting the producer refused.
    #[error("{0}")]
    Kafka(#[from] crate::services::kafka::KafkaSetupError),
}

/// Loads the configured plugins; their `publish` capability publishes
/// through `publish`, their `sql` capability reaches `[plugins.databases]`
/// and their `kafka` capability produces through the `[plugins.kafka]`
/// producer (both built here).
pub async fn load(config: &PluginsConfig, publish: PublishHandle) -> Result<Loaded, LoadError> {
    let sql = if config.databases.is_empty() {
        None
    } else {
        Some(Arc::new(
            PgSql::new(&config.databases).map_err(|e| PluginError::Config(e.to_string()))?,
        ))
    };
    let kafka = match &config.kafka {
        Some(k) => Some(Arc::new(KafkaProducer::new(k)?)),
        None => None,
    };
    let services = Services {
        broker: Some(Arc::new(Publisher(publish))),
        sql: sql.clone().map(|s| s as Arc<dyn midge_plugin::SqlBackend>),
        kafka: kafka.clone().map(|k| k as Arc<dyn KafkaBackend>),
    };
    let host = PluginHost::load(config, services).await?;
    Ok(Loaded { host, sql, kafka })
}

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

/// The target of plugins' `publish` capability.
#[derive(Debug)]
struct Publisher(PublishHandle);

impl BrokerHandle for Publisher {
    fn publish(&self, plugin: &str, message: pt::Message) -> Result<(), String> {
        if !topic::valid_name(&message.topic) {
            return Err(format!(
                "plugin `{plugin}`: `{}` is not a valid topic name",
                message.topic
            ));
        }
        self.0
            .publish(Arc::new(from_plugin(message, None)))
            .map(drop)
            .map_err(|e| e.to_string())
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

/// How many plugin events may wait for the event task before new ones are
/// dropped (and counted).
pub const EVENT_QUEUE: usize = 4096;

/// The queue between the places events happen (connection, writer, router)
/// and the one task that hands them to plugins' `on-event`, in order. Pushing
/// never waits: a full queue drops the event and counts it.
#[derive(Debug)]
pub struct EventQueue {
    tx: tokio::sync::mpsc::Sender<(pt::Event, u64)>,
    rx: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<(pt::Event, u64)>>>,
    /// Events dropped because the queue was full.
    pub dropped: std::sync::atomic::AtomicU64,
}

impl Default for EventQueue {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        EventQueue {
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl EventQueue {
    /// Queues `event` (timestamped now) for the event task.
    pub fn push(&self, event: pt::Event) {
        let at = midge_plugin::now_millis();
        if self.tx.try_send((event, at)).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Logged on the first drop and then every 1000th.
            if n.is_multiple_of(1000) {
                tracing::warn!(dropped = n + 1, "plugin event queue full: event dropped");
            }
        }
    }

    /// The receiving end, taken once by the server.
    pub fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<(pt::Event, u64)>> {
        self.rx.lock().take()
    }
}

impl Broker {
    /// Raises a plugin event of `kind`: `build` runs and the event is queued
    /// only when some enabled plugin's manifest asked for that kind (without
    /// plugins this is one `OnceLock` check).
    pub fn plugin_event(&self, kind: pt::EventSet, build: impl FnOnce() -> pt::Event) {
        if let Some(host) = self.plugins() {
            if host.wants_event(kind) {
                self.plugin_events.push(build());
            }
        }
    }
}

/// The event task: hands queued events to the plugins in order, one at a
/// time. Ends when the broker (the queue's sender) is gone.
pub async fn run_events(host: PluginHost, mut rx: tokio::sync::mpsc::Receiver<(pt::Event, u64)>) {
    while let Some((event, at)) = rx.recv().await {
        // Failures are logged and counted by the host, per plugin.
        let _ = Box::pin(host.on_event(&event, at)).await;
    }
}

/// A delivery event (`delivered` / `acked`) as plugins see it.
pub fn delivery_event(client_id: &str, m: &Message, qos: QoS, packet_id: u16) -> pt::DeliveryEvent {
    pt::DeliveryEvent {
        client_id: client_id.to_string(),
        topic: m.topic.to_string(),
        qos: qos_to(qos),
        packet_id,
    }
}

/// A `dropped` event: `client_id` empty when no subscriber was involved.
pub fn dropped_event(client_id: &str, m: &Message, qos: QoS, reason: &str) -> pt::Event {
    pt::Event::Dropped(pt::DroppedEvent {
        client_id: client_id.to_string(),
        topic: m.topic.to_string(),
        qos: qos_to(qos),
        reason: reason.to_string(),
    })
}
