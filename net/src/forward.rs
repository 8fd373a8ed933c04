//! Node-to-node vote forwarding over `--internal` (DESIGN §4.1): any node accepts any vote and
//! hands the ones it does not own to the owning node, whose answer comes after its commit.
//!
//! Each core keeps one persistent TCP connection per peer node ([`Forwarder`]); the frames
//! are `votes_core::forward`'s. Sending is batched: votes queued while a write is in progress
//! leave together in the next write, so under load one syscall carries many votes. The
//! listening side ([`serve_forwarded`]) opens with a fresh [`Challenge`], and the connecting side
//! proves it knows the fleet's forwarding key with a [`Hello`] that signs it (a hello recorded
//! on the wire opens no other link); anything else is refused. The links are not encrypted:
//! `--internal` belongs on the fleet's private network.
//!
//! Bounds: votes in flight per peer and per accepted connection, the bytes a frame may claim,
//! the time to connect and to say hello. A vote whose connection breaks before its answer is
//! answered `503`: it may have committed, and the voter's retry then gets `409` (§3.2).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use votes_core::ErrorCode;
use votes_core::forward::{
    Challenge, FRAME_MAX, ForwardAnswer, ForwardOutcome, ForwardedVote, Frame, Hello, decode_frame,
};

use crate::httpd::LocalBoxFuture;
use crate::mesh::{ReplyRx, ReplyTx, reply_channel};
use crate::signal::{LocalSignal, within};

/// Limits of the forwarding links.
#[derive(Clone, Debug)]
pub struct ForwardLimits {
    /// Votes awaiting an answer on one link (per core and peer, or per accepted connection);
    /// past it a vote is refused at once.
    pub max_in_flight: usize,
    pub connect_timeout: Duration,
    /// After a failed connection, votes for that peer are refused for this long.
    pub retry_after: Duration,
    /// Time the connecting side has to send its hello.
    pub hello_timeout: Duration,
    /// Links a core accepts at once (a fleet needs one per peer core); beyond it a new
    /// connection is closed at accept.
    pub max_links: usize,
    /// Connections a core holds that have not proven themselves yet (no valid hello), in all
    /// and per source address: anyone who reaches `--internal` can open connections, and
    /// without these bounds silent ones would hold every link slot for `hello_timeout` each.
    pub max_handshaking: usize,
    pub max_handshaking_per_addr: usize,
    /// A link with votes waiting and no answer for this long is closed (its votes answer
    /// 503): the peer is stopped or cut off without the connection breaking. Above the
    /// owner's longest commit.
    pub answer_stall: Duration,
}

impl Default for ForwardLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 8192,
            connect_timeout: Duration::from_secs(1),
            retry_after: Duration::from_millis(250),
            hello_timeout: Duration::from_secs(5),
            max_links: 1024,
            max_handshaking: 64,
            max_handshaking_per_addr: 8,
            answer_stall: Duration::from_secs(30),
        }
    }
}

/// Why a vote was not forwarded; the edge answers `503` either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardRefused {
    #[error("the link to the owner is full")]
    Full,
    #[error("the owner's node cannot be reached now")]
    Unreachable,
}

/// One core's counters of forwarding (both directions).
#[derive(Default, Debug)]
pub struct ForwardStats {
    /// Votes sent to peers.
    pub sent: Cell<u64>,
    /// Answers received from peers.
    pub answered: Cell<u64>,
    /// Votes refused before sending (link full or peer unreachable).
    pub refused: Cell<u64>,
    /// Votes whose link broke before the answer came.
    pub broken: Cell<u64>,
    /// Writes to peers: `sent / writes` is the batching.
    pub writes: Cell<u64>,
    pub connects: Cell<u64>,
    pub connect_failures: Cell<u64>,
    /// Votes received from peers.
    pub received: Cell<u64>,
    /// Connections refused at hello (bad key or malformed).
    pub rejected_links: Cell<u64>,
}

