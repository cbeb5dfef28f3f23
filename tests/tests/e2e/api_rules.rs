//! Rules created, changed and deleted through the admin API are kept in the
//! admin API's rules file (the overlay over the config's `[[rules]]`): they
//! survive SIGHUP, `POST /config/reload` and restarts of the real broker
//! process, a failed write changes nothing, and a corrupt file is named.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use midge_e2e::http::Admin;
use midge_e2e::process::{midge_bin, BrokerProcess};
use midge_e2e::*;
use serde_json::{json, Value};

const TOKEN: &str = "api-rules-token";

/// A republish rule from `in/<name>` to `out/<name>` as TOML.
fn toml_rule(id: &str, name: &str) -> String {
    format!(
        "[[rules]]\nid = \"{id}\"\nsql = 'SELECT payload FROM \"in/{name}\"'\n\
         actions = [{{ type = \"republish\", topic = \"out/{name}\", payload = \"{id} ${{payload}}\" }}]\n"
    )
}

/// The same rule as an API body.
fn api_rule(id: &str, name: &str) -> Value {
    json!({
        "id": id,
        "sql": format!("SELECT payload FROM \"in/{name}\""),
        "actions": [{ "type": "republish", "topic": format!("out/{name}"), "payload": format!("{id} ${{payload}}") }],
    })
}

/// A config file in `dir` (data dir `dir/data`) with `rules` (TOML).
fn write_config(dir: &Path, rules: &str) -> PathBuf {
    let file = dir.join("midge.toml");
    let data = dir.join("data");
    std::fs::write(
        &file,
        format!(
            "[log]\nlevel = \"warn\"\n[admin]\ntoken = \"{TOKEN}\"\n\
             [persistence]\ndata_dir = '{}'\n{rules}",
            data.display()
        ),
    )
    .unwrap();
    file
}

fn admin(p: &BrokerProcess) -> Admin {
    Admin {
        addr: p.admin_addr,
        token: TOKEN.into(),
    }
}

/// Publishes `payload` to `in/<name>` and returns what a subscriber of
/// `out/<name>` receives (the rule acted), bounded by the harness's wait.
async fn republished(port: u16, name: &str, payload: &str) -> String {
    let mut sub = V4::new_at(port).await;
    sub.subscribe(&format!("out/{name}"), rumqttc::QoS::AtLeastOnce)
        .await;
    let mut publ = V4::new_at(port).await;
    publ.publish(
        &format!("in/{name}"),
        rumqttc::QoS::AtLeastOnce,
        false,
        payload,
    )
    .await;
    text(&sub.next_publish().await.payload)
}

