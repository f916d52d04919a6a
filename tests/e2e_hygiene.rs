//! Socket hygiene and secrets in logs, on the real binaries: the socket directory's rules
//! (created private, a shared or foreign one refused untouched, a non-socket never removed,
//! a stale socket replaced), another user's client refused by the peer check, and a `-vv`
//! run whose whole log is searched for every secret it was given.

mod common;
mod double;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{run, within, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions};

/// The uid (and gid) of `nobody`, the other user of the peer check.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `poed` on `socket` with a Chromium that does not exist: everything up to the socket
/// happens, then it stops with an error (no browser is needed to test the socket's rules).
fn poed_without_browser(dir: &Path, socket: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_poed"));
    cmd.args(["--config", "/dev/null", "--base-url", "http://127.0.0.1:9"])
        .arg("--profile")
        .arg(dir.join("profile"))
        .arg("--chromium")
        .arg(dir.join("no-chromium"))
        .arg("--socket")
        .arg(socket)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_directory_is_private_and_nothing_else_is_touched() {
    let root = tempfile::tempdir().expect("tempdir");
    chmod(root.path(), 0o700);
    let dir = root.path();

    // Missing directories are created 0700; the socket is bound (then poed stops: no browser).
    let socket = dir.join("run").join("nested").join("poed.sock");
    let out = run(poed_without_browser(dir, &socket)).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("Chromium not found"), "{}", out.stderr);
    assert_eq!(mode(&dir.join("run")), 0o700);
    assert_eq!(mode(&dir.join("run").join("nested")), 0o700);

    // A stale socket (nobody listening) is replaced.
    let stale = dir.join("run").join("poed.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let out = run(poed_without_browser(dir, &stale)).await;
    assert!(
        out.stderr.contains("replacing a stale socket file"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Chromium not found"), "{}", out.stderr);

    // A directory others can enter is refused and left as it is.
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    chmod(&shared, 0o755);
    std::fs::write(shared.join("keep.txt"), "mine").expect("write");
    let out = run(poed_without_browser(dir, &shared.join("poed.sock"))).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("open to other users (mode 0755)") && out.stderr.contains("chmod 700"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("Chromium"),
        "refused before anything else"
    );
    assert_eq!(mode(&shared), 0o755);
    assert_eq!(entries(&shared), vec!["keep.txt"]);

    // A regular file at the socket path is an error, and stays.
    let private = dir.join("private");
    std::fs::create_dir(&private).expect("mkdir");
    chmod(&private, 0o700);
    let file = private.join("poed.sock");
    std::fs::write(&file, "not a socket").expect("write");
    let out = run(poed_without_browser(dir, &file)).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("is not a socket (it is a regular file)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("still there"),
        "not a socket"
    );

    // A private directory of another user is refused too (needs root to build).
    if is_root() {
        let foreign = dir.join("foreign");
        std::fs::create_dir(&foreign).expect("mkdir");
        chmod(&foreign, 0o700);
        std::os::unix::fs::chown(&foreign, Some(NOBODY), Some(NOBODY)).expect("chown");
        let out = run(poed_without_browser(dir, &foreign.join("poed.sock"))).await;
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!("belongs to uid {NOBODY}")),
            "{}",
            out.stderr
        );
        let meta = std::fs::metadata(&foreign).expect("metadata");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o700));
        assert!(entries(&foreign).is_empty());
    }
}

