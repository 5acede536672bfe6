//! One request through the gateway, in fixed phases: find the route, inject
//! faults, act (respond, redirect or forward with retries and timeouts),
//! then rewrite the response. Errors answer like Envoy: a status, a short
//! body and a response flag (`NR`, `UH`, `UF`, `UT`, `URX`, `FI`, `DI`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;

use super::config::{Action, Redirect, Rewrite, Route, WeightedClusters};
use super::h1::Value;
use super::upstream::Cluster;
use super::{Clients, Listener, ProxyBody};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The header carrying Envoy-style response flags on locally made errors.
pub const RESPONSE_FLAGS: HeaderName = HeaderName::from_static("x-meshgate-response-flags");

/// The longest a buffered request body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Request bodies up to this size are kept so that retries can resend them.
const REPLAYABLE_BODY: u64 = 64 * 1024;

// Statics, not consts: a const array of names is built (and dropped) at every use.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// An answer made here: a short text body and a response flag.
pub(crate) fn local(status: StatusCode, flag: &'static str, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::from_static(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(RESPONSE_FLAGS, HeaderValue::from_static(flag));
    resp
}

/// The request is borrowed, not taken: it stays where the server built it
/// (a request is a few hundred bytes, and each async layer it was moved
/// into copied it).
pub async fn handle(l: &Arc<Listener>, peer: SocketAddr, req: &mut Request<ProxyBody>) -> Response<ProxyBody> {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let trace = l.tracer.as_ref().map(|_| crate::telemetry::trace::Context::extract(req.headers()));
    let length = if hyper::body::Body::is_end_stream(req.body()) {
        Some(0)
    } else {
        hyper::body::Body::size_hint(req.body()).exact()
    };
    let counted = match length {
        Some(_) => None,
        None => Some(super::observe::Counted::wrap(req)),
    };
    let started = super::observe::Started {
        at: std::time::Instant::now(),
        grpc,
        request_bytes: length.unwrap_or(0),
        counted,
        line: (l.logging().is_some() || trace.is_some()).then(|| super::observe::RequestLine::of(req)),
    };
    let mut info = super::observe::Info {
        trace: trace.map(super::observe::Tracing::new),
        request_id: started.line.as_ref().and_then(|l| l.made_id()),
        ..Default::default()
    };
    // Metadata exchange: a mesh peer's app and version, believed only over mTLS.
    if l.reporter == crate::telemetry::istio::Reporter::Destination
        && let Some(meta) = req.headers_mut().remove(&crate::telemetry::istio::PEER_METADATA)
        && let Some(peer) = &l.peer_workload
    {
        let caller = crate::telemetry::istio::caller_with_metadata(&peer.value, meta.as_bytes());
        info.caller = Some(crate::telemetry::istio::Labelled::new(caller));
    }
    // gRPC-Web from browsers goes upstream as gRPC, and comes back as gRPC-Web.
    let web = if grpc { super::grpcweb::kind(req.headers()) } else { None };
    if let Some(text) = web {
        *req = match super::grpcweb::request(std::mem::take(req), text).await {
            Ok(req) => req,
            Err(resp) => return super::observe::finish(l, &started, &mut info, resp),
        };
    }
    let mut resp = route(l, peer, req, &mut info).await;
    // A body the route did not send on is let go now, as if the request had
    // been consumed: the HTTP/1 server then discards the rest of it (a held
    // body would stall its pump, and the connection would not be reused).
    *req.body_mut() = ProxyBody::empty();
    if grpc {
        // gRPC answers are read below and by the metrics (`grpc-status`).
        super::h1::materialize(&mut resp);
    }
    if grpc && resp.status() != StatusCode::OK && resp.headers().contains_key(&RESPONSE_FLAGS) {
        resp = grpc_error(resp);
    }
    let resp = match web {
        Some(text) if resp.status() == StatusCode::OK => super::grpcweb::response(resp, text),
        _ => resp,
    };
    super::observe::finish(l, &started, &mut info, resp)
}

/// A gRPC client expects errors as a trailers-only response with a
/// `grpc-status`, not as an HTTP status; Envoy's mapping.
fn grpc_error(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let code = match resp.status().as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 => 14,
        504 => 4,
        _ => 2,
    };
    let message = format!(
        "meshgate: HTTP {} ({})",
        resp.status().as_u16(),
        resp.headers()[&RESPONSE_FLAGS].to_str().unwrap_or("")
    );
    let mut out = Response::new(ProxyBody::empty());
    let h = out.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
    if let Some(flags) = resp.headers().get(&RESPONSE_FLAGS) {
        h.insert(RESPONSE_FLAGS, flags.clone());
    }
    out
}

