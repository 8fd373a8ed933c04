//! Inclusion proofs of receipts (docs/design.md §4.5) from the index the recount writes to Redis when
//! a result becomes official: one HGET finds the leaf and its index, one pipeline of GETRANGE
//! reads the audit path's siblings level by level. Two round trips and log2(n) × 32 bytes,
//! whatever the election's size. Runs on the node's tokio side runtime; cores await a oneshot.

use votes_core::merkle::{Hash, path_positions, verify_inclusion};
use votes_core::receipt::Leaf;
use votes_core::{ElectionId, Names};

/// The proof as `GET …/receipts/{receipt}` answers it.
#[derive(serde::Serialize)]
pub struct Proof {
    pub leaf: LeafView,
    pub leaf_hash: String,
    pub leaf_index: u64,
    pub tree_size: u64,
    pub root: String,
    pub audit_path: Vec<String>,
}

/// The leaf's fields, bytes as hex.
#[derive(serde::Serialize)]
pub struct LeafView {
    pub version: u8,
    pub election: String,
    pub pseudonym: String,
    pub option: String,
    pub partition: u32,
    pub offset: u64,
    pub nonce: String,
}

#[derive(Clone)]
pub struct ReceiptsReader {
    rt: tokio::runtime::Handle,
    client: redis::Client,
    names: Names,
    /// One multiplexed connection shared by every lookup, made on first use.
    conn: std::sync::Arc<tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>,
}

impl ReceiptsReader {
    pub fn new(
        rt: tokio::runtime::Handle,
        redis: &votes_tally::RedisTarget,
        names: Names,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            rt,
            client: redis.client()?,
            names,
            conn: Default::default(),
        })
    }

    /// The proof of `leaf_hash` in `election`, `None` when no counted vote has it.
    pub async fn proof(
        &self,
        election: ElectionId,
        leaf_hash: Hash,
        root: Hash,
        tree_size: u64,
    ) -> Result<Option<Proof>, String> {
        let this = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.rt.spawn(async move {
            let _ = tx.send(this.lookup(&election, leaf_hash, root, tree_size).await);
        });
        rx.await
            .map_err(|_| "the lookup task ended without an answer".to_owned())?
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let mut held = self.conn.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        *held = Some(c.clone());
        Ok(c)
    }

    async fn lookup(
        &self,
        election: &ElectionId,
        leaf_hash: Hash,
        root: Hash,
        tree_size: u64,
    ) -> Result<Option<Proof>, String> {
        let mut conn = self.connection().await?;
        let forget = |e: redis::RedisError| {
            // A broken connection is dropped so the next lookup makes a new one.
            if let Ok(mut held) = self.conn.try_lock() {
                *held = None;
            }
            e.to_string()
        };
        let entry: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.names.redis_receipts_key(election.as_str()))
            .arg(&leaf_hash[..])
            .query_async(&mut conn)
            .await
            .map_err(forget)?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let (index, leaf_bytes) = entry
            .split_at_checked(8)
            .ok_or("a receipts index entry is shorter than its index")?;
        let index = u64::from_be_bytes(index.try_into().expect("8 bytes"));
        let leaf = Leaf::decode(leaf_bytes).map_err(|e| format!("a receipts index entry: {e}"))?;
        let positions = path_positions(index, tree_size)
            .ok_or("a receipts index entry points past the tree")?;
        let mut pipe = redis::pipe();
        for (level, position) in &positions {
            let start = position * 32;
            pipe.cmd("GETRANGE")
                .arg(self.names.redis_merkle_level_key(election.as_str(), *level))
                .arg(start)
                .arg(start + 31);
        }
        let siblings: Vec<Vec<u8>> = if positions.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await.map_err(forget)?
        };
        let path: Vec<Hash> = siblings
            .iter()
            .map(|s| Hash::try_from(s.as_slice()))
            .collect::<Result<_, _>>()
            .map_err(|_| "the Merkle levels in Redis are incomplete")?;
        // Never hand out a proof that does not verify: it would tell an honest voter their vote
        // was not counted.
        if leaf.leaf_hash() != leaf_hash
            || !verify_inclusion(&leaf_hash, index, tree_size, &path, &root)
        {
            return Err(format!(
                "the receipts index of {election} does not prove leaf {index} against the official root"
            ));
        }
        Ok(Some(Proof {
            leaf: LeafView {
                version: votes_core::receipt::LEAF_VERSION,
                election: leaf.election.to_string(),
                pseudonym: hex::encode(leaf.pseudonym),
                option: leaf.option.to_string(),
                partition: leaf.partition,
                offset: leaf.offset,
                nonce: hex::encode(leaf.nonce),
            },
            leaf_hash: hex::encode(leaf_hash),
            leaf_index: index,
            tree_size,
            root: hex::encode(root),
            audit_path: path.iter().map(hex::encode).collect(),
        }))
    }
}
