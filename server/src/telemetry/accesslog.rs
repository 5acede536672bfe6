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

/// Bytes of recent lines a proxy with a log file keeps for `meshgate logs`.
const RECENT: usize = 64 << 10;
/// Lines waiting for a slow follower before it misses some.
const TAP: usize = 4096;

pub struct AccessLog {
    file: Option<FileSink>,
    /// The newest lines (newline-terminated), when there is a file:
    /// between 64 and 128 KiB, cut back by whole lines.
    recent: Mutex<Vec<u8>>,
    /// `meshgate logs -f`: lines while someone follows, even without a file.
    tap: tokio::sync::broadcast::Sender<bytes::Bytes>,
    /// Followers now (read on every request, so an atomic, not the channel's lock).
    followers: std::sync::atomic::AtomicUsize,
    pub dropped: AtomicU64,
}

/// New lines for one follower; dropping it stops them.
pub struct Following {
    log: Arc<AccessLog>,
    pub lines: tokio::sync::broadcast::Receiver<bytes::Bytes>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.log.followers.fetch_sub(1, Ordering::SeqCst);
    }
}

struct FileSink {
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
}

impl AccessLog {
    /// `Some("-")` writes to stdout, `Some(file)` appends to the file (made
    /// 0640); `None` writes nowhere until someone follows the log.
    pub fn open(target: Option<&str>) -> anyhow::Result<Arc<AccessLog>> {
        let out: Option<Box<dyn std::io::Write + Send>> = match target {
            None => None,
            Some("-") => Some(Box::new(std::io::stdout())),
            Some(target) => {
                use std::os::unix::fs::OpenOptionsExt as _;
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(target)
                    .map_err(|e| anyhow::anyhow!("--access-log {target}: {e}"))?;
                Some(Box::new(file))
            }
        };
        let log = Arc::new(AccessLog {
            file: out
                .is_some()
                .then(|| FileSink { pending: Mutex::new(Vec::with_capacity(WAKE_AT)), wake: Condvar::new() }),
            recent: Mutex::new(Vec::new()),
            tap: tokio::sync::broadcast::channel(TAP).0,
            followers: Default::default(),
            dropped: AtomicU64::new(0),
        });
        let Some(mut out) = out else { return Ok(log) };
        // The writer holds only a weak reference: it ends with the log.
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut spare = Vec::with_capacity(WAKE_AT);
            while let Some(log) = weak.upgrade() {
                let Some(sink) = &log.file else { return };
                {
                    let mut pending = sink.pending.lock().unwrap_or_else(|e| e.into_inner());
                    if pending.is_empty() {
                        pending = sink.wake.wait_timeout(pending, TICK).unwrap_or_else(|e| e.into_inner()).0;
                    }
                    std::mem::swap(&mut *pending, &mut spare);
                }
                if !spare.is_empty() {
                    keep_recent(&mut log.recent.lock().unwrap_or_else(|e| e.into_inner()), &spare);
                    drop(log);
                    if let Err(e) = out.write_all(&spare).and_then(|()| out.flush()) {
                        tracing::warn!(error = %e, "access log: write failed");
                    }
                    spare.clear();
                }
            }
        })?;
        Ok(log)
    }

    /// Whether lines are wanted now: there is a file, or someone follows.
    pub fn active(&self) -> bool {
        self.file.is_some() || self.followers.load(Ordering::Relaxed) > 0
    }

    /// New lines from now on (each without its newline).
    pub fn follow(self: &Arc<Self>) -> Following {
        let lines = self.tap.subscribe();
        self.followers.fetch_add(1, Ordering::SeqCst);
        Following { log: self.clone(), lines }
    }

    /// The newest lines kept (a proxy with a log file keeps 64 KiB of them).
    pub fn recent(&self) -> Vec<bytes::Bytes> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let from = recent.len().saturating_sub(RECENT);
        let from = if from == 0 {
            0
        } else {
            recent[from..].iter().position(|c| *c == b'\n').map_or(recent.len(), |p| from + p + 1)
        };
        recent[from..].split(|c| *c == b'\n').filter(|l| !l.is_empty()).map(bytes::Bytes::copy_from_slice).collect()
    }

    /// Appends one line (`line` without its newline).
    pub fn write(&self, line: &[u8]) {
        if self.followers.load(Ordering::Relaxed) > 0 {
            let _ = self.tap.send(bytes::Bytes::copy_from_slice(line));
        }
        let Some(sink) = &self.file else { return };
        let mut pending = sink.pending.lock().unwrap_or_else(|e| e.into_inner());
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
            sink.wake.notify_one();
        }
    }
}

/// Adds lines taken for the file to the recent ones (by the writer, off
/// the requests' path), keeping the newest RECENT bytes' whole lines.
fn keep_recent(recent: &mut Vec<u8>, lines: &[u8]) {
    let newest = |b: &[u8]| {
        let excess = b.len().saturating_sub(RECENT);
        if excess == 0 { 0 } else { b[excess..].iter().position(|c| *c == b'\n').map_or(b.len(), |p| excess + p + 1) }
    };
    recent.extend_from_slice(&lines[newest(lines)..]);
    if recent.len() > 2 * RECENT {
        let cut = newest(recent);
        recent.drain(..cut);
    }
}

/// Appends `s` as a JSON string (quoted, escaped).
pub fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    // Most values are plain printable ASCII: copied whole.
    if s.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
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
        let log = AccessLog::open(path.to_str()).unwrap();
        let mut follower = log.follow();
        for i in 0..3 {
            log.write(format!("{{\"n\":{i}}}").as_bytes());
        }
        assert_eq!(follower.lines.try_recv().unwrap(), "{\"n\":0}");
        // Without a file, lines are made only while someone follows.
        let quiet = AccessLog::open(None).unwrap();
        assert!(!quiet.active());
        let rx = quiet.follow();
        assert!(quiet.active());
        drop(rx);
        assert!(!quiet.active());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap().lines().count() < 3 {
            assert!(std::time::Instant::now() < deadline, "lines not written");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
        // What was written is kept for `meshgate logs`.
        assert_eq!(log.recent(), ["{\"n\":0}", "{\"n\":1}", "{\"n\":2}"]);
    }
}
