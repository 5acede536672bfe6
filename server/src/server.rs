//! `meshgate up`: prepare the data dir, open the store, bootstrap the admin
//! user and token, bind every listener, serve until told to stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::{self, AppState, Settings};
use crate::config::Config;
use crate::control::{self, Hub};
use crate::proxy;
use crate::store::{self, Store, new_token};
use crate::telemetry::Metrics;

/// Where the server is listening once it is ready.
#[derive(Debug, Clone)]
pub struct Ready {
    pub admin: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    pub https: std::net::SocketAddr,
    pub mesh: std::net::SocketAddr,
    /// `sha256:HEX` of the mesh CA's root, for `meshgate agent --ca-fingerprint`.
    pub ca_fingerprint: String,
    /// The admin address speaks HTTPS.
    pub admin_tls: bool,
}

impl Ready {
    /// The admin API's and console's URL.
    pub fn admin_url(&self) -> String {
        format!("{}://{}", if self.admin_tls { "https" } else { "http" }, self.admin)
    }
}

/// Runs the server until `shutdown` completes, then drains in-flight
/// requests and closes the database. `on_ready` is called once every
/// listener is bound and serving.
pub async fn run(
    config: Config,
    started: Instant,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    let sidecars = crate::agent::supervise::parse_all(&config.sidecars)?;
    prepare_data_dir(&config.data_dir)?;
    let store = store::open(&config.data_dir.join("meshgate.db")).await?;
    bootstrap(&store, &config.data_dir).await?;

    let plugin = config.ca.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let ca = Arc::new(crate::ca::Ca::load(&store, &config.data_dir, &config.trust_domain, plugin).await?);
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new();
    // The trace store, and an export task per tracing provider.
    let exporters = config
        .trace_providers
        .iter()
        .map(|p| crate::telemetry::export::start(p.clone(), metrics.traces.clone()))
        .collect();
    let traces =
        Arc::new(crate::telemetry::tracestore::TraceHub::new(config.trace_store, exporters, metrics.traces.clone()));
    let _ = hub.traces.set(traces.clone());
    let intake = traces.intake().context("starting the trace store")?;
    // The gateway's own summary for the built-in time series, like an agent's.
    {
        let (hub, proxy) = (hub.clone(), metrics.gateway.clone());
        tokio::spawn(async move {
            let mut last = std::collections::HashMap::new();
            let mut every = tokio::time::interval(crate::telemetry::series::report_interval());
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let deltas = proxy.summary(&mut last);
                hub.series.add(crate::telemetry::series::unix_now(), &deltas);
            }
        });
    }

    let mesh_tls = Arc::new(crate::mesh::MeshTls::new(&ca, mesh_names())?);
    let admin_https = config.admin_tls != crate::config::AdminTls::Off;
    let state = AppState {
        mesh_tls: Some(mesh_tls.clone()),
        logins: Default::default(),
        ca: ca.clone(),
        hub: hub.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        settings: Arc::new(Settings {
            cluster_domain: config.cluster_domain.clone(),
            trust_domain: config.trust_domain.clone(),
            secure_cookies: admin_https,
        }),
    };
    let admin = TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot listen on the admin address {} (--admin)", config.admin))?;
    let http = proxy::bind_workers(config.http, config.workers, "--http")?;
    let https = proxy::bind_workers(config.https, config.workers, "--https")?;
    let mesh = TcpListener::bind(config.mesh)
        .await
        .with_context(|| format!("cannot listen on the mesh address {} (--mesh)", config.mesh))?;
    let ready = Ready {
        admin: admin.local_addr()?,
        http: http[0].local_addr()?,
        https: https[0].local_addr()?,
        mesh: mesh.local_addr()?,
        ca_fingerprint: ca.fingerprint(),
        admin_tls: admin_https,
    };
    let admin_tls = admin_tls(&config, &ca, ready.admin)?;
    {
        let mut listening = hub.listening.lock().unwrap_or_else(|e| e.into_inner());
        listening.insert(80, (ready.http, false));
        listening.insert(443, (ready.https, true));
    }

    // One shutdown signal, fanned out to every server.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let manager_stop = stop_rx.clone();
    let workers_stop = stop_rx.clone();
    let mesh_stop = stop_rx.clone();
    // Sidecars stop before everything else: they deregister through the mesh port.
    let (agents_stop, stop_rx_agents) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let clients = proxy::Clients::new();
    let connection_limit = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let gateway_log = crate::telemetry::accesslog::AccessLog::open(config.access_log.as_deref())?;
    let _ = hub.gateway_log.set(gateway_log.clone());
    let plain = Arc::new(proxy::Listener {
        hub: hub.clone(),
        gateway_port: 80,
        scheme: "http",
        clients,
        connection_limit,
        client_cert: None,
        peer_principal: None,
        tunnels: false,
        trusted_proxies: config.trusted_proxies.clone().into(),
        metrics: metrics.gateway.clone(),
        reporter: crate::telemetry::istio::Reporter::Source,
        peer_workload: None,
        access_log: Some(gateway_log.clone()),
        tracer: config.tracing.then(|| {
            let ns = crate::ca::identity::CONTROL_NAMESPACE;
            Arc::new(crate::telemetry::trace::Tracer::new(
                &format!("meshgate-gateway.{ns}"),
                ns,
                "meshgate-gateway",
                crate::telemetry::trace::Sink::Hub(intake.clone()),
                metrics.traces.dropped.with_label_values(&["queue_full", "gateway"]),
            ))
        }),
    });
    let secure = Arc::new(proxy::Listener { gateway_port: 443, scheme: "https", ..(*plain).clone() });
    // Listeners of the other Gateway ports are made like port 80's.
    let more_ports = tokio::spawn(proxy::listeners::manage(
        hub.take_over_applied(),
        (*plain).clone(),
        config.http.ip(),
        config.port_map.clone(),
        manager_stop,
    ));
    // The gateway is a mesh member: its own certificate, renewed at half its lifetime.
    hub.identity
        .store(Some(Arc::new(ca.identity(&crate::ca::SpiffeId::gateway(ca.trust_domain()), crate::ca::DEFAULT_TTL)?)));
    tokio::spawn(renew_gateway_identity(hub.clone(), ca.clone()));
    // The gateway's principal in its request metrics (`source_principal`).
    metrics.gateway.set_own(
        crate::telemetry::istio::Workload {
            name: "meshgate-gateway".into(),
            namespace: crate::ca::identity::CONTROL_NAMESPACE.into(),
            principal: crate::ca::SpiffeId::gateway(ca.trust_domain()).to_string(),
            app: "meshgate-gateway".into(),
            version: "unknown".into(),
        },
        None,
    );
    // The compiler starts after the manager has taken over `applied`.
    tokio::spawn(control::run_compiler(
        hub.clone(),
        store.clone(),
        config.cluster_domain.clone(),
        config.locality.clone(),
    ));
    // Ports 80 and 443: worker threads that each own their connections.
    let http_task = tokio::spawn(proxy::serve_workers(http, plain, None, workers_stop.clone()));
    let acceptor = Some(proxy::tls::acceptor(hub.clone(), 443));
    let https_task = tokio::spawn(proxy::serve_workers(https, secure, acceptor, workers_stop));
    let mesh_state =
        crate::mesh::MeshState { store: store.clone(), ca: ca.clone(), hub: hub.clone(), metrics: metrics.clone() };
    tokio::spawn(crate::mesh::health::reconcile(store.clone(), hub.clone(), config.agent_grace, mesh_stop.clone()));
    let mesh_task = tokio::spawn(crate::mesh::serve(mesh, mesh_tls, mesh_state, mesh_stop));
    let admin_task = match admin_tls {
        None => {
            let admin_server = axum::serve(admin, api::router(state)).with_graceful_shutdown(stopped());
            tokio::spawn(async move { admin_server.await })
        }
        Some(tls) => tokio::spawn(serve_admin_tls(admin, tls, api::router(state), stopped())),
    };

    // The first snapshot must be live before we say ready.
    hub.wait_for(0, std::time::Duration::from_secs(10)).await;
    metrics.startup_seconds.observe(started.elapsed().as_secs_f64());
    on_ready(&ready);
    // Sidecars for this host's services, once the mesh port serves.
    let mesh_for_agents = if ready.mesh.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), ready.mesh.port())
    } else {
        ready.mesh
    };
    let supervised: Vec<_> = sidecars
        .into_iter()
        .map(|spec| {
            tokio::spawn(crate::agent::supervise::supervise(
                spec,
                store.clone(),
                mesh_for_agents.to_string(),
                ready.ca_fingerprint.clone(),
                config.data_dir.clone(),
                stop_rx_agents.clone(),
            ))
        })
        .collect();

    shutdown.await;
    let _ = agents_stop.send(true);
    for s in supervised {
        let _ = s.await;
    }
    let _ = stop_tx.send(true);
    // In-flight requests finish; a connection that will not close is cut after the grace period.
    let drained = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let _ = more_ports.await;
        let _ = http_task.await;
        let _ = https_task.await;
        let _ = mesh_task.await;
        admin_task.await
    })
    .await;
    tracing::info!("stopped accepting; in-flight requests finished; closing the database");
    store.close().await;
    match drained {
        Ok(Ok(result)) => result.context("admin server"),
        Ok(Err(e)) => Err(anyhow::anyhow!("admin server task: {e}")),
        Err(_) => {
            tracing::warn!("connections still open after 30 s; closing anyway");
            Ok(())
        }
    }
}

