//! The web console in a real headless Chromium, driven over WebDriver
//! (chromedriver + fantoccini), against the real binary with the console
//! built in (`cargo xtask web` before the tests; scripts/test does it).
//! Screenshots go to `target/console-screenshots/`.
//!
//! Without chromedriver these tests say so and pass, unless
//! MESHGATE_REQUIRE_BROWSER=1 (CI sets it, and installs Chromium).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::Server;
use crate::upstream::Upstream;

const PASSWORD: &str = "console-test-password";
const WAIT: Duration = Duration::from_secs(30);
/// How far a page may move while it loads (cumulative layout shift; Web
/// Vitals call up to 0.1 "good"): pages show their sections together, so
/// what is left is a scroll bar appearing.
const MAX_LAYOUT_SHIFT: f64 = 0.02;

/// A headless Chromium under chromedriver, used synchronously.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
    base: String,
}

impl Browser {
    /// `None` (and a note) when there is no chromedriver and none is required.
    fn start(server: &Server) -> Option<Browser> {
        let driver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(driver_bin) = driver_bin else {
            assert!(
                std::env::var("MESHGATE_REQUIRE_BROWSER").is_err(),
                "MESHGATE_REQUIRE_BROWSER is set but chromedriver is missing (apt-get install chromium chromium-driver)"
            );
            eprintln!("note: chromedriver not installed; skipping the console's browser test");
            return None;
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let profile = tempfile::tempdir().unwrap();
        // chromedriver takes a port, not port 0: ask the kernel for a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--no-first-run", "--window-size=1280,800",
                format!("--user-data-dir={}", profile.path().display()),
            ]}),
        );
        let deadline = Instant::now() + WAIT;
        let client = rt.block_on(async {
            loop {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                match ClientBuilder::new(connector)
                    .capabilities(caps.clone())
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await
                {
                    Ok(c) => break c,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("chromedriver on port {port}: {e}"),
                }
            }
        });
        Some(Browser { rt, client: Some(client), driver, _profile: profile, base: server.admin.clone() })
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(self.c().goto(&url)).unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Waits for `css` to be on the page.
    fn el(&self, css: &str) -> fantoccini::elements::Element {
        self.rt
            .block_on(self.c().wait().at_most(WAIT).for_element(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// Waits for `css` to be on the page and returns its text.
    fn text(&self, css: &str) -> String {
        let el = self.el(css);
        self.rt.block_on(el.text()).unwrap()
    }

    /// A property of `css` (e.g. an input's `value`), once it is on the page.
    fn prop(&self, css: &str, name: &str) -> Option<String> {
        let el = self.el(css);
        self.rt.block_on(el.prop(name)).unwrap()
    }

    /// Waits until `css`'s text contains `want`.
    fn wait_text(&self, css: &str, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.rt.block_on(async {
                match self.c().find(Locator::Css(css)).await {
                    Ok(el) => el.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                }
            });
            if now.contains(want) {
                return now;
            }
            assert!(Instant::now() < deadline, "{css} never showed {want:?}; it shows {now:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn exists(&self, css: &str) -> bool {
        self.rt.block_on(self.c().find(Locator::Css(css))).is_ok()
    }

    fn click(&self, css: &str) {
        let el = self.el(css);
        self.rt.block_on(el.click()).unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    fn fill(&self, css: &str, value: &str) {
        let el = self.el(css);
        self.rt.block_on(async {
            el.clear().await.unwrap();
            el.send_keys(value).await.unwrap_or_else(|e| panic!("type into {css}: {e}"));
        })
    }

    /// Sets an input's value as a user's drag or paste does, with its input event.
    fn set_value(&self, css: &str, value: &str) {
        self.text(css);
        let js = "const el = document.querySelector(arguments[0]); el.value = arguments[1]; \
                  el.dispatchEvent(new Event('input', {bubbles: true})); el.dispatchEvent(new Event('change', {bubbles: true}));";
        self.rt.block_on(self.c().execute(js, vec![json!(css), json!(value)])).unwrap();
    }

    /// Runs `body` (an async function body that returns a value) in the page.
    fn eval_async(&self, body: &str) -> Value {
        let js = format!(
            "const done = arguments[arguments.length - 1]; (async () => {{ {body} }})().then(done, e => done(String(e)));"
        );
        self.rt.block_on(self.c().execute_async(&js, vec![])).unwrap()
    }

    /// How much the page moved under the reader since it loaded: the
    /// cumulative layout shift (Web Vitals; shifts right after input do not
    /// count), as Chromium measures it.
    fn layout_shift(&self) -> f64 {
        let got = self.eval_async(
            "const entries = await new Promise(done => { \
               new PerformanceObserver((list, o) => { o.disconnect(); done(list.getEntries()); }) \
                 .observe({type: 'layout-shift', buffered: true}); \
               setTimeout(() => done([]), 300); }); \
             return entries.filter(e => !e.hadRecentInput).reduce((sum, e) => sum + e.value, 0);",
        );
        got.as_f64().unwrap_or_else(|| panic!("layout shift: {got}"))
    }

    /// The page, once its data is shown, did not move while it loaded, and
    /// every control on it has a label (a `<label for>`, `aria-label`, or
    /// a button's own text).
    fn assert_steady(&self, page: &str) {
        let cls = self.layout_shift();
        eprintln!("layout shift of {page}: {cls:.4}");
        assert!(cls <= MAX_LAYOUT_SHIFT, "{page} moved while it loaded: layout shift {cls:.3}");
        let unlabelled = self.eval_async(
            "return [...document.querySelectorAll('input, select, textarea, button')] \
               .filter(el => el.type !== 'hidden' && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby') \
                 && !(el.labels && el.labels.length) && !(el.tagName === 'BUTTON' && el.textContent.trim())) \
               .map(el => el.outerHTML.slice(0, 120));",
        );
        assert_eq!(unlabelled, json!([]), "controls without a label on {page}");
    }

    fn screenshot(&self, name: &str) {
        let png = self.rt.block_on(self.c().screenshot()).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Types `keys` as a keyboard does, into whatever has the focus
    /// (`\u{e004}` is Tab, `\u{e007}` Enter).
    fn keys(&self, keys: &str) {
        use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
        let mut typed = KeyActions::new("keyboard".into());
        for k in keys.chars() {
            typed = typed.then(KeyAction::Down { value: k }).then(KeyAction::Up { value: k });
        }
        self.rt.block_on(self.c().perform_actions(typed)).unwrap_or_else(|e| panic!("typing {keys:?}: {e}"));
    }

    /// Presses Tab until `css` has the focus: it can be reached from the keyboard.
    fn tab_to(&self, css: &str) {
        for _ in 0..60 {
            let js = "return !!document.activeElement && document.activeElement.matches(arguments[0]);";
            if self.rt.block_on(self.c().execute(js, vec![json!(css)])).unwrap() == json!(true) {
                return;
            }
            self.keys("\u{e004}");
        }
        panic!("{css} cannot be reached with Tab");
    }

    fn login(&self, user: &str, password: &str) {
        self.goto("/");
        self.fill("#username", user);
        self.fill("#password", password);
        self.click("#login");
        self.wait_text("#whoami", user);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn server() -> (Server, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_in(&tmp.path().join("data"), &[("MESHGATE_ADMIN_PASSWORD", PASSWORD)]);
    (server, tmp)
}

fn v2_share(server: &Server, v2: &Upstream, n: usize) -> f64 {
    let c = server.http();
    let before = v2.hits();
    for _ in 0..n {
        let r = server.gateway(&c, "api.example.com", "/v1/users").send().unwrap();
        assert_eq!(r.status(), 200);
    }
    (v2.hits() - before) as f64 / n as f64 * 100.0
}

#[test]
fn console_shifts_a_canary_checks_yaml_and_rolls_back() {
    let (v1, v2) = (Upstream::start("v1"), Upstream::start("v2"));
    let (server, _tmp) = server();
    let Some(b) = Browser::start(&server) else { return };
    server.apply(&crate::gateway::service("user-service", &[&v1, &v2], ""));
    server.apply(&crate::gateway::vs(
        "  - match: [{uri: {prefix: /v1/users}}]\n    route:\n    - destination: {host: user-service, subset: v1}\n      weight: 80\n    - destination: {host: user-service, subset: v2}\n      weight: 20\n    timeout: 5s\n",
    ));
    let history: Value = server
        .http()
        .get(server.url("/api/v1/history?limit=1"))
        .bearer_auth(server.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let before_console = history["revisions"][0]["revision"].as_i64().expect("a revision");
    // The page itself: served compressed, cacheable by hash, with a CSP.
    let page = server.http().get(server.url("/routes")).header("accept-encoding", "gzip").send().unwrap();
    assert_eq!(page.headers()["content-encoding"], "gzip");
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));

    b.login("admin", PASSWORD);
    b.text("main .empty");
    b.goto("/routes");
    b.wait_text("#routes", "users");
    b.assert_steady("routes");
    b.screenshot("routes");
    b.click("#routes a[href='/routes/default/users']");
    b.text("#canary-0");
    // Drag the canary slider to 50/50, review the diff, apply.
    b.set_value("#canary-0", "50");
    b.click("#tab-review");
    let diff = b.wait_text("#diff", "weight: 50");
    assert!(diff.contains("- ") && diff.contains("weight: 80"), "{diff}");
    b.screenshot("route-diff");
    b.click("#apply");
    b.wait_text("#propagation", &format!("Applied as revision {}", before_console + 1));
    b.wait_text("#propagation", "picked up");
    b.screenshot("route-applied");
    // Real requests through the gateway follow the new split.
    let share = v2_share(&server, &v2, 1000);
    assert!((44.0..=56.0).contains(&share), "v2 got {share:.1}% after the console's 50/50");
    // The service map shows those calls, live.
    b.goto("/");
    b.wait_text("#calls", "user-service");
    b.wait_text("main", "user-service.default v2");
    // Loaded again, now that the calls are there from the first answer (a
    // refresh that brings a new row moves the page: that is new data, not
    // the loading this checks).
    b.goto("/");
    b.wait_text("main", "user-service.default v2");
    b.assert_steady("overview");
    b.screenshot("overview");
    // The service's page: its instances, and per-version charts whose slowest point links to traces.
    b.click("#calls a[href='/services/default/user-service']");
    b.wait_text("#instances", "user-service-v2");
    b.wait_text("main", "user-service.default v2");
    b.screenshot("service");
    // Loaded on its own (not after the overview), it does not move either.
    b.goto("/services/default/user-service");
    b.wait_text("#instances", "user-service-v2");
    b.assert_steady("service");
    b.click("a.slow-traces");
    b.text("#trace-search");
    let min = b.prop("#t-min", "value");
    assert!(min.as_deref().is_some_and(|m| m.ends_with("ms")), "the chart's p99 fills in the search: {min:?}");
    b.goto("/routes/default/users");
    b.text("#canary-0");
    b.assert_steady("route editor");

    // The YAML editor checks as the server does, and names the field.
    b.click("#tab-yaml");
    let yaml = b.prop("#yaml", "value").expect("the YAML editor's text");
    b.set_value("#yaml", &yaml.replace("timeout:", "timout:"));
    let problems = b.wait_text("#problems", "timout");
    assert!(problems.contains("spec.http[0]") && problems.contains("timeout"), "{problems}");
    b.screenshot("route-yaml-error");

    // Roll back from the history page to the state before the console's change.
    b.goto("/history");
    b.text(&format!("tr[data-revision='{before_console}'] button.rollback"));
    b.assert_steady("history");
    b.click(&format!("tr[data-revision='{before_console}'] button.rollback"));
    b.wait_text("#rollback-done", &format!("Rolled back to revision {before_console}"));
    b.screenshot("history");
    let vs: Value = serde_json::from_str(&server.ok(&["get", "vs", "users", "-o", "json"])).unwrap();
    assert_eq!(vs["spec"]["http"][0]["route"][1]["weight"], 20, "{vs}");
    let share = v2_share(&server, &v2, 1000);
    assert!((15.0..=25.0).contains(&share), "v2 got {share:.1}% after the rollback to 80/20");
}

#[test]
fn console_viewer_sees_no_write_controls_and_is_refused() {
    let (v1, v2) = (Upstream::start("v1"), Upstream::start("v2"));
    let (server, _tmp) = server();
    let Some(b) = Browser::start(&server) else { return };
    server.apply(&crate::gateway::service("user-service", &[&v1, &v2], ""));
    server.apply(&crate::gateway::vs(
        "  - route:\n    - destination: {host: user-service, subset: v1}\n      weight: 80\n    - destination: {host: user-service, subset: v2}\n      weight: 20\n",
    ));
    let made = server
        .http()
        .post(server.url("/api/v1/users"))
        .bearer_auth(server.token())
        .json(&json!({"name": "vic", "password": "viewer-password", "role": "viewer"}))
        .send()
        .unwrap();
    assert_eq!(made.status(), 201);
    // By keyboard alone: log in, then open Routes from the navigation.
    b.goto("/");
    b.text("#username");
    b.tab_to("#username");
    b.keys("vic\u{e004}viewer-password\u{e007}");
    b.wait_text("#whoami", "vic");
    b.tab_to(".nav a[href='/routes']");
    b.keys("\u{e007}");
    b.wait_text("#routes", "users");
    b.goto("/routes");
    b.wait_text("#routes", "users");
    assert!(!b.exists("#new-route"), "a viewer sees no New route button");
    b.goto("/routes/default/users");
    b.text("#canary-0");
    assert!(!b.exists("#tab-review"), "a viewer has no apply");
    let disabled = b.prop("#canary-0", "disabled");
    assert_eq!(disabled.as_deref(), Some("true"));
    assert!(!b.exists("a[href='/users']"), "only admins see Users");
    b.screenshot("viewer-route");
    // A write forged from the page, with the session's own CSRF token, is refused.
    let status = b.eval_async(
        "const me = await (await fetch('/api/v1/whoami')).json(); \
         const r = await fetch('/api/v1/namespaces/default/virtualservices/users', {method: 'DELETE', headers: {'x-csrf-token': me.csrf}}); \
         return [r.status, me.role];",
    );
    assert_eq!(status, json!([403, "viewer"]));
    server.ok(&["get", "vs", "users"]);
    // On a phone-sized screen the pages fit the width: nothing to scroll sideways.
    b.rt.block_on(b.c().set_window_size(390, 844)).unwrap();
    for page in ["/", "/routes", "/routes/default/users", "/history"] {
        b.goto(page);
        b.text("main h1");
        let fits = b.eval_async("return document.documentElement.scrollWidth <= window.innerWidth + 1;");
        assert_eq!(fits, json!(true), "{page} is wider than a phone's screen");
    }
    b.goto("/routes/default/users");
    b.text("#canary-0");
    b.screenshot("phone-route");
}

#[test]
fn console_creates_a_route_and_shows_a_trace_waterfall() {
    let v1 = Upstream::start("v1");
    let (server, _tmp) = server();
    let Some(b) = Browser::start(&server) else { return };
    server.apply(&crate::gateway::service("user-service", &[&v1], ""));
    b.login("admin", PASSWORD);
    b.goto("/routes");
    b.click("#new-route");
    // A bad name is shown at its field, before anything is sent.
    b.fill("#vs-name", "Bad_Name");
    b.fill("#vs-hosts", "api.example.com");
    b.fill("#vs-gateways", "public-gateway");
    b.fill("#vs-dest", "user-service");
    b.click("#create-route");
    b.text(".field-error[data-path='metadata.name']");
    b.screenshot("new-route-error");
    b.fill("#vs-name", "orders");
    b.click("#create-route");
    b.text("#tab-form");
    let got = server.ok(&["get", "vs", "orders", "-o", "yaml"]);
    assert!(got.contains("api.example.com") && got.contains("user-service"), "{got}");
    // The form edits the matches (the path, a header condition, a second
    // match) and the request headers to set.
    b.set_value("#match-kind-0-0", "exact");
    b.set_value("#match-path-0-0", "/v1/users");
    b.set_value("#cond-field-0-0", "headers");
    b.fill("#cond-name-0-0", "x-canary");
    b.set_value("#cond-kind-0-0", "exact");
    b.fill("#cond-value-0-0", "yes");
    b.click("#cond-add-0-0");
    assert_eq!(b.prop("#headers-value-0-0-0", "value").as_deref(), Some("yes"));
    b.click("#add-match-0");
    b.set_value("#match-kind-0-1", "exact");
    b.set_value("#match-path-0-1", "/v1/health");
    b.set_value("#req-set-0", "x-team=payments");
    b.screenshot("route-form");
    b.click("#tab-review");
    b.wait_text("#diff", "x-team: payments");
    b.click("#apply");
    b.wait_text("#propagation", "picked up");
    let got = server.ok(&["get", "vs", "orders", "-o", "yaml"]);
    for want in ["exact: /v1/users", "x-canary:", "exact: \"yes\"", "exact: /v1/health", "x-team: payments"] {
        assert!(got.contains(want), "{want} missing from\n{got}");
    }

    // A sampled request through the gateway: its trace, in the waterfall.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let c = server.http();
    // The header condition decides: without it the first match fails and
    // no route takes the request; the second match takes /v1/health.
    let status = |path: &str, canary: bool| {
        let mut r = server.gateway(&c, "api.example.com", path);
        if canary {
            r = r.header("x-canary", "yes");
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(status("/v1/users", false), 404);
    assert_eq!(status("/v1/health", false), 200);
    let r = server
        .gateway(&c, "api.example.com", "/v1/users")
        .header("x-canary", "yes")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(v1.last().headers["x-team"], "payments", "the header the form set reaches the service");
    b.goto("/traces");
    b.wait_text("#traces", "user-service");
    b.assert_steady("traces");
    b.screenshot("traces");
    b.goto(&format!("/traces/{trace_id}"));
    b.wait_text("#waterfall", "meshgate-gateway");
    b.assert_steady("trace");
    b.click("#waterfall .span");
    let detail = b.wait_text("#span-detail", "http.status_code");
    assert!(detail.contains("200") && detail.contains("guid:x-request-id"), "{detail}");
    b.screenshot("trace-waterfall");

    // Gateways and API: the listener the Gateway opened.
    b.goto("/gateways");
    b.wait_text("#listeners", "public-gateway");
    b.assert_steady("gateways");
    b.screenshot("gateways");
    // Security: a join token made in the page, and STRICT mTLS for a namespace.
    b.goto("/security");
    b.text("#ca-roots");
    b.assert_steady("security");
    b.fill("#jt-service", "orders");
    b.click("#make-join-token");
    let token = b.text("#join-token");
    assert!(token.len() > 20, "{token:?}");
    b.wait_text("#join-tokens", "default/orders");
    b.set_value("#mtls-mode", "STRICT");
    b.click("#set-mtls");
    b.wait_text("#mtls", "STRICT");
    b.screenshot("security");
    let pa = server.ok(&["get", "peerauthentication", "default", "-n", "default", "-o", "yaml"]);
    assert!(pa.contains("STRICT"), "{pa}");
    // Users: an editor added in the page can log in.
    b.goto("/users");
    b.wait_text("#users", "admin");
    b.assert_steady("users");
    b.fill("#u-name", "erin");
    b.fill("#u-password", "editor-password");
    b.set_value("#u-role", "editor");
    b.click("#add-user");
    b.wait_text("#users", "erin");
    let login = server
        .http()
        .post(server.url("/api/v1/login"))
        .json(&json!({"username": "erin", "password": "editor-password"}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(login.json::<Value>().unwrap()["role"], "editor");
}
