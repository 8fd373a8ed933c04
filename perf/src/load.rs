//! The open-loop load run behind `votes-load` (docs/design.md §4.1).
//!
//! A dispatcher walks the [`Schedule`]: request `i` is started at its intended time (or at once
//! when that time has passed) in its own task, whatever the earlier requests are doing, and its
//! latency is measured from the intended time, so a stalled server shows up in the latencies
//! instead of slowing the offered load down (no coordinated omission). When `max_in_flight`
//! requests are outstanding a due request is not queued but counted as `dropped`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Uri};
use serde::Serialize;
use tokio::time::Instant;

use crate::client::{Body, Client, ClientError, Protocol, Target};
use crate::election::{self, TargetError};
use crate::flow::Flow;
use crate::mix::{Kind, Mix, MixError, Plan};
use crate::report::{LATENCY_MAX_US, Report, latency_histogram, record_latency};
use crate::schedule::{Ramp, Schedule};
use crate::tokens::Tokens;

/// Everything a run needs; the binary fills it from flags and `VOTES_*` variables.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub election: String,
    /// Offered votes/s (the peak of a ramp).
    pub rate: f64,
    /// Length of a `Ramp::None` run.
    pub duration: Duration,
    pub ramp: Ramp,
    pub voters: u64,
    pub voter_base: u64,
    pub dup_ratio: f64,
    pub invalid_ratio: f64,
    pub protocol: Protocol,
    pub connections: usize,
    /// Source addresses the connections bind to in turn (empty: the kernel chooses).
    pub source_addrs: Vec<std::net::IpAddr>,
    /// Option ids to vote for; `None`: the election's, from `GET /v1/elections/{id}`.
    pub options: Option<Vec<String>>,
    /// The HS256 secret voter tokens are signed with.
    pub token_key: Vec<u8>,
    /// Voters whose token is kept once minted.
    pub token_cache: usize,
    pub max_in_flight: u64,
    /// Bound on one request (challenge, solving and vote included).
    pub timeout: Duration,
    pub seed: u64,
    /// Print a progress line to stderr once a second.
    pub progress: bool,
    /// Look voters up (`GET …/votes/me`) instead of voting.
    pub lookups: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("--token-key / VOTES_TOKEN_KEY: {0}")]
    TokenKey(#[from] votes_core::token::KeyError),
    #[error("{0}")]
    Mix(#[from] MixError),
    #[error("--rate must be a positive number of votes/s")]
    Rate,
    #[error("--max-in-flight and --connections must be at least 1")]
    Limits,
}

/// Latency quantiles in milliseconds (for the send lag).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LagMs {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The JSON report: docs/design.md §4.1's fields, then what helps reading a run.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LoadReport {
    #[serde(flatten)]
    pub report: Report,
    pub protocol: String,
    pub connections: usize,
    /// Mean offered rate over the schedule (requests planned / schedule length).
    pub offered_rate: f64,
    /// Peak offered rate (`--rate`).
    pub peak_rate: f64,
    /// Length of the schedule.
    pub duration_s: f64,
    /// Wall time from the first intended send to the last answer (`achieved_rate`'s divisor).
    pub elapsed_s: f64,
    /// Requests the schedule planned: `sent + dropped`.
    pub planned: u64,
    /// Due requests not sent because `max_in_flight` were outstanding.
    pub dropped: u64,
    pub max_in_flight: u64,
    pub pow_difficulty: u8,
    /// Transport failures and timeouts by cause (their total is `by_status["error"]`).
    pub errors: BTreeMap<String, u64>,
    /// Answers by request kind (fresh, dup, bad_json, …) and status.
    pub by_kind: BTreeMap<String, BTreeMap<String, u64>>,
    /// Answers whose status is not the one their kind expects (fresh 202, dup 409, bad_json
    /// 400, unknown_option 422, missing_token 401, oversize 413).
    pub unexpected: u64,
    /// How late the dispatcher started requests after their intended time (requests sent
    /// up to one timer tick early count as 0 and are measured from their actual send).
    pub send_lag_ms: LagMs,
}

