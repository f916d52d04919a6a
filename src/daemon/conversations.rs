//! Conversations: which one a request belongs to, and whether it can go on in the site chat
//! of its earlier turns.
//!
//! An OpenAI-style client is stateless: each request carries the whole conversation. A
//! request whose messages are a remembered conversation (same model, same system message,
//! every turn and answer as poed gave it) plus ONE new user message is sent as only that
//! message in the conversation's site chat ([`Send::Continue`]); anything else starts a
//! fresh chat with the whole history flattened into one prompt ([`Send::Fresh`]), saying
//! why when it followed an earlier turn ([`Reason`]). An IPC client may name the
//! conversation (`conversation` in `complete`) and send only the new message.
//!
//! Remembered here, in memory (the most recently used [`CAPACITY`]), and loaded from the
//! history at start, so continuation survives a restart. A conversation serves one request
//! at a time: a second one arriving meanwhile branches into a new conversation. A request
//! that failed after its prompt reached the site leaves a turn in the site chat that the
//! client does not have: that chat is not continued any more.

use std::sync::{Arc, Mutex};

use crate::error::{Error, ErrorKind};
use crate::history::matching::{self, Asked, StoredView};
use crate::protocol::{ChatMessage, NotContinued};
use crate::site::poe::prompt::format_prompt;

/// Conversations remembered in memory.
pub const CAPACITY: usize = 200;

/// Why a request that followed an earlier turn went to a fresh site chat.
pub type Reason = NotContinued;

fn reason(kind: &str, message: impl Into<String>) -> Reason {
    NotContinued {
        kind: kind.to_owned(),
        message: message.into(),
    }
}

/// The site chat a conversation lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SiteChat {
    code: String,
    /// Replies the chat's page shows.
    answers: usize,
    /// The sign-in it was made under (see [`Conversations::signed_in_again`]).
    session: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    id: i64,
    model: String,
    bot: String,
    system: Option<String>,
    /// Every turn and answer, as a client sends them back (failed prompts left out).
    transcript: Vec<ChatMessage>,
    chat: Option<SiteChat>,
    /// Set when the site chat cannot take the next message (a failure after the send).
    blocked: Option<Reason>,
    busy: bool,
    /// Larger = used more recently.
    used: u64,
}

impl Entry {
    /// A stored conversation, remembered as last used at `used`; its site chat counts as
    /// made under the sign-in poed started with.
    fn remembered(r: Remembered, used: u64) -> Entry {
        let answers = r
            .transcript
            .iter()
            .filter(|m| m.role == "assistant")
            .count();
        Entry {
            id: r.id,
            bot: r.bot.unwrap_or_else(|| r.model.clone()),
            model: r.model,
            system: r.system,
            transcript: r.transcript,
            chat: r.chat_code.map(|code| SiteChat {
                code,
                answers,
                session: 0,
            }),
            blocked: r.ended_in_failure.then(after_failure),
            busy: false,
            used,
        }
    }
}

/// A conversation as stored in the history, to be remembered at start.
#[derive(Debug, Clone)]
pub struct Remembered {
    pub id: i64,
    pub model: String,
    pub bot: Option<String>,
    pub system: Option<String>,
    pub transcript: Vec<ChatMessage>,
    pub chat_code: Option<String>,
    /// The last request of the conversation failed (its site chat may hold a turn the
    /// client does not have).
    pub ended_in_failure: bool,
}

struct Inner {
    entries: Vec<Entry>,
    next_id: i64,
    session: u64,
    clock: u64,
}

/// The remembered conversations. Shared by the engine's requests.
pub struct Conversations {
    inner: Mutex<Inner>,
}

/// How a request is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    /// Only the new message, in the site chat `code` (showing `answers` replies so far).
    Continue {
        code: String,
        answers: usize,
        prompt: String,
    },
    /// The whole conversation flattened into one prompt, in a fresh chat.
    Fresh { prompt: String },
}

/// What a request is, as a conversation. Holds the conversation for this request until
/// [`Conversations::finish`] (or until dropped, e.g. on a panic).
pub struct Plan {
    pub conversation: i64,
    model: String,
    bot: String,
    /// The conversation starts with this request.
    pub new: bool,
    pub system: Option<String>,
    /// Every turn of the conversation with this request's (the system message apart).
    pub turns: Vec<ChatMessage>,
    /// How many of `turns` the conversation had already.
    pub stored_turns: usize,
    pub send: Send,
    /// Set when the request followed an earlier turn but goes to a fresh chat.
    pub not_continued: Option<Reason>,
    owner: Arc<Conversations>,
    holds: bool,
}

