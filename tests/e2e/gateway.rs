//! The edge gateway routing real traffic by Gateway, VirtualService,
//! DestinationRule, ServiceEntry and WorkloadEntry.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::Server;
use crate::upstream::Upstream;

const HOST: &str = "api.example.com";

/// Gateway + ServiceEntry + WorkloadEntries (one per upstream, labelled
/// version=NAME) + a DestinationRule with one subset per version.
pub(crate) fn service(name: &str, upstreams: &[&Upstream], dr_policy: &str) -> String {
    let mut y = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: public-gateway}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [\"*.example.com\"]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  workloadSelector: {{labels: {{app: {name}}}}}\n"
    );
    for u in upstreams {
        y.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}-{v}}}\nspec:\n  address: 127.0.0.1\n  ports: {{http: {p}}}\n  labels: {{app: {name}, version: {v}}}\n",
            v = u.name,
            p = u.port()
        ));
    }
    y.push_str(&format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {name}\n{dr_policy}  subsets:\n"
    ));
    for u in upstreams {
        y.push_str(&format!("  - {{name: {v}, labels: {{version: {v}}}}}\n", v = u.name));
    }
    y
}

pub(crate) fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: users}}\nspec:\n  hosts: [{HOST}]\n  gateways: [public-gateway]\n  http:\n{http}"
    )
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn body_of(r: reqwest::blocking::Response) -> (u16, String) {
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn canary_split_follows_the_weights_and_shifts_on_apply() {
    let (v1, v2) = (Upstream::start("v1"), Upstream::start("v2"));
    let server = Server::start();
    server.apply(&service("user-service", &[&v1, &v2], ""));
    let split = |w1: u32| {
        vs(&format!(
            "  - match: [{{uri: {{prefix: /v1/users}}}}]\n    route:\n    - destination: {{host: user-service, subset: v1}}\n      weight: {w1}\n    - destination: {{host: user-service, subset: v2}}\n      weight: {}\n",
            100 - w1
        ))
    };
    server.apply(&split(80));
    let c = client();
    let n = 10_000;
    for _ in 0..n {
        let (status, _) = body_of(server.gateway(&c, HOST, "/v1/users/42").send().unwrap());
        assert_eq!(status, 200);
    }
    let share = v2.hits() as f64 / n as f64 * 100.0;
    assert!((18.0..=22.0).contains(&share), "v2 got {share:.1}% of {n}, want 20 ± 2");

    // 90/10 is live as soon as apply returns.
    server.apply(&split(100));
    let before = v2.hits();
    for _ in 0..200 {
        assert_eq!(server.gateway(&c, HOST, "/v1/users").send().unwrap().text().unwrap(), "v1");
    }
    assert_eq!(v2.hits(), before);

    let (status, body) = body_of(server.gateway(&c, HOST, "/v2/other").send().unwrap());
    assert_eq!(status, 404, "{body}");
    let r = server.gateway(&c, "unknown.test", "/v1/users").send().unwrap();
    assert_eq!(r.headers()["x-meshgate-response-flags"], "NR");
}

#[test]
fn header_routing_and_request_headers() {
    let (v1, v2) = (Upstream::start("v1"), Upstream::start("v2"));
    let server = Server::start();
    server.apply(&service("user-service", &[&v1, &v2], ""));
    server.apply(&vs(
        "  - match: [{headers: {end-user: {exact: jason}}}, {queryParams: {canary: {exact: \"1\"}}}]\n    route: [{destination: {host: user-service, subset: v2}}]\n    headers: {request: {set: {x-route: canary}}, response: {add: {x-served-by: canary}}}\n  - match: [{uri: {regex: \"/v1/users/[0-9]+\"}, method: {exact: GET}}]\n    route: [{destination: {host: user-service, subset: v1}}]\n  - route: [{destination: {host: user-service, subset: v1}}]\n    headers: {request: {remove: [x-secret]}}\n",
    ));
    let c = client();
    let r = server.gateway(&c, HOST, "/v1/users").header("end-user", "jason").send().unwrap();
    assert_eq!(r.headers()["x-served-by"], "canary");
    assert_eq!(r.text().unwrap(), "v2");
    assert_eq!(v2.last().headers["x-route"], "canary");
    assert_eq!(server.gateway(&c, HOST, "/v1/users?canary=1").send().unwrap().text().unwrap(), "v2");
    assert_eq!(server.gateway(&c, HOST, "/v1/users").header("end-user", "bob").send().unwrap().text().unwrap(), "v1");
    server.gateway(&c, HOST, "/v1/users/7").header("x-secret", "s").send().unwrap();
    let seen = v1.last();
    assert_eq!(seen.path, "/v1/users/7");
    assert!(seen.headers.contains_key("x-secret"), "the regex route does not remove it");
    server.gateway(&c, HOST, "/other").header("x-secret", "s").send().unwrap();
    let seen = v1.last();
    assert!(!seen.headers.contains_key("x-secret"));
    assert_eq!(seen.headers["host"], HOST, "the Host header is passed through");
    assert!(seen.headers.contains_key("x-request-id"));
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], HOST);
}

