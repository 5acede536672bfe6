//! End-to-end tests: the real `meshgate` binary, real sockets on port 0, a
//! real SQLite file in a temporary data dir, driven through the CLI.

mod console;
mod edge;
mod gateway;
mod grpc;
mod hosts;
mod jwt;
mod l4;
mod lab;
mod mesh;
mod prometheus;
mod support;
mod telemetry;
mod tls;
mod tracing;
mod transcode;
mod upstream;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::{Server, example, integrity_check, text};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_creates_a_private_data_dir_and_prints_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start_in(&dir, &[("MESHGATE_ADMIN_PASSWORD", "correct horse")]);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("admin.token")), 0o600);
    assert_eq!(mode(&dir.join("meshgate.db")), 0o600);
    assert!(server.stdout.iter().any(|l| l.contains("admin.token")), "{:?}", server.stdout);
    assert!(server.stdout.last().unwrap().starts_with("meshgate ready"));

    // The password from the environment logs in; the token file works as a bearer token.
    let http = server.http();
    let login = http
        .post(server.url("/api/v1/login"))
        .json(&serde_json::json!({"username": "admin", "password": "correct horse"}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200);
    let who: serde_json::Value =
        http.get(server.url("/api/v1/whoami")).bearer_auth(server.token()).send().unwrap().json().unwrap();
    assert_eq!(who["user"], "admin");
    assert_eq!(http.get(server.url("/healthz")).send().unwrap().status(), 200);
    assert_eq!(http.get(server.url("/api/v1/gateways")).send().unwrap().status(), 401);

    // SIGTERM: a clean exit and a sound database.
    assert!(server.stop().success());
    assert_eq!(integrity_check(&dir), "ok");
}

#[test]
fn generated_admin_password_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start_in(&dir, &[]);
    let line = server.stdout.iter().find(|l| l.contains("password")).expect("password line").clone();
    let password = line.split_whitespace().nth(5).unwrap().to_string();
    let login = server
        .http()
        .post(server.url("/api/v1/login"))
        .json(&serde_json::json!({"username": "admin", "password": password}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200, "{line}");
    assert!(server.stop().success());
    let again = Server::start_in(&dir, &[]);
    assert!(!again.stdout.iter().any(|l| l.contains("password")), "{:?}", again.stdout);
}

