//! The 2025 shape of the site's JSON (`shared/poe-web.md`, second part): update-socket
//! entries (`messageCreated` without `author` and with a bare `unique_id`, `messageAdded` with
//! `bot` / `authorUser` objects and no `suggestedReplies`, jobs, costs, follow-ups, points),
//! the outer frame, and the objects the GraphQL answers share (chat, bot, message).
//!
//! Where the evidence names fields but not their order, keys come in an order of our own
//! (never the order poe-web.md lists them), every object carries an extra `"_"` key, and
//! fields nobody documented appear next to the known ones: a reader must look fields up by
//! name and ignore the rest. [`Obj`] keeps the order (serde_json's map would sort the keys).

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use serde::Serialize;

use super::{splitmix, Bot, StoredMessage};

/// A JSON object written key by key, in the order the keys are given.
pub(super) struct Obj {
    out: String,
}

impl Obj {
    /// A new object whose first key is the `"_"` every 2025 object has.
    pub(super) fn new() -> Obj {
        Obj {
            out: String::from("{"),
        }
        .val("_", tag())
    }

    /// An object without the `"_"` key (outer frames, GraphQL envelopes).
    pub(super) fn plain() -> Obj {
        Obj {
            out: String::from("{"),
        }
    }

    fn key(&mut self, k: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        self.out.push_str(&js(k));
        self.out.push(':');
    }

    /// `k` with any serialisable value.
    pub(super) fn val(mut self, k: &str, v: impl Serialize) -> Obj {
        self.key(k);
        self.out.push_str(&js(&v));
        self
    }

    /// `k` with a value that is already JSON text (an [`Obj::end`], an [`array`], `null`).
    pub(super) fn raw(mut self, k: &str, json: String) -> Obj {
        self.key(k);
        self.out.push_str(&json);
        self
    }

    pub(super) fn end(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// JSON text of `v`.
pub(super) fn js<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// A JSON array of JSON texts.
pub(super) fn array(items: Vec<String>) -> String {
    format!("[{}]", items.join(","))
}

/// The value of a `"_"` key: opaque, different each time.
fn tag() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0x5eed);
    format!(
        "{:08x}",
        splitmix(NEXT.fetch_add(1, Ordering::Relaxed)) as u32
    )
}

/// Relay-style global id: base64 of `Type:n`.
pub(super) fn global_id(kind: &str, n: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{kind}:{n}"))
}

/// The outer frame: `min_seq` first, then the double-encoded entries.
pub(super) fn outer(seq: u64, entries: &[String]) -> String {
    Obj::plain()
        .val("min_seq", seq)
        .val("messages", entries)
        .end()
}

/// One entry of `messages`: a subscription update of `name` carrying `data`.
fn entry(name: &str, unique_id: &str, data: String) -> String {
    let payload = Obj::plain()
        .val("unique_id", unique_id)
        .raw("data", Obj::plain().raw(name, data).end())
        .val("subscription_name", name)
        .end();
    Obj::new()
        .raw("payload", payload)
        .val("message_type", "subscriptionUpdate")
        .end()
}

/// The signed-in user, as `authorUser` of human messages.
pub(super) fn author_user() -> String {
    Obj::new()
        .val("uid", 9_138_765u64)
        .val("id", global_id("PoeUser", 9_138_765))
        .val("fullName", "Double User")
        .val("handle", "double-user")
        .raw("smallAvatarUrl", "null".into())
        .val("isDeleted", false)
        .end()
}

/// A bot object: `nickname` is the codename, as on the site.
pub(super) fn bot_object(bot: &Bot) -> String {
    Obj::new()
        .val("nickname", bot.codename)
        .val("botId", bot.bot_id)
        .val("id", global_id("Bot", bot.bot_id))
        .val("displayName", bot.display_name)
        .val("isOfficialBot", bot.official)
        .val("deletionState", "not_deleted")
        .val("handle", bot.handle)
        .raw(
            "picture",
            Obj::new()
                .val("__typename", "URLBotImage")
                .val("url", format!("/static/bots/{}.png", bot.codename))
                .end(),
        )
        .end()
}

/// A chat object, as in the send response, `chatAddedV2` and the chat query.
pub(super) fn chat_object(number: u64, code: &str, bot: &Bot, title: Option<&str>) -> String {
    Obj::new()
        .val("chatCode", code)
        .val("title", title)
        .val("id", global_id("Chat", number))
        .raw("defaultBotObject", bot_object(bot))
        .val("isDeleted", false)
        .val("chatId", number)
        .end()
}

