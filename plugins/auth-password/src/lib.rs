//! # auth-password: user names, salted password hashes and ACL rules
//!
//! Configuration (the plugin's `config` table):
//!
//! ```toml
//! [plugins.plugin.config]
//! password_file = "/config/passwd"   # inside a granted read-only dir; optional
//! users = { alice = "$pbkdf2-sha256$100000$c2FsdA$..." }  # inline entries; optional
//! superusers = ["admin"]
//! acl_default = "deny"               # "allow", "deny" or "ignore" (next plugin decides)
//! anonymous = "ignore"               # no user name: "deny" or "ignore"
//!
//! [[plugins.plugin.config.acl]]      # first matching rule decides
//! user = "*"                         # user name or "*" (default "*")
//! client_id = "*"                    # client id or "*" (default "*")
//! access = "readwrite"               # "read" (subscribe), "write" (publish), "readwrite"
//! filter = "devices/%c/#"            # %u = user name, %c = client id
//! permission = "allow"               # or "deny"
//! ```
//!
//! Password file: one `user:hash` per line, `#` comments, as Mosquitto's
//! `password_file`: `midge passwd` (like `mosquitto_passwd`) writes it, and
//! a file from `mosquitto_passwd` works as it is. A user not in it (or in
//! `users`) is refused with 0x86; a client without a user name is left to
//! the broker's `allow_anonymous` (or refused, with `anonymous = "deny"`).
//! The file is read again when it changes (checked at most once a second,
//! on CONNECT): `midge passwd` takes effect without a reload; a changed
//! file that does not parse is logged and the previous users stay.
//!
//! A password that checked out is remembered (SHA-256 of the stored hash
//! and the password, in memory, per instance): a reconnect costs one SHA-256,
//! not the slow PBKDF2 again.
//!
//! Hashes: Mosquitto's `$7$<iterations>$<salt base64>$<hash base64>`
//! (PBKDF2-HMAC-SHA512; what `midge passwd` writes) or
//! `$pbkdf2-sha256$<iterations>$<salt base64>$<hash base64>` (standard
//! base64, padding optional). Generate the latter with
//!
//! ```sh
//! python3 -c 'import hashlib,os,base64,sys; s=os.urandom(16); i=100000; \
//!   print("$pbkdf2-sha256$%d$%s$%s" % (i, base64.b64encode(s).decode(), \
//!   base64.b64encode(hashlib.pbkdf2_hmac("sha256", sys.argv[1].encode(), s, i)).decode()))' PASSWORD
//! ```
//!
//! ACL filters are matched against topic names on publish, and must cover
//! the requested filter on subscribe (`a/#` covers `a/b/+`).

use std::collections::HashMap;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use midge_sdk::*;
use serde::Deserialize;
use subtle::ConstantTimeEq;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    password_file: Option<String>,
    #[serde(default)]
    users: HashMap<String, String>,
    #[serde(default)]
    superusers: Vec<String>,
    #[serde(default)]
    acl: Vec<Rule>,
    #[serde(default = "deny")]
    acl_default: Default3,
    #[serde(default = "ignore")]
    anonymous: Default3,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Default3 {
    Allow,
    Deny,
    Ignore,
}

fn deny() -> Default3 {
    Default3::Deny
}
fn ignore() -> Default3 {
    Default3::Ignore
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Access {
    Read,
    Write,
    Readwrite,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Permission {
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default = "star")]
    user: String,
    #[serde(default = "star")]
    client_id: String,
    access: Access,
    filter: String,
    permission: Permission,
}

fn star() -> String {
    "*".into()
}

