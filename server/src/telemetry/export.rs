//! Span export to tracing backends, from the appliance (agents send their
//! spans to it, so collectors need to be reachable from one place only).
//!
//! Each provider has its own bounded queue and task: spans are batched (up
//! to 512, or what came within a second) and sent with a deadline; a slow
//! or absent collector fills its queue and spans are dropped and counted,
//! requests never wait. OTLP goes through the OpenTelemetry SDK's
//! exporter (`opentelemetry-otlp`, gRPC or HTTP/protobuf), one exporter per
//! service so each batch carries its `service.name` resource. Zipkin is
//! written here as Zipkin's v2 JSON: the SDK's Zipkin exporter (0.33) puts
//! no service name in `localEndpoint`, which leaves Zipkin's UI without
//! services.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::trace::{Kind, Span, Value};
use super::tracestore::TraceMetrics;

const QUEUE: usize = 8192;
const BATCH: usize = 512;
const LINGER: Duration = Duration::from_secs(1);
/// Services with their own exporter, at most (the rest share the last one's name).
const MAX_SERVICES: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub enum Protocol {
    OtlpGrpc,
    OtlpHttp,
    Zipkin,
}

/// A tracing backend, from the mesh config's `extensionProviders` or
/// `defaultConfig.tracing.zipkin.address`.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub name: String,
    pub protocol: Protocol,
    /// Full URL: `http://host:4317`, `http://host:4318/v1/traces`, `http://host:9411/api/v2/spans`.
    pub endpoint: String,
    pub headers: HashMap<String, String>,
    pub timeout: Duration,
    /// One of `meshConfig.defaultProviders.tracing`: it gets the spans of
    /// workloads whose Telemetry names no providers.
    pub default: bool,
}

/// A provider's queue.
pub struct Queue {
    name: String,
    default: bool,
    tx: tokio::sync::mpsc::Sender<Arc<Span>>,
}

impl Queue {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `span` goes to this provider: the one its workload's
    /// Telemetry named, or a default one when it named none.
    pub fn wants(&self, span: &Span) -> bool {
        match &span.providers {
            None => self.default,
            Some(chosen) => chosen.contains(&self.name),
        }
    }

    /// Queues the spans this provider wants (see [`Queue::wants`]).
    pub fn offer(&self, spans: &[Arc<Span>], metrics: &TraceMetrics) {
        for s in spans.iter().filter(|s| self.wants(s)) {
            if self.tx.try_send(s.clone()).is_err() {
                metrics.dropped.with_label_values(&["queue_full", &self.name]).inc();
            }
        }
    }
}

/// Starts a provider's export task (on the current runtime).
pub fn start(provider: Provider, metrics: TraceMetrics) -> Queue {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let (name, default) = (provider.name.clone(), provider.default);
    tokio::spawn(run(provider, rx, metrics));
    Queue { name, default, tx }
}

async fn run(provider: Provider, mut rx: tokio::sync::mpsc::Receiver<Arc<Span>>, metrics: TraceMetrics) {
    let mut exporters: HashMap<Arc<str>, opentelemetry_otlp::SpanExporter> = HashMap::new();
    let client = zipkin_client();
    while let Some(batch) = super::trace::next_batch(&mut rx, BATCH, LINGER).await {
        let n = batch.len() as u64;
        let sent = match provider.protocol {
            Protocol::Zipkin => tokio::time::timeout(provider.timeout, send_zipkin(&client, &provider, &batch))
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r),
            Protocol::OtlpGrpc | Protocol::OtlpHttp => send_otlp(&provider, &mut exporters, batch).await,
        };
        match sent {
            Ok(()) => metrics.exported.with_label_values(&[&provider.name]).inc_by(n),
            Err(e) => {
                tracing::debug!(provider = %provider.name, error = %e, spans = n, "span export failed");
                metrics.dropped.with_label_values(&["export_failed", &provider.name]).inc_by(n);
            }
        }
    }
}

