//! The local Poe double: a copy of Poe's chat site and its update WebSocket, as described in
//! `shared/poe-web.md`, for the end-to-end tests, the benchmark and the offline demo (the
//! machines running them cannot reach poe.com, and the real site must not be hammered by
//! tests). It has two modes ([`Mode`]):
//!
//! - [`Mode::Y2025`] (the default) follows the 2025 evidence: bot pages `/{Handle}` of a known
//!   bot list (unknown handle: 404; other spellings redirect to the canonical handle) with
//!   today's class names (hashed suffixes that differ per double); a send is a
//!   `sendMessageMutation` POST whose RESPONSE says whether the site took it (`status`
//!   `success` or a refusal: `reached_limit`, `rate_limit_exceeded`, `concurrent_messages`,
//!   `too_many_tokens`, `no_access`, ...; a refused send gets no frame at all and the page shows
//!   a toast); the 2025 frame sequence (`messageCreated`, the human echo with `clientNonce`,
//!   `chatAddedV2`, jobs, the bot's cumulative `messageAdded` with its `bot` object and five
//!   repeats of the final one, costs, follow-ups, title, `viewerStateUpdated` with points),
//!   pings answered by pongs; points that each reply spends; chats that move the page to
//!   `/chat/{chatCode}` and continue there; anonymous `p-b` cookies and a server-side set of
//!   signed-in ones (signed out, a bot page redirects to `/login?redirect_url=...`); lost
//!   updates recovered by the page through a chat query; and an explore page listing bots.
//!   Refusal triggers: `[[reached-limit]]`, `[[rate-limit-exceeded]]`, `[[concurrent]]`,
//!   `[[too-many-tokens]]`, `[[no-access]]`, `[[refuse:STATUS]]`, and to test a retry
//!   `[[rate-limit-once]]`, `[[concurrent-once]]`, `[[refuse-first:N:STATUS]]` (the first
//!   sends of that prompt are refused, the next taken). Files: `site2025.rs` (pages,
//!   sessions, points), `gql2025.rs` (sends, refusals, chat and bot-list queries),
//!   `frames2025.rs`, `page2025.html`, `explore2025.html`, `bots.rs`.
//! - [`Mode::Y2023`] is the 2023 picture: any handle is a bot page with the prompt box in a
//!   `footer`, a chat per page load, batched `messageAdded` entries with noise subscriptions,
//!   a `p-b` cookie that signs in by its presence, and a daily-limit tooltip. Files:
//!   `site2023.rs`, `frames2023.rs`, `page.html`.
//!
//! Both modes share the replies ([`expected_reply`], trigger words in `replies.rs`), the
//! streaming of a reply with stop and lost-update endings (`stream.rs`), every page's update
//! socket getting every chat's frames, as on an account-wide channel (by default), a second
//! socket that carries nothing but noise, the update socket opened as the page's script
//! starts or (`socket_delay_ms`) after its prompt box shows, a reply waiting up to
//! `socket_wait_ms` for its page's socket (0: its frames are lost, as on a site that does not
//! replay what a late socket missed), and the records: every send ATTEMPT (taken or
//! refused) and stop it receives ([`Double::chats`]), which tests and the benchmark compare
//! with what the client saw. Like the site's own bot filters, it notes what each request says
//! of its browser (`User-Agent`, `Sec-CH-UA`: [`Double::agents`]), and its bot pages run a
//! bot check that reports `navigator.webdriver`, `navigator.userAgent` and DOM reads by
//! scripts that are not the page's ([`Double::browser_checks`], `POST
//! /__double/browser-check`; `bot_check.js`).
//!
//! Routes: `GET /{bot}`, `GET /chat/{code}` (2025), `GET /explore` (2025), `GET|POST /login`,
//! `POST /api/gql_POST`, `GET /api/chat/{chatId}` (the 2023 page's refetch), `GET
//! /up/{box}/updates` (update socket), `GET /noise/socket`, and for scripts steering a
//! separately started double `GET /__double/chats` and `POST /__double/mode`.
#![allow(dead_code)]

mod bots;
mod frames2023;
mod frames2025;
mod gql2025;
mod replies;
mod site2023;
mod site2025;
mod stream;

// Each user of the double needs only some of these.
#[allow(unused_imports)]
pub use bots::{Bot, BOTS};
#[allow(unused_imports)]
pub use replies::{expected_reply, expected_reply_at};

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};

/// Which picture of poe.com the double follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The 2023 sources: `footer` prompt box, batched frames, the presence of `p-b` signs in.
    Y2023,
    /// The 2025 evidence: see the module doc.
    #[default]
    Y2025,
}

impl Mode {
    /// `"2023"` or `"2025"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Y2023 => "2023",
            Mode::Y2025 => "2025",
        }
    }

    /// Parses `"2023"` or `"2025"`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "2023" => Some(Mode::Y2023),
            "2025" => Some(Mode::Y2025),
            _ => None,
        }
    }
}

/// A send-rate limit of the account (2025 mode): more than `sends` taken sends within `per`
/// and the next one is refused with `rate_limit_exceeded`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub sends: usize,
    pub per: Duration,
}

