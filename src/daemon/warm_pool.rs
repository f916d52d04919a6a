//! Keeping the tab pool full and warm.
//!
//! The pool ([`crate::browser::tab_pool`]) only lends; this module owns the tabs' life:
//! it opens the configured number of tabs, makes each warm (a fresh chat of a bot with its
//! prompt box ready) off any request's time, lets up to `pool.chat_pages` idle tabs keep
//! the page of a chat that just answered (ready for the conversation's next message; the
//! one kept longest is made fresh again when there are more), and replaces every tab the pool loses (a
//! crashed or hung page, an error path, a browser that died) with backoff until the pool
//! has its configured size again. When the browser cannot open tabs at all, it asks the
//! supervisor to relaunch it.
//!
//! The fresh page a tab gets after a reply is loaded once the other requests being served
//! have ended ([`Serving`]): a page load costs the browser tens of milliseconds of CPU, and
//! replies that end together (a batch sent at once) would otherwise get their last frames
//! behind it. It waits `pool.refresh_wait_ms` at most, and not at all once a request waits
//! for a tab.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::browser::supervisor::BrowserHandle;
use crate::browser::tab::{Tab, Watch};
use crate::browser::tab_pool::{Lease, TabPool, Warm};
use crate::daemon::account::Account;
use crate::daemon::bots::BotStore;
use crate::error::ErrorKind;
use crate::site::poe::driver::Driver;
use crate::site::poe::frames::{parse_frame, Update};

/// Refill backoff: first delay, doubled per failed attempt up to the maximum.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Failed tab openings in a row on a browser that counts as up before it is relaunched.
const RELAUNCH_AFTER: u32 = 3;

/// Where what the pages tell goes, also while no request runs.
pub struct Listeners {
    /// The account's state and points.
    pub account: Arc<Account>,
    /// The bots the pages' replies name.
    pub bots: Arc<BotStore>,
}

/// How many requests are being served (admitted and not yet ended), counted by the engine
/// and watched by the warm pool, which puts a page load after a reply off while any is.
pub struct Serving(watch::Sender<usize>);

impl Default for Serving {
    fn default() -> Self {
        Serving(watch::Sender::new(0))
    }
}

impl Serving {
    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Counts a request until the guard is dropped.
    pub fn enter(&self) -> ServingGuard<'_> {
        self.0.send_modify(|n| *n += 1);
        ServingGuard(self)
    }
}

/// One request counted by [`Serving`].
pub struct ServingGuard<'a>(&'a Serving);

impl Drop for ServingGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

pub struct WarmPool {
    pub pool: Arc<TabPool>,
    browser: BrowserHandle,
    driver: Driver,
    account: Arc<Account>,
    /// The bots the pages' replies name.
    bots: Arc<BotStore>,
    /// Fresh tabs are made warm for this bot (the default model's).
    default_bot: String,
    watch: Watch,
    headless: bool,
    /// Idle tabs that may keep a chat's page.
    chat_pages: usize,
    /// The requests being served, and how long a page load after a reply waits for them.
    serving: Arc<Serving>,
    refresh_wait: Duration,
    next_tab_id: AtomicUsize,
}

