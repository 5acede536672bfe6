//! Rate limits on routes (`RateLimitPolicy`): token buckets kept per key
//! (client IP, consumer, header, JWT claim, path or one for all), checked
//! with GCRA: one timestamp per key, updated under a short lock on one of
//! a few shards. Buckets live in a registry outside the snapshot, so a
//! configuration change that does not touch a limit does not refill it.
//! Per process: several gateway replicas each count their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use meshgate_model::policy::LimitKey;

const SHARDS: usize = 16;
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// Keys kept per shard before stale ones are swept (and, past twice
/// this, the oldest dropped: a flood of new keys costs memory no more).
const SHARD_KEYS: usize = 16_384;

/// One token bucket per key: `capacity` at once, refilled one token every `interval`.
pub struct Limiter {
    pub capacity: u32,
    /// `requests` and `per`, for the `RateLimit-Limit` header.
    pub requests: u32,
    pub per: Duration,
    /// `RateLimit-Limit`, made once.
    limit_header: HeaderValue,
    interval_ns: u64,
    shards: [Mutex<HashMap<u64, u64>>; SHARDS],
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Tokens left after this request.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// When refused: seconds until one token is back.
    pub retry_after_secs: u64,
}

impl Limiter {
    pub fn new(requests: u32, per: Duration, burst: Option<u32>) -> Limiter {
        let requests = requests.max(1);
        let capacity = burst.unwrap_or(requests).max(1);
        let limit_header = HeaderValue::from_str(&format!("{capacity}, {requests};w={}", per.as_secs().max(1)))
            .unwrap_or(HeaderValue::from_static("0"));
        Limiter {
            capacity,
            requests,
            per,
            limit_header,
            interval_ns: (per.as_nanos() / u128::from(requests)).max(1) as u64,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// Takes a token from `key`'s bucket at `now_ns` (a monotonic clock).
    pub fn check(&self, key: u64, now_ns: u64) -> Decision {
        let (i, cap) = (self.interval_ns, u64::from(self.capacity));
        let window = i * cap;
        let mut shard =
            self.shards[(super::upstream::mix(key) % SHARDS as u64) as usize].lock().unwrap_or_else(|e| e.into_inner());
        // GCRA: `tat` is when the bucket would be full again; a request moves it on by one interval.
        let tat = shard.get(&key).copied().unwrap_or(0).max(now_ns);
        let next = tat + i;
        if next - now_ns > window {
            let wait = next - now_ns - window;
            return Decision {
                allowed: false,
                remaining: 0,
                reset_secs: (tat - now_ns).div_ceil(1_000_000_000),
                retry_after_secs: wait.div_ceil(1_000_000_000).max(1),
            };
        }
        if shard.len() >= SHARD_KEYS && !shard.contains_key(&key) {
            shard.retain(|_, t| *t > now_ns);
            if shard.len() >= 2 * SHARD_KEYS {
                shard.clear();
            }
        }
        shard.insert(key, next);
        Decision {
            allowed: true,
            remaining: ((window - (next - now_ns)) / i) as u32,
            reset_secs: (next - now_ns).div_ceil(1_000_000_000),
            retry_after_secs: 0,
        }
    }
}

/// A monotonic clock in nanoseconds, shared by every limiter.
pub fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Limiters by policy and limit, kept while some snapshot uses them and
/// their parameters stay the same.
#[derive(Default)]
pub struct LimiterRegistry {
    limiters: super::kept::Kept<String, Limiter>,
    in_flight: super::kept::Kept<String, AtomicU32>,
}

impl LimiterRegistry {
    pub fn limiter(&self, id: &str, requests: u32, per: Duration, burst: Option<u32>) -> Arc<Limiter> {
        let key = format!("{id}|{requests}|{}|{burst:?}", per.as_nanos());
        self.limiters.get_or(key, || Limiter::new(requests, per, burst)).0
    }

    /// The in-flight counter of one route under one policy.
    pub fn in_flight(&self, id: &str) -> Arc<AtomicU32> {
        self.in_flight.get_or(id.to_string(), || AtomicU32::new(0)).0
    }

    pub fn prune(&self) {
        self.limiters.prune();
        self.in_flight.prune();
    }
}

/// The limits of the policies on one route.
pub struct RouteLimits {
    pub rules: Vec<Rule>,
    /// At most this many requests in flight on the route: (cap, counter).
    pub concurrency: Option<(u32, Arc<AtomicU32>)>,
}

pub struct Rule {
    pub consumers: Vec<String>,
    pub header: Option<(HeaderName, Vec<String>)>,
    pub key: LimitKey,
    pub limiter: Arc<Limiter>,
}

/// What the request looks like to the limits.
pub struct Caller<'a> {
    pub ip: std::net::IpAddr,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub consumer: Option<&'a super::keyauth::Consumer>,
    pub identity: Option<&'a super::authn::Identity>,
}

/// The outcome: refused with the 429's headers, or allowed with the
/// headers the response carries.
pub enum Verdict {
    Allowed(Option<Decision>, Option<Arc<Limiter>>),
    Limited(Decision, Arc<Limiter>),
}

impl RouteLimits {
    /// Takes a token from the first limit this request falls under.
    pub fn check(&self, c: &Caller<'_>) -> Verdict {
        let Some(rule) = self.rules.iter().find(|r| r.applies(c)) else { return Verdict::Allowed(None, None) };
        let key = match &rule.key {
            LimitKey::Global => 0,
            LimitKey::ClientIp => ip_key(c.ip),
            LimitKey::Path => super::upstream::stable_hash(c.path.as_bytes()),
            LimitKey::Consumer => match c.consumer {
                Some(who) => super::upstream::stable_hash(format!("{}/{}", who.namespace, who.name).as_bytes()),
                // Without a consumer, the caller's address stands in.
                None => ip_key(c.ip) ^ 1,
            },
            LimitKey::Header(name) => {
                super::upstream::stable_hash(c.headers.get(name.as_str()).map_or(&b""[..], |v| v.as_bytes()))
            }
            LimitKey::Claim(path) => {
                let values = c.identity.map(|id| id.claim(path)).unwrap_or_default();
                super::upstream::stable_hash(values.join(",").as_bytes())
            }
        };
        let d = rule.limiter.check(key, now_ns());
        if d.allowed {
            Verdict::Allowed(Some(d), Some(rule.limiter.clone()))
        } else {
            Verdict::Limited(d, rule.limiter.clone())
        }
    }
}

/// An address as a bucket key, without formatting it.
fn ip_key(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(a) => super::upstream::mix(u64::from(u32::from(a)) | (4 << 32)),
        std::net::IpAddr::V6(a) => super::upstream::stable_hash(&a.octets()),
    }
}

