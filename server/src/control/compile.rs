//! Resources → the data plane's [`Snapshot`]. Everything that can be
//! decided at config time is decided here: host tables, regexes, header
//! names, cluster endpoints and policies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderName, HeaderValue, StatusCode};
use meshgate_model::check::parse_duration;
use meshgate_model::hosts::{fqdn, host_matches, namespace_admits, split_server_host};
use meshgate_model::networking::{ClientTlsMode, Destination, HeaderOperations, SimpleLb};
use meshgate_model::networking::{
    DestinationRuleSpec, GatewaySpec, HttpMatchRequest, HttpRoute, ServiceEntrySpec, StringMatch, TrafficPolicy,
    VirtualServiceSpec, WorkloadEntrySpec,
};
use meshgate_model::{Body, Resource};

use crate::proxy::config::{
    Action, Cors, Fault, HeaderOps, L4Route, ListenerKind, PortRoutes, Redirect, RequestMatch, RetryOn, RetryPolicy,
    Rewrite, Route, Snapshot, StrMatch, Target, VirtualHost, WeightedClusters,
};
use crate::proxy::h1::client::PoolSettings;
use crate::proxy::tls::{Certificates, Served, certified_key, mutual_config};
use crate::proxy::transcode::Transcoder;
use crate::proxy::upstream::{Cluster, Endpoint, HashKey, HealthRegistry, Lb, OutlierPolicy, stable_hash};
use crate::telemetry::istio::{Labelled, Service as MetricService, Workload as MetricWorkload};

/// Labels of the built-in edge gateway, which `Gateway.spec.selector` picks.
pub const GATEWAY_LABELS: [(&str, &str); 2] = [("istio", "ingressgateway"), ("app", "istio-ingressgateway")];

pub struct Compiler<'a> {
    pub cluster_domain: &'a str,
    /// This proxy's `region/zone/subzone`; empty turns locality preference off.
    pub locality: &'a str,
    pub health: &'a HealthRegistry,
    /// This proxy's mesh credentials, for ISTIO_MUTUAL destinations.
    pub mesh: Option<&'a crate::ca::MeshIdentity>,
    /// What only the edge gateway compiles; `None` on sidecars.
    pub edge: Option<Edge<'a>>,
    /// The sidecar's workload (namespace, labels), for the Telemetry that
    /// applies to it; `None` is the edge gateway.
    pub workload: Option<(&'a str, &'a BTreeMap<String, String>)>,
}

/// The edge gateway's own: where RateLimitPolicy buckets are kept, and the
/// API keys in force.
pub struct Edge<'a> {
    pub limiters: &'a crate::proxy::ratelimit::LimiterRegistry,
    pub api_keys: Arc<crate::proxy::keyauth::ApiKeys>,
}

struct Index<'r> {
    namespaces: BTreeSet<&'r str>,
    gateways: Vec<(&'r Resource, &'r GatewaySpec)>,
    virtual_services: Vec<(&'r Resource, &'r VirtualServiceSpec)>,
    rules: Vec<(&'r Resource, &'r DestinationRuleSpec)>,
    entries: Vec<(&'r Resource, &'r ServiceEntrySpec)>,
    workloads: Vec<(&'r Resource, &'r WorkloadEntrySpec)>,
    secrets: HashMap<(&'r str, &'r str), &'r meshgate_model::resource::SecretBody>,
    splits: Vec<(&'r Resource, &'r meshgate_model::resource::TrafficSplitSpec)>,
    rate_limits: Vec<(&'r Resource, &'r meshgate_model::policy::RateLimitPolicySpec)>,
    key_auths: Vec<(&'r Resource, &'r meshgate_model::policy::ApiKeyAuthSpec)>,
    size_limits: Vec<(&'r Resource, &'r meshgate_model::policy::RequestSizeLimitSpec)>,
    transcoders: Vec<(&'r Resource, &'r meshgate_model::transcode::GrpcTranscoderSpec)>,
    telemetries: Vec<(&'r Resource, &'r meshgate_model::telemetry::TelemetrySpec)>,
}

