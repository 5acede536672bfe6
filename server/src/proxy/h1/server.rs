//! HTTP/1.1 towards clients. One task per connection reads a request head,
//! runs the handler, and writes the response while it streams; a request
//! body that is not already in the buffer is read by the same task and
//! handed to the handler through a one-slot channel. Between requests the
//! connection holds no buffer: it waits for readability first.
//!
//! Stricter than the RFC where leniency lets requests be smuggled: both
//! `Content-Length` and `Transfer-Encoding`, differing `Content-Length`s, a
//! transfer coding other than `chunked`, or a bad chunk are refused (400 or
//! 501) and the connection is closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Chunk, Decoded, Decoder, FieldAt, Kind, MAX_HEAD, MAX_HEADERS, Special};
use crate::proxy::{Listener, ProxyBody, handler};

/// How long a client may take to send a request head, and how long an idle
/// keep-alive connection may wait for its next request.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest pause while a request body streams in.
const BODY_IDLE: Duration = Duration::from_secs(30);
/// After the response, an unread request body is drained for at most this
/// long and this many bytes, to keep the connection; past that it is closed.
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: u64 = 1024 * 1024;

/// The read side of a client connection.
pub trait ClientRead: AsyncRead + Unpin + Send {
    /// Waits until the client has sent something, so that an idle
    /// connection holds no read buffer. Streams that cannot tell (TLS)
    /// return at once.
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl ClientRead for tokio::net::tcp::ReadHalf<'_> {
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        // The socket's own read-readiness slot, which wakes the task that
        // polled it last (this connection's only reader), rather than
        // `readable()`'s waiter-list entry: half the work per request.
        std::future::poll_fn(|cx| self.as_ref().poll_read_ready(cx))
    }
}

