//! The compacted `{prefix}elections` topic: every process learns the elections from it, so a
//! process that starts later sees every election created before (docs/design.md §4.3, §4.4).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use votes_core::{Election, ElectionId, Names};

use crate::kafka::base_config;

#[derive(Debug, thiserror::Error)]
pub enum ElectionsLogError {
    #[error("elections topic {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("reading elections topic {topic} did not reach its end within {timeout:?}")]
    Timeout { topic: String, timeout: Duration },
}

/// The newest state of every election, whatever order states arrive in.
#[derive(Debug, Default)]
pub struct ElectionsView {
    by_id: HashMap<ElectionId, Election>,
    /// How many changes the view has taken, and who wants to hear of the next one: the core's
    /// results task and the forwarded votes held until the view knows their election (a core
    /// bounds those), each under the key its [`Moved`] holds and frees.
    changes: u64,
    watchers: HashMap<u64, Waker>,
    next_watcher: u64,
}

impl Clone for ElectionsView {
    /// The elections and the count of changes; the copy's watchers are its own.
    fn clone(&self) -> Self {
        Self {
            by_id: self.by_id.clone(),
            changes: self.changes,
            watchers: HashMap::new(),
            next_watcher: 0,
        }
    }
}

impl ElectionsView {
    /// Keeps `e` if it is newer than what the view holds; returns whether it changed.
    pub fn apply(&mut self, e: Election) -> bool {
        match self.by_id.get(&e.id) {
            Some(current) if current.version >= e.version => false,
            _ => {
                self.by_id.insert(e.id.clone(), e);
                self.changes += 1;
                // Waking only schedules the waiters' tasks: none runs inside this borrow.
                for (_, w) in self.watchers.drain() {
                    w.wake();
                }
                true
            }
        }
    }

    /// Changes taken so far: compare two readings to see whether anything moved.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Whether the view moved past `seen` changes; if not, `waker` is woken by the next change.
    /// `slot` keeps the watcher's key between calls; [`unwatch`](Self::unwatch) frees it.
    pub fn changed_since(&mut self, seen: u64, slot: &mut Option<u64>, waker: &Waker) -> bool {
        if self.changes != seen {
            return true;
        }
        let key = *slot.get_or_insert_with(|| {
            self.next_watcher += 1;
            self.next_watcher
        });
        match self.watchers.get_mut(&key) {
            Some(w) if w.will_wake(waker) => {}
            Some(w) => w.clone_from(waker),
            None => {
                self.watchers.insert(key, waker.clone());
            }
        }
        false
    }

    /// Forgets the watcher under `slot`, which will not wait again.
    pub fn unwatch(&mut self, slot: u64) {
        self.watchers.remove(&slot);
    }

    /// Resolves once `view` moved past `seen` changes.
    pub fn moved(view: &Rc<RefCell<Self>>, seen: u64) -> Moved {
        Moved {
            view: view.clone(),
            seen,
            slot: None,
        }
    }

    pub fn get(&self, id: &ElectionId) -> Option<&Election> {
        self.by_id.get(id)
    }

    /// Looks up an id as it came in a request path (not yet validated).
    pub fn find(&self, id: &str) -> Option<&Election> {
        self.by_id.get(id)
    }

