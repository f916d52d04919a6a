//! Tabs, queue, cancellation and slow readers, end to end on the double with real Chromium.

mod common;
mod double;

use std::time::Duration;

use common::{run, within, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions, Mode};
use poed::protocol::{ChatMessage, CompleteRequest, Event};
use poed::ErrorKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn ask(prompt: &str) -> CompleteRequest {
    CompleteRequest {
        conversation: None,
        model: None,
        messages: vec![ChatMessage::new("user", prompt)],
        stream: true,
    }
}

async fn double(chunk_delay_ms: u64) -> Double {
    Double::start(DoubleOptions {
        chunk_delay_ms,
        ..DoubleOptions::default()
    })
    .await
    .expect("double")
}

/// Collects a reply's events; returns (events, streamed text).
async fn collect(mut reply: poed::client::Reply) -> (Vec<Event>, String) {
    let mut events = Vec::new();
    let mut text = String::new();
    while let Some(e) = within(STEP, "event", reply.next()).await {
        match &e {
            Event::Delta { text: d } => text.push_str(d),
            Event::Replace { text: t } => text.clone_from(t),
            _ => {}
        }
        let last = e.is_final();
        events.push(e);
        if last {
            break;
        }
    }
    (events, text)
}

/// Sends `prompts` at once from one client of a 3-tab daemon and checks that each streams
/// and ends with its own reply.
async fn each_its_own_reply(double: &Double, prompts: [&str; 3]) -> Daemon {
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "3"]).await;
    daemon.wait_warm(3).await;
    let client = daemon.client().await;
    let mut replies = Vec::new();
    for p in prompts {
        replies.push(client.complete(ask(p)).await.expect("send"));
    }
    let results = futures::future::join_all(replies.into_iter().map(collect)).await;
    for (prompt, (events, text)) in prompts.iter().zip(results) {
        let expected = expected_reply("GPT-3.5-Turbo", prompt);
        assert_eq!(text, expected, "streamed text of {prompt:?}");
        assert!(
            matches!(events.last(), Some(Event::Done { text, .. }) if *text == expected),
            "{prompt:?} ended with {:?}",
            events.last()
        );
    }
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_parallel_answers_are_correct_and_not_mixed() {
    // Replies of about 0.4 s: long enough that a send slowed by a busy machine (a 2-core
    // one runs three Chromium tabs here) still starts before the first reply ends.
    let double = double(80).await;
    let prompts = ["first question", "second question ✓", "third question"];
    let _daemon = each_its_own_reply(&double, prompts).await;
    let chats = double.chats();
    assert_eq!(chats.len(), 3);
    let mut ids: Vec<_> = chats.iter().map(|c| c.chat_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three different chats (tabs)");
    // They really ran at the same time: every prompt arrived before any reply finished.
    let first_end = chats
        .iter()
        .filter_map(|c| c.frame_times.last().copied())
        .min()
        .expect("frames");
    let t0 = chats[0].received_at;
    let report: Vec<_> = chats
        .iter()
        .map(|c| (c.received_at - t0, c.frame_times.last().map(|f| *f - t0)))
        .collect();
    assert!(
        chats.iter().all(|c| c.received_at < first_end),
        "replies overlapped: {report:?}"
    );
}

/// Starts a double with every chat's frames on every page (its `updates_to_all_pages`)
/// and `opts`, and sends three prompts at once, the first one's bot thinking before its
/// message appears: the other two chats' echoes, replies and repeats reach its page in
/// between, and every page sees the others' replies start while it sends. Each must
/// stream its own reply.
async fn three_on_an_account_wide_channel(opts: DoubleOptions) -> (Double, Daemon) {
    let double = Double::start(DoubleOptions {
        chunk_delay_ms: 40,
        updates_to_all_pages: true,
        ..opts
    })
    .await
    .expect("double");
    let prompts = [
        "first question [[think]]",
        "second question",
        "third question",
    ];
    let daemon = each_its_own_reply(&double, prompts).await;
    (double, daemon)
}

/// Each reply was told apart by what its own send and the site's answer said, not by a
/// guess.
fn told_apart(daemon: &Daemon) {
    let log = daemon.log();
    assert!(!log.contains("send request was not seen"), "{log}");
    assert!(!log.contains("taking the newest prompt"), "{log}");
}

/// On an account-wide update channel every page gets the frames of every chat: each
/// request still streams its own reply, told by its send's nonce (2025) or chat (2023).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_of_other_chats_on_an_account_wide_channel_are_not_taken() {
    let (double, daemon) = three_on_an_account_wide_channel(DoubleOptions::default()).await;
    a_fourth_takes_its_own(&double, &daemon).await;
}

