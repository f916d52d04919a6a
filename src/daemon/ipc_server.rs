//! The IPC server: the accept loop and one task per connection.
//!
//! A connection gets the hello line first, then reads request lines (capped; an oversized or
//! invalid line gets an error reply and the connection stays usable). Each `complete` runs
//! in its own task, so one connection can carry several requests at once; every event names
//! its request's `id`. All of a connection's output goes through one writer task with a
//! bounded queue. Deltas never block the engine: when a client reads slowly the engine
//! merges them (see [`Engine::submit`]); a client that stops reading entirely (one write
//! blocked for [`WRITE_LIMIT`]) is dropped, which cancels its requests. While requests run,
//! a `keepalive` line goes out every [`KEEPALIVE`], so a client that went away is noticed
//! within about a second even when its request writes nothing (`stream: false`, queued,
//! sign-in): its requests are cancelled (before the send: the prompt never reaches the
//! site; after: the site's stop button is clicked).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, trace, warn};

use crate::daemon::engine::{Engine, ReplyEvent, ReplyStream};
use crate::error::{Error, ErrorKind};
use crate::protocol::{
    parse_request, read_line_capped, Event, EventLine, LineRead, Request, RequestId,
    PROTOCOL_VERSION,
};

/// Lines queued for one connection's writer before deltas start to merge.
const WRITE_QUEUE: usize = 64;
/// How long one write may block on a client that does not read before it is dropped.
pub const WRITE_LIMIT: Duration = Duration::from_secs(10);
/// How long an event may wait for room in a connection's queue.
const QUEUE_LIMIT: Duration = Duration::from_secs(30);
/// How often a connection with running requests is probed with a `keepalive` line.
pub const KEEPALIVE: Duration = Duration::from_secs(1);

