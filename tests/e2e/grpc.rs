//! gRPC through the gateway: HTTP/2 to the upstream, messages streamed as
//! they come, trailers (`grpc-status`) passed back, errors as gRPC statuses.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::Server;

fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

fn messages(mut data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        out.push(String::from_utf8_lossy(&data[5..5 + len]).into_owned());
        data = &data[5 + len..];
    }
    out
}

type Frames = Result<Frame<Bytes>, Infallible>;

/// An h2c gRPC server: `Unary` echoes, `Stream` sends three messages 50 ms apart.
struct GrpcUpstream {
    port: u16,
    versions: Arc<Mutex<Vec<http::Version>>>,
    _rt: tokio::runtime::Runtime,
}

fn grpc_upstream() -> GrpcUpstream {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = versions.clone();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push(req.version());
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let (tx, rx) = tokio::sync::mpsc::channel::<Frames>(8);
                        tokio::spawn(async move {
                            let replies: Vec<String> = if path.ends_with("/Stream") {
                                vec!["one".into(), "two".into(), "three".into()]
                            } else {
                                messages(&body).into_iter().map(|m| format!("echo: {m}")).collect()
                            };
                            for r in replies {
                                let _ = tx.send(Ok(Frame::data(frame(r.as_bytes())))).await;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                        });
                        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                        let mut resp = http::Response::new(StreamBody::new(stream));
                        resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    GrpcUpstream { port, versions, _rt: rt }
}

struct Call {
    headers: http::HeaderMap,
    messages: Vec<String>,
    /// When each message arrived, relative to the first.
    gaps: Vec<Duration>,
    trailers: Option<http::HeaderMap>,
}

/// A gRPC call over h2c (prior knowledge) to the gateway.
fn call(addr: &str, method: &str, request: &str) -> Call {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        // A streamed body, so no content-length is sent: as grpc-go and tonic do.
        let body =
            StreamBody::new(futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(frame(request.as_bytes())))]));
        let req = http::Request::post(format!("http://grpc.example.com/echo.Echo/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        let (mut messages, mut gaps, mut trailers) = (Vec::new(), Vec::new(), None);
        let start = std::time::Instant::now();
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            if let Some(d) = f.data_ref() {
                messages.extend(self::messages(d));
                gaps.push(start.elapsed());
            } else if let Ok(t) = f.into_trailers() {
                trailers = Some(t);
            }
        }
        Call { headers, messages, gaps, trailers }
    })
}

#[test]
fn grpc_unary_and_server_streaming_through_the_gateway() {
    let up = grpc_upstream();
    let server = Server::start();
    server.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [grpc.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: echo}}\nspec:\n  hosts: [echo]\n  resolution: STATIC\n  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo}}\nspec:\n  hosts: [grpc.example.com]\n  gateways: [gw]\n  http:\n  - match: [{{uri: {{prefix: /echo.Echo/}}}}]\n    route: [{{destination: {{host: echo}}}}]\n  - route: [{{destination: {{host: missing}}}}]\n",
        up.port
    ));

    let unary = call(&server.http, "Unary", "hello");
    assert_eq!(unary.messages, ["echo: hello"]);
    assert_eq!(unary.trailers.as_ref().unwrap()["grpc-status"], "0");
    assert_eq!(up.versions.lock().unwrap().last(), Some(&http::Version::HTTP_2), "HTTP/2 to the upstream");

    let stream = call(&server.http, "Stream", "");
    assert_eq!(stream.messages, ["one", "two", "three"]);
    assert_eq!(stream.trailers.as_ref().unwrap()["grpc-status"], "0");
    assert!(
        stream.gaps.len() == 3 && stream.gaps[2] >= Duration::from_millis(90),
        "messages must stream as they come, not all at the end: {:?}",
        stream.gaps
    );

    // A route to a service without endpoints: a gRPC status, not an HTTP error.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let headers = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&server.http).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("http://grpc.example.com/other.Svc/Call")
            .header("content-type", "application/grpc")
            .body(Full::new(frame(b"x")))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.headers().clone()
    });
    assert_eq!(headers["grpc-status"], "14", "{headers:?}");
    assert_eq!(unary.headers["content-type"], "application/grpc");
}

/// A gRPC-Web body: its messages and its trailer block (the frame flagged 0x80).
fn web_frames(mut data: &[u8]) -> (Vec<String>, String) {
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        let payload = String::from_utf8_lossy(&data[5..5 + len]).into_owned();
        if data[0] & 0x80 != 0 {
            trailers = payload;
        } else {
            messages.push(payload);
        }
        data = &data[5 + len..];
    }
    (messages, trailers)
}

#[test]
fn grpc_web_from_browsers_reaches_grpc_upstreams() {
    use base64::Engine as _;
    let up = grpc_upstream();
    let server = Server::start();
    server.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [grpc.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: echo}}\nspec:\n  hosts: [echo]\n  resolution: STATIC\n  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo}}\nspec:\n  hosts: [grpc.example.com]\n  gateways: [gw]\n  http:\n  - match: [{{uri: {{prefix: /echo.Echo/}}}}]\n    route: [{{destination: {{host: echo}}}}]\n  - route: [{{destination: {{host: missing}}}}]\n",
        up.port
    ));
    // HTTP/1.1, as a browser's gRPC-Web client sends it.
    let c = reqwest::blocking::Client::builder().http1_only().build().unwrap();
    let post = |path: &str, ct: &str, body: Vec<u8>| {
        let r = c
            .post(format!("http://{}{path}", server.http))
            .header("host", "grpc.example.com")
            .header("content-type", ct)
            .header("x-grpc-web", "1")
            .body(body)
            .send()
            .unwrap();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        (r.status().as_u16(), ct, r.bytes().unwrap().to_vec())
    };
    let (status, ct, body) = post("/echo.Echo/Unary", "application/grpc-web+proto", frame(b"hello").to_vec());
    assert_eq!((status, ct.as_str()), (200, "application/grpc-web+proto"));
    assert_eq!(web_frames(&body), (vec!["echo: hello".to_string()], "grpc-status:0\r\n".to_string()));
    assert_eq!(up.versions.lock().unwrap().last(), Some(&http::Version::HTTP_2), "gRPC over HTTP/2 upstream");

    // Server streaming: the messages, then the trailers.
    let (_, _, body) = post("/echo.Echo/Stream", "application/grpc-web+proto", frame(b"").to_vec());
    assert_eq!(web_frames(&body).0, ["one", "two", "three"]);

    // The text form: base64 both ways.
    let b64 = base64::engine::general_purpose::STANDARD;
    let (status, ct, body) =
        post("/echo.Echo/Unary", "application/grpc-web-text", b64.encode(frame(b"text")).into_bytes());
    assert_eq!((status, ct.as_str()), (200, "application/grpc-web-text+proto"));
    let decoded = b64.decode(&body).expect("base64 answer");
    assert_eq!(web_frames(&decoded), (vec!["echo: text".to_string()], "grpc-status:0\r\n".to_string()));

    // No upstream: the gRPC status in the closing message.
    let (status, _, body) = post("/other.Svc/Call", "application/grpc-web+proto", frame(b"x").to_vec());
    assert_eq!(status, 200);
    let (messages, trailers) = web_frames(&body);
    assert!(messages.is_empty() && trailers.starts_with("grpc-status:14\r\n"), "{trailers:?}");
}
