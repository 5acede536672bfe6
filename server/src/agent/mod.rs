//! `meshgate agent`: the sidecar's side of the mesh. It joins with a token
//! (checking the control plane against a pinned root, never trusting it on
//! first use), keeps its workload certificate on disk (0600) and renews it
//! over mTLS at half its lifetime, with jitter. Its private key is made
//! here and never leaves the host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};

use crate::ca::verify::{Accept, Anchors, MeshVerifier};
use crate::ca::{MeshIdentity, SpiffeId};
use crate::control::fleet::Nack;

pub mod health;
mod link;
pub mod sidecar;
pub mod supervise;

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The control plane's mesh address, e.g. https://10.0.0.1:15012
    #[arg(long, value_name = "URL")]
    pub join: String,
    /// Join token from `meshgate token create` (needed until the agent holds a certificate)
    #[arg(long, env = "MESHGATE_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The service this agent runs beside
    #[arg(long)]
    pub service: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// sha256:HEX of the mesh CA root (`meshgate up` prints it)
    #[arg(long, value_name = "sha256:HEX")]
    pub ca_fingerprint: Option<String>,
    /// The mesh CA root(s) as a PEM file, instead of --ca-fingerprint
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Where the agent keeps its key, certificate and roots [default: ./meshgate-agent]
    #[arg(long, value_name = "DIR", default_value = "meshgate-agent")]
    pub data_dir: PathBuf,
    /// Lifetime to ask for workload certificates, e.g. 24h (the CA bounds it)
    #[arg(long, value_name = "DURATION")]
    pub cert_ttl: Option<String>,
    /// The app this sidecar fronts (inbound traffic goes there); without it the agent only proxies outbound
    #[arg(long, value_name = "ADDR")]
    pub app: Option<SocketAddr>,
    /// Inbound (mTLS) address other proxies connect to
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// Outbound address the app sends its calls to (by Host, or as HTTP_PROXY)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// JSON access log of this sidecar's requests (both ports): `-` for stdout, or a file [default: none]
    #[arg(long, value_name = "FILE|-")]
    pub access_log: Option<String>,
    /// Where Prometheus scrapes this proxy's metrics (`/stats/prometheus`, as Istio's 15020)
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15020")]
    pub metrics: SocketAddr,
    /// The address other hosts reach the inbound port at [default: the inbound IP, else this host's address towards the control plane]
    #[arg(long, value_name = "IP")]
    pub address: Option<std::net::IpAddr>,
    /// Workload labels, e.g. version=v2,region=us-west
    #[arg(long, value_name = "K=V,...", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// The workload's version label
    #[arg(long)]
    pub version: Option<String>,
    /// region/zone/subzone of this workload
    #[arg(long)]
    pub locality: Option<String>,
    /// Probe the app: http:/PATH (2xx or 3xx is healthy) or tcp; unhealthy instances get no traffic
    #[arg(long, value_name = "http:/PATH|tcp", requires = "app")]
    pub health: Option<String>,
    /// How often to probe the app
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub health_interval: String,
}

/// The certificate the agent holds.
struct Held {
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    identity: SpiffeId,
    not_before: i64,
    not_after: i64,
    serial: String,
}

pub fn main(args: AgentArgs) -> anyhow::Result<i32> {
    crate::telemetry_init();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let supervised = std::env::var_os("MESHGATE_SUPERVISED").is_some();
    runtime.block_on(run(args, async move {
        tokio::select! {
            () = crate::server::shutdown_signal() => {}
            () = parent_gone(supervised) => tracing::warn!("meshgate up is gone; stopping"),
        }
    }))?;
    Ok(0)
}

/// Sends what this sidecar served since the last summary, for the
/// control plane's time series and service map. A summary that cannot be
/// sent is dropped: the counts stay in this proxy's Prometheus metrics.
async fn send_stats(link: Arc<link::Link>, metrics: Arc<crate::telemetry::istio::ProxyMetrics>) {
    let mut last = std::collections::HashMap::new();
    let mut every = tokio::time::interval(crate::telemetry::series::report_interval());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let deltas = metrics.summary(&mut last);
        if deltas.is_empty() {
            continue;
        }
        if let Err(e) = link.call("POST", "/mesh/v1/stats", Some(&json!({ "deltas": deltas }))).await {
            tracing::debug!(error = %format!("{e:#}"), "request summary not delivered");
        }
    }
}

