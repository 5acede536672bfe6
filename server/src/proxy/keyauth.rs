//! API keys (`ApiKeyAuth`, `Consumer`): a key names its consumer, looked
//! up by its SHA-256 (a fixed-size digest, so the lookup's time says
//! nothing about how close a guess was); the consumer's name goes upstream
//! in a header and is what rate limits key on.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use sha2::Digest as _;

/// Who an API key belongs to; kept in the request's extensions.
#[derive(Debug)]
pub struct Consumer {
    pub namespace: String,
    pub name: String,
}

impl Consumer {
    /// Whether `names` (a RateLimitPolicy's `consumers`) names this one: `name` or `namespace/name`.
    pub fn is_one_of(&self, names: &[String]) -> bool {
        names.iter().any(|n| match n.split_once('/') {
            Some((ns, name)) => ns == self.namespace && name == self.name,
            None => *n == self.name,
        })
    }
}

/// The keys in force: SHA-256 → consumer.
#[derive(Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Arc<Consumer>>,
}

impl ApiKeys {
    /// From the store's `(hex SHA-256, namespace, consumer)` rows, keeping
    /// only keys whose consumer exists (`exists`).
    pub fn new(rows: Vec<(String, String, String)>, exists: impl Fn(&str, &str) -> bool) -> ApiKeys {
        let mut by_hash = HashMap::new();
        for (hash, namespace, name) in rows {
            let Some(digest) = hex::decode(&hash).ok().and_then(|d| <[u8; 32]>::try_from(d).ok()) else { continue };
            if exists(&namespace, &name) {
                by_hash.insert(digest, Arc::new(Consumer { namespace, name }));
            }
        }
        ApiKeys { by_hash }
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    fn find(&self, key: &str) -> Option<&Arc<Consumer>> {
        let digest: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&digest)
    }
}

#[derive(Clone)]
enum Location {
    Header(HeaderName),
    Query(String),
}

/// An `ApiKeyAuth` on a route.
pub struct KeyAuth {
    locations: Vec<Location>,
    required: bool,
    allow_jwt: bool,
    consumer_header: HeaderName,
    forward_key: bool,
    keys: Arc<ApiKeys>,
}

pub enum Outcome {
    Consumer(Arc<Consumer>),
    /// No key, and none needed.
    Anonymous,
    /// 401, with the reason as the body.
    Refused(&'static str),
}

impl KeyAuth {
    pub fn new(spec: &meshgate_model::policy::ApiKeyAuthSpec, keys: Arc<ApiKeys>) -> KeyAuth {
        let mut locations: Vec<Location> = spec
            .from
            .iter()
            .filter_map(|l| match (&l.header, &l.query) {
                (Some(h), _) => HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok().map(Location::Header),
                (None, Some(q)) => Some(Location::Query(q.clone())),
                _ => None,
            })
            .collect();
        if spec.from.is_empty() {
            locations = vec![Location::Header(HeaderName::from_static("x-api-key")), Location::Query("apikey".into())];
        }
        let consumer_header = spec
            .consumer_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
            .unwrap_or(HeaderName::from_static("x-consumer"));
        KeyAuth {
            locations,
            required: spec.required.unwrap_or(true),
            allow_jwt: spec.allow_jwt.unwrap_or(false),
            consumer_header,
            forward_key: spec.forward_key.unwrap_or(false),
            keys,
        }
    }

    /// Checks the request's key; sets the consumer header (dropping any the
    /// client sent) and, unless `forwardKey`, removes the key header.
    pub fn check(&self, uri: &Uri, headers: &mut HeaderMap, has_jwt: bool) -> Outcome {
        headers.remove(&self.consumer_header);
        let found = self.locations.iter().find_map(|l| match l {
            Location::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()).map(|k| (l, k.trim().to_string())),
            Location::Query(q) => {
                uri.query().and_then(|query| super::query_value(query, q)).map(|k| (l, k.to_string()))
            }
        });
        let Some((location, key)) = found.filter(|(_, k)| !k.is_empty()) else {
            return if self.required && !(self.allow_jwt && has_jwt) {
                Outcome::Refused("No API key found in request\n")
            } else {
                Outcome::Anonymous
            };
        };
        let Some(consumer) = self.keys.find(&key) else { return Outcome::Refused("Invalid API key\n") };
        if !self.forward_key
            && let Location::Header(h) = location
        {
            let h = h.clone();
            headers.remove(&h);
        }
        if let Ok(v) = HeaderValue::from_str(&consumer.name) {
            headers.insert(self.consumer_header.clone(), v);
        }
        Outcome::Consumer(consumer.clone())
    }
}

/// The 401 for a missing or bad key.
pub fn unauthorized(why: &'static str) -> http::Response<super::ProxyBody> {
    let mut resp = super::handler::local(http::StatusCode::UNAUTHORIZED, "UAEX", why);
    resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Key realm=\"meshgate\""));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_consumer_and_bad_ones_are_refused() {
        let key = "mgk_secret";
        let hash = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        let gone = hex::encode(sha2::Sha256::digest(b"mgk_orphan"));
        let rows = vec![(hash, "default".into(), "acme".into()), (gone, "default".into(), "deleted".into())];
        let keys = Arc::new(ApiKeys::new(rows, |_, name| name == "acme"));
        assert_eq!(keys.len(), 1, "a key of a consumer that no longer exists is inert");
        let spec: meshgate_model::policy::ApiKeyAuthSpec =
            serde_json::from_value(serde_json::json!({"targetRefs": []})).unwrap();
        let auth = KeyAuth::new(&spec, keys);
        let uri: Uri = "/x".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("mgk_secret"));
        h.insert("x-consumer", HeaderValue::from_static("spoofed"));
        assert!(matches!(auth.check(&uri, &mut h, false), Outcome::Consumer(c) if c.name == "acme"));
        assert_eq!(h["x-consumer"], "acme");
        assert!(h.get("x-api-key").is_none(), "the key is not forwarded");
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("mgk_orphan"));
        assert!(matches!(auth.check(&uri, &mut h, false), Outcome::Refused("Invalid API key\n")));
        assert!(matches!(auth.check(&uri, &mut HeaderMap::new(), false), Outcome::Refused(_)));
        let by_query: Uri = "/x?apikey=mgk_secret".parse().unwrap();
        assert!(matches!(auth.check(&by_query, &mut HeaderMap::new(), false), Outcome::Consumer(_)));
        assert!(
            matches!(auth.check(&uri, &mut HeaderMap::new(), true), Outcome::Refused(_)),
            "a JWT alone is not enough"
        );

        // "A valid JWT or a valid API key": allowJwt.
        let either: meshgate_model::policy::ApiKeyAuthSpec =
            serde_json::from_value(serde_json::json!({"targetRefs": [], "allowJwt": true})).unwrap();
        let keys = Arc::new(ApiKeys::default());
        let auth = KeyAuth::new(&either, keys);
        assert!(matches!(auth.check(&uri, &mut HeaderMap::new(), true), Outcome::Anonymous));
        assert!(matches!(auth.check(&uri, &mut HeaderMap::new(), false), Outcome::Refused(_)));
    }
}
