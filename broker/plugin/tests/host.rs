//! The host's mechanics, with the real `test-misbehave` component: every
//! hook, failure policies, deadlines, memory caps, suspension, grants,
//! reload, pooling.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{auth, client, host, host_with_config, msg, plugin};
use midge_plugin::types::{
    Action, AuthDecision, AuthzDecision, AuthzRequest, Event, EventSet, HookSet, Message, Qos,
    SubscribedEvent,
};
use midge_plugin::{
    BatchItem, BatchVerdict, BrokerHandle, Changed, DatabaseConfig, FailurePolicy, Hook,
    KafkaConfig, PluginError, PluginsConfig, PublishVerdict, Services, FAIL_CLOSED_AUTH_REASON,
    FAIL_CLOSED_PUBLISH_REASON,
};
use parking_lot::Mutex;

fn batch_payload(v: &BatchVerdict) -> String {
    match v {
        BatchVerdict::Modified(Changed {
            payload: Some(p), ..
        }) => String::from_utf8_lossy(p).into_owned(),
        other => panic!("expected a changed payload, got {other:?}"),
    }
}

fn items(ms: &[Message]) -> Vec<BatchItem<'_>> {
    ms.iter().map(BatchItem::from).collect()
}

fn payload(v: &PublishVerdict) -> String {
    match v {
        PublishVerdict::Modified(m) => String::from_utf8_lossy(&m.payload).into_owned(),
        other => panic!("expected a modified message, got {other:?}"),
    }
}

