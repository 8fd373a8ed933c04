//! A reader of Server-Sent Events for the tests: one GET (over HTTP/1.1 here, or over any
//! protocol through `TestClient::sse`), the body read frame by frame as it arrives, parsed into
//! events and comments by the rules of the SSE spec.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One dispatched event, or a comment line (`: …`) kept because heartbeats are comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    Event {
        id: Option<String>,
        event: String,
        data: String,
    },
    Comment(String),
}

impl Sse {
    /// The data of an event parsed as JSON; panics on a comment.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Sse::Event { data, .. } => serde_json::from_str(data).expect("event data is JSON"),
            Sse::Comment(c) => panic!("expected an event, got the comment {c:?}"),
        }
    }
}

/// An HTTP/3 request stream (its response head read).
pub type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// The response body, read as it comes.
pub enum SseBody {
    Hyper(Incoming),
    H3(Box<H3Stream>),
}

impl SseBody {
    /// The next bytes of the body; `None` at its end.
    async fn chunk(&mut self) -> Option<Bytes> {
        use bytes::Buf;
        match self {
            SseBody::Hyper(body) => loop {
                let frame = body.frame().await?.expect("the stream's body reads");
                if let Ok(data) = frame.into_data() {
                    return Some(data);
                }
            },
            SseBody::H3(stream) => {
                let mut chunk = stream
                    .recv_data()
                    .await
                    .expect("the stream's body reads over HTTP/3")?;
                Some(chunk.copy_to_bytes(chunk.remaining()))
            }
        }
    }
}

pub struct SseStream {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: SseBody,
    buf: String,
    pending: std::collections::VecDeque<Sse>,
    ended: bool,
}

/// Opens `url` with the given extra headers (e.g. `Last-Event-ID`).
pub async fn open(url: &str, headers: &[(&str, &str)]) -> SseStream {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::get(url).header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    SseStream::new(
        resp.status().as_u16(),
        resp.headers().clone(),
        SseBody::Hyper(resp.into_body()),
    )
}

impl SseStream {
    pub fn new(status: u16, headers: hyper::HeaderMap, body: SseBody) -> Self {
        SseStream {
            status,
            headers,
            body,
            buf: String::new(),
            pending: Default::default(),
            ended: false,
        }
    }

    /// The next event or comment within `within`; `None` when the stream ended or nothing came.
    pub async fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            let data = match tokio::time::timeout_at(deadline, self.body.chunk()).await {
                Err(_) => return None,
                Ok(None) => {
                    self.ended = true;
                    continue;
                }
                Ok(Some(data)) => data,
            };
            self.buf
                .push_str(std::str::from_utf8(&data).expect("SSE is UTF-8"));
            self.parse();
        }
    }

    /// The next event (comments skipped) within `within`.
    pub async fn next_event(&mut self, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                e @ Sse::Event { .. } => return Some(e),
                Sse::Comment(_) => {}
            }
        }
    }

    /// The next event named `name` within `within`, those before it skipped; `None` when the
    /// stream ended or none came.
    pub async fn event_named(&mut self, name: &str, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = self.next_event(left).await?;
            if matches!(&e, Sse::Event { event, .. } if event == name) {
                return Some(e);
            }
        }
    }

    /// Whether the server ended the stream within `within`.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.next(left).await.is_none() {
                return self.ended;
            }
        }
    }

    fn parse(&mut self) {
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::from("message"), Vec::new());
            let mut saw_field = false;
            for line in block.lines().filter(|l| !l.is_empty()) {
                if let Some(comment) = line.strip_prefix(':') {
                    self.pending
                        .push_back(Sse::Comment(comment.trim().to_owned()));
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = Some(value.to_owned()),
                    "event" => event = value.to_owned(),
                    "data" => data.push(value.to_owned()),
                    "retry" => continue,
                    other => panic!("unknown SSE field {other:?}"),
                }
                saw_field = true;
            }
            if saw_field && !data.is_empty() {
                self.pending.push_back(Sse::Event {
                    id,
                    event,
                    data: data.join("\n"),
                });
            }
        }
    }
}
