//! AuthorizationPolicy as a sidecar's inbound enforces it, compiled once
//! per configuration: DENY policies first, then ALLOW (if any ALLOW policy
//! selects the workload, a request must match one), AUDIT only logs.
//! Within a rule, `from`, `to` and `when` must all match; within each, any
//! entry; within an entry, every field that is set; within a field, any
//! value. `not*` fields match when none of their values does. Values take
//! Istio's forms: exact, `prefix*`, `*suffix`, `*`.

use std::net::IpAddr;

use http::HeaderMap;
use meshgate_model::security::{Action, AuthorizationPolicySpec, Condition, Operation, Source};

/// The compiled policies that select one workload.
#[derive(Debug, Default)]
pub struct Authz {
    /// The workload's port (`destination.port`, operation `ports`), as text.
    port: String,
    deny: Vec<Policy>,
    allow: Vec<Policy>,
    audit: Vec<Policy>,
}

#[derive(Debug)]
struct Policy {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    from: Vec<SourceMatch>,
    to: Vec<OperationMatch>,
    when: Vec<ConditionMatch>,
}

/// A field: the values it takes and those it must not.
#[derive(Debug)]
struct Field<T> {
    any: Vec<T>,
    none: Vec<T>,
}

#[derive(Debug, Clone)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

/// An address block (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

#[derive(Debug)]
struct SourceMatch {
    principals: Field<Pattern>,
    /// JWT principals (`iss/sub`) from RequestAuthentication.
    request_principals: Field<Pattern>,
    namespaces: Field<Pattern>,
    /// `ipBlocks`: the address the connection comes from.
    ips: Field<Cidr>,
    /// `remoteIpBlocks`: the client's, from `X-Forwarded-For` as far as trusted proxies wrote it.
    remote_ips: Field<Cidr>,
}

#[derive(Debug)]
struct OperationMatch {
    hosts: Field<Pattern>,
    methods: Field<Pattern>,
    paths: Field<Pattern>,
    ports: Field<Pattern>,
}

#[derive(Debug)]
struct ConditionMatch {
    key: Key,
    values: Field<Pattern>,
}

#[derive(Debug)]
enum Key {
    Header(http::HeaderName),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationPort,
    /// `request.auth.principal`: `iss/sub` of the request's JWT.
    RequestPrincipal,
    /// `request.auth.audiences`.
    Audiences,
    /// `request.auth.presenter` (the `azp` claim).
    Presenter,
    /// `request.auth.claims[a][b]`: a claim, nested objects by name.
    Claim(Vec<String>),
    /// Keys this proxy does not know: they match no value.
    Unknown,
}

/// What a decision looks at.
pub struct Facts<'a> {
    /// The peer's principal as Istio writes it: `TD/ns/NS/sa/SA` (no `spiffe://`).
    pub principal: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub ip: IpAddr,
    /// The original client's address (`ip` unless trusted proxies forwarded the request).
    pub remote_ip: IpAddr,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub port: &'a str,
    pub headers: &'a HeaderMap,
    /// The request's checked JWT, if it had one.
    pub request: Option<&'a super::authn::Identity>,
}

impl Authz {
    /// Compiles `policies` (already those that select the workload on
    /// `port`); each is `(namespace/name, spec)`. Port 0: the gateway,
    /// whose port is the listener's.
    pub fn compile<'a>(port: u16, policies: impl IntoIterator<Item = (String, &'a AuthorizationPolicySpec)>) -> Authz {
        let port = if port == 0 { String::new() } else { port.to_string() };
        let mut out = Authz { port, ..Authz::default() };
        for (name, spec) in policies {
            let policy = Policy { name, rules: spec.rules.iter().map(compile_rule).collect() };
            match spec.action.unwrap_or(Action::Allow) {
                Action::Allow => out.allow.push(policy),
                Action::Deny => out.deny.push(policy),
                Action::Audit => out.audit.push(policy),
                // CUSTOM needs an external authorizer, which meshgate has not; such policies are skipped.
                Action::Custom => {
                    tracing::warn!(policy = %policy.name, "AuthorizationPolicy CUSTOM is not supported; ignored")
                }
            }
        }
        out
    }

    /// The workload's port; empty at the gateway (the listener's port counts).
    pub fn port(&self) -> &str {
        &self.port
    }

    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.audit.is_empty()
    }

    /// `Err(policy)` names what denied the request.
    pub fn check(&self, f: &Facts<'_>) -> Result<(), String> {
        for p in &self.audit {
            if p.matches(f) {
                tracing::info!(policy = %p.name, principal = f.principal.unwrap_or(""), path = f.path, "AUDIT policy matched");
            }
        }
        if let Some(p) = self.deny.iter().find(|p| p.matches(f)) {
            return Err(format!("denied by {}", p.name));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| p.matches(f)) {
            return Err("no ALLOW policy matched".into());
        }
        Ok(())
    }
}

