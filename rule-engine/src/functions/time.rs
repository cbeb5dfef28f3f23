//! Date and time: `now_timestamp`, `now_rfc3339`, `unix_ts_to_rfc3339`,
//! `rfc3339_to_unix_ts`, `format_date`, `date_to_unix_ts`,
//! `timezone_to_second` / `timezone_to_offset_seconds`. The calendar work is
//! in `crate::time`; `local` is UTC (no time-zone database).

use super::args::{integer, text, wrong_type};
use super::{def, CallContext, CallResult, FuncDef};
use crate::time;
use crate::value::Value;

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("now_timestamp", 0, 1, now_timestamp),
    def("now_rfc3339", 0, 1, now_rfc3339),
    def("unix_ts_to_rfc3339", 1, 2, unix_ts_to_rfc3339),
    def("rfc3339_to_unix_ts", 1, 2, rfc3339_to_unix_ts),
    def("format_date", 3, 4, format_date),
    def("date_to_unix_ts", 3, 4, date_to_unix_ts),
    def("timezone_to_second", 1, 1, |a, _| {
        time::parse_offset(text(a, 0, "timezone_to_second")?).map(Value::Int)
    }),
    def("timezone_to_offset_seconds", 1, 1, |a, _| {
        time::parse_offset(text(a, 0, "timezone_to_offset_seconds")?).map(Value::Int)
    }),
];

/// The time unit argument `i` (`second` when absent), checked.
fn unit_arg<'v>(a: &'v [Value], i: usize, fname: &str) -> Result<&'v str, String> {
    if a.len() > i {
        let u = text(a, i, fname)?;
        time::unit_nanos(u).map_err(|e| format!("{fname}: {e}"))?;
        Ok(u)
    } else {
        Ok("second")
    }
}

fn now_timestamp(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let unit = unit_arg(a, 0, "now_timestamp")?;
    let v = time::now_nanos() / time::unit_nanos(unit)?;
    Ok(Value::Int(v as i64))
}

fn now_rfc3339(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let unit = unit_arg(a, 0, "now_rfc3339")?;
    let v = time::now_nanos() / time::unit_nanos(unit)?;
    time::to_rfc3339(v as i64, unit).map(Value::Str)
}

fn unix_ts_to_rfc3339(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let ts = integer(a, 0, "unix_ts_to_rfc3339")?;
    let unit = unit_arg(a, 1, "unix_ts_to_rfc3339")?;
    time::to_rfc3339(ts, unit).map(Value::Str)
}

fn rfc3339_to_unix_ts(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "rfc3339_to_unix_ts")?;
    let unit = unit_arg(a, 1, "rfc3339_to_unix_ts")?;
    let ns = time::parse_rfc3339(t)?;
    Ok(Value::Int(ns.div_euclid(time::unit_nanos(unit)?) as i64))
}

/// An offset argument: `Z`, `+hh[:mm[:ss]]`, `local` or seconds.
fn offset_arg(a: &[Value], i: usize, fname: &str) -> Result<i64, String> {
    match &a[i] {
        Value::Int(s) if s.abs() < 86_400 => Ok(*s),
        v @ Value::Int(_) => Err(format!("{fname}: invalid offset {v}")),
        Value::Str(_) | Value::Bytes(_) => time::parse_offset(text(a, i, fname)?),
        other => Err(wrong_type(fname, i, "an offset", other)),
    }
}

/// `format_date(Unit, Offset, Format[, Time])` (without `Time`: now).
fn format_date(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let unit = unit_arg(a, 0, "format_date")?;
    let off = offset_arg(a, 1, "format_date")?;
    let fmt = text(a, 2, "format_date")?;
    let ts = match a.get(3) {
        Some(_) => integer(a, 3, "format_date")?,
        None => (time::now_nanos() / time::unit_nanos(unit)?) as i64,
    };
    time::format_date(unit, off, fmt, ts).map(Value::Str)
}

fn date_to_unix_ts(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    const F: &str = "date_to_unix_ts";
    let unit = unit_arg(a, 0, F)?;
    let (off, fmt, input) = if a.len() == 4 {
        (offset_arg(a, 1, F)?, text(a, 2, F)?, text(a, 3, F)?)
    } else {
        (0, text(a, 1, F)?, text(a, 2, F)?)
    };
    time::parse_date(unit, off, fmt, input)
        .map(Value::Int)
        .map_err(|e| format!("{F}: {e}"))
}
