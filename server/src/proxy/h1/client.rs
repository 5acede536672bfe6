//! HTTP/1.1 towards upstreams. Each endpoint keeps a pool of idle
//! keep-alive connections (newest first); a request takes one, writes its
//! head (and a small body) in one write, and reads the response head in
//! the requesting task. A response body that is already in the buffer is
//! returned whole and the connection goes back to the pool at once;
//! otherwise the body reads straight from the connection and returns it
//! when the body ends. No connection task, no channel, no lock held across
//! I/O.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{Chunk, Decoded, Decoder, FieldAt, Kind, MAX_HEAD, MAX_HEADERS, RawFields, RawRuns, Special};
use crate::proxy::tls::UpstreamTls;
use crate::proxy::upstream::Health;
use crate::proxy::{Passed, ProxyBody};

/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 1024;
/// Request bodies up to this size are written with the head.
const INLINE_BODY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream connect error: {0}")]
    Connect(io::Error),
    #[error("upstream connection failed: {0}")]
    Reset(io::Error),
}

/// How an endpoint's connections are made and kept: a DestinationRule's
/// `connectionPool` (HTTP/1 upstreams, and TCP routes for the connect and
/// idle timeouts).
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// Idle pooled connections older than this are closed, not reused.
    pub idle_timeout: Duration,
    pub max_requests_per_connection: Option<u32>,
    pub max_connection_duration: Option<Duration>,
    /// TCP keepalive probes: (idle time, interval, count).
    pub keepalive: (Duration, Option<Duration>, Option<u32>),
    /// A TCP-routed connection with no bytes either way for this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> PoolSettings {
        PoolSettings {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_requests_per_connection: None,
            max_connection_duration: None,
            keepalive: (Duration::from_secs(60), None, None),
            tcp_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// A connection to an upstream (plain TCP, or TLS from a DestinationRule),
/// with the limits it was made under.
pub struct Stream {
    io: Io,
    idle_timeout: Duration,
    /// Requests left before the connection is retired (`maxRequestsPerConnection`).
    uses_left: Option<u32>,
    /// When the connection is retired (`maxConnectionDuration`).
    retire_at: Option<Instant>,
    /// The read buffer, kept with the connection while it idles in its pool:
    /// by its next use the last response's bytes are gone and it is reused as is.
    spare: BytesMut,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether the connection may go back to the pool after a request.
    fn retired(&self, now: Instant) -> bool {
        self.uses_left == Some(0) || self.retire_at.is_some_and(|t| now >= t)
    }

    /// Whether an idle pooled connection can still carry a request: not
    /// closed by the upstream, and (plain) with nothing unasked-for to read.
    fn reusable(&self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.tcp().poll_peek(&mut cx, &mut buf) {
            Poll::Pending => true,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => false,
            // TLS may have records pending (a session ticket); plain HTTP may not.
            Poll::Ready(Ok(_)) => matches!(self.io, Io::Tls(_)),
        }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream connection after `101 Switching Protocols`, with any bytes
/// the upstream sent after its response head; carried to the client side
/// as a response extension (which must be `Clone`, hence the shared slot).
#[derive(Clone)]
pub struct Upgraded(Arc<Mutex<Option<(Stream, Bytes)>>>);

impl Upgraded {
    /// `stream` as the other end of a tunnel, with bytes already read from it.
    pub fn new(stream: Stream, pending: Bytes) -> Upgraded {
        Upgraded(Arc::new(Mutex::new(Some((stream, pending)))))
    }

    pub fn take(&self) -> Option<(Stream, Bytes)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Idle keep-alive connections to one endpoint, each with the fingerprint
/// of the TLS settings it was made under (0: plain).
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(Stream, u64, Instant)>>,
}

impl Pool {
    fn take(&self, fingerprint: u64) -> Option<Stream> {
        loop {
            let (stream, made_under, since) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if since.elapsed() <= stream.idle_timeout && made_under == fingerprint && stream.reusable() {
                return Some(stream);
            }
        }
    }

    fn put(&self, stream: Stream, fingerprint: u64) {
        let now = Instant::now();
        if stream.retired(now) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest are at the front.
        let stale = idle.iter().take_while(|(s, _, since)| now.duration_since(*since) > s.idle_timeout).count();
        idle.drain(..stale);
        if idle.len() < MAX_IDLE {
            idle.push((stream, fingerprint, now));
        }
    }
}

/// A connection of its own to `address`, for a tunnel (never pooled).
pub async fn open(address: &str, tls: Option<&UpstreamTls>, settings: &PoolSettings) -> Result<Stream, Error> {
    connect(address, tls, settings).await
}

/// What the sidecar at the other end of a tunnel said.
pub enum Through {
    /// A 2xx: the stream is the tunnel now, with the bytes that came after the head.
    Open(Stream, Bytes),
    /// It refused (403 from its AuthorizationPolicy, say).
    Refused(StatusCode),
}

/// Asks the sidecar at the other end of `stream` (its inbound port) to
/// CONNECT to `authority`, as HBONE asks a mesh peer: the tunnel rides the
/// mTLS connection already made.
pub async fn connect_through(mut stream: Stream, authority: &str, limit: Duration) -> io::Result<Through> {
    let mut buf = BytesMut::new();
    let asking = async {
        let head = format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        loop {
            super::reserve(&mut buf, true);
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the tunnel"));
            }
            if let Some((response, ..)) = parse_head(&mut buf, false)? {
                return Ok(response.status());
            }
            if buf.len() >= MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "the peer's answer is too large"));
            }
        }
    };
    let status = match tokio::time::timeout(limit, asking).await {
        Ok(status) => status?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "the peer did not open the tunnel in time")),
    };
    if !status.is_success() {
        return Ok(Through::Refused(status));
    }
    Ok(Through::Open(stream, buf.freeze()))
}