#[test]
fn apply_get_roundtrip_history_rollback_and_delete() {
    let server = Server::start();
    let canary = example("canary.yaml");
    let out = server.ok(&["apply", "-f", &canary]);
    assert!(out.contains("VirtualService default/user-service-vs created"), "{out}");
    assert_eq!(out.lines().count(), 6, "{out}");

    // What `get -o yaml` prints applies back unchanged.
    let yaml = server.ok(&["get", "vs", "user-service-vs", "-n", "default", "-o", "yaml"]);
    assert!(yaml.contains("weight: 80"), "{yaml}");
    let again = server.cli_with_stdin(&["apply", "-f", "-"], Some(&yaml));
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout).trim(), "VirtualService default/user-service-vs unchanged");
    let all = server.ok(&["get", "workloadentries", "-A", "-o", "yaml"]);
    let again = server.cli_with_stdin(&["apply", "-f", "-"], Some(&all));
    assert!(text(&again.stdout).lines().all(|l| l.ends_with("unchanged")), "{}", text(&again.stdout));

    // Shift the canary to 90/10.
    let shifted = yaml.replace("weight: 80", "weight: 90").replace("weight: 20", "weight: 10");
    let out = server.cli_with_stdin(&["apply", "-f", "-"], Some(&shifted));
    assert_eq!(text(&out.stdout).trim(), "VirtualService default/user-service-vs configured");

    let table = server.ok(&["get", "virtualservices"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("user-service-vs") && table.contains("api.example.com"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&server.ok(&["get", "dr", "-o", "json"])).unwrap();
    assert_eq!(json["items"][0]["spec"]["subsets"][1]["name"], "v2");

    let history = server.ok(&["history"]);
    assert_eq!(history.lines().count(), 1 + 7, "{history}");
    assert!(history.lines().nth(7).unwrap().contains("update"), "{history}");
    let vs_history = server.ok(&["history", "vs", "user-service-vs"]);
    assert_eq!(vs_history.lines().count(), 3, "{vs_history}");

    // Back to revision 6 (the initial apply): the 80/20 split returns, as a new revision.
    let out = server.ok(&["rollback", "6"]);
    assert!(out.contains("rolled back to revision 6"), "{out}");
    let yaml = server.ok(&["get", "vs", "user-service-vs", "-o", "yaml"]);
    assert!(yaml.contains("weight: 80"), "{yaml}");
    assert_eq!(server.ok(&["history"]).lines().count(), 1 + 8);

    let out = server.ok(&["delete", "vs", "user-service-vs", "-n", "default"]);
    assert_eq!(out.trim(), "VirtualService default/user-service-vs deleted");
    let err = server.fails(&["get", "vs", "user-service-vs"]);
    assert!(err.contains("not found"), "{err}");
    // Deleting by file removes the rest and reports the one already gone, like kubectl.
    let out = server.cli(&["delete", "-f", &canary]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().count(), 5, "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("VirtualService default/user-service-vs not found"), "{}", text(&out.stderr));
}

#[test]
fn stale_copy_conflicts() {
    let server = Server::start();
    server.ok(&["apply", "-f", &example("canary.yaml")]);
    let yaml = server.ok(&["get", "dr", "user-service-dr", "-o", "yaml"]);
    let first = yaml.replace("maxEjectionPercent: 10", "maxEjectionPercent: 20");
    let second = yaml.replace("maxEjectionPercent: 10", "maxEjectionPercent: 30");
    assert!(server.cli_with_stdin(&["apply", "-f", "-"], Some(&first)).status.success());
    let out = server.cli_with_stdin(&["apply", "-f", "-"], Some(&second));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("HTTP 409") && err.contains("was changed"), "{err}");
    let now = server.ok(&["get", "dr", "user-service-dr", "-o", "yaml"]);
    assert!(now.contains("maxEjectionPercent: 20"), "{now}");
}

#[test]
fn apply_is_all_or_nothing_and_names_file_document_and_field() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let canary = std::fs::read_to_string(example("canary.yaml")).unwrap();
    let bad =
        canary.replace("perTryTimeout: 2s", "perTryTimeout: 2 seconds").replace("      weight: 20", "      weight: 10");
    let path = tmp.path().join("bad.yaml");
    std::fs::write(&path, bad).unwrap();
    let err = server.fails(&["apply", "-f", path.to_str().unwrap()]);
    assert!(err.contains("bad.yaml: document 2 (VirtualService/default/user-service-vs)"), "{err}");
    assert!(err.contains("spec.http[0].retries.perTryTimeout"), "{err}");
    assert!(err.contains("weights sum to 90"), "{err}");
    assert!(server.ok(&["history"]).lines().count() == 1, "nothing may be written");

    std::fs::write(&path, canary.replace("retries:", "retry:")).unwrap();
    let err = server.fails(&["apply", "-f", path.to_str().unwrap()]);
    assert!(err.contains("spec.http[0].retry: unknown field; did you mean \"retries\"?"), "{err}");

    // A folder is one all-or-nothing apply too.
    let folder = tmp.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("a.yaml"), &canary).unwrap();
    std::fs::write(
        folder.join("b.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {}\nspec: {}\n",
    )
    .unwrap();
    let err = server.fails(&["apply", "-f", folder.to_str().unwrap()]);
    assert!(err.contains("b.yaml: document 1") && err.contains("metadata.name: missing"), "{err}");
    assert!(server.ok(&["history"]).lines().count() == 1);
}

#[test]
fn bad_input_is_rejected_with_clear_errors() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };

    let f = write(
        "syntax.yaml",
        b"apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n---\nkind: Gateway\nmetadata:\n  name: [unclosed\n",
    );
    let err = server.fails(&["apply", "-f", &f]);
    assert!(err.contains("syntax.yaml: document 2: line"), "{err}");

    let f = write("kind.yaml", b"apiVersion: v1\nkind: Deployment\nmetadata: {name: a}\n");
    let err = server.fails(&["apply", "-f", &f]);
    assert!(err.contains("unknown kind \"Deployment\"") && err.contains("VirtualService (vs)"), "{err}");

    let f =
        write("version.yaml", b"apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: a}\nspec: {}\n");
    let err = server.fails(&["apply", "-f", &f]);
    assert!(err.contains("networking.istio.io/v1beta1"), "{err}");

    let f = write("binary.yaml", &[0x6b, 0x69, 0xff, 0xfe, 0x0a]);
    let err = server.fails(&["apply", "-f", &f]);
    assert!(err.contains("not UTF-8"), "{err}");

    // Billion laughs: aliases that would expand to gigabytes.
    let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (i, c) in "bcdefghi".chars().enumerate() {
        let prev = (b'a' + i as u8) as char;
        bomb.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let f = write("bomb.yaml", bomb.as_bytes());
    let err = server.fails(&["apply", "-f", &f]);
    assert!(err.contains("bomb.yaml") && err.contains("invalid YAML"), "{err}");

    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let f = write("deep.yaml", deep.as_bytes());
    let err = server.fails(&["apply", "-f", &f]);
    assert!(err.contains("deep.yaml"), "{err}");

    let many = "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n---\n".repeat(100_000);
    let f = write("many.yaml", many.as_bytes());
    let err = server.fails(&["apply", "-f", &f]);
    assert!(err.contains("too many documents"), "{err}");

    // The same inputs straight at the API: clear errors, no crash.
    let http = server.http();
    let post = |body: Vec<u8>| {
        let r = http.post(server.url("/api/v1/apply")).bearer_auth(server.token()).body(body).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().unwrap())
    };
    let (status, body) = post(vec![b'#'; 10 << 20]);
    assert_eq!(status, 413, "{body}");
    let (status, body) = post(bomb.into_bytes());
    assert_eq!(status, 422, "{body}");
    let (status, body) = post("---\n".repeat(100_001).into_bytes());
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("too many documents"), "{body}");
    let (status, body) = post(deep.into_bytes());
    assert_eq!(status, 422, "{body}");
    assert_eq!(http.get(server.url("/healthz")).send().unwrap().status(), 200, "still serving");
}

