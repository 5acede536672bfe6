//! HTTP/1.1 for the data plane, written for a proxy: one task per client
//! connection drives the request, the upstream exchange and the response;
//! no buffer is held while a connection idles; request heads are parsed once
//! (httparse) and their header values are slices of the bytes read.
//!
//! `server` serves clients, `client` talks to upstreams with a keep-alive
//! pool per endpoint. Both share the body framing here.

pub mod client;
pub mod scratch;
pub mod server;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Request and response heads: at most this many bytes (then 431) ...
pub const MAX_HEAD: usize = 64 * 1024;
/// ... and this many header fields (then 431).
pub const MAX_HEADERS: usize = 100;
/// First read buffer of a request or response head: most heads fit (as
/// nginx's 1 KiB `client_header_buffer_size`), and the allocation stays in
/// the allocator's small, per-thread size classes.
const INITIAL_BUFFER: usize = 1024;
/// Reads of a streamed body ask for this much at a time.
const BODY_READ: usize = 16 * 1024;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("malformed chunked encoding")]
    Chunked,
    #[error("connection closed before the body ended")]
    Truncated,
    #[error("trailers too large or malformed")]
    Trailers,
}

/// How a message body is delimited on the wire, and how much of it is left.
#[derive(Debug)]
pub enum Decoder {
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes (responses without a length, HTTP/1.0).
    Close,
}

#[derive(Debug, Clone, Copy)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// More bytes must be read first.
    More,
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Length(0) | Decoder::Chunked(Chunk::Done))
    }

    pub fn exact_remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Chunked(Chunk::Done) => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body from `buf`; `eof` says the peer closed.
    pub fn decode(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Decoded, FramingError> {
        match self {
            Decoder::Length(0) => Ok(Decoded::End),
            Decoder::Length(n) => {
                if buf.is_empty() {
                    return if eof { Err(FramingError::Truncated) } else { Ok(Decoded::More) };
                }
                let take = (*n).min(buf.len() as u64) as usize;
                *n -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Decoder::Close => {
                if !buf.is_empty() {
                    Ok(Decoded::Data(buf.split().freeze()))
                } else if eof {
                    Ok(Decoded::End)
                } else {
                    Ok(Decoded::More)
                }
            }
            Decoder::Chunked(state) => {
                let out = decode_chunked(state, buf)?;
                if matches!(out, Decoded::More) && eof {
                    return Err(FramingError::Truncated);
                }
                Ok(out)
            }
        }
    }
}

fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(line_end) = find(buf, b"\r\n", MAX_CHUNK_LINE)? else { return Ok(Decoded::More) };
                let line = &buf[..line_end];
                // Extensions (`;name=value`) are allowed and ignored.
                let digits = line.split(|b| *b == b';').next().unwrap_or(line);
                let digits = trim_ows(digits);
                if digits.is_empty() || digits.len() > 15 {
                    return Err(FramingError::Chunked);
                }
                let mut size = 0u64;
                for d in digits {
                    let v = (*d as char).to_digit(16).ok_or(FramingError::Chunked)?;
                    size = size * 16 + u64::from(v);
                }
                buf.advance(line_end + 2);
                *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
            }
            Chunk::Data(n) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = n.min(buf.len() as u64) as usize;
                *state = if take as u64 == n { Chunk::DataEnd } else { Chunk::Data(n - take as u64) };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(FramingError::Chunked);
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.len() >= 2 && &buf[..2] == b"\r\n" {
                    buf.advance(2);
                    *state = Chunk::Done;
                    return Ok(Decoded::End);
                }
                // A trailer section: header lines up to an empty line.
                let Some(end) = find(buf, b"\r\n\r\n", MAX_HEAD)? else { return Ok(Decoded::More) };
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let parsed = httparse::parse_headers(&buf[..end + 4], &mut fields);
                let Ok(httparse::Status::Complete((_, fields))) = parsed else {
                    return Err(FramingError::Trailers);
                };
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    let (Ok(name), Ok(value)) =
                        (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                    else {
                        return Err(FramingError::Trailers);
                    };
                    trailers.append(name, value);
                }
                buf.advance(end + 4);
                *state = Chunk::Done;
                return Ok(Decoded::Trailers(trailers));
            }
            Chunk::Done => return Ok(Decoded::End),
        }
    }
}

pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn find(buf: &[u8], needle: &[u8], limit: usize) -> Result<Option<usize>, FramingError> {
    match buf.windows(needle.len()).position(|w| w == needle) {
        Some(i) => Ok(Some(i)),
        None if buf.len() > limit => Err(FramingError::Chunked),
        None => Ok(None),
    }
}

