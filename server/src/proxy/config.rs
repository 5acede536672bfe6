//! The compiled configuration the data plane runs: immutable, built by
//! `control::compile` at config time so a request only does lookups and
//! comparisons. Swapped whole; requests in flight keep the one they started on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::{self, HeaderName, HeaderValue};
use regex::Regex;

use super::upstream::Cluster;

/// A map with keys from the configuration (ports, host names, paths)
/// looked up on every request: FxHash, a few instructions for a port where
/// SipHash takes about a hundred. Requests choose only what is looked up,
/// never what is stored, so there is nothing to flood.
pub type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Everything one gateway needs, keyed by the Gateway server port number.
#[derive(Default)]
pub struct Snapshot {
    /// The configuration revision this snapshot was compiled from.
    pub revision: i64,
    pub ports: FastMap<u32, Arc<PortRoutes>>,
    /// TLS certificates by Gateway port, chosen by SNI.
    pub certificates: HashMap<u32, Arc<super::tls::Certificates>>,
    /// Every Gateway server port and how it is served.
    pub listeners: std::collections::BTreeMap<u32, ListenerKind>,
    /// Gateway `bind`: the IP a port (other than 80 and 443) listens on
    /// instead of the `--http` address's.
    pub binds: std::collections::BTreeMap<u32, std::net::IpAddr>,
    /// TCP and TLS-passthrough routes by Gateway port, first match wins.
    pub l4: HashMap<u32, Arc<Vec<L4Route>>>,
    /// AuthorizationPolicies that apply to this proxy, checked before routing.
    pub authz: Option<Arc<super::authz::Authz>>,
    /// RequestAuthentication: JWTs checked before authorization.
    pub authn: Option<Arc<super::authn::Authn>>,
    /// The Telemetry that applies to this proxy (none: Istio's defaults).
    pub telemetry: Option<Arc<TelemetryPolicy>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Http,
    Https,
    /// Plain TCP, routed by the VirtualService's `tcp` routes.
    Tcp,
    /// TLS passed through untouched, routed by SNI (`tls` routes).
    TlsPassthrough,
    /// TLS terminated here (protocol TLS, mode SIMPLE or MUTUAL), then
    /// routed as TCP by the `tcp` routes.
    TlsTerminated,
}

/// A `tcp` or `tls` route on one Gateway port.
pub struct L4Route {
    /// SNI patterns (`tls` routes); empty matches any connection (`tcp` routes).
    pub sni: Vec<String>,
    pub targets: WeightedClusters,
}

impl L4Route {
    pub fn matches_sni(&self, sni: Option<&str>) -> bool {
        self.sni.is_empty()
            || sni.is_some_and(|name| self.sni.iter().any(|p| meshgate_model::hosts::host_matches(p, name)))
    }
}

/// The virtual hosts served on one Gateway port.
#[derive(Default)]
pub struct PortRoutes {
    pub exact: FastMap<String, Arc<VirtualHost>>,
    /// `(suffix, host)`: `*.example.com` is stored as `.example.com`;
    /// longest suffix first, so the most specific wildcard wins.
    pub wildcards: Vec<(String, Arc<VirtualHost>)>,
    pub catch_all: Option<Arc<VirtualHost>>,
}

impl PortRoutes {
    /// Istio's host matching: exact, then the longest wildcard, then `*`.
    pub fn find(&self, host: &str) -> Option<&VirtualHost> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, v)| v.as_ref())
            .or(self.catch_all.as_deref())
    }
}

impl VirtualHost {
    /// The first route, in order, that matches the request.
    pub fn route_for<B>(&self, req: &http::Request<B>, scheme: &str) -> Option<&Route> {
        self.index.find(&self.routes, req.uri().path(), |r| r.matcher.as_ref().is_none_or(|m| m.matches(req, scheme)))
    }
}

#[derive(Default)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
    pub index: super::route_index::RouteIndex,
}