/// Sends this sidecar's access-log lines while someone follows them
/// (`meshgate logs`): first the lines it kept, then new ones every 250 ms,
/// an empty post every 5 s to keep the lease; stops when told nobody
/// follows any more, or when the link fails.
async fn send_logs(
    link: Arc<link::Link>,
    log: Arc<crate::telemetry::accesslog::AccessLog>,
    name: String,
    service: String,
    running: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut following = log.follow();
    let rx = &mut following.lines;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut batch: Vec<String> = log.recent().iter().map(|l| text(l)).collect();
    let mut last_post: Option<tokio::time::Instant> = None;
    loop {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(250);
        while batch.len() < 1000 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(line)) => batch.push(text(&line)),
                Ok(Err(RecvError::Lagged(n))) => {
                    batch.push(format!("{{\"meshgate\":\"{n} lines skipped: more traffic than the follower takes\"}}"))
                }
                Ok(Err(RecvError::Closed)) | Err(_) => break,
            }
        }
        if batch.is_empty() && last_post.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            continue;
        }
        let body = json!({ "name": name, "service": service, "lines": std::mem::take(&mut batch) });
        match link.call("POST", "/mesh/v1/logs", Some(&body)).await {
            Ok(Some(v)) if v["more"] == true => last_post = Some(tokio::time::Instant::now()),
            _ => break,
        }
    }
    running.store(false, std::sync::atomic::Ordering::SeqCst);
}

/// Spans waiting for the link, at most.
const SPAN_QUEUE: usize = 4096;

/// Sends the sidecar's spans to the control plane: a batch of up to 512, or
/// what came within a second; a batch the control plane cannot take is
/// dropped (and counted), so a lost link never holds spans or memory.
async fn send_spans(
    link: Arc<link::Link>,
    mut rx: tokio::sync::mpsc::Receiver<crate::telemetry::trace::Span>,
    dropped: prometheus::IntCounter,
) {
    while let Some(batch) = crate::telemetry::trace::next_batch(&mut rx, 512, Duration::from_secs(1)).await {
        let body = bytes::Bytes::from(crate::telemetry::otlp::encode(&batch));
        if let Err(e) = link.send_spans(body).await {
            dropped.inc_by(batch.len() as u64);
            tracing::debug!(error = %format!("{e:#}"), spans = batch.len(), "spans not delivered");
        }
    }
}

