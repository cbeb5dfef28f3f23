//! Parse layer: SQL text -> clauses -> `sqlparser` expression trees.
//!
//! `sqlparser` cannot parse EMQX rule SQL as a whole (quoted topic filters
//! in `FROM`, `FOREACH ... DO ... INCASE`, `=~`, `div`/`mod`, double-quoted
//! strings), so this layer tokenizes the statement with sqlparser's
//! tokenizer and a small dialect of our own, splits it into clauses at the
//! top-level clause keywords, parses `FROM` itself, rewrites the few EMQX
//! token forms sqlparser does not know, and hands each expression clause to
//! `sqlparser::parser::Parser`.

use std::any::TypeId;

use sqlparser::ast::{Expr as SqlExpr, SelectItem};
use sqlparser::dialect::{Dialect, GenericDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer, Word};

/// Maximum SQL length accepted (bytes).
pub const MAX_SQL_LEN: usize = 64 * 1024;
const RECURSION_LIMIT: usize = 64;
/// Maximum tokens in one clause: bounds the depth of left-associative
/// operator chains (which sqlparser builds without recursing) so that
/// dropping or walking the tree cannot overflow the stack.
pub const MAX_CLAUSE_TOKENS: usize = 4096;

/// The EMQX rule SQL dialect: `"` and `` ` `` delimit identifiers at the
/// token level (double-quoted words become strings in expressions), no
/// backslash escapes in strings (regex patterns stay verbatim). It reports
/// itself as the generic dialect for sqlparser's dialect-specific branches
/// (array literals, subscripts).
#[derive(Debug, Default)]
pub(crate) struct EmqxDialect;

impl Dialect for EmqxDialect {
    fn dialect(&self) -> TypeId {
        TypeId::of::<GenericDialect>()
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        ch.is_alphabetic() || ch == '_'
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        ch.is_alphanumeric() || ch == '_'
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        ch == '"' || ch == '`'
    }
    fn supports_boolean_literals(&self) -> bool {
        true
    }
}

/// A parse error with a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl ParseError {
    pub(crate) fn at(loc: Location, message: impl Into<String>) -> Self {
        ParseError {
            line: loc.line,
            column: loc.column,
            message: message.into(),
        }
    }
}

/// One topic filter of `FROM`, with its position.
#[derive(Debug, Clone)]
pub(crate) struct FromItem {
    pub filter: String,
    pub loc: Location,
}

/// The statement, clause by clause.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // built once per compile
pub(crate) enum Body {
    Select {
        items: Vec<SelectItem>,
    },
    Foreach {
        /// `FOREACH e1 AS a, e2 AS b, collection [AS item]`: the last item
        /// is the collection, the earlier ones bind names.
        items: Vec<SelectItem>,
        do_items: Vec<SelectItem>,
        incase: Option<SqlExpr>,
    },
}

/// A parsed (not yet planned) rule statement.
#[derive(Debug)]
pub(crate) struct Statement {
    pub body: Body,
    pub from: Vec<FromItem>,
    pub where_: Option<SqlExpr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    Select,
    Foreach,
    Do,
    Incase,
    From,
    Where,
}

impl Kw {
    fn name(self) -> &'static str {
        match self {
            Kw::Select => "SELECT",
            Kw::Foreach => "FOREACH",
            Kw::Do => "DO",
            Kw::Incase => "INCASE",
            Kw::From => "FROM",
            Kw::Where => "WHERE",
        }
    }
}

fn clause_kw(w: &Word) -> Option<Kw> {
    if w.quote_style.is_some() {
        return None;
    }
    let v = w.value.to_ascii_lowercase();
    Some(match v.as_str() {
        "select" => Kw::Select,
        "foreach" => Kw::Foreach,
        "do" => Kw::Do,
        "incase" => Kw::Incase,
        "from" => Kw::From,
        "where" => Kw::Where,
        _ => return None,
    })
}

struct Segment {
    kw: Kw,
    kw_loc: Location,
    tokens: Vec<TokenWithSpan>,
    /// Where the segment ends (next clause keyword or end of input).
    end: Location,
}

fn describe(tok: &Token) -> String {
    match tok {
        Token::EOF => "end of input".to_owned(),
        t => format!("`{t}`"),
    }
}

