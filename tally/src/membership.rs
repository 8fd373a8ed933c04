//! Who owns which partition of `votes`, decided by Kafka's group membership (docs/design.md §3.1).
//!
//! Every core of every `votes serve` is one member of the consumer group
//! [`Names::serve_group`], subscribed to the votes topic with the cooperative-sticky assignor
//! and static membership (`group.instance.id` = node and core). The group coordinator divides
//! the partitions between the members; a member hears of the partitions it gains and loses
//! through the rebalance callbacks, which this module turns into [`OwnershipEvent`]s for the
//! core's reactor. Membership alone is only a hint of who *should* write; it makes the writer
//! single through the group generation each event carries: a core's transactions commit
//! offsets with it, and the coordinator refuses a generation that is no longer the group's
//! (KIP-447), so a core that lost a partition without hearing of it cannot commit (§3.1).
//!
//! Members consume nothing: every assigned partition is paused at once, so the group costs
//! heartbeats, not a second read of every vote.
//!
//! Why static membership: a node restarted by systemd rejoins under the same instance ids
//! within the session timeout and gets its partitions back without a rebalance of the fleet;
//! the price is that a node that dies keeps its partitions until the session times out.
//!
//! A member can leave the group without hearing of it: a client whose threads are held (a
//! wall clock stepped back stalls librdkafka's timed waits) stops heartbeating and is dropped,
//! and its callbacks never run. The coordinator's refusals of the core's offsets are then the
//! only news; a core refused for long asks ([`Rejoin`]) and the member's supervisor replaces
//! the client, telling the core its partitions are lost first.
//!
//! [`GroupWatch`] reads the group's description (members, their client ids and assignments)
//! so that every node can publish the map partition → node/core/internal address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::{ClientContext, TopicPartitionList};
use votes_core::Names;
use votes_core::group::{MemberTag, parse_assignment};

