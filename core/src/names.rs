//! Names of every external resource, derived from one prefix (`VOTES_PREFIX`) so that tests,
//! demos and tenants can run side by side on the same Kafka, DynamoDB and Redis.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "prefix {0:?} is not usable: at most 48 characters of a-z, A-Z, 0-9, '.', '_' and '-' \
     (it becomes part of Kafka topic and DynamoDB table names)"
)]
pub struct PrefixError(pub String);

impl Names {
    pub fn new(prefix: impl Into<String>) -> Result<Self, PrefixError> {
        let prefix = prefix.into();
        // The intersection of Kafka topic (`[a-zA-Z0-9._-]`, ≤ 249) and DynamoDB table
        // (`[a-zA-Z0-9_.-]`, 3..=255) alphabets; 48 leaves room for the suffixes.
        let ok = prefix.len() <= 48
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self { prefix })
        } else {
            Err(PrefixError(prefix))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Kafka topic of vote records.
    pub fn votes_topic(&self) -> String {
        format!("{}votes", self.prefix)
    }

    /// Compacted Kafka topic of election configuration and state.
    pub fn elections_topic(&self) -> String {
        format!("{}elections", self.prefix)
    }

    /// Kafka consumer group whose members (one per core of every `votes serve`) divide the
    /// partitions of the votes topic between them.
    pub fn serve_group(&self) -> String {
        format!("{}serve", self.prefix)
    }

    /// `transactional.id` of the producer that owns `partition` (docs/design.md §3.1).
    pub fn transactional_id(&self, partition: u32) -> String {
        format!("{}votes-{partition}", self.prefix)
    }

    /// `transactional.id` of the producer of one core of one node (docs/design.md §3.1): a restarted
    /// node's core fences its previous incarnation with it, and a new owner of a partition
    /// fences a former owner stuck with a transaction open in it.
    pub fn core_transactional_id(&self, node: &str, core: u16) -> String {
        format!("{}votes-{node}-{core}", self.prefix)
    }

    /// `transactional.id` of the one producer of a node's cores (the committer of scope node):
    /// ends in `-node`, so it never equals a core's (which ends in the core's number).
    pub fn node_transactional_id(&self, node: &str) -> String {
        format!("{}votes-{node}-node", self.prefix)
    }

    /// DynamoDB table of committed votes, keyed by (election, voter).
    pub fn votes_table(&self) -> String {
        format!("{}votes", self.prefix)
    }

    /// DynamoDB table of official results, one item per election.
    pub fn results_table(&self) -> String {
        format!("{}results", self.prefix)
    }

    /// Redis hash of the absolute tallies of one (election, partition), see README.
    pub fn redis_tally_key(&self, election: &str, partition: u32) -> String {
        format!("{}tally:{{{election}}}:{partition}", self.prefix)
    }

    /// Redis hash of a final election's receipts index: raw leaf hash → leaf index (u64 BE)
    /// followed by the leaf's canonical bytes (docs/design.md §4.5).
    pub fn redis_receipts_key(&self, election: &str) -> String {
        format!("{}receipts:{{{election}}}", self.prefix)
    }

    /// Redis string of one level of a final election's Merkle tree: its 32-byte nodes in order.
    pub fn redis_merkle_level_key(&self, election: &str, level: usize) -> String {
        format!("{}merkle:{{{election}}}:{level}", self.prefix)
    }

    /// Redis hash of an election's official result.
    pub fn redis_final_key(&self, election: &str) -> String {
        format!("{}final:{{{election}}}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_every_name_from_the_prefix() {
        let n = Names::new("t1-").unwrap();
        assert_eq!(n.votes_topic(), "t1-votes");
        assert_eq!(n.elections_topic(), "t1-elections");
        assert_eq!(n.transactional_id(7), "t1-votes-7");
        assert_eq!(n.core_transactional_id("a", 1), "t1-votes-a-1");
        assert_eq!(n.node_transactional_id("a"), "t1-votes-a-node");
        assert_eq!(n.votes_table(), "t1-votes");
        assert_eq!(n.results_table(), "t1-results");
        assert_eq!(n.redis_tally_key("e1", 3), "t1-tally:{e1}:3");
        assert_eq!(n.redis_final_key("e1"), "t1-final:{e1}");
        assert_eq!(Names::new("").unwrap().votes_topic(), "votes");
    }

    #[test]
    fn refuses_prefixes_kafka_or_dynamodb_would_refuse() {
        assert!(Names::new("a b").is_err());
        assert!(Names::new("a/b").is_err());
        assert!(Names::new("x".repeat(49)).is_err());
    }
}
