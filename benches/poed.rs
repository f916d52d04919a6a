//! The benchmark: poed against the Poe double with real Chromium, and the same requests
//! through two baselines built the way the original Python provider worked, on the same
//! machine, Chromium and double. Prints a table; `scripts/bench.sh` runs it and
//! `docs/BENCHMARKS.md` records the figures.
//!
//! - submit latency: client sends the request -> the double receives the prompt;
//! - relay latency: the double writes a frame -> the client has the delta (first frame,
//!   frames in between) or the final event (last frame);
//! - time to first token and total time for a short reply;
//! - a conversation's turns on the double's 2025 picture: time to first token, and the
//!   relay of each turn's first text frame, which there follows the bot message's start;
//! - 1, 3 and 8 concurrent clients on a 3-tab pool;
//! - poed's RSS and Chromium's total memory, idle and under load;
//! - the DevTools floor: poed's own steps for a request taken straight from the benchmark
//!   on a page of the double (no daemon, no IPC), for what Chromium alone takes;
//! - baseline (a): a new browser per request; baseline (b): one browser, a new page per
//!   request with the `window.WebSocket` wrapper injected and the page polled every 100 ms.
//!
//! For finding where the time goes: `POED_BENCH_QUICK=1` measures only the single-request
//! rows (the floor's included) and 1 and 3 concurrent clients (seconds instead of minutes);
//! `POED_BENCH_TRACE=FILE` runs poed with `poed=trace` logging (the DevTools messages included), prints each run's
//! wall-clock times to stderr and copies the daemon's log to FILE. `POED_BENCH_CONFIG=TOML`
//! gives poed a configuration to try (e.g. Chromium flags), in either mode, and
//! `POED_BENCH_POED=PATH` another build of poed to measure: for comparisons in turns.
//! `POED_BENCH_CONVERSATIONS=1` measures only the conversation rows.
//! `POED_BENCH_CHUNK_MS` sets the double's time between a reply's frames (20 ms), and
//! `POED_BENCH_FLOOR_IDLE_MS` how long the floor's page waits before each request (300 ms).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/double/mod.rs"]
mod double;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chromiumoxide::Browser;
use futures::StreamExt;
use poed::client::Client;
use poed::protocol::{ChatMessage, CompleteRequest, Event};

const SHORT_PROMPT: &str = "Say hello in one short sentence";

/// The UTC time of day of an instant, `HH:MM:SS.ffffff` (to line up with the daemon's log).
fn wall(t: Instant) -> String {
    let now = std::time::SystemTime::now();
    let at = Instant::now()
        .checked_duration_since(t)
        .and_then(|ago| now.checked_sub(ago))
        .unwrap_or(now);
    let us = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let day_us = us % 86_400_000_000;
    let (h, m) = (day_us / 3_600_000_000, day_us / 60_000_000 % 60);
    format!(
        "{h:02}:{m:02}:{:02}.{:06}",
        day_us / 1_000_000 % 60,
        day_us % 1_000_000
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

#[derive(Default)]
struct Series {
    name: String,
    values: Vec<f64>,
}

impl Series {
    fn new(name: &str) -> Self {
        Series {
            name: name.into(),
            values: Vec::new(),
        }
    }
    fn row(&self, unit: &str) -> String {
        format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            self.name,
            self.values.len(),
            percentile(&self.values, 50.0),
            percentile(&self.values, 90.0),
            self.values.iter().cloned().fold(f64::INFINITY, f64::min),
            self.values
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, f64::max),
        ) + unit
    }
}

fn request(prompt: &str) -> CompleteRequest {
    CompleteRequest {
        conversation: None,
        model: None,
        messages: vec![ChatMessage::new("user", prompt)],
        stream: true,
    }
}

/// One streamed request; returns (first delta, final event) instants.
async fn timed_request(client: &Client, prompt: &str) -> (Instant, Option<Instant>, Instant) {
    let (sent, texts, done) = timed_texts(client, prompt).await;
    (sent, texts.first().copied(), done)
}

