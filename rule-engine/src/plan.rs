//! Plan layer: `sqlparser` trees -> a compiled [`Plan`].
//!
//! Resolves field references against the static per-source field tables,
//! functions against the catalogue (arity checked), folds literals,
//! compiles literal regexes and decides output column names. Everything a
//! rule author can get wrong is reported here, at load, with a position.

use std::collections::HashSet;
use std::sync::Arc;

use sqlparser::ast::{
    AccessExpr, BinaryOperator, CaseWhen, DuplicateTreatment, Expr as SqlExpr, FunctionArg,
    FunctionArgExpr, FunctionArguments, Ident, SelectItem, Spanned, Subscript, UnaryOperator,
    Value as SqlValue,
};
use sqlparser::tokenizer::Location;

use crate::functions::{self, FuncDef, Prepared};
use crate::input::Source;
use crate::parse::{Body, ParseError, Statement};
use crate::value::{num_value, parse_num, ArithOp, CmpOp, Num, Value};
use crate::ExternalFunctions;

/// One step of a path.
#[derive(Debug)]
pub(crate) enum Seg {
    Key(String),
    Index(Expr),
}

/// A compiled expression.
#[derive(Debug)]
pub(crate) enum Expr {
    Const(Value),
    /// A field, alias or FOREACH item, with an optional path.
    Var {
        root: String,
        path: Vec<Seg>,
    },
    /// Path access on a computed value (`f(x).a`, `[1,2][1]`).
    Access {
        base: Box<Expr>,
        path: Vec<Seg>,
    },
    Neg(Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        else_: Option<Box<Expr>>,
    },
    List(Vec<Expr>),
    Call {
        func: &'static FuncDef,
        args: Vec<Expr>,
        /// What the function compiled from a literal argument at load (a
        /// regex, a jq program, ...).
        prepared: Option<Box<Prepared>>,
    },
    /// A function from outside the catalogue (a plugin's).
    External {
        name: String,
        args: Vec<Expr>,
        ext: Arc<dyn ExternalFunctions>,
    },
}

/// A SELECT / DO column.
#[derive(Debug)]
pub(crate) enum Column {
    /// `*`: every field of the input.
    Wildcard,
    /// An expression and the output path it is written to.
    Expr { expr: Expr, key: Vec<String> },
}

/// The compiled rule body.
#[derive(Debug)]
pub(crate) enum PlanKind {
    Select(Vec<Column>),
    Foreach {
        /// `FOREACH a AS x, b AS y, list`: every expression before the last,
        /// with the key it is selected under and whether it names a
        /// variable (`AS`) the later ones can use.
        bound: Vec<(Expr, Vec<String>)>,
        collection: Expr,
        /// Output key of the collection in the FOREACH-selected map.
        coll_key: Vec<String>,
        /// Name of the element (`item` or the AS alias).
        item_name: String,
        do_cols: Vec<Column>,
        incase: Option<Expr>,
    },
}

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Plan {
    pub kind: PlanKind,
    pub where_: Option<Expr>,
    pub reads_payload_json: bool,
}

const MAX_DEPTH: usize = 200;

struct Planner<'s> {
    sources: &'s [Source],
    ext: Option<&'s Arc<dyn ExternalFunctions>>,
    from_text: String,
    aliases: HashSet<String>,
    reads_payload_json: bool,
    last_loc: Location,
}

fn loc_of(e: &SqlExpr) -> Location {
    e.span().start
}

fn err(loc: Location, msg: impl Into<String>) -> ParseError {
    ParseError::at(loc, msg)
}

fn alias_root(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
        _ => None,
    }
}

