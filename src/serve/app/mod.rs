//! The per-core application: the voter API (docs/design.md §4.2) and the admin API (§4.3) on top of
//! the core's shards, its copy of the elections, and the mesh to the other cores.
//!
//! One room each: [`voter`] (the public routes but the vote), [`vote`] (the vote path: edge
//! checks, routing to the owning core or node, the owner's side of a forwarded vote, the
//! `202`), [`admin`] (the admin routes, the Prometheus page, the recount a close starts). Here:
//! what a core's app holds, what the node shares, the messages between cores, and readiness.

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
    App, AppRequest, AppResponse, BodyLimitError, BoxBody, ListenerKind, LocalBoxFuture, Mesh,
    RequestBody, SendError, read_body_limited, reply_channel,
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

mod admin;
mod vote;
mod voter;

pub use admin::{Recounter, broadcast_election};
use vote::outcome_name;
pub use vote::{FORWARD_HOLD, ForwardedVotes};
use voter::ElectionView;
pub use voter::JS_SAFE_INTEGER_MAX;

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

/// What this process serves (docs/design.md §4.1 `--roles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub results: bool,
    pub admin: bool,
}

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
    /// How long a forwarded vote waits for this node's view to know its election open
    /// (`vote::FORWARD_HOLD`; longer only in tests).
    pub forward_hold: Duration,
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
    /// This core's per-address and per-prefix limits (docs/design.md §4.1).
    pub limiter: RefCell<votes_net::RateLimiter>,
    /// DynamoDB lookups this core is waiting for (bounded by `LOOKUPS_MAX`).
    pub lookups: std::cell::Cell<usize>,
    /// Forwarded votes this core holds until its view knows their election (bounded by
    /// `vote::FORWARD_HELD_MAX`).
    pub held: std::cell::Cell<usize>,
    /// Admin writes take turns on this core (the node's elections writer serializes them
    /// anyway): one blocking slot, however many wait.
    pub admin_writes: glommio::sync::Semaphore,
    /// Stops this core's shard host. Fired after the HTTP connections drained, not when the
    /// shutdown starts: a vote in flight waits for its transaction, so the shards must go on
    /// committing and answering until the last request is answered.
    pub shards_stop: votes_net::LocalSignal,
}

/// The handle the reactor holds; requests clone the `Rc` so their futures own the app.
pub struct AppHandle(pub Rc<CoreApp>);

impl App for AppHandle {
    fn handle(&self, kind: ListenerKind, peer: SocketAddr, req: AppRequest) -> AppResponse {
        let app = self.0.clone();
        Box::pin(async move {
            // The handlers consume the app's `Rc`; the counters outlive them.
            let metrics = Rc::clone(&app.metrics);
            let resp = match kind {
                ListenerKind::Public => app.public(peer, req).await,
                ListenerKind::Admin => app.admin(req).await,
                ListenerKind::Internal => unreachable!("the internal listener does not speak HTTP"),
            };
            // Every answer of every route leaves the app here, so it is counted here once.
            metrics.responded(kind, resp.status().as_u16());
            resp
        })
    }

    fn shutdown(&self) -> LocalBoxFuture<'static, ()> {
        self.0.shards_stop.fire();
        Box::pin(async {})
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

impl CoreApp {
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
}

/// An embedded page or asset, or 404.
fn page(name: &str) -> Response<BoxBody> {
    web::file(name).unwrap_or_else(|| error(ErrorCode::NotFound, "no such resource"))
}
