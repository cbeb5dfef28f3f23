//! The guest SDK as a crate of its own: it carries the one WIT copy the
//! host reads, its version follows the WIT package's, and its manifest
//! inherits nothing from a workspace (so it packages and publishes alone).

use std::path::Path;

fn sdk() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_host_reads_the_wit_inside_the_sdk_crate() {
    let bindings = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bindings.rs"));
    assert!(bindings.contains("path: \"../../sdk/wit\""), "{bindings}");
    let lib = read(&sdk().join("src/lib.rs"));
    assert!(lib.contains("path: \"wit\""), "the SDK reads its own wit/");
    let manifest = read(&sdk().join("Cargo.toml"));
    assert!(
        manifest.contains("\"wit/*.wit\""),
        "the published crate includes wit/"
    );
}

#[test]
fn the_sdk_version_follows_the_wit_package() {
    let wit = read(&sdk().join("wit/midge-plugin.wit"));
    let package = wit
        .lines()
        .find_map(|l| l.strip_prefix("package midge:plugin@"))
        .and_then(|v| v.strip_suffix(';'))
        .expect("a `package midge:plugin@X.Y.Z;` line");
    let manifest = read(&sdk().join("Cargo.toml"));
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("a version line");
    // Same major.minor: 0.1.x of the SDK speaks midge:plugin@0.1.*.
    let minor = |v: &str| v.rsplit_once('.').map(|(mm, _)| mm.to_string());
    assert_eq!(
        minor(version),
        minor(package),
        "midge-sdk {version} against midge:plugin@{package}"
    );
}

#[test]
fn the_sdk_manifest_inherits_nothing() {
    let manifest = read(&sdk().join("Cargo.toml"));
    for line in manifest.lines() {
        // Comments may name the rule; keys may not break it.
        let key = line.split('#').next().unwrap_or("").replace(' ', "");
        assert!(
            !key.contains("workspace=true"),
            "sdk/Cargo.toml inherits from a workspace: {line}"
        );
    }
}
