//! The admin API (docs/design.md §4.3): its route table's dispatch behind the token, elections created
//! and moved through their life cycle (compare-and-set on their version), the stats, the fleet
//! view, the Prometheus page, and the recount a close starts.

use super::*;

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

/// Whether an election in state `now` already is what a transition to `next` asks for: closing
/// a closed or final one (a close is idempotent, docs/design.md §7: an operator retrying a
/// close whose answer was lost must not be told it failed). Opening an open election stays a
/// conflict: nothing about it is lost, and the operator learns the election was open.
fn already(now: ElectionState, next: ElectionState) -> bool {
    next == ElectionState::Closed && matches!(now, ElectionState::Closed | ElectionState::Final)
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

/// A small JSON integer, written `17` or `17.0` (JSON Schema's "integer" is both; JavaScript
/// clients cannot tell them apart).
pub(super) fn small_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
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

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl CoreApp {
    /// The fleet map as JSON (`GET /admin/v1/fleet`).
    pub(super) fn admin_fleet(&self) -> Response<BoxBody> {
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

    pub(super) async fn admin(self: Rc<Self>, req: Request<RequestBody>) -> Response<BoxBody> {
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
                Admin::OpenApi => reply::raw_json_static(200, super::super::openapi::admin()),
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

    /// `GET /metrics`: the node's families, then the Redis link's and the node's own. Long
    /// because the link's families are listed here one entry each, as in `metrics.rs`.
    pub(super) fn metrics_page(&self) -> Response<BoxBody> {
        use crate::prom::{Exposition, Kind};
        use std::sync::atomic::Ordering::Relaxed;
        let mut page = Exposition::new();
        self.shared.metrics.render(&mut page);
        // This core's own figures: the core that answers the scrape, named in the label.
        let core: &[(&str, &dyn std::fmt::Display)] = &[("core", &self.core)];
        let (engine, window) = self.shards.engine_stats();
        page.family(
            "votes_waiting_votes",
            Kind::Gauge,
            "Votes waiting for their commit on the shards of the core that answered.",
        )
        .sample(core, self.shards.waiting());
        page.family(
            "votes_commit_window_seconds",
            Kind::Gauge,
            "How long the oldest queued vote of the core that answered may wait before its transaction starts (pacing).",
        )
        .sample(core, window.as_secs_f64());
        page.family(
            "votes_producer_opens_total",
            Kind::Counter,
            "Times the core that answered opened its transactional producer (start, unknown outcome, fence).",
        )
        .sample(core, engine.producer_opens);
        page.family(
            "votes_recoveries_total",
            Kind::Counter,
            "Partition recoveries the core that answered completed.",
        )
        .sample(core, engine.recoveries);
        page.single(
            "votes_ready",
            Kind::Gauge,
            "Whether every shard of the node accepts votes.",
            u8::from(self.ready()),
        );
        page.single(
            "votes_ownership_generation",
            Kind::Gauge,
            "Changes of the fleet map this node has seen.",
            self.shared.fleet.generation(),
        );
        if let Some(l) = &self.shared.link_stats {
            let figures = [
                (
                    "votes_redis_published_total",
                    Kind::Counter,
                    "Tally writes Redis applied.",
                    l.published.load(Relaxed),
                ),
                (
                    "votes_redis_stale_total",
                    Kind::Counter,
                    "Tally writes Redis ignored as older than what it held.",
                    l.stale.load(Relaxed),
                ),
                (
                    "votes_redis_errors_total",
                    Kind::Counter,
                    "Failed Redis connections or pipelines.",
                    l.errors.load(Relaxed),
                ),
                (
                    "votes_redis_pending",
                    Kind::Gauge,
                    "Tallies waiting for Redis.",
                    l.pending.load(Relaxed),
                ),
                (
                    "votes_redis_lag_ms",
                    Kind::Gauge,
                    "Age of the oldest tally waiting for Redis.",
                    l.lag_ms.load(Relaxed),
                ),
                (
                    "votes_redis_connected",
                    Kind::Gauge,
                    "Whether the link to Redis is up.",
                    u64::from(l.connected.load(Relaxed)),
                ),
                (
                    "votes_results_polls_total",
                    Kind::Counter,
                    "Reads of the results from Redis.",
                    l.polls.load(Relaxed),
                ),
            ];
            for (name, kind, help, v) in figures {
                page.single(name, kind, help, v);
            }
        }
        reply::text(200, "text/plain; version=0.0.4", page.into_string())
    }

    /// Live operational figures for the dashboard: the same numbers as `/metrics`, as JSON.
    pub(super) fn admin_stats(&self) -> Response<BoxBody> {
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

    pub(super) fn admin_list(&self) -> Response<BoxBody> {
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

    pub(super) async fn admin_body<T: serde::de::DeserializeOwned>(
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

    pub(super) async fn admin_create(&self, req: Request<RequestBody>) -> Response<BoxBody> {
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

    pub(super) async fn admin_transition(
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
                if already(current.state, next) {
                    // Nothing to write: the close already holds (a retried close, two
                    // operators closing at once), answered as the election stands.
                    return Ok(None);
                }
                current
                    .transition(next, at)
                    .map(Some)
                    .map_err(|why| UpdateError::Conflict(why.to_string()))
            })
            .await;
        // A repeated close of an election still `closed` starts its recount again: one whose
        // recount failed gets another try, and one running already is not started twice.
        if resp.status() == 200
            && next == ElectionState::Closed
            && let Some(recounter) = &self.shared.recount
            && let Some(e) = self.elections.borrow().get(&id).cloned()
            && e.state == ElectionState::Closed
        {
            recounter.start(e);
        }
        resp
    }

    pub(super) async fn admin_patch(
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
    /// writes on any node never lose one another (docs/design.md §7). `if_match`: the version the
    /// caller based its change on (`If-Match`); a stale one changes nothing. Then applies the
    /// new state here and on every other core, so the admin's next request already sees it.
    pub(super) async fn update(
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
