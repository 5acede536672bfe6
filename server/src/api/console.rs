//! The web console's files, embedded at build time (see `build.rs`):
//! `/assets/*` under content-hashed names (cached for a year), every other
//! page path answered with `index.html` (not cached), so the console's own
//! router draws the page. A client that takes gzip gets the file's gzip form.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/console_files.rs"));

/// The page's rules: its own scripts, wasm and API only; no framing.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(path: &str) -> Option<&'static [u8]> {
    FILES.binary_search_by(|(p, _)| (*p).cmp(path)).ok().map(|i| FILES[i].1)
}

/// Whether the console was built into this binary.
pub fn built() -> bool {
    file("index.html").is_some()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn takes_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        },
    )
}

/// Serves `path` (without its leading `/`) from the embedded files.
fn serve(path: &str, headers: &HeaderMap, cache: &'static str) -> Option<Response> {
    let plain = file(path)?;
    let gz = takes_gzip(headers).then(|| file(&format!("{path}.gz"))).flatten();
    let mut resp = Response::new(Body::from(gz.unwrap_or(plain)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if gz.is_some() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Some(resp)
}

/// `GET /assets/...`: a file of the console.
pub async fn asset(axum::extract::Path(rest): axum::extract::Path<String>, headers: HeaderMap) -> Response {
    serve(&format!("assets/{rest}"), &headers, "public, max-age=31536000, immutable")
        .unwrap_or_else(|| super::ApiError::not_found(format!("no console file assets/{rest}")).into_response())
}

/// A page of the console: `index.html`, whatever the path.
pub fn page(headers: &HeaderMap) -> Response {
    let Some(mut resp) = serve("index.html", headers, "no-cache") else { return not_built() };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

fn not_built() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>meshgate</title><h1>meshgate</h1>\
         <p>This binary was built without its web console: build it with <code>cargo xtask up</code> \
         (or <code>cargo xtask web</code>, then build meshgate). The admin API is at <code>/api/v1</code>, \
         described by <a href=\"/api/openapi.json\">/api/openapi.json</a> (needs a token); \
         <a href=\"/healthz\">/healthz</a> and <a href=\"/metrics\">/metrics</a> are open.</p>",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_chosen_from_accept_encoding() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(takes_gzip(&h("gzip, deflate, br")));
        assert!(takes_gzip(&h("br;q=1.0, gzip;q=0.8")));
        assert!(!takes_gzip(&h("gzip;q=0, br")));
        assert!(!takes_gzip(&h("identity")));
        assert!(!takes_gzip(&HeaderMap::new()));
    }

    #[test]
    fn files_are_sorted_for_lookup() {
        assert!(FILES.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
