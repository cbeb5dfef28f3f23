//! MQTT topics and filters as NATS subjects, and client ids / topics as KV keys.
//!
//! A NATS subject is `.`-separated tokens; a token is never empty, holds no
//! whitespace, and `*` / `>` as a whole token are wildcards. An MQTT topic is
//! `/`-separated levels that may be empty and hold any UTF-8 but U+0000. So:
//!
//! - each MQTT level becomes one token, in order, after the subject prefix
//!   (`<cluster>.m.`);
//! - inside a level, the printable ASCII bytes `!`..`~` stay as they are, except
//!   `.`, `*`, `>` and the escape `~` itself; every other byte (space, control
//!   characters, each byte of a non-ASCII character, and those four) becomes
//!   `~XX` (two upper-case hex digits);
//! - an empty level becomes the token `~` (a lone `~` cannot come from the rule
//!   above, which always writes `~` followed by two digits).
//!
//! The mapping is a bijection from valid topics to the subjects it produces:
//! [`subject_to_topic`] reverses [`topic_subject`] exactly (property-tested
//! below). `$` is not escaped: it never leads a subject here (the prefix comes
//! first), and the receiving node matches every topic against its own
//! subscriptions again, so `#` reaching a `$` topic over NATS changes nothing.
//!
//! Filters: `+` -> `*`, `#` -> `>`; since MQTT `a/#` also matches `a` (the parent
//! level) and NATS `a.>` does not, a filter ending in `/#` maps to two
//! subjects. The filter `#` alone maps to `>` (every topic has a level).
//!
//! KV keys allow only `-/_=.A-Za-z0-9` and must not start or end with `.`:
//! [`kv_key`] keeps `A-Za-z0-9-_/` and writes every other byte as `=XX`.

use std::fmt::Write as _;

/// The escape byte inside subject tokens.
const ESC: u8 = b'~';

fn hex(b: u8) -> [u8; 2] {
    const H: &[u8; 16] = b"0123456789ABCDEF";
    [H[usize::from(b >> 4)], H[usize::from(b & 0xF)]]
}

fn unhex(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

fn plain_subject_byte(b: u8) -> bool {
    (0x21..=0x7E).contains(&b) && !matches!(b, b'.' | b'*' | b'>' | ESC)
}

/// Appends one MQTT level as a subject token.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('~');
        return;
    }
    if level.bytes().all(plain_subject_byte) {
        out.push_str(level);
        return;
    }
    for b in level.bytes() {
        if plain_subject_byte(b) {
            out.push(char::from(b));
        } else {
            let [h, l] = hex(b);
            out.push('~');
            out.push(char::from(h));
            out.push(char::from(l));
        }
    }
}

/// One MQTT level (or any string) as one subject token: for NATS queue
/// group names (shared subscription groups).
pub fn token(level: &str) -> String {
    let mut out = String::with_capacity(level.len() + 4);
    push_level(&mut out, level);
    out
}

/// `prefix` + the subject of `topic`. `prefix` ends with `.` (e.g. `midge.m.`).
pub fn topic_subject(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + topic.len() + 8);
    out.push_str(prefix);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_level(&mut out, level);
    }
    out
}

/// Why a subject does not decode to a topic (a peer sent something this
/// mapping never produces).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject {0:?} does not start with {1:?}")]
    Prefix(String, String),
    #[error("subject {0:?}: bad escape at byte {1}")]
    Escape(String, usize),
    #[error("subject {0:?}: not UTF-8 or holds U+0000 once unescaped")]
    Utf8(String),
}

/// The topic a subject made by [`topic_subject`] stands for.
pub fn subject_to_topic(prefix: &str, subject: &str) -> Result<String, SubjectError> {
    let Some(rest) = subject.strip_prefix(prefix) else {
        return Err(SubjectError::Prefix(subject.into(), prefix.into()));
    };
    if !rest.bytes().any(|b| b == ESC) {
        // Fast path: nothing escaped, only separators change.
        return Ok(rest.replace('.', "/"));
    }
    let mut bytes = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        if token == "~" {
            continue;
        }
        let t = token.as_bytes();
        let mut j = 0;
        while j < t.len() {
            if t[j] == ESC {
                let at = prefix.len() + j;
                let (Some(h), Some(l)) = (
                    t.get(j + 1).copied().and_then(unhex),
                    t.get(j + 2).copied().and_then(unhex),
                ) else {
                    return Err(SubjectError::Escape(subject.into(), at));
                };
                bytes.push(h << 4 | l);
                j += 3;
            } else {
                bytes.push(t[j]);
                j += 1;
            }
        }
    }
    match String::from_utf8(bytes) {
        Ok(s) if !s.contains('\0') => Ok(s),
        _ => Err(SubjectError::Utf8(subject.into())),
    }
}

