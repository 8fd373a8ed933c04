//! A results stream over WebSocket (RFC 6455) on an HTTP/1.1 connection that asked to upgrade,
//! or on an h2 stream opened by an extended CONNECT (RFC 8441).
//!
//! The app answers the handshake with `101` (or `200` to the CONNECT) and [`upgrade_to`], which
//! parks the session it will run. Over HTTP/1.1 the connection's own task runs it once hyper
//! hands the socket over, so the session keeps the connection's slot (the caps count it) and
//! ends with the task; over h2 a task of the connection's core runs it on the stream hyper hands
//! over, counted by the connection's watchdog like a response being written. The session sends the
//! frames of an [`sse::Subscriber`](crate::sse::Subscriber) made with WebSocket frames (text
//! events, a ping as its heartbeat), answers the client's pings, ends when the client closes or
//! is gone, when a ping is not answered by the next heartbeat, when a frame cannot be written
//! within the stall bound, and after a terminal event (close 1000) or on shutdown (close 1001).
//! Once hyper is done with the connection its buffers are freed: a session holds its socket,
//! its subscriber and a read buffer that grows only if the client sends more than control
//! frames.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::Stream;
use http::Response;
use votes_core::ws::{self, Opcode, close_code};

use crate::BoxBody;
use crate::httpd::LocalBoxFuture;
use crate::httpd::io::{FrameWriter, Io, WriteEnd};
use crate::httpd::per_core::InFlight;
use crate::sse::Subscriber;

/// What a session runs on the upgraded socket.
pub type Session = Box<dyn FnOnce(Socket) -> LocalBoxFuture<'static, ()>>;

/// The socket of an upgraded connection, with what the client sent after its handshake.
pub struct Socket {
    stream: Tunnel,
    early: Bytes,
}

impl Socket {
    /// An HTTP/1.1 connection hyper let go of after its `101`.
    pub(crate) fn tcp(io: Io, early: Bytes) -> Self {
        Self {
            stream: Tunnel::Tcp(io),
            early,
        }
    }

    /// An h2 stream hyper opened after its `200` to an extended CONNECT; `guard` keeps it
    /// counted as a response being written.
    pub(crate) fn h2(upgraded: hyper::upgrade::Upgraded, guard: InFlight) -> Self {
        Self {
            stream: Tunnel::H2 { upgraded, guard },
            early: Bytes::new(),
        }
    }
}

/// What a session reads and writes WebSocket frames on.
enum Tunnel {
    Tcp(Io),
    H2 {
        upgraded: hyper::upgrade::Upgraded,
        guard: InFlight,
    },
}

/// What either side of a [`Tunnel`] is: a byte stream hyper reads and writes.
trait ByteStream: hyper::rt::Read + hyper::rt::Write + Unpin {}

impl<S: hyper::rt::Read + hyper::rt::Write + Unpin> ByteStream for S {}

impl Tunnel {
    /// The stream the tunnel runs on, for the calls that are the same on both.
    fn stream(&mut self) -> Pin<&mut dyn ByteStream> {
        match self {
            Tunnel::Tcp(io) => Pin::new(io),
            Tunnel::H2 { upgraded, .. } => Pin::new(upgraded),
        }
    }
}

impl hyper::rt::Read for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().stream().poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Tunnel::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Tunnel::H2 { upgraded, guard } => {
                let written = Pin::new(upgraded).poll_write(cx, buf);
                // hyper takes a write once the stream's last one went out: the client keeps up.
                if let Poll::Ready(Ok(n)) = written
                    && n > 0
                {
                    guard.progress();
                }
                written
            }
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().stream().poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().stream().poll_shutdown(cx)
    }
}

// Sessions answered with `101` whose connection has not taken them yet, per core.
thread_local! {
    static PARKED: RefCell<slab::Slab<Session>> = RefCell::new(slab::Slab::new());
}

/// Names a parked session in the `101` response's extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParkedSession(usize);

/// The answer to a valid handshake, `101 Switching Protocols` (HTTP/1.1) or `200` (an h2
/// extended CONNECT): `response` (its status and headers) carries `session`, which the
/// connection runs once hyper hands the socket or stream over.
pub fn upgrade_to(mut response: Response<BoxBody>, session: Session) -> Response<BoxBody> {
    assert!(
        matches!(
            response.status(),
            http::StatusCode::SWITCHING_PROTOCOLS | http::StatusCode::OK
        ),
        "a WebSocket opens with 101 or, on an h2 CONNECT, 200"
    );
    let key = PARKED.with(|p| p.borrow_mut().insert(session));
    response.extensions_mut().insert(ParkedSession(key));
    response
}

/// Takes the session a response parked, if any (every response passes here once).
pub(crate) fn take_parked(response: &mut Response<BoxBody>) -> Option<Session> {
    let ParkedSession(key) = response.extensions_mut().remove::<ParkedSession>()?;
    PARKED.with(|p| p.borrow_mut().try_remove(key))
}

/// The heartbeat of a WebSocket results stream: a ping (empty).
pub fn ping_frame() -> Bytes {
    Bytes::from(ws::encode(Opcode::Ping, b""))
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// It sent its close (the terminal event, shutdown, or an answer to the client's close or
    /// to a bad frame).
    Closed(u16),
    /// The client went away (EOF or a socket error).
    Gone,
    /// No pong to a ping by the next heartbeat.
    Silent,
    /// A frame was not written within the stall bound.
    Stalled,
}

/// Control frames waiting behind the current write: a client may ask pongs faster than it
/// reads them; beyond this the older pings go unanswered (RFC 6455 §5.5.3 allows it).
const CONTROL_QUEUE_MAX: usize = 4;
/// The most a client frame may carry here (controls are ≤ 125 bytes; data is refused).
const CLIENT_FRAME_MAX: usize = 1024;