/// Under `meshgate up --sidecar`, standard input is a pipe from `up`:
/// end of file means `up` is gone (even killed), and the agent stops.
async fn parent_gone(supervised: bool) {
    if !supervised {
        return std::future::pending().await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

pub async fn run(args: AgentArgs, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let ttl = match &args.cert_ttl {
        Some(t) => Some(meshgate_model::check::parse_duration(t).map_err(|e| anyhow::anyhow!("--cert-ttl: {e}"))?),
        None => None,
    };
    let endpoint = Endpoint::parse(&args.join)?;
    let probe = match &args.health {
        Some(spec) => Some(health::Probe::parse(spec).map_err(|e| anyhow::anyhow!("--health {e}"))?),
        None => None,
    };
    let probe_every = meshgate_model::check::parse_duration(&args.health_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--health-interval {:?}: expected a duration like 5s", args.health_interval))?;
    prepare_dir(&args.data_dir)?;
    let mut held = match load(&args.data_dir) {
        Ok(Some(h)) if h.not_after > now() => {
            println!(
                "resumed certificate identity={} serial={} from {}",
                h.identity,
                h.serial,
                args.data_dir.display()
            );
            h
        }
        Ok(_) => join(&args, &endpoint, ttl).await?,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the stored certificate is unusable; joining again");
            join(&args, &endpoint, ttl).await?
        }
    };
    let name = agent_name(&args.data_dir, &args.service)?;
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("app".to_string(), args.service.clone());
    if let Some(v) = &args.version {
        labels.insert("version".to_string(), v.clone());
    }
    for kv in args.labels.iter().filter(|l| !l.is_empty()) {
        let Some((k, v)) = kv.split_once('=') else { bail!("--labels {kv:?}: expected key=value") };
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let locality = args.locality.clone().unwrap_or_default();
    let sidecar = Arc::new(sidecar::Sidecar::new(
        mesh_identity(&held)?,
        args.app,
        held.identity.namespace.clone(),
        labels.clone(),
        locality.clone(),
    )?);
    // Istio's request metrics: this workload is the source on the outbound
    // port and the destination on the inbound one.
    let metrics = {
        use crate::telemetry::istio::{ProxyMetrics, Service, Workload};
        let ns = held.identity.namespace.clone();
        let own = Workload { principal: held.identity.to_string(), ..Workload::from_labels(&labels, &ns) };
        let service = Service::new(&format!("{}.{ns}.svc.cluster.local", args.service), &ns);
        let m = Arc::new(ProxyMetrics::new(own.clone()));
        m.set_own(own, Some(service));
        m
    };
    let access_log = crate::telemetry::accesslog::AccessLog::open(args.access_log.as_deref())?;
    // Spans go to the control plane's trace store, batched, never waited for.
    let (spans_tx, spans_rx) = tokio::sync::mpsc::channel(SPAN_QUEUE);
    let tracer = {
        let ns = held.identity.namespace.clone();
        Arc::new(crate::telemetry::trace::Tracer::new(
            &format!("{}.{ns}", args.service),
            &ns,
            &name,
            crate::telemetry::trace::Sink::Queue(spans_tx),
            metrics.spans_dropped.clone(),
        ))
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let base = |hub: Arc<crate::control::Hub>, port: u32, reporter: crate::telemetry::istio::Reporter| {
        Arc::new(crate::proxy::Listener {
            hub,
            gateway_port: port,
            scheme: "http",
            clients: crate::proxy::Clients::new(),
            connection_limit: Arc::new(tokio::sync::Semaphore::new(10_000)),
            client_cert: None,
            peer_principal: None,
            tunnels: true,
            trusted_proxies: Arc::from([]),
            metrics: metrics.clone(),
            reporter,
            peer_workload: None,
            access_log: Some(access_log.clone()),
            tracer: Some(tracer.clone()),
        })
    };
    let outbound = tokio::net::TcpListener::bind(args.outbound)
        .await
        .with_context(|| format!("cannot listen on the outbound address {} (--outbound)", args.outbound))?;
    let outbound_addr = outbound.local_addr()?;
    let out_listener =
        base(sidecar.outbound.clone(), sidecar::OUTBOUND_PORT, crate::telemetry::istio::Reporter::Source);
    let mut out_stop = stop_rx.clone();
    tokio::spawn(crate::proxy::serve(outbound, out_listener, None, async move {
        crate::server::stopped(&mut out_stop).await;
    }));
    let mut inbound_addr = None;
    if args.app.is_some() {
        let inbound = tokio::net::TcpListener::bind(args.inbound)
            .await
            .with_context(|| format!("cannot listen on the inbound address {} (--inbound)", args.inbound))?;
        inbound_addr = Some(inbound.local_addr()?);
        let in_listener =
            base(sidecar.inbound.clone(), sidecar::INBOUND_PORT, crate::telemetry::istio::Reporter::Destination);
        tokio::spawn(sidecar::serve_inbound(inbound, sidecar.clone(), in_listener, stop_rx.clone()));
    }
    // Configuration: the first version before saying ready (briefly: a
    // control plane that is down does not stop the agent).
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    // The last configuration kept on disk serves at once, also while the control plane is down.
    let (first_tx, running) = match load_config(&args.data_dir) {
        Some((revision, resources)) => {
            sidecar.apply(revision, resources);
            println!("resumed configuration revision={revision} from {}", args.data_dir.display());
            let _ = first_tx.send(());
            (None, revision)
        }
        None => (Some(first_tx), -1),
    };
    // Metrics for Prometheus; the control plane lists the address for its service discovery.
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics)
        .await
        .with_context(|| format!("cannot listen on the metrics address {} (--metrics)", args.metrics))?;
    let metrics_addr = metrics_listener.local_addr()?;
    let metrics_target = SocketAddr::new(advertised_ip(metrics_addr, &endpoint), metrics_addr.port());
    tokio::spawn(serve_metrics(metrics_listener, metrics.clone(), stop_rx.clone()));
    let link = Arc::new(link::Link::new(endpoint.clone(), sidecar.clone()));
    tokio::spawn(send_spans(link.clone(), spans_rx, metrics.spans_dropped.clone()));
    tokio::spawn(send_stats(link.clone(), metrics.clone()));
    tokio::spawn(follow_config(
        link.clone(),
        sidecar.clone(),
        access_log.clone(),
        Reporting { name: name.clone(), service: args.service.clone(), metrics: metrics_target.to_string() },
        args.data_dir.clone(),
        running,
        first_tx,
    ));
    let _ = tokio::time::timeout(Duration::from_secs(10), first_rx).await;
    // The app's health from a first probe on, so an instance that is not
    // ready yet never takes traffic.
    let (health_tx, health_rx) = tokio::sync::watch::channel(health::Status::healthy());
    if let (Some(probe), Some(app)) = (&probe, args.app) {
        if let Err(reason) = probe.check(app, probe_every.min(Duration::from_secs(1))).await {
            health_tx.send_replace(health::Status { healthy: false, reason });
        }
        tokio::spawn(health::run(probe.clone(), app, probe_every, health_tx));
    }
    let registration = match inbound_addr {
        Some(addr) => {
            let ip = args.address.unwrap_or_else(|| advertised_ip(addr, &endpoint));
            let now = health_rx.borrow().clone();
            let body = json!({
                "name": name, "service": args.service, "address": ip.to_string(), "port": addr.port(),
                "labels": labels, "locality": locality, "healthy": now.healthy, "healthReason": now.reason,
            });
            match link.call("POST", "/mesh/v1/register", Some(&body)).await {
                Ok(_) => Some(ip),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot register this instance; other proxies will not find it until a restart");
                    None
                }
            }
        }
        None => None,
    };
    if probe.is_some() && registration.is_some() {
        tokio::spawn(report_health(link.clone(), name.clone(), health_rx));
    }
    println!(
        "meshgate agent ready name={} identity={} serial={} expires={} outbound={} inbound={} address={} metrics={} data-dir={}",
        name,
        held.identity,
        held.serial,
        crate::ca::rfc3339(
            time::OffsetDateTime::from_unix_timestamp(held.not_after).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        ),
        outbound_addr,
        inbound_addr.map_or("-".to_string(), |a| a.to_string()),
        registration.map_or("-".to_string(), |a| a.to_string()),
        metrics_addr,
        args.data_dir.display()
    );
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let wait = if failures == 0 { renew_in(&held) } else { backoff(failures) };
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => {}
        }
        match renew(&held, &endpoint, ttl).await {
            Ok(next) => {
                save(&args.data_dir, &next)?;
                println!("renewed certificate identity={} serial={}", next.identity, next.serial);
                sidecar.renewed(mesh_identity(&next)?)?;
                held = next;
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %format!("{e:#}"), attempt = failures, "certificate renewal failed; retrying");
            }
        }
    }
    // Leaving: take this instance out of the mesh, then stop serving.
    if registration.is_some() {
        let body = json!({ "name": name });
        let gone =
            tokio::time::timeout(Duration::from_secs(5), link.call("POST", "/mesh/v1/deregister", Some(&body))).await;
        if !matches!(gone, Ok(Ok(_))) {
            tracing::warn!("cannot deregister this instance; its WorkloadEntry stays until removed");
        }
    }
    let _ = stop_tx.send(true);
    Ok(())
}