/// How the double behaves.
#[derive(Debug, Clone)]
pub struct DoubleOptions {
    /// 2025 (default) or 2023; switchable later with [`Double::set_mode`].
    pub mode: Mode,
    /// True: every visitor counts as signed in. False: only a session signed in through
    /// `/login` (2025: its `p-b` value is in the server's set; 2023: any non-empty `p-b`).
    pub logged_in: bool,
    /// 2023: the send button never enables and a tooltip says the free messages are used up.
    /// 2025: the points balance counts as 0, so sends are refused with `reached_limit`.
    pub daily_limit: bool,
    /// The prompt box appears this long after `load`, like the real single-page app.
    pub textarea_delay_ms: u64,
    /// The page opens its update socket this long after its prompt box shows (0: at once,
    /// as its script starts), as a page whose script connects late.
    pub socket_delay_ms: u64,
    /// How long a reply waits for its page's update socket to be connected before its
    /// frames go out (a send can beat the page's socket); frames for a page without one are
    /// lost. 0: not at all, as a site that does not replay what a late socket missed.
    pub socket_wait_ms: u64,
    /// Delay between two streamed updates of a reply (`[[slow]]` ignores it).
    pub chunk_delay_ms: u64,
    /// 2025: the points balance at start.
    pub points: u64,
    /// 2025: `totalMessagePointAllotment`.
    pub point_allotment: u64,
    /// 2025: points per reply for these bot handles instead of the bot table's cost.
    pub bot_costs: Vec<(String, u64)>,
    /// 2025: replies of the account streaming at once beyond which a send is refused with
    /// `concurrent_messages` (a send to a chat whose reply still streams is refused too).
    pub max_in_flight: usize,
    /// 2025: the account's send-rate limit; `None` (default) for none.
    pub rate_limit: Option<RateLimit>,
    /// 2025: prompts longer than this (in chars) are refused with `too_many_tokens`.
    pub max_prompt_chars: Option<usize>,
    /// Every update socket gets the frames of every chat, as the site's account-wide update
    /// channel may deliver them (the default, in both modes: the harder reading), or
    /// (`false`) only the socket of the page that sent.
    pub updates_to_all_pages: bool,
    /// 2025: the human echo carries the send's `clientNonce`, as in the capture; `false`
    /// for a site that leaves it out (the echo is then told by the send's answer).
    pub echo_nonce: bool,
    /// 2025: how often the page pings its update socket.
    pub ping_interval_ms: u64,
    /// 2025: how long after the other four repeats of a finished bot message the fifth one
    /// comes (0: all five at once). Late, by default, like updates that trail a reply on the
    /// real site while its chat's page may already send the next message.
    pub late_repeat_ms: u64,
    /// 2025: the site answers the page's send request this long after taking it, while the
    /// reply's frames start at once (the answer may come after the whole reply).
    pub send_answer_delay_ms: u64,
    /// 2025: the prompt box is a rich-text editor (a `contenteditable` textbox, as the
    /// viewer state's `formattedChatInput` flag hints the site may switch to) instead of a
    /// textarea.
    pub rich_input: bool,
    /// Message ids in no order (random 64-bit numbers, in both modes) instead of growing
    /// ones: a site whose ids tell nothing of time. The 2025 page then follows its reply by
    /// arrival.
    pub unordered_message_ids: bool,
}

impl Default for DoubleOptions {
    fn default() -> Self {
        DoubleOptions {
            // `POE_DOUBLE_MODE=2023` runs a suite against the 2023 picture of the site.
            mode: std::env::var("POE_DOUBLE_MODE")
                .ok()
                .and_then(|m| Mode::parse(&m))
                .unwrap_or_default(),
            logged_in: true,
            daily_limit: false,
            textarea_delay_ms: 300,
            socket_delay_ms: 0,
            socket_wait_ms: 5000,
            chunk_delay_ms: 20,
            points: 3000,
            point_allotment: 3000,
            bot_costs: Vec::new(),
            max_in_flight: 3,
            rate_limit: None,
            max_prompt_chars: None,
            updates_to_all_pages: true,
            echo_nonce: true,
            ping_interval_ms: 5000,
            late_repeat_ms: 250,
            send_answer_delay_ms: 0,
            rich_input: false,
            unordered_message_ids: false,
        }
    }
}

/// What the double received for one send attempt, and what it sent back for it.
#[derive(Clone, Debug)]
pub struct ChatRecord {
    /// The chat: `chat-N` in 2023 mode, the numeric `chatId` in 2025 mode (empty for a refused
    /// first message: no chat was made).
    pub chat_id: String,
    /// The bot handle, e.g. `GPT-3.5-Turbo` (2025: the canonical spelling).
    pub bot: String,
    /// Exactly the text the page sent.
    pub prompt: String,
    /// When the send (the POST) reached the server.
    pub received_at: Instant,
    /// When each update frame carrying this chat's bot message was written to the socket
    /// (taken as the write starts).
    pub frame_times: Vec<Instant>,
    /// When a stop for this chat arrived (also set if it came after the reply ended).
    pub stopped_at: Option<Instant>,
    /// `complete`, `cancelled`, `error_...`; `None` while streaming, stalled or refused.
    pub final_state: Option<String>,
    /// `success` when the site took the prompt, else the refusal (`reached_limit`, ...).
    pub status: String,
    /// 2025: the chat's `chatCode` (empty when no chat was made, and in 2023 mode).
    pub chat_code: String,
    /// Which human message of its chat this is (or would have been): 1 for the first.
    pub turn: u32,
    /// 2025: the `clientNonce` of the send request.
    pub client_nonce: Option<String>,
    /// The bot message's `messageId` (taken sends).
    pub message_id: Option<u64>,
    /// 2025: points the reply cost (charged when it ends, except on `error_*`).
    pub cost: u64,
}

