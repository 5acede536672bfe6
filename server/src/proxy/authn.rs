//! RequestAuthentication as a proxy enforces it: where tokens are looked
//! for, which issuer's keys check them, and what a checked token leaves on
//! the request (Istio's semantics: a request without a token passes as
//! anonymous and AuthorizationPolicy decides; a token that fails is 401).
//! Remote JWKS are fetched in the background, refreshed, and kept when a
//! refresh fails: a JWKS outage never holds up a request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use meshgate_model::security::RequestAuthenticationSpec;
use serde_json::{Map, Value};

use super::jwt::{self, Jwks, JwtError};

/// How often a remote JWKS is fetched again (Istio's default).
const REFRESH: Duration = Duration::from_secs(20 * 60);
/// A token with an unknown `kid` asks for a refresh at most this often.
const REFRESH_ON_UNKNOWN_KID: Duration = Duration::from_secs(2);
/// Claims Istio splits on spaces when matching (`scope`, `permission`).
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// The compiled RequestAuthentication rules that apply to one proxy.
#[derive(Default)]
pub struct Authn {
    rules: Vec<Rule>,
    /// Headers a checked token writes: removed from every request first,
    /// so a client cannot send them itself.
    outputs: Vec<HeaderName>,
    cache: Cache,
}

/// Tokens checked lately (Envoy's JWT cache): a client that sends the same
/// token again costs a hash lookup, not a signature check. Time claims are
/// checked again on every use; an entry lives at most [`CACHE_FOR`].
#[derive(Default)]
struct Cache {
    shards: [Mutex<HashMap<u64, Cached>>; 8],
}

struct Cached {
    token: Box<str>,
    location: Location,
    rule: usize,
    identity: Arc<Identity>,
    exp: Option<i64>,
    nbf: Option<i64>,
    until_ms: u64,
}

const CACHE_FOR: Duration = Duration::from_secs(300);
const CACHE_PER_SHARD: usize = 512;

struct Rule {
    issuer: String,
    audiences: Vec<String>,
    locations: Vec<Location>,
    keys: Keys,
    forward: bool,
    payload_header: Option<HeaderName>,
    /// Header ← claim (its path, nested objects by name).
    claim_headers: Vec<(HeaderName, Vec<String>)>,
    space_delimited: Vec<String>,
}

#[derive(Clone, PartialEq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

enum Keys {
    Inline(Arc<Jwks>),
    Remote(Arc<RemoteJwks>),
    /// The inline JWKS does not parse: every token of this issuer fails.
    Broken,
}

/// Who a checked token says the caller is.
#[derive(Debug)]
pub struct Identity {
    /// `iss/sub`, as AuthorizationPolicy's `requestPrincipals` names it.
    pub principal: String,
    pub claims: Map<String, Value>,
    space_delimited: Vec<String>,
}

