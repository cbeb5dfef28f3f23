//! # midge-sdk: write Midge broker plugins in Rust
//!
//! A Midge plugin is a WebAssembly component (target `wasm32-wasip2`) that
//! implements some of the broker's hooks. This crate hides the generated
//! bindings: implement [`Plugin`] for a type (every hook but [`Plugin::init`]
//! has a default that answers "no opinion"), then export it with
//! [`export_plugin!`]:
//!
//! ```ignore
//! use midge_sdk::*;
//!
//! struct Upper;
//!
//! impl Plugin for Upper {
//!     fn init(_config: &str) -> Result<(Self, Manifest), InitError> {
//!         let manifest = Manifest::new("upper", "0.1.0")
//!             .on_publish(["text/#"]);
//!         Ok((Upper, manifest))
//!     }
//!
//!     fn on_publish(&mut self, mut message: Message, _publisher: Option<Client>) -> PublishDecision {
//!         message.payload.make_ascii_uppercase();
//!         PublishDecision::Modify(message)
//!     }
//! }
//!
//! midge_sdk::export_plugin!(Upper);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the `.wasm`
//! file in `target/wasm32-wasip2/release/` is the component to configure in
//! the broker. The crate type must be `cdylib`.
//!
//! ## Instances and state
//!
//! The broker keeps a small pool of warm instances per plugin and calls
//! [`Plugin::init`] once in each, so `self` is per instance: use it for
//! parsed configuration and caches. Consecutive calls may land in different
//! instances; state that must be shared goes into [`kv`] (or, per client,
//! into the `attributes` of [`AuthAllow`]).
//!
//! ## Hooks, with an example each
//!
//! The broker calls a hook only when the manifest names it (and, for
//! [`Plugin::on_publish`], the topic matches one of its filters; for
//! [`Plugin::on_event`], the event kind is wanted).
//!
//! **authenticate**: decide on CONNECT.
//! ```ignore
//! fn authenticate(&mut self, req: AuthRequest) -> AuthDecision {
//!     match (req.username.as_deref(), req.password.as_deref()) {
//!         (Some("admin"), Some(b"secret")) => AuthDecision::Allow(AuthAllow::superuser()),
//!         (Some(_), _) => AuthDecision::Deny(reason::BAD_USERNAME_OR_PASSWORD),
//!         (None, _) => AuthDecision::Ignore, // let the next plugin decide
//!     }
//! }
//! ```
//!
//! **authenticate**, MQTT 5.0 enhanced authentication: answer
//! [`AuthDecision::challenge`] to send data to the client and be called
//! again (this plugin only) with its answer; what the next step needs comes
//! back in `auth_state` (instances are pooled, `self` may differ).
//! ```ignore
//! fn authenticate(&mut self, req: AuthRequest) -> AuthDecision {
//!     match (req.auth_method.as_deref(), req.auth_state) {
//!         (Some("my-method"), None) => AuthDecision::challenge(nonce.clone(), nonce),
//!         (Some("my-method"), Some(nonce)) if verify(&nonce, &req.auth_data) =>
//!             AuthDecision::Allow(AuthAllow::user()),
//!         (Some("my-method"), Some(_)) => AuthDecision::Deny(reason::NOT_AUTHORIZED),
//!         _ => AuthDecision::Ignore,
//!     }
//! }
//! ```
//!
//! **authorize**: decide on each publish / subscribe (superusers skip it).
//! ```ignore
//! fn authorize(&mut self, req: AuthzRequest) -> AuthzDecision {
//!     let own = format!("users/{}/", req.client.client_id);
//!     if req.topic.starts_with(&own) { AuthzDecision::Allow } else { AuthzDecision::Deny }
//! }
//! ```
//!
//! **on_publish**: change, drop or refuse messages whose topic matches the
//! manifest's filters.
//! ```ignore
//! fn on_publish(&mut self, mut m: Message, publisher: Option<Client>) -> PublishDecision {
//!     if m.payload.is_empty() { return PublishDecision::Drop; }
//!     if m.payload.len() > 4096 { return PublishDecision::Deny(reason::PAYLOAD_FORMAT_INVALID); }
//!     m.topic = format!("clean/{}", m.topic);
//!     PublishDecision::Modify(m)
//! }
//! ```
//!
//! **on_publish_batch**: the broker hands over several messages of one
//! publisher at once when it has them (one call instead of one per
//! message), packed: read them borrowed from the [`Batch`], push one
//! decision per message to [`BatchDecisions`], whose new topics and payloads
//! are packed the same way. The default runs `on_publish` for each (with an
//! owned copy of each); override it when speed matters.
//! ```ignore
//! fn on_publish_batch(&mut self, batch: &Batch, _publisher: Option<&Client>, out: &mut BatchDecisions) {
//!     for m in batch.iter() {
//!         if m.payload.is_empty() { out.discard(); continue; }
//!         let upper = out.write_payload(|buf| { buf.extend(m.payload.iter().map(u8::to_ascii_uppercase)); true });
//!         out.modify(Change { payload: upper, ..Change::default() });
//!     }
//! }
//! ```
//!
//! **on_event**: observe connections, subscriptions, deliveries.
//! ```ignore
//! fn on_event(&mut self, event: Event, _at_ms: u64) {
//!     if let Event::Connected(c) = event {
//!         let _ = kv::increment(&format!("connects/{}", c.client_id), 1);
//!     }
//! }
//! ```
//!
//! **on_rule_output**: receive rows a rule sent to this plugin (JSON array).
//! ```ignore
//! fn on_rule_output(&mut self, rule: String, rows_json: String) -> Result<(), HookError> {
//!     let rows: Vec<serde_json::Value> = serde_json::from_str(&rows_json)
//!         .map_err(|e| HookError::BadInput(e.to_string()))?;
//!     for row in rows {
//!         kafka::produce("archive", None, row.to_string().as_bytes(), &[])
//!             .map_err(|e| HookError::Failed(format!("{e:?}")))?;
//!     }
//!     log::info(&format!("rule {rule} done"));
//!     Ok(())
//! }
//! ```
//!
//! **call_function**: functions usable in rule SQL (declare them in the
//! manifest with [`Manifest::function`]).
//! ```ignore
//! fn call_function(&mut self, name: String, args: Vec<String>) -> Result<String, FunctionError> {
//!     match name.as_str() {
//!         "c_to_f" => {
//!             let c: f64 = serde_json::from_str(&args[0])
//!                 .map_err(|e| FunctionError::BadArguments(e.to_string()))?;
//!             Ok((c * 9.0 / 5.0 + 32.0).to_string())
//!         }
//!         _ => Err(FunctionError::UnknownFunction(name)),
//!     }
//! }
//! ```
//!
//! ## Capabilities
//!
//! [`log`], [`clock`], [`kv`], [`sql`], [`kafka`] and [`publish`] call into
//! the broker. Each works only when the broker configuration grants it to
//! the plugin; otherwise the call returns the `NotGranted` variant of its
//! error type. A plugin has no files, network or environment variables
//! unless granted (a read-only directory can be granted in the broker
//! configuration, then reached with `std::fs` under its guest path).