use crate::kafka::base_config;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("creating the group member: {0}")]
    Create(#[source] rdkafka::error::KafkaError),
    #[error("subscribing to {topic}: {source}")]
    Subscribe {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("starting the member's thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("describing the group {group}: {source}")]
    Describe {
        group: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// The partitions the group assigns one member now, as its thread last heard: shared with the
/// core, which checks it before it fences anyone (taking a partition it no longer holds would
/// fence the rightful owner). Written on the member's thread before the core hears of a change.
pub type Assignment = Arc<std::sync::Mutex<std::collections::BTreeSet<u32>>>;

/// Whether `assignment` holds `partition`.
pub fn holds(assignment: &Assignment, partition: u32) -> bool {
    assignment
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&partition)
}

/// What a core learns from its group membership.
pub enum OwnershipEvent {
    /// These partitions are this core's now (recover, then accept), and the group synced at a
    /// new generation, whose metadata the core's transactions carry from now on. Sent for
    /// every sync, with no partitions when this member gained none.
    Assigned {
        partitions: Vec<u32>,
        group: Arc<ConsumerGroupMetadata>,
    },
    /// These partitions are no longer this core's: stop accepting, finish the transaction in
    /// flight, answer what waits, then send on `done`. `lost`: the membership expired (the
    /// process was stopped or cut off); a new owner may already have fenced us.
    Revoked {
        partitions: Vec<u32>,
        lost: bool,
        done: mpsc::SyncSender<()>,
    },
}

/// How one core joins the group.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub brokers: String,
    pub names: Names,
    /// Published in the member's client id: where its node listens and which core it is.
    pub tag: MemberTag,
    /// After this long without a heartbeat the coordinator gives the member's partitions to
    /// the others (Kafka's `session.timeout.ms`; the broker bounds it, 6 s by default).
    pub session_timeout: Duration,
    /// Longest wait, inside a revocation, for the core to hand its partitions off. Past it the
    /// group moves on: the new owner fences whatever this core still writes.
    pub handoff_timeout: Duration,
}

impl MemberConfig {
    /// `group.instance.id`: stable across restarts of the same node and core.
    pub fn instance_id(&self) -> String {
        format!("{}-{}", self.tag.node, self.tag.core)
    }
}

/// The rebalance callbacks of one member; they run on the member's thread, inside `poll`.
struct MemberContext {
    /// Set when this client was given up for a new one ([`Rejoin`]): from then on it speaks
    /// for nobody, whatever its callbacks hear when (if ever) its threads wake.
    abandoned: Arc<AtomicBool>,
    topic: String,
    events: mpsc::Sender<OwnershipEvent>,
    handoff_timeout: Duration,
    instance: String,
    /// What the group assigned this member last.
    owned: Assignment,
    /// Rings the core's doorbell after each event.
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl ClientContext for MemberContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(member = %self.instance, %error, %reason, "group member");
    }
}

impl MemberContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        let mut ps: Vec<u32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect();
        ps.sort_unstable();
        ps
    }

    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Tells the core that every partition this member held is lost (the group has moved on
    /// without this client).
    fn revoke_all_lost(&self) {
        let owned: Vec<u32> = self
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        if !owned.is_empty() {
            self.revoke(owned, true);
        }
    }

    /// Tells the core to give `partitions` up and waits (bounded) until it did.
    fn revoke(&self, partitions: Vec<u32>, lost: bool) {
        if self.abandoned() {
            return;
        }
        {
            let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
            for p in &partitions {
                owned.remove(p);
            }
        }
        tracing::info!(member = %self.instance, ?partitions, lost, "partitions revoked");
        let (done, handed_off) = mpsc::sync_channel(1);
        if self
            .events
            .send(OwnershipEvent::Revoked {
                partitions: partitions.clone(),
                lost,
                done,
            })
            .is_err()
        {
            return; // The core is gone: nothing of ours writes any more.
        }
        (self.wake)();
        // Lost partitions (the session expired, the member was fenced) are the group's already:
        // waiting would hold this member's rejoin (up to the hand-off bound, while a commit in
        // flight rides out a broker failover) for nothing. The core still hands them off in
        // order, before any later generation reaches it, and whatever it has in flight carries
        // a generation the coordinator refuses, or is fenced by the new owner.
        if lost {
            return;
        }
        // Blocking here holds the rebalance: the partitions reach their new owner only after
        // our last transaction ended, so the hand-off rarely needs the fence.
        if handed_off.recv_timeout(self.handoff_timeout).is_err() {
            tracing::warn!(member = %self.instance, ?partitions, "hand-off not confirmed in time; the new owner will fence");
        }
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        if self.abandoned() {
            return;
        }
        let partitions = self.partitions(tpl);
        if partitions.is_empty() {
            return;
        }
        let lost = consumer.assignment_lost();
        self.revoke(partitions, lost);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.abandoned() {
            return;
        }
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.partitions(tpl);
                // librdkafka calls this after every sync (cooperative protocol), with the
                // partitions gained, maybe none: each call is a new generation.
                let Some(group) = consumer.group_metadata() else {
                    tracing::error!(member = %self.instance, "no group metadata after a sync");
                    return;
                };
                if !partitions.is_empty() {
                    // Membership only: the shard replays its partition on its own consumer.
                    if let Err(e) = consumer.pause(tpl) {
                        tracing::warn!(member = %self.instance, error = %e, "could not pause assigned partitions");
                    }
                    tracing::info!(member = %self.instance, ?partitions, "partitions assigned");
                    self.owned
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(partitions.iter().copied());
                }
                let _ = self.events.send(OwnershipEvent::Assigned {
                    partitions,
                    group: Arc::new(group),
                });
                (self.wake)();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(member = %self.instance, error = %e, "rebalance failed");
            }
        }
    }
}

