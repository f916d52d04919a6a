//! The 2025 site ([`super::Mode::Y2025`]): pages and the GraphQL endpoint as the 2025
//! evidence of `shared/poe-web.md` shows them.
//!
//! - Pages: `/{Handle}` of a known bot (`page2025.html`; other spellings redirect to the
//!   canonical handle, unknown ones get a 404 page), `/chat/{chatCode}` (the chat so far, and
//!   sends continue it), `/explore` (`explore2025.html`), `/login`, `/`. Every page gives a
//!   visitor without one an anonymous HttpOnly `p-b`; only `p-b` values in the server's set
//!   of sessions (added by `POST /login`) are signed in. Signed out, chat pages redirect to
//!   `/login?redirect_url=...`.
//! - `POST /api/gql_POST`, by `poe-queryname` header (else the body's `queryName`):
//!   `sendMessageMutation` (decides, records and answers `messageEdgeCreate` with a status;
//!   only a taken send streams), `stopMessage`, `ExploreBotsListPaginationQuery`, and any other
//!   query naming a chat (`chatCode` / `chatId`) answers the chat's messages nested as
//!   `data.chatOfCode.messagesConnection.edges[].node`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::Notify;

use super::bots::{self, Bot, BOTS};
use super::frames2025::{self as f25, array, global_id, Obj, Points};
use super::stream::{self, Turn2025};
use super::{cookie, html_text, now_us, splitmix, ChatRecord, ServerState, Shared, StoredMessage};

/// The update socket's box in URLs (`/up/{box}/updates`).
const BOX: &str = "chan51-8888";
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
/// Names the page's chat query may have: each double picks one (nothing may rely on it).
const CHAT_QUERIES: &[&str] = &[
    "ChatPageQuery",
    "ChatLastMessageAreaQuery",
    "chatHelpers_chatOfCode_Query",
];
/// Refusals that a trigger word asks for.
const REFUSAL_WORDS: &[(&str, &str)] = &[
    ("[[reached-limit]]", "reached_limit"),
    ("[[rate-limit-exceeded]]", "rate_limit_exceeded"),
    ("[[concurrent]]", "concurrent_messages"),
    ("[[too-many-tokens]]", "too_many_tokens"),
    ("[[no-access]]", "no_access"),
];

// ---------------------------------------------------------------------------------------
// Sessions, cookies, markup helpers

/// The visitor counts as signed in: the whole double is, or its `p-b` is a signed-in one.
fn signed_in(shared: &Shared, headers: &HeaderMap) -> bool {
    shared.logged_in.load(Ordering::SeqCst)
        || cookie(headers, "p-b").is_some_and(|v| shared.lock().sessions.contains(&v))
}

/// A new `p-b` value (URL-encoded base64, like the site's).
fn new_session_value(shared: &Shared) -> String {
    format!("{}%3D%3D", shared.token(22, ALNUM))
}

fn p_b_cookie(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "p-b={value}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
    ))
    .ok()
}

/// Adds an anonymous `p-b` for a visitor without one, and `no-store`.
fn finish_page(shared: &Shared, headers: &HeaderMap, mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if cookie(headers, "p-b").is_none_or(|v| v.is_empty()) {
        if let Some(c) = p_b_cookie(&new_session_value(shared)) {
            h.append(header::SET_COOKIE, c);
        }
    }
    response
}

fn html(shared: &Shared, headers: &HeaderMap, status: StatusCode, page: String) -> Response {
    let response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response();
    finish_page(shared, headers, response)
}

fn redirect(shared: &Shared, headers: &HeaderMap, location: &str) -> Response {
    let response = match HeaderValue::from_str(location) {
        Ok(to) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    };
    finish_page(shared, headers, response)
}

fn login_redirect(shared: &Shared, headers: &HeaderMap, path: &str) -> Response {
    let to = format!("/login?redirect_url={}", percent_encode(path));
    redirect(shared, headers, &to)
}

