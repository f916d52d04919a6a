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

pub use recorder::Recorder;
pub use store::{Conversation, Export, HistoryError, Hit, Message, Record, Store, Summary};

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
