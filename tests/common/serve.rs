//! A `votes serve` process for end-to-end tests: started on free loopback ports with its own
//! prefix, killed (`kill -9`) when dropped, plus an HTTP client speaking HTTP/1.1 or h2c and a
//! reader of the committed `votes` log.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use votes_core::{Names, VoteRecord, VoterId};

use super::{KAFKA, Service, require};

pub const TOKEN_KEY: &str = "test-token-key-0123456789abcdef-0123";
pub const AUDIT_KEY: &str = "test-audit-key-0123456789abcdef-0123";
pub const ADMIN_TOKEN: &str = "test-admin-token-01";
pub const FORWARD_KEY: &str = "test-forward-key-0123456789abcdef-012";

/// A port for one of the child's listeners, outside the range the kernel gives to the many
/// outgoing connections the suite opens (see [`votes_net::loopback_listener_port`]).
fn free_port() -> u16 {
    votes_net::loopback_listener_port().expect("a free loopback port for votes serve")
}

/// The environment of a node whose results streams (SSE and WebSocket) beat every second
/// instead of the default's longer interval: a test sees a heartbeat or a ping within seconds.
pub const ONE_SECOND_HEARTBEAT: [(&str, &str); 1] = [("VOTES_SSE_HEARTBEAT_S", "1")];

pub struct Serve {
    pub prefix: String,
    pub http: SocketAddr,
    /// The TLS listener and the PEM of its self-signed certificate, when started with TLS.
    pub https: Option<(SocketAddr, String)>,
    pub admin: SocketAddr,
    /// The node-to-node listener, when started as a fleet node ([`Serve::start_node`]).
    pub internal: Option<SocketAddr>,
    pub node: String,
    child: Option<Child>,
    log: std::path::PathBuf,
    /// Started with `--proxy-protocol`: its public listener wants a PROXY header first.
    behind_proxy: bool,
}

impl Serve {
    /// `votes init` for a fresh prefix, then a serve process on it.
    pub fn init_and_start(test: &str, partitions: u32, cores: usize) -> Serve {
        Serve::init_and_start_env(test, partitions, cores, &[])
    }

    /// Like [`Serve::init_and_start`], with extra environment for the process.
    pub fn init_and_start_env(
        test: &str,
        partitions: u32,
        cores: usize,
        env: &[(&str, &str)],
    ) -> Serve {
        Serve::init_and_start_with(test, partitions, cores, false, env)
    }

    /// Like [`Serve::init_and_start_env`], with a TLS listener (a self-signed certificate,
    /// HTTP/3 beside it) when `tls`.
    pub fn init_and_start_with(
        test: &str,
        partitions: u32,
        cores: usize,
        tls: bool,
        env: &[(&str, &str)],
    ) -> Serve {
        let prefix = super::fresh_prefix(test, partitions);
        Serve::start_env(&prefix, cores, tls, env)
    }

    /// A serve process on an existing prefix; waits until `/readyz` answers 200.
    pub fn start(prefix: &str, cores: usize) -> Serve {
        Serve::start_with(prefix, cores, false)
    }

    /// Like [`Serve::start`], with a TLS listener on a self-signed certificate when `tls`.
    pub fn start_with(prefix: &str, cores: usize, tls: bool) -> Serve {
        Serve::start_env(prefix, cores, tls, &[])
    }

    /// Like [`Serve::start_with`], with extra environment for the process. Rate limits are off
    /// unless `env` sets them: every test client speaks from 127.0.0.1.
    pub fn start_env(prefix: &str, cores: usize, tls: bool, env: &[(&str, &str)]) -> Serve {
        Serve::launch(prefix, cores, tls, env, "test-node", false)
    }

    /// A node of a fleet on `prefix`: its own node id, an internal listener for votes other
    /// nodes forward, and a 6 s group session (the broker's minimum) so failovers are quick.
    pub fn start_node(prefix: &str, cores: usize, node: &str, env: &[(&str, &str)]) -> Serve {
        Serve::launch(prefix, cores, false, env, node, true)
    }