/// Secrets the verbose run below is given; none may appear in its log.
const COOKIE_PB: &str = "cookie-pb-7c41e9d2";
const COOKIE_LAT: &str = "cookie-lat-0a93f5b7";
const API_KEY: &str = "sk-hygiene-5f0e2c8a91";
const WRONG_KEY: &str = "sk-wrong-3b6d7e10";
const PROXY_USER: &str = "proxyuser-d41c";
const PROXY_PASS: &str = "proxypass-8e2b77";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verbose_log_holds_no_secret() {
    let double = Double::start(DoubleOptions {
        logged_in: false,
        chunk_delay_ms: 5,
        textarea_delay_ms: 50,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, format!("{API_KEY}\n")).expect("key");
    let cookies = dir.path().join("cookies.txt");
    std::fs::write(
        &cookies,
        format!(
            "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tp-b\t{COOKIE_PB}\n#HttpOnly_127.0.0.1\tFALSE\t/\tFALSE\t0\tp-lat\t{COOKIE_LAT}\n"
        ),
    )
    .expect("cookies");
    // Chromium takes the proxy but never uses it here: loopback (the double) bypasses proxies.
    let proxy = format!("http://{PROXY_USER}:{PROXY_PASS}@127.0.0.1:9");
    let profile = dir.path().join("profile");
    let socket = dir.path().join("run").join("poed.sock");
    let key_arg = key_file.display().to_string();
    let daemon = Daemon::start_with_env(
        dir,
        profile,
        socket,
        &double.base_url(),
        &[
            "-vv",
            "--http",
            "127.0.0.1:0",
            "--api-key-file",
            &key_arg,
            "--proxy",
            &proxy,
        ],
        // An empty RUST_LOG counts as unset: the -vv defaults apply.
        &[("RUST_LOG", "")],
    )
    .await;

    // The site knows this session (in 2025 a `p-b` alone proves nothing).
    double.add_signed_in_session(COOKIE_PB);
    let out = run(daemon.poectl(&["cookies", "import", cookies.to_str().expect("utf8")])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("account: signed_in"), "{}", out.stdout);
    let out = run(daemon.poectl(&["ask", "tell me a secret"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        expected_reply("GPT-3.5-Turbo", "tell me a secret")
    );

    let status = daemon.client().await.status().await.expect("status");
    let url = format!(
        "http://{}/v1/chat/completions",
        status.http.expect("http address")
    );
    let curl = |key: &str| {
        let mut c = tokio::process::Command::new("curl");
        c.args(["-sS", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {key}"))
            .args(["-H", "Content-Type: application/json", "-d"])
            .arg(r#"{"messages":[{"role":"user","content":"over http"}]}"#)
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    };
    let out = run(curl(API_KEY)).await;
    assert!(out.stdout.ends_with("\n200"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(&expected_reply("GPT-3.5-Turbo", "over http")),
        "{}",
        out.stdout
    );
    let out = run(curl(WRONG_KEY)).await;
    assert!(out.stdout.ends_with("\n401"), "{}", out.stdout);

    let log = daemon.log();
    for secret in [
        COOKIE_PB,
        COOKIE_LAT,
        API_KEY,
        WRONG_KEY,
        PROXY_USER,
        PROXY_PASS,
        // The update socket's tokens (the double's channel is `poe-chan5-<chat>`, hash 17).
        "poe-chan5-",
        "hash=17",
    ] {
        assert!(
            !log.contains(secret),
            "the log holds the secret {secret:?}:\n{log}"
        );
    }
    // The run was verbose, and the lines that carry secret-bearing values were written.
    assert!(log.contains("TRACE"), "trace lines expected");
    assert!(log.contains("launching chromium"), "{log}");
    assert!(log.contains("<redacted>@127.0.0.1:9"), "{log}");
    assert!(log.contains("websocket created"), "{log}");
    assert!(log.contains("channel=<redacted>&hash=<redacted>"), "{log}");
    assert!(log.contains("session cookies imported"), "{log}");
}

/// Waits for `READY=1` on a notify socket.
async fn ready(notify: &tokio::net::UnixDatagram) {
    let mut buf = vec![0u8; 4096];
    within(STEP, "READY=1", async {
        loop {
            let n = notify.recv(&mut buf).await.expect("recv");
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return;
            }
        }
    })
    .await;
}

/// The socket poed binds itself sits in a 0700 directory no other user can enter, so the
/// peer check is tested where it is the only guard: a socket passed by a service manager
/// (socket activation) in a directory others can reach, mode 0666.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_client_is_refused_before_any_request() {
    if !is_root() {
        eprintln!("skipped: running a client as another user needs root (the unit tests of daemon::socket cover the check)");
        return;
    }
    let double = Double::start(DoubleOptions {
        chunk_delay_ms: 5,
        textarea_delay_ms: 50,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    let dir = tempfile::tempdir().expect("tempdir");
    chmod(dir.path(), 0o755);
    let socket = dir.path().join("poed.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    chmod(&socket, 0o666);
    let notify_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).expect("notify");
    let log_path = dir.path().join("poed.log");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_poed"))
        .args([
            "--config",
            "/dev/null",
            "--base-url",
            &double.base_url(),
            "-v",
        ])
        .arg("--profile")
        .arg(dir.path().join("profile"))
        .arg("--socket")
        .arg(dir.path().join("private").join("unused.sock"))
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_path).expect("log")))
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
    let mut child = cmd.spawn().expect("spawn poed");
    drop(listener);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    ready(&notify).await;

    // `nobody` connects and gets one permission_denied line instead of the hello.
    let mut stranger = tokio::process::Command::new(env!("CARGO_BIN_EXE_poectl"));
    stranger
        .arg("status")
        .env("POED_SOCKET", &socket)
        .env_remove("RUST_LOG")
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = run(stranger).await;
    // The refusal is the request's error (exit 1), not a protocol error.
    assert_eq!(out.code, 1, "{}\n{}", out.stderr, log());
    assert!(
        out.stderr.contains("permission_denied") && out.stderr.contains(&format!("uid {NOBODY}")),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    // The daemon's own user still gets served; prompts and replies stay out of a -v log.
    let prompt = "a private question 41d7";
    let client = poed::client::Client::connect(&socket)
        .await
        .expect("root connects");
    let done = within(
        STEP,
        "answer",
        client
            .complete(poed::protocol::CompleteRequest {
                conversation: None,
                model: None,
                messages: vec![poed::protocol::ChatMessage::new("user", prompt)],
                stream: true,
            })
            .await
            .expect("send")
            .finish(),
    )
    .await
    .expect("answer");
    let reply = expected_reply("GPT-3.5-Turbo", prompt);
    assert!(
        matches!(&done, poed::protocol::Event::Done { text, .. } if *text == reply),
        "{done:?}"
    );
    drop(client);

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().expect("pid") as i32, libc::SIGTERM) };
    let status = within(Duration::from_secs(30), "exit", child.wait())
        .await
        .expect("wait");
    assert!(status.success(), "{status:?}\n{}", log());
    let log = log();
    assert!(
        log.contains("refused a connection from another user")
            && log.contains(&format!("peer_uid={NOBODY}")),
        "{log}"
    );
    assert!(log.contains("DEBUG"), "a -v log has debug lines");
    assert!(
        !log.contains(prompt),
        "the prompt is logged below trace:\n{log}"
    );
    assert!(
        !log.contains(&reply),
        "the reply is logged below trace:\n{log}"
    );
}

#[tokio::test]
async fn print_config_keeps_proxy_credentials_out() {
    let out = run({
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_poed"));
        cmd.args([
            "--print-config",
            "--proxy",
            "http://alice:s3cret-pw@proxy.example:3128",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        cmd
    })
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("proxy.example:3128"), "{}", out.stdout);
    assert!(!out.stdout.contains("s3cret-pw"), "{}", out.stdout);
}
