//! Arithmetic and math: `abs ceil floor round sqrt exp log* power fmod`, the
//! trigonometric and hyperbolic functions, `random`, and the function forms
//! of the operators (`div(7, 2)`, `mod(7, 2)`).

use super::args::number;
use super::{def, CallResult, FuncDef};
use crate::value::{arith, float_str, float_value, ArithOp, Num, Value};

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("abs", 1, 1, abs),
    def("ceil", 1, 1, |a, _| round_with(a, "ceil", f64::ceil)),
    def("floor", 1, 1, |a, _| round_with(a, "floor", f64::floor)),
    def("round", 1, 1, |a, _| round_with(a, "round", f64::round)),
    def("sqrt", 1, 1, |a, _| {
        unary(a, "sqrt", |x| (x >= 0.0).then(|| x.sqrt()))
    }),
    def("exp", 1, 1, |a, _| unary(a, "exp", |x| Some(x.exp()))),
    def("log", 1, 1, |a, _| {
        unary(a, "log", |x| (x > 0.0).then(|| x.ln()))
    }),
    def("log10", 1, 1, |a, _| {
        unary(a, "log10", |x| (x > 0.0).then(|| x.log10()))
    }),
    def("log2", 1, 1, |a, _| {
        unary(a, "log2", |x| (x > 0.0).then(|| x.log2()))
    }),
    def("sin", 1, 1, |a, _| unary(a, "sin", |x| Some(x.sin()))),
    def("cos", 1, 1, |a, _| unary(a, "cos", |x| Some(x.cos()))),
    def("tan", 1, 1, |a, _| unary(a, "tan", |x| Some(x.tan()))),
    def("asin", 1, 1, |a, _| {
        unary(a, "asin", |x| (-1.0..=1.0).contains(&x).then(|| x.asin()))
    }),
    def("acos", 1, 1, |a, _| {
        unary(a, "acos", |x| (-1.0..=1.0).contains(&x).then(|| x.acos()))
    }),
    def("atan", 1, 1, |a, _| unary(a, "atan", |x| Some(x.atan()))),
    def("sinh", 1, 1, |a, _| unary(a, "sinh", |x| Some(x.sinh()))),
    def("cosh", 1, 1, |a, _| unary(a, "cosh", |x| Some(x.cosh()))),
    def("tanh", 1, 1, |a, _| unary(a, "tanh", |x| Some(x.tanh()))),
    def("asinh", 1, 1, |a, _| unary(a, "asinh", |x| Some(x.asinh()))),
    def("acosh", 1, 1, |a, _| {
        unary(a, "acosh", |x| (x >= 1.0).then(|| x.acosh()))
    }),
    def("atanh", 1, 1, |a, _| {
        unary(a, "atanh", |x| (x > -1.0 && x < 1.0).then(|| x.atanh()))
    }),
    def("power", 2, 2, |a, _| {
        float_value(
            number(a, 0, "power")?
                .as_f64()
                .powf(number(a, 1, "power")?.as_f64()),
        )
        .map_err(|e| format!("power: {e}"))
    }),
    def("fmod", 2, 2, fmod),
    def("random", 0, 0, |_, _| float_value(fastrand::f64())),
    def("div", 2, 2, |a, _| operator(a, ArithOp::IntDiv, "div")),
    def("mod", 2, 2, |a, _| operator(a, ArithOp::Mod, "mod")),
    def("eq", 2, 2, |a, _| {
        crate::value::compare(crate::value::CmpOp::Eq, &a[0], &a[1]).map(Value::Bool)
    }),
];

fn operator(a: &[Value], op: ArithOp, fname: &str) -> CallResult {
    arith(op, a[0].clone(), a[1].clone()).map_err(|e| format!("{fname}: {e}"))
}

fn abs(a: &[Value], _: &super::CallContext<'_, '_>) -> CallResult {
    match number(a, 0, "abs")? {
        Num::I(i) => i
            .checked_abs()
            .map(Value::Int)
            .ok_or_else(|| "abs: integer overflow".to_owned()),
        Num::F(f) => float_value(f.abs()),
    }
}

pub(super) fn round_with(a: &[Value], fname: &str, f: fn(f64) -> f64) -> CallResult {
    match number(a, 0, fname)? {
        Num::I(i) => Ok(Value::Int(i)),
        Num::F(x) => {
            let r = f(x);
            if r.is_finite() && r.abs() < 9.2e18 {
                Ok(Value::Int(r as i64))
            } else {
                Err(format!("{fname}: result out of integer range"))
            }
        }
    }
}

fn unary(a: &[Value], fname: &str, f: fn(f64) -> Option<f64>) -> CallResult {
    let x = number(a, 0, fname)?.as_f64();
    match f(x) {
        Some(r) => float_value(r).map_err(|e| format!("{fname}: {e}")),
        None => Err(format!("{fname}: argument {} out of domain", float_str(x))),
    }
}

fn fmod(a: &[Value], _: &super::CallContext<'_, '_>) -> CallResult {
    let x = number(a, 0, "fmod")?.as_f64();
    let y = number(a, 1, "fmod")?.as_f64();
    if y == 0.0 {
        return Err("fmod: division by zero".into());
    }
    float_value(x % y)
}
