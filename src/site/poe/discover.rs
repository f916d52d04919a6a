//! Discovery: the site's bot list, read from the network of its bot list page.
//!
//! The page (`site.bots_path`, `/explore` on Poe) loads its bots with its own API requests
//! and pages through them. Opened in a tab of the pool, every API response it receives is
//! searched for bots (objects with `handle` and `displayName`, [`network::bots_in`]). The
//! list is complete when every page from the first to the one without a next page came
//! ([`network::bot_list_complete`]; bodies are read concurrently, so pages may come out of
//! order). When the pages cannot be chained (the request's cursor is not readable, or the
//! first page came with the document), the list ends a moment after its last page came, or
//! after a quiet while with no new bots. The page's DOM is never read. Bounded in time and
//! cancellable.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::browser::cdp::{self, CdpFailure};
use crate::browser::tab::{Tab, TabSignal};
use crate::error::{Error, ErrorKind};
use crate::site::poe::driver::Driver;
use crate::site::poe::frames::BotInfo;
use crate::site::poe::network;

/// After the first bots, how long without a new response the list counts as complete
/// when no response said it was the last page.
const QUIET: Duration = Duration::from_secs(3);
/// After the last page came, how long pages that cannot be chained may still come.
const SETTLE: Duration = Duration::from_secs(1);

/// Opens `url` (the site's bot list page) in `tab` and collects the bots its API responses
/// name, in order, once per handle (compared case-insensitively). The tab is no longer warm
/// afterwards. Gives up after `limit` with what it has, or `timeout` if it has nothing.
pub async fn collect_bots(
    driver: &Driver,
    tab: &mut Tab,
    url: &str,
    navigation: Duration,
    limit: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<BotInfo>, Error> {
    tab.warm_for = None;
    // Subscribed before the page loads: its first responses come while it loads.
    let mut sub = tab.subscribe();
    let mut bots: Vec<BotInfo> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut pages: Vec<network::BotListPage> = Vec::new();
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let open = async {
        cdp::goto(&tab.page, url, navigation)
            .await
            .map_err(|e| match e {
                CdpFailure::Timeout(d) => Error::new(
                    ErrorKind::Timeout,
                    format!("the bot list page {url} did not load within {d:?}; try again later"),
                ),
                other => Error::new(
                    ErrorKind::SiteError,
                    format!("cannot open the bot list page {url}: {other}; check site.bots_path"),
                ),
            })?;
        let landed = cdp::current_url(&tab.page, Duration::from_secs(10))
            .await
            .unwrap_or_else(|_| tab.url());
        if driver.is_sign_in(&landed) {
            return Err(Error::new(
                ErrorKind::NotLoggedIn,
                "the site sent its bot list page to its sign-in page: run `poectl login` (or `poectl cookies import FILE`) first",
            ));
        }
        Ok(())
    };
    tokio::pin!(open);
    let mut loaded = false;
    let mut quiet: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let quiet_wait = async {
            match quiet.as_mut() {
                Some(q) => q.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => {
                return Err(Error::new(ErrorKind::Cancelled, "the bot list refresh was cancelled"));
            }
            opened = &mut open, if !loaded => {
                opened?;
                loaded = true;
                debug!(tab = tab.id, "bot list page loaded");
            }
            _ = &mut deadline => {
                if bots.is_empty() {
                    return Err(Error::new(ErrorKind::Timeout, format!(
                        "the bot list page {url} showed no bots within {}s; check site.bots_path, or try again later",
                        limit.as_secs())));
                }
                info!(bots = bots.len(), "bot list incomplete at the time limit; keeping what came");
                return Ok(bots);
            }
            () = quiet_wait => {
                info!(bots = bots.len(), "bot list collected (no further page came)");
                return Ok(bots);
            }
            signal = sub.rx.recv() => match signal {
                Some(TabSignal::Http(exchange)) => {
                    let found = network::bots_in(&exchange.body);
                    let before = bots.len();
                    bots.extend(
                        found
                            .into_iter()
                            .filter(|b| seen.insert(b.handle.to_ascii_lowercase())),
                    );
                    if let Some(page) = network::bot_list_page(exchange.post_data.as_deref(), &exchange.body) {
                        pages.push(page);
                    }
                    if network::bot_list_complete(&pages) {
                        info!(bots = bots.len(), pages = pages.len(), "bot list collected");
                        return Ok(bots);
                    }
                    let ended = pages.iter().any(|p| !p.has_next);
                    if bots.len() > before || ended {
                        let wait = if ended { SETTLE } else { QUIET };
                        quiet = Some(Box::pin(tokio::time::sleep(wait)));
                    }
                }
                Some(TabSignal::Gone) | None => {
                    return Err(Error::new(ErrorKind::BrowserCrashed,
                        "the tab or the browser went away while reading the bot list; try again"));
                }
                Some(TabSignal::Frame(_) | TabSignal::Request(_) | TabSignal::SocketClosed) => {}
            }
        }
    }
}
