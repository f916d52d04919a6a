//! The local Poe double: a faithful copy of Poe's chat page and its update WebSocket, as
//! described in `shared/poe-web.md`, for the end-to-end tests, the benchmark and the offline
//! demo (the machines running them cannot reach poe.com, and the real site must not be
//! hammered by tests).
//!
//! It serves bot pages (`page.html`) whose prompt box appears late, whose send button only
//! real (trusted) input enables, with a stop button while a reply streams; on the update
//! socket the human echo and the bot's cumulative text, batched `messages[]` entries and noise
//! subscriptions, plus a second socket carrying nothing but noise; a logged-out mode with a
//! cookie sign-in (`/login`) and a daily-limit mode; and deterministic replies
//! ([`expected_reply`]) with trigger words for the site's misbehaviour: `[[long]]`,
//! `[[unicode]]`, `[[rewrite]]`, `[[error]]`, `[[rate-limit]]`, `[[cancelled]]`, `[[stall]]`, `[[missed]]`,
//! `[[missed-stop]]`, `[[refetch]]`, `[[slow]]`. It records every send and stop it receives
//! ([`Double::chats`]), which tests and the benchmark compare with what the client saw.
//!
//! Routes: `GET /{bot}` (a new chat per load), `GET|POST /login`, `POST /api/gql_POST`
//! (`sendMessageMutation`, `stopMessage`), `GET /api/chat/{chatId}` (the page's refetch),
//! `GET /up/{box}/updates` (update socket), `GET /noise/socket`, and for scripts steering a
//! separately started double `GET /__double/chats` and `POST /__double/mode`; the sign-in
//! page waits on `GET /__double/user-clicks` ([`Double::user_clicks_sign_in`]).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};

/// How the double behaves.
#[derive(Debug, Clone)]
pub struct DoubleOptions {
    /// When false, pages show the logged-out view unless the request has a non-empty `p-b`
    /// cookie (set by the double's `/login`).
    pub logged_in: bool,
    /// The send button never enables and a tooltip says the free messages are used up.
    pub daily_limit: bool,
    /// The prompt box appears this long after `load`, like the real single-page app.
    pub textarea_delay_ms: u64,
    /// Delay between two streamed updates of a reply (`[[slow]]` ignores it).
    pub chunk_delay_ms: u64,
}

impl Default for DoubleOptions {
    fn default() -> Self {
        DoubleOptions {
            logged_in: true,
            daily_limit: false,
            textarea_delay_ms: 300,
            chunk_delay_ms: 20,
        }
    }
}

/// What the double received and sent for one send (one prompt) of a chat.
#[derive(Clone, Debug)]
pub struct ChatRecord {
    pub chat_id: String,
    /// The bot handle of the page, e.g. `GPT-3.5-Turbo`.
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
    /// `complete`, `cancelled`, `error_...`; `None` while streaming or stalled.
    pub final_state: Option<String>,
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
        let shared = Arc::new(Shared {
            logged_in: AtomicBool::new(opts.logged_in),
            daily_limit: AtomicBool::new(opts.daily_limit),
            textarea_delay_ms: opts.textarea_delay_ms,
            chunk_delay: Duration::from_millis(opts.chunk_delay_ms),
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            next_seq: AtomicU64::new(1),
            state: Mutex::new(ServerState::default()),
            changed: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            user_clicks: watch::channel(false).0,
        });
        let app = Router::new()
            .route("/", get(home))
            .route("/favicon.ico", get(|| async { StatusCode::NOT_FOUND }))
            .route("/login", get(login_page).post(login))
            .route("/api/gql_POST", post(gql))
            .route("/api/chat/{chat_id}", get(chat_state))
            .route("/up/{box_name}/updates", get(update_socket))
            .route("/noise/socket", get(noise_socket))
            .route("/__double/chats", get(chats_json))
            .route("/__double/mode", post(set_mode))
            .route("/__double/user-clicks", get(user_clicks))
            .route("/{bot}", get(bot_page))
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