/// [`timed_request`] with the arrival of every text event: (sent, texts, done).
async fn timed_texts(client: &Client, prompt: &str) -> (Instant, Vec<Instant>, Instant) {
    let sent = Instant::now();
    let mut reply = client.complete(request(prompt)).await.expect("send");
    let mut texts = Vec::new();
    while let Some(event) = reply.next().await {
        match event {
            Event::Delta { .. } | Event::Replace { .. } => texts.push(Instant::now()),
            Event::Done { .. } => return (sent, texts, Instant::now()),
            Event::Error { kind, message, .. } => panic!("request failed: {kind}: {message}"),
            _ => {}
        }
    }
    panic!("connection closed");
}

fn kib_of(pid: u32, field: &str) -> u64 {
    let file = if field == "Pss:" {
        "smaps_rollup"
    } else {
        "status"
    };
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// All descendants of `root`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The command may contain spaces: fields resume after the last ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            if let Some(ppid) = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (child, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            out.push(*child);
            frontier.push(*child);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    poed_rss_kib: u64,
    chromium_rss_kib: u64,
    chromium_pss_kib: u64,
}

fn memory(poed: u32) -> Memory {
    let kids = descendants(poed);
    Memory {
        poed_rss_kib: kib_of(poed, "VmRSS:"),
        chromium_rss_kib: kids.iter().map(|p| kib_of(*p, "VmRSS:")).sum(),
        chromium_pss_kib: kids.iter().map(|p| kib_of(*p, "Pss:")).sum(),
    }
}

// ---------------------------------------------------------------------------------------
// Baselines: the original provider's method, on the same Chromium and double.

/// The original's injected script: wraps `window.WebSocket` and keeps the bot's latest text.
const WS_WRAPPER: &str = r#"(() => {
  const Orig = window.WebSocket;
  window.__poe = {text: '', state: ''};
  function Wrapped(...args) {
    const ws = new Orig(...args);
    ws.addEventListener('message', (e) => {
      try {
        const outer = JSON.parse(e.data);
        for (const s of (outer.messages || [])) {
          const m = JSON.parse(s);
          const a = m.payload && m.payload.data && m.payload.data.messageAdded;
          if (a && a.author !== 'human' && a.author !== 'chat_break') {
            window.__poe.text = a.text; window.__poe.state = a.state;
          }
        }
      } catch (_) {}
    });
    return ws;
  }
  Wrapped.prototype = Orig.prototype;
  Object.assign(Wrapped, Orig);
  window.WebSocket = Wrapped;
})();"#;

const POLL: Duration = Duration::from_millis(100);

async fn eval_json(page: &chromiumoxide::Page, expr: &str) -> serde_json::Value {
    page.evaluate(expr)
        .await
        .ok()
        .and_then(|r| r.into_value::<serde_json::Value>().ok())
        .unwrap_or(serde_json::Value::Null)
}

/// One request the original way on `browser`: new page, injected wrapper, poll every 100 ms.
/// Returns (first text, complete) instants.
async fn baseline_request(
    browser: &Browser,
    url: &str,
    prompt: &str,
) -> (Option<Instant>, Instant) {
    let page = browser.new_page("about:blank").await.expect("page");
    page.evaluate_on_new_document(WS_WRAPPER)
        .await
        .expect("inject");
    page.goto(url).await.expect("goto");
    let sel = poed::config::Selectors::default();
    // Wait for the prompt box and the enabled send button, polling like the original.
    let focus = format!(
        "(() => {{ const t = document.querySelector({:?}); if (!t) return false; t.focus(); return true; }})()",
        sel.prompt_box
    );
    while eval_json(&page, &focus).await != serde_json::Value::Bool(true) {
        tokio::time::sleep(POLL).await;
    }
    page.execute(chromiumoxide::cdp::browser_protocol::input::InsertTextParams::new(prompt))
        .await
        .expect("type");
    let click = format!(
        "(() => {{ const b = document.querySelector({:?}); if (!b || b.disabled) return false; b.click(); return true; }})()",
        sel.send_button
    );
    while eval_json(&page, &click).await != serde_json::Value::Bool(true) {
        tokio::time::sleep(POLL).await;
    }
    let mut first = None;
    loop {
        tokio::time::sleep(POLL).await;
        let v = eval_json(&page, "window.__poe").await;
        if v["text"].as_str().is_some_and(|t| !t.is_empty()) {
            first.get_or_insert_with(Instant::now);
        }
        if v["state"] == "complete" {
            let done = Instant::now();
            let _ = page.close().await;
            return (first, done);
        }
    }
}

