//! MQTT 5.0 enhanced authentication (section 4.12) driven by a plugin:
//! test-challenge runs a 2-step challenge-response (server nonce in AUTH
//! 0x18, then the client's HMAC-SHA256 of it with the shared secret), at
//! CONNECT and again on re-authentication, with the raw 5.0 client.

use midge_e2e::raw::*;
use midge_e2e::*;
use sha2::{Digest, Sha256};

const METHOD: &str = "midge-hmac";
const SECRET: &[u8] = b"s3cret";

const CHALLENGE: &str = r#"
[[plugins.plugin]]
name = "challenge"
path = "{wasm}/test_challenge.wasm"
config = { method = "midge-hmac", secret = "s3cret" }
"#;

/// A broker with test-challenge; `None` when the wasm target is missing
/// outside CI.
async fn broker(connect_timeout: u32) -> Option<TestBroker> {
    let wasm = midge_plugin::testing::wasm_dir()?;
    let text = CHALLENGE.replace("{wasm}", &wasm.display().to_string());
    let cfg = midge::Config::parse(&text, "enhanced-auth-test.toml").expect("config parses");
    Some(
        start_broker(|c| {
            c.plugins = cfg.plugins.clone();
            c.limits.connect_timeout = connect_timeout;
        })
        .await,
    )
}

/// HMAC-SHA256 (RFC 2104), what the client must answer.
fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn opts(id: &str) -> ConnectOpts {
    ConnectOpts::v5(id).prop(Prop::auth_method(METHOD))
}

/// Sends CONNECT with the method and returns the challenge (AUTH 0x18).
async fn challenged(b: &TestBroker, id: &str) -> (RawClient, Vec<u8>) {
    let mut c = RawClient::connect(b.addr).await;
    c.v5 = true;
    c.send(&opts(id).encode()).await;
    let nonce = expect_challenge(&mut c).await;
    (c, nonce)
}

/// The next packet must be AUTH 0x18 with the method and a 16-byte nonce.
async fn expect_challenge(c: &mut RawClient) -> Vec<u8> {
    let a = c.recv().await.auth();
    assert_eq!(a.reason, 0x18, "AUTH continue: {a:?}");
    assert_eq!(a.props.str(prop::AUTHENTICATION_METHOD), Some(METHOD));
    let nonce = a
        .props
        .bin(prop::AUTHENTICATION_DATA)
        .expect("nonce")
        .to_vec();
    assert_eq!(nonce.len(), 16);
    nonce
}

fn answer(reason: u8, method: &str, data: &[u8]) -> Vec<u8> {
    auth(reason, &[Prop::auth_method(method), Prop::auth_data(data)])
}

