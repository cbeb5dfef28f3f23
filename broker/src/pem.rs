//! PEM files (certificates and private keys) as the TLS listeners and the
//! bridges' TLS client read them: each error says what is wrong with the
//! file; the caller names the key and the path.

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Reads a PEM file that must not be empty; the error says what is wrong
/// with the file (the caller names the field and the path).
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("file is empty".into());
    }
    Ok(bytes)
}

/// Every certificate in a PEM file (at least one). Also used by the
/// bridges' TLS client configuration.
pub fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found (expected PEM `BEGIN CERTIFICATE` sections)".into());
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => "no private key found (expected PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)".to_string(),
        e => format!("not valid PEM: {e}"),
    })
}