/// The configuration as last received (`config.json`, 0600), if any.
fn load_config(dir: &Path) -> Option<(i64, Vec<meshgate_model::Resource>)> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "the kept configuration is unreadable; waiting for the control plane");
            return None;
        }
    };
    let resources = v["resources"]
        .as_array()?
        .iter()
        .filter_map(|doc| meshgate_model::Resource::from_value(doc.clone(), meshgate_model::DEFAULT_NAMESPACE).ok())
        .collect();
    Some((v["revision"].as_i64()?, resources))
}

/// Keeps the configuration just applied, written by rename.
fn save_config(dir: &Path, answer: &Value) -> anyhow::Result<()> {
    let tmp = dir.join(".config.json.tmp");
    crate::server::write_private(&tmp, &serde_json::to_string(answer)?)?;
    std::fs::rename(&tmp, dir.join("config.json"))?;
    Ok(())
}

/// This agent's name: `SERVICE-` and six hex digits, kept in the data dir.
fn agent_name(dir: &Path, service: &str) -> anyhow::Result<String> {
    let path = dir.join("name");
    if let Ok(n) = std::fs::read_to_string(&path)
        && !n.trim().is_empty()
    {
        return Ok(n.trim().to_string());
    }
    let name = format!("{service}-{}", hex::encode(rand::random::<[u8; 3]>()));
    crate::server::write_private(&path, &format!("{name}\n"))?;
    Ok(name)
}

