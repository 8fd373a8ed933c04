//! What operators install beside the appliance (ops/): the alerting rules and the Grafana
//! dashboard read only series a running node or persister exports. promtool checks the rules'
//! syntax and their unit tests (scripts/verify-ops.sh); this test checks them against the
//! server, so a renamed or removed metric breaks the build instead of an alert going silent.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::serve::{Serve, TestClient, open_election};
use common::{repo_root, runtime};

/// Every `votes_…` series name an expression of `text` reads.
fn series_named_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("votes_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // Only names followed by a selector, a range or an operator are series; the
        // `votes_…` in prose (a runbook anchor, a help text) is not.
        let before = rest[..at].chars().next_back();
        if !matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '#') {
            out.insert(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    out
}

/// The expressions of the rules file (`expr:` values, folded or not).
fn rule_expressions(rules: &str) -> String {
    let mut out = String::new();
    let mut in_expr = false;
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if let Some(e) = trimmed.strip_prefix("expr:") {
            in_expr = true;
            out.push_str(e);
            out.push('\n');
        } else if in_expr && line.starts_with("          ") && !trimmed.contains(": ") {
            out.push_str(trimmed);
            out.push('\n');
        } else {
            in_expr = false;
        }
    }
    out
}

/// The `expr` of every target of every panel of the dashboard.
fn dashboard_expressions(dashboard: &serde_json::Value) -> String {
    let mut out = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push_str(target["expr"].as_str().expect("every target has an expr"));
            out.push('\n');
        }
    }
    out
}

/// Sample names of a Prometheus text page.
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// A `votes persist` process, killed when dropped (a failing assertion included).
struct Persister(Child);

impl Drop for Persister {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn persister(prefix: &str, metrics: &str) -> Persister {
    let child = common::votes_command(
        prefix,
        &[
            "persist",
            "--instance-id",
            "ops-persister",
            "--metrics",
            metrics,
        ],
    )
    .stdout(Stdio::null())
    .stderr(
        std::fs::File::create(std::env::temp_dir().join(format!("{prefix}persist.log"))).unwrap(),
    )
    .spawn()
    .expect("votes persist starts");
    Persister(child)
}

/// The persister's `/metrics` (HTTP/1.0, one request per connection).
fn persister_page(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).ok()?;
    Some(page.split_once("\r\n\r\n")?.1.to_owned())
}

#[test]
fn every_series_the_alerts_and_the_dashboard_read_is_exported_by_a_node_or_a_persister() {
    let root = repo_root();
    let rules = std::fs::read_to_string(root.join("ops/prometheus/votes.rules.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("ops/grafana/votes-fleet.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let from_rules = series_named_in(&rule_expressions(&rules));
    let from_dashboard = series_named_in(&dashboard_expressions(&dashboard));
    // The extraction itself: a few names each must be found, or the check checks nothing.
    for name in [
        "votes_partition_owned",
        "votes_commit_latency_seconds_bucket",
        "votes_http_responses_total",
    ] {
        assert!(
            from_rules.contains(name),
            "{name} not seen in the rules: {from_rules:?}"
        );
    }
    for name in [
        "votes_votes_total",
        "votes_persist_lag",
        "votes_batch_size_sum",
        "votes_http_responses_total",
    ] {
        assert!(
            from_dashboard.contains(name),
            "{name} not seen in the dashboard: {from_dashboard:?}"
        );
    }

    let serve = Serve::init_and_start("ops", 2, 1);
    let metrics_addr = format!(
        "127.0.0.1:{}",
        votes_net::loopback_listener_port().expect("a port for the persister's /metrics")
    );
    let mut persist = persister(&serve.prefix, &metrics_addr);
    let mut names = runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "ops", &["a", "b"], 0).await;
        // An accepted vote and a refused second one: the outcome and batch series appear
        // with their first sample.
        for voter in [1, 1, 2] {
            let (status, body) = client
                .vote(&serve.url(""), "ops", voter, "a")
                .await
                .expect("the vote is answered");
            assert!(status == 202 || status == 409, "{status} {body}");
        }
        // Cores publish their counters once a second: wait for the batches to show.
        common::eventually(
            Duration::from_secs(60),
            Duration::from_millis(100),
            async || {
                let batches = common::serve::metric(&serve, "votes_batches_total").await;
                if !batches.is_empty() {
                    return Ok(());
                }
                Err("no votes_batches_total after a vote")
            },
        )
        .await;
        let (status, page) = client.admin_get(&serve, "/metrics").await;
        assert_eq!(status, 200, "{page}");
        exported(page["raw"].as_str().expect("a text page"))
    });
    // The persister reports a partition's lag once it holds the partition.
    let deadline = Instant::now() + Duration::from_secs(60);
    let persister_names = loop {
        if let Ok(Some(status)) = persist.0.try_wait() {
            panic!("votes persist exited with {status}");
        }
        let page = persister_page(&metrics_addr).unwrap_or_default();
        if page.contains("votes_persist_lag{") {
            break exported(&page);
        }
        assert!(
            Instant::now() < deadline,
            "votes persist never reported a partition's lag on {metrics_addr}: {page}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(persist);
    names.extend(persister_names);
    // Prometheus adds `up` itself; every other series must come from the appliance.
    let missing: Vec<_> = from_rules
        .iter()
        .chain(&from_dashboard)
        .filter(|n| !names.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "read by ops/ but exported by no node or persister: {missing:?}\nexported: {names:?}"
    );
}

#[test]
fn the_series_finder_reads_selectors_and_skips_anchors() {
    let text = "sum(rate(votes_votes_total{a=\"b\"}[5m])) / votes_x runbook: docs/ops.md#votes_y";
    let found: Vec<_> = series_named_in(text).into_iter().collect();
    assert_eq!(found, ["votes_votes_total", "votes_x"]);
    let rules = "      - alert: A\n        expr: >-\n          votes_a == 1\n          and votes_b\n        for: 1m\n";
    assert_eq!(
        series_named_in(&rule_expressions(rules))
            .into_iter()
            .collect::<Vec<_>>(),
        ["votes_a", "votes_b"]
    );
}
