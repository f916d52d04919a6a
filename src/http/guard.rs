//! Who may use the HTTP front door: the checks every request passes before a handler runs.
//!
//! poed holds a signed-in session, so a request that reaches a handler spends the user's
//! quota. Local programs of the user are trusted; web pages in the user's browser are not,
//! and neither are other machines, nor other users of this machine. In order, like
//! ollama's and Jupyter's local APIs, plus a check of the connecting user:
//! 0. Without an API key, the client must run as poed's own user (or root), found from the
//!    kernel's socket tables ([`super::peer`]); loopback is open to every account (403).
//! 1. `Host` must be a loopback name or address, the listen address, or in
//!    `http.allowed_hosts` (403): a page that rebinds its own name to 127.0.0.1 still sends
//!    its name.
//! 2. A request from a web page (an `Origin` header, or `Sec-Fetch-Site: cross-site` /
//!    `same-site`) is refused unless its origin is in `http.allowed_origins` (403); an
//!    allowed origin gets CORS headers, nobody else does (preflights included).
//! 3. With an API key, `Authorization: Bearer <key>` is compared in constant time (401);
//!    `/health` and `/metrics` too unless `http.public_health`.
//! 4. A `POST` body must be `application/json` (415), which a page cannot send cross-origin
//!    without a preflight that step 2 refuses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::config::HttpConfig;
use crate::error::{Error, ErrorKind};

/// The methods poed answers (what a preflight is told).
const METHODS: &str = "GET, POST, OPTIONS";

/// The access rules of one listening front door.
#[derive(Debug, Clone)]
pub struct Guard {
    api_key: Option<String>,
    /// The address actually bound (a `Host` naming it is this machine).
    listen: SocketAddr,
    /// Normalised host names (lowercase, no brackets, no port).
    allowed_hosts: Vec<String>,
    /// Lowercase origins, no trailing slash.
    allowed_origins: Vec<String>,
    public_health: bool,
}

impl Guard {
    pub fn new(config: &HttpConfig, listen: SocketAddr, api_key: Option<String>) -> Guard {
        Guard {
            api_key,
            listen,
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .filter_map(|h| host_of(h))
                .collect(),
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            public_health: config.public_health,
        }
    }

    /// Without an API key, only poed's own user (and root) may connect; `peer` is the
    /// connection the request came on.
    pub fn check_user(&self, peer: Option<&super::peer::Peer>) -> Result<(), ApiError> {
        if self.api_key.is_some() {
            return Ok(());
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let no_key = "this front door has no API key, so it serves only the user poed runs as";
        let uid = peer
            .ok_or_else(|| "the connection has no peer address".to_owned())
            .and_then(super::peer::Peer::uid)
            .map_err(|e| {
                forbidden(format!(
                    "{no_key} (uid {me}), and which user connected is unknown: {e}; give it a key (--api-key-file) and send it as `Authorization: Bearer <key>`"
                ))
            })?;
        if uid == me || uid == 0 {
            return Ok(());
        }
        Err(forbidden(format!(
            "{no_key} (uid {me}); this client runs as uid {uid}. Run it as uid {me}, or give the front door a key (--api-key-file) and send it as `Authorization: Bearer <key>`"
        )))
    }

    /// Runs the checks on a request's head. `Ok(Some(origin))`: an allowed cross-origin
    /// request, whose answer gets CORS headers.
    pub fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Option<HeaderValue>, ApiError> {
        self.check_host(uri, headers)?;
        let origin = self.check_origin(headers)?;
        if method == Method::OPTIONS {
            // A preflight carries no credentials and runs nothing.
            return Ok(origin);
        }
        let public = self.public_health && matches!(uri.path(), "/health" | "/metrics");
        if !public {
            self.check_key(headers)?;
        }
        if method == Method::POST {
            check_json(headers)?;
        }
        Ok(origin)
    }

    fn check_host(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
        // A browser always sends `Host`; a request without one comes from a local program.
        let named = [
            headers
                .get(header::HOST)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            uri.authority().map(|a| a.as_str().to_owned()),
        ];
        for given in named.into_iter().flatten() {
            if !host_of(&given).is_some_and(|h| self.host_allowed(&h)) {
                return Err(forbidden(format!(
                    "the Host {given:?} does not name this machine, so the request is refused (a web page can reach poed by pointing its own name at 127.0.0.1); call poed as 127.0.0.1 or localhost, or add the name to http.allowed_hosts if a proxy forwards it"
                )));
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        // `*.localhost` always resolves to loopback in browsers (RFC 6761): not rebindable.
        if host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            let ip = ip.to_canonical();
            if ip.is_loopback() || (!self.listen.ip().is_unspecified() && ip == self.listen.ip()) {
                return true;
            }
        }
        self.allowed_hosts.iter().any(|h| h == host)
    }

    fn check_origin(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, ApiError> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let text = String::from_utf8_lossy(origin.as_bytes()).to_ascii_lowercase();
            if self.allowed_origins.contains(&text) {
                return Ok(Some(origin.clone()));
            }
            return Err(forbidden(format!(
                "requests from web pages are refused (Origin {text:?}): a page could spend the account's quota; to let a page you trust call poed, add its origin to http.allowed_origins"
            )));
        }
        // Browsers mark every request a foreign page makes, even those without `Origin`
        // (images, plain links from other sites).
        let site = headers
            .get("sec-fetch-site")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
        if let Some(site @ ("cross-site" | "same-site")) = site.as_deref() {
            return Err(forbidden(format!(
                "requests from web pages are refused (Sec-Fetch-Site: {site}); open poed's URLs directly, or add the calling page's origin to http.allowed_origins"
            )));
        }
        Ok(None)
    }

    fn check_key(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.api_key else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()));
        match given {
            Some(given) if same_secret(given, expected.as_bytes()) => Ok(()),
            _ => Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                kind: "invalid_request_error",
                code: "invalid_api_key".into(),
                message:
                    "missing or wrong API key; send the key of http.api_key_file as `Authorization: Bearer <key>`"
                        .into(),
                retry_after: None,
                retry_is_safe: false,
            }),
        }
    }

    /// The answer to a preflight: CORS headers for an allowed origin only.
    fn preflight(&self, origin: Option<HeaderValue>, headers: &HeaderMap) -> Response {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let out = response.headers_mut();
        out.insert(header::ALLOW, HeaderValue::from_static(METHODS));
        if let Some(origin) = origin {
            allow_origin(out, origin);
            out.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(METHODS),
            );
            // The origin is trusted: whatever headers its client sends may come.
            let asked = headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or(HeaderValue::from_static("authorization, content-type"));
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
            out.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        response
    }
}

