//! The page's own HTTP traffic, read through CDP: what its GraphQL requests and responses say.
//!
//! poed never calls the site's API; it reads what the page sent and received. Pure functions
//! over request headers and bodies, so they are tested on recorded-style JSON:
//! - [`query_name`] / [`is_send_query`] / [`send_request`]: which request is the page's send
//!   (`sendMessageMutation`), the nonce its human echo will carry and the chat it goes to.
//! - [`parse_send_response`]: whether the site took the message or refused it
//!   (`messageEdgeCreate.status`), and which chat and message it made. On a refusal no frame
//!   ever comes, so this is the only way to know.
//! - [`find_reply`]: the reply read back from the chat the page refetches after lost updates.
//!   That query's name and shape are not known, so the whole body is searched for message
//!   objects.
//! - [`bots_in`], [`bot_list_page`], [`bot_list_complete`]: bots of a bot-list response,
//!   its place in the paged list and whether all pages came. (The account's points come
//!   from the update frames, where the site sends them: see [`frames`](super::frames).)
//!
//! Bodies are searched wherever the wanted object sits (extra wrappers, batched responses)
//! with the bounded walk of [`frames`](super::frames): depth-capped, no recursion.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::frames::{int_of, objects, BotInfo, MessageUpdate, Outcome};

/// The page's send mutation, as named in the `poe-queryname` header (2025).
pub const SEND_QUERY: &str = "sendMessageMutation";

/// The request header that names the GraphQL operation.
pub const QUERY_NAME_HEADER: &str = "poe-queryname";

/// The GraphQL operation of a request: the `poe-queryname` header (any case), else the
/// body's `queryName`, else its `operationName` (the first operation of a batch).
pub fn query_name(headers: &[(String, String)], post_data: Option<&str>) -> Option<String> {
    let from_header = headers
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case(QUERY_NAME_HEADER) && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_owned());
    if from_header.is_some() {
        return from_header;
    }
    let body = serde_json::from_str::<Value>(post_data?).ok()?;
    let op = match &body {
        Value::Array(batch) => batch.first()?,
        one => one,
    };
    ["queryName", "operationName"].iter().find_map(|key| {
        op.get(key)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
    })
}

/// Whether an operation name is the page's send of a chat message: `sendMessageMutation` in
/// any case or wrapping (`SendMessageMutation`, `chatHelpers_sendMessageMutation_Mutation`),
/// and the older `chatHelpersSendNewChatMessageMutation`.
pub fn is_send_query(name: &str) -> bool {
    let plain: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    plain.contains("sendmessagemutation") || plain.contains("sendnewchatmessagemutation")
}

/// The `clientNonce` of a send request's body (`variables.clientNonce`, or wherever else the
/// body has one).
pub fn client_nonce(post_data: &str) -> Option<String> {
    nonce_in(&serde_json::from_str::<Value>(post_data).ok()?)
}

fn nonce_in(body: &Value) -> Option<String> {
    let nonce_of = |o: &Map<String, Value>| {
        o.get("clientNonce")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
    };
    objects(body)
        .find_map(|o| {
            o.get("variables")
                .and_then(Value::as_object)
                .and_then(nonce_of)
        })
        .or_else(|| objects(body).find_map(nonce_of))
}

/// What the page's send request says of the message it sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendRequest {
    /// The `clientNonce` its human echo will carry (2025).
    pub nonce: Option<String>,
    /// The chat it goes to: `variables.chatId` as the site writes it (a number or a
    /// string); none for a new chat (2025 sends `null` there).
    pub chat: Option<String>,
}

/// What a request of the page says when it is the page's send (see [`is_send_query`]);
/// `None` for any other request.
pub fn send_request(headers: &[(String, String)], post_data: Option<&str>) -> Option<SendRequest> {
    let name = query_name(headers, post_data)?;
    if !is_send_query(&name) {
        return None;
    }
    // Parsed once: the body holds the whole prompt, which may be long.
    let Some(body) = post_data.and_then(|p| serde_json::from_str::<Value>(p).ok()) else {
        return Some(SendRequest::default());
    };
    Some(SendRequest {
        nonce: nonce_in(&body),
        chat: objects(&body).find_map(|o| {
            o.get("variables")
                .and_then(|v| v.get("chatId"))
                .and_then(id_text)
        }),
    })
}

