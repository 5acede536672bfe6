//! HTTPS on the gateway: certificates from Secrets, chosen by SNI.

use std::sync::Arc;

use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::support::Server;
use crate::upstream::Upstream;

struct Cert {
    pem: String,
    key: String,
    der: Vec<u8>,
}

fn cert(host: &str) -> Cert {
    let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    Cert { pem: c.cert.pem(), key: c.signing_key.serialize_pem(), der: c.cert.der().to_vec() }
}

fn secret(name: &str, c: &Cert) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&c.pem),
        indent(&c.key)
    )
}

/// GET over TLS with `sni`, trusting `roots`; returns status, body and the
/// certificate the server presented.
fn https_get(addr: &str, sni: &str, roots: &[&Cert], path: &str) -> (u16, String, Vec<u8>, Option<Vec<u8>>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(CertificateDer::from_pem_slice(r.pem.as_bytes()).unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
            .unwrap();
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let alpn = tls.get_ref().1.alpn_protocol().map(|a| a.to_vec());
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(path).header("host", sni).body(Empty::<bytes::Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned(), presented, alpn)
    })
}

#[test]
fn https_with_two_sni_names_and_an_https_redirect() {
    let v1 = Upstream::start("v1");
    let server = Server::start();
    let (a, b) = (cert("a.example.com"), cert("b.example.com"));
    let mut yaml = format!("{}---\n{}", secret("a-cert", &a), secret("b-cert", &b));
    yaml.push_str(&format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: tls-gateway}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https-a, protocol: HTTPS}}\n    hosts: [a.example.com]\n    tls: {{mode: SIMPLE, credentialName: a-cert}}\n  - port: {{number: 443, name: https-b, protocol: HTTPS}}\n    hosts: [b.example.com]\n    tls: {{mode: SIMPLE, credentialName: b-cert}}\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [a.example.com]\n    tls: {{httpsRedirect: true}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\nspec:\n  hosts: [web]\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [a.example.com, b.example.com]\n  gateways: [tls-gateway]\n  http:\n  - route: [{{destination: {{host: web}}}}]\n",
        v1.port()
    ));
    server.apply(&yaml);

    let (status, body, presented, alpn) = https_get(&server.https, "a.example.com", &[&a], "/x");
    assert_eq!((status, body.as_str()), (200, "v1"));
    assert_eq!(presented, a.der, "SNI a.example.com gets a's certificate");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(v1.last().headers["x-forwarded-proto"], "https");
    let (status, _, presented, _) = https_get(&server.https, "b.example.com", &[&b], "/y");
    assert_eq!(status, 200);
    assert_eq!(presented, b.der, "SNI b.example.com gets b's certificate");

    let client = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = server.gateway(&client, "a.example.com", "/login?next=1").send().unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "https://a.example.com/login?next=1");
}

/// A test CA and leaf certificates it signs.
struct Pki {
    ca_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        Pki { ca_pem: issuer.pem(), issuer }
    }

    /// (certificate PEM, key PEM) for `name`, for a server or a client.
    fn leaf(&self, name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
        self.leaf_numbered(name, usage, None)
    }

    /// The same with a chosen serial number (to revoke it).
    fn leaf_numbered(
        &self,
        name: &str,
        usage: rcgen::ExtendedKeyUsagePurpose,
        serial: Option<u64>,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        params.serial_number = serial.map(rcgen::SerialNumber::from);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A CRL, PEM, revoking these serial numbers.
    fn crl(&self, revoked: &[u64]) -> String {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|n| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*n),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

fn pem_field(key: &str, pem: &str) -> String {
    format!("  {key}: |\n{}", pem.lines().map(|l| format!("    {l}\n")).collect::<String>())
}

/// A Gateway route for api.example.com to `secure.test:443`, an external
/// service at `port`, with the DestinationRule `tls` given.
pub fn tls_origination(port: u16, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [api.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: secure}}\nspec:\n  hosts: [secure.test]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: 443, name: https, protocol: HTTPS}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{https: {port}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: api}}\nspec:\n  hosts: [api.example.com]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: secure.test, port: {{number: 443}}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: secure}}\nspec:\n  host: secure.test\n  trafficPolicy:\n    tls: {tls}\n"
    )
}

