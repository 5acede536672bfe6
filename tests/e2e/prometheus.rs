//! A real Prometheus (Debian's `prometheus`, started here on a port of its
//! own) finds meshgate's proxies through `/api/v1/prometheus/targets`,
//! scrapes them, and PromQL sees the requests. `.ci/run` installs it and
//! sets MESHGATE_REQUIRE_PROMETHEUS=1, so CI never skips this test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::Server;
use crate::upstream::Upstream;

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("prometheus"))
        .find(|p| p.is_file())
}

/// Prometheus discovering the proxies of `server`, scraping every second.
fn start(bin: &std::path::Path, server: &Server) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: meshgate\n  http_sd_configs:\n  - url: {}\n    refresh_interval: 1s\n    authorization: {{credentials: {}}}\n",
            server.url("/api/v1/prometheus/targets"),
            server.token()
        ),
    )
    .unwrap();
    // Prometheus cannot report a port it chose, so one is picked here.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let p = Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
    let c = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.get(format!("{}/-/ready", p.url)).send().is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "prometheus never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

/// The value of a PromQL instant query with one result, once it satisfies `ok`.
fn query(p: &Prometheus, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let c = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r: serde_json::Value =
            c.get(format!("{}/api/v1/query", p.url)).query(&[("query", promql)]).send().unwrap().json().unwrap();
        let value = r["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value.filter(|v| ok(*v)) {
            return v;
        }
        assert!(Instant::now() < deadline, "{promql}: never as expected: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn prometheus_discovers_scrapes_and_queries_the_gateway() {
    let Some(bin) = prometheus_binary() else {
        assert!(
            std::env::var_os("MESHGATE_REQUIRE_PROMETHEUS").is_none(),
            "MESHGATE_REQUIRE_PROMETHEUS is set but there is no prometheus binary on PATH"
        );
        eprintln!("skipped: no prometheus binary (apt-get install prometheus)");
        return;
    };
    let v1 = Upstream::start("v1");
    let server = Server::start();
    server.apply(&format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: users-v1}}\nspec:\n  address: 127.0.0.1\n  ports: {{http: {}}}\n  labels: {{app: users, version: v1}}\n",
        crate::telemetry::CANARY,
        v1.port()
    ));
    let prometheus = start(&bin, &server);
    let c = server.http();
    let send = |n: usize| {
        for _ in 0..n {
            assert_eq!(server.gateway(&c, "api.example.com", "/users").send().unwrap().status(), 200);
        }
    };
    send(20);
    let count = "sum(istio_requests_total{reporter=\"source\",destination_version=\"v1\",response_code=\"200\"})";
    assert_eq!(query(&prometheus, count, |v| v >= 20.0), 20.0);
    // More traffic: the rate over the last minute turns positive.
    send(30);
    assert_eq!(query(&prometheus, count, |v| v >= 50.0), 50.0);
    let rate = "sum(rate(istio_requests_total{destination_service_name=\"users\"}[1m]))";
    assert!(query(&prometheus, rate, |v| v > 0.0) > 0.0);
    // The target came from the service discovery, with its labels.
    let up = "up{job=\"meshgate\",meshgate_proxy=\"gateway\"}";
    assert_eq!(query(&prometheus, up, |v| v == 1.0), 1.0);
}
