//! Who is calling: a bearer token or the console's session cookie.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult, AppState};
use crate::store::new_token;

pub const SESSION_COOKIE: &str = "meshgate_session";
const SESSION_HOURS: i64 = 12;

/// The authenticated caller, recorded as the actor of every change.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        // Some clients (Prometheus' HTTP service discovery among them, when
        // `authorization.type` is left out) send the token without a scheme.
        let Some((scheme, token)) = v.trim().split_once(' ') else {
            return v.trim().starts_with("mg_").then(|| v.trim().to_string());
        };
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    let cookies = headers.get_all(header::COOKIE);
    cookies.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == SESSION_COOKIE).then(|| v.to_string())
    })
}

/// Rejects requests without a valid token. The token itself is never logged.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let Some(token) = presented_token(req.headers()) else {
        tracing::warn!(%path, method = %req.method(), "rejected: no credentials");
        state.metrics.auth_failures.inc();
        return ApiError::unauthorized().into_response();
    };
    match state.store.find_token(&token).await {
        Ok(Some(info)) => {
            req.extensions_mut().insert(Actor(info.subject));
            next.run(req).await
        }
        Ok(None) => {
            tracing::warn!(%path, method = %req.method(), "rejected: unknown or expired token");
            state.metrics.auth_failures.inc();
            ApiError::unauthorized().into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct Login {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Exchanges a user name and password for a session cookie (the console's
/// way in) and, in the body, the same token for scripts.
pub async fn login(State(state): State<AppState>, Json(login): Json<Login>) -> ApiResult<Response> {
    if !state.store.verify_password(&login.username, &login.password).await? {
        tracing::warn!(user = %login.username, "login failed");
        state.metrics.auth_failures.inc();
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong user name or password"));
    }
    let token = new_token();
    let expires = chrono::Utc::now() + chrono::Duration::hours(SESSION_HOURS);
    let expires_at = expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    state.store.add_token(&token, &login.username, "session", Some(&expires_at)).await?;
    let cookie =
        format!("{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_HOURS * 3600);
    let body = Json(json!({"user": login.username, "token": token, "expiresAt": expires_at}));
    Ok(([(header::SET_COOKIE, cookie)], body).into_response())
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    // Only sessions end here; an API token is not revoked by a logout.
    if let Some(token) = presented_token(&headers)
        && state.store.find_token(&token).await?.is_some_and(|t| t.purpose == "session")
    {
        state.store.revoke_token(&token).await?;
    }
    let clear = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    Ok(([(header::SET_COOKIE, clear)], StatusCode::NO_CONTENT).into_response())
}

pub async fn whoami(axum::Extension(actor): axum::Extension<Actor>) -> Json<serde_json::Value> {
    Json(json!({"user": actor.0}))
}