    /// Elections sorted by id, for stable listings.
    pub fn sorted(&self) -> Vec<&Election> {
        let mut v: Vec<&Election> = self.by_id.values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// The future of [`ElectionsView::moved`]; dropped, it frees its watcher's slot, so waiters
/// that give up (a held vote whose bound passed) leave nothing behind.
pub struct Moved {
    view: Rc<RefCell<ElectionsView>>,
    seen: u64,
    slot: Option<u64>,
}

impl Future for Moved {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let moved = this
            .view
            .borrow_mut()
            .changed_since(this.seen, &mut this.slot, cx.waker());
        if moved {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Moved {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.view.borrow_mut().unwatch(slot);
        }
    }
}

/// Why an update of an election did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The change does not apply to the election as it now stands (a stale `If-Match`
    /// version, a state that would move backwards, an id that exists): nothing was written.
    #[error("{0}")]
    Conflict(String),
    #[error("no such election")]
    NotFound,
    #[error(transparent)]
    Log(#[from] ElectionsLogError),
    #[error("{attempts} concurrent writers kept fencing this one; try again")]
    Contended { attempts: u32 },
}

/// How often an update is tried again when another writer fenced it mid-way.
const UPDATE_ATTEMPTS: u32 = 20;

/// Writes election states, one serialized writer for the whole deployment (docs/design.md §7, election
/// versions): every update takes the transactional id `{prefix}elections-writer`, which fences
/// whichever process wrote before, reads the committed topic to its end, applies the change to
/// the election as it stands there, and commits the next version. Two updates at once, on one
/// node or two, cannot both be based on the same version: the later `init_transactions` aborts
/// the earlier one's transaction, which then starts over from what the later one committed.
/// So the topic never holds two states of one version, compaction keeps the truth, and a write
/// answered 200 is never lost. Blocking (runs off the reactors); updates on one node take turns.
pub struct ElectionsWriter {
    brokers: String,
    names: Names,
    topic: String,
    timeout: Duration,
    /// The open writer, kept between updates: while no other process takes the id, its next
    /// commit succeeds and what its reader saw was complete; once fenced, it is made anew.
    open: std::sync::Mutex<Option<OpenWriter>>,
}

struct OpenWriter {
    producer: rdkafka::producer::BaseProducer,
    reader: ElectionsReader,
    view: ElectionsView,
}

impl ElectionsWriter {
    pub fn new(brokers: &str, names: &Names, timeout: Duration) -> Result<Self, ElectionsLogError> {
        Ok(Self {
            brokers: brokers.to_owned(),
            names: names.clone(),
            topic: names.elections_topic(),
            timeout,
            open: std::sync::Mutex::new(None),
        })
    }

    fn err(&self) -> impl Fn(KafkaError) -> ElectionsLogError + '_ {
        |source| ElectionsLogError::Kafka {
            topic: self.topic.clone(),
            source,
        }
    }

    /// Takes the writer's id (fencing whoever had it: what they left open is aborted) and a
    /// reader of the committed topic from its beginning.
    fn open_writer(&self) -> Result<OpenWriter, KafkaError> {
        let producer: rdkafka::producer::BaseProducer =
            crate::kafka::transactional_producer_config(
                &self.brokers,
                &format!("{}elections-writer", self.names.prefix()),
            )
            .create()?;
        producer.init_transactions(self.timeout)?;
        let reader =
            ElectionsReader::with_fetch_wait(&self.brokers, &self.names, Duration::from_millis(5))
                .map_err(|e| match e {
                    ElectionsLogError::Kafka { source, .. } => source,
                    ElectionsLogError::Timeout { .. } => {
                        KafkaError::Global(rdkafka::types::RDKafkaErrorCode::OperationTimedOut)
                    }
                })?;
        Ok(OpenWriter {
            producer,
            reader,
            view: ElectionsView::default(),
        })
    }

    /// Applies `change` to election `id` as it stands in the committed topic (`None`: it does
    /// not exist yet) and commits the result as the next version. `change` says what the new
    /// state is, that there is nothing to write (`Ok(None)`: the election already is what the
    /// caller wants; it is returned as it stands), or why it does not apply; it may be called
    /// again if a concurrent writer won.
    pub fn update(
        &self,
        id: &ElectionId,
        change: impl Fn(Option<&Election>) -> Result<Option<Election>, UpdateError>,
    ) -> Result<Election, UpdateError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let updated = self.update_open(&mut open, id, change);
        // Between updates the reader fetches nothing: librdkafka prefetches in the background
        // whether or not anyone polls, and at a 5 ms fetch wait an idle writer would ask the
        // broker ~200 times a second for the rest of the process's life.
        if let Some(w) = open.as_ref() {
            w.reader.set_fetching(false);
        }
        updated
    }