/// An id as text, as an update's `unique_id` would name it: a string as written, a whole
/// number in decimal; `None` for anything else or an empty string.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => n
            .as_i64()
            .map(|i| i.to_string())
            .or_else(|| n.as_u64().map(|u| u.to_string())),
        _ => None,
    }
}

/// Why the site refused a message (`messageEdgeCreate.status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `reached_limit`: the quota (points) is used up.
    ReachedLimit,
    /// `rate_limit_exceeded`: too many messages too fast.
    RateLimitExceeded,
    /// `concurrent_messages`: too many replies in flight for the account.
    ConcurrentMessages,
    /// `too_many_tokens`: the message is too long for the bot.
    TooManyTokens,
    /// `no_access`: the bot is not available to this account.
    NoAccess,
    /// Any other status, as sent; `graphql_error` for a response with only GraphQL errors.
    Other(String),
}

impl Refusal {
    /// The refusal a status means (any case).
    pub fn from_status(status: &str) -> Refusal {
        match status.trim().to_ascii_lowercase().as_str() {
            "reached_limit" => Refusal::ReachedLimit,
            "rate_limit_exceeded" => Refusal::RateLimitExceeded,
            "concurrent_messages" => Refusal::ConcurrentMessages,
            "too_many_tokens" => Refusal::TooManyTokens,
            "no_access" => Refusal::NoAccess,
            _ => Refusal::Other(status.to_owned()),
        }
    }

    /// The site's status string.
    pub fn as_str(&self) -> &str {
        match self {
            Refusal::ReachedLimit => "reached_limit",
            Refusal::RateLimitExceeded => "rate_limit_exceeded",
            Refusal::ConcurrentMessages => "concurrent_messages",
            Refusal::TooManyTokens => "too_many_tokens",
            Refusal::NoAccess => "no_access",
            Refusal::Other(s) => s,
        }
    }
}

/// What the response to the page's send says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// The site took the message: replies will come on the update socket.
    Taken {
        /// The chat's names: `chat.chatId`, `chat.id`, `chat.chatCode`, as the site wrote
        /// them (an update names its chat by one of them: `messageAdded:<chatId>`).
        chats: Vec<String>,
        /// `chat.chatCode`: the chat's page is `{base}/chat/{chatCode}`.
        chat_code: Option<String>,
        /// The id of the message taken (the human message: its echo has this id).
        message_id: Option<i64>,
    },
    /// The site refused the message: no frame will come, not even the echo. Sending it
    /// again later is not a duplicate.
    Refused {
        refusal: Refusal,
        /// `statusMessage` (or the GraphQL error's message): what the page shows.
        message: Option<String>,
    },
}

/// Reads the response to the page's send. `None` when the body does not say (not JSON, or
/// no `messageEdgeCreate` and no GraphQL error).
pub fn parse_send_response(body: &str) -> Option<SendResult> {
    let v = serde_json::from_str::<Value>(body).ok()?;
    let edge = objects(&v).find_map(|o| o.get("messageEdgeCreate").and_then(Value::as_object));
    let Some(edge) = edge else {
        return graphql_error(&v);
    };
    match edge.get("status").and_then(Value::as_str) {
        Some(s) if s.trim().eq_ignore_ascii_case("success") => Some(taken(edge)),
        Some(s) => Some(SendResult::Refused {
            refusal: Refusal::from_status(s),
            message: edge
                .get("statusMessage")
                .and_then(Value::as_str)
                .filter(|m| !m.trim().is_empty())
                .map(str::to_owned),
        }),
        // No status: an error if the body says so, taken if a message was created.
        None => graphql_error(&v).or_else(|| {
            let t = taken(edge);
            matches!(
                t,
                SendResult::Taken {
                    message_id: Some(_),
                    ..
                }
            )
            .then_some(t)
        }),
    }
}