#[derive(serde::Deserialize)]
struct ChallengeView {
    challenge: String,
    difficulty: u8,
}

const STATUS_SLOTS: usize = 1000;
/// tokio's timer ticks in milliseconds and rounds deadlines up, so the dispatcher wakes up to
/// this much before a due time and sends what falls due within it: otherwise every latency
/// would carry the timer's rounding (≈0.5 ms on average).
const SEND_LEAD: Duration = Duration::from_millis(1);
const ERROR_LABELS_MAX: usize = 32;

struct Recorded {
    latency_us: Histogram<u64>,
    by_kind: BTreeMap<(Kind, u16), u64>,
}

/// Counters shared by the request tasks, the dispatcher and the progress line.
struct Stats {
    flow: Flow,
    errors: AtomicU64,
    status: Box<[AtomicU64]>,
    recorded: Mutex<Recorded>,
    error_labels: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn new() -> Self {
        Self {
            flow: Flow::default(),
            errors: AtomicU64::new(0),
            status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            recorded: Mutex::new(Recorded {
                latency_us: latency_histogram(),
                by_kind: BTreeMap::new(),
            }),
            error_labels: Mutex::new(BTreeMap::new()),
        }
    }

    fn answer(&self, kind: Kind, status: u16, latency: Duration) {
        let slot = usize::from(status).min(STATUS_SLOTS - 1);
        self.status[slot].fetch_add(1, Ordering::Relaxed);
        let mut r = self.recorded.lock().expect("stats lock");
        record_latency(&mut r.latency_us, latency);
        *r.by_kind.entry((kind, status)).or_default() += 1;
        drop(r);
        self.flow.answered.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self, label: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut m = self.error_labels.lock().expect("stats lock");
        if m.len() < ERROR_LABELS_MAX || m.contains_key(&label) {
            *m.entry(label).or_default() += 1;
        } else {
            *m.entry("other".to_string()).or_default() += 1;
        }
    }

    fn count(&self, status: u16) -> u64 {
        self.status[usize::from(status)].load(Ordering::Relaxed)
    }
}

/// What request tasks share.
struct Shared {
    client: Client,
    tokens: Tokens,
    stats: Stats,
    votes_uri: Uri,
    challenge_uri: Uri,
    me_uri: Uri,
    json: HeaderValue,
    /// One body per option.
    option_bodies: Vec<Bytes>,
    option_ids: Vec<String>,
    bad_json: Bytes,
    unknown_option: Bytes,
    oversize: Bytes,
    pow_difficulty: u8,
    timeout: Duration,
}

fn vote_body(option: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(&serde_json::json!({ "option": option })).expect("json"))
}

/// An option id that is syntactically valid and not one of the election's.
fn unknown_option(options: &[String]) -> String {
    (0u32..)
        .map(|i| format!("no-such-option-{i}"))
        .find(|o| !options.contains(o))
        .expect("some name is free")
}

impl Shared {
    fn post(&self, auth: Option<HeaderValue>, body: Bytes) -> hyper::Request<Body> {
        let mut b = self
            .client
            .request(Method::POST, self.votes_uri.clone())
            .header(CONTENT_TYPE, self.json.clone());
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        b.body(Body::new(body)).expect("valid request")
    }

