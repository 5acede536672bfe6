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

/// `GET /api/v1/ca`: trust domain, signing root, the trusted bundle, and
/// how far a rotation has got.
pub async fn ca(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(s.ca.status(&s.store).await.map_err(|e| ApiError::internal(format!("{e:#}")))?))
}

/// `POST /api/v1/ca/rotate`: a new root signs from now on; the old one stays trusted.
pub async fn rotate_ca(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let previous = s.ca.fingerprint();
    let fingerprint = s.ca.rotate(&s.store).await.map_err(rotate_error)?;
    ca_changed(&s)?;
    Ok(Json(json!({ "fingerprint": fingerprint, "previous": previous, "trusted": s.ca.roots().len() })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetireQuery {
    #[serde(default)]
    force: bool,
}

/// `POST /api/v1/ca/retire`: the roots that no longer sign stop being trusted.
pub async fn retire_ca(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<RetireQuery>,
) -> ApiResult<Json<Value>> {
    let retired = s.ca.retire(&s.store, q.force).await.map_err(rotate_error)?;
    ca_changed(&s)?;
    Ok(Json(json!({ "retired": retired, "fingerprint": s.ca.fingerprint() })))
}

fn rotate_error(e: crate::ca::RotateError) -> ApiError {
    use crate::ca::RotateError as R;
    match e {
        R::PluggedIn => ApiError::bad_request(e.to_string()),
        R::NothingToRetire | R::StillInUse { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        R::Other(e) => ApiError::internal(format!("{e:#}")),
    }
}

/// After the CA changed: the mesh port and the gateway take certificates
/// from the new signing root, and proxies recompile with them.
fn ca_changed(s: &AppState) -> ApiResult<()> {
    let fail = |e: String| ApiError::internal(format!("the CA changed but re-issuing failed: {e}"));
    if let Some(tls) = &s.mesh_tls {
        tls.refresh(&s.ca).map_err(|e| fail(format!("{e:#}")))?;
    }
    let id = SpiffeId::gateway(s.ca.trust_domain());
    let identity = s.ca.identity(&id, crate::ca::DEFAULT_TTL).map_err(|e| fail(e.to_string()))?;
    s.hub.identity.store(Some(std::sync::Arc::new(identity)));
    s.hub.notify();
    Ok(())
}

pub async fn certificates(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "items": s.store.certificates(1000).await? })))
}

/// How long `proxy-config` waits for an agent's fresh config dump.
const DUMP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// `GET /api/v1/proxy-config/{name}`: what a proxy runs (routes, clusters,
/// endpoints, certificate). Agents are asked over their config stream, so
/// this is their own view, wherever they run; when one does not answer in
/// time, its last report is given with `fresh: false`.
pub async fn proxy_config(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    if name == "gateway" {
        let snapshot = s.hub.snapshot();
        let dump = crate::proxy::dump::Dump::of(&snapshot, "gateway");
        return Ok(Json(json!({
            "name": name,
            "role": "gateway",
            "revision": snapshot.revision,
            "fresh": true,
            "routes": dump.routes,
            "clusters": dump.clusters,
            "endpoints": dump.endpoints,
            "secret": s.hub.identity.load().as_ref().map(|id| id.describe()),
        })));
    }
    let Some(record) = s.hub.fleet.get(&name) else {
        return Err(ApiError::not_found(format!("no proxy named {name:?}; `meshgate proxy-status` lists them")));
    };
    let Some((report, fresh)) = s.hub.fleet.fresh_dump(&name, DUMP_WAIT).await else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the agent {name:?} has not reported its configuration yet"),
        ));
    };
    let mut v = report.dump.as_ref().clone();
    let reported = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(report.at_ms) * 1_000_000)
        .map(crate::ca::rfc3339)
        .unwrap_or_default();
    v["name"] = json!(name);
    v["role"] = json!("sidecar");
    v["identity"] = json!(record.identity);
    v["nack"] = json!(s.hub.fleet.get(&name).and_then(|r| r.nack));
    v["reportedAt"] = json!(reported);
    v["fresh"] = json!(fresh);
    Ok(Json(v))
}