/// Re-issues the gateway's mesh certificate at half its lifetime and
/// recompiles, so ISTIO_MUTUAL connections use the new one.
async fn renew_gateway_identity(hub: Arc<control::Hub>, ca: Arc<crate::ca::Ca>) {
    let id = crate::ca::SpiffeId::gateway(ca.trust_domain());
    let mut wait = crate::ca::DEFAULT_TTL / 2;
    loop {
        tokio::time::sleep(wait).await;
        match ca.identity(&id, crate::ca::DEFAULT_TTL) {
            Ok(identity) => {
                hub.identity.store(Some(Arc::new(identity)));
                hub.notify();
                tracing::info!(identity = %id, "renewed the gateway's mesh certificate");
                wait = crate::ca::DEFAULT_TTL / 2;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the gateway's mesh certificate; retrying in a minute");
                wait = std::time::Duration::from_secs(60);
            }
        }
    }
}

/// DNS names for the mesh port's certificate (agents check its SPIFFE ID,
/// not a name; these help tools such as `openssl s_client` and `curl`).
/// The admin address's TLS, when `--admin-tls` or `--admin-cert` asks for
/// it. With meshgate's CA, the CA's roots are written to
/// `DATA_DIR/admin-ca.pem`, where the CLI finds them.
fn admin_tls(
    config: &Config,
    ca: &Arc<crate::ca::Ca>,
    bound: std::net::SocketAddr,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let ca_file = config.data_dir.join("admin-ca.pem");
    if config.admin_tls != crate::config::AdminTls::MeshCa {
        // Roots from an earlier --admin-tls would mislead the CLI now.
        let _ = std::fs::remove_file(&ca_file);
    }
    let (chain, key) = match &config.admin_tls {
        crate::config::AdminTls::Off => return Ok(None),
        crate::config::AdminTls::Files(cert, key) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("--admin-cert {}: {e}", cert.display()))?;
            if chain.is_empty() {
                anyhow::bail!("--admin-cert {}: no PEM certificate in it", cert.display());
            }
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("--admin-key {}: {e}", key.display()))?;
            (chain, key)
        }
        crate::config::AdminTls::MeshCa => {
            let mut names = mesh_names();
            names.extend(["127.0.0.1".to_string(), "::1".to_string()]);
            if !bound.ip().is_unspecified() && !bound.ip().is_loopback() {
                names.push(bound.ip().to_string());
            }
            let cert = Arc::new(AdminCert {
                ca: ca.clone(),
                names,
                ca_file,
                current: arc_swap::ArcSwapOption::empty(),
                roots: std::sync::Mutex::new(String::new()),
            });
            cert.issue()?;
            tokio::spawn(renew_admin_cert(cert.clone()));
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            return admin_acceptor(
                rustls::ServerConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_no_client_auth()
                    .with_cert_resolver(cert),
            )
            .map(Some);
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("the admin address's certificate and key: {e}"))?;
    admin_acceptor(server).map(Some)
}

