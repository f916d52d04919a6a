//! The OpenAI-compatible HTTP front door (opt-in: `--http 127.0.0.1:PORT`).
//!
//! `POST /v1/chat/completions` (plain or Server-Sent Events), `GET /v1/models[/{id}]`,
//! `GET /health` and `GET /metrics`. It is a translation layer only: requests go through the
//! same [`Engine::submit`] as the IPC socket, so both share one queue, one tab pool and one
//! model table. A client that disconnects drops its reply stream, which cancels the request
//! (the site's stop button is pressed). Errors use OpenAI's shape
//! `{"error": {"message", "type", "code"}}` with a fitting status.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::daemon::engine::{Engine, ReplyEvent};
use crate::error::{Error, ErrorKind};
use crate::protocol::{ChatMessage, CompleteRequest};
use crate::reply::Chunk;

struct HttpState {
    engine: Arc<Engine>,
    /// Parent of every request's token: cancelled when the daemon stops running requests.
    requests: CancellationToken,
    api_key: Option<String>,
    next_id: AtomicU64,
}

/// Binds the HTTP listener. A non-loopback address needs an API key.
pub async fn bind(
    addr: SocketAddr,
    api_key: Option<&str>,
) -> Result<tokio::net::TcpListener, String> {
    if !addr.ip().is_loopback() && api_key.is_none() {
        return Err(format!(
            "--http {addr} is reachable from other machines; set an API key with --api-key-file (or bind 127.0.0.1)"
        ));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Serves HTTP on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    api_key: Option<String>,
    max_body: usize,
    shutdown: CancellationToken,
    requests: CancellationToken,
) {
    let state = Arc::new(HttpState {
        engine,
        requests,
        api_key,
        next_id: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP front door listening");
    }
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// An error in OpenAI's shape.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: String,
    message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: "bad_request".into(),
            message: message.into(),
        }
    }
}

/// HTTP status and OpenAI error type for each error kind.
fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    use ErrorKind::*;
    match kind {
        BadRequest | RequestTooLarge | NotFound | NoDisplay | PromptTooLong => {
            (StatusCode::BAD_REQUEST, "invalid_request_error")
        }
        UnknownModel => (StatusCode::NOT_FOUND, "invalid_request_error"),
        BotUnavailable | PermissionDenied => (StatusCode::FORBIDDEN, "permission_error"),
        NotLoggedIn => (StatusCode::UNAUTHORIZED, "authentication_error"),
        DailyLimit | RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        Busy | BrowserUnavailable | ShuttingDown => {
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        }
        SiteError | BrowserCrashed => (StatusCode::BAD_GATEWAY, "upstream_error"),
        Stalled | Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        // 499: the client closed the request (nginx's convention); nobody reads it.
        Cancelled => (
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "cancelled",
        ),
        Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, kind) = status_of(e.kind);
        ApiError {
            status,
            kind,
            code: if e.kind == ErrorKind::UnknownModel {
                "model_not_found".into()
            } else {
                e.kind.as_str().into()
            },
            message: e.message,
        }
    }
}

impl ApiError {
    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

fn check_key(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(expected.as_str()) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            code: "invalid_api_key".into(),
            message: "missing or wrong API key; send it as `Authorization: Bearer <key>`".into(),
        })
    }
}

/// `content` is a string, or (newer clients) an array of parts of which text parts count.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: Option<Content>,
}

/// The fields poed uses; every other field is ignored, not rejected.
#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A rough token estimate (about four characters per token); the site reports no usage.
fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