    /// Sends the request(s) of one plan; the status of the last answer.
    async fn perform(&self, plan: Plan) -> Result<u16, ClientError> {
        let req = match plan.kind {
            Kind::MissingToken => self.post(None, self.option_bodies[plan.option].clone()),
            Kind::BadJson => self.post(Some(self.tokens.bearer(plan.voter)), self.bad_json.clone()),
            Kind::UnknownOption => self.post(
                Some(self.tokens.bearer(plan.voter)),
                self.unknown_option.clone(),
            ),
            Kind::Oversize => {
                self.post(Some(self.tokens.bearer(plan.voter)), self.oversize.clone())
            }
            Kind::Lookup => self
                .client
                .request(Method::GET, self.me_uri.clone())
                .header(AUTHORIZATION, self.tokens.bearer(plan.voter))
                .body(Body::default())
                .expect("valid request"),
            Kind::Fresh | Kind::Dup => {
                let auth = self.tokens.bearer(plan.voter);
                if self.pow_difficulty == 0 {
                    self.post(Some(auth), self.option_bodies[plan.option].clone())
                } else {
                    let get = self
                        .client
                        .request(Method::GET, self.challenge_uri.clone())
                        .header(AUTHORIZATION, auth.clone())
                        .body(Body::default())
                        .expect("valid request");
                    let a = self.client.send(get).await?;
                    let Some(c) = (a.status == 200)
                        .then(|| serde_json::from_slice::<ChallengeView>(&a.body).ok())
                        .flatten()
                    else {
                        return Ok(a.status.as_u16());
                    };
                    let challenge = c.challenge.clone();
                    let nonce = tokio::task::spawn_blocking(move || {
                        votes_core::pow::solve(&challenge, c.difficulty)
                    })
                    .await
                    .expect("solving does not panic");
                    let body = serde_json::json!({
                        "option": self.option_ids[plan.option],
                        "pow": {"challenge": c.challenge, "nonce": nonce},
                    });
                    let body = Bytes::from(serde_json::to_vec(&body).expect("json"));
                    self.post(Some(auth), body)
                }
            }
        };
        Ok(self.client.send(req).await?.status.as_u16())
    }
}

/// Where a request's latency starts: its intended send time `due`, so a request the generator
/// (or a stalled server) made late counts its wait (no coordinated omission); or the actual
/// send `now` when that was earlier (the timer woke up to a tick early).
fn measured_from(due: Instant, now: Instant) -> Instant {
    due.min(now)
}

/// Performs `plan` and records its latency from `due`: the intended send time, or the actual
/// one when that was earlier.
async fn request(shared: Arc<Shared>, plan: Plan, due: Instant) {
    let outcome = tokio::time::timeout(shared.timeout, shared.perform(plan)).await;
    let latency = due.elapsed();
    let stats = &shared.stats;
    match outcome {
        Ok(Ok(status)) => stats.answer(plan.kind, status, latency),
        Ok(Err(e)) => stats.error(e.label()),
        Err(_) => stats.error("timeout".to_string()),
    }
    stats.flow.finished();
}

/// The progress line; with `last` (sent, answered a second ago), also the rates of the last
/// second.
fn progress_line(stats: &Stats, elapsed: f64, last: Option<&mut (u64, u64)>) -> String {
    let sent = stats.flow.sent.load(Ordering::Relaxed);
    let answered = stats.flow.answered.load(Ordering::Relaxed);
    let ok = stats.count(202);
    let dup = stats.count(409);
    let errors = stats.errors.load(Ordering::Relaxed);
    let other = answered.saturating_sub(ok + dup);
    let p99 = {
        let r = stats.recorded.lock().expect("stats lock");
        r.latency_us.value_at_quantile(0.99) as f64 / 1000.0
    };
    let (sent_rate, answered_rate) = match last {
        Some(last) => {
            let rates = (
                format!(" (+{}/s)", sent - last.0),
                format!("+{}/s, ", answered - last.1),
            );
            *last = (sent, answered);
            rates
        }
        None => (String::new(), String::new()),
    };
    format!(
        "[{elapsed:7.1}s] sent {sent}{sent_rate} answered {answered} ({answered_rate}{:.0}/s avg) \
         202={ok} 409={dup} other={other} err={errors} dropped={} in-flight={} p99={p99:.2}ms",
        answered as f64 / elapsed.max(1e-9),
        stats.flow.dropped.load(Ordering::Relaxed),
        stats.flow.in_flight.load(Ordering::Relaxed),
    )
}

