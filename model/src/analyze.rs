//! Cross-resource checks, like `istioctl analyze`: references that point
//! nowhere, hosts no gateway serves, fields accepted but not built. Pure
//! functions over resources, so the server, the CLI and the console share them.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::hosts::{fqdn, host_matches, namespace_admits, split_server_host};
use crate::kind::Kind;
use crate::resource::Resource;

/// Stable finding codes. Scripts match on these; never renumber.
pub mod codes {
    /// A document fails schema validation.
    pub const SCHEMA: &str = "MG0001";
    /// A VirtualService names a Gateway that does not exist.
    pub const GATEWAY_NOT_FOUND: &str = "MG0101";
    /// A VirtualService host that none of its Gateways serves.
    pub const HOST_NOT_IN_GATEWAY: &str = "MG0102";
    /// A route names a subset that no DestinationRule for its host defines.
    pub const SUBSET_NOT_FOUND: &str = "MG0103";
    /// A destination host that no ServiceEntry or registered service provides.
    pub const HOST_NOT_FOUND: &str = "MG0104";
    /// A `credentialName` (Gateway or DestinationRule) with no such Secret.
    pub const CREDENTIAL_NOT_FOUND: &str = "MG0105";
    /// Route weights that do not add up to 100.
    pub const WEIGHTS: &str = "MG0106";
    /// A field that is accepted but whose behaviour is not built yet.
    pub const NOT_SUPPORTED: &str = "MG0107";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

/// One analyzer finding.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub code: String,
    pub severity: Severity,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Field path in the resource, e.g. `spec.http[0].route[1].destination.subset`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
            Severity::Info => "Info",
        };
        write!(
            f,
            "{sev} [{}] ({} {}/{}) {}: {}",
            self.code, self.kind, self.namespace, self.name, self.path, self.message
        )
    }
}

/// What the analyzer knows beyond the resources themselves.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub cluster_domain: String,
    /// Fully qualified names of services registered by agents.
    pub registered_services: BTreeSet<String>,
}

struct Doc<'a> {
    kind: Kind,
    ns: &'a str,
    name: &'a str,
    value: Value,
}

/// Analyzes a complete set of resources.
pub fn analyze(resources: &[Resource], ctx: &Context) -> Vec<Finding> {
    let docs: Vec<Doc<'_>> = resources
        .iter()
        .map(|r| Doc { kind: r.kind, ns: r.namespace(), name: r.name(), value: r.to_value() })
        .collect();
    let namespaces: BTreeSet<&str> = docs.iter().map(|d| d.ns).collect();
    let a = Analyzer { docs: &docs, ctx, namespaces };
    let mut out = Vec::new();
    for d in &docs {
        let mut find = |code: &str, severity, path: String, message: String| {
            out.push(Finding {
                code: code.to_string(),
                severity,
                kind: d.kind.name().to_string(),
                namespace: d.ns.to_string(),
                name: d.name.to_string(),
                path,
                message,
            })
        };
        match d.kind {
            Kind::VirtualService => a.virtual_service(d, &mut find),
            Kind::Gateway => a.gateway(d, &mut find),
            Kind::TrafficSplit => a.traffic_split(d, &mut find),
            Kind::DestinationRule => a.destination_rule(d, &mut find),
            _ => {}
        }
        for (path, why) in crate::support::unsupported_fields(d.kind, &d.value) {
            find(codes::NOT_SUPPORTED, Severity::Warning, path, format!("not supported yet: {why}"));
        }
    }
    out.sort_by(|x, y| (x.severity, &x.kind, &x.namespace, &x.name).cmp(&(y.severity, &y.kind, &y.namespace, &y.name)));
    out
}

/// The code for a schema problem found while parsing: weight sums get
/// their own code, the rest are schema errors.
pub fn code_for_schema_problem(reason: &str) -> &'static str {
    if reason.contains("must sum to 100") { codes::WEIGHTS } else { codes::SCHEMA }
}

type Find<'f> = dyn FnMut(&str, Severity, String, String) + 'f;

