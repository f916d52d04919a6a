//! A headless Chromium on a temporary profile for the tests that drive it directly, not
//! through poed, and the page helpers they share.

use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
use chromiumoxide::Page;
use futures::StreamExt;
use serde::de::DeserializeOwned;

/// Bound of one wait for the page.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Chromium {
    browser: Browser,
    handler: tokio::task::JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    pub async fn launch() -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut cfg = BrowserConfig::builder()
            .chrome_executable("/usr/bin/chromium")
            .user_data_dir(profile.path())
            .arg("disable-gpu")
            .arg("disable-component-update");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cfg = cfg.no_sandbox();
        }
        let (browser, mut handler) = Browser::launch(cfg.build().expect("config"))
            .await
            .expect("chromium (Debian package chromium)");
        let handler = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Chromium {
            browser,
            handler,
            _profile: profile,
        }
    }

    /// A blank tab in a window of its own (a background tab of headless Chromium is slow).
    pub async fn tab(&self) -> Page {
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .new_window(true)
            .build()
            .expect("params");
        self.browser.new_page(params).await.expect("tab")
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.browser.close()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.browser.wait()).await;
        self.handler.abort();
    }
}

pub async fn goto(page: &Page, url: &str) {
    tokio::time::timeout(WAIT, page.goto(url))
        .await
        .expect("navigation in time")
        .expect("navigation");
}

/// The value of a JS expression (awaited if it is a promise).
pub async fn js<T: DeserializeOwned>(page: &Page, expr: &str) -> T {
    tokio::time::timeout(WAIT, page.evaluate(expr))
        .await
        .expect("evaluation in time")
        .expect("evaluation")
        .into_value()
        .expect("value")
}
