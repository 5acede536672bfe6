//! API keys of Consumers: made here (shown once), listed, revoked. A
//! change takes effect with the next snapshot, compiled at once.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    consumer: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// `POST /api/v1/apikeys`: a new key for an existing Consumer.
pub async fn create(State(s): State<AppState>, Json(req): Json<NewKey>) -> ApiResult<(StatusCode, Json<Value>)> {
    let namespace = req.namespace.unwrap_or_else(|| meshgate_model::DEFAULT_NAMESPACE.to_string());
    if s.store.get(meshgate_model::Kind::Consumer, &namespace, &req.consumer).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "no Consumer {namespace}/{}; apply one first (apiVersion: meshgate.io/v1, kind: Consumer)",
            req.consumer
        )));
    }
    let (id, key) = s.store.create_api_key(&namespace, &req.consumer).await?;
    s.hub.notify();
    tracing::info!(%id, consumer = %format!("{namespace}/{}", req.consumer), "API key created");
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "key": key, "consumer": req.consumer, "namespace": namespace }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    consumer: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// `GET /api/v1/apikeys`: keys (never the keys themselves), newest first.
pub async fn list(State(s): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let namespace = q.namespace.unwrap_or_else(|| meshgate_model::DEFAULT_NAMESPACE.to_string());
    let only = q.consumer.as_deref().map(|c| (namespace.as_str(), c));
    Ok(Json(json!({ "items": s.store.api_keys(only).await? })))
}

/// `DELETE /api/v1/apikeys/{id}`: the key stops working with the next snapshot (compiled at once).
pub async fn revoke(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if !s.store.revoke_api_key(&id).await? {
        return Err(ApiError::not_found(format!("no API key {id:?} that is not revoked already")));
    }
    s.hub.notify();
    Ok(Json(json!({ "revoked": id })))
}
