//! The agents the control plane serves: what each last said (the revision
//! it runs, a revision it rejected and why), and its config dump, asked
//! for over its own config stream so that `meshgate proxy-config` shows
//! what the agent really runs, wherever it is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, watch};

/// An agent as the control plane last saw it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRecord {
    pub name: String,
    pub identity: String,
    pub service: String,
    pub namespace: String,
    /// The revision the agent says it runs.
    pub revision: i64,
    /// Milliseconds since the Unix epoch of its last request.
    pub last_seen_ms: i64,
    /// Waiting for the next revision right now.
    pub connected: bool,
    /// The newest revision it rejected, while it has not run a newer one.
    pub nack: Option<Nack>,
    /// Its app's health as its probe last said (`None`: it does not probe).
    pub healthy: Option<bool>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub health_reason: String,
    /// Where its metrics are scraped (`host:port`, `/stats/prometheus`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Its last config dump.
    #[serde(skip)]
    pub report: Option<Report>,
}

#[derive(Debug, Clone)]
pub struct Report {
    /// When it came, ms since the epoch.
    pub at_ms: i64,
    /// Its place among all reports (orders them within one millisecond).
    seq: u64,
    pub dump: Arc<Value>,
}

impl ProxyRecord {
    /// The agent runs `revision`: a NACK of it or of an older one is over.
    fn runs(&mut self, revision: i64) {
        self.revision = revision;
        if self.nack.as_ref().is_some_and(|n| n.revision <= revision) {
            self.nack = None;
        }
    }
}

/// A revision an agent would not run, with its reason.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Nack {
    pub revision: i64,
    pub reason: String,
}

#[derive(Default)]
pub struct Fleet {
    proxies: Mutex<BTreeMap<String, ProxyRecord>>,
    /// Agents whose config dump is wanted: their waiting config request
    /// answers at once with a request for it.
    wanted: watch::Sender<BTreeSet<String>>,
    reported: Notify,
    reports: std::sync::atomic::AtomicU64,
    /// Wakes the health reconciler: an agent's app changed health or an agent left.
    pub health_changed: Notify,
}