fn map_parser_error(e: ParserError, fallback: Location) -> ParseError {
    let msg = match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => {
            return ParseError::at(fallback, "expression nested too deeply")
        }
    };
    // sqlparser appends " at Line: L, Column: C".
    if let Some(idx) = msg.rfind(" at Line: ") {
        let tail = &msg[idx + " at Line: ".len()..];
        let mut parts = tail.split(", Column: ");
        let line = parts.next().and_then(|s| s.trim().parse().ok());
        let col = parts.next().and_then(|s| s.trim().parse().ok());
        if let (Some(line), Some(column)) = (line, col) {
            let message = readable(&msg[..idx]);
            return ParseError {
                line,
                column,
                message,
            };
        }
    }
    ParseError::at(fallback, msg)
}

/// sqlparser's messages in words a rule author knows: `No infix parser for
/// token ShiftRight` becomes "unexpected `>>`".
fn readable(msg: &str) -> String {
    if let Some(tok) = msg.strip_prefix("No infix parser for token ") {
        let shown = match tok {
            "ShiftRight" => ">>".to_owned(),
            "ShiftLeft" => "<<".to_owned(),
            "Ampersand" => "&".to_owned(),
            "Pipe" => "|".to_owned(),
            "Caret" => "^".to_owned(),
            "StringConcat" => "||".to_owned(),
            "DoubleColon" => "::".to_owned(),
            "Colon" => ":".to_owned(),
            "Arrow" => "->".to_owned(),
            "LongArrow" => "->>".to_owned(),
            other => other.trim_start_matches("Word(").to_owned(),
        };
        return format!("unexpected `{shown}`: not an operator of rule SQL");
    }
    msg.replace("found: EOF", "found: end of clause")
        .replace("Expected: ", "expected ")
}

/// Parses a full rule statement.
pub(crate) fn parse_statement(sql: &str) -> Result<Statement, ParseError> {
    if sql.len() > MAX_SQL_LEN {
        return Err(ParseError::at(
            Location { line: 1, column: 1 },
            format!("SQL longer than {MAX_SQL_LEN} bytes"),
        ));
    }
    let dialect = EmqxDialect;
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| ParseError::at(e.location, e.message))?;
    let tokens: Vec<TokenWithSpan> = tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let end_loc = tokens
        .last()
        .map(|t| t.span.end)
        .unwrap_or(Location { line: 1, column: 1 });

    // Split into clauses at top-level clause keywords.
    let mut segments: Vec<Segment> = Vec::new();
    let mut depth: i64 = 0;
    let mut prev_period = false;
    for t in &tokens {
        let kw = match &t.token {
            Token::Word(w) if depth == 0 && !prev_period => clause_kw(w),
            _ => None,
        };
        match &t.token {
            Token::LParen | Token::LBracket | Token::LBrace => depth += 1,
            Token::RParen | Token::RBracket | Token::RBrace => depth -= 1,
            _ => {}
        }
        prev_period = t.token == Token::Period;
        if let Some(kw) = kw {
            if let Some(last) = segments.last_mut() {
                last.end = t.span.start;
            }
            segments.push(Segment {
                kw,
                kw_loc: t.span.start,
                tokens: Vec::new(),
                end: end_loc,
            });
        } else if let Some(last) = segments.last_mut() {
            last.tokens.push(t.clone());
        } else {
            return Err(ParseError::at(
                t.span.start,
                format!("expected SELECT or FOREACH, found {}", describe(&t.token)),
            ));
        }
    }
    if segments.is_empty() {
        return Err(ParseError::at(
            end_loc,
            "expected SELECT or FOREACH, found end of input",
        ));
    }

    // Check clause order.
    let first = segments[0].kw;
    let allowed: &[Kw] = match first {
        Kw::Select => &[Kw::Select, Kw::From, Kw::Where],
        Kw::Foreach => &[Kw::Foreach, Kw::Do, Kw::Incase, Kw::From, Kw::Where],
        other => {
            return Err(ParseError::at(
                segments[0].kw_loc,
                format!("expected SELECT or FOREACH, found {}", other.name()),
            ))
        }
    };
    let mut pos = 0usize;
    let mut seen_from = false;
    for (i, seg) in segments.iter().enumerate() {
        let idx = allowed.iter().position(|k| *k == seg.kw);
        if seg.kw == Kw::Where && !seen_from {
            return Err(ParseError::at(
                seg.kw_loc,
                "unexpected WHERE, expected FROM before WHERE",
            ));
        }
        seen_from |= seg.kw == Kw::From;
        match idx {
            Some(idx) if (i == 0 || idx > pos) => pos = idx,
            _ => {
                let expected: Vec<&str> = allowed[pos + 1..].iter().map(|k| k.name()).collect();
                return Err(ParseError::at(
                    seg.kw_loc,
                    format!(
                        "unexpected {}, expected {}",
                        seg.kw.name(),
                        if expected.is_empty() {
                            "end of input".to_owned()
                        } else {
                            expected.join(" or ")
                        }
                    ),
                ));
            }
        }
    }
    if !segments.iter().any(|s| s.kw == Kw::From) {
        return Err(ParseError::at(
            end_loc,
            "expected FROM clause, found end of input",
        ));
    }

    let mut body_select = None;
    let mut foreach: Option<Vec<SelectItem>> = None;
    let mut do_items = Vec::new();
    let mut incase = None;
    let mut from = Vec::new();
    let mut where_ = None;
    for seg in segments {
        match seg.kw {
            Kw::Select => body_select = Some(parse_items(&seg, &dialect)?),
            Kw::Do => do_items = parse_items(&seg, &dialect)?,
            Kw::Foreach => {
                let items = parse_items(&seg, &dialect)?;
                if items.iter().any(|i| matches!(i, SelectItem::Wildcard(_))) {
                    return Err(ParseError::at(
                        seg.kw_loc,
                        "FOREACH expects an array expression, found `*`",
                    ));
                }
                foreach = Some(items);
            }
            Kw::Incase => incase = Some(parse_expr_segment(&seg, &dialect)?),
            Kw::Where => where_ = Some(parse_expr_segment(&seg, &dialect)?),
            Kw::From => from = parse_from(&seg)?,
        }
    }
    let body = match (body_select, foreach) {
        (Some(items), None) => Body::Select { items },
        (None, Some(items)) => Body::Foreach {
            items,
            do_items,
            incase,
        },
        _ => {
            return Err(ParseError::at(
                Location { line: 1, column: 1 },
                "expected SELECT or FOREACH",
            ))
        }
    };
    Ok(Statement { body, from, where_ })
}

