//! Traces: one trace id through the gateway and two sidecars with parent
//! links, W3C and B3 both ways, the built-in store (search, waterfall,
//! OTLP in), sampling by Telemetry (errors always kept), export to real
//! OTLP (HTTP and gRPC) and Zipkin collectors, and a dead collector that
//! costs requests nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use serde_json::Value;

use crate::mesh::{USER_SERVICE, field, sidecar_for, wait_synced};
use crate::support::Server;
use crate::upstream::Upstream;

const WAIT: Duration = Duration::from_secs(30);

const TRACE_HEADERS: [&str; 7] =
    ["traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-request-id"];

/// An app that calls `host` through its sidecar's outbound port (set once
/// the sidecar is up), forwarding the trace headers as Istio asks apps to.
struct Relay {
    addr: SocketAddr,
    outbound: Arc<Mutex<Option<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Relay {
    fn start(host: &'static str) -> Relay {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let outbound: Arc<Mutex<Option<String>>> = Arc::default();
        let out = outbound.clone();
        runtime.spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (client, out) = (client.clone(), out.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (client, out) = (client.clone(), out.clone());
                        async move {
                            let to = out.lock().unwrap().clone().expect("the relay's outbound is set");
                            let mut call = client.get(format!("http://{to}{}", req.uri().path())).header("host", host);
                            for h in TRACE_HEADERS {
                                if let Some(v) = req.headers().get(h) {
                                    call = call.header(h, v.as_bytes());
                                }
                            }
                            let (status, body) = match call.send().await {
                                Ok(r) => (r.status().as_u16(), r.bytes().await.unwrap_or_default()),
                                Err(e) => (599, Bytes::from(e.to_string())),
                            };
                            let mut resp = http::Response::new(Full::new(body));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Relay { addr, outbound, _runtime: runtime }
    }
}

pub const MESH: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [api.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  gateways: [gw]
  http:
  - route: [{destination: {host: user-service}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: user-service}
spec:
  host: user-service
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: orders}
spec:
  hosts: [orders]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: orders}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 100}]
"#;

fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let r = server.http().get(server.url(path)).bearer_auth(server.token()).send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

/// The trace once it has `spans` spans.
fn wait_trace(server: &Server, trace: &str, spans: usize) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, t) = get_json(server, &format!("/api/v1/traces/{trace}"));
        if status == 200 && t["spans"].as_array().unwrap().len() >= spans {
            return t;
        }
        assert!(Instant::now() < deadline, "trace {trace} did not reach {spans} spans: {t}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find<'a>(t: &'a Value, service: &str, kind: &str) -> &'a Value {
    t["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == service && s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span of {service} in {t:#}"))
}

