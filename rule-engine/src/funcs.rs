//! The SQL function catalogue (EMQX names and semantics). See FUNCTIONS.md.
//!
//! Every function is resolved at load time to a [`FuncDef`] (name, arity
//! range, implementation); calls never panic, they return `Err(message)`.

use std::fmt::Write as _;

use base64::Engine as _;
use md5::Digest as _;
use regex::Regex;
use serde_json::{Map, Value};

use crate::input::Input;
use crate::time;
use crate::value::{float_str, float_value, num_of, parse_num, to_str, type_name, Num};

/// Runtime context of a call.
pub(crate) struct Cx<'r, 'a> {
    pub input: &'r Input<'a>,
    /// Regex compiled at load time when the pattern argument is a literal.
    pub regex: Option<&'r Regex>,
}

type R = Result<Value, String>;
type Func = fn(&[Value], &Cx<'_, '_>) -> R;

/// A catalogue entry.
pub(crate) struct FuncDef {
    pub name: &'static str,
    pub min: usize,
    pub max: usize,
    pub f: Func,
    /// Index of a regex pattern argument (compiled at load when literal).
    pub regex_arg: Option<usize>,
}

impl std::fmt::Debug for FuncDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}..{}", self.name, self.min, self.max)
    }
}

const MANY: usize = usize::MAX;

macro_rules! defs {
    ($( $name:literal, $min:expr, $max:expr, $f:expr $(, re $re:expr)? ; )*) => {
        static FUNCS: &[FuncDef] = &[
            $( FuncDef { name: $name, min: $min, max: $max, f: $f, regex_arg: defs!(@re $($re)?) }, )*
        ];
    };
    (@re) => { None };
    (@re $re:expr) => { Some($re) };
}

