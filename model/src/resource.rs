//! A resource as meshgate stores it: kind, metadata and a typed body, built
//! from a user's document with every problem reported by field path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::check::{Errors, FieldError, check_object_name};
use crate::kind::Kind;
use crate::networking::{DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec};
use crate::security::{AuthorizationPolicySpec, PeerAuthenticationSpec, RequestAuthenticationSpec};

/// The namespace a resource lands in when its document names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Kubernetes object metadata. Server-managed fields (`resourceVersion`,
/// `creationTimestamp`, ...) are read so that what `get -o yaml` printed can
/// be applied again; fields meshgate has no use for (`managedFields`,
/// `ownerReferences`, ...) are accepted and dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing)]
    pub managed_fields: Option<Value>,
    #[serde(default, skip_serializing)]
    pub owner_references: Option<Value>,
    #[serde(default, skip_serializing)]
    pub finalizers: Option<Value>,
    #[serde(default, skip_serializing)]
    pub self_link: Option<Value>,
    #[serde(default, skip_serializing)]
    pub generate_name: Option<Value>,
    #[serde(default, skip_serializing)]
    pub deletion_timestamp: Option<Value>,
    #[serde(default, skip_serializing)]
    pub deletion_grace_period_seconds: Option<Value>,
}

/// A `Secret` of type `kubernetes.io/tls`: the certificate chain and key a
/// Gateway's `credentialName` names. `stringData` is folded into `data`
/// (base64) when parsed, as Kubernetes does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretBody {
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub secret_type: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl SecretBody {
    /// The decoded value of `key` (`tls.crt`, `tls.key`, `ca.crt`), if present and valid base64.
    pub fn bytes(&self, key: &str) -> Option<Vec<u8>> {
        use base64::Engine as _;
        self.data.get(key).and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.trim()).ok())
    }
}

/// meshgate's `TrafficSplit`: the weighted subsets of one service, the form
/// Istio users write by habit instead of a VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSplitSpec {
    #[serde(default)]
    pub service: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<SplitSubset>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SplitSubset {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub weight: i32,
}

/// The typed content of a resource, one variant per [`Kind`].
// Resources are built once per apply and kept in snapshots; boxing the big
// variants would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Gateway(GatewaySpec),
    VirtualService(VirtualServiceSpec),
    DestinationRule(DestinationRuleSpec),
    ServiceEntry(ServiceEntrySpec),
    WorkloadEntry(WorkloadEntrySpec),
    PeerAuthentication(PeerAuthenticationSpec),
    RequestAuthentication(RequestAuthenticationSpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
    Secret(SecretBody),
    TrafficSplit(TrafficSplitSpec),
    RateLimitPolicy(crate::policy::RateLimitPolicySpec),
    Consumer(crate::policy::ConsumerSpec),
    ApiKeyAuth(crate::policy::ApiKeyAuthSpec),
    RequestSizeLimit(crate::policy::RequestSizeLimitSpec),
    GrpcTranscoder(crate::transcode::GrpcTranscoderSpec),
    Telemetry(crate::telemetry::TelemetrySpec),
}

/// One checked resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub metadata: ObjectMeta,
    pub body: Body,
}

/// Top-level document fields every kind accepts besides its body.
const ENVELOPE: &[&str] = &["apiVersion", "kind", "metadata", "status"];

