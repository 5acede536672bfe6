//! Istio `networking.istio.io` specs (Gateway, VirtualService, DestinationRule, ServiceEntry,
//! WorkloadEntry) and their validation.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;

use crate::check::{Errors, check_object_name};
pub use crate::security::WorkloadSelector;

// ---------------------------------------------------------------------------
// Shared messages
// ---------------------------------------------------------------------------

/// A string matcher: exactly one of `exact`, `prefix` or `regex` (RE2 syntax).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(serialize_with = "number")]
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// A port of a Gateway server or a ServiceEntry (Istio's `Port` and `ServicePort` have the same fields).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// Any case is accepted, as in Istio; checked by `validate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

// ---------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// `host`, or `namespace/host` where namespace may be `*` or `.`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TlsProtocol {
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

const GATEWAY_PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS"];

impl GatewaySpec {
    pub fn validate(&self, errs: &mut Errors) {
        errs.labels("spec.selector", &self.selector);
        if self.servers.is_empty() {
            errs.push("spec.servers", "at least one server is required");
        }
        for (i, server) in self.servers.iter().enumerate() {
            server.validate(&format!("spec.servers[{i}]"), errs);
        }
        errs.unique(
            "port name",
            self.servers.iter().enumerate().filter_map(|(i, s)| {
                let name = s.port.as_ref()?.name.as_deref().filter(|n| !n.is_empty())?;
                Some((format!("spec.servers[{i}].port.name"), name))
            }),
        );
    }
}

impl Server {
    fn validate(&self, path: &str, errs: &mut Errors) {
        let protocol = self.port.as_ref().and_then(|p| p.protocol.as_deref()).unwrap_or_default().to_ascii_uppercase();
        match &self.port {
            Some(port) => port.validate(&format!("{path}.port"), GATEWAY_PROTOCOLS, false, errs),
            None => errs.push(format!("{path}.port"), "port is required"),
        }
        if self.hosts.is_empty() {
            errs.push(format!("{path}.hosts"), "at least one host is required");
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let hp = format!("{path}.hosts[{i}]");
            let dns_name = match host.split_once('/') {
                Some((ns, name)) => {
                    if ns != "*" && ns != "." && check_object_name(ns).is_err() {
                        errs.push(
                            hp.clone(),
                            format!("invalid namespace {ns:?} in host {host:?}: use \"*\", \".\" or a namespace name"),
                        );
                    }
                    name
                }
                None => host.as_str(),
            };
            errs.hostname(hp, dns_name, true);
        }
        if let Some(bind) = &self.bind {
            if bind.starts_with("unix://") {
                errs.push(format!("{path}.bind"), "unix:// binds are not built: give an IP address of this host");
            } else if bind.parse::<IpAddr>().is_err() {
                errs.push(format!("{path}.bind"), format!("invalid bind {bind:?}: must be an IP address"));
            }
        }
        if let Some(ep) = &self.default_endpoint
            && !ep.starts_with("unix://")
            && ep.parse::<std::net::SocketAddr>().is_err()
        {
            errs.push(
                format!("{path}.defaultEndpoint"),
                format!("invalid defaultEndpoint {ep:?}: must be IP:PORT (e.g. \"127.0.0.1:8080\") or a unix:// path"),
            );
        }
        let tls_path = format!("{path}.tls");
        match &self.tls {
            None if protocol == "HTTPS" || protocol == "TLS" => {
                errs.push(tls_path, format!("tls is required for a server with protocol {protocol}"));
            }
            None => {}
            Some(tls) => {
                let redirect_only = ServerTlsSettings { https_redirect: tls.https_redirect, ..Default::default() };
                if protocol == "HTTP" && *tls != redirect_only {
                    errs.push(
                        tls_path.clone(),
                        "an HTTP server may only set tls.httpsRedirect; use protocol HTTPS to terminate TLS",
                    );
                }
                tls.validate(&tls_path, errs);
            }
        }
    }
}