pub struct Route {
    /// `namespace/virtualservice/route-name-or-index`, for logs and metrics
    /// (shared: each request that logs or counts it takes a reference).
    pub name: Arc<str>,
    /// `None` matches every request. Istio's routes with several `match`
    /// entries become one route per entry, as in Envoy.
    pub matcher: Option<RequestMatch>,
    pub action: Arc<Action>,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub fault: Option<Fault>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite: Option<Rewrite>,
    pub cors: Option<Arc<Cors>>,
    /// Where copies go (`mirror`/`mirrors`), with the percentage of requests copied.
    pub mirrors: Vec<(Arc<Cluster>, f64)>,
    /// RateLimitPolicies on this route.
    pub limits: Option<Arc<super::ratelimit::RouteLimits>>,
    /// The ApiKeyAuth on this route.
    pub key_auth: Option<Arc<super::keyauth::KeyAuth>>,
    /// RequestSizeLimit: the largest request body allowed.
    pub max_body: Option<u64>,
    /// GrpcTranscoder: REST+JSON requests become gRPC calls.
    pub transcoder: Option<Arc<super::transcode::Transcoder>>,
    /// A Telemetry that targets this route (else the proxy's applies).
    pub telemetry: Option<Arc<TelemetryPolicy>>,
}

/// Istio's default: 1% of the traces the caller left undecided.
pub const DEFAULT_SAMPLING: f64 = 1.0;

/// What a Telemetry resource sets for a proxy or a route.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryPolicy {
    /// Percent of undecided traces sampled.
    pub sampling: f64,
    /// Record spans (`disableSpanReporting: false`).
    pub report: bool,
    /// `customTags` (literal and environment), added to every span.
    pub tags: Vec<(String, crate::telemetry::trace::Value)>,
    /// `customTags` from request headers: (tag, header, default when absent).
    pub header_tags: Vec<(String, http::HeaderName, Option<String>)>,
    /// `tracing[].providers`: where this workload's spans are exported
    /// (besides the built-in store); `None`: the mesh's default providers.
    pub providers: Option<std::sync::Arc<[String]>>,
    pub log: LogPolicy,
}

impl Default for TelemetryPolicy {
    fn default() -> TelemetryPolicy {
        TelemetryPolicy {
            sampling: DEFAULT_SAMPLING,
            report: true,
            tags: Vec::new(),
            header_tags: Vec::new(),
            providers: None,
            log: LogPolicy::default(),
        }
    }
}

impl TelemetryPolicy {
    /// The header tags' values for a request.
    pub fn header_values(&self, headers: &http::HeaderMap) -> Vec<(String, crate::telemetry::trace::Value)> {
        self.header_tags
            .iter()
            .filter_map(|(tag, name, default)| {
                let v = headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                v.or_else(|| default.clone()).map(|v| (tag.clone(), crate::telemetry::trace::Value::Str(v)))
            })
            .collect()
    }
}

/// Which requests the access log shows.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPolicy {
    pub disabled: bool,
    pub filter: Option<meshgate_model::telemetry::LogFilter>,
    /// Percent of the requests that pass the filter.
    pub sampling: f64,
}

impl Default for LogPolicy {
    fn default() -> LogPolicy {
        LogPolicy { disabled: false, filter: None, sampling: 100.0 }
    }
}

impl LogPolicy {
    pub fn wants(&self, facts: &meshgate_model::telemetry::LogFacts<'_>) -> bool {
        !self.disabled
            && self.filter.as_ref().is_none_or(|f| f.matches(facts))
            && crate::telemetry::trace::sample(self.sampling)
    }
}

/// A route's `corsPolicy`, with its response header values built once.
pub struct Cors {
    pub origins: Vec<StrMatch>,
    /// `*` among the allowed origins: every origin passes.
    pub any_origin: bool,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    /// `unmatchedPreflights: IGNORE` answers such preflights here; FORWARD (the default) sends them on.
    pub ignore_unmatched_preflights: bool,
}

impl Cors {
    pub fn allows(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|m| m.matches(origin))
    }
}

