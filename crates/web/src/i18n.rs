//! The page language and every user-facing sentence the server writes, in Russian and English (the settings
//! page's own labels are in [`crate::page`]). One language type everywhere: SpeechSense's [`Lang`], which also
//! words the connection check; Bitrix24's `LANG` picks it, and a session carries it as `ru` / `en`.

use b24sense_core::FailReason;
use b24sense_speechsense::ConnectionCheck;
pub use b24sense_speechsense::Lang;

/// The page language for Bitrix24's `LANG` (`en`, `en-US`, … → English; anything else → Russian).
pub fn lang_of(bitrix_lang: Option<&str>) -> Lang {
    match bitrix_lang {
        Some(l) if l.to_ascii_lowercase().starts_with("en") => Lang::En,
        _ => Lang::Ru,
    }
}

/// `ru` / `en`: how a language is stored (the portal's `lang`) and shown (`<html lang>`, the page's JSON).
pub fn code(lang: Lang) -> &'static str {
    match lang {
        Lang::Ru => "ru",
        Lang::En => "en",
    }
}

/// Serde as the language's [`code`] (a session's `l`); anything but `en` reads as Russian.
pub mod lang_code {
    use super::{code, Lang};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(lang: &Lang, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(code(*lang))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lang, D::Error> {
        let s = String::deserialize(d)?;
        Ok(if s == "en" { Lang::En } else { Lang::Ru })
    }
}

/// A fixed sentence, by what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    InstallIncomplete,
    InstallAdminOnly,
    InstallNotConfirmed,
    Installed,
    NotInstalledHere,
    PortalMismatch,
    WrongAppToken,
    SessionNotConfirmed,
    SettingsAdminOnly,
    SaveSettingsFirst,
    EnterApiKeyShort,
    EnterApiKey,
    EnterConnectionId,
    BadConnectionId,
    BadChatConnectionId,
    ChatSameAsCalls,
    BadUsers,
    BadMinDuration,
    MinDurationTooLong,
    BadLanguage,
    BadSince,
    BadDirection,
    ChooseMonoPolicy,
    DupesNeedAllIds,
    AlreadyRunning,
    Interrupted,
    Resumed,
    StoppedByUser,
    SpeechSenseTimeout,
    UnverifiedSave,
    CannotSave,
    CannotStart,
    InstalledNext,
    InstalledHow,
}

