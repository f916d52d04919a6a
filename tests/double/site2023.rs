//! The 2023 site ([`super::Mode::Y2023`]): any handle is a bot page (`page.html`, a new chat
//! per load) whose prompt box sits in a `footer`; a non-empty `p-b` cookie signs in by its
//! mere presence; `/login` sets `p-b` and `p-lat`; sends always succeed and stream on the
//! channel the page names; the page refetches through `GET /api/chat/{chatId}`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State as AxumState};
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{bad_request, cookie, html_text, script_json, stream, ChatRecord, Shared};

const LOGGED_OUT: &str = r#"<div class="LoggedOutBotInfoPage_container__Ab3x1"><p>Talk to bot</p><p>Sign in to chat with this bot.</p><a href="/login"><button class="LoggedOutBotInfoPage_appButton__UO6NU">Sign in</button></a></div>"#;

/// A bot's chat page; every load is a new chat.
pub(super) fn bot_page(shared: &Shared, bot: &str, headers: &HeaderMap) -> Response {
    let chat_id = format!("chat-{}", shared.id());
    let has_session = cookie(headers, "p-b").is_some_and(|v| !v.is_empty());
    let logged_in = shared.logged_in.load(Ordering::SeqCst) || has_session;
    let config = json!({
        "chatId": chat_id, "bot": bot, "loggedIn": logged_in,
        "dailyLimit": shared.daily_limit.load(Ordering::SeqCst),
        "textareaDelayMs": shared.textarea_delay_ms,
        "socketDelayMs": shared.socket_delay_ms,
    });
    let page = include_str!("page.html")
        .replace("__BOT_TITLE__", &html_text(bot))
        .replace("__LOGGED_OUT__", if logged_in { "" } else { LOGGED_OUT })
        .replace("__BOT_CHECK__", super::bot_check_js())
        .replace("__FOCUS_CONTROL__", super::focus_control_js())
        .replace("__CONFIG__", &script_json(&config));
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

pub(super) async fn home() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Poe double</title></head><body>",
        "<h1>Poe double</h1><ul><li><a href=\"/GPT-3.5-Turbo\">GPT-3.5-Turbo</a></li>",
        "<li><a href=\"/GPT-4\">GPT-4</a></li></ul></body></html>"
    ))
}

pub(super) async fn login_page() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in - Poe</title></head><body>",
        "<h1>Sign in to the Poe double</h1>",
        "<form method=\"post\" action=\"/login\">",
        "<button class=\"LoginButton\" type=\"submit\">Sign in</button></form>",
        "<script>fetch('/__double/user-clicks').then(r => { if (r.status === 200) ",
        "document.querySelector('form button').click(); });</script>",
        "</body></html>"
    ))
}

pub(super) async fn login() -> Response {
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

pub(super) fn gql(shared: Arc<Shared>, body: Value) -> Response {
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
                    status: "success".into(),
                    chat_code: String::new(),
                    turn: 1,
                    client_nonce: None,
                    message_id: None,
                    cost: 0,
                });
                s.records.len() - 1
            });
            stream::start_2023(shared, record, chat_id.clone(), channel);
            Json(json!({"data": {"messageEdgeCreate": {"status": "success",
                "chat": {"chatId": chat_id}}}}))
            .into_response()
        }
        Some("stopMessage") => {
            let Some(chat_id) = var("chatId") else {
                return bad_request("stopMessage needs chatId".into());
            };
            shared.stop_chat(&chat_id, received_at);
            Json(json!({"data": {"stopMessage": {"success": true}}})).into_response()
        }
        other => bad_request(format!("unknown queryName {other:?}")),
    }
}

/// The page's refetch after lost updates: the chat's messages as the server has them.
pub(super) async fn chat_state(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(chat_id): Path<String>,
) -> Json<Value> {
    let messages = shared
        .lock()
        .chats
        .get(&chat_id)
        .map(|c| c.messages.clone())
        .unwrap_or_default();
    Json(json!({"chatId": chat_id, "messages": messages}))
}
