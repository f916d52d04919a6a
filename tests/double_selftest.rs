//! Self-test of the local Poe double, in both modes: raw HTTP for the pages and the GraphQL
//! endpoint and a plain WebSocket client for the update socket check the contract of
//! `shared/poe-web.md` (2023 markup and frames; 2025 markup, send responses and refusals,
//! frame order and shapes, points, sessions, chats, lost updates, the bot list), and one test
//! drives the 2025 page's script in real Chromium. An end-to-end failure can then be pinned on
//! poed rather than on its stand-in for poe.com.

mod common;
mod double;

use std::time::Duration;

use double::{
    expected_reply, expected_reply_at, ChatRecord, Double, DoubleOptions, Mode, RateLimit, BOTS,
};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for every test.
const LIMIT: Duration = Duration::from_secs(30);
/// How long "no more frames" is watched for.
const QUIET: Duration = Duration::from_millis(300);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("test timed out")
}

fn fast() -> DoubleOptions {
    DoubleOptions {
        mode: Mode::Y2023,
        chunk_delay_ms: 5,
        textarea_delay_ms: 0,
        ..DoubleOptions::default()
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("json body")
    }
}

async fn http(d: &Double, method: &str, path: &str, extra: &[(&str, &str)], body: &str) -> Resp {
    let host = d.base_url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&host).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .expect("status line")
        .split(' ')
        .nth(1)
        .expect("code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Resp {
        status: status.parse().expect("status"),
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

async fn gql(d: &Double, body: Value) -> Resp {
    let headers = [("Content-Type", "application/json")];
    http(d, "POST", "/api/gql_POST", &headers, &body.to_string()).await
}

/// Loads a bot page; returns the new chat's id and the HTML.
async fn open_page(d: &Double, bot: &str, extra: &[(&str, &str)]) -> (String, String) {
    let r = http(d, "GET", &format!("/{bot}"), extra, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let at = r.body.find("\"chatId\":\"").expect("chat id in page") + 10;
    let id = r.body[at..].split('"').next().expect("chat id").to_owned();
    (id, r.body)
}

async fn send(d: &Double, bot: &str, chat_id: &str, prompt: &str) {
    let r = gql(
        d,
        json!({"queryName": "sendMessageMutation", "variables": {"bot": bot, "query": prompt,
            "chatId": chat_id, "channel": format!("poe-chan5-{chat_id}")}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn stop(d: &Double, chat_id: &str) {
    let body = json!({"queryName": "stopMessage", "variables": {"chatId": chat_id}});
    assert_eq!(gql(d, body).await.status, 200);
}

// ---------------------------------------------------------------------------------------
// The update socket

async fn connect(d: &Double, chat_id: &str) -> Ws {
    let url = format!(
        "{}/up/chan5-1/updates?min_seq=0&channel=poe-chan5-{chat_id}&hash=17",
        d.base_url().replace("http://", "ws://")
    );
    tokio_tungstenite::connect_async(url).await.expect("ws").0
}

/// The next text frame as JSON, or None if nothing comes within `wait`.
async fn next_frame(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(t.as_str()).expect("frame is JSON"))
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => return None,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("socket error: {e}"),
        }
    }
}

/// The inner objects of an outer frame (each entry of `messages` is itself a JSON string).
fn inner(frame: &Value) -> Vec<Value> {
    frame["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    serde_json::from_str(s.as_str().expect("entry is a string")).expect("entry")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `messageAdded` payloads of a frame.
fn added(frame: &Value) -> Vec<Value> {
    inner(frame)
        .into_iter()
        .filter(|m| m["payload"]["subscription_name"] == "messageAdded")
        .map(|m| m["payload"]["data"]["messageAdded"].clone())
        .collect()
}

fn bot_updates(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .flat_map(added)
        .filter(|m| m["author"] != "human")
        .collect()
}

/// Reads frames until the bot message reaches a final state.
async fn until_final(ws: &mut Ws) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = next_frame(ws, Duration::from_secs(10))
            .await
            .expect("a frame before the final state");
        let done = added(&frame)
            .iter()
            .any(|m| m["author"] != "human" && m["state"] != "incomplete");
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// Frames until `QUIET` passes without one.
async fn until_quiet(ws: &mut Ws) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(f) = next_frame(ws, QUIET).await {
        frames.push(f);
    }
    frames
}

fn texts(updates: &[Value]) -> Vec<String> {
    updates
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn page_follows_the_markup_contract() {
    within(async {
        let d = Double::start(DoubleOptions {
            mode: Mode::Y2023,
            ..DoubleOptions::default()
        })
        .await
        .unwrap();
        let (a, page) = open_page(&d, "GPT-4", &[]).await;
        for needle in [
            "GrowingTextArea_textArea__ZWQbP",
            "createElement(\"footer\")",
            "ChatMessageSendButton_sendButton__4ZyI4",
            "\"Send message\"",
            "\"Stop message\"",
            "ChatStopMessageButton_stopButton__QOW41",
            "ChatMessagesView_infiniteScroll__K_Tup",
            "ChatMessage_messageRow__DHlnq",
            "Markdown_markdownContainer__Tz3HQ",
            "e.isTrusted",
            "/up/chan5-1/updates?min_seq=0&channel=",
            "/noise/socket",
            "\"textareaDelayMs\":300",
            "<title>GPT-4 - Poe</title>",
        ] {
            assert!(page.contains(needle), "page lacks {needle}");
        }
        assert!(!page.contains("LoggedOutBotInfoPage_appButton"));
        let (b, _) = open_page(&d, "Llama-2-7b", &[]).await;
        assert_ne!(a, b, "every page load is a new chat");

        d.set_logged_in(false);
        let (_, out) = open_page(&d, "GPT-4", &[]).await;
        assert!(out.contains("LoggedOutBotInfoPage_appButton__UO6NU"));
        assert!(out.contains("Talk to bot") && out.contains("href=\"/login\""));
        assert!(out.contains("\"loggedIn\":false"));
        let (_, cookie) = open_page(&d, "GPT-4", &[("Cookie", "x=1; p-b=abc")]).await;
        assert!(
            !cookie.contains("LoggedOutBotInfoPage_appButton"),
            "p-b cookie signs in"
        );
        let (_, empty) = open_page(&d, "GPT-4", &[("Cookie", "p-b=")]).await;
        assert!(
            empty.contains("LoggedOutBotInfoPage_appButton"),
            "an empty p-b is no session"
        );

        d.set_logged_in(true);
        d.set_daily_limit(true);
        let (_, limited) = open_page(&d, "GPT-4", &[]).await;
        assert!(limited.contains("\"dailyLimit\":true"));
        assert!(limited.contains("ChatMessageSendButton_noFreeMessageTooltip__x1Yq2"));
        assert_eq!(http(&d, "GET", "/favicon.ico", &[], "").await.status, 404);
    })
    .await;
}

#[tokio::test]
async fn send_streams_echo_then_cumulative_reply() {
    within(async {
        let d = Double::start(fast()).await.unwrap();
        let (chat, _) = open_page(&d, "GPT-3.5-Turbo", &[]).await;
        let mut ws = connect(&d, &chat).await;
        let prompt = "Hello, \"double\" ✓\nsecond line";
        send(&d, "GPT-3.5-Turbo", &chat, prompt).await;
        let frames = until_final(&mut ws).await;

        let first = added(&frames[0]);
        assert_eq!(first[0]["author"], "human", "the echo comes first");
        assert_eq!(first[0]["text"], prompt);
        assert_eq!(first[0]["state"], "complete");
        assert!(
            frames.iter().any(|f| inner(f).len() >= 2),
            "a frame batches entries"
        );
        let names: Vec<Value> = frames
            .iter()
            .flat_map(inner)
            .map(|m| m["payload"]["subscription_name"].clone())
            .collect();
        assert!(
            names.iter().any(|n| n != "messageAdded"),
            "noise subscriptions"
        );
        assert!(
            frames
                .iter()
                .any(|f| !inner(f).is_empty() && added(f).is_empty()),
            "a frame with nothing but noise"
        );
        let seqs: Vec<u64> = frames
            .iter()
            .map(|f| f["min_seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "min_seq increases: {seqs:?}"
        );
        for m in frames.iter().flat_map(added) {
            for field in ["id", "messageId", "author", "text", "state", "contentType"] {
                assert!(!m[field].is_null(), "{field} missing in {m}");
            }
            assert!(m["suggestedReplies"].is_array());
            assert!(m["id"].as_str().unwrap().starts_with("TWVzc2FnZTo"));
        }
        assert!(frames
            .iter()
            .flat_map(inner)
            .all(|m| m["message_type"] == "subscriptionUpdate"
                && m["payload"]["unique_id"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!(":{chat}"))));

        let bot = bot_updates(&frames);
        assert!(bot.len() >= 4, "streamed in steps: {bot:?}");
        assert!(bot.iter().all(|m| m["author"] == "chinchilla"));
        assert!(bot.iter().all(|m| m["messageId"] == bot[0]["messageId"]));
        assert_ne!(bot[0]["messageId"], first[0]["messageId"]);
        let t = texts(&bot);
        assert!(t
            .windows(2)
            .all(|w| w[1].starts_with(&w[0]) && w[1].len() > w[0].len()));
        let expected = expected_reply("GPT-3.5-Turbo", prompt);
        assert_eq!(expected, format!("Echo from GPT-3.5-Turbo: {prompt}"));
        assert_eq!(t.last().unwrap(), &expected);
        assert!(bot[..bot.len() - 1]
            .iter()
            .all(|m| m["state"] == "incomplete"));
        assert_eq!(bot.last().unwrap()["state"], "complete");

        let chats = d.chats();
        assert_eq!(chats.len(), 1);
        let r = &chats[0];
        assert_eq!(
            (r.chat_id.as_str(), r.bot.as_str()),
            (chat.as_str(), "GPT-3.5-Turbo")
        );
        assert_eq!(r.prompt, prompt);
        assert_eq!(r.final_state.as_deref(), Some("complete"));
        assert_eq!(r.stopped_at, None);
        let carrying = frames
            .iter()
            .filter(|f| !bot_updates(&[(*f).clone()]).is_empty());
        assert_eq!(r.frame_times.len(), carrying.count());
        assert!(r.frame_times.iter().all(|t| *t >= r.received_at));

        let state = http(&d, "GET", &format!("/api/chat/{chat}"), &[], "")
            .await
            .json();
        let msgs = state["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1]["text"], expected.as_str());
        assert_eq!(msgs[1]["state"], "complete");
        assert!(
            until_quiet(&mut ws).await.is_empty(),
            "nothing after the final frame"
        );
    })
    .await;
}

#[tokio::test]
async fn trigger_replies_are_what_expected_reply_says() {
    within(async {
        let long = expected_reply("GPT-4", "[[long]]");
        assert!(long.len() >= 100 * 1024);
        assert_eq!(
            long,
            expected_reply("GPT-4", "again [[long]]"),
            "deterministic"
        );
        let uni = expected_reply("X", "[[unicode]]");
        for piece in [
            "👩‍👩‍👧‍👦",
            "漢字",
            "العربية",
            "עברית",
            "\n",
            "\t",
            "\"double\"",
            "'single'",
            "\\ \\\\ \\n",
            "</div><script>",
        ] {
            assert!(uni.contains(piece), "unicode text lacks {piece:?}");
        }
        let d = Double::start(fast()).await.unwrap();
        for (bot, prompt, author, min_steps) in [
            ("GPT-4", "[[long]] please", "beaver", 20),
            ("Claude-3.5-Sonnet", "[[unicode]]", "acouchy", 4),
        ] {
            let (chat, _) = open_page(&d, bot, &[]).await;
            let mut ws = connect(&d, &chat).await;
            send(&d, bot, &chat, prompt).await;
            let bot_msgs = bot_updates(&until_final(&mut ws).await);
            assert!(
                bot_msgs.len() >= min_steps,
                "{prompt}: {} steps",
                bot_msgs.len()
            );
            assert!(bot_msgs.iter().all(|m| m["author"] == author));
            let t = texts(&bot_msgs);
            assert!(t.windows(2).all(|w| w[1].starts_with(&w[0])));
            assert_eq!(t.last().unwrap(), &expected_reply(bot, prompt));
        }
    })
    .await;
}

#[tokio::test]
async fn rewrite_changes_earlier_text() {
    within(async {
        let d = Double::start(fast()).await.unwrap();
        let (chat, _) = open_page(&d, "GPT-4", &[]).await;
        let mut ws = connect(&d, &chat).await;
        send(&d, "GPT-4", &chat, "[[rewrite]] please").await;
        let t = texts(&bot_updates(&until_final(&mut ws).await));
        let last = t.last().unwrap();
        assert_eq!(last, &expected_reply("GPT-4", "[[rewrite]] please"));
        assert_eq!(last, "Here is bold text, rewritten.");
        assert!(t.iter().any(|x| !last.starts_with(x.as_str())), "{t:?}");
    })
    .await;
}

#[tokio::test]
async fn stop_cancels_a_slow_reply() {
    within(async {
        let d = Double::start(fast()).await.unwrap();
        let (chat, _) = open_page(&d, "GPT-3.5-Turbo", &[]).await;
        let mut ws = connect(&d, &chat).await;
        let prompt = "[[slow]] story";
        send(&d, "GPT-3.5-Turbo", &chat, prompt).await;
        let mut frames = Vec::new();
        while bot_updates(&frames).len() < 3 {
            frames.push(
                next_frame(&mut ws, Duration::from_secs(5))
                    .await
                    .expect("frame"),
            );
        }
        stop(&d, &chat).await;
        assert!(d.wait_for_stop(&chat, Duration::from_secs(5)).await);
        let rest = until_final(&mut ws).await;
        let bot = bot_updates(&rest);
        let last = bot.last().unwrap();
        assert_eq!(last["state"], "cancelled");
        let text = last["text"].as_str().unwrap();
        assert!(expected_reply("GPT-3.5-Turbo", prompt).starts_with(text));
        assert!(
            bot.len() <= 3,
            "the stop took effect at once: {} more",
            bot.len()
        );
        assert!(until_quiet(&mut ws).await.is_empty());
        let r = &d.chats()[0];
        assert_eq!(r.final_state.as_deref(), Some("cancelled"));
        assert!(r.stopped_at.is_some_and(|t| t >= r.received_at));
        assert!(
            !d.wait_for_stop("chat-none", Duration::from_millis(50))
                .await
        );
    })
    .await;
}

#[tokio::test]
async fn endings_of_error_cancelled_and_stall() {
    within(async {
        let d = Double::start(fast()).await.unwrap();
        for (prompt, state) in [
            ("[[error]]", "error_user_message_too_long"),
            ("[[cancelled]]", "cancelled"),
        ] {
            let (chat, _) = open_page(&d, "GPT-4", &[]).await;
            let mut ws = connect(&d, &chat).await;
            send(&d, "GPT-4", &chat, prompt).await;
            let bot = bot_updates(&until_final(&mut ws).await);
            assert_eq!(bot.len(), 3, "{prompt}: two steps then the end");
            assert_eq!(bot[2]["state"], state);
            assert_eq!(bot[2]["text"], expected_reply("GPT-4", prompt).as_str());
            let r = d.chats().into_iter().find(|c| c.chat_id == chat).unwrap();
            assert_eq!(r.final_state.as_deref(), Some(state));
        }
        let (chat, _) = open_page(&d, "GPT-4", &[]).await;
        let mut ws = connect(&d, &chat).await;
        send(&d, "GPT-4", &chat, "[[stall]]").await;
        let bot = bot_updates(&until_quiet(&mut ws).await);
        assert_eq!(bot.len(), 2);
        assert!(bot.iter().all(|m| m["state"] == "incomplete"));
        assert_eq!(
            bot[1]["text"],
            expected_reply("GPT-4", "[[stall]]").as_str()
        );
        let r = d.chats().into_iter().find(|c| c.chat_id == chat).unwrap();
        assert_eq!(r.final_state, None);
        stop(&d, &chat).await;
        let end = bot_updates(&until_final(&mut ws).await);
        assert_eq!(end.last().unwrap()["state"], "cancelled");
    })
    .await;
}

#[tokio::test]
async fn lost_updates_are_signalled_and_recoverable() {
    within(async {
        let d = Double::start(fast()).await.unwrap();
        // [[missed]]: the signal, then the rest streams on.
        let (chat, _) = open_page(&d, "GPT-4", &[]).await;
        let mut ws = connect(&d, &chat).await;
        send(&d, "GPT-4", &chat, "[[missed]] go").await;
        let frames = until_final(&mut ws).await;
        let at = frames
            .iter()
            .position(|f| f["error"] == "missed_messages")
            .expect("missed_messages frame");
        assert_eq!(bot_updates(&frames[..at]).len(), 2);
        assert!(!bot_updates(&frames[at..]).is_empty());
        let t = texts(&bot_updates(&frames));
        assert_eq!(t.last().unwrap(), &expected_reply("GPT-4", "[[missed]] go"));

        // [[missed-stop]] and [[refetch]]: the signal, then silence; the chat completes anyway.
        for prompt in ["[[missed-stop]] go", "[[refetch]] go"] {
            let (chat, _) = open_page(&d, "GPT-4", &[]).await;
            let mut ws = connect(&d, &chat).await;
            send(&d, "GPT-4", &chat, prompt).await;
            let frames = until_quiet(&mut ws).await;
            let last = frames.last().expect("frames");
            if prompt.starts_with("[[refetch]]") {
                assert_eq!(inner(last)[0]["message_type"], "refetchChannel");
            } else {
                assert_eq!(last, &json!({"error": "missed_messages"}));
            }
            let bot = bot_updates(&frames);
            assert_eq!(bot.len(), 2);
            assert!(bot.iter().all(|m| m["state"] == "incomplete"));
            let state = http(&d, "GET", &format!("/api/chat/{chat}"), &[], "")
                .await
                .json();
            let reply = &state["messages"][1];
            assert_eq!(reply["text"], expected_reply("GPT-4", prompt).as_str());
            assert_eq!(reply["state"], "complete");
            assert_eq!(reply["messageId"], bot[0]["messageId"]);
            let r = d.chats().into_iter().find(|c| c.chat_id == chat).unwrap();
            assert_eq!(r.final_state.as_deref(), Some("complete"));
        }
    })
    .await;
}

#[tokio::test]
async fn concurrent_chats_stay_apart() {
    within(async {
        // Each page gets only its own chat's frames here: each socket must carry its own.
        let d = Double::start(DoubleOptions {
            updates_to_all_pages: false,
            ..fast()
        })
        .await
        .unwrap();
        let mut chats = Vec::new();
        for i in 0..3 {
            let (chat, _) = open_page(&d, "GPT-4", &[]).await;
            let ws = connect(&d, &chat).await;
            chats.push((chat, ws, format!("prompt {i}")));
        }
        for (chat, _, prompt) in &chats {
            send(&d, "GPT-4", chat, prompt).await;
        }
        assert_eq!(d.wait_for_chats(3, Duration::from_secs(5)).await.len(), 3);
        for (chat, ws, prompt) in &mut chats {
            let frames = until_final(ws).await;
            let msgs: Vec<Value> = frames.iter().flat_map(added).collect();
            assert_eq!(msgs[0]["text"], prompt.as_str());
            let t = texts(&bot_updates(&frames));
            assert_eq!(t.last().unwrap(), &expected_reply("GPT-4", prompt));
            assert!(frames
                .iter()
                .flat_map(inner)
                .all(|m| m["payload"]["unique_id"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!(":{chat}"))));
        }
    })
    .await;
}

#[tokio::test]
async fn login_modes_and_control_endpoints() {
    within(async {
        let d = Double::start(DoubleOptions {
            logged_in: false,
            ..fast()
        })
        .await
        .unwrap();
        let page = http(&d, "GET", "/login", &[], "").await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("<button") && page.body.contains("action=\"/login\""));
        let r = http(&d, "POST", "/login", &[], "").await;
        assert_eq!(r.status, 303);
        assert_eq!(r.header("location"), ["/GPT-3.5-Turbo"]);
        let cookies = r.header("set-cookie");
        assert!(cookies
            .iter()
            .any(|c| c.starts_with("p-b=") && c.contains("Path=/")));
        assert!(cookies
            .iter()
            .any(|c| c.starts_with("p-lat=") && c.contains("Path=/")));

        let mode = |body: Value| {
            let d = &d;
            async move {
                let headers = [("Content-Type", "application/json")];
                http(d, "POST", "/__double/mode", &headers, &body.to_string()).await
            }
        };
        let r = mode(json!({"logged_in": true})).await;
        assert_eq!(
            r.json(),
            json!({"logged_in": true, "daily_limit": false, "mode": "2023", "points": 3000})
        );
        let (chat, page) = open_page(&d, "GPT-4", &[]).await;
        assert!(!page.contains("LoggedOutBotInfoPage_appButton"));
        let r = mode(json!({"daily_limit": true})).await;
        assert_eq!(
            r.json(),
            json!({"logged_in": true, "daily_limit": true, "mode": "2023", "points": 3000})
        );

        let bad = gql(&d, json!({"queryName": "somethingElse", "variables": {}})).await;
        assert_eq!(bad.status, 400);
        let mut ws = connect(&d, &chat).await;
        send(&d, "GPT-4", &chat, "recorded").await;
        until_final(&mut ws).await;
        let listed = http(&d, "GET", "/__double/chats", &[], "").await.json();
        let c = &listed[0];
        assert_eq!(
            (&c["chat_id"], &c["prompt"]),
            (&json!(chat), &json!("recorded"))
        );
        assert_eq!(c["final_state"], "complete");
        assert!(c["received_ms"].as_f64().unwrap() >= 0.0);
        assert!(!c["frame_ms"].as_array().unwrap().is_empty());
        assert!(c["stopped_ms"].is_null());
    })
    .await;
}

#[tokio::test]
async fn noise_socket_carries_no_updates() {
    within(async {
        let d = Double::start(fast()).await.unwrap();
        let url = format!("{}/noise/socket", d.base_url().replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (mut heartbeat, mut ping, mut binary) = (false, false, false);
        while !(heartbeat && ping && binary) {
            match ws.next().await.expect("frame").expect("ok") {
                Message::Text(t) if t.as_str() == "ping" => ping = true,
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    assert_eq!(v["type"], "heartbeat");
                    heartbeat = true;
                }
                Message::Binary(_) => binary = true,
                _ => {}
            }
        }
    })
    .await;
}

#[tokio::test]
async fn waits_are_bounded_and_shutdown_closes_sockets() {
    within(async {
        let d = Double::start(fast()).await.unwrap();
        let none = d.wait_for_chats(1, Duration::from_millis(50)).await;
        assert!(none.is_empty());
        let (chat, _) = open_page(&d, "GPT-4", &[]).await;
        let mut ws = connect(&d, &chat).await;
        send(&d, "GPT-4", &chat, "[[stall]]").await;
        assert_eq!(d.wait_for_chats(1, Duration::from_secs(5)).await.len(), 1);
        let base = d.base_url();
        d.shutdown().await;
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        });
        assert!(closed.await.is_ok(), "the update socket closes on shutdown");
        let host = base.trim_start_matches("http://").to_owned();
        assert!(
            TcpStream::connect(host).await.is_err(),
            "the port is closed"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 2025 mode: raw clients

fn fast25() -> DoubleOptions {
    DoubleOptions {
        chunk_delay_ms: 5,
        textarea_delay_ms: 0,
        // All five repeats at once: the exchange's exact order is checked.
        late_repeat_ms: 0,
        ..DoubleOptions::default()
    }
}

/// A loaded 2025 chat page: its HTML and the config its script starts from.
struct Page25 {
    html: String,
    cfg: Value,
    set_cookies: Vec<String>,
}

impl Page25 {
    fn channel(&self) -> &str {
        self.cfg["channel"].as_str().expect("channel")
    }
}

fn page_config(html: &str) -> Value {
    let at = html.find("const CFG = ").expect("config in page") + 12;
    let line = html[at..].lines().next().expect("config line");
    serde_json::from_str(line.trim_end_matches(';')).expect("config is JSON")
}

async fn open25(d: &Double, path: &str, extra: &[(&str, &str)]) -> Page25 {
    let r = http(d, "GET", path, extra, "").await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    Page25 {
        cfg: page_config(&r.body),
        set_cookies: r
            .header("set-cookie")
            .iter()
            .map(|s| s.to_string())
            .collect(),
        html: r.body,
    }
}

/// The page's update socket; returns it with the first frame (the viewer's points).
async fn connect25(d: &Double, page: &Page25) -> (Ws, Value) {
    let c = &page.cfg;
    let url = format!(
        "{}/up/{}/updates?min_seq={}&channel={}&hash={}&generation=1",
        d.base_url().replace("http://", "ws://"),
        c["box"].as_str().expect("box"),
        c["minSeq"],
        c["channel"].as_str().expect("channel"),
        c["channelHash"],
    );
    let mut ws = tokio_tungstenite::connect_async(url).await.expect("ws").0;
    let first = next_frame(&mut ws, Duration::from_secs(5))
        .await
        .expect("a frame on connect");
    (ws, first)
}

/// POSTs a GraphQL operation as the 2025 page does (header and body name it).
async fn gql25(d: &Double, name: &str, channel: &str, vars: Value, extra: &[(&str, &str)]) -> Resp {
    let body = json!({"queryName": name, "variables": vars, "extensions": {"hash": "0f"}});
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("poe-queryname", name),
        ("poe-tchannel", channel),
    ];
    headers.extend_from_slice(extra);
    http(d, "POST", "/api/gql_POST", &headers, &body.to_string()).await
}

/// A 16-character client nonce, different per call.
fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!("nOnce{:011}", N.fetch_add(1, Ordering::SeqCst))
}

/// Sends `prompt` as the page would (`chat`: the chatId to continue); returns the
/// `messageEdgeCreate` object, the raw body and the nonce sent.
async fn send25(
    d: &Double,
    page: &Page25,
    bot: &str,
    prompt: &str,
    chat: Option<u64>,
) -> (Value, String, String) {
    let n = nonce();
    let vars = json!({"chatId": chat, "bot": bot, "query": prompt, "clientNonce": n,
        "sdid": "5d1d", "attachments": [], "source": {"sourceType": "chat_input"}});
    let r = gql25(d, "sendMessageMutation", page.channel(), vars, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let edge = r.json()["data"]["messageEdgeCreate"].clone();
    (edge, r.body, n)
}

/// The entries of a 2025 frame with their subscription names.
fn named(frame: &Value) -> Vec<(String, Value)> {
    inner(frame)
        .into_iter()
        .map(|e| {
            let name = e["payload"]["subscription_name"]
                .as_str()
                .or(e["message_type"].as_str())
                .unwrap_or_default()
                .to_owned();
            (name, e)
        })
        .collect()
}

/// The data object of an entry (`payload.data.<name>`).
fn data_of(name: &str, e: &Value) -> Value {
    e["payload"]["data"][name].clone()
}

/// The `messagePointInfo` of a frame's `viewerStateUpdated` entry, if it has one.
fn points_in(frame: &Value) -> Option<Value> {
    named(frame)
        .into_iter()
        .find(|(n, _)| n == "viewerStateUpdated")
        .map(|(n, e)| data_of(&n, &e)["messagePointInfo"].clone())
}

fn is_final(m: &Value) -> bool {
    m["state"] != "incomplete"
}

/// Frames until a reply's epilogue ended (a `viewerStateUpdated` after a bot message in a
/// final state), or until `QUIET` passes without a frame.
async fn until_settled(ws: &mut Ws) -> Vec<Value> {
    let mut frames = Vec::new();
    let mut ended = false;
    while let Some(f) = next_frame(ws, Duration::from_secs(5)).await {
        for (name, e) in named(&f) {
            if name == "messageAdded" {
                let m = data_of(&name, &e);
                ended |= m["authorUser"].is_null() && is_final(&m);
            }
            if name == "viewerStateUpdated" && ended {
                frames.push(f);
                return frames;
            }
        }
        frames.push(f);
    }
    frames
}

/// The bot's `messageAdded` objects in `frames` (authorUser null, a bot object).
fn bot_added(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .flat_map(named)
        .filter(|(n, _)| n == "messageAdded")
        .map(|(n, e)| data_of(&n, &e))
        .filter(|m| m["author"] != "human")
        .collect()
}

/// Every JSON object inside `v`, `v` included.
fn objects(v: &Value) -> Vec<&serde_json::Map<String, Value>> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(o) => {
                out.push(o);
                stack.extend(o.values());
            }
            Value::Array(a) => stack.extend(a.iter()),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn y2025_page_follows_todays_markup() {
    within(async {
        let d = Double::start(DoubleOptions::default()).await.unwrap();
        assert_eq!(d.mode(), Mode::Y2025, "2025 is the default");
        let page = open25(&d, "/GPT-4", &[]).await;
        for needle in [
            "GrowingTextArea_textArea__",
            "ChatMessageInputContainer_sendButton__",
            "\"Send message\"",
            "\"Stop message\"",
            "ChatStopButton_stopButton__",
            "Message_leftSideMessageBubble__",
            "Message_rightSideMessageBubble__",
            "Markdown_markdownContainer__",
            "e.isTrusted",
            "e.key === \"Enter\"",
            "\"poe-queryname\": name",
            "\"poe-tchannel\"",
            "history.pushState",
            "JSON.stringify({type: \"ping\"})",
            "&generation=1",
            "/noise/socket",
            "<title>GPT-4 - Poe</title>",
        ] {
            assert!(page.html.contains(needle), "page lacks {needle}");
        }
        for absent in ["footer", "%%", "ChatMessageSendButton", "data-author"] {
            assert!(!page.html.contains(absent), "page has {absent}");
        }
        let cfg = &page.cfg;
        assert_eq!(cfg["bot"]["handle"], "GPT-4");
        assert_eq!(cfg["bot"]["nickname"], "beaver");
        assert!(cfg["chat"].is_null(), "a bot page starts a new chat");
        assert_eq!(cfg["textareaDelayMs"], 300);
        assert!(page.channel().starts_with("poe-chan"));
        // The class hash suffixes are this double's own.
        let suffix = |html: &str| {
            let at = html.find("GrowingTextArea_textArea__").expect("class") + 26;
            html[at..at + 5].to_owned()
        };
        let other = Double::start(DoubleOptions::default()).await.unwrap();
        let page2 = open25(&other, "/GPT-4", &[]).await;
        assert_ne!(suffix(&page.html), suffix(&page2.html));
        assert_ne!(page.channel(), open25(&d, "/GPT-4", &[]).await.channel());

        // Every page gives a visitor without one an anonymous, HttpOnly p-b.
        let c = page
            .set_cookies
            .iter()
            .find(|c| c.starts_with("p-b="))
            .expect("p-b");
        assert!(c.contains("HttpOnly") && c.contains("Path=/"), "{c}");
        let again = open25(&d, "/GPT-4", &[("Cookie", "p-b=mine")]).await;
        assert!(again.set_cookies.is_empty(), "{:?}", again.set_cookies);

        // Handles match case-insensitively (a redirect to the canonical one); unknown is 404.
        let r = http(&d, "GET", "/gpt-4", &[], "").await;
        assert_eq!(r.status, 307);
        assert_eq!(r.header("location"), ["/GPT-4"]);
        let r = http(&d, "GET", "/claude-sonnet-4.5", &[], "").await;
        assert_eq!(r.header("location"), ["/Claude-Sonnet-4.5"]);
        for path in ["/No-Such-Bot", "/chat/nosuchchat", "/chinchilla"] {
            let r = http(&d, "GET", path, &[], "").await;
            assert_eq!(r.status, 404, "{path}");
            assert!(r.body.contains("not found"), "{}", r.body);
            assert!(!r.body.contains("textarea") && !r.body.contains("GrowingTextArea"));
        }
        for bot in [
            "Llama-2-7b",
            "Code-Llama-34b",
            "GPT-3.5-Turbo-Instruct",
            "Google-PaLM",
            "GPT-4o",
            "Gemini-2.5-Pro",
            "Claude-Opus-4.5",
            "RustReviewer",
        ] {
            let p = open25(&d, &format!("/{bot}"), &[]).await;
            assert_eq!(p.cfg["bot"]["handle"], bot);
        }
    })
    .await;
}

#[tokio::test]
async fn y2025_signed_out_visitors_are_sent_to_login_and_p_b_alone_proves_nothing() {
    within(async {
        let d = Double::start(DoubleOptions {
            logged_in: false,
            ..fast25()
        })
        .await
        .unwrap();
        let r = http(&d, "GET", "/GPT-4", &[], "").await;
        assert_eq!(r.status, 307);
        assert_eq!(r.header("location"), ["/login?redirect_url=%2FGPT-4"]);
        let anon = r.header("set-cookie")[0].to_owned();
        assert!(
            anon.starts_with("p-b=") && anon.contains("HttpOnly"),
            "{anon}"
        );
        let anon_value = anon["p-b=".len()..].split(';').next().unwrap().to_owned();
        assert!(!anon_value.is_empty());
        let anon_cookie = format!("p-b={anon_value}");

        // The anonymous cookie (or any made-up one) is no session.
        for cookie in [anon_cookie.as_str(), "p-b=double-session", "p-b=x; p-lat=y"] {
            let r = http(&d, "GET", "/GPT-4", &[("Cookie", cookie)], "").await;
            assert_eq!(r.status, 307, "{cookie}");
        }
        let r = http(&d, "GET", "/chat/abc", &[], "").await;
        assert_eq!(r.header("location"), ["/login?redirect_url=%2Fchat%2Fabc"]);

        // The sign-in page: buttons, no prompt box, and where to go back to.
        let login = http(&d, "GET", "/login?redirect_url=%2FGPT-4", &[], "").await;
        assert_eq!(login.status, 200);
        assert!(login.body.contains("<button") && login.body.contains("action=\"/login\""));
        assert!(login.body.contains("value=\"/GPT-4\""));
        assert!(!login.body.contains("textarea"));

        // A refused send of a signed-out visitor is recorded as such and takes nothing.
        let vars = json!({"chatId": null, "bot": "beaver", "query": "hi", "clientNonce": nonce()});
        let r = gql25(
            &d,
            "sendMessageMutation",
            "c",
            vars,
            &[("Cookie", &anon_cookie)],
        )
        .await;
        assert!(r.json()["errors"].is_array(), "{}", r.body);
        assert_eq!(d.chats()[0].status, "not_logged_in");
        assert!(d.taken().is_empty());

        // Signing in makes this visitor's p-b a signed-in one, and only that one.
        let r = http(
            &d,
            "POST",
            "/login",
            &[
                ("Cookie", &anon_cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            "redirect_url=%2FGPT-4&provider=google",
        )
        .await;
        assert_eq!(r.status, 303);
        assert_eq!(r.header("location"), ["/GPT-4"]);
        assert!(r
            .header("set-cookie")
            .iter()
            .any(|c| c.starts_with(&anon_cookie)));
        assert!(
            !r.header("set-cookie")
                .iter()
                .any(|c| c.starts_with("p-lat=")),
            "no p-lat in 2025"
        );
        let page = open25(&d, "/GPT-4", &[("Cookie", &anon_cookie)]).await;
        assert!(page.html.contains("GrowingTextArea_textArea__"));
        let r = http(&d, "GET", "/GPT-4", &[("Cookie", "p-b=someone-else")], "").await;
        assert_eq!(r.status, 307);
        // Without a cookie, sign-in makes one; an outside redirect is not followed.
        let r = http(
            &d,
            "POST",
            "/login",
            &[],
            "redirect_url=https%3A%2F%2Fevil.example",
        )
        .await;
        assert_eq!(r.header("location"), ["/"]);
        let made = r.header("set-cookie")[0].to_owned();
        let made = made.split(';').next().unwrap().to_owned();
        assert_eq!(
            open25(&d, "/GPT-4", &[("Cookie", &made)]).await.cfg["bot"]["handle"],
            "GPT-4"
        );

        // A session imported from elsewhere, and the whole double signed in.
        d.add_signed_in_session("imported-value");
        open25(&d, "/GPT-4", &[("Cookie", "a=1; p-b=imported-value")]).await;
        d.set_logged_in(true);
        open25(&d, "/GPT-4", &[]).await;
    })
    .await;
}

#[tokio::test]
async fn y2025_the_last_repeat_of_a_reply_comes_late() {
    within(async {
        let d = Double::start(DoubleOptions {
            late_repeat_ms: 250,
            ..fast25()
        })
        .await
        .unwrap();
        let page = open25(&d, "/GPT-4", &[]).await;
        let (mut ws, _) = connect25(&d, &page).await;
        send25(&d, &page, "beaver", "late repeat", None).await;
        let finals = |frames: &[Value]| -> Vec<Value> {
            frames
                .iter()
                .flat_map(named)
                .filter(|(n, _)| n == "messageAdded")
                .map(|(n, e)| data_of(&n, &e))
                .filter(|m| m["authorUser"].is_null() && is_final(m))
                .collect()
        };
        let settled = finals(&until_settled(&mut ws).await);
        assert_eq!(
            settled.len(),
            5,
            "the complete message and 4 repeats at once"
        );
        let started = std::time::Instant::now();
        let late = next_frame(&mut ws, Duration::from_secs(5))
            .await
            .expect("the fifth repeat");
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "it comes later"
        );
        assert_eq!(finals(&[late]), vec![settled[0].clone()]);
    })
    .await;
}

#[tokio::test]
async fn y2025_frames_follow_the_captured_exchange() {
    within(async {
        let d = Double::start(fast25()).await.unwrap();
        let page = open25(&d, "/Claude-Sonnet-4.5", &[]).await;
        let (mut ws, hello) = connect25(&d, &page).await;
        let names: Vec<String> = named(&hello).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["viewerStateUpdated"],
            "points when the socket connects"
        );
        let info = &data_of("viewerStateUpdated", &named(&hello)[0].1)["messagePointInfo"];
        assert_eq!(info["messagePointBalance"], 3000);
        assert_eq!(info["totalMessagePointAllotment"], 3000);
        let reset = info["messagePointResetTime"].as_u64().expect("reset time");
        assert!(
            reset > 1_700_000_000_000_000,
            "microseconds since the epoch: {reset}"
        );
        assert!(info["warningBannerPercent"].is_number());

        // Pings are answered by pongs (no `messages` key).
        ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .expect("ping");
        let pong = next_frame(&mut ws, Duration::from_secs(5))
            .await
            .expect("pong");
        assert_eq!(pong, json!({"type": "pong"}));

        let prompt = "Hello, \"double\" ✓\nsecond line";
        let (edge, raw, sent_nonce) = send25(&d, &page, "claude_sonnet_4_5", prompt, None).await;
        assert_eq!(edge["status"], "success");
        assert!(edge["statusMessage"].is_null());
        let chat_id = edge["chat"]["chatId"].as_u64().expect("numeric chatId");
        let code = edge["chat"]["chatCode"]
            .as_str()
            .expect("chatCode")
            .to_owned();
        assert!(edge["chat"]["id"].is_string());
        assert_eq!(edge["message"]["node"]["clientNonce"], sent_nonce.as_str());
        // Keys in another order than poe-web.md lists them, and extra ones.
        let at = |k: &str| {
            raw.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k}"))
        };
        assert!(at("status") > at("statusMessage") && at("statusMessage") > at("chat"));
        assert!(raw.contains("\"__typename\""));

        let frames = until_settled(&mut ws).await;
        let seqs: Vec<u64> = frames
            .iter()
            .map(|f| f["min_seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert!(frames
            .iter()
            .all(|f| f.as_object().unwrap().keys().len() == 2));
        let sizes: Vec<usize> = frames.iter().map(|f| inner(f).len()).collect();
        assert!(sizes.contains(&2), "sometimes two entries: {sizes:?}");
        assert!(
            sizes.iter().filter(|n| **n == 1).count() > sizes.len() / 2,
            "{sizes:?}"
        );

        // The captured order (repeated messageAdded collapsed).
        let mut order: Vec<String> = Vec::new();
        for (n, _) in frames.iter().flat_map(named) {
            if order.last() != Some(&n) || n != "messageAdded" {
                order.push(n);
            }
        }
        let human_echo_then_bot = [
            "messageCreated",
            "messageAdded",
            "chatAddedV2",
            "jobStarted",
            "jobUpdated",
            "messageCreated",
            "chatMemberAddedWithContext",
            "messageAdded",
            "jobUpdated",
            "jobCostUpdated",
            "messageFollowupActionUpdated",
            "chatTitleUpdated",
            "viewerStateUpdated",
        ];
        assert_eq!(order, human_echo_then_bot);

        let entries: Vec<(String, Value)> = frames.iter().flat_map(named).collect();
        for (n, e) in &entries {
            assert!(e.get("_").is_some(), "{n}: no \"_\" key: {e}");
            assert!(data_of(n, e).get("_").is_some(), "{n}: data has no \"_\"");
            for o in objects(e) {
                assert!(!o.contains_key("suggestedReplies"), "{n}");
            }
            if n != "messageCreated" && n != "viewerStateUpdated" && n != "chatAddedV2" {
                assert!(
                    e["payload"]["unique_id"].as_str().unwrap().contains(':'),
                    "{n}"
                );
            }
        }
        let created: Vec<Value> = entries
            .iter()
            .filter(|(n, _)| n == "messageCreated")
            .map(|(n, e)| {
                assert_eq!(e["payload"]["unique_id"], "messageCreated");
                data_of(n, e)
            })
            .collect();
        assert!(created.iter().all(|m| m.get("author").is_none()));
        assert_eq!(created[0]["text"], prompt);
        assert_eq!(created[1]["text"], "");
        assert!(created[1]["bot"].is_object());

        let echo = entries
            .iter()
            .find(|(n, _)| n == "messageAdded")
            .map(|(n, e)| data_of(n, e))
            .unwrap();
        assert_eq!(echo["author"], "human");
        assert!(echo["bot"].is_null() && echo["authorUser"].is_object());
        assert_eq!(echo["clientNonce"], sent_nonce.as_str());
        assert_eq!(echo["text"], prompt);
        assert_eq!(echo["messageId"], created[0]["messageId"]);
        assert_eq!(echo["messageId"], edge["message"]["node"]["messageId"]);

        let bot = bot_added(&frames);
        let expected = expected_reply("Claude-Sonnet-4.5", prompt);
        let id = bot[0]["messageId"].as_u64().unwrap();
        assert!(id > 1 << 32, "messageId beyond 2^32: {id}");
        assert!(id > echo["messageId"].as_u64().unwrap());
        assert_eq!(bot[0]["text"], "", "the bot message starts empty");
        for m in &bot {
            assert_eq!(
                m["author"], "claude_sonnet_4_5",
                "the codename, not the handle"
            );
            assert!(m["authorUser"].is_null());
            assert_eq!(m["bot"]["handle"], "Claude-Sonnet-4.5");
            assert_eq!(m["bot"]["displayName"], "Claude-Sonnet-4.5");
            assert_eq!(m["bot"]["nickname"], "claude_sonnet_4_5");
            assert_eq!(m["messageId"], id);
            assert!(m.get("messageStateText").is_some());
        }
        let t = texts(&bot);
        assert!(
            t.windows(2).all(|w| w[1].starts_with(&w[0])),
            "cumulative: {t:?}"
        );
        let first_final = bot.iter().position(is_final).expect("a final message");
        assert_eq!(bot[first_final]["state"], "complete");
        assert_eq!(bot[first_final]["text"], expected.as_str());
        assert_eq!(
            bot.len() - first_final,
            6,
            "the complete message and 5 repeats"
        );
        assert!(bot[first_final..].iter().all(|m| *m == bot[first_final]));

        let cost = entries
            .iter()
            .find(|(n, _)| n == "jobCostUpdated")
            .map(|(n, e)| data_of(n, e)["totalCostPoints"].as_u64().unwrap())
            .unwrap();
        assert_eq!(cost, 90, "the bot table's cost");
        let last = entries.last().unwrap();
        let info = &data_of(&last.0, &last.1)["messagePointInfo"];
        assert_eq!(info["messagePointBalance"], 3000 - cost);
        assert_eq!(d.points(), 3000 - cost);

        let r = &d.chats()[0];
        assert_eq!(r.status, "success");
        assert!(r.taken());
        assert_eq!(r.chat_id, chat_id.to_string());
        assert_eq!(r.chat_code, code);
        assert_eq!(r.turn, 1);
        assert_eq!(r.bot, "Claude-Sonnet-4.5");
        assert_eq!(r.prompt, prompt);
        assert_eq!(r.client_nonce.as_deref(), Some(sent_nonce.as_str()));
        assert_eq!(r.message_id, Some(id));
        assert_eq!(r.cost, cost);
        assert_eq!(r.final_state.as_deref(), Some("complete"));
        let carrying = frames
            .iter()
            .filter(|f| !bot_added(&[(*f).clone()]).is_empty());
        assert_eq!(r.frame_times.len(), carrying.count());
        assert!(
            until_quiet(&mut ws).await.is_empty(),
            "nothing after the epilogue"
        );
    })
    .await;
}

/// Asserts a refusal answer: the status, a message to show, no message taken.
fn assert_refused(edge: &Value, status: &str) {
    assert_eq!(edge["status"], status, "{edge}");
    assert!(
        edge["statusMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{edge}"
    );
    assert!(edge["message"].is_null(), "{edge}");
}

#[tokio::test]
async fn y2025_refusals_come_in_the_response_and_no_frame_follows() {
    within(async {
        let d = Double::start(DoubleOptions {
            max_prompt_chars: Some(2000),
            ..fast25()
        })
        .await
        .unwrap();
        let page = open25(&d, "/GPT-4", &[]).await;
        let (mut ws, _) = connect25(&d, &page).await;
        let long = "x".repeat(2001);
        let cases = [
            ("[[reached-limit]] a", "reached_limit"),
            ("[[rate-limit-exceeded]] b", "rate_limit_exceeded"),
            ("[[concurrent]] c", "concurrent_messages"),
            ("[[too-many-tokens]] d", "too_many_tokens"),
            ("[[no-access]] e", "no_access"),
            (
                "[[refuse:message_blocked_by_moderation]] f",
                "message_blocked_by_moderation",
            ),
            (long.as_str(), "too_many_tokens"),
        ];
        for (prompt, status) in cases {
            let (edge, _, _) = send25(&d, &page, "beaver", prompt, None).await;
            assert_refused(&edge, status);
            assert!(edge["chat"].is_null(), "no chat was made");
        }
        let (edge, _, _) = send25(&d, &page, "No-Such-Bot", "hello", None).await;
        assert_refused(&edge, "no_access");
        assert!(
            until_quiet(&mut ws).await.is_empty(),
            "a refused send gets no frame, not even the echo"
        );
        let chats = d.chats();
        assert_eq!(chats.len(), cases.len() + 1, "every attempt is recorded");
        for (r, (prompt, status)) in chats.iter().zip(cases) {
            assert_eq!((r.prompt.as_str(), r.status.as_str()), (prompt, status));
            assert!(!r.taken() && r.final_state.is_none() && r.frame_times.is_empty());
            assert!(r.chat_id.is_empty() && r.chat_code.is_empty());
        }
        assert!(d.taken().is_empty());

        // Points: a reply costing more than the balance is refused; so is a daily limit.
        d.set_points(59);
        let (edge, _, _) = send25(&d, &page, "GPT-4", "costly", None).await;
        assert_refused(&edge, "reached_limit");
        d.set_bot_cost("gpt-4", 50);
        let (edge, _, _) = send25(&d, &page, "GPT-4", "cheaper now", None).await;
        assert_eq!(edge["status"], "success");
        let frames = until_settled(&mut ws).await;
        assert_eq!(d.points(), 9);
        let info = points_in(frames.last().unwrap()).expect("points after the reply");
        assert_eq!(info["messagePointBalance"], 9);
        d.set_points(3000);
        d.set_daily_limit(true);
        let (edge, _, _) = send25(&d, &page, "GPT-4", "limited", None).await;
        assert_refused(&edge, "reached_limit");
        d.set_daily_limit(false);

        // A refusal in a continued chat names the chat and leaves it as it was.
        let chat = edge_chat(&d, &page).await;
        let (edge, _, _) = send25(&d, &page, "GPT-4", "[[concurrent]] x", Some(chat)).await;
        assert_refused(&edge, "concurrent_messages");
        assert_eq!(edge["chat"]["chatId"], chat);
        let (edge, _, _) = send25(&d, &page, "GPT-4", "next", Some(chat)).await;
        assert_eq!(edge["status"], "success");
        let r = d.chats().pop().unwrap();
        assert_eq!(r.turn, 2, "the refused send took no turn");
    })
    .await;
}

/// Makes a chat on `page` with one taken message and waits for its reply; returns its id.
async fn edge_chat(d: &Double, page: &Page25) -> u64 {
    let before = d.chats().len();
    let (edge, _, _) = send25(d, page, "GPT-4", "start a chat", None).await;
    assert_eq!(edge["status"], "success", "{edge}");
    let chat = edge["chat"]["chatId"].as_u64().expect("chatId");
    assert_eq!(
        d.wait_for_final(before, Duration::from_secs(10))
            .await
            .as_deref(),
        Some("complete")
    );
    chat
}

#[tokio::test]
async fn y2025_a_retry_after_a_refusal_is_taken_once() {
    within(async {
        let d = Double::start(fast25()).await.unwrap();
        let page = open25(&d, "/GPT-3.5-Turbo", &[]).await;
        let (mut ws, _) = connect25(&d, &page).await;
        for (prompt, status, refusals) in [
            ("[[rate-limit-once]] hi", "rate_limit_exceeded", 1),
            ("[[concurrent-once]] hi", "concurrent_messages", 1),
            ("[[refuse-first:2:reached_limit]] hi", "reached_limit", 2),
        ] {
            for _ in 0..refusals {
                let (edge, _, _) = send25(&d, &page, "chinchilla", prompt, None).await;
                assert_refused(&edge, status);
            }
            assert!(until_quiet(&mut ws).await.is_empty());
            let (edge, _, _) = send25(&d, &page, "chinchilla", prompt, None).await;
            assert_eq!(edge["status"], "success", "{prompt}");
            let bot = bot_added(&until_settled(&mut ws).await);
            assert_eq!(
                bot.last().unwrap()["text"],
                expected_reply("GPT-3.5-Turbo", prompt).as_str()
            );
            let attempts: Vec<ChatRecord> = d
                .chats()
                .into_iter()
                .filter(|r| r.prompt == prompt)
                .collect();
            assert_eq!(attempts.len(), refusals + 1);
            assert_eq!(
                attempts.iter().filter(|r| r.taken()).count(),
                1,
                "taken once"
            );
            assert!(attempts[..refusals].iter().all(|r| r.status == status));
        }
        assert_eq!(d.taken().len(), 3);
    })
    .await;
}

#[tokio::test]
async fn y2025_replies_in_flight_and_send_rate_are_limited() {
    within(async {
        let d = Double::start(fast25()).await.unwrap();
        let page = open25(&d, "/GPT-4", &[]).await;
        let (_ws, _) = connect25(&d, &page).await;
        // Three replies in flight (stalled) on three chats: the fourth send is refused.
        let mut chats = Vec::new();
        for i in 0..3 {
            let (edge, _, _) = send25(&d, &page, "GPT-4", &format!("[[stall]] {i}"), None).await;
            assert_eq!(edge["status"], "success");
            chats.push(edge["chat"]["chatId"].as_u64().unwrap());
        }
        let (edge, _, _) = send25(&d, &page, "GPT-4", "a fourth", None).await;
        assert_refused(&edge, "concurrent_messages");
        // One stopped: the next is taken; sending to a chat whose reply streams is refused.
        let stop = json!({"chatId": chats[0], "messageId": null});
        assert_eq!(
            gql25(&d, "stopMessage", page.channel(), stop, &[])
                .await
                .status,
            200
        );
        assert!(
            d.wait_for_stop(&chats[0].to_string(), Duration::from_secs(5))
                .await
        );
        assert_eq!(
            d.wait_for_final(0, Duration::from_secs(5)).await.as_deref(),
            Some("cancelled")
        );
        let (edge, _, _) = send25(&d, &page, "GPT-4", "[[stall]] again", Some(chats[1])).await;
        assert_refused(&edge, "concurrent_messages");
        let (edge, _, _) = send25(&d, &page, "GPT-4", "[[stall]] 5", Some(chats[0])).await;
        assert_eq!(edge["status"], "success", "a slot was free");
        assert_eq!(d.chats().last().unwrap().turn, 2);

        // A send-rate limit: two taken sends per minute.
        let d = Double::start(DoubleOptions {
            rate_limit: Some(RateLimit {
                sends: 2,
                per: Duration::from_secs(60),
            }),
            ..fast25()
        })
        .await
        .unwrap();
        let page = open25(&d, "/GPT-4", &[]).await;
        for (prompt, status) in [
            ("one", "success"),
            ("two", "success"),
            ("three", "rate_limit_exceeded"),
        ] {
            let (edge, _, _) = send25(&d, &page, "GPT-4", prompt, None).await;
            assert_eq!(edge["status"], status, "{prompt}");
        }
    })
    .await;
}

#[tokio::test]
async fn y2025_chats_continue_under_their_code_and_can_be_deleted() {
    within(async {
        // Each page gets only its own chat's frames here: the first page must stay silent.
        let d = Double::start(DoubleOptions {
            updates_to_all_pages: false,
            ..fast25()
        })
        .await
        .unwrap();
        let page = open25(&d, "/GPT-4o", &[]).await;
        let (mut ws, _) = connect25(&d, &page).await;
        let (edge, _, _) = send25(&d, &page, "gpt4_o", "first question", None).await;
        let chat = edge["chat"]["chatId"].as_u64().unwrap();
        let code = edge["chat"]["chatCode"].as_str().unwrap().to_owned();
        until_settled(&mut ws).await;

        // The chat's page shows the conversation so far and a prompt box.
        let chat_page = open25(&d, &format!("/chat/{code}"), &[]).await;
        assert_eq!(chat_page.cfg["chat"]["chatId"], chat);
        assert_eq!(chat_page.cfg["chat"]["chatCode"], code.as_str());
        assert_eq!(chat_page.cfg["bot"]["handle"], "GPT-4o");
        let shown: Vec<&str> = chat_page.cfg["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        let first_reply = expected_reply("GPT-4o", "first question");
        assert_eq!(shown, ["first question", first_reply.as_str()]);
        assert!(chat_page.html.contains("GrowingTextArea_textArea__"));

        // Sends there carry the chatId and continue the chat; no new-chat frames.
        let (mut ws2, _) = connect25(&d, &chat_page).await;
        let (edge, _, _) = send25(&d, &chat_page, "gpt4_o", "second", Some(chat)).await;
        assert_eq!(edge["status"], "success");
        assert_eq!(edge["chat"]["chatCode"], code.as_str());
        let frames = until_settled(&mut ws2).await;
        let names: Vec<String> = frames.iter().flat_map(named).map(|(n, _)| n).collect();
        assert!(!names
            .iter()
            .any(|n| n == "chatAddedV2" || n == "chatMemberAddedWithContext"));
        assert!(names.iter().any(|n| n == "messageCreated"));
        let (_, _, _) = send25(&d, &chat_page, "gpt4_o", "[[turns]]", Some(chat)).await;
        let bot = bot_added(&until_settled(&mut ws2).await);
        let said = bot.last().unwrap()["text"].as_str().unwrap().to_owned();
        assert_eq!(said, "Earlier human messages: 2");
        assert_eq!(said, expected_reply_at("GPT-4o", "[[turns]]", 3));
        assert_eq!(
            expected_reply("GPT-4o", "[[turns]]"),
            "Earlier human messages: 0"
        );
        let records = d.chats();
        let turns: Vec<u32> = records.iter().map(|r| r.turn).collect();
        assert_eq!(turns, [1, 2, 3]);
        assert!(records
            .iter()
            .all(|r| r.chat_code == code && r.chat_id == chat.to_string()));
        assert!(
            until_quiet(&mut ws).await.is_empty(),
            "the first page's socket got nothing"
        );

        // Deleted: the page is gone and sends fail.
        assert!(d.delete_chat(&code));
        assert!(!d.delete_chat(&code));
        assert!(!d.delete_chat("nosuchcode"));
        let r = http(&d, "GET", &format!("/chat/{code}"), &[], "").await;
        assert_eq!(r.status, 404);
        assert!(!r.body.contains("GrowingTextArea"));
        let vars = json!({"chatId": chat, "bot": "gpt4_o", "query": "still there?",
            "clientNonce": nonce()});
        let r = gql25(&d, "sendMessageMutation", chat_page.channel(), vars, &[]).await;
        assert!(r.json()["errors"].is_array(), "{}", r.body);
        assert_eq!(d.chats().last().unwrap().status, "chat_not_found");
        assert_eq!(d.taken().len(), 3);
    })
    .await;
}

#[tokio::test]
async fn y2025_lost_updates_are_signalled_and_the_chat_query_recovers_them() {
    within(async {
        let d = Double::start(fast25()).await.unwrap();
        let page = open25(&d, "/GPT-4", &[]).await;
        let refetch = page.cfg["refetchQuery"].as_str().unwrap().to_owned();
        assert_ne!(refetch, "sendMessageMutation");
        assert!(page.html.contains("CFG.refetchQuery"));
        let (mut ws, _) = connect25(&d, &page).await;

        // [[missed]]: the signal, then the rest streams on.
        let (edge, _, _) = send25(&d, &page, "GPT-4", "[[missed]] go", None).await;
        let code = edge["chat"]["chatCode"].as_str().unwrap().to_owned();
        let chat = edge["chat"]["chatId"].as_u64().unwrap();
        let frames = until_settled(&mut ws).await;
        let at = frames
            .iter()
            .position(|f| f["error"] == "missed_messages")
            .expect("missed_messages frame");
        assert!(!bot_added(&frames[..at]).is_empty() && !bot_added(&frames[at..]).is_empty());
        let t = texts(&bot_added(&frames));
        assert_eq!(t.last().unwrap(), &expected_reply("GPT-4", "[[missed]] go"));

        // [[missed-stop]] and [[refetch]] (continuing the chat): the signal, then silence.
        for prompt in ["[[missed-stop]] go", "[[refetch]] go"] {
            let before = d.chats().len();
            let (edge, _, _) = send25(&d, &page, "GPT-4", prompt, Some(chat)).await;
            assert_eq!(edge["status"], "success");
            let frames = until_quiet(&mut ws).await;
            let last = frames.last().expect("frames");
            if prompt.starts_with("[[refetch]]") {
                assert_eq!(inner(last)[0]["message_type"], "refetchChannel");
                assert!(inner(last)[0].get("_").is_some());
            } else {
                assert_eq!(last, &json!({"error": "missed_messages"}));
            }
            let bot = bot_added(&frames);
            assert!(bot.iter().all(|m| m["state"] == "incomplete"));
            let id = bot[0]["messageId"].clone();
            assert_eq!(
                d.wait_for_final(before, Duration::from_secs(5))
                    .await
                    .as_deref(),
                Some("complete")
            );

            // Any query naming the chat (not a send) returns its messages nested deep.
            for name in [refetch.as_str(), "ChatPageQuery", "SomeFutureChatQuery"] {
                let vars = json!({"chatCode": code, "count": 25, "cursor": null});
                let r = gql25(&d, name, page.channel(), vars, &[]).await;
                assert_eq!(r.status, 200, "{}", r.body);
                let j = r.json();
                let edges = j["data"]["chatOfCode"]["messagesConnection"]["edges"]
                    .as_array()
                    .expect("edges")
                    .clone();
                let node = edges
                    .iter()
                    .map(|e| &e["node"])
                    .find(|n| n["messageId"] == id)
                    .expect("the bot message");
                assert_eq!(node["text"], expected_reply("GPT-4", prompt).as_str());
                assert_eq!(node["state"], "complete");
                assert_eq!(node["author"], "beaver");
                assert_eq!(edges[0]["node"]["author"], "human");
            }
        }
        let by_id = json!({"chatId": chat});
        let r = gql25(&d, "ChatLastMessageAreaQuery", page.channel(), by_id, &[]).await;
        assert!(r.json()["data"]["chatOfCode"]["messagesConnection"]["edges"].is_array());
        let r = gql25(&d, "ChatPageQuery", "", json!({"chatCode": "nope"}), &[]).await;
        assert!(r.json()["data"]["chatOfCode"].is_null());
        let r = gql25(
            &d,
            "someUnknownMutation",
            "",
            json!({"chatCode": code}),
            &[],
        )
        .await;
        assert_eq!(r.status, 400);
    })
    .await;
}

#[tokio::test]
async fn y2025_stop_cancels_and_2023_triggers_still_work() {
    within(async {
        let d = Double::start(fast25()).await.unwrap();
        let page = open25(&d, "/GPT-3.5-Turbo", &[]).await;
        let (mut ws, _) = connect25(&d, &page).await;
        let prompt = "[[slow]] story";
        let (edge, _, _) = send25(&d, &page, "chinchilla", prompt, None).await;
        let chat = edge["chat"]["chatId"].as_u64().unwrap();
        let mut frames = Vec::new();
        while bot_added(&frames).len() < 4 {
            frames.push(
                next_frame(&mut ws, Duration::from_secs(5))
                    .await
                    .expect("frame"),
            );
        }
        let stop = json!({"chatId": chat, "messageId": bot_added(&frames)[0]["messageId"]});
        let r = gql25(&d, "stopMessage", page.channel(), stop, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            d.wait_for_stop(&chat.to_string(), Duration::from_secs(5))
                .await
        );
        let rest = until_settled(&mut ws).await;
        let bot = bot_added(&rest);
        let first_final = bot.iter().position(is_final).expect("final");
        assert!(
            first_final <= 2,
            "the stop took effect at once: {first_final} more"
        );
        assert_eq!(bot[first_final]["state"], "cancelled");
        assert_eq!(bot.len() - first_final, 6);
        let text = bot[first_final]["text"].as_str().unwrap();
        assert!(expected_reply("GPT-3.5-Turbo", prompt).starts_with(text));
        let r = &d.chats()[0];
        assert_eq!(r.final_state.as_deref(), Some("cancelled"));
        assert!(r.stopped_at.is_some_and(|t| t >= r.received_at));
        assert_eq!(r.cost, 10, "a cancelled reply costs its points");

        // The 2023 triggers, one chat each.
        for (bot, prompt, state) in [
            ("GPT-4", "[[error]]", "error_user_message_too_long"),
            ("GPT-4", "[[rate-limit]]", "error_rate_limit_exceeded"),
            ("GPT-4", "[[cancelled]]", "cancelled"),
            ("GPT-4", "[[rewrite]] please", "complete"),
            ("Gemini-2.5-Pro", "[[unicode]]", "complete"),
            ("Claude-Opus-4.5", "[[long]]", "complete"),
        ] {
            let (edge, _, _) = send25(&d, &page, bot, prompt, None).await;
            assert_eq!(edge["status"], "success", "{prompt}");
            let msgs = bot_added(&until_settled(&mut ws).await);
            let end = msgs.iter().find(|m| is_final(m)).expect("final");
            assert_eq!(end["state"], state, "{prompt}");
            assert_eq!(
                end["text"],
                expected_reply(bot, prompt).as_str(),
                "{prompt}"
            );
            let r = d.chats().pop().unwrap();
            assert_eq!(r.final_state.as_deref(), Some(state));
            assert_eq!(
                r.cost == 0,
                state.starts_with("error"),
                "{prompt}: {}",
                r.cost
            );
            if prompt.contains("rewrite") {
                let t = texts(&msgs);
                assert!(t
                    .iter()
                    .any(|x| !end["text"].as_str().unwrap().starts_with(x.as_str())));
            }
        }
        // [[stall]]: two steps, then nothing until a stop.
        let before = d.chats().len();
        let (edge, _, _) = send25(&d, &page, "GPT-4", "[[stall]]", None).await;
        let chat = edge["chat"]["chatId"].as_u64().unwrap();
        let bot = bot_added(&until_quiet(&mut ws).await);
        assert!(bot.iter().all(|m| m["state"] == "incomplete"));
        assert_eq!(
            bot.last().unwrap()["text"],
            expected_reply("GPT-4", "[[stall]]").as_str()
        );
        assert_eq!(d.chats()[before].final_state, None);
        gql25(
            &d,
            "stopMessage",
            page.channel(),
            json!({"chatId": chat.to_string()}),
            &[],
        )
        .await;
        let end = bot_added(&until_settled(&mut ws).await);
        assert_eq!(end[0]["state"], "cancelled");
    })
    .await;
}

#[tokio::test]
async fn y2025_explore_lists_the_bots_through_a_paginated_query() {
    within(async {
        let d = Double::start(fast25()).await.unwrap();
        let r = http(&d, "GET", "/explore", &[], "").await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("ExploreBotsListPaginationQuery"));
        assert!(r.body.contains("BotListItem_botListItem__") && !r.body.contains("%%"));
        let mut handles = Vec::new();
        let mut cursor = Value::Null;
        let mut pages = 0;
        loop {
            let vars = json!({"categoryName": "defaultCategory", "count": 8, "cursor": cursor});
            let r = gql25(&d, "ExploreBotsListPaginationQuery", "", vars, &[]).await;
            let j = r.json();
            let conn = &j["data"]["exploreBotsConnection"];
            for e in conn["edges"].as_array().expect("edges") {
                let b = &e["node"];
                assert!(b["displayName"].is_string() && b.get("_").is_some(), "{b}");
                handles.push(b["handle"].as_str().unwrap().to_owned());
            }
            pages += 1;
            if conn["pageInfo"]["hasNextPage"] != true {
                break;
            }
            cursor = conn["pageInfo"]["endCursor"].clone();
        }
        assert!(pages > 1, "paginated");
        let all: Vec<&str> = BOTS.iter().map(|b| b.handle).collect();
        assert_eq!(handles, all);
        for h in [
            "GPT-3.5-Turbo",
            "GPT-4",
            "Llama-2-7b",
            "Claude-Sonnet-4.5",
            "GPT-4o",
            "RustReviewer",
        ] {
            assert!(handles.iter().any(|x| x == h), "{h}");
        }
        assert!(BOTS.iter().any(|b| !b.official));
    })
    .await;
}

#[tokio::test]
async fn y2025_control_endpoints_and_mode_switch() {
    within(async {
        let d = Double::start(fast25()).await.unwrap();
        let mode = |body: Value| {
            let d = &d;
            async move {
                let headers = [("Content-Type", "application/json")];
                http(d, "POST", "/__double/mode", &headers, &body.to_string()).await
            }
        };
        let r = mode(json!({"points": 120})).await;
        assert_eq!(
            r.json(),
            json!({"logged_in": true, "daily_limit": false, "mode": "2025", "points": 120})
        );
        assert_eq!(d.points(), 120);
        assert_eq!(mode(json!({"mode": "1999"})).await.status, 400);

        let page = open25(&d, "/GPT-4", &[]).await;
        let (mut ws, _) = connect25(&d, &page).await;
        let (_, _, sent) = send25(&d, &page, "GPT-4", "recorded", None).await;
        until_settled(&mut ws).await;
        send25(&d, &page, "GPT-4", "[[no-access]]", None).await;
        let listed = http(&d, "GET", "/__double/chats", &[], "").await.json();
        let c = &listed[0];
        assert_eq!(
            (&c["prompt"], &c["status"], &c["turn"]),
            (&json!("recorded"), &json!("success"), &json!(1))
        );
        assert_eq!(c["client_nonce"], sent.as_str());
        assert_eq!(c["cost"], 60);
        assert!(c["chat_code"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(c["message_id"].as_u64().is_some_and(|id| id > 1 << 32));
        assert!(!c["frame_ms"].as_array().unwrap().is_empty());
        assert_eq!(listed[1]["status"], "no_access");
        assert_eq!(d.points(), 60);

        // Switched to 2023 at run time: the 2023 page for a bot; not found for no bot, in
        // both pictures.
        let r = mode(json!({"mode": "2023"})).await;
        assert_eq!(r.json()["mode"], "2023");
        assert_eq!(d.mode(), Mode::Y2023);
        let (_, old) = open_page(&d, "GPT-4", &[]).await;
        assert!(old.contains("createElement(\"footer\")"));
        assert_eq!(http(&d, "GET", "/Any-Handle", &[], "").await.status, 404);
        d.set_mode(Mode::Y2025);
        assert_eq!(http(&d, "GET", "/Any-Handle", &[], "").await.status, 404);
    })
    .await;
}

#[tokio::test]
async fn y2025_updates_can_reach_every_page_of_the_account() {
    within(async {
        let d = Double::start(DoubleOptions {
            updates_to_all_pages: true,
            ..fast25()
        })
        .await
        .unwrap();
        let a = open25(&d, "/GPT-4", &[]).await;
        let b = open25(&d, "/GPT-4", &[]).await;
        let (mut ws_a, _) = connect25(&d, &a).await;
        let (mut ws_b, _) = connect25(&d, &b).await;
        send25(&d, &a, "GPT-4", "from page a", None).await;
        let on_a = until_settled(&mut ws_a).await;
        let on_b = until_settled(&mut ws_b).await;
        assert_eq!(bot_added(&on_a), bot_added(&on_b), "b sees a's chat too");
        let r = &d.chats()[0];
        let carrying = on_a
            .iter()
            .filter(|f| !bot_added(&[(*f).clone()]).is_empty());
        assert_eq!(r.frame_times.len(), carrying.count(), "noted once, for a");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 2025 mode: the page's script in real Chromium

mod browser {
    //! The shared headless Chromium (`common::chromium`), and the page helpers only this
    //! test needs.

    use std::time::Duration;

    use chromiumoxide::cdp::browser_protocol::input::{
        DispatchKeyEventParams, DispatchKeyEventType, InsertTextParams,
    };
    use chromiumoxide::Page;

    pub use crate::common::chromium::{goto, js, Chromium, WAIT};

    /// Waits until the JS expression `cond` is true, watching the page's DOM (a navigation
    /// in between is waited for, then the watch starts again on the new document).
    pub async fn wait_for(page: &Page, cond: &str, what: &str) {
        let expr = format!(
            r#"new Promise((resolve) => {{
  const check = () => {{ try {{ return !!({cond}); }} catch (_) {{ return false; }} }};
  if (check()) return resolve(true);
  let obs = null, tick = null, timer = null;
  const done = (v) => {{ obs.disconnect(); clearInterval(tick); clearTimeout(timer); resolve(v); }};
  obs = new MutationObserver(() => {{ if (check()) done(true); }});
  obs.observe(document.documentElement || document,
    {{childList: true, subtree: true, attributes: true, characterData: true}});
  tick = setInterval(() => {{ if (check()) done(true); }}, 50);
  timer = setTimeout(() => done(false), 2000);
}})"#
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), page.evaluate(expr.as_str())).await {
                Ok(Ok(v)) => {
                    if v.into_value::<bool>().ok() == Some(true) {
                        return;
                    }
                }
                // The document went away: a navigation is under way.
                _ => {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), page.wait_for_navigation())
                            .await;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
        }
    }

    /// Types `text` into `selector` as the user would (trusted input events).
    pub async fn type_into(page: &Page, selector: &str, text: &str) {
        let q = serde_json::to_string(selector).expect("selector");
        let focused: bool = js(page, &format!("(() => {{ const e = document.querySelector({q}); if (!e) return false; e.focus(); return true; }})()")).await;
        assert!(focused, "no {selector}");
        page.execute(InsertTextParams::new(text))
            .await
            .expect("insertText");
    }

    /// Presses Enter in the focused element.
    pub async fn press_enter(page: &Page) {
        let down = DispatchKeyEventParams::builder()
            .r#type(DispatchKeyEventType::KeyDown)
            .key("Enter")
            .code("Enter")
            .windows_virtual_key_code(13)
            .native_virtual_key_code(13)
            .text("\r")
            .build()
            .expect("key");
        let up = DispatchKeyEventParams::builder()
            .r#type(DispatchKeyEventType::KeyUp)
            .key("Enter")
            .code("Enter")
            .windows_virtual_key_code(13)
            .native_virtual_key_code(13)
            .build()
            .expect("key");
        page.execute(down).await.expect("key down");
        page.execute(up).await.expect("key up");
    }

    /// A real mouse click on the first element matching `selector`.
    pub async fn click(page: &Page, selector: &str) {
        let el = tokio::time::timeout(WAIT, page.find_element(selector))
            .await
            .expect("find in time")
            .unwrap_or_else(|e| panic!("no {selector}: {e}"));
        tokio::time::timeout(WAIT, el.click())
            .await
            .expect("click in time")
            .expect("click");
    }

    /// The text of every element matching `selector`.
    pub async fn texts(page: &Page, selector: &str) -> Vec<String> {
        let q = serde_json::to_string(selector).expect("selector");
        js(
            page,
            &format!("[...document.querySelectorAll({q})].map(e => e.textContent)"),
        )
        .await
    }
}

/// Selectors from the 2025 evidence (poe-web.md): what a reader of the page would use.
const PROMPT: &str = r#"textarea[class*="GrowingTextArea_textArea"]"#;
const SEND: &str = r#"button[class*="sendButton"][aria-label="Send message"]"#;
const STOP: &str = r#"button[aria-label="Stop message"][class*="StopButton"]"#;
const BOT_TEXT: &str =
    r#"div[class^="Message_leftSideMessageBubble__"] [class^="Markdown_markdownContainer__"]"#;
const HUMAN_TEXT: &str =
    r#"div[class^="Message_rightSideMessageBubble__"] [class^="Markdown_markdownContainer__"]"#;
const TOAST: &str = r#"[class*="Toast_toast"]"#;

/// `document.querySelector(selector)` as JS.
fn q(selector: &str) -> String {
    format!("document.querySelector({})", json!(selector))
}

/// JS: the last element matching `selector` has exactly `text`.
fn last_text_is(selector: &str, text: &str) -> String {
    format!(
        "(() => {{ const a = document.querySelectorAll({}); return a.length > 0 && a[a.length - 1].textContent === {}; }})()",
        json!(selector),
        json!(text)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn y2025_page_script_in_chromium() {
    use browser::{click, goto, js, press_enter, texts, type_into, wait_for};
    let test = async {
        let d = Double::start(DoubleOptions {
            logged_in: false,
            chunk_delay_ms: 5,
            ..DoubleOptions::default()
        })
        .await
        .unwrap();
        let chromium = browser::Chromium::launch().await;
        let page = chromium.tab().await;
        let base = d.base_url();

        // Signed out: the bot page sends the visitor to sign in; a button there signs in.
        goto(&page, &format!("{base}/GPT-4")).await;
        let at: String = js(&page, "location.pathname + location.search").await;
        assert_eq!(at, "/login?redirect_url=%2FGPT-4");
        assert!(!js::<bool>(&page, &format!("!!{}", q("textarea"))).await);
        click(&page, "button").await;
        wait_for(
            &page,
            "location.pathname === '/GPT-4'",
            "back on the bot page",
        )
        .await;

        // The prompt box comes late, not in a footer; only trusted input enables sending.
        wait_for(&page, &q(PROMPT), "the prompt box").await;
        assert!(!js::<bool>(&page, &format!("!!{}", q("footer textarea"))).await);
        assert!(js::<bool>(&page, &format!("{}.disabled", q(SEND))).await);
        let synthetic = format!(
            "(() => {{ const t = {}; t.value = 'x'; t.dispatchEvent(new Event('input', {{bubbles: true}})); return {}.disabled; }})()",
            q(PROMPT),
            q(SEND)
        );
        assert!(
            js::<bool>(&page, &synthetic).await,
            "a script's input enables nothing"
        );
        js::<bool>(
            &page,
            &format!("(() => {{ {}.value = ''; return true; }})()", q(PROMPT)),
        )
        .await;
        let prompt = "Hello from Chromium ✓";
        type_into(&page, PROMPT, prompt).await;
        assert!(!js::<bool>(&page, &format!("{}.disabled", q(SEND))).await);

        // Enter sends; the page moves to /chat/{code} and shows both bubbles.
        press_enter(&page).await;
        let reply = expected_reply("GPT-4", prompt);
        wait_for(&page, &last_text_is(BOT_TEXT, &reply), "the reply").await;
        let r = d.chats()[0].clone();
        assert!(r.taken());
        let nonce = r.client_nonce.clone().expect("clientNonce");
        assert!(
            nonce.len() == 16 && nonce.chars().all(|c| c.is_ascii_alphanumeric()),
            "{nonce}"
        );
        let path: String = js(&page, "location.pathname").await;
        assert_eq!(path, format!("/chat/{}", r.chat_code));
        assert_eq!(texts(&page, HUMAN_TEXT).await, [prompt]);
        wait_for(
            &page,
            &format!("!{} && !!{}", q(STOP), q(SEND)),
            "send button back",
        )
        .await;

        // A second message continues the chat (a real click this time).
        type_into(&page, PROMPT, "[[turns]]").await;
        click(&page, SEND).await;
        wait_for(
            &page,
            &last_text_is(BOT_TEXT, "Earlier human messages: 1"),
            "turn 2",
        )
        .await;
        let r2 = d.chats()[1].clone();
        assert_eq!((r2.turn, r2.chat_code.as_str()), (2, r.chat_code.as_str()));
        assert_eq!(texts(&page, BOT_TEXT).await.len(), 2);

        // A refusal: a toast with the site's message, no frames, nothing rendered.
        wait_for(&page, &format!("!!{}", q(SEND)), "send button").await;
        type_into(&page, PROMPT, "[[rate-limit-exceeded]] no").await;
        press_enter(&page).await;
        wait_for(&page, &format!("!!{}", q(TOAST)), "the toast").await;
        let toast = texts(&page, TOAST).await.join(" ");
        assert!(toast.contains("too quickly"), "{toast}");
        assert_eq!(d.chats()[2].status, "rate_limit_exceeded");
        assert_eq!(texts(&page, HUMAN_TEXT).await.len(), 2);
        wait_for(
            &page,
            &format!("!{} && !!{}", q(STOP), q(SEND)),
            "send button back",
        )
        .await;

        // Lost updates: the page queries the chat again and renders the reply from that.
        type_into(&page, PROMPT, "[[refetch]] please").await;
        press_enter(&page).await;
        let full = expected_reply("GPT-4", "[[refetch]] please");
        wait_for(&page, &last_text_is(BOT_TEXT, &full), "the refetched reply").await;

        // The stop button while a reply streams; a click stops it.
        wait_for(&page, &format!("!!{}", q(SEND)), "send button").await;
        type_into(&page, PROMPT, "[[slow]] long story").await;
        press_enter(&page).await;
        wait_for(&page, &format!("!!{}", q(STOP)), "the stop button").await;
        click(&page, STOP).await;
        assert!(d.wait_for_stop(&r.chat_id, Duration::from_secs(10)).await);
        let last = d.chats().len() - 1;
        assert_eq!(
            d.wait_for_final(last, Duration::from_secs(10))
                .await
                .as_deref(),
            Some("cancelled")
        );
        wait_for(
            &page,
            &format!("!{} && !!{}", q(STOP), q(SEND)),
            "stop button gone",
        )
        .await;

        // The chat's URL, loaded again, shows the conversation and a prompt box.
        goto(&page, &format!("{base}/chat/{}", r.chat_code)).await;
        wait_for(&page, &q(PROMPT), "the prompt box").await;
        let humans = texts(&page, HUMAN_TEXT).await;
        assert_eq!(humans.len(), 4, "{humans:?}");
        assert_eq!(humans[0], prompt);
        assert_eq!(texts(&page, BOT_TEXT).await[0], reply);

        // The bot list renders every bot of the paginated query.
        goto(&page, &format!("{base}/explore")).await;
        let all = format!(
            "document.querySelectorAll('a[class*=\"BotListItem_botListItem\"]').length === {}",
            BOTS.len()
        );
        wait_for(&page, &all, "the whole bot list").await;
        chromium.close().await;
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("test timed out");
}
