//! The browser supervisor: the one owner of chromiumoxide's `Browser`.
//!
//! It runs as a task (an actor): it launches Chromium on the persistent profile, or attaches
//! to a running one (`--connect`), drives the CDP handler in its own task, opens tabs on
//! request, watches the browser's health (handler errors, a periodic `Browser.getVersion`
//! with a short timeout, since a dead browser's handler can go quiet instead of ending), and
//! closes Chromium on shutdown. Others hold a cheap [`BrowserHandle`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig as CdpConfig};
use chromiumoxide::cdp::browser_protocol::browser::GetVersionParams;
use chromiumoxide::Page;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::browser::profile_lock::{self, LockState};
use crate::config::{secs, BrowserConfig};
use crate::protocol::BrowserStatus;

/// How often the supervisor checks that the browser still answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long a health check may take before the browser counts as wedged.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

enum Command {
    NewPage(oneshot::Sender<Result<Page, String>>),
    Shutdown(oneshot::Sender<()>),
}

/// A cheap, cloneable handle to the supervisor task.
#[derive(Clone)]
pub struct BrowserHandle {
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<BrowserStatus>>,
    /// `true` while the browser is up; flips to `false` when it is found dead.
    alive: watch::Receiver<bool>,
}

impl BrowserHandle {
    /// Opens a new `about:blank` tab.
    pub async fn new_page(&self) -> Result<Page, String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::NewPage(tx))
            .await
            .map_err(|_| "the browser supervisor has stopped".to_string())?;
        rx.await
            .map_err(|_| "the browser supervisor has stopped".to_string())?
    }

    pub fn status(&self) -> BrowserStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// Resolves when the browser is found dead.
    pub async fn died(&self) {
        let mut alive = self.alive.clone();
        let _ = alive.wait_for(|up| !*up).await;
    }

    /// Closes the browser (a launched Chromium exits; an attached one is left running).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn set_status(status: &Mutex<BrowserStatus>, f: impl FnOnce(&mut BrowserStatus)) {
    match status.lock() {
        Ok(mut s) => f(&mut s),
        Err(p) => f(&mut p.into_inner()),
    }
}

/// Launches or attaches to Chromium and starts the supervisor task.
pub async fn start(cfg: &BrowserConfig) -> Result<BrowserHandle, String> {
    let (browser, mut handler, mode) = match &cfg.connect {
        Some(url) => {
            let (b, h) = tokio::time::timeout(secs(cfg.launch_timeout_secs), Browser::connect(url.clone()))
                .await
                .map_err(|_| format!("no answer from the browser at {url} within {}s; is it running with --remote-debugging-port?", cfg.launch_timeout_secs))?
                .map_err(|e| format!("cannot attach to the browser at {url}: {e}; start it with --remote-debugging-port=PORT and pass http://127.0.0.1:PORT"))?;
            (b, h, "connected")
        }
        None => {
            let (b, h) = launch(cfg).await?;
            (b, h, "launched")
        }
    };
    let status = Arc::new(Mutex::new(BrowserStatus {
        state: "up".into(),
        mode: mode.into(),
        version: None,
        restarts: 0,
        last_error: None,
    }));
    let (alive_tx, alive_rx) = watch::channel(true);
    let (handler_err_tx, handler_err_rx) = oneshot::channel::<String>();
    tokio::spawn(async move {
        let why = loop {
            match handler.next().await {
                Some(Ok(())) => {}
                Some(Err(e)) => break format!("DevTools connection failed: {e}"),
                None => break "DevTools connection closed".to_string(),
            }
        };
        let _ = handler_err_tx.send(why);
    });
    if let Ok(Ok(v)) =
        tokio::time::timeout(HEALTH_TIMEOUT, browser.execute(GetVersionParams::default())).await
    {
        info!(product = %v.result.product, mode, "browser up");
        set_status(&status, |s| s.version = Some(v.result.product.clone()));
    }
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(supervise(
        browser,
        rx,
        handler_err_rx,
        alive_tx,
        status.clone(),
    ));
    Ok(BrowserHandle {
        commands: tx,
        status,
        alive: alive_rx,
    })
}

