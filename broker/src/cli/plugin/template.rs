//! `midge plugin new NAME`: a plugin project that builds as written,
//! anywhere, with test cases for `midge plugin test`. By default it gets
//! the SDK this binary was built with, written next to it (`midge-sdk/`,
//! the same files `cargo package` puts in the crate): no checkout of this
//! repository and no crates.io release needed. Or it depends on a
//! crates.io release (`--sdk-version`) or a local copy (`--sdk-path`).

use std::path::{Path, PathBuf};

/// Where the new project gets the SDK from.
#[derive(Debug, Clone)]
pub enum Sdk {
    /// The SDK built into this binary, written into the project as
    /// `midge-sdk/` (a path dependency).
    Bundled,
    /// A crates.io release, e.g. "0.1".
    Version(String),
    /// A local copy (this repository's `sdk/`, or an unpacked crate).
    Path(PathBuf),
}

/// Why no project was written.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error("plugin name {0:?}: use lower-case letters, digits, '-' and '_', starting with a letter (it is the crate's name)")]
    Name(String),
    #[error("{0}: already exists and is not empty")]
    Exists(String),
    #[error("--sdk-path {path}: {message}")]
    SdkPath { path: String, message: String },
    #[error("{path}: {message}")]
    Write { path: String, message: String },
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

/// Writes the project `name` into `dir` (created; must be absent or
/// empty). Returns the files written.
pub fn write(name: &str, dir: &Path, sdk: &Sdk) -> Result<Vec<PathBuf>, NewError> {
    if !valid_name(name) {
        return Err(NewError::Name(name.to_string()));
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(NewError::Exists(dir.display().to_string()));
    }
    let dependency = match sdk {
        Sdk::Bundled => "midge-sdk = { path = \"midge-sdk\" }".to_string(),
        Sdk::Version(v) => format!("midge-sdk = \"{v}\""),
        Sdk::Path(p) => {
            let abs = std::fs::canonicalize(p).map_err(|e| NewError::SdkPath {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            if !abs.join("Cargo.toml").is_file() {
                return Err(NewError::SdkPath {
                    path: p.display().to_string(),
                    message: "no Cargo.toml there (give the SDK crate's directory)".into(),
                });
            }
            let shown = abs.display().to_string();
            format!("midge-sdk = {{ path = {shown:?} }}")
        }
    };
    let lib = name.replace('-', "_");
    let fill = |t: &str| {
        t.replace("{name}", name)
            .replace("{lib}", &lib)
            .replace("{sdk}", &dependency)
    };
    let mut files = vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        (".cargo/config.toml", CARGO_CONFIG.to_string()),
        ("src/lib.rs", fill(LIB_RS)),
        ("midge-test.toml", fill(TEST_TOML)),
        ("README.md", fill(README)),
        (".gitignore", "/target\n".to_string()),
    ];
    if let Sdk::Bundled = sdk {
        files.push(("midge-sdk/Cargo.toml", standalone_manifest(SDK_MANIFEST)));
        for (file, text) in SDK_FILES {
            files.push((file, text.to_string()));
        }
    }
    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(file);
        let err = |e: std::io::Error| NewError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        std::fs::write(&path, text).map_err(err)?;
        written.push(path);
    }
    Ok(written)
}

/// sdk/Cargo.toml as built into this binary.
const SDK_MANIFEST: &str = include_str!("../../../../sdk/Cargo.toml");

/// The rest of the SDK crate (what its manifest's `include` names), as
/// written into a new project. A test keeps the list complete.
const SDK_FILES: [(&str, &str); 7] = [
    (
        "midge-sdk/README.md",
        include_str!("../../../../sdk/README.md"),
    ),
    (
        "midge-sdk/src/lib.rs",
        include_str!("../../../../sdk/src/lib.rs"),
    ),
    (
        "midge-sdk/src/batch.rs",
        include_str!("../../../../sdk/src/batch.rs"),
    ),
    (
        "midge-sdk/src/binary.rs",
        include_str!("../../../../sdk/src/binary.rs"),
    ),
    (
        "midge-sdk/src/topic.rs",
        include_str!("../../../../sdk/src/topic.rs"),
    ),
    (
        "midge-sdk/src/topic_cases.txt",
        include_str!("../../../../sdk/src/topic_cases.txt"),
    ),
    (
        "midge-sdk/wit/midge-plugin.wit",
        include_str!("../../../../sdk/wit/midge-plugin.wit"),
    ),
];

