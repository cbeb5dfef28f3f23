//! The shipped plugins (auth-password, auth-jwt, transform), loaded as real
//! components into the host.

mod common;

use common::{auth, client, host, msg, plugin};
use midge_plugin::types::{
    Action, AuthDecision, AuthzDecision, AuthzRequest, ClientInfo, Message, Qos,
};
use midge_plugin::{BatchItem, BatchVerdict, DirGrant, Outcome, PluginHost, PublishVerdict};
use serde_json::{json, Value};
use std::sync::Arc;

// PBKDF2-SHA256 of "wonderland", 1000 iterations (see auth-password's docs).
const ALICE_HASH: &str =
    "$pbkdf2-sha256$1000$bWlkZ2UtdGVzdC1zYWx0IQ==$jbQpDnEXV2muKnAjBpQeiGWaqiAiNGasWC2sTVuOLYw=";
// Mosquitto `$7$` (PBKDF2-SHA512) of "builder", 101 iterations.
const BOB_HASH: &str = "$7$101$bWlkZ2UtdGVzdC1zYWx0IQ==$W85m9lfk/OC1uSTXRTePE9vDBtpRn57nv4zf2+PWH2tBiv++mOHm95cAAZWf1hBtNJtTTrYChF/iOIDD1OEwJA==";

fn authz(client: &ClientInfo, action: Action, topic: &str) -> AuthzRequest {
    AuthzRequest {
        client: client.clone(),
        action,
        topic: topic.into(),
        qos: Qos::AtMostOnce,
        retain: false,
    }
}

async fn decide(
    host: &PluginHost,
    client: &ClientInfo,
    action: Action,
    topic: &str,
) -> AuthzDecision {
    host.authorize(&authz(client, action, topic)).await.decision
}

#[tokio::test]
async fn auth_password_users_from_granted_file_and_acl() {
    let dir = wasm_or_skip!();
    let etc = tempfile::tempdir().unwrap();
    std::fs::write(
        etc.path().join("passwd"),
        format!("# users\nalice:{ALICE_HASH}\n\nbob:{BOB_HASH}\n"),
    )
    .unwrap();
    let mut p = plugin(&dir, "pw", "auth_password");
    p.grants.dirs = vec![DirGrant {
        host: etc.path().to_path_buf(),
        guest: "/config".into(),
    }];
    p.config = json!({
        "password_file": "/config/passwd",
        "superusers": ["bob"],
        "acl": [
            { "access": "readwrite", "filter": "users/%u/#", "permission": "allow" },
            { "client_id": "sensor-1", "access": "write", "filter": "sensors/%c/+", "permission": "allow" },
            { "user": "alice", "access": "read", "filter": "public/secret", "permission": "deny" },
            { "access": "read", "filter": "public/#", "permission": "allow" }
        ]
    });
    let host = host(vec![p]).await;

    match host
        .authenticate(&auth("c", Some("alice"), Some(b"wonderland")))
        .await
        .decision
    {
        AuthDecision::Allow(a) => assert!(!a.superuser),
        other => panic!("{other:?}"),
    }
    match host
        .authenticate(&auth("c", Some("bob"), Some(b"builder")))
        .await
        .decision
    {
        AuthDecision::Allow(a) => assert!(a.superuser),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        host.authenticate(&auth("c", Some("alice"), Some(b"wrong")))
            .await
            .decision,
        AuthDecision::Deny(0x86)
    ));
    assert!(matches!(
        host.authenticate(&auth("c", Some("eve"), Some(b"x")))
            .await
            .decision,
        AuthDecision::Deny(0x86)
    ));
    assert!(matches!(
        host.authenticate(&auth("c", None, None)).await.decision,
        AuthDecision::Ignore
    ));

    let alice = client("phone", Some("alice"));
    assert_eq!(
        decide(&host, &alice, Action::Publish, "users/alice/inbox").await,
        AuthzDecision::Allow
    );
    assert_eq!(
        decide(&host, &alice, Action::Subscribe, "users/alice/#").await,
        AuthzDecision::Allow
    );
    assert_eq!(
        decide(&host, &alice, Action::Publish, "users/bob/inbox").await,
        AuthzDecision::Deny
    );
    assert_eq!(
        decide(&host, &alice, Action::Subscribe, "users/+/inbox").await,
        AuthzDecision::Deny
    );
    assert_eq!(
        decide(&host, &alice, Action::Subscribe, "public/news").await,
        AuthzDecision::Allow
    );
    assert_eq!(
        decide(&host, &alice, Action::Subscribe, "public/secret").await,
        AuthzDecision::Deny
    );
    assert_eq!(
        decide(&host, &alice, Action::Publish, "public/news").await,
        AuthzDecision::Deny
    );
    let sensor = client("sensor-1", Some("carol"));
    assert_eq!(
        decide(&host, &sensor, Action::Publish, "sensors/sensor-1/temp").await,
        AuthzDecision::Allow
    );
    assert_eq!(
        decide(&host, &sensor, Action::Publish, "sensors/sensor-2/temp").await,
        AuthzDecision::Deny
    );
    assert_eq!(
        decide(&host, &sensor, Action::Subscribe, "sensors/sensor-1/temp").await,
        AuthzDecision::Deny
    );
    // a wildcard in the user name must not widen %u
    let sneaky = client("x", Some("#"));
    assert_eq!(
        decide(&host, &sneaky, Action::Publish, "users/alice/inbox").await,
        AuthzDecision::Deny
    );
}