/// A TCP connection to `address` with the cluster's keepalive settings
/// (no timeout here: callers bound the whole connect, TLS included).
pub async fn tcp(address: &str, settings: &PoolSettings) -> io::Result<TcpStream> {
    let tcp = match address.parse::<SocketAddr>() {
        Ok(addr) => TcpStream::connect(addr).await,
        Err(_) => TcpStream::connect(address).await,
    }?;
    let _ = tcp.set_nodelay(true);
    let (time, interval, probes) = settings.keepalive;
    let mut keepalive = socket2::TcpKeepalive::new().with_time(time);
    if let Some(i) = interval {
        keepalive = keepalive.with_interval(i);
    }
    if let Some(n) = probes {
        keepalive = keepalive.with_retries(n);
    }
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    Ok(tcp)
}

async fn connect(address: &str, tls: Option<&UpstreamTls>, settings: &PoolSettings) -> Result<Stream, Error> {
    let connecting = async {
        let tcp = tcp(address, settings).await?;
        match tls {
            None => Ok(Io::Plain(tcp)),
            Some(tls) => {
                let stream = tls.connector.connect(tls.server_name.clone(), tcp).await?;
                Ok(Io::Tls(Box::new(stream)))
            }
        }
    };
    // A failed TLS handshake is a connection failure (`UF`), as in Envoy.
    match tokio::time::timeout(settings.connect_timeout, connecting).await {
        Ok(Ok(io)) => Ok(Stream {
            io,
            idle_timeout: settings.idle_timeout,
            uses_left: settings.max_requests_per_connection,
            spare: BytesMut::new(),
            retire_at: settings.max_connection_duration.map(|d| Instant::now() + d),
        }),
        Ok(Err(e)) => Err(Error::Connect(e)),
        Err(_) => Err(Error::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))),
    }
}

/// The head of a request to an upstream, borrowed from the handler so that
/// retries need no copy.
pub struct Head<'a> {
    pub method: &'a Method,
    /// Path and query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// Fields for this attempt only, written after `headers`.
    pub extra: &'a [(&'static str, super::Value)],
}