impl Resource {
    /// Builds a resource from one parsed document. `namespace` fills in a
    /// missing `metadata.namespace`. All problems found are returned at once.
    pub fn from_value(value: Value, namespace: &str) -> Result<Resource, Vec<FieldError>> {
        let mut errs = Errors::default();
        let Value::Object(mut obj) = value else {
            errs.push(
                "",
                format!("expected a resource object with apiVersion, kind and metadata, found {}", type_name(&value)),
            );
            return Err(errs.items);
        };
        let kind = match obj.get("kind") {
            Some(Value::String(k)) => match Kind::ALL.into_iter().find(|x| x.name() == k) {
                Some(kind) => kind,
                None => {
                    errs.push("kind", format!("unknown kind {k:?}; supported kinds: {}", Kind::supported_list()));
                    return Err(errs.items);
                }
            },
            Some(other) => {
                errs.push("kind", format!("must be a string, found {}", type_name(other)));
                return Err(errs.items);
            }
            None => {
                errs.push("kind", format!("missing; supported kinds: {}", Kind::supported_list()));
                return Err(errs.items);
            }
        };
        match obj.get("apiVersion") {
            Some(Value::String(v)) if kind.api_versions().contains(&v.as_str()) => {}
            Some(Value::String(v)) => errs.push(
                "apiVersion",
                format!("{v:?} is not an apiVersion of {kind}; supported: {}", kind.api_versions().join(", ")),
            ),
            _ => errs.push("apiVersion", format!("missing; {kind} uses {}", kind.api_versions().join(", "))),
        }

        let mut metadata = match obj.remove("metadata") {
            Some(m) => decode::<ObjectMeta>(m, "metadata", &mut errs).unwrap_or_default(),
            None => ObjectMeta::default(),
        };
        if metadata.name.is_empty() {
            errs.push("metadata.name", "missing: every resource needs a name");
        } else if let Err(reason) = check_object_name(&metadata.name) {
            errs.push("metadata.name", reason);
        }
        if metadata.namespace.is_empty() {
            metadata.namespace = namespace.to_string();
        }
        if let Err(reason) = check_object_name(&metadata.namespace) {
            errs.push("metadata.namespace", reason.replace("name", "namespace"));
        }
        errs.labels("metadata.labels", &metadata.labels);

        let body = if kind == Kind::Secret {
            let mut rest = Map::new();
            for (k, v) in obj {
                if !ENVELOPE.contains(&k.as_str()) {
                    rest.insert(k, v);
                }
            }
            decode::<SecretBody>(Value::Object(rest), "", &mut errs).map(Body::Secret)
        } else {
            for key in obj.keys() {
                if !ENVELOPE.contains(&key.as_str()) && key != "spec" {
                    let hint = crate::suggest::nearest(key, &["spec", "metadata", "apiVersion", "kind"]);
                    errs.push(key.clone(), unknown_field_reason(hint));
                }
            }
            let spec = obj.remove("spec").unwrap_or(Value::Object(Map::new()));
            decode_body(kind, spec, &mut errs)
        };
        let Some(mut body) = body else {
            return Err(errs.items);
        };
        body.normalize();
        body.validate(&mut errs);
        if errs.is_empty() { Ok(Resource { kind, metadata, body }) } else { Err(errs.items) }
    }

    /// The document form: apiVersion, kind, metadata and the body.
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("apiVersion".into(), Value::String(self.kind.api_version().into()));
        obj.insert("kind".into(), Value::String(self.kind.name().into()));
        obj.insert("metadata".into(), serde_json::to_value(&self.metadata).unwrap_or(Value::Null));
        match self.body.to_value() {
            Value::Object(fields) if self.kind == Kind::Secret => obj.extend(fields),
            spec => {
                obj.insert("spec".into(), spec);
            }
        }
        Value::Object(obj)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn namespace(&self) -> &str {
        &self.metadata.namespace
    }
}

impl Body {
    /// The body as stored: the `spec`, or for a Secret its `type` and `data`.
    pub fn to_value(&self) -> Value {
        let v = match self {
            Body::Gateway(s) => serde_json::to_value(s),
            Body::VirtualService(s) => serde_json::to_value(s),
            Body::DestinationRule(s) => serde_json::to_value(s),
            Body::ServiceEntry(s) => serde_json::to_value(s),
            Body::WorkloadEntry(s) => serde_json::to_value(s),
            Body::PeerAuthentication(s) => serde_json::to_value(s),
            Body::RequestAuthentication(s) => serde_json::to_value(s),
            Body::AuthorizationPolicy(s) => serde_json::to_value(s),
            Body::Secret(s) => serde_json::to_value(s),
            Body::TrafficSplit(s) => serde_json::to_value(s),
            Body::RateLimitPolicy(s) => serde_json::to_value(s),
            Body::Consumer(s) => serde_json::to_value(s),
            Body::ApiKeyAuth(s) => serde_json::to_value(s),
            Body::RequestSizeLimit(s) => serde_json::to_value(s),
            Body::GrpcTranscoder(s) => serde_json::to_value(s),
            Body::Telemetry(s) => serde_json::to_value(s),
        };
        v.unwrap_or(Value::Null)
    }