#![warn(missing_docs)]

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_midge_world",
        default_bindings_module: "midge_sdk::bindings",
        generate_all,
    });
}

use bindings::exports::midge::plugin::hooks as h;
use bindings::midge::plugin as imp;

mod batch;
pub mod binary;
mod topic;
pub use batch::{Batch, BatchDecisions, Change, MessageRef, NewPayload, NewProperties, NewTopic};

pub use h::{
    Action, AuthAllow, AuthContinue, AuthDecision, AuthRequest, AuthzDecision, AuthzRequest,
    DeliveryEvent, DisconnectedEvent, DroppedEvent, Event, EventSet, FunctionError, HookError,
    HookSet, InitError, Manifest, PublishDecision, RuleFunction, SubscribedEvent,
    UnsubscribedEvent,
};
pub use imp::types::{ClientInfo, Message, MessageProperties, ProtocolVersion, Qos, ReasonCode};

/// A connected client (alias of [`ClientInfo`]).
pub type Client = ClientInfo;

/// Structured logging into the broker's log, tagged with the plugin's name.
pub mod log {
    pub use crate::imp::log::{log, Level};

    /// Log at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message)
    }
    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// Time as the broker sees it: [`clock::now_millis`] (Unix ms) and
/// [`clock::monotonic_nanos`].
pub mod clock {
    pub use crate::imp::clock::{monotonic_nanos, now_millis};
}

