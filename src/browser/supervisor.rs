//! The browser supervisor: the one owner of chromiumoxide's `Browser`.
//!
//! It runs as a task (an actor). It launches Chromium on the persistent profile, or attaches
//! to a running one (`--connect`), drives the CDP handler in its own task, and opens tabs on
//! request. It watches the browser's health three ways, because a dead browser's handler
//! can go quiet instead of ending: the handler's error or end, the child's exit (on every
//! SIGCHLD), and a periodic `Browser.getVersion` with a short timeout. When the browser is
//! found dead it cancels that browser generation's token (requests running on its tabs fail
//! with `browser_crashed` at once), then relaunches on the same profile with backoff; the
//! engine sees the new generation and rebuilds the tab pool. Others hold a [`BrowserHandle`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig as CdpConfig};
use chromiumoxide::cdp::browser_protocol::browser::GetVersionParams;
use chromiumoxide::cdp::browser_protocol::network::CookieParam;
use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
use chromiumoxide::{Handler, Page};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::browser::profile_lock::{self, LockState};
use crate::config::{secs, BrowserConfig};
use crate::protocol::BrowserStatus;
use crate::redact;

/// How often the supervisor checks that the browser still answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(3);
/// How long a health check may take before the browser counts as wedged.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Relaunch backoff: first delay, doubled per failed attempt up to the maximum.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

enum Command {
    /// A new tab, with the token of the browser generation it lives in.
    NewPage(oneshot::Sender<Result<(Page, CancellationToken), String>>),
    SetCookies(Vec<CookieParam>, oneshot::Sender<Result<(), String>>),
    /// Close the browser and launch it again on the same profile, headless or with a window.
    Relaunch(bool, oneshot::Sender<Result<(), String>>),
    Shutdown(oneshot::Sender<()>),
    /// A round trip through the supervisor to the browser (`Browser.getVersion`).
    Ping(oneshot::Sender<Result<(), String>>),
}

/// One browser process (or attachment), from launch to death.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Counts launches: 1 for the first browser, +1 per restart.
    pub number: u64,
    pub up: bool,
    /// Cancelled when this generation's browser is found dead.
    pub gone: CancellationToken,
}

/// A cheap, cloneable handle to the supervisor task.
#[derive(Clone)]
pub struct BrowserHandle {
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<BrowserStatus>>,
    generation: watch::Receiver<Generation>,
}

impl BrowserHandle {
    /// Opens a new `about:blank` tab in the current browser; the token is cancelled when
    /// that browser is found dead.
    pub async fn new_page(&self) -> Result<(Page, CancellationToken), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::NewPage(tx))
            .await
            .map_err(|_| "the browser supervisor has stopped".to_string())?;
        rx.await
            .map_err(|_| "the browser supervisor has stopped".to_string())?
    }

    pub fn status(&self) -> BrowserStatus {
        lock(&self.status).clone()
    }

    /// Stores cookies in the browser's profile (they persist like the user's own).
    pub async fn set_cookies(&self, cookies: Vec<CookieParam>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::SetCookies(cookies, tx))
            .await
            .map_err(|_| "the browser supervisor has stopped".to_string())?;
        rx.await
            .map_err(|_| "the browser supervisor has stopped".to_string())?
    }

    /// The current browser generation.
    pub fn generation(&self) -> Generation {
        self.generation.borrow().clone()
    }

    /// A receiver that sees every change of generation or up/down state.
    pub fn watch(&self) -> watch::Receiver<Generation> {
        self.generation.clone()
    }

    /// Closes the launched browser and starts it again on the same profile, headless or
    /// with a visible window (for signing in). Running requests on it fail; the engine
    /// rebuilds the tab pool on the new browser.
    pub async fn relaunch(&self, headless: bool) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Relaunch(headless, tx))
            .await
            .map_err(|_| "the browser supervisor has stopped".to_string())?;
        rx.await
            .map_err(|_| "the browser supervisor has stopped".to_string())?
    }

    /// A round trip through the supervisor to the browser and back: proves both answer.
    pub async fn ping(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Ping(tx))
            .await
            .map_err(|_| "the browser supervisor has stopped".to_string())?;
        rx.await
            .map_err(|_| "the browser supervisor has stopped".to_string())?
    }

    /// Closes the browser (a launched Chromium exits; an attached one is left running).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Instance {
    browser: Browser,
    handler_died: oneshot::Receiver<String>,
    handler: tokio::task::JoinHandle<()>,
    version: Option<String>,
}

/// Launches or attaches to Chromium and starts the supervisor task. A failure of the first
/// launch is returned (a configuration problem is better reported at once than retried).
pub async fn start(cfg: &BrowserConfig) -> Result<BrowserHandle, String> {
    let instance = open(cfg).await?;
    let status = Arc::new(Mutex::new(BrowserStatus {
        state: "up".into(),
        mode: if cfg.connect.is_some() {
            "connected"
        } else {
            "launched"
        }
        .into(),
        version: instance.version.clone(),
        restarts: 0,
        last_error: None,
    }));
    let (gen_tx, gen_rx) = watch::channel(Generation {
        number: 1,
        up: true,
        gone: CancellationToken::new(),
    });
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(supervise(cfg.clone(), instance, rx, gen_tx, status.clone()));
    Ok(BrowserHandle {
        commands: tx,
        status,
        generation: gen_rx,
    })
}

