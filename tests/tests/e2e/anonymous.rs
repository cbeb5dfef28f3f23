//! `[limits] allow_anonymous = false`: only clients an authenticator
//! accepted get in, with or without a username, and a broker with no
//! authenticator refuses to start. Driven by mosquitto_pub (an independent
//! client) and the raw test codec.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use midge_e2e::http::{samples, Admin};
use midge_e2e::raw::*;
use midge_e2e::*;

// PBKDF2-SHA256 of "wonderland", 1000 iterations (format documented by auth-password).
const ALICE_HASH: &str =
    "$pbkdf2-sha256$1000$bWlkZ2UtdGVzdC1zYWx0IQ==$jbQpDnEXV2muKnAjBpQeiGWaqiAiNGasWC2sTVuOLYw=";

fn mosquitto_available() -> bool {
    Command::new("mosquitto_pub").arg("--help").output().is_ok()
}

/// The `[plugins]` of a config (TOML, `{wasm}` = the built components).
fn plugins(toml_text: &str, wasm: &std::path::Path) -> midge_plugin::PluginsConfig {
    let text = toml_text
        .replace("{wasm}", &wasm.display().to_string())
        .replace("ALICE_HASH", ALICE_HASH);
    midge::Config::parse(&text, "anonymous-test.toml")
        .expect("config parses")
        .plugins
}

/// mosquitto_pub once with `user` / `password` (None: none sent); returns
/// (success, stderr).
async fn mosquitto_pub(
    b: &TestBroker,
    version: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (bool, String) {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &b.port().to_string(),
        "-V",
        version,
    ])
    .args(["-t", "anon/test", "-m", "hello", "-q", "1"])
    .args(["-i", &unique("mpub")]);
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    if let Some(p) = password {
        c.args(["-P", p]);
    }
    let o = run_command(c, Duration::from_secs(20)).await;
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).to_lowercase(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_authenticator_refuses_to_start() {
    // No plugin at all: the config check and the start both refuse.
    let e = midge::Config::parse("[limits]\nallow_anonymous = false\n", "a.toml").unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("a.toml: field `limits.allow_anonymous`")
            && text.contains("no [[plugins.plugin]] is enabled")
            && text.contains("builtin:auth-password"),
        "{text}"
    );
    let mut cfg = midge::Config::default();
    cfg.limits.allow_anonymous = false;
    cfg.listeners.mqtt = Some("127.0.0.1:0".parse().unwrap());
    cfg.listeners.ws = None;
    cfg.admin.enabled = false;
    let e = midge::App::bind(cfg.clone()).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("no loaded plugin authenticates clients (loaded: none)"),
        "{e}"
    );

    // Plugins, but none with an `authenticate` hook (known once loaded).
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    cfg.plugins = plugins(
        r#"
[[plugins.plugin]]
name = "tx"
path = "{wasm}/transform.wasm"
config = { rules = [] }
"#,
        &wasm,
    );
    let e = midge::App::bind(cfg).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("no loaded plugin authenticates clients (loaded: tx)"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authenticated_clients_get_in() {
    if !mosquitto_available() {
        missing_tool("mosquitto_pub (apt-get install mosquitto-clients)");
        return;
    }
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let p = plugins(
        r#"
[[plugins.plugin]]
name = "pw"
path = "{wasm}/auth_password.wasm"
limits = { deadline_ms = 3000 }
config = { users = { alice = "ALICE_HASH" }, acl_default = "allow" }
"#,
        &wasm,
    );
    let b = start_broker(|c| {
        c.limits.allow_anonymous = false;
        c.plugins = p;
    })
    .await;
    for v in ["mqttv311", "mqttv5"] {
        let (ok, err) = mosquitto_pub(&b, v, Some("alice"), Some("wonderland")).await;
        assert!(ok, "{v}: alice with her password is let in: {err}");
        let (ok, err) = mosquitto_pub(&b, v, Some("alice"), Some("wrong")).await;
        assert!(!ok, "{v}: a wrong password is refused");
        assert!(
            err.contains("not authorised") || err.contains("bad user name or password"),
            "{v}: {err}"
        );
        let (ok, _) = mosquitto_pub(&b, v, Some("mallory"), Some("anything")).await;
        assert!(!ok, "{v}: an unknown user is refused");
        let (ok, err) = mosquitto_pub(&b, v, None, None).await;
        assert!(!ok, "{v}: no username is refused");
        assert!(
            err.contains("not authorised") || err.contains("not authorized"),
            "{v}: {err}"
        );
    }
}

/// The hole of issue 19: a plugin that answers `ignore` for a username
/// (nobody authenticated it) must not let it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_nobody_authenticated_is_refused() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    // test-misbehave: alice/secret allowed, other user names ignored.
    let p = plugins(
        r#"
[[plugins.plugin]]
name = "mis"
path = "{wasm}/test_misbehave.wasm"
"#,
        &wasm,
    );
    let b = start_broker(|c| {
        c.limits.allow_anonymous = false;
        c.plugins = p;
    })
    .await;
    let login = |v5: bool, user: &str, password: &[u8]| {
        let id = unique("hole");
        let mut o = if v5 {
            ConnectOpts::v5(&id)
        } else {
            ConnectOpts::v4(&id)
        };
        o.username = Some(user.into());
        o.password = Some(password.to_vec());
        o
    };
    let mut c = RawClient::connect(b.addr).await;
    let ack = c.send_connect(&login(true, "bob", b"whatever")).await;
    assert_eq!(ack.code, 0x87, "5.0: not authorized");
    c.expect_closed().await;
    let mut c = RawClient::connect(b.addr).await;
    let ack = c.send_connect(&login(false, "bob", b"whatever")).await;
    assert_eq!(ack.code, 5, "3.1.1: not authorized");
    c.expect_closed().await;
    let (_c, ack) = RawClient::handshake(b.addr, login(true, "alice", b"secret")).await;
    assert_eq!(ack.code, 0, "the plugin's user gets in");
    assert_eq!(
        b.broker
            .stats
            .connections_refused_anonymous
            .load(Ordering::Relaxed),
        2
    );
    let r = Admin::of(&b).call("GET", "/metrics", None).await;
    let m = samples(&r.text());
    let value = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    assert_eq!(
        value(r#"midge_limit_triggered_total{limit="allow_anonymous"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(r#"midge_connections_refused_total{code="0x87"}"#),
        Some(2.0)
    );
    // With anonymous access on, the same ignored username is let in.
    let p = plugins(
        r#"
[[plugins.plugin]]
name = "mis"
path = "{wasm}/test_misbehave.wasm"
"#,
        &wasm,
    );
    let open = start_broker(|c| c.plugins = p).await;
    let (_c, ack) = RawClient::handshake(open.addr, login(true, "bob", b"x")).await;
    assert_eq!(ack.code, 0);
}
