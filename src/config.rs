//! The daemon's configuration: built-in defaults, then the TOML file, then command-line flags.
//!
//! Every field has a default, so an empty or missing file is valid. Unknown keys are errors
//! (a typo must not be silently ignored). README's "Configuration reference" lists each key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::site::poe::models::DEFAULT_MODEL;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the IPC socket is bound.
    pub socket: PathBuf,
    /// Cap on one request line in bytes (newline included).
    pub max_line_bytes: usize,
    pub browser: BrowserConfig,
    pub pool: PoolConfig,
    pub timeouts: Timeouts,
    pub site: SiteConfig,
    pub http: HttpConfig,
    pub history: HistoryConfig,
}

/// The record of requests kept in SQLite (see `crate::history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Record every completion request; `false` writes nothing (the file is never created).
    pub enabled: bool,
    /// Conversations unused for this many days are deleted (0 keeps everything).
    pub keep_days: u32,
    /// The SQLite file; default `history.sqlite3` next to the browser profile.
    pub path: Option<PathBuf>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            enabled: true,
            keep_days: 90,
            path: None,
        }
    }
}

/// The longest `history.keep_days`: a hundred years.
pub const MAX_KEEP_DAYS: u32 = 36_500;

/// The OpenAI-compatible HTTP front door (off unless `listen` is set). docs/SECURITY.md says
/// what each setting guards against.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve on, e.g. `127.0.0.1:8080`. A non-loopback address needs an API key.
    pub listen: Option<std::net::SocketAddr>,
    /// File holding the API key clients must send as `Authorization: Bearer <key>`.
    pub api_key_file: Option<PathBuf>,
    /// Host names (or addresses) accepted in the `Host` header besides loopback names and
    /// the listen address, e.g. the name a reverse proxy forwards. Anything else is refused,
    /// which is what stops DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Web origins (`https://app.example`) whose pages may call the API from a browser.
    /// Empty (the default): every request that carries an `Origin` is refused.
    pub allowed_origins: Vec<String>,
    /// With an API key, `/health` and `/metrics` answer without it when this is true.
    pub public_health: bool,
}

impl HttpConfig {
    /// Reads the API key file, if one is configured.
    pub fn api_key(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.api_key_file else {
            return Ok(None);
        };
        let key = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the API key file {}: {e}", path.display()))?
            .trim()
            .to_owned();
        if key.is_empty() {
            return Err(format!("the API key file {} is empty", path.display()));
        }
        Ok(Some(key))
    }

    /// Checks the `[http]` values the types cannot: a reachable address without a key, and
    /// host or origin entries that could never match (or would match everything).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(addr) = self.listen {
            if !addr.ip().is_loopback() && self.api_key_file.is_none() {
                return Err(format!(
                    "http.listen {addr} is reachable from other machines; set an API key with --api-key-file (http.api_key_file), or listen on 127.0.0.1"
                ));
            }
        }
        for host in &self.allowed_hosts {
            let h = host.trim();
            if h.is_empty() || h == "*" || h.contains(['/', ' ', '@']) || h.contains("://") {
                return Err(format!(
                    "http.allowed_hosts entry {host:?} is not a host name; write names like \"poed.lan\" or addresses like \"192.168.1.5\" (no scheme, no path, no wildcard)"
                ));
            }
        }
        for origin in &self.allowed_origins {
            if !is_origin(origin) {
                return Err(format!(
                    "http.allowed_origins entry {origin:?} is not a web origin; write it as the browser sends it, e.g. \"https://app.example\" or \"http://localhost:3000\" (no path, no wildcard)"
                ));
            }
        }
        Ok(())
    }
}

/// `scheme://host[:port]` with an http(s) scheme, no path, no wildcard, not `null`.
fn is_origin(s: &str) -> bool {
    let rest = match s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    {
        Some(rest) => rest,
        None => return false,
    };
    !rest.is_empty() && !rest.contains(['/', '*', ' ', '@', '?', '#'])
}