/// A core's word to its member that the group no longer takes the member's generation, long
/// after the member's client should have heard so itself: the client is wedged. librdkafka
/// times its waits against the wall clock (#2145), so a clock stepped back holds every wait
/// begun before the step for as long as the step: the client stops heartbeating, the group
/// gives its partitions to others, and it never says so, while the core's transactions are
/// refused one after the other. Asked, the member's supervisor gives the client up, tells
/// the core its partitions are lost, and joins again with a new client.
#[derive(Clone)]
pub struct Rejoin(Arc<RejoinShared>);

struct RejoinShared {
    /// How long refusals may last with no word from the member before the core asks.
    after: Duration,
    state: Mutex<RejoinState>,
    changed: Condvar,
}

#[derive(Default)]
struct RejoinState {
    asked: bool,
    stopped: bool,
}

impl Rejoin {
    /// For a member with this session timeout. A healthy client hears of its expulsion at its
    /// next heartbeat (a quarter of the session) and revokes its partitions as lost; twice the
    /// session is far past that, and still short next to the minutes a wedge lasts.
    pub fn new(session_timeout: Duration) -> Self {
        Self(Arc::new(RejoinShared {
            after: (session_timeout * 2).max(MIN_REFUSED_FOR),
            state: Mutex::new(RejoinState::default()),
            changed: Condvar::new(),
        }))
    }

    /// How long a core's transactions may be refused for its generation, with no ownership
    /// event between, before it asks.
    pub fn after(&self) -> Duration {
        self.0.after
    }

    /// Asks the member's supervisor for a new client; never blocks.
    pub fn ask(&self) {
        self.0.lock().asked = true;
        self.0.changed.notify_all();
    }

    fn stop(&self) {
        self.0.lock().stopped = true;
        self.0.changed.notify_all();
    }

