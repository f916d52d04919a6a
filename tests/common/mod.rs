//! Shared set-up for the end-to-end tests: the real `poed` binary on temporary paths,
//! readiness awaited through a stand-in for systemd's notify socket (no sleeps), the daemon's
//! log kept and printed when a test fails, and helpers for `poectl` and raw socket clients.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use poed::client::Client;
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

pub mod chromium;
pub mod procs;

/// Upper bound for any single end-to-end test step that waits on the browser.
pub const STEP: Duration = Duration::from_secs(60);

/// Fails the test if `fut` does not finish within `limit`.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Waits until the reply has streamed some text.
pub async fn until_text(reply: &mut poed::client::Reply) {
    use poed::protocol::Event;
    loop {
        match within(STEP, "first text", reply.next()).await {
            Some(Event::Delta { .. } | Event::Replace { .. }) => return,
            Some(e) if e.is_final() => panic!("the reply ended before any text: {e:?}"),
            None => panic!("the connection closed before any text"),
            _ => {}
        }
    }
}

/// Waits up to `limit` for the reply's final event (`done` or `error`).
pub async fn final_event(
    reply: &mut poed::client::Reply,
    limit: Duration,
) -> poed::protocol::Event {
    loop {
        let e = within(limit, "final event", reply.next())
            .await
            .expect("the connection closed before the final event");
        if e.is_final() {
            return e;
        }
    }
}

/// A running `poed` with its own socket, profile and log.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub profile: PathBuf,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

/// Flags every test daemon gets: short timeouts so failures are fast.
const TEST_FLAGS: &[&str] = &[
    "--prompt-timeout",
    "5",
    "--idle-timeout",
    "3",
    "--reply-timeout",
    "60",
    "--min-send-interval-ms",
    "0",
];

impl Daemon {
    /// Starts poed against `base_url` with `extra` flags and waits for READY=1.
    pub async fn start(base_url: &str, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("profile");
        let socket = dir.path().join("run").join("poed.sock");
        Self::start_in(dir, profile, socket, base_url, extra).await
    }

    /// Like [`Daemon::start`] with given paths (for tests of stale files and second instances).
    pub async fn start_in(
        dir: tempfile::TempDir,
        profile: PathBuf,
        socket: PathBuf,
        base_url: &str,
        extra: &[&str],
    ) -> Daemon {
        Self::start_with_env(dir, profile, socket, base_url, extra, &[]).await
    }

    /// poed with its DEFAULT settings (none of the tests' short timeouts): what a user gets.
    /// For the benchmark.
    pub async fn start_as_users_get_it(base_url: &str, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("profile");
        let socket = dir.path().join("run").join("poed.sock");
        // Its default log level too (the tests' daemons log at debug).
        let env = [("RUST_LOG", "")];
        let spawned = spawn_with(dir.path(), &profile, &socket, base_url, &[], extra, &env);
        Self::ready(dir, profile, socket, spawned).await
    }

