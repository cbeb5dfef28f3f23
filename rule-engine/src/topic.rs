//! MQTT topic filter validation and matching (used by `FROM` and `=~`).

/// Whether `topic` matches the MQTT topic `filter` (`+` one level, `#` the
/// rest including the parent level; wildcards in the first level do not
/// match topics starting with `$`): midge-protocol's matcher, the one the
/// broker routes with (a `$share/...` filter is taken as it is).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    midge_protocol::topic::matches_plain(filter, topic)
}

/// Validates a topic filter: non-empty, `#` only as the last whole level,
/// `+` only as a whole level, no NUL.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("empty topic filter".into());
    }
    if filter.contains('\0') {
        return Err("topic filter contains NUL".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "invalid topic filter \"{filter}\": '#' must be the last level on its own"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "invalid topic filter \"{filter}\": '+' must occupy a whole level"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(topic_matches("a//b", "a//b"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }

    #[test]
    fn validation() {
        assert!(validate_filter("a/#").is_ok());
        assert!(validate_filter("+/+").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b#").is_err());
        assert!(validate_filter("a+/b").is_err());
        assert!(validate_filter("").is_err());
    }
}