/// Runs the load and returns its report. Run it as a task of a multi-threaded tokio runtime
/// (`tokio::spawn`, not only `block_on`, so the dispatcher shares the worker threads it spawns
/// requests on); proof of work is solved on the runtime's blocking pool.
pub async fn run(cfg: Config) -> Result<LoadReport, LoadError> {
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        return Err(LoadError::Rate);
    }
    if cfg.max_in_flight == 0 || cfg.connections == 0 {
        return Err(LoadError::Limits);
    }
    election::check_id(&cfg.election)?;
    let schedule = Schedule::new(cfg.rate, cfg.duration, cfg.ramp);
    let client = Client::connect_from(
        cfg.target.clone(),
        cfg.protocol,
        cfg.connections,
        cfg.source_addrs.clone(),
    )
    .await
    .map_err(|source| TargetError::Connect {
        target: cfg.target.authority.clone(),
        source,
    })?;
    let election = match election::fetch(&client, &cfg.election).await {
        Ok(e) => Some(e),
        Err(why) if cfg.options.is_some() => {
            eprintln!("votes-load: warning: {why}; using --options and no proof of work");
            None
        }
        Err(why) => {
            return Err(TargetError::Election {
                election: cfg.election.clone(),
                why,
            }
            .into());
        }
    };
    if let Some(e) = &election
        && e.state != "open"
    {
        eprintln!(
            "votes-load: warning: election {} is {:?}, votes will be refused",
            cfg.election, e.state
        );
    }
    let pow_difficulty = election.as_ref().map_or(0, |e| e.pow_difficulty);
    let options = match (&cfg.options, &election) {
        (Some(o), _) => o.clone(),
        (None, Some(e)) => e.options.iter().map(|o| o.id.clone()).collect(),
        (None, None) => Vec::new(),
    };
    let mut mix = Mix::new(
        cfg.seed,
        cfg.dup_ratio,
        cfg.invalid_ratio,
        cfg.voter_base,
        cfg.voters,
        options.len(),
    )?;
    if cfg.lookups {
        mix = mix.lookups_only();
    }
    let ttl_s = schedule.duration().as_secs() + cfg.timeout.as_secs() + 3_600;
    let tokens = Tokens::new(
        &cfg.token_key,
        cfg.voter_base,
        cfg.token_cache
            .min(usize::try_from(cfg.voters).unwrap_or(usize::MAX)),
        (votes_core::clock::unix_ms() / 1000).saturating_sub(60),
        ttl_s,
    )?;
    let mut oversize = br#"{"option":"x","padding":""#.to_vec();
    oversize.resize(
        oversize.len() + 2 * votes_core::vote_body::VOTE_BODY_MAX,
        b'x',
    );
    oversize.extend_from_slice(br#""}"#);
    let shared = Arc::new(Shared {
        votes_uri: client.uri(&format!("/v1/elections/{}/votes", cfg.election)),
        challenge_uri: client.uri(&format!("/v1/elections/{}/challenge", cfg.election)),
        me_uri: client.uri(&format!("/v1/elections/{}/votes/me", cfg.election)),
        client,
        tokens,
        stats: Stats::new(),
        json: HeaderValue::from_static("application/json"),
        option_bodies: options.iter().map(|o| vote_body(o)).collect(),
        unknown_option: vote_body(&unknown_option(&options)),
        option_ids: options,
        bad_json: Bytes::from_static(br#"{"option": "#),
        oversize: Bytes::from(oversize),
        pow_difficulty,
        timeout: cfg.timeout,
    });

    let total = schedule.total();
    let t0 = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let progress = cfg.progress.then(|| {
        let shared = shared.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
            let mut last = (0, 0);
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let line =
                    progress_line(&shared.stats, t0.elapsed().as_secs_f64(), Some(&mut last));
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        })
    });

    let mut lag_us = latency_histogram();
    let stats = &shared.stats;
    let mut burst = 0u32;
    for i in 0..total {
        let due = t0 + schedule.intended(i);
        let mut now = Instant::now();
        if due > now + SEND_LEAD {
            tokio::time::sleep_until(due - SEND_LEAD).await;
            now = Instant::now();
            burst = 0;
        } else {
            // Behind schedule: let the request tasks run now and then, or on one thread they
            // would only start once the dispatcher caught up.
            burst += 1;
            if burst.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
        }
        let plan = mix.draw();
        if !stats.flow.admit(cfg.max_in_flight) {
            continue;
        }
        let lag = u64::try_from(now.saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX);
        lag_us.saturating_record(lag.clamp(1, LATENCY_MAX_US));
        tokio::spawn(request(shared.clone(), plan, measured_from(due, now)));
    }
    stats.flow.drained().await;
    let elapsed = t0.elapsed().as_secs_f64().max(1e-6);
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
        eprintln!("{}", progress_line(stats, elapsed, None));
    }

    let mut by_status = BTreeMap::new();
    for (code, n) in stats.status.iter().enumerate() {
        let n = n.load(Ordering::Relaxed);
        if n > 0 {
            by_status.insert(code.to_string(), n);
        }
    }
    let errors = stats.errors.load(Ordering::Relaxed);
    if errors > 0 {
        by_status.insert("error".to_string(), errors);
    }
    let recorded = stats.recorded.lock().expect("stats lock");
    let mut by_kind: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut unexpected = 0;
    for (&(kind, status), &n) in &recorded.by_kind {
        by_kind
            .entry(kind.name().to_string())
            .or_default()
            .insert(status.to_string(), n);
        if status != kind.expected_status() {
            unexpected += n;
        }
    }
    let sent = stats.flow.sent.load(Ordering::Relaxed);
    let dropped = stats.flow.dropped.load(Ordering::Relaxed);
    let duration_s = schedule.duration().as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(LoadReport {
        report: Report::new(sent, elapsed, by_status, &recorded.latency_us),
        protocol: cfg.protocol.as_str().to_string(),
        connections: cfg.connections,
        offered_rate: if duration_s > 0.0 {
            total as f64 / duration_s
        } else {
            0.0
        },
        peak_rate: cfg.rate,
        duration_s,
        elapsed_s: elapsed,
        planned: total,
        dropped,
        max_in_flight: cfg.max_in_flight,
        pow_difficulty,
        errors: stats.error_labels.lock().expect("stats lock").clone(),
        by_kind,
        unexpected,
        send_lag_ms: LagMs {
            p50: ms(lag_us.value_at_quantile(0.5)),
            p99: ms(lag_us.value_at_quantile(0.99)),
            max: ms(lag_us.max()),
        },
    })
}

