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
//! jq is a recursive definition or a `range`, so every loop ticks.
//! What it does not bound: the memory of a single value built in few steps
//! (a string doubled thirty times is a gigabyte); see FUNCTIONS.md.
//!
//! Left out, for the sandbox: `env` / `$ENV` (the broker's environment;
//! rules read `getenv`), `input` / `inputs`, `halt`, `halt_error` (they would
//! exit the broker), `debug`, `stderr`; no `import` / `include`.

use std::cell::Cell;
use std::time::{Duration, Instant};

use jaq_core::box_iter::box_once;
use jaq_core::compile::Lut;
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{Def, Pattern, Term};
use jaq_core::load::{Arena, File, Loader};
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
    deadline: Cell<Option<Instant>>,
    stack_base: Cell<usize>,
    exhausted: Cell<Option<&'static str>>,
}

thread_local! {
    static BUDGET: Budget = const {
        Budget {
            steps: Cell::new(0),
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

/// Makes every definition inside `t` tick.
fn instrument(t: &mut Term<&str>) {
    let each = |ts: &mut Vec<Term<&str>>| ts.iter_mut().for_each(instrument);
    match t {
        Term::Id | Term::Recurse | Term::Num(_) | Term::Var(_) | Term::Break(_) => {}
        Term::Str(_, parts) => {
            for p in parts {
                if let StrPart::Term(x) = p {
                    instrument(x);
                }
            }
        }
        Term::Arr(x) => {
            if let Some(x) = x {
                instrument(x);
            }
        }
        Term::Obj(kvs) => {
            for (k, v) in kvs {
                instrument(k);
                if let Some(v) = v {
                    instrument(v);
                }
            }
        }
        Term::Neg(x) | Term::Label(_, x) => instrument(x),
        Term::Pipe(l, pat, r) => {
            instrument(l);
            if let Some(p) = pat {
                instrument_pattern(p);
            }
            instrument(r);
        }
        Term::BinOp(l, _, r) => {
            instrument(l);
            instrument(r);
        }
        Term::Fold(_, x, pat, args) => {
            instrument(x);
            instrument_pattern(pat);
            each(args);
        }
        Term::TryCatch(x, c) => {
            instrument(x);
            if let Some(c) = c {
                instrument(c);
            }
        }
        Term::IfThenElse(branches, els) => {
            for (c, b) in branches {
                instrument(c);
                instrument(b);
            }
            if let Some(e) = els {
                instrument(e);
            }
        }
        Term::Def(defs, body) => {
            for d in defs.iter_mut() {
                instrument_def(d);
            }
            instrument(body);
        }
        Term::Call(_, args) => each(args),
        Term::Path(x, path) => {
            instrument(x);
            for (part, _) in path.0.iter_mut() {
                match part {
                    Part::Index(i) => instrument(i),
                    Part::Range(a, b) => {
                        if let Some(a) = a {
                            instrument(a);
                        }
                        if let Some(b) = b {
                            instrument(b);
                        }
                    }
                }
            }
        }
    }
}

fn instrument_pattern(p: &mut Pattern<&str>) {
    match p {
        Pattern::Var(_) => {}
        Pattern::Arr(ps) => ps.iter_mut().for_each(instrument_pattern),
        Pattern::Obj(kvs) => {
            for (k, v) in kvs {
                instrument(k);
                instrument_pattern(v);
            }
        }
    }
}

fn instrument_def(d: &mut Def<&str>) {
    instrument(&mut d.body);
    let body = std::mem::take(&mut d.body);
    d.body = ticked(body);
}

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

/// `range/3` on top of the renamed native: every element ticks.
const RANGE3: &str = "def range($from; $upto; $by): _range3($from; $upto; $by) | _tick;";

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
    let range3 = jaq_core::load::parse(RANGE3, |p| p.defs()).unwrap_or_default();
    let mut prelude: Vec<Def<&str>> = range3
        .into_iter()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .collect();
    for d in &mut prelude {
        if d.name != "range" || d.args.len() != 3 {
            instrument_def(d);
        }
    }
    let mut main = user;
    instrument(&mut main);
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
        .chain(std::iter::once((
            "_tick",
            Box::new([]) as Box<[Bind]>,
            Native::new(tick),
        )));
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
        b.deadline.set(Some(Instant::now() + timeout));
        b.stack_base.set(stack_position());
        b.exhausted.set(None);
    });
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
