//! Topic mapping of a bridge direction: the topic a message gets on the
//! other side, computed from the topic it has on this side.
//!
//! One syntax for every direction (documented in docs/bridges.md):
//!
//! - `topic = "site1/{1}/{2}"`: a template. `{N}` is what the topic has
//!   where the direction's filter has its level `N` (counted from 1): the
//!   literal level itself, what a `+` matched, or, for the filter's `#`
//!   level, every remaining level joined with `/`. `#` may match no level
//!   at all (`a/#` matches `a`); an empty `{N}` for `#` also takes away the
//!   `/` written before it, so `x/{2}` maps `a` to `x`. Literal text may not
//!   hold `+` or `#`; a `{N}` past the filter's last level is refused when
//!   the configuration loads.
//! - `strip_prefix = "edge/"`, `add_prefix = "site1/"`: the prefix is taken
//!   off (the filter must start with it, so every topic it matches does),
//!   then the other put in front. Either or both; not with `topic`.
//! - neither: the topic is kept.
//!
//! A mapping that yields an invalid topic (empty, or over 65,535 bytes) is
//! `None`: the bridge counts the message as unmappable and drops it.

use midge_protocol::topic;

/// A compiled mapping (built once when the configuration loads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// The topic is kept.
    Keep,
    /// `strip` is taken off, then `add` put in front.
    Prefix { strip: String, add: String },
    /// A template over the filter's levels.
    Template(Vec<Part>),
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// The topic's level at the filter's level `n` (0-based here).
    Level(usize),
    /// Every level from `n` (0-based) on: the filter's `#`.
    Rest(usize),
}

impl Mapping {
    /// Compiles the mapping of a direction whose (plain, valid) filter is
    /// `filter`. The error says what is wrong, for the caller to put after
    /// the key's name.
    pub fn compile(
        filter: &str,
        template: Option<&str>,
        strip: Option<&str>,
        add: Option<&str>,
    ) -> Result<Mapping, String> {
        if let Some(t) = template {
            if strip.is_some() || add.is_some() {
                return Err(
                    "`topic` and `strip_prefix` / `add_prefix` exclude each other (a template can do both)"
                        .into(),
                );
            }
            return compile_template(filter, t);
        }
        if strip.is_none() && add.is_none() {
            return Ok(Mapping::Keep);
        }
        let strip = strip.unwrap_or_default();
        let add = add.unwrap_or_default();
        if strip.contains(['+', '#']) || add.contains(['+', '#']) {
            return Err("prefixes may not contain `+` or `#`".into());
        }
        if !filter.starts_with(strip) {
            return Err(format!(
                "strip_prefix `{strip}` is not the start of the filter `{filter}` (topics it matches would not all have it)"
            ));
        }
        Ok(Mapping::Prefix {
            strip: strip.to_string(),
            add: add.to_string(),
        })
    }

    /// The mapped topic, or `None` when the result is not a valid topic name.
    pub fn apply(&self, topic_name: &str) -> Option<String> {
        let out = match self {
            Mapping::Keep => return Some(topic_name.to_string()),
            Mapping::Prefix { strip, add } => {
                let rest = topic_name.strip_prefix(strip.as_str())?;
                let mut s = String::with_capacity(add.len() + rest.len());
                s.push_str(add);
                s.push_str(rest);
                s
            }
            Mapping::Template(parts) => expand(parts, topic_name),
        };
        topic::valid_name(&out).then_some(out)
    }
}

fn compile_template(filter: &str, t: &str) -> Result<Mapping, String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = t;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        if rest.as_bytes()[i] == b'}' {
            return Err(format!("`}}` without `{{` in `{t}`"));
        }
        let after = &rest[i + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{{` without `}}` in `{t}`"))?;
        let inner = &after[..end];
        let n: usize = inner
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("`{{{inner}}}` in `{t}`: expected a level number from 1"))?;
        let level = levels.get(n - 1).ok_or_else(|| {
            format!(
                "`{{{n}}}` in `{t}`: the filter `{filter}` has {} level(s)",
                levels.len()
            )
        })?;
        if !text.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut text)));
        }
        parts.push(if *level == "#" {
            Part::Rest(n - 1)
        } else {
            Part::Level(n - 1)
        });
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    for p in &parts {
        if let Part::Text(s) = p {
            if s.contains(['+', '#']) {
                return Err(format!(
                    "`{t}`: literal text may not contain `+` or `#` (a topic name cannot)"
                ));
            }
        }
    }
    if parts.is_empty() {
        return Err("the template is empty".into());
    }
    Ok(Mapping::Template(parts))
}