fn parse_from(seg: &Segment) -> Result<Vec<FromItem>, ParseError> {
    let mut out = Vec::new();
    let mut expect_topic = true;
    for t in &seg.tokens {
        if expect_topic {
            let filter = match &t.token {
                Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s.clone(),
                Token::Word(w) if w.quote_style.is_some() => w.value.clone(),
                other => {
                    return Err(ParseError::at(
                        t.span.start,
                        format!(
                            "expected a quoted topic filter or event topic after FROM, found {}",
                            describe(other)
                        ),
                    ))
                }
            };
            out.push(FromItem {
                filter,
                loc: t.span.start,
            });
            expect_topic = false;
        } else if t.token == Token::Comma {
            expect_topic = true;
        } else {
            return Err(ParseError::at(
                t.span.start,
                format!(
                    "expected `,` or WHERE after topic filter, found {}",
                    describe(&t.token)
                ),
            ));
        }
    }
    if expect_topic {
        return Err(ParseError::at(
            seg.end,
            "expected a quoted topic filter or event topic after FROM, found end of clause",
        ));
    }
    Ok(out)
}

fn is_operand_end(t: &Token) -> bool {
    match t {
        Token::Word(w) => {
            w.keyword == Keyword::NoKeyword
                || w.keyword == Keyword::END
                || w.keyword == Keyword::NULL
                || w.keyword == Keyword::TRUE
                || w.keyword == Keyword::FALSE
        }
        Token::Number(..) | Token::SingleQuotedString(_) | Token::RParen | Token::RBracket => true,
        _ => false,
    }
}

/// Keywords that keep their meaning inside expressions.
fn structural(kw: Keyword) -> bool {
    matches!(
        kw,
        Keyword::AND
            | Keyword::OR
            | Keyword::NOT
            | Keyword::IN
            | Keyword::CASE
            | Keyword::WHEN
            | Keyword::THEN
            | Keyword::ELSE
            | Keyword::END
            | Keyword::AS
            | Keyword::IS
            | Keyword::NULL
            | Keyword::TRUE
            | Keyword::FALSE
            | Keyword::LIKE
            | Keyword::ILIKE
            | Keyword::BETWEEN
    )
}

