//! `poectl login`: a visible browser window on the daemon's profile (under Xvfb), signed in
//! by a stand-in for the user, then handed back to the headless daemon. And the honest
//! answer when there is no display.

mod common;
mod double;

use std::process::Stdio;
use std::time::Duration;

use common::{procs, run, within, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The command line of the daemon's main Chromium process.
fn chromium_cmdline(daemon: &Daemon) -> String {
    procs::cmdline(procs::chromium_main(daemon)).join(" ")
}

/// Starts `poectl login` and returns it with the first line it says on stderr (where to
/// sign in); the rest of its stderr is read on, so it can always write there.
async fn start_login(daemon: &Daemon) -> (tokio::process::Child, String) {
    let mut login = daemon
        .poectl(&["login", "--timeout", "60"])
        .spawn()
        .expect("poectl login");
    let mut lines = BufReader::new(login.stderr.take().expect("stderr")).lines();
    let first = within(STEP, "login started", lines.next_line())
        .await
        .expect("read")
        .expect("line");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (login, first)
}

/// The user, acting in the browser window: finds the sign-in page among the browser's tabs
/// (DevTools' `/json/list` at `host_port`) and clicks its button through that tab's own
/// DevTools socket. The tab may not be listed or loaded yet, so it tries again until the
/// click lands.
async fn sign_in_as_the_user(host_port: &str) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let click = serde_json::json!({"id": 1, "method": "Runtime.evaluate", "params": {
        "expression": "(() => { const b = document.querySelector('button'); if (!b) return false; b.click(); return true; })()",
        "returnByValue": true}});
    within(STEP, "clicking sign in", async {
        loop {
            let listed = Command::new("curl")
                .args(["-s", "-m", "5", &format!("http://{host_port}/json/list")])
                .output()
                .await
                .expect("curl");
            let json = String::from_utf8_lossy(&listed.stdout).to_string();
            let targets: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
            let login = targets.iter().find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.ends_with("/login"))
            });
            if let Some(ws_url) = login.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(ws_url).await {
                    ws.send(Message::Text(click.to_string().into()))
                        .await
                        .expect("send");
                    while let Some(Ok(msg)) = ws.next().await {
                        let Ok(text) = msg.into_text() else { continue };
                        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                        if v["id"] == 1 {
                            if v["result"]["result"]["value"] == true {
                                return;
                            }
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
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
        profile,
        socket,
        &double.base_url(),
        &[],
        &[("DISPLAY", &display)],
    )
    .await;
    assert!(chromium_cmdline(&daemon).contains("--headless"));

    // A sign-in cancelled half-way (Ctrl-C while the window is open): the window goes, the
    // browser is headless again, the daemon still serves, and the next sign-in may start.
    let (cancelled, said) = start_login(&daemon).await;
    assert!(said.contains("/login"), "{said}");
    assert!(!chromium_cmdline(&daemon).contains("--headless"));
    let pid = cancelled.id().expect("poectl pid");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let out = within(STEP, "the cancelled login", cancelled.wait_with_output())
        .await
        .expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", daemon.log());
    assert!(
        chromium_cmdline(&daemon).contains("--headless"),
        "headless again after the cancel"
    );
    let out = run(daemon.poectl(&["ask", "still signed out"])).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not_logged_in"), "{}", out.stderr);

    let (login, said) = start_login(&daemon).await;
    assert!(
        said.contains("sign in in the browser window") && said.contains("/login"),
        "{said}"
    );
    let visible = chromium_cmdline(&daemon);
    assert!(
        !visible.contains("--headless"),
        "a visible window: {visible}"
    );
    // The window's frames are someone's to see: its GPU process keeps its priority (the
    // headless browser's is lowered as its tabs open and at each 3 s health check; watched
    // here for longer than one check).
    let browser = procs::chromium_main(&daemon);
    let watch_until = std::time::Instant::now() + Duration::from_millis(3500);
    while std::time::Instant::now() < watch_until {
        let gpu = procs::gpu_processes(browser);
        assert!(!gpu.is_empty(), "no GPU process under the window's browser");
        for pid in gpu {
            assert!(!procs::thread_nices(pid).contains(&19), "{pid} lowered");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The user signs in on the page in that window. poed's browser has no debugging port a
    // stand-in could drive, so the double's sign-in page clicks its own button on cue.
    double.user_clicks_sign_in();
    let out = within(STEP, "poectl login", login.wait_with_output())
        .await
        .expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", daemon.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("account: signed_in"));

    // Back to headless, signed in through the profile's cookies.
    assert!(chromium_cmdline(&daemon).contains("--headless"));
    let out = run(daemon.poectl(&["ask", "after login"])).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, daemon.log());
    assert_eq!(out.stdout, expected_reply("GPT-3.5-Turbo", "after login"));
    // The site saw one browser throughout: the window and the headless browser present the
    // same agent and brands (a clearance cookie earned in the window holds for both), and
    // neither says it is automated.
    let agents = double.agents();
    let names: std::collections::BTreeSet<_> = agents.iter().map(|a| &a.user_agent).collect();
    let brands: std::collections::BTreeSet<_> =
        agents.iter().filter_map(|a| a.brands.as_ref()).collect();
    assert_eq!((names.len(), brands.len()), (1, 1), "{agents:?}");
    let checks = double.browser_checks(STEP).await;
    assert!(checks.iter().all(|c| !c.webdriver), "{checks:?}");
    let _ = xvfb.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_the_users_own_browser_sign_in_there_and_leave_it_running() {
    let double = Double::start(DoubleOptions {
        logged_in: false,
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    // The user's own Chromium, with remote debugging on.
    let user_dir = tempfile::tempdir().expect("tempdir");
    let mut own = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", user_dir.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium");
    // Chromium says where DevTools listens on stderr once it does.
    let mut err = BufReader::new(own.stderr.take().expect("stderr")).lines();
    let ws = within(STEP, "DevTools listening", async {
        loop {
            let line = err
                .next_line()
                .await
                .expect("read")
                .expect("chromium exited");
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_owned();
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });

    let daemon = Daemon::start(&double.base_url(), &["--connect", &ws]).await;
    let status = daemon.client().await.status().await.expect("status");
    assert_eq!(status.browser.mode, "connected");

    // `login` opens the sign-in page as a tab of the user's browser; the user signs in there.
    let (login, line) = start_login(&daemon).await;
    assert!(line.contains("/login"), "{line}");
    let host_port = ws
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port")
        .to_owned();
    sign_in_as_the_user(&host_port).await;
    let out = within(STEP, "poectl login", login.wait_with_output())
        .await
        .expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", daemon.log());

    let out = run(daemon.poectl(&["ask", "through your browser"])).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, daemon.log());
    assert_eq!(
        out.stdout,
        expected_reply("GPT-3.5-Turbo", "through your browser")
    );
    assert!(daemon.stop().await.success());
    // poed leaves the user's browser running.
    assert!(
        own.try_wait().expect("try_wait").is_none(),
        "the user's Chromium still runs"
    );
    let _ = own.kill().await;
}
