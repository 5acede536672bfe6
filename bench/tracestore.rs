//! The built-in trace store's memory (issue 6: 100,000 spans in under
//! 100 MB): 25,000 traces of four spans each, as the gateway and two
//! sidecars record them (the attributes they set, unique ids, URLs and
//! request ids), inserted into a store with room for all of them. Reports
//! the process's resident memory before and after, what the store counts
//! against its budget, and the insert rate.
//!
//! Run: `cargo bench -p meshgate --bench tracestore`

use std::sync::Arc;
use std::time::Instant;

use meshgate::telemetry::trace::{Kind, Span, Value, new_span_id, new_trace_id};
use meshgate::telemetry::tracestore::{Limits, Query, TraceStore};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

fn span(trace: [u8; 16], parent: Option<[u8; 8]>, service: &Arc<str>, kind: Kind, i: u64) -> Span {
    let start = 1_795_000_000_000_000_000 + i * 1_000_000;
    let s = |v: String| Value::Str(v);
    Span {
        trace_id: trace,
        span_id: new_span_id(),
        parent,
        kind,
        name: "user-service.default.svc.cluster.local/*".into(),
        service: service.clone(),
        start_unix_nanos: start,
        end_unix_nanos: start + 2_500_000,
        error: i.is_multiple_of(100),
        attributes: vec![
            ("node_id".into(), s(format!("user-service-{}", i % 8))),
            ("component".into(), s("proxy".into())),
            ("istio.namespace".into(), s("default".into())),
            ("istio.canonical_service".into(), s("user-service".into())),
            ("guid:x-request-id".into(), s(format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15))),
            ("http.method".into(), s("GET".into())),
            ("http.url".into(), s(format!("http://api.example.com/v1/users/{i}?view=full"))),
            ("http.protocol".into(), s("HTTP/1.1".into())),
            ("http.status_code".into(), Value::Int(200)),
            ("response_flags".into(), s("-".into())),
            ("user_agent".into(), s("Mozilla/5.0 (X11; Linux x86_64) curl/8.5.0".into())),
            ("request_size".into(), Value::Int(0)),
            ("response_size".into(), Value::Int(512)),
            ("upstream_cluster".into(), s("user-service.default.svc.cluster.local".into())),
            ("upstream_address".into(), s(format!("10.0.{}.{}:15006", i % 4, i % 250))),
            ("peer.address".into(), s(format!("192.168.{}.{}", i % 200, i % 250))),
            ("peer.principal".into(), s("spiffe://cluster.local/ns/default/sa/orders".into())),
            ("meshgate.route".into(), s("default/users/0".into())),
        ],
        providers: None,
    }
}

fn main() {
    const TRACES: u64 = 25_000;
    let services: Vec<Arc<str>> =
        ["meshgate-gateway.meshgate-system", "user-service.default", "user-service.default", "orders.default"]
            .into_iter()
            .map(Arc::from)
            .collect();
    let kinds = [Kind::Server, Kind::Server, Kind::Client, Kind::Server];
    // Spans made first, so only the store's own memory is measured.
    let mut spans = Vec::with_capacity(TRACES as usize * 4);
    for i in 0..TRACES {
        let trace = new_trace_id();
        let mut parent = None;
        for (svc, kind) in services.iter().zip(kinds) {
            let s = span(trace, parent, svc, kind, i);
            parent = Some(s.span_id);
            spans.push(s);
        }
    }
    let mut store = TraceStore::new(Limits { max_bytes: 1 << 30, slow_nanos: 1_000_000_000 });
    let before = rss_bytes();
    let at = Instant::now();
    for s in &spans {
        store.insert(s);
    }
    let took = at.elapsed();
    let after = rss_bytes();
    let q = Instant::now();
    let found = store.search(&Query {
        service: Some("orders.default".into()),
        error: Some(true),
        limit: 20,
        ..Default::default()
    });
    let search = q.elapsed();
    println!(
        "spans={} traces={} rss_growth_mib={:.1} counted_mib={:.1} bytes_per_span={} inserts_per_s={:.0} search_ms={:.1} (found {})",
        store.spans(),
        store.traces(),
        (after - before) as f64 / (1 << 20) as f64,
        store.bytes() as f64 / (1 << 20) as f64,
        (after - before) / store.spans() as u64,
        store.spans() as f64 / took.as_secs_f64(),
        search.as_secs_f64() * 1000.0,
        found.len()
    );
}
