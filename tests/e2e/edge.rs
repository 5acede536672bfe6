//! Edge policies of meshgate's own (`meshgate.io/v1`): rate limits.

use std::time::{Duration, Instant};

use crate::support::Server;
use crate::upstream::Upstream;

fn routes(server: &Server, app: &Upstream) {
    server.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [api.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: users}}\nspec:\n  hosts: [users.internal]\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: api}}\nspec:\n  hosts: [api.example.com]\n  gateways: [gw]\n  http:\n  - name: users\n    match: [{{uri: {{prefix: /v1/users}}}}]\n    route: [{{destination: {{host: users.internal}}}}]\n  - name: fast\n    match: [{{uri: {{prefix: /fast}}}}]\n    route: [{{destination: {{host: users.internal}}}}]\n  - name: slow\n    match: [{{uri: {{prefix: /slow}}}}]\n    route: [{{destination: {{host: users.internal}}}}]\n  - name: rest\n    route: [{{destination: {{host: users.internal}}}}]\n",
        app.port()
    ));
}

#[test]
fn rate_limits_count_per_key_refuse_with_429_and_refill() {
    let server = Server::start();
    let app = Upstream::start("users");
    routes(&server, &app);
    server.apply("apiVersion: meshgate.io/v1\nkind: RateLimitPolicy\nmetadata: {name: users}\nspec:\n  targetRefs: [{kind: VirtualService, name: api, sectionName: users}]\n  limits:\n  - name: gold\n    when: {header: {name: x-plan, values: [gold]}}\n    requests: 5\n    per: minute\n    key: header:x-client\n  - requests: 3\n    per: minute\n---\napiVersion: meshgate.io/v1\nkind: RateLimitPolicy\nmetadata: {name: fast}\nspec:\n  targetRefs: [{kind: VirtualService, name: api, sectionName: fast}]\n  limits: [{requests: 2, per: 4s, key: global}]\n");
    let c = server.http();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = server.gateway(&c, "api.example.com", path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().unwrap();
        let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), h("ratelimit-remaining"), h("retry-after"), h("ratelimit-limit"))
    };

    // Everyone else: 3 a minute per client address, then 429 with when to come back.
    for left in ["2", "1", "0"] {
        let (status, remaining, _, limit) = get("/v1/users", &[]);
        assert_eq!((status, remaining.as_deref()), (200, Some(left)));
        assert_eq!(limit.as_deref(), Some("3, 3;w=60"));
    }
    let hits = app.hits();
    let (status, remaining, retry, _) = get("/v1/users", &[]);
    assert_eq!((status, remaining.as_deref(), retry.as_deref()), (429, Some("0"), Some("20")));
    assert_eq!(app.hits(), hits, "a limited request never reaches the upstream");
    // Other routes are not limited by it.
    assert_eq!(get("/other", &[]).0, 200);

    // The gold plan: its own limit, a bucket per client.
    for _ in 0..5 {
        assert_eq!(get("/v1/users", &[("x-plan", "gold"), ("x-client", "a")]).0, 200);
    }
    assert_eq!(get("/v1/users", &[("x-plan", "gold"), ("x-client", "a")]).0, 429);
    assert_eq!(get("/v1/users", &[("x-plan", "gold"), ("x-client", "b")]).0, 200);

    // A change elsewhere in the configuration does not refill the buckets.
    server.apply("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: unrelated}\nspec:\n  hosts: [unrelated.internal]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 127.0.0.1}]\n");
    assert_eq!(get("/v1/users", &[]).0, 429);

    // 2 per 4 s for everyone together: the third waits for the refill (one token every 2 s).
    assert_eq!(get("/fast", &[]).0, 200);
    assert_eq!(get("/fast", &[]).0, 200);
    let refused = Instant::now();
    assert_eq!(get("/fast", &[]).0, 429);
    loop {
        let status = get("/fast", &[]).0;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(refused.elapsed() < Duration::from_secs(20), "the bucket never refilled");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused.elapsed() >= Duration::from_secs(1), "refilled too early: {:?}", refused.elapsed());

    // A bad policy is refused, every wrong field named.
    let out = server.cli_with_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: meshgate.io/v1\nkind: RateLimitPolicy\nmetadata: {name: bad}\nspec:\n  targetRefs: [{kind: Service, name: x}]\n  limits: [{requests: 0, per: fortnight, key: colour}]\n"),
    );
    assert!(!out.status.success());
    let err = crate::support::text(&out.stderr);
    for field in ["spec.targetRefs[0].kind", "spec.limits[0].requests", "spec.limits[0].per", "spec.limits[0].key"] {
        assert!(err.contains(field), "{field} in {err}");
    }
}

