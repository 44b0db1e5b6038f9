//! Fail fast, say what to do: before anything is listed or uploaded, one cheap request to each side — the
//! SpeechSense connection check and the portal's `scope` — each bounded by [`LIMIT`]. A refusal names the part that
//! is wrong (API key, connection; the webhook's secret, user or scopes) and how to fix it; no answer names the
//! address, the cause and what to try. Also the `check` command, which is the SpeechSense half on its own.

use std::time::Duration;

use b24sense_bitrix24::{ApiErrorKind, Error as PortalError, WebhookUrl};
use b24sense_speechsense::{
    ClientConfig as SpeechSenseConfig, ConnectionCheck, ConnectionKind,
    Credentials as SpeechSenseCredentials, SpeechSenseClient,
};
use secrecy::SecretString;

use crate::lang::{self, pick};
use crate::{exit, Failure};

/// How long each side has to answer its check (connecting included).
pub const LIMIT: Duration = Duration::from_secs(10);

/// The scopes an export of calls needs (`user` may come as `user_basic`/`user_brief`).
const CALL_SCOPES: [&str; 4] = ["telephony", "crm", "user", "disk"];
/// The scopes an export of Open Lines chats needs (the sessions are CRM activities).
const CHAT_SCOPES: [&str; 2] = ["crm", "imopenlines"];

/// The scopes the webhook needs for what this run exports.
pub fn needed_scopes(calls: bool, chats: bool) -> Vec<&'static str> {
    let mut needed: Vec<&'static str> = Vec::new();
    let lists: [&[&'static str]; 2] = [
        if calls { &CALL_SCOPES } else { &[] },
        if chats { &CHAT_SCOPES } else { &[] },
    ];
    for scope in lists.into_iter().flatten() {
        if !needed.contains(scope) {
            needed.push(scope);
        }
    }
    needed
}

/// The flag that gives a connection of this purpose.
pub fn flag_of(needed: ConnectionKind) -> &'static str {
    match needed {
        ConnectionKind::Chat => "--chat-connection-id",
        _ => "--connection-id",
    }
}

/// A SpeechSense client whose connection check gives up after [`LIMIT`].
pub fn speechsense_client(endpoint: String, api_key: String) -> Result<SpeechSenseClient, Failure> {
    let mut config = SpeechSenseConfig::new(
        endpoint,
        SpeechSenseCredentials::ApiKey(SecretString::from(api_key)),
    );
    config.check_timeout = LIMIT;
    config.connect_timeout = config.connect_timeout.min(LIMIT);
    SpeechSenseClient::new(config)
        .map_err(|e| Failure::new(exit::USAGE, format!("--speechsense-endpoint: {e}")))
}

/// The SpeechSense half: the key and the connection are accepted, and the connection is of the type `needed`
/// (two-channel audio for calls, chat for chats). A refusal about the connection names its flag.
pub async fn speechsense(
    client: &SpeechSenseClient,
    endpoint: &str,
    connection_id: &str,
    needed: ConnectionKind,
) -> Result<(), Failure> {
    let check = tokio::time::timeout(
        LIMIT + Duration::from_secs(2),
        client.check_connection_as(connection_id, needed),
    )
    .await;
    let flag = flag_of(needed);
    match check {
        Ok(Ok(ConnectionCheck::Ok)) => Ok(()),
        Ok(Ok(refused @ ConnectionCheck::WrongKind { found, .. })) => {
            let text = refused.message(lang::current());
            Err(Failure::new(
                exit::REFUSED,
                format!("{flag}: {text} {}", wrong_kind_hint(found, needed)),
            ))
        }
        Ok(Ok(refused @ ConnectionCheck::BadKey(_))) => {
            Err(refusal(refused.message(lang::current())))
        }
        Ok(Ok(refused)) => Err(refusal(format!(
            "{flag}: {}",
            refused.message(lang::current())
        ))),
        Ok(Err(e)) => Err(unreachable_speechsense(endpoint, &e.to_string())),
        Err(_) => Err(unreachable_speechsense(endpoint, "timed out")),
    }
}

