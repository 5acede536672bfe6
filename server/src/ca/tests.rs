use super::verify::{Accept, Anchors, MeshVerifier};
use super::*;

fn csr_for(key: &KeyPair, asked: &str) -> String {
    let mut params = CertificateParams::new(vec![asked.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, asked);
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn now() -> rustls_pki_types::UnixTime {
    rustls_pki_types::UnixTime::now()
}

async fn fresh() -> (tempfile::TempDir, Store, Ca) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::open(&dir.path().join("meshgate.db")).await.unwrap();
    let ca = Ca::load(&store, dir.path(), "cluster.local", None).await.unwrap();
    (dir, store, ca)
}

#[tokio::test]
async fn the_root_is_made_once_and_its_key_is_sealed() {
    let (dir, store, ca) = fresh().await;
    let again = Ca::load(&store, dir.path(), "cluster.local", None).await.unwrap();
    assert_eq!(ca.fingerprint(), again.fingerprint(), "the second start uses the stored root");
    assert!(ca.fingerprint().starts_with("sha256:") && ca.fingerprint().len() == 7 + 64);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The database holds the key only sealed: the plain key's bytes are nowhere in it.
    let roots = store.ca_roots().await.unwrap();
    assert_eq!(roots.len(), 1);
    let kek = key_encryption_key(dir.path()).unwrap();
    let plain = open(&kek, &roots[0].sealed_key).unwrap();
    assert!(!roots[0].sealed_key.windows(plain.len()).any(|w| w == plain.as_slice()));
    let db = std::fs::read(dir.path().join("meshgate.db")).unwrap();
    assert!(!db.windows(32).any(|w| plain.windows(32).any(|p| p == w)), "no 32-byte run of the key in the file");

    // Another key file cannot open it, and says so.
    std::fs::write(dir.path().join("ca.key"), format!("{}\n", hex::encode([7u8; 32]))).unwrap();
    let err = Ca::load(&store, dir.path(), "cluster.local", None).await.err().unwrap();
    assert!(format!("{err:#}").contains("does not belong to this database"), "{err:#}");
}

#[tokio::test]
async fn a_csr_gets_exactly_the_proven_identity() {
    let (_dir, _store, ca) = fresh().await;
    let key = KeyPair::generate().unwrap();
    let id = SpiffeId::new("cluster.local", "default", "user-service").unwrap();
    let issued = ca.issue(csr_for(&key, "admin.example.com").as_bytes(), &id, Duration::from_secs(3600)).unwrap();
    assert_eq!(SpiffeId::from_cert(&issued.chain[0]), Some(id.clone()));
    assert_eq!(issued.serial.len(), 32);
    let ttl = issued.not_after - OffsetDateTime::now_utc();
    assert!(ttl > time::Duration::minutes(59) && ttl <= time::Duration::hours(1));

    // Only the proven identity is in the certificate: the asked-for DNS name is not.
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&issued.chain[0]).unwrap();
    let names = cert.subject_alternative_name().unwrap().unwrap().value.general_names.len();
    assert_eq!(names, 1);
    // The certificate is for the CSR's key.
    assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());

    // It chains to this CA, and not to another one.
    let ok = MeshVerifier::new(Anchors::Roots(ca.roots().to_vec()), Accept::Any);
    assert_eq!(ok.check(&issued.chain[0], &issued.chain[1..], now()).unwrap(), id);
    let (_d2, _s2, other) = fresh().await;
    let wrong = MeshVerifier::new(Anchors::Roots(other.roots().to_vec()), Accept::Any);
    assert!(wrong.check(&issued.chain[0], &issued.chain[1..], now()).is_err());
    // An identity check that does not accept it refuses it.
    let picky = MeshVerifier::new(Anchors::Roots(ca.roots().to_vec()), Accept::ControlPlane);
    assert!(picky.check(&issued.chain[0], &[], now()).is_err());

    // Lifetimes are bounded.
    let long = ca.issue(csr_for(&key, "x").as_bytes(), &id, Duration::from_secs(400 * 24 * 3600)).unwrap();
    assert!(long.not_after - OffsetDateTime::now_utc() <= time::Duration::days(90));
}

#[tokio::test]
async fn bad_csrs_are_refused_with_a_reason() {
    let (_dir, _store, ca) = fresh().await;
    let id = SpiffeId::new("cluster.local", "default", "a").unwrap();
    let err = ca.issue(b"not a csr", &id, DEFAULT_TTL).unwrap_err();
    assert!(matches!(err, IssueError::BadRequest(_)), "{err}");
    // A CSR whose signature does not match its key.
    let key = KeyPair::generate().unwrap();
    let mut der = CertificateSigningRequestDer::from_pem_slice(csr_for(&key, "x").as_bytes()).unwrap().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x55;
    assert!(matches!(ca.issue(&der, &id, DEFAULT_TTL), Err(IssueError::BadRequest(_))));
}

