//! Rules created, changed or deleted through the admin API, kept in a JSON
//! file (the overlay, `[admin] api_rules_file`, by default
//! `<persistence.data_dir>/api-rules.json`) so that they survive reloads
//! and restarts, as EMQX keeps dashboard edits in its data directory.
//!
//! The file holds, per rule id, the API's latest word: the whole rule as the
//! API last set it (created, updated, enabled or disabled), or a deletion.
//! The rules the broker runs are the config file's `[[rules]]` with the
//! overlay applied ([`Overlay::apply`]): an overlay rule replaces the
//! config's rule of the same id in place, a deletion removes it, and rules
//! only the API knows follow in the order they were created.
//!
//! ```json
//! {
//!   "format": 1,
//!   "rules": [ { "id": "r1", "sql": "SELECT ...", "actions": [], "enabled": true, "description": "" } ],
//!   "deleted": [ "from_the_config" ]
//! }
//! ```
//!
//! It is written whole and atomically (temporary file, fsync, rename, fsync
//! of the directory) before the API answers. A missing file is an empty
//! overlay; a file that cannot be read or parsed is an error naming it
//! (never ignored: that would bring back deleted rules).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{RuleConfig, RuleEngine};

/// The version of the file's layout this broker writes and reads.
pub const FORMAT: u32 = 1;

/// The file name used in `persistence.data_dir` when `[admin] api_rules_file` is unset.
pub const DEFAULT_FILE: &str = "api-rules.json";

/// The admin API's rule changes over the config's rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlay {
    /// Rules as the API last set them, in the order they were first set.
    pub rules: Vec<RuleConfig>,
    /// Ids the API deleted: a config rule of that id is not run.
    pub deleted: Vec<String>,
}

/// The file's layout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverlayFile {
    format: u32,
    #[serde(default)]
    rules: Vec<RuleConfig>,
    #[serde(default)]
    deleted: Vec<String>,
}

/// The overlay file cannot be read, parsed or written; names the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct OverlayError {
    pub path: PathBuf,
    pub message: String,
}

/// Loading the rules (config plus overlay) failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// The overlay file is unreadable or corrupt.
    #[error("{0}")]
    File(#[from] OverlayError),
    /// The rules do not compile; `file` names the overlay when it changed
    /// any rule.
    #[error("{}{}", errors.join("; "), file.as_ref().map(|f| format!(" (the config's rules with the admin API's changes in {})", f.display())).unwrap_or_default())]
    Rules {
        errors: Vec<String>,
        file: Option<PathBuf>,
    },
}

impl LoadError {
    /// The message for a reload of `config`: rule errors name the config file.
    pub fn naming(&self, config: &Path) -> String {
        match self {
            LoadError::File(e) => e.to_string(),
            e @ LoadError::Rules { .. } => format!("{}: {e}", config.display()),
        }
    }
}

impl Overlay {
    /// Reads the overlay at `path`; a missing file is an empty overlay.
    pub fn read(path: &Path) -> Result<Overlay, OverlayError> {
        let err = |message: String| OverlayError {
            path: path.to_path_buf(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overlay::default()),
            Err(e) => return Err(err(format!("cannot read the admin API's rules file: {e}"))),
        };
        Overlay::parse(&text).map_err(|m| {
            err(format!(
                "not a valid admin API rules file ({m}); fix it, or delete it to run the config file's rules only"
            ))
        })
    }

