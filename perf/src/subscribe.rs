//! The subscriber-scale run behind `votes-sse`: many live-results subscribers
//! (`GET /v1/elections/{id}/results/stream`, docs/design.md §4.2) on one node, while a trickle of votes
//! changes the totals, and how long each change takes from commit to every subscriber.
//!
//! Phases, each bounded in time:
//! 1. *connect*: subscriber `i` starts at `i / connect_rate` seconds, a task holding one
//!    HTTP/1.1 connection from source address `127.0.0.(1 + i % source_addrs)`, read by the
//!    small incremental reader of [`crate::sse`] (a few hundred bytes of state per subscriber);
//!    the phase ends when all have received their first event, or at the grace deadline;
//! 2. *vote*: votes of fresh voters at `vote_rate` (open loop) over a few keep-alive
//!    connections for `duration`; the `k`-th `202` to arrive stamps slot `k` of an append-only
//!    array (a `202` is sent only after the Kafka commit, so its arrival bounds the commit time
//!    of the `k`-th committed vote from above);
//! 3. *settle*: until every subscriber has seen the final total (`baseline + accepted`), or
//!    the settle deadline.
//!
//! Delay: when a subscriber reads an event with total `T` after having seen `L`, every vote
//! ordinal in `(L, T]` (counted from the baseline) records `read instant - ack instant` of its
//! slot (0 when the event beat the `202`), into one of a few shared HDR histograms. The
//! figure is thus "update delay from commit to delivery", its commit end approximated from
//! above by the `202`'s arrival. A subscriber's first event (its initial state) records
//! nothing; after a reconnection the delayed updates it missed are recorded.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use votes_core::clock::unix_ms;

use crate::client::{Body, Client, ClientError, Protocol, RawDialer, Stream, Target};
use crate::election::{self, TargetError, get_ok};
use crate::report::{LATENCY_MAX_US, LatencyMs, latency_histogram};
use crate::schedule::{Ramp, Schedule};
use crate::sse::{BodyDecoder, SseError, SseItem, SseParser, TallyData, parse_head};
use crate::sys;
use crate::tokens::Tokens;
use crate::ws::{self, WsError};

/// What a subscriber reads: the event stream, or the same events over a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// `GET …/results/stream` (`text/event-stream`), over h1, h2 or h3.
    Sse,
    /// `…/results/ws`: HTTP/1.1 Upgrade, or over h2 an extended CONNECT (RFC 8441), plain or
    /// TLS.
    Ws,
}

impl std::str::FromStr for StreamKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sse" => Ok(Self::Sse),
            "ws" | "websocket" => Ok(Self::Ws),
            other => Err(format!("unknown stream {other:?}: expected sse or ws")),
        }
    }
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Ws => "ws",
        }
    }
}

/// Everything a run needs; `votes-sse` fills it from flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub election: String,
    pub subscribers: u64,
    /// The event stream or the WebSocket.
    pub stream: StreamKind,
    /// How subscribers connect: h1 (a connection each, plain or TLS), h2 or h3 (streams
    /// multiplexed, `streams_per_connection` on each).
    pub protocol: Protocol,
    /// Subscribers sharing one h2 or h3 connection.
    pub streams_per_connection: usize,
    /// New subscribers per second during the connect phase.
    pub connect_rate: f64,
    /// Subscribers bind to 127.0.0.1 ..= 127.0.0.K (IPv4 loopback targets).
    pub source_addrs: u8,
    /// Votes/s while subscribed (0: no votes, only the subscriptions).
    pub vote_rate: f64,
    /// Length of the vote phase.
    pub duration: Duration,
    /// First voter id (every vote is a fresh voter).
    pub voter_base: u64,
    /// h2 (h2c, default): votes multiplexed, so a slow commit holds no later vote back in
    /// this process; h1: one vote at a time per connection.
    pub vote_protocol: Protocol,
    /// Connections the votes are sent over.
    pub vote_connections: usize,
    /// The HS256 secret voter tokens are signed with.
    pub token_key: Vec<u8>,
    /// Process whose `VmRSS` is read at the phase boundaries.
    pub server_pid: Option<u32>,
    /// Bound on one connection attempt (connect, request, response head).
    pub connect_timeout: Duration,
    /// After the last subscriber started, how long the connect phase waits for stragglers.
    pub connect_grace: Duration,
    /// After the last vote, how long subscribers have to see the final total.
    pub settle: Duration,
    /// Bound on one vote request.
    pub vote_timeout: Duration,
    /// Print a progress line to stderr once a second.
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SseRunError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("cannot resolve --target {0}: {1}")]
    Resolve(String, String),
    #[error("--target {0} is {1}, not a loopback address: votes-sse only drives loopback targets")]
    NotLoopback(String, IpAddr),
    #[error(
        "open-files limit too low: RLIMIT_NOFILE soft {soft} (hard {hard}) for {subscribers} subscribers, \
         which need at least {need}; raise the hard limit (as root: `ulimit -Hn N`, or LimitNOFILE= \
         in a unit) or use fewer --subscribers"
    )]
    NoFile {
        soft: u64,
        hard: u64,
        subscribers: u64,
        need: u64,
    },
    #[error("reading RLIMIT_NOFILE: {0}")]
    RLimit(#[source] std::io::Error),
    #[error(
        "--subscribers, --connect-rate, --source-addrs and --streams-per-connection must be positive"
    )]
    Limits,
    #[error(
        "the results WebSocket opens over HTTP/1.1 or h2, not HTTP/3: --stream ws needs --protocol h1 or h2"
    )]
    WsProtocol,
    #[error("--vote-rate must be a finite number >= 0")]
    VoteRate,
    #[error("election {0:?} is {1:?}: votes-sse needs an open election to vote in")]
    NotOpen(String, String),
    #[error(
        "election {0:?} asks for proof of work (difficulty {1}): votes-sse sends votes without it; \
         set pow_difficulty to 0 (PATCH /admin/v1/elections/{0})"
    )]
    Pow(String, u8),
    #[error("--token-key / VOTES_TOKEN_KEY: {0}")]
    TokenKey(#[from] votes_core::token::KeyError),
}

/// `VmRSS` in KiB at the phase boundaries (`null` when not read).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RssKib {
    /// Before any subscriber connected.
    pub before: Option<u64>,
    /// Once the connect phase ended.
    pub connected: Option<u64>,
    /// After the settle phase, subscribers still connected.
    pub end: Option<u64>,
}

impl RssKib {
    /// `(connected - before) / subscribers`.
    fn per_subscriber(&self, subscribers: u64) -> Option<f64> {
        let (b, c) = (self.before?, self.connected?);
        (subscribers > 0).then(|| (c as f64 - b as f64) / subscribers as f64)
    }
}

/// CPU seconds per phase (`null` when not read).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuS {
    pub connect: Option<f64>,
    pub vote: Option<f64>,
}

