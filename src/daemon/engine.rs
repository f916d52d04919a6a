//! The engine: what a completion request goes through, whatever front door it came from.
//!
//! Resolve the model, format the prompt, take a tab from the pool (or wait in its queue),
//! respect the account's minimum send interval, let the site driver run the chat, then make
//! the tab fresh again in the background so the next request pays only for its own chat.
//! It also keeps the counters and account state that `status` reports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};

use crate::browser::supervisor::BrowserHandle;
use crate::browser::tab::Tab;
use crate::browser::tab_pool::{Acquired, TabPool};
use crate::config::{secs, Config};
use crate::error::{Error, ErrorKind};
use crate::metrics::Histogram;
use crate::protocol::{AccountStatus, CompleteRequest, Event, Status, Timings};
use crate::reply::Chunk;
use crate::site::poe::driver::Driver;
use crate::site::poe::models::ModelTable;
use crate::site::poe::pacer::Pacer;
use crate::site::poe::prompt::format_prompt;

/// What a front door reads from a submitted request: progress, then one final event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEvent {
    Queued {
        position: usize,
    },
    Started {
        model: String,
        bot: String,
    },
    /// The reply text changed (consecutive changes are merged when the reader is slow).
    Text(Chunk),
    Done(Completion),
    Failed(Error),
}

impl ReplyEvent {
    pub fn is_final(&self) -> bool {
        matches!(self, ReplyEvent::Done(_) | ReplyEvent::Failed(_))
    }
}

/// Events of one submitted request. Dropping it before the final event cancels the request
/// (a client that went away); the tab is still returned to the pool.
pub struct ReplyStream {
    rx: mpsc::Receiver<ReplyEvent>,
    _cancel_on_drop: DropGuard,
}

impl ReplyStream {
    pub async fn next(&mut self) -> Option<ReplyEvent> {
        self.rx.recv().await
    }
}

/// Events queued per request before deltas start to merge.
const REPLY_QUEUE: usize = 32;
/// How long a final event waits for a reader that does not read.
const FINAL_WAIT: Duration = Duration::from_secs(30);

