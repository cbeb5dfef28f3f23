//! Type conversion (`str`, `int`, `float`, `bool`, `map`, `bin2hexstr`,
//! `hexstr2bin`, `str_utf16_le`, ...) and type checks (`is_null`, `is_str`,
//! ...).

use std::fmt::Write as _;

use super::args::{binary, integer, number, text, wrong_type};
use super::math::round_with;
use super::{def, CallContext, CallResult, FuncDef};
use crate::value::{float_value, parse_num, to_bin, type_name, Map, Num, Value};

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("str", 1, 1, |a, _| Ok(Value::from_bin(to_bin(&a[0])))),
    def("str_utf8", 1, 1, str_utf8),
    def("str_utf16_le", 1, 1, str_utf16_le),
    def("int", 1, 1, int),
    def("float", 1, 2, float),
    def("float2str", 2, 2, float2str),
    def("bool", 1, 1, bool),
    def("map", 1, 1, map),
    def("bin2hexstr", 1, 2, |a, _| bin2hexstr(a, "bin2hexstr", None)),
    def("sqlserver_bin2hexstr", 1, 1, |a, _| {
        bin2hexstr(a, "sqlserver_bin2hexstr", Some("0x"))
    }),
    def("hexstr2bin", 1, 2, hexstr2bin),
    def("is_null", 1, 1, |a, _| Ok(Value::Bool(a[0].is_undefined()))),
    def("is_not_null", 1, 1, |a, _| {
        Ok(Value::Bool(!a[0].is_undefined()))
    }),
    def("is_null_var", 1, 1, |a, _| {
        Ok(Value::Bool(a[0].is_nullish()))
    }),
    def("is_not_null_var", 1, 1, |a, _| {
        Ok(Value::Bool(!a[0].is_nullish()))
    }),
    def("is_str", 1, 1, |a, _| {
        Ok(Value::Bool(a[0].as_bin().is_some()))
    }),
    def("is_bool", 1, 1, |a, _| {
        Ok(Value::Bool(matches!(a[0], Value::Bool(_))))
    }),
    def("is_int", 1, 1, |a, _| {
        Ok(Value::Bool(matches!(a[0], Value::Int(_))))
    }),
    def("is_float", 1, 1, |a, _| {
        Ok(Value::Bool(matches!(a[0], Value::Float(_))))
    }),
    def("is_num", 1, 1, |a, _| {
        Ok(Value::Bool(matches!(a[0], Value::Int(_) | Value::Float(_))))
    }),
    def("is_map", 1, 1, |a, _| {
        Ok(Value::Bool(matches!(a[0], Value::Map(_))))
    }),
    def("is_array", 1, 1, |a, _| {
        Ok(Value::Bool(matches!(a[0], Value::Array(_))))
    }),
    def("is_empty", 1, 1, is_empty),
];

impl Value {
    /// A binary result from `Bytes`: text when the bytes are UTF-8.
    pub(crate) fn from_bin(b: bytes::Bytes) -> Value {
        match std::str::from_utf8(&b) {
            Ok(s) => Value::Str(s.to_owned()),
            Err(_) => Value::Bytes(b),
        }
    }
}

/// Hex digits of `b` (`upper` or lower case).
pub(crate) fn hex(b: &[u8], upper: bool) -> String {
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = if upper {
            write!(out, "{x:02X}")
        } else {
            write!(out, "{x:02x}")
        };
    }
    out
}

