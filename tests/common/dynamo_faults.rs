//! A DynamoDB endpoint that misbehaves on purpose: an HTTP proxy between the AWS SDK and the
//! local engine that answers a seeded share of chosen operations with DynamoDB's own error
//! responses (status, `__type`, message, request id) instead of forwarding them. No local engine
//! throttles, so this is how the retry paths of the persister, the recount and `/votes/me` are
//! exercised rather than assumed.
//!
//! The proxy runs on a thread of its own with its own runtime, so a test can block on child
//! processes (the persister, `votes recount`) while it serves them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The error answers DynamoDB gives when it will not do a call now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A table or index past its provisioned capacity (400).
    ProvisionedThroughputExceeded,
    /// The control plane's or on-demand's rate limit (400).
    Throttling,
    /// The account's request rate limit (400).
    RequestLimitExceeded,
    /// DynamoDB's own transient failure (500).
    InternalServerError,
    /// A batch call partly done: the first half of its requests forwarded, the rest answered
    /// as `UnprocessedItems` (BatchWriteItem) or `UnprocessedKeys` (BatchGetItem), as DynamoDB
    /// does when a batch meets a partition past its capacity.
    Unprocessed,
}

impl Fault {
    fn answer(self) -> (u16, &'static str, &'static str) {
        match self {
            Fault::ProvisionedThroughputExceeded => (
                400,
                "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded. \
                 Consider increasing your provisioning level with the UpdateTable API.",
            ),
            Fault::Throttling => (
                400,
                "com.amazon.coral.availability#ThrottlingException",
                "Rate of requests exceeds the allowed throughput.",
            ),
            Fault::RequestLimitExceeded => (
                400,
                "com.amazonaws.dynamodb.v20120810#RequestLimitExceeded",
                "Throughput exceeds the current throughput limit for your account. Please \
                 contact AWS Support at https://aws.amazon.com/support request a limit increase",
            ),
            Fault::InternalServerError => (
                500,
                "com.amazonaws.dynamodb.v20120810#InternalServerError",
                "Internal server error",
            ),
            Fault::Unprocessed => unreachable!("a partial batch is answered by the engine"),
        }
    }
}

/// `per_mille` of the calls to `operation` (the `X-Amz-Target` suffix: "BatchWriteItem",
/// "BatchGetItem", "Query", "GetItem") are answered with `fault`. Rules of one operation are tried in order, each with
/// its own draw.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub operation: &'static str,
    pub fault: Fault,
    pub per_mille: u64,
}

struct State {
    rules: Vec<Rule>,
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    draws: AtomicU64,
    seed: u64,
    injected: Mutex<BTreeMap<(String, Fault), u64>>,
    forwarded: Mutex<BTreeMap<String, u64>>,
}