impl Msg {
    /// The sentence in `lang`.
    pub fn text(self, lang: Lang) -> &'static str {
        let (ru, en) = match self {
            Msg::InstallIncomplete => ("Не хватает данных установки.", "Installation data is incomplete."),
            Msg::InstallAdminOnly => (
                "Установить приложение может только администратор.",
                "Only an administrator can install the application.",
            ),
            Msg::InstallNotConfirmed => (
                "Битрикс24 не подтвердил установку.",
                "Bitrix24 did not confirm the installation.",
            ),
            Msg::Installed => ("b24sense установлен", "b24sense is installed"),
            Msg::NotInstalledHere => (
                "Приложение не установлено на этом портале.",
                "The application is not installed on this portal.",
            ),
            Msg::PortalMismatch => (
                "Портал не совпадает с установкой.",
                "The portal does not match the installation.",
            ),
            Msg::WrongAppToken => ("Неверный токен приложения.", "Wrong application token."),
            Msg::SessionNotConfirmed => (
                "Битрикс24 не подтвердил сессию. Откройте приложение заново.",
                "Bitrix24 did not confirm the session. Open the application again.",
            ),
            Msg::SettingsAdminOnly => (
                "Настройки доступны только администратору портала.",
                "Only a portal administrator can change the settings.",
            ),
            Msg::SaveSettingsFirst => ("Сначала сохраните настройки.", "Save the settings first."),
            Msg::EnterApiKeyShort => ("Укажите API-ключ.", "Enter the API key."),
            Msg::EnterApiKey => (
                "Укажите API-ключ сервисного аккаунта.",
                "Enter the service account's API key.",
            ),
            Msg::EnterConnectionId => (
                "Укажите ID подключения SpeechSense.",
                "Enter the SpeechSense connection ID.",
            ),
            Msg::BadConnectionId => (
                "ID подключения содержит недопустимые символы.",
                "The connection ID contains characters an ID never has.",
            ),
            Msg::BadChatConnectionId => (
                "ID подключения для чатов содержит недопустимые символы. Скопируйте ID подключения для чатов из SpeechSense или оставьте поле пустым.",
                "The chat connection ID contains characters an ID never has. Copy the chat connection's ID from SpeechSense, or leave the field empty.",
            ),
            Msg::ChatSameAsCalls => (
                "ID подключения для чатов совпадает с ID подключения для звонков. Чатам нужно отдельное подключение для чатов: укажите его ID или оставьте поле пустым.",
                "The chat connection ID is the same as the call connection ID. Chats need a chat connection of their own: give its ID, or leave the field empty.",
            ),
            Msg::BadUsers => (
                "ID пользователей Битрикс24 через запятую, например 1, 5, 7.",
                "Bitrix24 user IDs separated by commas, e.g. 1, 5, 7.",
            ),
            Msg::BadMinDuration => (
                "Целое число секунд, например 30.",
                "A whole number of seconds, e.g. 30.",
            ),
            Msg::MinDurationTooLong => ("Не больше 86400 секунд.", "At most 86400 seconds."),
            Msg::BadLanguage => (
                "Язык в виде ru-RU, en-US, kk-KZ.",
                "Language as ru-RU, en-US, kk-KZ.",
            ),
            Msg::BadSince => ("Дата в виде ГГГГ-ММ-ДД.", "A date as YYYY-MM-DD."),
            Msg::BadDirection => ("Неизвестное направление звонка.", "Unknown call direction."),
            Msg::ChooseMonoPolicy => (
                "Выберите, что делать с моно-записями.",
                "Choose what to do with mono recordings.",
            ),
            Msg::DupesNeedAllIds => (
                "Для проверки дублей нужны все три ID (организация, пространство, проект).",
                "Duplicate checks need all three IDs (organization, space, project).",
            ),
            Msg::AlreadyRunning => ("Выгрузка уже идёт.", "An export is already running."),
            Msg::Interrupted => (
                "Выгрузка прервана: сервер перезапускался.",
                "The export was interrupted: the server restarted.",
            ),
            Msg::Resumed => (
                "Выгрузка прервана: сервер перезапускался. Продолжаем с того места, где она остановилась; выгруженные звонки не повторяются.",
                "The export was interrupted: the server restarted. It continues where it stopped; uploaded calls are not sent again.",
            ),
            Msg::StoppedByUser => ("Остановлено пользователем.", "Stopped by the user."),
            Msg::SpeechSenseTimeout => (
                "SpeechSense не ответил за 30 секунд",
                "SpeechSense did not answer within 30 s",
            ),
            Msg::UnverifiedSave => (
                "Настройки не сохранены: проверка подключения к SpeechSense не прошла. Исправьте поле или нажмите «Сохранить без проверки».",
                "The settings were not saved: the SpeechSense connection check failed. Fix the field, or press “Save without check”.",
            ),
            Msg::CannotSave => (
                "Не удалось сохранить настройки: хранилище недоступно. Попробуйте ещё раз через минуту.",
                "Could not save the settings: the store is unavailable. Try again in a minute.",
            ),
            Msg::CannotStart => (
                "Не удалось запустить выгрузку (подробности — в журнале сервера). Попробуйте ещё раз через минуту.",
                "Could not start the export (details are in the server log). Try again in a minute.",
            ),
            Msg::InstalledNext => (
                "Что дальше: откройте приложение b24sense в меню Битрикс24, укажите ID подключения SpeechSense и API-ключ сервисного аккаунта, нажмите «Проверить подключение», затем «Сохранить» и «Запустить выгрузку».",
                "Next: open the b24sense application from the Bitrix24 menu, enter the SpeechSense connection ID and the service account's API key, press “Check connection”, then “Save” and “Start export”.",
            ),
            Msg::InstalledHow => (
                "Приложение подключено к порталу. Настройки доступны только администраторам портала.",
                "The application is connected to the portal. Only portal administrators can change its settings.",
            ),
        };
        match lang {
            Lang::Ru => ru,
            Lang::En => en,
        }
    }
}

