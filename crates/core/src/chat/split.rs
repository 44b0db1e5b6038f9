//! Very long histories (`docs/mapping.md`, "Chats": long histories): one `UploadText` request must stay under the
//! size a gRPC server accepts. SpeechSense documents no limit of its own for `UploadText` (the 128 MB it states
//! is for audio `Upload`), so b24sense keeps each request under the 4 MiB every gRPC server accepts by default,
//! less headroom: [`MAX_REQUEST_BYTES`]. A session that fits is sent whole; one that does not is cut, between
//! messages and in order, into consecutive parts that each fit; a single message that alone would not fit has its
//! text cut on a character boundary.

use crate::mapping::{truncate_utf8, TalkFields};

use super::ChatMessage;

/// The largest `UploadTextRequest` b24sense sends: 4 MiB (gRPC's default receive limit) less 64 KiB.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

/// Fixed protobuf overhead allowed per message: the `TextContent.messages` entry, `user_id`, a `Timestamp`
/// and the nested `TextPayload`, each tag with a length of up to five bytes.
const MESSAGE_OVERHEAD: usize = 48;

/// Overhead of the request outside the messages: `connection_id`, `talk_id`, the nested message headers.
const REQUEST_OVERHEAD: usize = 1024;

/// An upper bound of one message's encoded size.
pub fn message_bytes(m: &ChatMessage) -> usize {
    m.user_id.len() + m.text.len() + MESSAGE_OVERHEAD
}

/// An upper bound of the encoded metadata fields (each entry: tag, lengths, key, value).
pub fn fields_bytes(fields: &TalkFields) -> usize {
    fields.iter().map(|(k, v)| k.len() + v.len() + 18).sum()
}

/// Cuts `messages` into consecutive parts whose encoded size, with `fields_cost` bytes of metadata, stays within
/// `max_request`. One part when everything fits. Never reorders or drops a message.
pub fn split_messages(
    messages: Vec<ChatMessage>,
    fields_cost: usize,
    max_request: usize,
) -> Vec<Vec<ChatMessage>> {
    // At least room for one short message, whatever the caller asked.
    let budget = max_request
        .saturating_sub(fields_cost + REQUEST_OVERHEAD)
        .max(MESSAGE_OVERHEAD + 256);
    let mut parts: Vec<Vec<ChatMessage>> = Vec::new();
    let mut current: Vec<ChatMessage> = Vec::new();
    let mut used = 0usize;
    for mut m in messages {
        let room = budget.saturating_sub(m.user_id.len() + MESSAGE_OVERHEAD);
        if m.text.len() > room {
            truncate_utf8(&mut m.text, room);
        }
        let cost = message_bytes(&m);
        if used + cost > budget && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
            used = 0;
        }
        used += cost;
        current.push(m);
    }
    if !current.is_empty() || parts.is_empty() {
        parts.push(current);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn msg(i: usize, text: &str) -> ChatMessage {
        ChatMessage {
            user_id: if i.is_multiple_of(2) {
                "CONTACT_1".into()
            } else {
                "5".into()
            },
            text: text.to_string(),
            timestamp: Utc.timestamp_opt(1_772_000_000 + i as i64, 0).unwrap(),
        }
    }

    #[test]
    fn fits_whole() {
        let ms: Vec<ChatMessage> = (0..200).map(|i| msg(i, "короткое сообщение 😀")).collect();
        let parts = split_messages(ms.clone(), 2_000, MAX_REQUEST_BYTES);
        assert_eq!(parts, vec![ms]);
    }

    #[test]
    fn splits_in_order_within_the_budget() {
        let ms: Vec<ChatMessage> = (0..1_000).map(|i| msg(i, &"я".repeat(500))).collect();
        let max = 64 * 1024;
        let parts = split_messages(ms.clone(), 3_000, max);
        assert!(parts.len() > 1);
        for p in &parts {
            let size: usize = p.iter().map(message_bytes).sum::<usize>() + 3_000 + REQUEST_OVERHEAD;
            assert!(size <= max, "part of {size} bytes over {max}");
        }
        let rejoined: Vec<ChatMessage> = parts.into_iter().flatten().collect();
        assert_eq!(rejoined, ms, "nothing lost, nothing reordered");
    }

    #[test]
    fn one_huge_message_is_cut_on_a_character_boundary() {
        let huge = "ё".repeat(40_000); // 80,000 bytes
        let parts = split_messages(
            vec![msg(1, "до"), msg(2, &huge), msg(3, "после")],
            0,
            16 * 1024,
        );
        let all: Vec<&ChatMessage> = parts.iter().flatten().collect();
        assert_eq!(all.len(), 3);
        let cut = &all[1].text;
        assert!(cut.len() < huge.len() && cut.len() > 10_000);
        assert!(
            cut.chars().all(|c| c == 'ё'),
            "still valid text of whole characters"
        );
        for p in &parts {
            assert!(p.iter().map(message_bytes).sum::<usize>() + REQUEST_OVERHEAD <= 16 * 1024);
        }
    }
}
