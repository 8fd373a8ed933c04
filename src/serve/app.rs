//! The per-core application: the voter API (DESIGN §4.2) and the admin API (§4.3) on top of
//! the core's shards, its copy of the elections, and the mesh to the other cores.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use votes_core::clock::unix_ms;

use votes_core::election::{ElectionOption, ElectionState};
use votes_core::pow::{self, PowKey};
use votes_core::receipt::Leaf;
use votes_core::token::{self, TokenKeys};
use votes_core::vote_body::VOTE_BODY_MAX;
use votes_core::{
    Election, ElectionId, ErrorCode, OptionId, VoteBody, VoteIntent, VoteOutcome, partition_of,
};
use votes_net::http::{Method, Request, Response};

use votes_net::{
    App, BodyLimitError, BoxBody, ListenerKind, LocalBoxFuture, Mesh, RequestBody, SendError,
    read_body_limited, reply_channel,
};
use votes_tally::elections_log::{ElectionsView, ElectionsWriter, UpdateError};

use super::fleet::{FleetBoard, FleetView, Route, route};
use super::metrics::{CoreMetrics, NodeMetrics};
use super::reply::{
    self, bearer, custom_error, error, is_json, json, method_not_allowed, raw_json,
};
use super::results::CoreResults;
use super::routes::{Admin, Public, Transition};
use super::shards::ShardHost;
use super::web;

/// Longest time a vote's body may take to arrive once its head has.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The owner side of forwarding: votes other nodes send to this core's `--internal` socket.
pub struct ForwardedVotes(pub Rc<CoreApp>);

impl votes_net::forward::ForwardHandler for ForwardedVotes {
    fn vote(
        &self,
        vote: votes_core::forward::ForwardedVote,
    ) -> LocalBoxFuture<'static, VoteOutcome> {
        let app = self.0.clone();
        Box::pin(async move { app.forwarded(vote).await })
    }

    fn admits(&self, ip: std::net::IpAddr) -> bool {
        self.0.fleet.map().1.admits_link_from(ip)
    }
}

/// Messages between cores.
pub enum CoreMsg {
    /// A vote for a partition the receiving core owns; the answer goes back on `reply`.
    Vote {
        partition: u32,
        vote: VoteIntent,
        reply: votes_net::ReplyTx<VoteOutcome>,
    },
    /// A newer state of an election (from the admin API or the elections topic).
    Election(Election),
}

/// What this process serves (DESIGN §4.1 `--roles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub results: bool,
    pub admin: bool,
}

/// Runs the recount of a closed election on a thread of its own (it waits for the persisters
/// and reads the whole log: minutes, never on a reactor), at most one per election at a time.
pub struct Recounter {
    pub cfg: votes_tally::recount::RecountConfig,
    pub dynamodb_endpoint: Option<String>,
    running: std::sync::Mutex<std::collections::HashSet<ElectionId>>,
}