    /// Pages loaded from now on show the logged-in (or logged-out) view.
    pub fn set_logged_in(&self, v: bool) {
        self.shared.logged_in.store(v, Ordering::SeqCst);
    }

    /// Pages loaded from now on are (or are not) at the daily limit.
    pub fn set_daily_limit(&self, v: bool) {
        self.shared.daily_limit.store(v, Ordering::SeqCst);
    }

    /// Every send received, in arrival order.
    pub fn chats(&self) -> Vec<ChatRecord> {
        self.shared.lock().records.clone()
    }

    /// Waits until at least `n` sends were received, or `timeout`; returns what there is.
    pub async fn wait_for_chats(&self, n: usize, timeout: Duration) -> Vec<ChatRecord> {
        self.wait_until(timeout, |s| s.records.len() >= n).await;
        self.chats()
    }

    /// Waits until a stop for `chat_id` arrived; false after `timeout`.
    pub async fn wait_for_stop(&self, chat_id: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.stops_seen.contains(chat_id))
            .await
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
    logged_in: AtomicBool,
    daily_limit: AtomicBool,
    textarea_delay_ms: u64,
    chunk_delay: Duration,
    started: Instant,
    /// Chat ids, message ids and socket ids.
    next_id: AtomicU64,
    /// `min_seq` of the outer update frames: increasing.
    next_seq: AtomicU64,
    state: Mutex<ServerState>,
    /// Bumped on every change of `state`, so waiters wake without polling.
    changed: watch::Sender<u64>,
    /// Set once when the double stops; every task of the double watches it.
    shutdown: watch::Sender<bool>,
    /// Set by [`Double::user_clicks_sign_in`]: sign-in pages click their button.
    user_clicks: watch::Sender<bool>,
}

#[derive(Default)]
struct ServerState {
    records: Vec<ChatRecord>,
    /// Server-side state of each chat, by chat id.
    chats: HashMap<String, Chat>,
    /// The connected update socket of each channel.
    sockets: HashMap<String, SocketHandle>,
    /// Chats a stop request arrived for.
    stops_seen: HashSet<String>,
}

