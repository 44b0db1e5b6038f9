//! "Check connection": whether SpeechSense accepts the API key, knows the connection and the connection is of the
//! type needed, in the page's words, and the SpeechSense client every run uploads through.

use std::time::Duration;

use b24sense_speechsense::{
    ClientConfig as SpeechConfig, ConnectionCheck, ConnectionKind,
    Credentials as SpeechCredentials, SpeechSenseClient,
};
use secrecy::SecretString;

use crate::i18n::{self, Lang, Msg};

/// How long the check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// A SpeechSense client with an API key; `Err` says why the endpoint is unusable.
pub fn speech_client(endpoint: &str, api_key: SecretString) -> Result<SpeechSenseClient, String> {
    SpeechSenseClient::new(SpeechConfig::new(
        endpoint.to_string(),
        SpeechCredentials::ApiKey(api_key),
    ))
    .map_err(|e| e.to_string())
}

#[cfg(test)]
/// «Проверить подключение» for the call connection (two-channel audio): `(ok, message)`. A chat or one-channel
/// connection is refused with a message naming its type and the type needed.
pub async fn check_connection(
    endpoint: &str,
    api_key: SecretString,
    connection_id: &str,
    lang: Lang,
) -> (bool, String) {
    check_connection_kind(
        endpoint,
        api_key,
        connection_id,
        ConnectionKind::TwoChannelAudio,
        lang,
    )
    .await
}

#[cfg(test)]
/// «Проверить подключение» for a connection that must be of type `needed` (e.g. [`ConnectionKind::Chat`] for the
/// chat connection, [`ConnectionKind::OneChannelAudio`] for the mono route): `(ok, message)`.
pub async fn check_connection_kind(
    endpoint: &str,
    api_key: SecretString,
    connection_id: &str,
    needed: ConnectionKind,
    lang: Lang,
) -> (bool, String) {
    let (ok, message, _) = probe_kind(endpoint, api_key, connection_id, needed, lang).await;
    (ok, message)
}

/// The check and SpeechSense's verdict (`None`: no verdict, SpeechSense was out of reach or too slow).
async fn probe_kind(
    endpoint: &str,
    api_key: SecretString,
    connection_id: &str,
    needed: ConnectionKind,
    lang: Lang,
) -> (bool, String, Option<ConnectionCheck>) {
    let client = match speech_client(endpoint, api_key) {
        Ok(c) => c,
        Err(e) => return (false, e, None),
    };
    let check = client.check_connection_as(connection_id, needed);
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(ConnectionCheck::Ok)) => (
            true,
            ConnectionCheck::Ok.message(lang),
            Some(ConnectionCheck::Ok),
        ),
        Ok(Ok(refused)) => (false, refused.message(lang), Some(refused)),
        Ok(Err(e)) => (
            false,
            i18n::speechsense_unreachable(lang, &e.to_string()),
            None,
        ),
        Err(_) => (false, Msg::SpeechSenseTimeout.text(lang).to_string(), None),
    }
}

/// One field's check: the field a refusal is about (`connection_id`, `chat_connection_id`), SpeechSense's answer in
/// words, and whether the key was refused or SpeechSense out of reach (then the other connection is not checked).
pub struct FieldCheck {
    pub field: &'static str,
    pub ok: bool,
    pub message: String,
    /// The key was refused or SpeechSense could not be reached: nothing about the connection is known.
    pub not_about_connection: bool,
}

/// «Проверить подключение» for the settings: the call connection (two-channel audio) and, when given, the chat
/// connection (a chat one), each refusal naming its field. A connection of the other kind in either field is
/// refused with the field's name, the kind found and the kind needed. The chat connection is checked only when the
/// key was accepted.
pub async fn check_connections(
    endpoint: &str,
    key: SecretString,
    connection_id: &str,
    chat_connection_id: Option<&str>,
    lang: Lang,
) -> Vec<FieldCheck> {
    let mut out = Vec::new();
    let lanes = [
        (
            "connection_id",
            Some(connection_id),
            ConnectionKind::TwoChannelAudio,
        ),
        (
            "chat_connection_id",
            chat_connection_id,
            ConnectionKind::Chat,
        ),
    ];
    for (field, id, needed) in lanes {
        let Some(id) = id else { continue };
        let (ok, message, verdict) = probe_kind(endpoint, key.clone(), id, needed, lang).await;
        let not_about_connection = matches!(verdict, None | Some(ConnectionCheck::BadKey(_)));
        let wrong_kind = matches!(verdict, Some(ConnectionCheck::WrongKind { .. }));
        // With two fields checked every answer says which field it is about; alone, a wrong kind does.
        let message = if chat_connection_id.is_some() && !not_about_connection || wrong_kind {
            format!("{}: {message}", i18n::field_label(lang, field))
        } else {
            message
        };
        out.push(FieldCheck {
            field,
            ok,
            message,
            not_about_connection,
        });
        if not_about_connection {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};

    use super::*;

    /// The page's check over a socket: the call connection must be two-channel audio, the chat one a chat.
    #[tokio::test]
    async fn check_refuses_a_connection_of_the_wrong_type() {
        let emu = SpeechSenseEmulator::start(SpeechSenseConfig::default())
            .await
            .unwrap();
        let config = emu.config();
        let id = |kind| config.connection_id(kind).unwrap();
        let key = || SecretString::from(config.api_keys[0].clone());
        let endpoint = emu.endpoint();
        let (ok, message) = check_connection(
            &endpoint,
            key(),
            id(ConnectionKind::TwoChannelAudio),
            Lang::Ru,
        )
        .await;
        assert!(ok, "{message}");
        assert_eq!(message, "Успешный запрос к SpeechSense");

        let chat = id(ConnectionKind::Chat);
        let (ok, message) = check_connection(&endpoint, key(), chat, Lang::Ru).await;
        assert!(!ok);
        assert!(
            message.starts_with(&format!(
                "Подключение {chat} — для чатов; для звонков нужно подключение для двухканального аудио."
            )),
            "{message}"
        );
        let mono = id(ConnectionKind::OneChannelAudio);
        let (ok, message) = check_connection(&endpoint, key(), mono, Lang::En).await;
        assert!(!ok);
        assert!(
            message.starts_with(&format!(
                "Connection {mono} is for one-channel audio; calls need a connection for two-channel audio."
            )),
            "{message}"
        );

        let (ok, message) =
            check_connection_kind(&endpoint, key(), chat, ConnectionKind::Chat, Lang::En).await;
        assert!(ok, "{message}");
        let (ok, message) = check_connection_kind(
            &endpoint,
            key(),
            id(ConnectionKind::TwoChannelAudio),
            ConnectionKind::Chat,
            Lang::Ru,
        )
        .await;
        assert!(!ok);
        assert!(
            message.contains(
                "для двухканального аудио; для чатов Открытых линий нужно подключение для чатов"
            ),
            "{message}"
        );
        assert_eq!(emu.talk_count(), 0);
    }
}