impl Recounter {
    pub fn new(
        cfg: votes_tally::recount::RecountConfig,
        dynamodb_endpoint: Option<String>,
    ) -> Self {
        Self {
            cfg,
            dynamodb_endpoint,
            running: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn start(self: &Arc<Self>, election: Election) {
        let id = election.id.clone();
        if !self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone())
        {
            tracing::info!(election = %id, "a recount of this election is already running");
            return;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("recount".into())
            .spawn(move || {
                let outcome = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
                    .and_then(|rt| {
                        rt.block_on(async {
                            let dynamo =
                                votes_tally::dynamo::client(this.dynamodb_endpoint.as_deref()).await;
                            votes_tally::recount::recount(&this.cfg, &dynamo, &election)
                                .await
                                .map_err(|e| e.to_string())
                        })
                    });
                match outcome {
                    Ok(r) => match r.verdict {
                        votes_tally::recount::Verdict::Official { official, .. } => {
                            tracing::info!(election = %r.election, total = official.total, "recount agrees: the result is official")
                        }
                        votes_tally::recount::Verdict::Disagree(diffs) => {
                            tracing::error!(election = %r.election, ?diffs, "recount DISAGREES: nothing official was written")
                        }
                    },
                    Err(why) => {
                        tracing::error!(election = %election.id, %why, "recount failed; `votes recount --all-closed` (the timer) retries")
                    }
                }
                this.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&election.id);
            });
        if let Err(e) = spawned {
            tracing::error!(election = %id, error = %e, "could not start the recount");
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }
}

/// Lifetime of a token from the development sign-in.
const DEV_LOGIN_TTL_S: u64 = 3600;
/// The largest integer a JSON number holds exactly in JavaScript (2^53 - 1): the development
/// sign-in takes voter ids as numbers up to it, or as decimal strings up to 2^64 - 1.
pub const JS_SAFE_INTEGER_MAX: u64 = (1 << 53) - 1;

/// What every core of the node shares, read-only.
pub struct NodeShared {
    pub roles: Roles,
    pub node: String,
    pub started: std::time::Instant,
    /// `--dev-login`: the voter page may get a token for any voter id. Development only.
    pub dev_login: bool,
    /// DynamoDB for `GET …/votes/me`: a tokio runtime of its own (the SDK needs one) and the
    /// client; cores await its answers through a oneshot.
    pub dynamo: Option<(tokio::runtime::Handle, aws_sdk_dynamodb::Client)>,
    pub names: votes_core::Names,
    /// `GET …/receipts/{receipt}` (results role): reads the receipts index in Redis.
    pub receipts: Option<super::receipts::ReceiptsReader>,
    /// Closing an election starts its recount in the background with these settings.
    pub recount: Option<Arc<Recounter>>,
    /// The Redis link's figures, when this node has one.
    pub link_stats: Option<Arc<votes_tally::fanout::LinkStats>>,
    pub token_keys: TokenKeys,
    pub pow_key: PowKey,
    pub audit_key: Vec<u8>,
    pub admin_token: Option<String>,
    /// Partitions of the votes topic: the routing function depends on it.
    pub partitions: u32,
    /// The fleet's partition → node/core map, as the group last described it.
    pub fleet: Arc<FleetBoard>,
    /// A map older than this (the group not described since) makes the node not ready.
    pub fleet_stale_after: Duration,
    pub metrics: Arc<NodeMetrics>,
    pub elections_writer: Arc<ElectionsWriter>,
    /// How long a PoW challenge stays valid.
    pub challenge_ttl: Duration,
}

pub struct CoreApp {
    pub core: usize,
    pub shared: Arc<NodeShared>,
    pub mesh: Mesh<CoreMsg>,
    pub elections: Rc<RefCell<ElectionsView>>,
    pub shards: Rc<ShardHost>,
    /// This core's copy of the fleet map.
    pub fleet: FleetView,
    /// Links to the other nodes, for votes whose partition another node owns; `None` when
    /// this node has no `--internal` listener (then such votes answer 503).
    pub forwarder: Option<Rc<votes_net::forward::Forwarder>>,
    /// The results role on this core; `None` when the node does not serve it.
    pub results: Option<Rc<CoreResults>>,
    pub metrics: Rc<CoreMetrics>,
    pub blocking: votes_net::Blocking,
    /// This core's per-address and per-prefix limits (DESIGN §4.1).
    pub limiter: RefCell<votes_net::RateLimiter>,
    /// DynamoDB lookups this core is waiting for (bounded by `LOOKUPS_MAX`).
    pub lookups: std::cell::Cell<usize>,
    /// Admin writes take turns on this core (the node's elections writer serializes them
    /// anyway): one blocking slot, however many wait.
    pub admin_writes: glommio::sync::Semaphore,
    /// Stops this core's shard host. Fired after the HTTP connections drained, not when the
    /// shutdown starts: a vote in flight waits for its transaction, so the shards must go on
    /// committing and answering until the last request is answered.
    pub shards_stop: votes_net::LocalSignal,
}

/// DynamoDB lookups in flight per core; beyond it `/votes/me` answers 503.
const LOOKUPS_MAX: usize = 256;
/// Longest wait for DynamoDB's answer to `/votes/me`.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The handle the reactor holds; requests clone the `Rc` so their futures own the app.
pub struct AppHandle(pub Rc<CoreApp>);

impl App for AppHandle {
    fn handle(
        &self,
        kind: ListenerKind,
        peer: SocketAddr,
        req: Request<RequestBody>,
    ) -> LocalBoxFuture<'static, Response<BoxBody>> {
        let app = self.0.clone();
        Box::pin(async move {
            match kind {
                ListenerKind::Public => app.public(peer, req).await,
                ListenerKind::Admin => app.admin(req).await,
                ListenerKind::Internal => unreachable!("the internal listener does not speak HTTP"),
            }
        })
    }

    fn shutdown(&self) -> LocalBoxFuture<'static, ()> {
        self.0.shards_stop.fire();
        Box::pin(async {})
    }
}

/// The voter's view of an election (DESIGN §4.2).
#[derive(serde::Serialize)]
struct ElectionView<'a> {
    id: &'a ElectionId,
    title: &'a str,
    state: ElectionState,
    options: &'a [ElectionOption],
    pow_difficulty: u8,
}

