//! `POST /v1/chat/completions`: the body read under a size cap, parsed into the engine's
//! request, and the reply sent back whole or as Server-Sent Events.
//!
//! [`read_body`] and [`parse_chat_body`] are public so the hostile-input tests
//! (`tests/prop_parsers.rs`) drive the same code the server runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{unix_now, HttpState};
use crate::daemon::engine::{ReplyEvent, ReplyStream};
use crate::error::{Error, ErrorKind};
use crate::protocol::{ChatMessage, CompleteRequest};
use crate::reply::Chunk;

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

/// A chat completion request as poed uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatBody {
    pub model: Option<String>,
    /// Text parts of array contents are joined with newlines; other parts are dropped.
    pub messages: Vec<ChatMessage>,
    pub stream: bool,
}

/// Reads a request body, never holding more than `max` bytes: a longer body is
/// `request_too_large` as soon as it passes the cap, whatever `Content-Length` claimed.
pub async fn read_body(body: Body, max: usize) -> Result<Bytes, Error> {
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Error::new(
                ErrorKind::BadRequest,
                format!("the request body could not be read ({e}); send it again"),
            )
        })?;
        if buf.len() + chunk.len() > max {
            return Err(too_large(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

fn too_large(max: usize) -> Error {
    Error::new(
        ErrorKind::RequestTooLarge,
        format!("the request body is over {max} bytes; send a shorter conversation, or raise max_line_bytes in the config"),
    )
}

/// Parses a chat completion body. Every failure is `bad_request` with a message naming
/// what was wrong: not UTF-8, not JSON (nesting deeper than 128 levels included), or a
/// missing or mistyped `messages`, `model` or `stream`.
pub fn parse_chat_body(body: &[u8]) -> Result<ChatBody, Error> {
    let bad = |m: String| Error::new(ErrorKind::BadRequest, m);
    if let Err(e) = std::str::from_utf8(body) {
        return Err(bad(format!(
            "the request body is not UTF-8 text (invalid byte at offset {}); send JSON encoded as UTF-8",
            e.valid_up_to()
        )));
    }
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| bad(format!("invalid request body: {e}; send OpenAI's chat format {{\"model\", \"messages\": [{{\"role\", \"content\"}}], \"stream\"}}")))?;
    let messages = req
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
    Ok(ChatBody {
        model: req.model,
        messages,
        stream: req.stream,
    })
}

/// What poed adds to an answer (as `poed`): the conversation the request went on with,
/// whether it was sent as only the new message in the site chat of the earlier turns, and
/// why not when it followed an earlier turn.
fn conversation_of(c: &crate::daemon::engine::Completion) -> Value {
    json!({"conversation": c.conversation, "continued": c.continued, "reason": c.reason})
}

/// The header that names a conversation, as `complete.conversation` does on the socket.
const CONVERSATION_HEADER: &str = "x-poed-conversation";

/// The conversation the client names (its number from an earlier answer's
/// `poed.conversation`), if any. Without it, a request goes on with the conversation its
/// messages match, as before.
fn named_conversation(headers: &axum::http::HeaderMap) -> Result<Option<i64>, Error> {
    let Some(value) = headers.get(CONVERSATION_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|n| *n > 0)
        .map(Some)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::BadRequest,
                "X-Poed-Conversation must be a conversation's number, as an earlier answer's poed.conversation gave it; leave the header out to start or match one by its messages",
            )
        })
}

/// A rough token estimate (about four characters per token); the site reports no usage.
fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

pub(super) async fn chat_completions(
    State(state): State<Arc<HttpState>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body as u64) {
        // Refused before a byte of it is read.
        return Err(too_large(state.max_body).into());
    }
    let conversation = named_conversation(&headers)?;
    let bytes = read_body(body, state.max_body).await?;
    let req = parse_chat_body(&bytes)?;
    // Resolve up front so an unknown model is a plain 404 even when streaming was asked.
    let (model, _) = state.engine.models().resolve(req.model.as_deref())?;
    let prompt_tokens: u64 = req
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .sum();
    let request = CompleteRequest {
        conversation,
        model: Some(model.clone()),
        messages: req.messages,
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
                        "poed": conversation_of(&c),
                    }))
                    .into_response());
                }
                Some(ReplyEvent::Failed(e)) => return Err(e.into()),
                Some(_) => {}
                None => return Err(Error::internal("the reply ended without a result").into()),
            }
        }
    }
    let chunk = move |delta: Value, finish: Option<&str>, extra: Option<Value>| {
        let mut body = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if let (Some(extra), Some(map)) = (extra, body.as_object_mut()) {
            map.insert("poed".into(), extra);
        }
        SseEvent::default().data(body.to_string())
    };
    // The answer's head waits until the prompt is sent, or the request waits in the queue:
    // what fails before the send (a bot the site does not have, a signed-out profile, an
    // unknown conversation) gets its own HTTP status instead of an error inside a 200 stream.
    let early = loop {
        match reply.next().await {
            Some(ReplyEvent::Sent) | Some(ReplyEvent::Queued { .. }) => break None,
            Some(ReplyEvent::Failed(e)) => return Err(e.into()),
            // (Not seen: every reply comes after its send. Its text is not lost all the same.)
            Some(ReplyEvent::Done(c)) => {
                break Some([
                    ReplyEvent::Text(Chunk::Append(c.text.clone())),
                    ReplyEvent::Done(c),
                ])
            }
            Some(_) => {}
            None => return Err(Error::internal("the reply ended without a result").into()),
        }
    };
    // The stream owns `reply`: when the client disconnects, axum drops the stream, and with
    // it the reply, which cancels the request.
    let events = sse_events(early, reply, chunk);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Turns a reply into SSE events: the role first, text deltas, a final chunk with
