//! The frame parser: Poe update-WebSocket frames -> [`Update`]s -> reply steps.
//!
//! Two layers, both pure so they are tested on recorded frames:
//! - [`parse_frame`] decodes one text frame: the outer `{"messages": [...]}` whose entries
//!   are JSON *strings* (double encoding), several per frame; `messageAdded` subscription
//!   updates become [`Update::Message`]; `missed_messages` / `refetchChannel` become
//!   [`Update::LostUpdates`]; anything else (other subscriptions, other sockets' traffic,
//!   non-JSON) is ignored, never an error.
//! - [`ReplyTracker`] follows the bot's reply to one prompt: it skips the human echo, locks
//!   on the first bot message, turns the site's cumulative `text` into appended deltas, and
//!   turns a rewrite that is not a prefix of what was streamed into a [`Chunk::Replace`],
//!   so a client always ends with the site's final text.

use serde_json::Value;

use crate::reply::Chunk;

/// One `messageAdded` update: the current state of a chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageUpdate {
    pub message_id: i64,
    /// `human`, `chat_break`, or the bot's codename.
    pub author: String,
    /// The whole text so far (cumulative).
    pub text: String,
    /// `incomplete`, `complete`, `cancelled` or `error_*`.
    pub state: String,
}

/// What a frame can tell the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Message(MessageUpdate),
    /// The page lost updates (`missed_messages`, `refetchChannel`): the reply must be
    /// recovered from the page instead of from frames.
    LostUpdates(&'static str),
}

/// Decodes one text frame into updates, in order. Frames that are not updates give none.
pub fn parse_frame(payload: &str) -> Vec<Update> {
    let Ok(outer) = serde_json::from_str::<Value>(payload) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if outer.get("error").and_then(Value::as_str) == Some("missed_messages") {
        out.push(Update::LostUpdates("missed_messages"));
    }
    if let Some(entries) = outer.get("messages").and_then(Value::as_array) {
        for entry in entries {
            // Each entry is a JSON string holding the inner object; tolerate a plain object too.
            let inner = match entry {
                Value::String(s) => match serde_json::from_str::<Value>(s) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                Value::Object(_) => entry.clone(),
                _ => continue,
            };
            if let Some(update) = parse_inner(&inner) {
                out.push(update);
            }
        }
    }
    out
}

fn parse_inner(inner: &Value) -> Option<Update> {
    match inner.get("message_type").and_then(Value::as_str)? {
        "refetchChannel" => Some(Update::LostUpdates("refetchChannel")),
        "subscriptionUpdate" => {
            let payload = inner.get("payload")?;
            if payload.get("subscription_name").and_then(Value::as_str)? != "messageAdded" {
                return None;
            }
            let m = payload.get("data")?.get("messageAdded")?;
            Some(Update::Message(MessageUpdate {
                message_id: m.get("messageId").and_then(Value::as_i64)?,
                author: m.get("author").and_then(Value::as_str)?.to_owned(),
                text: m
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                state: m
                    .get("state")
                    .and_then(Value::as_str)
                    .unwrap_or("incomplete")
                    .to_owned(),
            }))
        }
        _ => None,
    }
}

/// How a reply ended on the site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// State `complete`: the final text.
    Complete(String),
    /// State `cancelled` or `error_*`, with the text the site had at that point.
    Failed { state: String, text: String },
}

/// What the client should be told after an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStep {
    /// The reply text changed.
    Text(Chunk),
    /// The reply ended.
    Finished(Outcome),
}

/// Follows the bot's reply in one fresh chat.
#[derive(Debug, Default)]
pub struct ReplyTracker {
    bot_message: Option<i64>,
    /// The text the client has been given so far.
    streamed: String,
    finished: bool,
}

