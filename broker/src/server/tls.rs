//! TLS for the `mqtts` and `wss` listeners (rustls, ring provider).
//!
//! [`Tls::load`] reads `[listeners.tls]` once, in `Server::bind`: each error
//! names the field and the file. [`Tls::accept`] runs the handshake inside
//! the connection's own task (the caller bounds it by the connect timeout)
//! and, for `cn_as_username`, returns the subject common name of the
//! verified client certificate, read by the small DER walk at the end of
//! this file.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::ServerError;
use crate::config::TlsConfig;
use crate::pem::{pem_certs, pem_key};

/// The loaded TLS configuration of the listeners.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    cn_as_username: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cn_as_username", &self.cn_as_username)
            .finish_non_exhaustive()
    }
}

/// A finished handshake.
pub struct Accepted {
    pub stream: TlsStream<TcpStream>,
    /// Subject CN of the client certificate, when `cn_as_username` is on and
    /// the client presented one (already verified against `client_ca`).
    pub cn: Option<String>,
}

fn error(field: &'static str, path: &Path, message: impl Into<String>) -> ServerError {
    ServerError::Tls {
        field,
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    pem_certs(path).map_err(|m| error(field, path, m))
}

fn key(field: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    pem_key(path).map_err(|m| error(field, path, m))
}

impl Tls {
    /// Loads certificates and keys and builds the acceptor.
    pub fn load(cfg: &TlsConfig) -> Result<Tls, ServerError> {
        // Explicit provider: the process may link rustls with more than one
        // (the tests do), and then there is no default to pick.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certs("listeners.tls.cert", &cfg.cert)?;
        let key = key("listeners.tls.key", &cfg.key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("listeners.tls", &cfg.cert, e.to_string()))?;
        let builder = match &cfg.client_ca {
            Some(ca) => {
                let field = "listeners.tls.client_ca";
                let mut roots = RootCertStore::empty();
                for c in certs(field, ca)? {
                    roots
                        .add(c)
                        .map_err(|e| error(field, ca, format!("unusable CA certificate: {e}")))?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = if cfg.require_client_cert {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                let v = v.build().map_err(|e| error(field, ca, e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => error(
                "listeners.tls.key",
                &cfg.key,
                format!(
                    "private key does not match the certificate in {}",
                    cfg.cert.display()
                ),
            ),
            rustls::Error::InvalidCertificate(e) => error(
                "listeners.tls.cert",
                &cfg.cert,
                format!("invalid certificate: {e}"),
            ),
            e => error(
                "listeners.tls.key",
                &cfg.key,
                format!("unusable private key: {e}"),
            ),
        })?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cn_as_username: cfg.cn_as_username,
        })
    }

    /// `listeners.tls.cn_as_username`.
    pub fn cn_as_username(&self) -> bool {
        self.cn_as_username
    }

    /// The server side of the handshake (unbounded: the caller adds the deadline).
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Accepted> {
        let stream = self.acceptor.accept(tcp).await?;
        let cn = if self.cn_as_username {
            stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| subject_cn(c))
        } else {
            None
        };
        Ok(Accepted { stream, cn })
    }
}

// ---------------------------------------------------------------------------
// Subject CN of a DER certificate
// ---------------------------------------------------------------------------

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// id-at-commonName, 2.5.4.3.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

/// Splits one DER element off `b`: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers never occur in the fields read here
    }
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = b.split_at_checked(n)?;
        b = rest;
        bytes
            .iter()
            .fold(0usize, |acc, &x| acc << 8 | usize::from(x))
    };
    let (value, rest) = b.split_at_checked(len)?;
    Some((tag, value, rest))
}

/// Like [`tlv`], but the tag must be `want`.
fn expect(b: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, value, rest) = tlv(b)?;
    (tag == want).then_some((value, rest))
}