async fn route(
    l: &Listener,
    peer: SocketAddr,
    req: &mut Request<ProxyBody>,
    info: &mut super::observe::Info,
) -> Response<ProxyBody> {
    // Request smuggling is refused by the HTTP/1 server before this point
    // (see `h1::server`).
    // Match and forward the normalized path, so `/a/../admin` cannot dodge a `/admin` rule.
    // (CONNECT names an authority, not a path.)
    let connect = req.method() == http::Method::CONNECT;
    if let Some(normalized) = normalize_path(req.uri().path()).filter(|_| !connect) {
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        let mut parts = req.uri().clone().into_parts();
        match format!("{normalized}{query}").parse() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return local(StatusCode::BAD_REQUEST, "DPE", "invalid path\n"),
        }
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return local(StatusCode::BAD_REQUEST, "DPE", "invalid path\n"),
        }
    }
    let snapshot = l.hub.snapshot();
    if l.tracer.is_some() || l.logging().is_some() {
        info.telemetry = snapshot.telemetry.clone();
    }
    // RequestAuthentication: a bad token is 401; none at all passes as anonymous.
    let identity = match &snapshot.authn {
        Some(authn) => {
            let uri = req.uri().clone();
            match authn.authenticate(&uri, req.headers_mut(), unix_now()) {
                super::authn::Outcome::Anonymous => None,
                super::authn::Outcome::Authenticated(id) => {
                    req.extensions_mut().insert(id.clone());
                    Some(id)
                }
                super::authn::Outcome::Refused(e) => {
                    tracing::debug!(%peer, reason = %e, "JWT refused");
                    info.denied = Some("jwt");
                    return super::authn::unauthorized(&e);
                }
            }
        }
        None => None,
    };
    // The route first (as Envoy resolves it before its RBAC filter), then
    // the route's API key, then AuthorizationPolicy, which sees the
    // consumer; a request with no route is refused by policy before it is 404.
    let routed = {
        let mut lowercased = String::new();
        let host = request_host(req, &mut lowercased);
        match snapshot.ports.get(&l.gateway_port) {
            None => Err("no route: no Gateway serves this port\n"),
            Some(port) => match port.find(host) {
                None => Err("no route: no VirtualService serves this host\n"),
                Some(vhost) => vhost.route_for(req, l.scheme).ok_or("no route matched\n"),
            },
        }
    };
    let mut consumer = None;
    if let Ok(route) = &routed
        && let Some(key_auth) = &route.key_auth
    {
        let uri = req.uri().clone();
        match key_auth.check(&uri, req.headers_mut(), identity.is_some()) {
            super::keyauth::Outcome::Consumer(c) => {
                req.extensions_mut().insert(c.clone());
                consumer = Some(c);
            }
            super::keyauth::Outcome::Anonymous => {}
            super::keyauth::Outcome::Refused(why) => {
                info.denied = Some("api_key");
                info.route = routed.as_ref().ok().map(|r| r.name.clone());
                return super::keyauth::unauthorized(why);
            }
        }
    }
    let remote_ip = client_ip(l, peer.ip(), req.headers());
    // The gateway's own metrics (per route and consumer) and the access log want these.
    if !l.tunnels || l.logging().is_some() {
        info.consumer = consumer.clone();
        info.route = routed.as_ref().ok().map(|r| r.name.clone());
    }
    if l.logging().is_some() {
        info.client_ip = Some(remote_ip);
    }
    if let Some(authz) = &snapshot.authz
        && let Err(why) = authorize(authz, l, peer, remote_ip, req, identity.as_deref())
    {
        tracing::debug!(%peer, reason = %why, "RBAC: access denied");
        info.denied = Some("rbac");
        return local(StatusCode::FORBIDDEN, "RBAC", "RBAC: access denied\n");
    }
    let route = match routed {
        Ok(route) => route,
        Err(why) => return local(StatusCode::NOT_FOUND, "NR", why),
    };
    // A Telemetry that targets the route decides its sampling and access log.
    if let Some(t) = &route.telemetry
        && (l.tracer.is_some() || l.logging().is_some())
    {
        info.telemetry = Some(t.clone());
    }
    // Span tags from this request's headers, read before it goes upstream.
    if let Some(t) = &info.telemetry
        && !t.header_tags.is_empty()
        && info.trace.is_some()
    {
        info.tags = t.header_values(req.headers());
    }
    // RequestSizeLimit: a declared length over it is refused at once; a body
    // of unknown length is read up to the limit (and sent on from memory).
    if let Some(max) = route.max_body {
        let too_large = || local(StatusCode::PAYLOAD_TOO_LARGE, "DPE", "request body too large\n");
        match hyper::body::Body::size_hint(req.body()).exact() {
            Some(n) if n > max => return too_large(),
            Some(_) => {}
            None => {
                let body = std::mem::take(req.body_mut());
                let limited = http_body_util::Limited::new(body, max.min(usize::MAX as u64) as usize);
                match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
                    Ok(Ok(b)) => *req.body_mut() = ProxyBody::full(b.to_bytes()),
                    Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
                    Ok(Err(_)) => return local(StatusCode::BAD_REQUEST, "DPE", "request body could not be read\n"),
                    Err(_) => return local(StatusCode::REQUEST_TIMEOUT, "DPE", "request body not received in time\n"),
                }
            }
        }
    }

    // RateLimitPolicy: the in-flight cap, then a token from the request's bucket.
    let mut _in_flight = None;
    let mut quota = None;
    if let Some(limits) = &route.limits {
        if let Some((cap, counter)) = &limits.concurrency {
            match super::ratelimit::InFlight::enter(counter, *cap) {
                Some(guard) => _in_flight = Some(guard),
                None => {
                    let mut resp = local(StatusCode::TOO_MANY_REQUESTS, "RL", "too many requests in flight\n");
                    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return resp;
                }
            }
        }
        let caller = super::ratelimit::Caller {
            ip: remote_ip,
            path: req.uri().path(),
            headers: req.headers(),
            consumer: consumer.as_deref(),
            identity: identity.as_deref(),
        };
        match limits.check(&caller) {
            super::ratelimit::Verdict::Limited(d, limiter) => {
                let mut resp = local(StatusCode::TOO_MANY_REQUESTS, "RL", "rate limit exceeded\n");
                super::ratelimit::headers(resp.headers_mut(), &d, &limiter);
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(d.retry_after_secs));
                return resp;
            }
            super::ratelimit::Verdict::Allowed(Some(d), Some(limiter)) => quota = Some((d, limiter)),
            super::ratelimit::Verdict::Allowed(..) => {}
        }
    }

    if let Some(fault) = &route.fault {
        if let Some((pct, status)) = fault.abort
            && chance(pct)
        {
            let mut resp = local(status, "FI", "fault filter abort\n");
            route.response_headers.apply(resp.headers_mut());
            return resp;
        }
        if let Some((pct, delay)) = fault.delay
            && chance(pct)
        {
            tokio::time::sleep(delay).await;
        }
    }

    let origin = route.cors.as_ref().and_then(|_| req.headers().get(header::ORIGIN).cloned());
    if let (Some(cors), Some(origin)) = (&route.cors, &origin)
        && req.method() == http::Method::OPTIONS
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let allowed = origin.to_str().is_ok_and(|o| cors.allows(o));
        if allowed || cors.ignore_unmatched_preflights {
            let mut resp = Response::new(ProxyBody::empty());
            if allowed {
                preflight_headers(cors, origin, resp.headers_mut());
            }
            return resp;
        }
    }
    let mut resp = match route.action.as_ref() {
        Action::Direct { status, body } => {
            let mut r = Response::new(ProxyBody::full(body.clone()));
            *r.status_mut() = *status;
            r
        }
        Action::Redirect(redirect) => {
            let mut lowercased = String::new();
            redirect_response(redirect, req, l.scheme, request_host(req, &mut lowercased))
        }
        Action::Forward(targets) if connect => tunnel(targets, req, info).await,
        Action::Forward(targets) => match route.transcoder.as_deref().and_then(|t| Some((t, t.find(req)?))) {
            // GrpcTranscoder: REST+JSON in, a gRPC call upstream, JSON back.
            Some((t, call)) => match t.request(&call, std::mem::take(req)).await {
                Ok(mut req) => t.response(&call, forward(l, peer, route, targets, &mut req, info).await).await,
                Err(resp) => resp,
            },
            None => forward(l, peer, route, targets, req, info).await,
        },
    };
    if let (Some(cors), Some(origin)) = (&route.cors, origin)
        && origin.to_str().is_ok_and(|o| cors.allows(o))
    {
        let h = headers_mut(&mut resp);
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if cors.allow_credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(v) = &cors.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
    if let Some((d, limiter)) = &quota {
        super::ratelimit::headers(headers_mut(&mut resp), d, limiter);
    }
    if !route.response_headers.is_empty() {
        route.response_headers.apply(headers_mut(&mut resp));
    }
    resp
}

