//! Kafka client configuration shared by every driver.

use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::ClientConfig;

/// How the process's clients reach the cluster: plaintext, TLS, SASL or both. The same for
/// every client of a process, so it is set once at start ([`set_security`]) and every
/// configuration made here carries it, none can forget it.
#[derive(Clone, Default)]
pub struct KafkaSecurity {
    /// librdkafka properties (`security.protocol`, `ssl.*`, `sasl.*`).
    props: Vec<(&'static str, String)>,
}

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl KafkaProtocol {
    fn name(self) -> &'static str {
        match self {
            KafkaProtocol::Plaintext => "plaintext",
            KafkaProtocol::Ssl => "ssl",
            KafkaProtocol::SaslPlaintext => "sasl_plaintext",
            KafkaProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, KafkaProtocol::Ssl | KafkaProtocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, KafkaProtocol::SaslPlaintext | KafkaProtocol::SaslSsl)
    }
}

/// A SASL identity: the mechanism (`SCRAM-SHA-512`, `SCRAM-SHA-256`, `PLAIN`), a user and its
/// password.
#[derive(Clone)]
pub struct SaslLogin {
    pub mechanism: &'static str,
    pub username: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KafkaSecurityError {
    #[error(
        "Kafka over {0} needs a SASL user and password (--kafka-sasl-username, VOTES_KAFKA_PASSWORD)"
    )]
    SaslWithoutLogin(&'static str),
    #[error(
        "a SASL user or password for Kafka needs --kafka-security-protocol sasl_ssl (or sasl_plaintext)"
    )]
    LoginWithoutSasl,
    #[error(
        "a certificate authority for Kafka (--kafka-ca) needs --kafka-security-protocol ssl or sasl_ssl"
    )]
    CaWithoutTls,
}

impl KafkaSecurity {
    pub fn new(
        protocol: KafkaProtocol,
        ca: Option<&std::path::Path>,
        login: Option<SaslLogin>,
    ) -> Result<Self, KafkaSecurityError> {
        if ca.is_some() && !protocol.tls() {
            return Err(KafkaSecurityError::CaWithoutTls);
        }
        match (&login, protocol.sasl()) {
            (None, true) => return Err(KafkaSecurityError::SaslWithoutLogin(protocol.name())),
            (Some(_), false) => return Err(KafkaSecurityError::LoginWithoutSasl),
            _ => {}
        }
        let mut props = vec![("security.protocol", protocol.name().to_owned())];
        if let Some(ca) = ca {
            props.push(("ssl.ca.location", ca.display().to_string()));
        }
        if protocol.tls() {
            // The broker's certificate must name the host dialled (librdkafka's default since
            // 2.0, stated so that no configuration can lose it).
            props.push(("ssl.endpoint.identification.algorithm", "https".to_owned()));
        }
        if let Some(login) = login {
            props.push(("sasl.mechanism", login.mechanism.to_owned()));
            props.push(("sasl.username", login.username));
            props.push(("sasl.password", login.password));
        }
        Ok(Self { props })
    }

    pub fn is_plaintext(&self) -> bool {
        self.props.is_empty()
            || self
                .props
                .iter()
                .any(|(k, v)| *k == "security.protocol" && v == "plaintext")
    }
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.props {
            m.entry(k, if *k == "sasl.password" { &"***" } else { v });
        }
        m.finish()
    }
}

static SECURITY: OnceLock<KafkaSecurity> = OnceLock::new();

/// Sets how every Kafka client of this process connects; once, at start, before any client is
/// made (a second call is a bug: clients made before it would differ).
///
/// # Panics
/// When called twice.
pub fn set_security(security: KafkaSecurity) {
    assert!(
        SECURITY.set(security).is_ok(),
        "the Kafka security settings are set once, at start"
    );
}

/// Why [`check`] failed.
#[derive(Debug)]
pub enum KafkaCheck {
    /// The cluster answered and refused us (credentials, certificate): a configuration error.
    Refused(String),
    /// No answer in time: the cluster may come later.
    Unreachable(String),
}

