//! One browser tab and its event pump.
//!
//! The pump is registered on `about:blank`, before the tab ever navigates (chromiumoxide
//! only delivers events that arrive after registration), and lives as long as the tab. It
//! reads `Network.webSocketCreated/FrameReceived/Closed` for this tab only, keeps the text
//! of frames of the update socket (URL filter from config), drops other sockets' frames, and
//! hands them raw to the request currently subscribed: the browser layer knows nothing of
//! the site, the site adapter parses. With no subscriber, frames are dropped, so an idle
//! tab's memory does not grow with the site's chatter. It also follows the main frame's URL
//! (navigations, in-page moves) for whoever watches it, and reads the HTTP responses of the
//! page's own API requests (`Network.requestWillBeSent` / `responseReceived` /
//! `loadingFinished`, then `Network.getResponseBody`) for the subscribed request: the
//! site's answers to a send or a refetch come that way. Each such request is also reported
//! as it goes out, before its answer: the send's body names the prompt's nonce before any
//! frame about it can come. An observer (set once per tab) sees every update-socket frame,
//! also while no request runs. The main frame's document response (its URL and HTTP
//! status, or the browser's network error) is kept too, so a caller can tell a page that
//! exists from a not-found page, or from one that did not load, without reading the page.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use chromiumoxide::cdp::browser_protocol::inspector::{
    EnableParams as InspectorEnableParams, EventTargetCrashed,
};
use chromiumoxide::cdp::browser_protocol::log::DisableParams as LogDisableParams;
use chromiumoxide::cdp::browser_protocol::network::{
    EventLoadingFailed, EventLoadingFinished, EventRequestWillBeSent, EventResponseReceived,
    EventWebSocketClosed, EventWebSocketCreated, EventWebSocketFrameReceived,
    EventWebSocketHandshakeResponseReceived, GetResponseBodyParams, ResourceType,
};
use chromiumoxide::cdp::browser_protocol::page::{
    EventFrameNavigated, EventNavigatedWithinDocument,
};
use chromiumoxide::cdp::browser_protocol::performance::DisableParams as PerformanceDisableParams;
use chromiumoxide::Page;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use crate::browser::supervisor::BrowserHandle;
use crate::browser::update_socket::{SocketState, UpdateSockets};

/// One HTTP request of the page and its response, as the browser saw them.
#[derive(Debug, Clone)]
pub struct HttpExchange {
    pub url: String,
    pub method: String,
    /// Request headers, names as sent.
    pub request_headers: Vec<(String, String)>,
    pub post_data: Option<String>,
    pub status: u16,
    pub body: String,
}

/// An API request of the page as it goes out (its answer follows as [`TabSignal::Http`]).
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub url: String,
    /// Request headers, names as sent.
    pub request_headers: Vec<(String, String)>,
    pub post_data: Option<String>,
}

/// The HTTP response that delivered the main frame's document (the last navigation's), or
/// the browser's network error when none came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentResponse {
    /// The document's URL after any redirects (the URL asked for when it failed).
    pub url: String,
    /// 0 when it failed.
    pub status: u16,
    /// The browser's error when the document did not load (e.g.
    /// `net::ERR_CERT_AUTHORITY_INVALID`).
    pub failure: Option<String>,
}

/// Sees every frame of the update socket (while no request runs, too), with the time the
/// browser received it (DevTools' monotonic clock, in seconds: one clock for every tab of a
/// browser, so frames of different tabs can be put in the order the site sent them).
pub type FrameObserver = Arc<dyn Fn(&str, f64) + Send + Sync>;

/// What the pump tells the subscribed request.
#[derive(Debug)]
pub enum TabSignal {
    /// The text of one frame of the update socket.
    Frame(String),
    /// An API request of the page (URL filter from config) went out: e.g. the send, whose
    /// body names the prompt's nonce before any frame about it can come.
    Request(ApiRequest),
    /// A finished API request of the page (URL filter from config) with its response body.
    Http(HttpExchange),
    /// The update socket closed.
    SocketClosed,
    /// The tab's page crashed, or its event streams ended (the tab or the browser is gone).
    Gone,
}

