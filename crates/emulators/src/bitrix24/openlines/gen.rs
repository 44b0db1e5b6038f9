//! Generates the Open Lines sessions, deterministic from the seed, beside the calls but from a generator of
//! their own (so the call history is the same with or without chats). The first sessions cover the cases an
//! exporter must handle ([`Shape`]); the rest draw their features at random.

use chrono::{DateTime, Duration as ChronoDuration, FixedOffset};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::script;
use super::OpenLinesConfig;
use crate::bitrix24::config::PortalConfig;
use crate::bitrix24::data::{CrmKind, UserRec};

/// Open Lines of the portal: config id, connector, line name.
pub const LINES: [(u32, &str, &str); 4] = [
    (1, "livechat", "Онлайн-чат сайта"),
    (2, "telegrambot", "Telegram"),
    (3, "whatsappbyedna", "WhatsApp"),
    (4, "vkgroup", "ВКонтакте"),
];

/// Chatbots answering in the lines: user id, name.
pub const BOTS: [(u64, &str); 2] = [(9_001, "Бот-помощник"), (9_002, "Чат-бот «Заказы»")];

/// The first message ID: the first session's IDs cross 9999 → 10000, so the history's object keys (sorted as
/// text) are not in message order.
const FIRST_MESSAGE_ID: u64 = 9_990;

/// What a session's conversation looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// The operator wrote first and the client never answered (no client message).
    pub unanswered: bool,
    /// A bot greets the client before the operators.
    pub bot: bool,
    /// Only the bot answers (no operator message).
    pub bot_only: bool,
    pub attachment: bool,
    /// One client message of `long_text_bytes`.
    pub long_text: bool,
    /// `long_history_messages` exchanges instead of a few.
    pub long_history: bool,
    /// Message exchanges in the body.
    pub exchanges: u32,
}

/// One session (and its CRM activity).
#[derive(Debug, Clone)]
pub struct SessionRec {
    pub activity_id: u64,
    pub session_id: u64,
    pub chat_id: u64,
    /// Index into [`LINES`].
    pub line: usize,
    /// The connector user (the client) and their name.
    pub client_user: u64,
    pub client_name: String,
    /// `USER_CODE` = `<connector>|<line>|<connector chat>|<connector user>`.
    pub user_code: String,
    /// Operators in the order they took the session (a transfer adds one); the last is `RESPONSIBLE_ID`.
    pub operators: Vec<u64>,
    pub bot: Option<u64>,
    /// The activity's owner.
    pub owner: (CrmKind, u64),
    /// The owner was deleted from the CRM: lookups of it find nothing.
    pub owner_deleted: bool,
    pub start: DateTime<FixedOffset>,
    /// Generated still open (`COMPLETED=N`) unless closed later by the test hook.
    pub open: bool,
    /// When the conversation ended (its closing notice).
    pub end: DateTime<FixedOffset>,
    pub shape: Shape,
    /// Message IDs `first_message_id..first_message_id + messages`, the closing notice last.
    pub first_message_id: u64,
    pub messages: u32,
    pub seed: u64,
}

impl SessionRec {
    pub fn line_id(&self) -> u32 {
        LINES[self.line].0
    }

    pub fn connector(&self) -> &'static str {
        LINES[self.line].1
    }

    pub fn responsible(&self) -> u64 {
        match (self.operators.last(), self.bot) {
            (Some(op), _) if !self.shape.bot_only => *op,
            (_, Some(bot)) => bot,
            (Some(op), None) => *op,
            (None, None) => 1,
        }
    }
}

const FIRST_NAMES: [&str; 8] = [
    "Гость",
    "Алексей",
    "Мария",
    "Дмитрий",
    "Ольга",
    "Сергей",
    "Наталья",
    "Игорь",
];

