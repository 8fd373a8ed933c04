//! The vote path: a vote's checks at the edge, its `VoteIntent` routed to the core that owns
//! its partition (the mesh) or to the node that does (the forwarding link), the owner's side of
//! a forwarded vote, and the `202` built from the outcome.

use super::*;
use votes_core::OwnerVerdict;

/// Longest time a vote's body may take to arrive once its head has.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the owner holds a forwarded vote whose election its view does not know open yet.
/// Such a vote may be honest: the election opened through another node a moment ago, and this
/// node hears of it from the elections topic (core 0 polls it every 250 ms, then the mesh hands
/// it to every core; a node restarted after a kill -9 reads the topic to its end before it
/// serves). Well under a second normally, a few seconds while the broker elects a leader;
/// this bound covers that, stays far below the edge's answer stall (30 s) and a voter's
/// patience, and still answers a peer naming an election that is not open within seconds.
pub const FORWARD_HOLD: Duration = Duration::from_secs(5);

/// Forwarded votes one core holds at once for its view. Each is a task, a vote and a reply of
/// a few hundred bytes; an opening burst forwarded to a node that hears of it late can exceed
/// it, and those votes answer `503` with `Retry-After` (the voter retries), as does a peer
/// flooding this core with votes for elections that never open.
pub const FORWARD_HELD_MAX: usize = 4096;

/// Counts a held vote for as long as it is held.
struct Held<'a>(&'a std::cell::Cell<usize>);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

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

/// The metric label of an answer to a vote request.
pub(super) fn outcome_name(status: u16, resp: &Response<BoxBody>) -> &'static str {
    if status == 202 {
        return "accepted";
    }
    // Every error answer of the contract carries its code (see `reply::error`).
    resp.extensions()
        .get::<ErrorCode>()
        .map_or("other", |c| c.as_str())
}

impl CoreApp {
    /// POST /v1/elections/{id}/votes: the checks in the order the contract implies, then the
    /// shard; `202` only once the vote's transaction committed.
    pub(super) async fn vote(&self, id: &str, req: Request<RequestBody>) -> Response<BoxBody> {
        let now = unix_ms();
        let voter = match self.voter(&req, now) {
            Ok(v) => v,
            Err(resp) => return *resp,
        };
        let body = match read_vote_body(req).await {
            Ok(b) => b,
            Err(resp) => return *resp,
        };
        let body = match VoteBody::parse(&body) {
            Ok(b) => b,
            Err(e) => return error(e.code(), &e.message()),
        };
        let election_id = match self.election_taking(id, &body, voter, now) {
            Ok(id) => id,
            Err(resp) => return *resp,
        };
        self.submit(election_id, voter, body.option, now).await
    }

    /// The election `id` as this core sees it, when it takes `body`'s vote from `voter` now:
    /// open, the option its own, the proof of work solved when it asks for one. Checked under
    /// a borrow of this core's elections: only the id leaves it.
    fn election_taking(
        &self,
        id: &str,
        body: &VoteBody,
        voter: votes_core::VoterId,
        now: u64,
    ) -> Result<ElectionId, Box<Response<BoxBody>>> {
        let elections = self.elections.borrow();
        let Some(election) = elections
            .find(id)
            .filter(|e| e.state != ElectionState::Draft)
        else {
            return Err(Box::new(error(ErrorCode::NotFound, "no such election")));
        };
        if election.state != ElectionState::Open {
            return Err(Box::new(error(
                ErrorCode::ElectionNotOpen,
                &format!("the election is {}", election.state.as_str()),
            )));
        }
        if !election.has_option(&body.option) {
            return Err(Box::new(error(
                ErrorCode::InvalidOption,
                &format!("{} is not an option of this election", body.option),
            )));
        }
        if election.pow_difficulty > 0 {
            let Some(solution) = &body.pow else {
                return Err(Box::new(error(
                    ErrorCode::ChallengeRequired,
                    "this election requires a solved challenge (GET …/challenge)",
                )));
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
                return Err(Box::new(error(ErrorCode::ChallengeFailed, &e.to_string())));
            }
        }
        Ok(election.id.clone())
    }

    pub(super) async fn submit(
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
        let answer = match self.hand_over(partition, vote).await {
            Ok(a) => a,
            Err(resp) => return *resp,
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
            // The owner's own checks (docs/design.md §7): its view may know better than ours.
            VoteOutcome::Rejected(code @ ErrorCode::NotFound) => error(code, "no such election"),
            VoteOutcome::Rejected(code @ ErrorCode::ElectionNotOpen) => {
                error(code, "the election is not open")
            }
            VoteOutcome::Rejected(code @ ErrorCode::InvalidOption) => {
                error(code, "this is not an option of this election")
            }
            VoteOutcome::Rejected(code) => error(code, "the vote could not be recorded now; retry"),
        }
    }

