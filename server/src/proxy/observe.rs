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
use crate::telemetry::istio::{Call, Labelled, Reporter, Service, Workload};

/// Filled in along a request's way through the proxy.
#[derive(Default)]
pub struct Info {
    /// The cluster's service, once a route chose one.
    pub service: Option<Arc<Labelled<Service>>>,
    /// The endpoint that answered (or was tried last).
    pub workload: Option<Arc<Labelled<Workload>>>,
    /// At a sidecar's inbound port: the caller, with the app and version its proxy sent.
    pub caller: Option<Arc<Labelled<Workload>>>,
    /// Refused by policy: `jwt`, `api_key` or `rbac`.
    pub denied: Option<&'static str>,
    // For the access log only (left empty when there is none):
    pub route: Option<Arc<str>>,
    pub upstream: Option<http::uri::Authority>,
    pub consumer: Option<Arc<super::keyauth::Consumer>>,
    pub client_ip: Option<std::net::IpAddr>,
    /// The request's trace (when this proxy traces).
    pub trace: Option<Tracing>,
    /// Sampling, span reporting and access-log filter: the proxy's, or the route's.
    pub telemetry: Option<Arc<super::config::TelemetryPolicy>>,
    /// Span tags taken from the request's headers (`customTags.*.header`).
    pub tags: Vec<(String, crate::telemetry::trace::Value)>,
    /// The `x-request-id` made for the access log and trace, which the upstream gets too.
    pub request_id: Option<bytes::Bytes>,
}

/// A request's place in its trace, and whether the trace is sampled.
pub struct Tracing {
    pub cx: crate::telemetry::trace::Context,
    decided: Option<bool>,
}

impl Tracing {
    pub fn new(cx: crate::telemetry::trace::Context) -> Tracing {
        Tracing { cx, decided: None }
    }
}

impl Info {
    /// The trace's sampling decision, made once: the caller's, else by the Telemetry percentage.
    pub fn sampled(&mut self) -> bool {
        let percent = self.telemetry.as_ref().map_or(super::config::DEFAULT_SAMPLING, |t| t.sampling);
        match &mut self.trace {
            Some(t) => *t
                .decided
                .get_or_insert_with(|| t.cx.sampled.unwrap_or_else(|| crate::telemetry::trace::sample(percent))),
            None => false,
        }
    }

    /// Tells the upstream request which trace it is part of: in its
    /// `headers`, or as a field `add`ed after them when there is nothing
    /// there to replace.
    pub fn inject_trace(&mut self, headers: &mut HeaderMap, add: impl FnOnce(&'static str, super::h1::Value)) {
        if self.trace.is_some() {
            let sampled = self.sampled();
            if let Some(t) = &self.trace {
                match t.cx.traceparent_alone(sampled) {
                    Some(value) => add("traceparent", super::h1::Value::Made(value)),
                    None => t.cx.inject(sampled, headers),
                }
            }
        }
    }
}

/// The request's side of the record, taken before the request is handled.
#[derive(Clone)]
pub struct Started {
    pub at: Instant,
    pub grpc: bool,
    pub request_bytes: u64,
    /// A body of unknown length: its bytes, counted as they go upstream.
    pub counted: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The request as the access log shows it (only when there is one).
    pub line: Option<RequestLine>,
}

/// What the access log says of the request itself (cheap clones of the
/// request's own buffers, taken only when there is an access log).
#[derive(Clone)]
pub struct RequestLine {
    method: http::Method,
    authority: Option<http::HeaderValue>,
    path: Option<http::uri::PathAndQuery>,
    protocol: &'static str,
    user_agent: Option<http::HeaderValue>,
    request_id: super::h1::Value,
}

impl RequestLine {
    /// Read from the request; a request without `x-request-id` gets one
    /// here ([`RequestLine::made_id`]), for the log and the upstream alike.
    pub fn of(req: &http::Request<ProxyBody>) -> RequestLine {
        // A static: a const name would be built and dropped at each comparison.
        static X_REQUEST_ID: http::HeaderName = super::handler::X_REQUEST_ID;
        // One pass over the (few) fields rather than three lookups.
        let (mut id, mut host, mut user_agent) = (None, None, None);
        for (name, value) in req.headers() {
            let slot = if *name == http::header::HOST {
                &mut host
            } else if *name == http::header::USER_AGENT {
                &mut user_agent
            } else if *name == X_REQUEST_ID {
                &mut id
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(value.clone());
            }
        }
        let request_id = match id {
            Some(id) => super::h1::Value::Header(id),
            None => super::h1::Value::Made(super::handler::request_id()),
        };
        let authority = match req.uri().authority() {
            Some(a) => http::HeaderValue::from_str(a.as_str()).ok(),
            None => host,
        };
        RequestLine {
            method: req.method().clone(),
            authority,
            path: req.uri().path_and_query().cloned(),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent,
            request_id,
        }
    }

