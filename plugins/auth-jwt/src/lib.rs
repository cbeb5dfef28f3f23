//! # auth-jwt: a JSON Web Token as the password
//!
//! Clients send a JWT (compact form) as the CONNECT password. The plugin
//! checks its signature (HS256/384/512 with a shared secret, RS256/384/512
//! with an RSA public key), `exp` / `nbf` (with leeway), and optionally `iss`
//! / `aud`, the user name and the client id. Claims then become the client's
//! ACL: `mqtt_pub` and `mqtt_sub` (arrays of topic filters, `%u` / `%c`
//! substituted) say where it may publish and subscribe; `superuser: true`
//! makes it a superuser.
//!
//! ```toml
//! [plugins.plugin.config]
//! hmac_secret = "change me"                 # enables HS256/384/512
//! rsa_public_key_pem = "-----BEGIN PUBLIC KEY-----\n..."  # or:
//! rsa_public_key_file = "/config/jwt.pem"   # inside a granted dir; enables RS256/384/512
//! issuer = "https://auth.example.com"       # optional: required `iss`
//! audience = "midge"                        # optional: required in `aud`
//! username_claim = "sub"                    # must equal the MQTT user name when one is sent
//! client_id_claim = "client_id"             # when present in the token, must equal the client id
//! publish_claim = "mqtt_pub"
//! subscribe_claim = "mqtt_sub"
//! superuser_claim = "superuser"
//! leeway_secs = 30
//! ```
//!
//! A client without a password is left to the next plugin (`ignore`); a bad
//! token is refused with 0x86. The ACL travels with the client as
//! attributes (`jwt.pub`, `jwt.sub`, `jwt.exp`), so `authorize` needs no
//! state; after `exp` every request is denied.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use midge_sdk::serde_json::{self, Value};
use midge_sdk::*;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde::Deserialize;
use sha2::{Sha256, Sha384, Sha512};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    hmac_secret: Option<String>,
    #[serde(default)]
    rsa_public_key_pem: Option<String>,
    #[serde(default)]
    rsa_public_key_file: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default = "d_username")]
    username_claim: String,
    #[serde(default = "d_client_id")]
    client_id_claim: String,
    #[serde(default = "d_pub")]
    publish_claim: String,
    #[serde(default = "d_sub")]
    subscribe_claim: String,
    #[serde(default = "d_super")]
    superuser_claim: String,
    #[serde(default = "d_leeway")]
    leeway_secs: u64,
}

fn d_username() -> String {
    "sub".into()
}
fn d_client_id() -> String {
    "client_id".into()
}
fn d_pub() -> String {
    "mqtt_pub".into()
}
fn d_sub() -> String {
    "mqtt_sub".into()
}
fn d_super() -> String {
    "superuser".into()
}
fn d_leeway() -> u64 {
    30
}

struct AuthJwt {
    cfg: Config,
    rsa: Option<RsaPublicKey>,
}

#[derive(Debug)]
#[allow(dead_code)] // fields are shown through Debug in the log
enum JwtError {
    Malformed,
    Algorithm(String),
    Signature,
    Expired,
    NotYetValid,
    Claim(&'static str),
}

macro_rules! hmac_ok {
    ($d:ty, $secret:expr, $msg:expr, $sig:expr) => {
        match <Hmac<$d> as Mac>::new_from_slice($secret) {
            Ok(mut mac) => {
                mac.update($msg);
                mac.verify_slice($sig).is_ok()
            }
            Err(_) => false,
        }
    };
}

fn rsa_ok<D>(key: &RsaPublicKey, msg: &[u8], sig: &[u8]) -> bool
where
    D: sha2::Digest + rsa::pkcs8::AssociatedOid,
{
    let vk = VerifyingKey::<D>::new(key.clone());
    match Signature::try_from(sig) {
        Ok(sig) => vk.verify(msg, &sig).is_ok(),
        Err(_) => false,
    }
}

impl AuthJwt {
    fn verify(&self, token: &str) -> Result<serde_json::Map<String, Value>, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Malformed)?)
                .map_err(|_| JwtError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let secret = self.cfg.hmac_secret.as_deref().map(str::as_bytes);
        let ok = match (alg, secret, &self.rsa) {
            ("HS256", Some(k), _) => hmac_ok!(Sha256, k, signed, &sig),
            ("HS384", Some(k), _) => hmac_ok!(Sha384, k, signed, &sig),
            ("HS512", Some(k), _) => hmac_ok!(Sha512, k, signed, &sig),
            ("RS256", _, Some(k)) => rsa_ok::<Sha256>(k, signed, &sig),
            ("RS384", _, Some(k)) => rsa_ok::<Sha384>(k, signed, &sig),
            ("RS512", _, Some(k)) => rsa_ok::<Sha512>(k, signed, &sig),
            _ => return Err(JwtError::Algorithm(alg.to_string())),
        };
        if !ok {
            return Err(JwtError::Signature);
        }
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Malformed)?)
                .map_err(|_| JwtError::Malformed)?;
        let Value::Object(claims) = claims else {
            return Err(JwtError::Malformed);
        };
        let now = clock::now_millis() / 1000;
        let leeway = self.cfg.leeway_secs;
        if let Some(exp) = claims.get("exp") {
            let exp = exp.as_u64().ok_or(JwtError::Claim("exp"))?;
            if now > exp + leeway {
                return Err(JwtError::Expired);
            }
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_u64().ok_or(JwtError::Claim("nbf"))?;
            if now + leeway < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        if let Some(iss) = &self.cfg.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(iss) {
                return Err(JwtError::Claim("iss"));
            }
        }
        if let Some(aud) = &self.cfg.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == aud,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(aud)),
                _ => false,
            };
            if !ok {
                return Err(JwtError::Claim("aud"));
            }
        }
        Ok(claims)
    }
}