/// What to do with a connection of type `found` given where `needed` is.
fn wrong_kind_hint(found: ConnectionKind, needed: ConnectionKind) -> &'static str {
    match (needed, found) {
        (ConnectionKind::Chat, ConnectionKind::OneChannelAudio) => pick(
            "Одноканальное подключение принимает моно-записи звонков (--mono-policy route:ID), а не чаты.",
            "A one-channel connection takes mono call recordings (--mono-policy route:ID), not chats.",
        ),
        (ConnectionKind::Chat, _) => pick(
            "Подключение для звонков передайте в --connection-id, а в --chat-connection-id — подключение для \
             чатов.",
            "Pass a connection for calls as --connection-id, and a chat connection as --chat-connection-id.",
        ),
        (_, ConnectionKind::Chat) => pick(
            "Подключение для чатов передайте в --chat-connection-id, а в --connection-id — подключение для \
             двухканального аудио.",
            "Pass a chat connection as --chat-connection-id, and a two-channel audio connection as \
             --connection-id.",
        ),
        _ => pick(
            "Одноканальное подключение принимает моно-записи: --mono-policy route:ID.",
            "A one-channel connection takes mono recordings: --mono-policy route:ID.",
        ),
    }
}

/// `b24sense check`: the SpeechSense half on its own — each connection given (calls, chats) with the type it
/// needs —, each verdict on its own line; every refusal is printed, the last one ends the command.
pub async fn check_command(a: crate::args::CheckArgs) -> Result<u8, Failure> {
    let connections = a.speechsense.connections()?;
    let endpoint = a.speechsense.speechsense_endpoint;
    let client = speechsense_client(endpoint.clone(), a.speechsense.api_key)?;
    let both = connections.calls.is_some() && connections.chats.is_some();
    let wanted = [
        (connections.calls, ConnectionKind::TwoChannelAudio),
        (connections.chats, ConnectionKind::Chat),
    ];
    let mut refused: Option<Failure> = None;
    for (id, needed) in wanted {
        let Some(id) = id else { continue };
        match speechsense(&client, &endpoint, &id, needed).await {
            Ok(()) if both => out!(
                "{}: {} ({id}, {})",
                flag_of(needed),
                ConnectionCheck::Ok.message(lang::current()),
                crate::emulate::kind_name(needed)
            ),
            Ok(()) => out!("{}", ConnectionCheck::Ok.message(lang::current())),
            // Unreachable, or the key refused: the other connection cannot say more.
            Err(f) if f.code != exit::REFUSED || !f.message.starts_with("--") => {
                if let Some(earlier) = refused.take() {
                    crate::hygiene::print_failure(&earlier);
                }
                return Err(f);
            }
            Err(f) => {
                if let Some(earlier) = refused.replace(f) {
                    crate::hygiene::print_failure(&earlier);
                }
            }
        }
    }
    match refused {
        Some(f) => Err(f),
        None => Ok(exit::OK),
    }
}

/// A refusal's sentence; in Russian, the server's own English words (in trailing parentheses) go on their own line.
fn refusal(message: String) -> Failure {
    let (text, detail) = split_detail(message);
    let f = Failure::new(exit::REFUSED, text);
    match detail {
        Some(d) => f.with_detail(d),
        None => f,
    }
}

fn split_detail(message: String) -> (String, Option<String>) {
    let cyrillic = |s: &str| s.chars().any(|c| ('\u{400}'..='\u{4ff}').contains(&c));
    if !lang::is_ru() || !message.ends_with(')') {
        return (message, None);
    }
    match message.rfind(" (") {
        Some(i) if !cyrillic(&message[i..]) && cyrillic(&message[..i]) => {
            let detail = message[i + 2..message.len() - 1].trim().to_string();
            (message[..i].to_string(), Some(detail))
        }
        _ => (message, None),
    }
}

/// Why a service did not answer, read from the transport's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Refused,
    Connect,
    Timeout,
    Dns,
    Tls,
    Dropped,
    Other,
}

impl Cause {
    fn of(detail: &str) -> Cause {
        let d = detail.to_ascii_lowercase();
        let any = |words: &[&str]| words.iter().any(|w| d.contains(w));
        if any(&["refused"]) {
            Cause::Refused
        } else if any(&["timed out", "timeout", "deadline"]) {
            Cause::Timeout
        } else if any(&["tcp connect", "connect error", "unreachable"]) {
            Cause::Connect
        } else if any(&["dns", "resolve", "lookup", "name or service", "no address"]) {
            Cause::Dns
        } else if any(&["certificate", "tls", "ssl", "handshake"]) {
            Cause::Tls
        } else if any(&["reset", "broken pipe", "closed", "eof"]) {
            Cause::Dropped
        } else {
            Cause::Other
        }
    }

