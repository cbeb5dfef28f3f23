//! `${field}` templates for republish actions, parsed once at load and
//! rendered against a rule's output row.

use serde_json::Value;

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

    /// Renders against `row`. A missing field renders as "undefined", as in EMQX.
    pub fn render(&self, row: &serde_json::Map<String, Value>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                // One level (the common case): borrowed, nothing cloned.
                Part::Field(path) if path.len() == 1 => push_value(&mut out, row.get(&path[0])),
                Part::Field(path) => push_value(&mut out, lookup(row, path).as_ref()),
            }
        }
        out
    }
}

/// A field's text: strings as they are, other values as JSON.
fn push_value(out: &mut String, v: Option<&Value>) {
    use std::fmt::Write;
    match v {
        Some(Value::String(s)) => out.push_str(s),
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("undefined"),
    }
}

/// Follows `path` through objects; a string holding JSON is decoded on the way
/// (so `${payload.x}` works when `payload` was selected as raw text).
fn lookup(row: &serde_json::Map<String, Value>, path: &[String]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    let mut cur = row.get(first)?.clone();
    for key in rest {
        cur = match cur {
            Value::Object(mut m) => m.remove(key)?,
            Value::String(s) => {
                let decoded: Value = serde_json::from_str(&s).ok()?;
                decoded.get(key)?.clone()
            }
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_paths_and_literals() {
        let row = json!({"t": 31.5, "clientid": "c1", "payload": "{\"a\":{\"b\":\"x\"}}", "o": {"k": [1]}});
        let row = row.as_object().unwrap();
        let t = Template::parse("alerts/${clientid}/${t} ${payload.a.b} ${o.k} ${nope}").unwrap();
        assert_eq!(t.render(row), "alerts/c1/31.5 x [1] undefined");
        assert!(Template::parse("plain").unwrap().is_literal());
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