/// What the administrator must do when the OAuth server refused to refresh the portal's tokens (`code`).
pub fn token_problem(lang: Lang, code: &str) -> String {
    match lang {
        Lang::En => format!(
            "Bitrix24 refused to renew the application's access ({code}). Open the application in Bitrix24 \
             again or reinstall it; until then exports and continuous sync cannot run."
        ),
        Lang::Ru => format!(
            "Битрикс24 отказался продлить доступ приложения ({code}). Откройте приложение в Битрикс24 заново \
             или переустановите его; до этого выгрузка и непрерывная синхронизация не работают."
        ),
    }
}

/// SpeechSense could not be reached (`detail`: the transport error, in English: it goes to the server log, so
/// the page speaks one language).
pub fn speechsense_unreachable(lang: Lang, detail: &str) -> String {
    tracing::warn!(%detail, "SpeechSense could not be reached");
    unreachable_text(lang).to_string()
}

/// The page's words for SpeechSense out of reach.
pub fn unreachable_text(lang: Lang) -> &'static str {
    match lang {
        Lang::Ru => "Не удалось связаться с SpeechSense. Проверьте, что сервер приложения может подключиться к \
                     SpeechSense, и повторите попытку; подробности — в журнале сервера.",
        Lang::En => "Could not reach SpeechSense. Check that the application server can connect to SpeechSense \
                     and try again; details are in the server log.",
    }
}

/// Why a call was not uploaded, in words.
pub fn fail_reason(lang: Lang, reason: FailReason) -> &'static str {
    let (ru, en) = match reason {
        FailReason::UnsupportedAudio => (
            "формат записи не поддерживается",
            "unsupported recording format",
        ),
        FailReason::RecordingUnavailable => (
            "запись недоступна в Битрикс24",
            "the recording is unavailable in Bitrix24",
        ),
        FailReason::DownloadFailed => (
            "не удалось скачать запись",
            "the recording could not be downloaded",
        ),
        FailReason::InvalidData => (
            "SpeechSense не принял данные звонка",
            "SpeechSense refused the call's data",
        ),
        FailReason::UploadFailed => (
            "SpeechSense не принял загрузку после нескольких попыток",
            "SpeechSense kept failing",
        ),
        FailReason::PortalError => (
            "Битрикс24 не ответил после нескольких попыток",
            "Bitrix24 kept failing",
        ),
        FailReason::InDoubt => (
            "неизвестно, сохранил ли SpeechSense звонок",
            "unknown whether SpeechSense stored the call",
        ),
        FailReason::Interrupted => ("выгрузка остановилась раньше", "the export stopped first"),
    };
    match lang {
        Lang::Ru => ru,
        Lang::En => en,
    }
}

/// A call the run could not upload (the technical detail is in the report and the server log).
pub fn call_not_uploaded(lang: Lang, call_id: u64, reason: FailReason) -> String {
    let why = fail_reason(lang, reason);
    match lang {
        Lang::Ru => format!("Звонок {call_id} не выгружен: {why}. Подробности — в отчёте."),
        Lang::En => format!("Call {call_id} was not uploaded: {why}. Details are in the report."),
    }
}

/// A row of `voximplant.statistic.get` the engine could not read (the detail goes to the server log).
pub fn unreadable_row(lang: Lang) -> &'static str {
    match lang {
        Lang::Ru => "Битрикс24 вернул строку звонка, которую не удалось прочитать; подробности — в журнале сервера.",
        Lang::En => "Bitrix24 returned a call row that could not be read; details are in the server log.",
    }
}

/// The label of a settings field a message is about (`connection_id`, `chat_connection_id`), as the page shows it.
pub fn field_label(lang: Lang, field: &str) -> &'static str {
    match (field, lang) {
        ("chat_connection_id", Lang::Ru) => "ID подключения для чатов",
        ("chat_connection_id", Lang::En) => "Chat connection ID",
        (_, Lang::Ru) => "ID подключения SpeechSense",
        (_, Lang::En) => "SpeechSense connection ID",
    }
}