async fn launch_browser(profile: &std::path::Path) -> (Browser, tokio::task::JoinHandle<()>) {
    let cfg = poed::config::BrowserConfig {
        profile: profile.to_owned(),
        ..Default::default()
    };
    let config = poed::browser::supervisor::chromium_config(&cfg).expect("config");
    let (browser, mut handler) = Browser::launch(config).await.expect("launch");
    let task = tokio::spawn(async move { while let Some(Ok(())) = handler.next().await {} });
    (browser, task)
}

/// The DevTools floor under poed's figures: poed's own steps for one request (the wait for
/// the send button armed ahead, the pointer resting on the button, the prompt's text, the
/// click), taken straight from the benchmark with poed's DevTools helpers, on a page of the
/// double in its own window of a Chromium launched with poed's flags, read over
/// chromiumoxide's own connection: no daemon, no pipe bridge, no IPC, no client. The reply's
/// frames are timed as their `Network.webSocketFrameReceived` events reach this process.
/// Its requests take turns with poed's, so both meet the machine in the same state: what
/// poed's rows take beyond these is poed's.
struct Floor {
    browser: Browser,
    handler: tokio::task::JoinHandle<()>,
    page: chromiumoxide::Page,
    _profile: tempfile::TempDir,
    /// How long a fresh chat waits before its request, as poed's warm tabs wait.
    idle: Duration,
    submit: Series,
    relay_first: Series,
    relay_between: Series,
    relay_last: Series,
}

const FLOOR_LIMIT: Duration = Duration::from_secs(10);

