//! The node's one link to the Redis read model (docs/design.md §3.4): a dedicated thread that
//!
//! - publishes the shards' absolute tallies (ingest role): cores hand it the latest state of
//!   each (election, partition) with `try_send`, never waiting; it coalesces to the newest
//!   offset per key and writes them in one pipeline through the offset-guarded Lua script;
//! - polls the results (results role): every poll interval, one pipeline reads every
//!   partition's hash and the final key of each watched election, sums the partitions and
//!   posts the sums on a [`ResultsBoard`] that every core reads. Subscribers never cost a Redis
//!   round trip of their own.
//!
//! A Redis outage only delays results: pending tallies stay coalesced in memory (bounded by
//! elections × partitions), the link reconnects with a bounded backoff, and the next write
//! brings Redis up to date because every write is absolute.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use votes_core::clock::unix_ms;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use votes_core::{ElectionId, Names, OptionId};

use crate::read_model::{OFFSET_FIELD, PUBLISH_TALLY_LUA};

/// Messages a core may have waiting for the link; beyond it `try_send` fails and the core
/// keeps coalescing on its side.
pub const LINK_QUEUE: usize = 256;
/// Longest wait for a connection or an answer from Redis.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Writes per pipeline; a larger backlog (after an outage) goes in several.
const PIPELINE_MAX: usize = 512;

/// The absolute tally of one election in one partition, as of `offset` (the partition's end
/// offset after the last committed record the counts include).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TallyUpdate {
    pub election: ElectionId,
    pub partition: u32,
    pub offset: u64,
    pub counts: Vec<(OptionId, u64)>,
}

/// An official result as the recount wrote it under the election's final key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Official {
    pub totals: BTreeMap<String, u64>,
    pub total: u64,
    pub decided_at_ms: u64,
    /// Other `_`-prefixed fields the recount stored (Merkle root, tree size…), without `_`.
    pub extra: BTreeMap<String, String>,
}

/// One election's results as the read model holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionResults {
    pub totals: BTreeMap<String, u64>,
    pub total: u64,
    /// Sum of the offsets the partitions' tallies reflect: grows with every change, the same
    /// on every node reading the same Redis, so it serves as the SSE event id.
    pub version: u64,
    /// When this node first saw this version.
    pub seen_at_ms: u64,
    pub official: Option<Official>,
}

/// Sums the partitions' hashes of an election (HGETALL answers; empty = no votes there yet).
/// Fields that are not counts (a future field, a corrupt value) are skipped, never summed.
pub fn sum_partitions<'a>(
    hashes: impl IntoIterator<Item = &'a HashMap<String, String>>,
) -> (BTreeMap<String, u64>, u64) {
    let mut totals = BTreeMap::new();
    let mut version = 0u64;
    for h in hashes {
        for (field, value) in h {
            let Ok(n) = value.parse::<u64>() else {
                continue;
            };
            if field == OFFSET_FIELD {
                version = version.saturating_add(n);
            } else if !field.starts_with('_') {
                *totals.entry(field.clone()).or_insert(0u64) += n;
            }
        }
    }
    (totals, version)
}

/// Reads a final key's hash: option counts plus `_total`, `_decided_at_ms` and other `_` fields.
/// `None` when the hash is empty or lacks `_decided_at_ms` (a half-written result is not one).
pub fn parse_official(h: &HashMap<String, String>) -> Option<Official> {
    let decided_at_ms = h.get("_decided_at_ms")?.parse().ok()?;
    let mut totals = BTreeMap::new();
    let mut extra = BTreeMap::new();
    for (field, value) in h {
        match field.strip_prefix('_') {
            Some("decided_at_ms" | "total") => {}
            Some(name) => {
                extra.insert(name.to_owned(), value.clone());
            }
            None => {
                totals.insert(field.clone(), value.parse().ok()?);
            }
        }
    }
    let total = totals.values().sum();
    if let Some(stated) = h.get("_total") {
        // A result whose parts do not add up is not shown as official.
        if stated.parse::<u64>().ok()? != total {
            return None;
        }
    }
    Some(Official {
        totals,
        total,
        decided_at_ms,
        extra,
    })
}

/// The fields of a final key, for the recount (and tests) to write.
pub fn official_fields(o: &Official) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = o
        .totals
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    out.push(("_total".into(), o.total.to_string()));
    out.push(("_decided_at_ms".into(), o.decided_at_ms.to_string()));
    for (k, v) in &o.extra {
        out.push((format!("_{k}"), v.clone()));
    }
    out
}