/// How Chromium is started or reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrowserConfig {
    /// The Chromium executable.
    pub chromium: PathBuf,
    /// The persistent profile (cookies of the signed-in session live here).
    pub profile: PathBuf,
    /// Run without a window (default); `false` shows it.
    pub headless: bool,
    /// Chromium's `--proxy-server` value, e.g. `socks5://127.0.0.1:1080`.
    pub proxy: Option<String>,
    /// Attach to an already running Chromium (`http://127.0.0.1:9222` or a `ws://` DevTools
    /// URL) instead of launching one.
    pub connect: Option<String>,
    /// Extra Chromium flags, without leading dashes (`"lang=de"`, `"disable-gpu"`).
    pub args: Vec<String>,
    /// Seconds to wait for Chromium to start.
    pub launch_timeout_secs: f64,
    /// The user agent every tab presents. Unset (the default): a headless browser poed
    /// launched presents the agent the same Chromium shows with a window (`Chrome/...`, not
    /// `HeadlessChrome/...`), with its own client hints; `""` leaves Chromium's own.
    pub user_agent: Option<String>,
    /// The nice value (0-19) of the launched headless Chromium's GPU process, which
    /// composites frames nobody looks at: 19 (the default) lets the processes that carry a
    /// request (renderer, network service, browser process) have the cores first; 0 leaves it
    /// as Chromium runs it. A browser with a window is left alone.
    pub gpu_process_nice: u8,
}

/// The tab pool and request queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Tabs, i.e. replies in flight at once (the site tolerates about three per account).
    pub tabs: usize,
    /// Requests that may wait for a tab; beyond that a request gets `busy`.
    pub queue: usize,
    /// Minimum milliseconds between two sends of the account (0 = off, the default: the
    /// site's own refusals set the pace).
    pub min_send_interval_ms: u64,
    /// At most this many sends of the account per minute (0 = no cap, the default).
    pub max_sends_per_minute: u32,
    /// Idle tabs that may keep the page of a conversation's chat after a follow-up was
    /// answered there, ready for its next message (the others are made fresh for new
    /// chats). At most `tabs - 1` count: one tab stays for new chats. 0 makes every
    /// follow-up open its chat's page first.
    pub chat_pages: usize,
    /// After a reply, the tab's fresh page is loaded once no other request is being
    /// served, so that the load (tens of ms of the browser's CPU) does not slow the last
    /// frames of replies that end together; at most this many milliseconds later, and at
    /// once when a request waits for a tab. 0 loads it at once.
    pub refresh_wait_ms: u64,
}

/// Timeouts, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Opening a bot page (navigation until `load`).
    pub navigation_secs: f64,
    /// Waiting for the prompt box after the page loaded; past it the profile counts as signed out.
    pub prompt_box_secs: f64,
    /// Waiting for the send button to become enabled after the prompt was entered.
    pub send_button_secs: f64,
    /// Before a send, waiting for the page's update socket to be open (its script may open
    /// it after the prompt box shows); past it the prompt goes anyway, with a warning, and
    /// later sends do not wait until a page is seen with its socket open again.
    pub update_socket_secs: f64,
    /// Whole reply, from send to the final state.
    pub reply_secs: f64,
    /// No update from the site for this long -> `stalled` (after trying to read the reply
    /// from the page).
    pub idle_secs: f64,
    /// After the page lost its update stream, how long to wait for the page itself to show
    /// the finished reply (the last resort, reading the page).
    pub recover_secs: f64,
    /// After the page lost its update stream, how long to wait for its refetch response
    /// (the network) before falling back to reading the page.
    pub refetch_secs: f64,
    /// On SIGTERM/SIGINT, how long running replies may take to finish before they are stopped.
    pub shutdown_grace_secs: f64,
}

