//! The Redis read model (docs/design.md §3.4): per (election, partition) a hash of absolute option
//! counts plus the Kafka offset they reflect. Writes are absolute and carry their offset, so a
//! late or repeated write can never move a tally backwards, and Redis can be wiped and rebuilt.

use redis::aio::ConnectionLike;

/// Hash field holding the offset; option ids are `[a-z0-9-]`, so it cannot collide with one.
pub const OFFSET_FIELD: &str = "_offset";

/// Replaces the tally hash only when the new offset is newer than the stored one.
///
/// KEYS[1] = tally hash; ARGV[1] = offset (decimal, no leading zeros); ARGV[2..] = option,
/// count pairs. Offsets are compared as decimal strings (length, then bytes) because Lua
/// numbers are doubles and lose precision past 2^53. Returns 1 when applied, 0 when stale.
pub(crate) const PUBLISH_TALLY_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], '_offset')
local new = ARGV[1]
if cur then
  if #cur > #new or (#cur == #new and cur >= new) then
    return 0
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_offset', new, unpack(ARGV, 2))
return 1
"#;

#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    #[error("Redis refused the tally update: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The loaded script; build once per connection owner and reuse (EVALSHA after the first call).
pub struct TallyPublisher {
    script: redis::Script,
}

impl Default for TallyPublisher {
    fn default() -> Self {
        Self {
            script: redis::Script::new(PUBLISH_TALLY_LUA),
        }
    }
}

impl TallyPublisher {
    /// Publishes the absolute `counts` of one (election, partition) as of `offset`.
    /// Returns whether Redis applied it (false: it already held this offset or a newer one).
    pub async fn publish<C: ConnectionLike>(
        &self,
        conn: &mut C,
        key: &str,
        offset: u64,
        counts: &[(&str, u64)],
    ) -> Result<bool, ReadModelError> {
        let mut invocation = self.script.key(key);
        invocation.arg(offset.to_string());
        for (option, count) in counts {
            debug_assert_ne!(*option, OFFSET_FIELD, "option ids never contain '_'");
            invocation.arg(*option).arg(*count);
        }
        let applied: i64 = invocation.invoke_async(conn).await?;
        Ok(applied == 1)
    }
}