fn admin_acceptor(mut server: rustls::ServerConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// The admin address's certificate from meshgate's CA (`--admin-tls`):
/// short-lived like the mesh's, re-issued at half its lifetime and as soon
/// as the CA's roots change (a rotation signs it with the new root, a
/// retirement drops the old), with `admin-ca.pem` rewritten to match.
struct AdminCert {
    ca: Arc<crate::ca::Ca>,
    names: Vec<String>,
    ca_file: std::path::PathBuf,
    current: arc_swap::ArcSwapOption<rustls::sign::CertifiedKey>,
    /// The roots the current certificate was issued under.
    roots: std::sync::Mutex<String>,
}

impl std::fmt::Debug for AdminCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCert")
    }
}

impl rustls::server::ResolvesServerCert for AdminCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.load_full()
    }
}

impl AdminCert {
    fn issue(&self) -> anyhow::Result<()> {
        let roots = self.ca.roots_pem();
        let me = crate::ca::SpiffeId::control_plane(self.ca.trust_domain());
        let (issued, key) = self.ca.issue_own(&me, &self.names, crate::ca::DEFAULT_TTL)?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| anyhow::anyhow!("the admin address's key: {e}"))?;
        // The roots first (written whole, then renamed): a client reading
        // them must never find the new certificate with only the old roots.
        let partial = self.ca_file.with_extension("pem.new");
        std::fs::write(&partial, &roots).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &self.ca_file).with_context(|| format!("writing {}", self.ca_file.display()))?;
        self.current.store(Some(Arc::new(rustls::sign::CertifiedKey::new(issued.chain, signing))));
        *self.roots.lock().unwrap_or_else(|e| e.into_inner()) = roots;
        Ok(())
    }

    fn roots_changed(&self) -> bool {
        *self.roots.lock().unwrap_or_else(|e| e.into_inner()) != self.ca.roots_pem()
    }
}