/// Sends a request to the endpoint at `address`, reusing a pooled connection
/// when there is one. A reused connection that turns out closed before any
/// response byte arrived is retried once on a new connection when the body
/// can be sent again (the keep-alive race every proxy has).
pub async fn send(
    health: &Arc<Health>,
    address: &str,
    tls: Option<&UpstreamTls>,
    settings: &PoolSettings,
    req: Head<'_>,
    mut body: ProxyBody,
) -> Result<Response<ProxyBody>, Error> {
    let fingerprint = tls.map_or(0, |t| t.fingerprint);
    let head_request = *req.method == Method::HEAD;
    let mut head = super::scratch::head(1024);
    head.extend_from_slice(req.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(req.path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    super::write_fields(&mut head, req.headers, |n| n == header::CONTENT_LENGTH || n == header::TRANSFER_ENCODING);
    for (name, value) in req.extra {
        super::write_field(&mut head, name, value.as_bytes());
    }
    let length = body.size_hint().exact();
    match length {
        Some(0) if !matches!(*req.method, Method::POST | Method::PUT | Method::PATCH) => {}
        Some(n) => super::write_content_length(&mut head, n),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"\r\n");
    // A body made here (a replayable copy) can be resent; a streamed one cannot.
    let replayable = match &mut body {
        ProxyBody::Full(bytes) => {
            if let Some(b) = bytes.take() {
                if b.len() <= INLINE_BODY {
                    head.extend_from_slice(&b);
                } else {
                    *bytes = Some(b);
                }
            }
            bytes.is_none()
        }
        _ => false,
    };
    let mut fresh = false;
    loop {
        let stream = match (fresh, health.pool().take(fingerprint)) {
            (false, Some(s)) => s,
            _ => {
                fresh = true;
                // Boxed: connecting (maybe resolving a name) is rare next to reuse.
                Box::pin(connect(address, tls, settings)).await?
            }
        };
        let sent = match exchange(stream, &head, &mut body, length.is_none(), head_request).await {
            Ok(resp) => Ok(finish(health, fingerprint, resp)),
            Err((e, before_response)) => {
                if before_response && !fresh && replayable {
                    tracing::debug!(error = %e, address, "pooled upstream connection was closed; retrying on a new one");
                    fresh = true;
                    continue;
                }
                Err(Error::Reset(e))
            }
        };
        super::scratch::give_head(head);
        return sent;
    }
}

struct Exchanged {
    stream: Stream,
    buf: BytesMut,
    response: Response<()>,
    /// The fields that pass to the client as they came.
    raw: Option<RawFields>,
    decoder: Option<Decoder>,
    keep_alive: bool,
}

/// Writes the request and reads the response head. On failure, says
/// whether nothing of a response had arrived.
async fn exchange(
    mut stream: Stream,
    head: &[u8],
    body: &mut ProxyBody,
    chunked: bool,
    head_request: bool,
) -> Result<Exchanged, (io::Error, bool)> {
    if let Some(n) = &mut stream.uses_left {
        *n = n.saturating_sub(1);
    }
    stream.write_all(head).await.map_err(|e| (e, true))?;
    if !body.is_end_stream() {
        Box::pin(write_body(&mut stream, body, chunked)).await.map_err(|e| (e, false))?;
    }
    let mut buf = std::mem::take(&mut stream.spare);
    loop {
        super::reserve(&mut buf, true);
        match stream.read_buf(&mut buf).await {
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed the connection");
                return Err((e, buf.is_empty()));
            }
            Ok(_) => {}
            Err(e) => return Err((e, buf.is_empty())),
        }
        // 1xx interim responses (other than 101) are skipped.
        while let Some((response, special, raw)) = parse_head(&mut buf, head_request).map_err(|e| (e, false))? {
            if response.status().is_informational() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            let decoder = response_framing(response.status(), &special, head_request).map_err(|e| (e, false))?;
            let keep_alive = if response.version() == Version::HTTP_11 { !special.close } else { special.keep_alive };
            let keep_alive = keep_alive && !matches!(decoder, Some(Decoder::Close));
            return Ok(Exchanged { stream, buf, response, raw, decoder, keep_alive });
        }
    }
}

async fn write_body(stream: &mut Stream, body: &mut ProxyBody, chunked: bool) -> io::Result<()> {
    let mut trailers: Option<HeaderMap> = None;
    let mut out = Vec::new();
    loop {
        let frame = match std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)).await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(io::Error::other(e)),
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if chunked => {
                out.clear();
                super::write_chunk_header(&mut out, data.len());
                stream.write_all(&out).await?;
                stream.write_all(&data).await?;
                stream.write_all(b"\r\n").await?;
            }
            Ok(data) => stream.write_all(&data).await?,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    if chunked {
        out.clear();
        out.extend_from_slice(b"0\r\n");
        if let Some(t) = &trailers {
            super::write_fields(&mut out, t, |_| false);
        }
        out.extend_from_slice(b"\r\n");
        stream.write_all(&out).await?;
    }
    Ok(())
}

