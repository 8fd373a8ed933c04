//! Cross-core messaging: a full mesh of bounded single-producer/single-consumer queues, one per
//! ordered pair of cores, plus a bounded local queue for messages a core sends to itself.
//!
//! * Remote queues are glommio `shared_channel`s (lock-free SPSC rings; the receiver's reactor
//!   is woken through its eventfd when it sleeps). We build the mesh ourselves rather than with
//!   glommio's `MeshBuilder`, whose peer ids follow join order, not our core index.
//! * Every queue is bounded ([`crate::ReactorConfig::mesh_capacity`]). [`Mesh::try_send`] on a full
//!   queue returns [`SendError::Full`]: that is the backpressure signal the app turns into a 503.
//! * Replies go back through [`reply_channel`], a `futures-channel` oneshot. Completing it on
//!   core B calls the Waker of a task on core A from B's thread. glommio 0.9 supports that
//!   ("foreign wake", `task/raw.rs`): the waker's reference count is atomic and a wake from
//!   another thread is queued to the owner's SleepNotifier (a crossbeam channel) and the owner
//!   is woken through its eventfd if it sleeps; the task itself is only ever touched by its own
//!   thread. So the oneshot is sound across reactors (and from plain threads).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use futures_lite::Stream;
use glommio::GlommioError;
use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

/// Why a message was not queued. The message is handed back.
pub enum SendError<M> {
    /// The destination queue is at capacity: shed load (503), do not buffer.
    Full(M),
    /// The destination core is gone (shutting down).
    Closed(M),
    /// No core with that index.
    NoSuchCore(M),
}

impl<M> SendError<M> {
    pub fn into_inner(self) -> M {
        match self {
            Self::Full(m) | Self::Closed(m) | Self::NoSuchCore(m) => m,
        }
    }
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_))
    }
}

impl<M> fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<M> fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "destination core queue is full",
            Self::Closed(_) => "destination core is shutting down",
            Self::NoSuchCore(_) => "no such core",
        })
    }
}

impl<M> std::error::Error for SendError<M> {}

/// The per-core ends of the mesh before they are connected inside their executors.
/// `Send`, so it travels from the spawning thread to the core's thread.
pub(crate) struct MeshEnds<M: Send + 'static> {
    pub(crate) me: usize,
    pub(crate) capacity: usize,
    /// `senders[j]` sends to core j; `None` at `me`.
    pub(crate) senders: Vec<Option<SharedSender<M>>>,
    /// `receivers[i]` receives from core i; `None` at `me`.
    pub(crate) receivers: Vec<Option<SharedReceiver<M>>>,
}

/// Creates the n×(n-1) bounded queues and deals them out per core.
pub(crate) fn build_mesh<M: Send + 'static>(n: usize, capacity: usize) -> Vec<MeshEnds<M>> {
    assert!(n > 0 && capacity > 0);
    let mut ends: Vec<MeshEnds<M>> = (0..n)
        .map(|me| MeshEnds {
            me,
            capacity,
            senders: (0..n).map(|_| None).collect(),
            receivers: (0..n).map(|_| None).collect(),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = glommio::channels::shared_channel::new_bounded(capacity);
                ends[from].senders[to] = Some(tx);
                ends[to].receivers[from] = Some(rx);
            }
        }
    }
    ends
}

impl<M: Send + 'static> MeshEnds<M> {
    /// Connects every end. All at once: a sender's `connect` waits for its peer receiver, so
    /// connecting one by one would deadlock two cores each waiting on the other.
    pub(crate) async fn connect(self) -> (Mesh<M>, Inbox<M>) {
        let n = self.senders.len();
        let local = Rc::new(LocalQueue::new(self.capacity));
        let senders = join_all(self.senders.into_iter().map(|s| async move {
            match s {
                Some(s) => Some(s.connect().await),
                None => None,
            }
        }));
        let receivers = join_all(self.receivers.into_iter().map(|r| async move {
            match r {
                Some(r) => Some(r.connect().await),
                None => None,
            }
        }));
        let (senders, receivers) = futures_lite::future::zip(senders, receivers).await;
        let parent = Arc::new(AtomicWaker::new());
        let slots = receivers
            .into_iter()
            .map(|r| {
                r.map(|rx| {
                    let flag = Arc::new(SlotWake {
                        ready: AtomicBool::new(true),
                        parent: parent.clone(),
                    });
                    Slot {
                        rx,
                        waker: Waker::from(flag.clone()),
                        flag,
                    }
                })
            })
            .collect();
        let mesh = Mesh {
            inner: Rc::new(MeshInner {
                me: self.me,
                senders,
                local: local.clone(),
            }),
        };
        let inbox = Inbox {
            me: self.me,
            slots,
            local,
            parent,
            next: 0,
            n,
        };
        (mesh, inbox)
    }
}

