//! `jq(Program, Json[, TimeoutMs])`: EMQX's jq function, on jaq (jaq-core,
//! jaq-std, jaq-json).
//!
//! The program is compiled once, when the rule loads (a literal program;
//! a computed one is compiled per call). `Json` is a JSON text (a binary) or
//! any other value (encoded to JSON first, as EMQX does). The result is the
//! list of the program's outputs; an error or an exhausted budget fails the
//! rule for that message.
//!
//! **The budget.** A rule must not be able to hang or crash the broker, and
//! jaq has no fuel of its own (`def f: f; f` loops forever, `def f: 1 + f;
//! f` overflows the stack and aborts the process). So every definition's
//! body — the user's and the standard library's (`repeat`, `recurse`,
//! `while`, `until`, `walk`, ...) — is compiled as `_tick | body`, and
//! `range/3` (native in jaq) as `_range3(..) | _tick`. `_tick` is a native
//! filter that counts steps ([`MAX_STEPS`]), checks the deadline (the
//! `TimeoutMs` argument, [`DEFAULT_TIMEOUT`] by default, at most
//! [`MAX_TIMEOUT`]) and how deep the evaluation has gone into the stack
//! ([`MAX_STACK`]), and fails the program when one runs out. Every loop in
//! jq is a recursive definition or a `range`, so every loop ticks; so does
//! every output of an iteration that is not a definition: `.[]` (and every
//! other path with an iteration), `..`, each element a `reduce` / `foreach`
//! takes and each element an array construction `[f]` collects.
//!
//! **Memory.** A value can grow far faster than the steps that build it: a
//! string doubled forty times is a terabyte, `"x" * 1e11` one allocation of
//! 100 GB, and `[., .]` forty times a shared structure that `tojson`
//! expands to 2^40 elements. An allocation that fails aborts the process, so
//! sizes are checked *before* they can explode: every value the program
//! builds (array and object constructions, string interpolation, arithmetic,
//! the result of every native function) passes `_sized`, which counts its
//! units (1 per scalar or container, plus 1 per 8 bytes of text) and fails
//! the program past [`MAX_VALUE_UNITS`] for one value or [`MAX_CALL_UNITS`]
//! counted in the call; `l * r` goes through `_mul`, which refuses a string
//! repetition too large before allocating it, and `l += r` / `l *= r` are
//! rewritten as jq defines them (`r as $x | l |= . + $x`) so that they are
//! checked too. As every input of an operation was checked, one operation's
//! result is at most about twice the limit before it is checked itself.
//!
//! Left out, for the sandbox: `env` / `$ENV` (the broker's environment;
//! rules read `getenv`), `input` / `inputs`, `halt`, `halt_error` (they would
//! exit the broker), `debug`, `stderr`; no `import` / `include`.

use std::cell::Cell;
use std::time::{Duration, Instant};

use jaq_core::box_iter::box_once;
use jaq_core::compile::Lut;
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Def, Pattern, Term};
use jaq_core::load::{Arena, File, Loader};
use jaq_core::ops::Math;
use jaq_core::path::Part;
use jaq_core::{Bind, Compiler, Ctx, Cv, Error, Exn, Native, RcIter, ValXs};
use jaq_json::Val;

use super::args::{integer, text};
use super::{def_prepared, CallContext, CallResult, FuncDef, Prepared};
use crate::value::{Map, Value};

pub(super) const FUNCTIONS: &[FuncDef] = &[def_prepared("jq", 2, 3, jq, 0, prepare)];

/// Steps (definition calls and `range` elements) one call may take.
pub(crate) const MAX_STEPS: u64 = 1_000_000;
/// The timeout when the rule gives none (EMQX's default, 10 s, is far too
/// long to hold a publisher; a rule can ask for up to [`MAX_TIMEOUT`]).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// The largest timeout a rule may ask for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// Stack a call may use beyond where it started: rules run on the broker's
/// worker threads (2 MiB stacks), so deep recursion must stop well before
/// the end of the stack, which would abort the process.
pub(crate) const MAX_STACK: usize = 512 * 1024;
/// Outputs one call may produce.
const MAX_OUTPUTS: usize = 100_000;
/// Units one value may have: 1 per scalar or container, plus 1 per 8 bytes
/// of text (so 8 MiB of text, or about a million elements).
pub(crate) const MAX_VALUE_UNITS: u64 = 1 << 20;
/// Units one call may count over all the values it checks (the input
/// included); counting also bounds the time spent checking.
pub(crate) const MAX_CALL_UNITS: u64 = 16 << 20;

