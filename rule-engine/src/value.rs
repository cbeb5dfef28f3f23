//! The value model of rule SQL, as EMQX's (Erlang terms) seen through JSON.
//!
//! EMQX has no separate text type: a payload, `hexstr2bin('CB48')` and
//! `'abc'` are all binaries. Here a binary is either [`Value::Str`] (known
//! to be UTF-8: literals, JSON strings, text results) or [`Value::Bytes`]
//! (as received: a payload, a decoded base64 / hex / compressed value, a
//! plugin's binary result), which may or may not be UTF-8. The two compare
//! and order by their bytes, so a rule cannot tell them apart except by
//! asking for text: functions that need text take a `Bytes` that is valid
//! UTF-8 as it is and fail, naming the function, on one that is not. No
//! byte is ever replaced: `SELECT payload` and `${payload}` give back the
//! bytes that came in.
//!
//! [`Value::Undefined`] is EMQX's `undefined` (a missing field or key);
//! [`Value::Null`] is a JSON `null`, which is a value (`is_null` is false for
//! it). Both are written as JSON `null`.
//!
//! Written as JSON (a republished row, a plugin's rows, `json_encode`, the
//! rule test API), a `Bytes` value that is not UTF-8 becomes the one-key
//! object `{"$binary": "<base64>"}` (standard alphabet, padded): nothing is
//! lost, and [`decode_binary_tags`] turns it back into bytes (the broker does
//! so for plugin function results).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A map (JSON object). Keys are sorted, so output is deterministic.
pub type Map = BTreeMap<String, Value>;

/// The key of the JSON form of a binary that is not UTF-8.
pub const BINARY_TAG: &str = "$binary";

/// A rule SQL value.
#[derive(Debug, Clone, Default)]
pub enum Value {
    /// EMQX `undefined`: a missing field, key or argument.
    #[default]
    Undefined,
    /// JSON `null` (a value, unlike `Undefined`).
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer (64-bit; EMQX has bignums, see FUNCTIONS.md).
    Int(i64),
    /// A finite float.
    Float(f64),
    /// Text (valid UTF-8).
    Str(String),
    /// A binary as received; may or may not be UTF-8.
    Bytes(Bytes),
    /// A list.
    Array(Vec<Value>),
    /// A map.
    Map(Map),
}

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

impl Value {
    /// A binary value for `bytes` (kept as they are).
    pub fn bytes(bytes: impl Into<Bytes>) -> Value {
        Value::Bytes(bytes.into())
    }

    /// A binary value for owned bytes: text when they are UTF-8.
    pub(crate) fn from_vec(v: Vec<u8>) -> Value {
        match String::from_utf8(v) {
            Ok(s) => Value::Str(s),
            Err(e) => Value::Bytes(Bytes::from(e.into_bytes())),
        }
    }

    /// `undefined` (missing)?
    pub fn is_undefined(&self) -> bool {
        matches!(self, Value::Undefined)
    }

    /// `undefined` or JSON `null`?
    pub fn is_nullish(&self) -> bool {
        matches!(self, Value::Undefined | Value::Null)
    }

