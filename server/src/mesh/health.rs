//! Keeps each agent's WorkloadEntry marked as its instance is: unhealthy
//! while the agent's probe says its app fails, or while the agent has been
//! out of contact past the grace period (`--agent-grace`); healthy again
//! when that ends. The mark is an annotation the compiler reads, so every
//! proxy drops (and later takes back) the instance by the usual push.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_model::Kind;
use tokio::sync::watch;

use crate::control::Hub;
use crate::control::compile::{HEALTH_ANNOTATION, HEALTH_REASON_ANNOTATION};
use crate::control::fleet::now_ms;
use crate::store::{Store, WriteMode};

/// How often out-of-contact agents are looked for.
const TICK: Duration = Duration::from_secs(1);

pub async fn reconcile(store: Store, hub: Arc<Hub>, grace: Duration, mut stop: watch::Receiver<bool>) {
    let started = Instant::now();
    loop {
        tokio::select! {
            () = crate::server::stopped(&mut stop) => return,
            () = hub.fleet.health_changed.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
        if let Err(e) = once(&store, &hub, grace, started.elapsed()).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot update instance health; trying again");
        }
    }
}

/// What an agent's instance should be marked: `None` when not known yet.
fn desired(hub: &Hub, name: &str, grace: Duration, uptime: Duration) -> Option<(bool, String)> {
    let grace_ms = grace.as_millis() as i64;
    match hub.fleet.get(name) {
        Some(r) if r.connected || now_ms() - r.last_seen_ms <= grace_ms => {
            Some((r.healthy.unwrap_or(true), r.health_reason))
        }
        Some(r) => {
            let since = time::OffsetDateTime::from_unix_timestamp(r.last_seen_ms / 1000)
                .map(crate::ca::rfc3339)
                .unwrap_or_default();
            Some((false, format!("its agent has been out of contact since {since}")))
        }
        None if uptime < grace => None,
        None => Some((false, "its agent has not connected since the control plane started".to_string())),
    }
}

async fn once(store: &Store, hub: &Hub, grace: Duration, uptime: Duration) -> anyhow::Result<()> {
    let entries = store.list(Some(Kind::WorkloadEntry), None).await?;
    let mut changes = Vec::new();
    for o in entries.iter().filter(|o| o.labels.get("meshgate.io/agent").is_some_and(|v| v == "true")) {
        let Some((healthy, reason)) = desired(hub, &o.name, grace, uptime) else { continue };
        let marked = o.annotations.get(HEALTH_ANNOTATION).is_some_and(|h| h == "unhealthy");
        let marked_reason = o.annotations.get(HEALTH_REASON_ANNOTATION).map_or("", String::as_str);
        if healthy != marked && (healthy || marked_reason == reason) {
            continue;
        }
        let mut r = o.to_resource()?;
        let notes = &mut r.metadata.annotations;
        if healthy {
            notes.remove(HEALTH_ANNOTATION);
            notes.remove(HEALTH_REASON_ANNOTATION);
            tracing::info!(instance = %format!("{}/{}", o.namespace, o.name), "instance healthy again");
        } else {
            notes.insert(HEALTH_ANNOTATION.to_string(), "unhealthy".to_string());
            notes.insert(HEALTH_REASON_ANNOTATION.to_string(), reason.clone());
            tracing::warn!(instance = %format!("{}/{}", o.namespace, o.name), %reason, "instance unhealthy; no proxy sends it traffic");
        }
        changes.push(r);
    }
    if !changes.is_empty() {
        store.apply(&changes, "control-plane:health", WriteMode::Upsert).await?;
        hub.notify();
    }
    Ok(())
}