/// A request sent after [`three_on_an_account_wide_channel`], while the others' late
/// repeats still arrive, takes its own reply too; each prompt reached the site once, and
/// each reply was told apart by what its send and the site's answer said.
async fn a_fourth_takes_its_own(double: &Double, daemon: &Daemon) {
    let client = daemon.client().await;
    let (events, text) =
        collect(client.complete(ask("fourth question")).await.expect("send")).await;
    assert_eq!(text, expected_reply("GPT-3.5-Turbo", "fourth question"));
    assert!(matches!(events.last(), Some(Event::Done { .. })));
    assert_eq!(double.chats().len(), 4, "each prompt reached the site once");
    told_apart(daemon);
}

/// The same where the site's echoes carry no client nonce and a new chat's send names no
/// chat: each prompt's echo is told by the site's answer to its send (the prompt's message
/// and chat), which a reply waits for rather than guessing the newest prompt its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nonces_in_echoes_the_answer_to_each_send_tells_its_reply() {
    let (double, daemon) = three_on_an_account_wide_channel(DoubleOptions {
        mode: Mode::Y2025,
        echo_nonce: false,
        ..DoubleOptions::default()
    })
    .await;
    assert_eq!(double.chats().len(), 3, "each prompt reached the site once");
    told_apart(&daemon);
}

/// A site whose message ids tell nothing of time (random numbers): on an account-wide
/// channel each request still streams its own reply, the one that starts after its echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_in_no_order_still_give_each_request_its_reply() {
    let (double, daemon) = three_on_an_account_wide_channel(DoubleOptions {
        unordered_message_ids: true,
        ..DoubleOptions::default()
    })
    .await;
    a_fourth_takes_its_own(&double, &daemon).await;
    let log = daemon.log();
    assert!(
        !log.contains("from the page"),
        "each reply streamed from its frames, none was read back\n{log}"
    );
}

