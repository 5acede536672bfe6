//! The sidecar's data plane, on the gateway's engine: outbound (the app's
//! calls, routed by Host as VirtualServices bound to `mesh` say, to other
//! workloads over mTLS) and inbound (mTLS from other proxies, checked
//! against PeerAuthentication, to the app).
//!
//! Both are compiled by the control plane's own compiler from the
//! resources the control plane pushes: outbound as if a Gateway on the
//! outbound port bound every `mesh` VirtualService (and a default route for
//! every ServiceEntry host), inbound as one route to the app. One compiler,
//! so the gateway and the sidecars cannot disagree on what the YAML means.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use meshgate_model::security::MtlsMode;
use meshgate_model::{Body, Resource};
use serde_json::{Value, json};

use crate::ca::MeshIdentity;
use crate::control::Hub;
use crate::control::compile::Compiler;

/// The ports the snapshots are keyed by (Istio's sidecar ports).
pub const OUTBOUND_PORT: u32 = 15001;
pub const INBOUND_PORT: u32 = 15006;
const GATEWAY_NS: &str = "meshgate-system";
/// Istio's root namespace: a PeerAuthentication there applies mesh-wide.
pub const ROOT_NAMESPACES: [&str; 2] = ["istio-system", "meshgate-system"];

/// How inbound connections must be secured (PeerAuthentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Permissive = 0,
    Strict = 1,
    Disable = 2,
}

pub struct Sidecar {
    pub inbound: Arc<Hub>,
    pub outbound: Arc<Hub>,
    pub identity: ArcSwap<MeshIdentity>,
    /// The inbound TLS configuration for the current certificate.
    pub tls: ArcSwap<rustls::ServerConfig>,
    mode: AtomicU8,
    /// True while STRICT: plaintext connections already open close between requests.
    strict: tokio::sync::watch::Sender<bool>,
    app: Option<SocketAddr>,
    namespace: String,
    labels: std::collections::BTreeMap<String, String>,
    locality: String,
    last: std::sync::Mutex<Option<(i64, Vec<Resource>)>>,
}

impl Sidecar {
    pub fn new(
        identity: MeshIdentity,
        app: Option<SocketAddr>,
        namespace: String,
        labels: std::collections::BTreeMap<String, String>,
        locality: String,
    ) -> anyhow::Result<Sidecar> {
        let tls = server_config(&identity)?;
        Ok(Sidecar {
            inbound: Hub::new(),
            outbound: Hub::new(),
            identity: ArcSwap::from_pointee(identity),
            tls: ArcSwap::from_pointee(tls),
            mode: AtomicU8::new(Mode::Permissive as u8),
            strict: tokio::sync::watch::channel(false).0,
            app,
            namespace,
            labels,
            locality,
            last: Default::default(),
        })
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::Strict,
            2 => Mode::Disable,
            _ => Mode::Permissive,
        }
    }

    /// A renewed certificate: new handshakes use it, and outbound mTLS too.
    pub fn renewed(&self, identity: MeshIdentity) -> anyhow::Result<()> {
        self.tls.store(Arc::new(server_config(&identity)?));
        self.identity.store(Arc::new(identity));
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((revision, resources)) = last {
            self.compile(revision, &resources);
        }
        Ok(())
    }

    /// What this sidecar runs, for `meshgate proxy-config`: its outbound
    /// and inbound routes, clusters and endpoints (health read now), its
    /// certificate and its PeerAuthentication mode.
    pub fn dump(&self) -> Value {
        use crate::proxy::dump::Dump;
        let (out, inb) =
            (Dump::of(&self.outbound.snapshot(), "outbound"), Dump::of(&self.inbound.snapshot(), "inbound"));
        let mode = match self.mode() {
            Mode::Strict => "STRICT",
            Mode::Permissive => "PERMISSIVE",
            Mode::Disable => "DISABLE",
        };
        let (routes, clusters, endpoints) = (
            [out.routes, inb.routes].concat(),
            [out.clusters, inb.clusters].concat(),
            [out.endpoints, inb.endpoints].concat(),
        );
        json!({
            "revision": self.outbound.applied_revision(),
            "routes": routes,
            "clusters": clusters,
            "endpoints": endpoints,
            "secret": self.identity.load().describe(),
            "peerAuthentication": mode,
        })
    }

    /// New configuration from the control plane.
    pub fn apply(&self, revision: i64, resources: Vec<Resource>) {
        self.compile(revision, &resources);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((revision, resources));
    }

    fn compile(&self, revision: i64, resources: &[Resource]) {
        let identity = self.identity.load_full();
        let compiler = Compiler {
            cluster_domain: meshgate_model::hosts::DEFAULT_CLUSTER_DOMAIN,
            locality: &self.locality,
            health: &self.outbound.health,
            mesh: Some(&identity),
            edge: None,
            workload: Some((&self.namespace, &self.labels)),
        };
        self.outbound.install(compiler.compile(revision, &outbound_resources(resources)));
        if let Some(app) = self.app {
            let compiler = Compiler { health: &self.inbound.health, ..compiler };
            let mut inbound = compiler.compile(revision, &inbound_resources(app));
            inbound.telemetry = crate::control::compile::proxy_telemetry(resources, compiler.workload);
            let authz = crate::proxy::authz::Authz::compile(app.port(), self.policies(resources));
            if !authz.is_empty() {
                inbound.authz = Some(Arc::new(authz));
            }
            let authn =
                crate::proxy::authn::Authn::compile(self.request_authentications(resources), &self.inbound.jwks);
            if !authn.is_empty() {
                inbound.authn = Some(Arc::new(authn));
            }
            self.inbound.install(inbound);
        }
        let mode = peer_mode(resources, &self.namespace, &self.labels, self.app.map(|a| a.port()));
        self.mode.store(mode as u8, Ordering::Relaxed);
        self.strict.send_replace(mode == Mode::Strict);
    }
}