/// The JSON report: the fields the brief asks for first, then what helps reading a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SseReport {
    pub subscribers_target: u64,
    /// `sse` or `ws`.
    pub stream: StreamKind,
    /// How the subscribers connected (`h1`: a connection each; `h2`, `h3`: multiplexed).
    pub protocol: String,
    /// `https://`: the subscribers' connections are TLS (QUIC for h3).
    pub tls: bool,
    /// Subscribers per h2 or h3 connection.
    pub streams_per_connection: Option<usize>,
    /// Subscribers that received at least their first event.
    pub subscribers_connected: u64,
    /// Subscribers that never received an event.
    pub connect_failures: u64,
    pub votes_accepted: u64,
    /// Events received by all subscribers together (initial states included).
    pub events: u64,
    /// Update delay from commit (the `202`'s arrival) to delivery, per (vote, subscriber).
    pub delay_ms: LatencyMs,
    /// Subscribers whose last total at the end is the final total.
    pub subscribers_final_total_ok: u64,
    pub server_rss_kib: RssKib,
    /// Growth of the server's RSS over the connect phase per connected subscriber.
    pub rss_per_subscriber_kib: Option<f64>,
    /// The same pairs measured from each vote's send instead: an upper bound of the delay
    /// (`delay_ms`, from the `202`, is a lower one).
    pub delay_from_send_ms: LatencyMs,
    /// (vote, subscriber) delay samples recorded.
    pub delay_samples: u64,
    /// Samples recorded as 0 in `delay_ms` because the event came before the `202`.
    pub delay_samples_before_ack: u64,
    /// Per event that changed a subscriber's total: its `as_of` (when the node's Redis poll saw
    /// the change) to its reading here, at millisecond resolution: the node's per-core tick,
    /// fan-out and delivery.
    pub fanout_ms: LatencyMs,
    /// Send → `202` of the accepted votes.
    pub vote_ack_ms: LatencyMs,
    /// CPU seconds of the serving process during the connect and the vote phases.
    pub server_cpu_s: CpuS,
    /// CPU seconds of votes-sse itself.
    pub client_cpu_s: CpuS,
    pub client_rss_kib: RssKib,
    pub client_rss_per_subscriber_kib: Option<f64>,
    /// Subscribers connected when the votes started.
    pub connected_at_vote_start: u64,
    /// Streams open at the end.
    pub open_at_end: u64,
    /// Length of the connect phase.
    pub connect_s: f64,
    pub connect_rate: f64,
    pub source_addrs: u8,
    pub vote_rate: f64,
    pub vote_protocol: String,
    pub vote_connections: usize,
    pub duration_s: f64,
    pub votes_sent: u64,
    /// Vote answers by HTTP status; transport failures and timeouts under `"error"`.
    pub votes_by_status: BTreeMap<String, u64>,
    /// Votes without an answer (may or may not have committed).
    pub votes_unknown_outcome: u64,
    /// The election's total when the votes started.
    pub baseline_total: u64,
    /// `baseline_total + votes_accepted`; when votes ended without an answer, the results
    /// endpoint's total after the votes, within `baseline_total + votes_sent`.
    pub final_total: u64,
    /// `total` of `GET /v1/elections/{id}/results` at the end.
    pub results_total: Option<u64>,
    /// How long the settle phase took.
    pub settle_s: f64,
    pub tally_events: u64,
    pub final_events: u64,
    pub subscribers_saw_final: u64,
    /// Events of another type, and tally events whose data had no `total`.
    pub other_events: u64,
    pub bad_events: u64,
    pub heartbeats: u64,
    /// Comments other than `: heartbeat`.
    pub comments: u64,
    /// Established streams that ended (the subscriber then reconnects, with `Last-Event-ID`).
    pub reconnects: u64,
    /// Connection attempts that failed before a `200` head.
    pub connect_errors: u64,
    /// Failures by cause (connect errors, statuses, stream ends).
    pub errors: BTreeMap<String, u64>,
    /// Events whose total was below one the subscriber had already seen.
    pub total_regressions: u64,
    /// Subscribers that saw the final total before it was known (more than `final_total`).
    pub subscribers_over_total: u64,
}

const NONE: u64 = u64::MAX;
/// With votes of unknown outcome, the settle phase lasts at least this long.
const UNKNOWN_SETTLE: Duration = Duration::from_secs(3);
/// The SSE reconnection delay until the server sends `retry:`.
const DEFAULT_RETRY_MS: u64 = 2000;
const DELAY_SHARDS: usize = 16;
const ERROR_LABELS_MAX: usize = 32;
/// One read of a subscriber's socket.
const READ_CHUNK: usize = 2048;

/// A subscriber's state others read: its last total (`NONE` before its first event).
struct Sub {
    last_total: AtomicU64,
    saw_final: AtomicBool,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    open: AtomicU64,
    events: AtomicU64,
    tally_events: AtomicU64,
    final_events: AtomicU64,
    other_events: AtomicU64,
    bad_events: AtomicU64,
    heartbeats: AtomicU64,
    comments: AtomicU64,
    reconnects: AtomicU64,
    connect_errors: AtomicU64,
    total_regressions: AtomicU64,
    votes_sent: AtomicU64,
    votes_in_flight: AtomicU64,
    votes_answered: AtomicU64,
}

/// The delay histograms of one shard of subscribers, in µs.
struct Delays {
    /// Read instant − the `202`'s arrival (0 when the event came first): a lower bound of the
    /// commit-to-delivery delay.
    from_ack: Histogram<u64>,
    /// Read instant − the vote's send: an upper bound.
    from_send: Histogram<u64>,
    /// Samples of `from_ack` recorded as 0 because the `202` had not arrived yet.
    before_ack: u64,
    /// Per event: read instant (wall clock) − its `as_of` (when the node's poll saw the
    /// change): the node's fan-out and the delivery, without the commit → Redis → poll part.
    fanout: Histogram<u64>,
}

impl Delays {
    fn new() -> Self {
        Self {
            from_ack: latency_histogram(),
            from_send: latency_histogram(),
            before_ack: 0,
            fanout: latency_histogram(),
        }
    }
}

/// When a subscriber read what it is parsing.
#[derive(Clone, Copy)]
struct Now {
    /// Nanoseconds since `t0`.
    ns: u64,
    /// Milliseconds since the Unix epoch.
    wall_ms: u64,
}

/// How subscribers reach the node.
enum Transport {
    /// A connection per subscriber, spoken byte by byte (SSE, WebSocket).
    H1(RawDialer),
    /// Streams multiplexed over a few connections.
    Muxed(Client),
}

