//! Errors of the HTTP front door: OpenAI's shape `{"error": {"message", "type", "code"}}`, a
//! status per [`ErrorKind`], and the retry headers that keep a client from sending a prompt
//! to the site twice.
//!
//! OpenAI's SDKs retry 408, 409, 429 and every 5xx by themselves unless the answer carries
//! `x-should-retry: false`. A failed reply may already have reached the site (`stalled`,
//! `timeout`, `browser_crashed`, `site_error`, `rate_limited`, ...), so every error carries
//! that header except `busy`, which is answered before the prompt gets near the site; a
//! `Retry-After` is added where waiting helps.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::{Error, ErrorKind};

/// The header OpenAI's SDKs obey before their own retry rules.
pub const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// `Retry-After` for `busy`, `browser_unavailable` and `shutting_down`: a tab or a restarted
/// browser is usually there within seconds.
const SHORT_WAIT_SECS: u64 = 5;
/// `Retry-After` for `rate_limited`: the site does not say how long; a minute is the
/// shortest wait that does not look like hammering.
const RATE_LIMIT_WAIT_SECS: u64 = 60;
/// `Retry-After` for `daily_limit` while the reset time is unknown.
pub const DAILY_LIMIT_DEFAULT_WAIT_SECS: u64 = 3600;

/// An error in OpenAI's shape, with the kind that decides its retry headers.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type` field.
    pub kind: &'static str,
    /// OpenAI's `code` field: the [`ErrorKind`]'s wire name (`model_not_found` and
    /// `invalid_api_key` where OpenAI clients look for those).
    pub code: String,
    pub message: String,
    /// `Retry-After` in seconds, when waiting helps.
    pub retry_after: Option<u64>,
    /// False when a retry could send the prompt to the site a second time.
    pub retry_is_safe: bool,
}

impl ApiError {
    /// A request poed could not read (`bad_request`, 400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::BadRequest, message).into()
    }

    /// The same error with another status (415, 413, ...), kind and body unchanged.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code}})
    }
}

/// HTTP status and OpenAI error type for each error kind.
pub fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    use ErrorKind::*;
    match kind {
        BadRequest | NotFound | PromptTooLong | UnknownConversation => {
            (StatusCode::BAD_REQUEST, "invalid_request_error")
        }
        RequestTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
        UnknownModel => (StatusCode::NOT_FOUND, "invalid_request_error"),
        BotUnavailable | PermissionDenied => (StatusCode::FORBIDDEN, "permission_error"),
        // Not 401: clients read 401 as "wrong API key". The service is not ready until a
        // person signs the profile in; the code says `not_logged_in`.
        NotLoggedIn => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
        DailyLimit => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
        RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        Busy | BrowserUnavailable | ShuttingDown | NoDisplay => {
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

/// Seconds a client should wait after an error of `kind`, when waiting helps.
pub fn retry_after(e: &Error) -> Option<u64> {
    match e.kind {
        ErrorKind::Busy | ErrorKind::BrowserUnavailable | ErrorKind::ShuttingDown => {
            Some(SHORT_WAIT_SECS)
        }
        ErrorKind::RateLimited => Some(RATE_LIMIT_WAIT_SECS),
        ErrorKind::DailyLimit => Some(daily_limit_wait(e.reset_at, crate::http::unix_now())),
        _ => None,
    }
}

/// Seconds until the site's quota resets (`reset_at`, seconds since the epoch, from the
/// account's points); without it, or for a time already past, [`DAILY_LIMIT_DEFAULT_WAIT_SECS`].
pub fn daily_limit_wait(reset_at: Option<u64>, now: u64) -> u64 {
    match reset_at {
        Some(t) if t > now => t - now,
        _ => DAILY_LIMIT_DEFAULT_WAIT_SECS,
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
            retry_after: retry_after(&e),
            // `busy` is decided before the prompt is typed; everything else may follow a send.
            retry_is_safe: e.kind == ErrorKind::Busy,
            message: e.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if !self.retry_is_safe {
            headers.insert(SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(kind: ErrorKind) -> (u16, Option<String>, Option<String>) {
        let r = ApiError::from(Error::new(kind, "x")).into_response();
        let h = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (r.status().as_u16(), h("x-should-retry"), h("retry-after"))
    }

    #[test]
    fn a_failure_after_a_possible_send_is_never_retried_by_an_sdk() {
        for kind in [
            ErrorKind::Stalled,
            ErrorKind::Timeout,
            ErrorKind::BrowserCrashed,
            ErrorKind::SiteError,
            ErrorKind::RateLimited,
            ErrorKind::DailyLimit,
            ErrorKind::NotLoggedIn,
            ErrorKind::Internal,
            ErrorKind::ShuttingDown,
            ErrorKind::BrowserUnavailable,
        ] {
            let (_, retry, _) = headers_of(kind);
            assert_eq!(retry.as_deref(), Some("false"), "{kind}");
        }
        let (status, retry, after) = headers_of(ErrorKind::Busy);
        assert_eq!((status, retry, after.as_deref()), (503, None, Some("5")));
    }

    #[test]
    fn waiting_is_advised_only_where_it_helps() {
        assert_eq!(headers_of(ErrorKind::RateLimited).2.as_deref(), Some("60"));
        assert_eq!(headers_of(ErrorKind::DailyLimit).2.as_deref(), Some("3600"));
        assert_eq!(headers_of(ErrorKind::Stalled).2, None);
        assert_eq!(headers_of(ErrorKind::NotLoggedIn).2, None);
        assert_eq!(daily_limit_wait(Some(1_000 + 90), 1_000), 90);
        assert_eq!(daily_limit_wait(Some(10), 1_000), 3600);
    }

    #[test]
    fn not_logged_in_does_not_look_like_a_bad_api_key() {
        let (status, _, _) = headers_of(ErrorKind::NotLoggedIn);
        assert_eq!(status, 503);
        let e = ApiError::from(Error::new(ErrorKind::NotLoggedIn, "sign in"));
        assert_eq!(e.body()["error"]["code"], "not_logged_in");
        assert_eq!(headers_of(ErrorKind::RequestTooLarge).0, 413);
        assert_eq!(headers_of(ErrorKind::PromptTooLong).0, 400);
        assert_eq!(headers_of(ErrorKind::BotUnavailable).0, 403);
    }
}
