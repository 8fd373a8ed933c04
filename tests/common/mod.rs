//! Shared ground of the integration tests: the real services, started through the project's
//! own scripts when they are not already up, and a unique prefix per test so tests run side by
//! side on one Kafka, one local DynamoDB endpoint and one Redis.
#![allow(dead_code)] // each test binary uses its own subset

pub mod dynamo_faults;
pub mod secure;
pub mod serve;
pub mod sse;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The broker list; `scripts/test-cluster.sh` points the Kafka tests at its 3-broker cluster
/// through `VOTES_TEST_KAFKA_BROKERS`.
pub static KAFKA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("VOTES_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
});

/// Replicas of the topics the tests create (`VOTES_TEST_REPLICATION`, default 1).
pub fn replication() -> u16 {
    env_number("VOTES_TEST_REPLICATION").unwrap_or(1)
}

/// The number in the environment variable `name`; `None` when it is unset or not a number.
pub fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}
pub const DYNAMODB: &str = "http://127.0.0.1:8000";
pub const REDIS: &str = "redis://127.0.0.1:6379";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Kafka,
    DynamoDb,
    Redis,
}

impl Service {
    fn script_name(self) -> &'static str {
        match self {
            Service::Kafka => "kafka",
            Service::DynamoDb => "dynamodb",
            Service::Redis => "redis",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Service::Kafka => "Kafka (KRaft broker, VOTES_TEST_KAFKA_BROKERS or 127.0.0.1:9092)",
            Service::DynamoDb => {
                "the local DynamoDB endpoint (dynoxide at http://127.0.0.1:8000, scripts/services.sh up dynamodb)"
            }
            Service::Redis => "Redis (127.0.0.1:6379)",
        }
    }
}

/// The checkout the tests run in: read when they run (cargo sets it), not when they were
/// compiled, because clones share one warm target directory and may reuse each other's builds.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

static STARTED: Mutex<Vec<Service>> = Mutex::new(Vec::new());

/// Makes sure `service` answers; starts it with `scripts/services.sh up` when it does not,
/// and fails the test with a message naming the service when it still does not.
pub fn require(service: Service) {
    let mut started = STARTED.lock().unwrap_or_else(|p| p.into_inner());
    if started.contains(&service) {
        return;
    }
    if !probe(service) {
        let script = repo_root().join("scripts/services.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(["up", service.script_name()])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} to start {}: {e}",
                    script.display(),
                    service.describe()
                )
            });
        assert!(
            out.status.success() && probe(service),
            "{} is not reachable and `scripts/services.sh up {}` could not start it:\n{}{}",
            service.describe(),
            service.script_name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
    started.push(service);
}

/// Asks the service something real. Runs on its own thread so that it may be called from
/// inside a test's tokio runtime.
fn probe(service: Service) -> bool {
    std::thread::spawn(move || probe_blocking(service))
        .join()
        .unwrap_or(false)
}

fn probe_blocking(service: Service) -> bool {
    match service {
        Service::Kafka => {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = match rdkafka::ClientConfig::new()
                .set("bootstrap.servers", KAFKA.as_str())
                .create()
            {
                Ok(c) => c,
                Err(_) => return false,
            };
            consumer.fetch_metadata(None, Duration::from_secs(5)).is_ok()
        }
        Service::DynamoDb => runtime().block_on(async {
            let client = votes_tally_client().await;
            tokio::time::timeout(Duration::from_secs(5), client.list_tables().send())
                .await
                .is_ok_and(|r| r.is_ok())
        }),
        Service::Redis => runtime().block_on(async {
            let Ok(client) = redis::Client::open(REDIS) else { return false };
            let ping = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            matches!(tokio::time::timeout(Duration::from_secs(5), ping).await, Ok(Ok(p)) if p == "PONG")
        }),
    }
}

async fn votes_tally_client() -> aws_sdk_dynamodb::Client {
    votes_tally::dynamo::client(Some(DYNAMODB)).await
}

