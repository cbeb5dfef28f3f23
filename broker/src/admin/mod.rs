//! The admin HTTP API (JSON under `/api/v1`) and Prometheus `/metrics`, on
//! their own listener (`[admin] listen`).
//!
//! Layer: beside `server/`; it reads and drives the broker through the same
//! calls the protocol side uses (`Broker`, `RetainedStore`, `RuleEngine`,
//! `PluginHost`, `reload`), never the other way round.
//!
//! A request goes: axum router (built from the one table in [`routes`], which
//! the OpenAPI test compares with `openapi.json`) -> [`auth`] (bearer token,
//! constant-time compare) -> a handler in `api.rs` (clients, sessions,
//! subscriptions), `messages.rs` (retained, publish), `manage.rs` (rules,
//! plugins, config reload), `cluster.rs` (nodes), `bridges.rs`, `listeners.rs`,
//! `history.rs` (the overview series: a sampler task, 15 minutes in memory,
//! a live stream) or `metrics.rs`. Every failure, including axum's own
//! rejections (bad JSON, bad query, unknown route, wrong method), is
//! answered as JSON `{"error": "..."}` by [`ApiError`]. `dashboard.rs`
//! serves the web dashboard's embedded files at `/` and `/assets/...`, the
//! only paths served without the token.

mod api;
mod bridges;
pub mod cluster;
pub mod dashboard;
pub mod history;
mod listeners;
mod manage;
mod messages;
pub mod metrics;
pub mod openapi;

pub use listeners::Listeners;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::Config;

/// What every handler sees.
#[derive(Debug)]
pub struct AdminState {
    pub broker: Arc<Broker>,
    token: String,
    metrics_public: bool,
    /// The configuration the broker was started with (config reload compares against it).
    running: Config,
    /// The file `POST /api/v1/config/reload` reads (`None`: started without one).
    config_path: Option<PathBuf>,
    started: Instant,
    /// Where rule edits are kept (`[admin] api_rules_file`).
    rules_file: PathBuf,
    /// The MQTT listeners as bound, with their connection counts.
    listeners: Listeners,
    /// The overview series (`history.rs`).
    history: history::History,
    /// The `[[bridges]]` (`bridges.rs`, `/metrics`).
    bridges: Arc<crate::bridge::Registry>,
}

type Shared = Arc<AdminState>;

impl AdminState {
    pub fn new(
        broker: Arc<Broker>,
        token: String,
        running: Config,
        config_path: Option<PathBuf>,
    ) -> AdminState {
        AdminState {
            broker,
            token,
            metrics_public: running.admin.metrics_public,
            rules_file: running.api_rules_path(),
            running,
            config_path,
            started: Instant::now(),
            listeners: Listeners::default(),
            history: history::History::default(),
            bridges: Arc::default(),
        }
    }

    /// The bound MQTT listeners (`GET /api/v1/listeners`, per-listener counts).
    pub fn with_listeners(mut self, listeners: Listeners) -> AdminState {
        self.listeners = listeners;
        self
    }

    /// The bridges whose status `GET /api/v1/bridges` and `/metrics` show.
    pub fn with_bridges(mut self, bridges: Arc<crate::bridge::Registry>) -> AdminState {
        self.bridges = bridges;
        self
    }
}

