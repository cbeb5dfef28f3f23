//! `midge passwd`: writes and updates the password file that the
//! `auth-password` plugin reads, as Mosquitto's `mosquitto_passwd` does.
//!
//! ```sh
//! midge passwd -c /etc/midge/passwd alice          # new file, asks for the password
//! midge passwd /etc/midge/passwd bob               # add or change bob
//! midge passwd -b /etc/midge/passwd carol s3cret   # password on the command line
//! midge passwd -D /etc/midge/passwd bob            # delete bob
//! ```
//!
//! The file is `user:hash` per line (`#` comments kept). The hash is
//! PBKDF2-HMAC-SHA512 with a random 16-byte salt, written in Mosquitto's
//! own format, `$7$<iterations>$<salt, base64>$<64-byte hash, base64>`, so
//! files move between Mosquitto and Midge both ways. The default is
//! [`DEFAULT_ITERATIONS`] (`-I` changes it; Mosquitto's own default is 101,
//! which Midge reads too). Every write goes to a temporary file that is then
//! renamed over the old one, so the broker never reads half a file; a new
//! file is mode 0640 in its directory's group (the package's `/etc/midge`
//! belongs to group `midge`, so the broker can read it and nobody else).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// PBKDF2 rounds of a new hash: 100 times Mosquitto's default (101). What
/// it costs a guesser per try on a stolen file, it costs the broker once per
/// user and plugin instance (auth-password remembers a password that
/// checked out, as a SHA-256 in memory, so reconnects are cheap); `-I`
/// trades one for the other.
pub const DEFAULT_ITERATIONS: u32 = 10_000;

/// Salt bytes of a new hash (Mosquitto uses 12).
const SALT_LEN: usize = 16;

/// `midge passwd` arguments (Mosquitto's `mosquitto_passwd` options).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Create a new password file (an existing one is overwritten).
    #[arg(short = 'c', conflicts_with = "delete")]
    create: bool,
    /// Delete the user from the file.
    #[arg(short = 'D', conflicts_with = "batch")]
    delete: bool,
    /// Batch mode: the password is the third argument (it is then visible
    /// to other users of the machine in the process list).
    #[arg(short = 'b')]
    batch: bool,
    /// Hash: only `sha512-pbkdf2` (the default) is written.
    #[arg(short = 'H', value_name = "HASH", default_value = "sha512-pbkdf2")]
    hash: String,
    /// PBKDF2 rounds of the new hash.
    #[arg(short = 'I', value_name = "ITERATIONS", default_value_t = DEFAULT_ITERATIONS)]
    iterations: u32,
    /// The password file.
    file: PathBuf,
    /// The user name (no ':').
    username: String,
    /// The password (with -b only).
    password: Option<String>,
}

