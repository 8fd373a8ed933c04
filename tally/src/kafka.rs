//! Kafka client configuration shared by every driver.

use rdkafka::ClientConfig;

/// Base configuration of any client of the cluster.
pub fn base_config(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        // Loopback clusters answer in microseconds; production ones within a few seconds. A
        // minute bounds every metadata wait without masking a dead cluster for long.
        .set("socket.timeout.ms", "60000")
        .set("log_level", "4");
    // librdkafka's own debug contexts (e.g. `eos,protocol`) for diagnosing a cluster.
    if let Ok(contexts) = std::env::var("VOTES_KAFKA_DEBUG") {
        cfg.set("debug", contexts).set("log_level", "7");
    }
    cfg
}

/// A transactional producer's configuration (DESIGN §3.1-3.2): acks from every in-sync
/// replica, idempotence, and the transactional id that makes a new owner fence the old one.
pub fn transactional_producer_config(brokers: &str, transactional_id: &str) -> ClientConfig {
    let mut cfg = base_config(brokers);
    cfg.set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transaction.timeout.ms", "60000")
        // A transaction that starts right after the previous commit meets the broker still
        // completing it (CONCURRENT_TRANSACTIONS) and is retried after this backoff; the
        // default 100 ms would add 100 ms to every back-to-back batch.
        .set("retry.backoff.ms", "2")
        .set("retry.backoff.max.ms", "50");
    cfg
}

/// A consumer that only ever sees committed transactions (DESIGN §3.3).
pub fn read_committed_consumer_config(brokers: &str, group_id: &str) -> ClientConfig {
    let mut cfg = base_config(brokers);
    cfg.set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    cfg
}

/// The context of our consumers: like rust-rdkafka's default, except that reaching the end of
/// a partition (which `enable.partition.eof` asks for, and replays wait for) is not an error.
#[derive(Clone, Copy, Debug, Default)]
pub struct VotesContext;

impl rdkafka::ClientContext for VotesContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::trace!(%reason, "end of partition");
        } else {
            tracing::error!(%error, %reason, "librdkafka");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for VotesContext {}