impl Identity {
    #[cfg(test)]
    pub fn for_tests(principal: &str, claims: Value) -> Identity {
        let Value::Object(claims) = claims else { panic!("claims must be an object") };
        Identity {
            principal: principal.to_string(),
            claims,
            space_delimited: SPACE_DELIMITED.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The values of the claim at `path` (nested objects by name), as text:
    /// each element of a list, and each word of a space-delimited claim.
    pub fn claim<S: AsRef<str>>(&self, path: &[S]) -> Vec<String> {
        let Some((first, rest)) = path.split_first() else { return Vec::new() };
        let first = first.as_ref();
        let mut v = self.claims.get(first);
        for name in rest {
            v = v.and_then(|v| v.get(name.as_ref()));
        }
        let split = path.len() == 1 && self.space_delimited.iter().any(|c| c == first);
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        match v {
            Some(Value::Array(list)) => list.iter().filter_map(text).collect(),
            Some(Value::String(s)) if split => s.split_whitespace().map(str::to_string).collect(),
            Some(other) => text(other).into_iter().collect(),
            None => Vec::new(),
        }
    }
}

pub enum Outcome {
    /// No token anywhere this proxy looks.
    Anonymous,
    Authenticated(Arc<Identity>),
    Refused(JwtError),
}

impl Authn {
    /// Compiles the rules of `policies` (each `(namespace/name, spec)`);
    /// remote JWKS come from `registry`, which fetches them.
    pub fn compile<'a>(
        policies: impl IntoIterator<Item = (String, &'a RequestAuthenticationSpec)>,
        registry: &JwksRegistry,
    ) -> Authn {
        let mut out = Authn::default();
        for (name, spec) in policies {
            for r in &spec.jwt_rules {
                let Some(issuer) = r.issuer.clone().filter(|i| !i.is_empty()) else { continue };
                let mut locations: Vec<Location> = r
                    .from_headers
                    .iter()
                    .filter_map(|h| {
                        let name = HeaderName::from_bytes(h.name.as_deref()?.as_bytes()).ok()?;
                        Some(Location::Header { name, prefix: h.prefix.clone().unwrap_or_default() })
                    })
                    .collect();
                locations.extend(r.from_params.iter().map(|p| Location::Param(p.clone())));
                locations.extend(r.from_cookies.iter().map(|c| Location::Cookie(c.clone())));
                if r.from_headers.is_empty() && r.from_params.is_empty() && r.from_cookies.is_empty() {
                    locations
                        .push(Location::Header { name: http::header::AUTHORIZATION, prefix: "Bearer ".to_string() });
                    locations.push(Location::Param("access_token".to_string()));
                }
                let keys = match (&r.jwks, &r.jwks_uri) {
                    (Some(inline), _) => match Jwks::parse(inline) {
                        Ok(k) => Keys::Inline(Arc::new(k)),
                        Err(e) => {
                            tracing::warn!(policy = %name, %issuer, error = %e, "RequestAuthentication: the inline jwks is unusable; tokens of this issuer are refused");
                            Keys::Broken
                        }
                    },
                    (None, Some(uri)) => {
                        let timeout = r
                            .timeout
                            .as_deref()
                            .and_then(|t| meshgate_model::check::parse_duration(t).ok())
                            .filter(|t| !t.is_zero())
                            .unwrap_or(Duration::from_secs(5));
                        Keys::Remote(registry.get(uri, timeout))
                    }
                    (None, None) => {
                        tracing::warn!(policy = %name, %issuer, "RequestAuthentication: neither jwks nor jwksUri; tokens of this issuer are refused");
                        Keys::Broken
                    }
                };
                let header = |h: &str| HeaderName::from_bytes(h.as_bytes()).ok();
                let payload_header = r.output_payload_to_header.as_deref().and_then(header);
                let claim_headers: Vec<(HeaderName, Vec<String>)> = r
                    .output_claim_to_headers
                    .iter()
                    .filter_map(|c| {
                        let path = c.claim.as_deref()?.split('.').map(str::to_string).collect();
                        Some((header(c.header.as_deref()?)?, path))
                    })
                    .collect();
                out.outputs.extend(payload_header.iter().cloned());
                out.outputs.extend(claim_headers.iter().map(|(h, _)| h.clone()));
                let mut space_delimited: Vec<String> = SPACE_DELIMITED.iter().map(|s| s.to_string()).collect();
                space_delimited.extend(r.space_delimited_claims.iter().cloned());
                out.rules.push(Rule {
                    issuer,
                    audiences: r.audiences.clone(),
                    locations,
                    keys,
                    forward: r.forward_original_token == Some(true),
                    payload_header,
                    claim_headers,
                    space_delimited,
                });
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Finds and checks the request's token; on success, applies what the
    /// rule asks (drops the token unless `forwardOriginalToken`, writes
    /// the payload and claim headers).
    pub fn authenticate(&self, uri: &Uri, headers: &mut HeaderMap, now: i64) -> Outcome {
        for h in &self.outputs {
            headers.remove(h);
        }
        let Some((location, token)) = self.find(uri, headers) else { return Outcome::Anonymous };
        let key = super::upstream::stable_hash(token.as_bytes());
        let shard = &self.cache.shards[(key % 8) as usize];
        let hit = {
            let cached = shard.lock().unwrap_or_else(|e| e.into_inner());
            cached
                .get(&key)
                .filter(|c| *c.token == *token && c.location == *location && c.until_ms > clock_ms())
                .map(|c| (c.rule, c.identity.clone(), c.exp, c.nbf))
        };
        if let Some((rule, identity, exp, nbf)) = hit {
            if exp.is_some_and(|exp| now > exp + jwt::SKEW_SECS) {
                return Outcome::Refused(JwtError::Expired);
            }
            if nbf.is_some_and(|nbf| now + jwt::SKEW_SECS < nbf) {
                return Outcome::Refused(JwtError::NotYetValid);
            }
            return self.accept(&self.rules[rule], location, &token, identity, headers);
        }
        let decoded = match jwt::decode(&token) {
            Ok(d) => d,
            Err(e) => return Outcome::Refused(e),
        };
        // The token's issuer picks the rule, among those that look where it was found.
        let Some(rule_index) = self
            .rules
            .iter()
            .position(|r| Some(r.issuer.as_str()) == decoded.issuer() && r.locations.contains(location))
        else {
            return Outcome::Refused(JwtError::Issuer);
        };
        let rule = &self.rules[rule_index];
        let checked = match &rule.keys {
            Keys::Inline(keys) => jwt::verify(&decoded, keys),
            Keys::Remote(remote) => match remote.keys.load_full() {
                Some(keys) => {
                    let result = jwt::verify(&decoded, &keys);
                    if result == Err(JwtError::NoKey) {
                        remote.refresh_soon();
                    }
                    result
                }
                None => Err(JwtError::NoJwks),
            },
            Keys::Broken => Err(JwtError::NoJwks),
        };
        if let Err(e) = checked.and_then(|()| jwt::check_claims(&decoded.claims, &rule.issuer, &rule.audiences, now)) {
            return Outcome::Refused(e);
        }
        let sub = decoded.claims.get("sub").and_then(Value::as_str).unwrap_or_default();
        let time = |name: &str| decoded.claims.get(name).and_then(Value::as_f64).map(|t| t as i64);
        let (exp, nbf) = (time("exp"), time("nbf"));
        let identity = Arc::new(Identity {
            principal: format!("{}/{sub}", rule.issuer),
            claims: decoded.claims,
            space_delimited: rule.space_delimited.clone(),
        });
        {
            let mut cached = shard.lock().unwrap_or_else(|e| e.into_inner());
            if cached.len() >= CACHE_PER_SHARD {
                let now_ms = clock_ms();
                cached.retain(|_, c| c.until_ms > now_ms);
                if cached.len() >= CACHE_PER_SHARD {
                    cached.clear();
                }
            }
            cached.insert(
                key,
                Cached {
                    token: token.as_str().into(),
                    location: location.clone(),
                    rule: rule_index,
                    identity: identity.clone(),
                    exp,
                    nbf,
                    until_ms: clock_ms() + CACHE_FOR.as_millis() as u64,
                },
            );
        }
        self.accept(rule, location, &token, identity, headers)
    }

    /// A checked token: drops it unless `forwardOriginalToken`, writes the
    /// payload and claim headers.
    fn accept(
        &self,
        rule: &Rule,
        location: &Location,
        token: &str,
        identity: Arc<Identity>,
        headers: &mut HeaderMap,
    ) -> Outcome {
        if !rule.forward
            && let Location::Header { name, .. } = location
        {
            headers.remove(name);
        }
        if let Some(h) = &rule.payload_header
            && let Some(payload) = token.split('.').nth(1)
            && let Ok(v) = HeaderValue::from_str(payload)
        {
            headers.insert(h.clone(), v);
        }
        for (h, path) in &rule.claim_headers {
            let values = identity.claim(path);
            if let Some(v) = (!values.is_empty()).then(|| values.join(",")).and_then(|v| HeaderValue::from_str(&v).ok())
            {
                headers.insert(h.clone(), v);
            }
        }
        Outcome::Authenticated(identity)
    }

    /// The first token found, in rule order, and where.
    fn find(&self, uri: &Uri, headers: &HeaderMap) -> Option<(&Location, String)> {
        for rule in &self.rules {
            for location in &rule.locations {
                let found = match location {
                    Location::Header { name, prefix } => headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix(prefix.as_str()))
                        .map(|t| t.trim().to_string()),
                    Location::Param(p) => uri.query().and_then(|q| super::query_value(q, p)).map(str::to_string),
                    Location::Cookie(c) => super::cookie_value(headers, c).map(str::to_string),
                };
                if let Some(token) = found.filter(|t| !t.is_empty()) {
                    return Some((location, token));
                }
            }
        }
        None
    }
}

/// The 401 for a refused token, as Envoy answers it.
pub fn unauthorized(e: &JwtError) -> http::Response<super::ProxyBody> {
    let mut resp = super::handler::local(http::StatusCode::UNAUTHORIZED, "UAEX", e.body());
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"meshgate\", error=\"invalid_token\""),
    );
    resp
}

/// A JWKS fetched from its URI in the background and kept.
pub struct RemoteJwks {
    pub uri: String,
    keys: ArcSwapOption<Jwks>,
    wake: Arc<tokio::sync::Notify>,
    /// When a refresh for an unknown `kid` was last asked for (ms on the process clock).
    asked_ms: AtomicU64,
}

impl RemoteJwks {
    /// Asks the fetcher for a refresh now (a token named a key it has not
    /// seen: the issuer may have rotated), at most every few seconds.
    fn refresh_soon(&self) {
        let now = clock_ms();
        let last = self.asked_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= REFRESH_ON_UNKNOWN_KID.as_millis() as u64)
            && self.asked_ms.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.wake.notify_one();
        }
    }