    fn update_open(
        &self,
        open: &mut Option<OpenWriter>,
        id: &ElectionId,
        change: impl Fn(Option<&Election>) -> Result<Option<Election>, UpdateError>,
    ) -> Result<Election, UpdateError> {
        let mut backoff = Duration::from_millis(5);
        for _ in 0..UPDATE_ATTEMPTS {
            if open.is_none() {
                match self.open_writer() {
                    Ok(w) => *open = Some(w),
                    Err(e) if retriable(&e) => {
                        std::thread::sleep(jitter(backoff));
                        backoff = (backoff * 2).min(Duration::from_millis(200));
                        continue;
                    }
                    Err(e) => return Err(self.err()(e).into()),
                }
            }
            let w = open.as_mut().expect("opened above");
            w.reader.set_fetching(true);
            // Everything committed before this writer took the id, and since (its own writes):
            // another writer taking the id would fence the commit below.
            w.reader.load_to_end(&mut w.view, self.timeout)?;
            let current = w.view.get(id);
            let Some(next) = change(current)? else {
                return current.cloned().ok_or(UpdateError::NotFound);
            };
            assert_eq!(&next.id, id, "an update changes its own election");
            let expected = current.map_or(1, |c| c.version + 1);
            assert_eq!(next.version, expected, "an update writes the next version");
            let value = next.to_json();
            let written = w.producer.begin_transaction().and_then(|()| {
                w.producer
                    .send(
                        BaseRecord::<str, [u8]>::to(&self.topic)
                            .key(next.id.as_str())
                            .payload(&value),
                    )
                    .map_err(|(e, _)| e)?;
                w.producer.commit_transaction(self.timeout)
            });
            match written {
                Ok(()) => {
                    w.view.apply(next.clone());
                    return Ok(next);
                }
                // Another writer took the id meanwhile: start over from what it committed.
                Err(e) if retriable(&e) => {
                    tracing::debug!(election = %id, error = %e, "elections writer fenced; trying again");
                    *open = None;
                    std::thread::sleep(jitter(backoff));
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    *open = None;
                    return Err(self.err()(e).into());
                }
            }
        }
        Err(UpdateError::Contended {
            attempts: UPDATE_ATTEMPTS,
        })
    }
}

/// Errors after which an update starts over: fenced by a concurrent writer, or a transaction
/// the broker was still completing.
fn retriable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(rd) => {
            rd.is_retriable()
                || rd.txn_requires_abort()
                || rd.is_fatal()
                || matches!(
                    rd.code(),
                    rdkafka::types::RDKafkaErrorCode::ConcurrentTransactions
                        | rdkafka::types::RDKafkaErrorCode::ProducerFenced
                        | rdkafka::types::RDKafkaErrorCode::InvalidProducerEpoch
                )
        }
        _ => false,
    }
}

fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d + Duration::from_nanos(u64::from(nanos) % (d.as_nanos() as u64 + 1))
}

/// A reader of the elections topic from its beginning.
pub struct ElectionsReader {
    consumer: BaseConsumer<crate::kafka::VotesContext>,
    topic: String,
    pub invalid: u64,
}

impl ElectionsReader {
    pub fn new(brokers: &str, names: &Names) -> Result<Self, ElectionsLogError> {
        Self::with_fetch_wait(brokers, names, Duration::from_millis(500))
    }

    /// A reader whose fetches wait at most `fetch_wait` for new records: a short wait finds
    /// the end sooner (the writer reads to the end before every update), a long one keeps an
    /// idle follower from polling the broker.
    pub fn with_fetch_wait(
        brokers: &str,
        names: &Names,
        fetch_wait: Duration,
    ) -> Result<Self, ElectionsLogError> {
        let topic = names.elections_topic();
        let err = |source| ElectionsLogError::Kafka {
            topic: topic.clone(),
            source,
        };
        let consumer: BaseConsumer<crate::kafka::VotesContext> = base_config(brokers)
            .set("group.id", format!("{}elections-reader", names.prefix()))
            // Only what a writer committed (an update fenced mid-way is aborted).
            .set("isolation.level", "read_committed")
            .set(
                "fetch.wait.max.ms",
                fetch_wait.as_millis().max(1).to_string(),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create_with_context(crate::kafka::VotesContext)
            .map_err(err)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .map_err(err)?;
        consumer.assign(&tpl).map_err(err)?;
        Ok(Self {
            consumer,
            topic,
            invalid: 0,
        })
    }

    /// Reads until the end of the topic (blocking, bounded by `timeout` of silence).
    pub fn load_to_end(
        &mut self,
        view: &mut ElectionsView,
        timeout: Duration,
    ) -> Result<(), ElectionsLogError> {
        let err = |source| ElectionsLogError::Kafka {
            topic: self.topic.clone(),
            source,
        };
        // The end as of now. A reader that already reported EOF once gets no second EOF event
        // when nothing new arrived, and a transaction's commit marker is never delivered, so
        // the position (which librdkafka moves past markers) against this end also says done.
        let (_, end) =
            crate::kafka::watermarks(&self.consumer, &self.topic, 0, timeout).map_err(err)?;
        let mut last = Instant::now();
        loop {
            match self.consumer.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    take(&self.topic, &mut self.invalid, m.payload(), view);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
                Some(Err(source)) => return Err(err(source)),
                None => {
                    let position = self
                        .consumer
                        .position()
                        .map_err(err)?
                        .find_partition(&self.topic, 0)
                        .and_then(|p| p.offset().to_raw());
                    if position.is_some_and(|p| p >= end) {
                        return Ok(());
                    }
                    if last.elapsed() > timeout {
                        return Err(ElectionsLogError::Timeout {
                            topic: self.topic.clone(),
                            timeout,
                        });
                    }
                }
            }
        }
    }

