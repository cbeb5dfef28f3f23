//! EMQX-compatible SQL rule engine for Midge.
//!
//! Pure library: SQL text in, rows out; no I/O, no async. Three layers:
//!
//! 1. **Parse** (`parse`): the statement is tokenized with `sqlparser`'s
//!    tokenizer under a small EMQX dialect, split into clauses
//!    (`SELECT`/`FOREACH`, `DO`, `INCASE`, `FROM`, `WHERE`) at top-level
//!    keywords, `FROM` topic filters are read directly, EMQX-only token forms
//!    (`=~`, `div`, `mod`, double-quoted strings, keyword-named fields and
//!    functions) are rewritten, and each expression clause is parsed by
//!    `sqlparser::parser::Parser`.
//! 2. **Plan** (`plan`): the `sqlparser` trees are compiled once, at
//!    [`Rule::compile`], into a small expression tree: fields are checked
//!    against the static per-source field tables ([`Source::fields`]),
//!    functions are resolved to the catalogue with their arity checked
//!    (see `FUNCTIONS.md`), literal regexes are compiled, and output column
//!    names are fixed. Every load error is a [`RuleError`] naming the rule,
//!    the line/column and what was expected.
//! 3. **Evaluate** (`eval`): [`Rule::apply`] runs the plan against an
//!    [`Input`] (a message or an event the broker fills with borrowed
//!    fields). The payload is JSON-decoded lazily, at most once per
//!    [`Input`], shared by all rules evaluated on it. The result is zero or
//!    more [`Row`]s; a runtime type error is an [`EvalError`] for this rule
//!    and message only. Nothing in a rule or a message can make it panic.
//!
//! Values ([`Value`]) are EMQX's: a binary (the payload, `hexstr2bin(..)`)
//! stays bytes end to end and is never re-encoded unless a rule asks
//! (`bin2hexstr`, `base64_encode`, a JSON output, see [`value`](Value)).
//! The functions live in `functions/`, one module per family, as listed in
//! `FUNCTIONS.md`.
//!
//! ```
//! use midge_rules::{Input, Rule};
//!
//! let rule = Rule::compile(
//!     "r1",
//!     r#"SELECT payload.temp AS t, clientid FROM "sensor/#" WHERE payload.temp > 30"#,
//! )
//! .expect("valid rule");
//! assert_eq!(rule.from_filters(), ["sensor/#"]);
//! let input = Input::message("sensor/1", br#"{"temp": 31}"#).clientid("c1");
//! let rows = rule.apply(&input).expect("no runtime error");
//! assert_eq!(rows.len(), 1);
//! assert_eq!(rows[0]["t"], 31);
//! assert_eq!(rows[0]["clientid"], "c1");
//! ```

mod error;
mod eval;
mod functions;
mod input;
mod parse;
mod plan;
mod time;
mod topic;
mod value;

pub use error::{Clause, EvalError, RuleError};
pub use functions::{function_names, GETENV_PREFIX};
pub use input::{EventKind, Input, Source, MESSAGE_FIELDS};
pub use topic::{topic_matches, validate_filter};
pub use value::{decode_binary_tags, Map, Value, BINARY_TAG};

use crate::eval::{cond, eval, put_row, select, Env};
use crate::parse::ParseError;
use crate::plan::{Plan, PlanKind};

/// Functions from outside the catalogue, e.g. the broker's Wasm plugins.
/// Consulted at compile time for names the catalogue does not have (the
/// catalogue always wins), and called at evaluation time.
pub trait ExternalFunctions: Send + Sync + std::fmt::Debug {
    /// `(min, max)` arguments of `name` (lower case) if it is offered;
    /// `max` is `None` for variadic functions.
    fn arity(&self, name: &str) -> Option<(usize, Option<usize>)>;
    /// Calls `name`; an error fails the rule for this input only.
    fn call(&self, name: &str, args: &[Value]) -> Result<Value, String>;
}

/// One output row (column name -> value).
pub type Row = Map;

/// A compiled rule: parse and plan once, evaluate many times. `Send + Sync`.
#[derive(Debug)]
pub struct Rule {
    id: String,
    sql: String,
    filters: Vec<String>,
    sources: Vec<Source>,
    events: Vec<EventKind>,
    plan: Plan,
}

impl Rule {
    /// Parses and plans `sql`. Errors name the rule id, the position and
    /// what was expected; unknown fields, unknown functions, wrong arity,
    /// invalid topic filters and invalid literal regexes are rejected here.
    pub fn compile(id: &str, sql: &str) -> Result<Rule, RuleError> {
        Rule::compile_with(id, sql, None)
    }

