//! Distributed tracing on every proxy: the trace context a request brings
//! (W3C `traceparent`/`tracestate`, B3 multi-header or single `b3`) is
//! continued, or a new trace starts; each hop records one span and passes
//! its own span id on, in both W3C and B3 form, so apps and proxies that
//! speak either join the trace.
//!
//! Sampling is decided once per trace: a caller's decision is kept, else
//! the Telemetry percentage (mesh, namespace, workload or route) decides.
//! A span that ends in an error is recorded even when the trace is not
//! sampled. Recording never waits: spans go into a bounded queue and are
//! dropped (and counted) when it is full.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// The trace a request belongs to, and this hop's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub trace_id: TraceId,
    /// The caller's span, if the request came with one.
    pub parent: Option<SpanId>,
    /// This hop's span.
    pub span_id: SpanId,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
    /// The request came with a trace context (W3C or B3).
    pub incoming: bool,
    /// The request had none of the context headers, not even a malformed one.
    pub bare: bool,
}

// Names made once: inserting a `&str` name allocates it every time.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// Every header [`Context::extract`] reads.
// A static, not a const: a const array of names is built (and dropped) at every use.
static CONTEXT_HEADERS: [HeaderName; 6] = [TRACEPARENT, B3, B3_TRACE, B3_SPAN, B3_SAMPLED, B3_FLAGS];

impl Context {
    /// The request's trace, or a new one. W3C first, then B3 single, then B3 multi-header.
    pub fn extract(h: &HeaderMap) -> Context {
        // Most requests bring no context: one pass over the (few) names
        // tells, where a lookup per context header would hash each of them.
        let bare = !h.keys().any(|k| CONTEXT_HEADERS.contains(k));
        let incoming = if !bare {
            h.get(&TRACEPARENT)
                .and_then(|v| parse_traceparent(v.as_bytes()))
                .or_else(|| h.get(&B3).and_then(|v| parse_b3_single(v.as_bytes())))
                .or_else(|| parse_b3_multi(h))
        } else {
            None
        };
        let came = incoming.is_some();
        let (trace_id, parent, sampled) = match incoming {
            Some(Incoming { ids: Some((t, p)), sampled }) => (t, Some(p), sampled),
            Some(Incoming { ids: None, sampled }) => (new_trace_id(), None, sampled),
            None => (new_trace_id(), None, None),
        };
        Context { trace_id, parent, span_id: new_span_id(), sampled, incoming: came, bare }
    }

    /// Tells the next hop that its parent is this hop's span: `traceparent`
    /// (any `tracestate` passes on unchanged) and, when the request came
    /// with a context (W3C or B3), the B3 headers too, so each form reaches
    /// apps that speak only the other; a single `b3` header is replaced by
    /// the multi-header form. A trace started here goes on in W3C form
    /// (as Envoy's OpenTelemetry tracer does), which the next sidecar
    /// passes on in both.
    pub fn inject(&self, sampled: bool, h: &mut HeaderMap) {
        let (tp, trace, span) = self.traceparent_text(sampled);
        // Cut from a per-thread block: no allocation per value.
        let value = |text: &[u8]| crate::proxy::h1::Value::Made(crate::proxy::h1::scratch::made(text)).to_header();
        h.insert(TRACEPARENT, value(&tp));
        if !self.incoming {
            return;
        }
        h.remove(&B3);
        h.remove(&B3_FLAGS);
        h.insert(B3_TRACE, value(&trace));
        h.insert(B3_SPAN, value(&span));
        match self.parent {
            Some(p) => {
                let mut parent = [0u8; 16];
                hex_into(&p, &mut parent);
                h.insert(B3_PARENT, value(&parent));
            }
            None => {
                h.remove(&B3_PARENT);
            }
        }
        h.insert(B3_SAMPLED, HeaderValue::from_static(if sampled { "1" } else { "0" }));
    }

    /// `traceparent` alone, when the request had no context header that
    /// [`Context::inject`] would replace or remove: the caller writes it
    /// after the request's fields, with no header-map insert. `None`:
    /// use `inject`.
    pub fn traceparent_alone(&self, sampled: bool) -> Option<bytes::Bytes> {
        self.bare.then(|| crate::proxy::h1::scratch::made(&self.traceparent_text(sampled).0))
    }

