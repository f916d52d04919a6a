//! Keeping secrets out of logs.
//!
//! No log line, at any verbosity, may carry a cookie value, an API key, credentials in a proxy
//! or browser URL, or the update socket's `channel`/`hash` tokens. Two layers see to it:
//!
//! - at the source, a value that can hold a secret is logged through [`url`], [`proxy`],
//!   [`arg`] or [`text`], which blank credentials and query values but keep enough (scheme,
//!   host, path, parameter names) to diagnose with;
//! - at the sink, every line the daemon writes passes [`Scrubbed`], which blanks the secrets
//!   the daemon knows by value ([`register`]: the API key, proxy and `--connect` credentials,
//!   see [`register_config`]), so a value that reaches a log line some other way (a library's
//!   own debug output enabled through `RUST_LOG`) is still not printed.
//!
//! Prompts and replies are not secrets in this sense: the daemon logs them at `trace` only.

use std::borrow::Cow;
use std::io::Write;
use std::sync::RwLock;

use tracing_subscriber::fmt::MakeWriter;

use crate::config::Config;

/// What a redacted value is replaced with.
pub const MARK: &str = "<redacted>";

/// Secrets shorter than this are not scrubbed by value: blanking every `ab` in the log would
/// garble it without protecting anything.
const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// `raw` with credentials and query values blanked: `scheme://user:pass@host/p?a=1#f` becomes
/// `scheme://<redacted>@host/p?a=<redacted>#<redacted>`. Every query value goes, because
/// that is where sites put tokens (Poe's update socket: `channel=` and `hash=`). Also accepts
/// a URL without scheme (`user:pass@host:port`).
pub fn url(raw: &str) -> String {
    let (scheme, rest) = match raw.find("://") {
        Some(i) => raw.split_at(i + 3),
        None => ("", raw),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(raw.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(MARK);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.find('#') {
        Some(i) => (&tail[..i], Some(&tail[i + 1..])),
        None => (tail, None),
    };
    let (path, query) = match before_fragment.find('?') {
        Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
        None => (before_fragment, None),
    };
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}={MARK}"),
                // A bare `?token` is as secret as a value.
                None if pair.is_empty() => String::new(),
                None => MARK.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        if !fragment.is_empty() {
            out.push_str(MARK);
        }
    }
    out
}

/// A Chromium `--proxy-server` value with any credentials blanked. Handles lists
/// (`http=host:1;https=host:2`, fallbacks separated by `,`) and entries with or without a
/// scheme.
pub fn proxy(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while !rest.is_empty() {
        let end = rest.find([';', ',']).unwrap_or(rest.len());
        let (entry, after) = rest.split_at(end);
        // `http=user:pass@host:1`: the part before `=` names the scheme it applies to.
        match entry.split_once('=') {
            Some((applies_to, server)) if !applies_to.contains("://") => {
                out.push_str(applies_to);
                out.push('=');
                out.push_str(&url(server));
            }
            _ => out.push_str(&url(entry)),
        }
        if let Some(sep) = after.chars().next() {
            out.push(sep);
            rest = &after[sep.len_utf8()..];
        } else {
            rest = after;
        }
    }
    out
}

/// An extra Chromium flag (`name=value` or `name`) fit for a log line: a flag whose name
/// mentions a proxy gets [`proxy`] on its value, any other gets [`text`].
pub fn arg(raw: &str) -> String {
    match raw.split_once('=') {
        Some((name, value)) if name.to_ascii_lowercase().contains("proxy") => {
            format!("{name}={}", proxy(value))
        }
        _ => text(raw),
    }
}

/// Free text (an error message, a command line) with every `scheme://...` URL in it passed
/// through [`url`].
pub fn text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(sep) = rest.find("://") {
        // The scheme: letters, digits, `+`, `-`, `.` right before `://`.
        let start = rest[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[sep..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .map_or(rest.len(), |i| sep + i);
        out.push_str(&rest[..start]);
        out.push_str(&url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Adds `secret` to the values blanked in every log line from now on (see [`Scrubbed`]).
/// Values shorter than four characters are ignored.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_owned());
        // Longest first, so that a secret containing another is blanked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers the secrets of a configuration: the API key (read from its file, when it can
/// be), and the credentials of the proxy and of the `--connect` URL.
pub fn register_config(config: &Config) {
    if let Ok(Some(key)) = config.http.api_key() {
        register(&key);
    }
    for value in [&config.browser.proxy, &config.browser.connect]
        .into_iter()
        .flatten()
    {
        for userinfo in credentials(value) {
            register(userinfo);
            // `user:pass`: the password alone may be logged too (e.g. decoded by a library).
            if let Some((user, pass)) = userinfo.split_once(':') {
                register(user);
                register(pass);
            }
        }
    }
}

/// The `userinfo` parts (`user:pass`) of the URLs in a proxy list or URL.
fn credentials(value: &str) -> Vec<&str> {
    value
        .split([';', ','])
        .filter_map(|entry| {
            let entry = match entry.split_once("://") {
                Some((_, rest)) => rest,
                None => entry.split_once('=').map_or(entry, |(_, server)| server),
            };
            let authority = &entry[..entry.find(['/', '?', '#']).unwrap_or(entry.len())];
            authority.rfind('@').map(|at| &authority[..at])
        })
        .filter(|userinfo| !userinfo.is_empty())
        .collect()
}

/// `line` with every registered secret replaced by [`MARK`].
pub fn scrub(line: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out = Cow::Borrowed(line);
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MARK));
        }
    }
    out
}

