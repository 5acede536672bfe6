//! The built-in time series and service map over HTTP, for the console
//! (`/api/v1/stats/services`, `/api/v1/stats/routes`, `/api/v1/graph`).

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::telemetry::series::unix_now;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Window {
    /// How far back, e.g. `5m` (at most 1h) [default: 15m for series, 5m for the graph].
    window: Option<String>,
    /// Only this service (host or short name) or route.
    service: Option<String>,
    route: Option<String>,
}

fn seconds(w: Option<&str>, default: i64) -> ApiResult<i64> {
    match w {
        None | Some("") => Ok(default),
        Some(v) => {
            let d = meshgate_model::check::parse_duration(v)
                .map_err(|e| ApiError::bad_request(format!("window={v:?}: {e}")))?;
            let s = d.as_secs() as i64;
            if !(10..=3600).contains(&s) {
                return Err(ApiError::bad_request(format!("window={v:?}: must be from 10s to 1h")));
            }
            Ok(s)
        }
    }
}

/// `GET /api/v1/stats/services`: per service and version, a point per 10 s.
pub async fn services(State(s): State<AppState>, Query(w): Query<Window>) -> ApiResult<Json<Value>> {
    let window = seconds(w.window.as_deref(), 900)?;
    Ok(Json(s.hub.series.series(unix_now(), window, false, w.service.as_deref())))
}

/// `GET /api/v1/stats/routes`: per gateway route, a point per 10 s.
pub async fn routes(State(s): State<AppState>, Query(w): Query<Window>) -> ApiResult<Json<Value>> {
    let window = seconds(w.window.as_deref(), 900)?;
    Ok(Json(s.hub.series.series(unix_now(), window, true, w.route.as_deref())))
}

/// `GET /api/v1/graph`: who calls whom, with rate, errors and p99.
pub async fn graph(State(s): State<AppState>, Query(w): Query<Window>) -> ApiResult<Json<Value>> {
    let window = seconds(w.window.as_deref(), 300)?;
    Ok(Json(s.hub.series.graph(unix_now(), window)))
}