/// Accepts connections until `shutdown`; connection tasks are tracked by `tasks`.
/// `requests` is cancelled by the daemon when running requests must end.
pub async fn serve(
    listener: Listener,
    engine: Arc<Engine>,
    max_line: usize,
    shutdown: CancellationToken,
    requests: CancellationToken,
    tasks: TaskTracker,
) {
    let mut next_conn = 0u64;
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => break,
            conn = listener.accept() => conn,
        };
        match conn {
            Ok(stream) => {
                // Another user's process gets `permission_denied` before any request is read.
                let Some(stream) = crate::daemon::socket::admit(stream) else {
                    continue;
                };
                next_conn += 1;
                let conn = Connection {
                    id: next_conn,
                    engine: engine.clone(),
                    max_line,
                    cancel: requests.child_token(),
                    stop_reading: shutdown.clone(),
                    tasks: tasks.clone(),
                };
                tasks.spawn(conn.run(stream));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                // Typically EMFILE: give the system a moment instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    info!("stopped accepting connections");
}

struct Connection {
    id: u64,
    engine: Arc<Engine>,
    max_line: usize,
    /// Cancelled when the client goes away or the daemon ends running requests.
    cancel: CancellationToken,
    stop_reading: CancellationToken,
    tasks: TaskTracker,
}

type InFlight = Arc<Mutex<HashMap<RequestId, CancellationToken>>>;

fn line(id: Option<RequestId>, event: Event) -> String {
    EventLine { id, event }.to_line()
}

impl Connection {
    async fn run(self, stream: Stream) {
        let conn = self.id;
        debug!(conn, "client connected");
        // `&Stream` reads and writes: one Arc serves the reader here and the writer task.
        let stream = Arc::new(stream);
        let (tx, rx) = mpsc::channel::<String>(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(stream.clone(), rx, self.cancel.clone()));
        let hello = Event::Hello {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
            server: "poed".into(),
        };
        if tx.send(line(None, hello)).await.is_err() {
            return;
        }
        let inflight: InFlight = Arc::default();
        let reading = CancellationToken::new();
        tokio::spawn(keepalive(
            tx.clone(),
            inflight.clone(),
            self.cancel.clone(),
            reading.clone(),
        ));
        self.read_loop(&stream, &tx, &inflight).await;
        // Requests may still run after the client stopped sending: the keepalive goes on
        // probing until they are done, then lets the writer end.
        reading.cancel();
        drop(tx);
        // The writer ends once every request task has dropped its sender.
        let _ = writer.await;
        debug!(conn, "client gone");
    }

    async fn read_loop(&self, stream: &Stream, tx: &mpsc::Sender<String>, inflight: &InFlight) {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            let read = tokio::select! {
                _ = self.stop_reading.cancelled() => return,
                _ = self.cancel.cancelled() => return,
                r = read_line_capped(&mut reader, &mut buf, self.max_line) => r,
            };
            match read {
                Ok(LineRead::Line) => {
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    trace!(conn = self.id, bytes = buf.len(), "line read");
                    self.handle_line(&buf, tx, inflight).await;
                }
                Ok(LineRead::TooLong) => {
                    let e = Error::new(
                        ErrorKind::RequestTooLarge,
                        format!(
                            "the request line is longer than {} bytes and was skipped; send shorter prompts or raise max_line_bytes",
                            self.max_line
                        ),
                    );
                    let _ = tx.send(line(None, Event::error(&e))).await;
                }
                // EOF: the client sent all it will send (or half-closed); running requests
                // carry on, and a client that is really gone is noticed on the next write.
                Ok(LineRead::Eof) => return,
                Err(e) => {
                    debug!(conn = self.id, error = %e, "read failed");
                    self.cancel.cancel();
                    return;
                }
            }
        }
    }

    async fn handle_line(&self, raw: &[u8], tx: &mpsc::Sender<String>, inflight: &InFlight) {
        let req = match parse_request(raw) {
            Ok(r) => r,
            Err(bad) => {
                let _ = tx.send(line(bad.id, Event::error(&bad.error))).await;
                return;
            }
        };
        let id = req.id;
        match req.request {
            Request::Models { refresh: false } => {
                let _ = tx.send(line(Some(id), self.engine.models_event())).await;
            }
            Request::Models { refresh: true } => {
                // A page load in a tab of the pool: runs like a sign-in, cancellable by id.
                self.spawn_session(id, tx, inflight, |engine, token| async move {
                    match engine.refresh_bots(&token).await {
                        Ok(event) => event,
                        Err(e) => Event::error(&e),
                    }
                })
                .await;
            }
            Request::Status => {
                let status = Event::Status(Box::new(self.engine.status()));
                let _ = tx.send(line(Some(id), status)).await;
            }
            Request::Cancel { target } => {
                let token = inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&target)
                    .cloned();
                let event = match token {
                    Some(t) => {
                        t.cancel();
                        Event::Ok
                    }
                    None => Event::error(&Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "no request with id {target} is running or queued on this connection"
                        ),
                    )),
                };
                let _ = tx.send(line(Some(id), event)).await;
            }
            Request::ImportCookies { cookies } => {
                self.spawn_session(id, tx, inflight, |engine, token| async move {
                    match engine.import_cookies(cookies, &token).await {
                        Ok((count, account)) => Event::CookiesImported { count, account },
                        Err(e) => Event::error(&e),
                    }
                })
                .await;
            }
            Request::Login { timeout_secs } => {
                let started_tx = tx.clone();
                let started_id = id.clone();
                self.spawn_session(id, tx, inflight, move |engine, token| async move {
                    let secs = timeout_secs
                        .filter(|s| s.is_finite())
                        .unwrap_or(600.0)
                        .clamp(1.0, 86_400.0);
                    let limit = Duration::from_secs_f64(secs);
                    let started = move |url| {
                        let _ = started_tx
                            .try_send(line(Some(started_id), Event::LoginStarted { url }));
                    };
                    match engine.login(limit, &token, started).await {
                        Ok(account) => Event::LoggedIn { account },
                        Err(e) => Event::error(&e),
                    }
                })
                .await;
            }
            Request::Complete(params) => {
                let Some(token) = self.register(&id, tx, inflight).await else {
                    return;
                };
                let stream_text = params.stream;
                // Submitted here, in the read loop, so requests queue in arrival order.
                let reply = self.engine.submit(params, token);
                let task = RequestTask {
                    id,
                    tx: tx.clone(),
                    conn_cancel: self.cancel.clone(),
                    inflight: inflight.clone(),
                };
                self.tasks.spawn(task.run(reply, stream_text));
            }
        }
    }
}

