//! `GrpcTranscoder` (`meshgate.io/v1`): REST+JSON to gRPC at the gateway, as
//! Envoy's grpc_json_transcoder filter does. The user uploads a protobuf
//! `FileDescriptorSet` (`protoc --include_imports --descriptor_set_out`);
//! each method's `google.api.http` annotation (and its
//! `additional_bindings`) says which HTTP method and path template reach
//! it; every method is also reachable as `POST /package.Service/Method`
//! with a JSON body. This module parses and checks all of that (no I/O, so
//! the console checks the same way); the proxy does the JSON work.

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use serde::{Deserialize, Serialize};

use crate::check::Errors;
use crate::policy::TargetRef;

/// `GrpcTranscoder`: requests to the routes it targets that match one of
/// the services' HTTP bindings become gRPC calls upstream (the route's
/// destination must speak gRPC: a `grpc`/`http2` port, or `h2UpgradePolicy:
/// UPGRADE`); others pass as they are, so gRPC clients keep working.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcTranscoderSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    /// The `FileDescriptorSet`, base64 (as Envoy's `proto_descriptor_bin`).
    #[serde(default)]
    pub proto_descriptor_bin: String,
    /// Fully qualified services to expose (`users.v1.UserService`).
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub print_options: Option<PrintOptions>,
    /// Query parameters that name no field are ignored instead of refused with 400 [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_unknown_query_parameters: Option<bool>,
}

/// How responses are written as JSON (Envoy's `print_options`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrintOptions {
    /// Fields at their default value are written too [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_print_primitive_fields: Option<bool>,
    /// Enums as numbers, not names [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_print_enums_as_ints: Option<bool>,
    /// Field names as in the .proto file, not lowerCamelCase [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_proto_field_names: Option<bool>,
}

impl GrpcTranscoderSpec {
    pub fn validate(&self, errs: &mut Errors) {
        crate::policy::validate_targets(&self.target_refs, errs);
        if let Err((path, reason)) = Transcoding::compile(self) {
            errs.push(path, reason);
        }
    }
}

/// The checked form: the descriptors and every HTTP binding of the services.
#[derive(Debug, Clone)]
pub struct Transcoding {
    pub pool: DescriptorPool,
    pub bindings: Vec<Binding>,
}

