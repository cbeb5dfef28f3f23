//! Plugin answers checked as if a client had sent them, with the real
//! `test-misbehave` component: every kind of invalid output is a failure
//! of the call (Invalid, counted, answered by the failure policy, toward
//! suspension), on the single and the batch path; suspension counts each
//! hook's failures whatever the other hooks answer; panics and stack
//! overflows are named.

mod common;

use std::sync::Arc;

use common::{auth, host, host_with, msg, plugin};
use midge_plugin::types::{Action, AuthDecision, AuthzDecision, AuthzRequest, Message, Qos};
use midge_plugin::{
    BatchItem, BatchVerdict, BrokerHandle, FailurePolicy, Hook, OutputLimits, PluginConfig,
    PluginError, PluginHost, PublishVerdict, Services, FAIL_CLOSED_AUTH_REASON,
    FAIL_CLOSED_PUBLISH_REASON,
};
use parking_lot::Mutex;

/// Every `bad/<case>` of test-misbehave and a piece of what the failure
/// must say.
const BAD: &[(&str, &str)] = &[
    ("topic-hash", "has a wildcard"),
    ("topic-plus", "has a wildcard"),
    ("topic-empty", "topic is empty"),
    ("topic-long", "70000 bytes"),
    ("topic-nul", "holds U+0000"),
    ("dollar", "starts with $"),
    ("response-topic", "response topic"),
    ("utf8", "payload-format indicator"),
    ("big", "above the broker's max_packet_size of 1048576"),
    ("user-property-nul", "user property value"),
    ("correlation-big", "correlation data"),
    ("deny-0", "deny(0x00)"),
    ("deny-10", "deny(0x10)"),
];

fn limits() -> OutputLimits {
    OutputLimits {
        max_packet_size: 1 << 20,
        ..OutputLimits::default()
    }
}

async fn host_policy(dir: &std::path::Path, policy: FailurePolicy) -> PluginHost {
    let mut p = plugin(dir, "bad", "test_misbehave");
    p.failure.on_publish = policy;
    p.limits.suspend_after = 0;
    // Moving megabytes through a debug build of the host takes time on a
    // busy machine; deadlines have their own tests.
    p.limits.deadline_ms = 10_000;
    host_with(
        vec![p],
        Services {
            limits: limits(),
            ..Services::default()
        },
    )
    .await
}

fn invalid(failures: &[PluginError]) -> &str {
    match failures {
        [PluginError::Invalid {
            plugin,
            hook: Hook::OnPublish,
            problem,
        }] => {
            assert_eq!(plugin, "bad");
            problem
        }
        other => panic!("expected one Invalid failure, got {other:?}"),
    }
}

#[tokio::test]
async fn each_invalid_on_publish_answer_is_a_failure_under_either_policy() {
    let dir = wasm_or_skip!();
    let open = host_policy(&dir, FailurePolicy::Open).await;
    let closed = host_policy(&dir, FailurePolicy::Closed).await;
    for (n, (case, says)) in BAD.iter().enumerate() {
        let m = msg(&format!("bad/{case}"), b"");
        let out = open.on_publish(&m, None).await;
        assert!(
            matches!(out.decision, PublishVerdict::Pass),
            "{case}: open passes the original, got {:?}",
            out.decision
        );
        let problem = invalid(&out.failures);
        assert!(problem.contains(says), "{case}: {problem}");
        let out = closed.on_publish(&m, None).await;
        assert!(
            matches!(
                out.decision,
                PublishVerdict::Deny(FAIL_CLOSED_PUBLISH_REASON)
            ),
            "{case}: closed refuses, got {:?}",
            out.decision
        );
        assert!(invalid(&out.failures).contains(says));
        for h in [&open, &closed] {
            let mt = h.plugin_metrics("bad").unwrap();
            assert_eq!(mt.invalid_outputs, n as u64 + 1, "{case}");
            assert_eq!(mt.failures, n as u64 + 1, "{case}");
        }
    }
    // A valid answer is still taken.
    let out = open.on_publish(&msg("t", b"ab"), None).await;
    assert!(out.failures.is_empty());
    assert!(matches!(out.decision, PublishVerdict::Modified(m) if m.payload == b"ba"));
}

