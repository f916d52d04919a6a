//! The daemon's history writer. A finished request's record is written in the request's
//! own task, right after its final event went out: the file's write lock is taken before
//! that event ([`Recorder::hold`]), so `poectl history`, which waits for that lock
//! ([`Store::open_after_writes`]), still finds a request whose client got `done`.
//!
//! The file is in write-ahead-log mode (see [`Store::open`]): a record costs a few appends
//! and no fsync, a few hundred microseconds of work, done where the request ends, after
//! the task that writes the final event to the client had its turn: handing it to another
//! thread cost more than the write when the machine is busy, which it is when a reply ends
//! (the browser reloads the tab). A second thread, on a connection of its own, prunes old
//! conversations and folds the log into the file; a record waits for it only if it comes
//! during a checkpoint (after 30 s without records: its own disk writes, and at most 100 ms
//! waiting for a reader) or a prune (hourly).
//!
//! Nothing here can fail a request: a file that cannot be opened turns recording off with
//! an error in the log, a write that fails logs a warning.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::store::{Outcome, Placement, Record, Store};
use crate::config::HistoryConfig;
use crate::daemon::engine::Completion;
use crate::error::Error;
use crate::protocol::CompleteRequest;

/// How often old conversations are pruned (also once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The write-ahead log is folded into the file once no record came for this long... (the
/// first records after a checkpoint wait for the disk on a busy machine: while requests
/// keep coming, their records only append to the log)
const CHECKPOINT_IDLE: Duration = Duration::from_secs(30);
/// ...or this long after the first record it holds, so that it stays small under load.
const CHECKPOINT_AT_MOST: Duration = Duration::from_secs(300);

/// The open history and the nudge of its maintenance thread.
struct Writer {
    /// Held from a record's lock to its write, across the final event's turn.
    store: tokio::sync::Mutex<Store>,
    /// One nudge per record (a full channel: a checkpoint is already owed).
    maintenance: Option<mpsc::SyncSender<()>>,
}

/// The engine's handle on the history writer (a no-op when the history is off).
pub struct Recorder {
    writer: Option<Arc<Writer>>,
}

impl Recorder {
    /// Records nothing.
    pub fn disabled() -> Recorder {
        Recorder { writer: None }
    }

    /// Opens (creating and migrating it if need be) the file `config` names for this
    /// `profile`, and starts its maintenance thread. With `enabled = false` nothing starts
    /// and no file is created.
    pub fn start(config: &HistoryConfig, profile: &std::path::Path) -> Recorder {
        if !config.enabled {
            info!("history is off (history.enabled = false)");
            return Recorder::disabled();
        }
        let path = super::file_path(config, profile);
        let store = match Store::open(&path) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "the history cannot be used; requests are served but not recorded");
                return Recorder::disabled();
            }
        };
        info!(path = %path.display(), keep_days = config.keep_days, "recording the history");
        Recorder {
            writer: Some(Arc::new(Writer {
                store: tokio::sync::Mutex::new(store),
                maintenance: start_maintenance(path, config.keep_days),
            })),
        }
    }

    /// Takes the history's write lock for the record of a finished request, to be written
    /// by [`Held::write`] once the request's final event is on its way (readers opened with
    /// [`Store::open_after_writes`] wait for it meanwhile). `resolved` is the (public model,
    /// bot) the request's model name resolved to, if it did; `placement` the conversation
    /// the engine placed it in, whose whole messages then are `request.messages`. `None`
    /// when there is nothing to record (history off, no messages).
    pub async fn hold(
        &self,
        request: &CompleteRequest,
        resolved: Option<(String, String)>,
        result: &Result<Completion, Error>,
        placement: Option<Placement>,
    ) -> Option<Held<'_>> {
        let writer = self.writer.as_deref()?;
        if request.messages.is_empty() {
            return None;
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
        let mut store = writer.store.lock().await;
        // A lock of the file's own (microseconds; longer only during a checkpoint).
        let locked = match store.begin_record() {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "history write lock not taken ahead; the record is written in one go");
                false
            }
        };
        Some(Held {
            writer,
            store: Some(store),
            locked,
            record,
        })
    }
}

/// A finished request's record, the history's write lock taken for it. Dropped unwritten
/// (its task ended), it lets go of the lock and records nothing.
pub struct Held<'a> {
    writer: &'a Writer,
    store: Option<tokio::sync::MutexGuard<'a, Store>>,
    locked: bool,
    record: Record,
}

impl Held<'_> {
    /// Writes the record, right here: this blocks the calling worker for the write (a few
    /// hundred microseconds), so call it once the final event's writer had its turn.
    /// Handing it to another thread, or telling the runtime with `block_in_place`, made
    /// the daemon wait for thread wake-ups, milliseconds on a busy machine.
    pub fn write(mut self) {
        let Some(mut store) = self.store.take() else {
            return;
        };
        let began = Instant::now();
        let written = if self.locked {
            store.commit_record(&self.record)
        } else {
            store.record(&self.record)
        };
        drop(store);
        match written {
            Ok(id) => {
                debug!(conversation = ?id, took = ?began.elapsed(), "request recorded in the history")
            }
            Err(e) => {
                warn!(error = %e, "could not record a request in the history; the reply is not affected")
            }
        }
        if let Some(nudge) = &self.writer.maintenance {
            let _ = nudge.try_send(());
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(mut store) = self.store.take() {
            warn!("a request's record was dropped unwritten; it is not in the history");
            store.abandon_record();
        }
    }
}

/// Starts the thread that prunes the history and folds its write-ahead log into the file,
/// on a connection of its own: a passive checkpoint there never holds up a record. Returns
/// its nudge (one per record). `None` if it could not start (the log then grows until poed
/// ends, when SQLite folds it in).
fn start_maintenance(path: PathBuf, keep_days: u32) -> Option<mpsc::SyncSender<()>> {
    let (nudge, nudges) = mpsc::sync_channel(1);
    let started = std::thread::Builder::new()
        .name("poed-history".into())
        .spawn(move || maintenance_loop(path, keep_days, nudges));
    match started {
        Ok(_) => Some(nudge),
        Err(e) => {
            warn!(error = %e, "cannot start the history's maintenance; old conversations stay and its log grows until poed ends");
            None
        }
    }
}

/// Prunes at start and every [`PRUNE_EVERY`]; checkpoints once records stop coming for
/// [`CHECKPOINT_IDLE`], or at the latest [`CHECKPOINT_AT_MOST`] after the first record not
/// yet folded in. Ends (with a last checkpoint) when the recorder is gone.
fn maintenance_loop(path: PathBuf, keep_days: u32, nudges: mpsc::Receiver<()>) {
    let mut store = match Store::open(&path) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot open the history for its maintenance; old conversations stay and its log grows until poed ends");
            return;
        }
    };
    prune(&mut store, keep_days);
    let mut pruned = Instant::now();
    loop {
        let next_prune = PRUNE_EVERY.saturating_sub(pruned.elapsed());
        let mut open = match nudges.recv_timeout(next_prune) {
            Ok(()) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                prune(&mut store, keep_days);
                pruned = Instant::now();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let owed_since = Instant::now();
        while open {
            let left = CHECKPOINT_AT_MOST.saturating_sub(owed_since.elapsed());
            match nudges.recv_timeout(CHECKPOINT_IDLE.min(left)) {
                Ok(()) if !left.is_zero() => {}
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        }
        if let Err(e) = store.checkpoint() {
            debug!(error = %e, "history checkpoint deferred");
        }
        if !open {
            return;
        }
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
