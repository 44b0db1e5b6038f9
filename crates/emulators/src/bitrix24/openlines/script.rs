//! A session's messages, generated when asked (deterministic from the session's seed, so a 10,000-session portal
//! keeps no message text in memory): the line's system notices (sender 0), the client's messages, a bot's, the
//! operators' with BB-code, transfers, attachments, emoji, very long texts and histories, and the closing notice.

use chrono::{DateTime, Duration as ChronoDuration, FixedOffset};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::gen::{SessionRec, BOTS, LINES};
use super::OpenLinesConfig;
use crate::bitrix24::data::UserRec;

/// Who wrote a generated message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    System,
    Client,
    Operator(u64),
    Bot(u64),
}

impl Author {
    /// `senderid`: 0 for the line itself.
    pub fn sender_id(self, rec: &SessionRec) -> u64 {
        match self {
            Author::System => 0,
            Author::Client => rec.client_user,
            Author::Operator(id) | Author::Bot(id) => id,
        }
    }
}

/// A file attached to a message.
#[derive(Debug, Clone)]
pub struct FileRec {
    pub id: u64,
    pub name: &'static str,
    pub kind: &'static str,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct GenMsg {
    pub id: u64,
    pub author: Author,
    pub at: DateTime<FixedOffset>,
    /// BB-code, as the messenger stores it.
    pub text: String,
    pub file: Option<FileRec>,
}

const CLIENT: [&str; 8] = [
    "Здравствуйте! Хочу уточнить статус заказа",
    "Сколько стоит доставка в Казань?",
    "Спасибо, жду 🙏",
    "А можно оплатить картой?",
    "Номер заказа 45-117",
    "Не приходит код подтверждения 😕",
    "Отлично, договорились 👍🏽",
    "Когда товар будет в наличии?",
];
const OPERATOR: [&str; 6] = [
    "[b]Сейчас проверю[/b], минуту",
    "Доставка занимает 2–3 дня.[br]Стоимость — 350 ₽",
    "Подробности на [URL=https://example.ru/delivery]странице доставки[/URL]",
    "Да, картой можно 💳",
    "Заказ передан в службу доставки [i]сегодня[/i]",
    "Уточню у коллег и вернусь с ответом",
];
const BOT: [&str; 3] = [
    "Здравствуйте! Я [b]виртуальный помощник[/b]. Чем могу помочь?",
    "Статус заказа можно посмотреть в [URL=https://example.ru/orders]личном кабинете[/URL]",
    "Передаю ваш вопрос дальше 🤖",
];
const FILES: [(&str, &str); 3] = [
    ("фото_заказа.jpg", "image"),
    ("договор №17.pdf", "file"),
    ("голосовое.ogg", "audio"),
];

fn name_of(users: &[UserRec], id: u64) -> String {
    usize::try_from(id)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| users.get(i))
        .map_or_else(
            || format!("Сотрудник {id}"),
            |u| format!("{} {}", u.name, u.last_name),
        )
}

pub fn bot_name(id: u64) -> &'static str {
    BOTS.iter()
        .find(|(b, _)| *b == id)
        .map_or("Бот", |(_, n)| n)
}

