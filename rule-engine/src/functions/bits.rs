//! Bit operations on integers (`bitand`, `bitsl`, ...) and on bit sequences
//! (`bitsize`, `bytesize`, `subbits`): the functions that read packed binary
//! frames.

use super::args::{binary, integer, text_or};
use super::{def, CallResult, FuncDef};
use crate::value::{float_value, Value};

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("bitnot", 1, 1, |a, _| {
        Ok(Value::Int(!integer(a, 0, "bitnot")?))
    }),
    def("bitand", 2, 2, |a, _| {
        Ok(Value::Int(
            integer(a, 0, "bitand")? & integer(a, 1, "bitand")?,
        ))
    }),
    def("bitor", 2, 2, |a, _| {
        Ok(Value::Int(
            integer(a, 0, "bitor")? | integer(a, 1, "bitor")?,
        ))
    }),
    def("bitxor", 2, 2, |a, _| {
        Ok(Value::Int(
            integer(a, 0, "bitxor")? ^ integer(a, 1, "bitxor")?,
        ))
    }),
    def("bitsl", 2, 2, |a, _| shift(a, "bitsl", true)),
    def("bitsr", 2, 2, |a, _| shift(a, "bitsr", false)),
    def("bitsize", 1, 1, |a, _| {
        Ok(Value::from(binary(a, 0, "bitsize")?.len() as u64 * 8))
    }),
    def("bytesize", 1, 1, |a, _| {
        Ok(Value::from(binary(a, 0, "bytesize")?.len()))
    }),
    def("subbits", 2, 6, subbits),
];

fn shift(a: &[Value], fname: &str, left: bool) -> CallResult {
    let x = integer(a, 0, fname)?;
    let n = integer(a, 1, fname)?;
    let left = if n < 0 { !left } else { left };
    let n = n.unsigned_abs();
    let r = if left {
        if n >= 64 || (x != 0 && u64::from(x.unsigned_abs().leading_zeros()) <= n) {
            return Err(format!("{fname}: integer overflow"));
        }
        x << n
    } else if n >= 64 {
        if x < 0 {
            -1
        } else {
            0
        }
    } else {
        x >> n
    };
    Ok(Value::Int(r))
}

/// `n` bits of `data` from bit `offset`, big-endian, as an unsigned number
/// (`n` <= 64).
fn read_bits(data: &[u8], offset: usize, n: usize) -> u64 {
    let mut out = 0u64;
    for k in 0..n {
        let bit = offset + k;
        let set = data[bit / 8] >> (7 - bit % 8) & 1;
        out = (out << 1) | u64::from(set);
    }
    out
}

/// Erlang's little-endian reading of an `n`-bit big-endian field: whole
/// bytes from least significant up, the trailing partial byte most
/// significant.
fn little_endian(raw: u64, n: usize) -> u64 {
    let full = n / 8;
    let rest = n % 8;
    let mut out = 0u64;
    for b in 0..full {
        let byte = (raw >> (n - 8 * (b + 1))) & 0xFF;
        out |= byte << (8 * b);
    }
    if rest > 0 {
        out |= (raw & ((1 << rest) - 1)) << (8 * full);
    }
    out
}

fn half_float(h: u16) -> Result<f64, String> {
    let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1F);
    let frac = f64::from(h & 0x3FF);
    match exp {
        0 => Ok(sign * frac * 2f64.powi(-24)),
        31 => Err("subbits: the 16-bit float is not finite".into()),
        e => Ok(sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15)),
    }
}

/// `subbits(Bin, [Start,] Len [, Type [, Signedness [, Endianness]]])`:
/// `Len` bits from bit `Start` (1-based; default 1) as an `integer`
/// (default; `unsigned`, `big` by default), a `float` (16, 32 or 64 bits)
/// or `bits` (a binary). Past the end: the bits that are there, as EMQX;
/// `Start` past the end: `undefined`.
fn subbits(a: &[Value], _: &super::CallContext<'_, '_>) -> CallResult {
    const F: &str = "subbits";
    let data = binary(a, 0, F)?;
    let (start, len) = if a.len() == 2 {
        (1, integer(a, 1, F)?)
    } else {
        (integer(a, 1, F)?, integer(a, 2, F)?)
    };
    let kind = text_or(a, 3, F, "integer")?;
    let signed = match text_or(a, 4, F, "unsigned")? {
        "signed" => true,
        "unsigned" => false,
        other => {
            return Err(format!(
                "subbits: signedness must be 'signed' or 'unsigned', got {other:?}"
            ))
        }
    };
    let little = match text_or(a, 5, F, "big")? {
        "little" => true,
        "big" => false,
        other => {
            return Err(format!(
                "subbits: endianness must be 'big' or 'little', got {other:?}"
            ))
        }
    };
    let total = data.len() * 8;
    let Some(begin) = usize::try_from(start - 1).ok().filter(|b| *b < total) else {
        return Ok(Value::Undefined);
    };
    if len < 0 {
        return Err(format!("subbits: length must be >= 0, got {len}"));
    }
    let n = (len as u64).min((total - begin) as u64) as usize;
    match kind {
        "integer" => {
            if n > 64 {
                return Err(format!(
                    "subbits: integers of more than 64 bits are not supported ({n} bits)"
                ));
            }
            let mut raw = read_bits(data, begin, n);
            if little {
                raw = little_endian(raw, n);
            }
            if signed && n > 0 && n < 64 && raw >> (n - 1) & 1 == 1 {
                Ok(Value::Int(raw as i64 - (1i64 << n)))
            } else if n == 64 {
                Ok(if signed {
                    Value::Int(raw as i64)
                } else {
                    Value::from(raw)
                })
            } else {
                Ok(Value::Int(raw as i64))
            }
        }
        "float" => {
            let mut raw = read_bits(data, begin, n.min(64));
            if little {
                raw = little_endian(raw, n);
            }
            let f = match n {
                16 => half_float(raw as u16)?,
                32 => f64::from(f32::from_bits(raw as u32)),
                64 => f64::from_bits(raw),
                other => {
                    return Err(format!(
                        "subbits: a float must be 16, 32 or 64 bits, got {other}"
                    ))
                }
            };
            float_value(f).map_err(|e| format!("subbits: {e}"))
        }
        "bits" => {
            if !n.is_multiple_of(8) {
                return Err(format!(
                    "subbits: {n} bits are not whole bytes (bitstrings are not supported)"
                ));
            }
            let bytes: Vec<u8> = (0..n / 8)
                .map(|k| read_bits(data, begin + 8 * k, 8) as u8)
                .collect();
            Ok(Value::bytes(bytes))
        }
        other => Err(format!(
            "subbits: type must be 'integer', 'float' or 'bits', got {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_endian_whole_bytes() {
        assert_eq!(little_endian(0x9F4E, 16), 0x4E9F);
        assert_eq!(little_endian(0x12, 8), 0x12);
    }

    #[test]
    fn half() {
        assert_eq!(half_float(0x9F4E), Ok(-0.00713348388671875));
        assert_eq!(half_float(0x3C00), Ok(1.0));
    }
}
