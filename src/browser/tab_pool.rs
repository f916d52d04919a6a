//! The tab pool: lends tabs to requests, one request per tab at a time, and never loses one.
//!
//! A request takes an idle tab at once (preferring one whose page is already what it needs:
//! a fresh chat of its bot, or the site chat it continues; see [`Warm`]), or waits
//! in a bounded FIFO queue; past the queue's capacity it gets `busy` immediately, never a
//! hang. Every tab out of the idle set is held by a [`Lease`]: releasing the lease hands the
//! tab to the oldest waiter still waiting, or back to the idle set; dropping it any other way
//! (an error path, a panic, a dead tab) retires the tab, and the pool counts it as missing so
//! the warm-pool keeper opens a new one ([`TabPool::missing`], [`TabPool::lost`]). A waiter
//! that leaves the queue at the very moment a tab is handed to it passes the tab on, so the
//! hand-over cannot drop it. The same chat never receives a second prompt while a reply
//! streams, because a tab is only ever lent to one request.
//!
//! A conversation's next message often comes the moment its reply ended, while the tab
//! that shows its chat is still being made ready for it ([`TabPool::preparing`]): the
//! request then waits for that tab ([`Acquired::Soon`]) rather than open the chat's page
//! cold in another one. Should the tab not come back showing the chat, the request gets
//! an idle tab, or the front of the queue, as soon as its preparation ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

use crate::browser::tab::Tab;
use crate::error::{Error, ErrorKind};
use crate::protocol::PoolStatus;

/// What page a tab has ready, its prompt box focused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Warm {
    /// A fresh chat with this bot (its handle).
    Bot(String),
    /// The site chat with this code: a conversation to continue there.
    Chat(String),
}

impl Warm {
    pub fn is_chat(&self) -> bool {
        matches!(self, Warm::Chat(_))
    }
}

/// What the pool lends: a [`Tab`] in the daemon, anything in unit tests.
pub trait Lendable: Send + Sized + 'static {
    /// The page ready in this item, if any.
    fn warm_for(&self) -> Option<&Warm>;
    /// False once the item can never serve again (its page or browser died).
    fn usable(&self) -> bool {
        true
    }
    /// Forgets that the item is warm (its page no longer reflects the session).
    fn cool(&mut self);
    /// Disposes of an item the pool gives up on (closes the tab in the browser).
    fn discard(self) {}
}

impl Lendable for Tab {
    fn warm_for(&self) -> Option<&Warm> {
        self.warm_for.as_ref()
    }
    fn usable(&self) -> bool {
        !self.is_gone()
    }
    fn cool(&mut self) {
        self.warm_for = None;
    }
    // A dropped tab closes itself in the browser (see `Tab`'s `Drop`).
}

struct PoolState<T: Lendable> {
    idle: Vec<T>,
    waiters: VecDeque<oneshot::Sender<Lease<T>>>,
    /// The pages tabs are being made ready for (one entry per tab).
    preparing: Vec<Warm>,
    /// Requests waiting for the tab being made ready for their chat's page.
    reserved: Vec<(Warm, oneshot::Sender<Lease<T>>)>,
    /// Tabs that exist: idle or leased.
    tabs: usize,
    closed: bool,
}

/// A tab out of the idle set. Release it with [`Lease::release`]; dropping it retires the tab.
pub struct Lease<T: Lendable = Tab> {
    item: Option<T>,
    pool: Arc<TabPool<T>>,
}

impl<T: Lendable> Lease<T> {
    /// Returns the tab for the next request (the oldest waiter, else the idle set).
    pub fn release(mut self) {
        if let Some(item) = self.item.take() {
            self.pool.put_back(item);
        }
    }

    /// Gives up on the tab (it died or hangs): it is discarded and counted as missing.
    pub fn retire(self) {
        drop(self);
    }

    /// Swaps the leased tab for another one (a replacement for a crashed tab); the old one
    /// is returned for closing.
    pub fn replace(&mut self, new: T) -> Option<T> {
        self.item.replace(new)
    }
}