    /// The bytes of a binary (text or bytes).
    pub fn as_bin(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s.as_bytes()),
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The text of a binary that is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as a float, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The map, if this is one.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The list, if this is one.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value at `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map().and_then(|m| m.get(key))
    }

    pub(crate) fn num(&self) -> Option<Num> {
        match self {
            Value::Int(i) => Some(Num::I(*i)),
            Value::Float(f) => Some(Num::F(*f)),
            _ => None,
        }
    }

    /// JSON text of this value (binaries that are not UTF-8 tagged).
    pub fn to_json(&self) -> String {
        // Serializing our own values cannot fail: keys are strings and
        // floats are finite.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// JSON bytes of this value, appended to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let _ = serde_json::to_writer(out, self);
    }

    /// Parses JSON text into a value (`null` -> `Null`; integers beyond
    /// 64 bits become floats).
    pub fn from_json(text: &[u8]) -> Result<Value, String> {
        serde_json::from_slice(text).map_err(|e| e.to_string())
    }
}

/// Turns every `{"$binary": "<base64>"}` inside `v` back into bytes (for
/// JSON that crossed to a plugin and back).
pub fn decode_binary_tags(v: Value) -> Value {
    match v {
        Value::Map(m) => {
            if m.len() == 1 {
                if let Some(Value::Str(b64)) = m.get(BINARY_TAG) {
                    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) {
                        return Value::bytes(bytes);
                    }
                }
            }
            Value::Map(
                m.into_iter()
                    .map(|(k, v)| (k, decode_binary_tags(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(decode_binary_tags).collect()),
        other => other,
    }
}

pub(crate) fn float_value(f: f64) -> Result<Value, String> {
    if f.is_finite() {
        Ok(Value::Float(f))
    } else {
        Err("result is not a finite number".to_owned())
    }
}

pub(crate) fn num_value(n: Num) -> Result<Value, String> {
    match n {
        Num::I(i) => Ok(Value::Int(i)),
        Num::F(f) => float_value(f),
    }
}

/// The type name used in error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Undefined => "undefined",
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Int(_) => "integer",
        Value::Float(_) => "float",
        Value::Str(_) => "string",
        Value::Bytes(b) if std::str::from_utf8(b).is_ok() => "string",
        Value::Bytes(_) => "binary data that is not UTF-8",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
    }
}

// ------------------------------------------------------------ conversions

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<u8> for Value {
    fn from(v: u8) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<u16> for Value {
    fn from(v: u16) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(Value::Float(v as f64), Value::Int)
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::from(v as u64)
    }
}
impl From<f64> for Value {
    /// A non-finite float becomes `undefined`.
    fn from(v: f64) -> Self {
        if v.is_finite() {
            Value::Float(v)
        } else {
            Value::Undefined
        }
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}
impl From<Bytes> for Value {
    fn from(v: Bytes) -> Self {
        Value::Bytes(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}
impl From<Map> for Value {
    fn from(v: Map) -> Self {
        Value::Map(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    /// `None` is `undefined`.
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Undefined, Into::into)
    }
}
impl From<&serde_json::Value> for Value {
    fn from(v: &serde_json::Value) -> Self {
        use serde_json::Value as J;
        match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::from(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::Str(s.clone()),
            J::Array(a) => Value::Array(a.iter().map(Value::from).collect()),
            J::Object(o) => Value::Map(o.iter().map(|(k, v)| (k.clone(), v.into())).collect()),
        }
    }
}
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        Value::from(&v)
    }
}

// ------------------------------------------------- equality for tests/API

impl PartialEq for Value {
    /// Exact equality (`1` and `1.0` differ; text and bytes with the same
    /// bytes are equal).
    fn eq(&self, other: &Value) -> bool {
        exact_eq(self, other)
    }
}
impl PartialEq<i64> for Value {
    fn eq(&self, other: &i64) -> bool {
        matches!(self, Value::Int(i) if i == other)
    }
}
impl PartialEq<i32> for Value {
    fn eq(&self, other: &i32) -> bool {
        matches!(self, Value::Int(i) if *i == i64::from(*other))
    }
}
impl PartialEq<f64> for Value {
    fn eq(&self, other: &f64) -> bool {
        matches!(self, Value::Float(f) if f == other)
    }
}
impl PartialEq<bool> for Value {
    fn eq(&self, other: &bool) -> bool {
        matches!(self, Value::Bool(b) if b == other)
    }
}
impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.as_bin() == Some(other.as_bytes())
    }
}
impl PartialEq<str> for Value {
    fn eq(&self, other: &str) -> bool {
        self.as_bin() == Some(other.as_bytes())
    }
}

impl fmt::Display for Value {
    /// The JSON form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

// ----------------------------------------------------------------- JSON

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Undefined | Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(t) => s.serialize_str(t),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(t) => s.serialize_str(t),
                Err(_) => {
                    let mut m = s.serialize_map(Some(1))?;
                    m.serialize_entry(
                        BINARY_TAG,
                        &base64::engine::general_purpose::STANDARD.encode(b),
                    )?;
                    m.end()
                }
            },
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            out.insert(k, v);
        }
        Ok(Value::Map(out))
    }
}

// ------------------------------------------------------------- str / num

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

/// EMQX `str/1` as bytes: binaries as they are, numbers and atoms as text,
/// maps and lists as JSON.
pub(crate) fn to_bin(v: &Value) -> Bytes {
    match v {
        Value::Bytes(b) => b.clone(),
        other => Bytes::from(to_str(other).into_bytes()),
    }
}

/// EMQX `str/1` as text; a binary that is not UTF-8 is written as its
/// JSON form (callers that must keep bytes use [`to_bin`]).
pub(crate) fn to_str(v: &Value) -> String {
    match v {
        Value::Undefined => "undefined".into(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float_str(*f),
        Value::Str(s) => s.clone(),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => v.to_json(),
        },
        other => other.to_json(),
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

// ------------------------------------------------------------ comparison

fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
        _ => a.as_f64().partial_cmp(&b.as_f64()),
    }
}

/// Erlang term order rank: number < atom < map < list < binary.
fn rank(v: &Value) -> u8 {
    match v {
        Value::Int(_) | Value::Float(_) => 0,
        Value::Undefined | Value::Null | Value::Bool(_) => 1,
        Value::Map(_) => 2,
        Value::Array(_) => 3,
        Value::Str(_) | Value::Bytes(_) => 4,
    }
}

fn atom_name(v: &Value) -> &'static str {
    match v {
        Value::Undefined => "undefined",
        Value::Null => "null",
        Value::Bool(true) => "true",
        _ => "false",
    }
}

/// Erlang-like ordering of two values (`==` semantics for numbers).
pub(crate) fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            num_cmp(a.num()?, b.num()?)
        }
        (Value::Str(_) | Value::Bytes(_), Value::Str(_) | Value::Bytes(_)) => {
            Some(a.as_bin()?.cmp(b.as_bin()?))
        }
        (
            Value::Undefined | Value::Null | Value::Bool(_),
            Value::Undefined | Value::Null | Value::Bool(_),
        ) => Some(atom_name(a).cmp(atom_name(b))),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y.iter()) {
                match order(p, q)? {
                    Ordering::Equal => continue,
                    o => return Some(o),
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        (Value::Map(x), Value::Map(y)) => {
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
/// strings convert the string to a number; atoms (`true`, `false`, `null`)
/// against strings compare as strings.
pub(crate) fn compare(op: CmpOp, l: &Value, r: &Value) -> Result<bool, String> {
    if op == CmpOp::TopicMatch {
        return match (l.as_str(), r.as_str()) {
            (Some(t), Some(f)) => Ok(crate::topic::topic_matches(f, t)),
            _ if l.is_undefined() || r.is_undefined() => Ok(false),
            _ => Err(format!(
                "=~ expects a topic and a topic filter (strings), got {} and {}",
                type_name(l),
                type_name(r)
            )),
        };
    }
    let conv = |v: &Value| -> Result<Value, String> {
        let text = v
            .as_str()
            .ok_or_else(|| format!("cannot compare a number with {}", type_name(v)))?;
        parse_num(text)
            .ok_or_else(|| format!("cannot compare a number with non-numeric string {text:?}"))
            .and_then(num_value)
    };
    let (lc, rc);
    let (l, r) = match (l, r) {
        (Value::Undefined, Value::Undefined) => (l, r),
        (Value::Undefined, _) | (_, Value::Undefined) => return Ok(false),
        (Value::Int(_) | Value::Float(_), Value::Str(_) | Value::Bytes(_)) => {
            rc = conv(r)?;
            (l, &rc)
        }
        (Value::Str(_) | Value::Bytes(_), Value::Int(_) | Value::Float(_)) => {
            lc = conv(l)?;
            (&lc, r)
        }
        (Value::Null | Value::Bool(_), Value::Str(_) | Value::Bytes(_)) => {
            lc = Value::from(atom_name(l));
            (&lc, r)
        }
        (Value::Str(_) | Value::Bytes(_), Value::Null | Value::Bool(_)) => {
            rc = Value::from(atom_name(r));
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
/// WHEN`: `1` and `1.0` differ; text and bytes compare by their bytes.
pub(crate) fn exact_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Undefined, Value::Undefined) | (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => x == y,
        (Value::Str(_) | Value::Bytes(_), Value::Str(_) | Value::Bytes(_)) => {
            a.as_bin() == b.as_bin()
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| exact_eq(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| exact_eq(v, w)))
        }
        _ => false,
    }
}

/// Arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    IntDiv,
    Mod,
}

fn op_symbol(op: ArithOp) -> &'static str {
    match op {
        ArithOp::Add => "+",
        ArithOp::Sub => "-",
        ArithOp::Mul => "*",
        ArithOp::Div => "/",
        ArithOp::IntDiv => "div",
        ArithOp::Mod => "mod",
    }
}

/// `+ - * / div mod` with EMQX semantics (`+` concatenates when one side is
/// a string; `/` always gives a float; `div` / `mod` need integers).
pub(crate) fn arith(op: ArithOp, l: Value, r: Value) -> Result<Value, String> {
    if op == ArithOp::Add {
        let textual = |v: &Value| matches!(v, Value::Str(_) | Value::Bytes(_));
        let scalar = |v: &Value| matches!(v, Value::Int(_) | Value::Float(_) | Value::Bool(_));
        if (textual(&l) && (textual(&r) || scalar(&r))) || (scalar(&l) && textual(&r)) {
            let mut out = to_bin(&l).to_vec();
            out.extend_from_slice(&to_bin(&r));
            return Ok(Value::from_vec(out));
        }
    }
    let sym = op_symbol(op);
    let (Some(a), Some(b)) = (l.num(), r.num()) else {
        return Err(format!(
            "bad arguments for `{sym}`: {} and {}",
            type_name(&l),
            type_name(&r)
        ));
    };
    let float = |f: fn(f64, f64) -> f64| num_value(Num::F(f(a.as_f64(), b.as_f64())));
    match (op, a, b) {
        (ArithOp::Add, Num::I(x), Num::I(y)) => x
            .checked_add(y)
            .map_or_else(|| float_value(x as f64 + y as f64), |v| Ok(Value::Int(v))),
        (ArithOp::Sub, Num::I(x), Num::I(y)) => x
            .checked_sub(y)
            .map_or_else(|| float_value(x as f64 - y as f64), |v| Ok(Value::Int(v))),
        (ArithOp::Mul, Num::I(x), Num::I(y)) => x
            .checked_mul(y)
            .map_or_else(|| float_value(x as f64 * y as f64), |v| Ok(Value::Int(v))),
        (ArithOp::Add, ..) => float(|x, y| x + y),
        (ArithOp::Sub, ..) => float(|x, y| x - y),
        (ArithOp::Mul, ..) => float(|x, y| x * y),
        (ArithOp::Div, ..) => {
            if b.as_f64() == 0.0 {
                Err("division by zero".into())
            } else {
                float(|x, y| x / y)
            }
        }
        (ArithOp::IntDiv | ArithOp::Mod, Num::I(x), Num::I(y)) => {
            if y == 0 {
                return Err("division by zero".into());
            }
            let r = if op == ArithOp::IntDiv {
                x.checked_div(y)
            } else {
                x.checked_rem(y)
            };
            r.map(Value::Int)
                .ok_or_else(|| "integer overflow".to_owned())
        }
        (ArithOp::IntDiv | ArithOp::Mod, ..) => Err(format!(
            "`{sym}` expects integers, got {} and {}",
            type_name(&l),
            type_name(&r)
        )),
    }
}