defs! {
    // message accessors
    "topic", 0, 1, f_topic;
    "clientid", 0, 0, |_, c| Ok(c.input.field("clientid"));
    "username", 0, 0, |_, c| Ok(c.input.field("username"));
    "peerhost", 0, 0, |_, c| Ok(c.input.field("peerhost"));
    "clientip", 0, 0, |_, c| Ok(c.input.field("peerhost"));
    "qos", 0, 0, |_, c| Ok(c.input.field("qos"));
    "msgid", 0, 0, |_, c| Ok(c.input.field("id"));
    "flags", 0, 0, |_, c| Ok(match c.input.field("flags") { Value::Null => Value::Object(Map::new()), v => v });
    "flag", 1, 1, f_flag;
    "payload", 0, 1, f_payload;
    // math
    "abs", 1, 1, f_abs;
    "ceil", 1, 1, |a, _| round_with(a, "ceil", f64::ceil);
    "floor", 1, 1, |a, _| round_with(a, "floor", f64::floor);
    "round", 1, 1, |a, _| round_with(a, "round", f64::round);
    "sqrt", 1, 1, |a, _| math1(a, "sqrt", |x| (x >= 0.0).then(|| x.sqrt()));
    "exp", 1, 1, |a, _| math1(a, "exp", |x| Some(x.exp()));
    "log", 1, 1, |a, _| math1(a, "log", |x| (x > 0.0).then(|| x.ln()));
    "log10", 1, 1, |a, _| math1(a, "log10", |x| (x > 0.0).then(|| x.log10()));
    "log2", 1, 1, |a, _| math1(a, "log2", |x| (x > 0.0).then(|| x.log2()));
    "sin", 1, 1, |a, _| math1(a, "sin", |x| Some(x.sin()));
    "cos", 1, 1, |a, _| math1(a, "cos", |x| Some(x.cos()));
    "tan", 1, 1, |a, _| math1(a, "tan", |x| Some(x.tan()));
    "asin", 1, 1, |a, _| math1(a, "asin", |x| (-1.0..=1.0).contains(&x).then(|| x.asin()));
    "acos", 1, 1, |a, _| math1(a, "acos", |x| (-1.0..=1.0).contains(&x).then(|| x.acos()));
    "atan", 1, 1, |a, _| math1(a, "atan", |x| Some(x.atan()));
    "sinh", 1, 1, |a, _| math1(a, "sinh", |x| Some(x.sinh()));
    "cosh", 1, 1, |a, _| math1(a, "cosh", |x| Some(x.cosh()));
    "tanh", 1, 1, |a, _| math1(a, "tanh", |x| Some(x.tanh()));
    "asinh", 1, 1, |a, _| math1(a, "asinh", |x| Some(x.asinh()));
    "acosh", 1, 1, |a, _| math1(a, "acosh", |x| (x >= 1.0).then(|| x.acosh()));
    "atanh", 1, 1, |a, _| math1(a, "atanh", |x| (x > -1.0 && x < 1.0).then(|| x.atanh()));
    "power", 2, 2, |a, _| float_value(num(a, 0, "power")?.as_f64().powf(num(a, 1, "power")?.as_f64()));
    "fmod", 2, 2, f_fmod;
    "random", 0, 0, |_, _| float_value(fastrand::f64());
    // bits
    "bitnot", 1, 1, |a, _| Ok(Value::from(!int(a, 0, "bitnot")?));
    "bitand", 2, 2, |a, _| Ok(Value::from(int(a, 0, "bitand")? & int(a, 1, "bitand")?));
    "bitor", 2, 2, |a, _| Ok(Value::from(int(a, 0, "bitor")? | int(a, 1, "bitor")?));
    "bitxor", 2, 2, |a, _| Ok(Value::from(int(a, 0, "bitxor")? ^ int(a, 1, "bitxor")?));
    "bitsl", 2, 2, |a, _| shift(a, "bitsl", true);
    "bitsr", 2, 2, |a, _| shift(a, "bitsr", false);
    "bitsize", 1, 1, |a, _| Ok(Value::from(s(a, 0, "bitsize")?.len() as u64 * 8));
    // conversions
    "str", 1, 1, |a, _| Ok(Value::String(to_str(&a[0])));
    "str_utf8", 1, 1, |a, _| Ok(Value::String(to_str(&a[0])));
    "int", 1, 1, f_int;
    "float", 1, 2, f_float;
    "float2str", 2, 2, f_float2str;
    "bool", 1, 1, f_bool;
    "map", 1, 1, f_map;
    "bin2hexstr", 1, 1, |a, _| Ok(Value::String(hex_upper(s(a, 0, "bin2hexstr")?.as_bytes())));
    "hexstr2bin", 1, 1, f_hexstr2bin;
    // type checks
    "is_null", 1, 1, |a, _| Ok(Value::Bool(a[0].is_null()));
    "is_not_null", 1, 1, |a, _| Ok(Value::Bool(!a[0].is_null()));
    "is_null_var", 1, 1, |a, _| Ok(Value::Bool(a[0].is_null()));
    "is_not_null_var", 1, 1, |a, _| Ok(Value::Bool(!a[0].is_null()));
    "is_str", 1, 1, |a, _| Ok(Value::Bool(a[0].is_string()));
    "is_bool", 1, 1, |a, _| Ok(Value::Bool(a[0].is_boolean()));
    "is_int", 1, 1, |a, _| Ok(Value::Bool(matches!(num_of(&a[0]), Some(Num::I(_))) || a[0].is_u64()));
    "is_float", 1, 1, |a, _| Ok(Value::Bool(a[0].is_f64()));
    "is_num", 1, 1, |a, _| Ok(Value::Bool(a[0].is_number()));
    "is_map", 1, 1, |a, _| Ok(Value::Bool(a[0].is_object()));
    "is_array", 1, 1, |a, _| Ok(Value::Bool(a[0].is_array()));
    // strings
    "lower", 1, 1, |a, _| Ok(Value::String(s(a, 0, "lower")?.to_lowercase()));
    "upper", 1, 1, |a, _| Ok(Value::String(s(a, 0, "upper")?.to_uppercase()));
    "trim", 1, 1, |a, _| Ok(Value::String(s(a, 0, "trim")?.trim().to_owned()));
    "ltrim", 1, 1, |a, _| Ok(Value::String(s(a, 0, "ltrim")?.trim_start().to_owned()));
    "rtrim", 1, 1, |a, _| Ok(Value::String(s(a, 0, "rtrim")?.trim_end().to_owned()));
    "reverse", 1, 1, |a, _| Ok(Value::String(s(a, 0, "reverse")?.chars().rev().collect()));
    "strlen", 1, 1, |a, _| Ok(Value::from(s(a, 0, "strlen")?.chars().count() as u64));
    "substr", 2, 3, |a, _| f_substr(a, "substr", false);
    "substring", 2, 3, |a, _| f_substr(a, "substring", true);
    "split", 2, 3, f_split;
    "tokens", 2, 3, f_tokens;
    "concat", 1, MANY, f_concat;
    "sprintf", 1, MANY, f_sprintf;
    "pad", 2, 4, f_pad;
    "replace", 3, 4, f_replace;
    "regex_match", 2, 2, f_regex_match, re 1;
    "regex_replace", 3, 3, f_regex_replace, re 1;
    "regex_extract", 2, 2, f_regex_extract, re 1;
    "ascii", 1, 1, f_ascii;
    "find", 2, 3, f_find;
    "join_to_string", 1, 2, f_join;
    // maps
    "map_new", 0, 0, |_, _| Ok(Value::Object(Map::new()));
    "map_get", 2, 3, f_map_get;
    "map_put", 3, 3, f_map_put;
    "mget", 2, 3, f_mget;
    "mput", 3, 3, f_mput;
    "map_keys", 1, 1, |a, _| Ok(Value::Array(m(a, 0, "map_keys")?.into_iter().map(|(k, _)| Value::String(k)).collect()));
    "map_values", 1, 1, |a, _| Ok(Value::Array(m(a, 0, "map_values")?.into_iter().map(|(_, v)| v).collect()));
    "map_to_entries", 1, 1, f_map_to_entries;
    // arrays
    "nth", 2, 2, f_nth;
    "length", 1, 1, f_length;
    "sublist", 2, 3, f_sublist;
    "first", 1, 1, |a, _| l(a, 0, "first")?.first().cloned().ok_or_else(|| "first: empty array".to_owned());
    "last", 1, 1, |a, _| l(a, 0, "last")?.last().cloned().ok_or_else(|| "last: empty array".to_owned());
    "contains", 2, 2, |a, _| Ok(Value::Bool(l(a, 1, "contains")?.iter().any(|v| crate::value::exact_eq(v, &a[0]))));
    // hashing
    "md5", 1, 1, |a, _| Ok(Value::String(hex_lower(&md5::Md5::digest(s(a, 0, "md5")?.as_bytes()))));
    "sha", 1, 1, |a, _| Ok(Value::String(hex_lower(&sha1::Sha1::digest(s(a, 0, "sha")?.as_bytes()))));
    "sha256", 1, 1, |a, _| Ok(Value::String(hex_lower(&sha2::Sha256::digest(s(a, 0, "sha256")?.as_bytes()))));
    // encoding
    "base64_encode", 1, 1, |a, _| Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(s(a, 0, "base64_encode")?)));
    "base64_decode", 1, 1, f_base64_decode;
    "json_encode", 1, 1, |a, _| serde_json::to_string(&a[0]).map(Value::String).map_err(|e| format!("json_encode: {e}"));
    "json_decode", 1, 1, |a, _| serde_json::from_str(s(a, 0, "json_decode")?).map_err(|e| format!("json_decode: {e}"));
    // time
    "now_timestamp", 0, 1, f_now_timestamp;
    "now_rfc3339", 0, 1, f_now_rfc3339;
    "unix_ts_to_rfc3339", 1, 2, f_unix_ts_to_rfc3339;
    "rfc3339_to_unix_ts", 1, 2, f_rfc3339_to_unix_ts;
    "format_date", 4, 4, f_format_date;
    "date_to_unix_ts", 3, 4, f_date_to_unix_ts;
    "timezone_to_second", 1, 1, |a, _| time::parse_offset(s(a, 0, "timezone_to_second")?).map(Value::from);
    "timezone_to_offset_seconds", 1, 1, |a, _| time::parse_offset(s(a, 0, "timezone_to_offset_seconds")?).map(Value::from);
    // misc
    "uuid_v4", 0, 0, |_, _| Ok(Value::String(uuid_v4(true)));
    "uuid_v4_no_hyphen", 0, 0, |_, _| Ok(Value::String(uuid_v4(false)));
    "coalesce", 1, MANY, f_coalesce;
}

