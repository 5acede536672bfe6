//! `meshgate up` configuration: embedded defaults, then `--config FILE`,
//! then flags, each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Flags of `meshgate up`, as PRODUCT.md lists them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UpArgs {
    /// YAML file with listeners, trust domain and cluster domain
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the database, CA and admin token live [default: ./meshgate-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Admin API and console address [default: 127.0.0.1:15000]
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Gateway HTTP address (Gateway servers on port 80) [default: 0.0.0.0:8080]
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Gateway HTTPS address (Gateway servers on port 443) [default: 0.0.0.0:8443]
    #[arg(long, value_name = "ADDR")]
    pub https: Option<SocketAddr>,
    /// Mesh address where agents join and fetch config [default: 0.0.0.0:15012]
    #[arg(long, value_name = "ADDR")]
    pub mesh: Option<SocketAddr>,
    /// Plug-in CA: a PEM file whose first certificate (a root or an intermediate) signs workload certificates, followed by its chain up to the root
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The plug-in CA certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Serve the admin API and console over HTTPS with a certificate from meshgate's CA (names: localhost, 127.0.0.1, ::1, the --admin IP and this host's name); the CA root goes to DATA_DIR/admin-ca.pem for clients
    #[arg(long)]
    pub admin_tls: bool,
    /// Serve the admin API and console over HTTPS with this certificate chain (PEM) instead
    #[arg(long, value_name = "FILE", requires = "admin_key")]
    pub admin_cert: Option<PathBuf>,
    /// The --admin-cert certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "admin_cert")]
    pub admin_key: Option<PathBuf>,
    /// Run a sidecar agent in this process (SPEC as for `meshgate agent`)
    #[arg(long, value_name = "SPEC")]
    pub sidecar: Vec<String>,
    /// This host's locality, region/zone/subzone (e.g. us-east/zone-a), for locality failover
    #[arg(long, value_name = "LOCALITY")]
    pub locality: Option<String>,
    /// Serve Gateway port PORT on HOSTPORT instead (0: any free port), e.g. 9443=19443,8081=0
    #[arg(long, value_name = "PORT=HOSTPORT", value_delimiter = ',', value_parser = parse_port_map)]
    pub port_map: Vec<(u32, u16)>,
    /// Most client connections the gateway holds open at once, over all its ports [default: 50000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Gateway worker threads (each owns its connections) and API runtime threads [default: one per CPU core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Proxies in front of the gateway (CIDRs, e.g. 10.0.0.0/8,192.168.1.5): only their X-Forwarded-For entries name the client [default: none]
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// JSON access log of the gateway: `-` for stdout, or a file [default: none]
    #[arg(long, value_name = "FILE|-")]
    pub access_log: Option<String>,
    /// How long an agent may be out of contact before its instance counts as unhealthy [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub agent_grace: Option<String>,
}

