//! The engine: what a completion request goes through, whatever front door it came from.
//!
//! Resolve the model, place the request in a conversation (go on in the site chat of its
//! earlier turns, or a fresh chat with the whole history as one prompt: see
//! [`crate::daemon::conversations`]), take a tab from the pool (the one showing that chat
//! if any, or wait in its queue), let the site driver run the chat, then hand the tab to
//! the warm pool to keep the chat's page or be made fresh again off this request's time. Every submitted request runs in a task of its own that
//! always ends with one final event ([`reply`]), also when it panics. Sign-in and cookie
//! import go through here too (one at a time), and so does `status`.
//!
//! - [`reply`]: the reply stream to the front door, merging text for slow readers.
//! - [`crate::daemon::warm_pool`]: opening, warming and replacing tabs.
//! - [`crate::daemon::account`]: what is known of the account.
//! - [`crate::daemon::bots`]: the site's bots beyond the model table (seen, discovered);
//!   with the table they make the model list, the handles' spellings and the close names
//!   offered for a bot the site does not have.

pub mod reply;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::browser::supervisor::BrowserHandle;
use crate::browser::tab_pool::{Acquired, TabPool, Warm};
use crate::config::{secs, Config};
use crate::daemon::account::Account;
use crate::daemon::bots::{BotStore, CACHE_FILE};
use crate::daemon::conversations::{self, Conversations, Ended, Plan};
use crate::daemon::warm_pool::{Listeners, Serving, WarmPool};
use crate::error::{Error, ErrorKind};
use crate::metrics::Stats;
use crate::protocol::{
    AccountState, CompleteRequest, Event, ModelInfo, ModelSource, Status, Timings,
};
use crate::site::poe::driver::{is_chat_gone, Driver, Progress, Target};
use crate::site::poe::models::{self, ModelTable};
use crate::site::poe::pacer::Pacer;
use crate::site::poe::session::Session;

pub use reply::{Completion, ReplyEvent, ReplyStream};

/// A tab whose request ended, and the page to make ready in it once the final event is out.
type Aftercare = (crate::browser::tab_pool::Lease, Warm);

/// A request that passed its checks, placed in a conversation; it holds a tab or a place
/// in the queue, or the pool's answer why not.
struct Admitted {
    model: String,
    bot: String,
    plan: Plan,
    slot: Result<Acquired, Error>,
}

pub struct Engine {
    config: Arc<Config>,
    models: ModelTable,
    driver: Driver,
    warm: Arc<WarmPool>,
    pool: Arc<TabPool>,
    browser: BrowserHandle,
    account: Arc<Account>,
    /// The site's bots beyond the table.
    bots: Arc<BotStore>,
    /// The default model's bot: fresh tabs and tabs after a failed page are made warm for it.
    default_bot: String,
    pacer: Pacer,
    stats: Stats,
    started: Instant,
    /// The requests being served (the warm pool puts page loads off while any is).
    serving: Arc<Serving>,
    /// Set when shutdown stops running requests: their error is `shutting_down`.
    stopping: AtomicBool,
    /// Held while a sign-in or cookie import runs: one at a time.
    session_op: tokio::sync::Mutex<()>,
    /// The socket actually listened on, for `status`.
    socket: Mutex<String>,
    /// The HTTP front door's bound address, for `status`.
    pub http_addr: std::sync::OnceLock<String>,
    /// Records every finished request (see [`crate::history`]).
    history: crate::history::Recorder,
    /// The conversations requests go on with.
    conversations: Arc<Conversations>,
}

/// Where the site's bot list is cached: next to the browser profile, in poed's data
/// directory.
fn bots_cache_path(config: &Config) -> std::path::PathBuf {
    config
        .browser
        .profile
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."))
        .join(CACHE_FILE)
}