/// A message object. `created`: the `messageCreated` shape (no `author`, no `clientNonce`).
pub(super) fn message_object(m: &StoredMessage, created: bool) -> String {
    let human = m.author == "human";
    let state_text = match (human, m.state.as_str(), m.text.is_empty()) {
        (false, "incomplete", true) => Some("Thinking..."),
        _ => None,
    };
    let mut o = Obj::new()
        .val("text", &m.text)
        .val("state", &m.state)
        .val("messageStateText", state_text)
        .val("id", &m.id)
        .val("messageId", m.message_id)
        .val("creationTime", m.creation_time);
    if !created {
        o = o.val("author", &m.author);
    }
    o = match (human, m.bot) {
        (false, Some(bot)) => o
            .raw("authorUser", "null".into())
            .raw("bot", bot_object(bot)),
        _ => o.raw("authorUser", author_user()).raw("bot", "null".into()),
    };
    if !created {
        o = o.val("clientNonce", &m.client_nonce);
    }
    o.val("contentType", "text_markdown")
        .val("sourceType", if human { "chat_input" } else { "bot" })
        .val("attachments", Vec::<String>::new())
        .raw("vote", "null".into())
        .val("hasCitations", false)
        .end()
}

/// The points of `viewerStateUpdated`.
pub(super) struct Points {
    pub(super) balance: u64,
    pub(super) allotment: u64,
    /// Microseconds since the epoch.
    pub(super) reset_us: u64,
}

pub(super) fn message_created(m: &StoredMessage) -> String {
    entry("messageCreated", "messageCreated", message_object(m, true))
}

pub(super) fn message_added(chat_number: u64, m: &StoredMessage) -> String {
    entry(
        "messageAdded",
        &format!("messageAdded:{chat_number}"),
        message_object(m, false),
    )
}

pub(super) fn chat_added(chat: String) -> String {
    let data = Obj::new()
        .raw("chat", chat)
        .val("source", "chat_input")
        .end();
    entry("chatAddedV2", "chatAddedV2", data)
}

pub(super) fn job(name: &str, job_id: u64, bot: &Bot, state: &str) -> String {
    let job = Obj::new()
        .val("jobState", state)
        .val("id", global_id("Job", job_id))
        .val("jobId", job_id)
        .val("botId", bot.bot_id)
        .end();
    entry(
        name,
        &format!("{name}:{job_id}"),
        Obj::new().raw("job", job).end(),
    )
}

pub(super) fn chat_member_added(chat_number: u64, bot: &Bot) -> String {
    let member = Obj::new()
        .val("memberType", "bot")
        .raw("bot", bot_object(bot))
        .end();
    let data = Obj::new()
        .raw("member", member)
        .val("chatId", chat_number)
        .val("context", "chat_creation")
        .end();
    entry(
        "chatMemberAddedWithContext",
        &format!("chatMemberAddedWithContext:{chat_number}"),
        data,
    )
}

pub(super) fn job_cost(job_id: u64, message_id: u64, cost: u64) -> String {
    let data = Obj::new()
        .val("jobId", job_id)
        .val("messageId", message_id)
        .val("totalCostPoints", cost)
        .val("displayCost", format!("{cost} points"))
        .end();
    entry("jobCostUpdated", &format!("jobCostUpdated:{job_id}"), data)
}

pub(super) fn followups(chat_number: u64, message_id: u64) -> String {
    let action = |text: &str| {
        Obj::new()
            .val("actionType", "suggested_reply")
            .val("text", text)
            .end()
    };
    let data = Obj::new()
        .val("messageId", message_id)
        .raw(
            "followupActions",
            array(vec![action("Tell me more."), action("Give an example.")]),
        )
        .end();
    entry(
        "messageFollowupActionUpdated",
        &format!("messageFollowupActionUpdated:{chat_number}"),
        data,
    )
}

pub(super) fn chat_title(chat_number: u64, title: &str) -> String {
    let chat = Obj::new()
        .val("title", title)
        .val("id", global_id("Chat", chat_number))
        .val("chatId", chat_number)
        .end();
    entry(
        "chatTitleUpdated",
        &format!("chatTitleUpdated:{chat_number}"),
        Obj::new().raw("chat", chat).end(),
    )
}

pub(super) fn viewer_state(p: &Points) -> String {
    let info = Obj::new()
        .val("warningBannerPercent", 20)
        .val("messagePointResetTime", p.reset_us)
        .val("totalMessagePointAllotment", p.allotment)
        .val("messagePointBalance", p.balance)
        .val("showMessagePointBanner", p.balance * 5 < p.allotment)
        .end();
    let data = Obj::new()
        .val("id", "Vmlld2VyOjA=")
        .val("formattedChatInput", false)
        .raw("messagePointInfo", info)
        .val("enableSubscriptions", true)
        .end();
    entry("viewerStateUpdated", "viewerStateUpdated", data)
}

/// The inner `refetchChannel` entry that tells the page it lost updates.
pub(super) fn refetch_channel(channel: &str) -> String {
    Obj::new()
        .val("message_type", "refetchChannel")
        .raw("payload", Obj::plain().val("channel", channel).end())
        .end()
}
