//! Rule errors placed in the TOML file the rules came from.
//!
//! A rule's SQL error counts lines and columns inside its SQL (`rule r2:
//! line 4, column 9: ...`), which an operator would have to find and count
//! again in the file. [`RulesInFile`] reads where each `[[rules]]` entry,
//! its `id`, its `sql` string and its `actions` are in the file (the TOML
//! parser's spans) and gives each rule error the file's line and column:
//! for an SQL error the spot inside the SQL string itself (escapes and
//! line-ending backslashes followed), for an action's error the action, for
//! a duplicate id the repeated entry's `id`.

use std::collections::HashMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A rule error with the file's line and column (1-based; columns in
/// characters) of the spot it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub line: usize,
    pub column: usize,
    /// The error; an SQL position in it reads `line L, column C of its SQL`.
    pub message: String,
}

/// One `[[rules]]` entry: where it and its keys are.
#[derive(Debug)]
struct Entry {
    id: Option<String>,
    /// The entry (for `[[rules]]`, its header).
    at: usize,
    id_at: Option<usize>,
    /// The `sql` string's token (quotes included).
    sql: Option<Range<usize>>,
    actions: Vec<usize>,
}

/// Where the rules of one TOML file are.
#[derive(Debug)]
pub struct RulesInFile<'t> {
    text: &'t str,
    entries: Vec<Entry>,
    /// How many `duplicate id` errors each id had so far.
    duplicates: HashMap<String, usize>,
}

impl<'t> RulesInFile<'t> {
    /// Reads where the rules of `text` (a TOML file) are. A file with
    /// syntax errors is read as far as it goes.
    pub fn read(text: &'t str) -> RulesInFile<'t> {
        let (root, _) = DeTable::parse_recoverable(text);
        let mut entries = Vec::new();
        let rules = root
            .get_ref()
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == "rules")
            .map(|(_, v)| v);
        if let Some(DeValue::Array(items)) = rules.map(Spanned::get_ref) {
            for item in items.iter() {
                let DeValue::Table(t) = item.get_ref() else {
                    continue;
                };
                let key = |name: &str| {
                    t.iter()
                        .find(|(k, _)| k.get_ref().as_ref() == name)
                        .map(|(_, v)| v)
                };
                let id = key("id");
                let actions = match key("actions").map(Spanned::get_ref) {
                    Some(DeValue::Array(a)) => a.iter().map(|x| x.span().start).collect(),
                    _ => Vec::new(),
                };
                entries.push(Entry {
                    id: id.and_then(|v| match v.get_ref() {
                        DeValue::String(s) => Some(s.to_string()),
                        _ => None,
                    }),
                    at: item.span().start,
                    id_at: id.map(|v| v.span().start),
                    sql: key("sql")
                        .filter(|v| matches!(v.get_ref(), DeValue::String(_)))
                        .map(Spanned::span),
                    actions,
                });
            }
        }
        RulesInFile {
            text,
            entries,
            duplicates: HashMap::new(),
        }
    }