/// An error answer: a status and `{"error": message, ...details}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    /// Extra fields beside `error` (an object's fields are merged in).
    pub fn with(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let (Some(Value::Object(extra)), Some(obj)) = (self.details, body.as_object_mut()) {
            obj.extend(extra);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> ApiError {
        use axum::extract::rejection::JsonRejection::*;
        let status = match &r {
            MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, format!("request body: {}", r.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(format!("query string: {}", r.body_text()))
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> ApiError {
        ApiError::bad_request(format!("path: {}", r.body_text()))
    }
}

/// Result of a handler.
pub type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// One entry of the route table: method, path (axum and OpenAPI share the
/// `{param}` syntax) and its handler.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<Shared>,
}

fn r<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: axum::handler::Handler<T, Shared>,
    T: 'static,
{
    let filter = axum::routing::MethodFilter::try_from(method.clone())
        .unwrap_or(axum::routing::MethodFilter::GET);
    Route {
        method,
        path,
        handler: axum::routing::on(filter, handler),
    }
}

/// Every route the admin listener serves: the router is built from this
/// table and nothing else, and the OpenAPI test compares it with
/// `openapi.json`.
pub fn routes() -> Vec<Route> {
    use Method as M;
    vec![
        r(M::GET, "/", dashboard::index),
        r(M::GET, "/assets/{file}", dashboard::asset),
        r(M::GET, "/metrics", metrics::scrape),
        r(M::GET, "/api/v1/openapi.json", openapi::serve),
        r(M::GET, "/api/v1/status", api::status),
        r(M::GET, "/api/v1/listeners", listeners::list),
        r(M::GET, "/api/v1/metrics/history", history::history),
        r(M::GET, "/api/v1/metrics/stream", history::stream),
        r(M::GET, "/api/v1/clients", api::list_clients),
        r(M::GET, "/api/v1/clients/{clientid}", api::get_client),
        r(M::DELETE, "/api/v1/clients/{clientid}", api::kick_client),
        r(M::GET, "/api/v1/sessions", api::list_sessions),
        r(
            M::GET,
            "/api/v1/sessions/{clientid}/subscriptions",
            api::session_subscriptions,
        ),
        r(M::GET, "/api/v1/subscriptions", api::subscriptions),
        r(M::GET, "/api/v1/topics", api::topics),
        r(M::GET, "/api/v1/retained", messages::list_retained),
        r(M::GET, "/api/v1/retained/{topic}", messages::get_retained),
        r(
            M::DELETE,
            "/api/v1/retained/{topic}",
            messages::delete_retained,
        ),
        r(M::POST, "/api/v1/publish", messages::publish),
        r(M::GET, "/api/v1/rules", manage::list_rules),
        r(M::POST, "/api/v1/rules", manage::create_rule),
        r(M::POST, "/api/v1/rules/test", manage::test_rule),
        r(M::GET, "/api/v1/rules/{id}", manage::get_rule),
        r(M::PUT, "/api/v1/rules/{id}", manage::update_rule),
        r(M::DELETE, "/api/v1/rules/{id}", manage::delete_rule),
        r(M::PUT, "/api/v1/rules/{id}/enable", manage::enable_rule),
        r(M::PUT, "/api/v1/rules/{id}/disable", manage::disable_rule),
        r(M::GET, "/api/v1/rules/{id}/metrics", manage::rule_metrics),
        r(
            M::DELETE,
            "/api/v1/rules/{id}/override",
            manage::drop_rule_override,
        ),
        r(M::GET, "/api/v1/plugins", manage::list_plugins),
        r(
            M::POST,
            "/api/v1/plugins/{name}/reload",
            manage::reload_plugin,
        ),
        r(
            M::PUT,
            "/api/v1/plugins/{name}/enable",
            manage::enable_plugin,
        ),
        r(
            M::PUT,
            "/api/v1/plugins/{name}/disable",
            manage::disable_plugin,
        ),
        r(M::POST, "/api/v1/config/reload", manage::reload_config),
        r(M::GET, "/api/v1/cluster", cluster::show),
        r(M::GET, "/api/v1/bridges", bridges::list),
        r(M::GET, "/api/v1/bridges/{name}", bridges::get),
    ]
}

/// (method, path) of every route, in table order.
pub fn route_table() -> Vec<(Method, &'static str)> {
    routes().into_iter().map(|r| (r.method, r.path)).collect()
}

/// The admin router over `state`.
pub fn router(state: Shared) -> Router {
    let mut router = Router::new();
    for route in routes() {
        router = router.route(route.path, route.handler);
    }
    router
        // After the routes: it applies to the routes added so far.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// Requires `Authorization: Bearer <token>` on everything except the
/// dashboard's files and `/metrics` when `metrics_public`.
async fn auth(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if (state.metrics_public && path == "/metrics") || dashboard::is_public(path) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let ok = given.is_some_and(|t| same(t.as_bytes(), state.token.as_bytes()));
    if ok {
        return next.run(req).await;
    }
    let why = if given.is_none() {
        "missing `Authorization: Bearer <token>` header"
    } else {
        "invalid token"
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// Compares without an early exit, so the time taken does not tell how
/// much of a guess was right (the length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The token to require: the configured one, else `MIDGE_ADMIN_TOKEN`, else
/// a new random one. The flag says whether it was generated (the binary
/// prints it then).
pub fn resolve_token(configured: Option<&str>) -> (String, bool) {
    if let Some(t) = configured {
        return (t.to_string(), false);
    }
    match std::env::var("MIDGE_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => (t.trim().to_string(), false),
        _ => (random_token(), true),
    }
}

/// 128 random bits as hex: from the OS (`/dev/urandom`), or where that is
/// missing from std's randomly keyed SipHash over the time and a counter.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !from_os {
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves the admin router on `listener`, and samples the overview series,
/// until the task is dropped (which ends the live streams too).
pub async fn serve(listener: TcpListener, state: Shared) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(%addr, "admin API listener up");
    let sampled = state.clone();
    let sampler = async move {
        history::run(sampled).await;
        // Only one sampler per state; serving goes on without it.
        std::future::pending::<()>().await
    };
    let server = std::future::IntoFuture::into_future(axum::serve(listener, router(state)));
    tokio::select! {
        r = server => {
            if let Err(e) = r {
                warn!(error = %e, "admin API listener stopped");
            }
        }
        () = sampler => {}
    }
}

/// `page` (from 1) and `limit` (1..=1000; default 100) checked, as an offset and a limit.
pub(crate) fn paging(page: Option<u64>, limit: Option<u64>) -> Result<Paging, ApiError> {
    const MAX_LIMIT: u64 = 1000;
    const MAX_PAGE: u64 = 1_000_000;
    let page = page.unwrap_or(1);
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(ApiError::bad_request(format!(
            "page must be between 1 and {MAX_PAGE} (got {page})"
        )));
    }
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT} (got {limit})"
        )));
    }
    Ok(Paging { page, limit })
}

