//! Interoperability with paho-mqtt (Python, 2.x): scripts in tests/python/.
//! Under CI=true a missing python3 / paho-mqtt fails; otherwise the test is skipped.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use midge_e2e::*;

fn paho_available() -> bool {
    Command::new("python3")
        .args(["-c", "import paho.mqtt, sys; sys.exit(0 if int(paho.mqtt.__version__.split('.')[0]) >= 2 else 1)"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

async fn run_script(name: &str) {
    if !paho_available() {
        missing_tool("python3 with paho-mqtt >= 2 (pip install paho-mqtt)");
        return;
    }
    let b = start_broker(|_| {}).await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let mut cmd = Command::new("python3");
    cmd.arg(dir.join(name))
        .arg(b.port().to_string())
        .current_dir(&dir);
    let out = run_command(cmd, Duration::from_secs(60)).await;
    assert!(
        out.status.success(),
        "{name} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_connect_v311_and_v5() {
    run_script("connect.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_qos_round_trip() {
    run_script("qos.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_retained() {
    run_script("retained.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_will() {
    run_script("will.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_user_properties_and_subscription_identifiers() {
    run_script("v5_properties.py").await;
}
