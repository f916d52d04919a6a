//! Conversations going on in the site chat of their earlier turns, end to end on the double
//! (its 2025 picture: chats live at `/chat/{code}`) with real Chromium and the real binaries:
//! only the new message reaches the site, in the same chat; an edited turn or another model
//! starts a new chat; a restart keeps the continuation (a cold chat page); a deleted chat
//! falls back to a fresh one with the whole history and says so; a conversation may be
//! named; one conversation serves one request at a time; a turn that failed after reaching
//! the site is left out, in a fresh chat.
//!
//! The double's `[[turns]]` answer counts the human messages its chat had before the
//! prompt, so the answers show what the site saw. Every test is bounded in time.

mod common;
mod double;

use std::time::Duration;

use common::{run, within, Daemon, STEP};
use double::{Double, DoubleOptions, Mode};
use poed::client::Client;
use poed::protocol::{ChatMessage, CompleteRequest, Event};

fn site() -> DoubleOptions {
    DoubleOptions {
        mode: Mode::Y2025,
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    }
}

fn m(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

fn turns(n: usize) -> String {
    format!("Earlier human messages: {n}")
}

/// What `done` said of a request.
#[derive(Debug)]
struct Done {
    text: String,
    conversation: Option<i64>,
    continued: bool,
    reason: Option<String>,
}

/// Sends one `complete` and waits for its final event.
async fn complete(
    client: &Client,
    model: Option<&str>,
    messages: Vec<ChatMessage>,
    conversation: Option<i64>,
) -> Result<Done, (String, String)> {
    let mut reply = client
        .complete(CompleteRequest {
            conversation,
            model: model.map(str::to_owned),
            messages,
            stream: true,
        })
        .await
        .expect("send");
    within(STEP, "the reply", async {
        loop {
            match reply.next().await.expect("an event") {
                Event::Done {
                    text,
                    conversation,
                    continued,
                    reason,
                    ..
                } => {
                    return Ok(Done {
                        text,
                        conversation,
                        continued,
                        reason: reason.map(|r| r.kind),
                    })
                }
                Event::Error { kind, message, .. } => return Err((kind.to_string(), message)),
                _ => {}
            }
        }
    })
    .await
}

/// The history of a conversation whose user messages were `asked` and answers `answered`,
/// then `next`.
fn history(asked: &[&str], answered: &[&str], next: &str) -> Vec<ChatMessage> {
    let mut out = Vec::new();
    for (q, a) in asked.iter().zip(answered) {
        out.push(m("user", q));
        out.push(m("assistant", a));
    }
    out.push(m("user", next));
    out
}

/// Asks "a [[turns]]", then the same conversation's next turn "b [[turns]]", and checks
/// that the second went on in the first's chat (the bot saw one earlier message).
async fn first_two_turns(client: &Client) -> (Done, Done) {
    let first = complete(client, None, vec![m("user", "a [[turns]]")], None)
        .await
        .expect("first");
    assert_eq!(first.text, turns(0));
    let second = complete(
        client,
        None,
        history(&["a [[turns]]"], &[&turns(0)], "b [[turns]]"),
        None,
    )
    .await
    .expect("second");
    assert_eq!(
        (second.text.as_str(), second.continued),
        (turns(1).as_str(), true)
    );
    (first, second)
}

/// [`first_two_turns`], then the third turn "c [[turns]]" at once, which goes on in the
/// same chat (the bot saw two earlier messages).
async fn three_turns(client: &Client, daemon: &Daemon) {
    let (_, second) = first_two_turns(client).await;
    let third = complete(
        client,
        None,
        history(
            &["a [[turns]]", "b [[turns]]"],
            &[&turns(0), &turns(1)],
            "c [[turns]]",
        ),
        second.conversation,
    )
    .await
    .unwrap_or_else(|e| panic!("third: {e:?}\n{}", daemon.log()));
    assert_eq!(
        (third.text.as_str(), third.continued),
        (turns(2).as_str(), true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_turn_or_another_model_starts_a_new_chat_and_a_named_one_goes_on() {
    let double = Double::start(site()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let client = daemon.client().await;

    let (first, second) = first_two_turns(&client).await;
    assert!(!first.continued && first.reason.is_none(), "{first:?}");
    let id = first.conversation.expect("a conversation");
    assert_eq!(second.conversation, Some(id));

    // An earlier turn edited: a new conversation in a new chat, the history flattened.
    let edited = complete(
        &client,
        None,
        history(&["A [[turns]]"], &[&turns(0)], "b [[turns]]"),
        None,
    )
    .await
    .expect("edited");
    assert_eq!(edited.text, turns(0), "a new chat has no earlier messages");
    assert!(!edited.continued && edited.reason.is_none(), "{edited:?}");
    assert_ne!(edited.conversation, Some(id));

    // The same turns with another model: a new chat too.
    let other = complete(
        &client,
        Some("gpt-4"),
        history(&["a [[turns]]"], &[&turns(0)], "b [[turns]]"),
        None,
    )
    .await
    .expect("other model");
    assert!(!other.continued, "{other:?}");
    assert_ne!(other.conversation, Some(id));

    // Named: only the new message is sent; it goes on in the same chat.
    let out = run(daemon.poectl(&["ask", "-c", &id.to_string(), "c [[turns]]"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), turns(2));
    // A name poed does not know is refused before anything is sent.
    let out = run(daemon.poectl(&["ask", "-c", "987654321", "lost"])).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown_conversation"),
        "{}",
        out.stderr
    );

    let taken = double.taken();
    let prompts: Vec<(&str, u32)> = taken.iter().map(|r| (r.prompt.as_str(), r.turn)).collect();
    assert_eq!(
        prompts,
        [
            ("a [[turns]]", 1),
            ("b [[turns]]", 2),
            (
                "User: A [[turns]]\nAssistant: Earlier human messages: 0\nUser: b [[turns]]\nAssistant:",
                1
            ),
            (
                "User: a [[turns]]\nAssistant: Earlier human messages: 0\nUser: b [[turns]]\nAssistant:",
                1
            ),
            ("c [[turns]]", 3),
        ]
    );
    assert_eq!(taken[1].chat_code, taken[0].chat_code);
    assert_eq!(taken[4].chat_code, taken[0].chat_code);
    assert_ne!(taken[2].chat_code, taken[0].chat_code);
    assert_ne!(taken[3].chat_code, taken[0].chat_code);
    assert!(
        !double.chats().iter().any(|r| r.prompt.contains("lost")),
        "an unknown conversation sent nothing"
    );
}

/// The site may answer the page's send after the whole reply has streamed (its frames start
/// at once): the reply is still the prompt's own, and the chat the answer names is where the
/// conversation goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_answered_after_its_reply_still_names_the_chat_to_go_on_in() {
    let double = Double::start(DoubleOptions {
        send_answer_delay_ms: 400,
        ..site()
    })
    .await
    .expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let client = daemon.client().await;
    first_two_turns(&client).await;
    let taken = double.taken();
    assert_eq!(taken.len(), 2, "each prompt sent once");
    assert_eq!(taken[1].chat_code, taken[0].chat_code);
    // The reply was over before the answer came.
    let first_end = double.chats()[0]
        .frame_times
        .last()
        .copied()
        .expect("frames");
    assert!(first_end < taken[0].received_at + Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_continuation() {
    let double = Double::start(site()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let first = complete(
        &daemon.client().await,
        None,
        vec![m("user", "before [[turns]]")],
        None,
    )
    .await
    .expect("first");
    let daemon = daemon.restart(&double.base_url(), &[]).await;
    // The chat's page is opened cold in the new browser.
    let next = complete(
        &daemon.client().await,
        None,
        history(&["before [[turns]]"], &[&first.text], "after [[turns]]"),
        None,
    )
    .await
    .expect("after the restart");
    assert_eq!(next.text, turns(1));
    assert!(next.continued, "{next:?}");
    assert_eq!(next.conversation, first.conversation);
    let taken = double.taken();
    assert_eq!(taken.len(), 2, "{taken:?}");
    assert_eq!(taken[1].prompt, "after [[turns]]");
    assert_eq!(taken[1].chat_code, taken[0].chat_code);
    // The history holds the conversation as one, with its chat.
    let file = daemon.dir.path().join("history.sqlite3");
    let out = run(daemon.poectl(&[
        "--history-file",
        file.to_str().expect("utf-8"),
        "history",
        "export",
    ]))
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let export: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let c = &export["conversations"][0];
    assert_eq!(c["id"], first.conversation.expect("id"));
    assert_eq!(c["chat_code"], taken[0].chat_code.as_str());
    assert_eq!(c["messages"].as_array().map(Vec::len), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_chat_falls_back_to_a_fresh_one_with_the_whole_history() {
    let double = Double::start(site()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let client = daemon.client().await;

    // Conversation A goes on once, so its chat's page stays open in a tab; B has one turn,
    // so its page must be opened again (cold).
    let a1 = complete(&client, None, vec![m("user", "A1 [[turns]]")], None)
        .await
        .expect("a1");
    let a2 = complete(
        &client,
        None,
        history(&["A1 [[turns]]"], &[&a1.text], "A2 [[turns]]"),
        None,
    )
    .await
    .expect("a2");
    assert!(a2.continued, "{a2:?}");
    let b1 = complete(&client, None, vec![m("user", "B1 [[turns]]")], None)
        .await
        .expect("b1");
    let taken = double.taken();
    for code in [&taken[0].chat_code, &taken[2].chat_code] {
        assert!(double.delete_chat(code), "chat {code} deleted");
    }
    let sent_before = double.chats().len();

    // A: its warm page still shows the chat; the site refuses the message there.
    let a3 = complete(
        &client,
        None,
        history(
            &["A1 [[turns]]", "A2 [[turns]]"],
            &[&a1.text, &a2.text],
            "A3 [[turns]]",
        ),
        None,
    )
    .await
    .expect("a3 is answered all the same");
    assert_eq!(a3.text, turns(0), "a fresh chat");
    assert!(!a3.continued, "{a3:?}");
    assert_eq!(a3.reason.as_deref(), Some("chat_gone"));
    assert_eq!(a3.conversation, a1.conversation, "the same conversation");
    // B: its page answers 404.
    let b2 = complete(
        &client,
        None,
        history(&["B1 [[turns]]"], &[&b1.text], "B2 [[turns]]"),
        None,
    )
    .await
    .expect("b2 is answered all the same");
    assert!(!b2.continued, "{b2:?}");
    assert_eq!(b2.reason.as_deref(), Some("chat_gone"));

    let after: Vec<_> = double.chats().into_iter().skip(sent_before).collect();
    // A's message went to its warm page and was refused there (not taken); B's page was
    // found gone before anything was sent.
    let refused: Vec<_> = after.iter().filter(|r| !r.taken()).collect();
    assert_eq!(refused.len(), 1, "{after:?}");
    assert_eq!(refused[0].prompt, "A3 [[turns]]");
    assert_eq!(refused[0].status, "chat_not_found");
    let taken: Vec<_> = after.iter().filter(|r| r.taken()).collect();
    assert_eq!(taken.len(), 2, "each prompt was taken once: {after:?}");
    assert_eq!(
        taken[0].prompt,
        "User: A1 [[turns]]\nAssistant: Earlier human messages: 0\nUser: A2 [[turns]]\nAssistant: Earlier human messages: 1\nUser: A3 [[turns]]\nAssistant:"
    );
    assert_eq!(taken[0].turn, 1);
    assert_eq!(
        taken[1].prompt,
        "User: B1 [[turns]]\nAssistant: Earlier human messages: 0\nUser: B2 [[turns]]\nAssistant:"
    );
    // The fresh chat is the conversation's chat from now on.
    let a4 = complete(
        &client,
        None,
        history(
            &["A1 [[turns]]", "A2 [[turns]]", "A3 [[turns]]"],
            &[&a1.text, &a2.text, &a3.text],
            "A4 [[turns]]",
        ),
        None,
    )
    .await
    .expect("a4");
    assert!(a4.continued, "{a4:?}");
    assert_eq!(a4.text, turns(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_serves_one_request_at_a_time() {
    let double = Double::start(site()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let client = daemon.client().await;
    let first = complete(&client, None, vec![m("user", "start [[turns]]")], None)
        .await
        .expect("first");
    // A long follow-up runs in the chat...
    let mut slow = client
        .complete(CompleteRequest {
            conversation: None,
            model: None,
            messages: history(&["start [[turns]]"], &[&first.text], "[[slow]]"),
            stream: true,
        })
        .await
        .expect("send");
    within(STEP, "the slow follow-up streams", async {
        loop {
            if let Event::Delta { .. } = slow.next().await.expect("event") {
                return;
            }
        }
    })
    .await;
    // ...so a second follow-up of the same turns branches off into a new chat.
    let other = complete(
        &daemon.client().await,
        None,
        history(&["start [[turns]]"], &[&first.text], "meanwhile [[turns]]"),
        None,
    )
    .await
    .expect("the branch");
    assert!(!other.continued, "{other:?}");
    assert_eq!(other.reason.as_deref(), Some("chat_busy"));
    assert_ne!(other.conversation, first.conversation);
    assert_eq!(other.text, turns(0));
    client.cancel(&slow.id).await.expect("cancel");
    let taken = double.taken();
    assert_eq!(taken.len(), 3, "{taken:?}");
    assert_eq!(taken[1].chat_code, taken[0].chat_code);
    assert_ne!(taken[2].chat_code, taken[0].chat_code);
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.next()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_after_a_failure_that_reached_the_site_goes_to_a_fresh_chat() {
    let double = Double::start(site()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let client = daemon.client().await;
    let first = complete(&client, None, vec![m("user", "one [[turns]]")], None)
        .await
        .expect("first");
    // The site ends this follow-up with an error state: it took the prompt, so the chat now
    // holds a turn the client will not send back.
    let (kind, _) = complete(
        &client,
        None,
        history(&["one [[turns]]"], &[&first.text], "[[error]] two"),
        None,
    )
    .await
    .expect_err("the site's error");
    assert_eq!(kind, "site_error");
    let next = complete(
        &client,
        None,
        history(&["one [[turns]]"], &[&first.text], "three [[turns]]"),
        None,
    )
    .await
    .expect("answered in a fresh chat");
    assert!(!next.continued, "{next:?}");
    assert_eq!(next.reason.as_deref(), Some("after_failure"));
    assert_eq!(next.conversation, first.conversation);
    assert_eq!(next.text, turns(0), "a fresh chat");
    let taken = double.taken();
    assert_eq!(taken.len(), 3, "{taken:?}");
    assert_eq!(taken[1].chat_code, taken[0].chat_code);
    assert_ne!(taken[2].chat_code, taken[0].chat_code);
    assert_eq!(
        taken[2].prompt,
        "User: one [[turns]]\nAssistant: Earlier human messages: 0\nUser: three [[turns]]\nAssistant:",
        "the failed turn is not part of the conversation"
    );
}

/// A conversation's next message sent the moment its last reply ended goes to the page that
/// reply left open (the tab is still being made ready for it), not to a cold page elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_sent_at_once_goes_to_the_page_its_chat_left_open() {
    let double = Double::start(site()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    daemon.wait_warm(3).await;
    let client = daemon.client().await;
    three_turns(&client, &daemon).await;
    // The chat's page was opened once, for the second turn; the third found it open.
    let code = &double.taken()[0].chat_code;
    let log = daemon.log();
    let opened = log
        .lines()
        .filter(|l| l.contains("document response") && l.contains(&format!("/chat/{code}")))
        .count();
    assert_eq!(opened, 1, "{log}");
}

/// A site whose message ids tell nothing of time (random numbers): each turn of a
/// conversation still gets its own reply, the third on the page the second left open,
/// where the second reply's late repeats still come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_in_no_order_still_give_each_turn_its_reply() {
    let double = Double::start(DoubleOptions {
        unordered_message_ids: true,
        ..site()
    })
    .await
    .expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    daemon.wait_warm(3).await;
    let client = daemon.client().await;
    three_turns(&client, &daemon).await;
    assert_eq!(double.taken().len(), 3, "each prompt reached the site once");
    let log = daemon.log();
    assert!(
        !log.contains("from the page"),
        "each reply streamed from its frames, none was read back\n{log}"
    );
}