/// `finish_reason`, or an error event after streaming began, and always `[DONE]` last.
fn sse_events(
    early: Option<[ReplyEvent; 2]>,
    reply: ReplyStream,
    chunk: impl Fn(Value, Option<&str>, Option<Value>) -> SseEvent + Send + 'static,
) -> impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>> + Send {
    enum Phase {
        Start,
        Streaming,
        Finished,
        Over,
    }
    let early: std::collections::VecDeque<ReplyEvent> = early.into_iter().flatten().collect();
    futures::stream::unfold(
        (reply, Phase::Start, chunk, early),
        |(mut reply, phase, chunk, mut early)| async move {
            match phase {
                Phase::Start => {
                    let first = chunk(json!({"role": "assistant", "content": ""}), None, None);
                    Some((Ok(first), (reply, Phase::Streaming, chunk, early)))
                }
                Phase::Streaming => loop {
                    let next = match early.pop_front() {
                        Some(e) => Some(e),
                        None => reply.next().await,
                    };
                    match next {
                        Some(ReplyEvent::Text(Chunk::Append(text))) => {
                            let e = chunk(json!({"content": text}), None, None);
                            return Some((Ok(e), (reply, Phase::Streaming, chunk, early)));
                        }
                        // OpenAI's stream cannot take back text: send the rewritten text in full
                        // after a newline (documented); non-streaming answers are always exact.
                        Some(ReplyEvent::Text(Chunk::Replace(text))) => {
                            let e = chunk(json!({"content": format!("\n{text}")}), None, None);
                            return Some((Ok(e), (reply, Phase::Streaming, chunk, early)));
                        }
                        Some(ReplyEvent::Done(c)) => {
                            let e = chunk(json!({}), Some("stop"), Some(conversation_of(&c)));
                            return Some((Ok(e), (reply, Phase::Finished, chunk, early)));
                        }
                        Some(ReplyEvent::Failed(err)) => {
                            let e =
                                SseEvent::default().data(ApiError::from(err).body().to_string());
                            return Some((Ok(e), (reply, Phase::Finished, chunk, early)));
                        }
                        Some(_) => continue,
                        None => {
                            let err = Error::internal("the reply ended without a result");
                            let e =
                                SseEvent::default().data(ApiError::from(err).body().to_string());
                            return Some((Ok(e), (reply, Phase::Finished, chunk, early)));
                        }
                    }
                },
                Phase::Finished => Some((
                    Ok(SseEvent::default().data("[DONE]")),
                    (reply, Phase::Over, chunk, early),
                )),
                Phase::Over => None,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_join_and_unknown_fields_are_ignored() {
        let b = parse_chat_body(
            br#"{"model":"gpt-4","temperature":0.2,"messages":[
                {"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url"},{"type":"text","text":"b"}]},
                {"role":"assistant","content":null}]}"#,
        )
        .expect("valid");
        assert_eq!(b.model.as_deref(), Some("gpt-4"));
        assert!(!b.stream);
        assert_eq!(b.messages[1].content, "a\nb");
        assert_eq!(b.messages[2].content, "");
    }

    #[test]
    fn hostile_bodies_are_bad_requests() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for body in [
            &b"\xff\xfe{}"[..],
            b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}",
            deep.as_bytes(),
            b"{\"messages\":5}",
            b"{\"messages\":[],\"stream\":\"yes\"}",
            b"",
        ] {
            let e = parse_chat_body(body).expect_err("refused");
            assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
        }
        let e = parse_chat_body(b"\xff").expect_err("not utf-8");
        assert!(e.message.contains("UTF-8"), "{e}");
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_refused_without_being_held() {
        let ok = read_body(Body::from(vec![b'x'; 100]), 100)
            .await
            .expect("at the cap");
        assert_eq!(ok.len(), 100);
        let chunks = futures::stream::iter(
            (0..1000).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1000]))),
        );
        let e = read_body(Body::from_stream(chunks), 4096)
            .await
            .expect_err("over");
        assert_eq!(e.kind, ErrorKind::RequestTooLarge);
    }
}
