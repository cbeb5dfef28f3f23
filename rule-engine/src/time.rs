//! Date/time helpers for the time functions (UTC civil calendar, RFC 3339,
//! EMQX `format_date` / `date_to_unix_ts` format strings). No time zone
//! database: `local` offsets are treated as UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now.
pub(crate) fn now_nanos() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Nanoseconds per unit for `second`, `millisecond`, `microsecond`,
/// `nanosecond`.
pub(crate) fn unit_nanos(unit: &str) -> Result<i128, String> {
    Ok(match unit {
        "second" => 1_000_000_000,
        "millisecond" => 1_000_000,
        "microsecond" => 1_000,
        "nanosecond" => 1,
        other => return Err(format!("invalid time unit `{other}`")),
    })
}

fn frac_digits(unit: &str) -> usize {
    match unit {
        "millisecond" => 3,
        "microsecond" => 6,
        "nanosecond" => 9,
        _ => 0,
    }
}

/// Days since 1970-01-01 -> (year, month, day). Howard Hinnant's algorithm.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) -> days since 1970-01-01.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

struct Broken {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    nanos: u32,
}

/// Breaks `nanos` since the epoch, shifted by `offset_s`, into fields.
fn broken(nanos: i128, offset_s: i64) -> Result<Broken, String> {
    let total = nanos + i128::from(offset_s) * 1_000_000_000;
    let secs = total.div_euclid(1_000_000_000);
    let sub = total.rem_euclid(1_000_000_000) as u32;
    let secs = i64::try_from(secs).map_err(|_| "timestamp out of range".to_owned())?;
    let days = secs.div_euclid(86_400);
    if !(-1_000_000..=3_000_000).contains(&days) {
        return Err("timestamp out of range".into());
    }
    let sod = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    Ok(Broken {
        year,
        month,
        day,
        hour: sod / 3600,
        min: (sod / 60) % 60,
        sec: sod % 60,
        nanos: sub,
    })
}

fn fmt_offset(offset_s: i64, colons: usize) -> String {
    let sign = if offset_s < 0 { '-' } else { '+' };
    let a = offset_s.abs();
    let (h, m, s) = (a / 3600, (a / 60) % 60, a % 60);
    match colons {
        0 => format!("{sign}{h:02}{m:02}"),
        1 => format!("{sign}{h:02}:{m:02}"),
        _ => format!("{sign}{h:02}:{m:02}:{s:02}"),
    }
}

/// RFC 3339 string of a timestamp in `unit`, UTC, `+00:00` style offset
/// (as Erlang's `calendar:system_time_to_rfc3339`).
pub(crate) fn to_rfc3339(ts: i64, unit: &str) -> Result<String, String> {
    let nanos = i128::from(ts) * unit_nanos(unit)?;
    let b = broken(nanos, 0)?;
    let digits = frac_digits(unit);
    let frac = if digits == 0 {
        String::new()
    } else {
        let f = format!("{:09}", b.nanos);
        format!(".{}", &f[..digits])
    };
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}+00:00",
        b.year, b.month, b.day, b.hour, b.min, b.sec, frac
    ))
}

/// Parses an offset: `Z`, `z`, `local` (UTC), `+08:00`, `-0500`,
/// `+08:00:30`, or seconds as an integer string.
pub(crate) fn parse_offset(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid time offset `{s}`");
    match s {
        "Z" | "z" | "" | "local" | "utc" | "UTC" => return Ok(0),
        _ => {}
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return s.parse::<i64>().map_err(|_| bad());
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        digits
            .get(r)
            .and_then(|d| d.parse::<i64>().ok())
            .ok_or_else(bad)
    };
    let (h, m, sec) = match digits.len() {
        2 => (num(0..2)?, 0, 0),
        4 => (num(0..2)?, num(2..4)?, 0),
        6 => (num(0..2)?, num(2..4)?, num(4..6)?),
        _ => return Err(bad()),
    };
    if h > 23 || m > 59 || sec > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60 + sec))
}

