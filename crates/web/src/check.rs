//! "Check connection": whether SpeechSense accepts the API key and knows the connection, in the page's words,
//! and the SpeechSense client every run uploads through.

use std::time::Duration;

use b24sense_speechsense::{
    ClientConfig as SpeechConfig, ConnectionCheck, Credentials as SpeechCredentials,
    SpeechSenseClient,
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

/// «Проверить подключение»: `(ok, message)`.
pub async fn check_connection(
    endpoint: &str,
    api_key: SecretString,
    connection_id: &str,
    lang: Lang,
) -> (bool, String) {
    let client = match speech_client(endpoint, api_key) {
        Ok(c) => c,
        Err(e) => return (false, e),
    };
    match tokio::time::timeout(CHECK_TIMEOUT, client.check_connection(connection_id)).await {
        Ok(Ok(ConnectionCheck::Ok)) => (true, ConnectionCheck::Ok.message(lang)),
        Ok(Ok(refused)) => (false, refused.message(lang)),
        Ok(Err(e)) => (false, i18n::speechsense_unreachable(lang, &e.to_string())),
        Err(_) => (false, Msg::SpeechSenseTimeout.text(lang).to_string()),
    }
}