    /// Stops (`false`) or restarts (`true`) the background fetching of the topic; a restart
    /// goes on from the position the reader had reached, so nothing is skipped or read twice.
    pub fn set_fetching(&self, on: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, 0);
        let done = if on {
            self.consumer.resume(&tpl)
        } else {
            self.consumer.pause(&tpl)
        };
        if let Err(e) = done {
            // Only an unknown partition fails here; the worst outcome is fetches continuing
            // (a cost) or a read that times out and is retried (an error the caller sees).
            tracing::warn!(topic = %self.topic, error = %e, fetching = on, "elections reader");
        }
    }

    /// Takes whatever arrived without waiting (safe on a reactor: poll(0) only dequeues);
    /// returns the elections that changed.
    pub fn poll_now(&mut self, view: &mut ElectionsView) -> Vec<Election> {
        let mut changed = Vec::new();
        for _ in 0..1024 {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    if let Some(e) = take(&self.topic, &mut self.invalid, m.payload(), view) {
                        changed.push(e);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "elections topic");
                    break;
                }
                None => break,
            }
        }
        changed
    }
}

fn take(
    topic: &str,
    invalid: &mut u64,
    payload: Option<&[u8]>,
    view: &mut ElectionsView,
) -> Option<Election> {
    // A tombstone (no payload) or a value that is not a valid election is not applied.
    match payload.map(Election::from_json) {
        Some(Ok(e)) => view.apply(e.clone()).then_some(e),
        Some(Err(why)) => {
            *invalid += 1;
            tracing::warn!(%topic, %why, "ignoring an invalid election record");
            None
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn election(version: u64) -> Election {
        Election::from_json(
            format!(
                r#"{{"id":"e","title":"t","state":"open","version":{version},
                "options":[{{"id":"a","label":"A"}},{{"id":"b","label":"B"}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn the_watcher_hears_of_a_change_and_not_of_an_older_state() {
        let mut view = ElectionsView::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut slot = None;
        let seen = view.changes();
        assert!(!view.changed_since(seen, &mut slot, &waker));
        assert!(view.apply(election(2)));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken by the change");
        assert!(view.changed_since(seen, &mut slot, &waker));
        let seen = view.changes();
        assert!(!view.changed_since(seen, &mut slot, &waker));
        assert!(!view.apply(election(1)), "an older state is not a change");
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(!view.changed_since(seen, &mut slot, &waker));
    }

    /// Every waiter hears of a change (a core holds many forwarded votes at once), and one
    /// that gives up leaves no slot behind however often it waited.
    #[test]
    fn every_waiter_hears_of_a_change_and_a_dropped_one_leaves_nothing() {
        let view = Rc::new(RefCell::new(ElectionsView::default()));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let seen = view.borrow().changes();
        let mut waiters: Vec<_> = (0..3).map(|_| ElectionsView::moved(&view, seen)).collect();
        for w in &mut waiters {
            assert!(Pin::new(&mut *w).poll(&mut cx).is_pending());
            assert!(Pin::new(&mut *w).poll(&mut cx).is_pending());
        }
        assert_eq!(view.borrow().watchers.len(), 3, "one slot per waiter");
        let mut gives_up = ElectionsView::moved(&view, seen);
        assert!(Pin::new(&mut gives_up).poll(&mut cx).is_pending());
        drop(gives_up);
        assert_eq!(
            view.borrow().watchers.len(),
            3,
            "a dropped waiter's slot is freed"
        );
        assert!(view.borrow_mut().apply(election(1)));
        assert_eq!(count.0.load(Ordering::SeqCst), 3, "every waiter is woken");
        for w in &mut waiters {
            assert!(Pin::new(&mut *w).poll(&mut cx).is_ready());
        }
        drop(waiters);
        assert!(view.borrow().watchers.is_empty());
    }
}
