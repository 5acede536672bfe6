//! `meshgate logs [-f]`: access-log lines of every proxy, followed through
//! the control plane. Proxies make lines only while someone follows them
//! (or they have a log file), so following costs nothing when no one does.
//!
//! A follower registers here; an agent of a followed service is told so in
//! its config long poll (`logsWanted`) and sends its lines over its link
//! (`/mesh/v1/logs`) under a lease each post renews; the answer says when
//! nobody follows any more. The gateway's lines are read in process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long an agent counts as sending after its last post.
pub const LEASE: Duration = Duration::from_secs(15);

/// One line, and the proxy that wrote it.
#[derive(Debug, Clone)]
pub struct Line {
    pub proxy: Arc<str>,
    pub service: Arc<str>,
    pub text: Bytes,
}

impl Line {
    /// The line with `"proxy"` first, so merged lines say where they come from.
    pub fn tagged(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + self.proxy.len() + 16);
        out.extend_from_slice(b"{\"proxy\":");
        super::accesslog::json_str(&mut out, self.proxy.as_bytes());
        match self.text.strip_prefix(b"{") {
            Some(rest) if rest.first() != Some(&b'}') => {
                out.push(b',');
                out.extend_from_slice(rest);
            }
            _ => out.extend_from_slice(b"}"),
        }
        out.push(b'\n');
        out
    }
}

pub struct LogHub {
    lines: tokio::sync::broadcast::Sender<Arc<Line>>,
    /// Followers by service (`""`: every service).
    followers: tokio::sync::watch::Sender<BTreeMap<String, usize>>,
    /// Agents sending lines, until when.
    sending: Mutex<HashMap<String, Instant>>,
}

impl Default for LogHub {
    fn default() -> LogHub {
        LogHub {
            lines: tokio::sync::broadcast::channel(8192).0,
            followers: tokio::sync::watch::channel(BTreeMap::new()).0,
            sending: Mutex::new(HashMap::new()),
        }
    }
}

/// A follower; dropping it stops the lines once no one else follows.
pub struct Follower {
    hub: Arc<LogHub>,
    service: String,
    pub lines: tokio::sync::broadcast::Receiver<Arc<Line>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.hub.followers.send_modify(|f| {
            if let Some(n) = f.get_mut(&self.service) {
                *n -= 1;
                if *n == 0 {
                    f.remove(&self.service);
                }
            }
        });
    }
}

impl LogHub {
    /// Follows `service`'s proxies (all with `None`).
    pub fn follow(self: &Arc<Self>, service: Option<&str>) -> Follower {
        let service = service.unwrap_or("").to_string();
        let lines = self.lines.subscribe();
        self.followers.send_modify(|f| *f.entry(service.clone()).or_default() += 1);
        Follower { hub: self.clone(), service, lines }
    }

    /// Whether anyone follows `service`.
    pub fn wants(&self, service: &str) -> bool {
        let f = self.followers.borrow();
        f.contains_key("") || f.contains_key(service)
    }

    fn sending(&self, agent: &str) -> bool {
        let s = self.sending.lock().unwrap_or_else(|e| e.into_inner());
        s.get(agent).is_some_and(|until| *until > Instant::now())
    }

    /// Resolves when someone follows `service` and agent `agent` is not
    /// sending yet (the agent then starts, under a lease).
    pub async fn wanted(&self, agent: &str, service: &str) {
        let mut rx = self.followers.subscribe();
        loop {
            rx.borrow_and_update();
            if self.wants(service) && !self.sending(agent) {
                self.sending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(agent.to_string(), Instant::now() + LEASE);
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// An agent's lines; whether it should keep sending.
    pub fn publish(&self, agent: &str, service: &str, lines: Vec<String>) -> bool {
        let more = self.wants(service);
        let mut sending = self.sending.lock().unwrap_or_else(|e| e.into_inner());
        if more {
            sending.insert(agent.to_string(), Instant::now() + LEASE);
        } else {
            sending.remove(agent);
        }
        drop(sending);
        let (proxy, service): (Arc<str>, Arc<str>) = (agent.into(), service.into());
        for text in lines {
            let _ =
                self.lines.send(Arc::new(Line { proxy: proxy.clone(), service: service.clone(), text: text.into() }));
        }
        more
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_are_counted_and_agents_told() {
        let hub = Arc::new(LogHub::default());
        assert!(!hub.wants("orders"));
        let mut f = hub.follow(Some("orders"));
        assert!(hub.wants("orders") && !hub.wants("users"));
        tokio::time::timeout(Duration::from_secs(5), hub.wanted("orders-1", "orders")).await.unwrap();
        // Sending now: not asked again until the lease runs out.
        assert!(tokio::time::timeout(Duration::from_millis(50), hub.wanted("orders-1", "orders")).await.is_err());
        assert!(hub.publish("orders-1", "orders", vec!["{\"response_code\":200}".into()]));
        let line = f.lines.recv().await.unwrap();
        assert_eq!(line.tagged(), b"{\"proxy\":\"orders-1\",\"response_code\":200}\n");
        drop(f);
        assert!(!hub.publish("orders-1", "orders", vec![]), "nobody follows any more");
    }
}
