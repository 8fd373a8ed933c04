//! Election versions (docs/design.md §7): admin writes are compare-and-set on the election as the
//! elections topic holds it, through one serialized writer for the whole deployment. Fifty
//! concurrent writes (PATCHes of the difficulty and a close) through two nodes: each answers
//! `200` or `409 conflict`, the versions answered `200` form one unbroken chain with at most
//! the recount's `final` among them (nothing answered `200` was lost), and the election ends
//! as the last of them made it, then final. A stale `If-Match` changes nothing.

mod common;

use std::collections::BTreeMap;

use common::runtime;
use common::serve::{Serve, TestClient, open_election};

#[test]
fn concurrent_admin_writes_through_two_nodes_lose_nothing() {
    let prefix = common::fresh_prefix("admin-cas", 2);
    let a = Serve::start_node(&prefix, 1, "node-a", &[]);
    let b = Serve::start_node(&prefix, 1, "node-b", &[]);
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &a, "cas", &["x", "y"], 0).await;
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let node = if i % 2 == 0 { &a } else { &b };
            let (url, body, method) = if i == 25 {
                (
                    node.admin_url("/admin/v1/elections/cas/close"),
                    serde_json::Value::Null,
                    "POST",
                )
            } else {
                (
                    node.admin_url("/admin/v1/elections/cas"),
                    serde_json::json!({"pow_difficulty": i % 20 + 1}),
                    "PATCH",
                )
            };
            tasks.push(tokio::spawn(async move {
                let (s, body) = TestClient::http1().admin(method, &url, body).await;
                (i, s, body)
            }));
        }
        // version → (write, difficulty, state) of every 200.
        let mut ok: BTreeMap<u64, (u32, u64, String)> = BTreeMap::new();
        for t in tasks {
            let (i, s, body) = t.await.unwrap();
            match s {
                200 => {
                    let v = body["version"].as_u64().expect("a version");
                    let prev = ok.insert(
                        v,
                        (
                            i,
                            body["pow_difficulty"].as_u64().unwrap(),
                            body["state"].as_str().unwrap().to_owned(),
                        ),
                    );
                    assert!(prev.is_none(), "two writes answered 200 as version {v}");
                }
                409 => assert_eq!(body["error"]["code"], "conflict", "{body}"),
                other => panic!("write {i}: {other} {body}"),
            }
        }
        assert!(
            ok.values().any(|(i, _, _)| *i == 25),
            "the close applies (an open election can always close): {ok:?}"
        );
        // Every 200 is one step of one chain after create (1) and open (2); the recount the
        // close started may have made one step of its own (`final`) among them.
        let versions: Vec<u64> = ok.keys().copied().collect();
        let last_version = *versions.last().unwrap();
        let not_ours: Vec<u64> = (3..=last_version).filter(|v| !ok.contains_key(v)).collect();
        assert!(
            not_ours.len() <= 1,
            "versions {not_ours:?} were written by no 200 (only the recount's final may be): {versions:?}"
        );
        // Each node's view ends at the last write (or at `final`, once the recount ran).
        let (&last, (_, difficulty, _)) = ok.last_key_value().unwrap();
        for node in [&a, &b] {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let (_, list) = client.admin_get(node, "/admin/v1/elections").await;
                let e = list
                    .as_array()
                    .and_then(|l| l.iter().find(|e| e["id"] == "cas"))
                    .cloned()
                    .unwrap_or_default();
                let v = e["version"].as_u64().unwrap_or(0);
                if v >= last {
                    assert_eq!(e["pow_difficulty"].as_u64(), Some(*difficulty), "{e}");
                    assert!(
                        matches!(e["state"].as_str(), Some("closed" | "final")),
                        "{e}"
                    );
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the views reach version {last}: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        // A change based on a stale version is refused and changes nothing (21 is a difficulty
        // none of the racing writes set).
        let (s, body) = client
            .send(
                "PATCH",
                &a.admin_url("/admin/v1/elections/cas"),
                &[
                    (
                        "authorization",
                        &format!("Bearer {}", common::serve::ADMIN_TOKEN),
                    ),
                    ("content-type", "application/json"),
                    ("if-match", "2"),
                ],
                bytes::Bytes::from(serde_json::json!({"pow_difficulty": 21}).to_string()),
            )
            .await
            .map(|(s, _, j)| (s, j))
            .unwrap();
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{body}"
        );
        let (_, list) = client.admin_get(&a, "/admin/v1/elections").await;
        let e = list
            .as_array()
            .and_then(|l| l.iter().find(|e| e["id"] == "cas"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            e["pow_difficulty"].as_u64(),
            Some(*difficulty),
            "the stale write changed nothing: {e}"
        );
        // The recount's `final` lands on the version the racing writes left, whatever it is.
        // (node-b took the close, so its recount and its log are the ones to see.)
        common::serve::wait_final(&client, &b, "cas", std::time::Duration::from_secs(120)).await;
    });
}
