//! String functions: case, trimming, slicing, splitting, padding,
//! replacing, regular expressions, `sprintf`, `unescape`, ... They work on
//! text: a binary argument that is not UTF-8 fails the call with an error
//! naming the function (`concat` and `+` join binaries as bytes).

use regex::Regex;

use super::args::{array, index, integer, text, text_or};
use super::{compile_regex, def, def_prepared, CallContext, CallResult, FuncDef, Prepared};
use crate::value::{float_str, to_bin, to_str, Value};

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("lower", 1, 1, |a, _| {
        Ok(Value::Str(text(a, 0, "lower")?.to_lowercase()))
    }),
    def("upper", 1, 1, |a, _| {
        Ok(Value::Str(text(a, 0, "upper")?.to_uppercase()))
    }),
    def("trim", 1, 1, |a, _| {
        Ok(Value::from(text(a, 0, "trim")?.trim()))
    }),
    def("ltrim", 1, 1, |a, _| {
        Ok(Value::from(text(a, 0, "ltrim")?.trim_start()))
    }),
    def("rtrim", 1, 2, rtrim),
    def("reverse", 1, 1, |a, _| {
        Ok(Value::Str(text(a, 0, "reverse")?.chars().rev().collect()))
    }),
    def("strlen", 1, 1, |a, _| {
        Ok(Value::from(text(a, 0, "strlen")?.chars().count()))
    }),
    def("substr", 2, 3, |a, _| substr(a, "substr", false)),
    def("substring", 2, 3, |a, _| substr(a, "substring", true)),
    def("split", 2, 3, split),
    def("tokens", 2, 3, tokens),
    def("concat", 1, MANY, concat),
    def("sprintf", 1, MANY, sprintf),
    def("pad", 2, 4, pad),
    def("replace", 3, 4, replace),
    def_prepared("regex_match", 2, 2, regex_match, 1, prepare_regex),
    def_prepared("regex_replace", 3, 3, regex_replace, 1, prepare_regex),
    def_prepared("regex_extract", 2, 2, regex_extract, 1, prepare_regex),
    def("ascii", 1, 1, ascii),
    def("find", 2, 3, find),
    def("join_to_string", 1, 2, join),
    def("rm_prefix", 2, 2, rm_prefix),
    def("unescape", 1, 1, unescape),
];

use super::MANY;

fn prepare_regex(v: &Value) -> Result<Prepared, String> {
    match v.as_str() {
        Some(p) => compile_regex(p).map(Prepared::Regex),
        None => Err("the pattern must be a string".into()),
    }
}

fn rtrim(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "rtrim")?;
    if a.len() == 1 {
        return Ok(Value::from(t.trim_end()));
    }
    let chars = text(a, 1, "rtrim")?;
    Ok(Value::from(t.trim_end_matches(|c| chars.contains(c))))
}

fn char_slice(t: &str, start: usize, len: Option<usize>) -> String {
    let it = t.chars().skip(start);
    match len {
        Some(n) => it.take(n).collect(),
        None => it.collect(),
    }
}

fn substr(a: &[Value], fname: &str, allow_negative: bool) -> CallResult {
    let t = text(a, 0, fname)?;
    let mut start = integer(a, 1, fname)?;
    if start < 0 {
        if !allow_negative {
            return Err(format!("{fname}: start must be >= 0"));
        }
        start = (t.chars().count() as i64 + start).max(0);
    }
    let len = if a.len() == 3 {
        let n = integer(a, 2, fname)?;
        if n < 0 {
            return Err(format!("{fname}: length must be >= 0"));
        }
        Some(index(n))
    } else {
        None
    };
    Ok(Value::Str(char_slice(t, index(start), len)))
}

fn strs(v: Vec<&str>, keep_empty: bool) -> Value {
    Value::Array(
        v.into_iter()
            .filter(|p| keep_empty || !p.is_empty())
            .map(Value::from)
            .collect(),
    )
}

