//! `GET /api/v1/logs`: the access-log lines of the gateway and the
//! sidecars, merged, as JSON lines with the proxy's name first. With
//! `follow=true` the answer streams until the client goes; without, it
//! holds the lines the proxies kept and those that came in `wait`.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::telemetry::logs::{Follower, Line};

/// What the gateway's lines are filed under.
const GATEWAY: &str = "meshgate-gateway";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogsQuery {
    /// Only this service's sidecars (`meshgate-gateway`: only the gateway).
    service: Option<String>,
    follow: Option<bool>,
    /// Without `follow`: how long to gather lines, e.g. `2s` [default: 1s, at most 30s].
    wait: Option<String>,
}

struct Merged {
    follower: Follower,
    service: Option<String>,
    gateway: Option<crate::telemetry::accesslog::Following>,
    backlog: VecDeque<Vec<u8>>,
}

impl Merged {
    /// The next line, tagged; `None` when every source is gone.
    async fn next(&mut self) -> Option<Vec<u8>> {
        use tokio::sync::broadcast::error::RecvError;
        if let Some(line) = self.backlog.pop_front() {
            return Some(line);
        }
        let gateway = Line { proxy: Arc::from(GATEWAY), service: Arc::from(GATEWAY), text: Bytes::new() };
        loop {
            let from_gateway = async {
                match &mut self.gateway {
                    Some(f) => f.lines.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = self.follower.lines.recv() => match got {
                    Ok(line) if self.service.as_deref().is_none_or(|s| s == &*line.service) => return Some(line.tagged()),
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => return Some(skipped(n)),
                    Err(RecvError::Closed) => return None,
                },
                got = from_gateway => match got {
                    Ok(text) => return Some(Line { text, ..gateway.clone() }.tagged()),
                    Err(RecvError::Lagged(n)) => return Some(skipped(n)),
                    Err(RecvError::Closed) => self.gateway = None,
                },
            }
        }
    }
}

fn skipped(n: u64) -> Vec<u8> {
    format!("{{\"meshgate\":\"{n} lines skipped: more traffic than this follower takes\"}}\n").into_bytes()
}

pub async fn logs(State(s): State<AppState>, Query(q): Query<LogsQuery>) -> ApiResult<Response> {
    let wait =
        match q.wait.as_deref() {
            None => std::time::Duration::from_secs(1),
            Some(w) => meshgate_model::check::parse_duration(w)
                .ok()
                .filter(|d| *d <= std::time::Duration::from_secs(30))
                .ok_or_else(|| ApiError::bad_request(format!("wait={w:?}: expected a duration up to 30s, e.g. 2s")))?,
        };
    let service = q.service.filter(|s| !s.is_empty());
    let gateway_log = s.hub.gateway_log.get().filter(|_| service.as_deref().is_none_or(|s| s == GATEWAY));
    // Sidecars of that service (all without one) are asked for their lines.
    let follower = s.hub.logs.follow(service.as_deref());
    let gateway = gateway_log.map(|g| g.follow());
    let backlog = gateway_log
        .map(|g| {
            g.recent()
                .into_iter()
                .map(|text| Line { proxy: Arc::from(GATEWAY), service: Arc::from(GATEWAY), text }.tagged())
                .collect()
        })
        .unwrap_or_default();
    let mut merged = Merged { follower, service, gateway, backlog };
    let ndjson = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if q.follow == Some(true) {
        let stream = futures_util::stream::unfold(merged, |mut m| async move {
            m.next().await.map(|line| (Ok::<_, std::convert::Infallible>(Bytes::from(line)), m))
        });
        return Ok((ndjson, Body::from_stream(stream)).into_response());
    }
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, merged.next()).await {
        out.extend_from_slice(&line);
    }
    Ok((ndjson, out).into_response())
}
