//! gRPC-JSON transcoding at the gateway (`GrpcTranscoder`), as Envoy's
//! grpc_json_transcoder: a REST request that matches one of a method's
//! HTTP bindings becomes a gRPC call (path variables, query parameters and
//! the JSON body fill the request message); the answer comes back as JSON,
//! a server stream as one JSON object per line, and a gRPC error as the
//! HTTP status gRPC's HTTP mapping gives it, with `{"code", "message"}`.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame};
use meshgate_model::transcode::{Binding, GrpcTranscoderSpec, Transcoding};
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};

use super::ProxyBody;
use super::body::BoxError;

/// The largest JSON request body read, and the largest unary answer.
const MAX_BODY: usize = 4 << 20;
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Transcoder {
    /// `namespace/name` of the GrpcTranscoder, for logs and the config dump.
    pub name: String,
    bindings: Vec<Binding>,
    print: SerializeOptions,
    /// `response_body` needs the field written even at its default value.
    print_all: SerializeOptions,
    preserve_names: bool,
    ignore_unknown_query: bool,
}

/// A request that matched a binding, with the path's variables.
pub struct Call<'t> {
    binding: &'t Binding,
    vars: Vec<(String, String)>,
}

impl Transcoder {
    /// `None` if the spec does not compile (validation refuses such specs
    /// on apply, so this is a database edited by hand).
    pub fn new(name: String, spec: &GrpcTranscoderSpec) -> Option<Transcoder> {
        let Transcoding { bindings, .. } = Transcoding::compile(spec)
            .map_err(|(path, e)| tracing::warn!(transcoder = %name, %path, error = %e, "GrpcTranscoder skipped"))
            .ok()?;
        let print = spec.print_options.clone().unwrap_or_default();
        let preserve_names = print.preserve_proto_field_names.unwrap_or(false);
        let options = |all: bool| {
            SerializeOptions::new()
                .skip_default_fields(!all)
                .use_proto_field_name(preserve_names)
                .use_enum_numbers(print.always_print_enums_as_ints.unwrap_or(false))
        };
        Some(Transcoder {
            name,
            bindings,
            print: options(print.always_print_primitive_fields.unwrap_or(false)),
            print_all: options(true),
            preserve_names,
            ignore_unknown_query: spec.ignore_unknown_query_parameters.unwrap_or(false),
        })
    }

