//! What the double's bots answer: deterministic replies ([`expected_reply`]) scripted as
//! cumulative steps and an ending, with the trigger words for the site's misbehaviour
//! (`[[long]]`, `[[unicode]]`, `[[rewrite]]`, `[[error]]`, `[[rate-limit]]`, `[[cancelled]]`,
//! `[[stall]]`, `[[missed]]`, `[[missed-stop]]`, `[[refetch]]`, `[[slow]]`, `[[turns]]`,
//! `[[think]]`). Both modes play the same scripts; only the frames around them differ.

use std::time::Duration;

const UNICODE_TEXT: &str = "Unicode check: emoji 😀👍🏽 and a family 👩‍👩‍👧‍👦,\nCJK 漢字かなカナ 한국어,\nRTL العربية مرحبا and עברית שלום,\n\ttab, \"double\" and 'single' quotes, backslashes \\ \\\\ \\n (literal),\nand markup shown as text: </div><script>alert(1)</script> & done.";

fn long_text() -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < 100 * 1024 {
        i += 1;
        s.push_str(&format!(
            "Line {i:05}: the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n"
        ));
    }
    s
}

/// `n` growing cumulative prefixes of `text`, the last one being `text`; split on char
/// boundaries (fewer steps for very short texts).
fn prefixes(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    (1..=n)
        .map(|k| chars[..chars.len() * k / n].iter().collect())
        .collect()
}

/// How a scripted reply ends after its `incomplete` steps.
pub(super) enum Ending {
    /// A last frame with this text and state.
    Final(String, &'static str),
    /// No more frames (until a stop).
    Stall,
    /// An outer `missed_messages` frame, then these steps and the complete text stream on.
    MissedThen(Vec<String>, String),
    /// The reply completes server-side with this text, then the socket signals lost updates
    /// (outer `missed_messages`, or an inner `refetchChannel` when the flag is set) and falls
    /// silent: only the page's refetch shows the end.
    LostThenSilent(String, bool),
}

/// A reply: cumulative `incomplete` texts, then its ending; streamed `delay` apart
/// (`None`: the double's `chunk_delay_ms`).
pub(super) struct Script {
    pub(super) steps: Vec<String>,
    pub(super) ending: Ending,
    pub(super) delay: Option<Duration>,
    /// How long the bot thinks before its message appears (a model's time to its first
    /// token), after the prompt's echo; `[[think]]` sets [`THINK`].
    pub(super) think: Option<Duration>,
}

/// A `[[think]]` bot's time before its message appears: long enough for other chats' replies
/// to start and end meanwhile.
pub(super) const THINK: Duration = Duration::from_millis(800);

/// The reply to `prompt` sent to `bot` as the `turn`-th human message of its chat (1 for
/// the first).
pub(super) fn script(bot: &str, prompt: &str, turn: u32) -> Script {
    let text = |s: &str| s.to_owned();
    let normal = |full: String, n: usize| {
        let mut steps = prefixes(&full, n);
        steps.pop();
        Script {
            steps,
            ending: Ending::Final(full, "complete"),
            delay: None,
            think: None,
        }
    };
    let echo = format!("Echo from {bot}: {prompt}");
    let two = || prefixes(&echo, 5).into_iter().take(2).collect::<Vec<_>>();
    let with_end = |ending: Ending| Script {
        steps: two(),
        ending,
        delay: None,
        think: None,
    };
    let last_of_two = || two().pop().unwrap_or_default();
    if prompt.contains("[[turns]]") {
        normal(
            format!("Earlier human messages: {}", turn.saturating_sub(1)),
            3,
        )
    } else if prompt.contains("[[long]]") {
        normal(long_text(), 25)
    } else if prompt.contains("[[unicode]]") {
        normal(text(UNICODE_TEXT), 5)
    } else if prompt.contains("[[rewrite]]") {
        Script {
            steps: vec![text("Here is **bold"), text("Here is **bold text*")],
            ending: Ending::Final(text("Here is bold text, rewritten."), "complete"),
            delay: None,
            think: None,
        }
    } else if prompt.contains("[[error]]") {
        with_end(Ending::Final(last_of_two(), "error_user_message_too_long"))
    } else if prompt.contains("[[rate-limit]]") {
        with_end(Ending::Final(last_of_two(), "error_rate_limit_exceeded"))
    } else if prompt.contains("[[cancelled]]") {
        with_end(Ending::Final(last_of_two(), "cancelled"))
    } else if prompt.contains("[[stall]]") {
        with_end(Ending::Stall)
    } else if prompt.contains("[[missed-stop]]") {
        with_end(Ending::LostThenSilent(echo.clone(), false))
    } else if prompt.contains("[[refetch]]") {
        with_end(Ending::LostThenSilent(echo.clone(), true))
    } else if prompt.contains("[[missed]]") {
        let mut rest: Vec<String> = prefixes(&echo, 5).into_iter().skip(2).collect();
        rest.pop();
        with_end(Ending::MissedThen(rest, echo.clone()))
    } else if prompt.contains("[[slow]]") {
        let words: Vec<String> = (1..=200).map(|i| format!("word{i}")).collect();
        let steps = (1..200).map(|k| words[..k].join(" ")).collect();
        Script {
            steps,
            ending: Ending::Final(words.join(" "), "complete"),
            delay: Some(Duration::from_millis(50)),
            think: None,
        }
    } else if prompt.contains("[[think]]") {
        Script {
            think: Some(THINK),
            ..normal(echo, 5)
        }
    } else {
        normal(echo, 5)
    }
}

/// The final text the double produces for `prompt` sent to `bot`: the bot message's last
/// `text` (for `[[error]]`, `[[cancelled]]` and `[[stall]]` the text it stopped at; for
/// `[[missed-stop]]` and `[[refetch]]` the text only the page's refetch shows). For the first
/// message of a chat; see [`expected_reply_at`] for later turns.
pub fn expected_reply(bot: &str, prompt: &str) -> String {
    expected_reply_at(bot, prompt, 1)
}

/// [`expected_reply`] for the `turn`-th human message of a chat (1 for the first); only
/// `[[turns]]` answers differ by turn.
pub fn expected_reply_at(bot: &str, prompt: &str, turn: u32) -> String {
    let s = script(bot, prompt, turn);
    match s.ending {
        Ending::Final(t, _) | Ending::MissedThen(_, t) | Ending::LostThenSilent(t, _) => t,
        Ending::Stall => s.steps.last().cloned().unwrap_or_default(),
    }
}
