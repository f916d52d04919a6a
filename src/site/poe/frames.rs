//! The frame parser: Poe update-WebSocket frames -> [`Update`]s -> reply steps.
//!
//! Two layers, both pure so they are tested on recorded frames of the 2023 and the 2025
//! site (the site contract, `shared/poe-web.md`):
//! - [`parse_frame`] decodes one text frame: the outer `{"messages": [...]}` whose entries
//!   are JSON *strings* (double encoding), several per frame. `messageAdded` and
//!   `messageCreated` become [`Update::Message`], the points of `viewerStateUpdated` become
//!   [`Update::Points`], `missed_messages` / `refetchChannel` become [`Update::LostUpdates`];
//!   anything else (pongs, other subscriptions, other sockets' traffic, non-JSON) is ignored,
//!   never an error. Unknown fields and `"_"` keys are ignored; nothing is required that the
//!   site has dropped before (`author`, `suggestedReplies`).
//! - [`ReplyTracker`] follows the bot's reply to one prompt: it tells the prompt's human
//!   echo among other chats' messages (by what the page's send and the site's answer to it
//!   say: nonce, chat, message id), locks on the first bot message of its chat after it,
//!   turns the site's cumulative `text` into
//!   appended deltas, turns a rewrite that is not a prefix of what was streamed into a
//!   [`Chunk::Replace`], and finishes once per bot message however often the site repeats it.
//!
//! What a message object is ([`MessageUpdate::from_json`]) and the bounded JSON walk
//! (`objects`) are shared with the reader of the page's HTTP traffic
//! ([`super::network`]).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::reply::Chunk;

/// How deep `objects` goes into a JSON value. The site's payloads nest a dozen levels at
/// most; the cap keeps hostile input from costing more than one pass.
pub(super) const MAX_DEPTH: usize = 64;

/// A bot as the site names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotInfo {
    /// The handle of the bot's page (`{base}/{handle}`), e.g. `Claude-Sonnet-4.5`. Not the
    /// codename messages carry as `author`.
    pub handle: String,
    /// The name the page shows, when the site gave one.
    pub display_name: Option<String>,
}

impl BotInfo {
    /// Reads a `bot` object (`handle`, optional `displayName`); `None` without a handle.
    pub fn from_json(v: &Value) -> Option<BotInfo> {
        Self::from_map(v.as_object()?)
    }

