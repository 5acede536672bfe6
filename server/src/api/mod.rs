//! The REST API on the admin address: resources, apply, history, rollback,
//! analyze, login, plus `/healthz` and `/metrics`. The console and the CLI
//! use nothing else.

mod apikeys;
mod auth;
mod console;
pub use console::built as console_built;
pub mod error;
mod logs;
mod mesh;
mod openapi;
mod resources;
mod stats;
pub mod traces;
mod users;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::store::Store;
use crate::telemetry::Metrics;
pub use error::{ApiError, ApiResult};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 4 << 20;

/// Settings the API needs from the server configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster_domain: String,
    pub trust_domain: String,
    /// The admin address speaks HTTPS: session cookies are `Secure`.
    pub secure_cookies: bool,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub hub: Arc<crate::control::Hub>,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    pub ca: Arc<crate::ca::Ca>,
    /// The mesh port's TLS, made again after a CA rotation (`None` in tests without one).
    pub mesh_tls: Option<Arc<crate::mesh::MeshTls>>,
    /// Failed logins, for throttling.
    pub logins: Arc<auth::LoginThrottle>,
}

/// The whole admin router. Tests drive it with `oneshot`, no socket needed.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/v1/apply", post(resources::apply))
        .route("/api/v1/analyze", post(resources::analyze))
        .route("/api/v1/history", get(resources::history))
        .route("/api/v1/revisions/{revision}", get(resources::revision))
        .route("/api/v1/revisions/{revision}/rollback", post(resources::rollback))
        .route("/api/v1/whoami", get(auth::whoami))
        .route("/api/v1/proxy-status", get(resources::proxy_status))
        .route("/api/v1/prometheus/targets", get(resources::prometheus_targets))
        .route("/api/v1/proxy-config/{name}", get(mesh::proxy_config))
        .route("/api/v1/tokens", get(mesh::list_tokens).post(mesh::create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(mesh::revoke_token))
        .route("/api/v1/apikeys", get(apikeys::list).post(apikeys::create))
        .route("/api/v1/apikeys/{id}", axum::routing::delete(apikeys::revoke))
        .route("/api/v1/ca", get(mesh::ca))
        .route("/api/v1/ca/rotate", post(mesh::rotate_ca))
        .route("/api/v1/ca/retire", post(mesh::retire_ca))
        .route("/api/v1/certificates", get(mesh::certificates))
        .route("/api/v1/traces", get(traces::search))
        .route("/api/v1/logs", get(logs::logs))
        .route("/api/v1/stats/services", get(stats::services))
        .route("/api/v1/stats/routes", get(stats::routes))
        .route("/api/v1/graph", get(stats::graph))
        .route("/api/v1/traces/{trace_id}", get(traces::get_trace))
        .route("/api/v1/logout", post(auth::logout))
        .route("/api/v1/users", get(users::list).post(users::create))
        .route("/api/v1/users/{name}", axum::routing::put(users::update).delete(users::delete))
        .route("/api/v1/me/password", post(users::own_password))
        .route("/api/v1/api-tokens", get(users::list_tokens).post(users::create_token))
        .route("/api/v1/api-tokens/{id}", axum::routing::delete(users::revoke_token))
        .route("/api/v1/namespaces/{ns}/{plural}", get(resources::list_namespaced).post(resources::create))
        .route(
            "/api/v1/namespaces/{ns}/{plural}/{name}",
            get(resources::get_one).put(resources::replace).delete(resources::delete_one),
        )
        .route("/api/v1/{plural}", get(resources::list_all))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/assets/{*rest}", get(console::asset))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        // OTLP/HTTP for apps' own spans, like a collector: no token.
        .route("/v1/traces", post(traces::otlp))
        .route("/api/v1/login", post(auth::login))
        .merge(protected)
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Any other path: a page of the console for a browser's GET, else 404.
async fn fallback(method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap) -> Response {
    let api = ["/api/", "/v1/", "/mesh/"].iter().any(|p| uri.path().starts_with(p));
    if method == axum::http::Method::GET && !api {
        return console::page(&headers);
    }
    ApiError::not_found("no such route; see /api/openapi.json").into_response()
}

/// Counts and times every request by its route template.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    state.metrics.observe_api(method.as_str(), &route, response.status().as_u16(), started.elapsed());
    response
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsQuery {
    federate: Option<String>,
}

/// The appliance's metrics; with `federate=1` (and a token: it makes the
/// appliance call every agent) every agent's too, each sample labelled with
/// its `proxy`.
async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<MetricsQuery>,
) -> Response {
    let federate = match q.federate.as_deref() {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(other) => return ApiError::bad_request(format!("federate={other:?}: expected 1 or 0")).into_response(),
    };
    if federate {
        let known = match auth::presented_token(&headers) {
            Some(t) => state.store.find_token(&t).await.ok().flatten().is_some(),
            None => false,
        };
        if !known {
            state.metrics.auth_failures.inc();
            return ApiError::unauthorized().into_response();
        }
    }
    match state.store.counts().await {
        Ok(counts) => state.metrics.set_resource_counts(&counts),
        Err(e) => tracing::warn!(error = %e, "counting resources for /metrics"),
    }
    if let Ok(rev) = state.store.current_revision().await {
        state.metrics.config_revision.set(rev);
    }
    let connected = state.hub.fleet.all().iter().filter(|p| p.connected).count();
    state.metrics.connected.set(connected as i64);
    if let Some(expiry) = state.ca.root_expiry() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        state.metrics.root_expiry_seconds.set((expiry - now) as f64);
    }
    let own = state.metrics.render();
    if !federate {
        return ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], own).into_response();
    }
    let agents: Vec<(String, String)> =
        state.hub.fleet.all().into_iter().filter_map(|a| Some((a.name.clone(), a.metrics.clone()?))).collect();
    let scraped = crate::telemetry::federate::scrape(agents).await;
    let mut parts: Vec<(Option<&str>, &str)> = vec![(None, own.as_str())];
    let mut missing = String::new();
    for (name, got) in &scraped {
        match got {
            Ok(text) => parts.push((Some(name.as_str()), text.as_str())),
            Err(e) => missing.push_str(&format!("# meshgate: proxy {name} not scraped: {e}\n")),
        }
    }
    let mut text = crate::telemetry::federate::merge(&parts);
    text.push_str(&missing);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Reads a request body up to [`MAX_BODY`] as UTF-8 text.
