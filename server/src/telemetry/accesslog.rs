//! JSON access logs: one line per request, as Envoy's JSON access log
//! writes them, to stdout or a file. Requests append their line to a
//! shared buffer (a short lock, no system call); a writer thread takes the
//! buffer every 100 ms, or sooner when it fills, and writes it in one
//! call. A slow disk never slows requests: past 8 MiB waiting, lines are
//! counted as dropped instead.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Bytes waiting to be written; beyond this, new lines are dropped.
const MAX_PENDING: usize = 8 << 20;
/// A buffer this full wakes the writer before its next tick.
const WAKE_AT: usize = 256 << 10;
const TICK: Duration = Duration::from_millis(100);

pub struct AccessLog {
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
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
        let log = Arc::new(AccessLog {
            pending: Mutex::new(Vec::with_capacity(WAKE_AT)),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        // The writer holds only a weak reference: it ends with the log.
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut spare = Vec::with_capacity(WAKE_AT);
            while let Some(log) = weak.upgrade() {
                {
                    let mut pending = log.pending.lock().unwrap_or_else(|e| e.into_inner());
                    if pending.is_empty() {
                        pending = log.wake.wait_timeout(pending, TICK).unwrap_or_else(|e| e.into_inner()).0;
                    }
                    std::mem::swap(&mut *pending, &mut spare);
                }
                drop(log);
                if !spare.is_empty() {
                    if let Err(e) = out.write_all(&spare).and_then(|()| out.flush()) {
                        tracing::warn!(error = %e, "access log: write failed");
                    }
                    spare.clear();
                }
            }
        })?;
        Ok(log)
    }

    /// Appends one line (`line` without its newline).
    pub fn write(&self, line: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() + line.len() > MAX_PENDING {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.extend_from_slice(line);
        pending.push(b'\n');
        let full = pending.len() >= WAKE_AT;
        drop(pending);
        if full {
            self.wake.notify_one();
        }
    }
}

/// Appends `s` as a JSON string (quoted, escaped).
pub fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    let utf8 = std::str::from_utf8(s).is_ok();
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 | 0x7f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            // UTF-8 passes as it is; other bytes (headers may hold any) become code points.
            0x80.. if utf8 => out.push(b),
            0x80.. => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_json() {
        let mut out = Vec::new();
        json_str(&mut out, b"a\"b\\c\nd\x01\xe9");
        let mut utf8 = Vec::new();
        json_str(&mut utf8, "café".as_bytes());
        assert_eq!(String::from_utf8(utf8).unwrap(), "\"café\"");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, r#""a\"b\\c\nd\u0001\u00e9""#);
        let back: String = serde_json::from_str(&text).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}\u{e9}");
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(path.to_str().unwrap()).unwrap();
        for i in 0..3 {
            log.write(format!("{{\"n\":{i}}}").as_bytes());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap().lines().count() < 3 {
            assert!(std::time::Instant::now() < deadline, "lines not written");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
    }
}