impl Sidecar {
    /// The AuthorizationPolicies that select this workload: those in its
    /// namespace and the root namespace, without a selector or with one its
    /// labels match (policies for gateways, by `targetRef`, are not its).
    fn policies<'a>(
        &'a self,
        resources: &'a [Resource],
    ) -> impl Iterator<Item = (String, &'a meshgate_model::security::AuthorizationPolicySpec)> + 'a {
        resources.iter().filter_map(move |r| {
            let Body::AuthorizationPolicy(spec) = &r.body else { return None };
            let mine =
                self.selects(r, spec.selector.as_ref(), spec.target_ref.is_some() || !spec.target_refs.is_empty());
            mine.then(|| (format!("{}/{}", r.namespace(), r.name()), spec))
        })
    }

    /// The RequestAuthentications that select this workload, the same way.
    fn request_authentications<'a>(
        &'a self,
        resources: &'a [Resource],
    ) -> impl Iterator<Item = (String, &'a meshgate_model::security::RequestAuthenticationSpec)> + 'a {
        resources.iter().filter_map(move |r| {
            let Body::RequestAuthentication(spec) = &r.body else { return None };
            let mine =
                self.selects(r, spec.selector.as_ref(), spec.target_ref.is_some() || !spec.target_refs.is_empty());
            mine.then(|| (format!("{}/{}", r.namespace(), r.name()), spec))
        })
    }

    /// A policy in this workload's namespace or the root namespace, without
    /// a selector or with one its labels match (those with a `targetRef`
    /// are for gateways).
    fn selects(
        &self,
        r: &Resource,
        selector: Option<&meshgate_model::security::WorkloadSelector>,
        targeted: bool,
    ) -> bool {
        let here = r.namespace() == self.namespace || ROOT_NAMESPACES.contains(&r.namespace());
        let selected = selector.is_none_or(|s| s.match_labels.iter().all(|(k, v)| self.labels.get(k) == Some(v)));
        here && !targeted && selected
    }
}

/// The agent's certificate for inbound TLS; client certificates from the
/// mesh are asked for and, when given, verified (whether one is required
/// is PeerAuthentication's call, made per connection).
fn server_config(identity: &MeshIdentity) -> anyhow::Result<rustls::ServerConfig> {
    crate::ca::verify::server_config(
        identity.chain.clone(),
        identity.key.clone_key(),
        &identity.roots,
        &[b"h2", b"http/1.1"],
    )
}

