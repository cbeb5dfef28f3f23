//! Turns one single-row `INSERT ... VALUES (...)` statement into the
//! multi-row statement the `enqueue` batcher sends: the statement is read
//! once into a [`Template`] (the text before the tuple, the tuple as text
//! pieces and placeholder numbers, the tail), then [`Template::render`]
//! repeats the tuple for `rows` rows with the placeholders renumbered.
//!
//! The lexer knows just enough SQL to be safe: `'...'` strings (with `''`),
//! `"..."` identifiers (with `""`), `$N` placeholders and parentheses.
//! Anything it does not understand with confidence (comments, `E'...'` or
//! dollar-quoted strings, several statements, `RETURNING`, placeholders in
//! the tail, a second tuple) makes [`Template::parse`] answer `None`, and
//! the statement runs un-batched.

/// One single-row INSERT, ready to be repeated.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// `INSERT INTO t (a, b) VALUES ` (up to the tuple).
    head: String,
    /// The tuple, `(` to `)` inclusive.
    tuple: Vec<Piece>,
    /// After the tuple: empty or ` ON CONFLICT ...`.
    tail: String,
    /// Placeholders per row (`$1` .. `$params`).
    params: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// `$N`, 1-based.
    Param(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Word(&'a str),
    Param(usize),
    Open,
    Close,
    Comma,
    /// A string literal, quoted identifier, number or operator: copied as is.
    Other,
}

/// Splits `sql` into tokens with their byte ranges; `None` on anything the
/// batcher must not guess about.
fn lex(sql: &str) -> Option<Vec<(Tok<'_>, usize, usize)>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'\'' | b'"' => {
                // The closing quote; a doubled quote is an escaped one.
                i += 1;
                loop {
                    let j = i + sql[i..].find(c as char)?;
                    if b.get(j + 1) == Some(&c) {
                        i = j + 2;
                    } else {
                        i = j + 1;
                        break;
                    }
                }
                out.push((Tok::Other, start, i));
            }
            b'$' => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                // `$` without digits: a dollar quote (or worse) — give up.
                let n: usize = sql[start + 1..i].parse().ok()?;
                if n == 0 {
                    return None;
                }
                out.push((Tok::Param(n), start, i));
            }
            b'(' => {
                i += 1;
                out.push((Tok::Open, start, i));
            }
            b')' => {
                i += 1;
                out.push((Tok::Close, start, i));
            }
            b',' => {
                i += 1;
                out.push((Tok::Comma, start, i));
            }
            b';' => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                // E'..', U&'..', B'..', X'..' strings have their own escapes.
                if matches!(b.get(i), Some(b'\'') | Some(b'&')) {
                    return None;
                }
                out.push((Tok::Word(&sql[start..i]), start, i));
            }
            _ => {
                // Numbers, operators, casts (`::`), dots: single bytes copied
                // as is (multi-byte UTF-8 is handled by the word arm).
                i += 1;
                out.push((Tok::Other, start, i));
            }
        }
    }
    Some(out)
}

fn is_word(t: &Tok<'_>, w: &str) -> bool {
    matches!(t, Tok::Word(x) if x.eq_ignore_ascii_case(w))
}

impl Template {
    /// Reads `INSERT INTO target (columns) VALUES (tuple) [ON CONFLICT ...]`.
    pub fn parse(sql: &str) -> Option<Template> {
        let toks = lex(sql)?;
        let mut k = 0;
        let next = |k: &mut usize| {
            let t = toks.get(*k);
            *k += 1;
            t
        };
        if !is_word(&next(&mut k)?.0, "insert") || !is_word(&next(&mut k)?.0, "into") {
            return None;
        }
        // Target: words, quoted identifiers and dots, up to the column list.
        loop {
            match &next(&mut k)?.0 {
                Tok::Open => break,
                Tok::Word(w) if w.eq_ignore_ascii_case("values") => return None,
                Tok::Word(_) | Tok::Other => {}
                _ => return None,
            }
        }
        // Column list: no nesting, no placeholders.
        loop {
            match &next(&mut k)?.0 {
                Tok::Close => break,
                Tok::Word(_) | Tok::Other | Tok::Comma => {}
                _ => return None,
            }
        }
        if !is_word(&next(&mut k)?.0, "values") {
            return None;
        }
        let (open, tuple_start, _) = next(&mut k)?;
        if *open != Tok::Open {
            return None;
        }
        let head = sql[..*tuple_start].to_string();
        // The tuple, to its matching parenthesis.
        let mut depth = 1usize;
        let mut tuple = Vec::new();
        let mut copied = *tuple_start;
        let mut params = 0usize;
        let mut seen = Vec::new();
        let tuple_end = loop {
            let (t, s, e) = next(&mut k)?;
            match t {
                Tok::Open => depth += 1,
                Tok::Close => {
                    depth -= 1;
                    if depth == 0 {
                        break *e;
                    }
                }
                Tok::Param(n) => {
                    tuple.push(Piece::Text(sql[copied..*s].to_string()));
                    tuple.push(Piece::Param(*n));
                    copied = *e;
                    params = params.max(*n);
                    seen.push(*n);
                }
                _ => {}
            }
        };
        tuple.push(Piece::Text(sql[copied..tuple_end].to_string()));
        // Every placeholder 1..=params must occur in the tuple (the server
        // would reject a gap; keep such a statement un-batched).
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != params {
            return None;
        }
        // Tail: nothing, or ON CONFLICT without placeholders or RETURNING.
        let rest = &toks[k..];
        if let Some((first, _, _)) = rest.first() {
            if !is_word(first, "on") {
                return None;
            }
            if rest
                .iter()
                .any(|(t, _, _)| matches!(t, Tok::Param(_)) || is_word(t, "returning"))
            {
                return None;
            }
        }
        Some(Template {
            head,
            tuple,
            tail: sql[tuple_end..].to_string(),
            params,
        })
    }

