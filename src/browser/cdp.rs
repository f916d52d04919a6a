//! DevTools helpers the site driver is built from.
//!
//! chromiumoxide has no wait-for-selector, and `Element::type_str` cannot type newlines or
//! non-ASCII text. Waiting is one `Runtime.evaluate` of a MutationObserver promise (one round
//! trip, no polling), in the page's isolated world, out of the page scripts' sight and reach;
//! a wait can be armed ahead of the input meant to satisfy it ([`ArmedWait`]). Text goes in
//! with `Input.insertText`; clicks are real (trusted) mouse press and release events at the
//! element's centre, and the pointer can be moved onto an element ahead of its click.
//! Everything is bounded by our own timeouts.

use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::input::{
    DispatchMouseEventParams, DispatchMouseEventType, InsertTextParams, MouseButton,
};
use chromiumoxide::cdp::js_protocol::runtime::{EvaluateParams, ExecutionContextId};
use chromiumoxide::Page;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Something that went wrong talking to the page.
#[derive(Debug, thiserror::Error)]
pub enum CdpFailure {
    #[error("the browser did not answer within {0:?}")]
    Timeout(Duration),
    #[error("DevTools command failed: {0}")]
    Command(String),
    #[error("script error in the page: {0}")]
    Script(String),
}

/// One condition to wait for: an element matching `selector`, and if `enabled`, one that is
/// not disabled.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub selector: &'a str,
    pub enabled: bool,
}

/// What [`wait_for_first`] found.
#[derive(Debug, Clone, Deserialize)]
pub struct Found {
    /// Index into the list of conditions; `None` when the timeout passed.
    pub index: Option<usize>,
    /// Centre of the element in CSS pixels (after scrolling it into view).
    pub x: f64,
    pub y: f64,
}

const WAIT_JS: &str = r#"(async (wanted, ms) => {
  const probe = () => {
    for (let i = 0; i < wanted.length; i++) {
      const el = document.querySelector(wanted[i].selector);
      if (el && !(wanted[i].enabled && (el.disabled || el.getAttribute('aria-disabled') === 'true'))) {
        el.scrollIntoView({block: 'center', inline: 'center'});
        const r = el.getBoundingClientRect();
        return {index: i, x: r.left + r.width / 2, y: r.top + r.height / 2};
      }
    }
    return null;
  };
  return await new Promise((resolve) => {
    const first = probe();
    if (first) return resolve(first);
    let timer = null;
    const obs = new MutationObserver(() => {
      const hit = probe();
      if (hit) { obs.disconnect(); clearTimeout(timer); resolve(hit); }
    });
    obs.observe(document.documentElement || document,
      {childList: true, subtree: true, attributes: true, characterData: true});
    timer = setTimeout(() => { obs.disconnect(); resolve({index: null, x: 0, y: 0}); }, ms);
  });
})"#;

/// Evaluates `expression` in the page, awaiting a returned promise, and returns its JSON value.
///
/// It runs in the page's isolated world (the one chromiumoxide keeps on every document):
/// the same DOM, but globals of its own, so the page's scripts neither see poed's (its
/// observers, its timers, its DOM reads) nor break them by replacing built-ins
/// (`MutationObserver`, `Promise`, `querySelector`), as bot checks, session recorders and
/// polyfills do. Where the world is not known yet (the document just changed), or its
/// context went with the old document before the script started, the page's main world is
/// used: the scripts only read and focus, so running one there instead does no harm.
pub async fn eval(page: &Page, expression: String, limit: Duration) -> Result<Value, CdpFailure> {
    let world = page.secondary_execution_context().await.ok().flatten();
    if let Some(world) = world {
        match evaluate(page, expression.clone(), Some(world), limit).await {
            // Only a context unknown before the script started ("Cannot find context with
            // specified id"); one destroyed while it ran (the page navigated) is the
            // caller's answer, as in the main world.
            Err(CdpFailure::Command(e)) if e.contains("Cannot find context") => {
                tracing::debug!(error = %e, "isolated world gone; evaluating in the main world");
            }
            other => return other,
        }
    }
    evaluate(page, expression, None, limit).await
}

