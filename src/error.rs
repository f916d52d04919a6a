//! Error kinds that cross the daemon's boundary.
//!
//! Every failure a client can see has a stable, machine-readable [`ErrorKind`] (the wire
//! protocol's `kind` field, also mapped to HTTP statuses and `poectl` exit codes) and a
//! human message that says what to do next. Kinds are never renamed or removed.

use serde::{Deserialize, Serialize};

/// Stable machine-readable error kinds (serialised in `snake_case`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request line was not valid JSON, or a field was missing or of the wrong type.
    BadRequest,
    /// The request line was longer than the daemon's line cap.
    RequestTooLarge,
    /// The model name is not in the model table.
    UnknownModel,
    /// The browser profile is not signed in to the site.
    NotLoggedIn,
    /// The account reached the site's daily quota for this bot.
    DailyLimit,
    /// The site refuses to send more messages for now.
    RateLimited,
    /// The site ended the reply with a failure state (`error_*`, or `cancelled` by the site).
    SiteError,
    /// No update arrived from the site for the idle timeout.
    Stalled,
    /// The reply did not finish within the overall timeout.
    Timeout,
    /// The queue is full; try again later.
    Busy,
    /// The request was cancelled by the client.
    Cancelled,
    /// The browser is not (yet) available.
    BrowserUnavailable,
    /// The browser died while the request was running.
    BrowserCrashed,
    /// A visible browser window was asked for, but there is no display.
    NoDisplay,
    /// The daemon is shutting down.
    ShuttingDown,
    /// A `cancel` named a request that this connection does not have in flight.
    NotFound,
    /// Anything else: a bug or an unexpected browser answer.
    Internal,
    /// The site refused the prompt as too long (`too_many_tokens`).
    PromptTooLong,
    /// The site does not let this account use the bot (`no_access`).
    BotUnavailable,
    /// The connecting process is not allowed to use this daemon (another user).
    PermissionDenied,
    /// A `complete` named a conversation the daemon does not remember.
    UnknownConversation,
}

impl ErrorKind {
    /// The wire name of the kind, e.g. `"unknown_model"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::UnknownModel => "unknown_model",
            ErrorKind::NotLoggedIn => "not_logged_in",
            ErrorKind::DailyLimit => "daily_limit",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::SiteError => "site_error",
            ErrorKind::Stalled => "stalled",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Busy => "busy",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::BrowserUnavailable => "browser_unavailable",
            ErrorKind::BrowserCrashed => "browser_crashed",
            ErrorKind::NoDisplay => "no_display",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Internal => "internal",
            ErrorKind::PromptTooLong => "prompt_too_long",
            ErrorKind::BotUnavailable => "bot_unavailable",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::UnknownConversation => "unknown_conversation",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable kind and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// For `site_error`: the state the site reported (e.g. `error_user_message_too_long`).
    pub state: Option<String>,
    /// Whether the site may have taken the prompt: `Some(true)` once the send was pressed
    /// (a retry could make the site answer twice), `Some(false)` when it certainly did not
    /// (never sent, or refused), `None` when not a completion or not known.
    pub sent: Option<bool>,
    /// For `daily_limit`: when the account's quota resets (seconds since the Unix epoch), if
    /// the site said.
    pub reset_at: Option<u64>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            state: None,
            sent: None,
            reset_at: None,
        }
    }

    /// Records whether the site may have taken the prompt (see [`Error::sent`]).
    pub fn sent(mut self, sent: bool) -> Self {
        self.sent = Some(sent);
        self
    }

    pub fn with_state(mut self, state: impl Into<String>) -> Self {
        self.state = Some(state.into());
        self
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
