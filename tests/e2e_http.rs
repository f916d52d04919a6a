//! The OpenAI-compatible HTTP front door, end to end on the double with real Chromium,
//! exercised by clients nobody here wrote: the official `openai` Python package and curl.
//! Besides the API itself: only its user gets in (Host, Origin, content type, API key,
//! loopback and poed's own user without a key), and no failed request reaches the site twice.

mod common;
mod double;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::procs::chromium_main;
use common::{run, within, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions};
use serde_json::Value;
use tokio::process::Command;

const KEY: &str = "test-key-123";

fn fast() -> DoubleOptions {
    DoubleOptions {
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    }
}

/// How a test daemon's front door is set up.
#[derive(Default)]
struct Front<'a> {
    /// `--http` address (default `127.0.0.1:0`).
    listen: Option<&'a str>,
    key: bool,
    /// Extra `[http]`-level TOML (and top-level keys before it).
    toml: &'a str,
    flags: &'a [&'a str],
}

/// Starts poed with its HTTP front door against `double`; returns the daemon and the base
/// URL on 127.0.0.1.
async fn start_front(double: &Double, front: Front<'_>) -> (Daemon, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key");
    let config = dir.path().join("http.toml");
    std::fs::write(&config, front.toml).expect("config");
    let profile = dir.path().join("profile");
    let socket = dir.path().join("run").join("poed.sock");
    let key_arg = key_file.display().to_string();
    let config_arg = config.display().to_string();
    let mut flags = vec![
        "--config",
        &config_arg,
        "--http",
        front.listen.unwrap_or("127.0.0.1:0"),
    ];
    if front.key {
        flags.extend(["--api-key-file", &key_arg]);
    }
    flags.extend(front.flags);
    let daemon = Daemon::start_in(dir, profile, socket, &double.base_url(), &flags).await;
    let status = daemon.client().await.status().await.expect("status");
    let addr: std::net::SocketAddr = status
        .http
        .expect("http address in status")
        .parse()
        .expect("address");
    let base = format!("http://127.0.0.1:{}", addr.port());
    (daemon, base)
}

/// The README's set-up plus a key: what most tests use.
async fn start() -> (Double, Daemon, String) {
    start_with(fast()).await
}

/// [`start`] with a double of its own options.
async fn start_with(options: DoubleOptions) -> (Double, Daemon, String) {
    let double = Double::start(options).await.expect("double");
    let (daemon, base) = start_front(
        &double,
        Front {
            key: true,
            ..Front::default()
        },
    )
    .await;
    (double, daemon, base)
}

fn curl(args: &[&str]) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-H", &format!("Authorization: Bearer {KEY}")])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// One HTTP exchange seen by curl: status, headers (names lowercase) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `code` of an OpenAI-shaped error body.
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Runs curl without any default header; `args` are curl's.
async fn exchange(args: &[&str]) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = run(cmd).await;
    assert_eq!(out.code, 0, "curl {args:?}: {}", out.stderr);
    let mut rest = out.stdout.as_str();
    loop {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {:?}", out.stdout));
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        return Answer {
            status,
            headers,
            body: body.to_owned(),
        };
    }
}

/// A chat body asking `prompt`.
fn ask(prompt: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": prompt}]}).to_string()
}

