//! Istio's standard request metrics on every proxy (the gateway and each
//! agent): `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes` and `istio_response_bytes`, with Istio's labels
//! and buckets, so Istio's Grafana dashboards and Kiali queries work.
//!
//! Label values come from configuration (services, workload labels,
//! certificates) and from bounded sets (status codes, response flags), never
//! from paths or user input. A request finds its series by a small key of
//! precomputed ids (one hash and one short lock per request); the label
//! strings are only written out when a series is first seen.

use std::collections::HashMap;
use std::hash::{Hash, Hasher as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Istio's `istio_request_duration_milliseconds` buckets.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];
const EDGE_DURATION: &str = "meshgate_gateway_route_duration_milliseconds";

/// Istio's request/response size buckets (powers of ten up to 100 MB).
const BYTES_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0, 100000000.0];

const LABELS: [&str; 19] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// More distinct series than this (a misconfiguration, not traffic) are
/// not made; their requests count in `meshgate_metric_series_dropped_total`.
const MAX_SERIES: usize = 20_000;
const SHARDS: usize = 16;
const UNKNOWN: &str = "unknown";

/// One side of a call as Istio's labels name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    /// `spiffe://TD/ns/NS/sa/SA`, or `unknown`.
    pub principal: String,
    pub app: String,
    pub version: String,
}

impl Workload {
    pub fn unknown() -> Workload {
        Workload {
            name: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
        }
    }

    /// A workload known only by its certificate (`TD/ns/NS/sa/SA`, with or
    /// without `spiffe://`): the service account names it.
    pub fn from_principal(principal: &str) -> Workload {
        let bare = principal.strip_prefix("spiffe://").unwrap_or(principal);
        let parts: Vec<&str> = bare.split('/').collect();
        match parts.as_slice() {
            [_, "ns", ns, "sa", sa] => Workload {
                name: sa.to_string(),
                namespace: ns.to_string(),
                principal: format!("spiffe://{bare}"),
                app: UNKNOWN.into(),
                version: UNKNOWN.into(),
            },
            _ => Workload::unknown(),
        }
    }

    /// A service endpoint's workload from its labels (`app`, `version`,
    /// `service.istio.io/workload-name`), in `namespace`.
    pub fn from_labels(labels: &std::collections::BTreeMap<String, String>, namespace: &str) -> Workload {
        let get = |k: &str| labels.get(k).cloned();
        let app = get("app").or_else(|| get("app.kubernetes.io/name"));
        Workload {
            name: get("service.istio.io/workload-name").or_else(|| app.clone()).unwrap_or_else(|| UNKNOWN.into()),
            namespace: namespace.to_string(),
            principal: UNKNOWN.into(),
            app: app.unwrap_or_else(|| UNKNOWN.into()),
            version: get("version").or_else(|| get("app.kubernetes.io/version")).unwrap_or_else(|| UNKNOWN.into()),
        }
    }
}

/// The called service: `destination_service` (its FQDN), name and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl Service {
    /// `host` as the mesh names it (`user-service.default.svc.cluster.local`
    /// or an external name), declared in `namespace`.
    pub fn new(host: &str, namespace: &str) -> Service {
        Service {
            host: host.to_string(),
            name: host.split('.').next().unwrap_or(host).to_string(),
            namespace: namespace.to_string(),
        }
    }
}

/// Label values with a stable id made from them, so a request's series is
/// found without hashing the strings again.
#[derive(Debug)]
pub struct Labelled<T> {
    pub id: u64,
    pub value: T,
}

impl<T: Hash> Labelled<T> {
    pub fn new(value: T) -> Arc<Labelled<T>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut h);
        Arc::new(Labelled { id: h.finish(), value })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The caller's proxy (the gateway, a sidecar's outbound port).
    Source,
    /// The called service's proxy (a sidecar's inbound port).
    Destination,
}

/// One finished request, as the proxy saw it.
pub struct Call<'a> {
    pub reporter: Reporter,
    /// The other side: the endpoint called (source reporter) or the caller
    /// (destination reporter); `None` when there was none (no route).
    pub peer: Option<&'a Labelled<Workload>>,
    pub service: Option<&'a Labelled<Service>>,
    pub grpc: bool,
    pub code: u16,
    pub grpc_status: Option<u16>,
    pub flags: &'a str,
    /// Destination reporter: the caller came over mTLS.
    pub mtls: bool,
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