/// Looks a function up by (case-insensitive) name.
pub(crate) fn lookup(name: &str) -> Option<&'static FuncDef> {
    let lower = name.to_ascii_lowercase();
    FUNCS.iter().find(|f| f.name == lower)
}

/// All function names (for docs/tests).
pub fn function_names() -> impl Iterator<Item = &'static str> {
    FUNCS.iter().map(|f| f.name)
}

/// Compiles a regex pattern with a size limit.
pub(crate) fn compile_regex(p: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(p)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex {p:?}: {e}"))
}

// ---------------------------------------------------------------- helpers

fn bad(fname: &str, i: usize, want: &str, got: &Value) -> String {
    format!(
        "{fname}: argument {} must be {want}, got {}",
        i + 1,
        type_name(got)
    )
}

fn s<'v>(a: &'v [Value], i: usize, fname: &str) -> Result<&'v str, String> {
    match a.get(i) {
        Some(Value::String(x)) => Ok(x),
        Some(v) => Err(bad(fname, i, "a string", v)),
        None => Err(format!("{fname}: missing argument {}", i + 1)),
    }
}

fn num(a: &[Value], i: usize, fname: &str) -> Result<Num, String> {
    let v = a.get(i).unwrap_or(&Value::Null);
    num_of(v).ok_or_else(|| bad(fname, i, "a number", v))
}

fn int(a: &[Value], i: usize, fname: &str) -> Result<i64, String> {
    match num(a, i, fname)? {
        Num::I(x) => Ok(x),
        Num::F(_) => Err(bad(fname, i, "an integer", &a[i])),
    }
}

fn l<'v>(a: &'v [Value], i: usize, fname: &str) -> Result<&'v Vec<Value>, String> {
    match a.get(i) {
        Some(Value::Array(x)) => Ok(x),
        Some(v) => Err(bad(fname, i, "an array", v)),
        None => Err(format!("{fname}: missing argument {}", i + 1)),
    }
}

fn m(a: &[Value], i: usize, fname: &str) -> Result<Map<String, Value>, String> {
    match a.get(i) {
        Some(Value::Object(x)) => Ok(x.clone()),
        Some(v @ Value::String(t)) => match serde_json::from_str::<Value>(t) {
            Ok(Value::Object(x)) => Ok(x),
            _ => Err(bad(fname, i, "a map", v)),
        },
        Some(v) => Err(bad(fname, i, "a map", v)),
        None => Err(format!("{fname}: missing argument {}", i + 1)),
    }
}

fn hex_lower(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(out, "{x:02x}");
    }
    out
}

fn hex_upper(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(out, "{x:02X}");
    }
    out
}

