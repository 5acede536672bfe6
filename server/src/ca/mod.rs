//! meshgate's certificate authority: the only code that holds CA keys.
//!
//! A self-signed root (ECDSA P-256, 10 years) is made at first start, its
//! key sealed (ChaCha20-Poly1305) with a key file in the data dir (0600)
//! and the sealed form kept in the store; or the user brings a root or an
//! intermediate (`--ca-cert`/`--ca-key`, a "plug-in CA" as Istio calls it),
//! read from its files at every start and never copied.
//!
//! Workload certificates are issued from a CSR (the workload's private key
//! never leaves it) for an identity the caller has proven, whatever names
//! the CSR asks for: the SPIFFE ID
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` as the
//! only SAN, usable for TLS server and client authentication.

pub mod identity;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::aead;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

pub use identity::SpiffeId;

use crate::store::Store;

/// A workload certificate's lifetime unless asked otherwise (Istio's default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a workload certificate may live.
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest (tests renew quickly; below this, clock skew dominates).
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// A self-made root lives this long.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this far in the past, for clocks a little behind.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);
const SEAL_CONTEXT: &[u8] = b"meshgate CA key v1";

/// The CA: its signing key and certificate, the chain to send after a leaf,
/// and the roots workloads trust. A rotation swaps these while serving.
pub struct Ca {
    trust_domain: String,
    current: arc_swap::ArcSwap<Signing>,
    /// The key that seals self-made roots' keys; `None` for a plug-in CA,
    /// which is rotated by restarting with new files.
    kek: Option<[u8; 32]>,
}

struct Signing {
    signer: KeyPair,
    signer_cert: CertificateDer<'static>,
    /// Certificates between a leaf and the root, signer first: a plug-in
    /// CA's intermediates, or during a rotation the new root cross-signed
    /// by the old one (so peers that trust only the old root verify it).
    intermediates: Vec<CertificateDer<'static>>,
    /// The signing root first, then any older one still trusted.
    roots: Vec<CertificateDer<'static>>,
    /// When the signing root was made (stored form), for a self-made root.
    since: Option<String>,
}

/// A proxy's own mesh credentials: its certificate chain and key, and the
/// roots it trusts for its peers.
pub struct MeshIdentity {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshIdentity").field("id", &self.id).field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

impl MeshIdentity {
    /// The certificate as `proxy-config secret` shows it: identity, serial,
    /// validity and the roots trusted (never the key).
    pub fn describe(&self) -> serde_json::Value {
        use x509_parser::prelude::FromDer as _;
        let parsed = self.chain.first().and_then(|c| x509_parser::certificate::X509Certificate::from_der(c).ok());
        let (serial, not_before, not_after) = parsed.map_or((String::new(), 0, 0), |(_, c)| {
            let v = c.validity();
            (hex::encode(c.raw_serial()), v.not_before.timestamp(), v.not_after.timestamp())
        });
        let at = |t: i64| rfc3339(OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH));
        let now = OffsetDateTime::now_utc().unix_timestamp();
        serde_json::json!({
            "identity": self.id.to_string(),
            "serial": serial,
            "notBefore": at(not_before),
            "notAfter": at(not_after),
            "valid": not_before <= now && now < not_after,
            "chainLength": self.chain.len(),
            "roots": self.roots.iter().map(fingerprint).collect::<Vec<_>>(),
        })
    }
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub identity: SpiffeId,
    /// The leaf and its intermediates, PEM.
    pub chain_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub serial: String,
    pub not_after: OffsetDateTime,
    /// Fingerprint of the root it chains to (the signing root).
    pub root: String,
}

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the certificate signing request is not valid PEM or DER, or its signature does not verify: {0}")]
    BadRequest(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

impl Ca {
    /// Loads the CA: the plug-in files when given, else the stored root
    /// (made and stored at first start).
    pub async fn load(
        store: &Store,
        data_dir: &Path,
        trust_domain: &str,
        plugin: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Ca> {
        if let Some((cert, key)) = plugin {
            return Ca::plug_in(cert, key, trust_domain);
        }
        let kek = key_encryption_key(data_dir)?;
        let mut stored = store.ca_roots().await?;
        if !stored.iter().any(|r| r.active) {
            let (cert_pem, key) = make_root(trust_domain, "meshgate mesh CA")?;
            let sealed = seal(&kek, &key.serialize_der())?;
            let der = first_cert(&cert_pem).context("the new root")?;
            let not_after = OffsetDateTime::now_utc() + ROOT_TTL;
            store.add_ca_root(&cert_pem, &sealed, &fingerprint(&der), &rfc3339(not_after), None).await?;
            tracing::info!(fingerprint = %fingerprint(&der), "created the mesh CA root");
            stored = store.ca_roots().await?;
        }
        let signing = signing_from(&stored, &kek).with_context(|| {
            format!(
                "cannot open the CA key with {}: the key file does not belong to this database",
                data_dir.join("ca.key").display()
            )
        })?;
        Ok(Ca {
            trust_domain: trust_domain.to_string(),
            current: arc_swap::ArcSwap::from_pointee(signing),
            kek: Some(kek),
        })
    }

    /// Starts a root rotation: a new self-made root signs from now on; the
    /// old one stays trusted, and each new leaf carries the new root
    /// cross-signed by the old, so peers that have not renewed yet (and
    /// trust only the old root) verify it. Returns the new fingerprint.
    pub async fn rotate(&self, store: &Store) -> Result<String, RotateError> {
        let kek = self.kek.ok_or(RotateError::PluggedIn)?;
        let old = self.current.load_full();
        let name = format!("meshgate mesh CA {}", rfc3339(OffsetDateTime::now_utc()));
        let (params, key) = root_params(&self.trust_domain, &name).map_err(RotateError::other)?;
        let cert = params.self_signed(&key).map_err(RotateError::other)?;
        let old_issuer = Issuer::from_ca_cert_der(&old.signer_cert, &old.signer).map_err(RotateError::other)?;
        let mut cross_params = params.clone();
        cross_params.serial_number = Some(random_serial());
        let cross = cross_params.signed_by(&key, &old_issuer).map_err(RotateError::other)?;
        let sealed = seal(&kek, &key.serialize_der()).map_err(RotateError::Other)?;
        let der = cert.der().clone();
        store
            .add_ca_root(&cert.pem(), &sealed, &fingerprint(&der), &rfc3339(params.not_after), Some(&cross.pem()))
            .await?;
        let stored = store.ca_roots().await?;
        self.current.store(Arc::new(signing_from(&stored, &kek).map_err(RotateError::Other)?));
        tracing::info!(fingerprint = %fingerprint(&der), previous = %fingerprint(&old.signer_cert), "mesh CA root rotated; the previous root stays trusted until retired");
        Ok(fingerprint(&der))
    }

    /// Ends a rotation: roots that no longer sign stop being trusted. While
    /// workload certificates from them are still valid this is refused
    /// (they renew at half their lifetime), unless `force`.
    pub async fn retire(&self, store: &Store, force: bool) -> Result<Vec<String>, RotateError> {
        let kek = self.kek.ok_or(RotateError::PluggedIn)?;
        let current = self.current.load_full();
        if current.roots.len() < 2 {
            return Err(RotateError::NothingToRetire);
        }
        let (left, last) = store.certificates_valid_from_other_roots(&current.signing_root()).await?;
        if left > 0 && !force {
            return Err(RotateError::StillInUse { left, last: last.unwrap_or_default() });
        }
        let gone = store.retire_ca_roots().await?;
        let stored = store.ca_roots().await?;
        self.current.store(Arc::new(signing_from(&stored, &kek).map_err(RotateError::Other)?));
        tracing::info!(retired = ?gone, "old mesh CA roots retired");
        Ok(gone)
    }

    /// The stored roots as the admin API shows them (self-made CA), and
    /// whether a rotation is under way.
    pub async fn status(&self, store: &Store) -> anyhow::Result<serde_json::Value> {
        let current = self.current.load_full();
        let mut v = self.summary();
        v["pluggedIn"] = serde_json::json!(self.kek.is_none());
        if self.kek.is_some() {
            let stored = store.ca_roots().await?;
            v["bundle"] = stored
                .iter()
                .rev()
                .map(|r| {
                    serde_json::json!({
                        "fingerprint": r.fingerprint, "signing": r.active,
                        "createdAt": r.created_at, "notAfter": r.not_after,
                    })
                })
                .collect();
            if current.roots.len() > 1 {
                let (left, last) = store.certificates_valid_from_other_roots(&current.signing_root()).await?;
                v["rotation"] = serde_json::json!({ "oldRootCertificatesValid": left, "lastExpires": last });
            }
        }
        Ok(v)
    }

    fn plug_in(cert: &Path, key: &Path, trust_domain: &str) -> anyhow::Result<Ca> {
        let pem = std::fs::read(cert).with_context(|| format!("cannot read --ca-cert {}", cert.display()))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--ca-cert {}: not PEM certificates: {e}", cert.display()))?;
        let Some(signer_cert) = certs.first().cloned() else {
            bail!("--ca-cert {}: no certificate in the file", cert.display());
        };
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| anyhow::anyhow!("--ca-key {}: not a PEM private key: {e}", key.display()))?;
        let signer = KeyPair::try_from(&key_der)
            .map_err(|e| anyhow::anyhow!("--ca-key {}: unsupported key: {e}", key.display()))?;
        if !same_public_key(&signer_cert, &signer) {
            bail!("--ca-key {} is not the key of the first certificate in --ca-cert {}", key.display(), cert.display());
        }
        // The last certificate is the root the workloads trust; the others go after each leaf.
        let root = certs.last().cloned().unwrap_or_else(|| signer_cert.clone());
        let intermediates = if certs.len() > 1 { certs[..certs.len() - 1].to_vec() } else { Vec::new() };
        let signing = Signing { signer, signer_cert, intermediates, roots: vec![root], since: None };
        Ok(Ca { trust_domain: trust_domain.to_string(), current: arc_swap::ArcSwap::from_pointee(signing), kek: None })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots workloads trust, the signing one first.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().roots.clone()
    }

    pub fn roots_pem(&self) -> String {
        self.current.load().roots.iter().map(pem_cert).collect()
    }

    /// `sha256:HEX` of the signing root, what agents pin with `--ca-fingerprint`.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current.load().roots[0])
    }

    /// Trust domain, root fingerprint and roots, as the admin API and the mesh port show them.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({ "trustDomain": self.trust_domain, "fingerprint": self.fingerprint(), "roots": self.roots_pem() })
    }

    /// When the signing root expires (Unix seconds).
    pub fn root_expiry(&self) -> Option<i64> {
        let current = self.current.load();
        let (_, cert) = x509_parser::parse_x509_certificate(current.roots.first()?.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// Checks that `csr` parses and its signature verifies.
    pub fn check_csr(&self, csr: &[u8]) -> Result<(), IssueError> {
        parse_csr(csr).map(|_| ())
    }

    /// Signs `csr` (PEM or DER) for `identity`, which the caller has proven;
    /// the CSR's own names are ignored.
    pub fn issue(&self, csr: &[u8], identity: &SpiffeId, ttl: Duration) -> Result<Issued, IssueError> {
        let request = parse_csr(csr)?;
        let params = leaf_params(identity, ttl, &[])?;
        let signed = CertificateSigningRequestParams { params: params.clone(), public_key: request.public_key };
        let current = self.current.load();
        let cert = signed.signed_by(&current.issuer()?).map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(current.issued(identity, cert.der().clone(), &params))
    }

    /// A certificate and key for meshgate's own use (the mesh listener, the
    /// gateway's identity): made here, so the key is this process's own.
    pub fn issue_own(
        &self,
        identity: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<(Issued, PrivateKeyDer<'static>), IssueError> {
        let key = KeyPair::generate().map_err(|e| IssueError::Signing(e.to_string()))?;
        let params = leaf_params(identity, ttl, dns_names)?;
        let current = self.current.load();
        let cert = params.signed_by(&key, &current.issuer()?).map_err(|e| IssueError::Signing(e.to_string()))?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok((current.issued(identity, cert.der().clone(), &params), key_der))
    }

    /// Credentials for one of meshgate's own proxies (the gateway), made here.
    pub fn identity(&self, id: &SpiffeId, ttl: Duration) -> Result<MeshIdentity, IssueError> {
        let (issued, key) = self.issue_own(id, &[], ttl)?;
        Ok(MeshIdentity { id: id.clone(), chain: issued.chain, key, roots: self.roots(), not_after: issued.not_after })
    }
}

impl Signing {
    /// The signing root, and when it was made (stored form; self-made root).
    fn signing_root(&self) -> crate::store::SigningRoot {
        crate::store::SigningRoot {
            fingerprint: fingerprint(&self.roots[0]),
            since: self.since.clone().unwrap_or_default(),
        }
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, IssueError> {
        Issuer::from_ca_cert_der(&self.signer_cert, &self.signer).map_err(|e| IssueError::Signing(e.to_string()))
    }

    fn issued(&self, identity: &SpiffeId, leaf: CertificateDer<'static>, params: &CertificateParams) -> Issued {
        let mut chain = vec![leaf];
        chain.extend(self.intermediates.iter().cloned());
        let serial = params.serial_number.as_ref().map(|s| hex::encode(s.to_bytes())).unwrap_or_default();
        Issued {
            identity: identity.clone(),
            chain_pem: chain.iter().map(pem_cert).collect(),
            chain,
            serial,
            not_after: params.not_after,
            root: fingerprint(&self.roots[0]),
        }
    }
}

fn parse_csr(csr: &[u8]) -> Result<CertificateSigningRequestParams, IssueError> {
    let der = match CertificateSigningRequestDer::from_pem_slice(csr) {
        Ok(d) => d,
        Err(_) => CertificateSigningRequestDer::from(csr.to_vec()),
    };
    CertificateSigningRequestParams::from_der(&der).map_err(|e| IssueError::BadRequest(e.to_string()))
}

fn leaf_params(identity: &SpiffeId, ttl: Duration, dns_names: &[String]) -> Result<CertificateParams, IssueError> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = now + ttl.clamp(MIN_TTL, MAX_TTL);
    params.serial_number = Some(random_serial());
    params.distinguished_name = DistinguishedName::new();
    let uri = identity.to_string().try_into().map_err(|e: rcgen::Error| IssueError::Signing(e.to_string()))?;
    params.subject_alt_names.push(SanType::URI(uri));
    for name in dns_names {
        // An address is named as one (an IP SAN), not as a DNS name.
        if let Ok(ip) = name.parse::<std::net::IpAddr>() {
            params.subject_alt_names.push(SanType::IpAddress(ip));
            continue;
        }
        let dns = name.clone().try_into().map_err(|e: rcgen::Error| IssueError::Signing(e.to_string()))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn make_root(trust_domain: &str, name: &str) -> anyhow::Result<(String, KeyPair)> {
    let (params, key) = root_params(trust_domain, name)?;
    let cert = params.self_signed(&key).context("signing the CA root")?;
    Ok((cert.pem(), key))
}

/// A new root's key and certificate parameters (ECDSA P-256, 10 years).
fn root_params(trust_domain: &str, name: &str) -> anyhow::Result<(CertificateParams, KeyPair)> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::default();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_TTL;
    params.distinguished_name.push(DnType::OrganizationName, trust_domain);
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    Ok((params, key))
}

/// 16 random bytes, positive and 16 bytes long (so its hex is unambiguous).
fn random_serial() -> SerialNumber {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    SerialNumber::from_slice(&serial)
}

/// The signing state from the stored roots: the active one signs; while
/// older ones remain, its cross-signed certificate goes after each leaf.
fn signing_from(stored: &[crate::store::StoredRoot], kek: &[u8; 32]) -> anyhow::Result<Signing> {
    let active = stored.iter().rev().find(|r| r.active).context("no active CA root in the store")?;
    let signer = key_pair(&open(kek, &active.sealed_key)?)?;
    let signer_cert = first_cert(&active.cert_pem).context("the stored CA root")?;
    let mut roots = vec![signer_cert.clone()];
    for r in stored.iter().rev().filter(|r| !r.active) {
        if let Ok(der) = first_cert(&r.cert_pem)
            && !roots.contains(&der)
        {
            roots.push(der);
        }
    }
    let intermediates = match &active.cross_signed_pem {
        Some(pem) if roots.len() > 1 => vec![first_cert(pem).context("the cross-signed root")?],
        _ => Vec::new(),
    };
    Ok(Signing { signer, signer_cert, intermediates, roots, since: Some(active.created_at.clone()) })
}

/// Why a rotation step was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("this CA is plugged in (--ca-cert/--ca-key): rotate it by restarting with the new files")]
    PluggedIn,
    #[error("no rotation is under way: only the signing root is trusted")]
    NothingToRetire,
    #[error(
        "{left} workload certificate(s) from the old root are still valid (the last until {last}); agents renew at half their lifetime, so retire after that, or force it"
    )]
    StillInUse { left: i64, last: String },
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl From<crate::store::StoreError> for RotateError {
    fn from(e: crate::store::StoreError) -> RotateError {
        RotateError::Other(e.into())
    }
}

impl RotateError {
    fn other(e: impl std::fmt::Display) -> RotateError {
        RotateError::Other(anyhow::anyhow!("{e}"))
    }
}

fn key_pair(der: &[u8]) -> anyhow::Result<KeyPair> {
    let key = PrivateKeyDer::try_from(der.to_vec()).map_err(|e| anyhow::anyhow!("the CA key: {e}"))?;
    KeyPair::try_from(&key).map_err(|e| anyhow::anyhow!("the CA key: {e}"))
}

fn same_public_key(cert: &CertificateDer<'_>, key: &KeyPair) -> bool {
    use x509_parser::prelude::FromDer as _;
    x509_parser::certificate::X509Certificate::from_der(cert)
        .is_ok_and(|(_, c)| c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

fn first_cert(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))
}

/// `sha256:HEX` of a certificate's DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

pub fn pem_cert(cert: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The key that seals the CA key at rest: `DATA_DIR/ca.key` (0600), made at first start.
fn key_encryption_key(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path: PathBuf = data_dir.join("ca.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
            let Some(bytes) = bytes else {
                bail!("{} is not a CA key file (64 hex digits)", path.display());
            };
            let mut key = [0u8; 32];
            key.copy_from_slice(&bytes);
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            crate::server::write_private(&path, &format!("{}\n", hex::encode(key)))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn seal(kek: &[u8; 32], plain: &[u8]) -> anyhow::Result<Vec<u8>> {
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, kek).map_err(|_| anyhow::anyhow!("sealing key"))?,
    );
    let nonce: [u8; 12] = rand::random();
    let mut sealed = plain.to_vec();
    key.seal_in_place_append_tag(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(SEAL_CONTEXT), &mut sealed)
        .map_err(|_| anyhow::anyhow!("sealing the CA key"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open(kek: &[u8; 32], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
    if sealed.len() < 12 + aead::CHACHA20_POLY1305.tag_len() {
        bail!("the sealed CA key is truncated");
    }
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, kek).map_err(|_| anyhow::anyhow!("sealing key"))?,
    );
    let (nonce, body) = sealed.split_at(12);
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
    let mut body = body.to_vec();
    let plain = key
        .open_in_place(nonce, aead::Aad::from(SEAL_CONTEXT), &mut body)
        .map_err(|_| anyhow::anyhow!("the sealed CA key does not open with this key file"))?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests;