fn mesh_identity(h: &Held) -> anyhow::Result<MeshIdentity> {
    Ok(MeshIdentity {
        id: h.identity.clone(),
        chain: h.chain.clone(),
        key: PrivateKeyDer::from_pem_slice(h.key_pem.as_bytes()).context("the workload key")?,
        roots: h.roots.clone(),
        not_after: time::OffsetDateTime::from_unix_timestamp(h.not_after).unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
    })
}

/// The client configuration for the mesh port with the current certificate.
fn mtls(sidecar: &sidecar::Sidecar) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let id = sidecar.identity.load();
    let verifier = MeshVerifier::new(Anchors::Roots(id.roots.clone()), Accept::ControlPlane);
    client_config(verifier, Some((id.chain.clone(), id.key.clone_key())))
}

/// Where other hosts reach this one: the inbound IP when it is a specific
/// one, else the local address of the route towards the control plane.
fn advertised_ip(inbound: SocketAddr, endpoint: &Endpoint) -> std::net::IpAddr {
    if !inbound.ip().is_unspecified() {
        return inbound.ip();
    }
    let towards = std::net::UdpSocket::bind(if inbound.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
        .and_then(|s| s.connect((endpoint.host.as_str(), endpoint.port)).map(|()| s))
        .and_then(|s| s.local_addr());
    towards.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip())
}

/// Follows the control plane's configuration (long poll), applying each
/// new version and reporting it (ACK), or keeping the last one and saying
/// why (NACK); sends its config dump when asked.
/// Who an agent says it is in its status reports.
struct Reporting {
    name: String,
    service: String,
    /// Where its metrics are scraped (`host:port`), for Prometheus discovery.
    metrics: String,
}

/// Serves `/stats/prometheus` (and `/metrics`): this proxy's request metrics.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<crate::telemetry::istio::ProxyMetrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = axum::Router::new()
        .route("/stats/prometheus", axum::routing::get(render_metrics))
        .route("/metrics", axum::routing::get(render_metrics))
        .with_state(metrics);
    let mut stop = stop;
    let _ =
        axum::serve(listener, app).with_graceful_shutdown(async move { crate::server::stopped(&mut stop).await }).await;
}

async fn render_metrics(
    axum::extract::State(metrics): axum::extract::State<Arc<crate::telemetry::istio::ProxyMetrics>>,
) -> impl axum::response::IntoResponse {
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
}

async fn follow_config(
    link: Arc<link::Link>,
    sidecar: Arc<sidecar::Sidecar>,
    access_log: Arc<crate::telemetry::accesslog::AccessLog>,
    me: Reporting,
    data_dir: PathBuf,
    mut acked: i64,
    mut first: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut after = -1i64;
    let mut nack: Option<Nack> = None;
    let mut failures = 0u32;
    let sending_logs = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let path = format!("/mesh/v1/config?name={}&service={}&after={after}&acked={acked}", me.name, me.service);
        let answer = link.call("GET", &path, None).await;
        match answer {
            Ok(Some(v)) if v["dumpWanted"] == true => failures = 0,
            Ok(Some(v)) if v["logsWanted"] == true => {
                failures = 0;
                if !sending_logs.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    tokio::spawn(send_logs(
                        link.clone(),
                        access_log.clone(),
                        me.name.clone(),
                        me.service.clone(),
                        sending_logs.clone(),
                    ));
                }
            }
            Ok(Some(v)) => {
                failures = 0;
                match accept(&v) {
                    Ok((revision, resources)) => {
                        sidecar.apply(revision, resources);
                        tracing::debug!(revision, "configuration applied");
                        if let Err(e) = save_config(&data_dir, &v) {
                            tracing::warn!(error = %format!("{e:#}"), "cannot keep the configuration on disk");
                        }
                        (after, acked, nack) = (revision, revision, None);
                    }
                    Err(n) => {
                        tracing::warn!(revision = n.revision, reason = %n.reason, "configuration rejected; keeping the last one");
                        after = n.revision;
                        nack = Some(n);
                    }
                }
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
            Ok(None) => {
                failures = 0;
                continue;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %format!("{e:#}"), "cannot fetch configuration; keeping the last one");
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        }
        // ACK or NACK, with what this agent now runs.
        let status = json!({
            "name": me.name, "service": me.service, "revision": acked, "nack": nack, "dump": sidecar.dump(),
            "metrics": me.metrics,
        });
        let sent = link.call("POST", "/mesh/v1/status", Some(&status)).await;
        if let Err(e) = sent {
            tracing::warn!(error = %format!("{e:#}"), "cannot report status to the control plane");
        }
    }
}