/// A compiled jq program (`Send + Sync`: no values inside).
pub(crate) struct Program {
    filter: jaq_core::Filter<Native<Val>>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("jq::Program")
    }
}

/// The budget of the call running on this thread.
struct Budget {
    steps: Cell<u64>,
    units: Cell<u64>,
    deadline: Cell<Option<Instant>>,
    stack_base: Cell<usize>,
    exhausted: Cell<Option<&'static str>>,
}

thread_local! {
    static BUDGET: Budget = const {
        Budget {
            steps: Cell::new(0),
            units: Cell::new(0),
            deadline: Cell::new(None),
            stack_base: Cell::new(0),
            exhausted: Cell::new(None),
        }
    };
}

/// Where this frame is on the stack (a local's address; no unsafe code).
#[inline(never)]
fn stack_position() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// One step: `Err` when a limit is reached.
fn step() -> Result<(), &'static str> {
    BUDGET.with(|b| {
        let n = b.steps.get() + 1;
        b.steps.set(n);
        let why = if n > MAX_STEPS {
            Some("budget exhausted (more than 1,000,000 steps)")
        } else if stack_position().abs_diff(b.stack_base.get()) > MAX_STACK {
            Some("budget exhausted (recursion too deep)")
        } else if n % 256 == 0 && b.deadline.get().is_some_and(|d| Instant::now() > d) {
            Some("budget exhausted (timed out)")
        } else {
            None
        };
        if let Some(w) = why {
            b.exhausted.set(Some(w));
            return Err(w);
        }
        Ok(())
    })
}

/// The native `_tick` filter: passes its input on, or fails when the
/// budget is exhausted.
fn tick<'a>(_: &'a Lut<Native<Val>>, cv: Cv<'a, Val>) -> ValXs<'a, Val> {
    match step() {
        Ok(()) => box_once(Ok(cv.1)),
        Err(why) => box_once(Err(Exn::from(Error::str(format!("jq: {why}"))))),
    }
}

/// Counts `v`'s units against the budget: `Err` past one of the limits.
/// Walks with a stack of its own (no recursion: values can nest deeply) and
/// stops as soon as a limit is passed, so a huge shared structure costs no
/// more than the limit to look at.
fn charge(v: &Val) -> Result<(), &'static str> {
    let mut n: u64 = 0;
    let mut stack: Vec<&Val> = vec![v];
    while let Some(v) = stack.pop() {
        n += 1;
        match v {
            Val::Str(s) | Val::Num(s) => n += s.len() as u64 / 8,
            Val::Arr(a) => stack.extend(a.iter()),
            Val::Obj(o) => {
                for (k, x) in o.iter() {
                    n += 1 + k.len() as u64 / 8;
                    stack.push(x);
                }
            }
            Val::Null | Val::Bool(_) | Val::Int(_) | Val::Float(_) => {}
        }
        if n > MAX_VALUE_UNITS {
            break;
        }
    }
    BUDGET.with(|b| {
        let total = b.units.get().saturating_add(n);
        b.units.set(total);
        let why = if n > MAX_VALUE_UNITS {
            Some("budget exhausted (a value larger than 8 MiB of text or a million elements)")
        } else if total > MAX_CALL_UNITS {
            Some("budget exhausted (more than 128 MiB of values built in one call)")
        } else {
            None
        };
        match why {
            Some(w) => {
                b.exhausted.set(Some(w));
                Err(w)
            }
            None => Ok(()),
        }
    })
}

fn exhausted<'a>(why: &str) -> ValXs<'a, Val> {
    box_once(Err(Exn::from(Error::str(format!("jq: {why}")))))
}

/// The native `_sized` filter: passes its input on once its size is
/// counted, or fails (see the module doc).
fn sized<'a>(_: &'a Lut<Native<Val>>, cv: Cv<'a, Val>) -> ValXs<'a, Val> {
    match charge(&cv.1) {
        Ok(()) => box_once(Ok(cv.1)),
        Err(why) => exhausted(why),
    }
}

