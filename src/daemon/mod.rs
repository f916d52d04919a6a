//! The daemon: binds the socket, starts the browser and the engine, serves clients, and
//! shuts down in order.
//!
//! - [`socket`]: binding the IPC socket safely (0700 directory, 0600 socket, a live daemon
//!   refused, a stale socket file replaced).
//! - [`ipc_server`]: the accept loop and per-connection tasks (the NDJSON protocol).
//! - [`notify`]: systemd readiness and status lines.
//! - [`engine`]: the request life cycle (model, queue, site driver, reply stream), sign-in
//!   and cookie import, `status`; shared by both front doors (this IPC server and
//!   [`crate::http`]).
//! - [`warm_pool`]: opens, warms and replaces the pool's tabs.
//! - [`account`]: what is known of the account (signed in, limits).
//! - [`bots`]: the site's bots known beyond the model table (seen in replies, discovered
//!   from the site's bot list and cached).

pub mod account;
pub mod bots;
pub mod conversations;
pub mod engine;
pub mod ipc_server;
pub mod notify;
pub mod socket;
pub mod warm_pool;

use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::Listener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::browser::supervisor;
use crate::config::{secs, Config};
use engine::Engine;

/// Runs the daemon on an already bound `listener` until `shutdown` is cancelled.
/// `on_ready` is called once the browser is up and clients are being served.
pub async fn run(
    config: Config,
    listener: Listener,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(),
) -> Result<(), String> {
    let config = Arc::new(config);
    // The HTTP listener is bound first, so a bad address fails before Chromium starts.
    let http = crate::http::bind(&config.http).await?;
    let browser = tokio::select! {
        b = supervisor::start(&config.browser) => b?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let engine = match Engine::new(config.clone(), browser.clone()) {
        Ok(e) => e,
        Err(e) => {
            browser.shutdown().await;
            return Err(e);
        }
    };
    if let Some(path) = socket_path(&listener) {
        engine.set_socket(path);
    }
    if let Err(e) = engine.open_tabs(shutdown.clone()).await {
        browser.shutdown().await;
        return Err(e);
    }
    let tasks = TaskTracker::new();
    let requests = CancellationToken::new();
    let server = tokio::spawn(ipc_server::serve(
        listener,
        engine.clone(),
        config.max_line_bytes,
        shutdown.clone(),
        requests.clone(),
        tasks.clone(),
    ));
    let http_task = http.map(|bound| {
        if let Some(addr) = bound.local_addr() {
            let _ = engine.http_addr.set(addr.to_string());
        }
        tokio::spawn(crate::http::serve(
            bound,
            engine.clone(),
            config.max_line_bytes,
            shutdown.clone(),
            requests.clone(),
        ))
    });
    let socket = engine.status().socket;
    info!(socket = %socket, tabs = config.pool.tabs, "poed ready");
    notify::notify(&format!(
        "READY=1\nSTATUS=serving on {socket} with {} tabs",
        config.pool.tabs
    ));
    on_ready();
    let status_task = tokio::spawn(report_status(engine.clone()));
    shutdown.cancelled().await;
    status_task.abort();

    info!("shutting down");
    notify::notify("STOPPING=1\nSTATUS=shutting down");
    let _ = server.await;
    tasks.close();
    let grace = secs(config.timeouts.shutdown_grace_secs);
    // Both front doors stop accepting; running replies get the grace period to finish.
    let drained = tokio::time::timeout(grace, async {
        tasks.wait().await;
        if let Some(task) = http_task {
            let _ = task.await;
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            ?grace,
            "running requests did not finish within the grace period; stopping them"
        );
        engine.begin_shutdown();
        requests.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    }
    engine.close_pool().await;
    browser.shutdown().await;
    info!("bye");
    Ok(())
}

/// The path of the unix socket `listener` listens on (also under socket activation).
fn socket_path(listener: &Listener) -> Option<String> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = match listener {
        Listener::UdSocket(l) => l.as_fd().as_raw_fd(),
    };
    // SAFETY: getsockname writes at most `len` bytes into the zeroed address we own.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let rc =
        unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) };
    if rc != 0 || addr.sun_family != libc::AF_UNIX as libc::sa_family_t {
        return None;
    }
    let bytes: Vec<u8> = addr
        .sun_path
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    if bytes.is_empty() {
        // An abstract socket: its name starts with a NUL byte.
        let name: Vec<u8> = addr.sun_path[1..]
            .iter()
            .take((len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>() + 1))
            .map(|c| *c as u8)
            .collect();
        return Some(format!("@{}", String::from_utf8_lossy(&name)));
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// How long the watchdog's round trip through the engine and the browser may take.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// Keeps systemd's status line current and pets its watchdog (when `WatchdogSec` is set).
/// The watchdog is petted only after a round trip through the request path (the engine's
/// pool and the browser) succeeded, so a wedged daemon or browser gets restarted.
async fn report_status(engine: Arc<Engine>) {
    let watchdog = notify::watchdog_interval();
    let period = watchdog
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(10))
        .min(Duration::from_secs(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = engine.status();
        let line = format!(
            "STATUS=browser {}; {} tabs ({} idle, {} busy); {} queued; account {}",
            s.browser.state, s.pool.tabs, s.pool.idle, s.pool.busy, s.pool.queued, s.account.state
        );
        if watchdog.is_none() {
            notify::notify(&line);
            continue;
        }
        match tokio::time::timeout(PROBE_LIMIT.min(period), engine.probe()).await {
            Ok(Ok(())) => notify::notify(&format!("WATCHDOG=1\n{line}")),
            Ok(Err(e)) => {
                warn!(error = %e, "health probe failed; not feeding the watchdog");
                notify::notify(&line);
            }
            Err(_) => {
                warn!("health probe timed out; not feeding the watchdog");
                notify::notify(&line);
            }
        }
    }
}
