//! The result of "check API key + connection id" (a metadata-only upload that creates no talk), the connection
//! types it tells apart, and its wording for the settings page and the CLI.

/// Language of user-facing texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    Ru,
    En,
}

/// The type of a SpeechSense connection, chosen when it is created in SpeechSense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionKind {
    /// Two-channel audio (operator and client on separate channels): what call recordings go to.
    TwoChannelAudio,
    /// One-channel (mono) audio.
    OneChannelAudio,
    /// Chats (`UploadText`): what Open Lines dialogs go to.
    Chat,
}

impl ConnectionKind {
    pub const ALL: [ConnectionKind; 3] = [
        ConnectionKind::TwoChannelAudio,
        ConnectionKind::OneChannelAudio,
        ConnectionKind::Chat,
    ];

    pub fn is_audio(self) -> bool {
        !matches!(self, ConnectionKind::Chat)
    }

    /// How a refusal names the type: the emulator's answers say `connection <id> is a <phrase> connection`
    /// (see [`ConnectionKind::refusal_note`]), and the connection check reads the type back from that sentence.
    pub fn phrase(self) -> &'static str {
        match self {
            ConnectionKind::TwoChannelAudio => "two-channel audio",
            ConnectionKind::OneChannelAudio => "one-channel audio",
            ConnectionKind::Chat => "chat",
        }
    }

    /// The sentence that names a connection's type in a refusal: `connection <id> is a <phrase> connection`.
    pub fn refusal_note(self, connection_id: &str) -> String {
        format!(
            "connection {connection_id} is a {} connection",
            self.phrase()
        )
    }

    /// The connection type a refusal names, if it names exactly one (see [`ConnectionKind::refusal_note`]).
    pub fn named_in(message: &str) -> Option<ConnectionKind> {
        let lower = message.to_lowercase();
        let mut named = ConnectionKind::ALL
            .into_iter()
            .filter(|k| lower.contains(&format!(" is a {} connection", k.phrase())));
        match (named.next(), named.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }

    /// "for chats" — what a connection of this type is for.
    fn is_for(self, lang: Lang) -> &'static str {
        match (self, lang) {
            (ConnectionKind::TwoChannelAudio, Lang::Ru) => "для двухканального аудио",
            (ConnectionKind::OneChannelAudio, Lang::Ru) => "для одноканального аудио",
            (ConnectionKind::Chat, Lang::Ru) => "для чатов",
            (ConnectionKind::TwoChannelAudio, Lang::En) => "for two-channel audio",
            (ConnectionKind::OneChannelAudio, Lang::En) => "for one-channel audio",
            (ConnectionKind::Chat, Lang::En) => "for chats",
        }
    }

    /// What b24sense sends to a connection of this type.
    fn purpose(self, lang: Lang) -> &'static str {
        match (self, lang) {
            (ConnectionKind::TwoChannelAudio, Lang::Ru) => "для звонков",
            (ConnectionKind::OneChannelAudio, Lang::Ru) => "для моно-записей звонков",
            (ConnectionKind::Chat, Lang::Ru) => "для чатов Открытых линий",
            (ConnectionKind::TwoChannelAudio, Lang::En) => "calls",
            (ConnectionKind::OneChannelAudio, Lang::En) => "mono call recordings",
            (ConnectionKind::Chat, Lang::En) => "Open Lines chats",
        }
    }
}

/// What the metadata-only probe found. The `String` is the server's own message (may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionCheck {
    /// Key and connection accepted (and the connection's type is the one needed, or was not named).
    Ok,
    /// UNAUTHENTICATED: the API key (or IAM token) is wrong, revoked or expired.
    BadKey(String),
    /// PERMISSION_DENIED: the key works, but its service account has no access to this connection.
    NoAccess(String),
    /// NOT_FOUND: the key works, but the connection id does not exist.
    UnknownConnection(String),
    /// Key and connection accepted, but the connection is of another type than the one needed: e.g. a chat
    /// connection given for calls. Uploading to it would fail for every talk.
    WrongKind {
        connection_id: String,
        found: ConnectionKind,
        needed: ConnectionKind,
    },
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
            (
                ConnectionCheck::WrongKind {
                    connection_id,
                    found,
                    needed,
                },
                _,
            ) => return wrong_kind(connection_id, *found, *needed, lang),
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

fn wrong_kind(id: &str, found: ConnectionKind, needed: ConnectionKind, lang: Lang) -> String {
    match lang {
        Lang::Ru => format!(
            "Подключение {id} — {}; {} нужно подключение {}. Укажите ID подключения этого типа или создайте \
             такое подключение в SpeechSense.",
            found.is_for(lang),
            needed.purpose(lang),
            needed.is_for(lang),
        ),
        Lang::En => format!(
            "Connection {id} is {}; {} need a connection {}. Give the ID of a connection of that type, or create \
             one in SpeechSense.",
            found.is_for(lang),
            needed.purpose(lang),
            needed.is_for(lang),
        ),
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

    #[test]
    fn wrong_kind_names_what_was_given_and_what_is_needed() {
        let chat_for_calls = ConnectionCheck::WrongKind {
            connection_id: "c1".into(),
            found: ConnectionKind::Chat,
            needed: ConnectionKind::TwoChannelAudio,
        };
        assert!(!chat_for_calls.is_ok());
        assert!(chat_for_calls.message(Lang::Ru).starts_with(
            "Подключение c1 — для чатов; для звонков нужно подключение для двухканального аудио."
        ));
        assert!(chat_for_calls.message(Lang::En).starts_with(
            "Connection c1 is for chats; calls need a connection for two-channel audio."
        ));
        let audio_for_chats = ConnectionCheck::WrongKind {
            connection_id: "c2".into(),
            found: ConnectionKind::OneChannelAudio,
            needed: ConnectionKind::Chat,
        };
        assert!(audio_for_chats.message(Lang::Ru).starts_with(
            "Подключение c2 — для одноканального аудио; для чатов Открытых линий нужно подключение для чатов."
        ));
    }

    #[test]
    fn kind_is_read_back_from_a_refusal() {
        for kind in ConnectionKind::ALL {
            let message = format!(
                "required metadata key operator_name is missing; {}",
                kind.refusal_note("x-1")
            );
            assert_eq!(ConnectionKind::named_in(&message), Some(kind), "{message}");
        }
        // Not named, or named ambiguously: no verdict about the type.
        for message in [
            "required metadata key operator_name is missing",
            "no audio; chat connections take UploadText",
            "connection a is a chat connection, connection b is a two-channel audio connection",
        ] {
            assert_eq!(ConnectionKind::named_in(message), None, "{message}");
        }
    }
}