/// A repetition count, when `v` is a number jq would repeat a string by.
fn count(v: &Val) -> Option<u64> {
    match v {
        Val::Int(i) => u64::try_from(*i).ok(),
        Val::Num(n) => n.parse::<u64>().ok(),
        _ => None,
    }
}

/// The native `_mul($a; $b)`: `$a * $b`, refusing a string repetition
/// whose result would be over the limit before it is made.
fn mul<'a>(_: &'a Lut<Native<Val>>, mut cv: Cv<'a, Val>) -> ValXs<'a, Val> {
    let b = cv.0.pop_var();
    let a = cv.0.pop_var();
    let repeated = match (&a, &b) {
        (Val::Str(s), n) | (n, Val::Str(s)) => count(n).map(|k| (s.len() as u64, k)),
        _ => None,
    };
    if let Some((len, k)) = repeated {
        if len.saturating_mul(k) / 8 > MAX_VALUE_UNITS {
            let why = "budget exhausted (a value larger than 8 MiB of text or a million elements)";
            BUDGET.with(|b| b.exhausted.set(Some(why)));
            return exhausted(why);
        }
    }
    match a * b {
        Ok(v) => match charge(&v) {
            Ok(()) => box_once(Ok(v)),
            Err(why) => exhausted(why),
        },
        Err(e) => box_once(Err(Exn::from(e))),
    }
}

/// What a denied native does instead (see the module doc).
fn denied<'a>(_: &'a Lut<Native<Val>>, _: Cv<'a, Val>) -> ValXs<'a, Val> {
    box_once(Err(Exn::from(Error::str(
        "jq: env, input(s), halt, halt_error, debug and stderr are not available in rules",
    ))))
}

/// `_tick | body`.
fn ticked(body: Term<&str>) -> Term<&str> {
    Term::Pipe(
        Box::new(Term::Call("_tick", Vec::new())),
        None,
        Box::new(body),
    )
}

/// `l | r`.
fn pipe<'s>(l: Term<&'s str>, r: Term<&'s str>) -> Term<&'s str> {
    Term::Pipe(Box::new(l), None, Box::new(r))
}

/// `t | name` in place of `t`.
fn then(t: &mut Term<&str>, name: &'static str) {
    let inner = std::mem::take(t);
    *t = pipe(inner, Term::Call(name, Vec::new()));
}

/// The variable of the `l op= r` rewrite (not a name a program can write:
/// jq variables are identifiers).
const UPDATE_VAR: &str = "$__midge update";

