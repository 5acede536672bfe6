//! TCP proxying for Gateway servers of protocol TCP (VirtualService `tcp`
//! routes) and TLS with `mode: PASSTHROUGH` (`tls` routes chosen by the SNI
//! of the ClientHello, which is read but never decrypted).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::config::ListenerKind;
use crate::control::Hub;

/// A ClientHello larger than this is refused (real ones are a few hundred bytes).
const MAX_HELLO: usize = 16 * 1024;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What one TCP-level Gateway port is: its number, kind, and (for TLS
/// terminated here) its certificates.
#[derive(Clone)]
pub struct L4Port {
    pub port: u32,
    pub kind: ListenerKind,
    pub acceptor: Option<super::tls::GatewayTls>,
}

pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    l4: L4Port,
    connection_limit: Arc<tokio::sync::Semaphore>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let Some((stream, peer, permit)) = super::accept(&listener, &connection_limit, &mut shutdown).await else {
            break;
        };
        let (hub, l4) = (hub.clone(), l4.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, peer, &hub, &l4).await {
                tracing::debug!(%peer, port = l4.port, error = %e, "tcp connection ended");
            }
        });
    }
}

async fn connection(mut down: TcpStream, peer: SocketAddr, hub: &Hub, l4: &L4Port) -> std::io::Result<()> {
    let port = l4.port;
    let _ = down.set_nodelay(true);
    let mut hello = Vec::new();
    let sni = if l4.kind == ListenerKind::TlsPassthrough {
        match tokio::time::timeout(HELLO_TIMEOUT, read_client_hello(&mut down, &mut hello)).await {
            Ok(Ok(sni)) => sni,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no ClientHello")),
        }
    } else {
        None
    };
    // TLS terminated here: the handshake first, then the plaintext is routed as TCP.
    let down: Box<dyn Duplex> = match &l4.acceptor {
        Some(acceptor) => match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(down)).await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")),
        },
        None => Box::new(down),
    };
    let snapshot = hub.snapshot();
    let route = snapshot.l4.get(&port).and_then(|routes| routes.iter().find(|r| r.matches_sni(sni.as_deref())));
    let Some(route) = route else {
        tracing::debug!(%peer, port, ?sni, "no tcp/tls route; closing");
        return Ok(());
    };
    let cluster = Arc::clone(&route.targets.pick().cluster);
    drop(snapshot);
    let mut up = connect(&cluster).await?;
    if !hello.is_empty() {
        up.write_all(&hello).await?;
    }
    relay(down, up, cluster.connections.tcp_idle_timeout).await
}

/// A client connection: plain TCP or TLS terminated here.
trait Duplex: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Duplex for T {}

/// Copies bytes both ways until both sides have closed, or until neither
/// side has sent anything for `idle` (DestinationRule
/// `connectionPool.tcp.idleTimeout`; Istio's default is one hour).
async fn relay(down: Box<dyn Duplex>, up: TcpStream, idle: Duration) -> std::io::Result<()> {
    let (mut down_r, mut down_w) = tokio::io::split(down);
    let (mut up_r, mut up_w) = up.into_split();
    let (mut from_down, mut from_up) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut down_open, mut up_open) = (true, true);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    while down_open || up_open {
        tokio::select! {
            n = down_r.read(&mut from_down), if down_open => match n? {
                0 => {
                    down_open = false;
                    let _ = up_w.shutdown().await;
                }
                n => up_w.write_all(&from_down[..n]).await?,
            },
            n = up_r.read(&mut from_up), if up_open => match n? {
                0 => {
                    up_open = false;
                    let _ = down_w.shutdown().await;
                }
                n => down_w.write_all(&from_up[..n]).await?,
            },
            () = &mut timer => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout"));
            }
        }
        timer.as_mut().reset(tokio::time::Instant::now() + idle);
    }
    Ok(())
}

async fn connect(cluster: &super::upstream::Cluster) -> std::io::Result<TcpStream> {
    let mut last = None;
    // Try each healthy endpoint at most once, like Envoy's connect retries.
    for _ in 0..cluster.endpoints.len().max(1) {
        let Some(i) = cluster.pick(last, None) else { break };
        last = Some(i);
        let address = &cluster.endpoints[i].address;
        match tokio::time::timeout(cluster.connections.connect_timeout, TcpStream::connect(address.as_str())).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                cluster.record(i, Some(200));
                return Ok(s);
            }
            _ => cluster.record(i, None),
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, format!("no endpoint of {} accepted", cluster.name)))
}

/// Reads the first TLS record (the ClientHello) into `buf` and returns the
/// SNI host name, if the client sent one.
async fn read_client_hello(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await?;
    buf.extend_from_slice(&header);
    if header[0] != 0x16 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a TLS handshake"));
    }
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    if len > MAX_HELLO {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "ClientHello too large"));
    }
    let mut record = vec![0u8; len];
    stream.read_exact(&mut record).await?;
    buf.extend_from_slice(&record);
    Ok(sni(&record))
}

/// The server_name extension of a ClientHello handshake message.
pub fn sni(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    r.skip(3)?; // handshake length
    r.skip(2 + 32)?; // client_version, random
    let sid = r.u8()? as usize;
    r.skip(sid)?;
    let suites = r.u16()? as usize;
    r.skip(suites)?;
    let compression = r.u8()? as usize;
    r.skip(compression)?;
    let ext_len = r.u16()? as usize;
    let mut ext = Reader(r.take(ext_len)?);
    while !ext.0.is_empty() {
        let (kind, len) = (ext.u16()?, ext.u16()? as usize);
        let mut data = Reader(ext.take(len)?);
        if kind == 0 {
            let _list = data.u16()?;
            if data.u8()? != 0 {
                return None;
            }
            let n = data.u16()? as usize;
            return std::str::from_utf8(data.take(n)?).ok().map(|s| s.to_ascii_lowercase());
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sni_parser_refuses_garbage_without_panicking() {
        assert_eq!(super::sni(&[]), None);
        assert_eq!(super::sni(&[1, 0, 0]), None);
        assert_eq!(super::sni(&[2; 100]), None);
        let mut truncated = vec![1u8, 0, 0, 50];
        truncated.extend([3, 3]);
        truncated.extend([0u8; 32]);
        truncated.push(32); // session id claims 32 bytes that are not there
        assert_eq!(super::sni(&truncated), None);
    }
}
