//! The OpenAI-compatible HTTP front door, end to end on the double with real Chromium,
//! exercised by clients nobody here wrote: the official `openai` Python package and curl.

mod common;
mod double;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{run, within, Daemon, STEP};
use double::{expected_reply, Double, DoubleOptions};
use tokio::process::Command;

const KEY: &str = "test-key-123";

async fn start() -> (Double, Daemon, String) {
    let double = Double::start(DoubleOptions {
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key");
    let profile = dir.path().join("profile");
    let socket = dir.path().join("run").join("poed.sock");
    let key_arg = key_file.display().to_string();
    let daemon = Daemon::start_in(
        dir,
        profile,
        socket,
        &double.base_url(),
        &["--http", "127.0.0.1:0", "--api-key-file", &key_arg],
    )
    .await;
    let status = daemon.client().await.status().await.expect("status");
    let base = format!("http://{}", status.http.expect("http address in status"));
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

    // Streaming with curl -N: role first, text deltas, finish_reason last, then [DONE].
    let body = r#"{"model":"gpt-4","messages":[{"role":"user","content":"sse [[long]] please"}],"stream":true,"n":1}"#;
    let out = run(curl(&[
        "-N",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &url,
    ]))
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let data = sse_data(&out.stdout);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
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
    let body = r#"{"messages":[{"role":"user","content":"plain"}]}"#;
    let out = run(curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &url,
    ]))
    .await;
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        expected_reply("GPT-3.5-Turbo", "plain")
    );
    assert!(v["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0);

    // Errors: status and OpenAI's shape.
    let status_of = |args: Vec<String>| async move {
        let mut full = vec![
            "-o".to_string(),
            "/dev/stderr".into(),
            "-w".into(),
            "%{http_code}".into(),
        ];
        full.extend(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = run(curl(&refs)).await;
        (out.stdout, out.stderr)
    };
    let (code, body) = status_of(vec![
        "-d".into(),
        r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#.into(),
        url.clone(),
    ])
    .await;
    assert_eq!(code, "404");
    let e: serde_json::Value = serde_json::from_str(&body).expect("error json");
    assert_eq!(e["error"]["code"], "model_not_found");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("gpt-4"));
    let (code, _) = status_of(vec!["-d".into(), "{not json".into(), url.clone()]).await;
    assert_eq!(code, "400");
    let out = run({
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/v1/models"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    })
    .await;
    assert_eq!(out.stdout, "401", "no key, no answer");

    // An error after streaming began arrives as a final SSE event, then [DONE].
    let body = r#"{"messages":[{"role":"user","content":"[[error]]"}],"stream":true}"#;
    let out = run(curl(&["-N", "-d", body, &url])).await;
    let data = sse_data(&out.stdout);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let err: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).expect("error event");
    assert_eq!(err["error"]["code"], "site_error");

    // A client that disconnects mid-stream cancels its request: the site sees the stop.
    let before = double.chats().len();
    let body = r#"{"messages":[{"role":"user","content":"[[slow]] story"}],"stream":true}"#;
    let mut child = curl(&["-N", "-d", body, &url]).spawn().expect("curl");
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

    // Health and metrics.
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

/// The official openai package, installed into a virtualenv under target/ once.
async fn openai_python() -> PathBuf {
    if let Some(p) = std::env::var_os("POED_OPENAI_PYTHON") {
        return PathBuf::from(p);
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_client_works_against_poed() {
    let python = openai_python().await;
    let (_double, daemon, base) = start().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("openai_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg(&base)
        .arg(KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = run(cmd).await;
    assert_eq!(
        out.code,
        0,
        "openai client failed:\n{}\n{}",
        out.stderr,
        daemon.log()
    );
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json");
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
