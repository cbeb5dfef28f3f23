//! What an operator reads in the log and on the terminal (issue 19, items
//! 6 to 8): no colour codes in a pipe, fields as text (never `Some(..)`),
//! one copy of each error, a failing rule named at debug, the
//! restart-needed warning once per change, host names in listen addresses,
//! and the hint that a generated admin token changes at every start.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use midge_e2e::process::{midge_bin, BrokerProcess};
use midge_e2e::*;

fn write(dir: &TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.0.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

async fn wait_for_log(b: &BrokerProcess, what: &str) {
    within(what, async {
        while !b.log().contains(what) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_in_a_pipe_is_plain_text_with_readable_fields() {
    let dir = TempDir::new("midge-logs");
    let cfg = write(&dir, "midge.toml", "");
    let b = BrokerProcess::start_env(&cfg, 0, &[("RUST_LOG", "info")]);
    wait_for_log(&b, "admin API listener up").await;
    let log = b.log();
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a pipe:\n{log}");
    assert!(!log.contains("Some("), "Debug-formatted fields:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("MQTT listener up") && l.contains("addr=127.0.0.1:")),
        "{log}"
    );
    // The generated token: where to set one that lasts.
    assert!(b.admin_token.is_some());
    assert!(
        log.contains("set `[admin] token`") && log.contains("MIDGE_ADMIN_TOKEN"),
        "{log}"
    );
    assert!(b.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reads_once_and_host_names_listen() {
    let dir = TempDir::new("midge-logs-bind");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let o = Command::new(midge_bin())
        .args(["serve", "--no-ws", "--no-admin", "--listen"])
        .arg(format!("localhost:{port}"))
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(
        line.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "localhost is resolved: {line}"
    );
    assert!(line.contains("Address already in use"), "{line}");
    assert_eq!(
        line.matches("os error 98").count(),
        1,
        "the cause once, not twice: {line}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_failing_on_a_message_is_logged_at_debug_with_its_id() {
    if Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_err()
    {
        missing_tool("mosquitto_pub (apt-get install mosquitto-clients)");
        return;
    }
    let dir = TempDir::new("midge-logs-rule");
    let cfg = write(
        &dir,
        "midge.toml",
        "[[rules]]\nid = \"hot\"\nsql = 'SELECT payload.t AS t FROM \"s/#\" WHERE t > 3'\nactions = [{ type = \"log\" }]\n",
    );
    let b = BrokerProcess::start_env(&cfg, 0, &[("RUST_LOG", "info,midge::rules=debug")]);
    let mut p = Command::new("mosquitto_pub");
    p.args(["-h", "127.0.0.1", "-p", &b.port().to_string()])
        .args(["-t", "s/1", "-m", "not json", "-q", "1"]);
    let o = run_command(p, Duration::from_secs(20)).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for_log(&b, "rule evaluation failed").await;
    let log = b.log();
    let line = log
        .lines()
        .find(|l| l.contains("rule evaluation failed"))
        .unwrap();
    assert!(line.contains("DEBUG"), "{line}");
    assert!(
        line.contains("rule=\"hot\"") || line.contains("rule=hot"),
        "{line}"
    );
    assert!(line.contains("not valid JSON"), "the reason: {line}");
    assert!(b.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restart_needed_warning_is_given_once_per_change() {
    let dir = TempDir::new("midge-logs-reload");
    let cfg = write(&dir, "midge.toml", "[mqtt]\nmax_inflight = 100\n");
    let b = BrokerProcess::start_env(&cfg, 0, &[("RUST_LOG", "info")]);
    write(&dir, "midge.toml", "[mqtt]\nmax_inflight = 200\n");
    let warning = "take effect after a restart";
    let reloads = |b: &BrokerProcess| b.log().matches("rules reloaded").count();
    for n in 1..=3 {
        b.signal("HUP");
        within("the reload", async {
            while reloads(&b) < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    assert_eq!(b.log().matches(warning).count(), 1, "{}", b.log());
    let line = b
        .log()
        .lines()
        .find(|l| l.contains(warning))
        .unwrap()
        .to_string();
    assert!(line.contains("sections=mqtt"), "{line}");
    // Another change: warned again, naming both.
    write(
        &dir,
        "midge.toml",
        "[mqtt]\nmax_inflight = 200\n[sys]\ninterval = 5\n",
    );
    b.signal("HUP");
    within("the second warning", async {
        while b.log().matches(warning).count() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(b.log().contains("sections=mqtt, sys"), "{}", b.log());
    assert!(b.terminate().success());
}
