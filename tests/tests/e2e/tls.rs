//! TLS listeners: MQTT over TLS (`mqtts`) and secure WebSocket (`wss`) round
//! trips with rumqttc (3.1.1 and 5.0) and Debian's mosquitto clients; mTLS
//! (required, optional, certificates from another CA); `cn_as_username`;
//! start-up errors for unusable certificate and key files.
//!
//! The CAs and certificates are made at test time with rcgen and written to
//! a temporary directory.
//!
//! Run: cargo nextest run -p midge-e2e --test tls

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use midge_e2e::raw::*;
use midge_e2e::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A test CA that signs server and client certificates.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM) for 127.0.0.1 / localhost.
    pub(crate) fn server(&self) -> (String, String) {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "midge test server");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }

    /// (certificate PEM, key PEM) of a client whose subject CN is `cn`.
    pub(crate) fn client(&self, cn: &str) -> (String, String) {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "Midge tests");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Everything a TLS test needs, as files in a temporary directory.
struct Pki {
    dir: TempDir,
    ca: Ca,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("midge-tls");
        let ca = Ca::new("Midge Test CA");
        let (cert, key) = ca.server();
        let pki = Pki {
            ca_file: dir.0.join("ca.pem"),
            cert_file: dir.0.join("server.pem"),
            key_file: dir.0.join("server.key"),
            dir,
            ca,
        };
        std::fs::write(&pki.ca_file, pki.ca.pem()).unwrap();
        std::fs::write(&pki.cert_file, cert).unwrap();
        std::fs::write(&pki.key_file, key).unwrap();
        pki
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A client certificate signed by this PKI's CA: (cert PEM, key PEM).
    fn client(&self, cn: &str) -> (String, String) {
        self.ca.client(cn)
    }

    /// `[listeners.tls]` with these files.
    fn tls(&self, client_ca: bool) -> midge::config::TlsConfig {
        midge::config::TlsConfig {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            client_ca: client_ca.then(|| self.ca_file.clone()),
            require_client_cert: true,
            cn_as_username: false,
        }
    }
}

/// A broker with `mqtts` and `wss` (and the usual plain listeners).
async fn tls_broker(
    tls: midge::config::TlsConfig,
    f: impl FnOnce(&mut midge::Config),
) -> TestBroker {
    start_broker(|c| {
        c.listeners.mqtts = Some("127.0.0.1:0".parse().unwrap());
        c.listeners.wss = Some("127.0.0.1:0".parse().unwrap());
        c.listeners.tls = Some(tls);
        f(c);
    })
    .await
}

/// A rustls client config trusting `ca_pem` (ring provider: the test
/// binary links rustls with two providers, so none is the default).
fn client_config(ca_pem: &str, identity: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

fn mqtts_v4(b: &TestBroker, cfg: Arc<rustls::ClientConfig>) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(unique("tls4"), "127.0.0.1", b.mqtts_port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(cfg)));
    o
}

fn mqtts_v5(b: &TestBroker, cfg: Arc<rustls::ClientConfig>) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(unique("tls5"), "127.0.0.1", b.mqtts_port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(cfg)));
    o
}