impl<T: AsyncRead + AsyncWrite + Send> ClientRead for tokio::io::ReadHalf<T> {
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Serves HTTP/1 requests on one client connection until it closes, fails,
/// or `shutdown` fires (between requests).
pub async fn serve<R: ClientRead, W: AsyncWrite + Unpin + Send>(
    mut r: R,
    mut w: W,
    l: Arc<Listener>,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::new();
    // Read by the response writer (`Connection: close` once shutting down);
    // `stop` stays registered for the connection's life rather than once per request.
    let closing = shutdown.clone();
    let mut stop = std::pin::pin!(shutdown.changed());
    // One timer per connection, re-armed lazily: each request moves `deadline`
    // and the timer is reset only when it fires before it. No timer work per request.
    let mut deadline = Instant::now() + HEAD_TIMEOUT;
    let mut timer = std::pin::pin!(tokio::time::sleep_until(deadline));
    // `stop` and `timer` stay registered with this task's waker between
    // requests: they are polled again only when they may have fired (the
    // signal changed, the timer elapsed), not for every request.
    let mut registered = false;
    loop {
        deadline = Instant::now() + HEAD_TIMEOUT;
        let head = {
            let reading = std::pin::pin!(read_head(&mut r, &mut buf));
            wait_head(reading, stop.as_mut(), timer.as_mut(), &closing, deadline, &mut registered).await
        };
        // Shut down (or, at a sidecar's plaintext inbound, turned STRICT)
        // while the head arrived: it is not served, as before it was read.
        if closing.has_changed().unwrap_or(true) {
            return;
        }
        let head = match head {
            Wait::Head(Ok(Some(head))) => head,
            Wait::Head(Ok(None) | Err(HeadError::Io)) | Wait::Stop => return,
            Wait::Head(Err(HeadError::Refused(status, why))) => return Box::pin(refuse(&mut w, status, why)).await,
            // Idle keep-alive connections just close; a half-sent head gets a 408.
            Wait::Timeout if buf.is_empty() => return,
            Wait::Timeout => {
                let why = "request head not received in time\n";
                return Box::pin(refuse(&mut w, StatusCode::REQUEST_TIMEOUT, why)).await;
            }
        };
        let connect = head.request.method() == Method::CONNECT;
        if connect && !l.tunnels {
            return Box::pin(refuse(&mut w, StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported here\n")).await;
        }
        // After a 101, or a 2xx to CONNECT, the connection carries bytes both ways.
        let wants_upgrade = connect || head.upgrade;
        // Boxed: the request's state (handler, body pump, response writer)
        // lives on the heap for the request only; an idle connection's task
        // stays small.
        // Allocated first and written in place: the request's future is a
        // few KiB, and `Box::pin(future)` would build it on the stack and copy it.
        let state = Box::write(Box::new_uninit(), exchange(&mut r, &mut w, &mut buf, &l, peer, head, &closing));
        let written = Box::into_pin(state).await;
        match written {
            Ok((Some(upgraded), _)) if wants_upgrade => return Box::pin(splice(r, w, buf, upgraded)).await,
            Ok((_, true)) => {}
            _ => {
                let _ = w.shutdown().await;
                return;
            }
        }
        if buf.is_empty() {
            // Nothing pipelined: give the buffer back while the connection idles.
            super::scratch::give_buffer(std::mem::take(&mut buf));
        }
    }
}

/// One request on the connection: the handler runs while the request body
/// streams in, then the response is written; returns what [`write_response`]
/// returns, with keep-alive off when the body could not be read to its end.
async fn exchange<R: ClientRead, W: AsyncWrite + Unpin + Send>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    l: &Arc<Listener>,
    peer: SocketAddr,
    mut head: RequestHead,
    shutdown: &watch::Receiver<bool>,
) -> io::Result<(Option<super::client::Upgraded>, bool)> {
    // The request stays where it is (in this future's state, not taken
    // apart: that would copy it), borrowed by the handler.
    let request = &mut head.request;
    let head_request = request.method() == Method::HEAD;
    let connect = request.method() == Method::CONNECT;
    let version = request.version();

    // The body: none, already read, or streamed by this task as the handler consumes it.
    let (body, pump) = match head.decoder.take() {
        None => (ProxyBody::empty(), None),
        Some(Decoder::Length(n)) if buf.len() as u64 >= n => (ProxyBody::full(buf.split_to(n as usize).freeze()), None),
        Some(decoder) => {
            let (tx, rx) = mpsc::channel(1);
            let remaining = decoder.exact_remaining();
            let body = RequestBody { rx, remaining, ended: false };
            (ProxyBody::Downstream(body), Some(Pump { decoder, tx: Some(tx), discarded: 0 }))
        }
    };
    if head.expect_continue && pump.is_some() {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    *request.body_mut() = body;
    let reply = Reply { head_request, connect, version, keep_alive: head.keep_alive };
    let handler = std::pin::pin!(handler::handle(l, peer, request));
    let Some(pump) = pump else {
        let resp = handler.await;
        return reply.write(w, resp, shutdown).await;
    };
    // Boxed: a streamed request body is the rarer case, and its state should
    // not weigh on every request.
    Box::pin(with_body(handler, pump, r, w, buf, reply, shutdown)).await
}

/// How the response to a request is framed.
#[derive(Clone, Copy)]
struct Reply {
    head_request: bool,
    /// A 2xx to CONNECT opens a tunnel: no body, no framing fields.
    connect: bool,
    version: Version,
    keep_alive: bool,
}

impl Reply {
    /// Not an `async fn` of its own: the response (and its writer's state)
    /// is moved once less.
    fn write<'a, W: AsyncWrite + Unpin + Send>(
        self,
        w: &'a mut W,
        resp: Response<ProxyBody>,
        shutdown: &watch::Receiver<bool>,
    ) -> impl Future<Output = io::Result<(Option<super::client::Upgraded>, bool)>> + Send + 'a {
        let keep_alive = self.keep_alive && !*shutdown.borrow();
        write_response(w, resp, self.head_request, self.connect, self.version, keep_alive)
    }
}

/// Runs the handler while this task pumps the request body to it, then
/// writes the response while the pump goes on (a full-duplex exchange).
async fn with_body<R: ClientRead, W: AsyncWrite + Unpin + Send>(
    mut handler: Pin<&mut impl Future<Output = Response<ProxyBody>>>,
    mut pump: Pump,
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    reply: Reply,
    shutdown: &watch::Receiver<bool>,
) -> io::Result<(Option<super::client::Upgraded>, bool)> {
    let mut pumped: Option<bool> = None;
    let mut pumping = std::pin::pin!(pump.run(r, buf));
    let resp = loop {
        tokio::select! {
            biased;
            resp = &mut handler => break resp,
            ok = &mut pumping, if pumped.is_none() => pumped = Some(ok),
        }
    };
    let mut writing = std::pin::pin!(reply.write(w, resp, shutdown));
    let written = loop {
        tokio::select! {
            biased;
            done = &mut writing => break done,
            ok = &mut pumping, if pumped.is_none() => pumped = Some(ok),
        }
    };
    // An unread body is drained (briefly) so the connection can serve the next request.
    if pumped.is_none() && written.is_ok() {
        pumped = Some(tokio::time::timeout(DRAIN_TIME, &mut pumping).await.unwrap_or(false));
    }
    match written {
        Ok(done) if pumped == Some(true) => Ok(done),
        Ok((upgraded, _)) => Ok((upgraded, false)),
        Err(e) => Err(e),
    }
}

async fn refuse<W: AsyncWrite + Unpin + Send>(w: &mut W, status: StatusCode, why: &'static str) {
    let _ = write_response(w, handler::local(status, "DPE", why), false, false, Version::HTTP_11, false).await;
    let _ = w.shutdown().await;
}

/// How waiting for a request head ended.
enum Wait<T> {
    Head(T),
    Stop,
    Timeout,
}

/// Waits for a request head (`reading`), the shutdown signal (`stop`; that
/// it may have come, `closing` tells) or the head timeout (`timer`, which
/// may fire before `deadline`: then it is re-armed). `stop` and `timer`
/// stay registered with the task's waker from one call to the next
/// (`registered`), so they are polled again only when they may have fired,
/// not once per request.
async fn wait_head<T>(
    mut reading: Pin<&mut impl Future<Output = T>>,
    mut stop: Pin<&mut impl Future>,
    mut timer: Pin<&mut tokio::time::Sleep>,
    closing: &watch::Receiver<bool>,
    deadline: Instant,
    registered: &mut bool,
) -> Wait<T> {
    std::future::poll_fn(|cx| {
        // The head first: when it is there, the shutdown signal and the
        // timer are not polled at all; the signal is checked after the
        // head instead (an atomic load).
        if let Poll::Ready(head) = reading.as_mut().poll(cx) {
            return Poll::Ready(Wait::Head(head));
        }
        while !*registered || closing.has_changed().unwrap_or(true) || timer.is_elapsed() {
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wait::Stop);
            }
            if timer.as_mut().poll(cx).is_ready() {
                if Instant::now() >= deadline {
                    return Poll::Ready(Wait::Timeout);
                }
                // Re-armed, then polled again to register (firing took the waker).
                timer.as_mut().reset(deadline);
                *registered = false;
                continue;
            }
            *registered = true;
        }
        Poll::Pending
    })
    .await
}