/// Makes every definition, iteration and constructed value inside `t` tick
/// or be counted (see the module doc). `natives` are the names of the
/// native functions, whose results are counted.
fn instrument<'s>(t: &mut Term<&'s str>, natives: &Natives) {
    let each = |ts: &mut Vec<Term<&'s str>>| ts.iter_mut().for_each(|x| instrument(x, natives));
    match t {
        Term::Id | Term::Num(_) | Term::Var(_) | Term::Break(_) => {}
        Term::Recurse => then(t, "_tick"),
        Term::Str(fmt, parts) => {
            let mut built = fmt.is_some();
            for p in parts {
                if let StrPart::Term(x) = p {
                    instrument(x, natives);
                    built = true;
                }
            }
            if built {
                then(t, "_sized");
            }
        }
        Term::Arr(x) => {
            if let Some(x) = x {
                instrument(x, natives);
                then(x, "_tick");
            }
            then(t, "_sized");
        }
        Term::Obj(kvs) => {
            for (k, v) in kvs {
                instrument(k, natives);
                if let Some(v) = v {
                    instrument(v, natives);
                }
            }
            then(t, "_sized");
        }
        Term::Neg(x) | Term::Label(_, x) => instrument(x, natives),
        Term::Pipe(l, pat, r) => {
            instrument(l, natives);
            if let Some(p) = pat {
                instrument_pattern(p, natives);
            }
            instrument(r, natives);
        }
        Term::BinOp(l, op, r) => {
            instrument(l, natives);
            instrument(r, natives);
            match *op {
                BinaryOp::Math(Math::Mul) => {
                    let (l, r) = (std::mem::take(&mut **l), std::mem::take(&mut **r));
                    *t = Term::Call("_times", vec![l, r]);
                }
                BinaryOp::Math(_) => then(t, "_sized"),
                BinaryOp::UpdateMath(m) => {
                    // `l op= r` is `r as $x | l |= . op $x` (jq's manual).
                    let mut by = Term::BinOp(
                        Box::new(Term::Id),
                        BinaryOp::Math(m),
                        Box::new(Term::Var(UPDATE_VAR)),
                    );
                    instrument(&mut by, natives);
                    let (l, r) = (std::mem::take(&mut **l), std::mem::take(&mut **r));
                    let update = Term::BinOp(Box::new(l), BinaryOp::Update, Box::new(by));
                    *t = Term::Pipe(
                        Box::new(r),
                        Some(Pattern::Var(UPDATE_VAR)),
                        Box::new(update),
                    );
                }
                _ => {}
            }
        }
        Term::Fold(_, x, pat, args) => {
            instrument(x, natives);
            then(x, "_tick");
            instrument_pattern(pat, natives);
            each(args);
        }
        Term::TryCatch(x, c) => {
            instrument(x, natives);
            if let Some(c) = c {
                instrument(c, natives);
            }
        }
        Term::IfThenElse(branches, els) => {
            for (c, b) in branches {
                instrument(c, natives);
                instrument(b, natives);
            }
            if let Some(e) = els {
                instrument(e, natives);
            }
        }
        Term::Def(defs, body) => {
            for d in defs.iter_mut() {
                instrument_def(d, natives);
            }
            instrument(body, natives);
        }
        Term::Call(name, args) => {
            each(args);
            if natives.contains(*name) {
                then(t, "_sized");
            }
        }
        Term::Path(x, path) => {
            instrument(x, natives);
            let mut iterates = false;
            for (part, _) in path.0.iter_mut() {
                match part {
                    Part::Index(i) => instrument(i, natives),
                    Part::Range(a, b) => {
                        iterates |= a.is_none() && b.is_none();
                        if let Some(a) = a {
                            instrument(a, natives);
                        }
                        if let Some(b) = b {
                            instrument(b, natives);
                        }
                    }
                }
            }
            if iterates {
                then(t, "_tick");
            }
        }
    }
}

fn instrument_pattern(p: &mut Pattern<&str>, natives: &Natives) {
    match p {
        Pattern::Var(_) => {}
        Pattern::Arr(ps) => ps.iter_mut().for_each(|p| instrument_pattern(p, natives)),
        Pattern::Obj(kvs) => {
            for (k, v) in kvs {
                instrument(k, natives);
                instrument_pattern(v, natives);
            }
        }
    }
}

fn instrument_def(d: &mut Def<&str>, natives: &Natives) {
    instrument(&mut d.body, natives);
    let body = std::mem::take(&mut d.body);
    d.body = ticked(body);
}

/// Names of the native functions (from jaq-std and jaq-json).
type Natives = std::collections::HashSet<&'static str>;

/// Natives a rule may not call (see the module doc).
const DENIED: &[&str] = &[
    "env",
    "halt",
    "halt_error",
    "input",
    "inputs",
    "debug",
    "stderr",
];

/// `range/3` on top of the renamed native: every element ticks; and
/// `l * r` as `_times(l; r)`, with jaq's order of the pairs (`l` outer).
const PRELUDE: &str = "def range($from; $upto; $by): _range3($from; $upto; $by) | _tick; \
                       def _times(f; g): f as $a | g as $b | _mul($a; $b);";

