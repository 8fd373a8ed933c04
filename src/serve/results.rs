//! The results role on one core (docs/design.md §4.2): `GET …/results` and `GET …/results/stream`.
//!
//! The node's Redis link polls the read model once per interval and posts sums on the
//! [`ResultsBoard`]; each core checks the board's generation at most `max_rate` times a second,
//! renders each changed election once (JSON, ETag, SSE frame) and publishes the frame on the
//! election's [`Topic`], which every local subscriber shares. A request or a subscriber never
//! costs a Redis round trip, and the tick is the throttle: no subscriber gets more than
//! `max_rate` events a second.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use votes_core::ErrorCode;
use votes_core::clock::unix_ms;
use votes_core::election::ElectionState;
use votes_core::{Election, ElectionId};
use votes_net::bytes::Bytes;
use votes_net::http::{HeaderMap, Response, StatusCode, header};
use votes_net::sse::{self, Topic};
use votes_net::{BoxBody, LocalSignal, http, ws};
use votes_tally::elections_log::ElectionsView;
use votes_tally::fanout::{ElectionResults, LinkHandle, ResultsBoard};

use super::reply;

/// The id of the event that carries the official result; a client resuming with it is done.
pub const FINAL_EVENT_ID: &str = "final";
/// How long a browser waits before reconnecting a dropped stream.
const RETRY_MS: u32 = 2_000;
/// A look at the board and the elections even when neither said it moved.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ResultsSettings {
    /// At most this many events per second per subscriber (and renders per core).
    pub max_rate: u32,
    pub heartbeat: Duration,
    /// A WebSocket subscriber that takes no frame for this long is closed (the HTTP layer's
    /// response-stall bound, which SSE subscribers get from it).
    pub stall: Duration,
}

/// One election's results as served: rendered once per change, shared by every answer.
pub struct Rendered {
    pub version: u64,
    pub official: bool,
    pub json: Bytes,
    pub etag: String,
    /// `event: tally` (or `final`) with the same JSON.
    pub frame: Bytes,
    /// The same event as a WebSocket text frame: `{"event":…,"id":…,"data":<the JSON>}`.
    pub ws_frame: Bytes,
    /// What it was rendered from, to notice changes.
    source: Option<Arc<ElectionResults>>,
    state: ElectionState,
}

pub struct CoreResults {
    board: Arc<ResultsBoard>,
    settings: ResultsSettings,
    shutdown: LocalSignal,
    seen_generation: Cell<u64>,
    rendered: RefCell<HashMap<ElectionId, Rc<Rendered>>>,
    streams: RefCell<HashMap<ElectionId, Streams>>,
}

/// An election's live results on this core, for each way of following them.
#[derive(Default)]
struct Streams {
    /// `GET …/results/stream`: SSE frames.
    sse: Topic,
    /// `GET …/results/ws`: WebSocket frames.
    ws: Topic,
}

impl Streams {
    fn subscribers(&self) -> usize {
        self.sse.subscribers() + self.ws.subscribers()
    }

    fn publish(&self, r: &Rendered) {
        self.sse.publish(r.frame.clone(), r.official);
        self.ws.publish(r.ws_frame.clone(), r.official);
    }

    fn close(&self) {
        self.sse.close();
        self.ws.close();
    }
}

impl CoreResults {
    pub fn new(
        board: Arc<ResultsBoard>,
        settings: ResultsSettings,
        shutdown: LocalSignal,
    ) -> Rc<Self> {
        assert!(settings.max_rate > 0, "the event rate is positive");
        Rc::new(Self {
            board,
            settings,
            shutdown,
            seen_generation: Cell::new(u64::MAX),
            rendered: RefCell::new(HashMap::new()),
            streams: RefCell::new(HashMap::new()),
        })
    }

    /// Subscribers on this core, over every election.
    pub fn subscribers(&self) -> usize {
        self.streams
            .borrow()
            .values()
            .map(Streams::subscribers)
            .sum()
    }

