//! The reference client of the IPC protocol: `poectl` is built on it, and any Rust program
//! can use it the same way.
//!
//! One connection carries any number of concurrent requests: a reader task routes each event
//! line to its request's stream by `id`. Unknown fields and unknown event types are ignored,
//! as the compatibility policy asks of readers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), poed::client::ClientError> {
//! use poed::client::Client;
//! use poed::protocol::{ChatMessage, CompleteRequest, Event};
//! let client = Client::connect(&poed::config::default_socket_path()).await?;
//! let mut reply = client
//!     .complete(CompleteRequest {
//!         model: Some("gpt-4".into()),
//!         messages: vec![ChatMessage::new("user", "Hello")],
//!         ..Default::default()
//!     })
//!     .await?;
//! while let Some(event) = reply.next().await {
//!     if let Event::Delta { text } = event {
//!         print!("{text}");
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::GenericFilePath;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind};
use crate::protocol::{CompleteRequest, Event, EventLine, Request, RequestId, RequestLine, Status};

/// Why the client could not talk to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("poed is not running (no daemon answers on {}); start it with `systemctl --user start poed` or `poed &`", socket.display())]
    NotRunning { socket: PathBuf },
    #[error("the connection to poed failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("poed answered something unexpected: {0}")]
    Protocol(String),
    #[error("poed closed the connection before the request finished")]
    Closed,
    /// The daemon answered the request with an error.
    #[error("{0}")]
    Request(Error),
}

type Routes = Arc<Mutex<HashMap<RequestId, mpsc::UnboundedSender<Event>>>>;

/// A connection to poed.
pub struct Client {
    /// Shared with the reader task: `&Stream` both reads and writes.
    stream: Arc<Stream>,
    /// Serialises writers so request lines never interleave.
    write_lock: tokio::sync::Mutex<()>,
    /// Routes incoming events; aborted on drop, which closes the connection.
    reader: tokio::task::JoinHandle<()>,
    routes: Routes,
    next_id: AtomicI64,
    protocol: u32,
    server_version: String,
}

/// The events of one request, ending with its final event.
pub struct Reply {
    pub id: RequestId,
    rx: mpsc::UnboundedReceiver<Event>,
    done: bool,
}

impl Reply {
    /// The next event; `None` after the final one (or if the connection closed, in which
    /// case the last event returned was not final).
    pub async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let event = self.rx.recv().await?;
        self.done = event.is_final();
        Some(event)
    }

    /// Waits for the final event, applying deltas and replacements; returns the final event
    /// (`done`) or the request's error.
    pub async fn finish(mut self) -> Result<Event, ClientError> {
        while let Some(event) = self.next().await {
            match event {
                e @ Event::Error { .. } => return Err(request_error(e)),
                e if e.is_final() => return Ok(e),
                _ => {}
            }
        }
        Err(ClientError::Closed)
    }
}

/// The request error an `error` event carries.
fn request_error(event: Event) -> ClientError {
    match event {
        Event::Error {
            kind,
            message,
            state,
            sent,
            reset_at,
        } => ClientError::Request(Error {
            kind,
            message,
            state,
            sent,
            reset_at,
        }),
        other => ClientError::Protocol(format!("expected an error event, got {other:?}")),
    }
}