/// Checked paging parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paging {
    page: u64,
    limit: u64,
}

impl Paging {
    /// A page of `items` (sorted, at least the first `page * limit` of
    /// all) out of `count`, naming the nodes that did not answer.
    pub fn answer_counted<T: serde::Serialize>(
        self,
        items: Vec<T>,
        count: usize,
        unreachable: &[String],
    ) -> Json<Value> {
        let Json(mut v) = self.answer(items);
        v["meta"]["count"] = count.into();
        v["meta"]["scope"] = "cluster".into();
        v["meta"]["unreachable"] = unreachable.into();
        Json(v)
    }

    /// `{"data": [this page of items], "meta": {page, limit, count}}`, where
    /// count is the number of items on all pages.
    pub fn answer<T: serde::Serialize>(self, items: Vec<T>) -> Json<Value> {
        let count = items.len();
        // Both bounded by `paging`: no overflow.
        let skip = ((self.page - 1) * self.limit) as usize;
        let data: Vec<T> = items
            .into_iter()
            .skip(skip)
            .take(self.limit as usize)
            .collect();
        Json(json!({
            "data": data,
            "meta": { "page": self.page, "limit": self.limit, "count": count },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_tokens() {
        assert!(same(b"abcdefgh", b"abcdefgh"));
        assert!(!same(b"abcdefgh", b"abcdefgX"));
        assert!(!same(b"abc", b"abcd"));
        let (t, generated) = resolve_token(Some("configured-token"));
        assert_eq!((t.as_str(), generated), ("configured-token", false));
        let a = random_token();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_token());
    }

    #[test]
    fn paging_bounds() {
        assert!(paging(Some(0), None).is_err());
        assert!(paging(None, Some(0)).is_err());
        assert!(paging(None, Some(1001)).is_err());
        assert!(paging(Some(u64::MAX), Some(1000)).is_err());
        let p = paging(Some(2), Some(2)).unwrap_or_else(|e| panic!("{e:?}"));
        let Json(v) = p.answer(vec![1, 2, 3, 4, 5]);
        assert_eq!(v["data"], json!([3, 4]));
        assert_eq!(v["meta"]["count"], 5);
    }
}