/// Test hook: a prompt containing the text of `POED_TEST_PANIC_ON` makes its request panic
/// while it holds a tab, so tests can check that a bug costs only that request.
fn fault_injection(prompt: &str) {
    if let Some(marker) = std::env::var_os("POED_TEST_PANIC_ON") {
        let marker = marker.to_string_lossy();
        if !marker.is_empty() && prompt.contains(marker.as_ref()) {
            panic!("fault injected by POED_TEST_PANIC_ON");
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Engine {
    pub fn new(config: Arc<Config>, browser: BrowserHandle) -> Result<Arc<Engine>, String> {
        let models = ModelTable::new(&config.site.models, &config.site.default_model)?;
        let (_, default_bot) = models.resolve(None).map_err(|e| e.message)?;
        let driver = Driver::new(config.site.clone(), config.timeouts.clone());
        let pool = TabPool::new(config.pool.tabs, config.pool.queue);
        let account = Arc::new(Account::default());
        let bots = Arc::new(BotStore::load(Some(bots_cache_path(&config))));
        let serving = Arc::new(Serving::default());
        let warm = WarmPool::new(
            pool.clone(),
            browser.clone(),
            driver.clone(),
            Listeners {
                account: account.clone(),
                bots: bots.clone(),
            },
            default_bot.clone(),
            config.site.watch(),
            config.browser.headless,
            config
                .pool
                .chat_pages
                .min(config.pool.tabs.saturating_sub(1)),
            serving.clone(),
            Duration::from_millis(config.pool.refresh_wait_ms),
        );
        let (remembered, next_id) = crate::history::remembered(
            &config.history,
            &config.browser.profile,
            conversations::CAPACITY,
        );
        let conversations = Conversations::new(remembered, next_id);
        Ok(Arc::new(Engine {
            driver,
            warm,
            pool,
            models,
            browser,
            account,
            bots,
            default_bot,
            pacer: Pacer::new(
                Duration::from_millis(config.pool.min_send_interval_ms),
                config.pool.max_sends_per_minute,
            ),
            stats: Stats::default(),
            started: Instant::now(),
            serving,
            stopping: AtomicBool::new(false),
            session_op: tokio::sync::Mutex::new(()),
            socket: Mutex::new(config.socket.display().to_string()),
            http_addr: std::sync::OnceLock::new(),
            history: crate::history::Recorder::start(&config.history, &config.browser.profile),
            conversations,
            config,
        }))
    }

    pub fn models(&self) -> &ModelTable {
        &self.models
    }

    /// Opens the pool's tabs and keeps the pool full until `shutdown`.
    pub async fn open_tabs(self: &Arc<Self>, shutdown: CancellationToken) -> Result<(), String> {
        self.warm.start(shutdown).await
    }

    /// The socket path `status` reports (the one actually listened on).
    pub fn set_socket(&self, path: String) {
        *self.socket.lock().unwrap_or_else(|p| p.into_inner()) = path;
    }

    /// Starts a completion in its own task and returns its events. The task always ends
    /// with one final event, even if it panics; `cancel` or dropping the stream stops it
    /// early (before the send: the prompt never reaches the site).
    pub fn submit(
        self: &Arc<Self>,
        request: CompleteRequest,
        cancel: CancellationToken,
    ) -> ReplyStream {
        let (mut sink, stream) = reply::channel(cancel.clone());
        let t0 = Instant::now();
        let admitted = self.admit(&request);
        let engine = self.clone();
        tokio::spawn(async move {
            let mut push = |e| sink.push(e);
            let (admitted, mut plan) = match admitted {
                Ok(Admitted {
                    model,
                    bot,
                    plan,
                    slot,
                }) => (slot.map(|slot| (model, bot, slot)), Some(plan)),
                Err(e) => (Err(e), None),
            };
            let mut aftercare = None;
            let run = engine.finish(
                admitted,
                plan.as_mut(),
                t0,
                &mut push,
                &cancel,
                &mut aftercare,
            );
            let result = match AssertUnwindSafe(run).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => {
                    let what = panic_message(panic.as_ref());
                    error!(panic = %what, "a request failed with a bug; poed goes on");
                    engine.stats.count("internal");
                    Err(Error::internal(format!(
                        "poed hit a bug while serving this request ({what}); it keeps running: retry, and please report the bug"
                    )))
                }
            };
            let resolved = engine.models.resolve(request.model.as_deref()).ok();
            let (request, placement) = match plan {
                Some(plan) => {
                    let placement = crate::history::Placement {
                        conversation: plan.conversation,
                        stored_turns: plan.stored_turns,
                        chat_code: result.as_ref().ok().and_then(|c| c.chat_code.clone()),
                    };
                    // The whole conversation (a client naming it may send only the new turn).
                    let request = CompleteRequest {
                        messages: plan
                            .system
                            .iter()
                            .map(|s| crate::protocol::ChatMessage::new("system", s.clone()))
                            .chain(plan.turns.iter().cloned())
                            .collect(),
                        ..request
                    };
                    engine.conversations.finish(
                        plan,
                        match &result {
                            Ok(c) => Ended::Answered {
                                text: &c.text,
                                chat_code: c.chat_code.as_deref(),
                            },
                            Err(e) => Ended::Failed {
                                sent: e.sent != Some(false),
                            },
                        },
                    );
                    (request, Some(placement))
                }
                None => (request, None),
            };
            // The history's write lock first: a client that got the final event and reads the
            // history waits for the record written after that event.
            let record = engine
                .history
                .hold(&request, resolved, &result, placement)
                .await;
            let last = match result {
                Ok(c) => ReplyEvent::Done(c),
                Err(e) => ReplyEvent::Failed(e),
            };
            // The final event first (at once when the reader keeps up), then the tab's page
            // load; a slow reader does not hold the tab up.
            let pending = sink.try_finish(last);
            if let Some((tab, next)) = aftercare {
                engine.warm.refresh_after_reply(tab, next);
            }
            if let Some(record) = record {
                // Let the task that writes the final event run before this one blocks its
                // thread for the record (a task woken from here waits for this one to yield,
                // and the record takes a few hundred µs).
                tokio::task::yield_now().await;
                record.write();
            }
            if let Some(last) = pending {
                sink.finish(last).await;
            }
        });
        stream
    }

    /// Runs an admitted request and keeps the counters. A tab to be made fresh after the
    /// final event is left in `aftercare`.
    async fn finish(
        self: &Arc<Self>,
        admitted: Result<(String, String, Acquired), Error>,
        plan: Option<&mut Plan>,
        t0: Instant,
        updates: &mut (dyn FnMut(ReplyEvent) + Send),
        cancel: &CancellationToken,
        aftercare: &mut Option<Aftercare>,
    ) -> Result<Completion, Error> {
        let _serving = self.serving.enter();
        let mut result = match (admitted, plan) {
            (Ok((model, bot, slot)), Some(plan)) => {
                self.run(model, bot, plan, slot, updates, cancel, t0, aftercare)
                    .await
            }
            (Ok(_), None) => Err(Error::internal("a request was admitted without a plan")),
            (Err(e), _) => Err(e.sent(false)),
        };
        if let Err(e) = &mut result {
            if e.kind == ErrorKind::Cancelled && self.stopping.load(Ordering::Relaxed) {
                let sent = e.sent;
                *e = Error::new(
                    ErrorKind::ShuttingDown,
                    "poed is shutting down and stopped this reply after its grace period; retry when it is back",
                );
                e.sent = sent;
            }
        }
        if let Err(e) = &mut result {
            if e.kind == ErrorKind::DailyLimit && e.reset_at.is_none() {
                e.reset_at = self.account.snapshot().points.and_then(|p| p.reset_at);
            }
        }
        match &result {
            Ok(c) => self.stats.completed(&c.timings),
            Err(e) => self.stats.count(e.kind.as_str()),
        }
        result
    }

    /// The synchronous part of a request: checks, its place in a conversation, then a tab
    /// or a place in the queue. Done in arrival order, before any task is spawned, so the
    /// queue is FIFO by arrival.
    fn admit(&self, request: &CompleteRequest) -> Result<Admitted, Error> {
        let (model, bot) = self.resolve_model(request.model.as_deref())?;
        if request.messages.is_empty() {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "\"messages\" is empty; send at least one {\"role\":\"user\",\"content\":\"...\"}",
            ));
        }
        if let Some(id) = request.conversation {
            // Named but no longer in memory (more recent ones pushed it out): the history
            // may still have it.
            if !self.conversations.knows(id) {
                if let Some(stored) = crate::history::remembered_one(
                    &self.config.history,
                    &self.config.browser.profile,
                    id,
                ) {
                    self.conversations.remember(stored);
                }
            }
        }
        let plan =
            self.conversations
                .plan(&model, &bot, &request.messages, request.conversation)?;
        if plan.prompt().trim().is_empty() {
            return Err(Error::new(ErrorKind::BadRequest, "the prompt is empty"));
        }
        let want = match &plan.send {
            conversations::Send::Continue { code, .. } => Warm::Chat(code.clone()),
            conversations::Send::Fresh { .. } => Warm::Bot(bot.clone()),
        };
        let slot = self.pool.acquire(&want);
        Ok(Admitted {
            model,
            bot,
            plan,
            slot,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        self: &Arc<Self>,
        model: String,
        bot: String,
        plan: &mut Plan,
        slot: Acquired,
        updates: &mut (dyn FnMut(ReplyEvent) + Send),
        cancel: &CancellationToken,
        t0: Instant,
        aftercare: &mut Option<Aftercare>,
    ) -> Result<Completion, Error> {
        let waiting = match slot {
            Acquired::Now(tab) => Ok(tab),
            Acquired::Queued(ticket) => {
                updates(ReplyEvent::Queued {
                    position: ticket.position,
                });
                Err(ticket)
            }
            // The tab being made ready for this conversation's chat page: not a queue.
            Acquired::Soon(ticket) => Err(ticket),
        };
        let mut tab = match waiting {
            Ok(tab) => tab,
            Err(ticket) => {
                let limit = secs(self.config.timeouts.reply_secs);
                // Leaving the queue drops the ticket, which passes on a tab handed over meanwhile.
                tokio::select! {
                    tab = ticket.wait() => tab?,
                    _ = cancel.cancelled() => return Err(Error::new(ErrorKind::Cancelled, "the request was cancelled while queued").sent(false)),
                    _ = tokio::time::sleep(limit) => {
                        return Err(if self.browser.generation().up {
                            Error::new(ErrorKind::Timeout, format!("no tab became free within {}s; retry later or raise pool.tabs", self.config.timeouts.reply_secs))
                        } else {
                            Error::new(ErrorKind::BrowserUnavailable, "the browser is down and could not be restarted in time; see `poectl status`")
                        }.sent(false));
                    }
                }
            }
        };
        let queued_ms = t0.elapsed().as_millis() as u64;
        fault_injection(plan.prompt());
        updates(ReplyEvent::Started {
            model: model.clone(),
            bot: bot.clone(),
            conversation: Some(plan.conversation),
        });
        let mut first_token: Option<u64> = None;
        let mut on_progress = |p: Progress| match p {
            Progress::Sent => updates(ReplyEvent::Sent),
            Progress::Text(chunk) => {
                first_token.get_or_insert_with(|| t0.elapsed().as_millis() as u64);
                updates(ReplyEvent::Text(chunk));
            }
        };
        let gone = tab.browser_gone.clone();
        let result = loop {
            let (code, answers) = match &plan.send {
                conversations::Send::Continue { code, answers, .. } => {
                    (Some(code.clone()), *answers)
                }
                conversations::Send::Fresh { .. } => (None, 0),
            };
            let target = match &code {
                Some(code) => Target::Chat {
                    bot: &bot,
                    code,
                    answers,
                },
                None => Target::Fresh { bot: &bot },
            };
            let prompt = plan.prompt().to_owned();
            let result = tokio::select! {
                r = self.driver.complete(&mut tab, &target, &prompt, &self.pacer, &mut on_progress, cancel) => r,
                _ = gone.cancelled() => Err(Error::new(
                    ErrorKind::BrowserCrashed,
                    "the browser died during the reply; poed is restarting it, retry the request",
                )),
            };
            match result {
                // Nothing was sent: the conversation goes on in a fresh chat instead.
                Err(e) if code.is_some() && is_chat_gone(&e) => {
                    info!(tab = tab.id, conversation = plan.conversation, why = %e.message, "the site chat cannot be continued; sending the whole conversation in a fresh chat");
                    plan.fall_back(
                        "chat_gone",
                        format!("{}; the whole conversation went to a new chat", e.message),
                    );
                }
                other => break other,
            }
        };
        match &result {
            Ok(_) => self.account.answered(&bot),
            Err(e) => {
                self.account.failed(&bot, e);
                info!(tab = tab.id, kind = %e.kind, "request failed");
            }
        }
        // The chat is used: keep its page for the conversation's next message when the
        // conversation has shown it goes on (a follow-up; one-off requests keep the tabs
        // fresh for new chats), or make the tab fresh again (for the default bot when the
        // site has no such bot), off this request's time.
        match &result {
            Ok(reply) if reply.chat_code.is_some() && !plan.new => {
                let code = reply.chat_code.clone().unwrap_or_default();
                self.warm.keep_chat_or_refresh(tab, code, bot.clone());
            }
            // The fresh chat (a page load) is opened once the final event is out: the load
            // would compete for the CPU with the last frame's way to the client.
            _ => {
                let unknown = matches!(&result, Err(e) if e.kind == ErrorKind::UnknownModel);
                let next = if unknown { &self.default_bot } else { &bot };
                *aftercare = Some((tab, Warm::Bot(next.clone())));
            }
        }
        let reply = result.map_err(|e| self.with_close_names(e, &model))?;
        Ok(Completion {
            text: reply.text,
            model,
            bot,
            timings: Timings {
                queued_ms,
                first_token_ms: first_token,
                total_ms: t0.elapsed().as_millis() as u64,
            },
            conversation: Some(plan.conversation),
            continued: plan.continued(),
            reason: plan.not_continued.clone(),
            chat_code: reply.chat_code,
        })
    }

    /// Resolves a requested model to `(public name, bot handle)`: a row of the table (names
    /// and config aliases first), else a bot seen or discovered in the site's spelling of
    /// its handle (the site compares handles case-insensitively), else the name itself when
    /// it has the shape of a handle. Whether the site has that bot shows when its page opens.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<(String, String), Error> {
        let name = requested.unwrap_or(self.models.default_model());
        if self.models.lookup(name).is_none() && models::is_bot_handle(name) {
            if let Some(handle) = self.bots.canonical(name) {
                return Ok((name.to_owned(), handle));
            }
        }
        self.models.resolve(requested)
    }

    /// Adds close names (the table's, the aliases, the bots seen and discovered) to an
    /// `unknown_model` error for `name`.
    fn with_close_names(&self, mut e: Error, name: &str) -> Error {
        if e.kind != ErrorKind::UnknownModel {
            return e;
        }
        let handles = self.bots.handles();
        let close = models::suggest(
            name,
            self.models
                .names()
                .chain(handles.iter().map(String::as_str)),
        );
        if !close.is_empty() {
            e.message = format!("{}; close names: {}", e.message, close.join(", "));
        }
        e
    }

    /// Every model a request may name: the table's rows (with what is known of their bots),
    /// then the bots seen (latest answer first), then the site's list as discovered, each
    /// handle once.
    pub fn model_list(&self) -> Vec<ModelInfo> {
        let seen = self.bots.seen();
        let mut list = self.models.list();
        let mut covered: std::collections::HashSet<String> = list
            .iter()
            .flat_map(|m| [m.bot.to_ascii_lowercase(), m.name.to_ascii_lowercase()])
            .collect();
        for row in &mut list {
            if let Some(s) = seen
                .iter()
                .find(|s| s.bot.handle.eq_ignore_ascii_case(&row.bot))
            {
                row.last_answered = Some(s.last_answered);
                row.display_name = s.bot.display_name.clone();
            }
        }
        for s in seen {
            if covered.insert(s.bot.handle.to_ascii_lowercase()) {
                list.push(ModelInfo {
                    name: s.bot.handle.clone(),
                    bot: s.bot.handle,
                    source: ModelSource::Seen,
                    display_name: s.bot.display_name,
                    last_answered: Some(s.last_answered),
                });
            }
        }
        if let Some(d) = self.bots.discovered() {
            for b in d.bots {
                if covered.insert(b.handle.to_ascii_lowercase()) {
                    list.push(ModelInfo {
                        name: b.handle.clone(),
                        bot: b.handle,
                        source: ModelSource::Discovered,
                        display_name: b.display_name,
                        last_answered: None,
                    });
                }
            }
        }
        list
    }

    /// The listed model named `name` (exactly; a bot's handle in any case), if any.
    pub fn known_model(&self, name: &str) -> Option<ModelInfo> {
        let list = self.model_list();
        let exact = list.iter().position(|m| m.name == name);
        let any_case = || {
            list.iter().position(|m| {
                matches!(m.source, ModelSource::Seen | ModelSource::Discovered)
                    && m.name.eq_ignore_ascii_case(name)
            })
        };
        let i = exact.or_else(any_case)?;
        list.into_iter().nth(i)
    }

    pub fn models_event(&self) -> Event {
        Event::Models {
            default: self.models.default_model().to_owned(),
            models: self.model_list(),
            discovered_at: self.bots.discovered().map(|d| d.collected_at),
        }
    }

    /// Reads the site's bot list (`site.bots_path`) in a tab of the pool, keeps it and
    /// caches it in the data directory; answers with the models then known. Waits for a
    /// free tab at most as long as a reply may take; the page itself gets the navigation
    /// and prompt-box time limits together. Cancellable.
    pub async fn refresh_bots(
        self: &Arc<Self>,
        cancel: &CancellationToken,
    ) -> Result<Event, Error> {
        let t = &self.config.timeouts;
        let site = &self.config.site;
        let url = format!("{}{}", site.base_url.trim_end_matches('/'), site.bots_path);
        let mut tab = match self.pool.acquire(&Warm::Bot(self.default_bot.clone()))? {
            Acquired::Now(tab) => tab,
            Acquired::Queued(ticket) | Acquired::Soon(ticket) => tokio::select! {
                tab = ticket.wait() => tab?,
                _ = cancel.cancelled() => return Err(Error::new(ErrorKind::Cancelled, "the bot list refresh was cancelled while waiting for a tab")),
                _ = tokio::time::sleep(secs(t.reply_secs)) => return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no tab became free within {}s to read the bot list; retry later", t.reply_secs),
                )),
            },
        };
        let found = crate::site::poe::discover::collect_bots(
            &self.driver,
            &mut tab,
            &url,
            secs(t.navigation_secs),
            secs(t.navigation_secs + t.prompt_box_secs),
            cancel,
        )
        .await;
        if let Err(e) = &found {
            self.account.failed(&self.default_bot, e);
        }
        // The tab left its chat: make it fresh again, off this request's time.
        self.warm
            .prepare_and_release(tab, Warm::Bot(self.default_bot.clone()));
        let bots = found?;
        match self.bots.set_discovered(&bots, &url) {
            Ok(list) => info!(bots = list.bots.len(), "the site's bot list refreshed"),
            Err(e) => tracing::warn!(error = %e, "the bot list was read but not cached"),
        }
        Ok(self.models_event())
    }

    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            socket: self
                .socket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            http: self.http_addr.get().cloned(),
            base_url: self.config.site.base_url.clone(),
            browser: self.browser.status(),
            pool: self.pool.status(),
            account: {
                let mut a = self.account.snapshot();
                a.send_backoff_ms = self.pacer.backoff().as_millis() as u64;
                a
            },
            requests: self.stats.outcomes(),
        }
    }

    /// A round trip through the request path's parts (the pool, the account, the browser
    /// supervisor and the browser): the systemd watchdog is fed only when it succeeds.
    pub async fn probe(&self) -> Result<(), String> {
        let _ = self.pool.status();
        let _ = self.account.state();
        self.browser.ping().await
    }

    /// Takes the one-at-a-time lock of sign-in and cookie import, or answers `busy`.
    fn session_lock(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, Error> {
        self.session_op.try_lock().map_err(|_| {
            Error::new(
                ErrorKind::Busy,
                "a sign-in or cookie import is already running; wait for it to finish (or cancel it) and try again",
            )
        })
    }

    /// Stores session cookies in the profile, then opens a chat to see whether the profile
    /// is now signed in. Returns how many cookies were stored and the account state.
    pub async fn import_cookies(
        self: &Arc<Self>,
        cookies: Vec<crate::cookies::Cookie>,
        cancel: &CancellationToken,
    ) -> Result<(usize, AccountState), Error> {
        let _one = self.session_lock()?;
        let (_, bot) = self.models.resolve(None)?;
        let t = &self.config.timeouts;
        // Room for a queued wait, the page and its prompt box.
        let limit = secs(t.navigation_secs + t.prompt_box_secs) + Duration::from_secs(30);
        let session = Session {
            browser: &self.browser,
            pool: &self.pool,
            driver: &self.driver,
            site: &self.config.site,
            timeouts: t,
            bot: &bot,
        };
        self.account.reset();
        let (count, checked) = session.import_cookies(cookies, limit, cancel).await?;
        self.conversations.signed_in_again();
        match &checked {
            Ok(()) => self.account.signed_in(),
            Err(e) => self.account.failed(&bot, e),
        }
        Ok((count, self.account.state()))
    }

    /// Signs the profile in with the user's help (see [`Session::login`]); bounded by
    /// `timeout`, cancellable, one at a time.
    pub async fn login(
        self: &Arc<Self>,
        timeout: Duration,
        cancel: &CancellationToken,
        started: impl FnOnce(String),
    ) -> Result<AccountState, Error> {
        let _one = self.session_lock()?;
        let (_, bot) = self.models.resolve(None)?;
        let session = Session {
            browser: &self.browser,
            pool: &self.pool,
            driver: &self.driver,
            site: &self.config.site,
            timeouts: &self.config.timeouts,
            bot: &bot,
        };
        let result = session
            .login(
                self.config.browser.connect.is_some(),
                self.config.browser.headless,
                timeout,
                cancel,
                started,
            )
            .await;
        match &result {
            Ok(()) => {
                self.conversations.signed_in_again();
                self.account.reset();
                self.account.signed_in();
                info!("signed in");
            }
            Err(e) => self.account.failed(&bot, e),
        }
        result.map(|()| self.account.state())
    }

    /// Marks the daemon as stopping: requests cancelled from now on end as `shutting_down`.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The Prometheus text for `GET /metrics`.
    pub fn metrics(&self) -> String {
        self.stats.render(&self.status(), self.serving.count())
    }

    /// Stops lending tabs and closes the idle ones.
    pub async fn close_pool(&self) {
        for tab in self.pool.close() {
            tab.close().await;
        }
    }
}
