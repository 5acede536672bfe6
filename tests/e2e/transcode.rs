//! gRPC-JSON transcoding (`GrpcTranscoder`) against a real tonic server:
//! REST+JSON in at the gateway, gRPC over HTTP/2 to the upstream, JSON back;
//! a server stream as JSON lines; gRPC statuses as HTTP statuses.

use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::{Request, Response, Status};

use crate::support::Server;

#[derive(Clone, PartialEq, prost::Message)]
pub struct User {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(string, tag = "2")]
    pub display_name: String,
    /// `users.v1.Plan`: 1 FREE, 2 GOLD.
    #[prost(int32, tag = "3")]
    pub plan: i32,
    #[prost(string, repeated, tag = "4")]
    pub tags: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetUserRequest {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(string, tag = "2")]
    pub view: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CreateUserRequest {
    #[prost(string, tag = "1")]
    pub team: String,
    #[prost(message, optional, tag = "2")]
    pub user: Option<User>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListUsersRequest {
    #[prost(string, tag = "1")]
    pub team: String,
    #[prost(int32, tag = "2")]
    pub page_size: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListUsersResponse {
    #[prost(message, repeated, tag = "1")]
    pub users: Vec<User>,
}

type Users = Pin<Box<dyn futures_util::Stream<Item = Result<User, Status>> + Send>>;

async fn get_user(req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
    // `view: caller`: who called, as the mesh told it (x-forwarded-client-cert).
    let caller = req.metadata().get("x-forwarded-client-cert").and_then(|v| v.to_str().ok()).map(str::to_string);
    let r = req.into_inner();
    if r.view == "caller" {
        let name = caller.unwrap_or_else(|| "anonymous".into());
        return Ok(Response::new(User { id: r.id, display_name: name, plan: 0, tags: vec![] }));
    }
    if r.id == 404 {
        return Err(Status::not_found(format!("no user {}", r.id)));
    }
    let name = if r.view.is_empty() { format!("user {}", r.id) } else { format!("user {} ({})", r.id, r.view) };
    Ok(Response::new(User { id: r.id, display_name: name, plan: 2, tags: vec!["a".into(), "b".into()] }))
}

async fn create_user(req: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
    let r = req.into_inner();
    let mut user = r.user.ok_or_else(|| Status::invalid_argument("user is required"))?;
    user.id = 1;
    user.tags.push(format!("team:{}", r.team));
    Ok(Response::new(user))
}

async fn list_users(req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
    let r = req.into_inner();
    let users = (1..=r.page_size.max(0) as i64)
        .map(|id| User { id, display_name: format!("{} {id}", r.team), plan: 1, tags: vec![] })
        .collect();
    Ok(Response::new(ListUsersResponse { users }))
}

async fn watch_users(req: Request<ListUsersRequest>) -> Result<Response<Users>, Status> {
    let r = req.into_inner();
    let team = r.team.clone();
    let stream = async_stream(move |i| {
        let team = team.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match i {
                0..3 => Some(Ok(User { id: i + 1, display_name: format!("{team} {}", i + 1), plan: 0, tags: vec![] })),
                3 if team == "broken" => Some(Err(Status::internal("the feed broke"))),
                _ => None,
            }
        }
    });
    Ok(Response::new(Box::pin(stream)))
}

/// A stream of `f(0)`, `f(1)`, ... until it gives `None`.
fn async_stream<F, Fut>(f: F) -> impl futures_util::Stream<Item = Result<User, Status>> + Send
where
    F: Fn(i64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<Result<User, Status>>> + Send,
{
    futures_util::stream::unfold((0i64, f), |(i, f)| async move { f(i).await.map(|item| (item, (i + 1, f))) })
}

/// A tonic gRPC server (h2c) for `users.v1.UserService`.
pub struct UserService {
    pub port: u16,
    _rt: tokio::runtime::Runtime,
}

pub fn user_service() -> UserService {
    serve_users(None)
}

/// The same over TLS with this certificate and key (ALPN h2 only, as gRPC servers do).
pub fn user_service_tls(cert_pem: &str, key_pem: &str) -> UserService {
    use rustls_pki_types::pem::PemObject as _;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    serve_users(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))))
}

