//! The one body type of the data plane, in both directions: bytes made
//! here, a request body streamed from a client over HTTP/1, a response
//! body streamed from an upstream over HTTP/1, or a body from hyper (HTTP/2
//! either way). An enum rather than a boxed trait object: no allocation and
//! no dynamic dispatch per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};

use super::h1;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum ProxyBody {
    /// Made here, or buffered: `None` once sent (or empty from the start).
    Full(Option<Bytes>),
    Hyper(Incoming),
    /// A client's HTTP/1 request body, read by its connection's task.
    Downstream(h1::server::RequestBody),
    /// An upstream's HTTP/1 response body, read straight from its connection.
    /// Boxed: it holds the connection (184 bytes), and every request and
    /// response moves its body a few times; small bodies come as `Full`.
    Upstream(Box<h1::client::ResponseBody>),
    /// A gRPC answer made gRPC-Web (its trailers as a last message).
    GrpcWeb(Box<super::grpcweb::WebBody>),
    /// A gRPC server stream transcoded to JSON lines.
    Json(Box<super::transcode::JsonLines>),
    /// A streamed response, counted for the request metrics.
    Metered(Box<super::observe::Metered>),
    /// An upstream's HTTP/1 response body, with the response's fields that
    /// go to the client as they came ([`h1::RawFields`]). They ride with the
    /// body (one allocation) rather than in the response's extensions (a
    /// map and two allocations); whoever reads or changes the response's
    /// headers takes them into its header map first ([`h1::materialize`]).
    Passed(Box<Passed>),
    /// A request body of unknown length, counted as it goes upstream.
    Counted(Box<super::observe::Counted>),
}

pub struct Passed {
    pub fields: h1::RawFields,
    pub body: ProxyBody,
}

/// Empty, so a body (or a whole request) can be taken with `std::mem::take`.
impl Default for ProxyBody {
    fn default() -> ProxyBody {
        ProxyBody::empty()
    }
}

impl ProxyBody {
    /// Takes out the fields that were to pass as they came, if this body
    /// (or the body it wraps) carries them.
    pub fn take_fields(&mut self) -> Option<h1::RawFields> {
        match self {
            ProxyBody::Passed(_) => match std::mem::take(self) {
                ProxyBody::Passed(passed) => {
                    let Passed { fields, body } = *passed;
                    *self = body;
                    Some(fields)
                }
                other => {
                    *self = other;
                    None
                }
            },
            ProxyBody::Metered(m) => m.inner.take_fields(),
            _ => None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }

    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes))
    }

    pub fn from_static(s: &'static str) -> ProxyBody {
        ProxyBody::full(Bytes::from_static(s.as_bytes()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Downstream(b) => b.poll_frame(cx).map_err(Into::into),
            ProxyBody::Upstream(b) => b.poll_frame(cx).map_err(Into::into),
            ProxyBody::GrpcWeb(b) => b.poll_frame(cx),
            ProxyBody::Json(b) => b.poll_frame(cx),
            ProxyBody::Metered(b) => b.poll_frame(cx),
            ProxyBody::Counted(b) => b.poll_frame(cx),
            ProxyBody::Passed(b) => Pin::new(&mut b.body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Hyper(b) => b.is_end_stream(),
            ProxyBody::Downstream(b) => b.is_end_stream(),
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::GrpcWeb(b) => b.is_end_stream(),
            ProxyBody::Json(b) => b.is_end_stream(),
            ProxyBody::Metered(b) => b.is_end_stream(),
            ProxyBody::Counted(b) => b.inner.is_end_stream(),
            ProxyBody::Passed(b) => b.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Hyper(b) => b.size_hint(),
            ProxyBody::Downstream(b) => b.size_hint(),
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::GrpcWeb(_) | ProxyBody::Json(_) => SizeHint::default(),
            ProxyBody::Metered(b) => b.size_hint(),
            ProxyBody::Counted(b) => b.inner.size_hint(),
            ProxyBody::Passed(b) => b.body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Requests and responses move their body several times on the way
    /// through the proxy (each move a copy); a large variant makes every one
    /// of them pay. Box it instead.
    #[test]
    fn a_body_stays_small() {
        assert!(std::mem::size_of::<super::ProxyBody>() <= 48, "{}", std::mem::size_of::<super::ProxyBody>());
        assert!(std::mem::size_of::<http::Response<super::ProxyBody>>() <= 160);
    }
}
