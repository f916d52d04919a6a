//! The browser supervisor: the one owner of chromiumoxide's `Browser`.
//!
//! It runs as a task (an actor). It launches Chromium on the persistent profile with its
//! DevTools on a private pipe ([`crate::browser::pipe`]: no debugging port that another local
//! process could use), or attaches to a running one (`--connect`), drives the CDP handler in
//! its own task, and opens tabs on request. It keeps the launched Chromium's process itself
//! and watches the browser's health three ways, because a dead browser's handler can go quiet
//! instead of ending: the handler's error or end, the child's exit, and a periodic
//! `Browser.getVersion` with a short timeout. When the browser is found dead it cancels that
//! browser generation's token (requests running on its tabs fail with `browser_crashed` at
//! once), then relaunches on the same profile with backoff; the engine sees the new
//! generation and rebuilds the tab pool. Others hold a [`BrowserHandle`].

use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig as CdpConfig};
use chromiumoxide::cdp::browser_protocol::browser::GetVersionParams;
use chromiumoxide::cdp::browser_protocol::network::CookieParam;
use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
use chromiumoxide::handler::HandlerConfig;
use chromiumoxide::{Handler, Page};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::browser::pipe::PipeChromium;
use crate::browser::priority;
use crate::browser::profile_lock::{self, LockState};
use crate::browser::user_agent::{Disguise, Plan};
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
    /// The Chromium poed launched; `None` when attached to the user's own browser
    /// (`--connect`), which is never closed, killed or relaunched.
    chromium: Option<PipeChromium>,
    /// The user agent its tabs present.
    disguise: Disguise,
    /// The nice value for the launched headless browser's GPU process (0: left alone).
    gpu_nice: u8,
}

/// Lowers the GPU process of the browser poed launched (`pid`; `None` when attached to the
/// user's own, which is left alone) to `nice`, off the runtime's threads (it reads /proc).
fn lower_gpu_process(pid: Option<u32>, nice: u8) {
    if let (Some(pid), nice @ 1..) = (pid, i32::from(nice)) {
        tokio::task::spawn_blocking(move || priority::lower_gpu_process(pid, nice));
    }
}