async fn send_otlp(
    provider: &Provider,
    exporters: &mut HashMap<Arc<str>, opentelemetry_otlp::SpanExporter>,
    batch: Vec<Arc<Span>>,
) -> Result<(), String> {
    use opentelemetry_sdk::trace::SpanExporter as _;
    let mut by_service: HashMap<Arc<str>, Vec<opentelemetry_sdk::trace::SpanData>> = HashMap::new();
    for s in &batch {
        by_service.entry(s.service.clone()).or_default().push(span_data(s));
    }
    let mut failure = None;
    for (service, spans) in by_service {
        if !exporters.contains_key(&service) {
            if exporters.len() >= MAX_SERVICES {
                exporters.clear();
            }
            let mut e = otlp_exporter(provider)?;
            e.set_resource(
                &opentelemetry_sdk::Resource::builder_empty().with_service_name(service.to_string()).build(),
            );
            exporters.insert(service.clone(), e);
        }
        let Some(e) = exporters.get(&service) else { continue };
        match tokio::time::timeout(provider.timeout, e.export(spans)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failure = Some(err.to_string()),
            Err(_) => failure = Some("timed out".into()),
        }
    }
    failure.map_or(Ok(()), Err)
}

fn otlp_exporter(p: &Provider) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
    let built = match p.protocol {
        Protocol::OtlpGrpc => {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &p.headers {
                if let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k.as_str()), http::HeaderValue::from_str(v)) {
                    headers.insert(k, v);
                }
            }
            let metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(p.endpoint.clone())
                .with_timeout(p.timeout)
                .with_metadata(metadata)
                .build()
        }
        _ => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(p.endpoint.clone())
            .with_timeout(p.timeout)
            .with_headers(p.headers.clone())
            .build(),
    };
    built.map_err(|e| format!("provider {}: {e}", p.name))
}

/// A span in the SDK's form.
pub fn span_data(s: &Span) -> opentelemetry_sdk::trace::SpanData {
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
    use opentelemetry::{InstrumentationScope, KeyValue};
    let at = |nanos: u64| UNIX_EPOCH + Duration::from_nanos(nanos);
    opentelemetry_sdk::trace::SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(s.trace_id),
            SpanId::from_bytes(s.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: s.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: s.parent.is_some(),
        span_kind: match s.kind {
            Kind::Internal => SpanKind::Internal,
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
            Kind::Producer => SpanKind::Producer,
            Kind::Consumer => SpanKind::Consumer,
        },
        name: s.name.clone().into(),
        start_time: at(s.start_unix_nanos),
        end_time: at(s.end_unix_nanos),
        attributes: s
            .attributes
            .iter()
            .map(|(k, v)| {
                let v: opentelemetry::Value = match v {
                    Value::Str(x) => x.clone().into(),
                    Value::Int(n) => (*n).into(),
                    Value::Float(x) => (*x).into(),
                    Value::Bool(b) => (*b).into(),
                };
                KeyValue::new(k.clone(), v)
            })
            .collect(),
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: if s.error { Status::error("") } else { Status::Unset },
        instrumentation_scope: InstrumentationScope::builder("meshgate")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}

type ZipkinClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn zipkin_client() -> ZipkinClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

/// Zipkin v2 JSON (`POST /api/v2/spans`).
pub fn zipkin_json(batch: &[Arc<Span>]) -> serde_json::Value {
    let spans: Vec<serde_json::Value> = batch
        .iter()
        .map(|s| {
            let mut tags: serde_json::Map<String, serde_json::Value> =
                s.attributes.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string()))).collect();
            if s.error {
                tags.insert("error".into(), "true".into());
            } else {
                tags.remove("error");
            }
            let mut span = serde_json::json!({
                "traceId": super::trace::hex32(&s.trace_id),
                "id": super::trace::hex16(&s.span_id),
                "name": s.name,
                "timestamp": s.start_unix_nanos / 1000,
                "duration": (s.duration_nanos() / 1000).max(1),
                "localEndpoint": {"serviceName": &*s.service},
                "tags": tags,
            });
            if let Some(p) = s.parent {
                span["parentId"] = super::trace::hex16(&p).into();
            }
            match s.kind {
                Kind::Server | Kind::Client | Kind::Producer | Kind::Consumer => {
                    span["kind"] = s.kind.name().into();
                }
                Kind::Internal => {}
            }
            span
        })
        .collect();
    serde_json::Value::Array(spans)
}

async fn send_zipkin(client: &ZipkinClient, p: &Provider, batch: &[Arc<Span>]) -> Result<(), String> {
    let body = serde_json::to_vec(&zipkin_json(batch)).map_err(|e| e.to_string())?;
    let mut req = http::Request::post(&p.endpoint)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    for (k, v) in &p.headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k.as_str()), http::HeaderValue::from_str(v)) {
            req.headers_mut().insert(k, v);
        }
    }
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("collector answered {}", resp.status())) }
}
