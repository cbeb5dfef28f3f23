//! `${field}` templates for republish actions, parsed once at load and
//! rendered against a rule's output row.

use bytes::Bytes;
use midge_rules::{Row, Value};

/// A parsed template: literal text and `${path}` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// Dot path into the row, e.g. `payload.temp` -> ["payload", "temp"].
    Field(Vec<String>),
}

impl Template {
    /// Parses `text`; an unclosed `${` is an error naming the position.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!(
                    "unclosed `${{` at character {}",
                    offset + start + 1
                ));
            };
            let path = after[..end].trim();
            if path.is_empty() {
                return Err(format!(
                    "empty placeholder at character {}",
                    offset + start + 1
                ));
            }
            parts.push(Part::Field(path.split('.').map(str::to_string).collect()));
            let consumed = start + 2 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// True when the template has no placeholder.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Renders against `row` into bytes: text as it is, a binary as its
    /// bytes (so `${payload}` of a binary message is that message's bytes,
    /// unchanged), numbers and booleans as text, maps and lists as JSON, a
    /// missing field as "undefined" (as in EMQX).
    pub fn render_bytes(&self, row: &Row) -> Bytes {
        // `${field}` alone holding a binary: share it, no copy.
        if let [Part::Field(path)] = &self.parts[..] {
            if let [name] = &path[..] {
                if let Some(Value::Bytes(b)) = row.get(name) {
                    return b.clone();
                }
            }
        }
        let mut out = Vec::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                // One level (the common case): borrowed, nothing cloned.
                Part::Field(path) if path.len() == 1 => push_value(&mut out, row.get(&path[0])),
                Part::Field(path) => push_value(&mut out, lookup(row, path).as_ref()),
            }
        }
        Bytes::from(out)
    }

    /// Renders as text, for topic names and string properties: a field
    /// holding binary data that is not UTF-8 is an error naming it.
    pub fn render(&self, row: &Row) -> Result<String, String> {
        let bytes = self.render_bytes(row);
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            let field = self
                .parts
                .iter()
                .find_map(|p| match p {
                    Part::Field(path) => {
                        let v = if path.len() == 1 {
                            row.get(&path[0]).cloned()
                        } else {
                            lookup(row, path)
                        };
                        matches!(&v, Some(v) if v.as_bin().is_some() && v.as_str().is_none())
                            .then(|| path.join("."))
                    }
                    Part::Text(_) => None,
                })
                .unwrap_or_default();
            format!("`${{{field}}}` holds binary data that is not UTF-8 and cannot go into text")
        })
    }
}

/// A field's bytes: binaries as they are, missing as "undefined", other
/// values as JSON.
fn push_value(out: &mut Vec<u8>, v: Option<&Value>) {
    match v {
        Some(Value::Str(s)) => out.extend_from_slice(s.as_bytes()),
        Some(Value::Bytes(b)) => out.extend_from_slice(b),
        Some(Value::Undefined) | None => out.extend_from_slice(b"undefined"),
        Some(v) => v.write_json(out),
    }
}

/// Follows `path` through maps; a binary holding JSON is decoded on the way
/// (so `${payload.x}` works when `payload` was selected as raw bytes).
fn lookup(row: &Row, path: &[String]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    let mut cur = row.get(first)?.clone();
    for key in rest {
        cur = match cur {
            Value::Map(mut m) => m.remove(key)?,
            v @ (Value::Str(_) | Value::Bytes(_)) => match Value::from_json(v.as_bin()?) {
                Ok(Value::Map(mut m)) => m.remove(key)?,
                _ => return None,
            },
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(j: serde_json::Value) -> Row {
        match Value::from(j) {
            Value::Map(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn renders_fields_paths_and_literals() {
        let row = row(
            json!({"t": 31.5, "clientid": "c1", "payload": "{\"a\":{\"b\":\"x\"}}", "o": {"k": [1]}}),
        );
        let t = Template::parse("alerts/${clientid}/${t} ${payload.a.b} ${o.k} ${nope}").unwrap();
        assert_eq!(t.render(&row).unwrap(), "alerts/c1/31.5 x [1] undefined");
        assert!(Template::parse("plain").unwrap().is_literal());
    }

    #[test]
    fn binaries_render_as_their_bytes() {
        let mut r = Row::new();
        let bin = Bytes::from_static(&[0xCB, 0x48, 0xCD, 0x00, 0xFF]);
        r.insert("payload".into(), Value::Bytes(bin.clone()));
        let t = Template::parse("${payload}").unwrap();
        assert_eq!(t.render_bytes(&r), bin);
        let t = Template::parse("x${payload}").unwrap();
        assert_eq!(&t.render_bytes(&r)[..], b"x\xCB\x48\xCD\x00\xFF");
        let e = Template::parse("t/${payload}")
            .unwrap()
            .render(&r)
            .unwrap_err();
        assert!(e.contains("${payload}"), "{e}");
    }

    #[test]
    fn unclosed_placeholder_is_an_error() {
        assert_eq!(
            Template::parse("a/${b").unwrap_err(),
            "unclosed `${` at character 3"
        );
        assert!(Template::parse("${ }").is_err());
    }
}
