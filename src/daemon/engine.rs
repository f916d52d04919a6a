//! The engine: what a completion request goes through, whatever front door it came from.
//!
//! Resolve the model, format the prompt, take a tab from the pool (or wait in its queue),
//! respect the account's minimum send interval, let the site driver run the chat, then make
//! the tab fresh again in the background so the next request pays only for its own chat.
//! It also keeps the counters and account state that `status` reports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::browser::supervisor::BrowserHandle;
use crate::browser::tab::Tab;
use crate::browser::tab_pool::{Acquired, TabPool};
use crate::config::{secs, Config};
use crate::error::{Error, ErrorKind};
use crate::protocol::{AccountStatus, CompleteRequest, Event, Status, Timings};
use crate::site::poe::driver::{Driver, Progress};
use crate::site::poe::models::ModelTable;
use crate::site::poe::prompt::format_prompt;

/// What a front door hears while a completion runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Queued { position: usize },
    Started { model: String, bot: String },
    Delta(String),
    Replace(String),
}

/// A finished completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    pub model: String,
    pub bot: String,
    pub timings: Timings,
}

pub struct Engine {
    config: Arc<Config>,
    models: ModelTable,
    driver: Driver,
    pool: Arc<TabPool>,
    browser: BrowserHandle,
    started: Instant,
    outcomes: Mutex<BTreeMap<String, u64>>,
    account: Arc<Mutex<AccountStatus>>,
    last_send: tokio::sync::Mutex<Option<Instant>>,
    next_tab_id: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn new(config: Arc<Config>, browser: BrowserHandle) -> Result<Arc<Engine>, String> {
        let models = ModelTable::new(&config.site.models, &config.site.default_model)?;
        Ok(Arc::new(Engine {
            driver: Driver::new(config.site.clone(), config.timeouts.clone()),
            pool: Arc::new(TabPool::new(config.pool.queue)),
            models,
            browser,
            started: Instant::now(),
            outcomes: Mutex::new(BTreeMap::new()),
            account: Arc::new(Mutex::new(AccountStatus {
                state: "unknown".into(),
                last_site_error: None,
            })),
            last_send: tokio::sync::Mutex::new(None),
            next_tab_id: std::sync::atomic::AtomicUsize::new(1),
            config,
        }))
    }

    pub fn models(&self) -> &ModelTable {
        &self.models
    }

    /// Opens the pool's tabs and makes each warm for the default model, in the background.
    pub async fn open_tabs(self: &Arc<Self>) -> Result<(), String> {
        let (_, bot) = self.models.resolve(None).map_err(|e| e.message.clone())?;
        self.fill_pool(&bot).await?;
        self.spawn_rebuilder(bot);
        Ok(())
    }

    /// Opens `pool.tabs` tabs in the current browser and prepares them in the background.
    async fn fill_pool(self: &Arc<Self>, bot: &str) -> Result<(), String> {
        for _ in 0..self.config.pool.tabs {
            let tab = self.open_tab().await?;
            self.pool.register_tab();
            self.prepare_and_release(tab, bot.to_owned());
        }
        Ok(())
    }

    /// After every browser relaunch, drops the dead tabs and opens new ones; queued
    /// requests then run on them.
    fn spawn_rebuilder(self: &Arc<Self>, bot: String) {
        let engine = self.clone();
        let mut watch = self.browser.watch();
        tokio::spawn(async move {
            let mut current = watch.borrow_and_update().number;
            while watch.changed().await.is_ok() {
                let generation = watch.borrow_and_update().clone();
                if !generation.up {
                    let dropped = engine.pool.purge();
                    warn!(dropped, "browser down; idle tabs dropped");
                    continue;
                }
                if generation.number == current {
                    continue;
                }
                current = generation.number;
                engine.pool.purge();
                match engine.fill_pool(&bot).await {
                    Ok(()) => info!(generation = current, "tab pool rebuilt"),
                    Err(e) => warn!(error = %e, "could not rebuild the tab pool"),
                }
            }
        });
    }

    async fn open_tab(&self) -> Result<Tab, String> {
        let id = self
            .next_tab_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Tab::open(
            &self.browser,
            id,
            self.config.site.update_socket_contains.clone(),
        )
        .await
    }

    /// Makes `tab` warm for `bot` in the background, then returns it to the pool. A tab
    /// that cannot be made warm goes back cold; the next request on it opens the page itself.
    fn prepare_and_release(self: &Arc<Self>, mut tab: Tab, bot: String) {
        let engine = self.clone();
        tokio::spawn(async move {
            if tab.is_gone() {
                engine.pool.unregister_tab();
                warn!(tab = tab.id, "tab is gone; not returned to the pool");
                return;
            }
            match engine.driver.open_chat(&mut tab, &bot).await {
                Ok(()) => engine.note_account(None),
                Err(e) => {
                    engine.note_account(Some(&e));
                    warn!(tab = tab.id, error = %e, "could not prepare a fresh chat");
                }
            }
            engine.pool.release(tab);
        });
    }