/// Two warm tabs whose page load after a reply may wait for other replies as long as they
/// take (10 minutes): only their end, or a request waiting for a tab, starts the load.
async fn two_tabs_waiting_long_to_refresh() -> (Double, Daemon) {
    let double = double(20).await;
    let daemon = Daemon::start_with_config(
        &double.base_url(),
        "[pool]\nrefresh_wait_ms = 600000\n",
        &["--tabs", "2"],
    )
    .await;
    daemon.wait_warm(2).await;
    (double, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_loads_its_next_page_only_once_the_other_replies_have_ended() {
    let (double, daemon) = two_tabs_waiting_long_to_refresh().await;
    let client = daemon.client().await;
    let (short, long) = ("short one", "[[long]] one");
    let a = client.complete(ask(short)).await.expect("send");
    let b = client.complete(ask(long)).await.expect("send");
    let ((_, a_text), (_, b_text)) = futures::future::join(collect(a), collect(b)).await;
    assert_eq!(a_text, expected_reply("GPT-3.5-Turbo", short));
    assert_eq!(b_text, expected_reply("GPT-3.5-Turbo", long));
    // Both tabs get their fresh page again.
    daemon.wait_warm(2).await;
    let chats = double.chats();
    let end_of = |prompt: &str| {
        chats
            .iter()
            .find(|c| c.prompt == prompt)
            .and_then(|c| c.frame_times.last().copied())
            .expect("the reply's frames")
    };
    let (a_end, b_end) = (end_of(short), end_of(long));
    assert!(a_end < b_end, "the short reply ended first");
    let loads = double.page_loads();
    let between = loads.iter().filter(|t| a_end < **t && **t < b_end).count();
    let after = loads.iter().filter(|t| b_end < **t).count();
    assert_eq!(
        (between, after),
        (0, 2),
        "no page load while the long reply streamed, both tabs' loads after it \
         (the long reply took {:?} more)",
        b_end - a_end
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_tab_does_not_wait_for_other_replies_to_end() {
    let (double, daemon) = two_tabs_waiting_long_to_refresh().await;
    let client = daemon.client().await;
    // One reply that never ends, one that does; then a request that needs the second tab.
    let stalled = client
        .complete(ask("[[stall]] keeps a tab"))
        .await
        .expect("send");
    double.wait_for_chats(1, STEP).await;
    let (_, text) = collect(client.complete(ask("first")).await.expect("send")).await;
    assert_eq!(text, expected_reply("GPT-3.5-Turbo", "first"));
    let (events, text) = within(
        Duration::from_secs(30),
        "the waiting request's answer (its tab's page load must not wait for the stalled reply)",
        async { collect(client.complete(ask("second")).await.expect("send")).await },
    )
    .await;
    assert_eq!(
        text,
        expected_reply("GPT-3.5-Turbo", "second"),
        "{events:?}"
    );
    client.cancel(&stalled.id).await.expect("cancel");
    let prompts: Vec<String> = double.chats().iter().map(|c| c.prompt.clone()).collect();
    assert_eq!(prompts, ["[[stall]] keeps a tab", "first", "second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_fifo_reports_positions_and_answers_busy_when_full() {
    let double = double(20).await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1", "--queue", "2"]).await;
    let client = daemon.client().await;

    let mut a = client.complete(ask("[[slow]] A")).await.expect("send");
    let chats = double.wait_for_chats(1, STEP).await;
    let a_chat = chats[0].chat_id.clone();
    let mut b = client.complete(ask("B waits")).await.expect("send");
    let mut c = client.complete(ask("C waits")).await.expect("send");
    assert_eq!(
        within(STEP, "b queued", b.next()).await,
        Some(Event::Queued { position: 1 })
    );
    assert_eq!(
        within(STEP, "c queued", c.next()).await,
        Some(Event::Queued { position: 2 })
    );
    // The queue is full: an immediate `busy`, not a hang.
    let err = within(Duration::from_secs(5), "busy", async {
        client
            .complete(ask("D"))
            .await
            .expect("send")
            .finish()
            .await
    })
    .await
    .expect_err("busy");
    assert_eq!(err.kind(), Some(ErrorKind::Busy));

    // Cancelling the running request presses stop on the site and frees the tab for B.
    client.cancel(&a.id).await.expect("cancel acknowledged");
    assert!(
        double.wait_for_stop(&a_chat, STEP).await,
        "the double saw the stop"
    );
    let (events, _) = collect_rest(&mut a).await;
    assert!(
        matches!(
            events.last(),
            Some(Event::Error {
                kind: ErrorKind::Cancelled,
                ..
            })
        ),
        "{events:?}"
    );
    let (b_events, b_text) = collect(b).await;
    assert_eq!(
        b_text,
        expected_reply("GPT-3.5-Turbo", "B waits"),
        "{b_events:?}"
    );
    let (_, c_text) = collect(c).await;
    assert_eq!(c_text, expected_reply("GPT-3.5-Turbo", "C waits"));
    let order: Vec<String> = double.chats().iter().map(|c| c.prompt.clone()).collect();
    assert_eq!(order, ["[[slow]] A", "B waits", "C waits"]);
}

async fn collect_rest(reply: &mut poed::client::Reply) -> (Vec<Event>, ()) {
    let mut events = Vec::new();
    while let Some(e) = within(STEP, "event", reply.next()).await {
        let last = e.is_final();
        events.push(e);
        if last {
            break;
        }
    }
    (events, ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_that_is_cancelled_just_leaves_the_queue() {
    let double = double(20).await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    let client = daemon.client().await;
    let a = client
        .complete(ask("[[slow]] running"))
        .await
        .expect("send");
    double.wait_for_chats(1, STEP).await;
    let mut b = client
        .complete(ask("queued then cancelled"))
        .await
        .expect("send");
    assert_eq!(
        within(STEP, "queued", b.next()).await,
        Some(Event::Queued { position: 1 })
    );
    client.cancel(&b.id).await.expect("cancel");
    let (events, _) = collect_rest(&mut b).await;
    assert!(matches!(
        events.last(),
        Some(Event::Error {
            kind: ErrorKind::Cancelled,
            ..
        })
    ));
    client.cancel(&a.id).await.expect("cancel a");
    // The next request runs; the cancelled one never reached the site.
    let (_, text) = collect(client.complete(ask("after")).await.expect("send")).await;
    assert_eq!(text, expected_reply("GPT-3.5-Turbo", "after"));
    let prompts: Vec<String> = double.chats().iter().map(|c| c.prompt.clone()).collect();
    assert_eq!(prompts, ["[[slow]] running", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_stops_the_reply_and_the_tab_serves_the_next() {
    let double = double(20).await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    {
        let client = daemon.client().await;
        let mut reply = client
            .complete(ask("[[slow]] then hang up"))
            .await
            .expect("send");
        // Wait until text streams, then drop the connection.
        common::until_text(&mut reply).await;
    }
    let chat = double.chats()[0].chat_id.clone();
    assert!(
        double.wait_for_stop(&chat, STEP).await,
        "disconnect pressed stop on the site"
    );
    let out = run(daemon.poectl(&["ask", "next one"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, expected_reply("GPT-3.5-Turbo", "next one"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poectl_cancels_on_ctrl_c() {
    let double = double(20).await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    let child = daemon
        .poectl(&["ask", "[[slow]] interrupted"])
        .spawn()
        .expect("poectl");
    let chats = double.wait_for_chats(1, STEP).await;
    let pid = child.id().expect("pid") as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = within(STEP, "poectl exit", child.wait_with_output())
        .await
        .expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(double.wait_for_stop(&chats[0].chat_id, STEP).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_blocks_nobody_and_still_gets_the_exact_text() {
    let double = double(5).await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "2"]).await;
    // A raw client that asks for the 100 KB reply and does not read while it streams.
    let stream = tokio::net::UnixStream::connect(&daemon.socket)
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"{\"id\":1,\"type\":\"complete\",\"messages\":[{\"role\":\"user\",\"content\":\"[[long]] slow reader\"}]}\n")
        .await
        .expect("write");
    double.wait_for_chats(1, STEP).await;
    // Meanwhile another client is served normally.
    let out = run(daemon.poectl(&["ask", "meanwhile"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, expected_reply("GPT-3.5-Turbo", "meanwhile"));
    // Wait until the site finished the long reply, then read everything.
    let long_chat = double.chats()[0].chat_id.clone();
    within(STEP, "long reply finished", async {
        loop {
            let done = double
                .chats()
                .iter()
                .any(|c| c.chat_id == long_chat && c.final_state.is_some());
            if done {
                break;
            }
            double
                .wait_for_chats(usize::MAX, Duration::from_millis(200))
                .await;
        }
    })
    .await;
    let mut lines = BufReader::new(read).lines();
    let mut text = String::new();
    let mut deltas = 0;
    loop {
        let line = within(STEP, "line", lines.next_line())
            .await
            .expect("read")
            .expect("line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        match v["event"].as_str() {
            Some("delta") => {
                deltas += 1;
                text.push_str(v["text"].as_str().expect("text"));
            }
            Some("replace") => text = v["text"].as_str().expect("text").to_owned(),
            Some("done") => {
                assert_eq!(v["text"].as_str(), Some(text.as_str()));
                break;
            }
            Some("error") => panic!("{v}"),
            _ => {}
        }
    }
    assert_eq!(
        text,
        expected_reply("GPT-3.5-Turbo", "[[long]] slow reader")
    );
    assert!(deltas >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_of_the_account_keep_the_minimum_interval() {
    let double = double(10).await;
    let daemon = Daemon::start(
        &double.base_url(),
        &["--tabs", "2", "--min-send-interval-ms", "700"],
    )
    .await;
    daemon.wait_warm(2).await;
    let client = daemon.client().await;
    let a = client.complete(ask("one")).await.expect("send");
    let b = client.complete(ask("two")).await.expect("send");
    let (ra, rb) = futures::future::join(a.finish(), b.finish()).await;
    ra.expect("a");
    rb.expect("b");
    let chats = double.chats();
    let gap = chats[1].received_at.duration_since(chats[0].received_at);
    assert!(gap >= Duration::from_millis(600), "sends {gap:?} apart");
}
