//! The floor: the cost of the durable log alone. One transactional producer per partition,
//! each on its own thread, writes pre-encoded vote records (`votes_core::record` v1, key =
//! voter as 8 bytes big-endian, partition = `votes_core::routing::partition_of`) in
//! transactions of `batch` records: begin, send, commit. Nothing else happens per vote, so no
//! appliance built on this log can use less broker or client work per vote.

use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use serde::Serialize;
use votes_core::record::VoteRecord;
use votes_core::{ElectionId, OptionId, VoterId};
use votes_tally::kafka::{base_config, transactional_producer_config};

use super::{BrokerRun, Expected, Pace, PeerError, VoteSpec, Votes, check_rate, record};
use crate::cpu;
use crate::mix::Rng;
use crate::report::LatencyMs;

#[derive(Debug, Clone)]
pub struct FloorConfig {
    pub brokers: String,
    pub topic: String,
    pub partitions: u32,
    pub spec: VoteSpec,
    /// Records per transaction.
    pub batch: usize,
    /// Records offered per second (open loop); `None`: as fast as possible.
    pub rate: Option<f64>,
    /// Broker processes whose CPU is counted; `None`: found with `pgrep -f 'kafka\.Kafka'`.
    pub broker_pids: Option<Vec<u32>>,
    /// Bound on topic creation, `init_transactions` and each commit.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CommitMs {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FloorReport {
    #[serde(flatten)]
    pub run: BrokerRun,
    /// One transaction, from `begin_transaction` to `commit_transaction`'s return.
    pub commit_ms: CommitMs,
    /// With `--rate` only: each vote from its intended time to its transaction's commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<LatencyMs>,
    pub batch: usize,
    pub partitions: u32,
    /// Distinct voters among the votes (the first vote of each counts).
    pub voters: u64,
    pub duplicates: u64,
    pub transactions: u64,
    pub topic: String,
    pub rate: Option<f64>,
    pub record_bytes_mean: f64,
    pub broker_pids: Vec<u32>,
}

impl FloorReport {
    pub fn summary(&self) -> String {
        format!(
            "kafka-floor: {} votes in {:.2}s = {:.0} votes/s over {} partitions, batch {}; {}; commit p50 {:.2} p99 {:.2} ms{}",
            self.run.votes,
            self.run.wall_s,
            self.run.votes_per_s,
            self.partitions,
            self.batch,
            self.run.cpu_summary(),
            self.commit_ms.p50,
            self.commit_ms.p99,
            self.latency_ms.as_ref().map_or(String::new(), |l| format!(
                "; vote latency p50 {:.2} p99 {:.2} max {:.2} ms",
                l.p50, l.p99, l.max
            )),
        )
    }
}

/// The records of one partition, encoded back to back.
struct Encoded {
    /// Global index of each record in the vote sequence (its intended time with `--rate`).
    index: Vec<u64>,
    keys: Vec<[u8; 8]>,
    values: Vec<u8>,
    /// End of each record's value in `values`.
    ends: Vec<usize>,
}

impl Encoded {
    fn value(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.values[start..self.ends[i]]
    }
}