#[test]
fn faults_timeouts_and_retries() {
    let (v1, slow) = (Upstream::start("v1"), Upstream::start("slow"));
    let server = Server::start();
    server.apply(&service("user-service", &[&v1, &slow], ""));
    slow.state.delay_ms.store(3_000, Ordering::SeqCst);
    server.apply(&vs(
        "  - match: [{uri: {prefix: /abort}}]\n    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: user-service, subset: v1}}]\n  - match: [{uri: {prefix: /delay}}]\n    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}\n    route: [{destination: {host: user-service, subset: v1}}]\n  - match: [{uri: {prefix: /slow}}]\n    timeout: 500ms\n    route: [{destination: {host: user-service, subset: slow}}]\n  - match: [{uri: {prefix: /flaky}}]\n    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}\n    route: [{destination: {host: user-service, subset: v1}}]\n  - match: [{uri: {prefix: /noretry}}]\n    retries: {attempts: 0}\n    route: [{destination: {host: user-service, subset: v1}}]\n",
    ));
    let c = client();
    let r = server.gateway(&c, HOST, "/abort").send().unwrap();
    assert_eq!(r.status(), 418);
    assert_eq!(r.headers()["x-meshgate-response-flags"], "FI");

    let t = Instant::now();
    assert_eq!(server.gateway(&c, HOST, "/delay").send().unwrap().status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300), "delay not injected: {:?}", t.elapsed());

    let t = Instant::now();
    let r = server.gateway(&c, HOST, "/slow").send().unwrap();
    let took = t.elapsed();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-meshgate-response-flags"], "UT");
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(2_500), "timeout after {took:?}");

    // One failure, then success: the retry hides it.
    let before = v1.hits();
    v1.state.fail_next.store(1, Ordering::SeqCst);
    let (status, body) = body_of(server.gateway(&c, HOST, "/flaky").send().unwrap());
    assert_eq!((status, body.as_str()), (200, "v1"));
    assert_eq!(v1.hits() - before, 2);
    v1.state.fail_next.store(1, Ordering::SeqCst);
    assert_eq!(server.gateway(&c, HOST, "/noretry").send().unwrap().status(), 500);
}

