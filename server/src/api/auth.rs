//! Who is calling: a bearer token or the console's session cookie.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult, AppState};
use crate::store::{Role, new_token};

pub const SESSION_COOKIE: &str = "meshgate_session";
/// Writes made with the session cookie carry this header (see [`csrf_token`]).
pub const CSRF_HEADER: &str = "x-csrf-token";
const SESSION_HOURS: i64 = 12;
/// A console session unused this long ends.
pub const SESSION_IDLE: chrono::Duration = chrono::Duration::minutes(30);
/// A token's last use is written at most this often.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// The authenticated caller, recorded as the actor of every change.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// What the caller may do.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub role: Role,
}

/// The token presented, and whether it came in the session cookie.
fn presented(headers: &HeaderMap) -> Option<(String, bool)> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        // Some clients (Prometheus' HTTP service discovery among them, when
        // `authorization.type` is left out) send the token without a scheme.
        let Some((scheme, token)) = v.trim().split_once(' ') else {
            return v.trim().starts_with("mg_").then(|| (v.trim().to_string(), false));
        };
        return scheme.eq_ignore_ascii_case("bearer").then(|| (token.trim().to_string(), false));
    }
    let cookies = headers.get_all(header::COOKIE);
    cookies.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == SESSION_COOKIE).then(|| (v.to_string(), true))
    })
}

pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    presented(headers).map(|(t, _)| t)
}

/// The CSRF token of a session: derived from the session token, which a
/// page of another origin cannot read (the cookie is HttpOnly), so only
/// the console, told it at login or by `whoami`, can send it back.
pub fn csrf_token(session: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(format!("meshgate-csrf:{session}").as_bytes())[..16])
}

/// The least role a request needs.
fn needed_role(method: &Method, path: &str) -> Role {
    // `path` is one of `prefixes` or under one of them.
    let under = |prefixes: &[&str]| {
        prefixes.iter().any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
    };
    if under(&["/api/v1/users", "/api/v1/ca/rotate", "/api/v1/ca/retire"]) {
        return Role::Admin;
    }
    // One's own session, password and API tokens; checks that change nothing.
    if under(&["/api/v1/logout", "/api/v1/me/password", "/api/v1/api-tokens", "/api/v1/analyze"]) {
        return Role::Viewer;
    }
    // Secrets hold private keys: not for viewers.
    let secret = path.split('/').nth(3) == Some("secrets") || path.split('/').nth(5) == Some("secrets");
    if is_safe(method) && !secret { Role::Viewer } else { Role::Editor }
}