    /// Parses a stored body back. Stored bodies were checked when written,
    /// so an error here means the database was edited by hand.
    pub fn from_stored(kind: Kind, value: Value) -> Result<Body, Vec<FieldError>> {
        let mut errs = Errors::default();
        let path = if kind == Kind::Secret { "" } else { "spec" };
        let body = if kind == Kind::Secret {
            decode::<SecretBody>(value, path, &mut errs).map(Body::Secret)
        } else {
            decode_body(kind, value, &mut errs)
        };
        body.ok_or(errs.items)
    }

    fn normalize(&mut self) {
        if let Body::Secret(s) = self {
            use base64::Engine as _;
            for (k, v) in std::mem::take(&mut s.string_data) {
                s.data.insert(k, base64::engine::general_purpose::STANDARD.encode(v.as_bytes()));
            }
        }
    }

    fn validate(&self, errs: &mut Errors) {
        match self {
            Body::Gateway(s) => s.validate(errs),
            Body::VirtualService(s) => s.validate(errs),
            Body::DestinationRule(s) => s.validate(errs),
            Body::ServiceEntry(s) => s.validate(errs),
            Body::WorkloadEntry(s) => s.validate(errs),
            Body::PeerAuthentication(s) => s.validate(errs),
            Body::RequestAuthentication(s) => s.validate(errs),
            Body::AuthorizationPolicy(s) => s.validate(errs),
            Body::Secret(s) => validate_secret(s, errs),
            Body::TrafficSplit(s) => validate_split(s, errs),
            Body::RateLimitPolicy(s) => s.validate(errs),
            Body::Consumer(s) => s.validate(errs),
            Body::ApiKeyAuth(s) => s.validate(errs),
            Body::RequestSizeLimit(s) => s.validate(errs),
            Body::GrpcTranscoder(s) => s.validate(errs),
            Body::Telemetry(s) => s.validate(errs),
        }
    }
}

fn decode_body(kind: Kind, spec: Value, errs: &mut Errors) -> Option<Body> {
    let p = "spec";
    match kind {
        Kind::Gateway => decode(spec, p, errs).map(Body::Gateway),
        Kind::VirtualService => decode(spec, p, errs).map(Body::VirtualService),
        Kind::DestinationRule => decode(spec, p, errs).map(Body::DestinationRule),
        Kind::ServiceEntry => decode(spec, p, errs).map(Body::ServiceEntry),
        Kind::WorkloadEntry => decode(spec, p, errs).map(Body::WorkloadEntry),
        Kind::PeerAuthentication => decode(spec, p, errs).map(Body::PeerAuthentication),
        Kind::RequestAuthentication => decode(spec, p, errs).map(Body::RequestAuthentication),
        Kind::AuthorizationPolicy => decode(spec, p, errs).map(Body::AuthorizationPolicy),
        Kind::TrafficSplit => decode(spec, p, errs).map(Body::TrafficSplit),
        Kind::RateLimitPolicy => decode(spec, p, errs).map(Body::RateLimitPolicy),
        Kind::Consumer => decode(spec, p, errs).map(Body::Consumer),
        Kind::ApiKeyAuth => decode(spec, p, errs).map(Body::ApiKeyAuth),
        Kind::RequestSizeLimit => decode(spec, p, errs).map(Body::RequestSizeLimit),
        Kind::GrpcTranscoder => decode(spec, p, errs).map(Body::GrpcTranscoder),
        Kind::Telemetry => decode(spec, p, errs).map(Body::Telemetry),
        Kind::Secret => decode(spec, p, errs).map(Body::Secret),
    }
}

/// Deserializes `value` into `T`, turning serde's first error into a field
/// error with a full path and, for a misspelt name, the nearest valid one.
fn decode<T: serde::de::DeserializeOwned>(value: Value, prefix: &str, errs: &mut Errors) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = format_path(prefix, &e.path().to_string());
            let (path, reason) = explain(&inner, &e.inner().to_string());
            errs.push(path, reason);
            None
        }
    }
}

fn format_path(prefix: &str, inner: &str) -> String {
    let inner = if inner == "." { "" } else { inner };
    match (prefix.is_empty(), inner.is_empty()) {
        (_, true) => prefix.to_string(),
        (true, false) => inner.to_string(),
        (false, false) if inner.starts_with('[') => format!("{prefix}{inner}"),
        (false, false) => format!("{prefix}.{inner}"),
    }
}

