//! Upstream clusters: endpoints, load balancing and outlier detection.
//! Endpoint health lives in [`Health`] objects shared across snapshots, so
//! an ejection survives a configuration change.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// One upstream cluster: a service host, subset and port.
pub struct Cluster {
    /// Istio's naming: `outbound|PORT|SUBSET|HOST`.
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub lb: Lb,
    pub outlier: Option<OutlierPolicy>,
    /// Most requests in flight at once (`connectionPool`); more get 503 UO.
    pub max_in_flight: Option<u32>,
    /// Speak HTTP/2 to the endpoints (h2c, or h2 over `tls`): gRPC and
    /// HTTP2 ports, or `h2UpgradePolicy: UPGRADE`.
    pub http2: bool,
    /// `useClientProtocol`: HTTP/2 to the endpoints for requests that came in over HTTP/2.
    pub use_client_protocol: bool,
    /// Most retries in flight at once (`connectionPool.http.maxRetries`).
    pub max_retries: Option<u32>,
    /// TLS to the endpoints (DestinationRule `tls` SIMPLE or MUTUAL).
    pub tls: Option<Arc<super::tls::UpstreamTls>>,
    /// How HTTP/1 connections to the endpoints are made and kept.
    pub connections: super::h1::client::PoolSettings,
    /// Weights of the locality groups of `distribute`; empty: no weighting.
    pub locality_weights: Vec<u32>,
    /// Slow start for new endpoints (round robin and least request).
    pub warmup: Option<Warmup>,
    /// The service as the request metrics name it (`destination_service*`).
    pub service: Arc<crate::telemetry::istio::Labelled<crate::telemetry::istio::Service>>,
    /// Counters that must outlive a configuration change (shared by name).
    counters: Arc<ClusterCounters>,
    /// Ejection decisions take turns, so two failing endpoints cannot both
    /// pass the `maxEjectionPercent` check at once.
    ejecting: std::sync::Mutex<()>,
}

/// Requests and retries in flight and the round-robin cursor of a cluster,
/// kept across snapshots so a config write does not reset pool limits.
#[derive(Default)]
pub struct ClusterCounters {
    in_flight: AtomicU32,
    retries: AtomicU32,
    rr: AtomicUsize,
}

/// A request admitted past the connection-pool limit; leaving frees its place.
pub struct Admitted<'a>(&'a AtomicU32);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Endpoint {
    /// `host:port` to connect to.
    pub address: String,
    /// Its workload as the request metrics name it (`destination_*`).
    pub workload: Arc<crate::telemetry::istio::Labelled<crate::telemetry::istio::Workload>>,
    /// The same, parsed once for building request URIs.
    pub authority: http::uri::Authority,
    pub labels: BTreeMap<String, String>,
    pub health: Arc<Health>,
    /// A stable per-endpoint number for rendezvous hashing.
    pub seed: u64,
    /// Locality priority relative to this proxy: 0 is nearest. Requests go
    /// to the nearest level that has a usable endpoint (failover).
    pub priority: u8,
    /// Index into [`Cluster::locality_weights`] (localityLbSetting
    /// `distribute`); endpoints no `to` entry names get no traffic.
    pub group: u16,
}

/// A 64-bit finalizer (SplitMix64): spreads keys so rendezvous scores are uniform.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a: a fixed hash (the same in every process and release) of a key or address.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lb {
    RoundRobin,
    LeastRequest,
    Random,
    /// `consistentHash`: the same key goes to the same endpoint while it is
    /// healthy. Rendezvous hashing: when an endpoint leaves, only its keys move.
    Hash(HashKey),
}

/// What a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    /// A cookie; with `generate`, a request without it gets a new one
    /// (sent back with `Set-Cookie`) so the client sticks from then on.
    Cookie {
        name: String,
        generate: Option<http::HeaderValue>,
    },
    SourceIp,
    Query(String),
}

#[derive(Debug, Clone)]
pub struct OutlierPolicy {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, ejections are ignored (panic mode).
    pub min_health_percent: u32,
    /// Each interval an endpoint stays healthy takes one off its ejection
    /// multiplier, as Envoy's sweep does.
    pub interval: Duration,
    /// `splitExternalLocalOriginErrors`: failures to connect or answer
    /// (no HTTP status) count apart from the upstream's 5xx, and
    /// `consecutiveLocalOriginFailures` of them eject. Unsplit, they count
    /// as 5xx and gateway errors.
    pub split_local_origin: bool,
    pub consecutive_local_origin: u32,
}

