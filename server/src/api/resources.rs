//! Resource handlers: CRUD per kind, multi-document apply, history,
//! rollback and analyze.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use meshgate_model::analyze::{self, Finding, Severity};
use meshgate_model::{DEFAULT_NAMESPACE, Kind, Problem, Resource};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Actor;
use super::error::Detail;
use super::{ApiError, ApiResult, AppState, kind_from_plural, read_text};
use crate::labels::Selector;
use crate::store::{Change, HistoryFilter, Object, WriteMode};

fn problems_error(problems: Vec<Problem>) -> ApiError {
    let count = problems.len();
    let first = problems.first().map(ToString::to_string).unwrap_or_default();
    let details = problems
        .into_iter()
        .map(|p| {
            let mut path = String::new();
            if let Some(d) = p.document {
                path.push_str(&format!("document {d}"));
                if let Some(o) = &p.object {
                    path.push_str(&format!(" ({o})"));
                }
                if let (Some(l), Some(c)) = (p.line, p.column) {
                    path.push_str(&format!(" line {l}, column {c}"));
                }
            }
            if !p.path.is_empty() {
                if !path.is_empty() {
                    path.push_str(": ");
                }
                path.push_str(&p.path);
            }
            Detail { path, reason: p.reason }
        })
        .collect();
    let message = if count == 1 { first } else { format!("{count} problems; first: {first}") };
    ApiError::invalid(message, details)
}

/// Wakes the compiler and waits (briefly) until the data plane serves
/// `revision`, so that a write the API acknowledged is live when the
/// caller hears back. Returns whether it got there in time.
async fn pushed(state: &AppState, revision: i64) -> bool {
    state.hub.notify();
    let live = state.hub.wait_for(revision, std::time::Duration::from_secs(2)).await;
    if !live {
        tracing::warn!(revision, "configuration not applied to the data plane within 2 s");
    }
    live
}

/// `GET /api/v1/proxy-status`: which revision each proxy runs.
pub async fn proxy_status(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let current = state.store.current_revision().await?;
    let applied = state.hub.applied_revision();
    let listeners: Vec<Value> = state
        .hub
        .listening
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(port, (addr, tls))| json!({"port": port, "address": addr.to_string(), "tls": tls}))
        .collect();
    let mut proxies = vec![json!({
        "name": "gateway",
        "role": "gateway",
        "revision": applied,
        "status": if applied >= current { "SYNCED" } else { "STALE" },
    })];
    for a in state.hub.fleet.all() {
        let mut v = serde_json::to_value(&a).unwrap_or_default();
        v["role"] = json!("sidecar");
        // A live agent always has a config request waiting, but for a moment between two.
        let gone = !a.connected && crate::control::fleet::now_ms() - a.last_seen_ms > 5_000;
        let status = match &a.nack {
            _ if gone => "DISCONNECTED",
            _ if a.revision >= applied => "SYNCED",
            Some(n) if n.revision >= applied => "NACK",
            _ => "STALE",
        };
        v["status"] = json!(status);
        proxies.push(v);
    }
    Ok(Json(json!({ "listeners": listeners, "revision": current, "proxies": proxies })))
}

/// `GET /api/v1/prometheus/targets`: Prometheus HTTP service discovery
/// (`http_sd_configs`): the gateway's metrics (this admin address,
/// `/metrics`) and every agent's (`/stats/prometheus`), with labels naming
/// the proxy.
pub async fn prometheus_targets(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    // The gateway is scraped where Prometheus reached this API.
    let admin = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1:15000");
    let mut groups = vec![json!({
        "targets": [admin],
        "labels": { "__metrics_path__": "/metrics", "meshgate_proxy": "gateway", "meshgate_role": "gateway" },
    })];
    for a in state.hub.fleet.all() {
        let Some(target) = &a.metrics else { continue };
        groups.push(json!({
            "targets": [target],
            "labels": {
                "__metrics_path__": "/stats/prometheus",
                "meshgate_proxy": a.name,
                "meshgate_role": "sidecar",
                "service": a.service,
                "namespace": a.namespace,
            },
        }));
    }
    Json(Value::Array(groups))
}

fn change_json(c: &Change) -> Value {
    json!({
        "kind": c.kind.name(),
        "namespace": c.namespace,
        "name": c.name,
        "outcome": c.outcome,
        "revision": c.revision,
    })
}

