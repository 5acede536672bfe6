//! Built-in time series for the console, without Prometheus: per service
//! and version, per edge route, and per call (who calls whom), requests/s,
//! error rate and p50/p90/p99 latency for the last hour at 10 s resolution.
//!
//! Every proxy sums up its own request histograms each 10 s ([`Delta`]:
//! counts and latency buckets since the last summary, read from the same
//! Prometheus histograms it serves, so nothing more is done per request);
//! agents send theirs over their link, the gateway hands its over in
//! process. The control plane files each delta under the 10 s slot it
//! arrived in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How often proxies send their summary: every 10 s, or
/// `MESHGATE_STATS_INTERVAL` (a duration; tests use a shorter one).
pub fn report_interval() -> std::time::Duration {
    std::env::var("MESHGATE_STATS_INTERVAL")
        .ok()
        .and_then(|v| meshgate_model::check::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(std::time::Duration::from_secs(STEP as u64))
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Seconds per point.
pub const STEP: i64 = 10;
/// Points kept: one hour.
const POINTS: usize = 360;
/// Rings kept per family (bounded like the metric series).
const MAX_RINGS: usize = 5_000;

/// Istio's latency buckets (ms), as `istio_request_duration_milliseconds`; one more for +Inf.
pub const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// What one proxy saw of one kind of call since its last summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    /// `source` or `destination` (Istio's reporter); `route` for the gateway's per-route counts.
    pub reporter: String,
    /// The caller's workload (`namespace/name`); empty for routes.
    #[serde(default)]
    pub source: String,
    /// The destination service host, and the version that answered.
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub version: String,
    /// The gateway route (`namespace/virtualservice/route`).
    #[serde(default)]
    pub route: String,
    pub requests: u64,
    pub errors: u64,
    /// Requests per latency bucket (not cumulative), the last one +Inf.
    pub buckets: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
struct Point {
    t: i64,
    requests: u64,
    errors: u64,
    buckets: [u64; 20],
}

impl Point {
    fn add(&mut self, d: &Delta) {
        self.requests += d.requests;
        self.errors += d.errors;
        for (b, n) in self.buckets.iter_mut().zip(&d.buckets) {
            *b += n;
        }
    }

    fn merge(&mut self, p: &Point) {
        self.requests += p.requests;
        self.errors += p.errors;
        for (b, n) in self.buckets.iter_mut().zip(&p.buckets) {
            *b += n;
        }
    }
}

#[derive(Default)]
struct Ring(VecDeque<Point>);

impl Ring {
    fn add(&mut self, t: i64, d: &Delta) {
        match self.0.back_mut() {
            Some(p) if p.t == t => p.add(d),
            _ => {
                let mut p = Point { t, ..Default::default() };
                p.add(d);
                self.0.push_back(p);
                while self.0.len() > POINTS {
                    self.0.pop_front();
                }
            }
        }
    }

    fn since(&self, from: i64) -> impl Iterator<Item = &Point> {
        self.0.iter().filter(move |p| p.t >= from)
    }
}

/// The `q` quantile (0–1) of a latency histogram, in ms, interpolated
/// within its bucket as Prometheus' `histogram_quantile` does.
pub fn quantile(buckets: &[u64; 20], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 && (seen + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { BUCKETS_MS[i - 1] };
            let Some(&upper) = BUCKETS_MS.get(i) else { return Some(lower) };
            let into = (rank - seen as f64) / *n as f64;
            return Some(lower + (upper - lower) * into.clamp(0.0, 1.0));
        }
        seen += n;
    }
    Some(BUCKETS_MS[BUCKETS_MS.len() - 1])
}

#[derive(Default)]
struct Families {
    /// (service, version) by reporter: destination (sidecars) or source (callers).
    services: HashMap<(bool, String, String), Ring>,
    routes: HashMap<String, Ring>,
    /// (source workload, destination service) by reporter.
    calls: HashMap<(bool, String, String), Ring>,
}

/// The control plane's series.
#[derive(Default)]
pub struct SeriesStore {
    inner: Mutex<Families>,
}

fn ring<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Ring>, key: K) -> Option<&mut Ring> {
    if !map.contains_key(&key) && map.len() >= MAX_RINGS {
        return None;
    }
    Some(map.entry(key).or_default())
}

impl SeriesStore {
    /// Files a proxy's summary under the slot of `now` (Unix seconds).
    pub fn add(&self, now: i64, deltas: &[Delta]) {
        let t = now - now.rem_euclid(STEP);
        let mut f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for d in deltas.iter().filter(|d| d.requests > 0 && d.buckets.len() <= 20) {
            match d.reporter.as_str() {
                "route" => {
                    if let Some(r) = ring(&mut f.routes, d.route.clone()) {
                        r.add(t, d);
                    }
                }
                reporter => {
                    let dest = reporter == "destination";
                    if let Some(r) = ring(&mut f.services, (dest, d.service.clone(), d.version.clone())) {
                        r.add(t, d);
                    }
                    if let Some(r) = ring(&mut f.calls, (dest, d.source.clone(), d.service.clone())) {
                        r.add(t, d);
                    }
                }
            }
        }
    }

