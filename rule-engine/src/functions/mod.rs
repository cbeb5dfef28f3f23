//! The SQL function catalogue (EMQX names and semantics), one module per
//! family as `FUNCTIONS.md` lists them:
//!
//! | module | family |
//! |---|---|
//! | `message` | message accessors (`topic()`, `payload()`, `contains_topic`, ...) |
//! | `math` | arithmetic and math (`abs`, `div`, `sqrt`, ...) |
//! | `bits` | bit operations and bit sequences (`bitand`, `subbits`, `bytesize`) |
//! | `convert` | type conversion and checks (`str`, `int`, `bin2hexstr`, `is_null`, ...) |
//! | `strings` | string functions (`lower`, `split`, `sprintf`, `regex_*`, `unescape`) |
//! | `maps` | maps (`map_get`, `mget` with key paths, `map_size`, ...) |
//! | `arrays` | arrays (`nth`, `sublist`, `contains`, ...) |
//! | `hashing` | `md5`, `sha`, `sha256`, `hash` |
//! | `encoding` | base64, JSON |
//! | `compression` | `zip`/`unzip`, `gzip`/`gunzip`, `zip_compress`/`zip_uncompress` (flate2) |
//! | `time` | date and time |
//! | `misc` | `coalesce`, `coalesce_ne`, UUIDs, `getenv` |
//! | `sparkplug` | `sparkplug_decode`, `sparkplug_encode` (Sparkplug B, `proto/sparkplug_b.proto`, prost) |
//! | `jq` | `jq/2,3` (jaq: compiled at load, run within a step, time and stack budget) |
//!
//! Every call is resolved at load time to a [`FuncDef`] (name, arity range,
//! implementation, and what to compile from a literal argument at load);
//! calls never panic, they return `Err(message)` naming the function.

mod args;
mod arrays;
mod bits;
mod compression;
mod convert;
mod encoding;
mod hashing;
mod jq;
mod maps;
mod math;
mod message;
mod misc;
mod sparkplug;
mod strings;
mod time;

use regex::Regex;

use crate::input::Input;
use crate::value::Value;

pub use misc::GETENV_PREFIX;

/// What a call sees besides its arguments.
pub(crate) struct CallContext<'r, 'a> {
    /// The message or event (for `topic()`, `payload()`, ...).
    pub input: &'r Input<'a>,
    /// Compiled at load from a literal argument (see [`FuncDef::prepare`]).
    pub prepared: Option<&'r Prepared>,
}

/// Something a function compiled once, at load, from a literal argument.
#[derive(Debug)]
pub(crate) enum Prepared {
    Regex(Regex),
    Jq(Box<jq::Program>),
    /// A value fixed at load (`getenv('X')`).
    Value(Value),
}

/// The result of a call.
pub(crate) type CallResult = Result<Value, String>;
type Func = fn(&[Value], &CallContext<'_, '_>) -> CallResult;
type Prepare = fn(&Value) -> Result<Prepared, String>;

/// A catalogue entry.
pub(crate) struct FuncDef {
    pub name: &'static str,
    pub min: usize,
    pub max: usize,
    pub f: Func,
    /// `(argument index, compile)`: when that argument is a literal, it is
    /// compiled once at load and handed to every call.
    pub prepare: Option<(usize, Prepare)>,
}

impl std::fmt::Debug for FuncDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}..{}", self.name, self.min, self.max)
    }
}

/// No upper bound on the argument count.
const MANY: usize = usize::MAX;

/// A catalogue entry without load-time preparation.
const fn def(name: &'static str, min: usize, max: usize, f: Func) -> FuncDef {
    FuncDef {
        name,
        min,
        max,
        f,
        prepare: None,
    }
}

/// A catalogue entry that compiles argument `arg` at load when it is a literal.
const fn def_prepared(
    name: &'static str,
    min: usize,
    max: usize,
    f: Func,
    arg: usize,
    prepare: Prepare,
) -> FuncDef {
    FuncDef {
        name,
        min,
        max,
        f,
        prepare: Some((arg, prepare)),
    }
}

/// Every family's entries.
const FAMILIES: &[&[FuncDef]] = &[
    message::FUNCTIONS,
    math::FUNCTIONS,
    bits::FUNCTIONS,
    convert::FUNCTIONS,
    strings::FUNCTIONS,
    maps::FUNCTIONS,
    arrays::FUNCTIONS,
    hashing::FUNCTIONS,
    encoding::FUNCTIONS,
    compression::FUNCTIONS,
    time::FUNCTIONS,
    misc::FUNCTIONS,
    jq::FUNCTIONS,
    sparkplug::FUNCTIONS,
];

fn all() -> impl Iterator<Item = &'static FuncDef> {
    FAMILIES.iter().flat_map(|f| f.iter())
}

/// Looks a function up by (case-insensitive) name. Load time only.
pub(crate) fn lookup(name: &str) -> Option<&'static FuncDef> {
    let lower = name.to_ascii_lowercase();
    all().find(|f| f.name == lower)
}

/// All function names (for docs/tests).
pub fn function_names() -> impl Iterator<Item = &'static str> {
    all().map(|f| f.name)
}

/// Compiles a regex pattern with a size limit (a pattern from a rule must
/// not make the broker build a huge automaton).
pub(crate) fn compile_regex(p: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(p)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex {p:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_consistent() {
        let mut names: Vec<_> = function_names().collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(n, names.len(), "duplicate function names");
        for f in all() {
            assert!(f.min <= f.max, "{}", f.name);
        }
    }
}