/// The middleware running [`Guard::check`] in front of every route.
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<super::peer::Peer>>()
        .map(|c| &c.0);
    let checked = guard
        .check_user(peer)
        .and_then(|()| guard.check(request.method(), request.uri(), request.headers()));
    let origin = match checked {
        Ok(origin) => origin,
        Err(e) => {
            tracing::info!(code = %e.code, method = %request.method(), path = request.uri().path(), "HTTP request refused");
            return e.into_response();
        }
    };
    if request.method() == Method::OPTIONS {
        return guard.preflight(origin, request.headers());
    }
    let mut response = next.run(request).await;
    if let Some(origin) = origin {
        allow_origin(response.headers_mut(), origin);
    }
    response
}

fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after, x-should-retry"),
    );
}

fn forbidden(message: String) -> ApiError {
    ApiError::from(Error::new(ErrorKind::PermissionDenied, message))
}

/// A `POST` body must be declared JSON (`application/json`, parameters allowed).
fn check_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let is_json = given.as_deref().is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if is_json {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "the body must be sent as `Content-Type: application/json` (got {}); with curl add -H 'Content-Type: application/json'",
        given.map_or("none".to_owned(), |t| format!("{t:?}"))
    ))
    .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE))
}

/// The host part of a `Host` value or an authority: lowercase, without port, brackets or
/// a trailing dot. `None` for something that is not a host.
fn host_of(value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() || value.contains(['@', '/', ' ']) {
        return None;
    }
    let authority: axum::http::uri::Authority = value.parse().ok()?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value.get(7..)?;
    let start = token.iter().position(|b| *b != b' ')?;
    Some(&token[start..])
}

