//! The page language and every user-facing sentence the server writes, in Russian and English (the settings
//! page's own labels are in [`crate::page`]). One language type everywhere: SpeechSense's [`Lang`], which also
//! words the connection check; Bitrix24's `LANG` picks it, and a session carries it as `ru` / `en`.

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

/// SpeechSense could not be reached (`detail`: the transport error).
pub fn speechsense_unreachable(lang: Lang, detail: &str) -> String {
    match lang {
        Lang::Ru => format!("Не удалось связаться с SpeechSense: {detail}"),
        Lang::En => format!("Could not reach SpeechSense: {detail}"),
    }
}

/// A call the run could not upload.
pub fn call_not_uploaded(lang: Lang, call_id: u64, reason: &str, detail: &str) -> String {
    match lang {
        Lang::Ru => format!("Звонок {call_id}: не выгружен ({reason}): {detail}"),
        Lang::En => format!("Call {call_id}: not uploaded ({reason}): {detail}"),
    }
}

/// A row of `voximplant.statistic.get` the engine could not read.
pub fn unreadable_row(lang: Lang, detail: &str) -> String {
    match lang {
        Lang::Ru => format!("Нечитаемая строка звонка: {detail}"),
        Lang::En => format!("Unreadable call row: {detail}"),
    }
}