/// The plugin's namespace of the broker's persistent key-value store.
///
/// ```ignore
/// kv::set("last", b"42")?;
/// assert_eq!(kv::get("last")?, Some(b"42".to_vec()));
/// let n = kv::increment("count", 1)?;
/// ```
pub mod kv {
    pub use crate::imp::kv::{delete, get, increment, list_keys, set, KvError};
}

/// Parameterised statements on the plugin's PostgreSQL database.
///
/// ```ignore
/// sql::enqueue("INSERT INTO readings (topic, value) VALUES ($1, $2)",
///     &[SqlValue::Text(topic), SqlValue::Float(v)])?;
/// ```
pub mod sql {
    pub use crate::imp::sql::{enqueue, execute, query, Rows, SqlError, SqlRejection, SqlValue};
}

/// Producing records to the plugin's Kafka topics.
pub mod kafka {
    pub use crate::imp::kafka::{produce, Header, KafkaError};
}

/// Publishing messages into the broker.
///
/// ```ignore
/// publish::publish(&Message::new("alerts/high", b"too hot".to_vec()))?;
/// ```
pub mod publish {
    pub use crate::imp::publish::{publish, PublishError};
}

/// Common MQTT 5.0 reason codes for [`AuthDecision::Deny`] and
/// [`PublishDecision::Deny`].
pub mod reason {
    use crate::ReasonCode;
    /// 0x80 Unspecified error.
    pub const UNSPECIFIED_ERROR: ReasonCode = 0x80;
    /// 0x83 Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: ReasonCode = 0x83;
    /// 0x85 Client identifier not valid.
    pub const CLIENT_IDENTIFIER_NOT_VALID: ReasonCode = 0x85;
    /// 0x86 Bad user name or password.
    pub const BAD_USERNAME_OR_PASSWORD: ReasonCode = 0x86;
    /// 0x87 Not authorized.
    pub const NOT_AUTHORIZED: ReasonCode = 0x87;
    /// 0x88 Server unavailable.
    pub const SERVER_UNAVAILABLE: ReasonCode = 0x88;
    /// 0x8A Banned.
    pub const BANNED: ReasonCode = 0x8A;
    /// 0x8C Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: ReasonCode = 0x8C;
    /// 0x90 Topic name invalid.
    pub const TOPIC_NAME_INVALID: ReasonCode = 0x90;
    /// 0x97 Quota exceeded.
    pub const QUOTA_EXCEEDED: ReasonCode = 0x97;
    /// 0x99 Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: ReasonCode = 0x99;
}

impl Manifest {
    /// A manifest with no hooks, filters, events or functions.
    pub fn new(name: &str, version: &str) -> Self {
        Manifest {
            name: name.to_string(),
            version: version.to_string(),
            hooks: HookSet::empty(),
            publish_filters: Vec::new(),
            events: EventSet::empty(),
            functions: Vec::new(),
        }
    }

    /// Implement `authenticate`.
    pub fn authenticate(mut self) -> Self {
        self.hooks |= HookSet::AUTHENTICATE;
        self
    }

    /// Implement `authorize`.
    pub fn authorize(mut self) -> Self {
        self.hooks |= HookSet::AUTHORIZE;
        self
    }

    /// Implement `on_publish` for messages whose topic matches one of
    /// `filters` (MQTT topic filters, wildcards allowed).
    pub fn on_publish<I, S>(mut self, filters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hooks |= HookSet::ON_PUBLISH;
        self.publish_filters
            .extend(filters.into_iter().map(Into::into));
        self
    }

    /// Implement `on_event` for the given event kinds.
    pub fn on_event(mut self, events: EventSet) -> Self {
        self.hooks |= HookSet::ON_EVENT;
        self.events |= events;
        self
    }

    /// Implement `on_rule_output`.
    pub fn on_rule_output(mut self) -> Self {
        self.hooks |= HookSet::ON_RULE_OUTPUT;
        self
    }

    /// Offer a rule function (implemented in `call_function`).
    pub fn function(
        mut self,
        name: &str,
        min_args: u32,
        max_args: Option<u32>,
        description: &str,
    ) -> Self {
        self.hooks |= HookSet::RULE_FUNCTIONS;
        self.functions.push(RuleFunction {
            name: name.to_string(),
            min_args,
            max_args,
            description: description.to_string(),
        });
        self
    }
}

impl AuthAllow {
    /// An ordinary client, no attributes.
    pub fn user() -> Self {
        AuthAllow {
            superuser: false,
            attributes: Vec::new(),
            auth_data: None,
        }
    }

