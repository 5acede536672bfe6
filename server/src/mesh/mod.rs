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
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{ApiError, ApiResult};
use crate::ca::{Ca, IssueError, SpiffeId};
use crate::store::{JoinRefusal, Store};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct MeshState {
    pub store: Store,
    pub ca: Arc<Ca>,
}

/// Who is calling, from the client certificate (if any).
#[derive(Clone, Debug)]
struct Peer(Option<SpiffeId>);

/// The mesh port's TLS: the control plane's own certificate (its SPIFFE ID
/// and `dns_names`), sent with the root so a joining agent can check it
/// against the fingerprint it was given.
pub fn tls_config(ca: &Ca, dns_names: &[String]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let me = SpiffeId::control_plane(ca.trust_domain());
    let (issued, key) = ca.issue_own(&me, dns_names, crate::ca::MAX_TTL)?;
    let mut chain = issued.chain;
    chain.extend(ca.roots().iter().cloned());
    let mut roots = rustls::RootCertStore::empty();
    for r in ca.roots() {
        roots.add(r.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub fn router(state: MeshState) -> Router {
    Router::new()
        .route("/mesh/v1/join", post(join))
        .route("/mesh/v1/renew", post(renew))
        .route("/mesh/v1/roots", get(roots))
        .fallback(|| async { ApiError::not_found("no such route on the mesh port") })
        .with_state(state)
}

/// Serves the mesh port until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: MeshState,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(state);
    loop {
        let (stream, peer_addr) = tokio::select! {
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "mesh port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
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
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
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
    Json(json!({ "trustDomain": s.ca.trust_domain(), "fingerprint": s.ca.fingerprint(), "roots": s.ca.roots_pem() }))
}

async fn issue(s: &MeshState, req: &CertificateRequest, id: &SpiffeId) -> ApiResult<Value> {
    let ttl = req.ttl_seconds.map_or(crate::ca::DEFAULT_TTL, Duration::from_secs);
    let issued = s.ca.issue(req.csr.as_bytes(), id, ttl).map_err(issue_error)?;
    let not_after = crate::ca::rfc3339(issued.not_after);
    s.store.record_certificate(&issued.serial, &id.to_string(), &not_after).await?;
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
