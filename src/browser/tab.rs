//! One browser tab and its event pump.
//!
//! The pump is registered on `about:blank`, before the tab ever navigates (chromiumoxide
//! only delivers events that arrive after registration), and lives as long as the tab. It
//! reads `Network.webSocketCreated/FrameReceived/Closed` for this tab only, keeps frames of
//! the update socket (URL filter from config) and drops other sockets' frames, parses them
//! with the site's frame parser, and hands the updates to the request currently
//! subscribed. With no subscriber, frames are dropped unparsed, so an idle tab's memory
//! does not grow with the site's chatter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use chromiumoxide::cdp::browser_protocol::inspector::{
    EnableParams as InspectorEnableParams, EventTargetCrashed,
};
use chromiumoxide::cdp::browser_protocol::network::{
    EventWebSocketClosed, EventWebSocketCreated, EventWebSocketFrameReceived,
};
use chromiumoxide::Page;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use crate::browser::supervisor::BrowserHandle;
use crate::site::poe::frames::{parse_frame, Update};

/// What the pump tells the subscribed request.
#[derive(Debug)]
pub enum TabSignal {
    /// Updates parsed from one frame of the update socket, in order.
    Updates(Vec<Update>),
    /// The update socket closed.
    SocketClosed,
    /// The tab's page crashed, or its event streams ended (the tab or the browser is gone).
    Gone,
}

#[derive(Default)]
struct Relay {
    subscriber: Mutex<Option<mpsc::UnboundedSender<TabSignal>>>,
    gone: AtomicBool,
    /// Frames seen on the update socket, for diagnostics.
    frames: AtomicU64,
}

impl Relay {
    fn send(&self, signal: TabSignal) {
        if let Ok(slot) = self.subscriber.lock() {
            if let Some(tx) = slot.as_ref() {
                let _ = tx.send(signal);
            }
        }
    }

    fn has_subscriber(&self) -> bool {
        self.subscriber
            .lock()
            .map(|s| s.as_ref().is_some_and(|tx| !tx.is_closed()))
            .unwrap_or(false)
    }
}

/// A subscription to a tab's updates; dropping it unsubscribes.
pub struct Subscription {
    pub rx: mpsc::UnboundedReceiver<TabSignal>,
    relay: Arc<Relay>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.relay.subscriber.lock() {
            *slot = None;
        }
    }
}

/// A tab lent out by the pool.
pub struct Tab {
    /// Stable number for logs.
    pub id: usize,
    pub page: Page,
    /// The bot handle whose fresh chat this tab shows with the prompt box ready, if any.
    pub warm_for: Option<String>,
    /// Cancelled when the browser this tab lives in is found dead.
    pub browser_gone: CancellationToken,
    relay: Arc<Relay>,
    pump: JoinHandle<()>,
}

enum Raw {
    Created(Arc<EventWebSocketCreated>),
    Frame(Arc<EventWebSocketFrameReceived>),
    Closed(Arc<EventWebSocketClosed>),
    /// The tab's renderer crashed.
    Crashed,
}

impl Tab {
    /// Opens a blank tab and starts its pump. `update_socket_contains` selects the update
    /// socket among the page's WebSockets.
    pub async fn open(
        browser: &BrowserHandle,
        id: usize,
        update_socket_contains: String,
    ) -> Result<Tab, String> {
        let (page, browser_gone) = browser.new_page().await?;
        let listen =
            |e: chromiumoxide::error::CdpError| format!("cannot listen to tab events: {e}");
        let created = page
            .event_listener::<EventWebSocketCreated>()
            .await
            .map_err(listen)?;
        let frames = page
            .event_listener::<EventWebSocketFrameReceived>()
            .await
            .map_err(listen)?;
        let closed = page
            .event_listener::<EventWebSocketClosed>()
            .await
            .map_err(listen)?;
        // `Inspector.targetCrashed` needs the Inspector domain, which chromiumoxide leaves off.
        let crashed = page
            .event_listener::<EventTargetCrashed>()
            .await
            .map_err(listen)?;
        page.execute(InspectorEnableParams::default())
            .await
            .map_err(listen)?;
        let merged: BoxStream<'static, Raw> = futures::stream::select_all([
            created.map(Raw::Created).boxed(),
            frames.map(Raw::Frame).boxed(),
            closed.map(Raw::Closed).boxed(),
            crashed.map(|_| Raw::Crashed).boxed(),
        ])
        .boxed();
        let relay = Arc::new(Relay::default());
        let pump = tokio::spawn(pump(id, merged, relay.clone(), update_socket_contains));
        Ok(Tab {
            id,
            page,
            warm_for: None,
            browser_gone,
            relay,
            pump,
        })
    }

    /// Starts receiving this tab's updates (replacing any earlier subscriber).
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut slot) = self.relay.subscriber.lock() {
            *slot = Some(tx);
        }
        Subscription {
            rx,
            relay: self.relay.clone(),
        }
    }

    /// Whether the tab's event streams ended (tab closed, renderer or browser gone).
    pub fn is_gone(&self) -> bool {
        self.relay.gone.load(Ordering::Relaxed) || self.browser_gone.is_cancelled()
    }

    /// Marks the tab as unusable (its page hung): the pool replaces it.
    pub fn crash(&self) {
        self.relay.gone.store(true, Ordering::Relaxed);
    }

    /// Closes the tab in the browser.
    pub async fn close(self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), self.page.clone().close())
            .await;
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

async fn pump(
    tab: usize,
    mut events: BoxStream<'static, Raw>,
    relay: Arc<Relay>,
    update_socket_contains: String,
) {
    // request id -> whether that socket is the update socket
    let mut sockets: HashMap<String, bool> = HashMap::new();
    while let Some(event) = events.next().await {
        match event {
            Raw::Created(c) => {
                let is_update = c.url.contains(&update_socket_contains);
                debug!(tab, url = %crate::redact::url(&c.url), is_update, "websocket created");
                sockets.insert(c.request_id.inner().clone(), is_update);
            }
            Raw::Closed(c) => {
                if sockets.remove(c.request_id.inner()) == Some(true) {
                    debug!(tab, "update socket closed");
                    relay.send(TabSignal::SocketClosed);
                }
            }
            Raw::Crashed => {
                tracing::warn!(tab, "the tab's page crashed");
                break;
            }
            Raw::Frame(f) => {
                // A socket whose creation we did not see is parsed anyway: non-updates are
                // ignored by the parser, so this only costs time.
                if sockets.get(f.request_id.inner()) == Some(&false) || !relay.has_subscriber() {
                    continue;
                }
                let frame = &f.response;
                let text = if frame.opcode == 1.0 {
                    std::borrow::Cow::Borrowed(frame.payload_data.as_str())
                } else {
                    match base64::engine::general_purpose::STANDARD.decode(&frame.payload_data) {
                        Ok(bytes) => match String::from_utf8(bytes) {
                            Ok(s) => std::borrow::Cow::Owned(s),
                            Err(_) => continue,
                        },
                        Err(_) => continue,
                    }
                };
                let updates = parse_frame(&text);
                relay.frames.fetch_add(1, Ordering::Relaxed);
                trace!(tab, updates = updates.len(), "frame");
                if !updates.is_empty() {
                    relay.send(TabSignal::Updates(updates));
                }
            }
        }
    }
    relay.gone.store(true, Ordering::Relaxed);
    relay.send(TabSignal::Gone);
}