    /// `error` (as [`crate::rules::RuleSet::build`] or
    /// `Config::rule_problems` words it) placed in the file; `None` when it
    /// names no rule of the file.
    pub fn place(&mut self, error: &str) -> Option<Placed> {
        let at = |offset: usize, message: String| {
            let (line, column) = position(self.text, offset);
            Some(Placed {
                line,
                column,
                message,
            })
        };
        // `rule ID: line L, column C: what` (the longest id that fits).
        let sql_error = self
            .entries
            .iter()
            .filter_map(|e| {
                let id = e.id.as_deref()?;
                let rest = error.strip_prefix(&format!("rule {id}: line "))?;
                Some((id, e, rest))
            })
            .max_by_key(|(id, _, _)| id.len());
        if let Some((id, entry, rest)) = sql_error {
            let (line, rest) = rest.split_once(", column ")?;
            let (column, what) = rest.split_once(": ")?;
            let (line, column): (usize, usize) = (line.parse().ok()?, column.parse().ok()?);
            let sql = entry.sql.clone()?;
            return match spot(&self.text[sql.clone()], line, column) {
                Some(o) => at(
                    sql.start + o,
                    format!("rule {id}: line {line}, column {column} of its SQL: {what}"),
                ),
                None => at(sql.start, error.to_string()),
            };
        }
        // `rule `ID`: ...`
        if let Some(rest) = error.strip_prefix("rule `") {
            let (id, what) = self
                .entries
                .iter()
                .filter_map(|e| {
                    let id = e.id.as_deref()?;
                    Some((id, rest.strip_prefix(id)?.strip_prefix("`: ")?))
                })
                .max_by_key(|(id, _)| id.len())?;
            let id = id.to_string();
            let mut same = self.entries.iter().filter(|e| e.id.as_deref() == Some(&id));
            if what.starts_with("duplicate id") {
                let n = self.duplicates.entry(id.clone()).or_default();
                *n += 1;
                let e = same.nth(*n)?;
                return at(e.id_at.unwrap_or(e.at), error.to_string());
            }
            let e = same.next()?;
            let action = what
                .strip_prefix("actions[")
                .and_then(|r| r.split_once(']'))
                .and_then(|(i, _)| i.parse::<usize>().ok())
                .and_then(|i| e.actions.get(i).copied());
            return at(action.unwrap_or(e.at), error.to_string());
        }
        // `rules[N]: `id` must not be empty`
        if let Some(rest) = error.strip_prefix("rules[") {
            let n: usize = rest.split_once(']')?.0.parse().ok()?;
            let blank = |e: &&Entry| e.id.as_deref().is_some_and(|i| i.trim().is_empty());
            let e = self
                .entries
                .get(n)
                .filter(blank)
                .or_else(|| self.entries.iter().find(blank))?;
            return at(e.id_at.unwrap_or(e.at), error.to_string());
        }
        None
    }
}

/// Line and column (1-based, columns in characters) of byte `at` in `text`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The byte offset in `raw`, a TOML string token, of the character at
/// `line` and `column` (1-based, in characters) of the string's value; the
/// end of the line or of the value when the column is just past it.
fn spot(raw: &str, line: usize, column: usize) -> Option<usize> {
    let (chars, end) = decode(raw)?;
    let (mut l, mut c) = (1, 1);
    for &(ch, o) in &chars {
        if l == line && c == column {
            return Some(o);
        }
        if ch == '\n' {
            if l == line && c < column {
                return Some(o);
            }
            l += 1;
            c = 1;
        } else {
            c += 1;
        }
    }
    (l == line && c == column).then_some(end)
}