    /// The binding a request matches; gRPC requests themselves pass as they are.
    pub fn find<B>(&self, req: &Request<B>) -> Option<Call<'_>> {
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if ct.starts_with("application/grpc") {
            return None;
        }
        let method = req.method().as_str();
        let path = req.uri().path();
        self.bindings.iter().find_map(|b| {
            if b.http_method != method {
                return None;
            }
            b.template.matches(path).map(|vars| Call { binding: b, vars })
        })
    }

    /// How many bindings (for the config dump).
    pub fn bindings(&self) -> impl Iterator<Item = (&str, String, &str)> {
        self.bindings.iter().map(|b| (b.http_method.as_str(), template_text(b), b.grpc_path.as_str()))
    }

    /// The REST request as a gRPC call: `POST /package.Service/Method`,
    /// one length-prefixed message.
    pub async fn request(
        &self,
        call: &Call<'_>,
        req: Request<ProxyBody>,
    ) -> Result<Request<ProxyBody>, Response<ProxyBody>> {
        let b = call.binding;
        let input = b.method.input();
        let (mut parts, body) = req.into_parts();
        let mut json = Value::Object(Map::new());
        if let Some(target) = &b.body {
            let limited = http_body_util::Limited::new(body, MAX_BODY);
            let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
                Ok(Ok(c)) => c.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(error(StatusCode::PAYLOAD_TOO_LARGE, 3, "request body too large"));
                }
                Ok(Err(_)) => return Err(error(StatusCode::BAD_REQUEST, 3, "request body could not be read")),
                Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, 4, "request body not received in time")),
            };
            let parsed: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Object(Map::new())
            } else {
                serde_json::from_slice(&bytes)
                    .map_err(|e| error(StatusCode::BAD_REQUEST, 3, &format!("request body is not JSON: {e}")))?
            };
            if target == "*" {
                if !parsed.is_object() {
                    return Err(error(StatusCode::BAD_REQUEST, 3, "request body must be a JSON object"));
                }
                json = parsed;
            } else {
                json.as_object_mut().map(|o| o.insert(target.clone(), parsed));
            }
        }
        for (field, value) in &call.vars {
            set(&mut json, &input, field, value, false)
                .map_err(|e| error(StatusCode::BAD_REQUEST, 3, &format!("path variable {field}: {e}")))?;
        }
        if b.body.as_deref() != Some("*")
            && let Some(query) = parts.uri.query()
        {
            for (key, value) in form_pairs(query) {
                if call.vars.iter().any(|(f, _)| *f == key) || b.body.as_deref() == Some(key.as_str()) {
                    continue;
                }
                match set(&mut json, &input, &key, &value, true) {
                    Ok(()) => {}
                    Err(SetError::NoField(_)) if self.ignore_unknown_query => {}
                    Err(e) => {
                        return Err(error(StatusCode::BAD_REQUEST, 3, &format!("query parameter {key:?}: {e}")));
                    }
                }
            }
        }
        let message =
            DynamicMessage::deserialize_with_options(input, json, &DeserializeOptions::new()).map_err(|e| {
                error(StatusCode::BAD_REQUEST, 3, &format!("cannot make {}: {e}", b.method.input().full_name()))
            })?;
        let encoded = message.encode_to_vec();
        let mut framed = BytesMut::with_capacity(5 + encoded.len());
        framed.put_u8(0);
        framed.put_u32(encoded.len() as u32);
        framed.put_slice(&encoded);

        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query =
            Some(b.grpc_path.parse().map_err(|_| error(StatusCode::BAD_REQUEST, 3, "bad method path"))?);
        parts.uri = http::Uri::from_parts(uri).map_err(|_| error(StatusCode::BAD_REQUEST, 3, "bad method path"))?;
        parts.method = http::Method::POST;
        let h = &mut parts.headers;
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(framed.len()));
        h.remove(header::ACCEPT_ENCODING);
        Ok(Request::from_parts(parts, ProxyBody::full(framed.freeze())))
    }

    /// The gRPC answer as JSON. Answers made here (no route, no upstream)
    /// and non-gRPC answers pass as they are.
    pub async fn response(&self, call: &Call<'_>, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
        super::h1::materialize(&mut resp);
        let local = resp.headers().contains_key(&super::handler::RESPONSE_FLAGS);
        let grpc = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        if local || resp.status() != StatusCode::OK || !grpc {
            return resp;
        }
        // A trailers-only answer: the status is in the headers.
        if let Some(code) = super::grpc_status(resp.headers()).filter(|c| *c != 0) {
            return error(http_status(code), code, &message_of(resp.headers()));
        }
        let (mut parts, body) = resp.into_parts();
        strip_grpc(&mut parts.headers);
        let output = call.binding.method.output();
        if call.binding.method.is_server_streaming() {
            parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
            let lines = JsonLines {
                inner: body,
                buf: BytesMut::new(),
                output,
                print: self.print.clone(),
                trailers: HeaderMap::new(),
                done: false,
            };
            return Response::from_parts(parts, ProxyBody::Json(Box::new(lines)));
        }
        let collected = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "transcoder: the upstream's answer could not be read");
                return error(StatusCode::BAD_GATEWAY, 14, "the upstream's answer could not be read");
            }
        };
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let code = super::grpc_status(&trailers).unwrap_or(2);
        if code != 0 {
            return error(http_status(code), code, &message_of(&trailers));
        }
        let mut data = BytesMut::from(collected.to_bytes());
        let message = match next_message(&mut data, &output) {
            Ok(Some(m)) => m,
            Ok(None) => return error(StatusCode::BAD_GATEWAY, 13, "the upstream answered OK without a message"),
            Err(e) => return error(StatusCode::BAD_GATEWAY, 13, &e),
        };
        let body = match &call.binding.response_body {
            None => to_json(&message, &self.print),
            Some(field) => {
                let key = match output.get_field_by_name(field) {
                    Some(f) if !self.preserve_names => f.json_name().to_string(),
                    _ => field.clone(),
                };
                let whole = message.serialize_with_options(serde_json::value::Serializer, &self.print_all);
                match whole {
                    Ok(Value::Object(mut o)) => o.remove(&key).unwrap_or(Value::Null).to_string().into_bytes(),
                    _ => Vec::new(),
                }
            }
        };
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Response::from_parts(parts, ProxyBody::full(Bytes::from(body)))
    }
}