pub async fn read_text(headers: &HeaderMap, body: Body) -> ApiResult<String> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(MAX_BODY as u64) as usize);
    let mut too_large = declared.is_some_and(|n| n > MAX_BODY as u64);
    while !too_large {
        match futures_util::StreamExt::next(&mut stream).await {
            None => break,
            Some(Ok(chunk)) if buf.len() + chunk.len() <= MAX_BODY => buf.extend_from_slice(&chunk),
            Some(Ok(_)) => too_large = true,
            Some(Err(e)) => return Err(ApiError::bad_request(format!("reading request body: {e}"))),
        }
    }
    if too_large {
        drain(stream).await;
        return Err(ApiError::too_large(MAX_BODY));
    }
    String::from_utf8(buf).map_err(|e| {
        ApiError::bad_request(format!(
            "request body is not UTF-8: invalid byte at offset {}",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Reads and discards the rest of an oversized body (up to 64 MiB, for up
/// to 10 s) so the client, still sending, gets to read our 413 instead of
/// a reset connection: nginx's "lingering close".
async fn drain(mut stream: axum::body::BodyDataStream) {
    let mut left: usize = 64 << 20;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// 404 for a path segment that names no kind.
pub fn kind_from_plural(plural: &str) -> ApiResult<meshgate_model::Kind> {
    meshgate_model::Kind::ALL.into_iter().find(|k| k.plural() == plural).ok_or_else(|| {
        let all: Vec<&str> = meshgate_model::Kind::ALL.iter().map(|k| k.plural()).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown resource type {plural:?}; known: {}", all.join(", ")),
        )
    })
}

#[cfg(test)]
mod tests;
