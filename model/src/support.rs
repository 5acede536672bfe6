//! Fields that parse and are stored but whose behaviour meshgate does not
//! build. `analyze` reports them (MG0107) so nothing is ignored silently.
//! When a capability lands, its line leaves this table.

use serde_json::Value;

use crate::kind::Kind;

/// (kind, field pattern, why). Patterns are dotted paths from the document
/// root; `[*]` walks every element of a list, `*` every key of a map.
const UNSUPPORTED: &[(Kind, &str, &str)] = &[
    (Kind::Gateway, "spec.servers[*].defaultEndpoint", "sidecar ingress default endpoints are not built"),
    (
        Kind::VirtualService,
        "spec.exportTo",
        "exportTo scopes what sidecars are sent; the edge gateway sees every namespace",
    ),
    (Kind::VirtualService, "spec.tcp[*].match[*].sourceSubnet", "source-subnet matching is not built yet"),
    (Kind::VirtualService, "spec.tcp[*].match[*].destinationSubnets", "destination-subnet matching is not built yet"),
    (Kind::VirtualService, "spec.tcp[*].match[*].sourceLabels", "source-label matching needs the mesh (sidecars)"),
    (Kind::VirtualService, "spec.tls[*].match[*].destinationSubnets", "destination-subnet matching is not built yet"),
    (Kind::VirtualService, "spec.tls[*].match[*].sourceLabels", "source-label matching needs the mesh (sidecars)"),
    (Kind::VirtualService, "spec.http[*].delegate", "VirtualService delegation is not built"),
    (Kind::VirtualService, "spec.http[*].match[*].sourceLabels", "source-label matching needs the mesh (sidecars)"),
    (Kind::VirtualService, "spec.http[*].match[*].sourceNamespace", "matching on the source namespace is not built"),
    (Kind::VirtualService, "spec.http[*].match[*].statPrefix", "per-match stat prefixes are not built"),
    (Kind::VirtualService, "spec.http[*].fault.abort.grpcStatus", "gRPC status aborts are not built"),
    (Kind::VirtualService, "spec.http[*].fault.abort.http2Error", "HTTP/2 error aborts are not built"),
    (
        Kind::DestinationRule,
        "spec.exportTo",
        "exportTo scopes what sidecars are sent; the edge gateway sees every namespace",
    ),
    (Kind::DestinationRule, "spec.workloadSelector", "workload-scoped DestinationRules are not built"),
    (Kind::DestinationRule, "spec.trafficPolicy.tunnel", "HTTP CONNECT tunnelling is not built"),
    (Kind::DestinationRule, "spec.trafficPolicy.proxyProtocol", "PROXY protocol to upstreams is not built"),
    (Kind::DestinationRule, "spec.trafficPolicy.retryBudget", "retry budgets are not built"),
    (
        Kind::ServiceEntry,
        "spec.exportTo",
        "exportTo scopes what sidecars are sent; the edge gateway sees every namespace",
    ),
    (Kind::ServiceEntry, "spec.addresses", "virtual IPs for ServiceEntries are not allocated"),
    (Kind::WorkloadEntry, "spec.network", "multi-network gateways are not built"),
    (Kind::AuthorizationPolicy, "spec.provider", "external authorization (action CUSTOM) is not built"),
    (Kind::Telemetry, "spec.metrics", "metric overrides are not built; every proxy reports Istio's standard metrics"),
    (Kind::Telemetry, "spec.tracing[*].match", "client/server modes are not told apart: every hop records its span"),
    (Kind::Telemetry, "spec.tracing[*].useRequestIdForTraceSampling", "sampling does not use the request id"),
    (Kind::Telemetry, "spec.tracing[*].enableIstioTags", "Istio's tags are always added"),
    (Kind::Telemetry, "spec.accessLogging[*].providers", "each proxy has one access log (--access-log)"),
    (Kind::Telemetry, "spec.accessLogging[*].match", "client/server modes are not told apart"),
];

/// Every field of `doc` (a resource in document form) that is accepted but
/// not acted on: (path, why).
pub fn unsupported_fields(kind: Kind, doc: &Value) -> Vec<(String, &'static str)> {
    let mut found = Vec::new();
    for (k, pattern, why) in UNSUPPORTED {
        if *k != kind {
            continue;
        }
        let mut patterns = vec![pattern.to_string()];
        // A traffic policy can also sit on a subset or on one port.
        if let Some(rest) = pattern.strip_prefix("spec.trafficPolicy.") {
            patterns.push(format!("spec.subsets[*].trafficPolicy.{rest}"));
            patterns.push(format!("spec.subsets[*].trafficPolicy.portLevelSettings[*].{rest}"));
            patterns.push(format!("spec.trafficPolicy.portLevelSettings[*].{rest}"));
        }
        for p in &patterns {
            let segments: Vec<&str> = p.split('.').collect();
            walk(doc, &segments, String::new(), &mut |path| found.push((path, *why)));
        }
    }
    found
}

fn walk(value: &Value, segments: &[&str], path: String, found: &mut dyn FnMut(String)) {
    let Some((first, rest)) = segments.split_first() else {
        if !is_empty(value) {
            found(path);
        }
        return;
    };
    let join = |p: &str, s: &str| if p.is_empty() { s.to_string() } else { format!("{p}.{s}") };
    if let Some(field) = first.strip_suffix("[*]") {
        if let Some(Value::Array(items)) = value.get(field) {
            for (i, item) in items.iter().enumerate() {
                walk(item, rest, format!("{}[{i}]", join(&path, field)), found);
            }
        }
    } else if *first == "*" {
        if let Value::Object(map) = value {
            for (k, v) in map {
                walk(v, rest, join(&path, k), found);
            }
        }
    } else if let Some(v) = value.get(*first) {
        walk(v, rest, join(&path, first), found);
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_inside_lists() {
        let doc =
            serde_json::json!({"spec": {"http": [{"route": []}, {"delegate": {"name": "x"}}], "exportTo": ["."]}});
        let found: Vec<String> = unsupported_fields(Kind::VirtualService, &doc).into_iter().map(|f| f.0).collect();
        assert_eq!(found, ["spec.exportTo", "spec.http[1].delegate"]);
        assert!(unsupported_fields(Kind::Gateway, &doc).is_empty());
    }

    #[test]
    fn finds_traffic_policy_fields_on_subsets_and_ports() {
        let doc = serde_json::json!({"spec": {
            "trafficPolicy": {"portLevelSettings": [{"port": {"number": 80}, "tls": {"mode": "SIMPLE"}, "proxyProtocol": {"version": "V1"}}]},
            "subsets": [{"name": "v1", "trafficPolicy": {"retryBudget": {"percent": 20}}}],
        }});
        let found: Vec<String> = unsupported_fields(Kind::DestinationRule, &doc).into_iter().map(|f| f.0).collect();
        assert_eq!(
            found,
            ["spec.trafficPolicy.portLevelSettings[0].proxyProtocol", "spec.subsets[0].trafficPolicy.retryBudget"]
        );
    }
}
