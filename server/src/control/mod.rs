//! The control plane's push side: after every write, recompile the
//! configuration into a new [`Snapshot`] and swap it in. The data plane
//! reads snapshots only; it never opens the database or waits on this.

pub mod compile;

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
    pub health: HealthRegistry,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            changed: Notify::new(),
            applied: watch::channel(-1).0,
            health: HealthRegistry::default(),
        })
    }

    /// The snapshot requests start on.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Called after every committed write.
    pub fn notify(&self) {
        self.changed.notify_one();
    }

    /// The revision the data plane is serving.
    pub fn applied_revision(&self) -> i64 {
        *self.applied.borrow()
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
    let compiler = compile::Compiler { cluster_domain, locality, health: &hub.health };
    let snapshot = compiler.compile(revision, &resources);
    hub.snapshot.store(Arc::new(snapshot));
    hub.applied.send_replace(revision);
    Ok(revision)
}
