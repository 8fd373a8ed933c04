//! Node-to-node vote forwarding over `--internal` (docs/design.md §4.1): any node accepts any vote and
//! hands the ones it does not own to the owning node, whose answer comes after its commit.
//!
//! Each core keeps one persistent TCP connection per peer node ([`Forwarder`]); the frames
//! are `votes_core::forward`'s. Sending is batched: votes queued while a write is in progress
//! leave together in the next write, so under load one syscall carries many votes.
//!
//! A link is secured by [`LinkSecurity`]: mutual TLS with the fleet's CA (production; each end
//! refuses a peer without a fleet certificate), or, for development, plaintext under the
//! fleet's own forwarding key (`VOTES_FORWARD_KEY`): the listening side ([`serve_forwarded`])
//! opens with a fresh [`Challenge`] naming itself, the connecting side proves it knows the key
//! with a [`Hello`] that signs it, and every later frame in both directions carries a MAC with
//! its direction and sequence number ([`LinkSeal`]). A listener takes connections only from
//! the addresses of the fleet map's members ([`ForwardHandler::admits`]); the connecting side
//! takes only answers to votes it sent, for the partition it sent them to.
//!
//! Bounds: votes in flight per peer and per accepted connection, the bytes a frame may claim,
//! the time to connect and to finish the handshake, the connections still in it. A vote whose
//! connection breaks before its answer is answered `503`: it may have committed, and the
//! voter's retry then gets `409` (§3.2).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use votes_core::forward::{
    Challenge, FRAME_MAX, ForwardAnswer, ForwardError, ForwardedVote, Frame, Hello, LinkEnd,
    LinkSeal, decode_frame,
};
use votes_core::{ErrorCode, VoteOutcome};

use crate::tls::{ALPN_FORWARD, InternalTls};

use crate::httpd::LocalBoxFuture;
use crate::mesh::{ReplyRx, ReplyTx, reply_channel};
use crate::signal::{LocalSignal, within};

/// How the forwarding links are secured (the same on every node of a fleet).
#[derive(Clone, Debug)]
pub enum LinkSecurity {
    /// Mutual TLS 1.3 with the fleet's CA: the production mode.
    Tls(InternalTls),
    /// Plaintext, every frame sealed under a key derived from `VOTES_FORWARD_KEY`
    /// ([`votes_core::forward::derive_key`]): development, or a network the operator trusts
    /// not to read votes; frames cannot be forged, replayed or altered, but they are readable.
    Keyed(Arc<[u8]>),
}

/// The frames of one established link in one direction or both: as they are inside TLS, or
/// sealed on a plaintext link.
enum Codec {
    Plain,
    Sealed(LinkSeal),
}

impl Codec {
    fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        match self {
            Codec::Plain => frame.encode_into(out),
            Codec::Sealed(seal) => seal.seal_into(frame, out),
        }
    }

    fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, ForwardError> {
        match self {
            Codec::Plain => decode_frame(buf),
            Codec::Sealed(seal) => seal.open(buf),
        }
    }
}

/// A link's byte stream: TCP, or TLS over TCP.
trait Duplex: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Duplex for T {}
type LinkStream = Box<dyn Duplex>;

/// The frames arriving on one link: the bytes read from it and not yet decoded, at most one
/// read chunk beyond a whole frame.
struct FrameReader {
    reader: futures_lite::io::ReadHalf<LinkStream>,
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    at: usize,
    chunk: Vec<u8>,
}

impl FrameReader {
    /// `early` holds what was read from the link before its frames were (with the handshake).
    fn new(reader: futures_lite::io::ReadHalf<LinkStream>, early: Vec<u8>) -> Self {
        let mut buf = Vec::with_capacity(16 << 10);
        buf.extend_from_slice(&early);
        Self {
            reader,
            buf,
            at: 0,
            chunk: vec![0u8; 16 << 10],
        }
    }

    /// The next whole frame among the bytes read; `None` when more must be read first.
    fn next(&mut self, codec: &RefCell<Codec>) -> Result<Option<Frame>, ForwardError> {
        let decoded = codec.borrow_mut().decode(&self.buf[self.at..])?;
        Ok(decoded.map(|(frame, used)| {
            self.at += used;
            frame
        }))
    }