fn bytes_to_value(b: Vec<u8>) -> Value {
    match String::from_utf8(b) {
        Ok(s) => Value::String(s),
        Err(e) => Value::String(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn ix(i: i64) -> usize {
    usize::try_from(i).unwrap_or(0)
}

// ------------------------------------------------------------- message fns

fn f_topic(a: &[Value], c: &Cx<'_, '_>) -> R {
    let topic = c.input.field("topic");
    if a.is_empty() {
        return Ok(topic);
    }
    let n = int(a, 0, "topic")?;
    let Value::String(t) = topic else {
        return Ok(Value::Null);
    };
    if n < 1 {
        return Err(format!("topic: level must be >= 1, got {n}"));
    }
    t.split('/')
        .nth(ix(n - 1))
        .map(|x| Value::String(x.to_owned()))
        .ok_or_else(|| format!("topic: topic {t:?} has no level {n}"))
}

fn f_flag(a: &[Value], c: &Cx<'_, '_>) -> R {
    let name = s(a, 0, "flag")?;
    Ok(match c.input.field("flags") {
        Value::Object(m) => m.get(name).cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    })
}

fn f_payload(a: &[Value], c: &Cx<'_, '_>) -> R {
    if a.is_empty() {
        return Ok(c.input.field("payload"));
    }
    let path = s(a, 0, "payload")?;
    let json = c.input.payload_json()?;
    Ok(map_path_get(json, path).cloned().unwrap_or(Value::Null))
}

// -------------------------------------------------------------------- math

fn f_abs(a: &[Value], _: &Cx<'_, '_>) -> R {
    match num(a, 0, "abs")? {
        Num::I(i) => i
            .checked_abs()
            .map(Value::from)
            .ok_or_else(|| "abs: integer overflow".to_owned()),
        Num::F(f) => float_value(f.abs()),
    }
}

fn round_with(a: &[Value], fname: &str, f: fn(f64) -> f64) -> R {
    match num(a, 0, fname)? {
        Num::I(i) => Ok(Value::from(i)),
        Num::F(x) => {
            let r = f(x);
            if r.is_finite() && r.abs() < 9.2e18 {
                Ok(Value::from(r as i64))
            } else {
                Err(format!("{fname}: result out of integer range"))
            }
        }
    }
}

fn math1(a: &[Value], fname: &str, f: fn(f64) -> Option<f64>) -> R {
    let x = num(a, 0, fname)?.as_f64();
    match f(x) {
        Some(r) => float_value(r).map_err(|e| format!("{fname}: {e}")),
        None => Err(format!("{fname}: argument {} out of domain", float_str(x))),
    }
}

fn f_fmod(a: &[Value], _: &Cx<'_, '_>) -> R {
    let x = num(a, 0, "fmod")?.as_f64();
    let y = num(a, 1, "fmod")?.as_f64();
    if y == 0.0 {
        return Err("fmod: division by zero".into());
    }
    float_value(x % y)
}

fn shift(a: &[Value], fname: &str, left: bool) -> R {
    let x = int(a, 0, fname)?;
    let n = int(a, 1, fname)?;
    let left = if n < 0 { !left } else { left };
    let n = n.unsigned_abs();
    let r = if left {
        if n >= 64 || (x != 0 && (x.unsigned_abs().leading_zeros() as u64) <= n) {
            return Err(format!("{fname}: integer overflow"));
        }
        x << n
    } else if n >= 64 {
        if x < 0 {
            -1
        } else {
            0
        }
    } else {
        x >> n
    };
    Ok(Value::from(r))
}

// ------------------------------------------------------------- conversions

fn f_int(a: &[Value], _: &Cx<'_, '_>) -> R {
    match &a[0] {
        Value::Bool(b) => Ok(Value::from(i64::from(*b))),
        Value::String(t) => match parse_num(t) {
            Some(Num::I(i)) => Ok(Value::from(i)),
            Some(Num::F(f)) => round_with(&[float_value(f)?], "int", f64::floor),
            None => Err(format!("int: cannot convert {t:?} to an integer")),
        },
        v @ Value::Number(_) => round_with(std::slice::from_ref(v), "int", f64::floor),
        v => Err(bad("int", 0, "a number, string or boolean", v)),
    }
}

fn f_float(a: &[Value], _: &Cx<'_, '_>) -> R {
    let f = match &a[0] {
        Value::Number(_) => num(a, 0, "float")?.as_f64(),
        Value::String(t) => parse_num(t)
            .map(Num::as_f64)
            .ok_or_else(|| format!("float: cannot convert {t:?} to a float"))?,
        v => return Err(bad("float", 0, "a number or string", v)),
    };
    if a.len() == 2 {
        let d = int(a, 1, "float")?;
        if !(0..=15).contains(&d) {
            return Err("float: decimals must be between 0 and 15".into());
        }
        let p = 10f64.powi(d as i32);
        return float_value((f * p).round() / p);
    }
    float_value(f)
}

fn f_float2str(a: &[Value], _: &Cx<'_, '_>) -> R {
    let f = num(a, 0, "float2str")?.as_f64();
    let d = int(a, 1, "float2str")?;
    if !(0..=253).contains(&d) {
        return Err("float2str: precision must be between 0 and 253".into());
    }
    let mut out = format!("{f:.prec$}", prec = ix(d));
    if out.contains('.') {
        while out.ends_with('0') {
            out.pop();
        }
        if out.ends_with('.') {
            out.push('0');
        }
    }
    Ok(Value::String(out))
}

fn f_bool(a: &[Value], _: &Cx<'_, '_>) -> R {
    match &a[0] {
        Value::Bool(b) => Ok(Value::Bool(*b)),
        Value::String(t) if t == "true" => Ok(Value::Bool(true)),
        Value::String(t) if t == "false" => Ok(Value::Bool(false)),
        v @ Value::Number(_) => match num_of(v) {
            Some(Num::I(1)) => Ok(Value::Bool(true)),
            Some(Num::I(0)) => Ok(Value::Bool(false)),
            _ => Err(format!("bool: cannot convert {v} to a boolean")),
        },
        v => Err(format!("bool: cannot convert {v} to a boolean")),
    }
}

fn f_map(a: &[Value], _: &Cx<'_, '_>) -> R {
    match &a[0] {
        Value::Object(_) => Ok(a[0].clone()),
        Value::String(t) => match serde_json::from_str::<Value>(t) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(format!("map: cannot convert {t:?} to a map")),
        },
        v => Err(bad("map", 0, "a map or JSON string", v)),
    }
}

fn f_hexstr2bin(a: &[Value], _: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "hexstr2bin")?;
    if t.len() % 2 != 0 {
        return Err("hexstr2bin: odd number of hex digits".into());
    }
    let mut out = Vec::with_capacity(t.len() / 2);
    for i in (0..t.len()).step_by(2) {
        let pair = t.get(i..i + 2).ok_or("hexstr2bin: invalid hex string")?;
        out.push(u8::from_str_radix(pair, 16).map_err(|_| "hexstr2bin: invalid hex string")?);
    }
    Ok(bytes_to_value(out))
}

// ----------------------------------------------------------------- strings

fn char_slice(t: &str, start: usize, len: Option<usize>) -> String {
    let it = t.chars().skip(start);
    match len {
        Some(n) => it.take(n).collect(),
        None => it.collect(),
    }
}

fn f_substr(a: &[Value], fname: &str, allow_negative: bool) -> R {
    let t = s(a, 0, fname)?;
    let mut start = int(a, 1, fname)?;
    if start < 0 {
        if !allow_negative {
            return Err(format!("{fname}: start must be >= 0"));
        }
        start = (t.chars().count() as i64 + start).max(0);
    }
    let len = if a.len() == 3 {
        let n = int(a, 2, fname)?;
        if n < 0 {
            return Err(format!("{fname}: length must be >= 0"));
        }
        Some(ix(n))
    } else {
        None
    };
    Ok(Value::String(char_slice(t, ix(start), len)))
}

fn strs(v: Vec<&str>, keep_empty: bool) -> Value {
    Value::Array(
        v.into_iter()
            .filter(|p| keep_empty || !p.is_empty())
            .map(|p| Value::String(p.to_owned()))
            .collect(),
    )
}

fn f_split(a: &[Value], _: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "split")?;
    let p = s(a, 1, "split")?;
    let mode = if a.len() == 3 {
        s(a, 2, "split")?
    } else {
        "all"
    };
    if p.is_empty() {
        return Ok(strs(vec![t], false));
    }
    let (parts, keep): (Vec<&str>, bool) = match mode {
        "all" => (t.split(p).collect(), false),
        "notrim" => (t.split(p).collect(), true),
        "leading" => (t.splitn(2, p).collect(), false),
        "leading_notrim" => (t.splitn(2, p).collect(), true),
        "trailing" | "trailing_notrim" => {
            let v = match t.rfind(p) {
                Some(i) => vec![&t[..i], &t[i + p.len()..]],
                None => vec![t],
            };
            (v, mode == "trailing_notrim")
        }
        other => return Err(format!("split: invalid option {other:?}")),
    };
    Ok(strs(parts, keep))
}

