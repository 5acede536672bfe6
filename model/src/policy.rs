//! meshgate's own edge policies (`meshgate.io/v1`), for what Istio has no
//! resource for: rate limits, consumers and API keys.

use serde::{Deserialize, Serialize};

use crate::check::Errors;

/// What a meshgate policy applies to: a VirtualService (every route of it,
/// or the route named by `sectionName`) or a Gateway (every route it serves).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    /// A route's `name` within the VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// `RateLimitPolicy`: token buckets on the routes it targets. Each request
/// takes the first limit whose `when` it meets; `concurrency` caps the
/// requests in flight on each targeted route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicySpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Requests allowed per `per`.
    #[serde(default)]
    pub requests: u32,
    /// `second`, `minute`, `hour`, or a duration such as `10s` [default: `minute`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    /// The most requests allowed at once (the bucket's size) [default: `requests`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What a bucket is kept per: `clientIp` (default), `consumer`, `path`,
    /// `global` (one bucket), `header:NAME` or `claim:NAME` (a JWT claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<LimitWhen>,
}

/// Which requests a limit is for; unset: every request not taken by an earlier limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitWhen {
    /// The caller is one of these consumers (by API key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// A request header has one of these values: `{name: x-plan, values: [gold]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderIs>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderIs {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// A limit's key, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    Consumer,
    Path,
    Global,
    Header(String),
    /// A JWT claim's path: nested objects by name (`org.tier`).
    Claim(Vec<String>),
}

impl LimitKey {
    pub fn parse(key: Option<&str>) -> Result<LimitKey, String> {
        match key.unwrap_or("clientIp") {
            "clientIp" => Ok(LimitKey::ClientIp),
            "consumer" => Ok(LimitKey::Consumer),
            "path" => Ok(LimitKey::Path),
            "global" => Ok(LimitKey::Global),
            k => match k.split_once(':') {
                Some(("header", name)) if !name.is_empty() => Ok(LimitKey::Header(name.to_ascii_lowercase())),
                Some(("claim", name)) if !name.is_empty() => {
                    Ok(LimitKey::Claim(name.split('.').map(str::to_string).collect()))
                }
                _ => Err(format!("unknown key {k:?}: use clientIp, consumer, path, global, header:NAME or claim:NAME")),
            },
        }
    }
}

/// `per`: the period a limit's `requests` refill over.
pub fn parse_period(per: Option<&str>) -> Result<std::time::Duration, String> {
    let d = match per.unwrap_or("minute") {
        "second" => std::time::Duration::from_secs(1),
        "minute" => std::time::Duration::from_secs(60),
        "hour" => std::time::Duration::from_secs(3600),
        other => crate::check::parse_duration(other)
            .map_err(|e| format!("{other:?}: use second, minute, hour or a duration such as 10s ({e})"))?,
    };
    if d.is_zero() {
        return Err("the period must be longer than zero".into());
    }
    Ok(d)
}

impl RateLimitPolicySpec {
    pub fn validate(&self, errs: &mut Errors) {
        validate_targets(&self.target_refs, errs);
        if self.limits.is_empty() && self.concurrency.is_none() {
            errs.push("spec.limits", "missing: give at least one limit, or a concurrency cap");
        }
        if self.concurrency == Some(0) {
            errs.push("spec.concurrency", "must be at least 1");
        }
        for (i, l) in self.limits.iter().enumerate() {
            let p = format!("spec.limits[{i}]");
            if l.requests == 0 {
                errs.push(format!("{p}.requests"), "must be at least 1");
            }
            if let Err(e) = parse_period(l.per.as_deref()) {
                errs.push(format!("{p}.per"), e);
            }
            if l.burst == Some(0) {
                errs.push(format!("{p}.burst"), "must be at least 1");
            }
            if let Err(e) = LimitKey::parse(l.key.as_deref()) {
                errs.push(format!("{p}.key"), e);
            }
            if let Some(h) = l.when.as_ref().and_then(|w| w.header.as_ref())
                && (h.name.is_empty() || h.values.is_empty())
            {
                errs.push(format!("{p}.when.header"), "needs a name and at least one value");
            }
        }
    }
}

/// `Consumer`: a caller of the APIs, known by its API keys (made with
/// `meshgate apikey create`, kept hashed outside the resource).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// `ApiKeyAuth`: the routes it targets take API keys; a valid key names
/// the consumer (forwarded in `consumerHeader`, used by rate limits); an
/// unknown or revoked key is 401; no key is 401 when `required`, unless
/// `allowJwt` and the request carries a checked JWT.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyAuthSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    /// Where the key is looked for [default: header `x-api-key`, then query `apikey`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<KeyLocation>,
    /// [default: true]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// A request with a checked JWT needs no key [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_jwt: Option<bool>,
    /// The header the consumer's name goes upstream in [default: `x-consumer`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_header: Option<String>,
    /// Keep the key on the request sent upstream [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_key: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyLocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

pub(crate) fn validate_targets(targets: &[TargetRef], errs: &mut Errors) {
    if targets.is_empty() {
        errs.push("spec.targetRefs", "missing: name the VirtualService or Gateway this policy applies to");
    }
    for (i, t) in targets.iter().enumerate() {
        let p = format!("spec.targetRefs[{i}]");
        if !matches!(t.kind.as_str(), "VirtualService" | "Gateway") {
            errs.push(format!("{p}.kind"), format!("{:?}: must be VirtualService or Gateway", t.kind));
        }
        if t.name.is_empty() {
            errs.push(format!("{p}.name"), "missing");
        }
        if t.section_name.is_some() && t.kind != "VirtualService" {
            errs.push(format!("{p}.sectionName"), "names a route, so the target must be a VirtualService");
        }
    }
}

impl ConsumerSpec {
    pub fn validate(&self, _errs: &mut Errors) {}
}

impl ApiKeyAuthSpec {
    pub fn validate(&self, errs: &mut Errors) {
        validate_targets(&self.target_refs, errs);
        for (i, l) in self.from.iter().enumerate() {
            let p = format!("spec.from[{i}]");
            match (&l.header, &l.query) {
                (Some(h), None) => crate::networking::header_name(errs, format!("{p}.header"), h),
                (None, Some(q)) if !q.is_empty() => {}
                _ => errs.push(p, "give exactly one of header or query"),
            }
        }
        if let Some(h) = &self.consumer_header {
            crate::networking::header_name(errs, "spec.consumerHeader".to_string(), h);
        }
    }
}

/// `RequestSizeLimit`: requests to the routes it targets may carry at most
/// `maxBytes` of body; larger ones are refused with 413 before anything
/// reaches the upstream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestSizeLimitSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub max_bytes: u64,
}

impl RequestSizeLimitSpec {
    pub fn validate(&self, errs: &mut Errors) {
        validate_targets(&self.target_refs, errs);
        if self.max_bytes == 0 {
            errs.push("spec.maxBytes", "missing: the largest request body allowed, in bytes (at least 1)");
        }
    }
}