/// Compiles a parsed statement for the given FROM sources.
pub(crate) fn plan(
    stmt: Statement,
    sources: &[Source],
    ext: Option<&Arc<dyn ExternalFunctions>>,
) -> Result<Plan, ParseError> {
    let from_text = stmt
        .from
        .iter()
        .map(|f| format!("\"{}\"", f.filter))
        .collect::<Vec<_>>()
        .join(", ");
    let mut aliases = HashSet::new();
    match &stmt.body {
        Body::Select { items } => aliases.extend(items.iter().filter_map(alias_root)),
        Body::Foreach {
            items, do_items, ..
        } => {
            aliases.extend(do_items.iter().filter_map(alias_root));
            aliases.extend(items.iter().filter_map(alias_root));
        }
    }
    let mut p = Planner {
        sources,
        ext,
        from_text,
        aliases,
        reads_payload_json: false,
        last_loc: Location { line: 1, column: 1 },
    };
    let kind = match stmt.body {
        Body::Select { items } => {
            let cols = p.columns(items, &[])?;
            PlanKind::Select(cols)
        }
        Body::Foreach {
            mut items,
            do_items,
            incase,
        } => {
            let last = items.pop().ok_or_else(|| {
                err(
                    Location { line: 1, column: 1 },
                    "FOREACH needs an expression",
                )
            })?;
            let mut bound = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let (expr, alias) = foreach_item(item)?;
                let expr = p.expr(&expr, &[], 0)?;
                let key = match alias {
                    Some(a) => vec![a.value],
                    None => default_key(&expr, i + 1),
                };
                bound.push((expr, key));
            }
            let (collection, alias) = foreach_item(last)?;
            let coll = p.expr(&collection, &[], 0)?;
            let (coll_key, item_name) = match &alias {
                Some(a) => (vec![a.value.clone()], a.value.clone()),
                None => (default_key(&coll, bound.len() + 1), "item".to_owned()),
            };
            let locals = [item_name.as_str()];
            let do_cols = p.columns(do_items, &locals)?;
            let incase = match incase {
                Some(e) => Some(p.expr(&e, &locals, 0)?),
                None => None,
            };
            PlanKind::Foreach {
                bound,
                collection: coll,
                coll_key,
                item_name,
                do_cols,
                incase,
            }
        }
    };
    let where_ = match stmt.where_ {
        Some(e) => Some(p.expr(&e, &[], 0)?),
        None => None,
    };
    Ok(Plan {
        kind,
        where_,
        reads_payload_json: p.reads_payload_json,
    })
}

/// The expression and `AS` name of one FOREACH item.
fn foreach_item(item: SelectItem) -> Result<(SqlExpr, Option<Ident>), ParseError> {
    match item {
        SelectItem::UnnamedExpr(e) => Ok((e, None)),
        SelectItem::ExprWithAlias { expr, alias } => Ok((expr, Some(alias))),
        SelectItem::Wildcard(w) => Err(err(
            w.wildcard_token.0.span.start,
            "FOREACH expects an array expression, found `*`",
        )),
        other => Err(err(
            Location { line: 1, column: 1 },
            format!("FOREACH expects an expression, found `{other}`"),
        )),
    }
}

/// EMQX names an unaliased column after its path, a string literal after
/// itself, anything else `_v_<kind>_<name>` (EMQX appends a timestamp; we
/// append the column's position to keep names unique and deterministic).
fn default_key(e: &Expr, pos: usize) -> Vec<String> {
    match e {
        Expr::Var { root, path } => {
            let mut k = vec![root.clone()];
            for s in path {
                match s {
                    Seg::Key(x) => k.push(x.clone()),
                    Seg::Index(_) => break,
                }
            }
            k
        }
        Expr::Const(Value::Str(s)) => vec![s.clone()],
        Expr::Const(v) => vec![format!("_v_const_{v}_{pos}")],
        Expr::Call { func, .. } => vec![format!("_v_fun_{}_{pos}", func.name)],
        Expr::External { name, .. } => vec![format!("_v_fun_{name}_{pos}")],
        Expr::Case { .. } => vec![format!("_v_case_{pos}")],
        Expr::List(l) => vec![format!("_v_list_{}_{pos}", l.len())],
        Expr::Arith(op, ..) => vec![format!(
            "_v_op_{}_{pos}",
            match op {
                ArithOp::Add => "+",
                ArithOp::Sub => "-",
                ArithOp::Mul => "*",
                ArithOp::Div => "/",
                ArithOp::IntDiv => "div",
                ArithOp::Mod => "mod",
            }
        )],
        Expr::Cmp(..) | Expr::And(..) | Expr::Or(..) | Expr::Not(..) | Expr::In { .. } => {
            vec![format!("_v_op_cmp_{pos}")]
        }
        _ => vec![format!("_v_unknown_{pos}")],
    }
}