impl Compiler<'_> {
    pub fn compile(&self, revision: i64, resources: &[Resource]) -> Snapshot {
        let mut ix = Index {
            namespaces: resources.iter().map(|r| r.namespace()).collect(),
            gateways: Vec::new(),
            virtual_services: Vec::new(),
            rules: Vec::new(),
            entries: Vec::new(),
            workloads: Vec::new(),
            secrets: HashMap::new(),
            splits: Vec::new(),
            rate_limits: Vec::new(),
            key_auths: Vec::new(),
            size_limits: Vec::new(),
            transcoders: Vec::new(),
            telemetries: Vec::new(),
        };
        for r in resources {
            match &r.body {
                Body::Gateway(s) => ix.gateways.push((r, s)),
                Body::VirtualService(s) => ix.virtual_services.push((r, s)),
                Body::DestinationRule(s) => ix.rules.push((r, s)),
                Body::ServiceEntry(s) => ix.entries.push((r, s)),
                Body::WorkloadEntry(s) => ix.workloads.push((r, s)),
                Body::TrafficSplit(s) => ix.splits.push((r, s)),
                Body::RateLimitPolicy(s) => ix.rate_limits.push((r, s)),
                Body::ApiKeyAuth(s) => ix.key_auths.push((r, s)),
                Body::RequestSizeLimit(s) => ix.size_limits.push((r, s)),
                Body::GrpcTranscoder(s) => ix.transcoders.push((r, s)),
                Body::Telemetry(s) => ix.telemetries.push((r, s)),
                Body::Secret(s) => {
                    ix.secrets.insert((r.namespace(), r.name()), s);
                }
                _ => {}
            }
        }
        // Istio merges VirtualServices for one host oldest first.
        ix.virtual_services.sort_by(|a, b| {
            (a.0.metadata.creation_timestamp.as_deref(), a.0.namespace(), a.0.name()).cmp(&(
                b.0.metadata.creation_timestamp.as_deref(),
                b.0.namespace(),
                b.0.name(),
            ))
        });

        // Each GrpcTranscoder's descriptors are read once per snapshot, then shared by its routes.
        ix.transcoders.sort_by_key(|(r, _)| (r.namespace(), r.name()));
        ix.telemetries.sort_by_key(|(r, _)| (r.namespace(), r.name()));
        let base_telemetry = proxy_telemetry(resources, self.workload);
        let transcoders: Vec<Option<Arc<Transcoder>>> = ix
            .transcoders
            .iter()
            .map(|(r, spec)| {
                self.edge.as_ref()?;
                Transcoder::new(format!("{}/{}", r.namespace(), r.name()), spec).map(Arc::new)
            })
            .collect();
        let mut clusters: HashMap<(String, String, u32), Arc<Cluster>> = HashMap::new();
        let mut hosts_by_port: BTreeMap<u32, BTreeMap<String, VirtualHost>> = BTreeMap::new();
        for (gw, spec) in &ix.gateways {
            if !selects_builtin_gateway(&spec.selector) {
                continue;
            }
            let gw_ref = format!("{}/{}", gw.namespace(), gw.name());
            for server in &spec.servers {
                let Some(port) = server.port.as_ref().and_then(|p| p.number) else { continue };
                for (vs, vs_spec) in &ix.virtual_services {
                    if !binds(vs_spec, vs.namespace(), &gw_ref) {
                        continue;
                    }
                    let domains: BTreeSet<String> = vs_spec
                        .hosts
                        .iter()
                        .flat_map(|h| effective_hosts(&server.hosts, gw.namespace(), vs.namespace(), h))
                        .collect();
                    for domain in domains {
                        let vhost = hosts_by_port
                            .entry(port)
                            .or_default()
                            .entry(domain.clone())
                            .or_insert_with(|| VirtualHost { name: domain.clone(), ..Default::default() });
                        for (i, route) in vs_spec.http.iter().enumerate() {
                            let name = format!(
                                "{}/{}/{}",
                                vs.namespace(),
                                vs.name(),
                                route.name.clone().unwrap_or_else(|| i.to_string())
                            );
                            let limits = self
                                .edge
                                .as_ref()
                                .and_then(|e| route_limits(&ix, e.limiters, vs, route, &name, &gw_ref));
                            let key_auth = self.edge.as_ref().and_then(|e| route_key_auth(&ix, e, vs, route, &gw_ref));
                            // The smallest limit of those that target the route.
                            let max_body = ix
                                .size_limits
                                .iter()
                                .filter(|(r, spec)| targets(r, &spec.target_refs, vs, route, &gw_ref))
                                .map(|(_, spec)| spec.max_bytes)
                                .min();
                            // The first GrpcTranscoder (by namespace and name) that targets the route.
                            let transcoder = ix
                                .transcoders
                                .iter()
                                .zip(&transcoders)
                                .find(|((r, spec), t)| t.is_some() && targets(r, &spec.target_refs, vs, route, &gw_ref))
                                .and_then(|(_, t)| t.clone());
                            // Telemetries that target the route, over the proxy's own.
                            let mut route_telemetry = None;
                            for (_, spec) in
                                ix.telemetries.iter().filter(|(r, spec)| telemetry_targets(r, spec, vs, route))
                            {
                                let p = route_telemetry
                                    .get_or_insert_with(|| base_telemetry.as_deref().cloned().unwrap_or_default());
                                apply_telemetry(p, spec);
                            }
                            let route_telemetry = route_telemetry.map(Arc::new);
                            let routes = self.routes(&ix, &mut clusters, vs.namespace(), &gw_ref, port, &name, route);
                            vhost.routes.extend(routes.into_iter().map(|r| Route {
                                limits: limits.clone(),
                                key_auth: key_auth.clone(),
                                max_body,
                                transcoder: transcoder.clone(),
                                telemetry: route_telemetry.clone(),
                                ..r
                            }));
                        }
                    }
                }
            }
        }
        let mut certificates: BTreeMap<u32, Certificates> = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        let mut bind_ips = BTreeMap::new();
        let mut l4: HashMap<u32, Vec<L4Route>> = HashMap::new();
        for (gw, spec) in &ix.gateways {
            if !selects_builtin_gateway(&spec.selector) {
                continue;
            }
            for server in &spec.servers {
                let Some(port) = server.port.as_ref().and_then(|p| p.number) else { continue };
                let protocol =
                    server.port.as_ref().and_then(|p| p.protocol.as_deref()).unwrap_or("HTTP").to_ascii_uppercase();
                let terminates = protocol == "HTTPS"
                    && server
                        .tls
                        .as_ref()
                        .is_some_and(|t| t.https_redirect != Some(true) || t.credential_name.is_some());
                let passthrough = server.tls.as_ref().and_then(|t| t.mode)
                    == Some(meshgate_model::networking::ServerTlsMode::Passthrough);
                let kind = match protocol.as_str() {
                    "TLS" if passthrough => ListenerKind::TlsPassthrough,
                    "TLS" => ListenerKind::TlsTerminated,
                    "TCP" | "MONGO" => ListenerKind::Tcp,
                    _ if terminates => ListenerKind::Https,
                    _ => ListenerKind::Http,
                };
                listeners.entry(port).or_insert(kind);
                // `bind`: an IP of this host (unix sockets are refused by validation).
                if let Some(bind) = server.bind.as_deref() {
                    match bind.parse::<std::net::IpAddr>() {
                        Ok(_) if port == 80 || port == 443 => tracing::warn!(
                            gateway = %format!("{}/{}", gw.namespace(), gw.name()),
                            port,
                            "bind is not applied to ports 80 and 443: they listen on --http and --https"
                        ),
                        Ok(ip) => {
                            bind_ips.entry(port).or_insert(ip);
                        }
                        Err(_) => {}
                    }
                }
                if matches!(kind, ListenerKind::Tcp | ListenerKind::TlsPassthrough | ListenerKind::TlsTerminated) {
                    let gw_ref = format!("{}/{}", gw.namespace(), gw.name());
                    let routes = l4.entry(port).or_default();
                    for (vs, vs_spec) in &ix.virtual_services {
                        if !binds(vs_spec, vs.namespace(), &gw_ref) {
                            continue;
                        }
                        let applies = |gateways: &[String], p: Option<u32>| {
                            (gateways.is_empty() || gateways.iter().any(|g| qualify(g, vs.namespace()) == gw_ref))
                                && p.is_none_or(|p| p == port)
                        };
                        if kind != ListenerKind::TlsPassthrough {
                            for r in &vs_spec.tcp {
                                let here =
                                    r.matches.is_empty() || r.matches.iter().any(|m| applies(&m.gateways, m.port));
                                if here
                                    && let Some(targets) = self.l4_targets(&ix, &mut clusters, vs.namespace(), &r.route)
                                {
                                    routes.push(L4Route { sni: Vec::new(), targets });
                                }
                            }
                        } else {
                            for r in &vs_spec.tls {
                                let sni: Vec<String> = r
                                    .matches
                                    .iter()
                                    .filter(|m| applies(&m.gateways, m.port))
                                    .flat_map(|m| m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()))
                                    .collect();
                                if sni.is_empty() {
                                    continue;
                                }
                                if let Some(targets) = self.l4_targets(&ix, &mut clusters, vs.namespace(), &r.route) {
                                    routes.push(L4Route { sni, targets });
                                }
                            }
                        }
                    }
                }
                let Some(tls) = &server.tls else { continue };
                if tls.https_redirect == Some(true) {
                    // Istio answers every request on such a server with a redirect to https.
                    for host in &server.hosts {
                        let domain = split_server_host(host).1.to_ascii_lowercase();
                        let redirect =
                            Route::https_redirect(format!("{}/{}/https-redirect", gw.namespace(), gw.name()));
                        let vhost = VirtualHost { name: domain.clone(), routes: vec![redirect], ..Default::default() };
                        hosts_by_port.entry(port).or_default().insert(domain, vhost);
                    }
                }
                use meshgate_model::networking::ServerTlsMode;
                let terminates = matches!(
                    tls.mode,
                    None | Some(ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
                );
                let names = tls.credential_name.iter().chain(tls.credential_names.iter());
                for credential in names.filter(|_| terminates) {
                    let Some(secret) = ix.secrets.get(&(gw.namespace(), credential.as_str())) else {
                        tracing::warn!(gateway = %gw.name(), %credential, "credentialName names no Secret; the server gets no certificate");
                        continue;
                    };
                    let cert = match (secret.bytes("tls.crt"), secret.bytes("tls.key")) {
                        (Some(crt), Some(key)) => certified_key(&crt, &key),
                        _ => Err("tls.crt or tls.key is missing".to_string()),
                    };
                    // MUTUAL and OPTIONAL_MUTUAL verify clients against the Secret's ca.crt.
                    let cert = cert.and_then(|key| {
                        let mutual = match tls.mode {
                            Some(mode @ (ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)) => {
                                let ca = secret
                                    .bytes("ca.crt")
                                    .ok_or("ca.crt is missing (MUTUAL verifies clients with it)")?;
                                // Revoked client certificates: the Secret's ca.crl, else the caCrl file.
                                let crl = match (secret.bytes("ca.crl"), &tls.ca_crl) {
                                    (Some(crl), _) => Some(crl),
                                    (None, Some(path)) => Some(
                                        std::fs::read(path).map_err(|e| format!("caCrl: cannot read {path}: {e}"))?,
                                    ),
                                    (None, None) => None,
                                };
                                let optional = mode == ServerTlsMode::OptionalMutual;
                                Some(mutual_config(key.clone(), &ca, crl.as_deref(), optional)?)
                            }
                            _ => None,
                        };
                        Ok(Arc::new(Served { key, mutual }))
                    });
                    let cert = match cert {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(secret = %credential, error = %e, "unusable TLS secret");
                            continue;
                        }
                    };
                    let table = certificates.entry(port).or_default();
                    for host in &server.hosts {
                        let domain = split_server_host(host).1.to_ascii_lowercase();
                        if domain == "*" {
                            table.star.get_or_insert_with(|| cert.clone());
                        } else if let Some(suffix) = domain.strip_prefix('*') {
                            table.wildcards.push((suffix.to_string(), cert.clone()));
                        } else {
                            table.exact.entry(domain).or_insert_with(|| cert.clone());
                        }
                        table.first.get_or_insert_with(|| cert.clone());
                    }
                }
            }
        }
        let mut snapshot = Snapshot {
            revision,
            listeners,
            binds: bind_ips,
            l4: l4.into_iter().map(|(p, r)| (p, Arc::new(r))).collect(),
            ports: Default::default(),
            certificates: certificates
                .into_iter()
                .map(|(port, mut c)| {
                    c.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
                    (port, Arc::new(c))
                })
                .collect(),
            authz: None,
            telemetry: base_telemetry,
            authn: None,
        };
        for (port, hosts) in hosts_by_port {
            let mut table = PortRoutes::default();
            for (domain, mut vhost) in hosts {
                vhost.index = crate::proxy::route_index::RouteIndex::build(&vhost.routes);
                let vhost = Arc::new(vhost);
                if domain == "*" {
                    table.catch_all = Some(vhost);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    table.wildcards.push((suffix.to_string(), vhost));
                } else {
                    table.exact.insert(domain, vhost);
                }
            }
            table.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
            snapshot.ports.insert(port, Arc::new(table));
        }
        self.health.prune();
        snapshot
    }

    #[allow(clippy::too_many_arguments)]
    fn routes(
        &self,
        ix: &Index<'_>,
        clusters: &mut HashMap<(String, String, u32), Arc<Cluster>>,
        ns: &str,
        gateway: &str,
        port: u32,
        name: &str,
        route: &HttpRoute,
    ) -> Vec<Route> {
        // One compiled route per `match` entry that applies to this gateway and port.
        let matchers: Vec<Option<RequestMatch>> = if route.matches.is_empty() {
            vec![None]
        } else {
            route
                .matches
                .iter()
                .filter(|m| m.gateways.is_empty() || m.gateways.iter().any(|g| qualify(g, ns) == gateway))
                .filter(|m| m.port.is_none_or(|p| p == port))
                .map(|m| Some(request_match(m)))
                .collect()
        };
        let action = if let Some(redirect) = &route.redirect {
            Action::Redirect(Redirect {
                status: redirect
                    .redirect_code
                    .and_then(|c| StatusCode::from_u16(c as u16).ok())
                    .unwrap_or(StatusCode::MOVED_PERMANENTLY),
                scheme: redirect.scheme.clone(),
                authority: redirect.authority.clone(),
                port: redirect.port,
                keep_request_port: redirect
                    .derive_port
                    .map(|d| matches!(d, meshgate_model::networking::RedirectPortSelection::FromRequestPort)),
                path: redirect.uri.clone(),
            })
        } else if let Some(direct) = &route.direct_response {
            let body = direct.body.as_ref().map_or_else(bytes::Bytes::new, |b| match (&b.string, &b.bytes) {
                (Some(s), _) => bytes::Bytes::from(s.clone()),
                (None, Some(b64)) => {
                    bytes::Bytes::from(base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default())
                }
                (None, None) => bytes::Bytes::new(),
            });
            let status = direct.status.and_then(|s| StatusCode::from_u16(s as u16).ok()).unwrap_or(StatusCode::OK);
            Action::Direct { status, body }
        } else {
            let mut upper = 0u32;
            let single = route.route.len() == 1;
            let mut targets = Vec::new();
            for d in &route.route {
                let Some(dest) = d.destination.as_ref() else { continue };
                let weight = route_weight(d.weight, single);
                let (request_headers, response_headers) = header_ops(d.headers.as_ref());
                // A destination without a subset is split by the service's TrafficSplit, if any:
                // weights multiply, in hundredths so that 20% of 50% stays exact.
                let split = if dest.subset.is_none() { self.split_for(ix, ns, dest) } else { None };
                let parts: Vec<(u32, Destination)> = match split {
                    Some(subsets) => subsets
                        .iter()
                        .map(|(subset, w)| (weight * w, Destination { subset: Some(subset.clone()), ..dest.clone() }))
                        .collect(),
                    None => vec![(weight * 100, dest.clone())],
                };
                for (w, dest) in parts {
                    upper += w;
                    targets.push(Target {
                        upper,
                        cluster: self.cluster(ix, clusters, ns, &dest),
                        request_headers: request_headers.clone(),
                        response_headers: response_headers.clone(),
                    });
                }
            }
            if targets.is_empty() {
                return Vec::new();
            }
            Action::Forward(WeightedClusters { total: upper, targets })
        };
        let action = Arc::new(action);
        let (request_headers, response_headers) = header_ops(route.headers.as_ref());
        let timeout = route.timeout.as_deref().and_then(|t| parse_duration(t).ok()).filter(|d| !d.is_zero());
        let retry = match &route.retries {
            None => RetryPolicy::default(),
            Some(r) => RetryPolicy {
                attempts: r.attempts.unwrap_or(2).max(0) as u32,
                per_try_timeout: r.per_try_timeout.as_deref().and_then(|t| parse_duration(t).ok()),
                on: r.retry_on.as_deref().map(RetryOn::parse).unwrap_or_else(|| RetryPolicy::default().on),
                remote_localities: r.retry_remote_localities == Some(true),
            },
        };
        let fault = route.fault.as_ref().map(|f| Fault {
            delay: f.delay.as_ref().and_then(|d| {
                let pct = d.percentage.as_ref().map(|p| p.value).or(d.percent.map(f64::from)).unwrap_or(100.0);
                Some((pct, parse_duration(d.fixed_delay.as_deref()?).ok()?))
            }),
            abort: f.abort.as_ref().and_then(|a| {
                let pct = a.percentage.as_ref().map(|p| p.value).unwrap_or(100.0);
                Some((pct, StatusCode::from_u16(a.http_status? as u16).ok()?))
            }),
        });
        let cors = route.cors_policy.as_ref().map(|c| Arc::new(cors(c)));
        let mut mirrors = Vec::new();
        if let Some(m) = &route.mirror {
            let pct = route.mirror_percentage.as_ref().map(|p| p.value).or(route.mirror_percent.map(f64::from));
            mirrors.push((self.cluster(ix, clusters, ns, m), pct.unwrap_or(100.0)));
        }
        for m in &route.mirrors {
            if let Some(dest) = &m.destination {
                let pct = m.percentage.as_ref().map(|p| p.value).unwrap_or(100.0);
                mirrors.push((self.cluster(ix, clusters, ns, dest), pct));
            }
        }
        matchers
            .into_iter()
            .map(|matcher| {
                let rewrite = route.rewrite.as_ref().map(|rw| Rewrite {
                    prefix_match: match matcher.as_ref().and_then(|m| m.uri.as_ref()) {
                        Some(StrMatch::Prefix(p)) => Some(p.clone()),
                        _ => None,
                    },
                    uri: rw.uri.clone(),
                    regex: rw.uri_regex_rewrite.as_ref().and_then(|r| {
                        let with = r.rewrite.clone().unwrap_or_default();
                        // Istio (RE2) writes groups as \1; the regex crate as ${1}.
                        let with = regex::Regex::new(r"\\(\d)").ok()?.replace_all(&with, "$${$1}").into_owned();
                        Some((regex::Regex::new(r.pattern.as_deref()?).ok()?, with))
                    }),
                    authority: rw.authority.as_deref().and_then(|a| HeaderValue::from_str(a).ok()),
                });
                Route {
                    name: Arc::from(name),
                    matcher,
                    action: Arc::clone(&action),
                    timeout,
                    retry: retry.clone(),
                    fault: fault.clone(),
                    request_headers: request_headers.clone(),
                    response_headers: response_headers.clone(),
                    rewrite,
                    cors: cors.clone(),
                    mirrors: mirrors.clone(),
                    limits: None,
                    key_auth: None,
                    max_body: None,
                    transcoder: None,
                    telemetry: None,
                }
            })
            .collect()
    }

    /// Weighted clusters of a `tcp`/`tls` route.
    fn l4_targets(
        &self,
        ix: &Index<'_>,
        clusters: &mut HashMap<(String, String, u32), Arc<Cluster>>,
        ns: &str,
        route: &[meshgate_model::networking::RouteDestination],
    ) -> Option<WeightedClusters> {
        let single = route.len() == 1;
        let mut upper = 0;
        let mut targets = Vec::new();
        for d in route {
            let Some(dest) = &d.destination else { continue };
            upper += route_weight(d.weight, single);
            targets.push(Target {
                upper,
                cluster: self.cluster(ix, clusters, ns, dest),
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            });
        }
        (!targets.is_empty()).then_some(WeightedClusters { total: upper, targets })
    }

    /// The `(subset, weight)` list of the TrafficSplit for `dest`'s service.
    fn split_for(&self, ix: &Index<'_>, ns: &str, dest: &Destination) -> Option<Vec<(String, u32)>> {
        let fq = |h: &str, ns: &str| fqdn(h, ns, self.cluster_domain, |n| ix.namespaces.contains(n));
        let host = fq(dest.host.as_deref()?, ns);
        let (_, split) = ix.splits.iter().find(|(r, ts)| fq(&ts.service, r.namespace()) == host)?;
        Some(split.subsets.iter().map(|s| (s.name.clone(), s.weight.max(0) as u32)).collect())
    }

    fn cluster(
        &self,
        ix: &Index<'_>,
        clusters: &mut HashMap<(String, String, u32), Arc<Cluster>>,
        ns: &str,
        dest: &Destination,
    ) -> Arc<Cluster> {
        let host = fqdn(dest.host.as_deref().unwrap_or(""), ns, self.cluster_domain, |n| ix.namespaces.contains(n));
        let subset = dest.subset.clone().unwrap_or_default();
        let wanted_port = dest.port.as_ref().and_then(|p| p.number).unwrap_or(0);
        let key = (host.clone(), subset.clone(), wanted_port);
        if let Some(c) = clusters.get(&key) {
            return Arc::clone(c);
        }
        let fq = |h: &str, ns: &str| fqdn(h, ns, self.cluster_domain, |n| ix.namespaces.contains(n));
        let entry =
            ix.entries.iter().find(|(r, se)| se.hosts.iter().any(|h| host_matches(&fq(h, r.namespace()), &host)));
        // Where the service is declared, for the metrics' namespace labels.
        let service_ns = entry.map_or(ns, |(r, _)| r.namespace()).to_string();
        let mut endpoints: Vec<(String, BTreeMap<String, String>, String)> = Vec::new();
        let mut port_number = wanted_port;
        let mut port_http2 = false;
        if let Some((se_res, se)) = entry {
            let port = se.ports.iter().find(|p| wanted_port == 0 || p.number == Some(wanted_port)).or(se.ports.first());
            let port_name = port.and_then(|p| p.name.clone()).unwrap_or_default();
            let protocol = port.and_then(|p| p.protocol.clone()).unwrap_or_default().to_ascii_uppercase();
            port_http2 = matches!(protocol.as_str(), "GRPC" | "GRPC-WEB" | "HTTP2");
            let default_port = port.and_then(|p| p.target_port.or(p.number)).unwrap_or(80);
            if port_number == 0 {
                port_number = port.and_then(|p| p.number).unwrap_or(80);
            }
            let mut add = |we: &WorkloadEntrySpec, every_port: Option<u32>| {
                let Some(addr) = we.address.as_deref() else { return };
                let p = every_port.or_else(|| we.ports.get(&port_name).copied()).unwrap_or(default_port);
                let addr =
                    if addr.contains(':') && !addr.starts_with('[') { format!("[{addr}]") } else { addr.to_string() };
                endpoints.push((format!("{addr}:{p}"), we.labels.clone(), endpoint_locality(we)));
            };
            se.endpoints.iter().for_each(|we| add(we, None));
            if let Some(sel) = &se.workload_selector {
                for (we_res, we) in &ix.workloads {
                    if we_res.namespace() == se_res.namespace()
                        && sel.labels.iter().all(|(k, v)| we.labels.get(k) == Some(v))
                        && !is_unhealthy(we_res)
                    {
                        add(we, inbound_port(we_res));
                    }
                }
            }
            let dns = matches!(
                se.resolution,
                Some(
                    meshgate_model::networking::Resolution::Dns | meshgate_model::networking::Resolution::DnsRoundRobin
                )
            );
            if endpoints.is_empty() && dns && !host.starts_with('*') {
                endpoints.push((format!("{host}:{default_port}"), BTreeMap::new(), String::new()));
            }
        }
        // The DestinationRule for this host: subset filter and traffic policy.
        let rule = ix
            .rules
            .iter()
            .find(|(r, dr)| dr.host.as_deref().is_some_and(|h| host_matches(&fq(h, r.namespace()), &host)));
        let mut policy: TrafficPolicy = rule.and_then(|(_, dr)| dr.traffic_policy.clone()).unwrap_or_default();
        if !subset.is_empty() {
            let found = rule.and_then(|(_, dr)| dr.subsets.iter().find(|s| s.name.as_deref() == Some(subset.as_str())));
            match found {
                Some(s) => {
                    endpoints.retain(|(_, labels, _)| s.labels.iter().all(|(k, v)| labels.get(k) == Some(v)));
                    if let Some(sp) = &s.traffic_policy {
                        overlay(&mut policy, sp);
                    }
                }
                None => endpoints.clear(),
            }
        }
        if let Some(pl) = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().and_then(|x| x.number) == Some(port_number))
            .cloned()
        {
            policy.load_balancer = pl.load_balancer.or(policy.load_balancer.take());
            policy.connection_pool = pl.connection_pool.or(policy.connection_pool.take());
            policy.outlier_detection = pl.outlier_detection.or(policy.outlier_detection.take());
            policy.tls = pl.tls.or(policy.tls.take());
        }
        let hash_key = policy.load_balancer.as_ref().and_then(|l| l.consistent_hash.as_ref()).and_then(|h| {
            if let Some(name) = &h.http_header_name {
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok().map(HashKey::Header)
            } else if let Some(c) = &h.http_cookie {
                // With a ttl, Envoy makes the cookie when a request has none; the
                // attributes it sets: Path, Max-Age, HttpOnly and the DR's own.
                let generate = c.ttl.as_deref().and_then(|t| parse_duration(t).ok()).and_then(|ttl| {
                    let mut attrs = format!("Path={}", c.path.as_deref().unwrap_or("/"));
                    if !ttl.is_zero() {
                        attrs.push_str(&format!("; Max-Age={}", ttl.as_secs()));
                    }
                    attrs.push_str("; HttpOnly");
                    for a in &c.attributes {
                        match (&a.name, &a.value) {
                            (Some(n), Some(v)) => attrs.push_str(&format!("; {n}={v}")),
                            (Some(n), None) => attrs.push_str(&format!("; {n}")),
                            _ => {}
                        }
                    }
                    HeaderValue::from_str(&attrs).ok()
                });
                c.name.clone().map(|name| HashKey::Cookie { name, generate })
            } else if h.use_source_ip == Some(true) {
                Some(HashKey::SourceIp)
            } else {
                h.http_query_parameter_name.clone().map(HashKey::Query)
            }
        });
        let lb = match (hash_key, policy.load_balancer.as_ref().and_then(|l| l.simple)) {
            (Some(key), _) => Lb::Hash(key),
            (None, Some(SimpleLb::RoundRobin)) => Lb::RoundRobin,
            (None, Some(SimpleLb::Random)) => Lb::Random,
            _ => Lb::LeastRequest,
        };
        let outlier = policy.outlier_detection.as_ref().map(|o| OutlierPolicy {
            consecutive_5xx: o.consecutive_5xx_errors.or(o.consecutive_errors.map(|e| e.max(0) as u32)).unwrap_or(5),
            consecutive_gateway: o.consecutive_gateway_errors.unwrap_or(0),
            base_ejection: o
                .base_ejection_time
                .as_deref()
                .and_then(|t| parse_duration(t).ok())
                .unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10).clamp(0, 100) as u32,
            min_health_percent: o.min_health_percent.unwrap_or(0).clamp(0, 100) as u32,
            interval: o
                .interval
                .as_deref()
                .and_then(|t| parse_duration(t).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(10)),
            split_local_origin: o.split_external_local_origin_errors == Some(true),
            consecutive_local_origin: o.consecutive_local_origin_failures.unwrap_or(5),
        });
        // Slow start: `warmup` (Istio 1.24+), else the older `warmupDurationSecs`.
        let lb_settings = policy.load_balancer.as_ref();
        let warmup = lb_settings.and_then(|l| match (&l.warmup, &l.warmup_duration_secs) {
            (Some(w), _) => Some(crate::proxy::upstream::Warmup {
                window: w.duration.as_deref().and_then(|d| parse_duration(d).ok())?,
                minimum: w.minimum_percent.unwrap_or(10.0).clamp(0.0, 100.0) / 100.0,
                aggression: w.aggression.unwrap_or(1.0).max(0.0),
            }),
            (None, Some(d)) => {
                Some(crate::proxy::upstream::Warmup { window: parse_duration(d).ok()?, minimum: 0.1, aggression: 1.0 })
            }
            (None, None) => None,
        });
        // HTTP/1.1 upstream connections carry one request at a time, so the
        // requests in flight are the busy connections plus those waiting for
        // one; HTTP/2 caps requests directly. Unset means unlimited, as in Istio.
        let pool = policy.connection_pool.as_ref();
        let conns = pool.and_then(|p| p.tcp.as_ref()).and_then(|t| t.max_connections).map(|n| n.max(0) as u64);
        let http = pool.and_then(|p| p.http.as_ref());
        let pending = http.and_then(|h| h.http1_max_pending_requests).map(|n| n.max(0) as u64);
        let h2 = http.and_then(|h| h.http2_max_requests).map(|n| n.max(0) as u64);
        let h1 = match (conns, pending) {
            (Some(c), Some(p)) => Some(c + p),
            (Some(c), None) => Some(c + u32::MAX as u64),
            (None, _) => None,
        };
        let max_in_flight = [h1, h2].into_iter().flatten().min().map(|n| n.min(u32::MAX as u64) as u32);
        // Istio applies locality preference when outlier detection can notice a
        // failing locality (or when localityLbSetting asks for it explicitly).
        let explicit = policy.load_balancer.as_ref().and_then(|l| l.locality_lb_setting.clone());
        let locality_setting = match explicit {
            Some(l) if l.enabled == Some(false) => None,
            Some(l) => Some(l),
            None if policy.outlier_detection.is_some() => Some(Default::default()),
            None => None,
        };
        let name = format!("outbound|{port_number}|{subset}|{host}");
        // TLS to the endpoints. Settings that cannot be honoured leave the
        // cluster without endpoints (503) rather than falling back to plaintext.
        let rule_namespace = rule.map_or("default", |(r, _)| r.namespace());
        let tls = match policy.tls.as_ref().map(|t| (t, t.mode)) {
            Some((t, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual))) => {
                upstream_tls(t, rule_namespace, &host, &ix.secrets).map(|t| Some(Arc::new(t)))
            }
            Some((t, Some(ClientTlsMode::IstioMutual))) => match self.mesh {
                Some(identity) => {
                    crate::proxy::tls::UpstreamTls::mesh(identity, &t.subject_alt_names).map(|t| Some(Arc::new(t)))
                }
                None => Err("ISTIO_MUTUAL: this proxy has no mesh certificate".to_string()),
            },
            // Istio's auto mTLS: workloads with a sidecar (`security.istio.io/tlsMode: istio`,
            // which agents register with) are reached over mTLS unless the rule says otherwise.
            None if !endpoints.is_empty()
                && endpoints
                    .iter()
                    .all(|(_, labels, _)| labels.get("security.istio.io/tlsMode").is_some_and(|m| m == "istio")) =>
            {
                match self.mesh {
                    Some(identity) => crate::proxy::tls::UpstreamTls::mesh(identity, &[]).map(|t| Some(Arc::new(t))),
                    None => Ok(None),
                }
            }
            _ => Ok(None),
        };
        // `distribute`: the first rule whose `from` covers this proxy's locality.
        let distribution: Option<Vec<(String, u32)>> = locality_setting.as_ref().and_then(|l| {
            l.distribute
                .iter()
                .find(|d| d.from.as_deref().is_some_and(|f| locality_matches(f, self.locality)))
                .map(|d| d.to.iter().map(|(k, w)| (k.clone(), *w)).collect())
        });
        let (tls, endpoints) = match tls {
            Ok(tls) => (tls, endpoints),
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "DestinationRule tls cannot be applied; the cluster gets no endpoints");
                (None, Vec::new())
            }
        };
        let endpoints = endpoints
            .into_iter()
            .filter_map(|(address, labels, locality)| {
                let authority = address.parse().ok()?;
                let workload = Labelled::new(MetricWorkload::from_labels(&labels, &service_ns));
                let seed = stable_hash(address.as_bytes());
                let (priority, group) = match &distribution {
                    Some(to) => (0, locality_group(to, &locality)),
                    None => match locality_setting.as_ref().filter(|l| !l.failover_priority.is_empty()) {
                        Some(l) => (failover_priority(&l.failover_priority, self.locality, &labels, &locality), 0),
                        None => (locality_priority(self.locality, &locality, locality_setting.as_ref()), 0),
                    },
                };
                let health = self.health.get(&name, &address);
                Some(Endpoint { health, address, workload, authority, labels, seed, priority, group })
            })
            .collect();
        let upgrade =
            http.and_then(|h| h.h2_upgrade_policy) == Some(meshgate_model::networking::H2UpgradePolicy::Upgrade);
        let counters = self.health.counters(&name);
        let mut cluster = Cluster::new(name, endpoints, lb, outlier, max_in_flight, counters);
        cluster.http2 = port_http2 || upgrade;
        cluster.use_client_protocol = http.and_then(|h| h.use_client_protocol) == Some(true);
        // Slow start applies to round robin and least request, as in Envoy.
        cluster.warmup = warmup.filter(|_| matches!(cluster.lb, Lb::RoundRobin | Lb::LeastRequest));
        cluster.max_retries = http.and_then(|h| h.max_retries).map(|n| n.max(0) as u32);
        cluster.tls = tls;
        cluster.service = Labelled::new(MetricService::new(&host, &service_ns));
        cluster.locality_weights = distribution.map(|to| to.iter().map(|(_, w)| *w).collect()).unwrap_or_default();
        cluster.connections = pool_settings(pool);
        let cluster = Arc::new(cluster);
        clusters.insert(key, Arc::clone(&cluster));
        cluster
    }
}

