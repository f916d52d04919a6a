//! The 2023 shape of update-socket entries (`shared/poe-web.md`, first part): `messageAdded`
//! with `author`, `suggestedReplies` and a `unique_id` of `name:chatId`, plus noise
//! subscriptions. Used in [`super::Mode::Y2023`] only.

use serde_json::json;

use super::StoredMessage;

pub(super) fn inner_message(chat_id: &str, m: &StoredMessage) -> String {
    json!({"message_type": "subscriptionUpdate", "payload": {
        "subscription_name": "messageAdded",
        "unique_id": format!("messageAdded:{chat_id}"),
        "data": {"messageAdded": {
            "id": m.id, "messageId": m.message_id, "author": m.author, "text": m.text,
            "state": m.state, "contentType": "text_markdown", "suggestedReplies": []}}}})
    .to_string()
}

/// A subscription entry readers must ignore.
pub(super) fn inner_noise(name: &str, chat_id: &str, bot_message: &StoredMessage) -> String {
    let data = match name {
        "chatTitleUpdated" => json!({"id": chat_id, "title": "Chat with the double"}),
        "messageStateUpdated" => json!({"id": bot_message.id,
            "messageId": bot_message.message_id, "state": bot_message.state}),
        _ => json!({"id": "Vmlld2VyOjE=", "messagePointsDisplay": {"remaining": 42}}),
    };
    json!({"message_type": "subscriptionUpdate", "payload": {
        "subscription_name": name, "unique_id": format!("{name}:{chat_id}"),
        "data": {name: data}}})
    .to_string()
}

/// The bot's codename, the `author` of its messages (any handle is a bot in 2023 mode).
pub(super) fn codename(bot: &str) -> &'static str {
    match bot {
        "GPT-3.5-Turbo" => "chinchilla",
        "GPT-4" => "beaver",
        _ => "acouchy",
    }
}