struct RequestHead {
    /// With an empty body until [`exchange`] knows how it is framed.
    request: Request<ProxyBody>,
    /// It has an `Upgrade` field.
    upgrade: bool,
    decoder: Option<Decoder>,
    keep_alive: bool,
    expect_continue: bool,
}

enum HeadError {
    Io,
    Refused(StatusCode, &'static str),
}

fn bad(why: &'static str) -> HeadError {
    HeadError::Refused(StatusCode::BAD_REQUEST, why)
}

const TOO_LARGE: HeadError =
    HeadError::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request header fields too large\n");

/// Reads until a whole request head is in `buf`; `None` when the client
/// closed cleanly between requests.
async fn read_head<R: ClientRead>(r: &mut R, buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    loop {
        if !buf.is_empty()
            && let Some(head) = parse_head(buf)?
        {
            return Ok(Some(head));
        }
        if buf.capacity() == 0 {
            r.wait_readable().await.map_err(|_| HeadError::Io)?;
            *buf = super::scratch::buffer();
        }
        super::reserve(buf, true);
        match r.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) | Err(_) => return Err(HeadError::Io),
            Ok(_) => {}
        }
    }
}

fn parse_head(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    // Uninitialized: zeroing 100 slots per request costs more than parsing a small head.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut at = super::Places::new();
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(TOO_LARGE),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Refused(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "HTTP version not supported\n"));
        }
        Err(_) => return Err(bad("malformed request head\n")),
    };
    if len > MAX_HEAD {
        return Err(TOO_LARGE);
    }
    let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version) else {
        return Err(bad("malformed request head\n"));
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("invalid method\n"))?;
    let path_at = super::offset(buf, path.as_bytes());
    // One pass tells what this layer needs (framing, persistence, Host,
    // Expect) without a header-map lookup; `Expect` is answered here and
    // goes no further.
    let mut special = Special::default();
    for f in parsed.headers.iter() {
        let kind = Kind::of(f.name.as_bytes());
        if kind != Kind::Plain {
            special.add(kind, f.value);
        }
        if kind != Kind::Expect {
            at.push(FieldAt { name: super::offset(buf, f.name.as_bytes()), value: super::offset(buf, f.value) });
        }
    }
    let head = buf.split_to(len).freeze();
    let headers = super::header_map(&head, &at).map_err(|()| bad("invalid header field\n"))?;
    let uri = Uri::from_maybe_shared(head.slice(path_at.0 as usize..path_at.1 as usize))
        .map_err(|_| bad("invalid request target\n"))?;
    let version = if minor == 1 { Version::HTTP_11 } else { Version::HTTP_10 };

    if special.hosts > 1 || (special.hosts == 0 && version == Version::HTTP_11) {
        return Err(bad("exactly one Host header is required\n"));
    }
    let decoder = framing(&special, version)?;
    let keep_alive = match version {
        Version::HTTP_11 => !special.close,
        _ => special.keep_alive,
    };
    let expect_continue = match special.expect {
        None => false,
        Some(true) => true,
        Some(false) => {
            return Err(HeadError::Refused(StatusCode::EXPECTATION_FAILED, "unsupported expectation\n"));
        }
    };
    let mut request = Request::new(ProxyBody::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(RequestHead { request, upgrade: special.upgrade, decoder, keep_alive, expect_continue }))
}