impl ReplyTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The reply text as far as it has been streamed.
    pub fn text(&self) -> &str {
        &self.streamed
    }

    /// Whether a bot message has been seen (the site accepted the prompt).
    pub fn started(&self) -> bool {
        self.bot_message.is_some()
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Feeds one message update; returns what to tell the client (possibly nothing).
    pub fn feed(&mut self, m: &MessageUpdate) -> Vec<ReplyStep> {
        if self.finished || m.author == "human" || m.author == "chat_break" {
            return Vec::new();
        }
        match self.bot_message {
            None => self.bot_message = Some(m.message_id),
            Some(id) if id != m.message_id => return Vec::new(),
            Some(_) => {}
        }
        let mut steps: Vec<ReplyStep> = Chunk::between(&self.streamed, &m.text)
            .map(ReplyStep::Text)
            .into_iter()
            .collect();
        self.streamed.clone_from(&m.text);
        let outcome = match m.state.as_str() {
            "complete" => Some(Outcome::Complete(m.text.clone())),
            s if s == "cancelled" || s.starts_with("error") => Some(Outcome::Failed {
                state: s.to_owned(),
                text: m.text.clone(),
            }),
            _ => None,
        };
        if let Some(outcome) = outcome {
            self.finished = true;
            steps.push(ReplyStep::Finished(outcome));
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Builds a frame the way the site does: inner objects double-encoded as strings.
    fn frame(entries: &[Value]) -> String {
        let strings: Vec<Value> = entries
            .iter()
            .map(|e| Value::String(e.to_string()))
            .collect();
        json!({"messages": strings, "min_seq": 42}).to_string()
    }

    fn added(id: i64, author: &str, text: &str, state: &str) -> Value {
        json!({"message_type": "subscriptionUpdate", "payload": {
            "subscription_name": "messageAdded", "unique_id": "messageAdded:123",
            "data": {"messageAdded": {"id": "TWVzc2FnZTox", "messageId": id, "author": author,
                "text": text, "state": state, "contentType": "text_markdown",
                "suggestedReplies": []}}}})
    }

    fn noise(name: &str) -> Value {
        json!({"message_type": "subscriptionUpdate", "payload": {
            "subscription_name": name, "unique_id": format!("{name}:1"),
            "data": {name: {"title": "x"}}}})
    }

    fn msg(id: i64, author: &str, text: &str, state: &str) -> Update {
        Update::Message(MessageUpdate {
            message_id: id,
            author: author.into(),
            text: text.into(),
            state: state.into(),
        })
    }

    #[test]
    fn parses_every_entry_of_a_batched_frame_and_skips_noise() {
        let f = frame(&[
            added(1, "human", "hi", "complete"),
            noise("viewerStateUpdated"),
            added(2, "beaver", "Hel", "incomplete"),
            noise("chatTitleUpdated"),
        ]);
        assert_eq!(
            parse_frame(&f),
            vec![
                msg(1, "human", "hi", "complete"),
                msg(2, "beaver", "Hel", "incomplete")
            ]
        );
    }

    #[test]
    fn frames_that_are_not_updates_are_ignored() {
        for payload in [
            "ping",
            "",
            "{\"type\":\"heartbeat\",\"ts\":1}",
            "[1,2,3]",
            "{\"messages\": [\"not json\", 5, null]}",
            &frame(&[json!({"message_type": "other"})]),
            &frame(&[noise("messageCancelled"), noise("messageTextUpdated")]),
        ] {
            assert_eq!(parse_frame(payload), vec![], "payload {payload:?}");
        }
    }

    #[test]
    fn lost_update_signals_are_reported() {
        assert_eq!(
            parse_frame("{\"error\":\"missed_messages\"}"),
            vec![Update::LostUpdates("missed_messages")]
        );
        let f = frame(&[json!({"message_type": "refetchChannel"})]);
        assert_eq!(parse_frame(&f), vec![Update::LostUpdates("refetchChannel")]);
    }

    #[test]
    fn unicode_and_escapes_survive_double_encoding() {
        let text = "emoji 👩‍💻, CJK 漢字, RTL مرحبا שלום\n\"quotes\" 'x' back\\slash \\n </div>";
        let f = frame(&[added(9, "beaver", text, "complete")]);
        assert_eq!(parse_frame(&f), vec![msg(9, "beaver", text, "complete")]);
    }

    fn run(tracker: &mut ReplyTracker, updates: &[(i64, &str, &str, &str)]) -> Vec<ReplyStep> {
        updates
            .iter()
            .flat_map(|(id, a, t, s)| {
                tracker.feed(&MessageUpdate {
                    message_id: *id,
                    author: (*a).into(),
                    text: (*t).into(),
                    state: (*s).into(),
                })
            })
            .collect()
    }

    #[test]
    fn cumulative_text_becomes_deltas() {
        let mut t = ReplyTracker::new();
        let steps = run(
            &mut t,
            &[
                (1, "human", "question", "complete"),
                (2, "beaver", "", "incomplete"),
                (2, "beaver", "Hel", "incomplete"),
                (2, "beaver", "Hel", "incomplete"),
                (2, "beaver", "Hello 🙂", "incomplete"),
                (2, "beaver", "Hello 🙂!", "complete"),
            ],
        );
        assert_eq!(
            steps,
            vec![
                ReplyStep::Text(Chunk::Append("Hel".into())),
                ReplyStep::Text(Chunk::Append("lo 🙂".into())),
                ReplyStep::Text(Chunk::Append("!".into())),
                ReplyStep::Finished(Outcome::Complete("Hello 🙂!".into())),
            ]
        );
        assert!(t.finished());
    }

    #[test]
    fn a_non_prefix_rewrite_replaces_and_the_final_text_wins() {
        let mut t = ReplyTracker::new();
        let steps = run(
            &mut t,
            &[
                (2, "beaver", "Here is **bold", "incomplete"),
                (2, "beaver", "Here is bold", "incomplete"),
                (2, "beaver", "Here is bold text.", "complete"),
            ],
        );
        assert_eq!(
            steps,
            vec![
                ReplyStep::Text(Chunk::Append("Here is **bold".into())),
                ReplyStep::Text(Chunk::Replace("Here is bold".into())),
                ReplyStep::Text(Chunk::Append(" text.".into())),
                ReplyStep::Finished(Outcome::Complete("Here is bold text.".into())),
            ]
        );
        // Applying the steps as a client does yields exactly the final text.
        let mut client = String::new();
        for s in steps {
            match s {
                ReplyStep::Text(c) => c.apply(&mut client),
                ReplyStep::Finished(_) => {}
            }
        }
        assert_eq!(client, "Here is bold text.");
    }

    #[test]
    fn other_messages_and_late_updates_are_ignored() {
        let mut t = ReplyTracker::new();
        let steps = run(
            &mut t,
            &[
                (2, "beaver", "A", "incomplete"),
                (3, "beaver", "other message", "incomplete"),
                (4, "chat_break", "", "complete"),
                (2, "beaver", "AB", "complete"),
                (2, "beaver", "ABC", "complete"),
            ],
        );
        assert_eq!(
            steps,
            vec![
                ReplyStep::Text(Chunk::Append("A".into())),
                ReplyStep::Text(Chunk::Append("B".into())),
                ReplyStep::Finished(Outcome::Complete("AB".into())),
            ]
        );
    }

    #[test]
    fn error_and_cancelled_states_finish_as_failures() {
        for state in ["error_user_message_too_long", "cancelled"] {
            let mut t = ReplyTracker::new();
            let steps = run(&mut t, &[(2, "beaver", "partial", state)]);
            assert_eq!(
                steps.last(),
                Some(&ReplyStep::Finished(Outcome::Failed {
                    state: state.into(),
                    text: "partial".into()
                }))
            );
        }
    }
}
