//! The data plane: one engine for the edge gateway (and, with the mesh,
//! sidecar inbound and outbound). It runs from the immutable [`Snapshot`]
//! the control plane swaps in, never from the database.

pub mod config;
mod handler;
pub mod l4;
pub mod listeners;
pub mod route_index;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::control::Hub;

const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a client may take to send a request head, and how long an idle
/// keep-alive connection may wait for its next request (hyper runs one
/// timer for both). Slow-loris clients are cut off after this.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Bodies the proxy sends either way: streamed from the peer, or made here.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// What every connection of one listener shares.
pub struct Listener {
    pub hub: Arc<Hub>,
    /// The Gateway server port this listener serves (80 for `--http`).
    pub gateway_port: u32,
    pub scheme: &'static str,
    pub clients: Clients,
    /// Shared by every gateway listener: client connections open at once.
    pub connection_limit: Arc<tokio::sync::Semaphore>,
}

/// Upstream clients by protocol, shared by all listeners so keep-alive
/// pools survive configuration changes.
#[derive(Clone)]
pub struct Clients {
    pub http1: Client<HttpConnector, ProxyBody>,
    /// HTTP/2 with prior knowledge (h2c): gRPC and `HTTP2` ports.
    pub http2: Client<HttpConnector, ProxyBody>,
}

impl Clients {
    pub fn new() -> Clients {
        Clients { http1: upstream_client(false), http2: upstream_client(true) }
    }

    pub fn for_protocol(&self, http2: bool) -> &Client<HttpConnector, ProxyBody> {
        if http2 { &self.http2 } else { &self.http1 }
    }
}

impl Default for Clients {
    fn default() -> Clients {
        Clients::new()
    }
}

fn upstream_client(http2: bool) -> Client<HttpConnector, ProxyBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(http2)
        // Small heads and bodies: one flattened write beats a writev of pieces.
        .http1_writev(false)
        .build(connector)
}

/// Serves `listener` until `shutdown` completes, then lets open
/// connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<Listener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let Some((stream, peer, permit)) = accept(&listener, &state.connection_limit, &mut shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, std::convert::Infallible>(handler::handle(&state, peer, req).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // Slow or oversized request heads: cut off after HEAD_TIMEOUT; 431 past 64 KiB or 100 headers.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(64 * 1024)
            .max_headers(100)
            .writev(false);
        // HTTP/2 peers that vanish are found by pings and closed.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(64 * 1024)
            .keep_alive_interval(Some(HEAD_TIMEOUT))
            .keep_alive_timeout(std::time::Duration::from_secs(10));
        match &tls {
            None => {
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // A client that connects and sends nothing is closed: hyper's
                    // protocol sniffing, before HTTP/1's head timer, has no timeout.
                    if !matches!(tokio::time::timeout(HEAD_TIMEOUT, stream.readable()).await, Ok(Ok(()))) {
                        return;
                    }
                    // The connection then runs in a task of its own: serving it from this
                    // one (the builder and the wait above in its state) cost a third more
                    // CPU per request in the yardstick.
                    let conn = watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                    });
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, never in the accept loop.
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    };
                    // As for plain connections: the connection gets a task of its own.
                    let conn = watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                    });
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
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

/// Binds a gateway listener with a message that names the flag.
pub async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({flag}): {e}"))
}
