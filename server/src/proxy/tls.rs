//! TLS termination for Gateway servers: certificates come from
//! `kubernetes.io/tls` Secrets named by `credentialName`, chosen per
//! connection by SNI from the current snapshot, so new certificates apply
//! without a restart. TLS 1.2 and 1.3; ALPN h2 and http/1.1.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::control::Hub;

/// What one Gateway server host is served with.
pub struct Served {
    pub key: Arc<CertifiedKey>,
    /// MUTUAL or OPTIONAL_MUTUAL: a configuration that asks for (and
    /// verifies) client certificates; `None` for SIMPLE.
    pub mutual: Option<Arc<rustls::ServerConfig>>,
}

/// The certificates served on one Gateway port, by SNI.
#[derive(Default)]
pub struct Certificates {
    pub exact: HashMap<String, Arc<Served>>,
    /// `(suffix, cert)` for `*.example.com` (stored as `.example.com`), longest first.
    pub wildcards: Vec<(String, Arc<Served>)>,
    /// The certificate of a `*` server host: for names nothing else covers.
    pub star: Option<Arc<Served>>,
    /// The port's first certificate, for clients that send no SNI when there is no `*` host.
    pub first: Option<Arc<Served>>,
}

impl Certificates {
    pub fn find(&self, sni: Option<&str>) -> Option<Arc<Served>> {
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

/// A server configuration that requires (MUTUAL) or accepts (OPTIONAL_MUTUAL)
/// client certificates signed by `ca_pem`, serving `key`.
pub fn mutual_config(
    key: Arc<CertifiedKey>,
    ca_pem: &[u8],
    crl_pem: Option<&[u8]>,
    optional: bool,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.map_err(|e| format!("ca.crt: {e}"))?).map_err(|e| format!("ca.crt: {e}"))?;
    }
    if roots.is_empty() {
        return Err("ca.crt holds no certificate".into());
    }
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(pem) = crl_pem {
        verifier = verifier.with_crls(crls(pem, "ca.crl")?).only_check_end_entity_revocation();
    }
    if optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().map_err(|e| format!("ca.crt: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Fixed(key)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
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
        snapshot.certificates.get(&self.port)?.find(hello.server_name()).map(|s| s.key.clone())
    }
}

/// TLS termination for one Gateway port: reads the ClientHello first, then
/// completes the handshake with the configuration of the server its SNI
/// names (one asking for client certificates for MUTUAL servers).
#[derive(Clone)]
pub struct GatewayTls {
    hub: Arc<Hub>,
    port: u32,
    simple: Arc<rustls::ServerConfig>,
}

impl GatewayTls {
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        let mutual = {
            let snapshot = self.hub.snapshot();
            let hello = start.client_hello();
            snapshot
                .certificates
                .get(&self.port)
                .and_then(|c| c.find(hello.server_name()))
                .and_then(|s| s.mutual.clone())
        };
        start.into_stream(mutual.unwrap_or_else(|| self.simple.clone())).await
    }
}

/// The TLS acceptor for a Gateway port.
pub fn acceptor(hub: Arc<Hub>, port: u32) -> GatewayTls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SnapshotResolver { hub: hub.clone(), port }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    GatewayTls { hub, port, simple: Arc::new(config) }
}

/// A client certificate at the gateway (MUTUAL): its principal as
/// AuthorizationPolicy's `principals` match it (the URI SAN without
/// `spiffe://`, else the first DNS SAN, else the subject's CN, as Envoy
/// picks it) and the `x-forwarded-client-cert` value sent upstream
/// (`Hash=...;Subject="...";URI=...;DNS=...`, Envoy's format).
pub fn client_identity(cert: &CertificateDer<'_>) -> Option<(String, http::HeaderValue)> {
    use sha2::Digest as _;
    use x509_parser::prelude::{FromDer as _, GeneralName};
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    let subject = parsed.subject().to_string();
    let cn = parsed.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).map(str::to_string);
    let principal = uris
        .first()
        .map(|u| u.strip_prefix("spiffe://").unwrap_or(u).to_string())
        .or_else(|| dns.first().cloned())
        .or(cn)?;
    let mut xfcc = format!(
        "Hash={};Subject=\"{}\"",
        hex::encode(sha2::Sha256::digest(cert.as_ref())),
        subject.replace('"', "\\\"")
    );
    for u in &uris {
        xfcc.push_str(&format!(";URI={u}"));
    }
    for d in &dns {
        xfcc.push_str(&format!(";DNS={d}"));
    }
    Some((principal, http::HeaderValue::from_str(&xfcc).ok()?))
}