/// Sending side of the mesh for one core. Cheap to clone (`Rc`); `!Send`.
pub struct Mesh<M: Send + 'static> {
    inner: Rc<MeshInner<M>>,
}

impl<M: Send + 'static> Clone for Mesh<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct MeshInner<M: Send + 'static> {
    me: usize,
    senders: Vec<Option<ConnectedSender<M>>>,
    local: Rc<LocalQueue<M>>,
}

impl<M: Send + 'static> Mesh<M> {
    pub fn core_index(&self) -> usize {
        self.inner.me
    }

    pub fn cores(&self) -> usize {
        self.inner.senders.len()
    }

    /// Queues `msg` for core `to` without waiting. A full queue is [`SendError::Full`].
    pub fn try_send(&self, to: usize, msg: M) -> Result<(), SendError<M>> {
        if to == self.inner.me {
            return self.inner.local.try_push(msg);
        }
        match self.inner.senders.get(to) {
            Some(Some(tx)) => tx.try_send(msg).map_err(|e| match e {
                GlommioError::WouldBlock(r) => SendError::Full(resource(r)),
                GlommioError::Closed(r) => SendError::Closed(resource(r)),
                // try_send only fails with the two above; anything else means closed.
                other => panic!("unexpected shared_channel error: {other}"),
            }),
            _ => Err(SendError::NoSuchCore(msg)),
        }
    }

    /// Queues `msg` for core `to`, waiting for room. Pair it with a timeout: an unbounded wait
    /// on a saturated core only moves the queue into the waiting tasks.
    pub async fn send(&self, to: usize, msg: M) -> Result<(), SendError<M>> {
        if to == self.inner.me {
            let mut msg = Some(msg);
            return futures_lite::future::poll_fn(|cx| {
                let m = msg.take().expect("polled after completion");
                match self.inner.local.try_push(m) {
                    Err(SendError::Full(m)) => {
                        msg = Some(m);
                        self.inner.local.wait_room(cx.waker());
                        Poll::Pending
                    }
                    other => Poll::Ready(other),
                }
            })
            .await;
        }
        match self.inner.senders.get(to) {
            Some(Some(tx)) => tx.send(msg).await.map_err(|e| match e {
                GlommioError::Closed(r) => SendError::Closed(resource(r)),
                GlommioError::WouldBlock(r) => SendError::Full(resource(r)),
                other => panic!("unexpected shared_channel error: {other}"),
            }),
            _ => Err(SendError::NoSuchCore(msg)),
        }
    }
}

fn resource<M>(r: glommio::ResourceType<M>) -> M {
    match r {
        glommio::ResourceType::Channel(m) => m,
        _ => unreachable!("a channel error always carries the message"),
    }
}

/// Bounded queue for messages a core sends to itself (no cross-thread ring needed).
struct LocalQueue<M> {
    capacity: usize,
    queue: RefCell<VecDeque<M>>,
    consumer: RefCell<Option<Waker>>,
    /// Senders waiting for room; deduplicated, and bounded by the number of waiting tasks.
    room: RefCell<Vec<Waker>>,
    inbox_alive: Cell<bool>,
}

impl<M> LocalQueue<M> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            queue: RefCell::new(VecDeque::with_capacity(capacity.min(1024))),
            consumer: RefCell::new(None),
            room: RefCell::new(Vec::new()),
            inbox_alive: Cell::new(true),
        }
    }

    fn try_push(&self, msg: M) -> Result<(), SendError<M>> {
        if !self.inbox_alive.get() {
            return Err(SendError::Closed(msg));
        }
        let mut q = self.queue.borrow_mut();
        if q.len() >= self.capacity {
            return Err(SendError::Full(msg));
        }
        q.push_back(msg);
        drop(q);
        if let Some(w) = self.consumer.borrow_mut().take() {
            w.wake();
        }
        Ok(())
    }

    fn pop(&self) -> Option<M> {
        let m = self.queue.borrow_mut().pop_front();
        if m.is_some() {
            let waiters = std::mem::take(&mut *self.room.borrow_mut());
            waiters.into_iter().for_each(Waker::wake);
        }
        m
    }

    fn wait_room(&self, waker: &Waker) {
        let mut room = self.room.borrow_mut();
        if !room.iter().any(|w| w.will_wake(waker)) {
            room.push(waker.clone());
        }
    }
}