#[derive(PartialEq, Eq, Hash, Clone, Copy)]
struct Key {
    reporter: Reporter,
    peer: u64,
    service: u64,
    code: u16,
    grpc_status: u16,
    flags: u64,
    grpc: bool,
    mtls: bool,
}

struct Series {
    requests: IntCounter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// A proxy's request metrics, in its own registry.
pub struct ProxyMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
    dropped: IntCounter,
    /// Spans this proxy could not hand on (its queue was full, or the control plane did not take them).
    pub spans_dropped: IntCounter,
    /// The gateway's extras (route and consumer names come from config).
    edge_requests: IntCounterVec,
    edge_limited: IntCounterVec,
    edge_denied: IntCounterVec,
    edge_duration: HistogramVec,
    /// Who this proxy is, in one swap: a request loads it once, and the
    /// workload, its service and its metadata change together.
    own: arc_swap::ArcSwap<Own>,
    series: Vec<Mutex<HashMap<Key, Arc<Series>>>>,
    count: std::sync::atomic::AtomicUsize,
    /// Tells this registry's series from another's in the per-thread caches.
    id: u64,
}

/// This proxy's own workload and (a sidecar's) service.
struct Own {
    workload: Arc<Labelled<Workload>>,
    service: Option<Arc<Labelled<Service>>>,
    /// `x-meshgate-peer-metadata` for requests to mesh peers: this workload's app and version.
    exchange: http::HeaderValue,
}

impl Own {
    fn new(own: Workload, service: Option<Service>) -> Arc<Own> {
        let exchange = exchange_value(&own);
        Arc::new(Own { workload: Labelled::new(own), service: service.map(Labelled::new), exchange })
    }
}

