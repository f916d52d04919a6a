//! The Poe driver: runs one completion in a tab, the way a person would, and reads what the
//! site says from the page's network traffic.
//!
//! Open the bot page (a fresh chat), or the page of a site chat to continue
//! (`{base}/chat/{code}`), unless the tab already shows it; a redirect to the sign-in page
//! means signed out at once, otherwise wait for the prompt box. A chat page that is gone
//! (not found, moved away, no prompt box) is said with [`is_chat_gone`], before anything
//! was sent, so the caller can start a fresh chat instead. Focus the prompt box and arm the
//! wait for the send button while the tab waits for a request; then enter the prompt with
//! `Input.insertText` and click as soon as the page enables the button. Then everything
//! comes from the network (see [`crate::browser::tab`]): the response to the page's own
//! send request says whether the site took the prompt (a refusal ends the request at once
//! with its own kind; a refusal for the site's rate or for too many replies in flight is
//! sent again after the account's backoff), the update socket's frames carry the reply, and
//! after lost updates the page's refetch response holds it. Only if that response does not
//! come is the page's DOM read, as a last resort that can be switched off. No injected
//! script, no polling. Stopping clicks the page's stop button. A prompt the site took is
//! never sent again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use crate::browser::cdp::{self, ArmedWait, CdpFailure, Wanted};
use crate::browser::tab::{Tab, TabSignal};
use crate::browser::tab_pool::Warm;
use crate::browser::update_socket::SocketState;
use crate::config::{secs, SiteConfig, Timeouts};
use crate::error::{Error, ErrorKind};
use crate::reply::Chunk;
use crate::site::poe::frames::{parse_frame, Outcome, ReplyStep, ReplyTracker, Update};
use crate::site::poe::network::{self, Refusal, ReplyTarget, SendResult};
use crate::site::poe::pacer::Pacer;

/// What a running completion tells its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The send was pressed: the site may take the prompt from now on.
    Sent,
    /// The reply text changed.
    Text(Chunk),
}

/// Where a prompt is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A fresh chat with the bot (its page `{base}/{bot}`).
    Fresh { bot: &'a str },
    /// The site chat `code` with the bot (its page `{base}/chat/{code}`): the message
    /// continues it. `answers` is how many replies the chat's page shows already.
    Chat {
        bot: &'a str,
        code: &'a str,
        answers: usize,
    },
}

impl Target<'_> {
    pub fn bot(&self) -> &str {
        match self {
            Target::Fresh { bot } | Target::Chat { bot, .. } => bot,
        }
    }

    /// The page a tab shows when it is ready for this target.
    pub fn warm(&self) -> Warm {
        match self {
            Target::Fresh { bot } => Warm::Bot((*bot).to_owned()),
            Target::Chat { code, .. } => Warm::Chat((*code).to_owned()),
        }
    }
}

/// A finished reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The site's final text.
    pub text: String,
    /// The site chat the reply is in (from the site's answer to the send, else the page's
    /// URL), if the site named it.
    pub chat_code: Option<String>,
}

/// The `state` of the error that says a site chat cannot be continued (see
/// [`is_chat_gone`]); it never reaches a client.
const CHAT_GONE: &str = "poed:chat_gone";

/// Whether `e` says that the site chat of a [`Target::Chat`] cannot be used (deleted, not
/// found, no prompt box, refused): nothing was sent, and a fresh chat may be used instead.
pub fn is_chat_gone(e: &Error) -> bool {
    e.state.as_deref() == Some(CHAT_GONE)
}

fn chat_gone(code: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::SiteError,
        format!("the site chat {code} cannot be continued: {why}"),
    )
    .with_state(CHAT_GONE)
    .sent(false)
}

/// How many times a prompt the site refused for its rate or for too many replies in flight
/// is sent in all, before the refusal is the request's answer.
const SEND_ATTEMPTS: u32 = 3;

/// How long a stop waits for the page's stop button (it appears once the page knows the
/// reply is running, which can lag the send on a loaded machine).
const STOP_BUTTON_WAIT: Duration = Duration::from_secs(2);

/// How long the reader may explain a failed click (a dead browser, a reply after all).
const CLICK_AFTERMATH: Duration = Duration::from_secs(2);

/// How long the send button may take to enable when the text went in without focusing first.
const UNFOCUSED_TRY: Duration = Duration::from_secs(1);

/// A short limit for single DevTools commands that should answer at once.
const COMMAND_LIMIT: Duration = Duration::from_secs(10);

/// Runs completions on tabs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Driver {
    site: SiteConfig,
    timeouts: Timeouts,
    /// The page's last send went unseen (its requests no longer match
    /// `site.api_path_contains`): later sends do not hold their updates for it, so the wait
    /// for it is paid once, not by every reply. Seeing a send again turns it off.
    sends_unseen: Arc<AtomicBool>,
    /// A send found no open update socket on its page within `timeouts.update_socket_secs`
    /// (the site opens it later, or its URL no longer matches `site.update_socket_contains`):
    /// later sends do not wait for one, until a page is seen with its socket open again.
    sockets_unseen: Arc<AtomicBool>,
}

fn browser_error(during: &str, e: CdpFailure) -> Error {
    match e {
        CdpFailure::Timeout(d) => Error::new(
            ErrorKind::BrowserUnavailable,
            format!("the browser did not answer within {d:?} while {during}; it may be overloaded or wedged"),
        ),
        other => Error::new(
            ErrorKind::BrowserUnavailable,
            format!("browser error while {during}: {other}"),
        ),
    }
}

impl Driver {
    pub fn new(site: SiteConfig, timeouts: Timeouts) -> Self {
        Driver {
            site,
            timeouts,
            sends_unseen: Arc::default(),
            sockets_unseen: Arc::default(),
        }
    }

    pub fn bot_url(&self, bot: &str) -> String {
        format!("{}/{}", self.site.base_url.trim_end_matches('/'), bot)
    }

    /// The page of the site chat `code`.
    pub fn chat_url(&self, code: &str) -> String {
        format!("{}/chat/{}", self.site.base_url.trim_end_matches('/'), code)
    }

    fn target_url(&self, target: &Target<'_>) -> String {
        match target {
            Target::Fresh { bot } => self.bot_url(bot),
            Target::Chat { code, .. } => self.chat_url(code),
        }
    }

