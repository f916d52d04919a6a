//! The user agent poed's tabs present to the site.
//!
//! Headless Chromium names itself `HeadlessChrome` in its `User-Agent` header and in
//! `navigator.userAgent`. Bot filters in front of sites (Cloudflare's, for one) challenge or
//! refuse that name, and a clearance cookie earned in the window `poectl login`
//! opened (which says `Chrome`) holds only for the agent that earned it. So each tab of a
//! headless browser poed launched presents the agent the same Chromium shows with a window,
//! with the browser's own client hints (brands, full versions, platform), read once per
//! browser, so the headers agree with each other. They are read from a `chrome://version`
//! tab: a blank tab is no secure context, where pages cannot read the hints. A browser poed
//! attached to (`--connect`) is the user's own and is left as it is. `browser.user_agent`
//! in the configuration sets the agent instead (`""`: leave Chromium's own).

use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::emulation::{
    SetUserAgentOverrideParams, UserAgentMetadata,
};
use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
use chromiumoxide::{Browser, Page};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::browser::cdp;
use crate::config::BrowserConfig;

/// What the tabs of one browser present.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Chromium's own agent, untouched.
    Keep,
    /// Chromium's own agent as its windowed self says it (no `Headless`).
    Windowed,
    /// This agent, with the browser's own client hints.
    Fixed(String),
}

impl Plan {
    /// The plan for a browser started from `cfg`; `launched` is false when attached to the
    /// user's own.
    pub fn for_browser(cfg: &BrowserConfig, launched: bool) -> Plan {
        match cfg.user_agent.as_deref() {
            Some("") => Plan::Keep,
            Some(agent) => Plan::Fixed(agent.to_owned()),
            None if launched && cfg.headless => Plan::Windowed,
            None => Plan::Keep,
        }
    }
}

/// What a blank tab says of its browser.
#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    /// `navigator.userAgent`.
    pub agent: String,
    /// `navigator.platform`.
    #[serde(default)]
    pub platform: Option<String>,
    /// `navigator.userAgentData` with its high-entropy values, in DevTools' shape; absent
    /// where the page cannot read them.
    #[serde(default)]
    pub metadata: Option<UserAgentMetadata>,
}

/// Reads the agent and the client hints, in DevTools' `UserAgentMetadata` shape.
const PROBE_JS: &str = r#"(async () => {
  const d = navigator.userAgentData;
  let metadata = null;
  if (d && d.getHighEntropyValues) {
    const h = await d.getHighEntropyValues(["architecture", "bitness", "model",
      "platformVersion", "fullVersionList", "wow64", "formFactors"]);
    metadata = {brands: d.brands, fullVersionList: h.fullVersionList, platform: d.platform,
      platformVersion: h.platformVersion || "", architecture: h.architecture || "",
      model: h.model || "", mobile: d.mobile, bitness: h.bitness, wow64: h.wow64,
      formFactors: h.formFactors};
  }
  return {agent: navigator.userAgent, platform: navigator.platform, metadata};
})()"#;

/// How long reading or setting the agent may take.
const LIMIT: Duration = Duration::from_secs(5);

/// The agent of one browser: decided on its first tab, then set on every tab.
#[derive(Debug)]
pub struct Disguise {
    plan: Plan,
    /// `None` until the first tab was probed (or when there is nothing to set).
    params: Option<SetUserAgentOverrideParams>,
    probed: bool,
}

impl Disguise {
    pub fn new(plan: Plan) -> Disguise {
        Disguise {
            plan,
            params: None,
            probed: false,
        }
    }

    /// Sets the agent on a new blank tab of `browser` (probing the browser first, once). A
    /// failure is logged and the tab keeps Chromium's own agent: a tab that works is better
    /// than none.
    pub async fn apply(&mut self, browser: &Browser, page: &Page) {
        if self.plan == Plan::Keep {
            return;
        }
        if !self.probed {
            self.probed = true;
            match probe(browser, page).await {
                Ok(probe) => {
                    self.params = override_for(&self.plan, probe);
                    if let Some(p) = &self.params {
                        debug!(agent = %p.user_agent, "tabs present this user agent");
                    }
                }
                Err(e) => warn!(
                    error = %e,
                    "cannot read the browser's user agent; its tabs keep Chromium's own, which \
                     names a headless browser as such"
                ),
            }
        }
        let Some(params) = self.params.clone() else {
            return;
        };
        match tokio::time::timeout(LIMIT, page.execute(params)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot set the user agent of a tab"),
            Err(_) => warn!("the browser did not set a tab's user agent within {LIMIT:?}"),
        }
    }
}

/// What the browser says of itself: from a `chrome://version` tab (a secure context, so
/// with the client hints), else from the blank tab `page` (the agent alone).
async fn probe(browser: &Browser, page: &Page) -> Result<Probe, String> {
    match probe_version_page(browser).await {
        Ok(probe) if probe.metadata.is_some() => return Ok(probe),
        Ok(_) => warn!("the browser's version page shows no client hints"),
        Err(e) => warn!(error = %e, "cannot read the client hints from the version page"),
    }
    probe_page(page).await
}