    /// Waits until asked (`true`, and the ask is taken) or stopped (`false`).
    fn wait(&self) -> bool {
        let mut s = self.0.lock();
        loop {
            if s.stopped {
                return false;
            }
            if std::mem::take(&mut s.asked) {
                return true;
            }
            s = self.0.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl RejoinShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, RejoinState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Floor of [`Rejoin::after`]: a rebalance's refusals (the moment between the group's new
/// generation and the member's sync) never last this long.
const MIN_REFUSED_FOR: Duration = Duration::from_secs(2);

/// A core's count of how long its transactions have been refused for its group generation
/// with no word from its member in between (pure: the caller gives the time).
#[derive(Debug, Default)]
pub struct Refusals {
    since: Option<Instant>,
}

impl Refusals {
    /// A transaction was refused for the core's generation at `now`; `true` when refusals have
    /// lasted `after` since the first one with no ownership event or commit between: time
    /// to [`Rejoin::ask`]. The count starts again after a `true`.
    pub fn refused(&mut self, now: Instant, after: Duration) -> bool {
        let since = *self.since.get_or_insert(now);
        if now.saturating_duration_since(since) < after {
            return false;
        }
        self.since = None;
        true
    }

    /// The member spoke (a sync, a revocation) or a transaction committed: the core's
    /// generation is good, or news of it has come.
    pub fn clear(&mut self) {
        self.since = None;
    }
}

/// One core's membership: a client polled on a thread of its own (the callbacks block), and a
/// supervisor that replaces the client when the core finds it wedged ([`Rejoin`]).
pub struct Member {
    stop: Arc<AtomicBool>,
    rejoin: Rejoin,
    supervisor: Option<JoinHandle<()>>,
}

/// How long one `poll` may wait: bounds how late a stop is noticed.
const POLL_STEP: Duration = Duration::from_millis(100);
/// Waits before a member whose client failed for good joins again with a new one: doubling
/// from the first to the last, back to the first once a client lasted [`REJOIN_STABLE`].
const REJOIN_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
const REJOIN_STABLE: Duration = Duration::from_secs(60);

impl Member {
    /// Joins the group; ownership events arrive on `events` from now on, and `rejoin` is the
    /// core's way to have the client replaced.
    pub fn start(
        cfg: &MemberConfig,
        events: mpsc::Sender<OwnershipEvent>,
        assignment: Assignment,
        wake: Box<dyn Fn() + Send + Sync>,
        rejoin: Rejoin,
    ) -> Result<Self, MembershipError> {
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::from(wake);
        let join = {
            let cfg = cfg.clone();
            move |abandoned: &Arc<AtomicBool>| {
                Self::join(
                    &cfg,
                    events.clone(),
                    assignment.clone(),
                    wake.clone(),
                    abandoned.clone(),
                )
            }
        };
        let abandoned = Arc::new(AtomicBool::new(false));
        let consumer = join(&abandoned)?;
        let stop = Arc::new(AtomicBool::new(false));
        let supervisor = Supervisor {
            join: Arc::new(join),
            stop: stop.clone(),
            rejoin: rejoin.clone(),
            cfg: cfg.clone(),
        };
        let first = supervisor.spawn_loop(consumer, abandoned)?;
        let thread = std::thread::Builder::new()
            .name(format!("member-sup-{}", cfg.tag.core))
            .spawn(move || supervisor.run(first))
            .map_err(MembershipError::Thread)?;
        Ok(Self {
            stop,
            rejoin,
            supervisor: Some(thread),
        })
    }

    /// A new client of the group under this core's instance id, subscribed.
    fn join(
        cfg: &MemberConfig,
        events: mpsc::Sender<OwnershipEvent>,
        assignment: Assignment,
        wake: Arc<dyn Fn() + Send + Sync>,
        abandoned: Arc<AtomicBool>,
    ) -> Result<BaseConsumer<MemberContext>, MembershipError> {
        let topic = cfg.names.votes_topic();
        let instance = cfg.instance_id();
        let session_ms = cfg.session_timeout.as_millis().max(1);
        let mut config = base_config(&cfg.brokers);
        config
            .set("group.id", cfg.names.serve_group())
            .set("group.instance.id", &instance)
            .set("client.id", cfg.tag.client_id())
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", (session_ms / 4).max(1).to_string())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            // Paused right after assignment; anything fetched before that is small.
            .set("max.partition.fetch.bytes", "16384");
        let consumer: BaseConsumer<MemberContext> = config
            .create_with_context(MemberContext {
                abandoned,
                topic: topic.clone(),
                events,
                handoff_timeout: cfg.handoff_timeout,
                instance,
                owned: assignment,
                wake,
            })
            .map_err(MembershipError::Create)?;
        consumer
            .subscribe(&[&topic])
            .map_err(|source| MembershipError::Subscribe {
                topic: topic.clone(),
                source,
            })?;
        Ok(consumer)
    }

    /// Stops polling and closes the member (joins its threads).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.rejoin.stop();
        if let Some(t) = self.supervisor.take()
            && t.join().is_err()
        {
            tracing::error!("a group member's supervisor panicked");
        }
    }
}

impl Drop for Member {
    /// Asks the threads to stop without waiting: the member's may be inside a revocation that
    /// waits for a core that is itself shutting down; it ends within `handoff_timeout`, or
    /// with the process.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.rejoin.stop();
    }
}

type JoinFn =
    dyn Fn(&Arc<AtomicBool>) -> Result<BaseConsumer<MemberContext>, MembershipError> + Send + Sync;

/// Owns the member's polling thread, and replaces its client when the core asks.
struct Supervisor {
    join: Arc<JoinFn>,
    stop: Arc<AtomicBool>,
    rejoin: Rejoin,
    cfg: MemberConfig,
}

/// The polling thread of the member's client in service.
struct Polling {
    abandoned: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Supervisor {
    fn run(self, mut polling: Polling) {
        while self.rejoin.wait() {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            tracing::error!(
                member = %self.cfg.instance_id(),
                refused_for = ?self.rejoin.after(),
                "the group refuses this core's generation and its member never heard: its client is wedged (a clock stepped back?); giving it up, its partitions as lost, and joining with a new one"
            );
            // From here the old client speaks for nobody. Its thread is left where it is stuck:
            // if it ever returns, it sees it was given up and ends. Should its client wake and
            // join the group first (same instance id), the coordinator fences the new client,
            // whose loop gives up, waits until the old one's session is over, and joins again.
            polling.abandoned.store(true, Ordering::Release);
            let Some(next) = self.new_polling() else {
                return;
            };
            polling = next;
        }
        // Asked to stop: the polling thread sees the same flag within a poll step.
        if polling.thread.join().is_err() {
            tracing::error!(member = %self.cfg.instance_id(), "a group member's thread panicked");
        }
    }

    /// A new client, the core told its partitions are lost first, and its polling thread;
    /// `None` when asked to stop before one could join.
    fn new_polling(&self) -> Option<Polling> {
        let mut backoff = REJOIN_BACKOFF.0;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            let abandoned = Arc::new(AtomicBool::new(false));
            let joined = (self.join)(&abandoned).and_then(|consumer| {
                // Before the new client's first poll, so the core hears of the loss before
                // any assignment of the new generation.
                consumer.context().revoke_all_lost();
                self.spawn_loop(consumer, abandoned)
            });
            match joined {
                Ok(polling) => return Some(polling),
                Err(e) => {
                    tracing::error!(member = %self.cfg.instance_id(), error = %e, ?backoff, "cannot join the group again");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(REJOIN_BACKOFF.1);
                }
            }
        }
    }