#[tokio::test]
async fn auth_password_without_the_dir_grant_cannot_read_the_file() {
    let dir = wasm_or_skip!();
    let etc = tempfile::tempdir().unwrap();
    std::fs::write(etc.path().join("passwd"), format!("alice:{ALICE_HASH}\n")).unwrap();
    let mut p = plugin(&dir, "pw", "auth_password");
    p.config = json!({ "password_file": etc.path().join("passwd") });
    let config = midge_plugin::PluginsConfig {
        plugins: vec![p],
        ..Default::default()
    };
    let err = PluginHost::load(&config, midge_plugin::Services::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("password_file"), "{err}");
}

const HS_TOKEN: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAiZGV2MSIsICJleHAiOiA0MTAyNDQ0ODAwLCAibXF0dF9wdWIiOiBbImRldmljZXMvJWMvIyJdLCAibXF0dF9zdWIiOiBbImNvbW1hbmRzLyV1LysiXX0.cUoTLyjV-GqCnVi6o5IB3uifvbUzJE-NVlxj77QxoWI";
const HS_EXPIRED: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAiZGV2MSIsICJleHAiOiAxMDAwMDAwMDAwfQ.sa8xy2lDvdpDwz9XO5cBlY16w0nsK_mYJ3pzTNepdQQ";
const HS_SUPER: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAib3BzIiwgInN1cGVydXNlciI6IHRydWV9.CCUQ1hbhKFgB3zbosh6sDAgHXMXozIpchWHMJgAcoGI";
const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyayzkkwVyTSYDQPEp0gu\nvh/6ziIpQJP1apLGpAYo174SfSx0pWpppZGG+y2dKgWcXaXMjMoA5H3jlbfhAlon\nM7pTkbeXYi26IKs1T1WdBYd9itfiPwhAVgbG05nplglLN93e+NvrkiE76tymEyMA\nkR7sXLls8N7syIPnUMruxqffSMXCgUC32aApS2kpQ8qr4gtie1+2qyl00v+hFNqz\nonzdIxoUFPt3REnp4iL7U4ElWaun4M/wVng3TdeJV5HfJl52XakJl2A5fS/Ac1Xe\nK5nxbWU9tE360t8sh7iYKaNdhkCy4IM+zuCHTWeoMfmLOqwTMHa03X0KGUlO7x6f\n3QIDAQAB\n-----END PUBLIC KEY-----\n";
const RS_TOKEN: &str = "eyJhbGciOiAiUlMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAiZGV2MiIsICJjbGllbnRfaWQiOiAiZGV2Mi1jIiwgIm1xdHRfcHViIjogWyJ0ZWxlbWV0cnkvIyJdLCAiaXNzIjogIm1pZGdlLXRlc3QifQ.rBB7vj38rQg9Lo9sjXAxdfwhnghdxWC19fFkYDkchRfHmkUwhVRmITq_-mcqYKpctskklUdrmw0Qkp3n8RrB_tIBoPc3ZL-F8Ee1bpLE1TB70jRniyZ84fHNzVwtYa3iCGUG3EaTDh28LCo87x4hHHUxUAkBkGH5tkZZz_KEUNvNfxmr4_RNWYnNW7IIa7mRjKsiBiqwYaU6IGb1g4o00FcQKJXWk7l2U3jEGNsb4uGendMqLt0afAbodEH7qCm5chrsZvlXVHRmQPHGwI_QgLtLFzdty_pKbf_qxp4KYUS8zRALxq8vCbAG5NnmHNFcGnovVuuuxXWCFAe4t-XWew";
const RS_FORGED: &str = "eyJhbGciOiAiUlMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAiZGV2MiIsICJjbGllbnRfaWQiOiAiZGV2Mi1jIiwgImlzcyI6ICJtaWRnZS10ZXN0In0.rkj4eboDhi9oZaiZGKh1mH_0_-EUkx9IXQGOx7gRWJdQecMr2cmt6F7AgdBPSpzsIpe2vyN3PDLtFpz_gxrkl5dlmty8HFovjIdhBZVl5HNJBqHz4k7o29OqJAJ2m_C-dQdLmJszd_ZCgUCSqBCiTL5DnDIcMeqxJkGOocVJq1vNYIZl8ycMsjQM-symDlnnpNB1TnhByhrGh-h_1U4jy1mon3Bk5odTphShdMz5RWelRHdrhe2LhOQFRM2sGKQkt_pDW1sd83DN6gxaBcSEkMNZx6GbwLg-NGtx3AWkwRHp9BbxSRpYz6lJAtl3eoePzuR8VmDq6ZHP2LduVPC9sQ";