/// TLS towards an upstream, from a DestinationRule's `tls` (SIMPLE or
/// MUTUAL): the client configuration and the name sent as SNI and
/// verified in the upstream's certificate.
pub struct UpstreamTls {
    /// Offers HTTP/1.1 by ALPN.
    pub connector: tokio_rustls::TlsConnector,
    /// The same settings offering h2 (gRPC and other HTTP/2 upstreams).
    pub h2_connector: tokio_rustls::TlsConnector,
    pub server_name: rustls_pki_types::ServerName<'static>,
    /// Identifies these settings: pooled connections made under other
    /// settings (an earlier config) are not reused.
    pub fingerprint: u64,
    /// The DestinationRule mode it implements, for config dumps.
    pub mode: &'static str,
}

impl UpstreamTls {
    /// Istio's mutual TLS to another workload of the mesh (its identity
    /// and the metadata exchange go with each request).
    pub fn mesh_peer(&self) -> bool {
        self.mode == "ISTIO_MUTUAL"
    }
}

/// What an upstream TLS configuration is made of, resolved from the
/// DestinationRule (PEM bytes from a Secret or from files).
pub struct UpstreamTlsSpec<'a> {
    /// PEM CA certificates; `None` trusts the system's roots.
    pub ca: Option<&'a [u8]>,
    /// PEM chain and key of a client certificate (MUTUAL).
    pub identity: Option<(&'a [u8], &'a [u8])>,
    /// PEM certificate revocation lists the server's certificate is checked against.
    pub crl: Option<&'a [u8]>,
    pub sni: &'a str,
    /// Names accepted in the upstream's certificate instead of `sni`.
    pub subject_alt_names: &'a [String],
    pub insecure_skip_verify: bool,
}

/// Certificate revocation lists, PEM (`caCrl`, a Secret's `ca.crl`). A
/// certificate is checked against its issuer's list; one whose issuer has
/// no list here is refused, as Envoy refuses it.
pub fn crls(pem: &[u8], what: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let lists = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if lists.is_empty() {
        return Err(format!("{what} holds no certificate revocation list (PEM X509 CRL)"));
    }
    Ok(lists)
}

/// A client configuration's twin that offers h2 instead of HTTP/1.1.
fn h2_connector(config: &rustls::ClientConfig) -> tokio_rustls::TlsConnector {
    let mut h2 = config.clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(h2))
}

