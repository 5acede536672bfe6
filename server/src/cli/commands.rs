//! What each verb does.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use meshgate_model::analyze::{Finding, Severity, code_for_schema_problem};
use meshgate_model::{DEFAULT_NAMESPACE, Kind, Resource};
use reqwest::Method;
use serde_json::Value;

use super::client::Client;
use super::output::{self, Format};
use super::{Command, TokenCommand};
use crate::config::{Config, UpArgs};

/// `meshgate up`.
pub fn up(args: UpArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    crate::telemetry_init();
    let config = Config::resolve(&args)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        runtime.worker_threads(n.into());
    }
    let runtime = runtime.enable_all().build().context("starting the runtime")?;
    let data_dir = config.data_dir.clone();
    runtime.block_on(crate::server::run(config, started, crate::server::shutdown_signal(), |ready| {
        println!("admin API: {}/api/v1  (OpenAPI: /api/openapi.json)", ready.admin_url());
        if ready.admin_tls && data_dir.join("admin-ca.pem").exists() {
            println!("admin TLS: clients trust {}", data_dir.join("admin-ca.pem").display());
        }
        if crate::api::console_built() {
            println!("console: {}/ (user admin)", ready.admin_url());
        } else {
            println!("console: not in this build (build it with `cargo xtask up`); the API and CLI work");
        }
        println!("admin token: {}", data_dir.join("admin.token").display());
        println!("mesh CA root: {} (agents pin it with --ca-fingerprint)", ready.ca_fingerprint);
        println!(
            "meshgate ready admin={} http={} https={} mesh={} data-dir={} in {} ms",
            ready.admin_url(),
            ready.http,
            ready.https,
            ready.mesh,
            data_dir.display(),
            started.elapsed().as_millis()
        );
    }))?;
    Ok(0)
}

pub fn run(client: &Client, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Up(_) | Command::Agent(_) => unreachable!("handled by cli::main"),
        Command::Token { command } => token(client, command),
        Command::Ca { command } => ca(client, command),
        Command::Apikey { command } => apikey(client, command),
        Command::ProxyStatus { output } => proxy_status(client, output),
        Command::Logs { service, follow, wait } => logs(client, service.as_deref(), follow, &wait),
        Command::ProxyConfig { section, name, output } => proxy_config(client, section, &name, output),
        Command::Apply { files, namespace, dry_run } => apply(client, &files, namespace.as_deref(), dry_run),
        Command::Get { kind, name, namespace, all_namespaces, selector, output } => {
            get(client, &kind, name.as_deref(), &namespace, all_namespaces, selector.as_deref(), output)
        }
        Command::Delete { kind, name, namespace, files } => delete(client, kind, name, &namespace, &files),
        Command::History { kind, name, namespace, output } => history(client, kind, name, namespace, output),
        Command::Rollback { revision } => rollback(client, revision),
        Command::Analyze { files, namespace, output } => analyze(client, &files, namespace.as_deref(), output),
    }
}

/// Reads `-f` arguments: files, folders (their .yaml/.yml/.json files in
/// name order), or `-` for standard input. Returns (source name, text).
fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
            out.push(("<stdin>".to_string(), text));
        } else if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read folder {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file() && matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                bail!("{}: no .yaml, .yml or .json files in this folder", p.display());
            }
            for f in entries {
                out.push((f.display().to_string(), read_file(&f)?));
            }
        } else {
            out.push((p.display().to_string(), read_file(p)?));
        }
    }
    Ok(out)
}

fn read_file(p: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("{}: not UTF-8 text (invalid byte at offset {})", p.display(), e.utf8_error().valid_up_to())
    })
}