#[test]
fn outlier_detection_ejects_and_restores() {
    let (good, bad) = (Upstream::start("good"), Upstream::start("bad"));
    let server = Server::start();
    let policy = "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50}\n";
    server.apply(&service("user-service", &[&good, &bad], policy));
    server.apply(&vs("  - retries: {attempts: 0}\n    route: [{destination: {host: user-service}}]\n"));
    bad.state.always_status.store(500, Ordering::SeqCst);
    let c = client();
    for _ in 0..20 {
        server.gateway(&c, HOST, "/").send().unwrap();
    }
    assert_eq!(bad.hits(), 5, "ejected after exactly 5 consecutive 5xx");
    for _ in 0..20 {
        assert_eq!(server.gateway(&c, HOST, "/").send().unwrap().text().unwrap(), "good");
    }
    // Restored once the ejection time has passed.
    bad.state.always_status.store(0, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while bad.hits() == 5 {
        assert!(Instant::now() < deadline, "the ejected endpoint never came back");
        server.gateway(&c, HOST, "/").send().unwrap();
    }
}

#[test]
fn redirect_direct_response_rewrite_and_errors() {
    let v1 = Upstream::start("v1");
    let server = Server::start();
    server.apply(&service("user-service", &[&v1], ""));
    server.apply(&vs(
        "  - match: [{uri: {exact: /old}}]\n    redirect: {uri: /new, redirectCode: 308}\n  - match: [{uri: {exact: /keep}}]\n    redirect: {scheme: https, derivePort: FROM_REQUEST_PORT}\n  - match: [{uri: {exact: /drop}}]\n    redirect: {scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}\n  - match: [{uri: {prefix: /health}}]\n    directResponse: {status: 200, body: {string: \"all good\"}}\n  - match: [{uri: {prefix: /api/v1/}}]\n    rewrite: {uri: /internal/}\n    route: [{destination: {host: user-service, subset: v1}}]\n  - match: [{uri: {prefix: /gone}}]\n    route: [{destination: {host: user-service, subset: v9}}]\n  - match: [{uri: {prefix: /down}}]\n    route: [{destination: {host: nothing-here}}]\n",
    ));
    let c = client();
    let r = server.gateway(&c, HOST, "/old").send().unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], format!("http://{HOST}/new"));
    let with_port = format!("{HOST}:8080");
    let r = server.gateway(&c, &with_port, "/keep").send().unwrap();
    assert_eq!(r.headers()["location"], format!("https://{HOST}:8080/keep"));
    let r = server.gateway(&c, &with_port, "/drop").send().unwrap();
    assert_eq!(r.headers()["location"], format!("https://{HOST}/drop"));
    assert_eq!(body_of(server.gateway(&c, HOST, "/health").send().unwrap()), (200, "all good".to_string()));
    server.gateway(&c, HOST, "/api/v1/users?x=1").send().unwrap();
    assert_eq!(v1.last().path, "/internal/users?x=1");
    let r = server.gateway(&c, HOST, "/gone").send().unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-meshgate-response-flags"].to_str().unwrap()), (503, "UH"));
    let r = server.gateway(&c, HOST, "/down").send().unwrap();
    assert_eq!(r.status(), 503);

    // An endpoint that refuses connections: 503 with UF after the default retries.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    server.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: dead}}\nspec:\n  hosts: [dead]\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {closed}}}}}]\n"
    ));
    server.apply(&vs("  - route: [{destination: {host: dead}}]\n"));
    let r = server.gateway(&c, HOST, "/").send().unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers()["x-meshgate-response-flags"].to_str().unwrap().contains("UF"));
}