    pub(super) fn from_map(v: &Map<String, Value>) -> Option<BotInfo> {
        let handle = v.get("handle")?.as_str().filter(|h| !h.is_empty())?;
        Some(BotInfo {
            handle: handle.to_owned(),
            display_name: v
                .get("displayName")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// One chat message as an update reports it: its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageUpdate {
    /// The site's numeric message id (above 2^32 today).
    pub message_id: i64,
    /// `human`, `chat_break`, or the bot's codename (not its handle). The site leaves it out
    /// of `messageCreated`.
    pub author: Option<String>,
    /// Written by a person: author `human`, or a user (`authorUser`) and no bot.
    pub human: bool,
    /// A chat break (the marker that starts a new context), neither human nor bot.
    pub chat_break: bool,
    /// The whole text so far (cumulative).
    pub text: String,
    /// `incomplete` (also when absent), `complete`, `cancelled`, `error_*`, or a newer value.
    pub state: String,
    /// The nonce the page put in its send request; carried by the human echo.
    pub client_nonce: Option<String>,
    /// The bot that writes the message, when the site says (2025 `bot` object).
    pub bot: Option<BotInfo>,
    /// From `messageCreated`: the first report of the message, before any `messageAdded`.
    pub created: bool,
    /// The chat the update names in its `unique_id` (`messageAdded:<chat>`), when it does:
    /// an account-wide update channel brings every chat's messages to every page.
    pub chat: Option<String>,
}

impl MessageUpdate {
    /// Reads a message object. `None` unless it has a usable `messageId` (a number, or a
    /// string of digits).
    pub fn from_json(m: &Value, created: bool) -> Option<MessageUpdate> {
        Self::from_map(m.as_object()?, created)
    }

    pub(super) fn from_map(m: &Map<String, Value>, created: bool) -> Option<MessageUpdate> {
        let message_id = int_of(m.get("messageId")?)?;
        let author = m.get("author").and_then(Value::as_str).map(str::to_owned);
        let bot = m.get("bot").and_then(BotInfo::from_json);
        let chat_break = author.as_deref() == Some("chat_break");
        let has_user = m.get("authorUser").is_some_and(Value::is_object);
        let has_bot_object = m.get("bot").is_some_and(Value::is_object);
        let human =
            !chat_break && (author.as_deref() == Some("human") || has_user && !has_bot_object);
        Some(MessageUpdate {
            message_id,
            author,
            human,
            chat_break,
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
            client_nonce: m
                .get("clientNonce")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            bot,
            created,
            chat: None,
        })
    }

    /// Written by a bot: not human, not a chat break, and the site named an author or a bot.
    /// A message that says nothing of its writer is nobody's reply.
    pub fn is_bot(&self) -> bool {
        !self.human && !self.chat_break && (self.author.is_some() || self.bot.is_some())
    }

    /// Whether the message has ended (its state has an [`Outcome`]), without building it.
    pub fn ended(&self) -> bool {
        Outcome::ends(&self.state)
    }
}

/// The account's points (2025 quota), from `messagePointInfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct PointInfo {
    /// `messagePointBalance`: points left.
    pub balance: Option<i64>,
    /// `totalMessagePointAllotment`: points per period (e.g. 3000 on a free plan).
    pub allotment: Option<i64>,
    /// `messagePointResetTime`: when the balance resets, in MICROseconds since the epoch.
    pub reset_micros: Option<i64>,
    /// `warningBannerPercent`: the balance (in percent) under which the page warns.
    pub warning_percent: Option<f64>,
}

impl PointInfo {
    /// Reads a `messagePointInfo` object; `None` when it holds none of the known fields.
    pub fn from_json(v: &Value) -> Option<PointInfo> {
        let int = |key: &str| v.get(key).and_then(int_of);
        let info = PointInfo {
            balance: int("messagePointBalance"),
            allotment: int("totalMessagePointAllotment"),
            reset_micros: int("messagePointResetTime"),
            warning_percent: v.get("warningBannerPercent").and_then(|p| match p {
                Value::String(s) => s.trim().parse().ok(),
                _ => p.as_f64(),
            }),
        };
        let any = info.balance.is_some()
            || info.allotment.is_some()
            || info.reset_micros.is_some()
            || info.warning_percent.is_some();
        any.then_some(info)
    }

    /// When the balance resets, as a time.
    pub fn reset_at(&self) -> Option<SystemTime> {
        let micros = u64::try_from(self.reset_micros?).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_micros(micros))
    }
}

/// What a frame can tell the adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A chat message was created or changed.
    Message(MessageUpdate),
    /// The page lost updates (`missed_messages`, `refetchChannel`): the reply must be
    /// recovered from the page instead of from frames.
    LostUpdates(&'static str),
    /// The account's points changed (`viewerStateUpdated`).
    Points(PointInfo),
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
    // An inner object sent without the outer wrapper.
    if outer.get("message_type").is_some() {
        out.extend(parse_inner(&outer));
    }
    if let Some(entries) = outer.get("messages").and_then(Value::as_array) {
        for entry in entries {
            // Each entry is a JSON string holding the inner object; tolerate a plain object too.
            let update = match entry {
                Value::String(s) => match serde_json::from_str::<Value>(s) {
                    Ok(inner) => parse_inner(&inner),
                    Err(_) => continue,
                },
                Value::Object(_) => parse_inner(entry),
                _ => continue,
            };
            out.extend(update);
        }
    }
    out
}

fn parse_inner(inner: &Value) -> Option<Update> {
    match inner.get("message_type").and_then(Value::as_str)? {
        "refetchChannel" => Some(Update::LostUpdates("refetchChannel")),
        "subscriptionUpdate" => {
            let payload = inner.get("payload")?;
            let data = payload.get("data")?;
            let name = subscription_name(payload, data)?;
            let own = data.get(name).unwrap_or(data);
            match name {
                "messageAdded" | "messageCreated" => {
                    // The message is the subscription's object itself (`messageAdded`), or an
                    // object inside it (a `message` / `node` wrapper).
                    let m = objects(own).find(|o| o.contains_key("messageId"))?;
                    let mut update = MessageUpdate::from_map(m, name == "messageCreated")?;
                    update.chat = chat_of(payload);
                    Some(Update::Message(update))
                }
                "viewerStateUpdated" => objects(own)
                    .find_map(|o| o.get("messagePointInfo").and_then(PointInfo::from_json))
                    .map(Update::Points),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The subscription an update belongs to: `subscription_name`, else the part of `unique_id`
/// before any `:`, else the only key of `data`.
fn subscription_name<'a>(payload: &'a Value, data: &'a Value) -> Option<&'a str> {
    if let Some(name) = payload.get("subscription_name").and_then(Value::as_str) {
        return Some(name);
    }
    if let Some(id) = payload.get("unique_id").and_then(Value::as_str) {
        return id.split(':').next();
    }
    let keys = data.as_object()?;
    match keys.len() {
        1 => keys.keys().next().map(String::as_str),
        _ => None,
    }
}

/// The chat a subscription update names: what follows the first `:` of its `unique_id`
/// (`messageAdded:3349`), compared as the site wrote it. `None` for ids without one (2025's
/// bare `messageCreated`).
fn chat_of(payload: &Value) -> Option<String> {
    let id = payload.get("unique_id").and_then(Value::as_str)?;
    let (_, chat) = id.split_once(':')?;
    let chat = chat.trim();
    (!chat.is_empty()).then(|| chat.to_owned())
}

/// An integer the site sent as a number or as a string of digits (ids above 2^53 survive
/// JavaScript only as strings).
pub(super) fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            let f = n.as_f64()?;
            // Whole floats only, and only where f64 is exact.
            (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Every object inside `root` (itself included), in document order as far as `serde_json`
/// keeps it (array order is kept; the keys of one object come sorted), down to
/// [`MAX_DEPTH`] levels. Iterative: no recursion, each node visited once.
pub(super) fn objects(root: &Value) -> Objects<'_> {
    Objects {
        stack: vec![(root, 0)],
    }
}

/// The iterator of [`objects`].
pub(super) struct Objects<'a> {
    stack: Vec<(&'a Value, usize)>,
}

impl<'a> Iterator for Objects<'a> {
    type Item = &'a Map<String, Value>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some((v, depth)) = self.stack.pop() {
            let deeper = depth < MAX_DEPTH;
            match v {
                Value::Object(m) => {
                    if deeper {
                        self.stack.extend(m.values().rev().map(|c| (c, depth + 1)));
                    }
                    return Some(m);
                }
                Value::Array(a) if deeper => {
                    self.stack.extend(a.iter().rev().map(|c| (c, depth + 1)));
                }
                _ => {}
            }
        }
        None
    }
}

/// How many updates a tracker holds while the send is awaited (the oldest go first: they
/// are the least likely to be ours).
const MAX_HELD: usize = 256;

/// How a reply ended on the site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// State `complete`: the final text.
    Complete(String),
    /// State `cancelled` or `error_*`, with the text the site had at that point.
    Failed { state: String, text: String },
}

impl Outcome {
    /// The outcome a message `state` means, or `None` while the message still streams
    /// (`incomplete`, and any state the site invents later).
    pub fn from_state(state: &str, text: &str) -> Option<Outcome> {
        match state {
            "complete" => Some(Outcome::Complete(text.to_owned())),
            s if Outcome::ends(s) => Some(Outcome::Failed {
                state: s.to_owned(),
                text: text.to_owned(),
            }),
            _ => None,
        }
    }

    /// Whether a message `state` has an outcome (see [`Outcome::from_state`]).
    pub fn ends(state: &str) -> bool {
        state == "complete" || state == "cancelled" || state.starts_with("error")
    }
}

/// What the client should be told after an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStep {
    /// The reply text changed.
    Text(Chunk),
    /// The reply ended.
    Finished(Outcome),
}

/// Follows the bot's reply to one prompt, in a fresh or a continued chat.
///
/// The human echo of the prompt is not streamed, but it is the anchor: no bot message is
/// taken before it, and only one with a larger `messageId` is the reply (a continued chat
/// shows its older bot messages too). The page's update channel may carry other chats'
/// messages (the site's channel is the account's: other tabs' prompts and replies reach
/// every page), so the echo is told by what the page's send and the site's answer to it
/// say: the send's client nonce (once the site is seen to put nonces in echoes, only the
/// echo carrying ours is ours), the chat the send went to (`chatId`, 2023 and continued
/// chats), the chat and the message id the site's answer names. The chat of that echo
/// (`messageAdded:<chat>`) is ours, and messages naming another chat are ignored. Where
/// nothing tells the echo, the newest human message is the guess; a bot message that only
/// such a guess would make the reply waits for the site's answer to the send
/// ([`ReplyTracker::answered`]), which names the chat and the message. A lock taken on a
/// message that did not name its chat (a bare `messageCreated`) gives way to a message of
/// ours until text has streamed. The tracker finishes once, on the bot message it locked on.
///
/// Before the page's send is seen ([`ReplyTracker::until_sent`]) nothing can be ours yet:
/// updates are held, and fed once [`ReplyTracker::sent`] says the send went out and with
/// which nonce (the browser reports the request and the frames on separate streams, so an
/// echo may come first).
#[derive(Debug, Default)]
pub struct ReplyTracker {
    /// The nonce of the page's send request, when the caller knows it.
    expected_nonce: Option<String>,
    /// The chat as the page's send and the site's answer name it (`chatId`, `id`, ...).
    expected_chats: Vec<String>,
    /// The prompt's message id, as the site's answer to the send gives it.
    expected_message: Option<i64>,
    /// The send was seen and the site's answer to it is not read yet.
    awaiting_answer: bool,
    answer_read: bool,
    /// The guessed echo has something against it (another chat, another id than the send
    /// and its answer name): the right one may still come.
    guess_doubted: bool,
    /// The caller waited long enough: the best guess is taken (see [`Self::settle`]).
    settled: bool,
    /// Bot updates that only a doubtful guess would make the reply: they wait for the
    /// answer, or for an echo that the send or the answer tells.
    deferred: Vec<MessageUpdate>,
    /// Updates that came before the send was seen (`Some` while it is awaited).
    held: Option<VecDeque<MessageUpdate>>,
    /// The human messages seen while no reply is locked (the newest last): the echo is
    /// chosen among them.
    humans: VecDeque<Human>,
    /// The echo of the prompt: its id, and whether something the site said tells it is ours
    /// (then no guess replaces it).
    human_message: Option<i64>,
    human_pinned: bool,
    human_nonce: Option<String>,
    /// Some human message carried a nonce: the site puts them in echoes, so an echo without
    /// ours is not ours.
    nonces_seen: bool,
    /// Our chat, as the update channel names it: from the pinned echo.
    chat: Option<String>,
    bot_message: Option<i64>,
    /// The locked message was seen naming our chat.
    bot_confirmed: bool,
    bot: Option<BotInfo>,
    /// The messages taken in earlier turns of the page's chat, and the largest of their ids
    /// (see [`Self::after`]).
    earlier: Vec<i64>,
    floor: Option<i64>,
    /// Bot messages seen before any echo was: none of them is the reply.
    bots_before_echo: VecDeque<i64>,
    /// The text the client has been given so far.
    streamed: String,
    finished: bool,
}

/// A human message, as a candidate for the prompt's echo.
#[derive(Debug, Clone)]
struct Human {
    id: i64,
    chat: Option<String>,
    nonce: Option<String>,
}

/// Whether a bot message is the reply.
enum Claim {
    Ours,
    /// Only a doubtful guess of the echo would make it ours: it waits.
    Wait,
    No,
}

impl ReplyTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker for the prompt the page sent with this `clientNonce`: other humans' echoes
    /// are ignored, and bot messages count only after the echo. `None` is [`Self::new`].
    pub fn with_nonce(nonce: Option<String>) -> Self {
        Self {
            expected_nonce: nonce,
            ..Self::default()
        }
    }

