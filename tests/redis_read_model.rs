//! The Redis read model's Lua script (docs/design.md §3.4) against a real Redis: absolute tallies that a
//! stale or repeated write never moves backwards.

mod common;

use std::collections::HashMap;

use common::{REDIS, Service, require, runtime, unique_prefix};
use votes_core::Names;
use votes_tally::read_model::{OFFSET_FIELD, TallyPublisher};

#[test]
fn tally_writes_apply_only_when_newer() {
    require(Service::Redis);
    runtime().block_on(async {
        let client = redis::Client::open(REDIS).unwrap();
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis connection");
        let names = Names::new(unique_prefix("redis")).unwrap();
        let key = names.redis_tally_key("e1", 3);
        let publisher = TallyPublisher::default();
        let read = |mut conn: redis::aio::MultiplexedConnection, key: String| async move {
            redis::cmd("HGETALL")
                .arg(&key)
                .query_async::<HashMap<String, String>>(&mut conn)
                .await
                .unwrap()
        };

        assert!(
            publisher
                .publish(&mut conn, &key, 10, &[("red", 4), ("blue", 6)])
                .await
                .unwrap()
        );
        for (offset, what) in [(9, "older"), (10, "same")] {
            assert!(
                !publisher
                    .publish(&mut conn, &key, offset, &[("red", 1)])
                    .await
                    .unwrap(),
                "{what}"
            );
        }
        let h = read(conn.clone(), key.clone()).await;
        assert_eq!(h[OFFSET_FIELD], "10");
        assert_eq!((h["red"].as_str(), h["blue"].as_str()), ("4", "6"));

        // Absolute, not incremental: the newer state replaces the whole hash.
        assert!(
            publisher
                .publish(&mut conn, &key, 11, &[("red", 5)])
                .await
                .unwrap()
        );
        let h = read(conn.clone(), key.clone()).await;
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["red"], "5");

        // Offsets past 2^53 still compare exactly (Lua numbers are doubles).
        let big = 1u64 << 53;
        assert!(
            publisher
                .publish(&mut conn, &key, big + 1, &[("red", 7)])
                .await
                .unwrap()
        );
        assert!(
            !publisher
                .publish(&mut conn, &key, big, &[("red", 8)])
                .await
                .unwrap()
        );
        assert!(
            publisher
                .publish(&mut conn, &key, 10 * big, &[("red", 9)])
                .await
                .unwrap()
        );
        assert_eq!(read(conn.clone(), key.clone()).await["red"], "9");

        // A wiped read model is rebuilt by the next publish (docs/design.md §3.4).
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<i64>(&mut conn)
            .await
            .unwrap();
        assert!(
            publisher
                .publish(&mut conn, &key, 1, &[("red", 1)])
                .await
                .unwrap()
        );
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<i64>(&mut conn)
            .await
            .unwrap();
    });
}
