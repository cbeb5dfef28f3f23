//! Sparkplug B: `sparkplug_decode(Bin)` and `sparkplug_encode(Map)`, as
//! EMQX's built-ins. The payload schema is the published
//! `proto/sparkplug_b.proto` (Eclipse Tahu); the tables below mirror it
//! field by field, and the wire format is read and written with prost's
//! encoding primitives (no protoc, no generated code).
//!
//! A decoded payload is a map keyed by the proto's field names, holding
//! only the fields present (a `oneof` value under its own name, e.g.
//! `int_value`), nested messages as maps, repeated fields as lists,
//! `bytes` fields as binaries: the shape EMQX's decoder gives. Encoding
//! takes the same shape back; an unknown key or a value of the wrong type
//! is an error naming the message and the field.

use bytes::{Buf, BufMut};
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};

use super::args::{binary, wrong_type};
use super::{def, CallContext, CallResult, FuncDef};
use crate::value::{Map, Value};

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("sparkplug_decode", 1, 2, decode),
    def("sparkplug_encode", 1, 2, encode),
];

/// How deep messages may nest (PropertySet values can hold PropertySets):
/// a crafted payload must not recurse without bound.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy)]
enum Kind {
    U32,
    U64,
    Float,
    Double,
    Bool,
    Str,
    Bytes,
    Msg(&'static Message),
}

#[derive(Debug)]
struct Field {
    num: u32,
    name: &'static str,
    kind: Kind,
    repeated: bool,
}

#[derive(Debug)]
struct Message {
    name: &'static str,
    fields: &'static [Field],
}

const fn f(num: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: false,
    }
}

const fn r(num: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: true,
    }
}

/// Extension messages (`extensions 1 to max`): no fields of their own.
static EXTENSION: Message = Message {
    name: "Extension",
    fields: &[],
};

static PARAMETER: Message = Message {
    name: "Template.Parameter",
    fields: &[
        f(1, "name", Kind::Str),
        f(2, "type", Kind::U32),
        f(3, "int_value", Kind::U32),
        f(4, "long_value", Kind::U64),
        f(5, "float_value", Kind::Float),
        f(6, "double_value", Kind::Double),
        f(7, "boolean_value", Kind::Bool),
        f(8, "string_value", Kind::Str),
        f(9, "extension_value", Kind::Msg(&EXTENSION)),
    ],
};

static TEMPLATE: Message = Message {
    name: "Template",
    fields: &[
        f(1, "version", Kind::Str),
        r(2, "metrics", Kind::Msg(&METRIC)),
        r(3, "parameters", Kind::Msg(&PARAMETER)),
        f(4, "template_ref", Kind::Str),
        f(5, "is_definition", Kind::Bool),
    ],
};

static DATASET_VALUE: Message = Message {
    name: "DataSet.DataSetValue",
    fields: &[
        f(1, "int_value", Kind::U32),
        f(2, "long_value", Kind::U64),
        f(3, "float_value", Kind::Float),
        f(4, "double_value", Kind::Double),
        f(5, "boolean_value", Kind::Bool),
        f(6, "string_value", Kind::Str),
        f(7, "extension_value", Kind::Msg(&EXTENSION)),
    ],
};

static ROW: Message = Message {
    name: "DataSet.Row",
    fields: &[r(1, "elements", Kind::Msg(&DATASET_VALUE))],
};

static DATASET: Message = Message {
    name: "DataSet",
    fields: &[
        f(1, "num_of_columns", Kind::U64),
        r(2, "columns", Kind::Str),
        r(3, "types", Kind::U32),
        r(4, "rows", Kind::Msg(&ROW)),
    ],
};