#[test]
fn tls_to_upstreams_simple_and_mutual_from_destination_rules() {
    let (server_ca, client_ca, stranger) = (Pki::new("server CA"), Pki::new("client CA"), Pki::new("other CA"));
    let (cert, key) = server_ca.leaf("secure.test", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = client_ca.leaf("gateway", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let simple = Upstream::start_tls("simple", &cert, &key, None);
    let mutual = Upstream::start_tls("mutual", &cert, &key, Some(&client_ca.ca_pem));
    let server = Server::start();
    let c = reqwest::blocking::Client::new();
    let get = || {
        let r = server.gateway(&c, "api.example.com", "/x").send().unwrap();
        let flags = r.headers().get("x-meshgate-response-flags").map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), flags, r.text().unwrap())
    };
    let ca_secret = |name: &str, ca: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: Opaque\nstringData:\n{}",
            pem_field("ca.crt", ca)
        )
    };

    // SIMPLE, trusting the server's CA from an Opaque Secret: TLS on the wire, answers come back.
    server.apply(&ca_secret("upstream-ca", &server_ca.ca_pem));
    server.apply(&tls_origination(simple.port(), "{mode: SIMPLE, credentialName: upstream-ca}"));
    for _ in 0..5 {
        assert_eq!(get(), (200, None, "simple".to_string()));
    }
    assert_eq!(simple.last().path, "/x");
    let handshakes = simple.state.tls_handshakes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(handshakes, 1, "five requests share one pooled TLS connection");

    // A CA that did not sign the server's certificate: the handshake fails, 503 UF
    // (after Istio's default retries on connect failure: URX,UF).
    server.apply(&ca_secret("upstream-ca", &stranger.ca_pem));
    let (status, flags, _) = get();
    assert_eq!(status, 503);
    assert!(flags.as_deref().is_some_and(|f| f.split(',').any(|f| f == "UF")), "{flags:?}");
    // The wrong name (SNI and verification) fails too; subjectAltNames accepts the right one.
    server.apply(&ca_secret("upstream-ca", &server_ca.ca_pem));
    server.apply(&tls_origination(simple.port(), "{mode: SIMPLE, credentialName: upstream-ca, sni: other.test}"));
    assert_eq!(get().0, 503);
    server.apply(&tls_origination(
        simple.port(),
        "{mode: SIMPLE, credentialName: upstream-ca, sni: other.test, subjectAltNames: [secure.test]}",
    ));
    assert_eq!(get(), (200, None, "simple".to_string()));

    // MUTUAL: the upstream requires a client certificate from its CA.
    server.apply(&tls_origination(mutual.port(), "{mode: SIMPLE, credentialName: upstream-ca}"));
    assert_eq!(get().0, 503, "no client certificate, no service");
    let both = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: client-identity}}\ntype: kubernetes.io/tls\nstringData:\n{}{}{}",
        pem_field("tls.crt", &client_cert),
        pem_field("tls.key", &client_key),
        pem_field("ca.crt", &server_ca.ca_pem)
    );
    server.apply(&both);
    server.apply(&tls_origination(mutual.port(), "{mode: MUTUAL, credentialName: client-identity}"));
    assert_eq!(get(), (200, None, "mutual".to_string()));
    // MUTUAL without a client certificate: Istio accepts the rule, so does meshgate; the cluster gets
    // no endpoints (the log says why) and requests answer 503 UH rather than go out without TLS.
    server.apply(&tls_origination(mutual.port(), "{mode: MUTUAL, credentialName: upstream-ca}"));
    let (status, flags, _) = get();
    assert_eq!((status, flags.as_deref()), (503, Some("UH")));
}