/// Runs `midge passwd`.
pub fn run(args: Args) -> ExitCode {
    match execute(args) {
        Ok(message) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(args: Args) -> Result<String, String> {
    if args.hash != "sha512-pbkdf2" {
        return Err(format!(
            "-H {}: only sha512-pbkdf2 is written (Mosquitto's $7$ format)",
            args.hash
        ));
    }
    if args.iterations == 0 {
        return Err("-I: at least 1 iteration".into());
    }
    check_username(&args.username)?;
    if args.password.is_some() && !args.batch {
        return Err("a password argument needs -b (batch mode)".into());
    }
    let shown = args.file.display().to_string();
    let mut file = if args.create {
        PasswordFile::default()
    } else {
        PasswordFile::read(&args.file)
            .map_err(|e| format!("{shown}: {e} (use -c to create a new password file)"))?
    };
    if args.delete {
        if !file.delete(&args.username) {
            return Err(format!("{shown}: user `{}` not found", args.username));
        }
        file.write(&args.file)
            .map_err(|e| format!("{shown}: {e}"))?;
        return Ok(String::new());
    }
    let password = match (args.batch, args.password) {
        (true, Some(p)) => p,
        (true, None) => return Err("-b needs the password as the third argument".into()),
        (false, _) => ask_password()?,
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    if password.len() > 65_535 {
        return Err("password longer than 65535 bytes (MQTT's limit)".into());
    }
    file.set(&args.username, hash(password.as_bytes(), args.iterations)?);
    file.write(&args.file)
        .map_err(|e| format!("{shown}: {e}"))?;
    Ok(String::new())
}

fn check_username(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("empty user name".into());
    }
    if user.contains([':', '\n', '\r']) {
        return Err(format!("user name `{user}` contains ':' or a line break"));
    }
    if user.starts_with('#') {
        return Err(format!("user name `{user}` starts with '#' (a comment)"));
    }
    Ok(())
}

/// A new `$7$` hash of `password`.
pub fn hash(password: &[u8], iterations: u32) -> Result<String, String> {
    use ring::rand::SecureRandom;
    let rounds = std::num::NonZeroU32::new(iterations).ok_or("at least 1 iteration")?;
    let mut salt = [0u8; SALT_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no random numbers from the system")?;
    let mut out = [0u8; 64];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        rounds,
        &salt,
        password,
        &mut out,
    );
    Ok(format!(
        "$7${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    ))
}

/// Does `password` match a `$7$` hash? (`Err`: not a `$7$` hash.)
pub fn verify(hash: &str, password: &[u8]) -> Result<bool, String> {
    let parts: Vec<&str> = hash.split('$').collect();
    let [empty, "7", iterations, salt, expected] = parts.as_slice() else {
        return Err("not a $7$ hash".into());
    };
    if !empty.is_empty() {
        return Err("not a $7$ hash".into());
    }
    let rounds = iterations
        .parse::<std::num::NonZeroU32>()
        .map_err(|_| format!("bad iteration count `{iterations}`"))?;
    let salt = STANDARD.decode(salt).map_err(|e| format!("salt: {e}"))?;
    let expected = STANDARD
        .decode(expected)
        .map_err(|e| format!("hash: {e}"))?;
    Ok(ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        rounds,
        &salt,
        password,
        &expected,
    )
    .is_ok())
}

/// Reads a password twice from the terminal, without echo (`stty`); when
/// stdin is not a terminal, one line of stdin is the password (scripts).
fn ask_password() -> Result<String, String> {
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    let first = prompt("Password: ")?;
    let second = prompt("Reenter password: ")?;
    if first != second {
        return Err("passwords do not match".into());
    }
    Ok(first)
}

fn prompt(text: &str) -> Result<String, String> {
    let stty = |arg: &str| {
        std::fs::File::open("/dev/tty")
            .ok()
            .and_then(|tty| {
                std::process::Command::new("stty")
                    .arg(arg)
                    .stdin(tty)
                    .status()
                    .ok()
            })
            .is_some_and(|s| s.success())
    };
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let hidden = stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if hidden {
        stty("echo");
    }
    eprintln!();
    read.map_err(|e| format!("reading the password: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// A password file: its lines, entries and everything else (comments,
/// blank lines) kept in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PasswordFile {
    lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq)]
enum Line {
    Entry { user: String, hash: String },
    Other(String),
}

impl PasswordFile {
    /// Parses the text of a password file.
    pub fn parse(text: &str) -> Result<PasswordFile, String> {
        let mut lines = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                lines.push(Line::Other(raw.to_string()));
                continue;
            }
            let (user, hash) = t
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected user:hash", n + 1))?;
            lines.push(Line::Entry {
                user: user.to_string(),
                hash: hash.to_string(),
            });
        }
        Ok(PasswordFile { lines })
    }

    pub fn read(path: &Path) -> Result<PasswordFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        PasswordFile::parse(&text)
    }

    /// The hash of `user`.
    pub fn get(&self, user: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            Line::Entry { user: u, hash } if u == user => Some(hash.as_str()),
            _ => None,
        })
    }

    /// Adds `user`, or replaces its hash in place.
    pub fn set(&mut self, user: &str, hash: String) {
        for l in &mut self.lines {
            if let Line::Entry { user: u, hash: h } = l {
                if u == user {
                    *h = hash;
                    return;
                }
            }
        }
        self.lines.push(Line::Entry {
            user: user.to_string(),
            hash,
        });
    }

    /// Removes `user`; false when it was not there.
    pub fn delete(&mut self, user: &str) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| !matches!(l, Line::Entry { user: u, .. } if u == user));
        self.lines.len() != before
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            match l {
                Line::Entry { user, hash } => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(hash);
                }
                Line::Other(t) => out.push_str(t),
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically: a temporary file in the same directory
    /// (the old file's mode and group, or 0640 and the directory's group
    /// for a new one), fsync, rename, fsync of the directory.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or("not a file name")?
            .to_string_lossy()
            .into_owned();
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        let old = std::fs::metadata(path).ok();
        let mode = old
            .as_ref()
            .map_or(0o640, |m| m.permissions().mode() & 0o7777);
        let gid = match &old {
            Some(m) => m.gid(),
            None => std::fs::metadata(&dir).map_err(|e| e.to_string())?.gid(),
        };
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            f.write_all(self.text().as_bytes())
                .map_err(|e| e.to_string())?;
            // Group first, then the mode: never readable by a group it is not for.
            let _ = std::os::unix::fs::chown(&tmp, None, Some(gid));
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .map_err(|e| e.to_string())?;
            f.sync_all().map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash(b"secret", 1000).unwrap();
        let b = hash(b"secret", 1000).unwrap();
        assert_ne!(a, b, "random salt");
        assert!(a.starts_with("$7$1000$"), "{a}");
        assert_eq!(verify(&a, b"secret"), Ok(true));
        assert_eq!(verify(&a, b"Secret"), Ok(false));
        assert!(verify("$6$abc$def", b"x").is_err());
    }

    #[test]
    fn file_keeps_comments_replaces_in_place_and_deletes() {
        let mut f = PasswordFile::parse("# users\nalice:$7$1$a$b\n\nbob:$7$1$c$d\n").unwrap();
        f.set("alice", "$7$2$e$f".into());
        f.set("carol", "$7$3$g$h".into());
        assert!(f.delete("bob"));
        assert!(!f.delete("bob"));
        assert_eq!(f.text(), "# users\nalice:$7$2$e$f\n\ncarol:$7$3$g$h\n");
        assert_eq!(f.get("carol"), Some("$7$3$g$h"));
        assert!(PasswordFile::parse("nocolon\n").is_err());
    }

    #[test]
    fn user_names_with_a_colon_are_refused() {
        assert!(check_username("a:b").is_err());
        assert!(check_username("").is_err());
        assert!(check_username("alice").is_ok());
    }
}