    /// `traceparent`'s text, and the trace and span ids in hex.
    fn traceparent_text(&self, sampled: bool) -> ([u8; 55], [u8; 32], [u8; 16]) {
        let mut trace = [0u8; 32];
        let mut span = [0u8; 16];
        hex_into(&self.trace_id, &mut trace);
        hex_into(&self.span_id, &mut span);
        let mut tp = [0u8; 55];
        tp[..3].copy_from_slice(b"00-");
        tp[3..35].copy_from_slice(&trace);
        tp[35] = b'-';
        tp[36..52].copy_from_slice(&span);
        tp[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
        (tp, trace, span)
    }

    pub fn trace_hex(&self) -> String {
        hex32(&self.trace_id)
    }
}

struct Incoming {
    ids: Option<(TraceId, SpanId)>,
    sampled: Option<bool>,
}

fn parse_traceparent(v: &[u8]) -> Option<Incoming> {
    // version-traceid-parentid-flags; a future version may append fields.
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace_id = unhex::<16>(trace)?;
    let span_id = unhex::<8>(span)?;
    let flags = unhex::<1>(flags)?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Incoming { ids: Some((trace_id, span_id)), sampled: Some(flags & 1 == 1) })
}

fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// B3 trace ids are 64 or 128 bits; a 64-bit one is the low half.
fn b3_trace_id(s: &str) -> Option<TraceId> {
    match s.len() {
        32 => unhex::<16>(s),
        16 => {
            let low = unhex::<8>(s)?;
            let mut id = [0; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
    .filter(|id| *id != [0; 16])
}

fn parse_b3_single(v: &[u8]) -> Option<Incoming> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        // Only a sampling decision: `b3: 0`.
        return Some(Incoming { ids: None, sampled: b3_sampled(first) });
    };
    let trace_id = b3_trace_id(first)?;
    let span_id = unhex::<8>(span).filter(|id| *id != [0; 8])?;
    let sampled = parts.next().and_then(b3_sampled);
    Some(Incoming { ids: Some((trace_id, span_id)), sampled })
}

fn parse_b3_multi(h: &HeaderMap) -> Option<Incoming> {
    let get = |name: &HeaderName| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let sampled = match get(&B3_FLAGS) {
        Some("1") => Some(true),
        _ => get(&B3_SAMPLED).and_then(b3_sampled),
    };
    let ids = match (get(&B3_TRACE).and_then(b3_trace_id), get(&B3_SPAN).and_then(unhex::<8>)) {
        (Some(t), Some(s)) if s != [0; 8] => Some((t, s)),
        _ => None,
    };
    (ids.is_some() || sampled.is_some()).then_some(Incoming { ids, sampled })
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    (s.len() == 2 * N && hex::decode_to_slice(s, &mut out).is_ok()).then_some(out)
}

/// Lower-case hex of `bytes` into `out` (twice as long; the rest of `out`
/// is left as it is): one table look-up per byte, for the ids made on
/// every request.
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    static TABLE: [[u8; 2]; 256] = {
        let digits = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [digits[i >> 4], digits[i & 15]];
            i += 1;
        }
        t
    };
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&TABLE[usize::from(*b)]);
    }
}

pub fn hex32(id: &TraceId) -> String {
    hex::encode(id)
}

pub fn hex16(id: &SpanId) -> String {
    hex::encode(id)
}

/// Random bytes for ids (trace, span, `x-request-id`) and sampling: a
/// per-thread wyrand generator seeded from `rand`'s OS-seeded generator.
/// On the request path it costs a fraction of `rand::random` (ChaCha12);
/// these ids must be unique and evenly spread, not secret (wyrand is
/// predictable from its outputs: nothing here may serve as a credential).
pub fn fast_random<const N: usize>() -> [u8; N] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random());
    }
    let mut out = [0u8; N];
    STATE.with(|state| {
        for chunk in out.chunks_mut(8) {
            let x = state.get().wrapping_add(0xa076_1d64_78bd_642f);
            state.set(x);
            let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
            let r = ((t >> 64) as u64) ^ (t as u64);
            chunk.copy_from_slice(&r.to_le_bytes()[..chunk.len()]);
        }
    });
    out
}

pub fn new_trace_id() -> TraceId {
    loop {
        let id: TraceId = fast_random();
        if id != [0; 16] {
            return id;
        }
    }
}