enum Hash {
    Sha256 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

fn b64(s: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(s)
        .ok()
        .or_else(|| STANDARD_NO_PAD.decode(s).ok())
}

fn parse_hash(s: &str) -> Option<Hash> {
    let parts: Vec<&str> = s.split('$').collect();
    // "", kind, iterations, salt, hash
    if parts.len() != 5 || !parts[0].is_empty() {
        return None;
    }
    let iterations: u32 = parts[2].parse().ok().filter(|&i| i > 0)?;
    let salt = b64(parts[3])?;
    let hash = b64(parts[4])?;
    match parts[1] {
        "pbkdf2-sha256" => Some(Hash::Sha256 {
            iterations,
            salt,
            hash,
        }),
        "7" => Some(Hash::Sha512 {
            iterations,
            salt,
            hash,
        }),
        _ => None,
    }
}

impl Hash {
    /// The stored derived key (ties a cached check to this very hash).
    fn stored(&self) -> &[u8] {
        match self {
            Hash::Sha256 { hash, .. } | Hash::Sha512 { hash, .. } => hash,
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Sha256 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
            Hash::Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
        }
    }
}

/// The password file as last read, and when it was last looked at.
struct PasswordFile {
    path: String,
    /// (modification time, length) of the version read.
    stamp: Option<(std::time::SystemTime, u64)>,
    users: HashMap<String, Hash>,
    /// `clock::monotonic_nanos` of the last look at the file.
    checked: u64,
}

/// How often (at most) the file's modification time is looked at.
const RECHECK_NANOS: u64 = 1_000_000_000;

fn file_stamp(path: &str) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The users of a password file's text; errors name the line.
fn parse_file(path: &str, text: &str) -> Result<HashMap<String, Hash>, String> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("password_file {path} line {}: expected user:hash", n + 1))?;
        let parsed = parse_hash(hash).ok_or_else(|| {
            format!(
                "password_file {path} line {}: user {user}: unsupported hash format",
                n + 1
            )
        })?;
        users.insert(user.to_string(), parsed);
    }
    Ok(users)
}

impl PasswordFile {
    fn load(path: &str) -> Result<PasswordFile, String> {
        let stamp = file_stamp(path);
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("password_file {path}: {e}"))?;
        Ok(PasswordFile {
            path: path.to_string(),
            stamp,
            users: parse_file(path, &text)?,
            checked: clock::monotonic_nanos(),
        })
    }

    /// Reads the file again if it changed since the last read (looked at
    /// once a second at most). A file that no longer parses keeps the
    /// users read before, and says so in the log.
    fn refresh(&mut self) {
        let now = clock::monotonic_nanos();
        if now.saturating_sub(self.checked) < RECHECK_NANOS {
            return;
        }
        self.checked = now;
        let stamp = file_stamp(&self.path);
        if stamp == self.stamp || stamp.is_none() {
            return;
        }
        match PasswordFile::load(&self.path) {
            Ok(f) => {
                log::info(&format!(
                    "password_file {} read again: {} users",
                    self.path,
                    f.users.len()
                ));
                *self = f;
            }
            Err(e) => {
                log::warn(&format!("{e}; the users read before stay"));
                self.stamp = stamp;
            }
        }
    }
}

/// Users whose password checked out lately: SHA-256 of (the stored hash,
/// the password). A reconnect with the same password costs one SHA-256
/// instead of the deliberately slow PBKDF2; a changed entry in the file
/// (another stored hash) never matches an old one. In memory only, bounded.
const VERIFIED_MAX: usize = 65_536;

fn quick(hash: &Hash, password: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(hash.stored());
    h.update(password);
    h.finalize().into()
}

struct AuthPassword {
    /// `users` of the config.
    users: HashMap<String, Hash>,
    file: Option<PasswordFile>,
    verified: HashMap<String, [u8; 32]>,
    superusers: Vec<String>,
    acl: Vec<Rule>,
    acl_default: Default3,
    anonymous: Default3,
}

/// Does ACL filter `acl` (after substitution) cover subscription filter `req`?
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

