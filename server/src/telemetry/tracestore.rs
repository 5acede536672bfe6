//! The built-in trace store: recent traces in memory within a byte budget,
//! searchable for the console and the REST API. Spans come from the
//! gateway (directly), from agents and apps (OTLP on `/v1/traces`).
//!
//! Spans are kept compact: service and operation names are shared, the
//! attributes of a span are one byte string (key number, type, value).
//! When the budget is spent the oldest traces go first; traces with an
//! error or a slow span are kept apart and go only when they hold more
//! than half the budget, so they outlive ordinary ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Value as Json, json};

use super::trace::{Kind, Span, SpanId, TraceId, Value, hex16, hex32};

/// Budget and what counts as slow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub slow_nanos: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_bytes: 96 << 20, slow_nanos: 1_000_000_000 }
    }
}

/// What a stored span costs besides its attribute bytes (its fields, the
/// trace's vector slot, allocator rounding).
const SPAN_OVERHEAD: usize = 112;
/// A trace's own cost (map entry, queue slot).
const TRACE_OVERHEAD: usize = 128;
/// Spans waiting for the store's thread, at most.
const INTAKE: usize = 8192;
/// How long spans gather in the intake queue between the thread's looks.
const INTAKE_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
/// Shared strings kept before unused ones are let go.
const MAX_STRINGS: usize = 50_000;

struct StoredSpan {
    span_id: SpanId,
    parent: Option<SpanId>,
    kind: Kind,
    error: bool,
    start: u64,
    duration: u64,
    service: Arc<str>,
    name: Arc<str>,
    attrs: Box<[u8]>,
}

struct Trace {
    spans: Vec<StoredSpan>,
    bytes: usize,
    start: u64,
    end: u64,
    error: bool,
    kept: bool,
}

pub struct TraceStore {
    limits: Limits,
    traces: HashMap<TraceId, Trace>,
    normal: VecDeque<TraceId>,
    kept: VecDeque<TraceId>,
    normal_bytes: usize,
    kept_bytes: usize,
    spans: usize,
    strings: HashSet<Arc<str>>,
    keys: Vec<Arc<str>>,
    key_ids: HashMap<Arc<str>, u16>,
}

/// A search (every field optional).
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub service: Option<String>,
    pub operation: Option<String>,
    /// `Some(true)`: only traces with an error; `Some(false)`: only without.
    pub error: Option<bool>,
    pub min_duration_nanos: Option<u64>,
    pub start_nanos: Option<u64>,
    pub end_nanos: Option<u64>,
    pub trace_id: Option<TraceId>,
    pub limit: usize,
}

impl TraceStore {
    pub fn new(limits: Limits) -> TraceStore {
        TraceStore {
            limits,
            traces: HashMap::new(),
            normal: VecDeque::new(),
            kept: VecDeque::new(),
            normal_bytes: 0,
            kept_bytes: 0,
            spans: 0,
            strings: HashSet::new(),
            keys: Vec::new(),
            key_ids: HashMap::new(),
        }
    }

    pub fn spans(&self) -> usize {
        self.spans
    }

    pub fn traces(&self) -> usize {
        self.traces.len()
    }

