//! API tests through `oneshot`: the real router and a real SQLite store, no socket.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use sqlx::SqlitePool;
use tower::ServiceExt as _;

use super::*;
use crate::store::{Store, new_token};

const TOKEN_SUBJECT: &str = "tester";

struct Api {
    router: Router,
    token: String,
    store: Store,
    logins: Arc<auth::LoginThrottle>,
}

async fn api(pool: SqlitePool) -> Api {
    let store = Store::from_pool(pool);
    let token = new_token();
    store.add_user(TOKEN_SUBJECT, "tester-password", crate::store::Role::Admin).await.unwrap();
    store.add_token(&token, TOKEN_SUBJECT, "admin", None).await.unwrap();
    let hub = crate::control::Hub::new();
    tokio::spawn(crate::control::run_compiler(hub.clone(), store.clone(), "svc.cluster.local".into(), String::new()));
    // The CA's key file lives in a folder that outlives the test's router.
    let ca_dir = tempfile::tempdir().unwrap().keep();
    let ca = Arc::new(crate::ca::Ca::load(&store, &ca_dir, "cluster.local", None).await.unwrap());
    let logins = Arc::new(auth::LoginThrottle::default());
    let state = AppState {
        ca,
        mesh_tls: None,
        logins: logins.clone(),
        hub,
        store: store.clone(),
        metrics: Arc::new(Metrics::new()),
        settings: Arc::new(Settings {
            cluster_domain: "svc.cluster.local".into(),
            trust_domain: "cluster.local".into(),
            secure_cookies: false,
        }),
    };
    Api { router: router(state), token, store, logins }
}