impl Planner<'_> {
    fn columns(
        &mut self,
        items: Vec<SelectItem>,
        locals: &[&str],
    ) -> Result<Vec<Column>, ParseError> {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                SelectItem::Wildcard(_) => out.push(Column::Wildcard),
                SelectItem::UnnamedExpr(e) => {
                    let expr = self.expr(&e, locals, 0)?;
                    let key = default_key(&expr, i + 1);
                    out.push(Column::Expr { expr, key });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let expr = self.expr(&expr, locals, 0)?;
                    out.push(Column::Expr {
                        expr,
                        key: vec![alias.value],
                    });
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let loc = match &kind {
                        sqlparser::ast::SelectItemQualifiedWildcardKind::ObjectName(n) => {
                            n.span().start
                        }
                        sqlparser::ast::SelectItemQualifiedWildcardKind::Expr(e) => loc_of(e),
                    };
                    return Err(err(
                        loc,
                        "`x.*` is not supported, use `*` or name the fields",
                    ));
                }
                SelectItem::ExprWithAliases { expr, .. } => {
                    return Err(err(loc_of(&expr), "expected a single alias after AS"));
                }
            }
        }
        Ok(out)
    }

    fn check_root(&mut self, ident: &Ident, locals: &[&str]) -> Result<(), ParseError> {
        let name = ident.value.as_str();
        if locals.contains(&name) || self.aliases.contains(name) {
            return Ok(());
        }
        if self.sources.iter().any(|s| s.fields().contains(&name)) {
            return Ok(());
        }
        let mut valid: Vec<&str> = Vec::new();
        for s in self.sources {
            for f in s.fields() {
                if !valid.contains(f) {
                    valid.push(f);
                }
            }
        }
        valid.extend(locals.iter().copied());
        Err(err(
            ident.span.start,
            format!(
                "unknown field `{name}` for FROM {}; expected one of: {}",
                self.from_text,
                valid.join(", ")
            ),
        ))
    }

    fn var(&mut self, idents: &[Ident], locals: &[&str]) -> Result<Expr, ParseError> {
        let (first, rest) = idents
            .split_first()
            .ok_or_else(|| err(Location { line: 0, column: 0 }, "empty identifier"))?;
        self.check_root(first, locals)?;
        if first.value == "payload" && !rest.is_empty() && !locals.contains(&"payload") {
            self.reads_payload_json = true;
        }
        Ok(Expr::Var {
            root: first.value.clone(),
            path: rest.iter().map(|i| Seg::Key(i.value.clone())).collect(),
        })
    }

    fn expr(&mut self, e: &SqlExpr, locals: &[&str], depth: usize) -> Result<Expr, ParseError> {
        if depth > MAX_DEPTH {
            return Err(err(self.last_loc, "expression nested too deeply"));
        }
        match e {
            SqlExpr::Identifier(id) => self.last_loc = id.span.start,
            SqlExpr::Value(v) => self.last_loc = v.span.start,
            _ => {}
        }
        let d = depth + 1;
        Ok(match e {
            SqlExpr::Identifier(id) => self.var(std::slice::from_ref(id), locals)?,
            SqlExpr::CompoundIdentifier(ids) => self.var(ids, locals)?,
            SqlExpr::CompoundFieldAccess { root, access_chain } => {
                let mut path = Vec::with_capacity(access_chain.len());
                for a in access_chain {
                    path.push(match a {
                        AccessExpr::Dot(SqlExpr::Identifier(id)) => Seg::Key(id.value.clone()),
                        AccessExpr::Dot(SqlExpr::Value(v)) => match &v.value {
                            SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => {
                                Seg::Key(s.clone())
                            }
                            SqlValue::Number(n, _) => Seg::Key(n.clone()),
                            _ => return Err(err(v.span.start, "expected a key after `.`")),
                        },
                        AccessExpr::Dot(other) => {
                            return Err(err(loc_of(other), "expected a key after `.`"))
                        }
                        AccessExpr::Subscript(Subscript::Index { index }) => {
                            Seg::Index(self.expr(index, locals, d)?)
                        }
                        AccessExpr::Subscript(Subscript::Slice { .. }) => {
                            return Err(err(loc_of(e), "array slices are not supported"))
                        }
                    });
                }
                match root.as_ref() {
                    SqlExpr::Identifier(id) => {
                        let Expr::Var { root, path: mut p0 } =
                            self.var(std::slice::from_ref(id), locals)?
                        else {
                            return Err(err(id.span.start, "expected a field"));
                        };
                        if root == "payload" && !path.is_empty() && !locals.contains(&"payload") {
                            self.reads_payload_json = true;
                        }
                        p0.extend(path);
                        Expr::Var { root, path: p0 }
                    }
                    SqlExpr::CompoundIdentifier(ids) => {
                        let Expr::Var { root, path: mut p0 } = self.var(ids, locals)? else {
                            return Err(err(loc_of(e), "expected a field"));
                        };
                        p0.extend(path);
                        Expr::Var { root, path: p0 }
                    }
                    other => Expr::Access {
                        base: Box::new(self.expr(other, locals, d)?),
                        path,
                    },
                }
            }
            SqlExpr::Value(v) => Expr::Const(literal(&v.value, v.span.start)?),
            SqlExpr::Nested(inner) => self.expr(inner, locals, d)?,
            SqlExpr::UnaryOp { op, expr } => {
                let inner = self.expr(expr, locals, d)?;
                match op {
                    UnaryOperator::Plus => inner,
                    UnaryOperator::Minus => match inner {
                        Expr::Const(Value::Int(i)) => match i.checked_neg() {
                            Some(n) => Expr::Const(Value::Int(n)),
                            None => return Err(err(loc_of(e), "numeric literal out of range")),
                        },
                        Expr::Const(Value::Float(f)) => Expr::Const(Value::Float(-f)),
                        other => Expr::Neg(Box::new(other)),
                    },
                    UnaryOperator::Not => Expr::Not(Box::new(inner)),
                    other => {
                        return Err(err(
                            loc_of(e),
                            format!("unsupported unary operator `{other}`"),
                        ))
                    }
                }
            }
            SqlExpr::BinaryOp { left, op, right } => {
                enum B {
                    A(ArithOp),
                    C(CmpOp),
                    And,
                    Or,
                }
                let b = match op {
                    BinaryOperator::Plus => B::A(ArithOp::Add),
                    BinaryOperator::Minus => B::A(ArithOp::Sub),
                    BinaryOperator::Multiply => B::A(ArithOp::Mul),
                    BinaryOperator::Divide => B::A(ArithOp::Div),
                    BinaryOperator::DuckIntegerDivide | BinaryOperator::MyIntegerDivide => {
                        B::A(ArithOp::IntDiv)
                    }
                    BinaryOperator::Modulo => B::A(ArithOp::Mod),
                    BinaryOperator::Eq => B::C(CmpOp::Eq),
                    BinaryOperator::NotEq => B::C(CmpOp::Ne),
                    BinaryOperator::Lt => B::C(CmpOp::Lt),
                    BinaryOperator::LtEq => B::C(CmpOp::Le),
                    BinaryOperator::Gt => B::C(CmpOp::Gt),
                    BinaryOperator::GtEq => B::C(CmpOp::Ge),
                    BinaryOperator::PGRegexMatch => B::C(CmpOp::TopicMatch),
                    BinaryOperator::And => B::And,
                    BinaryOperator::Or => B::Or,
                    other => {
                        return Err(err(
                            left.span().end,
                            format!("unsupported operator `{other}`"),
                        ))
                    }
                };
                let l = Box::new(self.expr(left, locals, d)?);
                let r = Box::new(self.expr(right, locals, d)?);
                match b {
                    B::A(o) => Expr::Arith(o, l, r),
                    B::C(o) => Expr::Cmp(o, l, r),
                    B::And => Expr::And(l, r),
                    B::Or => Expr::Or(l, r),
                }
            }
            SqlExpr::InList {
                expr,
                list,
                negated,
            } => Expr::In {
                expr: Box::new(self.expr(expr, locals, d)?),
                list: list
                    .iter()
                    .map(|x| self.expr(x, locals, d))
                    .collect::<Result<_, _>>()?,
                negated: *negated,
            },
            SqlExpr::IsNull(x) => Expr::IsNull {
                expr: Box::new(self.expr(x, locals, d)?),
                negated: false,
            },
            SqlExpr::IsNotNull(x) => Expr::IsNull {
                expr: Box::new(self.expr(x, locals, d)?),
                negated: true,
            },
            SqlExpr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => Expr::Case {
                operand: match operand {
                    Some(o) => Some(Box::new(self.expr(o, locals, d)?)),
                    None => None,
                },
                whens: conditions
                    .iter()
                    .map(|CaseWhen { condition, result }| {
                        Ok((
                            self.expr(condition, locals, d)?,
                            self.expr(result, locals, d)?,
                        ))
                    })
                    .collect::<Result<_, ParseError>>()?,
                else_: match else_result {
                    Some(x) => Some(Box::new(self.expr(x, locals, d)?)),
                    None => None,
                },
            },
            SqlExpr::Array(arr) => Expr::List(
                arr.elem
                    .iter()
                    .map(|x| self.expr(x, locals, d))
                    .collect::<Result<_, _>>()?,
            ),
            SqlExpr::Function(f) => self.call(f, locals, d)?,
            other => {
                return Err(err(
                    loc_of(other),
                    format!("unsupported expression `{other}`"),
                ))
            }
        })
    }

    fn call(
        &mut self,
        f: &sqlparser::ast::Function,
        locals: &[&str],
        d: usize,
    ) -> Result<Expr, ParseError> {
        let loc = f.name.span().start;
        let name = f.name.to_string();
        if f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty() {
            return Err(err(loc, format!("unsupported syntax in call to `{name}`")));
        }
        let builtin = functions::lookup(&name);
        let external = match (builtin, self.ext) {
            (None, Some(ext)) => {
                let lower = name.to_ascii_lowercase();
                ext.arity(&lower)
                    .map(|(min, max)| (lower, min, max.unwrap_or(usize::MAX), ext.clone()))
            }
            _ => None,
        };
        let (fname, min, max) = match (builtin, &external) {
            (Some(f), _) => (f.name.to_string(), f.min, f.max),
            (None, Some((n, min, max, _))) => (n.clone(), *min, *max),
            (None, None) => return Err(err(loc, format!("unknown function `{name}`"))),
        };
        let sql_args: Vec<&SqlExpr> = match &f.args {
            FunctionArguments::None => Vec::new(),
            FunctionArguments::List(list) => {
                if list
                    .duplicate_treatment
                    .is_some_and(|t| t != DuplicateTreatment::All)
                    || !list.clauses.is_empty()
                {
                    return Err(err(loc, format!("unsupported syntax in call to `{name}`")));
                }
                let mut v = Vec::with_capacity(list.args.len());
                for a in &list.args {
                    match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => v.push(x),
                        _ => {
                            return Err(err(
                                loc,
                                format!("unsupported argument in call to `{name}`"),
                            ))
                        }
                    }
                }
                v
            }
            FunctionArguments::Subquery(_) => {
                return Err(err(loc, "subqueries are not supported"));
            }
        };
        let n = sql_args.len();
        if n < min || n > max {
            let expected = if min == max {
                format!("{} argument{}", min, if min == 1 { "" } else { "s" })
            } else if max == usize::MAX {
                format!(
                    "at least {} argument{}",
                    min,
                    if min == 1 { "" } else { "s" }
                )
            } else {
                format!("{} to {} arguments", min, max)
            };
            return Err(err(
                loc,
                format!("function `{}` expects {expected}, got {n}", fname),
            ));
        }
        let args: Vec<Expr> = sql_args
            .iter()
            .map(|x| self.expr(x, locals, d))
            .collect::<Result<_, _>>()?;
        let Some(func) = builtin else {
            let (name, _, _, ext) = external.ok_or_else(|| err(loc, "unresolved function"))?;
            return Ok(Expr::External { name, args, ext });
        };
        if func.name == "payload" && n == 1 {
            self.reads_payload_json = true;
        }
        let prepared = match func.prepare {
            Some((i, compile)) => match args.get(i) {
                Some(Expr::Const(v)) => Some(Box::new(
                    compile(v).map_err(|m| err(loc_of(sql_args[i]), m))?,
                )),
                _ => None,
            },
            None => None,
        };
        Ok(Expr::Call {
            func,
            args,
            prepared,
        })
    }
}

fn literal(v: &SqlValue, loc: Location) -> Result<Value, ParseError> {
    Ok(match v {
        SqlValue::Number(n, _) => match parse_num(n) {
            Some(num) => num_value(num).map_err(|m| err(loc, m))?,
            None => match n.parse::<f64>() {
                Ok(f) if f.is_finite() => num_value(Num::F(f)).map_err(|m| err(loc, m))?,
                _ => return Err(err(loc, format!("invalid number `{n}`"))),
            },
        },
        SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => Value::Str(s.clone()),
        SqlValue::Boolean(b) => Value::Bool(*b),
        // EMQX has no null literal: `null` is an unbound name, `undefined`.
        SqlValue::Null => Value::Undefined,
        other => return Err(err(loc, format!("unsupported literal `{other}`"))),
    })
}