/// The data lines of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_streams_sse_and_errors_have_openai_shape() {
    let (double, daemon, base) = start().await;
    let url = format!("{base}/v1/chat/completions");
    const JSON: &str = "Content-Type: application/json";

    // Streaming with curl -N: role first, text deltas, finish_reason last, then [DONE].
    let body = r#"{"model":"gpt-4","messages":[{"role":"user","content":"sse [[long]] please"}],"stream":true,"n":1}"#;
    let out = run(curl(&["-N", "-H", JSON, "-d", body, &url])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let data = sse_data(&out.stdout);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk json"))
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, expected_reply("GPT-4", "sse [[long]] please"));
    assert_eq!(
        chunks.last().expect("last")["choices"][0]["finish_reason"],
        "stop"
    );

    // Non-streaming answer.
    let out = run(curl(&["-H", JSON, "-d", &ask("plain"), &url])).await;
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        expected_reply("GPT-3.5-Turbo", "plain")
    );
    assert!(v["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0);

    // Errors: status and OpenAI's shape.
    let auth = format!("Authorization: Bearer {KEY}");
    let a = exchange(&[
        "-H",
        &auth,
        "-H",
        JSON,
        "-d",
        r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#,
        &url,
    ])
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "model_not_found");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("gpt-4"));
    assert_eq!(a.header("x-should-retry"), Some("false"));
    let a = exchange(&["-H", &auth, "-H", JSON, "-d", "{not json", &url]).await;
    assert_eq!((a.status, a.code()), (400, "bad_request".into()));
    // A bot handle the site does not have, streamed: found before the send, so it is a 404
    // too, not an error inside a 200 stream. (With a tab free: a request that waits in the
    // queue gets its head then, README "Use it from OpenAI clients"; the tabs of the
    // requests above may still be opening their fresh chats.)
    daemon.wait_warm(3).await;
    let a = exchange(&[
        "-H",
        &auth,
        "-H",
        JSON,
        "-d",
        r#"{"model":"No-Such-Bot-77","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
        &url,
    ])
    .await;
    assert_eq!((a.status, a.code()), (404, "model_not_found".into()));
    // No key, no answer: not even health or metrics (http.public_health is off).
    for path in ["/v1/models", "/health", "/metrics"] {
        let a = exchange(&[&format!("{base}{path}")]).await;
        assert_eq!(a.status, 401, "{path}");
        assert_eq!(a.code(), "invalid_api_key");
    }
    let a = exchange(&[
        "-H",
        "Authorization: Bearer test-key-124",
        &format!("{base}/v1/models"),
    ])
    .await;
    assert_eq!(a.status, 401, "a key one character off");

    // An error after streaming began arrives as a final SSE event, then [DONE].
    let body = r#"{"messages":[{"role":"user","content":"[[error]]"}],"stream":true}"#;
    let out = run(curl(&["-N", "-H", JSON, "-d", body, &url])).await;
    let data = sse_data(&out.stdout);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let err: Value = serde_json::from_str(&data[data.len() - 2]).expect("error event");
    assert_eq!(err["error"]["code"], "site_error");

    // A client that disconnects mid-stream cancels its request: the site sees the stop.
    let before = double.chats().len();
    let body = r#"{"messages":[{"role":"user","content":"[[slow]] story"}],"stream":true}"#;
    let mut child = curl(&["-N", "-H", JSON, "-d", body, &url])
        .spawn()
        .expect("curl");
    let chats = double.wait_for_chats(before + 1, STEP).await;
    let chat_id = chats[before].chat_id.clone();
    // Let a few deltas arrive, then hang up.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 4096];
    use tokio::io::AsyncReadExt;
    let mut seen = 0;
    while seen < 3 {
        let n = within(Duration::from_secs(10), "sse bytes", stdout.read(&mut buf))
            .await
            .expect("read");
        seen += String::from_utf8_lossy(&buf[..n]).matches("data: ").count();
    }
    child.kill().await.expect("kill curl");
    assert!(
        double
            .wait_for_stop(&chat_id, Duration::from_secs(10))
            .await,
        "the stop button was pressed"
    );

    // Health and metrics, with the key.
    let out = run(curl(&["-w", "\n%{http_code}", &format!("{base}/health")])).await;
    assert!(out.stdout.ends_with("\n200"), "{}", out.stdout);
    let out = run(curl(&[&format!("{base}/metrics")])).await;
    assert!(
        out.stdout.contains("poed_requests_total{outcome=\"ok\"} 2"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("poed_request_duration_seconds_bucket"));
    assert!(out.stdout.contains("poed_browser_restarts_total 0"));
    drop(daemon);
}

