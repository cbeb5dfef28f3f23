//! The operator's password flow without a Rust toolchain: `midge passwd`
//! (mosquitto_passwd's -c, -b, -D) writes the file, `path =
//! "builtin:auth-password"` loads the shipped plugin, and mosquitto_pub
//! gets in with the right password only; a change to the file applies
//! without a reload.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use midge_e2e::process::{midge_bin, BrokerProcess};
use midge_e2e::*;

fn passwd(args: &[&str]) -> Output {
    Command::new(midge_bin())
        .arg("passwd")
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// mosquitto_pub once; true when it got in.
async fn login(port: u16, user: &str, password: &str) -> bool {
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args([
            "-u", user, "-P", password, "-t", "pw/t", "-m", "x", "-q", "1",
        ])
        .args(["-i", &unique("pw")]);
    run_command(c, Duration::from_secs(20))
        .await
        .status
        .success()
}

#[test]
fn passwd_creates_updates_and_deletes_like_mosquitto_passwd() {
    let dir = TempDir::new("midge-passwd");
    let file = dir.0.join("passwd");
    let f = file.to_str().unwrap();
    // Without -c the file must exist.
    let o = passwd(&["-b", f, "alice", "one"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("-c"), "{o:?}");
    ok(&passwd(&["-c", "-b", f, "alice", "one"]));
    ok(&passwd(&["-b", f, "bob", "two"]));
    ok(&passwd(&["-b", f, "alice", "three"]));
    let text = std::fs::read_to_string(&file).unwrap();
    let users: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        users,
        vec!["alice", "bob"],
        "alice replaced in place:\n{text}"
    );
    assert!(text
        .lines()
        .all(|l| l.split(':').nth(1).unwrap().starts_with("$7$")));
    let alice = text.lines().next().unwrap().split_once(':').unwrap().1;
    assert_eq!(midge::passwd::verify(alice, b"three"), Ok(true));
    assert_eq!(midge::passwd::verify(alice, b"one"), Ok(false));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o640,
        "readable by the owner and the broker's group only"
    );
    ok(&passwd(&["-D", f, "bob"]));
    let o = passwd(&["-D", f, "bob"]);
    assert!(!o.status.success(), "bob is gone");
    // Without -b the password comes from stdin when it is not a terminal.
    let mut child = Command::new(midge_bin())
        .args(["passwd", f, "carol"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"four\n").unwrap();
    ok(&child.wait_with_output().unwrap());
    let f2 = midge::passwd::PasswordFile::read(&file).unwrap();
    assert_eq!(
        midge::passwd::verify(f2.get("carol").unwrap(), b"four"),
        Ok(true)
    );
    assert!(f2.get("bob").is_none());
    // A user name with a colon cannot be written.
    assert!(!passwd(&["-b", f, "a:b", "x"]).status.success());
}

fn config(dir: &Path, passwd_file: &Path) -> std::path::PathBuf {
    let p = dir.join("midge.toml");
    std::fs::write(
        &p,
        format!(
            r#"[limits]
allow_anonymous = false

[[plugins.plugin]]
name = "auth"
path = "builtin:auth-password"
grants = {{ dirs = [{{ host = "{dir}", guest = "/etc/midge" }}] }}
limits = {{ deadline_ms = 3000 }}
config = {{ password_file = "/etc/midge/{file}", acl_default = "allow" }}
"#,
            dir = dir.display(),
            file = passwd_file.file_name().unwrap().to_str().unwrap()
        ),
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_auth_password_with_a_file_from_midge_passwd() {
    if Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_err()
    {
        missing_tool("mosquitto_pub (apt-get install mosquitto-clients)");
        return;
    }
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let dir = TempDir::new("midge-builtin");
    let file = dir.0.join("passwd");
    let f = file.to_str().unwrap();
    ok(&passwd(&["-c", "-b", f, "alice", "wonderland"]));
    let cfg = config(&dir.0, &file);
    // `midge check` finds the built-in plugin in MIDGE_PLUGIN_DIR.
    let o = Command::new(midge_bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .env("MIDGE_PLUGIN_DIR", &wasm)
        .output()
        .unwrap();
    ok(&o);
    let wasm_dir = wasm.display().to_string();
    let b = BrokerProcess::start_env(&cfg, 0, &[("MIDGE_PLUGIN_DIR", &wasm_dir)]);
    assert!(login(b.port(), "alice", "wonderland").await, "{}", b.log());
    assert!(!login(b.port(), "alice", "wrong").await);
    assert!(!login(b.port(), "bob", "builder").await);
    // bob added while the broker runs: in within about a second, no reload.
    ok(&passwd(&["-b", f, "bob", "builder"]));
    within("bob's login after the file changed", async {
        while !login(b.port(), "bob", "builder").await {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    assert!(b.terminate().success());

    // Without the plugin directory, the error says where it looked.
    let o = Command::new(midge_bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .env_remove("MIDGE_PLUGIN_DIR")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("builtin:auth-password") && err.contains("auth_password.wasm is in none of"),
        "{err}"
    );
}