/// Slow start (`warmup` / `warmupDurationSecs`): an endpoint new to a
/// cluster gets a growing share of its traffic over `window`, as Envoy's
/// slow_start_config: weight `max(minimum, (age / window) ^ (1 / aggression))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    pub window: Duration,
    /// The least weight a new endpoint has (0..=1; Envoy's default 10%).
    pub minimum: f64,
    pub aggression: f64,
}

impl Warmup {
    /// The weight (0..=1) of an endpoint `age` old; 1 once warm.
    pub fn weight(&self, age: Duration) -> f64 {
        if age >= self.window || self.window.is_zero() {
            return 1.0;
        }
        let time = (age.as_secs_f64() / self.window.as_secs_f64()).max(0.0);
        let curve = if self.aggression > 0.0 { time.powf(1.0 / self.aggression) } else { 1.0 };
        curve.max(self.minimum).min(1.0)
    }
}

/// Per-endpoint state shared by every snapshot that has this endpoint:
/// health for outlier detection and the keep-alive pool.
#[derive(Default)]
pub struct Health {
    pub active: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// When the endpoint joined (ms on [`now_ms`]'s clock; 0: long ago), for slow start.
    born: u64,
    /// Milliseconds since [`epoch`] until which the endpoint is ejected.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    /// Idle HTTP/1 keep-alive connections to the endpoint, one pool per
    /// gateway worker (a connection stays with the worker that made it).
    pools: [super::h1::client::Pool; 8],
    /// The HTTP/2-over-TLS connection to the endpoint, with the
    /// fingerprint of the TLS settings it was made under.
    h2: std::sync::Mutex<Option<(u64, super::h2::Sender)>>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds on a clock that starts at one hour, so that 0 can mean
/// "never" and moments before the process started stay representable.
fn now_ms() -> u64 {
    3_600_000 + epoch().elapsed().as_millis() as u64
}

/// An attempt in flight to one endpoint, for least-request balancing.
pub struct Active<'a>(&'a Health);

