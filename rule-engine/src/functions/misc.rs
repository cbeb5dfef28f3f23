//! Conditionals and system functions: `coalesce`, `coalesce_ne`,
//! `uuid_v4`, `uuid_v4_no_hyphen`, `getenv`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::args::text;
use super::convert::hex;
use super::{def, def_prepared, CallContext, CallResult, FuncDef, Prepared};
use crate::value::Value;

/// `getenv('NAME')` reads the environment variable `MIDGEVAR_NAME`: a rule
/// sees only variables an operator exported for rules on purpose, never
/// the broker's own (`MIDGE_ADMIN_TOKEN`, database passwords, ...). EMQX's
/// prefix is `EMQXVAR_`.
pub const GETENV_PREFIX: &str = "MIDGEVAR_";

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("coalesce", 1, super::MANY, coalesce),
    def("coalesce_ne", 1, super::MANY, coalesce_ne),
    def("uuid_v4", 0, 0, |_, _| Ok(Value::Str(uuid_v4(true)))),
    def("uuid_v4_no_hyphen", 0, 0, |_, _| {
        Ok(Value::Str(uuid_v4(false)))
    }),
    def_prepared("getenv", 1, 1, getenv, 0, prepare_getenv),
];

fn items(a: &[Value]) -> &[Value] {
    match a {
        [Value::Array(items)] => items,
        _ => a,
    }
}

/// The first argument that is not `undefined` (a JSON `null` is a value).
fn coalesce(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    Ok(items(a)
        .iter()
        .find(|v| !v.is_undefined())
        .cloned()
        .unwrap_or_default())
}

/// The first argument that is neither `undefined` nor empty (`''`).
fn coalesce_ne(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    Ok(items(a)
        .iter()
        .find(|v| !v.is_undefined() && v.as_bin() != Some(&[]))
        .cloned()
        .unwrap_or_default())
}

pub(crate) fn uuid_v4(hyphens: bool) -> String {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b, false);
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

/// The value of `MIDGEVAR_<name>` (empty when unset), read once per name
/// for the life of the process, as EMQX does: a rule sees the same value
/// on every message.
fn env_value(name: &str) -> Value {
    static CACHE: OnceLock<Mutex<HashMap<String, Value>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = match cache.lock() {
        Ok(c) => c,
        Err(poisoned) => poisoned.into_inner(),
    };
    cache
        .entry(name.to_owned())
        .or_insert_with(|| {
            std::env::var_os(format!("{GETENV_PREFIX}{name}"))
                .map_or(Value::Str(String::new()), |v| {
                    Value::from_vec(v.into_encoded_bytes())
                })
        })
        .clone()
}

fn prepare_getenv(v: &Value) -> Result<Prepared, String> {
    match v.as_str() {
        Some(name) => Ok(Prepared::Value(env_value(name))),
        None => Err("getenv: the variable name must be a string".into()),
    }
}

fn getenv(a: &[Value], c: &CallContext<'_, '_>) -> CallResult {
    match c.prepared {
        Some(Prepared::Value(v)) => Ok(v.clone()),
        _ => Ok(env_value(text(a, 0, "getenv")?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let u = uuid_v4(true);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(uuid_v4(false).len(), 32);
    }
}