impl UpstreamTls {
    /// ISTIO_MUTUAL: this proxy's mesh certificate as the client's, the
    /// peer checked against the mesh roots and, when `expect` names any,
    /// for one of those SPIFFE IDs (else any mesh workload).
    pub fn mesh(identity: &crate::ca::MeshIdentity, expect: &[String]) -> Result<UpstreamTls, String> {
        use crate::ca::verify::{Accept, Anchors, MeshVerifier};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let accept = if expect.is_empty() { Accept::Any } else { Accept::OneOf(expect.to_vec()) };
        let verifier = MeshVerifier::new(Anchors::Roots(identity.roots.clone()), accept);
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| format!("mesh certificate: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut fingerprint = sha2::Sha256::new();
        use sha2::Digest as _;
        fingerprint.update(b"mesh");
        fingerprint.update(identity.chain.first().map_or(&[][..], |c| c.as_ref()));
        for n in expect {
            fingerprint.update(n.as_bytes());
            fingerprint.update([0]);
        }
        let digest = fingerprint.finalize();
        Ok(UpstreamTls {
            h2_connector: h2_connector(&config),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            // Mesh peers are checked by SPIFFE ID, not by name; the SNI is informational.
            server_name: rustls_pki_types::ServerName::try_from("outbound.mesh.internal").map_err(|e| e.to_string())?,
            fingerprint: u64::from_le_bytes(digest[..8].try_into().unwrap_or_default()),
            mode: "ISTIO_MUTUAL",
        })
    }

    pub fn new(spec: &UpstreamTlsSpec<'_>) -> Result<UpstreamTls, String> {
        use rustls::client::WebPkiServerVerifier;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_name = rustls_pki_types::ServerName::try_from(spec.sni.to_string())
            .map_err(|_| format!("{:?} is not a valid TLS server name", spec.sni))?;
        let mut roots = rustls::RootCertStore::empty();
        match spec.ca {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    roots
                        .add(cert.map_err(|e| format!("CA certificates: {e}"))?)
                        .map_err(|e| format!("CA certificate: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("the CA certificates hold no certificate".into());
                }
            }
            None => roots = system_roots()?,
        }
        let mut webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if let Some(pem) = spec.crl {
            webpki = webpki.with_crls(crls(pem, "caCrl")?).only_check_end_entity_revocation();
        }
        let webpki = webpki.build().map_err(|e| format!("CA certificates: {e}"))?;
        let alt_names = spec
            .subject_alt_names
            .iter()
            .map(|n| {
                rustls_pki_types::ServerName::try_from(n.clone())
                    .map_err(|_| format!("subjectAltNames: {n:?} is not a name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let verifier =
            Arc::new(Verifier { webpki, alt_names, insecure: spec.insecure_skip_verify, provider: provider.clone() });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match spec.identity {
            None => builder.with_no_client_auth(),
            Some((chain_pem, key_pem)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("client certificate: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("client key: {e}"))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut fingerprint = sha2::Sha256::new();
        use sha2::Digest as _;
        for part in [spec.ca.unwrap_or(b"system"), spec.sni.as_bytes(), spec.crl.unwrap_or_default()] {
            fingerprint.update(part);
            fingerprint.update([0]);
        }
        if let Some((c, k)) = spec.identity {
            fingerprint.update(c);
            fingerprint.update(k);
        }
        for n in spec.subject_alt_names {
            fingerprint.update(n.as_bytes());
        }
        fingerprint.update([u8::from(spec.insecure_skip_verify)]);
        let digest = fingerprint.finalize();
        let fingerprint = u64::from_le_bytes(digest[..8].try_into().unwrap_or_default());
        Ok(UpstreamTls {
            h2_connector: h2_connector(&config),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            fingerprint,
            mode: if spec.identity.is_some() { "MUTUAL" } else { "SIMPLE" },
        })
    }
}

/// A client configuration that trusts the host's roots (for fetching a
/// JWKS and the like), made once.
pub fn web_client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = system_roots()?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// The host's trusted roots (Debian/Ubuntu, Fedora/RHEL, Alpine, or
/// `SSL_CERT_FILE`), read once.
fn system_roots() -> Result<rustls::RootCertStore, String> {
    static ROOTS: std::sync::OnceLock<Result<rustls::RootCertStore, String>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let candidates = std::env::var("SSL_CERT_FILE").ok().into_iter().chain(
                ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]
                    .map(String::from),
            );
            for path in candidates {
                let Ok(pem) = std::fs::read(&path) else { continue };
                let mut roots = rustls::RootCertStore::empty();
                let (_, _) = roots.add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).flatten());
                if !roots.is_empty() {
                    return Ok(roots);
                }
            }
            Err("no system CA bundle found (set SSL_CERT_FILE or give caCertificates)".into())
        })
        .clone()
}

/// Verifies the upstream's certificate against the roots, for the SNI name
/// or (when `subjectAltNames` is set) for any of those names; or accepts
/// any certificate with `insecureSkipVerify` (signatures are still checked).
#[derive(Debug)]
struct Verifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    alt_names: Vec<rustls_pki_types::ServerName<'static>>,
    insecure: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        if self.alt_names.is_empty() {
            return self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        }
        let mut last = rustls::Error::General("no subjectAltNames".into());
        for name in &self.alt_names {
            match self.webpki.verify_server_cert(end_entity, intermediates, name, ocsp_response, now) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