    fn spawn_loop(
        &self,
        consumer: BaseConsumer<MemberContext>,
        abandoned: Arc<AtomicBool>,
    ) -> Result<Polling, MembershipError> {
        let join = self.join.clone();
        let flag = abandoned.clone();
        let member = MemberLoop {
            // A client joined after a fatal error belongs to this loop, and is given up with it.
            join: move || join(&flag),
            stop: self.stop.clone(),
            abandoned: abandoned.clone(),
            instance: self.cfg.instance_id(),
            group_id: self.cfg.names.serve_group(),
            client_id: self.cfg.tag.client_id(),
            brokers: self.cfg.brokers.clone(),
            timeout: self.cfg.handoff_timeout,
            backoff: REJOIN_BACKOFF.0,
            watcher: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("member-{}", self.cfg.tag.core))
            .spawn(move || member.run(consumer))
            .map_err(MembershipError::Thread)?;
        Ok(Polling { abandoned, thread })
    }
}

/// A member's thread: it polls its client (the rebalance callbacks run inside) and, when the
/// client is out of the group for good, gives up the core's partitions and joins again.
struct MemberLoop<J> {
    join: J,
    stop: Arc<AtomicBool>,
    /// Set when the supervisor gave this loop's client up for a new one.
    abandoned: Arc<AtomicBool>,
    instance: String,
    group_id: String,
    client_id: String,
    brokers: String,
    timeout: Duration,
    /// The wait before the next rejoin: doubling, back to the first once a client lasted.
    backoff: Duration,
    /// Reads the group's description before a rejoin; made at the first one (a client idle
    /// all its life would cost threads and connections per core).
    watcher: Option<BaseConsumer>,
}

impl<J> MemberLoop<J>
where
    J: Fn() -> Result<BaseConsumer<MemberContext>, MembershipError>,
{
    /// Whether this loop should end: the member stops, or its client was given up (checked
    /// after every poll, which is where a wedged client's thread comes back, if ever).
    fn done(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.abandoned.load(Ordering::Acquire)
    }

    fn run(mut self, mut consumer: BaseConsumer<MemberContext>) {
        let mut joined = std::time::Instant::now();
        while !self.done() {
            // Paused partitions yield nothing but errors worth a line.
            if let Some(Err(e)) = consumer.poll(POLL_STEP) {
                tracing::debug!(member = %self.instance, error = %e, "group member poll");
            }
            if self.done() {
                break;
            }
            let Some((code, reason)) = consumer.client().fatal_error() else {
                continue;
            };
            // The client is out of the group for good: FENCED_INSTANCE_ID when another client
            // joined with this node id and core, which is also what librdkafka's own rejoin
            // meets after its session expired across a coordinator failover. Its core gives up
            // what it held, and a new client joins under the same instance id once no member
            // with this core's client id is left in the group: the dropped client's own
            // leftover goes with its session, while a duplicate process (the same node id, a
            // misconfiguration) keeps the instance and this core stays out, as long as that
            // one lives.
            tracing::error!(member = %self.instance, ?code, %reason, backoff = ?self.backoff, "group membership failed; this core gives up its partitions and joins again");
            consumer.context().revoke_all_lost();
            drop(consumer);
            if joined.elapsed() >= REJOIN_STABLE {
                self.backoff = REJOIN_BACKOFF.0;
            }
            let Some(again) = self.rejoin() else {
                return;
            };
            consumer = again;
            joined = std::time::Instant::now();
        }
        // Static members do not leave on close: the coordinator keeps their partitions for
        // them until the session times out (a restart comes back to them without a
        // rebalance).
        drop(consumer);
    }

    /// Waits the backoff, then joins again once no other client holds this core's instance;
    /// `None` when asked to stop meanwhile.
    fn rejoin(&mut self) -> Option<BaseConsumer<MemberContext>> {
        loop {
            let until = std::time::Instant::now() + self.backoff;
            while std::time::Instant::now() < until {
                if self.done() {
                    return None;
                }
                std::thread::sleep(POLL_STEP);
            }
            self.backoff = (self.backoff * 2).min(REJOIN_BACKOFF.1);
            if self.watcher.is_none() {
                self.watcher = base_config(&self.brokers).create().ok();
            }
            if self
                .watcher
                .as_ref()
                .is_some_and(|w| instance_held(w, &self.group_id, &self.client_id, self.timeout))
            {
                tracing::error!(member = %self.instance, backoff = ?self.backoff, "another client with this core's id is in the group (a second process with this node id?); staying out");
                continue;
            }
            match (self.join)() {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::error!(member = %self.instance, error = %e, "cannot join the group again")
                }
            }
        }
    }
}

