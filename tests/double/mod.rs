//! The local Poe double: a faithful copy of Poe's chat page and its update WebSocket, as
//! described in `shared/poe-web.md`, for the end-to-end tests, the benchmark and the offline
//! demo (the machine running them cannot reach poe.com).
//!
//! It serves bot pages whose prompt box appears late, whose send button only real input
//! enables, with a stop button while a reply streams; the human echo and the bot's
//! cumulative text on the update socket, batched `messages[]` entries and noise
//! subscriptions, plus a second noise socket; a logged-out and a daily-limit mode; and
//! deterministic replies ([`expected_reply`]) with trigger words for the site's misbehaviour:
//! `[[long]]`, `[[unicode]]`, `[[rewrite]]`, `[[error]]`, `[[cancelled]]`, `[[stall]]`,
//! `[[missed]]`, `[[missed-stop]]`, `[[refetch]]`, `[[slow]]`. It records every send and stop
//! it receives ([`Double::chats`]), which tests and the benchmark compare with what the
//! client saw.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// How the double behaves.
#[derive(Debug, Clone)]
pub struct DoubleOptions {
    /// When false, pages show the logged-out view unless the request has a `p-b` cookie.
    pub logged_in: bool,
    /// The send button never enables and a tooltip says the free messages are used up.
    pub daily_limit: bool,
    /// The prompt box appears this long after `load`, like the real single-page app.
    pub textarea_delay_ms: u64,
    /// Delay between two streamed updates of a reply.
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

/// What the double received for one chat.
#[derive(Clone, Debug)]
pub struct ChatRecord {
    pub chat_id: String,
    /// The bot handle of the page, e.g. `GPT-3.5-Turbo`.
    pub bot: String,
    /// Exactly the text the page sent.
    pub prompt: String,
    /// When the send reached the server.
    pub received_at: Instant,
    /// When each frame carrying this chat's bot message was written to the socket.
    pub frame_times: Vec<Instant>,
    pub stopped_at: Option<Instant>,
    /// `complete`, `cancelled`, `error_...`; `None` while streaming or stalled.
    pub final_state: Option<String>,
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

struct Shared {
    logged_in: AtomicBool,
    daily_limit: AtomicBool,
    textarea_delay_ms: u64,
    chunk_delay_ms: u64,
    started: Instant,
    next_chat: AtomicU64,
    next_message: AtomicU64,
    min_seq: AtomicU64,
    chats: Mutex<Vec<ChatRecord>>,
    /// Bumped on every change of `chats`, so waiters are woken (no polling).
    version: watch::Sender<u64>,
    /// Update socket of each channel.
    channels: Mutex<HashMap<String, mpsc::UnboundedSender<String>>>,
    channel_version: watch::Sender<u64>,
    /// Stop requests, per chat.
    stops: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Server-side state of each chat, for the page's refetch.
    messages: Mutex<HashMap<String, Vec<StoredMessage>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn with_chat(&self, chat_id: &str, f: impl FnOnce(&mut ChatRecord)) {
        if let Some(c) = lock(&self.chats)
            .iter_mut()
            .rev()
            .find(|c| c.chat_id == chat_id)
        {
            f(c);
        }
        self.bump();
    }
}

/// A running double; dropping it stops the server.
pub struct Double {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Double {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Double {
    /// Starts the double on a free loopback port.
    pub async fn start(opts: DoubleOptions) -> std::io::Result<Double> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    pub async fn start_on(addr: SocketAddr, opts: DoubleOptions) -> std::io::Result<Double> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            logged_in: AtomicBool::new(opts.logged_in),
            daily_limit: AtomicBool::new(opts.daily_limit),
            textarea_delay_ms: opts.textarea_delay_ms,
            chunk_delay_ms: opts.chunk_delay_ms,
            started: Instant::now(),
            next_chat: AtomicU64::new(1),
            next_message: AtomicU64::new(1000),
            min_seq: AtomicU64::new(1),
            chats: Mutex::new(Vec::new()),
            version: watch::channel(0).0,
            channels: Mutex::new(HashMap::new()),
            channel_version: watch::channel(0).0,
            stops: Mutex::new(HashMap::new()),
            messages: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/login", get(login_page).post(login))
            .route("/api/gql_POST", post(gql))
            .route("/api/chat/{chat_id}", get(chat_state))
            .route("/up/{box_name}/updates", get(update_socket))
            .route("/noise/socket", get(noise_socket))
            .route("/__double/chats", get(chats_json))
            .route("/__double/mode", post(set_mode))
            .route("/{bot}", get(bot_page))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Double {
            addr,
            shared,
            server,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_logged_in(&self, v: bool) {
        self.shared.logged_in.store(v, Ordering::SeqCst);
    }

    pub fn set_daily_limit(&self, v: bool) {
        self.shared.daily_limit.store(v, Ordering::SeqCst);
    }

    /// Every send received, in arrival order.
    pub fn chats(&self) -> Vec<ChatRecord> {
        lock(&self.shared.chats).clone()
    }

    /// Waits until at least `n` sends were received, or `timeout`; returns what there is.
    pub async fn wait_for_chats(&self, n: usize, timeout: Duration) -> Vec<ChatRecord> {
        self.wait_until(timeout, |chats| chats.len() >= n).await;
        self.chats()
    }

    /// Waits until a stop for `chat_id` arrived; false after `timeout`.
    pub async fn wait_for_stop(&self, chat_id: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |chats| {
            chats
                .iter()
                .any(|c| c.chat_id == chat_id && c.stopped_at.is_some())
        })
        .await
    }