/// What poed knows of the site: URLs, models, selectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiteConfig {
    /// Site root; bot pages are `{base_url}/{handle}`.
    pub base_url: String,
    /// Model used when a request names none.
    pub default_model: String,
    /// Extra or overriding model rows: public name -> bot handle.
    pub models: BTreeMap<String, String>,
    /// Frames are read only from WebSockets whose URL contains this (other sockets are noise).
    pub update_socket_contains: String,
    /// The sign-in page, relative to `base_url` (`poectl login` opens it). A bot page that
    /// redirects here means the profile is signed out.
    pub login_path: String,
    /// The site's bot list page, relative to `base_url`: `poectl models --refresh` opens it
    /// and collects the bots its API responses name.
    pub bots_path: String,
    /// The page's API requests are those whose URL contains this; their responses (the
    /// send's result, a refetch after lost updates) are read from the network.
    pub api_path_contains: String,
    /// Whether a reply whose updates were lost and whose refetch response did not show it
    /// may be read from the page's DOM (the last resort).
    pub recover_from_dom: bool,
    pub selectors: Selectors,
}

/// CSS selectors of the chat page (the site's class names change; override them here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Selectors {
    /// Where the prompt is entered: today's textarea, or a rich-text editor (a
    /// `contenteditable` textbox), which the site's `formattedChatInput` flag hints at.
    pub prompt_box: String,
    pub send_button: String,
    pub stop_button: String,
    /// Present when the page shows the logged-out view.
    pub logged_out: String,
    /// Present when the free daily messages for the bot are used up.
    pub daily_limit: String,
    /// The text of a bot message in the chat (the last match is the newest); read only to
    /// recover a reply whose update stream was lost.
    pub bot_message_text: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: default_socket_path(),
            max_line_bytes: crate::protocol::DEFAULT_MAX_LINE_BYTES,
            browser: BrowserConfig::default(),
            pool: PoolConfig::default(),
            timeouts: Timeouts::default(),
            site: SiteConfig::default(),
            http: HttpConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

impl Default for BrowserConfig {
    fn default() -> Self {
        BrowserConfig {
            chromium: PathBuf::from("/usr/bin/chromium"),
            profile: data_home().join("poed").join("profile"),
            headless: true,
            proxy: None,
            connect: None,
            args: Vec::new(),
            launch_timeout_secs: 30.0,
            user_agent: None,
            gpu_process_nice: 19,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            tabs: 3,
            queue: 32,
            min_send_interval_ms: 0,
            max_sends_per_minute: 0,
            chat_pages: 2,
            refresh_wait_ms: 300,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            navigation_secs: 30.0,
            prompt_box_secs: 15.0,
            send_button_secs: 5.0,
            update_socket_secs: 2.0,
            reply_secs: 300.0,
            idle_secs: 60.0,
            recover_secs: 30.0,
            refetch_secs: 5.0,
            shutdown_grace_secs: 10.0,
        }
    }
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            base_url: "https://poe.com".into(),
            default_model: DEFAULT_MODEL.into(),
            models: BTreeMap::new(),
            update_socket_contains: "/updates".into(),
            login_path: "/login".into(),
            bots_path: "/explore".into(),
            api_path_contains: "/api/".into(),
            recover_from_dom: true,
            selectors: Selectors::default(),
        }
    }
}

impl SiteConfig {
    /// Which of a tab's traffic the browser layer passes up.
    pub fn watch(&self) -> crate::browser::tab::Watch {
        crate::browser::tab::Watch {
            update_socket_contains: self.update_socket_contains.clone(),
            api_contains: self.api_path_contains.clone(),
        }
    }
}

impl Default for Selectors {
    fn default() -> Self {
        Selectors {
            prompt_box: "textarea[class*='GrowingTextArea_textArea'], textarea[class^='GrowingTextArea'], [role='textbox'][contenteditable]:not([contenteditable='false']), footer [contenteditable]:not([contenteditable='false'])".into(),
            send_button: "button[class*='sendButton'], button[class*='ChatMessageSendButton'], button[aria-label='Send message']".into(),
            stop_button: "button[aria-label='Stop message'], button[class*='StopButton']".into(),
            logged_out: "[class*='LoggedOutBotInfoPage']".into(),
            daily_limit: "[class*='ChatMessageSendButton_noFreeMessageTooltip']".into(),
            bot_message_text: "[class*='Message_leftSideMessageBubble__'] [class*='Markdown_markdownContainer__'], [class*='Message_botMessageBubble'] [class*='Markdown_markdownContainer'], [data-author='bot'] [class*='Markdown_markdownContainer']".into(),
        }
    }
}