async fn probe_version_page(browser: &Browser) -> Result<Probe, String> {
    let page = tokio::time::timeout(
        LIMIT,
        browser.new_page(CreateTargetParams::new("chrome://version")),
    )
    .await
    .map_err(|_| format!("no version page within {LIMIT:?}"))?
    .map_err(|e| e.to_string())?;
    let probe = probe_page(&page).await;
    let _ = tokio::time::timeout(LIMIT, page.close()).await;
    probe
}

async fn probe_page(page: &Page) -> Result<Probe, String> {
    let value = cdp::eval(page, PROBE_JS.to_owned(), LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| format!("unexpected answer: {e}"))
}

/// The override for `plan` given what the browser says of itself; `None` when there is
/// nothing to change.
pub fn override_for(plan: &Plan, probe: Probe) -> Option<SetUserAgentOverrideParams> {
    let agent = match plan {
        Plan::Keep => return None,
        Plan::Fixed(agent) => agent.clone(),
        Plan::Windowed if probe.agent.contains("HeadlessChrome") => {
            probe.agent.replace("HeadlessChrome", "Chrome")
        }
        Plan::Windowed => return None,
    };
    let metadata = probe.metadata.map(|mut m| {
        // Older headless builds listed a `HeadlessChrome` brand too.
        for list in [&mut m.brands, &mut m.full_version_list]
            .into_iter()
            .flatten()
        {
            list.retain(|b| !b.brand.contains("Headless"));
        }
        m
    });
    Some(SetUserAgentOverrideParams {
        user_agent: agent,
        accept_language: None,
        platform: probe.platform,
        user_agent_metadata: metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HEADLESS: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like \
                            Gecko) HeadlessChrome/156.0.0.0 Safari/537.36";

    fn probe(agent: &str) -> Probe {
        serde_json::from_value(json!({
            "agent": agent,
            "platform": "Linux x86_64",
            "metadata": {
                "brands": [{"brand": "Not:A-Brand", "version": "8"},
                           {"brand": "HeadlessChrome", "version": "156"},
                           {"brand": "Chromium", "version": "156"}],
                "fullVersionList": [{"brand": "Chromium", "version": "156.0.8078.108"}],
                "platform": "Linux", "platformVersion": "", "architecture": "x86",
                "model": "", "mobile": false, "bitness": "64", "wow64": false,
                "formFactors": ["Desktop"]
            }
        }))
        .expect("probe")
    }

    #[test]
    fn a_headless_agent_is_presented_as_its_windowed_self_with_the_same_hints() {
        let p = override_for(&Plan::Windowed, probe(HEADLESS)).expect("override");
        assert_eq!(
            p.user_agent,
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/156.0.0.0 Safari/537.36"
        );
        assert_eq!(p.platform.as_deref(), Some("Linux x86_64"));
        let m = p.user_agent_metadata.expect("metadata");
        let brands: Vec<_> = m
            .brands
            .iter()
            .flatten()
            .map(|b| b.brand.as_str())
            .collect();
        assert_eq!(brands, ["Not:A-Brand", "Chromium"]);
        assert_eq!(m.full_version_list.map(|l| l.len()), Some(1));
        assert_eq!(
            (m.platform.as_str(), m.bitness.as_deref()),
            ("Linux", Some("64"))
        );
    }

    #[test]
    fn nothing_is_set_where_nothing_says_headless_or_the_user_keeps_it() {
        let windowed = HEADLESS.replace("HeadlessChrome", "Chrome");
        assert!(override_for(&Plan::Windowed, probe(&windowed)).is_none());
        assert!(override_for(&Plan::Keep, probe(HEADLESS)).is_none());
        let fixed = override_for(&Plan::Fixed("Agent/1".into()), probe(&windowed));
        assert_eq!(fixed.map(|p| p.user_agent).as_deref(), Some("Agent/1"));
    }

    #[test]
    fn the_plan_follows_the_configuration_and_the_browser() {
        let mut cfg = BrowserConfig::default();
        assert_eq!(Plan::for_browser(&cfg, true), Plan::Windowed);
        assert_eq!(Plan::for_browser(&cfg, false), Plan::Keep);
        cfg.headless = false;
        assert_eq!(Plan::for_browser(&cfg, true), Plan::Keep);
        cfg.user_agent = Some("Agent/1".into());
        assert_eq!(
            Plan::for_browser(&cfg, false),
            Plan::Fixed("Agent/1".into())
        );
        cfg.user_agent = Some(String::new());
        cfg.headless = true;
        assert_eq!(Plan::for_browser(&cfg, true), Plan::Keep);
    }
}