fn f_tokens(a: &[Value], _: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "tokens")?;
    let mut seps: Vec<char> = s(a, 1, "tokens")?.chars().collect();
    if a.len() == 3 {
        if s(a, 2, "tokens")? != "nocrlf" {
            return Err("tokens: third argument must be 'nocrlf'".into());
        }
        seps.extend(['\r', '\n']);
    }
    Ok(strs(t.split(|c| seps.contains(&c)).collect(), false))
}

fn f_concat(a: &[Value], _: &Cx<'_, '_>) -> R {
    if let [Value::Array(items)] = a {
        return Ok(Value::String(items.iter().map(to_str).collect()));
    }
    Ok(Value::String(a.iter().map(to_str).collect()))
}

fn erl_term(v: &Value) -> String {
    match v {
        Value::String(t) => format!("<<\"{t}\">>"),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(erl_term).collect::<Vec<_>>().join(",")
        ),
        Value::Object(m) => format!(
            "#{{{}}}",
            m.iter()
                .map(|(k, v)| format!("<<\"{k}\">> => {}", erl_term(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => to_str(other),
    }
}

/// Erlang `io_lib:format` subset: `~s ~p ~w ~f ~e ~g ~b ~B ~c ~i ~n ~~`
/// with optional field width and precision.
fn f_sprintf(a: &[Value], _: &Cx<'_, '_>) -> R {
    let fmt = s(a, 0, "sprintf")?;
    let mut args = a[1..].iter();
    let mut next = || {
        args.next()
            .ok_or_else(|| "sprintf: not enough arguments".to_owned())
    };
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        let mut width = String::new();
        while let Some(d) = chars
            .peek()
            .copied()
            .filter(|d| d.is_ascii_digit() || *d == '-')
        {
            width.push(d);
            chars.next();
        }
        let mut prec = String::new();
        if chars.peek() == Some(&'.') {
            chars.next();
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                prec.push(d);
                chars.next();
            }
        }
        let width: Option<i64> = width.parse().ok();
        let prec: Option<usize> = prec.parse().ok().filter(|p| *p <= 64);
        let ctl = chars.next().ok_or("sprintf: format ends with '~'")?;
        let piece = match ctl {
            '~' => "~".to_owned(),
            'n' => "\n".to_owned(),
            's' => {
                let t = to_str(next()?);
                match prec {
                    Some(p) => t.chars().take(p).collect(),
                    None => t,
                }
            }
            'p' | 'w' => erl_term(next()?),
            'i' => {
                next()?;
                String::new()
            }
            'c' => {
                let v = next()?;
                let code = num_of(v).and_then(|n| match n {
                    Num::I(i) => u32::try_from(i).ok().and_then(char::from_u32),
                    Num::F(_) => None,
                });
                code.ok_or_else(|| format!("sprintf: ~c needs a character code, got {v}"))?
                    .to_string()
            }
            'f' | 'e' | 'g' => {
                let v = next()?;
                let f =
                    num_of(v).ok_or_else(|| format!("sprintf: ~{ctl} needs a number, got {v}"))?;
                let p = prec.unwrap_or(6);
                match ctl {
                    'f' => format!("{:.p$}", f.as_f64()),
                    'e' => format!("{:.p$e}", f.as_f64()),
                    _ => float_str(f.as_f64()),
                }
            }
            'b' | 'B' | 'd' => {
                let v = next()?;
                let i = match num_of(v) {
                    Some(Num::I(i)) => i,
                    _ => return Err(format!("sprintf: ~{ctl} needs an integer, got {v}")),
                };
                let base = prec.unwrap_or(10);
                radix(i, base as u32, ctl == 'b')?
            }
            other => return Err(format!("sprintf: unsupported control sequence ~{other}")),
        };
        match width {
            Some(w) if w.unsigned_abs() as usize > piece.chars().count() => {
                let padn = w.unsigned_abs() as usize - piece.chars().count();
                if w < 0 {
                    out.push_str(&piece);
                    out.extend(std::iter::repeat_n(' ', padn));
                } else {
                    out.extend(std::iter::repeat_n(' ', padn));
                    out.push_str(&piece);
                }
            }
            _ => out.push_str(&piece),
        }
    }
    Ok(Value::String(out))
}

fn radix(i: i64, base: u32, lower: bool) -> Result<String, String> {
    if !(2..=36).contains(&base) {
        return Err("sprintf: base must be between 2 and 36".into());
    }
    if i == 0 {
        return Ok("0".into());
    }
    let mut n = i.unsigned_abs();
    let mut digits = Vec::new();
    while n > 0 {
        let d = (n % u64::from(base)) as u32;
        let c = char::from_digit(d, base).unwrap_or('?');
        digits.push(if lower { c } else { c.to_ascii_uppercase() });
        n /= u64::from(base);
    }
    if i < 0 {
        digits.push('-');
    }
    Ok(digits.into_iter().rev().collect())
}

fn f_pad(a: &[Value], _: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "pad")?;
    let len = int(a, 1, "pad")?;
    let dir = if a.len() >= 3 {
        s(a, 2, "pad")?
    } else {
        "trailing"
    };
    let ch = if a.len() == 4 { s(a, 3, "pad")? } else { " " };
    if len > 1_000_000 {
        return Err("pad: length too large".into());
    }
    let cur = t.chars().count() as i64;
    let n = ix(len - cur);
    let fill = |k: usize| ch.repeat(k);
    let out = match dir {
        "trailing" => format!("{t}{}", fill(n)),
        "leading" => format!("{}{t}", fill(n)),
        "both" => format!("{}{t}{}", fill(n / 2), fill(n - n / 2)),
        other => return Err(format!("pad: invalid direction {other:?}")),
    };
    Ok(Value::String(out))
}

