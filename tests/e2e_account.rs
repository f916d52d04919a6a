//! Signing in and account state: cookie import into the daemon's profile, `not_logged_in`,
//! `daily_limit` per bot, and `/health`, on the double with real Chromium.

mod common;
mod double;

use common::{run, Daemon};
use double::{expected_reply, Double, DoubleOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_import_signs_the_profile_in_and_the_account_state_is_honest() {
    let double = Double::start(DoubleOptions {
        logged_in: false,
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    let daemon = Daemon::start(&double.base_url(), &["--http", "127.0.0.1:0"]).await;
    let out = run(daemon.poectl(&["ask", "hello?"])).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not_logged_in"), "{}", out.stderr);
    let client = daemon.client().await;
    let status = client.status().await.expect("status");
    assert_eq!(
        status.account.state,
        poed::protocol::AccountState::SignedOut
    );
    let health = format!("http://{}/health", status.http.expect("http"));
    let curl = |url: &str| {
        let mut c = tokio::process::Command::new("curl");
        c.args(["-s", "-w", "\n%{http_code}", url])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let out = run(curl(&health)).await;
    assert!(out.stdout.ends_with("\n503"), "{}", out.stdout);
    assert!(
        out.stdout.contains("\"not_ready\":[\"account\"]"),
        "{}",
        out.stdout
    );

    // Bad files are refused before anything reaches the daemon, naming the line.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.txt");
    std::fs::write(
        &bad,
        "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tNOPE\t0\tp-b\tsecret\n",
    )
    .expect("write");
    let out = run(daemon.poectl(&["cookies", "import", bad.to_str().expect("utf8")])).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
    let no_session = dir.path().join("no-session.json");
    std::fs::write(
        &no_session,
        r#"[{"name": "other", "value": "x", "domain": "127.0.0.1"}]"#,
    )
    .expect("write");
    let out = run(daemon.poectl(&["cookies", "import", no_session.to_str().expect("utf8")])).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("p-b"), "{}", out.stderr);

    // A cookies.txt with the session cookies signs the profile in (the site knows that
    // session: in 2025 a `p-b` alone proves nothing).
    double.add_signed_in_session("secret-session");
    let good = dir.path().join("cookies.txt");
    std::fs::write(
        &good,
        "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tp-b\tsecret-session\n#HttpOnly_127.0.0.1\tFALSE\t/\tFALSE\t0\tp-lat\tlat\n",
    )
    .expect("write");
    let out = run(daemon.poectl(&["cookies", "import", good.to_str().expect("utf8")])).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, daemon.log());
    assert!(
        out.stdout
            .contains("imported 2 cookies; account: signed_in"),
        "{}",
        out.stdout
    );
    let out = run(daemon.poectl(&["ask", "signed in now"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, expected_reply("GPT-3.5-Turbo", "signed in now"));
    let out = run(curl(&health)).await;
    assert!(out.stdout.ends_with("\n200"), "{}", out.stdout);

    // The daily limit is reported per bot, with when it was seen.
    double.set_daily_limit(true);
    let out = run(daemon.poectl(&["ask", "-m", "gpt-4", "one more"])).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("daily_limit") && out.stderr.contains("GPT-4"),
        "{}",
        out.stderr
    );
    let status = client.status().await.expect("status");
    assert_eq!(status.account.state, poed::protocol::AccountState::SignedIn);
    assert_eq!(status.account.daily_limits.len(), 1);
    assert_eq!(status.account.daily_limits[0].bot, "GPT-4");
    assert!(status.account.daily_limits[0].seen_at > 0);
    let out = run(daemon.poectl(&["status"])).await;
    assert!(
        out.stdout.contains("daily limit reached for GPT-4"),
        "{}",
        out.stdout
    );
}