/// The latest results of every watched election; written by the link, read by every core.
/// Cores compare `generation` (one atomic load per tick) and take the map only when it moved.
#[derive(Default)]
pub struct ResultsBoard {
    generation: AtomicU64,
    results: Mutex<Arc<HashMap<ElectionId, Arc<ElectionResults>>>>,
    /// Cores waiting for the next post (one waker each at most: they re-register per wait).
    waiting: Mutex<Vec<std::task::Waker>>,
}

impl ResultsBoard {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Resolves once the board's generation differs from `seen`. The link thread wakes the
    /// waiters when it posts, so a core waiting here sleeps while the results stand still.
    pub async fn changed_since(&self, seen: u64) {
        std::future::poll_fn(|cx| {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            // Checked under the lock `post` takes after moving the generation: a post either
            // shows here or finds this waker.
            if self.generation() != seen {
                return std::task::Poll::Ready(());
            }
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await
    }

    pub fn snapshot(&self) -> Arc<HashMap<ElectionId, Arc<ElectionResults>>> {
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn post(&self, results: HashMap<ElectionId, Arc<ElectionResults>>) {
        *self.results.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(results);
        self.generation.fetch_add(1, Ordering::Release);
        let woken = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        woken.into_iter().for_each(std::task::Waker::wake);
    }
}

/// Figures of the link for `/metrics` and the admin dashboard; written by the link only.
#[derive(Default)]
pub struct LinkStats {
    pub published: AtomicU64,
    pub stale: AtomicU64,
    pub errors: AtomicU64,
    pub polls: AtomicU64,
    pub connected: AtomicBool,
    /// Tallies waiting for Redis right now.
    pub pending: AtomicU64,
    /// Age in ms of the oldest tally waiting for Redis (0 when none waits).
    pub lag_ms: AtomicU64,
}

#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub redis: crate::RedisTarget,
    pub names: Names,
    /// Partitions of `votes` (how many hashes make an election's results).
    pub partitions: u32,
    /// `Some`: poll results at this interval (results role).
    pub poll_every: Option<Duration>,
}

/// What the rest of the node holds of the link.
#[derive(Clone)]
pub struct LinkHandle {
    tx: Sender<Vec<TallyUpdate>>,
    pub board: Arc<ResultsBoard>,
    pub stats: Arc<LinkStats>,
    watched: Arc<Mutex<Vec<ElectionId>>>,
    stop: Arc<AtomicBool>,
}

impl LinkHandle {
    /// Hands tallies to the link without waiting; gives them back when its queue is full so
    /// the caller keeps them (coalesced) for the next try.
    pub fn offer(&self, updates: Vec<TallyUpdate>) -> Result<(), Vec<TallyUpdate>> {
        match self.tx.try_send(updates) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(u) | TrySendError::Disconnected(u)) => Err(u),
        }
    }

    /// The elections whose results the link polls (results role).
    pub fn watch(&self, elections: Vec<ElectionId>) {
        *self.watched.lock().unwrap_or_else(|p| p.into_inner()) = elections;
    }