/// Whether a member with `client_id` is in `group` now. A description that cannot be had
/// says no: joining then is what a member would do anyway.
fn instance_held(watcher: &BaseConsumer, group: &str, client_id: &str, timeout: Duration) -> bool {
    match watcher.fetch_group_list(Some(group), timeout) {
        Ok(list) => list
            .groups()
            .iter()
            .filter(|g| g.name() == group)
            .flat_map(|g| g.members())
            .any(|m| m.client_id() == client_id),
        Err(e) => {
            tracing::warn!(group, error = %e, "cannot describe the group before joining again");
            false
        }
    }
}

/// The owner of one partition, as the group describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOwner {
    pub node: String,
    pub core: u16,
    pub internal: SocketAddr,
}

/// The partition → owner map of the whole fleet, as the coordinator last described a stable
/// group. `owners[p]` is `None` when no member holds p (a rebalance is moving it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetMap {
    pub owners: Vec<Option<PartitionOwner>>,
    /// Members of the group (cores of `votes serve`), including those without partitions.
    pub members: usize,
    /// Members per node.
    pub nodes: std::collections::BTreeMap<String, usize>,
    /// Every member's `--internal` address: where forwarding links may come from.
    pub internals: std::collections::BTreeSet<SocketAddr>,
}

impl FleetMap {
    pub fn owner(&self, partition: u32) -> Option<&PartitionOwner> {
        self.owners.get(partition as usize).and_then(Option::as_ref)
    }

    /// Whether a forwarding link from `ip` may come from a member: the IP of a member's
    /// `--internal` address. Members on loopback (one machine) connect from any loopback
    /// address, whichever the kernel picks as the source.
    pub fn admits_link_from(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.internals.iter().any(|a| {
            let member = a.ip().to_canonical();
            member == ip || (ip.is_loopback() && member.is_loopback())
        })
    }
}