    pub fn bytes(&self) -> usize {
        self.normal_bytes + self.kept_bytes
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        if self.strings.len() >= MAX_STRINGS {
            self.strings.retain(|a| Arc::strong_count(a) > 1);
            if self.strings.len() >= MAX_STRINGS {
                return Arc::from(s);
            }
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(a.clone());
        a
    }

    fn key_id(&mut self, k: &str) -> Option<u16> {
        if let Some(id) = self.key_ids.get(k) {
            return Some(*id);
        }
        let id = u16::try_from(self.keys.len()).ok().filter(|id| *id < u16::MAX)?;
        let k: Arc<str> = Arc::from(k);
        self.keys.push(k.clone());
        self.key_ids.insert(k, id);
        Some(id)
    }

    fn encode(&mut self, attrs: &[(String, Value)]) -> Box<[u8]> {
        let mut out = Vec::with_capacity(attrs.iter().map(|(_, v)| 4 + value_len(v)).sum());
        for (k, v) in attrs {
            match self.key_id(k) {
                Some(id) => out.extend_from_slice(&id.to_le_bytes()),
                None => {
                    out.extend_from_slice(&u16::MAX.to_le_bytes());
                    put_str(&mut out, k);
                }
            }
            match v {
                Value::Str(s) => {
                    out.push(0);
                    put_str(&mut out, s);
                }
                Value::Int(n) => {
                    out.push(1);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                Value::Float(x) => {
                    out.push(2);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::Bool(b) => {
                    out.push(3);
                    out.push(u8::from(*b));
                }
            }
        }
        out.into_boxed_slice()
    }

    fn decode(&self, mut b: &[u8]) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while b.len() >= 3 {
            let id = u16::from_le_bytes([b[0], b[1]]);
            b = &b[2..];
            let key = if id == u16::MAX {
                let Some(s) = take_str(&mut b) else { break };
                s
            } else {
                self.keys.get(usize::from(id)).map(|k| k.to_string()).unwrap_or_default()
            };
            let Some((&tag, rest)) = b.split_first() else { break };
            b = rest;
            let v = match tag {
                0 => match take_str(&mut b) {
                    Some(s) => Value::Str(s),
                    None => break,
                },
                1 | 2 if b.len() >= 8 => {
                    let raw: [u8; 8] = b[..8].try_into().unwrap_or_default();
                    b = &b[8..];
                    if tag == 1 { Value::Int(i64::from_le_bytes(raw)) } else { Value::Float(f64::from_le_bytes(raw)) }
                }
                3 if !b.is_empty() => {
                    let v = Value::Bool(b[0] != 0);
                    b = &b[1..];
                    v
                }
                _ => break,
            };
            out.push((key, v));
        }
        out
    }

    pub fn insert(&mut self, span: &Span) {
        let service = self.intern(&span.service);
        let name = self.intern(&span.name);
        let attrs = self.encode(&span.attributes);
        let bytes = SPAN_OVERHEAD + attrs.len();
        let duration = span.duration_nanos();
        let stored = StoredSpan {
            span_id: span.span_id,
            parent: span.parent,
            kind: span.kind,
            error: span.error,
            start: span.start_unix_nanos,
            duration,
            service,
            name,
            attrs,
        };
        let wants_keeping = span.error || duration >= self.limits.slow_nanos;
        let trace = match self.traces.get_mut(&span.trace_id) {
            Some(t) => t,
            None => {
                self.normal.push_back(span.trace_id);
                self.normal_bytes += TRACE_OVERHEAD;
                self.traces.entry(span.trace_id).or_insert(Trace {
                    spans: Vec::with_capacity(4),
                    bytes: TRACE_OVERHEAD,
                    start: span.start_unix_nanos,
                    end: span.end_unix_nanos,
                    error: false,
                    kept: false,
                })
            }
        };
        trace.start = trace.start.min(span.start_unix_nanos);
        trace.end = trace.end.max(span.end_unix_nanos);
        trace.error |= span.error;
        trace.bytes += bytes;
        trace.spans.push(stored);
        self.spans += 1;
        if trace.kept {
            self.kept_bytes += bytes;
        } else if wants_keeping {
            // Moves to the kept queue; its place in the normal one is skipped when reached.
            trace.kept = true;
            self.normal_bytes -= trace.bytes - bytes;
            self.kept_bytes += trace.bytes;
            self.kept.push_back(span.trace_id);
        } else {
            self.normal_bytes += bytes;
        }
        self.evict();
    }

    fn evict(&mut self) {
        while self.normal_bytes + self.kept_bytes > self.limits.max_bytes {
            let from_kept = self.normal_bytes == 0 || self.kept_bytes > self.limits.max_bytes / 2;
            let queue = if from_kept { &mut self.kept } else { &mut self.normal };
            let Some(id) = queue.pop_front() else { break };
            match self.traces.get(&id) {
                Some(t) if t.kept == from_kept => {}
                // Stale: the trace moved to the kept queue.
                _ => continue,
            }
            if let Some(t) = self.traces.remove(&id) {
                self.spans -= t.spans.len();
                if t.kept {
                    self.kept_bytes -= t.bytes;
                } else {
                    self.normal_bytes -= t.bytes;
                }
            }
        }
    }

    pub fn search(&self, q: &Query) -> Vec<Json> {
        let matches = |id: &TraceId, t: &Trace| {
            q.trace_id.is_none_or(|want| want == *id)
                && q.error.is_none_or(|e| e == t.error)
                && q.min_duration_nanos.is_none_or(|d| t.end.saturating_sub(t.start) >= d)
                && q.start_nanos.is_none_or(|s| t.start >= s)
                && q.end_nanos.is_none_or(|e| t.start <= e)
                && (q.service.is_none() && q.operation.is_none()
                    || t.spans.iter().any(|s| {
                        q.service.as_deref().is_none_or(|want| &*s.service == want)
                            && q.operation.as_deref().is_none_or(|want| &*s.name == want)
                    }))
        };
        let mut found: Vec<(&TraceId, &Trace)> = self.traces.iter().filter(|(id, t)| matches(id, t)).collect();
        found.sort_by(|a, b| b.1.start.cmp(&a.1.start).then(a.0.cmp(b.0)));
        found.truncate(q.limit.max(1));
        found.into_iter().map(|(id, t)| summary(id, t)).collect()
    }

    /// A trace's spans, earliest first, for the waterfall.
    pub fn get(&self, id: &TraceId) -> Option<Json> {
        let t = self.traces.get(id)?;
        let mut spans: Vec<&StoredSpan> = t.spans.iter().collect();
        spans.sort_by_key(|s| s.start);
        let spans: Vec<Json> = spans
            .into_iter()
            .map(|s| {
                let attrs: serde_json::Map<String, Json> = self
                    .decode(&s.attrs)
                    .into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::Str(s) => Json::String(s),
                            Value::Int(n) => json!(n),
                            Value::Float(x) => json!(x),
                            Value::Bool(b) => json!(b),
                        };
                        (k, v)
                    })
                    .collect();
                json!({
                    "spanId": hex16(&s.span_id),
                    "parentSpanId": s.parent.map(|p| hex16(&p)),
                    "service": &*s.service,
                    "name": &*s.name,
                    "kind": s.kind.name(),
                    "startTime": rfc3339(s.start),
                    "startUnixNano": s.start.to_string(),
                    "durationMicros": s.duration / 1000,
                    "error": s.error,
                    "attributes": attrs,
                })
            })
            .collect();
        let mut out = summary(id, t);
        out["spans"] = Json::Array(spans);
        Some(out)
    }
}

