//! The tab pool: lends tabs to requests, one request per tab at a time.
//!
//! A request takes an idle tab at once (preferring one already warm for its bot), or waits
//! in a bounded FIFO queue; past the queue's capacity it gets `busy` immediately, never a
//! hang. A returned tab goes to the oldest waiter still waiting; a waiter that gave up
//! (cancelled, disconnected) has dropped its receiver and is skipped. The same chat can
//! never receive a second prompt while a reply streams, because a tab is only ever lent to
//! one request.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::browser::tab::Tab;
use crate::error::{Error, ErrorKind};
use crate::protocol::PoolStatus;

/// What the pool lends: a [`Tab`] in the daemon, anything in unit tests.
pub trait Lendable: Send + 'static {
    /// The bot whose fresh chat is ready in this item, if any.
    fn warm_for(&self) -> Option<&str>;
    /// False once the item can never serve again (its browser died).
    fn usable(&self) -> bool {
        true
    }
    /// Forgets that the item is warm (its page no longer reflects the session).
    fn cool(&mut self);
}

impl Lendable for Tab {
    fn warm_for(&self) -> Option<&str> {
        self.warm_for.as_deref()
    }
    fn usable(&self) -> bool {
        !self.is_gone()
    }
    fn cool(&mut self) {
        self.warm_for = None;
    }
}

struct Waiter<T> {
    tx: oneshot::Sender<T>,
}

struct PoolState<T> {
    idle: Vec<T>,
    waiters: VecDeque<Waiter<T>>,
    /// Tabs that exist (idle, lent, or being prepared).
    tabs: usize,
    closed: bool,
}

impl<T> Default for PoolState<T> {
    fn default() -> Self {
        PoolState {
            idle: Vec::new(),
            waiters: VecDeque::new(),
            tabs: 0,
            closed: false,
        }
    }
}

/// A place in the queue.
pub struct QueueTicket<T = Tab> {
    /// 1 = next in line, at the time of queueing.
    pub position: usize,
    rx: oneshot::Receiver<T>,
}

impl<T> QueueTicket<T> {
    /// Waits for a tab. Dropping the ticket leaves the queue.
    pub async fn wait(self) -> Result<T, Error> {
        self.rx.await.map_err(|_| {
            Error::new(
                ErrorKind::ShuttingDown,
                "poed is shutting down; retry when it is back",
            )
        })
    }
}

/// Result of [`TabPool::acquire`].
pub enum Acquired<T = Tab> {
    Now(T),
    Queued(QueueTicket<T>),
}

pub struct TabPool<T = Tab> {
    state: Mutex<PoolState<T>>,
    queue_capacity: usize,
}

