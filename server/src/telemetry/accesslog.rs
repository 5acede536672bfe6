//! JSON access logs: one line per request, as Envoy's JSON access log
//! writes them, to stdout or a file. Lines go to a writer thread through a
//! bounded queue: a slow disk never slows requests (lines that do not fit
//! are counted as dropped instead).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Lines waiting to be written; beyond this, new lines are dropped.
const QUEUE: usize = 16 * 1024;

pub struct AccessLog {
    tx: std::sync::mpsc::SyncSender<String>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// `-` writes to stdout; anything else is a file, appended to (made 0640).
    pub fn open(target: &str) -> anyhow::Result<Arc<AccessLog>> {
        let mut out: Box<dyn std::io::Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            use std::os::unix::fs::OpenOptionsExt as _;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(target)
                .map_err(|e| anyhow::anyhow!("--access-log {target}: {e}"))?;
            Box::new(file)
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut buf = Vec::with_capacity(64 * 1024);
            while let Ok(line) = rx.recv() {
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
                // Whatever else is queued goes in the same write.
                while let Ok(more) = rx.try_recv() {
                    buf.extend_from_slice(more.as_bytes());
                    buf.push(b'\n');
                    if buf.len() > 60 * 1024 {
                        break;
                    }
                }
                if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
                    tracing::warn!(error = %e, "access log: write failed");
                }
                buf.clear();
            }
        })?;
        Ok(Arc::new(AccessLog { tx, dropped: AtomicU64::new(0) }))
    }

    pub fn write(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