#[derive(Deserialize)]
pub struct ApplyQuery {
    namespace: Option<String>,
    #[serde(default, rename = "dryRun")]
    dry_run: bool,
}

/// `POST /api/v1/apply`: multi-document YAML or JSON, all or nothing.
pub async fn apply(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<ApplyQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let text = read_text(&headers, body).await?;
    let namespace = q.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let resources = meshgate_model::decode("request", &text, namespace).map_err(problems_error)?;
    if resources.is_empty() {
        return Err(ApiError::invalid("the request holds no documents", vec![]));
    }
    if q.dry_run {
        let results: Vec<Value> = resources
            .iter()
            .map(|r| json!({"kind": r.kind.name(), "namespace": r.namespace(), "name": r.name(), "outcome": "valid"}))
            .collect();
        return Ok(Json(json!({"dryRun": true, "results": results})));
    }
    let changes = state.store.apply(&resources, &actor.0, WriteMode::Upsert).await?;
    let revision = state.store.current_revision().await?;
    let pushed = pushed(&state, revision).await;
    Ok(Json(json!({
        "results": changes.iter().map(change_json).collect::<Vec<_>>(),
        "revision": revision,
        "pushed": pushed,
    })))
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
}

pub async fn list_all(
    State(state): State<AppState>,
    Path(plural): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    list(&state, &plural, None, q).await
}

pub async fn list_namespaced(
    State(state): State<AppState>,
    Path((ns, plural)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    list(&state, &plural, Some(&ns), q).await
}

async fn list(state: &AppState, plural: &str, ns: Option<&str>, q: ListQuery) -> ApiResult<Response> {
    let kind = kind_from_plural(plural)?;
    let selector = match q.label_selector.as_deref() {
        Some(s) => Some(Selector::parse(s).map_err(|e| ApiError::bad_request(format!("labelSelector: {e}")))?),
        None => None,
    };
    let revision = state.store.current_revision().await?;
    let objects = state.store.list(Some(kind), ns).await?;
    // Written as text: stored bodies are already JSON, so a list of
    // thousands is copied, not parsed and re-serialized.
    let mut out = String::with_capacity(objects.iter().map(|o| o.body.len() + 256).sum::<usize>() + 128);
    out.push_str(&format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"metadata\":{{\"resourceVersion\":\"{revision}\"}},\"items\":["
    ));
    let mut first = true;
    for o in objects.iter().filter(|o| selector.as_ref().is_none_or(|s| s.matches(&o.labels))) {
        if !first {
            out.push(',');
        }
        first = false;
        o.write_document(&mut out);
    }
    out.push_str("]}");
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], out).into_response())
}

pub async fn get_one(
    State(state): State<AppState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let kind = kind_from_plural(&plural)?;
    match state.store.get(kind, &ns, &name).await? {
        Some(o) => Ok(Json(o.to_document())),
        None => Err(ApiError::not_found(format!("{kind} {ns}/{name} not found"))),
    }
}

/// Parses a body that must hold exactly one object of `kind` at `ns`/`name`.
async fn single(headers: &HeaderMap, body: Body, kind: Kind, ns: &str, name: Option<&str>) -> ApiResult<Resource> {
    let text = read_text(headers, body).await?;
    let mut resources = meshgate_model::decode("request", &text, ns).map_err(problems_error)?;
    if resources.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "expected exactly one {kind} document, found {}; use POST /api/v1/apply for several",
            resources.len()
        )));
    }
    let r = resources.remove(0);
    let mismatch =
        |path: &str, reason: String| ApiError::invalid(reason.clone(), vec![Detail { path: path.into(), reason }]);
    if r.kind != kind {
        return Err(mismatch("kind", format!("the body is a {}, the URL names {}", r.kind, kind.plural())));
    }
    if r.namespace() != ns {
        return Err(mismatch(
            "metadata.namespace",
            format!("{:?} does not match the URL's namespace {ns:?}", r.namespace()),
        ));
    }
    if let Some(name) = name
        && r.name() != name
    {
        return Err(mismatch("metadata.name", format!("{:?} does not match the URL's name {name:?}", r.name())));
    }
    Ok(r)
}