    /// A superuser (skips authorization).
    pub fn superuser() -> Self {
        AuthAllow {
            superuser: true,
            attributes: Vec::new(),
            auth_data: None,
        }
    }

    /// Attach an attribute, handed back in [`ClientInfo::attributes`].
    pub fn with_attribute(mut self, name: &str, value: &str) -> Self {
        self.attributes.push((name.to_string(), value.to_string()));
        self
    }

    /// Enhanced authentication: data for the client in the accepting
    /// CONNACK (or AUTH 0x00 after re-authentication).
    pub fn with_auth_data(mut self, data: Vec<u8>) -> Self {
        self.auth_data = Some(data);
        self
    }
}

impl AuthDecision {
    /// Enhanced authentication: send `data` to the client (AUTH 0x18) and
    /// call this plugin again with its answer and `state` (in
    /// [`AuthRequest::auth_state`]); the state never reaches the client.
    pub fn challenge(data: Vec<u8>, state: Vec<u8>) -> Self {
        AuthDecision::ContinueAuth(AuthContinue { data, state })
    }
}

impl ClientInfo {
    /// The value of an attribute attached at authentication.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Message {
    /// A QoS 0, non-retained message without properties.
    pub fn new(topic: &str, payload: Vec<u8>) -> Self {
        Message {
            topic: topic.to_string(),
            payload,
            qos: Qos::AtMostOnce,
            retain: false,
            properties: MessageProperties::default(),
        }
    }
}

#[allow(clippy::derivable_impls)] // the type is generated by wit-bindgen
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

/// Parse the JSON configuration handed to [`Plugin::init`] into `T`
/// (a `BadConfig` error names what is wrong).
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, InitError> {
    serde_json::from_str(config).map_err(|e| InitError::BadConfig(e.to_string()))
}

/// Re-exported for plugins that parse JSON payloads or configuration.
pub use serde_json;

/// MQTT topic matching: does topic name `name` match filter `filter`?
/// (`+` one level, `#` the rest; `$`-topics are not matched by a leading
/// wildcard.) The broker's own matcher: src/topic.rs is also
/// midge-protocol's `topic::matches_plain`, and both are tested against
/// topic_cases.txt.
pub fn topic_matches(filter: &str, name: &str) -> bool {
    topic::matches_plain(filter, name)
}

/// A Midge plugin. Implement [`Plugin::init`] and the hooks named in the
/// manifest it returns; export the type with [`export_plugin!`].
pub trait Plugin: Sized + 'static {
    /// Called once per instance with the plugin's `config` table (JSON text,
    /// `{}` when absent). Returns the instance state and the manifest.
    fn init(config: &str) -> Result<(Self, Manifest), InitError>;

    /// Decide on a connecting client. Default: [`AuthDecision::Ignore`].
    fn authenticate(&mut self, request: AuthRequest) -> AuthDecision {
        let _ = request;
        AuthDecision::Ignore
    }

    /// Decide on a publish or subscribe. Default: [`AuthzDecision::Ignore`].
    fn authorize(&mut self, request: AuthzRequest) -> AuthzDecision {
        let _ = request;
        AuthzDecision::Ignore
    }

    /// Inspect, change or stop a message. Default: [`PublishDecision::Pass`].
    fn on_publish(&mut self, message: Message, publisher: Option<Client>) -> PublishDecision {
        let _ = (message, publisher);
        PublishDecision::Pass
    }

    /// Several messages of one publisher, in the order they were read:
    /// push one decision per message, in order, to `out`. Default:
    /// [`Plugin::on_publish`] for each (an owned copy of each message, and
    /// of `publisher`, per call). Override it to skip those copies and
    /// share work across the batch: read the messages borrowed from
    /// `batch`, write new payloads straight into `out`.
    fn on_publish_batch(
        &mut self,
        batch: &Batch,
        publisher: Option<&Client>,
        out: &mut BatchDecisions,
    ) {
        for m in batch.iter() {
            let decision = self.on_publish(m.to_message(), publisher.cloned());
            out.push(&m, decision);
        }
    }

    /// Observe an event. Default: nothing.
    fn on_event(&mut self, event: Event, timestamp_millis: u64) {
        let _ = (event, timestamp_millis);
    }

    /// Rows a rule sent to this plugin, as a JSON array. Default: `Ok(())`.
    fn on_rule_output(&mut self, rule: String, rows_json: String) -> Result<(), HookError> {
        let _ = (rule, rows_json);
        Ok(())
    }

    /// Evaluate a rule function. Default: [`FunctionError::UnknownFunction`].
    fn call_function(
        &mut self,
        name: String,
        args_json: Vec<String>,
    ) -> Result<String, FunctionError> {
        let _ = args_json;
        Err(FunctionError::UnknownFunction(name))
    }
}