fn split(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "split")?;
    let p = text(a, 1, "split")?;
    let mode = text_or(a, 2, "split", "all")?;
    if p.is_empty() {
        return Ok(strs(vec![t], false));
    }
    let (parts, keep): (Vec<&str>, bool) = match mode {
        "all" => (t.split(p).collect(), false),
        "notrim" => (t.split(p).collect(), true),
        "leading" => (t.splitn(2, p).collect(), false),
        "leading_notrim" => (t.splitn(2, p).collect(), true),
        "trailing" | "trailing_notrim" => {
            let v = match t.rfind(p) {
                Some(i) => vec![&t[..i], &t[i + p.len()..]],
                None => vec![t],
            };
            (v, mode == "trailing_notrim")
        }
        other => return Err(format!("split: invalid option {other:?}")),
    };
    Ok(strs(parts, keep))
}

fn tokens(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "tokens")?;
    let mut seps: Vec<char> = text(a, 1, "tokens")?.chars().collect();
    if a.len() == 3 {
        if text(a, 2, "tokens")? != "nocrlf" {
            return Err("tokens: third argument must be 'nocrlf'".into());
        }
        seps.extend(['\r', '\n']);
    }
    Ok(strs(t.split(|c| seps.contains(&c)).collect(), false))
}

/// Joins binaries as bytes (non-binaries converted with `str`).
fn concat(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let items: &[Value] = match a {
        [Value::Array(items)] => items,
        _ => a,
    };
    let mut out = Vec::new();
    for v in items {
        out.extend_from_slice(&to_bin(v));
    }
    Ok(Value::from_vec(out))
}