/// The SDK's manifest without its `workspace` key (and the comment above
/// it), as `cargo package` writes it: in this repository the SDK builds in
/// the plugins workspace, in a project it is a crate of its own.
fn standalone_manifest(manifest: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in manifest.lines() {
        if line.trim_start().starts_with("workspace =") {
            while lines.last().is_some_and(|l| l.starts_with('#')) {
                lines.pop();
            }
            continue;
        }
        lines.push(line);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

# A plugin is a WebAssembly component: a cdylib built for wasm32-wasip2
# (the default target here, see .cargo/config.toml).
[lib]
crate-type = ["cdylib"]

[dependencies]
{sdk}
serde = { version = "1", features = ["derive"] }

# Small, fast components; a panic still reaches the broker's log (the SDK
# logs its message before the trap).
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
debug = false
strip = true
panic = "abort"

# A workspace of its own, wherever this directory is.
[workspace]
"#;

const CARGO_CONFIG: &str = r#"# Plugins are built for WebAssembly (`rustup target add wasm32-wasip2` once).
[build]
target = "wasm32-wasip2"
"#;

const LIB_RS: &str = r#"//! {name}: a Midge broker plugin.
//!
//! ```sh
//! cargo build --release          # -> target/wasm32-wasip2/release/{lib}.wasm
//! midge plugin test              # the cases in midge-test.toml
//! midge plugin run target/wasm32-wasip2/release/{lib}.wasm publish text/a --payload hi
//! ```
//!
//! What it does (make it yours): messages on the configured topic filter
//! get their payload upper-cased, empty ones are dropped, ones longer than
//! `max_len` bytes are refused with reason code 0x99; rules can call
//! `shout(text)`.
//!
//! Configuration (the `config` table of its `[[plugins.plugin]]` entry):
//! `filter` (default "text/#"), `max_len` (default 1024).

use midge_sdk::*;
use serde::Deserialize;

/// The plugin's configuration, handed to `init` as JSON.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Messages whose topic matches this filter are changed.
    filter: String,
    /// Longest payload accepted, in bytes.
    max_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            filter: "text/#".into(),
            max_len: 1024,
        }
    }
}

/// One instance (the broker keeps a few warm and calls `init` in each).
struct Shout {
    config: Config,
}

impl Plugin for Shout {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let config: Config = parse_config(config)?;
        log::info(&format!("upper-casing messages on {}", config.filter));
        let manifest = Manifest::new("{name}", env!("CARGO_PKG_VERSION"))
            .on_publish([config.filter.clone()])
            .function("shout", 1, Some(1), "the text, upper-cased");
        Ok((Shout { config }, manifest))
    }

    fn on_publish(&mut self, mut message: Message, _publisher: Option<Client>) -> PublishDecision {
        if message.payload.is_empty() {
            return PublishDecision::Drop;
        }
        if message.payload.len() > self.config.max_len {
            return PublishDecision::Deny(reason::PAYLOAD_FORMAT_INVALID);
        }
        message.payload.make_ascii_uppercase();
        PublishDecision::Modify(message)
    }

    fn call_function(&mut self, name: String, args: Vec<String>) -> Result<String, FunctionError> {
        match name.as_str() {
            "shout" => {
                let arg = args.first().map(String::as_str).unwrap_or("null");
                let text: String = serde_json::from_str(arg)
                    .map_err(|e| FunctionError::BadArguments(format!("shout(text): {e}")))?;
                serde_json::to_string(&text.to_uppercase())
                    .map_err(|e| FunctionError::Failed(e.to_string()))
            }
            _ => Err(FunctionError::UnknownFunction(name)),
        }
    }
}

export_plugin!(Shout);
"#;

const TEST_TOML: &str = r#"# Cases for `midge plugin test` (after `cargo build --release`).
#
# [plugin] is this plugin's entry exactly as in the broker's configuration
# (one [[plugins.plugin]]): name, path, config, grants, limits, failure.
[plugin]
name = "{name}"
path = "target/wasm32-wasip2/release/{lib}.wasm"
config = { filter = "text/#", max_len = 16 }

[[case]]
name = "upper-cases text"
publish = { topic = "text/greeting", payload = "hello" }
expect = { decision = "modify", topic = "text/greeting", payload = "HELLO" }