/// (id, source) of every running rule, in order.
async fn listed(a: &Admin) -> Vec<(String, String)> {
    a.get("/api/v1/rules").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_rule_survives_sighup_config_reload_and_restart() {
    let dir = TempDir::new("midge-api-rules");
    let config = write_config(&dir.0, &toml_rule("cfg", "cfg"));
    let p = BrokerProcess::start(&config, 0);
    let a = admin(&p);
    let (status, body) = a
        .send("POST", "/api/v1/rules", Some(api_rule("api1", "api")))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["source"], "api");
    assert_eq!(republished(p.port(), "api", "1").await, "api1 1");
    let file = dir.0.join("data").join("api-rules.json");
    let listed_meta = a.get("/api/v1/rules").await["meta"].clone();
    assert_eq!(listed_meta["api_rules_file"], file.display().to_string());
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.contains("\"api1\""), "{stored}");

    // SIGHUP with a changed file: the new config rule shows the reload ran.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap() + &toml_rule("cfg2", "cfg2"),
    )
    .unwrap();
    p.signal("HUP");
    let mut now = listed(&a).await;
    for _ in 0..200 {
        if now.iter().any(|(id, _)| id == "cfg2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = listed(&a).await;
    }
    assert_eq!(
        now,
        pairs(&[("cfg", "config"), ("cfg2", "config"), ("api1", "api")]),
        "after SIGHUP; log:\n{}",
        p.log()
    );
    assert_eq!(republished(p.port(), "api", "2").await, "api1 2");

    let (status, body) = a.send("POST", "/api/v1/config/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rules"], 3);
    assert_eq!(republished(p.port(), "api", "3").await, "api1 3");

    // Restart with the same config and data dir.
    assert!(p.terminate().success());
    let p = BrokerProcess::start(&config, 0);
    let a = admin(&p);
    assert_eq!(
        listed(&a).await,
        pairs(&[("cfg", "config"), ("cfg2", "config"), ("api1", "api")])
    );
    assert_eq!(republished(p.port(), "api", "4").await, "api1 4");
    assert_eq!(republished(p.port(), "cfg", "5").await, "cfg 5");

    // A rules file broken while running: a reload is refused naming it,
    // and the running rules stay.
    std::fs::write(&file, "{\"format\": 1, \"rules\": [").unwrap();
    let (status, body) = a.send("POST", "/api/v1/config/reload", None).await;
    assert_eq!(status, 400, "{body}");
    let e = body["error"].as_str().unwrap();
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert_eq!(listed(&a).await.len(), 3);
    assert_eq!(republished(p.port(), "api", "6").await, "api1 6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_rules_deleted_or_disabled_through_the_api_stay_so_after_a_restart() {
    let dir = TempDir::new("midge-api-rules-del");
    let config = write_config(
        &dir.0,
        &(toml_rule("gone", "gone") + &toml_rule("quiet", "quiet")),
    );
    let p = BrokerProcess::start(&config, 0);
    let a = admin(&p);
    let (status, body) = a.send("DELETE", "/api/v1/rules/gone", None).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = a.send("PUT", "/api/v1/rules/quiet/disable", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["enabled"], &body["source"]),
        (&json!(false), &json!("api"))
    );

    assert!(p.terminate().success());
    let p = BrokerProcess::start(&config, 0);
    let a = admin(&p);
    let (status, _) = a.send("GET", "/api/v1/rules/gone", None).await;
    assert_eq!(status, 404, "deleted through the API, still deleted");
    let list = a.get("/api/v1/rules").await;
    assert_eq!(list["meta"]["deleted"], json!(["gone"]));
    let quiet = a.get("/api/v1/rules/quiet").await;
    assert_eq!(
        (&quiet["enabled"], &quiet["source"]),
        (&json!(false), &json!("api"))
    );
    // `quiet` does not run: a probe rule on the same topic answers, and by
    // then `quiet` has been passed over (rules are evaluated on publish).
    let (status, body) = a
        .send(
            "POST",
            "/api/v1/rules",
            Some(json!({
                "id": "probe",
                "sql": "SELECT payload FROM \"in/quiet\"",
                "actions": [{ "type": "republish", "topic": "out/quiet", "payload": "probe ${payload}" }],
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(republished(p.port(), "quiet", "1").await, "probe 1");
    assert_eq!(a.get("/api/v1/rules/quiet/metrics").await["matched"], 0);

    // Dropping the API's word brings back the config's rules.
    let (status, body) = a.send("DELETE", "/api/v1/rules/gone/override", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rule"]["source"], "config");
    let (status, body) = a.send("DELETE", "/api/v1/rules/quiet/override", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rule"]["enabled"], true);
    let (status, body) = a.send("DELETE", "/api/v1/rules/probe/override", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rule"], Value::Null, "an API-only rule is gone");
    let (status, body) = a.send("DELETE", "/api/v1/rules/quiet/override", None).await;
    assert_eq!(status, 404, "nothing left to drop: {body}");

    assert!(p.terminate().success());
    let p = BrokerProcess::start(&config, 0);
    let a = admin(&p);
    assert_eq!(
        listed(&a).await,
        pairs(&[("gone", "config"), ("quiet", "config")])
    );
    assert_eq!(republished(p.port(), "gone", "2").await, "gone 2");
    assert_eq!(republished(p.port(), "quiet", "3").await, "quiet 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_file_that_cannot_be_written_is_a_500_and_changes_nothing() {
    let dir = TempDir::new("midge-api-rules-ro");
    let file = dir.0.join("api-rules.json");
    // A directory where the temporary file is to be written: no write can
    // succeed (not even as root, unlike a read-only directory), while the
    // (missing) file itself reads as no changes.
    std::fs::create_dir(dir.0.join(".api-rules.json.tmp")).unwrap();
    let rules = midge::Config::parse(&toml_rule("cfg", "cfg"), "rules.toml").unwrap();
    let f = file.clone();
    let b = start_broker(move |c| {
        c.rules = rules.rules;
        c.admin.api_rules_file = Some(f);
    })
    .await;
    let a = Admin::of(&b);
    let shown = file.display().to_string();
    for (method, path, body) in [
        ("POST", "/api/v1/rules", Some(api_rule("api1", "api"))),
        ("PUT", "/api/v1/rules/cfg/disable", None),
        (
            "PUT",
            "/api/v1/rules/cfg",
            Some(json!({ "sql": "SELECT 1 FROM \"x\"" })),
        ),
        ("DELETE", "/api/v1/rules/cfg", None),
    ] {
        let (status, got) = a.send(method, path, body).await;
        assert_eq!(status, 500, "{method} {path}: {got}");
        let e = got["error"].as_str().unwrap();
        assert!(e.starts_with(&shown) && e.contains("cannot write"), "{e}");
        assert_eq!(got["file"], shown);
    }
    // The running rules are as before, and still act.
    assert_eq!(listed(&a).await, pairs(&[("cfg", "config")]));
    assert_eq!(a.get("/api/v1/rules/cfg").await["enabled"], true);
    assert_eq!(republished(b.port(), "cfg", "1").await, "cfg 1");
    assert!(!file.exists());

    // A file that exists but is corrupt: refused the same way, named.
    let dir2 = TempDir::new("midge-api-rules-bad");
    let bad = dir2.0.join("api-rules.json");
    let f = bad.clone();
    let b = start_broker(move |c| c.admin.api_rules_file = Some(f)).await;
    let a = Admin::of(&b);
    std::fs::write(&bad, "not json").unwrap();
    let (status, got) = a
        .send("POST", "/api/v1/rules", Some(api_rule("api1", "api")))
        .await;
    assert_eq!(status, 500, "{got}");
    assert!(
        got["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a valid")),
        "{got}"
    );
    assert_eq!(a.get("/api/v1/rules").await["meta"]["count"], 0);
    assert_eq!(
        std::fs::read_to_string(&bad).unwrap(),
        "not json",
        "left as it was"
    );
}

/// Runs `midge serve` expecting it to exit (bounded); its status and stderr.
fn serve_until_exit(config: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(midge_bin())
        .args(["serve", "--no-ws", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("midge serve kept running over a corrupt rules file");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[test]
fn a_corrupt_rules_file_stops_start_up_and_midge_check_names_it() {
    let dir = TempDir::new("midge-api-rules-corrupt");
    let config = write_config(&dir.0, &toml_rule("cfg", "cfg"));
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("api-rules.json");
    let shown = file.display().to_string();
    let check = || {
        let out = Command::new(midge_bin())
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(check().0, "no rules file yet: {}", check().1);

    std::fs::write(&file, "{\"format\": 1, \"rules\": [{\"id\": ").unwrap();
    let (ok, err) = check();
    assert!(!ok);
    assert!(err.contains(&shown) && err.contains("not a valid"), "{err}");
    let (status, err) = serve_until_exit(&config);
    assert!(!status.success());
    assert!(err.contains(&shown) && err.contains("not a valid"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Well-formed, but a rule that does not compile: both name the file and the rule.
    std::fs::write(
        &file,
        "{\"format\": 1, \"rules\": [{\"id\": \"bad\", \"sql\": \"SELEC * FROM \\\"t\\\"\"}]}",
    )
    .unwrap();
    let (ok, err) = check();
    assert!(!ok);
    assert!(err.contains(&shown) && err.contains("bad"), "{err}");
    let (status, err) = serve_until_exit(&config);
    assert!(!status.success());
    assert!(err.contains(&shown) && err.contains("bad"), "{err}");
}