pub fn new_span_id() -> SpanId {
    loop {
        let id: SpanId = fast_random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// The next batch from a span queue: waits for one, then takes what
/// comes within `linger`, up to `max`; `None` once the queue is closed.
pub async fn next_batch<T>(
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    max: usize,
    linger: std::time::Duration,
) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) => batch.push(s),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

/// Whether a trace the caller did not decide on is sampled at `percent`.
pub fn sample(percent: f64) -> bool {
    // 53 random bits as a fraction in [0, 1).
    let unit = (u64::from_le_bytes(fast_random()) >> 11) as f64 / (1u64 << 53) as f64;
    percent >= 100.0 || (percent > 0.0 && unit * 100.0 < percent)
}

pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

/// OpenTelemetry's span kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Internal => "INTERNAL",
            Kind::Server => "SERVER",
            Kind::Client => "CLIENT",
            Kind::Producer => "PRODUCER",
            Kind::Consumer => "CONSUMER",
        }
    }

    /// OTLP's numbering (`SPAN_KIND_INTERNAL` is 1).
    pub fn otlp(self) -> i32 {
        match self {
            Kind::Internal => 1,
            Kind::Server => 2,
            Kind::Client => 3,
            Kind::Producer => 4,
            Kind::Consumer => 5,
        }
    }

    pub fn from_otlp(n: i32) -> Kind {
        match n {
            2 => Kind::Server,
            3 => Kind::Client,
            4 => Kind::Producer,
            5 => Kind::Consumer,
            _ => Kind::Internal,
        }
    }
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// One finished span, as proxies record it and OTLP brings it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub kind: Kind,
    pub name: String,
    /// `service.name` of the resource that produced it (`user-service.default`).
    pub service: Arc<str>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub error: bool,
    pub attributes: Vec<(String, Value)>,
    /// The tracing providers a Telemetry resource chose for this
    /// workload's spans (`tracing[].providers`); `None`: the mesh's
    /// defaults (`meshConfig.defaultProviders.tracing`).
    pub providers: Option<Arc<[String]>>,
}

/// The span attribute that carries [`Span::providers`] from an agent to
/// the appliance (taken off again there, never exported).
pub const PROVIDERS_ATTRIBUTE: &str = "meshgate.providers";

impl Span {
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos)
    }
}

/// Where a proxy's spans go: into the appliance's trace hub directly, or
/// (an agent) into a queue its link sends to the control plane.
pub enum Sink {
    /// The appliance's trace store, through its intake thread.
    Hub(std::sync::mpsc::SyncSender<Span>),
    Queue(tokio::sync::mpsc::Sender<Span>),
}

/// A proxy's span recorder.
pub struct Tracer {
    /// `service.name` of this proxy's spans.
    pub service: Arc<str>,
    pub namespace: Arc<str>,
    /// Envoy's `node_id` attribute: the proxy's name.
    pub node_id: Arc<str>,
    sink: Sink,
    dropped: prometheus::IntCounter,
}

impl Tracer {
    pub fn new(service: &str, namespace: &str, node_id: &str, sink: Sink, dropped: prometheus::IntCounter) -> Tracer {
        Tracer { service: service.into(), namespace: namespace.into(), node_id: node_id.into(), sink, dropped }
    }