[[case]]
name = "drops empty messages"
publish = { topic = "text/empty", payload = "" }
expect = { decision = "drop" }

[[case]]
name = "refuses long messages with 0x99"
publish = { topic = "text/long", payload = "more than sixteen bytes" }
expect = { decision = "deny", reason = 0x99 }

[[case]]
name = "is not called for other topics"
publish = { topic = "sensors/1", payload = "21.5" }
expect = { decision = "not-called" }

[[case]]
name = "rules can call shout()"
function = { name = "shout", args = ["hey"] }
expect = { result = "HEY" }
"#;

const README: &str = r#"# {name}

A plugin for the Midge MQTT broker: a WebAssembly
component built with the `midge-sdk` crate.

```sh
rustup target add wasm32-wasip2            # once
cargo build --release                      # target/wasm32-wasip2/release/{lib}.wasm
midge plugin test                          # runs midge-test.toml, no broker needed
midge plugin run target/wasm32-wasip2/release/{lib}.wasm \
    --config '{"filter":"text/#"}' publish text/a --payload hi
```

Load it: add to the broker's configuration, then start the broker (or
send it SIGHUP / `POST /api/v1/config/reload` if it runs):

```toml
[[plugins.plugin]]
name = "{name}"
path = "/path/to/{lib}.wasm"
config = { filter = "text/#", max_len = 1024 }
```

`midge check --config midge.toml` loads it and runs its `init` with that
config first. After `cargo build --release` again, the running broker
reloads the changed `.wasm` by itself (or `POST /api/v1/plugins/{name}/reload`).
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_crate_names_and_a_full_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "Upper", "1x", "a b", "a/b"] {
            assert!(matches!(
                write(bad, &dir.path().join("x"), &Sdk::Version("0.1".into())),
                Err(NewError::Name(_))
            ));
        }
        let at = dir.path().join("p");
        let files = write("my-plugin", &at, &Sdk::Version("0.1".into())).unwrap();
        assert!(!at.join("midge-sdk").exists());
        assert_eq!(files.len(), 6);
        let cargo = std::fs::read_to_string(at.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"my-plugin\""));
        assert!(cargo.contains("midge-sdk = \"0.1\""));
        let tests = std::fs::read_to_string(at.join("midge-test.toml")).unwrap();
        assert!(tests.contains("release/my_plugin.wasm"));
        assert!(matches!(
            write("my-plugin", &at, &Sdk::Version("0.1".into())),
            Err(NewError::Exists(_))
        ));
    }

    #[test]
    fn the_bundled_sdk_is_the_whole_crate_with_a_standalone_manifest() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
        // Every source and interface file of the crate is bundled.
        let mut on_disk = Vec::new();
        for sub in ["src", "wit"] {
            for e in std::fs::read_dir(sdk.join(sub)).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                on_disk.push(format!("midge-sdk/{sub}/{name}"));
            }
        }
        on_disk.sort();
        let mut bundled: Vec<String> = SDK_FILES
            .iter()
            .map(|(f, _)| f.to_string())
            .filter(|f| !f.ends_with("README.md"))
            .collect();
        bundled.sort();
        assert_eq!(bundled, on_disk, "add the new sdk/ file to SDK_FILES");

        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("p");
        let files = write("my-plugin", &at, &Sdk::Bundled).unwrap();
        assert_eq!(files.len(), 6 + 1 + SDK_FILES.len());
        let cargo = std::fs::read_to_string(at.join("Cargo.toml")).unwrap();
        assert!(
            cargo.contains(r#"midge-sdk = { path = "midge-sdk" }"#),
            "{cargo}"
        );
        let manifest = std::fs::read_to_string(at.join("midge-sdk/Cargo.toml")).unwrap();
        assert!(
            !manifest
                .lines()
                .any(|l| l.trim_start().starts_with("workspace")),
            "{manifest}"
        );
        assert!(manifest.contains("name = \"midge-sdk\""), "{manifest}");
        assert!(manifest.contains("wit-bindgen"), "{manifest}");
        let lib = std::fs::read_to_string(at.join("midge-sdk/src/lib.rs")).unwrap();
        assert_eq!(
            lib,
            std::fs::read_to_string(sdk.join("src/lib.rs")).unwrap()
        );
    }
}