#[tokio::test]
async fn every_hook_is_called_and_answers() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "m", "test_misbehave");
    p.grants.kv = Some("m".into());
    let host = host(vec![p]).await;

    let manifest = host.manifest("m").unwrap();
    assert_eq!(manifest.name, "test-misbehave");
    assert!(manifest
        .hooks
        .contains(HookSet::AUTHENTICATE | HookSet::ON_PUBLISH | HookSet::RULE_FUNCTIONS));
    assert!(host.has_hook(HookSet::AUTHORIZE));
    assert!(host.wants_publish("any/topic"));
    assert!(host.wants_event(EventSet::DELIVERED));

    // authenticate: allow (with attributes), superuser, deny, continue, ignore
    match host
        .authenticate(&auth("c1", Some("alice"), Some(b"secret")))
        .await
        .decision
    {
        AuthDecision::Allow(a) => {
            assert!(!a.superuser);
            assert_eq!(a.attributes, vec![("config".to_string(), "{}".to_string())]);
        }
        other => panic!("{other:?}"),
    }
    match host
        .authenticate(&auth("root", Some("alice"), Some(b"secret")))
        .await
        .decision
    {
        AuthDecision::Allow(a) => assert!(a.superuser),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        host.authenticate(&auth("c1", Some("alice"), Some(b"wrong")))
            .await
            .decision,
        AuthDecision::Deny(0x86)
    ));
    assert!(matches!(
        host.authenticate(&auth("c1", Some("carol"), None)).await.decision,
        AuthDecision::ContinueAuth(ref c) if c.data == b"challenge"
    ));
    let mut step2 = auth("c1", Some("carol"), None);
    step2.auth_method = Some("test".into());
    step2.auth_data = Some(b"response".to_vec());
    assert!(matches!(
        host.authenticate(&step2).await.decision,
        AuthDecision::Allow(_)
    ));
    assert!(matches!(
        host.authenticate(&auth("c1", Some("dave"), None))
            .await
            .decision,
        AuthDecision::Ignore
    ));

    // authorize
    let req = |topic: &str| AuthzRequest {
        client: client("c1", Some("alice")),
        action: Action::Publish,
        topic: topic.into(),
        qos: Qos::AtLeastOnce,
        retain: false,
    };
    assert_eq!(
        host.authorize(&req("allowed/x")).await.decision,
        AuthzDecision::Allow
    );
    assert_eq!(
        host.authorize(&req("denied/x")).await.decision,
        AuthzDecision::Deny
    );
    assert_eq!(
        host.authorize(&req("other/x")).await.decision,
        AuthzDecision::Ignore
    );

    // on-publish: modify, pass-through of publisher, drop, deny
    let out = host.on_publish(&msg("a/b", b"abc"), None).await;
    assert_eq!(payload(&out.decision), "cba");
    assert!(out.failures.is_empty());
    let who = host
        .on_publish(&msg("who", b""), Some(&client("pub-7", None)))
        .await;
    assert_eq!(payload(&who.decision), "pub-7");
    assert!(matches!(
        host.on_publish(&msg("drop", b""), None).await.decision,
        PublishVerdict::Drop
    ));
    assert!(matches!(
        host.on_publish(&msg("deny", b""), None).await.decision,
        PublishVerdict::Deny(0x99)
    ));
    let now = host.on_publish(&msg("clock", b""), None).await;
    let t: u64 = payload(&now.decision).parse().unwrap();
    assert!(t.abs_diff(midge_plugin::now_millis()) < 60_000);

    // on-event: counted by the plugin in kv
    let ev = Event::Subscribed(SubscribedEvent {
        client_id: "c1".into(),
        filter: "a/#".into(),
        qos: Qos::AtMostOnce,
    });
    assert!(host.on_event(&ev, 1).await.is_empty());
    assert!(host.on_event(&ev, 2).await.is_empty());
    let count = host
        .on_publish(&msg("get/events/subscribed", b""), None)
        .await;
    match count.decision {
        PublishVerdict::Modified(m) => assert_eq!(m.payload, 2i64.to_be_bytes().to_vec()),
        other => panic!("{other:?}"),
    }

    // on-rule-output
    host.on_rule_output("m", "r1", r#"[{"a":1}]"#)
        .await
        .unwrap();
    let rows = host.on_publish(&msg("get/rule/r1", b""), None).await;
    assert_eq!(payload(&rows.decision), r#"[{"a":1}]"#);
    let bad = host.on_rule_output("m", "r1", "nope").await.unwrap_err();
    assert!(
        matches!(
            bad,
            PluginError::Reported {
                hook: Hook::OnRuleOutput,
                ..
            }
        ),
        "{bad}"
    );

    // rule functions
    let fns = host.functions();
    assert_eq!(fns.len(), 3);
    assert_eq!((fns[0].0.as_str(), fns[0].1.name.as_str()), ("m", "double"));
    assert_eq!(
        host.call_function("double", &["21".into()]).await.unwrap(),
        "42"
    );
    assert!(matches!(
        host.call_function("double", &["\"x\"".into()]).await,
        Err(PluginError::Reported {
            hook: Hook::CallFunction,
            ..
        })
    ));
    assert!(matches!(
        host.call_function("nope", &[]).await,
        Err(PluginError::UnknownFunction(_))
    ));

    let m = host.plugin_metrics("m").unwrap();
    assert_eq!(m.failures, 0);
    assert!(m.calls >= 20, "{m:?}");
    assert_eq!(
        m.instances_created, 1,
        "calls in sequence reuse one warm instance"
    );
}

#[tokio::test]
async fn plugins_run_in_configured_order() {
    let dir = wasm_or_skip!();
    let host = host(vec![
        plugin(&dir, "first", "test_misbehave"),
        plugin(&dir, "second", "test_misbehave"),
    ])
    .await;
    assert_eq!(host.plugins(), vec!["first", "second"]);
    // each reverses the payload: the second sees the first's output
    let out = host.on_publish(&msg("x", b"abc"), None).await;
    assert_eq!(payload(&out.decision), "abc");
    // the first decisive answer wins
    let d = host
        .authenticate(&auth("c", Some("alice"), Some(b"secret")))
        .await;
    assert!(matches!(d.decision, AuthDecision::Allow(_)));
    assert_eq!(
        host.plugin_metrics("second").unwrap().calls,
        1,
        "only on-publish reached the second"
    );
}

/// A batch goes down the chain with one call per plugin; what one plugin
/// drops or refuses never reaches the next; a failed call fails each
/// message in it under the failure policy.
#[tokio::test]
async fn a_batch_takes_one_call_per_plugin_and_keeps_per_message_decisions() {
    let dir = wasm_or_skip!();
    let chain = host(vec![
        plugin(&dir, "first", "test_misbehave"),
        plugin(&dir, "second", "test_misbehave"),
    ])
    .await;
    let batch = vec![
        msg("a", b"abc"),
        msg("drop", b""),
        msg("deny", b""),
        msg("who", b""),
    ];
    let out = chain
        .on_publish_batch(&items(&batch), Some(&client("pub-7", None)))
        .await;
    // reversed twice: the second saw the first's output
    assert_eq!(batch_payload(&out[0].decision), "abc");
    assert!(matches!(out[1].decision, BatchVerdict::Drop));
    assert!(matches!(out[2].decision, BatchVerdict::Deny(0x99)));
    // "who" answers the publisher's id (both plugins see the same publisher)
    assert_eq!(batch_payload(&out[3].decision), "pub-7");
    for name in ["first", "second"] {
        assert_eq!(chain.plugin_metrics(name).unwrap().calls, 1, "{name}");
    }

    let mut closed = plugin(&dir, "closed", "test_misbehave");
    closed.failure.on_publish = FailurePolicy::Closed;
    let host_closed = host(vec![closed]).await;
    let two = [msg("x", b"ab"), msg("trap", b"")];
    let out = host_closed.on_publish_batch(&items(&two), None).await;
    for o in &out {
        assert!(matches!(
            o.decision,
            BatchVerdict::Deny(FAIL_CLOSED_PUBLISH_REASON)
        ));
        assert!(matches!(
            o.failures[..],
            [PluginError::Trap {
                hook: Hook::OnPublish,
                ..
            }]
        ));
    }
    let host_open = host(vec![plugin(&dir, "open", "test_misbehave")]).await;
    let out = host_open.on_publish_batch(&items(&two), None).await;
    assert!(out
        .iter()
        .all(|o| matches!(o.decision, BatchVerdict::Pass) && o.failures.len() == 1));

    // An answer with a decision missing fails the whole call, by name.
    let short = [msg("x", b"ab"), msg("short-batch", b""), msg("y", b"cd")];
    let out = host_open.on_publish_batch(&items(&short), None).await;
    for o in &out {
        assert!(matches!(o.decision, BatchVerdict::Pass), "{:?}", o.decision);
        match &o.failures[..] {
            [PluginError::Invalid {
                plugin, problem, ..
            }] => {
                assert_eq!(plugin, "open");
                assert!(problem.contains("2 decisions for 3 messages"), "{problem}");
            }
            other => panic!("expected one invalid-output failure, got {other:?}"),
        }
    }
}

/// Only what a plugin changed comes back from a batch, and a change of one
/// field keeps the others (topic, qos, retain, properties) as they were.
#[tokio::test]
async fn a_batch_answer_carries_only_what_changed() {
    let dir = wasm_or_skip!();
    let host = host(vec![plugin(&dir, "rev", "test_misbehave")]).await;
    let mut m = msg("keep/topic", b"xyz");
    m.qos = Qos::AtLeastOnce;
    m.retain = true;
    m.properties.user_properties = vec![("k".into(), "v".into())];
    let out = host
        .on_publish_batch(&items(&[m.clone(), msg("deny", b"")]), None)
        .await;
    match &out[0].decision {
        BatchVerdict::Modified(c) => {
            assert_eq!(c.payload.as_deref(), Some(&b"zyx"[..]));
            assert!(c.topic.is_none() && c.qos.is_none() && c.retain.is_none());
            assert!(
                c.properties.is_none(),
                "properties unchanged: not sent back"
            );
        }
        other => panic!("expected a changed payload, got {other:?}"),
    }
    assert!(matches!(out[1].decision, BatchVerdict::Deny(0x99)));
}

#[tokio::test]
async fn trap_is_answered_per_failure_policy() {
    let dir = wasm_or_skip!();
    let mut closed = plugin(&dir, "closed", "test_misbehave");
    closed.failure.on_publish = FailurePolicy::Closed;
    let host_closed = host(vec![closed]).await;
    let out = host_closed
        .authenticate(&auth("c", Some("trap"), None))
        .await;
    assert!(matches!(
        out.decision,
        AuthDecision::Deny(FAIL_CLOSED_AUTH_REASON)
    ));
    match &out.failures[..] {
        [PluginError::Trap {
            plugin,
            hook: Hook::Authenticate,
            message,
        }] => {
            assert_eq!(plugin, "closed");
            assert!(
                message.contains("unreachable") || message.contains("wasm"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let out = host_closed.on_publish(&msg("trap", b""), None).await;
    assert!(matches!(
        out.decision,
        PublishVerdict::Deny(FAIL_CLOSED_PUBLISH_REASON)
    ));
    // the trapped instance was discarded; the plugin still works
    assert_eq!(
        payload(
            &host_closed
                .on_publish(&msg("t", b"ab"), None)
                .await
                .decision
        ),
        "ba"
    );
    let m = host_closed.plugin_metrics("closed").unwrap();
    assert_eq!((m.traps, m.failures), (2, 2));
    assert!(m.instances_created >= 2);

    let mut open = plugin(&dir, "open", "test_misbehave");
    open.failure.authenticate = FailurePolicy::Open;
    let host_open = host(vec![open]).await;
    let out = host_open.authenticate(&auth("c", Some("trap"), None)).await;
    assert!(matches!(out.decision, AuthDecision::Ignore));
    assert_eq!(out.failures.len(), 1);
    let out = host_open.on_publish(&msg("trap", b""), None).await;
    assert!(
        matches!(out.decision, PublishVerdict::Pass),
        "on-publish fails open by default"
    );
}

#[tokio::test]
async fn infinite_loop_times_out_then_plugin_is_suspended() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "spin", "test_misbehave");
    p.limits.deadline_ms = 50;
    p.limits.suspend_after = 3;
    p.limits.suspend_secs = 3600;
    let host = host(vec![p]).await;

    for i in 0..3 {
        let started = Instant::now();
        let out = host.on_publish(&msg("loop", b""), None).await;
        let took = started.elapsed();
        assert!(matches!(out.decision, PublishVerdict::Pass));
        match &out.failures[..] {
            [PluginError::Timeout {
                plugin,
                hook: Hook::OnPublish,
                deadline,
            }] => {
                assert_eq!(plugin, "spin");
                assert_eq!(*deadline, Duration::from_millis(50));
            }
            other => panic!("call {i}: {other:?}"),
        }
        // Not before its deadline (the Timeout above shows it was cut off).
        assert!(took >= Duration::from_millis(50), "{took:?}");
    }
    let m = host.plugin_metrics("spin").unwrap();
    assert_eq!((m.timeouts, m.suspensions), (3, 1));
    assert!(m.suspended);

    // suspended: answered per policy without calling the plugin
    let calls = m.calls;
    let out = host
        .authenticate(&auth("c", Some("alice"), Some(b"secret")))
        .await;
    assert!(matches!(
        out.decision,
        AuthDecision::Deny(FAIL_CLOSED_AUTH_REASON)
    ));
    assert!(matches!(
        &out.failures[..],
        [PluginError::Suspended {
            hook: Hook::Authenticate,
            ..
        }]
    ));
    let out = host.on_publish(&msg("x", b"ab"), None).await;
    assert!(matches!(out.decision, PublishVerdict::Pass));
    let m = host.plugin_metrics("spin").unwrap();
    assert_eq!(m.calls, calls);
    assert_eq!(m.suspended_calls, 2);

    // a reload lifts the suspension
    host.reload("spin").await.unwrap();
    assert_eq!(
        payload(&host.on_publish(&msg("x", b"ab"), None).await.decision),
        "ba"
    );
}

#[tokio::test]
async fn init_deadline_and_failure_are_load_errors() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "bad", "test_misbehave");
    p.config = serde_json::json!({ "mode": "fail-init" });
    let config = PluginsConfig {
        plugins: vec![p],
        ..PluginsConfig::default()
    };
    let err = midge_plugin::PluginHost::load(&config, Services::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::Load { plugin, message } if plugin == "bad" && message.contains("asked to fail")),
        "{err}"
    );
}