    /// The id made here for a request that came without one: the upstream gets it too.
    pub fn made_id(&self) -> Option<bytes::Bytes> {
        match &self.request_id {
            super::h1::Value::Made(id) => Some(id.clone()),
            super::h1::Value::Header(_) => None,
        }
    }
}

/// When a request that took `duration` started, by the wall clock: read
/// only for a log line or a span, not on every request.
fn wall_start(duration: std::time::Duration) -> std::time::SystemTime {
    std::time::SystemTime::now().checked_sub(duration).unwrap_or(std::time::UNIX_EPOCH)
}

/// RFC 3339 UTC with milliseconds; the part up to the seconds is made once
/// a second per thread.
fn timestamp(out: &mut Vec<u8>, at: std::time::SystemTime) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let t = chrono::DateTime::<chrono::Utc>::from_timestamp(secs as i64, 0).unwrap_or_default();
            *cached = (secs, t.format("%Y-%m-%dT%H:%M:%S").to_string());
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
    let ms = since.subsec_millis();
    out.extend_from_slice(&[b'.', b'0' + (ms / 100) as u8, b'0' + (ms / 10 % 10) as u8, b'0' + (ms % 10) as u8, b'Z']);
}

/// Records the request, now or when the response body ends (then from
/// a copy of what the request left: borrowed, nothing is moved for the
/// common case).
pub fn finish(l: &Arc<Listener>, started: &Started, info: &mut Info, resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let code = resp.status().as_u16();
    let flags = resp.headers().get(&super::handler::RESPONSE_FLAGS).and_then(|v| v.to_str().ok()).unwrap_or("");
    let grpc_status = grpc_status(resp.headers());
    // The gateway's extras: requests per route and consumer, rate-limited and refused ones.
    if !l.tunnels {
        let route = info.route.as_deref().unwrap_or("-");
        let consumer = info.consumer.as_ref().map_or("-", |c| c.name.as_str());
        let limited = !flags.is_empty() && flags.split(',').any(|f| f == "RL");
        l.metrics.record_edge(route, consumer, code, limited, info.denied);
    }
    // The trace's sampling decision, if the request's way did not make it.
    let sampled = info.sampled();
    match resp.body().size_hint().exact() {
        // Known length, and a gRPC status (if any) already in the headers:
        // recorded now, from what the request left, borrowed.
        Some(n) if !started.grpc || grpc_status.is_some() || resp.body().is_end_stream() => {
            Record { l, started, info, sampled, code, flags }.record(n, grpc_status);
            resp
        }
        _ => {
            let pending = Pending {
                listener: l.clone(),
                started: started.clone(),
                info: std::mem::take(info),
                sampled,
                code,
                flags: flags.to_string(),
            };
            let (parts, body) = resp.into_parts();
            let metered = Metered { inner: body, bytes: 0, grpc_status, pending: Some(pending) };
            Response::from_parts(parts, ProxyBody::Metered(Box::new(metered)))
        }
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u16> {
    super::grpc_status(h).and_then(|c| u16::try_from(c).ok())
}

/// A request's record, kept until its streamed response body ends: what
/// [`Record`] borrows, owned (the listener shared).
struct Pending {
    listener: Arc<Listener>,
    started: Started,
    info: Info,
    sampled: bool,
    code: u16,
    flags: String,
}

impl Pending {
    fn record(&self, response_bytes: u64, grpc_status: Option<u16>) {
        let (l, started, info) = (&*self.listener, &self.started, &self.info);
        Record { l, started, info, sampled: self.sampled, code: self.code, flags: &self.flags }
            .record(response_bytes, grpc_status);
    }
}

/// A finished request as its metrics, access-log line and span see it:
/// the listener, what the request left ([`Started`], [`Info`]) and the
/// response's status. Borrowed: a response of known length is recorded
/// without building or dropping a record of its own.
struct Record<'a> {
    l: &'a Listener,
    started: &'a Started,
    info: &'a Info,
    sampled: bool,
    code: u16,
    flags: &'a str,
}

impl<'a> Record<'a> {
    fn record(&self, response_bytes: u64, grpc_status: Option<u16>) {
        let (started, info) = (self.started, self.info);
        let duration = started.at.elapsed();
        let request_bytes = match &started.counted {
            Some(c) => c.load(std::sync::atomic::Ordering::Relaxed),
            None => started.request_bytes,
        };
        // Spans and access-log lines both need the request line.
        if let Some(line) = &started.line {
            let policy = info.telemetry.as_deref();
            let trace = info.trace.as_ref().map(|t| &t.cx);
            if let Some(out) = self.l.logging()
                && policy.is_none_or(|p| p.log.wants(&self.facts(line, grpc_status, duration)))
            {
                let sizes = (request_bytes, response_bytes);
                write_line(out, self, line, trace, sizes, grpc_status, duration);
            }
            if let (Some(tracer), Some(cx)) = (&self.l.tracer, trace) {
                let error = self.code >= 500 || grpc_status.is_some_and(|s| s != 0);
                if policy.is_none_or(|p| p.report) && (self.sampled || error) {
                    let sizes = (request_bytes, response_bytes);
                    tracer.report(self.span(tracer, cx, line, sizes, grpc_status, duration, error));
                }
            }
        }
        if !self.l.tunnels {
            self.l.metrics.record_route_duration(info.route.as_deref().unwrap_or("-"), self.code, duration);
        }
        // The other side: at a sidecar's inbound port the caller (with the
        // app and version its proxy sent, else its certificate's workload),
        // elsewhere the endpoint that answered.
        let peer = match self.l.reporter {
            Reporter::Destination => {
                Some(info.caller.as_deref().or(self.l.peer_workload.as_deref()).unwrap_or_else(|| unknown()))
            }
            Reporter::Source => info.workload.as_deref(),
        };
        self.l.metrics.record(&Call {
            reporter: self.l.reporter,
            peer,
            service: info.service.as_deref(),
            grpc: started.grpc,
            code: self.code,
            grpc_status,
            flags: self.flags,
            mtls: self.l.peer_principal.is_some(),
            duration,
            request_bytes,
            response_bytes,
        });
    }

    fn facts(
        &self,
        r: &'a RequestLine,
        grpc_status: Option<u16>,
        duration: std::time::Duration,
    ) -> meshgate_model::telemetry::LogFacts<'a> {
        meshgate_model::telemetry::LogFacts {
            code: self.code,
            grpc_status,
            duration_ms: duration.as_millis().min(u128::from(u64::MAX)) as u64,
            method: r.method.as_str(),
            path: r.path.as_ref().map_or("/", |p| p.path()),
            host: r.authority.as_ref().and_then(|a| a.to_str().ok()).unwrap_or(""),
            flags: self.flags,
        }
    }

    /// The caller's SPIFFE id, for the log line and the span.
    fn peer_id(&self) -> Option<String> {
        self.l.peer_principal.as_ref().map(|p| format!("spiffe://{p}"))
    }

    /// This hop's span, with Envoy's and Istio's attribute names.
    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        tracer: &crate::telemetry::trace::Tracer,
        cx: &crate::telemetry::trace::Context,
        r: &RequestLine,
        (request_bytes, response_bytes): (u64, u64),
        grpc_status: Option<u16>,
        duration: std::time::Duration,
        error: bool,
    ) -> crate::telemetry::trace::Span {
        use crate::telemetry::trace::Value;
        let info = self.info;
        let start = crate::telemetry::trace::unix_nanos(wall_start(duration));
        let authority = r.authority.as_ref().and_then(|a| a.to_str().ok()).unwrap_or("-");
        let host = info.service.as_ref().map(|s| s.value.host.as_str());
        let text = |v: &http::HeaderValue| Value::Str(String::from_utf8_lossy(v.as_bytes()).into_owned());
        let mut a: Vec<(String, Value)> = Vec::with_capacity(24);
        let mut put = |k: &str, v: Value| a.push((k.to_string(), v));
        put("node_id", Value::Str(tracer.node_id.to_string()));
        put("component", Value::Str("proxy".into()));
        put("istio.namespace", Value::Str(tracer.namespace.to_string()));
        put("istio.canonical_service", Value::Str(tracer.service.split('.').next().unwrap_or_default().to_string()));
        put("guid:x-request-id", Value::Str(String::from_utf8_lossy(r.request_id.as_bytes()).into_owned()));
        put("http.method", Value::Str(r.method.to_string()));
        put(
            "http.url",
            Value::Str(format!("{}://{authority}{}", self.l.scheme, r.path.as_ref().map_or("/", |p| p.as_str()))),
        );
        put("http.protocol", Value::Str(r.protocol.into()));
        put("http.status_code", Value::Int(i64::from(self.code)));
        if let Some(s) = grpc_status {
            put("grpc.status_code", Value::Int(i64::from(s)));
        }
        put("response_flags", Value::Str(if self.flags.is_empty() { "-".into() } else { self.flags.to_string() }));
        if let Some(ua) = &r.user_agent {
            put("user_agent", text(ua));
        }
        put("request_size", Value::Int(request_bytes as i64));
        put("response_size", Value::Int(response_bytes as i64));
        if let Some(h) = host {
            put("upstream_cluster", Value::Str(h.to_string()));
        }
        if let Some(u) = &info.upstream {
            put("upstream_address", Value::Str(u.as_str().to_string()));
        }
        if let Some(ip) = info.client_ip {
            put("peer.address", Value::Str(ip.to_string()));
        }
        if let Some(p) = self.peer_id() {
            put("peer.principal", Value::Str(p));
        }
        if let Some(route) = &info.route {
            put("meshgate.route", Value::Str(route.to_string()));
        }
        if let Some(c) = &info.consumer {
            put("meshgate.consumer", Value::Str(c.name.clone()));
        }
        if error {
            put("error", Value::Bool(true));
        }
        if let Some(p) = &info.telemetry {
            a.extend(p.tags.iter().cloned());
        }
        a.extend(info.tags.iter().cloned());
        let kind = match (self.l.reporter, self.l.tunnels) {
            (Reporter::Source, true) => crate::telemetry::trace::Kind::Client,
            _ => crate::telemetry::trace::Kind::Server,
        };
        crate::telemetry::trace::Span {
            trace_id: cx.trace_id,
            span_id: cx.span_id,
            parent: cx.parent,
            kind,
            name: format!("{}/*", host.unwrap_or(authority)),
            service: tracer.service.clone(),
            start_unix_nanos: start,
            end_unix_nanos: start + duration.as_nanos().min(u128::from(u64::MAX)) as u64,
            error,
            attributes: a,
            providers: info.telemetry.as_ref().and_then(|p| p.providers.clone()),
        }
    }
}

