//! The history file: its schema and versioned migrations, writing one finished request, and
//! the reads behind `poectl history` (list, show, full-text search, export).
//!
//! Schema (`PRAGMA user_version` counts the migrations applied):
//! - `conversations`: id, created, last used, public model, bot, system message, and the
//!   site's chat code (NULL until conversations are continued on the site).
//! - `messages`: conversation id, turn (0, 1, ...), role, content, when, and for the row a
//!   request ended on: its timings and outcome (`ok` on an answer, the error kind on the
//!   prompt of a request that failed, with the error message).
//! - `messages_fts`: an FTS5 index over `messages.content`, kept by triggers.
//!
//! Times are milliseconds since the Unix epoch.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::matching::{self, Asked, Stored};
use crate::protocol::{ChatMessage, Timings};

/// The migrations in order; `user_version` is how many have been applied.
pub const MIGRATIONS: &[&str] = &[
    // 1: conversations and their messages.
    "CREATE TABLE conversations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_ms INTEGER NOT NULL,
        last_used_ms INTEGER NOT NULL,
        model TEXT NOT NULL,
        bot TEXT,
        system TEXT,
        chat_code TEXT
    );
    CREATE INDEX conversations_last_used ON conversations (last_used_ms);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        turn INTEGER NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        queued_ms INTEGER,
        first_token_ms INTEGER,
        total_ms INTEGER,
        outcome TEXT,
        error TEXT,
        UNIQUE (conversation_id, turn)
    );",
    // 2: full-text search over the messages, existing ones included.
    "CREATE VIRTUAL TABLE messages_fts USING fts5 (content, content = 'messages', content_rowid = 'id');
    INSERT INTO messages_fts (rowid, content) SELECT id, content FROM messages;
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
    END;",
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a statement waits for the other side's lock (the daemon writing while
/// `poectl` reads) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a checkpoint waits for a reader or a record in its way.
const CHECKPOINT_BUSY: Duration = Duration::from_millis(100);

/// Stored candidates examined when matching a request to a conversation.
const CANDIDATES: i64 = 20;

/// Why the history file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot create the history file {}: {source}; check the directory's permissions or set history.path", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no history at {} yet: poed writes it once it has served a request (unless history.enabled = false)", path.display())]
    Missing { path: PathBuf },
    #[error("the history file {} has schema version {found}, newer than this poed knows ({SCHEMA_VERSION}); use the newer poed, or move the file away", path.display())]
    TooNew { path: PathBuf, found: i64 },
    #[error("the history file {} has schema version {found}; start poed once to bring it up to date ({SCHEMA_VERSION})", path.display())]
    Outdated { path: PathBuf, found: i64 },
    #[error("the history search {0:?} has no words to look for")]
    EmptySearch(String),
    #[error("history database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// How a recorded request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answered { text: String, timings: Timings },
    Failed { kind: String, message: String },
}

/// One finished `complete` request, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at_ms: i64,
    /// The public model name (the requested one when it was unknown).
    pub model: String,
    pub bot: Option<String>,
    /// The whole conversation as of this request (system message first, if any).
    pub messages: Vec<ChatMessage>,
    pub outcome: Outcome,
    /// The conversation the daemon placed the request in; without it, the request goes on
    /// with the stored conversation its messages start with, or starts one.
    pub placement: Option<Placement>,
}

/// Where the daemon placed a request (see [`crate::daemon::conversations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub conversation: i64,
    /// How many of the request's turns (after the system message) are stored already.
    pub stored_turns: usize,
    /// The site chat the conversation is in now, if the site named it.
    pub chat_code: Option<String>,
}

/// A line of `poectl history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub id: i64,
    /// Local time, `YYYY-MM-DD HH:MM`.
    pub last_used: String,
    pub model: String,
    pub messages: i64,
    /// The first user message.
    pub title: String,
    /// The outcome the conversation last ended on (`ok` or an error kind).
    pub outcome: Option<String>,
}

/// A stored message, as shown and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub turn: i64,
    pub role: String,
    pub content: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// `ok` on an answer, the error kind on the prompt of a request that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A whole stored conversation, as shown and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: i64,
    pub created_ms: i64,
    pub last_used_ms: i64,
    pub model: String,
    pub bot: Option<String>,
    pub system: Option<String>,
    /// The site's chat code, once conversations are continued on the site.
    pub chat_code: Option<String>,
    pub messages: Vec<Message>,
}

