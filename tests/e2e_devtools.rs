//! Nobody else can drive poed's browser: Chromium's DevTools are on a pipe, no process of
//! poed's Chromium has a debugging port or another endpoint open to other users, the profile
//! is private, and the supervisor still relaunches a killed Chromium over the pipe. Also the
//! browser's processes as poed runs them: the GPU process at the lowest CPU priority. Real
//! binaries, real Chromium, the local Poe double; sockets and processes are read from /proc.

mod common;
mod double;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::procs::{chromium_main, cmdline, gpu_processes, thread_nices, tree};
use common::{run, within, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions};

async fn fast_double() -> Double {
    Double::start(DoubleOptions {
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    })
    .await
    .expect("double")
}

/// Socket inodes held by `pid` (its fds that read `socket:[N]`).
fn socket_inodes(pid: i32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

/// A listening socket, as /proc/net shows it.
#[derive(Debug, Clone)]
enum Listening {
    /// Local TCP port (IPv4 or IPv6).
    Tcp(u16),
    /// Bound path (empty when unnamed or abstract without a printable name).
    Unix(String),
}

/// Listening sockets of `pid`, matched by inode against its network namespace's tables.
fn listening(pid: i32) -> Vec<Listening> {
    let inodes = socket_inodes(pid);
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let inode: u64 = f[9].parse().unwrap_or(0);
            if inodes.contains(&inode) {
                let port = f[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    .expect("port");
                out.push(Listening::Tcp(port));
            }
        }
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    for line in text.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode [Path]
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 7 {
            continue;
        }
        // __SO_ACCEPTCON: the socket listens.
        let accepts = u32::from_str_radix(f[3], 16).unwrap_or(0) & 0x1_0000 != 0;
        let inode: u64 = f[6].parse().unwrap_or(0);
        if accepts && inodes.contains(&inode) {
            out.push(Listening::Unix(f.get(7).copied().unwrap_or("").to_owned()));
        }
    }
    out
}

/// Asserts that nothing a plain DevTools client would try works on `port`: no WebSocket
/// handshake on the usual paths, no `/json/version` with a DevTools URL.
async fn assert_no_devtools_on(port: u16) {
    for path in ["/devtools/browser", "/devtools/page", "/"] {
        let url = format!("ws://127.0.0.1:{port}{path}");
        let attempt = within(
            Duration::from_secs(10),
            "WebSocket probe",
            tokio_tungstenite::connect_async(url.clone()),
        )
        .await;
        assert!(attempt.is_err(), "a WebSocket client got in at {url}");
    }
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(
                b"GET /json/version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )
            .ok()?;
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        Some(text)
    })
    .await
    .expect("join")
    .unwrap_or_default();
    assert!(
        !answer.contains("webSocketDebuggerUrl"),
        "port {port} hands out a DevTools URL: {answer}"
    );
}

/// Waits until `pid` has exited (a zombie counts), through a pidfd: no polling.
async fn exited(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        // Already gone (and reaped).
        return;
    }
    // SAFETY: the descriptor was just returned by the kernel and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the descriptor, which nothing else replaces or closes.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.expect("AsyncFd");
    let _ = fd.readable().await.expect("pidfd readable");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