impl ChatRecord {
    /// The site took this prompt (a refused send was not taken).
    pub fn taken(&self) -> bool {
        self.status == "success"
    }
}

/// A running double. Dropping it (or [`Double::shutdown`]) stops the server, its sockets and
/// its streams.
pub struct Double {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Double {
    /// Starts the double on a free loopback port.
    pub async fn start(opts: DoubleOptions) -> std::io::Result<Double> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    /// Starts the double on `addr` (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr, opts: DoubleOptions) -> std::io::Result<Double> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32)
            ^ u64::from(addr.port());
        let state = ServerState {
            points: opts.points,
            bot_costs: opts
                .bot_costs
                .iter()
                .map(|(h, c)| (h.to_ascii_lowercase(), *c))
                .collect(),
            ..ServerState::default()
        };
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(opts.mode as u8),
            logged_in: AtomicBool::new(opts.logged_in),
            daily_limit: AtomicBool::new(opts.daily_limit),
            textarea_delay_ms: opts.textarea_delay_ms,
            socket_delay_ms: opts.socket_delay_ms,
            socket_wait: Duration::from_millis(opts.socket_wait_ms),
            rich_input: opts.rich_input,
            unordered_message_ids: opts.unordered_message_ids,
            chunk_delay: Duration::from_millis(opts.chunk_delay_ms),
            point_allotment: opts.point_allotment,
            max_in_flight: opts.max_in_flight,
            rate_limit: opts.rate_limit,
            max_prompt_chars: opts.max_prompt_chars,
            updates_to_all_pages: opts.updates_to_all_pages,
            echo_nonce: opts.echo_nonce,
            ping_interval_ms: opts.ping_interval_ms,
            late_repeat: Duration::from_millis(opts.late_repeat_ms),
            send_answer_delay: Duration::from_millis(opts.send_answer_delay_ms),
            seed,
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            next_seq: AtomicU64::new(1),
            next_random: AtomicU64::new(1),
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            user_clicks: watch::channel(false).0,
            blur: watch::channel(0).0,
        });
        let app = Router::new()
            .route("/", get(home))
            .route("/favicon.ico", get(|| async { StatusCode::NOT_FOUND }))
            .route("/login", get(login_page).post(login))
            .route("/explore", get(explore_page))
            .route("/chat/{code}", get(chat_page))
            .route("/api/gql_POST", post(gql))
            .route("/api/chat/{chat_id}", get(site2023::chat_state))
            .route("/up/{box_name}/updates", get(update_socket))
            .route("/noise/socket", get(noise_socket))
            .route("/__double/chats", get(chats_json))
            .route("/__double/mode", post(set_mode))
            .route("/__double/user-clicks", get(user_clicks))
            .route("/__double/browser-check", post(browser_check))
            .route("/{bot}", get(bot_page))
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                note_agent,
            ))
            .with_state(shared.clone());
        let mut stop = shared.shutdown.subscribe();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shut_down(&mut stop).await });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "poe double server failed");
            }
        });
        Ok(Double {
            addr,
            shared,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The user at the browser window clicks "Sign in": every sign-in page open now or later
    /// clicks its own button, a real form submission in that browser that stores the session
    /// cookie. For a browser that nothing outside can drive (poed's own has no debugging port).
    pub fn user_clicks_sign_in(&self) {
        self.shared.user_clicks.send_replace(true);
    }

    /// The mode pages and sends follow from now on.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Pages loaded and sends received from now on follow `mode`.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// True: every visitor counts as signed in from now on. False: only sessions signed in
    /// through `/login` (or [`Double::add_signed_in_session`]) do.
    pub fn set_logged_in(&self, v: bool) {
        self.shared.logged_in.store(v, Ordering::SeqCst);
    }

    /// Accepts `p_b` as the `p-b` cookie of a signed-in session (2025 mode), e.g. a cookie a
    /// test imports into a browser profile.
    pub fn add_signed_in_session(&self, p_b: &str) {
        let p_b = p_b.to_owned();
        self.shared.update(|s| s.sessions.insert(p_b));
    }

    /// 2023: pages loaded from now on are (or are not) at the daily limit. 2025: sends are
    /// (or are not) refused with `reached_limit`, as with no points left.
    pub fn set_daily_limit(&self, v: bool) {
        self.shared.daily_limit.store(v, Ordering::SeqCst);
        self.shared.update(|_| ());
    }

    /// What the requests so far said of the browser that sent them: each distinct pair of
    /// `User-Agent` and `Sec-CH-UA` headers, in the order first seen.
    pub fn agents(&self) -> Vec<Agent> {
        self.shared.lock().agents.clone()
    }

    /// What the pages' bot checks saw of their browser: each distinct report, in the order
    /// first seen; waits up to `timeout` for the first.
    pub async fn browser_checks(&self, timeout: Duration) -> Vec<BrowserCheck> {
        self.wait_until(timeout, |s| !s.browser_checks.is_empty())
            .await;
        self.shared.lock().browser_checks.clone()
    }

    /// Sets the points balance (2025 mode).
    pub fn set_points(&self, n: u64) {
        self.shared.update(|s| s.points = n);
    }

    /// The points balance (2025 mode).
    pub fn points(&self) -> u64 {
        self.shared.lock().points
    }

    /// Sets what one reply of the bot `handle` costs (2025 mode).
    pub fn set_bot_cost(&self, handle: &str, cost: u64) {
        let handle = handle.to_ascii_lowercase();
        self.shared.update(|s| s.bot_costs.insert(handle, cost));
    }

    /// Deletes the chat `code` (2025 mode): its page answers 404 and sends to it fail.
    /// False if there is no such chat.
    pub fn delete_chat(&self, code: &str) -> bool {
        self.shared.update(|s| {
            let Some(id) = s.codes.get(code).cloned() else {
                return false;
            };
            match s.chats.get_mut(&id) {
                Some(chat) if !chat.deleted => {
                    chat.deleted = true;
                    true
                }
                _ => false,
            }
        })
    }

    /// Every send attempt received (taken or refused), in arrival order.
    pub fn chats(&self) -> Vec<ChatRecord> {
        self.shared.lock().records.clone()
    }

    /// When each bot or chat page was requested (a tab loading it), in arrival order.
    pub fn page_loads(&self) -> Vec<Instant> {
        self.shared.lock().page_loads.clone()
    }

    /// The sends the site took (status `success`), in arrival order.
    pub fn taken(&self) -> Vec<ChatRecord> {
        self.chats().into_iter().filter(ChatRecord::taken).collect()
    }

    /// Waits until at least `n` send attempts were received, or `timeout`; returns what there
    /// is.
    pub async fn wait_for_chats(&self, n: usize, timeout: Duration) -> Vec<ChatRecord> {
        self.wait_until(timeout, |s| s.records.len() >= n).await;
        self.chats()
    }

    /// Waits until the send attempt with index `record` (in [`Double::chats`]) reached a final
    /// state, and returns it; `None` after `timeout` (or for a refused send, at once).
    pub async fn wait_for_final(&self, record: usize, timeout: Duration) -> Option<String> {
        let refused = |s: &ServerState| s.records.get(record).is_some_and(|r| !r.taken());
        let done = |s: &ServerState| {
            refused(s)
                || s.records
                    .get(record)
                    .is_some_and(|r| r.final_state.is_some())
        };
        self.wait_until(timeout, done).await;
        self.shared
            .lock()
            .records
            .get(record)
            .and_then(|r| r.final_state.clone())
    }

    /// Waits until a stop for `chat_id` arrived; false after `timeout`.
    pub async fn wait_for_stop(&self, chat_id: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.stops_seen.contains(chat_id))
            .await
    }

    /// Makes every open page give the focus to another text box (as a search field or a
    /// dialog taking it would) and waits until each said it did. Returns how many did.
    pub async fn blur_prompt_boxes(&self, timeout: Duration) -> usize {
        let (open, before) = {
            let s = self.shared.lock();
            (s.noise_sockets, s.blurred)
        };
        self.shared.blur.send_modify(|n| *n += 1);
        self.wait_until(timeout, |s| s.blurred >= before + open)
            .await;
        self.shared.lock().blurred - before
    }

    /// Closes every page's update socket from the server's side once `n` are connected
    /// (bounded by `timeout`), as a site's restart or an idle timeout would; the pages do
    /// not connect again. Returns how many it closed.
    pub async fn close_update_sockets(&self, n: usize, timeout: Duration) -> usize {
        self.wait_until(timeout, |s| s.sockets.len() >= n).await;
        // Dropping a socket's sender ends its task, which closes the connection.
        self.shared.update(|s| s.sockets.drain().count())
    }

    /// Waits until `n` pages said their mouse pointer came onto their send button by a
    /// move (bounded by `timeout`); returns how many did.
    pub async fn pointer_moves(&self, n: usize, timeout: Duration) -> usize {
        self.wait_until(timeout, |s| s.pointer_moves >= n).await;
        self.shared.lock().pointer_moves
    }

    /// Each press of a send button so far, in order: whether the pointer had come onto the
    /// button by a move before the press (false: it appeared there with the press).
    pub fn presses(&self) -> Vec<bool> {
        self.shared.lock().presses.clone()
    }

    async fn wait_until(&self, timeout: Duration, cond: impl Fn(&ServerState) -> bool) -> bool {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Marks the current version seen before checking, so no change is missed.
            changed.borrow_and_update();
            if cond(&self.shared.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return cond(&self.shared.lock());
            }
        }
    }

    /// Stops the server and waits (bounded) for it to close its connections.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        // Graceful: the server stops accepting, open connections close, sockets and streams end.
        self.shared.shutdown.send_replace(true);
    }
}