/// How the request body is delimited (RFC 9112 section 6.3), refusing every
/// ambiguity a smuggling attempt relies on.
fn framing(special: &Special, version: Version) -> Result<Option<Decoder>, HeadError> {
    if special.codings > 0 {
        if special.length.is_some() || special.bad_length.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding\n"));
        }
        if version != Version::HTTP_11 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request\n"));
        }
        if !(special.codings == 1 && special.first_chunked) {
            return Err(HeadError::Refused(StatusCode::NOT_IMPLEMENTED, "unsupported transfer coding\n"));
        }
        return Ok(Some(Decoder::Chunked(Chunk::Size)));
    }
    if let Some(why) = special.bad_length {
        return Err(bad(why));
    }
    Ok(special.length.filter(|n| *n > 0).map(Decoder::Length))
}

enum Item {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    Failed(io::ErrorKind, &'static str),
}

/// A request body the connection's task streams in.
pub struct RequestBody {
    rx: mpsc::Receiver<Item>,
    remaining: Option<u64>,
    ended: bool,
}

impl RequestBody {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let item = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        Poll::Ready(match item {
            Some(Item::Data(data)) => {
                if let Some(r) = &mut self.remaining {
                    *r = r.saturating_sub(data.len() as u64);
                }
                Some(Ok(Frame::data(data)))
            }
            Some(Item::Trailers(t)) => Some(Ok(Frame::trailers(t))),
            Some(Item::End) => {
                self.ended = true;
                None
            }
            Some(Item::Failed(kind, why)) => {
                self.ended = true;
                Some(Err(io::Error::new(kind, why)))
            }
            None => {
                self.ended = true;
                Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client connection closed")))
            }
        })
    }

