//! Value helpers shared by the evaluator and the functions: EMQX-style
//! number handling, `str()` conversion, comparison.

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// An integer or a float, as Erlang numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    I(i64),
    F(f64),
}

impl Num {
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }
}

pub(crate) fn num_of(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => Some(if let Some(i) = n.as_i64() {
            Num::I(i)
        } else {
            Num::F(n.as_f64().unwrap_or(f64::NAN))
        }),
        _ => None,
    }
}

pub(crate) fn num_value(n: Num) -> Result<Value, String> {
    match n {
        Num::I(i) => Ok(Value::from(i)),
        Num::F(f) => float_value(f),
    }
}

pub(crate) fn float_value(f: f64) -> Result<Value, String> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| "result is not a finite number".to_owned())
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "undefined",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "map",
    }
}

/// Float formatting of EMQX `str/1` (`float_to_binary(F, [{decimals, 10},
/// compact])`).
pub(crate) fn float_str(f: f64) -> String {
    let mut s = format!("{f:.10}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.push('0');
        }
    }
    if s == "-0.0" {
        s = "0.0".into();
    }
    s
}

/// EMQX `str/1`.
pub(crate) fn to_str(v: &Value) -> String {
    match v {
        Value::Null => "undefined".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match num_of(v) {
            Some(Num::F(f)) => float_str(f),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses a number from a string (integer first, then float).
pub(crate) fn parse_num(s: &str) -> Option<Num> {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(Num::I(i));
    }
    match t.parse::<f64>() {
        Ok(f) if f.is_finite() && !t.eq_ignore_ascii_case("inf") => Some(Num::F(f)),
        _ => None,
    }
}

fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
        _ => a.as_f64().partial_cmp(&b.as_f64()),
    }
}

/// Erlang term order rank: number < atom (bool) < map < list < binary.
fn rank(v: &Value) -> u8 {
    match v {
        Value::Number(_) => 0,
        Value::Null | Value::Bool(_) => 1,
        Value::Object(_) => 2,
        Value::Array(_) => 3,
        Value::String(_) => 4,
    }
}

/// Erlang-like ordering of two values (`==` semantics for numbers).
pub(crate) fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => num_cmp(num_of(a)?, num_of(b)?),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y.iter()) {
                match order(p, q)? {
                    Ordering::Equal => continue,
                    o => return Some(o),
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return Some(x.len().cmp(&y.len()));
            }
            for ((k1, v1), (k2, v2)) in x.iter().zip(y.iter()) {
                match k1.cmp(k2) {
                    Ordering::Equal => {}
                    o => return Some(o),
                }
                match order(v1, v2)? {
                    Ordering::Equal => {}
                    o => return Some(o),
                }
            }
            Some(Ordering::Equal)
        }
        _ => Some(rank(a).cmp(&rank(b))),
    }
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `=~`: topic matches filter.
    TopicMatch,
}

/// EMQX `compare/3`: `undefined` only equals `undefined`; numbers against
/// strings convert the string to a number; booleans against strings
/// compare as strings.
pub(crate) fn compare(op: CmpOp, l: &Value, r: &Value) -> Result<bool, String> {
    if op == CmpOp::TopicMatch {
        return match (l, r) {
            (Value::String(t), Value::String(f)) => Ok(crate::topic::topic_matches(f, t)),
            (Value::Null, _) | (_, Value::Null) => Ok(false),
            _ => Err(format!(
                "=~ expects a topic and a topic filter (strings), got {} and {}",
                type_name(l),
                type_name(r)
            )),
        };
    }
    let conv = |s: &str| -> Result<Value, String> {
        parse_num(s)
            .ok_or_else(|| format!("cannot compare a number with non-numeric string {s:?}"))
            .and_then(num_value)
    };
    let (lc, rc);
    let (l, r) = match (l, r) {
        (Value::Null, Value::Null) => (l, r),
        (Value::Null, _) | (_, Value::Null) => return Ok(false),
        (Value::Number(_), Value::String(s)) => {
            rc = conv(s)?;
            (l, &rc)
        }
        (Value::String(s), Value::Number(_)) => {
            lc = conv(s)?;
            (&lc, r)
        }
        (Value::Bool(b), Value::String(_)) => {
            lc = Value::String(b.to_string());
            (&lc, r)
        }
        (Value::String(_), Value::Bool(b)) => {
            rc = Value::String(b.to_string());
            (l, &rc)
        }
        _ => (l, r),
    };
    let o = order(l, r);
    Ok(match op {
        CmpOp::Eq => o == Some(Ordering::Equal),
        CmpOp::Ne => o != Some(Ordering::Equal),
        CmpOp::Lt => o == Some(Ordering::Less),
        CmpOp::Le => matches!(o, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => o == Some(Ordering::Greater),
        CmpOp::Ge => matches!(o, Some(Ordering::Greater | Ordering::Equal)),
        CmpOp::TopicMatch => false,
    })
}

/// Exact (Erlang `=:=`) equality used by `IN`, `contains` and `CASE x
/// WHEN`: `1` and `1.0` differ.
pub(crate) fn exact_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => match (num_of(a), num_of(b)) {
            (Some(Num::I(p)), Some(Num::I(q))) => p == q,
            (Some(Num::F(p)), Some(Num::F(q))) => p == q,
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| exact_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| exact_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn str_of_floats() {
        assert_eq!(float_str(1.5), "1.5");
        assert_eq!(float_str(2.0), "2.0");
        assert_eq!(float_str(0.1 + 0.2), "0.3");
    }

    #[test]
    fn comparisons() {
        assert_eq!(compare(CmpOp::Eq, &json!(1), &json!(1.0)), Ok(true));
        assert_eq!(compare(CmpOp::Gt, &json!(31), &json!("30")), Ok(true));
        assert_eq!(compare(CmpOp::Eq, &json!(true), &json!("true")), Ok(true));
        assert_eq!(compare(CmpOp::Eq, &json!(null), &json!(null)), Ok(true));
        assert_eq!(compare(CmpOp::Ne, &json!(null), &json!(1)), Ok(false));
        assert!(compare(CmpOp::Gt, &json!(1), &json!("x")).is_err());
        assert!(!exact_eq(&json!(1), &json!(1.0)));
        assert!(exact_eq(&json!([1, "a"]), &json!([1, "a"])));
    }
}
