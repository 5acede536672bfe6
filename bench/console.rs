//! The console's first load on localhost, in headless Chromium with an
//! empty cache each time (a new browser profile per load): from the start
//! of navigation to the login form on screen (the wasm fetched, compiled
//! and run), and the bytes the page transferred.
//!
//! Then the service map with 200 services: 200 ServiceEntries behind one
//! upstream, a gateway route to each, requests to all of them, and the
//! Overview page open for 15 s (it fetches and redraws every 5 s) while the
//! page counts its frames and long tasks.
//!
//! `cargo xtask web && cargo bench -p meshgate --bench console` (needs
//! Debian's chromium and chromium-driver). Prints each load and the median,
//! then the map's frame gaps and long tasks.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::ClientBuilder;
use serde_json::json;

const LOADS: usize = 9;
const SERVICES: usize = 200;

/// Headless Chromium as root on a closed network, 1280x800, with its own profile folder.
fn chrome(profile: &std::path::Path) -> serde_json::Map<String, serde_json::Value> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
            "--no-first-run", "--window-size=1280,800", format!("--user-data-dir={}", profile.display())]}),
    );
    caps
}

/// An upstream that answers every request with 200 `ok`.
fn upstream(rt: &tokio::runtime::Runtime) -> std::net::SocketAddr {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// 200 services, each a ServiceEntry at `up`, and a gateway route `/svc-N` to each.
fn many_services(up: std::net::SocketAddr) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n",
    );
    let mut routes = String::new();
    for i in 0..SERVICES {
        y.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{i}}}\nspec:\n  hosts: [svc-{i}]\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n",
            up.port()
        ));
        routes.push_str(&format!(
            "  - match: [{{uri: {{prefix: /svc-{i}/}}}}]\n    route: [{{destination: {{host: svc-{i}}}}}]\n"
        ));
    }
    y.push_str(&format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: all}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n{routes}"
    ));
    y
}

fn main() {
    let bin = env!("CARGO_BIN_EXE_meshgate");
    let dir = tempfile::tempdir().unwrap();
    let mut up = Command::new(bin)
        .args([
            "up",
            "--admin",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--mesh",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("MESHGATE_LOG", "warn")
        .env("MESHGATE_ADMIN_PASSWORD", "bench-password")
        .env("MESHGATE_STATS_INTERVAL", "1s")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start meshgate");
    let (mut admin, mut gateway) = (String::new(), String::new());
    for line in std::io::BufRead::lines(std::io::BufReader::new(up.stdout.take().unwrap())) {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("meshgate ready ") {
            let field = |k: &str| rest.split_whitespace().find_map(|kv| kv.strip_prefix(k)).unwrap().to_string();
            (admin, gateway) = (field("admin="), field("http="));
            break;
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt-get install chromium chromium-driver)");
    let mut times = Vec::new();
    for i in 0..LOADS {
        let profile = tempfile::tempdir().unwrap();
        let caps = chrome(profile.path());
        let (ms, bytes) = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            let c = loop {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&format!("http://127.0.0.1:{port}")).await {
                    Ok(c) => break c,
                    Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(e) => panic!("chromedriver: {e}"),
                }
            };
            c.goto(&format!("{admin}/")).await.unwrap();
            // The moment the login form is in the page, in the page's own clock (ms since navigation start).
            let at = c
                .execute_async(
                    "const done = arguments[0];
                     const check = () => document.querySelector('#username') ? done(performance.now()) : requestAnimationFrame(check);
                     check();",
                    vec![],
                )
                .await
                .unwrap();
            let bytes = c
                .execute(
                    "return performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'))
                       .reduce((n, e) => n + (e.transferSize || 0), 0);",
                    vec![],
                )
                .await
                .unwrap();
            c.close().await.unwrap();
            (at.as_f64().unwrap(), bytes.as_f64().unwrap_or(0.0))
        });
        println!("load {}: login form after {ms:.0} ms, {:.0} KiB transferred", i + 1, bytes / 1024.0);
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!("median first load: {:.0} ms (of {LOADS}, empty cache each)", times[LOADS / 2]);

    // The service map with 200 services.
    let up_addr = upstream(&rt);
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    let http = reqwest::blocking::Client::new();
    let applied = http
        .post(format!("{admin}/api/v1/apply"))
        .bearer_auth(token.trim())
        .body(many_services(up_addr))
        .send()
        .unwrap();
    assert!(applied.status().is_success(), "{}", applied.text().unwrap());
    let load = std::thread::spawn(move || {
        let http = reqwest::blocking::Client::new();
        let until = Instant::now() + Duration::from_secs(60);
        let mut i = 0;
        while Instant::now() < until {
            let _ = http.get(format!("http://{gateway}/svc-{}/x", i % SERVICES)).send();
            i += 1;
        }
    });
    let profile = tempfile::tempdir().unwrap();
    let caps = chrome(profile.path());
    let report = rt.block_on(async {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = ClientBuilder::new(connector).capabilities(caps).connect(&format!("http://127.0.0.1:{port}")).await.unwrap();
        c.goto(&format!("{admin}/")).await.unwrap();
        c.wait().for_element(fantoccini::Locator::Css("#username")).await.unwrap().send_keys("admin").await.unwrap();
        c.find(fantoccini::Locator::Css("#password")).await.unwrap().send_keys("bench-password").await.unwrap();
        c.find(fantoccini::Locator::Css("#login")).await.unwrap().click().await.unwrap();
        // Until the map has every service.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = c.execute("return document.querySelectorAll('#calls tbody tr').length;", vec![]).await.unwrap();
            if rows.as_u64().unwrap_or(0) >= SERVICES as u64 {
                break;
            }
            assert!(Instant::now() < deadline, "the map never showed {SERVICES} services (rows: {rows})");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let report = c
            .execute_async(
                "const done = arguments[0];
                 const longTasks = [];
                 new PerformanceObserver(l => l.getEntries().forEach(e => longTasks.push(e.duration))).observe({entryTypes: ['longtask']});
                 let frames = 0, last = performance.now(), worst = 0;
                 const start = last;
                 const tick = now => {
                   frames++; worst = Math.max(worst, now - last); last = now;
                   if (now - start < 15000) { requestAnimationFrame(tick); }
                   else { done({frames, seconds: (now - start) / 1000, worstGapMs: worst,
                                longTasks: longTasks.length, longestTaskMs: Math.max(0, ...longTasks),
                                nodes: document.querySelectorAll('.map .node').length}); }
                 };
                 requestAnimationFrame(tick);",
                vec![],
            )
            .await
            .unwrap();
        c.close().await.unwrap();
        report
    });
    let _ = load.join();
    println!(
        "service map, {SERVICES} services ({} nodes drawn), 15 s with a redraw every 5 s: {:.0} frames/s, worst gap between frames {:.0} ms, {} long tasks, the longest {:.0} ms",
        report["nodes"],
        report["frames"].as_f64().unwrap_or(0.0) / report["seconds"].as_f64().unwrap_or(1.0),
        report["worstGapMs"].as_f64().unwrap_or(0.0),
        report["longTasks"],
        report["longestTaskMs"].as_f64().unwrap_or(0.0)
    );
    let _ = driver.kill();
    let _ = driver.wait();
    let _ = up.kill();
    let _ = up.wait();
}