    /// [`Serve::start_node`] with a TLS listener too: HTTP/1.1 and h2 over TLS, and HTTP/3 on
    /// its UDP side ([`Serve::base_for`]).
    pub fn start_node_tls(prefix: &str, cores: usize, node: &str, env: &[(&str, &str)]) -> Serve {
        Serve::launch(prefix, cores, true, env, node, true)
    }

    fn launch(
        prefix: &str,
        cores: usize,
        tls: bool,
        env: &[(&str, &str)],
        node: &str,
        fleet: bool,
    ) -> Serve {
        require(Service::Redis);
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!("{prefix}serve-{}.log", http.port()));
        let mut tls_args: Vec<String> = Vec::new();
        let mut https = None;
        if tls {
            let (cert, key) = votes_net::self_signed_dev_cert(&["localhost", "127.0.0.1"]).unwrap();
            let dir = std::env::temp_dir();
            let cert_path = dir.join(format!("{prefix}cert.pem"));
            let key_path = dir.join(format!("{prefix}key.pem"));
            std::fs::write(&cert_path, &cert).unwrap();
            std::fs::write(&key_path, &key).unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            tls_args = vec![
                "--https".into(),
                addr.to_string(),
                "--tls-cert".into(),
                cert_path.display().to_string(),
                "--tls-key".into(),
                key_path.display().to_string(),
            ];
            https = Some((addr, cert));
        }
        let internal: Option<SocketAddr> =
            fleet.then(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
        let mut fleet_args: Vec<String> = Vec::new();
        if let Some(addr) = internal {
            fleet_args = vec![
                "--internal".into(),
                addr.to_string(),
                "--group-session-timeout-ms".into(),
                "6000".into(),
            ];
        }
        let child = Command::new(env!("CARGO_BIN_EXE_votes"))
            .args([
                "serve",
                "--cores",
                &cores.to_string(),
                "--http",
                &http.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--node-id", node])
            .args(&tls_args)
            .args(&fleet_args)
            .env("VOTES_PREFIX", prefix)
            .env("VOTES_KAFKA_BROKERS", KAFKA.as_str())
            .env("VOTES_REDIS_URL", super::REDIS)
            .env("VOTES_TOKEN_KEY", TOKEN_KEY)
            .env("VOTES_AUDIT_KEY", AUDIT_KEY)
            .env("VOTES_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("VOTES_FORWARD_KEY", FORWARD_KEY)
            .env("VOTES_LOG", "info")
            .env("VOTES_RATE_PER_ADDR", "0")
            .env("VOTES_RATE_PER_PREFIX", "0")
            .envs(env.iter().copied())
            .env_remove("VOTES_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("votes serve starts");
        let mut s = Serve {
            prefix: prefix.to_owned(),
            http,
            https,
            admin,
            internal,
            node: node.to_owned(),
            child: Some(child),
            log,
            behind_proxy: env
                .iter()
                .any(|(k, v)| *k == "VOTES_PROXY_PROTOCOL" && *v == "true"),
        };
        s.wait_ready(Duration::from_secs(60));
        s
    }

    pub fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let client = TestClient::http1();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("votes serve exited with {status}:\n{}", self.log_text());
            }
            let ready = super::runtime().block_on(async {
                // Behind a proxy the public listener wants a PROXY header first: ask the admin.
                if self.behind_proxy {
                    let url = self.admin_url("/admin/v1/stats");
                    let auth = format!("Bearer {ADMIN_TOKEN}");
                    let headers = [("authorization", auth.as_str())];
                    let stats = client.send("GET", &url, &headers, Bytes::new());
                    let answer = tokio::time::timeout(Duration::from_secs(2), stats).await;
                    return matches!(answer, Ok(Ok((200, _, s))) if s["ready"] == true);
                }
                let answer =
                    tokio::time::timeout(Duration::from_secs(2), client.get(&self.url("/readyz")))
                        .await;
                matches!(answer, Ok(Ok((200, _))))
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "votes serve not ready in {within:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// The PEM of the self-signed certificate of the TLS listener, for a client to trust;
    /// `None` when the node was started without TLS (the clients then speak plaintext only).
    pub fn tls_root(&self) -> Option<&str> {
        self.https.as_ref().map(|(_, pem)| pem.as_str())
    }

    /// The base URL a client of `protocol` talks to (TLS protocols use the TLS listener).
    pub fn base_for(&self, protocol: &str) -> String {
        match protocol {
            "h1-tls" | "h2-tls" | "h3" => format!(
                "https://localhost:{}",
                self.https.as_ref().expect("started with TLS").0.port()
            ),
            _ => format!("http://{}", self.http),
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `why`, shown followed by the node's log: the log is read only if a test fails with it,
    /// not at every turn of a wait.
    pub fn with_log(&self, why: String) -> WithLog<'_> {
        WithLog { why, serve: self }
    }

    /// The process id, for signals (SIGSTOP/SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no shutdown path runs.
    /// SIGTERM, then waits for the process to end (a graceful stop answers what is in flight
    /// and exits); panics if it has not ended within `within`.
    pub fn stop(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running process");
        // SAFETY: kill(2) of our own child, which has not been waited for yet.
        let sent = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to {}", self.node);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for votes serve") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?} of SIGTERM:\n{}",
                self.node,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn names(&self) -> Names {
        Names::new(&self.prefix).unwrap()
    }

    /// Writes `official` as the election's official result in Redis, where the recount puts it
    /// and every node's results role finds it.
    /// Writes `official` where the recount writes an official result (the Redis final key).
    pub fn write_official(&self, election: &str, official: &votes_tally::fanout::Official) {
        let client = redis::Client::open(super::REDIS).unwrap();
        let mut conn = client.get_connection().unwrap();
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.names().redis_final_key(election));
        for (k, v) in votes_tally::fanout::official_fields(official) {
            cmd.arg(k).arg(v);
        }
        let _: i64 = cmd.query(&mut conn).unwrap();
    }
}

/// An official result with `totals` per option, as the recount would decide it (the Merkle
/// root a placeholder), for [`Serve::write_official`].
pub fn official_result(
    totals: std::collections::BTreeMap<String, u64>,
) -> votes_tally::fanout::Official {
    let total = totals.values().sum();
    votes_tally::fanout::Official {
        totals,
        total,
        decided_at_ms: 1_800_000_000_000,
        extra: [
            ("merkle_root".to_owned(), "00".repeat(32)),
            ("merkle_tree_size".to_owned(), total.to_string()),
        ]
        .into(),
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn token(voter: u64) -> String {
    let keys = votes_core::TokenKeys::hs256(TOKEN_KEY.as_bytes()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    votes_core::token::issue(keys.signing_key(), VoterId(voter), 3600, now)
}

/// A client of the public and admin APIs over HTTP/1.1, h2c (prior knowledge), TLS, or HTTP/3.
#[derive(Clone)]
pub struct TestClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Set for HTTP/3: every request goes over QUIC (one connection per authority).
    h3: Option<std::sync::Arc<H3Client>>,
}

type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// HTTP/3 over quinn on tokio, trusting one certificate.
pub struct H3Client {
    tls: rustls::ClientConfig,
    conns: tokio::sync::Mutex<HashMap<String, H3Send>>,
}

/// A client's TLS (ring, `versions`, no client certificate) trusting only the certificate
/// `tls_root` (PEM), or nothing when there is none.
fn client_tls(
    tls_root: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = tls_root {
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

impl H3Client {
    fn new(tls_root: Option<&str>) -> Self {
        let mut tls = client_tls(tls_root, &[&rustls::version::TLS13]);
        tls.alpn_protocols = vec![b"h3".to_vec()];
        Self {
            tls,
            conns: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn sender(&self, uri: &hyper::Uri) -> Result<H3Send, String> {
        let authority = uri.authority().ok_or("no authority")?.to_string();
        let mut conns = self.conns.lock().await;
        if let Some(s) = conns.get(&authority) {
            return Ok(s.clone());
        }
        let host = uri.host().ok_or("no host")?;
        let port = uri.port_u16().ok_or("no port")?;
        let ip = if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        };
        let addr: SocketAddr = format!("{ip}:{port}").parse().map_err(|e| format!("{e}"))?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(self.tls.clone())
            .map_err(|e| e.to_string())?;
        let mut ep =
            quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
        ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
        let conn = ep
            .connect(addr, host)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        conns.insert(authority, send.clone());
        Ok(send)
    }

    async fn send(
        &self,
        req: hyper::Request<()>,
        body: Bytes,
    ) -> Result<(u16, HashMap<String, String>, Bytes), String> {
        use bytes::Buf;
        let mut send = self.sender(req.uri()).await?;
        let mut stream = send.send_request(req).await.map_err(|e| e.to_string())?;
        if !body.is_empty() {
            stream.send_data(body).await.map_err(|e| e.to_string())?;
        }
        stream.finish().await.map_err(|e| e.to_string())?;
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        let hdrs = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let mut out = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                out.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        Ok((resp.status().as_u16(), hdrs, Bytes::from(out)))
    }
}

fn connector(
    tls_root: Option<&str>,
    h1: bool,
    h2: bool,
) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let tls = client_tls(tls_root, rustls::DEFAULT_VERSIONS);
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    match (h1, h2) {
        (true, false) => b.enable_http1().wrap_connector(http),
        (false, true) => b.enable_http2().wrap_connector(http),
        _ => b.enable_http1().enable_http2().wrap_connector(http),
    }
}

pub type Answer = (u16, serde_json::Value);

impl TestClient {
    pub fn http1() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(256)
                .build(connector(None, true, false)),
            h3: None,
        }
    }

    pub fn h2c() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector(None, false, true)),
            h3: None,
        }
    }

    /// Opens a results stream (`GET url` with `Accept: text/event-stream` and `headers`) over
    /// this client's protocol, its body left to read as it comes.
    pub async fn sse(&self, url: &str, headers: &[(&str, &str)]) -> super::sse::SseStream {
        let mut req = hyper::Request::get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(h3) = &self.h3 {
            let req = req.body(()).unwrap();
            let mut send = h3
                .sender(req.uri())
                .await
                .unwrap_or_else(|e| panic!("HTTP/3 to {url}: {e}"));
            let mut stream = send.send_request(req).await.unwrap();
            stream.finish().await.unwrap();
            let resp = stream.recv_response().await.unwrap();
            return super::sse::SseStream::new(
                resp.status().as_u16(),
                resp.headers().clone(),
                super::sse::SseBody::H3(Box::new(stream)),
            );
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
        super::sse::SseStream::new(
            resp.status().as_u16(),
            resp.headers().clone(),
            super::sse::SseBody::Hyper(resp.into_body()),
        )
    }

    /// `h1`, `h2c`, or over TLS trusting `tls_root`: `h1-tls` (ALPN http/1.1), `h2-tls` (ALPN
    /// h2), `h3` (QUIC).
    pub fn for_protocol(protocol: &str, tls_root: Option<&str>) -> Self {
        match protocol {
            "h1" => Self::http1(),
            "h2c" => Self::h2c(),
            "h1-tls" => Self {
                client: Client::builder(TokioExecutor::new())
                    .build(connector(tls_root, true, false)),
                h3: None,
            },
            "h2-tls" => Self {
                client: Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build(connector(tls_root, false, true)),
                h3: None,
            },
            "h3" => Self {
                client: Client::builder(TokioExecutor::new())
                    .build(connector(tls_root, true, false)),
                h3: Some(std::sync::Arc::new(H3Client::new(tls_root))),
            },
            other => panic!("unknown protocol {other}"),
        }
    }

    /// An h2 extended CONNECT (RFC 8441) to `url` for `protocol`, with `headers`: the status,
    /// the headers, and on 2xx the stream as a byte pipe. Only over an h2 client.
    pub async fn extended_connect(
        &self,
        url: &str,
        protocol: &'static str,
        headers: &[(&str, &str)],
    ) -> (
        u16,
        hyper::HeaderMap,
        Option<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
    ) {
        assert!(self.h3.is_none(), "an extended CONNECT here is h2's");
        let mut req = hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri(url)
            .extension(hyper::ext::Protocol::from_static(protocol));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap_or_else(|e| panic!("CONNECT {url}: {e:?}"));
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        if !resp.status().is_success() {
            return (status, headers, None);
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .unwrap_or_else(|e| panic!("CONNECT {url}: the stream did not open: {e}"));
        (
            status,
            headers,
            Some(hyper_util::rt::TokioIo::new(upgraded)),
        )
    }

    /// Sends a request; the answer's body is parsed as JSON (`Null` when empty or not JSON,
    /// with the raw text under `"raw"`).
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<(u16, HashMap<String, String>, serde_json::Value), String> {
        let mut req = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(h3) = &self.h3 {
            let req = req.body(()).map_err(|e| e.to_string())?;
            let (status, hdrs, bytes) = h3.send(req, body.into()).await?;
            let json = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::json!({"raw": String::from_utf8_lossy(&bytes)}));
            return Ok((status, hdrs, json));
        }
        let req = req
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let hdrs = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::json!({"raw": String::from_utf8_lossy(&bytes)}));
        Ok((status, hdrs, json))
    }

    pub async fn get(&self, url: &str) -> Result<Answer, String> {
        self.send("GET", url, &[], Bytes::new())
            .await
            .map(|(s, _, j)| (s, j))
    }

    /// Asks `GET url` again every `every` until `check` of its status and body is `Ok`, and
    /// returns what it found: [`super::eventually`] of a `GET`, which must answer.
    pub async fn get_until<T, E: std::fmt::Display>(
        &self,
        url: &str,
        within: Duration,
        every: Duration,
        mut check: impl FnMut(u16, serde_json::Value) -> Result<T, E>,
    ) -> T {
        super::eventually(within, every, async || {
            let (status, body) = self.get(url).await.unwrap();
            check(status, body)
        })
        .await
    }

    pub async fn admin(&self, method: &str, url: &str, body: serde_json::Value) -> Answer {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let (s, _, j) = self
            .send(
                method,
                url,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
            .expect("admin request");
        (s, j)
    }

    /// `GET` of `path` on `serve`'s admin listener as the operator: the admin API's reads
    /// (elections, stats, metrics) carry no body.
    pub async fn admin_get(&self, serve: &Serve, path: &str) -> Answer {
        self.admin("GET", &serve.admin_url(path), serde_json::Value::Null)
            .await
    }

    /// `POST` of `path` on `serve`'s admin listener as the operator, without a body: the
    /// admin actions on an election (`…/open`, `…/close`) carry none.
    pub async fn admin_post(&self, serve: &Serve, path: &str) -> Answer {
        self.admin("POST", &serve.admin_url(path), serde_json::Value::Null)
            .await
    }

    pub async fn vote(
        &self,
        serve_url: &str,
        election: &str,
        voter: u64,
        option: &str,
    ) -> Result<Answer, String> {
        let auth = format!("Bearer {}", token(voter));
        let body = serde_json::json!({"option": option}).to_string();
        self.send(
            "POST",
            &format!("{serve_url}/v1/elections/{election}/votes"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
        .map(|(s, _, j)| (s, j))
    }

    /// Votes as `voter` for `option` in `election` through the node at `serve_url`, waiting at
    /// most 30 s for the answer: what the voter saw of it, every part `None` when the request
    /// failed or took longer.
    pub async fn vote_seen(
        &self,
        serve_url: &str,
        election: &str,
        voter: u64,
        option: &str,
    ) -> VoteSeen {
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            self.vote(serve_url, election, voter, option),
        )
        .await;
        match answer {
            Ok(Ok((status, body))) => VoteSeen {
                status: Some(status),
                partition: body["partition"].as_u64(),
                offset: body["offset"].as_u64(),
            },
            _ => VoteSeen {
                status: None,
                partition: None,
                offset: None,
            },
        }
    }

    /// Votes as `voter` for `option` in `election` through the node at `serve_url` and asserts
    /// the vote was accepted (`202`), for the tests whose subject is what an accepted vote
    /// leads to (a tally event, a receipt, a fenced writer); returns the `202`'s body.
    pub async fn vote_accepted(
        &self,
        serve_url: &str,
        election: &str,
        voter: u64,
        option: &str,
    ) -> serde_json::Value {
        let (status, body) = self.vote(serve_url, election, voter, option).await.unwrap();
        assert_eq!(status, 202, "{body}");
        body
    }

    /// Voters 1 to `voters` vote in `election` (options `a` and `b`) through `serve`, `a` and
    /// `b` in turn, each vote accepted: a known split to find again downstream.
    pub async fn votes_split_a_b(&self, serve: &Serve, election: &str, voters: u64) {
        for voter in 1..=voters {
            let option = ["a", "b"][(voter % 2) as usize];
            self.vote_accepted(&serve.url(""), election, voter, option)
                .await;
        }
    }
}

/// Closes election `id` through `serve`'s admin API; the close must be accepted.
pub async fn close_election(client: &TestClient, serve: &Serve, id: &str) {
    let (s, body) = client
        .admin_post(serve, &format!("/admin/v1/elections/{id}/close"))
        .await;
    assert_eq!(s, 200, "closing {id}: {body}");
}

/// Waits until `GET …/results` of `id` on `serve` is final (the three counts agreed and the
/// official result was written); returns it.
pub async fn wait_final(
    client: &TestClient,
    serve: &Serve,
    id: &str,
    within: Duration,
) -> serde_json::Value {
    let url = serve.url(&format!("/v1/elections/{id}/results"));
    client
        .get_until(&url, within, Duration::from_millis(200), |_, body| {
            if body["final"] == true && body["state"] == "final" {
                return Ok(body);
            }
            Err(serve.with_log(format!("{id} did not become final: {body}")))
        })
        .await
}

/// Waits until `serve`'s own copy of the elections shows `id` open.
pub async fn wait_open(client: &TestClient, serve: &Serve, id: &str) {
    wait_state(client, serve, id, &["open"]).await
}

/// Waits until `serve`'s public view of election `id` is in one of `states`.
pub async fn wait_state(client: &TestClient, serve: &Serve, id: &str, states: &[&str]) {
    super::eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || {
            if let Ok((200, e)) = client.get(&serve.url(&format!("/v1/elections/{id}"))).await
                && states.iter().any(|s| e["state"] == *s)
            {
                return Ok(());
            }
            Err(format!(
                "{} never saw election {id} in {states:?}",
                serve.node
            ))
        },
    )
    .await
}

/// A failure's words and the node whose log explains it ([`Serve::with_log`]).
pub struct WithLog<'a> {
    why: String,
    serve: &'a Serve,
}

impl std::fmt::Display for WithLog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", self.why, self.serve.log_text())
    }
}

/// Every sample of the `/metrics` series `name`, keyed by its labels (`partition="0"`, or ""
/// when it has none), as published now (cores publish once a second).
pub async fn metric(serve: &Serve, name: &str) -> HashMap<String, u64> {
    let (status, page) = TestClient::http1().admin_get(serve, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {page}");
    page["raw"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Creates and opens an election with `options` through the admin API.
pub async fn open_election(
    client: &TestClient,
    serve: &Serve,
    id: &str,
    options: &[&str],
    pow_difficulty: u8,
) {
    let options: Vec<serde_json::Value> = options
        .iter()
        .map(|o| serde_json::json!({"id": o, "label": o.to_uppercase()}))
        .collect();
    let (s, body) = client
        .admin(
            "POST",
            &serve.admin_url("/admin/v1/elections"),
            serde_json::json!({"id": id, "title": format!("Election {id}"), "options": options, "pow_difficulty": pow_difficulty}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = client
        .admin_post(serve, &format!("/admin/v1/elections/{id}/open"))
        .await;
    assert_eq!(s, 200, "{body}");
}

/// A committed record of the `votes` topic with where it lies.
#[derive(Debug, Clone)]
pub struct Committed {
    pub partition: u32,
    pub offset: u64,
    pub record: VoteRecord,
}

/// Every record of `{prefix}votes` a read_committed reader sees, up to the end.
pub fn committed_votes(names: &Names, partitions: u32) -> Vec<Committed> {
    let consumer: BaseConsumer =
        votes_tally::kafka::read_committed_consumer_config(&KAFKA, "test-verify")
            .create()
            .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&names.votes_topic(), p as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut at_end = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_end.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "reading the votes log did not finish"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => match votes_core::record::LogRecord::decode(m.payload().unwrap())
                .expect("committed records decode")
            {
                votes_core::record::LogRecord::Vote(record) => out.push(Committed {
                    partition: m.partition() as u32,
                    offset: m.offset() as u64,
                    record,
                }),
                // Close markers: the tests that close read them with `close_markers`.
                votes_core::record::LogRecord::Close(_) => {}
            },
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading votes: {e}"),
            None => {}
        }
    }
    out
}

/// A vote's answer as its voter saw it ([`TestClient::vote_seen`]): the status, and the
/// partition and offset a `202` named.
#[derive(Debug, Clone, Copy)]
pub struct VoteSeen {
    pub status: Option<u16>,
    pub partition: Option<u64>,
    pub offset: Option<u64>,
}

/// A `202` as its client saw it.
pub struct Ack<'a> {
    pub voter: u64,
    pub option: &'a str,
    pub partition: Option<u64>,
    pub offset: Option<u64>,
}

/// Every acknowledged vote is in the committed log exactly once, at the partition and offset
/// its `202` named, with its option; and no voter of `election` appears twice in the log.
pub fn assert_acks_in_log<'a>(
    log: &[Committed],
    election: &str,
    acks: impl IntoIterator<Item = Ack<'a>>,
) {
    let mut seen: HashMap<u64, &Committed> = HashMap::new();
    for c in log
        .iter()
        .filter(|c| c.record.election.as_str() == election)
    {
        assert!(
            seen.insert(c.record.voter.0, c).is_none(),
            "voter {} appears twice in the committed log",
            c.record.voter
        );
    }
    for a in acks {
        let c = seen
            .get(&a.voter)
            .unwrap_or_else(|| panic!("acknowledged vote of voter {} is not in the log", a.voter));
        assert_eq!(
            (Some(u64::from(c.partition)), Some(c.offset)),
            (a.partition, a.offset),
            "voter {}",
            a.voter
        );
        assert_eq!(c.record.option.as_str(), a.option, "voter {}", a.voter);
    }
}

/// Votes per option of `election` in the committed log.
pub fn log_tallies(log: &[Committed], election: &str) -> BTreeMap<String, u64> {
    let mut t = BTreeMap::new();
    for c in log
        .iter()
        .filter(|c| c.record.election.as_str() == election)
    {
        *t.entry(c.record.option.to_string()).or_default() += 1;
    }
    t
}

/// Waits until the live totals of the admin API, summed over `nodes` (each reports the shards
/// it owns; they refresh each second), equal `want` (the committed log's tallies).
pub async fn wait_live_totals(
    client: &TestClient,
    nodes: &[&Serve],
    election: &str,
    want: &BTreeMap<String, u64>,
) {
    super::eventually(
        Duration::from_secs(20),
        Duration::from_millis(250),
        async || {
            let mut got: BTreeMap<String, u64> = BTreeMap::new();
            for serve in nodes {
                let (_, list) = client.admin_get(serve, "/admin/v1/elections").await;
                let e = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["id"] == election)
                    .cloned()
                    .unwrap_or_default();
                for (k, v) in e["live"]["totals"].as_object().into_iter().flatten() {
                    *got.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
                }
            }
            got.retain(|_, v| *v > 0);
            if &got == want {
                return Ok(());
            }
            Err(format!(
                "live totals {got:?} never matched the log {want:?}"
            ))
        },
    )
    .await
}
