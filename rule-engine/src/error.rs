//! Error types: load-time ([`RuleError`]) and per-message ([`EvalError`]).

use std::fmt;

/// A rule failed to load: syntax error, unknown field, unknown function,
/// wrong arity, invalid topic filter or invalid literal regex.
///
/// The `Display` form names the rule, the position and what was expected:
/// `rule r1: line 1, column 8: unknown field `foo` ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Id of the rule that failed to load.
    pub rule_id: String,
    /// 1-based line of the offending token (0 when unknown).
    pub line: u64,
    /// 1-based column of the offending token (0 when unknown).
    pub column: u64,
    /// What went wrong / what was expected.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {}: line {}, column {}: {}",
            self.rule_id, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for RuleError {}

/// The clause in which a runtime error happened (mirrors EMQX's
/// `SELECT_clause_exception`, `WHERE_clause_exception`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clause {
    /// `SELECT` columns.
    Select,
    /// `WHERE` condition.
    Where,
    /// `FOREACH` collection expression.
    Foreach,
    /// `DO` columns.
    Do,
    /// `INCASE` condition.
    Incase,
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Clause::Select => "SELECT",
            Clause::Where => "WHERE",
            Clause::Foreach => "FOREACH",
            Clause::Do => "DO",
            Clause::Incase => "INCASE",
        })
    }
}

/// A rule failed on one message (type error, bad payload JSON, division by
/// zero, ...). The broker counts it as `failed`; it never panics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// Id of the rule.
    pub rule_id: String,
    /// Clause being evaluated.
    pub clause: Clause,
    /// Description of the failure.
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {}: {} clause: {}",
            self.rule_id, self.clause, self.message
        )
    }
}

impl std::error::Error for EvalError {}