#[tokio::test]
async fn memory_cap_is_enforced() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "hog", "test_misbehave");
    p.limits.memory_mib = 16;
    // The cap is under test, not the deadline (100 ms by default, which
    // growing to the cap can overrun on a loaded machine).
    p.limits.deadline_ms = 5000;
    p.failure.on_publish = FailurePolicy::Closed;
    let host = host(vec![p]).await;
    let out = host.on_publish(&msg("oom", b""), None).await;
    assert!(matches!(
        out.decision,
        PublishVerdict::Deny(FAIL_CLOSED_PUBLISH_REASON)
    ));
    match &out.failures[..] {
        [PluginError::OutOfMemory {
            plugin,
            hook: Hook::OnPublish,
            limit_bytes,
        }] => {
            assert_eq!(plugin, "hog");
            assert_eq!(*limit_bytes, 16 << 20);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(host.plugin_metrics("hog").unwrap().out_of_memory, 1);
    // still serving with a fresh instance
    assert_eq!(
        payload(&host.on_publish(&msg("x", b"12"), None).await.decision),
        "21"
    );
}

#[tokio::test]
async fn capabilities_need_grants() {
    let dir = wasm_or_skip!();
    let host = host(vec![plugin(&dir, "bare", "test_misbehave")]).await;
    let ask = |topic: &'static str| {
        let host = host.clone();
        async move { payload(&host.on_publish(&msg(topic, b"v"), None).await.decision) }
    };
    assert_eq!(ask("kv").await, "KvError::NotGranted");
    assert_eq!(ask("publish").await, "PublishError::NotGranted");
    assert_eq!(ask("sql").await, "SqlError::NotGranted");
    assert_eq!(ask("kafka").await, "KafkaError::NotGranted");
    // no files, directories, environment or network without grants
    let fs = ask("fs").await;
    assert!(fs.contains("env=0"), "{fs}");
    assert!(
        !fs.contains("file=read") && !fs.contains("dir=listed") && !fs.contains("net=connected"),
        "{fs}"
    );
}

