//! What a request leaves for telemetry: the [`Info`] the handler fills in
//! as it goes (which service and endpoint served it), and the recording of
//! Istio's request metrics when the response is known. A response of known
//! length is recorded at once; one that streams (gRPC, chunked) when its
//! body ends, through the [`Metered`] body, so its bytes and its
//! `grpc-status` trailer count.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Response};
use hyper::body::{Body as _, Frame};

use super::body::BoxError;
use super::{Listener, ProxyBody};
use crate::telemetry::istio::{Call, Labelled, ProxyMetrics, Reporter, Service, Workload};

/// Filled in along a request's way through the proxy.
#[derive(Default)]
pub struct Info {
    /// The cluster's service, once a route chose one.
    pub service: Option<Arc<Labelled<Service>>>,
    /// The endpoint that answered (or was tried last).
    pub workload: Option<Arc<Labelled<Workload>>>,
    // For the access log only (left empty when there is none):
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub consumer: Option<Arc<super::keyauth::Consumer>>,
    pub client_ip: Option<std::net::IpAddr>,
}

/// The request's side of the record, taken before the request is handled.
pub struct Started {
    pub at: Instant,
    pub grpc: bool,
    pub request_bytes: u64,
    /// The request as the access log shows it (only when there is one).
    pub line: Option<RequestLine>,
}

/// What the access log says of the request itself.
pub struct RequestLine {
    method: String,
    authority: String,
    path: String,
    protocol: &'static str,
    user_agent: String,
    request_id: String,
    start: std::time::SystemTime,
}

impl RequestLine {
    /// Read from the request; a request without `x-request-id` gets one
    /// here, so the log and the upstream see the same id.
    pub fn of(req: &mut http::Request<ProxyBody>) -> RequestLine {
        let user_agent =
            req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let request_id = match req.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
            Some(id) => id.to_string(),
            None => {
                let id = super::handler::request_id();
                if let Ok(v) = http::HeaderValue::from_str(&id) {
                    req.headers_mut().insert("x-request-id", v);
                }
                id
            }
        };
        let h = req.headers();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| h.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_string());
        RequestLine {
            method: req.method().to_string(),
            authority,
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string(),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent,
            request_id,
            start: std::time::SystemTime::now(),
        }
    }
}

/// Records the request, now or when the response body ends.
pub fn finish(l: &Listener, started: Started, info: Info, resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let code = resp.status().as_u16();
    let flags = resp.headers().get(super::handler::RESPONSE_FLAGS).and_then(|v| v.to_str().ok()).unwrap_or("");
    let grpc_status = grpc_status(resp.headers());
    // The caller: the peer's certificate at a sidecar's inbound port.
    let caller = match l.reporter {
        Reporter::Destination => Some(l.peer_workload.clone().unwrap_or_else(|| Labelled::new(Workload::unknown()))),
        Reporter::Source => None,
    };
    let log = match (started.line, &l.access_log) {
        (Some(line), Some(out)) => Some(Logged {
            out: out.clone(),
            line,
            route: info.route,
            upstream: info.upstream,
            consumer: info.consumer.map(|c| c.name.clone()),
            client_ip: info.client_ip,
            peer: l.peer_principal.as_deref().map(|p| format!("spiffe://{p}")),
        }),
        _ => None,
    };
    let pending = Pending {
        log,
        metrics: l.metrics.clone(),
        reporter: l.reporter,
        peer: caller.or(info.workload),
        service: info.service,
        grpc: started.grpc,
        code,
        flags: flags.to_string(),
        mtls: l.peer_principal.is_some(),
        at: started.at,
        request_bytes: started.request_bytes,
    };
    match resp.body().size_hint().exact() {
        // Known length, and a gRPC status (if any) already in the headers.
        Some(n) if !started.grpc || grpc_status.is_some() || resp.body().is_end_stream() => {
            pending.record(n, grpc_status);
            resp
        }
        _ => {
            let (parts, body) = resp.into_parts();
            let metered = Metered { inner: body, bytes: 0, grpc_status, pending: Some(pending) };
            Response::from_parts(parts, ProxyBody::Metered(Box::new(metered)))
        }
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u16> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The access log's part of a record.
struct Logged {
    out: Arc<crate::telemetry::accesslog::AccessLog>,
    line: RequestLine,
    route: Option<String>,
    upstream: Option<String>,
    consumer: Option<String>,
    client_ip: Option<std::net::IpAddr>,
    peer: Option<String>,
}

struct Pending {
    log: Option<Logged>,
    metrics: Arc<ProxyMetrics>,
    reporter: Reporter,
    peer: Option<Arc<Labelled<Workload>>>,
    service: Option<Arc<Labelled<Service>>>,
    grpc: bool,
    code: u16,
    flags: String,
    mtls: bool,
    at: Instant,
    request_bytes: u64,
}

impl Pending {
    fn record(self, response_bytes: u64, grpc_status: Option<u16>) {
        let duration = self.at.elapsed();
        if let Some(log) = &self.log {
            let r = &log.line;
            let time: chrono::DateTime<chrono::Utc> = r.start.into();
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            let line = serde_json::json!({
                "start_time": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "method": r.method,
                "authority": r.authority,
                "path": r.path,
                "protocol": r.protocol,
                "response_code": self.code,
                "grpc_status": grpc_status,
                "response_flags": if self.flags.is_empty() { "-" } else { &self.flags },
                "bytes_received": self.request_bytes,
                "bytes_sent": response_bytes,
                "duration": duration.as_millis() as u64,
                "upstream_host": dash(&log.upstream),
                "upstream_cluster": self.service.as_ref().map_or("-", |s| s.value.host.as_str()),
                "route_name": dash(&log.route),
                "downstream_remote_address": log.client_ip.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
                "user_agent": r.user_agent,
                "request_id": r.request_id,
                "consumer": dash(&log.consumer),
                "peer_principal": dash(&log.peer),
            });
            log.out.write(line.to_string());
        }
        self.metrics.record(&Call {
            reporter: self.reporter,
            peer: self.peer.as_deref(),
            service: self.service.as_deref(),
            grpc: self.grpc,
            code: self.code,
            grpc_status,
            flags: &self.flags,
            mtls: self.mtls,
            duration,
            request_bytes: self.request_bytes,
            response_bytes,
        });
    }
}

/// A streamed response body, counted; the request is recorded when it
/// ends (or is dropped: the client went away).
pub struct Metered {
    inner: ProxyBody,
    bytes: u64,
    grpc_status: Option<u16>,
    pending: Option<Pending>,
}

impl Metered {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.bytes += data.len() as u64;
                } else if let Some(t) = f.trailers_ref() {
                    self.grpc_status = grpc_status(t).or(self.grpc_status);
                }
            }
            Some(Err(_)) | None => self.done(),
        }
        if self.inner.is_end_stream() {
            self.done();
        }
        Poll::Ready(frame)
    }

    pub fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    pub fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }

    fn done(&mut self) {
        if let Some(p) = self.pending.take() {
            p.record(self.bytes, self.grpc_status);
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.done();
    }
}