    /// Asks the link to write what it holds and exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts the link thread.
pub fn start(cfg: LinkConfig) -> std::io::Result<(LinkHandle, std::thread::JoinHandle<()>)> {
    assert!(cfg.partitions > 0, "the votes topic has partitions");
    let (tx, rx) = crossbeam_channel::bounded(LINK_QUEUE);
    let handle = LinkHandle {
        tx,
        board: Arc::new(ResultsBoard::default()),
        stats: Arc::new(LinkStats::default()),
        watched: Arc::new(Mutex::new(Vec::new())),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let link = Link {
        cfg,
        rx,
        board: handle.board.clone(),
        stats: handle.stats.clone(),
        watched: handle.watched.clone(),
        stop: handle.stop.clone(),
        pending: HashMap::new(),
        conn: None,
        retry_at: Instant::now(),
        backoff: BACKOFF_MIN,
        last: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("redis-link".into())
        .spawn(move || link.run())?;
    Ok((handle, thread))
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

struct Pending {
    offset: u64,
    counts: Vec<(OptionId, u64)>,
    since: Instant,
}

struct Link {
    cfg: LinkConfig,
    rx: Receiver<Vec<TallyUpdate>>,
    board: Arc<ResultsBoard>,
    stats: Arc<LinkStats>,
    watched: Arc<Mutex<Vec<ElectionId>>>,
    stop: Arc<AtomicBool>,
    /// Newest tally per (election, partition) not yet in Redis.
    pending: HashMap<(ElectionId, u32), Pending>,
    conn: Option<(redis::Connection, String)>,
    retry_at: Instant,
    backoff: Duration,
    /// Results last posted, to keep `seen_at_ms` of versions that did not move.
    last: HashMap<ElectionId, Arc<ElectionResults>>,
}

impl Link {
    fn run(mut self) {
        let tick = self.cfg.poll_every.unwrap_or(Duration::from_millis(50));
        let mut next_poll = Instant::now();
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let wait = next_poll.saturating_duration_since(Instant::now());
            match self
                .rx
                .recv_timeout(if stopping { Duration::ZERO } else { wait })
            {
                Ok(batch) => self.merge(batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Every core is gone: write what is left, once, and end.
                    self.flush();
                    return;
                }
            }
            while let Ok(batch) = self.rx.try_recv() {
                self.merge(batch);
            }
            self.flush();
            if stopping {
                return;
            }
            if Instant::now() >= next_poll {
                if self.cfg.poll_every.is_some() {
                    self.poll();
                }
                next_poll = Instant::now() + tick;
            }
        }
    }

    fn merge(&mut self, batch: Vec<TallyUpdate>) {
        let now = Instant::now();
        for u in batch {
            let key = (u.election, u.partition);
            match self.pending.get_mut(&key) {
                Some(p) if p.offset >= u.offset => {}
                Some(p) => {
                    p.offset = u.offset;
                    p.counts = u.counts;
                }
                None => {
                    self.pending.insert(
                        key,
                        Pending {
                            offset: u.offset,
                            counts: u.counts,
                            since: now,
                        },
                    );
                }
            }
        }
        self.stats
            .pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    /// The connection, (re)opened when the backoff allows; `None` while Redis is away.
    fn connection(&mut self) -> Option<&mut (redis::Connection, String)> {
        if self.conn.is_none() && Instant::now() >= self.retry_at {
            match open(&self.cfg.redis) {
                Ok(c) => {
                    tracing::info!("connected to the Redis read model");
                    self.conn = Some(c);
                    self.backoff = BACKOFF_MIN;
                    self.stats.connected.store(true, Ordering::Relaxed);
                }
                Err(e) => self.failed(&e),
            }
        }
        self.conn.as_mut()
    }

    fn failed(&mut self, e: &LinkError) {
        if self.stats.connected.swap(false, Ordering::Relaxed) || self.backoff == BACKOFF_MIN {
            tracing::warn!(error = %e, "Redis read model unavailable; results are delayed, votes are not");
        }
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.conn = None;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Writes the pending tallies; keeps them on any failure.
    fn flush(&mut self) {
        let oldest = self.pending.values().map(|p| p.since).min();
        self.stats.lag_ms.store(
            oldest.map_or(0, |t| t.elapsed().as_millis() as u64),
            Ordering::Relaxed,
        );
        if self.pending.is_empty() {
            return;
        }
        let keys: Vec<(ElectionId, u32)> =
            self.pending.keys().take(PIPELINE_MAX).cloned().collect();
        let names = self.cfg.names.clone();
        let mut pipe = redis::pipe();
        {
            let Some((_, sha)) = self.connection() else {
                return;
            };
            let sha = sha.clone();
            for key in &keys {
                let p = &self.pending[key];
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(&sha)
                    .arg(1)
                    .arg(names.redis_tally_key(key.0.as_str(), key.1))
                    .arg(p.offset.to_string());
                for (option, count) in &p.counts {
                    cmd.arg(option.as_str()).arg(*count);
                }
            }
        }
        let (conn, _) = self.conn.as_mut().expect("connected above");
        match pipe.query::<Vec<i64>>(conn) {
            Ok(applied) => {
                debug_assert_eq!(applied.len(), keys.len(), "one answer per write");
                let fresh = applied.iter().filter(|a| **a == 1).count() as u64;
                self.stats.published.fetch_add(fresh, Ordering::Relaxed);
                self.stats
                    .stale
                    .fetch_add(keys.len() as u64 - fresh, Ordering::Relaxed);
                for key in &keys {
                    self.pending.remove(key);
                }
                self.stats
                    .pending
                    .store(self.pending.len() as u64, Ordering::Relaxed);
            }
            // NOSCRIPT after a Redis restart or SCRIPT FLUSH lands here too: the reconnect
            // loads the script again.
            Err(e) => self.failed(&LinkError::Redis(e)),
        }
    }

    /// Reads every watched election's partitions and final key in one pipeline.
    fn poll(&mut self) {
        let watched = self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let partitions = self.cfg.partitions;
        let names = self.cfg.names.clone();
        let Some((conn, _)) = self.connection() else {
            return;
        };
        let mut pipe = redis::pipe();
        for e in &watched {
            for p in 0..partitions {
                pipe.cmd("HGETALL")
                    .arg(names.redis_tally_key(e.as_str(), p));
            }
            pipe.cmd("HGETALL").arg(names.redis_final_key(e.as_str()));
        }
        let answers: Vec<HashMap<String, String>> = if watched.is_empty() {
            Vec::new()
        } else {
            match pipe.query(conn) {
                Ok(a) => a,
                Err(e) => return self.failed(&LinkError::Redis(e)),
            }
        };
        assert_eq!(
            answers.len(),
            watched.len() * (partitions as usize + 1),
            "one answer per read"
        );
        self.stats.polls.fetch_add(1, Ordering::Relaxed);
        let now_ms = unix_ms();
        let mut results = HashMap::with_capacity(watched.len());
        for (e, chunk) in watched.iter().zip(answers.chunks(partitions as usize + 1)) {
            let (parts, fin) = chunk.split_at(partitions as usize);
            let (totals, version) = sum_partitions(parts);
            let official = parse_official(&fin[0]);
            let r = match self.last.get(e) {
                Some(prev)
                    if prev.version == version
                        && prev.totals == totals
                        && prev.official == official =>
                {
                    prev.clone()
                }
                _ => Arc::new(ElectionResults {
                    total: totals.values().sum(),
                    totals,
                    version,
                    seen_at_ms: now_ms,
                    official,
                }),
            };
            results.insert(e.clone(), r);
        }
        let changed = results.len() != self.last.len()
            || results
                .iter()
                .any(|(e, r)| self.last.get(e).is_none_or(|p| !Arc::ptr_eq(p, r)));
        if changed {
            self.last = results.clone();
            self.board.post(results);
        }
    }
}

fn open(target: &crate::RedisTarget) -> Result<(redis::Connection, String), LinkError> {
    let client = target.client()?;
    let mut conn = client.get_connection_with_timeout(REDIS_TIMEOUT)?;
    conn.set_read_timeout(Some(REDIS_TIMEOUT))?;
    conn.set_write_timeout(Some(REDIS_TIMEOUT))?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(PUBLISH_TALLY_LUA)
        .query(&mut conn)?;
    Ok((conn, sha))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_post_wakes_a_core_waiting_on_the_board_from_another_thread() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let board = Arc::new(ResultsBoard::default());
        let flag = Arc::new(Flag(false.into()));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let seen = board.generation();
        let mut wait = std::pin::pin!(board.changed_since(seen));
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert!(
            wait.as_mut().poll(&mut cx).is_pending(),
            "re-polled, still one waker"
        );
        assert_eq!(board.waiting.lock().unwrap().len(), 1);
        let poster = board.clone();
        std::thread::spawn(move || poster.post(HashMap::new()))
            .join()
            .unwrap();
        assert!(flag.0.load(Ordering::SeqCst), "the post woke the waiter");
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        assert!(board.waiting.lock().unwrap().is_empty());
        // A post that lands before the wait is seen at once.
        assert!(
            std::pin::pin!(board.changed_since(seen))
                .poll(&mut cx)
                .is_ready()
        );
    }

    #[test]
    fn sums_partitions_and_their_offsets() {
        let parts = [
            h(&[("_offset", "10"), ("a", "3"), ("b", "4")]),
            h(&[]),
            h(&[("_offset", "7"), ("a", "1"), ("c", "2"), ("x", "garbage")]),
        ];
        let (totals, version) = sum_partitions(&parts);
        assert_eq!(version, 17);
        assert_eq!(totals.get("a"), Some(&4));
        assert_eq!(totals.get("b"), Some(&4));
        assert_eq!(totals.get("c"), Some(&2));
        assert!(
            !totals.contains_key("x"),
            "a value that is not a count is skipped"
        );
        assert!(!totals.contains_key("_offset"));
    }

    #[test]
    fn an_official_result_round_trips_and_must_add_up() {
        let o = Official {
            totals: [("a".to_owned(), 5), ("b".to_owned(), 7)].into(),
            total: 12,
            decided_at_ms: 1_700_000_000_000,
            extra: [("merkle_root".to_owned(), "ab".repeat(32))].into(),
        };
        let fields: HashMap<String, String> = official_fields(&o).into_iter().collect();
        assert_eq!(parse_official(&fields), Some(o));

        let mut wrong = fields.clone();
        wrong.insert("_total".into(), "13".into());
        assert_eq!(
            parse_official(&wrong),
            None,
            "parts must add up to the total"
        );
        let mut half = fields;
        half.remove("_decided_at_ms");
        assert_eq!(parse_official(&half), None, "half-written is not official");
        assert_eq!(parse_official(&HashMap::new()), None);
    }
}