/// Parses and checks every source locally, so errors name the file; any
/// problem anywhere stops before anything is sent.
fn decode_sources(sources: &[(String, String)], namespace: &str) -> anyhow::Result<Vec<Resource>> {
    let mut all = Vec::new();
    let mut problems = Vec::new();
    for (name, text) in sources {
        match meshgate_model::decode(name, text, namespace) {
            Ok(rs) => all.extend(rs),
            Err(ps) => problems.extend(ps),
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!("{} problem(s) found; nothing was applied", problems.len());
    }
    Ok(all)
}

fn apply(client: &Client, files: &[PathBuf], namespace: Option<&str>, dry_run: bool) -> anyhow::Result<i32> {
    let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
    let resources = decode_sources(&read_sources(files)?, ns)?;
    if resources.is_empty() {
        bail!("no resources found in {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let body = Value::Array(resources.iter().map(Resource::to_value).collect());
    let path = format!("/api/v1/apply?namespace={ns}{}", if dry_run { "&dryRun=true" } else { "" });
    let answer = client.send(client.request(Method::POST, &path).json(&body))?;
    for r in answer["results"].as_array().into_iter().flatten() {
        println!(
            "{} {}/{} {}",
            r["kind"].as_str().unwrap_or(""),
            r["namespace"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["outcome"].as_str().unwrap_or(""),
        );
    }
    Ok(0)
}

fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    namespace: &str,
    all: bool,
    selector: Option<&str>,
    format: Format,
) -> anyhow::Result<i32> {
    let kind = Kind::parse(kind).map_err(anyhow::Error::msg)?;
    if let Some(name) = name {
        let doc = client.get(&format!("/api/v1/namespaces/{namespace}/{}/{name}", kind.plural()))?;
        print_objects(kind, &[doc], all, format, true);
        return Ok(0);
    }
    let base = if all {
        format!("/api/v1/{}", kind.plural())
    } else {
        format!("/api/v1/namespaces/{namespace}/{}", kind.plural())
    };
    let mut req = client.request(Method::GET, &base);
    if let Some(s) = selector {
        req = req.query(&[("labelSelector", s)]);
    }
    let list = client.send(req)?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() && format == Format::Table {
        if all {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {namespace} namespace.");
        }
        return Ok(0);
    }
    print_objects(kind, &items, all, format, false);
    Ok(0)
}

fn print_objects(kind: Kind, items: &[Value], with_namespace: bool, format: Format, single: bool) {
    match format {
        Format::Yaml => print!("{}", output::yaml_stream(items)),
        Format::Json if single => print!("{}", output::json(&items[0])),
        Format::Json => {
            print!("{}", output::json(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})))
        }
        Format::Table => {
            let mut headers = Vec::new();
            if with_namespace {
                headers.push("NAMESPACE");
            }
            headers.push("NAME");
            headers.extend_from_slice(output::summary_columns(kind));
            headers.push("AGE");
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|doc| {
                    let meta = &doc["metadata"];
                    let mut row = Vec::new();
                    if with_namespace {
                        row.push(meta["namespace"].as_str().unwrap_or("").to_string());
                    }
                    row.push(meta["name"].as_str().unwrap_or("").to_string());
                    row.extend(output::summary(kind, doc));
                    row.push(output::age(meta["creationTimestamp"].as_str().unwrap_or("")));
                    row
                })
                .collect();
            print!("{}", output::table(&headers, &rows));
        }
    }
}

