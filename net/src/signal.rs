//! A one-shot, single-thread broadcast: "this core is shutting down".
//!
//! Why not a Vec of wakers: waiters re-created in a loop (the accept loop races every accept
//! against it) would push a new waker each turn and grow without bound. Each waiter owns a
//! slab slot instead, overwritten on re-poll and freed on drop.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// `fut`'s output, or `None` when `limit` passes first (on this core's timer wheel).
pub(crate) async fn within<T>(
    limit: std::time::Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// Cloneable handle; all clones observe the same signal. `!Send`: lives on one reactor.
#[derive(Clone, Default)]
pub struct LocalSignal {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    fired: Cell<bool>,
    waiters: RefCell<slab::Slab<Option<Waker>>>,
}

impl LocalSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal (idempotent) and wakes every waiter.
    pub fn fire(&self) {
        if self.inner.fired.replace(true) {
            return;
        }
        let wakers: Vec<Waker> = self
            .inner
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, w)| w.take())
            .collect();
        // Woken outside the borrow: a waker may run code that polls a waiter again.
        wakers.into_iter().for_each(Waker::wake);
    }

    pub fn is_fired(&self) -> bool {
        self.inner.fired.get()
    }

    /// Resolves once [`fire`](Self::fire) has been called.
    pub fn wait(&self) -> Wait {
        Wait {
            inner: self.inner.clone(),
            slot: None,
        }
    }
}

/// Future returned by [`LocalSignal::wait`].
pub struct Wait {
    inner: Rc<Inner>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.inner.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = this.inner.waiters.borrow_mut();
        match this.slot {
            Some(slot) => {
                let w = &mut waiters[slot];
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
            }
            None => this.slot = Some(waiters.insert(Some(cx.waker().clone()))),
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.inner.waiters.borrow_mut().remove(slot);
        }
    }
}

/// A resettable, single-waiter nudge on one reactor: "something changed, look again". Notes
/// made while nobody waits are kept (one is enough), so a change between two waits is never
/// missed. What changed is for the waiter to find out.
#[derive(Default)]
pub struct LocalNotify {
    noted: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl LocalNotify {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a change and wakes the waiter, if one waits.
    pub fn notify(&self) {
        self.noted.set(true);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once a change has been noted since the last time it resolved.
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| {
            if self.noted.replace(false) {
                return Poll::Ready(());
            }
            let mut waiter = self.waiter.borrow_mut();
            if !waiter.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waiter = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn waiters_do_not_accumulate_and_fire_resolves_all() {
        let s = LocalSignal::new();
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..100 {
            let mut w = s.wait();
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        }
        assert_eq!(
            s.inner.waiters.borrow().len(),
            0,
            "dropped waiters free their slot"
        );
        let mut kept = s.wait();
        assert!(Pin::new(&mut kept).poll(&mut cx).is_pending());
        s.fire();
        s.fire();
        assert!(Pin::new(&mut kept).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut s.wait()).poll(&mut cx).is_ready());
    }

    #[test]
    fn a_note_made_while_nobody_waits_is_kept_once() {
        let n = LocalNotify::new();
        let mut cx = Context::from_waker(Waker::noop());
        {
            let mut w = std::pin::pin!(n.notified());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            n.notify();
            assert!(w.as_mut().poll(&mut cx).is_ready());
        }
        n.notify();
        n.notify();
        assert!(std::pin::pin!(n.notified()).poll(&mut cx).is_ready());
        assert!(
            std::pin::pin!(n.notified()).poll(&mut cx).is_pending(),
            "two notes before a wait resolve one wait"
        );
    }
}
