//! `midge store check|export|repair` as an operator runs it: a tool never
//! creates a store, a missing or empty directory is an error, and a store
//! the broker holds is named as such.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use midge_e2e::process::{self, BrokerProcess};
use midge_e2e::TempDir;

fn midge(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(process::midge_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_missing_or_empty_directory_is_refused_and_not_created() {
    let tmp = TempDir::new("midge-store-tools");
    let cwd = &tmp.0;
    let missing = cwd.join("no/such/dir");
    for action in ["check", "export", "repair"] {
        let o = midge(
            cwd,
            &["store", action, "--data-dir", missing.to_str().unwrap()],
        );
        assert!(!o.status.success(), "{action}");
        let err = stderr(&o);
        assert!(
            err.contains(&missing.display().to_string()) && err.contains("no such directory"),
            "{action}: {err}"
        );
        assert!(!missing.exists(), "{action} created {}", missing.display());
    }
    // No arguments: the default ./data is not created either.
    let o = midge(cwd, &["store", "check"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such directory"), "{}", stderr(&o));
    assert!(!cwd.join("data").exists(), "`store check` created ./data");
    // An existing directory without a store in it.
    let empty = cwd.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = midge(cwd, &["store", "check", "--data-dir", "empty"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no store in this directory"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "files were created in the empty directory"
    );
}

#[test]
fn a_store_the_broker_holds_is_named_as_such() {
    let tmp = TempDir::new("midge-store-locked");
    let data = tmp.0.join("data");
    let cfg = tmp.0.join("midge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[persistence]\nenabled = true\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let b = BrokerProcess::start(&cfg, 0);
    let o = midge(
        &tmp.0,
        &["store", "check", "--config", cfg.to_str().unwrap()],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("the broker is running (the store is locked)"),
        "{err}"
    );
    assert!(!err.contains("WouldBlock"), "a raw error: {err}");
    assert!(b.terminate().success());
    // Stopped: the same command reads it.
    let o = midge(
        &tmp.0,
        &["store", "check", "--config", cfg.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("0 corrupt"), "{}", stderr(&o));
}