impl<'a> From<&'a Election> for ElectionView<'a> {
    fn from(e: &'a Election) -> Self {
        Self {
            id: &e.id,
            title: &e.title,
            state: e.state,
            options: &e.options,
            pow_difficulty: e.pow_difficulty,
        }
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

impl CoreApp {
    async fn public(
        self: Rc<Self>,
        peer: SocketAddr,
        req: Request<RequestBody>,
    ) -> Response<BoxBody> {
        let path = req.uri().path().to_owned();
        let segs = segments(&path);
        let method = req.method().clone();
        let route = Public::of(&segs, self.shared.dev_login);
        if !route.is_some_and(Public::is_probe) {
            let limited = self
                .limiter
                .borrow_mut()
                .check(peer.ip(), std::time::Instant::now());
            if let Err(wait) = limited {
                if method == Method::POST && matches!(route, Some(Public::Votes { .. })) {
                    self.metrics.vote(ErrorCode::RateLimited.as_str());
                }
                return reply::rate_limited(wait);
            }
        }
        let Some(route) = route else {
            return error(ErrorCode::NotFound, "no such resource");
        };
        if !route.methods().contains(&method) {
            return method_not_allowed(route.methods());
        }
        match route {
            Public::Healthz => json(200, &serde_json::json!({"status": "ok"})),
            Public::Readyz => {
                if self.ready() {
                    json(200, &serde_json::json!({"status": "ready"}))
                } else {
                    error(
                        ErrorCode::Unavailable,
                        "this node has not joined the fleet, or not every shard it owns has recovered",
                    )
                }
            }
            Public::Elections => {
                let view = self.elections.borrow();
                let list: Vec<ElectionView> = view
                    .sorted()
                    .into_iter()
                    .filter(|e| e.state != ElectionState::Draft)
                    .map(ElectionView::from)
                    .collect();
                json(200, &list)
            }
            Public::Election { id } => match self.visible_election(id) {
                Some(e) => json(200, &ElectionView::from(&e)),
                None => error(ErrorCode::NotFound, "no such election"),
            },
            Public::OpenApi => reply::raw_json_static(200, super::openapi::public()),
            Public::Index => page("index.html"),
            Public::ResultsPage => page("results.html"),
            Public::Static { name } => page(name),
            Public::DevLogin if method == Method::POST => self.dev_login(req).await,
            Public::DevLogin => json(200, &serde_json::json!({"enabled": true})),
            Public::Results { id } => self.with_results(id, |r, e| r.results(e, req.headers())),
            Public::ResultsStream { id } => {
                self.with_results(id, |r, e| r.stream(e, req.headers()))
            }
            Public::ResultsWebSocket { id } => self.with_results(id, |r, e| r.websocket(e, &req)),
            Public::Receipt { id, receipt } => {
                let (id, receipt) = (id.to_string(), receipt.to_string());
                self.receipt(&id, &receipt).await
            }
            Public::Challenge { id } => self.challenge(id, &req),
            Public::MyVote { id } => {
                let id = id.to_string();
                self.votes_me(&id, &req).await
            }
            Public::Votes { .. } if !self.shared.roles.ingest => {
                error(ErrorCode::NotFound, "this node does not take votes")
            }
            Public::Votes { id } => {
                let id = id.to_string();
                let resp = self.vote(&id, req).await;
                self.metrics
                    .vote(outcome_name(resp.status().as_u16(), &resp));
                resp
            }
        }
    }

    /// Runs `f` with the results role and a public election, or answers 404.
    fn with_results(
        &self,
        id: &str,
        f: impl FnOnce(&CoreResults, &Election) -> Response<BoxBody>,
    ) -> Response<BoxBody> {
        let Some(results) = &self.results else {
            return error(ErrorCode::NotFound, "this node does not serve results");
        };
        match self.visible_election(id) {
            Some(e) => f(results, &e),
            None => error(ErrorCode::NotFound, "no such election"),
        }
    }

    /// GET /v1/elections/{id}/receipts/{receipt}: the leaf and its inclusion proof, once the
    /// result is official (DESIGN §4.5). Two Redis round trips, whatever the election's size.
    async fn receipt(&self, id: &str, receipt: &str) -> Response<BoxBody> {
        let (Some(results), Some(reader)) = (&self.results, &self.shared.receipts) else {
            return error(ErrorCode::NotFound, "this node does not serve results");
        };
        let Some(election) = self.visible_election(id) else {
            return error(ErrorCode::NotFound, "no such election");
        };
        let Some(leaf_hash) = votes_core::receipt::parse_receipt(receipt) else {
            return error(
                ErrorCode::InvalidRequest,
                "a receipt is 64 lowercase hex digits",
            );
        };
        let Some((root, tree_size)) = results.merkle(&election) else {
            return error(
                ErrorCode::NotFound,
                "the election has no official result yet; receipts are checked after it",
            );
        };
        if self.lookups.get() >= LOOKUPS_MAX {
            return error(ErrorCode::Unavailable, "too many lookups in flight; retry");
        }
        self.lookups.set(self.lookups.get() + 1);
        let found = glommio::timer::timeout(LOOKUP_TIMEOUT, async {
            Ok(reader
                .proof(election.id.clone(), leaf_hash, root, tree_size)
                .await)
        })
        .await;
        self.lookups.set(self.lookups.get() - 1);
        match found {
            Ok(Ok(Some(proof))) => json(200, &proof),
            Ok(Ok(None)) => error(ErrorCode::NotFound, "no counted vote has this receipt"),
            Ok(Err(why)) => {
                tracing::warn!(%why, "receipt lookup failed");
                error(
                    ErrorCode::Unavailable,
                    "the receipts index did not answer; retry",
                )
            }
            Err(_) => error(
                ErrorCode::Unavailable,
                "the receipts index did not answer in time; retry",
            ),
        }
    }

    /// POST /v1/dev/login `{"voter":"42"}`: a token for any voter id, only with `--dev-login`.
    async fn dev_login(&self, req: Request<RequestBody>) -> Response<BoxBody> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Login {
            voter: serde_json::Value,
        }
        let login: Login = match Self::admin_body(req).await {
            Ok(l) => l,
            Err(resp) => return resp,
        };
        let voter = match &login.voter {
            serde_json::Value::String(s) if !s.starts_with('+') => s.parse::<u64>().ok(),
            // JSON numbers as JavaScript writes them: `7` or `7.0`, up to 2^53 - 1.
            serde_json::Value::Number(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 2f64.powi(53))
                        .map(|f| f as u64)
                })
                .filter(|v| *v <= JS_SAFE_INTEGER_MAX),
            _ => None,
        };
        let Some(voter) = voter else {
            return error(
                ErrorCode::InvalidRequest,
                "voter must be a decimal voter id (0 to 2^64-1)",
            );
        };
        let now_s = unix_ms() / 1000;
        let token = token::issue(
            self.shared.token_keys.signing_key(),
            votes_core::VoterId(voter),
            DEV_LOGIN_TTL_S,
            now_s,
        );
        json(
            200,
            &serde_json::json!({"token": token, "voter": voter.to_string(), "expires_at": (now_s + DEV_LOGIN_TTL_S) * 1000}),
        )
    }

    /// GET /v1/elections/{id}/votes/me: has this voter voted, read from DynamoDB (the source
    /// of truth, DESIGN §4.2). A vote shows once the persister wrote it.
    async fn votes_me<B>(&self, id: &str, req: &Request<B>) -> Response<BoxBody> {
        let voter = match self.voter(req, unix_ms()) {
            Ok(v) => v,
            Err(resp) => return *resp,
        };
        let Some(election) = self.visible_election(id) else {
            return error(ErrorCode::NotFound, "no such election");
        };
        let Some((rt, client)) = &self.shared.dynamo else {
            return error(
                ErrorCode::NotFound,
                "this node does not serve the voter API",
            );
        };
        if self.lookups.get() >= LOOKUPS_MAX {
            return error(ErrorCode::Unavailable, "too many lookups in flight; retry");
        }
        self.lookups.set(self.lookups.get() + 1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (client, table) = (client.clone(), self.shared.names.votes_table());
        let pk = votes_core::vote_item_pk(election.id.as_str(), voter);
        rt.spawn(async move {
            let got = client
                .get_item()
                .table_name(table)
                .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk))
                .key(
                    "sk",
                    aws_sdk_dynamodb::types::AttributeValue::N(voter.0.to_string()),
                )
                .consistent_read(true)
                .send()
                .await;
            let _ = tx.send(
                got.map(|o| o.item)
                    .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()),
            );
        });
        let answer = glommio::timer::timeout(LOOKUP_TIMEOUT, async { Ok(rx.await) }).await;
        self.lookups.set(self.lookups.get() - 1);
        let item = match answer {
            Ok(Ok(Ok(item))) => item,
            Ok(Ok(Err(why))) => {
                tracing::warn!(%why, "DynamoDB lookup failed");
                return error(
                    ErrorCode::Unavailable,
                    "the vote store did not answer; retry",
                );
            }
            Ok(Err(_)) | Err(_) => {
                return error(
                    ErrorCode::Unavailable,
                    "the vote store did not answer in time; retry",
                );
            }
        };
        let s =
            |item: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
             k: &str| { item.get(k).and_then(|v| v.as_s().ok()).cloned() };
        match item {
            Some(item) => json(
                200,
                &serde_json::json!({"voted": true, "option": s(&item, "option"), "receipt": s(&item, "receipt")}),
            ),
            None => json(200, &serde_json::json!({"voted": false})),
        }
    }

    /// The voter a request's bearer token speaks for, or the `401` to answer (DESIGN §4.2).
    fn voter<B>(
        &self,
        req: &Request<B>,
        now_ms: u64,
    ) -> Result<votes_core::VoterId, Box<Response<BoxBody>>> {
        match bearer(req).map(|t| token::verify(&self.shared.token_keys, t, now_ms / 1000)) {
            None => Err(Box::new(error(
                ErrorCode::Unauthorized,
                "a bearer token is required",
            ))),
            Some(Err(e)) => Err(Box::new(error(e.code(), &e.message()))),
            Some(Ok(v)) => Ok(v),
        }
    }

    /// An election voters may see (drafts are not public).
    fn visible_election(&self, id: &str) -> Option<Election> {
        self.elections
            .borrow()
            .find(id)
            .filter(|e| e.state != ElectionState::Draft)
            .cloned()
    }

    fn challenge<B>(&self, id: &str, req: &Request<B>) -> Response<BoxBody> {
        let voter = match self.voter(req, unix_ms()) {
            Ok(v) => v,
            Err(resp) => return *resp,
        };
        let Some(election) = self.visible_election(id) else {
            return error(ErrorCode::NotFound, "no such election");
        };
        let expires_at =
            unix_ms() + u64::try_from(self.shared.challenge_ttl.as_millis()).unwrap_or(u64::MAX);
        let challenge = pow::issue(
            &self.shared.pow_key,
            &election.id,
            voter,
            expires_at,
            election.pow_difficulty,
        );
        json(
            200,
            &serde_json::json!({"challenge": challenge, "difficulty": election.pow_difficulty, "expires_at": expires_at}),
        )
    }

    /// POST /v1/elections/{id}/votes: the checks in the order the contract implies, then the
    /// shard; `202` only once the vote's transaction committed.
    async fn vote(&self, id: &str, req: Request<RequestBody>) -> Response<BoxBody> {
        let now = unix_ms();
        let voter = match self.voter(&req, now) {
            Ok(v) => v,
            Err(resp) => return *resp,
        };
        if !is_json(&req) {
            return error(
                ErrorCode::UnsupportedMediaType,
                "the body must be application/json",
            );
        }
        // A body trickled in byte by byte must not hold the connection's slot forever. Most
        // bodies arrived with their headers: those are read without arming a timer.
        let mut read = Box::pin(read_body_limited(req.into_body(), VOTE_BODY_MAX));
        let read = match futures_lite::future::poll_once(&mut read).await {
            Some(read) => read,
            None => {
                let waited = glommio::timer::timeout(BODY_TIMEOUT, async { Ok(read.await) });
                let Ok(read) = waited.await else {
                    return error(ErrorCode::InvalidRequest, "the body did not arrive in time");
                };
                read
            }
        };
        let body = match read {
            Ok(b) => b,
            Err(BodyLimitError::TooLarge { limit }) => {
                return error(
                    ErrorCode::TooLarge,
                    &format!("the body is larger than {limit} bytes"),
                );
            }
            Err(BodyLimitError::Broken(e)) => {
                return error(
                    ErrorCode::InvalidRequest,
                    &format!("the body could not be read: {e}"),
                );
            }
        };
        let body = match VoteBody::parse(&body) {
            Ok(b) => b,
            Err(e) => return error(e.code(), &e.message()),
        };
        // Checked under a borrow of this core's elections: only the id leaves it.
        let election_id = {
            let elections = self.elections.borrow();
            let Some(election) = elections
                .find(id)
                .filter(|e| e.state != ElectionState::Draft)
            else {
                return error(ErrorCode::NotFound, "no such election");
            };
            if election.state != ElectionState::Open {
                return error(
                    ErrorCode::ElectionNotOpen,
                    &format!("the election is {}", election.state.as_str()),
                );
            }
            if !election.has_option(&body.option) {
                return error(
                    ErrorCode::InvalidOption,
                    &format!("{} is not an option of this election", body.option),
                );
            }
            if election.pow_difficulty > 0 {
                let Some(solution) = &body.pow else {
                    return error(
                        ErrorCode::ChallengeRequired,
                        "this election requires a solved challenge (GET …/challenge)",
                    );
                };
                if let Err(e) = pow::verify(
                    &self.shared.pow_key,
                    &solution.challenge,
                    &solution.nonce,
                    &election.id,
                    voter,
                    election.pow_difficulty,
                    now,
                ) {
                    return error(ErrorCode::ChallengeFailed, &e.to_string());
                }
            }
            election.id.clone()
        };
        self.submit(election_id, voter, body.option, now).await
    }

    async fn submit(
        &self,
        election: ElectionId,
        voter: votes_core::VoterId,
        option: OptionId,
        now: u64,
    ) -> Response<BoxBody> {
        let partition = partition_of(voter, self.shared.partitions);
        let intent = VoteIntent {
            election,
            voter,
            option,
            received_at_ms: now,
            nonce: rand::random(),
        };
        // The receipt is the leaf of this intent: one copy travels, this one stays for it.
        let vote = intent.clone();
        let (_, map) = self.fleet.map();
        let handed = std::time::Instant::now();
        let answer = match route(&map, &self.shared.node, self.mesh.cores(), partition) {
            Route::Local { core } => match self.deliver(core, partition, vote) {
                Ok(rx) => {
                    let a = rx.await;
                    self.metrics.answered(false, handed.elapsed());
                    a.map_err(|_| "the vote's shard stopped before answering")
                }
                Err(why) => return error(ErrorCode::Unavailable, why),
            },
            Route::Remote { node, internal } => {
                let Some(forwarder) = &self.forwarder else {
                    return error(
                        ErrorCode::Unavailable,
                        "another node owns this vote's partition and this node cannot forward",
                    );
                };
                let vote = votes_core::forward::ForwardedVote {
                    id: 0,
                    partition,
                    vote,
                };
                match forwarder.forward(&node, internal, vote) {
                    Ok(rx) => {
                        let a = rx.await;
                        self.metrics.answered(true, handed.elapsed());
                        a.map_err(|_| "the link to the vote's owner closed before answering")
                    }
                    Err(refused) => {
                        return error(
                            ErrorCode::Unavailable,
                            &format!("the vote's owner cannot be reached: {refused}"),
                        );
                    }
                }
            }
            Route::NoOwner => {
                return error(
                    ErrorCode::Unavailable,
                    "no node owns this vote's partition right now (the fleet is rebalancing)",
                );
            }
        };
        let answer = match answer {
            Ok(a) => a,
            Err(why) => return error(ErrorCode::Unavailable, why),
        };
        match answer {
            VoteOutcome::Accepted { partition, offset } => {
                let leaf = Leaf::of(&self.shared.audit_key, intent, partition, offset);
                // The contract's 202 body, written directly: hex and integers need no escaping.
                let body = format!(
                    r#"{{"status":"accepted","receipt":"{}","partition":{partition},"offset":{offset}}}"#,
                    leaf.receipt_hex()
                );
                raw_json(202, body.into_bytes())
            }
            VoteOutcome::Rejected(ErrorCode::AlreadyVoted) => error(
                ErrorCode::AlreadyVoted,
                "this voter has already voted in this election",
            ),
            VoteOutcome::Rejected(code) => error(code, "the vote could not be recorded now; retry"),
        }
    }

    /// A vote another node forwarded here: it passed that node's edge checks; this node only
    /// checks that the vote is routed right and hands it to its shard. Never forwarded again
    /// (a map that moved on answers 503 and the voter retries), so votes cannot loop.
    async fn forwarded(&self, v: votes_core::forward::ForwardedVote) -> VoteOutcome {
        if v.partition != partition_of(v.vote.voter, self.shared.partitions) {
            return VoteOutcome::Rejected(ErrorCode::InvalidRequest);
        }
        let (_, map) = self.fleet.map();
        let Route::Local { core } = route(&map, &self.shared.node, self.mesh.cores(), v.partition)
        else {
            return VoteOutcome::Rejected(ErrorCode::Unavailable);
        };
        match self.deliver(core, v.partition, v.vote) {
            Ok(rx) => rx
                .await
                .unwrap_or(VoteOutcome::Rejected(ErrorCode::Unavailable)),
            Err(_) => VoteOutcome::Rejected(ErrorCode::Unavailable),
        }
    }

    /// Hands `req` to the shard of `partition` on `core` of this node (this one or another
    /// through the mesh).
    pub fn deliver(
        &self,
        core: usize,
        partition: u32,
        vote: VoteIntent,
    ) -> Result<votes_net::ReplyRx<VoteOutcome>, &'static str> {
        let (tx, rx) = reply_channel();
        if core == self.core {
            self.shards.submit(partition, vote, tx);
        } else if let Err(e) = self.mesh.try_send(
            core,
            CoreMsg::Vote {
                partition,
                vote,
                reply: tx,
            },
        ) {
            return Err(if matches!(e, SendError::Full(_)) {
                "the shard's core is saturated"
            } else {
                "the shard's core is gone"
            });
        }
        Ok(rx)
    }

    /// Ready when this node has joined the fleet with every core, every partition has an
    /// owner, and every partition this node owns has recovered: then any vote can be taken.
    pub fn ready(&self) -> bool {
        if !self.shared.roles.ingest {
            return true;
        }
        let (generation, map) = self.fleet.map();
        let fresh = self
            .shared
            .fleet
            .age()
            .is_some_and(|age| age < self.shared.fleet_stale_after);
        generation > 0
            && fresh
            && map.nodes.get(&self.shared.node).copied() == Some(self.mesh.cores())
            && map.owners.iter().enumerate().all(|(p, owner)| match owner {
                None => false,
                Some(o) if o.node == self.shared.node => {
                    self.shared.metrics.partitions[p].state()
                        == Some(votes_tally::shard::ShardState::Active)
                }
                Some(_) => true,
            })
    }

    /// The fleet map as JSON (`GET /admin/v1/fleet`).
    fn admin_fleet(&self) -> Response<BoxBody> {
        let (generation, map) = self.fleet.map();
        let owners: Vec<serde_json::Value> = map
            .owners
            .iter()
            .enumerate()
            .map(|(p, o)| match o {
                Some(o) => serde_json::json!({"partition": p, "node": o.node, "core": o.core, "internal": o.internal.to_string()}),
                None => serde_json::json!({"partition": p, "node": null}),
            })
            .collect();
        json(
            200,
            &serde_json::json!({
                "node": self.shared.node,
                "generation": generation,
                "members": map.members,
                "nodes": map.nodes,
                "partitions": owners,
            }),
        )
    }

    async fn admin(self: Rc<Self>, req: Request<RequestBody>) -> Response<BoxBody> {
        let path = req.uri().path().to_owned();
        let segs = segments(&path);
        let method = req.method().clone();
        let route = Admin::of(&segs);
        if let Some(open) = route
            && open.is_open()
            && method == Method::GET
        {
            return match open {
                Admin::Healthz => json(200, &serde_json::json!({"status": "ok"})),
                Admin::Page => page("admin.html"),
                Admin::Static { name } => page(name),
                Admin::OpenApi => reply::raw_json_static(200, super::openapi::admin()),
                _ => unreachable!("not an open route: {open:?}"),
            };
        }
        // Anything else, even a path that names nothing, is for the operator only.
        let authorized = match (&self.shared.admin_token, bearer(&req)) {
            (Some(want), Some(got)) => constant_time_eq(want.as_bytes(), got.as_bytes()),
            _ => false,
        };
        if !authorized {
            return error(ErrorCode::Unauthorized, "the admin token is required");
        }
        let Some(route) = route else {
            return error(ErrorCode::NotFound, "no such resource");
        };
        if !route.methods().contains(&method) {
            return method_not_allowed(route.methods());
        }
        // `If-Match: <version>` (quotes allowed): the version a change is based on.
        let if_match = match req.headers().get(votes_net::http::header::IF_MATCH) {
            None => None,
            Some(v) => match v
                .to_str()
                .ok()
                .map(|v| v.trim().trim_matches('"'))
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(version) => Some(version),
                None => {
                    return error(
                        ErrorCode::InvalidRequest,
                        "If-Match takes the election's version, a number",
                    );
                }
            },
        };
        match route {
            // Behind the token: the figures say who is voting how fast, and cost a render.
            Admin::Metrics => self.metrics_page(),
            Admin::Elections if method == Method::POST => self.admin_create(req).await,
            Admin::Elections => self.admin_list(),
            Admin::Stats => self.admin_stats(),
            Admin::Fleet => self.admin_fleet(),
            Admin::Transition { id, to } => {
                let to = match to {
                    Transition::Open => ElectionState::Open,
                    Transition::Close => ElectionState::Closed,
                };
                self.admin_transition(id, to, if_match).await
            }
            Admin::Election { id } => {
                let id = id.to_string();
                self.admin_patch(&id, req, if_match).await
            }
            Admin::Healthz | Admin::Page | Admin::Static { .. } | Admin::OpenApi => {
                unreachable!("answered before the token check")
            }
        }
    }

    fn metrics_page(&self) -> Response<BoxBody> {
        use std::fmt::Write;
        let mut extra = String::new();
        let _ = writeln!(
            extra,
            "# HELP votes_waiting_votes Votes waiting for their commit on this core's shards."
        );
        let _ = writeln!(
            extra,
            "# TYPE votes_waiting_votes gauge\nvotes_waiting_votes{{core=\"{}\"}} {}",
            self.core,
            self.shards.waiting()
        );
        let (engine, window) = self.shards.engine_stats();
        let _ = writeln!(
            extra,
            "# HELP votes_commit_window_seconds How long this core's oldest queued vote may wait before its transaction starts (pacing).\n# TYPE votes_commit_window_seconds gauge\nvotes_commit_window_seconds{{core=\"{}\"}} {}",
            self.core,
            window.as_secs_f64()
        );
        let _ = writeln!(
            extra,
            "# HELP votes_producer_opens_total Times this core opened its transactional producer (start, unknown outcome, fence).\n# TYPE votes_producer_opens_total counter\nvotes_producer_opens_total{{core=\"{}\"}} {}",
            self.core, engine.producer_opens
        );
        let _ = writeln!(
            extra,
            "# HELP votes_recoveries_total Partition recoveries this core completed.\n# TYPE votes_recoveries_total counter\nvotes_recoveries_total{{core=\"{}\"}} {}",
            self.core, engine.recoveries
        );
        let _ = writeln!(
            extra,
            "# HELP votes_ready Whether every shard of the node accepts votes.\n# TYPE votes_ready gauge"
        );
        let _ = writeln!(extra, "votes_ready {}", u8::from(self.ready()));
        let _ = writeln!(
            extra,
            "# HELP votes_ownership_generation Changes of the fleet map this node has seen."
        );
        let _ = writeln!(
            extra,
            "# TYPE votes_ownership_generation gauge\nvotes_ownership_generation {}",
            self.shared.fleet.generation()
        );
        if let Some(l) = &self.shared.link_stats {
            use std::sync::atomic::Ordering::Relaxed;
            let figures = [
                (
                    "votes_redis_published_total",
                    "counter",
                    "Tally writes Redis applied.",
                    l.published.load(Relaxed),
                ),
                (
                    "votes_redis_stale_total",
                    "counter",
                    "Tally writes Redis ignored as older than what it held.",
                    l.stale.load(Relaxed),
                ),
                (
                    "votes_redis_errors_total",
                    "counter",
                    "Failed Redis connections or pipelines.",
                    l.errors.load(Relaxed),
                ),
                (
                    "votes_redis_pending",
                    "gauge",
                    "Tallies waiting for Redis.",
                    l.pending.load(Relaxed),
                ),
                (
                    "votes_redis_lag_ms",
                    "gauge",
                    "Age of the oldest tally waiting for Redis.",
                    l.lag_ms.load(Relaxed),
                ),
                (
                    "votes_redis_connected",
                    "gauge",
                    "Whether the link to Redis is up.",
                    u64::from(l.connected.load(Relaxed)),
                ),
                (
                    "votes_results_polls_total",
                    "counter",
                    "Reads of the results from Redis.",
                    l.polls.load(Relaxed),
                ),
            ];
            for (name, kind, help, v) in figures {
                let _ = writeln!(
                    extra,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
                );
            }
        }
        reply::text(
            200,
            "text/plain; version=0.0.4",
            self.shared.metrics.render(&extra),
        )
    }

    /// Live operational figures for the dashboard: the same numbers as `/metrics`, as JSON.
    fn admin_stats(&self) -> Response<BoxBody> {
        let m = &self.shared.metrics;
        let c = m.merged();
        let ms = |q: f64| c.commit_latency_us.value_at_quantile(q) as f64 / 1000.0;
        let redis = self.shared.link_stats.as_ref().map(|l| {
            use std::sync::atomic::Ordering::Relaxed;
            serde_json::json!({
                "connected": l.connected.load(Relaxed),
                "published": l.published.load(Relaxed),
                "errors": l.errors.load(Relaxed),
                "pending": l.pending.load(Relaxed),
                "lag_ms": l.lag_ms.load(Relaxed),
                "polls": l.polls.load(Relaxed),
            })
        });
        json(
            200,
            &serde_json::json!({
                "node": self.shared.node,
                "at_ms": unix_ms(),
                "uptime_s": self.shared.started.elapsed().as_secs(),
                "cores": self.mesh.cores(),
                "partitions": self.shared.partitions,
                "owned_partitions": m.owned_partitions(),
                "ready": self.ready(),
                "votes": c.votes,
                "batches": c.batches,
                "commit_latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": c.commit_latency_us.max() as f64 / 1000.0},
                "batch_size_mean": c.batch_size.mean(),
                "sse_subscribers": m.sse_subscribers(),
                "redis": redis,
            }),
        )
    }

    fn admin_list(&self) -> Response<BoxBody> {
        let totals = self.shared.metrics.election_totals();
        let view = self.elections.borrow();
        let list: Vec<serde_json::Value> = view
            .sorted()
            .into_iter()
            .map(|e| {
                let counts = totals.get(&e.id).cloned().unwrap_or_default();
                let total: u64 = counts.values().sum();
                serde_json::json!({
                    "id": e.id, "title": e.title, "state": e.state, "options": e.options,
                    "pow_difficulty": e.pow_difficulty, "version": e.version,
                    "live": {"totals": counts, "total": total}
                })
            })
            .collect();
        json(200, &list)
    }

    async fn admin_body<T: serde::de::DeserializeOwned>(
        req: Request<RequestBody>,
    ) -> Result<T, Response<BoxBody>> {
        if !is_json(&req) {
            return Err(error(
                ErrorCode::UnsupportedMediaType,
                "the body must be application/json",
            ));
        }
        let bytes = read_body_limited(req.into_body(), 16 * 1024)
            .await
            .map_err(|e| match e {
                BodyLimitError::TooLarge { limit } => error(
                    ErrorCode::TooLarge,
                    &format!("the body is larger than {limit} bytes"),
                ),
                BodyLimitError::Broken(e) => error(
                    ErrorCode::InvalidRequest,
                    &format!("the body could not be read: {e}"),
                ),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            error(
                ErrorCode::InvalidRequest,
                &format!("invalid JSON body: {e}"),
            )
        })
    }

    async fn admin_create(&self, req: Request<RequestBody>) -> Response<BoxBody> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Create {
            id: ElectionId,
            title: String,
            options: Vec<ElectionOption>,
            #[serde(default, deserialize_with = "small_integer")]
            pow_difficulty: u8,
        }
        let c: Create = match Self::admin_body(req).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let e = Election {
            id: c.id,
            title: c.title,
            state: ElectionState::Draft,
            options: c.options,
            pow_difficulty: c.pow_difficulty,
            version: 1,
            updated_at_ms: unix_ms(),
        };
        if let Err(why) = e.validate() {
            return error(ErrorCode::InvalidRequest, &why.to_string());
        }
        let id = e.id.clone();
        self.update(id, None, 201, move |current| match current {
            Some(_) => Err(UpdateError::Conflict(
                "an election with this id exists".into(),
            )),
            None => Ok(Some(e.clone())),
        })
        .await
    }

    async fn admin_transition(
        &self,
        id: &str,
        next: ElectionState,
        if_match: Option<u64>,
    ) -> Response<BoxBody> {
        let Ok(id) = ElectionId::new(id) else {
            return error(ErrorCode::NotFound, "no such election");
        };
        let at = unix_ms();
        let resp = self
            .update(id.clone(), if_match, 200, move |current| {
                let current = current.ok_or(UpdateError::NotFound)?;
                current
                    .transition(next, at)
                    .map(Some)
                    .map_err(|why| UpdateError::Conflict(why.to_string()))
            })
            .await;
        if resp.status() == 200
            && next == ElectionState::Closed
            && let Some(recounter) = &self.shared.recount
            && let Some(e) = self.elections.borrow().get(&id).cloned()
        {
            recounter.start(e);
        }
        resp
    }

    async fn admin_patch(
        &self,
        id: &str,
        req: Request<RequestBody>,
        if_match: Option<u64>,
    ) -> Response<BoxBody> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Patch {
            #[serde(deserialize_with = "small_integer")]
            pow_difficulty: u8,
        }
        let p: Patch = match Self::admin_body(req).await {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let Ok(id) = ElectionId::new(id) else {
            return error(ErrorCode::NotFound, "no such election");
        };
        let at = unix_ms();
        self.update(id, if_match, 200, move |current| {
            let current = current.ok_or(UpdateError::NotFound)?;
            let e = Election {
                pow_difficulty: p.pow_difficulty,
                version: current.version + 1,
                updated_at_ms: at,
                ..current.clone()
            };
            e.validate()
                .map(|()| Some(e))
                .map_err(|why| UpdateError::Conflict(why.to_string()))
        })
        .await
    }

    /// Commits a change of one election through the deployment's one elections writer (off the
    /// reactor): compare-and-set on the election as the topic holds it, so concurrent admin
    /// writes on any node never lose one another (DESIGN §7). `if_match`: the version the
    /// caller based its change on (`If-Match`); a stale one changes nothing. Then applies the
    /// new state here and on every other core, so the admin's next request already sees it.
    async fn update(
        &self,
        id: ElectionId,
        if_match: Option<u64>,
        status: u16,
        change: impl Fn(Option<&Election>) -> Result<Option<Election>, UpdateError> + Send + 'static,
    ) -> Response<BoxBody> {
        let writer = self.shared.elections_writer.clone();
        let Ok(_turn) = self.admin_writes.acquire_permit(1).await else {
            return error(ErrorCode::Unavailable, "the core is shutting down");
        };
        let written = self
            .blocking
            .run(move || {
                writer.update(&id, |current| {
                    if let (Some(expected), Some(c)) = (if_match, current)
                        && c.version != expected
                    {
                        return Err(UpdateError::Conflict(format!(
                            "the election is at version {}, not {expected}",
                            c.version
                        )));
                    }
                    change(current)
                })
            })
            .await;
        let e = match written {
            Ok(Ok(e)) => e,
            Ok(Err(UpdateError::Conflict(why))) => return custom_error(409, "conflict", &why),
            Ok(Err(UpdateError::NotFound)) => {
                return error(ErrorCode::NotFound, "no such election");
            }
            Ok(Err(why)) => {
                return error(
                    ErrorCode::Unavailable,
                    &format!("the elections topic refused the change: {why}"),
                );
            }
            Err(why) => return error(ErrorCode::Unavailable, &why.to_string()),
        };
        broadcast_election(
            self.core,
            &self.mesh,
            &self.elections,
            &self.shards,
            e.clone(),
        )
        .await;
        // The admin sees the version its write made: the base of its next `If-Match`.
        let mut body =
            serde_json::to_value(ElectionView::from(&e)).expect("an election serializes");
        body["version"] = e.version.into();
        json(status, &body)
    }
}