/// Appends `name: value\r\n`.
pub fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends each field, skipping those `skip` names.
pub fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap, skip: impl Fn(&HeaderName) -> bool) {
    for (name, value) in headers.iter().filter(|(n, _)| !skip(n)) {
        write_field(out, name.as_str(), value.as_bytes());
    }
}

/// Appends `content-length: n`.
pub fn write_content_length(out: &mut Vec<u8>, n: u64) {
    write_field(out, "content-length", itoa::Buffer::new().format(n).as_bytes());
}

pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    use std::io::Write as _;
    let _ = write!(out, "{len:x}\r\n");
}

/// Whether a `Connection` header lists `token`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes())))
}

/// Where header `name` and `value` sit in a head buffer, found while
/// parsing it borrowed and used once it is frozen.
#[derive(Clone, Copy, Default)]
struct FieldAt {
    name: (u32, u32),
    value: (u32, u32),
}

/// Where `part` sits in `base` (heads are at most [`MAX_HEAD`] bytes).
fn offset(base: &[u8], part: &[u8]) -> (u32, u32) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start as u32, (start + part.len()) as u32)
}

/// Turns parsed fields into a header map whose values share `head`'s bytes.
fn header_map(head: &Bytes, fields: &[FieldAt]) -> Result<HeaderMap, ()> {
    // Room for the fields the proxy adds (X-Forwarded-*, X-Request-Id, Date, ...) without regrowing.
    let mut map = scratch::map(fields.len() + 6);
    for f in fields {
        let name = HeaderName::from_bytes(&head[f.name.0 as usize..f.name.1 as usize]).map_err(|_| ())?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(f.value.0 as usize..f.value.1 as usize)).map_err(|_| ())?;
        map.append(name, value);
    }
    Ok(map)
}

/// Makes room to read into `buf`. A head starts in [`INITIAL_BUFFER`]
/// bytes, in the buffer's own allocation again when nothing shares it any
/// more; a body is read [`BODY_READ`] bytes at a time.
fn reserve(buf: &mut BytesMut, head: bool) {
    if buf.capacity() - buf.len() < 1024 {
        let small = buf.capacity() == 0 || (head && buf.is_empty());
        buf.reserve(if small { INITIAL_BUFFER } else { BODY_READ.max(buf.len()) });
    }
}

/// Today's `Date` header value, formatted at most once a second per thread.
pub fn date() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(now);
            c.1 = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
            c.0 = secs;
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(decoder: &mut Decoder, input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), FramingError> {
        let mut buf = BytesMut::new();
        let (mut body, mut trailers) = (Vec::new(), None);
        // Byte by byte: every state must cope with a split anywhere.
        for b in input {
            buf.extend_from_slice(&[*b]);
            loop {
                match decoder.decode(&mut buf, false)? {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::End => return Ok((body, trailers)),
                    Decoded::More => break,
                }
            }
        }
        Err(FramingError::Truncated)
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let (body, trailers) =
            all(&mut Decoder::Chunked(Chunk::Size), b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"hello world");
        assert!(trailers.is_none());
        let (body, trailers) =
            all(&mut Decoder::Chunked(Chunk::Size), b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-a: b\r\n\r\n").unwrap();
        assert_eq!(body, b"abc");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        for bad in [&b"zz\r\nab\r\n0\r\n\r\n"[..], b"3\r\nabcX\r\n0\r\n\r\n", b"ffffffffffffffffff\r\n", b"\r\n"] {
            assert!(all(&mut Decoder::Chunked(Chunk::Size), bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut buf = BytesMut::from(&b"3\r\nab"[..]);
        let mut d = Decoder::Chunked(Chunk::Size);
        assert!(matches!(d.decode(&mut buf, true), Ok(Decoded::Data(_))));
        assert!(matches!(d.decode(&mut buf, true), Err(FramingError::Truncated)));
    }

    #[test]
    fn length_bodies_stop_at_the_length() {
        let mut buf = BytesMut::from(&b"hello, next request"[..]);
        let mut d = Decoder::Length(5);
        let Ok(Decoded::Data(d1)) = d.decode(&mut buf, false) else { panic!("data expected") };
        assert_eq!(&d1[..], b"hello");
        assert!(matches!(d.decode(&mut buf, false), Ok(Decoded::End)));
        assert_eq!(&buf[..], b", next request");
    }
}