impl Floor {
    /// Launches its Chromium and sends one request unmeasured (a new browser's first page
    /// is slower than the others).
    async fn start(double: &double::Double, bot_url: &str) -> Floor {
        use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
        let profile = tempfile::tempdir().expect("tmp");
        let (browser, handler) = launch_browser(profile.path()).await;
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .new_window(true)
            .build()
            .expect("target params");
        let page = browser.new_page(params).await.expect("page");
        let idle = Duration::from_millis(
            std::env::var("POED_BENCH_FLOOR_IDLE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(300),
        );
        let mut floor = Floor {
            browser,
            handler,
            page,
            _profile: profile,
            idle,
            submit: Series::new("DevTools floor (no daemon): submit latency"),
            relay_first: Series::new("DevTools floor: relay, first frame (double write -> event)"),
            relay_between: Series::new("DevTools floor: relay, frames in between"),
            relay_last: Series::new("DevTools floor: relay, last frame"),
        };
        floor.request(double, bot_url, "warm up", false).await;
        floor
    }

    /// One request in a fresh chat, made ready off the clock as poed makes its warm tabs
    /// ready; measured unless `measured` is false.
    async fn request(
        &mut self,
        double: &double::Double,
        bot_url: &str,
        prompt: &str,
        measured: bool,
    ) {
        use chromiumoxide::cdp::browser_protocol::network::EventWebSocketFrameReceived;
        use poed::browser::cdp::{self, ArmedWait, Wanted};
        use poed::site::poe::frames::{parse_frame, Update};

        let (page, limit) = (&self.page, FLOOR_LIMIT);
        let sel = poed::config::Selectors::default();
        let send = [Wanted {
            selector: &sel.send_button,
            enabled: true,
        }];
        let prompt_box = [Wanted {
            selector: &sel.prompt_box,
            enabled: false,
        }];
        cdp::goto(page, bot_url, limit).await.expect("goto");
        let found = cdp::wait_for_first(page, &prompt_box, limit).await;
        assert_eq!(found.ok().and_then(|f| f.index), Some(0), "prompt box");
        assert!(cdp::focus(page, &sel.prompt_box, limit)
            .await
            .expect("focus"));
        let armed = ArmedWait::arm(page, &send).await.expect("armed wait");
        cdp::hover(page, &sel.send_button, limit)
            .await
            .expect("hover");
        let mut frames = page
            .event_listener::<EventWebSocketFrameReceived>()
            .await
            .expect("frame events");
        let before = double.chats().len();
        // A request finds its tab waiting, and a page that has just been worked on takes its
        // input 2-3 ms sooner than one that has waited 100 ms or more (measured): so the floor
        // waits too, as long as a tab of poed's waits between the benchmark's requests.
        tokio::time::sleep(self.idle).await;

        let sent = Instant::now();
        let text = cdp::insert_text(page, prompt, limit);
        let (entered, button) = futures::join!(text, armed.found(limit));
        entered.expect("text");
        let button = button.expect("send button");
        assert_eq!(button.index, Some(0), "send button enabled");
        // The click's answer comes after the page's handlers: read the frames meanwhile.
        let click = cdp::click_at(page, button.x, button.y, limit);
        let read = async {
            let mut bot_frames = Vec::new();
            while let Some(event) = frames.next().await {
                let at = Instant::now();
                let mut ended = false;
                for update in parse_frame(&event.response.payload_data) {
                    if let Update::Message(m) = update {
                        if !m.human && !m.chat_break && !m.text.is_empty() {
                            bot_frames.push(at);
                            ended |= m.state != "incomplete";
                        }
                    }
                }
                if ended {
                    break;
                }
            }
            bot_frames
        };
        let (clicked, bot_frames) =
            tokio::time::timeout(limit, async { futures::join!(click, read) })
                .await
                .expect("the floor's reply in time");
        clicked.expect("click");
        if !measured {
            return;
        }
        let chats = double.chats();
        let chat = &chats[before];
        self.submit
            .values
            .push(ms(chat.received_at.duration_since(sent)));
        if bot_frames.len() == chat.frame_times.len() && bot_frames.len() >= 3 {
            let relay: Vec<f64> = bot_frames
                .iter()
                .zip(&chat.frame_times)
                .map(|(got, wrote)| ms(got.duration_since(*wrote)))
                .collect();
            self.relay_first.values.push(relay[0]);
            self.relay_between
                .values
                .extend_from_slice(&relay[1..relay.len() - 1]);
            self.relay_last.values.push(relay[relay.len() - 1]);
        }
    }

    async fn stop(self) -> [Series; 4] {
        let Floor {
            browser,
            handler,
            page,
            submit,
            relay_first,
            relay_between,
            relay_last,
            ..
        } = self;
        drop(page);
        close_browser(browser, handler).await;
        [submit, relay_first, relay_between, relay_last]
    }
}

/// Closes a browser from [`launch_browser`] and waits for its process to end.
async fn close_browser(mut browser: Browser, handler: tokio::task::JoinHandle<()>) {
    let _ = browser.close().await;
    let _ = browser.wait().await;
    handler.abort();
}

// ---------------------------------------------------------------------------------------

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .or_else(|| {
            std::env::var("POED_BENCH_RUNS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(runs));
}

async fn bench(runs: usize) {
    // `POED_BENCH_CONVERSATIONS=1`: only the conversation rows (a minute instead of eight).
    if std::env::var_os("POED_BENCH_CONVERSATIONS").is_some() {
        println!("| conversations (2025 double) | n | median ms | p90 ms | min ms | max ms |");
        println!("|---|---|---|---|---|---|");
        for series in &conversations(runs).await {
            println!("{}", series.row(""));
        }
        return;
    }
    let double = Arc::new(
        double::Double::start(double::DoubleOptions {
            chunk_delay_ms: std::env::var("POED_BENCH_CHUNK_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(20),
            // The 2023 picture: every bot frame it records carries reply text, so "double
            // wrote the frame -> client has the text" is exact (2025 frames include empty and
            // repeated ones that would blur the relay figures). Enough points, should the
            // mode be switched.
            mode: double::Mode::Y2023,
            points: 10_000_000,
            // Each page gets its own chat's frames, as in every earlier run of these rows
            // (an account-wide channel adds the other replies' frames to every busy tab).
            updates_to_all_pages: false,
            ..Default::default()
        })
        .await
        .expect("double"),
    );
    let url = double.base_url();
    // poed as a user gets it: default settings (3 tabs, no pacing while the site takes sends).
    // `POED_BENCH_TRACE=FILE` instead runs it with the tests' flags and `poed=trace` logging,
    // and copies its log (with timestamps) to FILE at the end, to see where the time goes.
    let trace = std::env::var_os("POED_BENCH_TRACE").map(std::path::PathBuf::from);
    // `POED_BENCH_CONFIG=TOML`: a configuration to try (e.g. Chromium flags), on top of the
    // defaults or of the trace run's flags; the later `--config` is the one poed reads.
    let tried_dir = tempfile::tempdir().expect("tempdir");
    let tried = tried_dir.path().join("tried-config.toml");
    let toml = std::env::var("POED_BENCH_CONFIG").unwrap_or_default();
    std::fs::write(&tried, toml).expect("config");
    let tried = tried.display().to_string();
    let extra = ["--config", tried.as_str()];
    let daemon = match &trace {
        None => common::Daemon::start_as_users_get_it(&url, &extra).await,
        Some(_) => {
            let dir = tempfile::tempdir().expect("tempdir");
            let profile = dir.path().join("profile");
            let socket = dir.path().join("run").join("poed.sock");
            let env = [("RUST_LOG", "poed=trace,warn")];
            common::Daemon::start_with_env(dir, profile, socket, &url, &extra, &env).await
        }
    };
    // `POED_BENCH_QUICK=1`: only the single-request rows and 1 and 3 concurrent clients.
    let quick = std::env::var_os("POED_BENCH_QUICK").is_some();
    let poed_pid = daemon.pid().expect("pid");
    let client = daemon.client().await;
    // Warm-up: one request per tab, then let the pool settle warm.
    for _ in 0..3 {
        timed_request(&client, "warm up").await;
    }
    wait_warm(&client, 3).await;
    let idle = memory(poed_pid);

    let mut submit = Series::new("submit latency (client send -> double has prompt)");
    let mut relay_first = Series::new("relay latency, first frame (double write -> client delta)");
    let mut relay_between =
        Series::new("relay latency, frames in between (double write -> client delta)");
    let mut relay_last = Series::new("relay latency, last frame (double write -> client done)");
    let mut ttft = Series::new("poed: time to first token, short reply");
    let mut total = Series::new("poed: total time, short reply");
    let bot_url = format!("{url}/GPT-3.5-Turbo");
    let mut floor = Floor::start(&double, &bot_url).await;
    for i in 0..runs {
        let before = double.chats().len();
        let (sent, texts, done) = timed_texts(&client, &format!("{SHORT_PROMPT} #{i}")).await;
        let first = texts.first().copied();
        let chats = double.chats();
        let chat = &chats[before];
        // Each of the double's 2023 bot frames adds text: one delta per frame, in order
        // (unless poed merged some for a slow reader, which this reader is not).
        if texts.len() == chat.frame_times.len() && texts.len() >= 3 {
            let n = texts.len();
            for (got, frame) in texts.iter().zip(&chat.frame_times).take(n - 1).skip(1) {
                relay_between.values.push(ms(got.duration_since(*frame)));
            }
        }
        submit
            .values
            .push(ms(chat.received_at.duration_since(sent)));
        if let (Some(f), Some(frame)) = (first, chat.frame_times.first()) {
            relay_first.values.push(ms(f.duration_since(*frame)));
            ttft.values.push(ms(f.duration_since(sent)));
        }
        if let Some(frame) = chat.frame_times.last() {
            relay_last.values.push(ms(done.duration_since(*frame)));
        }
        total.values.push(ms(done.duration_since(sent)));
        if trace.is_some() {
            // Wall-clock times, to line up with the daemon's log.
            let at = wall;
            let frames: Vec<String> = chat.frame_times.iter().copied().map(at).collect();
            eprintln!(
                "run {i}: sent {} double-has-prompt {} frames {frames:?} first-delta {} done {}",
                at(sent),
                at(chat.received_at),
                first.map(at).unwrap_or_default(),
                at(done)
            );
        }
        floor
            .request(&double, &bot_url, &format!("{SHORT_PROMPT} f{i}"), true)
            .await;
        wait_warm(&client, 3).await;
    }
    let floor = floor.stop().await;

    // Sequential requests 0.3 s apart, like a script calling `poectl ask` in a loop: with
    // the default settings, and with the old fixed pacing (1.5 s between sends) for contrast.
    let mut seq_default =
        Series::new("sequential, 0.3 s apart, default settings: time to first token");
    for i in 0..if quick { 0 } else { runs } {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (sent, first, _) = timed_request(&client, &format!("{SHORT_PROMPT} s{i}")).await;
        if let Some(f) = first {
            seq_default.values.push(ms(f.duration_since(sent)));
        }
    }
    let mut seq_paced =
        Series::new("sequential, 0.3 s apart, old fixed pacing 1.5 s: time to first token");
    if !quick {
        let paced =
            common::Daemon::start_as_users_get_it(&url, &["--min-send-interval-ms", "1500"]).await;
        let c = paced.client().await;
        for _ in 0..3 {
            timed_request(&c, "warm up").await;
        }
        wait_warm(&c, 3).await;
        for i in 0..(runs / 3).max(5) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (sent, first, _) = timed_request(&c, &format!("{SHORT_PROMPT} p{i}")).await;
            if let Some(f) = first {
                seq_paced.values.push(ms(f.duration_since(sent)));
            }
        }
        drop(c);
        let _ = paced.stop().await;
    }
    wait_warm(&client, 3).await;

    // Concurrency on the 3-tab pool.
    // Rounds of 1, 3 (and 8) clients in turn, so that a change in the machine's load falls
    // on every row alike; ten rounds at least (a median of three was mostly noise). Nothing
    // else runs while a round is timed: memory under load is sampled in a round of its own
    // afterwards (reading Chromium's `smaps_rollup` costs about 30 ms of CPU per sweep).
    let mut conc_rows = Vec::new();
    let reps = (runs / 2).max(10);
    let clients: &[usize] = if quick { &[1, 3] } else { &[1, 3, 8] };
    let mut walls_of: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
    for r in 0..reps {
        for (&n, walls) in clients.iter().zip(walls_of.iter_mut()) {
            wait_warm(&client, 3).await;
            let start = Instant::now();
            concurrent_round(&daemon.socket, n, &format!("{r}")).await;
            walls.push(ms(start.elapsed()));
        }
    }
    let loaded = if quick {
        Memory::default()
    } else {
        // Memory under load: the peak over one untimed round of 8 clients, sampled on a
        // thread of its own so the sweeps never hold up the runtime the double runs on.
        wait_warm(&client, 3).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut max = Memory::default();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let m = memory(poed_pid);
                    max.poed_rss_kib = max.poed_rss_kib.max(m.poed_rss_kib);
                    max.chromium_rss_kib = max.chromium_rss_kib.max(m.chromium_rss_kib);
                    max.chromium_pss_kib = max.chromium_pss_kib.max(m.chromium_pss_kib);
                    std::thread::sleep(Duration::from_millis(100));
                }
                max
            })
        };
        concurrent_round(&daemon.socket, 8, "memory").await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().expect("sampler")
    };
    for (&n, walls) in clients.iter().zip(&walls_of) {
        let med = percentile(walls, 50.0);
        conc_rows.push((n, med, percentile(walls, 90.0), n as f64 / (med / 1000.0)));
    }
    drop(client);
    if let Some(to) = &trace {
        let _ = std::fs::copy(daemon.dir.path().join("poed.log"), to);
        // The double's side of the concurrent rounds: when each chat's prompt came and its
        // frames went out, in ms after the prompt.
        for chat in double
            .chats()
            .iter()
            .filter(|c| c.prompt.starts_with("concurrent"))
        {
            let frames: Vec<String> = chat
                .frame_times
                .iter()
                .map(|t| format!("{:.1}", ms(t.duration_since(chat.received_at))))
                .collect();
            eprintln!(
                "{}: prompt at {} frames {frames:?}",
                chat.prompt,
                wall(chat.received_at)
            );
        }
    }
    let _ = daemon.stop().await;
    let single = [
        &submit,
        &relay_first,
        &relay_between,
        &relay_last,
        &ttft,
        &total,
        &floor[0],
        &floor[1],
        &floor[2],
        &floor[3],
    ];
    if quick {
        for s in single {
            println!("{}", s.row(""));
        }
        for (n, med, p90, tput) in &conc_rows {
            println!("| {n} | {med:.0} | {p90:.0} | {tput:.2} |");
        }
        println!(
            "3 clients / 1 client: {:.2}x",
            conc_rows[1].1 / conc_rows[0].1
        );
        return;
    }

    // Baselines on the same Chromium and double.
    let mut b_total = Series::new("baseline (b) injected wrapper + 100 ms polling: total");
    let mut b_ttft = Series::new("baseline (b): time to first token");
    let mut b_submit = Series::new("baseline (b): submit latency");
    {
        let dir = tempfile::tempdir().expect("tmp");
        let (browser, handler) = launch_browser(dir.path()).await;
        for i in 0..runs {
            let before = double.chats().len();
            let sent = Instant::now();
            let (first, done) =
                baseline_request(&browser, &bot_url, &format!("{SHORT_PROMPT} b{i}")).await;
            let chats = double.chats();
            b_submit
                .values
                .push(ms(chats[before].received_at.duration_since(sent)));
            if let Some(f) = first {
                b_ttft.values.push(ms(f.duration_since(sent)));
            }
            b_total.values.push(ms(done.duration_since(sent)));
        }
        close_browser(browser, handler).await;
    }
    let mut a_total = Series::new("baseline (a) new browser per request: total");
    let mut a_ttft = Series::new("baseline (a): time to first token");
    let mut a_submit = Series::new("baseline (a): submit latency");
    for i in 0..(runs / 3).max(5) {
        let dir = tempfile::tempdir().expect("tmp");
        let before = double.chats().len();
        let sent = Instant::now();
        let (browser, handler) = launch_browser(dir.path()).await;
        let (first, done) =
            baseline_request(&browser, &bot_url, &format!("{SHORT_PROMPT} a{i}")).await;
        let chats = double.chats();
        a_submit
            .values
            .push(ms(chats[before].received_at.duration_since(sent)));
        if let Some(f) = first {
            a_ttft.values.push(ms(f.duration_since(sent)));
        }
        a_total.values.push(ms(done.duration_since(sent)));
        close_browser(browser, handler).await;
    }

    let turns = conversations(runs).await;

    println!("## poed benchmark ({runs} runs; the double streams a short reply in ~5 frames, 20 ms apart)\n");
    println!("| measure | n | median ms | p90 ms | min ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for s in single.into_iter().chain([
        &seq_default,
        &seq_paced,
        &b_submit,
        &b_ttft,
        &b_total,
        &a_submit,
        &a_ttft,
        &a_total,
    ]) {
        println!("{}", s.row(""));
    }
    println!("\n| conversations (2025 double) | n | median ms | p90 ms | min ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for series in &turns {
        println!("{}", series.row(""));
    }
    println!("\n| concurrent clients (3 tabs), {reps} rounds in turn | median wall ms | p90 wall ms | replies/s |");
    println!("|---|---|---|---|");
    for (n, med, p90, tput) in &conc_rows {
        println!("| {n} | {med:.0} | {p90:.0} | {tput:.2} |");
    }
    let one = conc_rows[0].1;
    let three = conc_rows[1].1;
    println!(
        "\n3 clients / 1 client wall time: {:.2}x (target < 1.3x)",
        three / one
    );
    println!(
        "sequential 0.3 s apart, default settings / single request, time to first token: {:.2}x (target < 1.5x)",
        percentile(&seq_default.values, 50.0) / percentile(&ttft.values, 50.0)
    );
    println!("\n| memory | idle | under load (8 clients) |");
    println!("|---|---|---|");
    println!(
        "| poed RSS | {:.1} MiB | {:.1} MiB |",
        idle.poed_rss_kib as f64 / 1024.0,
        loaded.poed_rss_kib as f64 / 1024.0
    );
    println!(
        "| Chromium RSS, all processes summed | {:.0} MiB | {:.0} MiB |",
        idle.chromium_rss_kib as f64 / 1024.0,
        loaded.chromium_rss_kib as f64 / 1024.0
    );
    println!(
        "| Chromium PSS, all processes summed | {:.0} MiB | {:.0} MiB |",
        idle.chromium_pss_kib as f64 / 1024.0,
        loaded.chromium_pss_kib as f64 / 1024.0
    );
    let p = percentile(&total.values, 50.0);
    println!("\n| ratio of medians (short reply, total time) | value |");
    println!("|---|---|");
    println!(
        "| baseline (a) new browser per request / poed | {:.1}x |",
        percentile(&a_total.values, 50.0) / p
    );
    println!(
        "| baseline (b) wrapper + polling / poed | {:.1}x |",
        percentile(&b_total.values, 50.0) / p
    );
    println!(
        "| baseline (a) / poed, time to first token | {:.1}x |",
        percentile(&a_ttft.values, 50.0) / percentile(&ttft.values, 50.0)
    );
    println!(
        "| baseline (b) / poed, time to first token | {:.1}x |",
        percentile(&b_ttft.values, 50.0) / percentile(&ttft.values, 50.0)
    );
}