/// Compiles `code` with the instrumented standard library.
pub(crate) fn compile(code: &str) -> Result<Program, String> {
    // First the program as it is, for errors that point into it.
    let arena = Arena::default();
    let plain = Loader::new(jaq_std::defs().chain(jaq_json::defs()));
    plain
        .load(&arena, File { code, path: () })
        .map_err(|errs| {
            format!(
                "jq: cannot parse the program ({} error(s)): {code:?}",
                errs.len()
            )
        })?;

    let user = jaq_core::load::parse(code, |p| p.term())
        .ok_or_else(|| "jq: cannot parse the program".to_owned())?;
    let ours = jaq_core::load::parse(PRELUDE, |p| p.defs()).unwrap_or_default();
    let natives: Natives = jaq_std::funs::<Val>()
        .chain(jaq_json::funs())
        .map(|(name, _, _)| name)
        .filter(|name| *name != "range")
        .collect();
    let own = ours.len();
    let mut prelude: Vec<Def<&str>> = ours
        .into_iter()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .collect();
    for d in &mut prelude[own..] {
        instrument_def(d, &natives);
    }
    let mut main = user;
    instrument(&mut main, &natives);
    prelude.push(Def {
        name: "_main",
        args: Vec::new(),
        body: main,
    });
    let loader = Loader::new(prelude);
    let modules = loader
        .load(
            &arena,
            File {
                code: "_main",
                path: (),
            },
        )
        .map_err(|errs| format!("jq: cannot load the program ({} error(s))", errs.len()))?;
    let natives = jaq_std::funs()
        .chain(jaq_json::funs())
        .map(|(name, args, f)| {
            if name == "range" && args.len() == 3 {
                ("_range3", args, f)
            } else if DENIED.contains(&name) {
                (name, args, Native::new(denied))
            } else {
                (name, args, f)
            }
        })
        .chain([
            (
                "_tick",
                Box::new([]) as Box<[Bind]>,
                // In a path (`.[] |= f` once `.[]` ticks): the step, then
                // the update of the value itself.
                Native::new(tick).with_update(|_, cv, f| match step() {
                    Ok(()) => f(cv.1),
                    Err(why) => exhausted(why),
                }),
            ),
            (
                "_sized",
                Box::new([]),
                Native::new(sized).with_update(|_, cv, f| match charge(&cv.1) {
                    Ok(()) => f(cv.1),
                    Err(why) => exhausted(why),
                }),
            ),
            ("_mul", jaq_std::v(2), Native::new(mul)),
        ]);
    let filter = Compiler::default()
        .with_funs(natives)
        .compile(modules)
        .map_err(|errs| {
            let names: Vec<String> = errs
                .iter()
                .flat_map(|(_, es)| es.iter().map(|(name, _)| format!("`{}`", name)))
                .collect();
            format!("jq: undefined in the program: {}", names.join(", "))
        })?;
    Ok(Program { filter })
}

fn prepare(v: &Value) -> Result<Prepared, String> {
    match v.as_str() {
        Some(code) => compile(code).map(|p| Prepared::Jq(Box::new(p))),
        None => Err("jq: the program must be a string".into()),
    }
}

/// Our value as jaq's.
fn to_jaq(v: &Value) -> Result<Val, String> {
    Ok(match v {
        Value::Undefined | Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Int(i) => isize::try_from(*i).map_or(Val::Float(*i as f64), Val::Int),
        Value::Float(f) => Val::Float(*f),
        Value::Str(s) => Val::from(s.clone()),
        Value::Bytes(_) => match v.as_str() {
            Some(s) => Val::from(s.to_owned()),
            None => return Err("jq: the input is binary data that is not UTF-8".into()),
        },
        Value::Array(a) => Val::Arr(std::rc::Rc::new(
            a.iter().map(to_jaq).collect::<Result<_, _>>()?,
        )),
        Value::Map(m) => {
            let pairs = m
                .iter()
                .map(|(k, x)| Ok((Val::from(k.clone()), to_jaq(x)?)))
                .collect::<Result<Vec<_>, String>>()?;
            <Val as jaq_core::ValT>::from_map(pairs).map_err(|e| format!("jq: {e}"))?
        }
    })
}

/// jaq's value as ours. An integral float jq would print without a
/// fraction (`10 * 1.8 + 32` is `50`) becomes an integer, as EMQX's result
/// (jq's output text decoded) does.
fn from_jaq(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Int(i) => Value::Int(*i as i64),
        Val::Float(f) => {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Value::Int(*f as i64)
            } else {
                Value::from(*f)
            }
        }
        Val::Num(n) => Value::from_json(n.as_bytes()).unwrap_or(Value::Null),
        Val::Str(s) => Value::Str(s.as_ref().clone()),
        Val::Arr(a) => Value::Array(a.iter().map(from_jaq).collect()),
        Val::Obj(o) => Value::Map(
            o.iter()
                .map(|(k, x)| (k.as_ref().clone(), from_jaq(x)))
                .collect::<Map>(),
        ),
    }
}