/// The workload of a caller this proxy cannot name.
fn unknown() -> &'static Labelled<Workload> {
    static UNKNOWN: std::sync::LazyLock<Arc<Labelled<Workload>>> =
        std::sync::LazyLock::new(|| Labelled::new(Workload::unknown()));
    &UNKNOWN
}

/// A request body of unknown length (chunked, HTTP/2 without
/// content-length), counted as it is read.
pub struct Counted {
    pub inner: ProxyBody,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl Counted {
    /// Wraps `req`'s body; the counter to read when the request is recorded.
    pub fn wrap(req: &mut http::Request<ProxyBody>) -> Arc<std::sync::atomic::AtomicU64> {
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let inner = std::mem::take(req.body_mut());
        *req.body_mut() = ProxyBody::Counted(Box::new(Counted { inner, count: count.clone() }));
        count
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            self.count.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }
}

/// A streamed response body, counted; the request is recorded when it
/// ends (or is dropped: the client went away).
pub struct Metered {
    pub(super) inner: ProxyBody,
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

/// Appends an integer in decimal.
fn num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The access log line, written into a buffer each thread reuses.
fn write_line(
    out_log: &crate::telemetry::accesslog::AccessLog,
    rec: &Record<'_>,
    r: &RequestLine,
    trace: Option<&crate::telemetry::trace::Context>,
    (request_bytes, response_bytes): (u64, u64),
    grpc_status: Option<u16>,
    duration: std::time::Duration,
) {
    use crate::telemetry::accesslog::json_str;
    use std::cell::RefCell;
    use std::io::Write as _;
    thread_local! {
        static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
    }
    LINE.with(|cell| {
        let mut b = cell.borrow_mut();
        let out = &mut *b;
        out.clear();
        let info = rec.info;
        let opt = |out: &mut Vec<u8>, v: Option<&[u8]>| json_str(out, v.unwrap_or(b"-"));
        out.extend_from_slice(b"{\"start_time\":\"");
        timestamp(out, wall_start(duration));
        out.extend_from_slice(b"\",\"method\":");
        json_str(out, r.method.as_str().as_bytes());
        out.extend_from_slice(b",\"authority\":");
        opt(out, r.authority.as_ref().map(|v| v.as_bytes()));
        out.extend_from_slice(b",\"path\":");
        opt(out, r.path.as_ref().map(|p| p.as_str().as_bytes()));
        out.extend_from_slice(b",\"protocol\":\"");
        out.extend_from_slice(r.protocol.as_bytes());
        out.extend_from_slice(b"\",\"response_code\":");
        num(out, rec.code);
        out.extend_from_slice(b",\"grpc_status\":");
        match grpc_status {
            Some(s) => num(out, s),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"response_flags\":");
        json_str(out, if rec.flags.is_empty() { b"-" } else { rec.flags.as_bytes() });
        out.extend_from_slice(b",\"bytes_received\":");
        num(out, request_bytes);
        out.extend_from_slice(b",\"bytes_sent\":");
        num(out, response_bytes);
        out.extend_from_slice(b",\"duration\":");
        num(out, duration.as_millis());
        out.extend_from_slice(b",\"upstream_host\":");
        opt(out, info.upstream.as_ref().map(|u| u.as_str().as_bytes()));
        out.extend_from_slice(b",\"upstream_cluster\":");
        opt(out, info.service.as_ref().map(|s| s.value.host.as_bytes()));
        out.extend_from_slice(b",\"route_name\":");
        opt(out, info.route.as_deref().map(str::as_bytes));
        out.extend_from_slice(b",\"downstream_remote_address\":");
        match info.client_ip {
            // IPv4 by hand: `Display` goes through `fmt`, a tenth of the line's cost.
            Some(std::net::IpAddr::V4(v4)) => {
                let mut digits = itoa::Buffer::new();
                out.push(b'"');
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    out.extend_from_slice(digits.format(octet).as_bytes());
                }
                out.push(b'"');
            }
            Some(ip) => {
                let _ = write!(out, "\"{ip}\"");
            }
            None => out.extend_from_slice(b"\"-\""),
        }
        out.extend_from_slice(b",\"user_agent\":");
        opt(out, r.user_agent.as_ref().map(|v| v.as_bytes()));
        out.extend_from_slice(b",\"request_id\":");
        json_str(out, r.request_id.as_bytes());
        out.extend_from_slice(b",\"trace_id\":");
        match trace {
            Some(cx) => {
                out.push(b'"');
                let mut hex = [0u8; 32];
                let _ = hex::encode_to_slice(cx.trace_id, &mut hex);
                out.extend_from_slice(&hex);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"\"-\""),
        }
        out.extend_from_slice(b",\"consumer\":");
        opt(out, info.consumer.as_ref().map(|c| c.name.as_bytes()));
        out.extend_from_slice(b",\"peer_principal\":");
        opt(out, rec.peer_id().as_deref().map(str::as_bytes));
        out.push(b'}');
        out_log.write(out);
    });
}
