//! Bridges (broker/src/bridge) against a real remote: Debian's Mosquitto
//! started by the harness (`midge_e2e::mosquitto`), and Midge itself.

#![allow(clippy::unwrap_used)]

mod aliases;
mod durability;
mod exactly_once_in;
mod forwarding;
mod links;
mod loops;
mod operate;

use std::time::Duration;

use midge_e2e::*;

/// The `[[bridges]]` of a TOML text (checked as `serve` would).
pub fn bridges(text: &str) -> Vec<midge::bridge::config::BridgeConfig> {
    match midge::Config::parse(text, "bridge test config") {
        Ok(c) => c.bridges,
        Err(e) => panic!("bridge test config refused: {e}"),
    }
}

/// Polls `f` every 20 ms until it holds, for at most `secs` seconds.
pub async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until bridge `name` of `b` is connected (and, with `in`
/// directions, subscribed at the remote).
pub async fn linked(b: &TestBroker, name: &str) {
    let bridges = b.bridges.clone();
    let name = name.to_string();
    wait_until("the bridge to connect", 20, move || {
        let Some(x) = bridges.get(&name) else {
            return false;
        };
        let st = &x.status;
        st.is_connected()
            && (x.spec.inbound.is_empty()
                || st.subscribed.load(std::sync::atomic::Ordering::Relaxed))
    })
    .await;
}

/// A rumqttc 5.0 client of the broker on 127.0.0.1:`port`.
pub async fn v5_at(port: u16, prefix: &str) -> V5 {
    let mut o = rumqttc::v5::MqttOptions::new(unique(prefix), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    V5::connect(o).await.0
}
