//! `meshgate up --sidecar SPEC`: sidecar agents for services on this host,
//! each a child process (`meshgate agent`) that this process supervises:
//! restarted with backoff when it exits, its output prefixed with its
//! service, stopped (SIGTERM, so it deregisters) when `up` stops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::store::{JoinScope, Store};

/// One `--sidecar` SPEC: `key=value,...`.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarSpec {
    pub service: String,
    pub namespace: String,
    pub service_account: String,
    pub version: Option<String>,
    pub locality: Option<String>,
    pub app: Option<String>,
    pub inbound: Option<String>,
    pub outbound: Option<String>,
    /// Where its metrics are served (`agent --metrics`).
    pub metrics: Option<String>,
    /// The app's probe: `http:/PATH` or `tcp` (as `agent --health`).
    pub health: Option<String>,
}

const KEYS: &[&str] = &[
    "service",
    "namespace",
    "service-account",
    "version",
    "region",
    "zone",
    "app",
    "inbound",
    "outbound",
    "metrics",
    "health",
];

impl SidecarSpec {
    pub fn parse(spec: &str) -> anyhow::Result<SidecarSpec> {
        let mut kv = BTreeMap::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                bail!("--sidecar {spec:?}: {part:?} is not key=value");
            };
            let k = k.trim();
            if !KEYS.contains(&k) {
                bail!("--sidecar {spec:?}: unknown key {k:?} (keys: {})", KEYS.join(", "));
            }
            if kv.insert(k.to_string(), v.trim().to_string()).is_some() {
                bail!("--sidecar {spec:?}: {k} given twice");
            }
        }
        if let Some(h) = kv.get("health") {
            if let Err(e) = super::health::Probe::parse(h) {
                bail!("--sidecar {spec:?}: health={e}");
            }
            if !kv.contains_key("app") {
                bail!("--sidecar {spec:?}: health= probes the app, so it needs app=");
            }
        }
        let Some(service) = kv.remove("service") else { bail!("--sidecar {spec:?}: service= is required") };
        let locality = match (kv.remove("region"), kv.remove("zone")) {
            (Some(r), Some(z)) => Some(format!("{r}/{z}")),
            (Some(r), None) => Some(r),
            (None, Some(_)) => bail!("--sidecar {spec:?}: zone= needs region="),
            (None, None) => None,
        };
        for addr in ["app", "inbound", "outbound", "metrics"] {
            if let Some(a) = kv.get(addr)
                && a.parse::<std::net::SocketAddr>().is_err()
            {
                bail!("--sidecar {spec:?}: {addr}={a:?} is not an address like 127.0.0.1:9001");
            }
        }
        Ok(SidecarSpec {
            service_account: kv.remove("service-account").unwrap_or_else(|| service.clone()),
            namespace: kv.remove("namespace").unwrap_or_else(|| meshgate_model::DEFAULT_NAMESPACE.to_string()),
            service,
            version: kv.remove("version"),
            locality,
            app: kv.remove("app"),
            inbound: kv.remove("inbound"),
            outbound: kv.remove("outbound"),
            metrics: kv.remove("metrics"),
            health: kv.remove("health"),
        })
    }
}

/// Parses every SPEC; several sidecars on one host must each name their ports.
pub fn parse_all(specs: &[String]) -> anyhow::Result<Vec<SidecarSpec>> {
    let mut parsed = specs.iter().map(|s| SidecarSpec::parse(s)).collect::<anyhow::Result<Vec<_>>>()?;
    if parsed.len() > 1 {
        for s in &mut parsed {
            // Istio's metrics port cannot serve them all: a free port each
            // (Prometheus finds them through /api/v1/prometheus/targets).
            s.metrics.get_or_insert_with(|| "0.0.0.0:0".to_string());
        }
        for s in &parsed {
            if s.outbound.is_none() || (s.app.is_some() && s.inbound.is_none()) {
                bail!(
                    "--sidecar service={}: several sidecars share this host, so each needs its own outbound= (and inbound= with app=)",
                    s.service
                );
            }
        }
    }
    Ok(parsed)
}

