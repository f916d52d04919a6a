//! The IPC wire protocol: newline-delimited JSON, one object per line each way.
//!
//! Layers, bottom up: [`read_line_capped`] splits the byte stream into lines with a size cap
//! (an oversized line is skipped whole, so the connection stays usable); [`parse_request`]
//! turns a line into a [`Request`] with its client-chosen [`RequestId`]; the daemon answers
//! with [`EventLine`]s. `docs/PROTOCOL.md` is the human description and the compatibility
//! policy: fields are added, never renamed or removed; readers ignore unknown fields.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::error::{Error, ErrorKind};

/// Bumped only for incompatible changes (which the policy avoids).
pub const PROTOCOL_VERSION: u32 = 1;

/// Default cap on one request line, newline included.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// The id a client gives a request; every event of that request carries it back verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Num(i64),
    Str(String),
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestId::Num(n) => write!(f, "{n}"),
            RequestId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<i64> for RequestId {
    fn from(n: i64) -> Self {
        RequestId::Num(n)
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        RequestId::Str(s.to_owned())
    }
}

/// One chat message in the OpenAI `{role, content}` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Parameters of a `complete` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteRequest {
    /// Public model name (see `models`); the daemon's default model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Send `delta` events while the reply streams (default); `false` sends only `done`.
    #[serde(default = "default_true")]
    pub stream: bool,
    /// The conversation this request goes on with (the id `started` and `done` gave):
    /// `messages` may then hold only the new message(s). Without it, a request whose
    /// messages are a conversation poed remembers plus one new user message goes on with
    /// that conversation all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<i64>,
}

impl Default for CompleteRequest {
    /// No messages, the default model, streamed, no named conversation: fill in
    /// `messages` and keep `..Default::default()` so fields added later need no change.
    fn default() -> Self {
        CompleteRequest {
            model: None,
            messages: Vec::new(),
            stream: true,
            conversation: None,
        }
    }
}

/// Why a request that followed an earlier turn was not continued in the site chat of that
/// turn, but sent with the whole conversation in a fresh chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotContinued {
    /// Stable: `chat_gone`, `chat_busy`, `several_new_messages`, `no_site_chat`,
    /// `account_changed`, `after_failure`, `other_model`, `other_system`, `edited`.
    pub kind: String,
    pub message: String,
}

/// A request, tagged by its `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Complete(CompleteRequest),
    Models {
        /// Open the site's bot list first and collect every bot it shows (slow: a page
        /// load); the list is cached in the data directory.
        #[serde(default, skip_serializing_if = "is_false")]
        refresh: bool,
    },
    Status,
    /// Cancel the request `target` of the same connection (running or queued).
    Cancel {
        target: RequestId,
    },
    /// Store session cookies in the browser profile, then check the sign-in.
    ImportCookies {
        cookies: Vec<crate::cookies::Cookie>,
    },
    /// Open the site's sign-in page in a visible window and wait until the user signed in.
    Login {
        /// How long to wait for the user (default 600 s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<f64>,
    },
}

/// A request line as written on the wire: `{"id": ..., "type": ..., ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestLine {
    pub id: RequestId,
    #[serde(flatten)]
    pub request: Request,
}

/// Why a line could not become a request; `id` is set when the line carried a usable one.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    pub id: Option<RequestId>,
    pub error: Error,
}

/// The request types this daemon knows.
pub const REQUEST_TYPES: [&str; 6] = [
    "complete",
    "models",
    "status",
    "cancel",
    "import_cookies",
    "login",
];

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<RequestLine, RequestError> {
    let bad = |id: Option<RequestId>, message: String| RequestError {
        id,
        error: Error::new(ErrorKind::BadRequest, message),
    };
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        bad(
            None,
            format!("the line is not valid JSON ({e}); send one JSON object per line"),
        )
    })?;
    let serde_json::Value::Object(map) = &value else {
        return Err(bad(
            None,
            "a request must be a JSON object such as {\"id\":1,\"type\":\"status\"}".into(),
        ));
    };
    let id =
        match map.get("id") {
            None => return Err(bad(
                None,
                "the request has no \"id\"; add a number or string id that the answers will carry"
                    .into(),
            )),
            Some(v) => serde_json::from_value::<RequestId>(v.clone())
                .map_err(|_| bad(None, "\"id\" must be an integer or a string".into()))?,
        };
    match map.get("type").and_then(|t| t.as_str()) {
        None => {
            return Err(bad(
                Some(id),
                format!(
                    "the request has no \"type\"; use one of {}",
                    REQUEST_TYPES.join(", ")
                ),
            ))
        }
        Some(t) if !REQUEST_TYPES.contains(&t) => {
            return Err(bad(
                Some(id),
                format!(
                    "unknown request type {t:?}; use one of {}",
                    REQUEST_TYPES.join(", ")
                ),
            ))
        }
        Some(_) => {}
    }
    let request = serde_json::from_value::<Request>(value.clone())
        .map_err(|e| bad(Some(id.clone()), format!("invalid request: {e}")))?;
    Ok(RequestLine { id, request })
}

