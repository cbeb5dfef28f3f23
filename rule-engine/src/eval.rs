//! Evaluation layer: a compiled [`Plan`](crate::plan::Plan) against one
//! [`Input`]. Never panics; type errors come back as `Err(String)` and are
//! wrapped into [`EvalError`](crate::EvalError) by the caller.

use std::borrow::Cow;

use crate::functions::CallContext;
use crate::input::Input;
use crate::plan::{Column, Expr, Seg};
use crate::value::{arith, compare, exact_eq, float_value, nested_put, type_name, Map, Value};

/// Variables visible to an expression, looked up in this order: `bindings`
/// (the columns selected so far), the FOREACH element, `outer` (what the
/// FOREACH clause selected), then the input's fields.
pub(crate) struct Env<'r, 'a> {
    pub input: &'r Input<'a>,
    /// Columns selected so far / aliases.
    pub bindings: &'r Map,
    /// The FOREACH element (`item` or its alias), in DO and INCASE.
    pub item: Option<(&'r str, &'r Value)>,
    /// The names the FOREACH clause bound (`FOREACH a AS x, x.list AS y`).
    pub outer: Option<&'r Map>,
}

/// The array index an `[expr]` segment asks for.
fn index_of(e: &Expr, env: &Env<'_, '_>) -> Result<i64, String> {
    match eval(e, env)? {
        Value::Int(i) => Ok(i),
        v => Err(format!(
            "array index must be an integer, got {}",
            type_name(&v)
        )),
    }
}

/// One step into `v`: a key of a map, or a 1-based index of a list
/// (negative from the end). A binary holding JSON is decoded on the way,
/// as EMQX does.
fn step<'v>(
    v: Cow<'v, Value>,
    seg: &Seg,
    env: &Env<'_, '_>,
) -> Result<Option<Cow<'v, Value>>, String> {
    if let Value::Str(_) | Value::Bytes(_) = v.as_ref() {
        let decoded = match v.as_bin().map(Value::from_json) {
            Some(Ok(d @ (Value::Map(_) | Value::Array(_)))) => d,
            _ => {
                // Still evaluate the index, so a bad index is an error
                // whatever the data.
                if let Seg::Index(e) = seg {
                    index_of(e, env)?;
                }
                return Ok(None);
            }
        };
        return step(Cow::Owned(decoded), seg, env);
    }
    Ok(match seg {
        Seg::Key(k) => match v {
            Cow::Borrowed(Value::Map(m)) => m.get(k.as_str()).map(Cow::Borrowed),
            Cow::Owned(Value::Map(mut m)) => m.remove(k.as_str()).map(Cow::Owned),
            _ => None,
        },
        Seg::Index(e) => {
            let i = index_of(e, env)?;
            let pick = |len: usize| -> Option<usize> {
                let len = len as i64;
                let idx = if i > 0 {
                    i - 1
                } else if i < 0 {
                    len + i
                } else {
                    -1
                };
                usize::try_from(idx).ok()
            };
            match v {
                Cow::Borrowed(Value::Array(a)) => {
                    pick(a.len()).and_then(|x| a.get(x)).map(Cow::Borrowed)
                }
                Cow::Owned(Value::Array(mut a)) => match pick(a.len()) {
                    Some(x) if x < a.len() => Some(Cow::Owned(a.swap_remove(x))),
                    _ => None,
                },
                _ => None,
            }
        }
    })
}

/// Follows `path` from `v`. Every index expression is evaluated, also past
/// a missing step, so a bad index is an error whatever the data.
fn navigate<'v>(
    v: &'v Value,
    path: &[Seg],
    env: &Env<'_, '_>,
) -> Result<Option<Cow<'v, Value>>, String> {
    let mut cur = Some(Cow::Borrowed(v));
    for s in path {
        cur = match cur {
            Some(c) => step(c, s, env)?,
            None => {
                if let Seg::Index(e) = s {
                    index_of(e, env)?;
                }
                None
            }
        };
    }
    Ok(cur)
}

