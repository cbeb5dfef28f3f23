//! Evaluation layer: a compiled [`Plan`](crate::plan::Plan) against one
//! [`Input`]. Never panics; type errors come back as `Err(String)` and are
//! wrapped into [`EvalError`](crate::EvalError) by the caller.

use serde_json::{Map, Value};

use crate::funcs::Cx;
use crate::input::Input;
use crate::plan::{ArithOp, Column, Expr, Seg};
use crate::value::{compare, exact_eq, float_value, num_of, num_value, to_str, type_name, Num};

/// Variables visible to an expression.
pub(crate) struct Env<'r, 'a> {
    pub input: &'r Input<'a>,
    /// Columns selected so far / aliases (looked up before input fields).
    pub bindings: &'r Map<String, Value>,
    /// The FOREACH element (`item` or its alias), in DO and INCASE.
    pub item: Option<(&'r str, &'r Value)>,
}

/// The array index an `[expr]` segment asks for.
fn index_of(e: &Expr, env: &Env<'_, '_>) -> Result<i64, String> {
    match eval(e, env)? {
        v @ Value::Number(_) => match num_of(&v) {
            Some(Num::I(i)) => Ok(i),
            _ => Err(format!("array index must be an integer, got {v}")),
        },
        Value::String(k) => Err(format!("array index must be an integer, got string {k:?}")),
        v => Err(format!(
            "array index must be an integer, got {}",
            type_name(&v)
        )),
    }
}

/// Follows `path` from `v` (1-based array indexes, negative from the end).
/// Every index expression is evaluated, also past a missing step, so a bad
/// index is an error whatever the data.
fn navigate<'v>(
    v: &'v Value,
    path: &[Seg],
    env: &Env<'_, '_>,
) -> Result<Option<&'v Value>, String> {
    let mut cur = Some(v);
    for s in path {
        cur = match s {
            Seg::Key(k) => match cur {
                Some(Value::Object(m)) => m.get(k.as_str()),
                _ => None,
            },
            Seg::Index(e) => {
                let i = index_of(e, env)?;
                match cur {
                    Some(Value::Array(a)) => {
                        let len = a.len() as i64;
                        let idx = if i > 0 {
                            i - 1
                        } else if i < 0 {
                            len + i
                        } else {
                            -1
                        };
                        usize::try_from(idx).ok().and_then(|x| a.get(x))
                    }
                    _ => None,
                }
            }
        };
    }
    Ok(cur)
}

fn lookup(root: &str, path: &[Seg], env: &Env<'_, '_>) -> Result<Value, String> {
    if let Some((name, item)) = env.item {
        if name == root {
            return Ok(navigate(item, path, env)?.cloned().unwrap_or(Value::Null));
        }
    }
    if let Some(v) = env.bindings.get(root) {
        if path.is_empty() {
            return Ok(v.clone());
        }
        if let Some(found) = navigate(v, path, env)? {
            return Ok(found.clone());
        }
        // Not in the selected columns: fall back to the input below (EMQX
        // keeps the original columns underneath the selected ones).
    }
    if root == "payload" && !path.is_empty() {
        let json = env.input.payload_json()?;
        return Ok(navigate(json, path, env)?.cloned().unwrap_or(Value::Null));
    }
    let v = env.input.field(root);
    if path.is_empty() {
        return Ok(v);
    }
    Ok(navigate(&v, path, env)?.cloned().unwrap_or(Value::Null))
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
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else { return };
        cur = m
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Value::Object(m) = cur {
        m.insert(last.clone(), v);
    }
}

pub(crate) fn put_row(row: &mut Map<String, Value>, key: &[String], v: Value) {
    match key.split_first() {
        None => {}
        Some((first, [])) => {
            row.insert(first.clone(), v);
        }
        Some((first, rest)) => {
            let slot = row.entry(first.clone()).or_insert(Value::Null);
            nested_put(slot, rest, v);
        }
    }
}

fn arith(op: ArithOp, l: Value, r: Value) -> Result<Value, String> {
    if op == ArithOp::Add {
        match (&l, &r) {
            (Value::String(a), Value::String(b)) => return Ok(Value::String(format!("{a}{b}"))),
            (Value::String(_), Value::Number(_) | Value::Bool(_))
            | (Value::Number(_) | Value::Bool(_), Value::String(_)) => {
                return Ok(Value::String(format!("{}{}", to_str(&l), to_str(&r))))
            }
            _ => {}
        }
    }
    let sym = match op {
        ArithOp::Add => "+",
        ArithOp::Sub => "-",
        ArithOp::Mul => "*",
        ArithOp::Div => "/",
        ArithOp::IntDiv => "div",
        ArithOp::Mod => "mod",
    };
    let (Some(a), Some(b)) = (num_of(&l), num_of(&r)) else {
        return Err(format!(
            "bad arguments for `{sym}`: {} and {}",
            type_name(&l),
            type_name(&r)
        ));
    };
    let float = |f: fn(f64, f64) -> f64| num_value(Num::F(f(a.as_f64(), b.as_f64())));
    match (op, a, b) {
        (ArithOp::Add, Num::I(x), Num::I(y)) => Ok(x
            .checked_add(y)
            .map_or_else(|| float_value(x as f64 + y as f64), |v| Ok(Value::from(v)))?),
        (ArithOp::Sub, Num::I(x), Num::I(y)) => Ok(x
            .checked_sub(y)
            .map_or_else(|| float_value(x as f64 - y as f64), |v| Ok(Value::from(v)))?),
        (ArithOp::Mul, Num::I(x), Num::I(y)) => Ok(x
            .checked_mul(y)
            .map_or_else(|| float_value(x as f64 * y as f64), |v| Ok(Value::from(v)))?),
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
            r.map(Value::from)
                .ok_or_else(|| "integer overflow".to_owned())
        }
        (ArithOp::IntDiv | ArithOp::Mod, ..) => Err(format!(
            "`{sym}` expects integers, got {} and {}",
            type_name(&l),
            type_name(&r)
        )),
    }
}

