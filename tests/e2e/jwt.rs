//! RequestAuthentication and AuthorizationPolicy at the edge gateway, with
//! real keys made here, tokens signed here and a real JWKS served over HTTP.

use std::io::{BufRead as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::support::Server;
use crate::upstream::Upstream;

const ISSUER: &str = "https://auth.example.com";

fn enc(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An ES256 key made now, with its JWK.
struct SigningKey {
    kid: String,
    key: EcdsaKeyPair,
    jwk: Value,
}

impl SigningKey {
    fn new(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let p = key.public_key().as_ref();
        let jwk =
            json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "x": enc(&p[1..33]), "y": enc(&p[33..65])});
        SigningKey { kid: kid.to_string(), key, jwk }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with(&json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}), claims)
    }

    fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", enc(header.to_string().as_bytes()), enc(claims.to_string().as_bytes()));
        let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", enc(sig.as_ref()))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A JWKS endpoint: answers every request with the current key set, or 503 while down.
struct JwksServer {
    url: String,
    body: Arc<Mutex<Option<String>>>,
    /// Requests answered so far.
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    fn start(keys: &[&SigningKey]) -> JwksServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let body: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (body.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut r = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let current = served.lock().unwrap().clone();
                let mut w = stream;
                let _ = match current {
                    Some(b) => write!(
                        w,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                        b.len()
                    ),
                    None => {
                        write!(w, "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    }
                };
            }
        });
        let s = JwksServer { url, body, hits };
        s.serve(keys);
        s
    }

    fn serve(&self, keys: &[&SigningKey]) {
        let set = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        *self.body.lock().unwrap() = Some(set.to_string());
    }

    fn down(&self) {
        *self.body.lock().unwrap() = None;
    }
}