impl<'a> Active<'a> {
    pub fn enter(h: &'a Health) -> Active<'a> {
        h.active.fetch_add(1, Ordering::Relaxed);
        Active(h)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Health {
    /// The state of an endpoint joining now.
    pub fn new() -> Health {
        Health { born: now_ms(), ..Health::default() }
    }

    /// The calling worker's pool of idle connections to this endpoint.
    pub fn pool(&self) -> &super::h1::client::Pool {
        &self.pools[super::worker_index() % self.pools.len()]
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_by(now_ms)
    }

    /// Like [`Health::is_ejected`] with the caller's clock (`now`), read
    /// only for an endpoint that was ever ejected.
    fn ejected_by(&self, now: impl Fn() -> u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now()
    }

    /// The kept HTTP/2 connection, if it was made under these TLS settings.
    pub fn h2(&self, fingerprint: u64) -> Option<super::h2::Sender> {
        let kept = self.h2.lock().ok()?;
        match kept.as_ref() {
            Some((f, sender)) if *f == fingerprint && !sender.is_closed() => Some(sender.clone()),
            _ => None,
        }
    }

    pub fn keep_h2(&self, fingerprint: u64, sender: super::h2::Sender) {
        if let Ok(mut kept) = self.h2.lock() {
            *kept = Some((fingerprint, sender));
        }
    }
}

/// Where [`Health`] objects are kept between snapshots, keyed by cluster
/// name and endpoint address. Entries die with the last snapshot using them.
#[derive(Default)]
pub struct HealthRegistry {
    map: super::kept::Kept<(String, String), Health>,
    clusters: super::kept::Kept<String, ClusterCounters>,
}

impl HealthRegistry {
    pub fn get(&self, cluster: &str, address: &str) -> Arc<Health> {
        self.map.get_or((cluster.to_string(), address.to_string()), Health::new).0
    }

    pub fn counters(&self, cluster: &str) -> Arc<ClusterCounters> {
        self.clusters.get_or(cluster.to_string(), ClusterCounters::default).0
    }

    /// Drops entries whose endpoints or clusters are gone.
    pub fn prune(&self) {
        self.map.prune();
        self.clusters.prune();
    }
}

impl Cluster {
    pub fn new(
        name: String,
        endpoints: Vec<Endpoint>,
        lb: Lb,
        outlier: Option<OutlierPolicy>,
        max_in_flight: Option<u32>,
        counters: Arc<ClusterCounters>,
    ) -> Cluster {
        Cluster {
            name,
            endpoints,
            lb,
            outlier,
            max_in_flight,
            http2: false,
            use_client_protocol: false,
            max_retries: None,
            tls: None,
            connections: Default::default(),
            locality_weights: Vec::new(),
            warmup: None,
            service: crate::telemetry::istio::Labelled::new(crate::telemetry::istio::Service::new(
                "unknown", "unknown",
            )),
            counters,
            ejecting: std::sync::Mutex::new(()),
        }
    }

    /// Admits one retry unless `maxRetries` retries are already in flight.
    pub fn admit_retry(&self) -> Option<Admitted<'_>> {
        let now = self.counters.retries.fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted(&self.counters.retries);
        match self.max_retries {
            Some(max) if now >= max => None,
            _ => Some(admitted),
        }
    }

    /// Admits a request unless the cluster is at its limit (overflow).
    pub fn admit(&self) -> Option<Admitted<'_>> {
        let now = self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted(&self.counters.in_flight);
        match self.max_in_flight {
            Some(max) if now >= max => None,
            _ => Some(admitted),
        }
    }

    /// Picks an endpoint that is not ejected, skipping `avoid` (the one a
    /// retry just failed on) when another is available. No allocation: this
    /// runs on every request.
    pub fn pick(&self, avoid: Option<usize>, hash: Option<u64>) -> Option<usize> {
        self.pick_beyond(avoid, hash, None)
    }

    /// Like [`Cluster::pick`], from the nearest locality level farther than
    /// `beyond` when one has a healthy endpoint (`retryRemoteLocalities`).
    pub fn pick_beyond(&self, avoid: Option<usize>, hash: Option<u64>, beyond: Option<u8>) -> Option<usize> {
        let n = self.endpoints.len();
        // At most one clock read per pick, and none while no endpoint was ever ejected.
        let clock = std::cell::OnceCell::new();
        let now = || *clock.get_or_init(now_ms);
        // Panic mode (`minHealthPercent`): too few healthy endpoints, so use them all.
        let panic = self.outlier.as_ref().is_some_and(|o| {
            o.min_health_percent > 0 && {
                let up = self.endpoints.iter().filter(|e| !e.health.ejected_by(now)).count() as u32;
                up * 100 < o.min_health_percent * n as u32
            }
        });
        let healthy = |i: usize| panic || !self.endpoints[i].health.ejected_by(now);
        match n {
            0 => return None,
            1 => return healthy(0).then_some(0),
            _ => {}
        }
        // Only the nearest locality level with a healthy endpoint takes traffic.
        let nearest = |farther: Option<u8>| {
            (0..n)
                .filter(|&i| healthy(i) && farther.is_none_or(|b| self.endpoints[i].priority > b))
                .map(|i| self.endpoints[i].priority)
                .min()
        };
        let level = nearest(beyond).or_else(|| nearest(None))?;
        // `distribute`: a locality group chosen by weight among those with a healthy endpoint.
        let group = self.weighted_group(&healthy);
        let usable = |i: usize| {
            healthy(i) && self.endpoints[i].priority == level && group.is_none_or(|g| self.endpoints[i].group == g)
        };
        let preferred = |i: usize| usable(i) && Some(i) != avoid;
        if let (Lb::Hash(_), Some(key)) = (&self.lb, hash) {
            let score = |i: usize| mix(key ^ self.endpoints[i].seed);
            let best = |ok: &dyn Fn(usize) -> bool| (0..n).filter(|&i| ok(i)).max_by_key(|&i| score(i));
            return best(&preferred).or_else(|| best(&usable));
        }
        let start = match self.lb {
            Lb::RoundRobin => self.counters.rr.fetch_add(1, Ordering::Relaxed) % n,
            _ => rand::random_range(0..n),
        };
        // The first preferred endpoint from `start` on, else any usable one.
        let scan = |start: usize, ok: &dyn Fn(usize) -> bool| (0..n).map(|k| (start + k) % n).find(|&i| ok(i));
        let pick = |start: usize| {
            let first = scan(start, &preferred).or_else(|| scan(start, &usable))?;
            if self.lb != Lb::LeastRequest {
                return Some(first);
            }
            // Power of two choices: compare with a second random pick.
            let other = rand::random_range(0..n);
            let load = |i: usize| self.endpoints[i].health.active.load(Ordering::Relaxed);
            Some(if other != first && preferred(other) && load(other) < load(first) { other } else { first })
        };
        let chosen = pick(start)?;
        let Some(warmup) = &self.warmup else { return Some(chosen) };
        // Slow start: a warming endpoint keeps a pick with probability equal
        // to its weight, else another pick is made (a few times at most).
        let weight = |i: usize| {
            let born = self.endpoints[i].health.born;
            warmup.weight(Duration::from_millis(now().saturating_sub(born)))
        };
        let mut candidate = chosen;
        for _ in 0..4 {
            let w = weight(candidate);
            if w >= 1.0 || rand::random::<f64>() < w {
                return Some(candidate);
            }
            candidate = pick(rand::random_range(0..n))?;
        }
        Some(candidate)
    }

    fn weighted_group(&self, healthy: &dyn Fn(usize) -> bool) -> Option<u16> {
        if self.locality_weights.is_empty() {
            return None;
        }
        let live = |g: usize| self.endpoints.iter().enumerate().any(|(i, e)| e.group as usize == g && healthy(i));
        let weights: Vec<u32> =
            self.locality_weights.iter().enumerate().map(|(g, w)| if live(g) { *w } else { 0 }).collect();
        let total: u32 = weights.iter().sum();
        if total == 0 {
            return None;
        }
        let mut r = rand::random_range(0..total);
        for (g, w) in weights.iter().enumerate() {
            if r < *w {
                return Some(g as u16);
            }
            r -= w;
        }
        None
    }

    /// Records an attempt's outcome for outlier detection: `status` is the
    /// upstream's answer, `None` for a connect failure or reset.
    pub fn record(&self, index: usize, status: Option<u16>) {
        let Some(policy) = &self.outlier else { return };
        let h = &self.endpoints[index].health;
        if policy.split_local_origin {
            if status.is_none() {
                let local = h.consecutive_local.fetch_add(1, Ordering::Relaxed) + 1;
                if policy.consecutive_local_origin > 0 && local >= policy.consecutive_local_origin && !h.is_ejected() {
                    self.try_eject(index, policy);
                }
                return;
            }
            // An answer means the connection worked.
            h.consecutive_local.store(0, Ordering::Relaxed);
        }
        let gateway_error = status.is_none_or(|s| matches!(s, 502..=504));
        let five_xx = status.is_none_or(|s| s >= 500);
        let c5 = if five_xx {
            h.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            h.consecutive_5xx.store(0, Ordering::Relaxed);
            0
        };
        let cg = if gateway_error {
            h.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            h.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let trip = (policy.consecutive_5xx > 0 && c5 >= policy.consecutive_5xx)
            || (policy.consecutive_gateway > 0 && cg >= policy.consecutive_gateway);
        if trip && !h.is_ejected() {
            self.try_eject(index, policy);
        }
    }

    fn try_eject(&self, index: usize, policy: &OutlierPolicy) {
        let _turn = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        if self.endpoints[index].health.is_ejected() {
            return; // another failure of the same endpoint got here first
        }
        let total = self.endpoints.len() as u32;
        let ejected = self.endpoints.iter().filter(|e| e.health.is_ejected()).count() as u32;
        // Like Envoy: the percentage caps ejections, but one host may always go.
        if ejected > 0 && (ejected + 1) * 100 > policy.max_ejection_percent * total {
            return;
        }
        let h = &self.endpoints[index].health;
        // The multiplier decays by one per interval spent healthy since the last ejection ended.
        let now = now_ms();
        let ended = h.ejected_until.load(Ordering::Relaxed);
        let healthy_intervals = if ended == 0 {
            0
        } else {
            (now.saturating_sub(ended) / (policy.interval.as_millis() as u64).max(1)).min(u32::MAX as u64) as u32
        };
        let times = h.times_ejected.load(Ordering::Relaxed).saturating_sub(healthy_intervals) + 1;
        h.times_ejected.store(times, Ordering::Relaxed);
        let duration = (policy.base_ejection * times).min(Duration::from_secs(300).max(policy.base_ejection));
        h.ejected_until.store(now + duration.as_millis() as u64, Ordering::Relaxed);
        h.consecutive_5xx.store(0, Ordering::Relaxed);
        h.consecutive_gateway.store(0, Ordering::Relaxed);
        h.consecutive_local.store(0, Ordering::Relaxed);
        tracing::warn!(cluster = %self.name, endpoint = %self.endpoints[index].address, ?duration, "outlier ejected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: usize, outlier: Option<OutlierPolicy>) -> Cluster {
        let endpoints = (0..n)
            .map(|i| {
                let address = format!("127.0.0.1:{}", 1000 + i);
                Endpoint {
                    workload: crate::telemetry::istio::Labelled::new(crate::telemetry::istio::Workload::unknown()),
                    authority: address.parse().unwrap(),
                    seed: stable_hash(address.as_bytes()),
                    address,
                    labels: BTreeMap::new(),
                    health: Arc::new(Health::default()),
                    priority: 0,
                    group: 0,
                }
            })
            .collect();
        Cluster::new("c".into(), endpoints, Lb::RoundRobin, outlier, None, Arc::default())
    }

    #[test]
    fn max_retries_caps_retries_in_flight() {
        let mut c = cluster(1, None);
        c.max_retries = Some(1);
        let first = c.admit_retry();
        assert!(first.is_some());
        assert!(c.admit_retry().is_none(), "a second concurrent retry exceeds maxRetries: 1");
        drop(first);
        assert!(c.admit_retry().is_some(), "the place frees when the retry ends");
    }

    /// Ejection on the first 5xx for `base_secs` × the multiplier; a 10 s interval.
    fn eject_on_first_5xx(base_secs: u64, max_ejection_percent: u32, min_health_percent: u32) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: 1,
            consecutive_gateway: 0,
            base_ejection: Duration::from_secs(base_secs),
            max_ejection_percent,
            min_health_percent,
            interval: Duration::from_secs(10),
            split_local_origin: false,
            consecutive_local_origin: 0,
        }
    }

    #[test]
    fn local_origin_failures_count_apart_when_split() {
        // Unsplit (the default): a connect failure counts as a 5xx.
        let c = cluster(2, Some(OutlierPolicy { consecutive_5xx: 2, ..eject_on_first_5xx(60, 100, 0) }));
        c.record(0, None);
        c.record(0, Some(503));
        assert!(c.endpoints[0].health.is_ejected());
        // Split: three local-origin failures eject; 5xx answers keep their own count.
        let policy = OutlierPolicy {
            consecutive_5xx: 2,
            split_local_origin: true,
            consecutive_local_origin: 3,
            ..eject_on_first_5xx(60, 100, 0)
        };
        let c = cluster(2, Some(policy));
        c.record(0, None);
        c.record(0, Some(503));
        assert!(!c.endpoints[0].health.is_ejected(), "one local failure and one 5xx are not two 5xx");
        c.record(0, None);
        assert!(!c.endpoints[0].health.is_ejected(), "an answer in between reset the local count");
        c.record(0, None);
        c.record(0, None);
        assert!(c.endpoints[0].health.is_ejected(), "three local-origin failures in a row");
        c.record(1, Some(500));
        c.record(1, Some(502));
        assert!(c.endpoints[1].health.is_ejected(), "two 5xx answers in a row");
    }

    #[test]
    fn new_endpoints_warm_up_over_the_window() {
        let warmup = Warmup { window: Duration::from_secs(60), minimum: 0.1, aggression: 1.0 };
        assert_eq!(warmup.weight(Duration::ZERO), 0.1);
        assert!((warmup.weight(Duration::from_secs(30)) - 0.5).abs() < 1e-9);
        assert_eq!(warmup.weight(Duration::from_secs(61)), 1.0);
        let steep = Warmup { aggression: 2.0, ..warmup };
        assert!((steep.weight(Duration::from_secs(15)) - 0.5).abs() < 1e-9, "aggression 2: sqrt(1/4)");

        for lb in [Lb::RoundRobin, Lb::LeastRequest] {
            let mut c = cluster(2, None);
            c.lb = lb.clone();
            c.warmup = Some(warmup);
            // Endpoint 1 joined just now, endpoint 0 long ago (born 0).
            c.endpoints[1].health = Arc::new(Health::new());
            let picks = 10_000;
            let new = (0..picks).filter(|_| c.pick(None, None) == Some(1)).count();
            // Weight 0.1 against 1: about 9% of picks, far below an even split.
            assert!((300..2000).contains(&new), "{lb:?}: the new endpoint got {new} of {picks}");
        }
        // Without warmup the split is even.
        let mut c = cluster(2, None);
        c.endpoints[1].health = Arc::new(Health::new());
        let new = (0..10_000).filter(|_| c.pick(None, None) == Some(1)).count();
        assert!((4000..6000).contains(&new), "{new}");
    }

    #[test]
    fn panic_mode_below_min_health_percent() {
        let policy = eject_on_first_5xx(60, 100, 60);
        let c = cluster(2, Some(policy));
        c.record(1, Some(500));
        assert!(c.endpoints[1].health.is_ejected());
        // 1 of 2 healthy is 50% < 60%: ejections are ignored, both endpoints serve.
        let picks: std::collections::BTreeSet<usize> = (0..10).filter_map(|_| c.pick(None, None)).collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn ejection_respects_max_percent_but_always_allows_one() {
        let policy = eject_on_first_5xx(60, 10, 0);
        let c = cluster(3, Some(policy));
        c.record(0, Some(503));
        c.record(1, None);
        assert!(c.endpoints[0].health.is_ejected(), "one host may always be ejected");
        assert!(!c.endpoints[1].health.is_ejected(), "a second would exceed 10%");
        assert_eq!(c.pick(None, None).map(|i| i != 0), Some(true));
    }

    #[test]
    fn ejection_time_grows_with_repeat_ejections_and_decays_while_healthy() {
        let policy = eject_on_first_5xx(30, 100, 0);
        let c = cluster(2, Some(policy));
        let h = &c.endpoints[0].health;
        let ejected_for = || h.ejected_until.load(Ordering::Relaxed).saturating_sub(now_ms());
        c.record(0, Some(500));
        assert!((29_000..=30_000).contains(&ejected_for()), "first ejection: 1 x 30 s");
        // The ejection ends now and the endpoint fails again at once: 2 x 30 s.
        h.ejected_until.store(now_ms(), Ordering::Relaxed);
        c.record(0, Some(500));
        assert!((59_000..=60_000).contains(&ejected_for()), "second ejection: 2 x 30 s, got {}", ejected_for());
        // It ended 25 s ago (two healthy intervals): the multiplier falls from 2 to 0, so the next is 1 x 30 s.
        h.ejected_until.store(now_ms().saturating_sub(25_000), Ordering::Relaxed);
        c.record(0, Some(500));
        assert!((29_000..=30_000).contains(&ejected_for()), "after a healthy spell: 1 x 30 s, got {}", ejected_for());
    }

    #[test]
    fn remote_locality_retries_move_to_the_next_level() {
        let mut c = cluster(3, None);
        c.endpoints[0].priority = 0;
        c.endpoints[1].priority = 2;
        c.endpoints[2].priority = 3;
        for _ in 0..10 {
            assert_eq!(c.pick(Some(0), None), Some(0), "the only local endpoint, even when it just failed");
            assert_eq!(c.pick_beyond(Some(0), None, Some(0)), Some(1), "the next level out");
            assert_eq!(c.pick_beyond(Some(1), None, Some(2)), Some(2));
            assert_eq!(c.pick_beyond(Some(2), None, Some(3)), Some(0), "nothing farther: back to the nearest");
        }
    }

    #[test]
    fn distribute_splits_by_locality_weight() {
        let mut c = cluster(3, None);
        c.locality_weights = vec![80, 20];
        c.endpoints[0].group = 0;
        c.endpoints[1].group = 1;
        c.endpoints[2].group = u16::MAX;
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[c.pick(None, None).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "an endpoint no `to` entry names gets nothing");
        assert!((7_700..=8_300).contains(&counts[0]), "{counts:?}");
    }
}