/// EMQX `format_date`: `%Y %m %d %H %M %S %N %3N %6N %9N %z %:z %::z %%`.
pub(crate) fn format_date(unit: &str, offset_s: i64, fmt: &str, ts: i64) -> Result<String, String> {
    let nanos = i128::from(ts) * unit_nanos(unit)?;
    let b = broken(nanos, offset_s)?;
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        loop {
            match chars.next() {
                Some(ch) if ch.is_ascii_digit() || ch == ':' => spec.push(ch),
                Some(ch) => {
                    spec.push(ch);
                    break;
                }
                None => return Err(format!("invalid date format `{fmt}`")),
            }
        }
        match spec.as_str() {
            "Y" => out.push_str(&format!("{:04}", b.year)),
            "m" => out.push_str(&format!("{:02}", b.month)),
            "d" => out.push_str(&format!("{:02}", b.day)),
            "H" => out.push_str(&format!("{:02}", b.hour)),
            "M" => out.push_str(&format!("{:02}", b.min)),
            "S" => out.push_str(&format!("{:02}", b.sec)),
            "N" | "9N" => out.push_str(&format!("{:09}", b.nanos)),
            "3N" => out.push_str(&format!("{:03}", b.nanos / 1_000_000)),
            "6N" => out.push_str(&format!("{:06}", b.nanos / 1_000)),
            "z" => out.push_str(&fmt_offset(offset_s, 0)),
            ":z" => out.push_str(&fmt_offset(offset_s, 1)),
            "::z" => out.push_str(&fmt_offset(offset_s, 2)),
            "%" => out.push('%'),
            other => return Err(format!("unsupported date format specifier `%{other}`")),
        }
    }
    Ok(out)
}

/// A fixed-width number field of the date string (EMQX reads `%Y` as 4
/// characters, `%m` as 2, ...).
fn take_num(s: &[u8], pos: &mut usize, width: usize) -> Result<i64, String> {
    let field = s
        .get(*pos..*pos + width)
        .ok_or("the date string ends inside a number field")?;
    *pos += width;
    let text = std::str::from_utf8(field).map_err(|e| e.to_string())?;
    text.trim_start_matches('+')
        .parse::<i64>()
        .map_err(|_| format!("bad number {text:?} in date string"))
}

/// EMQX `date_to_unix_ts`, as its runtime does it: `input` is read field by
/// field along `fmt` (numbers fixed-width: `%Y` 4, `%m %d %H %M %S` 2, `%3N`
/// 3, `%6N` 6, `%N` 9; `%z` 5, `%:z` 6, `%::z` 9 characters, or one `Z`),
/// other format characters skip one character each, and reading stops when
/// either the input or the format ends. Year to second must have been read.
/// An offset read from the input applies first, then `offset_s` (the
/// `Offset` argument of `date_to_unix_ts/4`) is subtracted, as in EMQX.
/// Returns the timestamp in `unit`.
pub(crate) fn parse_date(unit: &str, offset_s: i64, fmt: &str, input: &str) -> Result<i64, String> {
    let s = input.as_bytes();
    let mut pos = 0usize;
    let (mut y, mut mo, mut d, mut h, mut mi, mut se) = (None, None, None, None, None, None);
    let mut ns = 0i64;
    let mut parsed_offset = 0i64;
    let mut chars = fmt.chars().peekable();
    while pos < s.len() {
        let Some(c) = chars.next() else { break };
        if c != '%' {
            pos += c.len_utf8();
            continue;
        }
        let mut spec = String::new();
        loop {
            match chars.next() {
                Some(ch) if ch.is_ascii_digit() || ch == ':' => spec.push(ch),
                Some(ch) => {
                    spec.push(ch);
                    break;
                }
                None => return Err(format!("invalid date format `{fmt}`")),
            }
        }
        match spec.as_str() {
            "Y" => y = Some(take_num(s, &mut pos, 4)?),
            "m" => mo = Some(take_num(s, &mut pos, 2)?),
            "d" => d = Some(take_num(s, &mut pos, 2)?),
            "H" => h = Some(take_num(s, &mut pos, 2)?),
            "M" => mi = Some(take_num(s, &mut pos, 2)?),
            "S" => se = Some(take_num(s, &mut pos, 2)?),
            "N" | "9N" => ns = take_num(s, &mut pos, 9)?,
            "3N" => ns = take_num(s, &mut pos, 3)? * 1_000_000,
            "6N" => ns = take_num(s, &mut pos, 6)? * 1_000,
            "z" | ":z" | "::z" => {
                if matches!(s.get(pos), Some(b'Z' | b'z')) {
                    pos += 1;
                    parsed_offset = 0;
                } else {
                    let width = match spec.as_str() {
                        "z" => 5,
                        ":z" => 6,
                        _ => 9,
                    };
                    let text = input
                        .get(pos..pos + width)
                        .ok_or("bad offset in date string")?;
                    pos += width;
                    parsed_offset = parse_offset(text)?;
                }
            }
            "%" => pos += 1,
            other => return Err(format!("unsupported date format specifier `%{other}`")),
        }
    }
    let need = |v: Option<i64>, what: &str| {
        v.ok_or_else(|| format!("date string `{input}` has no {what} (format `{fmt}`)"))
    };
    let nanos = civil_to_nanos(
        need(y, "year")?,
        need(mo, "month")?,
        need(d, "day")?,
        need(h, "hour")?,
        need(mi, "minute")?,
        need(se, "second")?,
        ns,
        parsed_offset + offset_s,
    )?;
    Ok((nanos.div_euclid(unit_nanos(unit)?)) as i64)
}

