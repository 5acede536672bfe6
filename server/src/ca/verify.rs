//! Checking a peer's certificate the mesh way: the chain must lead to a
//! mesh root and the leaf must carry an acceptable SPIFFE ID. Host names
//! play no part (workloads are addressed by IP, on any host), as in Istio.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{SpiffeId, fingerprint};

/// Which roots a peer's chain may end at.
#[derive(Debug, Clone)]
pub enum Anchors {
    /// These roots (the mesh's trust bundle).
    Roots(Vec<CertificateDer<'static>>),
    /// Whichever certificate the peer sends whose SHA-256 is this
    /// (`sha256:HEX`): how an agent checks the control plane before it has
    /// the roots, from the fingerprint its operator gave it.
    Pinned(String),
}

/// Which peer identities are acceptable.
#[derive(Debug, Clone)]
pub enum Accept {
    /// Any workload of the mesh.
    Any,
    /// meshgate's control plane only.
    ControlPlane,
    /// One of these SPIFFE IDs (a DestinationRule's `subjectAltNames`).
    OneOf(Vec<String>),
}

impl Accept {
    fn admits(&self, id: &SpiffeId) -> bool {
        match self {
            Accept::Any => true,
            Accept::ControlPlane => id.is_control_plane(),
            Accept::OneOf(ids) => {
                let id = id.to_string();
                ids.contains(&id)
            }
        }
    }
}

/// A rustls server-certificate check for mesh peers.
#[derive(Debug)]
pub struct MeshVerifier {
    anchors: Anchors,
    accept: Accept,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl MeshVerifier {
    pub fn new(anchors: Anchors, accept: Accept) -> MeshVerifier {
        MeshVerifier { anchors, accept, provider: Arc::new(rustls::crypto::ring::default_provider()) }
    }

    /// Verifies `end_entity` (with `intermediates`) at `now`; returns its identity.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, rustls::Error> {
        let roots: Vec<CertificateDer<'_>> = match &self.anchors {
            Anchors::Roots(r) => r.iter().map(|c| CertificateDer::from(c.as_ref())).collect(),
            Anchors::Pinned(pin) => {
                let found = intermediates.iter().chain(std::iter::once(end_entity)).find(|c| fingerprint(c) == *pin);
                match found {
                    Some(c) => vec![CertificateDer::from(c.as_ref())],
                    None => {
                        return Err(rustls::Error::General(format!(
                            "the server's certificate chain has no certificate with fingerprint {pin}"
                        )));
                    }
                }
            }
        };
        let anchors = roots
            .iter()
            .map(webpki::anchor_from_trusted_cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| rustls::Error::General(format!("mesh root: {e}")))?;
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        // The leaf is usable for both server and client auth; check the one this peer plays.
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("peer certificate does not chain to the mesh CA: {e}")))?;
        let id = SpiffeId::from_cert(end_entity)
            .ok_or_else(|| rustls::Error::General("peer certificate carries no SPIFFE ID".into()))?;
        if !self.accept.admits(&id) {
            return Err(rustls::Error::General(format!("peer identity {id} is not the one expected")));
        }
        Ok(id)
    }
}

impl ServerCertVerifier for MeshVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS server configuration with `chain`/`key` that asks peers for a
/// mesh certificate and verifies it against `roots` when one is given
/// (whether one is required is the caller's decision, per connection).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ServerConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