fn summary(id: &TraceId, t: &Trace) -> Json {
    let ids: HashSet<SpanId> = t.spans.iter().map(|s| s.span_id).collect();
    let root = t
        .spans
        .iter()
        .filter(|s| s.parent.is_none_or(|p| !ids.contains(&p)))
        .min_by_key(|s| s.start)
        .or_else(|| t.spans.iter().min_by_key(|s| s.start));
    let mut services: Vec<(&str, usize)> = Vec::new();
    for s in &t.spans {
        match services.iter_mut().find(|(n, _)| *n == &*s.service) {
            Some(e) => e.1 += 1,
            None => services.push((&s.service, 1)),
        }
    }
    json!({
        "traceId": hex32(id),
        "rootService": root.map(|s| &*s.service),
        "rootOperation": root.map(|s| &*s.name),
        "startTime": rfc3339(t.start),
        "durationMicros": t.end.saturating_sub(t.start) / 1000,
        "spanCount": t.spans.len(),
        "error": t.error,
        "services": services.iter().map(|(n, c)| json!({"name": n, "spans": c})).collect::<Vec<_>>(),
    })
}

fn rfc3339(nanos: u64) -> String {
    let t =
        chrono::DateTime::<chrono::Utc>::from_timestamp((nanos / 1_000_000_000) as i64, (nanos % 1_000_000_000) as u32)
            .unwrap_or_default();
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn value_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => s.len() + 2,
        _ => 8,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(s.as_bytes());
}