impl Connection {
    /// Runs a sign-in, cookie import or bot-list refresh of this connection in a task of its
    /// own, registered under `id` (so `cancel` and a disconnect reach it).
    async fn spawn_session<F, Fut>(
        &self,
        id: RequestId,
        tx: &mpsc::Sender<String>,
        inflight: &InFlight,
        work: F,
    ) where
        F: FnOnce(Arc<Engine>, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = Event> + Send + 'static,
    {
        let Some(token) = self.register(&id, tx, inflight).await else {
            return;
        };
        let task = SessionTask {
            id,
            tx: tx.clone(),
            inflight: inflight.clone(),
        };
        self.tasks.spawn(task.run(work(self.engine.clone(), token)));
    }

    /// Registers a running request of this connection under `id` (for `cancel`), or
    /// answers that the id is taken.
    async fn register(
        &self,
        id: &RequestId,
        tx: &mpsc::Sender<String>,
        inflight: &InFlight,
    ) -> Option<CancellationToken> {
        let token = self.cancel.child_token();
        let duplicate = {
            let mut map = inflight.lock().unwrap_or_else(|p| p.into_inner());
            let duplicate = map.contains_key(id);
            if !duplicate {
                map.insert(id.clone(), token.clone());
            }
            duplicate
        };
        if duplicate {
            let e = Error::new(
                ErrorKind::BadRequest,
                format!("id {id} is already in use by a running request on this connection; use a new id"),
            );
            let _ = tx.send(line(Some(id.clone()), Event::error(&e))).await;
            return None;
        }
        Some(token)
    }
}

/// Writes a `keepalive` line every [`KEEPALIVE`] while the connection has requests running,
/// so that a write fails soon after the client went away. Ends with the connection: once
/// the reading side is done (`reading` cancelled) and no request runs any more.
async fn keepalive(
    tx: mpsc::Sender<String>,
    inflight: InFlight,
    gone: CancellationToken,
    reading: CancellationToken,
) {
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = gone.cancelled() => return,
        }
        if inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            if reading.is_cancelled() {
                return;
            }
            continue;
        }
        // A full queue means the writer is already waiting on the client: no need to probe.
        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(line(None, Event::Keepalive))
        {
            return;
        }
    }
}

async fn write_loop(stream: Arc<Stream>, mut rx: mpsc::Receiver<String>, gone: CancellationToken) {
    let mut send = &*stream;
    while let Some(text) = rx.recv().await {
        let failed = match tokio::time::timeout(WRITE_LIMIT, send.write_all(text.as_bytes())).await
        {
            Ok(Ok(())) => {
                trace!(bytes = text.len(), "line written");
                None
            }
            Ok(Err(e)) => Some(format!("client gone ({e})")),
            Err(_) => Some(format!("client did not read for {WRITE_LIMIT:?}")),
        };
        if let Some(why) = failed {
            debug!(reason = %why, "dropping the connection; cancelling its requests");
            gone.cancel();
            // Keep draining so senders never block on a dead connection.
            while rx.recv().await.is_some() {}
            return;
        }
    }
    let _ = send.shutdown().await;
}

/// A sign-in, cookie import or bot list refresh of a connection: runs `work`, answers with
/// its event (or `internal` if it panicked), and frees its id.
struct SessionTask {
    id: RequestId,
    tx: mpsc::Sender<String>,
    inflight: InFlight,
}

impl SessionTask {
    async fn run(self, work: impl std::future::Future<Output = Event> + Send) {
        use futures::FutureExt;
        let event = match std::panic::AssertUnwindSafe(work).catch_unwind().await {
            Ok(event) => event,
            Err(_) => {
                tracing::error!(id = %self.id, "a session request failed with a bug; poed goes on");
                Event::error(&Error::internal(
                    "poed hit a bug while serving this request; it keeps running: retry, and please report the bug",
                ))
            }
        };
        let _ = tokio::time::timeout(
            QUEUE_LIMIT,
            self.tx.send(line(Some(self.id.clone()), event)),
        )
        .await;
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// One `complete` request of a connection: relays the engine's events as lines.
struct RequestTask {
    id: RequestId,
    tx: mpsc::Sender<String>,
    conn_cancel: CancellationToken,
    inflight: InFlight,
}

impl RequestTask {
    async fn run(self, mut reply: ReplyStream, stream_text: bool) {
        while let Some(event) = reply.next().await {
            let event = match event {
                ReplyEvent::Queued { position } => Event::Queued { position },
                ReplyEvent::Started {
                    model,
                    bot,
                    conversation,
                } => Event::Started {
                    model,
                    bot,
                    conversation,
                },
                ReplyEvent::Sent => Event::Sent,
                ReplyEvent::Text(chunk) if stream_text => Event::from(chunk),
                ReplyEvent::Text(_) => continue,
                ReplyEvent::Done(c) => Event::Done {
                    text: c.text,
                    model: c.model,
                    bot: c.bot,
                    timings: c.timings,
                    conversation: c.conversation,
                    continued: c.continued,
                    reason: c.reason,
                },
                ReplyEvent::Failed(e) => Event::error(&e),
            };
            // Waiting here is what lets the engine merge deltas for a slow reader.
            let send = self.tx.send(line(Some(self.id.clone()), event));
            if !matches!(tokio::time::timeout(QUEUE_LIMIT, send).await, Ok(Ok(()))) {
                warn!(id = %self.id, "client does not read its replies; dropping the connection");
                self.conn_cancel.cancel();
                break;
            }
        }
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}
