//! Topic names and topic filters: validation and matching.

/// A valid topic name: non-empty (the caller handles 5.0 alias-only
/// publishes), at most 65535 bytes, no `+` or `#`.
pub fn valid_name(name: &str) -> bool {
    todo!("{name}")
}

/// A valid topic filter: non-empty; `#` only as the whole last level; `+`
/// only as a whole level. `$share/{group}/{filter}` needs a non-empty group
/// without wildcards and a valid filter after it.
pub fn valid_filter(filter: &str) -> bool {
    todo!("{filter}")
}

/// Does `filter` match topic `name`? Topics starting with `$` are not
/// matched by a filter whose first level is `+` or `#`.
pub fn matches(filter: &str, name: &str) -> bool {
    todo!("{filter} {name}")
}

/// Splits a shared subscription filter: `$share/g/a/b` -> `Some(("g", "a/b"))`,
/// `$queue/a/b` -> `Some(("$queue", "a/b"))`; `None` for a plain filter.
/// Assumes `valid_filter` already passed.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    todo!("{filter}")
}