impl Plan {
    /// The prompt to send now.
    pub fn prompt(&self) -> &str {
        match &self.send {
            Send::Continue { prompt, .. } | Send::Fresh { prompt } => prompt,
        }
    }

    /// The chat could not be continued after all (`why`, before anything was sent): the
    /// request goes to a fresh chat with the whole conversation.
    pub fn fall_back(&mut self, kind: &str, message: impl Into<String>) {
        let mut all = Vec::with_capacity(self.turns.len() + 1);
        all.extend(
            self.system
                .iter()
                .map(|s| ChatMessage::new("system", s.clone())),
        );
        all.extend(self.turns.iter().cloned());
        self.send = Send::Fresh {
            prompt: format_prompt(&all),
        };
        self.not_continued = Some(reason(kind, message));
    }

    pub fn continued(&self) -> bool {
        matches!(self.send, Send::Continue { .. })
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        if self.holds {
            self.owner.release(self.conversation);
        }
    }
}

/// How a planned request ended, for [`Conversations::finish`].
pub enum Ended<'a> {
    Answered {
        text: &'a str,
        chat_code: Option<&'a str>,
    },
    /// Failed; `sent` when the prompt may have reached the site.
    Failed { sent: bool },
}

impl Conversations {
    /// Remembers `stored` (most recently used first); new conversations are numbered from
    /// `next_id`.
    pub fn new(stored: Vec<Remembered>, next_id: i64) -> Arc<Conversations> {
        let count = stored.len().min(CAPACITY) as u64;
        let entries = stored
            .into_iter()
            .take(CAPACITY)
            .enumerate()
            .map(|(i, r)| Entry::remembered(r, count - i as u64))
            .collect();
        Arc::new(Conversations {
            inner: Mutex::new(Inner {
                entries,
                next_id,
                session: 0,
                clock: count + 1,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sign-in or cookie import happened: the account may be another one, so the site
    /// chats known so far are not continued.
    pub fn signed_in_again(&self) {
        self.lock().session += 1;
    }

    /// Whether conversation `id` is remembered.
    pub fn knows(&self, id: i64) -> bool {
        self.lock().entries.iter().any(|e| e.id == id)
    }

    /// Remembers a stored conversation again (one a client named after it left memory),
    /// as the most recently used; its site chat counts as made under the current sign-in
    /// only if nothing was signed in since start.
    pub fn remember(&self, r: Remembered) {
        let mut inner = self.lock();
        if inner.entries.iter().any(|e| e.id == r.id) {
            return;
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.entries.push(Entry::remembered(r, used));
        inner.evict();
    }

    /// Plans a request for `model` (whose bot is `bot`) with `messages`; `named` is the
    /// conversation the client named, whose earlier turns `messages` may leave out.
    pub fn plan(
        self: &Arc<Self>,
        model: &str,
        bot: &str,
        messages: &[ChatMessage],
        named: Option<i64>,
    ) -> Result<Plan, Error> {
        let mut inner = self.lock();
        let session = inner.session;
        // The conversation in full: a named one's stored turns first, unless the client
        // sent them again.
        let full: Vec<ChatMessage>;
        let messages = match named {
            None => messages,
            Some(id) => {
                let e = inner
                    .entries
                    .iter()
                    .find(|e| e.id == id)
                    .ok_or_else(|| unknown_conversation(id))?;
                let (system, rest) = matching::split_system(messages);
                let system = system.map(str::to_owned).or_else(|| e.system.clone());
                let sent_again = !e.transcript.is_empty() && rest.starts_with(&e.transcript);
                full = system
                    .map(|s| ChatMessage::new("system", s))
                    .into_iter()
                    .chain(if sent_again {
                        Vec::new()
                    } else {
                        e.transcript.clone()
                    })
                    .chain(rest.iter().cloned())
                    .collect();
                &full
            }
        };
        let (system, turns) = matching::split_system(messages);
        let found = {
            let mut by_use: Vec<&Entry> = inner
                .entries
                .iter()
                .filter(|e| named.is_none_or(|id| e.id == id))
                .collect();
            by_use.sort_by_key(|e| std::cmp::Reverse(e.used));
            let asked = Asked {
                model,
                system,
                turns,
            };
            matching::continued_in(
                by_use.into_iter().map(|e| StoredView {
                    id: e.id,
                    model: &e.model,
                    system: e.system.as_deref(),
                    transcript: &e.transcript,
                }),
                asked,
            )
        };
        let fresh = Send::Fresh {
            prompt: format_prompt(messages),
        };
        inner.clock += 1;
        let now = inner.clock;
        let mut plan = Plan {
            conversation: 0,
            model: model.to_owned(),
            bot: bot.to_owned(),
            new: true,
            system: system.map(str::to_owned),
            turns: turns.to_vec(),
            stored_turns: 0,
            send: fresh,
            not_continued: None,
            owner: self.clone(),
            holds: false,
        };
        let Some((id, stored)) = found else {
            // A new conversation (a named one with another model or system is one too).
            if let Some(id) = named {
                let e = inner.entries.iter().find(|e| e.id == id);
                plan.not_continued = e.map(|e| {
                    if e.model != model {
                        reason(
                            "other_model",
                            format!("conversation {id} is with {}; a new one starts with {model}", e.model),
                        )
                    } else if e.system.as_deref() != system {
                        reason("other_system", format!("the system message differs from conversation {id}'s; a new conversation starts"))
                    } else {
                        reason("edited", format!("the messages do not follow conversation {id}'s last answer; a new conversation starts"))
                    }
                });
            }
            plan.conversation = inner.new_id();
            return Ok(plan);
        };
        let Some(e) = inner.entries.iter_mut().find(|e| e.id == id) else {
            plan.conversation = inner.new_id();
            return Ok(plan);
        };
        if e.busy {
            // Another request of this conversation runs: this one branches off.
            plan.not_continued = Some(reason(
                "chat_busy",
                format!("another request of conversation {id} is running; this one started a new conversation with the whole history"),
            ));
            plan.conversation = inner.new_id();
            return Ok(plan);
        }
        e.busy = true;
        e.used = now;
        plan.holds = true;
        plan.conversation = id;
        plan.new = false;
        plan.stored_turns = stored;
        let new_turns = &turns[stored..];
        let why = if e.bot != bot {
            Some(reason(
                "other_model",
                format!("model {model} now names bot {bot}, not {}", e.bot),
            ))
        } else if new_turns.len() != 1 || new_turns[0].role != "user" {
            Some(reason(
                "several_new_messages",
                format!(
                    "the request adds {} messages after the last answer, not one user message: only a single new user message can go on in the site chat",
                    new_turns.len()
                ),
            ))
        } else if let Some(blocked) = &e.blocked {
            Some(blocked.clone())
        } else {
            match &e.chat {
                None => Some(reason(
                    "no_site_chat",
                    "the site did not name the chat of the earlier turns",
                )),
                Some(c) if c.session != session => Some(reason(
                    "account_changed",
                    "the profile was signed in again since the earlier turns (the account may be another one)",
                )),
                Some(c) => {
                    plan.send = Send::Continue {
                        code: c.code.clone(),
                        answers: c.answers,
                        prompt: new_turns[0].content.clone(),
                    };
                    None
                }
            }
        };
        plan.not_continued = why;
        Ok(plan)
    }

    /// Records how `plan`'s request ended: an answer extends the conversation (and names
    /// its site chat); a failure after the send stops its site chat from being continued.
    pub fn finish(&self, mut plan: Plan, ended: Ended<'_>) {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let session = inner.session;
        let continued = plan.continued();
        let index = match inner.entries.iter().position(|e| e.id == plan.conversation) {
            Some(i) => i,
            None => {
                inner.entries.push(Entry {
                    id: plan.conversation,
                    model: plan.model.clone(),
                    bot: plan.bot.clone(),
                    system: plan.system.clone(),
                    transcript: Vec::new(),
                    chat: None,
                    blocked: None,
                    busy: false,
                    used: now,
                });
                inner.entries.len() - 1
            }
        };
        let e = &mut inner.entries[index];
        match ended {
            Ended::Answered { text, chat_code } => {
                let mut transcript = std::mem::take(&mut plan.turns);
                transcript.push(ChatMessage::new("assistant", text));
                e.transcript = transcript;
                e.blocked = None;
                e.chat = match (chat_code, e.chat.take()) {
                    // Continued in the same chat: one more reply on its page.
                    (Some(code), Some(mut c)) if continued && c.code == code => {
                        c.answers += 1;
                        Some(c)
                    }
                    (None, Some(mut c)) if continued => {
                        c.answers += 1;
                        Some(c)
                    }
                    (Some(code), _) => Some(SiteChat {
                        code: code.to_owned(),
                        answers: 1,
                        session,
                    }),
                    (None, _) => None,
                };
            }
            Ended::Failed { sent } => {
                if sent && continued {
                    e.blocked = Some(after_failure());
                }
            }
        }
        e.used = now;
        e.busy = false;
        plan.holds = false;
        inner.evict();
    }

    fn release(&self, id: i64) {
        if let Some(e) = self.lock().entries.iter_mut().find(|e| e.id == id) {
            e.busy = false;
        }
    }
}

impl Inner {
    fn new_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Forgets the least recently used conversations beyond [`CAPACITY`] (not running ones).
    fn evict(&mut self) {
        while self.entries.len() > CAPACITY {
            let Some(i) = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.busy)
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
            else {
                return;
            };
            self.entries.swap_remove(i);
        }
    }
}

fn after_failure() -> Reason {
    reason(
        "after_failure",
        "the previous request of this conversation failed after its prompt reached the site, so the site chat holds a turn the conversation does not",
    )
}

fn unknown_conversation(id: i64) -> Error {
    Error::new(
        ErrorKind::UnknownConversation,
        format!(
            "poed does not know conversation {id} (never made, pruned after history.keep_days, or forgotten at a restart when history.enabled = false); send the whole conversation in \"messages\" without \"conversation\""
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    fn answered(c: &Conversations, plan: Plan, text: &str, code: Option<&str>) {
        c.finish(
            plan,
            Ended::Answered {
                text,
                chat_code: code,
            },
        );
    }

    /// A conversation of one answered turn in chat `abc`.
    fn one_turn() -> (Arc<Conversations>, i64) {
        let c = Conversations::new(Vec::new(), 1);
        let first = c
            .plan("gpt-4", "GPT-4", &[m("system", "S"), m("user", "hi")], None)
            .expect("plan");
        assert!(first.new && !first.continued() && first.not_continued.is_none());
        assert_eq!(first.prompt(), "System: S\nUser: hi\nAssistant:");
        let id = first.conversation;
        answered(&c, first, "hello", Some("abc"));
        (c, id)
    }

    fn follow_up(more: &str) -> Vec<ChatMessage> {
        vec![
            m("system", "S"),
            m("user", "hi"),
            m("assistant", "hello"),
            m("user", more),
        ]
    }

    #[test]
    fn the_next_user_message_goes_on_in_the_chat_alone() {
        let (c, id) = one_turn();
        let next = c
            .plan("gpt-4", "GPT-4", &follow_up("more"), None)
            .expect("plan");
        assert_eq!(next.conversation, id);
        assert!(!next.new);
        assert_eq!(next.stored_turns, 2);
        assert_eq!(
            next.send,
            Send::Continue {
                code: "abc".into(),
                answers: 1,
                prompt: "more".into()
            }
        );
        answered(&c, next, "even more", Some("abc"));
        // The third turn: the chat now shows two replies.
        let mut third = follow_up("more");
        third.extend([m("assistant", "even more"), m("user", "last")]);
        let plan = c.plan("gpt-4", "GPT-4", &third, None).expect("plan");
        assert!(
            matches!(&plan.send, Send::Continue { answers: 2, prompt, .. } if prompt == "last")
        );
    }

    #[test]
    fn a_named_conversation_takes_only_the_new_message() {
        let (c, id) = one_turn();
        let plan = c
            .plan("gpt-4", "GPT-4", &[m("user", "more")], Some(id))
            .expect("plan");
        assert!(plan.continued());
        assert_eq!(plan.prompt(), "more");
        assert_eq!(plan.turns.len(), 3);
        drop(plan);
        // The whole conversation sent again with the name is the same request.
        let plan = c
            .plan("gpt-4", "GPT-4", &follow_up("more"), Some(id))
            .expect("plan");
        assert!(plan.continued());
        drop(plan);
        let e = c
            .plan("gpt-4", "GPT-4", &[m("user", "x")], Some(id + 100))
            .err()
            .expect("unknown");
        assert_eq!(e.kind, ErrorKind::UnknownConversation);
        // Another model: a new conversation, and the reason.
        let other = c
            .plan("claude", "Claude", &[m("user", "more")], Some(id))
            .expect("plan");
        assert!(other.new && !other.continued());
        assert_eq!(
            other.not_continued.as_ref().map(|r| r.kind.as_str()),
            Some("other_model")
        );
        assert_eq!(
            other.prompt(),
            "System: S\nUser: hi\nAssistant: hello\nUser: more\nAssistant:"
        );
    }

    #[test]
    fn edits_other_models_and_unknown_histories_start_new_conversations() {
        let (c, id) = one_turn();
        let mut edited = follow_up("more");
        edited[2].content = "HELLO".into();
        for (model, messages) in [
            ("gpt-4", edited),
            ("claude", follow_up("more")),
            ("gpt-4", vec![m("user", "unrelated")]),
        ] {
            let plan = c.plan(model, "B", &messages, None).expect("plan");
            assert!(plan.new && plan.conversation != id && !plan.continued());
            assert!(plan.not_continued.is_none());
        }
    }

    #[test]
    fn a_follow_up_that_cannot_go_on_in_the_chat_says_why() {
        let (c, id) = one_turn();
        // Two new messages after the answer.
        let mut two = follow_up("a");
        two.push(m("user", "b"));
        let plan = c.plan("gpt-4", "GPT-4", &two, None).expect("plan");
        assert_eq!(plan.conversation, id);
        assert_eq!(
            plan.not_continued.as_ref().map(|r| r.kind.as_str()),
            Some("several_new_messages")
        );
        // While it runs, a second follow-up branches into a new conversation.
        let second = c
            .plan("gpt-4", "GPT-4", &follow_up("b"), None)
            .expect("plan");
        assert_ne!(second.conversation, id);
        assert_eq!(
            second.not_continued.as_ref().map(|r| r.kind.as_str()),
            Some("chat_busy")
        );
        drop(second);
        drop(plan);
        // Dropping the plan (a panic) frees the conversation.
        c.signed_in_again();
        let plan = c
            .plan("gpt-4", "GPT-4", &follow_up("c"), None)
            .expect("plan");
        assert_eq!(
            plan.not_continued.as_ref().map(|r| r.kind.as_str()),
            Some("account_changed")
        );
        // The fresh chat it went to is continued next time.
        answered(&c, plan, "answer c", Some("new-chat"));
        let mut next = follow_up("c");
        next.extend([m("assistant", "answer c"), m("user", "d")]);
        let plan = c.plan("gpt-4", "GPT-4", &next, None).expect("plan");
        assert!(
            matches!(&plan.send, Send::Continue { code, answers: 1, .. } if code == "new-chat")
        );
    }

    #[test]
    fn a_failure_after_the_send_stops_the_chat_from_being_continued() {
        let (c, _) = one_turn();
        let plan = c
            .plan("gpt-4", "GPT-4", &follow_up("a"), None)
            .expect("plan");
        assert!(plan.continued());
        c.finish(plan, Ended::Failed { sent: false });
        let plan = c
            .plan("gpt-4", "GPT-4", &follow_up("a"), None)
            .expect("plan");
        assert!(plan.continued(), "nothing was sent: the chat is as it was");
        c.finish(plan, Ended::Failed { sent: true });
        let mut plan = c
            .plan("gpt-4", "GPT-4", &follow_up("a"), None)
            .expect("plan");
        assert_eq!(
            plan.not_continued.as_ref().map(|r| r.kind.as_str()),
            Some("after_failure")
        );
        assert!(!plan.continued());
        plan.fall_back("chat_gone", "gone");
        assert_eq!(
            plan.not_continued.as_ref().map(|r| r.kind.as_str()),
            Some("chat_gone")
        );
    }

    #[test]
    fn a_conversation_named_after_it_left_memory_is_remembered_again() {
        let c = Conversations::new(Vec::new(), 100);
        assert!(!c.knows(7));
        c.remember(Remembered {
            id: 7,
            model: "gpt-4".into(),
            bot: None,
            system: None,
            transcript: vec![m("user", "hi"), m("assistant", "hello")],
            chat_code: Some("abc".into()),
            ended_in_failure: false,
        });
        assert!(c.knows(7));
        let plan = c
            .plan("gpt-4", "gpt-4", &[m("user", "more")], Some(7))
            .expect("plan");
        assert_eq!(plan.prompt(), "more");
        assert!(plan.continued());
    }

    #[test]
    fn remembered_conversations_go_on_and_numbers_count_on() {
        let c = Conversations::new(
            vec![Remembered {
                id: 7,
                model: "gpt-4".into(),
                bot: Some("GPT-4".into()),
                system: None,
                transcript: vec![m("user", "hi"), m("assistant", "hello")],
                chat_code: Some("abc".into()),
                ended_in_failure: false,
            }],
            8,
        );
        let plan = c
            .plan(
                "gpt-4",
                "GPT-4",
                &[m("user", "hi"), m("assistant", "hello"), m("user", "more")],
                None,
            )
            .expect("plan");
        assert_eq!(plan.conversation, 7);
        assert!(plan.continued());
        let fresh = c
            .plan("gpt-4", "GPT-4", &[m("user", "new")], None)
            .expect("plan");
        assert_eq!(fresh.conversation, 8);
    }
}