impl Conversation {
    /// The messages a client sends to continue it: the system message, then every turn
    /// except the prompts of requests that failed.
    pub fn transcript(&self) -> Vec<ChatMessage> {
        self.system
            .iter()
            .map(|s| ChatMessage::new("system", s.clone()))
            .chain(
                self.messages
                    .iter()
                    .filter(|m| is_transcript(m.outcome.as_deref()))
                    .map(|m| ChatMessage::new(m.role.clone(), m.content.clone())),
            )
            .collect()
    }
}

/// A full-text search hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    pub conversation: i64,
    pub turn: i64,
    pub role: String,
    /// Local time, `YYYY-MM-DD HH:MM`.
    pub when: String,
    /// The matching text, the words found in `[` `]`.
    pub snippet: String,
}

/// What `poectl history export` writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    /// Always `poed-history`.
    pub format: String,
    pub schema: i64,
    pub conversations: Vec<Conversation>,
}

/// Whether a row with this outcome belongs to the transcript (failed prompts do not).
fn is_transcript(outcome: Option<&str>) -> bool {
    matches!(outcome, None | Some("ok"))
}

const TRANSCRIPT_ROWS: &str = "outcome IS NULL OR outcome = 'ok'";

/// An open history file.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating it 0600, in 0700 directories, when missing) and migrates the file.
    pub fn open(path: &Path) -> Result<Store, HistoryError> {
        let create = |source| HistoryError::Create {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(create)?;
        }
        // Created here with its mode, before SQLite opens it (SQLite's own journal files
        // take the database file's mode).
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(create)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(create)?;
        drop(file);
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        write_ahead(&conn)?;
        migrate(&mut conn, path)?;
        Ok(Store {
            conn,
            path: path.to_owned(),
        })
    }

    /// Opens an existing file read-only (for `poectl`); never creates or migrates it.
    pub fn open_read_only(path: &Path) -> Result<Store, HistoryError> {
        if !path.exists() {
            return Err(HistoryError::Missing {
                path: path.to_owned(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let path = path.to_owned();
        match found {
            v if v == SCHEMA_VERSION => Ok(Store { conn, path }),
            v if v > SCHEMA_VERSION => Err(HistoryError::TooNew { path, found }),
            _ => Err(HistoryError::Outdated { path, found }),
        }
    }

    /// Opens an existing file read-only (for `poectl`) once the record the daemon is
    /// writing, if any, is in: poed holds the file's write lock from before a request's
    /// final event until its record is written ([`Store::begin_record`]), so taking that
    /// lock here, and letting go of it at once, waits for the record (at most the busy
    /// timeout). A file this user cannot write to (no daemon of theirs writes it either)
    /// is read as it is.
    pub fn open_after_writes(path: &Path) -> Result<Store, HistoryError> {
        let store = Store::open_read_only(path)?;
        let waited = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK")
        });
        if let Err(e) = waited {
            tracing::debug!(error = %e, "not waiting for a record being written; reading the file as it is");
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies what the write-ahead log holds into the file proper and empties the log, so
    /// that later records append to a fresh log (overwriting the old log's pages after a
    /// checkpoint makes the next records wait for the disk). Gives up within
    /// [`CHECKPOINT_BUSY`] when a reader or a record is in the way: it is tried again later,
    /// and the record never waits long for it.
    pub fn checkpoint(&self) -> Result<(), HistoryError> {
        self.conn.busy_timeout(CHECKPOINT_BUSY)?;
        let done = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        match done? {
            0 => Ok(()),
            _ => Err(HistoryError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some("the log is in use; the checkpoint is tried again later".into()),
            ))),
        }
    }

    /// Records one finished request in one transaction: it continues the conversation whose
    /// transcript its messages start with (see [`matching`]), or starts one. Returns the
    /// conversation's id. A request without messages records nothing (`None`).
    pub fn record(&mut self, record: &Record) -> Result<Option<i64>, HistoryError> {
        let tx = self.conn.transaction()?;
        let id = insert(&tx, record)?;
        tx.commit()?;
        Ok(id)
    }

    /// Takes the file's write lock for a record to come ([`Store::commit_record`]): a reader
    /// opened with [`Store::open_after_writes`] from now on waits until that record is in.
    /// The daemon takes it before a request's final event and writes the record after it,
    /// so the write is not on the reply's path and a client that got `done` still finds
    /// its request. A record left unwritten before (its task ended) is rolled back here.
    pub fn begin_record(&mut self) -> Result<(), HistoryError> {
        self.abandon_record();
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    /// Writes `record` in the transaction [`Store::begin_record`] opened, and ends it
    /// (rolled back if the write fails). Statements are compiled once per connection.
    pub fn commit_record(&mut self, record: &Record) -> Result<Option<i64>, HistoryError> {
        let written = insert(&self.conn, record)
            .and_then(|id| Ok(self.conn.execute_batch("COMMIT").map(|()| id)?));
        if written.is_err() {
            self.abandon_record();
        }
        written
    }

    /// Lets go of the write lock [`Store::begin_record`] took, writing nothing.
    pub fn abandon_record(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Deletes conversations last used more than `keep_days` days before `now_ms` (0 keeps
    /// everything). Returns how many went.
    pub fn prune(&mut self, keep_days: u32, now_ms: i64) -> Result<usize, HistoryError> {
        if keep_days == 0 {
            return Ok(0);
        }
        let cutoff = now_ms.saturating_sub(i64::from(keep_days) * 86_400_000);
        Ok(self.conn.execute(
            "DELETE FROM conversations WHERE last_used_ms < ?1",
            [cutoff],
        )?)
    }

    /// The largest conversation number used so far (0 for none): new ones count on from
    /// there.
    pub fn max_id(&self) -> Result<i64, HistoryError> {
        Ok(self.conn.query_row(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'conversations'), 0),
                        COALESCE((SELECT MAX(id) FROM conversations), 0))",
            [],
            |r| r.get(0),
        )?)
    }

    /// The `limit` most recently used conversations, whole, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<Conversation>, HistoryError> {
        let ids = self
            .conn
            .prepare("SELECT id FROM conversations ORDER BY last_used_ms DESC, id DESC LIMIT ?1")?
            .query_map([limit as i64], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.show(id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The most recently used conversations, newest first.
    pub fn list(&self, limit: usize) -> Result<Vec<Summary>, HistoryError> {
        let mut stmt = self.conn.prepare(
            "SELECT c.id,
                    strftime('%Y-%m-%d %H:%M', c.last_used_ms / 1000, 'unixepoch', 'localtime'),
                    c.model,
                    (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id),
                    COALESCE((SELECT content FROM messages m
                              WHERE m.conversation_id = c.id AND m.role = 'user'
                              ORDER BY turn LIMIT 1), ''),
                    (SELECT outcome FROM messages m
                     WHERE m.conversation_id = c.id AND m.outcome IS NOT NULL
                     ORDER BY turn DESC LIMIT 1)
             FROM conversations c
             ORDER BY c.last_used_ms DESC, c.id DESC
             LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(Summary {
                id: r.get(0)?,
                last_used: r.get(1)?,
                model: r.get(2)?,
                messages: r.get(3)?,
                title: r.get(4)?,
                outcome: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One conversation with all its messages.
    pub fn show(&self, id: i64) -> Result<Option<Conversation>, HistoryError> {
        let head = self
            .conn
            .query_row(
                "SELECT id, created_ms, last_used_ms, model, bot, system, chat_code
                 FROM conversations WHERE id = ?1",
                [id],
                |r| {
                    Ok(Conversation {
                        id: r.get(0)?,
                        created_ms: r.get(1)?,
                        last_used_ms: r.get(2)?,
                        model: r.get(3)?,
                        bot: r.get(4)?,
                        system: r.get(5)?,
                        chat_code: r.get(6)?,
                        messages: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut conversation) = head else {
            return Ok(None);
        };
        let mut stmt = self.conn.prepare(
            "SELECT turn, role, content, created_ms, queued_ms, first_token_ms, total_ms, outcome, error
             FROM messages WHERE conversation_id = ?1 ORDER BY turn",
        )?;
        let rows = stmt.query_map([id], |r| {
            let total: Option<i64> = r.get(6)?;
            let timings = match total {
                Some(total) => Some(Timings {
                    queued_ms: r.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as u64,
                    first_token_ms: r.get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
                    total_ms: total.max(0) as u64,
                }),
                None => None,
            };
            Ok(Message {
                turn: r.get(0)?,
                role: r.get(1)?,
                content: r.get(2)?,
                created_ms: r.get(3)?,
                timings,
                outcome: r.get(7)?,
                error: r.get(8)?,
            })
        })?;
        conversation.messages = rows.collect::<Result<_, _>>()?;
        Ok(Some(conversation))
    }

    /// Messages matching every word of `text` (full-text search), best first.
    pub fn search(&self, text: &str, limit: usize) -> Result<Vec<Hit>, HistoryError> {
        let query = fts_query(text).ok_or_else(|| HistoryError::EmptySearch(text.into()))?;
        let mut stmt = self.conn.prepare(
            "SELECT m.conversation_id, m.turn, m.role,
                    strftime('%Y-%m-%d %H:%M', m.created_ms / 1000, 'unixepoch', 'localtime'),
                    snippet(messages_fts, 0, '[', ']', '…', 12)
             FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid
             WHERE messages_fts MATCH ?1
             ORDER BY rank, m.created_ms DESC
             LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![query, limit as i64], |r| {
            Ok(Hit {
                conversation: r.get(0)?,
                turn: r.get(1)?,
                role: r.get(2)?,
                when: r.get(3)?,
                snippet: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The conversations `ids` (all of them when empty), oldest first.
    pub fn export(&self, ids: &[i64]) -> Result<Export, HistoryError> {
        let ids = if ids.is_empty() {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM conversations ORDER BY created_ms, id")?;
            let all = stmt.query_map([], |r| r.get(0))?;
            all.collect::<Result<Vec<i64>, _>>()?
        } else {
            ids.to_vec()
        };
        let mut conversations = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.show(id)? {
                conversations.push(c);
            }
        }
        Ok(Export {
            format: "poed-history".into(),
            schema: SCHEMA_VERSION,
            conversations,
        })
    }
}

/// The statements of one record, in the caller's transaction.
fn insert(tx: &Connection, record: &Record) -> Result<Option<i64>, HistoryError> {
    if record.messages.is_empty() {
        return Ok(None);
    }
    let (system, turns) = matching::split_system(&record.messages);
    let placed = match &record.placement {
        Some(p) => {
            let known: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM conversations WHERE id = ?1)")?
                .query_row([p.conversation], |r| r.get(0))?;
            known.then_some((p.conversation, p.stored_turns.min(turns.len())))
        }
        None => {
            let candidates = candidates(tx, &record.model, system, turns.first())?;
            let asked = Asked {
                model: &record.model,
                system,
                turns,
            };
            matching::continued(&candidates, asked)
        }
    };
    let chat_code = record
        .placement
        .as_ref()
        .and_then(|p| p.chat_code.as_deref());
    let (id, skip, mut turn) = match placed {
        Some((id, stored)) => {
            let next: i64 = tx
                .prepare_cached(
                    "SELECT COALESCE(MAX(turn) + 1, 0) FROM messages WHERE conversation_id = ?1",
                )?
                .query_row([id], |r| r.get(0))?;
            tx.prepare_cached(
                "UPDATE conversations SET last_used_ms = ?2, bot = COALESCE(?3, bot),
                     chat_code = COALESCE(?4, chat_code)
                 WHERE id = ?1",
            )?
            .execute(params![id, record.at_ms, record.bot, chat_code])?;
            (id, stored, next)
        }
        None => {
            // A placed conversation the file does not have yet (new, or pruned since)
            // keeps the daemon's number, with all its turns.
            let id = record.placement.as_ref().map(|p| p.conversation);
            tx.prepare_cached(
                "INSERT INTO conversations (id, created_ms, last_used_ms, model, bot, system, chat_code)
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![id, record.at_ms, record.model, record.bot, system, chat_code])?;
            (tx.last_insert_rowid(), 0, 0)
        }
    };
    let new_turns = &turns[skip..];
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (conversation_id, turn, role, content, created_ms,
                 queued_ms, first_token_ms, total_ms, outcome, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for (i, m) in new_turns.iter().enumerate() {
            let failed = match &record.outcome {
                Outcome::Failed { kind, message } if i + 1 == new_turns.len() => {
                    Some((kind, message))
                }
                _ => None,
            };
            insert.execute(params![
                id,
                turn,
                m.role,
                m.content,
                record.at_ms,
                None::<i64>,
                None::<i64>,
                None::<i64>,
                failed.map(|f| f.0),
                failed.map(|f| f.1),
            ])?;
            turn += 1;
        }
        if let Outcome::Answered { text, timings } = &record.outcome {
            insert.execute(params![
                id,
                turn,
                "assistant",
                text,
                record.at_ms,
                timings.queued_ms as i64,
                timings.first_token_ms.map(|v| v as i64),
                timings.total_ms as i64,
                "ok",
                None::<String>,
            ])?;
        }
    }
    Ok(Some(id))
}

/// Write-ahead logging with `synchronous = NORMAL`: a commit is one append to the
/// `-wal` file, with no fsync, so a request's record (written right after its final event,
/// see [`super::Recorder`]) is not held up by the disk; a power loss may drop the last
/// records but never corrupts the file. Readers (`poectl history`) see every committed
/// record while the daemon writes. Automatic checkpoints are off: [`Store::checkpoint`]
/// runs them off the requests' path. A file system without shared memory for the log
/// keeps the rollback journal (slower commits, same results).
fn write_ahead(conn: &Connection) -> Result<(), HistoryError> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            journal = %mode,
            "the history file cannot use a write-ahead log here; each record waits for the disk"
        );
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(())
}

/// Applies the migrations the file lacks, all in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), HistoryError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(HistoryError::TooNew {
            path: path.to_owned(),
            found,
        });
    }
    for sql in &MIGRATIONS[found.max(0) as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Conversations of this model and system message whose first turn is `first`, most
/// recently used first, with their transcripts.
fn candidates(
    conn: &Connection,
    model: &str,
    system: Option<&str>,
    first: Option<&ChatMessage>,
) -> Result<Vec<Stored>, HistoryError> {
    let Some(first) = first else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT c.id FROM conversations c
         JOIN messages m ON m.conversation_id = c.id AND m.turn = 0
         WHERE c.model = ?1 AND c.system IS ?2 AND m.role = ?3 AND m.content = ?4
         ORDER BY c.last_used_ms DESC, c.id DESC
         LIMIT ?5",
    )?;
    let ids = stmt
        .query_map(
            params![model, system, first.role, first.content, CANDIDATES],
            |r| r.get::<_, i64>(0),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = conn.prepare_cached(&format!(
        "SELECT role, content FROM messages WHERE conversation_id = ?1 AND ({TRANSCRIPT_ROWS}) ORDER BY turn"
    ))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let transcript = rows
            .query_map([id], |r| {
                Ok(ChatMessage::new(
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Stored {
            id,
            model: model.to_owned(),
            system: system.map(str::to_owned),
            transcript,
        });
    }
    Ok(out)
}

/// An FTS5 query matching every word of `text`, each quoted so that no character of it is
/// taken as query syntax; `None` when there are no words.
pub fn fts_query(text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    fn answered(at_ms: i64, messages: Vec<ChatMessage>, text: &str) -> Record {
        Record {
            at_ms,
            model: "gpt-4".into(),
            bot: Some("GPT-4".into()),
            messages,
            outcome: Outcome::Answered {
                text: text.into(),
                timings: Timings {
                    queued_ms: 1,
                    first_token_ms: Some(20),
                    total_ms: 300,
                },
            },
            placement: None,
        }
    }

    fn failed(at_ms: i64, messages: Vec<ChatMessage>) -> Record {
        Record {
            at_ms,
            model: "gpt-4".into(),
            bot: Some("GPT-4".into()),
            messages,
            outcome: Outcome::Failed {
                kind: "timeout".into(),
                message: "too slow".into(),
            },
            placement: None,
        }
    }

    fn version(path: &Path) -> i64 {
        Connection::open(path)
            .expect("open")
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version")
    }

    #[test]
    fn an_empty_file_is_created_private_and_migrated_to_the_latest_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a").join("b").join("history.sqlite3");
        let store = Store::open(&path).expect("open");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&dir.path().join("a").join("b")), 0o700);
        drop(store);
        assert_eq!(version(&path), SCHEMA_VERSION);
        assert_eq!(SCHEMA_VERSION, 2);
        // Opening again applies nothing twice.
        Store::open(&path).expect("reopen");
        assert_eq!(version(&path), SCHEMA_VERSION);
        Store::open_read_only(&path).expect("read-only");
    }

    #[test]
    fn records_go_to_a_private_write_ahead_log_that_readers_see_before_and_after_a_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.sqlite3");
        let mut writer = Store::open(&path).expect("open");
        let journal: String = writer
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(journal, "wal");
        writer
            .record(&answered(1, vec![m("user", "hi")], "hello"))
            .expect("record");
        // Seen at once by a reader (poectl) while the daemon holds the file open.
        let reader = Store::open_read_only(&path).expect("reader");
        assert_eq!(reader.list(10).expect("list").len(), 1);
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        for log in ["history.sqlite3-wal", "history.sqlite3-shm"] {
            assert_eq!(mode(&dir.path().join(log)), 0o600, "{log}");
        }
        // A checkpoint on another connection (the maintenance thread's) empties the log
        // without losing anything; later records append to the fresh log.
        let maintenance = Store::open(&path).expect("second connection");
        maintenance.checkpoint().expect("checkpoint");
        assert_eq!(
            std::fs::metadata(dir.path().join("history.sqlite3-wal"))
                .expect("wal")
                .len(),
            0
        );
        writer
            .record(&answered(2, vec![m("user", "again")], "hello again"))
            .expect("record after the checkpoint");
        assert_eq!(reader.list(10).expect("list").len(), 2);
        drop((writer, maintenance, reader));
        let reader = Store::open_read_only(&path).expect("reader after the daemon closed it");
        assert_eq!(reader.list(10).expect("list").len(), 2);
    }

    #[test]
    fn a_reader_that_waits_for_writes_finds_a_record_locked_before_it_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.sqlite3");
        let mut writer = Store::open(&path).expect("open");
        writer
            .record(&answered(1, vec![m("user", "first")], "one"))
            .expect("record");
        // The daemon takes the lock, then sends `done`; the client runs `poectl history`.
        writer.begin_record().expect("lock");
        let (opened, read) = std::sync::mpsc::channel();
        let reading = path.clone();
        let reader = std::thread::spawn(move || {
            let rows = Store::open_after_writes(&reading).and_then(|r| r.list(10));
            let _ = opened.send(rows.map(|rows| rows.len()));
        });
        // Without the wait, the reader lists the one record at once.
        assert!(
            read.recv_timeout(Duration::from_millis(300)).is_err(),
            "the reader did not wait for the record in progress"
        );
        writer
            .commit_record(&answered(2, vec![m("user", "second")], "two"))
            .expect("write");
        let rows = read
            .recv_timeout(Duration::from_secs(5))
            .expect("the reader goes on once the record is in")
            .expect("list");
        assert_eq!(rows, 2, "the reader sees the record it waited for");
        reader.join().expect("reader thread");
        // A record abandoned (its task ended) writes nothing and frees the lock.
        writer.begin_record().expect("lock again");
        writer.abandon_record();
        let reader = Store::open_after_writes(&path).expect("not held up");
        assert_eq!(reader.list(10).expect("list").len(), 2);
        // A lock left held by a record that never came is let go by the next one.
        writer.begin_record().expect("lock");
        writer.begin_record().expect("lock over an abandoned one");
        writer
            .commit_record(&answered(3, vec![m("user", "third")], "three"))
            .expect("write");
        assert_eq!(reader.list(10).expect("list").len(), 3);
    }

    #[test]
    fn a_version_1_file_keeps_its_data_and_gains_search() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.sqlite3");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(MIGRATIONS[0]).expect("v1");
            conn.execute_batch(
                "INSERT INTO conversations (created_ms, last_used_ms, model) VALUES (5, 5, 'gpt-4');
                 INSERT INTO messages (conversation_id, turn, role, content, created_ms)
                 VALUES (1, 0, 'user', 'an aardvark question', 5);
                 PRAGMA user_version = 1;",
            )
            .expect("v1 data");
        }
        assert!(matches!(
            Store::open_read_only(&path),
            Err(HistoryError::Outdated { found: 1, .. })
        ));
        let store = Store::open(&path).expect("migrate");
        assert_eq!(version(&path), SCHEMA_VERSION);
        let hits = store.search("aardvark", 10).expect("search");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].conversation, 1);
        assert_eq!(hits[0].snippet, "an [aardvark] question");
    }

    #[test]
    fn a_file_from_a_newer_poed_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.sqlite3");
        Connection::open(&path)
            .expect("open")
            .pragma_update(None, "user_version", 99)
            .expect("version");
        let e = Store::open(&path).err().expect("too new");
        assert!(matches!(e, HistoryError::TooNew { found: 99, .. }), "{e}");
        assert!(e.to_string().contains("newer"), "{e}");
        assert_eq!(version(&path), 99);
        let e = Store::open_read_only(&dir.path().join("none"))
            .err()
            .expect("missing");
        assert!(matches!(e, HistoryError::Missing { .. }), "{e}");
    }

    #[test]
    fn requests_that_resend_the_conversation_continue_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("h.sqlite3")).expect("open");
        let sys = m("system", "Be brief.");
        let first = vec![sys.clone(), m("user", "hi")];
        let a = store.record(&answered(10, first, "hello")).expect("record");
        let second = vec![
            sys.clone(),
            m("user", "hi"),
            m("assistant", "hello"),
            m("user", "more"),
        ];
        // A failed attempt is kept, marked, and not part of what a client sends back.
        let b = store.record(&failed(20, second.clone())).expect("record");
        let c = store.record(&answered(30, second, "sure")).expect("record");
        assert_eq!(a, b);
        assert_eq!(a, c);
        // Without the system message it is another conversation.
        let d = store
            .record(&answered(40, vec![m("user", "hi")], "hello"))
            .expect("record");
        assert_ne!(a, d);
        assert_eq!(store.record(&failed(50, vec![])).expect("empty"), None);

        let conv = store.show(a.expect("id")).expect("show").expect("exists");
        assert_eq!(conv.system.as_deref(), Some("Be brief."));
        assert_eq!(conv.created_ms, 10);
        assert_eq!(conv.last_used_ms, 30);
        assert_eq!(conv.bot.as_deref(), Some("GPT-4"));
        let rows: Vec<(&str, &str, Option<&str>)> = conv
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str(), m.outcome.as_deref()))
            .collect();
        assert_eq!(
            rows,
            [
                ("user", "hi", None),
                ("assistant", "hello", Some("ok")),
                ("user", "more", Some("timeout")),
                ("user", "more", None),
                ("assistant", "sure", Some("ok")),
            ]
        );
        assert_eq!(conv.messages[2].error.as_deref(), Some("too slow"));
        assert_eq!(
            conv.messages[1].timings.as_ref().map(|t| t.total_ms),
            Some(300)
        );
        assert_eq!(conv.messages[0].timings, None);
        assert_eq!(
            conv.transcript(),
            [
                sys,
                m("user", "hi"),
                m("assistant", "hello"),
                m("user", "more"),
                m("assistant", "sure")
            ]
        );
        let list = store.list(10).expect("list");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].id, d.expect("id"), "most recently used first");
        assert_eq!(list[1].messages, 5);
        assert_eq!(list[1].title, "hi");
        assert_eq!(list[1].outcome.as_deref(), Some("ok"));
        assert_eq!(store.show(999).expect("show"), None);
    }

    #[test]
    fn full_text_search_finds_words_and_takes_no_query_syntax_from_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("h.sqlite3")).expect("open");
        store
            .record(&answered(
                10,
                vec![m("user", "Tell me about penguins in Antarctica")],
                "Emperor penguins breed in winter.",
            ))
            .expect("record");
        store
            .record(&answered(
                20,
                vec![m("user", "And kangaroos?")],
                "They hop.",
            ))
            .expect("record");
        let hits = store.search("penguins", 10).expect("search");
        assert_eq!(hits.len(), 2);
        assert!(hits
            .iter()
            .any(|h| h.role == "assistant" && h.snippet.contains("[penguins]")));
        // Every word must match.
        assert_eq!(
            store.search("penguins winter", 10).expect("search").len(),
            1
        );
        assert_eq!(
            store
                .search("penguins kangaroos", 10)
                .expect("search")
                .len(),
            0
        );
        // Quotes, operators and column filters are plain text.
        for odd in [
            "\"kangaroos",
            "kangaroos?",
            "NOT kangaroos",
            "content:x",
            "a*b(",
            "-",
        ] {
            store.search(odd, 10).expect(odd);
        }
        assert_eq!(store.search("kangaroos?", 10).expect("search").len(), 1);
        assert!(matches!(
            store.search("  ", 10),
            Err(HistoryError::EmptySearch(_))
        ));
        assert_eq!(fts_query("a \"b"), Some("\"a\" \"\"\"b\"".into()));
    }

    #[test]
    fn pruning_removes_conversations_unused_for_keep_days_and_their_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("h.sqlite3")).expect("open");
        let day = 86_400_000;
        let now = 100 * day;
        store
            .record(&answered(
                now - 10 * day,
                vec![m("user", "old walrus")],
                "a",
            ))
            .expect("record");
        store
            .record(&answered(now - day, vec![m("user", "new walrus")], "b"))
            .expect("record");
        assert_eq!(store.prune(0, now).expect("keep all"), 0);
        assert_eq!(store.prune(30, now).expect("prune"), 0);
        assert_eq!(store.prune(5, now).expect("prune"), 1);
        let list = store.list(10).expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].title, "new walrus");
        let hits = store.search("walrus", 10).expect("search");
        assert_eq!(hits.len(), 1, "the index lost the pruned messages too");
        let left: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .expect("count");
        assert_eq!(left, 2);
    }

    #[test]
    fn export_is_json_with_every_conversation_and_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("h.sqlite3")).expect("open");
        store
            .record(&answered(10, vec![m("user", "one")], "1"))
            .expect("record");
        store
            .record(&failed(20, vec![m("user", "two")]))
            .expect("record");
        let export = store.export(&[]).expect("export");
        let v = serde_json::to_value(&export).expect("json");
        assert_eq!(v["format"], "poed-history");
        assert_eq!(v["schema"], SCHEMA_VERSION);
        let convs = v["conversations"].as_array().expect("array");
        assert_eq!(convs.len(), 2);
        let first = &convs[0];
        for key in [
            "id",
            "created_ms",
            "last_used_ms",
            "model",
            "bot",
            "system",
            "chat_code",
            "messages",
        ] {
            assert!(first.get(key).is_some(), "{key} in {first}");
        }
        assert_eq!(first["chat_code"], serde_json::Value::Null);
        assert_eq!(first["messages"][0]["role"], "user");
        assert_eq!(first["messages"][0]["content"], "one");
        assert_eq!(first["messages"][1]["outcome"], "ok");
        assert_eq!(first["messages"][1]["timings"]["total_ms"], 300);
        assert_eq!(first["messages"][1]["timings"]["first_token_ms"], 20);
        assert_eq!(convs[1]["messages"][0]["outcome"], "timeout");
        assert_eq!(convs[1]["messages"][0]["error"], "too slow");
        // It reads back as what was written.
        let back: Export = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, export);
        assert_eq!(store.export(&[2]).expect("one").conversations.len(), 1);
    }

    #[test]
    fn a_placed_request_keeps_the_daemons_number_and_chat_and_loads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("h.sqlite3")).expect("open");
        let place = |conversation, stored_turns, chat: Option<&str>| Placement {
            conversation,
            stored_turns,
            chat_code: chat.map(str::to_owned),
        };
        let mut first = answered(1_000, vec![m("user", "hi")], "hello");
        first.placement = Some(place(41, 0, Some("abc")));
        assert_eq!(store.record(&first).expect("record"), Some(41));
        // The next turn: the conversation's two stored turns are not written again.
        let mut next = answered(
            2_000,
            vec![m("user", "hi"), m("assistant", "hello"), m("user", "more")],
            "even more",
        );
        next.placement = Some(place(41, 2, None));
        assert_eq!(store.record(&next).expect("record"), Some(41));
        assert_eq!(store.max_id().expect("max"), 41);
        let recent = store.recent(5).expect("recent");
        assert_eq!(recent.len(), 1);
        let c = &recent[0];
        assert_eq!((c.id, c.chat_code.as_deref()), (41, Some("abc")));
        let contents: Vec<_> = c.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["hi", "hello", "more", "even more"]);
        // A placement the file does not know (pruned meanwhile) is written whole.
        let mut gone = answered(
            3_000,
            vec![m("user", "x"), m("assistant", "y"), m("user", "z")],
            "w",
        );
        gone.placement = Some(place(57, 2, Some("def")));
        assert_eq!(store.record(&gone).expect("record"), Some(57));
        let c = store.show(57).expect("show").expect("there");
        assert_eq!(c.messages.len(), 4);
        assert_eq!(store.max_id().expect("max"), 57);
        // Numbers are not reused after the newest conversation is pruned.
        store.prune(1, 3_000 + 2 * 86_400_000).expect("prune");
        assert_eq!(store.max_id().expect("max"), 57);
    }
}
