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