/// A text of about `bytes` bytes (cut on a character boundary), Cyrillic and emoji.
fn long_text(bytes: usize) -> String {
    let unit = "Подробно опишу проблему: заказ пришёл неполным, коробка помята 📦, чек не вложен. ";
    let mut s = String::with_capacity(bytes + unit.len());
    while s.len() < bytes {
        s.push_str(unit);
    }
    let mut end = bytes.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// The whole conversation of a session, the closing notice last (left out while the session is open).
pub fn script(rec: &SessionRec, ol: &OpenLinesConfig, users: &[UserRec]) -> Vec<GenMsg> {
    let mut rng = StdRng::seed_from_u64(rec.seed);
    let mut out: Vec<GenMsg> = Vec::new();
    let mut at = rec.start;
    let mut push = |author: Author, text: String, file: Option<FileRec>, rng: &mut StdRng| {
        at += ChronoDuration::seconds(rng.random_range(5..90));
        out.push(GenMsg {
            id: rec.first_message_id + out.len() as u64,
            author,
            at,
            text,
            file,
        });
    };
    let pick = |list: &[&str], rng: &mut StdRng| list[rng.random_range(0..list.len())].to_string();
    let line_name = LINES[rec.line].2;
    push(
        Author::System,
        format!("Обращение поступило в Открытую линию «{line_name}»"),
        None,
        &mut rng,
    );
    let op0 = rec.operators.first().copied().unwrap_or(1);
    let s = rec.shape;
    if s.unanswered {
        push(
            Author::Operator(op0),
            "[b]Здравствуйте![/b] Вы оставляли заявку на сайте — удобно обсудить?".into(),
            None,
            &mut rng,
        );
        push(
            Author::Operator(op0),
            "Напишите, когда будет удобно 🙂".into(),
            None,
            &mut rng,
        );
    } else {
        push(Author::Client, pick(&CLIENT, &mut rng), None, &mut rng);
        if let Some(bot) = rec.bot {
            push(Author::Bot(bot), BOT[0].into(), None, &mut rng);
            if s.bot_only {
                push(Author::Client, pick(&CLIENT, &mut rng), None, &mut rng);
                push(Author::Bot(bot), BOT[1].into(), None, &mut rng);
            } else {
                push(Author::Bot(bot), BOT[2].into(), None, &mut rng);
                push(
                    Author::System,
                    format!("Диалог передан оператору {}", name_of(users, op0)),
                    None,
                    &mut rng,
                );
            }
        } else {
            push(
                Author::System,
                format!("Диалог принял оператор {}", name_of(users, op0)),
                None,
                &mut rng,
            );
        }
        if !s.bot_only {
            let greeting = format!(
                "[b]Здравствуйте, [USER={}]{}[/USER]![/b] Меня зовут {}. Чем помочь?",
                rec.client_user,
                rec.client_name,
                name_of(users, op0)
            );
            push(Author::Operator(op0), greeting, None, &mut rng);
            let n = if s.long_history {
                (ol.long_history_messages / 2).max(2) as u32
            } else {
                s.exchanges.max(2)
            };
            let mut current = 0usize;
            for k in 0..n {
                let who = (k as usize * rec.operators.len()) / n as usize;
                if who != current {
                    current = who;
                    let name = name_of(users, rec.operators[who]);
                    push(
                        Author::System,
                        format!("Диалог передан оператору {name}"),
                        None,
                        &mut rng,
                    );
                }
                let op = rec.operators.get(current).copied().unwrap_or(op0);
                if s.long_text && k == 1 {
                    push(
                        Author::Client,
                        long_text(ol.long_text_bytes),
                        None,
                        &mut rng,
                    );
                } else if s.attachment && k == n / 2 {
                    let (name, kind) = FILES[rng.random_range(0..FILES.len())];
                    let file = FileRec {
                        id: 70_000 + rec.session_id * 4,
                        name,
                        kind,
                        size: rng.random_range(10_000..2_000_000),
                    };
                    push(Author::Client, String::new(), Some(file), &mut rng);
                } else if s.long_history {
                    push(
                        Author::Client,
                        format!("{} (#{k})", pick(&CLIENT, &mut rng)),
                        None,
                        &mut rng,
                    );
                } else {
                    push(Author::Client, pick(&CLIENT, &mut rng), None, &mut rng);
                }
                push(
                    Author::Operator(op),
                    pick(&OPERATOR, &mut rng),
                    None,
                    &mut rng,
                );
            }
            let last = rec.operators.last().copied().unwrap_or(op0);
            push(
                Author::Operator(last),
                "Спасибо за обращение! Хорошего дня 🌷".into(),
                None,
                &mut rng,
            );
        }
    }
    push(
        Author::System,
        "Оператор завершил диалог".into(),
        None,
        &mut rng,
    );
    out
}
