//! The local DynamoDB endpoint behaves as the source of truth needs (docs/design.md §3.5, §4.4): batch writes keyed
//! by (election#bucket, voter), queries per write-shard bucket, and idempotent re-writes.

mod common;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use common::{dynamo, runtime, unique_prefix};
use votes_core::Names;
use votes_tally::provision::{Outcome, create_tables};

fn vote_item(election: &str, bucket: u32, voter: u64, option: &str) -> WriteRequest {
    let item = HashMap::from([
        (
            "pk".to_string(),
            AttributeValue::S(format!("{election}#{bucket}")),
        ),
        ("sk".to_string(), AttributeValue::N(voter.to_string())),
        ("option".to_string(), AttributeValue::S(option.to_string())),
    ]);
    WriteRequest::builder()
        .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
        .build()
}

#[test]
fn batch_write_then_query_by_bucket_and_rewrite_is_a_no_op() {
    runtime().block_on(async {
        let client = dynamo().await;
        let names = Names::new(unique_prefix("ddb")).unwrap();
        let created = create_tables(&client, &names)
            .await
            .expect("tables created");
        assert!(
            created.iter().all(|(_, o)| *o == Outcome::Created),
            "{created:?}"
        );
        let again = create_tables(&client, &names).await.expect("idempotent");
        assert!(
            again.iter().all(|(_, o)| *o == Outcome::AlreadyThere),
            "{again:?}"
        );
        let table = names.votes_table();

        // 25 is BatchWriteItem's per-request maximum; spread them over 4 write-shard buckets.
        let batch: Vec<WriteRequest> = (0..25u64)
            .map(|v| {
                vote_item(
                    "e1",
                    (v % 4) as u32,
                    v,
                    if v % 3 == 0 { "red" } else { "blue" },
                )
            })
            .collect();
        for attempt in 0.. {
            assert!(attempt < 5, "the DynamoDB endpoint kept items unprocessed");
            let out = client
                .batch_write_item()
                .request_items(&table, batch.clone())
                .send()
                .await
                .expect("BatchWriteItem");
            if out.unprocessed_items().is_none_or(|u| u.is_empty()) {
                break;
            }
        }
        // Writing the same votes again must not add anything (re-delivery after a crash).
        client
            .batch_write_item()
            .request_items(&table, batch)
            .send()
            .await
            .expect("rewrite");

        let mut total = 0;
        let mut red = 0;
        for bucket in 0..4 {
            let out = client
                .query()
                .table_name(&table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(format!("e1#{bucket}")))
                .send()
                .await
                .expect("Query");
            let items = out.items();
            let mut voters: Vec<u64> = items
                .iter()
                .map(|i| i["sk"].as_n().unwrap().parse().unwrap())
                .collect();
            assert!(
                voters.is_sorted(),
                "sk is the range key, so items come back by voter"
            );
            voters.dedup();
            assert_eq!(voters.len(), items.len());
            assert!(voters.iter().all(|v| v % 4 == bucket));
            total += items.len();
            red += items
                .iter()
                .filter(|i| i["option"].as_s().unwrap() == "red")
                .count();
        }
        assert_eq!(total, 25);
        assert_eq!(red, 9); // voters 0, 3, …, 24
    });
}
