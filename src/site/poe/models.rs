//! The model table: public model names -> Poe bot handles (`{base}/{handle}` is the bot page).
//!
//! The built-in rows are the original provider's table; the config file adds or overrides
//! rows (`[site.models]`), e.g. for today's bots such as `Claude-3.5-Sonnet`.

use std::collections::BTreeMap;

use crate::error::{Error, ErrorKind};
use crate::protocol::ModelInfo;

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

/// Public name -> bot handle, plus the default model.
#[derive(Debug, Clone)]
pub struct ModelTable {
    models: BTreeMap<String, String>,
    default: String,
}

impl ModelTable {
    /// The built-in table with `extra` rows added (an extra row with a built-in name replaces it).
    pub fn new(extra: &BTreeMap<String, String>, default: &str) -> Result<Self, String> {
        let mut models: BTreeMap<String, String> = BUILTIN_MODELS
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect();
        for (name, handle) in extra {
            if handle.is_empty() || handle.contains('/') || handle.contains('?') {
                return Err(format!(
                    "model {name:?}: bot handle {handle:?} must be a plain page name such as \"Claude-3.5-Sonnet\""
                ));
            }
            models.insert(name.clone(), handle.clone());
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

    /// Resolves a requested model (or the default) to `(public name, bot handle)`.
    pub fn resolve(&self, requested: Option<&str>) -> Result<(String, String), Error> {
        let name = requested.unwrap_or(&self.default);
        match self.models.get(name) {
            Some(handle) => Ok((name.to_owned(), handle.clone())),
            None => Err(Error::new(
                ErrorKind::UnknownModel,
                format!(
                    "unknown model {name:?}; known models: {}. Add others under [site.models] in the config file",
                    self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    pub fn list(&self) -> Vec<ModelInfo> {
        self.models
            .iter()
            .map(|(name, bot)| ModelInfo {
                name: name.clone(),
                bot: bot.clone(),
            })
            .collect()
    }
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
        assert_eq!(t.list().len(), BUILTIN_MODELS.len() + 1);
    }

    #[test]
    fn unknown_model_lists_the_known_ones() {
        let t = ModelTable::new(&BTreeMap::new(), DEFAULT_MODEL).expect("table");
        let e = t.resolve(Some("gpt-9")).expect_err("unknown");
        assert_eq!(e.kind, ErrorKind::UnknownModel);
        assert!(e.message.contains("gpt-4") && e.message.contains("palm"));
        // The config key the message points to is the real one.
        assert!(e.message.contains("[site.models]"), "{}", e.message);
    }

    #[test]
    fn bad_config_rows_are_refused() {
        let extra = BTreeMap::from([("x".to_string(), "a/b".to_string())]);
        assert!(ModelTable::new(&extra, DEFAULT_MODEL).is_err());
        let e = ModelTable::new(&BTreeMap::new(), "nope").expect_err("unknown default");
        assert!(e.contains("[site.models]"), "{e}");
    }
}