/// The mode for this workload: the most specific PeerAuthentication wins
/// (workload selector, then namespace, then the root namespace); UNSET
/// inherits; PERMISSIVE when none says anything (Istio's default). A
/// workload policy's `portLevelMtls` entry for the app's port comes first
/// (as in Istio, only policies with a selector have port-level modes).
fn peer_mode(
    resources: &[Resource],
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
    app_port: Option<u16>,
) -> Mode {
    let set = |m: Option<&meshgate_model::security::PeerMtls>| m.and_then(|m| m.mode).filter(|m| *m != MtlsMode::Unset);
    let mut by_workload = None;
    let mut by_namespace = None;
    let mut mesh_wide = None;
    for r in resources {
        let Body::PeerAuthentication(spec) = &r.body else { continue };
        let mode = set(spec.mtls.as_ref());
        let selector = spec.selector.as_ref().map(|s| &s.match_labels).filter(|l| !l.is_empty());
        if r.namespace() == namespace {
            match selector {
                Some(sel) if sel.iter().all(|(k, v)| labels.get(k) == Some(v)) => {
                    let port = app_port.and_then(|p| set(spec.port_level_mtls.get(&p.to_string())));
                    by_workload = port.or(mode).or(by_workload);
                }
                Some(_) => {}
                None => by_namespace = mode.or(by_namespace),
            }
        } else if ROOT_NAMESPACES.contains(&r.namespace()) && selector.is_none() {
            mesh_wide = mode.or(mesh_wide);
        }
    }
    match by_workload.or(by_namespace).or(mesh_wide) {
        Some(MtlsMode::Strict) => Mode::Strict,
        Some(MtlsMode::Disable) => Mode::Disable,
        _ => Mode::Permissive,
    }
}

fn resource(doc: Value, namespace: &str) -> Option<Resource> {
    match Resource::from_value(doc, namespace) {
        Ok(r) => Some(r),
        Err(errs) => {
            tracing::error!(?errs, "sidecar: a synthesized resource is invalid");
            None
        }
    }
}

fn gateway(name: &str, port: u32) -> Option<Resource> {
    resource(
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": GATEWAY_NS},
            "spec": {
                "selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": port, "name": "http", "protocol": "HTTP"}, "hosts": ["*/*"]}],
            },
        }),
        GATEWAY_NS,
    )
}

/// The pushed resources with every `mesh` VirtualService bound to an
/// outbound "gateway", and a default route for each ServiceEntry host no
/// such VirtualService names.
fn outbound_resources(pushed: &[Resource]) -> Vec<Resource> {
    let gw = format!("{GATEWAY_NS}/sidecar-outbound");
    let mut out: Vec<Resource> = gateway("sidecar-outbound", OUTBOUND_PORT).into_iter().collect();
    let mut routed = std::collections::BTreeSet::new();
    for r in pushed {
        match &r.body {
            Body::VirtualService(spec) if spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh") => {
                let mut vs = r.clone();
                if let Body::VirtualService(s) = &mut vs.body {
                    s.gateways = vec![gw.clone()];
                }
                for h in &spec.hosts {
                    routed.insert((r.namespace().to_string(), h.clone()));
                }
                out.push(vs);
            }
            Body::VirtualService(_) => {}
            _ => out.push(r.clone()),
        }
    }
    for (i, r) in pushed.iter().enumerate() {
        let Body::ServiceEntry(spec) = &r.body else { continue };
        for host in &spec.hosts {
            if routed.contains(&(r.namespace().to_string(), host.clone())) {
                continue;
            }
            let doc = json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": format!("meshgate-default-{i}-{}", host.replace(['.', '*'], "-")), "namespace": r.namespace()},
                "spec": {"hosts": [host], "gateways": [gw], "http": [{"route": [{"destination": {"host": host}}]}]},
            });
            out.extend(resource(doc, r.namespace()));
        }
    }
    out
}

/// One route from the inbound port to the app.
fn inbound_resources(app: SocketAddr) -> Vec<Resource> {
    let mut out: Vec<Resource> = gateway("sidecar-inbound", INBOUND_PORT).into_iter().collect();
    out.extend(resource(
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "inbound-app", "namespace": GATEWAY_NS},
            "spec": {
                "hosts": ["inbound.app.local"],
                "location": "MESH_INTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": app.port(), "name": "http", "protocol": "HTTP"}],
                "endpoints": [{"address": app.ip().to_string()}],
            },
        }),
        GATEWAY_NS,
    ));
    // The app gets the protocol its caller used: gRPC from a peer arrives
    // over HTTP/2 and goes on as h2c, HTTP/1.1 stays HTTP/1.1.
    out.extend(resource(
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "inbound-app", "namespace": GATEWAY_NS},
            "spec": {
                "host": "inbound.app.local",
                "trafficPolicy": {"connectionPool": {"http": {"useClientProtocol": true}}},
            },
        }),
        GATEWAY_NS,
    ));
    out.extend(resource(
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "inbound", "namespace": GATEWAY_NS},
            "spec": {
                "hosts": ["*"],
                "gateways": ["sidecar-inbound"],
                "http": [{"route": [{"destination": {"host": "inbound.app.local", "port": {"number": app.port()}}}]}],
            },
        }),
        GATEWAY_NS,
    ));
    out
}