/// Compares a secret without stopping at the first difference: the time taken depends on
/// the expected key's length only, never on how much of a guess was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!e);
        diff |= std::hint::black_box(g ^ e);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(key: Option<&str>, config: &str) -> Guard {
        let config: HttpConfig = toml::from_str(config).expect("config");
        Guard::new(
            &config,
            "127.0.0.1:8080".parse().expect("addr"),
            key.map(str::to_owned),
        )
    }

    fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        (
            method.parse().expect("method"),
            path.parse().expect("uri"),
            map,
        )
    }

    fn status(g: &Guard, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
        let (m, u, h) = head(method, path, headers);
        match g.check(&m, &u, &h) {
            Ok(_) => 200,
            Err(e) => e.status.as_u16(),
        }
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn only_names_of_this_machine_pass_as_host() {
        let g = guard(None, "allowed_hosts = ['Poed.LAN', '[fd00::1]:80']");
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "app.localhost",
            "[::1]:8080",
            "127.1.2.3",
            "poed.lan:9",
            "poed.lan.",
            "[fd00::1]",
        ] {
            assert_eq!(
                status(&g, "GET", "/v1/models", &[("host", ok)]),
                200,
                "{ok}"
            );
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "",
            "user@localhost",
        ] {
            assert_eq!(
                status(&g, "GET", "/v1/models", &[("host", bad)]),
                403,
                "{bad}"
            );
        }
        assert_eq!(status(&g, "GET", "http://evil.example/v1/models", &[]), 403);
        assert_eq!(
            status(&g, "GET", "/v1/models", &[]),
            200,
            "no Host: a local program"
        );
    }

    #[test]
    fn the_listen_address_is_a_host_unless_it_is_every_address() {
        let config = HttpConfig::default();
        let g = Guard::new(&config, "192.168.1.5:80".parse().expect("addr"), None);
        assert_eq!(status(&g, "GET", "/", &[("host", "192.168.1.5")]), 200);
        let g = Guard::new(&config, "0.0.0.0:80".parse().expect("addr"), None);
        assert_eq!(status(&g, "GET", "/", &[("host", "0.0.0.0")]), 403);
    }

    #[test]
    fn web_pages_are_refused_unless_their_origin_is_allowed() {
        let g = guard(None, "allowed_origins = ['https://App.example']");
        let evil = ("origin", "https://evil.example");
        assert_eq!(
            status(
                &g,
                "POST",
                "/v1/chat/completions",
                &[evil, ("content-type", "text/plain")]
            ),
            403
        );
        assert_eq!(
            status(&g, "POST", "/v1/chat/completions", &[evil, JSON]),
            403
        );
        assert_eq!(status(&g, "OPTIONS", "/v1/chat/completions", &[evil]), 403);
        assert_eq!(status(&g, "GET", "/health", &[("origin", "null")]), 403);
        assert_eq!(
            status(&g, "GET", "/v1/models", &[("sec-fetch-site", "cross-site")]),
            403
        );
        assert_eq!(
            status(&g, "GET", "/v1/models", &[("sec-fetch-site", "same-site")]),
            403
        );
        assert_eq!(
            status(&g, "GET", "/v1/models", &[("sec-fetch-site", "none")]),
            200
        );
        let app = ("origin", "https://app.example");
        assert_eq!(
            status(&g, "POST", "/v1/chat/completions", &[app, JSON]),
            200
        );
        let (m, u, h) = head(
            "GET",
            "/v1/models",
            &[app, ("sec-fetch-site", "cross-site")],
        );
        assert!(g.check(&m, &u, &h).expect("allowed").is_some());
    }

    #[test]
    fn preflights_get_cors_headers_only_for_allowed_origins() {
        let g = guard(None, "allowed_origins = ['https://app.example']");
        let (_, _, h) = head(
            "OPTIONS",
            "/",
            &[(
                "access-control-request-headers",
                "authorization, x-stainless-os",
            )],
        );
        let r = g.preflight(Some(HeaderValue::from_static("https://app.example")), &h);
        assert_eq!(r.status(), 204);
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert_eq!(
            r.headers()["access-control-allow-headers"],
            "authorization, x-stainless-os"
        );
        let r = g.preflight(None, &h);
        assert!(r.headers().get("access-control-allow-origin").is_none());
        assert!(r.headers().get("access-control-allow-headers").is_none());
    }

    #[test]
    fn posts_must_be_json() {
        let g = guard(None, "");
        assert_eq!(
            status(
                &g,
                "POST",
                "/v1/chat/completions",
                &[("content-type", "text/plain")]
            ),
            415
        );
        assert_eq!(
            status(
                &g,
                "POST",
                "/v1/chat/completions",
                &[("content-type", "application/x-www-form-urlencoded")]
            ),
            415
        );
        assert_eq!(status(&g, "POST", "/v1/chat/completions", &[]), 415);
        assert_eq!(
            status(
                &g,
                "POST",
                "/v1/chat/completions",
                &[("content-type", "Application/JSON; charset=utf-8")]
            ),
            200
        );
        assert_eq!(status(&g, "GET", "/v1/models", &[]), 200);
    }

    #[test]
    fn the_key_guards_every_route_unless_health_is_public() {
        let g = guard(Some("s3cret"), "");
        let ok = ("authorization", "Bearer s3cret");
        assert_eq!(status(&g, "GET", "/v1/models", &[ok]), 200);
        assert_eq!(
            status(
                &g,
                "GET",
                "/v1/models",
                &[("authorization", "bearer   s3cret")]
            ),
            200
        );
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer ",
            "Basic s3cret",
            "s3cret",
            "Bearer S3CRET",
        ] {
            assert_eq!(
                status(&g, "GET", "/v1/models", &[("authorization", bad)]),
                401,
                "{bad}"
            );
        }
        assert_eq!(status(&g, "GET", "/health", &[]), 401);
        assert_eq!(status(&g, "GET", "/metrics", &[]), 401);
        let g = guard(Some("s3cret"), "public_health = true");
        assert_eq!(status(&g, "GET", "/health", &[]), 200);
        assert_eq!(status(&g, "GET", "/metrics", &[]), 200);
        assert_eq!(status(&g, "GET", "/v1/models", &[]), 401);
        // Order: a foreign page is refused as such, whatever key it guessed.
        assert_eq!(
            status(
                &g,
                "GET",
                "/v1/models",
                &[("origin", "https://evil.example")]
            ),
            403
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
        // A missing byte is never taken as a match, whatever the key holds.
        assert!(!same_secret(b"a", b"a\xff"));
    }
}
