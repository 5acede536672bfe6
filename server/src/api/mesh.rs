//! The mesh's admin endpoints: join tokens, the CA's roots, issued certificates.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, AppState};
use crate::ca::SpiffeId;
use crate::store::JoinScope;

/// Join tokens live at most this long.
const MAX_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewToken {
    service: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    service_account: Option<String>,
    /// A duration such as `30m`, `1h` or `24h` (default `1h`).
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    single_use: bool,
}

pub async fn create_token(
    State(s): State<AppState>,
    Json(req): Json<NewToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let namespace = req.namespace.unwrap_or_else(|| meshgate_model::DEFAULT_NAMESPACE.to_string());
    let service_account = req.service_account.unwrap_or_else(|| req.service.clone());
    let field = |path: &str, reason: String| {
        ApiError::invalid("the token request is not valid", vec![super::error::Detail { path: path.into(), reason }])
    };
    // The identity the token grants must be a valid SPIFFE ID, and the service a valid name.
    SpiffeId::new(s.ca.trust_domain(), &namespace, &service_account).map_err(|e| field("serviceAccount", e))?;
    SpiffeId::new(s.ca.trust_domain(), &namespace, &req.service).map_err(|e| field("service", e))?;
    let ttl = match &req.ttl {
        None => std::time::Duration::from_secs(3600),
        Some(t) => meshgate_model::check::parse_duration(t).map_err(|e| field("ttl", e))?,
    };
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(field("ttl", format!("must be more than 0 and at most {} days", MAX_TOKEN_TTL.as_secs() / 86400)));
    }
    let scope = JoinScope { namespace, service_account, service: req.service };
    let (id, token, expires_at) = s.store.create_join_token(&scope, ttl, req.single_use).await?;
    tracing::info!(%id, service = %scope.service, namespace = %scope.namespace, "join token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "token": token,
            "service": scope.service,
            "namespace": scope.namespace,
            "serviceAccount": scope.service_account,
            "expiresAt": expires_at,
            "singleUse": req.single_use,
            "caFingerprint": s.ca.fingerprint(),
        })),
    ))
}

pub async fn list_tokens(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "items": s.store.join_tokens().await? })))
}

pub async fn revoke_token(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if !s.store.revoke_join_token(&id).await? {
        return Err(ApiError::not_found(format!("no join token with id {id}")));
    }
    Ok(Json(json!({ "revoked": id })))
}

pub async fn ca(State(s): State<AppState>) -> Json<Value> {
    Json(s.ca.summary())
}

pub async fn certificates(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "items": s.store.certificates(1000).await? })))
}