/// A response's headers to read or change, with an upstream's fields that
/// were to pass as they came ([`super::h1::RawFields`]) among them.
fn headers_mut(resp: &mut Response<ProxyBody>) -> &mut HeaderMap {
    super::h1::materialize(resp);
    resp.headers_mut()
}

/// AuthorizationPolicy for a sidecar's inbound request.
/// The client's address: the peer's, or, when the peer is a trusted proxy
/// (`--trusted-proxies`), the rightmost `X-Forwarded-For` entry that is not
/// one (nginx's `real_ip_recursive`). Nothing a client writes counts
/// unless a trusted proxy passed it on.
fn client_ip(l: &Listener, peer: std::net::IpAddr, headers: &HeaderMap) -> std::net::IpAddr {
    let trusted = |ip: &std::net::IpAddr| l.trusted_proxies.iter().any(|c| c.contains(ip));
    if l.trusted_proxies.is_empty() || !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else { return client };
        for part in text.rsplit(',') {
            let Ok(ip) = part.trim().parse::<std::net::IpAddr>() else { return client };
            client = ip;
            if !trusted(&ip) {
                return ip;
            }
        }
    }
    client
}

fn authorize<B>(
    authz: &super::authz::Authz,
    l: &Listener,
    peer: SocketAddr,
    remote_ip: std::net::IpAddr,
    req: &Request<B>,
    request: Option<&super::authn::Identity>,
) -> Result<(), String> {
    let principal = l.peer_principal.as_deref();
    let mut scratch = String::new();
    // At the gateway the policy's port is the listener's (Gateway server port).
    let mut port_text = itoa::Buffer::new();
    let port = if authz.port().is_empty() { port_text.format(l.gateway_port) } else { authz.port() };
    let facts = super::authz::Facts {
        principal,
        // `TD/ns/NS/sa/SA`
        namespace: principal.and_then(|p| p.split('/').nth(2)),
        ip: peer.ip(),
        remote_ip,
        host: request_host(req, &mut scratch),
        method: req.method().as_str(),
        path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        port,
        headers: req.headers(),
        request,
    };
    authz.check(&facts)
}

fn preflight_headers(cors: &super::config::Cors, origin: &HeaderValue, h: &mut HeaderMap) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if let Some(v) = &cors.allow_methods {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
    }
    if let Some(v) = &cors.allow_headers {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    if let Some(v) = &cors.max_age {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
    }
    if cors.allow_credentials {
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
}

/// RFC 3986 dot-segment removal, with `%2e` read as `.` and repeated
/// slashes merged. `None` when the path is already normal (the common
/// case, which then costs one scan and no allocation). Escaped slashes
/// (`%2F`) are left as they are, as Envoy does by default.
pub fn normalize_path(path: &str) -> Option<String> {
    let suspicious =
        path.contains("//") || path.contains("/.") || path.contains(['%', '\\', ';']) || !path.starts_with('/');
    if !suspicious {
        return None;
    }
    let decoded = decode_unreserved(&path.replace('\\', "/"));
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        // `..;x` is `..` to Tomcat and Spring: treat path parameters on dot segments as dots.
        let dots = seg.split(';').next().unwrap_or(seg);
        match if dots == "." || dots == ".." { dots } else { seg } {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut normal = format!("/{}", out.join("/"));
    if trailing && normal != "/" {
        normal.push('/');
    }
    (normal != path).then_some(normal)
}

/// Decodes percent-escapes of unreserved characters (letters, digits,
/// `-._~`), which mean the same decoded or not; `%2F`, `%5C` and the rest
/// stay escaped.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| path.to_string())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn chance(pct: f64) -> bool {
    pct >= 100.0 || (pct > 0.0 && rand::random::<f64>() * 100.0 < pct)
}

/// The request's host without port, lowercased (into `scratch` only when
/// it is not lowercase already: the common case costs no allocation).
fn request_host<'a, B>(req: &'a Request<B>, scratch: &'a mut String) -> &'a str {
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(strip_port).unwrap_or_default(),
    };
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        *scratch = raw.to_ascii_lowercase();
        scratch
    } else {
        raw
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    // `name:digits` (or `name:`) loses the port; bytes, not chars: this runs on every request.
    let b = host.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    match b.len().checked_sub(digits + 1) {
        Some(colon) if b[colon] == b':' => &host[..colon],
        _ => host,
    }
}

