//! Istio's `Telemetry` (`telemetry.istio.io/v1`): trace sampling and access
//! logging per mesh, namespace, workload, Gateway, or (meshgate's
//! extension) one VirtualService route.
//!
//! Which one applies follows Istio: a Telemetry in a root namespace
//! (`istio-system`) without selector is mesh-wide; one without selector in
//! a namespace is namespace-wide; one with a `selector` or `targetRefs` is
//! workload-specific; the most specific wins. A `targetRefs` entry of kind
//! `VirtualService` (with `sectionName` for one route) sets the sampling
//! and access-log filter of those routes on the proxy serving them.
//!
//! Access-log filters are written in CEL as Istio's are; meshgate reads
//! the subset that access logs need (see [`LogFilter`]), and anything else
//! is an error that says what is understood.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::Errors;
use crate::security::WorkloadSelector;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TelemetryTargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TelemetryTargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
    /// Metric overrides (Istio's `metrics`): accepted, not acted on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<serde_json::Value>,
}

/// Istio's PolicyTargetReference, plus `sectionName` (a route's `name`)
/// when the target is a VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetryTargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadModeSelector {
    /// CLIENT_AND_SERVER (default), CLIENT or SERVER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<WorkloadModeSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Percent of requests (0–100) that start a sampled trace when the
    /// caller did not decide; errors are kept regardless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    /// Propagate trace context but record no spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
}

/// A span attribute added to every span: a literal, or from a request header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<Literal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<FromSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<FromSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Literal {
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromSource {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<WorkloadModeSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
    /// meshgate: log only this percent (0–100) of the requests that pass the filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogFilter {
    #[serde(default)]
    pub expression: String,
}

impl TelemetrySpec {
    pub fn validate(&self, errs: &mut Errors) {
        if self.selector.is_some() && (self.target_ref.is_some() || !self.target_refs.is_empty()) {
            errs.push("spec.selector", "give either selector or targetRefs, not both");
        }
        let refs = self.target_ref.iter().map(|t| ("spec.targetRef".to_string(), t));
        let refs = refs.chain(self.target_refs.iter().enumerate().map(|(i, t)| (format!("spec.targetRefs[{i}]"), t)));
        for (p, t) in refs {
            if !matches!(t.kind.as_str(), "Gateway" | "VirtualService") {
                errs.push(format!("{p}.kind"), format!("{:?}: must be Gateway or VirtualService", t.kind));
            }
            if t.name.is_empty() {
                errs.push(format!("{p}.name"), "missing");
            }
            if t.section_name.is_some() && t.kind != "VirtualService" {
                errs.push(format!("{p}.sectionName"), "names a route, so the target must be a VirtualService");
            }
        }
        for (i, t) in self.tracing.iter().enumerate() {
            let p = format!("spec.tracing[{i}]");
            if let Some(pct) = t.random_sampling_percentage
                && !(0.0..=100.0).contains(&pct)
            {
                errs.push(format!("{p}.randomSamplingPercentage"), format!("{pct}: must be from 0 to 100"));
            }
            check_mode(t.match_.as_ref(), &format!("{p}.match.mode"), errs);
            check_providers(&t.providers, &p, errs);
            for (name, tag) in &t.custom_tags {
                let set = [tag.literal.is_some(), tag.header.is_some(), tag.environment.is_some()];
                if set.iter().filter(|s| **s).count() != 1 {
                    errs.push(format!("{p}.customTags.{name}"), "give exactly one of literal, header, environment");
                }
                if let Some(h) = &tag.header
                    && (h.name.is_empty()
                        || !h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b)))
                {
                    errs.push(
                        format!("{p}.customTags.{name}.header.name"),
                        format!("{:?} is not an HTTP header name", h.name),
                    );
                }
            }
        }
        for (i, a) in self.access_logging.iter().enumerate() {
            let p = format!("spec.accessLogging[{i}]");
            check_mode(a.match_.as_ref(), &format!("{p}.match.mode"), errs);
            check_providers(&a.providers, &p, errs);
            if let Some(f) = &a.filter
                && let Err(e) = LogFilter::parse(&f.expression)
            {
                errs.push(format!("{p}.filter.expression"), e);
            }
            if let Some(pct) = a.random_sampling_percentage
                && !(0.0..=100.0).contains(&pct)
            {
                errs.push(format!("{p}.randomSamplingPercentage"), format!("{pct}: must be from 0 to 100"));
            }
        }
    }

    /// Every target: `targetRef` and `targetRefs`.
    pub fn targets(&self) -> impl Iterator<Item = &TelemetryTargetRef> {
        self.target_ref.iter().chain(&self.target_refs)
    }
}

