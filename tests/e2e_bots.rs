//! Any bot of the account by its handle, end to end on real Chromium and the double in its
//! 2025 mode: a handle outside the model table is answered (in the site's spelling when typed
//! in another case), a handle the site does not have is `unknown_model` at once with close
//! names and nothing sent, the bots that answered are listed as `seen` by `poectl models` and
//! `/v1/models`, and `poectl models --refresh` reads the double's bot list page and caches it.

mod common;
mod double;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{run, Daemon};
use double::{expected_reply, Double, DoubleOptions, Mode, BOTS};
use serde_json::Value;
use tokio::process::Command;

/// The prompt-box limit of the test daemons (`--prompt-timeout 5`): an unknown bot must be
/// refused before it.
const PROMPT_BOX: Duration = Duration::from_secs(5);

async fn double() -> Double {
    Double::start(DoubleOptions {
        mode: Mode::Y2025,
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    })
    .await
    .expect("double")
}

/// `poectl ask -m MODEL PROMPT`: exit code, stdout, stderr and how long it took.
async fn ask(daemon: &Daemon, model: &str, prompt: &str) -> (common::Output, Duration) {
    let t0 = Instant::now();
    let out = run(daemon.poectl(&["ask", "-m", model, prompt])).await;
    (out, t0.elapsed())
}

/// `poectl models --json [extra]` as JSON.
async fn models_json(daemon: &Daemon, extra: &[&str]) -> Value {
    let mut args = vec!["models", "--json"];
    args.extend_from_slice(extra);
    let out = run(daemon.poectl(&args)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(out.stdout.trim()).expect("models json")
}

/// The model named `name` in a `models` answer.
fn model<'a>(models: &'a Value, name: &str) -> Option<&'a Value> {
    models["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["name"] == name)
}

