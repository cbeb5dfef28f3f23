//! `PluginHost::apply`: a new `[plugins]` configuration applied to the
//! running host, with the real `test-misbehave` and `transform` components.

#![allow(clippy::unwrap_used)] // test helpers
mod common;

use common::{auth, msg, plugin};
use midge_plugin::types::{AuthDecision, PublishVerdict};
use midge_plugin::{
    DatabaseConfig, FailurePolicy, KafkaConfig, PluginConfig, PluginError, PluginHost,
    PluginsConfig, Services, FAIL_CLOSED_PUBLISH_REASON,
};

/// A `[plugins]` config with its kv store in a fresh directory (kept for
/// the test: apply compares it with the running one).
fn config(plugins: Vec<PluginConfig>) -> PluginsConfig {
    PluginsConfig {
        kv_path: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep(),
        plugins,
        ..PluginsConfig::default()
    }
}

async fn load(config: &PluginsConfig) -> PluginHost {
    PluginHost::load(config, Services::default()).await.unwrap()
}

/// test-misbehave with `config` handed to its init (it answers alice's
/// authentication with that text as the `config` attribute).
fn misbehave(dir: &std::path::Path, name: &str, init: serde_json::Value) -> PluginConfig {
    let mut p = plugin(dir, name, "test_misbehave");
    p.config = init;
    p
}

/// The `config` attribute of the plugin that answered alice: which plugin
/// (first decisive in chain order) with which init config.
async fn answered_by(host: &PluginHost) -> String {
    match host
        .authenticate(&auth("c", Some("alice"), Some(b"secret")))
        .await
        .decision
    {
        AuthDecision::Allow(a) => a
            .attributes
            .into_iter()
            .find(|(k, _)| k == "config")
            .map(|(_, v)| v)
            .unwrap(),
        other => panic!("{other:?}"),
    }
}

fn payload(v: &PublishVerdict) -> String {
    match v {
        PublishVerdict::Modified(m) => String::from_utf8_lossy(&m.payload).into_owned(),
        other => panic!("expected a modified message, got {other:?}"),
    }
}