fn str_utf8(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let b = to_bin(&a[0]);
    match std::str::from_utf8(&b) {
        Ok(s) => Ok(Value::from(s)),
        Err(e) => Err(format!(
            "str_utf8: the binary is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )),
    }
}

fn str_utf16_le(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let b = to_bin(&a[0]);
    let s = std::str::from_utf8(&b).map_err(|_| wrong_type("str_utf16_le", 0, "text", &a[0]))?;
    let out: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
    Ok(Value::bytes(out))
}

fn int(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    match &a[0] {
        Value::Bool(b) => Ok(Value::Int(i64::from(*b))),
        Value::Int(i) => Ok(Value::Int(*i)),
        v @ Value::Float(_) => round_with(std::slice::from_ref(v), "int", f64::floor),
        v @ (Value::Str(_) | Value::Bytes(_)) => {
            let t = text(a, 0, "int")?;
            match parse_num(t) {
                Some(Num::I(i)) => Ok(Value::Int(i)),
                Some(Num::F(f)) => round_with(&[float_value(f)?], "int", f64::floor),
                None => Err(format!(
                    "int: cannot convert {} {t:?} to an integer",
                    type_name(v)
                )),
            }
        }
        v => Err(wrong_type("int", 0, "a number, string or boolean", v)),
    }
}

fn float(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let f = match &a[0] {
        Value::Int(_) | Value::Float(_) => number(a, 0, "float")?.as_f64(),
        Value::Str(_) | Value::Bytes(_) => {
            let t = text(a, 0, "float")?;
            parse_num(t)
                .map(Num::as_f64)
                .ok_or_else(|| format!("float: cannot convert {t:?} to a float"))?
        }
        v => return Err(wrong_type("float", 0, "a number or string", v)),
    };
    if a.len() == 2 {
        let d = integer(a, 1, "float")?;
        if !(1..=253).contains(&d) {
            return Err("float: decimals must be between 1 and 253".into());
        }
        let p = 10f64.powi(d.min(300) as i32);
        return float_value((f * p).round() / p);
    }
    float_value(f)
}

fn float2str(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let f = number(a, 0, "float2str")?.as_f64();
    let d = integer(a, 1, "float2str")?;
    if !(0..=253).contains(&d) {
        return Err("float2str: precision must be between 0 and 253".into());
    }
    let mut out = format!("{f:.prec$}", prec = super::args::index(d));
    if out.contains('.') {
        while out.ends_with('0') {
            out.pop();
        }
        if out.ends_with('.') {
            out.push('0');
        }
    }
    Ok(Value::Str(out))
}

fn bool(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    match &a[0] {
        Value::Bool(b) => Ok(Value::Bool(*b)),
        Value::Int(1) => Ok(Value::Bool(true)),
        Value::Int(0) => Ok(Value::Bool(false)),
        v => match v.as_str() {
            Some("true") => Ok(Value::Bool(true)),
            Some("false") => Ok(Value::Bool(false)),
            _ => Err(format!("bool: cannot convert {v} to a boolean")),
        },
    }
}

fn map(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    match &a[0] {
        Value::Map(_) => Ok(a[0].clone()),
        Value::Array(pairs) => {
            let mut m = Map::new();
            for p in pairs {
                match p.as_array() {
                    Some([k, v]) if k.as_str().is_some() => {
                        m.insert(k.as_str().unwrap_or_default().to_owned(), v.clone());
                    }
                    _ => return Err("map: a list must hold [key, value] pairs".into()),
                }
            }
            Ok(Value::Map(m))
        }
        v @ (Value::Str(_) | Value::Bytes(_)) => match v.as_bin().map(Value::from_json) {
            Some(Ok(m @ Value::Map(_))) => Ok(m),
            _ => Err(format!("map: cannot convert {} to a map", type_name(v))),
        },
        v => Err(wrong_type("map", 0, "a map or JSON string", v)),
    }
}

fn bin2hexstr(a: &[Value], fname: &str, prefix: Option<&str>) -> CallResult {
    let b = binary(a, 0, fname)?;
    let prefix = match a.get(1) {
        Some(_) => text(a, 1, fname)?,
        None => prefix.unwrap_or(""),
    };
    Ok(Value::Str(format!("{prefix}{}", hex(b, true))))
}

/// Decodes hex digits (either case) into bytes.
pub(crate) fn unhex(t: &[u8], fname: &str) -> Result<Vec<u8>, String> {
    if !t.len().is_multiple_of(2) {
        return Err(format!("{fname}: odd number of hex digits"));
    }
    let digit = |c: u8| -> Result<u8, String> {
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| format!("{fname}: {:?} is not a hex digit", c as char))
    };
    t.chunks(2)
        .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

fn hexstr2bin(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let mut t = binary(a, 0, "hexstr2bin")?;
    if a.len() == 2 {
        let prefix = binary(a, 1, "hexstr2bin")?;
        t = t
            .strip_prefix(prefix)
            .ok_or("hexstr2bin: the string does not start with the prefix")?;
    }
    Ok(Value::bytes(unhex(t, "hexstr2bin")?))
}

fn is_empty(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    Ok(Value::Bool(match &a[0] {
        Value::Array(x) => x.is_empty(),
        Value::Map(m) => m.is_empty(),
        v @ (Value::Str(_) | Value::Bytes(_)) => match v.as_bin() {
            Some([]) => true,
            _ => super::args::map(a, 0, "is_empty")?.is_empty(),
        },
        v => return Err(wrong_type("is_empty", 0, "an array, map or string", v)),
    }))
}