/// `GET {base}/v1/models` through curl.
async fn http_models(base: &str) -> Value {
    let out = common::within(
        Duration::from_secs(20),
        "curl /v1/models",
        Command::new("curl")
            .args(["-sS", &format!("{base}/v1/models")])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl");
    serde_json::from_slice(&out.stdout).expect("/v1/models json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_outside_the_table_are_answered_listed_as_seen_and_unknown_ones_refused_in_time() {
    let double = double().await;
    let daemon = Daemon::start(&double.base_url(), &["--http", "127.0.0.1:0"]).await;
    daemon.wait_warm(3).await;

    // Before any reply, only the table is listed.
    let before = models_json(&daemon, &[]).await;
    assert_eq!(model(&before, "gpt-4").expect("gpt-4")["source"], "table");
    assert!(model(&before, "Claude-Sonnet-4.5").is_none());

    // A handle that is in no table is the bot's page.
    let (out, _) = ask(&daemon, "Claude-Sonnet-4.5", "hello there").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim_end(),
        expected_reply("Claude-Sonnet-4.5", "hello there")
    );
    // Another spelling: the site sends it to its handle's page, and answers from there.
    let (out, _) = ask(&daemon, "gpt-4O-mini", "and you").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim_end(),
        expected_reply("GPT-4o-Mini", "and you")
    );

    // A handle the site does not have: its page answers 404. Refused before the prompt-box
    // limit, nothing sent, close names offered (the table's here).
    let sent_before = double.chats().len();
    let (out, took) = ask(&daemon, "gpt-9", "anyone?").await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("unknown_model"), "{}", out.stderr);
    assert!(out.stderr.contains("gpt-4"), "close names: {}", out.stderr);
    assert!(took < PROMPT_BOX, "unknown handle took {took:?}");
    // A typo of a bot that answered gets that bot as a close name.
    let (out, took) = ask(&daemon, "Claude-Sonet-4.5", "anyone?").await;
    assert!(out.stderr.contains("unknown_model"), "{}", out.stderr);
    assert!(
        out.stderr.contains("close names: Claude-Sonnet-4.5"),
        "{}",
        out.stderr
    );
    assert!(took < PROMPT_BOX, "unknown handle took {took:?}");
    assert_eq!(double.chats().len(), sent_before, "nothing was sent");
    // A name that is no handle at all is refused before any page opens.
    let (out, _) = ask(&daemon, "../etc/passwd", "x").await;
    assert!(out.stderr.contains("unknown_model"), "{}", out.stderr);

    // The daemon goes on: the default model still answers.
    let out = run(daemon.poectl(&["ask", "still fine?"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The bots that answered are listed as seen, in the site's spelling, with their time.
    let after = models_json(&daemon, &[]).await;
    for handle in ["Claude-Sonnet-4.5", "GPT-4o-Mini"] {
        let m = model(&after, handle).unwrap_or_else(|| panic!("{handle} listed: {after}"));
        assert_eq!(m["source"], "seen", "{m}");
        assert_eq!(m["bot"], handle);
        assert!(m["last_answered"].as_u64().is_some_and(|t| t > 0), "{m}");
    }
    assert!(
        model(&after, "gpt-9").is_none(),
        "an unknown bot is not listed"
    );
    let default = model(&after, "gpt-3.5-turbo").expect("default row");
    assert_eq!(default["source"], "table");
    assert!(default["last_answered"].is_u64(), "{default}");
    let out = run(daemon.poectl(&["models"])).await;
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("Claude-Sonnet-4.5 "))
        .unwrap_or_else(|| panic!("a seen line: {}", out.stdout));
    assert!(line.contains("seen") && line.contains("answered"), "{line}");

    // The same list on the HTTP front door, with the source.
    let status = daemon.client().await.status().await.expect("status");
    let addr: std::net::SocketAddr = status.http.expect("http").parse().expect("addr");
    let listed = http_models(&format!("http://127.0.0.1:{}", addr.port())).await;
    let data = listed["data"].as_array().expect("data");
    let seen = data
        .iter()
        .find(|m| m["id"] == "Claude-Sonnet-4.5")
        .unwrap_or_else(|| panic!("listed over HTTP: {listed}"));
    assert_eq!(seen["source"], "seen");
    assert_eq!(seen["object"], "model");
    assert!(data
        .iter()
        .any(|m| m["id"] == "gpt-4" && m["source"] == "table"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reads_the_sites_bot_list_and_caches_it() {
    let double = double().await;
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    daemon.wait_warm(3).await;
    let cache = daemon.dir.path().join("bots.json");
    assert!(!cache.exists());

    let listed = models_json(&daemon, &["--refresh"]).await;
    assert!(
        listed["discovered_at"].as_u64().is_some_and(|t| t > 0),
        "{listed}"
    );
    // Every bot of the double's list is known now: the table's by their row, the others as
    // discovered, under their handle.
    for bot in BOTS {
        let known = listed["models"]
            .as_array()
            .expect("models")
            .iter()
            .any(|m| m["bot"] == bot.handle);
        assert!(known, "{} listed: {listed}", bot.handle);
    }
    let user_bot = model(&listed, "SQL.Helper").expect("a user bot");
    assert_eq!(user_bot["source"], "discovered");
    assert_eq!(user_bot["display_name"], "SQL Helper");

    // The list is cached next to the profile, private, with its date.
    let mode = std::fs::metadata(&cache)
        .expect("cache file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cached: Value =
        serde_json::from_str(&std::fs::read_to_string(&cache).expect("read")).expect("json");
    assert!(cached["collected_at"].as_u64().is_some_and(|t| t > 0));
    assert_eq!(cached["bots"].as_array().expect("bots").len(), BOTS.len());

    // The human listing says what was read.
    let out = run(daemon.poectl(&["models"])).await;
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("RustReviewer ") && l.contains("discovered")),
        "{}",
        out.stdout
    );

    // A discovered bot typed in another case is used in the site's spelling.
    let (out, _) = ask(&daemon, "sql.helper", "select 1").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim_end(),
        expected_reply("SQL.Helper", "select 1")
    );
    // And a discovered bot is a close name for a typo.
    let (out, took) = ask(&daemon, "RustReviewr", "x").await;
    assert!(out.stderr.contains("unknown_model"), "{}", out.stderr);
    assert!(out.stderr.contains("RustReviewer"), "{}", out.stderr);
    assert!(took < PROMPT_BOX, "unknown handle took {took:?}");
}