#[tokio::test]
async fn each_invalid_message_of_a_batch_fails_alone() {
    let dir = wasm_or_skip!();
    let open = host_policy(&dir, FailurePolicy::Open).await;
    let closed = host_policy(&dir, FailurePolicy::Closed).await;
    // A good message around every bad one: only the bad ones fail.
    let mut ms = vec![msg("t", b"ab")];
    for (case, _) in BAD {
        ms.push(msg(&format!("bad/{case}"), b""));
        ms.push(msg("t", b"cd"));
    }
    let items: Vec<BatchItem<'_>> = ms.iter().map(BatchItem::from).collect();
    for (host, is_open) in [(&open, true), (&closed, false)] {
        let out = host.on_publish_batch(&items, None).await;
        assert_eq!(out.len(), ms.len());
        for (k, o) in out.iter().enumerate() {
            if k % 2 == 0 {
                assert!(o.failures.is_empty(), "{k}: {:?}", o.failures);
                assert!(matches!(o.decision, BatchVerdict::Modified(_)), "{k}");
                continue;
            }
            let (case, says) = BAD[k / 2];
            let problem = invalid(&o.failures);
            assert!(problem.contains(says), "{case}: {problem}");
            if is_open {
                assert!(
                    matches!(o.decision, BatchVerdict::Pass),
                    "{case}: {:?}",
                    o.decision
                );
            } else {
                assert!(
                    matches!(o.decision, BatchVerdict::Deny(FAIL_CLOSED_PUBLISH_REASON)),
                    "{case}: {:?}",
                    o.decision
                );
            }
        }
        // One call, one failure counted.
        let m = host.plugin_metrics("bad").unwrap();
        assert_eq!((m.invalid_outputs, m.failures), (1, 1));
    }
    // A batch answer with a decision missing fails every message in it,
    // and is counted as invalid output too.
    let short = [msg("t", b"x"), msg("short-batch", b"y")];
    let items: Vec<BatchItem<'_>> = short.iter().map(BatchItem::from).collect();
    let out = closed.on_publish_batch(&items, None).await;
    for o in &out {
        assert!(matches!(
            o.decision,
            BatchVerdict::Deny(FAIL_CLOSED_PUBLISH_REASON)
        ));
        assert!(invalid(&o.failures).contains("1 decisions for 2 messages"));
    }
    assert_eq!(closed.plugin_metrics("bad").unwrap().invalid_outputs, 2);
}

#[tokio::test]
async fn a_dollar_rewrite_needs_a_publish_grant_naming_it() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "bad", "test_misbehave");
    p.grants.publish = vec!["$SYS/brokers/#".into()];
    let h = host(vec![p]).await;
    let out = h.on_publish(&msg("bad/dollar", b""), None).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert!(
        matches!(&out.decision, PublishVerdict::Modified(m) if m.topic == "$SYS/brokers/spoofed")
    );
    // A filter starting with a wildcard names no `$`-topic.
    let mut p = plugin(&dir, "bad", "test_misbehave");
    p.grants.publish = vec!["#".into()];
    let h = host(vec![p]).await;
    let out = h.on_publish(&msg("bad/dollar", b""), None).await;
    assert!(invalid(&out.failures).contains("starts with $"));
}

#[tokio::test]
async fn a_payload_within_the_limit_passes_and_one_byte_more_does_not() {
    let dir = wasm_or_skip!();
    let h = host_with(
        vec![plugin(&dir, "bad", "test_misbehave")],
        Services {
            limits: OutputLimits {
                max_packet_size: 1000,
                ..OutputLimits::default()
            },
            ..Services::default()
        },
    )
    .await;
    // PUBLISH of topic "bad/big" (QoS 0, no properties): 1 + 2 + 2 + 7 + 1 + n.
    let out = h.on_publish(&msg("bad/big", b"987"), None).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    let out = h.on_publish(&msg("bad/big", b"988"), None).await;
    assert!(invalid(&out.failures).contains("1001 bytes"));
}