/// Timings of a finished reply, in milliseconds since the daemon received the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Time spent waiting for a free tab.
    pub queued_ms: u64,
    /// Time to the first text of the reply; absent when the reply had no text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    pub total_ms: u64,
}

/// Where a model name comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// The built-in table (the original provider's names). Older daemons sent no source:
    /// their rows were all of the table or the config.
    #[default]
    Table,
    /// A row of the config file's `[site.models]` (an alias).
    Config,
    /// A bot the site's updates named while it answered.
    Seen,
    /// A bot of the site's bot list (`models` with `refresh`), cached on disk.
    Discovered,
    /// A source of a newer daemon this reader does not know.
    #[serde(other)]
    Other,
}

impl ModelSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSource::Table => "table",
            ModelSource::Config => "config",
            ModelSource::Seen => "seen",
            ModelSource::Discovered => "discovered",
            ModelSource::Other => "other",
        }
    }
}

/// One model a request may name: a row of the model table or a bot of the site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Public name used in requests (`gpt-4`; a bot's handle for bots of the site).
    pub name: String,
    /// The site's bot handle (`GPT-4`).
    pub bot: String,
    #[serde(default)]
    pub source: ModelSource,
    /// The name the site shows for the bot, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// When the bot last finished a reply for this daemon, in seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answered: Option<u64>,
}

/// The browser part of `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserStatus {
    /// `starting`, `up`, `restarting` or `down`.
    pub state: String,
    /// `launched` or `connected`.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The tab pool and queue part of `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub tabs: usize,
    pub idle: usize,
    pub busy: usize,
    /// Idle tabs already sitting on a fresh chat with the prompt box present.
    pub warm: usize,
    pub queued: usize,
    pub queue_capacity: usize,
}

/// Whether the browser profile is signed in to the site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    SignedIn,
    SignedOut,
    /// Nothing has been seen yet (or a newer daemon's state this reader does not know).
    #[default]
    #[serde(other)]
    Unknown,
}

impl AccountState {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::SignedIn => "signed_in",
            AccountState::SignedOut => "signed_out",
            AccountState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for AccountState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The account part of `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStatus {
    /// `signed_in`, `signed_out` or `unknown` (nothing has been seen yet).
    pub state: AccountState,
    /// Bots whose daily limit the site showed, and when (until a reply from them succeeds).
    #[serde(default)]
    pub daily_limits: Vec<DailyLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_site_error: Option<String>,
    /// The account's points (the site's quota), as last seen in its updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<Points>,
    /// Set when the site refused a send because the points ran out: when they reset
    /// (seconds since the Unix epoch; 0 when the reset time is unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_points_until: Option<u64>,
    /// How long sends of the account are held back after the site refused some for its
    /// rate or for too many replies in flight (0: the site takes every send).
    #[serde(default)]
    pub send_backoff_ms: u64,
}

/// The account's points, from the site's `messagePointInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Points {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
    /// Points per period (e.g. 3000 on a free plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allotment: Option<i64>,
    /// When the balance resets, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<u64>,
    /// When these figures were seen, in seconds since the Unix epoch.
    pub seen_at: u64,
}

/// A daily limit the site showed for a bot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyLimit {
    pub bot: String,
    /// Seconds since the Unix epoch when it was seen.
    pub seen_at: u64,
}

/// Answer to `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub socket: String,
    /// The HTTP front door's address, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    pub base_url: String,
    pub browser: BrowserStatus,
    pub pool: PoolStatus,
    pub account: AccountStatus,
    /// Finished requests by outcome: `ok` or an error kind.
    pub requests: std::collections::BTreeMap<String, u64>,
}

