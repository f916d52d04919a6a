//! The history: a record of every `complete` request (what was asked, the answer, model,
//! timings, outcome) in an embedded SQLite file, and the reads `poectl history` and
//! `poectl chat --continue` make of it.
//!
//! - [`store`]: the file, its schema and migrations, writes and queries.
//! - [`matching`]: which stored conversation a stateless request continues.
//! - [`recorder`]: the daemon's writer thread, fed by the engine once per finished request.
//! - [`text`]: the plain-text views `poectl history` prints.
//!
//! The file lives next to the browser profile (`history.sqlite3`) unless `history.path`
//! says otherwise; `history.enabled = false` means it is never created nor written.

pub mod matching;
pub mod recorder;
pub mod store;
pub mod text;

use std::path::{Path, PathBuf};

pub use recorder::{Held, Recorder};
pub use store::{
    Conversation, Export, HistoryError, Hit, Message, Placement, Record, Store, Summary,
};

use crate::config::HistoryConfig;

/// The history file's name in the data directory, next to the profile.
pub const FILE_NAME: &str = "history.sqlite3";

/// Where the history of a daemon with this profile is kept: `config.path`, else
/// `history.sqlite3` beside the profile directory.
pub fn file_path(config: &HistoryConfig, profile: &Path) -> PathBuf {
    match &config.path {
        Some(p) => p.clone(),
        None => profile
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(FILE_NAME),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The conversations to remember at start (the most recent `limit`, newest first) and the
/// number the next new conversation gets. Without a history (off, or unreadable: said in
/// the log) nothing is remembered, and numbers start from the clock so that a number a
/// client kept from an earlier run is not given to another conversation.
pub fn remembered(
    config: &HistoryConfig,
    profile: &Path,
    limit: usize,
) -> (Vec<crate::daemon::conversations::Remembered>, i64) {
    let from_clock = || (Vec::new(), now_ms());
    if !config.enabled {
        return from_clock();
    }
    let path = file_path(config, profile);
    let loaded = Store::open(&path).and_then(|s| Ok((s.recent(limit)?, s.max_id()?)));
    match loaded {
        Ok((conversations, max)) => {
            let remembered = conversations.into_iter().map(to_remember).collect();
            (remembered, max + 1)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the history: earlier conversations are not continued");
            from_clock()
        }
    }
}

/// The stored conversation `id`, to be remembered again (one a client names that is no
/// longer in memory); `None` when the history is off or does not have it.
pub fn remembered_one(
    config: &HistoryConfig,
    profile: &Path,
    id: i64,
) -> Option<crate::daemon::conversations::Remembered> {
    if !config.enabled {
        return None;
    }
    let store = Store::open_read_only(&file_path(config, profile)).ok()?;
    store.show(id).ok().flatten().map(to_remember)
}

fn to_remember(c: Conversation) -> crate::daemon::conversations::Remembered {
    crate::daemon::conversations::Remembered {
        ended_in_failure: c
            .messages
            .last()
            .is_some_and(|m| m.outcome.as_deref().is_some_and(|o| o != "ok")),
        // Without the system message `transcript` puts first.
        transcript: c
            .transcript()
            .into_iter()
            .skip(usize::from(c.system.is_some()))
            .collect(),
        id: c.id,
        model: c.model,
        bot: c.bot,
        system: c.system,
        chat_code: c.chat_code,
    }
}