#[derive(Default)]
struct Chat {
    /// What `/api/chat/{id}` returns: every message of the chat, latest state.
    messages: Vec<StoredMessage>,
    /// Streams of this chat still running, each with its stop signal.
    streams: Vec<(usize, Arc<Notify>)>,
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

#[derive(Clone, Debug, serde::Serialize)]
struct StoredMessage {
    id: String,
    #[serde(rename = "messageId")]
    message_id: u64,
    author: String,
    text: String,
    state: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    fn message(&self, author: &str, text: &str, state: &str) -> StoredMessage {
        let n = self.id();
        StoredMessage {
            id: format!("TWVzc2FnZTo{n}"),
            message_id: n,
            author: author.into(),
            text: text.into(),
            state: state.into(),
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

    /// Queues `frame` on `channel`'s socket; a frame for a closed page is lost, as on the site.
    fn emit(&self, channel: &str, frame: String, record: Option<usize>) {
        if let Some(socket) = self.lock().sockets.get(channel) {
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

    fn outer(&self, entries: Vec<String>) -> String {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        json!({"messages": entries, "min_seq": seq}).to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Replies

const UNICODE_TEXT: &str = "Unicode check: emoji 😀👍🏽 and a family 👩‍👩‍👧‍👦,\nCJK 漢字かなカナ 한국어,\nRTL العربية مرحبا and עברית שלום,\n\ttab, \"double\" and 'single' quotes, backslashes \\ \\\\ \\n (literal),\nand markup shown as text: </div><script>alert(1)</script> & done.";

fn long_text() -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < 100 * 1024 {
        i += 1;
        s.push_str(&format!(
            "Line {i:05}: the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n"
        ));
    }
    s
}

/// `n` growing cumulative prefixes of `text`, the last one being `text`; split on char
/// boundaries (fewer steps for very short texts).
fn prefixes(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    (1..=n)
        .map(|k| chars[..chars.len() * k / n].iter().collect())
        .collect()
}

/// How a scripted reply ends after its `incomplete` steps.
enum Ending {
    /// A last frame with this text and state.
    Final(String, &'static str),
    /// No more frames (until a stop).
    Stall,
    /// An outer `missed_messages` frame, then these steps and the complete text stream on.
    MissedThen(Vec<String>, String),
    /// The reply completes server-side with this text, then the socket signals lost updates
    /// (outer `missed_messages`, or an inner `refetchChannel` when the flag is set) and falls
    /// silent: only the page's refetch shows the end.
    LostThenSilent(String, bool),
}

/// A reply: cumulative `incomplete` texts, then its ending; streamed `delay` apart
/// (`None`: the double's `chunk_delay_ms`).
struct Script {
    steps: Vec<String>,
    ending: Ending,
    delay: Option<Duration>,
}

fn script(bot: &str, prompt: &str) -> Script {
    let text = |s: &str| s.to_owned();
    let normal = |full: String, n: usize| {
        let mut steps = prefixes(&full, n);
        steps.pop();
        Script {
            steps,
            ending: Ending::Final(full, "complete"),
            delay: None,
        }
    };
    let echo = format!("Echo from {bot}: {prompt}");
    let two = || prefixes(&echo, 5).into_iter().take(2).collect::<Vec<_>>();
    let with_end = |ending: Ending| Script {
        steps: two(),
        ending,
        delay: None,
    };
    let last_of_two = || two().pop().unwrap_or_default();
    if prompt.contains("[[long]]") {
        normal(long_text(), 25)
    } else if prompt.contains("[[unicode]]") {
        normal(text(UNICODE_TEXT), 5)
    } else if prompt.contains("[[rewrite]]") {
        Script {
            steps: vec![text("Here is **bold"), text("Here is **bold text*")],
            ending: Ending::Final(text("Here is bold text, rewritten."), "complete"),
            delay: None,
        }
    } else if prompt.contains("[[error]]") {
        with_end(Ending::Final(last_of_two(), "error_user_message_too_long"))
    } else if prompt.contains("[[rate-limit]]") {
        with_end(Ending::Final(last_of_two(), "error_rate_limit_exceeded"))
    } else if prompt.contains("[[cancelled]]") {
        with_end(Ending::Final(last_of_two(), "cancelled"))
    } else if prompt.contains("[[stall]]") {
        with_end(Ending::Stall)
    } else if prompt.contains("[[missed-stop]]") {
        with_end(Ending::LostThenSilent(echo.clone(), false))
    } else if prompt.contains("[[refetch]]") {
        with_end(Ending::LostThenSilent(echo.clone(), true))
    } else if prompt.contains("[[missed]]") {
        let mut rest: Vec<String> = prefixes(&echo, 5).into_iter().skip(2).collect();
        rest.pop();
        with_end(Ending::MissedThen(rest, echo.clone()))
    } else if prompt.contains("[[slow]]") {
        let words: Vec<String> = (1..=200).map(|i| format!("word{i}")).collect();
        let steps = (1..200).map(|k| words[..k].join(" ")).collect();
        Script {
            steps,
            ending: Ending::Final(words.join(" "), "complete"),
            delay: Some(Duration::from_millis(50)),
        }
    } else {
        normal(echo, 5)
    }
}

/// The final text the double produces for `prompt` sent to `bot`: the bot message's last
/// `text` (for `[[error]]`, `[[cancelled]]` and `[[stall]]` the text it stopped at; for
/// `[[missed-stop]]` and `[[refetch]]` the text only the page's refetch shows).
pub fn expected_reply(bot: &str, prompt: &str) -> String {
    let s = script(bot, prompt);
    match s.ending {
        Ending::Final(t, _) | Ending::MissedThen(_, t) | Ending::LostThenSilent(t, _) => t,
        Ending::Stall => s.steps.last().cloned().unwrap_or_default(),
    }
}

/// The bot's codename, the `author` of its messages.
fn codename(bot: &str) -> &'static str {
    match bot {
        "GPT-3.5-Turbo" => "chinchilla",
        "GPT-4" => "beaver",
        _ => "acouchy",
    }
}

// ---------------------------------------------------------------------------------------
// Frames

fn inner_message(chat_id: &str, m: &StoredMessage) -> String {
    json!({"message_type": "subscriptionUpdate", "payload": {
        "subscription_name": "messageAdded",
        "unique_id": format!("messageAdded:{chat_id}"),
        "data": {"messageAdded": {
            "id": m.id, "messageId": m.message_id, "author": m.author, "text": m.text,
            "state": m.state, "contentType": "text_markdown", "suggestedReplies": []}}}})
    .to_string()
}

/// A subscription entry readers must ignore.
fn inner_noise(name: &str, chat_id: &str, bot_message: &StoredMessage) -> String {
    let data = match name {
        "chatTitleUpdated" => json!({"id": chat_id, "title": "Chat with the double"}),
        "messageStateUpdated" => json!({"id": bot_message.id,
            "messageId": bot_message.message_id, "state": bot_message.state}),
        _ => json!({"id": "Vmlld2VyOjE=", "messagePointsDisplay": {"remaining": 42}}),
    };
    json!({"message_type": "subscriptionUpdate", "payload": {
        "subscription_name": name, "unique_id": format!("{name}:{chat_id}"),
        "data": {name: data}}})
    .to_string()
}

/// One send being answered: the human echo, then the bot message streamed on the channel.
struct Stream {
    shared: Arc<Shared>,
    chat_id: String,
    channel: String,
    /// Index of this send in the records.
    record: usize,
    reply: StoredMessage,
    stop: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
}

/// Why a stream ended early.
enum Interrupt {
    Stop,
    Shutdown,
}

impl Stream {
    /// Waits `delay`, unless a stop or the shutdown comes first.
    async fn pause(&mut self, delay: Duration) -> Result<(), Interrupt> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.stop.notified() => Err(Interrupt::Stop),
            _ = shut_down(&mut self.shutdown) => Err(Interrupt::Shutdown),
        }
    }

    /// Sets the bot message, stores it server-side and sends one frame: the `before` entries,
    /// the bot message, then the `noise` subscription if any. Records a final state first, so
    /// `chats()` has it by the time a reader sees the frame.
    fn bot(&mut self, text: &str, state: &str, before: Vec<String>, noise: Option<&str>) {
        self.reply.text = text.to_owned();
        self.reply.state = state.to_owned();
        self.shared.store(&self.chat_id, &self.reply);
        self.finish_if_final();
        let mut entries = before;
        entries.push(inner_message(&self.chat_id, &self.reply));
        if let Some(name) = noise {
            entries.push(inner_noise(name, &self.chat_id, &self.reply));
        }
        let frame = self.shared.outer(entries);
        self.shared.emit(&self.channel, frame, Some(self.record));
    }

    fn finish_if_final(&self) {
        if self.reply.state != "incomplete" {
            let (record, state) = (self.record, self.reply.state.clone());
            self.shared.update(|s| {
                if let Some(r) = s.records.get_mut(record) {
                    r.final_state = Some(state);
                }
            });
        }
    }

    fn noise_frame(&self, name: &str) {
        let frame = self
            .shared
            .outer(vec![inner_noise(name, &self.chat_id, &self.reply)]);
        self.shared.emit(&self.channel, frame, None);
    }

    async fn run(mut self, human: StoredMessage, script: Script) {
        let delay = script.delay.unwrap_or(self.shared.chunk_delay);
        let ended = self.play(&human, script, delay).await;
        if let Err(Interrupt::Stop) = ended {
            if self.reply.state == "incomplete" {
                let text = self.reply.text.clone();
                self.bot(&text, "cancelled", Vec::new(), None);
            }
        }
        let (chat_id, record) = (self.chat_id.clone(), self.record);
        self.shared.update(|s| {
            if let Some(chat) = s.chats.get_mut(&chat_id) {
                chat.streams.retain(|(r, _)| *r != record);
            }
        });
    }

    async fn play(
        &mut self,
        human: &StoredMessage,
        script: Script,
        delay: Duration,
    ) -> Result<(), Interrupt> {
        let echo = inner_message(&self.chat_id, human);
        let title = inner_noise("chatTitleUpdated", &self.chat_id, &self.reply);
        let mut steps = script.steps.iter();
        // The first frame batches the echo, a noise entry and the bot's first update.
        match steps.next() {
            Some(first) => self.bot(first, "incomplete", vec![echo, title], None),
            None => {
                let frame = self.shared.outer(vec![echo, title]);
                self.shared.emit(&self.channel, frame, None);
            }
        }
        for (i, text) in steps.enumerate() {
            self.pause(delay).await?;
            match i {
                0 => {
                    self.noise_frame("viewerStateUpdated");
                    self.bot(text, "incomplete", Vec::new(), None);
                }
                1 => self.bot(text, "incomplete", Vec::new(), Some("messageStateUpdated")),
                _ => self.bot(text, "incomplete", Vec::new(), None),
            }
        }
        self.pause(delay).await?;
        match script.ending {
            Ending::Final(text, state) => self.bot(&text, state, Vec::new(), None),
            Ending::Stall => {
                // Nothing more, ever; a stop still cancels it.
                tokio::select! {
                    _ = self.stop.notified() => return Err(Interrupt::Stop),
                    _ = shut_down(&mut self.shutdown) => return Err(Interrupt::Shutdown),
                }
            }
            Ending::MissedThen(rest, text) => {
                let frame = json!({"error": "missed_messages"}).to_string();
                self.shared.emit(&self.channel, frame, None);
                for step in rest {
                    self.pause(delay).await?;
                    self.bot(&step, "incomplete", Vec::new(), None);
                }
                self.pause(delay).await?;
                self.bot(&text, "complete", Vec::new(), None);
            }
            Ending::LostThenSilent(text, refetch_channel) => {
                self.reply.text = text;
                self.reply.state = "complete".into();
                self.shared.store(&self.chat_id, &self.reply);
                self.finish_if_final();
                let frame = if refetch_channel {
                    let entry = json!({"message_type": "refetchChannel",
                        "payload": {"channel": self.channel}});
                    self.shared.outer(vec![entry.to_string()])
                } else {
                    json!({"error": "missed_messages"}).to_string()
                };
                self.shared.emit(&self.channel, frame, None);
            }
        }
        Ok(())
    }
}

/// Answers one send: registers the chat's messages, then streams on `channel`.
fn start_stream(shared: Arc<Shared>, record: usize, chat_id: String, channel: String) {
    let (bot, prompt) = {
        let s = shared.lock();
        match s.records.get(record) {
            Some(r) => (r.bot.clone(), r.prompt.clone()),
            None => return,
        }
    };
    let human = shared.message("human", &prompt, "complete");
    let reply = shared.message(codename(&bot), "", "incomplete");
    let stop = Arc::new(Notify::new());
    shared.store(&chat_id, &human);
    shared.update(|s| {
        s.chats
            .entry(chat_id.clone())
            .or_default()
            .streams
            .push((record, stop.clone()))
    });
    let stream = Stream {
        shutdown: shared.shutdown.subscribe(),
        shared,
        chat_id,
        channel,
        record,
        reply,
        stop,
    };
    tokio::spawn(async move {
        let script = script(&bot, &prompt);
        stream
            .shared
            .wait_for_socket(&stream.channel, Duration::from_secs(5))
            .await;
        stream.run(human, script).await;
    });
}

// ---------------------------------------------------------------------------------------
// HTTP handlers

type St = AxumState<Arc<Shared>>;

fn has_session_cookie(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == "p-b" && !v.is_empty())
}

/// JSON for embedding in a `<script>`: `<` escaped so no string can end the script.
fn script_json(v: &Value) -> String {
    v.to_string().replace('<', "\\u003c")
}

fn html_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const LOGGED_OUT: &str = r#"<div class="LoggedOutBotInfoPage_container__Ab3x1"><p>Talk to bot</p><p>Sign in to chat with this bot.</p><a href="/login"><button class="LoggedOutBotInfoPage_appButton__UO6NU">Sign in</button></a></div>"#;

/// A bot's chat page; every load is a new chat.
async fn bot_page(AxumState(shared): St, Path(bot): Path<String>, headers: HeaderMap) -> Response {
    let chat_id = format!("chat-{}", shared.id());
    let logged_in = shared.logged_in.load(Ordering::SeqCst) || has_session_cookie(&headers);
    let config = json!({
        "chatId": chat_id, "bot": bot, "loggedIn": logged_in,
        "dailyLimit": shared.daily_limit.load(Ordering::SeqCst),
        "textareaDelayMs": shared.textarea_delay_ms,
    });
    let page = include_str!("page.html")
        .replace("__BOT_TITLE__", &html_text(&bot))
        .replace("__LOGGED_OUT__", if logged_in { "" } else { LOGGED_OUT })
        .replace("__CONFIG__", &script_json(&config));
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

async fn home() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Poe double</title></head><body>",
        "<h1>Poe double</h1><ul><li><a href=\"/GPT-3.5-Turbo\">GPT-3.5-Turbo</a></li>",
        "<li><a href=\"/GPT-4\">GPT-4</a></li></ul></body></html>"
    ))
}

async fn login_page() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in - Poe</title></head><body>",
        "<h1>Sign in to the Poe double</h1>",
        "<form method=\"post\" action=\"/login\">",
        "<button class=\"LoginButton\" type=\"submit\">Sign in</button></form>",
        "<script>fetch('/__double/user-clicks').then(r => { if (r.status === 200) ",
        "document.querySelector('button').click(); });</script>",
        "</body></html>"
    ))
}