/// A response head, what this layer read from its fields, and the fields
/// that pass to the client as they came (when they can).
type Parsed = (Response<()>, Special, Option<RawFields>);

/// A response head taken off the front of `buf`, once it is all there,
/// with what this layer reads from its fields. An ordinary response (HTTP/1.1,
/// with a body, nothing in it the proxy reads or must rewrite) keeps its
/// fields as the bytes that came, in [`RawFields`], for the response
/// writer to copy: no header map is built for it unless someone asks
/// ([`super::materialize`]).
fn parse_head(buf: &mut BytesMut, head_request: bool) -> io::Result<Option<Parsed>> {
    let invalid = |why: &'static str| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut at = super::Places::new();
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut fields)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(invalid("upstream response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(invalid("malformed upstream response head")),
    };
    let (Some(code), Some(minor)) = (parsed.code, parsed.version) else {
        return Err(invalid("malformed upstream response head"));
    };
    let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid upstream status code"))?;
    let mut special = Special::default();
    let mut raw = RawRuns::default();
    for f in parsed.headers.iter() {
        let kind = Kind::of(f.name.as_bytes());
        if kind != Kind::Plain {
            special.add(kind, f.value);
        }
        let place = FieldAt { name: super::offset(buf, f.name.as_bytes()), value: super::offset(buf, f.value) };
        raw.field(buf, place.name.0, kind.passes());
        at.push(place);
    }
    let plain = minor == 1 && !bodiless(status, head_request) && !special.signal && !special.names_others;
    // Frozen: header values share these bytes; what follows stays in `buf`.
    let head = buf.split_to(len).freeze();
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if minor == 1 { Version::HTTP_11 } else { Version::HTTP_10 };
    let head = if plain {
        match raw.finish(head, special.date) {
            Ok(raw) => return Ok(Some((response, special, Some(raw)))),
            Err(head) => head,
        }
    } else {
        head
    };
    *response.headers_mut() = super::header_map(&head, &at).map_err(|()| invalid("invalid upstream header field"))?;
    Ok(Some((response, special, None)))
}

/// Whether a response to this request has no body, whatever its fields say.
fn bodiless(status: StatusCode, head_request: bool) -> bool {
    head_request || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

fn response_framing(status: StatusCode, special: &Special, head_request: bool) -> io::Result<Option<Decoder>> {
    if bodiless(status, head_request) {
        return Ok(None);
    }
    if special.codings > 0 {
        // A response whose last coding is not chunked runs to the close.
        return Ok(Some(if special.last_chunked { Decoder::Chunked(Chunk::Size) } else { Decoder::Close }));
    }
    if let Some(why) = special.bad_length {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("upstream: {}", why.trim_end())));
    }
    Ok(Some(match special.length {
        Some(n) => Decoder::Length(n),
        None => Decoder::Close,
    }))
}

/// Turns an exchange into the response the handler sees.
fn finish(health: &Arc<Health>, fingerprint: u64, ex: Exchanged) -> Response<ProxyBody> {
    let Exchanged { mut stream, mut buf, response, raw, decoder, keep_alive } = ex;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let mut resp = response.map(|()| ProxyBody::empty());
        resp.extensions_mut().insert(Upgraded(Arc::new(Mutex::new(Some((stream, buf.freeze()))))));
        return resp;
    }
    let body = match decoder {
        None => {
            if keep_alive && buf.is_empty() {
                stream.spare = buf;
                health.pool().put(stream, fingerprint);
            }
            ProxyBody::empty()
        }
        // The whole body is here already (small responses): the connection is free now.
        Some(Decoder::Length(n)) if buf.len() as u64 >= n => {
            let body = buf.split_to(n as usize).freeze();
            if keep_alive && buf.is_empty() {
                stream.spare = buf;
                health.pool().put(stream, fingerprint);
            }
            ProxyBody::full(body)
        }
        Some(decoder) => ProxyBody::Upstream(Box::new(ResponseBody {
            stream: Some(stream),
            buf,
            decoder,
            eof: false,
            keep_alive,
            health: health.clone(),
            fingerprint,
        })),
    };
    let body = match raw {
        Some(fields) => ProxyBody::Passed(Box::new(Passed { fields, body })),
        None => body,
    };
    response.map(|()| body)
}