async fn launch(cfg: &BrowserConfig) -> Result<(Browser, chromiumoxide::Handler), String> {
    std::fs::create_dir_all(&cfg.profile).map_err(|e| {
        format!(
            "cannot create the profile directory {}: {e}",
            cfg.profile.display()
        )
    })?;
    match profile_lock::check_and_clear(&cfg.profile)? {
        LockState::ClearedStale(owner) => {
            warn!(pid = owner.pid, "cleared a stale profile lock")
        }
        LockState::Free => {}
    }
    if !cfg.chromium.exists() {
        return Err(format!(
            "Chromium not found at {}; install it (Debian: apt-get install chromium) or set browser.chromium / --chromium",
            cfg.chromium.display()
        ));
    }
    let mut builder = CdpConfig::builder()
        .chrome_executable(&cfg.chromium)
        .user_data_dir(&cfg.profile)
        .launch_timeout(secs(cfg.launch_timeout_secs))
        .viewport(None)
        .window_size(1280, 900)
        // chromiumoxide 0.9 turns "--x=y" into a flag *named* "--x=y": pass bare names.
        .arg("disable-gpu")
        .arg("disable-component-update")
        .arg((
            "disable-features",
            &["Translate", "MediaRouter", "OptimizationHints"][..],
        ))
        .arg("no-default-browser-check");
    // Headless is chromiumoxide's default.
    if !cfg.headless {
        builder = builder.with_head();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Chromium refuses to run as root with its sandbox.
        builder = builder.no_sandbox();
    }
    if let Some(proxy) = &cfg.proxy {
        builder = builder.arg(("proxy-server", proxy.as_str()));
    }
    for extra in &cfg.args {
        let extra = extra.trim_start_matches('-');
        builder = match extra.split_once('=') {
            Some((k, v)) => builder.arg((k, v)),
            None => builder.arg(extra),
        };
    }
    let config = builder.build()?;
    debug!(?config, "launching chromium");
    Browser::launch(config).await.map_err(|e| {
        format!(
            "cannot start Chromium ({}) on profile {}: {e}",
            cfg.chromium.display(),
            cfg.profile.display()
        )
    })
}

async fn supervise(
    mut browser: Browser,
    mut commands: mpsc::Receiver<Command>,
    mut handler_died: oneshot::Receiver<String>,
    alive: watch::Sender<bool>,
    status: Arc<Mutex<BrowserStatus>>,
) {
    let mut health = tokio::time::interval(HEALTH_INTERVAL);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mark_down = |why: String| {
        warn!(reason = %why, "browser is down");
        set_status(&status, |s| {
            s.state = "down".into();
            s.last_error = Some(why);
        });
        let _ = alive.send(false);
    };
    let mut up = true;
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::NewPage(reply)) => {
                    let result = if up {
                        browser.new_page("about:blank").await.map_err(|e| format!("cannot open a tab: {e}"))
                    } else {
                        Err("the browser is down".into())
                    };
                    let _ = reply.send(result);
                }
                Some(Command::Shutdown(done)) => {
                    close(&mut browser).await;
                    set_status(&status, |s| s.state = "stopped".into());
                    let _ = alive.send(false);
                    let _ = done.send(());
                    return;
                }
                None => {
                    close(&mut browser).await;
                    return;
                }
            },
            why = &mut handler_died, if up => {
                up = false;
                mark_down(why.unwrap_or_else(|_| "DevTools handler stopped".into()));
            }
            _ = health.tick(), if up => {
                let exited = matches!(browser.try_wait(), Ok(Some(_)));
                let answers = !exited && matches!(
                    tokio::time::timeout(HEALTH_TIMEOUT, browser.execute(GetVersionParams::default())).await,
                    Ok(Ok(_))
                );
                if !answers {
                    up = false;
                    mark_down(if exited { "Chromium exited".into() } else { "Chromium stopped answering".into() });
                }
            }
        }
    }
}

/// Closes a launched browser gracefully, then makes sure the process is gone.
async fn close(browser: &mut Browser) {
    if browser.get_mut_child().is_none() {
        // Attached with --connect: the browser is the user's; leave it running.
        return;
    }
    let graceful = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = browser.close().await;
        browser.wait().await
    })
    .await;
    if !matches!(graceful, Ok(Ok(Some(_)))) {
        warn!("Chromium did not exit in time; killing it");
        if let Some(Err(e)) = browser.kill().await {
            warn!(error = %e, "could not kill Chromium");
        }
    }
    info!("browser closed");
}