/// Runs `program` on `input` within the budget.
pub(crate) fn run(program: &Program, input: &Value, timeout: Duration) -> CallResult {
    let input = match input {
        Value::Str(_) | Value::Bytes(_) => {
            let text = input
                .as_str()
                .ok_or("jq: the input is binary data that is not UTF-8")?;
            let parsed = Value::from_json(text.as_bytes())
                .map_err(|e| format!("jq: the input is not JSON: {e}"))?;
            to_jaq(&parsed)?
        }
        other => to_jaq(other)?,
    };
    BUDGET.with(|b| {
        b.steps.set(0);
        b.units.set(0);
        b.deadline.set(Some(Instant::now() + timeout));
        b.stack_base.set(stack_position());
        b.exhausted.set(None);
    });
    if let Err(why) = charge(&input) {
        return Err(format!("jq: the input is too large: {why}"));
    }
    let inputs = RcIter::new(core::iter::empty());
    let mut out = Vec::new();
    let mut failure = None;
    for r in program.filter.run((Ctx::new([], &inputs), input)) {
        match r {
            Ok(v) => {
                if out.len() >= MAX_OUTPUTS {
                    failure = Some(format!("jq: more than {MAX_OUTPUTS} outputs"));
                    break;
                }
                out.push(from_jaq(&v));
            }
            Err(e) => {
                failure = Some(match BUDGET.with(|b| b.exhausted.get()) {
                    Some(why) => format!("jq: {why}"),
                    None => format!("jq: {e}"),
                });
                break;
            }
        }
        if let Err(why) = step() {
            failure = Some(format!("jq: {why}"));
            break;
        }
    }
    BUDGET.with(|b| b.deadline.set(None));
    match failure {
        Some(f) => Err(f),
        None => Ok(Value::Array(out)),
    }
}

