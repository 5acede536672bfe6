//! The mesh's joining: the CA, join tokens and agents that get and renew
//! their certificates (real `meshgate up` and `meshgate agent` processes).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{BIN, Server, text};

/// `user-service`: the workloads that agents register with `app: user-service`.
pub const USER_SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: user-service}\nspec:\n  hosts: [user-service]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  workloadSelector: {labels: {app: user-service}}\n";

/// Bounds a wait that only a hang would exceed.
pub const WAIT: Duration = Duration::from_secs(60);

/// A running `meshgate agent` whose stdout lines are read as they come.
pub struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Agent {
    pub fn start(server: &Server, dir: &Path, args: &[&str]) -> Agent {
        Agent::start_at(&server.mesh, dir, args)
    }

    /// An agent of the control plane at `mesh` (`https://ADDR`), up or not.
    fn start_at(mesh: &str, dir: &Path, args: &[&str]) -> Agent {
        Agent::spawn(agent_command(Command::new(BIN), mesh, dir, args))
    }

    /// Starts `cmd` (an [`agent_command`]).
    pub fn spawn(mut cmd: Command) -> Agent {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn agent");
        let lines = crate::support::line_reader(child.stdout.take().expect("stdout"));
        Agent { child, lines, seen: Vec::new() }
    }

    /// The next line starting with `prefix` (earlier lines are kept in `seen`).
    pub fn wait_for(&mut self, prefix: &str) -> String {
        crate::support::wait_line(&self.lines, prefix, &mut self.seen)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `meshgate agent` of the control plane at `mesh`, run by `cmd` (the
/// binary itself, or the binary on a lab host).
pub fn agent_command(mut cmd: Command, mesh: &str, dir: &Path, args: &[&str]) -> Command {
    cmd.args(["agent", "--join", mesh, "--data-dir"]).arg(dir).args(args);
    // Port 0 unless the test chooses: tests run side by side.
    for flag in ["--inbound", "--outbound", "--metrics"] {
        if !args.contains(&flag) {
            cmd.args([flag, "127.0.0.1:0"]);
        }
    }
    cmd.env("MESHGATE_LOG", "warn")
        .env("MESHGATE_STATS_INTERVAL", "1s")
        .env_remove("MESHGATE_JOIN_TOKEN")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs an agent that is expected to give up; returns its output.
fn agent_fails(server: &Server, dir: &Path, args: &[&str]) -> Output {
    let out =
        agent_command(Command::new(BIN), &server.mesh, dir, args).stdout(Stdio::piped()).output().expect("run agent");
    assert!(!out.status.success(), "agent {args:?} should have failed:\n{}", text(&out.stdout));
    out
}

pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {line:?}"))
}

pub fn token(server: &Server, args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    server.ok(&all).trim().to_string()
}

fn tokens(server: &Server) -> serde_json::Value {
    let out = server.ok(&["token", "list", "-o", "json"]);
    serde_json::from_str(&out).expect("token list JSON")
}

#[test]
fn an_agent_joins_with_a_pinned_root_and_renews_its_certificate() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = token(&server, &["--service", "user-service", "--single-use"]);
    assert!(t.starts_with("mgj_"), "{t}");

    // A wrong pin: the agent refuses the control plane before sending the token.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = agent_fails(
        &server,
        &tmp.path().join("a"),
        &["--token", &t, "--service", "user-service", "--ca-fingerprint", &wrong],
    );
    assert!(text(&out.stderr).contains("no certificate with fingerprint"), "{}", text(&out.stderr));
    // No pin at all: refused, never trust on first use.
    let out = agent_fails(&server, &tmp.path().join("a"), &["--token", &t, "--service", "user-service"]);
    assert!(text(&out.stderr).contains("without a pinned root"), "{}", text(&out.stderr));
    assert_eq!(tokens(&server)[0]["uses"], 0, "the token was not spent by the refused attempts");

    // The right pin: a certificate for the token's identity, renewed at half its lifetime.
    let dir = tmp.path().join("agent");
    let fp = server.ca_fingerprint.clone();
    let mut agent = Agent::start(
        &server,
        &dir,
        &["--token", &t, "--service", "user-service", "--ca-fingerprint", &fp, "--cert-ttl", "6s"],
    );
    let ready = agent.wait_for("meshgate agent ready ");
    assert_eq!(field(&ready, "identity="), "spiffe://cluster.local/ns/default/sa/user-service");
    let first = field(&ready, "serial=").to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is readable by its owner only");
    }
    let renewed = agent.wait_for("renewed certificate ");
    let second = field(&renewed, "serial=").to_string();
    assert_ne!(first, second);
    assert_eq!(field(&renewed, "identity="), "spiffe://cluster.local/ns/default/sa/user-service");

    // The control plane recorded both.
    let certs: serde_json::Value = server
        .http()
        .get(server.url("/api/v1/certificates"))
        .bearer_auth(server.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let serials: Vec<&str> = certs["items"].as_array().unwrap().iter().filter_map(|c| c["serial"].as_str()).collect();
    assert!(serials.contains(&first.as_str()) && serials.contains(&second.as_str()), "{serials:?}");

    // The single-use token does not admit a second agent.
    let out = agent_fails(
        &server,
        &tmp.path().join("b"),
        &["--token", &t, "--service", "user-service", "--ca-fingerprint", &fp],
    );
    assert!(text(&out.stderr).contains("single use and has been used"), "{}", text(&out.stderr));

    // Restarted without a token, the agent carries on with what it keeps on disk.
    drop(agent);
    let mut again = Agent::start(&server, &dir, &["--service", "user-service", "--cert-ttl", "6s"]);
    again.wait_for("resumed certificate ");
    again.wait_for("meshgate agent ready ");
}

#[test]
fn join_tokens_are_scoped_expire_and_can_be_revoked() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let fp = server.ca_fingerprint.clone();

    // A token for `orders` cannot get a certificate for `user-service`.
    let orders = token(&server, &["--service", "orders"]);
    let out = agent_fails(
        &server,
        &tmp.path().join("a"),
        &["--token", &orders, "--service", "user-service", "--ca-fingerprint", &fp],
    );
    assert!(text(&out.stderr).contains("this join token is for service \"orders\""), "{}", text(&out.stderr));

    // Namespace and service account come from the token.
    let scoped = token(&server, &["--service", "orders", "-n", "shop", "--service-account", "orders-sa"]);
    let mut agent = Agent::start(
        &server,
        &tmp.path().join("b"),
        &["--token", &scoped, "--service", "orders", "-n", "shop", "--ca-fingerprint", &fp],
    );
    let ready = agent.wait_for("meshgate agent ready ");
    assert_eq!(field(&ready, "identity="), "spiffe://cluster.local/ns/shop/sa/orders-sa");
    drop(agent);

    // Revoked.
    let revoked = token(&server, &["--service", "orders"]);
    let id = tokens(&server).as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_string();
    server.ok(&["token", "revoke", &id]);
    let out = agent_fails(
        &server,
        &tmp.path().join("c"),
        &["--token", &revoked, "--service", "orders", "--ca-fingerprint", &fp],
    );
    assert!(text(&out.stderr).contains("revoked"), "{}", text(&out.stderr));

    // Expired: wait for the clock to pass its expiry, then try.
    let short = token(&server, &["--service", "orders", "--ttl", "1s"]);
    let expires = tokens(&server).as_array().unwrap().last().unwrap()["expiresAt"].as_str().unwrap().to_string();
    let expires = chrono::DateTime::parse_from_rfc3339(&expires).unwrap();
    while chrono::Utc::now() <= expires {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = agent_fails(
        &server,
        &tmp.path().join("d"),
        &["--token", &short, "--service", "orders", "--ca-fingerprint", &fp],
    );
    assert!(text(&out.stderr).contains("expired"), "{}", text(&out.stderr));

    // An unknown token, and bad token requests, get clear errors.
    let out = agent_fails(
        &server,
        &tmp.path().join("e"),
        &["--token", "mgj_nope", "--service", "orders", "--ca-fingerprint", &fp],
    );
    assert!(text(&out.stderr).contains("unknown join token"), "{}", text(&out.stderr));
    let err = server.fails(&["token", "create", "--service", "Bad_Name"]);
    assert!(err.contains("service"), "{err}");
    let err = server.fails(&["token", "create", "--service", "orders", "--ttl", "45d"]);
    assert!(err.contains("ttl"), "{err}");
}

#[test]
fn istio_mutual_from_the_gateway_presents_its_mesh_certificate() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    // A workload's real mesh certificate: an agent joins and keeps it on disk.
    let t = token(&server, &["--service", "secure"]);
    let dir = tmp.path().join("workload");
    let fp = server.ca_fingerprint.clone();
    let mut agent = Agent::start(&server, &dir, &["--token", &t, "--service", "secure", "--ca-fingerprint", &fp]);
    agent.wait_for("meshgate agent ready ");
    drop(agent);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    // The workload serves with it and accepts only clients with a mesh certificate.
    let workload =
        crate::upstream::Upstream::start_tls("secure", &read("cert.pem"), &read("key.pem"), Some(&read("roots.pem")));
    let c = reqwest::blocking::Client::new();
    let get = || {
        let r = server.gateway(&c, "api.example.com", "/x").send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };

    server.apply(&crate::tls::tls_origination(workload.port(), "{mode: ISTIO_MUTUAL}"));
    assert_eq!(get(), (200, "secure".to_string()));
    // subjectAltNames: the peer must be that SPIFFE ID.
    server.apply(&crate::tls::tls_origination(
        workload.port(),
        "{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/other]}",
    ));
    assert_eq!(get().0, 503, "a workload with another identity is refused");
    server.apply(&crate::tls::tls_origination(
        workload.port(),
        "{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/secure]}",
    ));
    assert_eq!(get(), (200, "secure".to_string()));
    // Without TLS, the workload (which insists on a client certificate) cannot be reached.
    server.apply(&crate::tls::tls_origination(workload.port(), "{mode: DISABLE}"));
    assert_ne!(get().0, 200);
}