/// `%%Name%%` in a template becomes `Name__<hash>`: CSS-module class names whose suffix is
/// this double's own (the prefix is what a reader may rely on, never the suffix).
fn hashed_classes(shared: &Shared, template: &str) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(at) = rest.find("%%") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find("%%") {
            Some(end)
                if end > 0
                    && after[..end]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                let name = &after[..end];
                out.push_str(name);
                out.push_str("__");
                out.push_str(&class_hash(shared.seed, name));
                rest = &after[end + 2..];
            }
            _ => {
                out.push_str("%%");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn class_hash(seed: u64, name: &str) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";
    let mut h = name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (0..5)
        .map(|_| {
            h = splitmix(h);
            char::from(CHARS[(h % CHARS.len() as u64) as usize])
        })
        .collect()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| percent_decode(k) == name)
        .map(|(_, v)| percent_decode(v))
}

/// Only a path of this site is followed after signing in.
fn safe_redirect(url: Option<&str>) -> String {
    match url {
        Some(u) if u.starts_with('/') && !u.starts_with("//") && !u.contains('\\') => u.into(),
        _ => "/".into(),
    }
}

/// JSON text for a `<script>`: `<` only occurs inside JSON strings, where `\u003c` means the
/// same, so no string can end the script.
fn script_safe(json: String) -> String {
    json.replace('<', "\\u003c")
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A GraphQL error answer.
fn gql_error(status: StatusCode, data_key: Option<&str>, message: &str) -> Response {
    let mut o = Obj::plain();
    if let Some(k) = data_key {
        o = o.raw("data", Obj::plain().raw(k, "null".into()).end());
    }
    let error = Obj::plain().val("message", message).end();
    json_response(status, o.raw("errors", array(vec![error])).end())
}

// ---------------------------------------------------------------------------------------
// Points

/// The account's points now (0 while the daily limit is set).
fn points(shared: &Shared, s: &ServerState) -> Points {
    let balance = if shared.daily_limit.load(Ordering::SeqCst) {
        0
    } else {
        s.points
    };
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Points {
        balance,
        allotment: shared.point_allotment,
        reset_us: (now_s - now_s % 86_400 + 86_400) * 1_000_000,
    }
}

/// The `viewerStateUpdated` entry with the account's points.
pub(super) fn viewer_state_entry(shared: &Shared) -> String {
    let p = points(shared, &shared.lock());
    f25::viewer_state(&p)
}

/// A whole frame of [`viewer_state_entry`] (sent when an update socket connects).
pub(super) fn viewer_state_frame(shared: &Shared) -> String {
    let seq = shared.next_seq.fetch_add(1, Ordering::SeqCst);
    f25::outer(seq, &[viewer_state_entry(shared)])
}

fn cost_of(s: &ServerState, bot: &Bot) -> u64 {
    s.bot_costs
        .get(&bot.handle.to_ascii_lowercase())
        .copied()
        .unwrap_or(bot.cost)
}

// ---------------------------------------------------------------------------------------
// Pages

pub(super) fn home(shared: &Shared, headers: &HeaderMap) -> Response {
    let links: String = BOTS
        .iter()
        .take(6)
        .map(|b| {
            format!(
                "<li><a href=\"/{}\">{}</a></li>",
                html_text(b.handle),
                html_text(b.display_name)
            )
        })
        .collect();
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Poe</title></head><body>\
         <h1>Poe double</h1><ul>{links}</ul><a href=\"/explore\">Explore bots</a></body></html>"
    );
    html(shared, headers, StatusCode::OK, page)
}

fn not_found(shared: &Shared, headers: &HeaderMap) -> Response {
    let page = hashed_classes(
        shared,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Page not found - Poe</title>\
         </head><body><div class=\"%%NotFound_container%%\"><h1>404</h1>\
         <p>Page not found: this page does not exist or was deleted.</p>\
         <a href=\"/\">Go home</a></div></body></html>",
    );
    html(shared, headers, StatusCode::NOT_FOUND, page)
}

/// A bot's page: a new chat per load.
pub(super) fn bot_page(shared: &Shared, name: &str, headers: &HeaderMap) -> Response {
    let Some(bot) = bots::find_handle(name) else {
        return not_found(shared, headers);
    };
    if bot.handle != name {
        return redirect(shared, headers, &format!("/{}", bot.handle));
    }
    if !signed_in(shared, headers) {
        return login_redirect(shared, headers, &format!("/{}", bot.handle));
    }
    chat_app(shared, headers, bot, None, &[])
}