#[derive(Default)]
struct RecordingBroker {
    published: Mutex<Vec<(String, Message)>>,
}

impl BrokerHandle for RecordingBroker {
    fn publish(&self, plugin: &str, message: Message) -> Result<(), String> {
        self.published.lock().push((plugin.to_string(), message));
        Ok(())
    }
}

#[tokio::test]
async fn granted_capabilities_work() {
    let dir = wasm_or_skip!();
    let broker = Arc::new(RecordingBroker::default());
    let mut p = plugin(&dir, "full", "test_misbehave");
    p.grants.kv = Some("shared".into());
    p.grants.publish = vec!["echo/+".into()];
    p.grants.sql = Some("main".into());
    p.grants.kafka = vec!["t".into()];
    let config = PluginsConfig {
        plugins: vec![p],
        // configured, but this host is given no backends (the broker wires them)
        databases: [(
            "main".to_string(),
            toml_value::<DatabaseConfig>("url = 'host=127.0.0.1'"),
        )]
        .into(),
        kafka: Some(toml_value::<KafkaConfig>("brokers = '127.0.0.1:1'")),
        ..PluginsConfig::default()
    };
    let host = host_with_config(
        config,
        Services {
            broker: Some(broker.clone()),
            ..Services::default()
        },
    )
    .await;
    let ask = |topic: &'static str, body: &'static [u8]| {
        let host = host.clone();
        async move { payload(&host.on_publish(&msg(topic, body), None).await.decision) }
    };
    assert_eq!(ask("kv", b"stored").await, "stored");
    assert_eq!(ask("publish", b"one").await, "ok");
    assert_eq!(
        ask("publish", b"one/two").await,
        "PublishError::TopicNotGranted(\"echo/one/two\")"
    );
    assert_eq!(ask("publish", b"+").await, "PublishError::InvalidTopic");
    {
        let published = broker.published.lock();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].0, "full");
        assert_eq!(published[0].1.topic, "echo/one");
    }
    // granted, but no backend in this broker: a typed error, not a fake success
    assert!(ask("sql", b"").await.starts_with("SqlError::Unavailable("));
    assert!(ask("kafka", b"")
        .await
        .starts_with("KafkaError::Unavailable("));
}