fn template_text(b: &Binding) -> String {
    use meshgate_model::transcode::Segment;
    let mut segs: Vec<String> = b
        .template
        .segments
        .iter()
        .map(|s| match s {
            Segment::Literal(l) => l.clone(),
            Segment::One => "*".into(),
            Segment::Rest => "**".into(),
        })
        .collect();
    for v in b.template.variables.iter().rev() {
        let inner = segs[v.start..v.end].join("/");
        let text = if inner == "*" { format!("{{{}}}", v.field) } else { format!("{{{}={inner}}}", v.field) };
        segs.splice(v.start..v.end, [text]);
    }
    let verb = b.template.verb.as_ref().map(|v| format!(":{v}")).unwrap_or_default();
    format!("/{}{verb}", segs.join("/"))
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                let s = s.replace('+', " ");
                meshgate_model::transcode::percent_decode(&s, false).unwrap_or(s)
            };
            (dec(k), dec(v))
        })
        .collect()
}

#[derive(Debug)]
enum SetError {
    NoField(String),
    Bad(String),
}

impl std::fmt::Display for SetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetError::NoField(e) | SetError::Bad(e) => f.write_str(e),
        }
    }
}

/// Sets `path` (`a.b.c`, proto field names) in the request's JSON to
/// `text`, typed by the field; `append` adds to a repeated field.
fn set(json: &mut Value, message: &MessageDescriptor, path: &str, text: &str, append: bool) -> Result<(), SetError> {
    let names: Vec<&str> = path.split('.').collect();
    let mut desc = message.clone();
    let mut at = json;
    for (i, name) in names.iter().enumerate() {
        let field = desc
            .get_field_by_name(name)
            .or_else(|| desc.fields().find(|f| f.json_name() == *name))
            .ok_or_else(|| SetError::NoField(format!("no field {name:?} in {}", desc.full_name())))?;
        let Value::Object(obj) = at else {
            return Err(SetError::Bad(format!("{name:?} is set twice")));
        };
        if i + 1 == names.len() {
            if field.is_map() {
                return Err(SetError::Bad(format!("{name:?} is a map")));
            }
            let value = typed(&field, text)?;
            if field.is_list() {
                let list = obj.entry(field.name()).or_insert_with(|| Value::Array(Vec::new()));
                match list {
                    Value::Array(items) if append => items.push(value),
                    _ => *list = Value::Array(vec![value]),
                }
            } else {
                obj.insert(field.name().to_string(), value);
            }
            return Ok(());
        }
        match field.kind() {
            Kind::Message(m) if !field.is_list() && !field.is_map() => {
                desc = m;
                at = obj.entry(field.name()).or_insert_with(|| Value::Object(Map::new()));
            }
            _ => return Err(SetError::Bad(format!("{name:?} is not a message field"))),
        }
    }
    Ok(())
}