#[test]
fn restart_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start_in(&dir, &[]);
    server.ok(&["apply", "-f", &example("canary.yaml")]);
    let token = server.token();
    let before = server.ok(&["get", "vs", "user-service-vs", "-o", "yaml"]);
    let history_before = server.ok(&["history"]);
    assert!(server.stop().success());

    let server = Server::start_in(&dir, &[]);
    assert_eq!(server.token(), token, "the admin token survives a restart");
    assert_eq!(server.ok(&["get", "vs", "user-service-vs", "-o", "yaml"]), before);
    assert_eq!(server.ok(&["history"]), history_before);
}

#[test]
fn kill_9_during_applies_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start_in(&dir, &[]);
    let (url, token) = (server.url("/api/v1/apply"), server.token());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (url, token, stop) = (url.clone(), token.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut acked = Vec::new();
                for i in 0..100_000 {
                    if stop.load(Ordering::Relaxed) && i % 7 == 0 {
                        break;
                    }
                    let name = format!("w{w}-{i}");
                    let doc = format!(
                        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec: {{hosts: [{name}.example.com], location: MESH_EXTERNAL, resolution: NONE}}\n"
                    );
                    match http.post(&url).bearer_auth(&token).body(doc).send() {
                        Ok(r) if r.status() == 200 => acked.push(name),
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(e) => {
                            // The server died mid-request: not acknowledged.
                            eprintln!("writer {w} stopped at {i}: {e}");
                            break;
                        }
                    }
                }
                acked
            })
        })
        .collect();
    // Let writes flow, then kill -9 while they are still in flight.
    let probe = reqwest::blocking::Client::new();
    loop {
        let list: serde_json::Value =
            probe.get(server.url("/api/v1/serviceentries")).bearer_auth(&token).send().unwrap().json().unwrap();
        if list["items"].as_array().unwrap().len() >= 60 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    server.crash();
    let acked: Vec<String> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert!(acked.len() >= 50, "only {} writes acknowledged", acked.len());

    assert_eq!(integrity_check(&dir), "ok");
    let server = Server::start_in(&dir, &[]);
    let list: serde_json::Value =
        probe.get(server.url("/api/v1/serviceentries")).bearer_auth(server.token()).send().unwrap().json().unwrap();
    let stored: std::collections::BTreeSet<&str> =
        list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(n.as_str())).collect();
    assert!(lost.is_empty(), "acknowledged but lost after kill -9: {lost:?}");
}

#[test]
fn analyze_finds_broken_references_before_apply() {
    let server = Server::start();
    server.ok(&["apply", "-f", &example("canary.yaml")]);
    // The canary example is sound, and every field it sets is acted on.
    let out = server.ok(&["analyze"]);
    assert_eq!(out.trim(), "✔ No validation issues found.");

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("broken.yaml");
    std::fs::write(
        &path,
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: orders}
spec:
  hosts: [orders.example.com]
  gateways: [public-gateway, no-such-gateway]
  exportTo: ["."]
  http:
  - route:
    - destination: {host: user-service, subset: v3}
      weight: 50
    - destination: {host: orders}
      weight: 50
---
apiVersion: meshgate.io/v1
kind: TrafficSplit
metadata: {name: user-split}
spec:
  service: user-service
  subsets: [{name: v1, weight: 60}, {name: v2, weight: 30}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tls-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: SIMPLE, credentialName: missing-cert}
"#,
    )
    .unwrap();
    let out = server.cli(&["analyze", "-f", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for expected in [
        "Error [MG0101] (VirtualService default/orders) spec.gateways[1]",
        "Warning [MG0102] (VirtualService default/orders) spec.hosts[0]",
        "Error [MG0103] (VirtualService default/orders) spec.http[0].route[0].destination.subset",
        "Error [MG0104] (VirtualService default/orders) spec.http[0].route[1].destination.host",
        "Error [MG0105] (Gateway default/tls-gateway) spec.servers[0].tls.credentialName",
        "Warning [MG0107] (VirtualService default/orders) spec.exportTo",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    assert!(stdout.contains("Error [MG0106] (TrafficSplit default/user-split) spec.subsets"), "{stdout}");
    // Analyzing wrote nothing.
    assert!(server.fails(&["get", "vs", "orders"]).contains("not found"));
}
