//! `poectl login`: a visible browser window on the daemon's profile (under Xvfb), signed in
//! by a stand-in for the user, then handed back to the headless daemon. And the honest
//! answer when there is no display.

mod common;
mod double;

use std::process::Stdio;
use std::time::Duration;

use chromiumoxide::Browser;
use common::{run, within, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The command line of the daemon's main Chromium process.
fn chromium_cmdline(daemon: &Daemon) -> String {
    let poed = daemon.pid().expect("pid").to_string();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1) == Some(&poed.as_str()) && fields.first() != Some(&"Z") {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("user-data-dir") {
                return cmd;
            }
        }
    }
    panic!("no chromium under poed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_without_a_display_points_to_the_alternatives() {
    let double = Double::start(DoubleOptions {
        logged_in: false,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let out = run(daemon.poectl(&["login", "--timeout", "10"])).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no_display"), "{}", out.stderr);
    assert!(
        out.stderr.contains("cookies import") && out.stderr.contains("--connect"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_in_a_visible_window_under_xvfb_then_headless_again() {
    // Xvfb tells its display number on the fd given with -displayfd once it accepts clients.
    let mut xvfb = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x1024x24",
            "-nolisten",
            "tcp",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("Xvfb (Debian package xvfb)");
    let mut lines = BufReader::new(xvfb.stdout.take().expect("stdout")).lines();
    let n = within(Duration::from_secs(20), "Xvfb display", lines.next_line())
        .await
        .expect("read")
        .expect("display");
    let display = format!(":{}", n.trim());

    let double = Double::start(DoubleOptions {
        logged_in: false,
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile");
    let socket = dir.path().join("run").join("poed.sock");
    let daemon = Daemon::start_with_env(
        dir,
        profile.clone(),
        socket,
        &double.base_url(),
        &[],
        &[("DISPLAY", &display)],
    )
    .await;
    assert!(chromium_cmdline(&daemon).contains("--headless"));

    let mut login = daemon
        .poectl(&["login", "--timeout", "60"])
        .spawn()
        .expect("poectl login");
    let mut err_lines = BufReader::new(login.stderr.take().expect("stderr")).lines();
    let said = within(STEP, "login started", err_lines.next_line())
        .await
        .expect("read")
        .expect("line");
    assert!(
        said.contains("sign in in the browser window") && said.contains("/login"),
        "{said}"
    );
    let visible = chromium_cmdline(&daemon);
    assert!(
        !visible.contains("--headless"),
        "a visible window: {visible}"
    );

    // The user: signs in on the page in that window (driven here through DevTools).
    let port =
        std::fs::read_to_string(profile.join("DevToolsActivePort")).expect("DevToolsActivePort");
    let port = port.lines().next().expect("port").trim().to_owned();
    let (mut user, mut handler) = Browser::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect as the user");
    let driver = tokio::spawn(async move { while let Some(Ok(())) = handler.next().await {} });
    let page = within(STEP, "the sign-in page", async {
        loop {
            let _ = user.fetch_targets().await;
            for page in user.pages().await.unwrap_or_default() {
                if page
                    .url()
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|u| u.ends_with("/login"))
                {
                    return page;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    page.find_element("button")
        .await
        .expect("sign-in button")
        .click()
        .await
        .expect("click");

    let out = within(STEP, "poectl login", login.wait_with_output())
        .await
        .expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", daemon.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("account: signed_in"));
    driver.abort();
    drop(user);

    // Back to headless, signed in through the profile's cookies.
    assert!(chromium_cmdline(&daemon).contains("--headless"));
    let out = run(daemon.poectl(&["ask", "after login"])).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, daemon.log());
    assert_eq!(out.stdout, expected_reply("GPT-3.5-Turbo", "after login"));
    let _ = xvfb.kill().await;
}