    /// Parses the file's text and checks it (each id once, not both set and deleted).
    pub fn parse(text: &str) -> Result<Overlay, String> {
        let f: OverlayFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if f.format != FORMAT {
            return Err(format!(
                "`format` is {}, this broker reads {FORMAT}",
                f.format
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (n, r) in f.rules.iter().enumerate() {
            if r.id.trim().is_empty() {
                return Err(format!("rules[{n}]: `id` must not be empty"));
            }
            if !seen.insert(r.id.as_str()) {
                return Err(format!("rule `{}` is in `rules` twice", r.id));
            }
        }
        let mut gone = std::collections::HashSet::new();
        for id in &f.deleted {
            if seen.contains(id.as_str()) {
                return Err(format!("rule `{id}` is both in `rules` and `deleted`"));
            }
            if !gone.insert(id.as_str()) {
                return Err(format!("rule `{id}` is in `deleted` twice"));
            }
        }
        Ok(Overlay {
            rules: f.rules,
            deleted: f.deleted,
        })
    }

    /// The file's text.
    pub fn to_json(&self) -> String {
        let f = OverlayFile {
            format: FORMAT,
            rules: self.rules.clone(),
            deleted: self.deleted.clone(),
        };
        // Plain data (strings, numbers, enums): serialising cannot fail.
        serde_json::to_string_pretty(&f).unwrap_or_default() + "\n"
    }

    /// Writes the overlay to `path` atomically: a temporary file beside it,
    /// fsynced, renamed over it, then the directory fsynced. Creates the
    /// directory if needed. On error the previous file is untouched.
    pub fn write(&self, path: &Path) -> Result<(), OverlayError> {
        let err = |what: &str, e: std::io::Error| OverlayError {
            path: path.to_path_buf(),
            message: format!("cannot write the admin API's rules file ({what}): {e}"),
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(name) = path.file_name() else {
            return Err(OverlayError {
                path: path.to_path_buf(),
                message: "not a file name".into(),
            });
        };
        std::fs::create_dir_all(&dir).map_err(|e| err("creating its directory", e))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let written = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(|e| err("creating", e))?;
            f.write_all(self.to_json().as_bytes())
                .map_err(|e| err("writing", e))?;
            f.sync_all().map_err(|e| err("syncing", e))?;
            drop(f);
            std::fs::rename(&tmp, path).map_err(|e| err("renaming", e))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        // The rename itself is durable once the directory is synced.
        #[cfg(unix)]
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("syncing its directory", e))?;
        Ok(())
    }

    /// The rules to run: `base` (the config's) with this overlay applied.
    pub fn apply(&self, base: &[RuleConfig]) -> Vec<RuleConfig> {
        let mut out = Vec::with_capacity(base.len() + self.rules.len());
        for r in base {
            if self.deleted.contains(&r.id) {
                continue;
            }
            out.push(self.get(&r.id).unwrap_or(r).clone());
        }
        for r in &self.rules {
            if !base.iter().any(|b| b.id == r.id) {
                out.push(r.clone());
            }
        }
        out
    }

    /// The API's version of rule `id`.
    pub fn get(&self, id: &str) -> Option<&RuleConfig> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Whether the API has a word on `id` (a rule or a deletion).
    pub fn has(&self, id: &str) -> bool {
        self.get(id).is_some() || self.deleted.iter().any(|d| d == id)
    }

    /// Where the running rule `id` comes from: `"api"` or `"config"`.
    pub fn source(&self, id: &str) -> &'static str {
        if self.get(id).is_some() {
            "api"
        } else {
            "config"
        }
    }

    /// Records `rule` as the API's: replaces its earlier version in place,
    /// or is appended; a deletion of its id is forgotten.
    pub fn set(&mut self, rule: RuleConfig) {
        self.deleted.retain(|d| *d != rule.id);
        match self.rules.iter_mut().find(|r| r.id == rule.id) {
            Some(slot) => *slot = rule,
            None => self.rules.push(rule),
        }
    }

    /// Records that the API deleted `id` (so a config rule of that id stays deleted).
    pub fn delete(&mut self, id: &str) {
        self.rules.retain(|r| r.id != id);
        if !self.deleted.iter().any(|d| d == id) {
            self.deleted.push(id.to_string());
        }
    }

    /// Forgets the API's word on `id` (the config's rule, if any, runs
    /// again). Returns whether there was one.
    pub fn forget(&mut self, id: &str) -> bool {
        let had = self.has(id);
        self.rules.retain(|r| r.id != id);
        self.deleted.retain(|d| d != id);
        had
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.deleted.is_empty()
    }
}

/// Loads into `engine` the config's rules `base` with the overlay at `path`
/// applied (start-up and every reload). All or nothing: on error the
/// running rules stay.
pub fn load(engine: &RuleEngine, base: &[RuleConfig], path: &Path) -> Result<usize, LoadError> {
    let _one_at_a_time = engine.edit_lock();
    let overlay = Overlay::read(path)?;
    let file = (!overlay.is_empty()).then(|| path.to_path_buf());
    let prepared = engine
        .prepare(base.to_vec(), overlay)
        .map_err(|errors| LoadError::Rules { errors, file })?;
    Ok(engine.install(prepared))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(id: &str, sql: &str) -> RuleConfig {
        RuleConfig {
            id: id.into(),
            sql: sql.into(),
            actions: Vec::new(),
            enabled: true,
            description: String::new(),
        }
    }

    fn ids(rules: &[RuleConfig]) -> Vec<&str> {
        rules.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn overlay_replaces_in_place_deletes_and_appends_in_creation_order() {
        let base = vec![
            rule("a", "SELECT * FROM \"a\""),
            rule("b", "SELECT * FROM \"b\""),
            rule("c", "SELECT * FROM \"c\""),
        ];
        let mut o = Overlay::default();
        assert_eq!(o.apply(&base), base, "an empty overlay changes nothing");
        o.set(rule("new2", "SELECT 2 FROM \"n\""));
        o.set(rule("b", "SELECT 1 FROM \"b\""));
        o.delete("c");
        o.set(rule("new1", "SELECT 1 FROM \"n\""));
        // Updating an API rule keeps its place.
        o.set(rule("new2", "SELECT 22 FROM \"n\""));
        let out = o.apply(&base);
        assert_eq!(ids(&out), ["a", "b", "new2", "new1"]);
        assert_eq!(out[1].sql, "SELECT 1 FROM \"b\"");
        assert_eq!(out[2].sql, "SELECT 22 FROM \"n\"");
        assert_eq!(
            (o.source("b"), o.source("a"), o.source("new1")),
            ("api", "config", "api")
        );

        // Deleting an API-only rule, then creating it again, appends it.
        o.delete("new2");
        assert_eq!(ids(&o.apply(&base)), ["a", "b", "new1"]);
        o.set(rule("new2", "SELECT 3 FROM \"n\""));
        assert_eq!(ids(&o.apply(&base)), ["a", "b", "new1", "new2"]);
        // A config rule the API deleted and created again takes its old place.
        o.set(rule("c", "SELECT 9 FROM \"c\""));
        assert_eq!(ids(&o.apply(&base)), ["a", "b", "c", "new1", "new2"]);
        assert!(o.deleted.is_empty());

        // Forgetting goes back to the config's rule (or none).
        o.delete("a");
        assert!(o.forget("a"));
        assert!(o.forget("b"));
        assert!(o.forget("new1"));
        assert!(!o.forget("new1"), "nothing left to forget");
        let out = o.apply(&base);
        assert_eq!(ids(&out), ["a", "b", "c", "new2"]);
        assert_eq!(out[1], base[1]);
    }

    #[test]
    fn a_deletion_hides_a_config_rule_added_later_too() {
        let mut o = Overlay::default();
        o.delete("x");
        let base = vec![rule("x", "SELECT * FROM \"x\""), rule("y", "SELECT 1")];
        assert_eq!(ids(&o.apply(&base)), ["y"]);
    }

    #[test]
    fn written_file_reads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("api-rules.json");
        assert_eq!(
            Overlay::read(&path).unwrap(),
            Overlay::default(),
            "missing file"
        );
        let mut o = Overlay::default();
        let mut r = rule("r1", "SELECT * FROM \"t/#\"");
        r.enabled = false;
        r.description = "from the API".into();
        o.set(r);
        o.delete("gone");
        o.write(&path).unwrap();
        assert_eq!(Overlay::read(&path).unwrap(), o);
        o.forget("gone");
        o.write(&path).unwrap();
        assert_eq!(Overlay::read(&path).unwrap(), o);
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["api-rules.json"], "no temporary file left behind");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"format\": 1"), "{text}");
    }

    #[test]
    fn corrupt_or_inconsistent_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-rules.json");
        for (text, want) in [
            ("{\"format\": 1, \"rules\": [", "EOF"),
            ("not json", "expected"),
            ("{\"format\": 2}", "`format` is 2"),
            ("{\"rules\": []}", "missing field `format`"),
            ("{\"format\": 1, \"extra\": 1}", "unknown field `extra`"),
            (
                "{\"format\": 1, \"rules\": [{\"id\": \"a\", \"sql\": \"x\"}, {\"id\": \"a\", \"sql\": \"y\"}]}",
                "rule `a` is in `rules` twice",
            ),
            (
                "{\"format\": 1, \"rules\": [{\"id\": \"a\", \"sql\": \"x\"}], \"deleted\": [\"a\"]}",
                "both in `rules` and `deleted`",
            ),
            (
                "{\"format\": 1, \"rules\": [{\"id\": \" \", \"sql\": \"x\"}]}",
                "`id` must not be empty",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Overlay::read(&path).unwrap_err().to_string();
            assert!(e.starts_with(&path.display().to_string()), "{e}");
            assert!(e.contains(want), "{text}: {e}");
        }
        // A directory where the file should be: unreadable, named.
        let e = Overlay::read(dir.path()).unwrap_err();
        assert_eq!(e.path, dir.path());
        assert!(e.message.contains("cannot read"), "{e}");
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the directory should be (fails for root too).
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "x").unwrap();
        let path = blocker.join("api-rules.json");
        let e = Overlay::default().write(&path).unwrap_err();
        assert_eq!(e.path, path);
        assert!(e.to_string().contains("cannot write"), "{e}");

        // The target is a directory: the rename fails, the temporary file goes.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), "x").unwrap();
        let e = Overlay::default().write(&path).unwrap_err();
        assert!(e.message.contains("renaming"), "{e}");
        assert!(!dir.path().join(".taken.tmp").exists());
        assert!(path.join("keep").exists());
    }

    #[test]
    fn load_applies_the_file_and_refuses_bad_rules_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-rules.json");
        let engine = RuleEngine::default();
        let base = vec![rule("cfg", "SELECT * FROM \"a\"")];
        assert_eq!(load(&engine, &base, &path), Ok(1), "no file: the config's");
        assert_eq!(engine.overlay().source("cfg"), "config");

        let mut o = Overlay::default();
        o.set(rule("api", "SELECT * FROM \"b\""));
        o.write(&path).unwrap();
        assert_eq!(load(&engine, &base, &path), Ok(2));
        assert_eq!(ids(&engine.configs()), ["cfg", "api"]);
        assert_eq!(ids(&engine.base()), ["cfg"]);
        assert_eq!(engine.overlay().source("api"), "api");

        o.set(rule("api", "SELEC broken"));
        o.write(&path).unwrap();
        let e = load(&engine, &base, &path).unwrap_err();
        let text = e.naming(Path::new("midge.toml"));
        assert!(text.starts_with("midge.toml: "), "{text}");
        assert!(text.contains("api"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert_eq!(
            ids(&engine.configs()),
            ["cfg", "api"],
            "the running set stays"
        );

        std::fs::write(&path, "{").unwrap();
        let e = load(&engine, &base, &path).unwrap_err();
        assert!(matches!(e, LoadError::File(_)), "{e:?}");
        assert!(e
            .naming(Path::new("midge.toml"))
            .starts_with(&path.display().to_string()));
        assert_eq!(
            ids(&engine.configs()),
            ["cfg", "api"],
            "the running set stays"
        );
    }
}