/// Launches or attaches to Chromium and starts the supervisor task. A failure of the first
/// launch is returned (a configuration problem is better reported at once than retried).
pub async fn start(cfg: &BrowserConfig) -> Result<BrowserHandle, String> {
    if cfg.connect.is_none() && running_as_root() {
        warn!(
            "poed runs as root, so Chromium runs without its sandbox (--no-sandbox): Chromium \
             refuses to sandbox itself as root, and without the sandbox a page that exploits a \
             renderer bug gets root's rights; run poed as an ordinary user"
        );
    }
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
    let (browser, mut handler, chromium) = match &cfg.connect {
        Some(url) => {
            let (browser, handler) = attach_to(cfg, url).await?;
            (browser, handler, None)
        }
        None => {
            let (browser, handler, chromium) = launch(cfg).await?;
            (browser, handler, Some(chromium))
        }
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
    let mut inst = Instance {
        browser,
        handler_died: died_rx,
        handler,
        version: None,
        disguise: Disguise::new(Plan::for_browser(cfg, chromium.is_some())),
        chromium,
        // A window (`poectl login`) shows its frames to someone: only a headless browser's
        // GPU process draws for nobody.
        gpu_nice: if cfg.headless {
            cfg.gpu_process_nice
        } else {
            0
        },
    };
    inst.version = match inst.chromium.as_mut() {
        Some(chromium) => {
            match first_answer(&inst.browser, chromium, secs(cfg.launch_timeout_secs)).await {
                Ok(version) => Some(version),
                Err(e) => {
                    inst.handler.abort();
                    stop(chromium).await;
                    return Err(format!(
                        "cannot start Chromium ({}) on profile {}: {e}",
                        cfg.chromium.display(),
                        cfg.profile.display()
                    ));
                }
            }
        }
        None => match tokio::time::timeout(
            HEALTH_TIMEOUT * 5,
            inst.browser.execute(GetVersionParams::default()),
        )
        .await
        {
            Ok(Ok(v)) => Some(v.result.product.clone()),
            _ => None,
        },
    };
    info!(
        version = inst.version.as_deref().unwrap_or("?"),
        "browser up"
    );
    Ok(inst)
}

/// Attaches to the user's own browser (`--connect`) over the debugging port they opened.
async fn attach_to(cfg: &BrowserConfig, url: &str) -> Result<(Browser, Handler), String> {
    let connect = Browser::connect_with_config(url.to_owned(), handler_config());
    tokio::time::timeout(secs(cfg.launch_timeout_secs), connect)
        .await
        .map_err(|_| {
            format!(
                "no answer from the browser at {} within {}s; is it running with --remote-debugging-port?",
                redact::url(url),
                cfg.launch_timeout_secs
            )
        })?
        .map_err(|e| {
            format!(
                "cannot attach to the browser at {}: {}; start it with --remote-debugging-port=PORT and its own --user-data-dir, and pass http://127.0.0.1:PORT",
                redact::url(url),
                redact::text(&e.to_string())
            )
        })
}

/// Prepares the profile, starts Chromium with DevTools on a pipe and attaches chromiumoxide
/// to it. Chromium may still be starting; [`first_answer`] waits for it.
async fn launch(cfg: &BrowserConfig) -> Result<(Browser, Handler, PipeChromium), String> {
    if let Some(old) = profile_lock::make_private(&cfg.profile)? {
        warn!(
            profile = %cfg.profile.display(),
            old_mode = format!("{old:o}"),
            "the profile directory was readable by other users; made it private (0700)"
        );
    }
    match profile_lock::check_and_clear(&cfg.profile)? {
        LockState::ClearedStale(owner) => {
            warn!(pid = owner.pid, "cleared a stale profile lock")
        }
        LockState::Free => {}
    }
    if profile_lock::remove_port_file(&cfg.profile)? {
        debug!("removed a stale DevToolsActivePort file from the profile");
    }
    if !cfg.chromium.exists() {
        return Err(format!(
            "Chromium not found at {}; install it (Debian: apt-get install chromium) or set browser.chromium / --chromium",
            cfg.chromium.display()
        ));
    }
    let args = chromium_args(cfg)?;
    debug!(
        chromium = %cfg.chromium.display(),
        args = ?args.iter().map(|a| redact::arg(&a.to_string_lossy())).collect::<Vec<_>>(),
        "launching chromium"
    );
    let mut chromium = PipeChromium::spawn(&cfg.chromium, &args).map_err(|e| e.to_string())?;
    let limit = secs(cfg.launch_timeout_secs);
    match chromium.attach(handler_config(), limit).await {
        Ok((browser, handler)) => Ok((browser, handler, chromium)),
        Err(e) => {
            stop(&mut chromium).await;
            Err(format!("cannot reach Chromium's DevTools: {e}"))
        }
    }
}

/// How long a Chromium whose DevTools failed at launch is given to show that it exited.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// Waits for a launched Chromium's first DevTools answer (it proves the pipe works), or its
/// exit, or the launch timeout; returns the browser's version.
async fn first_answer(
    browser: &Browser,
    chromium: &mut PipeChromium,
    limit: Duration,
) -> Result<String, String> {
    enum Outcome {
        Answered(String),
        Failed(String),
        Exited(String),
        TimedOut,
    }
    let outcome = tokio::select! {
        answered = tokio::time::timeout(limit, browser.execute(GetVersionParams::default())) => match answered {
            Ok(Ok(v)) => Outcome::Answered(v.result.product.clone()),
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Err(_) => Outcome::TimedOut,
        },
        status = chromium.child.wait() => Outcome::Exited(match status {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        }),
    };
    // A Chromium that dies closes its pipe too, and that may be noticed first: a DevTools
    // failure followed by the process's end is its exit.
    let outcome = match outcome {
        Outcome::Failed(e) => match tokio::time::timeout(EXIT_GRACE, chromium.child.wait()).await {
            Ok(Ok(status)) => Outcome::Exited(status.to_string()),
            _ => Outcome::Failed(e),
        },
        other => other,
    };
    let failure = match outcome {
        Outcome::Answered(version) => return Ok(version),
        Outcome::Failed(e) => format!("its DevTools failed: {e}"),
        Outcome::Exited(status) => format!(
            "it exited ({status}) before it answered; check browser.args and the profile"
        ),
        Outcome::TimedOut => format!(
            "it did not answer within {limit:?}; on a slow machine raise browser.launch_timeout_secs"
        ),
    };
    match chromium.last_words().await {
        words if words.is_empty() => Err(failure),
        words => Err(format!("{failure}; Chromium said: {words}")),
    }
}

/// How chromiumoxide handles poed's browser: the window's own size, no emulated viewport,
/// and Chromium's certificate checks kept (chromiumoxide's default tells every tab to
/// ignore certificate errors: anyone between poed and the site could then read the
/// signed-in session).
fn handler_config() -> HandlerConfig {
    HandlerConfig {
        viewport: None,
        ignore_https_errors: false,
        ..HandlerConfig::default()
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The flags chromiumoxide 0.9.1 passes to every Chromium it launches (its `DEFAULT_ARGS`,
/// taken from Puppeteer, and `disable-extensions` when no extension is loaded). The pipe
/// launch passes the same, so Chromium behaves as it did under `Browser::launch`.
const CHROMIUMOXIDE_DEFAULTS: [(&str, Option<&str>); 25] = [
    ("disable-background-networking", None),
    (
        "enable-features",
        Some("NetworkService,NetworkServiceInProcess"),
    ),
    ("disable-background-timer-throttling", None),
    ("disable-backgrounding-occluded-windows", None),
    ("disable-breakpad", None),
    ("disable-client-side-phishing-detection", None),
    ("disable-component-extensions-with-background-pages", None),
    ("disable-default-apps", None),
    ("disable-dev-shm-usage", None),
    ("disable-features", Some("TranslateUI")),
    ("disable-hang-monitor", None),
    ("disable-ipc-flooding-protection", None),
    ("disable-popup-blocking", None),
    ("disable-prompt-on-repost", None),
    ("disable-renderer-backgrounding", None),
    ("disable-sync", None),
    ("force-color-profile", Some("srgb")),
    ("metrics-recording-only", None),
    ("no-first-run", None),
    ("enable-automation", None),
    ("password-store", Some("basic")),
    ("use-mock-keychain", None),
    ("enable-blink-features", Some("IdleDetection")),
    ("lang", Some("en_US")),
    ("disable-extensions", None),
];

/// chromiumoxide's defaults poed's own launch leaves out. `enable-automation` tells pages
/// the browser is automated (`navigator.webdriver`) and puts a "controlled by automated test
/// software" bar in the sign-in window: sites' bot checks, and sign-in providers, refuse
/// such a browser.
const DEFAULTS_LEFT_OUT: [&str; 1] = ["enable-automation"];

/// Flags whose value is a comma-separated list: a second occurrence adds to the list (Chromium
/// reads only the last occurrence of a flag). Any other flag given again takes the new value.
const LIST_FLAGS: [&str; 4] = [
    "enable-features",
    "disable-features",
    "enable-blink-features",
    "disable-blink-features",
];

/// Window size of a launched Chromium (width, height).
const WINDOW_SIZE: (u32, u32) = (1280, 900);

/// poed's own Chromium flags, beyond chromiumoxide's defaults, as (name, value), with the
/// user's `browser.args` last. Shared by the pipe launch and [`chromium_config`].
fn poed_flags(cfg: &BrowserConfig) -> Result<Vec<(String, Option<String>)>, String> {
    let mut flags: Vec<(String, Option<String>)> = vec![
        ("disable-gpu".into(), None),
        ("disable-component-update".into(), None),
        // DeferRendererTasksAfterInput: after a click the renderer holds other tasks back
        // until its next frame, which delays the reply's first WebSocket frame (and its
        // DevTools event) by up to a frame; the page does the same work either way.
        // WebUIOmnibox*Popup: the address bar's suggestion popup as a web page of its own,
        // kept loaded in a renderer (about 220 MB) that rebuilds its documents as the
        // tabs navigate, on the CPU the pages' replies need; nobody sees it (headless),
        // and the native popup takes its place in a visible window (`poectl login`).
        (
            "disable-features".into(),
            Some(
                "Translate,MediaRouter,OptimizationHints,DeferRendererTasksAfterInput,\
                 WebUIOmniboxPopup,WebUIOmniboxAimPopup,WebUIOmniboxFullPopup"
                    .into(),
            ),
        ),
        ("no-default-browser-check".into(), None),
        // The DevTools pipe alone makes `navigator.webdriver` true, which bot checks in front
        // of sites (and sign-in providers) read as "automated": the user's own browser says
        // false, and so does poed's.
        (
            "disable-blink-features".into(),
            Some("AutomationControlled".into()),
        ),
    ];
    if let Some(proxy) = &cfg.proxy {
        flags.push(("proxy-server".into(), Some(proxy.clone())));
    }
    for extra in &cfg.args {
        let extra = extra.trim_start_matches('-');
        let (name, value) = match extra.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (extra, None),
        };
        if name.starts_with("remote-debugging") {
            return Err(format!(
                "browser.args may not contain --{name}: poed talks to its Chromium over a private pipe, and a debugging port would let any local user drive the signed-in browser; to drive a browser of your own, start it yourself and pass --connect"
            ));
        }
        if name == "user-data-dir" {
            return Err(
                "browser.args may not contain --user-data-dir; set the profile with browser.profile or --profile"
                    .into(),
            );
        }
        flags.push((name.to_owned(), value));
    }
    Ok(flags)
}

/// The chromiumoxide launch configuration poed used before its DevTools moved to a pipe (the
/// benchmark's baselines use it on purpose: they imitate the original method, which listens on
/// a debugging port). poed itself launches with [`chromium_args`].
pub fn chromium_config(cfg: &BrowserConfig) -> Result<CdpConfig, String> {
    let mut builder = CdpConfig::builder()
        .chrome_executable(&cfg.chromium)
        .user_data_dir(&cfg.profile)
        .launch_timeout(secs(cfg.launch_timeout_secs))
        .viewport(None)
        .window_size(WINDOW_SIZE.0, WINDOW_SIZE.1);
    // chromiumoxide 0.9 turns "--x=y" into a flag *named* "--x=y": pass names and values.
    for (name, value) in poed_flags(cfg)? {
        builder = match value {
            Some(value) => builder.arg((name.as_str(), value.as_str())),
            None => builder.arg(name.as_str()),
        };
    }
    // Headless is chromiumoxide's default.
    if !cfg.headless {
        builder = builder.with_head();
    }
    if running_as_root() {
        // Chromium refuses to run as root with its sandbox.
        builder = builder.no_sandbox();
    }
    builder.build()
}

/// Chromium's command line for the pipe launch: chromiumoxide's defaults, poed's flags, the
/// mode (headless or not, sandbox), the profile and `--remote-debugging-pipe`; no port.
pub fn chromium_args(cfg: &BrowserConfig) -> Result<Vec<OsString>, String> {
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    let mut set =
        |name: &str, value: Option<String>| match flags.iter_mut().find(|(n, _)| n == name) {
            Some((_, old)) => {
                *old = match (old.take(), value) {
                    (Some(a), Some(b)) if LIST_FLAGS.contains(&name) => Some(format!("{a},{b}")),
                    (a, b) => b.or(a),
                }
            }
            None => flags.push((name.to_owned(), value)),
        };
    for (name, value) in CHROMIUMOXIDE_DEFAULTS {
        if DEFAULTS_LEFT_OUT.contains(&name) {
            continue;
        }
        set(name, value.map(str::to_owned));
    }
    set(
        "window-size",
        Some(format!("{},{}", WINDOW_SIZE.0, WINDOW_SIZE.1)),
    );
    if cfg.headless {
        for name in ["headless", "hide-scrollbars", "mute-audio"] {
            set(name, None);
        }
    }
    if running_as_root() {
        // Chromium refuses to run as root with its sandbox.
        for name in ["no-sandbox", "disable-setuid-sandbox"] {
            set(name, None);
        }
    }
    for (name, value) in poed_flags(cfg)? {
        set(&name, value);
    }
    set("remote-debugging-pipe", None);
    let mut args: Vec<OsString> = flags
        .into_iter()
        .map(|(name, value)| match value {
            Some(value) => format!("--{name}={value}").into(),
            None => format!("--{name}").into(),
        })
        .collect();
    // The profile path as the OS has it (it need not be UTF-8).
    let mut profile = OsString::from("--user-data-dir=");
    profile.push(cfg.profile.as_os_str());
    args.push(profile);
    Ok(args)
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
        match serve(&mut inst, &gone, &mut commands).await {
            Ended::Shutdown(done) => {
                // Tabs learn first that this browser is going, then it goes.
                let current = generation.borrow().clone();
                current.gone.cancel();
                close(&mut inst).await;
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
                close(&mut inst).await;
                inst.handler.abort();
                drop(inst);
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
                if let Some(chromium) = inst.chromium.as_mut() {
                    stop(chromium).await;
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
) -> Ended {
    let Instance {
        browser,
        handler_died,
        chromium,
        disguise,
        gpu_nice,
        ..
    } = inst;
    let pid = chromium.as_ref().and_then(|c| c.child.id());
    let gpu_nice = *gpu_nice;
    let mut health = tokio::time::interval(HEALTH_INTERVAL);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    loop {
        let exited = async {
            match chromium.as_mut() {
                Some(c) => c.child.wait().await,
                // Attached to the user's browser: there is no process of ours to watch.
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
                    let result = tokio::time::timeout(Duration::from_secs(10), browser.new_page(params))
                        .await
                        .map_err(|_| "the browser did not open a tab within 10s".to_string())
                        .and_then(|r| r.map_err(|e| format!("cannot open a tab: {e}")));
                    if let Ok(page) = &result {
                        disguise.apply(browser, page).await;
                        // A new window: Chromium may have started its GPU process only now.
                        lower_gpu_process(pid, gpu_nice);
                    }
                    let _ = reply.send(result.map(|page| (page, gone.clone())));
                }
                Some(Command::SetCookies(cookies, reply)) => {
                    let result = tokio::time::timeout(Duration::from_secs(10), browser.set_cookies(cookies))
                        .await
                        .map_err(|_| "the browser did not store the cookies within 10s".to_string())
                        .and_then(|r| r.map(|_| ()).map_err(|e| format!("the browser refused the cookies: {e}")));
                    let _ = reply.send(result);
                }
                Some(Command::Relaunch(headless, reply)) => {
                    if chromium.is_none() {
                        let _ = reply.send(Err("poed is attached to your own browser (--connect); it cannot relaunch it".into()));
                    } else {
                        return Ended::Relaunch(headless, reply);
                    }
                }
                Some(Command::Ping(reply)) => {
                    let answered = tokio::time::timeout(HEALTH_TIMEOUT, browser.execute(GetVersionParams::default())).await;
                    let _ = reply.send(match answered {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("the browser failed a health check: {e}")),
                        Err(_) => Err(format!("the browser did not answer within {HEALTH_TIMEOUT:?}")),
                    });
                }
                Some(Command::Shutdown(done)) => return Ended::Shutdown(Some(done)),
                None => return Ended::Shutdown(None),
            },
            why = &mut *handler_died => {
                return Ended::Died(why.unwrap_or_else(|_| "DevTools handler stopped".into()));
            }
            status = exited => {
                return Ended::Died(match status {
                    Ok(status) => format!("Chromium exited ({status})"),
                    Err(e) => format!("cannot watch Chromium's process: {e}"),
                });
            }
            _ = health.tick() => {
                let answered = tokio::time::timeout(HEALTH_TIMEOUT, browser.execute(GetVersionParams::default())).await;
                if !matches!(answered, Ok(Ok(_))) {
                    return Ended::Died(format!("Chromium did not answer a health check within {HEALTH_TIMEOUT:?}"));
                }
                // A GPU process restarted after a crash, or threads started since.
                lower_gpu_process(pid, gpu_nice);
            }
        }
    }
}

/// Closes a launched browser gracefully (`Browser.close` over DevTools, then waits for the
/// process), then makes sure the process is gone. An attached browser is left running.
async fn close(inst: &mut Instance) {
    let Some(chromium) = inst.chromium.as_mut() else {
        // Attached with --connect: the browser is the user's; leave it running.
        return;
    };
    let browser = &mut inst.browser;
    let graceful = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = browser.close().await;
        chromium.child.wait().await
    })
    .await;
    if !matches!(graceful, Ok(Ok(_))) {
        warn!("Chromium did not exit in time; killing it");
        stop(chromium).await;
    }
    info!("browser closed");
}

/// Kills a launched Chromium (if it still runs) and reaps it.
async fn stop(chromium: &mut PipeChromium) {
    if matches!(chromium.child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Err(e) = chromium.child.kill().await {
        warn!(error = %e, "could not kill Chromium");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cfg: &BrowserConfig) -> Vec<String> {
        chromium_args(cfg)
            .expect("args")
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn certificate_errors_are_never_ignored() {
        assert!(!handler_config().ignore_https_errors);
    }

    #[test]
    fn the_pipe_launch_has_a_pipe_and_no_port() {
        let cfg = BrowserConfig::default();
        let args = args(&cfg);
        assert!(
            args.contains(&"--remote-debugging-pipe".to_string()),
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a.starts_with("--remote-debugging-port")
                || a.starts_with("--remote-debugging-address")),
            "{args:?}"
        );
        assert!(args.contains(&format!("--user-data-dir={}", cfg.profile.display())));
        assert!(args.contains(&"--headless".to_string()));
        assert!(args.contains(&"--window-size=1280,900".to_string()));
        assert!(args.contains(&"--no-first-run".to_string()));
        // Not a browser that calls itself automated.
        assert!(
            !args.contains(&"--enable-automation".to_string()),
            "{args:?}"
        );
        assert!(
            args.contains(&"--disable-blink-features=AutomationControlled".to_string()),
            "{args:?}"
        );
        // Each flag once: Chromium reads only the last of a repeated flag.
        let mut names: Vec<&str> = args
            .iter()
            .map(|a| a.split('=').next().unwrap_or(a))
            .collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "{args:?}");
    }

    #[test]
    fn user_flags_merge_lists_and_replace_values() {
        let cfg = BrowserConfig {
            headless: false,
            proxy: Some("socks5://127.0.0.1:1080".into()),
            args: vec!["lang=de".into(), "--disable-features=Foo".into()],
            ..BrowserConfig::default()
        };
        let args = args(&cfg);
        assert!(args.contains(&"--lang=de".to_string()), "{args:?}");
        assert!(
            args.contains(
                &"--disable-features=TranslateUI,Translate,MediaRouter,OptimizationHints,DeferRendererTasksAfterInput,WebUIOmniboxPopup,WebUIOmniboxAimPopup,WebUIOmniboxFullPopup,Foo"
                    .to_string()
            ),
            "{args:?}"
        );
        assert!(args.contains(&"--proxy-server=socks5://127.0.0.1:1080".to_string()));
        assert!(!args.contains(&"--headless".to_string()));
    }

    #[test]
    fn a_debugging_port_or_another_profile_in_args_is_refused() {
        for bad in [
            "remote-debugging-port=9222",
            "--remote-debugging-address=0.0.0.0",
            "user-data-dir=/tmp/x",
        ] {
            let cfg = BrowserConfig {
                args: vec![bad.into()],
                ..BrowserConfig::default()
            };
            let e = chromium_args(&cfg).expect_err(bad);
            assert!(e.contains("browser.args"), "{e}");
            assert!(chromium_config(&cfg).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sandbox_is_off_only_as_root() {
        let args = args(&BrowserConfig::default());
        assert_eq!(
            args.contains(&"--no-sandbox".to_string()),
            running_as_root()
        );
    }
}