/// Resolves once the double shuts down (or its state is gone).
async fn shut_down(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

// ---------------------------------------------------------------------------------------
// Server state

struct Shared {
    /// A [`Mode`] as u8.
    mode: AtomicU8,
    logged_in: AtomicBool,
    daily_limit: AtomicBool,
    textarea_delay_ms: u64,
    socket_delay_ms: u64,
    socket_wait: Duration,
    rich_input: bool,
    unordered_message_ids: bool,
    chunk_delay: Duration,
    point_allotment: u64,
    max_in_flight: usize,
    rate_limit: Option<RateLimit>,
    max_prompt_chars: Option<usize>,
    updates_to_all_pages: bool,
    echo_nonce: bool,
    ping_interval_ms: u64,
    late_repeat: Duration,
    send_answer_delay: Duration,
    /// Makes this double's class-name hashes, cookies, codes and nonces its own.
    seed: u64,
    started: Instant,
    /// Chat ids, message ids and socket ids.
    next_id: AtomicU64,
    /// `min_seq` of the outer update frames: increasing.
    next_seq: AtomicU64,
    /// Counter behind [`Shared::random`].
    next_random: AtomicU64,
    state: Mutex<ServerState>,
    /// Bumped on every change of `state`, so waiters wake without polling.
    changed: watch::Sender<u64>,
    /// Set once when the double stops; every task of the double watches it.
    shutdown: watch::Sender<bool>,
    /// Set by [`Double::user_clicks_sign_in`]: sign-in pages click their button.
    user_clicks: watch::Sender<bool>,
    /// Bumped by [`Double::blur_prompt_boxes`]: every page moves the focus off its prompt box.
    blur: watch::Sender<u64>,
}

#[derive(Default)]
struct ServerState {
    records: Vec<ChatRecord>,
    /// Pages with their second socket open, and how many of them said they moved the focus
    /// off their prompt box.
    noise_sockets: usize,
    blurred: usize,
    /// Pages whose mouse pointer came onto their send button by a move, and for each press
    /// of a send button whether the pointer had come onto it before (by a move).
    pointer_moves: usize,
    presses: Vec<bool>,
    /// Server-side state of each chat, by chat id (`ChatRecord::chat_id`).
    chats: HashMap<String, Chat>,
    /// 2025: chat id of each chat code.
    codes: HashMap<String, String>,
    /// The connected update socket of each channel.
    sockets: HashMap<String, SocketHandle>,
    /// Chats a stop request arrived for.
    stops_seen: HashSet<String>,
    /// 2025: `p-b` values of signed-in sessions.
    sessions: HashSet<String>,
    /// 2025: the account's points balance.
    points: u64,
    /// 2025: cost overrides by lower-case bot handle.
    bot_costs: HashMap<String, u64>,
    /// What requests said of their browser ([`Double::agents`]).
    agents: Vec<Agent>,
    /// What the pages saw of their browser ([`Double::browser_checks`]).
    browser_checks: Vec<BrowserCheck>,
    /// When each bot or chat page was requested ([`Double::page_loads`]).
    page_loads: Vec<Instant>,
}

/// What a page's bot check saw of its browser (`navigator`), as the site's own checks read it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct BrowserCheck {
    /// `navigator.webdriver`: true in a browser that says it is automated.
    pub webdriver: bool,
    /// `navigator.userAgent`.
    pub agent: String,
    /// A script not of the page read its DOM through `document.querySelector`, which the
    /// page had wrapped (as bot checks and session recorders do).
    #[serde(default)]
    pub foreign: bool,
}