impl<T: Lendable> std::ops::Deref for Lease<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // A lease holds its item until it is released or dropped.
        self.item
            .as_ref()
            .unwrap_or_else(|| unreachable!("a lease always holds its item"))
    }
}

impl<T: Lendable> std::ops::DerefMut for Lease<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item
            .as_mut()
            .unwrap_or_else(|| unreachable!("a lease always holds its item"))
    }
}

impl<T: Lendable> Drop for Lease<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.pool.forget(1);
            item.discard();
        }
    }
}

/// A place in the queue. Dropping it leaves the queue; a tab handed over meanwhile goes on
/// to the next waiter.
pub struct QueueTicket<T: Lendable = Tab> {
    /// 1 = next in line, at the time of queueing.
    pub position: usize,
    rx: Option<oneshot::Receiver<Lease<T>>>,
}

impl<T: Lendable> QueueTicket<T> {
    /// Waits for a tab.
    pub async fn wait(mut self) -> Result<Lease<T>, Error> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(shutting_down());
        };
        let got = rx.await.map_err(|_| shutting_down());
        self.rx = None;
        got
    }
}

impl<T: Lendable> Drop for QueueTicket<T> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            // A tab sent just before the close is still in the channel: pass it on.
            if let Ok(lease) = rx.try_recv() {
                lease.release();
            }
        }
    }
}

fn shutting_down() -> Error {
    Error::new(
        ErrorKind::ShuttingDown,
        "poed is shutting down; retry when it is back",
    )
}

/// Result of [`TabPool::acquire`].
pub enum Acquired<T: Lendable = Tab> {
    Now(Lease<T>),
    Queued(QueueTicket<T>),
    /// The tab being made ready for the wanted chat's page: a moment's wait, not a place in
    /// the queue.
    Soon(QueueTicket<T>),
}

/// A tab being made ready for a chat's page, as [`TabPool::preparing`] registered it.
/// Dropped once the tab was released (or retired): requests that waited for it and did not
/// get it are served then.
pub struct Preparing<T: Lendable = Tab> {
    pool: Arc<TabPool<T>>,
    warm: Warm,
}

impl<T: Lendable> Drop for Preparing<T> {
    fn drop(&mut self) {
        let mut s = self.pool.lock();
        if let Some(i) = s.preparing.iter().position(|w| *w == self.warm) {
            s.preparing.remove(i);
        }
        if s.preparing.contains(&self.warm) {
            return;
        }
        let (orphans, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut s.reserved)
            .into_iter()
            .partition(|(w, _)| *w == self.warm);
        s.reserved = kept;
        for (want, tx) in orphans {
            if tx.is_closed() {
                continue;
            }
            if let Some(i) = TabPool::pick(&s.idle, &want) {
                let lease = Lease {
                    item: Some(s.idle.remove(i)),
                    pool: self.pool.clone(),
                };
                match tx.send(lease) {
                    Ok(()) => continue,
                    Err(mut back) => {
                        if let Some(item) = back.item.take() {
                            s.idle.insert(i, item);
                        }
                        continue;
                    }
                }
            }
            // No idle tab: first in the queue (it has waited since before the others).
            if !s.closed {
                s.waiters.push_front(tx);
            }
        }
    }
}

pub struct TabPool<T: Lendable = Tab> {
    state: Mutex<PoolState<T>>,
    queue_capacity: usize,
    /// How many tabs the pool should have.
    target: usize,
    /// Woken whenever a tab is retired, so the keeper can replace it.
    lost: Notify,
    /// Woken whenever a request starts waiting for a tab (see [`TabPool::on_queued`]).
    queued: Notify,
}

