//! The 2025 site ([`super::Mode::Y2025`]), pages and sessions, as the 2025 evidence of
//! `shared/poe-web.md` shows them (the GraphQL endpoint is `gql2025.rs`):
//!
//! - `/{Handle}` of a known bot (`page2025.html`, a new chat per load; other spellings
//!   redirect to the canonical handle, unknown ones get a 404 page), `/chat/{chatCode}` (the
//!   chat so far, and sends continue it), `/explore` (`explore2025.html`), `/login`, `/`.
//! - Every page gives a visitor without one an anonymous HttpOnly `p-b`; only `p-b` values in
//!   the server's set of sessions (added by `POST /login`) are signed in. Signed out, chat
//!   pages redirect to `/login?redirect_url=...`.
//! - Class names get this double's own hash suffixes, and the account's points.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::bots::{self, Bot, BOTS};
use super::frames2025::{self as f25, array, Obj, Points};
use super::{cookie, html_text, splitmix, ServerState, Shared, StoredMessage};

/// The update socket's box in URLs (`/up/{box}/updates`).
const BOX: &str = "chan51-8888";
pub(super) const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
/// Names the page's chat query may have: each double picks one (nothing may rely on it).
const CHAT_QUERIES: &[&str] = &[
    "ChatPageQuery",
    "ChatLastMessageAreaQuery",
    "chatHelpers_chatOfCode_Query",
];
// ---------------------------------------------------------------------------------------
// Sessions, cookies, markup helpers

/// The visitor counts as signed in: the whole double is, or its `p-b` is a signed-in one.
pub(super) fn signed_in(shared: &Shared, headers: &HeaderMap) -> bool {
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

// ---------------------------------------------------------------------------------------
// Points

/// The account's points now (0 while the daily limit is set).
pub(super) fn points(shared: &Shared, s: &ServerState) -> Points {
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

pub(super) fn cost_of(s: &ServerState, bot: &Bot) -> u64 {
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
        .val("socketDelayMs", shared.socket_delay_ms)
        .val("richInput", shared.rich_input)
        .val("unorderedIds", shared.unordered_message_ids)
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
        .replace("__BOT_CHECK__", super::bot_check_js())
        .replace("__FOCUS_CONTROL__", super::focus_control_js())
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
         {}{}{}</form></div><script>fetch('/__double/user-clicks').then(r => {{ if (r.status === 200) \
         document.querySelector('form button').click(); }});</script></body></html>",
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