/// A DestinationRule's `connectionPool` as the HTTP/1 client applies it;
/// unset fields keep the defaults (connect 10 s, idle 60 s, keepalive after 60 s).
fn pool_settings(pool: Option<&meshgate_model::networking::ConnectionPoolSettings>) -> PoolSettings {
    let mut s = PoolSettings::default();
    let duration = |d: &Option<String>| d.as_deref().and_then(|t| parse_duration(t).ok()).filter(|d| !d.is_zero());
    if let Some(tcp) = pool.and_then(|p| p.tcp.as_ref()) {
        s.connect_timeout = duration(&tcp.connect_timeout).unwrap_or(s.connect_timeout);
        s.max_connection_duration = duration(&tcp.max_connection_duration);
        s.tcp_idle_timeout = duration(&tcp.idle_timeout).unwrap_or(s.tcp_idle_timeout);
        if let Some(k) = &tcp.tcp_keepalive {
            s.keepalive = (duration(&k.time).unwrap_or(s.keepalive.0), duration(&k.interval), k.probes);
        }
    }
    if let Some(http) = pool.and_then(|p| p.http.as_ref()) {
        s.idle_timeout = duration(&http.idle_timeout).unwrap_or(s.idle_timeout);
        s.max_requests_per_connection = http.max_requests_per_connection.filter(|n| *n > 0).map(|n| n as u32);
    }
    s
}

