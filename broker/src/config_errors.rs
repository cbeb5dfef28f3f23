//! Every TOML-level error of a configuration file, for `midge check`.
//!
//! `toml::from_str` stops at the first error. Here the parser recovers
//! (`DeTable::parse_recoverable`: every syntax error), and the recovered
//! document is deserialized into [`Config`] again and again: each error
//! serde reports (unknown key, wrong type, missing field) is listed with its
//! line and column, and the item it points at (the key, the value, or the
//! table missing a field) is taken out of the document before the next try.
//! What is left is a [`Config`] whose other problems `Config::problems`
//! can still list.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeArray, DeTable, DeValue, Deserializer};
use toml::Spanned;

use crate::Config;

/// Enough for any real file; stops a document that keeps failing.
const MAX_ERRORS: usize = 100;

/// One TOML-level error: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlError {
    /// 1-based line and column of the error's start.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl TomlError {
    /// `origin:line:column: message`.
    pub fn show(&self, origin: &str) -> String {
        format!("{origin}:{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Line and column (1-based, columns in characters) of byte `at` in `text`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn error(text: &str, e: &toml::de::Error) -> TomlError {
    let (line, column) = e.span().map_or((1, 1), |s| position(text, s.start));
    TomlError {
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

fn within(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Takes the innermost item that `span` points at out of `table` (or a
/// table or array under it). Every level is searched, not only those whose
/// span holds `span`: a `[section]`'s span is its header, not its keys.
/// Returns false when nothing was removed.
fn remove_in_table(table: &mut DeTable<'_>, span: &Range<usize>) -> bool {
    for (_, v) in table.iter_mut() {
        if remove_in_value(v, span) {
            return true;
        }
    }
    let hit = table
        .iter()
        .find(|(k, v)| within(&k.span(), span) || within(&v.span(), span))
        .map(|(k, _)| k.get_ref().clone());
    let Some(key) = hit else {
        return false;
    };
    let old = std::mem::replace(table, DeTable::new());
    for (k, v) in old {
        if *k.get_ref() != key {
            table.insert(k, v);
        }
    }
    true
}

/// Removes from inside `v` (not `v` itself).
fn remove_in_value(v: &mut Spanned<DeValue<'_>>, span: &Range<usize>) -> bool {
    match v.get_mut() {
        DeValue::Table(t) => remove_in_table(t, span),
        DeValue::Array(a) => remove_in_array(a, span),
        _ => false,
    }
}

fn remove_in_array(a: &mut DeArray<'_>, span: &Range<usize>) -> bool {
    let items: &mut [Spanned<DeValue<'_>>] = a;
    for item in items.iter_mut() {
        if remove_in_value(item, span) {
            return true;
        }
    }
    let Some(i) = a.iter().position(|item| within(&item.span(), span)) else {
        return false;
    };
    let mut kept = DeArray::new();
    for (j, item) in a.iter().enumerate() {
        if j != i {
            kept.push(item.clone());
        }
    }
    *a = kept;
    true
}

/// Every TOML-level error of `text` (syntax, unknown keys, types, missing
/// fields) in the order found, and the configuration of what remains once
/// the faulty items are left out (`None` when nothing usable remains).
pub fn every_error(text: &str) -> (Option<Config>, Vec<TomlError>) {
    let (mut root, syntax) = DeTable::parse_recoverable(text);
    let mut errors: Vec<TomlError> = syntax.iter().map(|e| error(text, e)).collect();
    root.get_mut().make_owned();
    while errors.len() < MAX_ERRORS {
        match Config::deserialize(Deserializer::from(root.clone())) {
            Ok(c) => {
                // serde visits keys in sorted order, the reader reads lines.
                errors.sort_by_key(|e| (e.line, e.column));
                return (Some(c), errors);
            }
            Err(e) => {
                errors.push(error(text, &e));
                let removed = e
                    .span()
                    .is_some_and(|s| remove_in_table(root.get_mut(), &s));
                if !removed {
                    break;
                }
            }
        }
    }
    errors.sort_by_key(|e| (e.line, e.column));
    (None, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_and_bad_value_is_listed_with_its_line() {
        let text = "[mqtt]\nmax_keepalive = 5\nmax_qos = \"two\"\n\n[limits]\nconnect_timeout = 10\nbogus = 1\n\n[nonsense]\nx = 1\n";
        let (cfg, errors) = every_error(text);
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 7, 9], "{errors:?}");
        assert!(errors[0].message.contains("max_keepalive"), "{errors:?}");
        assert!(errors[2].message.contains("bogus"), "{errors:?}");
        assert!(errors[3].message.contains("nonsense"), "{errors:?}");
        let cfg = cfg.expect("the rest deserializes");
        assert_eq!(cfg.limits.connect_timeout, 10, "good keys are kept");
    }

    #[test]
    fn syntax_errors_are_all_listed() {
        let text = "[mqtt]\nmax_qos = \n[limits]\nconnect_timeout = 3\nmax_connections = = 2\n";
        let (_, errors) = every_error(text);
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert!(lines.contains(&2) && lines.contains(&5), "{errors:?}");
    }

    #[test]
    fn a_rule_missing_a_field_is_named_and_the_others_kept() {
        let text = "[[rules]]\nid = \"a\"\nsql = 'SELECT * FROM \"t\"'\n\n[[rules]]\nsql = 'SELECT * FROM \"u\"'\nactions = 3\n";
        let (cfg, errors) = every_error(text);
        assert!(!errors.is_empty());
        assert!(errors.iter().all(|e| e.line >= 5), "{errors:?}");
        let cfg = cfg.expect("the first rule remains");
        assert_eq!(cfg.rules.len(), 1);
        assert_eq!(cfg.rules[0].id, "a");
    }

    #[test]
    fn position_counts_lines_and_characters() {
        assert_eq!(position("ab\ncdé\nx", 0), (1, 1));
        assert_eq!(position("ab\ncdé\nx", 3), (2, 1));
        assert_eq!(position("ab\ncdé\nx", 8), (3, 1));
    }
}