    /// A tracker that holds every update until [`Self::sent`].
    pub fn until_sent(mut self) -> Self {
        self.held = Some(VecDeque::new());
        self
    }

    /// Whether updates are held until the send is seen.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// Whether bot updates wait: for the site's answer to the send (see [`Self::answered`]),
    /// or for an echo that it or the send tells. The caller bounds the wait
    /// ([`Self::settle`]).
    pub fn deferring(&self) -> bool {
        !self.deferred.is_empty() && self.doubtful()
    }

    /// Only a doubtful guess names the echo, and the caller has not settled for it.
    fn doubtful(&self) -> bool {
        !self.human_pinned && !self.settled && (self.awaiting_answer || self.guess_doubted)
    }

    /// Takes the best guess of the echo from now on (the caller waited long enough for the
    /// site's answer, or for an echo it tells): bot updates that waited are fed now.
    pub fn settle(&mut self) -> Vec<ReplyStep> {
        self.settled = true;
        self.replay()
    }

    /// The page's send went out, with this client nonce and to this chat (its `chatId`) if
    /// its body had them: the held updates are fed now (their steps returned), and the
    /// site's answer is awaited. Called again later (e.g. once the send could be read after
    /// all), it only learns what it did not have.
    pub fn sent(&mut self, nonce: Option<String>, chat: Option<String>) -> Vec<ReplyStep> {
        self.expect_chats(chat);
        if self.expected_nonce.is_none() {
            self.expected_nonce = nonce;
        }
        match self.held.take() {
            Some(held) => {
                self.awaiting_answer = !self.answer_read;
                held.iter().flat_map(|m| self.feed(m)).collect()
            }
            None => {
                self.choose_echo();
                self.replay()
            }
        }
    }

    /// The page's send was never seen: the held updates are fed as they are, and no answer
    /// to it is awaited (it would not be seen either).
    pub fn unheld(&mut self) -> Vec<ReplyStep> {
        let held = self.held.take().unwrap_or_default();
        held.iter().flat_map(|m| self.feed(m)).collect()
    }

    /// The site's answer to the send was read: the chat it names (every name it gives,
    /// `chatId`, `id`, `chatCode`) and the prompt's message id, when it gave them. Nothing
    /// waits for the answer any more; bot updates that did are fed now (their steps
    /// returned).
    pub fn answered(&mut self, chats: Vec<String>, message_id: Option<i64>) -> Vec<ReplyStep> {
        for chat in chats {
            self.expect_chats(Some(chat));
        }
        if self.expected_message.is_none() {
            self.expected_message = message_id;
        }
        self.answer_read = true;
        self.awaiting_answer = false;
        self.choose_echo();
        self.replay()
    }

    fn expect_chats(&mut self, chat: Option<String>) {
        if let Some(chat) = chat.filter(|c| !c.is_empty()) {
            if !self.expected_chats.contains(&chat) {
                self.expected_chats.push(chat);
            }
        }
    }

    /// A tracker for a page that showed earlier turns of its chat, whose updates (e.g. late
    /// repeats of the last reply) may still come while the next message is sent: the
    /// messages taken then (`ids`, see [`Self::taken`]) are ignored, and so is a finished
    /// bot message with a smaller id than theirs (a repeat; the site numbers messages in
    /// time).
    pub fn after(mut self, ids: &[i64]) -> Self {
        self.earlier = ids.to_vec();
        self.floor = ids.iter().copied().max();
        self
    }

    /// The ids of the messages this tracker took: the echo and the reply, as far as seen.
    pub fn taken(&self) -> impl Iterator<Item = i64> {
        self.human_message.into_iter().chain(self.bot_message)
    }

    /// The reply text as far as it has been streamed.
    pub fn text(&self) -> &str {
        &self.streamed
    }

    /// Whether the bot's message has been seen (the site accepted the prompt).
    pub fn started(&self) -> bool {
        self.bot_message.is_some()
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The id of the prompt's echo, once seen.
    pub fn human_message_id(&self) -> Option<i64> {
        self.human_message
    }

    /// The client nonce the echo carried, once seen.
    pub fn human_client_nonce(&self) -> Option<&str> {
        self.human_nonce.as_deref()
    }

    /// The id of the bot message the tracker follows, once locked.
    pub fn bot_message_id(&self) -> Option<i64> {
        self.bot_message
    }

    /// The bot that writes the reply, when its messages said.
    pub fn bot(&self) -> Option<&BotInfo> {
        self.bot.as_ref()
    }

    /// Feeds one message update; returns what to tell the client (possibly nothing).
    pub fn feed(&mut self, m: &MessageUpdate) -> Vec<ReplyStep> {
        if let Some(held) = &mut self.held {
            push_bounded(held, m.clone());
            return Vec::new();
        }
        if self.finished || self.is_earlier(m) {
            return Vec::new();
        }
        if matches!((&self.chat, &m.chat), (Some(ours), Some(theirs)) if ours != theirs) {
            // Another chat's. A lock taken before this message named its chat is let go.
            if self.bot_message == Some(m.message_id) && self.streamed.is_empty() {
                self.bot_message = None;
                self.bot = None;
            }
            return Vec::new();
        }
        if m.human {
            self.note_human(m);
            return self.replay();
        }
        if !m.is_bot() {
            return Vec::new();
        }
        if self.human_message.is_none() && !self.bots_before_echo.contains(&m.message_id) {
            push_bounded(&mut self.bots_before_echo, m.message_id);
        }
        let names_our_chat = self.chat.is_some() && m.chat == self.chat;
        match self.bot_message {
            None => match self.claim(m) {
                Claim::Ours => self.lock(m),
                Claim::Wait => {
                    if self.deferred.len() < MAX_HELD {
                        self.deferred.push(m.clone());
                    }
                    return Vec::new();
                }
                Claim::No => return Vec::new(),
            },
            // A message of our chat replaces a lock on one that did not name its chat.
            Some(id)
                if id != m.message_id
                    && names_our_chat
                    && !self.bot_confirmed
                    && self.streamed.is_empty()
                    && matches!(self.claim(m), Claim::Ours) =>
            {
                self.lock(m)
            }
            Some(id) if id != m.message_id => return Vec::new(),
            // A late `messageCreated` repeats the empty start of a message already streaming.
            Some(_) if m.created => return Vec::new(),
            Some(_) => {}
        }
        self.bot_confirmed |= names_our_chat;
        if self.bot.is_none() {
            self.bot.clone_from(&m.bot);
        }
        let mut steps: Vec<ReplyStep> = Chunk::between(&self.streamed, &m.text)
            .map(ReplyStep::Text)
            .into_iter()
            .collect();
        self.streamed.clone_from(&m.text);
        if let Some(outcome) = Outcome::from_state(&m.state, &m.text) {
            self.finished = true;
            steps.push(ReplyStep::Finished(outcome));
        }
        steps
    }

    /// Whether `m` (a bot message) is the reply: it comes after our echo, which must be the
    /// one carrying our nonce where the site puts nonces in echoes. While only a guess names
    /// the echo and the site's answer to the send is still to come, it waits for that.
    fn claim(&self, m: &MessageUpdate) -> Claim {
        if !self.human_pinned {
            if self.expected_nonce.is_some() && self.nonces_seen {
                return Claim::No;
            }
            if self.doubtful() {
                return Claim::Wait;
            }
        }
        match self.human_message {
            Some(human) if m.message_id > human => Claim::Ours,
            // A site whose ids are in no order: a message that starts after the echo (not
            // seen before it, not finished: a late repeat of an earlier reply is) is the
            // reply, as only one reply of a chat streams at a time.
            Some(_) => {
                let starts = m.created || !m.ended();
                if starts && !self.bots_before_echo.contains(&m.message_id) {
                    Claim::Ours
                } else {
                    Claim::No
                }
            }
            None => Claim::No,
        }
    }

    /// An update of an earlier turn of the page's chat (see [`Self::after`]); never the
    /// message the tracker follows.
    fn is_earlier(&self, m: &MessageUpdate) -> bool {
        if self.bot_message == Some(m.message_id) {
            return false;
        }
        self.earlier.contains(&m.message_id)
            || !m.human && self.floor.is_some_and(|floor| m.message_id <= floor) && m.ended()
    }

    fn lock(&mut self, m: &MessageUpdate) {
        self.bot_message = Some(m.message_id);
        self.bot_confirmed = false;
        self.bot = None;
    }

    /// Feeds the bot updates that waited for the answer, once the echo is told or the answer
    /// came.
    fn replay(&mut self) -> Vec<ReplyStep> {
        if self.deferred.is_empty() || self.doubtful() {
            return Vec::new();
        }
        let deferred = std::mem::take(&mut self.deferred);
        deferred.iter().flat_map(|m| self.feed(m)).collect()
    }

    /// Remembers a human message while no reply is locked (later ones are other turns), and
    /// chooses the echo again.
    fn note_human(&mut self, m: &MessageUpdate) {
        self.nonces_seen |= m.client_nonce.is_some();
        if self.human_pinned {
            // The echo again (its `messageAdded` after its `messageCreated`): it may name
            // the chat now.
            if self.human_message == Some(m.message_id) && self.chat.is_none() {
                self.chat.clone_from(&m.chat);
            }
            return;
        }
        if self.bot_message.is_some() {
            return;
        }
        match self.humans.iter_mut().find(|h| h.id == m.message_id) {
            Some(h) => {
                h.chat = h.chat.take().or_else(|| m.chat.clone());
                h.nonce = h.nonce.take().or_else(|| m.client_nonce.clone());
            }
            None => push_bounded(
                &mut self.humans,
                Human {
                    id: m.message_id,
                    chat: m.chat.clone(),
                    nonce: m.client_nonce.clone(),
                },
            ),
        }
        self.choose_echo();
    }

    /// Chooses the echo among the human messages seen, unless it is told already or the
    /// reply is locked: the newest one that the send or the answer says is ours (its nonce,
    /// its id, its chat; a different nonce rules a message out); else, as a guess, the
    /// newest with the fewest things against it (another id, another chat), doubted if it
    /// has any.
    fn choose_echo(&mut self) {
        if self.human_pinned || self.bot_message.is_some() {
            return;
        }
        let other_nonce = |h: &Human| matches!((&self.expected_nonce, &h.nonce), (Some(want), Some(got)) if want != got);
        let our_chat = |h: &Human| {
            h.chat
                .as_ref()
                .is_some_and(|c| self.expected_chats.contains(c))
        };
        let told = self.humans.iter().rev().find(|h| {
            (self.expected_nonce.is_some() && h.nonce == self.expected_nonce)
                || !other_nonce(h) && (self.expected_message == Some(h.id) || our_chat(h))
        });
        let (echo, pinned) = match told {
            Some(h) => (Some(h), true),
            None => {
                let against = |h: &Human| {
                    u8::from(self.expected_message.is_some_and(|id| id != h.id))
                        + u8::from(h.chat.is_some() && !self.expected_chats.is_empty())
                };
                // The newest to arrive (the site's ids need not be in order).
                let guess = self
                    .humans
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| !other_nonce(h))
                    .min_by_key(|(arrived, h)| (against(h), std::cmp::Reverse(*arrived)))
                    .map(|(_, h)| h);
                self.guess_doubted = guess.is_some_and(|h| against(h) > 0);
                (guess, false)
            }
        };
        self.human_message = echo.map(|h| h.id);
        self.human_nonce = echo.and_then(|h| h.nonce.clone());
        self.human_pinned = pinned;
        if pinned {
            self.chat = echo.and_then(|h| h.chat.clone());
        }
    }
}