fn serve_users(tls: Option<tokio_rustls::TlsAcceptor>) -> UserService {
    use tonic::server::Grpc;
    use tonic_prost::ProstCodec;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let resp = match req.uri().path() {
                        "/users.v1.UserService/GetUser" => {
                            Grpc::new(ProstCodec::default()).unary(tower::service_fn(get_user), req).await
                        }
                        "/users.v1.UserService/CreateUser" => {
                            Grpc::new(ProstCodec::default()).unary(tower::service_fn(create_user), req).await
                        }
                        "/users.v1.UserService/ListUsers" => {
                            Grpc::new(ProstCodec::default()).unary(tower::service_fn(list_users), req).await
                        }
                        "/users.v1.UserService/WatchUsers" => {
                            Grpc::new(ProstCodec::default()).server_streaming(tower::service_fn(watch_users), req).await
                        }
                        _ => Status::unimplemented("no such method").into_http(),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    None => builder.serve_connection(TokioIo::new(stream), svc).await,
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else { return };
                        builder.serve_connection(TokioIo::new(stream), svc).await
                    }
                };
            });
        }
    });
    UserService { port, _rt: rt }
}

/// The users.proto descriptor set, base64, as `protoc --include_imports
/// --descriptor_set_out` would make it.
fn descriptor() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/proto");
    // Encoded by protox itself: prost_types' FileDescriptorSet would drop the options' extensions.
    let fds = protox::Compiler::new([root])
        .unwrap()
        .include_imports(true)
        .open_file("users/v1/users.proto")
        .unwrap()
        .encode_file_descriptor_set();
    base64::engine::general_purpose::STANDARD.encode(fds)
}

fn setup(up: &UserService, extra: &str) -> Server {
    let server = Server::start();
    server.apply(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [api.example.com]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: users}}
spec:
  hosts: [users.internal]
  resolution: STATIC
  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]
  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: users}}
spec:
  hosts: [api.example.com]
  gateways: [gw]
  http:
  - name: users
    route: [{{destination: {{host: users.internal}}}}]
---
apiVersion: meshgate.io/v1
kind: GrpcTranscoder
metadata: {{name: users}}
spec:
  targetRefs: [{{kind: VirtualService, name: users}}]
  services: [users.v1.UserService]
  protoDescriptorBin: {fds}
{extra}"#,
        port = up.port,
        fds = descriptor(),
    ));
    server
}

fn json(r: reqwest::blocking::Response) -> (u16, String, serde_json::Value) {
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = r.text().unwrap();
    (status, ct, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}")))
}

