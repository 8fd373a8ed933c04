//! The auditors' export (docs/design.md §4.5): `votes audit export` of a final election writes exactly
//! the counted votes (first vote per voter, tree order, the receipts the voters were given),
//! `votes audit verify` accepts it offline, and refuses, naming the problem, an export with a
//! changed option, a deleted row, a repeated row, an edited manifest or a signature by another
//! key. `votes audit pubkey` prints what `openssl pkey -pubout` prints, and OpenSSL verifies
//! `manifest.sig`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::serve::{AUDIT_KEY, Serve, TestClient, committed_votes, open_election, wait_final};
use common::{assert_fails_saying, output_text, runtime};
use parquet::data_type::{
    ByteArray, ByteArrayType, FixedLenByteArray, FixedLenByteArrayType, Int32Type, Int64Type,
};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::RowAccessor;
use votes_core::{ElectionId, VoterId};

const PARTITIONS: u32 = 4;
const OPTIONS: [&str; 3] = ["red", "green", "blue"];

fn votes_cmd(prefix: &str, args: &[&str]) -> Command {
    let mut c = common::votes_command(prefix, args);
    c.env("VOTES_LOG", "warn");
    c
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the command runs");
    common::success_stdout(&out, format_args!("{cmd:?} failed"))
}

/// `votes audit verify DIR` plus `extra`; returns (success, stdout).
fn verify(dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["audit", "verify", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    // Offline: no service settings at all.
    let out = Command::new(env!("CARGO_BIN_EXE_votes"))
        .args(&args)
        .env_remove("VOTES_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn fail_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("FAIL")).collect()
}

/// Votes once per entry of `voters` (repeats get 409); returns voter → receipt of the 202s.
async fn vote_all(serve: &Serve, election: &str, voters: &[u64]) -> HashMap<u64, String> {
    let client = TestClient::h2c();
    let mut receipts = HashMap::new();
    for chunk in voters.chunks(64) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|v| {
                let (client, base, election) = (client.clone(), serve.url(""), election.to_owned());
                let (v, option) = (*v, OPTIONS[(*v % 3) as usize]);
                tokio::spawn(async move { (v, client.vote(&base, &election, v, option).await) })
            })
            .collect();
        for c in calls {
            match c.await.unwrap() {
                (v, Ok((202, body))) => {
                    let r = body["receipt"].as_str().expect("a receipt").to_owned();
                    assert!(receipts.insert(v, r).is_none(), "voter {v} accepted twice");
                }
                (_, Ok((409, b))) if b["error"]["code"] == "already_voted" => {}
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    receipts
}

#[derive(Clone, Debug, PartialEq)]
struct Row {
    pseudonym: Vec<u8>,
    option: String,
    partition: i32,
    offset: i64,
    received_at_ms: i64,
    nonce: Vec<u8>,
    leaf_hash: Vec<u8>,
}

/// Reads votes.parquet with the parquet crate's record API (not the exporter's column reader).
fn read_rows(path: &Path) -> Vec<Row> {
    let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            Row {
                pseudonym: r.get_bytes(0).unwrap().data().to_vec(),
                option: r.get_string(1).unwrap().clone(),
                partition: r.get_int(2).unwrap(),
                offset: r.get_long(3).unwrap(),
                received_at_ms: r.get_long(4).unwrap(),
                nonce: r.get_bytes(5).unwrap().data().to_vec(),
                leaf_hash: r.get_bytes(6).unwrap().data().to_vec(),
            }
        })
        .collect()
}

/// Rewrites votes.parquet with `rows`, the export's schema, plain settings, one row group.
fn write_rows(path: &Path, rows: &[Row]) {
    let schema =
        Arc::new(parquet::schema::parser::parse_message_type(votes_audit::table::SCHEMA).unwrap());
    let props = Arc::new(parquet::file::properties::WriterProperties::builder().build());
    let mut w = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let fixed = |f: fn(&Row) -> &Vec<u8>| -> Vec<FixedLenByteArray> {
        rows.iter()
            .map(|r| FixedLenByteArray::from(f(r).clone()))
            .collect()
    };
    let mut i = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        match i {
            0 => col.typed::<FixedLenByteArrayType>().write_batch(
                &fixed(|r| &r.pseudonym),
                None,
                None,
            ),
            1 => col.typed::<ByteArrayType>().write_batch(
                &rows
                    .iter()
                    .map(|r| ByteArray::from(r.option.as_str()))
                    .collect::<Vec<_>>(),
                None,
                None,
            ),
            2 => col.typed::<Int32Type>().write_batch(
                &rows.iter().map(|r| r.partition).collect::<Vec<_>>(),
                None,
                None,
            ),
            3 => col.typed::<Int64Type>().write_batch(
                &rows.iter().map(|r| r.offset).collect::<Vec<_>>(),
                None,
                None,
            ),
            4 => col.typed::<Int64Type>().write_batch(
                &rows.iter().map(|r| r.received_at_ms).collect::<Vec<_>>(),
                None,
                None,
            ),
            5 => col
                .typed::<FixedLenByteArrayType>()
                .write_batch(&fixed(|r| &r.nonce), None, None),
            6 => col.typed::<FixedLenByteArrayType>().write_batch(
                &fixed(|r| &r.leaf_hash),
                None,
                None,
            ),
            _ => unreachable!(),
        }
        .unwrap();
        col.close().unwrap();
        i += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
}

fn copy_export(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["votes.parquet", "manifest.json", "manifest.sig"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn openssl(args: &[&str]) -> Output {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        output_text(&out)
    );
    out
}

fn b64_decode(s: &str) -> Vec<u8> {
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$0\" | base64 -d", s.trim()])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn an_export_of_a_final_election_verifies_and_every_tampering_is_named() {
    let serve = Serve::init_and_start("audit", PARTITIONS, 2);
    let prefix = serve.prefix.clone();
    let work: PathBuf = std::env::temp_dir().join(format!("{prefix}audit"));
    std::fs::create_dir_all(&work).unwrap();
    let (key1, key2) = (work.join("key1.pem"), work.join("key2.pem"));
    for k in [&key1, &key2] {
        openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            k.to_str().unwrap(),
        ]);
    }

    // 300 voters in "audited" (30 of them vote twice), 40 in "other" which stays open.
    let (receipts, final_results) = runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "audited", &OPTIONS, 0).await;
        open_election(&client, &serve, "other", &OPTIONS, 0).await;
        let mut voters: Vec<u64> = (1..=300).collect();
        voters.extend((1..=30).map(|v| v * 7));
        let receipts = vote_all(&serve, "audited", &voters).await;
        assert_eq!(receipts.len(), 300);
        vote_all(&serve, "other", &(1..=40).collect::<Vec<_>>()).await;
        run_ok(&mut votes_cmd(
            &prefix,
            &["persist", "--exit-when-caught-up"],
        ));
        let (s, body) = client
            .admin_post(&serve, "/admin/v1/elections/audited/close")
            .await;
        assert_eq!(s, 200, "{body}");
        let body = wait_final(&client, &serve, "audited", Duration::from_secs(60)).await;
        (receipts, body)
    });

    // pubkey prints what OpenSSL prints.
    let pub1 =
        run_ok(votes_cmd(&prefix, &["audit", "pubkey"]).env("VOTES_AUDIT_SIGNING_KEY", &key1));
    let openssl_pub1 = openssl(&["pkey", "-in", key1.to_str().unwrap(), "-pubout"]);
    assert_eq!(pub1, String::from_utf8_lossy(&openssl_pub1.stdout));
    let pub1_path = work.join("pub1.pem");
    std::fs::write(&pub1_path, &pub1).unwrap();
    let pub2_path = work.join("pub2.pem");
    let pub2 = openssl(&["pkey", "-in", key2.to_str().unwrap(), "-pubout"]);
    std::fs::write(&pub2_path, &pub2.stdout).unwrap();
    let pub1_arg = ["--pubkey", pub1_path.to_str().unwrap()];

    // Only a final election is exported.
    let dir = work.join("export");
    let refused = votes_cmd(
        &prefix,
        &["audit", "export", "--election", "other", "--out"],
    )
    .arg(work.join("other"))
    .env("VOTES_AUDIT_SIGNING_KEY", &key1)
    .output()
    .unwrap();
    assert_fails_saying(&refused, "election other is open");

    let out = run_ok(
        votes_cmd(
            &prefix,
            &["audit", "export", "--election", "audited", "--out"],
        )
        .arg(&dir)
        .env("VOTES_AUDIT_SIGNING_KEY", &key1),
    );
    assert!(out.contains("votes      300 in"), "{out}");
    assert!(out.contains("ok   official result"), "{out}");
    // No silent overwrite.
    let again = votes_cmd(
        &prefix,
        &["audit", "export", "--election", "audited", "--out"],
    )
    .arg(&dir)
    .env("VOTES_AUDIT_SIGNING_KEY", &key1)
    .output()
    .unwrap();
    assert_fails_saying(&again, "already holds an export");

    // The rows are exactly the counted votes: the first committed vote of each voter, in
    // (partition, offset) order, with the pseudonym of its voter and the receipt it was given.
    let rows = read_rows(&dir.join("votes.parquet"));
    assert_eq!(rows.len(), 300);
    let election = ElectionId::new("audited").unwrap();
    let mut first: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    let mut seen = HashSet::new();
    for c in committed_votes(&serve.names(), PARTITIONS) {
        if c.record.election == election && seen.insert(c.record.voter) {
            first.insert((c.partition, c.offset), c.record.voter.0);
        }
    }
    assert_eq!(first.len(), 300);
    for (row, ((partition, offset), voter)) in rows.iter().zip(&first) {
        assert_eq!(
            (row.partition as u32, row.offset as u64),
            (*partition, *offset)
        );
        assert_eq!(
            row.pseudonym,
            votes_core::pseudonym(AUDIT_KEY.as_bytes(), &election, VoterId(*voter)),
            "voter {voter}"
        );
        assert_eq!(row.option, OPTIONS[(*voter % 3) as usize]);
        assert_eq!(
            hex::encode(&row.leaf_hash),
            receipts[voter],
            "voter {voter}'s receipt"
        );
        assert_eq!(row.nonce.len(), 16);
        assert!(row.received_at_ms > 1_700_000_000_000);
    }

    // The manifest holds the official result, and it matches the results API.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["total"], 300);
    assert_eq!(manifest["votes_file"]["rows"], 300);
    assert_eq!(
        manifest["partitions"].as_array().unwrap().len(),
        PARTITIONS as usize
    );
    for o in OPTIONS {
        assert_eq!(manifest["totals"][o], final_results["totals"][o], "{o}");
        assert_eq!(
            manifest["official"]["totals"][o],
            final_results["totals"][o]
        );
    }
    if let Some(root) = final_results["merkle"]["root"].as_str() {
        assert_eq!(manifest["merkle"]["root"], root);
        assert_eq!(manifest["official"]["merkle_root"], root);
    }

    // A clean export verifies: one `ok` line per check, exit 0; with the root the results API
    // announced, checked against it too.
    let (ok, stdout) = verify(&dir, &pub1_arg);
    assert!(ok, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 13, "{stdout}");
    assert!(
        lines[..12].iter().all(|l| l.starts_with("ok   ")),
        "{stdout}"
    );
    assert!(
        lines.contains(&"ok   close frontier: all 4 partitions closed at the official result's frontier, no vote committed past it"),
        "{stdout}"
    );
    assert_eq!(lines[12], "verified: every check holds");
    let announced = final_results["merkle"]["root"]
        .as_str()
        .expect("the final result announces its root");
    let with_root = [pub1_arg[0], pub1_arg[1], "--root", announced];
    let (ok, stdout) = verify(&dir, &with_root);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains(&format!("ok   given root: {announced}")),
        "{stdout}"
    );
    let other_root = "ab".repeat(32);
    let (ok, stdout) = verify(&dir, &[pub1_arg[0], pub1_arg[1], "--root", &other_root]);
    assert!(!ok, "{stdout}");
    assert_eq!(
        fail_lines(&stdout),
        vec![format!(
            "FAIL given root: {other_root} was given, but the manifest's root is {announced} and the rows give {announced}"
        )]
    );
    // Privacy: no time finer than the minute in the published file.
    assert!(
        rows.iter()
            .all(|r| r.received_at_ms.rem_euclid(60_000) == 0),
        "received_at_ms is floored to the minute"
    );

    // OpenSSL verifies the signature too (base64 of the raw Ed25519 signature).
    let sig_bin = work.join("manifest.sig.bin");
    std::fs::write(
        &sig_bin,
        b64_decode(&std::fs::read_to_string(dir.join("manifest.sig")).unwrap()),
    )
    .unwrap();
    openssl(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        pub1_path.to_str().unwrap(),
        "-rawin",
        "-in",
        dir.join("manifest.json").to_str().unwrap(),
        "-sigfile",
        sig_bin.to_str().unwrap(),
    ]);

    // Without the public key the signature is not checked, and that is not a pass.
    let (ok, stdout) = verify(&dir, &[]);
    assert!(!ok, "{stdout}");
    assert_eq!(
        fail_lines(&stdout),
        vec![
            "FAIL signature: not checked: no --pubkey given (pass the exporter's public key, or --no-signature to skip this check)"
        ]
    );
    let (ok, stdout) = verify(&dir, &["--no-signature"]);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("skip signature: not checked (--no-signature)"),
        "{stdout}"
    );

    // A copy of the export named `name` whose votes.parquet holds `rows` instead: it fails
    // verification under key 1 with --diagnose; what the verifier printed.
    let fails_with_rows = |name: &str, rows: &[Row]| {
        let t = work.join(name);
        copy_export(&dir, &t);
        write_rows(&t.join("votes.parquet"), rows);
        let (ok, stdout) = verify(&t, &[pub1_arg[0], pub1_arg[1], "--diagnose"]);
        assert!(!ok, "{stdout}");
        stdout
    };

    // One option changed in one row.
    let mut changed = rows.clone();
    changed[10].option = OPTIONS
        .iter()
        .find(|o| **o != changed[10].option)
        .unwrap()
        .to_string();
    let stdout = fails_with_rows("changed-option", &changed);
    let fails = fail_lines(&stdout);
    assert_eq!(fails.len(), 3, "{stdout}");
    assert!(
        fails[0].starts_with("FAIL file hash: SHA-256 of votes.parquet is"),
        "{stdout}"
    );
    assert!(
        fails[1].starts_with(&format!(
            "FAIL leaf hashes: 1 row(s) whose leaf_hash does not match their fields (first: row 10 (partition {}, offset {}))",
            rows[10].partition, rows[10].offset
        )),
        "{stdout}"
    );
    assert!(
        fails[2].starts_with("FAIL totals: the rows' counts differ from the manifest's totals:"),
        "{stdout}"
    );

    // One row deleted.
    let mut deleted = rows.clone();
    deleted.remove(150);
    let stdout = fails_with_rows("deleted-row", &deleted);
    assert!(
        stdout.contains("FAIL row count: votes.parquet holds 299 rows, the manifest says 300"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL merkle root: the rows give"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "FAIL order and ranges: partition {}: the file has",
            rows[150].partition
        )),
        "{stdout}"
    );
    assert!(stdout.contains("ok   leaf hashes"), "{stdout}");
    assert!(stdout.contains("ok   one row per pseudonym"), "{stdout}");

    // One row duplicated (right after itself).
    let mut duplicated = rows.clone();
    duplicated.insert(43, rows[42].clone());
    let stdout = fails_with_rows("duplicated-row", &duplicated);
    assert!(
        stdout.contains(&format!(
            "FAIL one row per pseudonym: 1 pseudonym(s) appear in more than one row, 1 row(s) too many: {} in 2 rows",
            hex::encode(&rows[42].pseudonym)
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "row 43 (partition {p}, offset {o}) does not follow (partition {p}, offset {o})",
            p = rows[42].partition,
            o = rows[42].offset
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL row count: votes.parquet holds 301 rows"),
        "{stdout}"
    );

    // manifest.json edited: one more vote for one option, one fewer for another.
    let t = work.join("edited-manifest");
    copy_export(&dir, &t);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.join("manifest.json")).unwrap()).unwrap();
    let red = m["totals"]["red"].as_u64().unwrap();
    let green = m["totals"]["green"].as_u64().unwrap();
    m["totals"]["red"] = (red + 1).into();
    m["totals"]["green"] = (green - 1).into();
    std::fs::write(
        t.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    let (ok, stdout) = verify(&t, &pub1_arg);
    assert!(!ok, "{stdout}");
    let fails = fail_lines(&stdout);
    assert_eq!(fails.len(), 3, "{stdout}");
    assert!(
        fails[0].starts_with("FAIL signature: the signature does not match manifest.json"),
        "{stdout}"
    );
    assert!(
        fails[1].contains(&format!(
            "green: rows {green}, manifest {}, red: rows {red}, manifest {}",
            green - 1,
            red + 1
        )),
        "{stdout}"
    );
    assert!(
        fails[2].starts_with(&format!(
            "FAIL official result: totals differ: green: manifest {}, official {green}",
            green - 1
        )),
        "{stdout}"
    );
    assert!(stdout.contains("ok   file hash"), "{stdout}");

    // Signed with another key (by OpenSSL): the signature alone fails under key 1, and the
    // same files verify under key 2, so OpenSSL's raw signatures are what verify expects.
    let t = work.join("other-key");
    copy_export(&dir, &t);
    let sig = openssl(&[
        "pkeyutl",
        "-sign",
        "-inkey",
        key2.to_str().unwrap(),
        "-rawin",
        "-in",
        t.join("manifest.json").to_str().unwrap(),
    ]);
    std::fs::write(work.join("sig2.bin"), &sig.stdout).unwrap();
    let b64 = Command::new("base64")
        .arg(work.join("sig2.bin"))
        .output()
        .unwrap();
    std::fs::write(t.join("manifest.sig"), &b64.stdout).unwrap();
    let (ok, stdout) = verify(&t, &pub1_arg);
    assert!(!ok, "{stdout}");
    let fails = fail_lines(&stdout);
    assert_eq!(fails.len(), 1, "{stdout}");
    assert!(
        fails[0].starts_with(
            "FAIL signature: the signature does not match manifest.json under the public key"
        ),
        "{stdout}"
    );
    let (ok, stdout) = verify(&t, &["--pubkey", pub2_path.to_str().unwrap()]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("(the manifest names "), "{stdout}");

    // Hostile files: a truncated votes.parquet is named and not read; a manifest nested
    // beyond any real one is refused with its reason; neither panics the verifier.
    let t = work.join("truncated");
    copy_export(&dir, &t);
    let bytes = std::fs::read(t.join("votes.parquet")).unwrap();
    std::fs::write(t.join("votes.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let (ok, stdout) = verify(&t, &pub1_arg);
    assert!(!ok, "{stdout}");
    assert_eq!(fail_lines(&stdout).len(), 1, "{stdout}");
    assert!(
        fail_lines(&stdout)[0].contains(&format!(
            "votes.parquet has {} bytes, the manifest says {}",
            bytes.len() / 2,
            bytes.len()
        )),
        "{stdout}"
    );
    let (ok, stdout) = verify(&t, &[pub1_arg[0], pub1_arg[1], "--diagnose"]);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("FAIL rows: votes.parquet cannot be read, no row was checked: not a readable Parquet file"),
        "{stdout}"
    );
    let t = work.join("deep-manifest");
    copy_export(&dir, &t);
    std::fs::write(t.join("manifest.json"), "[".repeat(1 << 20)).unwrap();
    let (ok, stdout) = verify(&t, &pub1_arg);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.starts_with("FAIL manifest: manifest.json cannot be read: invalid type: sequence"),
        "{stdout}"
    );

    std::fs::remove_dir_all(&work).unwrap();
}