/// Rewrites EMQX token forms into forms sqlparser understands.
fn rewrite(tokens: &[TokenWithSpan]) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len() + 1);
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let prev = out.last().map(|p| &p.token);
        let after_period = prev == Some(&Token::Period);
        let next = tokens.get(i + 1).map(|n| &n.token);
        let tok = match &t.token {
            // `=~` (topic match) -> `~`
            Token::Eq if next == Some(&Token::Tilde) => {
                i += 1;
                Token::Tilde
            }
            Token::Word(w) if w.quote_style == Some('"') && !after_period => {
                Token::SingleQuotedString(w.value.clone())
            }
            Token::Word(w) if w.quote_style.is_none() => {
                let lower = w.value.to_ascii_lowercase();
                let operand_before = prev.is_some_and(is_operand_end);
                if !after_period && operand_before && lower == "div" {
                    Token::DuckIntDiv
                } else if !after_period && operand_before && lower == "mod" {
                    Token::Mod
                } else if !after_period && structural(w.keyword) {
                    t.token.clone()
                } else {
                    Token::Word(Word {
                        value: w.value.clone(),
                        quote_style: None,
                        keyword: Keyword::NoKeyword,
                    })
                }
            }
            other => other.clone(),
        };
        out.push(TokenWithSpan {
            token: tok,
            span: t.span,
        });
        i += 1;
    }
    out
}

fn check_size(seg: &Segment) -> Result<(), ParseError> {
    if seg.tokens.len() > MAX_CLAUSE_TOKENS {
        return Err(ParseError::at(
            seg.kw_loc,
            format!(
                "{} clause too long ({} tokens, at most {MAX_CLAUSE_TOKENS})",
                seg.kw.name(),
                seg.tokens.len()
            ),
        ));
    }
    Ok(())
}

fn segment_parser<'d>(seg: &Segment, dialect: &'d EmqxDialect) -> Parser<'d> {
    let mut toks = rewrite(&seg.tokens);
    toks.push(TokenWithSpan {
        token: Token::EOF,
        span: Span::new(seg.end, seg.end),
    });
    Parser::new(dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(toks)
}

fn expect_end(p: &mut Parser<'_>, what: &str) -> Result<(), ParseError> {
    let t = p.peek_token();
    if t.token == Token::EOF {
        Ok(())
    } else {
        Err(ParseError::at(
            t.span.start,
            format!("expected {what}, found {}", describe(&t.token)),
        ))
    }
}

fn next_clauses(kw: Kw) -> &'static str {
    match kw {
        Kw::Select => "`,` or FROM",
        Kw::Foreach => "AS, DO, INCASE or FROM",
        Kw::Do => "`,`, INCASE or FROM",
        Kw::Incase => "an operator or FROM",
        Kw::Where => "an operator or end of input",
        Kw::From => "WHERE",
    }
}

fn parse_items(seg: &Segment, dialect: &EmqxDialect) -> Result<Vec<SelectItem>, ParseError> {
    if seg.tokens.is_empty() {
        return Err(ParseError::at(
            seg.end,
            format!(
                "expected an expression after {}, found nothing",
                seg.kw.name()
            ),
        ));
    }
    check_size(seg)?;
    let mut p = segment_parser(seg, dialect);
    let items = p
        .parse_comma_separated(Parser::parse_select_item)
        .map_err(|e| map_parser_error(e, seg.kw_loc))?;
    expect_end(&mut p, next_clauses(seg.kw))?;
    Ok(items)
}

