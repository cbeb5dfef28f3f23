//! Map functions: `map_get`/`map_put` (dotted key paths), `mget`/`mput`
//! (a key, or a list of keys as a path), `map_keys`, `map_values`,
//! `map_to_entries`, `map_size`, `map_new`, `map_to_redis_hset_args`.

use super::args::{map, wrong_type};
use super::{def, CallContext, CallResult, FuncDef};
use crate::value::{nested_put, to_str, Map, Value};

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("map_new", 0, 0, |_, _| Ok(Value::Map(Map::new()))),
    def("map_get", 2, 3, map_get),
    def("map_put", 3, 3, map_put),
    def("mget", 2, 3, mget),
    def("mput", 3, 3, mput),
    def("map_keys", 1, 1, |a, _| {
        Ok(Value::Array(
            map(a, 0, "map_keys")?
                .keys()
                .map(|k| Value::from(k.as_str()))
                .collect(),
        ))
    }),
    def("map_values", 1, 1, |a, _| {
        Ok(Value::Array(
            map(a, 0, "map_values")?.values().cloned().collect(),
        ))
    }),
    def("map_to_entries", 1, 1, map_to_entries),
    def("map_size", 1, 1, |a, _| {
        Ok(Value::from(map(a, 0, "map_size")?.len()))
    }),
    def("map_to_redis_hset_args", 1, 1, redis_hset_args),
];

/// Follows `keys` through maps.
pub(super) fn path_get<'v, 'k>(
    v: &'v Value,
    keys: impl IntoIterator<Item = &'k str>,
) -> Option<&'v Value> {
    let mut cur = v;
    for key in keys {
        cur = cur.as_map()?.get(key)?;
    }
    Some(cur)
}

fn path_get_owned<'k>(v: Value, keys: impl IntoIterator<Item = &'k str>) -> Option<Value> {
    let mut cur = v;
    for key in keys {
        cur = match cur {
            Value::Map(mut m) => m.remove(key)?,
            b @ (Value::Str(_) | Value::Bytes(_)) => match b.as_bin().map(Value::from_json) {
                Some(Ok(Value::Map(mut m))) => m.remove(key)?,
                _ => return None,
            },
            _ => return None,
        };
    }
    Some(cur)
}

/// A key argument: a string (`map_get` splits it at dots) or, for
/// `mget`/`mput`, a list of keys.
fn key_path(v: &Value, fname: &str, split_dots: bool) -> Result<Vec<String>, String> {
    match v {
        Value::Array(keys) => keys
            .iter()
            .map(|k| match k {
                Value::Str(_)
                | Value::Bytes(_)
                | Value::Int(_)
                | Value::Float(_)
                | Value::Bool(_) => Ok(to_str(k)),
                other => Err(wrong_type(fname, 0, "a list of keys", other)),
            })
            .collect(),
        Value::Str(_) | Value::Bytes(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
            let k = to_str(v);
            Ok(if split_dots {
                k.split('.').map(str::to_owned).collect()
            } else {
                vec![k]
            })
        }
        other => Err(wrong_type(
            fname,
            0,
            "a key (string) or a list of keys",
            other,
        )),
    }
}

fn get_with(a: &[Value], fname: &str, split_dots: bool) -> CallResult {
    let path = key_path(&a[0], fname, split_dots)?;
    let default = a.get(2).cloned().unwrap_or_default();
    match &a[1] {
        Value::Undefined => Ok(default),
        Value::Map(_) | Value::Str(_) | Value::Bytes(_) => {
            Ok(path_get_owned(a[1].clone(), path.iter().map(String::as_str)).unwrap_or(default))
        }
        other => Err(wrong_type(fname, 1, "a map", other)),
    }
}

/// `map_get(Key, Map[, Default])`: a JSON `null` is a value, only a missing
/// key gives `Default` (`undefined`).
fn map_get(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    get_with(a, "map_get", true)
}

fn mget(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    get_with(a, "mget", false)
}

fn put_with(a: &[Value], fname: &str, split_dots: bool) -> CallResult {
    let path = key_path(&a[0], fname, split_dots)?;
    let mut target = match &a[2] {
        Value::Undefined => Value::Map(Map::new()),
        Value::Map(_) => a[2].clone(),
        Value::Str(_) | Value::Bytes(_) => Value::Map(map(a, 2, fname)?.into_owned()),
        v => return Err(wrong_type(fname, 2, "a map", v)),
    };
    nested_put(&mut target, &path, a[1].clone());
    Ok(target)
}

fn map_put(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    put_with(a, "map_put", true)
}

fn mput(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    put_with(a, "mput", false)
}

fn map_to_entries(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    Ok(Value::Array(
        map(a, 0, "map_to_entries")?
            .iter()
            .map(|(k, v)| {
                let mut e = Map::new();
                e.insert("key".into(), Value::from(k.as_str()));
                e.insert("value".into(), v.clone());
                Value::Map(e)
            })
            .collect(),
    ))
}

/// `map_to_redis_hset_args(Map)`: `[field, value, ...]` for a Redis `HSET`:
/// binaries as they are, integers as text, floats with 6 decimals
/// (compact), booleans as `true`/`false`; other values are dropped. A
/// binary holding a JSON object is decoded; anything else gives `[]`.
fn redis_hset_args(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let m = match &a[0] {
        Value::Map(_) | Value::Str(_) | Value::Bytes(_) => {
            match map(a, 0, "map_to_redis_hset_args") {
                Ok(m) => m,
                Err(_) => return Ok(Value::Array(Vec::new())),
            }
        }
        _ => return Ok(Value::Array(Vec::new())),
    };
    let mut out = Vec::with_capacity(m.len() * 2);
    for (k, v) in m.iter() {
        let field = match v {
            Value::Str(_) | Value::Bytes(_) => v.clone(),
            Value::Int(i) => Value::Str(i.to_string()),
            Value::Float(f) => {
                let mut s = format!("{f:.6}");
                while s.ends_with('0') {
                    s.pop();
                }
                if s.ends_with('.') {
                    s.push('0');
                }
                Value::Str(s)
            }
            Value::Bool(b) => Value::Str(b.to_string()),
            _ => continue,
        };
        out.push(Value::from(k.as_str()));
        out.push(field);
    }
    Ok(Value::Array(out))
}
