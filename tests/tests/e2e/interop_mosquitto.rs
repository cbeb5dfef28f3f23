//! Interoperability with Debian's mosquitto_pub / mosquitto_sub.
//! Under CI=true missing binaries fail; otherwise the test is skipped.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use midge_e2e::*;

fn tools_available() -> bool {
    ["mosquitto_pub", "mosquitto_sub"]
        .iter()
        .all(|t| Command::new(t).arg("--help").output().is_ok())
}

fn sub_cmd(
    b: &TestBroker,
    version: &str,
    topic: &str,
    qos: u8,
    count: u32,
    extra: &[&str],
) -> Command {
    let mut c = Command::new("mosquitto_sub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &b.port().to_string(),
        "-V",
        version,
        "-t",
        topic,
    ])
    .args(["-q", &qos.to_string(), "-C", &count.to_string(), "-W", "10"])
    .args(["-i", &unique("msub")])
    .args(extra);
    c
}

fn pub_cmd(
    b: &TestBroker,
    version: &str,
    topic: &str,
    qos: u8,
    msg: &str,
    extra: &[&str],
) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &b.port().to_string(),
        "-V",
        version,
        "-t",
        topic,
    ])
    .args(["-q", &qos.to_string(), "-m", msg, "-i", &unique("mpub")])
    .args(extra);
    c
}

fn stdout(o: &std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({:?}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// mosquitto_sub receives what mosquitto_pub publishes.
async fn pub_sub(version: &str, qos: u8) {
    if !tools_available() {
        missing_tool("mosquitto_pub / mosquitto_sub (apt-get install mosquitto-clients)");
        return;
    }
    let b = start_broker(|_| {}).await;
    let t = topic("mosq");
    let sub = tokio::spawn(run_command(
        sub_cmd(&b, version, &t, qos, 1, &[]),
        Duration::from_secs(20),
    ));
    // mosquitto_sub may not have subscribed yet: publish (non-retained) until it exits after one message.
    within("mosquitto_sub to receive a message", async {
        while !sub.is_finished() {
            let o = run_command(
                pub_cmd(&b, version, &t, qos, "from-mosquitto", &[]),
                Duration::from_secs(20),
            )
            .await;
            stdout(&o, "mosquitto_pub");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let out = sub.await.unwrap();
    assert_eq!(stdout(&out, "mosquitto_sub").trim(), "from-mosquitto");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_qos0() {
    pub_sub("mqttv311", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_qos1() {
    pub_sub("mqttv311", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_qos2() {
    pub_sub("mqttv311", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_qos0() {
    pub_sub("mqttv5", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_qos1() {
    pub_sub("mqttv5", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_qos2() {
    pub_sub("mqttv5", 2).await;
}

async fn retained(version: &str) {
    if !tools_available() {
        missing_tool("mosquitto_pub / mosquitto_sub (apt-get install mosquitto-clients)");
        return;
    }
    let b = start_broker(|_| {}).await;
    let t = topic("mosqret");
    for qos in [0u8, 1, 2] {
        let o = run_command(
            pub_cmd(&b, version, &t, qos, &format!("retained-{qos}"), &["-r"]),
            Duration::from_secs(20),
        )
        .await;
        stdout(&o, "mosquitto_pub -r");
        let o = run_command(
            sub_cmd(&b, version, &t, qos, 1, &["-v"]),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(
            stdout(&o, "mosquitto_sub").trim(),
            format!("{t} retained-{qos}")
        );
    }
    // Rumqttc sees the mosquitto-retained message too.
    let mut c = V4::new(&b, "check").await;
    c.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    assert_eq!(text(&c.next_publish().await.payload), "retained-2");
    // Delete with an empty retained message (-n).
    let mut del = Command::new("mosquitto_pub");
    del.args([
        "-h",
        "127.0.0.1",
        "-p",
        &b.port().to_string(),
        "-V",
        version,
        "-t",
        &t,
        "-r",
        "-n",
        "-q",
        "1",
    ]);
    stdout(
        &run_command(del, Duration::from_secs(20)).await,
        "mosquitto_pub -n -r",
    );
    let o = run_command(
        sub_cmd(&b, version, &t, 1, 1, &["-W", "1"]),
        Duration::from_secs(20),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&o.stdout).trim().is_empty(),
        "retained message not deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_retained() {
    retained("mqttv311").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_retained() {
    retained("mqttv5").await;
}
