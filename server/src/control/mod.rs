//! The control plane's push side: after every write, recompile the
//! configuration into a new [`Snapshot`] and swap it in. The data plane
//! reads snapshots only; it never opens the database or waits on this.

pub mod compile;
pub mod fleet;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use crate::proxy::config::Snapshot;
use crate::proxy::upstream::HealthRegistry;
use crate::store::Store;

/// Holds the current snapshot and wakes the compiler on changes.
pub struct Hub {
    snapshot: ArcSwap<Snapshot>,
    changed: Notify,
    applied: watch::Sender<i64>,
    /// The newest compiled revision, for the listener manager, which then
    /// reports it `applied` once its listeners match.
    compiled: watch::Sender<i64>,
    has_listener_manager: std::sync::atomic::AtomicBool,
    pub health: HealthRegistry,
    /// Agents that fetch their configuration from the mesh port.
    pub fleet: fleet::Fleet,
    /// Remote JWKS of RequestAuthentication, fetched in the background.
    pub jwks: crate::proxy::authn::JwksRegistry,
    /// RateLimitPolicy buckets, kept across snapshots.
    pub limiters: crate::proxy::ratelimit::LimiterRegistry,
    /// The gateway's mesh credentials (ISTIO_MUTUAL to upstreams).
    pub identity: arc_swap::ArcSwapOption<crate::ca::MeshIdentity>,
    /// Where each Gateway port is being served: port → (address, TLS?).
    pub listening: std::sync::Mutex<std::collections::BTreeMap<u32, (std::net::SocketAddr, bool)>>,
    /// When recent revisions were applied, for the proxies' convergence time.
    applied_at: std::sync::Mutex<std::collections::VecDeque<(i64, std::time::Instant)>>,
    /// The appliance's trace store and exporters (set by `meshgate up`).
    pub traces: std::sync::OnceLock<Arc<crate::telemetry::tracestore::TraceHub>>,
    /// Requests/s, errors and latency per service, route and call, for the console.
    pub series: crate::telemetry::series::SeriesStore,
    /// `meshgate logs`: followers, and the lines agents send them.
    pub logs: Arc<crate::telemetry::logs::LogHub>,
    /// The gateway's access log (followed in process).
    pub gateway_log: std::sync::OnceLock<Arc<crate::telemetry::accesslog::AccessLog>>,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            changed: Notify::new(),
            applied: watch::channel(-1).0,
            compiled: watch::channel(-1).0,
            has_listener_manager: Default::default(),
            health: HealthRegistry::default(),
            listening: Default::default(),
            identity: Default::default(),
            fleet: Default::default(),
            jwks: Default::default(),
            limiters: Default::default(),
            applied_at: Default::default(),
            traces: Default::default(),
            series: Default::default(),
            logs: Default::default(),
            gateway_log: Default::default(),
        })
    }

    fn set_applied(&self, revision: i64) {
        let mut at = self.applied_at.lock().unwrap_or_else(|e| e.into_inner());
        if at.back().is_none_or(|(r, _)| *r < revision) {
            at.push_back((revision, std::time::Instant::now()));
            if at.len() > 256 {
                at.pop_front();
            }
        }
        drop(at);
        self.applied.send_replace(revision);
    }

    /// How long ago `revision` was applied here (and so could be sent to agents).
    pub fn applied_ago(&self, revision: i64) -> Option<std::time::Duration> {
        let at = self.applied_at.lock().unwrap_or_else(|e| e.into_inner());
        at.iter().find(|(r, _)| *r == revision).map(|(_, t)| t.elapsed())
    }

    /// The snapshot requests start on.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a snapshot compiled elsewhere (an agent's) and marks it applied.
    pub fn install(&self, snapshot: Snapshot) {
        let revision = snapshot.revision;
        self.snapshot.store(Arc::new(snapshot));
        self.set_applied(revision);
    }

    /// Called after every committed write.
    pub fn notify(&self) {
        self.changed.notify_one();
    }

    /// The revision the data plane is serving.
    pub fn applied_revision(&self) -> i64 {
        *self.applied.borrow()
    }

    /// For the listener manager: wakes on every new snapshot, and from now
    /// on a revision counts as applied only when the manager says so.
    pub fn take_over_applied(&self) -> watch::Receiver<i64> {
        self.has_listener_manager.store(true, std::sync::atomic::Ordering::SeqCst);
        self.compiled.subscribe()
    }

    /// Marks `revision` as served by every proxy and listener.
    pub fn mark_applied(&self, revision: i64) {
        self.set_applied(revision);
    }

    /// Waits until the control plane has compiled a revision newer than
    /// `after` (what agents are sent), up to `limit`; returns whether one came.
    pub async fn wait_newer(&self, after: i64, limit: std::time::Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| *r > after)).await.is_ok_and(|r| r.is_ok())
    }

    /// Waits until the data plane serves `revision` or later, up to `limit`.
    /// Returns whether it did.
    pub async fn wait_for(&self, revision: i64, limit: std::time::Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| *r >= revision)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Compiles once now, then again after every notification, until the
/// process ends. Notifications that arrive during a compile coalesce.
pub async fn run_compiler(hub: Arc<Hub>, store: Store, cluster_domain: String, locality: String) {
    loop {
        match compile_once(&hub, &store, &cluster_domain, &locality).await {
            Ok(rev) => tracing::debug!(revision = rev, "configuration applied"),
            Err(e) => tracing::error!(error = %e, "compiling configuration failed; keeping the previous one"),
        }
        hub.changed.notified().await;
    }
}

async fn compile_once(hub: &Hub, store: &Store, cluster_domain: &str, locality: &str) -> anyhow::Result<i64> {
    // Read the revision first: the resources read after it are at least that new.
    let revision = store.current_revision().await?;
    let resources = store.all_resources().await?;
    let consumers: std::collections::HashSet<(&str, &str)> = resources
        .iter()
        .filter(|r| r.kind == meshgate_model::Kind::Consumer)
        .map(|r| (r.namespace(), r.name()))
        .collect();
    let api_keys =
        crate::proxy::keyauth::ApiKeys::new(store.active_api_keys().await?, |ns, name| consumers.contains(&(ns, name)));
    let identity = hub.identity.load_full();
    let compiler = compile::Compiler {
        cluster_domain,
        locality,
        health: &hub.health,
        mesh: identity.as_deref(),
        edge: Some(compile::Edge { limiters: &hub.limiters, api_keys: Arc::new(api_keys) }),
        workload: None,
    };
    let mut snapshot = compiler.compile(revision, &resources);
    let (authn, authz) = compile::gateway_security(&resources, &hub.jwks);
    snapshot.authn = authn;
    snapshot.authz = authz;
    // What the previous snapshot alone used goes with it.
    hub.jwks.prune();
    hub.limiters.prune();
    hub.snapshot.store(Arc::new(snapshot));
    if hub.has_listener_manager.load(std::sync::atomic::Ordering::SeqCst) {
        hub.compiled.send_replace(revision);
    } else {
        hub.set_applied(revision);
    }
    Ok(revision)
}