fn allowed(d: AuthDecision) -> midge_plugin::types::AuthAllow {
    match d {
        AuthDecision::Allow(a) => a,
        other => panic!("expected allow, got {other:?}"),
    }
}

#[tokio::test]
async fn auth_jwt_hmac_and_rsa_tokens_and_claim_acl() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "jwt", "auth_jwt");
    p.config = json!({ "hmac_secret": "jwt-test-secret", "rsa_public_key_pem": RSA_PEM });
    let host = host(vec![p]).await;

    // HS256 with ACL claims
    let a = allowed(
        host.authenticate(&auth("dev1-c", Some("dev1"), Some(HS_TOKEN.as_bytes())))
            .await
            .decision,
    );
    assert!(!a.superuser);
    let mut dev1 = client("dev1-c", Some("dev1"));
    dev1.attributes = a.attributes;
    assert_eq!(
        decide(&host, &dev1, Action::Publish, "devices/dev1-c/temp").await,
        AuthzDecision::Allow
    );
    assert_eq!(
        decide(&host, &dev1, Action::Publish, "devices/other/temp").await,
        AuthzDecision::Deny
    );
    assert_eq!(
        decide(&host, &dev1, Action::Subscribe, "commands/dev1/reboot").await,
        AuthzDecision::Allow
    );
    assert_eq!(
        decide(&host, &dev1, Action::Subscribe, "commands/dev1/#").await,
        AuthzDecision::Deny
    );
    // a client not authenticated by this plugin is left to others
    assert_eq!(
        decide(&host, &client("x", None), Action::Publish, "a").await,
        AuthzDecision::Ignore
    );

    // user name must match the subject
    assert!(matches!(
        host.authenticate(&auth("dev1-c", Some("mallory"), Some(HS_TOKEN.as_bytes())))
            .await
            .decision,
        AuthDecision::Deny(0x86)
    ));
    // expired, tampered, garbage
    assert!(matches!(
        host.authenticate(&auth("c", None, Some(HS_EXPIRED.as_bytes())))
            .await
            .decision,
        AuthDecision::Deny(0x86)
    ));
    let tampered = HS_TOKEN.replacen("eyJzdWIiOiAiZGV2MSIs", "eyJzdWIiOiAiZGV2MiIs", 1);
    assert!(matches!(
        host.authenticate(&auth("c", None, Some(tampered.as_bytes())))
            .await
            .decision,
        AuthDecision::Deny(0x86)
    ));
    assert!(matches!(
        host.authenticate(&auth("c", None, Some(b"not a jwt")))
            .await
            .decision,
        AuthDecision::Deny(0x86)
    ));
    assert!(matches!(
        host.authenticate(&auth("c", Some("u"), None))
            .await
            .decision,
        AuthDecision::Ignore
    ));
    assert!(
        allowed(
            host.authenticate(&auth("c", None, Some(HS_SUPER.as_bytes())))
                .await
                .decision
        )
        .superuser
    );

    // RS256, client id claim
    let a = allowed(
        host.authenticate(&auth("dev2-c", None, Some(RS_TOKEN.as_bytes())))
            .await
            .decision,
    );
    let mut dev2 = client("dev2-c", None);
    dev2.attributes = a.attributes;
    assert_eq!(
        decide(&host, &dev2, Action::Publish, "telemetry/a/b").await,
        AuthzDecision::Allow
    );
    assert_eq!(
        decide(&host, &dev2, Action::Subscribe, "telemetry/#").await,
        AuthzDecision::Deny
    );
    assert!(matches!(
        host.authenticate(&auth("other", None, Some(RS_TOKEN.as_bytes())))
            .await
            .decision,
        AuthDecision::Deny(0x85)
    ));
    assert!(matches!(
        host.authenticate(&auth("dev2-c", None, Some(RS_FORGED.as_bytes())))
            .await
            .decision,
        AuthDecision::Deny(0x86)
    ));
}