async fn evaluate(
    page: &Page,
    expression: String,
    world: Option<ExecutionContextId>,
    limit: Duration,
) -> Result<Value, CdpFailure> {
    let mut params = EvaluateParams::builder()
        .expression(expression)
        .await_promise(true)
        .return_by_value(true);
    if let Some(world) = world {
        params = params.context_id(world);
    }
    let params = params.build().map_err(CdpFailure::Command)?;
    let reply = tokio::time::timeout(limit, page.execute(params))
        .await
        .map_err(|_| CdpFailure::Timeout(limit))?
        .map_err(|e| CdpFailure::Command(e.to_string()))?;
    if let Some(ex) = &reply.result.exception_details {
        return Err(CdpFailure::Script(ex.text.clone()));
    }
    Ok(reply.result.result.value.clone().unwrap_or(Value::Null))
}

/// Waits until the first of `wanted` is present (and enabled where asked), watching the DOM
/// with a MutationObserver. Returns which one, or `index: None` after `timeout`.
pub async fn wait_for_first(
    page: &Page,
    wanted: &[Wanted<'_>],
    timeout: Duration,
) -> Result<Found, CdpFailure> {
    wait_for_listed(page, None, &wanted_list(wanted), timeout).await
}

fn wanted_list(wanted: &[Wanted<'_>]) -> Value {
    wanted
        .iter()
        .map(|w| json!({"selector": w.selector, "enabled": w.enabled}))
        .collect()
}

/// [`wait_for_first`] of a prepared list, in the JavaScript context `world` if given (then
/// an error once that context is gone, its document replaced, never another document's
/// answer), else as [`eval`] picks it.
async fn wait_for_listed(
    page: &Page,
    world: Option<ExecutionContextId>,
    list: &Value,
    timeout: Duration,
) -> Result<Found, CdpFailure> {
    let expr = format!("{WAIT_JS}({list}, {})", timeout.as_millis());
    // The page answers by itself at `timeout`; allow for a slow round trip on top.
    let limit = timeout + Duration::from_secs(5);
    let value = match world {
        Some(world) => evaluate(page, expr, Some(world), limit).await?,
        None => eval(page, expr, limit).await?,
    };
    serde_json::from_value(value).map_err(|e| CdpFailure::Script(e.to_string()))
}

/// How long one armed wait's observer runs in the page before it is renewed: with the
/// round trip's allowance it stays under chromiumoxide's 30 s limit for a command.
const ARMED_FOR: Duration = Duration::from_secs(20);

/// A [`wait_for_first`] started ahead of the input meant to satisfy it.
///
/// A command sent together with input reaches the page's main thread after the input and
/// the frame the input makes the page draw (Chromium runs input and rendering first), so a
/// wait sent with the prompt's text answered a frame late. An armed wait is already
/// watching when the text arrives: the page answers from within the text's own input task.
/// While nothing comes it renews itself every [`ARMED_FOR`]; it is bound to the document
/// it was armed in (its isolated world's context, or its main world's) and ends with it,
/// and when dropped.
pub struct ArmedWait {
    found: oneshot::Receiver<Result<Found, CdpFailure>>,
    renewals: watch::Receiver<u32>,
    task: JoinHandle<()>,
}

impl ArmedWait {
    /// Starts watching the document `page` shows now for the first of `wanted`; `None`
    /// when the page has no document to watch yet (no known JavaScript context).
    pub async fn arm(page: &Page, wanted: &[Wanted<'_>]) -> Option<ArmedWait> {
        ArmedWait::arm_for(page, wanted, ARMED_FOR).await
    }

    /// [`ArmedWait::arm`] with the page's observer renewed every `period`.
    pub async fn arm_for(
        page: &Page,
        wanted: &[Wanted<'_>],
        period: Duration,
    ) -> Option<ArmedWait> {
        let world = match page.secondary_execution_context().await {
            Ok(Some(world)) => world,
            _ => page.execution_context().await.ok().flatten()?,
        };
        let (tx, found) = oneshot::channel();
        let (renewed, renewals) = watch::channel(0);
        let page = page.clone();
        let list = wanted_list(wanted);
        let task = tokio::spawn(async move {
            loop {
                let outcome = wait_for_listed(&page, Some(world), &list, period).await;
                let renew = matches!(outcome, Ok(Found { index: None, .. })) && !tx.is_closed();
                if !renew {
                    let _ = tx.send(outcome);
                    return;
                }
                renewed.send_modify(|n| *n += 1);
            }
        });
        Some(ArmedWait {
            found,
            renewals,
            task,
        })
    }

    /// How many times the page's observer has been renewed (it changes at each renewal).
    pub fn renewals(&self) -> watch::Receiver<u32> {
        self.renewals.clone()
    }

    /// True while it still watches: nothing was found and the page's document is the one
    /// it was armed in. What it found before the input it waits for tells nothing of that
    /// input's effect.
    pub fn watching(&self) -> bool {
        !self.task.is_finished()
    }

    /// What it finds within `timeout` (`index: None` after it).
    pub async fn found(mut self, timeout: Duration) -> Result<Found, CdpFailure> {
        match tokio::time::timeout(timeout, &mut self.found).await {
            Ok(Ok(found)) => found,
            Ok(Err(_)) => Err(CdpFailure::Command("the armed wait ended".into())),
            Err(_) => Ok(Found {
                index: None,
                x: 0.0,
                y: 0.0,
            }),
        }
    }
}

impl Drop for ArmedWait {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Focuses the element matching `selector`; false when there is none.
pub async fn focus(page: &Page, selector: &str, limit: Duration) -> Result<bool, CdpFailure> {
    let expr = format!(
        "(() => {{ const el = document.querySelector({}); if (!el) return false; el.focus(); return true; }})()",
        Value::String(selector.to_owned())
    );
    Ok(eval(page, expr, limit).await? == Value::Bool(true))
}

/// Inserts `text` at the focused element as the user's input (fires trusted input events;
/// any Unicode, newlines included).
pub async fn insert_text(page: &Page, text: &str, limit: Duration) -> Result<(), CdpFailure> {
    tokio::time::timeout(limit, page.execute(InsertTextParams::new(text)))
        .await
        .map_err(|_| CdpFailure::Timeout(limit))?
        .map_err(|e| CdpFailure::Command(e.to_string()))?;
    Ok(())
}

/// A real left click (press and release) at `(x, y)`. Both events are sent at once, in
/// order, so the click costs one round trip, not two.
pub async fn click_at(page: &Page, x: f64, y: f64, limit: Duration) -> Result<(), CdpFailure> {
    let event = |kind| {
        DispatchMouseEventParams::builder()
            .r#type(kind)
            .x(x)
            .y(y)
            .button(MouseButton::Left)
            .buttons(1)
            .click_count(1)
            .build()
            .map_err(CdpFailure::Command)
    };
    let press = event(DispatchMouseEventType::MousePressed)?;
    let release = event(DispatchMouseEventType::MouseReleased)?;
    let both = async { futures::join!(page.execute(press), page.execute(release)) };
    let (pressed, released) = tokio::time::timeout(limit, both)
        .await
        .map_err(|_| CdpFailure::Timeout(limit))?;
    pressed.map_err(|e| CdpFailure::Command(e.to_string()))?;
    released.map_err(|e| CdpFailure::Command(e.to_string()))?;
    Ok(())
}

const CENTRE_JS: &str = r#"((selector) => {
  const el = document.querySelector(selector);
  if (!el) return null;
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) return null;
  return {x: r.left + r.width / 2, y: r.top + r.height / 2};
})"#;

/// Moves the mouse pointer onto the centre of the element matching `selector`, as a hand
/// goes to a button before pressing it. False when no such element is shown (nothing moves).
pub async fn hover(page: &Page, selector: &str, limit: Duration) -> Result<bool, CdpFailure> {
    let expr = format!("{CENTRE_JS}({})", Value::String(selector.to_owned()));
    let Some(Point { x, y }) =
        serde_json::from_value::<Option<Point>>(eval(page, expr, limit).await?)
            .map_err(|e| CdpFailure::Script(e.to_string()))?
    else {
        return Ok(false);
    };
    let moved = DispatchMouseEventParams::builder()
        .r#type(DispatchMouseEventType::MouseMoved)
        .x(x)
        .y(y)
        .build()
        .map_err(CdpFailure::Command)?;
    tokio::time::timeout(limit, page.execute(moved))
        .await
        .map_err(|_| CdpFailure::Timeout(limit))?
        .map_err(|e| CdpFailure::Command(e.to_string()))?;
    Ok(true)
}

/// A point in the page's viewport, in CSS pixels.
#[derive(Debug, Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

/// Navigates and waits for the `load` event.
pub async fn goto(page: &Page, url: &str, limit: Duration) -> Result<(), CdpFailure> {
    tokio::time::timeout(limit, page.goto(url))
        .await
        .map_err(|_| CdpFailure::Timeout(limit))?
        .map_err(|e| CdpFailure::Command(e.to_string()))?;
    Ok(())
}

const TEXT_JS: &str = r#"(async (present, absent, after, ms) => {
  const probe = () => {
    if (absent && document.querySelector(absent)) return null;
    const all = document.querySelectorAll(present);
    const el = all.length > after ? all[all.length - 1] : null;
    return el && el.textContent ? el.textContent : null;
  };
  return await new Promise((resolve) => {
    const first = probe();
    if (first !== null) return resolve(first);
    let timer = null;
    const obs = new MutationObserver(() => {
      const hit = probe();
      if (hit !== null) { obs.disconnect(); clearTimeout(timer); resolve(hit); }
    });
    obs.observe(document.documentElement || document,
      {childList: true, subtree: true, attributes: true, characterData: true});
    timer = setTimeout(() => { obs.disconnect(); resolve(probe()); }, ms);
  });
})"#;