/// Reads the group's description; one per node, polled from a thread of its own.
pub struct GroupWatch {
    consumer: BaseConsumer,
    brokers: String,
    group: String,
    topic: String,
    partitions: u32,
}

impl GroupWatch {
    pub fn new(brokers: &str, names: &Names, partitions: u32) -> Result<Self, MembershipError> {
        assert!(partitions > 0, "the votes topic has partitions");
        let consumer = base_config(brokers)
            .create()
            .map_err(MembershipError::Create)?;
        Ok(Self {
            consumer,
            brokers: brokers.to_owned(),
            group: names.serve_group(),
            topic: names.votes_topic(),
            partitions,
        })
    }

    /// Replaces the client after a failed describe. librdkafka lists groups by asking every
    /// broker its client knows and fails the whole call while one of them is down
    /// (`rd_kafka_list_groups`), so a client that knew a broker now dead failed for as long as
    /// that broker stayed down (the fleet map, and so the routing of forwarded votes, frozen
    /// meanwhile: chaos seed 38, 24 s); a new client learns the brokers from the live ones'
    /// metadata, which leaves out a broker the controllers fenced.
    pub fn renew(&mut self) -> Result<(), MembershipError> {
        self.consumer = base_config(&self.brokers)
            .create()
            .map_err(MembershipError::Create)?;
        Ok(())
    }

    /// The fleet map when the group is stable; `None` while it rebalances (the last stable map
    /// then still says more than a half-built one).
    pub fn describe(&self, timeout: Duration) -> Result<Option<FleetMap>, MembershipError> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), timeout)
            .map_err(|source| MembershipError::Describe {
                group: self.group.clone(),
                source,
            })?;
        let Some(group) = list.groups().iter().find(|g| g.name() == self.group) else {
            return Ok(None);
        };
        if group.state() != "Stable" {
            return Ok(None);
        }
        Ok(Some(fleet_map(
            group
                .members()
                .iter()
                .map(|m| (m.client_id(), m.assignment().unwrap_or(&[]))),
            &self.topic,
            self.partitions,
        )))
    }
}