fn truthy(v: &Value, what: &str) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Null => Ok(false),
        other => Err(format!(
            "{what} must be a boolean, got {}",
            type_name(other)
        )),
    }
}

/// Evaluates a condition (WHERE / INCASE / CASE WHEN) with EMQX's
/// `match_conditions` semantics.
pub(crate) fn cond(e: &Expr, env: &Env<'_, '_>) -> Result<bool, String> {
    match e {
        Expr::And(l, r) => Ok(cond(l, env)? && cond(r, env)?),
        Expr::Or(l, r) => Ok(cond(l, env)? || cond(r, env)?),
        Expr::Not(x) => Ok(match eval(x, env)? {
            Value::Bool(b) => !b,
            _ => false,
        }),
        other => truthy(&eval(other, env)?, "condition"),
    }
}

/// Evaluates an expression.
pub(crate) fn eval(e: &Expr, env: &Env<'_, '_>) -> Result<Value, String> {
    match e {
        Expr::Const(v) => Ok(v.clone()),
        Expr::Var { root, path } => lookup(root, path, env),
        Expr::Access { base, path } => {
            let b = eval(base, env)?;
            Ok(navigate(&b, path, env)?.cloned().unwrap_or(Value::Null))
        }
        Expr::Neg(x) => match eval(x, env)? {
            v @ Value::Number(_) => match num_of(&v) {
                Some(Num::I(i)) => i
                    .checked_neg()
                    .map(Value::from)
                    .ok_or_else(|| "integer overflow".to_owned()),
                Some(Num::F(f)) => float_value(-f),
                None => Err("bad number".into()),
            },
            v => Err(format!("bad argument for unary `-`: {}", type_name(&v))),
        },
        Expr::Arith(op, l, r) => arith(*op, eval(l, env)?, eval(r, env)?),
        Expr::Cmp(op, l, r) => compare(*op, &eval(l, env)?, &eval(r, env)?).map(Value::Bool),
        Expr::And(..) | Expr::Or(..) | Expr::Not(..) => cond(e, env).map(Value::Bool),
        Expr::In {
            expr,
            list,
            negated,
        } => {
            let v = eval(expr, env)?;
            let mut found = false;
            for x in list {
                if exact_eq(&v, &eval(x, env)?) {
                    found = true;
                    break;
                }
            }
            Ok(Value::Bool(found != *negated))
        }
        Expr::IsNull { expr, negated } => Ok(Value::Bool(eval(expr, env)?.is_null() != *negated)),
        Expr::Case {
            operand,
            whens,
            else_,
        } => {
            match operand {
                None => {
                    for (c, r) in whens {
                        if cond(c, env)? {
                            return eval(r, env);
                        }
                    }
                }
                Some(o) => {
                    let on = eval(o, env)?;
                    for (c, r) in whens {
                        if exact_eq(&on, &eval(c, env)?) {
                            return eval(r, env);
                        }
                    }
                }
            }
            match else_ {
                Some(x) => eval(x, env),
                None => Ok(Value::Null),
            }
        }
        Expr::List(items) => Ok(Value::Array(
            items
                .iter()
                .map(|x| eval(x, env))
                .collect::<Result<_, _>>()?,
        )),
        Expr::Call { func, args, regex } => {
            let vals: Vec<Value> = args
                .iter()
                .map(|x| eval(x, env))
                .collect::<Result<_, _>>()?;
            let cx = Cx {
                input: env.input,
                regex: regex.as_deref(),
            };
            (func.f)(&vals, &cx)
        }
        Expr::External { name, args, ext } => {
            let vals: Vec<Value> = args
                .iter()
                .map(|x| eval(x, env))
                .collect::<Result<_, _>>()?;
            ext.call(name, &vals)
        }
    }
}

/// Evaluates SELECT / DO columns into a row.
pub(crate) fn select(
    cols: &[Column],
    input: &Input<'_>,
    item: Option<(&str, &Value)>,
) -> Result<Map<String, Value>, String> {
    let mut row = Map::new();
    for col in cols {
        match col {
            Column::Wildcard => {
                for (k, v) in input.all_fields() {
                    row.insert(k, v);
                }
                if let Some((name, v)) = item {
                    row.insert(name.to_owned(), v.clone());
                }
            }
            Column::Expr { expr, key } => {
                let v = eval(
                    expr,
                    &Env {
                        input,
                        bindings: &row,
                        item,
                    },
                )?;
                put_row(&mut row, key, v);
            }
        }
    }
    Ok(row)
}