fn setup(server: &Server, app: &Upstream, jwks_url: &str) {
    server.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [api.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: api}}\nspec:\n  hosts: [api.example.com]\n  gateways: [gw]\n  http:\n  - match: [{{uri: {{prefix: /v1/users}}, headers: {{'@request.auth.claims.group': {{exact: beta}}}}}}]\n    route: [{{destination: {{host: users.internal}}}}]\n    headers: {{request: {{set: {{x-route: beta}}}}}}\n  - route: [{{destination: {{host: users.internal}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: users}}\nspec:\n  hosts: [users.internal]\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  jwtRules:\n  - issuer: {ISSUER}\n    jwksUri: {jwks_url}\n    audiences: [api]\n    outputClaimToHeaders: [{{header: x-user, claim: sub}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: users-need-jwt, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: ALLOW\n  rules:\n  - from: [{{source: {{requestPrincipals: ['*']}}}}]\n    to: [{{operation: {{paths: [/v1/users*]}}}}]\n  - to: [{{operation: {{paths: [/public*]}}}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-banned, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: DENY\n  rules:\n  - when: [{{key: 'request.auth.claims[group]', values: [banned]}}]\n",
        port = app.port()
    ));
}

#[test]
fn jwt_at_the_edge_attack_matrix_rotation_and_jwks_outage() {
    let server = Server::start();
    let app = Upstream::start("users");
    let k1 = SigningKey::new("k1");
    let jwks = JwksServer::start(&[&k1]);
    setup(&server, &app, &jwks.url);
    let c = server.http();
    let get = |path: &str, token: Option<&str>| {
        let mut req = server.gateway(&c, "api.example.com", path).header("x-user", "spoofed");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        let challenge = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        (status, r.text().unwrap(), challenge)
    };
    let claims = |extra: Value| {
        let mut c = json!({"iss": ISSUER, "sub": "alice", "aud": "api", "exp": now() + 300, "iat": now()});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let good = k1.sign(&claims(json!({})));
    // The JWKS is fetched in the background: wait for the first good answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = get("/v1/users", Some(&good));
        if answer.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the JWKS was never fetched: {answer:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A good token: through, without the token, with the user from the token (not the client's header).
    let (status, body, _) = get("/v1/users", Some(&good));
    assert_eq!((status, body.as_str()), (200, "users"));
    let seen = app.last();
    assert!(seen.headers.get("authorization").is_none(), "the token is not forwarded");
    assert_eq!(seen.headers["x-user"], "alice");
    // In the query string too.
    let (status, _, _) = get(&format!("/v1/users?access_token={good}"), None);
    assert_eq!(status, 200);

    // No token: RequestAuthentication lets it pass; the ALLOW policy wants a principal.
    let (status, body, _) = get("/v1/users", None);
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied\n"));
    assert_eq!(app.last().path, "/v1/users?access_token=".to_string() + &good, "the refused request never arrived");
    let (status, _, _) = get("/public/info", None);
    assert_eq!(status, 200, "paths the policy leaves open need no token");
    assert!(app.last().headers.get("x-user").is_none(), "a client's own x-user is dropped");

    // The attack matrix: each is 401 with a Bearer challenge.
    let hs256 = format!(
        "{}.{}.c2lnbmF0dXJl",
        enc(br#"{"alg":"HS256","kid":"k1"}"#),
        enc(claims(json!({})).to_string().as_bytes())
    );
    let none = format!("{}.{}.", enc(br#"{"alg":"none"}"#), enc(claims(json!({})).to_string().as_bytes()));
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = enc(claims(json!({"sub": "mallory"})).to_string().as_bytes());
    let tampered = parts.join(".");
    let stranger = SigningKey::new("k1");
    let cases = [
        ("expired", k1.sign(&claims(json!({"exp": now() - 120}))), "Jwt is expired\n"),
        ("not yet valid", k1.sign(&claims(json!({"nbf": now() + 300}))), "Jwt not yet valid\n"),
        (
            "wrong issuer",
            k1.sign(&claims(json!({"iss": "https://evil.example.com"}))),
            "Jwt issuer is not configured\n",
        ),
        ("wrong audience", k1.sign(&claims(json!({"aud": "billing"}))), "Audiences in Jwt are not allowed\n"),
        ("alg none", none, "Jwt algorithm is not allowed\n"),
        ("HMAC with the public key", hs256, "Jwt algorithm is not allowed\n"),
        ("tampered payload", tampered, "Jwt verification fails\n"),
        ("another key, same kid", stranger.sign(&claims(json!({}))), "Jwt verification fails\n"),
        (
            "kid not in the JWKS",
            SigningKey::new("k9").sign(&claims(json!({}))),
            "Jwks doesn't have key to match kid or alg from Jwt\n",
        ),
        ("garbage", "not-a-jwt".to_string(), "Jwt is not in the form of Header.Payload.Signature\n"),
    ];
    for (what, token, message) in &cases {
        let (status, body, challenge) = get("/v1/users", Some(token));
        assert_eq!((status, body.as_str()), (401, *message), "{what}");
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer ")), "{what}: a WWW-Authenticate challenge");
    }

    // Claims decide too: routing by claim, and a DENY on a claim.
    let (status, _, _) = get("/v1/users", Some(&k1.sign(&claims(json!({"group": "beta"})))));
    assert_eq!(status, 200);
    assert_eq!(app.last().headers["x-route"], "beta", "routed by the group claim");
    let (status, _, _) = get("/v1/users", Some(&good));
    assert_eq!(status, 200);
    assert!(app.last().headers.get("x-route").is_none());
    let (status, body, _) = get("/v1/users", Some(&k1.sign(&claims(json!({"group": "banned"})))));
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied\n"));

    // The issuer rotates its key: a token with the new kid asks for a fresh JWKS and then passes.
    let k2 = SigningKey::new("k2");
    jwks.serve(&[&k1, &k2]);
    let rotated = k2.sign(&claims(json!({})));
    let deadline = Instant::now() + Duration::from_secs(30);
    while get("/v1/users", Some(&rotated)).0 != 200 {
        assert!(Instant::now() < deadline, "the rotated key was never picked up");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The JWKS endpoint goes down: a refresh (asked for by an unknown kid) fails, the last good keys stay.
    jwks.down();
    let before = jwks.hits.load(std::sync::atomic::Ordering::SeqCst);
    let unknown = SigningKey::new("k3").sign(&claims(json!({})));
    let deadline = Instant::now() + Duration::from_secs(30);
    while jwks.hits.load(std::sync::atomic::Ordering::SeqCst) == before {
        assert_eq!(get("/v1/users", Some(&unknown)).0, 401);
        assert!(Instant::now() < deadline, "no refresh was tried");
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..20 {
        assert_eq!(get("/v1/users", Some(&rotated)).0, 200, "a JWKS outage must not refuse good tokens");
        assert_eq!(get("/v1/users", Some(&good)).0, 200);
    }
}