/// An existing chat: its messages and a prompt box whose sends continue it.
pub(super) fn chat_page(shared: &Shared, code: &str, headers: &HeaderMap) -> Response {
    if !signed_in(shared, headers) {
        return login_redirect(shared, headers, &format!("/chat/{code}"));
    }
    let found = {
        let s = shared.lock();
        s.codes
            .get(code)
            .and_then(|id| s.chats.get(id))
            .filter(|c| !c.deleted)
            .map(|c| (c.number, c.bot.clone(), c.messages.clone()))
    };
    let Some((number, bot, messages)) = found else {
        return not_found(shared, headers);
    };
    let Some(bot) = bots::find_handle(&bot) else {
        return not_found(shared, headers);
    };
    chat_app(shared, headers, bot, Some((number, code)), &messages)
}

/// The chat single-page app (`page2025.html`) for `bot`, on a new update channel.
fn chat_app(
    shared: &Shared,
    headers: &HeaderMap,
    bot: &Bot,
    chat: Option<(u64, &str)>,
    messages: &[StoredMessage],
) -> Response {
    let channel = format!("poe-{BOX}-{}", shared.token(20, LOWER_ALNUM));
    let hashes = CHAT_QUERIES
        .iter()
        .chain(["sendMessageMutation", "stopMessage"].iter())
        .fold(Obj::plain(), |o, q| o.val(q, shared.token(64, HEX)))
        .end();
    let chat_json = match chat {
        Some((number, code)) => Obj::plain()
            .val("chatId", number)
            .val("chatCode", code)
            .end(),
        None => "null".into(),
    };
    let refetch = CHAT_QUERIES[(shared.seed % CHAT_QUERIES.len() as u64) as usize];
    let config = Obj::plain()
        .raw(
            "bot",
            Obj::plain()
                .val("handle", bot.handle)
                .val("displayName", bot.display_name)
                .val("nickname", bot.codename)
                .val("botId", bot.bot_id)
                .end(),
        )
        .raw("chat", chat_json)
        .raw(
            "messages",
            array(
                messages
                    .iter()
                    .map(|m| f25::message_object(m, false))
                    .collect(),
            ),
        )
        .val("textareaDelayMs", shared.textarea_delay_ms)
        .val("channel", &channel)
        .val("box", BOX)
        .val("channelHash", shared.random() % 1_000_000_000)
        .val("minSeq", shared.next_seq.load(Ordering::SeqCst))
        .val("pingMs", shared.ping_interval_ms)
        .val("refetchQuery", refetch)
        .val("formkey", shared.token(32, HEX))
        .val("sdid", shared.token(32, HEX))
        .raw("hashes", hashes)
        .end();
    let page = hashed_classes(shared, include_str!("page2025.html"))
        .replace("__TITLE__", &html_text(bot.display_name))
        .replace("__CONFIG__", &script_safe(config));
    html(shared, headers, StatusCode::OK, page)
}

pub(super) fn explore_page(shared: &Shared, headers: &HeaderMap) -> Response {
    let page = hashed_classes(shared, include_str!("explore2025.html"))
        .replace("__HASH__", &shared.token(64, HEX));
    html(shared, headers, StatusCode::OK, page)
}

pub(super) fn login_page(
    shared: &Shared,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let to = safe_redirect(query.get("redirect_url").map(String::as_str));
    let button = |method: &str, label: &str| {
        format!(
            "<button class=\"%%Button_buttonBase%% %%Button_primary%% %%SignupOrLoginWithProviderButton_button%%\" \
             type=\"submit\" name=\"provider\" value=\"{method}\">{label}</button>"
        )
    };
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Poe - Fast AI Chat</title></head>\
         <body><div class=\"%%LoggedOutSection_main%%\"><h1>Poe</h1><p>Sign in to chat with bots.</p>\
         <form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"redirect_url\" value=\"{}\">\
         {}{}{}</form></div></body></html>",
        html_text(&to),
        button("google", "Continue with Google"),
        button("apple", "Continue with Apple"),
        button("email", "Continue with email"),
    );
    html(
        shared,
        headers,
        StatusCode::OK,
        hashed_classes(shared, &page),
    )
}