/// A DestinationRule's SIMPLE or MUTUAL `tls` as a client configuration:
/// certificates from the Secret named by `credentialName` (`ca.crt`,
/// `tls.crt`, `tls.key`, as Istio reads it) or from the files named by
/// `caCertificates`, `clientCertificate` and `privateKey`; SNI from `sni`,
/// else the destination host.
fn upstream_tls(
    t: &meshgate_model::networking::ClientTlsSettings,
    namespace: &str,
    host: &str,
    secrets: &HashMap<(&str, &str), &meshgate_model::resource::SecretBody>,
) -> Result<crate::proxy::tls::UpstreamTls, String> {
    let (mut ca, mut crt, mut key, mut crl) = (None, None, None, None);
    if let Some(name) = &t.credential_name {
        let secret = secrets
            .get(&(namespace, name.as_str()))
            .ok_or_else(|| format!("credentialName: no Secret {namespace}/{name}"))?;
        (ca, crt, key) = (secret.bytes("ca.crt"), secret.bytes("tls.crt"), secret.bytes("tls.key"));
        crl = secret.bytes("ca.crl");
    }
    let read = |field: &str, path: &Option<String>| -> Result<Option<Vec<u8>>, String> {
        path.as_deref().map(|p| std::fs::read(p).map_err(|e| format!("{field}: cannot read {p}: {e}"))).transpose()
    };
    ca = ca.or(read("caCertificates", &t.ca_certificates)?);
    crt = crt.or(read("clientCertificate", &t.client_certificate)?);
    key = key.or(read("privateKey", &t.private_key)?);
    crl = crl.or(read("caCrl", &t.ca_crl)?);
    let identity = match (t.mode, &crt, &key) {
        (Some(ClientTlsMode::Mutual), Some(c), Some(k)) => Some((c.as_slice(), k.as_slice())),
        (Some(ClientTlsMode::Mutual), _, _) => {
            return Err(
                "MUTUAL needs a client certificate and key (credentialName or clientCertificate/privateKey)".into()
            );
        }
        _ => None,
    };
    let sni = t.sni.clone().unwrap_or_else(|| host.to_string());
    crate::proxy::tls::UpstreamTls::new(&crate::proxy::tls::UpstreamTlsSpec {
        ca: ca.as_deref(),
        identity,
        crl: crl.as_deref(),
        sni: &sni,
        subject_alt_names: &t.subject_alt_names,
        insecure_skip_verify: t.insecure_skip_verify == Some(true),
    })
}

