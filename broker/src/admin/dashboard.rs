//! The web dashboard: a small set of static files (HTML, CSS, JavaScript
//! modules, no third-party code) compiled into the binary and served by the
//! admin listener at `/` and `/assets/{file}`, without a token: the pages
//! hold nothing secret and ask for the token, which they keep in the
//! browser's session storage and send as the API's bearer token. Sources in
//! `broker/dashboard/`; docs/dashboard.md lists the pages.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// One embedded file: its name under `/assets/`, content type and bytes.
#[derive(Debug)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

macro_rules! assets {
    ($($name:literal => $ty:expr),* $(,)?) => {
        &[$(Asset {
            name: $name,
            content_type: $ty,
            body: include_str!(concat!("../../dashboard/", $name)),
        }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `broker/dashboard/` (a test checks the list is complete).
pub const ASSETS: &[Asset] = assets! {
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "app.js" => JS,
    "api.js" => JS,
    "ui.js" => JS,
    "chart.js" => JS,
    "mqtt.js" => JS,
    "overview.js" => JS,
    "clients.js" => JS,
    "topics.js" => JS,
    "retained.js" => JS,
    "rules.js" => JS,
    "plugins.js" => JS,
    "live.js" => JS,
    "cluster.js" => JS,
    "bridges.js" => JS,
};

/// Total bytes embedded.
pub fn embedded_size() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

/// The pages load only their own files and talk only to this listener and
/// the broker's WebSocket listeners (the live topic page).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

fn serve_file(a: &Asset) -> Response {
    let mut r = a.body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    // Small files; a new binary may change them under the same name.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// `GET /`: the dashboard's page.
pub async fn index() -> Response {
    match ASSETS.iter().find(|a| a.name == "index.html") {
        Some(a) => serve_file(a),
        None => ApiError::not_found("no dashboard page in this build").into_response(),
    }
}

/// `GET /assets/{file}`.
pub async fn asset(file: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(file)) = file else {
        return ApiError::bad_request("path: not a file name").into_response();
    };
    match ASSETS
        .iter()
        .find(|a| a.name == file && a.name != "index.html")
    {
        Some(a) => serve_file(a),
        None => ApiError::not_found(format!("no dashboard file `{file}`")).into_response(),
    }
}

/// Paths served without a token.
pub fn is_public(path: &str) -> bool {
    path == "/" || path.starts_with("/assets/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dashboard_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.name.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn pages_reference_only_embedded_files() {
        // Every `/assets/x` and `./x.js` a file names is embedded: no
        // broken link, nothing fetched from elsewhere.
        for a in ASSETS {
            for (i, _) in a.body.match_indices("/assets/") {
                let rest = &a.body[i + "/assets/".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                    .collect();
                assert!(
                    ASSETS.iter().any(|x| x.name == name),
                    "{} names /assets/{name}, which is not embedded",
                    a.name
                );
            }
            for (i, _) in a.body.match_indices("from './") {
                let rest = &a.body[i + "from './".len()..];
                let name: String = rest.chars().take_while(|c| *c != '\'').collect();
                assert!(
                    ASSETS.iter().any(|x| x.name == name),
                    "{} imports ./{name}, which is not embedded",
                    a.name
                );
            }
            let body = a.body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{} names an absolute URL (no CDN, no web fonts)",
                a.name
            );
        }
    }

    /// The API calls written in `body`: (method, path) for each string
    /// literal starting `/api/v1/`, with every `${...}` as `*` and the
    /// query left off. A literal whose method cannot be read is an error.
    fn api_calls(body: &str) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for (i, _) in body.match_indices("/api/v1/") {
            let Some(q) = body[..i].chars().last().filter(|c| matches!(c, '\'' | '`')) else {
                continue; // prose in a comment
            };
            let mut path = String::new();
            let mut rest = body[i..].chars();
            while let Some(c) = rest.next() {
                match c {
                    '$' if q == '`' => {
                        let mut depth = 0;
                        for c in rest.by_ref() {
                            depth += match c {
                                '{' => 1,
                                '}' => -1,
                                _ => 0,
                            };
                            if depth == 0 {
                                break;
                            }
                        }
                        path.push('*');
                    }
                    c if c == q => break,
                    c => path.push(c),
                }
            }
            let path = path.split('?').next().unwrap_or_default().to_string();
            let before = body[..i - 1].trim_end();
            let method = ["GET", "POST", "PUT", "DELETE"]
                .into_iter()
                .find(|m| before.ends_with(&format!("api('{m}',")))
                .or_else(|| {
                    (before.ends_with("fetch(") || before.ends_with("stream(")).then_some("GET")
                })
                .ok_or_else(|| format!("cannot tell the method of the call to {path}"))?;
            out.push((method.to_string(), path));
        }
        Ok(out)
    }

    #[test]
    fn every_api_call_of_the_pages_is_in_the_openapi_document() {
        let described = super::super::openapi::described().expect("openapi.json");
        let fits = |call: &str, doc: &str| {
            let (c, d): (Vec<_>, Vec<_>) = (call.split('/').collect(), doc.split('/').collect());
            c.len() == d.len()
                && c.iter()
                    .zip(&d)
                    .all(|(c, d)| c == d || *c == "*" || (d.starts_with('{') && !c.is_empty()))
        };
        let mut seen = 0;
        for a in ASSETS {
            let calls = api_calls(a.body).unwrap_or_else(|e| panic!("{}: {e}", a.name));
            for (method, path) in calls {
                seen += 1;
                assert!(
                    described
                        .iter()
                        .any(|(m, p)| *m == method && fits(&path, p)),
                    "{} calls {method} {path}, which openapi.json does not describe",
                    a.name
                );
            }
        }
        assert!(seen >= 20, "only {seen} API calls found in the pages");
    }

    #[test]
    fn api_calls_are_read_with_their_method_and_parameters() {
        let js = "await api.api('PUT', `/api/v1/rules/${api.enc(id)}/${on ? 'a' : 'b'}`);\n\
                  // GET /api/v1/status in prose\n\
                  fetch('/api/v1/status', x); api.api('GET', `/api/v1/topics?${q}`);";
        assert_eq!(
            api_calls(js).unwrap(),
            [
                ("PUT".to_string(), "/api/v1/rules/*/*".to_string()),
                ("GET".to_string(), "/api/v1/status".to_string()),
                ("GET".to_string(), "/api/v1/topics".to_string()),
            ]
        );
        assert!(api_calls("send(`/api/v1/x`)").is_err());
    }
}