/// Wakes one waiting task on this core; a notification sent while nobody waits is kept (one),
/// so a writer never misses frames queued between its last write and its next wait.
#[derive(Default)]
struct Notify {
    pending: Cell<bool>,
    waker: Cell<Option<std::task::Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.pending.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    async fn notified(&self) {
        std::future::poll_fn(|cx| {
            if self.pending.replace(false) {
                std::task::Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

enum LinkState {
    Connecting,
    Up,
    Down { until: Instant },
}

/// One link to a peer node: frames waiting to be written, votes waiting for answers.
struct Link {
    addr: SocketAddr,
    state: Cell<LinkState>,
    out: RefCell<Vec<u8>>,
    waiting: RefCell<HashMap<u64, ReplyTx<ForwardOutcome>>>,
    next_id: Cell<u64>,
    wake_writer: Notify,
    /// When the link last made progress: an answer, or a vote while none waited.
    last_progress: Cell<Instant>,
}

impl Link {
    fn fail_all(&self, stats: &ForwardStats) {
        self.out.borrow_mut().clear();
        for (_, reply) in self.waiting.borrow_mut().drain() {
            bump(&stats.broken);
            let _ = reply.send(ForwardOutcome::Rejected {
                code: ErrorCode::Unavailable,
            });
        }
    }
}

/// The forwarding side of one core: a link per peer, opened on first use.
pub struct Forwarder {
    node: String,
    key: Rc<[u8]>,
    limits: ForwardLimits,
    links: RefCell<HashMap<SocketAddr, Rc<Link>>>,
    pub stats: Rc<ForwardStats>,
}

impl Forwarder {
    /// `node` names this node in its hellos; `key` is the fleet's forwarding key.
    pub fn new(node: String, key: Rc<[u8]>, limits: ForwardLimits) -> Rc<Self> {
        assert!(limits.max_in_flight > 0);
        Rc::new(Self {
            node,
            key,
            limits,
            links: RefCell::new(HashMap::new()),
            stats: Rc::new(ForwardStats::default()),
        })
    }

    /// Queues `vote` (its `id` is set here) for the node listening on `peer`; the answer comes
    /// on the returned receiver: the owner's verdict, or `503` if the link breaks first.
    pub fn forward(
        self: &Rc<Self>,
        peer: SocketAddr,
        mut vote: ForwardedVote,
    ) -> Result<ReplyRx<ForwardOutcome>, ForwardRefused> {
        let link = self.link(peer);
        match link.state.replace(LinkState::Connecting) {
            LinkState::Down { until } if Instant::now() < until => {
                link.state.set(LinkState::Down { until });
                bump(&self.stats.refused);
                return Err(ForwardRefused::Unreachable);
            }
            LinkState::Down { .. } => {
                // Time to try again; the state is Connecting now.
                glommio::spawn_local(run_link(self.clone(), link.clone())).detach();
            }
            other => link.state.set(other),
        }
        if link.waiting.borrow().len() >= self.limits.max_in_flight {
            bump(&self.stats.refused);
            return Err(ForwardRefused::Full);
        }
        let id = link.next_id.get();
        link.next_id.set(id + 1);
        vote.id = id;
        let (tx, rx) = reply_channel();
        if link.waiting.borrow().is_empty() {
            link.last_progress.set(Instant::now());
        }
        link.waiting.borrow_mut().insert(id, tx);
        Frame::Vote(vote).encode_into(&mut link.out.borrow_mut());
        bump(&self.stats.sent);
        link.wake_writer.notify();
        Ok(rx)
    }

    fn link(self: &Rc<Self>, peer: SocketAddr) -> Rc<Link> {
        if let Some(l) = self.links.borrow().get(&peer) {
            return l.clone();
        }
        let link = Rc::new(Link {
            addr: peer,
            state: Cell::new(LinkState::Connecting),
            out: RefCell::new(Vec::with_capacity(16 << 10)),
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            wake_writer: Notify::default(),
            last_progress: Cell::new(Instant::now()),
        });
        self.links.borrow_mut().insert(peer, link.clone());
        glommio::spawn_local(run_link(self.clone(), link.clone())).detach();
        link
    }

    /// Votes waiting for an answer on all links.
    pub fn in_flight(&self) -> usize {
        self.links
            .borrow()
            .values()
            .map(|l| l.waiting.borrow().len())
            .sum()
    }
}

/// Connects, says hello, then writes and reads until the connection breaks; every vote still
/// waiting is then answered `503` and the link stays down for `retry_after`.
async fn run_link(fwd: Rc<Forwarder>, link: Rc<Link>) {
    let connected = within(fwd.limits.connect_timeout, async {
        TcpStream::connect(link.addr)
            .await
            .map_err(std::io::Error::from)
    })
    .await;
    let stream = match connected {
        Some(Ok(s)) => s,
        failed => {
            let e = failed.map_or_else(
                || "timed out".to_owned(),
                |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
            );
            bump(&fwd.stats.connect_failures);
            tracing::debug!(peer = %link.addr, error = %e, "forwarding link: cannot connect");
            link_down(&fwd, &link);
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    bump(&fwd.stats.connects);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut chunk = vec![0u8; 16 << 10];
    // The owner speaks first: a fresh challenge our hello must sign.
    let challenge = within(
        fwd.limits.hello_timeout,
        read_frame(&mut reader, &mut buf, &mut chunk),
    )
    .await;
    let challenge = match challenge {
        Some(Ok(Frame::Challenge(c))) => c,
        other => {
            tracing::warn!(peer = %link.addr, outcome = ?other.map(|r| r.map(|f| std::mem::discriminant(&f))), "forwarding link: no challenge from the owner");
            link_down(&fwd, &link);
            return;
        }
    };
    let mut hello = Vec::with_capacity(128);
    Frame::Hello(Hello::sign(&fwd.key, &fwd.node, rand::random(), &challenge))
        .encode_into(&mut hello);
    if writer.write_all(&hello).await.is_err() {
        link_down(&fwd, &link);
        return;
    }
    link.state.set(LinkState::Up);
    let write = async {
        let mut buf = Vec::with_capacity(16 << 10);
        loop {
            std::mem::swap(&mut buf, &mut link.out.borrow_mut());
            if buf.is_empty() {
                link.wake_writer.notified().await;
                continue;
            }
            if writer.write_all(&buf).await.is_err() {
                return;
            }
            bump(&fwd.stats.writes);
            buf.clear();
        }
    };
    let read = async {
        loop {
            let mut at = 0;
            loop {
                match decode_frame(&buf[at..]) {
                    Ok(Some((Frame::Answer(ForwardAnswer { id, outcome }), used))) => {
                        at += used;
                        bump(&fwd.stats.answered);
                        link.last_progress.set(Instant::now());
                        // A voter who gave up has dropped the receiver: nothing to tell.
                        if let Some(reply) = link.waiting.borrow_mut().remove(&id) {
                            let _ = reply.send(outcome);
                        }
                    }
                    Ok(Some((other, _))) => {
                        tracing::warn!(peer = %link.addr, frame = ?std::mem::discriminant(&other), "forwarding link: the owner sent a frame only a client sends");
                        return;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(peer = %link.addr, error = %e, "forwarding link: undecodable answer");
                        return;
                    }
                }
            }
            buf.drain(..at);
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let watch = async {
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            if !link.waiting.borrow().is_empty()
                && link.last_progress.get().elapsed() > fwd.limits.answer_stall
            {
                tracing::warn!(peer = %link.addr, waiting = link.waiting.borrow().len(), "forwarding link: no answer in time; closing it");
                return;
            }
        }
    };
    futures_lite::future::or(futures_lite::future::or(write, read), watch).await;
    tracing::info!(peer = %link.addr, "forwarding link closed");
    link_down(&fwd, &link);
}

fn link_down(fwd: &Forwarder, link: &Link) {
    link.fail_all(&fwd.stats);
    link.state.set(LinkState::Down {
        until: Instant::now() + fwd.limits.retry_after,
    });
}

/// The next whole frame from `reader`, keeping what follows it in `buf`.
async fn read_frame<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> std::io::Result<Frame> {
    loop {
        match decode_frame(buf) {
            Ok(Some((frame, used))) => {
                buf.drain(..used);
                return Ok(frame);
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        }
        let n = reader.read(chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Bytes of answers waiting for a slow peer before its link stops being read.
const ANSWERS_BUFFERED_MAX: usize = 1 << 20;

/// What the owning node does with a forwarded vote.
pub trait ForwardHandler: 'static {
    /// The verdict on `vote`, after its commit (or why not).
    fn vote(&self, vote: ForwardedVote) -> LocalBoxFuture<'static, ForwardOutcome>;
}

/// Accepts peers' links on this core's share of `--internal` until `shutdown`.
pub async fn serve_forwarded(
    listener: TcpListener,
    key: Rc<[u8]>,
    handler: Rc<dyn ForwardHandler>,
    limits: ForwardLimits,
    stats: Rc<ForwardStats>,
    shutdown: LocalSignal,
) {
    let open = Rc::new(Cell::new(0usize));
    let handshaking = Rc::new(RefCell::new(Handshaking::default()));
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "internal listener: accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let from = stream.peer_addr().map(|a| a.ip().to_canonical()).ok();
        let unproven = from.and_then(|ip| Handshaking::admit(&handshaking, ip, &limits));
        let Some(unproven) = unproven.filter(|_| open.get() < limits.max_links) else {
            bump(&stats.rejected_links);
            drop(stream);
            continue;
        };
        open.set(open.get() + 1);
        let link = serve_link(
            stream,
            key.clone(),
            handler.clone(),
            limits.clone(),
            stats.clone(),
            unproven,
        );
        let open = open.clone();
        glommio::spawn_local(async move {
            link.await;
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// The connections of one core that have not sent a valid hello yet, by source address.
#[derive(Default)]
struct Handshaking {
    all: usize,
    by_addr: std::collections::HashMap<std::net::IpAddr, usize>,
}

impl Handshaking {
    /// Counts a new connection from `ip`, or `None` when it is over a bound.
    fn admit(
        this: &Rc<RefCell<Self>>,
        ip: std::net::IpAddr,
        limits: &ForwardLimits,
    ) -> Option<Unproven> {
        let mut h = this.borrow_mut();
        let n = h.by_addr.get(&ip).copied().unwrap_or(0);
        if h.all >= limits.max_handshaking || n >= limits.max_handshaking_per_addr {
            return None;
        }
        h.all += 1;
        h.by_addr.insert(ip, n + 1);
        Some(Unproven {
            of: this.clone(),
            ip,
        })
    }
}

/// A connection still in its handshake; counted until dropped (hello verified or refused).
struct Unproven {
    of: Rc<RefCell<Handshaking>>,
    ip: std::net::IpAddr,
}

impl Drop for Unproven {
    fn drop(&mut self) {
        let mut h = self.of.borrow_mut();
        assert!(h.all > 0, "an unproven connection is released once");
        h.all -= 1;
        let n = h
            .by_addr
            .get_mut(&self.ip)
            .expect("an unproven connection's address is counted");
        *n -= 1;
        if *n == 0 {
            h.by_addr.remove(&self.ip);
        }
    }
}

async fn serve_link(
    stream: TcpStream,
    key: Rc<[u8]>,
    handler: Rc<dyn ForwardHandler>,
    limits: ForwardLimits,
    stats: Rc<ForwardStats>,
    unproven: Unproven,
) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut chunk = vec![0u8; 16 << 10];

    // A fresh challenge, then the hello that signs it, within its time.
    let challenge = Challenge {
        nonce: rand::random(),
    };
    let mut first = Vec::with_capacity(64);
    Frame::Challenge(challenge).encode_into(&mut first);
    let hello = within(limits.hello_timeout, async {
        writer.write_all(&first).await?;
        match read_frame(&mut reader, &mut buf, &mut chunk).await? {
            Frame::Hello(h) => Ok(h),
            _ => Err(std::io::Error::other("the first frame is not a hello")),
        }
    })
    .await;
    let hello = hello
        .unwrap_or_else(|| Err(std::io::ErrorKind::TimedOut.into()))
        .map_err(|e| e.to_string())
        .and_then(|h| {
            h.verify(&key, &challenge).map_err(|e| e.to_string())?;
            Ok(h)
        });
    // Proven or refused: either way no longer a handshake.
    drop(unproven);
    let hello = match hello {
        Ok(h) => h,
        Err(why) => {
            bump(&stats.rejected_links);
            tracing::warn!(?peer, %why, "internal link refused");
            return;
        }
    };
    tracing::info!(?peer, node = %hello.node, "forwarding link from a peer");

    // Answers queued for the writer, its wake-up, and the reader's wake-up once the writer
    // drained them.
    let out = Rc::new((
        RefCell::new(Vec::<u8>::with_capacity(16 << 10)),
        Notify::default(),
        Notify::default(),
    ));
    let in_flight = Rc::new(Cell::new(0usize));
    let write = {
        let out = out.clone();
        async move {
            let mut pending = Vec::with_capacity(16 << 10);
            loop {
                std::mem::swap(&mut pending, &mut out.0.borrow_mut());
                if pending.is_empty() {
                    out.1.notified().await;
                    continue;
                }
                if writer.write_all(&pending).await.is_err() {
                    return;
                }
                pending.clear();
                out.2.notify();
            }
        }
    };
    let read = async {
        loop {
            let mut at = 0;
            loop {
                match decode_frame(&buf[at..]) {
                    Ok(Some((Frame::Vote(vote), used))) => {
                        at += used;
                        bump(&stats.received);
                        let id = vote.id;
                        if in_flight.get() >= limits.max_in_flight {
                            Frame::Answer(ForwardAnswer {
                                id,
                                outcome: ForwardOutcome::Rejected {
                                    code: ErrorCode::Unavailable,
                                },
                            })
                            .encode_into(&mut out.0.borrow_mut());
                            out.1.notify();
                            continue;
                        }
                        in_flight.set(in_flight.get() + 1);
                        let verdict = handler.vote(vote);
                        let (out, in_flight) = (out.clone(), in_flight.clone());
                        glommio::spawn_local(async move {
                            let outcome = verdict.await;
                            in_flight.set(in_flight.get() - 1);
                            Frame::Answer(ForwardAnswer { id, outcome })
                                .encode_into(&mut out.0.borrow_mut());
                            out.1.notify();
                        })
                        .detach();
                    }
                    Ok(Some(_)) => {
                        tracing::warn!(
                            ?peer,
                            "internal link: a peer sent a frame only an owner sends"
                        );
                        return;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(?peer, error = %e, "internal link: undecodable frame");
                        return;
                    }
                }
            }
            buf.drain(..at);
            // A peer that sends without reading its answers is not read either.
            while out.0.borrow().len() > ANSWERS_BUFFERED_MAX {
                out.2.notified().await;
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    futures_lite::future::or(write, read).await;
    tracing::info!(?peer, node = %hello.node, "forwarding link from a peer closed");
}

const _: () = assert!(FRAME_MAX <= 16 << 10, "one read chunk holds a whole frame");
