//! Never down for long: browser crashes, lost updates, shutdown, second instances, stale
//! files, and systemd's socket activation and readiness, with the real binaries and Chromium.

mod common;
mod double;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::procs::{chromium_main, parent_of};
use common::{final_event, run, until_text, within, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions};
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

/// Sends `prompt` and checks that the whole expected reply came.
async fn answered_in_full(daemon: &Daemon, client: &poed::client::Client, prompt: &str) {
    let done = client
        .complete(ask(prompt))
        .await
        .expect("send")
        .finish()
        .await;
    match done {
        Ok(Event::Done { text, .. }) => assert_eq!(text, expected_reply("GPT-3.5-Turbo", prompt)),
        other => panic!("{prompt}: {other:?}\n{}", daemon.log()),
    }
}

async fn fast_double() -> Double {
    Double::start(DoubleOptions {
        chunk_delay_ms: 10,
        // Replies of a killed browser keep running on the site: the kills here would soon
        // hit the site's limit of replies in flight, which is not what these tests are about.
        max_in_flight: 64,
        ..DoubleOptions::default()
    })
    .await
    .expect("double")
}

/// Processes whose command line mentions `needle` (e.g. a profile path).
fn processes_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if cmd.contains(needle) && !zombie {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_killed_mid_reply_ten_times_costs_only_those_requests() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    let client = daemon.client().await;
    for round in 0..10 {
        let mut reply = client
            .complete(ask(&format!("[[slow]] round {round}")))
            .await
            .expect("send");
        until_text(&mut reply).await;
        let victim = chromium_main(&daemon);
        // SAFETY: killing a process of this test's own daemon.
        unsafe { libc::kill(victim, libc::SIGKILL) };
        let killed = Instant::now();
        let last = final_event(&mut reply, Duration::from_secs(5)).await;
        assert!(
            matches!(
                last,
                Event::Error {
                    kind: ErrorKind::BrowserCrashed,
                    ..
                }
            ),
            "round {round}: {last:?}"
        );
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "round {round}: took {:?}",
            killed.elapsed()
        );
        // The next request waits for the relaunched browser and succeeds.
        let prompt = format!("after crash {round}");
        let done = within(STEP, "answer after crash", async {
            client
                .complete(ask(&prompt))
                .await
                .expect("send")
                .finish()
                .await
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", daemon.log()));
        assert!(
            matches!(done, Event::Done { ref text, .. } if *text == expected_reply("GPT-3.5-Turbo", &prompt))
        );
    }
    let status = client.status().await.expect("status");
    assert_eq!(status.browser.state, "up");
    assert_eq!(status.browser.restarts, 10);
    assert!(status.browser.last_error.is_some());
    let out = run(daemon.poectl(&["status"])).await;
    assert!(out.stdout.contains("restarts 10"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_updates_are_recovered_from_the_page_never_resent() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let client = daemon.client().await;
    for prompt in ["[[missed-stop]] recover me", "[[refetch]] recover me too"] {
        answered_in_full(&daemon, &client, prompt).await;
    }
    // A plain stall is `stalled`, and nothing was sent twice.
    let err = client
        .complete(ask("[[stall]] x"))
        .await
        .expect("send")
        .finish()
        .await
        .expect_err("stalled");
    assert_eq!(err.kind(), Some(ErrorKind::Stalled));
    let prompts: Vec<String> = double.chats().iter().map(|c| c.prompt.clone()).collect();
    assert_eq!(
        prompts.len(),
        3,
        "each prompt sent exactly once: {prompts:?}"
    );
}

/// A page that moved the focus off its prompt box after poed made it ready (as a site's
/// banner or dialog taking the focus would) still takes each prompt once, as entered: the
/// text that went nowhere enables no send button, so poed focuses the box and enters the
/// text again, and only then clicks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_box_that_lost_its_focus_still_takes_the_prompt_once() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    let client = daemon.client().await;
    let prompts = ["the focus moved away", "and away again"];
    for prompt in prompts {
        daemon.wait_warm(1).await;
        let blurred = double.blur_prompt_boxes(STEP).await;
        assert!(blurred >= 1, "no page moved its focus\n{}", daemon.log());
        answered_in_full(&daemon, &client, prompt).await;
    }
    let taken: Vec<String> = double.chats().iter().map(|c| c.prompt.clone()).collect();
    assert_eq!(taken, prompts, "each prompt sent once, as entered");
    let log = daemon.log();
    assert_eq!(
        log.matches("the prompt box had lost the focus").count(),
        2,
        "each send found the focus gone and focused the box again\n{log}"
    );
}

/// A page whose API requests poed does not see (`site.api_path_contains` no longer matching
/// them, as after a change of the site) still gets its replies: the updates held for the
/// first send are taken without its nonce after a short wait, the log says what to check,
/// and later replies do not wait for a send that is not seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_comes_even_when_the_pages_send_request_is_not_seen() {
    let double = fast_double().await;
    let config = "[site]\napi_path_contains = \"/no-such-api/\"\n";
    let daemon = Daemon::start_with_config(&double.base_url(), config, &["--tabs", "1"]).await;
    daemon.wait_warm(1).await;
    let client = daemon.client().await;
    answered_in_full(&daemon, &client, "a send nobody saw").await;
    assert_eq!(double.chats().len(), 1, "sent once");
    answered_in_full(&daemon, &client, "another send nobody saw").await;
    assert_eq!(double.chats().len(), 2, "each sent once");
    let log = daemon.log();
    assert_eq!(
        log.matches("the page's send request was not seen; check site.api_path_contains")
            .count(),
        1,
        "only the first reply waited for the send\n{log}"
    );
}

/// A page whose script opens its update socket a second after its prompt box shows, on a
/// site that does not replay what a socket missed: a prompt sent the moment the tab got
/// ready waits for the page's socket, so its reply comes on it (sent at once, every frame
/// of it would be lost), and it reaches the site once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_waits_for_a_late_update_socket_and_its_reply_comes_on_it() {
    let double = Double::start(DoubleOptions {
        chunk_delay_ms: 10,
        socket_delay_ms: 1000,
        socket_wait_ms: 0,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    daemon.wait_warm(1).await;
    let client = daemon.client().await;
    within(
        Duration::from_secs(20),
        "the reply on the late socket",
        answered_in_full(&daemon, &client, "a socket that comes late"),
    )
    .await;
    assert_eq!(double.chats().len(), 1, "sent once");
    let log = daemon.log();
    assert!(
        log.contains("the page's update socket opened"),
        "the send waited for the socket\n{log}"
    );
    assert!(!log.contains("no update socket"), "{log}");
}

/// A page whose update socket is not open within `timeouts.update_socket_secs` (here: it
/// opens later, on a site that replays what it missed) gets its prompt anyway, and only the
/// first send waits for it: the log says what to check, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_send_waits_for_an_update_socket_that_does_not_come_in_time() {
    let double = Double::start(DoubleOptions {
        chunk_delay_ms: 10,
        socket_delay_ms: 1500,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    let config = "[timeouts]\nupdate_socket_secs = 0.3\n";
    let daemon = Daemon::start_with_config(&double.base_url(), config, &["--tabs", "1"]).await;
    let client = daemon.client().await;
    let prompts = ["no socket yet", "still no socket yet"];
    for prompt in prompts {
        daemon.wait_warm(1).await;
        within(
            Duration::from_secs(20),
            "a reply whose socket came late",
            answered_in_full(&daemon, &client, prompt),
        )
        .await;
    }
    let taken: Vec<String> = double.chats().iter().map(|c| c.prompt.clone()).collect();
    assert_eq!(taken, prompts, "each sent once");
    let log = daemon.log();
    assert_eq!(
        log.matches("no update socket").count(),
        1,
        "only the first send waited for the socket\n{log}"
    );
}

/// A page whose update socket closed while it waited for a request (the site closed it,
/// and the page did not connect again) would take the prompt and never bring its reply: it
/// is opened again before the prompt goes, and the prompt reaches the site once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_update_socket_closed_is_opened_again_before_the_send() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    daemon.wait_warm(1).await;
    assert_eq!(double.close_update_sockets(1, STEP).await, 1);
    daemon.wait_log("update socket closed", STEP).await;
    let client = daemon.client().await;
    within(
        Duration::from_secs(20),
        "the reply on the page opened again",
        answered_in_full(&daemon, &client, "after the socket closed"),
    )
    .await;
    assert_eq!(double.chats().len(), 1, "sent once");
    let log = daemon.log();
    assert!(
        log.contains("the page's update socket closed while it waited; opening the page again"),
        "{log}"
    );
}

/// The mouse pointer goes onto the send button when a page gets ready, before any request,
/// as a hand waits by a button: each press then finds it there (the press changes no hover
/// state, and the pointer never appears on the button out of nowhere). The page a tab opens
/// after a reply gets it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pointer_waits_on_the_send_button_before_each_press() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    let client = daemon.client().await;
    let prompts = ["a first question", "a second question"];
    for (i, prompt) in prompts.into_iter().enumerate() {
        daemon.wait_warm(1).await;
        assert_eq!(
            double.pointer_moves(i + 1, STEP).await,
            i + 1,
            "the ready page's pointer was moved onto its send button before request {i}\n{}",
            daemon.log()
        );
        answered_in_full(&daemon, &client, prompt).await;
    }
    assert_eq!(
        double.presses(),
        [true, true],
        "each press found the pointer on the button already\n{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_reply_exits_cleanly_within_the_grace_period() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &["--shutdown-grace", "1"]).await;
    let client = daemon.client().await;
    let mut reply = client
        .complete(ask("[[slow]] long story"))
        .await
        .expect("send");
    until_text(&mut reply).await;
    let profile = daemon.profile.display().to_string();
    let socket = daemon.socket.clone();
    let dir = daemon.dir.path().to_owned();
    let stopping = Instant::now();
    let stop = tokio::spawn(daemon.stop());
    let last = final_event(&mut reply, STEP).await;
    assert!(
        matches!(
            last,
            Event::Error {
                kind: ErrorKind::ShuttingDown,
                ..
            }
        ),
        "{last:?}"
    );
    let status = stop.await.expect("join");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(6),
        "took {:?}",
        stopping.elapsed()
    );
    assert!(!socket.exists(), "socket removed");
    assert!(
        processes_with(&profile).is_empty(),
        "no Chromium left behind"
    );
    assert!(
        double
            .wait_for_stop(&double.chats()[0].chat_id, Duration::from_secs(1))
            .await
    );
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_refuses_and_stale_files_are_replaced() {
    let double = fast_double().await;
    let first = Daemon::start(&double.base_url(), &[]).await;
    let poed = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_poed"));
        cmd.args(["--config", "/dev/null", "--base-url", &double.base_url()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    // Same socket: refused at once.
    let other_profile = first.dir.path().join("other-profile");
    let out = run(poed(&[
        "--socket",
        first.socket.to_str().expect("utf8"),
        "--profile",
        other_profile.to_str().expect("utf8"),
    ]))
    .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("already running"), "{}", out.stderr);
    // Same profile, other socket: refused, naming the process that holds it.
    // In a directory poed creates: the temporary directory itself may be open to others.
    let other_socket = first.dir.path().join("other").join("poed.sock");
    let out = run(poed(&[
        "--socket",
        other_socket.to_str().expect("utf8"),
        "--profile",
        first.profile.to_str().expect("utf8"),
    ]))
    .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("in use by process"), "{}", out.stderr);
    assert!(
        !other_socket.exists(),
        "the refused instance cleaned up its socket"
    );
    // The first one still serves.
    let ok = run(first.poectl(&["ask", "still here"])).await;
    assert_eq!(ok.stdout, expected_reply("GPT-3.5-Turbo", "still here"));
    drop(first);

    // A stale socket file (nobody listening) and a stale profile lock (dead owner).
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("run").join("poed.sock");
    std::fs::create_dir_all(socket.parent().expect("parent")).expect("mkdir");
    // poed refuses a socket directory that others can enter.
    std::fs::set_permissions(
        socket.parent().expect("parent"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let profile = dir.path().join("profile");
    std::fs::create_dir_all(&profile).expect("profile");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    std::os::unix::fs::symlink(
        format!("{}-2147483000", host.trim()),
        profile.join("SingletonLock"),
    )
    .expect("lock");
    let daemon = Daemon::start_in(dir, profile, socket, &double.base_url(), &[]).await;
    let out = run(daemon.poectl(&["ask", "fresh start"])).await;
    assert_eq!(
        out.stdout,
        expected_reply("GPT-3.5-Turbo", "fresh start"),
        "{}",
        out.stderr
    );
    assert!(daemon.log().contains("stale socket"), "{}", daemon.log());
    assert!(
        daemon.log().contains("stale profile lock"),
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_and_readiness_like_systemd() {
    let double = fast_double().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("poed.sock");
    // What systemd does for poed.socket: bind, listen, pass as fd 3 with LISTEN_FDS/LISTEN_PID.
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let notify_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).expect("notify");
    let fd = listener.as_raw_fd();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 WATCHDOG_PID=$$ WATCHDOG_USEC=1000000 exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_poed"))
        .args(["--config", "/dev/null", "--base-url", &double.base_url()])
        .arg("--profile")
        .arg(dir.path().join("profile"))
        .arg("--socket")
        .arg(dir.path().join("unused.sock"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("log")).expect("log"),
        ))
        .kill_on_drop(true);
    // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    drop(listener);
    // READY=1 comes only once the browser is up; a STATUS line comes with it.
    let mut buf = vec![0u8; 4096];
    let ready = within(STEP, "READY=1", async {
        loop {
            let n = notify.recv(&mut buf).await.expect("recv");
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if msg.lines().any(|l| l == "READY=1") {
                return msg;
            }
        }
    })
    .await;
    assert!(ready.contains("STATUS="), "{ready}");
    // WatchdogSec: the watchdog is petted (every half interval) while the engine answers.
    within(Duration::from_secs(5), "WATCHDOG=1", async {
        loop {
            let n = notify.recv(&mut buf).await.expect("recv");
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "WATCHDOG=1")
            {
                return;
            }
        }
    })
    .await;
    assert!(
        !dir.path().join("unused.sock").exists(),
        "the passed socket was used, not --socket"
    );
    let client = poed::client::Client::connect(&socket)
        .await
        .expect("connect through the activated socket");
    // `status` names the socket actually listened on, not the configured one.
    let status = client.status().await.expect("status");
    assert_eq!(status.socket, socket.display().to_string());
    let done = client
        .complete(ask("activated"))
        .await
        .expect("send")
        .finish()
        .await
        .expect("answer");
    assert!(
        matches!(done, Event::Done { ref text, .. } if *text == expected_reply("GPT-3.5-Turbo", "activated"))
    );
    drop(client);
    // A wedged browser stops the watchdog: the probe's round trip through the request path
    // fails, so systemd would restart poed. (Status lines alone kept it fed before.)
    let poed_pid = child.id().expect("pid") as i32;
    let chromium = processes_with(&dir.path().join("profile").display().to_string())
        .into_iter()
        .find(|pid| parent_of(*pid) == Some(poed_pid))
        .expect("chromium main process");
    // SAFETY: stopping the daemon's own Chromium, a process of this test.
    unsafe { libc::kill(chromium, libc::SIGSTOP) };
    let gap = within(Duration::from_secs(15), "a gap in WATCHDOG=1", async {
        let mut last = std::time::Instant::now();
        loop {
            let got = tokio::time::timeout(Duration::from_secs(3), notify.recv(&mut buf)).await;
            match got {
                Err(_) => return last.elapsed(),
                Ok(n) => {
                    let n = n.expect("recv");
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "WATCHDOG=1")
                    {
                        if last.elapsed() >= Duration::from_millis(2500) {
                            return last.elapsed();
                        }
                        last = std::time::Instant::now();
                    }
                }
            }
        }
    })
    .await;
    assert!(
        gap >= Duration::from_millis(2500),
        "watchdog kept being fed: gap {gap:?}"
    );
    // SAFETY: as above (the supervisor may have killed it already).
    unsafe { libc::kill(chromium, libc::SIGCONT) };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().expect("pid") as i32, libc::SIGTERM) };
    let status = within(Duration::from_secs(20), "exit", child.wait())
        .await
        .expect("wait");
    assert!(status.success());
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(log.contains("socket passed by systemd"), "{log}");
    let _ = Path::new("");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_page_costs_only_its_request() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    let client = daemon.client().await;
    let mut reply = client.complete(ask("[[slow]] doomed")).await.expect("send");
    until_text(&mut reply).await;
    // Kill the renderers (the pages), not the browser.
    let profile = daemon.profile.display().to_string();
    let renderers: Vec<i32> = processes_with(&profile)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("--type=renderer"))
                .unwrap_or(false)
        })
        .collect();
    assert!(!renderers.is_empty(), "renderer processes");
    for pid in renderers {
        // SAFETY: killing processes of this test's own daemon.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let killed = Instant::now();
    let last = final_event(&mut reply, Duration::from_secs(5)).await;
    assert!(
        matches!(
            last,
            Event::Error {
                kind: ErrorKind::BrowserCrashed,
                ..
            }
        ),
        "{last:?}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "took {:?}",
        killed.elapsed()
    );
    let done = client
        .complete(ask("next page"))
        .await
        .expect("send")
        .finish()
        .await;
    assert!(
        matches!(done, Ok(Event::Done { ref text, .. }) if *text == expected_reply("GPT-3.5-Turbo", "next page")),
        "{done:?}\n{}",
        daemon.log()
    );
    let status = client.status().await.expect("status");
    assert_eq!(
        (status.browser.state.as_str(), status.browser.restarts),
        ("up", 0),
        "the browser itself survived"
    );
    assert_eq!(status.pool.tabs, 1);
}