/// Who is asking, as the mesh port authenticated it.
pub struct Caller<'a> {
    pub name: &'a str,
    pub identity: &'a str,
    pub service: &'a str,
    pub namespace: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub struct NotYours;

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ProxyRecord>> {
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record of `c`'s agent (made on first contact, running
    /// `first_revision`), seen now, for `change` to update. An agent's name
    /// stays with the identity that first used it.
    fn with_record(
        &self,
        c: &Caller<'_>,
        first_revision: i64,
        change: impl FnOnce(&mut ProxyRecord),
    ) -> Result<(), NotYours> {
        let mut all = self.lock();
        let record = all.entry(c.name.to_string()).or_insert_with(|| ProxyRecord {
            name: c.name.to_string(),
            identity: c.identity.to_string(),
            service: c.service.to_string(),
            namespace: c.namespace.to_string(),
            revision: first_revision,
            last_seen_ms: 0,
            connected: false,
            nack: None,
            healthy: None,
            health_reason: String::new(),
            metrics: None,
            report: None,
        });
        if record.identity != c.identity {
            return Err(NotYours);
        }
        record.service = c.service.to_string();
        record.last_seen_ms = now_ms();
        change(record);
        Ok(())
    }

    /// Records a config request: the agent runs `revision`.
    pub fn seen(&self, c: &Caller<'_>, revision: i64, connected: bool) -> Result<(), NotYours> {
        self.with_record(c, revision, |r| {
            r.connected = connected;
            r.runs(revision);
        })
    }

    /// An agent's status: the revision it runs, what it rejected, its config dump.
    pub fn report(
        &self,
        c: &Caller<'_>,
        revision: i64,
        nack: Option<Nack>,
        dump: Value,
        metrics: Option<String>,
    ) -> Result<(), NotYours> {
        let seq = self.reports.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.with_record(c, revision, |r| {
            r.runs(revision);
            if metrics.is_some() {
                r.metrics = metrics;
            }
            r.nack = nack.filter(|n| n.revision > revision);
            r.report = Some(Report { at_ms: now_ms(), seq, dump: Arc::new(dump) });
        })?;
        self.reported.notify_waiters();
        Ok(())
    }

    /// Marks `name` connected until the guard goes (its config request
    /// answered, or dropped with the agent's link).
    pub fn waiting<'a>(&'a self, name: &'a str) -> Waiting<'a> {
        Waiting { fleet: self, name }
    }

    /// What an agent's probe says of its app.
    pub fn set_health(&self, c: &Caller<'_>, healthy: bool, reason: &str) -> Result<(), NotYours> {
        self.with_record(c, -1, |r| {
            r.healthy = Some(healthy);
            r.health_reason = if healthy { String::new() } else { reason.to_string() };
        })?;
        self.health_changed.notify_one();
        Ok(())
    }

    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    pub fn all(&self) -> Vec<ProxyRecord> {
        self.lock().values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<ProxyRecord> {
        self.lock().get(name).cloned()
    }

    /// Resolves when `name`'s config dump is wanted (and takes the want).
    pub async fn dump_wanted(&self, name: &str) {
        let mut rx = self.wanted.subscribe();
        loop {
            let wanted = rx.borrow_and_update().contains(name);
            if wanted {
                self.wanted.send_modify(|w| {
                    w.remove(name);
                });
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Asks `name` for a fresh config dump and waits for it, up to `limit`;
    /// the newest dump it has, with its time and whether it is fresh.
    pub async fn fresh_dump(&self, name: &str, limit: Duration) -> Option<(Report, bool)> {
        let asked = self.reports.load(std::sync::atomic::Ordering::SeqCst);
        self.wanted.send_modify(|w| {
            w.insert(name.to_string());
        });
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let reported = self.reported.notified();
            let newest = self.lock().get(name)?.report.clone();
            if let Some(report) = newest.as_ref().filter(|r| r.seq > asked) {
                return Some((report.clone(), true));
            }
            if tokio::time::timeout_at(deadline, reported).await.is_err() {
                self.wanted.send_modify(|w| {
                    w.remove(name);
                });
                return newest.map(|r| (r, false));
            }
        }
    }
}

pub struct Waiting<'a> {
    fleet: &'a Fleet,
    name: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(record) = self.fleet.lock().get_mut(self.name) {
            record.connected = false;
            record.last_seen_ms = now_ms();
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller<'a>(name: &'a str, identity: &'a str) -> Caller<'a> {
        Caller { name, identity, service: "orders", namespace: "default" }
    }

    #[test]
    fn a_name_stays_with_its_identity() {
        let fleet = Fleet::default();
        let me = "spiffe://cluster.local/ns/default/sa/orders";
        fleet.seen(&caller("orders-1", me), 3, true).unwrap();
        let other = caller("orders-1", "spiffe://cluster.local/ns/default/sa/billing");
        assert_eq!(fleet.seen(&other, 4, true), Err(NotYours));
        assert_eq!(fleet.report(&other, 4, None, Value::Null, None), Err(NotYours));
        assert_eq!(fleet.get("orders-1").unwrap().revision, 3);
    }

    #[test]
    fn a_nack_lasts_until_a_newer_revision_runs() {
        let fleet = Fleet::default();
        let me = caller("orders-1", "spiffe://cluster.local/ns/default/sa/orders");
        let nack = Nack { revision: 5, reason: "VirtualService default/x: spec.http: unknown field".into() };
        fleet.report(&me, 4, Some(nack.clone()), serde_json::json!({}), None).unwrap();
        assert_eq!(fleet.get("orders-1").unwrap().nack, Some(nack));
        fleet.seen(&me, 4, true).unwrap();
        assert!(fleet.get("orders-1").unwrap().nack.is_some(), "still running 4");
        fleet.seen(&me, 6, true).unwrap();
        assert_eq!(fleet.get("orders-1").unwrap().nack, None);
    }

    #[tokio::test]
    async fn a_wanted_dump_wakes_the_agents_request_and_its_report_answers() {
        let fleet = Arc::new(Fleet::default());
        let me = caller("orders-1", "spiffe://cluster.local/ns/default/sa/orders");
        fleet.report(&me, 1, None, serde_json::json!({"n": "old"}), None).unwrap();
        // The agent's waiting config request, which reports when woken.
        let agent = {
            let fleet = fleet.clone();
            tokio::spawn(async move {
                fleet.dump_wanted("orders-1").await;
                let me = caller("orders-1", "spiffe://cluster.local/ns/default/sa/orders");
                fleet.report(&me, 1, None, serde_json::json!({"n": "new"}), None).unwrap();
            })
        };
        let (report, fresh) = fleet.fresh_dump("orders-1", Duration::from_secs(10)).await.unwrap();
        assert!(fresh);
        assert_eq!(report.dump["n"], "new");
        agent.await.unwrap();
        // Nobody answers: the last report, marked stale.
        let (report, fresh) = fleet.fresh_dump("orders-1", Duration::from_millis(50)).await.unwrap();
        assert!(!fresh);
        assert_eq!(report.dump["n"], "new");
        assert!(fleet.fresh_dump("nobody", Duration::from_millis(50)).await.is_none());
    }
}