/// A response body read from its upstream connection as it is polled; the
/// connection returns to its pool when the body ends.
pub struct ResponseBody {
    stream: Option<Stream>,
    buf: BytesMut,
    decoder: Decoder,
    eof: bool,
    keep_alive: bool,
    health: Arc<Health>,
    fingerprint: u64,
}

impl ResponseBody {
    fn release(&mut self) {
        if let Some(mut stream) = self.stream.take()
            && self.keep_alive
            && self.buf.is_empty()
            && self.decoder.is_done()
        {
            stream.spare = std::mem::take(&mut self.buf);
            self.health.pool().put(stream, self.fingerprint);
        }
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            let Some(stream) = &mut self.stream else { return Poll::Ready(None) };
            match self.decoder.decode(&mut self.buf, self.eof) {
                Ok(Decoded::Data(data)) => {
                    if self.decoder.is_done() {
                        self.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(Decoded::End) => {
                    self.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {
                    super::reserve(&mut self.buf, false);
                    match std::pin::pin!(stream.read_buf(&mut self.buf)).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0)) => self.eof = true,
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => {
                            self.stream = None;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Err(e) => {
                    self.stream = None;
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))));
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.stream.is_none() || self.decoder.is_done()
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.decoder.exact_remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, head_request: bool) -> (Response<()>, Special, Option<RawFields>) {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf, head_request).unwrap().unwrap()
    }

    #[test]
    fn an_ordinary_response_keeps_its_fields_as_they_came() {
        let text = "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri\r\nContent-Length: 2\r\nX-A:  b \r\n\
                    Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-C: d\r\n\r\nhi";
        let (resp, special, raw) = head(text, false);
        assert_eq!(special.length, Some(2));
        assert!(resp.headers().is_empty());
        let fields = raw.expect("raw fields");
        let mut out = Vec::new();
        fields.write(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "Server: nginx\r\nDate: Fri\r\nX-A:  b \r\nX-C: d\r\n");
        assert!(fields.has_date());
        // Read or changed, they are the fields a header map would have held, without the hop-by-hop ones.
        let body = ProxyBody::from_static("hi");
        let mut resp = resp.map(|()| ProxyBody::Passed(Box::new(Passed { fields, body })));
        super::super::materialize(&mut resp);
        assert!(resp.body_mut().take_fields().is_none());
        assert!(matches!(resp.body(), ProxyBody::Full(Some(b)) if b == "hi"));
        let fields: Vec<_> = resp.headers().iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(fields, [("server", "nginx"), ("date", "Fri"), ("x-a", "b"), ("x-c", "d")]);
    }

    #[test]
    fn responses_the_proxy_reads_or_must_rewrite_get_a_header_map() {
        for text in [
            // A field the proxy reads from responses.
            "HTTP/1.1 200 OK\r\ngrpc-status: 0\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 503 Service Unavailable\r\nx-meshgate-response-flags: UF\r\nContent-Length: 0\r\n\r\n",
            // Connection names a field that must go.
            "HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.0 200 OK\r\nX-A: b\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
            // Lines not ended by CRLF.
            "HTTP/1.1 200 OK\nX-A: b\nContent-Length: 0\n\n",
            // Five runs of passing lines.
            "HTTP/1.1 200 OK\r\nA: 1\r\nConnection: keep-alive\r\nB: 1\r\nKeep-Alive: x\r\nC: 1\r\nTE: x\r\nD: 1\r\n\
             Trailer: x\r\nE: 1\r\nContent-Length: 0\r\n\r\n",
        ] {
            let (resp, _, raw) = head(text, false);
            assert!(raw.is_none(), "{text:?}");
            assert!(!resp.headers().is_empty(), "{text:?}");
        }
        // The answer to HEAD: its Content-Length must reach the client.
        let (resp, _, raw) = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert!(raw.is_none());
        assert_eq!(resp.headers()["content-length"], "5");
    }
}
