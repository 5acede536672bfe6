//! A small HTTP/1.1 service for the gateway to route to: answers with its
//! name, records what it saw, and can be told to fail or to be slow.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Default)]
pub struct State {
    pub hits: AtomicUsize,
    /// Answer this many requests with `fail_status` before answering normally.
    pub fail_next: AtomicUsize,
    /// When non-zero, every request gets this status.
    pub always_status: AtomicU16,
    pub delay_ms: AtomicU64,
    pub seen: Mutex<VecDeque<Seen>>,
    /// Connections accepted so far.
    pub connections: AtomicUsize,
    /// When non-zero, a connection is dropped this long after it opened,
    /// without `Connection: close` (as upstreams with a short keep-alive do).
    pub close_after_ms: AtomicU64,
    /// TLS handshakes completed (TLS upstreams).
    pub tls_handshakes: AtomicUsize,
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: http::HeaderMap,
}

pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        Upstream::start_with(name, None)
    }

    /// The same service over TLS with `cert_pem`/`key_pem`; with
    /// `client_ca_pem` it also requires a client certificate from that CA.
    pub fn start_tls(name: &str, cert_pem: &str, key_pem: &str, client_ca_pem: Option<&str>) -> Upstream {
        use rustls_pki_types::pem::PemObject as _;
        let chain: Vec<_> =
            rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).unwrap();
        Upstream::start_with(name, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    /// The service on a chosen address (for a host of the multi-host lab).
    pub fn start_at(name: &str, addr: &str) -> Upstream {
        Upstream::start_on(name, None, addr)
    }

    fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        Upstream::start_on(name, tls, "127.0.0.1:0")
    }

    fn start_on(name: &str, tls: Option<tokio_rustls::TlsAcceptor>, addr: &str) -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (st, label) = (state.clone(), name.to_string());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let (st, label, tls) = (st.clone(), label.clone(), tls.clone());
                tokio::spawn(async move {
                    let close_after = st.close_after_ms.load(Ordering::SeqCst);
                    let counters = st.clone();
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (st, label) = (st.clone(), label.clone());
                        async move { Ok::<_, std::convert::Infallible>(answer(&st, &label, req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Some(acceptor) = tls {
                        // A failed handshake (an untrusted or missing client certificate) just ends here.
                        let Ok(stream) = acceptor.accept(stream).await else { return };
                        counters.tls_handshakes.fetch_add(1, Ordering::SeqCst);
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                        return;
                    }
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    if close_after > 0 {
                        let _ = tokio::time::timeout(Duration::from_millis(close_after), conn).await;
                    } else {
                        let _ = conn.await;
                    }
                });
            }
        });
        Upstream { name: name.to_string(), addr, state, _runtime: runtime }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.state.seen.lock().unwrap().back().cloned().expect("no request seen")
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(st: &State, name: &str, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/echo" {
        // The request body back, with its length.
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let mut resp = Response::new(Full::new(body.clone()).boxed());
        resp.headers_mut().insert("x-body-len", http::HeaderValue::from(body.len()));
        return resp;
    }
    if let Some(n) = path.strip_prefix("/chunked/").and_then(|n| n.parse::<usize>().ok()) {
        // N chunks of 1,000 bytes with no Content-Length: sent chunked.
        let chunks = (0..n).map(|i| Ok(hyper::body::Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; 1000]))));
        return Response::new(http_body_util::StreamBody::new(tokio_stream::iter(chunks)).boxed());
    }
    basic(st, name, req).await.map(|b| b.boxed())
}

async fn basic(st: &State, name: &str, mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    st.hits.fetch_add(1, Ordering::SeqCst);
    if req.headers().contains_key("upgrade") {
        // Switch protocols, then echo every byte back: a stand-in for a WebSocket echo.
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert("upgrade", req.headers()["upgrade"].clone());
        resp.headers_mut().insert("connection", http::HeaderValue::from_static("upgrade"));
        return resp;
    }
    let (parts, body) = req.into_parts();
    // Read the whole body, as a real service would, before answering.
    let _ = body.collect().await;
    {
        let mut seen = st.seen.lock().unwrap();
        if seen.len() >= 100 {
            seen.pop_front();
        }
        seen.push_back(Seen {
            path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            headers: parts.headers.clone(),
        });
    }
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = match st.always_status.load(Ordering::SeqCst) {
        0 if st.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() => 500,
        0 => 200,
        s => s,
    };
    let mut resp = Response::new(Full::new(Bytes::from(name.to_string())));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert("x-upstream", http::HeaderValue::from_str(name).unwrap());
    resp
}