fn encode(votes: &Votes, partitions: u32, seed: u64) -> Result<Vec<Encoded>, PeerError> {
    let election = ElectionId::new(votes.election.clone())
        .map_err(|e| PeerError::Args(format!("--election: {e}")))?;
    let options = votes
        .options
        .iter()
        .map(|o| OptionId::new(o.clone()).map_err(|e| PeerError::Args(format!("option: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let now_ms = votes_core::clock::unix_ms();
    let mut rng = Rng::new(seed ^ 0x6e6f_6e63_6573);
    let mut out: Vec<Encoded> = (0..partitions)
        .map(|_| Encoded {
            index: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            ends: Vec::new(),
        })
        .collect();
    for (i, v) in votes.seq.iter().enumerate() {
        let voter = VoterId(v.voter);
        let p = votes_core::routing::partition_of(voter, partitions) as usize;
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
        nonce[8..].copy_from_slice(&rng.next_u64().to_be_bytes());
        let rec = VoteRecord {
            election: election.clone(),
            voter,
            option: options[v.option as usize].clone(),
            received_at_ms: now_ms,
            node: "peer-floor".to_string(),
            core: u16::try_from(p).unwrap_or(u16::MAX),
            nonce,
        };
        let e = &mut out[p];
        rec.encode_into(&mut e.values);
        e.ends.push(e.values.len());
        e.keys.push(votes_core::routing::voter_key(voter));
        e.index.push(i as u64);
    }
    Ok(out)
}

/// The appliance's transactional producer settings (`votes_tally::kafka`), `linger.ms` 0 as
/// its commit drivers use.
fn producer_config(brokers: &str, transactional_id: &str) -> ClientConfig {
    let mut cfg = transactional_producer_config(brokers, transactional_id);
    cfg.set("linger.ms", "0");
    cfg
}

fn partition_count(brokers: &str, topic: &str, timeout: Duration) -> Result<usize, KafkaError> {
    let consumer: BaseConsumer = base_config(brokers).create()?;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(md.topics().first().map_or(0, |t| t.partitions().len()))
}

/// Creates `topic` with `partitions` partitions (replication 1) unless it exists; an existing
/// topic must have that many partitions.
pub fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> Result<(), PeerError> {
    let wanted = i32::try_from(partitions)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| PeerError::Args("--partitions must be within 1..=i32::MAX".into()))?;
    let admin: AdminClient<DefaultClientContext> = base_config(brokers).create()?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let new = NewTopic::new(topic, wanted, TopicReplication::Fixed(1));
    let results = super::current_thread_runtime()?.block_on(admin.create_topics([&new], &opts))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(PeerError::CreateTopic {
                    topic: t,
                    why: code.to_string(),
                });
            }
        }
    }
    // A topic just created may show no partitions for a moment.
    let deadline = Instant::now() + timeout;
    let found = loop {
        let n = partition_count(brokers, topic, timeout)?;
        if n > 0 || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if found != partitions as usize {
        return Err(PeerError::TopicPartitions {
            topic: topic.to_string(),
            found,
            wanted: partitions,
        });
    }
    Ok(())
}

/// Pids of local Kafka brokers (`pgrep -f 'kafka\.Kafka'`); empty when there is none.
pub fn find_broker_pids() -> Vec<u32> {
    std::process::Command::new("pgrep")
        .args(["-f", r"kafka\.Kafka"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Counts the delivery reports of the transaction in flight, served by the producer's own
/// polling thread. The committer waits for the last one before `commit_transaction`: that call
/// flushes first, and rust-rdkafka's flush polls in 100 ms steps, which would add up to
/// 100 ms to every transaction (the appliance's commit driver waits the same way).
#[derive(Default)]
pub struct Deliveries {
    state: Mutex<(usize, Option<KafkaError>)>,
    all_in: Condvar,
}

impl Deliveries {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Option<KafkaError>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expect(&self, n: usize) {
        *self.lock() = (n, None);
    }

    /// Waits for every report; the first delivery error, or a timeout.
    fn wait(&self, deadline: Instant) -> Result<(), KafkaError> {
        let mut d = self.lock();
        while d.0 > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
            }
            d = self
                .all_in
                .wait_timeout(d, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match d.1.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        let mut d = self.lock();
        if let Err((e, _)) = result
            && d.1.is_none()
        {
            d.1 = Some(e.clone());
        }
        d.0 = d.0.saturating_sub(1);
        if d.0 == 0 {
            self.all_in.notify_all();
        }
    }
}

struct Lane {
    commit_us: Histogram<u64>,
    latency_us: Histogram<u64>,
    transactions: u64,
}

/// Writes one partition's records; returns its histograms.
fn run_partition(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    partition: i32,
    rec: &Encoded,
    batch: usize,
    pace: Pace,
    timeout: Duration,
) -> Result<Lane, KafkaError> {
    let mut lane = Lane {
        commit_us: super::latency_histogram(),
        latency_us: super::latency_histogram(),
        transactions: 0,
    };
    let n = rec.index.len();
    let mut next = 0;
    while next < n {
        // Open loop: wait for the next record's time, then take every record already due.
        let end = match pace.due(rec.index[next]) {
            Some(due) => {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let now = Instant::now();
                let mut end = next + 1;
                while end < n
                    && end - next < batch
                    && pace.due(rec.index[end]).is_some_and(|d| d <= now)
                {
                    end += 1;
                }
                end
            }
            None => (next + batch).min(n),
        };
        let begin = Instant::now();
        producer.context().expect(end - next);
        producer.begin_transaction()?;
        for i in next..end {
            let deadline = Instant::now() + timeout;
            let mut r = BaseRecord::to(topic)
                .partition(partition)
                .key(&rec.keys[i][..])
                .payload(rec.value(i));
            loop {
                match producer.send(r) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        r = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(e),
                }
            }
        }
        let deadline = Instant::now() + timeout;
        producer.context().wait(deadline)?;
        // A message leaves librdkafka's count only after its delivery callback returned: wait
        // for that too, or the flush inside commit_transaction may still see it and poll for
        // 100 ms.
        while producer.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(20));
        }
        producer.commit_transaction(timeout)?;
        let done = Instant::now();
        record(&mut lane.commit_us, done - begin);
        lane.transactions += 1;
        for &idx in &rec.index[next..end] {
            if let Some(due) = pace.due(idx) {
                record(&mut lane.latency_us, done.saturating_duration_since(due));
            }
        }
        next = end;
    }
    Ok(lane)
}

/// Runs the floor; also returns the expected tallies of the votes written.
pub fn run(cfg: &FloorConfig) -> Result<(FloorReport, Expected), PeerError> {
    check_rate(cfg.rate)?;
    if cfg.batch == 0 {
        return Err(PeerError::Args("--batch must be at least 1".into()));
    }
    if cfg.partitions == 0 || i32::try_from(cfg.partitions).is_err() {
        return Err(PeerError::Args("--partitions must be at least 1".into()));
    }
    let votes = Votes::generate(&cfg.spec)?;
    let expected = votes.expected(cfg.spec.seed);
    let encoded = encode(&votes, cfg.partitions, cfg.spec.seed)?;
    let total_bytes: usize = encoded.iter().map(|e| e.values.len()).sum();
    drop(votes);

    ensure_topic(&cfg.brokers, &cfg.topic, cfg.partitions, cfg.timeout)?;
    let run_id = format!(
        "{}-{}-{}",
        cfg.topic,
        std::process::id(),
        votes_core::clock::unix_ms()
    );
    let mut producers = Vec::with_capacity(cfg.partitions as usize);
    for p in 0..cfg.partitions {
        let producer: ThreadedProducer<Deliveries> =
            producer_config(&cfg.brokers, &format!("peer-floor-{run_id}-{p}"))
                .create_with_context(Deliveries::default())?;
        producer.init_transactions(cfg.timeout)?;
        producers.push(producer);
    }
    let broker_pids = match &cfg.broker_pids {
        Some(p) => p.clone(),
        None => find_broker_pids(),
    };
    let broker_cpu = |pids: &[u32]| -> Result<Option<f64>, PeerError> {
        if pids.is_empty() {
            Ok(None)
        } else {
            Ok(Some(cpu::sum_cpu_seconds(pids)?))
        }
    };

    let barrier = Arc::new(Barrier::new(cfg.partitions as usize + 1));
    let encoded = Arc::new(encoded);
    // Read before the threads start: nothing may fail while they wait at the barrier.
    let b0 = broker_cpu(&broker_pids)?;
    let c0 = cpu::self_cpu_seconds()?;
    let (t0, lanes) = std::thread::scope(|s| -> Result<_, PeerError> {
        // The threads wait at the barrier for the start time, which they read from `start`.
        let start = Arc::new(std::sync::OnceLock::<Instant>::new());
        let handles: Vec<_> = producers
            .iter()
            .enumerate()
            .map(|(p, producer)| {
                let (barrier, encoded, start) = (barrier.clone(), encoded.clone(), start.clone());
                let topic = cfg.topic.as_str();
                let (batch, rate, timeout) = (cfg.batch, cfg.rate, cfg.timeout);
                s.spawn(move || {
                    barrier.wait();
                    let t0 = *start.get().expect("start time set before the barrier");
                    let partition = i32::try_from(p).expect("partition count checked");
                    run_partition(
                        producer,
                        topic,
                        partition,
                        &encoded[p],
                        batch,
                        Pace { t0, rate },
                        timeout,
                    )
                })
            })
            .collect();
        let t0 = Instant::now();
        let _ = start.set(t0);
        barrier.wait();
        let mut lanes = Vec::with_capacity(handles.len());
        for h in handles {
            let lane = h
                .join()
                .map_err(|_| PeerError::Worker("a partition thread panicked".into()))??;
            lanes.push(lane);
        }
        Ok((t0, lanes))
    })?;
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let c1 = cpu::self_cpu_seconds()?;
    let b1 = broker_cpu(&broker_pids)?;

    let mut commit_us = super::latency_histogram();
    let mut latency_us = super::latency_histogram();
    let mut transactions = 0;
    for l in &lanes {
        super::merge_latency(&mut commit_us, &l.commit_us)?;
        super::merge_latency(&mut latency_us, &l.latency_us)?;
        transactions += l.transactions;
    }
    let n = cfg.spec.votes;
    let client_cpu = c1 - c0;
    let broker = b0.zip(b1).map(|(a, b)| b - a);
    let ms = |q: f64| commit_us.value_at_quantile(q) as f64 / 1000.0;
    let report = FloorReport {
        run: BrokerRun::measured("kafka-floor", n, wall, client_cpu, broker),
        commit_ms: CommitMs {
            p50: ms(0.5),
            p99: ms(0.99),
            max: commit_us.max() as f64 / 1000.0,
        },
        latency_ms: cfg.rate.map(|_| LatencyMs::of(&latency_us)),
        batch: cfg.batch,
        partitions: cfg.partitions,
        voters: expected.voters,
        duplicates: expected.duplicates,
        transactions,
        topic: cfg.topic.clone(),
        rate: cfg.rate,
        record_bytes_mean: total_bytes as f64 / n.max(1) as f64,
        broker_pids,
    };
    Ok((report, expected))
}