    /// The path of `url` on the site (`None` off the site), without query or fragment and
    /// trailing slashes.
    fn site_path<'u>(&self, url: &'u str) -> Option<&'u str> {
        if !self.on_site(url) {
            return None;
        }
        let rest = &url[self.site.base_url.trim_end_matches('/').len()..];
        let path = rest.split(['?', '#']).next().unwrap_or(rest);
        Some(path.trim_end_matches('/'))
    }

    /// The code of the site chat whose page `url` is, if it is one.
    pub fn chat_code_of(&self, url: &str) -> Option<String> {
        let code = self.site_path(url)?.strip_prefix("/chat/")?;
        (!code.is_empty() && !code.contains('/')).then(|| code.to_owned())
    }

    /// Whether `url` is the page `target` opens.
    fn is_target_page(&self, url: &str, target: &Target<'_>) -> bool {
        match target {
            Target::Fresh { bot } => self.is_bot_page(url, bot),
            Target::Chat { code, .. } => self.chat_code_of(url).as_deref() == Some(*code),
        }
    }

    /// Whether `url` is the site's sign-in page (`site.login_path`, any query).
    pub fn is_sign_in(&self, url: &str) -> bool {
        let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
            return false;
        };
        let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let login = self.site.login_path.trim_end_matches('/');
        !login.is_empty() && (path == login || path.starts_with(&format!("{login}/")))
    }

    fn redirected(&self) -> Error {
        let mut e = self.not_logged_in();
        e.message = format!(
            "the site sent the bot page to its sign-in page; {}",
            e.message
        );
        e
    }

    fn not_logged_in(&self) -> Error {
        Error::new(
            ErrorKind::NotLoggedIn,
            format!(
                "the browser profile is not signed in to {}: run `poectl login` to sign in in a browser window, or `poectl cookies import FILE` where there is no display (README, \"Signing in\")",
                self.site.base_url
            ),
        )
    }

    /// Whether `url` is on the site (`site.base_url`'s origin and path prefix).
    fn on_site(&self, url: &str) -> bool {
        let base = self.site.base_url.trim_end_matches('/');
        url.get(..base.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(base))
            && url[base.len()..]
                .chars()
                .next()
                .is_none_or(|c| matches!(c, '/' | '?' | '#'))
    }

    /// Whether `url` is `bot`'s page: its path, compared case-insensitively as the site
    /// does (it sends other spellings of a handle to the canonical one), any query.
    pub fn is_bot_page(&self, url: &str, bot: &str) -> bool {
        self.site_path(url)
            .and_then(|p| p.strip_prefix('/'))
            .is_some_and(|handle| handle.eq_ignore_ascii_case(bot))
    }

    /// The site has no bot `bot`: its page said so (`why`).
    fn no_such_bot(&self, bot: &str, why: &str) -> Error {
        Error::new(
            ErrorKind::UnknownModel,
            format!(
                "the site has no bot {bot:?} ({why}); check the name, see `poectl models` (`--refresh` reads the site's bot list), or add a row under [site.models]"
            ),
        )
    }

    /// Opens a fresh chat with `bot` and waits for its prompt box; the tab is then warm.
    /// A bot the site does not have (its page answers 404, or sends the browser off the
    /// bot's page) is `unknown_model` as soon as the page says so.
    pub async fn open_chat(&self, tab: &mut Tab, bot: &str) -> Result<(), Error> {
        self.open(tab, &Target::Fresh { bot }).await
    }

    /// Opens `target`'s page and waits for its prompt box, which is focused; the tab is
    /// then warm for it. A signed-out profile is `not_logged_in` as soon as the site
    /// redirects; a bot the site does not have is `unknown_model`, a site chat that cannot
    /// be used is [`is_chat_gone`], each as soon as the page says so.
    pub async fn open(&self, tab: &mut Tab, target: &Target<'_>) -> Result<(), Error> {
        tab.warm_for = None;
        tab.armed = None;
        tab.earlier_messages.clear();
        let url = self.target_url(target);
        let not_here = |why: String| match target {
            Target::Fresh { bot } => self.no_such_bot(bot, &why),
            Target::Chat { code, .. } => chat_gone(code, &why),
        };
        let mut documents = tab.watch_document();
        documents.borrow_and_update();
        cdp::goto(&tab.page, &url, secs(self.timeouts.navigation_secs))
            .await
            .map_err(|e| match e {
                // The navigation's own answer names the network error.
                CdpFailure::Command(m) => load_failure(&url, &m),
                other => browser_error("opening the chat page", other),
            })?;
        let landed = cdp::current_url(&tab.page, COMMAND_LIMIT)
            .await
            .unwrap_or_else(|_| tab.url());
        // A page the browser could not load (no answer, a certificate it does not trust)
        // shows Chromium's error page: say what the browser said, at once.
        if let Some(failure) = document_failure(&mut documents, &url, &landed).await {
            return Err(load_failure(&url, &failure));
        }
        // A signed-out visit is redirected to the sign-in page: no need to wait for a
        // prompt box that will never come.
        if self.is_sign_in(&landed) {
            return Err(self.redirected());
        }
        // What the site answered for the page, from the network: a bot or chat it does not
        // have is a not-found page, or a redirect away from the page asked for.
        if self.on_site(&landed) {
            if let Some(status) = document_status(&mut documents, &landed).await {
                if matches!(status, 404 | 410) {
                    return Err(not_here(format!("its page {url} answered HTTP {status}")));
                }
            }
            if !self.is_target_page(&landed, target) {
                return Err(not_here(format!(
                    "{url} sent the browser to {}",
                    crate::redact::url(&landed)
                )));
            }
        }
        let sel = &self.site.selectors;
        let mut moves = tab.watch_url();
        // Moves from now on are checked below. What the watch holds now may still be the
        // previous page's URL: only a sign-in page there counts.
        if self.is_sign_in(&moves.borrow_and_update()) {
            return Err(self.redirected());
        }
        let wanted = [
            Wanted {
                selector: &sel.prompt_box,
                enabled: false,
            },
            Wanted {
                selector: &sel.logged_out,
                enabled: false,
            },
        ];
        let wait = cdp::wait_for_first(&tab.page, &wanted, secs(self.timeouts.prompt_box_secs));
        let redirect = async {
            // The page itself may move to the sign-in page after loading, or away from a
            // bot or chat it does not have.
            loop {
                if moves.changed().await.is_err() {
                    return std::future::pending().await;
                }
                let now = moves.borrow_and_update().clone();
                if self.is_sign_in(&now) {
                    return self.redirected();
                }
                if self.on_site(&now) && !self.is_target_page(&now, target) {
                    return not_here(format!("its page moved to {}", crate::redact::url(&now)));
                }
            }
        };
        let found = tokio::select! {
            found = wait => found.map_err(|e| browser_error("waiting for the prompt box", e))?,
            e = redirect => return Err(e),
        };
        if self.is_sign_in(&tab.url()) {
            return Err(self.redirected());
        }
        match found.index {
            Some(0) => {
                // Focused now, off the request's time: the send then only enters the text.
                let focused = cdp::focus(&tab.page, &sel.prompt_box, COMMAND_LIMIT)
                    .await
                    .map_err(|e| browser_error("focusing the prompt box", e))?;
                if !focused {
                    return Err(self.not_logged_in());
                }
                self.ready_to_send(tab).await;
                tab.warm_for = Some(target.warm());
                debug!(tab = tab.id, ?target, "chat ready");
                Ok(())
            }
            Some(_) => Err(self.not_logged_in()),
            None => {
                let secs = self.timeouts.prompt_box_secs;
                Err(match target {
                    Target::Chat { code, .. } => chat_gone(
                        code,
                        &format!("its page showed no prompt box within {secs}s"),
                    ),
                    Target::Fresh { .. } => {
                        let mut e = self.not_logged_in();
                        e.message = format!(
                            "no prompt box appeared on {url} within {secs}s (a sign-in or challenge page?); {}",
                            e.message
                        );
                        e
                    }
                })
            }
        }
    }

    /// Makes a tab whose page is still the site chat `code` (a reply just finished there)
    /// ready for the chat's next message without reloading it: the prompt box is found and
    /// focused. False when the page is not that chat or has no prompt box now.
    pub async fn keep_chat(&self, tab: &mut Tab, code: &str) -> Result<bool, Error> {
        tab.warm_for = None;
        tab.armed = None;
        if self.chat_code_of(&tab.url()).as_deref() != Some(code) {
            return Ok(false);
        }
        let focused = cdp::focus(&tab.page, &self.site.selectors.prompt_box, COMMAND_LIMIT)
            .await
            .map_err(|e| browser_error("focusing the prompt box", e))?;
        if focused {
            self.ready_to_send(tab).await;
            tab.warm_for = Some(Warm::Chat(code.to_owned()));
        }
        Ok(focused)
    }

    /// What a page with its prompt box focused gets before the request, off its time: the
    /// wait for the send button armed, and the mouse pointer on the send button, where a
    /// user's hand would wait. The click then finds the pointer there already, so pressing
    /// it changes no hover state (the page's hover handlers and a style pass would otherwise
    /// run inside the click, before the send's first answer is read), and the pointer comes
    /// to the button by a move rather than appearing on it. A page without a shown send
    /// button yet keeps its pointer: the click then goes where the button turns up.
    async fn ready_to_send(&self, tab: &mut Tab) {
        tab.armed = ArmedWait::arm(&tab.page, &self.send_wanted()).await;
        match cdp::hover(&tab.page, &self.site.selectors.send_button, COMMAND_LIMIT).await {
            Ok(moved) => trace!(tab = tab.id, moved, "pointer on the send button"),
            Err(e) => {
                debug!(tab = tab.id, error = %e, "could not move the pointer to the send button")
            }
        }
    }

    /// What the send waits for: the send button enabled, or the daily-limit notice.
    fn send_wanted(&self) -> [Wanted<'_>; 2] {
        let sel = &self.site.selectors;
        [
            Wanted {
                selector: &sel.send_button,
                enabled: true,
            },
            Wanted {
                selector: &sel.daily_limit,
                enabled: false,
            },
        ]
    }

    /// Sends `prompt` to `target` in `tab` and streams the reply through `progress`.
    /// Returns the site's final text and the chat it is in. A send the site refuses for its
    /// rate or for too many replies in flight was not taken: it is sent again after the
    /// account's backoff, as long as the request's time allows.
    pub async fn complete(
        &self,
        tab: &mut Tab,
        target: &Target<'_>,
        prompt: &str,
        pacer: &Pacer,
        progress: &mut (dyn FnMut(Progress) + Send),
        cancel: &CancellationToken,
    ) -> Result<Reply, Error> {
        let deadline = Instant::now() + secs(self.timeouts.reply_secs);
        let mut attempt = 1;
        loop {
            let mut chat_code = None;
            match self
                .send_once(tab, target, prompt, pacer, progress, cancel, &mut chat_code)
                .await
            {
                Err(e) if e.sent == Some(false) && is_pace_refusal(&e) => {
                    let backoff = pacer.refused().await;
                    if attempt >= SEND_ATTEMPTS || Instant::now() + backoff >= deadline {
                        return Err(e);
                    }
                    attempt += 1;
                    info!(tab = tab.id, kind = %e.kind, ?backoff, "the site refused the send for now; sending again after the backoff");
                    // The page afresh for the next attempt: the refused page may keep the text.
                    tab.warm_for = None;
                }
                Err(e) => return Err(e),
                Ok(text) => {
                    let chat_code = chat_code.or_else(|| self.chat_code_of(&tab.url()));
                    return Ok(Reply { text, chat_code });
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_once(
        &self,
        tab: &mut Tab,
        target: &Target<'_>,
        prompt: &str,
        pacer: &Pacer,
        progress: &mut (dyn FnMut(Progress) + Send),
        cancel: &CancellationToken,
        chat_code: &mut Option<String>,
    ) -> Result<String, Error> {
        // Until the send is pressed a cancel keeps the prompt from the site: every step
        // before it (opening the chat, entering the prompt, waiting for the button, pacing)
        // is abandoned at once; the tab is made fresh again afterwards.
        let before_send = async {
            let send = self.prepare_send(tab, target, prompt).await?;
            self.await_update_socket(tab).await;
            pacer.wait(cancel).await?;
            Ok::<_, Error>(send)
        };
        let send = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancelled().sent(false)),
            send = before_send => send.map_err(|e| e.sent(false))?,
        };
        let mut sub = tab.subscribe();
        trace!(tab = tab.id, "send button enabled");
        progress(Progress::Sent);
        // Read while clicking: the click's acknowledgement comes only after the page ran its
        // handlers, and the first frames must not wait for it.
        // A page kept open since an earlier turn may still bring that turn's updates.
        // Updates are held until the page's send is seen: before it none can be ours.
        let mut tracker = ReplyTracker::new().after(&tab.earlier_messages);
        if !self.sends_unseen.load(Ordering::Relaxed) {
            tracker = tracker.until_sent();
        }
        let result = {
            let click = async {
                cdp::click_at(&tab.page, send.x, send.y, COMMAND_LIMIT)
                    .await
                    .map_err(|e| browser_error("clicking send", e))
            };
            let read = self.read_reply(
                tab,
                target,
                &mut sub.rx,
                pacer,
                progress,
                cancel,
                chat_code,
                &mut tracker,
            );
            tokio::pin!(read);
            tokio::select! {
                clicked = click => match clicked {
                    Ok(()) => {
                        debug!(tab = tab.id, ?target, "prompt sent");
                        read.await
                    }
                    // The click's answer failed: the browser may have died under it (the reader
                    // then says so), or the click went through anyway (the reader has the reply).
                    Err(e) => tokio::time::timeout(CLICK_AFTERMATH, &mut read).await.unwrap_or(Err(e)),
                },
                reply = &mut read => reply,
            }
        };
        tab.note_earlier_messages(tracker.taken());
        result.map_err(|e| match e.sent {
            Some(_) => e,
            None => e.sent(true),
        })
    }

    /// Everything before the send: the chat open with its prompt box, the prompt entered,
    /// the send button enabled. Returns where to click.
    async fn prepare_send(
        &self,
        tab: &mut Tab,
        target: &Target<'_>,
        prompt: &str,
    ) -> Result<cdp::Found, Error> {
        let sel = &self.site.selectors;
        let bot = target.bot();
        // A warm page may be stale (signed out or limited since it loaded): on trouble it is
        // reopened once before the problem counts.
        let mut reopened = false;
        // A page whose update socket closed while it waited (the site closed it and the page
        // did not connect again) would get the prompt but never bring its reply: nothing
        // was sent on it yet, so it is opened again.
        if tab.warm_for.is_some() && tab.update_socket() == SocketState::Lost {
            info!(
                tab = tab.id,
                "the page's update socket closed while it waited; opening the page again"
            );
            tab.warm_for = None;
        }
        if tab.warm_for.as_ref() != Some(&target.warm()) {
            self.open(tab, target).await?;
            reopened = true;
        }
        // From here on the chat is used: whatever happens, it is not fresh any more.
        tab.warm_for = None;
        // `open_chat` left the prompt box focused: the first try only enters the text (one
        // round trip less); if the page lost the focus meanwhile, the button stays off and
        // the next try focuses first.
        let mut focus_first = false;
        loop {
            let focused = if focus_first {
                cdp::focus(&tab.page, &sel.prompt_box, COMMAND_LIMIT)
                    .await
                    .map_err(|e| browser_error("focusing the prompt box", e))?
            } else {
                true
            };
            if !focused {
                if reopened {
                    return Err(self.not_logged_in());
                }
                self.open(tab, target).await?;
                tab.warm_for = None;
                reopened = true;
                continue;
            }
            trace!(tab = tab.id, "prompt box focused");
            let wanted = self.send_wanted();
            let limit = if focus_first {
                secs(self.timeouts.send_button_secs)
            } else {
                UNFOCUSED_TRY.min(secs(self.timeouts.send_button_secs))
            };
            // The wait for the button armed when the page got ready (by `open` or
            // `keep_chat`, again after a reopen), if it still watches; a try after a lost
            // focus waits afresh.
            let armed = tab.armed.take().filter(ArmedWait::watching);
            let (entered, send) = enter_text(tab, prompt, armed, &wanted, limit).await;
            if let Some(entered) = entered {
                entered.map_err(|e| browser_error("entering the prompt", e))?;
                trace!(tab = tab.id, "prompt entered");
            }
            let send = send.map_err(|e| browser_error("waiting for the send button", e))?;
            match send.index {
                Some(0) => return Ok(send),
                None if !focus_first => {
                    debug!(tab = tab.id, "the prompt box had lost the focus; focusing it");
                    focus_first = true;
                }
                Some(_) if !reopened => {
                    self.open(tab, target).await?;
                    tab.warm_for = None;
                    reopened = true;
                }
                Some(_) => {
                    return Err(Error::new(
                        ErrorKind::DailyLimit,
                        format!("the daily message limit for bot {bot} is reached on this account; try another model or wait until tomorrow"),
                    ))
                }
                None => {
                    return Err(Error::new(
                        ErrorKind::SiteError,
                        format!(
                            "the send button stayed disabled for {}s after the prompt was entered; the page may have changed (check site.selectors.send_button)",
                            self.timeouts.send_button_secs
                        ),
                    ))
                }
            }
        }
    }

    /// Waits (bounded) until the page's update socket is open, so that the reply's first
    /// updates have a socket to come on: the page's script may open it after the prompt box
    /// shows. Nothing is waited for when it is open, as on a page that got ready some time
    /// ago, or once a wait found none (see [`Driver::sockets_unseen`]).
    async fn await_update_socket(&self, tab: &Tab) {
        let mut open = tab.watch_update_socket();
        if *open.borrow_and_update() == SocketState::Open {
            if self.sockets_unseen.swap(false, Ordering::Relaxed) {
                info!(
                    tab = tab.id,
                    "the page's update socket is seen open again; sends wait for it again"
                );
            }
            return;
        }
        if self.sockets_unseen.load(Ordering::Relaxed) {
            return;
        }
        let began = Instant::now();
        let limit = secs(self.timeouts.update_socket_secs);
        let opened = tokio::time::timeout(limit, async {
            open.wait_for(|s| *s == SocketState::Open).await.map(|_| ())
        })
        .await;
        match opened {
            Ok(Ok(_)) => debug!(
                tab = tab.id,
                waited_ms = began.elapsed().as_millis() as u64,
                "the page's update socket opened"
            ),
            // A tab whose pump ended: the send finds out.
            Ok(Err(_)) => {}
            Err(_) => {
                self.sockets_unseen.store(true, Ordering::Relaxed);
                warn!(
                    tab = tab.id,
                    limit_secs = self.timeouts.update_socket_secs,
                    contains = %self.site.update_socket_contains,
                    "no update socket (a WebSocket whose URL contains this) was open on the page; sending anyway, and later sends do not wait for one until one is seen. If replies no longer come, check site.update_socket_contains"
                );
            }
        }
    }

    /// A send of the page was seen: later replies hold their updates for theirs again.
    fn seen_send(&self, tab: &Tab) {
        if self.sends_unseen.swap(false, Ordering::Relaxed) {
            info!(
                tab = tab.id,
                "the page's send request is seen again; replies wait for it again"
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_reply(
        &self,
        tab: &Tab,
        sent_to: &Target<'_>,
        rx: &mut UnboundedReceiver<TabSignal>,
        pacer: &Pacer,
        progress: &mut (dyn FnMut(Progress) + Send),
        cancel: &CancellationToken,
        chat_code: &mut Option<String>,
        tracker: &mut ReplyTracker,
    ) -> Result<String, Error> {
        let bot = sent_to.bot();
        // Replies the page showed before this one (a continued chat's earlier turns): the
        // page is read only for a reply after them.
        let earlier = match sent_to {
            Target::Chat { answers, .. } => *answers,
            Target::Fresh { .. } => 0,
        };
        let started = Instant::now();
        let idle_limit = secs(self.timeouts.idle_secs);
        let deadline = tokio::time::sleep(secs(self.timeouts.reply_secs));
        tokio::pin!(deadline);
        let idle = tokio::time::sleep(idle_limit);
        tokio::pin!(idle);
        // How long silence may last once the page lost its updates.
        let recovering =
            secs(self.timeouts.refetch_secs + self.timeouts.recover_secs).max(idle_limit);
        // What identifies this prompt's messages in a refetch response.
        let mut target = ReplyTarget::default();
        // Whether the site's answer to the send was read (it names the chat).
        let mut send_answered = false;
        // Should the page's send never be seen (say `site.api_path_contains` no longer matches
        // its requests), the updates held for it are taken after this wait, without its nonce.
        let unheld = tokio::time::sleep(SEND_SEEN_WAIT);
        tokio::pin!(unheld);
        // Bot updates that wait for the site's answer to the send, or for an echo that it or
        // the send tells, are taken on the best guess after this wait.
        let answer_wait = tokio::time::sleep(SEND_ANSWER_WAIT);
        tokio::pin!(answer_wait);
        let mut answer_armed = false;
        // Set once the page lost its update stream: its refetch response is awaited until
        // this moment, then (if allowed) the page itself is read.
        let mut refetch_until: Option<tokio::time::Instant> = None;
        let mut recovery: Option<
            futures::future::BoxFuture<'_, Result<Option<String>, CdpFailure>>,
        > = None;
        let sel = &self.site.selectors;
        loop {
            if tracker.deferring() && !answer_armed {
                debug!(
                    tab = tab.id,
                    "the reply waits for the site's answer to the send, or for an echo it names"
                );
                answer_wait
                    .as_mut()
                    .reset(tokio::time::Instant::now() + SEND_ANSWER_WAIT);
                answer_armed = true;
            }
            let refetch_at = refetch_until.filter(|_| recovery.is_none());
            let refetch_wait = async {
                match refetch_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                recovered = async { match recovery.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                    recovery = None;
                    refetch_until = None;
                    match recovered {
                        Ok(Some(text)) => {
                            info!(tab = tab.id, "reply read from the page after lost updates");
                            return Ok(finish_recovered(tracker, text, progress));
                        }
                        Ok(None) => warn!(tab = tab.id, "the page did not show a finished reply in time"),
                        Err(e) => warn!(tab = tab.id, error = %e, "could not read the reply from the page"),
                    }
                }
                () = refetch_wait => {
                    refetch_until = None;
                    if self.site.recover_from_dom {
                        warn!(tab = tab.id, "no refetch response showed the reply; reading the page");
                        recovery = Some(Box::pin(cdp::wait_for_text(&tab.page, &sel.bot_message_text, &sel.stop_button, earlier, secs(self.timeouts.recover_secs))));
                    } else {
                        warn!(tab = tab.id, "no refetch response showed the reply (reading the page is off)");
                    }
                }
                () = &mut unheld, if tracker.holding() => {
                    warn!(tab = tab.id, "the page's send request was not seen; check site.api_path_contains (replies are told apart less surely without it; later replies do not wait for it until a send is seen again)");
                    self.sends_unseen.store(true, Ordering::Relaxed);
                    let steps = tracker.unheld();
                    if let Some(end) = self.take_steps(tab, steps, progress, rx, chat_code, send_answered, started).await {
                        return end;
                    }
                }
                () = &mut answer_wait, if answer_armed && tracker.deferring() => {
                    warn!(tab = tab.id, "no echo of the prompt was told by the page's send or the site's answer in time; taking the newest prompt's reply (replies are told apart less surely)");
                    let steps = tracker.settle();
                    if let Some(end) = self.take_steps(tab, steps, progress, rx, chat_code, send_answered, started).await {
                        return end;
                    }
                }
                _ = cancel.cancelled() => {
                    self.stop(tab, rx, tracker).await;
                    return Err(cancelled());
                }
                _ = &mut deadline => {
                    self.stop(tab, rx, tracker).await;
                    return Err(Error::new(ErrorKind::Timeout, format!(
                        "the reply did not finish within {}s; raise timeouts.reply_secs for long answers",
                        self.timeouts.reply_secs)));
                }
                _ = &mut idle => {
                    // Last chance before `stalled`: the page may show a finished reply that
                    // no frame announced. The prompt is never sent again.
                    if self.site.recover_from_dom {
                        if let Ok(Some(text)) = cdp::wait_for_text(&tab.page, &sel.bot_message_text, &sel.stop_button, earlier, Duration::from_millis(500)).await {
                            if tracker.started() || !text.is_empty() {
                                info!(tab = tab.id, "stalled reply recovered from the page");
                                return Ok(finish_recovered(tracker, text, progress));
                            }
                        }
                    }
                    self.stop(tab, rx, tracker).await;
                    return Err(Error::new(ErrorKind::Stalled, format!(
                        "no update from the site for {}s{}; the prompt was not resent (resending can get accounts flagged): retry the request",
                        self.timeouts.idle_secs,
                        if tracker.started() { " in the middle of the reply" } else { " after sending" })));
                }
                signal = rx.recv() => match signal {
                    Some(TabSignal::Frame(frame)) => {
                        for update in parse_frame(&frame) {
                            match update {
                                Update::Message(m) => {
                                    // While a refetch or the page is awaited, silence is expected.
                                    let quiet = if refetch_until.is_some() || recovery.is_some() { recovering } else { idle_limit };
                                    idle.as_mut().reset(tokio::time::Instant::now() + quiet);
                                    let steps = tracker.feed(&m);
                                    if let Some(end) = self.take_steps(tab, steps, progress, rx, chat_code, send_answered, started).await {
                                        return end;
                                    }
                                }
                                Update::LostUpdates(reason) => {
                                    warn!(tab = tab.id, reason, "the page lost updates; taking the reply from its refetch");
                                    refetch_until.get_or_insert_with(|| tokio::time::Instant::now() + secs(self.timeouts.refetch_secs));
                                    // Silence is expected now: leave the refetch (and the
                                    // page) their time before the reply counts as stalled.
                                    idle.as_mut().reset(tokio::time::Instant::now() + recovering);
                                }
                                Update::Points(_) => {}
                            }
                        }
                    }
                    Some(TabSignal::Request(request)) => {
                        if let Some(send) = network::send_request(&request.request_headers, request.post_data.as_deref()) {
                            debug!(tab = tab.id, nonce = send.nonce.is_some(), chat = send.chat.is_some(), "the page's send went out");
                            self.seen_send(tab);
                            target.client_nonce.clone_from(&send.nonce);
                            let steps = tracker.sent(send.nonce, send.chat);
                            if let Some(end) = self.take_steps(tab, steps, progress, rx, chat_code, send_answered, started).await {
                                return end;
                            }
                        }
                    }
                    Some(TabSignal::Http(exchange)) => {
                        if let Some(send) = network::send_request(&exchange.request_headers, exchange.post_data.as_deref()) {
                            send_answered = true;
                            self.seen_send(tab);
                            if send.nonce.is_some() {
                                target.client_nonce.clone_from(&send.nonce);
                            }
                            // What the answer says of the prompt's chat and message.
                            let mut pin = (Vec::new(), None);
                            match network::parse_send_response(&exchange.body) {
                                Some(SendResult::Refused { refusal, message }) => {
                                    warn!(tab = tab.id, status = refusal.as_str(), "the site refused the send");
                                    // A refusal of its own kind in a continued chat (e.g. a
                                    // chat the site no longer has): nothing was taken.
                                    if let (Refusal::Other(status), Target::Chat { code, .. }) = (&refusal, sent_to) {
                                        return Err(chat_gone(code, &format!("the site refused the message there (status {status:?})")));
                                    }
                                    return Err(refusal_error(&refusal, message.as_deref(), bot).sent(false));
                                }
                                Some(SendResult::Taken { message_id, chat_code: code, chats }) => {
                                    debug!(tab = tab.id, "the site took the prompt");
                                    if code.is_some() {
                                        *chat_code = code;
                                    }
                                    if target.human_message_id.is_none() {
                                        target.human_message_id = message_id;
                                    }
                                    pin = (chats, message_id);
                                    pacer.taken().await;
                                }
                                None => {}
                            }
                            // The send's answer without its start seen (held updates go now).
                            let mut steps = tracker.sent(send.nonce, send.chat);
                            steps.extend(tracker.answered(pin.0, pin.1));
                            if let Some(end) = self.take_steps(tab, steps, progress, rx, chat_code, send_answered, started).await {
                                return end;
                            }
                            continue;
                        }
                        // Any other API response of the page (a refetch after lost updates,
                        // whatever the query is called) may hold the finished reply.
                        target.bot_message_id = tracker.bot_message_id().or(target.bot_message_id);
                        if target.human_message_id.is_none() {
                            target.human_message_id = tracker.human_message_id();
                        }
                        if target.bot_message_id.is_none() && target.human_message_id.is_none() && target.client_nonce.is_none() {
                            continue;
                        }
                        let Some(found) = network::find_reply(&exchange.body, &target) else { continue };
                        match found.outcome() {
                            Some(Outcome::Complete(text)) => {
                                info!(tab = tab.id, "reply taken from the page's refetch response");
                                return Ok(finish_recovered(tracker, text, progress));
                            }
                            Some(Outcome::Failed { state, .. }) => return Err(site_failure(state)),
                            None => {}
                        }
                    }
                    Some(TabSignal::SocketClosed) => {
                        warn!(tab = tab.id, "the update socket closed during a reply; taking the reply from the page's refetch");
                        refetch_until.get_or_insert_with(|| tokio::time::Instant::now() + secs(self.timeouts.refetch_secs));
                        idle.as_mut().reset(tokio::time::Instant::now() + recovering);
                    }
                    Some(TabSignal::Gone) | None => {
                        return Err(Error::new(ErrorKind::BrowserCrashed,
                            "the tab or the browser went away during the reply; retry the request"));
                    }
                }
            }
        }
    }

    /// Hands a tracker's steps to the client; returns the reply's end if one came. A
    /// finished reply that outran the page's reading of the send's answer (which names the
    /// chat the conversation goes on in) waits for it, briefly.
    #[allow(clippy::too_many_arguments)]
    async fn take_steps(
        &self,
        tab: &Tab,
        steps: Vec<ReplyStep>,
        progress: &mut (dyn FnMut(Progress) + Send),
        rx: &mut UnboundedReceiver<TabSignal>,
        chat_code: &mut Option<String>,
        send_answered: bool,
        started: Instant,
    ) -> Option<Result<String, Error>> {
        for step in steps {
            match step {
                ReplyStep::Text(chunk) => progress(Progress::Text(chunk)),
                ReplyStep::Finished(Outcome::Complete(text)) => {
                    let ms = started.elapsed().as_millis() as u64;
                    info!(
                        tab = tab.id,
                        chars = text.chars().count(),
                        ms,
                        "reply complete"
                    );
                    if !send_answered && chat_code.is_none() {
                        *chat_code = self.chat_code_of(&tab.url());
                        if chat_code.is_none() {
                            await_send_answer(rx, chat_code).await;
                        }
                    }
                    return Some(Ok(text));
                }
                ReplyStep::Finished(Outcome::Failed { state, .. }) => {
                    return Some(Err(site_failure(state)));
                }
            }
        }
        None
    }

    /// Stops a streaming reply with the page's stop button, and waits briefly for the site
    /// to confirm. Best effort: the tab is made fresh afterwards anyway. `reply` is the
    /// reply's tracker, which goes on reading the page's send and frames: only its own
    /// reply's end confirms the stop (other chats' messages may come on the same channel).
    async fn stop(
        &self,
        tab: &Tab,
        rx: &mut UnboundedReceiver<TabSignal>,
        reply: &mut ReplyTracker,
    ) {
        // The page may not take the first press (e.g. before it knows its chat): press again
        // while the site has not confirmed, a few times at most.
        for press in 0..STOP_PRESSES {
            let wait = if press == 0 {
                STOP_BUTTON_WAIT
            } else {
                Duration::from_millis(500)
            };
            let found = cdp::wait_for_first(
                &tab.page,
                &[Wanted {
                    selector: &self.site.selectors.stop_button,
                    enabled: false,
                }],
                wait,
            )
            .await;
            let Ok(cdp::Found {
                index: Some(_),
                x,
                y,
            }) = found
            else {
                debug!(tab = tab.id, "no stop button to click");
                return;
            };
            if let Err(e) = cdp::click_at(&tab.page, x, y, COMMAND_LIMIT).await {
                warn!(tab = tab.id, error = %e, "could not click stop");
                return;
            }
            info!(tab = tab.id, press, "stop clicked");
            // Wait (bounded) for the site to confirm the stop with a final state.
            let confirmed = tokio::time::timeout(STOP_CONFIRM_WAIT, async {
                while let Some(signal) = rx.recv().await {
                    let frame = match signal {
                        TabSignal::Frame(frame) => frame,
                        TabSignal::Request(r) => {
                            let post = r.post_data.as_deref();
                            if let Some(send) = network::send_request(&r.request_headers, post) {
                                if ends(&reply.sent(send.nonce, send.chat)) {
                                    return true;
                                }
                            }
                            continue;
                        }
                        TabSignal::Http(x) => {
                            let post = x.post_data.as_deref();
                            if let Some(send) = network::send_request(&x.request_headers, post) {
                                let mut steps = reply.sent(send.nonce, send.chat);
                                let (chats, message_id) =
                                    match network::parse_send_response(&x.body) {
                                        Some(SendResult::Taken {
                                            chats, message_id, ..
                                        }) => (chats, message_id),
                                        _ => (Vec::new(), None),
                                    };
                                steps.extend(reply.answered(chats, message_id));
                                if ends(&steps) {
                                    return true;
                                }
                            }
                            continue;
                        }
                        TabSignal::SocketClosed => continue,
                        TabSignal::Gone => return false,
                    };
                    for update in parse_frame(&frame) {
                        let Update::Message(m) = update else { continue };
                        if ends(&reply.feed(&m)) {
                            return true;
                        }
                    }
                }
                false
            })
            .await;
            if matches!(confirmed, Ok(true)) {
                return;
            }
        }
    }
}

/// Whether a tracker's steps end the reply.
fn ends(steps: &[ReplyStep]) -> bool {
    steps.iter().any(|s| matches!(s, ReplyStep::Finished(_)))
}

/// How long updates are held for the page's send request to be seen before they are taken
/// without it (see [`ReplyTracker::until_sent`]).
const SEND_SEEN_WAIT: Duration = Duration::from_secs(1);

/// How long a finished reply waits for the site's answer to its send, when the page has
/// not read it yet (it names the chat).
const SEND_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Waits (bounded) for the page's send request's answer and takes the chat it names.
async fn await_send_answer(rx: &mut UnboundedReceiver<TabSignal>, chat_code: &mut Option<String>) {
    let wait = async {
        while let Some(signal) = rx.recv().await {
            match signal {
                TabSignal::Http(exchange) => {
                    let name = network::query_name(
                        &exchange.request_headers,
                        exchange.post_data.as_deref(),
                    );
                    if !name.as_deref().is_some_and(network::is_send_query) {
                        continue;
                    }
                    if let Some(SendResult::Taken {
                        chat_code: Some(code),
                        ..
                    }) = network::parse_send_response(&exchange.body)
                    {
                        *chat_code = Some(code);
                    }
                    return;
                }
                TabSignal::Gone => return,
                _ => {}
            }
        }
    };
    if tokio::time::timeout(SEND_ANSWER_WAIT, wait).await.is_err() {
        debug!("the send's answer was not read in time; the chat is taken from the page's URL");
    }
}

/// How often stop is pressed while the site does not confirm it, and how long each press
/// waits for the confirmation.
const STOP_PRESSES: u32 = 3;
const STOP_CONFIRM_WAIT: Duration = Duration::from_millis(1500);

/// How long the main document's response may lag behind the page's `load` (its event
/// comes on another stream than the navigation's answer).
const DOCUMENT_LIMIT: Duration = Duration::from_secs(2);

type Documents = tokio::sync::watch::Receiver<Option<crate::browser::tab::DocumentResponse>>;

/// Enters `prompt` and waits (up to `limit`) for the first of `wanted`. The text and the
/// wait go out together, one round trip: the wait watches the page, so it sees the button
/// the text's input enables whichever the page handles first. With a wait `armed` ahead,
/// the page answers from within the text's own input task; once it says the button is
/// enabled the text is in, and its own answer (which Chromium sends only after the frame
/// the text makes the page draw) is not waited for: `None` then. Either way the click
/// that follows comes after the text.
async fn enter_text(
    tab: &Tab,
    prompt: &str,
    armed: Option<ArmedWait>,
    wanted: &[Wanted<'_>],
    limit: Duration,
) -> (
    Option<Result<(), CdpFailure>>,
    Result<cdp::Found, CdpFailure>,
) {
    let text = cdp::insert_text(&tab.page, prompt, COMMAND_LIMIT);
    let Some(armed) = armed else {
        let (entered, send) = futures::join!(text, cdp::wait_for_first(&tab.page, wanted, limit));
        return (Some(entered), send);
    };
    let found = armed.found(limit);
    tokio::pin!(text, found);
    let (entered, send) = tokio::select! {
        biased;
        send = &mut found => match send {
            Ok(send) if send.index == Some(0) => {
                trace!(tab = tab.id, "send button enabled before the text's answer");
                return (None, Ok(send));
            }
            send => (text.await, send),
        },
        entered = &mut text => (entered, found.await),
    };
    // A wait that ended with its document tells nothing: ask the page now.
    let send = match send {
        Err(e) => {
            debug!(tab = tab.id, error = %e, "the armed wait ended; waiting afresh");
            cdp::wait_for_first(&tab.page, wanted, limit).await
        }
        found => found,
    };
    (Some(entered), send)
}

/// Whether two URLs name the same page (fragment and trailing slash aside).
fn same_page(a: &str, b: &str) -> bool {
    let strip = |u: &str| {
        u.split('#')
            .next()
            .unwrap_or(u)
            .trim_end_matches('/')
            .to_owned()
    };
    strip(a) == strip(b)
}

/// The browser's network error for the navigation to `url`, if its document did not load.
/// Chromium then shows its own error page (`chrome-error://`); only then is the error
/// waited for (bounded), as it comes on another stream than the navigation's end.
async fn document_failure(documents: &mut Documents, url: &str, landed: &str) -> Option<String> {
    let failure_of = |doc: &Option<crate::browser::tab::DocumentResponse>| {
        doc.as_ref()
            .filter(|d| same_page(&d.url, url))
            .and_then(|d| d.failure.clone())
    };
    // Not marked seen: `document_status` waits for the same value.
    if let Some(failure) = failure_of(&documents.borrow()) {
        return Some(failure);
    }
    if !landed.starts_with("chrome-error:") {
        return None;
    }
    let waited = tokio::time::timeout(DOCUMENT_LIMIT, async {
        while documents.changed().await.is_ok() {
            if let Some(failure) = failure_of(&documents.borrow_and_update()) {
                return Some(failure);
            }
        }
        None
    })
    .await;
    Some(
        waited
            .ok()
            .flatten()
            .unwrap_or_else(|| "its error page, without naming the error".into()),
    )
}

/// The error for a page the browser could not load.
fn load_failure(url: &str, failure: &str) -> Error {
    let url = crate::redact::url(url);
    let next = if failure.contains("ERR_CERT") || failure.contains("ERR_SSL") {
        "the site's certificate is not trusted: something between this machine and the site is intercepting its encrypted traffic (a proxy, a captive portal, a wrong site.base_url); poed never ignores certificate errors, as the session would be readable on the way"
    } else {
        "check site.base_url, the network and browser.proxy"
    };
    Error::new(
        ErrorKind::SiteError,
        format!("cannot open {url}: the browser answered {failure}; {next}"),
    )
}

/// The HTTP status of the document now shown at `landed`, from the tab's network events
/// (`documents` was marked seen before the navigation). `None` if the browser reported none
/// in time (e.g. a page served without a network response).
async fn document_status(documents: &mut Documents, landed: &str) -> Option<u16> {
    tokio::time::timeout(DOCUMENT_LIMIT, async {
        loop {
            if documents.changed().await.is_err() {
                return None;
            }
            let doc = documents.borrow_and_update().clone();
            if let Some(doc) = doc.filter(|d| same_page(&d.url, landed)) {
                return Some(doc.status);
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Whether a refusal only says "not now": the send may go again after a backoff.
fn is_pace_refusal(e: &Error) -> bool {
    matches!(
        e.state.as_deref(),
        Some("rate_limit_exceeded") | Some("concurrent_messages")
    )
}

/// The error for a send the site refused (it did not take the prompt).
fn refusal_error(refusal: &Refusal, message: Option<&str>, bot: &str) -> Error {
    let said = message
        .map(|m| format!(" (the site says: {m:?})"))
        .unwrap_or_default();
    let (kind, advice) = match refusal {
        Refusal::ReachedLimit => (
            ErrorKind::DailyLimit,
            "the account's points (its quota) are used up; wait until they reset (see `poectl status`) or use a cheaper bot",
        ),
        Refusal::RateLimitExceeded => (
            ErrorKind::RateLimited,
            "the site refuses more messages for now; wait a while and retry",
        ),
        Refusal::ConcurrentMessages => (
            ErrorKind::Busy,
            "the site refuses more replies in flight for this account; retry when running replies finished, or lower pool.tabs",
        ),
        Refusal::TooManyTokens => (
            ErrorKind::PromptTooLong,
            "the site refused the prompt as too long; shorten it",
        ),
        Refusal::NoAccess => (
            ErrorKind::BotUnavailable,
            "the site does not let this account use this bot; pick another model",
        ),
        Refusal::Other(status) => (
            ErrorKind::SiteError,
            if status.is_empty() { "the site refused the send" } else { "the site refused the send; see the state for its reason" },
        ),
    };
    Error::new(
        kind,
        format!("{advice}{said}; the prompt for bot {bot} was not taken"),
    )
    .with_state(refusal.as_str())
}

/// The error for a reply the site ended with a failure state.
fn site_failure(state: String) -> Error {
    if state.contains("rate_limit") {
        return Error::new(
            ErrorKind::RateLimited,
            format!("the site refuses more messages for now (state {state:?}); wait a while and retry (or set pool.min_send_interval_ms)"),
        )
        .with_state(state);
    }
    Error::new(
        ErrorKind::SiteError,
        format!("the site ended the reply with state {state:?}; see the state for why (e.g. a prompt that is too long)"),
    )
    .with_state(state)
}

/// Hands a reply read from the page to the client as the final text.
fn finish_recovered(
    tracker: &ReplyTracker,
    text: String,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> String {
    if let Some(chunk) = Chunk::between(tracker.text(), &text) {
        progress(Progress::Text(chunk));
    }
    text
}

fn cancelled() -> Error {
    Error::new(ErrorKind::Cancelled, "the request was cancelled")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(base: &str) -> Driver {
        Driver::new(
            SiteConfig {
                base_url: base.into(),
                ..SiteConfig::default()
            },
            Timeouts::default(),
        )
    }

    #[test]
    fn a_bot_page_is_its_path_in_any_case() {
        let d = driver("https://poe.com");
        for url in [
            "https://poe.com/GPT-4o",
            "https://poe.com/gpt-4o",
            "https://POE.com/GPT-4o/",
            "https://poe.com/GPT-4o?utm=x",
            "https://poe.com/GPT-4o#top",
        ] {
            assert!(d.is_bot_page(url, "GPT-4o"), "{url}");
        }
        for url in [
            "https://poe.com/",
            "https://poe.com",
            "https://poe.com/explore",
            "https://poe.com/chat/2fnxsq7l",
            "https://poe.com/GPT-4o-Mini",
            "https://poe.com/login?redirect_url=%2FGPT-4o",
            "https://poe.company/GPT-4o",
            "https://example.com/GPT-4o",
            "chrome-error://chromewebdata/",
            "about:blank",
        ] {
            assert!(!d.is_bot_page(url, "GPT-4o"), "{url}");
        }
        // A base URL with a path prefix (a proxy, a test double).
        let d = driver("http://127.0.0.1:8080/poe/");
        assert!(d.is_bot_page("http://127.0.0.1:8080/poe/SQL.Helper", "sql.helper"));
        assert!(!d.is_bot_page("http://127.0.0.1:8080/SQL.Helper", "SQL.Helper"));
        assert!(!d.is_bot_page("http://127.0.0.1:8080/poem/SQL.Helper", "SQL.Helper"));
    }

    #[test]
    fn only_pages_of_the_site_are_judged() {
        let d = driver("https://poe.com");
        assert!(d.on_site("https://poe.com/anything?x"));
        assert!(d.on_site("https://poe.com"));
        assert!(!d.on_site("https://poe.com.evil.example/x"));
        assert!(!d.on_site("chrome-error://chromewebdata/"));
        let e = d.no_such_bot("Nope-Bot", "its page answered HTTP 404");
        assert_eq!(e.kind, ErrorKind::UnknownModel);
        assert!(e.message.contains("poectl models"), "{}", e.message);
    }
}