/// Tells the control plane of every change in the app's health, and again
/// on every new link (a restarted control plane learns it that way).
async fn report_health(link: Arc<link::Link>, name: String, mut health: tokio::sync::watch::Receiver<health::Status>) {
    let mut links = link.connections();
    loop {
        tokio::select! {
            changed = health.changed() => if changed.is_err() { return },
            changed = links.changed() => if changed.is_err() { return },
        }
        links.borrow_and_update();
        let now = health.borrow_and_update().clone();
        let body = json!({ "name": name, "healthy": now.healthy, "reason": now.reason });
        if let Err(e) = link.call("POST", "/mesh/v1/health", Some(&body)).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot report the app's health; again on reconnect");
        }
    }
}

/// Checks a pushed configuration before running any of it: every resource
/// must be one this agent understands (a newer control plane may send what
/// an older agent cannot read). All or nothing, as Envoy takes xDS.
fn accept(answer: &Value) -> Result<(i64, Vec<meshgate_model::Resource>), Nack> {
    let revision = answer["revision"].as_i64().unwrap_or(-1);
    let nack = |reason: String| Nack { revision, reason };
    if revision < 0 {
        return Err(nack("the answer carries no revision".into()));
    }
    let docs = answer["resources"].as_array().ok_or_else(|| nack("the answer carries no resources".into()))?;
    let mut resources = Vec::with_capacity(docs.len());
    for doc in docs {
        match meshgate_model::Resource::from_value(doc.clone(), meshgate_model::DEFAULT_NAMESPACE) {
            Ok(r) => resources.push(r),
            Err(errs) => {
                let what = format!(
                    "{} {}/{}",
                    doc["kind"].as_str().unwrap_or("?"),
                    doc["metadata"]["namespace"].as_str().unwrap_or(meshgate_model::DEFAULT_NAMESPACE),
                    doc["metadata"]["name"].as_str().unwrap_or("?")
                );
                let why: Vec<String> = errs.iter().map(|e| format!("{}: {}", e.path, e.reason)).collect();
                return Err(nack(format!("{what}: {}", why.join("; "))));
            }
        }
    }
    Ok((revision, resources))
}

/// Half the lifetime from its issue, give or take a tenth (so a fleet
/// issued together does not renew together). The CA backdates
/// certificates a few minutes for slow clocks; that is not lifetime.
fn renew_in(h: &Held) -> Duration {
    let issued = (h.not_before + BACKDATE_SECS).min(h.not_after);
    let life = (h.not_after - issued).max(1) as f64;
    let at = issued as f64 + life * (0.5 + rand::random_range(-0.1..0.1));
    Duration::from_secs_f64((at - now() as f64).max(0.5))
}

const BACKDATE_SECS: i64 = crate::ca::BACKDATE.as_secs() as i64;

fn backoff(failures: u32) -> Duration {
    Duration::from_millis((500u64 << failures.min(6)).min(30_000))
}