/// The attacks of issue 11 on poed started as the README shows (loopback, no key): a web page
/// posting `text/plain` cross-origin, a DNS-rebound name, a preflight; and hostile bodies.
/// None reaches the site; the configured origin and host do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_and_rebound_names_cannot_reach_the_site() {
    let double = Double::start(fast()).await.expect("double");
    let (daemon, base) = start_front(
        &double,
        Front {
            toml: "max_line_bytes = 65536\n[http]\nallowed_origins = [\"https://app.example\"]\nallowed_hosts = [\"poed.test\"]\n",
            ..Front::default()
        },
    )
    .await;
    let url = format!("{base}/v1/chat/completions");
    let port = base.rsplit(':').next().expect("port").to_owned();
    let body = ask("steal the quota");
    let evil = "Origin: https://evil.example";

    // What any page can send without a preflight: refused as coming from a page.
    let a = exchange(&[
        "-H",
        evil,
        "-H",
        "Content-Type: text/plain",
        "-d",
        &body,
        &url,
    ])
    .await;
    assert_eq!((a.status, a.code()), (403, "permission_denied".into()));
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("http.allowed_origins"));
    assert!(a.header("access-control-allow-origin").is_none());
    let a = exchange(&[
        "-H",
        evil,
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &url,
    ])
    .await;
    assert_eq!(a.status, 403);
    // A preflight from the page gets no permission either.
    let a = exchange(&[
        "-X",
        "OPTIONS",
        "-H",
        evil,
        "-H",
        "Access-Control-Request-Method: POST",
        "-H",
        "Access-Control-Request-Headers: content-type",
        &url,
    ])
    .await;
    assert_eq!(a.status, 403);
    assert!(
        a.headers
            .iter()
            .all(|(n, _)| !n.starts_with("access-control-")),
        "{:?}",
        a.headers
    );
    // Pages without Origin (an <img>, a link from another site) are marked by the browser.
    let a = exchange(&[
        "-H",
        "Sec-Fetch-Site: cross-site",
        &format!("{base}/v1/models"),
    ])
    .await;
    assert_eq!(a.status, 403);
    // DNS rebinding: the page's own name arrives as Host.
    let rebound = format!("Host: evil.example:{port}");
    let json = "Content-Type: application/json";
    let a = exchange(&["-H", &rebound, "-H", json, "-d", &body, &url]).await;
    assert_eq!((a.status, a.code()), (403, "permission_denied".into()));
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("http.allowed_hosts"));
    let a = exchange(&["-H", &rebound, &format!("{base}/health")]).await;
    assert_eq!(a.status, 403);
    // Bodies that are not declared JSON.
    for content_type in [
        "Content-Type: text/plain",
        "Content-Type: application/x-www-form-urlencoded",
        "Content-Type:",
    ] {
        let a = exchange(&["-H", content_type, "--data-binary", &body, &url]).await;
        assert_eq!(
            (a.status, a.code()),
            (415, "bad_request".into()),
            "{content_type}"
        );
    }
    // Hostile bodies get their kinds: too large, too deep, not UTF-8.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, bytes: &[u8]| -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("body file");
        format!("@{}", path.display())
    };
    let big = file("big", ask(&"x".repeat(100_000)).as_bytes());
    let a = exchange(&["-H", json, "--data-binary", &big, &url]).await;
    assert_eq!((a.status, a.code()), (413, "request_too_large".into()));
    let deep = file(
        "deep",
        format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)).as_bytes(),
    );
    let a = exchange(&["-H", json, "--data-binary", &deep, &url]).await;
    assert_eq!((a.status, a.code()), (400, "bad_request".into()));
    let latin1 = file(
        "latin1",
        b"{\"messages\":[{\"role\":\"user\",\"content\":\"caf\xe9\"}]}",
    );
    let a = exchange(&["-H", json, "--data-binary", &latin1, &url]).await;
    assert_eq!((a.status, a.code()), (400, "bad_request".into()));
    assert!(a.body.contains("UTF-8"), "{}", a.body);
    assert!(double.chats().is_empty(), "nothing reached the site");

    // Loopback names, the configured host, and the configured origin do get in.
    for host in [
        format!("localhost:{port}"),
        format!("poed.test:{port}"),
        format!("[::1]:{port}"),
    ] {
        let a = exchange(&["-H", &format!("Host: {host}"), &format!("{base}/v1/models")]).await;
        assert_eq!(a.status, 200, "{host}");
    }
    let app = "Origin: https://app.example";
    let a = exchange(&[
        "-X",
        "OPTIONS",
        "-H",
        app,
        "-H",
        "Access-Control-Request-Method: POST",
        "-H",
        "Access-Control-Request-Headers: content-type, authorization",
        &url,
    ])
    .await;
    assert_eq!(a.status, 204);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        a.header("access-control-allow-headers"),
        Some("content-type, authorization")
    );
    let a = exchange(&["-H", app, "-H", json, "-d", &ask("from the app"), &url]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        a.json()["choices"][0]["message"]["content"],
        expected_reply("GPT-3.5-Turbo", "from the app")
    );
    let prompts: Vec<String> = double.chats().into_iter().map(|c| c.prompt).collect();
    assert_eq!(prompts.len(), 1, "{prompts:?}");
    assert!(prompts[0].contains("from the app"));
    drop(daemon);
}