    fn note_account(&self, error: Option<&Error>) {
        let mut a = lock(&self.account);
        match error {
            None => a.state = "signed_in".into(),
            Some(e) if e.kind == ErrorKind::NotLoggedIn => a.state = "signed_out".into(),
            Some(e)
                if matches!(
                    e.kind,
                    ErrorKind::SiteError | ErrorKind::DailyLimit | ErrorKind::RateLimited
                ) =>
            {
                a.last_site_error = Some(e.to_string());
            }
            Some(_) => {}
        }
    }

    /// Waits until the account may send again (`pool.min_send_interval_ms`).
    async fn send_slot(&self, cancel: &CancellationToken) -> Result<(), Error> {
        let interval = Duration::from_millis(self.config.pool.min_send_interval_ms);
        if interval.is_zero() {
            return Ok(());
        }
        let mut last = self.last_send.lock().await;
        if let Some(at) = *last {
            let ready = at + interval;
            tokio::select! {
                _ = tokio::time::sleep_until(ready.into()) => {}
                _ = cancel.cancelled() => return Err(Error::new(ErrorKind::Cancelled, "the request was cancelled")),
            }
        }
        *last = Some(Instant::now());
        Ok(())
    }

    /// Runs one completion. `updates` must not block (front doors buffer or coalesce).
    pub async fn complete(
        self: &Arc<Self>,
        request: &CompleteRequest,
        updates: &mut (dyn FnMut(Update) + Send),
        cancel: &CancellationToken,
    ) -> Result<Completion, Error> {
        let t0 = Instant::now();
        let result = self.run(request, updates, cancel, t0).await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.kind.as_str().to_string(),
        };
        *lock(&self.outcomes).entry(outcome).or_default() += 1;
        result
    }

    async fn run(
        self: &Arc<Self>,
        request: &CompleteRequest,
        updates: &mut (dyn FnMut(Update) + Send),
        cancel: &CancellationToken,
        t0: Instant,
    ) -> Result<Completion, Error> {
        let (model, bot) = self.models.resolve(request.model.as_deref())?;
        if request.messages.is_empty() {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "\"messages\" is empty; send at least one {\"role\":\"user\",\"content\":\"...\"}",
            ));
        }
        let prompt = format_prompt(&request.messages);
        if prompt.trim().is_empty() {
            return Err(Error::new(ErrorKind::BadRequest, "the prompt is empty"));
        }
        let mut tab = match self.pool.acquire(&bot)? {
            Acquired::Now(tab) => tab,
            Acquired::Queued(ticket) => {
                updates(Update::Queued {
                    position: ticket.position,
                });
                let limit = secs(self.config.timeouts.reply_secs);
                tokio::select! {
                    tab = ticket.wait() => tab?,
                    _ = cancel.cancelled() => return Err(Error::new(ErrorKind::Cancelled, "the request was cancelled while queued")),
                    _ = tokio::time::sleep(limit) => {
                        return Err(if self.browser.generation().up {
                            Error::new(ErrorKind::Timeout, format!("no tab became free within {}s; retry later or raise pool.tabs", self.config.timeouts.reply_secs))
                        } else {
                            Error::new(ErrorKind::BrowserUnavailable, "the browser is down and could not be restarted in time; see `poectl status`")
                        });
                    }
                }
            }
        };
        let queued_ms = t0.elapsed().as_millis() as u64;
        updates(Update::Started {
            model: model.clone(),
            bot: bot.clone(),
        });
        let mut first_token: Option<u64> = None;
        let result = match self.send_slot(cancel).await {
            Err(e) => Err(e),
            Ok(()) => {
                let mut on_progress = |p: Progress| {
                    first_token.get_or_insert_with(|| t0.elapsed().as_millis() as u64);
                    updates(match p {
                        Progress::Delta(d) => Update::Delta(d),
                        Progress::Replace(t) => Update::Replace(t),
                    });
                };
                let gone = tab.browser_gone.clone();
                tokio::select! {
                    r = self.driver.complete(&mut tab, &bot, &prompt, &mut on_progress, cancel) => r,
                    _ = gone.cancelled() => Err(Error::new(
                        ErrorKind::BrowserCrashed,
                        "the browser died during the reply; poed is restarting it, retry the request",
                    )),
                }
            }
        };
        self.note_account(result.as_ref().err());
        if let Err(e) = &result {
            info!(tab = tab.id, kind = %e.kind, "request failed");
        }
        // The chat is used: make the tab fresh again, off this request's time.
        self.prepare_and_release(tab, bot.clone());
        let text = result?;
        Ok(Completion {
            text,
            model,
            bot,
            timings: Timings {
                queued_ms,
                first_token_ms: first_token,
                total_ms: t0.elapsed().as_millis() as u64,
            },
        })
    }

    pub fn models_event(&self) -> Event {
        Event::Models {
            default: self.models.default_model().to_owned(),
            models: self.models.list(),
        }
    }

    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            socket: self.config.socket.display().to_string(),
            base_url: self.config.site.base_url.clone(),
            browser: self.browser.status(),
            pool: self.pool.status(),
            account: lock(&self.account).clone(),
            requests: lock(&self.outcomes).clone(),
        }
    }

    /// Stops lending tabs and closes the idle ones.
    pub async fn close_pool(&self) {
        for tab in self.pool.close() {
            tab.close().await;
        }
    }
}