impl Config {
    /// Reads a TOML config file. A missing file at the *default* path is not an error; the
    /// caller decides (see [`default_config_path`]).
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that the types cannot: every duration and size within its range, so
    /// nothing later can overflow or hang on a bad value.
    pub fn validate(&self) -> Result<(), String> {
        self.http.validate()?;
        let sizes: [(&str, u64, u64, u64); 7] = [
            ("pool.tabs", self.pool.tabs as u64, 1, MAX_TABS),
            ("pool.queue", self.pool.queue as u64, 0, MAX_QUEUE),
            ("pool.chat_pages", self.pool.chat_pages as u64, 0, MAX_TABS),
            (
                "max_line_bytes",
                self.max_line_bytes as u64,
                1024,
                MAX_LINE_BYTES,
            ),
            (
                "pool.min_send_interval_ms",
                self.pool.min_send_interval_ms,
                0,
                MAX_SECS as u64 * 1000,
            ),
            (
                "pool.refresh_wait_ms",
                self.pool.refresh_wait_ms,
                0,
                MAX_SECS as u64 * 1000,
            ),
            (
                "browser.gpu_process_nice",
                self.browser.gpu_process_nice.into(),
                0,
                19,
            ),
        ];
        for (name, v, min, max) in sizes {
            if !(min..=max).contains(&v) {
                return Err(format!("{name} = {v} is out of range: use {min} to {max}"));
            }
        }
        let t = &self.timeouts;
        for (name, v) in [
            ("timeouts.navigation_secs", t.navigation_secs),
            ("timeouts.prompt_box_secs", t.prompt_box_secs),
            ("timeouts.send_button_secs", t.send_button_secs),
            ("timeouts.update_socket_secs", t.update_socket_secs),
            ("timeouts.reply_secs", t.reply_secs),
            ("timeouts.idle_secs", t.idle_secs),
            ("timeouts.shutdown_grace_secs", t.shutdown_grace_secs),
            ("timeouts.recover_secs", t.recover_secs),
            ("timeouts.refetch_secs", t.refetch_secs),
            (
                "browser.launch_timeout_secs",
                self.browser.launch_timeout_secs,
            ),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= MAX_SECS) {
                return Err(format!(
                    "{name} = {v} is not a usable number of seconds: use a positive number up to {MAX_SECS} (a week)"
                ));
            }
        }
        if self.history.keep_days > MAX_KEEP_DAYS {
            return Err(format!(
                "history.keep_days = {} is out of range: use 0 (keep everything) to {MAX_KEEP_DAYS}",
                self.history.keep_days
            ));
        }
        if self
            .history
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty() || p.is_dir())
        {
            return Err(
                "history.path must name a file (e.g. \"~/.local/share/poed/history.sqlite3\"), not a directory".into(),
            );
        }
        if !self.site.bots_path.starts_with('/') {
            return Err(format!(
                "site.bots_path {:?} must be a path on the site starting with '/', such as \"/explore\"",
                self.site.bots_path
            ));
        }
        if !(self.site.base_url.starts_with("http://")
            || self.site.base_url.starts_with("https://"))
        {
            return Err(format!(
                "site.base_url {:?} must start with http:// or https://",
                self.site.base_url
            ));
        }
        Ok(())
    }

    /// Expands a leading `~` (the user's home) in every path setting.
    pub fn expand_home(&mut self) {
        for path in [
            &mut self.socket,
            &mut self.browser.chromium,
            &mut self.browser.profile,
        ] {
            *path = expand_home(path);
        }
        if let Some(p) = self.http.api_key_file.as_mut() {
            *p = expand_home(p);
        }
        if let Some(p) = self.history.path.as_mut() {
            *p = expand_home(p);
        }
    }
}