/// `--http` beyond loopback without a key is refused at start, before Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reachable_address_without_a_key_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").expect("config");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poed"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(dir.path().join("poed.sock"))
            .arg("--profile")
            .arg(dir.path().join("profile"))
            .args(["--base-url", "http://127.0.0.1:9", "--http", listen])
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = within(Duration::from_secs(20), "poed refusing", cmd.output())
            .await
            .expect("run poed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{listen}: poed started: {stderr}");
        assert!(
            stderr.contains("--api-key-file") && stderr.contains("127.0.0.1"),
            "{listen}: the message says what to do: {stderr}"
        );
        assert!(
            !Path::new(&dir.path().join("profile")).exists(),
            "{listen}: no browser was started"
        );
    }
}

/// `not_logged_in` is a "not ready" 503 (401 would read as a bad key), `daily_limit` a 429
/// with the wait, `busy` a 503 that may be retried (nothing was sent): each says so in its
/// headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_states_answer_with_statuses_that_do_not_mislead_clients() {
    let double = Double::start(DoubleOptions {
        logged_in: false,
        ..fast()
    })
    .await
    .expect("double");
    let (daemon, base) = start_front(
        &double,
        Front {
            // A long idle limit: the stalled hog must hold the only tab for the whole test,
            // however slow the machine.
            flags: &["--tabs", "1", "--queue", "1", "--idle-timeout", "120"],
            ..Front::default()
        },
    )
    .await;
    let url = format!("{base}/v1/chat/completions");
    let json = "Content-Type: application/json";

    let a = exchange(&["-H", json, "-d", &ask("hi"), &url]).await;
    assert_eq!(
        (a.status, a.code()),
        (503, "not_logged_in".into()),
        "{}",
        a.body
    );
    assert_eq!(a.header("x-should-retry"), Some("false"));
    assert_eq!(
        a.header("retry-after"),
        None,
        "waiting does not sign anyone in"
    );
    let a = exchange(&[&format!("{base}/health")]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["not_ready"], serde_json::json!(["account"]));

    double.set_logged_in(true);
    double.set_daily_limit(true);
    let a = exchange(&["-H", json, "-d", &ask("hi"), &url]).await;
    assert_eq!(
        (a.status, a.code()),
        (429, "daily_limit".into()),
        "{}",
        a.body
    );
    assert_eq!(a.header("x-should-retry"), Some("false"));
    // Until the points reset (as the site told them), or an hour when it did not.
    let wait: u64 = a
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(wait > 0 && wait <= 31 * 86_400, "Retry-After {wait}");
    assert!(double.taken().is_empty(), "the site took nothing");

    // The only tab busy and the queue full: `busy`, which a client may retry after a
    // moment (nothing was sent).
    double.set_daily_limit(false);
    let slow = serde_json::json!({"messages": [{"role": "user", "content": "[[slow]] hog"}], "stream": true}).to_string();
    let mut hog = curl(&["-N", "-H", json, "-d", &slow, &url])
        .spawn()
        .expect("curl");
    double.wait_for_chats(1, STEP).await;
    let mut waiting = curl(&["-H", json, "-d", &ask("waiting"), &url])
        .spawn()
        .expect("curl");
    let client = daemon.client().await;
    within(STEP, "a queued request", async {
        // No push event for the queue: ask `status` every 50 ms (bounded).
        while client.status().await.expect("status").pool.queued == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let a = exchange(&["-H", json, "-d", &ask("one more"), &url]).await;
    assert_eq!((a.status, a.code()), (503, "busy".into()), "{}", a.body);
    assert_eq!(a.header("retry-after"), Some("5"));
    assert_eq!(a.header("x-should-retry"), None);
    waiting.kill().await.expect("kill curl");
    hog.kill().await.expect("kill curl");
    assert_eq!(double.chats().len(), 1);
    drop(daemon);
}

/// The official openai package, installed into a virtualenv under target/ once. Tests
/// running at the same time wait for the one that installs it.
async fn openai_python() -> PathBuf {
    static INSTALLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if let Some(p) = std::env::var_os("POED_OPENAI_PYTHON") {
        return PathBuf::from(p);
    }
    let _one_at_a_time = INSTALLING.lock().await;
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("openai-venv");
    let python = venv.join("bin").join("python");
    let ok = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .await;
    if !matches!(ok, Ok(s) if s.success()) {
        let status = within(
            Duration::from_secs(300),
            "venv",
            Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .status(),
        )
        .await;
        assert!(status.expect("python3").success(), "python3 -m venv failed");
        let status = within(
            Duration::from_secs(600),
            "pip install openai",
            Command::new(venv.join("bin").join("pip"))
                .args(["install", "-q", "openai"])
                .status(),
        )
        .await;
        assert!(status.expect("pip").success(), "pip install openai failed");
    }
    python
}

/// `tests/openai_client.py MODE BASE KEY [ARGS]` as a command.
fn openai_script(python: &Path, args: &[&str]) -> Command {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("openai_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_client_works_against_poed() {
    let python = openai_python().await;
    let (_double, daemon, base) = start().await;
    let out = run(openai_script(&python, &["tour", &base, KEY])).await;
    assert_eq!(
        out.code,
        0,
        "openai client failed:\n{}\n{}",
        out.stderr,
        daemon.log()
    );
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("json");
    assert_eq!(
        v["plain"]["content"],
        expected_reply("GPT-4", "hello from openai")
    );
    assert_eq!(v["plain"]["role"], "assistant");
    assert_eq!(v["plain"]["finish"], "stop");
    assert_eq!(v["plain"]["object"], "chat.completion");
    let prompt = "System: Be brief.\nUser: stream [[unicode]] please\nAssistant:";
    assert_eq!(
        v["stream"]["content"],
        expected_reply("GPT-3.5-Turbo", prompt)
    );
    assert_eq!(v["stream"]["roles"], serde_json::json!(["assistant"]));
    assert_eq!(v["stream"]["finishes"], serde_json::json!(["stop"]));
    assert_eq!(v["unknown_model"]["status"], 404);
    assert_eq!(v["unknown_model"]["code"], "model_not_found");
    assert_eq!(v["bad_key"]["status"], 401);
    assert!(v["models"]
        .as_array()
        .expect("models")
        .iter()
        .any(|m| m == "gpt-4"));
    assert_eq!(v["model"], "meta-llama/Llama-2-7b-chat-hf");
}

/// With the SDK's default retries (twice on 429 and 5xx), every failure that may follow a
/// send reaches the site exactly once: poed's answers carry `x-should-retry: false`. The
/// daemon listens on every address with a key, and `/health` is public.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_never_sends_a_failed_prompt_twice() {
    let python = openai_python().await;
    let double = Double::start(fast()).await.expect("double");
    let (daemon, base) = start_front(
        &double,
        Front {
            listen: Some("0.0.0.0:0"),
            key: true,
            toml: "[http]\npublic_health = true\n",
            // [[slow]] takes 10 s: past this reply timeout.
            flags: &["--reply-timeout", "6"],
        },
    )
    .await;
    // Ready once the account is known, from the first fresh chat's page.
    daemon.wait_warm(1).await;
    let a = exchange(&[&format!("{base}/health")]).await;
    assert_eq!(a.status, 200, "public health: {}", a.body);
    let a = exchange(&[&format!("{base}/v1/models")]).await;
    assert_eq!(a.status, 401, "the API itself still needs the key");

    let sends = |marker: &str| {
        double
            .chats()
            .iter()
            .filter(|c| c.prompt.contains(marker))
            .count()
    };
    let cases = [
        ("[[stall]] sdk-1", 504, "stalled", None),
        ("[[slow]] sdk-2", 504, "timeout", None),
        ("[[error]] sdk-3", 502, "site_error", None),
        ("[[rate-limit]] sdk-4", 429, "rate_limited", Some("60")),
    ];
    for (prompt, status, code, retry_after) in cases {
        let out = run(openai_script(&python, &["once", &base, KEY, prompt])).await;
        assert_eq!(out.code, 0, "{prompt}: {}\n{}", out.stderr, daemon.log());
        let v: Value = serde_json::from_str(out.stdout.trim()).expect("json");
        assert_eq!(sends(prompt), 1, "{prompt} reached the site once: {v}");
        assert_eq!(v["status"], status, "{prompt}: {v}");
        assert_eq!(v["code"], code, "{prompt}: {v}");
        assert_eq!(v["should_retry"], "false", "{prompt}: {v}");
        assert_eq!(v["retry_after"].as_str(), retry_after, "{prompt}: {v}");
    }

    // The browser dies mid-reply: `browser_crashed`, and the relaunched browser does not get
    // the prompt again.
    let prompt = "[[slow]] sdk-5";
    let before = double.chats().len();
    let sdk = openai_script(&python, &["once", &base, KEY, prompt])
        .spawn()
        .expect("python");
    double.wait_for_chats(before + 1, STEP).await;
    assert_eq!(sends(prompt), 1, "the send reached the site");
    let victim = chromium_main(&daemon);
    // SAFETY: killing a process of this test's own daemon.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let out = within(STEP, "the SDK", sdk.wait_with_output())
        .await
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["status"], 502, "{v}");
    assert_eq!(v["code"], "browser_crashed", "{v}");
    assert_eq!(v["should_retry"], "false", "{v}");
    assert_eq!(sends(prompt), 1, "reached the site once: {v}");
}