/// What a request said of the browser that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// The path of the first request that said it.
    pub path: String,
    pub user_agent: String,
    /// `Sec-CH-UA` (the browser's brands), if sent.
    pub brands: Option<String>,
}

/// The bot check both pictures' bot pages run, for their `__BOT_CHECK__` line.
fn bot_check_js() -> &'static str {
    include_str!("bot_check.js").trim_end()
}

/// The double's focus control both pictures' bot pages run, for their `__FOCUS_CONTROL__`
/// line.
fn focus_control_js() -> &'static str {
    include_str!("focus_control.js").trim_end()
}

/// How many distinct agents the double keeps.
const MAX_AGENTS: usize = 32;

/// Notes the `User-Agent` and `Sec-CH-UA` of every request, as a site's bot filter reads them.
async fn note_agent(
    AxumState(shared): St,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // In a block of its own: a borrow of the request (whose body is not `Sync`) must not
    // live across the await below.
    let agent = {
        let header = |name| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Agent {
            path: request.uri().path().to_owned(),
            user_agent: header(header::USER_AGENT).unwrap_or_default(),
            brands: header(header::HeaderName::from_static("sec-ch-ua")),
        }
    };
    {
        let mut s = shared.lock();
        let known = s
            .agents
            .iter()
            .any(|a| a.user_agent == agent.user_agent && a.brands == agent.brands);
        if !known && s.agents.len() < MAX_AGENTS {
            s.agents.push(agent);
        }
    }
    next.run(request).await
}

