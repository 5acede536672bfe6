//! Istio's request metrics on the gateway and on the agents, counted
//! exactly, and Prometheus service discovery of every proxy.

use crate::mesh::{USER_SERVICE, client_agents, field, user_service_sidecar, wait_synced};
use crate::support::Server;
use crate::upstream::Upstream;

/// The sum of the samples of `metric` whose labels include every `label="value"` given.
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

pub const CANARY: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [api.example.com]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: users}
spec:
  hosts: [users]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: users}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: users}
spec:
  host: users
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: users}
spec:
  hosts: [api.example.com]
  gateways: [gw]
  http:
  - match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: users, subset: v2}}]
  - route: [{destination: {host: users, subset: v1}}]
"#;

#[test]
fn the_gateway_counts_requests_with_istio_names_and_labels() {
    let (v1, v2) = (Upstream::start("v1"), Upstream::start("v2"));
    let server = Server::start();
    let entry = |name: &str, up: &Upstream, version: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec:\n  address: 127.0.0.1\n  ports: {{http: {}}}\n  labels: {{app: users, version: {version}}}\n",
            up.port()
        )
    };
    server.apply(&format!("{CANARY}{}{}", entry("users-v1", &v1, "v1"), entry("users-v2", &v2, "v2")));
    let c = server.http();
    for _ in 0..10 {
        assert_eq!(server.gateway(&c, "api.example.com", "/users").send().unwrap().text().unwrap(), "v1");
    }
    for _ in 0..4 {
        let r = server.gateway(&c, "api.example.com", "/users").header("x-canary", "yes").send().unwrap();
        assert_eq!(r.text().unwrap(), "v2");
    }
    for _ in 0..3 {
        assert_eq!(server.gateway(&c, "nowhere.example.com", "/").send().unwrap().status(), 404);
    }
    let text = c.get(server.url("/metrics")).send().unwrap().text().unwrap();
    let common = [
        ("reporter", "source"),
        ("source_workload", "meshgate-gateway"),
        ("source_workload_namespace", "meshgate-system"),
        ("source_principal", "spiffe://cluster.local/ns/meshgate-system/sa/meshgate-gateway"),
        ("destination_service", "users.default.svc.cluster.local"),
        ("destination_service_name", "users"),
        ("destination_service_namespace", "default"),
        ("destination_app", "users"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = common.to_vec();
        l.push(extra);
        l
    };
    assert_eq!(sample(&text, "istio_requests_total", &with(("destination_version", "v1"))), 10.0, "{text}");
    assert_eq!(sample(&text, "istio_requests_total", &with(("destination_version", "v2"))), 4.0, "{text}");
    let v1_labels = with(("destination_version", "v1"));
    assert_eq!(sample(&text, "istio_request_duration_milliseconds_count", &v1_labels), 10.0);
    assert_eq!(sample(&text, "istio_response_bytes_sum", &v1_labels), 20.0, "ten answers of two bytes");
    let no_route = [("response_code", "404"), ("response_flags", "NR"), ("destination_service", "unknown")];
    assert_eq!(sample(&text, "istio_requests_total", &no_route), 3.0, "{text}");
    assert_eq!(sample(&text, "istio_requests_total", &[]), 17.0, "nothing else was counted");

    // The gateway's extras: per route and consumer, rate-limited, refused.
    let route = |r: &str, code: &str| {
        sample(
            &text,
            "meshgate_gateway_route_requests_total",
            &[("route", r), ("consumer", "-"), ("response_code", code)],
        )
    };
    assert_eq!((route("default/users/1", "200"), route("default/users/0", "200"), route("-", "404")), (10.0, 4.0, 3.0));
    server.apply("apiVersion: meshgate.io/v1\nkind: RateLimitPolicy\nmetadata: {name: one}\nspec:\n  targetRefs: [{kind: VirtualService, name: users}]\n  limits: [{requests: 1, per: hour, key: global}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n");
    let statuses: Vec<u16> =
        (0..2).map(|_| server.gateway(&c, "api.example.com", "/users").send().unwrap().status().as_u16()).collect();
    assert_eq!(statuses, [200, 429]);
    assert_eq!(server.gateway(&c, "api.example.com", "/admin").send().unwrap().status(), 403);
    let text = c.get(server.url("/metrics")).send().unwrap().text().unwrap();
    let limited = [("route", "default/users/1"), ("consumer", "-")];
    assert_eq!(sample(&text, "meshgate_gateway_rate_limited_total", &limited), 1.0, "{text}");
    let denied = [("reason", "rbac"), ("route", "default/users/1")];
    assert_eq!(sample(&text, "meshgate_gateway_auth_denied_total", &denied), 1.0, "{text}");
}

