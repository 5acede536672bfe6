//! The app's health, as the agent probes it (`--health http:/PATH` or
//! `--health tcp`): like a Kubernetes readiness probe, unhealthy after
//! [`FAILURES`] failures in a row, healthy again after one success. The
//! control plane hears of every change and takes an unhealthy instance
//! out of every proxy's endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Failures in a row that make the app unhealthy.
pub const FAILURES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET PATH` must answer 2xx or 3xx.
    Http(String),
    /// A TCP connection must open.
    Tcp,
}

impl Probe {
    pub fn parse(spec: &str) -> Result<Probe, String> {
        match spec.split_once(':') {
            Some(("http", path)) if path.starts_with('/') && !path.contains(char::is_whitespace) => {
                Ok(Probe::Http(path.to_string()))
            }
            Some(("http", path)) => Err(format!("{path:?} is not a path like /healthz")),
            None if spec == "tcp" => Ok(Probe::Tcp),
            _ => Err(format!("{spec:?}: expected http:/PATH or tcp")),
        }
    }

    /// One probe of the app at `app`, within `timeout`: `Err` says what failed.
    pub async fn check(&self, app: SocketAddr, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.attempt(app)).await {
            Ok(result) => result,
            Err(_) => Err(format!("{} timed out after {}ms", self.describe(), timeout.as_millis())),
        }
    }

    fn describe(&self) -> String {
        match self {
            Probe::Http(path) => format!("GET {path}"),
            Probe::Tcp => "TCP connect".to_string(),
        }
    }

    async fn attempt(&self, app: SocketAddr) -> Result<(), String> {
        let mut stream =
            tokio::net::TcpStream::connect(app).await.map_err(|e| format!("{}: {app}: {e}", self.describe()))?;
        let Probe::Http(path) = self else { return Ok(()) };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {app}\r\nUser-Agent: meshgate-probe\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("GET {path}: {e}"))?;
        // The status line is all a probe needs.
        let mut head = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            match stream.read(&mut head[n..]).await {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(format!("GET {path}: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&head[..n]);
        let status = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("GET {path}: not an HTTP answer"))?;
        if (200..400).contains(&status) { Ok(()) } else { Err(format!("GET {path} answered {status}")) }
    }
}

/// Healthy, or not and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub healthy: bool,
    pub reason: String,
}

impl Status {
    pub fn healthy() -> Status {
        Status { healthy: true, reason: String::new() }
    }
}

/// Probes every `interval` and publishes changes on `tx`.
pub async fn run(probe: Probe, app: SocketAddr, interval: Duration, tx: tokio::sync::watch::Sender<Status>) {
    let timeout = interval.clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(interval).await;
        let next = match probe.check(app, timeout).await {
            Ok(()) => {
                failures = 0;
                Some(Status::healthy())
            }
            Err(reason) => {
                failures += 1;
                (failures >= FAILURES).then_some(Status { healthy: false, reason })
            }
        };
        if let Some(next) = next {
            tx.send_if_modified(|now| {
                // A new reason while unhealthy is not news.
                let changed = now.healthy != next.healthy;
                if changed {
                    if next.healthy {
                        tracing::info!("the app is healthy again");
                    } else {
                        tracing::warn!(reason = %next.reason, "the app is unhealthy");
                    }
                    *now = next;
                }
                changed
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_say_what_is_wrong() {
        assert_eq!(Probe::parse("http:/healthz"), Ok(Probe::Http("/healthz".into())));
        assert_eq!(Probe::parse("tcp"), Ok(Probe::Tcp));
        assert!(Probe::parse("http:healthz").unwrap_err().contains("not a path"));
        assert!(Probe::parse("exec:true").unwrap_err().contains("expected http:/PATH or tcp"));
    }

    #[tokio::test]
    async fn probes_tell_a_serving_app_from_a_failing_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                n += 1;
                let status = if n == 1 { "200 OK" } else { "503 Service Unavailable" };
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let http = Probe::Http("/healthz".into());
        let second = Duration::from_secs(5);
        assert_eq!(http.check(app, second).await, Ok(()));
        assert_eq!(http.check(app, second).await, Err("GET /healthz answered 503".into()));
        assert_eq!(Probe::Tcp.check(app, second).await, Ok(()));
        // Nothing listens on a port just released.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let err = Probe::Tcp.check(closed, second).await.unwrap_err();
        assert!(err.starts_with("TCP connect: 127.0.0.1:"), "{err}");
    }
}