async fn join(args: &AgentArgs, endpoint: &Endpoint, ttl: Option<Duration>) -> anyhow::Result<Held> {
    let Some(token) = args.token.as_deref() else {
        bail!(
            "no certificate in {} and no join token: pass --token (from `meshgate token create --service {}`)",
            args.data_dir.display(),
            args.service
        );
    };
    let anchors = match (&args.ca_fingerprint, &args.ca_file) {
        (Some(f), None) => {
            let f = f.trim().to_ascii_lowercase();
            let ok =
                f.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                bail!("--ca-fingerprint {f:?}: expected sha256: and 64 hex digits");
            }
            Anchors::Pinned(f)
        }
        (None, Some(file)) => {
            Anchors::Roots(read_certs(file).with_context(|| format!("--ca-file {}", file.display()))?)
        }
        (Some(_), Some(_)) => bail!("give --ca-fingerprint or --ca-file, not both"),
        (None, None) => bail!(
            "refusing to trust {} without a pinned root: pass --ca-fingerprint sha256:... (printed by `meshgate up` and `meshgate token create`) or --ca-file ROOT.pem",
            args.join
        ),
    };
    let key = KeyPair::generate().context("generating the workload key")?;
    let tls = client_config(MeshVerifier::new(anchors.clone(), Accept::ControlPlane), None)?;
    let mut body = json!({ "csr": csr(&key)?, "service": args.service });
    if let Some(t) = ttl {
        body["ttlSeconds"] = json!(t.as_secs());
    }
    let answer = post(endpoint, tls, "/mesh/v1/join", Some(token), &body)
        .await
        .with_context(|| format!("joining the mesh at {}", args.join))?;
    if answer["namespace"].as_str() != Some(args.namespace.as_str()) {
        bail!(
            "the join token is for namespace {:?}, but this agent was started with -n {}",
            answer["namespace"].as_str().unwrap_or(""),
            args.namespace
        );
    }
    let held = held_from(&key, &answer["certificate"])?;
    // The roots handed over must include the one pinned: the CA that signed must be the one trusted.
    if let Anchors::Pinned(pin) = &anchors
        && !held.roots.iter().any(|r| crate::ca::fingerprint(r) == *pin)
    {
        bail!("the control plane's roots do not include the pinned {pin}");
    }
    save(&args.data_dir, &held)?;
    println!("joined the mesh as {} (service {})", held.identity, args.service);
    Ok(held)
}

async fn renew(held: &Held, endpoint: &Endpoint, ttl: Option<Duration>) -> anyhow::Result<Held> {
    let key = KeyPair::generate().context("generating the workload key")?;
    let current = PrivateKeyDer::from_pem_slice(held.key_pem.as_bytes()).context("the current key")?;
    let verifier = MeshVerifier::new(Anchors::Roots(held.roots.clone()), Accept::ControlPlane);
    let tls = client_config(verifier, Some((held.chain.clone(), current)))?;
    let mut body = json!({ "csr": csr(&key)? });
    if let Some(t) = ttl {
        body["ttlSeconds"] = json!(t.as_secs());
    }
    let answer = post(endpoint, tls, "/mesh/v1/renew", None, &body).await?;
    let next = held_from(&key, &answer["certificate"])?;
    if next.identity != held.identity {
        bail!("the renewed certificate is for {}, not {}", next.identity, held.identity);
    }
    Ok(next)
}

fn csr(key: &KeyPair) -> anyhow::Result<String> {
    let params = CertificateParams::default();
    Ok(params.serialize_request(key)?.pem()?)
}

fn held_from(key: &KeyPair, cert: &Value) -> anyhow::Result<Held> {
    let chain = certs_from(cert["chain"].as_str().unwrap_or(""))?;
    let roots = certs_from(cert["roots"].as_str().unwrap_or(""))?;
    describe(key.serialize_pem(), chain, roots)
}

fn describe(
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
) -> anyhow::Result<Held> {
    use x509_parser::prelude::FromDer as _;
    let leaf = chain.first().context("no certificate in the chain")?;
    if roots.is_empty() {
        bail!("no mesh roots");
    }
    let identity = SpiffeId::from_cert(leaf).context("the certificate carries no SPIFFE ID")?;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(leaf).map_err(|e| anyhow::anyhow!("{e}"))?;
    let validity = parsed.validity();
    Ok(Held {
        serial: hex::encode(parsed.raw_serial()),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        key_pem,
        chain,
        roots,
        identity,
    })
}

fn certs_from(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        bail!("no certificates in the control plane's answer");
    }
    Ok(certs)
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    certs_from(&pem)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

// ---- on disk: key.pem (0600), cert.pem (leaf + intermediates), roots.pem ----

fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