fn f_replace(a: &[Value], _: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "replace")?;
    let p = s(a, 1, "replace")?;
    let r = s(a, 2, "replace")?;
    let mode = if a.len() == 4 {
        s(a, 3, "replace")?
    } else {
        "all"
    };
    if p.is_empty() {
        return Ok(Value::String(t.to_owned()));
    }
    let out = match mode {
        "all" => t.replace(p, r),
        "leading" => t.replacen(p, r, 1),
        "trailing" => match t.rfind(p) {
            Some(i) => format!("{}{r}{}", &t[..i], &t[i + p.len()..]),
            None => t.to_owned(),
        },
        other => return Err(format!("replace: invalid option {other:?}")),
    };
    Ok(Value::String(out))
}

fn with_regex<T>(
    a: &[Value],
    c: &Cx<'_, '_>,
    fname: &str,
    f: impl FnOnce(&Regex) -> T,
) -> Result<T, String> {
    match c.regex {
        Some(re) => Ok(f(re)),
        None => {
            let re = compile_regex(s(a, 1, fname)?)?;
            Ok(f(&re))
        }
    }
}

fn f_regex_match(a: &[Value], c: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "regex_match")?;
    with_regex(a, c, "regex_match", |re| Value::Bool(re.is_match(t)))
}

/// Converts an Erlang `re:replace` replacement (`&`, `\N`, `\g{N}`) to the
/// `regex` crate syntax.
fn erl_replacement(r: &str) -> String {
    let mut out = String::new();
    let mut chars = r.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '&' => out.push_str("${0}"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut n = String::new();
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        n.push(d);
                        chars.next();
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                Some('g') => {
                    chars.next();
                    let mut n = String::new();
                    let braced = chars.peek() == Some(&'{');
                    if braced {
                        chars.next();
                    }
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        n.push(d);
                        chars.next();
                    }
                    if braced && chars.peek() == Some(&'}') {
                        chars.next();
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                Some(other) => {
                    chars.next();
                    if other == '$' {
                        out.push_str("$$");
                    } else {
                        out.push(other);
                    }
                }
                None => out.push('\\'),
            },
            other => out.push(other),
        }
    }
    out
}

