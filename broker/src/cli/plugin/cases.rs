//! `midge plugin test`: a plugin's behaviour as data, run without a broker.
//!
//! A test file holds the plugin's entry exactly as in the broker's
//! configuration (`[plugin]` = one `[[plugins.plugin]]`, its `path`
//! relative to the file) and cases, each one input and what to expect:
//!
//! ```toml
//! [plugin]
//! name = "upper"
//! path = "target/wasm32-wasip2/release/upper.wasm"
//! config = { filter = "text/#" }
//!
//! [[case]]
//! name = "shouts text"
//! publish = { topic = "text/a", payload = "hi" }
//! expect = { decision = "modify", payload = "HI" }
//!
//! [[case]]
//! name = "a function"
//! function = { name = "shout", args = ["hey"] }
//! expect = { result = "HEY" }
//! ```
//!
//! Inputs: `publish`, `connect`, `authorize`, `rule_output`, `function`
//! (see [`Input`]). Expectations: `decision` (pass, modify, drop, deny,
//! allow, continue, ignore, ok, not-called, failed), `topic`, `payload`,
//! `reason`, `result`, `published` (topics the plugin published to, in
//! order), `log` (text some log record of the call holds), `error` (text
//! the failure holds).

use std::path::{Path, PathBuf};

use midge_plugin::{OutputLimits, PluginConfig};
use serde::Deserialize;

use super::harness::{level_name, Answer, Harness, Input, Outcome};

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The plugin, as a `[[plugins.plugin]]` entry.
    pub plugin: PluginConfig,
    /// The broker's `[mqtt] max_packet_size` to check output against
    /// (default: MQTT's largest).
    #[serde(default)]
    pub max_packet_size: Option<u32>,
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

/// One case: a name, one input, what to expect. (Unknown keys are not
/// refused here: serde cannot with a flattened input; a misspelt input
/// fails as "no input".)
#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(flatten)]
    pub input: Input,
    #[serde(default)]
    pub expect: Expect,
}

/// What a case expects; fields left out are not checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub decision: Option<String>,
    pub topic: Option<String>,
    pub payload: Option<String>,
    pub reason: Option<u8>,
    pub result: Option<serde_json::Value>,
    pub published: Option<Vec<String>>,
    pub log: Option<String>,
    pub error: Option<String>,
}

/// Why a test file did not run.
#[derive(Debug, thiserror::Error)]
pub enum TestFileError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {error}")]
    Load {
        path: String,
        error: midge_plugin::PluginError,
    },
}

/// Reads `path`; the plugin's `path` is made relative to the file's
/// directory, except that `target/...` follows `CARGO_TARGET_DIR` when
/// that is set (cargo builds there then).
pub fn read(path: &Path) -> Result<TestFile, TestFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TestFileError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let mut file: TestFile = toml::from_str(&text).map_err(|e| TestFileError::Parse {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    if file.plugin.path.is_relative() {
        let moved = std::env::var_os("CARGO_TARGET_DIR").and_then(|t| {
            let rest = file.plugin.path.strip_prefix("target").ok()?;
            Some(PathBuf::from(t).join(rest))
        });
        file.plugin.path = match moved {
            Some(p) => p,
            None => {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                dir.join(&file.plugin.path)
            }
        };
    }
    Ok(file)
}

fn decision_name(a: &Answer) -> &'static str {
    match a {
        Answer::Pass => "pass",
        Answer::Modify(_) => "modify",
        Answer::Drop => "drop",
        Answer::Deny(_) | Answer::Authz(false) => "deny",
        Answer::Allow { .. } | Answer::Authz(true) => "allow",
        Answer::Continue(_) => "continue",
        Answer::Ignore => "ignore",
        Answer::Ok => "ok",
        Answer::Value(_) => "value",
        Answer::NotCalled(_) => "not-called",
        Answer::Failed(_) => "failed",
    }
}

/// What in `out` differs from `e`; empty when the case passed.
pub fn check(e: &Expect, out: &Outcome) -> Vec<String> {
    let mut wrong = Vec::new();
    let a = &out.answer;
    if let Some(d) = &e.decision {
        if d != decision_name(a) {
            wrong.push(format!("decision: expected {d}, got {a}"));
        }
    }
    if let Some(t) = &e.topic {
        match a {
            Answer::Modify(m) if &m.topic == t => {}
            _ => wrong.push(format!("topic: expected {t:?}, got {a}")),
        }
    }
    if let Some(p) = &e.payload {
        match a {
            Answer::Modify(m) if m.payload == p.as_bytes() => {}
            _ => wrong.push(format!("payload: expected {p:?}, got {a}")),
        }
    }
    if let Some(rc) = e.reason {
        if !matches!(a, Answer::Deny(got) if *got == rc) {
            wrong.push(format!("reason: expected deny 0x{rc:02x}, got {a}"));
        }
    }
    if let Some(r) = &e.result {
        if !matches!(a, Answer::Value(got) if got == r) {
            wrong.push(format!("result: expected {r}, got {a}"));
        }
    }
    if let Some(topics) = &e.published {
        let got: Vec<&str> = out.published.iter().map(|m| m.topic.as_str()).collect();
        if got != topics.iter().map(String::as_str).collect::<Vec<_>>() {
            wrong.push(format!("published: expected {topics:?}, got {got:?}"));
        }
    }
    if let Some(l) = &e.log {
        if !out.log.iter().any(|(_, m)| m.contains(l.as_str())) {
            wrong.push(format!("log: no record holds {l:?}"));
        }
    }
    if let Some(text) = &e.error {
        match a {
            Answer::Failed(f) if f.contains(text.as_str()) => {}
            _ => wrong.push(format!(
                "error: expected a failure holding {text:?}, got {a}"
            )),
        }
    }
    wrong
}

/// Runs every case of `path`, printing one line per case (and, for a
/// failed one, what differed and the call's log). Returns (passed, failed).
pub async fn run(
    path: &Path,
    out: &mut dyn std::io::Write,
) -> Result<(usize, usize), TestFileError> {
    let file = read(path)?;
    let shown = path.display().to_string();
    let limits = OutputLimits {
        max_packet_size: file
            .max_packet_size
            .unwrap_or(OutputLimits::default().max_packet_size),
        ..OutputLimits::default()
    };
    let wasm: PathBuf = file.plugin.path.clone();
    let (harness, _) =
        Harness::load(file.plugin, limits)
            .await
            .map_err(|error| TestFileError::Load {
                path: shown.clone(),
                error,
            })?;
    let _ = writeln!(
        out,
        "{}: {} case(s) against {}",
        shown,
        file.cases.len(),
        wasm.display()
    );
    let (mut passed, mut failed) = (0, 0);
    for case in &file.cases {
        let outcome = harness.call(&case.input).await;
        let wrong = check(&case.expect, &outcome);
        let ms = outcome.took.as_secs_f64() * 1e3;
        if wrong.is_empty() {
            passed += 1;
            let _ = writeln!(out, "ok    {} ({ms:.2} ms)", case.name);
        } else {
            failed += 1;
            let _ = writeln!(out, "FAIL  {} ({ms:.2} ms)", case.name);
            for w in wrong {
                let _ = writeln!(out, "      {w}");
            }
            for (level, m) in &outcome.log {
                let _ = writeln!(out, "      log {}: {m}", level_name(*level));
            }
        }
    }
    let _ = writeln!(out, "{passed} passed, {failed} failed");
    Ok((passed, failed))
}
