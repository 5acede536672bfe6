//! Istio `security.istio.io` specs (PeerAuthentication, RequestAuthentication,
//! AuthorizationPolicy) and their validation.

use std::collections::BTreeMap;

use crate::check::{Errors, check_object_name};
use crate::networking::{header_name, ip_or_cidr, suggest};

/// Selects workloads by label; shared by the security kinds and DestinationRule.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

// ---------------------------------------------------------------------------
// PeerAuthentication
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Keyed by port number, written as a string as in protobuf JSON.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, PeerMtls>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl PeerAuthenticationSpec {
    pub fn validate(&self, errs: &mut Errors) {
        selector(errs, self.selector.as_ref());
        let has_labels = self.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
        if !self.port_level_mtls.is_empty() && !has_labels {
            errs.push(
                "spec.portLevelMtls",
                "portLevelMtls needs a selector with matchLabels: it cannot apply to a whole namespace or mesh",
            );
        }
        for key in self.port_level_mtls.keys() {
            let path = format!("spec.portLevelMtls.{key}");
            match key.parse::<u32>() {
                Ok(port) => errs.port(path, port),
                Err(_) => errs.push(path, format!("{key:?} is not a port number: keys must be ports 1..=65535")),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// RequestAuthentication
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Istio's schema also accepts the proto spelling `jwks_uri`; it is written back as `jwksUri`.
    #[serde(default, alias = "jwks_uri", skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_original_token: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

impl RequestAuthenticationSpec {
    pub fn validate(&self, errs: &mut Errors) {
        targets(errs, self.selector.as_ref(), self.target_ref.as_ref(), &self.target_refs);
        for (i, rule) in self.jwt_rules.iter().enumerate() {
            rule.validate(&format!("spec.jwtRules[{i}]"), errs);
        }
    }
}

impl JwtRule {
    fn validate(&self, path: &str, errs: &mut Errors) {
        let p = |field: &str| format!("{path}.{field}");
        if self.issuer.as_deref().unwrap_or_default().is_empty() {
            errs.push(p("issuer"), "issuer is required");
        }
        if let Some(uri) = &self.jwks_uri {
            let host = uri.strip_prefix("https://").or_else(|| uri.strip_prefix("http://")).map(|rest| {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                authority.rsplit_once('@').map_or(authority, |(_, host)| host)
            });
            if host.is_none_or(str::is_empty) {
                errs.push(p("jwksUri"), format!("jwksUri {uri:?} is not an http:// or https:// URL"));
            }
        }
        if let Some(jwks) = &self.jwks {
            let keys = serde_json::from_str::<serde_json::Value>(jwks).ok().and_then(|v| v.get("keys").cloned());
            if !keys.is_some_and(|k| k.is_array()) {
                errs.push(p("jwks"), "jwks must be a JSON Web Key Set: a JSON object with a \"keys\" array");
            }
        }
        for (field, values) in [
            ("audiences", &self.audiences),
            ("fromParams", &self.from_params),
            ("fromCookies", &self.from_cookies),
            ("spaceDelimitedClaims", &self.space_delimited_claims),
        ] {
            non_empty_values(errs, &p(field), values);
        }
        for (i, h) in self.from_headers.iter().enumerate() {
            match h.name.as_deref() {
                Some(name) if !name.is_empty() => header_name(errs, format!("{path}.fromHeaders[{i}].name"), name),
                _ => errs.push(format!("{path}.fromHeaders[{i}].name"), "name is required"),
            }
        }
        if let Some(h) = &self.output_payload_to_header {
            header_name(errs, p("outputPayloadToHeader"), h);
        }
        for (i, c) in self.output_claim_to_headers.iter().enumerate() {
            let cp = format!("{path}.outputClaimToHeaders[{i}]");
            match c.header.as_deref() {
                Some(h) if !h.is_empty() => header_name(errs, format!("{cp}.header"), h),
                _ => errs.push(format!("{cp}.header"), "header is required"),
            }
            if c.claim.as_deref().unwrap_or_default().is_empty() {
                errs.push(format!("{cp}.claim"), "claim is required");
            }
        }
        if let Some(t) = &self.timeout {
            errs.duration(p("timeout"), t);
        }
    }
}

// ---------------------------------------------------------------------------
// AuthorizationPolicy
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// `namespace/name` or `name` (in the policy's namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Port numbers written as strings, as Istio does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

impl AuthorizationPolicySpec {
    pub fn validate(&self, errs: &mut Errors) {
        targets(errs, self.selector.as_ref(), self.target_ref.as_ref(), &self.target_refs);
        let named = self.provider.as_ref().is_some_and(|p| p.name.as_deref().is_some_and(|n| !n.is_empty()));
        if self.action == Some(Action::Custom) && !named {
            errs.push("spec.provider", "a provider with a name is required when action is CUSTOM");
        } else if self.action != Some(Action::Custom) && self.provider.is_some() {
            errs.push("spec.provider", "provider is only allowed when action is CUSTOM");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let rp = format!("spec.rules[{i}]");
            for (j, from) in rule.from.iter().enumerate() {
                let sp = format!("{rp}.from[{j}].source");
                match &from.source {
                    None => errs.push(sp, "source is required"),
                    Some(s) if *s == Source::default() => errs.push(sp, "source must set at least one field"),
                    Some(s) => s.validate(&sp, errs),
                }
            }
            for (j, to) in rule.to.iter().enumerate() {
                let op = format!("{rp}.to[{j}].operation");
                match &to.operation {
                    None => errs.push(op, "operation is required"),
                    Some(o) if *o == Operation::default() => errs.push(op, "operation must set at least one field"),
                    Some(o) => o.validate(&op, errs),
                }
            }
            for (j, cond) in rule.when.iter().enumerate() {
                cond.validate(&format!("{rp}.when[{j}]"), errs);
            }
        }
    }
}

impl Source {
    fn validate(&self, path: &str, errs: &mut Errors) {
        let lists = [
            ("principals", &self.principals),
            ("notPrincipals", &self.not_principals),
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
            ("namespaces", &self.namespaces),
            ("notNamespaces", &self.not_namespaces),
        ];
        for (field, values) in lists {
            non_empty_values(errs, &format!("{path}.{field}"), values);
        }
        for (field, values) in
            [("serviceAccounts", &self.service_accounts), ("notServiceAccounts", &self.not_service_accounts)]
        {
            if values.len() > 16 {
                errs.push(
                    format!("{path}.{field}"),
                    format!("{} service accounts given: at most 16 are allowed", values.len()),
                );
            }
            for (i, sa) in values.iter().enumerate() {
                let ok = sa.split('/').count() <= 2 && sa.split('/').all(|part| check_object_name(part).is_ok());
                if !ok {
                    errs.push(
                        format!("{path}.{field}[{i}]"),
                        format!("invalid service account {sa:?}: must be name or namespace/name, without wildcards"),
                    );
                }
            }
        }
        let blocks = [
            ("ipBlocks", &self.ip_blocks),
            ("notIpBlocks", &self.not_ip_blocks),
            ("remoteIpBlocks", &self.remote_ip_blocks),
            ("notRemoteIpBlocks", &self.not_remote_ip_blocks),
        ];
        for (field, values) in blocks {
            for (i, v) in values.iter().enumerate() {
                ip_or_cidr(errs, format!("{path}.{field}[{i}]"), v);
            }
        }
    }
}

impl Operation {
    fn validate(&self, path: &str, errs: &mut Errors) {
        let lists = [
            ("hosts", &self.hosts),
            ("notHosts", &self.not_hosts),
            ("methods", &self.methods),
            ("notMethods", &self.not_methods),
            ("paths", &self.paths),
            ("notPaths", &self.not_paths),
        ];
        for (field, values) in lists {
            non_empty_values(errs, &format!("{path}.{field}"), values);
        }
        for (field, values) in [("ports", &self.ports), ("notPorts", &self.not_ports)] {
            for (i, port) in values.iter().enumerate() {
                port_string(errs, format!("{path}.{field}[{i}]"), port);
            }
        }
    }
}

impl Condition {
    fn validate(&self, path: &str, errs: &mut Errors) {
        let key = self.key.as_deref().unwrap_or_default();
        let bracketed = |prefix: &str| {
            key.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(']')).is_some_and(|name| !name.is_empty())
        };
        let known = CONDITION_KEYS.contains(&key)
            || bracketed("request.headers[")
            || bracketed("request.auth.claims[")
            || key.starts_with("experimental.envoy.filters.");
        if key.is_empty() {
            errs.push(format!("{path}.key"), "key is required");
        } else if !known {
            errs.push(
                format!("{path}.key"),
                format!(
                    "unknown condition key {key:?}: must be one of {}, request.headers[<name>], request.auth.claims[<name>] or experimental.envoy.filters.*{}",
                    CONDITION_KEYS.join(", "),
                    suggest(key, CONDITION_KEYS)
                ),
            );
        }
        if self.values.is_empty() && self.not_values.is_empty() {
            errs.push(path, "at least one of values or notValues is required");
        }
        for (field, values) in [("values", &self.values), ("notValues", &self.not_values)] {
            for (i, v) in values.iter().enumerate() {
                let vp = format!("{path}.{field}[{i}]");
                match key {
                    "source.ip" | "remote.ip" | "destination.ip" => ip_or_cidr(errs, vp, v),
                    "destination.port" => port_string(errs, vp, v),
                    _ if v.is_empty() => errs.push(vp, "empty value is not allowed"),
                    _ => {}
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn selector(errs: &mut Errors, sel: Option<&WorkloadSelector>) {
    if let Some(sel) = sel {
        errs.labels("spec.selector.matchLabels", &sel.match_labels);
    }
}

/// Checks the workload selection of a policy: a selector, or references to Gateways, Services or ServiceEntries.
fn targets(
    errs: &mut Errors,
    sel: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    const KINDS: &[(&str, &str)] = &[
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
        ("", "Service"),
        ("core", "Service"),
        ("networking.istio.io", "ServiceEntry"),
    ];
    selector(errs, sel);
    if [sel.is_some(), target_ref.is_some(), !target_refs.is_empty()].into_iter().filter(|set| *set).count() > 1 {
        errs.push("spec.selector", "only one of selector, targetRef or targetRefs may be set");
    }
    let refs = target_ref
        .map(|r| ("spec.targetRef".to_string(), r))
        .into_iter()
        .chain(target_refs.iter().enumerate().map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)));
    for (path, r) in refs {
        let group = r.group.as_deref().unwrap_or_default();
        match r.kind.as_deref() {
            Some(kind) if KINDS.contains(&(group, kind)) => {}
            Some(kind) if !kind.is_empty() => errs.push(
                format!("{path}.kind"),
                format!(
                    "unsupported target {group:?}/{kind:?}: must be a Gateway or GatewayClass (group gateway.networking.k8s.io), a Service (group \"\") or a ServiceEntry (group networking.istio.io)"
                ),
            ),
            _ => errs.push(format!("{path}.kind"), "kind is required"),
        }
        match r.name.as_deref() {
            Some(name) if !name.is_empty() => {}
            _ => errs.push(format!("{path}.name"), "name is required"),
        }
        if let Some(ns) = &r.namespace
            && let Err(reason) = check_object_name(ns)
        {
            errs.push(format!("{path}.namespace"), reason);
        }
    }
}

fn non_empty_values(errs: &mut Errors, path: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            errs.push(format!("{path}[{i}]"), "empty value is not allowed");
        }
    }
}

fn port_string(errs: &mut Errors, path: String, value: &str) {
    match value.parse::<u32>() {
        Ok(port) => errs.port(path, port),
        Err(_) => errs.push(path, format!("{value:?} is not a port number: must be 1..=65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::Value;

    fn round_trip<T: DeserializeOwned + serde::Serialize>(yaml: &str) -> T {
        let doc: Value = serde_saphyr::from_str(yaml).expect("test YAML parses");
        let spec = serde_json::from_value::<T>(doc["spec"].clone()).expect("spec deserializes");
        assert_eq!(serde_json::to_value(&spec).expect("serializes"), doc["spec"]);
        spec
    }

    fn spec<T: DeserializeOwned>(spec_yaml: &str) -> T {
        let raw: Value = serde_saphyr::from_str(spec_yaml).expect("test YAML parses");
        serde_json::from_value::<T>(raw).expect("spec deserializes")
    }

    fn check(validate: impl FnOnce(&mut Errors)) -> Errors {
        let mut errs = Errors::default();
        validate(&mut errs);
        errs
    }

    fn paths(errs: &Errors) -> Vec<&str> {
        errs.items.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn peer_authentication_round_trips_and_validates() {
        let pa: PeerAuthenticationSpec = round_trip(
            r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
"#,
        );
        assert_eq!(pa.port_level_mtls["8080"].mode, Some(MtlsMode::Disable));
        assert!(check(|e| pa.validate(e)).is_empty());

        let bad: PeerAuthenticationSpec =
            spec("mtls: {mode: PERMISSIVE}\nportLevelMtls: {0: {mode: STRICT}, http: {}}\n");
        let errs = check(|e| bad.validate(e));
        assert_eq!(paths(&errs), ["spec.portLevelMtls", "spec.portLevelMtls.0", "spec.portLevelMtls.http"]);
        assert!(errs.items[1].reason.contains("port 0"));
        let err = serde_json::from_value::<PeerAuthenticationSpec>(serde_json::json!({"mtls": {"mode": "STRICTLY"}}))
            .expect_err("unknown mode");
        assert!(err.to_string().contains("STRICTLY"), "{err}");
    }

    #[test]
    fn request_authentication_round_trips_and_validates() {
        let ra: RequestAuthenticationSpec = round_trip(
            r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt-on-ingress
  namespace: istio-system
spec:
  targetRef:
    kind: Gateway
    group: gateway.networking.k8s.io
    name: istio-ingressgateway
  jwtRules:
  - issuer: "https://accounts.google.com"
    audiences: [bookstore_android.apps.googleusercontent.com]
    jwksUri: "https://www.googleapis.com/oauth2/v3/certs"
    fromHeaders:
    - name: x-jwt-assertion
      prefix: "Bearer "
    fromParams: [my_token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
    outputClaimToHeaders:
    - header: x-sub
      claim: sub
    timeout: 5s
    spaceDelimitedClaims: [scope]
  - issuer: issuer-inline
    jwks: '{"keys": [{"kty": "RSA", "e": "AQAB", "n": "xyz"}]}'
"#,
        );
        assert!(check(|e| ra.validate(e)).is_empty(), "{:?}", check(|e| ra.validate(e)).items);

        let bad: RequestAuthenticationSpec = spec(
            r#"
selector: {matchLabels: {app: x}}
targetRefs: [{kind: Deployment, name: x}]
jwtRules:
- issuer: ""
  jwksUri: "ftp://keys.example.com"
  jwks: "not json"
  outputClaimToHeaders: [{header: "x sub", claim: sub}]
  timeout: 5 seconds
"#,
        );
        let errs = check(|e| bad.validate(e));
        assert_eq!(
            paths(&errs),
            [
                "spec.selector",
                "spec.targetRefs[0].kind",
                "spec.jwtRules[0].issuer",
                "spec.jwtRules[0].jwksUri",
                "spec.jwtRules[0].jwks",
                "spec.jwtRules[0].outputClaimToHeaders[0].header",
                "spec.jwtRules[0].timeout",
            ]
        );
        let err = serde_json::from_value::<RequestAuthenticationSpec>(
            serde_json::json!({"jwtRules": [{"issuer": "a", "jwksURI": "x"}]}),
        )
        .expect_err("misspelt field");
        assert!(err.to_string().contains("jwksURI"), "{err}");
    }

    #[test]
    fn authorization_policy_round_trips_and_validates() {
        let ap: AuthorizationPolicySpec = round_trip(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
        notRequestPrincipals: ["*"]
    - source:
        namespaces: ["test"]
        serviceAccounts: ["default/sleep"]
        ipBlocks: ["10.1.0.0/16", "192.168.1.7"]
        notRemoteIpBlocks: ["2001:db8::/32"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
        ports: ["8080"]
        hosts: ["httpbin.foo.svc.cluster.local"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
        notPorts: ["9090"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
    - key: source.ip
      notValues: ["10.0.0.1"]
    - key: request.headers[x-token]
      values: ["abc"]
"#,
        );
        assert_eq!(ap.action, Some(Action::Allow));
        assert!(check(|e| ap.validate(e)).is_empty(), "{:?}", check(|e| ap.validate(e)).items);

        let custom: AuthorizationPolicySpec = round_trip(
            "spec:\n  action: CUSTOM\n  provider: {name: my-ext-authz}\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n",
        );
        assert!(check(|e| custom.validate(e)).is_empty());

        let bad: AuthorizationPolicySpec = spec(
            r#"
action: CUSTOM
rules:
- from:
  - source: {ipBlocks: ["10.0.0.300"], serviceAccounts: ["a/b/c"]}
  - {}
  to:
  - operation: {ports: ["0"]}
  when:
  - key: source.namspace
    values: [a]
  - key: destination.port
    values: ["http"]
  - key: source.namespace
"#,
        );
        let errs = check(|e| bad.validate(e));
        assert_eq!(
            paths(&errs),
            [
                "spec.provider",
                "spec.rules[0].from[0].source.serviceAccounts[0]",
                "spec.rules[0].from[0].source.ipBlocks[0]",
                "spec.rules[0].from[1].source",
                "spec.rules[0].to[0].operation.ports[0]",
                "spec.rules[0].when[0].key",
                "spec.rules[0].when[1].values[0]",
                "spec.rules[0].when[2]",
            ]
        );
        assert!(errs.items[5].reason.contains("did you mean \"source.namespace\"?"), "{}", errs.items[5].reason);

        let allow_with_provider: AuthorizationPolicySpec = spec("action: DENY\nprovider: {name: x}\n");
        assert_eq!(paths(&check(|e| allow_with_provider.validate(e))), ["spec.provider"]);
        let err = serde_json::from_value::<AuthorizationPolicySpec>(serde_json::json!({"rules": [{"form": []}]}))
            .expect_err("misspelt field");
        assert!(err.to_string().contains("form"), "{err}");
    }
}