/// Waits until no element matches `absent` and more than `after` elements match `present`,
/// the last of them with text; returns that text (`None` after `timeout`). Used to read a
/// reply from the page when its update stream was lost; `after` is how many replies the
/// page showed before this one (a continued chat shows its earlier ones).
pub async fn wait_for_text(
    page: &Page,
    present: &str,
    absent: &str,
    after: usize,
    timeout: Duration,
) -> Result<Option<String>, CdpFailure> {
    let expr = format!(
        "{TEXT_JS}({}, {}, {after}, {})",
        Value::String(present.to_owned()),
        Value::String(absent.to_owned()),
        timeout.as_millis()
    );
    let value = eval(page, expr, timeout + Duration::from_secs(5)).await?;
    Ok(value.as_str().map(str::to_owned))
}

/// The DevTools form of cookies read from a browser export.
pub fn cookie_params(
    cookies: Vec<crate::cookies::Cookie>,
) -> Vec<chromiumoxide::cdp::browser_protocol::network::CookieParam> {
    use chromiumoxide::cdp::browser_protocol::network::{
        CookieParam, CookieSameSite, TimeSinceEpoch,
    };
    cookies
        .into_iter()
        .map(|c| {
            let mut p = CookieParam::new(c.name, c.value);
            p.domain = Some(c.domain);
            p.path = Some(c.path);
            p.secure = Some(c.secure);
            p.http_only = Some(c.http_only);
            p.expires = c.expires.map(TimeSinceEpoch::new);
            p.same_site = match c.same_site.as_deref() {
                Some("Strict") => Some(CookieSameSite::Strict),
                Some("Lax") => Some(CookieSameSite::Lax),
                Some("None") => Some(CookieSameSite::None),
                _ => None,
            };
            p
        })
        .collect()
}

/// The URL of the page's main frame, as the browser has it now.
pub async fn current_url(page: &Page, limit: Duration) -> Result<String, CdpFailure> {
    let url = tokio::time::timeout(limit, page.url())
        .await
        .map_err(|_| CdpFailure::Timeout(limit))?
        .map_err(|e| CdpFailure::Command(e.to_string()))?;
    url.ok_or_else(|| CdpFailure::Command("the page has no URL".into()))
}