#[derive(Default)]
struct Relay {
    subscriber: Mutex<Option<mpsc::UnboundedSender<TabSignal>>>,
    observer: Mutex<Option<FrameObserver>>,
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

    fn observe(&self, frame: &str, received: f64) {
        let observer = self.observer.lock().ok().and_then(|o| o.clone());
        if let Some(observer) = observer {
            observer(frame, received);
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
    /// The page this tab shows with its prompt box ready, if any.
    pub warm_for: Option<crate::browser::tab_pool::Warm>,
    /// The wait for the send button, armed when the page got ready (see
    /// [`crate::browser::cdp::ArmedWait`]).
    pub armed: Option<crate::browser::cdp::ArmedWait>,
    /// The messages (prompts and replies) taken on the current page, the newest
    /// [`EARLIER_MESSAGES`] of them: updates of them that come later belong to earlier
    /// turns. Cleared when the page is opened again.
    pub earlier_messages: Vec<i64>,
    /// Cancelled when the browser this tab lives in is found dead.
    pub browser_gone: CancellationToken,
    relay: Arc<Relay>,
    pump: JoinHandle<()>,
    /// The main frame's URL, updated on every navigation and in-page move.
    url: watch::Receiver<String>,
    /// The main frame's last document response.
    document: watch::Receiver<Option<DocumentResponse>>,
    /// The page's update socket.
    update_socket: watch::Receiver<SocketState>,
    closed: bool,
}

enum Raw {
    Created(Arc<EventWebSocketCreated>),
    Frame(Arc<EventWebSocketFrameReceived>),
    Closed(Arc<EventWebSocketClosed>),
    Answered(Arc<EventWebSocketHandshakeResponseReceived>),
    /// The tab's renderer crashed.
    Crashed,
    /// The main frame holds a new document, at this URL.
    Document(String),
    /// The main frame moved within its document, to this URL.
    Url(String),
    Request(Arc<EventRequestWillBeSent>),
    Response(Arc<EventResponseReceived>),
    Finished(Arc<EventLoadingFinished>),
    Failed(Arc<EventLoadingFailed>),
}

/// How many API requests of a tab may be in flight before the oldest is forgotten.
const MAX_TRACKED_REQUESTS: usize = 256;
/// How long fetching a response body may take.
const BODY_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many of a page's earlier messages a tab remembers ([`Tab::earlier_messages`]).
pub const EARLIER_MESSAGES: usize = 64;

impl Tab {
    /// Remembers messages taken on the current page (see [`Tab::earlier_messages`]).
    pub fn note_earlier_messages(&mut self, ids: impl IntoIterator<Item = i64>) {
        for id in ids {
            if !self.earlier_messages.contains(&id) {
                self.earlier_messages.push(id);
            }
        }
        let over = self.earlier_messages.len().saturating_sub(EARLIER_MESSAGES);
        self.earlier_messages.drain(..over);
    }

    /// Opens a blank tab and starts its pump. `update_socket_contains` selects the update
    /// socket among the page's WebSockets.
    pub async fn open(browser: &BrowserHandle, id: usize, watch: Watch) -> Result<Tab, String> {
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
        let answered = page
            .event_listener::<EventWebSocketHandshakeResponseReceived>()
            .await
            .map_err(listen)?;
        // `Inspector.targetCrashed` needs the Inspector domain, which chromiumoxide leaves off.
        let crashed = page
            .event_listener::<EventTargetCrashed>()
            .await
            .map_err(listen)?;
        let navigated = page
            .event_listener::<EventFrameNavigated>()
            .await
            .map_err(listen)?;
        let moved = page
            .event_listener::<EventNavigatedWithinDocument>()
            .await
            .map_err(listen)?;
        let requests = page
            .event_listener::<EventRequestWillBeSent>()
            .await
            .map_err(listen)?;
        let responses = page
            .event_listener::<EventResponseReceived>()
            .await
            .map_err(listen)?;
        let finished = page
            .event_listener::<EventLoadingFinished>()
            .await
            .map_err(listen)?;
        let failed = page
            .event_listener::<EventLoadingFailed>()
            .await
            .map_err(listen)?;
        page.execute(InspectorEnableParams::default())
            .await
            .map_err(listen)?;
        // chromiumoxide turns on two domains poed never reads: `Performance` times every task
        // of the page's renderer for metrics, `Log` sends its entries. Off, they cost nothing.
        page.execute(PerformanceDisableParams::default())
            .await
            .map_err(listen)?;
        page.execute(LogDisableParams::default())
            .await
            .map_err(listen)?;
        let merged: BoxStream<'static, Raw> = futures::stream::select_all([
            created.map(Raw::Created).boxed(),
            frames.map(Raw::Frame).boxed(),
            closed.map(Raw::Closed).boxed(),
            answered.map(Raw::Answered).boxed(),
            crashed.map(|_| Raw::Crashed).boxed(),
            navigated
                .filter_map(|e| {
                    // Only the main frame's navigations move the tab.
                    let url = (e.frame.parent_id.is_none()).then(|| e.frame.url.clone());
                    std::future::ready(url.map(Raw::Document))
                })
                .boxed(),
            moved.map(|e| Raw::Url(e.url.clone())).boxed(),
            requests.map(Raw::Request).boxed(),
            responses.map(Raw::Response).boxed(),
            finished.map(Raw::Finished).boxed(),
            failed.map(Raw::Failed).boxed(),
        ])
        .boxed();
        let relay = Arc::new(Relay::default());
        let (url_tx, url) = watch::channel(String::from("about:blank"));
        let (document_tx, document) = watch::channel(None);
        let (update_socket_tx, update_socket) = watch::channel(SocketState::NotYet);
        let main_frame = page.target_id().inner().clone();
        let pump = tokio::spawn(pump(
            id,
            merged,
            relay.clone(),
            watch,
            Outputs {
                url: url_tx,
                document: document_tx,
                update_socket: update_socket_tx,
                main_frame,
            },
            page.clone(),
        ));
        Ok(Tab {
            id,
            page,
            warm_for: None,
            armed: None,
            earlier_messages: Vec::new(),
            browser_gone,
            relay,
            pump,
            url,
            document,
            update_socket,
            closed: false,
        })
    }