/// Writes `v` at `path` inside `target`, creating (or replacing non-map)
/// intermediate maps.
pub(crate) fn nested_put(target: &mut Value, path: &[String], v: Value) {
    let Some((last, init)) = path.split_last() else {
        *target = v;
        return;
    };
    let mut cur = target;
    for k in init {
        if !matches!(cur, Value::Map(_)) {
            *cur = Value::Map(Map::new());
        }
        let Value::Map(m) = cur else { return };
        cur = m.entry(k.clone()).or_insert_with(|| Value::Map(Map::new()));
    }
    if !matches!(cur, Value::Map(_)) {
        *cur = Value::Map(Map::new());
    }
    if let Value::Map(m) = cur {
        m.insert(last.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(j: &str) -> Value {
        Value::from_json(j.as_bytes()).expect("json")
    }

    #[test]
    fn str_of_floats() {
        assert_eq!(float_str(1.5), "1.5");
        assert_eq!(float_str(2.0), "2.0");
        assert_eq!(float_str(0.1 + 0.2), "0.3");
    }

    #[test]
    fn comparisons() {
        assert_eq!(compare(CmpOp::Eq, &v("1"), &v("1.0")), Ok(true));
        assert_eq!(compare(CmpOp::Gt, &v("31"), &v("\"30\"")), Ok(true));
        assert_eq!(compare(CmpOp::Eq, &v("true"), &v("\"true\"")), Ok(true));
        assert_eq!(compare(CmpOp::Eq, &v("null"), &v("\"null\"")), Ok(true));
        let u = Value::Undefined;
        assert_eq!(compare(CmpOp::Eq, &u, &u), Ok(true));
        assert_eq!(compare(CmpOp::Ne, &u, &v("1")), Ok(false));
        assert_eq!(compare(CmpOp::Eq, &u, &Value::Null), Ok(false));
        assert!(compare(CmpOp::Gt, &v("1"), &v("\"x\"")).is_err());
        assert!(!exact_eq(&v("1"), &v("1.0")));
        assert!(exact_eq(&v("[1, \"a\"]"), &v("[1, \"a\"]")));
        assert!(exact_eq(&Value::bytes(&b"ab"[..]), &v("\"ab\"")));
    }

    #[test]
    fn binaries_survive_json() {
        let b = Value::bytes(vec![0xCB, 0x48, 0xCD, 0x00, 0xFF]);
        let text = b.to_json();
        assert_eq!(text, r#"{"$binary":"y0jNAP8="}"#);
        let back = decode_binary_tags(Value::from_json(text.as_bytes()).expect("json"));
        assert_eq!(back.as_bin(), Some(&[0xCB, 0x48, 0xCD, 0x00, 0xFF][..]));
        assert_eq!(Value::bytes(&b"text"[..]).to_json(), "\"text\"");
        assert_eq!(
            v("18446744073709551615"),
            Value::Float(18446744073709551615.0)
        );
    }
}