impl<T: Lendable> TabPool<T> {
    pub fn new(target: usize, queue_capacity: usize) -> Arc<Self> {
        Arc::new(TabPool {
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                waiters: VecDeque::new(),
                preparing: Vec::new(),
                reserved: Vec::new(),
                tabs: 0,
                closed: false,
            }),
            queue_capacity,
            target,
            lost: Notify::new(),
            queued: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new tab and lends it to its opener (to prepare it, then release it).
    pub fn adopt(self: &Arc<Self>, item: T) -> Lease<T> {
        self.lock().tabs += 1;
        Lease {
            item: Some(item),
            pool: self.clone(),
        }
    }

    /// How many tabs are missing from the configured size.
    pub fn missing(&self) -> usize {
        let s = self.lock();
        if s.closed {
            return 0;
        }
        self.target.saturating_sub(s.tabs)
    }

    /// Resolves when a tab was retired since the last call (or is already missing).
    pub async fn lost(&self) {
        self.lost.notified().await;
    }

    fn forget(&self, n: usize) {
        if n == 0 {
            return;
        }
        {
            let mut s = self.lock();
            s.tabs = s.tabs.saturating_sub(n);
        }
        self.lost.notify_one();
    }

    /// Takes dead items out of the idle set; returns them for disposal.
    fn take_dead(s: &mut PoolState<T>) -> Vec<T> {
        let (alive, dead): (Vec<T>, Vec<T>) = s.idle.drain(..).partition(|t| t.usable());
        s.idle = alive;
        s.tabs = s.tabs.saturating_sub(dead.len());
        dead
    }

    fn dispose(&self, dead: Vec<T>) {
        if dead.is_empty() {
            return;
        }
        for item in dead {
            item.discard();
        }
        self.lost.notify_one();
    }

    /// Which idle tab a request for `want` takes: the one whose page is `want` if there is
    /// one, else a cold one, else one warm for a fresh chat, else the one that has kept a
    /// chat's page the longest: the pages most likely to be wanted next are kept.
    fn pick(idle: &[T], want: &Warm) -> Option<usize> {
        if idle.is_empty() {
            return None;
        }
        let i = idle
            .iter()
            .position(|t| t.warm_for() == Some(want))
            .or_else(|| idle.iter().position(|t| t.warm_for().is_none()))
            .or_else(|| {
                idle.iter()
                    .position(|t| t.warm_for().is_some_and(|w| !w.is_chat()))
            })
            .unwrap_or(0);
        Some(i)
    }

    /// Registers `lease`'s tab as being made ready for `warm` (a chat's page) until the
    /// returned guard is dropped, which must come after the tab's release: a request for
    /// that chat meanwhile waits for this tab ([`Acquired::Soon`]).
    pub fn preparing(self: &Arc<Self>, warm: Warm) -> Preparing<T> {
        self.lock().preparing.push(warm.clone());
        Preparing {
            pool: self.clone(),
            warm,
        }
    }

    /// Takes an idle tab (see `pick`), or waits for the tab being made ready for the wanted
    /// chat's page, or takes a place in the queue.
    pub fn acquire(self: &Arc<Self>, want: &Warm) -> Result<Acquired<T>, Error> {
        let mut s = self.lock();
        if s.closed {
            return Err(shutting_down());
        }
        let dead = Self::take_dead(&mut s);
        s.reserved.retain(|(_, tx)| !tx.is_closed());
        let ready_soon = want.is_chat()
            && !s.idle.iter().any(|t| t.warm_for() == Some(want))
            && s.preparing.iter().filter(|w| *w == want).count()
                > s.reserved.iter().filter(|(w, _)| w == want).count();
        let result = if ready_soon {
            let (tx, rx) = oneshot::channel();
            s.reserved.push((want.clone(), tx));
            Ok(Acquired::Soon(QueueTicket {
                position: 0,
                rx: Some(rx),
            }))
        } else if let Some(i) = Self::pick(&s.idle, want) {
            // `remove` keeps the idle set in release order (oldest first).
            let item = s.idle.remove(i);
            Ok(Acquired::Now(Lease {
                item: Some(item),
                pool: self.clone(),
            }))
        } else {
            s.waiters.retain(|w| !w.is_closed());
            if s.waiters.len() >= self.queue_capacity {
                Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "all {} tabs are busy and the queue of {} is full; retry shortly, or raise pool.queue in the config",
                        s.tabs, self.queue_capacity
                    ),
                ))
            } else {
                let (tx, rx) = oneshot::channel();
                s.waiters.push_back(tx);
                self.queued.notify_waiters();
                Ok(Acquired::Queued(QueueTicket {
                    position: s.waiters.len(),
                    rx: Some(rx),
                }))
            }
        };
        drop(s);
        self.dispose(dead);
        result
    }

    /// A released item: to the oldest live waiter, else to the idle set.
    fn put_back(self: &Arc<Self>, item: T) {
        let mut s = self.lock();
        if s.closed || !item.usable() {
            s.tabs = s.tabs.saturating_sub(1);
            drop(s);
            self.dispose(vec![item]);
            return;
        }
        let mut lease = Lease {
            item: Some(item),
            pool: self.clone(),
        };
        // A request waiting for this very page comes first.
        if let Some(want) = lease.warm_for().cloned() {
            while let Some(i) = s.reserved.iter().position(|(w, _)| *w == want) {
                let (_, tx) = s.reserved.remove(i);
                match tx.send(lease) {
                    Ok(()) => return,
                    Err(back) => lease = back,
                }
            }
        }
        while let Some(w) = s.waiters.pop_front() {
            match w.send(lease) {
                Ok(()) => return,
                Err(back) => lease = back,
            }
        }
        if let Some(item) = lease.item.take() {
            // One tab per chat: another idle tab showing the same chat is stale now.
            if let Some(w @ Warm::Chat(_)) = item.warm_for().cloned() {
                for other in s.idle.iter_mut().filter(|t| t.warm_for() == Some(&w)) {
                    other.cool();
                }
            }
            s.idle.push(item);
        }
    }

    /// Whether a request waits for a tab.
    pub fn has_waiters(&self) -> bool {
        self.lock().waiters.iter().any(|w| !w.is_closed())
    }

    /// Resolves when a request starts waiting for a tab after the returned future was
    /// enabled (`Notified::enable`) or first polled: enable it, then check
    /// [`TabPool::has_waiters`], then await it, and no waiter is missed.
    pub fn on_queued(&self) -> tokio::sync::futures::Notified<'_> {
        self.queued.notified()
    }

    /// How many idle tabs keep a chat's page.
    pub fn idle_chat_pages(&self) -> usize {
        self.lock()
            .idle
            .iter()
            .filter(|t| t.warm_for().is_some_and(Warm::is_chat))
            .count()
    }

    /// When more than `keep` idle tabs keep a chat's page, lends the one that has kept it
    /// the longest (to be made fresh again).
    pub fn take_oldest_chat_page(self: &Arc<Self>, keep: usize) -> Option<Lease<T>> {
        let mut s = self.lock();
        let chats = s
            .idle
            .iter()
            .filter(|t| t.warm_for().is_some_and(Warm::is_chat))
            .count();
        if chats <= keep {
            return None;
        }
        let i = s
            .idle
            .iter()
            .position(|t| t.warm_for().is_some_and(Warm::is_chat))?;
        let item = s.idle.remove(i);
        Some(Lease {
            item: Some(item),
            pool: self.clone(),
        })
    }

    /// Drops idle items that can never serve again; returns how many.
    pub fn purge(&self) -> usize {
        let dead = Self::take_dead(&mut self.lock());
        let n = dead.len();
        self.dispose(dead);
        n
    }

    /// Marks every idle item cold, e.g. after the session cookies changed.
    pub fn cool_all(&self) {
        for t in self.lock().idle.iter_mut() {
            t.cool();
        }
    }

    /// Stops lending: waiters get `shutting_down`; returns the idle tabs for closing.
    pub fn close(&self) -> Vec<T> {
        let mut s = self.lock();
        s.closed = true;
        s.waiters.clear();
        s.reserved.clear();
        let idle = std::mem::take(&mut s.idle);
        s.tabs = s.tabs.saturating_sub(idle.len());
        idle
    }

    pub fn status(&self) -> PoolStatus {
        let s = self.lock();
        PoolStatus {
            tabs: s.tabs,
            idle: s.idle.len(),
            busy: s.tabs.saturating_sub(s.idle.len()),
            warm: s.idle.iter().filter(|t| t.warm_for().is_some()).count(),
            queued: s.waiters.iter().filter(|w| !w.is_closed()).count(),
            queue_capacity: self.queue_capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    struct Fake(&'static str, Option<Warm>);

    impl Lendable for Fake {
        fn warm_for(&self) -> Option<&Warm> {
            self.1.as_ref()
        }
        fn cool(&mut self) {
            self.1 = None;
        }
    }

    fn pool(capacity: usize, items: Vec<Fake>) -> Arc<TabPool<Fake>> {
        let p = TabPool::new(items.len(), capacity);
        for item in items {
            p.adopt(item).release();
        }
        p
    }

    fn now(a: Acquired<Fake>) -> Lease<Fake> {
        match a {
            Acquired::Now(t) => t,
            Acquired::Queued(_) | Acquired::Soon(_) => panic!("expected a tab at once"),
        }
    }

    fn queued(a: Acquired<Fake>) -> QueueTicket<Fake> {
        match a {
            Acquired::Queued(q) => q,
            Acquired::Soon(_) => panic!("expected to queue, not to wait for a tab"),
            Acquired::Now(t) => panic!("expected to queue, got {:?}", *t),
        }
    }

    fn soon(a: Acquired<Fake>) -> QueueTicket<Fake> {
        match a {
            Acquired::Soon(q) => q,
            Acquired::Queued(_) => panic!("expected to wait for the tab made ready, not to queue"),
            Acquired::Now(t) => panic!("expected to wait for the tab made ready, got {:?}", *t),
        }
    }

    async fn got(ticket: QueueTicket<Fake>) -> Lease<Fake> {
        tokio::time::timeout(Duration::from_secs(1), ticket.wait())
            .await
            .expect("in time")
            .expect("tab")
    }

    fn bot(handle: &str) -> Warm {
        Warm::Bot(handle.into())
    }

    fn chat(code: &str) -> Warm {
        Warm::Chat(code.into())
    }

    #[test]
    fn prefers_the_page_wanted_then_a_cold_tab_then_a_fresh_chat_then_the_oldest_chat() {
        let p = pool(
            1,
            vec![
                Fake("chat-old", Some(chat("c1"))),
                Fake("a", Some(bot("GPT-4"))),
                Fake("chat-new", Some(chat("c2"))),
                Fake("b", None),
                Fake("c", Some(bot("X"))),
            ],
        );
        let a = now(p.acquire(&bot("GPT-4")).expect("ok"));
        let c2 = now(p.acquire(&chat("c2")).expect("ok"));
        let b = now(p.acquire(&bot("Other")).expect("ok"));
        let c = now(p.acquire(&chat("c9")).expect("ok"));
        let old = now(p.acquire(&bot("Other")).expect("ok"));
        assert_eq!(
            (a.0, c2.0, b.0, c.0, old.0),
            ("a", "chat-new", "b", "c", "chat-old")
        );
        assert_eq!(p.status().busy, 5);
    }

    #[test]
    fn chat_pages_beyond_the_limit_are_taken_oldest_first_and_one_tab_per_chat() {
        let p = pool(1, vec![Fake("x", None), Fake("y", None), Fake("z", None)]);
        let (x, y, z) = (
            now(p.acquire(&bot("b")).expect("ok")),
            now(p.acquire(&bot("b")).expect("ok")),
            now(p.acquire(&bot("b")).expect("ok")),
        );
        let keep = |mut l: Lease<Fake>, w: Warm| {
            l.1 = Some(w);
            l.release();
        };
        keep(x, chat("c1"));
        keep(y, chat("c2"));
        assert!(p.take_oldest_chat_page(2).is_none());
        // A second tab showing c1 makes the first one stale.
        keep(z, chat("c1"));
        assert_eq!(p.idle_chat_pages(), 2);
        let oldest = p.take_oldest_chat_page(1).expect("over the limit");
        assert_eq!(oldest.0, "y");
        assert_eq!(p.idle_chat_pages(), 1);
        oldest.release();
    }

    #[tokio::test]
    async fn queue_is_fifo_bounded_and_skips_those_who_left() {
        let p = pool(2, vec![Fake("only", None)]);
        let tab = now(p.acquire(&bot("b")).expect("ok"));
        let first = queued(p.acquire(&bot("b")).expect("queued"));
        let second = queued(p.acquire(&bot("b")).expect("queued"));
        assert_eq!((first.position, second.position), (1, 2));
        let e = p.acquire(&bot("b")).err().expect("busy");
        assert_eq!(e.kind, ErrorKind::Busy);
        // The first waiter gives up; the tab goes to the second.
        drop(first);
        tab.release();
        let got = tokio::time::timeout(Duration::from_secs(1), second.wait())
            .await
            .expect("in time")
            .expect("tab");
        assert_eq!(got.0, "only");
        assert_eq!(p.status().queued, 0);
    }

    #[tokio::test]
    async fn a_waiter_leaving_during_the_hand_over_passes_the_tab_on() {
        let p = pool(4, vec![Fake("only", None)]);
        let tab = now(p.acquire(&bot("b")).expect("ok"));
        let leaving = queued(p.acquire(&bot("b")).expect("queued"));
        let next = queued(p.acquire(&bot("b")).expect("queued"));
        // The tab is sent to `leaving`, which then gives up before reading it.
        tab.release();
        drop(leaving);
        let got = tokio::time::timeout(Duration::from_secs(1), next.wait())
            .await
            .expect("in time")
            .expect("tab");
        assert_eq!(got.0, "only");
        got.release();
        // Nobody waits now: the same race puts the tab back in the idle set.
        let tab = now(p.acquire(&bot("b")).expect("ok"));
        let leaving = queued(p.acquire(&bot("b")).expect("queued"));
        tab.release();
        drop(leaving);
        let s = p.status();
        assert_eq!((s.tabs, s.idle), (1, 1), "{s:?}");
    }

    #[tokio::test]
    async fn a_waiter_cancelled_while_waiting_passes_the_tab_on() {
        let p = pool(4, vec![Fake("only", None)]);
        let tab = now(p.acquire(&bot("b")).expect("ok"));
        let ticket = queued(p.acquire(&bot("b")).expect("queued"));
        // The wait future is dropped (a cancel) right after the tab was sent to it.
        let waiting = tokio::spawn(ticket.wait());
        tab.release();
        waiting.abort();
        let _ = waiting.await;
        let s = p.status();
        assert_eq!((s.tabs, s.idle + s.busy), (1, 1), "{s:?}");
        assert!(p
            .acquire(&bot("b"))
            .is_ok_and(|a| matches!(a, Acquired::Now(_))));
    }

    #[tokio::test]
    async fn a_request_that_starts_waiting_wakes_whoever_watches_the_queue() {
        let p = pool(4, vec![Fake("only", None)]);
        let _tab = now(p.acquire(&bot("b")).expect("ok"));
        let queued_now = p.on_queued();
        tokio::pin!(queued_now);
        queued_now.as_mut().enable();
        assert!(!p.has_waiters());
        let ticket = queued(p.acquire(&bot("b")).expect("queued"));
        tokio::time::timeout(Duration::from_secs(1), queued_now)
            .await
            .expect("woken by the new waiter");
        assert!(p.has_waiters());
        drop(ticket);
        assert!(!p.has_waiters(), "a waiter that left does not count");
    }

    #[tokio::test]
    async fn dropped_leases_are_counted_missing_and_wake_the_keeper() {
        let p = pool(4, vec![Fake("a", None), Fake("b", None)]);
        assert_eq!(p.missing(), 0);
        let a = now(p.acquire(&bot("x")).expect("ok"));
        // An error path (or a panic) drops the lease instead of releasing it.
        drop(a);
        assert_eq!(p.missing(), 1);
        tokio::time::timeout(Duration::from_secs(1), p.lost())
            .await
            .expect("the keeper is woken");
        p.adopt(Fake("c", None)).release();
        assert_eq!(p.missing(), 0);
        assert_eq!(p.status().idle, 2);
    }

    #[tokio::test]
    async fn close_fails_waiters_with_shutting_down() {
        let p = pool(4, vec![Fake("t", None)]);
        let _tab = now(p.acquire(&bot("b")).expect("ok"));
        let waiting = queued(p.acquire(&bot("b")).expect("queued"));
        assert!(p.close().is_empty());
        let Err(e) = waiting.wait().await else {
            panic!("a closed pool lent a tab");
        };
        assert_eq!(e.kind, ErrorKind::ShuttingDown);
        assert_eq!(
            p.acquire(&bot("b")).err().map(|e| e.kind),
            Some(ErrorKind::ShuttingDown)
        );
        assert_eq!(p.missing(), 0);
    }

    #[tokio::test]
    async fn a_request_for_a_chat_being_made_ready_waits_for_that_tab() {
        let p = pool(4, vec![Fake("kept", None), Fake("cold", None)]);
        // The tab of the chat's last reply is being made ready for its page.
        let mut kept = now(p.acquire(&bot("b")).expect("ok"));
        let preparing = p.preparing(chat("c1"));
        // The conversation's next message waits for it though another tab is idle...
        let next = soon(p.acquire(&chat("c1")).expect("ok"));
        assert_eq!(p.status().queued, 0, "not a place in the queue");
        // ... and only one waits: a second request for the chat takes the idle tab.
        let cold = now(p.acquire(&chat("c1")).expect("ok"));
        assert_eq!(cold.0, "cold");
        cold.release();
        kept.1 = Some(chat("c1"));
        kept.release();
        drop(preparing);
        let kept = got(next).await;
        assert_eq!(kept.0, "kept");
        // Other chats never wait.
        let _other = p.preparing(chat("c2"));
        assert_eq!(now(p.acquire(&chat("c3")).expect("ok")).0, "cold");
        kept.release();
    }

    #[tokio::test]
    async fn a_tab_that_comes_back_without_the_chat_still_serves_its_waiter() {
        // Made fresh instead (the chat's page could not be kept): the waiter gets an idle
        // tab once the preparation ends.
        let p = pool(4, vec![Fake("kept", None), Fake("other", Some(bot("x")))]);
        let mut kept = now(p.acquire(&bot("b")).expect("ok"));
        let preparing = p.preparing(chat("c1"));
        let next = soon(p.acquire(&chat("c1")).expect("ok"));
        kept.1 = Some(bot("b"));
        kept.release();
        drop(preparing);
        assert_eq!(got(next).await.0, "other");

        // Retired (it died): the waiter gets an idle tab.
        let p = pool(4, vec![Fake("kept", None), Fake("idle", None)]);
        let kept = now(p.acquire(&bot("b")).expect("ok"));
        let preparing = p.preparing(chat("c1"));
        let next = soon(p.acquire(&chat("c1")).expect("ok"));
        kept.retire();
        drop(preparing);
        assert_eq!(got(next).await.0, "idle");

        // No idle tab: the waiter is first in the queue, before those who queued later.
        let p = pool(4, vec![Fake("kept", None), Fake("busy", None)]);
        let kept = now(p.acquire(&bot("b")).expect("ok"));
        let busy = now(p.acquire(&bot("b")).expect("ok"));
        let preparing = p.preparing(chat("c1"));
        let next = soon(p.acquire(&chat("c1")).expect("ok"));
        let later = queued(p.acquire(&bot("b")).expect("queued"));
        kept.retire();
        drop(preparing);
        busy.release();
        assert_eq!(got(next).await.0, "busy");
        drop(later);
    }

    #[tokio::test]
    async fn a_waiter_that_left_lets_the_prepared_tab_go_idle() {
        let p = pool(4, vec![Fake("kept", None)]);
        let mut kept = now(p.acquire(&bot("b")).expect("ok"));
        let preparing = p.preparing(chat("c1"));
        drop(soon(p.acquire(&chat("c1")).expect("ok")));
        kept.1 = Some(chat("c1"));
        kept.release();
        drop(preparing);
        let s = p.status();
        assert_eq!((s.tabs, s.idle), (1, 1), "{s:?}");
        assert_eq!(now(p.acquire(&chat("c1")).expect("ok")).0, "kept");
    }
}