impl Policy {
    /// A policy without rules matches nothing (so an empty ALLOW policy denies all).
    fn matches(&self, f: &Facts<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(f))
    }
}

impl Rule {
    fn matches(&self, f: &Facts<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(f)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(f)))
            && self.when.iter().all(|c| c.matches(f))
    }
}

impl SourceMatch {
    fn matches(&self, f: &Facts<'_>) -> bool {
        self.principals.matches_opt(f.principal, Pattern::matches)
            && self.request_principals.matches_opt(f.request.map(|r| r.principal.as_str()), Pattern::matches)
            && self.namespaces.matches_opt(f.namespace, Pattern::matches)
            && self.ips.matches(&f.ip, Cidr::contains)
            && self.remote_ips.matches(&f.remote_ip, Cidr::contains)
    }
}

impl OperationMatch {
    fn matches(&self, f: &Facts<'_>) -> bool {
        let host = f
            .host
            .rsplit_once(':')
            .map_or(f.host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { f.host });
        // Host patterns are lowercased when compiled; the host only if it needs it.
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(host.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(host)
        };
        self.hosts.matches(host.as_ref(), Pattern::matches)
            && self.methods.matches(f.method, Pattern::matches)
            && self.paths.matches(f.path.split('?').next().unwrap_or(""), Pattern::matches)
            && self.ports.matches(f.port, Pattern::matches)
    }
}

impl ConditionMatch {
    fn matches(&self, f: &Facts<'_>) -> bool {
        let value: Option<&str> = match &self.key {
            Key::Header(name) => f.headers.get(name).and_then(|v| v.to_str().ok()),
            Key::SourceIp | Key::RemoteIp => {
                // IP conditions take CIDRs too.
                let ip = if matches!(self.key, Key::SourceIp) { f.ip } else { f.remote_ip };
                return self.values.matches(&ip, |p, ip| match p {
                    Pattern::Exact(s) => parse_cidr(s).is_some_and(|c| c.contains(ip)),
                    other => other.matches(&ip.to_string()),
                });
            }
            Key::SourceNamespace => f.namespace,
            Key::SourcePrincipal => f.principal,
            Key::DestinationPort => Some(f.port),
            Key::RequestPrincipal => f.request.map(|r| r.principal.as_str()),
            Key::Presenter => f.request.and_then(|r| r.claims.get("azp")).and_then(|v| v.as_str()),
            // Several values: any of them matches `values`, none of them `notValues`.
            Key::Audiences | Key::Claim(_) => {
                let values = match (&self.key, f.request) {
                    (Key::Audiences, Some(r)) => r.claim(&["aud"]),
                    (Key::Claim(path), Some(r)) => r.claim(path),
                    _ => Vec::new(),
                };
                if values.is_empty() {
                    return self.values.any.is_empty();
                }
                let any =
                    self.values.any.is_empty() || values.iter().any(|v| self.values.any.iter().any(|p| p.matches(v)));
                return any && !values.iter().any(|v| self.values.none.iter().any(|p| p.matches(v)));
            }
            Key::Unknown => None,
        };
        self.values.matches_opt(value, Pattern::matches)
    }
}

impl<T> Field<T> {
    /// Every value is `any`-matched if `any` is set, and none of `none`.
    fn matches<V: ?Sized>(&self, value: &V, m: impl Fn(&T, &V) -> bool) -> bool {
        (self.any.is_empty() || self.any.iter().any(|p| m(p, value))) && !self.none.iter().any(|p| m(p, value))
    }

    /// An absent value matches no `any` list, and no `none` list either.
    fn matches_opt(&self, value: Option<&str>, m: impl Fn(&T, &str) -> bool) -> bool {
        match value {
            Some(v) => self.matches(v, m),
            None => self.any.is_empty(),
        }
    }
}

impl Pattern {
    fn new(s: &str) -> Pattern {
        if s == "*" {
            Pattern::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_string())
        } else {
            Pattern::Exact(s.to_string())
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(s) => v == s,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(p) => v.ends_with(p.as_str()),
        }
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        parse_cidr(s.trim())
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let bits = u32::from(self.bits);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits.min(32)) };
                u32::from(n) & mask == u32::from(*a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits.min(128)) };
                u128::from(n) & mask == u128::from(*a) & mask
            }
            // An IPv4 client seen through an IPv6 socket.
            (IpAddr::V4(_), IpAddr::V6(a)) => a.to_ipv4_mapped().is_some_and(|v4| self.contains(&IpAddr::V4(v4))),
            _ => false,
        }
    }
}