/// GET https://`sni`/ through `addr`, trusting `root_pem`, presenting
/// `identity` (certificate and key PEM) if given; the status, or why it failed.
fn get_with_identity(addr: &str, sni: &str, root_pem: &str, identity: Option<(&str, &str)>) -> Result<u16, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config = crate::support::tls_client(root_pem, identity, &[b"http/1.1"]);
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get("/").header("host", sni).body(Empty::<bytes::Bytes>::new()).unwrap();
        // With TLS 1.3 a refused client certificate surfaces on the first exchange.
        let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        Ok(resp.status().as_u16())
    })
}

#[test]
fn gateway_mutual_tls_requires_client_certificates_from_the_secret_ca() {
    let up = Upstream::start("v1");
    let (server_ca, client_ca, stranger) = (Pki::new("server CA"), Pki::new("client CA"), Pki::new("other CA"));
    let (mtls_cert, mtls_key) = server_ca.leaf("mtls.example.com", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (open_cert, open_key) = server_ca.leaf("open.example.com", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = client_ca.leaf("partner", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let (rogue_cert, rogue_key) = stranger.leaf("rogue", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let server = Server::start();
    let tls_secret = |name: &str, cert: &str, key: &str, ca: Option<&str>| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n{}{}{}---\n",
            pem_field("tls.crt", cert),
            pem_field("tls.key", key),
            ca.map(|ca| pem_field("ca.crt", ca)).unwrap_or_default()
        )
    };
    let mut yaml = tls_secret("mtls-cert", &mtls_cert, &mtls_key, Some(&client_ca.ca_pem));
    yaml.push_str(&tls_secret("open-cert", &open_cert, &open_key, None));
    yaml.push_str(&format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https-mtls, protocol: HTTPS}}\n    hosts: [mtls.example.com]\n    tls: {{mode: MUTUAL, credentialName: mtls-cert}}\n  - port: {{number: 443, name: https-open, protocol: HTTPS}}\n    hosts: [open.example.com]\n    tls: {{mode: SIMPLE, credentialName: open-cert}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\nspec:\n  hosts: [web]\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [mtls.example.com, open.example.com]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: web}}}}]\n",
        up.port()
    ));
    server.apply(&yaml);
    let ca = &server_ca.ca_pem;
    assert_eq!(get_with_identity(&server.https, "mtls.example.com", ca, Some((&client_cert, &client_key))), Ok(200));
    let without = get_with_identity(&server.https, "mtls.example.com", ca, None);
    assert!(without.is_err(), "no client certificate, no service: {without:?}");
    let rogue = get_with_identity(&server.https, "mtls.example.com", ca, Some((&rogue_cert, &rogue_key)));
    assert!(rogue.is_err(), "a certificate from another CA is refused: {rogue:?}");
    // The SIMPLE server on the same port asks nothing of its clients.
    assert_eq!(get_with_identity(&server.https, "open.example.com", ca, None), Ok(200));
    let hits = up.hits();
    assert_eq!(hits, 2, "only the two accepted requests reached the service");

    // The client certificate goes upstream (x-forwarded-client-cert) and is who AuthorizationPolicy sees.
    assert_eq!(get_with_identity(&server.https, "mtls.example.com", ca, Some((&client_cert, &client_key))), Ok(200));
    let xfcc = up.last().headers["x-forwarded-client-cert"].to_str().unwrap().to_string();
    assert!(xfcc.starts_with("Hash=") && xfcc.ends_with(";DNS=partner"), "{xfcc}");
    server.apply("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: partners, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [partner]}}]\n  - to: [{operation: {hosts: [open.example.com]}}]\n");
    let (intern_cert, intern_key) = client_ca.leaf("intern", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    assert_eq!(get_with_identity(&server.https, "mtls.example.com", ca, Some((&client_cert, &client_key))), Ok(200));
    assert_eq!(get_with_identity(&server.https, "mtls.example.com", ca, Some((&intern_cert, &intern_key))), Ok(403));
    assert_eq!(get_with_identity(&server.https, "open.example.com", ca, None), Ok(200));
}

