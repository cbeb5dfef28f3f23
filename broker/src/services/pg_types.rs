//! `SqlValue` <-> PostgreSQL wire values, binary format.
//!
//! Parameters are bound by the type the server inferred for each
//! placeholder: `int` fits int2 / int4 / int8 (range-checked), `float`
//! float4 / float8, `text` text-like columns, `json` json / jsonb,
//! `timestamp-millis` timestamptz / timestamp. Result columns are read back
//! the same way; any other column type is an error naming column and type.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use midge_plugin::SqlValue;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

type BoxError = Box<dyn Error + Sync + Send>;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A parameter, bound by reference.
#[derive(Debug)]
pub struct Param<'a>(pub &'a SqlValue);

fn mismatch(value: &SqlValue, ty: &Type) -> BoxError {
    let kind = match value {
        SqlValue::Null => "null",
        SqlValue::Boolean(_) => "boolean",
        SqlValue::Int(_) => "int",
        SqlValue::Float(_) => "float",
        SqlValue::Text(_) => "text",
        SqlValue::Bytes(_) => "bytes",
        SqlValue::Json(_) => "json",
        SqlValue::TimestampMillis(_) => "timestamp-millis",
    };
    format!("a {kind} value cannot be bound to a parameter of type {ty}").into()
}

fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match (self.0, ty) {
            (SqlValue::Null, _) => return Ok(IsNull::Yes),
            (SqlValue::Boolean(b), &Type::BOOL) => out.put_u8(u8::from(*b)),
            (SqlValue::Int(i), &Type::INT8) => out.put_i64(*i),
            (SqlValue::Int(i), &Type::INT4) => out.put_i32(
                i32::try_from(*i)
                    .map_err(|_| format!("{i} does not fit a parameter of type int4"))?,
            ),
            (SqlValue::Int(i), &Type::INT2) => out.put_i16(
                i16::try_from(*i)
                    .map_err(|_| format!("{i} does not fit a parameter of type int2"))?,
            ),
            (SqlValue::Int(i), &Type::FLOAT8) => out.put_f64(*i as f64),
            (SqlValue::Float(f), &Type::FLOAT8) => out.put_f64(*f),
            (SqlValue::Float(f), &Type::FLOAT4) => out.put_f32(*f as f32),
            (SqlValue::Text(s), t) if is_text(t) => out.put_slice(s.as_bytes()),
            (SqlValue::Bytes(b), &Type::BYTEA) => out.put_slice(b),
            (SqlValue::Json(s) | SqlValue::Text(s), &Type::JSONB) => {
                out.put_u8(1);
                out.put_slice(s.as_bytes());
            }
            (SqlValue::Json(s) | SqlValue::Text(s), &Type::JSON) => out.put_slice(s.as_bytes()),
            (SqlValue::TimestampMillis(ms), &Type::TIMESTAMPTZ | &Type::TIMESTAMP) => {
                let micros = ms
                    .checked_mul(1000)
                    .and_then(|us| us.checked_sub(PG_EPOCH_MICROS))
                    .ok_or_else(|| format!("timestamp {ms} ms is out of range"))?;
                out.put_i64(micros);
            }
            (v, t) => return Err(mismatch(v, t)),
        }
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        // Checked per value in `to_sql`, with an error naming both types.
        true
    }

    to_sql_checked!();
}

/// Whether a result column of type `ty` can be read.
pub fn readable(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::BOOL
            | Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::FLOAT4
            | Type::FLOAT8
            | Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::BYTEA
            | Type::JSON
            | Type::JSONB
            | Type::TIMESTAMPTZ
            | Type::TIMESTAMP
    )
}

/// One result cell.
#[derive(Debug)]
pub struct Cell(pub SqlValue);

fn be<const N: usize>(raw: &[u8]) -> Result<[u8; N], BoxError> {
    raw.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", raw.len()).into())
}

fn utf8(raw: &[u8]) -> Result<String, BoxError> {
    Ok(std::str::from_utf8(raw)?.to_string())
}

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let v = match *ty {
            Type::BOOL => SqlValue::Boolean(be::<1>(raw)?[0] != 0),
            Type::INT2 => SqlValue::Int(i16::from_be_bytes(be(raw)?).into()),
            Type::INT4 => SqlValue::Int(i32::from_be_bytes(be(raw)?).into()),
            Type::INT8 => SqlValue::Int(i64::from_be_bytes(be(raw)?)),
            Type::FLOAT4 => SqlValue::Float(f32::from_be_bytes(be(raw)?).into()),
            Type::FLOAT8 => SqlValue::Float(f64::from_be_bytes(be(raw)?)),
            Type::BYTEA => SqlValue::Bytes(raw.to_vec()),
            Type::JSON => SqlValue::Json(utf8(raw)?),
            Type::JSONB => match raw.split_first() {
                Some((1, rest)) => SqlValue::Json(utf8(rest)?),
                _ => return Err("unsupported jsonb version".into()),
            },
            Type::TIMESTAMPTZ | Type::TIMESTAMP => {
                let micros = i64::from_be_bytes(be(raw)?);
                // ±infinity are i64::MAX / MIN: saturate rather than wrap.
                SqlValue::TimestampMillis(micros.saturating_add(PG_EPOCH_MICROS).div_euclid(1000))
            }
            ref t if is_text(t) => SqlValue::Text(utf8(raw)?),
            ref t => return Err(format!("type {t} is not supported").into()),
        };
        Ok(Cell(v))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, BoxError> {
        Ok(Cell(SqlValue::Null))
    }

    fn accepts(ty: &Type) -> bool {
        readable(ty)
    }
}