/// A DynamoDB client pointed at the local DynamoDB endpoint.
pub async fn dynamo() -> aws_sdk_dynamodb::Client {
    require(Service::DynamoDb);
    votes_tally_client().await
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A tokio runtime of two workers, for a test whose many client connections (a flood, held
/// sockets) need more than the one thread of [`runtime`], and no more than two beside the node.
pub fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A client joining the serve group of `names` under the static member id `instance`, as a
/// serve node's core does (no automatic commits), with `settings` on top (its session timeout
/// at least), subscribed to the votes topic: a member the test drives by polling it.
pub fn serve_group_member(
    names: &votes_core::Names,
    instance: &str,
    settings: &[(&str, &str)],
) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let mut config = votes_tally::kafka::base_config(&KAFKA);
    config
        .set("group.id", names.serve_group())
        .set("group.instance.id", instance)
        .set("enable.auto.commit", "false");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let consumer: rdkafka::consumer::BaseConsumer = config.create().unwrap();
    consumer.subscribe(&[&names.votes_topic()]).unwrap();
    consumer
}

/// A unique prefix (see [`unique_prefix`]) with its topics created on the test Kafka,
/// `partitions` each, without `votes init`: for the tests that drive the log directly
/// (producers, committers, recovery) and need nothing else provisioned.
pub fn fresh_topics(test: &str, partitions: u32) -> votes_core::Names {
    require(Service::Kafka);
    let names = votes_core::Names::new(unique_prefix(test)).unwrap();
    runtime()
        .block_on(votes_tally::provision::create_topics(
            &KAFKA,
            &names,
            &votes_tally::provision::TopicPlan {
                partitions,
                replication: replication(),
                timeout: Duration::from_secs(30),
            },
        ))
        .expect("topics created");
    names
}

/// A prefix no other test (or earlier run) uses: tests share the services, never resources.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t-{test}-{}-{}-", std::process::id(), nanos % 1_000_000_000)
}

/// The `votes` binary built for this test run, with the local services and the test audit
/// key configured and no configuration file, ready to spawn (persisters, recounts, exports).
pub fn votes_command(prefix: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_votes"));
    c.args(args)
        .env("VOTES_PREFIX", prefix)
        .env("VOTES_KAFKA_BROKERS", KAFKA.as_str())
        .env("VOTES_REDIS_URL", REDIS)
        .env("VOTES_DYNAMODB_ENDPOINT", DYNAMODB)
        .env("VOTES_AUDIT_KEY", serve::AUDIT_KEY)
        .env("VOTES_LOG", "info")
        .env_remove("VOTES_CONFIG")
        .env_remove("VOTES_AUDIT_SIGNING_KEY");
    c
}

