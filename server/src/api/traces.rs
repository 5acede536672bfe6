//! The trace store over HTTP: OTLP in (`POST /v1/traces`, protobuf or
//! JSON, as an OpenTelemetry collector takes it), search and one trace's
//! spans out (`/api/v1/traces`, `/api/v1/traces/{traceId}`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::telemetry::tracestore::{Query as TraceQuery, TraceHub};

/// The trace store, or 503 where none runs (an API without `meshgate up`).
fn running(hub: Option<&Arc<TraceHub>>) -> ApiResult<&Arc<TraceHub>> {
    hub.ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the trace store is not running"))
}

/// Takes an OTLP/HTTP trace export into the store (and on to the exporters).
pub fn receive(hub: Option<&Arc<TraceHub>>, source: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let hub = match running(hub) {
        Ok(hub) => hub,
        Err(e) => return e.into_response(),
    };
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let json = match ct.split(';').next().unwrap_or("").trim() {
        "application/x-protobuf" | "application/protobuf" => false,
        "application/json" => true,
        other => {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type {other:?}: OTLP/HTTP is application/x-protobuf or application/json"),
            )
            .into_response();
        }
    };
    // OpenTelemetry collectors compress their OTLP/HTTP exports with gzip by default.
    let unpacked;
    let body = match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim()) {
        None | Some("identity" | "") => body,
        Some(enc) if enc.eq_ignore_ascii_case("gzip") => match gunzip(body, MAX_UNPACKED) {
            Ok(b) => {
                unpacked = b;
                &unpacked[..]
            }
            Err(e) => return e.into_response(),
        },
        Some(enc) => {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Encoding {enc:?} is not accepted: send gzip or uncompressed spans"),
            )
            .into_response();
        }
    };
    // Only agents say which providers their spans go to: an app's spans
    // go where the mesh's defaults send them, whatever attributes they carry.
    match crate::telemetry::otlp::decode(body, json, source == "agent") {
        Ok(spans) => {
            hub.metrics.received.with_label_values(&[source]).inc_by(spans.len() as u64);
            hub.accept(spans);
            // An empty ExportTraceServiceResponse: nothing rejected.
            if json {
                ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
            } else {
                ([(header::CONTENT_TYPE, "application/x-protobuf")], Bytes::new()).into_response()
            }
        }
        Err(e) => ApiError::bad_request(e).into_response(),
    }
}

/// How large an OTLP request may unpack to (the compressed body is held to
/// the API's 2 MiB): a bound for gzip bombs (the endpoint takes no token),
/// well above a real batch (an SDK's default batch is 512 spans).
const MAX_UNPACKED: u64 = 8 << 20;

fn gunzip(body: &[u8], limit: u64) -> Result<Vec<u8>, ApiError> {
    use std::io::Read as _;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4));
    match flate2::read::GzDecoder::new(body).take(limit + 1).read_to_end(&mut out) {
        Ok(_) if out.len() as u64 > limit => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the gzip body unpacks to more than {} MiB", limit >> 20),
        )),
        Ok(_) => Ok(out),
        Err(e) => Err(ApiError::bad_request(format!("Content-Encoding gzip: the body is not gzip ({e})"))),
    }
}

/// `POST /v1/traces` on the admin address: apps' own spans.
pub async fn otlp(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    receive(s.hub.traces.get(), "otlp", &headers, &body)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Search {
    service: Option<String>,
    operation: Option<String>,
    /// `error` or `ok`.
    status: Option<String>,
    /// e.g. `250ms`.
    min_duration: Option<String>,
    /// RFC 3339 or Unix milliseconds.
    start: Option<String>,
    end: Option<String>,
    /// Instead of `start`: this long before now, e.g. `15m`.
    lookback: Option<String>,
    trace_id: Option<String>,
    limit: Option<usize>,
}

fn time_param(name: &str, v: &str) -> Result<u64, ApiError> {
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(ms.saturating_mul(1_000_000));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name}={v:?}: expected RFC 3339 (2026-11-27T10:00:00Z) or Unix milliseconds"
            ))
        })
}

fn trace_id(v: &str) -> Result<crate::telemetry::trace::TraceId, ApiError> {
    let mut id = [0u8; 16];
    match hex::decode_to_slice(v, &mut id) {
        Ok(()) => Ok(id),
        Err(_) => Err(ApiError::bad_request(format!("trace id {v:?}: expected 32 hexadecimal digits"))),
    }
}

/// `GET /api/v1/traces`: the newest traces that match, as summaries.
pub async fn search(State(s): State<AppState>, Query(p): Query<Search>) -> ApiResult<Json<Value>> {
    let hub = running(s.hub.traces.get())?;
    let duration = |name: &str, v: &str| {
        meshgate_model::check::parse_duration(v)
            .map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
            .map_err(|e| ApiError::bad_request(format!("{name}={v:?}: {e}")))
    };
    let mut q = TraceQuery {
        service: p.service.filter(|s| !s.is_empty()),
        operation: p.operation.filter(|s| !s.is_empty()),
        limit: p.limit.unwrap_or(20).clamp(1, 1000),
        ..Default::default()
    };
    q.error = match p.status.as_deref() {
        None | Some("") | Some("any") => None,
        Some("error") => Some(true),
        Some("ok") => Some(false),
        Some(other) => return Err(ApiError::bad_request(format!("status={other:?}: expected error, ok or any"))),
    };
    if let Some(d) = p.min_duration.as_deref() {
        q.min_duration_nanos = Some(duration("minDuration", d)?);
    }
    if let Some(v) = p.start.as_deref() {
        q.start_nanos = Some(time_param("start", v)?);
    }
    if let Some(v) = p.end.as_deref() {
        q.end_nanos = Some(time_param("end", v)?);
    }
    if let Some(v) = p.lookback.as_deref() {
        let now = crate::telemetry::trace::unix_nanos(std::time::SystemTime::now());
        q.start_nanos = Some(now.saturating_sub(duration("lookback", v)?));
    }
    if let Some(v) = p.trace_id.as_deref() {
        q.trace_id = Some(trace_id(v)?);
    }
    Ok(Json(json!({ "traces": hub.search(&q), "store": hub.stats() })))
}

/// `GET /api/v1/traces/{traceId}`: the trace's spans, earliest first.
pub async fn get_trace(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let hub = running(s.hub.traces.get())?;
    let id = trace_id(&id)?;
    hub.get(&id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "no trace {} in the store (unsampled, not yet arrived, or dropped for space)",
            crate::telemetry::trace::hex32(&id)
        ))
    })
}