/// Signs the visitor's session in: its `p-b` (or a new one) joins the signed-in set.
pub(super) fn login(
    shared: &Shared,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let value = cookie(headers, "p-b")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| new_session_value(shared));
    shared.update(|s| s.sessions.insert(value.clone()));
    let to = form_field(body, "redirect_url").or_else(|| query.get("redirect_url").cloned());
    let to = safe_redirect(to.as_deref());
    let mut response = match HeaderValue::from_str(&to) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    };
    if let Some(c) = p_b_cookie(&value) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

// ---------------------------------------------------------------------------------------
// GraphQL

pub(super) fn gql(shared: Arc<Shared>, headers: &HeaderMap, body: Value) -> Response {
    let received_at = Instant::now();
    let name = headers
        .get("poe-queryname")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| body["queryName"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let vars = &body["variables"];
    let names_chat = vars.get("chatCode").is_some() || vars.get("chatId").is_some();
    match name.as_str() {
        "sendMessageMutation" => send(shared, headers, vars, received_at),
        "stopMessage" => stop(&shared, vars, received_at),
        "ExploreBotsListPaginationQuery" => explore_query(vars),
        n if names_chat && !n.is_empty() && !n.ends_with("Mutation") => {
            chat_query(&shared, headers, vars)
        }
        other => gql_error(
            StatusCode::BAD_REQUEST,
            None,
            &format!("unknown query {other:?}"),
        ),
    }
}

/// A number given as a JSON number or a numeric string.
fn as_number(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The text between `open` and the next `close` in `s`.
fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let at = s.find(open)? + open.len();
    let len = s[at..].find(close)?;
    Some(&s[at..at + len])
}

/// `(n, status)` of a trigger that refuses the first `n` sends of the prompt.
fn refuse_first(prompt: &str) -> Option<(usize, String)> {
    if prompt.contains("[[rate-limit-once]]") {
        return Some((1, "rate_limit_exceeded".into()));
    }
    if prompt.contains("[[concurrent-once]]") {
        return Some((1, "concurrent_messages".into()));
    }
    let (n, status) = between(prompt, "[[refuse-first:", "]]")?.split_once(':')?;
    Some((n.parse().ok()?, status.to_owned()))
}

/// Why the site would not take this send now, if it would not.
fn refusal(
    shared: &Shared,
    s: &ServerState,
    prompt: &str,
    bot: Option<&Bot>,
    chat_id: Option<&str>,
    now: Instant,
) -> Option<String> {
    if let Some((_, status)) = REFUSAL_WORDS.iter().find(|(w, _)| prompt.contains(w)) {
        return Some((*status).into());
    }
    if let Some(status) = between(prompt, "[[refuse:", "]]") {
        return Some(status.into());
    }
    if let Some((n, status)) = refuse_first(prompt) {
        if s.records.iter().filter(|r| r.prompt == prompt).count() < n {
            return Some(status);
        }
    }
    if shared
        .max_prompt_chars
        .is_some_and(|max| prompt.chars().count() > max)
    {
        return Some("too_many_tokens".into());
    }
    let Some(bot) = bot else {
        return Some("no_access".into());
    };
    if points(shared, s).balance < cost_of(s, bot) {
        return Some("reached_limit".into());
    }
    let chat_busy = chat_id
        .and_then(|id| s.chats.get(id))
        .is_some_and(|c| !c.streams.is_empty());
    if chat_busy || s.in_flight() >= shared.max_in_flight {
        return Some("concurrent_messages".into());
    }
    if let Some(limit) = shared.rate_limit {
        let recent = s
            .records
            .iter()
            .filter(|r| r.taken() && now.duration_since(r.received_at) < limit.per)
            .count();
        if recent >= limit.sends {
            return Some("rate_limit_exceeded".into());
        }
    }
    None
}

/// The toast the page shows for a refusal.
fn status_message(status: &str) -> String {
    match status {
        "reached_limit" => "You've run out of points. Your points reset at midnight UTC, or subscribe for more.".into(),
        "rate_limit_exceeded" => "You're sending messages too quickly. Please wait a moment and try again.".into(),
        "concurrent_messages" => "You have too many messages in progress. Wait for a reply to finish before sending another.".into(),
        "too_many_tokens" => "Your message is too long for this bot. Please shorten it and try again.".into(),
        "no_access" => "You don't have access to this bot.".into(),
        other => format!("Your message could not be sent ({other})."),
    }
}

/// A 2025 message: ids beyond 2^32.
fn message_2025(
    shared: &Shared,
    author: &str,
    text: &str,
    state: &str,
    client_nonce: Option<String>,
    bot: Option<&'static Bot>,
) -> StoredMessage {
    let message_id = 457_234_370_000 + shared.id() * 1_000 + shared.random() % 1_000;
    StoredMessage {
        id: global_id("Message", message_id),
        message_id,
        author: author.into(),
        text: text.into(),
        state: state.into(),
        client_nonce,
        bot,
        creation_time: now_us(),
    }
}

/// A taken send, ready to stream.
struct Taken {
    record: usize,
    chat_id: String,
    human: StoredMessage,
    reply: StoredMessage,
    stop: Arc<Notify>,
    turn: Turn2025,
}

/// What the send decision came to.
enum Decision {
    Taken(Box<Taken>),
    Refused {
        status: String,
        chat: Option<String>,
    },
    NoChat,
    SignedOut,
}

/// `sendMessageMutation`: decides, records the attempt, answers; a taken send streams.
fn send(shared: Arc<Shared>, headers: &HeaderMap, vars: &Value, received_at: Instant) -> Response {
    let Some(prompt) = vars["query"].as_str().map(str::to_owned) else {
        return gql_error(
            StatusCode::BAD_REQUEST,
            None,
            "sendMessageMutation needs variables.query",
        );
    };
    let chat_number = match &vars["chatId"] {
        Value::Null => None,
        v => match as_number(v) {
            Some(n) => Some(n),
            None => {
                return gql_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    "variables.chatId must be null or a chat id",
                )
            }
        },
    };
    let bot_name = vars["bot"].as_str().unwrap_or_default().to_owned();
    let channel = headers
        .get("poe-tchannel")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| vars["channel"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let signed = signed_in(&shared, headers);
    let mut record = ChatRecord {
        chat_id: String::new(),
        bot: bot_name.clone(),
        prompt: prompt.clone(),
        received_at,
        frame_times: Vec::new(),
        stopped_at: None,
        final_state: None,
        status: String::new(),
        chat_code: String::new(),
        turn: 1,
        client_nonce: vars["clientNonce"].as_str().map(str::to_owned),
        message_id: None,
        cost: 0,
    };
    let decision = shared.update(|s| {
        let refuse = |s: &mut ServerState, mut record: ChatRecord, status: &str| {
            record.status = status.into();
            s.records.push(record);
        };
        if !signed {
            refuse(s, record, "not_logged_in");
            return Decision::SignedOut;
        }
        let existing = match chat_number {
            Some(n) => {
                let id = n.to_string();
                record.chat_id = id.clone();
                match s.chats.get(&id) {
                    Some(c) if !c.deleted => {
                        record.chat_code = c.code.clone();
                        record.turn = c.humans + 1;
                        Some((id, c.number, c.code.clone(), c.bot.clone()))
                    }
                    _ => {
                        refuse(s, record, "chat_not_found");
                        return Decision::NoChat;
                    }
                }
            }
            None => None,
        };
        let bot = match &existing {
            Some((_, _, _, handle)) => bots::find_handle(handle),
            None => bots::find(&bot_name),
        };
        if let Some(b) = bot {
            record.bot = b.handle.into();
        }
        let chat_json = |n: u64, code: &str| bot.map(|b| f25::chat_object(n, code, b, None));
        let chat_id = existing.as_ref().map(|(id, ..)| id.as_str());
        if let Some(status) = refusal(&shared, s, &prompt, bot, chat_id, received_at) {
            let chat = existing
                .as_ref()
                .and_then(|(_, n, code, _)| chat_json(*n, code));
            refuse(s, record, &status);
            return Decision::Refused { status, chat };
        }
        let Some(bot) = bot else {
            // refusal() refuses an unknown bot.
            refuse(s, record, "no_access");
            return Decision::NoChat;
        };
        let (chat_id, number, code) = match existing {
            Some((id, n, code, _)) => (id, n, code),
            None => {
                let number = 1_163_000_000 + shared.id() * 7;
                let code = shared.token(19, LOWER_ALNUM);
                let id = number.to_string();
                s.codes.insert(code.clone(), id.clone());
                s.chats.insert(
                    id.clone(),
                    super::Chat {
                        number,
                        code: code.clone(),
                        bot: bot.handle.into(),
                        ..super::Chat::default()
                    },
                );
                (id, number, code)
            }
        };
        let index = s.records.len();
        let human = message_2025(
            &shared,
            "human",
            &prompt,
            "complete",
            record.client_nonce.clone(),
            None,
        );
        let reply = message_2025(&shared, bot.codename, "", "incomplete", None, Some(bot));
        let stop = Arc::new(Notify::new());
        let cost = cost_of(s, bot);
        let Some(chat) = s.chats.get_mut(&chat_id) else {
            return Decision::NoChat;
        };
        chat.humans += 1;
        chat.messages.push(human.clone());
        chat.streams.push((index, stop.clone()));
        let turn = chat.humans;
        record.chat_id = chat_id.clone();
        record.chat_code = code.clone();
        record.turn = turn;
        record.status = "success".into();
        record.message_id = Some(reply.message_id);
        s.records.push(record);
        Decision::Taken(Box::new(Taken {
            record: index,
            chat_id,
            human,
            reply,
            stop,
            turn: Turn2025 {
                bot,
                chat_number: number,
                chat_code: code,
                turn,
                cost,
                job_id: 88_000_000 + shared.id(),
            },
        }))
    });
    match decision {
        Decision::SignedOut => gql_error(
            StatusCode::OK,
            Some("messageEdgeCreate"),
            "You are not signed in. Sign in to send messages.",
        ),
        Decision::NoChat => gql_error(
            StatusCode::OK,
            Some("messageEdgeCreate"),
            "This chat does not exist or was deleted.",
        ),
        Decision::Refused { status, chat } => {
            let edge = Obj::new()
                .raw("message", "null".into())
                .raw("chat", chat.unwrap_or_else(|| "null".into()))
                .val("statusMessage", status_message(&status))
                .val("status", &status)
                .val("__typename", "MessageEdgeCreateMutationPayload")
                .end();
            json_response(StatusCode::OK, send_envelope(edge))
        }
        Decision::Taken(taken) => {
            let Taken {
                record,
                chat_id,
                human,
                reply,
                stop,
                turn,
            } = *taken;
            let message = Obj::new()
                .val("cursor", human.message_id.to_string())
                .raw("node", f25::message_object(&human, false))
                .val("__typename", "MessageEdge")
                .end();
            let edge = Obj::new()
                .raw(
                    "chat",
                    f25::chat_object(turn.chat_number, &turn.chat_code, turn.bot, None),
                )
                .raw("message", message)
                .raw("bot", f25::bot_object(turn.bot))
                .raw("statusMessage", "null".into())
                .val("status", "success")
                .val("__typename", "MessageEdgeCreateMutationPayload")
                .end();
            let body = send_envelope(edge);
            stream::start_2025(shared, record, chat_id, channel, human, reply, stop, turn);
            json_response(StatusCode::OK, body)
        }
    }
}

fn send_envelope(edge: String) -> String {
    Obj::plain()
        .raw("data", Obj::plain().raw("messageEdgeCreate", edge).end())
        .raw("extensions", Obj::plain().val("is_final", true).end())
        .end()
}

fn stop(shared: &Shared, vars: &Value, received_at: Instant) -> Response {
    let Some(n) = as_number(&vars["chatId"]) else {
        return gql_error(StatusCode::BAD_REQUEST, None, "stopMessage needs chatId");
    };
    shared.stop_chat(&n.to_string(), received_at);
    let payload = Obj::new()
        .val("success", true)
        .val("__typename", "StopMessagePayload")
        .end();
    json_response(
        StatusCode::OK,
        Obj::plain()
            .raw("data", Obj::plain().raw("stopMessage", payload).end())
            .end(),
    )
}

/// A chat with its messages, nested deep (the page's refetch after lost updates).
fn chat_query(shared: &Shared, headers: &HeaderMap, vars: &Value) -> Response {
    let null_chat = || {
        json_response(
            StatusCode::OK,
            Obj::plain()
                .raw("data", Obj::plain().raw("chatOfCode", "null".into()).end())
                .end(),
        )
    };
    if !signed_in(shared, headers) {
        return null_chat();
    }
    let found = {
        let s = shared.lock();
        let id = match vars["chatCode"].as_str() {
            Some(code) => s.codes.get(code).cloned(),
            None => as_number(&vars["chatId"]).map(|n| n.to_string()),
        };
        id.and_then(|id| s.chats.get(&id))
            .filter(|c| !c.deleted && c.number > 0)
            .map(|c| (c.number, c.code.clone(), c.bot.clone(), c.messages.clone()))
    };
    let Some((number, code, bot, messages)) = found else {
        return null_chat();
    };
    let Some(bot) = bots::find_handle(&bot) else {
        return null_chat();
    };
    let edges: Vec<String> = messages
        .iter()
        .map(|m| {
            Obj::new()
                .raw("node", f25::message_object(m, false))
                .val("cursor", m.message_id.to_string())
                .end()
        })
        .collect();
    let first = messages.first().map(|m| m.message_id.to_string());
    let connection = Obj::new()
        .raw(
            "pageInfo",
            Obj::new()
                .val("hasPreviousPage", false)
                .val("startCursor", first)
                .end(),
        )
        .raw("edges", array(edges))
        .end();
    let chat = Obj::new()
        .val("__typename", "Chat")
        .val("id", global_id("Chat", number))
        .val("chatId", number)
        .val("chatCode", &code)
        .raw("defaultBotObject", f25::bot_object(bot))
        .raw("messagesConnection", connection)
        .end();
    json_response(
        StatusCode::OK,
        Obj::plain()
            .raw("data", Obj::plain().raw("chatOfCode", chat).end())
            .raw("extensions", Obj::plain().val("is_final", true).end())
            .end(),
    )
}

/// A page of the bot list: `count` bots after `cursor`.
fn explore_query(vars: &Value) -> Response {
    let count = vars["count"].as_u64().unwrap_or(10).clamp(1, 50) as usize;
    let start = as_number(&vars["cursor"]).unwrap_or(0) as usize;
    let start = start.min(BOTS.len());
    let end = (start + count).min(BOTS.len());
    let edges: Vec<String> = BOTS[start..end]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let creator = if b.official {
                "null".into()
            } else {
                Obj::new()
                    .val("handle", format!("creator-of-{}", b.codename))
                    .val("fullName", "A Poe user")
                    .end()
            };
            let node = Obj::new()
                .val("botId", b.bot_id)
                .val("displayName", b.display_name)
                .val(
                    "description",
                    format!("{} on the Poe double.", b.display_name),
                )
                .raw("creator", creator)
                .val("nickname", b.codename)
                .val("handle", b.handle)
                .val("isOfficialBot", b.official)
                .end();
            Obj::new()
                .val("cursor", (start + i + 1).to_string())
                .raw("node", node)
                .end()
        })
        .collect();
    let page_info = Obj::new()
        .val("endCursor", end.to_string())
        .val("hasNextPage", end < BOTS.len())
        .end();
    let connection = Obj::new()
        .raw("edges", array(edges))
        .raw("pageInfo", page_info)
        .end();
    json_response(
        StatusCode::OK,
        Obj::plain()
            .raw(
                "data",
                Obj::plain().raw("exploreBotsConnection", connection).end(),
            )
            .end(),
    )
}