fn redirect_response<B>(r: &Redirect, req: &Request<B>, scheme: &str, host: &str) -> Response<ProxyBody> {
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let request_authority = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(host);
    let request_port = request_authority.strip_prefix(strip_port(request_authority)).and_then(|p| p.strip_prefix(':'));
    let port = match (r.port, r.keep_request_port) {
        (Some(p), _) => Some(p.to_string()),
        (None, Some(true)) => request_port.map(str::to_string),
        _ => None,
    };
    let authority = match (&r.authority, port) {
        (Some(a), Some(p)) => format!("{}:{p}", strip_port(a)),
        (Some(a), None) => a.clone(),
        (None, Some(p)) => format!("{host}:{p}"),
        (None, None) if r.keep_request_port == Some(false) => host.to_string(),
        (None, None) => request_authority.to_string(),
    };
    let path = match &r.path {
        Some(p) => p.clone(),
        None => req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into()),
    };
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{authority}{path}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn rewrite_path(rw: &Rewrite, path_and_query: &str) -> String {
    let (path, query) = path_and_query.split_once('?').map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let new_path = if let Some((re, with)) = &rw.regex {
        re.replace_all(path, with.as_str()).into_owned()
    } else if let Some(uri) = &rw.uri {
        match &rw.prefix_match {
            Some(prefix) if path.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix)) => {
                format!("{uri}{}", &path[prefix.len()..])
            }
            _ => uri.clone(),
        }
    } else {
        path.to_string()
    };
    match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    }
}

/// Why an attempt failed, for the retry decision and the response flag.
enum Failure {
    Connect,
    Reset,
    Refused,
    Timeout,
}

/// HTTP CONNECT on a sidecar (TCP through the mesh): a byte stream to an
/// endpoint of the route's cluster. A mesh workload is reached over mTLS
/// and its sidecar's inbound is asked to CONNECT in turn (HBONE's way);
/// the inbound, whose cluster is the app, opens plain TCP to it.
async fn tunnel(
    targets: &WeightedClusters,
    req: &Request<ProxyBody>,
    info: &mut super::observe::Info,
) -> Response<ProxyBody> {
    use super::h1::client::{Through, Upgraded, connect_through, open};
    let cluster = &targets.pick().cluster;
    info.service = Some(cluster.service.clone());
    let Some(index) = cluster.pick(None, None) else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream\n");
    };
    info.workload = Some(cluster.endpoints[index].workload.clone());
    let address = cluster.endpoints[index].address.as_str();
    let stream = match open(address, cluster.tls.as_deref(), &cluster.connections).await {
        Ok(s) => s,
        Err(e) => {
            cluster.record(index, None);
            tracing::debug!(error = %e, address, "tunnel: cannot connect");
            return local(StatusCode::SERVICE_UNAVAILABLE, "UF", "upstream connect error\n");
        }
    };
    let mesh_peer = cluster.tls.as_ref().is_some_and(|t| t.mesh_peer());
    let (stream, pending) = if mesh_peer {
        let authority = req.uri().authority().map_or("", |a| a.as_str());
        match connect_through(stream, authority, cluster.connections.connect_timeout).await {
            Ok(Through::Open(stream, pending)) => (stream, pending),
            Ok(Through::Refused(status)) => return local(status, "UAEX", "the peer refused the tunnel\n"),
            Err(e) => {
                cluster.record(index, None);
                tracing::debug!(error = %e, address, "tunnel: the peer did not open it");
                return local(StatusCode::BAD_GATEWAY, "UF", "upstream tunnel error\n");
            }
        }
    } else {
        (stream, Bytes::new())
    };
    cluster.record(index, Some(200));
    let mut resp = Response::new(ProxyBody::empty());
    resp.extensions_mut().insert(Upgraded::new(stream, pending));
    resp
}