impl Route {
    /// The route Istio gives a server with `tls.httpsRedirect`: 301 to https.
    pub fn https_redirect(name: String) -> Route {
        Route {
            name: name.into(),
            matcher: None,
            action: Arc::new(Action::Redirect(Redirect {
                status: StatusCode::MOVED_PERMANENTLY,
                scheme: Some("https".into()),
                authority: None,
                port: None,
                keep_request_port: None,
                path: None,
            })),
            timeout: None,
            retry: RetryPolicy::default(),
            fault: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            rewrite: None,
            telemetry: None,
            cors: None,
            mirrors: Vec::new(),
            limits: None,
            key_auth: None,
            max_body: None,
            transcoder: None,
        }
    }
}

#[derive(Default)]
pub struct RequestMatch {
    pub uri: Option<StrMatch>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StrMatch>,
    pub method: Option<StrMatch>,
    pub authority: Option<StrMatch>,
    pub headers: Vec<(HeaderName, Option<StrMatch>)>,
    pub without_headers: Vec<(HeaderName, Option<StrMatch>)>,
    pub query: Vec<(String, Option<StrMatch>)>,
    /// Istio's `@request.auth.claims.NAME` header keys: claims of the
    /// request's checked JWT (a request without one matches none).
    pub claims: Vec<(Vec<String>, Option<StrMatch>)>,
    pub without_claims: Vec<(Vec<String>, Option<StrMatch>)>,
}

pub enum StrMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: RE2 semantics as Envoy uses them (the whole value must match).
    Regex(Regex),
    /// A condition that could not be compiled: fails closed, never matches.
    Never,
}

impl RequestMatch {
    /// Whether a request satisfies every condition.
    pub fn matches<B>(&self, req: &http::Request<B>, scheme: &str) -> bool {
        if let Some(u) = &self.uri {
            let path = req.uri().path();
            // Istio applies ignoreUriCase to exact and prefix matches only.
            let fold = self.ignore_uri_case && !matches!(u, StrMatch::Regex(_));
            let ok = if fold { u.matches(&path.to_ascii_lowercase()) } else { u.matches(path) };
            if !ok {
                return false;
            }
        }
        if self.method.as_ref().is_some_and(|x| !x.matches(req.method().as_str())) {
            return false;
        }
        if self.scheme.as_ref().is_some_and(|x| !x.matches(scheme)) {
            return false;
        }
        if let Some(a) = &self.authority {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.as_str())
                .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
                .unwrap_or("");
            if !a.matches(authority) {
                return false;
            }
        }
        let header_ok = |name: &HeaderName, want: &Option<StrMatch>| match req.headers().get(name) {
            None => false,
            Some(v) => want.as_ref().is_none_or(|w| v.to_str().is_ok_and(|v| w.matches(v))),
        };
        if !self.claims.is_empty() || !self.without_claims.is_empty() {
            let identity = req.extensions().get::<Arc<super::authn::Identity>>();
            let claim_ok = |path: &Vec<String>, want: &Option<StrMatch>| {
                identity.is_some_and(|id| {
                    let values = id.claim(path);
                    !values.is_empty() && want.as_ref().is_none_or(|w| values.iter().any(|v| w.matches(v)))
                })
            };
            if !self.claims.iter().all(|(p, w)| claim_ok(p, w))
                || self.without_claims.iter().any(|(p, w)| claim_ok(p, w))
            {
                return false;
            }
        }
        if !self.headers.iter().all(|(n, w)| header_ok(n, w)) {
            return false;
        }
        if self.without_headers.iter().any(|(n, w)| header_ok(n, w)) {
            return false;
        }
        if !self.query.is_empty() {
            let query = req.uri().query().unwrap_or("");
            let value = |key: &str| super::query_value(query, key);
            if !self.query.iter().all(|(k, w)| value(k).is_some_and(|v| w.as_ref().is_none_or(|w| w.matches(v)))) {
                return false;
            }
        }
        true
    }

    /// Whether the URI (case-sensitive) is the only condition.
    pub fn is_uri_only(&self) -> bool {
        !self.ignore_uri_case
            && self.scheme.is_none()
            && self.method.is_none()
            && self.authority.is_none()
            && self.headers.is_empty()
            && self.without_headers.is_empty()
            && self.query.is_empty()
            && self.claims.is_empty()
            && self.without_claims.is_empty()
    }
}