/// A stateless SDK client sends every earlier turn again; poed sends only the new message,
/// in the site chat of the earlier turns. The double's `[[turns]]` answers count the human
/// messages its chat had before, so the answers show the site saw the earlier turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_clients_third_turn_reaches_the_site_alone_in_the_chat_of_the_first_two() {
    let python = openai_python().await;
    let (double, daemon, base) = start_with(DoubleOptions {
        mode: double::Mode::Y2025,
        ..fast()
    })
    .await;
    let prompts = ["one [[turns]]", "two [[turns]]", "three [[turns]]"];
    let mut args = vec!["conversation", &base, KEY];
    args.extend(prompts);
    let out = run(openai_script(&python, &args)).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, daemon.log());
    let turns: Value = serde_json::from_str(out.stdout.trim()).expect("json");
    let answers: Vec<&str> = (0..3)
        .map(|i| turns[i]["answer"].as_str().expect("answer"))
        .collect();
    assert_eq!(
        answers,
        [
            "Earlier human messages: 0",
            "Earlier human messages: 1",
            "Earlier human messages: 2"
        ]
    );
    let conversation = &turns[0]["poed"]["conversation"];
    assert!(conversation.is_i64(), "{turns}");
    for (i, continued) in [false, true, true].into_iter().enumerate() {
        assert_eq!(turns[i]["poed"]["conversation"], *conversation, "{turns}");
        assert_eq!(turns[i]["poed"]["continued"], continued, "{turns}");
        assert!(turns[i]["poed"]["reason"].is_null(), "{turns}");
    }
    // What the site received: three messages in one chat, each sent once, the later two
    // alone (the first carries the system message, flattened as before).
    let taken = double.taken();
    assert_eq!(taken.len(), 3, "{taken:?}");
    assert_eq!(
        taken[0].prompt,
        "System: Be brief.\nUser: one [[turns]]\nAssistant:"
    );
    assert_eq!(taken[1].prompt, "two [[turns]]");
    assert_eq!(taken[2].prompt, "three [[turns]]");
    assert!(!taken[0].chat_code.is_empty());
    assert!(taken.iter().all(|r| r.chat_code == taken[0].chat_code));
    assert_eq!(taken.iter().map(|r| r.turn).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(double.chats().len(), 3, "no send was refused or repeated");
}

