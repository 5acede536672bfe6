//! The mesh port (`--mesh`, 15012): where agents join with a token and
//! renew their certificates over mTLS. TLS always; a client certificate
//! from the mesh CA is optional here and, when shown, is the caller's
//! identity (rustls has checked its chain).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod health;

use crate::api::{ApiError, ApiResult};
use crate::ca::{Ca, IssueError, SpiffeId};
use crate::control::fleet::{Caller, Nack};
use crate::store::{JoinRefusal, Store};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct MeshState {
    pub store: Store,
    pub ca: Arc<Ca>,
    pub hub: Arc<crate::control::Hub>,
    pub metrics: Arc<crate::telemetry::Metrics>,
}

/// How long a config request waits for a newer revision before answering
/// "nothing new" (the agent asks again at once).
const CONFIG_WAIT: Duration = Duration::from_secs(25);

/// What agents are sent: every kind a sidecar acts on. Never Secrets
/// (the gateway's keys) or Gateways.
const AGENT_KINDS: &[meshgate_model::Kind] = &[
    meshgate_model::Kind::VirtualService,
    meshgate_model::Kind::DestinationRule,
    meshgate_model::Kind::ServiceEntry,
    meshgate_model::Kind::WorkloadEntry,
    meshgate_model::Kind::PeerAuthentication,
    meshgate_model::Kind::AuthorizationPolicy,
    meshgate_model::Kind::RequestAuthentication,
    meshgate_model::Kind::TrafficSplit,
    meshgate_model::Kind::Telemetry,
];

/// Who is calling, from the client certificate (if any).
#[derive(Clone, Debug)]
struct Peer(Option<SpiffeId>);

/// The mesh port's TLS: the control plane's own certificate (its SPIFFE ID
/// and DNS names), sent with the roots so a joining agent can check it
/// against the fingerprint it was given; made again after a CA rotation.
pub struct MeshTls {
    config: arc_swap::ArcSwap<rustls::ServerConfig>,
    dns_names: Vec<String>,
}

impl MeshTls {
    pub fn new(ca: &Ca, dns_names: Vec<String>) -> anyhow::Result<MeshTls> {
        let config = arc_swap::ArcSwap::from_pointee(tls_config(ca, &dns_names)?);
        Ok(MeshTls { config, dns_names })
    }

    /// New handshakes use the CA's current signing root and trust bundle.
    pub fn refresh(&self, ca: &Ca) -> anyhow::Result<()> {
        self.config.store(Arc::new(tls_config(ca, &self.dns_names)?));
        Ok(())
    }
}

fn tls_config(ca: &Ca, dns_names: &[String]) -> anyhow::Result<rustls::ServerConfig> {
    let me = SpiffeId::control_plane(ca.trust_domain());
    let (issued, key) = ca.issue_own(&me, dns_names, crate::ca::MAX_TTL)?;
    let roots = ca.roots();
    let mut chain = issued.chain;
    chain.extend(roots.iter().cloned());
    crate::ca::verify::server_config(chain, key, &roots, &[b"h2", b"http/1.1"])
}

pub fn router(state: MeshState) -> Router {
    Router::new()
        .route("/mesh/v1/join", post(join))
        .route("/mesh/v1/renew", post(renew))
        .route("/mesh/v1/roots", get(roots))
        .route("/mesh/v1/config", get(config))
        .route("/mesh/v1/status", post(status))
        .route("/mesh/v1/health", post(health_report))
        .route("/mesh/v1/register", post(register))
        .route("/mesh/v1/deregister", post(deregister))
        .route("/v1/traces", post(traces))
        .route("/mesh/v1/stats", post(stats))
        .route("/mesh/v1/logs", post(logs))
        .fallback(|| async { ApiError::not_found("no such route on the mesh port") })
        .with_state(state)
}