async fn forward(
    l: &Listener,
    peer: SocketAddr,
    route: &Route,
    targets: &WeightedClusters,
    req: &mut Request<ProxyBody>,
    info: &mut super::observe::Info,
) -> Response<ProxyBody> {
    let target = targets.pick();
    let cluster = &target.cluster;
    info.service = Some(cluster.service.clone());
    if cluster.endpoints.is_empty() {
        return local(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream\n");
    }
    let (hash, set_cookie) = match &cluster.lb {
        super::upstream::Lb::Hash(key) => match (hash_of(key, req, peer), key) {
            (Some(h), _) => (Some(h), None),
            (None, super::upstream::HashKey::Cookie { name, generate: Some(attrs) }) => {
                let value = hex_id();
                let cookie =
                    format!("{name}={}; {}", std::str::from_utf8(&value).unwrap_or(""), attrs.to_str().unwrap_or(""));
                (Some(super::upstream::stable_hash(&value)), HeaderValue::from_str(&cookie).ok())
            }
            (None, _) => (None, None),
        },
        _ => (None, None),
    };
    let body = std::mem::take(req.body_mut());
    // HTTP/2 carries the host in :authority; upstreams and X-Forwarded-Host want a Host header.
    if let Some(a) = req.uri().authority()
        && !req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let exchange = cluster.tls.as_ref().is_some_and(|t| t.mesh_peer()).then(|| l.metrics.exchange());
    // WebSocket and other upgrades: after a 101 the HTTP/1 server splices the two connections.
    let mut added = Added::new();
    let (cert, id) = (l.client_cert.as_ref(), info.request_id.take());
    let upgrade = prepare_headers(&mut added, req.headers_mut(), peer, l.scheme, cert, exchange, id);
    info.inject_trace(req.headers_mut(), |name, value| added.push((name, value)));
    if let Some(protocol) = &upgrade {
        req.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(header::UPGRADE, protocol.clone());
    }
    if !route.request_headers.is_empty() || !target.request_headers.is_empty() {
        // The route's header operations see (and may change) the fields added here.
        for (name, value) in added.drain(..) {
            req.headers_mut().append(name, value.to_header());
        }
        route.request_headers.apply(req.headers_mut());
        target.request_headers.apply(req.headers_mut());
    }
    let mut path = req.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    if let Some(rw) = &route.rewrite {
        match rewrite_path(rw, path.as_str()).parse() {
            Ok(p) => path = p,
            Err(_) => return local(StatusCode::BAD_REQUEST, "DPE", "the rewritten path is not a valid URI path\n"),
        }
        if let Some(a) = &rw.authority {
            req.headers_mut().insert(header::HOST, a.clone());
        }
    }

    // Keep small bodies so retries can resend them; stream large ones once.
    // From the body, not the headers: HTTP/2 bodies often carry no Content-Length.
    let length =
        if hyper::body::Body::is_end_stream(&body) { Some(0) } else { hyper::body::Body::size_hint(&body).exact() };
    let mut streamed = None;
    let replay: Option<Bytes> = match length {
        Some(0) => Some(Bytes::new()),
        Some(n) if n <= REPLAYABLE_BODY && (route.retry.attempts > 0 || !route.mirrors.is_empty()) => {
            // A client that announces a body and never sends it is cut off, not waited for.
            let limit = route.timeout.unwrap_or(BODY_READ_TIMEOUT).min(BODY_READ_TIMEOUT);
            match tokio::time::timeout(limit, Box::pin(body.collect())).await {
                Ok(Ok(b)) => Some(b.to_bytes()),
                Ok(Err(_)) => return local(StatusCode::BAD_REQUEST, "DPE", "request body could not be read\n"),
                Err(_) => return local(StatusCode::REQUEST_TIMEOUT, "DPE", "request body not received in time\n"),
            }
        }
        _ => {
            streamed = Some(body);
            None
        }
    };
    // Admitted only now, so a slow request body does not hold a place in the pool.
    let Some(_admitted) = cluster.admit() else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "UO", "upstream overflow: connection pool limit reached\n");
    };
    let max_attempts = if replay.is_some() { 1 + route.retry.attempts } else { 1 };
    if let Some(body) = &replay {
        for (mirror, pct) in &route.mirrors {
            if chance(*pct) {
                send_mirror(l, mirror.clone(), req, &path, &added, body.clone(), hash);
            }
        }
    }

    let attempts = async {
        let mut last: Option<usize> = None;
        let mut attempt = 0;
        // A retry's place under `maxRetries`, held until that retry's outcome is known.
        let mut _retry_budget = None;
        loop {
            attempt += 1;
            let beyond = last.filter(|_| route.retry.remote_localities).map(|i| cluster.endpoints[i].priority);
            let Some(index) = cluster.pick_beyond(last, hash, beyond) else {
                return local(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream\n");
            };
            last = Some(index);
            let endpoint = &cluster.endpoints[index];
            info.workload = Some(endpoint.workload.clone());
            if l.logging().is_some() {
                // The parsed authority: a reference-counted clone, no copy.
                info.upstream = Some(endpoint.authority.clone());
            }
            let body = match (&replay, streamed.take()) {
                (Some(bytes), _) => ProxyBody::full(bytes.clone()),
                (None, Some(streamed)) => streamed,
                (None, None) => ProxyBody::empty(),
            };
            // Every attempt sends the same prepared head; HTTP/1 writes it from here without a copy.
            if attempt > 1 {
                let count = Value::Header(HeaderValue::from(attempt));
                match added.last_mut() {
                    Some((ATTEMPT_COUNT, v)) => *v = count,
                    _ => added.push((ATTEMPT_COUNT, count)),
                }
            }
            let outgoing = Outgoing {
                method: req.method(),
                version: req.version(),
                path: &path,
                headers: req.headers(),
                extra: &added,
            };
            // Counted down on drop, also when a timeout or the client cancels the attempt.
            let active = super::upstream::Active::enter(&endpoint.health);
            let sent = std::pin::pin!(send(&l.clients, cluster, index, &outgoing, body));
            let outcome = match route.retry.per_try_timeout {
                Some(t) => tokio::time::timeout(t, sent).await.unwrap_or(Err(Failure::Timeout)),
                None => sent.await,
            };
            drop(active);
            cluster.record(index, outcome.as_ref().ok().map(|r| r.status().as_u16()));
            let retry_on = &route.retry.on;
            let retriable = match &outcome {
                Ok(resp) => retry_on.response(resp.status(), resp.headers()),
                // As Envoy: 5xx and gateway-error also cover connect failures and resets.
                Err(Failure::Connect) => {
                    retry_on.connect_failure || retry_on.reset || retry_on.five_xx || retry_on.gateway_error
                }
                Err(Failure::Reset) => retry_on.reset || retry_on.five_xx || retry_on.gateway_error,
                Err(Failure::Refused) => retry_on.refused_stream || retry_on.reset,
                Err(Failure::Timeout) => retry_on.five_xx || retry_on.gateway_error || retry_on.reset,
            };
            _retry_budget = None;
            let retry_slot = if retriable && attempt < max_attempts { cluster.admit_retry() } else { None };
            if retry_slot.is_none() {
                return match outcome {
                    Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        if upgrade.is_none() || resp.extensions().get::<super::h1::client::Upgraded>().is_none() {
                            return local(StatusCode::BAD_GATEWAY, "UPE", "upstream switched protocols unasked\n");
                        }
                        resp
                    }
                    Ok(mut resp) => {
                        // (Fields kept raw are never hop-by-hop ones.)
                        strip_hop_by_hop(resp.headers_mut());
                        if !target.response_headers.is_empty() {
                            target.response_headers.apply(headers_mut(&mut resp));
                        }
                        if let Some(cookie) = &set_cookie {
                            headers_mut(&mut resp).append(header::SET_COOKIE, cookie.clone());
                        }
                        if attempt > 1 && retriable {
                            headers_mut(&mut resp).insert(RESPONSE_FLAGS, HeaderValue::from_static("URX"));
                        }
                        resp
                    }
                    Err(Failure::Connect) => local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        if attempt > 1 { "URX,UF" } else { "UF" },
                        "upstream connect error\n",
                    ),
                    Err(Failure::Reset | Failure::Refused) => {
                        local(StatusCode::SERVICE_UNAVAILABLE, "UR", "upstream reset\n")
                    }
                    Err(Failure::Timeout) => local(StatusCode::GATEWAY_TIMEOUT, "UT", "upstream request timeout\n"),
                };
            }
            // Jittered exponential backoff, as Envoy: base 25 ms, at most 250 ms.
            let cap = (25u64 << (attempt - 1).min(4)).min(250);
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..=cap))).await;
            _retry_budget = retry_slot;
        }
    };
    let resp = {
        // Pinned once, so the future exists once in this one's state, with or without the timeout.
        let attempts = std::pin::pin!(attempts);
        match route.timeout {
            Some(t) => match tokio::time::timeout(t, attempts).await {
                Ok(resp) => resp,
                Err(_) => local(StatusCode::GATEWAY_TIMEOUT, "UT", "upstream request timeout\n"),
            },
            None => attempts.await,
        }
    };
    super::h1::scratch::give_map(std::mem::take(req.headers_mut()));
    resp
}