    fn text(self) -> String {
        let secs = LIMIT.as_secs();
        match self {
            Cause::Refused => pick(
                "соединение отклонено — по этому адресу ничего не слушает".into(),
                "connection refused — nothing listens at that address".into(),
            ),
            Cause::Connect => pick(
                "не удалось открыть TCP-соединение — соединение отклонено или узел недоступен"
                    .into(),
                "could not open a TCP connection — refused, or the host is unreachable".into(),
            ),
            Cause::Timeout => pick(
                format!("нет ответа за {secs} с"),
                format!("no answer within {secs} s"),
            ),
            Cause::Dns => pick(
                "имя узла не находится в DNS".into(),
                "the host name does not resolve (DNS)".into(),
            ),
            Cause::Tls => pick(
                "не удалось установить защищённое соединение (TLS)".into(),
                "the secure connection (TLS) failed".into(),
            ),
            Cause::Dropped => pick(
                "соединение оборвалось".into(),
                "the connection was dropped".into(),
            ),
            Cause::Other => pick("сетевая ошибка".into(), "a network error".into()),
        }
    }
}

fn unreachable_speechsense(endpoint: &str, detail: &str) -> Failure {
    let cause = Cause::of(detail).text();
    Failure::new(
        exit::UNAVAILABLE,
        pick(
            format!(
                "Не удалось связаться с SpeechSense по адресу {endpoint}: {cause}. Проверьте \
                 --speechsense-endpoint (по умолчанию {default}) и что с этой машины до него есть доступ \
                 (прокси, межсетевой экран).",
                default = crate::args::DEFAULT_SPEECHSENSE_ENDPOINT
            ),
            format!(
                "Could not reach SpeechSense at {endpoint}: {cause}. Check --speechsense-endpoint (default \
                 {default}) and that this machine can reach it (proxy, firewall).",
                default = crate::args::DEFAULT_SPEECHSENSE_ENDPOINT
            ),
        ),
    )
    .with_detail(detail)
}

/// The portal half: the portal answers, accepts the webhook, and the webhook has the scopes `needed`
/// ([`needed_scopes`]).
pub async fn portal(webhook: &WebhookUrl, needed: &[&'static str]) -> Result<(), Failure> {
    let probe = tokio::time::timeout(LIMIT + Duration::from_secs(2), webhook.probe(LIMIT)).await;
    match probe {
        Err(_) => Err(unreachable_portal(webhook, "timed out")),
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(scopes))) => match missing(needed, &scopes) {
            m if m.is_empty() => Ok(()),
            m => Err(missing_scopes(webhook, &m.join(", "), needed)),
        },
        Ok(Err(PortalError::Transport { message, .. })) => {
            Err(unreachable_portal(webhook, &message))
        }
        Ok(Err(e)) => Err(portal_refusal(webhook, e, needed)),
    }
}