/// How often the mesh port pings an agent's link, and how long a ping may take.
const LINK_PING_EVERY: Duration = Duration::from_secs(10);
const LINK_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the mesh port until `stop` turns true.
pub async fn serve(listener: TcpListener, tls: Arc<MeshTls>, state: MeshState, mut stop: watch::Receiver<bool>) {
    let app = router(state);
    loop {
        let (stream, peer_addr) = tokio::select! {
            () = crate::server::stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "mesh port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.load_full());
        let app = app.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(error = %e, peer = %peer_addr, "mesh port: TLS handshake failed"),
                Err(_) => return tracing::debug!(peer = %peer_addr, "mesh port: TLS handshake timed out"),
            };
            let identity = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(SpiffeId::from_cert);
            let app = app.layer(axum::Extension(Peer(identity)));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Agents hold one HTTP/2 link each; pings find those that are gone
            // (their config requests then end, and the agent counts as disconnected).
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(LINK_PING_EVERY))
                .keep_alive_timeout(LINK_PING_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = crate::server::stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificateRequest {
    /// PEM
    csr: String,
    /// The service the agent says it runs (checked against the token's).
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

async fn join(
    State(s): State<MeshState>,
    headers: HeaderMap,
    Json(req): Json<CertificateRequest>,
) -> ApiResult<Json<Value>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the join token as `Authorization: Bearer TOKEN`",
            )
        })?;
    // The CSR is checked before the token is used, so a bad request does not spend a single-use token.
    s.ca.check_csr(req.csr.as_bytes()).map_err(issue_error)?;
    let scope = match s.store.redeem_join_token(token.trim()).await? {
        Ok(scope) => scope,
        Err(refusal) => {
            tracing::warn!(reason = %refusal, "mesh join refused");
            let status = if refusal == JoinRefusal::Unknown { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN };
            return Err(ApiError::new(status, "join_refused", refusal.to_string()));
        }
    };
    if let Some(service) = &req.service
        && *service != scope.service
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_identity",
            format!("this join token is for service {:?}, not {service:?}", scope.service),
        ));
    }
    let id =
        SpiffeId::new(s.ca.trust_domain(), &scope.namespace, &scope.service_account).map_err(ApiError::bad_request)?;
    let body = issue(&s, &req, &id).await?;
    tracing::info!(identity = %id, service = %scope.service, "agent joined");
    Ok(Json(json!({
        "service": scope.service,
        "namespace": scope.namespace,
        "serviceAccount": scope.service_account,
        "certificate": body,
    })))
}

async fn renew(
    State(s): State<MeshState>,
    Extension(Peer(peer)): Extension<Peer>,
    Json(req): Json<CertificateRequest>,
) -> ApiResult<Json<Value>> {
    let Some(id) = peer.filter(|id| !id.is_control_plane()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "renewal needs the current workload certificate as the TLS client certificate",
        ));
    };
    let body = issue(&s, &req, &id).await?;
    Ok(Json(json!({ "certificate": body })))
}

async fn roots(State(s): State<MeshState>) -> Json<Value> {
    Json(s.ca.summary())
}

async fn issue(s: &MeshState, req: &CertificateRequest, id: &SpiffeId) -> ApiResult<Value> {
    let ttl = req.ttl_seconds.map_or(crate::ca::DEFAULT_TTL, Duration::from_secs);
    let issued = s.ca.issue(req.csr.as_bytes(), id, ttl).map_err(issue_error)?;
    let not_after = crate::ca::rfc3339(issued.not_after);
    s.store.record_certificate(&issued.serial, &id.to_string(), &not_after, &issued.root).await?;
    s.metrics.certificates_issued.inc();
    Ok(json!({
        "identity": id.to_string(),
        "serial": issued.serial,
        "notAfter": not_after,
        "chain": issued.chain_pem,
        "roots": s.ca.roots_pem(),
    }))
}

fn issue_error(e: IssueError) -> ApiError {
    match e {
        IssueError::BadRequest(_) => ApiError::bad_request(e.to_string()),
        IssueError::Signing(_) => {
            tracing::error!(error = %e, "CA signing failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the CA could not sign; see the server log")
        }
    }
}

