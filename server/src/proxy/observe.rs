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
}

/// The request's side of the record, taken before the request is handled.
pub struct Started {
    pub at: Instant,
    pub grpc: bool,
    pub request_bytes: u64,
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
    let pending = Pending {
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

struct Pending {
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
        self.metrics.record(&Call {
            reporter: self.reporter,
            peer: self.peer.as_deref(),
            service: self.service.as_deref(),
            grpc: self.grpc,
            code: self.code,
            grpc_status,
            flags: &self.flags,
            mtls: self.mtls,
            duration: self.at.elapsed(),
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