/// A request as prepared for upstreams, shared by every attempt.
struct Outgoing<'a> {
    method: &'a http::Method,
    /// The client's HTTP version (for `useClientProtocol`).
    version: http::Version,
    path: &'a http::uri::PathAndQuery,
    headers: &'a HeaderMap,
    /// Fields this proxy adds, written after `headers`.
    extra: &'a [(&'static str, Value)],
}

/// One attempt to one endpoint of `cluster`: HTTP/1 through the
/// endpoint's keep-alive pool, h2c through hyper's client, h2 over TLS on
/// the endpoint's one multiplexed connection.
async fn send(
    clients: &Clients,
    cluster: &Cluster,
    index: usize,
    out: &Outgoing<'_>,
    body: ProxyBody,
) -> Result<Response<ProxyBody>, Failure> {
    let endpoint = &cluster.endpoints[index];
    let http2 = cluster.http2 || (cluster.use_client_protocol && out.version == http::Version::HTTP_2);
    if !http2 {
        let head = super::h1::client::Head {
            method: out.method,
            path: out.path.as_str(),
            headers: out.headers,
            extra: out.extra,
        };
        let (tls, settings) = (cluster.tls.as_deref(), &cluster.connections);
        let sent = super::h1::client::send(&endpoint.health, &endpoint.address, tls, settings, head, body).await;
        return sent.map_err(|e| match e {
            super::h1::client::Error::Connect(_) => Failure::Connect,
            super::h1::client::Error::Reset(_) => Failure::Reset,
        });
    }
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if cluster.tls.is_some() { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP });
    uri.authority = Some(endpoint.authority.clone());
    uri.path_and_query = Some(out.path.clone());
    let Ok(uri) = Uri::from_parts(uri) else { return Err(Failure::Reset) };
    let mut req = Request::new(body);
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = out.headers.clone();
    for (name, value) in out.extra {
        req.headers_mut().insert(*name, value.to_header());
    }
    if let Some(tls) = cluster.tls.as_deref() {
        let sent = async {
            let mut sender = super::h2::sender(&endpoint.health, &endpoint.address, tls, &cluster.connections)
                .await
                .map_err(|e| {
                    tracing::debug!(error = %e, address = %endpoint.address, "upstream HTTP/2 over TLS: cannot connect");
                    Failure::Connect
                })?;
            sender.ready().await.map_err(|_| Failure::Connect)?;
            sender.send_request(req).await.map_err(|e| h2_failure(&e))
        };
        return Box::pin(sent).await.map(|resp| resp.map(ProxyBody::Hyper));
    }
    // Boxed: HTTP/2's request future is large, and HTTP/1 requests should not carry its size.
    match Box::pin(clients.http2.request(req)).await {
        Ok(resp) => Ok(resp.map(ProxyBody::Hyper)),
        Err(e) if e.is_connect() => Err(Failure::Connect),
        Err(e) => Err(h2_failure(&e)),
    }
}

/// An HTTP/2 REFUSED_STREAM: the upstream did not process it, always safe
/// to retry; anything else a reset.
fn h2_failure(e: &dyn std::fmt::Debug) -> Failure {
    if format!("{e:?}").contains("REFUSED_STREAM") { Failure::Refused } else { Failure::Reset }
}

/// Sends a copy of the request to a mirror cluster and forgets it: the
/// answer is dropped and the main request never waits for it. The copy's
/// Host gets Istio's `-shadow` suffix.
fn send_mirror(
    l: &Listener,
    cluster: std::sync::Arc<Cluster>,
    req: &Request<ProxyBody>,
    path: &http::uri::PathAndQuery,
    added: &Added,
    body: Bytes,
    hash: Option<u64>,
) {
    let Some(index) = cluster.pick(None, hash) else { return };
    let mut headers = req.headers().clone();
    for (name, value) in added {
        headers.append(*name, value.to_header());
    }
    if let Some(host) = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()) {
        let shadow = match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => format!("{h}-shadow:{port}"),
            _ => format!("{host}-shadow"),
        };
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            headers.insert(header::HOST, v);
        }
    }
    let (method, version, path) = (req.method().clone(), req.version(), path.clone());
    // Mirrors are best effort: past this many copies in flight, new ones are dropped.
    static MIRRORS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1024);
    let Ok(slot) = MIRRORS.try_acquire() else {
        tracing::debug!(cluster = %cluster.name, "mirror dropped: too many copies in flight");
        return;
    };
    let clients = l.clients.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let exchange = async {
            let copy = Outgoing { method: &method, version, path: &path, headers: &headers, extra: &[] };
            let resp = send(&clients, &cluster, index, &copy, ProxyBody::full(body))
                .await
                .map_err(|_| "mirror request failed")?;
            resp.into_body().collect().await.map(|_| ()).map_err(|_| "mirror response failed")
        };
        match tokio::time::timeout(Duration::from_secs(30), exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => tracing::debug!(cluster = %cluster.name, why),
            Err(_) => tracing::debug!(cluster = %cluster.name, "mirror request timed out"),
        }
    });
}

/// The consistent-hash key of a request; `None` (no key present) falls
/// back to an ordinary pick, as in Envoy.
fn hash_of<B>(key: &super::upstream::HashKey, req: &Request<B>, peer: SocketAddr) -> Option<u64> {
    use super::upstream::{HashKey, stable_hash};
    match key {
        HashKey::Header(name) => req.headers().get(name).map(|v| stable_hash(v.as_bytes())),
        HashKey::SourceIp => Some(stable_hash(peer.ip().to_string().as_bytes())),
        HashKey::Query(name) => {
            req.uri().query().and_then(|q| super::query_value(q, name)).map(|v| stable_hash(v.as_bytes()))
        }
        HashKey::Cookie { name, .. } => super::cookie_value(req.headers(), name).map(|v| stable_hash(v.as_bytes())),
    }
}

