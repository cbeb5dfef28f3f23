//! Hashes of binaries (the bytes as they are, not a text rendering):
//! `md5`, `sha`, `sha256` and `hash(Algorithm, Data)`, lowercase hex.

use md5::Digest as _;

use super::args::{binary, text};
use super::convert::hex;
use super::{def, CallContext, CallResult, FuncDef};
use crate::value::Value;

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("md5", 1, 1, |a, _| digest("md5", binary(a, 0, "md5")?)),
    def("sha", 1, 1, |a, _| digest("sha", binary(a, 0, "sha")?)),
    def("sha256", 1, 1, |a, _| {
        digest("sha256", binary(a, 0, "sha256")?)
    }),
    def("hash", 2, 2, hash),
];

fn digest(algorithm: &str, data: &[u8]) -> CallResult {
    let out = match algorithm {
        "md5" => md5::Md5::digest(data).to_vec(),
        "sha" | "sha1" => sha1::Sha1::digest(data).to_vec(),
        "sha224" => sha2::Sha224::digest(data).to_vec(),
        "sha256" => sha2::Sha256::digest(data).to_vec(),
        "sha384" => sha2::Sha384::digest(data).to_vec(),
        "sha512" => sha2::Sha512::digest(data).to_vec(),
        other => {
            return Err(format!(
                "hash: unsupported algorithm {other:?} (md5, sha, sha1, sha224, sha256, sha384, sha512)"
            ))
        }
    };
    Ok(Value::Str(hex(&out, false)))
}

fn hash(a: &[Value], _: &CallContext<'_, '_>) -> CallResult {
    digest(text(a, 0, "hash")?, binary(a, 1, "hash")?)
}