#[tokio::test]
async fn invalid_authenticate_answers_are_failures() {
    let dir = wasm_or_skip!();
    let mut open = plugin(&dir, "bad", "test_misbehave");
    open.failure.authenticate = FailurePolicy::Open;
    let h_open = host(vec![open]).await;
    let h_closed = host(vec![plugin(&dir, "bad", "test_misbehave")]).await;
    for (user, says) in [
        ("deny-0", "deny(0x00)"),
        ("deny-10", "deny(0x10)"),
        ("big-auth-data", "auth-data is 70000 bytes"),
    ] {
        let out = h_open.authenticate(&auth("c", Some(user), None)).await;
        assert!(matches!(out.decision, AuthDecision::Ignore), "{user}");
        let out_closed = h_closed.authenticate(&auth("c", Some(user), None)).await;
        assert!(
            matches!(
                out_closed.decision,
                AuthDecision::Deny(FAIL_CLOSED_AUTH_REASON)
            ),
            "{user}"
        );
        for o in [&out.failures, &out_closed.failures] {
            match &o[..] {
                [PluginError::Invalid {
                    hook: Hook::Authenticate,
                    problem,
                    ..
                }] => assert!(problem.contains(says), "{user}: {problem}"),
                other => panic!("{user}: {other:?}"),
            }
        }
    }
    assert_eq!(h_open.plugin_metrics("bad").unwrap().invalid_outputs, 3);
}