async fn open(cfg: &BrowserConfig) -> Result<Instance, String> {
    let (browser, mut handler) = match &cfg.connect {
        Some(url) => tokio::time::timeout(secs(cfg.launch_timeout_secs), Browser::connect(url.clone()))
            .await
            .map_err(|_| format!("no answer from the browser at {} within {}s; is it running with --remote-debugging-port?", redact::url(url), cfg.launch_timeout_secs))?
            .map_err(|e| format!("cannot attach to the browser at {}: {}; start it with --remote-debugging-port=PORT and pass http://127.0.0.1:PORT", redact::url(url), redact::text(&e.to_string())))?,
        None => launch(cfg).await?,
    };
    let (died_tx, died_rx) = oneshot::channel::<String>();
    let handler = tokio::spawn(async move {
        let why = loop {
            match handler.next().await {
                Some(Ok(())) => {}
                Some(Err(e)) => break format!("DevTools connection failed: {e}"),
                None => break "DevTools connection closed".to_string(),
            }
        };
        let _ = died_tx.send(why);
    });
    let version = match tokio::time::timeout(
        HEALTH_TIMEOUT * 5,
        browser.execute(GetVersionParams::default()),
    )
    .await
    {
        Ok(Ok(v)) => Some(v.result.product.clone()),
        _ => None,
    };
    info!(version = version.as_deref().unwrap_or("?"), "browser up");
    Ok(Instance {
        browser,
        handler_died: died_rx,
        handler,
        version,
    })
}

async fn launch(cfg: &BrowserConfig) -> Result<(Browser, Handler), String> {
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
    let config = chromium_config(cfg)?;
    debug!(
        chromium = %cfg.chromium.display(),
        profile = %cfg.profile.display(),
        headless = cfg.headless,
        proxy = ?cfg.proxy.as_deref().map(redact::proxy),
        args = ?cfg.args.iter().map(|a| redact::arg(a)).collect::<Vec<_>>(),
        "launching chromium"
    );
    Browser::launch(config).await.map_err(|e| {
        format!(
            "cannot start Chromium ({}) on profile {}: {e}",
            cfg.chromium.display(),
            cfg.profile.display()
        )
    })
}

/// The chromiumoxide launch configuration poed uses for `cfg` (also used by the benchmark's
/// baselines, so that they run the same Chromium the same way).
pub fn chromium_config(cfg: &BrowserConfig) -> Result<CdpConfig, String> {
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
    builder.build()
}

/// Why the serving loop ended.
enum Ended {
    Died(String),
    Relaunch(bool, oneshot::Sender<Result<(), String>>),
    Shutdown(Option<oneshot::Sender<()>>),
}

