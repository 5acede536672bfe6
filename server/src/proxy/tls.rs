//! TLS termination for Gateway servers: certificates come from
//! `kubernetes.io/tls` Secrets named by `credentialName`, chosen per
//! connection by SNI from the current snapshot, so new certificates apply
//! without a restart. TLS 1.2 and 1.3; ALPN h2 and http/1.1.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::control::Hub;

/// The certificates served on one Gateway port, by SNI.
#[derive(Default)]
pub struct Certificates {
    pub exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(suffix, cert)` for `*.example.com` (stored as `.example.com`), longest first.
    pub wildcards: Vec<(String, Arc<CertifiedKey>)>,
    /// The certificate of a `*` server host: for names nothing else covers.
    pub star: Option<Arc<CertifiedKey>>,
    /// The port's first certificate, for clients that send no SNI when there is no `*` host.
    pub first: Option<Arc<CertifiedKey>>,
}

impl Certificates {
    pub fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let fallback = || self.star.clone().or_else(|| self.first.clone());
        let Some(name) = sni.map(str::to_ascii_lowercase) else { return fallback() };
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, c)| c.clone())
            .or_else(fallback)
    }
}

/// Builds a certificate from a Secret's PEM chain and key.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain_pem).collect::<Result<_, _>>().map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls.key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("tls.key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| format!("tls.crt and tls.key do not belong together: {e}"))?;
    Ok(Arc::new(ck))
}

/// Picks the certificate from whatever snapshot is current at handshake time.
#[derive(Debug)]
struct SnapshotResolver {
    hub: Arc<Hub>,
    port: u32,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

impl ResolvesServerCert for SnapshotResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.hub.snapshot();
        snapshot.certificates.get(&self.port)?.find(hello.server_name())
    }
}

/// The TLS acceptor for a Gateway port.
pub fn acceptor(hub: Arc<Hub>, port: u32) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SnapshotResolver { hub, port }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
