//! Argument access for the functions: each helper names the function and
//! the argument when the type is wrong, so a rule's runtime error reads
//! `lower: argument 1 must be text, got binary data that is not UTF-8`.

use std::borrow::Cow;

use crate::value::{type_name, Map, Num, Value};

/// `fname: argument N must be WANT, got TYPE`.
pub(super) fn wrong_type(fname: &str, i: usize, want: &str, got: &Value) -> String {
    format!(
        "{fname}: argument {} must be {want}, got {}",
        i + 1,
        type_name(got)
    )
}

fn arg<'v>(a: &'v [Value], i: usize, fname: &str) -> Result<&'v Value, String> {
    a.get(i)
        .ok_or_else(|| format!("{fname}: missing argument {}", i + 1))
}

/// A text argument: a string, or a binary that is valid UTF-8.
pub(super) fn text<'v>(a: &'v [Value], i: usize, fname: &str) -> Result<&'v str, String> {
    let v = arg(a, i, fname)?;
    v.as_str().ok_or_else(|| match v {
        Value::Bytes(_) => wrong_type(fname, i, "text (UTF-8)", v),
        _ => wrong_type(fname, i, "a string", v),
    })
}

/// A text argument, or `default` when the call has fewer arguments.
pub(super) fn text_or<'v>(
    a: &'v [Value],
    i: usize,
    fname: &str,
    default: &'v str,
) -> Result<&'v str, String> {
    if a.len() > i {
        text(a, i, fname)
    } else {
        Ok(default)
    }
}

/// A binary argument (text or bytes), as bytes.
pub(super) fn binary<'v>(a: &'v [Value], i: usize, fname: &str) -> Result<&'v [u8], String> {
    let v = arg(a, i, fname)?;
    v.as_bin()
        .ok_or_else(|| wrong_type(fname, i, "a binary or string", v))
}

/// A number argument.
pub(super) fn number(a: &[Value], i: usize, fname: &str) -> Result<Num, String> {
    let v = arg(a, i, fname)?;
    v.num().ok_or_else(|| wrong_type(fname, i, "a number", v))
}

/// An integer argument.
pub(super) fn integer(a: &[Value], i: usize, fname: &str) -> Result<i64, String> {
    let v = arg(a, i, fname)?;
    v.as_i64()
        .ok_or_else(|| wrong_type(fname, i, "an integer", v))
}

/// A list argument.
pub(super) fn array<'v>(a: &'v [Value], i: usize, fname: &str) -> Result<&'v [Value], String> {
    let v = arg(a, i, fname)?;
    v.as_array()
        .ok_or_else(|| wrong_type(fname, i, "an array", v))
}

/// A map argument; a binary holding a JSON object is decoded (EMQX `map/1`).
pub(super) fn map<'v>(a: &'v [Value], i: usize, fname: &str) -> Result<Cow<'v, Map>, String> {
    let v = arg(a, i, fname)?;
    match v {
        Value::Map(m) => Ok(Cow::Borrowed(m)),
        Value::Str(_) | Value::Bytes(_) => match v.as_bin().map(Value::from_json) {
            Some(Ok(Value::Map(m))) => Ok(Cow::Owned(m)),
            _ => Err(wrong_type(fname, i, "a map", v)),
        },
        other => Err(wrong_type(fname, i, "a map", other)),
    }
}

/// A non-negative count as `usize` (0 for negatives).
pub(super) fn index(i: i64) -> usize {
    usize::try_from(i).unwrap_or(0)
}