#[test]
fn grpc_to_upstreams_over_tls_speaks_http2() {
    use crate::transcode::{GetUserRequest, User};
    let ca = Pki::new("server CA");
    let (cert, key) = ca.leaf("users.internal", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let up = crate::transcode::user_service_tls(&cert, &key);
    let server = Server::start();
    server.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: users-ca}}\ntype: Opaque\nstringData:\n{}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [api.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: users}}\nspec:\n  hosts: [users.internal]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: users}}\nspec:\n  hosts: [api.example.com]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: users.internal}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: users}}\nspec:\n  host: users.internal\n  trafficPolicy:\n    tls: {{mode: SIMPLE, credentialName: users-ca}}\n",
        pem_field("ca.crt", &ca.ca_pem),
        up.port
    ));
    // gRPC in over h2c, out over TLS with ALPN h2 to a server that speaks nothing else.
    for id in [3, 4] {
        let (answers, status) = crate::mesh::grpc_call::<_, User>(
            &server.http,
            "api.example.com",
            "/users.v1.UserService/GetUser",
            &GetUserRequest { id, view: String::new() },
        );
        assert_eq!((answers.len(), status.as_str()), (1, "0"));
        assert_eq!(answers[0].display_name, format!("user {id}"));
    }
    // A CA that did not sign the upstream's certificate: no call goes out in the clear.
    let other = Pki::new("other CA");
    server.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: users-ca}}\ntype: Opaque\nstringData:\n{}",
        pem_field("ca.crt", &other.ca_pem)
    ));
    let (answers, status) = crate::mesh::grpc_call::<_, User>(
        &server.http,
        "api.example.com",
        "/users.v1.UserService/GetUser",
        &GetUserRequest { id: 5, view: String::new() },
    );
    assert_eq!((answers.len(), status.as_str()), (0, "14"), "UNAVAILABLE");
}

#[test]
fn revoked_certificates_are_refused_by_the_crl_upstream_and_at_the_gateway() {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let (server_ca, client_ca) = (Pki::new("server CA"), Pki::new("client CA"));
    let (good_cert, good_key) = server_ca.leaf_numbered("secure.test", ServerAuth, Some(101));
    let (revoked_cert, revoked_key) = server_ca.leaf_numbered("secure.test", ServerAuth, Some(102));
    let good = Upstream::start_tls("good", &good_cert, &good_key, None);
    let revoked = Upstream::start_tls("revoked", &revoked_cert, &revoked_key, None);
    let server = Server::start();
    let c = reqwest::blocking::Client::new();
    let get = || {
        let r = server.gateway(&c, "api.example.com", "/x").send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    server.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: upstream-ca}}\ntype: Opaque\nstringData:\n{}{}",
        pem_field("ca.crt", &server_ca.ca_pem),
        pem_field("ca.crl", &server_ca.crl(&[102]))
    ));
    // DestinationRule tls with the Secret's ca.crl: the revoked server certificate fails the handshake.
    server.apply(&tls_origination(good.port(), "{mode: SIMPLE, credentialName: upstream-ca}"));
    assert_eq!(get(), (200, "good".to_string()));
    server.apply(&tls_origination(revoked.port(), "{mode: SIMPLE, credentialName: upstream-ca}"));
    assert_eq!(get().0, 503);
    assert_eq!(revoked.hits(), 0, "no request reached the revoked server");
    // caCrl as a file works the same.
    let tmp = tempfile::tempdir().unwrap();
    let (ca_file, crl_file) = (tmp.path().join("ca.pem"), tmp.path().join("crl.pem"));
    std::fs::write(&ca_file, &server_ca.ca_pem).unwrap();
    std::fs::write(&crl_file, server_ca.crl(&[101])).unwrap();
    let files = format!("{{mode: SIMPLE, caCertificates: {}, caCrl: {}}}", ca_file.display(), crl_file.display());
    server.apply(&tls_origination(revoked.port(), &files));
    assert_eq!(get(), (200, "revoked".to_string()), "102 is not on this list");
    server.apply(&tls_origination(good.port(), &files));
    assert_eq!(get().0, 503, "101 is");

    // Gateway MUTUAL with ca.crl: a revoked client certificate is refused at the handshake.
    let (server_cert, server_key) = server_ca.leaf("mtls.example.com", ServerAuth);
    let (partner_cert, partner_key) = client_ca.leaf_numbered("partner", ClientAuth, Some(7));
    let (former_cert, former_key) = client_ca.leaf_numbered("former", ClientAuth, Some(8));
    let web = Upstream::start("web");
    server.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: mtls-cert}}\ntype: kubernetes.io/tls\nstringData:\n{}{}{}{}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [mtls.example.com]\n    tls: {{mode: MUTUAL, credentialName: mtls-cert}}\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [api.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\nspec:\n  hosts: [web]\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [mtls.example.com]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: web}}}}]\n",
        pem_field("tls.crt", &server_cert),
        pem_field("tls.key", &server_key),
        pem_field("ca.crt", &client_ca.ca_pem),
        pem_field("ca.crl", &client_ca.crl(&[8])),
        web.port()
    ));
    let ca = &server_ca.ca_pem;
    let https = |id: (&str, &str)| get_with_identity(&server.https, "mtls.example.com", ca, Some(id));
    assert_eq!(https((&partner_cert, &partner_key)), Ok(200));
    let refused = https((&former_cert, &former_key));
    assert!(refused.is_err(), "a revoked client certificate is refused: {refused:?}");
    assert_eq!(web.hits(), 1);
}