#[test]
fn one_trace_follows_a_request_through_the_gateway_and_two_sidecars() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    server.apply(&format!("{MESH}---\n{USER_SERVICE}"));
    // orders: an app behind its sidecar.
    let orders = Upstream::start("orders");
    let (_orders, _) =
        sidecar_for(&server, &tmp.path().join("orders"), "orders", &format!("127.0.0.1:{}", orders.port()), &[]);
    // user-service: an app that calls orders through its own sidecar.
    let relay = Relay::start("orders");
    let (_users, ready) = sidecar_for(&server, &tmp.path().join("users"), "user-service", &relay.addr.to_string(), &[]);
    *relay.outbound.lock().unwrap() = Some(field(&ready, "outbound=").to_string());
    wait_synced(&server, 2);
    let c = server.http();

    // B3 (single header) in: the apps get W3C and B3, in the same trace.
    let trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let r = server
        .gateway(&c, "api.example.com", "/v1/orders")
        .header("b3", format!("{trace}-e457b5a2e4d86bd1-1"))
        .header("x-request-id", "req-1")
        .send()
        .unwrap();
    assert_eq!((r.status().as_u16(), r.text().unwrap()), (200, "orders".to_string()));
    let seen = orders.last().headers;
    let traceparent = seen["traceparent"].to_str().unwrap().to_string();
    assert!(traceparent.starts_with(&format!("00-{trace}-")) && traceparent.ends_with("-01"), "{traceparent}");
    assert_eq!(seen["x-b3-traceid"], trace);
    assert_eq!(seen["x-b3-sampled"], "1");
    assert!(!seen.contains_key("b3"));

    // Four spans, each the child of the one before.
    let t = wait_trace(&server, trace, 4);
    assert_eq!(t["spans"].as_array().unwrap().len(), 4, "{t:#}");
    let gateway = find(&t, "meshgate-gateway.meshgate-system", "SERVER");
    let users_in = find(&t, "user-service.default", "SERVER");
    let users_out = find(&t, "user-service.default", "CLIENT");
    let orders_in = find(&t, "orders.default", "SERVER");
    assert_eq!(gateway["parentSpanId"], "e457b5a2e4d86bd1", "the caller's span");
    assert_eq!(users_in["parentSpanId"], gateway["spanId"]);
    assert_eq!(users_out["parentSpanId"], users_in["spanId"]);
    assert_eq!(orders_in["parentSpanId"], users_out["spanId"]);
    // The app sees the inbound span as its parent.
    assert_eq!(traceparent.split('-').nth(2).unwrap(), orders_in["spanId"].as_str().unwrap());
    for s in [gateway, users_in, users_out, orders_in] {
        assert_eq!(s["attributes"]["guid:x-request-id"], "req-1", "{s}");
        assert_eq!(s["attributes"]["http.status_code"], 200, "{s}");
        assert_eq!(s["error"], false);
    }
    assert_eq!(gateway["attributes"]["upstream_cluster"], "user-service.default.svc.cluster.local");
    assert_eq!(users_out["attributes"]["upstream_cluster"], "orders.default.svc.cluster.local");
    assert_eq!(orders_in["attributes"]["peer.principal"], "spiffe://cluster.local/ns/default/sa/user-service");
    assert_eq!(
        users_in["attributes"]["peer.principal"],
        "spiffe://cluster.local/ns/meshgate-system/sa/meshgate-gateway"
    );
    assert_eq!(t["rootService"], "meshgate-gateway.meshgate-system");

    // W3C in: B3 out, same trace.
    let trace2 = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = server
        .gateway(&c, "api.example.com", "/v1/orders")
        .header("traceparent", format!("00-{trace2}-00f067aa0ba902b7-01"))
        .header("tracestate", "vendor=opaque")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = orders.last().headers;
    assert_eq!(seen["x-b3-traceid"], trace2);
    assert_eq!(seen["tracestate"], "vendor=opaque");
    wait_trace(&server, trace2, 4);

    // An app's own span, by OTLP/HTTP to the appliance (no token, as to a collector).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let own = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
                    key: "service.name".into(),
                    value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                        value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            "orders-app".into(),
                        )),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                spans: vec![opentelemetry_proto::tonic::trace::v1::Span {
                    trace_id: hex::decode(trace2).unwrap(),
                    span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
                    parent_span_id: hex::decode(
                        find(&wait_trace(&server, trace2, 4), "orders.default", "SERVER")["spanId"].as_str().unwrap(),
                    )
                    .unwrap(),
                    name: "SELECT orders".into(),
                    kind: 3,
                    start_time_unix_nano: now,
                    end_time_unix_nano: now + 1_000_000,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    // Sent gzip-compressed, as an OpenTelemetry collector sends by default.
    let gzipped = {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&own.encode_to_vec()).unwrap();
        gz.finish().unwrap()
    };
    let post = |encoding: &str, body: Vec<u8>| {
        c.post(server.url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", encoding)
            .body(body)
            .send()
            .unwrap()
    };
    let r = post("br", gzipped.clone());
    assert_eq!(r.status(), 415);
    let said = r.text().unwrap();
    assert!(said.contains("Content-Encoding") && said.contains("br"), "{said}");
    let r = post("gzip", own.encode_to_vec());
    assert_eq!(r.status(), 400, "an uncompressed body labelled gzip");
    assert!(r.text().unwrap().contains("not gzip"));
    let r = post("gzip", gzipped);
    assert_eq!(r.status(), 200);
    let t = wait_trace(&server, trace2, 5);
    assert_eq!(find(&t, "orders-app", "CLIENT")["name"], "SELECT orders");
    let r =
        c.post(server.url("/v1/traces")).header("content-type", "application/x-protobuf").body("junk").send().unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("ExportTraceServiceRequest"));

    // Search: by service, by status, by duration.
    let (_, found) = get_json(&server, "/api/v1/traces?service=orders-app");
    let ids: Vec<&str> = found["traces"].as_array().unwrap().iter().map(|t| t["traceId"].as_str().unwrap()).collect();
    assert_eq!(ids, [trace2]);
    let (_, found) = get_json(&server, "/api/v1/traces?service=orders.default&lookback=1h");
    assert_eq!(found["traces"].as_array().unwrap().len(), 2, "{found}");
    let (_, found) = get_json(&server, "/api/v1/traces?status=error");
    assert_eq!(found["traces"].as_array().unwrap().len(), 0, "{found}");
    let (status, err) = get_json(&server, "/api/v1/traces?minDuration=soon");
    assert_eq!(status, 400);
    assert!(err["error"]["message"].as_str().unwrap().contains("minDuration"), "{err}");
    let (status, _) = get_json(&server, "/api/v1/traces/00000000000000000000000000000001");
    assert_eq!(status, 404);
}