/// `region/zone/subzone` of a workload: its `locality` field, else the
/// Kubernetes topology labels, else plain `region`/`zone` labels.
/// The RateLimitPolicies on one route of VirtualService `vs` (`name` is
/// the compiled route's `ns/vs/route`), served through Gateway `gateway`
/// (`ns/name`): their limits in policy order, buckets shared by every
/// route a policy targets; the first policy's concurrency cap, per route.
fn route_limits(
    ix: &Index<'_>,
    registry: &crate::proxy::ratelimit::LimiterRegistry,
    vs: &Resource,
    route: &HttpRoute,
    name: &str,
    gateway: &str,
) -> Option<Arc<crate::proxy::ratelimit::RouteLimits>> {
    use crate::proxy::ratelimit::{RouteLimits, Rule};
    use meshgate_model::policy::{LimitKey, parse_period};
    let mut policies: Vec<_> =
        ix.rate_limits.iter().filter(|(r, spec)| targets(r, &spec.target_refs, vs, route, gateway)).collect();
    if policies.is_empty() {
        return None;
    }
    policies.sort_by_key(|(r, _)| (r.namespace(), r.name()));
    let mut out = RouteLimits { rules: Vec::new(), concurrency: None };
    for (r, spec) in policies {
        let id = format!("{}/{}", r.namespace(), r.name());
        for (i, l) in spec.limits.iter().enumerate() {
            let (Ok(key), Ok(per)) = (LimitKey::parse(l.key.as_deref()), parse_period(l.per.as_deref())) else {
                continue;
            };
            let when = l.when.as_ref();
            out.rules.push(Rule {
                consumers: when.map(|w| w.consumers.clone()).unwrap_or_default(),
                header: when.and_then(|w| w.header.as_ref()).and_then(|h| {
                    Some((HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).ok()?, h.values.clone()))
                }),
                key,
                limiter: registry.limiter(&format!("{id}#{i}"), l.requests, per, l.burst),
            });
        }
        if out.concurrency.is_none()
            && let Some(cap) = spec.concurrency
        {
            out.concurrency = Some((cap, registry.in_flight(&format!("{id}@{name}"))));
        }
    }
    Some(Arc::new(out))
}

