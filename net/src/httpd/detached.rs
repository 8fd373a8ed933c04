//! A long-lived HTTP/1.1 response served outside hyper: an event stream that may stay open for
//! hours holds hyper's read and header buffers (8 KiB each) for nothing, since the client sends
//! no more requests on it. The app marks such a response with [`detached_stream`]; over
//! HTTP/1.1 the connection task writes its head itself once hyper has flushed what it held,
//! drops hyper and its buffers, and writes the body's frames as they come, the body ending with
//! the connection (`connection: close`, RFC 9112 §6.3). On HTTP/2 and HTTP/3 the mark does
//! nothing: the stream is one of many on its connection.

use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::Response;
use http_body::Body;

use super::io::{FrameWriter, Io, WriteEnd};
use crate::body::BoxBody;

/// Marks a response as a long-lived stream to serve outside hyper on HTTP/1.1.
#[derive(Clone, Copy, Debug)]
struct Detachable;

/// Marks `response` (a stream that ends only with its connection, like an event stream) to be
/// written outside hyper when it answers an HTTP/1.1 request, freeing hyper's buffers.
pub fn detached_stream(mut response: Response<BoxBody>) -> Response<BoxBody> {
    response.extensions_mut().insert(Detachable);
    response
}

/// Whether the app marked `response` with [`detached_stream`] (the mark is removed).
pub(crate) fn take_mark(response: &mut Response<BoxBody>) -> bool {
    response.extensions_mut().remove::<Detachable>().is_some()
}

/// A response taken from hyper: its head, already encoded, and its body.
pub(crate) struct DetachedResponse {
    head: Bytes,
    body: BoxBody,
}

impl DetachedResponse {
    /// Encodes `response`'s head for HTTP/1.1 with `connection: close` (the body is delimited
    /// by the close) and a `date`, as hyper would have written them.
    pub(crate) fn new(response: Response<BoxBody>) -> Self {
        let (parts, body) = response.into_parts();
        let mut head = BytesMut::with_capacity(256);
        head.put_slice(b"HTTP/1.1 ");
        head.put_slice(parts.status.as_str().as_bytes());
        head.put_u8(b' ');
        head.put_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        head.put_slice(b"\r\n");
        for (name, value) in &parts.headers {
            // Framing is ours to say: the body ends with the connection.
            if matches!(
                *name,
                http::header::CONNECTION
                    | http::header::CONTENT_LENGTH
                    | http::header::TRANSFER_ENCODING
            ) {
                continue;
            }
            head.put_slice(name.as_str().as_bytes());
            head.put_slice(b": ");
            head.put_slice(value.as_bytes());
            head.put_slice(b"\r\n");
        }
        head.put_slice(b"connection: close\r\ndate: ");
        head.put_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        head.put_slice(b"\r\n\r\n");
        Self {
            head: head.freeze(),
            body,
        }
    }
}

/// How a detached response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DetachedEnd {
    /// The body ended and everything was written.
    Done,
    /// The client went away (EOF, a socket error or an error of the body).
    Gone,
    /// A write made no progress within the stall bound.
    Stalled,
    /// The client sent bytes on a stream it should only read.
    Unexpected,
}

/// Writes `response` on `io` to its end, or until the client is gone or stalls for `stall`.
pub(crate) async fn serve(mut io: Io, response: DetachedResponse, stall: Duration) -> DetachedEnd {
    let DetachedResponse { head, mut body } = response;
    let mut writer = FrameWriter::new(stall);
    writer.start(head);
    let mut body_done = false;
    let mut probe = [0u8; 16];
    let end = futures_lite::future::poll_fn(|cx| {
        loop {
            // 1. The client's EOF. It has nothing more to send: bytes now would be a pipelined
            // request that this connection will never answer, so they end it too.
            let mut rb = hyper::rt::ReadBuf::new(&mut probe);
            match hyper::rt::Read::poll_read(Pin::new(&mut io), cx, rb.unfilled()) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return Poll::Ready(DetachedEnd::Gone);
                }
                Poll::Ready(Ok(())) => return Poll::Ready(DetachedEnd::Unexpected),
                Poll::Ready(Err(_)) => return Poll::Ready(DetachedEnd::Gone),
                Poll::Pending => {}
            }
            // 2. What is due, written and flushed.
            match writer.poll_drain(&mut io, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(WriteEnd::Gone)) => return Poll::Ready(DetachedEnd::Gone),
                Poll::Ready(Err(WriteEnd::Stalled)) => return Poll::Ready(DetachedEnd::Stalled),
                Poll::Pending => return Poll::Pending,
            }
            if body_done {
                return Poll::Ready(DetachedEnd::Done);
            }
            // 3. The body's next frame, once the last one is out.
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers have no place in a close-delimited body: dropped.
                    if let Ok(data) = frame.into_data() {
                        writer.start(data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "a detached response's body failed");
                    return Poll::Ready(DetachedEnd::Gone);
                }
                Poll::Ready(None) => body_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    if end == DetachedEnd::Done {
        // TLS: close_notify, so the client knows the body is whole; then the socket closes.
        let _ = futures_lite::future::poll_fn(|cx| {
            hyper::rt::Write::poll_shutdown(Pin::new(&mut io), cx)
        })
        .await;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_says_the_body_ends_with_the_connection() {
        let response = Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .header("connection", "keep-alive")
            .header("content-length", "5")
            .body(BoxBody::empty())
            .unwrap();
        let head = DetachedResponse::new(response).head;
        let text = std::str::from_utf8(&head).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"));
        assert!(text.contains("\r\nconnection: close\r\ndate: "), "{text}");
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert!(!text.contains("keep-alive") && !text.contains("content-length"));
    }
}