    pub fn fetched(&self) -> bool {
        self.keys.load().is_some()
    }
}

fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// One fetcher per JWKS URI, shared by every snapshot that uses it; a
/// fetcher stops once no snapshot does.
#[derive(Default)]
pub struct JwksRegistry {
    kept: super::kept::Kept<String, RemoteJwks>,
}

impl JwksRegistry {
    pub fn get(&self, uri: &str, timeout: Duration) -> Arc<RemoteJwks> {
        let (remote, new) = self.kept.get_or(uri.to_string(), || RemoteJwks {
            uri: uri.to_string(),
            keys: ArcSwapOption::empty(),
            wake: Arc::new(tokio::sync::Notify::new()),
            asked_ms: AtomicU64::new(0),
        });
        if new && let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(keep_fetched(Arc::downgrade(&remote), remote.wake.clone(), timeout));
        }
        remote
    }

    pub fn prune(&self) {
        self.kept.prune();
    }
}

async fn keep_fetched(remote: Weak<RemoteJwks>, wake: Arc<tokio::sync::Notify>, timeout: Duration) {
    let mut failures = 0u32;
    loop {
        let Some(r) = remote.upgrade() else { return };
        let uri = r.uri.clone();
        let wait = match fetch(&uri, timeout).await.and_then(|text| Jwks::parse(&text)) {
            Ok(keys) => {
                tracing::debug!(%uri, keys = keys.len(), "JWKS fetched");
                r.keys.store(Some(Arc::new(keys)));
                failures = 0;
                REFRESH
            }
            Err(e) => {
                failures += 1;
                let kept = if r.fetched() { "keeping the last good keys" } else { "tokens of this issuer are refused" };
                tracing::warn!(%uri, error = %e, "cannot fetch the JWKS; {kept}");
                Duration::from_secs(1 << failures.min(6))
            }
        };
        drop(r);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
    }
}