const EDGE: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [api.example.com]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: users}
spec:
  hosts: [users]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: PORT}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  gateways: [gw]
  http:
  - name: traced
    match: [{uri: {prefix: /traced}}]
    route: [{destination: {host: users}}]
  - name: broken
    match: [{uri: {prefix: /broken}}]
    directResponse: {status: 503, body: {string: down}}
  - name: rest
    route: [{destination: {host: users}}]
"#;

fn traces_of(server: &Server, query: &str) -> Vec<Value> {
    get_json(server, &format!("/api/v1/traces?limit=1000&{query}")).1["traces"].as_array().unwrap().clone()
}

#[test]
fn sampling_follows_telemetry_keeps_errors_and_filters_the_access_log() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("access.log");
    let server = Server::start_with(&["--access-log", log.to_str().unwrap()]);
    let app = Upstream::start("users");
    server.apply(&EDGE.replace("PORT", &app.port().to_string()));
    // Nothing sampled mesh-wide; one route always; the access log shows only failures.
    server.apply(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  tracing: [{randomSamplingPercentage: 0}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: traced}\nspec:\n  targetRefs: [{kind: VirtualService, name: api, sectionName: traced}]\n  tracing: [{randomSamplingPercentage: 100, customTags: {team: {literal: {value: payments}}, user: {header: {name: x-user, defaultValue: anonymous}}}}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: errors-only, namespace: istio-system}\nspec:\n  accessLogging: [{filter: {expression: 'response.code >= 500'}}]\n",
    );
    let c = server.http();
    for path in ["/plain", "/plain", "/traced/a", "/broken"] {
        server.gateway(&c, "api.example.com", path).header("x-user", "alice").send().unwrap();
    }
    // The untraced route's requests still carry a trace id upstream, marked unsampled.
    let plain = app.state.seen.lock().unwrap().front().cloned().unwrap();
    assert!(plain.headers["traceparent"].to_str().unwrap().ends_with("-00"));
    assert!(!plain.headers.contains_key("x-b3-traceid"), "a trace started here goes on in W3C form");
    // A caller's decision to sample wins over 0%.
    let decided = "0af7651916cd43dd8448eb211c80319c";
    server
        .gateway(&c, "api.example.com", "/plain")
        .header("traceparent", format!("00-{decided}-b7ad6b7169203331-01"))
        .send()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let traces = loop {
        let t = traces_of(&server, "");
        if t.len() >= 3 || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ops: Vec<(String, bool)> = traces
        .iter()
        .map(|t| (t["rootOperation"].as_str().unwrap().to_string(), t["error"].as_bool().unwrap()))
        .collect();
    assert_eq!(traces.len(), 3, "{ops:?}");
    assert_eq!(ops.iter().filter(|(op, e)| op.starts_with("users") && !e).count(), 2, "{ops:?}");
    assert!(ops.contains(&("api.example.com/*".to_string(), true)), "the 503 is kept unsampled: {ops:?}");
    assert!(traces.iter().any(|t| t["traceId"] == decided));
    let traced = traces.iter().find(|t| t["traceId"] != decided && t["error"] == false).unwrap();
    let t = get_json(&server, &format!("/api/v1/traces/{}", traced["traceId"].as_str().unwrap())).1;
    assert_eq!(t["spans"][0]["attributes"]["team"], "payments");
    assert_eq!(t["spans"][0]["attributes"]["user"], "alice", "a custom tag from a request header");
    assert_eq!(t["spans"][0]["attributes"]["meshgate.route"], "default/api/traced");

    // The access log: only the 503, with its trace id.
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(&log).unwrap_or_default().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The writer flushes every 100 ms; one more round makes sure nothing else comes.
    std::thread::sleep(Duration::from_millis(300));
    let lines: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["response_code"], 503);
    let error_trace = traces.iter().find(|t| t["error"] == true).unwrap();
    assert_eq!(lines[0]["trace_id"], error_trace["traceId"]);

    // A bad filter is refused with the field and what is understood.
    let out = server.cli_with_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: bad}\nspec:\n  accessLogging: [{filter: {expression: 'response.size > 1'}}]\n"),
    );
    assert!(!out.status.success());
    let msg = crate::support::text(&out.stderr);
    assert!(msg.contains("spec.accessLogging[0].filter.expression") && msg.contains("response.code"), "{msg}");
}