fn workload(peer: Option<SpiffeId>) -> ApiResult<SpiffeId> {
    peer.filter(|id| !id.is_control_plane()).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "this needs the agent's workload certificate (mTLS)")
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigQuery {
    /// The agent's name (its WorkloadEntry's).
    name: String,
    service: String,
    /// The newest revision the agent has seen; the answer waits for a newer one.
    #[serde(default = "minus_one")]
    after: i64,
    /// The revision it runs, when that is not `after` (it rejected `after`).
    acked: Option<i64>,
}

fn minus_one() -> i64 {
    -1
}

/// The configuration for agents: the resources they act on at the newest
/// revision, once it is newer than `after` (long poll); 204 when nothing
/// changed within [`CONFIG_WAIT`]; `{"dumpWanted": true}` when someone
/// runs `meshgate proxy-config` on this agent. Asking acknowledges
/// `acked` (else `after`).
async fn config(
    State(s): State<MeshState>,
    Extension(Peer(peer)): Extension<Peer>,
    axum::extract::Query(q): axum::extract::Query<ConfigQuery>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let id = workload(peer)?;
    let identity = id.to_string();
    let caller = Caller { name: &q.name, identity: &identity, service: &q.service, namespace: &id.namespace };
    let acked = q.acked.unwrap_or(q.after);
    s.hub.fleet.seen(&caller, acked, true).map_err(|_| not_yours(&q.name))?;
    // Connected while this request waits: until it answers, or is dropped
    // because the agent's link went away.
    let waiting = s.hub.fleet.waiting(&q.name);
    let newer = tokio::select! {
        newer = s.hub.wait_newer(q.after, CONFIG_WAIT) => newer,
        () = s.hub.fleet.dump_wanted(&q.name) => {
            return Ok(Json(json!({ "dumpWanted": true })).into_response());
        }
        () = s.hub.logs.wanted(&q.name, &q.service) => {
            return Ok(Json(json!({ "logsWanted": true })).into_response());
        }
    };
    drop(waiting);
    if !newer {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let revision = s.hub.applied_revision();
    let resources: Vec<Value> = s
        .store
        .all_resources()
        .await?
        .iter()
        .filter(|r| for_agent(r, &id.namespace))
        .map(meshgate_model::Resource::to_value)
        .collect();
    s.metrics.pushes.inc();
    Ok(Json(json!({ "revision": revision, "resources": resources })).into_response())
}

/// Whether an agent in `namespace` gets `r`: the kinds a sidecar acts on;
/// of security policies only those that can apply to it (its namespace and
/// the root namespace); of routing only what is exported to its namespace
/// (`exportTo`, as in Istio: `*` everyone, `.` the resource's own
/// namespace, `~` no one; unset is everyone).
fn for_agent(r: &meshgate_model::Resource, namespace: &str) -> bool {
    use meshgate_model::Body;
    if !AGENT_KINDS.contains(&r.kind) {
        return false;
    }
    let own = r.namespace() == namespace;
    let exported = |to: &[String]| to.is_empty() || to.iter().any(|t| t == "*" || t == namespace || (t == "." && own));
    match &r.body {
        Body::PeerAuthentication(_)
        | Body::AuthorizationPolicy(_)
        | Body::RequestAuthentication(_)
        | Body::Telemetry(_) => own || crate::agent::sidecar::ROOT_NAMESPACES.contains(&r.namespace()),
        Body::VirtualService(s) => exported(&s.export_to),
        Body::DestinationRule(s) => exported(&s.export_to),
        Body::ServiceEntry(s) => exported(&s.export_to),
        _ => true,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stats {
    deltas: Vec<crate::telemetry::series::Delta>,
}

/// An agent's request summary for the time series (mesh certificates only).
async fn stats(
    State(s): State<MeshState>,
    Extension(Peer(peer)): Extension<Peer>,
    Json(st): Json<Stats>,
) -> ApiResult<axum::http::StatusCode> {
    workload(peer)?;
    s.hub.series.add(crate::telemetry::series::unix_now(), &st.deltas);
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Logs {
    name: String,
    service: String,
    lines: Vec<String>,
}

/// An agent's access-log lines for `meshgate logs`; the answer says whether to keep sending.
async fn logs(
    State(s): State<MeshState>,
    Extension(Peer(peer)): Extension<Peer>,
    Json(l): Json<Logs>,
) -> ApiResult<Json<Value>> {
    workload(peer)?;
    let more = s.hub.logs.publish(&l.name, &l.service, l.lines);
    Ok(Json(json!({ "more": more })))
}

/// Agents' spans (OTLP/protobuf over the link); mesh certificates only.
async fn traces(
    State(s): State<MeshState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> axum::response::Response {
    if let Err(e) = workload(peer) {
        return axum::response::IntoResponse::into_response(e);
    }
    crate::api::traces::receive(s.hub.traces.get(), "agent", &headers, &body)
}

fn not_yours(name: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("the agent name {name:?} belongs to another identity"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Status {
    name: String,
    service: String,
    /// The revision it runs.
    revision: i64,
    /// A newer revision it rejected, and why.
    nack: Option<Nack>,
    /// What it runs: routes, clusters, endpoints, its certificate (never the key).
    dump: Value,
    /// Where Prometheus scrapes its metrics (`host:port`).
    #[serde(default)]
    metrics: Option<String>,
}

/// An agent's status after each configuration it got (ACK or NACK) and
/// when its config dump is wanted.
async fn status(
    State(s): State<MeshState>,
    Extension(Peer(peer)): Extension<Peer>,
    Json(st): Json<Status>,
) -> ApiResult<Json<Value>> {
    let id = workload(peer)?;
    let identity = id.to_string();
    let caller = Caller { name: &st.name, identity: &identity, service: &st.service, namespace: &id.namespace };
    if let Some(n) = &st.nack {
        tracing::warn!(agent = %st.name, revision = n.revision, reason = %n.reason, "agent rejected a configuration (NACK)");
        s.metrics.rejects.inc();
    }
    // An acknowledgement of a revision applied here: how long it took to reach this agent.
    let before = s.hub.fleet.get(&st.name).map_or(-1, |r| r.revision);
    if st.revision > before
        && let Some(ago) = s.hub.applied_ago(st.revision)
    {
        s.metrics.convergence.observe(ago.as_secs_f64());
    }
    s.hub.fleet.report(&caller, st.revision, st.nack, st.dump, st.metrics).map_err(|_| not_yours(&st.name))?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Registration {
    name: String,
    service: String,
    /// The inbound address other proxies reach this agent at.
    address: String,
    port: u16,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    locality: Option<String>,
    /// The app's health from the agent's first probe (absent: not probed).
    #[serde(default)]
    healthy: Option<bool>,
    #[serde(default)]
    health_reason: String,
}

/// An agent's instance as a WorkloadEntry named after the agent, in its
/// identity's namespace, with `security.istio.io/tlsMode: istio` so every
/// proxy reaches it over mTLS.
async fn register(
    State(s): State<MeshState>,
    Extension(Peer(peer)): Extension<Peer>,
    Json(reg): Json<Registration>,
) -> ApiResult<Json<Value>> {
    let id = workload(peer)?;
    let mut labels = reg.labels.clone();
    labels.insert("app".into(), reg.service.clone());
    labels.insert("security.istio.io/tlsMode".into(), "istio".into());
    let mut spec = json!({
        "address": reg.address,
        "ports": { "http": reg.port },
        "labels": labels,
        "serviceAccount": id.service_account,
    });
    if let Some(l) = reg.locality.filter(|l| !l.is_empty()) {
        spec["locality"] = json!(l);
    }
    let mut metadata = json!({
        "name": reg.name, "namespace": id.namespace, "labels": { "meshgate.io/agent": "true" },
        "annotations": { crate::control::compile::INBOUND_PORT_ANNOTATION: reg.port.to_string() },
    });
    if reg.healthy == Some(false) {
        metadata["annotations"][crate::control::compile::HEALTH_ANNOTATION] = json!("unhealthy");
        metadata["annotations"][crate::control::compile::HEALTH_REASON_ANNOTATION] = json!(reg.health_reason);
    }
    let doc =
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": metadata, "spec": spec });
    let resource = meshgate_model::Resource::from_value(doc, &id.namespace).map_err(|errs| {
        let details = errs.into_iter().map(|e| crate::api::error::Detail { path: e.path, reason: e.reason }).collect();
        ApiError::invalid("the registration does not make a valid WorkloadEntry", details)
    })?;
    let changes = s.store.apply(&[resource], &format!("agent:{id}"), crate::store::WriteMode::Upsert).await?;
    if let Some(healthy) = reg.healthy {
        let identity = id.to_string();
        let caller = Caller { name: &reg.name, identity: &identity, service: &reg.service, namespace: &id.namespace };
        s.hub.fleet.set_health(&caller, healthy, &reg.health_reason).map_err(|_| not_yours(&reg.name))?;
    }
    s.hub.notify();
    tracing::info!(agent = %reg.name, identity = %id, address = %reg.address, "agent registered");
    Ok(Json(json!({ "workloadEntry": format!("{}/{}", id.namespace, reg.name), "changes": changes.len() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthReport {
    name: String,
    healthy: bool,
    #[serde(default)]
    reason: String,
}

/// An agent's probe changed its mind about its app; the reconciler marks
/// the instance's WorkloadEntry.
async fn health_report(
    State(s): State<MeshState>,
    Extension(Peer(peer)): Extension<Peer>,
    Json(h): Json<HealthReport>,
) -> ApiResult<Json<Value>> {
    let id = workload(peer)?;
    let identity = id.to_string();
    let service = s.hub.fleet.get(&h.name).map(|r| r.service).unwrap_or_default();
    let caller = Caller { name: &h.name, identity: &identity, service: &service, namespace: &id.namespace };
    s.hub.fleet.set_health(&caller, h.healthy, &h.reason).map_err(|_| not_yours(&h.name))?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Deregistration {
    name: String,
}

async fn deregister(
    State(s): State<MeshState>,
    Extension(Peer(peer)): Extension<Peer>,
    Json(d): Json<Deregistration>,
) -> ApiResult<Json<Value>> {
    let id = workload(peer)?;
    // Only the agent's own entry, in its own namespace.
    let found = s.store.get(meshgate_model::Kind::WorkloadEntry, &id.namespace, &d.name).await?;
    let owned = found.as_ref().is_some_and(|o| o.labels.get("meshgate.io/agent").is_some_and(|v| v == "true"));
    if owned {
        s.store
            .delete(meshgate_model::Kind::WorkloadEntry, &id.namespace, &d.name, &format!("agent:{id}"), None)
            .await?;
        s.hub.notify();
    }
    s.hub.fleet.remove(&d.name);
    Ok(Json(json!({ "removed": owned })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_get_only_what_can_apply_to_them() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: shop-only, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: private, namespace: shop}\nspec: {hosts: [cart], exportTo: ['.'], http: [{route: [{destination: {host: cart}}]}]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: to-billing, namespace: shop}\nspec: {host: cart, exportTo: [billing]}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: hidden, namespace: shop}\nspec: {hosts: [hidden.example.com], exportTo: ['~'], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: shop}\nspec: {selector: {istio: ingressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n";
        let resources = meshgate_model::parse::decode("test.yaml", yaml, "default").unwrap();
        let names = |ns: &str| -> Vec<String> {
            resources.iter().filter(|r| for_agent(r, ns)).map(|r| r.name().to_string()).collect()
        };
        assert_eq!(names("shop"), ["shop-only", "default", "private"]);
        assert_eq!(names("billing"), ["default", "to-billing"]);
        assert_eq!(names("default"), ["default"]);
    }
}