fn taken(edge: &Map<String, Value>) -> SendResult {
    let chat = edge.get("chat").and_then(Value::as_object);
    let chat_field = |key: &str| chat.and_then(|c| c.get(key));
    SendResult::Taken {
        chats: ["chatId", "id", "chatCode"]
            .iter()
            .filter_map(|key| chat_field(key).and_then(id_text))
            .collect(),
        chat_code: chat_field("chatCode")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_owned),
        // `message` is an edge (`message.node.messageId`) or the node itself.
        message_id: edge
            .get("message")
            .and_then(|m| objects(m).find_map(|o| o.get("messageId").and_then(int_of))),
    }
}

/// A response with a non-empty GraphQL `errors` list at its top (or at the top of one of a
/// batch's responses): a refusal the site did not name.
fn graphql_error(v: &Value) -> Option<SendResult> {
    let tops: Vec<&Value> = match v {
        Value::Array(batch) => batch.iter().collect(),
        one => vec![one],
    };
    let errors = tops.iter().find_map(|t| {
        t.get("errors")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
    })?;
    Some(SendResult::Refused {
        refusal: Refusal::Other("graphql_error".into()),
        message: errors
            .iter()
            .find_map(|e| e.get("message").and_then(Value::as_str))
            .map(str::to_owned),
    })
}

/// Which message of a refetched chat is the reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyTarget {
    /// The bot message's id, when frames gave it ([`super::frames::ReplyTracker::bot_message_id`]).
    pub bot_message_id: Option<i64>,
    /// The prompt's id (its echo, or the `message_id` of [`SendResult::Taken`]).
    pub human_message_id: Option<i64>,
    /// The nonce of the page's send request, to find the prompt when its id is not known.
    pub client_nonce: Option<String>,
}

/// A message read from a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMessage {
    pub message_id: i64,
    /// The whole text.
    pub text: String,
    /// `incomplete` (also when absent), `complete`, `cancelled`, `error_*`, ...
    pub state: String,
    /// `human`, `chat_break` or the bot's codename, when the response said.
    pub author: Option<String>,
    /// The bot object of the message, when the response had one.
    pub bot: Option<BotInfo>,
}

impl FoundMessage {
    /// How the message ended, or `None` while it still streams.
    pub fn outcome(&self) -> Option<Outcome> {
        Outcome::from_state(&self.state, &self.text)
    }
}

/// Finds the reply in a response of any shape holding the chat's messages (`edges[].node`,
/// plain lists, any nesting). A message is an object with `messageId` and a string `text`.
/// The reply is the message with `target.bot_message_id` when that is set (`None` if it is
/// absent); else the first bot message (by id) after the prompt, found by
/// `target.human_message_id` or by the message carrying `target.client_nonce`.
pub fn find_reply(body: &str, target: &ReplyTarget) -> Option<FoundMessage> {
    let v = serde_json::from_str::<Value>(body).ok()?;
    let mut seen = HashSet::new();
    let messages: Vec<MessageUpdate> = objects(&v)
        .filter(|o| o.get("text").is_some_and(Value::is_string))
        .filter_map(|o| MessageUpdate::from_map(o, false))
        .filter(|m| seen.insert(m.message_id))
        .collect();
    let found = match target.bot_message_id {
        Some(id) => messages.into_iter().find(|m| m.message_id == id)?,
        None => {
            let anchor = target.human_message_id.or_else(|| {
                let nonce = target.client_nonce.as_deref()?;
                messages
                    .iter()
                    .find(|m| m.client_nonce.as_deref() == Some(nonce))
                    .map(|m| m.message_id)
            })?;
            let reply = |m: &MessageUpdate| !m.human && !m.chat_break;
            // The first after the prompt by id (the site numbers messages in time), else,
            // for ids in no order, the first after it in the response.
            let by_id = messages
                .iter()
                .filter(|m| m.message_id > anchor && reply(m))
                .min_by_key(|m| m.message_id)
                .map(|m| m.message_id);
            let by_place = || {
                messages
                    .iter()
                    .skip_while(|m| m.message_id != anchor)
                    .skip(1)
                    .find(|m| reply(m))
                    .map(|m| m.message_id)
            };
            let id = by_id.or_else(by_place)?;
            messages.into_iter().find(|m| m.message_id == id)?
        }
    };
    Some(FoundMessage {
        message_id: found.message_id,
        text: found.text,
        state: found.state,
        author: found.author,
        bot: found.bot,
    })
}