/// 16 random bytes in hex: request ids and generated hash cookies.
pub(crate) fn hex_id() -> [u8; 32] {
    let id: [u8; 16] = crate::telemetry::trace::fast_random();
    let mut text = [0u8; 32];
    crate::telemetry::trace::hex_into(&id, &mut text);
    text
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Which of [`HOP_BY_HOP`] are present (bit `i` for entry `i`), from
/// one pass over the (few) names.
fn hop_by_hop_present(headers: &HeaderMap) -> u8 {
    let mut present = 0u8;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    present
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_present(headers, hop_by_hop_present(headers));
}

/// Removes the hop-by-hop fields `present` says are there (usually none,
/// or only `connection`), and those their `Connection` names.
fn strip_present(headers: &mut HeaderMap, present: u8) {
    if present == 0 {
        return;
    }
    // Fields the Connection header names go too; the usual `keep-alive` and
    // `close` are hop-by-hop already, so naming them costs nothing here.
    if present & 1 != 0 {
        let mut named = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for name in value.as_bytes().split(|b| *b == b',').map(super::h1::trim_ows) {
                let hop_by_hop = HOP_BY_HOP.iter().any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name));
                if name.is_empty() || hop_by_hop || name.eq_ignore_ascii_case(b"close") {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(name) {
                    named.push(n);
                }
            }
        }
        for n in named {
            headers.remove(n);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// A client address as a header value, formatted once per address in a row
/// on this thread (a keep-alive connection's requests, a busy client's
/// connections) and shared after that.
fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(std::net::IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    // An address's text is always a valid value.
    let make = || HeaderValue::from_maybe_shared(Bytes::from(ip.to_string())).unwrap_or(HeaderValue::from_static(""));
    LAST.try_with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((cached, v)) if *cached == ip => v.clone(),
            _ => {
                let v = make();
                *last = Some((ip, v.clone()));
                v
            }
        }
    })
    .unwrap_or_else(|_| make())
}

/// Fields this proxy adds to a request that the client did not send:
/// written after the request's own fields (by the HTTP/1 client, or into
/// the HTTP/2 request's copy of the map) rather than inserted into its
/// header map, which would cost a lookup and an insert each.
type Added = smallvec::SmallVec<[(&'static str, Value); 7]>;

/// What [`prepare_headers`] looks for, besides the hop-by-hop fields; the
/// consts after it are their places (bits of what the request has).
static FORWARDED: [HeaderName; 6] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_REQUEST_ID,
    X_FORWARDED_CLIENT_CERT,
    crate::telemetry::istio::PEER_METADATA,
];
const HAS_FOR: u8 = 1;
const HAS_PROTO: u8 = 1 << 1;
const HAS_HOST: u8 = 1 << 2;
const HAS_REQUEST_ID: u8 = 1 << 3;
const HAS_CLIENT_CERT: u8 = 1 << 4;
const HAS_PEER_METADATA: u8 = 1 << 5;
const ATTEMPT_COUNT: &str = "x-envoy-attempt-count";

/// Readies a request's fields for an upstream, as Envoy does: hop-by-hop
/// fields go (but `te: trailers` stays, for gRPC), `X-Forwarded-For` gets
/// the peer, `X-Forwarded-Proto` the scheme, `X-Forwarded-Host` the host,
/// `X-Request-Id` one when there is none, `X-Forwarded-Client-Cert` only
/// this proxy's, and the metadata exchange only a mesh peer's (`exchange`).
/// The fields the request lacks go to `added` (filled in place: it is a
/// few hundred bytes), to be written after its own; returns the protocol
/// it asks to upgrade to (`Upgrade`, when its `Connection` says `upgrade`).
fn prepare_headers(
    added: &mut Added,
    headers: &mut HeaderMap,
    peer: SocketAddr,
    scheme: &'static str,
    client_cert: Option<&HeaderValue>,
    exchange: Option<HeaderValue>,
    request_id: Option<Bytes>,
) -> Option<HeaderValue> {
    // One pass over the names tells which of the fields handled here are
    // present; only those are looked up again.
    let (mut hop, mut seen) = (0u8, 0u8);
    let (mut host, mut upgrade, mut te) = (None, None, None);
    for (k, v) in headers.iter() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            hop |= 1 << i;
            if k == header::UPGRADE && upgrade.is_none() {
                upgrade = Some(v.clone());
            } else if k == header::TE && te.is_none() {
                te = Some(v.as_bytes().eq_ignore_ascii_case(b"trailers"));
            }
        } else if let Some(i) = FORWARDED.iter().position(|h| h == k) {
            seen |= 1 << i;
        } else if k == header::HOST && host.is_none() {
            host = Some(v.clone());
        }
    }
    let upgrade = upgrade.filter(|_| wants_upgrade(headers));
    let has = |bit: u8| seen & bit != 0;
    // `te: trailers` is hop-by-hop but gRPC needs it end to end, as Envoy keeps it.
    let trailers = te == Some(true);
    strip_present(headers, hop);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if has(HAS_FOR) {
        use http::header::Entry;
        if let Entry::Occupied(mut e) = headers.entry(X_FORWARDED_FOR) {
            let appended = e.get().to_str().ok().map(|prev| format!("{prev}, {}", peer.ip()));
            let value = appended.and_then(|v| HeaderValue::from_maybe_shared(Bytes::from(v)).ok());
            e.insert(value.unwrap_or_else(|| ip_value(peer.ip())));
        }
    } else {
        added.push(("x-forwarded-for", Value::Header(ip_value(peer.ip()))));
    }
    if has(HAS_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    } else {
        added.push(("x-forwarded-proto", Value::Header(HeaderValue::from_static(scheme))));
    }
    if !has(HAS_HOST)
        && let Some(host) = host
    {
        added.push(("x-forwarded-host", Value::Header(host)));
    }
    if !has(HAS_REQUEST_ID) {
        added.push(("x-request-id", Value::Made(request_id.unwrap_or_else(self::request_id))));
    }
    // Client-certificate details come only from the gateway, never from the client (Envoy's SANITIZE).
    if has(HAS_CLIENT_CERT) {
        headers.remove(&X_FORWARDED_CLIENT_CERT);
    }
    if let Some(xfcc) = client_cert {
        added.push(("x-forwarded-client-cert", Value::Header(xfcc.clone())));
    }
    // Mesh peers learn this workload's app and version; nobody else does.
    if has(HAS_PEER_METADATA) {
        headers.remove(&crate::telemetry::istio::PEER_METADATA);
    }
    if let Some(exchange) = exchange {
        added.push(("x-meshgate-peer-metadata", Value::Header(exchange)));
    }
    upgrade
}

