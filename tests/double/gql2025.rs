//! The 2025 GraphQL endpoint (`POST /api/gql_POST`), dispatched on the `poe-queryname`
//! header (else the body's `queryName`): `sendMessageMutation` decides whether the site takes
//! the send (trigger words, points, replies in flight, the send rate, the prompt's length, the
//! bot), records the attempt and answers `messageEdgeCreate` with its status (only a taken
//! send streams); `stopMessage`; `ExploreBotsListPaginationQuery`; and any other query naming
//! a chat (`chatCode` / `chatId`) answers the chat's messages nested as
//! `data.chatOfCode.messagesConnection.edges[].node`, which the page's recovery after lost
//! updates uses.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::Notify;

use super::bots::{self, Bot, BOTS};
use super::frames2025::{self as f25, array, global_id, Obj};
use super::site2025::{cost_of, points, signed_in, LOWER_ALNUM};
use super::stream::{self, Turn2025};
use super::{now_us, ChatRecord, ServerState, Shared, StoredMessage};

/// Refusals that a trigger word asks for.
const REFUSAL_WORDS: &[(&str, &str)] = &[
    ("[[reached-limit]]", "reached_limit"),
    ("[[rate-limit-exceeded]]", "rate_limit_exceeded"),
    ("[[concurrent]]", "concurrent_messages"),
    ("[[too-many-tokens]]", "too_many_tokens"),
    ("[[no-access]]", "no_access"),
];

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
    let message_id = shared.message_number();
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
            record.client_nonce.clone().filter(|_| shared.echo_nonce),
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