/// Whether a meshgate policy in `r`'s namespace with `refs` targets this
/// route of VirtualService `vs` served through Gateway `gateway` (`ns/name`).
fn targets(
    r: &Resource,
    refs: &[meshgate_model::policy::TargetRef],
    vs: &Resource,
    route: &HttpRoute,
    gateway: &str,
) -> bool {
    refs.iter().any(|t| match t.kind.as_str() {
        "VirtualService" => {
            t.name == vs.name()
                && r.namespace() == vs.namespace()
                && t.section_name.as_ref().is_none_or(|s| route.name.as_ref() == Some(s))
        }
        "Gateway" => qualify(&t.name, r.namespace()) == gateway,
        _ => false,
    })
}

/// The ApiKeyAuth on a route (the first by namespace and name, if several target it).
fn route_key_auth(
    ix: &Index<'_>,
    edge: &Edge<'_>,
    vs: &Resource,
    route: &HttpRoute,
    gateway: &str,
) -> Option<Arc<crate::proxy::keyauth::KeyAuth>> {
    let (_, spec) = ix
        .key_auths
        .iter()
        .filter(|(r, spec)| targets(r, &spec.target_refs, vs, route, gateway))
        .min_by_key(|(r, _)| (r.namespace(), r.name()))?;
    Some(Arc::new(crate::proxy::keyauth::KeyAuth::new(spec, edge.api_keys.clone())))
}

/// Whether a Telemetry's `targetRefs` name this route of VirtualService `vs`.
fn telemetry_targets(
    r: &Resource,
    spec: &meshgate_model::telemetry::TelemetrySpec,
    vs: &Resource,
    route: &HttpRoute,
) -> bool {
    spec.targets().any(|t| {
        t.kind == "VirtualService"
            && t.name == vs.name()
            && t.namespace.as_deref().unwrap_or(r.namespace()) == vs.namespace()
            && t.section_name.as_ref().is_none_or(|s| route.name.as_ref() == Some(s))
    })
}

/// The Telemetry a proxy runs with, Istio's way: mesh-wide (a root
/// namespace, no selector), then namespace-wide, then workload-specific (a
/// selector its labels meet, or for the gateway a `targetRefs` to a
/// Gateway), each level overriding the fields it sets. `None`: no
/// Telemetry applies, Istio's defaults hold.
pub fn proxy_telemetry(
    resources: &[Resource],
    workload: Option<(&str, &BTreeMap<String, String>)>,
) -> Option<Arc<crate::proxy::config::TelemetryPolicy>> {
    let mut levels: [Vec<(&Resource, &meshgate_model::telemetry::TelemetrySpec)>; 3] = Default::default();
    for r in resources {
        let Body::Telemetry(spec) = &r.body else { continue };
        let root = ROOT_NAMESPACES.contains(&r.namespace());
        let targeted = spec.targets().next().is_some();
        let level = match (&spec.selector, targeted, workload) {
            (None, false, _) if root => 0,
            (None, false, Some((ns, _))) if r.namespace() == ns => 1,
            (Some(sel), _, Some((ns, labels))) if r.namespace() == ns || root => {
                if !sel.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    continue;
                }
                2
            }
            (Some(sel), _, None) if root && selects_builtin_gateway(&sel.match_labels) => 2,
            (None, true, None) if spec.targets().any(|t| t.kind == "Gateway") => 2,
            _ => continue,
        };
        levels[level].push((r, spec));
    }
    if levels.iter().all(Vec::is_empty) {
        return None;
    }
    let mut policy = crate::proxy::config::TelemetryPolicy::default();
    for mut level in levels {
        level.sort_by_key(|(r, _)| (r.namespace(), r.name()));
        // Within a level the first by name wins, as Istio takes the oldest.
        for (_, spec) in level.into_iter().rev() {
            apply_telemetry(&mut policy, spec);
        }
    }
    Some(Arc::new(policy))
}

/// Sets what `spec` sets (its first `tracing` and `accessLogging` entries).
fn apply_telemetry(p: &mut crate::proxy::config::TelemetryPolicy, spec: &meshgate_model::telemetry::TelemetrySpec) {
    use crate::telemetry::trace::Value;
    if let Some(t) = spec.tracing.first() {
        if let Some(pct) = t.random_sampling_percentage {
            p.sampling = pct.clamp(0.0, 100.0);
        }
        if let Some(d) = t.disable_span_reporting {
            p.report = !d;
        }
        if !t.providers.is_empty() {
            p.providers = Some(t.providers.iter().map(|r| r.name.clone()).collect());
        }
        for (name, tag) in &t.custom_tags {
            if let Some(h) = &tag.header {
                // The model checked the name; one that is still not a header name is skipped.
                if let Ok(header) = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()) {
                    p.tags.retain(|(k, _)| k != name);
                    p.header_tags.retain(|(k, ..)| k != name);
                    p.header_tags.push((name.clone(), header, h.default_value.clone()));
                }
                continue;
            }
            let value = if let Some(l) = &tag.literal {
                Some(l.value.clone())
            } else if let Some(e) = &tag.environment {
                std::env::var(&e.name).ok().or_else(|| e.default_value.clone())
            } else {
                None
            };
            if let Some(v) = value {
                p.tags.retain(|(k, _)| k != name);
                p.header_tags.retain(|(k, ..)| k != name);
                p.tags.push((name.clone(), Value::Str(v)));
            }
        }
    }
    if let Some(a) = spec.access_logging.first() {
        if let Some(d) = a.disabled {
            p.log.disabled = d;
        }
        if let Some(f) = &a.filter {
            p.log.filter = meshgate_model::telemetry::LogFilter::parse(&f.expression).ok();
        }
        if let Some(pct) = a.random_sampling_percentage {
            p.log.sampling = pct.clamp(0.0, 100.0);
        }
    }
}

/// Istio's root namespaces: policies there without a selector apply mesh-wide.
const ROOT_NAMESPACES: [&str; 2] = ["istio-system", "meshgate-system"];

/// The RequestAuthentication and AuthorizationPolicy that apply to the
/// built-in gateway: in a root namespace, without a selector (mesh-wide) or
/// with one the gateway's labels satisfy; or, anywhere, with a `targetRef`
/// to a Gateway.
pub fn gateway_security(
    resources: &[Resource],
    jwks: &crate::proxy::authn::JwksRegistry,
) -> (Option<Arc<crate::proxy::authn::Authn>>, Option<Arc<crate::proxy::authz::Authz>>) {
    use meshgate_model::security::{PolicyTargetReference, WorkloadSelector};
    let applies = |r: &Resource,
                   selector: Option<&WorkloadSelector>,
                   target: Option<&PolicyTargetReference>,
                   targets: &[PolicyTargetReference]| {
        let targeted = target.into_iter().chain(targets).any(|t| t.kind.as_deref() == Some("Gateway"));
        let selected = ROOT_NAMESPACES.contains(&r.namespace())
            && target.is_none()
            && targets.is_empty()
            && selector.is_none_or(|s| {
                s.match_labels.iter().all(|(k, v)| GATEWAY_LABELS.iter().any(|(gk, gv)| gk == k && gv == v))
            });
        targeted || selected
    };
    let name = |r: &Resource| format!("{}/{}", r.namespace(), r.name());
    let authn = crate::proxy::authn::Authn::compile(
        resources.iter().filter_map(|r| match &r.body {
            Body::RequestAuthentication(s)
                if applies(r, s.selector.as_ref(), s.target_ref.as_ref(), &s.target_refs) =>
            {
                Some((name(r), s))
            }
            _ => None,
        }),
        jwks,
    );
    let authz = crate::proxy::authz::Authz::compile(
        0,
        resources.iter().filter_map(|r| match &r.body {
            Body::AuthorizationPolicy(s) if applies(r, s.selector.as_ref(), s.target_ref.as_ref(), &s.target_refs) => {
                Some((name(r), s))
            }
            _ => None,
        }),
    );
    ((!authn.is_empty()).then(|| Arc::new(authn)), (!authz.is_empty()).then(|| Arc::new(authz)))
}