/// Generates `cfg.open_lines.sessions` sessions over the portal's window.
pub fn generate(cfg: &PortalConfig, users: &[UserRec], crm_counts: [usize; 4]) -> Vec<SessionRec> {
    let ol: &OpenLinesConfig = &cfg.open_lines;
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x0C4A_7500_0000_0017);
    let operators: Vec<u64> = users.iter().filter(|u| u.active).map(|u| u.id).collect();
    let operators = if operators.is_empty() {
        vec![1]
    } else {
        operators
    };
    let window = i64::from(cfg.days.max(1)) * 86_400;
    let mut starts: Vec<i64> = (0..ol.sessions)
        .map(|_| rng.random_range(0..window))
        .collect();
    starts.sort_unstable();
    let [contacts, companies, leads, deals] = crm_counts;
    let mut out: Vec<SessionRec> = Vec::with_capacity(ol.sessions);
    let (mut activity_id, mut session_id, mut message_id) = (30_000u64, 500u64, FIRST_MESSAGE_ID);
    for (i, off) in starts.into_iter().enumerate() {
        activity_id += 1 + rng.random_range(0..2);
        session_id += 1 + rng.random_range(0..3);
        let mut shape = Shape {
            bot: rng.random_bool(0.3),
            attachment: rng.random_bool(0.15),
            exchanges: rng
                .random_range(ol.exchanges.0.max(1)..ol.exchanges.1.max(ol.exchanges.0.max(1) + 1)),
            ..Shape::default()
        };
        let mut transfers = usize::from(rng.random_bool(0.15));
        let mut open = rng.random_bool(ol.open_share.clamp(0.0, 1.0));
        let mut deleted = rng.random_bool(0.05);
        // The catalogue: the first sessions show every case whatever the seed.
        match i {
            0 => {
                shape.bot = true;
                shape.attachment = true;
                transfers = 1;
                open = false;
            }
            1 => (shape.long_text, open) = (true, false),
            2 => open = true,
            3 => (shape.unanswered, shape.bot, open) = (true, false, false),
            4 => (deleted, open) = (true, false),
            5 => (shape.long_history, open) = (true, false),
            6 => (shape.bot, shape.bot_only, open) = (true, true, false),
            7 => (transfers, open) = (2, false),
            _ => {}
        }
        if shape.unanswered {
            shape.bot = false;
        }
        if i < 8 {
            deleted = i == 4;
        }
        // Session 8 continues session 0's chat (a chat holds many sessions).
        let same_chat = (i == 8).then(|| out[0].clone());
        let line = same_chat
            .as_ref()
            .map_or(rng.random_range(0..LINES.len()), |s| s.line);
        let client_user = same_chat
            .as_ref()
            .map_or(100_000 + i as u64, |s| s.client_user);
        let chat_id = same_chat.as_ref().map_or(5_000 + i as u64, |s| s.chat_id);
        let client_name = same_chat.as_ref().map_or_else(
            || {
                format!(
                    "{} {}",
                    FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())],
                    1 + i
                )
            },
            |s| s.client_name.clone(),
        );
        let user_code = same_chat.as_ref().map_or_else(
            || {
                let (line_id, connector, _) = LINES[line];
                format!(
                    "{connector}|{line_id}|{}|{}",
                    700_000 + i * 13,
                    900_000 + i * 7
                )
            },
            |s| s.user_code.clone(),
        );
        let mut ops = vec![operators[rng.random_range(0..operators.len())]];
        for _ in 0..transfers {
            // Transferred to someone else (when there is someone else).
            let last = operators
                .iter()
                .position(|o| Some(o) == ops.last())
                .unwrap_or(0);
            let step = 1 + rng.random_range(0..operators.len().saturating_sub(1).max(1));
            ops.push(operators[(last + step) % operators.len()]);
        }
        let owner = match rng.random_range(0..100) {
            0..=49 => (CrmKind::Contact, contacts),
            50..=84 => (CrmKind::Lead, leads),
            85..=94 => (CrmKind::Company, companies),
            _ => (CrmKind::Deal, deals),
        };
        let (kind, count) = if owner.1 == 0 {
            (CrmKind::Contact, contacts.max(1))
        } else {
            owner
        };
        let owner_id = if deleted {
            count as u64 + 1_000 + i as u64
        } else {
            rng.random_range(1..=count.max(1) as u64)
        };
        let bot = shape.bot.then(|| BOTS[rng.random_range(0..BOTS.len())].0);
        let mut rec = SessionRec {
            activity_id,
            session_id,
            chat_id,
            line,
            client_user,
            client_name,
            user_code,
            operators: ops,
            bot,
            owner: (kind, owner_id),
            owner_deleted: deleted,
            start: (cfg.start + ChronoDuration::seconds(off)).with_timezone(&cfg.utc_offset),
            open,
            end: cfg.start,
            shape,
            first_message_id: message_id,
            messages: 0,
            seed: cfg.seed ^ session_id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        let messages = script::script(&rec, ol, users);
        rec.messages = messages.len() as u32;
        rec.end = messages.last().map_or(rec.start, |m| m.at);
        message_id += u64::from(rec.messages) + rng.random_range(0..3);
        out.push(rec);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitrix24::data::generate as generate_portal;

    fn portal(sessions: usize) -> PortalConfig {
        PortalConfig {
            calls: 0,
            open_lines: OpenLinesConfig {
                sessions,
                exchanges: (5, 10),
                ..OpenLinesConfig::default()
            },
            ..PortalConfig::default()
        }
    }

    /// A bench portal of 10,000 sessions: generated in well under a second of a release build (messages are not
    /// kept, only counted), the same every time, in keyset order, about 20 messages each.
    #[test]
    fn ten_thousand_sessions_generate_quickly_and_the_same_every_time() {
        let cfg = portal(10_000);
        let started = std::time::Instant::now();
        let a = generate_portal(&cfg).open_lines;
        let took = started.elapsed();
        let b = generate_portal(&cfg).open_lines;
        assert_eq!(a.sessions.len(), 10_000);
        // Debug builds are ~10× slower than the bench's release build; this bound only catches a blow-up.
        assert!(took < std::time::Duration::from_secs(20), "{took:?}");
        let key = |s: &SessionRec| {
            (
                s.activity_id,
                s.session_id,
                s.messages,
                s.start,
                s.owner,
                s.open,
            )
        };
        assert!(a.sessions.iter().map(key).eq(b.sessions.iter().map(key)));
        assert!(a
            .sessions
            .windows(2)
            .all(|w| w[0].activity_id < w[1].activity_id && w[0].session_id < w[1].session_id));
        let ordinary = &a.sessions[8..];
        let mean =
            ordinary.iter().map(|s| f64::from(s.messages)).sum::<f64>() / ordinary.len() as f64;
        assert!((18.0..=23.0).contains(&mean), "{mean} messages per session");
    }
}