/// The longest duration any setting may have: a week.
pub const MAX_SECS: f64 = 7.0 * 24.0 * 3600.0;
/// The most tabs a pool may have (the site takes about three replies at once per account).
pub const MAX_TABS: u64 = 32;
/// The longest request queue.
pub const MAX_QUEUE: u64 = 100_000;
/// The largest request line.
pub const MAX_LINE_BYTES: u64 = 256 * 1024 * 1024;

/// `path` with a leading `~` or `~/` replaced by `$HOME`.
pub fn expand_home(path: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home().join(rest),
        Err(_) => path.to_owned(),
    }
}

/// `secs` as a [`std::time::Duration`]; never panics (values are validated at load, and
/// anything out of range is clamped to between a millisecond and a week).
pub fn secs(secs: f64) -> std::time::Duration {
    let clamped = if secs.is_nan() {
        0.001
    } else {
        secs.clamp(0.001, MAX_SECS)
    };
    std::time::Duration::try_from_secs_f64(clamped).unwrap_or(std::time::Duration::from_millis(1))
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => home().join(fallback),
    }
}

fn data_home() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share")
}

/// `$XDG_CONFIG_HOME/poed/config.toml` (`~/.config/poed/config.toml`).
pub fn default_config_path() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config")
        .join("poed")
        .join("config.toml")
}