    async fn wait_until(&self, timeout: Duration, cond: impl Fn(&[ChatRecord]) -> bool) -> bool {
        let mut rx = self.shared.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(&lock(&self.shared.chats)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return cond(&lock(&self.shared.chats));
            }
        }
    }

    pub async fn shutdown(self) {
        drop(self);
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

fn slow_text() -> String {
    (1..=200).map(|i| format!("word{i} ")).collect()
}

/// The steps of a reply: cumulative texts, streamed `incomplete`, then how it ends.
struct Script {
    steps: Vec<String>,
    end: End,
    delay: Option<Duration>,
}

enum End {
    /// Final frame with state `complete` and this text.
    Complete(String),
    /// Final frame with this state and the last step's text.
    State(&'static str),
    /// No more frames.
    Stall,
    /// A lost-updates signal after the steps, then the rest streams normally.
    MissedThenComplete(String),
    /// A lost-updates signal (outer `missed_messages` or inner `refetchChannel`), then no
    /// frames; the chat completes server-side (visible through the page's refetch).
    LostThenSilent { text: String, refetch_channel: bool },
}

/// Cumulative prefixes of `text` in `n` growing steps, split on char boundaries.
fn prefixes(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.max(1).min(chars.len().max(1));
    (1..=n)
        .map(|k| chars[..chars.len() * k / n].iter().collect())
        .collect()
}

fn script(bot: &str, prompt: &str) -> Script {
    let t = |s: &str| s.to_owned();
    if prompt.contains("[[long]]") {
        let text = long_text();
        return Script {
            steps: prefixes(&text, 25),
            end: End::Complete(text),
            delay: None,
        };
    }
    if prompt.contains("[[unicode]]") {
        return Script {
            steps: prefixes(UNICODE_TEXT, 4),
            end: End::Complete(t(UNICODE_TEXT)),
            delay: None,
        };
    }
    if prompt.contains("[[rewrite]]") {
        return Script {
            steps: vec![t("Here is **bold"), t("Here is **bold text*")],
            end: End::Complete(t("Here is bold text, rewritten.")),
            delay: None,
        };
    }
    let echo = format!("Echo from {bot}: {prompt}");
    let first_two = |text: &str| prefixes(text, 5).into_iter().take(2).collect::<Vec<_>>();
    if prompt.contains("[[error]]") {
        return Script {
            steps: first_two(&echo),
            end: End::State("error_user_message_too_long"),
            delay: None,
        };
    }
    if prompt.contains("[[cancelled]]") {
        return Script {
            steps: first_two(&echo),
            end: End::State("cancelled"),
            delay: None,
        };
    }
    if prompt.contains("[[stall]]") {
        return Script {
            steps: first_two(&echo),
            end: End::Stall,
            delay: None,
        };
    }
    if prompt.contains("[[missed-stop]]") {
        return Script {
            steps: first_two(&echo),
            end: End::LostThenSilent {
                text: echo,
                refetch_channel: false,
            },
            delay: None,
        };
    }
    if prompt.contains("[[refetch]]") {
        return Script {
            steps: first_two(&echo),
            end: End::LostThenSilent {
                text: echo,
                refetch_channel: true,
            },
            delay: None,
        };
    }
    if prompt.contains("[[missed]]") {
        return Script {
            steps: first_two(&echo),
            end: End::MissedThenComplete(echo),
            delay: None,
        };
    }
    if prompt.contains("[[slow]]") {
        let text = slow_text();
        return Script {
            steps: prefixes(&text, 200),
            end: End::Complete(text),
            delay: Some(Duration::from_millis(50)),
        };
    }
    Script {
        steps: prefixes(&echo, 5),
        end: End::Complete(echo),
        delay: None,
    }
}

/// The final text the double produces for `prompt` sent to `bot` (the bot message's last
/// `text`; for `[[error]]`/`[[cancelled]]`/`[[stall]]` the text when it stopped).
pub fn expected_reply(bot: &str, prompt: &str) -> String {
    let s = script(bot, prompt);
    match s.end {
        End::Complete(t) | End::MissedThenComplete(t) | End::LostThenSilent { text: t, .. } => t,
        End::State(_) | End::Stall => s.steps.last().cloned().unwrap_or_default(),
    }
}

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

fn inner_noise(name: &str, chat_id: &str) -> String {
    json!({"message_type": "subscriptionUpdate", "payload": {
        "subscription_name": name, "unique_id": format!("{name}:{chat_id}"),
        "data": {name: {"chatId": chat_id, "title": "Chat with the double"}}}})
    .to_string()
}

fn outer(shared: &Shared, entries: Vec<String>) -> String {
    let seq = shared.min_seq.fetch_add(1, Ordering::SeqCst);
    json!({"messages": entries, "min_seq": seq}).to_string()
}

/// Sends a frame on `channel`'s update socket, waiting (bounded) for the socket to connect.
async fn send_frame(shared: &Shared, channel: &str, frame: String) -> bool {
    let mut rx = shared.channel_version.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(tx) = lock(&shared.channels).get(channel) {
            return tx.send(frame).is_ok();
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return false;
        }
    }
}

async fn stream_reply(
    shared: Arc<Shared>,
    chat_id: String,
    channel: String,
    bot: String,
    prompt: String,
) {
    let stop = Arc::new(AtomicBool::new(false));
    lock(&shared.stops).insert(chat_id.clone(), stop.clone());
    let human = StoredMessage {
        id: format!("TWVzc2FnZTo{}", shared.next_message.load(Ordering::SeqCst)),
        message_id: shared.next_message.fetch_add(1, Ordering::SeqCst),
        author: "human".into(),
        text: prompt.clone(),
        state: "complete".into(),
    };
    let mut reply = StoredMessage {
        id: format!("TWVzc2FnZTo{}", shared.next_message.load(Ordering::SeqCst)),
        message_id: shared.next_message.fetch_add(1, Ordering::SeqCst),
        author: codename(&bot).into(),
        text: String::new(),
        state: "incomplete".into(),
    };
    lock(&shared.messages).insert(chat_id.clone(), vec![human.clone()]);
    let store = |shared: &Shared, reply: &StoredMessage| {
        if let Some(list) = lock(&shared.messages).get_mut(&chat_id) {
            list.truncate(1);
            list.push(reply.clone());
        }
    };
    let script = script(&bot, &prompt);
    let delay = script
        .delay
        .unwrap_or(Duration::from_millis(shared.chunk_delay_ms));
    // The echo, batched with a noise subscription.
    send_frame(
        &shared,
        &channel,
        outer(
            &shared,
            vec![
                inner_message(&chat_id, &human),
                inner_noise("chatTitleUpdated", &chat_id),
            ],
        ),
    )
    .await;
    let bot_frame = |shared: &Shared, reply: &StoredMessage, extra: Option<&str>| {
        let mut entries = vec![inner_message(&chat_id, reply)];
        if let Some(name) = extra {
            entries.push(inner_noise(name, &chat_id));
        }
        outer(shared, entries)
    };
    let sent = |shared: &Shared| shared.with_chat(&chat_id, |c| c.frame_times.push(Instant::now()));
    let stopped = |shared: &Shared, reply: &mut StoredMessage| {
        reply.state = "cancelled".into();
        let frame = bot_frame(shared, reply, None);
        (frame, ())
    };
    for (i, text) in script.steps.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        if stop.load(Ordering::SeqCst) {
            let (frame, ()) = stopped(&shared, &mut reply);
            store(&shared, &reply);
            send_frame(&shared, &channel, frame).await;
            sent(&shared);
            shared.with_chat(&chat_id, |c| c.final_state = Some("cancelled".into()));
            return;
        }
        reply.text.clone_from(text);
        store(&shared, &reply);
        let extra = match i {
            0 => Some("viewerStateUpdated"),
            2 => Some("messageStateUpdated"),
            _ => None,
        };
        send_frame(&shared, &channel, bot_frame(&shared, &reply, extra)).await;
        sent(&shared);
    }
    tokio::time::sleep(delay).await;
    if stop.load(Ordering::SeqCst) {
        let (frame, ()) = stopped(&shared, &mut reply);
        store(&shared, &reply);
        send_frame(&shared, &channel, frame).await;
        sent(&shared);
        shared.with_chat(&chat_id, |c| c.final_state = Some("cancelled".into()));
        return;
    }
    let finish = |shared: &Shared, reply: &mut StoredMessage, text: String, state: &str| {
        reply.text = text;
        reply.state = state.into();
        store(shared, reply);
        shared.with_chat(&chat_id, |c| c.final_state = Some(state.into()));
    };
    match script.end {
        End::Complete(text) => {
            finish(&shared, &mut reply, text, "complete");
            send_frame(&shared, &channel, bot_frame(&shared, &reply, None)).await;
            sent(&shared);
        }
        End::State(state) => {
            let text = reply.text.clone();
            finish(&shared, &mut reply, text, state);
            send_frame(&shared, &channel, bot_frame(&shared, &reply, None)).await;
            sent(&shared);
        }
        End::Stall => {}
        End::MissedThenComplete(text) => {
            send_frame(
                &shared,
                &channel,
                json!({"error": "missed_messages"}).to_string(),
            )
            .await;
            for step in prefixes(&text, 5).into_iter().skip(2) {
                tokio::time::sleep(delay).await;
                reply.text = step;
                store(&shared, &reply);
                send_frame(&shared, &channel, bot_frame(&shared, &reply, None)).await;
                sent(&shared);
            }
            tokio::time::sleep(delay).await;
            finish(&shared, &mut reply, text, "complete");
            send_frame(&shared, &channel, bot_frame(&shared, &reply, None)).await;
            sent(&shared);
        }
        End::LostThenSilent {
            text,
            refetch_channel,
        } => {
            // The reply completes on the server, but the socket never says so.
            finish(&shared, &mut reply, text, "complete");
            let signal = if refetch_channel {
                outer(
                    &shared,
                    vec![json!({"message_type": "refetchChannel", "payload": {}}).to_string()],
                )
            } else {
                json!({"error": "missed_messages"}).to_string()
            };
            send_frame(&shared, &channel, signal).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP handlers

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

async fn bot_page(
    State(shared): State<Arc<Shared>>,
    Path(bot): Path<String>,
    headers: HeaderMap,
) -> Response {
    let chat_id = format!("chat-{}", shared.next_chat.fetch_add(1, Ordering::SeqCst));
    let logged_in = shared.logged_in.load(Ordering::SeqCst) || has_session_cookie(&headers);
    let config = json!({
        "chatId": chat_id, "bot": bot, "loggedIn": logged_in,
        "dailyLimit": shared.daily_limit.load(Ordering::SeqCst),
        "textareaDelayMs": shared.textarea_delay_ms,
    });
    let page = include_str!("page.html")
        .replace("__BOT_TITLE__", &html_text(&bot))
        .replace("__CONFIG__", &script_json(&config));
    Html(page).into_response()
}

async fn login_page() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in - Poe</title></head><body>",
        "<h1>Sign in to the Poe double</h1>",
        "<form method=\"post\" action=\"/login\"><button class=\"LoginButton\" type=\"submit\">Sign in</button></form>",
        "</body></html>"
    ))
}

async fn login() -> Response {
    let mut response = Redirect::to("/GPT-3.5-Turbo").into_response();
    let headers = response.headers_mut();
    for cookie in [
        "p-b=double-session; Path=/; Max-Age=31536000",
        "p-lat=double-lat; Path=/; Max-Age=31536000",
    ] {
        if let Ok(v) = cookie.parse() {
            headers.append(header::SET_COOKIE, v);
        }
    }
    response
}

async fn gql(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let vars = &body["variables"];
    let text = |k: &str| vars[k].as_str().unwrap_or_default().to_owned();
    match body["queryName"].as_str() {
        Some("sendMessageMutation") => {
            let chat_id = text("chatId");
            let record = ChatRecord {
                chat_id: chat_id.clone(),
                bot: text("bot"),
                prompt: text("query"),
                received_at: Instant::now(),
                frame_times: Vec::new(),
                stopped_at: None,
                final_state: None,
            };
            lock(&shared.chats).push(record);
            shared.bump();
            tokio::spawn(stream_reply(
                shared.clone(),
                chat_id,
                text("channel"),
                text("bot"),
                text("query"),
            ));
            Json(json!({"data": {"messageEdgeCreate": {"status": "success"}}})).into_response()
        }
        Some("stopMessage") => {
            let chat_id = text("chatId");
            if let Some(flag) = lock(&shared.stops).get(&chat_id) {
                flag.store(true, Ordering::SeqCst);
            }
            shared.with_chat(&chat_id, |c| {
                c.stopped_at.get_or_insert_with(Instant::now);
            });
            Json(json!({"data": {"stopMessage": {"success": true}}})).into_response()
        }
        other => (
            StatusCode::BAD_REQUEST,
            format!("unknown queryName {other:?}"),
        )
            .into_response(),
    }
}

async fn chat_state(State(shared): State<Arc<Shared>>, Path(chat_id): Path<String>) -> Json<Value> {
    let messages = lock(&shared.messages)
        .get(&chat_id)
        .cloned()
        .unwrap_or_default();
    Json(json!({"chatId": chat_id, "messages": messages}))
}

async fn update_socket(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let channel = query.get("channel").cloned().unwrap_or_default();
    ws.on_upgrade(move |socket| async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        lock(&shared.channels).insert(channel.clone(), tx);
        shared.channel_version.send_modify(|v| *v += 1);
        let mut socket: WebSocket = socket;
        loop {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Some(text) => if socket.send(Message::Text(text.into())).await.is_err() { break },
                    None => break,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
        lock(&shared.channels).remove(&channel);
    })
}

async fn noise_socket(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket: WebSocket| async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    n += 1;
                    let msg = match n % 3 {
                        0 => Message::Text(json!({"type": "heartbeat", "ts": n}).to_string().into()),
                        1 => Message::Text("ping".into()),
                        _ => Message::Binary(vec![0u8, 1, 2, 255].into()),
                    };
                    if socket.send(msg).await.is_err() { break; }
                }
                incoming = socket.recv() => if !matches!(incoming, Some(Ok(_))) { break },
            }
        }
    })
}

async fn chats_json(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let ms = |t: Instant| t.duration_since(shared.started).as_secs_f64() * 1000.0;
    let chats: Vec<Value> = lock(&shared.chats)
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

async fn set_mode(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Json<Value> {
    if let Some(v) = body["logged_in"].as_bool() {
        shared.logged_in.store(v, Ordering::SeqCst);
    }
    if let Some(v) = body["daily_limit"].as_bool() {
        shared.daily_limit.store(v, Ordering::SeqCst);
    }
    Json(json!({"logged_in": shared.logged_in.load(Ordering::SeqCst),
                "daily_limit": shared.daily_limit.load(Ordering::SeqCst)}))
}