/// What a test collector received.
#[derive(Default)]
struct Received {
    /// (service, trace id hex) per span.
    spans: Mutex<Vec<(String, String)>>,
}

impl Received {
    fn count(&self, service: &str) -> usize {
        self.spans.lock().unwrap().iter().filter(|(s, _)| s == service).count()
    }
}

fn record_otlp(r: &Received, req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest) {
    for rs in req.resource_spans {
        let service = rs
            .resource
            .and_then(|r| r.attributes.into_iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value)
            .and_then(|v| match v.value {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                r.spans.lock().unwrap().push((service.clone(), hex::encode(&s.trace_id)));
            }
        }
    }
}

/// An HTTP collector: OTLP/protobuf on /v1/traces, Zipkin JSON on /api/v2/spans.
fn http_collector(runtime: &tokio::runtime::Runtime, received: Arc<Received>) -> SocketAddr {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let received = received.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let received = received.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if path == "/v1/traces" {
                            let decoded =
                                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                                    body,
                                )
                                .expect("OTLP/protobuf");
                            record_otlp(&received, decoded);
                        } else {
                            let spans: Vec<Value> = serde_json::from_slice(&body).expect("Zipkin JSON");
                            for s in spans {
                                let service = s["localEndpoint"]["serviceName"].as_str().unwrap().to_string();
                                received
                                    .spans
                                    .lock()
                                    .unwrap()
                                    .push((service, s["traceId"].as_str().unwrap().to_string()));
                            }
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

struct GrpcCollector(Arc<Received>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        record_otlp(&self.0, request.into_inner());
        Ok(tonic::Response::new(Default::default()))
    }
}