#[test]
fn sidecars_report_both_sides_of_a_call_and_are_discovered() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let app = Upstream::start("users");
    server.apply(USER_SERVICE);
    let (_users, ready) = user_service_sidecar(&server, &tmp.path().join("users"), &app, &["--version", "v3"]);
    let users_metrics = field(&ready, "metrics=").to_string();
    let (outbound, agents) = client_agents(&server, tmp.path(), &["orders"]);
    wait_synced(&server, 2);
    let c = server.http();
    for _ in 0..5 {
        let r = c.get(format!("http://{}/users/1", outbound["orders"])).header("host", "user-service").send().unwrap();
        assert_eq!(r.status(), 200);
    }

    // Prometheus finds the gateway and both agents.
    let targets: serde_json::Value =
        c.get(server.url("/api/v1/prometheus/targets")).bearer_auth(server.token()).send().unwrap().json().unwrap();
    let groups = targets.as_array().unwrap();
    assert_eq!(groups.len(), 3, "{targets}");
    let target_of = |service: &str| {
        groups
            .iter()
            .find(|g| g["labels"]["service"] == service)
            .unwrap_or_else(|| panic!("no target for {service}: {targets}"))["targets"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(target_of("user-service"), users_metrics);
    let scrape = |addr: &str| c.get(format!("http://{addr}/stats/prometheus")).send().unwrap().text().unwrap();

    // The caller's sidecar: reporter=source.
    let orders = scrape(&target_of("orders"));
    let source = [
        ("reporter", "source"),
        ("source_workload", "orders"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/orders"),
        ("destination_service", "user-service.default.svc.cluster.local"),
        ("destination_workload", "user-service"),
        ("destination_version", "v3"),
        ("response_code", "200"),
    ];
    assert_eq!(sample(&orders, "istio_requests_total", &source), 5.0, "{orders}");
    // The called sidecar: reporter=destination, the caller known by its certificate.
    let users = scrape(&users_metrics);
    let destination = [
        ("reporter", "destination"),
        ("source_workload", "orders"),
        // From the caller's proxy (metadata exchange), checked against its certificate.
        ("source_app", "orders"),
        ("source_workload_namespace", "default"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/orders"),
        ("destination_workload", "user-service"),
        ("destination_version", "v3"),
        ("destination_service", "user-service.default.svc.cluster.local"),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ];
    assert_eq!(sample(&users, "istio_requests_total", &destination), 5.0, "{users}");
    assert!(app.last().headers.get("x-meshgate-peer-metadata").is_none(), "the exchange stays between proxies");

    // The control plane's own, with istiod's names.
    let cp = c.get(server.url("/metrics")).send().unwrap().text().unwrap();
    let plain = |name: &str| {
        cp.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{cp}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(plain("pilot_xds"), 2.0, "two agents connected");
    assert!(plain("pilot_xds_pushes") >= 2.0);
    assert!(plain("pilot_proxy_convergence_time_count") >= 2.0, "each agent acknowledged a revision");
    assert!(plain("citadel_server_success_cert_issuance_count") >= 2.0);
    assert!(plain("citadel_server_root_cert_expiry_seconds") > 86400.0 * 300.0);
    assert_eq!(plain("pilot_total_xds_rejects"), 0.0);

    // One scrape for everything: /metrics?federate=1 (with a token) labels each agent's samples.
    assert_eq!(c.get(server.url("/metrics?federate=1")).send().unwrap().status(), 401);
    let all = c.get(server.url("/metrics?federate=1")).bearer_auth(server.token()).send().unwrap().text().unwrap();
    assert_eq!(all.matches("# TYPE istio_requests_total counter").count(), 1, "{all}");
    let orders_name = groups.iter().find(|g| g["labels"]["service"] == "orders").unwrap()["labels"]["meshgate_proxy"]
        .as_str()
        .unwrap()
        .to_string();
    let with_proxy = [("proxy", orders_name.as_str())];
    assert_eq!(sample(&all, "istio_requests_total", &[source.as_slice(), &with_proxy].concat()), 5.0, "{all}");
    assert!(all.contains("pilot_xds 2"), "the appliance's own are there too");
    drop(agents);
}

#[test]
fn the_gateway_writes_one_json_access_log_line_per_request() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("access.log");
    let v1 = Upstream::start("v1");
    let server = Server::start_with(&["--access-log", log.to_str().unwrap()]);
    server.apply(&format!(
        "{CANARY}---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: users-v1}}\nspec:\n  address: 127.0.0.1\n  ports: {{http: {}}}\n  labels: {{app: users, version: v1}}\n",
        v1.port()
    ));
    let c = server.http();
    let r = server
        .gateway(&c, "api.example.com", "/users?page=2")
        .header("user-agent", "probe/1")
        .header("x-request-id", "abc-123")
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "v1");
    assert_eq!(server.gateway(&c, "nowhere.example.com", "/x").send().unwrap().status(), 404);
    // A chunked body (no length) is counted as it goes upstream.
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(vec![b'x'; 3000]));
    let r =
        c.post(format!("http://{}/echo", server.http)).header("host", "api.example.com").body(chunked).send().unwrap();
    assert_eq!(r.bytes().unwrap().len(), 3000);
    // The id the upstream saw is the one logged.
    assert_eq!(v1.last().headers["x-request-id"], "abc-123");
    // Without one, the id made here goes upstream and into the log alike.
    assert_eq!(server.gateway(&c, "api.example.com", "/users").send().unwrap().status(), 200);
    let made = v1.last().headers["x-request-id"].to_str().unwrap().to_string();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 4 || std::time::Instant::now() > deadline {
            break text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[3]["request_id"].as_str(), Some(made.as_str()), "{made}");
    assert_eq!(made.len(), 32);
    assert_eq!((lines[2]["bytes_received"].as_u64(), lines[2]["bytes_sent"].as_u64()), (Some(3000), Some(3000)));
    let ok = &lines[0];
    for (k, v) in [
        ("method", serde_json::json!("GET")),
        ("authority", serde_json::json!("api.example.com")),
        ("path", serde_json::json!("/users?page=2")),
        ("protocol", serde_json::json!("HTTP/1.1")),
        ("response_code", serde_json::json!(200)),
        ("response_flags", serde_json::json!("-")),
        ("bytes_sent", serde_json::json!(2)),
        ("upstream_host", serde_json::json!(format!("127.0.0.1:{}", v1.port()))),
        ("upstream_cluster", serde_json::json!("users.default.svc.cluster.local")),
        ("route_name", serde_json::json!("default/users/1")),
        ("downstream_remote_address", serde_json::json!("127.0.0.1")),
        ("user_agent", serde_json::json!("probe/1")),
        ("request_id", serde_json::json!("abc-123")),
    ] {
        assert_eq!(ok[k], v, "{k} in {ok}");
    }
    assert!(ok["start_time"].as_str().unwrap().ends_with('Z'), "{ok}");
    let miss = &lines[1];
    assert_eq!((miss["response_code"].as_u64(), miss["response_flags"].as_str()), (Some(404), Some("NR")), "{miss}");
    assert_eq!(miss["upstream_host"], "-");
    assert_eq!(miss["request_id"].as_str().unwrap().len(), 32, "an id is made for requests without one: {miss}");
}

/// The sum of `field` over a series' points.
fn total(points: &serde_json::Value, field: &str) -> f64 {
    points.as_array().unwrap().iter().map(|p| p[field].as_f64().unwrap_or(0.0)).sum()
}

#[test]
fn the_control_plane_keeps_time_series_and_the_service_map() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let app = Upstream::start("users");
    server.apply(&format!("{}---\n{USER_SERVICE}", crate::tracing::MESH));
    let (_users, _) = user_service_sidecar(&server, &tmp.path().join("users"), &app, &["--version", "v1"]);
    let (outbound, _agents) = client_agents(&server, tmp.path(), &["orders"]);
    wait_synced(&server, 2);
    let c = server.http();
    for _ in 0..20 {
        assert_eq!(server.gateway(&c, "api.example.com", "/v1/users").send().unwrap().status(), 200);
    }
    app.state.fail_next.store(5, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        c.get(format!("http://{}/v1/users", outbound["orders"])).header("host", "user-service").send().unwrap();
    }
    let get = |path: &str| -> serde_json::Value {
        c.get(server.url(path)).bearer_auth(server.token()).send().unwrap().json().unwrap()
    };
    // The service as its sidecar saw it: 30 requests, 5 errors.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let series = loop {
        let s = get("/api/v1/stats/services?service=user-service&window=10m");
        let list = s["services"].as_array().unwrap();
        if list.len() == 1 && total(&list[0]["points"], "requests") >= 30.0 {
            break list[0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "no series yet: {s}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(series["service"], "user-service.default.svc.cluster.local");
    assert_eq!((series["version"].as_str(), series["reporter"].as_str()), (Some("v1"), Some("destination")));
    assert_eq!(total(&series["points"], "requests"), 30.0, "{series}");
    let errors: f64 = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_f64().unwrap() * p["errorRate"].as_f64().unwrap())
        .sum();
    assert!((errors - 5.0).abs() < 1e-6, "{series}");
    assert!(series["points"][0]["p99"].as_f64().is_some(), "{series}");

    // The service map: the gateway and orders both call user-service.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let graph = loop {
        let g = get("/api/v1/graph?window=10m");
        let requests: u64 = g["edges"].as_array().unwrap().iter().map(|e| e["requests"].as_u64().unwrap()).sum();
        if requests >= 30 {
            break g;
        }
        assert!(std::time::Instant::now() < deadline, "no service map yet: {g}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let edge = |from: &str| {
        graph["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["source"] == from && e["destination"] == "user-service.default.svc.cluster.local")
            .unwrap_or_else(|| panic!("no edge from {from}: {graph}"))
            .clone()
    };
    let gw = edge("meshgate-system/meshgate-gateway");
    assert_eq!((gw["requests"].as_u64(), gw["errorRate"].as_f64()), (Some(20), Some(0.0)), "{gw}");
    let orders = edge("default/orders");
    assert_eq!((orders["requests"].as_u64(), orders["errorRate"].as_f64()), (Some(10), Some(0.5)), "{orders}");
    assert!(
        graph["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "meshgate-system/meshgate-gateway" && n["kind"] == "gateway")
    );

    // Per edge route, from the gateway.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let routes = get("/api/v1/stats/routes?route=default/api/0&window=10m");
        let n = routes["routes"].get(0).map_or(0.0, |r| total(&r["points"], "requests"));
        if n == 20.0 {
            break;
        }
        assert!(n < 20.0 && std::time::Instant::now() < deadline, "{routes}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let bad = c.get(server.url("/api/v1/graph?window=2d")).bearer_auth(server.token()).send().unwrap();
    assert_eq!(bad.status(), 400);
}

#[test]
fn meshgate_logs_follows_the_gateway_and_the_sidecars() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let app = Upstream::start("users");
    server.apply(&format!("{}---\n{USER_SERVICE}", crate::tracing::MESH));
    let (_users, ready) = user_service_sidecar(&server, &tmp.path().join("users"), &app, &[]);
    let users_name = field(&ready, "name=").to_string();
    let (outbound, _agents) = client_agents(&server, tmp.path(), &["orders"]);
    wait_synced(&server, 2);
    // No proxy has a log file: lines are made because someone follows.
    let mut follow = std::process::Command::new(crate::support::BIN)
        .args(["logs", "-f"])
        .env("MESHGATE_SERVER", &server.admin)
        .env("MESHGATE_TOKEN", server.token())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = crate::support::line_reader(follow.stdout.take().unwrap());
    let c = server.http();
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let has = |seen: &[serde_json::Value], proxy: &str, path: &str| {
        seen.iter().any(|l| l["proxy"].as_str().is_some_and(|p| p.starts_with(proxy)) && l["path"] == path)
    };
    let mut i = 0;
    while !(has(&seen, "meshgate-gateway", "/from/gateway")
        && has(&seen, &users_name, "/from/gateway")
        && has(&seen, "orders", "/from/orders"))
    {
        assert!(std::time::Instant::now() < deadline, "lines so far: {seen:#?}");
        i += 1;
        if i % 2 == 0 {
            server.gateway(&c, "api.example.com", "/from/gateway").send().unwrap();
        } else {
            c.get(format!("http://{}/from/orders", outbound["orders"])).header("host", "user-service").send().unwrap();
        }
        while let Ok(line) = lines.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
    }
    let gw = seen.iter().find(|l| l["proxy"] == "meshgate-gateway").unwrap();
    assert_eq!((gw["response_code"].as_u64(), gw["authority"].as_str()), (Some(200), Some("api.example.com")));
    let _ = follow.kill();
    let _ = follow.wait();
    // A service filter: only that service's sidecars.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                server.gateway(&c, "api.example.com", "/from/gateway").send().unwrap();
                c.get(format!("http://{}/again", outbound["orders"])).header("host", "user-service").send().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let out = server.ok(&["logs", "--service", "orders", "--wait", "2s"]);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    });
    assert!(out.lines().any(|l| l.contains("\"/again\"")), "{out}");
    for line in out.lines() {
        let l: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(l["proxy"].as_str().unwrap().starts_with("orders"), "{line}");
    }
}
