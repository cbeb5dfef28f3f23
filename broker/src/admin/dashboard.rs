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
    "later.js" => JS,
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
}