    /// [`Rule::compile`], resolving functions the catalogue lacks in `ext`.
    pub fn compile_with(
        id: &str,
        sql: &str,
        ext: Option<&std::sync::Arc<dyn ExternalFunctions>>,
    ) -> Result<Rule, RuleError> {
        let to_err = |e: ParseError| RuleError {
            rule_id: id.to_owned(),
            line: e.line,
            column: e.column,
            message: e.message,
        };
        let stmt = parse::parse_statement(sql).map_err(to_err)?;
        let mut filters = Vec::new();
        let mut sources = Vec::new();
        let mut events = Vec::new();
        for f in &stmt.from {
            if f.filter.starts_with("$events/") {
                let kind = EventKind::from_topic(&f.filter).ok_or_else(|| {
                    to_err(ParseError::at(
                        f.loc,
                        format!(
                            "unknown event topic \"{}\"; expected one of: {}",
                            f.filter,
                            EventKind::ALL
                                .iter()
                                .map(|k| k.topic())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ))
                })?;
                if !events.contains(&kind) {
                    events.push(kind);
                    sources.push(Source::Event(kind));
                }
            } else {
                topic::validate_filter(&f.filter).map_err(|m| to_err(ParseError::at(f.loc, m)))?;
                if !sources.contains(&Source::Message) {
                    sources.push(Source::Message);
                }
            }
            filters.push(f.filter.clone());
        }
        let plan = plan::plan(stmt, &sources, ext).map_err(to_err)?;
        Ok(Rule {
            id: id.to_owned(),
            sql: sql.to_owned(),
            filters,
            sources,
            events,
            plan,
        })
    }

    /// The rule id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The SQL text the rule was compiled from.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The `FROM` entries, as written (topic filters and `$events/...`
    /// topics), for the broker's index.
    pub fn from_filters(&self) -> &[String] {
        &self.filters
    }

    /// The event kinds among the `FROM` entries.
    pub fn event_kinds(&self) -> &[EventKind] {
        &self.events
    }

    /// Whether the rule handles published messages (has a topic filter).
    pub fn handles_messages(&self) -> bool {
        self.sources.contains(&Source::Message)
    }

    /// Whether evaluating the rule may JSON-decode the payload
    /// (`payload.x`, `payload('x')`).
    pub fn reads_payload_json(&self) -> bool {
        self.plan.reads_payload_json
    }

    /// Whether the input is selected by the rule's `FROM`.
    pub fn matches(&self, input: &Input<'_>) -> bool {
        match input.source() {
            Source::Event(k) => self.events.contains(&k),
            Source::Message => {
                let Some(topic) = input.topic_str() else {
                    return false;
                };
                self.filters
                    .iter()
                    .any(|f| !f.starts_with("$events/") && topic_matches(f, topic))
            }
        }
    }

    /// `FROM` check, then [`Rule::evaluate`]. `Ok(vec![])` = no match.
    pub fn apply(&self, input: &Input<'_>) -> Result<Vec<Row>, EvalError> {
        if !self.matches(input) {
            return Ok(Vec::new());
        }
        self.evaluate(input)
    }

    /// Evaluates the rule, assuming `FROM` already matched (the broker's
    /// index did it). `Ok(vec![])` = `WHERE`/`INCASE` filtered it out.
    pub fn evaluate(&self, input: &Input<'_>) -> Result<Vec<Row>, EvalError> {
        let fail = |clause: Clause| {
            move |message: String| EvalError {
                rule_id: self.id.clone(),
                clause,
                message,
            }
        };
        let empty = Map::new();
        match &self.plan.kind {
            PlanKind::Select(cols) => {
                let row = select(cols, input, None, None).map_err(fail(Clause::Select))?;
                if let Some(w) = &self.plan.where_ {
                    let env = Env {
                        input,
                        bindings: &row,
                        item: None,
                        outer: None,
                    };
                    if !cond(w, &env).map_err(fail(Clause::Where))? {
                        return Ok(Vec::new());
                    }
                }
                Ok(vec![row])
            }
            PlanKind::Foreach {
                bound,
                collection,
                coll_key,
                item_name,
                do_cols,
                incase,
            } => {
                // What the FOREACH clause selects: every bound expression
                // (later ones see the earlier ones), then the collection.
                let mut selected = Map::new();
                for (expr, key) in bound {
                    let env = Env {
                        input,
                        bindings: &selected,
                        item: None,
                        outer: None,
                    };
                    let v = eval(expr, &env).map_err(fail(Clause::Foreach))?;
                    put_row(&mut selected, key, v);
                }
                let env = Env {
                    input,
                    bindings: &selected,
                    item: None,
                    outer: None,
                };
                let coll = eval(collection, &env).map_err(fail(Clause::Foreach))?;
                put_row(&mut selected, coll_key, coll.clone());
                if let Some(w) = &self.plan.where_ {
                    let env = Env {
                        input,
                        bindings: &selected,
                        item: None,
                        outer: None,
                    };
                    if !cond(w, &env).map_err(fail(Clause::Where))? {
                        return Ok(Vec::new());
                    }
                }
                let Value::Array(items) = coll else {
                    return Ok(Vec::new());
                };
                let mut rows = Vec::with_capacity(items.len());
                for it in &items {
                    let item = Some((item_name.as_str(), it));
                    if let Some(c) = incase {
                        let env = Env {
                            input,
                            bindings: &empty,
                            item,
                            outer: Some(&selected),
                        };
                        if !cond(c, &env).map_err(fail(Clause::Incase))? {
                            continue;
                        }
                    }
                    if do_cols.is_empty() {
                        let mut row = input.all_fields();
                        for (k, v) in &selected {
                            row.insert(k.clone(), v.clone());
                        }
                        row.insert(item_name.clone(), it.clone());
                        rows.push(row);
                    } else {
                        rows.push(
                            select(do_cols, input, item, Some(&selected))
                                .map_err(fail(Clause::Do))?,
                        );
                    }
                }
                Ok(rows)
            }
        }
    }
}

/// Fuzz entry point: compiles arbitrary SQL and, if it loads, evaluates it
/// against a message carrying `payload` on topic `t/1`. Must never panic.
#[doc(hidden)]
pub fn fuzz_one(sql: &str, payload: &[u8]) {
    if let Ok(rule) = Rule::compile("fuzz", sql) {
        let input = Input::message("t/1", payload)
            .clientid("c")
            .username(Some("u"))
            .qos(1)
            .flags(false, false)
            .timestamp(0);
        let _ = rule.evaluate(&input);
    }
}
