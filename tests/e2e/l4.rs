//! TCP routes and TLS passthrough on Gateway ports of their own.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::Server;

/// A plain TCP echo server.
fn tcp_echo() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A TLS server for `name` that greets with its name, with its own certificate.
fn tls_upstream(name: &'static str, rt: &tokio::runtime::Runtime) -> (u16, String) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let (cert_pem, key_pem) = (c.cert.pem(), c.signing_key.serialize_pem());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let _ = tls.write_all(format!("hello from {name}\n").as_bytes()).await;
                    let _ = tls.flush().await;
                    let mut buf = [0u8; 64];
                    let _ = tls.read(&mut buf).await;
                }
            });
        }
    });
    (port, cert_pem)
}

fn tls_client_hello(rt: &tokio::runtime::Runtime, addr: &str, sni: &str, root_pem: &str) -> String {
    rt.block_on(async {
        let config = crate::support::tls_client(root_pem, None, &[]);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
            .expect("end-to-end TLS with the upstream's own certificate");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            tls.read_exact(&mut byte).await.unwrap();
            line.push(byte[0]);
        }
        String::from_utf8(line).unwrap()
    })
}

#[test]
fn tcp_routes_and_tls_passthrough_by_sni() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let echo = tcp_echo();
    let (a_port, a_cert) = tls_upstream("a.internal.example", &rt);
    let (b_port, b_cert) = tls_upstream("b.internal.example", &rt);
    let server = Server::start_with(&["--port-map", "9000=0,9443=0"]);
    let entry = |name: &str, port: u16| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  resolution: STATIC\n  ports: [{{number: 1, name: tcp, protocol: TCP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {port}}}}}]\n"
        )
    };
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: l4}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 9000, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n  - port: {number: 9443, name: tls, protocol: TLS}\n    hosts: [\"*.internal.example\"]\n    tls: {mode: PASSTHROUGH}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: l4}\nspec:\n  hosts: [\"*\"]\n  gateways: [l4]\n  tcp:\n  - match: [{port: 9000}]\n    route: [{destination: {host: echo}}]\n  tls:\n  - match: [{port: 9443, sniHosts: [a.internal.example]}]\n    route: [{destination: {host: svc-a}}]\n  - match: [{port: 9443, sniHosts: [b.internal.example]}]\n    route: [{destination: {host: svc-b}}]\n",
    );
    yaml.push_str(&entry("echo", echo));
    yaml.push_str(&entry("svc-a", a_port));
    yaml.push_str(&entry("svc-b", b_port));
    server.apply(&yaml);

    let mut s = std::net::TcpStream::connect(server.listener(9000).expect("port 9000")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for msg in ["ping", "a second message"] {
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }

    let tls_addr = server.listener(9443).expect("port 9443");
    assert_eq!(tls_client_hello(&rt, &tls_addr, "a.internal.example", &a_cert), "hello from a.internal.example\n");
    assert_eq!(tls_client_hello(&rt, &tls_addr, "b.internal.example", &b_cert), "hello from b.internal.example\n");
}

#[test]
fn tcp_connections_idle_past_the_destination_rule_timeout_are_closed() {
    let echo = tcp_echo();
    let server = Server::start_with(&["--port-map", "9000=0"]);
    server.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: l4}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 9000, name: tcp, protocol: TCP}}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: l4}}\nspec:\n  hosts: [\"*\"]\n  gateways: [l4]\n  tcp:\n  - route: [{{destination: {{host: echo}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: echo}}\nspec:\n  hosts: [echo]\n  resolution: STATIC\n  ports: [{{number: 1, name: tcp, protocol: TCP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {echo}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo}}\nspec:\n  host: echo\n  trafficPolicy:\n    connectionPool:\n      tcp: {{idleTimeout: 300ms}}\n"
    ));
    let mut s = std::net::TcpStream::connect(server.listener(9000).expect("port 9000")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Traffic more often than the timeout keeps the connection.
    for i in 0..4 {
        let msg = format!("message {i}");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
        std::thread::sleep(Duration::from_millis(150));
    }
    // Silence past it closes the connection.
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "the gateway closes an idle TCP connection");
    assert!(started.elapsed() < Duration::from_secs(5), "closed only after {:?}", started.elapsed());
}

#[test]
fn tls_servers_terminate_and_route_the_plaintext_as_tcp() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let echo = tcp_echo();
    let c = rcgen::generate_simple_self_signed(vec!["db.example.com".to_string()]).unwrap();
    let (cert_pem, key_pem) = (c.cert.pem(), c.signing_key.serialize_pem());
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let server = Server::start_with(&["--port-map", "9444=0"]);
    server.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: db-cert}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: db}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 9444, name: tls-db, protocol: TLS}}\n    hosts: [db.example.com]\n    tls: {{mode: SIMPLE, credentialName: db-cert}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: db}}\nspec:\n  hosts: [db.example.com]\n  gateways: [db]\n  tcp:\n  - match: [{{port: 9444}}]\n    route: [{{destination: {{host: echo}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: echo}}\nspec:\n  hosts: [echo]\n  resolution: STATIC\n  ports: [{{number: 1, name: tcp, protocol: TCP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {echo}}}}}]\n",
        indent(&cert_pem),
        indent(&key_pem)
    ));
    let addr = server.listener(9444).expect("port 9444");
    let echoed = rt.block_on(async {
        let config = crate::support::tls_client(&cert_pem, None, &[]);
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("db.example.com".to_string()).unwrap(), tcp)
            .await
            .expect("the gateway terminates TLS with the Secret's certificate");
        tls.write_all(b"select 1").await.unwrap();
        let mut back = [0u8; 8];
        tls.read_exact(&mut back).await.unwrap();
        back
    });
    assert_eq!(&echoed, b"select 1", "the echo service got the plaintext");
}