/// The first common name in the certificate's subject, if it has one that
/// is a valid MQTT string (UTF-8 without U+0000).
///
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity, subject, ... }, ... }
pub fn subject_cn(cert: &[u8]) -> Option<String> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let (mut tag, _, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        (tag, _, rest) = tlv(rest)?; // explicit [0] version, then the serial number
    }
    if tag != 0x02 {
        return None;
    }
    for _ in 0..3 {
        // signature algorithm, issuer, validity
        (_, rest) = expect(rest, SEQUENCE)?;
    }
    let (mut subject, _) = expect(rest, SEQUENCE)?;
    while !subject.is_empty() {
        let (mut rdn, next) = expect(subject, SET)?;
        subject = next;
        while !rdn.is_empty() {
            let (atv, next) = expect(rdn, SEQUENCE)?;
            rdn = next;
            let (oid, value) = expect(atv, OID)?;
            if oid == OID_CN {
                let (tag, s, _) = tlv(value)?;
                return directory_string(tag, s).filter(|s| !s.contains('\0'));
            }
        }
    }
    None
}

/// X.520 DirectoryString (and IA5String) contents as text.
fn directory_string(tag: u8, s: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, TeletexString (taken as UTF-8), IA5String
        0x0c | 0x13 | 0x14 | 0x16 => String::from_utf8(s.to_vec()).ok(),
        // BMPString: UTF-16BE
        0x1e => {
            if !s.len().is_multiple_of(2) {
                return None;
            }
            let units = s.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        // UniversalString: UTF-32BE
        0x1c => {
            if !s.len().is_multiple_of(4) {
                return None;
            }
            s.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER element with a definite length (short or long form).
    fn el(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        let n = content.len();
        if n < 0x80 {
            v.push(n as u8);
        } else if n < 0x100 {
            v.extend([0x81, n as u8]);
        } else {
            v.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        v.extend_from_slice(content);
        v
    }

    fn atv(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        el(SET, &el(SEQUENCE, &[el(OID, oid), el(tag, value)].concat()))
    }

    /// A certificate skeleton: only the structure the walk reads is real.
    fn cert(version: bool, subject: &[u8]) -> Vec<u8> {
        let mut tbs = Vec::new();
        if version {
            tbs.extend(el(0xa0, &el(0x02, &[2])));
        }
        tbs.extend(el(0x02, &[0x01, 0x02, 0x03]));
        tbs.extend(el(SEQUENCE, &el(OID, &[0x2a, 0x86, 0x48])));
        tbs.extend(el(SEQUENCE, &atv(OID_CN, 0x0c, b"Some CA")));
        tbs.extend(el(
            SEQUENCE,
            &[el(0x17, b"250101000000Z"), el(0x17, b"350101000000Z")].concat(),
        ));
        tbs.extend(el(SEQUENCE, subject));
        tbs.extend(el(SEQUENCE, &[0u8; 200])); // stands in for the public key (long-form length)
        el(
            SEQUENCE,
            &[el(SEQUENCE, &tbs), el(SEQUENCE, &[]), el(0x03, &[0, 1, 2])].concat(),
        )
    }

    #[test]
    fn finds_the_subject_cn_not_the_issuer_cn() {
        let org = atv(&[0x55, 0x04, 0x0a], 0x0c, b"Midge");
        let cn = atv(OID_CN, 0x0c, b"device-7");
        let c = cert(true, &[org, cn].concat());
        assert_eq!(subject_cn(&c).as_deref(), Some("device-7"));
        let c = cert(false, &atv(OID_CN, 0x13, b"printable"));
        assert_eq!(subject_cn(&c).as_deref(), Some("printable"));
    }

    #[test]
    fn bmp_string_and_missing_cn() {
        let bmp: Vec<u8> = "h\u{e9}"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        let c = cert(true, &atv(OID_CN, 0x1e, &bmp));
        assert_eq!(subject_cn(&c).as_deref(), Some("h\u{e9}"));
        let c = cert(true, &atv(&[0x55, 0x04, 0x0a], 0x0c, b"no cn"));
        assert_eq!(subject_cn(&c), None);
        let c = cert(true, &atv(OID_CN, 0x0c, b"nul\0inside"));
        assert_eq!(subject_cn(&c), None);
    }

    #[test]
    fn truncated_or_garbage_input_never_panics() {
        let c = cert(true, &atv(OID_CN, 0x0c, b"device-7"));
        for n in 0..c.len() {
            let _ = subject_cn(&c[..n]);
        }
        for i in 0..c.len() {
            let mut bad = c.clone();
            bad[i] ^= 0xff;
            let _ = subject_cn(&bad);
        }
        assert_eq!(subject_cn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_cn(&[]), None);
    }
}
