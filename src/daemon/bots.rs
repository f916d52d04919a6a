//! The bots of the site poed knows beyond its model table.
//!
//! Two sources, both read from what the site itself sent: bots *seen* (the `bot` object of a
//! finished reply in the page's updates, with when it last answered; kept in memory) and
//! bots *discovered* (the site's bot list, collected on request by `models` with `refresh`
//! and cached as JSON in the data directory with the date it was collected). The engine
//! lists them in `models` and `/v1/models`, maps a handle typed in another case to the
//! site's spelling, and offers them as close names for a bot the site does not have.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::daemon::account::unix_now;
use crate::site::poe::frames::BotInfo;
use crate::site::poe::models::is_bot_handle;

/// The most bots seen kept in memory; the one that answered longest ago goes first.
const MAX_SEEN: usize = 1000;
/// The most bots of a discovered list kept.
const MAX_DISCOVERED: usize = 20_000;
/// The name of the cache file, next to the browser profile.
pub const CACHE_FILE: &str = "bots.json";

/// A bot the site named in a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenBot {
    pub bot: BotInfo,
    /// When it last finished a reply, in seconds since the epoch.
    pub last_answered: u64,
}

/// One bot of the cached list, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedBot {
    pub handle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// The site's bot list as last collected: the cache file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovered {
    /// When it was collected, in seconds since the epoch.
    pub collected_at: u64,
    /// The page it was collected from.
    #[serde(default)]
    pub page: String,
    pub bots: Vec<ListedBot>,
}

#[derive(Default)]
struct Known {
    /// Lowercase handle -> the bot.
    seen: HashMap<String, SeenBot>,
    discovered: Option<Discovered>,
}

/// The bots seen and discovered. Shared by the frame observers of every tab and the engine.
pub struct BotStore {
    known: Mutex<Known>,
    /// Where the discovered list is cached (`None`: not cached, e.g. in unit tests).
    cache: Option<PathBuf>,
}

impl BotStore {
    /// A store with the list cached at `cache` loaded (a missing file is an empty list; an
    /// unreadable one is logged and ignored).
    pub fn load(cache: Option<PathBuf>) -> BotStore {
        let discovered = cache.as_deref().and_then(read_cache);
        BotStore {
            known: Mutex::new(Known {
                seen: HashMap::new(),
                discovered,
            }),
            cache,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `bot` finished a reply now.
    pub fn answered(&self, bot: &BotInfo) {
        if !is_bot_handle(&bot.handle) {
            return;
        }
        let mut known = self.lock();
        let key = bot.handle.to_ascii_lowercase();
        if !known.seen.contains_key(&key) && known.seen.len() >= MAX_SEEN {
            let oldest = known
                .seen
                .iter()
                .min_by_key(|(_, b)| b.last_answered)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                known.seen.remove(&oldest);
            }
        }
        known.seen.insert(
            key,
            SeenBot {
                bot: bot.clone(),
                last_answered: unix_now(),
            },
        );
    }

    /// The bots seen, most recent answer first.
    pub fn seen(&self) -> Vec<SeenBot> {
        let mut seen: Vec<SeenBot> = self.lock().seen.values().cloned().collect();
        seen.sort_by(|a, b| {
            b.last_answered
                .cmp(&a.last_answered)
                .then_with(|| a.bot.handle.cmp(&b.bot.handle))
        });
        seen
    }

    /// The site's bot list as last collected.
    pub fn discovered(&self) -> Option<Discovered> {
        self.lock().discovered.clone()
    }

    /// The site's spelling of a handle seen or discovered, compared case-insensitively (the
    /// site's own pages do so).
    pub fn canonical(&self, name: &str) -> Option<String> {
        let key = name.to_ascii_lowercase();
        let known = self.lock();
        if let Some(b) = known.seen.get(&key) {
            return Some(b.bot.handle.clone());
        }
        known
            .discovered
            .as_ref()?
            .bots
            .iter()
            .find(|b| b.handle.eq_ignore_ascii_case(name))
            .map(|b| b.handle.clone())
    }

    /// Every handle seen or discovered.
    pub fn handles(&self) -> Vec<String> {
        let known = self.lock();
        let mut handles: Vec<String> = known.seen.values().map(|b| b.bot.handle.clone()).collect();
        if let Some(d) = &known.discovered {
            handles.extend(d.bots.iter().map(|b| b.handle.clone()));
        }
        handles
    }

    /// Keeps `bots` (collected from `page`) as the site's list and caches it. The list is
    /// kept even when the cache cannot be written; the error says why.
    pub fn set_discovered(&self, bots: &[BotInfo], page: &str) -> Result<Discovered, String> {
        let mut seen = std::collections::HashSet::new();
        let list = Discovered {
            collected_at: unix_now(),
            page: page.to_owned(),
            bots: bots
                .iter()
                .filter(|b| is_bot_handle(&b.handle))
                .filter(|b| seen.insert(b.handle.to_ascii_lowercase()))
                .take(MAX_DISCOVERED)
                .map(|b| ListedBot {
                    handle: b.handle.clone(),
                    display_name: b.display_name.clone(),
                })
                .collect(),
        };
        self.lock().discovered = Some(list.clone());
        if let Some(path) = &self.cache {
            write_cache(path, &list)?;
            debug!(path = %path.display(), bots = list.bots.len(), "bot list cached");
        }
        Ok(list)
    }
}

fn read_cache(path: &Path) -> Option<Discovered> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the cached bot list; ignoring it");
            return None;
        }
    };
    match serde_json::from_str::<Discovered>(&text) {
        Ok(mut d) => {
            d.bots.retain(|b| is_bot_handle(&b.handle));
            d.bots.truncate(MAX_DISCOVERED);
            Some(d)
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "the cached bot list is not valid; ignoring it (`poectl models --refresh` writes it again)");
            None
        }
    }
}