fn filters(claims: &serde_json::Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn covers(acl: &str, req: &str) -> bool {
    let mut a = acl.split('/');
    let mut r = req.split('/');
    loop {
        match (a.next(), r.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(x)) if x != "#" => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Plugin for AuthJwt {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let cfg: Config = parse_config(config)?;
        let pem =
            match (&cfg.rsa_public_key_pem, &cfg.rsa_public_key_file) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
                    InitError::BadConfig(format!("rsa_public_key_file {path}: {e}"))
                })?),
                (None, None) => None,
            };
        let rsa = match pem {
            Some(pem) => Some(
                RsaPublicKey::from_public_key_pem(&pem)
                    .or_else(|_| RsaPublicKey::from_pkcs1_pem(&pem))
                    .map_err(|e| InitError::BadConfig(format!("RSA public key: {e}")))?,
            ),
            None => None,
        };
        if rsa.is_none() && cfg.hmac_secret.is_none() {
            return Err(InitError::BadConfig(
                "configure hmac_secret and/or an RSA public key".into(),
            ));
        }
        let manifest = Manifest::new("auth-jwt", env!("CARGO_PKG_VERSION"))
            .authenticate()
            .authorize();
        Ok((AuthJwt { cfg, rsa }, manifest))
    }

    fn authenticate(&mut self, req: AuthRequest) -> AuthDecision {
        let Some(password) = req.password else {
            return AuthDecision::Ignore;
        };
        let Ok(token) = std::str::from_utf8(&password) else {
            return AuthDecision::Deny(reason::BAD_USERNAME_OR_PASSWORD);
        };
        let claims = match self.verify(token) {
            Ok(c) => c,
            Err(e) => {
                log::info(&format!("client {}: token refused: {e:?}", req.client_id));
                return AuthDecision::Deny(reason::BAD_USERNAME_OR_PASSWORD);
            }
        };
        if let Some(user) = &req.username {
            if claims.get(&self.cfg.username_claim).and_then(Value::as_str) != Some(user.as_str()) {
                return AuthDecision::Deny(reason::BAD_USERNAME_OR_PASSWORD);
            }
        }
        if let Some(cid) = claims.get(&self.cfg.client_id_claim) {
            if cid.as_str() != Some(req.client_id.as_str()) {
                return AuthDecision::Deny(reason::CLIENT_IDENTIFIER_NOT_VALID);
            }
        }
        let superuser = claims
            .get(&self.cfg.superuser_claim)
            .and_then(Value::as_bool)
            == Some(true);
        let publish = filters(&claims, &self.cfg.publish_claim);
        let subscribe = filters(&claims, &self.cfg.subscribe_claim);
        let mut allow = if superuser {
            AuthAllow::superuser()
        } else {
            AuthAllow::user()
        };
        allow = allow
            .with_attribute("jwt.pub", &Value::from(publish).to_string())
            .with_attribute("jwt.sub", &Value::from(subscribe).to_string());
        if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
            allow = allow.with_attribute("jwt.exp", &(exp + self.cfg.leeway_secs).to_string());
        }
        AuthDecision::Allow(allow)
    }

    fn authorize(&mut self, req: AuthzRequest) -> AuthzDecision {
        let client = &req.client;
        let (attr, publish) = match req.action {
            Action::Publish => ("jwt.pub", true),
            Action::Subscribe => ("jwt.sub", false),
        };
        let Some(list) = client.attribute(attr) else {
            return AuthzDecision::Ignore; // not authenticated by this plugin
        };
        if let Some(exp) = client
            .attribute("jwt.exp")
            .and_then(|e| e.parse::<u64>().ok())
        {
            if clock::now_millis() / 1000 > exp {
                return AuthzDecision::Deny;
            }
        }
        let list: Vec<String> = serde_json::from_str(list).unwrap_or_default();
        let user = client.username.as_deref().unwrap_or("");
        let safe = |v: &str| !v.contains(['+', '#', '/']);
        for f in list {
            if (f.contains("%u") && !safe(user)) || (f.contains("%c") && !safe(&client.client_id)) {
                continue;
            }
            let f = f.replace("%u", user).replace("%c", &client.client_id);
            let hit = if publish {
                topic_matches(&f, &req.topic)
            } else {
                covers(&f, &req.topic)
            };
            if hit {
                return AuthzDecision::Allow;
            }
        }
        AuthzDecision::Deny
    }
}

midge_sdk::export_plugin!(AuthJwt);
