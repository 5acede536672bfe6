//! The console's only way to the server: the public REST API, with the
//! session cookie (sent by the browser) and, on writes, the CSRF token that
//! login and `whoami` give.

use std::cell::RefCell;

use serde_json::Value;
use wasm_bindgen::JsCast as _;
use wasm_bindgen_futures::JsFuture;

thread_local! {
    static CSRF: RefCell<Option<String>> = const { RefCell::new(None) };
}

pub fn set_csrf(token: Option<String>) {
    CSRF.with(|c| *c.borrow_mut() = token);
}

/// An answer that was not a success: the API's `{"error": ...}` read out.
#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    pub status: u16,
    pub message: String,
    /// (field path, reason)
    pub details: Vec<(String, String)>,
}

impl Error {
    fn network(e: impl std::fmt::Debug) -> Error {
        Error { status: 0, message: format!("the server did not answer: {e:?}"), details: Vec::new() }
    }

    /// The reason given for one field, if any.
    pub fn at(&self, path: &str) -> Option<String> {
        self.details.iter().find(|(p, _)| p == path).map(|(_, r)| r.clone())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for (p, r) in &self.details {
            write!(f, "; {p}: {r}")?;
        }
        Ok(())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub async fn get(path: &str) -> Result<Value> {
    call("GET", path, None).await
}

pub async fn post(path: &str, body: &Value) -> Result<Value> {
    call("POST", path, Some(body.to_string())).await
}

pub async fn put(path: &str, body: &Value) -> Result<Value> {
    call("PUT", path, Some(body.to_string())).await
}

pub async fn delete(path: &str) -> Result<Value> {
    call("DELETE", path, None).await
}

/// Sends YAML (or JSON) text as it is, e.g. to `/api/v1/apply`.
pub async fn post_text(path: &str, text: &str) -> Result<Value> {
    call("POST", path, Some(text.to_string())).await
}

/// How long the console waits for an answer: a page shows its sections once
/// each has one, so a hung request must end as an error, not "Loading…"
/// forever. Writes get longer (an apply answers once the proxies have it).
const READ_TIMEOUT_MS: u32 = 20_000;
const WRITE_TIMEOUT_MS: u32 = 60_000;

async fn call(method: &str, path: &str, body: Option<String>) -> Result<Value> {
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    let wait = if method == "GET" { READ_TIMEOUT_MS } else { WRITE_TIMEOUT_MS };
    init.set_signal(Some(&web_sys::AbortSignal::timeout_with_u32(wait)));
    init.set_credentials(web_sys::RequestCredentials::SameOrigin);
    let headers = web_sys::Headers::new().map_err(Error::network)?;
    headers.set("accept", "application/json").map_err(Error::network)?;
    if let Some(b) = &body {
        let kind = if b.trim_start().starts_with('{') { "application/json" } else { "application/yaml" };
        headers.set("content-type", kind).map_err(Error::network)?;
        init.set_body(&wasm_bindgen::JsValue::from_str(b));
    }
    if method != "GET"
        && let Some(token) = CSRF.with(|c| c.borrow().clone())
    {
        headers.set("x-csrf-token", &token).map_err(Error::network)?;
    }
    init.set_headers(&headers);
    let request = web_sys::Request::new_with_str_and_init(path, &init).map_err(Error::network)?;
    let window = web_sys::window().ok_or_else(|| Error::network("no window"))?;
    let timed_out =
        |e: &wasm_bindgen::JsValue| e.dyn_ref::<web_sys::DomException>().is_some_and(|d| d.name() == "TimeoutError");
    let no_answer = |e: wasm_bindgen::JsValue| {
        if timed_out(&e) {
            Error {
                status: 0,
                message: format!("no answer from the server within {} s", wait / 1000),
                details: Vec::new(),
            }
        } else {
            Error::network(e)
        }
    };
    let resp: web_sys::Response =
        JsFuture::from(window.fetch_with_request(&request)).await.map_err(no_answer)?.unchecked_into();
    let status = resp.status();
    let text = JsFuture::from(resp.text().map_err(Error::network)?).await.map_err(no_answer)?;
    let text = text.as_string().unwrap_or_default();
    let value: Value =
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    if (200..300).contains(&status) {
        return Ok(value);
    }
    if status == 401 && !path.ends_with("/login") {
        crate::session_ended();
    }
    let e = &value["error"];
    Err(Error {
        status,
        message: e["message"].as_str().map_or_else(|| format!("HTTP {status}"), str::to_string),
        details: e["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|x| {
                        (x["path"].as_str().unwrap_or("").to_string(), x["reason"].as_str().unwrap_or("").to_string())
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Query-string escaping for values the user typed.
pub fn escape(s: &str) -> String {
    js_sys::encode_uri_component(s).as_string().unwrap_or_default()
}