async fn supervise(
    mut cfg: BrowserConfig,
    first: Instance,
    mut commands: mpsc::Receiver<Command>,
    generation: watch::Sender<Generation>,
    status: Arc<Mutex<BrowserStatus>>,
) {
    let mut children = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot watch SIGCHLD; relying on health checks");
            None
        }
    };
    let mut instance = Some(first);
    let mut backoff = BACKOFF_FIRST;
    loop {
        let Some(mut inst) = instance.take() else {
            // Relaunch, answering commands meanwhile.
            let attempt = tokio::time::sleep(backoff);
            tokio::pin!(attempt);
            loop {
                tokio::select! {
                    cmd = commands.recv() => match cmd {
                        Some(Command::NewPage(reply)) => { let _ = reply.send(Err("the browser is restarting".into())); }
                        Some(Command::SetCookies(_, reply)) => { let _ = reply.send(Err("the browser is restarting; try again shortly".into())); }
                        Some(Command::Relaunch(_, reply)) => { let _ = reply.send(Err("the browser is restarting; try again shortly".into())); }
                        Some(Command::Ping(reply)) => { let _ = reply.send(Err("the browser is restarting".into())); }
                        Some(Command::Shutdown(done)) => { lock(&status).state = "stopped".into(); let _ = done.send(()); return; }
                        None => return,
                    },
                    _ = &mut attempt => break,
                }
            }
            match open(&cfg).await {
                Ok(inst) => {
                    backoff = BACKOFF_FIRST;
                    let number = generation.borrow().number + 1;
                    {
                        let mut s = lock(&status);
                        s.state = "up".into();
                        s.restarts += 1;
                        s.version.clone_from(&inst.version);
                    }
                    info!(generation = number, "browser relaunched");
                    generation.send_replace(Generation {
                        number,
                        up: true,
                        gone: CancellationToken::new(),
                    });
                    instance = Some(inst);
                }
                Err(e) => {
                    error!(error = %e, retry_in = ?backoff, "browser relaunch failed");
                    lock(&status).last_error = Some(e);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        };
        let gone = generation.borrow().gone.clone();
        match serve(&mut inst, &gone, &mut commands, children.as_mut()).await {
            Ended::Shutdown(done) => {
                // Tabs learn first that this browser is going, then it goes.
                let current = generation.borrow().clone();
                current.gone.cancel();
                close(&mut inst.browser).await;
                inst.handler.abort();
                lock(&status).state = "stopped".into();
                generation.send_replace(Generation {
                    up: false,
                    ..current
                });
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            Ended::Relaunch(headless, reply) => {
                info!(headless, "relaunching the browser on request");
                let current = generation.borrow().clone();
                current.gone.cancel();
                close(&mut inst.browser).await;
                inst.handler.abort();
                generation.send_replace(Generation {
                    up: false,
                    ..current
                });
                let before = cfg.headless;
                cfg.headless = headless;
                match open(&cfg).await {
                    Ok(new) => {
                        lock(&status).version.clone_from(&new.version);
                        lock(&status).state = "up".into();
                        generation.send_replace(Generation {
                            number: current.number + 1,
                            up: true,
                            gone: CancellationToken::new(),
                        });
                        instance = Some(new);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        // Back to the previous mode through the ordinary relaunch path.
                        cfg.headless = before;
                        lock(&status).state = "restarting".into();
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Ended::Died(why) => {
                warn!(reason = %why, "browser is down; relaunching");
                let current = generation.borrow().clone();
                current.gone.cancel();
                generation.send_replace(Generation {
                    up: false,
                    ..current
                });
                {
                    let mut s = lock(&status);
                    s.state = "restarting".into();
                    s.last_error = Some(why);
                }
                // Make sure the old process is gone before a new one takes the profile.
                if let Some(Err(e)) = inst.browser.kill().await {
                    debug!(error = %e, "kill after death");
                }
                inst.handler.abort();
            }
        }
    }
}

/// Serves commands for one live browser until it dies or shutdown is asked.
async fn serve(
    inst: &mut Instance,
    gone: &CancellationToken,
    commands: &mut mpsc::Receiver<Command>,
    mut children: Option<&mut tokio::signal::unix::Signal>,
) -> Ended {
    let mut health = tokio::time::interval(HEALTH_INTERVAL);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    loop {
        let child_signal = async {
            match children.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::NewPage(reply)) => {
                    // Each tab in a window of its own: a background tab gets no frames, and
                    // input sent to it waits for one (seconds). Own windows all render.
                    let params = CreateTargetParams::builder()
                        .url("about:blank")
                        .new_window(true)
                        .build()
                        .unwrap_or_else(|_| CreateTargetParams::new("about:blank"));
                    let result = tokio::time::timeout(Duration::from_secs(10), inst.browser.new_page(params))
                        .await
                        .map_err(|_| "the browser did not open a tab within 10s".to_string())
                        .and_then(|r| r.map_err(|e| format!("cannot open a tab: {e}")))
                        .map(|page| (page, gone.clone()));
                    let _ = reply.send(result);
                }
                Some(Command::SetCookies(cookies, reply)) => {
                    let result = tokio::time::timeout(Duration::from_secs(10), inst.browser.set_cookies(cookies))
                        .await
                        .map_err(|_| "the browser did not store the cookies within 10s".to_string())
                        .and_then(|r| r.map(|_| ()).map_err(|e| format!("the browser refused the cookies: {e}")));
                    let _ = reply.send(result);
                }
                Some(Command::Relaunch(headless, reply)) => {
                    if inst.browser.get_mut_child().is_none() {
                        let _ = reply.send(Err("poed is attached to your own browser (--connect); it cannot relaunch it".into()));
                    } else {
                        return Ended::Relaunch(headless, reply);
                    }
                }
                Some(Command::Ping(reply)) => {
                    let answered = tokio::time::timeout(HEALTH_TIMEOUT, inst.browser.execute(GetVersionParams::default())).await;
                    let _ = reply.send(match answered {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("the browser failed a health check: {e}")),
                        Err(_) => Err(format!("the browser did not answer within {HEALTH_TIMEOUT:?}")),
                    });
                }
                Some(Command::Shutdown(done)) => return Ended::Shutdown(Some(done)),
                None => return Ended::Shutdown(None),
            },
            why = &mut inst.handler_died => {
                return Ended::Died(why.unwrap_or_else(|_| "DevTools handler stopped".into()));
            }
            _ = child_signal => {
                if let Ok(Some(status)) = inst.browser.try_wait() {
                    return Ended::Died(format!("Chromium exited ({status})"));
                }
            }
            _ = health.tick() => {
                if let Ok(Some(status)) = inst.browser.try_wait() {
                    return Ended::Died(format!("Chromium exited ({status})"));
                }
                let answered = tokio::time::timeout(HEALTH_TIMEOUT, inst.browser.execute(GetVersionParams::default())).await;
                if !matches!(answered, Ok(Ok(_))) {
                    return Ended::Died(format!("Chromium did not answer a health check within {HEALTH_TIMEOUT:?}"));
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
