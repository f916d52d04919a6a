//! Model names: the model table, bot handles, and close names for a name nobody knows.
//!
//! A request names a model. The table maps public names to Poe bot handles
//! (`{base}/{handle}` is the bot page): the built-in rows are the original provider's table,
//! the config file adds or overrides rows (`[site.models]`, aliases). A name that is in
//! neither but has the shape of a bot handle ([`is_bot_handle`]) is the handle itself, so
//! any bot of the account can be used by its handle; whether the site has it is learnt from
//! its page (the driver). [`suggest`] finds close names for a name the site does not know.

use std::collections::BTreeMap;

use crate::error::{Error, ErrorKind};
use crate::protocol::{ModelInfo, ModelSource};

/// The built-in table, in the original's order.
pub const BUILTIN_MODELS: &[(&str, &str)] = &[
    ("meta-llama/Llama-2-7b-chat-hf", "Llama-2-7b"),
    ("meta-llama/Llama-2-13b-chat-hf", "Llama-2-13b"),
    ("meta-llama/Llama-2-70b-chat-hf", "Llama-2-70b"),
    ("codellama/CodeLlama-7b-Instruct-hf", "Code-Llama-7b"),
    ("codellama/CodeLlama-13b-Instruct-hf", "Code-Llama-13b"),
    ("codellama/CodeLlama-34b-Instruct-hf", "Code-Llama-34b"),
    ("gpt-3.5-turbo", "GPT-3.5-Turbo"),
    ("gpt-3.5-turbo-instruct", "GPT-3.5-Turbo-Instruct"),
    ("gpt-4", "GPT-4"),
    ("palm", "Google-PaLM"),
];

/// The model used when a request names none.
pub const DEFAULT_MODEL: &str = "gpt-3.5-turbo";

/// The longest bot handle taken as one (Poe's handles are far shorter).
pub const MAX_HANDLE_LEN: usize = 64;

/// How many close names an unknown name gets.
const MAX_SUGGESTIONS: usize = 5;

