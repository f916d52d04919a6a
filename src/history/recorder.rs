//! The daemon's history writer: one thread owns the SQLite connection, the engine hands it
//! each finished request over a channel and waits (bounded) for it to be written, so a
//! client that got `done` finds its request in `poectl history`.
//!
//! Nothing here can fail a request: a file that cannot be opened turns recording off with
//! an error in the log, a write that fails logs a warning, a slow one is not waited for.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::store::{Outcome, Placement, Record, Store};
use crate::config::HistoryConfig;
use crate::daemon::engine::Completion;
use crate::error::Error;
use crate::protocol::CompleteRequest;

/// How long a request's final event waits for its history write.
const WRITE_WAIT: Duration = Duration::from_secs(2);
/// How often old conversations are pruned (also once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

struct Job {
    record: Record,
    written: oneshot::Sender<()>,
}

/// The engine's handle on the history writer (a no-op when the history is off).
pub struct Recorder {
    tx: Option<mpsc::Sender<Job>>,
}

impl Recorder {
    /// Records nothing.
    pub fn disabled() -> Recorder {
        Recorder { tx: None }
    }

    /// Starts the writer thread on the file `config` names for this `profile`. With
    /// `enabled = false` nothing starts and no file is created.
    pub fn start(config: &HistoryConfig, profile: &std::path::Path) -> Recorder {
        if !config.enabled {
            info!("history is off (history.enabled = false)");
            return Recorder::disabled();
        }
        let path = super::file_path(config, profile);
        let keep_days = config.keep_days;
        let (tx, rx) = mpsc::channel();
        match std::thread::Builder::new()
            .name("poed-history".into())
            .spawn(move || write_loop(path, keep_days, rx))
        {
            Ok(_) => Recorder { tx: Some(tx) },
            Err(e) => {
                error!(error = %e, "cannot start the history writer; nothing will be recorded");
                Recorder::disabled()
            }
        }
    }

    /// Records a finished request; waits at most [`WRITE_WAIT`] for the write. `resolved`
    /// is the (public model, bot) the request's model name resolved to, if it did;
    /// `placement` the conversation the engine placed it in, whose whole messages then are
    /// `request.messages`.
    pub async fn record(
        &self,
        request: &CompleteRequest,
        resolved: Option<(String, String)>,
        result: &Result<Completion, Error>,
        placement: Option<Placement>,
    ) {
        let Some(tx) = &self.tx else { return };
        if request.messages.is_empty() {
            return;
        }
        let (model, bot) = match (result, resolved) {
            (Ok(c), _) => (c.model.clone(), Some(c.bot.clone())),
            (Err(_), Some((model, bot))) => (model, Some(bot)),
            (Err(_), None) => (request.model.clone().unwrap_or_default(), None),
        };
        let outcome = match result {
            Ok(c) => Outcome::Answered {
                text: c.text.clone(),
                timings: c.timings.clone(),
            },
            Err(e) => Outcome::Failed {
                kind: e.kind.as_str().to_owned(),
                message: e.message.clone(),
            },
        };
        let record = Record {
            at_ms: super::now_ms(),
            model,
            bot,
            messages: request.messages.clone(),
            outcome,
            placement,
        };
        let (written, done) = oneshot::channel();
        // A closed channel means the writer could not open the file; it said so at start.
        if tx.send(Job { record, written }).is_err() {
            return;
        }
        if tokio::time::timeout(WRITE_WAIT, done).await.is_err() {
            warn!(
                wait = ?WRITE_WAIT,
                "the history write is slow; the reply goes on without waiting for it"
            );
        }
    }
}

/// The writer thread: opens the file, prunes it, then writes jobs until the engine is gone.
fn write_loop(path: PathBuf, keep_days: u32, rx: mpsc::Receiver<Job>) {
    let mut store = match Store::open(&path) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "the history cannot be used; requests are served but not recorded");
            return;
        }
    };
    info!(path = %path.display(), keep_days, "recording the history");
    let mut pruned = Instant::now();
    prune(&mut store, keep_days);
    while let Ok(job) = rx.recv() {
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            prune(&mut store, keep_days);
        }
        match store.record(&job.record) {
            Ok(id) => debug!(conversation = ?id, "request recorded in the history"),
            Err(e) => {
                warn!(error = %e, "could not record a request in the history; the reply is not affected")
            }
        }
        let _ = job.written.send(());
    }
}

fn prune(store: &mut Store, keep_days: u32) {
    match store.prune(keep_days, super::now_ms()) {
        Ok(0) => {}
        Ok(n) => info!(
            conversations = n,
            keep_days, "pruned old conversations from the history"
        ),
        Err(e) => warn!(error = %e, "could not prune the history"),
    }
}
