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

/// A field value this proxy writes: one from a header map, or one made here
/// (ids and trace contexts, hex) that is checked as a header value only if
/// it goes into a header map.
#[derive(Clone, Debug)]
pub enum Value {
    Header(HeaderValue),
    Made(Bytes),
}

impl Value {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Header(v) => v.as_bytes(),
            Value::Made(b) => b,
        }
    }

    /// As a header value (`-` for made text that is not a valid one).
    pub fn to_header(&self) -> HeaderValue {
        match self {
            Value::Header(v) => v.clone(),
            Value::Made(b) => HeaderValue::from_maybe_shared(b.clone()).unwrap_or(HeaderValue::from_static("-")),
        }
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

/// What a field means to the HTTP/1 layer itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// Passed on as it is.
    Plain,
    Host,
    Date,
    Expect,
    ContentLength,
    TransferEncoding,
    Connection,
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`.
    HopByHop,
    /// Hop-by-hop too; the server notes that a request asks for one.
    Upgrade,
    /// Read by the proxy from responses (`x-meshgate-response-flags`, `grpc-status`).
    Signal,
}

impl Kind {
    /// By the name's length first, so most names are told apart without a comparison.
    pub(crate) fn of(name: &[u8]) -> Kind {
        // `name` is a token (httparse checked it) and each literal here is
        // lower-case letters and `-`: setting bit 5 lower-cases a letter, and
        // no other token character becomes a letter or `-` by it. One OR and
        // one comparison a byte, where `eq_ignore_ascii_case` folds both sides.
        let is = |n: &str| name.len() == n.len() && name.iter().zip(n.as_bytes()).all(|(a, b)| a | 0x20 == *b);
        match name.len() {
            2 if is("te") => Kind::HopByHop,
            4 if is("host") => Kind::Host,
            4 if is("date") => Kind::Date,
            6 if is("expect") => Kind::Expect,
            7 if is("upgrade") => Kind::Upgrade,
            7 if is("trailer") => Kind::HopByHop,
            10 if is("connection") => Kind::Connection,
            10 if is("keep-alive") => Kind::HopByHop,
            11 if is("grpc-status") => Kind::Signal,
            14 if is("content-length") => Kind::ContentLength,
            16 if is("proxy-connection") => Kind::HopByHop,
            17 if is("transfer-encoding") => Kind::TransferEncoding,
            25 if is("x-meshgate-response-flags") => Kind::Signal,
            _ => Kind::Plain,
        }
    }

    /// Whether a response field goes on to the client as it came (framing
    /// and hop-by-hop fields are this layer's own).
    pub(crate) fn passes(self) -> bool {
        matches!(self, Kind::Plain | Kind::Host | Kind::Date | Kind::Expect)
    }
}

/// What the HTTP/1 layer reads from a head (framing, persistence, `Host`,
/// `Expect`), gathered in one pass over the parsed fields instead of by
/// header-map lookups.
#[derive(Default, Debug)]
pub(crate) struct Special {
    pub hosts: u32,
    /// The `Content-Length` all fields (and list members) agree on.
    pub length: Option<u64>,
    /// Why the `Content-Length` fields are unusable, if they are.
    pub bad_length: Option<&'static str>,
    /// `Transfer-Encoding` codings: how many, and whether the first and the last are `chunked`.
    pub codings: u32,
    pub first_chunked: bool,
    pub last_chunked: bool,
    /// `Connection` tokens: `close`, `keep-alive`, and whether it names anything else.
    pub close: bool,
    pub keep_alive: bool,
    pub names_others: bool,
    /// `Expect`: whether there is one, and whether it is `100-continue`.
    pub expect: Option<bool>,
    pub date: bool,
    /// Some field is one the proxy reads from responses.
    pub signal: bool,
    pub upgrade: bool,
}

impl Special {
    pub(crate) fn add(&mut self, kind: Kind, value: &[u8]) {
        match kind {
            Kind::Plain | Kind::HopByHop => {}
            Kind::Upgrade => self.upgrade = true,
            Kind::Host => self.hosts += 1,
            Kind::Date => self.date = true,
            Kind::Expect => {
                self.expect = Some(value.eq_ignore_ascii_case(b"100-continue") && self.expect != Some(false))
            }
            Kind::ContentLength => members(value, |part| {
                let n = (!part.is_empty() && part.len() <= 19 && part.iter().all(u8::is_ascii_digit))
                    .then(|| part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
                match n {
                    None => self.bad_length = Some("invalid Content-Length\n"),
                    Some(n) if self.length.is_some_and(|l| l != n) => {
                        self.bad_length = self.bad_length.or(Some("conflicting Content-Length headers\n"));
                    }
                    Some(n) => self.length = Some(n),
                }
            }),
            Kind::TransferEncoding => members(value, |token| {
                let chunked = token.eq_ignore_ascii_case(b"chunked");
                if self.codings == 0 {
                    self.first_chunked = chunked;
                }
                self.codings += 1;
                self.last_chunked = chunked;
            }),
            Kind::Connection => members(value, |token| {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.is_empty() {
                    self.names_others = true;
                }
            }),
            Kind::Signal => self.signal = true,
        }
    }
}

/// Each member of a comma-separated field value, trimmed. A value with no
/// comma (nearly always) is its one member, without a split iterator.
fn members(value: &[u8], mut each: impl FnMut(&[u8])) {
    if value.contains(&b',') {
        value.split(|b| *b == b',').for_each(|part| each(trim_ows(part)));
    } else {
        each(trim_ows(value));
    }
}

/// Ordinary responses keep their passing fields in one or two runs of
/// lines (what goes is usually `Content-Length` and `Connection`); more
/// runs than this and the response takes a header map instead.
const MAX_RUNS: usize = 4;

/// The fields of an upstream's response head that go on to the client
/// unchanged, as runs of lines in the head's own bytes: the response writer
/// copies them, and no header map is built for them. They ride with the
/// response's body ([`crate::proxy::Passed`]); whoever reads or changes the
/// response's headers calls [`materialize`] first.
pub struct RawFields {
    head: Bytes,
    runs: [(u32, u32); MAX_RUNS],
    count: u8,
    date: bool,
}

impl RawFields {
    /// Appends the fields, as they came (`name: value\r\n` lines).
    pub fn write(&self, out: &mut Vec<u8>) {
        for &(start, end) in &self.runs[..self.count as usize] {
            out.extend_from_slice(&self.head[start as usize..end as usize]);
        }
    }

    pub fn has_date(&self) -> bool {
        self.date
    }
}

/// Collects [`RawFields`]' runs while a head's fields are classified.
#[derive(Default)]
pub(crate) struct RawRuns {
    runs: [(u32, u32); MAX_RUNS],
    count: usize,
    /// The line being collected: where it starts, and whether it passes.
    open: Option<(u32, bool)>,
    unusable: bool,
}

impl RawRuns {
    /// The next field's line starts at `start` (its name), ending the one before.
    pub(crate) fn field(&mut self, head: &[u8], start: u32, passes: bool) {
        self.close(head, start);
        self.open = Some((start, passes));
    }

    fn close(&mut self, head: &[u8], end: u32) {
        let Some((start, passes)) = self.open.take() else { return };
        if !passes {
            return;
        }
        // Only lines ended by CRLF are copied as they are.
        if end < start + 2 || head.get(end as usize - 2..end as usize) != Some(b"\r\n".as_slice()) {
            self.unusable = true;
            return;
        }
        match self.runs[..self.count].last_mut() {
            Some(run) if run.1 == start => run.1 = end,
            _ if self.count == MAX_RUNS => self.unusable = true,
            _ => {
                self.runs[self.count] = (start, end);
                self.count += 1;
            }
        }
    }

    /// The runs over `head` (the whole head, ended by its empty line), or
    /// `head` back when they cannot be copied as they are.
    pub(crate) fn finish(mut self, head: Bytes, date: bool) -> Result<RawFields, Bytes> {
        if !head.ends_with(b"\r\n\r\n") {
            return Err(head);
        }
        self.close(&head, head.len() as u32 - 2);
        if self.unusable {
            return Err(head);
        }
        Ok(RawFields { head, runs: self.runs, count: self.count as u8, date })
    }
}

/// Turns a response's [`RawFields`], if it has them, into header-map
/// entries, so that its headers can be read or changed.
pub fn materialize(resp: &mut http::Response<crate::proxy::ProxyBody>) {
    let Some(raw) = resp.body_mut().take_fields() else { return };
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    // It parsed when it came; the fields that passed go into the map.
    if !matches!(parsed.parse(&raw.head), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let places: Places = parsed
        .headers
        .iter()
        .filter(|f| Kind::of(f.name.as_bytes()).passes())
        .map(|f| FieldAt { name: offset(&raw.head, f.name.as_bytes()), value: offset(&raw.head, f.value) })
        .collect();
    let Ok(upstream) = header_map(&raw.head, &places) else { return };
    // Nothing should have been set before; if something was, it stays, after the upstream's fields.
    let set = std::mem::replace(resp.headers_mut(), upstream);
    for (name, value) in &set {
        resp.headers_mut().append(name, value.clone());
    }
}

/// Where header `name` and `value` sit in a head buffer, found while
/// parsing it borrowed and used once it is frozen.
#[derive(Clone, Copy, Default)]
struct FieldAt {
    name: (u32, u32),
    value: (u32, u32),
}

/// A head's fields' places, kept on the stack for ordinary heads (a
/// `[FieldAt; MAX_HEADERS]` would be zeroed, 1.6 KB, on every parse).
type Places = smallvec::SmallVec<[FieldAt; 32]>;

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
    fn fields_are_told_apart_in_one_pass() {
        let mut s = Special::default();
        for (name, value) in [
            ("Host", "a"),
            ("content-length", "5, 5"),
            ("Connection", "close, Upgrade"),
            ("Expect", "100-continue"),
            ("DATE", "x"),
            ("x-custom", "y"),
        ] {
            s.add(Kind::of(name.as_bytes()), value.as_bytes());
        }
        assert_eq!((s.hosts, s.length, s.bad_length), (1, Some(5), None));
        assert!(s.close && s.names_others && !s.keep_alive && s.date && !s.signal);
        assert_eq!(s.expect, Some(true));

        let mut s = Special::default();
        s.add(Kind::ContentLength, b"5");
        s.add(Kind::ContentLength, b"6");
        assert_eq!(s.bad_length, Some("conflicting Content-Length headers\n"));
        s.add(Kind::ContentLength, b"-1");
        assert_eq!(s.bad_length, Some("invalid Content-Length\n"));

        let mut s = Special::default();
        s.add(Kind::of(b"Transfer-Encoding"), b"gzip, chunked");
        s.add(Kind::of(b"Expect"), b"something-else");
        assert_eq!((s.codings, s.first_chunked, s.last_chunked), (2, false, true));
        assert_eq!(s.expect, Some(false));

        for (name, kind) in [
            (&b"X-Meshgate-Response-Flags"[..], Kind::Signal),
            (b"grpc-status", Kind::Signal),
            (b"Keep-Alive", Kind::HopByHop),
            (b"Proxy-Connection", Kind::HopByHop),
            (b"te", Kind::HopByHop),
            (b"Upgrade", Kind::Upgrade),
            (b"tes", Kind::Plain),
            (b"content-type", Kind::Plain),
            (b"CONTENT-LENGTH", Kind::ContentLength),
            (b"content_length", Kind::Plain),
            (b"content.length", Kind::Plain),
            (b"uPGRADe", Kind::Upgrade),
            (b"Hos~", Kind::Plain),
        ] {
            assert_eq!(Kind::of(name), kind, "{}", String::from_utf8_lossy(name));
        }
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