/// Whether `name` has the shape of a Poe bot handle: 1 to [`MAX_HANDLE_LEN`] ASCII letters,
/// digits, `-`, `_` and `.`, starting with a letter or a digit (so never `.` or `..`, and
/// never anything that changes the page's path or query).
pub fn is_bot_handle(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_HANDLE_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Public name -> bot handle, plus the default model.
#[derive(Debug, Clone)]
pub struct ModelTable {
    models: BTreeMap<String, (String, ModelSource)>,
    default: String,
}

impl ModelTable {
    /// The built-in table with `extra` rows added (an extra row with a built-in name replaces it).
    pub fn new(extra: &BTreeMap<String, String>, default: &str) -> Result<Self, String> {
        let mut models: BTreeMap<String, (String, ModelSource)> = BUILTIN_MODELS
            .iter()
            .map(|(n, h)| (n.to_string(), (h.to_string(), ModelSource::Table)))
            .collect();
        for (name, handle) in extra {
            if !is_bot_handle(handle) {
                return Err(format!(
                    "model {name:?}: bot handle {handle:?} must be a plain page name such as \"Claude-3.5-Sonnet\" (letters, digits, '-', '_', '.')"
                ));
            }
            models.insert(name.clone(), (handle.clone(), ModelSource::Config));
        }
        if !models.contains_key(default) {
            return Err(format!(
                "default model {default:?} is not in the model table; add it under [site.models]"
            ));
        }
        Ok(ModelTable {
            models,
            default: default.to_owned(),
        })
    }

    pub fn default_model(&self) -> &str {
        &self.default
    }

    /// The table's row for `name` (exact: the table's names are poed's own): its handle and
    /// where the row comes from.
    pub fn lookup(&self, name: &str) -> Option<(&str, ModelSource)> {
        self.models.get(name).map(|(h, s)| (h.as_str(), *s))
    }

    /// Resolves a requested model (or the default) to `(public name, bot handle)`: a row of
    /// the table, else a name with the shape of a bot handle is that handle. Anything else is
    /// `unknown_model`.
    pub fn resolve(&self, requested: Option<&str>) -> Result<(String, String), Error> {
        let name = requested.unwrap_or(&self.default);
        if let Some((handle, _)) = self.lookup(name) {
            return Ok((name.to_owned(), handle.to_owned()));
        }
        if is_bot_handle(name) {
            return Ok((name.to_owned(), name.to_owned()));
        }
        Err(Error::new(
            ErrorKind::UnknownModel,
            format!(
                "unknown model {name:?}: not in the model table and not a bot handle (letters, digits, '-', '_', '.', at most {MAX_HANDLE_LEN}); known models: {}. Add others under [site.models] in the config file",
                self.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ))
    }

    /// The table's rows, by name.
    pub fn list(&self) -> Vec<ModelInfo> {
        self.models
            .iter()
            .map(|(name, (bot, source))| ModelInfo {
                name: name.clone(),
                bot: bot.clone(),
                source: *source,
                display_name: None,
                last_answered: None,
            })
            .collect()
    }

    /// Every name of the table (for [`suggest`]).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

/// Up to five of `candidates` close to `name`, closest first: the same letters in another
/// case, names that start with it (or that it starts with), and names within a small edit
/// distance (a third of the name's length, at least two). Compared case-insensitively, as
/// the site compares handles; each name once.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let wanted = name.to_ascii_lowercase();
    if wanted.is_empty() {
        return Vec::new();
    }
    let limit = (wanted.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for candidate in candidates {
        let lower = candidate.to_ascii_lowercase();
        if !seen.insert(lower.clone()) {
            continue;
        }
        let distance = edit_distance(&wanted, &lower);
        let prefix = lower.starts_with(&wanted) || wanted.starts_with(&lower);
        let score = if prefix && wanted.len().min(lower.len()) >= 3 {
            // A prefix match ranks like a close edit.
            distance.min(1)
        } else if distance <= limit {
            distance
        } else {
            continue;
        };
        scored.push((score, candidate.to_owned()));
    }
    scored.sort();
    scored
        .into_iter()
        .take(MAX_SUGGESTIONS)
        .map(|(_, n)| n)
        .collect()
}

/// Levenshtein distance over chars (names are short: the quadratic cost is nothing).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_builtins_default_and_config_rows() {
        let extra = BTreeMap::from([("claude".to_string(), "Claude-3.5-Sonnet".to_string())]);
        let t = ModelTable::new(&extra, DEFAULT_MODEL).expect("table");
        assert_eq!(
            t.resolve(None).expect("default"),
            ("gpt-3.5-turbo".into(), "GPT-3.5-Turbo".into())
        );
        assert_eq!(t.resolve(Some("gpt-4")).expect("gpt-4").1, "GPT-4");
        assert_eq!(
            t.resolve(Some("claude")).expect("claude").1,
            "Claude-3.5-Sonnet"
        );
        let list = t.list();
        assert_eq!(list.len(), BUILTIN_MODELS.len() + 1);
        let source = |name: &str| list.iter().find(|m| m.name == name).map(|m| m.source);
        assert_eq!(source("claude"), Some(ModelSource::Config));
        assert_eq!(source("gpt-4"), Some(ModelSource::Table));
    }

    #[test]
    fn a_name_outside_the_table_is_a_handle_when_it_looks_like_one() {
        let extra = BTreeMap::from([("gpt-4o".to_string(), "GPT-4o-Mini".to_string())]);
        let t = ModelTable::new(&extra, DEFAULT_MODEL).expect("table");
        for handle in ["Claude-Sonnet-4.5", "SQL.Helper", "my_bot_2", "GPT-4o-Mini"] {
            assert_eq!(
                t.resolve(Some(handle)).expect(handle),
                (handle.to_owned(), handle.to_owned())
            );
        }
        // The table's names and the config's aliases win over the handle of the same name.
        assert_eq!(t.resolve(Some("gpt-4o")).expect("alias").1, "GPT-4o-Mini");
        assert_eq!(t.resolve(Some("gpt-4")).expect("table").1, "GPT-4");
        assert_eq!(
            t.lookup("gpt-4o"),
            Some(("GPT-4o-Mini", ModelSource::Config))
        );
        assert_eq!(t.lookup("GPT-4"), None, "table names are exact");
    }

    #[test]
    fn handle_rules() {
        for ok in [
            "a",
            "GPT-4",
            "Claude-Sonnet-4.5",
            "x_y.z-1",
            &"a".repeat(64),
        ] {
            assert!(is_bot_handle(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "../etc",
            "a b",
            "a?b=1",
            "a#b",
            "a%2Fb",
            "é",
            "meta-llama/Llama-2-7b-chat-hf",
            &"a".repeat(65),
        ] {
            assert!(!is_bot_handle(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_name_that_is_no_handle_is_unknown_and_lists_the_known_ones() {
        let t = ModelTable::new(&BTreeMap::new(), DEFAULT_MODEL).expect("table");
        let e = t.resolve(Some("gpt 9")).expect_err("unknown");
        assert_eq!(e.kind, ErrorKind::UnknownModel);
        assert!(e.message.contains("gpt-4") && e.message.contains("palm"));
        // The config key the message points to is the real one.
        assert!(e.message.contains("[site.models]"), "{}", e.message);
        assert!(t.resolve(Some("a/b")).is_err());
    }

    #[test]
    fn bad_config_rows_are_refused() {
        let extra = BTreeMap::from([("x".to_string(), "a/b".to_string())]);
        assert!(ModelTable::new(&extra, DEFAULT_MODEL).is_err());
        let e = ModelTable::new(&BTreeMap::new(), "nope").expect_err("unknown default");
        assert!(e.contains("[site.models]"), "{e}");
    }

    #[test]
    fn close_names_are_suggested_closest_first() {
        let names = [
            "gpt-4",
            "gpt-3.5-turbo",
            "palm",
            "Claude-Sonnet-4.5",
            "Claude-Opus-4.5",
            "GPT-4o",
            "Gemini-2.5-Pro",
        ];
        assert_eq!(suggest("gpt-9", names), vec!["gpt-4", "GPT-4o"]);
        // Case is not a difference.
        assert_eq!(suggest("claude-sonnet-4.5", names)[0], "Claude-Sonnet-4.5");
        // A prefix finds the family.
        assert_eq!(
            suggest("Claude", names),
            vec!["Claude-Opus-4.5", "Claude-Sonnet-4.5"]
        );
        assert_eq!(suggest("Claude-Sonet-4.5", names)[0], "Claude-Sonnet-4.5");
        assert!(suggest("Mistral-Large", names).is_empty());
        assert!(suggest("", names).is_empty());
        // Each name once, at most five.
        let many: Vec<String> = (0..20).map(|i| format!("bot-{i}")).collect();
        let s = suggest("bot-1", many.iter().map(String::as_str).chain(["BOT-1"]));
        assert_eq!(s.len(), 5);
        assert_eq!(s[0], "bot-1");
        assert_eq!(
            s.iter().filter(|n| n.eq_ignore_ascii_case("bot-1")).count(),
            1
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("gpt-9", "gpt-4"), 1);
        assert_eq!(edit_distance("gpt-9", "gpt-4o"), 2);
    }
}
