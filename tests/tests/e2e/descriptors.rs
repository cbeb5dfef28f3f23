//! The descriptor limit at start (issue 25): the broker raises its soft
//! open-file limit to the hard one, and says at start when what it has is
//! below `limits.max_connections`. Each broker runs under `prlimit`
//! (util-linux) with the limits the case needs.
//!
//! Run: cargo nextest run -p midge-e2e -E 'test(/descriptor/)'

#![allow(clippy::unwrap_used)]

use midge_e2e::process::BrokerProcess;
use midge_e2e::raw::*;
use midge_e2e::*;

/// The broker's log once it has a line containing `text` (its log is read
/// by a thread of its own, so a line can arrive after the listening lines).
async fn log_with(b: &BrokerProcess, text: &str) -> String {
    for _ in 0..100 {
        let log = b.log();
        if log.contains(text) {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    b.log()
}

fn config(dir: &TempDir, max_connections: usize) -> std::path::PathBuf {
    let file = dir.0.join("midge.toml");
    std::fs::write(
        &file,
        format!("[limits]\nmax_connections = {max_connections}\n"),
    )
    .unwrap();
    file
}

/// Started with a soft limit of 64 and a hard one of 4096, the broker takes
/// 200 connections at once (each one a descriptor), and says it raised the
/// limit. Without the raise the accepts past about 55 fail with EMFILE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let dir = TempDir::new("midge-descriptors-raise");
    let cfg = config(&dir, 1000);
    let b = BrokerProcess::start_wrapped(&cfg, 0, false, &[], &["prlimit", "--nofile=64:4096"]);
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut c = RawClient::connect(b.addr).await;
        let ack = c.send_connect(&ConnectOpts::v4(&format!("fd-{i}"))).await;
        assert_eq!(ack.code, 0, "connection {i} refused");
        clients.push(c);
    }
    let log = log_with(&b, "descriptor limit raised to the hard limit").await;
    assert!(
        log.contains("descriptor limit raised to the hard limit")
            && log.contains("from=64")
            && log.contains("to=4096"),
        "no raise in the log:\n{log}"
    );
    assert!(
        !log.contains("leaves room for about"),
        "a warning with room enough:\n{log}"
    );
}

/// With a hard limit of 128 and `max_connections = 1000` the broker warns at
/// start, naming the setting and both figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_limit_below_max_connections_is_reported_at_start() {
    let dir = TempDir::new("midge-descriptors-low");
    let cfg = config(&dir, 1000);
    let b = BrokerProcess::start_wrapped(&cfg, 0, false, &[], &["prlimit", "--nofile=128:128"]);
    let log = log_with(&b, "descriptor limit 128").await;
    assert!(
        log.contains("descriptor limit 128 leaves room for about 64 connections, below limits.max_connections = 1000"),
        "no warning naming limits.max_connections:\n{log}"
    );
    // It still serves within the limit.
    let mut c = RawClient::connect(b.addr).await;
    assert_eq!(c.send_connect(&ConnectOpts::v4("fd-low")).await.code, 0);
}