static PROPERTY_VALUE: Message = Message {
    name: "PropertyValue",
    fields: &[
        f(1, "type", Kind::U32),
        f(2, "is_null", Kind::Bool),
        f(3, "int_value", Kind::U32),
        f(4, "long_value", Kind::U64),
        f(5, "float_value", Kind::Float),
        f(6, "double_value", Kind::Double),
        f(7, "boolean_value", Kind::Bool),
        f(8, "string_value", Kind::Str),
        f(9, "propertyset_value", Kind::Msg(&PROPERTY_SET)),
        f(10, "propertysets_value", Kind::Msg(&PROPERTY_SET_LIST)),
        f(11, "extension_value", Kind::Msg(&EXTENSION)),
    ],
};

static PROPERTY_SET: Message = Message {
    name: "PropertySet",
    fields: &[
        r(1, "keys", Kind::Str),
        r(2, "values", Kind::Msg(&PROPERTY_VALUE)),
    ],
};

static PROPERTY_SET_LIST: Message = Message {
    name: "PropertySetList",
    fields: &[r(1, "propertyset", Kind::Msg(&PROPERTY_SET))],
};

static METADATA: Message = Message {
    name: "MetaData",
    fields: &[
        f(1, "is_multi_part", Kind::Bool),
        f(2, "content_type", Kind::Str),
        f(3, "size", Kind::U64),
        f(4, "seq", Kind::U64),
        f(5, "file_name", Kind::Str),
        f(6, "file_type", Kind::Str),
        f(7, "md5", Kind::Str),
        f(8, "description", Kind::Str),
    ],
};

static METRIC: Message = Message {
    name: "Metric",
    fields: &[
        f(1, "name", Kind::Str),
        f(2, "alias", Kind::U64),
        f(3, "timestamp", Kind::U64),
        f(4, "datatype", Kind::U32),
        f(5, "is_historical", Kind::Bool),
        f(6, "is_transient", Kind::Bool),
        f(7, "is_null", Kind::Bool),
        f(8, "metadata", Kind::Msg(&METADATA)),
        f(9, "properties", Kind::Msg(&PROPERTY_SET)),
        f(10, "int_value", Kind::U32),
        f(11, "long_value", Kind::U64),
        f(12, "float_value", Kind::Float),
        f(13, "double_value", Kind::Double),
        f(14, "boolean_value", Kind::Bool),
        f(15, "string_value", Kind::Str),
        f(16, "bytes_value", Kind::Bytes),
        f(17, "dataset_value", Kind::Msg(&DATASET)),
        f(18, "template_value", Kind::Msg(&TEMPLATE)),
        f(19, "extension_value", Kind::Msg(&EXTENSION)),
    ],
};

static PAYLOAD: Message = Message {
    name: "Payload",
    fields: &[
        f(1, "timestamp", Kind::U64),
        r(2, "metrics", Kind::Msg(&METRIC)),
        f(3, "seq", Kind::U64),
        f(4, "uuid", Kind::Str),
        f(5, "body", Kind::Bytes),
    ],
};

// ------------------------------------------------------------------ decode

fn decode_message(mut buf: &[u8], msg: &Message, depth: usize) -> Result<Map, String> {
    if depth > MAX_DEPTH {
        return Err("messages nested too deeply".into());
    }
    let bad = |what: &dyn std::fmt::Display| format!("{}: {what}", msg.name);
    let mut out = Map::new();
    while buf.has_remaining() {
        let (num, wire) = decode_key(&mut buf).map_err(|e| bad(&e))?;
        let Some(field) = msg.fields.iter().find(|fd| fd.num == num) else {
            prost::encoding::skip_field(wire, num, &mut buf, Default::default())
                .map_err(|e| bad(&e))?;
            continue;
        };
        let mut values = Vec::new();
        let packed = field.repeated
            && wire == WireType::LengthDelimited
            && !matches!(field.kind, Kind::Str | Kind::Bytes | Kind::Msg(_));
        if packed {
            let len = decode_varint(&mut buf).map_err(|e| bad(&e))? as usize;
            if len > buf.remaining() {
                return Err(bad(&"truncated packed field"));
            }
            let (mut chunk, rest) = buf.split_at(len);
            while chunk.has_remaining() {
                values.push(read_scalar(&mut chunk, field, msg)?);
            }
            buf = rest;
        } else {
            values.push(read_value(&mut buf, wire, field, msg, depth)?);
        }
        if field.repeated {
            if let Value::Array(a) = out
                .entry(field.name.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                a.extend(values);
            }
        } else if let Some(v) = values.pop() {
            out.insert(field.name.to_owned(), v);
        }
    }
    Ok(out)
}