/// Every bot of a response: objects (any depth) with a string `handle` and `displayName`,
/// once per handle, in order of appearance (array order; the keys of one object are visited
/// sorted).
pub fn bots_in(body: &str) -> Vec<BotInfo> {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    objects(&v)
        .filter(|o| o.get("displayName").is_some_and(Value::is_string))
        .filter_map(BotInfo::from_map)
        .filter(|b| seen.insert(b.handle.clone()))
        .collect()
}

/// One page of a paged bot list (a GraphQL cursor connection), as the page asked for it and
/// the site answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotListPage {
    /// The cursor the request asked to start after (`variables.cursor` or `.after`); `None`
    /// for the first page.
    pub after: Option<String>,
    /// `pageInfo.endCursor`: where the next page starts.
    pub end_cursor: Option<String>,
    /// `pageInfo.hasNextPage`.
    pub has_next: bool,
}

/// The page of a bot list a response holds: a connection (an object with `edges` holding
/// bots and a `pageInfo` with `hasNextPage`) and the cursor its request asked for. Other
/// paged lists of the page (chats, messages) do not count.
pub fn bot_list_page(post_data: Option<&str>, body: &str) -> Option<BotListPage> {
    let v = serde_json::from_str::<Value>(body).ok()?;
    let connection = objects(&v).find(|o| {
        o.get("pageInfo")
            .and_then(|p| p.get("hasNextPage"))
            .is_some_and(Value::is_boolean)
            && o.get("edges").is_some_and(|edges| {
                objects(edges).any(|e| {
                    e.get("displayName").is_some_and(Value::is_string)
                        && BotInfo::from_map(e).is_some()
                })
            })
    })?;
    let info = connection.get("pageInfo")?;
    let cursor = |c: &Value| match c {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let after = post_data
        .and_then(|p| serde_json::from_str::<Value>(p).ok())
        .and_then(|req| {
            objects(&req).find_map(|o| o.get("variables").and_then(Value::as_object).cloned())
        })
        .and_then(|vars| {
            ["cursor", "after"]
                .iter()
                .find_map(|k| vars.get(*k).and_then(cursor))
        });
    Some(BotListPage {
        after,
        end_cursor: info.get("endCursor").and_then(cursor),
        has_next: info.get("hasNextPage").and_then(Value::as_bool)?,
    })
}

/// Whether `pages` hold a whole list: from the first page (asked with no cursor), each
/// page's end cursor leads to another page received, up to one with no next page. Pages
/// may have arrived in any order.
pub fn bot_list_complete(pages: &[BotListPage]) -> bool {
    let mut at: Option<&str> = None;
    for _ in 0..=pages.len() {
        let Some(page) = pages.iter().find(|p| p.after.as_deref() == at) else {
            return false;
        };
        if !page.has_next {
            return true;
        }
        match page.end_cursor.as_deref() {
            Some(next) if Some(next) != at => at = Some(next),
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The page's send request of 2025.
    fn send_body() -> String {
        json!({"queryName": "sendMessageMutation", "extensions": {"hash": "abc"},
            "variables": {"chatId": null, "bot": "claude_opus_4_5", "query": "Say hi",
                "source": {"sourceType": "chat_input"}, "clientNonce": "k3oYw9h2Qz1x",
                "sdid": "", "attachments": []}})
        .to_string()
    }

    #[test]
    fn the_query_name_comes_from_the_header_then_the_body() {
        let body = send_body();
        assert_eq!(
            query_name(&headers(&[("Poe-QueryName", "sendMessageMutation")]), None),
            Some("sendMessageMutation".into())
        );
        assert_eq!(
            query_name(
                &headers(&[("content-type", "application/json"), ("poe-queryname", "X")]),
                Some(&body)
            ),
            Some("X".into())
        );
        assert_eq!(
            query_name(&headers(&[("poe-formkey", "f")]), Some(&body)),
            Some("sendMessageMutation".into())
        );
        let graphql = json!({"operationName": "ChatPageQuery", "variables": {}}).to_string();
        assert_eq!(
            query_name(&[], Some(&graphql)),
            Some("ChatPageQuery".into())
        );
        let batch = json!([{"queryName": "First"}, {"queryName": "Second"}]).to_string();
        assert_eq!(query_name(&[], Some(&batch)), Some("First".into()));
        assert_eq!(query_name(&[], Some("a=1&b=2")), None);
        assert_eq!(query_name(&[], None), None);
        assert_eq!(query_name(&headers(&[("poe-queryname", " ")]), None), None);
    }

    #[test]
    fn send_queries_are_recognised_in_their_known_spellings() {
        for name in [
            SEND_QUERY,
            "SendMessageMutation",
            "chatHelpers_sendMessageMutation_Mutation",
            "chatHelpersSendNewChatMessageMutation",
        ] {
            assert!(is_send_query(name), "{name}");
        }
        for name in ["ChatPageQuery", "subscriptionsMutation", "messageCancel"] {
            assert!(!is_send_query(name), "{name}");
        }
    }

    #[test]
    fn the_client_nonce_is_read_from_the_variables() {
        assert_eq!(client_nonce(&send_body()), Some("k3oYw9h2Qz1x".into()));
        let nested = json!({"variables": {"input": {"clientNonce": "n2"}}}).to_string();
        assert_eq!(client_nonce(&nested), Some("n2".into()));
        assert_eq!(
            client_nonce("{\"variables\": {\"clientNonce\": \"\"}}"),
            None
        );
        assert_eq!(client_nonce("not json"), None);
    }

    #[test]
    fn the_send_request_gives_its_nonce_and_its_chat() {
        let send = headers(&[("poe-queryname", "sendMessageMutation")]);
        let body = |chat: Value| {
            json!({"queryName": "sendMessageMutation", "variables": {"bot": "GPT-4o",
                "query": "hi", "chatId": chat, "clientNonce": "n1"}})
            .to_string()
        };
        let read = |chat: Value| send_request(&send, Some(&body(chat)));
        assert_eq!(
            read(json!(3349)),
            Some(SendRequest {
                nonce: Some("n1".into()),
                chat: Some("3349".into()),
            })
        );
        assert_eq!(
            read(json!("chat-7")).and_then(|r| r.chat),
            Some("chat-7".into())
        );
        // A new chat (2025): no chat yet.
        assert_eq!(read(Value::Null).and_then(|r| r.chat), None);
        assert_eq!(read(json!("")).and_then(|r| r.chat), None);
        // Not the send: nothing.
        let other = headers(&[("poe-queryname", "ChatPageQuery")]);
        assert_eq!(send_request(&other, Some(&body(json!(1)))), None);
        // The send, its body unreadable: a send without a nonce or a chat.
        assert_eq!(send_request(&send, Some("{")), Some(SendRequest::default()));
    }

    fn edge(status: &str, message: Value) -> Value {
        json!({"messageEdgeCreate": {"status": status, "statusMessage": message,
            "chat": null, "message": null, "bot": {"handle": "GPT-4o"}}})
    }

    #[test]
    fn a_taken_send_gives_the_chat_and_the_message() {
        let body = json!({"data": {"messageEdgeCreate": {
            "_": "x", "status": "success", "statusMessage": null,
            "chat": {"chatId": 3349, "chatCode": "2fnxsq7l", "id": "Q2hhdDozMzQ5",
                "messagesConnection": {"edges": [{"node": {"messageId": 1, "text": "x"}}]}},
            "message": {"cursor": "c", "node": {"messageId": 457_234_370_765_i64,
                "author": "human", "text": "Say hi"}}}}})
        .to_string();
        assert_eq!(
            parse_send_response(&body),
            Some(SendResult::Taken {
                chats: vec!["3349".into(), "Q2hhdDozMzQ5".into(), "2fnxsq7l".into()],
                chat_code: Some("2fnxsq7l".into()),
                message_id: Some(457_234_370_765),
            })
        );
        // Another nesting, a string chat id under `id`, the message node itself.
        let wrapped = json!([{"data": {"wrapper": {"messageEdgeCreate": {
            "status": "success", "chat": {"id": "3349"}, "message": {"messageId": "12"}}}}}])
        .to_string();
        assert_eq!(
            parse_send_response(&wrapped),
            Some(SendResult::Taken {
                chats: vec!["3349".into()],
                chat_code: None,
                message_id: Some(12),
            })
        );
    }

    #[test]
    fn every_refusal_status_is_told_apart() {
        for (status, refusal) in [
            ("reached_limit", Refusal::ReachedLimit),
            ("rate_limit_exceeded", Refusal::RateLimitExceeded),
            ("concurrent_messages", Refusal::ConcurrentMessages),
            ("too_many_tokens", Refusal::TooManyTokens),
            ("no_access", Refusal::NoAccess),
            (
                "message_points_display_price_mismatch",
                Refusal::Other("message_points_display_price_mismatch".into()),
            ),
        ] {
            let body = json!({"data": edge(status, json!("Message is too long."))}).to_string();
            assert_eq!(
                parse_send_response(&body),
                Some(SendResult::Refused {
                    refusal: refusal.clone(),
                    message: Some("Message is too long.".into())
                }),
                "{status}"
            );
            assert_eq!(refusal.as_str(), status);
            assert_eq!(Refusal::from_status(status), refusal);
        }
        let no_message = json!({"data": edge("no_access", Value::Null)}).to_string();
        assert_eq!(
            parse_send_response(&no_message),
            Some(SendResult::Refused {
                refusal: Refusal::NoAccess,
                message: None
            })
        );
    }

    #[test]
    fn graphql_errors_refuse_only_when_the_body_clearly_says_so() {
        let errors = json!({"data": null, "errors": [{"message": "Server Error",
            "path": ["messageEdgeCreate"]}]})
        .to_string();
        assert_eq!(
            parse_send_response(&errors),
            Some(SendResult::Refused {
                refusal: Refusal::Other("graphql_error".into()),
                message: Some("Server Error".into())
            })
        );
        // A status wins over errors beside it.
        let both = json!({"data": edge("reached_limit", json!("out")),
            "errors": [{"message": "x"}]})
        .to_string();
        assert!(matches!(
            parse_send_response(&both),
            Some(SendResult::Refused {
                refusal: Refusal::ReachedLimit,
                ..
            })
        ));
        for unclear in [
            "<html>502 Bad Gateway</html>",
            "",
            "{}",
            "{\"data\": null}",
            "{\"errors\": []}",
            "{\"data\": {\"messageEdgeCreate\": {\"chat\": null}}}",
            "{\"data\": {\"messageEdgeCreate\": null}}",
        ] {
            assert_eq!(parse_send_response(unclear), None, "{unclear}");
        }
    }

    /// A chat as a `ChatPageQuery`-like response has it: relay edges, newest last.
    fn chat_edges() -> String {
        let node = |id: i64, author: &str, text: &str, state: &str, nonce: Value| {
            json!({"cursor": id.to_string(), "node": {"_": "n", "id": "TWVzc2FnZTox",
                "messageId": id, "author": author, "text": text, "state": state,
                "clientNonce": nonce, "contentType": "text_markdown"}})
        };
        json!({"data": {"chatOfCode": {"chatId": 3349, "messagesConnection": {
        "pageInfo": {"hasPreviousPage": false},
        "edges": [
            node(100, "human", "first question", "complete", json!("old-nonce")),
            node(101, "claude_opus_4_5", "first answer", "complete", Value::Null),
            node(102, "chat_break", "", "complete", Value::Null),
            node(200, "human", "Say hi", "complete", json!("k3oYw9h2Qz1x")),
            node(201, "claude_opus_4_5", "Hi there!", "complete", Value::Null),
        ]}}}})
        .to_string()
    }

    /// The same kind of chat as a flat list in another query, unordered, `author` left out
    /// of the bot message (a `bot` object instead) and ids as strings.
    fn chat_flat() -> String {
        json!({"data": {"node": {"__typename": "Chat", "messages": [
            {"messageId": "201", "text": "Partial", "state": "incomplete",
                "authorUser": null, "bot": {"handle": "GPT-4o", "displayName": "GPT-4o"}},
            {"messageId": "200", "text": "Say hi", "author": "human"},
            {"messageId": "101", "text": "first answer", "author": "capybara"},
            {"messageId": "100", "text": "first question", "author": "human"},
        ]}}})
        .to_string()
    }

    #[test]
    fn the_reply_is_found_by_its_id_or_after_the_prompt() {
        let by_bot = ReplyTarget {
            bot_message_id: Some(201),
            ..ReplyTarget::default()
        };
        let by_human = ReplyTarget {
            human_message_id: Some(200),
            ..ReplyTarget::default()
        };
        let by_nonce = ReplyTarget {
            client_nonce: Some("k3oYw9h2Qz1x".into()),
            ..ReplyTarget::default()
        };
        for target in [&by_bot, &by_human, &by_nonce] {
            let found = find_reply(&chat_edges(), target).expect("the reply");
            assert_eq!(
                found,
                FoundMessage {
                    message_id: 201,
                    text: "Hi there!".into(),
                    state: "complete".into(),
                    author: Some("claude_opus_4_5".into()),
                    bot: None,
                },
                "{target:?}"
            );
            assert_eq!(found.outcome(), Some(Outcome::Complete("Hi there!".into())));
        }
        for target in [&by_bot, &by_human] {
            let found = find_reply(&chat_flat(), target).expect("the reply");
            assert_eq!((found.message_id, found.text.as_str()), (201, "Partial"));
            assert_eq!(found.outcome(), None);
            assert_eq!(found.bot.map(|b| b.handle), Some("GPT-4o".into()));
        }
        // The flat list has no nonces: the prompt cannot be found that way.
        assert_eq!(find_reply(&chat_flat(), &by_nonce), None);
    }

    #[test]
    fn with_ids_in_no_order_the_reply_is_the_first_after_the_prompt_in_the_response() {
        let node = |id: i64, author: &str, text: &str| {
            json!({"node": {"messageId": id, "author": author, "text": text,
                "state": "complete"}})
        };
        let body = json!({"data": {"chatOfCode": {"messagesConnection": {"edges": [
            node(900, "human", "first question"),
            node(40, "beaver", "first answer"),
            node(500, "human", "Say hi"),
            node(70, "beaver", "Hi there!"),
        ]}}}})
        .to_string();
        let after = |id| ReplyTarget {
            human_message_id: Some(id),
            ..ReplyTarget::default()
        };
        let text = |id| find_reply(&body, &after(id)).map(|m| m.text);
        assert_eq!(text(500), Some("Hi there!".into()));
        assert_eq!(text(900), Some("first answer".into()));
    }

    #[test]
    fn no_reply_is_guessed() {
        // Nothing to anchor on.
        assert_eq!(find_reply(&chat_edges(), &ReplyTarget::default()), None);
        // The bot message is not in the response.
        let gone = ReplyTarget {
            bot_message_id: Some(999),
            human_message_id: Some(200),
            client_nonce: None,
        };
        assert_eq!(find_reply(&chat_edges(), &gone), None);
        // No bot message after the prompt yet (chat breaks and humans do not count).
        let early = ReplyTarget {
            human_message_id: Some(201),
            ..ReplyTarget::default()
        };
        assert_eq!(find_reply(&chat_edges(), &early), None);
        let after_old = ReplyTarget {
            human_message_id: Some(101),
            ..ReplyTarget::default()
        };
        assert_eq!(
            find_reply(&chat_edges(), &after_old).map(|m| m.message_id),
            Some(201)
        );
        assert_eq!(find_reply("not json", &after_old), None);
    }

    #[test]
    fn huge_and_deep_bodies_are_searched_in_bounded_work() {
        let many: Vec<Value> = (0..50_000)
            .map(|i| {
                json!({"messageId": i, "author": if i % 2 == 0 { "human" } else { "bot" },
                "text": "t"})
            })
            .collect();
        let body = json!({"data": {"messages": many}}).to_string();
        let target = ReplyTarget {
            human_message_id: Some(40_000),
            ..ReplyTarget::default()
        };
        let started = std::time::Instant::now();
        assert_eq!(
            find_reply(&body, &target).map(|m| m.message_id),
            Some(40_001)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));

        // A message nested deeper than the walk goes is not found; one above it is.
        let nest = |depth: usize, id: i64| {
            format!(
                "{}{{\"messageId\":{id},\"author\":\"bot\",\"text\":\"deep\"}}{}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        let bot = |id| ReplyTarget {
            bot_message_id: Some(id),
            ..ReplyTarget::default()
        };
        assert_eq!(find_reply(&nest(100, 5), &bot(5)), None);
        assert_eq!(
            find_reply(&nest(60, 5), &bot(5)).map(|m| m.message_id),
            Some(5)
        );
        // Past serde_json's own nesting limit the body is simply not read.
        assert_eq!(find_reply(&nest(100_000, 5), &bot(5)), None);
        assert_eq!(bots_in(&"[".repeat(100_000)), vec![]);
    }

    #[test]
    fn bots_are_listed_once_in_order() {
        let body = json!({"data": {"viewer": {"availableBotsConnection": {"edges": [
            {"node": {"handle": "GPT-4o", "displayName": "GPT-4o", "deletionState": "not_deleted"}},
            {"node": {"handle": "Claude-Sonnet-4.5", "displayName": "Claude Sonnet 4.5",
                "picture": {"handle": "not-a-bot"}}},
            {"node": {"handle": "GPT-4o", "displayName": "GPT-4o (again)"}},
            {"node": {"handle": "", "displayName": "empty handle"}},
            {"node": {"handle": 5, "displayName": "numeric handle"}},
            {"node": {"handle": "Web-Search", "displayName": "Web-Search"}},
        ]}}}})
        .to_string();
        let handles: Vec<(String, Option<String>)> = bots_in(&body)
            .into_iter()
            .map(|b| (b.handle, b.display_name))
            .collect();
        assert_eq!(
            handles,
            vec![
                ("GPT-4o".into(), Some("GPT-4o".into())),
                ("Claude-Sonnet-4.5".into(), Some("Claude Sonnet 4.5".into())),
                ("Web-Search".into(), Some("Web-Search".into())),
            ]
        );
        assert_eq!(bots_in("nope"), vec![]);
    }

    #[test]
    fn the_pages_of_a_bot_list_are_told_and_chained() {
        let request = |cursor: Value| {
            json!({"queryName": "ExploreBotsListPaginationQuery",
                "variables": {"categoryName": "defaultCategory", "count": 8, "cursor": cursor}})
            .to_string()
        };
        let page = |end: &str, more: bool, node: Value| {
            json!({"data": {"exploreBotsConnection": {
                "edges": [{"cursor": "1", "node": node}],
                "pageInfo": {"endCursor": end, "hasNextPage": more}}}})
            .to_string()
        };
        let bot = json!({"handle": "GPT-4o", "displayName": "GPT-4o"});
        let first = bot_list_page(Some(&request(Value::Null)), &page("8", true, bot.clone()))
            .expect("first page");
        assert_eq!(
            first,
            BotListPage {
                after: None,
                end_cursor: Some("8".into()),
                has_next: true
            }
        );
        let second = bot_list_page(Some(&request(json!("8"))), &page("16", true, bot.clone()))
            .expect("second page");
        let last = bot_list_page(Some(&request(json!(16))), &page("19", false, bot.clone()))
            .expect("last page");
        assert_eq!(last.after.as_deref(), Some("16"));
        assert!(!last.has_next);
        // Complete only with every page, whatever order they came in.
        assert!(!bot_list_complete(&[]));
        assert!(!bot_list_complete(&[first.clone(), last.clone()]));
        assert!(!bot_list_complete(&[second.clone(), last.clone()]));
        assert!(bot_list_complete(&[
            last.clone(),
            first.clone(),
            second.clone()
        ]));
        let only = BotListPage {
            after: None,
            end_cursor: None,
            has_next: false,
        };
        assert!(bot_list_complete(&[only]));
        // A cursor that leads back to itself does not loop.
        let stuck = BotListPage {
            after: Some("8".into()),
            end_cursor: Some("8".into()),
            has_next: true,
        };
        assert!(!bot_list_complete(&[first.clone(), stuck]));
        // The last page of another list (chats, messages) is no bot list page.
        let chat = json!({"chatCode": "x", "title": "t", "messageId": 1, "text": "hi"});
        assert_eq!(bot_list_page(None, &page("1", false, chat)), None);
        assert_eq!(bot_list_page(None, "not json"), None);
        assert_eq!(
            bot_list_page(None, "{\"pageInfo\": {\"hasNextPage\": false}}"),
            None
        );
        // No request body: the cursor is unknown, the page still counts.
        assert_eq!(
            bot_list_page(None, &page("8", true, bot)).map(|p| p.after),
            Some(None)
        );
    }
}
