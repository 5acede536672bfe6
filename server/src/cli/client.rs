//! A small blocking client of the admin REST API.

use anyhow::{Context as _, bail};
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct Client {
    base: String,
    token: String,
    http: Http,
    /// The roots an `https://` server's certificate must chain to.
    roots: Vec<reqwest::Certificate>,
}

/// An error the server answered with, in its JSON shape.
#[derive(Debug)]
pub struct ServerError {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<(String, String)>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status.as_u16())?;
        for (path, reason) in &self.details {
            write!(f, "\n  {path}: {reason}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

impl Client {
    /// `ca_file`: PEM roots for an `https://` server [default:
    /// ./meshgate-data/admin-ca.pem, which `meshgate up --admin-tls` writes].
    pub fn new(server: &str, token: Option<&str>, ca_file: Option<&std::path::Path>) -> anyhow::Result<Client> {
        let token = match token {
            Some(t) => t.to_string(),
            None => {
                let path = std::path::Path::new("meshgate-data").join("admin.token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no token: pass --token, set MESHGATE_TOKEN, or run from the folder holding {}",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let default_ca = std::path::Path::new("meshgate-data").join("admin-ca.pem");
        let ca_file =
            ca_file.or_else(|| (server.starts_with("https://") && default_ca.exists()).then_some(&*default_ca));
        let roots = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
                reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("--ca-file {}", path.display()))?
            }
            None => Vec::new(),
        };
        let http = Self::builder(&roots).timeout(std::time::Duration::from_secs(60)).build()?;
        Ok(Client { base: server.trim_end_matches('/').to_string(), token, http, roots })
    }

    fn builder(roots: &[reqwest::Certificate]) -> reqwest::blocking::ClientBuilder {
        roots.iter().fold(Http::builder(), |b, c| b.add_root_certificate(c.clone()))
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    /// Sends and returns the JSON body, or the server's error.
    pub fn send(&self, req: RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().with_context(|| format!("cannot reach meshgate at {} (--server)", self.base))?;
        decode(resp)
    }

    /// A streamed answer (no overall timeout), or the server's error.
    pub fn stream(&self, path: &str) -> anyhow::Result<Response> {
        let http = Self::builder(&self.roots).timeout(None).build()?;
        let resp = http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("cannot reach meshgate at {} (--server)", self.base))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        decode(resp)?;
        bail!("HTTP {}", status.as_u16())
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, path))
    }
}

fn decode(resp: Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().context("reading the server's answer")?;
    if status.is_success() {
        if text.is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_str(&text).context("the server's answer is not JSON");
    }
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    let err = &v["error"];
    let Some(message) = err["message"].as_str() else {
        bail!("HTTP {}: {}", status.as_u16(), text.trim());
    };
    let details = err["details"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .map(|d| (d["path"].as_str().unwrap_or("").to_string(), d["reason"].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    Err(ServerError { status, message: message.to_string(), details }.into())
}
