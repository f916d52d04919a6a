//! End to end on the Poe double: the history that real requests through `poed` leave
//! (`poectl history` list, show, search, export), `history.enabled = false` writing nothing,
//! and `poectl chat` driven in a pseudo-terminal (also through a daemon that does not know
//! the conversation it continues).
//!
//! Each test starts its own double and daemon and is bounded in time; the pty steps run on
//! a blocking thread with rexpect's own timeout on every expectation.

mod common;
mod double;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{run, within, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions};
use poed::protocol::{ChatMessage, CompleteRequest, Event};

fn fast() -> DoubleOptions {
    DoubleOptions {
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// `poectl` with the history file of `daemon` named explicitly.
fn poectl_history(daemon: &Daemon, args: &[&str]) -> tokio::process::Command {
    let file = daemon.dir.path().join("history.sqlite3");
    let mut all = vec!["--history-file", file.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    daemon.poectl(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_poed_are_listed_shown_searched_and_exported() {
    let double = Double::start(fast()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let file = daemon.dir.path().join("history.sqlite3");

    let out = run(daemon.poectl(&["ask", "Tell me about penguins"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let answer = expected_reply("GPT-3.5-Turbo", "Tell me about penguins");
    // A stateless client sends the conversation again with a new turn: it continues it.
    let client = daemon.client().await;
    let done = client
        .complete(CompleteRequest {
            conversation: None,
            model: None,
            messages: vec![
                ChatMessage::new("user", "Tell me about penguins"),
                ChatMessage::new("assistant", answer.clone()),
                ChatMessage::new("user", "And walruses?"),
            ],
            stream: true,
        })
        .await
        .expect("send")
        .finish()
        .await
        .expect("done");
    assert!(matches!(done, Event::Done { .. }), "{done:?}");
    let out = run(daemon.poectl(&["ask", "-m", "gpt-4", "--system", "Be brief.", "2+2?"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A failure is recorded with its kind.
    let out = run(daemon.poectl(&["ask", "[[error]] please"])).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let kind = out
        .stderr
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("poectl: "))
        .and_then(|l| l.split(':').next())
        .expect("poectl: KIND: message")
        .to_owned();

    // The file sits next to the profile, private to the user.
    assert_eq!(
        file.parent(),
        daemon.profile.parent(),
        "history next to the profile"
    );
    assert_eq!(mode(&file), 0o600, "history file mode");

    let out = run(poectl_history(&daemon, &["history"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "a header and three conversations:\n{}",
        out.stdout
    );
    assert!(lines[0].contains("FIRST MESSAGE"), "{}", out.stdout);
    assert!(
        lines[1].contains("[[error]] please") && lines[1].contains(&kind),
        "{kind}: {}",
        lines[1]
    );
    assert!(lines[2].contains("gpt-4") && lines[2].contains("2+2?"));
    assert!(lines[3].contains("gpt-3.5-turbo") && lines[3].contains("Tell me about penguins"));
    assert!(lines[3].trim_start().starts_with("1 "), "{}", lines[3]);

    // The same file found through poed's config: next to the profile it names.
    let config = daemon.dir.path().join("poectl-config.toml");
    std::fs::write(
        &config,
        format!(
            "[browser]\nprofile = {:?}\n",
            daemon.profile.display().to_string()
        ),
    )
    .expect("config");
    let out = run(daemon.poectl(&[
        "--config",
        config.to_str().expect("utf-8"),
        "history",
        "-n",
        "1",
    ]))
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);

    let out = run(poectl_history(&daemon, &["history", "show", "1"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The follow-up went on in the site chat of the first turn: only its new message was sent.
    let walrus_answer = expected_reply("GPT-3.5-Turbo", "And walruses?");
    for part in [
        "conversation 1 · gpt-3.5-turbo (GPT-3.5-Turbo) · 4 messages",
        "[user]\nTell me about penguins\n",
        "[assistant] (",
        &format!("\n{answer}\n"),
        "[user]\nAnd walruses?\n",
        &format!("\n{walrus_answer}\n"),
    ] {
        assert!(out.stdout.contains(part), "{part:?} in:\n{}", out.stdout);
    }
    let out = run(poectl_history(&daemon, &["history", "show", "2", "--json"])).await;
    let conv: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(conv["system"], "Be brief.");
    assert_eq!(conv["bot"], "GPT-4");
    assert_eq!(conv["messages"][1]["outcome"], "ok");
    assert!(conv["messages"][1]["timings"]["total_ms"]
        .as_u64()
        .is_some());
    let out = run(poectl_history(&daemon, &["history", "show", "3", "--json"])).await;
    let conv: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(conv["messages"][0]["outcome"], kind.as_str());
    assert!(conv["messages"][0]["error"].as_str().is_some());
    assert_eq!(conv["messages"].as_array().map(Vec::len), Some(1));

    let out = run(poectl_history(&daemon, &["history", "show", "99"])).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no conversation 99"), "{}", out.stderr);

    let out = run(poectl_history(&daemon, &["history", "search", "walruses"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let hits: Vec<&str> = out.stdout.lines().collect();
    assert!(!hits.is_empty(), "no hits");
    assert!(
        hits.iter().all(|h| h.trim_start().starts_with("1 ")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("[walruses]"), "{}", out.stdout);
    let out = run(poectl_history(&daemon, &["history", "search", "zebra"])).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));

    let export = daemon.dir.path().join("export.json");
    let out = run(poectl_history(
        &daemon,
        &["history", "export", "-o", export.to_str().expect("utf-8")],
    ))
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(mode(&export), 0o600, "export file mode");
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).expect("read")).expect("json");
    assert_eq!(all["format"], "poed-history");
    let convs = all["conversations"].as_array().expect("conversations");
    assert_eq!(convs.len(), 3);
    assert_eq!(convs[0]["messages"].as_array().map(Vec::len), Some(4));
    assert_eq!(convs[0]["messages"][3]["content"], walrus_answer);
    let first_chat = &double.taken()[0].chat_code;
    assert_eq!(
        convs[0]["chat_code"],
        first_chat.as_str(),
        "the site chat is kept"
    );
    let out = run(poectl_history(&daemon, &["history", "export", "2"])).await;
    let one: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(one["conversations"].as_array().map(Vec::len), Some(1));

    // poectl reads the file without talking to a daemon.
    let mut cmd = poectl_history(&daemon, &["history"]);
    cmd.env("POED_SOCKET", daemon.dir.path().join("no-daemon-here.sock"));
    let out = run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_off_creates_no_file_at_all() {
    let double = Double::start(fast()).await.expect("double");
    let daemon =
        Daemon::start_with_config(&double.base_url(), "[history]\nenabled = false\n", &[]).await;
    let out = run(daemon.poectl(&["ask", "Hello there"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(daemon.poectl(&["ask", "[[error]] too"])).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let sqlite: Vec<String> = walk(daemon.dir.path())
        .into_iter()
        .filter(|p| p.contains("history") || p.contains("sqlite"))
        .collect();
    assert!(
        sqlite.is_empty(),
        "files written with the history off: {sqlite:?}"
    );
    // poectl, reading the same config, says the history is off.
    let config = daemon.dir.path().join("config.toml");
    let out = run(daemon.poectl(&["--config", config.to_str().expect("utf-8"), "history"])).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("history.enabled = false"),
        "{}",
        out.stderr
    );
}

/// Every file path under `dir`, recursively (the browser profile included).
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// `poectl chat ARGS` in a pseudo-terminal, pointed at `daemon` and its history.
fn spawn_chat(daemon: &Daemon, args: &[&str]) -> rexpect::session::PtySession {
    spawn_chat_on(
        &daemon.socket,
        &daemon.dir.path().join("history.sqlite3"),
        args,
    )
}

/// `poectl chat ARGS` in a pseudo-terminal, on the daemon at `socket` with `history` read.
fn spawn_chat_on(socket: &Path, history: &Path, args: &[&str]) -> rexpect::session::PtySession {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_poectl"));
    cmd.arg("chat")
        .args(args)
        .env("POED_SOCKET", socket)
        .env("POED_HISTORY", history)
        .env("TERM", "xterm");
    rexpect::session::spawn_command(cmd, Some(STEP.as_millis() as u64)).expect("spawn poectl chat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poectl_chat_in_a_terminal_streams_switches_cancels_and_leaves() {
    let double = Double::start(fast()).await.expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let first_answer = expected_reply("GPT-3.5-Turbo", "Hello there");
    let second_prompt =
        format!("User: Hello there\nAssistant: {first_answer}\nUser: Second one\nAssistant:");

    let session = {
        let mut p = spawn_chat(&daemon, &[]);
        let first_answer = first_answer.clone();
        let steps = tokio::task::spawn_blocking(move || -> Result<_, rexpect::error::Error> {
            p.exp_string("Chatting with gpt-3.5-turbo")?;
            // Typing starts only once the prompt shows: the line editor owns the terminal then.
            p.exp_string(">>> ")?;
            p.send_line("Hello there")?;
            p.exp_string(&first_answer)?;
            p.exp_string(">>> ")?;
            p.send_line("/model gpt-4")?;
            p.exp_string("Model: gpt-4")?;
            p.exp_string(">>> ")?;
            p.send_line("Second one")?;
            p.exp_string("Echo from GPT-4: User: Hello there")?;
            p.exp_string(">>> ")?;
            // Ctrl-C while the answer streams stops it and keeps the chat.
            p.send_line("[[slow]] go on")?;
            p.exp_string("word3 ")?;
            p.send_control('c')?;
            p.exp_string("[cancelled]")?;
            p.exp_string(">>> ")?;
            p.send_line("/new")?;
            p.exp_string("New chat with gpt-4")?;
            p.exp_string(">>> ")?;
            p.send_line("Fresh start")?;
            p.exp_string("Echo from GPT-4: Fresh start")?;
            p.exp_string(">>> ")?;
            // Ctrl-C at the prompt drops the line typed so far.
            // (The editor's echo is interleaved with terminal codes: not matched here; the
            // site's side below shows the line was dropped.)
            p.send("half typed")?;
            p.send_control('c')?;
            p.exp_string(">>> ")?;
            p.send_line("after clear")?;
            // A follow-up goes on in the site chat of the turn before: only it is sent.
            p.exp_string("Echo from GPT-4: after clear")?;
            p.exp_string(">>> ")?;
            p.send_control('d')?;
            p.exp_eof()?;
            p.process().wait()
        });
        within(Duration::from_secs(180), "poectl chat", steps)
            .await
            .expect("join")
    };
    let status = session.unwrap_or_else(|e| panic!("poectl chat: {e}\n{}", daemon.log()));
    assert!(
        matches!(status, rexpect::process::WaitStatus::Exited(_, 0)),
        "Ctrl-D leaves with 0: {status:?}"
    );

    let chats = double.chats();
    let sent: Vec<(&str, &str)> = chats
        .iter()
        .map(|c| (c.bot.as_str(), c.prompt.as_str()))
        .collect();
    assert_eq!(sent.len(), 5, "{sent:#?}");
    assert_eq!(sent[0], ("GPT-3.5-Turbo", "Hello there"));
    assert_eq!(sent[1], ("GPT-4", second_prompt.as_str()));
    // The follow-up after the switch goes on in the chat the switch started.
    assert_eq!(sent[2], ("GPT-4", "[[slow]] go on"));
    assert_eq!(chats[2].chat_code, chats[1].chat_code);
    assert_eq!(sent[3], ("GPT-4", "Fresh start"), "/new starts over");
    assert_ne!(
        chats[3].chat_code, chats[1].chat_code,
        "/new is a new site chat"
    );
    assert_eq!(
        sent[4].1, "after clear",
        "the cleared line never went out, the cancelled turn is not kept"
    );
    assert_eq!(chats[4].chat_code, chats[3].chat_code);
    assert_eq!(chats[4].turn, 2);

    // The chat is in the history; --continue goes on from it with its whole transcript.
    let out = run(poectl_history(&daemon, &["history", "--json"])).await;
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let newest = list[0]["id"].as_i64().expect("id");
    assert_eq!(list[0]["title"], "Fresh start");
    let continued = {
        let mut p = spawn_chat(&daemon, &["--continue", &newest.to_string()]);
        let steps = tokio::task::spawn_blocking(move || -> Result<_, rexpect::error::Error> {
            p.exp_string("Chatting with gpt-4, going on after 4 messages")?;
            p.exp_string(">>> ")?;
            p.send_line("third turn")?;
            p.exp_string("Echo from GPT-4: third turn")?;
            p.exp_string(">>> ")?;
            p.send_line("/exit")?;
            p.exp_eof()?;
            p.process().wait()
        });
        within(Duration::from_secs(120), "poectl chat --continue", steps)
            .await
            .expect("join")
    };
    let status =
        continued.unwrap_or_else(|e| panic!("poectl chat --continue: {e}\n{}", daemon.log()));
    assert!(
        matches!(status, rexpect::process::WaitStatus::Exited(_, 0)),
        "/exit leaves with 0: {status:?}"
    );
    // The stored conversation goes on in its site chat, as its third human message.
    let last = double.chats().pop().expect("a send");
    assert_eq!(last.prompt, "third turn");
    assert_eq!(last.chat_code, chats[3].chat_code);
    assert_eq!(last.turn, 3);
    let out = run(poectl_history(
        &daemon,
        &["history", "show", &newest.to_string(), "--json"],
    ))
    .await;
    let conv: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(
        conv["messages"].as_array().map(Vec::len),
        Some(6),
        "the continued chat stays one conversation: {conv}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poectl_chat_sends_a_conversation_its_daemon_does_not_know_whole_and_once() {
    let double = Double::start(fast()).await.expect("double");
    // The conversation is in the history of one daemon...
    let first = Daemon::start(&double.base_url(), &[]).await;
    let out = run(first.poectl(&["ask", "Tell me about penguins"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let answer = expected_reply("GPT-3.5-Turbo", "Tell me about penguins");
    let list = run(poectl_history(&first, &["history", "--json"])).await;
    let list: serde_json::Value = serde_json::from_str(&list.stdout).expect("json");
    let id = list[0]["id"].as_i64().expect("id").to_string();

    // ...and `poectl chat` goes on from it through another daemon, with a history of its
    // own: that daemon answers `unknown_conversation` (nothing sent), and the chat sends the
    // whole conversation without the number.
    let other = Daemon::start(&double.base_url(), &[]).await;
    let history = first.dir.path().join("history.sqlite3");
    let mut p = spawn_chat_on(&other.socket, &history, &["--continue", &id]);
    let whole = format!(
        "User: Tell me about penguins\nAssistant: {answer}\nUser: And walruses?\nAssistant:"
    );
    let steps = tokio::task::spawn_blocking(move || -> Result<_, rexpect::error::Error> {
        p.exp_string("going on after 2 messages")?;
        p.exp_string(">>> ")?;
        p.send_line("And walruses?")?;
        // The answer to the whole conversation (its first line; the terminal ends lines
        // with CR LF), not to the new message alone.
        p.exp_string("Echo from GPT-3.5-Turbo: User: Tell me about penguins")?;
        p.exp_string(">>> ")?;
        p.send_line("/exit")?;
        p.exp_eof()?;
        p.process().wait()
    });
    let status = within(Duration::from_secs(120), "poectl chat --continue", steps)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("poectl chat: {e}\n{}", other.log()));
    assert!(
        matches!(status, rexpect::process::WaitStatus::Exited(_, 0)),
        "/exit leaves with 0: {status:?}"
    );
    let sent: Vec<String> = double.chats().into_iter().map(|c| c.prompt).collect();
    assert_eq!(
        sent,
        vec!["Tell me about penguins".to_owned(), whole],
        "the refused first try never reached the site; the retry did, once"
    );
}