/// What subscriber and vote tasks share.
struct Ctx {
    t0: Instant,
    transport: Transport,
    stream: StreamKind,
    sources: Vec<IpAddr>,
    /// `…/results/stream` or `…/results/ws`.
    path: String,
    /// HTTP/1.1: the request head without its final blank line.
    request: Vec<u8>,
    connect_timeout: Duration,
    /// The total when the votes started (`NONE` before).
    baseline: AtomicU64,
    /// Slot `k`: nanoseconds since `t0`, plus one, at which the `k`-th `202` arrived; 0 before.
    acks: Box<[AtomicU64]>,
    /// Slot `k`: nanoseconds since `t0`, plus one, at which the `k`-th vote was sent.
    sends: Box<[AtomicU64]>,
    accepted: AtomicU64,
    subs: Box<[Sub]>,
    delays: Box<[Mutex<Delays>]>,
    /// Send → `202` of each accepted vote, in µs.
    vote_ack_us: Mutex<Histogram<u64>>,
    c: Counters,
    errors: Mutex<BTreeMap<String, u64>>,
    votes_by_status: Mutex<BTreeMap<String, u64>>,
}

impl Ctx {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn error(&self, label: &str) {
        let mut m = self.errors.lock().expect("errors lock");
        if m.len() < ERROR_LABELS_MAX || m.contains_key(label) {
            *m.entry(label.to_string()).or_default() += 1;
        } else {
            *m.entry("other".to_string()).or_default() += 1;
        }
    }

