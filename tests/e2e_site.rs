//! What the site says, read from the network, end to end on real Chromium and the double
//! in its 2025 mode (today's site): send refusals and their kinds, pacing by refusals,
//! lost updates taken from the page's refetch response with the DOM switched off, the
//! sign-in redirect, the account's points, the user agent the site sees, and a rich-text
//! prompt box.
//! `POE_DOUBLE_MODE=2023` runs the mode-neutral ones against the 2023 picture.

mod common;
mod double;

use std::time::{Duration, Instant};

use common::{run, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions, Mode};
use poed::protocol::{ChatMessage, CompleteRequest, Event};
use poed::ErrorKind;

fn ask(prompt: &str) -> CompleteRequest {
    CompleteRequest {
        conversation: None,
        model: None,
        messages: vec![ChatMessage::new("user", prompt)],
        stream: true,
    }
}

async fn double_in(mode: Option<Mode>) -> Double {
    let mut opts = DoubleOptions {
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    };
    if let Some(mode) = mode {
        opts.mode = mode;
    }
    Double::start(opts).await.expect("double")
}

/// Sends `prompt` and returns the final event with the time it took.
async fn answer(daemon: &Daemon, prompt: &str) -> (Event, Duration) {
    let client = daemon.client().await;
    let t0 = Instant::now();
    let mut reply = client.complete(ask(prompt)).await.expect("send");
    let last = common::final_event(&mut reply, STEP).await;
    (last, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_gives_its_own_kind_at_once_and_nothing_is_taken() {
    let double = double_in(Some(Mode::Y2025)).await;
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    daemon.wait_warm(3).await;
    for (word, kind) in [
        ("[[reached-limit]]", ErrorKind::DailyLimit),
        ("[[too-many-tokens]]", ErrorKind::PromptTooLong),
        ("[[no-access]]", ErrorKind::BotUnavailable),
        ("[[refuse:something_new]]", ErrorKind::SiteError),
    ] {
        let prompt = format!("refused {word}");
        let (last, took) = answer(&daemon, &prompt).await;
        match &last {
            Event::Error {
                kind: k,
                sent,
                message,
                ..
            } => {
                assert_eq!(k, &kind, "{prompt}: {message}");
                assert_eq!(*sent, Some(false), "a refused prompt was not taken");
            }
            other => panic!("{prompt}: expected an error, got {other:?}"),
        }
        // The idle timeout of the test daemon is 3 s: a refusal must not wait for it.
        assert!(took < Duration::from_secs(3), "{prompt} took {took:?}");
        let attempts: Vec<_> = double
            .chats()
            .into_iter()
            .filter(|c| c.prompt == prompt)
            .collect();
        assert_eq!(attempts.len(), 1, "{prompt} was sent once");
        assert!(!attempts[0].taken());
    }
    // The kinds of refusals that only say "not now" are sent again after a backoff, up to
    // three times in all, and then answered with their kind; never taken.
    for (word, kind) in [
        ("[[rate-limit-exceeded]]", ErrorKind::RateLimited),
        ("[[concurrent]]", ErrorKind::Busy),
    ] {
        let prompt = format!("refused {word}");
        let (last, _) = answer(&daemon, &prompt).await;
        assert!(
            matches!(&last, Event::Error { kind: k, sent: Some(false), .. } if *k == kind),
            "{prompt}: {last:?}"
        );
        let attempts: Vec<_> = double
            .chats()
            .into_iter()
            .filter(|c| c.prompt == prompt)
            .collect();
        assert_eq!(attempts.len(), 3, "{prompt}: sent three times in all");
        assert!(attempts.iter().all(|c| !c.taken()));
    }
    assert!(double.taken().is_empty(), "no refused prompt was taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_refused_for_the_rate_goes_again_after_a_backoff_and_is_taken_once() {
    let double = double_in(Some(Mode::Y2025)).await;
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    daemon.wait_warm(3).await;
    for word in ["[[rate-limit-once]]", "[[concurrent-once]]"] {
        let prompt = format!("once {word}");
        let (last, _) = answer(&daemon, &prompt).await;
        assert!(
            matches!(&last, Event::Done { text, .. } if *text == expected_reply("GPT-3.5-Turbo", &prompt)),
            "{prompt}: {last:?}"
        );
        let attempts: Vec<_> = double
            .chats()
            .into_iter()
            .filter(|c| c.prompt == prompt)
            .collect();
        assert_eq!(attempts.len(), 2, "{prompt}: refused, then sent again");
        assert_eq!(
            attempts.iter().filter(|c| c.taken()).count(),
            1,
            "taken once"
        );
    }
    // The backoff the refusals set shows in `status`, and shrinks as sends are taken.
    let status = daemon.client().await.status().await.expect("status");
    assert!(status.account.send_backoff_ms <= 1000, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_updates_are_taken_from_the_refetch_response_with_the_dom_switched_off() {
    let double = double_in(None).await;
    let daemon = Daemon::start_with_config(
        &double.base_url(),
        "[site]\nrecover_from_dom = false\n",
        &["--idle-timeout", "20"],
    )
    .await;
    daemon.wait_warm(3).await;
    for prompt in [
        "lost [[missed]]",
        "lost [[refetch]]",
        "lost [[missed-stop]]",
    ] {
        let (last, took) = answer(&daemon, prompt).await;
        assert!(
            matches!(&last, Event::Done { text, .. } if *text == expected_reply("GPT-3.5-Turbo", prompt)),
            "{prompt}: {last:?}"
        );
        assert!(took < Duration::from_secs(10), "{prompt} took {took:?}");
    }
    let log = daemon.log();
    assert!(
        !log.contains("reading the page"),
        "the DOM was read:\n{log}"
    );
    let sent: Vec<_> = double.taken();
    assert_eq!(sent.len(), 3, "each prompt was taken once");
}

/// The site may swap its textarea for a rich-text editor (`formattedChatInput` in the viewer
/// state): a `contenteditable` textbox of unknown class names. The default selectors find it,
/// and `Input.insertText` enters the prompt, lines and all, as the page reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rich_text_prompt_box_takes_the_prompt_as_a_textarea_does() {
    let double = Double::start(DoubleOptions {
        mode: Mode::Y2025,
        rich_input: true,
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    let daemon = Daemon::start(&double.base_url(), &["--prompt-timeout", "5"]).await;
    daemon.wait_warm(3).await;
    let prompts = ["one line to a rich editor", "two lines\nand ünïcode ✓"];
    for prompt in prompts {
        let (last, _) = answer(&daemon, prompt).await;
        assert!(
            matches!(&last, Event::Done { text, .. } if *text == expected_reply("GPT-3.5-Turbo", prompt)),
            "{prompt:?}: {last:?}"
        );
    }
    let taken: Vec<String> = double.taken().into_iter().map(|c| c.prompt).collect();
    assert_eq!(taken, prompts, "each prompt taken once, as entered");
}

/// The nonce that tells a prompt's echo from other chats' comes from the page's send request
/// as it goes out, long prompts included (the event carries the whole body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sends_nonce_is_read_for_short_and_long_prompts() {
    let double = double_in(Some(Mode::Y2025)).await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    daemon.wait_warm(1).await;
    let long = format!("a long prompt: {}", "many words ".repeat(20_000));
    for prompt in ["a short prompt", long.as_str()] {
        let (last, _) = answer(&daemon, prompt).await;
        assert!(
            matches!(&last, Event::Done { text, .. } if *text == expected_reply("GPT-3.5-Turbo", prompt)),
            "{last:?}"
        );
    }
    let log = daemon.log();
    let sends = log
        .lines()
        .filter(|l| l.contains("the page's send went out"));
    assert_eq!(
        sends.filter(|l| l.contains("nonce=true")).count(),
        2,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_out_profile_is_reported_as_soon_as_the_site_redirects() {
    let double = Double::start(DoubleOptions {
        logged_in: false,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    // A long prompt-box limit: the answer must come from the redirect, not from waiting.
    let daemon = Daemon::start(&double.base_url(), &["--prompt-timeout", "30"]).await;
    let (last, took) = answer(&daemon, "hello while signed out").await;
    assert!(
        matches!(
            &last,
            Event::Error {
                kind: ErrorKind::NotLoggedIn,
                ..
            }
        ),
        "{last:?}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let status = daemon.client().await.status().await.expect("status");
    assert_eq!(
        status.account.state,
        poed::protocol::AccountState::SignedOut
    );
    assert!(double.chats().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_show_in_status_and_change_after_a_reply() {
    let double = double_in(Some(Mode::Y2025)).await;
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    daemon.wait_warm(3).await;
    let client = daemon.client().await;
    let (last, _) = answer(&daemon, "first, for the points").await;
    assert!(matches!(last, Event::Done { .. }), "{last:?}");
    let before = common::within(STEP, "points seen", async {
        loop {
            let s = client.status().await.expect("status");
            if let Some(b) = s.account.points.as_ref().and_then(|p| p.balance) {
                if b == double.points() as i64 {
                    return b;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (last, _) = answer(&daemon, "second, it costs points").await;
    assert!(matches!(last, Event::Done { .. }), "{last:?}");
    let after = double.points() as i64;
    assert!(after < before, "the reply cost points on the site");
    let shown = common::within(STEP, "new points seen", async {
        loop {
            let s = client.status().await.expect("status");
            if s.account.points.as_ref().and_then(|p| p.balance) == Some(after) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let p = shown.account.points.expect("points");
    assert_eq!(p.allotment, Some(3000));
    assert!(p.reset_at.is_some());
    let out = run(daemon.poectl(&["status"])).await;
    assert!(
        out.stdout.contains(&format!("points   {after} of 3000")),
        "{}",
        out.stdout
    );
    // Out of points: the site refuses, and the account shows it.
    double.set_points(0);
    let (last, _) = answer(&daemon, "no points left").await;
    assert!(
        matches!(
            &last,
            Event::Error {
                kind: ErrorKind::DailyLimit,
                ..
            }
        ),
        "{last:?}"
    );
    let s = client.status().await.expect("status");
    assert!(s.account.out_of_points_until.is_some(), "{s:?}");
}

/// What the double's requests and its pages' bot checks saw of the browser, after one
/// answered request.
async fn browser_seen(toml: Option<&str>) -> (Vec<double::Agent>, Vec<double::BrowserCheck>) {
    let double = double_in(None).await;
    let daemon = match toml {
        Some(toml) => Daemon::start_with_config(&double.base_url(), toml, &[]).await,
        None => Daemon::start(&double.base_url(), &[]).await,
    };
    daemon.wait_warm(1).await;
    let (last, _) = answer(&daemon, "who is asking?").await;
    assert!(matches!(last, Event::Done { .. }), "{last:?}");
    let agents = double.agents();
    assert!(!agents.is_empty(), "the double saw no requests");
    let checks = double.browser_checks(STEP).await;
    assert!(!checks.is_empty(), "no page reported its browser");
    (agents, checks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_sees_a_headless_browser_as_the_chrome_it_is_and_not_as_automated() {
    // Bot filters in front of the real site refuse `HeadlessChrome`. What Chromium says
    // of itself when left alone, and what poed's tabs say by default:
    let (own, own_checks) = browser_seen(Some("[browser]\nuser_agent = \"\"\n")).await;
    let (shown, checks) = browser_seen(None).await;
    let pairs = |agents: &[double::Agent]| -> std::collections::BTreeSet<(String, Option<String>)> {
        agents
            .iter()
            .map(|a| (a.user_agent.clone(), a.brands.clone()))
            .collect()
    };
    assert!(
        own.iter().any(|a| a.user_agent.contains("HeadlessChrome/")),
        "{own:?}"
    );
    for agent in &shown {
        assert!(
            agent.user_agent.contains(" Chrome/") && !agent.user_agent.contains("Headless"),
            "{agent:?}"
        );
    }
    // The same agent save the name, and the same client hints (brands) on the same requests:
    // an override without them would drop the `Sec-CH-UA` header, a sign of its own.
    let renamed = own
        .iter()
        .map(|a| double::Agent {
            user_agent: a.user_agent.replace("HeadlessChrome", "Chrome"),
            ..a.clone()
        })
        .collect::<Vec<_>>();
    assert_eq!(pairs(&shown), pairs(&renamed));
    assert!(shown.iter().any(|a| a.brands.is_some()), "{shown:?}");
    // An agent from the configuration is what every request says.
    let fixed = "Mozilla/5.0 (X11; Linux x86_64) Example/1.0";
    let toml = format!("[browser]\nuser_agent = \"{fixed}\"\n");
    let (agents, checks_fixed) = browser_seen(Some(&toml)).await;
    for agent in agents {
        assert_eq!(agent.user_agent, fixed, "{agent:?}");
    }
    // The pages see what the requests say, and no browser that calls itself automated
    // (`navigator.webdriver`, which the DevTools pipe alone would turn on).
    // Nor do they see poed's own scripts reading their DOM: those run in an isolated world,
    // where the page's wrappers of built-ins do not reach.
    for check in checks.iter().chain(&own_checks).chain(&checks_fixed) {
        assert!(!check.webdriver, "{check:?}");
        assert!(!check.foreign, "{check:?}");
    }
    assert!(
        checks
            .iter()
            .all(|c| shown.iter().any(|a| a.user_agent == c.agent)),
        "{checks:?}"
    );
    assert!(
        checks_fixed.iter().all(|c| c.agent == fixed),
        "{checks_fixed:?}"
    );
}
