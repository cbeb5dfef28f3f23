//! Compression (flate2): `zip`/`unzip` (raw DEFLATE), `gzip`/`gunzip`
//! (gzip header and CRC), `zip_compress`/`zip_uncompress` (zlib header and
//! Adler-32), as Erlang's `zlib` module. Results are binaries.

use std::io::{Read, Write};

use flate2::Compression;

use super::args::binary;
use super::{def, CallResult, FuncDef};
use crate::value::Value;

/// Largest output of a decompression: a small compressed payload must not
/// make the broker allocate gigabytes (a "zip bomb").
const MAX_INFLATED: u64 = 16 * 1024 * 1024;

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("zip", 1, 1, |a, _| {
        deflate(
            flate2::write::DeflateEncoder::new(Vec::new(), Compression::default()),
            binary(a, 0, "zip")?,
        )
    }),
    def("unzip", 1, 1, |a, _| {
        inflate(
            flate2::read::DeflateDecoder::new(binary(a, 0, "unzip")?),
            "unzip",
        )
    }),
    def("gzip", 1, 1, |a, _| {
        // OS byte 3 (Unix), as zlib writes it on Linux.
        let enc = flate2::GzBuilder::new()
            .operating_system(3)
            .write(Vec::new(), Compression::default());
        deflate(enc, binary(a, 0, "gzip")?)
    }),
    def("gunzip", 1, 1, |a, _| {
        inflate(
            flate2::read::GzDecoder::new(binary(a, 0, "gunzip")?),
            "gunzip",
        )
    }),
    def("zip_compress", 1, 1, |a, _| {
        deflate(
            flate2::write::ZlibEncoder::new(Vec::new(), Compression::default()),
            binary(a, 0, "zip_compress")?,
        )
    }),
    def("zip_uncompress", 1, 1, |a, _| {
        inflate(
            flate2::read::ZlibDecoder::new(binary(a, 0, "zip_uncompress")?),
            "zip_uncompress",
        )
    }),
];

/// The encoders above, finished into their buffer.
trait Finish: Write {
    fn done(self) -> std::io::Result<Vec<u8>>;
}
impl Finish for flate2::write::DeflateEncoder<Vec<u8>> {
    fn done(self) -> std::io::Result<Vec<u8>> {
        self.finish()
    }
}
impl Finish for flate2::write::ZlibEncoder<Vec<u8>> {
    fn done(self) -> std::io::Result<Vec<u8>> {
        self.finish()
    }
}
impl Finish for flate2::write::GzEncoder<Vec<u8>> {
    fn done(self) -> std::io::Result<Vec<u8>> {
        self.finish()
    }
}

fn deflate(mut enc: impl Finish, data: &[u8]) -> CallResult {
    enc.write_all(data).map_err(|e| e.to_string())?;
    enc.done().map(Value::bytes).map_err(|e| e.to_string())
}

fn inflate(dec: impl Read, fname: &str) -> CallResult {
    let mut out = Vec::new();
    dec.take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{fname}: {e}"))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(format!(
            "{fname}: the data inflates to more than {MAX_INFLATED} bytes"
        ));
    }
    Ok(Value::from_vec(out))
}
