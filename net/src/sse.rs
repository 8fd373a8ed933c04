//! Server-Sent Events on one reactor: a [`Topic`] holds the latest frame of a stream (say, an
//! election's results) and every [`Subscriber`] is a response body that sends each new frame,
//! a heartbeat comment when nothing happened for a while, and ends after a terminal frame.
//!
//! Why "latest frame" and not a queue per subscriber: results are absolute, so a subscriber that
//! was slow to take one update loses nothing by getting only the newest. A subscriber costs one
//! slab slot (its waker) and a small struct, whatever the update rate, and publishing is one
//! pass over the wakers: the frame itself is one shared `Bytes`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::Stream;
use glommio::timer::Timer;

use crate::LocalSignal;

/// The comment line sent when a stream has been quiet for the heartbeat interval; proxies and
/// load balancers see traffic, clients see the connection is alive.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// One event: `id`, `event` and one `data` line. `data` is one line by construction (compact
/// JSON escapes its newlines); a newline in it would split the event, so it is refused.
pub fn frame(id: &str, event: &str, data: &[u8]) -> Bytes {
    assert!(
        !id.contains(['\n', '\r']) && !event.contains(['\n', '\r']),
        "SSE field values are single lines"
    );
    assert!(
        !data.contains(&b'\n') && !data.contains(&b'\r'),
        "SSE data is one line"
    );
    let mut out = BytesMut::with_capacity(id.len() + event.len() + data.len() + 24);
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_slice(b"\nevent: ");
    out.put_slice(event.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// `retry:` tells the browser how long to wait before reconnecting.
pub fn retry(ms: u32) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// The latest frame of one stream on this core, and who waits for the next.
#[derive(Clone, Default)]
pub struct Topic {
    inner: Rc<TopicInner>,
}

#[derive(Default)]
struct TopicInner {
    /// Bumped by every publish; a subscriber sends when its own copy is behind.
    version: Cell<u64>,
    latest: RefCell<Option<(Bytes, bool)>>,
    waiters: RefCell<slab::Slab<Option<Waker>>>,
    closed: Cell<bool>,
}

impl Topic {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the latest frame and wakes every subscriber. After a `terminal` frame each
    /// subscriber ends its stream once it has sent it.
    pub fn publish(&self, frame: Bytes, terminal: bool) {
        let inner = &self.inner;
        assert!(!inner.closed.get(), "publish after close");
        *inner.latest.borrow_mut() = Some((frame, terminal));
        inner.version.set(inner.version.get() + 1);
        inner.wake_all();
    }

    /// Ends every subscriber's stream (after what it has already sent).
    pub fn close(&self) {
        self.inner.closed.set(true);
        self.inner.wake_all();
    }

    /// Open subscriptions.
    pub fn subscribers(&self) -> usize {
        self.inner.waiters.borrow().len()
    }

    /// A new subscriber. `first` is sent before anything else (e.g. `retry:` and the current
    /// state); the latest frame already published counts as seen, so it is not sent twice.
    pub fn subscribe(
        &self,
        first: Option<Bytes>,
        heartbeat: Duration,
        shutdown: Option<LocalSignal>,
    ) -> Subscriber {
        self.subscribe_with(first, heartbeat, Bytes::from_static(HEARTBEAT), shutdown)
    }

    /// [`subscribe`](Self::subscribe) for a stream whose heartbeat is another frame (a
    /// WebSocket ping).
    pub fn subscribe_with(
        &self,
        first: Option<Bytes>,
        heartbeat: Duration,
        heartbeat_frame: Bytes,
        shutdown: Option<LocalSignal>,
    ) -> Subscriber {
        assert!(!heartbeat.is_zero(), "a heartbeat interval is set");
        let slot = self.inner.waiters.borrow_mut().insert(None);
        Subscriber {
            topic: self.inner.clone(),
            slot,
            seen: self.inner.version.get(),
            first,
            heartbeat,
            heartbeat_frame,
            timer: Timer::new(heartbeat),
            shutdown: shutdown.map(|s| s.wait()),
            done: false,
        }
    }
}

impl TopicInner {
    fn wake_all(&self) {
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, w)| w.take())
            .collect();
        for w in wakers {
            w.wake();
        }
    }
}