fn parse_cidr(s: &str) -> Option<Cidr> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => {
            let ip = ip.parse::<IpAddr>().ok()?;
            let bits = bits.parse::<u8>().ok().filter(|b| *b <= if ip.is_ipv4() { 32 } else { 128 })?;
            (ip, bits)
        }
        None => {
            let ip = s.parse::<IpAddr>().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    Some(Cidr { net: ip, bits })
}

fn patterns(any: &[String], none: &[String]) -> Field<Pattern> {
    Field { any: any.iter().map(|s| Pattern::new(s)).collect(), none: none.iter().map(|s| Pattern::new(s)).collect() }
}

fn lowercase(hosts: &[String]) -> Vec<String> {
    hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
}

fn compile_rule(r: &meshgate_model::security::Rule) -> Rule {
    Rule {
        from: r.from.iter().filter_map(|f| f.source.as_ref()).map(compile_source).collect(),
        to: r.to.iter().filter_map(|t| t.operation.as_ref()).map(compile_operation).collect(),
        when: r.when.iter().map(compile_condition).collect(),
    }
}

fn compile_source(s: &Source) -> SourceMatch {
    let cidrs = |v: &[String]| v.iter().filter_map(|c| parse_cidr(c)).collect::<Vec<_>>();
    let ips = Field { any: cidrs(&s.ip_blocks), none: cidrs(&s.not_ip_blocks) };
    let remote_ips = Field { any: cidrs(&s.remote_ip_blocks), none: cidrs(&s.not_remote_ip_blocks) };
    SourceMatch {
        principals: patterns(&s.principals, &s.not_principals),
        request_principals: patterns(&s.request_principals, &s.not_request_principals),
        namespaces: patterns(&s.namespaces, &s.not_namespaces),
        ips,
        remote_ips,
    }
}

fn compile_operation(o: &Operation) -> OperationMatch {
    OperationMatch {
        hosts: patterns(&lowercase(&o.hosts), &lowercase(&o.not_hosts)),
        methods: patterns(&o.methods, &o.not_methods),
        paths: patterns(&o.paths, &o.not_paths),
        ports: patterns(&o.ports, &o.not_ports),
    }
}