/// `PUT`: create or replace one object; a stale `metadata.resourceVersion` gets 409.
pub async fn replace(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let kind = kind_from_plural(&plural)?;
    let r = single(&headers, body, kind, &ns, Some(&name)).await?;
    let changes = state.store.apply(std::slice::from_ref(&r), &actor.0, WriteMode::Upsert).await?;
    pushed(&state, changes[0].revision.unwrap_or(0)).await;
    respond_with_object(&changes[0])
}

/// `POST` to a collection: create, 409 if the object exists.
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((ns, plural)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let kind = kind_from_plural(&plural)?;
    let r = single(&headers, body, kind, &ns, None).await?;
    let changes = state.store.apply(std::slice::from_ref(&r), &actor.0, WriteMode::Create).await?;
    pushed(&state, changes[0].revision.unwrap_or(0)).await;
    respond_with_object(&changes[0])
}

fn respond_with_object(c: &Change) -> ApiResult<Response> {
    let status = if c.outcome == crate::store::Outcome::Created { StatusCode::CREATED } else { StatusCode::OK };
    let doc = c.object.as_ref().map(Object::to_document).unwrap_or(Value::Null);
    Ok((status, Json(doc)).into_response())
}

#[derive(Deserialize)]
pub struct DeleteQuery {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

pub async fn delete_one(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<Value>> {
    let kind = kind_from_plural(&plural)?;
    let change = state.store.delete(kind, &ns, &name, &actor.0, q.resource_version.as_deref()).await?;
    pushed(&state, change.revision.unwrap_or(0)).await;
    Ok(Json(change_json(&change)))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    limit: Option<i64>,
    #[serde(default)]
    objects: bool,
}

pub async fn history(State(state): State<AppState>, Query(q): Query<HistoryQuery>) -> ApiResult<Json<Value>> {
    let kind = match q.kind.as_deref() {
        Some(k) => Some(Kind::parse(k).map_err(ApiError::bad_request)?),
        None => None,
    };
    let filter = HistoryFilter { kind, namespace: q.namespace, name: q.name, limit: q.limit, with_objects: q.objects };
    let revisions = state.store.history(&filter).await?;
    Ok(Json(json!({"revisions": revisions})))
}

pub async fn revision(State(state): State<AppState>, Path(revision): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(serde_json::to_value(state.store.revision(revision).await?).unwrap_or_default()))
}

pub async fn rollback(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(revision): Path<i64>,
) -> ApiResult<Json<Value>> {
    let changes = state.store.rollback(revision, &actor.0).await?;
    let current = state.store.current_revision().await?;
    pushed(&state, current).await;
    Ok(Json(json!({
        "rolledBackTo": revision,
        "results": changes.iter().map(change_json).collect::<Vec<_>>(),
        "revision": current,
    })))
}

#[derive(Deserialize)]
pub struct AnalyzeQuery {
    namespace: Option<String>,
}

/// `POST /api/v1/analyze`: analyzes the stored configuration, with the
/// documents in the body (if any) laid over it as if applied. Documents
/// that fail validation become findings instead of failing the request.
pub async fn analyze(
    State(state): State<AppState>,
    Query(q): Query<AnalyzeQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let text = read_text(&headers, body).await?;
    let namespace = q.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let mut resources = state.store.all_resources().await?;
    let mut findings: Vec<Finding> = Vec::new();
    if !text.trim().is_empty() {
        let docs = meshgate_model::parse::documents("request", &text).map_err(|p| problems_error(vec![*p]))?;
        for (i, doc) in docs.into_iter().enumerate() {
            let (kind, name) = (
                doc["kind"].as_str().unwrap_or("").to_string(),
                doc["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or(namespace).to_string();
            match Resource::from_value(doc, namespace) {
                Ok(r) => {
                    resources.retain(|x| (x.kind, x.namespace(), x.name()) != (r.kind, r.namespace(), r.name()));
                    resources.push(r);
                }
                Err(errors) => findings.extend(errors.into_iter().map(|e| Finding {
                    code: analyze::code_for_schema_problem(&e.reason).to_string(),
                    severity: Severity::Error,
                    kind: kind.clone(),
                    namespace: ns.clone(),
                    name: name.clone(),
                    path: e.path,
                    message: format!("document {}: {}", i + 1, e.reason),
                })),
            }
        }
    }
    let ctx = analyze::Context { cluster_domain: state.settings.cluster_domain.clone(), ..Default::default() };
    findings.extend(analyze::analyze(&resources, &ctx));
    Ok(Json(json!({"findings": findings})))
}