struct Analyzer<'a> {
    docs: &'a [Doc<'a>],
    ctx: &'a Context,
    namespaces: BTreeSet<&'a str>,
}

impl Analyzer<'_> {
    fn fqdn(&self, host: &str, ns: &str) -> String {
        fqdn(host, ns, &self.ctx.cluster_domain, |n| self.namespaces.contains(n))
    }

    fn find(&self, kind: Kind, ns: &str, name: &str) -> Option<&Doc<'_>> {
        self.docs.iter().find(|d| d.kind == kind && d.ns == ns && d.name == name)
    }

    fn virtual_service(&self, d: &Doc<'_>, find: &mut Find<'_>) {
        let spec = &d.value["spec"];
        let hosts = strings(&spec["hosts"]);
        let mut bound = Vec::new();
        for (i, gw) in strings(&spec["gateways"]).iter().enumerate() {
            if *gw == "mesh" {
                continue;
            }
            let (ns, name) = gw.split_once('/').unwrap_or((d.ns, gw));
            match self.find(Kind::Gateway, ns, name) {
                Some(g) => bound.push(g),
                None => find(
                    codes::GATEWAY_NOT_FOUND,
                    Severity::Error,
                    format!("spec.gateways[{i}]"),
                    format!("Gateway {ns}/{name} does not exist"),
                ),
            }
        }
        if !bound.is_empty() {
            for (i, host) in hosts.iter().enumerate() {
                if !bound.iter().any(|g| gateway_serves(g, d.ns, host)) {
                    let names: Vec<String> = bound.iter().map(|g| format!("{}/{}", g.ns, g.name)).collect();
                    find(
                        codes::HOST_NOT_IN_GATEWAY,
                        Severity::Warning,
                        format!("spec.hosts[{i}]"),
                        format!("host {host:?} is not served by any server of Gateway {}", names.join(", ")),
                    );
                }
            }
        }
        for section in ["http", "tcp", "tls"] {
            for (i, route) in items(&spec[section]).iter().enumerate() {
                for (j, dest) in items(&route["route"]).iter().enumerate() {
                    let path = format!("spec.{section}[{i}].route[{j}].destination");
                    self.destination(d, &dest["destination"], &path, find);
                }
                if route.get("mirror").is_some() {
                    self.destination(d, &route["mirror"], &format!("spec.{section}[{i}].mirror"), find);
                }
                for (j, m) in items(&route["mirrors"]).iter().enumerate() {
                    let path = format!("spec.{section}[{i}].mirrors[{j}].destination");
                    self.destination(d, &m["destination"], &path, find);
                }
            }
        }
    }

    fn destination(&self, d: &Doc<'_>, dest: &Value, path: &str, find: &mut Find<'_>) {
        let Some(host) = dest["host"].as_str() else { return };
        let full = self.fqdn(host, d.ns);
        if !self.host_known(&full) {
            find(
                codes::HOST_NOT_FOUND,
                Severity::Error,
                format!("{path}.host"),
                format!("host {host:?} ({full}) is not provided by any ServiceEntry or registered service"),
            );
        }
        if let Some(subset) = dest["subset"].as_str() {
            self.subset(&full, host, subset, &format!("{path}.subset"), find);
        }
    }

    fn host_known(&self, full: &str) -> bool {
        self.ctx.registered_services.contains(full)
            || self
                .docs
                .iter()
                .filter(|e| e.kind == Kind::ServiceEntry)
                .any(|e| strings(&e.value["spec"]["hosts"]).iter().any(|h| host_matches(&self.fqdn(h, e.ns), full)))
    }

    fn subset(&self, full: &str, host: &str, subset: &str, path: &str, find: &mut Find<'_>) {
        let rules: Vec<&Doc<'_>> = self
            .docs
            .iter()
            .filter(|r| r.kind == Kind::DestinationRule)
            .filter(|r| r.value["spec"]["host"].as_str().is_some_and(|h| host_matches(&self.fqdn(h, r.ns), full)))
            .collect();
        let defined = rules.iter().any(|r| items(&r.value["spec"]["subsets"]).iter().any(|s| s["name"] == subset));
        if !defined {
            let message = if rules.is_empty() {
                format!("subset {subset:?} of {host:?}: no DestinationRule exists for {full}")
            } else {
                let names: Vec<String> = rules.iter().map(|r| format!("{}/{}", r.ns, r.name)).collect();
                format!("subset {subset:?} is not defined by DestinationRule {}", names.join(", "))
            };
            find(codes::SUBSET_NOT_FOUND, Severity::Error, path.to_string(), message);
        }
    }

    fn gateway(&self, d: &Doc<'_>, find: &mut Find<'_>) {
        for (i, server) in items(&d.value["spec"]["servers"]).iter().enumerate() {
            let tls = &server["tls"];
            let protocol = server["port"]["protocol"].as_str().unwrap_or("HTTP").to_ascii_uppercase();
            let mode = tls["mode"].as_str();
            let unsupported = match (protocol.as_str(), mode) {
                (_, Some(m)) if !matches!(m, "SIMPLE" | "PASSTHROUGH" | "MUTUAL" | "OPTIONAL_MUTUAL") => {
                    Some(format!("TLS mode {m}"))
                }
                (p, Some("PASSTHROUGH")) if p != "TLS" => {
                    Some(format!("PASSTHROUGH on a {p} server (use protocol TLS)"))
                }
                _ => None,
            };
            let number = server["port"]["number"].as_u64();
            if matches!(protocol.as_str(), "TCP" | "TLS") && matches!(number, Some(80 | 443)) {
                find(
                    codes::NOT_SUPPORTED,
                    Severity::Warning,
                    format!("spec.servers[{i}].port"),
                    format!(
                        "not supported yet: port {} is served by the --{} listener as {}; put {protocol} servers on another port",
                        number.unwrap_or_default(),
                        if number == Some(80) { "http" } else { "https" },
                        if number == Some(80) { "HTTP" } else { "HTTPS" },
                    ),
                );
            }
            if let Some(what) = unsupported {
                find(
                    codes::NOT_SUPPORTED,
                    Severity::Warning,
                    format!("spec.servers[{i}].tls.mode"),
                    format!("not supported yet: {what}"),
                );
            }
            let mut names: Vec<(String, &str)> = Vec::new();
            if let Some(c) = tls["credentialName"].as_str() {
                names.push((format!("spec.servers[{i}].tls.credentialName"), c));
            }
            for (j, c) in strings(&tls["credentialNames"]).into_iter().enumerate() {
                names.push((format!("spec.servers[{i}].tls.credentialNames[{j}]"), c));
            }
            for (path, name) in names {
                if self.find(Kind::Secret, d.ns, name).is_none() {
                    find(
                        codes::CREDENTIAL_NOT_FOUND,
                        Severity::Error,
                        path,
                        format!("Secret {}/{name} does not exist (a kubernetes.io/tls Secret is needed)", d.ns),
                    );
                }
            }
        }
    }

    /// Upstream TLS that cannot be honoured leaves a cluster without
    /// endpoints (never plaintext): say so before traffic finds out.
    fn destination_rule(&self, d: &Doc<'_>, find: &mut Find<'_>) {
        let spec = &d.value["spec"];
        let mut policies = vec![("spec.trafficPolicy".to_string(), &spec["trafficPolicy"])];
        for (i, s) in items(&spec["subsets"]).iter().enumerate() {
            policies.push((format!("spec.subsets[{i}].trafficPolicy"), &s["trafficPolicy"]));
        }
        let mut tls = Vec::new();
        for (path, policy) in &policies {
            tls.push((format!("{path}.tls"), &policy["tls"]));
            for (j, p) in items(&policy["portLevelSettings"]).iter().enumerate() {
                tls.push((format!("{path}.portLevelSettings[{j}].tls"), &p["tls"]));
            }
        }
        for (path, t) in tls {
            let mode = t["mode"].as_str().unwrap_or("");
            if !matches!(mode, "SIMPLE" | "MUTUAL") {
                continue;
            }
            if let Some(name) = t["credentialName"].as_str()
                && self.find(Kind::Secret, d.ns, name).is_none()
            {
                find(
                    codes::CREDENTIAL_NOT_FOUND,
                    Severity::Error,
                    format!("{path}.credentialName"),
                    format!("Secret {}/{name} does not exist; this destination answers 503", d.ns),
                );
            }
        }
    }

    fn traffic_split(&self, d: &Doc<'_>, find: &mut Find<'_>) {
        let spec = &d.value["spec"];
        let Some(service) = spec["service"].as_str() else { return };
        let full = self.fqdn(service, d.ns);
        if !self.host_known(&full) {
            find(
                codes::HOST_NOT_FOUND,
                Severity::Error,
                "spec.service".into(),
                format!("service {service:?} ({full}) is not provided by any ServiceEntry or registered service"),
            );
        }
        for (i, s) in items(&spec["subsets"]).iter().enumerate() {
            if let Some(name) = s["name"].as_str() {
                self.subset(&full, service, name, &format!("spec.subsets[{i}].name"), find);
            }
        }
    }
}

