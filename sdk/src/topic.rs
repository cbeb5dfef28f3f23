//! MQTT topic matching: the one implementation. This file is the SDK's
//! module `topic` and, through `#[path]`, midge-protocol's `topic::plain`
//! (the broker's and the rule engine's matcher), as the SDK's
//! wit/midge-plugin.wit is the host's interface: the SDK carries it, so it
//! stays self-contained and publishable, and the broker reads the same
//! file. Keep it dependency-free and free of `crate::` paths (it compiles
//! in both crates); both test it against topic_cases.txt.

/// Does `filter`, taken as it is (`$share/...` is no shared group here),
/// match topic `name`? `+` is one level, `#` the rest including the parent
/// level; a filter whose first level is a wildcard does not match a topic
/// starting with `$`.
#[inline]
pub fn matches_plain(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}
