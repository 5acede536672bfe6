//! The agent's one connection to the control plane: HTTP/2 over mTLS with
//! its workload certificate, carrying the config stream, status reports,
//! health and registration side by side. Pings find a dead peer (the
//! control plane pings too, so it learns of a lost agent); the link is made
//! again when it breaks or the certificate is renewed.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use super::{Endpoint, sidecar::Sidecar};
use crate::ca::MeshIdentity;

/// How often an idle link is pinged, and how long a ping may take.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

type Sender = SendRequest<Full<bytes::Bytes>>;

pub struct Link {
    endpoint: Endpoint,
    sidecar: Arc<Sidecar>,
    /// The open connection and the certificate it was made with.
    current: tokio::sync::Mutex<Option<(Arc<MeshIdentity>, Sender)>>,
    /// Counts the connections made, so others can act on each new one.
    made: tokio::sync::watch::Sender<u64>,
}

impl Link {
    pub fn new(endpoint: Endpoint, sidecar: Arc<Sidecar>) -> Link {
        Link { endpoint, sidecar, current: tokio::sync::Mutex::new(None), made: tokio::sync::watch::channel(0).0 }
    }

    /// Changes with every new connection to the control plane.
    pub fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.made.subscribe()
    }

    /// One request over the link: the answer's JSON (`None` for 204), or its error.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Option<Value>> {
        let mut sender = self.sender().await?;
        let uri = format!("https://{}:{}{path}", self.endpoint.host, self.endpoint.port);
        let req = super::request(method, &uri, &self.endpoint, None, body)?;
        // Long enough for a config long poll (the control plane answers within 25 s).
        let sent = tokio::time::timeout(Duration::from_secs(40), sender.send_request(req)).await;
        match sent {
            Ok(Ok(resp)) => super::answer(resp).await,
            Ok(Err(e)) => {
                self.current.lock().await.take();
                Err(anyhow::Error::new(e).context("the link to the control plane broke"))
            }
            Err(_) => {
                self.current.lock().await.take();
                anyhow::bail!("the control plane did not answer in time")
            }
        }
    }

    /// Sends spans as OTLP/protobuf to the control plane's trace store.
    pub async fn send_spans(&self, body: bytes::Bytes) -> anyhow::Result<()> {
        let mut sender = self.sender().await?;
        let uri = format!("https://{}:{}/v1/traces", self.endpoint.host, self.endpoint.port);
        let req = http::Request::post(uri)
            .header(http::header::HOST, format!("{}:{}", self.endpoint.host, self.endpoint.port))
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))?;
        match tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => anyhow::bail!("the control plane refused the spans (HTTP {})", resp.status().as_u16()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the link to the control plane broke")),
            Err(_) => anyhow::bail!("the control plane did not take the spans in time"),
        }
    }

    async fn sender(&self) -> anyhow::Result<Sender> {
        let identity = self.sidecar.identity.load_full();
        let mut current = self.current.lock().await;
        if let Some((made_with, sender)) = current.as_ref()
            && Arc::ptr_eq(made_with, &identity)
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let mut tls = (*super::mtls(&self.sidecar)?).clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let stream = super::connect(&self.endpoint, Arc::new(tls)).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "the link to the control plane closed");
            }
        });
        *current = Some((identity, sender.clone()));
        self.made.send_modify(|n| *n += 1);
        Ok(sender)
    }
}