    /// The main frame's current URL.
    pub fn url(&self) -> String {
        self.url.borrow().clone()
    }

    /// A receiver that sees every change of the main frame's URL.
    pub fn watch_url(&self) -> watch::Receiver<String> {
        self.url.clone()
    }

    /// The response of the main frame's last document: its final URL and HTTP status
    /// (`None` before the first navigation that went over the network).
    pub fn document_status(&self) -> Option<DocumentResponse> {
        self.document.borrow().clone()
    }

    /// A receiver that sees every document response of the main frame.
    pub fn watch_document(&self) -> watch::Receiver<Option<DocumentResponse>> {
        self.document.clone()
    }

    /// A receiver that sees the state of the page's update socket (a socket whose URL
    /// contains the configured part, its handshake answered, on the current document).
    pub fn watch_update_socket(&self) -> watch::Receiver<SocketState> {
        self.update_socket.clone()
    }

    /// The state of the page's update socket now.
    pub fn update_socket(&self) -> SocketState {
        *self.update_socket.borrow()
    }

    /// Sets the observer that sees every update-socket frame of this tab.
    pub fn set_observer(&self, observer: FrameObserver) {
        if let Ok(mut slot) = self.relay.observer.lock() {
            *slot = Some(observer);
        }
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
    pub async fn close(mut self) {
        self.closed = true;
        let _ = tokio::time::timeout(CLOSE_LIMIT, self.page.clone().close()).await;
    }
}

/// How long closing a tab may take.
const CLOSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

impl Drop for Tab {
    /// A tab dropped on any path is closed in the browser (in the background).
    fn drop(&mut self) {
        self.pump.abort();
        if self.closed || self.browser_gone.is_cancelled() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let page = self.page.clone();
            rt.spawn(async move {
                let _ = tokio::time::timeout(CLOSE_LIMIT, page.close()).await;
            });
        }
    }
}