    pub fn is_end_stream(&self) -> bool {
        self.ended
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

struct Pump {
    decoder: Decoder,
    /// `None` once the handler dropped the body: the rest is read and discarded.
    tx: Option<mpsc::Sender<Item>>,
    discarded: u64,
}

impl Pump {
    /// Reads the body to its end; `true` if the connection is still usable.
    async fn run<R: ClientRead>(&mut self, r: &mut R, buf: &mut BytesMut) -> bool {
        let mut eof = false;
        loop {
            let item = match self.decoder.decode(buf, eof) {
                Ok(Decoded::Data(d)) => Item::Data(d),
                Ok(Decoded::Trailers(t)) => Item::Trailers(t),
                Ok(Decoded::End) => {
                    self.send(Item::End).await;
                    return true;
                }
                Ok(Decoded::More) => {
                    super::reserve(buf, false);
                    match tokio::time::timeout(BODY_IDLE, r.read_buf(buf)).await {
                        Ok(Ok(0)) => eof = true,
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            self.send(Item::Failed(e.kind(), "reading the request body failed")).await;
                            return false;
                        }
                        Err(_) => {
                            self.send(Item::Failed(io::ErrorKind::TimedOut, "request body stalled")).await;
                            return false;
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bad request body");
                    self.send(Item::Failed(io::ErrorKind::InvalidData, "malformed request body")).await;
                    return false;
                }
            };
            if self.tx.is_none() {
                if let Item::Data(d) = &item {
                    self.discarded += d.len() as u64;
                }
                if self.discarded > DRAIN_BYTES {
                    return false;
                }
            }
            self.send(item).await;
        }
    }

    async fn send(&mut self, item: Item) {
        if let Some(tx) = &self.tx
            && tx.send(item).await.is_err()
        {
            self.tx = None;
        }
    }
}

/// Writes `resp`; returns the upstream connection of a `101` to splice,
/// and whether the connection can serve another request.
async fn write_response<W: AsyncWrite + Unpin + Send>(
    w: &mut W,
    mut resp: Response<ProxyBody>,
    head_request: bool,
    connect: bool,
    version: Version,
    mut keep_alive: bool,
) -> io::Result<(Option<super::client::Upgraded>, bool)> {
    let status = resp.status();
    let tunnel = connect && status.is_success();
    let upgraded = if status == StatusCode::SWITCHING_PROTOCOLS || tunnel {
        resp.extensions_mut().remove::<super::client::Upgraded>()
    } else {
        None
    };
    let bodiless = head_request
        || tunnel
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let raw = resp.body_mut().take_fields();
    let small = match resp.body() {
        ProxyBody::Full(Some(b)) if b.len() <= 16 * 1024 => b.len(),
        _ => 0,
    };
    let mut out = super::scratch::head(768 + small);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let length = if bodiless { None } else { resp.body().size_hint().exact() };
    let chunked = !bodiless && length.is_none() && version == Version::HTTP_11;
    if !bodiless && length.is_none() && !chunked {
        // HTTP/1.0 client, unknown length: the end of the body is the end of the connection.
        keep_alive = false;
    }
    // An upstream's fields that pass as they came.
    if let Some(raw) = &raw {
        raw.write(&mut out);
    }
    let headers = resp.headers();
    if upgraded.is_some() {
        super::write_fields(&mut out, headers, |_| false);
    } else {
        super::write_fields(&mut out, headers, |n| {
            n == header::TRANSFER_ENCODING || n == header::CONNECTION || (n == header::CONTENT_LENGTH && !bodiless)
        });
        if let Some(n) = length {
            super::write_content_length(&mut out, n);
        } else if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !raw.as_ref().is_some_and(super::RawFields::has_date) && !headers.contains_key(header::DATE) {
        super::write_field(&mut out, "date", super::date().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let (parts, mut body) = resp.into_parts();
    super::scratch::give_map(parts.headers);
    if bodiless {
        w.write_all(&out).await?;
        w.flush().await?;
        super::scratch::give_head(out);
        return Ok((upgraded, keep_alive));
    }

    let mut sent: u64 = 0;
    let mut trailers = None;
    loop {
        // Frames that are ready go out with what is buffered in one write.
        let next = if out.is_empty() {
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        } else {
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    w.write_all(&out).await?;
                    out.clear();
                    continue;
                }
            }
        };
        let frame = match next {
            None => break,
            Some(Ok(frame)) => frame,
            // The upstream failed mid-body: closing without the end tells the client.
            Some(Err(e)) => return Err(io::Error::other(e)),
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if length.is_some_and(|n| sent > n) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body longer than its Content-Length"));
        }
        if chunked {
            super::write_chunk_header(&mut out, data.len());
        }
        if data.len() > 16 * 1024 {
            w.write_all(&out).await?;
            out.clear();
            w.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= 64 * 1024 {
            w.write_all(&out).await?;
            out.clear();
        }
    }
    if length.is_some_and(|n| sent != n) {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body shorter than its Content-Length"));
    }
    if chunked {
        out.extend_from_slice(b"0\r\n");
        if let Some(t) = &trailers {
            super::write_fields(&mut out, t, |_| false);
        }
        out.extend_from_slice(b"\r\n");
    }
    if !out.is_empty() {
        w.write_all(&out).await?;
    }
    w.flush().await?;
    super::scratch::give_head(out);
    Ok((None, keep_alive))
}

/// After a `101`, copies bytes both ways between the client and the
/// upstream until both sides are done.
async fn splice<R: ClientRead, W: AsyncWrite + Unpin + Send>(
    mut r: R,
    mut w: W,
    pending: BytesMut,
    upgraded: super::client::Upgraded,
) {
    let Some((stream, upstream_pending)) = upgraded.take() else { return };
    let (mut up_r, mut up_w) = tokio::io::split(stream);
    if !pending.is_empty() && up_w.write_all(&pending).await.is_err() {
        return;
    }
    if !upstream_pending.is_empty() && w.write_all(&upstream_pending).await.is_err() {
        return;
    }
    let to_upstream = async {
        let _ = tokio::io::copy(&mut r, &mut up_w).await;
        let _ = up_w.shutdown().await;
    };
    let to_client = async {
        let _ = tokio::io::copy(&mut up_r, &mut w).await;
        let _ = w.shutdown().await;
    };
    tokio::join!(to_upstream, to_client);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head timeout, re-armed when the deadline moved, and the shutdown
    /// signal both end a wait although neither is polled on every request.
    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_head_ends_at_the_deadline_or_the_signal() {
        let (tx, mut rx) = watch::channel(false);
        let closing = rx.clone();
        let mut stop = std::pin::pin!(rx.changed());
        let start = Instant::now();
        let mut timer = std::pin::pin!(tokio::time::sleep_until(start + HEAD_TIMEOUT));
        let mut registered = false;
        let limit = Duration::from_secs(300);

        // A head after 10 s: the timer and the signal get registered on the way.
        let head = std::pin::pin!(tokio::time::sleep(Duration::from_secs(10)));
        let w = wait_head(head, stop.as_mut(), timer.as_mut(), &closing, start + HEAD_TIMEOUT, &mut registered);
        assert!(matches!(tokio::time::timeout(limit, w).await, Ok(Wait::Head(()))));
        assert!(registered);

        // No head: the timer fires at 30 s, before the moved deadline (40 s),
        // is re-armed, and ends the wait then.
        let deadline = Instant::now() + HEAD_TIMEOUT;
        let none = std::pin::pin!(std::future::pending::<()>());
        let w = wait_head(none, stop.as_mut(), timer.as_mut(), &closing, deadline, &mut registered);
        assert!(matches!(tokio::time::timeout(limit, w).await, Ok(Wait::Timeout)));
        assert_eq!(Instant::now() - start, Duration::from_secs(40));

        // The signal, sent while a wait is pending, ends it at once.
        let deadline = Instant::now() + HEAD_TIMEOUT;
        timer.as_mut().reset(deadline);
        let mut registered = false;
        let head = std::pin::pin!(tokio::time::sleep(Duration::from_secs(1)));
        let w = wait_head(head, stop.as_mut(), timer.as_mut(), &closing, deadline, &mut registered);
        assert!(matches!(w.await, Wait::Head(())));
        let sent = Instant::now() + Duration::from_secs(5);
        tokio::spawn(async move {
            tokio::time::sleep_until(sent).await;
            let _ = tx.send(true);
        });
        let none = std::pin::pin!(std::future::pending::<()>());
        let w = wait_head(none, stop.as_mut(), timer.as_mut(), &closing, deadline, &mut registered);
        assert!(matches!(tokio::time::timeout(limit, w).await, Ok(Wait::Stop)));
        assert_eq!(Instant::now(), sent);
    }
}