/// Applies `e` on this core and sends it to every other core.
pub async fn broadcast_election(
    core: usize,
    mesh: &Mesh<CoreMsg>,
    view: &RefCell<ElectionsView>,
    shards: &Rc<ShardHost>,
    e: Election,
) {
    view.borrow_mut().apply(e.clone());
    shards.election_changed(&e);
    for other in (0..mesh.cores()).filter(|c| *c != core) {
        // Election changes are rare; waiting for room keeps every core's copy complete.
        if mesh
            .send(other, CoreMsg::Election(e.clone()))
            .await
            .is_err()
        {
            tracing::warn!(core = other, "core gone; election change not delivered");
        }
    }
}

/// An embedded page or asset, or 404.
fn page(name: &str) -> Response<BoxBody> {
    web::file(name).unwrap_or_else(|| error(ErrorCode::NotFound, "no such resource"))
}

/// The metric label of an answer to a vote request.
fn outcome_name(status: u16, resp: &Response<BoxBody>) -> &'static str {
    if status == 202 {
        return "accepted";
    }
    // Every error answer of the contract carries its code (see `reply::error`).
    resp.extensions()
        .get::<ErrorCode>()
        .map_or("other", |c| c.as_str())
}

/// A small JSON integer, written `17` or `17.0` (JSON Schema's "integer" is both; JavaScript
/// clients cannot tell them apart).
fn small_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    use serde::Deserialize;
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=255.0).contains(f))
                .map(|f| f as u64)
        })
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not an integer from 0 to 255")))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