/// A path or query value as the JSON the field takes: numbers stay text
/// (proto3 JSON reads quoted numbers, and 64-bit ones must be), booleans
/// and enum numbers become JSON values.
fn typed(field: &FieldDescriptor, text: &str) -> Result<Value, SetError> {
    Ok(match field.kind() {
        Kind::Bool => match text {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(SetError::Bad(format!("{text:?} is not true or false"))),
        },
        Kind::Enum(_) => match text.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(text.to_string()),
        },
        Kind::Message(m) if m.full_name() == "google.protobuf.BoolValue" => typed_bool(text)?,
        _ => Value::String(text.to_string()),
    })
}

fn typed_bool(text: &str) -> Result<Value, SetError> {
    match text {
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        _ => Err(SetError::Bad(format!("{text:?} is not true or false"))),
    }
}

/// The next whole message in `data`, taken off it.
fn next_message(data: &mut BytesMut, output: &MessageDescriptor) -> Result<Option<DynamicMessage>, String> {
    if data.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if data.len() < 5 + len {
        return Ok(None);
    }
    if data[0] & 1 != 0 {
        return Err("the upstream sent a compressed message (none was offered)".into());
    }
    data.advance(5);
    let raw = data.split_to(len).freeze();
    DynamicMessage::decode(output.clone(), raw)
        .map(Some)
        .map_err(|e| format!("the upstream's message is not a {}: {e}", output.full_name()))
}

fn to_json(message: &DynamicMessage, print: &SerializeOptions) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    if let Err(e) = message.serialize_with_options(&mut ser, print) {
        tracing::debug!(error = %e, "transcoder: message not written as JSON");
    }
    out
}

fn message_of(h: &HeaderMap) -> String {
    let raw = h.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
    meshgate_model::transcode::percent_decode(raw, false).unwrap_or_else(|| raw.to_string())
}

fn strip_grpc(h: &mut HeaderMap) {
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-encoding", "grpc-accept-encoding"] {
        h.remove(name);
    }
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::TRAILER);
}

/// gRPC status code to HTTP status, as gRPC's HTTP mapping (and
/// grpc-gateway, and Envoy's transcoder) give it.
pub fn http_status(code: u32) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error as JSON: google.rpc.Status's `code` and `message`.
fn error(status: StatusCode, code: u32, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A server stream's messages as JSON lines; a failing status after them
/// as a last line `{"error": {"code", "message"}}`.
pub struct JsonLines {
    inner: ProxyBody,
    buf: BytesMut,
    output: MessageDescriptor,
    print: SerializeOptions,
    trailers: HeaderMap,
    done: bool,
}

impl JsonLines {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.buf.extend_from_slice(&data);
                        let mut out = Vec::new();
                        loop {
                            match next_message(&mut self.buf, &self.output) {
                                Ok(Some(m)) => {
                                    out.extend(to_json(&m, &self.print));
                                    out.push(b'\n');
                                }
                                Ok(None) => break,
                                Err(e) => return Poll::Ready(Some(Err(e.into()))),
                            }
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers.extend(t);
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    self.done = true;
                    let code = super::grpc_status(&self.trailers).unwrap_or(2);
                    if code == 0 {
                        return Poll::Ready(None);
                    }
                    let line = serde_json::json!({ "error": { "code": code, "message": message_of(&self.trailers) } });
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!("{line}\n"))))));
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_http_statuses() {
        let pairs =
            [(0, 200), (3, 400), (4, 504), (5, 404), (6, 409), (7, 403), (8, 429), (12, 501), (14, 503), (16, 401)];
        for (code, status) in pairs {
            assert_eq!(http_status(code).as_u16(), status, "code {code}");
        }
        assert_eq!(http_status(13).as_u16(), 500);
        assert_eq!(http_status(99).as_u16(), 500);
    }

    #[test]
    fn query_pairs_are_decoded() {
        assert_eq!(
            form_pairs("a=1&b=x+y&c=%2Fz&&d"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "/z".into()),
                ("d".into(), "".into())
            ]
        );
    }
}