/// Runs `spec`'s agent until `stop`, restarting it with backoff.
pub async fn supervise(
    spec: SidecarSpec,
    store: Store,
    mesh: String,
    fingerprint: String,
    data_dir: PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let started = std::time::Instant::now();
        match run_once(&spec, &store, &mesh, &fingerprint, &data_dir, &mut stop).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::error!(service = %spec.service, error = %format!("{e:#}"), "cannot start the sidecar"),
        }
        // A run that lasted a while starts the backoff over.
        if started.elapsed() > Duration::from_secs(60) {
            failures = 0;
        }
        failures += 1;
        let wait = Duration::from_millis((500u64 << failures.min(6)).min(30_000));
        tracing::warn!(service = %spec.service, retry_in_ms = wait.as_millis() as u64, "sidecar exited; restarting");
        tokio::select! {
            () = crate::server::stopped(&mut stop) => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One run of the agent; `Ok(true)` when it ended because `up` is stopping.
async fn run_once(
    spec: &SidecarSpec,
    store: &Store,
    mesh: &str,
    fingerprint: &str,
    data_dir: &std::path::Path,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    // A fresh single-use token each start: it is needed only when the agent holds no valid certificate.
    let scope = JoinScope {
        namespace: spec.namespace.clone(),
        service_account: spec.service_account.clone(),
        service: spec.service.clone(),
    };
    let (_, token, _) = store.create_join_token(&scope, Duration::from_secs(600), true).await?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["agent", "--join", &format!("https://{mesh}"), "--service", &spec.service, "-n", &spec.namespace])
        .args(["--ca-fingerprint", fingerprint])
        .arg("--data-dir")
        .arg(data_dir.join("agents").join(&spec.service))
        .env("MESHGATE_JOIN_TOKEN", &token)
        // The agent watches this pipe: if `up` dies without stopping it, it stops too.
        .env("MESHGATE_SUPERVISED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (flag, value) in [
        ("--app", &spec.app),
        ("--inbound", &spec.inbound),
        ("--outbound", &spec.outbound),
        ("--metrics", &spec.metrics),
        ("--version", &spec.version),
        ("--locality", &spec.locality),
        ("--health", &spec.health),
    ] {
        if let Some(v) = value {
            cmd.args([flag, v]);
        }
    }
    let mut child = cmd.spawn()?;
    // Held open for the child's life (`wait` would close it): its end of file tells the agent `up` is gone.
    let _lifeline = child.stdin.take();
    let prefix = format!("[{}]", spec.service);
    if let Some(out) = child.stdout.take() {
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{prefix} {line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{prefix} {line}");
            }
        });
    }
    tokio::select! {
        status = child.wait() => {
            tracing::warn!(service = %spec.service, status = %status?, "sidecar exited");
            Ok(false)
        }
        () = crate::server::stopped(stop) => {
            // SIGTERM, so it deregisters; then wait for it (bounded).
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let s = SidecarSpec::parse("service=user-service,version=v1,app=127.0.0.1:9001,region=us-east,zone=a").unwrap();
        assert_eq!(s.service_account, "user-service");
        assert_eq!(s.namespace, "default");
        assert_eq!(s.locality.as_deref(), Some("us-east/a"));
        assert!(SidecarSpec::parse("version=v1").unwrap_err().to_string().contains("service= is required"));
        assert!(SidecarSpec::parse("service=a,colour=red").unwrap_err().to_string().contains("unknown key \"colour\""));
        assert!(SidecarSpec::parse("service=a,app=nowhere").unwrap_err().to_string().contains("app=\"nowhere\""));
        let probed = SidecarSpec::parse("service=a,app=127.0.0.1:1,health=http:/healthz").unwrap();
        assert_eq!(probed.health.as_deref(), Some("http:/healthz"));
        assert!(
            SidecarSpec::parse("service=a,app=127.0.0.1:1,health=exec").unwrap_err().to_string().contains("health=")
        );
        assert!(SidecarSpec::parse("service=a,health=tcp").unwrap_err().to_string().contains("needs app="));
        let two = ["service=a,app=127.0.0.1:1".to_string(), "service=b,outbound=127.0.0.1:2".to_string()];
        assert!(parse_all(&two).unwrap_err().to_string().contains("several sidecars share this host"));
    }
}
