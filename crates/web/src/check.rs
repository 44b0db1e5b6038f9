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

/// «Проверить подключение» for a connection that must be of type `needed` (e.g. [`ConnectionKind::Chat`] for the
/// chat connection, [`ConnectionKind::OneChannelAudio`] for the mono route): `(ok, message)`.
pub async fn check_connection_kind(
    endpoint: &str,
    api_key: SecretString,
    connection_id: &str,
    needed: ConnectionKind,
    lang: Lang,
) -> (bool, String) {
    let client = match speech_client(endpoint, api_key) {
        Ok(c) => c,
        Err(e) => return (false, e),
    };
    let check = client.check_connection_as(connection_id, needed);
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(ConnectionCheck::Ok)) => (true, ConnectionCheck::Ok.message(lang)),
        Ok(Ok(refused)) => (false, refused.message(lang)),
        Ok(Err(e)) => (false, i18n::speechsense_unreachable(lang, &e.to_string())),
        Err(_) => (false, Msg::SpeechSenseTimeout.text(lang).to_string()),
    }
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