fn erl_term(v: &Value) -> String {
    match v {
        Value::Str(_) | Value::Bytes(_) => format!("<<\"{}\">>", to_str(v)),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(erl_term).collect::<Vec<_>>().join(",")
        ),
        Value::Map(m) => format!(
            "#{{{}}}",
            m.iter()
                .map(|(k, v)| format!("<<\"{k}\">> => {}", erl_term(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => to_str(other),
    }
}

/// Erlang `io_lib:format` subset: `~s ~p ~w ~f ~e ~g ~b ~B ~c ~i ~n ~~`
/// with optional field width and precision.
fn sprintf(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let fmt = text(a, 0, "sprintf")?;
    let mut args = a[1..].iter();
    let mut next = || {
        args.next()
            .ok_or_else(|| "sprintf: not enough arguments".to_owned())
    };
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        let mut width = String::new();
        while let Some(d) = chars
            .peek()
            .copied()
            .filter(|d| d.is_ascii_digit() || *d == '-')
        {
            width.push(d);
            chars.next();
        }
        let mut prec = String::new();
        if chars.peek() == Some(&'.') {
            chars.next();
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                prec.push(d);
                chars.next();
            }
        }
        let width: Option<i64> = width.parse().ok();
        let prec: Option<usize> = prec.parse().ok().filter(|p| *p <= 64);
        let ctl = chars.next().ok_or("sprintf: format ends with '~'")?;
        let piece = match ctl {
            '~' => "~".to_owned(),
            'n' => "\n".to_owned(),
            's' => {
                let t = to_str(next()?);
                match prec {
                    Some(p) => t.chars().take(p).collect(),
                    None => t,
                }
            }
            'p' | 'w' => erl_term(next()?),
            'i' => {
                next()?;
                String::new()
            }
            'c' => {
                let v = next()?;
                let code = v
                    .as_i64()
                    .and_then(|i| u32::try_from(i).ok())
                    .and_then(char::from_u32);
                code.ok_or_else(|| format!("sprintf: ~c needs a character code, got {v}"))?
                    .to_string()
            }
            'f' | 'e' | 'g' => {
                let v = next()?;
                let f = v
                    .num()
                    .ok_or_else(|| format!("sprintf: ~{ctl} needs a number, got {v}"))?;
                let p = prec.unwrap_or(6);
                match ctl {
                    'f' => format!("{:.p$}", f.as_f64()),
                    'e' => format!("{:.p$e}", f.as_f64()),
                    _ => float_str(f.as_f64()),
                }
            }
            'b' | 'B' | 'd' => {
                let v = next()?;
                let Some(i) = v.as_i64() else {
                    return Err(format!("sprintf: ~{ctl} needs an integer, got {v}"));
                };
                let base = prec.unwrap_or(10);
                radix(i, base as u32, ctl == 'b')?
            }
            other => return Err(format!("sprintf: unsupported control sequence ~{other}")),
        };
        match width {
            Some(w) if w.unsigned_abs() as usize > piece.chars().count() => {
                let padn = w.unsigned_abs() as usize - piece.chars().count();
                if w < 0 {
                    out.push_str(&piece);
                    out.extend(std::iter::repeat_n(' ', padn));
                } else {
                    out.extend(std::iter::repeat_n(' ', padn));
                    out.push_str(&piece);
                }
            }
            _ => out.push_str(&piece),
        }
    }
    Ok(Value::Str(out))
}

fn radix(i: i64, base: u32, lower: bool) -> Result<String, String> {
    if !(2..=36).contains(&base) {
        return Err("sprintf: base must be between 2 and 36".into());
    }
    if i == 0 {
        return Ok("0".into());
    }
    let mut n = i.unsigned_abs();
    let mut digits = Vec::new();
    while n > 0 {
        let d = (n % u64::from(base)) as u32;
        let c = char::from_digit(d, base).unwrap_or('?');
        digits.push(if lower { c } else { c.to_ascii_uppercase() });
        n /= u64::from(base);
    }
    if i < 0 {
        digits.push('-');
    }
    Ok(digits.into_iter().rev().collect())
}

fn pad(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "pad")?;
    let len = integer(a, 1, "pad")?;
    let dir = text_or(a, 2, "pad", "trailing")?;
    let ch = text_or(a, 3, "pad", " ")?;
    if len > 1_000_000 {
        return Err("pad: length too large".into());
    }
    let cur = t.chars().count() as i64;
    let n = index(len - cur);
    let fill = |k: usize| ch.repeat(k);
    let out = match dir {
        "trailing" => format!("{t}{}", fill(n)),
        "leading" => format!("{}{t}", fill(n)),
        "both" => format!("{}{t}{}", fill(n / 2), fill(n - n / 2)),
        other => return Err(format!("pad: invalid direction {other:?}")),
    };
    Ok(Value::Str(out))
}

fn replace(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "replace")?;
    let p = text(a, 1, "replace")?;
    let r = text(a, 2, "replace")?;
    let mode = text_or(a, 3, "replace", "all")?;
    if p.is_empty() {
        return Ok(Value::from(t));
    }
    let out = match mode {
        "all" => t.replace(p, r),
        "leading" => t.replacen(p, r, 1),
        "trailing" => match t.rfind(p) {
            Some(i) => format!("{}{r}{}", &t[..i], &t[i + p.len()..]),
            None => t.to_owned(),
        },
        other => return Err(format!("replace: invalid option {other:?}")),
    };
    Ok(Value::Str(out))
}

fn with_regex<T>(
    a: &[Value],
    c: &CallContext<'_, '_>,
    fname: &str,
    f: impl FnOnce(&Regex) -> T,
) -> Result<T, String> {
    match c.prepared {
        Some(Prepared::Regex(re)) => Ok(f(re)),
        _ => {
            let re = compile_regex(text(a, 1, fname)?)?;
            Ok(f(&re))
        }
    }
}

fn regex_match(a: &[Value], c: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "regex_match")?;
    with_regex(a, c, "regex_match", |re| Value::Bool(re.is_match(t)))
}

