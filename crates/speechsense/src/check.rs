//! The result of "check API key + connection id" (a metadata-only upload that creates no talk) and its
//! wording for the settings page.

/// Language of user-facing texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    Ru,
    En,
}

/// What the metadata-only probe found. The `String` is the server's own message (may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionCheck {
    /// Key and connection accepted.
    Ok,
    /// UNAUTHENTICATED: the API key (or IAM token) is wrong, revoked or expired.
    BadKey(String),
    /// PERMISSION_DENIED: the key works, but its service account has no access to this connection.
    NoAccess(String),
    /// NOT_FOUND: the key works, but the connection id does not exist.
    UnknownConnection(String),
}

impl ConnectionCheck {
    pub fn is_ok(&self) -> bool {
        matches!(self, ConnectionCheck::Ok)
    }

    /// The sentence shown to the user.
    pub fn message(&self, lang: Lang) -> String {
        let (text, detail) = match (self, lang) {
            (ConnectionCheck::Ok, Lang::Ru) => return "Успешный запрос к SpeechSense".to_string(),
            (ConnectionCheck::Ok, Lang::En) => return "Successful request to SpeechSense".to_string(),
            (ConnectionCheck::BadKey(d), Lang::Ru) => (
                "SpeechSense не принял API-ключ: ключ неверный, отозван или создан без области действия \
                 yc.speech-sense.use. Проверьте API-ключ; подключение не проверялось.",
                d,
            ),
            (ConnectionCheck::BadKey(d), Lang::En) => (
                "SpeechSense rejected the API key: it is wrong, revoked or lacks the yc.speech-sense.use scope. \
                 Check the API key; the connection was not checked.",
                d,
            ),
            (ConnectionCheck::NoAccess(d), Lang::Ru) => (
                "API-ключ принят, но у его сервисного аккаунта нет доступа к этому подключению. Добавьте сервисный \
                 аккаунт в пространство SpeechSense с ролью speech-sense.data.editor или проверьте ID подключения.",
                d,
            ),
            (ConnectionCheck::NoAccess(d), Lang::En) => (
                "The API key is valid, but its service account has no access to this connection. Add the service \
                 account to the SpeechSense space with the speech-sense.data.editor role, or check the connection ID.",
                d,
            ),
            (ConnectionCheck::UnknownConnection(d), Lang::Ru) => (
                "API-ключ принят, но подключение с таким ID не найдено. Проверьте ID подключения.",
                d,
            ),
            (ConnectionCheck::UnknownConnection(d), Lang::En) => (
                "The API key was accepted, but no connection with this ID exists. Check the connection ID.",
                d,
            ),
        };
        if detail.trim().is_empty() {
            text.to_string()
        } else {
            format!("{text} ({})", detail.trim())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wording() {
        assert_eq!(
            ConnectionCheck::Ok.message(Lang::Ru),
            "Успешный запрос к SpeechSense"
        );
        assert_eq!(
            ConnectionCheck::Ok.message(Lang::En),
            "Successful request to SpeechSense"
        );
        assert!(ConnectionCheck::BadKey(String::new())
            .message(Lang::Ru)
            .contains("API-ключ"));
        assert!(ConnectionCheck::UnknownConnection("x".into())
            .message(Lang::En)
            .ends_with("(x)"));
        assert!(ConnectionCheck::NoAccess(String::new())
            .message(Lang::En)
            .contains("no access"));
    }
}