async fn chat_completions(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_key(&state, &headers)?;
    let req: ChatRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))?;
    let messages: Vec<ChatMessage> = req
        .messages
        .into_iter()
        .map(|m| {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            ChatMessage::new(m.role, content)
        })
        .collect();
    // Resolve up front so an unknown model is a plain 404 even when streaming was asked.
    let (model, _) = state.engine.models().resolve(req.model.as_deref())?;
    let prompt_tokens: u64 = messages.iter().map(|m| estimate_tokens(&m.content)).sum();
    let request = CompleteRequest {
        model: Some(model.clone()),
        messages,
        stream: req.stream,
    };
    let id = format!(
        "chatcmpl-poed-{}",
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = unix_now();
    let mut reply = state.engine.submit(request, state.requests.child_token());
    if !req.stream {
        loop {
            match reply.next().await {
                Some(ReplyEvent::Done(c)) => {
                    let completion_tokens = estimate_tokens(&c.text);
                    return Ok(Json(json!({
                        "id": id, "object": "chat.completion", "created": created, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens},
                    }))
                    .into_response());
                }
                Some(ReplyEvent::Failed(e)) => return Err(e.into()),
                Some(_) => {}
                None => return Err(Error::internal("the reply ended without a result").into()),
            }
        }
    }
    let chunk = move |delta: Value, finish: Option<&str>| {
        SseEvent::default().data(
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            .to_string(),
        )
    };
    // The stream owns `reply`: when the client disconnects, axum drops the stream, and with
    // it the reply, which cancels the request.
    let events = async_stream(reply, chunk);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Turns a reply into SSE events: the role first, text deltas, a final chunk with
/// `finish_reason`, or an error event after streaming began, and always `[DONE]` last.
fn async_stream(
    reply: crate::daemon::engine::ReplyStream,
    chunk: impl Fn(Value, Option<&str>) -> SseEvent + Send + 'static,
) -> impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>> + Send {
    enum Phase {
        Start,
        Streaming,
        Finished,
        Over,
    }
    futures::stream::unfold(
        (reply, Phase::Start, chunk),
        |(mut reply, phase, chunk)| async move {
            match phase {
                Phase::Start => {
                    let first = chunk(json!({"role": "assistant", "content": ""}), None);
                    Some((Ok(first), (reply, Phase::Streaming, chunk)))
                }
                Phase::Streaming => loop {
                    match reply.next().await {
                        Some(ReplyEvent::Text(Chunk::Append(text))) => {
                            let e = chunk(json!({"content": text}), None);
                            return Some((Ok(e), (reply, Phase::Streaming, chunk)));
                        }
                        // OpenAI's stream cannot take back text: send the rewritten text in full
                        // after a newline (documented); non-streaming answers are always exact.
                        Some(ReplyEvent::Text(Chunk::Replace(text))) => {
                            let e = chunk(json!({"content": format!("\n{text}")}), None);
                            return Some((Ok(e), (reply, Phase::Streaming, chunk)));
                        }
                        Some(ReplyEvent::Done(_)) => {
                            let e = chunk(json!({}), Some("stop"));
                            return Some((Ok(e), (reply, Phase::Finished, chunk)));
                        }
                        Some(ReplyEvent::Failed(err)) => {
                            let e =
                                SseEvent::default().data(ApiError::from(err).body().to_string());
                            return Some((Ok(e), (reply, Phase::Finished, chunk)));
                        }
                        Some(_) => continue,
                        None => {
                            let err = Error::internal("the reply ended without a result");
                            let e =
                                SseEvent::default().data(ApiError::from(err).body().to_string());
                            return Some((Ok(e), (reply, Phase::Finished, chunk)));
                        }
                    }
                },
                Phase::Finished => Some((
                    Ok(SseEvent::default().data("[DONE]")),
                    (reply, Phase::Over, chunk),
                )),
                Phase::Over => None,
            }
        },
    )
}

fn model_object(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "poe"})
}

async fn list_models(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_key(&state, &headers)?;
    let data: Vec<Value> = state
        .engine
        .models()
        .list()
        .iter()
        .map(|m| model_object(&m.name))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn get_model(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_key(&state, &headers)?;
    let (name, _) = state.engine.models().resolve(Some(&id))?;
    Ok(Json(model_object(&name)))
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
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: "not_found".into(),
        message:
            "no such endpoint; poed serves /v1/chat/completions, /v1/models, /health and /metrics"
                .into(),
    }
}