/// The characters of the TOML string token `raw` (delimiters included),
/// each with its byte offset in `raw`, and the offset of the closing
/// delimiter. `None` when `raw` is not a string token TOML accepts.
fn decode(raw: &str) -> Option<(Vec<(char, usize)>, usize)> {
    let delim = ["'''", "\"\"\"", "'", "\""]
        .into_iter()
        .find(|d| raw.starts_with(d) && raw.len() >= 2 * d.len())?;
    let multi = delim.len() == 3;
    let literal = delim.starts_with('\'');
    let end = raw.len() - delim.len();
    let mut start = delim.len();
    if multi {
        // A newline right after the opening delimiter is not in the value.
        if raw[start..].starts_with("\r\n") {
            start += 2;
        } else if raw[start..].starts_with('\n') {
            start += 1;
        }
    }
    let body = raw.get(start..end)?;
    let mut out = Vec::with_capacity(body.len());
    let mut it = body.char_indices().peekable();
    while let Some((o, ch)) = it.next() {
        let at = start + o;
        if literal || ch != '\\' {
            out.push((ch, at));
            continue;
        }
        let (_, e) = it.next()?;
        let mut hex = |n: usize| -> Option<char> {
            let digits: String = (0..n).filter_map(|_| it.next().map(|x| x.1)).collect();
            char::from_u32(u32::from_str_radix(&digits, 16).ok()?)
        };
        let decoded = match e {
            'b' => '\u{8}',
            't' => '\t',
            'n' => '\n',
            'f' => '\u{c}',
            'r' => '\r',
            'e' => '\u{1b}',
            '"' => '"',
            '\\' => '\\',
            'x' => hex(2)?,
            'u' => hex(4)?,
            'U' => hex(8)?,
            w if multi && w.is_whitespace() => {
                // A line-ending backslash: the value goes on at the next
                // character that is not white space.
                while it.peek().is_some_and(|&(_, x)| x.is_whitespace()) {
                    it.next();
                }
                continue;
            }
            _ => return None,
        };
        out.push((decoded, at));
    }
    Some((out, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_errors_point_into_the_sql_string() {
        let text = "[mqtt]\n\n[[rules]]\nid = \"r2\"\nsql = '''\nSELECT a\n  FROM \"t\"\n  WHERE a >> 2'''\n";
        let mut f = RulesInFile::read(text);
        let p = f
            .place("rule r2: line 3, column 11: unexpected `>>`")
            .unwrap();
        assert_eq!((p.line, p.column), (8, 11));
        assert_eq!(
            p.message,
            "rule r2: line 3, column 11 of its SQL: unexpected `>>`"
        );
    }

    #[test]
    fn escapes_and_line_ending_backslashes_are_followed() {
        // Column 7 of the SQL's line 2 is `b`, after a \t and a \u00e9.
        let text = "[[rules]]\nid = 'r'\nsql = \"\"\"SELECT \\\n   x,\\n\\t\\u00e9 AS bad\"\"\"\n";
        let sql: String = toml::from_str::<toml::Table>(text).unwrap()["rules"][0]["sql"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(sql, "SELECT x,\n\té AS bad");
        assert_eq!(sql.lines().nth(1).unwrap().chars().nth(6), Some('b'));
        let mut f = RulesInFile::read(text);
        let p = f.place("rule r: line 2, column 7: oops").unwrap();
        // `bad` starts at line 4, column 20 of the file.
        assert_eq!((p.line, p.column), (4, 20), "{p:?}");
        let p = f.place("rule r: line 1, column 8: oops").unwrap();
        assert_eq!((p.line, p.column), (4, 4), "`x` after the backslash");
        // Just past the end of the SQL (an unexpected end of input).
        let p = f.place("rule r: line 2, column 10: end").unwrap();
        assert_eq!((p.line, p.column), (4, 23), "{p:?}");
    }

    #[test]
    fn other_rule_errors_point_at_the_rule() {
        let text = "[[rules]]\nid = \"a\"\nsql = 'SELECT * FROM \"t\"'\nactions = [{ type = \"console\" }, { type = \"x\" }]\n\n[[rules]]\nid = \"a\"\nsql = 'SELECT 1 FROM \"u\"'\n\n[[rules]]\nid = \"a\"\nsql = 'SELECT 1 FROM \"v\"'\n\n[[rules]]\nid = \"\"\nsql = 'x'\n";
        let mut f = RulesInFile::read(text);
        let p = f.place("rule `a`: actions[1]: unknown type").unwrap();
        assert_eq!((p.line, p.column), (4, 34));
        assert_eq!(p.message, "rule `a`: actions[1]: unknown type");
        let p = f.place("rule `a`: duplicate id").unwrap();
        assert_eq!((p.line, p.column), (7, 6));
        let p = f.place("rule `a`: duplicate id").unwrap();
        assert_eq!((p.line, p.column), (11, 6));
        let p = f.place("rules[3]: `id` must not be empty").unwrap();
        assert_eq!((p.line, p.column), (15, 6));
        assert_eq!(f.place("rule `zz`: duplicate id"), None);
        assert_eq!(f.place("something else"), None);
    }
}
