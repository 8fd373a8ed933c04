//! The real Kafka broker behaves as docs/design.md §3.1-3.3 needs: a transaction's records are visible
//! to read_committed readers only once committed, never when aborted, and a second producer with
//! the same transactional.id fences the first.

mod common;

use std::time::Duration;

use common::KAFKA;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use votes_core::Names;
use votes_tally::kafka::{read_committed_consumer_config, transactional_producer_config};

const T: Duration = Duration::from_secs(30);

fn topic_for(test: &str) -> (Names, String) {
    let names = common::fresh_topics(test, 1);
    let topic = names.votes_topic();
    (names, topic)
}

fn producer(txn_id: &str) -> ThreadedProducer<DefaultProducerContext> {
    let p: ThreadedProducer<_> = transactional_producer_config(&KAFKA, txn_id)
        .create()
        .expect("producer created");
    p.init_transactions(T).expect("init_transactions");
    p
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, value: &str) {
    p.send(BaseRecord::to(topic).partition(0).key(value).payload(value))
        .map_err(|(e, _)| e)
        .expect("record enqueued");
}

/// Every value in partition 0 of `topic` as a reader with `isolation` sees it, up to the end.
fn read_all(topic: &str, isolation: &str) -> Vec<String> {
    let mut cfg = read_committed_consumer_config(&KAFKA, "unused-no-commits");
    cfg.set("isolation.level", isolation);
    let consumer: BaseConsumer = cfg.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + T;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} did not reach its end"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => seen.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap()),
            Some(Err(KafkaError::PartitionEOF(_))) => return seen,
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
}

#[test]
fn read_committed_sees_committed_transactions_and_never_aborted_ones() {
    let (names, topic) = topic_for("txn");
    let p = producer(&names.transactional_id(0));

    p.begin_transaction().unwrap();
    for v in ["c1", "c2", "c3"] {
        send(&p, &topic, v);
    }
    p.commit_transaction(T).expect("first commit");

    p.begin_transaction().unwrap();
    for v in ["a1", "a2"] {
        send(&p, &topic, v);
    }
    p.flush(T).unwrap(); // the aborted records really reach the log before the abort
    p.abort_transaction(T).expect("abort");

    p.begin_transaction().unwrap();
    send(&p, &topic, "c4");
    p.commit_transaction(T).expect("second commit");

    assert_eq!(read_all(&topic, "read_committed"), ["c1", "c2", "c3", "c4"]);
    // The aborted records are in the log: only the isolation level hides them.
    assert_eq!(
        read_all(&topic, "read_uncommitted"),
        ["c1", "c2", "c3", "a1", "a2", "c4"]
    );
}

#[test]
fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let (names, topic) = topic_for("fence");
    let txn_id = names.transactional_id(0);
    let old = producer(&txn_id);
    old.begin_transaction().unwrap();
    send(&old, &topic, "zombie");
    old.flush(T).unwrap();

    // The new owner's init_transactions bumps the epoch and aborts the old open transaction.
    let new = producer(&txn_id);
    new.begin_transaction().unwrap();
    send(&new, &topic, "owner");
    new.commit_transaction(T).expect("the new owner commits");

    let err = old
        .commit_transaction(T)
        .expect_err("the fenced producer must not commit");
    let KafkaError::Transaction(rd) = &err else {
        panic!("expected a transaction error, got {err}")
    };
    assert!(
        rd.is_fatal()
            && matches!(
                rd.code(),
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            ),
        "expected a fatal fencing error, got {rd:?} ({})",
        rd.code()
    );
    assert_eq!(read_all(&topic, "read_committed"), ["owner"]);
}