    /// The tick: re-renders what changed and publishes it to the subscribers. On core 0 it also
    /// tells the link which elections to poll.
    pub async fn run(
        self: Rc<Self>,
        elections: Rc<RefCell<ElectionsView>>,
        link: Option<LinkHandle>,
    ) {
        let period = Duration::from_secs(1) / self.settings.max_rate;
        let mut watched: Vec<ElectionId> = Vec::new();
        while !self.shutdown.is_fired() {
            let public: Vec<Election> = elections
                .borrow()
                .sorted()
                .into_iter()
                .filter(|e| e.state != ElectionState::Draft)
                .cloned()
                .collect();
            if let Some(link) = &link {
                let ids: Vec<ElectionId> = public.iter().map(|e| e.id.clone()).collect();
                if ids != watched {
                    link.watch(ids.clone());
                    watched = ids;
                }
            }
            let seen_elections = elections.borrow().changes();
            self.refresh(&public);
            // The throttle, then sleep until the board or the elections move: an idle core
            // is not woken ten times a second to find nothing new.
            futures_lite::future::or(glommio::timer::sleep(period), self.shutdown.wait()).await;
            let moved = futures_lite::future::or(
                self.board.changed_since(self.seen_generation.get()),
                ElectionsView::moved(&elections, seen_elections),
            );
            futures_lite::future::or(
                futures_lite::future::or(moved, glommio::timer::sleep(RECHECK_EVERY)),
                self.shutdown.wait(),
            )
            .await;
        }
        for streams in self.streams.borrow().values() {
            streams.close();
        }
    }

    fn refresh(&self, public: &[Election]) {
        let generation = self.board.generation();
        let board_moved = generation != self.seen_generation.replace(generation);
        let snapshot = board_moved.then(|| self.board.snapshot());
        let mut rendered = self.rendered.borrow_mut();
        for e in public {
            let current = rendered.get(&e.id).cloned();
            let source = match (&snapshot, &current) {
                (Some(s), _) => s.get(&e.id).cloned(),
                (None, Some(r)) => r.source.clone(),
                (None, None) => None,
            };
            let unchanged = current.as_ref().is_some_and(|r| {
                r.state == e.state
                    && match (&r.source, &source) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            });
            if unchanged {
                continue;
            }
            let fresh = Rc::new(render(e, source));
            // A new read of the same numbers (another poll, a node restart) is not news.
            let news = current.is_none_or(|c| {
                (c.version, c.state, c.official) != (fresh.version, fresh.state, fresh.official)
            });
            if news && let Some(streams) = self.streams.borrow().get(&e.id) {
                streams.publish(&fresh);
            }
            rendered.insert(e.id.clone(), fresh);
        }
        // Streams nobody listens to any more cost nothing to keep, but do not keep them forever.
        self.streams.borrow_mut().retain(|_, s| s.subscribers() > 0);
    }

    /// The current results of a public election, rendering on demand before the first tick.
    fn current(&self, e: &Election) -> Rc<Rendered> {
        if let Some(r) = self.rendered.borrow().get(&e.id)
            && r.state == e.state
        {
            return r.clone();
        }
        let source = self.board.snapshot().get(&e.id).cloned();
        let fresh = Rc::new(render(e, source));
        // Kept only when there was none: replacing an older render here would hide its change
        // from the tick, which publishes it to the subscribers.
        self.rendered
            .borrow_mut()
            .entry(e.id.clone())
            .or_insert_with(|| fresh.clone());
        fresh
    }

    /// The official Merkle root and tree size of a final election, as its result records them.
    pub fn merkle(&self, e: &Election) -> Option<([u8; 32], u64)> {
        let r = self.current(e);
        let official = r.source.as_ref()?.official.as_ref()?;
        let root = official.extra.get("merkle_root")?;
        let size = official.extra.get("merkle_tree_size")?.parse().ok()?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(root, &mut out).ok()?;
        Some((out, size))
    }