#[test]
fn connection_pool_overflow_answers_503_at_once() {
    let slow = Upstream::start("slow");
    slow.state.delay_ms.store(1_500, Ordering::SeqCst);
    let server = Server::start();
    let policy =
        "  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}\n";
    server.apply(&service("user-service", &[&slow], policy));
    server.apply(&vs("  - route: [{destination: {host: user-service}}]\n"));
    let results: Vec<(u16, String, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let t = Instant::now();
                    let r = server.gateway(&client(), HOST, "/").send().unwrap();
                    let flags = r.headers().get("x-meshgate-response-flags").map(|v| v.to_str().unwrap().to_string());
                    (r.status().as_u16(), flags.unwrap_or_default(), t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let overflow: Vec<_> = results.iter().filter(|r| r.0 == 503 && r.1 == "UO").collect();
    assert_eq!((ok, overflow.len()), (2, 2), "{results:?}");
    assert!(overflow.iter().all(|r| r.2 < Duration::from_millis(1_000)), "overflow must not wait: {results:?}");
}

#[test]
fn websocket_upgrade_is_spliced_through() {
    use std::io::{Read as _, Write as _};
    let ws = Upstream::start("ws");
    let server = Server::start();
    server.apply(&service("user-service", &[&ws], ""));
    server.apply(&vs("  - route: [{destination: {host: user-service}}]\n"));
    let mut s = std::net::TcpStream::connect(&server.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /chat HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    for msg in ["hello", "über", "a longer message to echo back"] {
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
}

#[test]
fn traffic_split_divides_a_service_by_subset() {
    let (v1, v2) = (Upstream::start("v1"), Upstream::start("v2"));
    let server = Server::start();
    server.apply(&service("user-service", &[&v1, &v2], ""));
    server.apply(&vs("  - route: [{destination: {host: user-service}}]\n"));
    server.apply("apiVersion: meshgate.io/v1\nkind: TrafficSplit\nmetadata: {name: user-split}\nspec:\n  service: user-service\n  subsets: [{name: v1, weight: 75}, {name: v2, weight: 25}]\n");
    let c = client();
    let n = 2_000;
    for _ in 0..n {
        server.gateway(&c, HOST, "/").send().unwrap();
    }
    let share = v2.hits() as f64 / n as f64 * 100.0;
    assert!((21.0..=29.0).contains(&share), "v2 got {share:.1}%, want 25 ± 4");
}

#[test]
fn cors_preflight_and_actual_requests() {
    let v1 = Upstream::start("v1");
    let server = Server::start();
    server.apply(&service("user-service", &[&v1], ""));
    server.apply(&vs(
        "  - corsPolicy:\n      allowOrigins: [{exact: \"https://app.example.com\"}, {regex: \"https://.*\\\\.partner\\\\.com\"}]\n      allowMethods: [GET, POST]\n      allowHeaders: [authorization, content-type]\n      exposeHeaders: [x-upstream]\n      maxAge: 24h\n      allowCredentials: true\n    route: [{destination: {host: user-service}}]\n",
    ));
    let c = client();
    let hits = v1.hits();
    let r = c
        .request(reqwest::Method::OPTIONS, format!("http://{}/api", server.http))
        .header("host", HOST)
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET,POST");
    assert_eq!(h["access-control-allow-headers"], "authorization,content-type");
    assert_eq!(h["access-control-max-age"], "86400");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(v1.hits(), hits, "an allowed preflight is answered by the gateway");

    let r = server.gateway(&c, HOST, "/api").header("origin", "https://shop.partner.com").send().unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.partner.com");
    assert_eq!(r.headers()["access-control-expose-headers"], "x-upstream");
    let r = server.gateway(&c, HOST, "/api").header("origin", "https://evil.example").send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[test]
fn hardening_normalizes_paths_and_refuses_smuggling() {
    use std::io::{Read as _, Write as _};
    let (public, admin) = (Upstream::start("public"), Upstream::start("admin"));
    let server = Server::start();
    server.apply(&service("user-service", &[&public, &admin], ""));
    server.apply(&vs(
        "  - match: [{uri: {prefix: /admin}}]\n    route: [{destination: {host: user-service, subset: admin}}]\n  - route: [{destination: {host: user-service, subset: public}}]\n",
    ));
    let raw = |request: String| -> String {
        let mut s = std::net::TcpStream::connect(&server.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    for path in ["/public/../admin/x", "//admin/x", "/%2e%2e/admin/x", "/./admin/x"] {
        let answer = raw(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(answer.ends_with("admin"), "{path} must reach the /admin route: {answer}");
        assert_eq!(admin.last().path, "/admin/x", "{path} is forwarded normalized");
    }
    // CL + TE: refused outright, so the request hidden after the chunked body is never routed.
    let hidden = format!("GET /admin/smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let smuggle = raw(format!(
        "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
        5 + hidden.len()
    ));
    assert!(smuggle.starts_with("HTTP/1.1 400"), "{smuggle}");
    assert!(smuggle.contains("connection: close"), "{smuggle}");
    // A transfer coding other than chunked is not guessed at.
    let coded = raw(format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"));
    assert!(coded.starts_with("HTTP/1.1 501"), "{coded}");
    // A bad chunk ends the exchange; nothing after it is read as a request.
    let bad_chunk = raw(format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{hidden}"));
    assert!(!bad_chunk.starts_with("HTTP/1.1 200"), "{bad_chunk}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        admin.state.seen.lock().unwrap().iter().all(|s| s.path != "/admin/smuggled"),
        "the smuggled request was routed"
    );
    let twice = raw(format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"));
    assert!(twice.starts_with("HTTP/1.1 400"), "{twice}");
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{many}\r\n"));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let huge = "a".repeat(70 * 1024);
    let answer = raw(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nx-big: {huge}\r\n\r\n"));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[test]
fn mirror_gets_a_copy_without_slowing_the_request() {
    let (v1, shadow) = (Upstream::start("v1"), Upstream::start("shadow"));
    shadow.state.delay_ms.store(2_000, Ordering::SeqCst);
    let server = Server::start();
    server.apply(&service("user-service", &[&v1, &shadow], ""));
    server.apply(&vs(
        "  - route: [{destination: {host: user-service, subset: v1}}]\n    mirror: {host: user-service, subset: shadow}\n    mirrorPercentage: {value: 100}\n",
    ));
    let c = client();
    let t = Instant::now();
    let r = c.post(format!("http://{}/orders", server.http)).header("host", HOST).body("{\"id\": 1}").send().unwrap();
    assert_eq!(r.text().unwrap(), "v1");
    assert!(t.elapsed() < Duration::from_millis(1_500), "the mirror must not slow the request: {:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while shadow.hits() == 0 {
        assert!(Instant::now() < deadline, "the mirror never got its copy");
        std::thread::sleep(Duration::from_millis(10));
    }
    let copy = shadow.last();
    assert_eq!(copy.path, "/orders");
    assert_eq!(copy.headers["host"], format!("{HOST}-shadow"));
}

#[test]
fn consistent_hash_keeps_a_user_on_one_endpoint() {
    let ups: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let server = Server::start();
    let policy = "  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n";
    server.apply(&service("user-service", &ups.iter().collect::<Vec<_>>(), policy));
    server.apply(&vs("  - route: [{destination: {host: user-service}}]\n"));
    let c = client();
    let mut homes = std::collections::BTreeSet::new();
    for user in 0..20 {
        let first =
            server.gateway(&c, HOST, "/").header("x-user", format!("user-{user}")).send().unwrap().text().unwrap();
        for _ in 0..10 {
            let again =
                server.gateway(&c, HOST, "/").header("x-user", format!("user-{user}")).send().unwrap().text().unwrap();
            assert_eq!(again, first, "user-{user} moved");
        }
        homes.insert(first);
    }
    assert!(homes.len() >= 2, "20 users all landed on {homes:?}");
}

#[test]
fn config_swaps_under_load_lose_no_request() {
    let (v1, v2) = (Upstream::start("v1"), Upstream::start("v2"));
    let server = Server::start();
    server.apply(&service("user-service", &[&v1, &v2], ""));
    let split = |w1: u32| {
        vs(&format!(
            "  - route:\n    - destination: {{host: user-service, subset: v1}}\n      weight: {w1}\n    - destination: {{host: user-service, subset: v2}}\n      weight: {}\n",
            100 - w1
        ))
    };
    server.apply(&split(50));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (sent, failures) = std::thread::scope(|s| {
        let load: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let c = client();
                    let (mut sent, mut failures) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match server.gateway(&c, HOST, "/").send() {
                            Ok(r) if r.status() == 200 => {}
                            Ok(r) => failures.push(format!("status {}", r.status())),
                            Err(e) => failures.push(e.to_string()),
                        }
                        sent += 1;
                    }
                    (sent, failures)
                })
            })
            .collect();
        for i in 0..20 {
            server.apply(&split(if i % 2 == 0 { 100 } else { 0 }));
        }
        stop.store(true, Ordering::Relaxed);
        load.into_iter().map(|h| h.join().unwrap()).fold((0, Vec::new()), |(n, mut f), (s, e)| {
            f.extend(e);
            (n + s, f)
        })
    });
    assert!(sent > 100, "only {sent} requests were sent during 20 applies");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during config swaps: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn locality_failover_to_the_other_region() {
    let (east, west) = (Upstream::start("east"), Upstream::start("west"));
    let server = Server::start_with(&["--locality", "us-east/zone-a"]);
    let mut yaml = service(
        "user-service",
        &[&east, &west],
        "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n    loadBalancer:\n      localityLbSetting: {enabled: true, failover: [{from: us-east, to: us-west}]}\n",
    );
    yaml = yaml
        .replace("version: east}", "version: east, region: us-east}")
        .replace("version: west}", "version: west, region: us-west}");
    server.apply(&yaml);
    server.apply(&vs("  - retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}\n    route: [{destination: {host: user-service}}]\n"));
    let c = client();
    for _ in 0..20 {
        assert_eq!(
            server.gateway(&c, HOST, "/").send().unwrap().text().unwrap(),
            "east",
            "the local region serves while healthy"
        );
    }
    assert_eq!(west.hits(), 0);
    // The local region fails: it is ejected, and the other region takes over.
    east.state.always_status.store(500, Ordering::SeqCst);
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(server.gateway(&c, HOST, "/").send().unwrap().text().unwrap());
    }
    assert!(answers[2..].iter().all(|a| a == "west"), "{answers:?}");
    assert_eq!(east.hits(), 20 + 5, "east was tried exactly until ejected");
}

#[test]
fn other_gateway_ports_open_and_close_with_the_config() {
    let v1 = Upstream::start("v1");
    let server = Server::start_with(&["--port-map", "9080=0"]);
    server.apply(&service("user-service", &[&v1], ""));
    let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: admin-gateway}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 9080, name: http-admin, protocol: HTTP}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: admin}\nspec:\n  hosts: [admin.example.com]\n  gateways: [admin-gateway]\n  http:\n  - route: [{destination: {host: user-service}}]\n";
    server.apply(gateway);
    let address = |port: u64| server.listener(port);
    let addr = address(9080).expect("port 9080 is served once a Gateway asks for it");
    assert_ne!(addr, server.http, "a port of its own, not --http");
    let r = client().get(format!("http://{addr}/")).header("host", "admin.example.com").send().unwrap();
    assert_eq!(r.text().unwrap(), "v1");
    // The same host on port 80 is not routed: that VirtualService is bound to the 9080 server only.
    assert_eq!(server.gateway(&client(), "admin.example.com", "/").send().unwrap().status(), 404);

    // `bind`: the listener moves to that IP (any of 127.0.0.0/8 is this host).
    server.apply(&gateway.replace("    hosts: [\"*\"]\n", "    hosts: [\"*\"]\n    bind: 127.0.0.2\n"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let moved = loop {
        let now = address(9080).unwrap();
        if now.starts_with("127.0.0.2:") || std::time::Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(moved.starts_with("127.0.0.2:"), "{moved}");
    let r = client().get(format!("http://{moved}/")).header("host", "admin.example.com").send().unwrap();
    assert_eq!(r.text().unwrap(), "v1");

    server.ok(&["delete", "gw", "admin-gateway"]);
    assert!(address(9080).is_none(), "the listener closes with its Gateway");
    assert!(address(80).is_some() && address(443).is_some());
}

#[test]
fn global_connection_limit_holds_new_connections_until_one_closes() {
    use std::io::{Read as _, Write as _};
    let v1 = Upstream::start("v1");
    let server = Server::start_with(&["--max-connections", "2"]);
    server.apply(&service("user-service", &[&v1], ""));
    server.apply(&vs("  - route: [{destination: {host: user-service}}]\n"));
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let open = || {
        let mut s = std::net::TcpStream::connect(&server.http).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s
    };
    let answered = |s: &mut std::net::TcpStream, within: Duration| {
        s.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 512];
        matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
    };
    let (mut a, mut b) = (open(), open());
    assert!(answered(&mut a, Duration::from_secs(10)) && answered(&mut b, Duration::from_secs(10)));
    let mut c = open();
    assert!(!answered(&mut c, Duration::from_millis(500)), "a third connection must wait at a limit of 2");
    drop(a);
    assert!(answered(&mut c, Duration::from_secs(10)), "served once a connection closed");
}

#[test]
fn one_virtual_service_serves_every_gateway_host_it_covers() {
    let v1 = Upstream::start("v1");
    let server = Server::start();
    server.apply(
        &service("user-service", &[&v1], "")
            .replace("hosts: [\"*.example.com\"]", "hosts: [a.example.com, b.example.com]"),
    );
    server.apply(
        &vs("  - route: [{destination: {host: user-service}}]\n")
            .replace(&format!("hosts: [{HOST}]"), "hosts: [\"*.example.com\"]"),
    );
    let c = client();
    for host in ["a.example.com", "b.example.com"] {
        assert_eq!(server.gateway(&c, host, "/").send().unwrap().text().unwrap(), "v1", "{host}");
    }
    assert_eq!(server.gateway(&c, "c.example.com", "/").send().unwrap().status(), 404);
}

#[test]
fn http1_keeps_upstream_connections_and_streams_bodies_both_ways() {
    use std::io::{Read as _, Write as _};
    let up = Upstream::start("v1");
    let server = Server::start();
    server.apply(&service("user-service", &[&up], ""));
    server.apply(&vs("  - route: [{destination: {host: user-service, subset: v1}}]\n"));
    let c = client();

    // Keep-alive to the upstream: sequential requests share one pooled connection.
    for _ in 0..50 {
        assert_eq!(body_of(server.gateway(&c, HOST, "/").send().unwrap()), (200, "v1".into()));
    }
    let opened = up.state.connections.load(Ordering::SeqCst);
    assert!(opened <= 2, "50 sequential requests opened {opened} upstream connections");

    // A 3 MB body with a length, and a 1 MB body sent chunked, both echoed whole.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let echo = || c.post(format!("http://{}/echo", server.http)).header("host", HOST);
    let r = echo().body(big.clone()).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-body-len"], "3000000");
    assert!(r.bytes().unwrap() == big, "the 3 MB echo differs");
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(big[..1_000_000].to_vec()));
    let r = echo().body(chunked).send().unwrap();
    assert_eq!(r.headers()["x-body-len"], "1000000", "the chunked request body arrived whole");
    assert!(r.bytes().unwrap() == big[..1_000_000], "the chunked echo differs");

    // A chunked response of 500 chunks comes through whole.
    let r = server.gateway(&c, HOST, "/chunked/500").send().unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().unwrap();
    assert_eq!(body.len(), 500_000);
    assert!(body[..1000].iter().all(|b| *b == b'a') && body[499_000..].iter().all(|b| *b == b'a' + (499 % 26) as u8));

    // Client-certificate details are the gateway's to give, not the client's.
    let r = server.gateway(&c, HOST, "/").header("x-forwarded-client-cert", "Hash=spoofed").send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(!up.last().headers.contains_key("x-forwarded-client-cert"), "a client's XFCC header is removed");

    // HEAD: headers only.
    let r = c.head(format!("http://{}/", server.http)).header("host", HOST).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().unwrap().is_empty());

    let connect = || {
        let s = std::net::TcpStream::connect(&server.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    };
    // One response off the connection: its head and a body of Content-Length.
    // Bytes past it (the next pipelined response, when both came in one
    // read) stay in `pending` for the next call.
    let read_response = |s: &mut std::net::TcpStream, pending: &mut Vec<u8>| -> String {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if pending.len() >= end + 4 + length {
                    let response: Vec<u8> = pending.drain(..end + 4 + length).collect();
                    return String::from_utf8_lossy(&response).into_owned();
                }
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed early: {}", String::from_utf8_lossy(pending));
            pending.extend_from_slice(&chunk[..n]);
        }
    };

    // Expect: 100-continue is answered before the body is sent.
    let mut s = connect();
    let mut pending = Vec::new();
    s.write_all(
        format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").unwrap();
    let answer = read_response(&mut s, &mut pending);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"), "{answer}");

    // HTTP/1.0 with keep-alive: two requests on one connection.
    let mut s = connect();
    let mut pending = Vec::new();
    for _ in 0..2 {
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n").as_bytes()).unwrap();
        let answer = read_response(&mut s, &mut pending);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: keep-alive"), "{answer}");
        assert!(answer.ends_with("v1"), "{answer}");
    }
    // Pipelined requests are answered in order.
    let mut s = connect();
    let mut pending = Vec::new();
    s.write_all(format!("GET /a HTTP/1.1\r\nHost: {HOST}\r\n\r\nGET /b HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .unwrap();
    assert!(read_response(&mut s, &mut pending).starts_with("HTTP/1.1 200"));
    assert!(read_response(&mut s, &mut pending).starts_with("HTTP/1.1 200"));
    assert_eq!(up.last().path, "/b");
    // No Host in HTTP/1.1: 400.
    let mut s = connect();
    let mut pending = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let answer = read_response(&mut s, &mut pending);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A request answered here (404) before its streamed body was read: the
    // rest of the body is discarded and the connection serves the next request.
    let mut s = connect();
    let mut pending = Vec::new();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: nobody.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .unwrap();
    let answer = read_response(&mut s, &mut pending);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    s.write_all(format!("5\r\nworld\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).unwrap();
    let answer = read_response(&mut s, &mut pending);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("v1"), "{answer}");
}

#[test]
fn upstream_connections_closed_while_pooled_are_not_reused() {
    let up = Upstream::start("v1");
    // The upstream drops every connection 100 ms after it opened, without saying so.
    up.state.close_after_ms.store(100, Ordering::SeqCst);
    let server = Server::start();
    server.apply(&service("user-service", &[&up], ""));
    server.apply(&vs("  - route: [{destination: {host: user-service, subset: v1}}]\n"));
    let c = client();
    for i in 0..8 {
        assert_eq!(body_of(server.gateway(&c, HOST, "/").send().unwrap()), (200, "v1".into()), "request {i}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(up.state.connections.load(Ordering::SeqCst) >= 8, "closed connections were reused");
}

#[test]
fn upstream_connections_follow_the_connection_pool_settings() {
    let up = Upstream::start("v1");
    let server = Server::start();
    let policy = "  trafficPolicy:\n    connectionPool:\n      http: {maxRequestsPerConnection: 2}\n";
    server.apply(&service("user-service", &[&up], policy));
    server.apply(&vs("  - route: [{destination: {host: user-service, subset: v1}}]\n"));
    let c = client();
    for _ in 0..10 {
        assert_eq!(body_of(server.gateway(&c, HOST, "/").send().unwrap()), (200, "v1".into()));
    }
    let opened = up.state.connections.load(Ordering::SeqCst);
    assert_eq!(opened, 5, "10 requests at 2 per connection");

    // idleTimeout: a connection idle longer is not reused.
    let policy = "  trafficPolicy:\n    connectionPool:\n      http: {idleTimeout: 100ms}\n";
    server.apply(&service("user-service", &[&up], policy));
    for _ in 0..4 {
        assert_eq!(body_of(server.gateway(&c, HOST, "/").send().unwrap()), (200, "v1".into()));
        std::thread::sleep(Duration::from_millis(250));
    }
    let after = up.state.connections.load(Ordering::SeqCst);
    assert!(after >= opened + 4, "idle connections were reused past idleTimeout: {opened} then {after}");
}

#[test]
fn hash_cookie_is_made_for_new_clients_and_keeps_them_on_one_endpoint() {
    let ups: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let server = Server::start();
    let policy =
        "  trafficPolicy:\n    loadBalancer: {consistentHash: {httpCookie: {name: sticky, ttl: 3600s, path: /}}}\n";
    server.apply(&service("user-service", &ups.iter().collect::<Vec<_>>(), policy));
    server.apply(&vs("  - route: [{destination: {host: user-service}}]\n"));
    let c = client();
    let mut homes = std::collections::BTreeSet::new();
    for client_no in 0..15 {
        let first = server.gateway(&c, HOST, "/").send().unwrap();
        let set = first.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(set.starts_with("sticky=") && set.ends_with("; Path=/; Max-Age=3600; HttpOnly"), "{set}");
        let cookie = set.split(';').next().unwrap().to_string();
        let home = first.text().unwrap();
        for _ in 0..5 {
            let again = server.gateway(&c, HOST, "/").header("cookie", &cookie).send().unwrap();
            assert!(again.headers().get("set-cookie").is_none(), "a client with the cookie gets no new one");
            assert_eq!(again.text().unwrap(), home, "client {client_no} moved");
        }
        homes.insert(home);
    }
    assert!(homes.len() >= 2, "15 clients all landed on {homes:?}");
}

/// Upstreams `east` (region us-east) and `west` (us-west) behind a gateway
/// in us-east/zone-a, with `policy` as the DestinationRule's trafficPolicy.
fn two_regions(policy: &str) -> (Upstream, Upstream, Server) {
    let (east, west) = (Upstream::start("east"), Upstream::start("west"));
    let server = Server::start_with(&["--locality", "us-east/zone-a"]);
    let yaml = service("user-service", &[&east, &west], policy)
        .replace("version: east}", "version: east, region: us-east}")
        .replace("version: west}", "version: west, region: us-west}");
    server.apply(&yaml);
    (east, west, server)
}

#[test]
fn retries_stay_local_unless_retry_remote_localities() {
    let (east, _west, server) = two_regions(
        "  trafficPolicy:\n    loadBalancer:\n      localityLbSetting: {enabled: true, failover: [{from: us-east, to: us-west}]}\n",
    );
    let c = client();
    for (remote, expected) in [(false, "east"), (true, "west")] {
        server.apply(&vs(&format!(
            "  - retries: {{attempts: 1, retryOn: 5xx, retryRemoteLocalities: {remote}}}\n    route: [{{destination: {{host: user-service}}}}]\n"
        )));
        east.state.fail_next.store(1, Ordering::SeqCst);
        let r = server.gateway(&c, HOST, "/").send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().unwrap(), expected, "retryRemoteLocalities: {remote}");
    }
}

#[test]
fn locality_distribute_splits_traffic_by_weight() {
    let (east, west, server) = two_regions(
        "  trafficPolicy:\n    loadBalancer:\n      localityLbSetting:\n        enabled: true\n        distribute: [{from: us-east/*, to: {\"us-east/*\": 75, \"us-west/*\": 25}}]\n",
    );
    server.apply(&vs("  - route: [{destination: {host: user-service}}]\n"));
    let c = client();
    let n = 2_000;
    for _ in 0..n {
        assert_eq!(server.gateway(&c, HOST, "/").send().unwrap().status(), 200);
    }
    let share = west.hits() as f64 / n as f64;
    assert!((0.20..=0.30).contains(&share), "us-west got {share:.3} of the traffic, want 0.25");
    assert_eq!(east.hits() + west.hits(), n);
}