/// GET `uri` (http or https, the system's roots), its body as text.
pub async fn fetch(uri: &str, limit: Duration) -> Result<String, String> {
    use http_body_util::BodyExt as _;
    let parsed: Uri = uri.parse().map_err(|e| format!("{uri:?} is not a URL: {e}"))?;
    let tls = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{uri:?}: only http and https URLs")),
    };
    let host = parsed.host().ok_or_else(|| format!("{uri:?} has no host"))?.trim_matches(['[', ']']).to_string();
    let port = parsed.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = parsed.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect: {e}"))?;
        let req = http::Request::get(path)
            .header(http::header::HOST, parsed.authority().map_or(host.as_str(), |a| a.as_str()))
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "meshgate")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = if tls {
            let config = super::tls::web_client_config()?;
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let stream =
                tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(|e| e.to_string())?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(|e| e.to_string())?
        };
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), 1 << 20);
        let bytes = body.collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
        String::from_utf8(bytes.to_vec()).map_err(|_| "the body is not UTF-8".to_string())
    };
    tokio::time::timeout(limit, work).await.map_err(|_| format!("no answer within {}ms", limit.as_millis()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cached_token_is_checked_for_time_on_every_use() {
        let (key, jwk) = jwt::tests::es256("k");
        let spec: RequestAuthenticationSpec = serde_json::from_value(
            json!({"jwtRules": [{"issuer": "i", "jwks": json!({"keys": [jwk]}).to_string(), "forwardOriginalToken": true}]}),
        )
        .unwrap();
        let authn = Authn::compile([("ns/ra".to_string(), &spec)], &JwksRegistry::default());
        let claims = json!({"iss": "i", "sub": "s", "exp": 1000});
        let token = jwt::tests::sign_es256(&key, &json!({"alg": "ES256", "kid": "k"}), &claims);
        let uri: Uri = "/".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        for _ in 0..2 {
            match authn.authenticate(&uri, &mut h.clone(), 900) {
                Outcome::Authenticated(id) => assert_eq!(id.principal, "i/s"),
                _ => panic!("the token should pass (checked, then from the cache)"),
            }
        }
        assert!(matches!(authn.authenticate(&uri, &mut h.clone(), 1100), Outcome::Refused(JwtError::Expired)));
        // The same token in another place is not taken from the cache for the first.
        let by_query: Uri = format!("/?access_token={token}").parse().unwrap();
        assert!(matches!(authn.authenticate(&by_query, &mut HeaderMap::new(), 900), Outcome::Authenticated(_)));
    }
}