impl ProxyMetrics {
    pub fn new(own: Workload) -> ProxyMetrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(Opts::new("istio_requests_total", "Requests handled by the proxy"), &LABELS)
            .expect("static");
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), &LABELS).expect("static")
        };
        let duration =
            histogram("istio_request_duration_milliseconds", "Request duration in milliseconds", &DURATION_BUCKETS_MS);
        let request_bytes = histogram("istio_request_bytes", "Request body sizes", &BYTES_BUCKETS);
        let response_bytes = histogram("istio_response_bytes", "Response body sizes", &BYTES_BUCKETS);
        let dropped = IntCounter::new(
            "meshgate_metric_series_dropped_total",
            "Requests not counted because the series limit was reached",
        )
        .expect("static");
        let spans_dropped = IntCounter::new(
            "meshgate_proxy_spans_dropped_total",
            "Spans not delivered to the trace store (queue full or control plane unreachable)",
        )
        .expect("static");
        let edge_requests = IntCounterVec::new(
            Opts::new("meshgate_gateway_route_requests_total", "Gateway requests by route, consumer and status"),
            &["route", "consumer", "response_code"],
        )
        .expect("static");
        let edge_limited = IntCounterVec::new(
            Opts::new("meshgate_gateway_rate_limited_total", "Gateway requests refused by a RateLimitPolicy (429)"),
            &["route", "consumer"],
        )
        .expect("static");
        let edge_denied = IntCounterVec::new(
            Opts::new("meshgate_gateway_auth_denied_total", "Gateway requests refused by JWT, API key or RBAC checks"),
            &["reason", "route"],
        )
        .expect("static");
        let edge_duration = HistogramVec::new(
            HistogramOpts::new(EDGE_DURATION, "Gateway request duration by route and status, in milliseconds")
                .buckets(DURATION_BUCKETS_MS.to_vec()),
            &["route", "response_code"],
        )
        .expect("static");
        for c in [
            Box::new(edge_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(edge_duration.clone()),
            Box::new(edge_limited.clone()),
            Box::new(edge_denied.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(request_bytes.clone()),
            Box::new(response_bytes.clone()),
            Box::new(dropped.clone()),
            Box::new(spans_dropped.clone()),
        ] {
            registry.register(c).expect("unique names");
        }
        ProxyMetrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            dropped,
            spans_dropped,
            edge_requests,
            edge_limited,
            edge_denied,
            edge_duration,
            own: arc_swap::ArcSwap::new(Own::new(own, None)),
            series: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            count: Default::default(),
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        }
    }

    /// Who this proxy is (an agent learns its principal when it joins).
    pub fn set_own(&self, own: Workload, service: Option<Service>) {
        self.own.store(Own::new(own, service));
    }

    /// What this proxy tells mesh peers about itself (Istio's metadata
    /// exchange): the peer's metrics then name this workload's app and version.
    pub fn exchange(&self) -> http::HeaderValue {
        self.own.load().exchange.clone()
    }

    /// The gateway's per-route counts (route `-`: none matched).
    pub fn record_edge(&self, route: &str, consumer: &str, code: u16, limited: bool, denied: Option<&str>) {
        EDGE_REQUESTS.with_borrow_mut(|last| {
            let same = |(r, c, s): &(String, String, u16)| *s == code && r == route && c == consumer;
            let series = last.get(self.id, same, || {
                let mut text = itoa::Buffer::new();
                let series = self.edge_requests.with_label_values(&[route, consumer, text.format(code)]);
                Some(((route.to_owned(), consumer.to_owned(), code), series))
            });
            series.inspect(|s| s.inc());
        });
        if limited {
            self.edge_limited.with_label_values(&[route, consumer]).inc();
        }
        if let Some(reason) = denied {
            self.edge_denied.with_label_values(&[reason, route]).inc();
        }
    }

    /// A gateway request's duration per route (for the built-in time series).
    pub fn record_route_duration(&self, route: &str, code: u16, duration: Duration) {
        EDGE_DURATION_SERIES.with_borrow_mut(|last| {
            let series = last.get(
                self.id,
                |(r, s): &(String, u16)| *s == code && r == route,
                || {
                    let mut text = itoa::Buffer::new();
                    Some(((route.to_owned(), code), self.edge_duration.with_label_values(&[route, text.format(code)])))
                },
            );
            series.inspect(|s| s.observe(duration.as_secs_f64() * 1000.0));
        });
    }

    /// What this proxy served since the last call, per (reporter, caller,
    /// service, version) and per gateway route, read from its histograms;
    /// `last` keeps the totals between calls.
    pub fn summary(&self, last: &mut HashMap<Vec<String>, (u64, Vec<u64>)>) -> Vec<super::series::Delta> {
        use prometheus::core::Collector as _;
        let mut out: HashMap<[String; 5], super::series::Delta> = HashMap::new();
        for family in self.duration.collect().iter().chain(self.edge_duration.collect().iter()) {
            let routes = family.name() == EDGE_DURATION;
            for m in family.get_metric() {
                let labels = m.get_label();
                let get = |name: &str| labels.iter().find(|l| l.name() == name).map_or("", |l| l.value());
                let h = m.get_histogram();
                let count = h.get_sample_count();
                let cumulative: Vec<u64> = h.get_bucket().iter().map(|b| b.cumulative_count()).collect();
                let mut key: Vec<String> = vec![family.name().to_string()];
                key.extend(labels.iter().map(|l| l.value().to_string()));
                let (prev_count, prev) = last.insert(key, (count, cumulative.clone())).unwrap_or((0, Vec::new()));
                let n = count.saturating_sub(prev_count);
                if n == 0 {
                    continue;
                }
                let mut buckets = vec![0u64; DURATION_BUCKETS_MS.len() + 1];
                let mut below = 0;
                for (i, c) in cumulative.iter().enumerate().take(DURATION_BUCKETS_MS.len()) {
                    let now = c.saturating_sub(prev.get(i).copied().unwrap_or(0));
                    buckets[i] = now.saturating_sub(below);
                    below = now;
                }
                buckets[DURATION_BUCKETS_MS.len()] = n.saturating_sub(below);
                let code: u16 = get("response_code").parse().unwrap_or(0);
                let grpc = get("grpc_response_status");
                let error = code >= 500 || code == 0 || !matches!(grpc, "" | "-" | "0");
                let k = if routes {
                    ["route".to_string(), String::new(), String::new(), String::new(), get("route").to_string()]
                } else {
                    [
                        get("reporter").to_string(),
                        format!("{}/{}", get("source_workload_namespace"), get("source_workload")),
                        get("destination_service").to_string(),
                        get("destination_version").to_string(),
                        String::new(),
                    ]
                };
                let d = out.entry(k.clone()).or_insert_with(|| super::series::Delta {
                    reporter: k[0].clone(),
                    source: k[1].clone(),
                    service: k[2].clone(),
                    version: k[3].clone(),
                    route: k[4].clone(),
                    requests: 0,
                    errors: 0,
                    buckets: vec![0; DURATION_BUCKETS_MS.len() + 1],
                });
                d.requests += n;
                if error {
                    d.errors += n;
                }
                for (a, b) in d.buckets.iter_mut().zip(&buckets) {
                    *a += b;
                }
            }
        }
        out.into_values().collect()
    }

    pub fn record(&self, call: &Call<'_>) {
        let own = self.own.load();
        let service = match call.reporter {
            Reporter::Destination => own.service.as_deref().or(call.service),
            Reporter::Source => call.service,
        };
        let key = Key {
            reporter: call.reporter,
            peer: call.peer.map_or(0, |p| p.id) ^ own.workload.id.rotate_left(1),
            service: service.map_or(0, |s| s.id),
            code: call.code,
            grpc_status: call.grpc_status.unwrap_or(u16::MAX),
            flags: crate::proxy::upstream::stable_hash(call.flags.as_bytes()),
            grpc: call.grpc,
            mtls: call.mtls,
        };
        LAST_SERIES.with_borrow_mut(|last| {
            // Under load most requests repeat the last one's key: no hash, no lock.
            let found = last.get(
                self.id,
                |k| *k == key,
                || Some((key, self.find_series(key, call, &own.workload.value, service)?)),
            );
            let Some(series) = found else {
                return self.dropped.inc();
            };
            series.requests.inc();
            series.duration.observe(call.duration.as_secs_f64() * 1000.0);
            series.request_bytes.observe(call.request_bytes as f64);
            series.response_bytes.observe(call.response_bytes as f64);
        });
    }

    fn find_series(
        &self,
        key: Key,
        call: &Call<'_>,
        own: &Workload,
        service: Option<&Labelled<Service>>,
    ) -> Option<Arc<Series>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.series[h.finish() as usize % SHARDS];
        let found = shard.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        match found {
            Some(s) => Some(s),
            None => {
                let s = self.make_series(call, own, service)?;
                Some(shard.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(s).clone())
            }
        }
    }

    fn make_series(&self, call: &Call<'_>, own: &Workload, service: Option<&Labelled<Service>>) -> Option<Arc<Series>> {
        use std::sync::atomic::Ordering;
        if self.count.fetch_add(1, Ordering::Relaxed) >= MAX_SERIES {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let unknown = Workload::unknown();
        let peer = call.peer.map_or(&unknown, |p| &p.value);
        let (source, destination, reporter, security) = match call.reporter {
            Reporter::Source => (own, peer, "source", UNKNOWN),
            Reporter::Destination => (peer, own, "destination", if call.mtls { "mutual_tls" } else { "none" }),
        };
        let (svc_host, svc_name, svc_ns) =
            service.map_or((UNKNOWN, UNKNOWN, UNKNOWN), |s| (&s.value.host, &s.value.name, &s.value.namespace));
        let code = call.code.to_string();
        let grpc_status = call.grpc_status.map_or_else(|| "-".to_string(), |s| s.to_string());
        let values: [&str; 19] = [
            reporter,
            &source.name,
            &source.namespace,
            &source.principal,
            &source.app,
            &source.version,
            &destination.name,
            &destination.namespace,
            &destination.principal,
            &destination.app,
            &destination.version,
            svc_host,
            svc_name,
            svc_ns,
            if call.grpc { "grpc" } else { "http" },
            &code,
            &grpc_status,
            if call.flags.is_empty() { "-" } else { call.flags },
            security,
        ];
        Some(Arc::new(Series {
            requests: self.requests.with_label_values(&values),
            duration: self.duration.with_label_values(&values),
            request_bytes: self.request_bytes.with_label_values(&values),
            response_bytes: self.response_bytes.with_label_values(&values),
        }))
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut buf) {
            tracing::error!(error = %e, "encoding proxy metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The header carrying a caller's app and version to its mesh peer.
pub const PEER_METADATA: http::HeaderName = http::HeaderName::from_static("x-meshgate-peer-metadata");

fn exchange_value(own: &Workload) -> http::HeaderValue {
    let clean = |s: &str| s.chars().filter(|c| c.is_ascii_graphic() && *c != ';' && *c != '=').collect::<String>();
    http::HeaderValue::from_str(&format!("app={};version={}", clean(&own.app), clean(&own.version)))
        .unwrap_or(http::HeaderValue::from_static("app=unknown;version=unknown"))
}

/// The caller as its certificate names it, with the app and version its
/// proxy sent in [`PEER_METADATA`].
pub fn caller_with_metadata(by_certificate: &Workload, metadata: &[u8]) -> Workload {
    let mut w = by_certificate.clone();
    for pair in std::str::from_utf8(metadata).unwrap_or("").split(';') {
        match pair.split_once('=') {
            Some(("app", v)) if !v.is_empty() => w.app = v.to_string(),
            Some(("version", v)) if !v.is_empty() => w.version = v.to_string(),
            _ => {}
        }
    }
    w
}

thread_local! {
    /// The series the gateway's last request on this thread counted in:
    /// under load nearly every request repeats its route and status, and
    /// finding a series by its label values hashes them and takes a lock.
    static EDGE_REQUESTS: std::cell::RefCell<LastSeries<(String, String, u16), IntCounter>> = const { std::cell::RefCell::new(LastSeries::new()) };
    static EDGE_DURATION_SERIES: std::cell::RefCell<LastSeries<(String, u16), Histogram>> = const { std::cell::RefCell::new(LastSeries::new()) };
    /// The Istio series of this thread's last request.
    static LAST_SERIES: std::cell::RefCell<LastSeries<Key, Arc<Series>>> = const { std::cell::RefCell::new(LastSeries::new()) };
}

/// One remembered series, by the registry it belongs to (tests run
/// several) and its key (route, consumer, status; or Istio's ids). Series
/// are never removed from their vectors, so a remembered one stays counted.
struct LastSeries<K, M> {
    hit: Option<(u64, K, M)>,
}

impl<K, M> LastSeries<K, M> {
    const fn new() -> Self {
        LastSeries { hit: None }
    }

    /// The remembered series if `same` says its key is this one's, else the
    /// one `find` gives (remembered in its place); `None` when there is none.
    fn get(&mut self, owner: u64, same: impl FnOnce(&K) -> bool, find: impl FnOnce() -> Option<(K, M)>) -> Option<&M> {
        let hit = matches!(&self.hit, Some((o, k, _)) if *o == owner && same(k));
        if !hit {
            self.hit = find().map(|(k, m)| (owner, k, m));
        }
        self.hit.as_ref().map(|(_, _, m)| m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_and_labels_name_workloads() {
        let w = Workload::from_principal("cluster.local/ns/shop/sa/orders");
        assert_eq!((w.name.as_str(), w.namespace.as_str()), ("orders", "shop"));
        assert_eq!(w.principal, "spiffe://cluster.local/ns/shop/sa/orders");
        assert_eq!(Workload::from_principal("partner").name, "unknown");
        let labels = [("app".to_string(), "users".to_string()), ("version".to_string(), "v2".to_string())].into();
        let w = Workload::from_labels(&labels, "default");
        assert_eq!((w.name.as_str(), w.app.as_str(), w.version.as_str()), ("users", "users", "v2"));
    }

    #[test]
    fn requests_count_per_series_with_istio_labels() {
        let m = ProxyMetrics::new(Workload { name: "meshgate-gateway".into(), ..Workload::unknown() });
        let v1 = Labelled::new(Workload {
            app: "users".into(),
            version: "v1".into(),
            ..Workload::from_labels(&Default::default(), "default")
        });
        let svc = Labelled::new(Service::new("users.default.svc.cluster.local", "default"));
        fn call<'a>(code: u16, peer: Option<&'a Labelled<Workload>>, svc: &'a Labelled<Service>) -> Call<'a> {
            Call {
                reporter: Reporter::Source,
                peer,
                service: Some(svc),
                grpc: false,
                code,
                grpc_status: None,
                flags: if code == 503 { "UH" } else { "" },
                mtls: false,
                duration: Duration::from_millis(3),
                request_bytes: 0,
                response_bytes: 12,
            }
        }
        for _ in 0..3 {
            m.record(&call(200, Some(&v1), &svc));
        }
        m.record(&call(503, None, &svc));
        let text = m.render();
        let line = |needle: &[&str]| {
            text.lines()
                .find(|l| l.starts_with("istio_requests_total{") && needle.iter().all(|n| l.contains(n)))
                .unwrap_or_else(|| panic!("no series with {needle:?} in\n{text}"))
                .to_string()
        };
        assert!(line(&["response_code=\"200\"", "destination_version=\"v1\""]).ends_with(" 3"));
        let unhealthy = line(&["response_code=\"503\"", "response_flags=\"UH\""]);
        assert!(unhealthy.contains("destination_workload=\"unknown\"") && unhealthy.ends_with(" 1"), "{unhealthy}");
        assert!(text.contains("istio_request_duration_milliseconds_bucket{"), "{text}");
        assert!(
            line(&["reporter=\"source\"", "source_workload=\"meshgate-gateway\""])
                .contains("destination_service_name=\"users\"")
        );
    }
}
