//! Test plugin for the broker's end-to-end tests of `on-event`: every event
//! of a client whose id starts with `clients` is published (QoS 0, through
//! the `publish` capability) to `<topic>/<client id>` with a one-line text
//! payload, so a plain subscriber can watch what the broker reported:
//!
//! ```text
//! connected                     subscribed <filter> <qos>
//! unsubscribed <filter>         delivered <topic> <qos> <packet id>
//! acked <topic> <qos> <pid>     dropped <topic> <reason>
//! disconnected <reason code or "none"> <description>
//! ```
//!
//! Configuration (`config` table; the plugin needs `grants.publish` on
//! `<topic>/#`):
//!
//! ```toml
//! config = { topic = "events", clients = "watched-" }
//! ```
//!
//! Only clients with the prefix are reported, so the plugin's own messages
//! (delivered to the watcher, or dropped without subscribers) never feed
//! back into it.

use midge_sdk::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    topic: String,
    clients: String,
}

struct Events {
    config: Config,
}

fn qos(q: Qos) -> u8 {
    match q {
        Qos::AtMostOnce => 0,
        Qos::AtLeastOnce => 1,
        Qos::ExactlyOnce => 2,
    }
}

impl Plugin for Events {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let config: Config = parse_config(config)?;
        if config.clients.is_empty() {
            return Err(InitError::BadConfig(
                "`clients` must be a non-empty client id prefix".into(),
            ));
        }
        let manifest = Manifest::new("test-events", "0.1.0").on_event(EventSet::all());
        Ok((Events { config }, manifest))
    }

    fn on_event(&mut self, event: Event, _timestamp_millis: u64) {
        let (client, line) = match event {
            Event::Connected(c) => (c.client_id, "connected".to_string()),
            Event::Disconnected(d) => (
                d.client_id,
                format!(
                    "disconnected {} {}",
                    d.reason
                        .map(|r| format!("{r:#04x}"))
                        .unwrap_or_else(|| "none".into()),
                    d.description
                ),
            ),
            Event::Subscribed(s) => (
                s.client_id,
                format!("subscribed {} {}", s.filter, qos(s.qos)),
            ),
            Event::Unsubscribed(u) => (u.client_id, format!("unsubscribed {}", u.filter)),
            Event::Delivered(d) => (
                d.client_id,
                format!("delivered {} {} {}", d.topic, qos(d.qos), d.packet_id),
            ),
            Event::Acked(d) => (
                d.client_id,
                format!("acked {} {} {}", d.topic, qos(d.qos), d.packet_id),
            ),
            Event::Dropped(d) => (d.client_id, format!("dropped {} {}", d.topic, d.reason)),
        };
        if !client.starts_with(&self.config.clients) {
            return;
        }
        let topic = format!("{}/{client}", self.config.topic);
        if let Err(e) = publish::publish(&Message::new(&topic, line.into_bytes())) {
            log::warn(&format!("publishing an event to {topic}: {e:?}"));
        }
    }
}

midge_sdk::export_plugin!(Events);