/// Answers 200 once the user clicks (see [`Double::user_clicks_sign_in`]); the sign-in page
/// waits on it. 204 when the double stops first.
async fn user_clicks(AxumState(shared): St) -> StatusCode {
    let mut clicks = shared.user_clicks.subscribe();
    let mut stop = shared.shutdown.subscribe();
    tokio::select! {
        _ = clicks.wait_for(|v| *v) => StatusCode::OK,
        () = shut_down(&mut stop) => StatusCode::NO_CONTENT,
    }
}

async fn login() -> Response {
    let mut response = Redirect::to("/GPT-3.5-Turbo").into_response();
    for cookie in [
        "p-b=double-session; Path=/; Max-Age=31536000",
        "p-lat=double-lat; Path=/; Max-Age=31536000",
    ] {
        response
            .headers_mut()
            .append(header::SET_COOKIE, header::HeaderValue::from_static(cookie));
    }
    response
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

async fn gql(AxumState(shared): St, Json(body): Json<Value>) -> Response {
    let received_at = Instant::now();
    let vars = &body["variables"];
    let var = |k: &str| vars[k].as_str().map(str::to_owned);
    match body["queryName"].as_str() {
        Some("sendMessageMutation") => {
            let (Some(chat_id), Some(prompt)) = (var("chatId"), var("query")) else {
                return bad_request("sendMessageMutation needs chatId and query".into());
            };
            let bot = var("bot").unwrap_or_default();
            let channel = var("channel").unwrap_or_else(|| format!("poe-chan5-{chat_id}"));
            let record = shared.update(|s| {
                s.records.push(ChatRecord {
                    chat_id: chat_id.clone(),
                    bot,
                    prompt,
                    received_at,
                    frame_times: Vec::new(),
                    stopped_at: None,
                    final_state: None,
                });
                s.records.len() - 1
            });
            start_stream(shared, record, chat_id.clone(), channel);
            Json(json!({"data": {"messageEdgeCreate": {"status": "success",
                "chat": {"chatId": chat_id}}}}))
            .into_response()
        }
        Some("stopMessage") => {
            let Some(chat_id) = var("chatId") else {
                return bad_request("stopMessage needs chatId".into());
            };
            shared.update(|s| {
                s.stops_seen.insert(chat_id.clone());
                let streams: Vec<(usize, Arc<Notify>)> = s
                    .chats
                    .get(&chat_id)
                    .map(|c| c.streams.clone())
                    .unwrap_or_default();
                let mut marked: Vec<usize> = streams.iter().map(|(r, _)| *r).collect();
                if marked.is_empty() {
                    // Nothing streams: the stop still arrived, note it on the chat's last send.
                    marked.extend(s.records.iter().rposition(|r| r.chat_id == chat_id));
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
            Json(json!({"data": {"stopMessage": {"success": true}}})).into_response()
        }
        other => bad_request(format!("unknown queryName {other:?}")),
    }
}

/// The page's refetch after lost updates: the chat's messages as the server has them.
async fn chat_state(AxumState(shared): St, Path(chat_id): Path<String>) -> Json<Value> {
    let messages = shared
        .lock()
        .chats
        .get(&chat_id)
        .map(|c| c.messages.clone())
        .unwrap_or_default();
    Json(json!({"chatId": chat_id, "messages": messages}))
}

async fn update_socket(
    AxumState(shared): St,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let channel = query.get("channel").cloned().unwrap_or_default();
    ws.on_upgrade(move |socket| serve_updates(shared, channel, socket))
}

/// Writes the channel's frames to its socket, noting when each bot frame is written.
async fn serve_updates(shared: Arc<Shared>, channel: String, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let id = shared.id();
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

/// The page's second socket: heartbeats, a non-JSON text and a binary frame, never an update.
async fn noise_socket(AxumState(shared): St, ws: WebSocketUpgrade) -> Response {
    let mut shutdown = shared.shutdown.subscribe();
    ws.on_upgrade(|mut socket: WebSocket| async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let ts = started.elapsed().as_millis() as u64;
                    let frames = [
                        Message::Text(json!({"type": "heartbeat", "ts": ts}).to_string().into()),
                        Message::Text("ping".into()),
                        Message::Binary(vec![0u8, 1, 2, 255].into()),
                    ];
                    for frame in frames {
                        if socket.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
                incoming = socket.recv() => if !matches!(incoming, Some(Ok(m)) if !matches!(m, Message::Close(_))) {
                    return;
                },
                _ = shut_down(&mut shutdown) => return,
            }
        }
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
                   "stopped_ms": c.stopped_at.map(ms), "final_state": c.final_state})
        })
        .collect();
    Json(Value::Array(chats))
}

async fn set_mode(AxumState(shared): St, Json(body): Json<Value>) -> Json<Value> {
    if let Some(v) = body["logged_in"].as_bool() {
        shared.logged_in.store(v, Ordering::SeqCst);
    }
    if let Some(v) = body["daily_limit"].as_bool() {
        shared.daily_limit.store(v, Ordering::SeqCst);
    }
    Json(json!({"logged_in": shared.logged_in.load(Ordering::SeqCst),
                "daily_limit": shared.daily_limit.load(Ordering::SeqCst)}))
}