    /// Like [`Daemon::start`] with a config file holding `toml`.
    pub async fn start_with_config(base_url: &str, toml: &str, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("profile");
        let socket = dir.path().join("run").join("poed.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, toml).expect("config");
        let config = config.display().to_string();
        let mut args = vec!["--config", config.as_str()];
        args.extend_from_slice(extra);
        Self::start_in(dir, profile, socket, base_url, &args).await
    }

    /// Like [`Daemon::start_in`] with extra environment variables (e.g. `DISPLAY`).
    pub async fn start_with_env(
        dir: tempfile::TempDir,
        profile: PathBuf,
        socket: PathBuf,
        base_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let spawned = spawn(dir.path(), &profile, &socket, base_url, extra, env);
        Self::ready(dir, profile, socket, spawned).await
    }

    /// The daemon `spawned` on these paths, once it said READY=1.
    async fn ready(
        dir: tempfile::TempDir,
        profile: PathBuf,
        socket: PathBuf,
        (child, log, notify): (Child, PathBuf, UnixDatagram),
    ) -> Daemon {
        let mut daemon = Daemon {
            child: Some(child),
            socket,
            profile,
            log,
            dir,
        };
        daemon.wait_ready(notify).await;
        daemon
    }

    async fn wait_ready(&mut self, notify: UnixDatagram) {
        let mut buf = vec![0u8; 4096];
        let child = self.child.as_mut().expect("child");
        let ready = tokio::time::timeout(STEP, async {
            loop {
                tokio::select! {
                    n = notify.recv(&mut buf) => {
                        let msg = String::from_utf8_lossy(&buf[..n.expect("notify recv")]).to_string();
                        if msg.lines().any(|l| l == "READY=1") {
                            return Ok(());
                        }
                    }
                    status = child.wait() => return Err(format!("poed exited before READY: {status:?}")),
                }
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}\n--- poed log ---\n{}", self.log()),
            Err(_) => panic!(
                "poed not ready within {STEP:?}\n--- poed log ---\n{}",
                self.log()
            ),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub async fn client(&self) -> Client {
        within(
            Duration::from_secs(5),
            "connect",
            Client::connect(&self.socket),
        )
        .await
        .expect("connect to poed")
    }

    /// Waits until `n` tabs sit idle and warm. The daemon has no push event for this, so it
    /// asks `status` every 50 ms (bounded).
    pub async fn wait_warm(&self, n: usize) {
        let client = self.client().await;
        within(STEP, "warm tabs", async {
            loop {
                let s = client.status().await.expect("status");
                if s.pool.warm >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    /// Waits until the daemon's log holds `needle`. A log file has no event to await, so it
    /// is read every 50 ms (bounded).
    pub async fn wait_log(&self, needle: &str, limit: Duration) {
        within(limit, needle, async {
            while !self.log().contains(needle) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    /// `poectl` pointed at this daemon.
    pub fn poectl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poectl"));
        cmd.args(args)
            .env("POED_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Stops this daemon (SIGTERM) and starts another on the same data directory, profile
    /// and socket, with `extra` flags.
    pub async fn restart(mut self, base_url: &str, extra: &[&str]) -> Daemon {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let (profile, socket) = (self.profile.clone(), self.socket.clone());
        let status = self.stop().await;
        assert!(status.success(), "poed did not stop cleanly: {status:?}");
        Self::start_in(dir, profile, socket, base_url, extra).await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("child");
        if let Some(pid) = child.id() {
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "poed did not exit after SIGTERM\n--- poed log ---\n{}",
                self.log()
            ),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- poed log ({}) ---\n{}", self.log.display(), self.log());
        }
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: sending a signal to our own child. SIGTERM lets poed close Chromium.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                // Drop cannot await: give poed a bounded moment to close its browser.
                for _ in 0..150 {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.start_kill();
            }
        }
    }
}

fn spawn(
    dir: &Path,
    profile: &Path,
    socket: &Path,
    base_url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Child, PathBuf, UnixDatagram) {
    spawn_with(dir, profile, socket, base_url, TEST_FLAGS, extra, env)
}

fn spawn_with(
    dir: &Path,
    profile: &Path,
    socket: &Path,
    base_url: &str,
    flags: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Child, PathBuf, UnixDatagram) {
    let notify_path = dir.join(format!("notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let log = dir.join("poed.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    let config = dir.join("empty-config.toml");
    std::fs::write(&config, "").expect("config");
    // `POED_BENCH_POED=PATH`: another build of poed to measure, for comparisons in turns.
    let poed = std::env::var_os("POED_BENCH_POED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_poed")));
    let child = Command::new(poed)
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(socket)
        .arg("--profile")
        .arg(profile)
        .args(["--base-url", base_url])
        .args(flags)
        .args(extra)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "poed=debug,warn")
        .env_remove("POED_SOCKET")
        // Tests decide whether there is a display.
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn poed");
    (child, log, notify)
}

/// Output of a finished `poectl`.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run(mut cmd: Command) -> Output {
    let out = within(STEP, "poectl", cmd.output())
        .await
        .expect("run poectl");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
