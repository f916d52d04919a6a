//! The OpenAI-compatible HTTP front door (opt-in: `--http 127.0.0.1:PORT`).
//!
//! `POST /v1/chat/completions` (plain or Server-Sent Events), `GET /v1/models[/{id}]`,
//! `GET /health` and `GET /metrics`. It is a translation layer only: requests go through the
//! same [`Engine::submit`] as the IPC socket, so both share one queue, one tab pool and one
//! model table. A client that disconnects drops its reply stream, which cancels the request
//! (the site's stop button is pressed).
//!
//! - [`guard`]: who may get in (the connecting user, Host, Origin, API key, content type),
//!   before any handler.
//! - [`peer`]: which local user a loopback client runs as, from the kernel's socket tables.
//! - [`chat`]: the completions route, its body cap and parser, the SSE stream.
//! - [`error`]: OpenAI's error shape, statuses, and the retry headers that keep SDKs from
//!   sending a prompt twice.

pub mod chat;
pub mod error;
pub mod guard;
pub mod peer;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::HttpConfig;
use crate::daemon::engine::Engine;
use crate::error::{Error, ErrorKind};
use error::ApiError;
use guard::Guard;

pub use chat::{parse_chat_body, read_body, ChatBody};

struct HttpState {
    engine: Arc<Engine>,
    /// Parent of every request's token: cancelled when the daemon stops running requests.
    requests: CancellationToken,
    /// Cap on a request body in bytes.
    max_body: usize,
    next_id: AtomicU64,
}

/// A bound HTTP listener with the access rules it serves under.
pub struct Bound {
    listener: tokio::net::TcpListener,
    guard: Guard,
}

impl Bound {
    /// The address actually listened on (the port is known after binding port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// Binds the front door of `config` (`None` when `http.listen` is unset). Reads the API key
/// file; an address beyond loopback without a key is refused.
pub async fn bind(config: &HttpConfig) -> Result<Option<Bound>, String> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    config.validate()?;
    let api_key = config.api_key()?;
    if !addr.ip().is_loopback() && api_key.is_none() {
        return Err(format!(
            "--http {addr} is reachable from other machines; set an API key with --api-key-file (or bind 127.0.0.1)"
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    Ok(Some(Bound {
        guard: Guard::new(config, local, api_key),
        listener,
    }))
}

/// Serves HTTP on `bound` until `shutdown`. Bodies over `max_body` bytes are refused.
pub async fn serve(
    bound: Bound,
    engine: Arc<Engine>,
    max_body: usize,
    shutdown: CancellationToken,
    requests: CancellationToken,
) {
    let state = Arc::new(HttpState {
        engine,
        requests,
        max_body,
        next_id: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(bound.guard),
            guard::guard,
        ));
    if let Ok(addr) = bound.listener.local_addr() {
        info!(%addr, "HTTP front door listening");
    }
    // The peer's address reaches the guard, which asks the kernel which user it is.
    let app = app.into_make_service_with_connect_info::<peer::Peer>();
    let result = axum::serve(bound.listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An OpenAI model object, plus where the name comes from (`source`: `table`, `config`,
/// `seen` or `discovered`) and the bot's handle.
fn model_object(m: &crate::protocol::ModelInfo) -> Value {
    let mut o = json!({"id": m.name, "object": "model", "created": 0, "owned_by": "poe",
        "source": m.source.as_str(), "bot": m.bot});
    if let Some(name) = &m.display_name {
        o["display_name"] = json!(name);
    }
    if let Some(at) = m.last_answered {
        o["last_answered"] = json!(at);
    }
    o
}

async fn list_models(State(state): State<Arc<HttpState>>) -> Json<Value> {
    let data: Vec<Value> = state.engine.model_list().iter().map(model_object).collect();
    Json(json!({"object": "list", "data": data}))
}

/// A listed model. A bot's handle that is not listed may still be used in a completion:
/// only its page tells whether the site has it.
async fn get_model(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.engine.known_model(&id) {
        Some(m) => Ok(Json(model_object(&m))),
        None => {
            // The same answer as before for a name that is no handle at all.
            state.engine.models().resolve(Some(&id))?;
            Err(Error::new(
                ErrorKind::UnknownModel,
                format!("model {id:?} is not listed (the table, the config's aliases, the bots seen and the site's list); a bot handle may still work in a completion, see `poectl models --refresh`"),
            )
            .into())
        }
    }
}

async fn health(State(state): State<Arc<HttpState>>) -> Response {
    let s = state.engine.status();
    let browser_ok = s.browser.state == "up";
    let account_ok = s.account.state == crate::protocol::AccountState::SignedIn;
    let not_ready: Vec<&str> = [
        (!browser_ok).then_some("browser"),
        (!account_ok).then_some("account"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let body = json!({
        "ready": browser_ok && account_ok,
        "browser": s.browser.state,
        "account": s.account.state,
        "tabs": s.pool.tabs,
        "not_ready": not_ready,
        "points": s.account.points,
        "out_of_points_until": s.account.out_of_points_until,
        "send_backoff_ms": s.account.send_backoff_ms,
    });
    let status = if browser_ok && account_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.engine.metrics(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    Error::new(
        ErrorKind::NotFound,
        "no such endpoint; poed serves /v1/chat/completions, /v1/models, /health and /metrics",
    )
    .into()
}

async fn method_not_allowed() -> ApiError {
    ApiError::invalid(
        "method not allowed; POST /v1/chat/completions, GET /v1/models, /health and /metrics",
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}