    /// Placeholders per row.
    pub fn params(&self) -> usize {
        self.params
    }

    /// The statement for `rows` rows: row `r`'s `$k` becomes `$(r * params + k)`.
    pub fn render(&self, rows: usize) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(self.head.len() + rows * 8 * (self.params + 1));
        s.push_str(&self.head);
        for r in 0..rows {
            if r > 0 {
                s.push_str(", ");
            }
            for p in &self.tuple {
                match p {
                    Piece::Text(t) => s.push_str(t),
                    Piece::Param(n) => {
                        let _ = write!(s, "${}", r * self.params + n);
                    }
                }
            }
        }
        s.push_str(&self.tail);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(sql: &str, rows: usize) -> Option<String> {
        Template::parse(sql).map(|t| t.render(rows))
    }

    #[test]
    fn renumbers_placeholders_per_row() {
        assert_eq!(
            render("INSERT INTO t (a, b) VALUES ($1, $2)", 3).as_deref(),
            Some("INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4), ($5, $6)")
        );
    }

    #[test]
    fn ten_is_not_one_followed_by_zero() {
        let cols = (1..=10)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let ps = (1..=10)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let t = Template::parse(&format!("INSERT INTO t ({cols}) VALUES ({ps})")).unwrap();
        assert_eq!(t.params(), 10);
        let two = t.render(2);
        assert!(two.ends_with("($1, $2, $3, $4, $5, $6, $7, $8, $9, $10), ($11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"), "{two}");
    }

    #[test]
    fn placeholders_out_of_order_and_repeated_keep_their_meaning() {
        assert_eq!(
            render("insert into t(a,b,c) values($2, $1::jsonb, $2)", 2).as_deref(),
            Some("insert into t(a,b,c) values($2, $1::jsonb, $2), ($4, $3::jsonb, $4)")
        );
    }

    #[test]
    fn strings_and_quoted_identifiers_are_copied_not_renumbered() {
        assert_eq!(
            render(
                r#"INSERT INTO "my ""t"" (x" ("a)", b) VALUES ('$1 it''s (', $1)"#,
                2
            )
            .as_deref(),
            Some(
                r#"INSERT INTO "my ""t"" (x" ("a)", b) VALUES ('$1 it''s (', $1), ('$1 it''s (', $2)"#
            )
        );
    }

    #[test]
    fn nested_parentheses_and_functions_in_the_tuple() {
        assert_eq!(
            render("INSERT INTO s.t (a, b) VALUES (coalesce($1, now()), lower($2))", 2)
                .as_deref(),
            Some("INSERT INTO s.t (a, b) VALUES (coalesce($1, now()), lower($2)), (coalesce($3, now()), lower($4))")
        );
    }

    #[test]
    fn on_conflict_tail_is_kept_once() {
        assert_eq!(
            render(
                "INSERT INTO t (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                2
            )
            .as_deref(),
            Some("INSERT INTO t (k, v) VALUES ($1, $2), ($3, $4) ON CONFLICT (k) DO UPDATE SET v = excluded.v")
        );
    }

    #[test]
    fn no_placeholders_repeat_the_literal_tuple() {
        assert_eq!(
            render("INSERT INTO t (a) VALUES (1)", 2).as_deref(),
            Some("INSERT INTO t (a) VALUES (1), (1)")
        );
    }

    #[test]
    fn what_it_cannot_read_confidently_is_not_batched() {
        for sql in [
            "UPDATE t SET a = $1",
            "INSERT INTO t (a) VALUES ($1) RETURNING id",
            "INSERT INTO t (a) VALUES ($1), ($2)",
            "INSERT INTO t (a) VALUES ($1); DELETE FROM t",
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO UPDATE SET a = $1",
            "INSERT INTO t (a) VALUES ($1) -- comment",
            "INSERT INTO t (a) /* c */ VALUES ($1)",
            "INSERT INTO t (a) VALUES (E'\\'' || $1)",
            "INSERT INTO t (a) VALUES ($$x$$ || $1)",
            "INSERT INTO t (a) VALUES ($tag$x$tag$)",
            "INSERT INTO t (a, b) VALUES ($1, $3)",
            "INSERT INTO t (a) VALUES ('unterminated, $1)",
            "INSERT INTO t (a) VALUES ($1",
            "INSERT INTO t (a) SELECT $1",
            "INSERT INTO t VALUES ($1)",
            "INSERT INTO t (a) VALUES ($0)",
        ] {
            assert_eq!(Template::parse(sql), None, "{sql}");
        }
    }
}
