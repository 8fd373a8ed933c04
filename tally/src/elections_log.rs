//! The compacted `{prefix}elections` topic: every process learns the elections from it, so a
//! process that starts later sees every election created before (DESIGN §4.3, §4.4).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
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
#[derive(Clone, Debug, Default)]
pub struct ElectionsView {
    by_id: HashMap<ElectionId, Election>,
}

impl ElectionsView {
    /// Keeps `e` if it is newer than what the view holds; returns whether it changed.
    pub fn apply(&mut self, e: Election) -> bool {
        match self.by_id.get(&e.id) {
            Some(current) if current.version >= e.version => false,
            _ => {
                self.by_id.insert(e.id.clone(), e);
                true
            }
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

/// Writes election states; blocking (runs off the reactors).
pub struct ElectionsWriter {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
    timeout: Duration,
}

impl ElectionsWriter {
    pub fn new(brokers: &str, names: &Names, timeout: Duration) -> Result<Self, ElectionsLogError> {
        let topic = names.elections_topic();
        let producer = base_config(brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()
            .map_err(|source| ElectionsLogError::Kafka {
                topic: topic.clone(),
                source,
            })?;
        Ok(Self {
            producer,
            topic,
            timeout,
        })
    }

    /// Appends `e` and waits until every in-sync replica has it.
    pub fn publish(&self, e: &Election) -> Result<(), ElectionsLogError> {
        let err = |source| ElectionsLogError::Kafka {
            topic: self.topic.clone(),
            source,
        };
        let value = e.to_json();
        self.producer
            .send(
                BaseRecord::<str, [u8]>::to(&self.topic)
                    .key(e.id.as_str())
                    .payload(&value),
            )
            .map_err(|(e, _)| err(e))?;
        self.producer.flush(self.timeout).map_err(err)
    }
}

/// A reader of the elections topic from its beginning.
pub struct ElectionsReader {
    consumer: BaseConsumer<crate::kafka::VotesContext>,
    topic: String,
    pub invalid: u64,
}

impl ElectionsReader {
    pub fn new(brokers: &str, names: &Names) -> Result<Self, ElectionsLogError> {
        let topic = names.elections_topic();
        let err = |source| ElectionsLogError::Kafka {
            topic: topic.clone(),
            source,
        };
        let consumer: BaseConsumer<crate::kafka::VotesContext> = base_config(brokers)
            .set("group.id", format!("{}elections-reader", names.prefix()))
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
        let mut last = Instant::now();
        loop {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    take(&self.topic, &mut self.invalid, m.payload(), view);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
                Some(Err(source)) => {
                    return Err(ElectionsLogError::Kafka {
                        topic: self.topic.clone(),
                        source,
                    });
                }
                None if last.elapsed() > timeout => {
                    return Err(ElectionsLogError::Timeout {
                        topic: self.topic.clone(),
                        timeout,
                    });
                }
                None => {}
            }
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
