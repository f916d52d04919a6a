//! Turns OpenAI-style messages into the single prompt typed into the page.
//!
//! The rule is the one the original provider used, kept so that existing callers see the
//! same behaviour: one message is sent as its bare content; several become `Role: content`
//! lines (role capitalised) joined by newlines, followed by `\nAssistant:`.

use crate::protocol::ChatMessage;

/// Formats `messages` into one prompt. An empty list gives an empty prompt (callers reject it).
pub fn format_prompt(messages: &[ChatMessage]) -> String {
    match messages {
        [] => String::new(),
        [only] => only.content.clone(),
        many => {
            let mut out = many
                .iter()
                .map(|m| format!("{}: {}", capitalise(&m.role), m.content))
                .collect::<Vec<_>>()
                .join("\n");
            out.push_str("\nAssistant:");
            out
        }
    }
}

fn capitalise(role: &str) -> String {
    let mut chars = role.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_is_sent_bare() {
        let m = [ChatMessage::new("user", "Hello\nthere")];
        assert_eq!(format_prompt(&m), "Hello\nthere");
        let m = [ChatMessage::new("system", "only system")];
        assert_eq!(format_prompt(&m), "only system");
    }

    #[test]
    fn several_messages_become_role_lines_and_an_assistant_cue() {
        let m = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "¿Qué tal? 🙂"),
        ];
        assert_eq!(
            format_prompt(&m),
            "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: ¿Qué tal? 🙂\nAssistant:"
        );
    }

    #[test]
    fn roles_are_capitalised_unicode_aware_and_empty_is_empty() {
        assert_eq!(capitalise("élan"), "Élan");
        assert_eq!(capitalise(""), "");
        assert_eq!(format_prompt(&[]), "");
    }
}