#[test]
fn a_concurrency_cap_refuses_what_is_over_it() {
    let server = Server::start();
    let app = Upstream::start("slow");
    routes(&server, &app);
    server.apply("apiVersion: meshgate.io/v1\nkind: RateLimitPolicy\nmetadata: {name: slow}\nspec:\n  targetRefs: [{kind: VirtualService, name: api, sectionName: slow}]\n  concurrency: 1\n");
    // Slow enough that the first is still in flight whatever the machine's load.
    app.state.delay_ms.store(3000, std::sync::atomic::Ordering::SeqCst);
    let first = {
        let (c, url) = (server.http(), format!("http://{}/slow", server.http));
        std::thread::spawn(move || c.get(url).header("host", "api.example.com").send().unwrap().status().as_u16())
    };
    // Wait until the first is in flight at the upstream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.hits() == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let c = server.http();
    let r = server.gateway(&c, "api.example.com", "/slow").send().unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.text().unwrap(), "too many requests in flight\n");
    assert_eq!(first.join().unwrap(), 200);
    app.state.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(server.gateway(&c, "api.example.com", "/slow").send().unwrap().status().as_u16(), 200);
}

#[test]
fn api_keys_name_consumers_who_get_their_own_limits_and_can_be_revoked() {
    let server = Server::start();
    let app = Upstream::start("users");
    routes(&server, &app);
    server.apply("apiVersion: meshgate.io/v1\nkind: Consumer\nmetadata: {name: acme}\nspec: {displayName: ACME Corp}\n---\napiVersion: meshgate.io/v1\nkind: Consumer\nmetadata: {name: beta}\nspec: {}\n---\napiVersion: meshgate.io/v1\nkind: ApiKeyAuth\nmetadata: {name: users}\nspec:\n  targetRefs: [{kind: VirtualService, name: api, sectionName: users}]\n---\napiVersion: meshgate.io/v1\nkind: RateLimitPolicy\nmetadata: {name: plans}\nspec:\n  targetRefs: [{kind: VirtualService, name: api, sectionName: users}]\n  limits:\n  - {when: {consumers: [acme]}, requests: 4, per: minute, key: consumer}\n  - {requests: 2, per: minute, key: clientIp}\n");
    let acme = server.ok(&["apikey", "create", "--consumer", "acme"]).trim().to_string();
    let beta = server.ok(&["apikey", "create", "--consumer", "beta"]).trim().to_string();
    assert!(acme.starts_with("mgk_") && acme.len() > 40, "{acme}");
    let err = server.fails(&["apikey", "create", "--consumer", "nobody"]);
    assert!(err.contains("no Consumer default/nobody"), "{err}");

    let c = server.http();
    let get = |path: &str, key: Option<&str>| {
        let mut req = server.gateway(&c, "api.example.com", path).header("x-consumer", "spoofed");
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let r = req.send().unwrap();
        let challenge = r.headers().contains_key("www-authenticate");
        (r.status().as_u16(), r.text().unwrap(), challenge)
    };
    // The keys take effect with the snapshot compiled after they were made.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get("/v1/users", Some(&acme)).0 != 200 {
        assert!(Instant::now() < deadline, "the key never worked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = app.last();
    assert_eq!(seen.headers["x-consumer"], "acme", "the consumer goes upstream, the client's own header does not");
    assert!(seen.headers.get("x-api-key").is_none(), "the key does not go upstream");

    assert_eq!(get("/v1/users", None), (401, "No API key found in request\n".to_string(), true));
    assert_eq!(get("/v1/users", Some("mgk_guessed")), (401, "Invalid API key\n".to_string(), true));
    assert_eq!(get("/other", None).0, 200, "routes without ApiKeyAuth need no key");
    assert_eq!(get(&format!("/v1/users?apikey={beta}"), None).0, 200, "a key in the query string");

    // acme's plan: 4 a minute (one used above); beta falls under the default 2 per address (one used).
    for _ in 0..3 {
        assert_eq!(get("/v1/users", Some(&acme)).0, 200);
    }
    assert_eq!(get("/v1/users", Some(&acme)).0, 429);
    assert_eq!(get("/v1/users", Some(&beta)).0, 200);
    assert_eq!(get("/v1/users", Some(&beta)).0, 429);

    // Keys are listed without their secret, and revoked at once.
    let list: serde_json::Value = serde_json::from_str(&server.ok(&["apikey", "list", "-o", "json"])).unwrap();
    let beta_id =
        list.as_array().unwrap().iter().find(|k| k["consumer"] == "beta").unwrap()["id"].as_str().unwrap().to_string();
    assert!(!list.to_string().contains(&beta[10..]), "no key in the list");
    server.ok(&["apikey", "revoke", &beta_id]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get("/v1/users", Some(&beta)).0 != 401 {
        assert!(Instant::now() < deadline, "the revoked key kept working");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A consumer deleted: its keys stop too.
    server.ok(&["delete", "consumer", "acme"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get("/v1/users", Some(&acme)).1 != "Invalid API key\n" {
        assert!(Instant::now() < deadline, "a deleted consumer's key kept working");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn client_addresses_come_from_trusted_proxies_only() {
    let trusting = Server::start_with(&["--trusted-proxies", "127.0.0.0/8,10.1.2.3"]);
    let naive = Server::start();
    let app = Upstream::start("users");
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: block, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  action: DENY\n  rules:\n  - from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]\n---\napiVersion: meshgate.io/v1\nkind: RateLimitPolicy\nmetadata: {name: per-client}\nspec:\n  targetRefs: [{kind: VirtualService, name: api, sectionName: fast}]\n  limits: [{requests: 1, per: minute, key: clientIp}]\n";
    for s in [&trusting, &naive] {
        routes(s, &app);
        s.apply(policy);
    }
    let c = reqwest::blocking::Client::new();
    let status = |s: &Server, path: &str, xff: &str| {
        s.gateway(&c, "api.example.com", path).header("x-forwarded-for", xff).send().unwrap().status().as_u16()
    };
    // Behind trusted proxies, the client is the rightmost address they did not add themselves.
    assert_eq!(status(&trusting, "/x", "203.0.113.7"), 403);
    assert_eq!(status(&trusting, "/x", "198.51.100.1"), 200);
    assert_eq!(
        status(&trusting, "/x", "203.0.113.7, 198.51.100.1"),
        200,
        "what the client wrote itself does not count"
    );
    assert_eq!(status(&trusting, "/x", "203.0.113.7, 10.1.2.3"), 403, "a trusted hop is skipped");
    // Without --trusted-proxies, nothing in X-Forwarded-For is believed.
    assert_eq!(status(&naive, "/x", "203.0.113.7"), 200);
    // Rate limits key on the same client address.
    assert_eq!(status(&trusting, "/fast", "198.51.100.1"), 200);
    assert_eq!(status(&trusting, "/fast", "198.51.100.1"), 429);
    assert_eq!(status(&trusting, "/fast", "198.51.100.2"), 200);
    // Upstreams see the chain with the gateway's own hop added.
    assert_eq!(app.last().headers["x-forwarded-for"], "198.51.100.2, 127.0.0.1");
    // A bad --trusted-proxies is refused at start, naming the value.
    let out = crate::support::up_fails(&["--trusted-proxies", "10.0.0.0/99"]);
    assert!(
        crate::support::text(&out.stderr).contains("--trusted-proxies \"10.0.0.0/99\""),
        "{}",
        crate::support::text(&out.stderr)
    );
}

#[test]
fn request_bodies_over_the_size_limit_are_refused_with_413() {
    let server = Server::start();
    let app = Upstream::start("users");
    routes(&server, &app);
    server.apply("apiVersion: meshgate.io/v1\nkind: RequestSizeLimit\nmetadata: {name: small}\nspec:\n  targetRefs: [{kind: VirtualService, name: api, sectionName: rest}]\n  maxBytes: 100\n");
    let c = server.http();
    let post = |body: reqwest::blocking::Body| {
        let r =
            c.post(format!("http://{}/echo", server.http)).header("host", "api.example.com").body(body).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let small = "x".repeat(100);
    let big = "y".repeat(101);
    assert_eq!(post(small.clone().into()), (200, small.clone()));
    let hits = app.hits();
    assert_eq!(post(big.clone().into()), (413, "request body too large\n".to_string()));
    // Without a Content-Length (chunked): read up to the limit, then refused, or sent on whole.
    let chunked = |s: &str| reqwest::blocking::Body::new(std::io::Cursor::new(s.as_bytes().to_vec()));
    assert_eq!(post(chunked(&big)).0, 413);
    assert_eq!(app.hits(), hits, "refused bodies never reach the upstream");
    assert_eq!(post(chunked(&small)), (200, small));
    // Routes the limit does not target take any size.
    let r =
        c.post(format!("http://{}/v1/users", server.http)).header("host", "api.example.com").body(big).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
