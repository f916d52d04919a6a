//! The plain-text views `poectl history` prints: a list, one conversation, search hits.

use std::fmt::Write;

use super::store::{Conversation, Hit, Summary};

/// Longest excerpt of a message in a list line.
const TITLE_CHARS: usize = 60;

/// `text` on one line, cut to `max` characters with `…`.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `ID  LAST USED  MODEL  MESSAGES  FIRST MESSAGE` lines, newest first.
pub fn list(rows: &[Summary]) -> String {
    let model_width = rows.iter().map(|r| r.model.len()).max().unwrap_or(5).max(5);
    let mut s = format!(
        "{:>5}  {:<16}  {:<model_width$}  {:>4}  {:<7}  FIRST MESSAGE\n",
        "ID", "LAST USED", "MODEL", "MSGS", "OUTCOME"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>5}  {:<16}  {:<model_width$}  {:>4}  {:<7}  {}",
            r.id,
            r.last_used,
            r.model,
            r.messages,
            r.outcome.as_deref().unwrap_or("-"),
            one_line(&r.title, TITLE_CHARS)
        );
    }
    s
}

/// A whole conversation: a header, then each message under its role.
pub fn conversation(c: &Conversation) -> String {
    let mut s = format!(
        "conversation {} · {}{} · {} messages\n",
        c.id,
        c.model,
        c.bot
            .as_deref()
            .map(|b| format!(" ({b})"))
            .unwrap_or_default(),
        c.messages.len()
    );
    if let Some(code) = &c.chat_code {
        let _ = writeln!(s, "site chat: {code} (follow-ups go on there)");
    }
    if let Some(system) = &c.system {
        let _ = writeln!(s, "\n[system]\n{system}");
    }
    for m in &c.messages {
        let mut notes = Vec::new();
        match (m.outcome.as_deref(), &m.error) {
            (Some("ok") | None, _) => {}
            (Some(kind), Some(error)) => notes.push(format!("failed: {kind}: {error}")),
            (Some(kind), None) => notes.push(format!("failed: {kind}")),
        }
        if let Some(t) = &m.timings {
            notes.push(format!("{} ms", t.total_ms));
            if let Some(first) = t.first_token_ms {
                notes.push(format!("first text after {first} ms"));
            }
            if t.queued_ms > 0 {
                notes.push(format!("queued {} ms", t.queued_ms));
            }
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        let _ = writeln!(s, "\n[{}]{notes}\n{}", m.role, m.content);
    }
    s
}

/// `CONVERSATION  WHEN  ROLE  SNIPPET` lines.
pub fn hits(hits: &[Hit]) -> String {
    let mut s = String::new();
    for h in hits {
        let _ = writeln!(
            s,
            "{:>5}  {:<16}  {:<9}  {}",
            h.conversation,
            h.when,
            h.role,
            one_line(&h.snippet, 100)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::store::Message;
    use crate::protocol::Timings;

    #[test]
    fn long_or_multiline_text_becomes_one_short_line() {
        assert_eq!(one_line("a\n b\tc", 10), "a b c");
        assert_eq!(one_line("abcdefghijk", 5), "abcd…");
        assert_eq!(one_line("ünïcödé", 7), "ünïcödé");
    }

    #[test]
    fn a_conversation_shows_roles_outcomes_and_timings() {
        let msg = |turn, role: &str, content: &str| Message {
            turn,
            role: role.into(),
            content: content.into(),
            created_ms: 0,
            timings: None,
            outcome: None,
            error: None,
        };
        let mut failed = msg(1, "user", "again");
        failed.outcome = Some("timeout".into());
        failed.error = Some("too slow".into());
        let mut answer = msg(2, "assistant", "fine");
        answer.outcome = Some("ok".into());
        answer.timings = Some(Timings {
            queued_ms: 0,
            first_token_ms: Some(12),
            total_ms: 345,
        });
        let c = Conversation {
            id: 3,
            created_ms: 0,
            last_used_ms: 0,
            model: "gpt-4".into(),
            bot: Some("GPT-4".into()),
            system: Some("Be brief.".into()),
            chat_code: None,
            messages: vec![msg(0, "user", "hi"), failed, answer],
        };
        let text = conversation(&c);
        assert!(
            text.starts_with("conversation 3 · gpt-4 (GPT-4) · 3 messages\n"),
            "{text}"
        );
        assert!(text.contains("\n[system]\nBe brief.\n"), "{text}");
        assert!(
            text.contains("\n[user] (failed: timeout: too slow)\nagain\n"),
            "{text}"
        );
        assert!(
            text.contains("\n[assistant] (345 ms, first text after 12 ms)\nfine\n"),
            "{text}"
        );
    }
}