/// A `tracing_subscriber` writer maker whose writers pass each log line through [`scrub`]
/// before it reaches `M`'s writer.
pub struct Scrubbed<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Scrubbed<M> {
    type Writer = ScrubWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubWriter {
            inner: self.0.make_writer(),
            buf: Vec::new(),
        }
    }
}

/// Collects one log event (the formatter writes an event, then drops its writer) and writes
/// it scrubbed: a secret split over several writes is still found.
pub struct ScrubWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> ScrubWriter<W> {
    fn emit(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buf);
        let result = self.inner.write_all(scrub(&text).as_bytes());
        self.buf.clear();
        result
    }
}

impl<W: Write> Write for ScrubWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.emit()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for ScrubWriter<W> {
    fn drop(&mut self) {
        // Nowhere to report a failed log write.
        let _ = self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_query_values_and_fragments() {
        assert_eq!(
            url("wss://tch1.poe.com/up/chan5-1/updates?min_seq=7&channel=poe-chan5-abc&hash=9876"),
            "wss://tch1.poe.com/up/chan5-1/updates?min_seq=<redacted>&channel=<redacted>&hash=<redacted>"
        );
        assert_eq!(
            url("http://alice:s3cret@proxy.example:3128/x#frag"),
            "http://<redacted>@proxy.example:3128/x#<redacted>"
        );
        assert_eq!(url("http://127.0.0.1:9222"), "http://127.0.0.1:9222");
        assert_eq!(url("user:pw@host:1080"), "<redacted>@host:1080");
        assert_eq!(url("https://h/p?token"), "https://h/p?<redacted>");
        // An `@` in the path is not a credential.
        assert_eq!(url("https://h/@someone"), "https://h/@someone");
    }

    #[test]
    fn proxy_lists_lose_every_credential() {
        assert_eq!(
            proxy("http=alice:pw1@h1:80;https=bob:pw2@h2:443"),
            "http=<redacted>@h1:80;https=<redacted>@h2:443"
        );
        assert_eq!(
            proxy("socks5://carol:pw3@127.0.0.1:1080,direct://"),
            "socks5://<redacted>@127.0.0.1:1080,direct://"
        );
        assert_eq!(proxy("socks5://127.0.0.1:1080"), "socks5://127.0.0.1:1080");
        assert_eq!(
            arg("proxy-server=dave:pw4@h:1"),
            "proxy-server=<redacted>@h:1"
        );
        assert_eq!(arg("lang=de"), "lang=de");
    }

    #[test]
    fn free_text_loses_the_secrets_of_the_urls_in_it() {
        assert_eq!(
            text("cannot attach to the browser at http://u:p@127.0.0.1:9222: refused"),
            "cannot attach to the browser at http://<redacted>@127.0.0.1:9222: refused"
        );
        assert_eq!(
            text("socket \"ws://h/updates?channel=c&hash=1\" closed; no url here"),
            "socket \"ws://h/updates?channel=<redacted>&hash=<redacted>\" closed; no url here"
        );
        assert_eq!(text("plain"), "plain");
    }

    #[test]
    fn credentials_are_found_in_every_form() {
        assert_eq!(
            credentials("http=a:b@h:1;socks5://c:d@h:2,e@h:3"),
            vec!["a:b", "c:d", "e"]
        );
        assert!(credentials("http://127.0.0.1:9222").is_empty());
    }

    #[test]
    fn registered_secrets_are_scrubbed_from_lines_written_in_pieces() {
        register("key-3a7f-registered");
        register("ab");
        let mut sink = Vec::new();
        {
            let mut w = ScrubWriter {
                inner: &mut sink,
                buf: Vec::new(),
            };
            w.write_all(b"auth with key-3a7f").expect("write");
            w.write_all(b"-registered failed; ab\n").expect("write");
        }
        assert_eq!(
            String::from_utf8(sink).expect("utf8"),
            "auth with <redacted> failed; ab\n"
        );
        assert_eq!(scrub("nothing secret"), "nothing secret");
    }
}