/// A client that keeps its own history short names the conversation in a header: the new
/// message alone goes on in the site chat of the earlier turn. A header that is not a
/// number, or names no conversation, is a 400 before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_names_its_conversation_in_a_header_and_sends_only_the_new_message() {
    let (double, daemon, base) = start_with(DoubleOptions {
        mode: double::Mode::Y2025,
        ..fast()
    })
    .await;
    let url = format!("{base}/v1/chat/completions");
    let auth = format!("Authorization: Bearer {KEY}");
    const JSON: &str = "Content-Type: application/json";
    let first = exchange(&["-H", &auth, "-H", JSON, "-d", &ask("one [[turns]]"), &url]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let conversation = first.json()["poed"]["conversation"]
        .as_i64()
        .expect("number");
    daemon.wait_warm(3).await;
    let named = format!("X-Poed-Conversation: {conversation}");
    let second = exchange(&[
        "-H",
        &auth,
        "-H",
        JSON,
        "-H",
        &named,
        "-d",
        &ask("two [[turns]]"),
        &url,
    ])
    .await;
    assert_eq!(second.status, 200, "{}", second.body);
    let v = second.json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Earlier human messages: 1"
    );
    assert_eq!(v["poed"]["conversation"], conversation);
    assert_eq!(v["poed"]["continued"], true, "{v}");
    let taken = double.taken();
    assert_eq!(taken.len(), 2, "{taken:?}");
    assert_eq!(taken[1].prompt, "two [[turns]]");
    assert_eq!(taken[1].chat_code, taken[0].chat_code);

    for (header, code) in [
        ("X-Poed-Conversation: abc", "bad_request"),
        ("X-Poed-Conversation: 987654", "unknown_conversation"),
    ] {
        let a = exchange(&[
            "-H",
            &auth,
            "-H",
            JSON,
            "-H",
            header,
            "-d",
            &ask("three"),
            &url,
        ])
        .await;
        assert_eq!((a.status, a.code()), (400, code.into()), "{}", a.body);
        assert!(
            a.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("conversation"),
            "{}",
            a.body
        );
    }
    assert_eq!(double.taken().len(), 2, "nothing more reached the site");
}