/// Waits until `n` tabs are idle and warm (the pool re-warms tabs in the background).
/// One round of `n` clients, each on its own connection, sending at once; returns when all
/// have their answer.
async fn concurrent_round(socket: &std::path::Path, n: usize, round: &str) {
    let mut tasks = Vec::new();
    for k in 0..n {
        let socket = socket.to_path_buf();
        let prompt = format!("concurrent {n}/{round}/{k}");
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(&socket).await.expect("connect");
            timed_request(&c, &prompt).await
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

async fn wait_warm(client: &Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = client.status().await.expect("status");
        if s.pool.warm >= n || Instant::now() > deadline {
            return;
        }
        // Between measurements only: status has no push notification of pool changes.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Time to first token of a conversation's turns on the double's 2025 picture (chats live at
/// `/chat/{code}`), default settings: the first turn in a fresh chat; the second sent alone
/// in its chat, whose page is opened first (cold: a first turn leaves its tab fresh for new
/// chats); the third in the page the second left open (warm); the fourth sent the moment
/// the third ended, while its tab is still being made ready (as a script chaining turns).
/// Also the relay of each turn's first text frame: in this picture, as on today's site, it
/// follows the bot message's empty start (by the double's 20 ms between frames), after
/// the burst of work the click sets off in the page.
async fn conversations(runs: usize) -> [Series; 5] {
    let double = double::Double::start(double::DoubleOptions {
        chunk_delay_ms: 20,
        mode: double::Mode::Y2025,
        points: 10_000_000,
        ..Default::default()
    })
    .await
    .expect("double");
    let daemon = common::Daemon::start_as_users_get_it(&double.base_url(), &[]).await;
    let client = daemon.client().await;
    for _ in 0..3 {
        timed_request(&client, "warm up").await;
    }
    wait_warm(&client, 3).await;
    let mut fresh = Series::new("first turn: a fresh chat");
    let mut cold = Series::new("second turn: only it sent, chat page opened first (cold)");
    let mut warm = Series::new("third turn: only it sent, chat page kept open (warm)");
    let mut at_once = Series::new("fourth turn: sent the moment the third ended");
    let mut relay_text =
        Series::new("every turn: relay latency, first text frame (double write -> client delta)");
    for i in 0..runs {
        let mut messages = Vec::new();
        let turns = [&mut fresh, &mut cold, &mut warm, &mut at_once];
        for (k, series) in turns.into_iter().enumerate() {
            messages.push(ChatMessage::new("user", format!("{SHORT_PROMPT} c{i}.{k}")));
            let before = double.chats().len();
            let sent = Instant::now();
            let mut reply = client
                .complete(CompleteRequest {
                    messages: messages.clone(),
                    ..Default::default()
                })
                .await
                .expect("send");
            let mut first = None;
            let answer = loop {
                match reply.next().await.expect("an event") {
                    Event::Delta { .. } | Event::Replace { .. } => {
                        first.get_or_insert_with(Instant::now);
                    }
                    Event::Done {
                        text, continued, ..
                    } => {
                        assert_eq!(continued, k > 0, "turn {k} of conversation {i}");
                        break text;
                    }
                    Event::Error { kind, message, .. } => {
                        panic!("request failed: {kind}: {message}")
                    }
                    _ => {}
                }
            };
            if let Some(f) = first {
                series.values.push(ms(f.duration_since(sent)));
                // The bot message's frames: its empty start, then its text.
                if let Some(frame) = double
                    .chats()
                    .get(before)
                    .and_then(|c| c.frame_times.get(1))
                {
                    relay_text.values.push(ms(f.duration_since(*frame)));
                }
            }
            messages.push(ChatMessage::new("assistant", answer));
            // The fourth turn follows the third at once.
            if k != 2 {
                wait_warm(&client, 3).await;
            }
        }
    }
    drop(client);
    let _ = daemon.stop().await;
    [fresh, cold, warm, at_once, relay_text]
}
