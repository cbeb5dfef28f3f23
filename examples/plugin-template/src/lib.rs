//! A template Midge plugin: counts messages per topic in kv and tags them.
//!
//! Build: `cargo build --target wasm32-wasip2 --release` (see Cargo.toml).
//! Every hook of `midge_sdk::Plugin` has a default; implement the ones you
//! name in the manifest.

use midge_sdk::*;
use serde::Deserialize;

/// The plugin's `config` table from the broker configuration.
#[derive(Deserialize)]
struct Config {
    /// Written into a user property of every message seen.
    #[serde(default = "default_prefix")]
    prefix: String,
}

fn default_prefix() -> String {
    "seen".into()
}

struct Template {
    prefix: String,
}

impl Plugin for Template {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let config: Config = parse_config(config)?;
        let manifest = Manifest::new("plugin-template", env!("CARGO_PKG_VERSION"))
            .on_publish(["#"])
            .on_event(EventSet::CONNECTED | EventSet::DISCONNECTED);
        Ok((
            Template {
                prefix: config.prefix,
            },
            manifest,
        ))
    }

    fn on_publish(&mut self, mut message: Message, _publisher: Option<Client>) -> PublishDecision {
        // Count per topic; without a kv grant this is a typed error we ignore.
        let count = kv::increment(&format!("count/{}", message.topic), 1).unwrap_or(0);
        message
            .properties
            .user_properties
            .push((self.prefix.clone(), count.to_string()));
        PublishDecision::Modify(message)
    }

    fn on_event(&mut self, event: Event, at_ms: u64) {
        if let Event::Connected(client) = event {
            log::info(&format!("{} connected at {at_ms}", client.client_id));
        }
    }
}

midge_sdk::export_plugin!(Template);