    /// Reads more of the link; `false` once it is closed or broken.
    async fn fill(&mut self) -> bool {
        self.buf.drain(..self.at);
        self.at = 0;
        match self.reader.read(&mut self.chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&self.chunk[..n]);
                true
            }
        }
    }
}

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
    /// Connections refused in their handshake (no fleet certificate, bad key, malformed, late).
    pub rejected_links: Cell<u64>,
    /// Connections closed at accept: their source is no member's address in the fleet map.
    pub refused_sources: Cell<u64>,
    /// Links closed on a frame that failed its seal or did not decode after the handshake
    /// (forged, replayed, reflected, modified), either direction.
    pub refused_frames: Cell<u64>,
    /// Links closed on an answer to no vote in flight or for another partition than the
    /// vote's.
    pub bad_answers: Cell<u64>,
    /// Votes received for an election this node did not know open yet, held until its view
    /// caught up or the hold's bound passed (the owning app counts these three).
    pub held: Cell<u64>,
    /// Held votes whose election was still unknown or a draft at the bound: refused.
    pub held_refused: Cell<u64>,
    /// Votes refused with 503 because the core held as many as it may.
    pub hold_full: Cell<u64>,
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

/// A vote sent on a link and not answered yet.
struct Waiting {
    partition: u32,
    reply: ReplyTx<VoteOutcome>,
}

/// One link to a peer node: votes waiting to be written (encoded by the writer, which owns
/// the link's seal), votes waiting for answers.
struct Link {
    addr: SocketAddr,
    /// The node the fleet map names at `addr`: a plaintext link's challenge must come from it.
    node: String,
    state: Cell<LinkState>,
    /// Set when the fleet map names another node at `addr`: the link closes.
    retired: Cell<bool>,
    out: RefCell<Vec<ForwardedVote>>,
    waiting: RefCell<HashMap<u64, Waiting>>,
    next_id: Cell<u64>,
    wake_writer: Notify,
    /// When the link last made progress: an answer, or a vote while none waited.
    last_progress: Cell<Instant>,
}

impl Link {
    fn fail_all(&self, stats: &ForwardStats) {
        self.out.borrow_mut().clear();
        for (_, Waiting { reply, .. }) in self.waiting.borrow_mut().drain() {
            bump(&stats.broken);
            let _ = reply.send(VoteOutcome::Rejected(ErrorCode::Unavailable));
        }
    }
}

/// The forwarding side of one core: a link per peer, opened on first use.
pub struct Forwarder {
    node: String,
    security: LinkSecurity,
    limits: ForwardLimits,
    links: RefCell<HashMap<SocketAddr, Rc<Link>>>,
    pub stats: Rc<ForwardStats>,
}

impl Forwarder {
    /// `node` names this node in its hellos.
    pub fn new(node: String, security: LinkSecurity, limits: ForwardLimits) -> Rc<Self> {
        assert!(limits.max_in_flight > 0);
        Rc::new(Self {
            node,
            security,
            limits,
            links: RefCell::new(HashMap::new()),
            stats: Rc::new(ForwardStats::default()),
        })
    }

    /// Queues `vote` (its `id` is set here) for `owner`, the node listening on `peer`; the
    /// answer comes on the returned receiver: the owner's verdict, or `503` if the link breaks
    /// first.
    pub fn forward(
        self: &Rc<Self>,
        owner: &str,
        peer: SocketAddr,
        mut vote: ForwardedVote,
    ) -> Result<ReplyRx<VoteOutcome>, ForwardRefused> {
        let link = self.link(owner, peer);
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
        let waiting = Waiting {
            partition: vote.partition,
            reply: tx,
        };
        link.waiting.borrow_mut().insert(id, waiting);
        link.out.borrow_mut().push(vote);
        bump(&self.stats.sent);
        link.wake_writer.notify();
        Ok(rx)
    }

