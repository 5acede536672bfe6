//! Gateway ports beyond 80 and 443: a Gateway server on any other port
//! number opens a listener on that port at the `--http` address's IP
//! (`--port-map PORT=HOSTPORT` moves it; `=0` picks a free one), or at the
//! server's `bind` IP, and closes it when no Gateway uses the port any
//! more. No restart needed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;

use super::Listener;
use super::config::ListenerKind;

struct Running {
    kind: ListenerKind,
    ip: IpAddr,
    stop: watch::Sender<bool>,
}

/// Keeps the set of open listeners equal to the Gateway ports in the
/// current snapshot, then marks the snapshot's revision applied. `changes`
/// comes from [`Hub::take_over_applied`]. Returns when `shutdown` fires,
/// closing every listener it opened.
pub async fn manage(
    mut changes: watch::Receiver<i64>,
    base: Listener,
    ip: IpAddr,
    port_map: BTreeMap<u32, u16>,
    mut shutdown: watch::Receiver<bool>,
) {
    let hub = base.hub.clone();
    let mut running: BTreeMap<u32, Running> = BTreeMap::new();
    loop {
        let revision = *changes.borrow_and_update();
        let snapshot = hub.snapshot();
        let wanted: BTreeMap<u32, (ListenerKind, IpAddr)> = snapshot
            .listeners
            .iter()
            .filter(|(p, _)| **p != 80 && **p != 443)
            .map(|(p, k)| (*p, (*k, snapshot.binds.get(p).copied().unwrap_or(ip))))
            .collect();
        drop(snapshot);
        running.retain(|port, r| {
            let keep = wanted.get(port) == Some(&(r.kind, r.ip));
            if !keep {
                let _ = r.stop.send(true);
                hub.listening.lock().unwrap_or_else(|e| e.into_inner()).remove(port);
                tracing::info!(port, "gateway listener closed");
            }
            keep
        });
        for (port, (kind, listen_ip)) in wanted {
            if running.contains_key(&port) {
                continue;
            }
            let host_port = port_map.get(&port).copied().unwrap_or(port as u16);
            let addr = SocketAddr::new(listen_ip, host_port);
            let listener = match bind_retrying(addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(port, %addr, error = %e, "cannot open the listener for a Gateway port");
                    continue;
                }
            };
            let bound = listener.local_addr().unwrap_or(addr);
            let tls = matches!(kind, ListenerKind::Https | ListenerKind::TlsPassthrough | ListenerKind::TlsTerminated);
            let (stop, mut stopped) = watch::channel(false);
            let stopped = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            match kind {
                ListenerKind::Http | ListenerKind::Https => {
                    let scheme = if tls { "https" } else { "http" };
                    let state = Arc::new(Listener { gateway_port: port, scheme, ..base.clone() });
                    let acceptor = tls.then(|| super::tls::acceptor(hub.clone(), port));
                    tokio::spawn(super::serve(listener, state, acceptor, stopped));
                }
                ListenerKind::Tcp | ListenerKind::TlsPassthrough | ListenerKind::TlsTerminated => {
                    let acceptor =
                        (kind == ListenerKind::TlsTerminated).then(|| super::tls::acceptor(hub.clone(), port));
                    tokio::spawn(super::l4::serve(
                        listener,
                        hub.clone(),
                        super::l4::L4Port { port, kind, acceptor },
                        base.connection_limit.clone(),
                        stopped,
                    ));
                }
            }
            hub.listening.lock().unwrap_or_else(|e| e.into_inner()).insert(port, (bound, tls));
            tracing::info!(port, address = %bound, tls, "gateway listener opened");
            running.insert(port, Running { kind, ip: listen_ip, stop });
        }
        if revision >= 0 {
            hub.mark_applied(revision);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    for r in running.values() {
        let _ = r.stop.send(true);
    }
}

/// Binds, retrying briefly: a listener just told to stop (the port changed
/// protocol) may not have released the port yet.
async fn bind_retrying(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}