fn is_not_running(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

impl Client {
    /// Connects and reads the daemon's hello.
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        let name = socket
            .to_fs_name::<GenericFilePath>()
            .map_err(|e| ClientError::Protocol(format!("bad socket path: {e}")))?;
        let stream = Stream::connect(name).await.map_err(|e| {
            if is_not_running(&e) {
                ClientError::NotRunning {
                    socket: socket.to_owned(),
                }
            } else {
                ClientError::Io(e)
            }
        })?;
        let stream = Arc::new(stream);
        let reader_stream = stream.clone();
        let mut lines = BufReader::new(OwnedReader(reader_stream)).lines();
        let first = lines.next_line().await?.ok_or(ClientError::Closed)?;
        let (protocol, server_version) = match serde_json::from_str::<EventLine>(&first) {
            Ok(EventLine {
                event: Event::Hello {
                    protocol, version, ..
                },
                ..
            }) => (protocol, version),
            // The daemon refuses this connection (e.g. `permission_denied`): its error,
            // not a protocol error.
            Ok(EventLine {
                event: e @ Event::Error { .. },
                ..
            }) => return Err(request_error(e)),
            _ => {
                return Err(ClientError::Protocol(format!(
                    "expected a hello line, got {first:?}"
                )))
            }
        };
        let routes: Routes = Arc::default();
        let reader_routes = routes.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(text)) = lines.next_line().await {
                // Unknown event types (a newer daemon) do not parse and are skipped.
                let Ok(line) = serde_json::from_str::<EventLine>(&text) else {
                    continue;
                };
                let Some(id) = line.id else { continue };
                let mut routes = reader_routes.lock().unwrap_or_else(|p| p.into_inner());
                let final_event = line.event.is_final();
                if let Some(tx) = routes.get(&id) {
                    let _ = tx.send(line.event);
                }
                if final_event {
                    routes.remove(&id);
                }
            }
            // Connection closed: end every open reply.
            reader_routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        });
        Ok(Client {
            stream,
            write_lock: tokio::sync::Mutex::new(()),
            reader,
            routes,
            next_id: AtomicI64::new(1),
            protocol,
            server_version,
        })
    }

    /// The daemon's protocol and program versions, from its hello.
    pub fn server(&self) -> (u32, &str) {
        (self.protocol, &self.server_version)
    }

    /// Sends any request; its events arrive on the returned [`Reply`].
    pub async fn send(&self, request: Request) -> Result<Reply, ClientError> {
        let id = RequestId::Num(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), tx);
        let mut text = serde_json::to_string(&RequestLine {
            id: id.clone(),
            request,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        text.push('\n');
        let _guard = self.write_lock.lock().await;
        (&*self.stream).write_all(text.as_bytes()).await?;
        Ok(Reply {
            id,
            rx,
            done: false,
        })
    }

    pub async fn complete(&self, request: CompleteRequest) -> Result<Reply, ClientError> {
        self.send(Request::Complete(request)).await
    }

    /// Asks the daemon to cancel request `target` of this connection.
    pub async fn cancel(&self, target: &RequestId) -> Result<(), ClientError> {
        self.send(Request::Cancel {
            target: target.clone(),
        })
        .await?
        .finish()
        .await
        .map(|_| ())
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        match self.send(Request::Status).await?.finish().await? {
            Event::Status(s) => Ok(*s),
            other => Err(ClientError::Protocol(format!(
                "expected status, got {other:?}"
            ))),
        }
    }

    /// Stores session cookies in the daemon's browser profile; returns how many were stored
    /// and the account state after (`signed_in` when the site accepted them).
    pub async fn import_cookies(
        &self,
        cookies: Vec<crate::cookies::Cookie>,
    ) -> Result<(usize, crate::protocol::AccountState), ClientError> {
        match self
            .send(Request::ImportCookies { cookies })
            .await?
            .finish()
            .await?
        {
            Event::CookiesImported { count, account } => Ok((count, account)),
            other => Err(ClientError::Protocol(format!(
                "expected cookies_imported, got {other:?}"
            ))),
        }
    }

    /// Starts `login`: the events are `login_started` (the sign-in URL), then `logged_in`.
    pub async fn login(&self, timeout_secs: Option<f64>) -> Result<Reply, ClientError> {
        self.send(Request::Login { timeout_secs }).await
    }

    /// The models the daemon knows (answer: [`Event::Models`]).
    pub async fn models(&self) -> Result<Event, ClientError> {
        self.send(Request::Models { refresh: false })
            .await?
            .finish()
            .await
    }

    /// Has the daemon read the site's bot list first (a page load: seconds), then answers
    /// like [`Client::models`].
    pub async fn refresh_models(&self) -> Result<Event, ClientError> {
        self.send(Request::Models { refresh: true })
            .await?
            .finish()
            .await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The reader task holds the other reference to the stream: ending it closes the
        // connection, which tells the daemon to cancel this client's running requests.
        self.reader.abort();
    }
}

impl ClientError {
    /// The stable kind of a request error, if this is one.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Request(e) => Some(e.kind),
            _ => None,
        }
    }
}

/// Reads from a shared stream (`&Stream` implements `AsyncRead`).
struct OwnedReader(Arc<Stream>);

impl tokio::io::AsyncRead for OwnedReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut stream: &Stream = &self.0;
        std::pin::Pin::new(&mut stream).poll_read(cx, buf)
    }
}