#[test]
fn spans_are_exported_to_otlp_and_zipkin_collectors_and_a_dead_one_costs_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (otlp_http, zipkin, grpc) =
        (Arc::<Received>::default(), Arc::<Received>::default(), Arc::<Received>::default());
    let http_addr = http_collector(&runtime, otlp_http.clone());
    // A provider outside the defaults: only workloads whose Telemetry names it use it.
    let chosen = Arc::<Received>::default();
    let chosen_addr = http_collector(&runtime, chosen.clone());
    let zipkin_addr = http_collector(&runtime, zipkin.clone());
    let grpc_listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let grpc_addr = grpc_listener.local_addr().unwrap();
    let svc = opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
        GrpcCollector(grpc.clone()),
    );
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc_listener)),
    );
    // A collector that accepts connections and never answers.
    let dead = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let dead_addr = dead.local_addr().unwrap();
    runtime.spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = dead.accept().await {
            held.push(s);
        }
    });

    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("meshgate.yaml");
    std::fs::write(
        &config,
        format!(
            "meshConfig:\n  extensionProviders:\n  - name: otel-http\n    opentelemetry: {{service: 127.0.0.1, port: {}, http: {{path: /v1/traces, timeout: 2s}}}}\n  - name: otel-grpc\n    opentelemetry: {{service: 127.0.0.1, port: {}}}\n  - name: dead\n    opentelemetry: {{service: 127.0.0.1, port: {}, http: {{timeout: 1s}}}}\n  - name: chosen\n    opentelemetry: {{service: 127.0.0.1, port: {}, http: {{}}}}\n  defaultProviders: {{tracing: [otel-http, otel-grpc, dead]}}\n  defaultConfig:\n    tracing: {{zipkin: {{address: '127.0.0.1:{}'}}}}\n",
            http_addr.port(),
            grpc_addr.port(),
            dead_addr.port(),
            chosen_addr.port(),
            zipkin_addr.port()
        ),
    )
    .unwrap();
    let server = Server::start_with(&["--config", config.to_str().unwrap()]);
    let app = Upstream::start("users");
    server.apply(&EDGE.replace("PORT", &app.port().to_string()));
    server.apply("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  tracing: [{randomSamplingPercentage: 100}]\n");
    let c = server.http();
    let mut slowest = Duration::ZERO;
    for _ in 0..40 {
        let at = Instant::now();
        assert_eq!(server.gateway(&c, "api.example.com", "/traced").send().unwrap().status(), 200);
        slowest = slowest.max(at.elapsed());
    }
    // The dead collector holds each export for a second; no request waits for it.
    assert!(slowest < Duration::from_millis(900), "a request took {slowest:?}");
    let service = "meshgate-gateway.meshgate-system";
    let deadline = Instant::now() + WAIT;
    while [&otlp_http, &grpc, &zipkin].iter().any(|r| r.count(service) < 40) {
        assert!(
            Instant::now() < deadline,
            "collectors got http={} grpc={} zipkin={}",
            otlp_http.count(service),
            grpc.count(service),
            zipkin.count(service)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same traces everywhere, and in the built-in store.
    let stored: std::collections::BTreeSet<String> =
        traces_of(&server, "").iter().map(|t| t["traceId"].as_str().unwrap().to_string()).collect();
    for r in [&otlp_http, &grpc, &zipkin] {
        let got: std::collections::BTreeSet<String> = r.spans.lock().unwrap().iter().map(|(_, t)| t.clone()).collect();
        assert_eq!(got, stored);
    }
    // Waits until /metrics counts spans dropped for `provider` (with `reason`).
    let dropped = |provider: &str, reason: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            let metrics = c.get(server.url("/metrics")).send().unwrap().text().unwrap();
            if metrics.lines().any(|l| {
                l.starts_with("meshgate_trace_spans_dropped_total{")
                    && l.contains(&format!("provider=\"{provider}\""))
                    && l.contains(reason)
                    && !l.ends_with(" 0")
            }) {
                return;
            }
            assert!(Instant::now() < deadline, "no drops counted for {provider}:\n{metrics}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // The dead one's failures are counted.
    dropped("dead", "");
    assert_eq!(chosen.count(service), 0, "a provider outside the defaults gets nothing unasked");

    // A Telemetry for the gateway naming `chosen`: its spans go there (and
    // to the built-in store), no longer to the defaults.
    let gateway_providers = |name: &str| {
        server.apply(&format!("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: gateway, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  tracing: [{{providers: [{{name: {name}}}]}}]\n"));
    };
    gateway_providers("chosen");
    for _ in 0..10 {
        assert_eq!(server.gateway(&c, "api.example.com", "/chosen").send().unwrap().status(), 200);
    }
    let deadline = Instant::now() + WAIT;
    while chosen.count(service) < 10 {
        assert!(Instant::now() < deadline, "the chosen provider got {}", chosen.count(service));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The defaults export in batches as quickly: a second later they still have only the first 40.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!((otlp_http.count(service), grpc.count(service), zipkin.count(service)), (40, 40, 40));
    assert_eq!(traces_of(&server, "").len(), 50, "the built-in store keeps every trace");

    // A provider the mesh config does not have: its spans are counted as dropped, not lost silently.
    gateway_providers("nowhere");
    assert_eq!(server.gateway(&c, "api.example.com", "/nowhere").send().unwrap().status(), 200);
    dropped("nowhere", "reason=\"unknown_provider\"");
    drop(server);
    drop(runtime);
}
