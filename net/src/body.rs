//! Response body type handed back by the app, and the bounded request-body reader.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{Stream, StreamExt};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// Error type of response bodies (what hyper wants).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What polling one of this crate's bodies gives: its next frame, an error, or its end.
pub(crate) type FramePoll = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// A request's body as the app sees it: hyper's stream (HTTP/1.1, h2), or the bytes the HTTP/3
/// layer already read (it reads a bounded body before handing the request over). Either way
/// the app reads it with [`read_body_limited`].
pub enum RequestBody {
    Http(hyper::body::Incoming),
    Read(Option<Bytes>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> FramePoll {
        match self.get_mut() {
            RequestBody::Http(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Read(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Http(b) => b.is_end_stream(),
            RequestBody::Read(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Http(b) => b.size_hint(),
            RequestBody::Read(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// A response body: empty, one buffer, or any (possibly `!Send`) body/stream, e.g. SSE fed
/// by a core-local channel. Full bodies are not boxed: the hot path allocates nothing extra.
pub struct BoxBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Dyn(Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + 'static>>),
}

impl BoxBody {
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }

    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
        }
    }

    /// Any body; its errors end the response (h1: connection closed, h2: stream reset).
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Dyn(Box::pin(body.map_err(Into::into))),
        }
    }

    /// A streamed body (chunked on HTTP/1.1, DATA frames on h2): each item is sent as it comes.
    pub fn stream<S, E>(stream: S) -> Self
    where
        S: Stream<Item = Result<Bytes, E>> + 'static,
        E: Into<BoxError>,
    {
        let frames = stream.map(|r| r.map(Frame::data).map_err(Into::into));
        Self::new(http_body_util::StreamBody::new(frames))
    }
}

impl From<Bytes> for BoxBody {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}

impl From<&'static str> for BoxBody {
    fn from(s: &'static str) -> Self {
        Self::full(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for BoxBody {
    fn from(s: String) -> Self {
        Self::full(s)
    }
}

impl From<Vec<u8>> for BoxBody {
    fn from(v: Vec<u8>) -> Self {
        Self::full(v)
    }
}

impl Body for BoxBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> FramePoll {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Dyn(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Dyn(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Dyn(body) => body.size_hint(),
        }
    }
}

/// Why [`read_body_limited`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum BodyLimitError {
    /// The body is (or declares to be) longer than the limit: answer 413. Reading stopped at
    /// the limit; the rest was never buffered.
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// The peer broke off or sent a malformed body (reset, bad chunk framing): no answer can
    /// reach it reliably, or it deserves a 400.
    #[error("request body could not be read: {0}")]
    Broken(#[source] BoxError),
}

/// Reads a whole request body into memory, refusing more than `limit` bytes. A declared
/// `Content-Length` over the limit fails before any byte is read.
pub async fn read_body_limited<B>(body: B, limit: usize) -> Result<Bytes, BodyLimitError>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let mut body = body;
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        return Err(BodyLimitError::TooLarge { limit });
    }
    // Pre-size from the declared length, never beyond the limit.
    let mut buf = BytesMut::with_capacity(hint.upper().unwrap_or(0).min(limit as u64) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyLimitError::Broken(e.into()))?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        }; // trailers carry no payload
        if buf.len() + data.remaining() > limit {
            return Err(BodyLimitError::TooLarge { limit });
        }
        while data.has_remaining() {
            let chunk = data.chunk();
            let n = chunk.len();
            buf.extend_from_slice(chunk);
            data.advance(n);
        }
    }
    debug_assert!(buf.len() <= limit);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures_lite::future::block_on(f)
    }

    #[test]
    fn reads_within_the_limit() {
        let b = block_on(read_body_limited(
            Full::new(Bytes::from_static(b"hello")),
            5,
        ))
        .unwrap();
        assert_eq!(&b[..], b"hello");
    }

    #[test]
    fn declared_length_over_the_limit_fails_at_once() {
        let err = block_on(read_body_limited(
            Full::new(Bytes::from_static(b"hello!")),
            5,
        ))
        .unwrap_err();
        assert!(matches!(err, BodyLimitError::TooLarge { limit: 5 }));
    }

    #[test]
    fn streamed_body_stops_at_the_limit_and_broken_is_distinct() {
        let chunks = futures_lite::stream::iter(vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::data(Bytes::from_static(b"def"))),
            Err(std::io::Error::other("never reached")),
        ]);
        let err = block_on(read_body_limited(StreamBody::new(chunks), 4)).unwrap_err();
        assert!(
            matches!(err, BodyLimitError::TooLarge { limit: 4 }),
            "{err}"
        );

        let chunks = futures_lite::stream::iter(vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ]);
        let err = block_on(read_body_limited(StreamBody::new(chunks), 4)).unwrap_err();
        assert!(matches!(err, BodyLimitError::Broken(_)), "{err}");
    }

    #[test]
    fn box_body_full_and_stream() {
        let b = BoxBody::full("hi");
        assert_eq!(b.size_hint().exact(), Some(2));
        let got = block_on(read_body_limited(b, 10)).unwrap();
        assert_eq!(&got[..], b"hi");
        let s = futures_lite::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"a")),
            Ok(Bytes::from_static(b"b")),
        ]);
        let got = block_on(read_body_limited(BoxBody::stream(s), 10)).unwrap();
        assert_eq!(&got[..], b"ab");
        assert!(BoxBody::empty().is_end_stream());
    }
}