fn found(v: Option<Cow<'_, Value>>) -> Value {
    v.map_or(Value::Undefined, Cow::into_owned)
}

fn lookup(root: &str, path: &[Seg], env: &Env<'_, '_>) -> Result<Value, String> {
    for scope in [Some(env.bindings), None, env.outer]
        .into_iter()
        .enumerate()
    {
        let v = match scope {
            (1, _) => match env.item {
                Some((name, item)) if name == root => Some(item),
                _ => None,
            },
            (_, Some(m)) => m.get(root),
            _ => None,
        };
        let Some(v) = v else { continue };
        if path.is_empty() {
            return Ok(v.clone());
        }
        if let Some(hit) = navigate(v, path, env)? {
            return Ok(hit.into_owned());
        }
        // Not there: fall back to the next scope (EMQX keeps the original
        // columns underneath the selected ones).
    }
    if root == "payload" && !path.is_empty() {
        let json = env.input.payload_json()?;
        return Ok(found(navigate(json, path, env)?));
    }
    let v = env.input.field(root);
    if path.is_empty() {
        return Ok(v);
    }
    Ok(found(navigate(&v, path, env)?))
}

pub(crate) fn put_row(row: &mut Map, key: &[String], v: Value) {
    match key.split_first() {
        None => {}
        Some((first, [])) => {
            row.insert(first.clone(), v);
        }
        Some((first, rest)) => {
            let slot = row.entry(first.clone()).or_insert(Value::Undefined);
            nested_put(slot, rest, v);
        }
    }
}

fn truthy(v: &Value, what: &str) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Undefined | Value::Null => Ok(false),
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

fn eval_args(args: &[Expr], env: &Env<'_, '_>) -> Result<Vec<Value>, String> {
    args.iter().map(|x| eval(x, env)).collect()
}

/// Evaluates an expression.
pub(crate) fn eval(e: &Expr, env: &Env<'_, '_>) -> Result<Value, String> {
    match e {
        Expr::Const(v) => Ok(v.clone()),
        Expr::Var { root, path } => lookup(root, path, env),
        Expr::Access { base, path } => {
            let b = eval(base, env)?;
            Ok(found(navigate(&b, path, env)?))
        }
        Expr::Neg(x) => match eval(x, env)? {
            Value::Int(i) => i
                .checked_neg()
                .map(Value::Int)
                .ok_or_else(|| "integer overflow".to_owned()),
            Value::Float(f) => float_value(-f),
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
            let mut hit = false;
            for x in list {
                if exact_eq(&v, &eval(x, env)?) {
                    hit = true;
                    break;
                }
            }
            Ok(Value::Bool(hit != *negated))
        }
        Expr::IsNull { expr, negated } => {
            Ok(Value::Bool(eval(expr, env)?.is_nullish() != *negated))
        }
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
                None => Ok(Value::Undefined),
            }
        }
        Expr::List(items) => Ok(Value::Array(eval_args(items, env)?)),
        Expr::Call {
            func,
            args,
            prepared,
        } => {
            let vals = eval_args(args, env)?;
            let cx = CallContext {
                input: env.input,
                prepared: prepared.as_deref(),
            };
            (func.f)(&vals, &cx)
        }
        Expr::External { name, args, ext } => {
            let vals = eval_args(args, env)?;
            ext.call(name, &vals)
        }
    }
}

/// Evaluates SELECT / DO columns into a row.
pub(crate) fn select(
    cols: &[Column],
    input: &Input<'_>,
    item: Option<(&str, &Value)>,
    outer: Option<&Map>,
) -> Result<Map, String> {
    let mut row = Map::new();
    for col in cols {
        match col {
            Column::Wildcard => {
                for (k, v) in input.all_fields() {
                    row.insert(k, v);
                }
                if let Some(o) = outer {
                    for (k, v) in o {
                        row.insert(k.clone(), v.clone());
                    }
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
                        outer,
                    },
                )?;
                put_row(&mut row, key, v);
            }
        }
    }
    Ok(row)
}
