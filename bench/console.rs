//! The console's first load on localhost, in headless Chromium with an
//! empty cache each time (a new browser profile per load): from the start
//! of navigation to the login form on screen (the wasm fetched, compiled
//! and run), and the bytes the page transferred.
//!
//! `cargo xtask web && cargo bench -p meshgate --bench console` (needs
//! Debian's chromium and chromium-driver). Prints each load and the median.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::ClientBuilder;
use serde_json::json;

const LOADS: usize = 9;

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
        .stdout(Stdio::piped())
        .spawn()
        .expect("start meshgate");
    let mut admin = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(up.stdout.take().unwrap())) {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("meshgate ready ") {
            admin = rest.split_whitespace().find_map(|kv| kv.strip_prefix("admin=")).unwrap().to_string();
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
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                "--no-first-run", format!("--user-data-dir={}", profile.path().display())]}),
        );
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
    let _ = driver.kill();
    let _ = driver.wait();
    let _ = up.kill();
    let _ = up.wait();
}