    /// Hands the vote to the core or node that owns its partition and waits for the answer:
    /// after the commit, or a refusal. A `503` when the owner cannot be reached.
    async fn hand_over(
        &self,
        partition: u32,
        vote: VoteIntent,
    ) -> Result<VoteOutcome, Box<Response<BoxBody>>> {
        let (_, map) = self.fleet.map();
        let handed = std::time::Instant::now();
        let answer = match route(&map, &self.shared.node, self.mesh.cores(), partition) {
            Route::Local { core } => match self.deliver(core, partition, vote) {
                Ok(rx) => {
                    let a = rx.await;
                    self.metrics.answered(false, handed.elapsed());
                    a.map_err(|_| "the vote's shard stopped before answering")
                }
                Err(why) => return Err(Box::new(error(ErrorCode::Unavailable, why))),
            },
            Route::Remote { node, internal } => {
                let Some(forwarder) = &self.forwarder else {
                    return Err(Box::new(error(
                        ErrorCode::Unavailable,
                        "another node owns this vote's partition and this node cannot forward",
                    )));
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
                        return Err(Box::new(error(
                            ErrorCode::Unavailable,
                            &format!("the vote's owner cannot be reached: {refused}"),
                        )));
                    }
                }
            }
            Route::NoOwner => {
                return Err(Box::new(error(
                    ErrorCode::Unavailable,
                    "no node owns this vote's partition right now (the fleet is rebalancing)",
                )));
            }
        };
        answer.map_err(|why| Box::new(error(ErrorCode::Unavailable, why)))
    }

    /// A vote another node forwarded here: it passed that node's edge checks, but the peer's
    /// word is not taken for them (docs/design.md §7). This node checks that the vote is routed
    /// right (its partition is the voter's and this node owns it) and that its election is open
    /// with that option on this node's view, then hands it to its shard. Never forwarded again
    /// (a map that moved on answers 503 and the voter retries), so votes cannot loop.
    pub(super) async fn forwarded(&self, v: votes_core::forward::ForwardedVote) -> VoteOutcome {
        if v.partition != partition_of(v.vote.voter, self.shared.partitions) {
            return VoteOutcome::Rejected(ErrorCode::InvalidRequest);
        }
        let (_, map) = self.fleet.map();
        let Route::Local { core } = route(&map, &self.shared.node, self.mesh.cores(), v.partition)
        else {
            return VoteOutcome::Rejected(ErrorCode::Unavailable);
        };
        if let OwnerVerdict::Refuse(code) = self.owner_verdict(&v.vote).await {
            return VoteOutcome::Rejected(code);
        }
        match self.deliver(core, v.partition, v.vote) {
            Ok(rx) => rx
                .await
                .unwrap_or(VoteOutcome::Rejected(ErrorCode::Unavailable)),
            Err(_) => VoteOutcome::Rejected(ErrorCode::Unavailable),
        }
    }

    /// Whether this node's view takes `vote`'s election and option. An election the view
    /// does not know open yet is waited for, up to the hold bound, on the view's changes:
    /// refusing it at once would turn away the votes of an election opened through another
    /// node a moment ago (240ca56); taking it would let any peer commit votes for elections
    /// that do not exist.
    async fn owner_verdict(&self, vote: &VoteIntent) -> OwnerVerdict {
        let judge = || {
            let elections = self.elections.borrow();
            let verdict = OwnerVerdict::of(elections.find(vote.election.as_str()), &vote.option);
            (verdict, elections.changes())
        };
        let (verdict, mut seen) = judge();
        if verdict != OwnerVerdict::NotYet {
            return verdict;
        }
        let stats = self.forwarder.as_ref().map(|f| f.stats.clone());
        let count = |pick: fn(&votes_net::forward::ForwardStats) -> &std::cell::Cell<u64>| {
            if let Some(s) = &stats {
                let c = pick(s);
                c.set(c.get() + 1);
            }
        };
        if self.held.get() >= FORWARD_HELD_MAX {
            count(|s| &s.hold_full);
            return OwnerVerdict::Refuse(ErrorCode::Unavailable);
        }
        self.held.set(self.held.get() + 1);
        let _held = Held(&self.held);
        count(|s| &s.held);
        let mut deadline = std::pin::pin!(glommio::timer::sleep(self.shared.forward_hold));
        loop {
            let moved = futures_lite::future::or(
                async {
                    ElectionsView::moved(&self.elections, seen).await;
                    true
                },
                async {
                    (&mut deadline).await;
                    false
                },
            )
            .await;
            let (verdict, now) = judge();
            seen = now;
            if verdict != OwnerVerdict::NotYet {
                return verdict;
            }
            if !moved {
                count(|s| &s.held_refused);
                tracing::debug!(election = %vote.election, "a forwarded vote's election is still not open here; refused");
                return verdict.at_deadline();
            }
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
}

/// The vote's body, bounded in size; a body trickled in byte by byte must not hold the
/// connection's slot forever, but most bodies arrived with their headers: those are read
/// without arming a timer.
async fn read_vote_body(
    req: Request<RequestBody>,
) -> Result<votes_net::bytes::Bytes, Box<Response<BoxBody>>> {
    if !is_json(&req) {
        return Err(Box::new(error(
            ErrorCode::UnsupportedMediaType,
            "the body must be application/json",
        )));
    }
    let mut read = Box::pin(read_body_limited(req.into_body(), VOTE_BODY_MAX));
    let read = match futures_lite::future::poll_once(&mut read).await {
        Some(read) => read,
        None => {
            let waited = glommio::timer::timeout(BODY_TIMEOUT, async { Ok(read.await) });
            let Ok(read) = waited.await else {
                return Err(Box::new(error(
                    ErrorCode::InvalidRequest,
                    "the body did not arrive in time",
                )));
            };
            read
        }
    };
    match read {
        Ok(b) => Ok(b),
        Err(BodyLimitError::TooLarge { limit }) => Err(Box::new(error(
            ErrorCode::TooLarge,
            &format!("the body is larger than {limit} bytes"),
        ))),
        Err(BodyLimitError::Broken(e)) => Err(Box::new(error(
            ErrorCode::InvalidRequest,
            &format!("the body could not be read: {e}"),
        ))),
    }
}
