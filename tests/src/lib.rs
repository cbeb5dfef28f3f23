//! Test harness for the Midge end-to-end tests.
//!
//! - [`start_broker`] binds a real broker on 127.0.0.1:0 (TCP + WebSocket,
//!   and TLS listeners when the test configures them), runs it on the
//!   current tokio runtime and shuts it down on drop.
//! - [`V4`] / [`V5`] wrap a rumqttc client whose event loop is polled by a
//!   background task; events arrive on a channel and every wait is bounded.
//! - [`raw`] is an independent, hand-written MQTT encoder/decoder plus a raw
//!   TCP client for protocol-level tests (it deliberately does not use
//!   `midge-protocol`, so a codec bug shared by broker and client cannot hide).

#![allow(clippy::unwrap_used)]

pub mod http;
pub mod mosquitto;
pub mod nats;
pub mod process;
pub mod raw;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use midge;
pub use rumqttc;

/// Default bound for every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to wait when asserting that something does NOT arrive.
pub const QUIET: Duration = Duration::from_millis(500);

/// A running broker; shut down when dropped.
#[derive(Debug)]
pub struct TestBroker {
    pub addr: SocketAddr,
    pub ws_addr: SocketAddr,
    /// The `mqtts` / `wss` listeners, when the config sets them.
    pub mqtts_addr: Option<SocketAddr>,
    pub wss_addr: Option<SocketAddr>,
    pub config: midge::Config,
    /// The running broker's state (rule metrics, counters).
    pub broker: std::sync::Arc<midge::broker::Broker>,
    /// The `[[bridges]]` (status, buffers).
    pub bridges: std::sync::Arc<midge::bridge::Registry>,
    /// Listener admission state (per-listener connection counts).
    pub gate: std::sync::Arc<midge::server::Gate>,
    /// The admin HTTP API (127.0.0.1, port picked at start; `None` when a
    /// test turns it off) and the token it requires.
    pub admin_addr: Option<SocketAddr>,
    pub admin_token: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    /// The store directory when `MIDGE_E2E_PERSIST=sled` (removed on drop).
    _data: Option<TempDir>,
    /// The directory of the admin API's rules file when the test set no
    /// place for it (removed on drop).
    _api_rules: Option<TempDir>,
}

/// A temporary directory removed on drop (no extra dependency).
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestBroker {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn ws_port(&self) -> u16 {
        self.ws_addr.port()
    }
    /// `ws://127.0.0.1:PORT/mqtt` (the first configured path).
    pub fn ws_url(&self) -> String {
        format!(
            "ws://127.0.0.1:{}{}",
            self.ws_addr.port(),
            self.config.listeners.ws_paths[0]
        )
    }
    /// Port of the `mqtts` listener (panics when it is not configured).
    pub fn mqtts_port(&self) -> u16 {
        self.mqtts_addr.expect("no mqtts listener").port()
    }
    /// `wss://127.0.0.1:PORT/mqtt` (panics when `wss` is not configured).
    pub fn wss_url(&self) -> String {
        format!(
            "wss://127.0.0.1:{}{}",
            self.wss_addr.expect("no wss listener").port(),
            self.config.listeners.ws_paths[0]
        )
    }
    /// Stops the broker and waits (bounded) for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(WAIT, h).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // The task ends with the runtime at the latest; nothing to join here.
        let _ = self.handle.take();
    }
}

/// Starts a broker on 127.0.0.1:0 (TCP and WebSocket), letting `f` tweak the config.
pub async fn start_broker(f: impl FnOnce(&mut midge::Config)) -> TestBroker {
    start(midge::Config::default(), None, f).await
}

/// Like [`start_broker`], from a config file the broker knows as its own
/// (the admin API's config reload reads it). The harness's listener
/// addresses replace the file's.
pub async fn start_broker_from_file(
    path: &std::path::Path,
    f: impl FnOnce(&mut midge::Config),
) -> TestBroker {
    let config = midge::Config::load(path).expect("config file loads");
    start(config, Some(path.to_path_buf()), f).await
}