/// A request that passed its checks and holds a tab or a place in the queue.
struct Admitted {
    model: String,
    bot: String,
    prompt: String,
    slot: Acquired,
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
    pacer: Pacer,
    next_tab_id: std::sync::atomic::AtomicUsize,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Set when shutdown stops running requests: their error is `shutting_down`.
    stopping: std::sync::atomic::AtomicBool,
    /// The HTTP front door's bound address, for `status`.
    pub http_addr: std::sync::OnceLock<String>,
    first_token_hist: Mutex<Histogram>,
    duration_hist: Mutex<Histogram>,
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
                ..AccountStatus::default()
            })),
            pacer: Pacer::new(Duration::from_millis(config.pool.min_send_interval_ms)),
            next_tab_id: std::sync::atomic::AtomicUsize::new(1),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            http_addr: std::sync::OnceLock::new(),
            first_token_hist: Mutex::default(),
            duration_hist: Mutex::default(),
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
    fn prepare_and_release(self: &Arc<Self>, tab: Tab, bot: String) {
        let engine = self.clone();
        tokio::spawn(async move {
            if tab.browser_gone.is_cancelled() {
                // The browser died: the rebuilt pool replaces this tab.
                engine.pool.unregister_tab();
                return;
            }
            let mut tab = tab;
            for attempt in 0..2 {
                if !tab.is_gone() {
                    match engine.driver.open_chat(&mut tab, &bot).await {
                        Ok(()) => engine.note_account(&bot, None),
                        // The browser went away meanwhile: the rebuilt pool replaces the tab.
                        Err(_) if tab.browser_gone.is_cancelled() => {
                            engine.pool.unregister_tab();
                            return;
                        }
                        // A page that does not answer is treated like a crashed one.
                        Err(e) if e.kind == ErrorKind::BrowserUnavailable => {
                            warn!(tab = tab.id, error = %e, "the tab does not answer; replacing it");
                            tab.crash();
                        }
                        Err(e) => {
                            engine.note_account(&bot, Some(&e));
                            warn!(tab = tab.id, error = %e, "could not prepare a fresh chat");
                        }
                    }
                }
                if !tab.is_gone() || attempt == 1 {
                    break;
                }
                // The tab's page crashed (renderer gone) or hung: it costs only the request
                // that was on it; a new tab takes its place.
                let old = tab.id;
                match engine.replacement_tab().await {
                    Some(new) => {
                        info!(old, new = new.id, "replaced a crashed tab");
                        let dead = std::mem::replace(&mut tab, new);
                        tokio::spawn(dead.close());
                    }
                    None => {
                        engine.pool.unregister_tab();
                        return;
                    }
                }
            }
            engine.pool.release(tab);
        });
    }

    /// A new tab in place of a crashed one. Chromium can be slow to give one right after
    /// its renderers died, so this tries three times; if it still cannot, the browser is
    /// wedged and is relaunched (the rebuilt pool then replaces the tab).
    async fn replacement_tab(&self) -> Option<Tab> {
        for attempt in 1..=3u32 {
            match self.open_tab().await {
                Ok(new) if new.browser_gone.is_cancelled() => return None,
                Ok(new) => return Some(new),
                Err(e) => {
                    warn!(attempt, error = %e, "could not open a replacement tab");
                    if !self.browser.generation().up {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
            }
        }
        warn!("the browser cannot open tabs; relaunching it");
        let headless = self.config.browser.headless;
        if let Err(e) = self.browser.relaunch(headless).await {
            warn!(error = %e, "relaunch failed");
        }
        None
    }

    /// Updates the account state from what a page showed for `bot`.
    fn note_account(&self, bot: &str, error: Option<&Error>) {
        let mut a = lock(&self.account);
        match error {
            None => {
                a.state = "signed_in".into();
            }
            Some(e) if e.kind == ErrorKind::NotLoggedIn => a.state = "signed_out".into(),
            Some(e) if e.kind == ErrorKind::DailyLimit => {
                a.state = "signed_in".into();
                a.daily_limits.retain(|d| d.bot != bot);
                a.daily_limits.push(crate::protocol::DailyLimit {
                    bot: bot.to_owned(),
                    seen_at: unix_now(),
                });
                a.last_site_error = Some(e.to_string());
            }
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

    /// Starts a completion in its own task and returns its events. The task always runs to
    /// the end (so the tab always goes back to the pool); `cancel` or dropping the stream
    /// stops it early. Memory stays bounded for a slow reader: deltas merge while the
    /// stream's queue is full.
    pub fn submit(
        self: &Arc<Self>,
        request: CompleteRequest,
        cancel: CancellationToken,
    ) -> ReplyStream {
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        let guard = cancel.clone().drop_guard();
        let engine = self.clone();
        let t0 = Instant::now();
        let admitted = self.admit(&request);
        tokio::spawn(async move {
            let mut pending: Option<Chunk> = None;
            let tx_updates = tx.clone();
            let mut on_update = |event: ReplyEvent| {
                let event = match event {
                    ReplyEvent::Text(chunk) => ReplyEvent::Text(match pending.take() {
                        Some(p) => p.merge(chunk),
                        None => chunk,
                    }),
                    other => other,
                };
                if let Err(mpsc::error::TrySendError::Full(back)) = tx_updates.try_send(event) {
                    // The reader is behind: keep the text to merge with what comes next.
                    if let ReplyEvent::Text(chunk) = back {
                        pending = Some(chunk);
                    }
                }
            };
            let result = engine.finish(admitted, t0, &mut on_update, &cancel).await;
            let mut finals = Vec::new();
            if let (Ok(_), Some(p)) = (&result, pending) {
                finals.push(ReplyEvent::Text(p));
            }
            finals.push(match result {
                Ok(c) => ReplyEvent::Done(c),
                Err(e) => ReplyEvent::Failed(e),
            });
            for event in finals {
                if !matches!(
                    tokio::time::timeout(FINAL_WAIT, tx.send(event)).await,
                    Ok(Ok(()))
                ) {
                    warn!("a client did not read its reply; dropped");
                    break;
                }
            }
        });
        ReplyStream {
            rx,
            _cancel_on_drop: guard,
        }
    }

    /// Runs an admitted request and keeps the counters.
    async fn finish(
        self: &Arc<Self>,
        admitted: Result<Admitted, Error>,
        t0: Instant,
        updates: &mut (dyn FnMut(ReplyEvent) + Send),
        cancel: &CancellationToken,
    ) -> Result<Completion, Error> {
        use std::sync::atomic::Ordering::Relaxed;
        self.in_flight.fetch_add(1, Relaxed);
        let mut result = match admitted {
            Ok(a) => self.run(a, updates, cancel, t0).await,
            Err(e) => Err(e),
        };
        self.in_flight.fetch_sub(1, Relaxed);
        if let Err(e) = &mut result {
            if e.kind == ErrorKind::Cancelled && self.stopping.load(Relaxed) {
                *e = Error::new(
                    ErrorKind::ShuttingDown,
                    "poed is shutting down and stopped this reply after its grace period; retry when it is back",
                );
            }
        }
        let outcome = match &result {
            Ok(c) => {
                if let Some(ms) = c.timings.first_token_ms {
                    lock(&self.first_token_hist).observe(ms as f64 / 1000.0);
                }
                lock(&self.duration_hist).observe(c.timings.total_ms as f64 / 1000.0);
                "ok".to_string()
            }
            Err(e) => e.kind.as_str().to_string(),
        };
        *lock(&self.outcomes).entry(outcome).or_default() += 1;
        result
    }

    /// The synchronous part of a request: checks, then a tab or a place in the queue. Done
    /// in arrival order, before any task is spawned, so the queue is FIFO by arrival.
    fn admit(&self, request: &CompleteRequest) -> Result<Admitted, Error> {
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
        let slot = self.pool.acquire(&bot)?;
        Ok(Admitted {
            model,
            bot,
            prompt,
            slot,
        })
    }

    async fn run(
        self: &Arc<Self>,
        admitted: Admitted,
        updates: &mut (dyn FnMut(ReplyEvent) + Send),
        cancel: &CancellationToken,
        t0: Instant,
    ) -> Result<Completion, Error> {
        let Admitted {
            model,
            bot,
            prompt,
            slot,
        } = admitted;
        let mut tab = match slot {
            Acquired::Now(tab) => tab,
            Acquired::Queued(ticket) => {
                updates(ReplyEvent::Queued {
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
        updates(ReplyEvent::Started {
            model: model.clone(),
            bot: bot.clone(),
        });
        let mut first_token: Option<u64> = None;
        let mut on_progress = |chunk: Chunk| {
            first_token.get_or_insert_with(|| t0.elapsed().as_millis() as u64);
            updates(ReplyEvent::Text(chunk));
        };
        let gone = tab.browser_gone.clone();
        let result = tokio::select! {
            r = self.driver.complete(&mut tab, &bot, &prompt, &self.pacer, &mut on_progress, cancel) => r,
            _ = gone.cancelled() => Err(Error::new(
                ErrorKind::BrowserCrashed,
                "the browser died during the reply; poed is restarting it, retry the request",
            )),
        };
        self.note_account(&bot, result.as_ref().err());
        if result.is_ok() {
            // The bot answered: whatever limit was seen for it has passed.
            lock(&self.account).daily_limits.retain(|d| d.bot != bot);
        }
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
            http: self.http_addr.get().cloned(),
            base_url: self.config.site.base_url.clone(),
            browser: self.browser.status(),
            pool: self.pool.status(),
            account: lock(&self.account).clone(),
            requests: lock(&self.outcomes).clone(),
        }
    }

    /// Stores session cookies in the profile, then opens a chat to see whether the profile
    /// is now signed in. Returns how many cookies were stored and the account state.
    pub async fn import_cookies(
        self: &Arc<Self>,
        cookies: Vec<crate::cookies::Cookie>,
    ) -> Result<(usize, String), Error> {
        use chromiumoxide::cdp::browser_protocol::network::{
            CookieParam, CookieSameSite, TimeSinceEpoch,
        };
        if cookies.is_empty() {
            return Err(Error::new(ErrorKind::BadRequest, "no cookies to import"));
        }
        if !cookies.iter().any(|c| c.name == "p-b") {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "the cookies include no \"p-b\" (Poe's session cookie); export the cookies of poe.com while signed in",
            ));
        }
        let count = cookies.len();
        let params: Vec<CookieParam> = cookies
            .into_iter()
            .map(|c| {
                let mut p = CookieParam::new(c.name, c.value);
                p.domain = Some(c.domain);
                p.path = Some(c.path);
                p.secure = Some(c.secure);
                p.http_only = Some(c.http_only);
                p.expires = c.expires.map(TimeSinceEpoch::new);
                p.same_site = match c.same_site.as_deref() {
                    Some("Strict") => Some(CookieSameSite::Strict),
                    Some("Lax") => Some(CookieSameSite::Lax),
                    Some("None") => Some(CookieSameSite::None),
                    _ => None,
                };
                p
            })
            .collect();
        self.browser
            .set_cookies(params)
            .await
            .map_err(|e| Error::new(ErrorKind::BrowserUnavailable, e))?;
        info!(count, "session cookies imported");
        // Pages loaded before the import show the old session.
        self.pool.cool_all();
        let (_, bot) = self.models.resolve(None)?;
        let mut tab = match self.pool.acquire(&bot)? {
            Acquired::Now(tab) => tab,
            Acquired::Queued(ticket) => ticket.wait().await?,
        };
        let checked = self.driver.open_chat(&mut tab, &bot).await;
        self.note_account(&bot, checked.as_ref().err());
        self.pool.release(tab);
        let state = lock(&self.account).state.clone();
        Ok((count, state))
    }

    /// Signs the profile in with the user's help: relaunches the browser with a visible
    /// window (unless attached with `--connect`, where the user's own browser is used),
    /// opens the sign-in page, waits until the session cookie appears and a bot page shows
    /// its prompt box, then goes back to headless. `started` hears the sign-in URL.
    pub async fn login(
        self: &Arc<Self>,
        timeout: Duration,
        started: impl FnOnce(String),
    ) -> Result<String, Error> {
        use chromiumoxide::cdp::browser_protocol::page::{
            EventFrameNavigated, EventNavigatedWithinDocument,
        };
        use futures::StreamExt;
        let (_, bot) = self.models.resolve(None)?;
        let connected = self.config.browser.connect.is_some();
        let relaunch = !connected && self.config.browser.headless;
        if relaunch {
            let display = ["DISPLAY", "WAYLAND_DISPLAY"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
            if !display {
                return Err(Error::new(
                    ErrorKind::NoDisplay,
                    "there is no display to show a browser window on (DISPLAY is not set): import cookies from a signed-in browser with `poectl cookies import FILE`, or run poed with --connect to your own browser (README, \"Signing in\")",
                ));
            }
            self.browser
                .relaunch(false)
                .await
                .map_err(|e| Error::new(ErrorKind::BrowserUnavailable, e))?;
        }
        let result = async {
            let tab = Tab::open(
                &self.browser,
                0,
                self.config.site.update_socket_contains.clone(),
            )
            .await
            .map_err(|e| Error::new(ErrorKind::BrowserUnavailable, e))?;
            let listen = |e: chromiumoxide::error::CdpError| {
                Error::new(
                    ErrorKind::BrowserUnavailable,
                    format!("cannot watch the sign-in page: {e}"),
                )
            };
            let navigated = tab
                .page
                .event_listener::<EventFrameNavigated>()
                .await
                .map_err(listen)?;
            let within_doc = tab
                .page
                .event_listener::<EventNavigatedWithinDocument>()
                .await
                .map_err(listen)?;
            let mut navigations =
                futures::stream::select(navigated.map(|_| ()), within_doc.map(|_| ()));
            let url = format!(
                "{}{}",
                self.config.site.base_url.trim_end_matches('/'),
                self.config.site.login_path
            );
            crate::browser::cdp::goto(&tab.page, &url, secs(self.config.timeouts.navigation_secs))
                .await
                .map_err(|e| Error::new(ErrorKind::SiteError, format!("cannot open {url}: {e}")))?;
            started(url);
            let waited = tokio::time::timeout(timeout, async {
                // Checked after every navigation of the sign-in tab, and once a second in
                // case the site signs in without navigating (a human-paced check).
                loop {
                    let cookies = tab.page.get_cookies().await.unwrap_or_default();
                    if cookies
                        .iter()
                        .any(|c| c.name == "p-b" && !c.value.is_empty())
                    {
                        return;
                    }
                    tokio::select! {
                        nav = navigations.next() => if nav.is_none() { return },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            })
            .await;
            if waited.is_err() {
                tab.close().await;
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "nobody signed in within {}s; run `poectl login` again",
                        timeout.as_secs()
                    ),
                ));
            }
            let mut tab = tab;
            let checked = self.driver.open_chat(&mut tab, &bot).await;
            tab.close().await;
            checked
        }
        .await;
        if relaunch {
            if let Err(e) = self.browser.relaunch(true).await {
                warn!(error = %e, "could not go back to headless after signing in");
            }
        }
        self.note_account(&bot, result.as_ref().err());
        self.pool.cool_all();
        result?;
        info!("signed in");
        Ok(lock(&self.account).state.clone())
    }

    /// Marks the daemon as stopping: requests cancelled from now on end as `shutting_down`.
    pub fn begin_shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The Prometheus text for `GET /metrics`.
    pub fn metrics(&self) -> String {
        use crate::metrics::render_value;
        let status = self.status();
        let mut out = String::new();
        out.push_str("# HELP poed_requests_total Finished completion requests by outcome (ok or an error kind).\n# TYPE poed_requests_total counter\n");
        for (outcome, n) in &status.requests {
            out.push_str(&format!(
                "poed_requests_total{{outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        render_value(
            &mut out,
            "poed_requests_in_flight",
            "gauge",
            "Completion requests running or queued.",
            self.in_flight.load(std::sync::atomic::Ordering::Relaxed),
        );
        render_value(
            &mut out,
            "poed_requests_queued",
            "gauge",
            "Requests waiting for a tab.",
            status.pool.queued,
        );
        render_value(
            &mut out,
            "poed_tabs",
            "gauge",
            "Tabs in the pool.",
            status.pool.tabs,
        );
        render_value(
            &mut out,
            "poed_tabs_idle",
            "gauge",
            "Idle tabs.",
            status.pool.idle,
        );
        render_value(
            &mut out,
            "poed_browser_up",
            "gauge",
            "1 when the browser is up.",
            u8::from(status.browser.state == "up"),
        );
        render_value(
            &mut out,
            "poed_browser_restarts_total",
            "counter",
            "Browser relaunches after a crash.",
            status.browser.restarts,
        );
        render_value(
            &mut out,
            "poed_signed_in",
            "gauge",
            "1 when the profile is known to be signed in.",
            u8::from(status.account.state == "signed_in"),
        );
        lock(&self.first_token_hist).render(
            &mut out,
            "poed_time_to_first_token_seconds",
            "Time from request to the first text of the reply.",
        );
        lock(&self.duration_hist).render(
            &mut out,
            "poed_request_duration_seconds",
            "Time from request to the complete reply.",
        );
        out
    }

    /// Stops lending tabs and closes the idle ones.
    pub async fn close_pool(&self) {
        for tab in self.pool.close() {
            tab.close().await;
        }
    }
}