impl WarmPool {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Arc<TabPool>,
        browser: BrowserHandle,
        driver: Driver,
        listeners: Listeners,
        default_bot: String,
        watch: Watch,
        headless: bool,
        chat_pages: usize,
        serving: Arc<Serving>,
        refresh_wait: Duration,
    ) -> Arc<Self> {
        let Listeners { account, bots } = listeners;
        Arc::new(WarmPool {
            pool,
            browser,
            driver,
            account,
            bots,
            default_bot,
            watch,
            headless,
            chat_pages,
            serving,
            refresh_wait,
            next_tab_id: AtomicUsize::new(1),
        })
    }

    /// Opens the pool's tabs (a browser that cannot open one is a start-up error) and keeps
    /// the pool full until `shutdown`.
    pub async fn start(self: &Arc<Self>, shutdown: CancellationToken) -> Result<(), String> {
        while self.pool.missing() > 0 {
            let tab = self.open_tab().await?;
            let lease = self.pool.adopt(tab);
            self.prepare_and_release(lease, Warm::Bot(self.default_bot.clone()));
        }
        tokio::spawn(self.clone().keep_full(shutdown));
        Ok(())
    }

    /// Opens a blank tab in the current browser; what its pages say of the account (the
    /// points) goes to the account, and the bots that finish replies go to the bot store,
    /// also while no request runs. Only frames that can hold either are parsed.
    pub async fn open_tab(&self) -> Result<Tab, String> {
        let id = self.next_tab_id.fetch_add(1, Ordering::Relaxed);
        let tab = Tab::open(&self.browser, id, self.watch.clone()).await?;
        let account = self.account.clone();
        let bots = self.bots.clone();
        tab.set_observer(Arc::new(move |frame: &str, received: f64| {
            // A `bot` object always carries a `handle`.
            if !frame.contains("messagePointInfo") && !frame.contains("handle") {
                return;
            }
            for update in parse_frame(frame) {
                match update {
                    Update::Points(p) => account.points(&p, received),
                    Update::Message(m) if m.is_bot() && m.state == "complete" => {
                        if let Some(bot) = &m.bot {
                            bots.answered(bot);
                        }
                    }
                    _ => {}
                }
            }
        }));
        Ok(tab)
    }

    /// Replaces lost tabs, with backoff, whenever the pool is short; after a browser
    /// relaunch the dead tabs are dropped and new ones opened.
    async fn keep_full(self: Arc<Self>, shutdown: CancellationToken) {
        let mut watch = self.browser.watch();
        let mut current = watch.borrow_and_update().number;
        let mut backoff = BACKOFF_FIRST;
        let mut failures = 0u32;
        loop {
            if self.pool.missing() > 0 && self.browser.generation().up {
                match self.open_tab().await {
                    Ok(tab) if tab.is_gone() => {}
                    Ok(tab) => {
                        backoff = BACKOFF_FIRST;
                        failures = 0;
                        debug!(tab = tab.id, "replacing a lost tab");
                        let lease = self.pool.adopt(tab);
                        self.prepare_and_release(lease, Warm::Bot(self.default_bot.clone()));
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        warn!(error = %e, retry_in = ?backoff, "could not open a tab for the pool");
                        if failures >= RELAUNCH_AFTER && self.browser.generation().up {
                            failures = 0;
                            warn!("the browser cannot open tabs; relaunching it");
                            if let Err(e) = self.browser.relaunch(self.headless).await {
                                warn!(error = %e, "relaunch failed");
                            }
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = self.pool.lost() => {}
                changed = watch.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let generation = watch.borrow_and_update().clone();
                    if !generation.up {
                        let dropped = self.pool.purge();
                        warn!(dropped, "browser down; idle tabs dropped");
                    } else if generation.number != current {
                        current = generation.number;
                        self.pool.purge();
                        backoff = BACKOFF_FIRST;
                        info!(generation = current, "browser relaunched; refilling the tab pool");
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Makes a leased tab ready for `next` in the background, then releases it. A chat's
    /// page is kept only where the tab still shows it and `pool.chat_pages` allows; else the
    /// tab gets a fresh chat of the chat's bot (`fresh_bot`). A tab that cannot be made warm
    /// goes back cold (the next request on it opens the page itself); a dead or hung one is
    /// retired and replaced.
    pub fn prepare_and_release(self: &Arc<Self>, lease: Lease, next: Warm) {
        self.prepare_and_release_or(lease, next, None, false);
    }

    /// [`WarmPool::prepare_and_release`] for the tab of a request that has ended: its page
    /// load waits until no other request is being served (at most `pool.refresh_wait_ms`,
    /// and not once a request waits for a tab), see the module docs.
    pub fn refresh_after_reply(self: &Arc<Self>, lease: Lease, next: Warm) {
        self.prepare_and_release_or(lease, next, None, true);
    }

    /// [`WarmPool::prepare_and_release`] for a tab whose page is the site chat `code` of
    /// `bot` after a reply.
    pub fn keep_chat_or_refresh(self: &Arc<Self>, lease: Lease, code: String, bot: String) {
        self.prepare_and_release_or(lease, Warm::Chat(code), Some(bot), false);
    }

    /// Waits until no request is being served, a request waits for a tab, `refresh_wait`
    /// has passed or the tab's browser is gone, whichever comes first.
    async fn wait_for_quiet(&self, browser_gone: &CancellationToken) {
        if self.refresh_wait.is_zero() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.refresh_wait;
        let mut serving = self.serving.0.subscribe();
        loop {
            let queued = self.pool.on_queued();
            tokio::pin!(queued);
            queued.as_mut().enable();
            if *serving.borrow_and_update() == 0 || self.pool.has_waiters() {
                return;
            }
            tokio::select! {
                changed = serving.changed() => if changed.is_err() { return },
                _ = &mut queued => return,
                _ = tokio::time::sleep_until(deadline) => {
                    debug!("a tab's page load waited its longest for other replies");
                    return;
                }
                _ = browser_gone.cancelled() => return,
            }
        }
    }

    fn prepare_and_release_or(
        self: &Arc<Self>,
        lease: Lease,
        next: Warm,
        fresh_bot: Option<String>,
        after_reply: bool,
    ) {
        // Registered before the task starts: a conversation's next message may come at once,
        // and then waits for this tab rather than open the chat's page in another.
        let preparing = match &next {
            Warm::Chat(_) if self.chat_pages > 0 => Some(self.pool.preparing(next.clone())),
            _ => None,
        };
        let this = self.clone();
        tokio::spawn(async move {
            // Dropped when the task ends, after the tab's release or retirement.
            let _preparing = preparing;
            let mut lease = lease;
            if lease.is_gone() {
                lease.retire();
                return;
            }
            let bot = match next {
                Warm::Chat(code) if this.chat_pages > 0 => {
                    match this.driver.keep_chat(&mut lease, &code).await {
                        Ok(true) => {
                            lease.release();
                            // Over the limit: the chat page kept longest is made fresh.
                            if let Some(oldest) = this.pool.take_oldest_chat_page(this.chat_pages) {
                                debug!(
                                    tab = oldest.id,
                                    "too many chat pages kept; making the oldest fresh"
                                );
                                this.prepare_and_release(
                                    oldest,
                                    Warm::Bot(this.default_bot.clone()),
                                );
                            }
                            return;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            debug!(tab = lease.id, error = %e, "the chat's page cannot be kept")
                        }
                    }
                    fresh_bot.unwrap_or_else(|| this.default_bot.clone())
                }
                Warm::Chat(_) => fresh_bot.unwrap_or_else(|| this.default_bot.clone()),
                Warm::Bot(bot) => bot,
            };
            if after_reply {
                this.wait_for_quiet(&lease.browser_gone).await;
            }
            match this.driver.open_chat(&mut lease, &bot).await {
                Ok(()) => this.account.signed_in(),
                Err(_) if lease.browser_gone.is_cancelled() => {
                    lease.retire();
                    return;
                }
                // A page that does not answer is treated like a crashed one.
                Err(e) if e.kind == ErrorKind::BrowserUnavailable => {
                    warn!(tab = lease.id, error = %e, "the tab does not answer; replacing it");
                    lease.crash();
                    lease.retire();
                    return;
                }
                Err(e) => {
                    this.account.failed(&bot, &e);
                    warn!(tab = lease.id, error = %e, "could not prepare a fresh chat");
                }
            }
            if lease.is_gone() {
                lease.retire();
            } else {
                lease.release();
            }
        });
    }
}