async fn start(
    mut config: midge::Config,
    path: Option<std::path::PathBuf>,
    f: impl FnOnce(&mut midge::Config),
) -> TestBroker {
    config.listeners.mqtt = Some("127.0.0.1:0".parse().unwrap());
    config.listeners.ws = Some("127.0.0.1:0".parse().unwrap());
    // Port 0: brokers of tests running in parallel never share the admin port.
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    config.log.level = "warn".into();
    // MIDGE_E2E_PERSIST=sled runs every end-to-end test with persistence on:
    // durable sessions must not change what clients see.
    let mut data = None;
    if std::env::var("MIDGE_E2E_PERSIST").as_deref() == Ok("sled") {
        let d = TempDir::new("midge-e2e-data");
        config.persistence.enabled = true;
        config.persistence.data_dir = d.0.clone();
        data = Some(d);
    }
    f(&mut config);
    // The admin API keeps rule edits in a file (by default under
    // ./data): each broker gets its own, so tests never share one.
    let mut api_rules = None;
    if config.admin.api_rules_file.is_none()
        && config.persistence.data_dir == midge::store::PersistenceConfig::default().data_dir
    {
        let d = TempDir::new("midge-e2e-api-rules");
        config.admin.api_rules_file = Some(d.0.join("api-rules.json"));
        api_rules = Some(d);
    }
    let mut server = midge::App::bind(config.clone())
        .await
        .expect("broker failed to bind");
    if let Some(p) = path {
        server = server.with_config_path(p);
    }
    let addr = server.mqtt_addr().expect("no mqtt listener");
    let ws_addr = server.ws_addr().unwrap_or(addr);
    let (mqtts_addr, wss_addr) = (server.mqtts_addr(), server.wss_addr());
    let broker = server.broker();
    let gate = server.gate();
    let bridges = server.bridges();
    let admin_addr = server.admin_addr();
    let admin_token = server.admin_token().map(str::to_string);
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        if let Err(e) = server.run(shutdown).await {
            eprintln!("broker run() returned an error: {e}");
        }
    });
    TestBroker {
        addr,
        ws_addr,
        mqtts_addr,
        wss_addr,
        config,
        broker,
        bridges,
        gate,
        admin_addr,
        admin_token,
        shutdown: Some(tx),
        handle: Some(handle),
        _data: data,
        _api_rules: api_rules,
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A string unique within this test process (and practically across runs).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// A unique topic under `e2e/`.
pub fn topic(name: &str) -> String {
    format!("e2e/{}", unique(name))
}

/// Awaits `fut` for at most [`WAIT`], panicking with `what` on timeout.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------
// rumqttc 3.1.1 (v4)
// ---------------------------------------------------------------------------

/// MQTT 3.1.1 options with a unique client id, keep alive 30 s.
pub fn v4_options(broker: &TestBroker, id_prefix: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(unique(id_prefix), "127.0.0.1", broker.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// A rumqttc 3.1.1 client whose event loop runs in a background task.
/// The task stops at the first connection error (no reconnect).
#[derive(Debug)]
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
    task: JoinHandle<()>,
}

impl Drop for V4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl V4 {
    /// Starts the event loop; does not wait for CONNACK (see [`V4::connack`]).
    pub fn start(opts: rumqttc::MqttOptions) -> V4 {
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 1000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        V4 {
            client,
            events,
            task,
        }
    }

    /// Starts and waits for a successful CONNACK.
    pub async fn connect(opts: rumqttc::MqttOptions) -> (V4, rumqttc::ConnAck) {
        let mut c = V4::start(opts);
        let ack = c.connack().await;
        assert_eq!(
            ack.code,
            rumqttc::ConnectReturnCode::Success,
            "CONNACK refused"
        );
        (c, ack)
    }

    /// Starts with 3.1.1 defaults for `broker` and waits for CONNACK.
    pub async fn new(broker: &TestBroker, id_prefix: &str) -> V4 {
        V4::connect(v4_options(broker, id_prefix)).await.0
    }

    /// Connects a fresh clean-session client to 127.0.0.1:`port`.
    pub async fn new_at(port: u16) -> V4 {
        let mut o = rumqttc::MqttOptions::new(unique("v4"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        V4::connect(o).await.0
    }

    /// Waits for the first event for which `f` returns `Some`.
    pub async fn wait<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&rumqttc::Event) -> Option<T>,
    ) -> T {
        let fut = async {
            loop {
                match self.events.recv().await {
                    Some(Ok(ev)) => {
                        if let Some(v) = f(&ev) {
                            return v;
                        }
                    }
                    Some(Err(e)) => panic!("connection error while waiting for {what}: {e}"),
                    None => panic!("event loop ended while waiting for {what}"),
                }
            }
        };
        within(what, fut).await
    }

    pub async fn connack(&mut self) -> rumqttc::ConnAck {
        self.wait("CONNACK", |e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    pub async fn suback(&mut self) -> rumqttc::SubAck {
        self.wait("SUBACK", |e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> rumqttc::SubAck {
        self.client.subscribe(filter, qos).await.unwrap();
        self.suback().await
    }

    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        self.wait("PUBLISH", |e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes and waits until the flow completes on our side
    /// (sent for QoS 0, PUBACK for 1, PUBCOMP for 2).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .unwrap();
        match qos {
            rumqttc::QoS::AtMostOnce => {
                self.wait("outgoing PUBLISH", |e| {
                    matches!(e, rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(_)))
                        .then_some(())
                })
                .await
            }
            rumqttc::QoS::AtLeastOnce => {
                self.wait("PUBACK", |e| {
                    matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
                })
                .await
            }
            rumqttc::QoS::ExactlyOnce => {
                self.wait("PUBCOMP", |e| {
                    matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_))).then_some(())
                })
                .await
            }
        }
    }

    /// Asserts that no PUBLISH arrives within `d`.
    pub async fn expect_no_publish(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))) => {
                    panic!("unexpected PUBLISH: {p:?}")
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return,
            }
        }
    }

    /// Waits until the event loop reports a connection error (or ends).
    pub async fn closed(&mut self) -> String {
        within("connection close", async {
            loop {
                match self.events.recv().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return e,
                    None => return "ended".to_string(),
                }
            }
        })
        .await
    }

    /// Sends DISCONNECT and waits until it has been written.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(WAIT, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect))) => return,
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        })
        .await;
        // Let the socket close be observed by the broker.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// rumqttc 5.0