pub struct FaultProxy {
    pub url: String,
    pub seed: u64,
    state: Arc<State>,
    _thread: std::thread::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` what the rules let through.
    /// The seed comes from `VOTES_TEST_SEED` when set, and is printed either way.
    pub fn start(upstream: &str, rules: &[Rule]) -> FaultProxy {
        let seed = super::env_number("VOTES_TEST_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
        eprintln!("dynamo fault proxy: seed {seed} (VOTES_TEST_SEED={seed} repeats the draws)");
        let state = Arc::new(State {
            rules: rules.to_vec(),
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            draws: AtomicU64::new(0),
            seed,
            injected: Mutex::new(BTreeMap::new()),
            forwarded: Mutex::new(BTreeMap::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let served = state.clone();
        let thread = std::thread::Builder::new()
            .name("dynamo-faults".into())
            .spawn(move || {
                let rt = super::two_worker_runtime();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let state = served.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(state.handle(req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                })
            })
            .expect("start the fault proxy's thread");
        FaultProxy {
            url: format!("http://{addr}"),
            seed,
            state,
            _thread: thread,
        }
    }

    /// How many calls to `operation` were answered with `fault`.
    pub fn injected(&self, operation: &str, fault: Fault) -> u64 {
        let injected = self.state.injected.lock().unwrap();
        injected
            .get(&(operation.to_owned(), fault))
            .copied()
            .unwrap_or(0)
    }

    /// How many calls to `operation` reached the engine.
    pub fn forwarded(&self, operation: &str) -> u64 {
        let forwarded = self.state.forwarded.lock().unwrap();
        forwarded.get(operation).copied().unwrap_or(0)
    }

    /// Every count, for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "seed {}; injected {:?}; forwarded {:?}",
            self.seed,
            self.state.injected.lock().unwrap(),
            self.state.forwarded.lock().unwrap()
        )
    }
}

impl State {
    /// A uniform draw in 0..1000 from the seed and the draw's number (splitmix64).
    fn draw(&self) -> u64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut z = self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % 1000
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let operation = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("")
            .to_owned();
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return plain(502, format!("fault proxy: reading the request: {e}")),
        };
        let mut held_back = None;
        for rule in self.rules.iter().filter(|r| r.operation == operation) {
            if self.draw() >= rule.per_mille {
                continue;
            }
            if rule.fault == Fault::Unprocessed {
                // A batch of one cannot be split: it goes through whole.
                let Some(split) = split_batch(&operation, &body) else {
                    continue;
                };
                held_back = Some(split);
            } else {
                self.count_injected(&operation, rule.fault);
                return refusal(rule.fault, self.draws.load(Ordering::Relaxed));
            }
            break;
        }
        *self
            .forwarded
            .lock()
            .unwrap()
            .entry(operation.clone())
            .or_default() += 1;
        let Some(split) = held_back else {
            return self.forward(parts, body).await;
        };
        self.count_injected(&operation, Fault::Unprocessed);
        let answer = self
            .forward(parts, Bytes::from(split.forwarded.to_string()))
            .await;
        with_unprocessed(answer, split).await
    }

    fn count_injected(&self, operation: &str, fault: Fault) {
        *self
            .injected
            .lock()
            .unwrap()
            .entry((operation.to_owned(), fault))
            .or_default() += 1;
    }

    async fn forward(
        &self,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut upstream = Request::builder()
            .method(parts.method)
            .uri(format!("{}{path}", self.upstream));
        for (name, value) in &parts.headers {
            // A split batch is shorter than the request the SDK sent.
            if name != hyper::header::CONTENT_LENGTH {
                upstream = upstream.header(name, value);
            }
        }
        let upstream = upstream.body(Full::new(body)).unwrap();
        match self.client.request(upstream).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                match body.collect().await {
                    Ok(b) => Response::from_parts(parts, Full::new(b.to_bytes())),
                    Err(e) => plain(502, format!("fault proxy: reading the answer: {e}")),
                }
            }
            Err(e) => plain(502, format!("fault proxy: the engine: {e}")),
        }
    }
}

/// A batch call cut in two: the request with the first half of each table's requests, and
/// what the answer reports as unprocessed (the rest, in the request's own shape).
struct SplitBatch {
    forwarded: serde_json::Value,
    /// `UnprocessedItems` or `UnprocessedKeys`.
    field: &'static str,
    unprocessed: serde_json::Map<String, serde_json::Value>,
}

fn split_batch(operation: &str, body: &[u8]) -> Option<SplitBatch> {
    let mut request: serde_json::Value = serde_json::from_slice(body).ok()?;
    let tables = request.get_mut("RequestItems")?.as_object_mut()?;
    let mut unprocessed = serde_json::Map::new();
    for (table, asked) in tables.iter_mut() {
        // BatchWriteItem: a list of write requests; BatchGetItem: {"Keys": [...], ...}.
        let list = match operation {
            "BatchWriteItem" => asked.as_array_mut()?,
            "BatchGetItem" => asked.get_mut("Keys")?.as_array_mut()?,
            _ => return None,
        };
        if list.len() < 2 {
            continue;
        }
        let rest = list.split_off(list.len().div_ceil(2));
        let rest = match operation {
            "BatchWriteItem" => serde_json::Value::Array(rest),
            _ => {
                let mut keys = asked.clone();
                keys["Keys"] = serde_json::Value::Array(rest);
                keys
            }
        };
        unprocessed.insert(table.clone(), rest);
    }
    if unprocessed.is_empty() {
        return None;
    }
    let field = if operation == "BatchWriteItem" {
        "UnprocessedItems"
    } else {
        "UnprocessedKeys"
    };
    Some(SplitBatch {
        forwarded: request,
        field,
        unprocessed,
    })
}

/// The engine's answer to the shortened batch, with the held-back requests as unprocessed.
async fn with_unprocessed(
    answer: Response<Full<Bytes>>,
    split: SplitBatch,
) -> Response<Full<Bytes>> {
    if answer.status() != 200 {
        return answer;
    }
    let (mut parts, body) = answer.into_parts();
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes());
    let Ok(mut out) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return plain(
            502,
            "fault proxy: the engine's batch answer is not JSON".into(),
        );
    };
    out[split.field] = serde_json::Value::Object(split.unprocessed);
    let body = Bytes::from(out.to_string());
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    // DynamoDB's CRC32 of a body this is no longer.
    parts.headers.remove("x-amz-crc32");
    Response::from_parts(parts, Full::new(body))
}

/// DynamoDB's error answer: JSON 1.0 with `__type` and `message`, and a request id.
fn refusal(fault: Fault, n: u64) -> Response<Full<Bytes>> {
    let (status, kind, message) = fault.answer();
    let body = serde_json::json!({"__type": kind, "message": message}).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amzn-requestid", format!("FAULTPROXY{n:020}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn plain(status: u16, text: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(text)))
        .unwrap()
}
