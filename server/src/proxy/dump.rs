//! What a proxy runs, as data: the routes, clusters and endpoints of a
//! compiled [`Snapshot`], for `meshgate proxy-config` (Envoy's config dump,
//! in the shape `istioctl proxy-config` shows it). Endpoint health is read
//! live: an ejected endpoint shows as such.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::config::{Action, RequestMatch, Snapshot, StrMatch, WeightedClusters};
use super::upstream::{Cluster, Lb};

/// The three tables of one snapshot; `listener` names it (`outbound`, `inbound`, a gateway port).
pub struct Dump {
    pub routes: Vec<Value>,
    pub clusters: Vec<Value>,
    pub endpoints: Vec<Value>,
}

impl Dump {
    pub fn of(snapshot: &Snapshot, listener: &str) -> Dump {
        let mut routes = Vec::new();
        let mut clusters: BTreeMap<String, Arc<Cluster>> = BTreeMap::new();
        let mut ports: Vec<_> = snapshot.ports.iter().collect();
        ports.sort_by_key(|(port, _)| **port);
        for (port, table) in ports {
            let mut hosts: Vec<_> = table
                .exact
                .values()
                .chain(table.wildcards.iter().map(|(_, v)| v))
                .chain(table.catch_all.iter())
                .collect();
            hosts.sort_by(|a, b| a.name.cmp(&b.name));
            for vhost in hosts {
                for route in &vhost.routes {
                    let to = match route.action.as_ref() {
                        Action::Forward(w) => {
                            remember(&mut clusters, w);
                            json!({ "clusters": targets(w) })
                        }
                        Action::Redirect(r) => json!({ "redirect": r.status.as_u16() }),
                        Action::Direct { status, .. } => json!({ "directResponse": status.as_u16() }),
                    };
                    for (mirror, _) in &route.mirrors {
                        clusters.insert(mirror.name.clone(), mirror.clone());
                    }
                    let transcoder = route.transcoder.as_ref().map(|t| {
                        let bindings: Vec<String> =
                            t.bindings().map(|(method, path, to)| format!("{method} {path} -> {to}")).collect();
                        json!({ "name": t.name, "bindings": bindings })
                    });
                    routes.push(json!({
                        "listener": listener,
                        "port": port,
                        "domain": vhost.name,
                        "name": &*route.name,
                        "match": route.matcher.as_ref().map_or(json!({}), describe_match),
                        "action": to,
                        "timeout": route.timeout.map(|t| format!("{}ms", t.as_millis())),
                        "retries": route.retry.attempts,
                        "fault": route.fault.is_some(),
                        "grpcTranscoder": transcoder,
                    }));
                }
            }
        }
        for l4 in snapshot.l4.values() {
            for route in l4.iter() {
                remember(&mut clusters, &route.targets);
            }
        }
        let mut endpoints = Vec::new();
        let clusters = clusters
            .values()
            .map(|c| {
                for e in &c.endpoints {
                    endpoints.push(json!({
                        "cluster": c.name,
                        "address": e.address,
                        "status": if e.health.is_ejected() { "EJECTED" } else { "HEALTHY" },
                        "activeRequests": e.health.active.load(std::sync::atomic::Ordering::Relaxed),
                        "localityPriority": e.priority,
                        "labels": e.labels,
                    }));
                }
                json!({
                    "name": c.name,
                    "direction": listener,
                    "endpoints": c.endpoints.len(),
                    "lb": lb_name(&c.lb),
                    "tls": c.tls.as_ref().map_or("DISABLE", |t| t.mode),
                    "http2": c.http2,
                    "outlierDetection": c.outlier.is_some(),
                })
            })
            .collect();
        Dump { routes, clusters, endpoints }
    }
}

fn remember(clusters: &mut BTreeMap<String, Arc<Cluster>>, w: &WeightedClusters) {
    for t in &w.targets {
        clusters.entry(t.cluster.name.clone()).or_insert_with(|| t.cluster.clone());
    }
}

/// Each target with its weight in percent, from the cumulative bounds.
fn targets(w: &WeightedClusters) -> Vec<Value> {
    let mut below = 0;
    let total = u64::from(w.total.max(1));
    w.targets
        .iter()
        .map(|t| {
            let share = u64::from(t.upper.saturating_sub(below)) * 100;
            below = t.upper;
            let weight = if w.targets.len() == 1 {
                json!(100)
            } else if share % total == 0 {
                json!(share / total)
            } else {
                json!((share as f64 / total as f64 * 100.0).round() / 100.0)
            };
            json!({ "cluster": t.cluster.name, "weight": weight })
        })
        .collect()
}

fn describe_match(m: &RequestMatch) -> Value {
    let mut out = serde_json::Map::new();
    let mut put = |key: &str, v: &Option<StrMatch>| {
        if let Some(v) = v {
            out.insert(key.to_string(), json!(describe(v)));
        }
    };
    put("uri", &m.uri);
    put("method", &m.method);
    put("scheme", &m.scheme);
    put("authority", &m.authority);
    for (name, v) in &m.headers {
        out.insert(format!("header {name}"), json!(v.as_ref().map_or("present".to_string(), describe)));
    }
    for (name, v) in &m.without_headers {
        out.insert(format!("without header {name}"), json!(v.as_ref().map_or("present".to_string(), describe)));
    }
    for (name, v) in &m.query {
        out.insert(format!("query {name}"), json!(v.as_ref().map_or("present".to_string(), describe)));
    }
    Value::Object(out)
}

/// `exact:/a`, `prefix:/v1`, `regex:^/u.*$` (Istio's StringMatch forms).
pub fn describe(m: &StrMatch) -> String {
    match m {
        StrMatch::Exact(s) => format!("exact:{s}"),
        StrMatch::Prefix(s) => format!("prefix:{s}"),
        StrMatch::Regex(r) => format!("regex:{}", r.as_str()),
        StrMatch::Never => "never (could not be compiled)".to_string(),
    }
}

fn lb_name(lb: &Lb) -> &'static str {
    match lb {
        Lb::RoundRobin => "ROUND_ROBIN",
        Lb::LeastRequest => "LEAST_REQUEST",
        Lb::Random => "RANDOM",
        Lb::Hash(_) => "CONSISTENT_HASH",
    }
}