impl ServerState {
    /// Replies streaming now, over all chats of the account.
    fn in_flight(&self) -> usize {
        self.chats.values().map(|c| c.streams.len()).sum()
    }
}

#[derive(Default)]
struct Chat {
    /// Every message of the chat, latest state (what a refetch returns).
    messages: Vec<StoredMessage>,
    /// Streams of this chat still running, each with its stop signal.
    streams: Vec<(usize, Arc<Notify>)>,
    /// 2025: the chat's numeric `chatId` (0 in 2023 mode).
    number: u64,
    /// 2025: the chat's `chatCode`.
    code: String,
    /// 2025: the bot handle of the chat.
    bot: String,
    /// 2025: human messages taken so far.
    humans: u32,
    /// 2025: gone ([`Double::delete_chat`]).
    deleted: bool,
}

struct SocketHandle {
    id: u64,
    tx: mpsc::UnboundedSender<Outgoing>,
}

/// A frame for an update socket; `record` is the send whose bot message it carries.
struct Outgoing {
    frame: String,
    record: Option<usize>,
}

/// A message as the server keeps it. The 2023 refetch (`/api/chat/{id}`) serialises the
/// first five fields only.
#[derive(Clone, Debug, serde::Serialize)]
struct StoredMessage {
    id: String,
    #[serde(rename = "messageId")]
    message_id: u64,
    author: String,
    text: String,
    state: String,
    /// 2025: the human message's `clientNonce`.
    #[serde(skip)]
    client_nonce: Option<String>,
    /// 2025: the bot of a bot message.
    #[serde(skip)]
    bot: Option<&'static Bot>,
    /// 2025: microseconds since the epoch.
    #[serde(skip)]
    creation_time: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mode(&self) -> Mode {
        if self.mode.load(Ordering::SeqCst) == Mode::Y2023 as u8 {
            Mode::Y2023
        } else {
            Mode::Y2025
        }
    }