/// Whether Gateway `g` has a server whose hosts cover `host` for a
/// VirtualService in namespace `vs_ns` (`ns/host`, `*/host`, `./host`).
fn gateway_serves(g: &Doc<'_>, vs_ns: &str, host: &str) -> bool {
    items(&g.value["spec"]["servers"]).iter().flat_map(|s| strings(&s["hosts"])).any(|h| {
        let (ns, pattern) = split_server_host(h);
        namespace_admits(ns, g.ns, vs_ns) && host_matches(pattern, host)
    })
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn strings(v: &Value) -> Vec<&str> {
    items(v).iter().filter_map(Value::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(yaml: &str) -> Vec<String> {
        let resources = crate::parse::decode("test.yaml", yaml, "default").expect("valid resources");
        analyze(&resources, &Context::default()).into_iter().map(|f| format!("{} {}", f.code, f.path)).collect()
    }

    #[test]
    fn upstream_tls_that_cannot_work_is_reported() {
        let found = findings(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: x.example.com\n  trafficPolicy:\n    tls: {mode: SIMPLE, credentialName: missing}\n    portLevelSettings:\n    - port: {number: 443}\n      tls: {mode: MUTUAL, credentialName: gone}\n  subsets:\n  - name: v1\n    trafficPolicy:\n      tls: {mode: ISTIO_MUTUAL}\n",
        );
        assert!(found.contains(&"MG0105 spec.trafficPolicy.tls.credentialName".to_string()), "{found:?}");
        assert!(
            found.contains(&"MG0105 spec.trafficPolicy.portLevelSettings[0].tls.credentialName".to_string()),
            "{found:?}"
        );
        assert!(!found.iter().any(|f| f.contains("subsets[0]")), "ISTIO_MUTUAL works: {found:?}");
    }

    #[test]
    fn gateway_tls_modes_that_work_are_not_reported() {
        let gateway = |mode: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: ['*']\n    tls: {{mode: {mode}, credentialName: c}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: c}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: '-----BEGIN CERTIFICATE-----', tls.key: '-----BEGIN PRIVATE KEY-----'}}\n"
            )
        };
        for mode in ["SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"] {
            assert_eq!(findings(&gateway(mode)), Vec::<String>::new(), "{mode}");
        }
        let istio = gateway("ISTIO_MUTUAL").replace(", credentialName: c", "");
        assert_eq!(findings(&istio), ["MG0107 spec.servers[0].tls.mode"]);
    }

    #[test]
    fn tcp_servers_on_the_http_ports_are_reported() {
        let found = findings(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: tcp, protocol: TCP}\n    hosts: ['*']\n  - port: {number: 9000, name: tcp2, protocol: TCP}\n    hosts: ['*']\n",
        );
        assert_eq!(found, ["MG0107 spec.servers[0].port"]);
    }
}
