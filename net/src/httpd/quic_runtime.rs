//! A quinn 0.11 `Runtime` for glommio 0.9 (thread-per-core, io_uring): HTTP/3 runs on the
//! same reactors as the shards (docs/design.md §1), one endpoint and UDP socket per core.
//!
//! quinn asks for `Send + Sync` on the runtime, the socket, the write poller and the timer because
//! its handles (`Endpoint`, `Connection`) are `Send` and a user may call into them from any thread.
//! Glommio's types are `!Send` (they hold `Rc`s into the thread's reactor). We keep every glommio
//! object inside [`OnThread`], which is `Send + Sync` by checking, at every access, that the
//! caller is the thread that made it (and leaking, never dropping, the value if the last owner
//! goes away on another thread). Nothing glommio-owned is ever touched off its thread, so the
//! `unsafe impl`s below are sound; misuse (driving an endpoint from another thread) panics.
//!
//! I/O: the socket is a plain non-blocking `std::net::UdpSocket` driven by quinn-udp's
//! `UdpSocketState` (recvmmsg + GRO, sendmsg + GSO, ECN, pktinfo) exactly as quinn's tokio
//! runtime does. Glommio gives no public "readable" poll for UDP, so read readiness comes from a
//! glommio `peek` of one byte (an io_uring RECV with MSG_PEEK) on a dup of the same socket: it
//! completes when a datagram is queued, consuming nothing. Write readiness (only needed after
//! `EAGAIN`, i.e. a full socket send buffer) is a short glommio timer back-off.

use std::{
    cell::RefCell,
    fmt,
    future::Future,
    io::{self, IoSliceMut},
    mem::ManuallyDrop,
    net::SocketAddr,
    os::fd::{FromRawFd, IntoRawFd},
    pin::Pin,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    thread::{self, ThreadId},
    time::{Duration, Instant},
};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, UdpPoller};

/// A value that may only be used, and is only ever dropped, on the thread that created it.
pub struct OnThread<T> {
    owner: ThreadId,
    value: ManuallyDrop<T>,
}

// SAFETY: the value is reachable only through `get`/`get_mut`, which panic off the owner thread,
// and `Drop` drops it only on the owner thread (it is leaked otherwise). So `T` is never accessed
// or dropped concurrently or on another thread, whatever `T`'s own auto traits are.
unsafe impl<T> Send for OnThread<T> {}
unsafe impl<T> Sync for OnThread<T> {}

impl<T> OnThread<T> {
    pub fn new(value: T) -> Self {
        Self {
            owner: thread::current().id(),
            value: ManuallyDrop::new(value),
        }
    }
    #[inline]
    fn check(&self) {
        assert!(
            thread::current().id() == self.owner,
            "glommio quinn runtime object used off its reactor thread"
        );
    }
    pub fn get(&self) -> &T {
        self.check();
        &self.value
    }
    pub fn get_mut(&mut self) -> &mut T {
        self.check();
        &mut self.value
    }
}

impl<T> Drop for OnThread<T> {
    fn drop(&mut self) {
        if thread::current().id() == self.owner {
            // SAFETY: dropped once, here, on the owner thread.
            unsafe { ManuallyDrop::drop(&mut self.value) }
        }
        // else: leak. Leaking is safe; touching an `Rc` from this thread would not be.
    }
}

impl<T> fmt::Debug for OnThread<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnThread")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// quinn runtime on the current glommio executor. `spawn` puts quinn's endpoint and
/// connection drivers on the task queue given (or the current one).
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioRuntime {
    pub queue: Option<glommio::TaskQueueHandle>,
}

impl Runtime for GlommioRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(GlommioTimer(OnThread::new(glommio::timer::Timer::new(
            at.saturating_duration_since(Instant::now()),
        ))))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        // quinn calls this from `Endpoint::new`, `Endpoint::connect` and `Incoming::accept`, so
        // on the thread that uses the endpoint: ours. Off a glommio thread this panics.
        // NB: glommio's `spawn_local` polls the new task *inline, right away*; quinn may call
        // `spawn` with its endpoint mutex held, so we must only *schedule* the driver:
        // `spawn_local_into` always schedules.
        let tq = self
            .queue
            .unwrap_or_else(|| glommio::executor().current_task_queue());
        glommio::spawn_local_into(future, tq)
            .expect("quinn runtime: task queue")
            .detach();
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(GlommioUdpSocket::new(sock)?))
    }
}

/// quinn's timer: a glommio timer (timer wheel of this reactor).
struct GlommioTimer(OnThread<glommio::timer::Timer>);

impl fmt::Debug for GlommioTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GlommioTimer")
    }
}