/// The chat export stopped early; `why`: the one message of [`run_stopped`] or the check's own words.
pub fn chats_stopped(lang: Lang, why: &str) -> String {
    match lang {
        Lang::Ru => format!("Выгрузка чатов остановлена: {why}"),
        Lang::En => format!("The chat export stopped: {why}"),
    }
}

/// Bitrix24 refused the Open Lines sessions (the listing or the histories), with what to do.
pub fn chats_refused_by_bitrix24(lang: Lang) -> &'static str {
    match lang {
        Lang::Ru => "Битрикс24 отказал в доступе к Открытым линиям. Проверьте, что у приложения есть права crm и \
                     imopenlines (переустановите его, если права добавлены позже), затем запустите выгрузку снова.",
        Lang::En => "Bitrix24 refused access to Open Lines. Check that the application has the crm and imopenlines \
                     scopes (reinstall it if they were added later), then start the export again.",
    }
}

/// An Open Lines session the run could not upload (`reason`: the ledger's word for why).
pub fn session_not_uploaded(lang: Lang, session_id: u64, reason: &str) -> String {
    match lang {
        Lang::Ru => format!(
            "Сессия Открытых линий {session_id} не выгружена ({reason}). Подробности — в отчёте."
        ),
        Lang::En => {
            format!("Open Lines session {session_id} was not uploaded ({reason}). Details are in the report.")
        }
    }
}

/// Why a run stopped early, as the page says it: once, with what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// SpeechSense refused the key or the connection.
    SpeechSense(ConnectionCheck),
    /// SpeechSense could not be reached.
    SpeechSenseUnreachable,
    /// Bitrix24 refused or kept failing.
    Bitrix24,
    /// Anything else (the detail is in the server log).
    Other,
}

/// The one message of a run that stopped early.
pub fn run_stopped(lang: Lang, stop: &Stop) -> String {
    let (ru, en) = match stop {
        Stop::SpeechSense(ConnectionCheck::BadKey(_)) => (
            "SpeechSense не принимает API-ключ. Проверьте API-ключ: укажите в настройках действующий ключ сервисного аккаунта и запустите выгрузку снова.",
            "SpeechSense does not accept the API key. Change the API key: enter a valid key of the service account in the settings and start the export again.",
        ),
        Stop::SpeechSense(ConnectionCheck::NoAccess(_)) => (
            "у сервисного аккаунта нет доступа к подключению SpeechSense. Добавьте его в пространство SpeechSense с ролью редактора данных или проверьте ID подключения, затем запустите выгрузку снова.",
            "the service account has no access to the SpeechSense connection. Add it to the SpeechSense space as a data editor, or check the connection ID, then start the export again.",
        ),
        Stop::SpeechSense(ConnectionCheck::UnknownConnection(_)) => (
            "подключение SpeechSense с таким ID не найдено. Проверьте ID подключения в настройках и запустите выгрузку снова.",
            "no SpeechSense connection has this ID. Check the connection ID in the settings and start the export again.",
        ),
        // Kinds of refusal the check may learn to tell apart: its own words.
        Stop::SpeechSense(other) => {
            let words = other.message(lang);
            return match lang {
                Lang::Ru => format!("{words} Исправьте настройки и запустите выгрузку снова."),
                Lang::En => format!("{words} Fix the settings and start the export again."),
            };
        }
        Stop::SpeechSenseUnreachable => (
            "не удалось связаться с SpeechSense. Проверьте, что сервер приложения может подключиться к SpeechSense, и запустите выгрузку снова.",
            "SpeechSense could not be reached. Check that the application server can connect to SpeechSense, then start the export again.",
        ),
        Stop::Bitrix24 => (
            "Битрикс24 отказал в доступе к звонкам. Откройте приложение в Битрикс24 заново или переустановите его, затем запустите выгрузку снова.",
            "Bitrix24 refused access to the calls. Open the application in Bitrix24 again or reinstall it, then start the export again.",
        ),
        Stop::Other => (
            "произошла ошибка (подробности — в журнале сервера). Запустите выгрузку снова; если ошибка повторится, обратитесь к администратору сервера.",
            "an error occurred (details are in the server log). Start the export again; if it happens again, contact the server's administrator.",
        ),
    };
    match lang {
        Lang::Ru => ru,
        Lang::En => en,
    }
    .to_string()
}
