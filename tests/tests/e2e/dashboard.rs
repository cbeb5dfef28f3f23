//! The web dashboard in a real headless Chromium: `tests/browser/dashboard.py`
//! (Selenium from PyPI, Debian's chromium and chromium-driver) starts the
//! `midge` binary on fixed loopback ports (the page must find the broker
//! again after a restart), logs in, watches the overview chart move under a
//! `mosquitto_pub` load, kicks a `mosquitto_sub` client, creates, dry-runs
//! and fires a rule, browses and deletes retained messages, publishes and
//! receives on the live topic page (MQTT 5.0 and 3.1.1), switches a plugin,
//! shows a cluster of two nodes (with the NATS of `MIDGE_TEST_NATS`: both
//! alive, the messages one forwards and the other receives), the bridges
//! page (an edge broker with a connected and an unreachable bridge), checks a wrong
//! token's message, a narrow screen, the keyboard, and a broker restart; any unexpected browser console error fails it. Screenshots
//! of every page go to `target/dashboard/<run>/` (not committed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The whole browser run must end within this.
const LIMIT: Duration = Duration::from_secs(480);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// What the browser test needs, or why it cannot run.
fn missing_tools() -> Option<String> {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} is missing (Debian packages chromium and chromium-driver; scripts/test.sh installs them)"
            ));
        }
    }
    let selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .status()
        .is_ok_and(|s| s.success());
    if !selenium {
        return Some("the Python package selenium is missing (scripts/test.sh installs it)".into());
    }
    None
}

#[test]
fn dashboard_in_chromium() {
    if let Some(why) = missing_tools() {
        assert!(
            !in_ci(),
            "dashboard browser test cannot run under CI: {why}"
        );
        eprintln!("SKIPPED: dashboard browser test: {why}");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf();
    let bin = midge_e2e::process::midge_bin();
    let wasm = midge_plugin::testing::wasm_dir();
    let persist = std::env::var("MIDGE_E2E_PERSIST").unwrap_or_default();
    // Fixed ports from this test's range (24000-24999), one set per run: mqtt, ws, admin and, for the cluster step, two more nodes on the next three; for the bridges step an edge broker on the next two and one port nothing listens on.
    let (run, ports) = if persist == "sled" {
        ("sled", 24111)
    } else {
        ("memory", 24101)
    };
    let artifacts = root.join("target/dashboard").join(run);
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("tests/browser/dashboard.py"))
        .current_dir(&root)
        .env("MIDGE_BIN", &bin)
        .env("DASH_PORT_BASE", ports.to_string())
        .env("DASH_ARTIFACTS", &artifacts)
        .env("DASH_PERSIST", &persist)
        .env("SE_AVOID_STATS", "true")
        .env("PYTHONUNBUFFERED", "1");
    if let Some(w) = &wasm {
        cmd.env("MIDGE_WASM_DIR", w);
    }
    let mut child = cmd.spawn().expect("run python3 tests/browser/dashboard.py");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the browser test") {
            break s;
        }
        if started.elapsed() > LIMIT {
            // SIGTERM first: the script then stops its broker and browser.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && grace.elapsed() < Duration::from_secs(15)
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the browser test did not finish within {LIMIT:?}; screenshots in {}",
                artifacts.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "the browser test failed ({status}); its output is above, screenshots and the broker's log in {}",
        artifacts.display()
    );
}
