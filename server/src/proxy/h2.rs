//! HTTP/2 over TLS to upstreams (gRPC and HTTP2 ports behind a
//! DestinationRule `tls`, and mesh peers over ISTIO_MUTUAL): one
//! multiplexed connection per endpoint, offered `h2` by ALPN, kept in the
//! endpoint's [`Health`](super::upstream::Health) across requests and
//! snapshots, and made again when it closes or the TLS settings change.
//! (Plaintext h2c goes through hyper's pooled client instead.)

use std::io;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::ProxyBody;
use super::h1::client::PoolSettings;
use super::tls::UpstreamTls;
use super::upstream::Health;

pub type Sender = hyper::client::conn::http2::SendRequest<ProxyBody>;

/// A ready sender on the endpoint's connection, connecting if there is none.
pub async fn sender(health: &Health, address: &str, tls: &UpstreamTls, settings: &PoolSettings) -> io::Result<Sender> {
    if let Some(mut sender) = health.h2(tls.fingerprint) {
        // Closed since it was kept (the peer went away): connect anew.
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    let connecting = async {
        let tcp = super::h1::client::tcp(address, settings).await?;
        let stream = tls.h2_connector.connect(tls.server_name.clone(), tcp).await?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the upstream did not agree to HTTP/2 (ALPN h2)"));
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // A peer that vanishes is found by pings, not by the next request.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        let peer = address.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, address = %peer, "upstream HTTP/2 connection ended");
            }
        });
        Ok(sender)
    };
    let sender = match tokio::time::timeout(settings.connect_timeout, connecting).await {
        Ok(sender) => sender?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    health.keep_h2(tls.fingerprint, sender.clone());
    Ok(sender)
}