/// Keeps the admin certificate fresh: checks the CA's roots every 2 s and
/// re-issues when they changed or half the certificate's life is gone.
async fn renew_admin_cert(cert: Arc<AdminCert>) {
    // The wall clock, not a monotonic one: after the host slept, the
    // certificate's age is what the clients' clocks say it is.
    let mut issued = std::time::SystemTime::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let roots_changed = cert.roots_changed();
        if !roots_changed && issued.elapsed().unwrap_or_default() < crate::ca::DEFAULT_TTL / 2 {
            continue;
        }
        match cert.issue() {
            Ok(()) => {
                issued = std::time::SystemTime::now();
                tracing::info!(roots_changed, "renewed the admin address's certificate");
            }
            // Tried again at the next tick; the current certificate still serves.
            Err(e) => tracing::error!(error = %e, "cannot renew the admin address's certificate"),
        }
    }
}

/// The admin router over HTTPS: accepts until `stop`, each connection on a task of its own.
async fn serve_admin_tls(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use tower::ServiceExt as _;
    let mut stop = std::pin::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "admin address: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => return Ok(()),
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(tcp)).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn mesh_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim().to_ascii_lowercase();
        if !host.is_empty()
            && host != "localhost"
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            names.push(host);
        }
    }
    names
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create data dir {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict data dir {}", dir.display()))?;
        }
    } else if !dir.is_dir() {
        anyhow::bail!("data dir {} exists and is not a directory", dir.display());
    }
    Ok(())
}

/// First start: user `admin` and an admin API token in `DATA_DIR/admin.token`.
/// Later starts re-register the token file if the database was replaced.
async fn bootstrap(store: &Store, data_dir: &Path) -> anyhow::Result<()> {
    if !store.user_exists("admin").await? {
        let (password, generated) = match std::env::var("MESHGATE_ADMIN_PASSWORD") {
            Ok(p) if !p.is_empty() => (p, false),
            _ => (hex::encode(rand::random::<[u8; 12]>()), true),
        };
        store.create_user("admin", &password).await?;
        if generated {
            println!(
                "created user admin with password {password} (shown once; set MESHGATE_ADMIN_PASSWORD to choose it)"
            );
        } else {
            println!("created user admin with the password from MESHGATE_ADMIN_PASSWORD");
        }
    }
    let token_path = data_dir.join("admin.token");
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = new_token();
            write_private(&token_path, &format!("{t}\n"))?;
            t
        }
    };
    if store.find_token(&token).await?.is_none() {
        store.add_token(&token, "admin", "admin", None).await?;
    }
    Ok(())
}

pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Completes once `stop` turns true (the one way tasks here watch a stop signal).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