impl<T: Lendable> TabPool<T> {
    pub fn new(queue_capacity: usize) -> Self {
        TabPool {
            state: Mutex::new(PoolState::default()),
            queue_capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new tab that will arrive through [`TabPool::release`] once prepared.
    pub fn register_tab(&self) {
        self.lock().tabs += 1;
    }

    /// Forgets a tab that died while lent out.
    pub fn unregister_tab(&self) {
        let mut s = self.lock();
        s.tabs = s.tabs.saturating_sub(1);
    }

    /// Takes an idle tab (one warm for `bot` if possible) or a place in the queue.
    pub fn acquire(&self, bot: &str) -> Result<Acquired<T>, Error> {
        let mut s = self.lock();
        if s.closed {
            return Err(Error::new(
                ErrorKind::ShuttingDown,
                "poed is shutting down; retry when it is back",
            ));
        }
        let before = s.idle.len();
        s.idle.retain(|t| t.usable());
        let dead = before - s.idle.len();
        s.tabs = s.tabs.saturating_sub(dead);
        if !s.idle.is_empty() {
            let i = s
                .idle
                .iter()
                .position(|t| t.warm_for() == Some(bot))
                .or_else(|| s.idle.iter().position(|t| t.warm_for().is_none()))
                .unwrap_or(s.idle.len() - 1);
            return Ok(Acquired::Now(s.idle.swap_remove(i)));
        }
        s.waiters.retain(|w| !w.tx.is_closed());
        if s.waiters.len() >= self.queue_capacity {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "all {} tabs are busy and the queue of {} is full; retry shortly, or raise pool.queue in the config",
                    s.tabs,
                    self.queue_capacity
                ),
            ));
        }
        let (tx, rx) = oneshot::channel();
        s.waiters.push_back(Waiter { tx });
        Ok(Acquired::Queued(QueueTicket {
            position: s.waiters.len(),
            rx,
        }))
    }

    /// Drops idle items that can never serve again; returns how many.
    pub fn purge(&self) -> usize {
        let mut s = self.lock();
        let before = s.idle.len();
        s.idle.retain(|t| t.usable());
        let dead = before - s.idle.len();
        s.tabs = s.tabs.saturating_sub(dead);
        dead
    }

    /// Marks every idle item cold, e.g. after the session cookies changed.
    pub fn cool_all(&self) {
        for t in self.lock().idle.iter_mut() {
            t.cool();
        }
    }

    /// Returns a ready tab: to the oldest live waiter, else to the idle set.
    pub fn release(&self, mut tab: T) {
        let mut s = self.lock();
        if s.closed {
            drop(s);
            drop(tab);
            return;
        }
        while let Some(w) = s.waiters.pop_front() {
            match w.tx.send(tab) {
                Ok(()) => return,
                Err(back) => tab = back,
            }
        }
        s.idle.push(tab);
    }

    /// Stops lending: waiters get `shutting_down`; returns the idle tabs for closing.
    pub fn close(&self) -> Vec<T> {
        let mut s = self.lock();
        s.closed = true;
        s.waiters.clear();
        std::mem::take(&mut s.idle)
    }

    pub fn status(&self) -> PoolStatus {
        let s = self.lock();
        PoolStatus {
            tabs: s.tabs,
            idle: s.idle.len(),
            busy: s.tabs.saturating_sub(s.idle.len()),
            warm: s.idle.iter().filter(|t| t.warm_for().is_some()).count(),
            queued: s.waiters.iter().filter(|w| !w.tx.is_closed()).count(),
            queue_capacity: self.queue_capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    struct Fake(&'static str, Option<&'static str>);

    impl Lendable for Fake {
        fn warm_for(&self) -> Option<&str> {
            self.1
        }
        fn cool(&mut self) {
            self.1 = None;
        }
    }

    fn pool(capacity: usize, items: Vec<Fake>) -> TabPool<Fake> {
        let p = TabPool::new(capacity);
        for item in items {
            p.register_tab();
            p.release(item);
        }
        p
    }

    fn now(a: Acquired<Fake>) -> Fake {
        match a {
            Acquired::Now(t) => t,
            Acquired::Queued(_) => panic!("expected a tab at once"),
        }
    }

    fn queued(a: Acquired<Fake>) -> QueueTicket<Fake> {
        match a {
            Acquired::Queued(q) => q,
            Acquired::Now(t) => panic!("expected to queue, got {t:?}"),
        }
    }

    #[test]
    fn prefers_a_tab_warm_for_the_bot_then_a_cold_one() {
        let p = pool(
            1,
            vec![
                Fake("a", Some("GPT-4")),
                Fake("b", None),
                Fake("c", Some("X")),
            ],
        );
        assert_eq!(now(p.acquire("GPT-4").expect("ok")).0, "a");
        assert_eq!(now(p.acquire("Other").expect("ok")).0, "b");
        assert_eq!(now(p.acquire("Other").expect("ok")).0, "c");
        assert_eq!(p.status().busy, 3);
    }

    #[tokio::test]
    async fn queue_is_fifo_bounded_and_skips_those_who_left() {
        let p = pool(2, vec![Fake("only", None)]);
        let tab = now(p.acquire("b").expect("ok"));
        let first = queued(p.acquire("b").expect("queued"));
        let second = queued(p.acquire("b").expect("queued"));
        assert_eq!((first.position, second.position), (1, 2));
        let e = p.acquire("b").err().expect("busy");
        assert_eq!(e.kind, ErrorKind::Busy);
        // The first waiter gives up; the tab goes to the second.
        drop(first);
        p.release(tab);
        let got = tokio::time::timeout(Duration::from_secs(1), second.wait())
            .await
            .expect("in time")
            .expect("tab");
        assert_eq!(got.0, "only");
        assert_eq!(p.status().queued, 0);
    }

    #[tokio::test]
    async fn close_fails_waiters_with_shutting_down() {
        let p = pool(4, vec![Fake("t", None)]);
        let _tab = now(p.acquire("b").expect("ok"));
        let waiting = queued(p.acquire("b").expect("queued"));
        assert!(p.close().is_empty());
        let e = waiting.wait().await.expect_err("closed");
        assert_eq!(e.kind, ErrorKind::ShuttingDown);
        assert_eq!(
            p.acquire("b").err().map(|e| e.kind),
            Some(ErrorKind::ShuttingDown)
        );
    }
}