/// A client connected through the exchange.
async fn connected(b: &TestBroker, id: &str) -> RawClient {
    let (mut c, nonce) = challenged(b, id).await;
    c.send(&answer(0x18, METHOD, &hmac(SECRET, &nonce))).await;
    assert_eq!(c.recv().await.connack(true).code, 0);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_response_connects_with_the_servers_proof() {
    let Some(b) = broker(10).await else { return };
    let (mut c, nonce) = challenged(&b, "ea-ok").await;
    let response = hmac(SECRET, &nonce);
    c.send(&answer(0x18, METHOD, &response)).await;
    let ack = c.recv().await.connack(true);
    assert_eq!(ack.code, 0, "{ack:?}");
    assert_eq!(ack.props.str(prop::AUTHENTICATION_METHOD), Some(METHOD));
    assert_eq!(
        ack.props.bin(prop::AUTHENTICATION_DATA),
        Some(hmac(SECRET, &response).as_slice()),
        "final authentication data"
    );
    // A working session: a subscription receives a message.
    let t = topic("ea");
    assert_eq!(c.subscribe(1, &[], &[(&t, 0)]).await.codes, vec![0]);
    c.send(&publish(true, &t, 0, false, false, 0, &[], b"hi"))
        .await;
    assert_eq!(c.recv_publish().await.payload, b"hi");
    // Two exchanges never share a nonce.
    let (_c2, other) = challenged(&b, "ea-ok2").await;
    assert_ne!(nonce, other);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_response_is_refused_with_the_plugins_code() {
    let Some(b) = broker(10).await else { return };
    let (mut c, nonce) = challenged(&b, "ea-wrong").await;
    c.send(&answer(0x18, METHOD, &hmac(b"guess", &nonce))).await;
    let got = c.expect_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].connack(true).code, 0x87);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_another_method_is_bad_authentication_method() {
    let Some(b) = broker(10).await else { return };
    let (mut c, nonce) = challenged(&b, "ea-method").await;
    c.send(&answer(0x18, "other", &hmac(SECRET, &nonce))).await;
    let got = c.expect_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].connack(true).code, 0x8C);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_other_than_continue_during_the_exchange_is_a_protocol_error() {
    let Some(b) = broker(10).await else { return };
    let (mut c, nonce) = challenged(&b, "ea-reason").await;
    c.send(&answer(0x19, METHOD, &hmac(SECRET, &nonce))).await;
    let got = c.expect_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].connack(true).code, 0x82);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_exchange_is_closed_at_the_connect_timeout() {
    let Some(b) = broker(1).await else { return };
    let (mut c, _nonce) = challenged(&b, "ea-slow").await;
    // No answer: closed without CONNACK once the 1 s connect timeout passes
    // (expect_closed waits at most WAIT, 5 s).
    let got = c.expect_closed().await;
    assert!(got.is_empty(), "nothing after the challenge: {got:?}");
    let n = b
        .broker
        .stats
        .connections_refused_connect_timeout
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(n, 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_succeeds_while_the_session_keeps_working() {
    let Some(b) = broker(10).await else { return };
    let mut c = connected(&b, "ea-reauth").await;
    let t = topic("ea-reauth");
    assert_eq!(c.subscribe(1, &[], &[(&t, 0)]).await.codes, vec![0]);
    c.send(&auth(0x19, &[Prop::auth_method(METHOD)])).await;
    let nonce = expect_challenge(&mut c).await;
    // Mid-exchange, the session still works.
    c.send(&publish(true, &t, 0, false, false, 0, &[], b"during"))
        .await;
    assert_eq!(c.recv_publish().await.payload, b"during");
    let response = hmac(SECRET, &nonce);
    c.send(&answer(0x18, METHOD, &response)).await;
    let a = c.recv_kind(AUTH).await.auth();
    assert_eq!(a.reason, 0x00, "{a:?}");
    assert_eq!(a.props.str(prop::AUTHENTICATION_METHOD), Some(METHOD));
    assert_eq!(
        a.props.bin(prop::AUTHENTICATION_DATA),
        Some(hmac(SECRET, &response).as_slice())
    );
    c.send(&publish(true, &t, 0, false, false, 0, &[], b"after"))
        .await;
    assert_eq!(c.recv_publish().await.payload, b"after");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reauthentication_disconnects_with_the_reason() {
    let Some(b) = broker(10).await else { return };
    let mut c = connected(&b, "ea-reauth-bad").await;
    c.send(&auth(0x19, &[Prop::auth_method(METHOD)])).await;
    let nonce = expect_challenge(&mut c).await;
    c.send(&answer(0x18, METHOD, &hmac(b"guess", &nonce))).await;
    c.expect_disconnect(0x87).await;
    b.shutdown().await;
}

/// A re-authentication challenge left unanswered: the session keeps
/// working until the connect timeout (1 s here) passes, then the client is
/// disconnected with 0x87 (expect_disconnect waits at most 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_reauthentication_is_closed_at_the_connect_timeout() {
    let Some(b) = broker(1).await else { return };
    let mut c = connected(&b, "ea-reauth-slow").await;
    let t = topic("ea-reauth-slow");
    assert_eq!(c.subscribe(1, &[], &[(&t, 0)]).await.codes, vec![0]);
    c.send(&auth(0x19, &[Prop::auth_method(METHOD)])).await;
    let _nonce = expect_challenge(&mut c).await;
    c.send(&publish(true, &t, 0, false, false, 0, &[], b"pending"))
        .await;
    assert_eq!(c.recv_publish().await.payload, b"pending");
    c.expect_disconnect(0x87).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_with_another_method_is_refused() {
    let Some(b) = broker(10).await else { return };
    let mut c = connected(&b, "ea-reauth-method").await;
    c.send(&auth(0x19, &[Prop::auth_method("other")])).await;
    c.expect_disconnect(0x8C).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_without_enhanced_authentication_is_a_protocol_error() {
    let Some(b) = broker(10).await else { return };
    // No method: the plugin ignores the client and the broker lets it in.
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5("ea-plain")).await;
    c.send(&auth(0x19, &[Prop::auth_method(METHOD)])).await;
    c.expect_disconnect(0x82).await;
    b.shutdown().await;
}