fn read_scalar(buf: &mut &[u8], field: &Field, msg: &Message) -> Result<Value, String> {
    let wire = match field.kind {
        Kind::Float => WireType::ThirtyTwoBit,
        Kind::Double => WireType::SixtyFourBit,
        _ => WireType::Varint,
    };
    read_value(buf, wire, field, msg, 0)
}

fn read_value(
    buf: &mut &[u8],
    wire: WireType,
    field: &Field,
    msg: &Message,
    depth: usize,
) -> Result<Value, String> {
    let bad = |what: &dyn std::fmt::Display| format!("{}.{}: {what}", msg.name, field.name);
    let expect = |w: WireType| {
        if w == wire {
            Ok(())
        } else {
            Err(bad(&format!("wire type {wire:?}, expected {w:?}")))
        }
    };
    Ok(match field.kind {
        Kind::U32 | Kind::U64 | Kind::Bool => {
            expect(WireType::Varint)?;
            let v = decode_varint(buf).map_err(|e| bad(&e))?;
            match field.kind {
                Kind::Bool => Value::Bool(v != 0),
                Kind::U32 => Value::from(v as u32),
                _ => Value::from(v),
            }
        }
        Kind::Float => {
            expect(WireType::ThirtyTwoBit)?;
            if buf.remaining() < 4 {
                return Err(bad(&"truncated"));
            }
            Value::from(f64::from(buf.get_f32_le()))
        }
        Kind::Double => {
            expect(WireType::SixtyFourBit)?;
            if buf.remaining() < 8 {
                return Err(bad(&"truncated"));
            }
            Value::from(buf.get_f64_le())
        }
        Kind::Str | Kind::Bytes | Kind::Msg(_) => {
            expect(WireType::LengthDelimited)?;
            let len = decode_varint(buf).map_err(|e| bad(&e))? as usize;
            if len > buf.remaining() {
                return Err(bad(&"truncated"));
            }
            let (data, rest) = buf.split_at(len);
            *buf = rest;
            match field.kind {
                Kind::Str => Value::Str(
                    std::str::from_utf8(data)
                        .map_err(|_| bad(&"string is not UTF-8"))?
                        .to_owned(),
                ),
                Kind::Bytes => Value::bytes(data.to_vec()),
                Kind::Msg(m) => Value::Map(decode_message(data, m, depth + 1)?),
                _ => Value::Undefined,
            }
        }
    })
}

fn decode(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let data = binary(a, 0, "sparkplug_decode")?;
    decode_message(data, &PAYLOAD, 0)
        .map(Value::Map)
        .map_err(|e| format!("sparkplug_decode: {e}"))
}

// ------------------------------------------------------------------ encode

fn encode_message(m: &Map, msg: &Message, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("messages nested too deeply".into());
    }
    if let Some(k) = m
        .keys()
        .find(|k| !msg.fields.iter().any(|f| f.name == k.as_str()))
    {
        return Err(format!("{}: unknown field `{k}`", msg.name));
    }
    for field in msg.fields {
        let Some(v) = m.get(field.name).filter(|v| !v.is_nullish()) else {
            continue;
        };
        if field.repeated {
            let items = v.as_array().ok_or_else(|| {
                format!(
                    "{}.{}: must be a list, got {}",
                    msg.name,
                    field.name,
                    crate::value::type_name(v)
                )
            })?;
            for item in items {
                write_value(item, field, msg, out, depth)?;
            }
        } else {
            write_value(v, field, msg, out, depth)?;
        }
    }
    Ok(())
}

