//! The TLS client side of `mqtts://` and `wss://` bridges (rustls with the
//! ring provider, as the listeners use). Loaded once when the configuration
//! is checked; every error names the key and the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

use super::BridgeTlsConfig;
use crate::pem::{pem_certs, pem_key};

/// Where the system's CA bundle is, when `tls.ca` is not set.
fn system_bundle() -> PathBuf {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"))
}

/// Builds the client configuration. The error is (key under `tls`, e.g.
/// `.ca`, and the message naming the file).
pub fn client_config(
    cfg: &BridgeTlsConfig,
    server_name: &str,
) -> Result<Arc<ClientConfig>, (&'static str, String)> {
    let in_file = |p: &Path, m: String| format!("{}: {m}", p.display());
    if ServerName::try_from(server_name.to_string()).is_err() {
        return Err((
            ".server_name",
            format!("`{server_name}` is not a DNS name or an IP address"),
        ));
    }
    let ca = cfg.ca.clone().unwrap_or_else(system_bundle);
    let mut roots = RootCertStore::empty();
    let certs = pem_certs(&ca).map_err(|m| (".ca", in_file(&ca, m)))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err((
            ".ca",
            in_file(&ca, "no usable CA certificate in the file".into()),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            let chain = pem_certs(cert).map_err(|m| (".cert", in_file(cert, m)))?;
            let k = pem_key(key).map_err(|m| (".key", in_file(key, m)))?;
            builder.with_client_auth_cert(chain, k).map_err(|e| {
                (
                    ".key",
                    in_file(key, format!("unusable with the certificate: {e}")),
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err((".key", "must be set with `cert`".into())),
        (None, Some(_)) => return Err((".cert", "must be set with `key`".into())),
    };
    Ok(Arc::new(config))
}
