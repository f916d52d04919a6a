//! Which stored conversation a request continues.
//!
//! Clients of an OpenAI-style API are stateless: every request carries the whole conversation
//! so far. A request continues a stored conversation when it has the same model and system
//! message and its turns start with that conversation's transcript (every earlier turn plus
//! the answer poed gave), followed by at least one new turn. Pure functions, so the rule is
//! tested apart from the database.

use crate::protocol::ChatMessage;

/// A stored conversation as the matching sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    pub model: String,
    pub system: Option<String>,
    /// The turns a client would send back: messages and answers, without the prompts of
    /// requests that failed.
    pub transcript: Vec<ChatMessage>,
}

impl Stored {
    pub fn view(&self) -> StoredView<'_> {
        StoredView {
            id: self.id,
            model: &self.model,
            system: self.system.as_deref(),
            transcript: &self.transcript,
        }
    }
}

/// A stored conversation, borrowed (so callers that keep conversations need not copy them
/// to match a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredView<'a> {
    pub id: i64,
    pub model: &'a str,
    pub system: Option<&'a str>,
    pub transcript: &'a [ChatMessage],
}

/// A request split into its system message and its turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked<'a> {
    pub model: &'a str,
    pub system: Option<&'a str>,
    pub turns: &'a [ChatMessage],
}

/// Splits off a leading system message; later system messages stay turns.
pub fn split_system(messages: &[ChatMessage]) -> (Option<&str>, &[ChatMessage]) {
    match messages.split_first() {
        Some((first, rest)) if first.role == "system" => (Some(first.content.as_str()), rest),
        _ => (None, messages),
    }
}

/// The conversation `asked` continues and how many of its turns are already stored: the
/// candidate with the longest matching transcript, the first of equals (callers list the most
/// recently used first). A transcript matches when it is not empty, ends with an answer, and
/// is a proper prefix of the request's turns.
pub fn continued(candidates: &[Stored], asked: Asked<'_>) -> Option<(i64, usize)> {
    continued_in(candidates.iter().map(Stored::view), asked)
}

/// [`continued`] over borrowed candidates.
pub fn continued_in<'a>(
    candidates: impl IntoIterator<Item = StoredView<'a>>,
    asked: Asked<'_>,
) -> Option<(i64, usize)> {
    let mut best: Option<(i64, usize)> = None;
    for c in candidates {
        let n = c.transcript.len();
        let ends_with_answer = c.transcript.last().is_some_and(|m| m.role == "assistant");
        if c.model == asked.model
            && c.system == asked.system
            && ends_with_answer
            && n < asked.turns.len()
            && asked.turns[..n] == c.transcript[..]
            && best.is_none_or(|(_, longest)| n > longest)
        {
            best = Some((c.id, n));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    fn stored(id: i64, transcript: Vec<ChatMessage>) -> Stored {
        Stored {
            id,
            model: "gpt-4".into(),
            system: Some("Be brief.".into()),
            transcript,
        }
    }

    fn asked(turns: &[ChatMessage]) -> Asked<'_> {
        Asked {
            model: "gpt-4",
            system: Some("Be brief."),
            turns,
        }
    }

    #[test]
    fn a_leading_system_message_is_split_off_and_later_ones_stay() {
        let msgs = [m("system", "S"), m("user", "u"), m("system", "T")];
        let (system, turns) = split_system(&msgs);
        assert_eq!(system, Some("S"));
        assert_eq!(turns, &msgs[1..]);
        let msgs = [m("user", "u"), m("system", "S")];
        assert_eq!(split_system(&msgs), (None, &msgs[..]));
        assert_eq!(split_system(&[]), (None, &[][..]));
    }

    #[test]
    fn earlier_turns_plus_the_answer_then_a_new_turn_continue() {
        let c = stored(7, vec![m("user", "hi"), m("assistant", "hello")]);
        let turns = [m("user", "hi"), m("assistant", "hello"), m("user", "more")];
        assert_eq!(continued(&[c], asked(&turns)), Some((7, 2)));
    }

    #[test]
    fn a_different_model_system_turn_or_answer_starts_a_new_conversation() {
        let c = stored(7, vec![m("user", "hi"), m("assistant", "hello")]);
        let turns = [m("user", "hi"), m("assistant", "hello"), m("user", "more")];
        let mut other_model = asked(&turns);
        other_model.model = "claude";
        assert_eq!(continued(std::slice::from_ref(&c), other_model), None);
        let mut no_system = asked(&turns);
        no_system.system = None;
        assert_eq!(continued(std::slice::from_ref(&c), no_system), None);
        let edited = [m("user", "hi"), m("assistant", "HELLO"), m("user", "more")];
        assert_eq!(continued(std::slice::from_ref(&c), asked(&edited)), None);
        let edited = [m("user", "Hi"), m("assistant", "hello"), m("user", "more")];
        assert_eq!(continued(&[c], asked(&edited)), None);
    }

    #[test]
    fn the_same_turns_again_or_fewer_are_a_new_conversation() {
        let c = stored(7, vec![m("user", "hi"), m("assistant", "hello")]);
        let same = [m("user", "hi"), m("assistant", "hello")];
        assert_eq!(continued(std::slice::from_ref(&c), asked(&same)), None);
        assert_eq!(continued(&[c], asked(&same[..1])), None);
    }

    #[test]
    fn a_transcript_without_an_answer_at_its_end_is_never_continued() {
        // A first request that failed leaves nothing a client could send back.
        let empty = stored(1, vec![]);
        let unanswered = stored(2, vec![m("user", "hi")]);
        let turns = [m("user", "hi"), m("assistant", "x"), m("user", "more")];
        assert_eq!(continued(&[empty, unanswered], asked(&turns)), None);
    }

    #[test]
    fn the_longest_transcript_wins_and_the_first_of_equals() {
        let short = stored(1, vec![m("user", "a"), m("assistant", "b")]);
        let long = stored(
            2,
            vec![
                m("user", "a"),
                m("assistant", "b"),
                m("user", "c"),
                m("assistant", "d"),
            ],
        );
        let twin = stored(3, long.transcript.clone());
        let turns = [
            m("user", "a"),
            m("assistant", "b"),
            m("user", "c"),
            m("assistant", "d"),
            m("user", "e"),
        ];
        assert_eq!(
            continued(&[short.clone(), long.clone(), twin.clone()], asked(&turns)),
            Some((2, 4))
        );
        assert_eq!(continued(&[twin, short, long], asked(&turns)), Some((3, 4)));
    }
}