/// Set on a WorkloadEntry by the control plane: `unhealthy` while its
/// agent's probe fails or the agent is out of contact past the grace
/// period (Istio keeps this as the entry's `Healthy` condition).
pub const HEALTH_ANNOTATION: &str = "meshgate.io/health";
/// Why it is unhealthy.
pub const HEALTH_REASON_ANNOTATION: &str = "meshgate.io/health-reason";

/// Set on an agent's WorkloadEntry: its sidecar takes every port of the
/// service on this one (its inbound port), HTTP and CONNECT alike.
pub const INBOUND_PORT_ANNOTATION: &str = "meshgate.io/inbound-port";

fn inbound_port(we: &Resource) -> Option<u32> {
    we.metadata.annotations.get(INBOUND_PORT_ANNOTATION).and_then(|p| p.parse().ok())
}

/// An unhealthy instance gets no traffic from any proxy.
fn is_unhealthy(we: &Resource) -> bool {
    we.metadata.annotations.get(HEALTH_ANNOTATION).is_some_and(|h| h == "unhealthy")
}

fn endpoint_locality(we: &WorkloadEntrySpec) -> String {
    if let Some(l) = we.locality.as_deref().filter(|l| !l.is_empty()) {
        return l.to_string();
    }
    let label = |keys: &[&str]| keys.iter().find_map(|k| we.labels.get(*k)).cloned().unwrap_or_default();
    let region = label(&["topology.kubernetes.io/region", "region"]);
    let zone = label(&["topology.kubernetes.io/zone", "zone"]);
    if zone.is_empty() { region } else { format!("{region}/{zone}") }
}

/// Whether `locality` (`region/zone/subzone`) falls under `pattern`,
/// where `*` matches any segment (and all below it) and a shorter pattern
/// covers everything below it, as Istio reads `distribute` keys.
fn locality_matches(pattern: &str, locality: &str) -> bool {
    let mut have = locality.split('/');
    for want in pattern.split('/') {
        if want == "*" {
            return true;
        }
        if have.next() != Some(want) {
            return false;
        }
    }
    true
}

/// The `distribute` group (index into `to`) an endpoint's locality falls
/// in; `u16::MAX` when none.
fn locality_group(to: &[(String, u32)], locality: &str) -> u16 {
    to.iter().position(|(pattern, _)| locality_matches(pattern, locality)).map_or(u16::MAX, |g| g as u16)
}

/// 0: same region and zone; 1: same region; 2: a failover target named by
/// `failover` (or any other region when there is no rule); 3: the rest.
fn locality_priority(own: &str, theirs: &str, setting: Option<&meshgate_model::networking::LocalityLbSetting>) -> u8 {
    let Some(setting) = setting else { return 0 };
    if own.is_empty() {
        return 0;
    }
    let mut own_parts = own.split('/');
    let (own_region, own_zone) = (own_parts.next().unwrap_or(""), own_parts.next().unwrap_or(""));
    let mut parts = theirs.split('/');
    let (region, zone) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if region == own_region {
        return if zone == own_zone || own_zone.is_empty() { 0 } else { 1 };
    }
    let rules: Vec<_> = setting.failover.iter().filter(|f| f.from.as_deref() == Some(own_region)).collect();
    if rules.is_empty() || rules.iter().any(|f| f.to.as_deref() == Some(region)) { 2 } else { 3 }
}

/// `failoverPriority`: an endpoint that matches this proxy on the first
/// `k` listed labels (and not the next) gets priority `n - k`, so the
/// closest match serves first. This proxy's labels are its locality
/// (`topology.kubernetes.io/region`, `.../zone`, `topology.istio.io/subzone`);
/// an endpoint's are its labels, with the same keys from its locality.
/// `label=value` entries compare the endpoint's label with that value.
fn failover_priority(keys: &[String], own: &str, labels: &BTreeMap<String, String>, theirs: &str) -> u8 {
    let part = |locality: &str, key: &str| -> Option<String> {
        let index = match key {
            "topology.kubernetes.io/region" => 0,
            "topology.kubernetes.io/zone" => 1,
            "topology.istio.io/subzone" => 2,
            _ => return None,
        };
        locality.split('/').nth(index).filter(|p| !p.is_empty()).map(str::to_string)
    };
    let mut matched = 0;
    for entry in keys {
        let (key, wanted) = match entry.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (entry.as_str(), part(own, entry)),
        };
        let have = labels.get(key).cloned().or_else(|| part(theirs, key));
        if wanted.is_none() || have != wanted {
            break;
        }
        matched += 1;
    }
    (keys.len() - matched).min(u8::MAX as usize) as u8
}

/// A destination's weight as Istio reads it: a lone destination without a
/// weight takes all traffic; among several, a missing weight is 0.
fn route_weight(weight: Option<i32>, single: bool) -> u32 {
    weight.unwrap_or(if single { 100 } else { 0 }).max(0) as u32
}

/// A subset's policy replaces the host's policy field by field.
fn overlay(base: &mut TrafficPolicy, over: &TrafficPolicy) {
    if over.load_balancer.is_some() {
        base.load_balancer = over.load_balancer.clone();
    }
    if over.connection_pool.is_some() {
        base.connection_pool = over.connection_pool.clone();
    }
    if over.outlier_detection.is_some() {
        base.outlier_detection = over.outlier_detection.clone();
    }
    if over.tls.is_some() {
        base.tls = over.tls.clone();
    }
    if !over.port_level_settings.is_empty() {
        base.port_level_settings = over.port_level_settings.clone();
    }
}

fn selects_builtin_gateway(selector: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| GATEWAY_LABELS.iter().any(|(gk, gv)| gk == k && gv == v))
}

/// `name` or `ns/name` as written in a VirtualService of namespace `ns`.
fn qualify(gateway: &str, ns: &str) -> String {
    if gateway.contains('/') { gateway.to_string() } else { format!("{ns}/{gateway}") }
}

fn binds(vs: &VirtualServiceSpec, ns: &str, gateway: &str) -> bool {
    vs.gateways.iter().any(|g| qualify(g, ns) == gateway)
}

/// The hosts a VirtualService host serves on a Gateway server: for each
/// server host, the more specific of the two when one covers the other,
/// honouring `ns/host`.
fn effective_hosts(server_hosts: &[String], gw_ns: &str, vs_ns: &str, vs_host: &str) -> Vec<String> {
    let vs_host = vs_host.to_ascii_lowercase();
    server_hosts
        .iter()
        .filter_map(|h| {
            let (ns, pattern) = split_server_host(h);
            if !namespace_admits(ns, gw_ns, vs_ns) {
                return None;
            }
            let pattern = pattern.to_ascii_lowercase();
            if host_matches(&pattern, &vs_host) {
                Some(vs_host.clone())
            } else if host_matches(&vs_host, &pattern) {
                Some(pattern)
            } else {
                None
            }
        })
        .collect()
}

fn cors(c: &meshgate_model::networking::CorsPolicy) -> Cors {
    let joined = |v: &[String]| (!v.is_empty()).then(|| HeaderValue::from_str(&v.join(",")).ok()).flatten();
    let any_origin = c.allow_origin.iter().any(|o| o == "*")
        || c.allow_origins.iter().any(|m| m.exact.as_deref() == Some("*") || m.regex.as_deref() == Some(".*"));
    let mut origins: Vec<StrMatch> = c.allow_origins.iter().filter_map(|m| str_match(m, false)).collect();
    origins.extend(c.allow_origin.iter().map(|o| StrMatch::Exact(o.clone())));
    Cors {
        origins,
        any_origin,
        allow_methods: joined(&c.allow_methods),
        allow_headers: joined(&c.allow_headers),
        expose_headers: joined(&c.expose_headers),
        max_age: c
            .max_age
            .as_deref()
            .and_then(|a| parse_duration(a).ok())
            .and_then(|d| HeaderValue::from_str(&d.as_secs().to_string()).ok()),
        allow_credentials: c.allow_credentials == Some(true),
        ignore_unmatched_preflights: matches!(
            c.unmatched_preflights,
            Some(meshgate_model::networking::UnmatchedPreflights::Ignore)
        ),
    }
}

