//! `/api/openapi.json`: an OpenAPI 3.1 description of every route, built
//! from the same kind table the router uses, so the two cannot drift.

use axum::Json;
use meshgate_model::Kind;
use serde_json::{Map, Value, json};

pub async fn serve() -> Json<Value> {
    Json(document())
}

fn op(summary: &str, params: &[&str], body: Option<&str>, ok: &str) -> Value {
    let mut o = json!({
        "summary": summary,
        "parameters": params.iter().map(|p| param(p)).collect::<Vec<_>>(),
        "responses": {
            ok: {"description": "success", "content": {"application/json": {"schema": {"type": "object"}}}},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "409": {"$ref": "#/components/responses/Error"},
            "413": {"$ref": "#/components/responses/Error"},
            "422": {"$ref": "#/components/responses/Error"},
        },
    });
    if let Some(desc) = body {
        o["requestBody"] = json!({
            "required": true,
            "description": desc,
            "content": {
                "application/yaml": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        });
    }
    o
}

fn param(spec: &str) -> Value {
    // "in:name:type"
    let mut it = spec.splitn(3, ':');
    let (loc, name, ty) = (it.next().unwrap_or("query"), it.next().unwrap_or(""), it.next().unwrap_or("string"));
    json!({"in": loc, "name": name, "required": loc == "path", "schema": {"type": ty}})
}

pub fn document() -> Value {
    let mut paths = Map::new();
    let mut add = |path: &str, method: &str, v: Value| {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method] = v;
    };
    add(
        "/healthz",
        "get",
        json!({"summary": "Liveness; no token needed", "security": [], "responses": {"200": {"description": "ok"}}}),
    );
    add(
        "/metrics",
        "get",
        json!({"summary": "Prometheus metrics; no token needed", "security": [], "responses": {"200": {"description": "text exposition format"}}}),
    );
    add("/api/openapi.json", "get", op("This document", &[], None, "200"));
    add(
        "/api/v1/login",
        "post",
        json!({
            "summary": "Exchange user name and password for a session cookie (HttpOnly, SameSite=Strict; ends after 30 min unused or 12 h) and, in the body, the token, role and the CSRF token that cookie-authenticated writes send as x-csrf-token; 5 failures in a row make further tries wait (429, Retry-After)",
            "security": [],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"username": {"type": "string"}, "password": {"type": "string"}}}}}},
            "responses": {"200": {"description": "session created"}, "401": {"$ref": "#/components/responses/Error"}, "429": {"$ref": "#/components/responses/Error"}},
        }),
    );
    add("/api/v1/logout", "post", op("End the current session", &[], None, "204"));
    add(
        "/api/v1/whoami",
        "get",
        op("The authenticated user, their role, and (with the session cookie) the CSRF token", &[], None, "200"),
    );
    add(
        "/api/v1/apply",
        "post",
        op(
            "Apply multi-document YAML or JSON, all or nothing; per-object outcome created|configured|unchanged",
            &["query:namespace:string", "query:dryRun:boolean"],
            Some("One or more resource documents"),
            "200",
        ),
    );
    add(
        "/api/v1/analyze",
        "post",
        op(
            "Analyze the stored configuration, with optional documents laid over it",
            &["query:namespace:string"],
            Some("Optional documents to check before applying them"),
            "200",
        ),
    );
    add(
        "/api/v1/history",
        "get",
        op(
            "The change log, oldest first",
            &[
                "query:kind:string",
                "query:namespace:string",
                "query:name:string",
                "query:limit:integer",
                "query:objects:boolean",
            ],
            None,
            "200",
        ),
    );
    add(
        "/api/v1/revisions/{revision}",
        "get",
        op("One revision with the object before and after", &["path:revision:integer"], None, "200"),
    );
    add(
        "/api/v1/revisions/{revision}/rollback",
        "post",
        op(
            "Restore the configuration as it was right after this revision, as new revisions",
            &["path:revision:integer"],
            None,
            "200",
        ),
    );
    add(
        "/api/v1/tokens",
        "post",
        op(
            "Create a mesh join token {service, namespace?, serviceAccount?, ttl?, singleUse?}; the secret is in this answer only",
            &[],
            Some("The token's scope and lifetime"),
            "201",
        ),
    );
    add("/api/v1/tokens", "get", op("Join tokens (never their secrets)", &[], None, "200"));
    add("/api/v1/tokens/{id}", "delete", op("Revoke a join token", &["path:id:string"], None, "200"));
    add(
        "/api/v1/ca",
        "get",
        op("The mesh CA: trust domain, signing root, trusted roots, rotation progress", &[], None, "200"),
    );
    add(
        "/api/v1/ca/rotate",
        "post",
        op("Start a root rotation: a new root signs, the old stays trusted", &[], None, "200"),
    );
    add(
        "/api/v1/ca/retire",
        "post",
        op(
            "End a rotation: stop trusting old roots (409 while their certificates are valid)",
            &["query:force:boolean"],
            None,
            "200",
        ),
    );
    add("/api/v1/certificates", "get", op("Workload certificates issued, newest first", &[], None, "200"));
    add(
        "/api/v1/apikeys",
        "post",
        op(
            "Make an API key for a Consumer {consumer, namespace?}; the key is in this answer only",
            &[],
            Some("The consumer"),
            "201",
        ),
    );
    add(
        "/api/v1/apikeys",
        "get",
        op(
            "API keys (never the keys), newest first",
            &["query:consumer:string", "query:namespace:string"],
            None,
            "200",
        ),
    );
    add("/api/v1/apikeys/{id}", "delete", op("Revoke an API key", &["path:id:string"], None, "200"));
    add("/api/v1/users", "get", op("Users and their roles (admins only)", &[], None, "200"));
    add(
        "/api/v1/users",
        "post",
        op("Add a user {name, password, role: admin|editor|viewer} (admins only)", &[], Some("The user"), "201"),
    );
    add(
        "/api/v1/users/{name}",
        "put",
        op(
            "Change a user's {password?, role?}; a new password ends their sessions (admins only)",
            &["path:name:string"],
            Some("The change"),
            "200",
        ),
    );
    add(
        "/api/v1/users/{name}",
        "delete",
        op("Remove a user and their tokens (admins only)", &["path:name:string"], None, "204"),
    );
    add(
        "/api/v1/me/password",
        "post",
        op("Change one's own password {currentPassword, newPassword}", &[], Some("The passwords"), "204"),
    );
    add(
        "/api/v1/api-tokens",
        "get",
        op("API tokens (never the tokens): one's own; admins see everyone's", &[], None, "200"),
    );
    add(
        "/api/v1/api-tokens",
        "post",
        op(
            "Make an API token {description?, ttl?, user? (admins)}; acts with its user's role; the token is in this answer only",
            &[],
            Some("The token's description"),
            "201",
        ),
    );
    add("/api/v1/api-tokens/{id}", "delete", op("Revoke an API token", &["path:id:string"], None, "204"));
    add(
        "/api/v1/proxy-status",
        "get",
        op("Every proxy, the revision it runs: SYNCED, STALE, NACK or DISCONNECTED", &[], None, "200"),
    );
    add(
        "/api/v1/proxy-config/{name}",
        "get",
        op(
            "What a proxy runs (`gateway` or an agent's name): routes, clusters, endpoints with live health, certificate",
            &["path:name:string"],
            None,
            "200",
        ),
    );
    for kind in Kind::ALL {
        let (k, p) = (kind.name(), kind.plural());
        add(
            &format!("/api/v1/{p}"),
            "get",
            op(&format!("List {k} in all namespaces"), &["query:labelSelector:string"], None, "200"),
        );
        let coll = format!("/api/v1/namespaces/{{namespace}}/{p}");
        add(
            &coll,
            "get",
            op(
                &format!("List {k} in a namespace"),
                &["path:namespace:string", "query:labelSelector:string"],
                None,
                "200",
            ),
        );
        add(&coll, "post", op(&format!("Create a {k}; 409 if it exists"), &["path:namespace:string"], Some(k), "201"));
        let item = format!("{coll}/{{name}}");
        let ids = ["path:namespace:string", "path:name:string"];
        add(&item, "get", op(&format!("Read a {k}"), &ids, None, "200"));
        add(
            &item,
            "put",
            op(&format!("Create or replace a {k}; a stale metadata.resourceVersion gets 409"), &ids, Some(k), "200"),
        );
        add(
            &item,
            "delete",
            op(
                &format!("Delete a {k}"),
                &["path:namespace:string", "path:name:string", "query:resourceVersion:string"],
                None,
                "200",
            ),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "meshgate admin API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": super::auth::SESSION_COOKIE},
            },
            "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {"Error": {
                "type": "object",
                "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object", "properties": {
                        "path": {"type": "string"}, "reason": {"type": "string"}}}},
                }}},
            }},
        },
    })
}