/// Writes the list next to the profile: a private file (0600) replaced whole, so a reader
/// never sees half of it.
fn write_cache(path: &Path, list: &Discovered) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot cache the bot list in {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(fail)?;
        }
    }
    let text = serde_json::to_vec_pretty(list).map_err(|e| e.to_string())?;
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn bot(handle: &str, name: &str) -> BotInfo {
        BotInfo {
            handle: handle.into(),
            display_name: Some(name.into()),
        }
    }

    #[test]
    fn bots_seen_are_kept_once_by_handle_and_found_in_any_case() {
        let store = BotStore::load(None);
        store.answered(&bot("Claude-Sonnet-4.5", "Claude Sonnet 4.5"));
        store.answered(&bot("claude-sonnet-4.5", "Claude Sonnet 4.5"));
        store.answered(&bot("../x", "not a handle"));
        let seen = store.seen();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].last_answered > 0);
        assert_eq!(
            store.canonical("CLAUDE-sonnet-4.5").as_deref(),
            Some("claude-sonnet-4.5"),
            "the latest spelling the site used"
        );
        assert_eq!(store.canonical("GPT-4o"), None);
    }

    #[test]
    fn the_seen_list_is_bounded() {
        let store = BotStore::load(None);
        for i in 0..MAX_SEEN + 10 {
            store.answered(&bot(&format!("bot-{i}"), "b"));
        }
        assert_eq!(store.seen().len(), MAX_SEEN);
    }

    #[test]
    fn the_discovered_list_is_cached_privately_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data").join(CACHE_FILE);
        let store = BotStore::load(Some(path.clone()));
        assert_eq!(store.discovered(), None);
        let list = store
            .set_discovered(
                &[
                    bot("GPT-4o", "GPT-4o"),
                    bot("gpt-4o", "again"),
                    bot("SQL.Helper", "SQL Helper"),
                    bot("a/b", "bad"),
                ],
                "http://x/explore",
            )
            .expect("cached");
        assert_eq!(list.bots.len(), 2);
        let mode = std::fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = BotStore::load(Some(path.clone()));
        assert_eq!(again.discovered(), Some(list));
        assert_eq!(again.canonical("sql.helper").as_deref(), Some("SQL.Helper"));
        assert_eq!(again.handles(), vec!["GPT-4o", "SQL.Helper"]);
        // A damaged cache is ignored, not fatal.
        std::fs::write(&path, "{not json").expect("write");
        assert_eq!(BotStore::load(Some(path)).discovered(), None);
    }
}