#[allow(clippy::too_many_arguments)]
fn civil_to_nanos(
    y: i64,
    mo: i64,
    d: i64,
    h: i64,
    mi: i64,
    se: i64,
    ns: i64,
    offset: i64,
) -> Result<i128, String> {
    if !(1..=12).contains(&mo)
        || d < 1
        || d > i64::from(days_in_month(y, mo as u32))
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..61).contains(&se)
        || !(0..1_000_000_000).contains(&ns)
        || !(-100_000..=100_000).contains(&y)
    {
        return Err("invalid date".into());
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    Ok(i128::from(secs) * 1_000_000_000 + i128::from(ns))
}

/// Parses an RFC 3339 date-time; returns nanoseconds since the epoch.
pub(crate) fn parse_rfc3339(s: &str) -> Result<i128, String> {
    let bad = || format!("invalid RFC 3339 date-time `{s}`");
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut pos = 19;
    let mut ns = 0i64;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        let frac = s.get(start..pos).ok_or_else(bad)?;
        if frac.is_empty() {
            return Err(bad());
        }
        let mut padded: String = frac.chars().take(9).collect();
        while padded.len() < 9 {
            padded.push('0');
        }
        ns = padded.parse().map_err(|_| bad())?;
    }
    let off = s.get(pos..).ok_or_else(bad)?;
    let offset = parse_offset(off).map_err(|_| bad())?;
    if off.is_empty() {
        return Err(bad());
    }
    civil_to_nanos(y, mo, d, h, mi, se, ns, offset).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_roundtrip() {
        for days in [-800_000i64, -1, 0, 1, 59, 365, 10_957, 19_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            to_rfc3339(0, "second").as_deref(),
            Ok("1970-01-01T00:00:00+00:00")
        );
        assert_eq!(
            to_rfc3339(1_700_000_000_123, "millisecond").as_deref(),
            Ok("2023-11-14T22:13:20.123+00:00")
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Ok(1_700_000_000_123_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-15T06:13:20+08:00"),
            Ok(1_700_000_000_000_000_000)
        );
        assert!(parse_rfc3339("2023-13-14T22:13:20Z").is_err());
        assert!(parse_rfc3339("garbage").is_err());
    }

    #[test]
    fn format_and_parse() {
        let s = format_date("second", 8 * 3600, "%Y-%m-%d %H:%M:%S%:z", 1_700_000_000);
        assert_eq!(s.as_deref(), Ok("2023-11-15 06:13:20+08:00"));
        let ts = parse_date(
            "second",
            0,
            "%Y-%m-%d %H:%M:%S%:z",
            "2023-11-15 06:13:20+08:00",
        );
        assert_eq!(ts, Ok(1_700_000_000));
        assert!(parse_date("second", 0, "%Y-%m-%d %H:%M:%S", "2023-02-30 00:00:00").is_err());
        // Parsing stops where the input ends; the offset argument applies.
        let fmt = "%Y-%m-%d %H:%M:%S%:z";
        assert_eq!(
            parse_date("second", 8 * 3600, fmt, "2024-02-23 15:00:00"),
            Ok(1_708_671_600)
        );
        assert_eq!(
            parse_date("second", 0, fmt, "2024-02-23 07:00:00"),
            Ok(1_708_671_600)
        );
        assert_eq!(
            parse_date("second", 14_400, fmt, "2024-02-23 15:00:00"),
            Ok(1_708_686_000)
        );
        assert!(parse_date("second", 0, fmt, "2024-02-23").is_err());
    }
}
