//! A real `meshgate up` process on port 0 with a temporary data dir, and
//! the real CLI pointed at it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_meshgate");

/// Generous bound that only catches a hang; readiness is waited for, not slept on.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Server {
    pub child: Child,
    pub admin: String,
    /// The gateway's `--http` address (Gateway servers on port 80).
    pub http: String,
    /// The gateway's `--https` address (Gateway servers on port 443).
    pub https: String,
    /// The mesh port, as agents join it: `https://ADDR`.
    pub mesh: String,
    /// `sha256:HEX` of the mesh CA root, as `meshgate up` prints it.
    pub ca_fingerprint: String,
    pub data_dir: PathBuf,
    pub stdout: Vec<String>,
    /// Standard output after the ready line, as it comes.
    pub more: std::sync::Mutex<mpsc::Receiver<String>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts meshgate on a fresh data dir.
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut s = Server::start_in(&data_dir, &[]);
        s._tmp = Some(tmp);
        s
    }

    /// Starts meshgate on a fresh data dir with extra `up` flags.
    pub fn start_with(args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Server::start_full(&tmp.path().join("data"), &[], args);
        s._tmp = Some(tmp);
        s
    }

    /// Starts meshgate on `data_dir` (kept by the caller), with extra env.
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_full(data_dir, env, &[])
    }

    /// Starts meshgate on `data_dir` (kept by the caller) with extra `up` flags.
    pub fn start_in_with(data_dir: &Path, args: &[&str]) -> Server {
        Server::start_full(data_dir, &[], args)
    }

    pub fn start_full(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("up");
        // Port 0 for every listener the caller does not choose.
        for flag in ["--admin", "--http", "--https", "--mesh"] {
            if !args.contains(&flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("MESHGATE_LOG", "warn")
            // Request summaries for the built-in time series every second, not every 10 s.
            .env("MESHGATE_STATS_INTERVAL", "1s")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn meshgate up");
        let stdout = child.stdout.take().expect("stdout");
        let rx = line_reader(stdout);
        let mut lines = Vec::new();
        let field = |rest: &str, key: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .unwrap_or_else(|| panic!("{key} in ready line"))
                .to_string()
        };
        let (admin, http, https, mesh) = loop {
            match rx.recv_timeout(READY_TIMEOUT) {
                Ok(line) => {
                    let ready = line.strip_prefix("meshgate ready ").map(|rest| {
                        (field(rest, "admin="), field(rest, "http="), field(rest, "https="), field(rest, "mesh="))
                    });
                    lines.push(line);
                    if let Some(a) = ready {
                        break a;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("meshgate did not print `meshgate ready`; output so far: {lines:?}");
                }
            }
        };
        let ca_fingerprint = lines
            .iter()
            .find_map(|l| l.strip_prefix("mesh CA root: "))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("`mesh CA root:` line before ready")
            .to_string();
        Server {
            child,
            admin,
            http,
            https,
            mesh: format!("https://{mesh}"),
            ca_fingerprint,
            data_dir: data_dir.to_path_buf(),
            stdout: lines,
            more: std::sync::Mutex::new(rx),
            _tmp: None,
        }
    }

    /// The next stdout line that starts with `prefix` (later lines are skipped past).
    pub fn wait_stdout(&self, prefix: &str) -> String {
        wait_line(&self.more.lock().unwrap(), prefix, &mut Vec::new())
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token")).expect("admin.token").trim().to_string()
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None)
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("MESHGATE_SERVER", &self.admin)
            .env("MESHGATE_TOKEN", self.token())
            .env_remove("MESHGATE_CA_FILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.admin.starts_with("https://") {
            cmd.env("MESHGATE_CA_FILE", self.data_dir.join("admin-ca.pem"));
        }
        let mut child = cmd.spawn().expect("spawn meshgate cli");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("cli output")
    }

    /// Runs the CLI and insists it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "meshgate {args:?} failed:\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs the CLI and insists it fails with exit status 1; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(out.status.code(), Some(1), "meshgate {args:?} should fail:\nstdout: {}", text(&out.stdout));
        text(&out.stderr)
    }

    /// A client for the admin address (trusting `admin-ca.pem` when it speaks HTTPS) and the gateway.
    pub fn http(&self) -> reqwest::blocking::Client {
        let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30));
        if self.admin.starts_with("https://") {
            let pem = std::fs::read(self.data_dir.join("admin-ca.pem")).expect("admin-ca.pem");
            for root in reqwest::Certificate::from_pem_bundle(&pem).expect("PEM roots") {
                b = b.add_root_certificate(root);
            }
        }
        b.build().expect("client")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// Applies YAML through the CLI; panics with the CLI's output on failure.
    pub fn apply(&self, yaml: &str) -> String {
        let out = self.cli_with_stdin(&["apply", "-f", "-"], Some(yaml));
        assert!(out.status.success(), "apply failed:\n{}\n{yaml}", text(&out.stderr));
        text(&out.stdout)
    }

    /// A request to the gateway's `--http` listener with a Host header.
    pub fn gateway(
        &self,
        client: &reqwest::blocking::Client,
        host: &str,
        path: &str,
    ) -> reqwest::blocking::RequestBuilder {
        client.get(format!("http://{}{path}", self.http)).header("host", host)
    }

    /// Where the gateway serves Gateway port `port`, from `proxy-status`.
    pub fn listener(&self, port: u64) -> Option<String> {
        let status: serde_json::Value = self
            .http()
            .get(self.url("/api/v1/proxy-status"))
            .bearer_auth(self.token())
            .send()
            .expect("proxy-status")
            .json()
            .expect("proxy-status JSON");
        status["listeners"]
            .as_array()?
            .iter()
            .find(|l| l["port"] == port)
            .map(|l| l["address"].as_str().unwrap_or("").to_string())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(30));
        std::mem::forget(self);
        status
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("meshgate did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child's output as lines, read by a thread of its own as they come.
pub fn line_reader(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line from `lines` that starts with `prefix`; the lines before it go to `seen`.
pub fn wait_line(lines: &mpsc::Receiver<String>, prefix: &str, seen: &mut Vec<String>) -> String {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line starting with {prefix:?}; saw {seen:?}"),
        }
    }
}

/// Runs `meshgate up` (listeners on port 0, a fresh data dir) with `extra`
/// flags that must make it refuse to start; returns its output.
pub fn up_fails(extra: &[&str]) -> Output {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args([
            "up",
            "--admin",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--mesh",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .args(extra)
        .output()
        .expect("run meshgate up");
    assert!(!out.status.success(), "meshgate up {extra:?} should have refused to start");
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name).display().to_string()
}

/// Opens the database read-only and runs `PRAGMA integrity_check`.
pub fn integrity_check(data_dir: &Path) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        use sqlx::ConnectOptions as _;
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("meshgate.db")).read_only(true);
        let mut conn = opts.connect().await.expect("open db");
        let result: String =
            sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await.expect("integrity_check");
        result
    })
}

/// A TLS client configuration trusting `root_pem`, presenting `identity`
/// (certificate and key PEM) when given, offering `alpn`.
pub fn tls_client(
    root_pem: &str,
    identity: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes()).map(|c| c.unwrap()).collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}