/// Files and directories under `dir` (not following symlinks) whose mode lets other users in.
fn readable_by_others(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.permissions().mode() & 0o077 != 0 {
                out.push((entry.path(), meta.permissions().mode() & 0o7777));
            }
            if meta.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_of_poeds_chromium_offers_devtools_to_others_and_replies_still_work() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &["--http", "127.0.0.1:0"]).await;
    let poed = daemon.pid().expect("pid") as i32;
    // A reply end to end first: the browser has opened tabs and pages by now.
    let out = run(daemon.poectl(&["ask", "through the pipe"])).await;
    assert_eq!(
        out.stdout,
        expected_reply("GPT-3.5-Turbo", "through the pipe"),
        "{}\n{}",
        out.stderr,
        daemon.log()
    );

    let main = chromium_main(&daemon);
    let args = cmdline(main);
    assert!(
        args.iter().any(|a| a == "--remote-debugging-pipe"),
        "{args:?}"
    );
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--remote-debugging-port")),
        "{args:?}"
    );
    // Its DevTools are fds 3 and 4, and they are pipes.
    for fd in [3, 4] {
        let target = std::fs::read_link(format!("/proc/{main}/fd/{fd}")).expect("fd");
        assert!(
            target.to_string_lossy().starts_with("pipe:"),
            "fd {fd} of Chromium is {target:?}"
        );
    }

    let chromium = tree(main);
    assert!(
        chromium.len() > 1,
        "Chromium's helper processes: {chromium:?}"
    );
    let mut probed = Vec::new();
    let mut own_socket = false;
    for pid in &chromium {
        for socket in listening(*pid) {
            match socket {
                Listening::Tcp(port) => {
                    panic!(
                        "Chromium process {pid} ({:?}) listens on TCP port {port}",
                        cmdline(*pid)
                    )
                }
                Listening::Unix(path) => {
                    // The one unix listener Chromium keeps is its process singleton (another
                    // Chromium on the same profile hands over its command line there). It
                    // lives in a private directory: only poed's user can reach it, the same
                    // user who can read the profile and talk to poed's own socket.
                    let path = PathBuf::from(&path);
                    assert_eq!(
                        path.file_name().and_then(|n| n.to_str()),
                        Some("SingletonSocket"),
                        "Chromium process {pid} listens on {path:?}"
                    );
                    let dir = path.parent().expect("singleton directory");
                    assert_eq!(mode(dir), 0o700, "{dir:?}");
                    // SAFETY: geteuid has no preconditions.
                    let me = unsafe { libc::geteuid() };
                    assert_eq!(std::fs::metadata(dir).expect("meta").uid(), me);
                }
            }
        }
    }
    // poed itself listens on its own socket and the HTTP front door, nothing else.
    let status = daemon.client().await.status().await.expect("status");
    let http: std::net::SocketAddr = status.http.expect("http address").parse().expect("addr");
    for socket in listening(poed) {
        match socket {
            Listening::Tcp(port) => {
                assert_eq!(port, http.port(), "poed listens on an unexpected TCP port");
                probed.push(port);
            }
            Listening::Unix(path) => {
                assert_eq!(Path::new(&path), daemon.socket);
                own_socket = true;
            }
        }
    }
    // Both kinds of listener are seen where they exist: the scan itself works.
    assert!(own_socket, "poed's own socket was not found listening");
    assert_eq!(probed, vec![http.port()], "the HTTP front door was probed");
    for port in probed {
        assert_no_devtools_on(port).await;
    }
    assert!(
        !daemon.profile.join("DevToolsActivePort").exists(),
        "Chromium wrote DevToolsActivePort: it has a debugging port"
    );
    // And it still answers, over HTTP too.
    let out = run(daemon.poectl(&["ask", "still through the pipe"])).await;
    assert_eq!(
        out.stdout,
        expected_reply("GPT-3.5-Turbo", "still through the pipe")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_is_private_and_a_wide_one_is_tightened_with_a_warning() {
    let double = fast_double().await;
    // A new profile is created private, and so is all Chromium writes into it.
    let fresh = Daemon::start(&double.base_url(), &[]).await;
    assert_eq!(mode(&fresh.profile), 0o700);
    let out = run(fresh.poectl(&["ask", "private"])).await;
    assert_eq!(out.stdout, expected_reply("GPT-3.5-Turbo", "private"));
    assert_eq!(readable_by_others(&fresh.profile), vec![]);
    assert!(!fresh.log().contains("made it private"), "{}", fresh.log());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            fresh.log().contains("without its sandbox"),
            "root must be told the sandbox is off\n{}",
            fresh.log()
        );
    }
    drop(fresh);

    // An existing profile with group and other bits is tightened, with a warning.
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile");
    std::fs::create_dir(&profile).expect("mkdir");
    std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(
        profile.join("DevToolsActivePort"),
        "9222\n/devtools/browser/stale\n",
    )
    .expect("stale port file");
    let socket = dir.path().join("run").join("poed.sock");
    let daemon = Daemon::start_in(dir, profile.clone(), socket, &double.base_url(), &[]).await;
    assert_eq!(mode(&profile), 0o700);
    let log = daemon.log();
    assert!(log.contains("made it private"), "{log}");
    assert!(
        log.contains("old_mode=755") || log.contains("old_mode=\"755\""),
        "{log}"
    );
    assert!(
        !profile.join("DevToolsActivePort").exists(),
        "stale port file removed"
    );
    let out = run(daemon.poectl(&["ask", "tightened"])).await;
    assert_eq!(out.stdout, expected_reply("GPT-3.5-Turbo", "tightened"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_chromium_is_relaunched_over_the_pipe_and_serves_again() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &["--tabs", "1"]).await;
    let client = daemon.client().await;
    let out = run(daemon.poectl(&["ask", "before"])).await;
    assert_eq!(out.stdout, expected_reply("GPT-3.5-Turbo", "before"));
    let first = chromium_main(&daemon);
    // SAFETY: killing a process of this test's own daemon.
    unsafe { libc::kill(first, libc::SIGKILL) };
    within(
        Duration::from_secs(5),
        "the killed Chromium exits",
        exited(first),
    )
    .await;
    // The daemon has no push event for a relaunch; ask `status` every 50 ms (bounded).
    within(STEP, "relaunch", async {
        loop {
            let s = client.status().await.expect("status");
            if s.browser.restarts >= 1 && s.browser.state == "up" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let second = chromium_main(&daemon);
    assert_ne!(first, second);
    assert!(cmdline(second)
        .iter()
        .any(|a| a == "--remote-debugging-pipe"));
    for pid in tree(second) {
        assert!(
            !listening(pid)
                .iter()
                .any(|l| matches!(l, Listening::Tcp(_))),
            "relaunched Chromium process {pid} listens on TCP"
        );
    }
    let out = run(daemon.poectl(&["ask", "after"])).await;
    assert_eq!(
        out.stdout,
        expected_reply("GPT-3.5-Turbo", "after"),
        "{}\n{}",
        out.stderr,
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("browser relaunched"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_does_not_outlive_a_killed_poed() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    let main = chromium_main(&daemon);
    let poed = daemon.pid().expect("pid") as i32;
    // SAFETY: killing this test's own daemon; it gets no chance to close its browser.
    unsafe { libc::kill(poed, libc::SIGKILL) };
    // Its end of the command pipe closes with it, and Chromium exits on that.
    within(
        Duration::from_secs(15),
        "Chromium exits with poed",
        exited(main),
    )
    .await;
    drop(daemon);
}

/// Runs poed on a stand-in "Chromium" script until it gives up; returns its exit code, its
/// stderr, and the pid the script wrote to `$(dirname "$0")/pid`, if it did.
async fn poed_with_chromium(script: &str, launch_timeout_secs: f64) -> (i32, String, Option<i32>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let chromium = dir.path().join("chromium");
    std::fs::write(&chromium, script).expect("script");
    std::fs::set_permissions(&chromium, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[browser]\nlaunch_timeout_secs = {launch_timeout_secs:?}\n"),
    )
    .expect("config");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_poed"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("run").join("poed.sock"))
        .arg("--profile")
        .arg(dir.path().join("profile"))
        .arg("--chromium")
        .arg(&chromium)
        .args(["--base-url", "http://127.0.0.1:9"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = within(Duration::from_secs(30), "poed gives up", cmd.output())
        .await
        .expect("run poed");
    let pid = std::fs::read_to_string(dir.path().join("pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chromium_that_dies_or_hangs_at_launch_is_reported_and_not_left_behind() {
    // Dies at once: the error says so and quotes its last words.
    let (code, stderr, _) = poed_with_chromium(
        "#!/bin/sh\necho 'ERROR: this build cannot run here' >&2\nexit 3\n",
        20.0,
    )
    .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("exited"), "{stderr}");
    assert!(stderr.contains("this build cannot run here"), "{stderr}");

    // Never answers on its pipe: the launch timeout ends it, and the process is killed.
    let (code, stderr, pid) = poed_with_chromium(
        "#!/bin/sh\necho $$ > \"$(dirname \"$0\")/pid\"\nexec sleep 60\n",
        1.0,
    )
    .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("did not answer within"), "{stderr}");
    assert!(stderr.contains("launch_timeout_secs"), "{stderr}");
    let pid = pid.expect("the stand-in wrote its pid");
    within(
        Duration::from_secs(5),
        "the hung stand-in is gone",
        exited(pid),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gpu_process_runs_at_the_lowest_priority_unless_told_otherwise() {
    let double = fast_double().await;
    let daemon = Daemon::start(&double.base_url(), &[]).await;
    daemon.wait_warm(3).await;
    let browser = chromium_main(&daemon);
    // The supervisor lowers it as it opens tabs and at each health check (every 3 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lowered = loop {
        let gpu = gpu_processes(browser);
        let nices: Vec<i64> = gpu.iter().flat_map(|p| thread_nices(*p)).collect();
        if !gpu.is_empty() && !nices.is_empty() && nices.iter().all(|n| *n == 19) {
            break gpu;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GPU processes {gpu:?} of {browser} still at {nices:?} after 10 s\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Nothing else of Chromium's was lowered (Chromium sets some priorities of its own).
    for pid in tree(browser).into_iter().filter(|p| !lowered.contains(p)) {
        assert!(!thread_nices(pid).contains(&19), "{pid} {:?}", cmdline(pid));
    }
    let out = run(daemon.poectl(&["ask", "with the GPU process lowered"])).await;
    assert_eq!(
        out.stdout,
        expected_reply("GPT-3.5-Turbo", "with the GPU process lowered"),
        "{}",
        out.stderr
    );

    // `gpu_process_nice = 0` leaves it as Chromium runs it, through tab openings, a reply and
    // a health check.
    let other =
        Daemon::start_with_config(&double.base_url(), "[browser]\ngpu_process_nice = 0\n", &[])
            .await;
    other.wait_warm(3).await;
    let out = run(other.poectl(&["ask", "with the GPU process as it is"])).await;
    assert_eq!(
        out.stdout,
        expected_reply("GPT-3.5-Turbo", "with the GPU process as it is"),
        "{}",
        out.stderr
    );
    let browser = chromium_main(&other);
    let gpu = gpu_processes(browser);
    assert!(!gpu.is_empty(), "no GPU process under {browser}");
    for pid in gpu {
        assert!(!thread_nices(pid).contains(&19), "{pid}");
    }
}
