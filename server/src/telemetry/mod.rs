//! Control-plane metrics in the Prometheus text format; the proxies'
//! request metrics with Istio's names are in [`istio`].

pub mod accesslog;
pub mod export;
pub mod federate;
pub mod istio;
pub mod logs;
pub mod otlp;
pub mod series;
pub mod trace;
pub mod tracestore;

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    registry: Registry,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
    resources: IntGaugeVec,
    pub config_revision: IntGauge,
    pub auth_failures: IntCounter,
    pub startup_seconds: Histogram,
    /// The built-in gateway's request metrics (Istio's names).
    pub gateway: std::sync::Arc<istio::ProxyMetrics>,
    /// The mesh, with istiod's names: configurations sent to agents,
    /// rejected by them, and the time from a revision's apply to each
    /// agent's acknowledgement of it.
    pub pushes: IntCounter,
    pub rejects: IntCounter,
    pub convergence: Histogram,
    pub connected: IntGauge,
    /// Workload certificates issued, and seconds until the CA root expires.
    pub certificates_issued: IntCounter,
    pub root_expiry_seconds: prometheus::Gauge,
    /// The trace store's and exporters' counts.
    pub traces: tracestore::TraceMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let api_requests = IntCounterVec::new(
            Opts::new("meshgate_api_requests_total", "Admin API requests by method, route and status code"),
            &["method", "route", "code"],
        )
        .expect("static metric definition");
        let api_duration = HistogramVec::new(
            HistogramOpts::new("meshgate_api_request_duration_seconds", "Admin API request latency by route")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["route"],
        )
        .expect("static metric definition");
        let resources = IntGaugeVec::new(Opts::new("meshgate_config_resources", "Stored resources by kind"), &["kind"])
            .expect("static metric definition");
        let config_revision = IntGauge::new("meshgate_config_revision", "The latest configuration revision")
            .expect("static metric definition");
        let auth_failures =
            IntCounter::new("meshgate_api_auth_failures_total", "Requests refused for missing or bad credentials")
                .expect("static metric definition");
        let startup_seconds = Histogram::with_opts(
            HistogramOpts::new("meshgate_startup_seconds", "Time from process start to ready")
                .buckets(vec![0.05, 0.1, 0.3, 1.0, 3.0]),
        )
        .expect("static metric definition");
        let pushes =
            IntCounter::new("pilot_xds_pushes", "Configurations sent to agents").expect("static metric definition");
        let rejects = IntCounter::new("pilot_total_xds_rejects", "Configurations agents rejected (NACK)")
            .expect("static metric definition");
        let convergence = Histogram::with_opts(
            HistogramOpts::new(
                "pilot_proxy_convergence_time",
                "Seconds from a revision's apply to an agent's acknowledgement of it",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0]),
        )
        .expect("static metric definition");
        let connected =
            IntGauge::new("pilot_xds", "Agents connected to the control plane").expect("static metric definition");
        let certificates_issued =
            IntCounter::new("citadel_server_success_cert_issuance_count", "Workload certificates issued")
                .expect("static metric definition");
        let root_expiry_seconds =
            prometheus::Gauge::new("citadel_server_root_cert_expiry_seconds", "Seconds until the CA root expires")
                .expect("static metric definition");
        for c in [
            Box::new(pushes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejects.clone()),
            Box::new(convergence.clone()),
            Box::new(connected.clone()),
            Box::new(certificates_issued.clone()),
            Box::new(root_expiry_seconds.clone()),
            Box::new(api_requests.clone()),
            Box::new(api_duration.clone()),
            Box::new(resources.clone()),
            Box::new(config_revision.clone()),
            Box::new(auth_failures.clone()),
            Box::new(startup_seconds.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let traces = tracestore::TraceMetrics::new(&registry);
        let gateway = std::sync::Arc::new(istio::ProxyMetrics::new(istio::Workload {
            name: "meshgate-gateway".into(),
            namespace: crate::ca::identity::CONTROL_NAMESPACE.into(),
            app: "meshgate-gateway".into(),
            ..istio::Workload::unknown()
        }));
        Metrics {
            registry,
            api_requests,
            api_duration,
            resources,
            config_revision,
            auth_failures,
            startup_seconds,
            gateway,
            pushes,
            rejects,
            convergence,
            connected,
            certificates_issued,
            root_expiry_seconds,
            traces,
        }
    }

    pub fn observe_api(&self, method: &str, route: &str, code: u16, elapsed: Duration) {
        self.api_requests.with_label_values(&[method, route, &code.to_string()]).inc();
        self.api_duration.with_label_values(&[route]).observe(elapsed.as_secs_f64());
    }

    pub fn set_resource_counts(&self, counts: &[(String, i64)]) {
        self.resources.reset();
        for (kind, n) in counts {
            self.resources.with_label_values(&[kind]).set(*n);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        let mut text = String::from_utf8(buf).unwrap_or_default();
        text.push_str(&self.gateway.render());
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