impl AsyncTimer for GlommioTimer {
    fn reset(self: Pin<&mut Self>, at: Instant) {
        let t = self.get_mut().0.get_mut();
        t.reset(at.saturating_duration_since(Instant::now()));
    }
    fn poll(self: Pin<&mut Self>, cx: &mut Context) -> Poll<()> {
        let t = self.get_mut().0.get_mut();
        Pin::new(t).poll(cx).map(|_| ())
    }
}

type PeekFuture = Pin<Box<dyn Future<Output = io::Result<usize>>>>;

/// Read-readiness machinery, glommio-owned.
struct RxWait {
    /// The same socket (a dup of the fd), owned by glommio; used only to peek.
    peeker: Rc<glommio::net::UdpSocket>,
    armed: RefCell<Option<PeekFuture>>,
}

pub struct GlommioUdpSocket {
    io: std::net::UdpSocket,
    state: UdpSocketState,
    send_blocked: AtomicBool,
    rx: OnThread<RxWait>,
    /// Counters of the socket (for `/metrics`).
    pub stats: Arc<SocketStats>,
}

#[derive(Debug, Default)]
pub struct SocketStats {
    pub recv_calls: AtomicU64,
    pub recv_datagrams: AtomicU64,
    pub peek_waits: AtomicU64,
    pub send_calls: AtomicU64,
    pub send_eagain: AtomicU64,
}

impl fmt::Debug for GlommioUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlommioUdpSocket")
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

impl GlommioUdpSocket {
    /// Must be called on the glommio thread that will drive the endpoint.
    pub fn new(sock: std::net::UdpSocket) -> io::Result<Self> {
        // Sets O_NONBLOCK, enables GRO, pktinfo, ECN, DF where the kernel has them.
        let state = UdpSocketState::new((&sock).into())?;
        let dup = sock.try_clone()?; // shares the open file description, hence the queue
        // SAFETY: `dup` is a fresh fd that we own and hand over.
        let peeker = unsafe { glommio::net::UdpSocket::from_raw_fd(dup.into_raw_fd()) };
        Ok(Self {
            io: sock,
            state,
            send_blocked: AtomicBool::new(false),
            rx: OnThread::new(RxWait {
                peeker: Rc::new(peeker),
                armed: RefCell::new(None),
            }),
            stats: Arc::default(),
        })
    }
}

impl AsyncUdpSocket for GlommioUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(GlommioUdpPoller {
            sock: self,
            backoff: OnThread::new(None),
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.stats.send_calls.fetch_add(1, Ordering::Relaxed);
        match self.state.send((&self.io).into(), transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.stats.send_eagain.fetch_add(1, Ordering::Relaxed);
                self.send_blocked.store(true, Ordering::Relaxed);
                Err(e)
            }
            r => r,
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let rx = self.rx.get();
        loop {
            // A readiness wait may be pending from an earlier call: poll it first.
            {
                let mut armed = rx.armed.borrow_mut();
                if let Some(fut) = armed.as_mut() {
                    match fut.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        // Readable (or an error, which the receive below reports).
                        Poll::Ready(_) => *armed = None,
                    }
                }
            }
            self.stats.recv_calls.fetch_add(1, Ordering::Relaxed);
            match self.state.recv((&self.io).into(), bufs, meta) {
                Ok(n) => {
                    self.stats
                        .recv_datagrams
                        .fetch_add(n as u64, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.peek_waits.fetch_add(1, Ordering::Relaxed);
                    let peeker = rx.peeker.clone();
                    *rx.armed.borrow_mut() = Some(Box::pin(async move {
                        let mut one = [0u8; 1];
                        peeker
                            .peek_from(&mut one)
                            .await
                            .map(|(n, _)| n)
                            .map_err(io::Error::from)
                    }));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }
    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// Write readiness. UDP sends rarely hit `EAGAIN`; when they do we retry after a short glommio
/// sleep (glommio 0.9 keeps its io_uring POLL_ADD source crate-private).
struct GlommioUdpPoller {
    sock: Arc<GlommioUdpSocket>,
    backoff: OnThread<Option<glommio::timer::Timer>>,
}

impl fmt::Debug for GlommioUdpPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GlommioUdpPoller")
    }
}

const SEND_BACKOFF: Duration = Duration::from_micros(200);

impl UdpPoller for GlommioUdpPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.sock.send_blocked.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        let timer = this
            .backoff
            .get_mut()
            .get_or_insert_with(|| glommio::timer::Timer::new(SEND_BACKOFF));
        match Pin::new(timer).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                *this.backoff.get_mut() = None;
                this.sock.send_blocked.store(false, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
        }
    }
}