    /// Runs `f` on the state and wakes every waiter.
    fn update<T>(&self, f: impl FnOnce(&mut ServerState) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.send_modify(|v| *v += 1);
        out
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// A pseudo-random number, different per double and per call.
    fn random(&self) -> u64 {
        splitmix(self.seed ^ splitmix(self.next_random.fetch_add(1, Ordering::SeqCst)))
    }

    /// `n` random characters of `alphabet`.
    fn token(&self, n: usize, alphabet: &[u8]) -> String {
        (0..n)
            .map(|_| char::from(alphabet[(self.random() % alphabet.len() as u64) as usize]))
            .collect()
    }

    /// A message id: growing (2023: small; 2025: beyond 2^32, as in the capture), or at
    /// random with `unordered_message_ids`.
    fn message_number(&self) -> u64 {
        let n = self.id();
        match (self.unordered_message_ids, self.mode()) {
            (true, _) => 1 + self.random() % 999_999_999_999,
            (false, Mode::Y2023) => n,
            (false, Mode::Y2025) => 457_234_370_000 + n * 1_000 + self.random() % 1_000,
        }
    }

    /// A 2023 message: small ids.
    fn message(&self, author: &str, text: &str, state: &str) -> StoredMessage {
        let n = self.message_number();
        StoredMessage {
            id: format!("TWVzc2FnZTo{n}"),
            message_id: n,
            author: author.into(),
            text: text.into(),
            state: state.into(),
            client_nonce: None,
            bot: None,
            creation_time: now_us(),
        }
    }

    fn store(&self, chat_id: &str, m: &StoredMessage) {
        self.update(|s| {
            let list = &mut s.chats.entry(chat_id.to_owned()).or_default().messages;
            match list.iter_mut().find(|x| x.message_id == m.message_id) {
                Some(x) => *x = m.clone(),
                None => list.push(m.clone()),
            }
        });
    }

    /// Queues `frame` on `channel`'s socket (on every socket with `updates_to_all_pages`); a
    /// frame for a closed page is lost, as on the site. Only the channel's own
    /// socket notes the frame on the record.
    fn emit(&self, channel: &str, frame: String, record: Option<usize>) {
        let s = self.lock();
        if self.updates_to_all_pages {
            for (name, socket) in &s.sockets {
                let record = if name == channel { record } else { None };
                let frame = frame.clone();
                let _ = socket.tx.send(Outgoing { frame, record });
            }
        } else if let Some(socket) = s.sockets.get(channel) {
            let _ = socket.tx.send(Outgoing { frame, record });
        }
    }

    /// Waits (bounded) until `channel` has a socket: a send can beat the page's socket.
    async fn wait_for_socket(&self, channel: &str, timeout: Duration) {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changed.borrow_and_update();
            if self.lock().sockets.contains_key(channel) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// The 2023 outer frame.
    fn outer(&self, entries: Vec<String>) -> String {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        json!({"messages": entries, "min_seq": seq}).to_string()
    }

    /// Notes a stop for `chat_id` on its streaming sends (or, when nothing streams, on its
    /// last send) and stops those streams.
    fn stop_chat(&self, chat_id: &str, received_at: Instant) {
        self.update(|s| {
            s.stops_seen.insert(chat_id.to_owned());
            let streams: Vec<(usize, Arc<Notify>)> = s
                .chats
                .get(chat_id)
                .map(|c| c.streams.clone())
                .unwrap_or_default();
            let mut marked: Vec<usize> = streams.iter().map(|(r, _)| *r).collect();
            if marked.is_empty() {
                // Nothing streams: the stop still arrived, note it on the chat's last send.
                marked.extend(
                    s.records
                        .iter()
                        .rposition(|r| r.chat_id == chat_id && r.taken()),
                );
            }
            for i in marked {
                if let Some(r) = s.records.get_mut(i) {
                    r.stopped_at.get_or_insert(received_at);
                }
            }
            for (_, stop) in streams {
                stop.notify_one();
            }
        });
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Microseconds since the epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// HTTP handlers shared by both modes (each dispatches on the mode)

type St = AxumState<Arc<Shared>>;

/// JSON for embedding in a `<script>`: `<` escaped so no string can end the script.
fn script_json(v: &Value) -> String {
    v.to_string().replace('<', "\\u003c")
}

fn html_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

/// The value of cookie `name` in the request, if any.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

async fn home(AxumState(shared): St, headers: HeaderMap) -> Response {
    match shared.mode() {
        Mode::Y2023 => site2023::home().await.into_response(),
        Mode::Y2025 => site2025::home(&shared, &headers),
    }
}

async fn bot_page(AxumState(shared): St, Path(bot): Path<String>, headers: HeaderMap) -> Response {
    shared.update(|s| s.page_loads.push(Instant::now()));
    match shared.mode() {
        // No such bot: the site answers "not found" in both pictures.
        Mode::Y2023 if bots::find(&bot).is_none() => (
            StatusCode::NOT_FOUND,
            axum::response::Html(
                "<!doctype html><html><body><h1>Page not found</h1></body></html>",
            ),
        )
            .into_response(),
        Mode::Y2023 => site2023::bot_page(&shared, &bot, &headers),
        Mode::Y2025 => site2025::bot_page(&shared, &bot, &headers),
    }
}

async fn chat_page(
    AxumState(shared): St,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.update(|s| s.page_loads.push(Instant::now()));
    match shared.mode() {
        Mode::Y2023 => StatusCode::NOT_FOUND.into_response(),
        Mode::Y2025 => site2025::chat_page(&shared, &code, &headers),
    }
}

async fn explore_page(AxumState(shared): St, headers: HeaderMap) -> Response {
    match shared.mode() {
        Mode::Y2023 => site2023::bot_page(&shared, "explore", &headers),
        Mode::Y2025 => site2025::explore_page(&shared, &headers),
    }
}

/// Answers 200 once the user clicks (see [`Double::user_clicks_sign_in`]); the sign-in page
/// waits on it. 204 when the double stops first.
/// A page's bot check ([`BrowserCheck`]); distinct reports are kept.
async fn browser_check(AxumState(shared): St, body: Bytes) -> StatusCode {
    let Ok(check) = serde_json::from_slice::<BrowserCheck>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    shared.update(|s| {
        if !s.browser_checks.contains(&check) && s.browser_checks.len() < MAX_AGENTS {
            s.browser_checks.push(check);
        }
    });
    StatusCode::NO_CONTENT
}

async fn user_clicks(AxumState(shared): St) -> StatusCode {
    let mut clicks = shared.user_clicks.subscribe();
    let mut stop = shared.shutdown.subscribe();
    tokio::select! {
        _ = clicks.wait_for(|v| *v) => StatusCode::OK,
        () = shut_down(&mut stop) => StatusCode::NO_CONTENT,
    }
}

async fn login_page(
    AxumState(shared): St,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match shared.mode() {
        Mode::Y2023 => site2023::login_page().await.into_response(),
        Mode::Y2025 => site2025::login_page(&shared, &query, &headers),
    }
}

async fn login(
    AxumState(shared): St,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match shared.mode() {
        Mode::Y2023 => site2023::login().await,
        Mode::Y2025 => site2025::login(&shared, &query, &headers, &body),
    }
}

async fn gql(AxumState(shared): St, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the body is not JSON".into());
    };
    match shared.mode() {
        Mode::Y2023 => site2023::gql(shared, body),
        Mode::Y2025 => {
            let name = headers.get("poe-queryname").and_then(|v| v.to_str().ok());
            let is_send = name.or(body["queryName"].as_str()) == Some("sendMessageMutation");
            let delay = shared.send_answer_delay;
            let response = gql2025::gql(shared, &headers, body);
            if is_send {
                tokio::time::sleep(delay).await;
            }
            response
        }
    }
}

async fn update_socket(
    AxumState(shared): St,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let channel = query.get("channel").cloned().unwrap_or_default();
    ws.on_upgrade(move |socket| serve_updates(shared, channel, socket))
}

/// Writes the channel's frames to its socket, noting when each bot frame is written. In 2025
/// mode it first sends the viewer's points and answers the page's pings.
async fn serve_updates(shared: Arc<Shared>, channel: String, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let id = shared.id();
    if shared.mode() == Mode::Y2025 {
        let frame = site2025::viewer_state_frame(&shared);
        let _ = tx.send(Outgoing {
            frame,
            record: None,
        });
    }
    shared.update(|s| s.sockets.insert(channel.clone(), SocketHandle { id, tx }));
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            out = rx.recv() => {
                // None: a newer socket took the channel over.
                let Some(out) = out else { break };
                // Noted as the write starts, so the record is complete when a reader has the frame.
                if let Some(record) = out.record {
                    let now = Instant::now();
                    shared.update(|s| {
                        if let Some(r) = s.records.get_mut(record) {
                            r.frame_times.push(now);
                        }
                    });
                }
                if socket.send(Message::Text(out.frame.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(Message::Text(t))) if shared.mode() == Mode::Y2025 && is_ping(t.as_str()) => {
                    let pong = Message::Text(r#"{"type":"pong"}"#.into());
                    if socket.send(pong).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
            },
            _ = shut_down(&mut shutdown) => break,
        }
    }
    shared.update(|s| {
        if s.sockets.get(&channel).is_some_and(|h| h.id == id) {
            s.sockets.remove(&channel);
        }
    });
}

fn is_ping(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|v| v["type"] == "ping")
}

/// The page's second socket: heartbeats, a non-JSON text and a binary frame, never an update.
/// For [`Double::blur_prompt_boxes`] it also tells the page to move the focus off its prompt
/// box, and hears the page say it did; it hears where the mouse pointer was when the send
/// button was pressed ([`Double::presses`]).
async fn noise_socket(AxumState(shared): St, ws: WebSocketUpgrade) -> Response {
    let mut shutdown = shared.shutdown.subscribe();
    let mut blur = shared.blur.subscribe();
    ws.on_upgrade(|mut socket: WebSocket| async move {
        shared.update(|s| s.noise_sockets += 1);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let started = Instant::now();
        blur.borrow_and_update();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let ts = started.elapsed().as_millis() as u64;
                    let frames = [
                        Message::Text(json!({"type": "heartbeat", "ts": ts}).to_string().into()),
                        Message::Text("ping".into()),
                        Message::Binary(vec![0u8, 1, 2, 255].into()),
                    ];
                    let mut sent = true;
                    for frame in frames {
                        sent = sent && socket.send(frame).await.is_ok();
                    }
                    if !sent {
                        break;
                    }
                }
                Ok(()) = blur.changed() => {
                    if socket.send(Message::Text("blur-prompt-box".into())).await.is_err() {
                        break;
                    }
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(t))) => match t.as_str() {
                        "blurred" => shared.update(|s| s.blurred += 1),
                        "pointer-on-send" => shared.update(|s| s.pointer_moves += 1),
                        "pressed-after-move" => shared.update(|s| s.presses.push(true)),
                        "pressed-without-move" => shared.update(|s| s.presses.push(false)),
                        _ => {}
                    },
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                _ = shut_down(&mut shutdown) => break,
            }
        }
        shared.update(|s| s.noise_sockets -= 1);
    })
}

