//! `poed`: flags -> config -> socket -> `daemon::run`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use poed::config::{default_config_path, Config};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Serves completions from a logged-in Poe web session over a local socket.
#[derive(Debug, Parser)]
#[command(version, about, args_override_self = true)]
struct Args {
    /// Config file (TOML). Default: $XDG_CONFIG_HOME/poed/config.toml, if it exists.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// IPC socket path.
    #[arg(long, env = "POED_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Browser profile directory (holds the signed-in session).
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Chromium executable.
    #[arg(long, value_name = "PATH")]
    chromium: Option<PathBuf>,
    /// Show the browser window instead of running headless.
    #[arg(long)]
    headful: bool,
    /// Site root the Poe adapter drives (default https://poe.com).
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// Proxy for Chromium (its --proxy-server value).
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// Attach to a running Chromium (http://127.0.0.1:9222) instead of launching one.
    #[arg(long, value_name = "URL")]
    connect: Option<String>,
    /// Tabs in the pool (replies in flight at once).
    #[arg(long, value_name = "N")]
    tabs: Option<usize>,
    /// Requests that may wait for a tab before `busy`.
    #[arg(long, value_name = "N")]
    queue: Option<usize>,
    /// Seconds without an update from the site before a reply is `stalled`.
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<f64>,
    /// Seconds a whole reply may take.
    #[arg(long, value_name = "SECS")]
    reply_timeout: Option<f64>,
    /// Seconds to wait for the prompt box before the profile counts as signed out.
    #[arg(long, value_name = "SECS")]
    prompt_timeout: Option<f64>,
    /// Serve the OpenAI-compatible HTTP API on this address (e.g. 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// File with the API key HTTP clients must send (required for non-loopback --http).
    #[arg(long, value_name = "PATH")]
    api_key_file: Option<PathBuf>,
    /// Minimum milliseconds between two sends of the account (0 = off).
    #[arg(long, value_name = "MS")]
    min_send_interval_ms: Option<u64>,
    /// Seconds running replies get to finish on SIGTERM/SIGINT before they are stopped.
    #[arg(long, value_name = "SECS")]
    shutdown_grace: Option<f64>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// More logging (-v debug, -vv trace; prompts and replies never below trace); a
    /// non-empty RUST_LOG replaces these levels.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(anyhow::Error::msg)?,
        None => {
            let path = default_config_path();
            if path.exists() {
                Config::from_file(&path).map_err(anyhow::Error::msg)?
            } else {
                Config::default()
            }
        }
    };
    if let Some(v) = &args.socket {
        config.socket = v.clone();
    }
    if let Some(v) = &args.profile {
        config.browser.profile = v.clone();
    }
    if let Some(v) = &args.chromium {
        config.browser.chromium = v.clone();
    }
    if args.headful {
        config.browser.headless = false;
    }
    if let Some(v) = &args.base_url {
        config.site.base_url = v.clone();
    }
    if let Some(v) = &args.proxy {
        config.browser.proxy = Some(v.clone());
    }
    if let Some(v) = &args.connect {
        config.browser.connect = Some(v.clone());
    }
    if let Some(v) = args.tabs {
        config.pool.tabs = v;
    }
    if let Some(v) = args.queue {
        config.pool.queue = v;
    }
    if let Some(v) = args.http {
        config.http.listen = Some(v);
    }
    if let Some(v) = &args.api_key_file {
        config.http.api_key_file = Some(v.clone());
    }
    if let Some(v) = args.min_send_interval_ms {
        config.pool.min_send_interval_ms = v;
    }
    if let Some(v) = args.idle_timeout {
        config.timeouts.idle_secs = v;
    }
    if let Some(v) = args.reply_timeout {
        config.timeouts.reply_secs = v;
    }
    if let Some(v) = args.shutdown_grace {
        config.timeouts.shutdown_grace_secs = v;
    }
    if let Some(v) = args.prompt_timeout {
        config.timeouts.prompt_box_secs = v;
    }
    config.expand_home();
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// Crates whose debug and trace output carries page traffic: CDP messages (cookies, request
/// headers, replies), WebSocket frames, HTTP headers. They stay at `warn` whatever `-v`
/// says; a `RUST_LOG` that raises them is the user's own choice.
const TRAFFIC_CRATES: &[&str] = &[
    "chromiumoxide",
    "tungstenite",
    "tokio_tungstenite",
    "async_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "axum",
    "tower_http",
    "reqwest",
];

/// Without `-v`, chromiumoxide's connection handler logs errors only. It warns of every
/// DevTools message its types cannot read, and Chromium 156 sends one for each request a
/// page makes (`Network.requestWillBeSentExtraInfo`, which poed does not use): a warning
/// per request in an ordinary log. `-v` shows them, for when a message poed needs stops
/// being read.
const UNREAD_MESSAGES_QUIET: &str = "chromiumoxide::handler=error";