fn f_regex_replace(a: &[Value], c: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "regex_replace")?;
    let rep = erl_replacement(s(a, 2, "regex_replace")?);
    with_regex(a, c, "regex_replace", |re| {
        Value::String(re.replace_all(t, rep.as_str()).into_owned())
    })
}

fn f_regex_extract(a: &[Value], c: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "regex_extract")?;
    with_regex(a, c, "regex_extract", |re| match re.captures(t) {
        None => Value::Array(vec![]),
        Some(caps) if caps.len() == 1 => Value::Array(vec![Value::String(
            caps.get(0).map_or("", |m| m.as_str()).to_owned(),
        )]),
        Some(caps) => Value::Array(
            caps.iter()
                .skip(1)
                .map(|m| Value::String(m.map_or("", |m| m.as_str()).to_owned()))
                .collect(),
        ),
    })
}

fn f_ascii(a: &[Value], _: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "ascii")?;
    t.bytes()
        .next()
        .map(Value::from)
        .ok_or_else(|| "ascii: empty string".to_owned())
}

fn f_find(a: &[Value], _: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "find")?;
    let p = s(a, 1, "find")?;
    let dir = if a.len() == 3 {
        s(a, 2, "find")?
    } else {
        "leading"
    };
    let idx = match dir {
        "leading" => t.find(p),
        "trailing" => t.rfind(p),
        other => return Err(format!("find: invalid direction {other:?}")),
    };
    Ok(Value::String(
        idx.map_or(String::new(), |i| t[i..].to_owned()),
    ))
}

fn f_join(a: &[Value], _: &Cx<'_, '_>) -> R {
    let (sep, list) = if a.len() == 2 {
        (s(a, 0, "join_to_string")?, l(a, 1, "join_to_string")?)
    } else {
        (", ", l(a, 0, "join_to_string")?)
    };
    Ok(Value::String(
        list.iter().map(to_str).collect::<Vec<_>>().join(sep),
    ))
}

// -------------------------------------------------------------------- maps

fn map_path_get<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur.as_object()?.get(key)?;
    }
    Some(cur)
}

fn key_str(v: &Value, fname: &str) -> Result<String, String> {
    match v {
        Value::String(k) => Ok(k.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(to_str(v)),
        other => Err(bad(fname, 0, "a string key", other)),
    }
}

fn f_map_get(a: &[Value], _: &Cx<'_, '_>) -> R {
    let key = key_str(&a[0], "map_get")?;
    let default = a.get(2).cloned().unwrap_or(Value::Null);
    match &a[1] {
        Value::Null => Ok(default),
        _ => {
            let mm = Value::Object(m(a, 1, "map_get")?);
            Ok(map_path_get(&mm, &key).cloned().unwrap_or(default))
        }
    }
}

fn f_map_put(a: &[Value], _: &Cx<'_, '_>) -> R {
    let key = key_str(&a[0], "map_put")?;
    let mut target = match &a[2] {
        Value::Null => Value::Object(Map::new()),
        v @ Value::Object(_) => v.clone(),
        v => return Err(bad("map_put", 2, "a map", v)),
    };
    let path: Vec<String> = key.split('.').map(str::to_owned).collect();
    crate::eval::nested_put(&mut target, &path, a[1].clone());
    Ok(target)
}

fn f_mget(a: &[Value], _: &Cx<'_, '_>) -> R {
    let key = key_str(&a[0], "mget")?;
    let default = a.get(2).cloned().unwrap_or(Value::Null);
    match &a[1] {
        Value::Null => Ok(default),
        _ => Ok(m(a, 1, "mget")?.get(&key).cloned().unwrap_or(default)),
    }
}

fn f_mput(a: &[Value], _: &Cx<'_, '_>) -> R {
    let key = key_str(&a[0], "mput")?;
    let mut mm = match &a[2] {
        Value::Null => Map::new(),
        Value::Object(mm) => mm.clone(),
        v => return Err(bad("mput", 2, "a map", v)),
    };
    mm.insert(key, a[1].clone());
    Ok(Value::Object(mm))
}

fn f_map_to_entries(a: &[Value], _: &Cx<'_, '_>) -> R {
    Ok(Value::Array(
        m(a, 0, "map_to_entries")?
            .into_iter()
            .map(|(k, v)| {
                let mut e = Map::new();
                e.insert("key".into(), Value::String(k));
                e.insert("value".into(), v);
                Value::Object(e)
            })
            .collect(),
    ))
}

// ------------------------------------------------------------------ arrays

fn f_nth(a: &[Value], _: &Cx<'_, '_>) -> R {
    let n = int(a, 0, "nth")?;
    let list = l(a, 1, "nth")?;
    if n < 1 || ix(n) > list.len() {
        return Err(format!(
            "nth: index {n} out of range for an array of {}",
            list.len()
        ));
    }
    Ok(list[ix(n) - 1].clone())
}

fn f_length(a: &[Value], _: &Cx<'_, '_>) -> R {
    match &a[0] {
        Value::Array(x) => Ok(Value::from(x.len() as u64)),
        Value::Object(x) => Ok(Value::from(x.len() as u64)),
        v => Err(bad("length", 0, "an array", v)),
    }
}

fn f_sublist(a: &[Value], _: &Cx<'_, '_>) -> R {
    let (start, len, list) = if a.len() == 2 {
        (1, int(a, 0, "sublist")?, l(a, 1, "sublist")?)
    } else {
        (
            int(a, 0, "sublist")?,
            int(a, 1, "sublist")?,
            l(a, 2, "sublist")?,
        )
    };
    if start < 1 || len < 0 || ix(start) > list.len() + 1 {
        return Err("sublist: start/length out of range".into());
    }
    Ok(Value::Array(
        list.iter()
            .skip(ix(start) - 1)
            .take(ix(len))
            .cloned()
            .collect(),
    ))
}

fn f_coalesce(a: &[Value], _: &Cx<'_, '_>) -> R {
    let items: &[Value] = match a {
        [Value::Array(items)] => items,
        _ => a,
    };
    Ok(items
        .iter()
        .find(|v| !v.is_null())
        .cloned()
        .unwrap_or(Value::Null))
}

// ---------------------------------------------------------------- encoding

fn f_base64_decode(a: &[Value], _: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "base64_decode")?;
    base64::engine::general_purpose::STANDARD
        .decode(t.trim())
        .map(bytes_to_value)
        .map_err(|e| format!("base64_decode: {e}"))
}