#[tokio::test]
async fn reload_swaps_and_bad_reload_keeps_the_old_version() {
    let dir = wasm_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("p.wasm");
    std::fs::copy(dir.join("auth_password.wasm"), &path).unwrap();
    let host = host(vec![midge_plugin::PluginConfig::new("p", &path)]).await;
    assert_eq!(host.manifest("p").unwrap().name, "auth-password");
    assert!(!host.wants_publish("x"));
    // unchanged file: nothing to do
    assert!(matches!(&host.reload_changed().await[..], [(n, Ok(false))] if n == "p"));

    std::fs::copy(dir.join("test_misbehave.wasm"), &path).unwrap();
    assert!(matches!(&host.reload_changed().await[..], [(_, Ok(true))]));
    assert_eq!(host.manifest("p").unwrap().name, "test-misbehave");
    assert_eq!(
        payload(&host.on_publish(&msg("x", b"ab"), None).await.decision),
        "ba"
    );

    std::fs::write(&path, b"\0asm garbage").unwrap();
    let err = host.reload("p").await.unwrap_err();
    assert!(
        matches!(&err, PluginError::Load { plugin, .. } if plugin == "p"),
        "{err}"
    );
    assert_eq!(host.manifest("p").unwrap().name, "test-misbehave");
    assert_eq!(
        payload(&host.on_publish(&msg("x", b"ab"), None).await.decision),
        "ba"
    );
    let m = host.plugin_metrics("p").unwrap();
    assert_eq!((m.reloads, m.reload_failures), (1, 1));
    assert!(matches!(
        host.reload("nope").await,
        Err(PluginError::UnknownPlugin(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_count_is_bounded() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "one", "test_misbehave");
    p.limits.max_instances = 1;
    p.limits.deadline_ms = 300;
    p.limits.queue_timeout_ms = 20;
    let host = host(vec![p]).await;
    let spinning = {
        let host = host.clone();
        tokio::spawn(async move { host.on_publish(&msg("loop", b""), None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
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
    let m = host.plugin_metrics("one").unwrap();
    assert_eq!(m.busy, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_use_several_warm_instances() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "pool", "test_misbehave");
    p.limits.max_instances = 3;
    let host = host(vec![p]).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!("{i:03}");
            let out = host.on_publish(&msg("x", body.as_bytes()), None).await;
            assert_eq!(
                payload(&out.decision),
                body.chars().rev().collect::<String>()
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = host.plugin_metrics("pool").unwrap();
    assert!(m.instances_created <= 3, "{m:?}");
    assert_eq!(m.failures, 0);
}

#[tokio::test]
async fn config_parses_from_toml() {
    let dir = wasm_or_skip!();
    let kv = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        kv_path = "{kv}"
        [[plugin]]
        name = "m"
        path = "{wasm}"
        config = {{ answer = 42 }}
        grants = {{ kv = "ns", publish = ["echo/#"] }}
        limits = {{ memory_mib = 32, deadline_ms = 20, max_instances = 2 }}
        failure = {{ authenticate = "open" }}
        "#,
        kv = kv.path().display(),
        wasm = dir.join("test_misbehave.wasm").display()
    );
    let config: PluginsConfig = toml::from_str(&text).unwrap();
    assert_eq!(config.plugins[0].failure.authenticate, FailurePolicy::Open);
    assert_eq!(config.plugins[0].failure.authorize, FailurePolicy::Closed);
    let host = midge_plugin::PluginHost::load(&config, Services::default())
        .await
        .unwrap();
    match host
        .authenticate(&auth("c", Some("alice"), Some(b"secret")))
        .await
        .decision
    {
        AuthDecision::Allow(a) => assert_eq!(a.attributes[0].1, r#"{"answer":42}"#),
        other => panic!("{other:?}"),
    }
    let bad: Result<PluginsConfig, _> =
        toml::from_str("[[plugin]]\nname = \"x\"\npath = \"y\"\nbogus = 1\n");
    assert!(bad.is_err());
}

async fn errors_of(config: &PluginsConfig) -> String {
    let errors = midge_plugin::PluginHost::check(config).await;
    assert!(midge_plugin::PluginHost::load(config, Services::default())
        .await
        .is_err());
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn toml_value<T: serde::de::DeserializeOwned>(text: &str) -> T {
    toml::from_str(text).expect("test TOML parses")
}

#[tokio::test]
async fn sql_and_kafka_grants_must_name_configured_backends() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "archiver", "test_misbehave");
    p.grants.sql = Some("archive".into());
    p.grants.kafka = vec!["t".into()];
    let config = PluginsConfig {
        plugins: vec![p],
        ..PluginsConfig::default()
    };
    let err = errors_of(&config).await;
    assert!(
        err.contains("plugin archiver: grants.sql names database \"archive\""),
        "{err}"
    );
    assert!(err.contains("[plugins.databases.archive]"), "{err}");
    assert!(
        err.contains("plugin archiver: grants.kafka needs a [plugins.kafka]"),
        "{err}"
    );
    let config: PluginsConfig = toml::from_str(
        "[databases.main]\nurl = 'host=127.0.0.1'\nconnections = 0\n[kafka]\nbrokers = ''\n",
    )
    .unwrap();
    let err = errors_of(&config).await;
    assert!(err.contains("plugins.databases.main: connections"), "{err}");
    assert!(err.contains("plugins.kafka: brokers must be set"), "{err}");
    let config: PluginsConfig = toml::from_str(
        "[databases.main]\nurl = 'x'\n[kafka]\nbrokers = 'h:1'\nproperties = { 'acks' = 'all' }\n",
    )
    .unwrap();
    assert_eq!(config.databases["main"].batch_max_rows, 1000);
    assert_eq!(config.kafka.unwrap().properties["acks"], "all");
}