/// Appends to a bounded queue, dropping the oldest entry when full.
fn push_bounded<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() == MAX_HELD {
        queue.pop_front();
    }
    queue.push_back(item);
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

    /// A 2023-shaped message update (author only).
    fn update(id: i64, author: &str, text: &str, state: &str) -> MessageUpdate {
        MessageUpdate {
            message_id: id,
            author: Some(author.into()),
            human: author == "human",
            chat_break: author == "chat_break",
            text: text.into(),
            state: state.into(),
            client_nonce: None,
            bot: None,
            created: false,
            chat: None,
        }
    }

    /// What [`added`] parses to.
    fn msg(id: i64, author: &str, text: &str, state: &str) -> Update {
        Update::Message(MessageUpdate {
            chat: Some("123".into()),
            ..update(id, author, text, state)
        })
    }

    fn messages(updates: Vec<Update>) -> Vec<MessageUpdate> {
        updates
            .into_iter()
            .filter_map(|u| match u {
                Update::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    // --- the 2025 site, as captured: one entry per frame, `_` keys, new shapes ---------

    const HUMAN: i64 = 457_234_370_765;
    const BOT: i64 = 457_234_370_766;
    const NONCE: &str = "k3oYw9h2Qz1x";

    /// One inner object of the 2025 site: the `_` key first and the fields in another order
    /// than the 2023 frames.
    fn sub(name: &str, unique_id: &str, data: Value) -> Value {
        json!({"_": "e1", "payload": {"data": {name: data}, "_": "p",
            "unique_id": unique_id, "subscription_name": name},
            "message_type": "subscriptionUpdate"})
    }

    fn human_2025(nonce: &str) -> Value {
        json!({"_": "m", "state": "complete", "text": "Say hi", "messageId": HUMAN,
            "clientNonce": nonce, "bot": null, "authorUser": {"_": "u", "id": "VXNlcjox",
            "uid": 1234, "fullName": "A Person"}, "author": "human",
            "contentType": "text_markdown", "messageStateText": null, "id": "TWVzc2FnZToy"})
    }

    fn bot_2025(id: Value, text: &str, state: &str) -> Value {
        json!({"state": state, "_": "m", "messageId": id, "text": text,
            "author": "claude_opus_4_5", "authorUser": null, "clientNonce": null,
            "bot": {"_": "b", "handle": "Claude-Opus-4.5", "displayName": "Claude-Opus-4.5",
                "nickname": "claude_opus_4_5", "id": "Qm90OjE="},
            "messageStateText": null, "contentType": "text_markdown", "id": "TWVzc2FnZToz"})
    }

    /// The frames of one 2025 exchange, in the captured order, with the bot's complete
    /// message repeated 5 times after the first.
    fn exchange_2025() -> Vec<String> {
        let mut created_human = human_2025(NONCE);
        if let Some(m) = created_human.as_object_mut() {
            m.remove("author");
        }
        let created_bot = {
            let mut b = bot_2025(json!(BOT), "", "incomplete");
            if let Some(m) = b.as_object_mut() {
                m.remove("author");
            }
            b
        };
        let job = |state: &str| json!({"_": "j", "id": "Sm9iOjE=", "state": state});
        let mut frames = vec![
            sub("messageCreated", "messageCreated", created_human),
            sub("messageAdded", "messageAdded:3349", human_2025(NONCE)),
            sub(
                "chatAddedV2",
                "chatAddedV2",
                json!({"chatCode": "2fnx", "chatId": 3349}),
            ),
            sub("jobStarted", "jobStarted:1", job("running")),
            sub("messageCreated", "messageCreated", created_bot),
            sub(
                "chatMemberAddedWithContext",
                "chatMemberAddedWithContext:3349",
                json!({"bot": {"handle": "Claude-Opus-4.5"}}),
            ),
            sub(
                "messageAdded",
                "messageAdded:3349",
                bot_2025(json!(BOT), "", "incomplete"),
            ),
            // An id as a string of digits is the same message.
            sub(
                "messageAdded",
                "messageAdded:3349",
                bot_2025(json!(BOT.to_string()), "Hi", "incomplete"),
            ),
            sub(
                "messageAdded",
                "messageAdded:3349",
                bot_2025(json!(BOT), "Hi there", "incomplete"),
            ),
            sub(
                "messageAdded",
                "messageAdded:3349",
                bot_2025(json!(BOT), "Hi there!", "complete"),
            ),
        ];
        for _ in 0..5 {
            frames.push(sub(
                "messageAdded",
                "messageAdded:3349",
                bot_2025(json!(BOT), "Hi there!", "complete"),
            ));
        }
        frames.extend([
            sub("jobUpdated", "jobUpdated:1", job("completed")),
            sub(
                "jobCostUpdated",
                "jobCostUpdated:1",
                json!({"totalCost": 30}),
            ),
            sub(
                "messageFollowupActionUpdated",
                "messageFollowupActionUpdated:3349",
                json!({"messageId": BOT, "followupActions": [{"text": "Tell me more"}]}),
            ),
            sub(
                "chatTitleUpdated",
                "chatTitleUpdated:3349",
                json!({"title": "Greeting"}),
            ),
            sub(
                "viewerStateUpdated",
                "viewerStateUpdated",
                json!({"_": "v", "viewer": {"id": "Vmlld2VyOjE=", "messagePointInfo": {
                    "_": "i", "messagePointBalance": 2731, "totalMessagePointAllotment": 3000,
                    "messagePointResetTime": 1_767_225_600_000_000_i64,
                    "warningBannerPercent": 20}}}),
            ),
        ]);
        frames
            .iter()
            .map(|inner| json!({"min_seq": 7, "messages": [inner.to_string()]}).to_string())
            .collect()
    }

    #[test]
    fn a_2025_exchange_parses_in_order() {
        let updates: Vec<Update> = exchange_2025()
            .iter()
            .flat_map(|f| parse_frame(f))
            .collect();
        let msgs = messages(updates.clone());
        // messageCreated human, echo, messageCreated bot, 4 stream updates, 5 repeats.
        assert_eq!(msgs.len(), 12, "{msgs:#?}");

        let created = &msgs[0];
        assert!(created.created && created.human && !created.chat_break);
        assert_eq!(created.author, None);
        assert_eq!(created.message_id, HUMAN);
        assert_eq!(created.client_nonce.as_deref(), Some(NONCE));

        let echo = &msgs[1];
        assert!(!echo.created && echo.human && echo.bot.is_none());
        assert_eq!(echo.author.as_deref(), Some("human"));

        let bot_created = &msgs[2];
        assert!(bot_created.created && !bot_created.human && bot_created.is_bot());
        assert_eq!(bot_created.author, None);
        assert_eq!(bot_created.message_id, BOT);
        assert_eq!(
            bot_created.bot,
            Some(BotInfo {
                handle: "Claude-Opus-4.5".into(),
                display_name: Some("Claude-Opus-4.5".into())
            })
        );
        assert!(msgs[3..].iter().all(|m| m.message_id == BOT && !m.human));
        assert_eq!(msgs[4].text, "Hi");
        assert_eq!(msgs[3].author.as_deref(), Some("claude_opus_4_5"));

        // The last frame is the points; nothing else but messages gave an update.
        assert_eq!(
            updates.last(),
            Some(&Update::Points(PointInfo {
                balance: Some(2731),
                allotment: Some(3000),
                reset_micros: Some(1_767_225_600_000_000),
                warning_percent: Some(20.0),
            }))
        );
        assert_eq!(updates.len(), 13);
    }

    /// Feeds every message update of `frames` to `t`.
    fn track(t: &mut ReplyTracker, frames: &[String]) -> Vec<ReplyStep> {
        frames
            .iter()
            .flat_map(|f| messages(parse_frame(f)))
            .flat_map(|m| t.feed(&m))
            .collect()
    }

    #[test]
    fn a_2025_exchange_streams_once_and_finishes_once() {
        for mut t in [
            ReplyTracker::new(),
            ReplyTracker::with_nonce(Some(NONCE.into())),
        ] {
            let steps = track(&mut t, &exchange_2025());
            assert_eq!(
                steps,
                vec![
                    ReplyStep::Text(Chunk::Append("Hi".into())),
                    ReplyStep::Text(Chunk::Append(" there".into())),
                    ReplyStep::Text(Chunk::Append("!".into())),
                    ReplyStep::Finished(Outcome::Complete("Hi there!".into())),
                ]
            );
            assert!(t.finished() && t.started());
            assert_eq!(t.human_message_id(), Some(HUMAN));
            assert_eq!(t.human_client_nonce(), Some(NONCE));
            assert_eq!(t.bot_message_id(), Some(BOT));
            assert_eq!(t.bot().map(|b| b.handle.as_str()), Some("Claude-Opus-4.5"));
            assert_eq!(t.text(), "Hi there!");
        }
    }

    #[test]
    fn the_empty_created_bot_message_locks_without_text() {
        let frames = exchange_2025();
        let mut t = ReplyTracker::with_nonce(Some(NONCE.into()));
        // Up to and including the bot's messageCreated.
        let steps = track(&mut t, &frames[..5]);
        assert_eq!(steps, vec![]);
        assert!(t.started() && !t.finished());
        assert_eq!(t.bot_message_id(), Some(BOT));
        assert_eq!(t.text(), "");
        // A late repeat of messageCreated does not wipe streamed text.
        let late = frames[4].clone();
        let mut steps = track(&mut t, &frames[7..9]);
        steps.extend(track(&mut t, &[late]));
        assert_eq!(
            steps,
            vec![
                ReplyStep::Text(Chunk::Append("Hi".into())),
                ReplyStep::Text(Chunk::Append(" there".into())),
            ]
        );
        assert_eq!(t.text(), "Hi there");
    }

    #[test]
    fn pong_and_ping_frames_give_nothing() {
        assert_eq!(parse_frame("{\"type\":\"pong\"}"), vec![]);
        assert_eq!(parse_frame("{\"type\":\"ping\"}"), vec![]);
    }

    #[test]
    fn message_ids_take_numbers_and_numeric_strings_only() {
        let with_id = |id: Value| {
            frame(&[sub(
                "messageAdded",
                "messageAdded:1",
                json!({"messageId": id, "author": "beaver", "text": "t"}),
            )])
        };
        let id_of = |id: Value| {
            messages(parse_frame(&with_id(id)))
                .first()
                .map(|m| m.message_id)
        };
        assert_eq!(id_of(json!(457_234_370_765_i64)), Some(457_234_370_765));
        assert_eq!(
            id_of(json!(" 9007199254740993 ")),
            Some(9_007_199_254_740_993)
        );
        assert_eq!(id_of(json!(12.0)), Some(12));
        for bad in [
            json!(12.5),
            json!("12a"),
            json!(""),
            json!(null),
            json!(true),
            json!([1]),
            json!(u64::MAX),
        ] {
            assert_eq!(id_of(bad.clone()), None, "{bad}");
        }
    }

    #[test]
    fn human_and_bot_are_told_by_author_or_by_the_user_and_bot_objects() {
        let parse = |m: Value| {
            messages(parse_frame(&frame(&[sub(
                "messageAdded",
                "messageAdded",
                m,
            )])))
            .pop()
            .expect("one message")
        };
        let user_only = parse(json!({"messageId": 1, "authorUser": {"id": "x"}, "bot": null}));
        assert!(user_only.human && !user_only.is_bot());
        let bot_only = parse(json!({"messageId": 2, "authorUser": null,
            "bot": {"handle": "GPT-4o", "displayName": "GPT-4o"}}));
        assert!(!bot_only.human && bot_only.is_bot());
        let chat_break = parse(json!({"messageId": 3, "author": "chat_break", "text": ""}));
        assert!(chat_break.chat_break && !chat_break.human && !chat_break.is_bot());
        let nobody = parse(json!({"messageId": 4, "text": "?"}));
        assert!(!nobody.human && !nobody.is_bot());
        assert_eq!(nobody.state, "incomplete");
    }

    #[test]
    fn unknown_subscriptions_fields_and_ids_without_a_colon_are_tolerated() {
        let f = frame(&[
            sub(
                "messageTextUpdated",
                "messageTextUpdated",
                json!({"messageId": 5, "delta": "x"}),
            ),
            sub("someFutureThing", "someFutureThing", json!({"a": 1})),
            json!({"message_type": "subscriptionUpdate", "payload": {"unique_id": "messageAdded",
                "data": {"messageAdded": {"messageId": 6, "author": "beaver", "text": "a",
                "brandNewField": {"deep": [1, 2]}, "state": "some_new_state"}}}}),
            json!({"message_type": "subscriptionUpdate", "payload": {
                "data": {"messageCreated": {"message": {"messageId": 7, "author": "beaver"}}}}}),
        ]);
        let msgs = messages(parse_frame(&f));
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            (msgs[0].message_id, msgs[0].state.as_str()),
            (6, "some_new_state")
        );
        assert_eq!((msgs[1].message_id, msgs[1].created), (7, true));
    }

    // --- the 2023 site ------------------------------------------------------------------

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
            "{\"messages\": {\"a\": 1}}",
            &frame(&[json!({"message_type": "other"})]),
            &frame(&[json!({"message_type": "subscriptionUpdate", "payload": null})]),
            &frame(&[noise("messageCancelled"), noise("messageTextUpdated")]),
        ] {
            assert_eq!(parse_frame(payload), vec![], "payload {payload:?}");
        }
    }

    #[test]
    fn broken_and_hostile_frames_never_panic() {
        let whole = exchange_2025().concat();
        for end in (0..whole.len()).filter(|i| whole.is_char_boundary(*i)) {
            let _ = parse_frame(&whole[..end]);
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_frame(&deep), vec![]);
        let deep_data = format!(
            "{{\"message_type\":\"subscriptionUpdate\",\"payload\":{{\"subscription_name\":\"viewerStateUpdated\",\"data\":{}1{}}}}}",
            "{\"a\":".repeat(120),
            "}".repeat(120)
        );
        assert_eq!(parse_frame(&deep_data), vec![]);
    }

    #[test]
    fn lost_update_signals_are_reported() {
        assert_eq!(
            parse_frame("{\"error\":\"missed_messages\"}"),
            vec![Update::LostUpdates("missed_messages")]
        );
        let f = frame(&[json!({"message_type": "refetchChannel"})]);
        assert_eq!(parse_frame(&f), vec![Update::LostUpdates("refetchChannel")]);
        let f = frame(&[json!({"_": "x", "message_type": "refetchChannel", "payload": {}})]);
        assert_eq!(parse_frame(&f), vec![Update::LostUpdates("refetchChannel")]);
    }

    #[test]
    fn points_are_found_wherever_they_sit_in_the_viewer_state() {
        let shapes = [
            json!({"messagePointInfo": {"messagePointBalance": 10}}),
            json!({"viewer": {"messagePointInfo": {"messagePointBalance": "10"}}}),
            json!({"viewer": {"x": [{"messagePointInfo": {"messagePointBalance": 10}}]}}),
        ];
        for data in shapes {
            let f = frame(&[sub(
                "viewerStateUpdated",
                "viewerStateUpdated",
                data.clone(),
            )]);
            match parse_frame(&f).as_slice() {
                [Update::Points(p)] => assert_eq!(p.balance, Some(10), "{data}"),
                other => panic!("{data}: {other:?}"),
            }
        }
        // A viewer state without points, and points in another subscription, give nothing.
        let f = frame(&[
            sub(
                "viewerStateUpdated",
                "viewerStateUpdated",
                json!({"viewer": {"id": 1}}),
            ),
            sub(
                "chatTitleUpdated",
                "c",
                json!({"messagePointInfo": {"messagePointBalance": 1}}),
            ),
            sub(
                "viewerStateUpdated",
                "v",
                json!({"messagePointInfo": {"other": 1}}),
            ),
        ]);
        assert_eq!(parse_frame(&f), vec![]);
    }

    #[test]
    fn the_reset_time_is_in_microseconds() {
        let p = PointInfo {
            balance: None,
            allotment: None,
            reset_micros: Some(1_767_225_600_123_456),
            warning_percent: None,
        };
        let at = p.reset_at().expect("a time");
        assert_eq!(
            at.duration_since(UNIX_EPOCH).expect("after the epoch"),
            Duration::new(1_767_225_600, 123_456_000)
        );
        let negative = PointInfo {
            reset_micros: Some(-1),
            ..p
        };
        assert_eq!(negative.reset_at(), None);
    }

    #[test]
    fn unicode_and_escapes_survive_double_encoding() {
        let text = "emoji 👩‍💻, CJK 漢字, RTL مرحبا שלום\n\"quotes\" 'x' back\\slash \\n </div>";
        let f = frame(&[added(9, "beaver", text, "complete")]);
        assert_eq!(parse_frame(&f), vec![msg(9, "beaver", text, "complete")]);
    }

    // --- the tracker --------------------------------------------------------------------

    fn run(tracker: &mut ReplyTracker, updates: &[(i64, &str, &str, &str)]) -> Vec<ReplyStep> {
        updates
            .iter()
            .flat_map(|(id, a, t, s)| tracker.feed(&update(*id, a, t, s)))
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
        assert_eq!(t.human_message_id(), Some(1));
    }

    #[test]
    fn ids_in_no_order_still_give_the_reply_that_starts_after_the_echo() {
        // A site that numbers messages at random: the reply's id is below the echo's.
        let mut t = ReplyTracker::new();
        let steps = run(
            &mut t,
            &[
                (77, "beaver", "an earlier reply, repeated", "complete"),
                (900, "human", "question", "complete"),
                (77, "beaver", "an earlier reply, repeated", "complete"),
                (120, "beaver", "", "incomplete"),
                (120, "beaver", "Hi", "incomplete"),
                (120, "beaver", "Hi there", "complete"),
            ],
        );
        assert_eq!(
            steps.last(),
            Some(&ReplyStep::Finished(Outcome::Complete("Hi there".into())))
        );
        assert_eq!(t.bot_message_id(), Some(120));
        // A bot message already streaming before the echo is not the reply, whatever its id.
        let mut t = ReplyTracker::new();
        let steps = run(
            &mut t,
            &[
                (130, "beaver", "other", "incomplete"),
                (900, "human", "question", "complete"),
                (130, "beaver", "other chat", "incomplete"),
                (5, "beaver", "ours", "complete"),
            ],
        );
        assert_eq!(
            steps,
            Vec::new(),
            "a finished message is a repeat, not a start"
        );
        let steps = run(&mut t, &[(6, "beaver", "", "incomplete")]);
        assert_eq!(steps, Vec::new(), "nothing streamed yet");
        assert_eq!(t.bot_message_id(), Some(6));
        // On a kept page: the earlier turn's messages are ignored by id, the new echo and
        // reply are taken whatever their ids.
        let mut t = ReplyTracker::new().after(&[900, 50]);
        let steps = run(
            &mut t,
            &[
                (50, "beaver", "old answer", "complete"),
                (30, "human", "new question", "complete"),
                (50, "beaver", "old answer", "complete"),
                (700, "beaver", "new", "incomplete"),
                (700, "beaver", "new answer", "complete"),
            ],
        );
        assert_eq!(
            steps.last(),
            Some(&ReplyStep::Finished(Outcome::Complete("new answer".into())))
        );
        assert_eq!(t.taken().collect::<Vec<_>>(), [30, 700]);
    }

    #[test]
    fn late_updates_of_an_earlier_turn_on_a_kept_page_are_not_the_next_reply() {
        // The page showed turn 1 (echo 10, reply 11); its reply repeats late, and an old
        // echo comes again, before the new turn's echo and reply.
        let mut t = ReplyTracker::new().after(&[10, 11]);
        let steps = run(
            &mut t,
            &[
                (11, "beaver", "old answer", "complete"),
                (10, "human", "old question", "complete"),
                (12, "human", "new question", "complete"),
                (11, "beaver", "old answer", "complete"),
                (13, "beaver", "new", "incomplete"),
                (13, "beaver", "new answer", "complete"),
            ],
        );
        assert_eq!(
            steps.last(),
            Some(&ReplyStep::Finished(Outcome::Complete("new answer".into())))
        );
        assert_eq!(t.taken().collect::<Vec<_>>(), [12, 13]);
        // Without the floor, the late repeat would have been taken for the reply.
        let mut t = ReplyTracker::new();
        let steps = run(
            &mut t,
            &[
                (10, "human", "old question", "complete"),
                (11, "beaver", "old answer", "complete"),
            ],
        );
        assert_eq!(
            steps.last(),
            Some(&ReplyStep::Finished(Outcome::Complete("old answer".into())))
        );
    }

    #[test]
    fn a_non_prefix_rewrite_replaces_and_the_final_text_wins() {
        let mut t = ReplyTracker::new();
        let steps = run(
            &mut t,
            &[
                (1, "human", "q", "complete"),
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
                (1, "human", "q", "complete"),
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
    fn in_a_continued_chat_old_bot_messages_are_not_the_reply() {
        let old = |id: i64| bot_2025(json!(id), "an old answer", "complete");
        let frames: Vec<String> = [
            // The previous turn's reply shows up again before the new prompt's echo...
            sub("messageAdded", "messageAdded:3349", old(BOT - 10)),
            sub("messageAdded", "messageAdded:3349", human_2025(NONCE)),
            // ... and after it.
            sub("messageAdded", "messageAdded:3349", old(BOT - 10)),
            sub(
                "messageAdded",
                "messageAdded:3349",
                bot_2025(json!(BOT), "new", "complete"),
            ),
        ]
        .iter()
        .map(|e| frame(std::slice::from_ref(e)))
        .collect();
        let mut t = ReplyTracker::with_nonce(Some(NONCE.into()));
        assert_eq!(
            track(&mut t, &frames),
            vec![
                ReplyStep::Text(Chunk::Append("new".into())),
                ReplyStep::Finished(Outcome::Complete("new".into())),
            ]
        );
        // Without a nonce, an old message after the echo is still skipped by its id.
        let mut t = ReplyTracker::new();
        let steps = track(&mut t, &frames[1..]);
        assert_eq!(
            steps.last(),
            Some(&ReplyStep::Finished(Outcome::Complete("new".into())))
        );
        assert_eq!(t.bot_message_id(), Some(BOT));
    }

    #[test]
    fn with_a_nonce_other_peoples_echoes_are_ignored() {
        let mut t = ReplyTracker::with_nonce(Some(NONCE.into()));
        let other_echo = MessageUpdate {
            client_nonce: Some("someone-else".into()),
            ..update(HUMAN + 5, "human", "their question", "complete")
        };
        let our_echo = MessageUpdate {
            client_nonce: Some(NONCE.into()),
            ..update(HUMAN, "human", "our question", "complete")
        };
        assert_eq!(t.feed(&other_echo), vec![]);
        // Their reply, before our echo: not ours.
        assert_eq!(
            t.feed(&update(HUMAN + 6, "beaver", "theirs", "incomplete")),
            vec![]
        );
        assert_eq!(t.human_message_id(), None);
        assert!(!t.started());
        assert_eq!(t.feed(&our_echo), vec![]);
        // A human message without a nonce does not move a matched echo.
        assert_eq!(t.feed(&update(HUMAN + 7, "human", "x", "complete")), vec![]);
        assert_eq!(t.human_message_id(), Some(HUMAN));
        assert_eq!(
            t.feed(&update(HUMAN + 8, "beaver", "ours", "complete")),
            vec![
                ReplyStep::Text(Chunk::Append("ours".into())),
                ReplyStep::Finished(Outcome::Complete("ours".into())),
            ]
        );
    }

    /// One update of an account-wide channel: `m` on chat `chat` (`None`: a bare
    /// `messageCreated`), as a frame.
    fn on_chat(chat: Option<&str>, m: Value) -> String {
        let entry = match chat {
            Some(chat) => sub("messageAdded", &format!("messageAdded:{chat}"), m),
            None => sub("messageCreated", "messageCreated", m),
        };
        frame(&[entry])
    }

    /// A human message of another chat: its own id and nonce.
    fn their_echo(id: i64, nonce: &str) -> Value {
        let mut m = human_2025(nonce);
        m["messageId"] = json!(id);
        m["text"] = json!("their question");
        m
    }

    #[test]
    fn no_bot_message_is_taken_before_an_echo() {
        let mut t = ReplyTracker::new();
        assert_eq!(
            run(&mut t, &[(2, "beaver", "someone's", "complete")]),
            vec![]
        );
        assert!(!t.started());
    }

    #[test]
    fn other_chats_on_an_account_wide_channel_are_not_the_reply() {
        // Ours: chat 3349, echo HUMAN, reply HUMAN + 3. Theirs: chat 77, echo HUMAN + 1,
        // reply HUMAN + 2 (made before ours, after our echo).
        let mut created_ours = human_2025(NONCE);
        created_ours.as_object_mut().map(|m| m.remove("author"));
        let theirs =
            |text: &str, state: &str| on_chat(Some("77"), bot_2025(json!(HUMAN + 2), text, state));
        let ours = |text: &str, state: &str| {
            on_chat(Some("3349"), bot_2025(json!(HUMAN + 3), text, state))
        };
        let frames = [
            on_chat(None, created_ours),
            on_chat(Some("77"), their_echo(HUMAN + 1, "theirs")),
            on_chat(Some("3349"), human_2025(NONCE)),
            // Their bot message, announced without a chat: locked on for now...
            on_chat(None, bot_2025(json!(HUMAN + 2), "", "incomplete")),
            // ... and let go when it names its chat.
            theirs("", "incomplete"),
            theirs("Their", "incomplete"),
            ours("", "incomplete"),
            theirs("Their answer", "complete"),
            ours("Our", "incomplete"),
            theirs("Their answer", "complete"),
            ours("Our answer", "complete"),
        ];
        let mut t = ReplyTracker::with_nonce(Some(NONCE.into()));
        assert_eq!(
            track(&mut t, &frames),
            vec![
                ReplyStep::Text(Chunk::Append("Our".into())),
                ReplyStep::Text(Chunk::Append(" answer".into())),
                ReplyStep::Finished(Outcome::Complete("Our answer".into())),
            ]
        );
        assert_eq!(t.bot_message_id(), Some(HUMAN + 3));

        // A lock on their chat-less message gives way to a message of our chat even
        // before theirs names its chat.
        let mut t = ReplyTracker::with_nonce(Some(NONCE.into()));
        let order = [&frames[2], &frames[3], &frames[6], &frames[4], &frames[10]];
        let frames: Vec<String> = order.into_iter().cloned().collect();
        assert_eq!(
            track(&mut t, &frames),
            vec![
                ReplyStep::Text(Chunk::Append("Our answer".into())),
                ReplyStep::Finished(Outcome::Complete("Our answer".into())),
            ]
        );
    }

    #[test]
    fn updates_before_the_send_are_held_and_fed_with_its_nonce() {
        // Another chat streams while ours is sent; our echo even beats the send's report.
        let before = [
            on_chat(Some("77"), their_echo(HUMAN - 10, "theirs")),
            on_chat(
                Some("77"),
                bot_2025(json!(HUMAN - 9), "Their", "incomplete"),
            ),
            on_chat(Some("77"), their_echo(HUMAN + 1, "later")),
            on_chat(Some("3349"), human_2025(NONCE)),
        ];
        let mut t = ReplyTracker::new().until_sent();
        assert!(t.holding());
        assert_eq!(track(&mut t, &before), vec![]);
        assert_eq!(t.sent(Some(NONCE.into()), None), vec![]);
        assert!(!t.holding());
        assert_eq!(t.human_message_id(), Some(HUMAN));
        let after = [
            on_chat(Some("77"), bot_2025(json!(HUMAN + 2), "Later", "complete")),
            on_chat(Some("3349"), bot_2025(json!(HUMAN + 3), "Ours", "complete")),
        ];
        assert_eq!(
            track(&mut t, &after).last(),
            Some(&ReplyStep::Finished(Outcome::Complete("Ours".into())))
        );

        // Held updates that include the reply come out when the send is seen.
        let mut t = ReplyTracker::new().until_sent();
        let mut all = before.to_vec();
        all.extend(after.iter().cloned());
        assert_eq!(track(&mut t, &all), vec![]);
        assert_eq!(
            t.sent(Some(NONCE.into()), None).last(),
            Some(&ReplyStep::Finished(Outcome::Complete("Ours".into())))
        );
    }

    #[test]
    fn a_nonce_learned_late_drops_a_wrong_guess() {
        let mut t = ReplyTracker::new().until_sent();
        // The send's nonce could not be read at first.
        assert_eq!(t.sent(None, None), vec![]);
        track(
            &mut t,
            &[on_chat(Some("77"), their_echo(HUMAN + 1, "theirs"))],
        );
        assert_eq!(t.human_message_id(), Some(HUMAN + 1));
        assert_eq!(t.sent(Some(NONCE.into()), None), vec![]);
        assert_eq!(t.human_message_id(), None, "their echo was only a guess");
        let rest = [
            on_chat(Some("77"), bot_2025(json!(HUMAN + 2), "Theirs", "complete")),
            on_chat(Some("3349"), human_2025(NONCE)),
            on_chat(Some("3349"), bot_2025(json!(HUMAN + 3), "Ours", "complete")),
        ];
        assert_eq!(
            track(&mut t, &rest).last(),
            Some(&ReplyStep::Finished(Outcome::Complete("Ours".into())))
        );
    }

    /// A 2023-shape message (no nonce, no `bot` object) on chat `chat`.
    fn plain(chat: &str, id: i64, author: &str, text: &str, state: &str) -> String {
        let m = json!({"messageId": id, "author": author, "text": text, "state": state});
        on_chat(Some(chat), m)
    }

    #[test]
    fn without_nonces_the_chat_the_send_went_to_tells_the_echo() {
        // Ours goes to chat-1; another page's prompt (chat-2) was sent just before, and its
        // echo and reply reach our page before our echo does.
        let frames = [
            plain("chat-2", 10, "human", "theirs", "complete"),
            plain("chat-2", 11, "beaver", "Their", "incomplete"),
            plain("chat-1", 12, "human", "ours", "complete"),
            plain("chat-2", 11, "beaver", "Their answer", "complete"),
            plain("chat-1", 13, "beaver", "Our answer", "complete"),
        ];
        let mut t = ReplyTracker::new().until_sent();
        assert_eq!(t.sent(None, Some("chat-1".into())), vec![]);
        assert_eq!(
            track(&mut t, &frames),
            vec![
                ReplyStep::Text(Chunk::Append("Our answer".into())),
                ReplyStep::Finished(Outcome::Complete("Our answer".into())),
            ]
        );
        assert_eq!(t.human_message_id(), Some(12));
        assert!(!t.deferring());
    }

    #[test]
    fn without_nonces_or_a_chat_the_reply_waits_for_the_sites_answer() {
        // A new chat (no chatId in the send) on a site that puts no nonces in echoes: three
        // prompts' echoes come before any reply, then the replies interleave.
        let frames = [
            plain("21", 100, "human", "ours", "complete"),
            plain("22", 101, "human", "second", "complete"),
            plain("23", 102, "human", "third", "complete"),
            plain("23", 105, "beaver", "Third", "incomplete"),
            plain("21", 103, "beaver", "Our", "incomplete"),
            plain("22", 104, "beaver", "Second", "incomplete"),
        ];
        let mut t = ReplyTracker::new().until_sent();
        assert_eq!(t.sent(None, None), vec![]);
        assert_eq!(track(&mut t, &frames), vec![], "nothing is guessed");
        assert!(t.deferring());
        // The answer names the prompt's message: its chat's reply comes out, the others'
        // are dropped.
        assert_eq!(
            t.answered(vec!["21".into(), "2fnxsq7l".into()], Some(100)),
            vec![ReplyStep::Text(Chunk::Append("Our".into()))]
        );
        assert!(!t.deferring());
        let rest = [
            plain("23", 105, "beaver", "Third answer", "complete"),
            plain("21", 103, "beaver", "Our answer", "complete"),
        ];
        assert_eq!(
            track(&mut t, &rest),
            vec![
                ReplyStep::Text(Chunk::Append(" answer".into())),
                ReplyStep::Finished(Outcome::Complete("Our answer".into())),
            ]
        );

        // The chat alone tells it too, and an answer read before the send's report counts.
        let mut t = ReplyTracker::new().until_sent();
        track(&mut t, &frames);
        let mut steps = t.sent(None, None);
        steps.extend(t.answered(vec!["21".into()], None));
        assert_eq!(steps, vec![ReplyStep::Text(Chunk::Append("Our".into()))]);
        assert_eq!(t.sent(None, None), vec![]);
        assert!(
            !t.deferring(),
            "a later report of the send awaits no answer again"
        );
    }

    #[test]
    fn an_answer_before_the_echo_leaves_other_chats_waiting() {
        // Ours goes to chat-1; the site answers before our echo comes, while another chat's
        // echo and reply are on the channel: theirs is not taken for want of ours.
        let mut t = ReplyTracker::new().until_sent();
        t.sent(None, Some("chat-1".into()));
        let theirs = [
            plain("chat-2", 10, "human", "theirs", "complete"),
            plain("chat-2", 11, "beaver", "Their answer", "complete"),
        ];
        assert_eq!(track(&mut t, &theirs), vec![]);
        assert_eq!(t.answered(vec!["chat-1".into()], None), vec![]);
        assert!(t.deferring());
        let ours = [
            plain("chat-1", 12, "human", "ours", "complete"),
            plain("chat-1", 13, "beaver", "Our answer", "complete"),
        ];
        assert_eq!(
            track(&mut t, &ours).last(),
            Some(&ReplyStep::Finished(Outcome::Complete("Our answer".into())))
        );
    }

    #[test]
    fn a_doubtful_guess_is_taken_once_the_caller_settles() {
        // The send's chat is named differently from the updates, and the answer names
        // nothing more: the guess is all there is, taken once the caller stops waiting.
        let frames = [
            plain("3349", 100, "human", "ours", "complete"),
            plain("3349", 101, "beaver", "Our answer", "complete"),
        ];
        let mut t = ReplyTracker::new().until_sent();
        t.sent(None, Some("2fnxsq7l".into()));
        assert_eq!(track(&mut t, &frames), vec![]);
        assert_eq!(t.answered(Vec::new(), None), vec![]);
        assert!(t.deferring());
        assert_eq!(
            t.settle().last(),
            Some(&ReplyStep::Finished(Outcome::Complete("Our answer".into())))
        );
        assert!(!t.deferring());

        // A send never seen awaits no answer: the guess is taken at once.
        let mut t = ReplyTracker::new().until_sent();
        assert_eq!(track(&mut t, &frames), vec![]);
        assert_eq!(
            t.unheld().last(),
            Some(&ReplyStep::Finished(Outcome::Complete("Our answer".into())))
        );
    }

    #[test]
    fn echoes_without_a_nonce_are_taken_when_a_nonce_is_expected() {
        // The 2023 site sent no nonce at all.
        let mut t = ReplyTracker::with_nonce(Some(NONCE.into()));
        let steps = run(
            &mut t,
            &[
                (1, "human", "q", "complete"),
                (2, "beaver", "a", "complete"),
            ],
        );
        assert_eq!(
            steps.last(),
            Some(&ReplyStep::Finished(Outcome::Complete("a".into())))
        );
    }

    #[test]
    fn states_finish_fail_or_keep_streaming() {
        for (state, end) in [
            ("complete", Some(Outcome::Complete("partial".into()))),
            (
                "error_user_message_too_long",
                Some(Outcome::Failed {
                    state: "error_user_message_too_long".into(),
                    text: "partial".into(),
                }),
            ),
            (
                "cancelled",
                Some(Outcome::Failed {
                    state: "cancelled".into(),
                    text: "partial".into(),
                }),
            ),
            ("incomplete", None),
            ("thinking_hard", None),
        ] {
            let mut t = ReplyTracker::new();
            let steps = run(
                &mut t,
                &[
                    (1, "human", "q", "complete"),
                    (2, "beaver", "partial", state),
                ],
            );
            assert_eq!(steps[0], ReplyStep::Text(Chunk::Append("partial".into())));
            assert_eq!(
                steps.get(1),
                end.map(ReplyStep::Finished).as_ref(),
                "{state}"
            );
            assert_eq!(t.finished(), steps.len() == 2);
        }
    }
}