fn expand(parts: &[Part], name: &str) -> String {
    let levels: Vec<&str> = name.split('/').collect();
    let mut out = String::with_capacity(name.len() + 16);
    for p in parts {
        match p {
            Part::Text(s) => out.push_str(s),
            // A matching topic has every level before the filter's `#`.
            Part::Level(n) => out.push_str(levels.get(*n).copied().unwrap_or_default()),
            Part::Rest(n) => match levels.get(*n..) {
                Some(r) if !r.is_empty() => out.push_str(&r.join("/")),
                _ => {
                    // `#` matched nothing: take back the separator before it.
                    if out.ends_with('/') {
                        out.pop();
                    }
                }
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(filter: &str, t: &str, topic: &str) -> Option<String> {
        Mapping::compile(filter, Some(t), None, None)
            .unwrap()
            .apply(topic)
    }

    #[test]
    fn template_levels_follow_the_filter() {
        assert_eq!(
            map("sensors/+/temp", "site1/{2}/{3}", "sensors/k1/temp").as_deref(),
            Some("site1/k1/temp")
        );
        assert_eq!(
            map("sensors/#", "site1/{2}", "sensors/a/b/c").as_deref(),
            Some("site1/a/b/c")
        );
        assert_eq!(
            map("a/+/#", "{3}/from/{2}", "a/dev9/x/y").as_deref(),
            Some("x/y/from/dev9")
        );
        // A literal level maps to itself; a level used twice.
        assert_eq!(map("a/+", "{1}-{2}/{2}", "a/b").as_deref(), Some("a-b/b"));
        // `+` may match an empty level.
        assert_eq!(map("a/+/c", "x/{2}/y", "a//c").as_deref(), Some("x//y"));
    }

    #[test]
    fn an_empty_hash_takes_its_separator_with_it() {
        assert_eq!(
            map("sensors/#", "site1/{2}", "sensors").as_deref(),
            Some("site1")
        );
        assert_eq!(
            map("sensors/#", "site1/{2}/raw", "sensors").as_deref(),
            Some("site1/raw")
        );
        // Nothing left at all: not a topic.
        assert_eq!(map("sensors/#", "{2}", "sensors"), None);
        assert_eq!(map("#", "{1}", "a/b").as_deref(), Some("a/b"));
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let e = |f: &str, t: &str| Mapping::compile(f, Some(t), None, None).unwrap_err();
        assert!(
            e("a/+", "x/{3}").contains("has 2 level(s)"),
            "{}",
            e("a/+", "x/{3}")
        );
        assert!(e("a/+", "x/{0}").contains("level number from 1"));
        assert!(e("a/+", "x/{two}").contains("level number from 1"));
        assert!(e("a/+", "x/{1").contains("without `}`"));
        assert!(e("a/+", "x}/{1}").contains("without `{`"));
        assert!(e("a/+", "x/+/{1}").contains("may not contain"));
        assert!(e("a/+", "").contains("empty"));
        let both = Mapping::compile("a/#", Some("{1}"), Some("a/"), None).unwrap_err();
        assert!(both.contains("exclude each other"), "{both}");
    }

    #[test]
    fn prefixes_strip_then_add() {
        let m = Mapping::compile("edge/#", None, Some("edge/"), Some("site1/")).unwrap();
        assert_eq!(m.apply("edge/a/b").as_deref(), Some("site1/a/b"));
        // `edge` alone matches `edge/#` but lacks the prefix.
        assert_eq!(m.apply("edge"), None);
        let add = Mapping::compile("#", None, None, Some("site1/")).unwrap();
        assert_eq!(add.apply("x").as_deref(), Some("site1/x"));
        let strip = Mapping::compile("edge/#", None, Some("edge/"), None).unwrap();
        assert_eq!(strip.apply("edge/x/y").as_deref(), Some("x/y"));
        let e = Mapping::compile("+/x", None, Some("edge/"), None).unwrap_err();
        assert!(e.contains("not the start of the filter"), "{e}");
        let e = Mapping::compile("#", None, None, Some("a/#")).unwrap_err();
        assert!(e.contains("may not contain"), "{e}");
        assert_eq!(
            Mapping::compile("a/#", None, None, None).unwrap(),
            Mapping::Keep
        );
    }

    #[test]
    fn a_result_too_long_is_not_a_topic() {
        let long = format!("a/{}", "x".repeat(65_530));
        let m = Mapping::compile("a/+", Some("prefix/{2}"), None, None).unwrap();
        assert_eq!(m.apply(&long), None);
    }
}