// -------------------------------------------------------------------- time

fn unit_arg(a: &[Value], i: usize, fname: &str) -> Result<String, String> {
    if a.len() > i {
        let u = s(a, i, fname)?;
        time::unit_nanos(u)?;
        Ok(u.to_owned())
    } else {
        Ok("second".to_owned())
    }
}

fn f_now_timestamp(a: &[Value], _: &Cx<'_, '_>) -> R {
    let unit = unit_arg(a, 0, "now_timestamp")?;
    let v = time::now_nanos() / time::unit_nanos(&unit)?;
    Ok(Value::from(v as i64))
}

fn f_now_rfc3339(a: &[Value], _: &Cx<'_, '_>) -> R {
    let unit = unit_arg(a, 0, "now_rfc3339")?;
    let v = time::now_nanos() / time::unit_nanos(&unit)?;
    time::to_rfc3339(v as i64, &unit).map(Value::String)
}

fn f_unix_ts_to_rfc3339(a: &[Value], _: &Cx<'_, '_>) -> R {
    let ts = int(a, 0, "unix_ts_to_rfc3339")?;
    let unit = unit_arg(a, 1, "unix_ts_to_rfc3339")?;
    time::to_rfc3339(ts, &unit).map(Value::String)
}

fn f_rfc3339_to_unix_ts(a: &[Value], _: &Cx<'_, '_>) -> R {
    let t = s(a, 0, "rfc3339_to_unix_ts")?;
    let unit = unit_arg(a, 1, "rfc3339_to_unix_ts")?;
    let ns = time::parse_rfc3339(t)?;
    Ok(Value::from(ns.div_euclid(time::unit_nanos(&unit)?) as i64))
}

fn offset_arg(v: &Value, fname: &str) -> Result<i64, String> {
    match v {
        Value::String(t) => time::parse_offset(t),
        Value::Number(_) => match num_of(v) {
            Some(Num::I(i)) if i.abs() < 86_400 => Ok(i),
            _ => Err(format!("{fname}: invalid offset {v}")),
        },
        other => Err(bad(fname, 1, "an offset", other)),
    }
}

fn f_format_date(a: &[Value], _: &Cx<'_, '_>) -> R {
    let unit = unit_arg(a, 0, "format_date")?;
    let off = offset_arg(&a[1], "format_date")?;
    let fmt = s(a, 2, "format_date")?;
    let ts = int(a, 3, "format_date")?;
    time::format_date(&unit, off, fmt, ts).map(Value::String)
}

fn f_date_to_unix_ts(a: &[Value], _: &Cx<'_, '_>) -> R {
    let unit = unit_arg(a, 0, "date_to_unix_ts")?;
    let (off, fmt, input) = if a.len() == 4 {
        (
            offset_arg(&a[1], "date_to_unix_ts")?,
            s(a, 2, "date_to_unix_ts")?,
            s(a, 3, "date_to_unix_ts")?,
        )
    } else {
        (0, s(a, 1, "date_to_unix_ts")?, s(a, 2, "date_to_unix_ts")?)
    };
    time::parse_date(&unit, off, fmt, input).map(Value::from)
}

// -------------------------------------------------------------------- misc

fn uuid_v4(hyphens: bool) -> String {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex_lower(&b);
    if hyphens {
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    } else {
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_consistent() {
        let mut names: Vec<_> = function_names().collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(n, names.len(), "duplicate function names");
        for f in FUNCS {
            assert!(f.min <= f.max, "{}", f.name);
        }
    }

    #[test]
    fn replacement_syntax() {
        assert_eq!(erl_replacement("\\1-&"), "${1}-${0}");
        assert_eq!(erl_replacement("$x"), "$$x");
        assert_eq!(erl_replacement("\\g{2}"), "${2}");
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_v4(true);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(uuid_v4(false).len(), 32);
    }
}