    /// `GET /v1/elections/{id}/results`.
    pub fn results(&self, e: &Election, headers: &HeaderMap) -> Response<BoxBody> {
        let r = self.current(e);
        let not_modified = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == r.etag || t.trim() == "*"));
        let builder = Response::builder()
            .header(header::CACHE_CONTROL, "public, max-age=1")
            .header(header::ETAG, &r.etag);
        if not_modified {
            return builder
                .status(StatusCode::NOT_MODIFIED)
                .body(BoxBody::empty())
                .expect("valid headers");
        }
        builder
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(BoxBody::full(r.json.clone()))
            .expect("valid headers")
    }

    /// The election's streams on this core, made at its first subscriber.
    fn streams_of(&self, e: &Election) -> std::cell::RefMut<'_, Streams> {
        std::cell::RefMut::map(self.streams.borrow_mut(), |m| {
            m.entry(e.id.clone()).or_default()
        })
    }

    /// `GET /v1/elections/{id}/results/stream`.
    pub fn stream(&self, e: &Election, headers: &HeaderMap) -> Response<BoxBody> {
        let r = self.current(e);
        let last_id = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        if r.official && last_id == Some(FINAL_EVENT_ID) {
            // The client has the official result: 204 tells a browser to stop reconnecting.
            return Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(BoxBody::empty())
                .expect("valid headers");
        }
        let mut first = sse::retry(RETRY_MS).to_vec();
        let id = if r.official {
            FINAL_EVENT_ID.to_owned()
        } else {
            r.version.to_string()
        };
        // Resuming at the version it already has, the client waits for the next change.
        if last_id != Some(id.as_str()) {
            first.extend_from_slice(&r.frame);
        }
        let official = r.official;
        let body = if official {
            // Nothing follows an official result: send it and end.
            BoxBody::full(first)
        } else {
            let topic = self.streams_of(e).sse.clone();
            let sub = topic.subscribe(
                Some(Bytes::from(first)),
                self.settings.heartbeat,
                Some(self.shutdown.clone()),
            );
            BoxBody::stream(sub)
        };
        let response = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            // Tells nginx-like proxies not to buffer the stream.
            .header("x-accel-buffering", "no")
            .body(body)
            .expect("valid headers");
        if official {
            response
        } else {
            // A subscriber over HTTP/1.1 may stay for hours: without hyper it holds ~8 KiB
            // (its socket and subscription) instead of ~31 KiB.
            votes_net::detached_stream(response)
        }
    }

    /// `GET /v1/elections/{id}/results/ws`: the stream's events as WebSocket text frames
    /// (HTTP/1.1 Upgrade, RFC 6455, or over h2 an extended CONNECT, RFC 8441); the current
    /// state first, then each change, a ping as the heartbeat; after an official result, the
    /// `final` event and a close (1000).
    pub fn websocket<B>(&self, e: &Election, req: &http::Request<B>) -> Response<BoxBody> {
        let handshake = match websocket_handshake(req) {
            Ok(h) => h,
            Err(refusal) => return refusal.response(),
        };
        let r = self.current(e);
        let frames = if r.official {
            // Nothing follows an official result: a stream of it alone, ending after it.
            let alone = Topic::new();
            let sub = alone.subscribe_with(None, self.settings.heartbeat, ws::ping_frame(), None);
            alone.publish(r.ws_frame.clone(), true);
            sub
        } else {
            let topic = self.streams_of(e).ws.clone();
            topic.subscribe_with(
                Some(r.ws_frame.clone()),
                self.settings.heartbeat,
                ws::ping_frame(),
                Some(self.shutdown.clone()),
            )
        };
        let stall = self.settings.stall;
        let response = match handshake {
            Handshake::Upgrade { accept } => Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::UPGRADE, "websocket")
                .header(header::CONNECTION, "Upgrade")
                .header(header::SEC_WEBSOCKET_ACCEPT, accept),
            // RFC 8441 §5: the stream is open once the 2xx is sent; no key, no accept.
            Handshake::ExtendedConnect => Response::builder().status(StatusCode::OK),
        }
        .body(BoxBody::empty())
        .expect("valid headers");
        ws::upgrade_to(
            response,
            Box::new(move |socket| {
                Box::pin(async move {
                    let end = ws::results_session(socket, frames, stall).await;
                    tracing::debug!(?end, "results WebSocket ended");
                })
            }),
        )
    }
}

/// A WebSocket handshake this server takes.
#[derive(Debug, PartialEq, Eq)]
enum Handshake {
    /// HTTP/1.1 `GET` with `Upgrade: websocket`: answered `101` with the accept key.
    Upgrade { accept: String },
    /// h2 `CONNECT` with `:protocol websocket` (RFC 8441): answered `200`.
    ExtendedConnect,
}

/// Why a request is not a WebSocket handshake this server takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Not HTTP/1.1, and not an h2 extended CONNECT (HTTP/3's, RFC 9220, is not taken: the
    /// h3 stack refuses `:protocol websocket`).
    NotHttp11,
    NotUpgrade,
    /// An h2 CONNECT for another protocol, or a plain CONNECT.
    ConnectProtocol,
    Version,
    Key,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::NotHttp11 => {
                "a WebSocket opens with an HTTP/1.1 Upgrade, or over HTTP/2 with an extended \
                 CONNECT (:protocol websocket)"
            }
            Refusal::NotUpgrade => {
                "a WebSocket handshake needs Upgrade: websocket and Connection: Upgrade"
            }
            Refusal::ConnectProtocol => "an extended CONNECT here needs :protocol websocket",
            Refusal::Version => "Sec-WebSocket-Version must be 13",
            Refusal::Key => "Sec-WebSocket-Key must be the base64 of 16 bytes",
        }
    }

    /// A 400 in the error envelope; a wrong version also names the one spoken (§4.4).
    fn response(self) -> Response<BoxBody> {
        let mut resp = reply::error(ErrorCode::InvalidRequest, self.message());
        if self == Refusal::Version {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                http::HeaderValue::from_static("13"),
            );
        }
        resp
    }
}