#[tokio::test]
async fn changed_config_is_applied_and_metrics_carry_over() {
    let dir = wasm_or_skip!();
    let mut cfg = config(vec![misbehave(&dir, "m", serde_json::json!({ "v": 1 }))]);
    let host = load(&cfg).await;
    assert_eq!(answered_by(&host).await, r#"{"v":1}"#);

    cfg.plugins[0].config = serde_json::json!({ "v": 2 });
    let report = host.apply(&cfg).await;
    assert_eq!(report.reloaded, vec!["m"]);
    assert!(report.added.is_empty() && report.removed.is_empty() && report.refused.is_empty());
    assert!(report.restart_needed.is_empty());
    assert_eq!(
        answered_by(&host).await,
        r#"{"v":2}"#,
        "init saw the new config"
    );
    assert_eq!(host.plugin_config("m").unwrap().config["v"], 2);
    let m = host.plugin_metrics("m").unwrap();
    assert_eq!((m.calls, m.reloads, m.reload_failures), (2, 1, 0));
}

#[tokio::test]
async fn unchanged_plugin_keeps_its_warm_instance_metrics_and_switch() {
    let dir = wasm_or_skip!();
    let cfg = config(vec![
        misbehave(&dir, "kept", serde_json::json!({})),
        misbehave(&dir, "other", serde_json::json!({ "v": 1 })),
    ]);
    let host = load(&cfg).await;
    for _ in 0..3 {
        host.on_publish(&msg("x", b"ab"), None).await;
    }
    host.set_enabled("kept", false).unwrap();
    let before = host.plugin_metrics("kept").unwrap();
    assert_eq!((before.calls, before.instances_created), (3, 1));

    let mut next = cfg.clone();
    next.plugins[1].config = serde_json::json!({ "v": 2 });
    let report = host.apply(&next).await;
    assert_eq!(report.reloaded, vec!["other"], "only the changed one");
    let after = host.plugin_metrics("kept").unwrap();
    assert_eq!(after, before, "same instance, counters and switch");
    assert_eq!(host.is_enabled("kept"), Some(false));
    assert_eq!(after.idle_instances, 1);

    // The same configuration again: nothing to do at all.
    let report = host.apply(&next).await;
    assert!(report.reloaded.is_empty() && report.refused.is_empty());
    assert_eq!(report.chain, vec!["kept", "other"]);
}

#[tokio::test]
async fn a_refused_change_keeps_the_previous_version_and_others_still_apply() {
    let dir = wasm_or_skip!();
    let cfg = config(vec![
        misbehave(&dir, "bad", serde_json::json!({ "v": 1 })),
        misbehave(&dir, "good", serde_json::json!({ "v": 1 })),
    ]);
    let host = load(&cfg).await;

    let mut next = cfg.clone();
    // init refuses this config
    next.plugins[0].config = serde_json::json!({ "mode": "fail-init" });
    next.plugins[1].config = serde_json::json!({ "v": 2 });
    // a new plugin whose file is not there, one granted an undefined database
    next.plugins
        .push(PluginConfig::new("missing", dir.join("no-such.wasm")));
    let mut nodb = misbehave(&dir, "nodb", serde_json::json!({}));
    nodb.grants.sql = Some("archive".into());
    next.plugins.push(nodb);
    let report = host.apply(&next).await;

    assert_eq!(report.reloaded, vec!["good"]);
    assert!(report.added.is_empty(), "{:?}", report.added);
    let refused: Vec<&str> = report.refused.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(refused, vec!["bad", "missing", "nodb"]);
    assert!(
        matches!(&report.refused[0].1, PluginError::Load { plugin, message } if plugin == "bad" && message.contains("init refused") && message.contains("asked to fail")),
        "{}",
        report.refused[0].1
    );
    let e = report.refused[1].1.to_string();
    assert!(e.contains("missing") && e.contains("no-such.wasm"), "{e}");
    let e = report.refused[2].1.to_string();
    assert!(
        e.contains("plugin nodb: grants.sql names database \"archive\""),
        "{e}"
    );

    assert_eq!(host.plugins(), vec!["bad", "good"]);
    // `bad` still runs its previous version (first in the chain, v1)
    assert_eq!(answered_by(&host).await, r#"{"v":1}"#);
    assert_eq!(host.plugin_config("bad").unwrap().config["v"], 1);
    assert_eq!(host.plugin_config("good").unwrap().config["v"], 2);
    let m = host.plugin_metrics("bad").unwrap();
    assert_eq!((m.reloads, m.reload_failures), (0, 1));
}

#[tokio::test]
async fn plugins_are_added_removed_and_reordered() {
    let dir = wasm_or_skip!();
    let a = misbehave(&dir, "a", serde_json::json!({ "id": "a" }));
    let b = misbehave(&dir, "b", serde_json::json!({ "id": "b" }));
    let base = config(vec![a.clone()]);
    let host = load(&base).await;
    // one plugin: the payload reversed once
    assert_eq!(
        payload(&host.on_publish(&msg("x", b"abc"), None).await.decision),
        "cba"
    );

    let mut next = base.clone();
    next.plugins = vec![a.clone(), b.clone()];
    let report = host.apply(&next).await;
    assert_eq!(report.added, vec!["b"]);
    assert_eq!(host.plugins(), vec!["a", "b"]);
    // both act: reversed twice
    assert_eq!(
        payload(&host.on_publish(&msg("x", b"abc"), None).await.decision),
        "abc"
    );
    assert_eq!(answered_by(&host).await, r#"{"id":"a"}"#);

    next.plugins = vec![b.clone(), a.clone()];
    let report = host.apply(&next).await;
    assert!(report.added.is_empty() && report.removed.is_empty() && report.reloaded.is_empty());
    assert_eq!(report.chain, vec!["b", "a"]);
    assert_eq!(
        answered_by(&host).await,
        r#"{"id":"b"}"#,
        "b is asked first now"
    );

    next.plugins = vec![b.clone()];
    let report = host.apply(&next).await;
    assert_eq!(report.removed, vec!["a"]);
    assert_eq!(host.plugins(), vec!["b"]);
    assert_eq!(
        payload(&host.on_publish(&msg("x", b"abc"), None).await.decision),
        "cba"
    );
    assert!(host.plugin_metrics("a").is_none());

    // `enabled = false` in the file takes it out of the chain as at start.
    let mut off = b.clone();
    off.enabled = false;
    next.plugins = vec![off, a.clone()];
    let report = host.apply(&next).await;
    assert_eq!(
        (report.added.clone(), report.removed.clone()),
        (vec!["a".to_string()], vec!["b".to_string()])
    );
    assert_eq!(host.plugins(), vec!["a"]);
    assert_eq!(host.disabled_in_config(), vec!["b"]);
}

#[tokio::test]
async fn changed_limits_and_failure_policy_take_effect() {
    let dir = wasm_or_skip!();
    let mut p = misbehave(&dir, "hog", serde_json::json!({}));
    p.limits.memory_mib = 32;
    // The memory cap is under test, not the deadline: under load, growing
    // to 32 MiB took longer than the default 100 ms and timed out first.
    p.limits.deadline_ms = 5000;
    p.failure.on_publish = FailurePolicy::Closed;
    let mut cfg = config(vec![p]);
    let host = load(&cfg).await;
    let limit_hit = |out: &midge_plugin::Outcome<PublishVerdict>| match &out.failures[..] {
        [PluginError::OutOfMemory { limit_bytes, .. }] => *limit_bytes,
        other => panic!("{other:?}"),
    };
    let out = host.on_publish(&msg("oom", b""), None).await;
    assert_eq!(limit_hit(&out), 32 << 20);

    cfg.plugins[0].limits.memory_mib = 16;
    assert_eq!(host.apply(&cfg).await.reloaded, vec!["hog"]);
    let out = host.on_publish(&msg("oom", b""), None).await;
    assert_eq!(limit_hit(&out), 16 << 20, "the new memory cap");
    assert!(matches!(
        out.decision,
        PublishVerdict::Deny(FAIL_CLOSED_PUBLISH_REASON)
    ));

    cfg.plugins[0].failure.on_publish = FailurePolicy::Open;
    assert_eq!(host.apply(&cfg).await.reloaded, vec!["hog"]);
    let out = host.on_publish(&msg("trap", b""), None).await;
    assert!(
        matches!(out.decision, PublishVerdict::Pass),
        "fails open now: {:?}",
        out.decision
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_max_instances_bounds_the_new_versions_pool() {
    let dir = wasm_or_skip!();
    let mut p = misbehave(&dir, "pool", serde_json::json!({}));
    p.limits.max_instances = 4;
    p.limits.deadline_ms = 3000;
    p.limits.queue_timeout_ms = 50;
    let mut cfg = config(vec![p]);
    let host = load(&cfg).await;
    cfg.plugins[0].limits.max_instances = 1;
    assert_eq!(host.apply(&cfg).await.reloaded, vec!["pool"]);

    // One call spins (holding the only instance until its deadline)...
    let spinning = {
        let host = host.clone();
        tokio::spawn(async move { host.on_publish(&msg("loop", b""), None).await })
    };
    // ...`calls` counts it once it holds its instance.
    let mut waited = 0;
    while host.plugin_metrics("pool").unwrap().calls == 0 {
        assert!(waited < 2000, "the spinning call never started");
        waited += 1;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // With the old pool of 4 this call would find a free instance.
    let out = host.on_publish(&msg("x", b"ab"), None).await;
    assert!(
        matches!(
            &out.failures[..],
            [PluginError::Busy {
                max_instances: 1,
                ..
            }]
        ),
        "{:?}",
        out.failures
    );
    let spun = spinning.await.unwrap();
    assert!(matches!(&spun.failures[..], [PluginError::Timeout { .. }]));
}

#[tokio::test]
async fn a_new_kv_grant_and_host_wide_changes() {
    let dir = wasm_or_skip!();
    let cfg = config(vec![misbehave(&dir, "m", serde_json::json!({}))]);
    let host = load(&cfg).await;
    // no kv grant at start: kv answers not granted
    let kv = payload(&host.on_publish(&msg("kv", b"v1"), None).await.decision);
    assert_eq!(kv, "KvError::NotGranted");

    let mut next = cfg.clone();
    next.plugins[0].grants.kv = Some("m".into());
    next.databases.insert(
        "archive".into(),
        toml::from_str::<DatabaseConfig>("url = 'host=127.0.0.1'").unwrap(),
    );
    next.kafka = Some(toml::from_str::<KafkaConfig>("brokers = '127.0.0.1:9092'").unwrap());
    next.epoch_tick_ms = 5;
    let report = host.apply(&next).await;
    assert_eq!(report.reloaded, vec!["m"]);
    assert_eq!(
        report.restart_needed,
        vec![
            "plugins.epoch_tick_ms",
            "plugins.databases",
            "plugins.kafka"
        ]
    );
    // the kv store opened on demand for the new grant
    assert_eq!(
        payload(&host.on_publish(&msg("kv", b"v1"), None).await.decision),
        "v1"
    );

    // a grant of the database the file now defines but the host lacks
    next.plugins[0].grants.sql = Some("archive".into());
    let report = host.apply(&next).await;
    let e = report.refused[0].1.to_string();
    assert!(
        e.contains("plugin m: grants.sql names database \"archive\", which the running broker does not have"),
        "{e}"
    );
    assert!(host.plugin_config("m").unwrap().grants.sql.is_none());
}
