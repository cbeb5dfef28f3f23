//! Topic names and topic filters: validation and matching.

const SHARE_PREFIX: &str = "$share/";
const QUEUE_PREFIX: &str = "$queue/";

/// A valid topic name: non-empty (the caller handles 5.0 alias-only
/// publishes), at most 65535 bytes, no `+` or `#`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= usize::from(u16::MAX)
        && !name.bytes().any(|b| b == b'+' || b == b'#')
}

/// A valid topic filter: non-empty; `#` only as the whole last level; `+`
/// only as a whole level. `$share/{group}/{filter}` needs a non-empty group
/// without wildcards and a valid filter after it. `$queue/{filter}` (a shared
/// subscription in group `$queue`) needs a valid filter after the prefix.
pub fn valid_filter(filter: &str) -> bool {
    if filter.len() > usize::from(u16::MAX) {
        return false;
    }
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        let Some((group, inner)) = rest.split_once('/') else {
            return false;
        };
        return !group.is_empty()
            && !group.bytes().any(|b| b == b'+' || b == b'#')
            && valid_plain_filter(inner);
    }
    if filter == "$share" {
        // "$share" alone is a plain filter only by accident; reject it.
        return false;
    }
    if let Some(inner) = filter.strip_prefix(QUEUE_PREFIX) {
        return valid_plain_filter(inner);
    }
    valid_plain_filter(filter)
}

fn valid_plain_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" => return levels.peek().is_none(),
            "+" => {}
            _ if level.bytes().any(|b| b == b'+' || b == b'#') => return false,
            _ => {}
        }
    }
    true
}

/// Does `filter` match topic `name`? Topics starting with `$` are not
/// matched by a filter whose first level is `+` or `#`.
///
/// A shared filter (`$share/g/a/b`, `$queue/a/b`) matches like the filter
/// after its group (`a/b`). `sport/#` also matches `sport` (the parent).
pub fn matches(filter: &str, name: &str) -> bool {
    let filter = match split_shared(filter) {
        Some((_, inner)) => inner,
        None => filter,
    };
    matches_plain(filter, name)
}

// The one MQTT topic matcher, `matches_plain` (a filter taken as it is:
// `$share/...` is no shared group there): the broker (through [`matches`])
// and the rule engine (`FROM`, `=~`) call it from here; its source is the
// plugin SDK's sdk/src/topic.rs, which the SDK (self-contained, built on
// its own in plugin projects) compiles as its `topic_matches`. One file,
// tested here and in the SDK against one case table
// (sdk/src/topic_cases.txt, bundled with the SDK).
#[path = "../../../sdk/src/topic.rs"]
mod plain;
pub use plain::matches_plain;

/// Splits a shared subscription filter: `$share/g/a/b` -> `Some(("g", "a/b"))`,
/// `$queue/a/b` -> `Some(("$queue", "a/b"))`; `None` for a plain filter.
/// Assumes `valid_filter` already passed.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        return rest.split_once('/');
    }
    filter
        .strip_prefix(QUEUE_PREFIX)
        .map(|inner| ("$queue", inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The case table shared with the plugin SDK's copy of the matcher
    /// (sdk/src/topic_cases.txt): `filter<TAB>topic<TAB>true|false`.
    pub(crate) fn cases() -> impl Iterator<Item = (&'static str, &'static str, bool)> {
        include_str!("../../../sdk/src/topic_cases.txt")
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("# "))
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(
                    f.len(),
                    3,
                    "topic_cases.txt: {l:?}: filter, topic, expected"
                );
                (f[0], f[1], f[2] == "true")
            })
    }

    #[test]
    fn the_shared_case_table() {
        let mut n = 0;
        for (filter, topic, want) in cases() {
            assert_eq!(matches_plain(filter, topic), want, "{filter} vs {topic}");
            n += 1;
        }
        assert!(n >= 20, "the table has its cases");
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "/",
            "sport/tennis/player1",
            "$SYS/uptime",
            " ",
            "a//b",
            "/finance",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "+", "#", "a/+", "a/#", "sport+", "a/b#"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_name(&"a".repeat(65535)));
        assert!(!valid_name(&"a".repeat(65536)));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "sport/#",
            "sport/tennis/#",
            "+/tennis/#",
            "sport/+/player1",
            "+/+",
            "/+",
            "/",
            "a//b",
            "$SYS/#",
            "$share/g/a/b",
            "$share/g/#",
            "$share/g/+/x",
            "$share/g//",
            "$queue/a/b",
            "$queue/#",
        ] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in [
            "",
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "sport+",
            "sport/+x",
            "#/a",
            "a/#/",
            "$share",
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/g+/a",
            "$share/#/a",
            "$share/g/a/#/b",
            "$queue/",
            "$queue/a#",
        ] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn spec_matching_examples() {
        // 4.7.1.2 multi-level wildcard.
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "sport/tennis"));
        // 4.7.1.3 single-level wildcard.
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+/tennis/#", "sport/tennis/x/y"));
        // Exact and case-sensitive.
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "A/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b", "a/b/"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("a/+/b", "a//b"));
    }

    #[test]
    fn dollar_topics() {
        // 4.7.2.
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(!matches("$share/g/#", "$SYS/x"));
    }

    #[test]
    fn shared() {
        assert_eq!(split_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(split_shared("$share/g/#"), Some(("g", "#")));
        assert_eq!(split_shared("$queue/a/b"), Some(("$queue", "a/b")));
        assert_eq!(split_shared("a/b"), None);
        assert_eq!(split_shared("$SYS/a"), None);
        assert_eq!(split_shared("$sharex/g/a"), None);
        assert!(matches("$share/g/a/+", "a/b"));
        assert!(matches("$queue/a/#", "a/b/c"));
        assert!(!matches("$share/g/a/+", "$share/g/a/b"));
    }
}