    /// Subscriber `idx` read an event with `total` at `now` (ns since `t0`).
    fn delivered(&self, idx: usize, st: &mut Local, t: TallyData, now: Now) {
        let total = t.total;
        let Some(last) = st.last_total else {
            st.last_total = Some(total);
            self.subs[idx].last_total.store(total, Ordering::Release);
            self.c.connected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if total < last {
            self.c.total_regressions.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if total == last {
            return;
        }
        let base = self.baseline.load(Ordering::Acquire);
        if base != NONE && total > base {
            let lo = usize::try_from(last.max(base) - base).unwrap_or(usize::MAX);
            let hi = usize::try_from(total - base)
                .unwrap_or(usize::MAX)
                .min(self.acks.len());
            if lo < hi {
                let mut d = self.delays[idx % DELAY_SHARDS]
                    .lock()
                    .expect("delay histogram lock");
                // Changes only: a first event (the initial state) may carry an old `as_of`.
                if let Some(as_of) = t.as_of {
                    let us = now.wall_ms.saturating_sub(as_of).saturating_mul(1000);
                    d.fanout.saturating_record(us.min(LATENCY_MAX_US));
                }
                let us = |since: u64| (now.ns.saturating_sub(since - 1) / 1000).min(LATENCY_MAX_US);
                for (ack, sent) in self.acks[lo..hi].iter().zip(&self.sends[lo..hi]) {
                    match ack.load(Ordering::Acquire) {
                        0 => {
                            d.from_ack.saturating_record(0);
                            d.before_ack += 1;
                        }
                        a => d.from_ack.saturating_record(us(a)),
                    }
                    let s = sent.load(Ordering::Acquire);
                    if s != 0 {
                        d.from_send.saturating_record(us(s));
                    }
                }
            }
        }
        st.last_total = Some(total);
        self.subs[idx].last_total.store(total, Ordering::Release);
    }

    fn item(&self, idx: usize, st: &mut Local, item: SseItem<'_>, now: Now) {
        match item {
            SseItem::Retry(ms) => st.retry_ms = ms.clamp(100, 60_000),
            SseItem::Comment(c) => {
                if c.trim_ascii() == b"heartbeat" {
                    self.c.heartbeats.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.c.comments.fetch_add(1, Ordering::Relaxed);
                }
            }
            SseItem::Event { event, data, id } => {
                self.event(idx, st, event, id, || TallyData::parse(data), now);
            }
        }
    }

    /// Subscriber `idx` read an event (`tally`, `final`, …) with this id; `data` is its
    /// results, if they parse.
    fn event(
        &self,
        idx: usize,
        st: &mut Local,
        event: &[u8],
        id: &[u8],
        data: impl FnOnce() -> Option<TallyData>,
        now: Now,
    ) {
        self.c.events.fetch_add(1, Ordering::Relaxed);
        if st.last_id != id {
            st.last_id.clear();
            st.last_id.extend_from_slice(id);
        }
        match event {
            b"tally" => self.c.tally_events.fetch_add(1, Ordering::Relaxed),
            b"final" => {
                self.subs[idx].saw_final.store(true, Ordering::Relaxed);
                self.c.final_events.fetch_add(1, Ordering::Relaxed)
            }
            _ => {
                self.c.other_events.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match data() {
            Some(t) => self.delivered(idx, st, t, now),
            None => {
                self.c.bad_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn now(&self) -> Now {
        Now {
            ns: self.now_ns(),
            wall_ms: unix_ms(),
        }
    }
}

/// A subscriber's own state across its connections.
struct Local {
    last_total: Option<u64>,
    last_id: Vec<u8>,
    retry_ms: u64,
}

/// Why a subscriber's connection ended.
#[derive(Debug)]
enum Fail {
    ConnectTimeout,
    Connect(ClientError),
    HeadTimeout,
    Io(std::io::Error),
    Closed,
    Status(u16),
    NotEventStream,
    Sse(SseError),
    Ws(WsError),
    Client(ClientError),
    BodyEnded,
}

impl Fail {
    fn label(&self) -> String {
        match self {
            Self::ConnectTimeout => "connect: timeout".into(),
            Self::Connect(ClientError::Connect(e)) => format!("connect: {}", io_label(e)),
            Self::Connect(e) => format!("connect: {}", e.label()),
            Self::HeadTimeout => "response head: timeout".into(),
            Self::Io(e) => format!("read/write: {}", io_label(e)),
            Self::Closed => "closed by the server".into(),
            Self::Status(s) => format!("status {s}"),
            Self::NotEventStream => "200 without text/event-stream".into(),
            Self::Sse(e) => e.to_string(),
            Self::Ws(e) => e.to_string(),
            Self::Client(e) => e.label(),
            Self::BodyEnded => "stream body ended".into(),
        }
    }
}

fn io_label(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{:?} (os error {code})", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}

/// Decrements the open-streams gauge when a stream ends, however it ends.
struct OpenGuard<'a>(&'a AtomicU64);

impl<'a> OpenGuard<'a> {
    /// The subscription is established: counted open until the guard drops.
    fn established(ctx: &'a Ctx, established: &mut bool) -> Self {
        *established = true;
        ctx.c.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(&ctx.c.open)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connect(ctx: &Ctx, dialer: &RawDialer, idx: usize) -> Result<Stream, Fail> {
    let src = ctx.sources[idx % ctx.sources.len()];
    tokio::time::timeout(ctx.connect_timeout, dialer.connect(Some(src)))
        .await
        .map_err(|_| Fail::ConnectTimeout)?
        .map_err(Fail::Connect)
}

/// Reads what is available (at least one byte, or 0 at EOF) onto the end of `buf`.
async fn read_some<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let old = buf.len();
    buf.resize(old + READ_CHUNK, 0);
    let read = s.read(&mut buf[old..]).await;
    buf.truncate(old + *read.as_ref().unwrap_or(&0));
    read
}

/// Reads more of a subscriber's stream onto what is left of it unparsed (`raw`), first letting
/// go of a buffer a large message grew once it is empty, so an idle subscriber holds a chunk's
/// worth; the stream's end is a failure.
async fn read_more<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    raw: &mut Vec<u8>,
) -> Result<(), Fail> {
    if raw.is_empty() && raw.capacity() > 4 * READ_CHUNK {
        *raw = Vec::new();
    }
    if read_some(s, raw).await.map_err(Fail::Io)? == 0 {
        return Err(Fail::Closed);
    }
    Ok(())
}

/// Sends the request head `req` and reads until the response head is complete: the head and
/// the bytes read (the head's and any after it).
async fn request_head(
    ctx: &Ctx,
    s: &mut Stream,
    req: &[u8],
) -> Result<(crate::sse::Head, usize, Vec<u8>), Fail> {
    let mut raw = Vec::with_capacity(512);
    tokio::time::timeout(ctx.connect_timeout, async {
        s.write_all(req).await.map_err(Fail::Io)?;
        s.flush().await.map_err(Fail::Io)?;
        loop {
            if let Some((h, len)) = parse_head(&raw).map_err(Fail::Sse)? {
                return Ok((h, len, std::mem::take(&mut raw)));
            }
            if read_some(s, &mut raw).await.map_err(Fail::Io)? == 0 {
                return Err(Fail::Closed);
            }
        }
    })
    .await
    .map_err(|_| Fail::HeadTimeout)?
}

/// One connection of subscriber `idx`, until it fails; `established` once its stream started.
async fn session(
    ctx: &Ctx,
    idx: usize,
    st: &mut Local,
    established: &mut bool,
) -> Result<(), Fail> {
    match (&ctx.transport, ctx.stream) {
        (Transport::H1(dialer), StreamKind::Sse) => sse_h1(ctx, dialer, idx, st, established).await,
        (Transport::H1(dialer), StreamKind::Ws) => ws_h1(ctx, dialer, idx, st, established).await,
        (Transport::Muxed(client), StreamKind::Sse) => {
            sse_muxed(ctx, client, idx, st, established).await
        }
        (Transport::Muxed(client), StreamKind::Ws) => {
            ws_h2(ctx, client, idx, st, established).await
        }
    }
}

/// The event stream on a connection of its own, parsed as it arrives.
async fn sse_h1(
    ctx: &Ctx,
    dialer: &RawDialer,
    idx: usize,
    st: &mut Local,
    established: &mut bool,
) -> Result<(), Fail> {
    let mut s = connect(ctx, dialer, idx).await?;
    let mut req = Vec::with_capacity(ctx.request.len() + 40);
    req.extend_from_slice(&ctx.request);
    if !st.last_id.is_empty() {
        req.extend_from_slice(b"Last-Event-ID: ");
        req.extend_from_slice(&st.last_id);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let (head, head_len, mut raw) = request_head(ctx, &mut s, &req).await?;
    if head.status != 200 {
        return Err(Fail::Status(head.status));
    }
    if !head.event_stream {
        return Err(Fail::NotEventStream);
    }
    let _open = OpenGuard::established(ctx, established);
    raw.drain(..head_len);
    let mut body = BodyDecoder::new(head.framing);
    let mut parser = SseParser::new();
    loop {
        if !raw.is_empty() {
            let now = ctx.now();
            let n = body.decode(&raw, parser.pending_mut()).map_err(Fail::Sse)?;
            raw.drain(..n);
            parser
                .process(|item| ctx.item(idx, st, item, now))
                .map_err(Fail::Sse)?;
            if body.is_done() {
                return Err(Fail::BodyEnded);
            }
        }
        read_more(&mut s, &mut raw).await?;
    }
}

/// An event as the results WebSocket sends it.
#[derive(Deserialize)]
struct WsEvent {
    event: String,
    id: String,
    data: TallyData,
}

/// The results WebSocket on a connection of its own: every ping answered, every text frame an
/// event.
async fn ws_h1(
    ctx: &Ctx,
    dialer: &RawDialer,
    idx: usize,
    st: &mut Local,
    established: &mut bool,
) -> Result<(), Fail> {
    let mut s = connect(ctx, dialer, idx).await?;
    let (head, head_len, mut raw) = request_head(ctx, &mut s, &ctx.request).await?;
    if head.status != 101 {
        return Err(Fail::Status(head.status));
    }
    ws::check_accept(&raw[..head_len]).map_err(Fail::Ws)?;
    let _open = OpenGuard::established(ctx, established);
    raw.drain(..head_len);
    ws_frames(ctx, &mut s, raw, idx, st).await
}

/// The results WebSocket on an h2 stream opened by an extended CONNECT (RFC 8441), one of the
/// streams multiplexed on the client's connections.
async fn ws_h2(
    ctx: &Ctx,
    client: &Client,
    idx: usize,
    st: &mut Local,
    established: &mut bool,
) -> Result<(), Fail> {
    let version = [("sec-websocket-version", "13")];
    let (status, stream) = tokio::time::timeout(
        ctx.connect_timeout,
        client.tunnel(&ctx.path, "websocket", &version),
    )
    .await
    .map_err(|_| Fail::HeadTimeout)?
    .map_err(Fail::Client)?;
    let Some(mut stream) = stream else {
        return Err(Fail::Status(status.as_u16()));
    };
    let _open = OpenGuard::established(ctx, established);
    ws_frames(ctx, &mut stream, Vec::new(), idx, st).await
}

/// Reads a results WebSocket until it ends: every text frame an event, every ping answered.
/// `raw` holds what arrived behind the handshake.
async fn ws_frames<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ctx: &Ctx,
    s: &mut S,
    mut raw: Vec<u8>,
    idx: usize,
    st: &mut Local,
) -> Result<(), Fail> {
    loop {
        let now = ctx.now();
        let mut used = 0;
        while let Some((frame, n)) = ws::parse_server_frame(&raw[used..]).map_err(Fail::Ws)? {
            let payload = &raw[used..][frame.payload.clone()];
            match frame.opcode {
                votes_core::ws::Opcode::Text => match serde_json::from_slice::<WsEvent>(payload) {
                    Ok(e) => {
                        let data = e.data;
                        ctx.event(
                            idx,
                            st,
                            e.event.as_bytes(),
                            e.id.as_bytes(),
                            || Some(data),
                            now,
                        );
                    }
                    Err(_) => {
                        ctx.c.events.fetch_add(1, Ordering::Relaxed);
                        ctx.c.bad_events.fetch_add(1, Ordering::Relaxed);
                    }
                },
                votes_core::ws::Opcode::Ping => {
                    ctx.c.heartbeats.fetch_add(1, Ordering::Relaxed);
                    let pong = ws::client_frame(votes_core::ws::Opcode::Pong, payload);
                    s.write_all(&pong).await.map_err(Fail::Io)?;
                    s.flush().await.map_err(Fail::Io)?;
                }
                votes_core::ws::Opcode::Close => return Err(Fail::BodyEnded),
                _ => {
                    ctx.c.comments.fetch_add(1, Ordering::Relaxed);
                }
            }
            used += n;
        }
        raw.drain(..used);
        read_more(s, &mut raw).await?;
    }
}

/// The event stream on one of the multiplexed connections (h2, h3).
async fn sse_muxed(
    ctx: &Ctx,
    client: &Client,
    idx: usize,
    st: &mut Local,
    established: &mut bool,
) -> Result<(), Fail> {
    let mut req = client
        .request(Method::GET, client.uri(&ctx.path))
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache");
    if !st.last_id.is_empty() {
        req = req.header("last-event-id", st.last_id.as_slice());
    }
    let req = req.body(Body::default()).expect("valid request");
    let mut resp = tokio::time::timeout(ctx.connect_timeout, client.open(req))
        .await
        .map_err(|_| Fail::HeadTimeout)?
        .map_err(Fail::Client)?;
    if resp.status != 200 {
        return Err(Fail::Status(resp.status.as_u16()));
    }
    let event_stream = resp
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !event_stream {
        return Err(Fail::NotEventStream);
    }
    let _open = OpenGuard::established(ctx, established);
    let mut parser = SseParser::new();
    loop {
        match resp.chunk().await.map_err(Fail::Client)? {
            None => return Err(Fail::BodyEnded),
            Some(chunk) => {
                let now = ctx.now();
                parser
                    .feed(&chunk, |item| ctx.item(idx, st, item, now))
                    .map_err(Fail::Sse)?;
            }
        }
    }
}

/// Subscriber `idx`: connects, reads events, and reconnects (after the server's `retry`, or
/// a backoff while it never connected) until the run aborts it.
async fn subscriber(ctx: Arc<Ctx>, idx: usize) {
    let mut st = Local {
        last_total: None,
        last_id: Vec::new(),
        retry_ms: DEFAULT_RETRY_MS,
    };
    let mut failures = 0u32;
    loop {
        let mut established = false;
        let outcome = session(&ctx, idx, &mut st, &mut established).await;
        if let Err(f) = outcome {
            ctx.error(&f.label());
        }
        let wait_ms = if established {
            ctx.c.reconnects.fetch_add(1, Ordering::Relaxed);
            failures = 0;
            st.retry_ms
        } else {
            ctx.c.connect_errors.fetch_add(1, Ordering::Relaxed);
            failures += 1;
            if st.last_total.is_some() {
                st.retry_ms
            } else {
                (250u64 << failures.min(5)).min(5_000)
            }
        };
        // Spread the reconnections of many subscribers over a tenth of the delay.
        let jitter = (idx as u64).wrapping_mul(0x9e37_79b9) % (wait_ms / 10 + 1);
        tokio::time::sleep(Duration::from_millis(wait_ms + jitter)).await;
    }
}

async fn results_total(client: &Client, election: &str) -> Option<u64> {
    let body = get_ok(client, &format!("/v1/elections/{election}/results"))
        .await
        .ok()?;
    TallyData::parse(&body).map(|t| t.total)
}

/// What vote tasks share.
struct Voting {
    client: Client,
    tokens: Tokens,
    uri: hyper::Uri,
    json: HeaderValue,
    bodies: Vec<Bytes>,
    voter_base: u64,
    timeout: Duration,
}

async fn vote(ctx: Arc<Ctx>, v: Arc<Voting>, i: u64, sent_ns: u64) {
    let req = v
        .client
        .request(Method::POST, v.uri.clone())
        .header(CONTENT_TYPE, v.json.clone())
        .header(AUTHORIZATION, v.tokens.bearer(v.voter_base + i))
        .body(Body::new(
            v.bodies[usize::try_from(i).unwrap_or(0) % v.bodies.len()].clone(),
        ))
        .expect("valid request");
    let outcome = tokio::time::timeout(v.timeout, v.client.send(req)).await;
    let now = ctx.now_ns();
    let label = match outcome {
        Ok(Ok(a)) if a.status == 202 => {
            let k = ctx.accepted.fetch_add(1, Ordering::AcqRel);
            if let Some(slot) = usize::try_from(k).ok().and_then(|k| ctx.acks.get(k)) {
                slot.store(now + 1, Ordering::Release);
            }
            ctx.vote_ack_us
                .lock()
                .expect("vote latency lock")
                .saturating_record((now.saturating_sub(sent_ns) / 1000).min(LATENCY_MAX_US));
            "202".to_string()
        }
        Ok(Ok(a)) => a.status.as_u16().to_string(),
        Ok(Err(e)) => {
            ctx.error(&format!("vote: {}", e.label()));
            "error".to_string()
        }
        Err(_) => {
            ctx.error("vote: timeout");
            "error".to_string()
        }
    };
    *ctx.votes_by_status
        .lock()
        .expect("status lock")
        .entry(label)
        .or_default() += 1;
    ctx.c.votes_answered.fetch_add(1, Ordering::Relaxed);
    ctx.c.votes_in_flight.fetch_sub(1, Ordering::AcqRel);
}

/// The run's phase, for the progress line.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Phase {
    Connect = 0,
    Vote = 1,
    Settle = 2,
}

/// The progress line; with `last` (connected, events a second ago), also the rates of the last
/// second.
fn progress_line(ctx: &Ctx, phase: u8, target: u64, last: Option<&mut (u64, u64)>) -> String {
    let c = &ctx.c;
    let connected = c.connected.load(Ordering::Relaxed);
    let events = c.events.load(Ordering::Relaxed);
    let accepted = ctx.accepted.load(Ordering::Relaxed);
    let (connect_rate, event_rate) = match last {
        Some(last) => {
            let rates = (
                format!(" (+{}/s)", connected.saturating_sub(last.0)),
                format!(" (+{}/s)", events.saturating_sub(last.1)),
            );
            *last = (connected, events);
            rates
        }
        None => (String::new(), String::new()),
    };
    format!(
        "[{:7.1}s] {:<7} connected {connected}/{target}{connect_rate} open {} conn-err {} \
         reconnects {} | events {events}{event_rate} heartbeats {} | votes sent {} \
         202={accepted} in-flight {}",
        ctx.t0.elapsed().as_secs_f64(),
        ["connect", "vote", "settle"][usize::from(phase.min(2))],
        c.open.load(Ordering::Relaxed),
        c.connect_errors.load(Ordering::Relaxed),
        c.reconnects.load(Ordering::Relaxed),
        c.heartbeats.load(Ordering::Relaxed),
        c.votes_sent.load(Ordering::Relaxed),
        c.votes_in_flight.load(Ordering::Relaxed),
    )
}

/// Subscribers whose last total is `total`, and those beyond it.
fn at_total(ctx: &Ctx, total: u64) -> (u64, u64) {
    ctx.subs.iter().fold((0, 0), |(ok, over), s| {
        let t = s.last_total.load(Ordering::Acquire);
        match t {
            NONE => (ok, over),
            t if t == total => (ok + 1, over),
            t if t > total => (ok, over + 1),
            _ => (ok, over),
        }
    })
}

/// Runs the three phases and returns the report. Run it as a task of a multi-threaded tokio
/// runtime; it raises the process's open-files limit first.
pub async fn run(cfg: Config) -> Result<SseReport, SseRunError> {
    if cfg.subscribers == 0
        || cfg.source_addrs == 0
        || cfg.streams_per_connection == 0
        || !(cfg.connect_rate.is_finite() && cfg.connect_rate > 0.0)
    {
        return Err(SseRunError::Limits);
    }
    if cfg.stream == StreamKind::Ws && cfg.protocol == Protocol::H3 {
        return Err(SseRunError::WsProtocol);
    }
    if !(cfg.vote_rate.is_finite() && cfg.vote_rate >= 0.0) {
        return Err(SseRunError::VoteRate);
    }
    election::check_id(&cfg.election)?;
    let (soft, hard) = sys::raise_nofile().map_err(SseRunError::RLimit)?;
    let need = cfg.subscribers + cfg.vote_connections as u64 + 100;
    if soft < need {
        return Err(SseRunError::NoFile {
            soft,
            hard,
            subscribers: cfg.subscribers,
            need,
        });
    }
    let authority = cfg.target.authority.clone();
    let target = tokio::net::lookup_host(&authority)
        .await
        .map_err(|e| SseRunError::Resolve(authority.clone(), e.to_string()))?
        .next()
        .ok_or_else(|| SseRunError::Resolve(authority.clone(), "no address".into()))?;
    if !target.ip().is_loopback() {
        return Err(SseRunError::NotLoopback(authority, target.ip()));
    }
    let sources: Vec<IpAddr> = match target {
        SocketAddr::V4(_) => (1..=cfg.source_addrs)
            .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
            .collect(),
        SocketAddr::V6(a) => vec![IpAddr::V6(*a.ip())],
    };
    if let Some(ports) = sys::ephemeral_ports() {
        let per_source = cfg.subscribers.div_ceil(sources.len() as u64);
        if per_source * 10 > ports * 9 {
            eprintln!(
                "votes-sse: warning: {per_source} subscribers per source address for {ports} \
                 ephemeral ports; use more --source-addrs"
            );
        }
    }

    // The vote side first: its election and connections.
    let client = Client::connect(
        cfg.target.clone(),
        cfg.vote_protocol,
        cfg.vote_connections.max(1),
    )
    .await
    .map_err(|source| TargetError::Connect {
        target: cfg.target.authority.clone(),
        source,
    })?;
    let (schedule, planned) = if cfg.vote_rate > 0.0 && !cfg.duration.is_zero() {
        let s = Schedule::new(cfg.vote_rate, cfg.duration, Ramp::None);
        let n = s.total();
        (Some(s), n)
    } else {
        (None, 0)
    };
    let mut bodies = Vec::new();
    if planned > 0 {
        let e = election::fetch(&client, &cfg.election)
            .await
            .map_err(|why| TargetError::Election {
                election: cfg.election.clone(),
                why,
            })?;
        if e.state != "open" {
            return Err(SseRunError::NotOpen(cfg.election.clone(), e.state));
        }
        if e.pow_difficulty > 0 {
            return Err(SseRunError::Pow(cfg.election.clone(), e.pow_difficulty));
        }
        bodies = e
            .options
            .iter()
            .map(|o| {
                Bytes::from(serde_json::to_vec(&serde_json::json!({"option": o.id})).expect("json"))
            })
            .collect();
        if bodies.is_empty() {
            return Err(TargetError::Election {
                election: cfg.election.clone(),
                why: "no options".into(),
            }
            .into());
        }
    }
    let tokens = Tokens::new(
        &cfg.token_key,
        cfg.voter_base,
        0,
        (unix_ms() / 1000).saturating_sub(60),
        cfg.duration.as_secs() + 3_600,
    )?;

    let n = usize::try_from(cfg.subscribers).unwrap_or(usize::MAX);
    let connect_error = |source| TargetError::Connect {
        target: cfg.target.authority.clone(),
        source,
    };
    let transport = match cfg.protocol {
        Protocol::H1 => Transport::H1(RawDialer::new(&cfg.target).map_err(connect_error)?),
        Protocol::H2 | Protocol::H3 => {
            let connections = n.div_ceil(cfg.streams_per_connection);
            let client = Client::connect_from(
                cfg.target.clone(),
                cfg.protocol,
                connections,
                sources.clone(),
            )
            .await
            .map_err(connect_error)?;
            Transport::Muxed(client)
        }
    };
    let path = match cfg.stream {
        StreamKind::Sse => format!("/v1/elections/{}/results/stream", cfg.election),
        StreamKind::Ws => format!("/v1/elections/{}/results/ws", cfg.election),
    };
    let request = match cfg.stream {
        StreamKind::Sse => format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\n",
            cfg.target.authority
        )
        .into_bytes(),
        StreamKind::Ws => ws::upgrade_request(&path, &cfg.target.authority),
    };
    let ctx = Arc::new(Ctx {
        t0: Instant::now(),
        transport,
        stream: cfg.stream,
        sources,
        path,
        request,
        connect_timeout: cfg.connect_timeout,
        baseline: AtomicU64::new(NONE),
        acks: (0..planned).map(|_| AtomicU64::new(0)).collect(),
        sends: (0..planned).map(|_| AtomicU64::new(0)).collect(),
        accepted: AtomicU64::new(0),
        subs: (0..n)
            .map(|_| Sub {
                last_total: AtomicU64::new(NONE),
                saw_final: AtomicBool::new(false),
            })
            .collect(),
        delays: (0..DELAY_SHARDS)
            .map(|_| Mutex::new(Delays::new()))
            .collect(),
        vote_ack_us: Mutex::new(latency_histogram()),
        c: Counters::default(),
        errors: Mutex::new(BTreeMap::new()),
        votes_by_status: Mutex::new(BTreeMap::new()),
    });
    let server_rss = |pid: Option<u32>| pid.and_then(sys::vm_rss_kib);
    let own = std::process::id();
    let mut server_rss_kib = RssKib {
        before: server_rss(cfg.server_pid),
        ..RssKib::default()
    };
    let mut client_rss_kib = RssKib {
        before: sys::vm_rss_kib(own),
        ..RssKib::default()
    };

    let phase = Arc::new(std::sync::atomic::AtomicU8::new(Phase::Connect as u8));
    let progress = cfg.progress.then(|| {
        let (ctx, phase) = (ctx.clone(), phase.clone());
        let target = cfg.subscribers;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            let mut last = (0, 0);
            loop {
                tick.tick().await;
                let line =
                    progress_line(&ctx, phase.load(Ordering::Relaxed), target, Some(&mut last));
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        })
    });

    // Phase 1: connect, at the bounded rate.
    let connect_start_cpu = cpu_now(cfg.server_pid, own);
    let connect_start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let due = connect_start + Duration::from_secs_f64(i as f64 / cfg.connect_rate);
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        handles.push(tokio::spawn(subscriber(ctx.clone(), i)));
    }
    let grace_end = tokio::time::Instant::now() + cfg.connect_grace;
    while ctx.c.connected.load(Ordering::Relaxed) < cfg.subscribers
        && tokio::time::Instant::now() < grace_end
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    let vote_start_cpu = cpu_now(cfg.server_pid, own);
    let connected_at_vote_start = ctx.c.connected.load(Ordering::Relaxed);
    server_rss_kib.connected = server_rss(cfg.server_pid);
    client_rss_kib.connected = sys::vm_rss_kib(own);

    // Phase 2: vote. The baseline is the election's total now (we are its only voter).
    let seen_max = ctx
        .subs
        .iter()
        .map(|s| s.last_total.load(Ordering::Acquire))
        .filter(|&t| t != NONE)
        .max();
    let baseline = match results_total(&client, &cfg.election).await {
        Some(t) => {
            if seen_max.is_some_and(|m| m != t) {
                eprintln!(
                    "votes-sse: warning: GET …/results says total {t} but subscribers saw up to {}",
                    seen_max.unwrap_or(0)
                );
            }
            t
        }
        None => {
            let t = seen_max.unwrap_or(0);
            eprintln!("votes-sse: warning: GET …/results failed; baseline from the streams: {t}");
            t
        }
    };
    ctx.baseline.store(baseline, Ordering::Release);
    phase.store(Phase::Vote as u8, Ordering::Relaxed);
    let voting = Arc::new(Voting {
        uri: client.uri(&format!("/v1/elections/{}/votes", cfg.election)),
        client,
        tokens,
        json: HeaderValue::from_static("application/json"),
        bodies,
        voter_base: cfg.voter_base,
        timeout: cfg.vote_timeout,
    });
    if let Some(schedule) = schedule {
        let v0 = tokio::time::Instant::now();
        for i in 0..planned {
            let due = v0 + schedule.intended(i);
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            ctx.c.votes_in_flight.fetch_add(1, Ordering::AcqRel);
            ctx.c.votes_sent.fetch_add(1, Ordering::Relaxed);
            let sent_ns = ctx.now_ns();
            ctx.sends[usize::try_from(i).expect("planned votes fit memory")]
                .store(sent_ns + 1, Ordering::Release);
            tokio::spawn(vote(ctx.clone(), voting.clone(), i, sent_ns));
        }
        let end = v0 + cfg.duration;
        if end > tokio::time::Instant::now() {
            tokio::time::sleep_until(end).await;
        }
        // Every vote ends within its timeout.
        while ctx.c.votes_in_flight.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let vote_end = cpu_now(cfg.server_pid, own);

    // Phase 3: settle, until every subscriber that ever connected is at the final total.
    phase.store(Phase::Settle as u8, Ordering::Relaxed);
    let accepted = ctx.accepted.load(Ordering::Acquire);
    let sent = ctx.c.votes_sent.load(Ordering::Acquire);
    let unknown = ctx
        .votes_by_status
        .lock()
        .expect("status lock")
        .get("error")
        .copied()
        .unwrap_or(0);
    // A vote whose answer timed out may have committed all the same (then or later): while
    // such votes exist, the final total is the results endpoint's, within what was sent, and
    // the phase lasts a few of the node's polls at least.
    let (lo, hi) = (baseline + accepted, baseline + sent);
    let mut final_total = lo;
    let settle_start = tokio::time::Instant::now();
    let deadline = settle_start + cfg.settle;
    let mut next_poll = settle_start;
    loop {
        let now = tokio::time::Instant::now();
        if unknown > 0 && now >= next_poll {
            if let Some(r) = results_total(&voting.client, &cfg.election).await {
                final_total = r.clamp(lo, hi);
            }
            next_poll = now + Duration::from_millis(500);
        }
        let connected = ctx.c.connected.load(Ordering::Relaxed);
        let (ok, _) = at_total(&ctx, final_total);
        let sure = unknown == 0 || final_total == hi || now >= settle_start + UNKNOWN_SETTLE;
        if (ok >= connected && sure) || now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settle_s = settle_start.elapsed().as_secs_f64();
    let results_total = results_total(&voting.client, &cfg.election).await;
    Ok(finish(
        &cfg,
        &ctx,
        handles,
        progress,
        Finish {
            baseline,
            final_total,
            results_total,
            votes_unknown_outcome: unknown,
            settle_s,
            connect_s,
            connected_at_vote_start,
            server_rss_kib,
            client_rss_kib,
            cpu: [connect_start_cpu, vote_start_cpu, vote_end],
            own,
        },
    ))
}

/// CPU time so far of the server (when known) and of this process, in seconds.
fn cpu_now(server: Option<u32>, own: u32) -> (Option<f64>, Option<f64>) {
    (server.and_then(sys::cpu_seconds), sys::cpu_seconds(own))
}

struct Finish {
    baseline: u64,
    final_total: u64,
    results_total: Option<u64>,
    votes_unknown_outcome: u64,
    settle_s: f64,
    connect_s: f64,
    connected_at_vote_start: u64,
    server_rss_kib: RssKib,
    client_rss_kib: RssKib,
    /// CPU seconds (server, client) when the connect phase started, the votes started, and
    /// the votes ended.
    cpu: [(Option<f64>, Option<f64>); 3],
    own: u32,
}

fn finish(
    cfg: &Config,
    ctx: &Ctx,
    handles: Vec<tokio::task::JoinHandle<()>>,
    progress: Option<tokio::task::JoinHandle<()>>,
    mut f: Finish,
) -> SseReport {
    f.server_rss_kib.end = cfg.server_pid.and_then(sys::vm_rss_kib);
    f.client_rss_kib.end = sys::vm_rss_kib(f.own);
    let open_at_end = ctx.c.open.load(Ordering::Relaxed);
    let (ok, over) = at_total(ctx, f.final_total);
    let saw_final = ctx
        .subs
        .iter()
        .filter(|s| s.saw_final.load(Ordering::Relaxed))
        .count() as u64;
    for h in &handles {
        h.abort();
    }
    if let Some(p) = progress {
        p.abort();
        let phase = Phase::Settle as u8;
        eprintln!("{}", progress_line(ctx, phase, cfg.subscribers, None));
    }
    let mut all = Delays::new();
    for d in ctx.delays.iter() {
        let d = d.lock().expect("delay histogram lock");
        all.from_ack.add(&d.from_ack).expect("same bounds");
        all.from_send.add(&d.from_send).expect("same bounds");
        all.fanout.add(&d.fanout).expect("same bounds");
        all.before_ack += d.before_ack;
    }
    let span = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    let [c0, v0, v1] = f.cpu;
    let c = &ctx.c;
    let connected = c.connected.load(Ordering::Relaxed);
    SseReport {
        subscribers_target: cfg.subscribers,
        stream: cfg.stream,
        protocol: cfg.protocol.as_str().to_string(),
        tls: cfg.target.tls,
        streams_per_connection: (cfg.protocol != Protocol::H1)
            .then_some(cfg.streams_per_connection),
        subscribers_connected: connected,
        connect_failures: cfg.subscribers - connected.min(cfg.subscribers),
        votes_accepted: ctx.accepted.load(Ordering::Relaxed),
        events: c.events.load(Ordering::Relaxed),
        delay_ms: LatencyMs::of(&all.from_ack),
        subscribers_final_total_ok: ok,
        rss_per_subscriber_kib: f.server_rss_kib.per_subscriber(f.connected_at_vote_start),
        server_rss_kib: f.server_rss_kib,
        delay_from_send_ms: LatencyMs::of(&all.from_send),
        delay_samples: all.from_ack.len(),
        delay_samples_before_ack: all.before_ack,
        fanout_ms: LatencyMs::of(&all.fanout),
        vote_ack_ms: LatencyMs::of(&ctx.vote_ack_us.lock().expect("vote latency lock")),
        client_rss_per_subscriber_kib: f.client_rss_kib.per_subscriber(f.connected_at_vote_start),
        client_rss_kib: f.client_rss_kib,
        server_cpu_s: CpuS {
            connect: span(c0.0, v0.0),
            vote: span(v0.0, v1.0),
        },
        client_cpu_s: CpuS {
            connect: span(c0.1, v0.1),
            vote: span(v0.1, v1.1),
        },
        connected_at_vote_start: f.connected_at_vote_start,
        open_at_end,
        connect_s: f.connect_s,
        connect_rate: cfg.connect_rate,
        source_addrs: cfg.source_addrs,
        vote_rate: cfg.vote_rate,
        vote_protocol: cfg.vote_protocol.as_str().to_string(),
        vote_connections: cfg.vote_connections,
        duration_s: cfg.duration.as_secs_f64(),
        votes_sent: c.votes_sent.load(Ordering::Relaxed),
        votes_by_status: ctx.votes_by_status.lock().expect("status lock").clone(),
        votes_unknown_outcome: f.votes_unknown_outcome,
        baseline_total: f.baseline,
        final_total: f.final_total,
        results_total: f.results_total,
        settle_s: f.settle_s,
        tally_events: c.tally_events.load(Ordering::Relaxed),
        final_events: c.final_events.load(Ordering::Relaxed),
        subscribers_saw_final: saw_final,
        other_events: c.other_events.load(Ordering::Relaxed),
        bad_events: c.bad_events.load(Ordering::Relaxed),
        heartbeats: c.heartbeats.load(Ordering::Relaxed),
        comments: c.comments.load(Ordering::Relaxed),
        reconnects: c.reconnects.load(Ordering::Relaxed),
        connect_errors: c.connect_errors.load(Ordering::Relaxed),
        errors: ctx.errors.lock().expect("errors lock").clone(),
        total_regressions: c.total_regressions.load(Ordering::Relaxed),
        subscribers_over_total: over,
    }
}

impl SseReport {
    /// A readable summary for stdout.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let kib = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let per = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let _ = writeln!(
            s,
            "votes-sse: {} {} subscribers over {}{}{} from {} source address(es) at {:.0}/s; connect phase {:.1}s",
            self.subscribers_target,
            self.stream.as_str(),
            self.protocol,
            if self.tls { " (TLS)" } else { "" },
            self.streams_per_connection
                .map_or(String::new(), |k| format!(", {k} per connection")),
            self.source_addrs,
            self.connect_rate,
            self.connect_s
        );
        let _ = writeln!(
            s,
            "  connected {} (at vote start {}, open at end {})  never connected {}  connect errors {}  reconnects {}",
            self.subscribers_connected,
            self.connected_at_vote_start,
            self.open_at_end,
            self.connect_failures,
            self.connect_errors,
            self.reconnects
        );
        let statuses: Vec<String> = self
            .votes_by_status
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            s,
            "  votes: {:.0}/s for {:.1}s over {} {}, sent {}, accepted {} ({}), without an answer {}",
            self.vote_rate,
            self.duration_s,
            self.vote_connections,
            self.vote_protocol,
            self.votes_sent,
            self.votes_accepted,
            statuses.join(" "),
            self.votes_unknown_outcome
        );
        let _ = writeln!(
            s,
            "  totals: baseline {} final {} results endpoint {}; subscribers at the final total {} (over it {}), settle {:.2}s",
            self.baseline_total,
            self.final_total,
            self.results_total
                .map_or("-".to_string(), |t| t.to_string()),
            self.subscribers_final_total_ok,
            self.subscribers_over_total,
            self.settle_s
        );
        let _ = writeln!(
            s,
            "  events {} (tally {}, final {} to {} subscribers, other {}, unparsable {})  heartbeats {}  total regressions {}",
            self.events,
            self.tally_events,
            self.final_events,
            self.subscribers_saw_final,
            self.other_events,
            self.bad_events,
            self.heartbeats,
            self.total_regressions
        );
        let q = |d: &LatencyMs| {
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
                d.p50, d.p90, d.p99, d.p999, d.max
            )
        };
        let _ = writeln!(
            s,
            "  delay ms, commit (its 202) → delivery, over {} (vote, subscriber) samples ({} before the 202): {}",
            self.delay_samples,
            self.delay_samples_before_ack,
            q(&self.delay_ms)
        );
        let _ = writeln!(
            s,
            "  delay ms, vote sent → delivery (upper bound): {}",
            q(&self.delay_from_send_ms)
        );
        let _ = writeln!(
            s,
            "  fan-out ms, node saw the change (as_of) → delivery, per event: {}",
            q(&self.fanout_ms)
        );
        let _ = writeln!(s, "  vote 202 ms (send → 202): {}", q(&self.vote_ack_ms));
        let cpu = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let _ = writeln!(
            s,
            "  CPU s (connect phase / vote phase): server {} / {}  votes-sse {} / {}",
            cpu(self.server_cpu_s.connect),
            cpu(self.server_cpu_s.vote),
            cpu(self.client_cpu_s.connect),
            cpu(self.client_cpu_s.vote)
        );
        let r = &self.server_rss_kib;
        let _ = writeln!(
            s,
            "  server RSS KiB: before {}  connected {}  end {}  → {} KiB per subscriber",
            kib(r.before),
            kib(r.connected),
            kib(r.end),
            per(self.rss_per_subscriber_kib)
        );
        let r = &self.client_rss_kib;
        let _ = write!(
            s,
            "  client RSS KiB: before {}  connected {}  end {}  → {} KiB per subscriber",
            kib(r.before),
            kib(r.connected),
            kib(r.end),
            per(self.client_rss_per_subscriber_kib)
        );
        for (e, n) in &self.errors {
            let _ = write!(s, "\n  error {n:>8} × {e}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_per_subscriber() {
        let r = RssKib {
            before: Some(1000),
            connected: Some(21_000),
            end: None,
        };
        assert_eq!(r.per_subscriber(10_000), Some(2.0));
        assert_eq!(r.per_subscriber(0), None);
        assert_eq!(RssKib::default().per_subscriber(5), None);
    }

    #[test]
    fn a_zero_delay_is_recordable() {
        let mut h = latency_histogram();
        h.saturating_record(0);
        h.saturating_record(1000);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 0);
    }
}