/// A ready sidecar for `user-service` in front of `app`, and its ready line.
pub fn user_service_sidecar(
    server: &Server,
    dir: &Path,
    app: &crate::upstream::Upstream,
    extra: &[&str],
) -> (Agent, String) {
    sidecar_for(server, dir, "user-service", &format!("127.0.0.1:{}", app.port()), extra)
}

/// A ready sidecar for `service` in front of the app at `app_addr`, and its ready line.
pub fn sidecar_for(server: &Server, dir: &Path, service: &str, app_addr: &str, extra: &[&str]) -> (Agent, String) {
    let t = token(server, &["--service", service]);
    let mut args =
        vec!["--token", &t, "--service", service, "--ca-fingerprint", &server.ca_fingerprint, "--app", app_addr];
    args.extend_from_slice(extra);
    let mut agent = Agent::start(server, dir, &args);
    let ready = agent.wait_for("meshgate agent ready ");
    (agent, ready)
}

pub fn proxy_status(server: &Server) -> serde_json::Value {
    server.http().get(server.url("/api/v1/proxy-status")).bearer_auth(server.token()).send().unwrap().json().unwrap()
}

/// Waits until every sidecar runs the control plane's current revision.
pub fn wait_synced(server: &Server, sidecars: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = proxy_status(server);
        let revision = status["revision"].as_i64().unwrap();
        let proxies = status["proxies"].as_array().unwrap();
        let synced =
            proxies.iter().filter(|p| p["role"] == "sidecar" && p["revision"].as_i64() == Some(revision)).count();
        if synced == sidecars {
            return;
        }
        assert!(Instant::now() < deadline, "sidecars not synced: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sidecars_carry_calls_over_mtls_and_peer_authentication_decides() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let fp = server.ca_fingerprint.clone();
    let app = crate::upstream::Upstream::start("user-v1");
    server.apply(USER_SERVICE);
    let (mut server_side, ready) = user_service_sidecar(&server, &tmp.path().join("user"), &app, &["--version", "v1"]);
    let inbound = field(&ready, "inbound=").to_string();
    let name = field(&ready, "name=").to_string();

    let t = token(&server, &["--service", "orders"]);
    let args = ["--token", &t, "--service", "orders", "--ca-fingerprint", &fp];
    let mut client_side = Agent::start(&server, &tmp.path().join("orders"), &args);
    let outbound = field(&client_side.wait_for("meshgate agent ready "), "outbound=").to_string();

    // The instance registered itself, with the label that turns mTLS on.
    let we = server.ok(&["get", "workloadentry", &name, "-o", "json"]);
    assert!(we.contains("\"security.istio.io/tlsMode\": \"istio\"") && we.contains("\"version\": \"v1\""), "{we}");
    wait_synced(&server, 2);
    let status = server.ok(&["proxy-status"]);
    assert!(status.contains(&name) && status.lines().filter(|l| l.contains("SYNCED")).count() == 3, "{status}");

    // orders → its sidecar (by Host) → mTLS → user-service's sidecar → the app,
    // which learns the caller's identity.
    let c = server.http();
    let call = |url: &str, host: &str| c.get(url).header("host", host).send();
    let r = call(&format!("http://{outbound}/users"), "user-service").unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "user-v1");
    let seen = app.last();
    assert_eq!(seen.path, "/users");
    assert_eq!(
        seen.headers["x-forwarded-client-cert"],
        "By=spiffe://cluster.local/ns/default/sa/user-service;URI=spiffe://cluster.local/ns/default/sa/orders"
    );

    // PERMISSIVE (the default): plaintext straight to the inbound port is served, without an identity.
    let r = call(&format!("http://{inbound}/plain"), "user-service").unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(app.last().headers.get("x-forwarded-client-cert").is_none());

    // STRICT mesh-wide: plaintext is refused; mTLS from the mesh still works, also from the gateway.
    server.apply("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n");
    wait_synced(&server, 2);
    assert!(call(&format!("http://{inbound}/plain"), "user-service").is_err(), "plaintext refused under STRICT");
    assert_eq!(call(&format!("http://{outbound}/users"), "user-service").unwrap().status().as_u16(), 200);
    server.apply("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [api.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: edge}\nspec:\n  hosts: [api.example.com]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: user-service}}]\n");
    let r = server.gateway(&c, "api.example.com", "/edge").send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        app.last().headers["x-forwarded-client-cert"],
        "By=spiffe://cluster.local/ns/default/sa/user-service;URI=spiffe://cluster.local/ns/meshgate-system/sa/meshgate-gateway"
    );

    // A proxy with a certificate from another mesh's CA is refused.
    let other = Server::start();
    other.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [api.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: user-service}}\nspec:\n  hosts: [user-service]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}, labels: {{security.istio.io/tlsMode: istio}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge}}\nspec:\n  hosts: [api.example.com]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: user-service}}}}]\n",
        inbound.rsplit(':').next().unwrap()
    ));
    let r = other.gateway(&c, "api.example.com", "/stranger").send().unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_ne!(app.last().path, "/stranger");

    // A stopped agent takes its instance out of the mesh.
    drop(client_side);
    unsafe_terminate(&mut server_side);
    let deadline = Instant::now() + WAIT;
    while server.cli(&["get", "workloadentry", &name]).status.success() {
        assert!(Instant::now() < deadline, "the WorkloadEntry was not removed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Client-only agents for `services`, each in `dir/SERVICE`: their outbound addresses by service, and the agents.
pub fn client_agents<'a>(
    server: &Server,
    dir: &Path,
    services: &[&'a str],
) -> (std::collections::BTreeMap<&'a str, String>, Vec<Agent>) {
    let mut outbound = std::collections::BTreeMap::new();
    let mut agents = Vec::new();
    for service in services {
        let t = token(server, &["--service", service]);
        let args = ["--token", &t, "--service", service, "--ca-fingerprint", &server.ca_fingerprint];
        let mut a = Agent::start(server, &dir.join(service), &args);
        outbound.insert(*service, field(&a.wait_for("meshgate agent ready "), "outbound=").to_string());
        agents.push(a);
    }
    (outbound, agents)
}

/// Stops an agent with SIGTERM (as a service manager does) and waits for it.
fn unsafe_terminate(agent: &mut Agent) {
    let _ = Command::new("kill").arg("-TERM").arg(agent.child.id().to_string()).status();
    let _ = agent.child.wait();
}

#[test]
fn authorization_policies_allow_and_deny_between_services() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let app = crate::upstream::Upstream::start("users");
    server.apply(USER_SERVICE);
    let (_users, _) = user_service_sidecar(&server, &tmp.path().join("users"), &app, &[]);
    let (outbound, agents) = client_agents(&server, tmp.path(), &["orders", "billing"]);
    let c = server.http();
    let call = |from: &str, method: reqwest::Method, path: &str| {
        let r = c
            .request(method, format!("http://{}{path}", outbound[from]))
            .header("host", "user-service")
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    server.apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: users-allow}\nspec:\n  selector: {matchLabels: {app: user-service}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/orders]}}]\n    to: [{operation: {methods: [GET], paths: [/users/*]}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: admin-deny}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/users/admin*]}}]\n",
    );
    wait_synced(&server, 3);
    assert_eq!(call("orders", reqwest::Method::GET, "/users/1"), (200, "users".to_string()));
    assert_eq!(call("orders", reqwest::Method::POST, "/users/1"), (403, "RBAC: access denied\n".to_string()));
    assert_eq!(call("billing", reqwest::Method::GET, "/users/1").0, 403, "another caller");
    assert_eq!(call("orders", reqwest::Method::GET, "/users/admin").0, 403, "DENY comes first");
    assert_eq!(app.last().path, "/users/1", "refused requests never reached the app");

    // Without the ALLOW policy, anyone may call (but DENY still holds).
    server.ok(&["delete", "authorizationpolicy", "users-allow"]);
    wait_synced(&server, 3);
    assert_eq!(call("billing", reqwest::Method::GET, "/users/2").0, 200);
    assert_eq!(call("billing", reqwest::Method::GET, "/users/admin").0, 403);
    drop(agents);
}

#[test]
fn up_runs_and_supervises_sidecars_for_local_services() {
    let app = crate::upstream::Upstream::start("local-app");
    let spec = format!(
        "service=user-service,version=v2,app=127.0.0.1:{},inbound=127.0.0.1:0,outbound=127.0.0.1:0,metrics=127.0.0.1:0",
        app.port()
    );
    let server = Server::start_with(&["--sidecar", &spec]);
    let ready = server.wait_stdout("[user-service] meshgate agent ready ");
    assert_eq!(field(&ready, "identity="), "spiffe://cluster.local/ns/default/sa/user-service");
    let name = field(&ready, "name=").to_string();
    let outbound = field(&ready, "outbound=").to_string();
    let we = server.ok(&["get", "workloadentry", &name, "-o", "json"]);
    assert!(we.contains("\"version\": \"v2\""), "{we}");

    // The sidecar serves: its own service through its outbound port.
    server.apply(USER_SERVICE);
    wait_synced(&server, 1);
    let r = server.http().get(format!("http://{outbound}/self")).header("host", "user-service").send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "local-app");

    // Killed, it is restarted (no token needed: its certificate is on disk).
    let pid = ready_pid(&server, &name);
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    server.wait_stdout("[user-service] resumed certificate ");
    server.wait_stdout("[user-service] meshgate agent ready ");

    // Bad specs are refused before anything starts.
    let out = crate::support::up_fails(&["--sidecar", "service=a,colour=red"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown key \"colour\""), "{}", text(&out.stderr));
}

/// The pid of the agent process named `name` (from /proc).
fn ready_pid(server: &Server, name: &str) -> String {
    let dir = server.data_dir.join("agents").join("user-service");
    assert!(std::fs::read_to_string(dir.join("name")).unwrap().trim() == name);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" agent ") && cmdline.contains(dir.to_str().unwrap()) {
            return entry.file_name().to_string_lossy().into_owned();
        }
    }
    panic!("no agent process for {name}");
}

#[test]
fn traffic_flows_while_the_control_plane_is_down_and_agents_resync_after() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start_in(&data, &[]);
    let mesh_addr = server.mesh.trim_start_matches("https://").to_string();
    let app = crate::upstream::Upstream::start("steady");
    server.apply(USER_SERVICE);
    let (_users, _) = user_service_sidecar(&server, &tmp.path().join("users"), &app, &[]);
    let (outbound, orders) = client_agents(&server, tmp.path(), &["orders"]);
    let outbound = outbound["orders"].clone();
    wait_synced(&server, 2);
    let c = server.http();
    let get =
        || c.get(format!("http://{outbound}/")).header("host", "user-service").send().map(|r| r.status().as_u16());
    assert_eq!(get().unwrap(), 200);

    // kill -9 the control plane: the sidecars keep serving what they have.
    server.crash();
    for _ in 0..20 {
        assert_eq!(get().unwrap(), 200, "a request failed while the control plane was down");
    }

    // An agent restarted meanwhile serves from what it keeps on disk: certificate and configuration.
    drop(orders);
    let mut orders =
        Agent::start_at(&format!("https://{mesh_addr}"), &tmp.path().join("orders"), &["--service", "orders"]);
    orders.wait_for("resumed configuration ");
    let outbound = field(&orders.wait_for("meshgate agent ready "), "outbound=").to_string();
    let get =
        || c.get(format!("http://{outbound}/")).header("host", "user-service").send().map(|r| r.status().as_u16());
    assert_eq!(get().unwrap(), 200);

    // Back on the same data dir and mesh address: the agents find it again and catch up.
    let server = Server::start_in_with(&data, &["--mesh", &mesh_addr]);
    server.apply("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n");
    wait_synced(&server, 2);
    assert_eq!(get().unwrap(), 200);
}

#[test]
fn proxy_config_shows_what_each_agent_runs_as_it_reports_it() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let fp = server.ca_fingerprint.clone();
    let (v1, v2) = (crate::upstream::Upstream::start("v1"), crate::upstream::Upstream::start("v2"));
    server.apply(USER_SERVICE);
    let (_a, ready_v1) = user_service_sidecar(&server, &tmp.path().join("v1"), &v1, &["--version", "v1"]);
    let (_b, _) = user_service_sidecar(&server, &tmp.path().join("v2"), &v2, &["--version", "v2"]);
    let t = token(&server, &["--service", "orders"]);
    let mut orders = Agent::start(
        &server,
        &tmp.path().join("orders"),
        &["--token", &t, "--service", "orders", "--ca-fingerprint", &fp],
    );
    let ready = orders.wait_for("meshgate agent ready ");
    let name = field(&ready, "name=").to_string();
    server.apply("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: user-service}\nspec:\n  host: user-service\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: user-service}\nspec:\n  hosts: [user-service]\n  http:\n  - match: [{uri: {prefix: /v2}}]\n    route: [{destination: {host: user-service, subset: v2}}]\n  - route:\n    - {destination: {host: user-service, subset: v1}, weight: 80}\n    - {destination: {host: user-service, subset: v2}, weight: 20}\n");
    wait_synced(&server, 3);
    let json = |section: &str, who: &str| -> serde_json::Value {
        serde_json::from_str(&server.ok(&["proxy-config", section, who, "-o", "json"])).expect("JSON")
    };

    // Routes: the match and the 80/20 split, as orders' own sidecar compiled them.
    let routes = json("routes", &name);
    let split = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["domain"] == "user-service" && r["action"]["clusters"].as_array().is_some_and(|c| c.len() == 2))
        .unwrap_or_else(|| panic!("no 80/20 route in {routes:#}"));
    assert_eq!(split["action"]["clusters"][0]["weight"], 80, "{split}");
    assert_eq!(split["action"]["clusters"][1]["cluster"], "outbound|80|v2|user-service.default.svc.cluster.local");
    let table = server.ok(&["proxy-config", "routes", &name]);
    assert!(table.contains("uri=prefix:/v2") && table.contains("(80%)"), "{table}");

    // Clusters: mTLS to both subsets (auto mTLS: the endpoints are agents).
    let clusters = json("clusters", &name);
    let v1_cluster = clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbound|80|v1|user-service.default.svc.cluster.local")
        .unwrap_or_else(|| panic!("{clusters:#}"));
    assert_eq!((v1_cluster["tls"].as_str(), v1_cluster["endpoints"].as_u64()), (Some("ISTIO_MUTUAL"), Some(1)));

    // Endpoints: v1's inbound port, healthy.
    let endpoints = json("endpoints", &name);
    let inbound_v1 = field(&ready_v1, "inbound=").rsplit(':').next().unwrap().to_string();
    assert!(
        endpoints
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["cluster"] == "outbound|80|v1|user-service.default.svc.cluster.local"
                && e["address"].as_str().unwrap().ends_with(&format!(":{inbound_v1}"))
                && e["status"] == "HEALTHY"),
        "{endpoints:#}"
    );

    // Secret: the agent's certificate (never its key).
    let secret = json("secret", &name);
    assert_eq!(secret["identity"], "spiffe://cluster.local/ns/default/sa/orders");
    assert_eq!(secret["serial"], field(&ready, "serial="));
    assert_eq!(secret["valid"], true);
    assert!(!server.ok(&["proxy-config", "all", &name, "-o", "json"]).contains("PRIVATE KEY"));

    // The gateway too; an unknown proxy is named in the error.
    let gw = json("secret", "gateway");
    assert_eq!(gw["identity"], "spiffe://cluster.local/ns/meshgate-system/sa/meshgate-gateway");
    let err = server.fails(&["proxy-config", "routes", "nobody-1234"]);
    assert!(err.contains("no proxy named \"nobody-1234\""), "{err}");

    // A stopped agent no longer answers: its last report, said to be so.
    let _ = orders.child.kill();
    let _ = orders.child.wait();
    let out = server.cli(&["proxy-config", "secret", &name]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("did not answer in time"), "{}", text(&out.stderr));
}

/// Waits until `name`'s WorkloadEntry, as `get -o json` shows it, satisfies `ok`.
fn wait_entry(server: &Server, name: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = server.cli(&["get", "workloadentry", name, "-o", "json"]);
        if out.status.success() {
            let we: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            if ok(&we) {
                return we;
            }
            assert!(Instant::now() < deadline, "{name} never became {what}: {we:#}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn health_of(we: &serde_json::Value) -> (&str, &str) {
    let notes = &we["metadata"]["annotations"];
    (
        notes["meshgate.io/health"].as_str().unwrap_or("healthy"),
        notes["meshgate.io/health-reason"].as_str().unwrap_or(""),
    )
}

#[test]
fn unhealthy_instances_leave_every_proxy_and_come_back() {
    let server = Server::start_with(&["--agent-grace", "1s"]);
    let tmp = tempfile::tempdir().unwrap();
    let (good, flaky) = (crate::upstream::Upstream::start("good"), crate::upstream::Upstream::start("flaky"));
    server.apply(USER_SERVICE);
    let probe = ["--health", "http:/healthz", "--health-interval", "100ms"];
    let (_good_agent, _) = user_service_sidecar(&server, &tmp.path().join("good"), &good, &probe);
    let (mut flaky_agent, ready) = user_service_sidecar(&server, &tmp.path().join("flaky"), &flaky, &probe);
    let flaky_name = field(&ready, "name=").to_string();
    let (outbound, _orders) = client_agents(&server, tmp.path(), &["orders"]);
    let outbound = outbound["orders"].clone();
    wait_synced(&server, 3);
    let c = server.http();
    let answers = |n: usize| {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            let r = c.get(format!("http://{outbound}/users")).header("host", "user-service").send().unwrap();
            seen.insert(format!("{} {}", r.status().as_u16(), r.text().unwrap()));
        }
        seen
    };
    assert_eq!(answers(40), ["200 flaky", "200 good"].map(String::from).into(), "both instances serve");
    assert!(flaky.hits() > 0 && flaky.state.seen.lock().unwrap().iter().any(|s| s.path == "/healthz"), "probed");

    // The app fails its probe: its instance is marked unhealthy, and no proxy sends it traffic.
    flaky.state.always_status.store(503, std::sync::atomic::Ordering::SeqCst);
    let we = wait_entry(&server, &flaky_name, "unhealthy", |we| health_of(we).0 == "unhealthy");
    assert_eq!(health_of(&we).1, "GET /healthz answered 503");
    wait_synced(&server, 3);
    assert_eq!(answers(20), ["200 good".to_string()].into());

    // Healthy again: back in.
    flaky.state.always_status.store(0, std::sync::atomic::Ordering::SeqCst);
    wait_entry(&server, &flaky_name, "healthy", |we| health_of(we).0 == "healthy");
    wait_synced(&server, 3);
    assert!(answers(40).contains("200 flaky"));

    // Its agent is lost (no deregistration): unhealthy once the grace period is over.
    let _ = flaky_agent.child.kill();
    let _ = flaky_agent.child.wait();
    let we = wait_entry(&server, &flaky_name, "unhealthy", |we| health_of(we).0 == "unhealthy");
    assert!(health_of(&we).1.starts_with("its agent has been out of contact since "), "{we:#}");
    wait_synced(&server, 2);
    assert_eq!(answers(20), ["200 good".to_string()].into());
}

/// A TCP service that echoes each line back, prefixed with `name: `.
fn tcp_echo(name: &'static str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{BufRead as _, Write as _};
                let mut out = stream.try_clone().unwrap();
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    if writeln!(out, "{name}: {line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Opens a CONNECT tunnel to `target` through the proxy at `proxy`: the
/// status line of the answer, and the stream when it is a 2xx.
fn connect_via(proxy: &str, target: &str) -> (String, Option<std::io::BufReader<std::net::TcpStream>>) {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut line = String::new();
    while r.read_line(&mut line).unwrap() > 2 {
        line.clear();
    }
    let ok = status.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2'));
    (status.trim().to_string(), ok.then_some(r))
}

#[test]
fn tcp_crosses_the_mesh_in_connect_tunnels_over_mtls() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let fp = server.ca_fingerprint.clone();
    let db = tcp_echo("user-db");
    server.apply("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: user-db}\nspec:\n  hosts: [user-db]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 5432, name: tcp-postgres, protocol: TCP}]\n  workloadSelector: {labels: {app: user-db}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n");
    let t = token(&server, &["--service", "user-db"]);
    let app = db.to_string();
    let mut db_agent = Agent::start(
        &server,
        &tmp.path().join("db"),
        &["--token", &t, "--service", "user-db", "--ca-fingerprint", &fp, "--app", &app],
    );
    db_agent.wait_for("meshgate agent ready ");
    let (outbound, agents) = client_agents(&server, tmp.path(), &["orders", "billing"]);
    wait_synced(&server, 3);

    // orders → its sidecar (CONNECT) → mTLS → user-db's sidecar (CONNECT) → the database, bytes both ways.
    use std::io::{BufRead as _, Write as _};
    let (status, tunnel) = connect_via(&outbound["orders"], "user-db:5432");
    let mut tunnel = tunnel.unwrap_or_else(|| panic!("no tunnel: {status}"));
    for query in ["SELECT 1", "SELECT 2"] {
        writeln!(tunnel.get_mut(), "{query}").unwrap();
        let mut answer = String::new();
        tunnel.read_line(&mut answer).unwrap();
        assert_eq!(answer, format!("user-db: {query}\n"));
    }

    // AuthorizationPolicy holds for tunnels too: only orders may open one.
    server.apply("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: db}\nspec:\n  selector: {matchLabels: {app: user-db}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/orders]}}]\n");
    wait_synced(&server, 3);
    assert!(connect_via(&outbound["orders"], "user-db:5432").1.is_some());
    let (status, refused) = connect_via(&outbound["billing"], "user-db:5432");
    assert!(refused.is_none() && status.contains(" 403 "), "{status}");

    // The edge gateway does not open tunnels.
    let (status, none) = connect_via(&server.http, "user-db:5432");
    assert!(none.is_none() && status.contains(" 405 "), "{status}");
    drop(agents);
}

#[test]
fn the_ca_root_rotates_under_live_traffic() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let old = server.ca_fingerprint.clone();
    let app = crate::upstream::Upstream::start("users");
    server.apply(&format!("{USER_SERVICE}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [api.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge}}\nspec:\n  hosts: [api.example.com]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: user-service}}}}]\n"));
    let ttl = ["--cert-ttl", "6s"];
    let (_users, _) = user_service_sidecar(&server, &tmp.path().join("users"), &app, &ttl);
    let join = |service: &str, pin: &str| {
        let t = token(&server, &["--service", service]);
        let mut a = Agent::start(
            &server,
            &tmp.path().join(service),
            &["--token", &t, "--service", service, "--ca-fingerprint", pin, "--cert-ttl", "6s"],
        );
        let ready = a.wait_for("meshgate agent ready ");
        (a, field(&ready, "outbound=").to_string(), field(&ready, "name=").to_string())
    };
    let mut outbound = std::collections::BTreeMap::new();
    let (orders, to, _) = join("orders", &old);
    outbound.insert("orders", to);
    wait_synced(&server, 2);
    let c = server.http();
    let call = |from: &str| {
        c.get(format!("http://{from}/users")).header("host", "user-service").send().map(|r| r.status().as_u16())
    };
    let edge = || server.gateway(&c, "api.example.com", "/edge").send().map(|r| r.status().as_u16());
    assert_eq!((call(&outbound["orders"]).unwrap(), edge().unwrap()), (200, 200));

    // Rotate: a new root signs; the old stays trusted. Calls go on at once:
    // peers that trust only the old root verify new certificates by the cross-signed root.
    let out = server.ok(&["ca", "rotate"]);
    let new = out.lines().next().unwrap().strip_prefix("new signing root: ").unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!((call(&outbound["orders"]).unwrap(), edge().unwrap()), (200, 200));
    // An agent that joins now, pinned to the old fingerprint, gets a certificate from the new root.
    let (billing, to, billing_name) = join("billing", &old);
    outbound.insert("billing", to);
    wait_synced(&server, 3);
    assert_eq!(call(&outbound["billing"]).unwrap(), 200);
    let secret: serde_json::Value =
        serde_json::from_str(&server.ok(&["proxy-config", "secret", &billing_name, "-o", "json"])).unwrap();
    assert_eq!(secret["roots"], serde_json::json!([new, old]), "{secret}");

    // Retiring the old root waits until every workload has renewed...
    let err = server.fails(&["ca", "retire"]);
    assert!(err.contains("from the old root are still valid"), "{err}");
    let deadline = Instant::now() + WAIT;
    loop {
        let ca: serde_json::Value = serde_json::from_str(&server.ok(&["ca", "show", "-o", "json"])).unwrap();
        if ca["rotation"]["oldRootCertificatesValid"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "old-root certificates never ran out: {ca}");
        assert_eq!(call(&outbound["orders"]).unwrap(), 200, "a call failed during the rotation");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ...then the new root alone is trusted, and the mesh and the edge carry on.
    let out = server.ok(&["ca", "retire"]);
    assert!(out.contains(&format!("retired root {old}")), "{out}");
    for from in ["orders", "billing"] {
        assert_eq!(call(&outbound[from]).unwrap(), 200);
    }
    assert_eq!(edge().unwrap(), 200);
    let ca: serde_json::Value = serde_json::from_str(&server.ok(&["ca", "show", "-o", "json"])).unwrap();
    assert_eq!(ca["bundle"].as_array().unwrap().len(), 1);
    drop((orders, billing));
}

/// A unary gRPC call over h2c (prior knowledge) to `addr` with `:authority`
/// `authority`: the decoded answers and the `grpc-status`.
pub fn grpc_call<Req: prost::Message, Resp: prost::Message + Default>(
    addr: &str,
    authority: &str,
    path: &str,
    request: &Req,
) -> (Vec<Resp>, String) {
    use http_body_util::BodyExt as _;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let msg = request.encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        let req = http::Request::post(format!("http://{authority}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let headers = resp.headers().clone();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = trailers
            .get("grpc-status")
            .or(headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let mut data = &collected.to_bytes()[..];
        let mut out = Vec::new();
        while data.len() >= 5 {
            let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            out.push(Resp::decode(&data[5..5 + len]).unwrap());
            data = &data[5 + len..];
        }
        (out, status)
    })
}

#[test]
fn grpc_crosses_the_mesh_over_mtls_http2() {
    use crate::transcode::{GetUserRequest, ListUsersRequest, User};
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let app = crate::transcode::user_service();
    server.apply("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: user-service}\nspec:\n  hosts: [user-service]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 50051, name: grpc, protocol: GRPC}]\n  workloadSelector: {labels: {app: user-service}}\n");
    let t = token(&server, &["--service", "user-service"]);
    let app_addr = format!("127.0.0.1:{}", app.port);
    let args =
        ["--token", &t, "--service", "user-service", "--ca-fingerprint", &server.ca_fingerprint, "--app", &app_addr];
    let mut users = Agent::start(&server, &tmp.path().join("users"), &args);
    users.wait_for("meshgate agent ready ");
    let (outbound, agents) = client_agents(&server, tmp.path(), &["orders"]);
    // STRICT: only mTLS reaches the app's sidecar.
    server.apply("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n");
    wait_synced(&server, 2);

    // orders → its sidecar (h2c) → mTLS with ALPN h2 → user-service's sidecar → the app (h2c).
    let path = "/users.v1.UserService/GetUser";
    let ask = |view: &str| {
        grpc_call::<_, User>(&outbound["orders"], "user-service", path, &GetUserRequest { id: 7, view: view.into() })
    };
    let (answers, status) = ask("");
    assert_eq!((answers.len(), status.as_str()), (1, "0"));
    assert_eq!(answers[0].display_name, "user 7");
    // The app learns its caller's mesh identity.
    let (answers, _) = ask("caller");
    assert_eq!(
        answers[0].display_name,
        "By=spiffe://cluster.local/ns/default/sa/user-service;URI=spiffe://cluster.local/ns/default/sa/orders"
    );
    // A gRPC error status crosses unchanged; a server stream arrives whole.
    let (_, status) = grpc_call::<_, User>(
        &outbound["orders"],
        "user-service",
        path,
        &GetUserRequest { id: 404, view: String::new() },
    );
    assert_eq!(status, "5");
    let (stream, status) = grpc_call::<_, User>(
        &outbound["orders"],
        "user-service",
        "/users.v1.UserService/WatchUsers",
        &ListUsersRequest { team: "core".into(), page_size: 0 },
    );
    assert_eq!((stream.len(), status.as_str()), (3, "0"));
    assert_eq!(stream[2].display_name, "core 3");
    drop((users, agents));
}
