//! The plugin author's and operator's tools, run as the `midge` binary:
//! `midge check` loading each plugin and running its `init`, `serve`
//! printing a start-up error once, `midge rule test --config` and the
//! rules test API calling a plugin's function, and `midge plugin new` /
//! `plugin test` / `plugin run` taking a new project from nothing to
//! tested outside this repository.
#![allow(clippy::unwrap_used)] // test helpers

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use midge_e2e::http::Admin;
use midge_e2e::process::{midge_bin, BrokerProcess};
use midge_e2e::*;

fn midge(args: &[&str]) -> Command {
    let mut c = Command::new(midge_bin());
    c.args(args);
    c
}

async fn run(cmd: Command) -> Output {
    run_command(cmd, Duration::from_secs(120)).await
}

/// A config file in `dir` with `plugins` (`{wasm}` replaced).
fn config(dir: &Path, wasm: &Path, plugins: &str) -> PathBuf {
    let text = format!(
        "[plugins]\nkv_path = \"{}\"\n{}",
        dir.join("kv").display(),
        plugins.replace("{wasm}", &wasm.display().to_string())
    );
    let file = dir.join("midge.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn misbehave(name: &str, config: &str) -> String {
    format!(
        "[[plugins.plugin]]\nname = \"{name}\"\npath = \"{{wasm}}/test_misbehave.wasm\"\nconfig = {config}\ngrants = {{ kv = \"{name}\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_runs_each_plugins_init_and_refuses_a_bad_one() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let dir = TempDir::new("midge-check");
    let plugins = misbehave("good", "{}")
        + &misbehave("refuses", r#"{ x = "fail-init" }"#)
        + &misbehave("traps", r#"{ x = "trap-init" }"#);
    let file = config(&dir.0, &wasm, &plugins);
    let out = run({
        let mut c = midge(&["check", "--config"]);
        c.arg(&file);
        c
    })
    .await;
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("plugin refuses: cannot load: init refused its config: asked to fail"),
        "{err}"
    );
    assert!(err.contains("plugin traps: cannot load: "), "{err}");
    assert!(
        err.contains("panicked at") && err.contains("asked to trap in init"),
        "{err}"
    );
    assert!(!err.contains("plugin good"), "{err}");
    assert!(err.contains("2 error(s)"), "{err}");
    assert!(!dir.0.join("kv").exists(), "the kv store was not touched");

    let file = config(&dir.0, &wasm, &misbehave("good", "{}"));
    let out = run({
        let mut c = midge(&["check", "--config"]);
        c.arg(&file);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with(": ok\n"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_a_start_up_error_once() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let dir = TempDir::new("midge-serve-err");
    let file = config(
        &dir.0,
        &wasm,
        &misbehave("refuses", r#"{ x = "fail-init" }"#),
    );
    let out = run({
        let mut c = midge(&[
            "serve",
            "--no-ws",
            "--no-admin",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ]);
        c.arg(&file);
        c
    })
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("asked to fail").count(), 1, "{err}");
    assert!(
        err.contains("error: plugins: plugin refuses: cannot load: init refused its config"),
        "{err}"
    );
}

const FUNCTIONS: &str = r#"
[[plugins.plugin]]
name = "fx"
path = "{wasm}/test_misbehave.wasm"
config = { mode = "functions-only" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_test_with_a_config_calls_its_plugins_functions() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let dir = TempDir::new("midge-rule-test");
    let file = config(&dir.0, &wasm, FUNCTIONS);
    let sql = r#"SELECT double(payload.x) AS d FROM "t/#""#;
    let args = [
        "rule",
        "test",
        "--sql",
        sql,
        "--topic",
        "t/1",
        "--payload",
        r#"{"x":21}"#,
    ];
    let mut c = midge(&args);
    c.arg("--config").arg(&file);
    let out = run(c).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows, serde_json::json!([{ "d": 42 }]));
    // Without the config no plugin offers it.
    let out = run(midge(&args)).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("double"),
        "{}",
        text(&out.stderr)
    );

    // The running broker's rules test API uses its loaded plugins.
    let broker = BrokerProcess::start(&file, 0);
    let admin = Admin::of_process(&broker);
    let body = serde_json::json!({
        "sql": sql,
        "sample": { "topic": "t/1", "payload": r#"{"x":2.5}"# },
    });
    let (status, v) = admin.send("POST", "/api/v1/rules/test", Some(body)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"], serde_json::json!([{ "d": 5 }]), "{v}");
}

/// `midge plugin new` writes a project into a directory outside this
/// repository, with the SDK built into the binary (the same files as the
/// crate `cargo package` makes of sdk/, checked byte for byte), that builds
/// as written (offline, from the local crate cache) and
/// passes `midge plugin test`; `midge plugin run` feeds it a message and a
/// function call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_project_builds_outside_the_repository_and_passes_its_tests() {
    // The wasm target and the plugins' target dir (shared for speed: the
    // same dependencies, already built there).
    let Some(plugins_wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let target = plugins_wasm.join("../..").canonicalize().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let dir = TempDir::new("midge-new-plugin");
    assert!(!dir.0.starts_with(&repo), "outside the repository");
    // The SDK as crates.io would hold it: packaged from the plugins
    // workspace, which `cargo package` turns into a standalone manifest.
    let mut package = Command::new(env!("CARGO"));
    package
        .args(["package", "-p", "midge-sdk", "--offline", "--no-verify"])
        .args(["--allow-dirty", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(dir.0.join("package-target"))
        .current_dir(repo.join("plugins"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    let out = run(package).await;
    assert!(out.status.success(), "cargo package: {}", text(&out.stderr));
    let crate_file = std::fs::read_dir(dir.0.join("package-target/package"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "crate"))
        .expect("the packaged midge-sdk crate");
    // Unpacked as cargo unpacks a downloaded crate: a directory
    // midge-sdk-VERSION holding the package's files.
    let unpacked = dir.0.join("registry");
    std::fs::create_dir_all(&unpacked).unwrap();
    let mut tar = Command::new("tar");
    tar.arg("-xzf").arg(&crate_file).arg("-C").arg(&unpacked);
    let out = run(tar).await;
    assert!(out.status.success(), "tar: {}", text(&out.stderr));
    let released = unpacked.join(crate_file.file_stem().unwrap());
    let manifest = std::fs::read_to_string(released.join("Cargo.toml")).unwrap();
    assert!(!manifest.contains("workspace"), "{manifest}");
    assert!(released.join("wit/midge-plugin.wit").is_file());

    // By default the project gets the SDK built into the binary, in
    // midge-sdk/: the released crate's files, the same bytes.
    let project = dir.0.join("e2e-shout");
    let out = run({
        let mut c = midge(&["plugin", "new", "e2e-shout", "--dir"]);
        c.arg(&project);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in [
        "src/lib.rs",
        "src/batch.rs",
        "wit/midge-plugin.wit",
        "README.md",
    ] {
        assert_eq!(
            std::fs::read(project.join("midge-sdk").join(file)).unwrap(),
            std::fs::read(released.join(file)).unwrap(),
            "bundled midge-sdk/{file} differs from the packaged crate's"
        );
    }
    // --sdk-path: a dependency on a local copy (here the packaged crate).
    let by_path = dir.0.join("by-path");
    let out = run({
        let mut c = midge(&["plugin", "new", "by-path", "--sdk-path"]);
        c.arg(&released).arg("--dir").arg(&by_path);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cargo = std::fs::read_to_string(by_path.join("Cargo.toml")).unwrap();
    assert!(
        cargo.contains(&format!("path = {:?}", released.display().to_string())),
        "{cargo}"
    );
    assert!(!by_path.join("midge-sdk").exists());

    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--release", "--offline"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("CARGO_BUILD_TARGET");
    let out = run_command(build, Duration::from_secs(900)).await;
    assert!(out.status.success(), "cargo build: {}", text(&out.stderr));
    let wasm = target.join("wasm32-wasip2/release/e2e_shout.wasm");
    assert!(wasm.is_file(), "{}", wasm.display());

    let mut test = midge(&["plugin", "test"]);
    test.current_dir(&project).env("CARGO_TARGET_DIR", &target);
    let out = run(test).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");

    let out = run({
        let mut c = midge(&["plugin", "run"]);
        c.arg(&wasm).args([
            "--config",
            r#"{"filter":"a/#"}"#,
            "publish",
            "a/b",
            "--payload",
            "hey",
        ]);
        c
    })
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("plugin e2e-shout 0.1.0: hooks on-publish, rule-functions"),
        "{stdout}"
    );
    assert!(
        stdout.contains("log INFO (init): upper-casing messages on a/#"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"answer: modify: topic "a/b", payload "HEY""#),
        "{stdout}"
    );
    assert!(stdout.contains("took "), "{stdout}");
    let out = run({
        let mut c = midge(&["plugin", "run"]);
        c.arg(&wasm).args(["function", "shout", r#""quiet""#]);
        c
    })
    .await;
    assert!(
        text(&out.stdout).contains(r#"answer: "QUIET""#),
        "{}",
        text(&out.stdout)
    );
}

/// `midge plugin test` fails (exit 1) on a case that does not hold and
/// prints what differed; `plugin run` prints the log records and failures
/// of a misbehaving plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_test_reports_a_failed_case_and_run_a_failure() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let dir = TempDir::new("midge-plugin-test");
    let cases = format!(
        r#"
[plugin]
name = "m"
path = "{}"
grants = {{ publish = ["echo/#"] }}

[[case]]
name = "reverses"
publish = {{ topic = "t", payload = "abc" }}
expect = {{ decision = "modify", payload = "cba" }}

[[case]]
name = "publishes"
publish = {{ topic = "publish", payload = "x" }}
expect = {{ published = ["echo/x"], payload = "ok" }}

[[case]]
name = "invalid output is a failure"
publish = {{ topic = "bad/topic-hash" }}
expect = {{ decision = "failed", error = "has a wildcard" }}

[[case]]
name = "wrong on purpose"
connect = {{ username = "alice", password = "secret" }}
expect = {{ decision = "deny" }}
"#,
        wasm.join("test_misbehave.wasm").display()
    );
    let file = dir.0.join("cases.toml");
    std::fs::write(&file, cases).unwrap();
    let out = run({
        let mut c = midge(&["plugin", "test"]);
        c.arg(&file);
        c
    })
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok    reverses"), "{stdout}");
    assert!(stdout.contains("ok    publishes"), "{stdout}");
    assert!(
        stdout.contains("ok    invalid output is a failure"),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL  wrong on purpose"), "{stdout}");
    assert!(
        stdout.contains("decision: expected deny, got allow"),
        "{stdout}"
    );
    assert!(stdout.contains("3 passed, 1 failed"), "{stdout}");

    let out = run({
        let mut c = midge(&["plugin", "run"]);
        c.arg(wasm.join("test_misbehave.wasm"))
            .args(["publish", "trap"]);
        c
    })
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("log ERROR: panicked at"), "{stdout}");
    assert!(
        stdout.contains("answer: failed: plugin test_misbehave: on-publish trapped: panicked at"),
        "{stdout}"
    );
}