fn take_str(b: &mut &[u8]) -> Option<String> {
    let mut n = 0usize;
    let mut shift = 0;
    loop {
        let (&c, rest) = b.split_first()?;
        *b = rest;
        n |= usize::from(c & 0x7f) << shift;
        if c & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    if b.len() < n {
        return None;
    }
    let s = String::from_utf8_lossy(&b[..n]).into_owned();
    *b = &b[n..];
    Some(s)
}

/// The appliance's span hub: every span goes into the store and to each
/// exporter's queue.
pub struct TraceHub {
    store: Mutex<TraceStore>,
    exporters: Vec<super::export::Queue>,
    pub metrics: TraceMetrics,
}

#[derive(Clone)]
pub struct TraceMetrics {
    pub received: prometheus::IntCounterVec,
    pub dropped: prometheus::IntCounterVec,
    pub exported: prometheus::IntCounterVec,
    pub store_spans: prometheus::IntGauge,
    pub store_bytes: prometheus::IntGauge,
}

impl TraceMetrics {
    pub fn new(registry: &prometheus::Registry) -> TraceMetrics {
        use prometheus::{IntCounterVec, IntGauge, Opts};
        let m = TraceMetrics {
            received: IntCounterVec::new(
                Opts::new("meshgate_trace_spans_total", "Spans received, by source (gateway, agent, otlp)"),
                &["source"],
            )
            .expect("static metric definition"),
            dropped: IntCounterVec::new(
                Opts::new("meshgate_trace_spans_dropped_total", "Spans dropped, by reason and provider"),
                &["reason", "provider"],
            )
            .expect("static metric definition"),
            exported: IntCounterVec::new(
                Opts::new("meshgate_trace_spans_exported_total", "Spans accepted by a tracing provider"),
                &["provider"],
            )
            .expect("static metric definition"),
            store_spans: IntGauge::new("meshgate_trace_store_spans", "Spans held by the built-in trace store")
                .expect("static metric definition"),
            store_bytes: IntGauge::new("meshgate_trace_store_bytes", "Bytes the trace store counts against its budget")
                .expect("static metric definition"),
        };
        for c in [
            Box::new(m.received.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.dropped.clone()),
            Box::new(m.exported.clone()),
            Box::new(m.store_spans.clone()),
            Box::new(m.store_bytes.clone()),
        ] {
            // Registered once per process; a second hub (tests) shares the names.
            let _ = registry.register(c);
        }
        m
    }
}

impl TraceHub {
    pub fn new(limits: Limits, exporters: Vec<super::export::Queue>, metrics: TraceMetrics) -> TraceHub {
        TraceHub { store: Mutex::new(TraceStore::new(limits)), exporters, metrics }
    }

    /// Where the gateway's workers hand their spans: a bounded queue that a
    /// thread of its own empties into the store, so a request never waits
    /// for the store's lock and the store's long-lived memory is not
    /// interleaved with the workers' short-lived allocations (which made
    /// glibc's allocator slower as the store filled). `None`: queue full.
    pub fn intake(self: &Arc<Self>) -> std::io::Result<std::sync::mpsc::SyncSender<Span>> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Span>(INTAKE);
        let hub = Arc::downgrade(self);
        std::thread::Builder::new().name("trace-store".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                loop {
                    let more = rx.try_recv();
                    let next = more.is_ok();
                    batch.extend(more);
                    if batch.len() == 256 || !next {
                        let Some(hub) = hub.upgrade() else { return };
                        hub.metrics.received.with_label_values(&["gateway"]).inc_by(batch.len() as u64);
                        hub.accept(std::mem::take(&mut batch));
                    }
                    if !next {
                        break;
                    }
                }
                // Spans gather for a moment before the thread looks again:
                // a busy gateway then wakes it a few times a second, not
                // once a span.
                std::thread::sleep(INTAKE_PAUSE);
            }
        })?;
        Ok(tx)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, TraceStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the spans and queues them for every exporter (never waits).
    pub fn accept(&self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        {
            let mut store = self.store();
            for s in &spans {
                store.insert(s);
            }
            self.metrics.store_spans.set(store.spans() as i64);
            self.metrics.store_bytes.set(store.bytes() as i64);
        }
        // A Telemetry naming a provider the mesh config lacks: counted, not silent.
        for s in &spans {
            for name in s.providers.iter().flat_map(|p| p.iter()) {
                if !self.exporters.iter().any(|e| e.name() == name) {
                    self.metrics.dropped.with_label_values(&["unknown_provider", name]).inc();
                }
            }
        }
        if self.exporters.is_empty() {
            return;
        }
        let spans: Vec<Arc<Span>> = spans.into_iter().map(Arc::new).collect();
        for e in &self.exporters {
            e.offer(&spans, &self.metrics);
        }
    }

    pub fn search(&self, q: &Query) -> Vec<Json> {
        self.store().search(q)
    }

    pub fn get(&self, id: &TraceId) -> Option<Json> {
        self.store().get(id)
    }

    pub fn stats(&self) -> Json {
        let s = self.store();
        json!({"spans": s.spans(), "traces": s.traces(), "bytes": s.bytes(), "maxBytes": s.limits.max_bytes})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: u8, id: u8, parent: Option<u8>, service: &str, ms: u64, error: bool) -> Span {
        Span {
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent: parent.map(|p| [p; 8]),
            kind: Kind::Server,
            name: format!("{service}.default.svc.cluster.local/*"),
            service: Arc::from(service),
            start_unix_nanos: 1_700_000_000_000_000_000 + u64::from(trace) * 1_000_000_000,
            end_unix_nanos: 1_700_000_000_000_000_000 + u64::from(trace) * 1_000_000_000 + ms * 1_000_000,
            error,
            attributes: vec![
                ("http.method".into(), Value::Str("GET".into())),
                ("http.status_code".into(), Value::Int(if error { 503 } else { 200 })),
                ("error".into(), Value::Bool(error)),
                ("ratio".into(), Value::Float(0.5)),
            ],
            providers: None,
        }
    }

    #[test]
    fn search_and_waterfall() {
        let mut s = TraceStore::new(Limits::default());
        s.insert(&span(1, 1, None, "gateway", 30, false));
        s.insert(&span(1, 2, Some(1), "users", 20, false));
        s.insert(&span(2, 3, None, "gateway", 5, true));
        assert_eq!((s.traces(), s.spans()), (2, 3));
        let all = s.search(&Query { limit: 10, ..Default::default() });
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["traceId"], hex32(&[2; 16]), "newest first");
        let errors = s.search(&Query { error: Some(true), limit: 10, ..Default::default() });
        assert_eq!(errors.len(), 1);
        let slow = s.search(&Query { min_duration_nanos: Some(25_000_000), limit: 10, ..Default::default() });
        assert_eq!(slow.len(), 1);
        assert_eq!(slow[0]["traceId"], hex32(&[1; 16]));
        let users = s.search(&Query { service: Some("users".into()), limit: 10, ..Default::default() });
        assert_eq!(users.len(), 1);
        assert_eq!(users[0]["rootService"], "gateway");
        let t = s.get(&[1; 16]).unwrap();
        assert_eq!(t["spans"][1]["parentSpanId"], hex16(&[1; 8]));
        assert_eq!(t["spans"][1]["attributes"]["http.status_code"], 200);
        assert_eq!(t["spans"][1]["attributes"]["http.method"], "GET");
        assert_eq!(t["spans"][1]["attributes"]["ratio"], 0.5);
        assert_eq!(t["spans"][1]["attributes"]["error"], false);
    }

    #[test]
    fn the_budget_drops_ordinary_traces_before_errors() {
        let one = {
            let mut s = TraceStore::new(Limits::default());
            s.insert(&span(1, 1, None, "gateway", 1, false));
            s.bytes()
        };
        let mut s = TraceStore::new(Limits { max_bytes: one * 4, slow_nanos: 1_000_000_000 });
        s.insert(&span(1, 1, None, "gateway", 1, true));
        for t in 2..10 {
            s.insert(&span(t, 1, None, "gateway", 1, false));
        }
        assert!(s.bytes() <= one * 4);
        assert!(s.get(&[1; 16]).is_some(), "the error trace is kept");
        assert!(s.get(&[2; 16]).is_none(), "old ordinary traces went first");
        assert!(s.get(&[9; 16]).is_some());
    }
}