/// The subjects whose messages a (plain, not shared) MQTT filter wants: one,
/// or two for a filter ending in `/#` (`a/#` -> `p.a.>` and `p.a`).
pub fn filter_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let mut out = String::with_capacity(prefix.len() + filter.len() + 8);
    out.push_str(prefix);
    let mut parent = None;
    for (i, level) in filter.split('/').enumerate() {
        if i > 0 {
            if level == "#" {
                parent = Some(out.clone());
            }
            out.push('.');
        }
        match level {
            "+" => out.push('*'),
            "#" => out.push('>'),
            _ => push_level(&mut out, level),
        }
    }
    let mut v = vec![out];
    v.extend(parent);
    v
}

fn plain_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/')
}

/// `s` as a JetStream KV key (client ids, topics): bytes outside
/// `A-Za-z0-9-_/` become `=XX`. Never empty: "" becomes `=`.
pub fn kv_key(s: &str) -> String {
    if s.is_empty() {
        return "=".into();
    }
    if s.bytes().all(plain_key_byte) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if plain_key_byte(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "={:02X}", b);
        }
    }
    out
}

/// Reverses [`kv_key`]; `None` for a key it never makes.
pub fn kv_key_decode(key: &str) -> Option<String> {
    if key == "=" {
        return Some(String::new());
    }
    let k = key.as_bytes();
    let mut bytes = Vec::with_capacity(k.len());
    let mut j = 0;
    while j < k.len() {
        if k[j] == b'=' {
            let h = unhex(*k.get(j + 1)?)?;
            let l = unhex(*k.get(j + 2)?)?;
            bytes.push(h << 4 | l);
            j += 3;
        } else if plain_key_byte(k[j]) {
            bytes.push(k[j]);
            j += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Is `token` a valid name for a NATS subject token, stream or bucket part
/// (node names, the cluster name)? `A-Za-z0-9-_`, 1..=64 bytes.
pub fn valid_name(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "midge.m.";

    fn roundtrip(topic: &str) -> String {
        let s = topic_subject(P, topic);
        assert_eq!(subject_to_topic(P, &s).as_deref(), Ok(topic), "{s}");
        s
    }

    /// A subject NATS accepts for publishing: non-empty tokens, no
    /// whitespace, no wildcard token.
    fn valid_publish_subject(s: &str) -> bool {
        s.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && t.bytes().all(|b| b > 0x20 && b < 0x7F)
        })
    }

    #[test]
    fn odd_topics_map_and_round_trip() {
        for (topic, subject) in [
            ("a/b/c", "midge.m.a.b.c"),
            ("a.b/c", "midge.m.a~2Eb.c"),
            ("/a", "midge.m.~.a"),
            ("a//b/", "midge.m.a.~.b.~"),
            ("/", "midge.m.~.~"),
            ("a b", "midge.m.a~20b"),
            ("*", "midge.m.~2A"),
            (">/x", "midge.m.~3E.x"),
            ("~", "midge.m.~7E"),
            ("$SYS/x", "midge.m.$SYS.x"),
            ("é", "midge.m.~C3~A9"),
            ("tab\there", "midge.m.tab~09here"),
            ("a+b", "midge.m.a+b"),
        ] {
            assert_eq!(roundtrip(topic), subject, "{topic}");
            assert!(valid_publish_subject(&subject[P.len()..]), "{subject}");
        }
    }

    #[test]
    fn filters_map_wildcards_and_the_parent_of_hash() {
        assert_eq!(filter_subjects(P, "a/+/c"), ["midge.m.a.*.c"]);
        assert_eq!(filter_subjects(P, "a/#"), ["midge.m.a.>", "midge.m.a"]);
        assert_eq!(filter_subjects(P, "#"), ["midge.m.>"]);
        assert_eq!(filter_subjects(P, "+/#"), ["midge.m.*.>", "midge.m.*"]);
        assert_eq!(
            filter_subjects(P, "a.b/ /#"),
            ["midge.m.a~2Eb.~20.>", "midge.m.a~2Eb.~20"]
        );
        assert_eq!(filter_subjects(P, "/+"), ["midge.m.~.*"]);
    }

    #[test]
    fn bad_subjects_are_errors() {
        assert!(subject_to_topic(P, "other.a").is_err());
        assert!(subject_to_topic(P, "midge.m.a~2").is_err());
        assert!(subject_to_topic(P, "midge.m.a~ZZ").is_err());
        assert!(subject_to_topic(P, "midge.m.~00").is_err());
        assert!(subject_to_topic(P, "midge.m.~FF").is_err());
    }

    #[test]
    fn kv_keys_round_trip() {
        for s in ["", "c1", "a b", "é/x", "=", "dev.1", "a/b/#", "../x"] {
            let k = kv_key(s);
            assert!(k.bytes().all(|b| plain_key_byte(b) || b == b'='), "{k}");
            assert_eq!(kv_key_decode(&k).as_deref(), Some(s));
        }
    }

    /// xorshift64*: a fixed seed, so a failure names a reproducible case.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random valid topic drawn mostly from the characters that need care.
    fn random_topic(r: &mut Rng) -> String {
        const PICK: &[char] = &[
            'a', 'Z', '0', '.', ' ', '*', '>', '~', '$', '/', '/', '/', '=', '%', '\t', 'é', '€',
            '😀', '\u{7f}', '\u{1}', '+', '-', '_',
        ];
        let len = 1 + r.below(12) as usize;
        let mut s = String::new();
        for _ in 0..len {
            let c = if r.below(8) == 0 {
                // Any scalar value but U+0000 and the wildcard characters.
                loop {
                    let v = 1 + r.below(0x10FFFF) as u32;
                    if let Some(c) = char::from_u32(v).filter(|c| !matches!(c, '+' | '#')) {
                        break c;
                    }
                }
            } else {
                PICK[r.below(PICK.len() as u64) as usize]
            };
            s.push(c);
        }
        s.replace('+', "p")
    }

    #[test]
    fn property_every_topic_round_trips_to_a_valid_subject() {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..50_000 {
            let t = random_topic(&mut r);
            let s = roundtrip(&t);
            assert!(valid_publish_subject(&s), "{t:?} -> {s}");
            assert_eq!(s.split('.').count() - 2, t.split('/').count(), "{t:?}");
            let k = kv_key(&t);
            assert_eq!(kv_key_decode(&k).as_deref(), Some(t.as_str()));
        }
    }

    /// NATS-style match of a filter subject against a topic subject.
    fn nats_match(filter: &str, subject: &str) -> bool {
        let f: Vec<&str> = filter.split('.').collect();
        let s: Vec<&str> = subject.split('.').collect();
        for (i, ft) in f.iter().enumerate() {
            match *ft {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if i < s.len() && t == s[i] => {}
                _ => return false,
            }
        }
        f.len() == s.len()
    }

    #[test]
    fn property_filter_subjects_match_exactly_what_mqtt_matches() {
        let mut r = Rng(0xD1B5_4A32_D192_ED03);
        for _ in 0..20_000 {
            let topic = random_topic(&mut r).replace('$', "d");
            // A filter made from the topic: some levels become + or #.
            let levels: Vec<&str> = topic.split('/').collect();
            let mut f: Vec<String> = levels.iter().map(|l| l.to_string()).collect();
            for l in f.iter_mut() {
                if r.below(4) == 0 {
                    *l = "+".into();
                }
            }
            if r.below(3) == 0 {
                let cut = r.below(f.len() as u64 + 1) as usize;
                f.truncate(cut);
                f.push("#".into());
            }
            if r.below(5) == 0 {
                // A filter unrelated to the topic.
                f = random_topic(&mut r)
                    .split('/')
                    .map(str::to_string)
                    .collect();
            }
            let filter = f.join("/");
            let subject = topic_subject(P, &topic);
            let nats = filter_subjects(P, &filter)
                .iter()
                .any(|fs| nats_match(fs, &subject));
            assert_eq!(
                nats,
                midge_protocol::topic::matches(&filter, &topic),
                "filter {filter:?} topic {topic:?}"
            );
        }
    }
}