fn compile_condition(c: &Condition) -> ConditionMatch {
    let key = c.key.as_deref().unwrap_or("");
    let key = if let Some(name) = key.strip_prefix("request.headers[").and_then(|k| k.strip_suffix(']')) {
        http::HeaderName::from_bytes(name.as_bytes()).map_or(Key::Unknown, Key::Header)
    } else {
        match key {
            "source.ip" => Key::SourceIp,
            "remote.ip" => Key::RemoteIp,
            "source.namespace" => Key::SourceNamespace,
            "source.principal" => Key::SourcePrincipal,
            "destination.port" => Key::DestinationPort,
            "request.auth.principal" => Key::RequestPrincipal,
            "request.auth.audiences" => Key::Audiences,
            "request.auth.presenter" => Key::Presenter,
            k => match k.strip_prefix("request.auth.claims") {
                // `[a][b]`: nested claims.
                Some(rest) if rest.starts_with('[') && rest.ends_with(']') => {
                    Key::Claim(rest[1..rest.len() - 1].split("][").map(str::to_string).collect())
                }
                _ => Key::Unknown,
            },
        }
    };
    ConditionMatch { key, values: patterns(&c.values, &c.not_values) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> AuthorizationPolicySpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn facts<'a>(principal: Option<&'a str>, method: &'a str, path: &'a str, headers: &'a HeaderMap) -> Facts<'a> {
        Facts {
            principal,
            namespace: principal.and_then(|p| p.split('/').nth(2)),
            ip: "10.0.0.5".parse().unwrap(),
            remote_ip: "10.0.0.5".parse().unwrap(),
            host: "user-service:80",
            method,
            path,
            port: "9001",
            headers,
            request: None,
        }
    }

    const ORDERS: Option<&str> = Some("cluster.local/ns/shop/sa/orders");
    const BILLING: Option<&str> = Some("cluster.local/ns/billing/sa/billing");

    #[test]
    fn allow_deny_matrix() {
        let h = HeaderMap::new();
        let allow = policy(
            "action: ALLOW\nrules:\n- from: [{source: {principals: [cluster.local/ns/shop/sa/orders]}}]\n  to: [{operation: {methods: [GET], paths: [/users/*]}}]\n",
        );
        let deny = policy("action: DENY\nrules:\n- to: [{operation: {paths: [/users/admin*]}}]\n");
        let a = Authz::compile(9001, [("shop/allow".to_string(), &allow), ("shop/deny".to_string(), &deny)]);
        assert!(a.check(&facts(ORDERS, "GET", "/users/7", &h)).is_ok());
        assert!(a.check(&facts(ORDERS, "GET", "/users/7?x=1", &h)).is_ok(), "the query is not part of the path");
        assert!(a.check(&facts(ORDERS, "POST", "/users/7", &h)).is_err(), "method not allowed");
        assert!(a.check(&facts(BILLING, "GET", "/users/7", &h)).is_err(), "principal not allowed");
        assert!(a.check(&facts(None, "GET", "/users/7", &h)).is_err(), "plaintext has no principal");
        assert_eq!(a.check(&facts(ORDERS, "GET", "/users/admin", &h)), Err("denied by shop/deny".to_string()));
        // No policies: everything is allowed.
        assert!(Authz::compile(9001, []).check(&facts(None, "DELETE", "/", &h)).is_ok());
        // An ALLOW policy without rules allows nothing.
        let nothing = policy("action: ALLOW\n");
        assert!(Authz::compile(9001, [("x".to_string(), &nothing)]).check(&facts(ORDERS, "GET", "/", &h)).is_err());
        // A rule with nothing in it matches everything.
        let all = policy("rules: [{}]\n");
        assert!(Authz::compile(9001, [("x".to_string(), &all)]).check(&facts(None, "GET", "/", &h)).is_ok());
    }

    #[test]
    fn negations_namespaces_ips_and_conditions() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "acme".parse().unwrap());
        let p = policy(
            "action: DENY\nrules:\n- from: [{source: {notNamespaces: [shop]}}]\n- from: [{source: {ipBlocks: [192.168.0.0/16]}}]\n- when: [{key: 'request.headers[x-tenant]', values: [evil*]}]\n",
        );
        let a = Authz::compile(9001, [("p".to_string(), &p)]);
        assert!(a.check(&facts(ORDERS, "GET", "/", &h)).is_ok());
        assert!(a.check(&facts(BILLING, "GET", "/", &h)).is_err(), "another namespace");
        let mut f = facts(ORDERS, "GET", "/", &h);
        f.ip = "192.168.3.4".parse().unwrap();
        assert!(a.check(&f).is_err(), "in the blocked range");
        h.insert("x-tenant", "evil-corp".parse().unwrap());
        assert!(a.check(&facts(ORDERS, "GET", "/", &h)).is_err(), "header condition");
        // Conditions on JWT claims match nothing without a checked token.
        let jwt = policy("rules:\n- when: [{key: 'request.auth.claims[group]', values: [admins]}]\n");
        assert!(Authz::compile(9001, [("j".to_string(), &jwt)]).check(&facts(ORDERS, "GET", "/", &h)).is_err());
    }

    #[test]
    fn request_principals_and_claims() {
        let h = HeaderMap::new();
        let claims = serde_json::json!({"iss": "https://auth.example.com", "sub": "alice", "aud": ["api"],
            "groups": ["staff", "admins"], "scope": "read write", "org": {"tier": "gold"}});
        let id = super::super::authn::Identity::for_tests("https://auth.example.com/alice", claims);
        let check = |yaml: &str, jwt: bool| {
            let p = policy(yaml);
            let a = Authz::compile(0, [("p".to_string(), &p)]);
            let mut f = facts(None, "GET", "/", &h);
            if jwt {
                f.request = Some(&id);
            }
            a.check(&f).is_ok()
        };
        let any_jwt = "rules:\n- from: [{source: {requestPrincipals: ['*']}}]\n";
        assert!(check(any_jwt, true));
        assert!(!check(any_jwt, false), "requestPrincipals [*] needs a token");
        assert!(check("rules:\n- from: [{source: {requestPrincipals: [https://auth.example.com/*]}}]\n", true));
        assert!(!check("rules:\n- from: [{source: {requestPrincipals: [https://other/*]}}]\n", true));
        assert!(check("rules:\n- when: [{key: 'request.auth.claims[groups]', values: [admins]}]\n", true));
        assert!(!check("rules:\n- when: [{key: 'request.auth.claims[groups]', notValues: [staff]}]\n", true));
        assert!(
            check("rules:\n- when: [{key: 'request.auth.claims[scope]', values: [write]}]\n", true),
            "space-delimited"
        );
        assert!(check("rules:\n- when: [{key: 'request.auth.claims[org][tier]', values: [gold]}]\n", true), "nested");
        assert!(check("rules:\n- when: [{key: request.auth.audiences, values: [api]}]\n", true));
        assert!(check("rules:\n- when: [{key: request.auth.principal, values: ['*/alice']}]\n", true));
    }
}