fn substitute(filter: &str, user: &str, client_id: &str) -> Option<String> {
    // A substituted value containing wildcards or separators would widen the
    // rule: refuse such rules for this client.
    let unsafe_value = |v: &str| v.contains(['+', '#', '/']);
    if (filter.contains("%u") && unsafe_value(user))
        || (filter.contains("%c") && unsafe_value(client_id))
    {
        return None;
    }
    Some(filter.replace("%u", user).replace("%c", client_id))
}

impl Plugin for AuthPassword {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let cfg: Config = parse_config(config)?;
        let file = match &cfg.password_file {
            Some(path) => Some(PasswordFile::load(path).map_err(InitError::BadConfig)?),
            None => None,
        };
        let mut users = HashMap::new();
        for (user, hash) in cfg.users {
            let parsed = parse_hash(&hash).ok_or_else(|| {
                InitError::BadConfig(format!("user {user}: unsupported hash format"))
            })?;
            users.insert(user, parsed);
        }
        let manifest = Manifest::new("auth-password", env!("CARGO_PKG_VERSION"))
            .authenticate()
            .authorize();
        Ok((
            AuthPassword {
                users,
                file,
                verified: HashMap::new(),
                superusers: cfg.superusers,
                acl: cfg.acl,
                acl_default: cfg.acl_default,
                anonymous: cfg.anonymous,
            },
            manifest,
        ))
    }

    fn authenticate(&mut self, req: AuthRequest) -> AuthDecision {
        let Some(user) = req.username else {
            return match self.anonymous {
                Default3::Deny => AuthDecision::Deny(reason::NOT_AUTHORIZED),
                _ => AuthDecision::Ignore,
            };
        };
        if let Some(f) = &mut self.file {
            f.refresh();
        }
        // The file's entry wins over an inline one of the same name.
        let found = self
            .file
            .as_ref()
            .and_then(|f| f.users.get(&user))
            .or_else(|| self.users.get(&user));
        let Some(hash) = found else {
            return AuthDecision::Deny(reason::BAD_USERNAME_OR_PASSWORD);
        };
        let password = req.password.unwrap_or_default();
        let q = quick(hash, &password);
        let cached = self
            .verified
            .get(&user)
            .is_some_and(|v| bool::from(v.ct_eq(&q)));
        if !cached {
            if !hash.verify(&password) {
                return AuthDecision::Deny(reason::BAD_USERNAME_OR_PASSWORD);
            }
            if self.verified.len() >= VERIFIED_MAX {
                self.verified.clear();
            }
            self.verified.insert(user.clone(), q);
        }
        if self.superusers.contains(&user) {
            AuthDecision::Allow(AuthAllow::superuser())
        } else {
            AuthDecision::Allow(AuthAllow::user())
        }
    }

    fn authorize(&mut self, req: AuthzRequest) -> AuthzDecision {
        let client = &req.client;
        let user = client.username.as_deref().unwrap_or("");
        let wanted = match req.action {
            Action::Publish => Access::Write,
            Action::Subscribe => Access::Read,
        };
        for rule in &self.acl {
            if rule.user != "*" && (client.username.is_none() || rule.user != user) {
                continue;
            }
            if rule.client_id != "*" && rule.client_id != client.client_id {
                continue;
            }
            if rule.access != Access::Readwrite && rule.access != wanted {
                continue;
            }
            let Some(filter) = substitute(&rule.filter, user, &client.client_id) else {
                continue;
            };
            let hit = match req.action {
                Action::Publish => topic_matches(&filter, &req.topic),
                Action::Subscribe => covers(&filter, &req.topic),
            };
            if hit {
                return match rule.permission {
                    Permission::Allow => AuthzDecision::Allow,
                    Permission::Deny => AuthzDecision::Deny,
                };
            }
        }
        match self.acl_default {
            Default3::Allow => AuthzDecision::Allow,
            Default3::Deny => AuthzDecision::Deny,
            Default3::Ignore => AuthzDecision::Ignore,
        }
    }
}

midge_sdk::export_plugin!(AuthPassword);