#[test]
fn rest_json_becomes_grpc_and_back() {
    let up = user_service();
    let server = setup(&up, "");
    let c = server.http();
    let send = |method: reqwest::Method, path: &str, body: Option<&str>| {
        let mut req = c.request(method, format!("http://{}{path}", server.http)).header("host", "api.example.com");
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        req.send().unwrap()
    };
    use reqwest::Method;

    // A path variable and a query parameter fill the request; int64 comes back as a string, enums by name.
    let (status, ct, body) = json(send(Method::GET, "/v1/users/7?view=full", None));
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    assert_eq!(
        body,
        serde_json::json!({"id": "7", "displayName": "user 7 (full)", "plan": "GOLD", "tags": ["a", "b"]})
    );
    // The annotation's additional binding reaches the same method.
    assert_eq!(json(send(Method::GET, "/v1/people/8", None)).2["displayName"], "user 8");

    // body: "user" — the JSON body is that field; the rest from the path.
    let (status, _, body) = json(send(
        Method::POST,
        "/v1/teams/core/users",
        Some(r#"{"displayName": "Ann", "plan": "FREE", "tags": ["new"]}"#),
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"id": "1", "displayName": "Ann", "plan": "FREE", "tags": ["new", "team:core"]})
    );

    // response_body: "users" — the field alone is the answer.
    let (status, _, body) = json(send(Method::GET, "/v1/teams/ops/users?pageSize=2", None));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body[1]["displayName"], "ops 2");

    // Every method as POST /package.Service/Method with the whole message as JSON.
    let (status, _, body) = json(send(Method::POST, "/users.v1.UserService/GetUser", Some(r#"{"id": "5"}"#)));
    assert_eq!((status, body["displayName"].as_str()), (200, Some("user 5")), "{body}");

    // gRPC errors as HTTP statuses, google.rpc.Status as the body.
    let (status, _, body) = json(send(Method::GET, "/v1/users/404", None));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body, serde_json::json!({"code": 5, "message": "no user 404"}));
    let (status, _, body) = json(send(Method::POST, "/v1/teams/core/users", Some("{\"nope\": 1}")));
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("nope"), "{body}");
    let (status, _, body) = json(send(Method::POST, "/v1/teams/core/users", Some("{not json")));
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("not JSON"), "{body}");
    let (status, _, body) = json(send(Method::GET, "/v1/users/7?colour=red", None));
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("\"colour\""), "{body}");
    let (status, _, body) = json(send(Method::GET, "/v1/users/seven", None));
    assert_eq!(status, 400, "{body}");

    // What matches no binding goes upstream as it is: tonic answers it in gRPC's own terms.
    let r = send(Method::GET, "/v2/other", None);
    assert_eq!(r.headers().get("grpc-status").map(|v| v.to_str().unwrap()), Some("12"), "{r:?}");

    // The route's dump shows the bindings.
    let dump = server.ok(&["proxy-config", "routes", "gateway", "-o", "json"]);
    assert!(dump.contains("GET /v1/users/{id} -> /users.v1.UserService/GetUser"), "{dump}");
}

#[test]
fn a_server_stream_comes_back_as_json_lines() {
    let up = user_service();
    let server = setup(&up, "  printOptions: {alwaysPrintPrimitiveFields: true, preserveProtoFieldNames: true}\n");
    let c = server.http();
    let get = |path: &str| {
        let r = c.get(format!("http://{}{path}", server.http)).header("host", "api.example.com").send().unwrap();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        (r.status().as_u16(), ct, r.text().unwrap())
    };
    let (status, ct, body) = get("/v1/teams/core/users:watch");
    assert_eq!((status, ct.as_str()), (200, "application/x-ndjson"), "{body}");
    let lines: Vec<serde_json::Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{body}");
    // printOptions: proto field names, defaults written.
    assert_eq!(
        lines[2],
        serde_json::json!({"id": "3", "display_name": "core 3", "plan": "PLAN_UNSPECIFIED", "tags": []})
    );

    // A stream that fails after its messages ends with an error line.
    let (status, _, body) = get("/v1/teams/broken/users:watch");
    assert_eq!(status, 200);
    let last: serde_json::Value = serde_json::from_str(body.lines().last().unwrap()).unwrap();
    assert_eq!(body.lines().count(), 4, "{body}");
    assert_eq!(last, serde_json::json!({"error": {"code": 13, "message": "the feed broke"}}));
}

#[test]
fn a_transcoder_with_a_wrong_service_is_refused_by_name() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: meshgate.io/v1\nkind: GrpcTranscoder\nmetadata: {{name: users}}\nspec:\n  targetRefs: [{{kind: VirtualService, name: users}}]\n  services: [users.v1.Users]\n  protoDescriptorBin: {}\n",
            descriptor()
        ),
    )
    .unwrap();
    let err = server.fails(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        err.contains("spec.services[0]") && err.contains("not in the descriptor set (it has: users.v1.UserService)"),
        "{err}"
    );
}
