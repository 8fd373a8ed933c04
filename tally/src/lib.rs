//! `votes-tally`: everything that turns accepted votes into durable, countable state.
//!
//! Today it holds the drivers' shared ground: connections to Kafka ([`kafka`]), DynamoDB
//! ([`dynamo`]) and Redis ([`read_model`]), and the idempotent provisioning of topics and
//! tables ([`provision`]), and the drivers around the sans-IO core of `votes-shard` (re-exported
//! as [`shard`], [`engine`] and [`sim`]): the committer thread, recovery, group membership,
//! fan-out, the persister and the recount (docs/design.md §2).

pub mod audit;
pub mod committer;
pub mod dynamo;
pub mod elections_log;
pub mod fanout;
pub mod kafka;
pub mod membership;
pub mod persist;
pub mod provision;
pub mod read_model;
pub mod recount;
pub mod recovery;
pub mod redis_target;
pub mod reprocess;
pub mod snapshot;

// The sans-IO core lives in its own crate (no I/O dependency); its paths stay reachable here.
pub use votes_shard::{engine, shard, sim};

pub use redis_target::RedisTarget;

/// Where the external services are; every role reads the same settings (docs/design.md §4.1).
#[derive(Clone, Debug)]
pub struct Services {
    /// `VOTES_KAFKA_BROKERS`, a bootstrap list `host:port,…`.
    pub kafka_brokers: String,
    /// `VOTES_REDIS_URL`.
    pub redis_url: String,
    /// `VOTES_DYNAMODB_ENDPOINT`; `None` means real DynamoDB through the AWS credential chain.
    pub dynamodb_endpoint: Option<String>,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            kafka_brokers: "127.0.0.1:9092".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            dynamodb_endpoint: Some("http://127.0.0.1:8000".into()),
        }
    }
}