    fn link(self: &Rc<Self>, owner: &str, peer: SocketAddr) -> Rc<Link> {
        if let Some(l) = self.links.borrow().get(&peer) {
            if l.node == owner {
                return l.clone();
            }
            // Another node took over the address: the old link's votes answer 503.
            l.retired.set(true);
            l.wake_writer.notify();
        }
        let link = Rc::new(Link {
            addr: peer,
            node: owner.to_owned(),
            state: Cell::new(LinkState::Connecting),
            retired: Cell::new(false),
            out: RefCell::new(Vec::with_capacity(256)),
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

/// Connects and secures the link, then writes and reads until the connection breaks;
/// every vote still waiting is then answered `503` and the link stays down for `retry_after`.
async fn run_link(fwd: Rc<Forwarder>, link: Rc<Link>) {
    let Some((stream, codec)) = open_link(&fwd, &link).await else {
        link_down(&fwd, &link);
        return;
    };
    link.state.set(LinkState::Up);
    let codec = RefCell::new(codec);
    let (reader, writer) = futures_lite::io::split(stream);
    let write = write_votes(&fwd, &link, &codec, writer);
    let read = read_answers(&fwd, &link, &codec, reader);
    let watch = watch_answers(&fwd, &link);
    futures_lite::future::or(futures_lite::future::or(write, read), watch).await;
    tracing::info!(peer = %link.addr, "forwarding link closed");
    link_down(&fwd, &link);
}

/// Writes the votes queued on the link, all that are queued in one write, until the link is
/// retired or a write fails.
async fn write_votes(
    fwd: &Forwarder,
    link: &Link,
    codec: &RefCell<Codec>,
    writer: futures_lite::io::WriteHalf<LinkStream>,
) {
    let turn = || {
        if link.retired.get() {
            tracing::info!(peer = %link.addr, node = %link.node, "forwarding link: another node has this address now");
            return false;
        }
        true
    };
    let queue = Queue {
        items: &link.out,
        wake: &link.wake_writer,
    };
    write_queued(
        queue,
        codec,
        writer,
        Frame::Vote,
        turn,
        || {},
        || bump(&fwd.stats.writes),
    )
    .await;
}

/// One direction's queue of items to write and the writer's wake-up.
struct Queue<'a, T> {
    items: &'a RefCell<Vec<T>>,
    wake: &'a Notify,
}

/// Writes what `queue` holds as frames, all of it in one write each turn, while `turn()`
/// allows another and until a write fails; `encoded()` runs once a turn's items are taken
/// and encoded, `written()` once they are written.
async fn write_queued<T>(
    queue: Queue<'_, T>,
    codec: &RefCell<Codec>,
    mut writer: futures_lite::io::WriteHalf<LinkStream>,
    frame: impl Fn(T) -> Frame,
    mut turn: impl FnMut() -> bool,
    mut encoded: impl FnMut(),
    mut written: impl FnMut(),
) {
    let mut taken = Vec::with_capacity(256);
    let mut buf = Vec::with_capacity(16 << 10);
    while turn() {
        std::mem::swap(&mut taken, &mut queue.items.borrow_mut());
        if taken.is_empty() {
            queue.wake.notified().await;
            continue;
        }
        {
            let mut codec = codec.borrow_mut();
            for item in taken.drain(..) {
                codec.encode(&frame(item), &mut buf);
            }
        }
        encoded();
        // TLS keeps records the socket could not take yet: only a flush sends them.
        if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        written();
        buf.clear();
    }
}

/// Reads the owner's answers and hands each to its voter, until the link breaks or the owner
/// sends what it must not.
async fn read_answers(
    fwd: &Forwarder,
    link: &Link,
    codec: &RefCell<Codec>,
    reader: futures_lite::io::ReadHalf<LinkStream>,
) {
    let mut frames = FrameReader::new(reader, Vec::new());
    loop {
        match frames.next(codec) {
            Ok(Some(Frame::Answer(answer))) => {
                if !deliver_answer(fwd, link, answer) {
                    return;
                }
            }
            Ok(Some(other)) => {
                bump(&fwd.stats.refused_frames);
                tracing::warn!(peer = %link.addr, frame = ?std::mem::discriminant(&other), "forwarding link: the owner sent a frame only a client sends");
                return;
            }
            Ok(None) => {
                if !frames.fill().await {
                    return;
                }
            }
            Err(e) => {
                bump(&fwd.stats.refused_frames);
                tracing::warn!(peer = %link.addr, error = %e, "forwarding link: refused an answer frame");
                return;
            }
        }
    }
}

/// Hands an answer to the voter waiting for it; `false` (counted, logged) when the answer is
/// to no vote in flight or for another partition than the vote's: the link is then closed.
fn deliver_answer(fwd: &Forwarder, link: &Link, answer: ForwardAnswer) -> bool {
    let ForwardAnswer { id, outcome } = answer;
    bump(&fwd.stats.answered);
    link.last_progress.set(Instant::now());
    let Some(waiting) = link.waiting.borrow_mut().remove(&id) else {
        // Ids are never reused on a link and a vote is answered once.
        bump(&fwd.stats.bad_answers);
        tracing::warn!(peer = %link.addr, id, "forwarding link: an answer to no vote in flight");
        return false;
    };
    if let VoteOutcome::Accepted { partition, .. } = outcome
        && partition != waiting.partition
    {
        bump(&fwd.stats.bad_answers);
        tracing::warn!(peer = %link.addr, id, partition, sent = waiting.partition, "forwarding link: an answer for another partition than the vote's");
        // The vote may have committed: its voter gets 503 and retries.
        let _ = waiting
            .reply
            .send(VoteOutcome::Rejected(ErrorCode::Unavailable));
        return false;
    }
    // A voter who gave up has dropped the receiver: nothing to tell.
    let _ = waiting.reply.send(outcome);
    true
}

/// Returns when votes wait and no answer came within the stall bound: the link is closed.
async fn watch_answers(fwd: &Forwarder, link: &Link) {
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        if !link.waiting.borrow().is_empty()
            && link.last_progress.get().elapsed() > fwd.limits.answer_stall
        {
            tracing::warn!(peer = %link.addr, waiting = link.waiting.borrow().len(), "forwarding link: no answer in time; closing it");
            return;
        }
    }
}

/// Connects to the owner and secures the link (TLS handshake, or challenge and hello), each
/// step within its bound; `None` (logged and counted) when any step fails.
///
/// Long because each step of the opening (connect, TLS handshake or challenge and hello) has its
/// own bound and its own failure to count.
async fn open_link(fwd: &Forwarder, link: &Link) -> Option<(LinkStream, Codec)> {
    let connected = within(fwd.limits.connect_timeout, async {
        TcpStream::connect(link.addr)
            .await
            .map_err(std::io::Error::from)
    })
    .await;
    let tcp = match connected {
        Some(Ok(s)) => s,
        failed => {
            let e = failed.map_or_else(
                || "timed out".to_owned(),
                |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
            );
            bump(&fwd.stats.connect_failures);
            tracing::debug!(peer = %link.addr, error = %e, "forwarding link: cannot connect");
            return None;
        }
    };
    let _ = tcp.set_nodelay(true);
    bump(&fwd.stats.connects);
    let secured = within(fwd.limits.hello_timeout, async {
        match &fwd.security {
            LinkSecurity::Tls(tls) => {
                // The owner's certificate must name the address the fleet map gives for it.
                let name = rustls::pki_types::ServerName::IpAddress(link.addr.ip().into());
                let stream = futures_rustls::TlsConnector::from(tls.client.clone())
                    .connect(name, tcp)
                    .await?;
                // rustls refuses a mismatch, not a server that chose no protocol at all.
                if stream.get_ref().1.alpn_protocol() != Some(ALPN_FORWARD) {
                    return Err(std::io::Error::other(
                        "the owner did not choose votes-forward/2",
                    ));
                }
                Ok((Box::new(stream) as LinkStream, Codec::Plain))
            }
            LinkSecurity::Keyed(key) => {
                let mut stream: LinkStream = Box::new(tcp);
                let mut buf = Vec::with_capacity(512);
                let mut chunk = [0u8; 512];
                // The owner speaks first: who it is, and a fresh challenge our hello must sign.
                let challenge = match read_frame(&mut stream, &mut buf, &mut chunk).await? {
                    Frame::Challenge(c) => c,
                    _ => {
                        return Err(std::io::Error::other(
                            "the owner did not open with a challenge",
                        ));
                    }
                };
                if challenge.node != link.node {
                    return Err(std::io::Error::other(format!(
                        "the challenge comes from node {:?}, the fleet map has {:?} there",
                        challenge.node, link.node
                    )));
                }
                if !buf.is_empty() {
                    return Err(std::io::Error::other("the owner spoke before our hello"));
                }
                let hello = Hello::sign(key, &fwd.node, rand::random(), &challenge);
                let mut out = Vec::with_capacity(128);
                Frame::Hello(hello.clone()).encode_into(&mut out);
                stream.write_all(&out).await?;
                let seal = LinkSeal::new(key, LinkEnd::Edge, &challenge, &hello);
                Ok((stream, Codec::Sealed(seal)))
            }
        }
    })
    .await;
    match secured {
        Some(Ok(link_io)) => Some(link_io),
        other => {
            bump(&fwd.stats.connect_failures);
            let why = match other {
                Some(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            tracing::warn!(peer = %link.addr, node = %link.node, %why, "forwarding link: handshake failed");
            None
        }
    }
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

/// Answers waiting for a slow peer before its link stops being read.
const ANSWERS_BUFFERED_MAX: usize = 32 << 10;

/// What the owning node does with a forwarded vote.
pub trait ForwardHandler: 'static {
    /// The verdict on `vote`, after its commit (or why not).
    fn vote(&self, vote: ForwardedVote) -> LocalBoxFuture<'static, VoteOutcome>;
    /// Whether a connection from `ip` may come from a peer: the address of a member of the
    /// fleet map. Anything else is closed at accept.
    fn admits(&self, ip: IpAddr) -> bool;
}

/// What every accepted link of a core shares.
struct Accepting {
    node: String,
    security: LinkSecurity,
    handler: Rc<dyn ForwardHandler>,
    limits: ForwardLimits,
    stats: Rc<ForwardStats>,
}

/// Accepts peers' links on this core's share of `--internal` until `shutdown`; `node` names
/// this node in its challenges.
pub async fn serve_forwarded(
    listener: TcpListener,
    node: String,
    security: LinkSecurity,
    handler: Rc<dyn ForwardHandler>,
    limits: ForwardLimits,
    stats: Rc<ForwardStats>,
    shutdown: LocalSignal,
) {
    let ctx = Rc::new(Accepting {
        node,
        security,
        handler,
        limits,
        stats,
    });
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
        let Some(from) = stream.peer_addr().ok().map(|a| a.ip().to_canonical()) else {
            continue;
        };
        if !ctx.handler.admits(from) {
            bump(&ctx.stats.refused_sources);
            tracing::debug!(%from, "internal listener: a connection from outside the fleet map");
            continue;
        }
        let unproven = Handshaking::admit(&handshaking, from, &ctx.limits);
        let Some(unproven) = unproven.filter(|_| open.get() < ctx.limits.max_links) else {
            bump(&ctx.stats.rejected_links);
            drop(stream);
            continue;
        };
        open.set(open.get() + 1);
        let link = serve_link(stream, ctx.clone(), unproven);
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

/// An accepted link once secured: its stream, its codec, the peer's name, and the bytes read
/// after the hello (a peer sends its first votes right behind it).
type Secured = (LinkStream, Codec, String, Vec<u8>);

/// Secures an accepted link (TLS handshake, or challenge and hello), each step within the
/// hello bound; `Err` says why it was refused.
async fn accept_link(tcp: TcpStream, ctx: &Accepting) -> Result<Secured, String> {
    let secured = within(ctx.limits.hello_timeout, async {
        match &ctx.security {
            LinkSecurity::Tls(tls) => {
                let stream = futures_rustls::TlsAcceptor::from(tls.server.clone())
                    .accept(tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                // rustls refuses a mismatch, not a client that offered no protocol at all.
                if stream.get_ref().1.alpn_protocol() != Some(ALPN_FORWARD) {
                    return Err("the peer did not offer votes-forward/2".to_owned());
                }
                Ok((
                    Box::new(stream) as LinkStream,
                    Codec::Plain,
                    "(TLS)".to_owned(),
                    Vec::new(),
                ))
            }
            LinkSecurity::Keyed(key) => {
                let mut stream: LinkStream = Box::new(tcp);
                let challenge = Challenge {
                    node: ctx.node.clone(),
                    nonce: rand::random(),
                };
                let mut out = Vec::with_capacity(128);
                Frame::Challenge(challenge.clone()).encode_into(&mut out);
                stream.write_all(&out).await.map_err(|e| e.to_string())?;
                let mut buf = Vec::with_capacity(512);
                let mut chunk = [0u8; 512];
                let hello = match read_frame(&mut stream, &mut buf, &mut chunk).await {
                    Ok(Frame::Hello(h)) => h,
                    Ok(_) => return Err("the first frame is not a hello".to_owned()),
                    Err(e) => return Err(e.to_string()),
                };
                hello.verify(key, &challenge).map_err(|e| e.to_string())?;
                let seal = LinkSeal::new(key, LinkEnd::Owner, &challenge, &hello);
                Ok((stream, Codec::Sealed(seal), hello.node, buf))
            }
        }
    })
    .await;
    secured.unwrap_or_else(|| Err("no handshake in time".to_owned()))
}

/// The owner's side of a link: the handshake, then votes read and handed to the shards, their
/// answers written back, until the link breaks or the peer sends what it must not.
async fn serve_link(stream: TcpStream, ctx: Rc<Accepting>, unproven: Unproven) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let accepted = accept_link(stream, &ctx).await;
    // Proven or refused: either way no longer a handshake.
    drop(unproven);
    let (stream, codec, node, early) = match accepted {
        Ok(a) => a,
        Err(why) => {
            bump(&ctx.stats.rejected_links);
            tracing::warn!(?peer, %why, "internal link refused");
            return;
        }
    };
    tracing::info!(?peer, %node, "forwarding link from a peer");
    let (reader, writer) = futures_lite::io::split(stream);
    let codec = RefCell::new(codec);
    let answers = Rc::new(AnswerQueue::default());
    let write = write_answers(&answers, &codec, writer);
    let read = read_votes(&ctx, peer, &codec, reader, early, &answers);
    futures_lite::future::or(write, read).await;
    tracing::info!(?peer, %node, "forwarding link from a peer closed");
}

/// Answers queued for the owner side's writer, its wake-up, and the reader's wake-up once the
/// writer took them.
#[derive(Default)]
struct AnswerQueue {
    queued: RefCell<Vec<ForwardAnswer>>,
    writer: Notify,
    reader: Notify,
}

impl AnswerQueue {
    fn push(&self, answer: ForwardAnswer) {
        self.queued.borrow_mut().push(answer);
        self.writer.notify();
    }
}

/// Writes the queued answers, all that are queued in one write, until a write fails; the
/// reader, held back while too many wait, is woken once they are taken.
async fn write_answers(
    answers: &AnswerQueue,
    codec: &RefCell<Codec>,
    writer: futures_lite::io::WriteHalf<LinkStream>,
) {
    let queue = Queue {
        items: &answers.queued,
        wake: &answers.writer,
    };
    let encoded = || answers.reader.notify();
    write_queued(queue, codec, writer, Frame::Answer, || true, encoded, || {}).await;
}

/// Reads the peer's votes (after the `early` bytes read with the handshake) and hands each
/// to the shards, at most `max_in_flight` at once (beyond, a vote is answered `503` at
/// once); a peer that sends without reading its answers is not read either.
async fn read_votes(
    ctx: &Accepting,
    peer: Option<std::net::SocketAddr>,
    codec: &RefCell<Codec>,
    reader: futures_lite::io::ReadHalf<LinkStream>,
    early: Vec<u8>,
    answers: &Rc<AnswerQueue>,
) {
    let in_flight = Rc::new(Cell::new(0usize));
    let mut frames = FrameReader::new(reader, early);
    loop {
        match frames.next(codec) {
            Ok(Some(Frame::Vote(vote))) => {
                bump(&ctx.stats.received);
                let id = vote.id;
                if in_flight.get() >= ctx.limits.max_in_flight {
                    answers.push(ForwardAnswer {
                        id,
                        outcome: VoteOutcome::Rejected(ErrorCode::Unavailable),
                    });
                    continue;
                }
                in_flight.set(in_flight.get() + 1);
                let verdict = ctx.handler.vote(vote);
                let (answers, in_flight) = (answers.clone(), in_flight.clone());
                glommio::spawn_local(async move {
                    let outcome = verdict.await;
                    in_flight.set(in_flight.get() - 1);
                    answers.push(ForwardAnswer { id, outcome });
                })
                .detach();
            }
            Ok(Some(_)) => {
                bump(&ctx.stats.refused_frames);
                tracing::warn!(
                    ?peer,
                    "internal link: a peer sent a frame only an owner sends"
                );
                return;
            }
            Ok(None) => {
                while answers.queued.borrow().len() > ANSWERS_BUFFERED_MAX {
                    answers.reader.notified().await;
                }
                if !frames.fill().await {
                    return;
                }
            }
            Err(e) => {
                bump(&ctx.stats.refused_frames);
                tracing::warn!(?peer, error = %e, "internal link: refused a frame");
                return;
            }
        }
    }
}

const _: () = assert!(FRAME_MAX <= 16 << 10, "one read chunk holds a whole frame");

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            addr: "127.0.0.1:9".parse().unwrap(),
            node: "node-b".to_owned(),
            state: Cell::new(LinkState::Up),
            retired: Cell::new(false),
            out: RefCell::new(Vec::new()),
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            wake_writer: Notify::default(),
            last_progress: Cell::new(Instant::now()),
        }
    }

    fn waiting(link: &Link, id: u64, partition: u32) -> ReplyRx<VoteOutcome> {
        let (reply, rx) = reply_channel();
        link.waiting
            .borrow_mut()
            .insert(id, Waiting { partition, reply });
        rx
    }

    fn answered(rx: ReplyRx<VoteOutcome>) -> VoteOutcome {
        futures_lite::future::block_on(rx).expect("the voter was answered")
    }

    /// The edge takes from the owner only the answer to a vote it sent, for that vote's
    /// partition, once: anything else closes the link and is counted, and a vote whose answer
    /// names another partition is answered 503 (it may have committed; the retry tells).
    #[test]
    fn an_answer_to_no_vote_sent_or_for_another_partition_is_refused_and_counted() {
        let fwd = Forwarder::new(
            "node-a".to_owned(),
            LinkSecurity::Keyed(Arc::from(&b"key"[..])),
            ForwardLimits::default(),
        );
        let link = link();
        let accepted = |partition| VoteOutcome::Accepted {
            partition,
            offset: 41,
        };

        let sent = waiting(&link, 1, 3);
        assert!(deliver_answer(
            &fwd,
            &link,
            ForwardAnswer {
                id: 1,
                outcome: accepted(3)
            }
        ));
        assert_eq!(answered(sent), accepted(3), "the vote's own answer passes");
        assert_eq!(fwd.stats.bad_answers.get(), 0);

        for id in [1, 7] {
            assert!(
                !deliver_answer(
                    &fwd,
                    &link,
                    ForwardAnswer {
                        id,
                        outcome: accepted(3)
                    }
                ),
                "answer {id}: answered already or never sent"
            );
        }
        assert_eq!(fwd.stats.bad_answers.get(), 2);

        let sent = waiting(&link, 2, 3);
        assert!(!deliver_answer(
            &fwd,
            &link,
            ForwardAnswer {
                id: 2,
                outcome: accepted(0)
            }
        ));
        assert_eq!(
            answered(sent),
            VoteOutcome::Rejected(ErrorCode::Unavailable),
            "an answer for another partition is not the voter's 202"
        );
        assert_eq!(fwd.stats.bad_answers.get(), 3);
        assert!(link.waiting.borrow().is_empty());

        // A refusal names no partition: the vote's own refusal passes.
        let sent = waiting(&link, 3, 3);
        let refused = VoteOutcome::Rejected(ErrorCode::NotFound);
        assert!(deliver_answer(
            &fwd,
            &link,
            ForwardAnswer {
                id: 3,
                outcome: refused
            }
        ));
        assert_eq!(answered(sent), refused);
        assert_eq!(fwd.stats.bad_answers.get(), 3);
        assert_eq!(fwd.stats.answered.get(), 5);
    }
}