/// Starts a 3.1.1 client and asserts it never gets a successful CONNACK:
/// the connection fails (TLS alert, close). Returns the error.
async fn refused_v4(o: rumqttc::MqttOptions) -> String {
    let mut c = V4::start(o);
    within("the connection to fail", async {
        loop {
            match c.events.recv().await {
                Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)))) => {
                    assert_ne!(a.code, rumqttc::ConnectReturnCode::Success, "connected");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => return "ended".into(),
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_round_trip_v311_and_v5() {
    let pki = Pki::new();
    let b = tls_broker(pki.tls(false), |_| {}).await;
    let cfg = client_config(&pki.ca.pem(), None);
    let t = topic("mqtts");
    let (mut sub4, _) = V4::connect(mqtts_v4(&b, cfg.clone())).await;
    sub4.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    let (mut sub5, _) = V5::connect(mqtts_v5(&b, cfg.clone())).await;
    sub5.subscribe(&t, v5::QoS::ExactlyOnce).await;
    let (mut c5, _) = V5::connect(mqtts_v5(&b, cfg.clone())).await;
    c5.publish(&t, v5::QoS::ExactlyOnce, false, "over-tls-v5")
        .await;
    assert_eq!(sub4.next_publish().await.payload.as_ref(), b"over-tls-v5");
    assert_eq!(sub5.next_publish().await.payload.as_ref(), b"over-tls-v5");
    let (mut c4, _) = V4::connect(mqtts_v4(&b, cfg)).await;
    c4.publish(&t, rumqttc::QoS::ExactlyOnce, false, "over-tls-v4")
        .await;
    assert_eq!(sub5.next_publish().await.payload.as_ref(), b"over-tls-v4");
    assert_eq!(sub4.next_publish().await.payload.as_ref(), b"over-tls-v4");
    // And with a plain TCP client on the same broker.
    let mut plain = V4::new(&b, "plain").await;
    plain.subscribe(&t, rumqttc::QoS::AtMostOnce).await;
    c5.publish(&t, v5::QoS::AtLeastOnce, false, "to-plain")
        .await;
    assert_eq!(plain.next_publish().await.payload.as_ref(), b"to-plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_round_trip() {
    let pki = Pki::new();
    let b = tls_broker(pki.tls(false), |_| {}).await;
    let cfg = client_config(&pki.ca.pem(), None);
    let t = topic("wss");
    let mut o = rumqttc::MqttOptions::new(unique("wss4"), b.wss_url(), b.wss_addr.unwrap().port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::Wss(TlsConfiguration::Rustls(cfg.clone())));
    let (mut sub, _) = V4::connect(o).await;
    sub.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    let mut o =
        rumqttc::v5::MqttOptions::new(unique("wss5"), b.wss_url(), b.wss_addr.unwrap().port());
    o.set_transport(Transport::Wss(TlsConfiguration::Rustls(cfg)));
    let (mut p, _) = V5::connect(o).await;
    p.publish(&t, v5::QoS::AtLeastOnce, false, "over-wss").await;
    assert_eq!(sub.next_publish().await.payload.as_ref(), b"over-wss");
}

// ---------------------------------------------------------------------------
// mosquitto clients (an independent TLS stack: OpenSSL)
// ---------------------------------------------------------------------------

fn mosquitto_available() -> bool {
    ["mosquitto_pub", "mosquitto_sub"]
        .iter()
        .all(|t| Command::new(t).arg("--help").output().is_ok())
}

fn mosquitto(tool: &str, b: &TestBroker, pki: &Pki, cert: &(PathBuf, PathBuf)) -> Command {
    let mut c = Command::new(tool);
    c.args(["-h", "127.0.0.1", "-p", &b.mqtts_port().to_string()])
        .arg("--cafile")
        .arg(&pki.ca_file)
        .arg("--cert")
        .arg(&cert.0)
        .arg("--key")
        .arg(&cert.1)
        .args(["-i", &unique(tool), "-q", "1"]);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_over_mtls() {
    if !mosquitto_available() {
        missing_tool("mosquitto_pub / mosquitto_sub (apt-get install mosquitto-clients)");
        return;
    }
    let pki = Pki::new();
    let b = tls_broker(pki.tls(true), |_| {}).await;
    let (cert, key) = pki.client("mosquitto-client");
    let files = (pki.write("mc.pem", &cert), pki.write("mc.key", &key));
    let t = topic("mosq-tls");
    let mut sub = mosquitto("mosquitto_sub", &b, &pki, &files);
    sub.args(["-V", "mqttv5", "-t", &t, "-C", "1", "-W", "10"]);
    let sub = tokio::spawn(run_command(sub, Duration::from_secs(20)));
    // mosquitto_sub may not have subscribed yet: publish until it has one message.
    within("mosquitto_sub to receive a message", async {
        while !sub.is_finished() {
            let mut p = mosquitto("mosquitto_pub", &b, &pki, &files);
            p.args(["-V", "mqttv311", "-t", &t, "-m", "mtls-hello"]);
            let o = run_command(p, Duration::from_secs(20)).await;
            assert!(
                o.status.success(),
                "mosquitto_pub failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let out = sub.await.unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "mtls-hello");

    // Without a client certificate the handshake is refused.
    let mut p = Command::new("mosquitto_pub");
    p.args(["-h", "127.0.0.1", "-p", &b.mqtts_port().to_string()])
        .arg("--cafile")
        .arg(&pki.ca_file)
        .args(["-t", &t, "-m", "no-cert", "-i", &unique("nocert")]);
    let o = run_command(p, Duration::from_secs(20)).await;
    assert!(
        !o.status.success(),
        "mosquitto_pub without a certificate succeeded"
    );
}

// ---------------------------------------------------------------------------
// mTLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_refuses_no_cert_and_another_cas_cert() {
    let pki = Pki::new();
    let b = tls_broker(pki.tls(true), |_| {}).await;
    let ca = pki.ca.pem();
    // No certificate.
    refused_v4(mqtts_v4(&b, client_config(&ca, None))).await;
    // A certificate from a CA the broker does not trust.
    let rogue = Ca::new("Rogue CA").client("intruder");
    refused_v4(mqtts_v4(&b, client_config(&ca, Some(&rogue)))).await;
    // A certificate from the configured CA.
    let good = pki.client("device-1");
    let t = topic("mtls");
    let mut plain = V4::new(&b, "plain-sub").await;
    plain.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    let (mut c, _) = V5::connect(mqtts_v5(&b, client_config(&ca, Some(&good)))).await;
    c.publish(&t, v5::QoS::AtLeastOnce, false, "ok").await;
    assert_eq!(plain.next_publish().await.payload.as_ref(), b"ok");
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_optional_admits_no_cert_but_not_another_cas_cert() {
    let pki = Pki::new();
    let mut tls = pki.tls(true);
    tls.require_client_cert = false;
    let b = tls_broker(tls, |_| {}).await;
    let ca = pki.ca.pem();
    V4::connect(mqtts_v4(&b, client_config(&ca, None))).await;
    let rogue = Ca::new("Rogue CA").client("intruder");
    refused_v4(mqtts_v4(&b, client_config(&ca, Some(&rogue)))).await;
    let good = pki.client("device-2");
    V4::connect(mqtts_v4(&b, client_config(&ca, Some(&good)))).await;
}

/// With `cn_as_username`, a rule sees the certificate's CN as the username,
/// not what CONNECT claimed; plain TCP clients keep their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cn_as_username_replaces_the_connect_username() {
    let pki = Pki::new();
    let mut tls = pki.tls(true);
    tls.cn_as_username = true;
    let t = topic("cn");
    let rules = format!(
        r#"
[[rules]]
id = "who"
sql = 'SELECT username FROM "{t}/#"'
actions = [{{ type = "republish", topic = "{t}-who", payload = "user=${{username}}" }}]
"#
    );
    let rules = midge::Config::parse(&rules, "rules.toml").unwrap().rules;
    let b = tls_broker(tls, |c| c.rules = rules).await;
    let mut watcher = V4::new(&b, "watcher").await;
    watcher
        .subscribe(&format!("{t}-who"), rumqttc::QoS::AtLeastOnce)
        .await;

    let ca = pki.ca.pem();
    let id = pki.client("device-42");
    let mut o = mqtts_v5(&b, client_config(&ca, Some(&id)));
    o.set_credentials("liar", "secret");
    let (mut dev, _) = V5::connect(o).await;
    dev.publish(&format!("{t}/1"), v5::QoS::AtLeastOnce, false, "x")
        .await;
    assert_eq!(
        watcher.next_publish().await.payload.as_ref(),
        b"user=device-42"
    );

    // Over wss too.
    let mut o =
        rumqttc::MqttOptions::new(unique("wss-cn"), b.wss_url(), b.wss_addr.unwrap().port());
    o.set_transport(Transport::Wss(TlsConfiguration::Rustls(client_config(
        &ca,
        Some(&pki.client("ws-device")),
    ))));
    let (mut ws, _) = V4::connect(o).await;
    ws.publish(&format!("{t}/2"), rumqttc::QoS::AtLeastOnce, false, "y")
        .await;
    assert_eq!(
        watcher.next_publish().await.payload.as_ref(),
        b"user=ws-device"
    );

    // Plain TCP: CONNECT's username stands.
    let mut o = v4_options(&b, "plain");
    o.set_credentials("plain-user", "pw");
    let (mut plain, _) = V4::connect(o).await;
    plain
        .publish(&format!("{t}/3"), rumqttc::QoS::AtLeastOnce, false, "z")
        .await;
    assert_eq!(
        watcher.next_publish().await.payload.as_ref(),
        b"user=plain-user"
    );
}

/// With `cn_as_username` and optional client certificates, a client without
/// a certificate cannot claim a username through CONNECT: it has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cn_as_username_without_a_certificate_means_no_username() {
    let pki = Pki::new();
    let mut tls = pki.tls(true);
    tls.require_client_cert = false;
    tls.cn_as_username = true;
    let t = topic("nocn");
    let rules = format!(
        r#"
[[rules]]
id = "who"
sql = 'SELECT username FROM "{t}/#"'
actions = [{{ type = "republish", topic = "{t}-who", payload = "user=${{username}}" }}]
"#
    );
    let rules = midge::Config::parse(&rules, "rules.toml").unwrap().rules;
    let b = tls_broker(tls, |c| c.rules = rules).await;
    let mut watcher = V4::new(&b, "watcher").await;
    watcher
        .subscribe(&format!("{t}-who"), rumqttc::QoS::AtLeastOnce)
        .await;
    let mut o = mqtts_v4(&b, client_config(&pki.ca.pem(), None));
    o.set_credentials("admin", "guess");
    let (mut c, _) = V4::connect(o).await;
    c.publish(&format!("{t}/1"), rumqttc::QoS::AtLeastOnce, false, "x")
        .await;
    // No username: the field is undefined, which a template renders as EMQX
    // does ("undefined"), not the CONNECT's "admin".
    assert_eq!(
        watcher.next_publish().await.payload.as_ref(),
        b"user=undefined"
    );
}

// ---------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------

/// Plain MQTT bytes to the TLS port, and a client that never starts the
/// handshake: both are closed, counted, and the broker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_silent_clients_on_the_tls_port_are_closed() {
    let pki = Pki::new();
    let b = tls_broker(pki.tls(false), |c| c.limits.connect_timeout = 1).await;
    let addr: SocketAddr = b.mqtts_addr.unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&ConnectOpts::v5(&unique("plain")).encode())
        .await
        .unwrap();
    closed_within(&mut c, "plaintext CONNECT on the TLS port").await;
    for addr in [addr, b.wss_addr.unwrap()] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        closed_within(&mut silent, "silent client on a TLS port").await;
    }
    within("the timeouts to be counted", async {
        while b
            .broker
            .stats
            .connections_refused_connect_timeout
            .load(Ordering::Relaxed)
            < 2
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_alive(&b).await;
}

/// Reads (and ignores: a TLS alert, say) until the broker closes `s`,
/// for at most 10 s.
async fn closed_within(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: not closed within 10 s");
}

// ---------------------------------------------------------------------------
// Start-up errors
// ---------------------------------------------------------------------------

async fn bind_error(tls: midge::config::TlsConfig) -> String {
    let mut c = midge::Config::default();
    c.listeners.mqtt = None;
    c.listeners.ws = None;
    c.listeners.mqtts = Some("127.0.0.1:0".parse().unwrap());
    c.listeners.tls = Some(tls);
    c.admin.listen = None;
    match midge::App::bind(c).await {
        Ok(_) => panic!("bind succeeded"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_cert_and_key_files_are_named() {
    let pki = Pki::new();
    let shown = |p: &PathBuf| p.display().to_string();

    let mut t = pki.tls(false);
    t.cert = pki.dir.0.join("missing.pem");
    let e = bind_error(t.clone()).await;
    assert!(
        e.starts_with(&format!(
            "listeners.tls.cert: {}: cannot read",
            shown(&t.cert)
        )),
        "{e}"
    );

    let mut t = pki.tls(false);
    t.cert = pki.write("empty.pem", "");
    let e = bind_error(t.clone()).await;
    assert_eq!(
        e,
        format!("listeners.tls.cert: {}: file is empty", shown(&t.cert))
    );

    let mut t = pki.tls(false);
    t.key = pki.write("garbage.key", "this is not a key\n");
    let e = bind_error(t.clone()).await;
    assert!(
        e.starts_with(&format!(
            "listeners.tls.key: {}: no private key found",
            shown(&t.key)
        )),
        "{e}"
    );

    let mut t = pki.tls(false);
    t.key = pki.write(
        "bad-pem.key",
        "-----BEGIN PRIVATE KEY-----\n%%%%\n-----END PRIVATE KEY-----\n",
    );
    let e = bind_error(t.clone()).await;
    assert!(
        e.starts_with(&format!("listeners.tls.key: {}:", shown(&t.key))),
        "{e}"
    );

    // A valid key, but not the certificate's.
    let (_, other_key) = pki.ca.server();
    let mut t = pki.tls(false);
    t.key = pki.write("other.key", &other_key);
    let e = bind_error(t.clone()).await;
    assert_eq!(
        e,
        format!(
            "listeners.tls.key: {}: private key does not match the certificate in {}",
            shown(&t.key),
            shown(&t.cert)
        )
    );

    let mut t = pki.tls(true);
    t.client_ca = Some(pki.write("ca-garbage.pem", "garbage\n"));
    let e = bind_error(t.clone()).await;
    let ca = shown(t.client_ca.as_ref().unwrap());
    assert!(
        e.starts_with(&format!(
            "listeners.tls.client_ca: {ca}: no certificate found"
        )),
        "{e}"
    );
}

#[test]
fn config_refuses_tls_listeners_without_tls() {
    let e =
        midge::Config::parse("[listeners]\nmqtts = \"127.0.0.1:8883\"\n", "m.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "m.toml: field `listeners.tls`: must be set (cert and key) when `mqtts` or `wss` is"
    );
    let e = midge::Config::parse(
        "[listeners]\nwss = \"127.0.0.1:8084\"\n[listeners.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\ncn_as_username = true\n",
        "m.toml",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("`listeners.tls.cn_as_username`: needs `client_ca`"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Failed handshakes are logged (issue 19, item 6)
// ---------------------------------------------------------------------------

/// mosquitto_pub trusting another CA, and OpenSSL's client limited to
/// TLS 1.1 (mosquitto_pub's `--tls-version tlsv1.1` still offers 1.3):
/// each failed handshake is a warning naming the peer and rustls' reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_logged_with_peer_and_reason() {
    if !mosquitto_available() {
        missing_tool("mosquitto_pub / mosquitto_sub (apt-get install mosquitto-clients)");
        return;
    }
    let pki = Pki::new();
    let other = Ca::new("Another CA");
    let other_ca = pki.write("other-ca.pem", &other.pem());
    let cfg = pki.write(
        "midge.toml",
        &format!(
            "[listeners]\nmqtts = \"127.0.0.1:0\"\n[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.cert_file.display(),
            pki.key_file.display()
        ),
    );
    let b = midge_e2e::process::BrokerProcess::start(&cfg, 0);
    let port = b.mqtts_addr.expect("mqtts listener").port().to_string();
    let attempt = |extra: &[&str], ca: &PathBuf| {
        let mut p = Command::new("mosquitto_pub");
        p.args(["-h", "127.0.0.1", "-p", &port, "-t", "t", "-m", "x"])
            .arg("--cafile")
            .arg(ca)
            .args(["-i", &unique("badtls")])
            .args(extra);
        p
    };
    let o = run_command(attempt(&[], &other_ca), Duration::from_secs(20)).await;
    assert!(
        !o.status.success(),
        "a server certificate of another CA is refused"
    );
    let mut old = Command::new("openssl");
    old.args([
        "s_client",
        "-tls1_1",
        "-connect",
        &format!("127.0.0.1:{port}"),
    ]);
    let o = run_command(old, Duration::from_secs(20)).await;
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("BEGIN CERTIFICATE"),
        "TLS 1.1 is refused"
    );
    let lines = || -> Vec<String> {
        b.log()
            .lines()
            .filter(|l| l.contains("TLS handshake failed"))
            .map(str::to_string)
            .collect()
    };
    within("two handshake failures in the log", async {
        while lines().len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let lines = lines();
    for l in &lines {
        assert!(l.contains("WARN"), "{l}");
        assert!(l.contains("peer=127.0.0.1:"), "{l}");
        assert!(
            l.contains("listener=\"mqtts\"") || l.contains("listener=mqtts"),
            "{l}"
        );
    }
    assert!(
        lines[0].contains("UnknownCA") || lines[0].contains("unknown ca"),
        "the client's alert is the reason: {}",
        lines[0]
    );
    assert!(
        lines[1].contains("peer is incompatible"),
        "rustls' reason for a TLS 1.1 client: {}",
        lines[1]
    );
    assert!(
        !b.log().contains("Illegal SNI extension"),
        "rustls' own warnings stay out of the log"
    );
    assert!(b.terminate().success());
}