/// Sends panic messages (with their location) to the broker's log before
/// the trap that follows: without it, a panic reaches the broker as a bare
/// `unreachable` trap. [`export_plugin!`] installs it at `init`.
#[doc(hidden)]
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            // "panicked at src/lib.rs:10:5:\nmessage": the host keeps a
            // record starting so as the message of the trap that follows.
            log::error(&info.to_string());
        }));
    });
}

#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::__export_midge_world;
    pub use crate::bindings::exports::midge::plugin::hooks::{
        BatchDecisions as BatchDecisionsRaw, Guest, MessageBatch,
    };
    pub use crate::install_panic_hook;
    pub use crate::Plugin;
}

/// Export a type implementing [`Plugin`] as the component's hooks. Use it
/// once, at the crate root of a `cdylib` crate.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            use $crate::__private::Plugin as _;

            ::std::thread_local! {
                static __MIDGE_PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            fn __with<R>(f: impl FnOnce(&mut $plugin) -> R) -> R {
                __MIDGE_PLUGIN.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    match slot.as_mut() {
                        ::core::option::Option::Some(p) => f(p),
                        ::core::option::Option::None => {
                            ::core::panic!("midge plugin hook called before init")
                        }
                    }
                })
            }

            struct __MidgeExport;

            impl $crate::__private::Guest for __MidgeExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<$crate::Manifest, $crate::InitError> {
                    $crate::__private::install_panic_hook();
                    let (plugin, manifest) = <$plugin as $crate::Plugin>::init(&config)?;
                    __MIDGE_PLUGIN
                        .with(|cell| *cell.borrow_mut() = ::core::option::Option::Some(plugin));
                    ::core::result::Result::Ok(manifest)
                }
                fn authenticate(request: $crate::AuthRequest) -> $crate::AuthDecision {
                    __with(|p| p.authenticate(request))
                }
                fn authorize(request: $crate::AuthzRequest) -> $crate::AuthzDecision {
                    __with(|p| p.authorize(request))
                }
                fn on_publish(
                    message: $crate::Message,
                    publisher: ::core::option::Option<$crate::ClientInfo>,
                ) -> $crate::PublishDecision {
                    __with(|p| p.on_publish(message, publisher))
                }
                fn on_publish_batch(
                    batch: $crate::__private::MessageBatch,
                    publisher: ::core::option::Option<$crate::ClientInfo>,
                ) -> $crate::__private::BatchDecisionsRaw {
                    let batch = $crate::Batch::from_raw(batch);
                    let mut out = $crate::BatchDecisions::with_capacity(batch.len());
                    __with(|p| p.on_publish_batch(&batch, publisher.as_ref(), &mut out));
                    out.into_raw()
                }
                fn on_event(event: $crate::Event, timestamp_millis: u64) {
                    __with(|p| p.on_event(event, timestamp_millis))
                }
                fn on_rule_output(
                    rule: ::std::string::String,
                    rows_json: ::std::string::String,
                ) -> ::core::result::Result<(), $crate::HookError> {
                    __with(|p| p.on_rule_output(rule, rows_json))
                }
                fn call_function(
                    name: ::std::string::String,
                    args_json: ::std::vec::Vec<::std::string::String>,
                ) -> ::core::result::Result<::std::string::String, $crate::FunctionError> {
                    __with(|p| p.call_function(name, args_json))
                }
            }

    $crate::__private::__export_midge_world!(__MidgeExport with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod topic_tests {
    use super::topic_matches;

    /// The case table midge-protocol's matcher is tested against too.
    #[test]
    fn topic_matches_agrees_with_the_shared_case_table() {
        let mut n = 0;
        for line in include_str!("topic_cases.txt").lines() {
            if line.trim().is_empty() || line.starts_with("# ") {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 3, "topic_cases.txt: {line:?}");
            assert_eq!(topic_matches(f[0], f[1]), f[2] == "true", "{line:?}");
            n += 1;
        }
        assert!(n >= 20, "the table has its cases");
    }
}