/// Records the first authentication or TLS failure librdkafka reports.
#[derive(Default)]
struct CheckContext {
    refused: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for CheckContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::RDKafkaErrorCode as Code;
        if matches!(
            error.rdkafka_error_code(),
            Some(Code::Authentication | Code::SSL | Code::SaslAuthenticationFailed)
        ) {
            let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            refused.get_or_insert_with(|| reason.to_owned());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for CheckContext {}

/// How long [`check`] serves librdkafka's events for a refusal after its metadata request
/// succeeded (a refusal then is rare: another broker of the list), and after it failed.
const REFUSAL_EVENT_AFTER_SUCCESS: Duration = Duration::from_millis(500);
const REFUSAL_EVENT_AFTER_FAILURE: Duration = Duration::from_secs(3);

/// Asks the cluster for its metadata within `timeout`: what a process checks at start so that
/// wrong credentials or an untrusted certificate stop it with a clear message.
pub fn check(brokers: &str, timeout: Duration) -> Result<(), KafkaCheck> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer<CheckContext> = base_config(brokers)
        .create_with_context(CheckContext::default())
        .map_err(|e| KafkaCheck::Refused(e.to_string()))?;
    let fetched = consumer.fetch_metadata(None, timeout);
    // librdkafka reports an authentication or TLS failure as an event, served by polling; the
    // event can trail the failed fetch on a busy machine (a count of polls missed it: each
    // returns at the first event of any kind), so a failed fetch waits for it, bounded.
    let wait = match &fetched {
        Ok(_) => REFUSAL_EVENT_AFTER_SUCCESS,
        Err(_) => REFUSAL_EVENT_AFTER_FAILURE,
    };
    let deadline = std::time::Instant::now() + wait;
    let refused_yet = || {
        consumer
            .context()
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    };
    while !refused_yet() && std::time::Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let refused = consumer
        .context()
        .refused
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match (fetched, refused) {
        (_, Some(why)) => Err(KafkaCheck::Refused(why)),
        (Ok(_), None) => Ok(()),
        (Err(e), None) => Err(KafkaCheck::Unreachable(e.to_string())),
    }
}

/// Base configuration of any client of the cluster.
pub fn base_config(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        // Loopback clusters answer in microseconds; production ones within a few seconds. A
        // minute bounds every metadata wait without masking a dead cluster for long.
        .set("socket.timeout.ms", "60000")
        .set("log_level", "4");
    if let Some(security) = SECURITY.get() {
        for (k, v) in &security.props {
            cfg.set(*k, v);
        }
    }
    // librdkafka's own debug contexts (e.g. `eos,protocol`) for diagnosing a cluster.
    if let Ok(contexts) = std::env::var("VOTES_KAFKA_DEBUG") {
        cfg.set("debug", contexts).set("log_level", "7");
    }
    cfg
}

/// A transactional producer's configuration (docs/design.md §3.1-3.2): acks from every in-sync
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

/// A consumer that only ever sees committed transactions (docs/design.md §3.3).
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

/// Whether a failed metadata or offsets request may succeed when asked again shortly: a
/// partition between leaders (a cluster starting, a broker failing over) or a broker not
/// reached yet. A request that already waited out its timeout is not among them.
pub fn transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::NotLeaderForPartition
                | Code::LeaderNotAvailable
                | Code::BrokerTransportFailure
                | Code::AllBrokersDown
        )
    )
}

/// Whether librdkafka answered from its own view of the cluster that the partition has no
/// leader. It keeps that view until its next metadata refresh (minutes away) and answers every
/// ask at once from it, `UnknownPartition`, without asking the cluster: a view taken while a
/// topic was new or a broker was failing over fails every ask for minutes (chaos seed
/// 20261322, twice: a node's start, and a kept client's recoveries). Asking again is worth it
/// only after the view is refreshed.
pub fn leaderless_in_view(e: &rdkafka::error::KafkaError) -> bool {
    e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::UnknownPartition)
}

