//! The data plane: one engine for the edge gateway (and, with the mesh,
//! sidecar inbound and outbound). It runs from the immutable [`Snapshot`]
//! the control plane swaps in, never from the database.

pub mod authn;
pub mod authz;
mod body;
pub mod config;
pub mod dump;
pub mod grpcweb;
pub mod h1;
pub mod h2;
mod handler;
pub mod jwt;
pub mod kept;
pub mod keyauth;
pub mod l4;
pub mod listeners;
pub mod observe;
pub mod ratelimit;
pub mod route_index;
pub mod tls;
pub mod transcode;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

pub use body::{Passed, ProxyBody};
use h1::server::HEAD_TIMEOUT;

use crate::control::Hub;

const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The value of query parameter `key` in `query` (`a=1&b=2`; a key
/// without `=` has the empty value).
pub fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then_some(v)
    })
}

/// A gRPC status code (`grpc-status`) in headers or trailers.
pub fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    // A name made once: looking up by `&str` parses and lowercases it each time.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    h.get(&GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';').find_map(|c| {
            let (k, val) = c.trim().split_once('=')?;
            (k == name).then_some(val)
        })
    })
}

/// What every connection of one listener shares.
#[derive(Clone)]
pub struct Listener {
    pub hub: Arc<Hub>,
    /// The Gateway server port this listener serves (80 for `--http`).
    pub gateway_port: u32,
    pub scheme: &'static str,
    pub clients: Clients,
    /// Shared by every gateway listener: client connections open at once.
    pub connection_limit: Arc<tokio::sync::Semaphore>,
    /// A sidecar's inbound mTLS connection: the `x-forwarded-client-cert`
    /// value (`By=<own ID>;URI=<peer ID>`) its requests carry upstream.
    pub client_cert: Option<http::HeaderValue>,
    /// The same connection's peer as AuthorizationPolicy names it
    /// (`TD/ns/NS/sa/SA`), worked out once per connection.
    pub peer_principal: Option<Arc<str>>,
    /// Serves HTTP CONNECT tunnels (a sidecar's ports: TCP through the
    /// mesh); the gateway refuses CONNECT.
    pub tunnels: bool,
    /// Proxies in front of this one (`--trusted-proxies`): only their
    /// `X-Forwarded-For` entries count when finding the client's address.
    pub trusted_proxies: Arc<[authz::Cidr]>,
    /// The process's request metrics, and this listener's side of the call
    /// in them (the gateway and outbound ports: source; inbound: destination).
    pub metrics: Arc<crate::telemetry::istio::ProxyMetrics>,
    pub reporter: crate::telemetry::istio::Reporter,
    /// A sidecar's inbound mTLS connection: the caller's workload, from its certificate.
    pub peer_workload: Option<Arc<crate::telemetry::istio::Labelled<crate::telemetry::istio::Workload>>>,
    /// JSON access log (`--access-log`), if any.
    pub access_log: Option<Arc<crate::telemetry::accesslog::AccessLog>>,
    /// Records this proxy's spans (continues or starts each request's trace).
    pub tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
}

impl Listener {
    /// The access log, when lines are wanted now (a file, or a follower).
    pub fn logging(&self) -> Option<&Arc<crate::telemetry::accesslog::AccessLog>> {
        self.access_log.as_ref().filter(|a| a.active())
    }
}

/// The HTTP/2 upstream client (h2c with prior knowledge: gRPC and `HTTP2`
/// ports), shared by all listeners so its connections survive configuration
/// changes. HTTP/1 upstreams use [`h1::client`], pooled per endpoint.
#[derive(Clone)]
pub struct Clients {
    pub http2: Client<HttpConnector, ProxyBody>,
}

impl Clients {
    pub fn new() -> Clients {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
        connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
        let http2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Clients { http2 }
    }
}

impl Default for Clients {
    fn default() -> Clients {
        Clients::new()
    }
}

/// Serves `listener` until `shutdown` completes, then lets open
/// connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<Listener>,
    tls: Option<tls::GatewayTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // HTTP/2 connections drain through hyper's graceful shutdown; HTTP/1
    // ones watch `closing` and hold a receiver until they end.
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let (closing, open) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let Some((stream, peer, permit)) = accept(&listener, &state.connection_limit, &mut shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let open = open.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let conn = async move {
            let _permit = permit;
            match tls {
                None => {
                    // A client that connects and sends nothing is closed after HEAD_TIMEOUT.
                    if !matches!(tokio::time::timeout(HEAD_TIMEOUT, stream.readable()).await, Ok(Ok(()))) {
                        return;
                    }
                    if h2_prior_knowledge(&stream).await {
                        return Box::pin(serve_h2(TokioIo::new(stream), state, peer, watcher)).await;
                    }
                    let mut stream = stream;
                    let (r, w) = stream.split();
                    h1::server::serve(r, w, state, peer, open).await;
                }
                // Boxed: TLS state is large and only TLS connections should pay for it.
                Some(acceptor) => {
                    Box::pin(async move {
                        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                        let stream = match handshake {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                        };
                        // A client certificate (Gateway MUTUAL): its identity for
                        // AuthorizationPolicy and the upstream's x-forwarded-client-cert.
                        let client = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(tls::client_identity);
                        let state = match client {
                            Some((principal, xfcc)) => Arc::new(Listener {
                                client_cert: Some(xfcc),
                                peer_principal: Some(Arc::from(principal)),
                                ..(*state).clone()
                            }),
                            None => state,
                        };
                        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                            return serve_h2(TokioIo::new(stream), state, peer, watcher).await;
                        }
                        let (r, w) = tokio::io::split(stream);
                        h1::server::serve(r, w, state, peer, open).await;
                    })
                    .await
                }
            }
        };
        tokio::spawn(conn);
    }
    drop(listener);
    drop(open);
    let _ = closing.send(true);
    tokio::join!(graceful.shutdown(), closing.closed());
}

