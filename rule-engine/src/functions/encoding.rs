//! Encoding and decoding: base64 and JSON. A decoded binary stays bytes.

use base64::Engine as _;

use super::args::binary;
use super::{def, CallContext, CallResult, FuncDef};
use crate::value::Value;

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("base64_encode", 1, 1, |a, _| {
        Ok(Value::Str(
            base64::engine::general_purpose::STANDARD.encode(binary(a, 0, "base64_encode")?),
        ))
    }),
    def("base64_decode", 1, 1, base64_decode),
    def("json_encode", 1, 1, |a, _| Ok(Value::Str(a[0].to_json()))),
    def("json_decode", 1, 1, |a, _| {
        Value::from_json(binary(a, 0, "json_decode")?).map_err(|e| format!("json_decode: {e}"))
    }),
];

/// Standard alphabet; padding optional when decoding (the base64 that
/// tools and EMQX's docs show often has none).
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn base64_decode(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    let t = binary(a, 0, "base64_decode")?;
    LENIENT
        .decode(t.trim_ascii())
        .map(Value::bytes)
        .map_err(|e| format!("base64_decode: {e}"))
}