/// A fresh `X-Request-Id`: 32 hex digits.
pub(crate) fn request_id() -> Bytes {
    super::h1::scratch::made(&hex_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_comes_off_a_host() {
        for (host, name) in [
            ("api.example.com:8080", "api.example.com"),
            ("api.example.com", "api.example.com"),
            ("api.example.com:", "api.example.com"),
            ("a:b:80", "a:b"),
            ("host:8x", "host:8x"),
            ("[::1]:80", "::1"),
            ("[::1]", "::1"),
            ("8080", "8080"),
            (":80", ""),
            ("", ""),
        ] {
            assert_eq!(strip_port(host), name, "{host}");
        }
    }

    #[test]
    fn paths_are_normalized_like_envoy() {
        assert_eq!(normalize_path("/v1/users"), None);
        assert_eq!(normalize_path("/a/../admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/a/./b").as_deref(), Some("/a/b"));
        assert_eq!(normalize_path("//admin//x").as_deref(), Some("/admin/x"));
        assert_eq!(normalize_path("/%2e%2e/%2E%2E/etc").as_deref(), Some("/etc"));
        assert_eq!(normalize_path("/../../..").as_deref(), Some("/"));
        assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(normalize_path("/a%2Fb"), None, "escaped slashes are kept");
        assert_eq!(normalize_path("/%61dmin/x").as_deref(), Some("/admin/x"));
        assert_eq!(normalize_path("/x\\..\\admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/x/..;/admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/a;v=1/b"), None, "ordinary path parameters are kept");
        assert_eq!(normalize_path("/caf%C3%A9").as_deref(), None, "other escapes stay as sent");
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret ,close"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    /// The request's fields as an upstream gets them: its map, then what was added.
    fn prepared(h: &mut HeaderMap, peer: &str, scheme: &'static str, cert: Option<&HeaderValue>, mesh: bool) {
        let exchange = mesh.then(|| HeaderValue::from_static("meta"));
        let mut added = Added::new();
        prepare_headers(&mut added, h, peer.parse().unwrap(), scheme, cert, exchange, None);
        for (name, value) in added {
            assert!(!h.contains_key(name), "{name} both in the map and added");
            h.append(name, value.to_header());
        }
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let mut h = HeaderMap::new();
        prepared(&mut h, "10.1.2.3:5555", "http", None, false);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.1"));
        prepared(&mut h, "10.1.2.3:5555", "https", None, false);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.1, 10.1.2.3");
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        // The cached value is per address.
        let mut h = HeaderMap::new();
        prepared(&mut h, "10.9.9.9:1", "http", None, false);
        assert_eq!(h[&X_FORWARDED_FOR], "10.9.9.9");
    }

    #[test]
    fn forwarded_fields_are_added_replaced_or_kept_like_envoy() {
        // A client's own values: proto replaced, host and request id kept,
        // client-certificate details and mesh metadata dropped, hop-by-hop gone.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("front.example.com"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc"));
        h.insert(&X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=spiffe://forged"));
        h.insert(crate::telemetry::istio::PEER_METADATA, HeaderValue::from_static("forged"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONNECTION, HeaderValue::from_static("x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        prepared(&mut h, "10.1.2.3:5555", "http", None, false);
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "front.example.com");
        assert_eq!(h[&X_REQUEST_ID], "abc");
        assert_eq!(h[header::TE], "trailers", "te: trailers goes on for gRPC");
        for gone in [X_FORWARDED_CLIENT_CERT.as_str(), "x-meshgate-peer-metadata", "connection", "x-secret"] {
            assert!(!h.contains_key(gone), "{gone} was passed on");
        }
        assert_eq!(h.len(), 6, "{h:?}");

        // An upgrade is reported only when Connection asks for it.
        for (connection, asked) in [("Upgrade", true), ("keep-alive, upgrade", true), ("keep-alive", false)] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            let peer = "10.1.2.3:5555".parse().unwrap();
            let upgrade = prepare_headers(&mut Added::new(), &mut h, peer, "http", None, None, None);
            assert_eq!(upgrade.is_some(), asked, "{connection}");
            assert!(!h.contains_key(header::UPGRADE) && !h.contains_key(header::CONNECTION));
        }

        // None of them sent: each added once; the gateway's own certificate
        // details and a mesh peer's metadata exchange.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        let cert = HeaderValue::from_static("By=spiffe://gateway");
        prepared(&mut h, "10.1.2.3:5555", "https", Some(&cert), true);
        assert_eq!(h[&X_FORWARDED_HOST], "api.example.com");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_CLIENT_CERT], "By=spiffe://gateway");
        assert_eq!(h[crate::telemetry::istio::PEER_METADATA], "meta");
        assert!(!h.contains_key(header::TE), "other TE values are hop-by-hop");
        let id = h[&X_REQUEST_ID].to_str().unwrap().to_owned();
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        // Ids are cut from a shared block: each one its own.
        let ids: std::collections::HashSet<_> = (0..300).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 300);
        assert!(ids.iter().all(|v| v.len() == 32));
        // The id made for the access log and the trace is the one that goes upstream.
        let mut h = HeaderMap::new();
        let made = Bytes::from_static(b"0123456789abcdef0123456789abcdef");
        let mut added = Added::new();
        prepare_headers(&mut added, &mut h, "10.1.2.3:5555".parse().unwrap(), "http", None, None, Some(made));
        let id = added.iter().find(|(n, _)| *n == "x-request-id").map(|(_, v)| v.to_header());
        assert_eq!(id.unwrap(), "0123456789abcdef0123456789abcdef");
    }
}
