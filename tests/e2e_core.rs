//! End to end on the Poe double: the real `poed` and `poectl` binaries, real Chromium.
//!
//! Each test starts its own double and daemon (temporary socket and profile) and is bounded
//! in time; the daemon's log is printed when a test fails.

mod common;
mod double;

use std::time::{Duration, Instant};

use common::{run, within, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions};
use poed::client::ClientError;
use poed::protocol::{ChatMessage, CompleteRequest, Event};
use poed::ErrorKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn fast() -> DoubleOptions {
    DoubleOptions {
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    }
}

fn ask(prompt: &str, model: Option<&str>) -> CompleteRequest {
    CompleteRequest {
        conversation: None,
        model: model.map(str::to_owned),
        messages: vec![ChatMessage::new("user", prompt)],
        stream: true,
    }
}

/// Applies a reply's events as a client would; returns (streamed text, final event).
async fn collect(mut reply: poed::client::Reply) -> (String, Event) {
    let mut text = String::new();
    while let Some(event) = within(STEP, "reply event", reply.next()).await {
        match event {
            Event::Delta { text: d } => text.push_str(&d),
            Event::Replace { text: t } => text = t,
            e if e.is_final() => return (text, e),
            _ => {}
        }
    }
    panic!("connection closed before the final event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poectl_streams_answers_byte_for_byte_several_in_a_row() {
    let double = Double::start(fast()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    // Only the user may talk to the daemon.
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&daemon.socket), 0o600, "socket mode");
    assert_eq!(
        mode(daemon.socket.parent().expect("dir")),
        0o700,
        "socket directory mode"
    );

    for prompt in [
        "Hello there",
        "Please [[unicode]] now",
        "Give me [[long]] text",
        "Two\nlines with \"quotes\" and \\ backslash 😀",
    ] {
        let out = run(daemon.poectl(&["ask", prompt])).await;
        assert_eq!(out.code, 0, "stderr: {}\n{}", out.stderr, daemon.log());
        assert_eq!(
            out.stdout,
            expected_reply("GPT-3.5-Turbo", prompt),
            "reply to {prompt:?}"
        );
    }
    // What the site received is exactly what was asked, each in a fresh chat.
    let chats = double.chats();
    assert_eq!(chats.len(), 4);
    assert_eq!(
        chats[3].prompt,
        "Two\nlines with \"quotes\" and \\ backslash 😀"
    );
    let mut ids: Vec<_> = chats.iter().map(|c| c.chat_id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every request gets a fresh chat");

    // Model choice reaches the right bot page; stdin prompt; --no-stream.
    let mut cmd = daemon.poectl(&["ask", "-m", "gpt-4", "--no-stream"]);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all("from stdin ✓".as_bytes())
        .await
        .expect("write");
    drop(stdin);
    let out = within(STEP, "poectl", child.wait_with_output())
        .await
        .expect("output");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected_reply("GPT-4", "from stdin ✓")
    );
    assert_eq!(double.chats()[4].bot, "GPT-4");

    let status = daemon.stop().await;
    assert!(status.success(), "poed exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_message_is_formatted_like_the_original_provider() {
    let double = Double::start(fast()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let out = run(daemon.poectl(&["ask", "--system", "Be brief.", "What is 2+2?"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let sent = "System: Be brief.\nUser: What is 2+2?\nAssistant:";
    assert_eq!(double.chats()[0].prompt, sent);
    assert_eq!(out.stdout, expected_reply("GPT-3.5-Turbo", sent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_missed_messages_and_json_events() {
    let double = Double::start(fast()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let client = daemon.client().await;

    // A rewrite that is not a prefix: the client still ends with the site's final text.
    let prompt = "[[rewrite]] please";
    let (streamed, done) = collect(client.complete(ask(prompt, None)).await.expect("send")).await;
    let expected = expected_reply("GPT-3.5-Turbo", prompt);
    assert_eq!(streamed, expected);
    match done {
        Event::Done {
            text,
            model,
            bot,
            timings,
            conversation,
            continued,
            reason,
        } => {
            assert_eq!(text, expected);
            // A first message: a new conversation, in a new chat.
            assert!(conversation.is_some() && !continued && reason.is_none());
            assert_eq!(
                (model.as_str(), bot.as_str()),
                ("gpt-3.5-turbo", "GPT-3.5-Turbo")
            );
            assert!(timings.first_token_ms.is_some());
            assert!(timings.total_ms >= timings.first_token_ms.unwrap_or(0));
        }
        other => panic!("expected done, got {other:?}"),
    }

    // missed_messages in the middle: later cumulative frames still complete the reply.
    let prompt = "[[missed]] go";
    let (streamed, _) = collect(client.complete(ask(prompt, None)).await.expect("send")).await;
    assert_eq!(streamed, expected_reply("GPT-3.5-Turbo", prompt));

    // --json prints protocol events, ending with done.
    let out = run(daemon.poectl(&["ask", "--json", "json please"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(events.last().expect("events")["event"], "done");
    assert!(events.iter().any(|e| e["event"] == "delta"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_have_stable_kinds_and_the_daemon_keeps_serving() {
    let double = Double::start(fast()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;

    // Unknown model: exit code 1, the kind and the known models on stderr.
    let out = run(daemon.poectl(&["ask", "-m", "gpt-9", "hi"])).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("unknown_model"), "{}", out.stderr);
    assert!(out.stderr.contains("gpt-4"), "{}", out.stderr);
    assert!(
        double.chats().is_empty(),
        "nothing was sent for an unknown model"
    );

    let client = daemon.client().await;
    // error_* state -> site_error carrying the state.
    let err = client
        .complete(ask("[[error]]", None))
        .await
        .expect("send")
        .finish()
        .await
        .expect_err("site error");
    match err {
        ClientError::Request(e) => {
            assert_eq!(e.kind, ErrorKind::SiteError);
            assert_eq!(e.state.as_deref(), Some("error_user_message_too_long"));
        }
        other => panic!("unexpected {other:?}"),
    }

    // The site itself cancelling is a site error too.
    let err = client
        .complete(ask("[[cancelled]]", None))
        .await
        .expect("send")
        .finish()
        .await
        .expect_err("site cancelled");
    assert_eq!(err.kind(), Some(ErrorKind::SiteError));

    // A stall: `stalled` within the idle timeout (3 s in tests), not the reply timeout.
    let started = Instant::now();
    let err = client
        .complete(ask("[[stall]]", None))
        .await
        .expect("send")
        .finish()
        .await
        .expect_err("stalled");
    assert_eq!(err.kind(), Some(ErrorKind::Stalled));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "took {took:?}"
    );

    // Still serving after all that.
    let ok = client
        .complete(ask("still there?", None))
        .await
        .expect("send")
        .finish()
        .await
        .expect("answer");
    assert!(
        matches!(ok, Event::Done { ref text, .. } if *text == expected_reply("GPT-3.5-Turbo", "still there?"))
    );

    // poectl status and models work and report what happened.
    let out = run(daemon.poectl(&["status", "--json"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("status json");
    assert_eq!(status["browser"]["state"], "up");
    assert_eq!(status["account"]["state"], "signed_in");
    assert_eq!(status["requests"]["stalled"], 1);
    assert_eq!(status["requests"]["site_error"], 2);
    let out = run(daemon.poectl(&["models"])).await;
    assert!(out.stdout.contains("gpt-3.5-turbo") && out.stdout.contains("(default)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_out_and_daily_limit_have_their_own_kinds() {
    let double = Double::start(DoubleOptions {
        logged_in: false,
        ..fast()
    })
    .await
    .expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let out = run(daemon.poectl(&["ask", "hi"])).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not_logged_in"), "{}", out.stderr);
    assert!(
        out.stderr.contains("sign in"),
        "the message says how: {}",
        out.stderr
    );

    double.set_logged_in(true);
    double.set_daily_limit(true);
    let out = run(daemon.poectl(&["ask", "hi"])).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("daily_limit"), "{}", out.stderr);
    // 2023: the page keeps the send button off; 2025: the site refuses the send. Either
    // way the site took nothing.
    assert!(double.taken().is_empty(), "the site took nothing");

    double.set_daily_limit(false);
    let out = run(daemon.poectl(&["ask", "now it works"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, expected_reply("GPT-3.5-Turbo", "now it works"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_get_error_replies_on_a_connection_that_stays_usable() {
    let double = Double::start(fast()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    let stream = tokio::net::UnixStream::connect(&daemon.socket)
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let hello = next_json(&mut lines).await;
    assert_eq!(hello["event"], "hello");
    assert_eq!(hello["protocol"], 1);

    let huge = format!(
        "{{\"id\":1,\"type\":\"status\",\"pad\":\"{}\"}}\n",
        "x".repeat(2 << 20)
    );
    let garbage = "this is not json\n{\"id\":2}\n{\"id\":3,\"type\":\"launch\"}\n";
    write.write_all(huge.as_bytes()).await.expect("write");
    write.write_all(garbage.as_bytes()).await.expect("write");
    write
        .write_all(b"{\"id\":4,\"type\":\"complete\",\"messages\":[]}\n{\"id\":5,\"type\":\"cancel\",\"target\":99}\n{\"id\":6,\"type\":\"status\"}\n")
        .await
        .expect("write");

    let e = next_json(&mut lines).await;
    assert_eq!(
        (e["event"].as_str(), e["kind"].as_str()),
        (Some("error"), Some("request_too_large"))
    );
    let e = next_json(&mut lines).await;
    assert_eq!(e["kind"], "bad_request");
    assert!(e.get("id").is_none());
    let e = next_json(&mut lines).await;
    assert_eq!(
        (e["id"].as_i64(), e["kind"].as_str()),
        (Some(2), Some("bad_request"))
    );
    assert!(e["message"].as_str().unwrap_or("").contains("type"));
    let e = next_json(&mut lines).await;
    assert_eq!(
        (e["id"].as_i64(), e["kind"].as_str()),
        (Some(3), Some("bad_request"))
    );
    // The remaining three answer in any order (4 runs in a task).
    let mut rest: Vec<serde_json::Value> = Vec::new();
    for _ in 0..3 {
        rest.push(next_json(&mut lines).await);
    }
    rest.sort_by_key(|v| v["id"].as_i64());
    assert_eq!(
        (rest[0]["id"].as_i64(), rest[0]["kind"].as_str()),
        (Some(4), Some("bad_request"))
    );
    assert_eq!(
        (rest[1]["id"].as_i64(), rest[1]["kind"].as_str()),
        (Some(5), Some("not_found"))
    );
    assert_eq!(
        (rest[2]["id"].as_i64(), rest[2]["event"].as_str()),
        (Some(6), Some("status"))
    );

    // The daemon still answers questions, on a new connection too.
    let out = run(daemon.poectl(&["ask", "after the garbage"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        expected_reply("GPT-3.5-Turbo", "after the garbage")
    );
}

async fn next_json(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> serde_json::Value {
    let line = within(Duration::from_secs(10), "reply line", lines.next_line())
        .await
        .expect("read")
        .expect("line");
    serde_json::from_str(&line).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poectl_without_a_daemon_says_how_to_start_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run({
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_poectl"));
        cmd.args(["ask", "hi"])
            .env("POED_SOCKET", dir.path().join("none.sock"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    })
    .await;
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("not running") && out.stderr.contains("systemctl --user start poed"),
        "{}",
        out.stderr
    );
}