fn write_value(
    v: &Value,
    field: &Field,
    msg: &Message,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), String> {
    let bad = |want: &str| {
        format!(
            "{}.{}: must be {want}, got {}",
            msg.name,
            field.name,
            crate::value::type_name(v)
        )
    };
    match field.kind {
        Kind::U32 | Kind::U64 => {
            let n = match v {
                Value::Int(i) if *i >= 0 => *i as u64,
                Value::Float(f) if *f >= 0.0 && f.fract() == 0.0 && *f < 1.9e19 => *f as u64,
                _ => return Err(bad("a non-negative integer")),
            };
            if matches!(field.kind, Kind::U32) && n > u64::from(u32::MAX) {
                return Err(bad("an integer below 2^32"));
            }
            encode_key(field.num, WireType::Varint, out);
            encode_varint(n, out);
        }
        Kind::Bool => {
            let Value::Bool(b) = v else {
                return Err(bad("a boolean"));
            };
            encode_key(field.num, WireType::Varint, out);
            encode_varint(u64::from(*b), out);
        }
        Kind::Float => {
            let x = v.as_f64().ok_or_else(|| bad("a number"))?;
            encode_key(field.num, WireType::ThirtyTwoBit, out);
            out.put_f32_le(x as f32);
        }
        Kind::Double => {
            let x = v.as_f64().ok_or_else(|| bad("a number"))?;
            encode_key(field.num, WireType::SixtyFourBit, out);
            out.put_f64_le(x);
        }
        Kind::Str | Kind::Bytes => {
            let b = match field.kind {
                Kind::Str => v.as_str().ok_or_else(|| bad("a string"))?.as_bytes(),
                _ => v.as_bin().ok_or_else(|| bad("a binary"))?,
            };
            encode_key(field.num, WireType::LengthDelimited, out);
            encode_varint(b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Kind::Msg(m) => {
            let map = v.as_map().ok_or_else(|| bad("a map"))?;
            let mut inner = Vec::new();
            encode_message(map, m, &mut inner, depth + 1)?;
            encode_key(field.num, WireType::LengthDelimited, out);
            encode_varint(inner.len() as u64, out);
            out.extend_from_slice(&inner);
        }
    }
    Ok(())
}

fn encode(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let map = match &a[0] {
        Value::Map(m) => m,
        v => return Err(wrong_type("sparkplug_encode", 0, "a map", v)),
    };
    let mut out = Vec::new();
    encode_message(map, &PAYLOAD, &mut out, 0).map_err(|e| format!("sparkplug_encode: {e}"))?;
    Ok(Value::bytes(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `<type> <name> = <number>;` of the published .proto is in the
    /// tables with that number.
    #[test]
    fn tables_match_the_proto_file() {
        let proto = include_str!("../../proto/sparkplug_b.proto");
        let all: Vec<&Message> = vec![
            &PAYLOAD,
            &METRIC,
            &METADATA,
            &PROPERTY_SET,
            &PROPERTY_SET_LIST,
            &PROPERTY_VALUE,
            &DATASET,
            &ROW,
            &DATASET_VALUE,
            &TEMPLATE,
            &PARAMETER,
        ];
        let mut checked = 0;
        for line in proto.lines().map(str::trim) {
            let code = line.split("//").next().unwrap_or("").trim();
            let Some((lhs, rhs)) = code.split_once('=') else {
                continue;
            };
            let words: Vec<&str> = lhs.split_whitespace().collect();
            let Ok(num) = rhs.trim().trim_end_matches(';').trim().parse::<u32>() else {
                continue;
            };
            let Some(name) = words.last() else { continue };
            if words.len() < 2 || words[0] == "option" {
                continue; // enum constants, options
            }
            let found = all
                .iter()
                .any(|m| m.fields.iter().any(|f| f.name == *name && f.num == num));
            assert!(found, "{name} = {num} missing from the tables");
            checked += 1;
        }
        assert!(checked > 60, "only {checked} fields checked");
    }
}