/// Runs the results session: `frames` are WebSocket frames (text events, pings as heartbeats).
/// Long because it is one poll loop over three sources whose order is the design (writes
/// first, then the client's frames, then the next event once the last is out); the client's
/// frames are answered in [`answer_client_frames`].
pub async fn results_session(
    socket: Socket,
    mut frames: Subscriber,
    stall: Duration,
) -> SessionEnd {
    let Socket { mut stream, early } = socket;
    let ping = ping_frame();
    let mut writer = FrameWriter::new(stall);
    let mut control: VecDeque<Bytes> = VecDeque::new();
    let mut closing: Option<u16> = None;
    let mut last_terminal = false;
    let mut awaiting_pong = false;
    let mut inbuf: Vec<u8> = early.to_vec();
    // `early` is a view of hyper's whole read buffer (8 KiB): keeping it would keep that.
    drop(early);
    // Bytes in `inbuf` not yet looked at (the client may send a frame right behind its
    // handshake).
    let mut unparsed = !inbuf.is_empty();
    let mut chunk = [0u8; 256];
    futures_lite::future::poll_fn(|cx| {
        loop {
            // 1. Write what is due; a blocked write still lets the client's frames be read.
            match writer.poll_drain(&mut stream, cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(frame) = control.pop_front() {
                        writer.start(frame);
                        continue;
                    }
                    if let Some(code) = closing {
                        return Poll::Ready(SessionEnd::Closed(code));
                    }
                }
                Poll::Ready(Err(WriteEnd::Gone)) => return Poll::Ready(SessionEnd::Gone),
                Poll::Ready(Err(WriteEnd::Stalled)) => return Poll::Ready(SessionEnd::Stalled),
                Poll::Pending => {}
            }
            // 2. Read what the client sent, while answers can still be queued.
            if closing.is_none() && control.len() < CONTROL_QUEUE_MAX && !unparsed {
                let mut rb = hyper::rt::ReadBuf::new(&mut chunk);
                match hyper::rt::Read::poll_read(Pin::new(&mut stream), cx, rb.unfilled()) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        return Poll::Ready(SessionEnd::Gone);
                    }
                    Poll::Ready(Ok(())) => {
                        inbuf.extend_from_slice(rb.filled());
                        unparsed = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(SessionEnd::Gone),
                    Poll::Pending => {}
                }
            }
            if unparsed {
                unparsed = false;
                answer_client_frames(&mut inbuf, &mut control, &mut closing, &mut awaiting_pong);
                continue;
            }
            // 3. The next event, once the last one is out.
            if writer.is_idle() && control.is_empty() && closing.is_none() {
                match Pin::new(&mut frames).poll_next(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if frame == ping {
                            if awaiting_pong {
                                return Poll::Ready(SessionEnd::Silent);
                            }
                            awaiting_pong = true;
                        } else {
                            last_terminal = frames.is_done();
                        }
                        writer.start(frame);
                        continue;
                    }
                    Poll::Ready(None) => {
                        let code = if last_terminal {
                            close_code::NORMAL
                        } else {
                            close_code::GOING_AWAY
                        };
                        control.push_back(Bytes::from(ws::close_frame(code, "")));
                        closing = Some(code);
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            return Poll::Pending;
        }
    })
    .await
}

/// Answers every whole frame the client sent that `inbuf` holds: a pong to each ping (the
/// oldest dropped past [`CONTROL_QUEUE_MAX`]), the end of the wait for a pong, a close
/// answered and the session closing on a close, on data (this stream takes none) or on a
/// frame that breaks the protocol. The bytes parsed leave `inbuf`.
fn answer_client_frames(
    inbuf: &mut Vec<u8>,
    control: &mut VecDeque<Bytes>,
    closing: &mut Option<u16>,
    awaiting_pong: &mut bool,
) {
    let mut used_all = 0;
    while closing.is_none() {
        match ws::parse(&inbuf[used_all..], CLIENT_FRAME_MAX) {
            Ok(None) => break,
            Ok(Some((frame, used))) => {
                used_all += used;
                match frame.opcode {
                    Opcode::Pong => *awaiting_pong = false,
                    Opcode::Ping => {
                        if control.len() >= CONTROL_QUEUE_MAX {
                            control.pop_front();
                        }
                        let pong = ws::encode(Opcode::Pong, &frame.payload);
                        control.push_back(Bytes::from(pong));
                    }
                    Opcode::Close => {
                        let code = frame.close_code().unwrap_or(close_code::NORMAL);
                        control.push_back(Bytes::from(ws::close_frame(code, "")));
                        *closing = Some(code);
                    }
                    Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                        let code = close_code::UNSUPPORTED_DATA;
                        let why = "this stream takes no data";
                        control.push_back(Bytes::from(ws::close_frame(code, why)));
                        *closing = Some(code);
                    }
                }
            }
            Err(e) => {
                let code = e.close_code();
                control.push_back(Bytes::from(ws::close_frame(code, &e.to_string())));
                *closing = Some(code);
            }
        }
    }
    inbuf.drain(..used_all);
    if inbuf.is_empty() {
        // A session that only ever sees pongs holds no read buffer.
        *inbuf = Vec::new();
    }
}

/// The `:protocol` of an h2 extended CONNECT (RFC 8441), when `req` is one.
pub fn connect_protocol<B>(req: &http::Request<B>) -> Option<&str> {
    req.extensions()
        .get::<hyper::ext::Protocol>()
        .map(hyper::ext::Protocol::as_str)
}