fn load(dir: &Path) -> anyhow::Result<Option<Held>> {
    let key_path = dir.join("key.pem");
    if !key_path.exists() {
        return Ok(None);
    }
    let key_pem = std::fs::read_to_string(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
    describe(key_pem, read_certs(&dir.join("cert.pem"))?, read_certs(&dir.join("roots.pem"))?).map(Some)
}

/// Writes each file to a temporary name and renames it, after syncing: a
/// crash leaves the old set or the new one, and the key is written first.
fn save(dir: &Path, h: &Held) -> anyhow::Result<()> {
    let chain: String = h.chain.iter().map(crate::ca::pem_cert).collect();
    let roots: String = h.roots.iter().map(crate::ca::pem_cert).collect();
    for (name, text) in [("key.pem", h.key_pem.as_str()), ("cert.pem", &chain), ("roots.pem", &roots)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        crate::server::write_private(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("cannot write {}", dir.join(name).display()))?;
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---- talking to the control plane ----

#[derive(Clone)]
struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let uri: http::Uri = url.parse().map_err(|e| anyhow::anyhow!("--join {url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            bail!("--join {url:?}: the mesh address is https://HOST:PORT (TLS always)");
        }
        let host = uri.host().context("--join: no host")?.trim_matches(['[', ']']).to_string();
        Ok(Endpoint { host, port: uri.port_u16().unwrap_or(15012) })
    }
}

fn client_config(
    verifier: MeshVerifier,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One HTTPS request to the mesh port; the answer's JSON, or its error message.
async fn post(
    endpoint: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    bearer: Option<&str>,
    body: &Value,
) -> anyhow::Result<Value> {
    Ok(call(endpoint, tls, "POST", path, bearer, Some(body)).await?.unwrap_or(Value::Null))
}

/// One HTTPS request to the mesh port on a connection of its own (joining
/// and renewing, before and between links): the answer's JSON (`None` for
/// 204), or its error message.
async fn call(
    endpoint: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Option<Value>> {
    let stream = connect(endpoint, tls).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = request(method, path, endpoint, bearer, body)?;
    let resp = tokio::time::timeout(Duration::from_secs(40), sender.send_request(req))
        .await
        .map_err(|_| anyhow::anyhow!("the control plane did not answer in time"))??;
    answer(resp).await
}

/// TCP and TLS to the control plane, each bounded in time.
async fn connect(
    endpoint: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let address = (endpoint.host.as_str(), endpoint.port);
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {}:{} timed out", endpoint.host, endpoint.port))?
        .with_context(|| format!("cannot connect to {}:{}", endpoint.host, endpoint.port))?;
    let name = ServerName::try_from(endpoint.host.clone()).context("server name")?;
    tokio::time::timeout(Duration::from_secs(10), tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| anyhow::anyhow!("TLS handshake with the control plane timed out"))?
        .context("TLS with the control plane failed")
}

fn request(
    method: &str,
    uri: &str,
    endpoint: &Endpoint,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<http::Request<Full<bytes::Bytes>>> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, format!("{}:{}", endpoint.host, endpoint.port))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = bearer {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let bytes = match body {
        Some(b) => bytes::Bytes::from(serde_json::to_vec(b)?),
        None => bytes::Bytes::new(),
    };
    Ok(req.body(Full::new(bytes))?)
}

/// The answer's JSON (`None` for 204), or the control plane's error message.
async fn answer(resp: http::Response<hyper::body::Incoming>) -> anyhow::Result<Option<Value>> {
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if status == http::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = value["error"]["message"]
            .as_str()
            .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_string);
        bail!("the control plane refused (HTTP {}): {message}", status.as_u16());
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_is_taken_whole_or_rejected_with_the_reason() {
        let vs = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "users", "namespace": "shop"},
            "spec": {"hosts": ["user-service"], "http": [{"route": [{"destination": {"host": "user-service"}}]}]},
        });
        let (revision, resources) = accept(&json!({"revision": 7, "resources": [vs.clone()]})).unwrap();
        assert_eq!((revision, resources.len()), (7, 1));

        // A field this agent does not know (as from a newer control plane): nothing of revision 8 runs.
        let mut newer = vs.clone();
        newer["spec"]["http"][0]["colour"] = json!("red");
        let nack = accept(&json!({"revision": 8, "resources": [vs, newer]})).unwrap_err();
        assert_eq!(nack.revision, 8);
        assert!(nack.reason.starts_with("VirtualService shop/users: "), "{}", nack.reason);
        assert!(nack.reason.contains("colour"), "{}", nack.reason);

        let nack = accept(&json!({"revision": 9})).unwrap_err();
        assert_eq!(nack.reason, "the answer carries no resources");
    }
}