/// Serves the inbound port: TLS connections (by their first byte) are
/// terminated with the agent's certificate and carry the peer's identity
/// to the app; plaintext is served unless the mode is STRICT; STRICT also
/// refuses TLS without a mesh client certificate.
pub async fn serve_inbound(
    listener: tokio::net::TcpListener,
    sidecar: Arc<Sidecar>,
    base: Arc<crate::proxy::Listener>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = crate::server::stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (sidecar, base, stop) = (sidecar.clone(), base.clone(), stop.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut first = [0u8; 1];
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), stream.peek(&mut first)).await {
                Ok(Ok(1)) => first[0] == 0x16,
                _ => return,
            };
            let mode = sidecar.mode();
            if !tls {
                if mode == Mode::Strict {
                    return tracing::debug!(%peer, "inbound: plaintext refused (STRICT)");
                }
                // Closed between requests once the mode turns STRICT.
                let strict = sidecar.strict.subscribe();
                if crate::proxy::h2_prior_knowledge(&stream).await {
                    return crate::proxy::serve_h2_until(TokioIo::new(stream), base, peer, strict).await;
                }
                let mut stream = stream;
                let (rd, wr) = stream.split();
                return crate::proxy::h1::server::serve(rd, wr, base, peer, strict).await;
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(sidecar.tls.load_full());
            let stream = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                _ => return tracing::debug!(%peer, "inbound: TLS handshake failed"),
            };
            let caller =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(crate::ca::SpiffeId::from_cert);
            if caller.is_none() && mode == Mode::Strict {
                return tracing::debug!(%peer, "inbound: TLS without a mesh client certificate refused (STRICT)");
            }
            let own = sidecar.identity.load().id.to_string();
            let caller = caller.map(|c| c.to_string());
            let listener = Arc::new(crate::proxy::Listener {
                scheme: "https",
                client_cert: caller
                    .as_ref()
                    .and_then(|c| http::HeaderValue::from_str(&format!("By={own};URI={c}")).ok()),
                peer_principal: caller.as_deref().and_then(|c| c.strip_prefix("spiffe://")).map(Arc::from),
                peer_workload: caller.as_deref().map(|c| {
                    crate::telemetry::istio::Labelled::new(crate::telemetry::istio::Workload::from_principal(c))
                }),
                ..(*base).clone()
            });
            // gRPC and other HTTP/2 from mesh peers (ALPN h2); HTTP/1.1 otherwise.
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                return crate::proxy::serve_h2_until(TokioIo::new(stream), listener, peer, stop).await;
            }
            let (rd, wr) = tokio::io::split(stream);
            crate::proxy::h1::server::serve(rd, wr, listener, peer, stop).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yaml: &str) -> Vec<Resource> {
        meshgate_model::parse::decode("test.yaml", yaml, "default").unwrap()
    }

    #[test]
    fn the_most_specific_peer_authentication_wins_down_to_the_port() {
        let labels = [("app".to_string(), "users".to_string())].into();
        let mode = |yaml: &str, port: Option<u16>| peer_mode(&policies(yaml), "default", &labels, port);
        let mesh_strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
        assert_eq!(mode(mesh_strict, Some(9001)), Mode::Strict);
        assert_eq!(mode("", Some(9001)), Mode::Permissive);
        let ns_permissive = format!(
            "{mesh_strict}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: ns}}\nspec: {{mtls: {{mode: PERMISSIVE}}}}\n"
        );
        assert_eq!(mode(&ns_permissive, Some(9001)), Mode::Permissive);
        // A workload policy: its port-level mode for the app's port, else its own, else inherited.
        let workload = format!(
            "{mesh_strict}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: users}}\nspec:\n  selector: {{matchLabels: {{app: users}}}}\n  mtls: {{mode: UNSET}}\n  portLevelMtls: {{\"9001\": {{mode: PERMISSIVE}}, \"9002\": {{mode: UNSET}}}}\n"
        );
        assert_eq!(mode(&workload, Some(9001)), Mode::Permissive, "port 9001 is PERMISSIVE");
        assert_eq!(mode(&workload, Some(9002)), Mode::Strict, "UNSET inherits the mesh's STRICT");
        assert_eq!(mode(&workload, Some(9003)), Mode::Strict, "no port entry: the policy's UNSET inherits");
        assert_eq!(mode(&workload, None), Mode::Strict);
        // Another workload's policy does not apply.
        let other = workload.replace("app: users", "app: orders");
        assert_eq!(mode(&other, Some(9001)), Mode::Strict);
    }
}