impl StrMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(e) => value == e,
            StrMatch::Prefix(p) => value.starts_with(p.as_str()),
            StrMatch::Regex(r) => r.is_match(value),
            StrMatch::Never => false,
        }
    }
}

pub enum Action {
    Forward(WeightedClusters),
    Redirect(Redirect),
    Direct { status: StatusCode, body: bytes::Bytes },
}

pub struct WeightedClusters {
    pub total: u32,
    /// Cumulative weight bounds, so a pick is one random number and a scan.
    pub targets: Vec<Target>,
}

pub struct Target {
    pub upper: u32,
    pub cluster: Arc<Cluster>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

impl WeightedClusters {
    pub fn pick(&self) -> &Target {
        if self.targets.len() == 1 || self.total == 0 {
            return &self.targets[0];
        }
        let r = rand::random_range(0..self.total);
        self.targets.iter().find(|t| r < t.upper).unwrap_or(&self.targets[self.targets.len() - 1])
    }
}

pub struct Redirect {
    pub status: StatusCode,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    /// `derivePort`: Some(true) keeps the request's port, Some(false) drops it
    /// (the scheme's default).
    pub keep_request_port: Option<bool>,
    pub path: Option<String>,
}

pub struct Rewrite {
    pub prefix_match: Option<String>,
    pub uri: Option<String>,
    pub regex: Option<(Regex, String)>,
    pub authority: Option<HeaderValue>,
}

#[derive(Default, Clone)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[derive(Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    /// `retryRemoteLocalities`: a retry goes to the next locality level
    /// rather than to another endpoint of the one that failed.
    pub remote_localities: bool,
}

#[derive(Clone, Default)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub reset: bool,
    pub refused_stream: bool,
    pub retriable_4xx: bool,
    pub status_codes: Vec<u16>,
    /// gRPC status codes, read from a `grpc-status` response header.
    pub grpc_codes: Vec<u32>,
}

impl RetryOn {
    pub fn parse(spec: &str) -> RetryOn {
        let mut on = RetryOn::default();
        for part in spec.split(',').map(str::trim) {
            match part {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "connect-failure" => on.connect_failure = true,
                "reset" | "reset-before-request" => on.reset = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "cancelled" => on.grpc_codes.push(1),
                "deadline-exceeded" => on.grpc_codes.push(4),
                "resource-exhausted" => on.grpc_codes.push(8),
                "internal" => on.grpc_codes.push(13),
                "unavailable" => on.grpc_codes.push(14),
                code => {
                    if let Ok(c) = code.parse::<u16>() {
                        on.status_codes.push(c);
                    }
                }
            }
        }
        on
    }

    /// Whether a response with these status and headers should be retried.
    pub fn response(&self, status: StatusCode, headers: &http::HeaderMap) -> bool {
        let code = status.as_u16();
        let grpc = || headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok());
        (self.five_xx && status.is_server_error())
            || (self.gateway_error && matches!(code, 502..=504))
            || (self.retriable_4xx && code == 409)
            || self.status_codes.contains(&code)
            || (!self.grpc_codes.is_empty() && grpc().is_some_and(|g| self.grpc_codes.contains(&g)))
    }
}

impl Default for RetryPolicy {
    /// Istio's default when a route sets no `retries`: 2 retries on
    /// connect failures, refused streams, gRPC unavailable/cancelled and
    /// HTTP 503 (its one retriable status code).
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn::parse("connect-failure,refused-stream,unavailable,cancelled,503"),
            remote_localities: false,
        }
    }
}

#[derive(Clone)]
pub struct Fault {
    pub delay: Option<(f64, Duration)>,
    pub abort: Option<(f64, StatusCode)>,
}