#[tokio::test]
async fn a_plug_in_intermediate_signs_and_its_root_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (root_pem, root_key) = make_root("corp.example", "corp root").unwrap();
    let root_der = first_cert(&root_pem).unwrap();
    let int_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "meshgate intermediate");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_issuer = Issuer::from_ca_cert_der(&root_der, &root_key).unwrap();
    let int = p.signed_by(&int_key, &root_issuer).unwrap();
    std::fs::write(dir.path().join("ca.pem"), format!("{}{}", int.pem(), root_pem)).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), int_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("other-key.pem"), KeyPair::generate().unwrap().serialize_pem()).unwrap();

    let store = crate::store::open(&dir.path().join("meshgate.db")).await.unwrap();
    let plugin = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
    let ca = Ca::load(&store, dir.path(), "cluster.local", Some((&plugin.0, &plugin.1))).await.unwrap();
    assert_eq!(ca.roots(), std::slice::from_ref(&root_der));
    assert!(store.ca_roots().await.unwrap().is_empty(), "a plug-in CA's key is not copied");

    let id = SpiffeId::new("cluster.local", "shop", "orders").unwrap();
    let key = KeyPair::generate().unwrap();
    let issued = ca.issue(csr_for(&key, "x").as_bytes(), &id, DEFAULT_TTL).unwrap();
    assert_eq!(issued.chain.len(), 2, "the leaf and the intermediate");
    let v = MeshVerifier::new(Anchors::Roots(vec![root_der]), Accept::Any);
    assert_eq!(v.check(&issued.chain[0], &issued.chain[1..], now()).unwrap(), id);

    let wrong = (dir.path().join("ca.pem"), dir.path().join("other-key.pem"));
    let err = Ca::load(&store, dir.path(), "cluster.local", Some((&wrong.0, &wrong.1))).await.err().unwrap();
    assert!(format!("{err:#}").contains("is not the key of the first certificate"), "{err:#}");
}

#[tokio::test]
async fn a_pinned_fingerprint_finds_the_root_in_the_chain() {
    let (_dir, _store, ca) = fresh().await;
    let me = SpiffeId::control_plane("cluster.local");
    let (issued, _key) = ca.issue_own(&me, &["localhost".into()], DEFAULT_TTL).unwrap();
    let root = ca.roots()[0].clone();
    let pinned = MeshVerifier::new(Anchors::Pinned(ca.fingerprint()), Accept::ControlPlane);
    assert_eq!(pinned.check(&issued.chain[0], std::slice::from_ref(&root), now()).unwrap(), me);
    let other = MeshVerifier::new(Anchors::Pinned(format!("sha256:{}", "0".repeat(64))), Accept::ControlPlane);
    let err = other.check(&issued.chain[0], &[root], now()).unwrap_err();
    assert!(err.to_string().contains("no certificate with fingerprint"), "{err}");
}

#[tokio::test]
async fn a_rotated_root_is_trusted_alongside_the_old_until_retired() {
    let (dir, store, ca) = fresh().await;
    let id = SpiffeId::new("cluster.local", "default", "user-service").unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = csr_for(&key, "x");
    let before = ca.issue(csr.as_bytes(), &id, Duration::from_secs(3600)).unwrap();
    store.record_certificate(&before.serial, &id.to_string(), &rfc3339(before.not_after), &before.root).await.unwrap();
    let old_roots = ca.roots();
    let old = ca.fingerprint();

    let new = ca.rotate(&store).await.unwrap();
    assert_ne!(new, old);
    assert_eq!(ca.fingerprint(), new);
    let roots = ca.roots();
    assert_eq!(roots.len(), 2);
    assert_eq!(fingerprint(&roots[1]), old, "the old root stays trusted");

    // A certificate from the new root carries it cross-signed by the old one...
    let after = ca.issue(csr.as_bytes(), &id, Duration::from_secs(3600)).unwrap();
    assert_eq!(after.chain.len(), 2);
    assert_eq!((before.root.as_str(), after.root.as_str()), (old.as_str(), new.as_str()));
    // (recorded with its root: only `before` holds the old root in use, even
    // if both were issued within the same millisecond as the rotation)
    store.record_certificate(&after.serial, &id.to_string(), &rfc3339(after.not_after), &after.root).await.unwrap();
    // ...so a peer that still trusts only the old root verifies it,
    let stale_peer = MeshVerifier::new(Anchors::Roots(old_roots.clone()), Accept::Any);
    assert_eq!(stale_peer.check(&after.chain[0], &after.chain[1..], now()).unwrap(), id);
    // a peer with the new bundle verifies both,
    let renewed_peer = MeshVerifier::new(Anchors::Roots(roots.clone()), Accept::Any);
    assert!(renewed_peer.check(&before.chain[0], &before.chain[1..], now()).is_ok());
    assert!(renewed_peer.check(&after.chain[0], &after.chain[1..], now()).is_ok());
    // and an agent that pinned either fingerprint finds it in what the mesh port sends.
    let mut sent = after.chain.clone();
    sent.extend(roots.iter().cloned());
    for pin in [&old, &new] {
        let pinned = MeshVerifier::new(Anchors::Pinned(pin.clone()), Accept::Any);
        assert!(pinned.check(&sent[0], &sent[1..], now()).is_ok(), "pinned {pin}");
    }

    // A restart picks the rotation up where it was.
    let again = Ca::load(&store, dir.path(), "cluster.local", None).await.unwrap();
    assert_eq!((again.fingerprint(), again.roots().len()), (new.clone(), 2));
    assert_eq!(again.issue(csr.as_bytes(), &id, Duration::from_secs(60)).unwrap().chain.len(), 2);

    // Retiring waits for the old root's certificates to be renewed, or is forced.
    let err = ca.retire(&store, false).await.unwrap_err();
    assert!(err.to_string().starts_with("1 workload certificate(s) from the old root are still valid"), "{err}");
    assert_eq!(ca.retire(&store, true).await.unwrap(), vec![old.clone()]);
    assert_eq!(ca.roots().len(), 1);
    let only_new = MeshVerifier::new(Anchors::Roots(ca.roots()), Accept::Any);
    assert!(only_new.check(&before.chain[0], &before.chain[1..], now()).is_err(), "the old root is no longer trusted");
    assert_eq!(
        ca.issue(csr.as_bytes(), &id, Duration::from_secs(60)).unwrap().chain.len(),
        1,
        "no cross-signed root now"
    );
    assert!(matches!(ca.retire(&store, false).await, Err(RotateError::NothingToRetire)));
}