fn str_match(m: &StringMatch, lower: bool) -> Option<StrMatch> {
    let case = |s: &str| if lower { s.to_ascii_lowercase() } else { s.to_string() };
    if let Some(e) = &m.exact {
        Some(StrMatch::Exact(case(e)))
    } else if let Some(p) = &m.prefix {
        Some(StrMatch::Prefix(case(p)))
    } else {
        // A pattern that does not compile once anchored (a `(?x)` comment can swallow
        // the anchor) matches nothing rather than everything.
        m.regex.as_ref().map(|r| regex::Regex::new(&format!("^(?:{r})$")).map_or(StrMatch::Never, StrMatch::Regex))
    }
}

fn request_match(m: &HttpMatchRequest) -> RequestMatch {
    let ignore_case = m.ignore_uri_case.unwrap_or(false);
    let headers = |map: &BTreeMap<String, StringMatch>| {
        map.iter()
            .filter(|(k, _)| !k.starts_with("@request.auth.claims."))
            .map(|(k, v)| match HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()) {
                Ok(name) => (name, str_match(v, false)),
                // A name that cannot be a header never matches (fail closed).
                Err(_) => (HeaderName::from_static("x-meshgate-invalid-header-name"), Some(StrMatch::Never)),
            })
            .collect()
    };
    let claims = |map: &BTreeMap<String, StringMatch>| {
        map.iter()
            .filter_map(|(k, v)| {
                let path = k.strip_prefix("@request.auth.claims.")?;
                Some((path.split('.').map(str::to_string).collect(), str_match(v, false)))
            })
            .collect()
    };
    RequestMatch {
        uri: m.uri.as_ref().and_then(|u| str_match(u, ignore_case)),
        ignore_uri_case: ignore_case,
        scheme: m.scheme.as_ref().and_then(|s| str_match(s, false)),
        method: m.method.as_ref().and_then(|s| str_match(s, false)),
        authority: m.authority.as_ref().and_then(|s| str_match(s, false)),
        headers: headers(&m.headers),
        without_headers: headers(&m.without_headers),
        query: m.query_params.iter().map(|(k, v)| (k.clone(), str_match(v, false))).collect(),
        claims: claims(&m.headers),
        without_claims: claims(&m.without_headers),
    }
}

fn ops(o: Option<&HeaderOperations>) -> HeaderOps {
    let Some(o) = o else { return HeaderOps::default() };
    let pairs = |m: &BTreeMap<String, String>| {
        m.iter()
            .filter_map(|(k, v)| {
                Some((HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?, HeaderValue::from_str(v).ok()?))
            })
            .collect()
    };
    HeaderOps {
        set: pairs(&o.set),
        add: pairs(&o.add),
        remove: o
            .remove
            .iter()
            .filter_map(|k| HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok())
            .collect(),
    }
}

fn header_ops(h: Option<&meshgate_model::networking::Headers>) -> (HeaderOps, HeaderOps) {
    (ops(h.and_then(|h| h.request.as_ref())), ops(h.and_then(|h| h.response.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_providers_follow_the_selector() {
        let yaml = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  tracing: [{randomSamplingPercentage: 5}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: orders, namespace: default}\nspec:\n  selector: {matchLabels: {app: orders}}\n  tracing: [{providers: [{name: otel-b}, {name: zipkin}]}]\n";
        let resources = meshgate_model::decode("t", yaml, "default").unwrap();
        let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
        let orders = proxy_telemetry(&resources, Some(("default", &labels("orders")))).unwrap();
        assert_eq!(orders.providers.as_deref(), Some(&["otel-b".to_string(), "zipkin".to_string()][..]));
        assert_eq!(orders.sampling, 5.0, "the mesh-wide level still applies");
        let users = proxy_telemetry(&resources, Some(("default", &labels("users")))).unwrap();
        assert_eq!(users.providers, None, "unselected workloads use the defaults");
        assert_eq!(proxy_telemetry(&resources, None).unwrap().providers, None, "nor does the gateway");
    }

    #[test]
    fn first_match_wins_in_declaration_order() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  hosts: [h.example.com]\n  gateways: [gw]\n  http:\n  - name: header\n    match: [{uri: {prefix: /a}, headers: {x-canary: {exact: \"1\"}}}]\n    route: [{destination: {host: s0}}]\n  - name: prefix-ab\n    match: [{uri: {prefix: /a/b}}]\n    route: [{destination: {host: s1}}]\n  - name: exact-abc\n    match: [{uri: {exact: /a/b/c}}]\n    route: [{destination: {host: s2}}]\n  - name: regex\n    match: [{uri: {regex: \"/z/[0-9]+\"}}]\n    route: [{destination: {host: s3}}]\n  - name: rest\n    route: [{destination: {host: s4}}]\n";
        let resources = meshgate_model::decode("t", yaml, "default").unwrap();
        let health = HealthRegistry::default();
        let snap = Compiler {
            cluster_domain: "svc.cluster.local",
            locality: "",
            health: &health,
            mesh: None,
            edge: None,
            workload: None,
        }
        .compile(1, &resources);
        let vhost = snap.ports[&80].find("h.example.com").unwrap();
        let route = |path: &str, canary: bool| {
            let mut req = http::Request::get(path);
            if canary {
                req = req.header("x-canary", "1");
            }
            let req = req.body(()).unwrap();
            vhost.route_for(&req, "http").map(|r| r.name.rsplit('/').next().unwrap().to_string())
        };
        assert_eq!(route("/a/b/c", true).as_deref(), Some("header"));
        assert_eq!(route("/a/b/c", false).as_deref(), Some("prefix-ab"), "an earlier prefix beats a later exact");
        assert_eq!(route("/a/x", false).as_deref(), Some("rest"));
        assert_eq!(route("/z/42", false).as_deref(), Some("regex"));
        assert_eq!(route("/z/x", false).as_deref(), Some("rest"));
        assert!(snap.ports[&80].find("other.example.com").is_none());
    }

    #[test]
    fn locality_levels() {
        let setting = meshgate_model::networking::LocalityLbSetting {
            failover: vec![meshgate_model::networking::LocalityFailover {
                from: Some("us-east".into()),
                to: Some("us-west".into()),
            }],
            ..Default::default()
        };
        let s = Some(&setting);
        assert_eq!(locality_priority("us-east/zone-a", "us-east/zone-a", s), 0);
        assert_eq!(locality_priority("us-east/zone-a", "us-east", s), 1);
        assert_eq!(locality_priority("us-east/zone-a", "us-west", s), 2);
        assert_eq!(locality_priority("us-east/zone-a", "eu-west", s), 3);
        assert_eq!(locality_priority("", "us-west", s), 0);
        assert_eq!(locality_priority("us-east", "us-west", None), 0);
    }

    #[test]
    fn locality_patterns_match_like_istio() {
        use super::{locality_group, locality_matches};
        assert!(locality_matches("us-east/*", "us-east/zone-a"));
        assert!(locality_matches("us-east", "us-east/zone-a/sub"));
        assert!(locality_matches("us-east/zone-a/*", "us-east/zone-a/sub"));
        assert!(!locality_matches("us-east/zone-b", "us-east/zone-a"));
        assert!(!locality_matches("us-west/*", "us-east/zone-a"));
        assert!(!locality_matches("us-east/zone-a", "us-east"));
        let to = vec![("us-east/zone-a".to_string(), 50), ("us-east/*".to_string(), 30), ("*".to_string(), 20)];
        assert_eq!(locality_group(&to, "us-east/zone-a"), 0);
        assert_eq!(locality_group(&to, "us-east/zone-b"), 1);
        assert_eq!(locality_group(&to, "eu-west/zone-c"), 2);
        assert_eq!(locality_group(&to[..2], "eu-west/zone-c"), u16::MAX);
    }

    #[test]
    fn failover_priority_ranks_by_leading_label_matches() {
        use super::failover_priority;
        let keys = ["topology.kubernetes.io/region".to_string(), "topology.kubernetes.io/zone".to_string()];
        let none = BTreeMap::new();
        assert_eq!(failover_priority(&keys, "us-east/a", &none, "us-east/a"), 0);
        assert_eq!(failover_priority(&keys, "us-east/a", &none, "us-east/b"), 1);
        assert_eq!(failover_priority(&keys, "us-east/a", &none, "us-west/a"), 2, "zone alone does not count");
        let tier = ["tier=gold".to_string()];
        let gold = BTreeMap::from([("tier".to_string(), "gold".to_string())]);
        assert_eq!(failover_priority(&tier, "", &gold, ""), 0);
        assert_eq!(failover_priority(&tier, "", &none, ""), 1);
    }
}