/// Rewrites serde's messages into ours: `unknown field; did you mean "retries"?`.
fn explain(path: &str, message: &str) -> (String, String) {
    // serde: "unknown field `retry`, expected one of `a`, `b`" / "expected `a`"
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let candidates = backticked(expected);
        let hint = crate::suggest::nearest(field, &candidates);
        let full = if path.is_empty() || path.ends_with(&format!(".{field}")) || path == field {
            path.to_string()
        } else {
            format_path(path, field)
        };
        let mut reason = unknown_field_reason(hint);
        if hint.is_none() && !candidates.is_empty() {
            reason = format!("unknown field; valid fields here: {}", candidates.join(", "));
        }
        return (full, reason);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (value, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let candidates = backticked(expected);
        let mut reason = format!("unknown value {value:?}; expected one of: {}", candidates.join(", "));
        if let Some(h) = crate::suggest::nearest(value, &candidates) {
            reason.push_str(&format!(" (did you mean {h:?}?)"));
        }
        return (path.to_string(), reason);
    }
    (path.to_string(), message.replace('`', "\""))
}

fn unknown_field_reason(hint: Option<&str>) -> String {
    match hint {
        Some(h) => format!("unknown field; did you mean {h:?}?"),
        None => "unknown field".to_string(),
    }
}

fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn validate_secret(s: &SecretBody, errs: &mut Errors) {
    use base64::Engine as _;
    match s.secret_type.as_str() {
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !s.data.contains_key(key) {
                    errs.push(format!("data.{key}"), "missing: a kubernetes.io/tls Secret needs tls.crt and tls.key");
                }
            }
        }
        // A CA bundle for DestinationRule `credentialName` (SIMPLE TLS to upstreams), as Istio reads it.
        "Opaque" => {
            if s.data.is_empty() {
                errs.push("data", "empty: an Opaque Secret holds ca.crt (and optionally tls.crt, tls.key, ca.crl)");
            }
            if s.data.contains_key("tls.crt") != s.data.contains_key("tls.key") {
                errs.push("data", "tls.crt and tls.key come together");
            }
        }
        other => {
            errs.push(
                "type",
                format!(
                    "secret type {other:?} is not supported; meshgate stores Secrets of type \"kubernetes.io/tls\" and \"Opaque\" (with TLS keys)"
                ),
            );
            return;
        }
    }
    for (key, value) in &s.data {
        let path = format!("data.{key}");
        if !matches!(key.as_str(), "tls.crt" | "tls.key" | "ca.crt" | "ca.crl") {
            errs.push(path, "unknown key; a TLS secret holds tls.crt, tls.key, ca.crt and ca.crl");
            continue;
        }
        match base64::engine::general_purpose::STANDARD.decode(value.trim()) {
            Ok(bytes) if bytes.windows(11).any(|w| w == b"-----BEGIN ") => {}
            Ok(_) => errs.push(path, "not PEM: expected a \"-----BEGIN ...-----\" block after base64 decoding"),
            Err(e) => errs.push(path, format!("not valid base64: {e}")),
        }
    }
}

fn validate_split(s: &TrafficSplitSpec, errs: &mut Errors) {
    if s.service.is_empty() {
        errs.push("spec.service", "missing: name the service whose traffic is split");
    } else {
        errs.hostname("spec.service", &s.service, false);
    }
    if s.subsets.is_empty() {
        errs.push("spec.subsets", "missing: list at least one subset with a weight");
    }
    let mut sum = 0i64;
    for (i, sub) in s.subsets.iter().enumerate() {
        if sub.name.is_empty() {
            errs.push(format!("spec.subsets[{i}].name"), "missing");
        }
        if !(0..=100).contains(&sub.weight) {
            errs.push(
                format!("spec.subsets[{i}].weight"),
                format!("weight {} out of range: must be 0..=100", sub.weight),
            );
        }
        sum += i64::from(sub.weight);
    }
    if !s.subsets.is_empty() && sum != 100 {
        errs.push("spec.subsets", format!("weights sum to {sum}, must sum to 100"));
    }
    errs.unique(
        "subset",
        s.subsets.iter().enumerate().map(|(i, s)| (format!("spec.subsets[{i}].name"), s.name.as_str())),
    );
}