/// Spawns `command` (a `votes` process expected to refuse its settings at start) and waits,
/// bounded, for it to exit non-zero: its stderr.
pub fn fails_at_start(mut command: Command) -> String {
    // Not the command's Debug: it shows the environment, secrets included.
    let what = format!(
        "{:?} {:?}",
        command.get_program(),
        command.get_args().collect::<Vec<_>>()
    );
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("votes starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "{what} exited 0:\n{err}");
            return err;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what} kept running: a refusal at start was expected");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the `votes` binary built for this test run with the local services configured.
pub fn votes(prefix: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_votes"))
        .args(args)
        .env("VOTES_PREFIX", prefix)
        .env("VOTES_KAFKA_BROKERS", KAFKA.as_str())
        .env("VOTES_DYNAMODB_ENDPOINT", DYNAMODB)
        .env("VOTES_REDIS_URL", REDIS)
        .env_remove("VOTES_CONFIG")
        .output()
        .expect("the votes binary runs")
}

/// Asks `probe` again every `every` until it answers `Ok`, and returns what it found; fails the
/// test with its last `Err` once `within` has passed. What the tests wait for (counters
/// published once a second, results that converge) shows up in its own time, never at once.
pub async fn eventually<T, E: std::fmt::Display>(
    within: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(found) => return found,
            Err(why) => assert!(std::time::Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Fails the test unless the process of `out` succeeded, naming it `what` with its output, so
/// a broken setup step is not mistaken for the behaviour under test.
pub fn assert_success(out: &std::process::Output, what: impl std::fmt::Display) {
    assert!(out.status.success(), "{what}:\n{}", output_text(out));
}

/// The stdout of a process that must have succeeded (see [`assert_success`]), where `votes`
/// reports what it did.
pub fn success_stdout(out: &std::process::Output, what: impl std::fmt::Display) -> String {
    assert_success(out, what);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A finished process's stdout followed by its stderr, as one text to search or show.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails the test unless the process of `out` failed and said `says` (on stdout or stderr).
pub fn assert_fails_saying(out: &std::process::Output, says: &str) {
    let text = output_text(out);
    assert!(!out.status.success(), "exited 0:\n{text}");
    assert!(text.contains(says), "{text}");
}

/// A prefix of `test`'s own, initialised with `partitions` partitions once Kafka and the local
/// DynamoDB answer: the start of every test that runs nodes of its own.
pub fn fresh_prefix(test: &str, partitions: u32) -> String {
    require(Service::Kafka);
    require(Service::DynamoDb);
    let prefix = unique_prefix(test);
    init_with_partitions(&prefix, partitions);
    prefix
}

/// Runs `votes init --partitions <partitions>` under `prefix` and asserts it succeeded: the
/// setup most tests need before a node can start.
pub fn init_with_partitions(prefix: &str, partitions: u32) {
    let out = votes(prefix, &["init", "--partitions", &partitions.to_string()]);
    assert_success(&out, "votes init");
}

/// A Redis of a test's own beside the shared one, through `scripts/services.sh` on `port`
/// with `env` (e.g. `SERVICES_REDIS_TLS_DIR`, `SERVICES_REDIS_PASSWORD`): a test may stop it
/// without disturbing the others. `action` is `up` or `down`.
#[derive(Clone)]
pub struct PrivateRedis {
    pub port: &'static str,
    pub env: Vec<(&'static str, std::ffi::OsString)>,
}

impl PrivateRedis {
    pub fn run(&self, action: &str) {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/services.sh"))
            .args([action, "redis"])
            .env("SERVICES_REDIS_PORT", self.port)
            .envs(self.env.iter().map(|(k, v)| (*k, v)))
            .output()
            .expect("scripts/services.sh runs");
        assert!(
            out.status.success(),
            "Redis on port {}: `services.sh {action} redis` failed:\n{}{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it; the guard stops it however the test ends.
    pub fn up(&self) -> PrivateRedisGuard {
        self.run("up");
        PrivateRedisGuard(self.clone())
    }
}

pub struct PrivateRedisGuard(PrivateRedis);

impl Drop for PrivateRedisGuard {
    fn drop(&mut self) {
        let redis = self.0.clone();
        let _ = std::panic::catch_unwind(move || redis.run("down"));
    }
}

/// What `votes audit export` wrote for a final election and `votes audit verify` passed: the
/// rows as the exporter's own reader reads them.
pub struct VerifiedExport {
    pub rows: Vec<votes_audit::table::Row>,
    /// `votes audit verify`'s lines, every one `ok`.
    pub verify: String,
}

/// Exports the final `election` under `prefix` with a fresh Ed25519 key into a new directory,
/// verifies it offline under that key, and returns its rows; fails the test on any `FAIL`.
pub fn export_and_verify(prefix: &str, election: &str) -> VerifiedExport {
    export_and_verify_with(prefix, election, &[])
}

/// [`export_and_verify`] with `env` for the `votes` commands (the engines' settings).
pub fn export_and_verify_with(
    prefix: &str,
    election: &str,
    env: &[(&str, String)],
) -> VerifiedExport {
    let work = std::env::temp_dir().join(format!("{prefix}export-{election}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let key = work.join("signing.pem");
    let genkey = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .output()
        .expect("openssl runs (the audit key is made with it)");
    assert!(genkey.status.success(), "openssl genpkey: {genkey:?}");
    let run = |args: &[&str]| {
        let out = votes_command(prefix, args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("VOTES_LOG", "warn")
            .env("VOTES_AUDIT_SIGNING_KEY", &key)
            .output()
            .expect("the votes binary runs");
        success_stdout(&out, format_args!("votes {args:?}"))
    };
    let dir = work.join("export");
    let dir_arg = dir.to_str().unwrap();
    run(&["audit", "export", "--election", election, "--out", dir_arg]);
    let pubkey = work.join("signing.pub.pem");
    std::fs::write(&pubkey, run(&["audit", "pubkey"])).unwrap();
    let verify = run(&[
        "audit",
        "verify",
        dir_arg,
        "--pubkey",
        pubkey.to_str().unwrap(),
    ]);
    let (checks, verdict) = verify.trim_end().rsplit_once('\n').unwrap_or(("", &verify));
    assert!(
        checks.lines().all(|l| l.starts_with("ok ")) && verdict == "verified: every check holds",
        "every check of the export holds:\n{verify}"
    );
    let reader = votes_audit::table::VotesReader::open(&dir.join("votes.parquet")).unwrap();
    let rows = (0..reader.num_row_groups())
        .flat_map(|g| reader.row_group(g).unwrap())
        .collect();
    std::fs::remove_dir_all(&work).unwrap();
    VerifiedExport { rows, verify }
}