fn check_mode(m: Option<&WorkloadModeSelector>, path: &str, errs: &mut Errors) {
    if let Some(mode) = m.and_then(|m| m.mode.as_deref())
        && !matches!(mode, "CLIENT_AND_SERVER" | "CLIENT" | "SERVER")
    {
        errs.push(path, format!("{mode:?}: must be CLIENT_AND_SERVER, CLIENT or SERVER"));
    }
}

fn check_providers(providers: &[ProviderRef], p: &str, errs: &mut Errors) {
    for (j, pr) in providers.iter().enumerate() {
        if pr.name.is_empty() {
            errs.push(format!("{p}.providers[{j}].name"), "missing");
        }
    }
}

/// What an access-log filter can look at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogFacts<'a> {
    pub code: u16,
    pub grpc_status: Option<u16>,
    pub duration_ms: u64,
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    /// Envoy's response flags, e.g. `UF,URX`, or empty.
    pub flags: &'a str,
}

/// An access-log filter: the subset of CEL over Envoy's attributes that
/// access logs need. Comparisons (`== != < <= > >=`) of `response.code`,
/// `response.grpc_status`, `response.duration` (against `duration("1.5s")`
/// or milliseconds), `request.method`, `request.path`, `request.host`,
/// `response.flags` with literals; `&&`, `||`, `!` and parentheses;
/// `request.path.startsWith("/api")`, `response.flags.contains("UF")`.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFilter {
    And(Box<LogFilter>, Box<LogFilter>),
    Or(Box<LogFilter>, Box<LogFilter>),
    Not(Box<LogFilter>),
    Compare(Attr, Op, Lit),
    StartsWith(Attr, String),
    Contains(Attr, String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attr {
    Code,
    GrpcStatus,
    Duration,
    Method,
    Path,
    Host,
    Flags,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Int(i64),
    Str(String),
}

const ATTRS: &str = "response.code, response.grpc_status, response.duration, response.flags, request.method, request.path, request.host";

impl LogFilter {
    pub fn parse(expr: &str) -> Result<LogFilter, String> {
        let tokens = lex(expr)?;
        let mut p = Parser { tokens, at: 0 };
        let f = p.or()?;
        match p.tokens.get(p.at) {
            None => Ok(f),
            Some(t) => Err(format!("unexpected {} after a complete expression", t.show())),
        }
    }

    pub fn matches(&self, f: &LogFacts<'_>) -> bool {
        match self {
            LogFilter::And(a, b) => a.matches(f) && b.matches(f),
            LogFilter::Or(a, b) => a.matches(f) || b.matches(f),
            LogFilter::Not(a) => !a.matches(f),
            LogFilter::StartsWith(a, s) => a.text(f).is_some_and(|t| t.starts_with(s.as_str())),
            LogFilter::Contains(a, s) => a.text(f).is_some_and(|t| t.contains(s.as_str())),
            LogFilter::Compare(a, op, lit) => {
                let ord = match (a.number(f), lit) {
                    (Some(n), Lit::Int(m)) => n.cmp(m),
                    (None, Lit::Str(s)) => match a.text(f) {
                        Some(t) => t.cmp(s.as_str()),
                        None => return false,
                    },
                    // A missing gRPC status compares false with anything.
                    _ => return false,
                };
                match op {
                    Op::Eq => ord.is_eq(),
                    Op::Ne => ord.is_ne(),
                    Op::Lt => ord.is_lt(),
                    Op::Le => ord.is_le(),
                    Op::Gt => ord.is_gt(),
                    Op::Ge => ord.is_ge(),
                }
            }
        }
    }
}

impl Attr {
    fn numeric(self) -> bool {
        matches!(self, Attr::Code | Attr::GrpcStatus | Attr::Duration)
    }

    fn number(self, f: &LogFacts<'_>) -> Option<i64> {
        match self {
            Attr::Code => Some(i64::from(f.code)),
            Attr::GrpcStatus => f.grpc_status.map(i64::from),
            Attr::Duration => Some(f.duration_ms as i64),
            _ => None,
        }
    }

    fn text<'a>(self, f: &LogFacts<'a>) -> Option<&'a str> {
        match self {
            Attr::Method => Some(f.method),
            Attr::Path => Some(f.path),
            Attr::Host => Some(f.host),
            Attr::Flags => Some(f.flags),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Str(String),
    Op(&'static str),
    Open,
    Close,
    Dot,
}

impl Tok {
    fn show(&self) -> String {
        match self {
            Tok::Ident(s) => format!("{s:?}"),
            Tok::Int(n) => n.to_string(),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Op(o) => format!("{o:?}"),
            Tok::Open => "\"(\"".into(),
            Tok::Close => "\")\"".into(),
            Tok::Dot => "\".\"".into(),
        }
    }
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Tok::Open);
                i += 1;
            }
            b')' => {
                out.push(Tok::Close);
                i += 1;
            }
            b'.' => {
                out.push(Tok::Dot);
                i += 1;
            }
            b'"' | b'\'' => {
                let end = s[i + 1..].find(c as char).ok_or_else(|| format!("unterminated string at offset {i}"))?;
                out.push(Tok::Str(s[i + 1..i + 1 + end].to_string()));
                i += end + 2;
            }
            b'0'..=b'9' => {
                let end = b[i..].iter().position(|c| !c.is_ascii_digit()).map_or(b.len(), |n| i + n);
                let n = s[i..end].parse().map_err(|_| format!("number {:?} is too large", &s[i..end]))?;
                out.push(Tok::Int(n));
                i = end;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end =
                    b[i..].iter().position(|c| !(c.is_ascii_alphanumeric() || *c == b'_')).map_or(b.len(), |n| i + n);
                out.push(Tok::Ident(s[i..end].to_string()));
                i = end;
            }
            _ => {
                let two = s.get(i..i + 2).unwrap_or("");
                let op = ["&&", "||", "==", "!=", "<=", ">="].into_iter().find(|o| *o == two);
                match (op, c) {
                    (Some(o), _) => {
                        out.push(Tok::Op(o));
                        i += 2;
                    }
                    (None, b'<') => {
                        out.push(Tok::Op("<"));
                        i += 1;
                    }
                    (None, b'>') => {
                        out.push(Tok::Op(">"));
                        i += 1;
                    }
                    (None, b'!') => {
                        out.push(Tok::Op("!"));
                        i += 1;
                    }
                    _ => {
                        return Err(format!(
                            "unexpected character {:?} at offset {i}",
                            s[i..].chars().next().unwrap_or(' ')
                        ));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Err("empty expression".into());
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Result<Tok, String> {
        let t = self.tokens.get(self.at).cloned().ok_or("the expression ends too soon")?;
        self.at += 1;
        Ok(t)
    }

    fn or(&mut self) -> Result<LogFilter, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Op("||")) {
            self.at += 1;
            left = LogFilter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<LogFilter, String> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::Op("&&")) {
            self.at += 1;
            left = LogFilter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<LogFilter, String> {
        match self.peek() {
            Some(Tok::Op("!")) => {
                self.at += 1;
                Ok(LogFilter::Not(Box::new(self.unary()?)))
            }
            Some(Tok::Open) => {
                self.at += 1;
                let f = self.or()?;
                match self.next()? {
                    Tok::Close => Ok(f),
                    t => Err(format!("expected \")\", found {}", t.show())),
                }
            }
            _ => self.comparison(),
        }
    }

    fn attribute(&mut self) -> Result<Attr, String> {
        let mut path = Vec::new();
        loop {
            match self.next()? {
                Tok::Ident(s) => path.push(s),
                t => return Err(format!("expected an attribute ({ATTRS}), found {}", t.show())),
            }
            // `.startsWith(` and `.contains(` end the attribute.
            if self.peek() == Some(&Tok::Dot)
                && !matches!(self.tokens.get(self.at + 1), Some(Tok::Ident(m)) if m == "startsWith" || m == "contains")
            {
                self.at += 1;
            } else {
                break;
            }
        }
        let name = path.join(".");
        Ok(match name.as_str() {
            "response.code" => Attr::Code,
            "response.grpc_status" => Attr::GrpcStatus,
            "response.duration" => Attr::Duration,
            "response.flags" => Attr::Flags,
            "request.method" => Attr::Method,
            "request.path" | "request.url_path" => Attr::Path,
            "request.host" => Attr::Host,
            _ => return Err(format!("unknown attribute {name:?}; the filter understands {ATTRS}")),
        })
    }

    fn comparison(&mut self) -> Result<LogFilter, String> {
        let attr = self.attribute()?;
        if self.peek() == Some(&Tok::Dot) {
            self.at += 1;
            let method = match self.next()? {
                Tok::Ident(m) => m,
                t => return Err(format!("expected startsWith or contains, found {}", t.show())),
            };
            let arg = match (self.next()?, self.next()?, self.next()?) {
                (Tok::Open, Tok::Str(s), Tok::Close) => s,
                _ => return Err(format!("{method} takes one string, e.g. {method}(\"/api\")")),
            };
            if attr.numeric() {
                return Err(format!("{method} applies to text attributes, not numbers"));
            }
            return Ok(if method == "startsWith" {
                LogFilter::StartsWith(attr, arg)
            } else {
                LogFilter::Contains(attr, arg)
            });
        }
        let op = match self.next()? {
            Tok::Op("==") => Op::Eq,
            Tok::Op("!=") => Op::Ne,
            Tok::Op("<") => Op::Lt,
            Tok::Op("<=") => Op::Le,
            Tok::Op(">") => Op::Gt,
            Tok::Op(">=") => Op::Ge,
            t => {
                return Err(format!(
                    "expected a comparison (==, !=, <, <=, >, >=) after the attribute, found {}",
                    t.show()
                ));
            }
        };
        let lit = match self.next()? {
            Tok::Int(n) => Lit::Int(n),
            Tok::Str(s) => Lit::Str(s),
            Tok::Ident(f) if f == "duration" && attr == Attr::Duration => {
                match (self.next()?, self.next()?, self.next()?) {
                    (Tok::Open, Tok::Str(s), Tok::Close) => Lit::Int(
                        crate::check::parse_duration(&s)
                            .map_err(|e| format!("duration({s:?}): {e}"))?
                            .as_millis()
                            .min(i64::MAX as u128) as i64,
                    ),
                    _ => return Err("duration takes one string, e.g. duration(\"1.5s\")".into()),
                }
            }
            t => return Err(format!("expected a number or a string, found {}", t.show())),
        };
        match (&lit, attr.numeric()) {
            (Lit::Int(_), true) | (Lit::Str(_), false) => Ok(LogFilter::Compare(attr, op, lit)),
            (Lit::Int(_), false) => {
                Err("a text attribute compares with a string, e.g. request.method == \"POST\"".into())
            }
            (Lit::Str(_), true) => Err("a number attribute compares with a number, e.g. response.code >= 500".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(code: u16, ms: u64, path: &str) -> LogFacts<'_> {
        LogFacts { code, grpc_status: None, duration_ms: ms, method: "GET", path, host: "api.example.com", flags: "" }
    }

    #[test]
    fn filters_read_istio_style_cel() {
        let f = LogFilter::parse("response.code >= 400").unwrap();
        assert!(f.matches(&facts(503, 1, "/")));
        assert!(!f.matches(&facts(200, 1, "/")));
        let f = LogFilter::parse("response.code >= 500 || response.duration > duration(\"1s\")").unwrap();
        assert!(f.matches(&facts(200, 1500, "/")));
        assert!(!f.matches(&facts(200, 900, "/")));
        let f = LogFilter::parse("!(request.path.startsWith('/health')) && request.method == \"GET\"").unwrap();
        assert!(f.matches(&facts(200, 1, "/v1/users")));
        assert!(!f.matches(&facts(200, 1, "/healthz")));
        let f = LogFilter::parse("response.grpc_status != 0").unwrap();
        assert!(!f.matches(&facts(200, 1, "/")), "no gRPC status compares false");
    }

    #[test]
    fn bad_filters_say_what_is_understood() {
        let e = LogFilter::parse("response.size > 10").unwrap_err();
        assert!(e.contains("unknown attribute \"response.size\"") && e.contains("response.code"), "{e}");
        let e = LogFilter::parse("response.code >= \"500\"").unwrap_err();
        assert!(e.contains("compares with a number"), "{e}");
        let e = LogFilter::parse("response.code >= 500 &&").unwrap_err();
        assert!(e.contains("ends too soon"), "{e}");
        let e = LogFilter::parse("response.code = 500").unwrap_err();
        assert!(e.contains("unexpected character"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let spec = TelemetrySpec {
            tracing: vec![Tracing {
                random_sampling_percentage: Some(150.0),
                custom_tags: [(
                    "user".to_string(),
                    CustomTag {
                        header: Some(FromSource { name: "x user".into(), default_value: None }),
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            }],
            access_logging: vec![AccessLogging {
                filter: Some(AccessLogFilter { expression: "status >= 500".into() }),
                ..Default::default()
            }],
            target_refs: vec![TelemetryTargetRef { kind: "Service".into(), name: "x".into(), ..Default::default() }],
            ..Default::default()
        };
        let mut errs = Errors::default();
        spec.validate(&mut errs);
        let paths: Vec<&str> = errs.items.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.targetRefs[0].kind",
                "spec.tracing[0].randomSamplingPercentage",
                "spec.tracing[0].customTags.user.header.name",
                "spec.accessLogging[0].filter.expression"
            ]
        );
    }
}