impl Rule {
    fn applies(&self, c: &Caller<'_>) -> bool {
        (self.consumers.is_empty() || c.consumer.is_some_and(|who| who.is_one_of(&self.consumers)))
            && self.header.as_ref().is_none_or(|(name, values)| {
                c.headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| values.iter().any(|x| x == v))
            })
    }
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (the IETF draft's fields).
pub fn headers(h: &mut HeaderMap, d: &Decision, l: &Limiter) {
    h.insert(&RATELIMIT_LIMIT, l.limit_header.clone());
    h.insert(&RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
    h.insert(&RATELIMIT_RESET, HeaderValue::from(d.reset_secs));
}

/// Counts a request in flight until dropped.
pub struct InFlight(Arc<AtomicU32>);

impl InFlight {
    /// Enters if fewer than `cap` are in flight.
    pub fn enter(counter: &Arc<AtomicU32>, cap: u32) -> Option<InFlight> {
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).ok()?;
        Some(InFlight(counter.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn n_pass_the_next_is_refused_and_the_window_refills() {
        let l = Limiter::new(10, Duration::from_secs(60), None);
        let t0 = 1_000 * SEC;
        for i in 0..10 {
            let d = l.check(7, t0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
        }
        let refused = l.check(7, t0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 6, "one token every 6 s");
        assert!(l.check(8, t0).allowed, "another key has its own bucket");
        // One token back after 6 s, not two.
        assert!(l.check(7, t0 + 6 * SEC).allowed);
        assert!(!l.check(7, t0 + 6 * SEC).allowed);
        // After the whole window, the whole bucket.
        let later = t0 + 66 * SEC;
        for i in 0..10 {
            assert!(l.check(7, later).allowed, "after the window, request {i}");
        }
        assert!(!l.check(7, later).allowed);
    }

    #[test]
    fn burst_sets_the_bucket_size() {
        let l = Limiter::new(1, Duration::from_secs(1), Some(3));
        let t = 5 * SEC;
        assert!((0..3).all(|_| l.check(1, t).allowed));
        assert!(!l.check(1, t).allowed);
        assert!(l.check(1, t + SEC).allowed, "refilled at one a second");
    }

    #[test]
    fn concurrency_caps_requests_in_flight() {
        let c = Arc::new(AtomicU32::new(0));
        let a = InFlight::enter(&c, 2).unwrap();
        let _b = InFlight::enter(&c, 2).unwrap();
        assert!(InFlight::enter(&c, 2).is_none());
        drop(a);
        assert!(InFlight::enter(&c, 2).is_some());
    }
}
