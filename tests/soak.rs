//! Soak: 300 requests from three clients at once, with cancels at random moments, clients
//! killed mid-request and the browser killed twice. Afterwards the pool has its configured
//! tabs again, all idle and warm, and the site never received a prompt twice.

mod common;
mod double;

use std::collections::HashMap;
use std::time::Duration;

use common::{within, Daemon};
use double::{Double, DoubleOptions};
use poed::protocol::{ChatMessage, CompleteRequest, Event};

const REQUESTS: usize = 300;
const WORKERS: usize = 3;

/// A small deterministic generator, so a failing run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

fn ask(prompt: String) -> CompleteRequest {
    CompleteRequest {
        conversation: None,
        model: None,
        messages: vec![ChatMessage::new("user", prompt)],
        stream: true,
    }
}

/// The main Chromium process: the child of poed (any of its threads may have started it).
fn chromium_of(poed: u32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{poed}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("chromium"))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_requests_with_cancels_kills_and_crashes_lose_no_tab_and_send_nothing_twice()
{
    let double = Double::start(DoubleOptions {
        chunk_delay_ms: 10,
        ..DoubleOptions::default()
    })
    .await
    .expect("double");
    let daemon = Daemon::start(&double.base_url(), &["--queue", "64"]).await;
    daemon.wait_warm(3).await;
    let seed = 0x5eed_u64;
    eprintln!("soak seed {seed}");
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outcomes = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, usize>::new()));
    let poed_pid = daemon.pid().expect("pid");
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let next = next.clone();
        let outcomes = outcomes.clone();
        let socket = daemon.socket.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = Lcg(seed + w as u64);
            let mut client = poed::client::Client::connect(&socket)
                .await
                .expect("connect");
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= REQUESTS {
                    return;
                }
                if i == REQUESTS / 3 || i == 2 * REQUESTS / 3 {
                    if let Some(pid) = chromium_of(poed_pid) {
                        // SAFETY: killing the daemon's own Chromium, a process of this test.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                let roll = rng.next() % 10;
                let prompt = format!("soak {i}{}", if roll >= 7 { " [[slow]]" } else { "" });
                let mut reply = client.complete(ask(prompt)).await.expect("send");
                let outcome = match roll {
                    // Let it finish.
                    0..=6 => {
                        let mut last = None;
                        while let Some(e) =
                            within(Duration::from_secs(90), "reply", reply.next()).await
                        {
                            last = Some(e);
                        }
                        match last {
                            Some(Event::Done { .. }) => "done".to_string(),
                            Some(Event::Error { kind, .. }) => kind.to_string(),
                            other => format!("ended with {other:?}"),
                        }
                    }
                    // Cancel at a random moment.
                    7 | 8 => {
                        let wait = Duration::from_millis(rng.next() % 400);
                        let _ = tokio::time::timeout(wait, async {
                            while let Some(e) = reply.next().await {
                                if e.is_final() {
                                    return;
                                }
                            }
                        })
                        .await;
                        let _ = client.cancel(&reply.id).await;
                        while within(Duration::from_secs(90), "cancelled reply", reply.next())
                            .await
                            .is_some()
                        {}
                        "cancel".to_string()
                    }
                    // The client dies mid-request.
                    _ => {
                        let wait = Duration::from_millis(rng.next() % 400);
                        let _ = tokio::time::timeout(wait, reply.next()).await;
                        drop(reply);
                        drop(client);
                        client = poed::client::Client::connect(&socket)
                            .await
                            .expect("reconnect");
                        "killed client".to_string()
                    }
                };
                *outcomes.lock().expect("lock").entry(outcome).or_default() += 1;
            }
        }));
    }
    for w in workers {
        within(Duration::from_secs(600), "soak workers", w)
            .await
            .expect("worker");
    }
    eprintln!("outcomes: {:?}", outcomes.lock().expect("lock"));
    // The pool is whole again: every tab back, idle and warm.
    let client = daemon.client().await;
    within(Duration::from_secs(90), "pool whole again", async {
        loop {
            let s = client.status().await.expect("status");
            if s.pool.tabs == 3 && s.pool.idle == 3 && s.pool.warm == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let status = client.status().await.expect("status");
    assert!(status.browser.restarts >= 2, "{status:?}");
    let mut seen = HashMap::<String, usize>::new();
    for c in double.chats() {
        *seen.entry(c.prompt).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "prompts the site received more than once: {twice:?}"
    );
    assert!(
        seen.len() > REQUESTS / 2,
        "only {} prompts reached the site",
        seen.len()
    );
}