/// The socket path clients and the daemon agree on: `$POED_SOCKET`, else
/// `$XDG_RUNTIME_DIR/poed/poed.sock`, else `/tmp/poed-$UID/poed.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("POED_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("poed").join("poed.sock"),
        _ => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir()
                .join(format!("poed-{uid}"))
                .join("poed.sock")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::from_toml("").expect("empty is valid");
        assert_eq!(c, Config::default());
        assert_eq!(c.pool.tabs, 3);
        assert_eq!(c.site.base_url, "https://poe.com");
        c.validate().expect("defaults validate");
    }

    #[test]
    fn file_overrides_nested_values() {
        let c = Config::from_toml(
            r#"
            socket = "/tmp/x.sock"
            [browser]
            headless = false
            proxy = "socks5://127.0.0.1:1080"
            [timeouts]
            idle_secs = 2.5
            [site]
            base_url = "http://127.0.0.1:8080"
            [site.models]
            claude = "Claude-3.5-Sonnet"
            [site.selectors]
            stop_button = "button.stop"
            "#,
        )
        .expect("valid");
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert!(!c.browser.headless);
        assert_eq!(c.timeouts.idle_secs, 2.5);
        assert_eq!(c.timeouts.reply_secs, 300.0);
        assert_eq!(c.site.models["claude"], "Claude-3.5-Sonnet");
        assert_eq!(c.site.selectors.stop_button, "button.stop");
        assert_eq!(c.site.selectors.prompt_box, Selectors::default().prompt_box);
    }

    #[test]
    fn typos_and_bad_values_are_refused_with_the_key_named() {
        let e = Config::from_toml("[pool]\ntabz = 3").expect_err("unknown key");
        assert!(e.contains("tabz"), "{e}");
        let mut c = Config::default();
        c.timeouts.idle_secs = 0.0;
        assert!(c.validate().expect_err("zero").contains("idle_secs"));
        let mut c = Config::default();
        c.site.base_url = "poe.com".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn out_of_range_durations_and_sizes_are_refused_not_panicked_on() {
        for (edit, key) in [
            (
                Box::new(|c: &mut Config| c.timeouts.reply_secs = 1e20) as Box<dyn Fn(&mut Config)>,
                "reply_secs",
            ),
            (
                Box::new(|c: &mut Config| c.timeouts.idle_secs = f64::NAN),
                "idle_secs",
            ),
            (
                Box::new(|c: &mut Config| c.timeouts.recover_secs = f64::INFINITY),
                "recover_secs",
            ),
            (
                Box::new(|c: &mut Config| c.timeouts.navigation_secs = -1.0),
                "navigation_secs",
            ),
            (Box::new(|c: &mut Config| c.pool.tabs = 0), "pool.tabs"),
            (Box::new(|c: &mut Config| c.pool.tabs = 10_000), "pool.tabs"),
            (
                Box::new(|c: &mut Config| c.pool.chat_pages = 10_000),
                "pool.chat_pages",
            ),
            (
                Box::new(|c: &mut Config| c.max_line_bytes = 10),
                "max_line_bytes",
            ),
            (
                Box::new(|c: &mut Config| c.pool.min_send_interval_ms = u64::MAX),
                "min_send_interval_ms",
            ),
            (
                Box::new(|c: &mut Config| c.browser.gpu_process_nice = 20),
                "browser.gpu_process_nice",
            ),
        ] {
            let mut c = Config::default();
            edit(&mut c);
            let e = c.validate().expect_err(key);
            assert!(e.contains(key), "{e}");
        }
        // Whatever reaches `secs`, it gives a duration.
        for v in [1e20, f64::NAN, f64::INFINITY, -5.0, 0.0] {
            assert!(secs(v) <= std::time::Duration::from_secs_f64(MAX_SECS));
        }
    }

    #[test]
    fn history_settings_default_on_and_are_checked() {
        let c = Config::default();
        assert!(c.history.enabled);
        assert_eq!(c.history.keep_days, 90);
        assert_eq!(c.history.path, None);
        let mut c = Config::from_toml(
            "[history]\nenabled = false\nkeep_days = 7\npath = \"~/h.sqlite3\"\n",
        )
        .expect("valid");
        c.expand_home();
        assert!(!c.history.enabled);
        assert_eq!(c.history.keep_days, 7);
        assert_eq!(c.history.path, Some(home().join("h.sqlite3")));
        c.validate().expect("valid");
        c.history.keep_days = MAX_KEEP_DAYS + 1;
        assert!(c
            .validate()
            .expect_err("range")
            .contains("history.keep_days"));
        let e = Config::from_toml("[history]\nkeep = 3").expect_err("unknown key");
        assert!(e.contains("keep"), "{e}");
    }

    #[test]
    fn a_leading_tilde_means_home() {
        let home = home();
        let mut c = Config::from_toml(
            "socket = \"~/run/poed.sock\"\n[browser]\nprofile = \"~/poed/profile\"\n[http]\napi_key_file = \"~/key\"\n",
        )
        .expect("valid");
        c.expand_home();
        assert_eq!(c.socket, home.join("run/poed.sock"));
        assert_eq!(c.browser.profile, home.join("poed/profile"));
        assert_eq!(c.http.api_key_file, Some(home.join("key")));
        assert_eq!(expand_home(Path::new("/abs/~x")), PathBuf::from("/abs/~x"));
        assert_eq!(
            expand_home(Path::new("~other/x")),
            PathBuf::from("~other/x")
        );
    }

    #[test]
    fn http_settings_are_checked_before_anything_starts() {
        let c = Config::from_toml(
            r#"
            [http]
            listen = "127.0.0.1:8080"
            allowed_hosts = ["poed.lan", "192.168.1.5"]
            allowed_origins = ["https://app.example", "http://localhost:3000"]
            public_health = true
            "#,
        )
        .expect("valid");
        c.validate().expect("loopback without a key is fine");
        assert!(c.http.public_health);

        let mut open = c.clone();
        open.http.listen = Some("0.0.0.0:8080".parse().expect("addr"));
        let e = open.validate().expect_err("no key");
        assert!(e.contains("--api-key-file"), "{e}");
        open.http.api_key_file = Some("/k".into());
        open.validate().expect("with a key file");

        for bad in ["*", "https://poed.lan", "a/b", ""] {
            let mut c = c.clone();
            c.http.allowed_hosts = vec![bad.into()];
            let e = c.validate().expect_err(bad);
            assert!(e.contains("allowed_hosts"), "{e}");
        }
        for bad in [
            "*",
            "null",
            "app.example",
            "https://app.example/",
            "https://*.example",
        ] {
            let mut c = c.clone();
            c.http.allowed_origins = vec![bad.into()];
            let e = c.validate().expect_err(bad);
            assert!(e.contains("allowed_origins"), "{e}");
        }
    }
}
