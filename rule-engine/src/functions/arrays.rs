//! Array functions: `nth`, `length`, `sublist`, `first`, `last`, `contains`.

use super::args::{array, index, integer, wrong_type};
use super::{def, CallContext, CallResult, FuncDef};
use crate::value::{exact_eq, Value};

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("nth", 2, 2, nth),
    def("length", 1, 1, length),
    def("sublist", 2, 3, sublist),
    def("first", 1, 1, |a, _| {
        array(a, 0, "first")?
            .first()
            .cloned()
            .ok_or_else(|| "first: empty array".to_owned())
    }),
    def("last", 1, 1, |a, _| {
        array(a, 0, "last")?
            .last()
            .cloned()
            .ok_or_else(|| "last: empty array".to_owned())
    }),
    def("contains", 2, 2, |a, _| {
        Ok(Value::Bool(
            array(a, 1, "contains")?.iter().any(|v| exact_eq(v, &a[0])),
        ))
    }),
];

fn nth(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let n = integer(a, 0, "nth")?;
    let list = array(a, 1, "nth")?;
    if n < 1 || index(n) > list.len() {
        return Err(format!(
            "nth: index {n} out of range for an array of {}",
            list.len()
        ));
    }
    Ok(list[index(n) - 1].clone())
}

fn length(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    match &a[0] {
        Value::Array(x) => Ok(Value::from(x.len())),
        Value::Map(x) => Ok(Value::from(x.len())),
        v => Err(wrong_type("length", 0, "an array", v)),
    }
}

fn sublist(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let (start, len, list) = if a.len() == 2 {
        (1, integer(a, 0, "sublist")?, array(a, 1, "sublist")?)
    } else {
        (
            integer(a, 0, "sublist")?,
            integer(a, 1, "sublist")?,
            array(a, 2, "sublist")?,
        )
    };
    if start < 1 || len < 0 || index(start) > list.len() + 1 {
        return Err("sublist: start/length out of range".into());
    }
    Ok(Value::Array(
        list.iter()
            .skip(index(start) - 1)
            .take(index(len))
            .cloned()
            .collect(),
    ))
}