#[test]
fn the_admin_address_speaks_https_with_a_certificate_from_the_mesh_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_full(
        &tmp.path().join("data"),
        &[("MESHGATE_ADMIN_PASSWORD", "admin-password")],
        &["--admin-tls"],
    );
    assert!(server.admin.starts_with("https://127.0.0.1:"), "{}", server.admin);
    // The CLI trusts the roots `up` wrote (MESHGATE_CA_FILE, or ./meshgate-data/admin-ca.pem).
    server.apply(&crate::gateway::vs("  - route: [{destination: {host: user-service}}]\n"));
    assert!(server.ok(&["get", "vs"]).contains("users"));
    // The console's session cookie is Secure over HTTPS.
    let login = server
        .http()
        .post(server.url("/api/v1/login"))
        .json(&serde_json::json!({"username": "admin", "password": "admin-password"}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    // Without the roots, a client refuses the certificate; plain HTTP gets no answer.
    let untrusting = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap();
    let err = untrusting.get(server.url("/healthz")).send().unwrap_err();
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
    let plain = server.url("/healthz").replace("https://", "http://");
    assert!(untrusting.get(plain).send().is_err());

    // A root rotation, then the old root retired: the admin certificate is
    // re-issued under the new root and admin-ca.pem rewritten, so a client
    // that trusts only the roots meshgate now has still connects.
    let ca_file = server.data_dir.join("admin-ca.pem");
    let before = std::fs::read_to_string(&ca_file).unwrap();
    server.ok(&["ca", "rotate"]);
    server.ok(&["ca", "retire", "--force"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let last = loop {
        let roots = std::fs::read_to_string(&ca_file).unwrap();
        // Renewed after the retirement: only the new root is left in the file.
        let retired = roots != before && roots.matches("BEGIN CERTIFICATE").count() == 1;
        let tried = retired.then(|| {
            let mut client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(10));
            for cert in reqwest::Certificate::from_pem_bundle(roots.as_bytes()).unwrap() {
                client = client.add_root_certificate(cert);
            }
            client.build().unwrap().get(server.url("/healthz")).send().map(|r| r.status().as_u16())
        });
        match tried {
            Some(Ok(200)) => break None,
            other => {
                if std::time::Instant::now() > deadline {
                    break Some(format!("{other:?}"));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    };
    assert_eq!(last, None, "the admin certificate never moved to the new root");
    let roots = std::fs::read_to_string(&ca_file).unwrap();
    assert_eq!(roots.matches("BEGIN CERTIFICATE").count(), 1, "only the new root is left: {roots}");
    assert!(server.ok(&["get", "vs"]).contains("users"), "the CLI follows the rewritten roots");
}