/// The checks of a WebSocket handshake: RFC 6455 §4.2.1 on an HTTP/1.1 `GET`, RFC 8441 §5 on
/// an h2 `CONNECT`.
fn websocket_handshake<B>(req: &http::Request<B>) -> Result<Handshake, Refusal> {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let version_13 = || {
        let version = req.headers().get(header::SEC_WEBSOCKET_VERSION);
        if version.and_then(|v| v.to_str().ok()).map(str::trim) == Some("13") {
            Ok(())
        } else {
            Err(Refusal::Version)
        }
    };
    if req.method() == http::Method::CONNECT {
        if req.version() != http::Version::HTTP_2 {
            return Err(Refusal::NotHttp11);
        }
        if votes_net::ws::connect_protocol(req) != Some("websocket") {
            return Err(Refusal::ConnectProtocol);
        }
        version_13()?;
        return Ok(Handshake::ExtendedConnect);
    }
    if req.version() != http::Version::HTTP_11 {
        return Err(Refusal::NotHttp11);
    }
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(Refusal::NotUpgrade);
    }
    version_13()?;
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY);
    key.and_then(|v| v.to_str().ok())
        .and_then(|k| votes_core::ws::accept_key(k).ok())
        .map(|accept| Handshake::Upgrade { accept })
        .ok_or(Refusal::Key)
}

/// An event as a WebSocket text frame: `{"event":…,"id":…,"data":<json>}`.
fn ws_event(id: &str, event: &str, json: &[u8]) -> Bytes {
    let mut text = Vec::with_capacity(json.len() + id.len() + event.len() + 32);
    text.extend_from_slice(b"{\"event\":");
    text.extend_from_slice(serde_json::to_string(event).expect("a string").as_bytes());
    text.extend_from_slice(b",\"id\":");
    text.extend_from_slice(serde_json::to_string(id).expect("a string").as_bytes());
    text.extend_from_slice(b",\"data\":");
    text.extend_from_slice(json);
    text.push(b'}');
    Bytes::from(votes_core::ws::encode(votes_core::ws::Opcode::Text, &text))
}

/// The results JSON of docs/design.md §4.2, its ETag and its SSE frame.
fn render(e: &Election, source: Option<Arc<ElectionResults>>) -> Rendered {
    let mut totals: serde_json::Map<String, serde_json::Value> = e
        .options
        .iter()
        .map(|o| (o.id.as_str().to_owned(), 0u64.into()))
        .collect();
    let (mut total, mut version, mut as_of, mut official) = (0u64, 0u64, unix_ms(), None);
    if let Some(r) = &source {
        let counts = r.official.as_ref().map_or(&r.totals, |o| &o.totals);
        for (option, n) in counts {
            // Only the election's options: a stray field in Redis is not a result.
            if let Some(slot) = totals.get_mut(option) {
                *slot = (*n).into();
                total += n;
            }
        }
        version = r.version;
        as_of = r
            .official
            .as_ref()
            .map_or(r.seen_at_ms, |o| o.decided_at_ms);
        official = r.official.as_ref();
    }
    let mut body = serde_json::json!({
        "election": e.id,
        "state": e.state,
        "totals": totals,
        "total": total,
        "final": official.is_some(),
        "as_of": as_of,
    });
    if let Some(o) = official {
        // docs/design.md §4.5: the official result carries "merkle": {"root", "tree_size"}.
        if let (Some(root), Some(size)) =
            (o.extra.get("merkle_root"), o.extra.get("merkle_tree_size"))
        {
            body["merkle"] = serde_json::json!({
                "root": root,
                "tree_size": size.parse::<u64>().unwrap_or(0),
            });
        }
        // docs/design.md §7: the per-partition end offsets the official count stops at.
        if let Some(frontier) = o
            .extra
            .get("frontier")
            .and_then(|f| serde_json::from_str::<serde_json::Value>(f).ok())
        {
            body["frontier"] = frontier;
        }
    }
    let json = Bytes::from(serde_json::to_vec(&body).expect("results serialize"));
    let etag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(&json));
    let (id, event) = match official {
        Some(_) => (FINAL_EVENT_ID.to_owned(), "final"),
        None => (version.to_string(), "tally"),
    };
    Rendered {
        version,
        official: official.is_some(),
        frame: sse::frame(&id, event, &json),
        ws_frame: ws_event(&id, event, &json),
        json,
        etag,
        source,
        state: e.state,
    }
}