/// Which of the page's traffic a tab passes up (from the site's configuration).
#[derive(Debug, Clone)]
pub struct Watch {
    /// The update socket is the WebSocket whose URL contains this.
    pub update_socket_contains: String,
    /// API requests whose URL contains this are passed up with their responses.
    pub api_contains: String,
}

/// An API request seen, waiting for its response to finish loading.
struct Pending {
    exchange: HttpExchange,
    seq: u64,
}

fn headers_of(h: &chromiumoxide::cdp::browser_protocol::network::Headers) -> Vec<(String, String)> {
    h.inner()
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn post_data_of(r: &chromiumoxide::cdp::browser_protocol::network::Request) -> Option<String> {
    let entries = r.post_data_entries.as_ref()?;
    let mut bytes = Vec::new();
    for e in entries {
        let b64: &str = e.bytes.as_ref()?.as_ref();
        bytes.extend(base64::engine::general_purpose::STANDARD.decode(b64).ok()?);
    }
    String::from_utf8(bytes).ok()
}

/// Reads the body of a finished API response off the pump (frames keep flowing meanwhile)
/// and hands the exchange to the subscribed request.
fn fetch_body(
    tab: usize,
    page: &Page,
    relay: &Arc<Relay>,
    id: chromiumoxide::cdp::browser_protocol::network::RequestId,
    mut exchange: HttpExchange,
) {
    if !relay.has_subscriber() {
        return;
    }
    let page = page.clone();
    let relay = relay.clone();
    tokio::spawn(async move {
        let got =
            tokio::time::timeout(BODY_LIMIT, page.execute(GetResponseBodyParams::new(id))).await;
        let Ok(Ok(body)) = got else {
            debug!(tab, "could not read a response body");
            return;
        };
        exchange.body = if body.result.base64_encoded {
            match base64::engine::general_purpose::STANDARD.decode(&body.result.body) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(_) => return,
            }
        } else {
            body.result.body.clone()
        };
        trace!(
            tab,
            status = exchange.status,
            bytes = exchange.body.len(),
            "api response"
        );
        relay.send(TabSignal::Http(exchange));
    });
}

/// What the pump publishes about the main frame.
struct Outputs {
    url: watch::Sender<String>,
    document: watch::Sender<Option<DocumentResponse>>,
    /// The state of the current document's update socket.
    update_socket: watch::Sender<SocketState>,
    /// The main frame's id (a page target's main frame has the target's id).
    main_frame: String,
}