/// An event from the daemon, tagged by its `event` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// First line on every connection.
    Hello {
        protocol: u32,
        version: String,
        server: String,
    },
    /// The request waits for a free tab; `position` 1 is next.
    Queued { position: usize },
    /// A tab took the request; the prompt is being sent. `conversation` names the
    /// conversation the request belongs to (see `complete`).
    Started {
        model: String,
        bot: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation: Option<i64>,
    },
    /// The prompt was handed to the site (the send was pressed): from now on a cancel
    /// stops the reply instead of keeping the prompt from the site.
    Sent,
    /// Text to append to what the request received so far.
    Delta { text: String },
    /// The site rewrote text it had already sent: `text` replaces everything received so far.
    Replace { text: String },
    /// The reply is complete; `text` is the site's final text, whatever came before.
    Done {
        text: String,
        model: String,
        bot: String,
        timings: Timings,
        /// The conversation the request belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation: Option<i64>,
        /// The prompt was only the new message, sent in the site chat of the earlier turns.
        #[serde(default)]
        continued: bool,
        /// Why a request that followed an earlier turn went to a fresh chat instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<NotContinued>,
    },
    /// The request failed; no more events follow for it.
    Error {
        kind: ErrorKind,
        message: String,
        /// For `site_error`: the state the site reported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        /// For `complete`: `true` when the site may have taken the prompt (a retry could make
        /// it answer twice), `false` when it certainly did not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sent: Option<bool>,
        /// For `daily_limit`: when the quota resets (seconds since the Unix epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reset_at: Option<u64>,
    },
    /// Sent on a connection while requests run, so that a client that went away is noticed.
    /// Carries no id; readers ignore it.
    Keepalive,
    /// Answer to `models`.
    Models {
        default: String,
        models: Vec<ModelInfo>,
        /// When the cached bot list of the site was collected (seconds since the epoch);
        /// absent when there is none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        discovered_at: Option<u64>,
    },
    /// Answer to `status`.
    Status(Box<Status>),
    /// Answer to `cancel`: the target is being cancelled (it ends with a `cancelled` error).
    Ok,
    /// Answer to `import_cookies`: how many were stored and the account state after.
    CookiesImported { count: usize, account: AccountState },
    /// `login`: the sign-in page is open at `url` in a visible window; waiting for the user.
    LoginStarted { url: String },
    /// `login` finished: the account state after it.
    LoggedIn { account: AccountState },
}

impl From<crate::reply::Chunk> for Event {
    fn from(chunk: crate::reply::Chunk) -> Self {
        match chunk {
            crate::reply::Chunk::Append(text) => Event::Delta { text },
            crate::reply::Chunk::Replace(text) => Event::Replace { text },
        }
    }
}

impl Event {
    /// Whether no further events follow for the request.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Event::Hello { .. }
                | Event::Queued { .. }
                | Event::Started { .. }
                | Event::Delta { .. }
                | Event::Replace { .. }
                | Event::LoginStarted { .. }
                | Event::Keepalive
                | Event::Sent
        )
    }

    pub fn error(err: &Error) -> Event {
        Event::Error {
            kind: err.kind,
            message: err.message.clone(),
            state: err.state.clone(),
            sent: err.sent,
            reset_at: err.reset_at,
        }
    }
}

/// An event line as written on the wire: `{"id": ..., "event": ..., ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    #[serde(flatten)]
    pub event: Event,
}

impl EventLine {
    /// The JSON line, newline included.
    pub fn to_line(&self) -> String {
        // Serialising these plain data types cannot fail.
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"event\":\"error\",\"kind\":\"internal\",\"message\":\"serialisation failed: {e}\"}}")
        });
        s.push('\n');
        s
    }
}