/// `nobody`, for clients run as another user.
const NOBODY: u32 = 65534;

/// curl `url` as `uid` (with `key` as a bearer token): status and body.
async fn curl_as(uid: u32, url: &str, key: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-w", "\n%{http_code}"]);
    if let Some(key) = key {
        cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
    }
    cmd.arg(url)
        .uid(uid)
        .gid(uid)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = run(cmd).await;
    assert_eq!(out.code, 0, "curl as uid {uid}: {}", out.stderr);
    let (body, status) = out.stdout.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), body.to_owned())
}

/// Loopback is open to every account on the machine: without a key, the front door serves
/// only the user poed runs as, whom the kernel names for each connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_another_user_of_the_machine_is_refused() {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if me != 0 {
        eprintln!("skipped: running a client as another user needs root (the unit tests of http::peer cover the lookup)");
        return;
    }
    let double = Double::start(fast()).await.expect("double");
    let (_daemon, base) = start_front(&double, Front::default()).await;
    let health = format!("{base}/health");
    let (status, body) = curl_as(NOBODY, &health, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("permission_denied") && body.contains(&format!("uid {NOBODY}")),
        "{body}"
    );
    assert!(body.contains("--api-key-file"), "says what to do: {body}");
    let models = format!("{base}/v1/models");
    assert_eq!(curl_as(NOBODY, &models, None).await.0, 403);
    // poed's own user gets in (`/health` may say 503 before the account is known).
    let (status, body) = curl_as(me, &models, None).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(curl_as(me, &health, None).await.0, 403);
    // With a key, the key decides, whoever holds it.
    let (_keyed, base) = start_front(
        &double,
        Front {
            key: true,
            ..Front::default()
        },
    )
    .await;
    let models = format!("{base}/v1/models");
    assert_eq!(curl_as(NOBODY, &models, Some(KEY)).await.0, 200);
    assert_eq!(curl_as(NOBODY, &models, Some("wrong")).await.0, 401);
}
