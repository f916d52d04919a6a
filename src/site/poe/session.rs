//! Signing the browser profile in: cookie import and the interactive sign-in.
//!
//! Both change the session under running pages, so afterwards every idle tab is cooled
//! (its page shows the old session). Both are bounded in time and leave nothing open: the
//! tabs they open close on every path (a dropped [`Tab`] closes itself), and the sign-in
//! always puts the browser back in headless mode. They reach the browser only through
//! [`crate::browser`] helpers.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::browser::cdp;
use crate::browser::supervisor::BrowserHandle;
use crate::browser::tab::Tab;
use crate::browser::tab_pool::{Acquired, TabPool, Warm};
use crate::config::{secs, SiteConfig, Timeouts};
use crate::cookies::Cookie;
use crate::error::{Error, ErrorKind};
use crate::site::poe::driver::Driver;

/// What a session operation needs of the daemon.
pub struct Session<'a> {
    pub browser: &'a BrowserHandle,
    pub pool: &'a Arc<TabPool>,
    pub driver: &'a Driver,
    pub site: &'a SiteConfig,
    pub timeouts: &'a Timeouts,
    /// The bot whose page proves the sign-in.
    pub bot: &'a str,
}

/// How often a sign-in that did not navigate is checked.
const SIGN_IN_CHECK: Duration = Duration::from_secs(5);

fn cancelled() -> Error {
    Error::new(ErrorKind::Cancelled, "cancelled")
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::BrowserUnavailable, e.to_string())
}

impl Session<'_> {
    /// Stores `cookies` in the profile, then opens a chat to see whether the profile is now
    /// signed in (the returned result). Gives up after `limit`.
    pub async fn import_cookies(
        &self,
        cookies: Vec<Cookie>,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<(usize, Result<(), Error>), Error> {
        if cookies.is_empty() {
            return Err(Error::new(ErrorKind::BadRequest, "no cookies to import"));
        }
        if !cookies.iter().any(|c| c.name == "p-b") {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "the cookies include no \"p-b\" (Poe's session cookie); export the cookies of poe.com while signed in",
            ));
        }
        let count = cookies.len();
        let work = async {
            self.browser
                .set_cookies(cdp::cookie_params(cookies))
                .await
                .map_err(unavailable)?;
            info!(count, "session cookies imported");
            // Pages loaded before the import show the old session.
            self.pool.cool_all();
            let mut tab = match self.pool.acquire(&Warm::Bot(self.bot.to_owned()))? {
                Acquired::Now(tab) => tab,
                Acquired::Queued(ticket) | Acquired::Soon(ticket) => ticket.wait().await?,
            };
            let checked = self.driver.open_chat(&mut tab, self.bot).await;
            if checked.is_err() {
                tab.warm_for = None;
            }
            tab.release();
            Ok::<_, Error>(checked)
        };
        tokio::select! {
            r = work => Ok((count, r?)),
            _ = cancel.cancelled() => Err(cancelled()),
            _ = tokio::time::sleep(limit) => Err(Error::new(
                ErrorKind::Timeout,
                format!("the cookie import did not finish within {}s (all tabs busy, or the site is slow); try again", limit.as_secs()),
            )),
        }
    }

    /// Signs the profile in with the user's help: relaunches the browser with a visible
    /// window (unless attached with `--connect`, where the user's own browser is used), opens
    /// the sign-in page, waits until a session appears and a bot page shows its prompt box,
    /// then goes back to headless. `started` hears the sign-in URL.
    pub async fn login(
        &self,
        connected: bool,
        headless: bool,
        timeout: Duration,
        cancel: &CancellationToken,
        started: impl FnOnce(String),
    ) -> Result<(), Error> {
        let relaunch = !connected && headless;
        if relaunch {
            let display = ["DISPLAY", "WAYLAND_DISPLAY"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
            if !display {
                return Err(Error::new(
                    ErrorKind::NoDisplay,
                    "there is no display to show a browser window on (DISPLAY is not set): import cookies from a signed-in browser with `poectl cookies import FILE`, or run poed with --connect to your own browser (README, \"Signing in\")",
                ));
            }
            self.browser.relaunch(false).await.map_err(unavailable)?;
        }
        let result = tokio::select! {
            r = self.sign_in(timeout, started) => r,
            _ = cancel.cancelled() => Err(cancelled()),
        };
        if relaunch {
            if let Err(e) = self.browser.relaunch(true).await {
                warn!(error = %e, "could not go back to headless after signing in");
            }
        }
        self.pool.cool_all();
        result
    }

    async fn sign_in(&self, timeout: Duration, started: impl FnOnce(String)) -> Result<(), Error> {
        let tab = Tab::open(self.browser, 0, self.site.watch())
            .await
            .map_err(unavailable)?;
        let mut url_changes = tab.watch_url();
        let url = format!(
            "{}{}",
            self.site.base_url.trim_end_matches('/'),
            self.site.login_path
        );
        cdp::goto(&tab.page, &url, secs(self.timeouts.navigation_secs))
            .await
            .map_err(|e| Error::new(ErrorKind::SiteError, format!("cannot open {url}: {e}")))?;
        started(url);
        // Signed in is decided only by a bot page that keeps its URL and shows its prompt
        // box (a session cookie alone proves nothing: the site sets one for visitors too).
        // Checked in a tab of its own whenever the sign-in tab moves, and every few seconds
        // in case the site signs in without navigating (a human-paced check).
        let signed_in = tokio::time::timeout(timeout, async {
            loop {
                tokio::select! {
                    changed = url_changes.changed() => if changed.is_err() {
                        return Err(Error::new(ErrorKind::BrowserUnavailable, "the sign-in window went away"));
                    },
                    _ = tokio::time::sleep(SIGN_IN_CHECK) => {}
                }
                if self.driver.is_sign_in(&tab.url()) {
                    continue;
                }
                let mut check = Tab::open(self.browser, 0, self.site.watch())
                    .await
                    .map_err(unavailable)?;
                let checked = self.driver.open_chat(&mut check, self.bot).await;
                check.close().await;
                match checked {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind == ErrorKind::NotLoggedIn => continue,
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        tab.close().await;
        match signed_in {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "nobody signed in within {}s; run `poectl login` again",
                    timeout.as_secs()
                ),
            )),
        }
    }
}