#[tokio::test]
async fn transform_reshapes_payload_and_topic() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "tx", "transform");
    p.config = json!({ "rules": [
        {
            "filter": "sensors/+/raw", "format": "csv", "csv_columns": ["temp", "hum", "debug"],
            "rename": { "temp": "temperature" }, "drop": ["debug"],
            "add_timestamp": "ts", "add_client_id": "client", "topic": "sensors/{2}/json"
        },
        { "filter": "json/#", "rename": { "a": "b" }, "on_error": "deny" }
    ]});
    let host = host(vec![p]).await;
    assert!(host.wants_publish("sensors/k1/raw"));
    assert!(!host.wants_publish("other"));

    let out = host
        .on_publish(
            &msg("sensors/k1/raw", b"21.5,40,x"),
            Some(&client("dev-9", None)),
        )
        .await;
    let PublishVerdict::Modified(m) = out.decision else {
        panic!("{:?}", out.decision)
    };
    assert_eq!(m.topic, "sensors/k1/json");
    assert_eq!(
        m.properties.content_type.as_deref(),
        Some("application/json")
    );
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["temperature"], json!(21.5));
    assert_eq!(v["hum"], json!(40));
    assert_eq!(v["client"], json!("dev-9"));
    assert!(v.get("debug").is_none() && v.get("temp").is_none());
    assert!(
        v["ts"]
            .as_u64()
            .unwrap()
            .abs_diff(midge_plugin::now_millis())
            < 60_000
    );

    let out = host
        .on_publish(&msg("json/x", br#"{"a":1,"c":2}"#), None)
        .await;
    let PublishVerdict::Modified(m) = out.decision else {
        panic!("{:?}", out.decision)
    };
    assert_eq!(
        serde_json::from_slice::<Value>(&m.payload).unwrap(),
        json!({"b": 1, "c": 2})
    );
    assert!(matches!(
        host.on_publish(&msg("json/x", b"{oops"), None)
            .await
            .decision,
        PublishVerdict::Deny(0x99)
    ));
    // no matching filter: the plugin is not called at all
    let calls = host.plugin_metrics("tx").unwrap().calls;
    assert!(matches!(
        host.on_publish(&msg("other", b"x"), None).await.decision,
        PublishVerdict::Pass
    ));
    assert_eq!(host.plugin_metrics("tx").unwrap().calls, calls);
}

/// JSON objects that only gain fields are spliced (bytes and key order
/// kept); everything else takes the general path, with the same meaning.
#[tokio::test]
async fn transform_adds_fields_to_json_objects_exactly_once() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "tx", "transform");
    p.config = json!({ "rules": [{ "filter": "j/#", "add_client_id": "client" }] });
    let host = host(vec![p]).await;
    let who = client("dev-9", None);
    let run = |payload: &'static [u8]| {
        let host = &host;
        let who = &who;
        async move {
            match host
                .on_publish(&msg("j/1", payload), Some(who))
                .await
                .decision
            {
                PublishVerdict::Modified(m) => Some(String::from_utf8(m.payload).unwrap()),
                PublishVerdict::Pass => None,
                other => panic!("{other:?}"),
            }
        }
    };
    // Spliced: the payload's own bytes, then the field.
    assert_eq!(
        run(br#"{"z": 1, "a": [1, {"b": "}"}]} "#).await.unwrap(),
        r#"{"z": 1, "a": [1, {"b": "}"}],"client":"dev-9"}"#
    );
    assert_eq!(run(b" { } ").await.unwrap(), r#" {"client":"dev-9"}"#);
    // Already there: replaced, never duplicated.
    let out = run(br#"{"client":"x","v":1}"#).await.unwrap();
    assert_eq!(out.matches("client").count(), 1, "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"client": "dev-9", "v": 1})
    );
    // Not an object: wrapped, as before.
    assert_eq!(
        serde_json::from_str::<Value>(&run(b"5").await.unwrap()).unwrap(),
        json!({"value": 5, "client": "dev-9"})
    );
    // Not JSON (or trailing garbage): on_error = "pass".
    assert_eq!(run(br#"{"a":"#).await, None);
    assert_eq!(run(br#"{"a":1} x"#).await, None);
    // A key written with escapes is still the same key.
    let out = run(br#"{"cl\u0069ent":0}"#).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"client": "dev-9"})
    );
}

/// The splice's own JSON scanner against serde_json, over seed documents
/// and thousands of mutations of them (fixed seed): whatever the path, a
/// payload serde_json parses comes out as that value plus the field, in
/// valid JSON; one it rejects is passed on untouched; and the seeds, which
/// are plain objects, keep their bytes and key order (the fast path).
#[tokio::test]
async fn transform_splice_agrees_with_serde_json_on_mutated_payloads() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "tx", "transform");
    p.config = json!({ "rules": [{ "filter": "j/#", "add_client_id": "client" }] });
    let host = host(vec![p]).await;
    let who = client("dev-9", None);
    let seeds: [&[u8]; 9] = [
        br#"{"p":3,"seq":1234567,"ts":1234567890123456789,"f":12345678.123456789e-12}"#,
        br#"{"z":1,"a":[1,2.5,-0.25e-3,{"b":"}"}],"t":true,"f":false,"n":null}"#,
        b" {\"s\":\"caf\xc3\xa9 \\u00e9 \\n \\\\ \\/\",\"e\":{}, \"l\":[] }\n",
        br#"{"deep":[[[{"x":[{"y":{}}]}]]],"num":-12}"#,
        br#"{"clientX":1,"xclient":"client"}"#,
        br#"{}"#,
        br#"{"k":"\ud83d\ude00"}"#,
        br#"{"temp":21.5,"hum":40,"pad":"xxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        br#"{"a" : 0 , "b" :	1E+2 ,"c":"\"quoted\""}"#,
    ];
    let alphabet: &[&[u8]] = &[
        b"\"", b"\\", b"{", b"}", b"[", b"]", b",", b":", b" ", b"\\u", b"0", b"-", b".", b"e",
        b"x", b"\x80", b"\xff", b"\x01", b"\t", b"\n", b"\x1f", b"\\ud800", b"tru", b"null", b"1",
        b"client",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rand = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut payloads: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    for _ in 0..4000 {
        let mut p = seeds[rand(seeds.len())].to_vec();
        for _ in 0..1 + rand(3) {
            let at = rand(p.len() + 1);
            match rand(3) {
                0 if at < p.len() => {
                    p.remove(at);
                }
                1 => p.truncate(at),
                _ => {
                    let ins = alphabet[rand(alphabet.len())];
                    p.splice(at..at, ins.iter().copied());
                }
            }
        }
        payloads.push(p);
    }
    let (mut spliced, mut parsed, mut refused) = (0, 0, 0);
    for chunk in payloads.chunks(64) {
        let ms: Vec<Message> = chunk.iter().map(|p| msg("j/1", p)).collect();
        let items: Vec<BatchItem> = ms.iter().map(BatchItem::from).collect();
        let out = host.on_publish_batch(&items, Some(&who)).await;
        for (input, o) in chunk.iter().zip(out) {
            let expected = match serde_json::from_slice::<Value>(input) {
                Ok(Value::Object(mut m)) => {
                    m.insert("client".into(), json!("dev-9"));
                    Some(Value::Object(m))
                }
                Ok(other) => Some(json!({ "value": other, "client": "dev-9" })),
                Err(_) => None,
            };
            let shown = String::from_utf8_lossy(input);
            match (expected, o.decision) {
                (None, BatchVerdict::Pass) => refused += 1,
                (Some(want), BatchVerdict::Modified(c)) => {
                    let got = c.payload.expect("a new payload");
                    let value: Value = serde_json::from_slice(&got)
                        .unwrap_or_else(|e| panic!("{shown:?} gave invalid JSON {got:?}: {e}"));
                    assert_eq!(value, want, "{shown:?}");
                    let body = input.trim_ascii_end();
                    if got.starts_with(body[..body.len() - 1].trim_ascii_end()) {
                        spliced += 1;
                    } else {
                        parsed += 1;
                    }
                }
                (want, other) => panic!("{shown:?}: expected {want:?}, got {other:?}"),
            }
        }
    }
    // Every seed (and most valid mutations) took the fast path.
    assert!(spliced >= seeds.len(), "spliced {spliced}");
    assert!(
        parsed > 0 && refused > 1000,
        "parsed {parsed}, refused {refused}"
    );
    for seed in seeds {
        let ms = [msg("j/1", seed), msg("j/1", seed)];
        let items: Vec<BatchItem> = ms.iter().map(BatchItem::from).collect();
        let out = host.on_publish_batch(&items, Some(&who)).await;
        let BatchVerdict::Modified(c) = &out[0].decision else {
            panic!("{:?}", out[0].decision)
        };
        let body = seed.trim_ascii_end();
        let got = c.payload.as_deref().unwrap();
        assert!(
            got.starts_with(body[..body.len() - 1].trim_ascii_end())
                || seed.starts_with(br#"{"k""#),
            "not spliced: {:?} -> {:?}",
            String::from_utf8_lossy(seed),
            String::from_utf8_lossy(got)
        );
    }
}

/// `on-publish-batch`: one call for many messages of one publisher, with
/// the same decisions as one call each.
#[tokio::test]
async fn transform_batch_matches_single_calls_in_one_call() {
    let dir = wasm_or_skip!();
    let mut p = plugin(&dir, "tx", "transform");
    p.config = json!({ "rules": [
        { "filter": "j/#", "add_client_id": "client", "topic": "out/{2}" },
        { "filter": "bad/#", "on_error": "drop" }
    ]});
    let host = host(vec![p]).await;
    let who = client("dev-9", None);
    let mut batch = vec![
        msg("j/1", br#"{"a":1}"#),
        msg("bad/1", b"{oops"),
        msg("j/2", b"[1]"),
        msg("other", b"x"),
    ];
    let mut with_props = msg("j/3", br#"{"b":2}"#);
    with_props.properties.user_properties = vec![("k".into(), "v".into())];
    batch.push(with_props);
    batch.push(msg("j/4", br#"{"c":3}"#));
    let items: Vec<BatchItem> = batch.iter().map(BatchItem::from).collect();
    let calls = host.plugin_metrics("tx").unwrap().calls;
    let out = host.on_publish_batch(&items, Some(&who)).await;
    assert_eq!(host.plugin_metrics("tx").unwrap().calls, calls + 1);
    assert_eq!(out.len(), 6);
    for (m, o) in batch.iter().zip(&out) {
        let single = host.on_publish(m, Some(&who)).await;
        assert_eq!(
            format!("{:?}", o.decision.clone().into_verdict(m)),
            format!("{:?}", single.decision),
            "{}",
            m.topic
        );
    }
    assert!(matches!(out[1].decision, BatchVerdict::Drop));
    assert!(matches!(out[3].decision, BatchVerdict::Pass));
    // Messages without properties share the one set transform adds; the
    // one with user properties keeps them under its own.
    let props = |o: &Outcome<BatchVerdict>| match &o.decision {
        BatchVerdict::Modified(c) => c.properties.clone().unwrap(),
        other => panic!("expected a change, got {other:?}"),
    };
    let (a, b, c) = (props(&out[0]), props(&out[4]), props(&out[5]));
    assert!(Arc::ptr_eq(&a, &c), "one set for both");
    assert_eq!(b.user_properties, vec![("k".to_string(), "v".to_string())]);
    assert_eq!(b.content_type.as_deref(), Some("application/json"));
}