/// One way in to a method: an HTTP method and a path template.
#[derive(Debug, Clone)]
pub struct Binding {
    /// `GET`, `POST`, ... (or a `custom` kind).
    pub http_method: String,
    pub template: PathTemplate,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`
    pub grpc_path: String,
    /// Where the JSON body goes: `None` (no body), `Some("*")` (the whole
    /// request message) or `Some(field)`.
    pub body: Option<String>,
    /// The response field sent as the body (`None`: the whole message).
    pub response_body: Option<String>,
}

impl Transcoding {
    /// Decodes the descriptors and collects the bindings; the error names
    /// the field at fault.
    pub fn compile(spec: &GrpcTranscoderSpec) -> Result<Transcoding, (String, String)> {
        let p = |f: &str| format!("spec.{f}");
        if spec.proto_descriptor_bin.is_empty() {
            return Err((
                p("protoDescriptorBin"),
                "missing: a FileDescriptorSet, base64 (protoc --include_imports --descriptor_set_out=FILE ...; base64 -w0 FILE)"
                    .into(),
            ));
        }
        let text: String = spec.proto_descriptor_bin.split_ascii_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| (p("protoDescriptorBin"), format!("not base64: {e}")))?;
        let pool = DescriptorPool::decode(bytes.as_slice())
            .map_err(|e| (p("protoDescriptorBin"), format!("not a usable FileDescriptorSet: {e}")))?;
        if spec.services.is_empty() {
            return Err((p("services"), "missing: name the services to expose (package.Service)".into()));
        }
        let mut bindings = Vec::new();
        for (i, name) in spec.services.iter().enumerate() {
            let Some(service) = pool.get_service_by_name(name) else {
                let known: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
                return Err((
                    p(&format!("services[{i}]")),
                    format!("{name:?} is not in the descriptor set (it has: {})", known.join(", ")),
                ));
            };
            for method in service.methods() {
                let at = |what: &str| format!("{} ({}{what})", p(&format!("services[{i}]")), method.full_name());
                if method.is_client_streaming() {
                    // A JSON body is one message: client streaming has no REST form.
                    continue;
                }
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                for rule in http_rules(&method) {
                    let (verb, path) =
                        rule.pattern().ok_or_else(|| (at(""), "google.api.http has no pattern".into()))?;
                    let template =
                        PathTemplate::parse(&path).map_err(|e| (at(""), format!("path template {path:?}: {e}")))?;
                    let input = method.input();
                    for var in &template.variables {
                        check_field_path(&input, &var.field)
                            .map_err(|e| (at(""), format!("path template {path:?}: {e}")))?;
                    }
                    let body = (!rule.body.is_empty()).then(|| rule.body.clone());
                    if let Some(b) = body.as_deref().filter(|b| *b != "*") {
                        check_field_path(&input, b).map_err(|e| (at(""), format!("body {b:?}: {e}")))?;
                    }
                    let response_body = (!rule.response_body.is_empty()).then(|| rule.response_body.clone());
                    if let Some(b) = &response_body
                        && method.output().get_field_by_name(b).is_none()
                    {
                        return Err((
                            at(""),
                            format!("response_body {b:?}: no such field in {}", method.output().full_name()),
                        ));
                    }
                    bindings.push(Binding {
                        http_method: verb,
                        template,
                        method: method.clone(),
                        grpc_path: grpc_path.clone(),
                        body,
                        response_body,
                    });
                }
                // Every method, annotated or not, as Envoy exposes it.
                bindings.push(Binding {
                    http_method: "POST".into(),
                    template: PathTemplate::literal(&grpc_path),
                    method: method.clone(),
                    grpc_path,
                    body: Some("*".into()),
                    response_body: None,
                });
            }
        }
        Ok(Transcoding { pool, bindings })
    }
}

/// Checks that `path` (`a.b.c`) names fields of `message`, the last of them
/// not a message unless a well-known type written as a string in JSON.
fn check_field_path(message: &prost_reflect::MessageDescriptor, path: &str) -> Result<(), String> {
    let mut current = message.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, name) in parts.iter().enumerate() {
        let field =
            current.get_field_by_name(name).ok_or_else(|| format!("no field {name:?} in {}", current.full_name()))?;
        if i + 1 < parts.len() {
            match field.kind() {
                prost_reflect::Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                _ => return Err(format!("{name:?} in {} is not a message field", current.full_name())),
            }
        }
    }
    Ok(())
}

/// `google.api.HttpRule`, decoded from a method's options by its field
/// numbers, so that a descriptor set without `google/api/http.proto` still
/// has its annotations read.
#[derive(Clone, PartialEq, prost::Message)]
struct HttpRule {
    #[prost(string, optional, tag = "2")]
    get: Option<String>,
    #[prost(string, optional, tag = "3")]
    put: Option<String>,
    #[prost(string, optional, tag = "4")]
    post: Option<String>,
    #[prost(string, optional, tag = "5")]
    delete: Option<String>,
    #[prost(string, optional, tag = "6")]
    patch: Option<String>,
    #[prost(string, tag = "7")]
    body: String,
    #[prost(message, optional, tag = "8")]
    custom: Option<CustomPattern>,
    #[prost(message, repeated, tag = "11")]
    additional_bindings: Vec<HttpRule>,
    #[prost(string, tag = "12")]
    response_body: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CustomPattern {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    path: String,
}

/// `MethodOptions` with only the `google.api.http` extension.
#[derive(Clone, PartialEq, prost::Message)]
struct HttpOption {
    #[prost(message, optional, tag = "72295728")]
    http: Option<HttpRule>,
}

impl HttpRule {
    fn pattern(&self) -> Option<(String, String)> {
        let pairs = [("GET", &self.get), ("PUT", &self.put), ("POST", &self.post), ("DELETE", &self.delete)];
        for (verb, path) in pairs.into_iter().chain([("PATCH", &self.patch)]) {
            if let Some(path) = path {
                return Some((verb.to_string(), path.clone()));
            }
        }
        self.custom.as_ref().map(|c| (c.kind.to_ascii_uppercase(), c.path.clone()))
    }
}

/// The method's HTTP rules: its annotation and the annotation's
/// additional bindings (which take the top rule's place, not nest further).
fn http_rules(method: &MethodDescriptor) -> Vec<HttpRule> {
    let raw = method.options().encode_to_vec();
    let Some(mut top) = HttpOption::decode(raw.as_slice()).ok().and_then(|o| o.http) else {
        return Vec::new();
    };
    let more = std::mem::take(&mut top.additional_bindings);
    std::iter::once(top).chain(more).collect()
}

/// A `google.api.http` path template: `/v1/{name=shelves/*}/books/{id}:get`.
#[derive(Debug, Clone, PartialEq)]
pub struct PathTemplate {
    pub segments: Vec<Segment>,
    pub variables: Vec<Variable>,
    pub verb: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Literal(String),
    /// `*`: one segment.
    One,
    /// `**`: the rest of the path (last only).
    Rest,
}

/// A field bound to `segments[start..end]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    pub field: String,
    pub start: usize,
    pub end: usize,
}

impl PathTemplate {
    fn literal(path: &str) -> PathTemplate {
        PathTemplate {
            segments: path.trim_start_matches('/').split('/').map(|s| Segment::Literal(s.to_string())).collect(),
            variables: Vec::new(),
            verb: None,
        }
    }

    pub fn parse(template: &str) -> Result<PathTemplate, String> {
        let rest = template.strip_prefix('/').ok_or("must start with /")?;
        // The verb is after the last ':' that is outside braces.
        let mut depth = 0;
        let mut verb_at = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => verb_at = Some(i),
                _ => {}
            }
        }
        let (body, verb) = match verb_at {
            Some(i) => (&rest[..i], Some(rest[i + 1..].to_string())),
            None => (rest, None),
        };
        if verb.as_deref() == Some("") {
            return Err("empty verb after ':'".into());
        }
        let mut t = PathTemplate { segments: Vec::new(), variables: Vec::new(), verb };
        let mut chars = body;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or("unclosed '{'")?;
                let (var, pattern) = match inner[..close].split_once('=') {
                    Some((v, p)) => (v, p),
                    None => (&inner[..close], "*"),
                };
                if var.is_empty() || !var.split('.').all(is_ident) {
                    return Err(format!("{var:?} is not a field path"));
                }
                if pattern.contains(['{', '}']) {
                    return Err("variables cannot nest".into());
                }
                let start = t.segments.len();
                for seg in pattern.split('/') {
                    t.segments.push(segment(seg)?);
                }
                t.variables.push(Variable { field: var.to_string(), start, end: t.segments.len() });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                if chars[..end].contains(['{', '}']) {
                    return Err(format!("{:?}: a variable must be a whole segment", &chars[..end]));
                }
                t.segments.push(segment(&chars[..end])?);
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some(rest) if !rest.is_empty() => chars = rest,
                Some(_) => return Err("ends with '/'".into()),
                None if chars.is_empty() => {}
                None => return Err("a variable must be a whole segment".into()),
            }
        }
        if let Some(i) = t.segments.iter().position(|s| *s == Segment::Rest)
            && i + 1 != t.segments.len()
        {
            return Err("'**' must be the last segment".into());
        }
        Ok(t)
    }

    /// Matches a request path (without query); the bound variables, their
    /// values percent-decoded (`%2F` kept in multi-segment ones).
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut path = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            path = path.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = if path.is_empty() { Vec::new() } else { path.split('/').collect() };
        let rest = self.segments.last() == Some(&Segment::Rest);
        let fixed = self.segments.len() - usize::from(rest);
        if parts.len() < fixed || (!rest && parts.len() != fixed) {
            return None;
        }
        for (seg, part) in self.segments[..fixed].iter().zip(&parts) {
            match seg {
                Segment::Literal(l) if l != part => return None,
                Segment::One if part.is_empty() => return None,
                _ => {}
            }
        }
        let mut out = Vec::with_capacity(self.variables.len());
        for v in &self.variables {
            let end = if v.end == self.segments.len() && rest { parts.len() } else { v.end };
            let multi = end - v.start > 1 || (rest && v.end == self.segments.len());
            let raw = parts[v.start..end].join("/");
            out.push((v.field.clone(), percent_decode(&raw, multi)?));
        }
        Some(out)
    }
}

fn segment(s: &str) -> Result<Segment, String> {
    match s {
        "*" => Ok(Segment::One),
        "**" => Ok(Segment::Rest),
        "" => Err("empty segment".into()),
        lit => Ok(Segment::Literal(lit.to_string())),
    }
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// `%XX` decoded; `keep_slash` leaves `%2F` as it is (a multi-segment
/// variable's own slashes are real ones). `None` if not UTF-8.
pub fn percent_decode(s: &str, keep_slash: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
            && !(keep_slash && v == b'/')
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(t: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(t).unwrap().matches(path)
    }

    #[test]
    fn templates_bind_fields_from_the_path() {
        let v = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect());
        assert_eq!(bind("/v1/users/{id}", "/v1/users/42"), v(&[("id", "42")]));
        assert_eq!(bind("/v1/users/{id}", "/v1/users/42/x"), None);
        assert_eq!(bind("/v1/users/{id}", "/v1/users/"), None);
        assert_eq!(bind("/v1/users", "/v1/users"), v(&[]));
        assert_eq!(
            bind("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/a%20b"),
            v(&[("name", "shelves/1/books/a b")])
        );
        assert_eq!(bind("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/notes/2"), None);
        assert_eq!(bind("/files/{path=**}", "/files/a/b%2Fc/d"), v(&[("path", "a/b%2Fc/d")]));
        assert_eq!(bind("/v1/{user.id}/x:activate", "/v1/7/x:activate"), v(&[("user.id", "7")]));
        assert_eq!(bind("/v1/{user.id}/x:activate", "/v1/7/x"), None);
        assert_eq!(bind("/v1/{id}:undelete", "/v1/a%2Fb:undelete"), v(&[("id", "a/b")]));
    }

    fn spec(services: &[&str]) -> GrpcTranscoderSpec {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/proto");
        // Encoded by protox itself: prost_types' FileDescriptorSet would drop the options' extensions.
        let fds = protox::Compiler::new([root])
            .unwrap()
            .include_imports(true)
            .open_file("users/v1/users.proto")
            .unwrap()
            .encode_file_descriptor_set();
        GrpcTranscoderSpec {
            target_refs: vec![TargetRef { kind: "VirtualService".into(), name: "users".into(), ..Default::default() }],
            proto_descriptor_bin: base64::engine::general_purpose::STANDARD.encode(fds),
            services: services.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn annotations_and_additional_bindings_become_bindings() {
        let t = Transcoding::compile(&spec(&["users.v1.UserService"])).unwrap();
        let listed: Vec<(String, String, Option<String>, Option<String>)> = t
            .bindings
            .iter()
            .map(|b| (b.http_method.clone(), b.grpc_path.clone(), b.body.clone(), b.response_body.clone()))
            .collect();
        let get = "/users.v1.UserService/GetUser".to_string();
        assert_eq!(listed.iter().filter(|b| b.1 == get).count(), 3, "{listed:?}");
        let list = t
            .bindings
            .iter()
            .find(|b| b.http_method == "GET" && b.template.matches("/v1/teams/core/users").is_some())
            .unwrap();
        assert_eq!((list.method.name(), list.response_body.as_deref()), ("ListUsers", Some("users")));
        let create = t.bindings.iter().find(|b| b.method.name() == "CreateUser").unwrap();
        assert_eq!((create.http_method.as_str(), create.body.as_deref()), ("POST", Some("user")));
        let people = t.bindings.iter().find(|b| b.template.matches("/v1/people/9").is_some()).unwrap();
        assert_eq!(people.grpc_path, get);
        // Every method also as POST /package.Service/Method with a JSON body.
        assert_eq!(t.bindings.iter().filter(|b| b.body.as_deref() == Some("*")).count(), 4);
        assert!(t.bindings.iter().any(|b| b.template.matches("/users.v1.UserService/WatchUsers").is_some()));
    }

    #[test]
    fn a_bad_descriptor_or_service_is_named() {
        let err = |s: GrpcTranscoderSpec| {
            let mut errs = Errors::default();
            s.validate(&mut errs);
            errs.items.into_iter().map(|e| format!("{}: {}", e.path, e.reason)).collect::<Vec<_>>()
        };
        let e = err(spec(&["users.v1.Nope"]));
        assert!(e[0].starts_with("spec.services[0]: \"users.v1.Nope\" is not in the descriptor set"), "{e:?}");
        assert!(e[0].contains("users.v1.UserService"), "{e:?}");
        let e = err(GrpcTranscoderSpec { proto_descriptor_bin: "%%%".into(), ..spec(&["users.v1.UserService"]) });
        assert!(e[0].starts_with("spec.protoDescriptorBin: not base64"), "{e:?}");
        let garbage = base64::engine::general_purpose::STANDARD.encode(b"\x0a\x05hello");
        let e = err(GrpcTranscoderSpec { proto_descriptor_bin: garbage, ..spec(&["users.v1.UserService"]) });
        assert!(e[0].starts_with("spec.protoDescriptorBin: not a usable FileDescriptorSet"), "{e:?}");
        let e = err(GrpcTranscoderSpec { services: vec![], ..spec(&[]) });
        assert!(e[0].starts_with("spec.services: missing"), "{e:?}");
        assert!(err(spec(&["users.v1.UserService"])).is_empty());
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (t, why) in [
            ("v1/users", "must start with /"),
            ("/v1/{id", "unclosed '{'"),
            ("/v1/**/x", "'**' must be the last segment"),
            ("/v1/users/", "ends with '/'"),
            ("/v1/{9x}", "is not a field path"),
            ("/v1/a{id}", "whole segment"),
            ("/v1/x:", "empty verb"),
        ] {
            let e = PathTemplate::parse(t).unwrap_err();
            assert!(e.contains(why), "{t}: {e}");
        }
    }
}