/// Receiving side of the mesh for one core: messages from every core (itself included), with
/// the index of the sender. Round-robin over the sources so one busy peer cannot starve others.
pub struct Inbox<M: Send + 'static> {
    me: usize,
    n: usize,
    slots: Vec<Option<Slot<M>>>,
    local: Rc<LocalQueue<M>>,
    parent: Arc<AtomicWaker>,
    next: usize,
}

/// One remote source. glommio's receiver pushes a new waker into its reactor on *every*
/// pending poll and drains them only when data arrives, so polling an idle receiver each time
/// a sibling is busy would grow that list without bound. We therefore poll a receiver only
/// after its own waker fired (`flag.ready`), keeping at most one waker registered per receiver.
struct Slot<M: Send + 'static> {
    rx: ConnectedReceiver<M>,
    flag: Arc<SlotWake>,
    waker: Waker,
}

struct SlotWake {
    ready: AtomicBool,
    parent: Arc<AtomicWaker>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.parent.wake();
    }
}

impl<M: Send + 'static> Inbox<M> {
    pub fn core_index(&self) -> usize {
        self.me
    }

    /// Next message and the index of the core that sent it; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<(usize, M)> {
        futures_lite::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, M)>> {
        self.parent.register(cx.waker());
        let mut open = 0;
        for k in 0..self.n {
            let idx = (self.next + k) % self.n;
            if idx == self.me {
                if let Some(m) = self.local.pop() {
                    self.next = idx + 1;
                    return Poll::Ready(Some((idx, m)));
                }
                *self.local.consumer.borrow_mut() = Some(cx.waker().clone());
                // The local queue stays open while any Mesh handle (the sender side) lives.
                if Rc::strong_count(&self.local) > 1 {
                    open += 1;
                }
                continue;
            }
            let Some(slot) = self.slots[idx].as_mut() else {
                continue;
            };
            open += 1;
            if !slot.flag.ready.swap(false, Ordering::AcqRel) {
                continue;
            }
            let mut scx = Context::from_waker(&slot.waker);
            match Pin::new(&mut slot.rx).poll_next(&mut scx) {
                Poll::Ready(Some(m)) => {
                    // There may be more behind it: keep the slot hot.
                    slot.flag.ready.store(true, Ordering::Release);
                    self.next = idx + 1;
                    return Poll::Ready(Some((idx, m)));
                }
                Poll::Ready(None) => {
                    self.slots[idx] = None;
                    open -= 1;
                }
                Poll::Pending => {}
            }
        }
        if open == 0 {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl<M: Send + 'static> Drop for Inbox<M> {
    fn drop(&mut self) {
        self.local.inbox_alive.set(false);
    }
}

impl<M: Send + 'static> Stream for Inbox<M> {
    type Item = (usize, M);
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

/// The replying core dropped the [`ReplyTx`] without answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reply was dropped without an answer")]
pub struct ReplyDropped;

/// Sending half of a reply: `Send`, travels inside a mesh message to the core that answers.
pub struct ReplyTx<T>(futures_channel::oneshot::Sender<T>);

/// Receiving half: awaited by the task on the originating core.
pub struct ReplyRx<T>(futures_channel::oneshot::Receiver<T>);

/// A one-shot reply channel that may cross reactors (see the module comment for soundness).
pub fn reply_channel<T: Send>() -> (ReplyTx<T>, ReplyRx<T>) {
    let (tx, rx) = futures_channel::oneshot::channel();
    (ReplyTx(tx), ReplyRx(rx))
}

impl<T> ReplyTx<T> {
    /// Answers; gives the value back if the asker is gone (request cancelled).
    pub fn send(self, value: T) -> Result<(), T> {
        self.0.send(value)
    }
    /// Whether the asker stopped waiting: lets the answering core skip useless work.
    pub fn is_canceled(&self) -> bool {
        self.0.is_canceled()
    }
}

impl<T> Future for ReplyRx<T> {
    type Output = Result<T, ReplyDropped>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0)
            .poll(cx)
            .map(|r| r.map_err(|_| ReplyDropped))
    }
}

/// `join_all` for a handful of futures (n ≤ cores), polled together on the current task.
async fn join_all<F: Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("all ready")).collect()
}
