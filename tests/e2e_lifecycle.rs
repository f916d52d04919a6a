//! The life of a request, end to end on real Chromium and the double: a cancel before the
//! send keeps the prompt from the site (after it, the reply is stopped); a client that went
//! away or stops reading is noticed and its requests end; a bug in one request costs only
//! that request; sign-in and cookie import run one at a time and can be cancelled; bad
//! settings are refused at start.

mod common;
mod double;

use std::time::{Duration, Instant};

use common::{run, within, Daemon, STEP};
use double::{Double, DoubleOptions};
use poed::protocol::{ChatMessage, CompleteRequest, Event};
use poed::ErrorKind;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

fn ask(model: Option<&str>, prompt: &str) -> CompleteRequest {
    CompleteRequest {
        conversation: None,
        model: model.map(str::to_owned),
        messages: vec![ChatMessage::new("user", prompt)],
        stream: true,
    }
}

async fn fast_double() -> Double {
    Double::start(DoubleOptions {
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    })
    .await
    .expect("double")
}

/// A raw protocol connection, past its hello line.
async fn raw(
    daemon: &Daemon,
) -> (
    BufReader<tokio::net::unix::OwnedReadHalf>,
    tokio::net::unix::OwnedWriteHalf,
) {
    let stream = within(
        Duration::from_secs(5),
        "connect",
        UnixStream::connect(&daemon.socket),
    )
    .await
    .expect("connect");
    let (r, w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut hello = String::new();
    within(Duration::from_secs(5), "hello", r.read_line(&mut hello))
        .await
        .expect("hello");
    assert!(hello.contains("\"hello\""), "{hello}");
    (r, w)
}

/// Reads lines until one has `"event":"<event>"`.
async fn until_event(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>, event: &str) -> String {
    let needle = format!("\"event\":\"{event}\"");
    loop {
        let mut line = String::new();
        let n = within(STEP, event, r.read_line(&mut line))
            .await
            .expect("read");
        assert!(n > 0, "connection closed before {event}");
        if line.contains(&needle) {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_before_the_send_keeps_the_prompt_from_the_site_after_it_stops_the_reply() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    daemon.wait_warm(3).await;
    let client = daemon.client().await;
    let mut before = Vec::new();
    let mut after = Vec::new();
    // Cold requests (gpt-4: no tab is warm for it, so the chat opens first) and warm ones,
    // cancelled at moments spread over opening the chat, entering the prompt and the reply.
    // The last two are certain to fall on each side of the send: at once, and right after
    // the `sent` event; the others fall where the machine's speed puts them.
    for i in 0..16u64 {
        let cold = i % 2 == 0;
        let model = cold.then_some("gpt-4");
        let prompt = format!("cancel test {i} [[slow]]");
        let mut reply = client.complete(ask(model, &prompt)).await.expect("send");
        let delay = Duration::from_millis(if cold { i * 60 } else { i * 15 });
        let mut events = Vec::new();
        let until_sent = i == 15;
        let wait = if i == 14 {
            Duration::ZERO
        } else if until_sent {
            STEP
        } else {
            delay
        };
        let _ = tokio::time::timeout(wait, async {
            while let Some(e) = reply.next().await {
                let last = e.is_final();
                let sent = matches!(e, Event::Sent);
                events.push(e);
                if last || (until_sent && sent) {
                    return;
                }
            }
        })
        .await;
        client.cancel(&reply.id).await.expect("cancel answered");
        loop {
            let e = within(STEP, "final event", reply.next())
                .await
                .expect("a final event");
            let last = e.is_final();
            events.push(e);
            if last {
                break;
            }
        }
        let saw_sent = events.iter().any(|e| matches!(e, Event::Sent));
        match events.last() {
            Some(Event::Error {
                kind: ErrorKind::Cancelled,
                sent: Some(sent),
                ..
            }) => {
                assert_eq!(
                    *sent, saw_sent,
                    "the error's `sent` matches the events: {events:?}"
                );
                if *sent {
                    after.push(prompt);
                } else {
                    before.push(prompt);
                }
            }
            other => panic!("expected a cancelled error with `sent`, got {other:?}"),
        }
    }
    assert!(
        !before.is_empty() && !after.is_empty(),
        "both cases happened: before {before:?}, after {after:?}"
    );
    // Every request is over: what the site received is final (a click cannot come later).
    daemon.wait_warm(3).await;
    let chats = double.chats();
    for prompt in &before {
        assert!(
            !chats.iter().any(|c| &c.prompt == prompt),
            "{prompt:?} was cancelled before its send but reached the site"
        );
    }
    for prompt in &after {
        let sent: Vec<_> = chats.iter().filter(|c| &c.prompt == prompt).collect();
        assert_eq!(sent.len(), 1, "{prompt:?} reached the site once");
        assert!(
            double
                .wait_for_stop(&sent[0].chat_id, Duration::from_secs(5))
                .await,
            "{prompt:?} was stopped on the site"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_without_reading_cancels_its_non_streaming_request_within_two_seconds() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    daemon.wait_warm(1).await;
    let (mut r, mut w) = raw(&daemon).await;
    let prompt = "gone client [[slow]]";
    let line = serde_json::json!({"id": 1, "type": "complete", "stream": false,
        "messages": [{"role": "user", "content": prompt}]});
    w.write_all(format!("{line}\n").as_bytes())
        .await
        .expect("write");
    until_event(&mut r, "sent").await;
    let chats = double.wait_for_chats(1, STEP).await;
    let chat = chats
        .iter()
        .find(|c| c.prompt == prompt)
        .expect("the prompt reached the site")
        .chat_id
        .clone();
    // The client dies: nothing was going to be written to it before `done`.
    let gone = Instant::now();
    drop(r);
    drop(w);
    assert!(
        double
            .wait_for_stop(&chat, Duration::from_millis(2500))
            .await,
        "the reply was not stopped within 2 s of the client going away"
    );
    assert!(gone.elapsed() < Duration::from_millis(2500));
    // The daemon goes on.
    let client = daemon.client().await;
    let done = client
        .complete(ask(None, "after a gone client"))
        .await
        .expect("send")
        .finish()
        .await;
    assert!(matches!(done, Ok(Event::Done { .. })), "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_disconnected_and_the_daemon_goes_on() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    daemon.wait_warm(3).await;
    let stream = UnixStream::connect(&daemon.socket).await.expect("connect");
    let (mut r, mut w) = stream.into_split();
    // Far more reply text than the socket buffers hold, and never a read.
    for id in 0..8 {
        let line = serde_json::json!({"id": id, "type": "complete",
            "messages": [{"role": "user", "content": format!("flood {id} [[long]]")}]});
        w.write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
    }

    // Meanwhile others are served.
    let client = daemon.client().await;
    let done = client
        .complete(ask(None, "while one does not read"))
        .await
        .expect("send")
        .finish()
        .await;
    assert!(matches!(done, Ok(Event::Done { .. })), "{done:?}");
    // The stimulus: this client reads nothing for longer than the daemon's write limit,
    // counted from when every flood reply was written by the site (so the daemon had far
    // more to write than the socket holds, however slow the machine).
    within(STEP, "the flood replies are written", async {
        loop {
            let chats = double.wait_for_chats(8, STEP).await;
            let floods: Vec<_> = chats
                .iter()
                .filter(|c| c.prompt.starts_with("flood "))
                .collect();
            if floods.len() == 8 && floods.iter().all(|c| c.final_state.is_some()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let silent = poed::daemon::ipc_server::WRITE_LIMIT + Duration::from_secs(3);
    tokio::time::sleep(silent).await;
    // The daemon gave up on it and closed the connection: reading now drains what was
    // buffered and then ends (an open connection would keep the read waiting).
    let mut sink = Vec::new();
    within(
        Duration::from_secs(30),
        "the daemon closed the connection",
        r.read_to_end(&mut sink),
    )
    .await
    .expect("read");
    assert!(daemon.log().contains("did not read"), "the log says why");
    let status = client.status().await.expect("status");
    assert_eq!(status.pool.tabs, 3, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bug_in_one_request_gives_internal_and_costs_nothing_else() {
    let double = fast_double().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile");
    let socket = dir.path().join("run").join("poed.sock");
    let daemon = Daemon::start_with_env(
        dir,
        profile,
        socket,
        &double.base_url(),
        &[],
        &[("POED_TEST_PANIC_ON", "[[panic-here]]")],
    )
    .await;
    daemon.wait_warm(3).await;
    let client = daemon.client().await;
    for _ in 0..2 {
        let e = client
            .complete(ask(None, "boom [[panic-here]]"))
            .await
            .expect("send")
            .finish()
            .await
            .expect_err("internal");
        assert_eq!(e.kind(), Some(ErrorKind::Internal), "{e}");
    }
    assert!(
        double.chats().is_empty(),
        "the panicking requests sent nothing"
    );
    let done = client
        .complete(ask(None, "after the bug"))
        .await
        .expect("send")
        .finish()
        .await;
    assert!(matches!(done, Ok(Event::Done { .. })), "{done:?}");
    // The tabs the panicking requests held are replaced: the pool is whole again.
    daemon.wait_warm(3).await;
    let status = client.status().await.expect("status");
    assert_eq!((status.pool.tabs, status.pool.idle), (3, 3), "{status:?}");
    assert_eq!(status.requests.get("internal"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_imports_run_one_at_a_time_and_can_be_cancelled() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    daemon.wait_warm(1).await;
    let client = daemon.client().await;
    // The only tab is busy with a reply that never ends: an import has to wait for it.
    let mut hog = client
        .complete(ask(None, "hog [[stall]]"))
        .await
        .expect("send");
    common::until_text(&mut hog).await;
    let (mut r, mut w) = raw(&daemon).await;
    let cookie =
        serde_json::json!({"name": "p-b", "value": "abc", "domain": "127.0.0.1", "path": "/"});
    for id in ["one", "two"] {
        let line = serde_json::json!({"id": id, "type": "import_cookies", "cookies": [cookie]});
        w.write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
    }
    // Whichever came second gets `busy`; the other waits for the tab and is cancelled.
    let busy = until_event(&mut r, "error").await;
    assert!(busy.contains("\"busy\""), "{busy}");
    let running = if busy.contains("\"one\"") {
        "two"
    } else {
        "one"
    };
    let t0 = Instant::now();
    let cancel = serde_json::json!({"id": "c", "type": "cancel", "target": running});
    w.write_all(format!("{cancel}\n").as_bytes())
        .await
        .expect("write");
    let cancelled = until_event(&mut r, "error").await;
    assert!(
        cancelled.contains(&format!("\"{running}\"")) && cancelled.contains("\"cancelled\""),
        "{cancelled}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    client.cancel(&hog.id).await.expect("cancel the hog");
    // The import can run again once the first is gone, and the pool is whole.
    let (count, _) = within(
        STEP,
        "import",
        client.import_cookies(vec![serde_json::from_value(cookie).expect("cookie")]),
    )
    .await
    .expect("import");
    assert_eq!(count, 1);
    daemon.wait_warm(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_cannot_work_are_refused_at_start_with_the_key_named() {
    for (flags, key) in [
        (vec!["--reply-timeout", "1e20"], "reply_secs"),
        (vec!["--idle-timeout", "NaN"], "idle_secs"),
        (vec!["--tabs", "0"], "pool.tabs"),
    ] {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_poed"));
        cmd.args([
            "--config",
            "/dev/null",
            "--socket",
            "/nonexistent/poed.sock",
        ])
        .args(&flags)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        let out = run(cmd).await;
        assert_ne!(out.code, 0, "{flags:?} was accepted");
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(out.stderr.contains(key), "{flags:?}: {}", out.stderr);
    }
}