fn jq(a: &[Value], c: &CallContext<'_, '_>) -> CallResult {
    let timeout = match a.get(2) {
        Some(_) => {
            let ms = integer(a, 2, "jq")?;
            if ms <= 0 {
                return Err("jq: the timeout must be a positive number of milliseconds".into());
            }
            Duration::from_millis(ms as u64).min(MAX_TIMEOUT)
        }
        None => DEFAULT_TIMEOUT,
    };
    match c.prepared {
        Some(Prepared::Jq(p)) => run(p, &a[1], timeout),
        _ => run(&compile(text(a, 0, "jq")?)?, &a[1], timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jq(code: &str, input: &str) -> CallResult {
        let p = compile(code)?;
        run(&p, &Value::from(input), DEFAULT_TIMEOUT)
    }

    #[test]
    fn documented_examples() {
        let v = jq(
            ".temperature,(.temperature * 1.8 + 32)",
            r#"{"temperature": 10}"#,
        )
        .unwrap();
        assert_eq!(v.to_json(), "[10,50]");
        let v = jq("[limit(3; repeat(1))]", "null").unwrap();
        assert_eq!(v.to_json(), "[[1,1,1]]");
        let v = jq("[range(5)], [range(0; 10; 3)]", "null").unwrap();
        assert_eq!(v.to_json(), "[[0,1,2,3,4],[0,3,6,9]]");
        // Long but bounded loops are fine.
        let p = compile("[limit(5000; repeat(1))] | length, ([range(50000)] | length)").unwrap();
        let v = run(&p, &Value::Null, MAX_TIMEOUT).unwrap();
        assert_eq!(v.to_json(), "[5000,50000]");
    }

    #[test]
    fn runaway_programs_are_stopped_not_fatal() {
        for code in [
            "def f: f; f",
            "def f: 1 + f; f",
            "last(repeat(1))",
            "last(range(1e18))",
            "[recurse(. + 1)] | length",
            "reduce range(1e18) as $x (0; . + 1)",
        ] {
            let e = jq(code, "0").unwrap_err();
            assert!(e.contains("jq: budget exhausted"), "{code}: {e}");
        }
    }

    /// Programs that build a value far faster than they take steps, or
    /// iterate without calling a definition: each fails the rule with the
    /// budget named, instead of aborting the broker on a failed allocation
    /// or holding its thread past the timeout.
    #[test]
    fn values_that_explode_are_stopped_before_they_are_made() {
        for (code, what) in [
            (r#""x" * 100000000000"#, "larger than 8 MiB"),
            (r#"100000000000 * "xy""#, "larger than 8 MiB"),
            (r#"reduce range(40) as $i ("a"; . + .) | length"#, "larger than 8 MiB"),
            (r#"reduce range(40) as $i ("a"; . += .) | length"#, "larger than 8 MiB"),
            (r#"reduce range(40) as $i ("a"; "\(.)\(.)") | length"#, "larger than 8 MiB"),
            (r#"reduce range(40) as $i ("a"; tojson) | length"#, "larger than 8 MiB"),
            ("reduce range(40) as $i (0; [., .]) | tojson | length", "larger than 8 MiB"),
            ("reduce range(40) as $i (0; {a: ., b: .}) | tojson | length", "larger than 8 MiB"),
            ("reduce range(40) as $i ([0]; [.[], .[]]) | length", "budget exhausted"),
            ("reduce range(40) as $i ([0]; . + .) | length", "budget exhausted"),
            ("reduce range(30) as $i ([0]; [.[], .[]]) | [.[] | .] | length", "budget exhausted"),
            ("[range(1000)] | [.[] as $a | .[] as $b | .[] | $a] | length", "budget exhausted"),
            ("[range(1000)] as $r | ($r[] | $r[] | $r[] | empty), 1", "budget exhausted"),
            ("[range(1000)] | reduce .[] as $a (0; reduce $a as $b (.; . + 1)) | [.., .., ..] | length", "ok"),
            (
                r#"[limit(100000; repeat("x" * 1000000))] | length"#,
                "budget exhausted",
            ),
        ] {
            let r = jq(code, "0");
            if what == "ok" {
                assert!(r.is_ok(), "{code}: {r:?}");
                continue;
            }
            let e = r.unwrap_err();
            assert!(e.contains("jq: budget exhausted") && e.contains(what), "{code}: {e}");
        }
    }

    /// The rewrites keep jq's meaning: updates through iterations, `op=`,
    /// multiplication of every kind, interpolation.
    #[test]
    fn the_rewrites_keep_the_meaning() {
        for (code, input, out) in [
            (".[] |= . + 1", "[1,2]", "[[2,3]]"),
            (
                ".a += 2 | .b *= 3",
                r#"{"a":1,"b":2}"#,
                r#"[{"a":3,"b":6}]"#,
            ),
            (".[] += 1", "[1,2]", "[[2,3]]"),
            (
                r#"("ab" * 3), (2 * 3), (1.5 * 2), ({"a":{"b":1}} * {"a":{"c":2}})"#,
                "null",
                r#"["ababab",6,3,{"a":{"b":1,"c":2}}]"#,
            ),
            (r#""ab" * 0"#, "null", "[null]"),
            ("[(1,2) * (10,20)]", "null", "[[10,20,20,40]]"),
            (r#""v=\(.a)""#, r#"{"a":1}"#, r#"["v=1"]"#),
            ("[..] | length", r#"{"a":[1,2]}"#, "[4]"),
            ("[paths]", r#"{"a":[1]}"#, r#"[[["a"],["a",0]]]"#),
            ("reduce .[] as $x (0; . + $x)", "[1,2,3]", "[6]"),
            ("[foreach .[] as $x (0; . + $x)]", "[1,2,3]", "[[1,3,6]]"),
            ("to_entries | map(.value) | add", r#"{"a":1,"b":2}"#, "[3]"),
        ] {
            let v = jq(code, input).unwrap_or_else(|e| panic!("{code}: {e}"));
            assert_eq!(v.to_json(), out, "{code}");
        }
    }

    #[test]
    fn sandbox() {
        for code in ["$ENV", "import \"x\" as x; ."] {
            assert!(compile(code).is_err(), "{code} compiled");
        }
        for code in [
            "env",
            "halt",
            "halt_error",
            "input",
            "[inputs]",
            "debug",
            "stderr",
        ] {
            let e = jq(code, "1").unwrap_err();
            assert!(e.contains("not available in rules"), "{code}: {e}");
        }
    }

    #[test]
    fn program_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Program>();
    }
}