/// Reads that change nothing (no CSRF token needed, open to viewers).
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Rejects requests without a valid token, or whose user's role does not
/// allow them, or (with the session cookie) writes without the CSRF token.
/// The token itself is never logged.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let Some((token, cookie)) = presented(req.headers()) else {
        // The console asks `whoami` on every first load to learn whether
        // it is logged in: that is no failed authentication.
        if path == "/api/v1/whoami" {
            tracing::debug!("whoami without credentials");
        } else {
            tracing::warn!(%path, method = %req.method(), "rejected: no credentials");
            state.metrics.auth_failures.inc();
        }
        return ApiError::unauthorized().into_response();
    };
    let info = match state.store.find_token(&token).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            tracing::warn!(%path, method = %req.method(), "rejected: unknown or expired token");
            state.metrics.auth_failures.inc();
            return ApiError::unauthorized().into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let now = chrono::Utc::now();
    let last = info.last_used_at.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    if info.purpose == "session" && last.is_some_and(|t| now.signed_duration_since(t) > SESSION_IDLE) {
        let _ = state.store.revoke_token(&token).await;
        state.metrics.auth_failures.inc();
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("session ended after {} minutes without use; log in again", SESSION_IDLE.num_minutes()),
        )
        .into_response();
    }
    if last.is_none_or(|t| now.signed_duration_since(t) > TOUCH_EVERY)
        && let Err(e) = state.store.touch_token(&info.id).await
    {
        return ApiError::from(e).into_response();
    }
    let needed = needed_role(req.method(), &path);
    if info.role < needed {
        tracing::warn!(%path, method = %req.method(), user = %info.subject, "rejected: role");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "user {} has role {}: {} {path} needs role {}",
                info.subject,
                info.role.as_str(),
                req.method(),
                needed.as_str()
            ),
        )
        .into_response();
    }
    if cookie
        && !is_safe(req.method())
        && req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some(&csrf_token(&token))
    {
        tracing::warn!(%path, method = %req.method(), user = %info.subject, "rejected: no CSRF token");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            format!("a write with the session cookie needs the {CSRF_HEADER} header that login and whoami give"),
        )
        .into_response();
    }
    req.extensions_mut().insert(Actor(info.subject));
    req.extensions_mut().insert(Caller { role: info.role });
    next.run(req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Failed logins per user name: after [`FREE_FAILURES`], each further try
/// waits, twice as long each time (30 s up to 15 min); a success clears it.
#[derive(Default)]
pub struct LoginThrottle {
    failures: std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
}

const FREE_FAILURES: u32 = 5;

impl LoginThrottle {
    /// How long `user` must wait before trying again, if at all.
    fn wait(&self, user: &str) -> Option<std::time::Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (n, last) = failures.get(user)?;
        let pause = Self::pause(*n)?;
        pause.checked_sub(last.elapsed())
    }

    fn pause(n: u32) -> Option<std::time::Duration> {
        (n >= FREE_FAILURES).then(|| std::time::Duration::from_secs((30u64 << (n - FREE_FAILURES).min(5)).min(900)))
    }

    fn failed(&self, user: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Forget names that have not failed for an hour (at most 10,000 kept).
        if failures.len() > 10_000 {
            failures.retain(|_, (_, at)| at.elapsed() < std::time::Duration::from_secs(3600));
        }
        let entry = failures.entry(user.to_string()).or_insert((0, std::time::Instant::now()));
        *entry = (entry.0 + 1, std::time::Instant::now());
    }

    pub(crate) fn succeeded(&self, user: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(user);
    }
}

/// Exchanges a user name and password for a session cookie (the console's
/// way in) and, in the body, the same token for scripts and the CSRF token.
pub async fn login(State(state): State<AppState>, Json(login): Json<Login>) -> ApiResult<Response> {
    if let Some(wait) = state.logins.wait(&login.username) {
        state.metrics.auth_failures.inc();
        let secs = wait.as_secs().max(1);
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("too many failed logins for {:?}: try again in {secs} s", login.username),
        )
        .into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        return Ok(resp);
    }
    if !state.store.verify_password(&login.username, &login.password).await? {
        tracing::warn!(user = %login.username, "login failed");
        state.metrics.auth_failures.inc();
        state.logins.failed(&login.username);
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong user name or password"));
    }
    state.logins.succeeded(&login.username);
    let token = new_token();
    let expires = chrono::Utc::now() + chrono::Duration::hours(SESSION_HOURS);
    let expires_at = expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    state.store.add_token(&token, &login.username, "session", Some(&expires_at)).await?;
    // The session just made says the user's role (one lookup by its hash).
    let role = state.store.find_token(&token).await?.map(|t| t.role);
    let secure = if state.settings.secure_cookies { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        SESSION_HOURS * 3600
    );
    let body = Json(json!({
        "user": login.username, "role": role, "token": token, "csrf": csrf_token(&token), "expiresAt": expires_at,
    }));
    Ok(([(header::SET_COOKIE, cookie)], body).into_response())
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    // Only sessions end here; an API token is not revoked by a logout.
    if let Some(token) = presented_token(&headers)
        && state.store.find_token(&token).await?.is_some_and(|t| t.purpose == "session")
    {
        state.store.revoke_token(&token).await?;
    }
    let secure = if state.settings.secure_cookies { "; Secure" } else { "" };
    let clear = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}");
    Ok(([(header::SET_COOKIE, clear)], StatusCode::NO_CONTENT).into_response())
}

/// Who is calling, with which role; with the session cookie, also the CSRF
/// token its writes need (the console asks after a reload).
pub async fn whoami(
    axum::Extension(actor): axum::Extension<Actor>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let csrf = presented(&headers).filter(|(_, cookie)| *cookie).map(|(t, _)| csrf_token(&t));
    Json(json!({"user": actor.0, "role": caller.role.as_str(), "csrf": csrf}))
}