/// One subscriber's stream of frames; a response body through `BoxBody::stream`.
pub struct Subscriber {
    topic: Rc<TopicInner>,
    slot: usize,
    seen: u64,
    first: Option<Bytes>,
    heartbeat: Duration,
    heartbeat_frame: Bytes,
    timer: Timer,
    shutdown: Option<crate::Wait>,
    done: bool,
}

impl Subscriber {
    /// The terminal frame was handed out: the stream ends next.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

impl Stream for Subscriber {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let topic = &this.topic;
        if topic.version.get() != this.seen {
            this.seen = topic.version.get();
            if let Some((frame, terminal)) = topic.latest.borrow().clone() {
                this.done = terminal;
                this.timer.reset(this.heartbeat);
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        if topic.closed.get() {
            return Poll::Ready(None);
        }
        if let Some(s) = this.shutdown.as_mut()
            && Pin::new(s).poll(cx).is_ready()
        {
            return Poll::Ready(None);
        }
        if Pin::new(&mut this.timer).poll(cx).is_ready() {
            this.timer = Timer::new(this.heartbeat);
            // Poll the fresh timer once so its waker is registered.
            let _ = Pin::new(&mut this.timer).poll(cx);
            return Poll::Ready(Some(Ok(this.heartbeat_frame.clone())));
        }
        // One slot per subscriber, overwritten on each poll: waiting never grows memory.
        if let Some(w) = topic.waiters.borrow_mut().get_mut(this.slot) {
            match w {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.topic.waiters.borrow_mut().remove(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::StreamExt;
    use glommio::LocalExecutorBuilder;

    fn run<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        LocalExecutorBuilder::default()
            .spawn(move || async move { f().await })
            .expect("executor")
            .join()
            .expect("test body");
    }

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn frames_have_one_data_line() {
        let f = frame("42", "tally", br#"{"a":1}"#);
        assert_eq!(text(&f), "id: 42\nevent: tally\ndata: {\"a\":1}\n\n");
        assert!(std::panic::catch_unwind(|| frame("1", "x", b"a\nb")).is_err());
    }

    #[test]
    fn subscribers_get_the_first_frame_then_only_the_latest() {
        run(|| async {
            let topic = Topic::new();
            topic.publish(Bytes::from_static(b"old"), false);
            let mut s = topic.subscribe(
                Some(Bytes::from_static(b"first")),
                Duration::from_secs(60),
                None,
            );
            assert_eq!(topic.subscribers(), 1);
            assert_eq!(s.next().await.unwrap().unwrap(), "first");
            // Two publishes before the subscriber looks: it sends only the newer.
            topic.publish(Bytes::from_static(b"v1"), false);
            topic.publish(Bytes::from_static(b"v2"), false);
            assert_eq!(s.next().await.unwrap().unwrap(), "v2");
            let waiter = glommio::spawn_local(async move {
                let got = s.next().await.unwrap().unwrap();
                (got, s)
            });
            glommio::timer::sleep(Duration::from_millis(5)).await;
            topic.publish(Bytes::from_static(b"end"), true);
            let (got, mut s) = waiter.await;
            assert_eq!(got, "end");
            assert!(s.next().await.is_none(), "a terminal frame ends the stream");
            drop(s);
            assert_eq!(
                topic.subscribers(),
                0,
                "a dropped subscriber frees its slot"
            );
        });
    }

    #[test]
    fn a_quiet_stream_sends_heartbeats_and_ends_on_close_or_shutdown() {
        run(|| async {
            let topic = Topic::new();
            let mut s = topic.subscribe(None, Duration::from_millis(20), None);
            assert_eq!(s.next().await.unwrap().unwrap(), HEARTBEAT);
            assert_eq!(s.next().await.unwrap().unwrap(), HEARTBEAT);
            topic.close();
            assert!(s.next().await.is_none());

            let shutdown = LocalSignal::new();
            let topic = Topic::new();
            let mut s = topic.subscribe(None, Duration::from_secs(60), Some(shutdown.clone()));
            let ended = glommio::spawn_local(async move { s.next().await.is_none() });
            glommio::timer::sleep(Duration::from_millis(5)).await;
            shutdown.fire();
            assert!(ended.await, "shutdown ends the stream");
        });
    }
}