    /// Per service and version (or per route): a point per 10 s over the last `window` seconds.
    pub fn series(&self, now: i64, window: i64, routes: bool, only: Option<&str>) -> Value {
        let from = now - window;
        let f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let points = |ring: &Ring| -> Vec<Value> { ring.since(from).map(point_json).collect() };
        if routes {
            let mut out: Vec<Value> = f
                .routes
                .iter()
                .filter(|(r, _)| only.is_none_or(|o| o == r.as_str()))
                .map(|(r, ring)| json!({"route": r, "points": points(ring)}))
                .collect();
            out.sort_by(|a, b| a["route"].as_str().cmp(&b["route"].as_str()));
            return json!({"step": STEP, "routes": out});
        }
        // A service's sidecars report what it served; callers' reports stand in where it has none.
        let with_sidecars: std::collections::HashSet<&str> =
            f.services.keys().filter(|(dest, _, _)| *dest).map(|(_, s, _)| s.as_str()).collect();
        let mut out: Vec<Value> = f
            .services
            .iter()
            .filter(|((dest, s, _), _)| *dest || !with_sidecars.contains(s.as_str()))
            .filter(|((_, s, _), _)| only.is_none_or(|o| o == s.as_str() || s.split('.').next() == Some(o)))
            .map(|((dest, s, v), ring)| {
                json!({
                    "service": s, "version": v,
                    "reporter": if *dest { "destination" } else { "source" },
                    "points": points(ring),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (a["service"].as_str(), a["version"].as_str()).cmp(&(b["service"].as_str(), b["version"].as_str()))
        });
        json!({"step": STEP, "services": out})
    }

    /// The service map: who calls whom over the last `window` seconds,
    /// with requests/s, error rate and p99. A call is counted by the
    /// caller's proxy; by the callee's where the caller has none.
    pub fn graph(&self, now: i64, window: i64) -> Value {
        let from = now - window;
        let f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut edges: BTreeMap<(String, String), (bool, Point)> = BTreeMap::new();
        for ((dest, src, svc), ring) in &f.calls {
            let mut sum = Point::default();
            for p in ring.since(from) {
                sum.merge(p);
            }
            if sum.requests == 0 {
                continue;
            }
            let key = (src.clone(), svc.clone());
            match edges.get(&key) {
                // The caller's own count wins.
                Some((false, _)) if *dest => {}
                _ => {
                    edges.insert(key, (*dest, sum));
                }
            }
        }
        let mut nodes: BTreeMap<String, &str> = BTreeMap::new();
        let edges: Vec<Value> = edges
            .into_iter()
            .map(|((src, svc), (dest, p))| {
                nodes.entry(src.clone()).or_insert(if src.ends_with("/meshgate-gateway") {
                    "gateway"
                } else {
                    "workload"
                });
                nodes.insert(svc.clone(), "service");
                json!({
                    "source": src,
                    "destination": svc,
                    "reporter": if dest { "destination" } else { "source" },
                    "requests": p.requests,
                    "rps": p.requests as f64 / window as f64,
                    "errorRate": p.errors as f64 / p.requests as f64,
                    "p99": quantile(&p.buckets, 0.99),
                })
            })
            .collect();
        let nodes: Vec<Value> = nodes.into_iter().map(|(id, kind)| json!({"id": id, "kind": kind})).collect();
        json!({"window": window, "nodes": nodes, "edges": edges})
    }
}

fn point_json(p: &Point) -> Value {
    let rps = p.requests as f64 / STEP as f64;
    json!({
        "t": p.t,
        "rps": rps,
        "requests": p.requests,
        "errorRate": if p.requests == 0 { 0.0 } else { p.errors as f64 / p.requests as f64 },
        "p50": quantile(&p.buckets, 0.5),
        "p90": quantile(&p.buckets, 0.9),
        "p99": quantile(&p.buckets, 0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(reporter: &str, source: &str, service: &str, version: &str, n: u64, errors: u64, bucket: usize) -> Delta {
        let mut buckets = vec![0; 20];
        buckets[bucket] = n;
        Delta {
            reporter: reporter.into(),
            source: source.into(),
            service: service.into(),
            version: version.into(),
            route: String::new(),
            requests: n,
            errors,
            buckets,
        }
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut b = [0u64; 20];
        b[3] = 100; // 5–10 ms
        assert_eq!(quantile(&b, 0.5), Some(7.5));
        b[9] = 100; // 500–1000 ms
        assert_eq!(quantile(&b, 0.99), Some(990.0));
        assert_eq!(quantile(&[0; 20], 0.5), None);
    }

    #[test]
    fn points_per_slot_and_the_service_map() {
        let s = SeriesStore::default();
        s.add(1000, &[delta("source", "meshgate-system/meshgate-gateway", "users", "v1", 50, 5, 3)]);
        s.add(1003, &[delta("destination", "meshgate-system/meshgate-gateway", "users", "v1", 50, 5, 3)]);
        s.add(1011, &[delta("destination", "default/orders", "users", "v2", 20, 0, 4)]);
        let series = s.series(1015, 60, false, Some("users"));
        let list = series["services"].as_array().unwrap();
        assert_eq!(list.len(), 2, "destination reports win for a service with sidecars: {series}");
        let v1 = &list[0];
        assert_eq!((v1["version"].as_str(), v1["points"][0]["t"].as_i64()), (Some("v1"), Some(1000)));
        assert_eq!(v1["points"][0]["rps"], 5.0);
        assert_eq!(v1["points"][0]["errorRate"], 0.1);
        let graph = s.graph(1015, 60);
        let edges = graph["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 2, "{graph}");
        let gw = edges.iter().find(|e| e["source"] == "meshgate-system/meshgate-gateway").unwrap();
        assert_eq!((gw["reporter"].as_str(), gw["requests"].as_u64()), (Some("source"), Some(50)));
        let orders = edges.iter().find(|e| e["source"] == "default/orders").unwrap();
        assert_eq!(orders["reporter"], "destination", "no caller report: the callee's stands in");
        assert!(graph["nodes"].as_array().unwrap().iter().any(|n| n["kind"] == "gateway"));
    }
}