/// A partition's low and high watermarks (the high one is the last stable offset for a
/// `read_committed` client), asked again while the answer is [`transient`] or
/// [`leaderless_in_view`] (the client's view of the cluster refreshed first), until `timeout`.
/// One failed ask must not fail a node's start or a shard's recovery: right after a broker
/// starts or dies, its partitions' leaders are being elected for a moment.
pub fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // Each ask gets what is left of the bound, so that all of them together keep it.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match consumer.fetch_watermarks(topic, partition, left) {
            Err(e)
                if (transient(&e) || leaderless_in_view(&e))
                    && std::time::Instant::now() < deadline =>
            {
                tracing::debug!(topic, partition, error = %e, "watermarks: asking again");
                if leaderless_in_view(&e) {
                    // A metadata request updates the client's view; its own failure is the
                    // next ask's to report.
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    let _ = consumer.fetch_metadata(Some(topic), left.min(Duration::from_secs(1)));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> SaslLogin {
        SaslLogin {
            mechanism: "SCRAM-SHA-512",
            username: "votes".into(),
            password: "hunter2-hunter2".into(),
        }
    }

    #[test]
    fn each_protocol_gets_what_it_needs_and_nothing_else() {
        let ca = std::path::Path::new("/etc/votes/kafka-ca.pem");
        let s = KafkaSecurity::new(KafkaProtocol::SaslSsl, Some(ca), Some(login())).unwrap();
        let props: std::collections::BTreeMap<_, _> = s.props.iter().cloned().collect();
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["ssl.ca.location"], "/etc/votes/kafka-ca.pem");
        assert_eq!(props["ssl.endpoint.identification.algorithm"], "https");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(props["sasl.username"], "votes");
        assert!(!s.is_plaintext());
        assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
        assert!(KafkaSecurity::default().is_plaintext());
        assert_eq!(
            KafkaSecurity::new(KafkaProtocol::SaslSsl, None, None).err(),
            Some(KafkaSecurityError::SaslWithoutLogin("sasl_ssl"))
        );
        assert_eq!(
            KafkaSecurity::new(KafkaProtocol::Ssl, None, Some(login())).err(),
            Some(KafkaSecurityError::LoginWithoutSasl)
        );
        assert_eq!(
            KafkaSecurity::new(KafkaProtocol::Plaintext, Some(ca), None).err(),
            Some(KafkaSecurityError::CaWithoutTls)
        );
        let plain = KafkaSecurity::new(KafkaProtocol::Plaintext, None, None).unwrap();
        assert!(plain.is_plaintext());
    }

    #[test]
    fn a_partition_between_leaders_is_asked_again_and_a_missing_topic_is_not() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as Code;
        // What a node met starting beside a cluster that had just started (chaos seed 20261301).
        assert!(transient(&KafkaError::MetadataFetch(
            Code::NotLeaderForPartition
        )));
        assert!(transient(&KafkaError::MetadataFetch(
            Code::LeaderNotAvailable
        )));
        assert!(transient(&KafkaError::MetadataFetch(Code::AllBrokersDown)));
        assert!(!transient(&KafkaError::MetadataFetch(
            Code::UnknownTopicOrPartition
        )));
        assert!(!transient(&KafkaError::MetadataFetch(
            Code::OperationTimedOut
        )));
        assert!(!transient(&KafkaError::MetadataFetch(
            Code::TopicAuthorizationFailed
        )));
        // A view of the cluster taken while the partition had no leader (seed 20261322): asked
        // again once the view is refreshed; a missing topic is another code.
        assert!(leaderless_in_view(&KafkaError::MetadataFetch(
            Code::UnknownPartition
        )));
        assert!(!leaderless_in_view(&KafkaError::MetadataFetch(
            Code::UnknownTopicOrPartition
        )));
        assert!(!leaderless_in_view(&KafkaError::MetadataFetch(
            Code::UnknownTopic
        )));
    }
}