/// The filter for `-v` counted `verbose` times: poed's own lines at info, debug (`-v`) or
/// trace (`-vv`, the only level that may show prompts and replies), other crates one step
/// quieter, and the traffic crates capped at `warn` (see [`UNREAD_MESSAGES_QUIET`]).
fn default_filter(verbose: u8) -> String {
    let base = match verbose {
        0 => "warn,poed=info",
        1 => "info,poed=debug",
        _ => "debug,poed=trace",
    };
    let capped = TRAFFIC_CRATES
        .iter()
        .fold(base.to_owned(), |f, krate| format!("{f},{krate}=warn"));
    if verbose == 0 {
        format!("{capped},{UNREAD_MESSAGES_QUIET}")
    } else {
        capped
    }
}

/// Logs to stderr, every line scrubbed of the configuration's secrets (see `poed::redact`).
/// A non-empty `RUST_LOG` replaces the `-v` filter entirely.
fn init_logging(verbose: u8, config: &Config) {
    poed::redact::register_config(config);
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (filter, bad_env) = match from_env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(e)) => (EnvFilter::new(default_filter(verbose)), Some(e)),
        None => (EnvFilter::new(default_filter(verbose)), None),
    };
    // SAFETY: isatty has no preconditions.
    let tty = unsafe { libc::isatty(libc::STDERR_FILENO) } == 1;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(poed::redact::Scrubbed(std::io::stderr))
        .with_ansi(tty)
        .init();
    match (bad_env, from_env) {
        (Some(e), _) => {
            tracing::warn!(error = %e, "RUST_LOG is not a valid filter; using the -v levels")
        }
        (None, Some(_)) => tracing::info!(
            "log levels from RUST_LOG; raising chromiumoxide, tungstenite or hyper above warn logs page traffic, cookies included"
        ),
        (None, None) => {}
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = load_config(&args).context("invalid configuration")?;
    if args.print_config {
        // Printed configs end up in bug reports: no proxy credentials in them.
        let mut shown = config.clone();
        shown.browser.proxy = shown.browser.proxy.as_deref().map(poed::redact::proxy);
        print!("{}", toml::to_string_pretty(&shown)?);
        return Ok(());
    }
    // Whatever poed creates (socket, files, directories) is private to the user.
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o077) };
    init_logging(args.verbose, &config);
    // Read (and clear) socket activation's variables before any thread exists.
    let activated = poed::daemon::notify::activated_fd();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, activated))
}

async fn serve(config: Config, activated: Option<std::os::fd::OwnedFd>) -> anyhow::Result<()> {
    let listener = match activated {
        Some(fd) => {
            tracing::info!("using the socket passed by systemd");
            poed::daemon::notify::activated_listener(fd).map_err(anyhow::Error::msg)?
        }
        None => poed::daemon::socket::bind(&config.socket)
            .await
            .map_err(anyhow::Error::msg)?,
    };
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        signals.cancel();
    });
    let result = poed::daemon::run(config, listener, shutdown, || {}).await;
    if let Err(e) = result {
        bail!("{e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_caps_the_traffic_crates() {
        for verbose in 0..=3 {
            let filter = default_filter(verbose);
            EnvFilter::try_new(&filter).expect("a valid filter");
            for krate in TRAFFIC_CRATES {
                assert!(filter.contains(&format!(",{krate}=warn")), "{filter}");
            }
        }
        assert!(default_filter(0).contains("poed=info"));
        assert!(default_filter(2).contains("poed=trace"));
    }

    /// What a subscriber with the filter for `verbose` writes of a few lines.
    fn logged(verbose: u8, lines: impl FnOnce()) -> String {
        #[derive(Clone)]
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::ErrorKind::Other)?
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink(Default::default());
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(default_filter(verbose)))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, lines);
        let bytes = sink.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn unread_devtools_messages_are_left_out_of_the_default_log_only() {
        let lines = || {
            tracing::warn!(target: "chromiumoxide::handler", "WS Invalid message: extra info");
            tracing::error!(target: "chromiumoxide::handler", "WS Connection error: gone");
            tracing::warn!(target: "chromiumoxide::conn", "another warning");
        };
        let quiet = logged(0, lines);
        assert!(!quiet.contains("WS Invalid message"), "{quiet}");
        assert!(quiet.contains("WS Connection error"), "{quiet}");
        assert!(quiet.contains("another warning"), "{quiet}");
        let verbose = logged(1, lines);
        assert!(verbose.contains("WS Invalid message"), "{verbose}");
    }
}