async fn pump(
    tab: usize,
    mut events: BoxStream<'static, Raw>,
    relay: Arc<Relay>,
    watch: Watch,
    out: Outputs,
    page: Page,
) {
    let update_socket_contains = watch.update_socket_contains;
    let mut sockets = UpdateSockets::default();
    let publish = |sockets: &UpdateSockets| {
        let state = sockets.state();
        out.update_socket
            .send_if_modified(|now| std::mem::replace(now, state) != state);
    };
    // request id -> an API request of the page still loading
    let mut pending: HashMap<String, Pending> = HashMap::new();
    // request ids whose loading finished before their start was seen
    let mut finished_early: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut seq = 0u64;
    // The main frame's last document request: (request id, URL).
    let mut document_request: Option<(String, String)> = None;
    while let Some(event) = events.next().await {
        match event {
            Raw::Created(c) => {
                let is_update = c.url.contains(&update_socket_contains);
                debug!(tab, url = %crate::redact::url(&c.url), is_update, "websocket created");
                sockets.created(c.request_id.inner(), is_update);
                publish(&sockets);
            }
            Raw::Answered(a) => {
                sockets.answered(a.request_id.inner());
                publish(&sockets);
            }
            Raw::Closed(c) => {
                if sockets.closed(c.request_id.inner()) {
                    debug!(tab, "update socket closed");
                    publish(&sockets);
                    relay.send(TabSignal::SocketClosed);
                }
            }
            Raw::Crashed => {
                tracing::warn!(tab, "the tab's page crashed");
                break;
            }
            Raw::Document(u) => {
                sockets.new_document();
                publish(&sockets);
                out.url.send_replace(u);
            }
            Raw::Url(u) => {
                out.url.send_replace(u);
            }
            Raw::Request(r) => {
                if r.r#type == Some(ResourceType::Document)
                    && r.frame_id.as_ref().map(|f| f.inner()) == Some(&out.main_frame)
                {
                    document_request = Some((r.request_id.inner().clone(), r.request.url.clone()));
                }
                if !r.request.url.contains(&watch.api_contains) {
                    continue;
                }
                seq += 1;
                if pending.len() >= MAX_TRACKED_REQUESTS {
                    if let Some(oldest) = pending
                        .iter()
                        .min_by_key(|(_, p)| p.seq)
                        .map(|(k, _)| k.clone())
                    {
                        pending.remove(&oldest);
                    }
                }
                let exchange = HttpExchange {
                    url: r.request.url.clone(),
                    method: r.request.method.clone(),
                    request_headers: headers_of(&r.request.headers),
                    post_data: post_data_of(&r.request),
                    status: 0,
                    body: String::new(),
                };
                if relay.has_subscriber() {
                    relay.send(TabSignal::Request(ApiRequest {
                        url: exchange.url.clone(),
                        request_headers: exchange.request_headers.clone(),
                        post_data: exchange.post_data.clone(),
                    }));
                }
                if finished_early.remove(r.request_id.inner()) {
                    fetch_body(tab, &page, &relay, r.request_id.clone(), exchange);
                } else {
                    pending.insert(r.request_id.inner().clone(), Pending { exchange, seq });
                }
            }
            Raw::Response(r) => {
                let main_document = r.r#type == ResourceType::Document
                    && r.frame_id.as_ref().map(|f| f.inner()) == Some(&out.main_frame);
                if main_document {
                    let status = u16::try_from(r.response.status).unwrap_or(0);
                    debug!(tab, status, url = %crate::redact::url(&r.response.url), "document response");
                    out.document.send_replace(Some(DocumentResponse {
                        url: r.response.url.clone(),
                        status,
                        failure: None,
                    }));
                }
                if let Some(p) = pending.get_mut(r.request_id.inner()) {
                    p.exchange.status = u16::try_from(r.response.status).unwrap_or(0);
                }
            }
            Raw::Failed(f) => {
                pending.remove(f.request_id.inner());
                let canceled = f.canceled == Some(true);
                match document_request.take() {
                    Some((id, url)) if &id == f.request_id.inner() && !canceled => {
                        debug!(tab, error = %f.error_text, url = %crate::redact::url(&url), "document failed");
                        out.document.send_replace(Some(DocumentResponse {
                            url,
                            status: 0,
                            failure: Some(f.error_text.clone()),
                        }));
                    }
                    other => document_request = other,
                }
            }
            Raw::Finished(f) => {
                let id = f.request_id.inner().clone();
                match pending.remove(&id) {
                    Some(p) => fetch_body(tab, &page, &relay, f.request_id.clone(), p.exchange),
                    // The events of one request come on separate streams: its end may be
                    // seen before its start. Remember it for the start.
                    None => {
                        if finished_early.len() >= MAX_TRACKED_REQUESTS {
                            finished_early.clear();
                        }
                        finished_early.insert(id);
                    }
                }
            }
            Raw::Frame(f) => {
                // A socket whose creation we did not see is parsed anyway: non-updates are
                // ignored by the parser, so this only costs time.
                if !sockets.is_read(f.request_id.inner()) {
                    continue;
                }
                // A frame proves its socket open, should its handshake event lag.
                sockets.answered(f.request_id.inner());
                publish(&sockets);
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
                relay.frames.fetch_add(1, Ordering::Relaxed);
                trace!(tab, bytes = text.len(), "frame");
                relay.observe(&text, *f.timestamp.inner());
                if relay.has_subscriber() {
                    relay.send(TabSignal::Frame(text.into_owned()));
                }
            }
        }
    }
    relay.gone.store(true, Ordering::Relaxed);
    relay.send(TabSignal::Gone);
}