/// What one [`read_line_capped`] call found.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line is in the buffer, without its newline.
    Line,
    /// The line was longer than the cap; it was skipped up to and including its newline.
    TooLong,
    /// The peer closed its side (a partial last line without newline counts as a line first).
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (cleared first), never holding more than `max`
/// bytes. An oversized line is consumed and dropped, so the next call starts on the next line.
pub async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if too_long {
                LineRead::TooLong
            } else if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long {
            if buf.len() + chunk.len() >= max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = found.unwrap_or(available.len());
        reader.consume(used);
        if found.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_complete_request_with_defaults() {
        let line =
            br#"{"id":7,"type":"complete","messages":[{"role":"user","content":"hi"}],"extra":1}"#;
        let req = parse_request(line).expect("valid");
        assert_eq!(req.id, RequestId::Num(7));
        assert_eq!(
            req.request,
            Request::Complete(CompleteRequest {
                conversation: None,
                model: None,
                messages: vec![ChatMessage::new("user", "hi")],
                stream: true,
            })
        );
    }

    #[test]
    fn request_round_trips_through_the_wire_shape() {
        let req = RequestLine {
            id: "a".into(),
            request: Request::Cancel { target: 3.into() },
        };
        let text = serde_json::to_string(&req).expect("serialise");
        assert_eq!(text, r#"{"id":"a","type":"cancel","target":3}"#);
        assert_eq!(parse_request(text.as_bytes()).expect("parse"), req);
    }

    #[test]
    fn models_requests_refresh_only_when_asked() {
        let plain = parse_request(br#"{"id":1,"type":"models"}"#).expect("plain");
        assert_eq!(plain.request, Request::Models { refresh: false });
        let text = serde_json::to_string(&plain).expect("serialise");
        assert_eq!(text, r#"{"id":1,"type":"models"}"#, "older daemons read it");
        let refresh =
            parse_request(br#"{"id":2,"type":"models","refresh":true}"#).expect("refresh");
        assert_eq!(refresh.request, Request::Models { refresh: true });
        assert_eq!(
            serde_json::to_string(&refresh).expect("serialise"),
            r#"{"id":2,"type":"models","refresh":true}"#
        );
    }

    #[test]
    fn models_carry_their_source_and_old_answers_still_read() {
        let line = EventLine {
            id: Some(3.into()),
            event: Event::Models {
                default: "gpt-3.5-turbo".into(),
                models: vec![
                    ModelInfo {
                        name: "gpt-4".into(),
                        bot: "GPT-4".into(),
                        source: ModelSource::Table,
                        display_name: None,
                        last_answered: None,
                    },
                    ModelInfo {
                        name: "Claude-Sonnet-4.5".into(),
                        bot: "Claude-Sonnet-4.5".into(),
                        source: ModelSource::Seen,
                        display_name: Some("Claude Sonnet 4.5".into()),
                        last_answered: Some(1_767_225_600),
                    },
                ],
                discovered_at: Some(1_767_000_000),
            },
        };
        let value: serde_json::Value = serde_json::from_str(&line.to_line()).expect("json");
        assert_eq!(
            value,
            json!({"id":3,"event":"models","default":"gpt-3.5-turbo","discovered_at":1_767_000_000,
                   "models":[{"name":"gpt-4","bot":"GPT-4","source":"table"},
                             {"name":"Claude-Sonnet-4.5","bot":"Claude-Sonnet-4.5","source":"seen",
                              "display_name":"Claude Sonnet 4.5","last_answered":1_767_225_600}]})
        );
        // An older daemon's answer (no source) and a newer one's (an unknown source).
        let old: EventLine = serde_json::from_str(
            r#"{"id":1,"event":"models","default":"x","models":[{"name":"x","bot":"X"},{"name":"y","bot":"Y","source":"market"}]}"#,
        )
        .expect("read");
        let Event::Models {
            models,
            discovered_at,
            ..
        } = old.event
        else {
            panic!("models expected");
        };
        assert_eq!(discovered_at, None);
        assert_eq!(models[0].source, ModelSource::Table);
        assert_eq!(models[1].source, ModelSource::Other);
    }

    #[test]
    fn bad_lines_get_bad_request_with_the_id_when_known() {
        let e = parse_request(b"{not json").expect_err("invalid");
        assert_eq!((e.id, e.error.kind), (None, ErrorKind::BadRequest));
        let e = parse_request(b"[1,2]").expect_err("not an object");
        assert_eq!(e.error.kind, ErrorKind::BadRequest);
        let e = parse_request(br#"{"type":"status"}"#).expect_err("no id");
        assert!(e.error.message.contains("\"id\""));
        let e = parse_request(br#"{"id":"x","type":"fly"}"#).expect_err("unknown type");
        assert_eq!(e.id, Some("x".into()));
        assert!(e.error.message.contains("fly"));
        let e = parse_request(br#"{"id":2,"type":"complete","messages":"hi"}"#)
            .expect_err("wrong field type");
        assert_eq!(e.id, Some(2.into()));
    }

    #[test]
    fn golden_event_lines() {
        let cases = vec![
            (
                EventLine {
                    id: None,
                    event: Event::Hello {
                        protocol: 1,
                        version: "0.1.0".into(),
                        server: "poed".into(),
                    },
                },
                json!({"event":"hello","protocol":1,"version":"0.1.0","server":"poed"}),
            ),
            (
                EventLine {
                    id: Some(1.into()),
                    event: Event::Delta { text: "Hel".into() },
                },
                json!({"id":1,"event":"delta","text":"Hel"}),
            ),
            (
                EventLine {
                    id: Some("q".into()),
                    event: Event::Queued { position: 2 },
                },
                json!({"id":"q","event":"queued","position":2}),
            ),
            (
                EventLine {
                    id: Some(1.into()),
                    event: Event::Done {
                        text: "Hello".into(),
                        model: "gpt-4".into(),
                        bot: "GPT-4".into(),
                        timings: Timings {
                            queued_ms: 0,
                            first_token_ms: Some(120),
                            total_ms: 480,
                        },
                        conversation: Some(12),
                        continued: false,
                        reason: Some(NotContinued {
                            kind: "chat_gone".into(),
                            message: "m".into(),
                        }),
                    },
                },
                json!({"id":1,"event":"done","text":"Hello","model":"gpt-4","bot":"GPT-4",
                       "timings":{"queued_ms":0,"first_token_ms":120,"total_ms":480},
                       "conversation":12,"continued":false,
                       "reason":{"kind":"chat_gone","message":"m"}}),
            ),
            (
                EventLine {
                    id: Some(2.into()),
                    event: Event::Started {
                        model: "gpt-4".into(),
                        bot: "GPT-4".into(),
                        conversation: Some(3),
                    },
                },
                json!({"id":2,"event":"started","model":"gpt-4","bot":"GPT-4","conversation":3}),
            ),
            (
                EventLine {
                    id: Some(4.into()),
                    event: Event::Error {
                        kind: ErrorKind::SiteError,
                        message: "m".into(),
                        state: Some("error_user_message_too_long".into()),
                        sent: Some(true),
                        reset_at: None,
                    },
                },
                json!({"id":4,"event":"error","kind":"site_error","message":"m",
                       "state":"error_user_message_too_long","sent":true}),
            ),
            (
                EventLine {
                    id: Some(6.into()),
                    event: Event::Sent,
                },
                json!({"id":6,"event":"sent"}),
            ),
            (
                EventLine {
                    id: None,
                    event: Event::Keepalive,
                },
                json!({"event":"keepalive"}),
            ),
            (
                EventLine {
                    id: Some(5.into()),
                    event: Event::Ok,
                },
                json!({"id":5,"event":"ok"}),
            ),
        ];
        for (line, golden) in cases {
            let text = line.to_line();
            assert!(text.ends_with('\n'));
            let value: serde_json::Value = serde_json::from_str(&text).expect("json");
            assert_eq!(value, golden);
            let back: EventLine = serde_json::from_str(&text).expect("round trip");
            assert_eq!(back, line);
        }
    }

    #[test]
    fn readers_ignore_unknown_fields() {
        let line = r#"{"id":1,"event":"delta","text":"x","future_field":{"a":1}}"#;
        let back: EventLine = serde_json::from_str(line).expect("unknown field ignored");
        assert_eq!(back.event, Event::Delta { text: "x".into() });
    }

    #[tokio::test]
    async fn capped_reader_skips_oversized_lines_and_keeps_going() {
        let data = format!("{}\nshort\r\nlast", "x".repeat(100));
        let mut reader = tokio::io::BufReader::with_capacity(8, data.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_line_capped(&mut reader, &mut buf, 50)
                .await
                .expect("io"),
            LineRead::TooLong
        );
        assert_eq!(
            read_line_capped(&mut reader, &mut buf, 50)
                .await
                .expect("io"),
            LineRead::Line
        );
        assert_eq!(buf, b"short");
        assert_eq!(
            read_line_capped(&mut reader, &mut buf, 50)
                .await
                .expect("io"),
            LineRead::Line
        );
        assert_eq!(buf, b"last");
        assert_eq!(
            read_line_capped(&mut reader, &mut buf, 50)
                .await
                .expect("io"),
            LineRead::Eof
        );
    }
}