#[tokio::test]
async fn rule_function_results_must_be_bounded_json() {
    let dir = wasm_or_skip!();
    let h = host_with(
        vec![plugin(&dir, "bad", "test_misbehave")],
        Services {
            limits: OutputLimits {
                max_function_result: 100,
                ..OutputLimits::default()
            },
            ..Services::default()
        },
    )
    .await;
    assert_eq!(
        h.call_function("huge", &["98".into()]).await.unwrap(),
        format!("\"{}\"", "h".repeat(98))
    );
    for (args, says) in [
        (vec!["99".to_string()], "101 bytes, above the limit of 100"),
        (vec![], ""),
    ] {
        let name = if args.is_empty() { "notjson" } else { "huge" };
        match h.call_function(name, &args).await {
            Err(PluginError::Invalid {
                hook: Hook::CallFunction,
                problem,
                ..
            }) => assert!(problem.contains(says) || says.is_empty(), "{problem}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(h.plugin_metrics("bad").unwrap().invalid_outputs, 2);
}

#[derive(Default)]
struct Sink(Mutex<Vec<Message>>);

impl BrokerHandle for Sink {
    fn publish(&self, _plugin: &str, message: Message) -> Result<(), String> {
        self.0.lock().push(message);
        Ok(())
    }
}

#[tokio::test]
async fn the_publish_capability_refuses_what_a_client_could_not_publish() {
    let dir = wasm_or_skip!();
    let sink = Arc::new(Sink::default());
    let mut p = plugin(&dir, "bad", "test_misbehave");
    p.grants.publish = vec!["echo/#".into()];
    p.limits.deadline_ms = 10_000;
    let h = host_with(
        vec![p],
        Services {
            broker: Some(sink.clone()),
            limits: limits(),
            ..Services::default()
        },
    )
    .await;
    for (case, refusal, says) in [
        ("publish-hash", "InvalidTopic", "has a wildcard"),
        (
            "publish-big",
            "Rejected",
            "above the broker's max_packet_size",
        ),
        ("publish-utf8", "Rejected", "payload-format indicator"),
    ] {
        let out = h.on_publish(&msg(&format!("bad/{case}"), b""), None).await;
        // The hook's own answer stands; the plugin saw the refusal.
        match &out.decision {
            PublishVerdict::Modified(m) => {
                let told = String::from_utf8_lossy(&m.payload);
                assert!(told.contains(refusal), "{case}: {told}");
            }
            other => panic!("{case}: {other:?}"),
        }
        match &out.failures[..] {
            [PluginError::Invalid { problem, .. }] => {
                assert!(problem.starts_with("publish capability: "), "{problem}");
                assert!(problem.contains(says), "{case}: {problem}");
            }
            other => panic!("{case}: {other:?}"),
        }
    }
    assert!(sink.0.lock().is_empty(), "nothing was published");
    assert_eq!(h.plugin_metrics("bad").unwrap().invalid_outputs, 3);
}

fn authz(topic: &str) -> AuthzRequest {
    AuthzRequest {
        client: common::client("c", None),
        action: Action::Publish,
        topic: topic.into(),
        qos: Qos::AtMostOnce,
        retain: false,
    }
}

/// The case: `on-publish` runs into its deadline on every call
/// while `authorize` answers in between; the answers must not reset the
/// count of the other hook's failures.
#[tokio::test]
async fn a_plugin_failing_one_hook_is_suspended_though_another_answers() {
    let dir = wasm_or_skip!();
    let mut p: PluginConfig = plugin(&dir, "half", "test_misbehave");
    p.limits.deadline_ms = 30;
    p.limits.suspend_after = 5;
    p.limits.suspend_secs = 3600;
    let h = host(vec![p]).await;
    for i in 0..5 {
        let m = h.plugin_metrics("half").unwrap();
        assert!(!m.suspended, "suspended after {i} failures");
        let out = h.on_publish(&msg("loop", b""), None).await;
        assert!(
            matches!(&out.failures[..], [PluginError::Timeout { .. }]),
            "{i}"
        );
        let out = h.authorize(&authz("allowed/x")).await;
        if i < 4 {
            assert!(matches!(out.decision, AuthzDecision::Allow), "{i}");
            assert!(out.failures.is_empty());
        }
    }
    let m = h.plugin_metrics("half").unwrap();
    assert!(m.suspended, "{m:?}");
    assert_eq!((m.timeouts, m.suspensions), (5, 1));
    // Suspended: authorize is not called, answered per its policy (closed).
    let out = h.authorize(&authz("allowed/x")).await;
    assert!(matches!(out.decision, AuthzDecision::Deny));
    assert!(matches!(
        &out.failures[..],
        [PluginError::Suspended {
            hook: Hook::Authorize,
            ..
        }]
    ));
}

#[tokio::test]
async fn failures_of_several_hooks_add_up_and_an_answer_ends_only_its_own_run() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "mixed", "test_misbehave");
    p.limits.deadline_ms = 30;
    p.limits.suspend_after = 4;
    p.limits.suspend_secs = 3600;
    let h = host(vec![p]).await;
    // on-publish: 2 failures, then an answer: its run ends.
    for _ in 0..2 {
        h.on_publish(&msg("loop", b""), None).await;
    }
    h.on_publish(&msg("t", b"x"), None).await;
    // authenticate: 3 failures; with on-publish's ended run, 3 < 4.
    for _ in 0..3 {
        h.authenticate(&auth("c", Some("trap"), None)).await;
    }
    assert!(!h.plugin_metrics("mixed").unwrap().suspended);
    // One on-publish failure more: 3 + 1 = 4.
    h.on_publish(&msg("loop", b""), None).await;
    let m = h.plugin_metrics("mixed").unwrap();
    assert!(m.suspended, "{m:?}");
}

#[tokio::test]
async fn a_panic_is_reported_with_its_message_and_location() {
    let dir = wasm_or_skip!();
    let h = host(vec![plugin(&dir, "p", "test_misbehave")]).await;
    let out = h.on_publish(&msg("trap", b""), None).await;
    match &out.failures[..] {
        [PluginError::Trap { message, .. }] => {
            assert!(message.starts_with("panicked at "), "{message}");
            assert!(message.contains("src/lib.rs"), "{message}");
            assert!(message.contains("asked to trap"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stack_overflow_is_named() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "deep", "test_misbehave");
    p.limits.deadline_ms = 2000;
    let h = host(vec![p]).await;
    let out = h.on_publish(&msg("recurse", b""), None).await;
    match &out.failures[..] {
        [PluginError::Trap { message, .. }] => {
            assert!(message.contains("stack overflow"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