/// The scopes of `needed` that `granted` lacks.
fn missing(needed: &[&'static str], granted: &[String]) -> Vec<&'static str> {
    needed
        .iter()
        .copied()
        .filter(|need| {
            !granted
                .iter()
                .any(|s| s == need || (*need == "user" && s.starts_with("user")))
        })
        .collect()
}

fn unreachable_portal(webhook: &WebhookUrl, detail: &str) -> Failure {
    let cause = Cause::of(detail).text();
    Failure::new(
        exit::UNAVAILABLE,
        pick(
            format!(
                "Не удалось связаться с порталом Bitrix24 по адресу {webhook}: {cause}. Проверьте адрес портала в \
                 --bitrix24-webhook, что портал работает и что с этой машины до него есть доступ (прокси, \
                 межсетевой экран, VPN)."
            ),
            format!(
                "Could not reach the Bitrix24 portal at {webhook}: {cause}. Check the portal address in \
                 --bitrix24-webhook, that the portal is up, and that this machine can reach it (proxy, firewall, \
                 VPN)."
            ),
        ),
    )
    .with_detail(detail)
}

/// How to make a new webhook with the scopes `needed`.
fn new_webhook(needed: &[&str]) -> String {
    let scopes = needed.join(", ");
    pick(
        format!(
            "Новый вебхук: в Bitrix24 под администратором откройте Разработчикам → Другое → Входящий вебхук, \
             отметьте права {scopes}, сохраните и передайте его адрес в --bitrix24-webhook."
        ),
        format!(
            "To make a new one: in Bitrix24, as an administrator, open Developer resources → Other → Incoming \
             webhook, tick the scopes {scopes}, save, and pass its URL in --bitrix24-webhook."
        ),
    )
}

fn missing_scopes(webhook: &WebhookUrl, missing: &str, needed: &[&str]) -> Failure {
    let how = new_webhook(needed);
    let (what_ru, what_en) = match (
        needed.contains(&"telephony"),
        needed.contains(&"imopenlines"),
    ) {
        (true, true) => ("звонки и чаты", "the calls and chats"),
        (false, true) => ("чаты", "the chats"),
        _ => ("звонки", "the calls"),
    };
    Failure::new(
        exit::REFUSED,
        pick(
            format!(
                "У вебхука {webhook} нет прав {missing}: без них {what_ru} не прочитать. Добавьте эти права вебхуку \
                 (Разработчикам → Интеграции → вебхук → Редактировать) или сделайте новый. {how}"
            ),
            format!(
                "The webhook {webhook} lacks the scopes {missing}: without them {what_en} cannot be read. Add them \
                 to the webhook (Developer resources → Integrations → the webhook → Edit) or make a new one. {how}"
            ),
        ),
    )
}

fn portal_refusal(webhook: &WebhookUrl, e: PortalError, needed: &[&str]) -> Failure {
    let uid = webhook.user_id();
    let how = new_webhook(needed);
    let detail = e.to_string();
    let (code, ru, en) = match &e {
        PortalError::Api(api) => match api.kind() {
            ApiErrorKind::InvalidCredentials => (
                exit::REFUSED,
                format!(
                    "Bitrix24 не принял вебхук {webhook}: его секретный код (часть адреса после /rest/{uid}/) не \
                     подходит ни к одному вебхуку пользователя {uid} — код скопирован с ошибкой, вебхук удалён или \
                     создан другим пользователем. {how}"
                ),
                format!(
                    "Bitrix24 refused the webhook {webhook}: its secret (the part after /rest/{uid}/) matches no \
                     webhook of user {uid} — the secret was copied wrong, the webhook was deleted, or it belongs to \
                     another user. {how}"
                ),
            ),
            ApiErrorKind::NoAuthFound | ApiErrorKind::InvalidToken => (
                exit::REFUSED,
                format!(
                    "Bitrix24 не нашёл в адресе {webhook} действующих учётных данных: ID пользователя или секретный \
                     код вебхука искажены. Скопируйте адрес вебхука из Bitrix24 заново. {how}"
                ),
                format!(
                    "Bitrix24 found no valid credentials in {webhook}: the webhook's user ID or secret is garbled. \
                     Copy the webhook's URL from Bitrix24 again. {how}"
                ),
            ),
            ApiErrorKind::InsufficientScope => {
                return missing_scopes(webhook, &needed.join(", "), needed).with_detail(detail)
            }
            ApiErrorKind::AuthorizationError | ApiErrorKind::UserAccessError => (
                exit::REFUSED,
                format!(
                    "Bitrix24 не пускает пользователя {uid}, от имени которого сделан вебхук {webhook}: он уволен, \
                     отключён или ему запрещён REST. Сделайте вебхук от имени действующего администратора. {how}"
                ),
                format!(
                    "Bitrix24 does not let in user {uid}, whose webhook {webhook} this is: the user is dismissed, \
                     deactivated or not allowed to use REST. Make the webhook as an active administrator. {how}"
                ),
            ),
            ApiErrorKind::AccessDenied
                if api.description.to_ascii_lowercase().contains("commercial") =>
            {
                (
                    exit::REFUSED,
                    format!(
                        "Портал {webhook} не даёт доступ к REST API: на бесплатном тарифе он закрыт. Нужен \
                         коммерческий тариф Bitrix24."
                    ),
                    format!(
                        "The portal {webhook} does not allow REST API access: it is closed on the free plan. A \
                         commercial Bitrix24 plan is needed."
                    ),
                )
            }
            ApiErrorKind::AccessDenied => (
                exit::REFUSED,
                format!(
                    "Bitrix24 отказал в доступе пользователю {uid}, от имени которого сделан вебхук {webhook}. \
                     Сделайте вебхук от имени администратора портала. {how}"
                ),
                format!(
                    "Bitrix24 denied access to user {uid}, whose webhook {webhook} this is. Make the webhook as a \
                     portal administrator. {how}"
                ),
            ),
            ApiErrorKind::InvalidRequest => (
                exit::REFUSED,
                format!(
                    "Портал {webhook} требует https: укажите в --bitrix24-webhook адрес, начинающийся с https://."
                ),
                format!("The portal {webhook} requires https: give --bitrix24-webhook an https:// URL."),
            ),
            ApiErrorKind::PortalDeleted => (
                exit::REFUSED,
                format!("Портал {webhook} удалён или закрыт. Проверьте адрес портала в --bitrix24-webhook."),
                format!(
                    "The portal {webhook} is deleted or closed. Check the portal address in --bitrix24-webhook."
                ),
            ),
            ApiErrorKind::MethodNotFound | ApiErrorKind::NotFound => (
                exit::UNAVAILABLE,
                format!(
                    "Адрес {webhook} отвечает, но не как REST API Bitrix24. Проверьте адрес портала в \
                     --bitrix24-webhook."
                ),
                format!(
                    "{webhook} answers, but not as the Bitrix24 REST API. Check the portal address in \
                     --bitrix24-webhook."
                ),
            ),
            kind if kind.is_transient()
                || matches!(
                    kind,
                    ApiErrorKind::QueryLimitExceeded | ApiErrorKind::OverloadLimit
                ) =>
            {
                (
                    exit::UNAVAILABLE,
                    format!(
                        "Портал {webhook} сейчас перегружен или ограничил запросы. Попробуйте через несколько минут."
                    ),
                    format!(
                        "The portal {webhook} is overloaded or limiting requests right now. Try again in a few \
                         minutes."
                    ),
                )
            }
            _ => (
                exit::REFUSED,
                format!("Bitrix24 отказал вебхуку {webhook}. {how}"),
                format!("Bitrix24 refused the webhook {webhook}. {how}"),
            ),
        },
        PortalError::Http { status, .. } => (
            exit::UNAVAILABLE,
            format!(
                "Адрес {webhook} отвечает (HTTP {status}), но не как REST API Bitrix24. Проверьте адрес портала в \
                 --bitrix24-webhook."
            ),
            format!(
                "{webhook} answers (HTTP {status}), but not as the Bitrix24 REST API. Check the portal address in \
                 --bitrix24-webhook."
            ),
        ),
        _ => (
            exit::UNAVAILABLE,
            format!(
                "Портал {webhook} ответил непонятно. Проверьте адрес портала в --bitrix24-webhook и попробуйте \
                 снова."
            ),
            format!(
                "The portal {webhook} gave an answer that makes no sense. Check the portal address in \
                 --bitrix24-webhook and try again."
            ),
        ),
    };
    Failure::new(code, pick(ru, en)).with_detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_scopes_are_named() {
        let granted = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let calls = needed_scopes(true, false);
        assert!(missing(
            &calls,
            &granted(&["crm", "disk", "im", "telephony", "user"])
        )
        .is_empty());
        assert!(missing(
            &calls,
            &granted(&["crm", "disk", "telephony", "user_brief"])
        )
        .is_empty());
        assert_eq!(
            missing(&calls, &granted(&["crm", "user"])),
            ["telephony", "disk"]
        );
        assert_eq!(missing(&calls, &[]), CALL_SCOPES);
        let chats = needed_scopes(false, true);
        assert_eq!(chats, CHAT_SCOPES);
        assert_eq!(missing(&chats, &granted(&["crm"])), ["imopenlines"]);
        assert_eq!(
            needed_scopes(true, true),
            ["telephony", "crm", "user", "disk", "imopenlines"]
        );
        assert_eq!(
            missing(&needed_scopes(true, true), &granted(&CALL_SCOPES)),
            ["imopenlines"]
        );
    }

    #[test]
    fn causes_are_read_from_transport_words() {
        assert_eq!(
            Cause::of("SpeechSense request failed (Unavailable): tcp connect error"),
            Cause::Connect
        );
        assert_eq!(
            Cause::of(
                "error sending request: tcp connect error: Connection refused (os error 111)"
            ),
            Cause::Refused
        );
        assert_eq!(Cause::of("operation timed out"), Cause::Timeout);
        assert_eq!(
            Cause::of("dns error: failed to lookup address information"),
            Cause::Dns
        );
        assert_eq!(Cause::of("invalid peer certificate"), Cause::Tls);
        assert_eq!(Cause::of("something else"), Cause::Other);
    }
}