fn parse_expr_segment(seg: &Segment, dialect: &EmqxDialect) -> Result<SqlExpr, ParseError> {
    if seg.tokens.is_empty() {
        return Err(ParseError::at(
            seg.end,
            format!(
                "expected a condition after {}, found nothing",
                seg.kw.name()
            ),
        ));
    }
    check_size(seg)?;
    let mut p = segment_parser(seg, dialect);
    let e = p
        .parse_expr()
        .map_err(|e| map_parser_error(e, seg.kw_loc))?;
    expect_end(&mut p, next_clauses(seg.kw))?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> Statement {
        match parse_statement(sql) {
            Ok(s) => s,
            Err(e) => panic!("{sql}: {e:?}"),
        }
    }

    fn err(sql: &str) -> ParseError {
        match parse_statement(sql) {
            Ok(s) => panic!("{sql}: expected error, got {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn simple_select() {
        let s = ok("SELECT payload.temp AS t, clientid FROM \"sensor/#\" WHERE payload.temp > 30");
        assert_eq!(s.from.len(), 1);
        assert_eq!(s.from[0].filter, "sensor/#");
        assert!(s.where_.is_some());
        match s.body {
            Body::Select { items } => assert_eq!(items.len(), 2),
            _ => panic!(),
        }
    }

    #[test]
    fn multiple_from_single_quotes() {
        let s = ok("select * from 't/+', \"$events/client_connected\"");
        let f: Vec<_> = s.from.iter().map(|f| f.filter.as_str()).collect();
        assert_eq!(f, ["t/+", "$events/client_connected"]);
    }

    #[test]
    fn foreach_full() {
        let s = ok(
            "FOREACH payload.sensors AS s DO s.name, s.v * 2 AS v INCASE s.v > 1 FROM \"t\" WHERE true",
        );
        match s.body {
            Body::Foreach {
                items,
                do_items,
                incase,
            } => {
                assert!(
                    matches!(&items[..], [SelectItem::ExprWithAlias { alias, .. }] if alias.value == "s")
                );
                assert_eq!(do_items.len(), 2);
                assert!(incase.is_some());
            }
            _ => panic!(),
        }
    }

    #[test]
    fn emqx_operators() {
        ok("SELECT 7 div 2 AS a, 7 mod 2 AS b, topic =~ 't/#' AS c FROM \"t\"");
        ok("SELECT [1, 2][1] AS a, payload.a[2].b AS b FROM \"t\"");
        ok("SELECT pub_props.'User-Property'.k AS k FROM \"t\"");
        ok("SELECT CASE WHEN qos = 1 THEN 'a' ELSE 'b' END AS c FROM \"t\"");
        ok("SELECT CASE qos WHEN 1 THEN 'a' END AS c FROM \"t\" WHERE qos IN (1, 2)");
        ok("SELECT timestamp, node, int('1') AS i, substring('abc', 1) AS s FROM \"t\"");
        ok("SELECT \"double\" AS d FROM \"t\" WHERE not qos = 1");
    }

    #[test]
    fn clause_keyword_inside_path_is_a_field() {
        let s = ok("SELECT payload.from AS f FROM \"t\" WHERE payload.where = 1");
        assert!(s.where_.is_some());
    }

    #[test]
    fn errors_have_positions() {
        let e = err("SELECT FROM \"t\"");
        assert_eq!((e.line, e.column), (1, 8));
        assert!(
            e.message.contains("expected an expression"),
            "{}",
            e.message
        );

        let e = err("SELECT a\nFROM t/a");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("quoted topic filter"), "{}", e.message);

        let e = err("SELECT a, FROM \"t\"");
        assert!(e.message.contains("expected"), "{}", e.message);

        let e = err("SELECT a\n  FROM \"t\"\n  WHERE a >> 2");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unexpected `>>`"), "{}", e.message);
        assert!(!e.message.contains("infix"), "{}", e.message);

        let e = err("UPDATE x");
        assert!(e.message.contains("expected SELECT or FOREACH"));

        let e = err("SELECT a WHERE a = 1");
        assert!(e.message.contains("unexpected WHERE"), "{}", e.message);

        let e = err("SELECT a FROM \"t\" WHERE a = ");
        assert!(e.message.contains("end of clause"), "{}", e.message);

        let e = err("SELECT a b c FROM \"t\"");
        assert!(e.message.contains("expected `,` or FROM"), "{}", e.message);

        let e = err("SELECT a");
        assert!(e.message.contains("FROM"), "{}", e.message);

        let e = err("SELECT 'abc FROM \"t\"");
        assert!(
            e.message.to_lowercase().contains("unterminated"),
            "{}",
            e.message
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let sql = format!(
            "SELECT {}1{} AS x FROM \"t\"",
            "(".repeat(500),
            ")".repeat(500)
        );
        let e = err(&sql);
        assert!(e.message.contains("nested"), "{}", e.message);
    }
}