    /// Records a span without waiting; a full queue drops it.
    pub fn report(&self, span: Span) {
        match &self.sink {
            Sink::Hub(tx) => {
                if tx.try_send(span).is_err() {
                    self.dropped.inc();
                }
            }
            Sink::Queue(tx) => {
                if tx.try_send(span).is_err() {
                    self.dropped.inc();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_evenly_spread_and_sampling_keeps_its_rate() {
        let ids: Vec<TraceId> = (0..20_000).map(|_| new_trace_id()).collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Every one of the 128 bits is set in about half of the ids.
        for bit in 0..128 {
            let set = ids.iter().filter(|id| id[bit / 8] >> (bit % 8) & 1 == 1).count();
            assert!((9_400..=10_600).contains(&set), "bit {bit} set in {set} of 20000");
        }
        // Each thread is seeded apart: two fresh threads draw different sequences.
        let fresh = || std::thread::spawn(|| (0..100).map(|_| new_span_id()).collect::<Vec<_>>()).join().unwrap();
        let (a, b) = (fresh(), fresh());
        assert!(a.iter().all(|id| !b.contains(id)), "two threads drew the same ids");
        let kept = (0..200_000).filter(|_| sample(1.0)).count();
        assert!((1_700..=2_300).contains(&kept), "1% of 200000 sampled: {kept}");
        assert_eq!((0..1000).filter(|_| sample(0.0)).count(), 0);
        assert_eq!((0..1000).filter(|_| sample(100.0)).count(), 1000);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn w3c_in_b3_and_w3c_out() {
        let h = headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "vendor=x"),
        ]);
        let cx = Context::extract(&h);
        assert_eq!(cx.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.parent.map(|p| hex16(&p)).as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(cx.sampled, Some(true));
        assert_ne!(cx.span_id, cx.parent.unwrap());
        let mut out = h.clone();
        cx.inject(true, &mut out);
        let span = hex16(&cx.span_id);
        assert_eq!(out["traceparent"], format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{span}-01").as_str());
        assert_eq!(out["tracestate"], "vendor=x");
        assert_eq!(out["x-b3-traceid"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(out["x-b3-spanid"], span.as_str());
        assert_eq!(out["x-b3-parentspanid"], "00f067aa0ba902b7");
        assert_eq!(out["x-b3-sampled"], "1");
    }

    #[test]
    fn hex_is_lower_case_and_whole() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 512];
        hex_into(&bytes, &mut out);
        assert_eq!(std::str::from_utf8(&out).unwrap(), hex::encode(&bytes));
    }

    #[test]
    fn a_trace_started_here_goes_on_in_w3c_form() {
        let cx = Context::extract(&HeaderMap::new());
        assert!(!cx.incoming);
        let mut out = HeaderMap::new();
        cx.inject(false, &mut out);
        assert!(out["traceparent"].to_str().unwrap().ends_with("-00"));
        assert_eq!(out.len(), 1);
        // With no context header in the request, the value alone is the same.
        assert_eq!(cx.traceparent_alone(false).as_deref(), Some(out["traceparent"].as_bytes()));
        // A malformed one is replaced in the map, never added beside it.
        let bad = headers(&[("traceparent", "nonsense")]);
        let cx = Context::extract(&bad);
        assert!(!cx.incoming);
        assert_eq!(cx.traceparent_alone(true), None);
        let mut out = bad.clone();
        cx.inject(true, &mut out);
        assert_eq!(out.get_all("traceparent").iter().count(), 1);
        assert!(out["traceparent"].to_str().unwrap().ends_with("-01"));
    }

    #[test]
    fn b3_in_both_forms() {
        let multi = headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]);
        let cx = Context::extract(&multi);
        assert_eq!(cx.trace_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(cx.sampled, Some(false));
        let mut out = multi.clone();
        cx.inject(false, &mut out);
        assert!(out["traceparent"].to_str().unwrap().starts_with("00-80f198ee56343ba864fe8b2a57d3eff7-"));
        assert!(out["traceparent"].to_str().unwrap().ends_with("-00"));

        let single = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]);
        let cx = Context::extract(&single);
        assert_eq!(cx.parent.map(|p| hex16(&p)).as_deref(), Some("e457b5a2e4d86bd1"));
        assert_eq!(cx.sampled, Some(true));
        let mut out = single.clone();
        cx.inject(true, &mut out);
        assert!(!out.contains_key("b3"), "the single header gives way to the multi-header form");

        // A 64-bit B3 trace id is the low half of the W3C one.
        let short = headers(&[("x-b3-traceid", "64fe8b2a57d3eff7"), ("x-b3-spanid", "e457b5a2e4d86bd1")]);
        assert_eq!(Context::extract(&short).trace_hex(), "000000000000000064fe8b2a57d3eff7");
        // Sampling only.
        let cx = Context::extract(&headers(&[("b3", "0")]));
        assert_eq!((cx.parent, cx.sampled), (None, Some(false)));
    }

    #[test]
    fn bad_context_starts_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let cx = Context::extract(&headers(&[("traceparent", bad)]));
            assert_eq!((cx.parent, cx.sampled), (None, None), "{bad}");
            assert_ne!(cx.trace_id, [0; 16]);
        }
    }
}
