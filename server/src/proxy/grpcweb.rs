//! gRPC-Web, what browsers speak, to gRPC, as Envoy's grpc_web filter does
//! (on by default, as in Istio): a request with `content-type:
//! application/grpc-web[-text][+proto]` goes upstream as gRPC over HTTP/2;
//! the answer's messages pass through and its trailers (`grpc-status`,
//! `grpc-message`) come last as a message flagged 0x80, which HTTP/1.1
//! browsers can read. The `-text` form is base64 both ways.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame};

use super::ProxyBody;
use super::body::BoxError;

/// The largest `-text` request body decoded (base64 needs it whole).
const MAX_TEXT_BODY: usize = 4 << 20;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `Some(text)` for a gRPC-Web request (`text`: the base64 form).
pub fn kind(headers: &HeaderMap) -> Option<bool> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let rest = ct.strip_prefix("application/grpc-web")?;
    Some(rest.starts_with("-text"))
}

/// The request as gRPC: its content type, `te: trailers`, and for `-text`
/// the body decoded.
pub async fn request(mut req: Request<ProxyBody>, text: bool) -> Result<Request<ProxyBody>, Response<ProxyBody>> {
    let h = req.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.remove("x-grpc-web");
    if text {
        h.remove(header::CONTENT_LENGTH);
        let body = std::mem::take(req.body_mut());
        let bad = |why: &'static str| super::handler::local(http::StatusCode::BAD_REQUEST, "DPE", why);
        let bytes = match http_body_util::Limited::new(body, MAX_TEXT_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Err(bad("gRPC-Web text body too large or unreadable\n")),
        };
        let Some(decoded) = decode_text(&bytes) else { return Err(bad("gRPC-Web text body is not base64\n")) };
        *req.body_mut() = ProxyBody::full(Bytes::from(decoded));
    }
    Ok(req)
}

/// Base64 as gRPC-Web clients send it: several runs, each padded, may
/// follow one another.
fn decode_text(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut decoded = Vec::with_capacity(bytes.len() / 4 * 3);
    for run in bytes.split_inclusive(|b| *b == b'=').filter(|r| !r.iter().all(|b| *b == b'=')) {
        decoded.append(&mut B64.decode(trim_padding_run(run)).ok()?);
    }
    Some(decoded)
}

/// A run ending in `=` keeps its padding up to a multiple of four.
fn trim_padding_run(run: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = run.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    while !v.len().is_multiple_of(4) && v.last() == Some(&b'=') {
        v.pop();
    }
    while !v.len().is_multiple_of(4) {
        v.push(b'=');
    }
    v
}

/// The gRPC answer as gRPC-Web: a trailers-only answer's status moves from
/// the headers into the closing message.
pub fn response(resp: Response<ProxyBody>, text: bool) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let mut trailers = HeaderMap::new();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        if let Some(v) = parts.headers.remove(name) {
            trailers.insert(name, v);
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let ct = if text { "application/grpc-web-text+proto" } else { "application/grpc-web+proto" };
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    let web = WebBody { inner: body, text, carry: BytesMut::new(), trailers, done: false };
    Response::from_parts(parts, ProxyBody::GrpcWeb(Box::new(web)))
}

/// The upstream's body with its trailers turned into a last message.
pub struct WebBody {
    inner: ProxyBody,
    text: bool,
    /// `-text`: bytes not yet encoded (base64 goes three bytes at a time).
    carry: BytesMut,
    trailers: HeaderMap,
    done: bool,
}

impl WebBody {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(out) = self.encode(data, false) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
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
                    if !self.trailers.contains_key("grpc-status") {
                        // The upstream ended without a status: gRPC calls that UNKNOWN.
                        self.trailers.insert("grpc-status", HeaderValue::from_static("2"));
                    }
                    let mut block = Vec::new();
                    for (name, value) in &self.trailers {
                        block.extend_from_slice(name.as_str().as_bytes());
                        block.extend_from_slice(b":");
                        block.extend_from_slice(value.as_bytes());
                        block.extend_from_slice(b"\r\n");
                    }
                    let mut frame = BytesMut::with_capacity(5 + block.len());
                    frame.put_u8(0x80);
                    frame.put_u32(block.len() as u32);
                    frame.put_slice(&block);
                    let out = self.encode(frame.freeze(), true).unwrap_or_default();
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.done
    }

    /// `-text`: base64 of whole three-byte groups (all of it at the end).
    fn encode(&mut self, data: Bytes, last: bool) -> Option<Bytes> {
        if !self.text {
            return (!data.is_empty()).then_some(data);
        }
        self.carry.extend_from_slice(&data);
        let n = if last { self.carry.len() } else { self.carry.len() / 3 * 3 };
        if n == 0 {
            return None;
        }
        let chunk = self.carry.split_to(n);
        Some(Bytes::from(B64.encode(&chunk)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bodies_decode_from_several_padded_runs() {
        let one = B64.encode(b"ABCD");
        let two = B64.encode(b"EF");
        assert_eq!(decode_text(format!("{one}{two}").as_bytes()).unwrap(), b"ABCDEF");
        assert_eq!(decode_text(B64.encode(b"whole").as_bytes()).unwrap(), b"whole");
        assert!(decode_text(b"not base64!").is_none());
    }
}
