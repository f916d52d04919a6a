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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
        self.prepare_and_release_or(lease, next, None);
    }

    /// [`WarmPool::prepare_and_release`] for a tab whose page is the site chat `code` of
    /// `bot` after a reply.
    pub fn keep_chat_or_refresh(self: &Arc<Self>, lease: Lease, code: String, bot: String) {
        self.prepare_and_release_or(lease, Warm::Chat(code), Some(bot));
    }

    fn prepare_and_release_or(
        self: &Arc<Self>,
        lease: Lease,
        next: Warm,
        fresh_bot: Option<String>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
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