/// The `--config` file. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    listeners: Option<Listeners>,
    trust_domain: Option<String>,
    cluster_domain: Option<String>,
    locality: Option<String>,
    /// Istio's MeshConfig fields meshgate reads: where spans are exported.
    mesh_config: Option<MeshConfigFile>,
    /// The built-in trace store's budget.
    trace_store: Option<TraceStoreFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MeshConfigFile {
    enable_tracing: Option<bool>,
    default_config: Option<ProxyConfigFile>,
    #[serde(default)]
    extension_providers: Vec<ExtensionProvider>,
    default_providers: Option<DefaultProviders>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProxyConfigFile {
    tracing: Option<ProxyTracing>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProxyTracing {
    zipkin: Option<ZipkinAddress>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ZipkinAddress {
    address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Access logging and metrics have one provider each (the JSON log and Prometheus), so only `tracing` is read.
#[allow(dead_code)]
struct DefaultProviders {
    #[serde(default)]
    tracing: Vec<String>,
    #[serde(default)]
    access_logging: Vec<String>,
    #[serde(default)]
    metrics: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExtensionProvider {
    name: String,
    opentelemetry: Option<OtelProvider>,
    zipkin: Option<ZipkinProvider>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtelProvider {
    service: String,
    port: u16,
    /// OTLP over HTTP/protobuf when given; gRPC otherwise (as Istio).
    http: Option<OtelHttp>,
    grpc: Option<OtelGrpc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtelHttp {
    path: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    headers: Vec<NameValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtelGrpc {
    timeout: Option<String>,
    #[serde(default)]
    initial_metadata: Vec<NameValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ZipkinProvider {
    service: String,
    port: u16,
    path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TraceStoreFile {
    /// Memory budget in MiB [default: 96].
    max_megabytes: Option<usize>,
    /// Traces with a span at least this long are kept longer [default: 1s].
    slow_threshold: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Listeners {
    admin: Option<SocketAddr>,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    mesh: Option<SocketAddr>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub admin: SocketAddr,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub mesh: SocketAddr,
    pub trust_domain: String,
    pub cluster_domain: String,
    pub sidecars: Vec<String>,
    /// Where this host runs, `region/zone/subzone`, for locality-aware load balancing.
    pub locality: String,
    /// Gateway port → host port, for ports other than 80 and 443.
    pub port_map: std::collections::BTreeMap<u32, u16>,
    /// Client connections the gateway holds open at once, over all ports.
    pub max_connections: usize,
    /// Threads that serve the gateway's `--http` and `--https` ports, each
    /// with its own accept socket and connections (nginx's workers).
    pub workers: usize,
    /// A plug-in CA (certificate file, key file) instead of the self-made root.
    pub ca: Option<(PathBuf, PathBuf)>,
    /// HTTPS on the admin address, and with which certificate.
    pub admin_tls: AdminTls,
    /// How long an agent may be out of contact before its instance counts as unhealthy.
    pub agent_grace: std::time::Duration,
    /// Proxies whose `X-Forwarded-For` entries are believed.
    pub trusted_proxies: Vec<crate::proxy::authz::Cidr>,
    /// The gateway's JSON access log: `-` (stdout) or a file.
    pub access_log: Option<String>,
    /// The gateway records spans (`meshConfig.enableTracing`, default true).
    pub tracing: bool,
    /// Where the appliance exports every span it gets.
    pub trace_providers: Vec<crate::telemetry::export::Provider>,
    pub trace_store: crate::telemetry::tracestore::Limits,
}

/// Whether the admin address speaks HTTPS, and with which certificate.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminTls {
    Off,
    /// A certificate from meshgate's own CA.
    MeshCa,
    /// The user's certificate chain and key (PEM files).
    Files(PathBuf, PathBuf),
}

fn parse_port_map(s: &str) -> Result<(u32, u16), String> {
    let (from, to) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected PORT=HOSTPORT, like 9443=19443"))?;
    let from: u32 = from.trim().parse().map_err(|_| format!("{s:?}: {from:?} is not a port number"))?;
    let to: u16 = to.trim().parse().map_err(|_| format!("{s:?}: {to:?} is not a port number"))?;
    if !(1..=65535).contains(&from) {
        return Err(format!("{s:?}: Gateway port {from} is out of range"));
    }
    Ok((from, to))
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("meshgate-data"),
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
            http: SocketAddr::from(([0, 0, 0, 0], 8080)),
            https: SocketAddr::from(([0, 0, 0, 0], 8443)),
            mesh: SocketAddr::from(([0, 0, 0, 0], 15012)),
            trust_domain: "cluster.local".into(),
            cluster_domain: meshgate_model::hosts::DEFAULT_CLUSTER_DOMAIN.into(),
            sidecars: Vec::new(),
            locality: String::new(),
            port_map: Default::default(),
            max_connections: 50_000,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ca: None,
            admin_tls: AdminTls::Off,
            agent_grace: std::time::Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            access_log: None,
            tracing: true,
            trace_providers: Vec::new(),
            trace_store: Default::default(),
        }
    }
}

impl Config {
    pub fn resolve(args: &UpArgs) -> anyhow::Result<Config> {
        let mut c = Config::default();
        if let Some(path) = &args.config {
            c.apply_file(path)?;
        }
        if let Some(d) = &args.data_dir {
            c.data_dir = d.clone();
        }
        c.admin = args.admin.unwrap_or(c.admin);
        c.http = args.http.unwrap_or(c.http);
        c.https = args.https.unwrap_or(c.https);
        c.mesh = args.mesh.unwrap_or(c.mesh);
        c.sidecars = args.sidecar.clone();
        if args.access_log.is_some() {
            c.access_log = args.access_log.clone();
        }
        for p in args.trusted_proxies.iter().filter(|p| !p.trim().is_empty()) {
            let cidr = crate::proxy::authz::Cidr::parse(p).ok_or_else(|| {
                anyhow::anyhow!("--trusted-proxies {p:?}: expected an address or CIDR block, e.g. 10.0.0.0/8")
            })?;
            c.trusted_proxies.push(cidr);
        }
        if let Some(g) = &args.agent_grace {
            c.agent_grace =
                meshgate_model::check::parse_duration(g).map_err(|e| anyhow::anyhow!("--agent-grace {g:?}: {e}"))?;
        }
        if let (Some(cert), Some(key)) = (&args.ca_cert, &args.ca_key) {
            c.ca = Some((cert.clone(), key.clone()));
        }
        c.admin_tls = match (&args.admin_cert, &args.admin_key, args.admin_tls) {
            (Some(cert), Some(key), _) => AdminTls::Files(cert.clone(), key.clone()),
            (_, _, true) => AdminTls::MeshCa,
            _ => AdminTls::Off,
        };
        if let Some(l) = &args.locality {
            c.locality = l.clone();
        }
        c.port_map.extend(args.port_map.iter().copied());
        if let Some(n) = args.workers {
            c.workers = usize::from(n).max(1);
        }
        if let Some(n) = args.max_connections {
            c.max_connections = n.max(1);
        }
        Ok(c)
    }

    fn apply_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let name = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read config file {name}: {e}"))?;
        let file: ConfigFile = serde_saphyr::from_str(&text).map_err(|e| {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            anyhow::anyhow!("config file {name}: {first}")
        })?;
        if let Some(d) = file.data_dir {
            self.data_dir = d;
        }
        if let Some(l) = file.listeners {
            self.admin = l.admin.unwrap_or(self.admin);
            self.http = l.http.unwrap_or(self.http);
            self.https = l.https.unwrap_or(self.https);
            self.mesh = l.mesh.unwrap_or(self.mesh);
        }
        let domain = |field: &str, value: String| -> anyhow::Result<String> {
            let mut errs = meshgate_model::check::Errors::default();
            errs.hostname(field, &value, false);
            match errs.items.first() {
                Some(e) => anyhow::bail!("config file {name}: {e}"),
                None => Ok(value),
            }
        };
        if let Some(t) = file.trust_domain {
            self.trust_domain = domain("trustDomain", t)?;
        }
        if let Some(cd) = file.cluster_domain {
            self.cluster_domain = domain("clusterDomain", cd)?;
        }
        if let Some(l) = file.locality {
            self.locality = l;
        }
        if let Some(m) = file.mesh_config {
            self.apply_mesh_config(m).map_err(|e| anyhow::anyhow!("config file {name}: meshConfig.{e}"))?;
        }
        if let Some(t) = file.trace_store {
            if let Some(mb) = t.max_megabytes {
                self.trace_store.max_bytes = mb.max(1) << 20;
            }
            if let Some(d) = t.slow_threshold {
                let d = meshgate_model::check::parse_duration(&d)
                    .map_err(|e| anyhow::anyhow!("config file {name}: traceStore.slowThreshold: {e}"))?;
                self.trace_store.slow_nanos = d.as_nanos().min(u128::from(u64::MAX)) as u64;
            }
        }
        Ok(())
    }

    /// The tracing providers: `defaultProviders.tracing` (names from
    /// `extensionProviders`) and `defaultConfig.tracing.zipkin.address`.
    fn apply_mesh_config(&mut self, m: MeshConfigFile) -> Result<(), String> {
        use crate::telemetry::export::{Protocol, Provider};
        let timeout = |t: Option<&String>, at: &str| -> Result<std::time::Duration, String> {
            match t {
                Some(t) => meshgate_model::check::parse_duration(t).map_err(|e| format!("{at}.timeout: {e}")),
                None => Ok(std::time::Duration::from_secs(5)),
            }
        };
        if let Some(on) = m.enable_tracing {
            self.tracing = on;
        }
        let mut known = Vec::new();
        for (i, p) in m.extension_providers.iter().enumerate() {
            let at = format!("extensionProviders[{i}]");
            if p.name.is_empty() {
                return Err(format!("{at}.name: missing"));
            }
            let provider = match (&p.opentelemetry, &p.zipkin) {
                (Some(o), None) => match &o.http {
                    Some(h) => Provider {
                        name: p.name.clone(),
                        protocol: Protocol::OtlpHttp,
                        endpoint: format!(
                            "http://{}:{}{}",
                            o.service,
                            o.port,
                            h.path.as_deref().unwrap_or("/v1/traces")
                        ),
                        headers: h.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
                        timeout: timeout(h.timeout.as_ref(), &format!("{at}.opentelemetry.http"))?,
                        default: false,
                    },
                    None => Provider {
                        name: p.name.clone(),
                        protocol: Protocol::OtlpGrpc,
                        endpoint: format!("http://{}:{}", o.service, o.port),
                        headers: o
                            .grpc
                            .iter()
                            .flat_map(|g| &g.initial_metadata)
                            .map(|h| (h.name.clone(), h.value.clone()))
                            .collect(),
                        timeout: timeout(
                            o.grpc.as_ref().and_then(|g| g.timeout.as_ref()),
                            &format!("{at}.opentelemetry.grpc"),
                        )?,
                        default: false,
                    },
                },
                (None, Some(z)) => Provider {
                    name: p.name.clone(),
                    protocol: Protocol::Zipkin,
                    endpoint: format!(
                        "http://{}:{}{}",
                        z.service,
                        z.port,
                        z.path.as_deref().unwrap_or("/api/v2/spans")
                    ),
                    headers: Default::default(),
                    timeout: std::time::Duration::from_secs(5),
                    default: false,
                },
                _ => {
                    return Err(format!(
                        "{at}: give exactly one of opentelemetry, zipkin (the tracing providers meshgate exports to)"
                    ));
                }
            };
            known.push(provider);
        }
        for (i, name) in m.default_providers.iter().flat_map(|d| &d.tracing).enumerate() {
            match known.iter_mut().find(|p| &p.name == name) {
                Some(p) => p.default = true,
                None => {
                    let names: Vec<&str> = known.iter().map(|p| p.name.as_str()).collect();
                    return Err(format!(
                        "defaultProviders.tracing[{i}]: {name:?} is not in extensionProviders (those are: {})",
                        names.join(", ")
                    ));
                }
            }
        }
        // Every provider gets an exporter: the defaults take the spans of
        // workloads whose Telemetry names none, the others those that name them.
        self.trace_providers.extend(known);
        if let Some(z) = m.default_config.and_then(|d| d.tracing).and_then(|t| t.zipkin) {
            self.trace_providers.push(Provider {
                name: "zipkin".into(),
                protocol: Protocol::Zipkin,
                endpoint: format!("http://{}/api/v2/spans", z.address),
                headers: Default::default(),
                timeout: std::time::Duration::from_secs(5),
                default: true,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshgate.yaml");
        std::fs::write(
            &path,
            "listeners:\n  admin: 127.0.0.1:25000\n  http: 127.0.0.1:28080\nclusterDomain: mesh.internal\n",
        )
        .unwrap();
        let args =
            UpArgs { config: Some(path.clone()), http: Some("127.0.0.1:1".parse().unwrap()), ..Default::default() };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.admin, "127.0.0.1:25000".parse().unwrap());
        assert_eq!(c.http, "127.0.0.1:1".parse().unwrap());
        assert_eq!(c.https, Config::default().https);
        assert_eq!(c.cluster_domain, "mesh.internal");
    }

    #[test]
    fn unknown_config_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshgate.yaml");
        std::fs::write(&path, "listners:\n  admin: 127.0.0.1:25000\n").unwrap();
        let err = Config::resolve(&UpArgs { config: Some(path), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("listners"), "{err}");
    }
}
