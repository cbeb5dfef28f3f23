//! Test plugin for the broker's end-to-end tests of MQTT 5.0 enhanced
//! authentication: a real 2-step challenge-response.
//!
//! 1. CONNECT (or AUTH 0x19, re-authentication) with Authentication Method
//!    `method`: the plugin answers `continue-auth` with a fresh 16-byte
//!    nonce, sent to the client in AUTH 0x18 and kept as the exchange's
//!    state.
//! 2. The client's AUTH 0x18 must carry HMAC-SHA256(secret, nonce). Right:
//!    allowed, with HMAC-SHA256(secret, response) as the final
//!    authentication data (the server's proof, in CONNACK / AUTH 0x00).
//!    Wrong: denied with `deny_code` (default 0x87).
//!
//! Other methods, and clients without one, are ignored (the next plugin or
//! the broker decides).
//!
//! ```toml
//! config = { method = "midge-hmac", secret = "s3cret", deny_code = 135 }
//! ```

use hmac::{Hmac, Mac};
use midge_sdk::*;
use sha2::Sha256;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    method: String,
    secret: String,
    #[serde(default = "not_authorized")]
    deny_code: u8,
}

fn not_authorized() -> u8 {
    reason::NOT_AUTHORIZED
}

struct Challenge {
    config: Config,
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// 16 unpredictable bytes: std's `RandomState` is seeded from WASI's random
/// source; two of its hashers give 128 bits.
fn nonce() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let mut out = Vec::with_capacity(16);
    for i in 0..2u8 {
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u8(i);
        h.write_u64(clock::monotonic_nanos());
        out.extend_from_slice(&h.finish().to_be_bytes());
    }
    out
}

impl Plugin for Challenge {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let config: Config = parse_config(config)?;
        if config.secret.is_empty() || config.method.is_empty() {
            return Err(InitError::BadConfig(
                "`method` and `secret` must not be empty".into(),
            ));
        }
        let manifest = Manifest::new("test-challenge", "0.1.0").authenticate();
        Ok((Challenge { config }, manifest))
    }

    fn authenticate(&mut self, req: AuthRequest) -> AuthDecision {
        if req.auth_method.as_deref() != Some(self.config.method.as_str()) {
            return AuthDecision::Ignore;
        }
        let secret = self.config.secret.as_bytes();
        match req.auth_state {
            None => {
                let n = nonce();
                AuthDecision::challenge(n.clone(), n)
            }
            Some(n) => {
                let response = req.auth_data.unwrap_or_default();
                if !response.is_empty() && response == hmac(secret, &n) {
                    let proof = hmac(secret, &response);
                    AuthDecision::Allow(AuthAllow::user().with_auth_data(proof))
                } else {
                    log::info(&format!("client {}: wrong response", req.client_id));
                    AuthDecision::Deny(self.config.deny_code)
                }
            }
        }
    }
}

midge_sdk::export_plugin!(Challenge);