impl ServerTlsSettings {
    fn validate(&self, path: &str, errs: &mut Errors) {
        let p = |field: &str| format!("{path}.{field}");
        let sources =
            [self.credential_name.is_some(), !self.credential_names.is_empty(), !self.tls_certificates.is_empty()]
                .into_iter()
                .filter(|set| *set)
                .count();
        if sources > 1 {
            errs.push(p("credentialName"), "only one of credentialName, credentialNames or tlsCertificates may be set");
        }
        for (field, n) in
            [("credentialNames", self.credential_names.len()), ("tlsCertificates", self.tls_certificates.len())]
        {
            if n > 2 {
                errs.push(p(field), format!("{n} entries given: at most 2 are allowed (one RSA and one ECDSA)"));
            }
        }
        let files = self.server_certificate.is_some() || self.private_key.is_some();
        match self.mode {
            Some(mode @ (ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)) => {
                let mode = wire(&mode);
                if sources > 0 && files {
                    errs.push(p("serverCertificate"), "serverCertificate and privateKey cannot be combined with credentialName, credentialNames or tlsCertificates");
                } else if sources == 0 {
                    for (field, value) in
                        [("serverCertificate", &self.server_certificate), ("privateKey", &self.private_key)]
                    {
                        if value.is_none() {
                            errs.push(
                                p(field),
                                format!("{field} is required for {mode} TLS unless credentialName is set"),
                            );
                        }
                    }
                    if mode != "SIMPLE" && self.ca_certificates.is_none() {
                        errs.push(
                            p("caCertificates"),
                            format!("caCertificates is required for {mode} TLS unless credentialName is set"),
                        );
                    }
                }
            }
            Some(ServerTlsMode::IstioMutual) if sources > 0 || files || self.ca_certificates.is_some() => {
                errs.push(p("mode"), "ISTIO_MUTUAL uses Istio's own certificates: credentialName, serverCertificate, privateKey and caCertificates must not be set");
            }
            _ => {}
        }
        for (i, cert) in self.tls_certificates.iter().enumerate() {
            for (field, value) in [("serverCertificate", &cert.server_certificate), ("privateKey", &cert.private_key)] {
                if value.is_none() {
                    errs.push(format!("{path}.tlsCertificates[{i}].{field}"), format!("{field} is required"));
                }
            }
        }
        for (i, spki) in self.verify_certificate_spki.iter().enumerate() {
            if base64::engine::general_purpose::STANDARD.decode(spki).map(|b| b.len()) != Ok(32) {
                errs.push(
                    format!("{path}.verifyCertificateSpki[{i}]"),
                    format!("{spki:?} is not a base64-encoded SHA-256 hash"),
                );
            }
        }
        for (i, hash) in self.verify_certificate_hash.iter().enumerate() {
            let hex: String = hash.chars().filter(|c| *c != ':').collect();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                errs.push(
                    format!("{path}.verifyCertificateHash[{i}]"),
                    format!("{hash:?} is not a hex-encoded SHA-256 hash"),
                );
            }
        }
        if let (Some(min), Some(max)) = (self.min_protocol_version, self.max_protocol_version)
            && min != TlsProtocol::TlsAuto
            && max != TlsProtocol::TlsAuto
            && (min as u8) > (max as u8)
        {
            errs.push(
                p("minProtocolVersion"),
                format!("minProtocolVersion {} is above maxProtocolVersion {}", wire(&min), wire(&max)),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// VirtualService
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    /// Deprecated in Istio in favour of `mirrorPercentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// An empty matcher (`{}`) checks only that the header is present.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    FromProtocolDefault,
    FromRequestPort,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// Base64-encoded, as protobuf JSON writes bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Comma-separated Envoy retry conditions and HTTP status codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// Deprecated in Istio in favour of `percentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// A gRPC status name such as `UNAVAILABLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated in Istio in favour of `allowOrigins`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    Unspecified,
    Forward,
    Ignore,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Deprecated in Istio (never implemented by Envoy routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_subnet: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

const GRPC_CODES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

impl VirtualServiceSpec {
    pub fn validate(&self, errs: &mut Errors) {
        // Without hosts this is a delegate VirtualService, which may only hold http routes.
        let delegate = self.hosts.is_empty();
        if delegate && (!self.gateways.is_empty() || !self.tls.is_empty() || !self.tcp.is_empty()) {
            errs.push(
                "spec.hosts",
                "at least one host is required (only a delegate VirtualService, with http routes and no gateways, tls or tcp, may omit hosts)",
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            errs.hostname(format!("spec.hosts[{i}]"), host, true);
        }
        gateway_refs(errs, "spec.gateways", &self.gateways);
        if self.http.is_empty() && self.tls.is_empty() && self.tcp.is_empty() {
            errs.push("spec.http", "at least one http, tls or tcp route is required");
        }
        errs.unique(
            "route name",
            self.http.iter().enumerate().filter_map(|(i, r)| {
                Some((format!("spec.http[{i}].name"), r.name.as_deref().filter(|n| !n.is_empty())?))
            }),
        );
        for (i, route) in self.http.iter().enumerate() {
            route.validate(&format!("spec.http[{i}]"), delegate, errs);
        }
        for (i, route) in self.tls.iter().enumerate() {
            let path = format!("spec.tls[{i}]");
            if route.matches.is_empty() {
                errs.push(format!("{path}.match"), "a tls route needs at least one match with sniHosts");
            }
            for (j, m) in route.matches.iter().enumerate() {
                let mp = format!("{path}.match[{j}]");
                if m.sni_hosts.is_empty() {
                    errs.push(format!("{mp}.sniHosts"), "at least one SNI host is required");
                }
                for (k, host) in m.sni_hosts.iter().enumerate() {
                    errs.hostname(format!("{mp}.sniHosts[{k}]"), host, true);
                }
                let ns = m.source_namespace.as_deref();
                l4_match(errs, &mp, &m.destination_subnets, m.port, &m.source_labels, &m.gateways, ns);
            }
            let dests: Vec<_> = route.route.iter().map(|d| (d.destination.as_ref(), d.weight)).collect();
            route_destinations(errs, &path, &dests);
        }
        for (i, route) in self.tcp.iter().enumerate() {
            let path = format!("spec.tcp[{i}]");
            for (j, m) in route.matches.iter().enumerate() {
                let mp = format!("{path}.match[{j}]");
                if let Some(subnet) = &m.source_subnet {
                    ip_or_cidr(errs, format!("{mp}.sourceSubnet"), subnet);
                }
                let ns = m.source_namespace.as_deref();
                l4_match(errs, &mp, &m.destination_subnets, m.port, &m.source_labels, &m.gateways, ns);
            }
            let dests: Vec<_> = route.route.iter().map(|d| (d.destination.as_ref(), d.weight)).collect();
            route_destinations(errs, &path, &dests);
        }
        export_to(errs, &self.export_to);
    }
}

impl HttpRoute {
    fn validate(&self, path: &str, in_delegate: bool, errs: &mut Errors) {
        let p = |field: &str| format!("{path}.{field}");
        let actions: Vec<&str> = [
            ("route", !self.route.is_empty()),
            ("redirect", self.redirect.is_some()),
            ("directResponse", self.direct_response.is_some()),
            ("delegate", self.delegate.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match actions.len() {
            0 => errs.push(p("route"), "one of route, redirect, directResponse or delegate is required"),
            1 => {}
            _ => errs.push(
                path,
                format!(
                    "only one of route, redirect, directResponse or delegate may be set, found {}",
                    actions.join(" and ")
                ),
            ),
        }
        if self.rewrite.is_some() && self.redirect.is_some() {
            errs.push(p("rewrite"), "rewrite cannot be combined with redirect");
        }
        if self.mirror.is_some() && !self.mirrors.is_empty() {
            errs.push(p("mirrors"), "only one of mirror or mirrors may be set");
        }
        for (i, m) in self.matches.iter().enumerate() {
            m.validate(&format!("{path}.match[{i}]"), errs);
        }
        let dests: Vec<_> = self.route.iter().map(|d| (d.destination.as_ref(), d.weight)).collect();
        route_destinations(errs, path, &dests);
        for (i, d) in self.route.iter().enumerate() {
            if let Some(h) = &d.headers {
                h.validate(&format!("{path}.route[{i}].headers"), errs);
            }
        }
        if let Some(r) = &self.redirect {
            r.validate(&p("redirect"), errs);
        }
        if let Some(d) = &self.direct_response {
            d.validate(&p("directResponse"), errs);
        }
        if let Some(d) = &self.delegate {
            if in_delegate {
                errs.push(p("delegate"), "a delegate VirtualService (one without hosts) cannot delegate again");
            }
            match d.name.as_deref() {
                Some(name) if !name.is_empty() => name_check(errs, p("delegate.name"), name),
                _ => errs.push(p("delegate.name"), "name is required"),
            }
            if let Some(ns) = &d.namespace {
                name_check(errs, p("delegate.namespace"), ns);
            }
        }
        if let Some(r) = &self.rewrite {
            if r.uri.is_some() && r.uri_regex_rewrite.is_some() {
                errs.push(p("rewrite.uriRegexRewrite"), "only one of uri or uriRegexRewrite may be set");
            }
            if let Some(rr) = &r.uri_regex_rewrite {
                match &rr.pattern {
                    Some(re) => errs.regex(p("rewrite.uriRegexRewrite.match"), re),
                    None => errs.push(p("rewrite.uriRegexRewrite.match"), "match is required"),
                }
                if rr.rewrite.is_none() {
                    errs.push(p("rewrite.uriRegexRewrite.rewrite"), "rewrite is required");
                }
            }
        }
        if let Some(t) = &self.timeout {
            errs.duration(p("timeout"), t);
        }
        if let Some(r) = &self.retries {
            r.validate(&p("retries"), errs);
        }
        if let Some(f) = &self.fault {
            f.validate(&p("fault"), errs);
        }
        if let Some(m) = &self.mirror {
            destination(errs, &p("mirror"), m);
        }
        if let Some(pct) = &self.mirror_percentage {
            errs.percent(p("mirrorPercentage.value"), pct.value);
        }
        if let Some(pct) = self.mirror_percent {
            errs.percent(p("mirrorPercent"), f64::from(pct));
        }
        for (i, m) in self.mirrors.iter().enumerate() {
            let mp = format!("{path}.mirrors[{i}]");
            required_destination(errs, &format!("{mp}.destination"), m.destination.as_ref());
            if let Some(pct) = &m.percentage {
                errs.percent(format!("{mp}.percentage.value"), pct.value);
            }
        }
        if let Some(c) = &self.cors_policy {
            c.validate(&p("corsPolicy"), errs);
        }
        if let Some(h) = &self.headers {
            h.validate(&p("headers"), errs);
        }
    }
}

impl HttpMatchRequest {
    fn validate(&self, path: &str, errs: &mut Errors) {
        for (field, m) in
            [("uri", &self.uri), ("scheme", &self.scheme), ("method", &self.method), ("authority", &self.authority)]
        {
            if let Some(m) = m {
                validate_string_match(m, &format!("{path}.{field}"), false, errs);
            }
        }
        for (field, map) in
            [("headers", &self.headers), ("withoutHeaders", &self.without_headers), ("queryParams", &self.query_params)]
        {
            for (name, m) in map {
                let mp = format!("{path}.{field}.{name}");
                if name.is_empty() {
                    errs.push(mp.clone(), "name cannot be empty");
                }
                validate_string_match(m, &mp, true, errs);
            }
        }
        let ns = self.source_namespace.as_deref();
        l4_match(errs, path, &[], self.port, &self.source_labels, &self.gateways, ns);
    }
}

impl HttpRedirect {
    fn validate(&self, path: &str, errs: &mut Errors) {
        let nothing = self.uri.is_none()
            && self.authority.is_none()
            && self.port.is_none()
            && self.derive_port.is_none()
            && self.scheme.is_none();
        if nothing {
            errs.push(path, "redirect must set at least one of uri, authority, port, derivePort or scheme");
        }
        if self.port.is_some() && self.derive_port.is_some() {
            errs.push(format!("{path}.derivePort"), "only one of port or derivePort may be set");
        }
        if let Some(port) = self.port {
            errs.port(format!("{path}.port"), port);
        }
        if let Some(code) = self.redirect_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            errs.push(
                format!("{path}.redirectCode"),
                format!("redirect code {code} is not supported: must be one of 301, 302, 303, 307 or 308"),
            );
        }
    }
}

impl HttpDirectResponse {
    fn validate(&self, path: &str, errs: &mut Errors) {
        match self.status {
            None => errs.push(format!("{path}.status"), "status is required"),
            Some(s) if !(200..=599).contains(&s) => {
                errs.push(format!("{path}.status"), format!("status {s} is out of range: must be 200..=599"));
            }
            Some(_) => {}
        }
        let Some(body) = &self.body else { return };
        let bp = format!("{path}.body");
        let size = match (&body.string, &body.bytes) {
            (Some(_), Some(_)) => {
                errs.push(bp.clone(), "only one of string or bytes may be set");
                0
            }
            (None, None) => {
                errs.push(bp.clone(), "one of string or bytes is required");
                0
            }
            (Some(s), None) => s.len(),
            (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b) {
                Ok(bytes) => bytes.len(),
                Err(e) => {
                    errs.push(format!("{bp}.bytes"), format!("bytes must be base64-encoded: {e}"));
                    0
                }
            },
        };
        if size > 1 << 20 {
            errs.push(bp, format!("body is {size} bytes: must be at most 1 MiB"));
        }
    }
}

impl HttpRetry {
    fn validate(&self, path: &str, errs: &mut Errors) {
        if let Some(a) = self.attempts
            && a < 0
        {
            errs.push(format!("{path}.attempts"), format!("attempts {a} is negative: must be 0 or more"));
        }
        for (field, d) in [("perTryTimeout", &self.per_try_timeout), ("backoff", &self.backoff)] {
            if let Some(d) = d {
                errs.duration_at_least(format!("{path}.{field}"), d, MILLISECOND);
            }
        }
        let Some(retry_on) = &self.retry_on else { return };
        for cond in retry_on.split(',').map(str::trim) {
            let status = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            if cond.is_empty() {
                errs.push(format!("{path}.retryOn"), format!("empty condition in retryOn {retry_on:?}"));
            } else if !status && !RETRY_ON.contains(&cond) {
                errs.push(
                    format!("{path}.retryOn"),
                    format!(
                        "unknown retryOn condition {cond:?}: must be an HTTP status code or one of {}{}",
                        RETRY_ON.join(", "),
                        suggest(cond, RETRY_ON)
                    ),
                );
            }
        }
    }
}

impl HttpFaultInjection {
    fn validate(&self, path: &str, errs: &mut Errors) {
        if self.delay.is_none() && self.abort.is_none() {
            errs.push(path, "fault must set delay or abort");
        }
        if let Some(d) = &self.delay {
            match &d.fixed_delay {
                Some(fd) => {
                    errs.duration_at_least(format!("{path}.delay.fixedDelay"), fd, MILLISECOND);
                }
                None => errs.push(format!("{path}.delay.fixedDelay"), "fixedDelay is required"),
            }
            if let Some(pct) = &d.percentage {
                errs.percent(format!("{path}.delay.percentage.value"), pct.value);
            }
            if let Some(pct) = d.percent {
                errs.percent(format!("{path}.delay.percent"), f64::from(pct));
            }
        }
        if let Some(a) = &self.abort {
            let ap = format!("{path}.abort");
            let kinds = [a.http_status.is_some(), a.grpc_status.is_some(), a.http2_error.is_some()];
            match kinds.into_iter().filter(|set| *set).count() {
                0 => errs.push(ap.clone(), "one of httpStatus, grpcStatus or http2Error is required"),
                1 => {}
                _ => errs.push(ap.clone(), "only one of httpStatus, grpcStatus or http2Error may be set"),
            }
            if let Some(s) = a.http_status
                && !(200..=599).contains(&s)
            {
                errs.push(format!("{ap}.httpStatus"), format!("HTTP status {s} is out of range: must be 200..=599"));
            }
            if let Some(g) = &a.grpc_status
                && !GRPC_CODES.contains(&g.as_str())
            {
                errs.push(
                    format!("{ap}.grpcStatus"),
                    format!(
                        "unknown gRPC status {g:?}: must be one of {}{}",
                        GRPC_CODES.join(", "),
                        suggest(g, GRPC_CODES)
                    ),
                );
            }
            if let Some(pct) = &a.percentage {
                errs.percent(format!("{ap}.percentage.value"), pct.value);
            }
        }
    }
}

impl CorsPolicy {
    fn validate(&self, path: &str, errs: &mut Errors) {
        for (i, m) in self.allow_origins.iter().enumerate() {
            validate_string_match(m, &format!("{path}.allowOrigins[{i}]"), false, errs);
        }
        for (i, method) in self.allow_methods.iter().enumerate() {
            if !HTTP_METHODS.contains(&method.as_str()) {
                errs.push(
                    format!("{path}.allowMethods[{i}]"),
                    format!(
                        "unknown HTTP method {method:?}: must be one of {}{}",
                        HTTP_METHODS.join(", "),
                        suggest(method, HTTP_METHODS)
                    ),
                );
            }
        }
        for (field, names) in [("allowHeaders", &self.allow_headers), ("exposeHeaders", &self.expose_headers)] {
            for (i, name) in names.iter().enumerate() {
                header_name(errs, format!("{path}.{field}[{i}]"), name);
            }
        }
        if let Some(d) = &self.max_age {
            errs.duration(format!("{path}.maxAge"), d);
        }
    }
}

impl Headers {
    fn validate(&self, path: &str, errs: &mut Errors) {
        for (field, ops) in [("request", &self.request), ("response", &self.response)] {
            let Some(ops) = ops else { continue };
            let names = ops
                .set
                .keys()
                .map(|k| (format!("{path}.{field}.set.{k}"), k))
                .chain(ops.add.keys().map(|k| (format!("{path}.{field}.add.{k}"), k)))
                .chain(ops.remove.iter().enumerate().map(|(i, k)| (format!("{path}.{field}.remove[{i}]"), k)));
            for (p, name) in names {
                header_name(errs, p, name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// DestinationRule
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Deprecated in Istio in favour of `warmup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
    /// Deprecated in Istio: an alias of `LEAST_REQUEST`.
    LeastConn,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
    /// Deprecated in Istio in favour of `ringHash.minimumRingSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub to: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "opt_number")]
    pub minimum_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "opt_number")]
    pub aggression: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i32>,
    /// Deprecated in Istio in favour of `consecutive5xxErrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientTlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ProxyProtocolVersion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// A plain number (protobuf `DoubleValue`), not a `Percent` message.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "opt_number")]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
}

impl DestinationRuleSpec {
    pub fn validate(&self, errs: &mut Errors) {
        match self.host.as_deref() {
            Some(host) if !host.is_empty() => errs.hostname("spec.host", host, true),
            _ => errs.push("spec.host", "host is required"),
        }
        if let Some(tp) = &self.traffic_policy {
            validate_traffic_policy(tp, "spec.trafficPolicy", errs);
        }
        for (i, subset) in self.subsets.iter().enumerate() {
            let path = format!("spec.subsets[{i}]");
            match subset.name.as_deref() {
                Some(name) if !name.is_empty() => name_check(errs, format!("{path}.name"), name),
                _ => errs.push(format!("{path}.name"), "name is required"),
            }
            errs.labels(&format!("{path}.labels"), &subset.labels);
            if let Some(tp) = &subset.traffic_policy {
                validate_traffic_policy(tp, &format!("{path}.trafficPolicy"), errs);
            }
        }
        errs.unique(
            "subset name",
            self.subsets.iter().enumerate().filter_map(|(i, s)| {
                Some((format!("spec.subsets[{i}].name"), s.name.as_deref().filter(|n| !n.is_empty())?))
            }),
        );
        export_to(errs, &self.export_to);
        if let Some(ws) = &self.workload_selector {
            errs.labels("spec.workloadSelector.matchLabels", &ws.match_labels);
        }
    }
}

/// Validates a traffic policy at the top level of a DestinationRule or of one of its subsets.
fn validate_traffic_policy(tp: &TrafficPolicy, path: &str, errs: &mut Errors) {
    let parts =
        (tp.load_balancer.as_ref(), tp.connection_pool.as_ref(), tp.outlier_detection.as_ref(), tp.tls.as_ref());
    validate_policy_parts(errs, path, parts);
    let mut ports = Vec::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{path}.portLevelSettings[{i}]");
        match pl.port.as_ref().and_then(|p| p.number) {
            Some(n) => {
                errs.port(format!("{pp}.port.number"), n);
                ports.push((format!("{pp}.port.number"), n.to_string()));
            }
            None => errs.push(format!("{pp}.port.number"), "port number is required"),
        }
        let parts =
            (pl.load_balancer.as_ref(), pl.connection_pool.as_ref(), pl.outlier_detection.as_ref(), pl.tls.as_ref());
        validate_policy_parts(errs, &pp, parts);
    }
    errs.unique("port", ports.iter().map(|(p, n)| (p.clone(), n.as_str())));
    if let Some(t) = &tp.tunnel {
        let tun = format!("{path}.tunnel");
        if let Some(proto) = &t.protocol
            && !proto.eq_ignore_ascii_case("CONNECT")
            && !proto.eq_ignore_ascii_case("POST")
        {
            errs.push(format!("{tun}.protocol"), format!("unknown tunnel protocol {proto:?}: must be CONNECT or POST"));
        }
        match t.target_host.as_deref() {
            Some(h) if h.parse::<IpAddr>().is_ok() => {}
            Some(h) if !h.is_empty() => errs.hostname(format!("{tun}.targetHost"), h, false),
            _ => errs.push(format!("{tun}.targetHost"), "targetHost is required"),
        }
        match t.target_port {
            Some(port) => errs.port(format!("{tun}.targetPort"), port),
            None => errs.push(format!("{tun}.targetPort"), "targetPort is required"),
        }
    }
    if let Some(pct) = tp.retry_budget.as_ref().and_then(|b| b.percent) {
        errs.percent(format!("{path}.retryBudget.percent"), pct);
    }
}

type PolicyParts<'a> = (
    Option<&'a LoadBalancerSettings>,
    Option<&'a ConnectionPoolSettings>,
    Option<&'a OutlierDetection>,
    Option<&'a ClientTlsSettings>,
);

/// The settings a traffic policy shares with its port-level settings.
fn validate_policy_parts(errs: &mut Errors, path: &str, (lb, pool, outlier, tls): PolicyParts<'_>) {
    if let Some(lb) = lb {
        validate_load_balancer(errs, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(tcp) = pool.and_then(|p| p.tcp.as_ref()) {
        let tp = format!("{path}.connectionPool.tcp");
        non_negative(errs, &tp, "maxConnections", tcp.max_connections);
        for (field, d) in
            [("connectTimeout", &tcp.connect_timeout), ("maxConnectionDuration", &tcp.max_connection_duration)]
        {
            if let Some(d) = d {
                errs.duration_at_least(format!("{tp}.{field}"), d, MILLISECOND);
            }
        }
        if let Some(d) = &tcp.idle_timeout {
            errs.duration(format!("{tp}.idleTimeout"), d);
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            for (field, d) in [("time", &ka.time), ("interval", &ka.interval)] {
                if let Some(d) = d {
                    errs.duration_at_least(format!("{tp}.tcpKeepalive.{field}"), d, MILLISECOND);
                }
            }
        }
    }
    if let Some(http) = pool.and_then(|p| p.http.as_ref()) {
        let hp = format!("{path}.connectionPool.http");
        non_negative(errs, &hp, "http1MaxPendingRequests", http.http1_max_pending_requests);
        non_negative(errs, &hp, "http2MaxRequests", http.http2_max_requests);
        non_negative(errs, &hp, "maxRequestsPerConnection", http.max_requests_per_connection);
        non_negative(errs, &hp, "maxRetries", http.max_retries);
        non_negative(errs, &hp, "maxConcurrentStreams", http.max_concurrent_streams);
        if let Some(d) = &http.idle_timeout {
            errs.duration(format!("{hp}.idleTimeout"), d);
        }
    }
    if let Some(od) = outlier {
        let op = format!("{path}.outlierDetection");
        non_negative(errs, &op, "consecutiveErrors", od.consecutive_errors);
        for (field, d) in [("interval", &od.interval), ("baseEjectionTime", &od.base_ejection_time)] {
            if let Some(d) = d {
                errs.duration_at_least(format!("{op}.{field}"), d, MILLISECOND);
            }
        }
        for (field, pct) in
            [("maxEjectionPercent", od.max_ejection_percent), ("minHealthPercent", od.min_health_percent)]
        {
            if let Some(pct) = pct {
                errs.percent(format!("{op}.{field}"), f64::from(pct));
            }
        }
        if od.consecutive_local_origin_failures.is_some() && od.split_external_local_origin_errors != Some(true) {
            errs.push(
                format!("{op}.consecutiveLocalOriginFailures"),
                "consecutiveLocalOriginFailures only takes effect with splitExternalLocalOriginErrors: true",
            );
        }
    }
    if let Some(tls) = tls {
        validate_client_tls(errs, &format!("{path}.tls"), tls);
    }
}

fn validate_load_balancer(errs: &mut Errors, path: &str, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        errs.push(path, "only one of simple or consistentHash may be set");
    }
    if let Some(ch) = &lb.consistent_hash {
        let cp = format!("{path}.consistentHash");
        let keys: Vec<&str> = [
            ("httpHeaderName", ch.http_header_name.is_some()),
            ("httpCookie", ch.http_cookie.is_some()),
            ("useSourceIp", ch.use_source_ip == Some(true)),
            ("httpQueryParameterName", ch.http_query_parameter_name.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match keys.len() {
            0 => errs.push(
                cp.clone(),
                "one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required",
            ),
            1 => {}
            _ => errs.push(cp.clone(), format!("only one hash key may be set, found {}", keys.join(" and "))),
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            errs.push(cp.clone(), "only one of ringHash or maglev may be set");
        }
        if let Some(cookie) = &ch.http_cookie {
            if cookie.name.as_deref().unwrap_or_default().is_empty() {
                errs.push(format!("{cp}.httpCookie.name"), "name is required");
            }
            if let Some(ttl) = &cookie.ttl {
                errs.duration(format!("{cp}.httpCookie.ttl"), ttl);
            }
            for (i, attr) in cookie.attributes.iter().enumerate() {
                if attr.name.as_deref().unwrap_or_default().is_empty() {
                    errs.push(format!("{cp}.httpCookie.attributes[{i}].name"), "name is required");
                }
            }
        }
    }
    if let Some(loc) = &lb.locality_lb_setting {
        let lp = format!("{path}.localityLbSetting");
        if !loc.distribute.is_empty() && (!loc.failover.is_empty() || !loc.failover_priority.is_empty()) {
            errs.push(lp.clone(), "distribute cannot be combined with failover or failoverPriority");
        }
        for (i, d) in loc.distribute.iter().enumerate() {
            let dp = format!("{lp}.distribute[{i}]");
            if d.from.as_deref().unwrap_or_default().is_empty() {
                errs.push(format!("{dp}.from"), "from is required");
            }
            let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            if sum != 100 {
                errs.push(format!("{dp}.to"), format!("weights sum to {sum}, must sum to 100"));
            }
        }
        for (i, f) in loc.failover.iter().enumerate() {
            let fp = format!("{lp}.failover[{i}]");
            for (field, value) in [("from", &f.from), ("to", &f.to)] {
                if value.as_deref().unwrap_or_default().is_empty() {
                    errs.push(format!("{fp}.{field}"), format!("{field} is required"));
                }
            }
            if f.from.is_some() && f.from == f.to {
                errs.push(format!("{fp}.to"), "failover must go to a different region than from");
            }
        }
    }
    if let Some(d) = &lb.warmup_duration_secs {
        errs.duration(format!("{path}.warmupDurationSecs"), d);
    }
    if let Some(w) = &lb.warmup {
        match &w.duration {
            Some(d) => {
                errs.duration(format!("{path}.warmup.duration"), d);
            }
            None => errs.push(format!("{path}.warmup.duration"), "duration is required"),
        }
        if let Some(pct) = w.minimum_percent {
            errs.percent(format!("{path}.warmup.minimumPercent"), pct);
        }
        if let Some(a) = w.aggression
            && (a < 0.0 || a.is_nan())
        {
            errs.push(format!("{path}.warmup.aggression"), format!("aggression {a} is negative: must be 0 or more"));
        }
    }
}

fn validate_client_tls(errs: &mut Errors, path: &str, tls: &ClientTlsSettings) {
    let files = [("clientCertificate", &tls.client_certificate), ("privateKey", &tls.private_key)];
    let any_file = files.iter().any(|(_, v)| v.is_some()) || tls.ca_certificates.is_some();
    match tls.mode {
        Some(ClientTlsMode::Simple | ClientTlsMode::Mutual) if tls.credential_name.is_some() && any_file => {
            errs.push(
                format!("{path}.credentialName"),
                "credentialName cannot be combined with clientCertificate, privateKey or caCertificates",
            );
        }
        Some(ClientTlsMode::Mutual) if tls.credential_name.is_none() => {
            for (field, value) in files {
                if value.is_none() {
                    errs.push(
                        format!("{path}.{field}"),
                        format!("{field} is required for MUTUAL TLS unless credentialName is set"),
                    );
                }
            }
        }
        Some(ClientTlsMode::IstioMutual) if any_file || tls.credential_name.is_some() => {
            errs.push(
                format!("{path}.mode"),
                "ISTIO_MUTUAL uses Istio's own certificates: clientCertificate, privateKey, caCertificates and credentialName must not be set",
            );
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// ServiceEntry and WorkloadEntry
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<EntryWorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// ServiceEntry's selector uses `labels`, unlike the `matchLabels` of [`WorkloadSelector`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryWorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

const SERVICE_PROTOCOLS: &[&str] =
    &["HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS", "UDP", "REDIS", "MYSQL", "HTTP_PROXY"];

impl ServiceEntrySpec {
    pub fn validate(&self, errs: &mut Errors) {
        if self.hosts.is_empty() {
            errs.push("spec.hosts", "at least one host is required");
        }
        let dns = matches!(self.resolution, Some(Resolution::Dns | Resolution::DnsRoundRobin));
        let has_endpoints = !self.endpoints.is_empty() || self.workload_selector.is_some();
        for (i, host) in self.hosts.iter().enumerate() {
            let path = format!("spec.hosts[{i}]");
            if host == "*" {
                errs.push(path, "host \"*\" is not allowed in a ServiceEntry");
            } else if dns && !has_endpoints && host.starts_with('*') {
                errs.push(
                    path,
                    format!("wildcard host {host:?} cannot be resolved by DNS: add endpoints or use resolution NONE"),
                );
            } else {
                errs.hostname(path, host, true);
            }
        }
        for (i, addr) in self.addresses.iter().enumerate() {
            ip_or_cidr(errs, format!("spec.addresses[{i}]"), addr);
        }
        for (i, port) in self.ports.iter().enumerate() {
            port.validate(&format!("spec.ports[{i}]"), SERVICE_PROTOCOLS, true, errs);
        }
        errs.unique(
            "port name",
            self.ports.iter().enumerate().filter_map(|(i, p)| {
                Some((format!("spec.ports[{i}].name"), p.name.as_deref().filter(|n| !n.is_empty())?))
            }),
        );
        let numbers: Vec<_> = self
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((format!("spec.ports[{i}].number"), p.number?.to_string())))
            .collect();
        errs.unique("port number", numbers.iter().map(|(p, n)| (p.clone(), n.as_str())));
        match self.resolution {
            Some(Resolution::Static) if !has_endpoints => {
                errs.push("spec.endpoints", "resolution STATIC needs endpoints or a workloadSelector");
            }
            Some(Resolution::DnsRoundRobin) if self.endpoints.len() > 1 => {
                errs.push("spec.endpoints", "resolution DNS_ROUND_ROBIN allows at most one endpoint");
            }
            _ => {}
        }
        if !self.endpoints.is_empty() && self.workload_selector.is_some() {
            errs.push("spec.workloadSelector", "only one of endpoints or workloadSelector may be set");
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            let path = format!("spec.endpoints[{i}]");
            ep.validate_at(&path, errs);
            if let Some(addr) = &ep.address
                && self.resolution == Some(Resolution::Static)
                && !addr.starts_with("unix://")
                && addr.parse::<IpAddr>().is_err()
            {
                errs.push(format!("{path}.address"), format!("resolution STATIC needs an IP address, got {addr:?}"));
            }
            for name in ep.ports.keys() {
                if !self.ports.is_empty() && !self.ports.iter().any(|p| p.name.as_deref() == Some(name)) {
                    errs.push(format!("{path}.ports.{name}"), format!("{name:?} is not the name of one of spec.ports"));
                }
            }
        }
        if let Some(ws) = &self.workload_selector {
            errs.labels("spec.workloadSelector.labels", &ws.labels);
        }
        export_to(errs, &self.export_to);
    }
}

impl WorkloadEntrySpec {
    pub fn validate(&self, errs: &mut Errors) {
        self.validate_at("spec", errs);
    }

    /// Validates an entry found at `path`: `spec` for a WorkloadEntry, `spec.endpoints[i]` in a ServiceEntry.
    pub fn validate_at(&self, path: &str, errs: &mut Errors) {
        let ap = format!("{path}.address");
        match self.address.as_deref() {
            None | Some("") if self.network.is_none() => errs.push(ap, "address is required unless network is set"),
            None | Some("") => {}
            Some(addr) if addr.starts_with("unix://") => {
                if !self.ports.is_empty() {
                    errs.push(format!("{path}.ports"), "a unix:// address cannot have ports");
                }
            }
            Some(addr) if addr.parse::<IpAddr>().is_ok() => {}
            Some(addr) => errs.hostname(ap, addr, false),
        }
        for (name, port) in &self.ports {
            errs.port(format!("{path}.ports.{name}"), *port);
        }
        errs.labels(&format!("{path}.labels"), &self.labels);
        if let Some(sa) = &self.service_account {
            name_check(errs, format!("{path}.serviceAccount"), sa);
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const MILLISECOND: Duration = Duration::from_millis(1);

impl Port {
    fn validate(&self, path: &str, protocols: &[&str], name_required: bool, errs: &mut Errors) {
        match self.number {
            Some(n) => errs.port(format!("{path}.number"), n),
            None => errs.push(format!("{path}.number"), "number is required"),
        }
        match self.protocol.as_deref() {
            Some(p) if protocols.iter().any(|known| known.eq_ignore_ascii_case(p)) => {}
            Some(p) => errs.push(
                format!("{path}.protocol"),
                format!("unknown protocol {p:?}: must be one of {}{}", protocols.join(", "), suggest(p, protocols)),
            ),
            None => errs.push(format!("{path}.protocol"), "protocol is required"),
        }
        match self.name.as_deref() {
            Some(name) if !name.is_empty() => name_check(errs, format!("{path}.name"), name),
            _ if name_required => errs.push(format!("{path}.name"), "name is required"),
            _ => {}
        }
        if let Some(t) = self.target_port {
            errs.port(format!("{path}.targetPort"), t);
        }
    }
}

/// Checks a [`StringMatch`]; `allow_empty` permits `{}`, which header and query matches use to test presence.
fn validate_string_match(m: &StringMatch, path: &str, allow_empty: bool, errs: &mut Errors) {
    match [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()].into_iter().filter(|set| *set).count() {
        0 if !allow_empty => errs.push(path, "one of exact, prefix or regex is required"),
        0 | 1 => {}
        _ => errs.push(path, "only one of exact, prefix or regex may be set"),
    }
    if let Some(re) = &m.regex {
        errs.regex(format!("{path}.regex"), re);
    }
}

fn destination(errs: &mut Errors, path: &str, d: &Destination) {
    match d.host.as_deref() {
        Some("*") => errs.push(format!("{path}.host"), "host \"*\" is not allowed in a destination"),
        Some(host) if !host.is_empty() => errs.hostname(format!("{path}.host"), host, true),
        _ => errs.push(format!("{path}.host"), "host is required"),
    }
    if let Some(subset) = &d.subset {
        name_check(errs, format!("{path}.subset"), subset);
    }
    if let Some(port) = &d.port {
        match port.number {
            Some(n) => errs.port(format!("{path}.port.number"), n),
            None => errs.push(format!("{path}.port.number"), "port number is required"),
        }
    }
}

fn required_destination(errs: &mut Errors, path: &str, d: Option<&Destination>) {
    match d {
        Some(d) => destination(errs, path, d),
        None => errs.push(path, "destination is required"),
    }
}

/// Checks the destinations and weights of the route at `path` (its `route` list).
fn route_destinations(errs: &mut Errors, path: &str, dests: &[(Option<&Destination>, Option<i32>)]) {
    let mut sum = 0i64;
    for (i, (d, weight)) in dests.iter().enumerate() {
        required_destination(errs, &format!("{path}.route[{i}].destination"), *d);
        if let Some(w) = *weight {
            if !(0..=100).contains(&w) {
                errs.push(format!("{path}.route[{i}].weight"), format!("weight {w} is out of range: must be 0..=100"));
            }
            sum += i64::from(w);
        }
    }
    // Istio lets a single destination omit its weight; otherwise the weights must add up.
    if (dests.len() > 1 || dests.iter().any(|(_, w)| w.is_some())) && sum != 100 {
        errs.push(format!("{path}.route"), format!("weights sum to {sum}, must sum to 100"));
    }
}

/// The match fields shared by HTTP, TLS and TCP routes.
fn l4_match(
    errs: &mut Errors,
    path: &str,
    subnets: &[String],
    port: Option<u32>,
    labels: &BTreeMap<String, String>,
    gateways: &[String],
    namespace: Option<&str>,
) {
    for (i, subnet) in subnets.iter().enumerate() {
        ip_or_cidr(errs, format!("{path}.destinationSubnets[{i}]"), subnet);
    }
    if let Some(port) = port {
        errs.port(format!("{path}.port"), port);
    }
    errs.labels(&format!("{path}.sourceLabels"), labels);
    gateway_refs(errs, &format!("{path}.gateways"), gateways);
    if let Some(ns) = namespace {
        name_check(errs, format!("{path}.sourceNamespace"), ns);
    }
}

/// Gateway references: `mesh`, `name` or `namespace/name`.
fn gateway_refs(errs: &mut Errors, path: &str, gateways: &[String]) {
    for (i, gw) in gateways.iter().enumerate() {
        if gw == "mesh" {
            continue;
        }
        let (ns, name) = gw.split_once('/').map_or((None, gw.as_str()), |(ns, name)| (Some(ns), name));
        if ns.is_some_and(|ns| check_object_name(ns).is_err()) || check_object_name(name).is_err() {
            errs.push(
                format!("{path}[{i}]"),
                format!("invalid gateway {gw:?}: must be \"mesh\", a Gateway name or namespace/name"),
            );
        }
    }
}

fn export_to(errs: &mut Errors, values: &[String]) {
    for (i, ns) in values.iter().enumerate() {
        let path = format!("spec.exportTo[{i}]");
        match ns.as_str() {
            "*" | "~" if values.len() > 1 => errs.push(path, format!("{ns:?} must be the only exportTo value")),
            "." | "*" | "~" => {}
            _ => name_check(errs, path, ns),
        }
    }
    errs.unique("exportTo value", values.iter().enumerate().map(|(i, v)| (format!("spec.exportTo[{i}]"), v.as_str())));
}

fn name_check(errs: &mut Errors, path: String, value: &str) {
    if let Err(reason) = check_object_name(value) {
        errs.push(path, reason);
    }
}

fn non_negative(errs: &mut Errors, path: &str, field: &str, value: Option<i32>) {
    if let Some(v) = value
        && v < 0
    {
        errs.push(format!("{path}.{field}"), format!("{field} {v} is negative: must be 0 or more"));
    }
}

/// Istio's header-name rule: letters, digits, `-` and `_`.
pub(crate) fn header_name(errs: &mut Errors, path: String, name: &str) {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        errs.push(path, format!("invalid header name {name:?}: use letters, digits, '-' and '_'"));
    }
}

/// Checks an IP address or CIDR block such as `10.0.0.1`, `10.0.0.0/16` or `2001:db8::/32`.
pub(crate) fn check_ip_or_cidr(value: &str) -> Result<(), String> {
    let (ip, prefix) = value.split_once('/').map_or((value, None), |(ip, p)| (ip, Some(p)));
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return Err(format!(
            "invalid IP address or CIDR block {value:?}: expected e.g. \"10.0.0.1\" or \"10.0.0.0/16\""
        ));
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match prefix.map(str::parse::<u8>) {
        None => Ok(()),
        Some(Ok(n)) if n <= max => Ok(()),
        Some(_) => Err(format!("invalid CIDR block {value:?}: prefix length must be 0..={max}")),
    }
}

pub(crate) fn ip_or_cidr(errs: &mut Errors, path: String, value: &str) {
    if let Err(reason) = check_ip_or_cidr(value) {
        errs.push(path, reason);
    }
}

/// `; did you mean "x"?` when `value` is a near miss of one of `options`, else empty.
pub(crate) fn suggest(value: &str, options: &[&str]) -> String {
    let value = value.to_ascii_lowercase();
    options
        .iter()
        .map(|o| (strsim::levenshtein(&value, &o.to_ascii_lowercase()), o))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| format!("; did you mean {o:?}?"))
        .unwrap_or_default()
}

/// The wire spelling of an enum value, e.g. `ISTIO_MUTUAL`.
pub(crate) fn wire<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Writes whole numbers without a fraction (`50`, not `50.0`), as Istio's protobuf JSON does.
fn number<S: serde::Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 { s.serialize_i64(*value as i64) } else { s.serialize_f64(*value) }
}

fn opt_number<S: serde::Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => number(v, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::Value;

    /// Parses a whole YAML document and returns its typed spec with the raw spec value.
    fn parse<T: DeserializeOwned>(yaml: &str) -> (T, Value) {
        let doc: Value = serde_saphyr::from_str(yaml).expect("test YAML parses");
        let raw = doc["spec"].clone();
        let spec = serde_json::from_value::<T>(raw.clone()).expect("spec deserializes");
        (spec, raw)
    }

    fn round_trip<T: DeserializeOwned + serde::Serialize>(yaml: &str) -> T {
        let (spec, raw) = parse::<T>(yaml);
        assert_eq!(serde_json::to_value(&spec).expect("serializes"), raw);
        spec
    }

    fn paths(errs: &Errors) -> Vec<&str> {
        errs.items.iter().map(|e| e.path.as_str()).collect()
    }

    fn reason<'a>(errs: &'a Errors, path: &str) -> &'a str {
        errs.items.iter().find(|e| e.path == path).map_or("", |e| e.reason.as_str())
    }

    const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "bookinfo.example.com"
    tls:
      httpsRedirect: true
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - "prod/bookinfo.example.com"
    - "*/*.example.org"
    tls:
      mode: SIMPLE
      credentialName: bookinfo-cert
      minProtocolVersion: TLSV1_2
      maxProtocolVersion: TLSV1_3
      cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]
  - port:
      number: 8443
      name: mtls
      protocol: https
      targetPort: 9443
    hosts: ["./api.example.com"]
    tls:
      mode: MUTUAL
      serverCertificate: /etc/certs/server.pem
      privateKey: /etc/certs/key.pem
      caCertificates: /etc/certs/ca.pem
      caCrl: /etc/certs/crl.pem
      subjectAltNames: [spiffe://cluster.local/ns/default/sa/client]
      verifyCertificateHash: ["AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"]
    name: mtls-server
  - port:
      number: 15443
      name: tls
      protocol: TLS
    hosts: ["*.local"]
    tls:
      mode: AUTO_PASSTHROUGH
"#;

    #[test]
    fn gateway_round_trips_and_validates() {
        let spec: GatewaySpec = round_trip(GATEWAY);
        assert_eq!(spec.servers[1].tls.as_ref().and_then(|t| t.mode), Some(ServerTlsMode::Simple));
        let mut errs = Errors::default();
        spec.validate(&mut errs);
        assert!(errs.is_empty(), "{:?}", errs.items);
    }

    #[test]
    fn gateway_errors_have_paths() {
        let (spec, _) = parse::<GatewaySpec>(
            r#"
spec:
  selector: {"bad key!": x}
  servers:
  - port: {number: 0, name: web, protocol: HTTPS}
    hosts: ["bad_ns!/foo.com", "ok.com"]
  - port: {number: 8080, name: web, protocol: SMTP}
    hosts: ["a.com"]
    tls: {mode: SIMPLE, serverCertificate: /c.pem}
  - port: {number: 9090, protocol: HTTPS}
    hosts: ["b.com"]
    tls: {mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}
"#,
        );
        let mut errs = Errors::default();
        spec.validate(&mut errs);
        assert_eq!(
            paths(&errs),
            [
                "spec.selector.bad key!",
                "spec.servers[0].port.number",
                "spec.servers[0].hosts[0]",
                "spec.servers[0].tls",
                "spec.servers[1].port.protocol",
                "spec.servers[1].tls.privateKey",
                "spec.servers[2].tls.minProtocolVersion",
                "spec.servers[1].port.name",
            ]
        );
        assert!(reason(&errs, "spec.servers[1].port.protocol").contains("\"SMTP\""));
        assert!(reason(&errs, "spec.servers[0].port.number").contains("port 0"));
        assert!(reason(&errs, "spec.servers[1].port.name").contains("duplicate port name \"web\""));
        assert!(parse_err::<GatewaySpec>("servers: [{port: {number: 80, protocl: HTTP}}]").contains("protocl"));
        let mut errs = Errors::default();
        GatewaySpec::default().validate(&mut errs);
        assert_eq!(paths(&errs), ["spec.servers"]);
    }

    fn parse_err<T: DeserializeOwned + std::fmt::Debug>(spec_yaml: &str) -> String {
        let raw: Value = serde_saphyr::from_str(spec_yaml).expect("test YAML parses");
        serde_json::from_value::<T>(raw).expect_err("must not deserialize").to_string()
    }

    const VIRTUAL_SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews.prod.svc.cluster.local
  - "*.reviews.example.com"
  gateways: [mesh, istio-system/bookinfo-gateway]
  exportTo: ["."]
  http:
  - name: reviews-v2-routes
    match:
    - name: jason
      uri:
        prefix: "/wpcatalog"
      headers:
        end-user:
          exact: jason
        x-present: {}
      queryParams:
        debug:
          regex: "^(1|true)$"
      withoutHeaders:
        x-canary: {}
      ignoreUriCase: true
      port: 9080
      sourceLabels: {app: productpage}
      sourceNamespace: bookinfo
      statPrefix: jason
      method: {exact: GET}
      scheme: {exact: https}
      authority: {prefix: reviews}
    rewrite:
      uri: "/newcatalog"
      authority: reviews.internal
    route:
    - destination:
        host: reviews
        subset: v2
        port: {number: 9080}
      weight: 75
      headers:
        request:
          set: {x-route: v2}
        response:
          add: {x-served-by: v2}
          remove: [x-internal]
    - destination:
        host: reviews
        subset: v3
      weight: 25
    timeout: 10s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,connect-failure,refused-stream,503
      retryRemoteLocalities: true
      retryIgnorePreviousHosts: false
      backoff: 25ms
    fault:
      delay:
        fixedDelay: 5s
        percentage: {value: 0.1}
      abort:
        httpStatus: 503
        percentage: {value: 10}
    mirror:
      host: reviews-shadow
    mirrorPercentage: {value: 50}
    corsPolicy:
      allowOrigins:
      - exact: https://example.com
      - regex: "https://.*\\.example\\.org"
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-total]
      maxAge: 24h
      allowCredentials: false
      unmatchedPreflights: IGNORE
    headers:
      request:
        remove: [cookie]
  - name: legacy
    match:
    - uri: {regex: "^/v1/.*"}
    rewrite:
      uriRegexRewrite:
        match: "^/v1/(.*)"
        rewrite: "/v2/\\1"
    route:
    - destination: {host: reviews, subset: v1}
    mirrors:
    - destination: {host: audit}
      percentage: {value: 12.5}
    mirrorPercent: 5
  - name: moved
    match: [{uri: {exact: /old}}]
    redirect:
      uri: /new
      authority: new.example.com
      derivePort: FROM_REQUEST_PORT
      scheme: https
      redirectCode: 308
  - name: teapot
    directResponse:
      status: 418
      body: {string: "short and stout"}
  - name: delegated
    delegate: {name: reviews-team, namespace: reviews}
  tls:
  - match:
    - sniHosts: [login.bookinfo.com]
      port: 443
      destinationSubnets: [10.0.0.0/8]
      gateways: [mesh]
      sourceLabels: {app: web}
      sourceNamespace: front
    route:
    - destination: {host: login.prod.svc.cluster.local}
  tcp:
  - match:
    - port: 27017
      sourceSubnet: 192.168.0.0/16
    route:
    - destination: {host: mongo.backup.svc.cluster.local, port: {number: 5555}}
      weight: 100
"#;

    #[test]
    fn virtual_service_round_trips_and_validates() {
        let spec: VirtualServiceSpec = round_trip(VIRTUAL_SERVICE);
        assert_eq!(spec.http[0].route[0].weight, Some(75));
        assert_eq!(
            spec.http[2].redirect.as_ref().and_then(|r| r.derive_port),
            Some(RedirectPortSelection::FromRequestPort)
        );
        let mut errs = Errors::default();
        spec.validate(&mut errs);
        assert!(errs.is_empty(), "{:?}", errs.items);
    }

    #[test]
    fn misspelt_fields_are_rejected() {
        let err = parse_err::<VirtualServiceSpec>(
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n  retry: {attempts: 3}\n",
        );
        assert!(err.contains("unknown field `retry`"), "{err}");
        let err = parse_err::<DestinationRuleSpec>("host: a\ntrafficPolicy:\n  loadbalancer: {simple: RANDOM}\n");
        assert!(err.contains("loadbalancer"), "{err}");
        let err = parse_err::<DestinationRuleSpec>("host: a\ntrafficPolicy:\n  loadBalancer: {simple: ROUND_ROBINN}\n");
        assert!(err.contains("ROUND_ROBINN"), "{err}");
    }

    #[test]
    fn virtual_service_errors_have_paths() {
        let (spec, _) = parse::<VirtualServiceSpec>(
            r#"
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {regex: "("}}]
    route:
    - destination: {host: reviews, subset: v1}
      weight: 60
    - destination: {host: reviews, subset: v2}
      weight: 30
    timeout: 5 seconds
  - route: [{destination: {host: reviews}}]
    fault:
      abort: {httpStatus: 503, percentage: {value: 120}}
    retries: {attempts: -1, retryOn: "5xx,gateway-eror"}
  - redirect: {uri: /x, redirectCode: 305}
  - directResponse: {status: 700}
    route: [{destination: {host: reviews}, weight: 100}]
"#,
        );
        let mut errs = Errors::default();
        spec.validate(&mut errs);
        assert_eq!(
            paths(&errs),
            [
                "spec.http[0].match[0].uri.regex",
                "spec.http[0].route",
                "spec.http[0].timeout",
                "spec.http[1].retries.attempts",
                "spec.http[1].retries.retryOn",
                "spec.http[1].fault.abort.percentage.value",
                "spec.http[2].redirect.redirectCode",
                "spec.http[3]",
                "spec.http[3].directResponse.status",
            ]
        );
        assert_eq!(reason(&errs, "spec.http[0].route"), "weights sum to 90, must sum to 100");
        assert!(reason(&errs, "spec.http[0].timeout").contains("\"5 seconds\""));
        assert!(reason(&errs, "spec.http[1].retries.retryOn").contains("did you mean \"gateway-error\"?"));
        assert!(reason(&errs, "spec.http[1].fault.abort.percentage.value").contains("120"));
        assert!(reason(&errs, "spec.http[2].redirect.redirectCode").contains("305"));
    }

    const DESTINATION_RULE: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews.prod.svc.cluster.local
  exportTo: ["*"]
  workloadSelector:
    matchLabels: {app: ratings}
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie:
          name: user
          path: /
          ttl: 0s
          attributes: [{name: SameSite, value: Strict}, {name: Secure}]
        ringHash: {minimumRingSize: 1024}
      localityLbSetting:
        enabled: true
        distribute:
        - from: us-west/zone1/*
          to: {"us-west/zone1/*": 80, "us-west/zone2/*": 20}
      warmup:
        duration: 60s
        minimumPercent: 10
        aggression: 1.5
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
        maxConnectionDuration: 1h
        idleTimeout: 5m
        tcpKeepalive: {probes: 3, time: 7200s, interval: 75s}
      http:
        http1MaxPendingRequests: 64
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        maxRetries: 3
        idleTimeout: 30s
        h2UpgradePolicy: UPGRADE
        useClientProtocol: false
        maxConcurrentStreams: 100
    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 5
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 3
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 50
      minHealthPercent: 30
    tls:
      mode: MUTUAL
      clientCertificate: /etc/certs/client.pem
      privateKey: /etc/certs/key.pem
      caCertificates: /etc/certs/ca.pem
      caCrl: /etc/certs/crl.pem
      subjectAltNames: [reviews.prod]
      sni: reviews.prod.svc.cluster.local
      insecureSkipVerify: false
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {simple: LEAST_REQUEST}
      connectionPool: {tcp: {maxConnections: 10}}
      outlierDetection: {consecutiveErrors: 2}
      tls: {mode: ISTIO_MUTUAL, sni: reviews}
    tunnel: {protocol: CONNECT, targetHost: egress.example.com, targetPort: 8443}
    proxyProtocol: {version: V2}
    retryBudget: {percent: 25, minRetryConcurrency: 5}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
        warmupDurationSecs: 30s
      tls: {mode: SIMPLE, credentialName: reviews-client}
"#;

    #[test]
    fn destination_rule_round_trips_and_validates() {
        let spec: DestinationRuleSpec = round_trip(DESTINATION_RULE);
        let tp = spec.traffic_policy.as_ref().expect("trafficPolicy");
        assert_eq!(tp.outlier_detection.as_ref().and_then(|o| o.consecutive_5xx_errors), Some(7));
        let mut errs = Errors::default();
        spec.validate(&mut errs);
        assert!(errs.is_empty(), "{:?}", errs.items);
    }

    #[test]
    fn destination_rule_errors_have_paths() {
        let (spec, _) = parse::<DestinationRuleSpec>(
            r#"
spec:
  host: ""
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
      consistentHash: {httpHeaderName: x-user, useSourceIp: true}
    connectionPool:
      tcp: {connectTimeout: 5 seconds, maxConnections: -1}
    outlierDetection: {maxEjectionPercent: 120, interval: 1m}
    tls: {mode: MUTUAL}
    portLevelSettings:
    - port: {number: 0}
    - port: {number: 0}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v1
    labels: {version: "bad value"}
  - labels: {}
"#,
        );
        let mut errs = Errors::default();
        spec.validate(&mut errs);
        assert_eq!(
            paths(&errs),
            [
                "spec.host",
                "spec.trafficPolicy.loadBalancer",
                "spec.trafficPolicy.loadBalancer.consistentHash",
                "spec.trafficPolicy.connectionPool.tcp.maxConnections",
                "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
                "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                "spec.trafficPolicy.tls.clientCertificate",
                "spec.trafficPolicy.tls.privateKey",
                "spec.trafficPolicy.portLevelSettings[0].port.number",
                "spec.trafficPolicy.portLevelSettings[1].port.number",
                "spec.trafficPolicy.portLevelSettings[1].port.number",
                "spec.subsets[1].labels.version",
                "spec.subsets[2].name",
                "spec.subsets[1].name",
            ]
        );
        assert!(reason(&errs, "spec.subsets[1].name").contains("duplicate subset name \"v1\""));
        assert!(reason(&errs, "spec.trafficPolicy.outlierDetection.maxEjectionPercent").contains("120"));
    }

    const SERVICE_ENTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-https
spec:
  hosts: [api.dropboxapi.com, www.googleapis.com]
  addresses: [192.192.192.192/24]
  location: MESH_EXTERNAL
  resolution: STATIC
  exportTo: [".", "istio-system"]
  subjectAltNames: [spiffe://example.com/sa/api]
  ports:
  - number: 443
    name: https
    protocol: TLS
  - number: 27018
    name: mongo
    protocol: MONGO
    targetPort: 27017
  endpoints:
  - address: 2.2.2.2
    ports: {mongo: 7777}
    labels: {app: mongo}
    network: external
    locality: us-east/zone1
    weight: 10
    serviceAccount: mongo-sa
  - address: unix:///var/run/mongo.sock
"#;

    #[test]
    fn service_entry_round_trips_and_validates() {
        let spec: ServiceEntrySpec = round_trip(SERVICE_ENTRY);
        assert_eq!(spec.resolution, Some(Resolution::Static));
        let mut errs = Errors::default();
        spec.validate(&mut errs);
        assert!(errs.is_empty(), "{:?}", errs.items);

        let (spec, _) = parse::<ServiceEntrySpec>(
            r#"
spec:
  hosts: ["*.example.com", "*"]
  addresses: [10.0.0.0/33]
  resolution: DNS
  ports:
  - {number: 0, name: http, protocol: HTTP}
  - {number: 8080, name: http, protocol: HTPP}
  - {number: 8080, protocol: TCP}
"#,
        );
        let mut errs = Errors::default();
        spec.validate(&mut errs);
        assert_eq!(
            paths(&errs),
            [
                "spec.hosts[0]",
                "spec.hosts[1]",
                "spec.addresses[0]",
                "spec.ports[0].number",
                "spec.ports[1].protocol",
                "spec.ports[2].name",
                "spec.ports[1].name",
                "spec.ports[2].number",
            ]
        );
        assert!(reason(&errs, "spec.ports[1].protocol").contains("did you mean \"HTTP\"?"));
    }

    #[test]
    fn workload_entry_round_trips_and_validates() {
        let spec: WorkloadEntrySpec = round_trip(
            r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: details-svc
spec:
  serviceAccount: details-legacy
  address: 2.2.2.2
  ports: {http: 8080}
  labels: {app: details-legacy, instance-id: vm1}
  network: vm-net
  locality: us-west1/zone1
  weight: 1
"#,
        );
        let mut errs = Errors::default();
        spec.validate(&mut errs);
        assert!(errs.is_empty(), "{:?}", errs.items);

        let bad = WorkloadEntrySpec { ports: BTreeMap::from([("http".into(), 0)]), ..Default::default() };
        let mut errs = Errors::default();
        bad.validate(&mut errs);
        assert_eq!(paths(&errs), ["spec.address", "spec.ports.http"]);
        let networked = WorkloadEntrySpec { network: Some("remote".into()), ..Default::default() };
        let mut errs = Errors::default();
        networked.validate(&mut errs);
        assert!(errs.is_empty(), "{:?}", errs.items);
    }

    #[test]
    fn whole_percentages_serialize_as_integers() {
        let p = Percent { value: 100.0 };
        assert_eq!(serde_json::to_string(&p).expect("serializes"), r#"{"value":100}"#);
        let p = Percent { value: 0.5 };
        assert_eq!(serde_json::to_string(&p).expect("serializes"), r#"{"value":0.5}"#);
    }
}
