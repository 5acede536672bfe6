//! Service names as Istio resolves them: `user-service`,
//! `user-service.default` and `user-service.default.svc.cluster.local` name
//! the same service in namespace `default`.

/// The cluster domain Istio uses unless configured otherwise.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Resolves `host` written in a resource of namespace `namespace` to its
/// fully qualified name. A one-label host is a service in the resource's
/// namespace; a two-label host `name.ns` is a service in namespace `ns` when
/// `is_namespace(ns)` says such a namespace exists (otherwise it is taken as
/// a DNS name such as `example.com`); anything longer is already qualified.
pub fn fqdn(host: &str, namespace: &str, cluster_domain: &str, is_namespace: impl Fn(&str) -> bool) -> String {
    let host = host.trim_end_matches('.');
    if host == "*" || host.starts_with("*.") {
        return host.to_string();
    }
    match host.split('.').count() {
        1 => format!("{host}.{namespace}.{cluster_domain}"),
        2 if host.split('.').nth(1).is_some_and(&is_namespace) => format!("{host}.{cluster_domain}"),
        _ => host.to_string(),
    }
}

/// Splits a Gateway server host into its namespace part and host: `ns/host`,
/// `*/host`, `./host`, or a bare host (any namespace, `*`).
pub fn split_server_host(server_host: &str) -> (&str, &str) {
    server_host.split_once('/').unwrap_or(("*", server_host))
}

/// Whether a server host's namespace part admits VirtualServices of
/// namespace `vs_ns`, for a Gateway in namespace `gateway_ns`.
pub fn namespace_admits(ns_part: &str, gateway_ns: &str, vs_ns: &str) -> bool {
    ns_part == "*" || ns_part == vs_ns || (ns_part == "." && gateway_ns == vs_ns)
}

/// Whether host pattern `pattern` (exact, `*`, or `*.suffix` / `*suffix`)
/// covers `host`. A wildcard host is covered by a pattern whose suffix
/// contains it (`*.example.com` covers `*.api.example.com`).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    let host = host.strip_prefix('*').unwrap_or(host);
    host.len() > suffix.len() && host.to_ascii_lowercase().ends_with(&suffix.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_like_istio() {
        let ns = |n: &str| n == "default" || n == "prod";
        let cd = DEFAULT_CLUSTER_DOMAIN;
        assert_eq!(fqdn("user-service", "default", cd, ns), "user-service.default.svc.cluster.local");
        assert_eq!(fqdn("user-service.prod", "default", cd, ns), "user-service.prod.svc.cluster.local");
        assert_eq!(fqdn("example.com", "default", cd, ns), "example.com");
        assert_eq!(
            fqdn("user-service.default.svc.cluster.local", "prod", cd, ns),
            "user-service.default.svc.cluster.local"
        );
    }

    #[test]
    fn wildcards_cover_hosts() {
        assert!(host_matches("*", "api.example.com"));
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "*.api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("api.example.com", "*.example.com"));
        assert!(host_matches("API.example.com", "api.example.com"));
    }
}