/// Whether a plain connection opens with the HTTP/2 preface (h2c with
/// prior knowledge, as gRPC clients do).
pub(crate) async fn h2_prior_knowledge(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut seen = [0u8; PREFACE.len()];
    for _ in 0..100 {
        let n = match stream.peek(&mut seen).await {
            Ok(n) if n > 0 => n,
            _ => return false,
        };
        if !PREFACE.starts_with(&seen[..n]) {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // Part of the preface so far: wait for the rest.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// A response as HTTP/2 sends it: every field in the header map.
fn h2_response(mut resp: http::Response<ProxyBody>) -> http::Response<ProxyBody> {
    h1::materialize(&mut resp);
    resp
}

async fn serve_h2<I>(io: I, state: Arc<Listener>, peer: SocketAddr, watcher: hyper_util::server::graceful::Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let state = Arc::clone(&state);
        async move {
            let mut req = req.map(ProxyBody::Hyper);
            Ok::<_, std::convert::Infallible>(h2_response(handler::handle(&state, peer, &mut req).await))
        }
    });
    if let Err(e) = watcher.watch(h2_builder().serve_connection(io, service)).await {
        tracing::debug!(error = %e, %peer, "HTTP/2 connection ended with an error");
    }
}

/// HTTP/2 on one connection until `stop` changes; then GOAWAY, and the
/// streams in flight finish (a sidecar's inbound port, whose mode may turn
/// STRICT under a plaintext connection).
pub(crate) async fn serve_h2_until<I>(
    io: I,
    state: Arc<Listener>,
    peer: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let state = Arc::clone(&state);
        async move {
            let mut req = req.map(ProxyBody::Hyper);
            Ok::<_, std::convert::Infallible>(h2_response(handler::handle(&state, peer, &mut req).await))
        }
    });
    let mut conn = std::pin::pin!(h2_builder().serve_connection(io, service));
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, %peer, "HTTP/2 connection ended with an error");
    }
}

fn h2_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // HTTP/2 peers that vanish are found by pings and closed.
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(HEAD_TIMEOUT))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    builder
}

/// The next connection, with its place under the global connection limit;
/// `None` once `shutdown` fires. At the limit, this waits (and so the
/// listener stops accepting) until another connection closes.
pub(crate) async fn accept(
    listener: &TcpListener,
    limit: &Arc<tokio::sync::Semaphore>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<(tokio::net::TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.as_mut() => return None,
        };
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.ok()?,
            _ = shutdown.as_mut() => return None,
        };
        return Some((stream, peer, permit));
    }
}

/// Binds `n` accept sockets to `addr` with `SO_REUSEPORT`, one per worker,
/// so the kernel spreads connections over the workers. A port in use by
/// anything else is refused first, with a message that names the flag.
pub fn bind_workers(addr: SocketAddr, n: usize, flag: &str) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot listen on {addr} ({flag}): {e}");
    // A plain bind first: another program on the port is an error, never a silent share.
    let probe = std::net::TcpListener::bind(addr).map_err(fail)?;
    let addr = probe.local_addr().map_err(fail)?;
    drop(probe);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
            .map_err(fail)?;
        socket.set_reuseaddr(true).map_err(fail)?;
        socket.set_reuseport(true).map_err(fail)?;
        socket.bind(addr).map_err(fail)?;
        out.push(socket.listen(4096).map_err(fail)?.into_std().map_err(fail)?);
    }
    Ok(out)
}

thread_local! {
    /// Which gateway worker this thread is (0 outside the workers): picks
    /// the worker's own upstream connection pool.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

pub fn worker_index() -> usize {
    WORKER.with(|w| w.get())
}

/// Serves `listeners` (one per worker, from [`bind_workers`]) on threads of
/// their own, each with a single-threaded runtime that owns its
/// connections end to end: no cross-thread wake-ups per request. Completes
/// when every worker has drained after `shutdown`.
pub async fn serve_workers(
    listeners: Vec<std::net::TcpListener>,
    state: Arc<Listener>,
    tls: Option<tls::GatewayTls>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut done = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (state, tls, mut shutdown) = (state.clone(), tls.clone(), shutdown.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        done.push(rx);
        let spawned =
            std::thread::Builder::new().name(format!("gateway-{}-{i}", state.gateway_port)).spawn(move || {
                WORKER.with(|w| w.set(i + 1));
                // Sockets and timers only: a worker neither reaps child
                // processes nor takes signals, and with `enable_all` every
                // park (about two per request) would look for both.
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
                    Ok(r) => r,
                    Err(e) => return tracing::error!(error = %e, "cannot start a gateway worker"),
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return tracing::error!(error = %e, "gateway worker cannot use its socket"),
                    };
                    let stopped = async move {
                        let _ = shutdown.wait_for(|s| *s).await;
                    };
                    serve(listener, state, tls, stopped).await;
                });
                drop(tx);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a gateway worker thread");
        }
    }
    for rx in done {
        let _ = rx.await;
    }
}