impl Api {
    async fn call(&self, method: &str, uri: &str, body: impl Into<Body>, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = self.router.clone().oneshot(req.body(body.into()).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    /// A JSON body, with its content type (as axum's `Json` wants).
    async fn send_json(&self, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
        )
    }

    async fn send(&self, method: &str, uri: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        self.call(method, uri, body, Some(&self.token.clone())).await
    }
}

const CANARY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public-gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["api.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: user-service-vs
  labels: {app: user-service}
spec:
  hosts: ["api.example.com"]
  gateways: [public-gw]
  http:
  - match: [{uri: {prefix: /v1/users}}]
    route:
    - destination: {host: user-service, subset: v1}
      weight: 80
    - destination: {host: user-service, subset: v2}
      weight: 20
    timeout: 5s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: user-service-dr}
spec:
  host: user-service
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

#[sqlx::test(migrations = "../migrations")]
async fn health_and_metrics_need_no_token_everything_else_does(pool: SqlitePool) {
    let api = api(pool).await;
    assert_eq!(api.call("GET", "/healthz", Body::empty(), None).await.0, StatusCode::OK);
    let (status, metrics) = api.call("GET", "/metrics", Body::empty(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.as_str().unwrap().contains("meshgate_config_revision"));

    for uri in ["/api/v1/virtualservices", "/api/openapi.json", "/api/v1/history"] {
        let (status, body) = api.call("GET", uri, Body::empty(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = api.call("GET", uri, Body::empty(), Some("mg_not_a_token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let (_, metrics) = api.call("GET", "/metrics", Body::empty(), None).await;
    assert!(metrics.as_str().unwrap().contains("meshgate_api_auth_failures_total 6"), "{metrics}");
}

#[sqlx::test(migrations = "../migrations")]
async fn apply_reports_per_object_outcomes(pool: SqlitePool) {
    let api = api(pool).await;
    let (status, body) = api.send("POST", "/api/v1/apply", CANARY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outcomes: Vec<&str> =
        body["results"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["created", "created", "created"]);

    let changed = CANARY.replace("weight: 80", "weight: 90").replace("weight: 20", "weight: 10");
    let (_, body) = api.send("POST", "/api/v1/apply", changed).await;
    let outcomes: Vec<&str> =
        body["results"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["unchanged", "configured", "unchanged"]);

    let (status, vs) =
        api.send("GET", "/api/v1/namespaces/default/virtualservices/user-service-vs", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(vs["spec"]["http"][0]["route"][0]["weight"], 90);
    assert_eq!(vs["metadata"]["resourceVersion"], "4");
    assert_eq!(vs["apiVersion"], "networking.istio.io/v1");
}

#[sqlx::test(migrations = "../migrations")]
async fn one_bad_document_rejects_the_whole_apply(pool: SqlitePool) {
    let api = api(pool).await;
    let bad = CANARY.replace("timeout: 5s", "retry: {attempts: 3}");
    let (status, body) = api.send("POST", "/api/v1/apply", bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let detail = &body["error"]["details"][0];
    assert!(detail["path"].as_str().unwrap().contains("document 2"), "{detail}");
    assert!(detail["path"].as_str().unwrap().ends_with("spec.http[0].retry"), "{detail}");
    assert_eq!(detail["reason"], "unknown field; did you mean \"retries\"?");
    let (_, list) = api.send("GET", "/api/v1/gateways", Body::empty()).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "nothing may be written");
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_bodies_get_clear_errors(pool: SqlitePool) {
    let api = api(pool).await;
    let (status, body) = api.send("POST", "/api/v1/apply", vec![0xff, 0xfe, 0x00]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("not UTF-8"));

    let big = "#".repeat(MAX_BODY + 1);
    let (status, body) = api.send("POST", "/api/v1/apply", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, body) = api.send("POST", "/api/v1/apply", "kind: Nope\napiVersion: v1\nmetadata: {name: x}\n").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"]["details"][0]["reason"].as_str().unwrap().contains("VirtualService (vs)"), "{body}");

    let (status, body) = api.send("POST", "/api/v1/apply", "a: [1, 2\nb: c\n").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"]["message"].as_str().unwrap().contains("line"), "{body}");

    let (status, _) = api.send("GET", "/api/v1/widgets", Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrations = "../migrations")]
async fn put_with_stale_version_gets_409(pool: SqlitePool) {
    let api = api(pool).await;
    api.send("POST", "/api/v1/apply", CANARY).await;
    let uri = "/api/v1/namespaces/default/destinationrules/user-service-dr";
    let (_, mut dr) = api.send("GET", uri, Body::empty()).await;
    dr["spec"]["subsets"][1]["labels"]["version"] = json!("v3");
    let (status, updated) = api.send("PUT", uri, dr.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["metadata"]["generation"], 2);
    // `dr` still carries the old resourceVersion.
    dr["spec"]["subsets"][1]["labels"]["version"] = json!("v4");
    let (status, body) = api.send("PUT", uri, dr.to_string()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "conflict");

    let (status, _) =
        api.send("PUT", "/api/v1/namespaces/default/destinationrules/other-name", updated.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "name must match the URL");
}

#[sqlx::test(migrations = "../migrations")]
async fn create_delete_and_list_with_selectors(pool: SqlitePool) {
    let api = api(pool).await;
    api.send("POST", "/api/v1/apply", CANARY).await;
    let (status, _) =
        api.send("POST", "/api/v1/namespaces/default/gateways", CANARY.split("---").next().unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, list) = api.send("GET", "/api/v1/virtualservices?labelSelector=app%3Duser-service", Body::empty()).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = api.send("GET", "/api/v1/virtualservices?labelSelector=app%3Dother", Body::empty()).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let (_, list) = api.send("GET", "/api/v1/namespaces/prod/virtualservices", Body::empty()).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);

    let uri = "/api/v1/namespaces/default/virtualservices/user-service-vs";
    let (status, body) = api.send("DELETE", uri, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "deleted");
    assert_eq!(api.send("GET", uri, Body::empty()).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.send("DELETE", uri, Body::empty()).await.0, StatusCode::NOT_FOUND);

    let (_, history) = api.send("GET", "/api/v1/history?kind=vs", Body::empty()).await;
    let ops: Vec<&str> = history["revisions"].as_array().unwrap().iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["create", "delete"]);
    assert_eq!(history["revisions"][1]["actor"], TOKEN_SUBJECT);

    let (status, body) = api.send("POST", "/api/v1/revisions/2/rollback", Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.send("GET", uri, Body::empty()).await.0, StatusCode::OK);
}

#[sqlx::test(migrations = "../migrations")]
async fn analyze_reports_broken_references(pool: SqlitePool) {
    let api = api(pool).await;
    api.send("POST", "/api/v1/apply", CANARY).await;
    let (status, body) = api.send("POST", "/api/v1/analyze", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let codes: Vec<&str> = body["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap()).collect();
    // user-service is not provided by any ServiceEntry yet.
    assert_eq!(codes, ["MG0104", "MG0104"], "{body}");

    let extra = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: other}\nspec:\n  hosts: [web.example.com]\n  gateways: [missing-gw, public-gw]\n  http:\n  - route:\n    - destination: {host: user-service, subset: v9}\n";
    let (_, body) = api.send("POST", "/api/v1/analyze", extra).await;
    let codes: Vec<&str> = body["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap()).collect();
    for code in ["MG0101", "MG0102", "MG0103"] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn openapi_describes_every_kind(pool: SqlitePool) {
    let api = api(pool).await;
    let (status, doc) = api.send("GET", "/api/openapi.json", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    for kind in meshgate_model::Kind::ALL {
        let path = format!("/api/v1/namespaces/{{namespace}}/{}/{{name}}", kind.plural());
        for method in ["get", "put", "delete"] {
            assert!(doc["paths"][&path][method].is_object(), "{path} {method}");
        }
    }
    assert!(doc["paths"]["/api/v1/apply"]["post"].is_object());
}

#[sqlx::test(migrations = "../migrations")]
async fn login_gives_a_session_cookie(pool: SqlitePool) {
    let api = api(pool).await;
    api.store.create_user("admin", "pw").await.unwrap();
    let login = |body: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/api/v1/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let resp = api.router.clone().oneshot(login(r#"{"username":"admin","password":"nope"}"#)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = api.router.clone().oneshot(login(r#"{"username":"admin","password":"pw"}"#)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
    let req = Request::builder().uri("/api/v1/whoami").header(header::COOKIE, cookie).body(Body::empty()).unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Logs in; the session cookie (`name=value`) and the login's JSON body.
async fn session(api: &Api, user: &str, password: &str) -> (String, Value) {
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"username": user, "password": password}).to_string()))
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "login as {user}");
    let cookie = resp.headers()[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    (cookie, body)
}

/// A request with the session cookie (and a CSRF header when given).
async fn with_cookie(api: &Api, method: &str, uri: &str, cookie: &str, csrf: Option<&str>, body: &str) -> StatusCode {
    let mut req = Request::builder().method(method).uri(uri).header(header::COOKIE, cookie);
    if let Some(c) = csrf {
        req = req.header(auth::CSRF_HEADER, c);
    }
    api.router.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap().status()
}

#[sqlx::test(migrations = "../migrations")]
async fn roles_limit_what_users_do(pool: SqlitePool) {
    let api = api(pool).await;
    // The admin (the test's token) makes an editor and a viewer.
    for (name, role) in [("erin", "editor"), ("vic", "viewer")] {
        let (status, body) = api
            .send_json(
                "POST",
                "/api/v1/users",
                &json!({"name": name, "password": "long-password", "role": role}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) =
        api.send_json("POST", "/api/v1/users", r#"{"name":"Bad Name","password":"x","role":"root"}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"][0]["path"], "name", "{body}");
    let (_, users) = api.send("GET", "/api/v1/users", Body::empty()).await;
    let names: Vec<&str> = users["items"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["erin", "tester", "vic"]);
    assert!(users.to_string().find("argon2").is_none(), "no password hashes: {users}");

    let (viewer, v) = session(&api, "vic", "long-password").await;
    assert_eq!(v["role"], "viewer");
    let csrf = v["csrf"].as_str().unwrap().to_string();
    // A viewer reads, and every write is refused, CSRF token or not.
    assert_eq!(with_cookie(&api, "GET", "/api/v1/virtualservices", &viewer, None, "").await, StatusCode::OK);
    assert_eq!(with_cookie(&api, "POST", "/api/v1/apply", &viewer, Some(&csrf), CANARY).await, StatusCode::FORBIDDEN);
    assert_eq!(
        with_cookie(&api, "DELETE", "/api/v1/namespaces/default/gateways/public-gw", &viewer, Some(&csrf), "").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(with_cookie(&api, "GET", "/api/v1/secrets", &viewer, None, "").await, StatusCode::FORBIDDEN);
    assert_eq!(with_cookie(&api, "GET", "/api/v1/users", &viewer, None, "").await, StatusCode::FORBIDDEN);
    // An editor changes configuration, with the CSRF token only.
    let (editor, e) = session(&api, "erin", "long-password").await;
    let ecsrf = e["csrf"].as_str().unwrap().to_string();
    assert_eq!(with_cookie(&api, "POST", "/api/v1/apply", &editor, None, CANARY).await, StatusCode::FORBIDDEN);
    assert_eq!(with_cookie(&api, "POST", "/api/v1/apply", &editor, Some(&csrf), CANARY).await, StatusCode::FORBIDDEN);
    assert_eq!(with_cookie(&api, "POST", "/api/v1/apply", &editor, Some(&ecsrf), CANARY).await, StatusCode::OK);
    assert_eq!(
        with_cookie(
            &api,
            "POST",
            "/api/v1/users",
            &editor,
            Some(&ecsrf),
            r#"{"name":"x","password":"12345678","role":"admin"}"#
        )
        .await,
        StatusCode::FORBIDDEN
    );
    // whoami gives the console its role and CSRF token back after a reload.
    let req = Request::builder().uri("/api/v1/whoami").header(header::COOKIE, &editor).body(Body::empty()).unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    let me: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        (me["user"].as_str(), me["role"].as_str(), me["csrf"].as_str()),
        (Some("erin"), Some("editor"), Some(&*ecsrf))
    );
    // A demoted editor loses the right at once; a deleted user's session ends.
    let (status, _) = api.send_json("PUT", "/api/v1/users/erin", r#"{"role":"viewer"}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(with_cookie(&api, "POST", "/api/v1/apply", &editor, Some(&ecsrf), CANARY).await, StatusCode::FORBIDDEN);
    let (status, _) = api.send("DELETE", "/api/v1/users/erin", Body::empty()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(with_cookie(&api, "GET", "/api/v1/whoami", &editor, None, "").await, StatusCode::UNAUTHORIZED);
    // The last admin stays.
    let (status, body) = api.send_json("PUT", "/api/v1/users/tester", r#"{"role":"viewer"}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // A viewer's own API token acts as a viewer.
    let (status, tok) =
        api.send_json("POST", "/api/v1/api-tokens", r#"{"user":"vic","description":"ci","ttl":"24h"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{tok}");
    let vic_token = tok["token"].as_str().unwrap();
    assert_eq!(api.call("GET", "/api/v1/virtualservices", Body::empty(), Some(vic_token)).await.0, StatusCode::OK);
    assert_eq!(api.call("POST", "/api/v1/apply", CANARY, Some(vic_token)).await.0, StatusCode::FORBIDDEN);
    let (_, listed) = api.call("GET", "/api/v1/api-tokens", Body::empty(), Some(vic_token)).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "a viewer sees only their own tokens: {listed}");
    assert_eq!(listed["items"][0]["description"], "ci");
}

#[sqlx::test(migrations = "../migrations")]
async fn logins_are_throttled_and_idle_sessions_end(pool: SqlitePool) {
    let api = api(pool).await;
    let login = |password: &str| {
        Request::builder()
            .method("POST")
            .uri("/api/v1/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"username": "tester", "password": password}).to_string()))
            .unwrap()
    };
    for _ in 0..5 {
        let resp = api.router.clone().oneshot(login("wrong")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // Now even the right password waits.
    let resp = api.router.clone().oneshot(login("tester-password")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = resp.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    // A success clears the count (the wait itself is not waited out here).
    api.logins.succeeded("tester");
    let (cookie, _) = session(&api, "tester", "tester-password").await;
    assert_eq!(with_cookie(&api, "GET", "/api/v1/whoami", &cookie, None, "").await, StatusCode::OK);
    // A session unused for longer than the idle limit ends.
    let old = (chrono::Utc::now() - auth::SESSION_IDLE - chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    sqlx::query("UPDATE tokens SET last_used_at = ? WHERE purpose = 'session'")
        .bind(old)
        .execute(api.store.pool())
        .await
        .unwrap();
    assert_eq!(with_cookie(&api, "GET", "/api/v1/whoami", &cookie, None, "").await, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrations = "../migrations")]
async fn tls_secrets_fold_string_data_and_round_trip(pool: SqlitePool) {
    let api = api(pool).await;
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: api-cert}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: \"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n\"\n  tls.key: \"-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n\"\n";
    let (status, body) = api.send("POST", "/api/v1/apply", secret).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, doc) = api.send("GET", "/api/v1/namespaces/default/secrets/api-cert", Body::empty()).await;
    assert_eq!(doc["type"], "kubernetes.io/tls");
    assert!(doc["data"]["tls.crt"].as_str().unwrap().starts_with("LS0tLS1CRUdJTi"), "{doc}");
    assert!(doc.get("spec").is_none() && doc.get("stringData").is_none(), "{doc}");
    let (_, again) = api.send("POST", "/api/v1/apply", doc.to_string()).await;
    assert_eq!(again["results"][0]["outcome"], "unchanged", "{again}");

    let bad = secret.replace("kubernetes.io/tls", "kubernetes.io/dockerconfigjson");
    let (status, body) = api.send("POST", "/api/v1/apply", bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"][0]["path"], "document 1 (Secret/default/api-cert): type", "{body}");
}
