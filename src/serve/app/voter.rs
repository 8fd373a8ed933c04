//! The voter API (docs/design.md §4.2) but the vote itself: the public route table's dispatch, the
//! elections, results and their streams, receipts, `/votes/me`, challenges, the development
//! sign-in, and the voter's token check the vote path shares.

use super::*;

/// Lifetime of a token from the development sign-in.
const DEV_LOGIN_TTL_S: u64 = 3600;

/// The largest integer a JSON number holds exactly in JavaScript (2^53 - 1): the development
/// sign-in takes voter ids as numbers up to it, or as decimal strings up to 2^64 - 1.
pub const JS_SAFE_INTEGER_MAX: u64 = (1 << 53) - 1;

/// Lookups (DynamoDB for `/votes/me`, the receipts index for a receipt) in flight per core;
/// beyond it they answer 503.
const LOOKUPS_MAX: usize = 256;

/// Longest wait for a lookup's answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The voter's view of an election (docs/design.md §4.2).
#[derive(serde::Serialize)]
pub(super) struct ElectionView<'a> {
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

impl CoreApp {
    pub(super) async fn public(
        self: Rc<Self>,
        peer: SocketAddr,
        req: Request<RequestBody>,
    ) -> Response<BoxBody> {
        let path = req.uri().path().to_owned();
        let segs = segments(&path);
        let method = req.method().clone();
        let route = Public::of(&segs, self.shared.dev_login);
        if let Some(refused) = self.over_rate(peer, route, &method) {
            return refused;
        }
        let Some(route) = route else {
            return error(ErrorCode::NotFound, "no such resource");
        };
        if !route.methods().contains(&method) {
            return method_not_allowed(route.methods());
        }
        match route {
            Public::Healthz => json(200, &serde_json::json!({"status": "ok"})),
            Public::Readyz => self.readyz(),
            Public::Elections => self.elections_list(),
            Public::Election { id } => match self.visible_election(id) {
                Some(e) => json(200, &ElectionView::from(&e)),
                None => error(ErrorCode::NotFound, "no such election"),
            },
            Public::OpenApi => reply::raw_json_static(200, super::super::openapi::public()),
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

    /// The per-source rate limit, which probes skip: a `429` with `Retry-After` when the
    /// source is over it (counted as a vote outcome when it was a vote).
    fn over_rate(
        &self,
        peer: SocketAddr,
        route: Option<Public<'_>>,
        method: &Method,
    ) -> Option<Response<BoxBody>> {
        if route.is_some_and(Public::is_probe) {
            return None;
        }
        let wait = self
            .limiter
            .borrow_mut()
            .check(peer.ip(), std::time::Instant::now())
            .err()?;
        if method == Method::POST && matches!(route, Some(Public::Votes { .. })) {
            self.metrics.vote(ErrorCode::RateLimited.as_str());
        }
        Some(reply::rate_limited(wait))
    }

    /// `GET /readyz`: ready once this node joined the fleet and every shard it owns recovered.
    fn readyz(&self) -> Response<BoxBody> {
        if self.ready() {
            json(200, &serde_json::json!({"status": "ready"}))
        } else {
            error(
                ErrorCode::Unavailable,
                "this node has not joined the fleet, or not every shard it owns has recovered",
            )
        }
    }

    /// `GET /v1/elections`: every election but drafts, in the view's order.
    fn elections_list(&self) -> Response<BoxBody> {
        let view = self.elections.borrow();
        let list: Vec<ElectionView> = view
            .sorted()
            .into_iter()
            .filter(|e| e.state != ElectionState::Draft)
            .map(ElectionView::from)
            .collect();
        json(200, &list)
    }

    /// Runs `f` with the results role and a public election, or answers 404.
    pub(super) fn with_results(
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
    /// result is official (docs/design.md §4.5). Two Redis round trips, whatever the election's size.
    pub(super) async fn receipt(&self, id: &str, receipt: &str) -> Response<BoxBody> {
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
        let found = match self
            .lookup(reader.proof(election.id.clone(), leaf_hash, root, tree_size))
            .await
        {
            Ok(found) => found,
            Err(busy) => return busy,
        };
        match found {
            Some(Ok(Some(proof))) => json(200, &proof),
            Some(Ok(None)) => error(ErrorCode::NotFound, "no counted vote has this receipt"),
            Some(Err(why)) => {
                tracing::warn!(%why, "receipt lookup failed");
                error(
                    ErrorCode::Unavailable,
                    "the receipts index did not answer; retry",
                )
            }
            None => error(
                ErrorCode::Unavailable,
                "the receipts index did not answer in time; retry",
            ),
        }
    }

    /// POST /v1/dev/login `{"voter":"42"}`: a token for any voter id, only with `--dev-login`.
    pub(super) async fn dev_login(&self, req: Request<RequestBody>) -> Response<BoxBody> {
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
    /// of truth, docs/design.md §4.2). A vote shows once the persister wrote it.
    pub(super) async fn votes_me<B>(&self, id: &str, req: &Request<B>) -> Response<BoxBody> {
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
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (client, table) = (client.clone(), self.shared.names.votes_table());
        let pk = votes_core::vote_item_pk(election.id.as_str(), voter);
        // Sent to the DynamoDB runtime only once the lookup is admitted (its first poll).
        let get = async move {
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
            rx.await
        };
        let item = match self.lookup(get).await {
            Err(busy) => return busy,
            Ok(Some(Ok(Ok(item)))) => item,
            Ok(Some(Ok(Err(why)))) => {
                tracing::warn!(%why, "DynamoDB lookup failed");
                return error(
                    ErrorCode::Unavailable,
                    "the vote store did not answer; retry",
                );
            }
            Ok(Some(Err(_)) | None) => {
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

    /// Waits for `lookup` if fewer than [`LOOKUPS_MAX`] are in flight on this core, at most
    /// [`LOOKUP_TIMEOUT`]: its answer, `None` once timed out, or the `503` to answer when the
    /// core has too many in flight (then `lookup` never starts).
    async fn lookup<T>(
        &self,
        lookup: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>, Response<BoxBody>> {
        if self.lookups.get() >= LOOKUPS_MAX {
            return Err(error(
                ErrorCode::Unavailable,
                "too many lookups in flight; retry",
            ));
        }
        self.lookups.set(self.lookups.get() + 1);
        let answer = glommio::timer::timeout(LOOKUP_TIMEOUT, async { Ok(lookup.await) }).await;
        self.lookups.set(self.lookups.get() - 1);
        Ok(answer.ok())
    }

    /// The voter a request's bearer token speaks for, or the `401` to answer (docs/design.md §4.2).
    pub(super) fn voter<B>(
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
    pub(super) fn visible_election(&self, id: &str) -> Option<Election> {
        self.elections
            .borrow()
            .find(id)
            .filter(|e| e.state != ElectionState::Draft)
            .cloned()
    }

    pub(super) fn challenge<B>(&self, id: &str, req: &Request<B>) -> Response<BoxBody> {
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
}