fn erl_replacement(r: &str) -> String {
    let mut out = String::new();
    let mut chars = r.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '&' => out.push_str("${0}"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut n = String::new();
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        n.push(d);
                        chars.next();
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                Some('g') => {
                    chars.next();
                    let mut n = String::new();
                    let braced = chars.peek() == Some(&'{');
                    if braced {
                        chars.next();
                    }
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        n.push(d);
                        chars.next();
                    }
                    if braced && chars.peek() == Some(&'}') {
                        chars.next();
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                Some(other) => {
                    chars.next();
                    if other == '$' {
                        out.push_str("$$");
                    } else {
                        out.push(other);
                    }
                }
                None => out.push('\\'),
            },
            other => out.push(other),
        }
    }
    out
}

fn regex_replace(a: &[Value], c: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "regex_replace")?;
    let rep = erl_replacement(text(a, 2, "regex_replace")?);
    with_regex(a, c, "regex_replace", |re| {
        Value::Str(re.replace_all(t, rep.as_str()).into_owned())
    })
}

fn regex_extract(a: &[Value], c: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "regex_extract")?;
    with_regex(a, c, "regex_extract", |re| match re.captures(t) {
        None => Value::Array(vec![]),
        Some(caps) if caps.len() == 1 => {
            Value::Array(vec![Value::from(caps.get(0).map_or("", |m| m.as_str()))])
        }
        Some(caps) => Value::Array(
            caps.iter()
                .skip(1)
                .map(|m| Value::from(m.map_or("", |m| m.as_str())))
                .collect(),
        ),
    })
}

fn ascii(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "ascii")?;
    t.bytes()
        .next()
        .map(Value::from)
        .ok_or_else(|| "ascii: empty string".to_owned())
}

fn find(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "find")?;
    let p = text(a, 1, "find")?;
    let dir = text_or(a, 2, "find", "leading")?;
    let idx = match dir {
        "leading" => t.find(p),
        "trailing" => t.rfind(p),
        other => return Err(format!("find: invalid direction {other:?}")),
    };
    Ok(Value::from(idx.map_or("", |i| &t[i..])))
}

fn join(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let (sep, list) = if a.len() == 2 {
        (
            text(a, 0, "join_to_string")?,
            array(a, 1, "join_to_string")?,
        )
    } else {
        (", ", array(a, 0, "join_to_string")?)
    };
    Ok(Value::Str(
        list.iter().map(to_str).collect::<Vec<_>>().join(sep),
    ))
}

/// `rm_prefix(S, Prefix)`: `S` without `Prefix` when it starts with it
/// (bytes: works on binaries too).
fn rm_prefix(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let s = super::args::binary(a, 0, "rm_prefix")?;
    let p = super::args::binary(a, 1, "rm_prefix")?;
    Ok(match s.strip_prefix(p) {
        Some(rest) => Value::from_vec(rest.to_vec()),
        None => a[0].clone(),
    })
}

/// `unescape(S)`: C escapes (`\n \t \r \b \f \v \' \" \\ \? \a`) and
/// `\xH...` (hex code point); anything else is an error, as in EMQX.
fn unescape(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let t = text(a, 0, "unescape")?;
    let mut out = String::with_capacity(t.len());
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else {
            return Err("unescape: the string ends with a lone backslash".into());
        };
        out.push(match e {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'v' => '\u{b}',
            '\'' | '"' | '\\' | '?' => e,
            'a' => '\u{7}',
            'x' if chars.peek().is_some_and(char::is_ascii_hexdigit) => {
                let mut code: u32 = 0;
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(16)) {
                    code = code
                        .checked_mul(16)
                        .and_then(|c| c.checked_add(d))
                        .ok_or("unescape: \\x escape out of range")?;
                    chars.next();
                }
                char::from_u32(code).ok_or_else(|| {
                    format!("unescape: \\x{code:X} is not a valid Unicode character")
                })?
            }
            other => return Err(format!("unescape: unrecognized escape sequence \\{other}")),
        });
    }
    Ok(Value::Str(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_syntax() {
        assert_eq!(erl_replacement("\\1-&"), "${1}-${0}");
        assert_eq!(erl_replacement("$x"), "$$x");
        assert_eq!(erl_replacement("\\g{2}"), "${2}");
    }
}