/// The map from each member's (client id, assignment bytes). Members whose client id is not a
/// [`MemberTag`] (not a `votes serve` core) or whose assignment does not parse are ignored; a
/// partition claimed twice (never in a stable group) keeps its first claimant.
pub fn fleet_map<'a>(
    members: impl Iterator<Item = (&'a str, &'a [u8])>,
    topic: &str,
    partitions: u32,
) -> FleetMap {
    let mut map = FleetMap {
        owners: vec![None; partitions as usize],
        members: 0,
        nodes: Default::default(),
        internals: Default::default(),
    };
    for (client_id, assignment) in members {
        let Some(tag) = MemberTag::parse(client_id) else {
            tracing::debug!(client_id, "a group member that is not a votes serve core");
            continue;
        };
        map.members += 1;
        *map.nodes.entry(tag.node.clone()).or_default() += 1;
        map.internals.insert(tag.internal);
        let assigned = match parse_assignment(assignment) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(client_id, error = %e, "unreadable assignment in the group description");
                continue;
            }
        };
        for (t, ps) in assigned {
            if t != topic {
                continue;
            }
            for p in ps {
                let Some(slot) = usize::try_from(p).ok().and_then(|p| map.owners.get_mut(p)) else {
                    continue;
                };
                if slot.is_none() {
                    *slot = Some(PartitionOwner {
                        node: tag.node.clone(),
                        core: tag.core,
                        internal: tag.internal,
                    });
                }
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use votes_core::group::encode_assignment;

    #[test]
    fn refusals_ask_for_a_new_client_only_once_they_last_with_no_word_between() {
        let after = Duration::from_secs(4);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Refusals::default();
        assert!(!r.refused(at(0), after), "a first refusal is a rebalance's");
        assert!(!r.refused(at(3), after));
        assert!(r.refused(at(4), after), "refused for the whole bound");
        assert!(
            !r.refused(at(5), after),
            "the count starts again after an ask"
        );
        assert!(r.refused(at(9), after));

        // Any word from the member, or a commit, means the generation is good or news came.
        assert!(!r.refused(at(10), after));
        r.clear();
        assert!(
            !r.refused(at(14), after),
            "counted from the first refusal since the word"
        );
        assert!(!r.refused(at(17), after));
        assert!(r.refused(at(18), after));
    }

    #[test]
    fn a_rejoin_is_bounded_below_and_taken_once_per_ask_until_stopped() {
        assert_eq!(
            Rejoin::new(Duration::from_millis(500)).after(),
            MIN_REFUSED_FOR
        );
        let rejoin = Rejoin::new(Duration::from_secs(10));
        assert_eq!(rejoin.after(), Duration::from_secs(20), "twice the session");
        rejoin.ask();
        rejoin.ask();
        assert!(rejoin.wait(), "asked: two asks before a wait are one");
        rejoin.ask();
        rejoin.stop();
        assert!(!rejoin.wait(), "a stop ends the wait, before any ask left");
        rejoin.ask();
        assert!(!rejoin.wait(), "a stopped rejoin never waits again");
    }

    #[test]
    fn links_are_admitted_from_members_internal_addresses_only() {
        let map = |addrs: &[&str]| FleetMap {
            internals: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ..Default::default()
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let fleet = map(&["10.0.0.1:7000", "[::ffff:10.0.0.2]:7000"]);
        assert!(fleet.admits_link_from(ip("10.0.0.1")));
        assert!(
            fleet.admits_link_from(ip("::ffff:10.0.0.1")),
            "mapped source"
        );
        assert!(fleet.admits_link_from(ip("10.0.0.2")), "mapped member");
        assert!(!fleet.admits_link_from(ip("10.0.0.3")));
        assert!(
            !fleet.admits_link_from(ip("127.0.0.1")),
            "loopback only where members are on it"
        );
        assert!(map(&["127.0.0.1:7000"]).admits_link_from(ip("127.0.0.3")));
        assert!(
            !FleetMap::default().admits_link_from(ip("10.0.0.1")),
            "no map yet"
        );
    }

    #[test]
    fn the_map_names_each_partitions_member_and_ignores_strangers() {
        let a = MemberTag {
            node: "n1".into(),
            core: 0,
            internal: "127.0.0.1:7001".parse().unwrap(),
        };
        let b = MemberTag {
            node: "n2".into(),
            core: 1,
            internal: "[::1]:7002".parse().unwrap(),
        };
        let (ca, cb) = (a.client_id(), b.client_id());
        let aa = encode_assignment(1, &[("t-votes", vec![0, 2]), ("other", vec![1])]);
        let ab = encode_assignment(0, &[("t-votes", vec![1, 9])]);
        let stranger = encode_assignment(0, &[("t-votes", vec![3])]);
        let members = [
            (ca.as_str(), aa.as_slice()),
            (cb.as_str(), ab.as_slice()),
            ("rdkafka", stranger.as_slice()),
            (ca.as_str(), &b"\x00"[..]),
        ];
        let map = fleet_map(members.into_iter(), "t-votes", 4);
        assert_eq!(
            map.members, 3,
            "two cores, one of them twice with a broken assignment"
        );
        assert_eq!(map.nodes.get("n1"), Some(&2));
        assert_eq!(map.owner(0).unwrap().node, "n1");
        assert_eq!(map.owner(1).unwrap().internal, b.internal);
        assert_eq!(map.owner(1).unwrap().core, 1);
        assert_eq!(map.owner(2).unwrap().node, "n1");
        assert_eq!(map.owner(3), None, "a stranger's claim is not an owner");
        assert_eq!(map.owner(9), None);
    }
}