impl LoadReport {
    /// A readable summary for stdout.
    pub fn summary(&self) -> String {
        let r = &self.report;
        let l = &r.latency_ms;
        let mut s = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(
            s,
            "votes-load: {} over {} connection(s), {:.1}s schedule ({:.0}/s offered, peak {:.0}/s), {:.1}s elapsed",
            self.protocol,
            self.connections,
            self.duration_s,
            self.offered_rate,
            self.peak_rate,
            self.elapsed_s
        );
        let _ = writeln!(
            s,
            "  planned {}  sent {}  dropped {} (max in flight {})  achieved {:.1}/s",
            self.planned, r.sent, self.dropped, self.max_in_flight, r.achieved_rate
        );
        let statuses: Vec<String> = r
            .by_status
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "  by status: {}", statuses.join(" "));
        for (kind, m) in &self.by_kind {
            let st: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "    {kind:<15} {}", st.join(" "));
        }
        let _ = writeln!(s, "  unexpected statuses: {}", self.unexpected);
        for (e, n) in &self.errors {
            let _ = writeln!(s, "  error {n:>8} × {e}");
        }
        let _ = writeln!(
            s,
            "  latency ms (from intended send time): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        let _ = write!(
            s,
            "  send lag ms: p50 {:.3}  p99 {:.3}  max {:.3}{}",
            self.send_lag_ms.p50,
            self.send_lag_ms.p99,
            self.send_lag_ms.max,
            if self.pow_difficulty > 0 {
                format!("  (proof of work: {} bits)", self.pow_difficulty)
            } else {
                String::new()
            }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_starts_at_the_earlier_of_intended_and_actual_send() {
        let due = Instant::now() + Duration::from_secs(1);
        let late = due + Duration::from_millis(40);
        assert_eq!(measured_from(due, late), due, "a late send counts its wait");
        let early = due - Duration::from_micros(500);
        assert_eq!(
            measured_from(due, early),
            early,
            "an early send counts from itself"
        );
    }
}