// ---------------------------------------------------------------------------

pub mod v5 {
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnAckProperties, ConnectProperties, Filter, LastWill, LastWillProperties,
        Packet, Publish, PublishProperties, RetainForwardRule, SubAck, SubscribeProperties,
        SubscribeReasonCode, UnsubAck, UnsubAckReason,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
}

/// MQTT 5.0 options with a unique client id, keep alive 30 s.
pub fn v5_options(broker: &TestBroker, id_prefix: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(unique(id_prefix), "127.0.0.1", broker.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// A rumqttc 5.0 client whose event loop runs in a background task.
#[derive(Debug)]
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    task: JoinHandle<()>,
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl V5 {
    pub fn start(opts: rumqttc::v5::MqttOptions) -> V5 {
        let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 1000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        V5 {
            client,
            events,
            task,
        }
    }

    pub async fn connect(opts: rumqttc::v5::MqttOptions) -> (V5, v5::ConnAck) {
        let mut c = V5::start(opts);
        let ack = c.connack().await;
        assert_eq!(
            ack.code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success,
            "CONNACK refused"
        );
        (c, ack)
    }

    pub async fn new(broker: &TestBroker, id_prefix: &str) -> V5 {
        V5::connect(v5_options(broker, id_prefix)).await.0
    }

    pub async fn wait<T>(&mut self, what: &str, mut f: impl FnMut(&v5::Event) -> Option<T>) -> T {
        let fut = async {
            loop {
                match self.events.recv().await {
                    Some(Ok(ev)) => {
                        if let Some(v) = f(&ev) {
                            return v;
                        }
                    }
                    Some(Err(e)) => panic!("connection error while waiting for {what}: {e}"),
                    None => panic!("event loop ended while waiting for {what}"),
                }
            }
        };
        within(what, fut).await
    }

    pub async fn connack(&mut self) -> v5::ConnAck {
        self.wait("CONNACK", |e| match e {
            v5::Event::Incoming(v5::Packet::ConnAck(a)) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    pub async fn suback(&mut self) -> v5::SubAck {
        self.wait("SUBACK", |e| match e {
            v5::Event::Incoming(v5::Packet::SubAck(a)) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    pub async fn subscribe(&mut self, filter: &str, qos: v5::QoS) -> v5::SubAck {
        self.client.subscribe(filter, qos).await.unwrap();
        self.suback().await
    }

    pub async fn subscribe_filter(
        &mut self,
        filter: v5::Filter,
        props: Option<v5::SubscribeProperties>,
    ) -> v5::SubAck {
        match props {
            Some(p) => self
                .client
                .subscribe_many_with_properties(vec![filter], p)
                .await
                .unwrap(),
            None => self.client.subscribe_many(vec![filter]).await.unwrap(),
        }
        self.suback().await
    }

    pub async fn next_publish(&mut self) -> v5::Publish {
        self.wait("PUBLISH", |e| match e {
            v5::Event::Incoming(v5::Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    pub async fn wait_flow(&mut self, qos: v5::QoS) {
        match qos {
            v5::QoS::AtMostOnce => {
                self.wait("outgoing PUBLISH", |e| {
                    matches!(e, v5::Event::Outgoing(rumqttc::Outgoing::Publish(_))).then_some(())
                })
                .await
            }
            v5::QoS::AtLeastOnce => {
                self.wait("PUBACK", |e| {
                    matches!(e, v5::Event::Incoming(v5::Packet::PubAck(_))).then_some(())
                })
                .await
            }
            v5::QoS::ExactlyOnce => {
                self.wait("PUBCOMP", |e| {
                    matches!(e, v5::Event::Incoming(v5::Packet::PubComp(_))).then_some(())
                })
                .await
            }
        }
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        qos: v5::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .unwrap();
        self.wait_flow(qos).await;
    }

    pub async fn publish_props(
        &mut self,
        topic: &str,
        qos: v5::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
        props: v5::PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, retain, payload.into(), props)
            .await
            .unwrap();
        self.wait_flow(qos).await;
    }

    pub async fn expect_no_publish(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(v5::Event::Incoming(v5::Packet::Publish(p))))) => {
                    panic!("unexpected PUBLISH: {p:?}")
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return,
            }
        }
    }

    pub async fn closed(&mut self) -> String {
        within("connection close", async {
            loop {
                match self.events.recv().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return e,
                    None => return "ended".to_string(),
                }
            }
        })
        .await
    }

    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(WAIT, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(v5::Event::Outgoing(rumqttc::Outgoing::Disconnect))) => return,
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Payload as UTF-8 (lossy) for assertions.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------
// External tools (interop tests)
// ---------------------------------------------------------------------------

/// `true` when the CI environment variable is "true": missing tools fail.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Reports a missing external tool: panics under CI=true, otherwise prints
/// the reason and returns (the caller then skips the test).
pub fn missing_tool(reason: &str) {
    if in_ci() {
        panic!("required tool missing under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// MQTT.js's command-line client (`mqtt`), installed from npm by
/// scripts/test.sh into tests/js (pinned by its package-lock.json).
/// `None` (test skipped) when missing outside CI; a panic under CI=true.
pub fn mqttjs_cli() -> Option<std::path::PathBuf> {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("js/node_modules/.bin/mqtt");
    let node = std::process::Command::new("node").arg("--version").output();
    if bin.exists() && node.is_ok_and(|o| o.status.success()) {
        return Some(bin);
    }
    missing_tool("MQTT.js: node and `(cd tests/js && npm ci)` (scripts/test.sh installs it)");
    None
}

/// Runs a blocking command with a timeout (kills it on expiry) off the runtime.
pub async fn run_command(
    mut cmd: std::process::Command,
    timeout: Duration,
) -> std::process::Output {
    use std::process::Stdio;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let child = cmd.spawn().expect("spawn command");
    let pid = child.id();
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(timeout, waiter).await {
        Ok(r) => r.expect("join").expect("wait_with_output"),
        Err(_) => {
            // Kill exactly the process we started.
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status();
            panic!("command {cmd:?} timed out after {timeout:?}");
        }
    }
}

/// Proves the broker still serves other clients: a fresh 3.1.1 raw client
/// subscribes to a unique topic and receives its own QoS 1 publish.
pub async fn assert_alive(broker: &TestBroker) {
    use raw::*;
    let t = topic("alive");
    let (mut c, _) = RawClient::handshake(broker.addr, ConnectOpts::v4(&unique("alive"))).await;
    let s = c.subscribe(1, &[], &[(&t, 1)]).await;
    assert_eq!(s.codes, vec![1]);
    c.send(&publish(false, &t, 1, false, false, 9, &[], b"ping"))
        .await;
    let mut got_ack = false;
    let mut got_msg = false;
    while !(got_ack && got_msg) {
        let p = c.recv().await;
        match p.kind {
            PUBACK => got_ack = true,
            PUBLISH => {
                let m = p.publish(false);
                assert_eq!(m.payload, b"ping");
                if m.qos == 1 {
                    c.send(&puback(m.pid)).await;
                }
                got_msg = true;
            }
            _ => {}
        }
    }
}
