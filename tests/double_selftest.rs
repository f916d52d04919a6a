//! Self-test of the local Poe double without Chromium: raw HTTP for the pages and the
//! GraphQL endpoint, a plain WebSocket client for the update socket. It checks the markup
//! contract of `shared/poe-web.md` and the frames the double streams, so an end-to-end failure
//! can be pinned on poed rather than on its stand-in for poe.com.

mod double;

use std::time::Duration;

use double::{expected_reply, Double, DoubleOptions, Mode};
use futures::StreamExt;
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
        let (b, _) = open_page(&d, "Some-Custom-Bot", &[]).await;
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
        let d = Double::start(fast()).await.unwrap();
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