async fn chats_json(AxumState(shared): St) -> Json<Value> {
    let ms = |t: Instant| t.duration_since(shared.started).as_secs_f64() * 1000.0;
    let chats: Vec<Value> = shared
        .lock()
        .records
        .iter()
        .map(|c| {
            json!({"chat_id": c.chat_id, "bot": c.bot, "prompt": c.prompt,
                   "received_ms": ms(c.received_at),
                   "frame_ms": c.frame_times.iter().map(|t| ms(*t)).collect::<Vec<_>>(),
                   "stopped_ms": c.stopped_at.map(ms), "final_state": c.final_state,
                   "status": c.status, "chat_code": c.chat_code, "turn": c.turn,
                   "client_nonce": c.client_nonce, "message_id": c.message_id,
                   "cost": c.cost})
        })
        .collect();
    Json(Value::Array(chats))
}

async fn set_mode(AxumState(shared): St, Json(body): Json<Value>) -> Response {
    if let Some(v) = body.get("mode") {
        let Some(mode) = v.as_str().and_then(Mode::parse) else {
            return bad_request(format!("mode must be \"2023\" or \"2025\", not {v}"));
        };
        shared.mode.store(mode as u8, Ordering::SeqCst);
    }
    if let Some(v) = body["logged_in"].as_bool() {
        shared.logged_in.store(v, Ordering::SeqCst);
    }
    if let Some(v) = body["daily_limit"].as_bool() {
        shared.daily_limit.store(v, Ordering::SeqCst);
    }
    if let Some(v) = body["points"].as_u64() {
        shared.update(|s| s.points = v);
    }
    Json(json!({"logged_in": shared.logged_in.load(Ordering::SeqCst),
                "daily_limit": shared.daily_limit.load(Ordering::SeqCst),
                "mode": shared.mode().as_str(),
                "points": shared.lock().points}))
    .into_response()
}