fn delete(
    client: &Client,
    kind: Option<String>,
    name: Option<String>,
    namespace: &str,
    files: &[PathBuf],
) -> anyhow::Result<i32> {
    let targets: Vec<(Kind, String, String)> = if !files.is_empty() {
        if kind.is_some() {
            bail!("give either KIND NAME or -f FILE, not both");
        }
        decode_sources(&read_sources(files)?, namespace)?
            .into_iter()
            .map(|r| (r.kind, r.namespace().to_string(), r.name().to_string()))
            .collect()
    } else {
        let (Some(kind), Some(name)) = (kind, name) else {
            bail!("name what to delete: `meshgate delete KIND NAME [-n NS]` or `meshgate delete -f FILE`");
        };
        vec![(Kind::parse(&kind).map_err(anyhow::Error::msg)?, namespace.to_string(), name)]
    };
    let mut failed = 0;
    for (kind, ns, name) in targets {
        let path = format!("/api/v1/namespaces/{ns}/{}/{name}", kind.plural());
        match client.send(client.request(Method::DELETE, &path)) {
            Ok(_) => println!("{kind} {ns}/{name} deleted"),
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

fn history(
    client: &Client,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    format: Format,
) -> anyhow::Result<i32> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(k) = kind {
        query.push(("kind", Kind::parse(&k).map_err(anyhow::Error::msg)?.name().to_string()));
    }
    if let Some(n) = name {
        query.push(("name", n));
    }
    if let Some(ns) = namespace {
        query.push(("namespace", ns));
    }
    if format != Format::Table {
        query.push(("objects", "true".into()));
    }
    let answer = client.send(client.request(Method::GET, "/api/v1/history").query(&query))?;
    let revisions = answer["revisions"].as_array().cloned().unwrap_or_default();
    match format {
        Format::Json => print!("{}", output::json(&answer)),
        Format::Yaml => print!("{}", output::yaml(&answer)),
        Format::Table => {
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            let rows: Vec<Vec<String>> = revisions
                .iter()
                .map(|r| {
                    vec![
                        r["revision"].to_string(),
                        s(&r["at"]),
                        s(&r["actor"]),
                        s(&r["op"]),
                        format!("{} {}/{}", s(&r["kind"]), s(&r["namespace"]), s(&r["name"])),
                        s(&r["reason"]),
                    ]
                })
                .collect();
            print!("{}", output::table(&["REVISION", "TIME", "ACTOR", "CHANGE", "OBJECT", "REASON"], &rows));
        }
    }
    Ok(0)
}

fn rollback(client: &Client, revision: i64) -> anyhow::Result<i32> {
    let answer = client.send(client.request(Method::POST, &format!("/api/v1/revisions/{revision}/rollback")))?;
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    for r in &results {
        println!(
            "{} {}/{} {} (revision {})",
            r["kind"].as_str().unwrap_or(""),
            r["namespace"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["outcome"].as_str().unwrap_or(""),
            r["revision"],
        );
    }
    if results.is_empty() {
        println!("nothing changed since revision {revision}");
    } else {
        println!("rolled back to revision {revision}; now at revision {}", answer["revision"]);
    }
    Ok(0)
}

fn analyze(client: &Client, files: &[PathBuf], namespace: Option<&str>, format: Format) -> anyhow::Result<i32> {
    let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
    let mut findings: Vec<Finding> = Vec::new();
    let mut valid = Vec::new();
    for (source, text) in read_sources(files)? {
        let docs = match meshgate_model::parse::documents(&source, &text) {
            Ok(d) => d,
            Err(p) => {
                findings.push(schema_finding(&source, None, "", "", ns, &p.path, &p.to_string()));
                continue;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            let kind = doc["kind"].as_str().unwrap_or("").to_string();
            let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
            let doc_ns = doc["metadata"]["namespace"].as_str().unwrap_or(ns).to_string();
            match Resource::from_value(doc, ns) {
                Ok(r) => valid.push(r.to_value()),
                Err(errs) => {
                    for e in errs {
                        findings.push(schema_finding(&source, Some(i + 1), &kind, &name, &doc_ns, &e.path, &e.reason));
                    }
                }
            }
        }
    }
    let answer = client
        .send(client.request(Method::POST, &format!("/api/v1/analyze?namespace={ns}")).json(&Value::Array(valid)))?;
    let server: Vec<Finding> = serde_json::from_value(answer["findings"].clone()).context("reading findings")?;
    findings.extend(server);
    match format {
        Format::Json => print!("{}", output::json(&serde_json::json!({"findings": findings}))),
        Format::Yaml => print!("{}", output::yaml(&serde_json::json!({"findings": findings}))),
        Format::Table if findings.is_empty() => println!("✔ No validation issues found."),
        Format::Table => {
            for f in &findings {
                println!("{f}");
            }
        }
    }
    Ok(if findings.iter().any(|f| f.severity == Severity::Error) { 1 } else { 0 })
}

fn schema_finding(
    source: &str,
    document: Option<usize>,
    kind: &str,
    name: &str,
    namespace: &str,
    path: &str,
    reason: &str,
) -> Finding {
    let place = match document {
        Some(d) => format!("{source}: document {d}"),
        None => source.to_string(),
    };
    Finding {
        code: code_for_schema_problem(reason).to_string(),
        severity: Severity::Error,
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        path: path.to_string(),
        message: format!("{place}: {reason}"),
    }
}

fn token(client: &Client, command: TokenCommand) -> anyhow::Result<i32> {
    match command {
        TokenCommand::Create { service, namespace, service_account, ttl, single_use } => {
            let mut body = serde_json::json!({
                "service": service, "namespace": namespace, "ttl": ttl, "singleUse": single_use,
            });
            if let Some(sa) = service_account {
                body["serviceAccount"] = Value::String(sa);
            }
            let t = client.send(client.request(Method::POST, "/api/v1/tokens").json(&body))?;
            let s = |k: &str| t[k].as_str().unwrap_or("").to_string();
            println!("{}", s("token"));
            eprintln!(
                "join token {} for service {} (spiffe identity ns/{}/sa/{}), expires {}{}; shown once.",
                s("id"),
                s("service"),
                s("namespace"),
                s("serviceAccount"),
                s("expiresAt"),
                if t["singleUse"].as_bool() == Some(true) { ", single use" } else { "" }
            );
            eprintln!(
                "on the agent's host:\n  meshgate agent --join https://THIS-HOST:15012 --token TOKEN --service {} -n {} --ca-fingerprint {} --app ADDR",
                s("service"),
                s("namespace"),
                s("caFingerprint")
            );
            Ok(0)
        }
        TokenCommand::List { output } => {
            let v = client.get("/api/v1/tokens")?;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            match output {
                Format::Json => {
                    print!("{}", output::json(&Value::Array(items)));
                    return Ok(0);
                }
                Format::Yaml => {
                    print!("{}", output::yaml(&Value::Array(items)));
                    return Ok(0);
                }
                Format::Table => {}
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|t| {
                    let state = if t["revokedAt"].is_string() {
                        "revoked".to_string()
                    } else if t["singleUse"].as_bool() == Some(true) && t["uses"].as_i64().unwrap_or(0) > 0 {
                        "used".to_string()
                    } else {
                        format!("{} uses", t["uses"].as_i64().unwrap_or(0))
                    };
                    ["id", "service", "namespace", "serviceAccount", "expiresAt"]
                        .iter()
                        .map(|k| t[*k].as_str().unwrap_or("").to_string())
                        .chain(std::iter::once(state))
                        .collect()
                })
                .collect();
            print!("{}", output::table(&["ID", "SERVICE", "NAMESPACE", "SERVICE ACCOUNT", "EXPIRES", "STATE"], &rows));
            Ok(0)
        }
        TokenCommand::Revoke { id } => {
            client.send(client.request(Method::DELETE, &format!("/api/v1/tokens/{id}")))?;
            println!("join token {id} revoked");
            Ok(0)
        }
    }
}

fn apikey(client: &Client, command: super::ApiKeyCommand) -> anyhow::Result<i32> {
    use super::ApiKeyCommand as K;
    match command {
        K::Create { consumer, namespace } => {
            let body = serde_json::json!({ "consumer": consumer, "namespace": namespace });
            let v = client.send(client.request(Method::POST, "/api/v1/apikeys").json(&body))?;
            println!("{}", v["key"].as_str().unwrap_or(""));
            eprintln!(
                "API key {} for consumer {namespace}/{consumer}; shown once. Callers send it as `x-api-key: KEY`.",
                v["id"].as_str().unwrap_or("")
            );
        }
        K::List { consumer, namespace, output: format } => {
            let mut path = format!("/api/v1/apikeys?namespace={namespace}");
            if let Some(c) = &consumer {
                path.push_str(&format!("&consumer={c}"));
            }
            let v = client.get(&path)?;
            match format {
                Format::Json => print!("{}", output::json(&v["items"])),
                Format::Yaml => print!("{}", output::yaml(&v["items"])),
                Format::Table => {
                    let rows: Vec<Vec<String>> = v["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|k| {
                            let s = |f: &str| k[f].as_str().unwrap_or("-").to_string();
                            let consumer = format!("{}/{}", s("namespace"), s("consumer"));
                            let state =
                                if k["revokedAt"].is_null() { "active".to_string() } else { "revoked".to_string() };
                            vec![s("id"), consumer, format!("{}...", s("prefix")), s("createdAt"), state]
                        })
                        .collect();
                    print!("{}", output::table(&["ID", "CONSUMER", "KEY", "CREATED", "STATE"], &rows));
                }
            }
        }
        K::Revoke { id } => {
            client.send(client.request(Method::DELETE, &format!("/api/v1/apikeys/{id}")))?;
            println!("API key {id} revoked");
        }
    }
    Ok(0)
}

fn ca(client: &Client, command: super::CaCommand) -> anyhow::Result<i32> {
    use super::CaCommand as C;
    match command {
        C::Show { output: format } => {
            let v = client.get("/api/v1/ca")?;
            match format {
                Format::Json => print!("{}", output::json(&v)),
                Format::Yaml => print!("{}", output::yaml(&v)),
                Format::Table => {
                    println!("trust domain: {}", v["trustDomain"].as_str().unwrap_or("-"));
                    println!("signing root: {}", v["fingerprint"].as_str().unwrap_or("-"));
                    let rows: Vec<Vec<String>> = v["bundle"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| {
                            let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
                            let role = if r["signing"] == true { "signing" } else { "trusted (old)" };
                            vec![s("fingerprint"), role.to_string(), s("createdAt"), s("notAfter")]
                        })
                        .collect();
                    if !rows.is_empty() {
                        print!("{}", output::table(&["ROOT", "ROLE", "CREATED", "NOT AFTER"], &rows));
                    }
                    if let Some(r) = v["rotation"].as_object() {
                        println!(
                            "rotation under way: {} certificate(s) from the old root still valid (last until {})",
                            r["oldRootCertificatesValid"],
                            r["lastExpires"].as_str().unwrap_or("-")
                        );
                    }
                }
            }
        }
        C::Rotate => {
            let v = client.send(client.request(Method::POST, "/api/v1/ca/rotate"))?;
            println!("new signing root: {}", v["fingerprint"].as_str().unwrap_or("-"));
            println!(
                "the previous root {} stays trusted; run `meshgate ca retire` once every workload has renewed",
                v["previous"].as_str().unwrap_or("-")
            );
        }
        C::Retire { force } => {
            let path = if force { "/api/v1/ca/retire?force=true" } else { "/api/v1/ca/retire" };
            let v = client.send(client.request(Method::POST, path))?;
            for fp in v["retired"].as_array().into_iter().flatten() {
                println!("retired root {}", fp.as_str().unwrap_or("-"));
            }
            println!("trusted now: {} only", v["fingerprint"].as_str().unwrap_or("-"));
        }
    }
    Ok(0)
}

fn logs(client: &Client, service: Option<&str>, follow: bool, wait: &str) -> anyhow::Result<i32> {
    use std::io::{BufRead as _, Write as _};
    let mut path = format!("/api/v1/logs?follow={follow}&wait={wait}");
    if let Some(s) = service {
        path.push_str(&format!("&service={s}"));
    }
    let resp = client.stream(&path)?;
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(resp).lines() {
        let line = line.context("reading the log stream")?;
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(0)
}

fn proxy_status(client: &Client, format: Format) -> anyhow::Result<i32> {
    let v = client.get("/api/v1/proxy-status")?;
    match format {
        Format::Json => print!("{}", output::json(&v)),
        Format::Yaml => print!("{}", output::yaml(&v)),
        Format::Table => {
            let rows: Vec<Vec<String>> = v["proxies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let s = |k: &str| p[k].as_str().unwrap_or("-").to_string();
                    vec![s("name"), s("role"), s("identity"), p["revision"].to_string(), s("status")]
                })
                .collect();
            print!("{}", output::table(&["NAME", "ROLE", "IDENTITY", "REVISION", "STATUS"], &rows));
            println!("control plane revision {}", v["revision"]);
        }
    }
    Ok(0)
}

fn proxy_config(client: &Client, section: super::ConfigSection, name: &str, format: Format) -> anyhow::Result<i32> {
    use super::ConfigSection as S;
    let v = client.get(&format!("/api/v1/proxy-config/{name}"))?;
    if v["fresh"] == false {
        eprintln!("note: {name} did not answer in time; this is its last report, from {}", v["reportedAt"]);
    }
    if let Some(n) = v["nack"].as_object() {
        eprintln!("note: {name} rejected revision {}: {}", n["revision"], n["reason"].as_str().unwrap_or(""));
    }
    let part = match section {
        S::Routes => v["routes"].clone(),
        S::Clusters => v["clusters"].clone(),
        S::Endpoints => v["endpoints"].clone(),
        S::Secret => v["secret"].clone(),
        S::All => v.clone(),
    };
    let text = match format {
        Format::Json => output::json(&part),
        Format::Yaml => output::yaml(&part),
        Format::Table => config_table(section, &part),
    };
    print!("{text}");
    Ok(0)
}

/// `proxy-config` tables, with istioctl's columns where they apply.
fn config_table(section: super::ConfigSection, part: &Value) -> String {
    use super::ConfigSection as S;
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let pick = |v: &Value, keys: &[&str]| keys.iter().map(|k| s(&v[*k])).collect::<Vec<_>>();
    let rows = |cells: &dyn Fn(&Value) -> Vec<String>| part.as_array().into_iter().flatten().map(cells).collect();
    match section {
        S::Routes => {
            let rows: Vec<Vec<String>> = rows(&|r| {
                let matched: Vec<String> =
                    r["match"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", s(v))).collect();
                let to: Vec<String> = r["action"]["clusters"].as_array().map_or_else(
                    || vec![r["action"].to_string()],
                    |cs| cs.iter().map(|c| format!("{} ({}%)", s(&c["cluster"]), c["weight"])).collect(),
                );
                let matched = if matched.is_empty() { "/*".to_string() } else { matched.join(" ") };
                vec![
                    format!("{}:{}", s(&r["listener"]), r["port"]),
                    s(&r["domain"]),
                    matched,
                    to.join(", "),
                    s(&r["name"]),
                ]
            });
            output::table(&["LISTENER", "DOMAIN", "MATCH", "ROUTE TO", "NAME"], &rows)
        }
        S::Clusters => {
            let rows: Vec<Vec<String>> =
                rows(&|c| pick(c, &["name", "direction", "endpoints", "lb", "tls", "outlierDetection"]));
            output::table(&["NAME", "DIRECTION", "ENDPOINTS", "LB", "TLS", "OUTLIER DETECTION"], &rows)
        }
        S::Endpoints => {
            let rows: Vec<Vec<String>> = rows(&|e| pick(e, &["address", "status", "localityPriority", "cluster"]));
            output::table(&["ENDPOINT", "STATUS", "LOCALITY PRIORITY", "CLUSTER"], &rows)
        }
        S::Secret => output::table(
            &["IDENTITY", "SERIAL", "NOT BEFORE", "NOT AFTER", "VALID"],
            &[pick(part, &["identity", "serial", "notBefore", "notAfter", "valid"])],
        ),
        S::All => output::yaml(part),
    }
}
