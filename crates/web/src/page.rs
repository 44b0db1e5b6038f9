//! The settings page: server-rendered HTML in the page's language plus a small vanilla script and stylesheet
//! (no build step). The script talks to `/api/*` with the page's signed session token.

use b24sense_core::FailReason;
use serde_json::{json, Map, Value};

use crate::i18n::{self, Lang, Msg};

pub const APP_JS: &str = include_str!("../static/app.js");
pub const APP_CSS: &str = include_str!("../static/app.css");

/// `(key, Russian, English)`.
const TEXTS: &[(&str, &str, &str)] = &[
    ("title", "Выгрузка звонков в SpeechSense", "Call export to SpeechSense"),
    ("settings", "Настройки", "Settings"),
    ("edit", "Редактировать", "Edit"),
    ("cancel", "Отмена", "Cancel"),
    ("connection_id", "ID подключения SpeechSense", "SpeechSense connection ID"),
    ("connection_id_hint", "Идентификатор подключения для аудио (двухканальное) из интерфейса SpeechSense.", "The ID of the (two-channel) audio connection in SpeechSense."),
    ("chat_connection_id", "ID подключения для чатов", "Chat connection ID"),
    ("chat_connection_id_hint", "Необязательно. Подключение SpeechSense для чатов: в него выгружаются завершённые диалоги Открытых линий (онлайн-чат на сайте, Телеграм, ВКонтакте…), каждый один раз. Пусто — чаты не выгружаются.", "Optional. A SpeechSense chat connection: finished Open Lines dialogs (website chat, Telegram, WhatsApp, VK…) go there, each once. Empty = chats are not exported."),
    ("api_key", "API-ключ", "API key"),
    ("api_key_hint", "Секретный ключ сервисного аккаунта speechsense. Хранится зашифрованным и больше не показывается.", "The secret key of the speechsense service account. Stored encrypted and never shown again."),
    ("api_key_saved", "ключ сохранён — оставьте пустым, чтобы не менять", "saved — leave empty to keep it"),
    ("check", "Проверить подключение", "Check connection"),
    ("checking", "Проверяем…", "Checking…"),
    ("language", "Язык распознавания", "Recognition language"),
    ("since", "С какой даты загружать звонки", "Load calls since date"),
    ("since_hint", "Если оставить пустым, будут загружены все звонки из базы. В рамках тестирования интеграции рекомендуется указывать дату.", "Empty = all calls. When testing the integration, set a date."),
    ("users", "Список пользователей", "List of users"),
    ("users_hint", "ID пользователей Битрикс24 (операторов) через запятую. Если оставить пустым, будут загружены звонки всех пользователей.", "Bitrix24 user IDs (operators), comma-separated. Empty = all users."),
    ("pick_users", "Выбрать из списка", "Pick from the list"),
    ("min_duration", "Минимальная длина разговора, секунд", "Minimal conversation length, seconds"),
    ("min_duration_hint", "Рекомендуется отправлять звонки длительностью от 30 секунд.", "Calls of 30 seconds or more are recommended."),
    ("direction", "Направление звонков", "Call direction"),
    ("dir_outgoing", "Исходящие", "Outgoing"),
    ("dir_incoming", "Входящие", "Incoming"),
    ("dir_redirected", "Входящие с переадресацией", "Incoming, redirected"),
    ("dir_callback", "Обратный звонок", "Callback"),
    ("direction_hint", "Ничего не отмечено — все направления.", "None ticked = all directions."),
    ("mono_policy", "Одноканальные (моно) записи", "One-channel (mono) recordings"),
    ("mono_upload", "Загружать как есть", "Upload as they are"),
    ("mono_skip", "Пропускать", "Skip"),
    ("mono_route", "Загружать в другое (одноканальное) подключение", "Upload to another (one-channel) connection"),
    ("mono_route_id", "ID одноканального подключения", "One-channel connection ID"),
    ("dupes", "Проверка дублей (необязательно)", "Duplicate checks (optional)"),
    ("dupes_hint", "Если указать все три ID, после сбоя загрузки b24sense сначала ищет звонок в SpeechSense и не загружает его повторно.", "With all three IDs, after a failed upload b24sense looks the call up in SpeechSense before uploading again."),
    ("organization_id", "ID организации", "Organization ID"),
    ("space_id", "ID пространства", "Space ID"),
    ("project_id", "ID проекта", "Project ID"),
    ("sync_enabled", "Непрерывная синхронизация: выгружать новые звонки автоматически", "Continuous sync: export new calls automatically"),
    ("save", "Сохранить", "Save"),
    ("saved", "Настройки сохранены", "Settings saved"),
    ("fix_errors", "Исправьте отмеченные поля", "Fix the marked fields"),
    ("export", "Выгрузка", "Export"),
    ("start", "Запустить выгрузку", "Start export"),
    ("stop", "Стоп", "Stop"),
    ("found", "Найдено", "Found"),
    ("uploaded", "Выгружено", "Uploaded"),
    ("skipped", "Пропущено", "Skipped"),
    ("failed", "Ошибки", "Failed"),
    ("rate", "Скорость", "Rate"),
    ("per_min", "звонков/мин", "calls/min"),
    ("eta", "Осталось", "Time left"),
    ("last_errors", "Последние ошибки", "Last errors"),
    ("report", "Скачать отчёт (CSV)", "Download report (CSV)"),
    ("running", "Идёт выгрузка…", "Export running…"),
    ("done", "Выгрузка завершена", "Export finished"),
    ("stopped", "Выгрузка остановлена", "Export stopped"),
    ("idle", "Выгрузка ещё не запускалась", "No export has run yet"),
    ("not_set", "не задано", "not set"),
    ("all", "все", "all"),
    ("yes", "да", "yes"),
    ("no", "нет", "no"),
    ("no_settings", "Настройки ещё не заданы. Нажмите «Редактировать».", "No settings yet. Press “Edit”."),
    ("session_expired", "Сессия истекла — откройте приложение заново.", "The session expired — open the application again."),
    ("reason_already_uploaded", "уже выгружены", "already uploaded"),
    ("reason_no_recording", "нет записи", "no recording"),
    ("awaiting_recording", "ждут записи (Битрикс24 прикрепляет её позже; проверим ещё раз)", "awaiting their recording (Bitrix24 attaches it later; checked again)"),
    ("reason_too_short", "короче минимума", "too short"),
    ("reason_mono_recording", "моно-запись", "mono recording"),
    ("reason_too_long", "длиннее 4 часов", "longer than 4 hours"),
    ("save_anyway", "Сохранить без проверки", "Save without check"),
    ("saved_unverified", "Сохранено без проверки подключения", "Saved without a connection check"),
    ("awaiting", "Ждут записи", "Awaiting recording"),
    ("remaining", "Ещё не обработаны", "Not done yet"),
    ("estimating", "оцениваем…", "estimating…"),
    ("took", "Заняло", "Took"),
    ("unit_h", "ч", "h"),
    ("unit_min", "мин", "min"),
    ("unit_sec", "с", "s"),
    ("lang_ru", "русский", "Russian"),
    ("lang_en", "английский", "English"),
    ("lang_kk", "казахский", "Kazakh"),
    ("sync_title", "Непрерывная синхронизация", "Continuous sync"),
    ("sync_on_since", "Включена", "On since"),
    ("sync_today", "Сегодня", "Today"),
    ("sync_total", "С момента включения", "Since it was turned on"),
    ("sync_last", "Последний проход", "Last pass"),
    ("sync_passes", "Проходов", "Passes"),
    ("sync_no_pass", "проходов ещё не было", "no pass yet"),
    ("sync_running", "Идёт проход синхронизации…", "Sync pass running…"),
    ("sync_done", "Проход синхронизации завершён", "Sync pass finished"),
    ("d_found", "найдено", "found"),
    ("d_uploaded", "выгружено", "uploaded"),
    ("d_skipped", "пропущено", "skipped"),
    ("d_failed", "ошибок", "failed"),
    ("d_awaiting", "ждут записи", "awaiting recording"),
    ("failed_detail", "Ошибки", "Failed"),
    ("chats", "Чаты Открытых линий", "Open Lines chats"),
    ("c_waiting", "Ещё открыты", "Still open"),
    ("c_running", "выгружаются…", "exporting…"),
    ("reason_session_open", "диалог ещё открыт (выгрузим после закрытия)", "the dialog is still open (exported once it closes)"),
    ("reason_no_client_message", "клиент ничего не написал", "the client wrote nothing"),
    ("reason_too_few_client_messages", "мало сообщений клиента", "too few client messages"),
];

/// The words of the failure reasons (`fail_<reason>`), for the page's detail line.
fn fail_texts(lang: Lang) -> impl Iterator<Item = (String, &'static str)> {
    FailReason::ALL
        .iter()
        .map(move |r| (format!("fail_{}", r.as_str()), i18n::fail_reason(lang, *r)))
}

fn t(lang: Lang, key: &str) -> &'static str {
    TEXTS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, ru, en)| match lang {
            Lang::Ru => *ru,
            Lang::En => *en,
        })
        .unwrap_or("")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn field(lang: Lang, name: &str, input: &str, hint: Option<&str>) -> String {
    let hint = hint
        .map(|h| format!("<p class=\"hint\">{}</p>", esc(t(lang, h))))
        .unwrap_or_default();
    format!(
        "<div class=\"field\" id=\"fld-{name}\"><label for=\"f-{name}\">{}</label>{input}{hint}\
         <p class=\"error\" id=\"err-{name}\" role=\"alert\"></p></div>",
        esc(t(lang, name))
    )
}

/// The whole page. `session`/`csrf` go into a JSON data block the script reads (not executed: CSP-safe);
/// `sdk`: the Bitrix24 JS SDK the page sizes its frame with.
pub fn render(lang: Lang, session: &str, csrf: &str, domain: &str, sdk: &str) -> String {
    let l = |k: &str| esc(t(lang, k));
    let mut texts = Map::new();
    for (k, _, _) in TEXTS {
        texts.insert((*k).to_string(), Value::String(t(lang, k).to_string()));
    }
    for (k, v) in fail_texts(lang) {
        texts.insert(k, Value::String(v.to_string()));
    }
    let boot =
        json!({"session": session, "csrf": csrf, "lang": i18n::code(lang), "t": texts}).to_string();
    // `</` cannot appear inside the data block.
    let boot = boot.replace("</", "<\\/");
    let dirs = ["outgoing", "incoming", "redirected", "callback"]
        .iter()
        .map(|d| {
            format!(
                "<label class=\"check\"><input type=\"checkbox\" name=\"direction\" value=\"{d}\" id=\"f-dir-{d}\"> {}</label>",
                l(&format!("dir_{d}"))
            )
        })
        .collect::<String>();
    let form = [
        field(lang, "connection_id", "<input id=\"f-connection_id\" name=\"connection_id\" autocomplete=\"off\" spellcheck=\"false\">", Some("connection_id_hint")),
        field(lang, "chat_connection_id", "<input id=\"f-chat_connection_id\" name=\"chat_connection_id\" autocomplete=\"off\" spellcheck=\"false\">", Some("chat_connection_id_hint")),
        field(lang, "api_key", "<input id=\"f-api_key\" name=\"api_key\" type=\"password\" autocomplete=\"new-password\" spellcheck=\"false\">", Some("api_key_hint")),
        format!("<div class=\"field\" id=\"fld-connection\"><button type=\"button\" id=\"check\" class=\"secondary\">{}</button> <span id=\"check-result\" role=\"status\"></span><p class=\"error\" id=\"err-connection\" role=\"alert\"></p></div>", l("check")),
        field(lang, "language", &format!("<select id=\"f-language\" name=\"language\"><option value=\"ru-RU\">ru-RU — {}</option><option value=\"en-US\">en-US — {}</option><option value=\"kk-KZ\">kk-KZ — {}</option></select>", l("lang_ru"), l("lang_en"), l("lang_kk")), None),
        field(lang, "since", "<input id=\"f-since\" name=\"since\" type=\"date\">", Some("since_hint")),
        field(lang, "users", &format!("<input id=\"f-users\" name=\"users\" placeholder=\"1, 5, 7\"> <button type=\"button\" id=\"pick-users\" class=\"secondary\">{}</button><div id=\"user-list\" class=\"user-list\" hidden></div>", l("pick_users")), Some("users_hint")),
        field(lang, "min_duration", "<input id=\"f-min_duration\" name=\"min_duration\" type=\"number\" min=\"0\" step=\"1\" placeholder=\"30\">", Some("min_duration_hint")),
        format!("<fieldset class=\"field\" id=\"fld-direction\"><legend>{}</legend>{dirs}<p class=\"hint\">{}</p><p class=\"error\" id=\"err-direction\"></p></fieldset>", l("direction"), l("direction_hint")),
        field(lang, "mono_policy", &format!("<select id=\"f-mono_policy\" name=\"mono_policy\"><option value=\"upload\">{}</option><option value=\"skip\">{}</option><option value=\"route\">{}</option></select>", l("mono_upload"), l("mono_skip"), l("mono_route")), None),
        field(lang, "mono_route", "<input id=\"f-mono_route\" name=\"mono_route\" autocomplete=\"off\">", None).replace("<label", "<label data-label=\"mono_route_id\""),
        format!("<details id=\"dupes\"><summary>{}</summary><p class=\"hint\">{}</p>{}{}{}</details>", l("dupes"), l("dupes_hint"),
            field(lang, "organization_id", "<input id=\"f-organization_id\" name=\"organization_id\" autocomplete=\"off\">", None),
            field(lang, "space_id", "<input id=\"f-space_id\" name=\"space_id\" autocomplete=\"off\">", None),
            field(lang, "project_id", "<input id=\"f-project_id\" name=\"project_id\" autocomplete=\"off\">", None)),
        format!("<div class=\"field\"><label class=\"check\"><input type=\"checkbox\" id=\"f-sync_enabled\" name=\"sync_enabled\"> {}</label></div>", l("sync_enabled")),
    ]
    .concat();
    format!(
        r##"<!doctype html>
<html lang="{html_lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="static/app.css">
<script type="application/json" id="boot">{boot}</script>
<script src="{sdk}" defer></script>
<script src="static/app.js" defer></script>
</head>
<body>
<header><h1>{title}</h1><span class="domain">{domain}</span></header>
<main>
<div class="alert" id="token-problem" role="alert" hidden></div>
<section class="card" id="view">
  <div class="card-head"><h2>{settings}</h2><button type="button" id="edit">{edit}</button></div>
  <dl id="summary"></dl>
</section>
<section class="card" id="editor" hidden>
  <div class="card-head"><h2>{settings}</h2></div>
  <form id="form" novalidate>
  {form}
  <div class="actions"><button type="submit" id="save">{save}</button> <button type="button" id="save-anyway" class="danger" hidden>{save_anyway}</button> <button type="button" id="cancel" class="secondary">{cancel}</button> <span id="save-result" role="status"></span></div>
  </form>
</section>
<section class="card" id="export">
  <div class="card-head"><h2>{export}</h2>
    <div><button type="button" id="start">{start}</button> <button type="button" id="stop" class="danger">{stop}</button></div></div>
  <p id="export-error" class="error" role="alert"></p>
  <div id="progress">
    <p id="p-status">{idle}</p>
    <p id="p-notice" class="notice" role="status" hidden></p>
    <div class="bar"><div id="p-bar"></div></div>
    <div class="stats">
      <div><span class="num" id="p-found">0</span><span class="lbl">{found}</span></div>
      <div><span class="num ok" id="p-uploaded">0</span><span class="lbl">{uploaded}</span></div>
      <div><span class="num" id="p-skipped">0</span><span class="lbl">{skipped}</span></div>
      <div><span class="num" id="p-awaiting">0</span><span class="lbl">{awaiting}</span></div>
      <div><span class="num bad" id="p-failed">0</span><span class="lbl">{failed}</span></div>
      <div><span class="num" id="p-remaining">0</span><span class="lbl">{remaining}</span></div>
    </div>
    <p class="hint"><span id="p-skipped-detail"></span></p>
    <p class="hint"><span id="p-failed-detail"></span></p>
    <p class="hint">{rate}: <span id="p-rate">—</span> · <span id="p-eta-label">{eta}</span>: <span id="p-eta">—</span></p>
    <div id="p-chats" class="chats" hidden><h3>{chats} <span id="c-state" class="hint"></span></h3>
      <div class="stats">
        <div><span class="num ok" id="c-uploaded">0</span><span class="lbl">{uploaded}</span></div>
        <div><span class="num" id="c-skipped">0</span><span class="lbl">{skipped}</span></div>
        <div><span class="num" id="c-waiting">0</span><span class="lbl">{c_waiting}</span></div>
        <div><span class="num bad" id="c-failed">0</span><span class="lbl">{failed}</span></div>
      </div>
      <p class="hint"><span id="c-detail"></span></p>
      <p class="error" id="c-stopped" role="alert"></p>
    </div>
    <div id="p-sync" class="sync" hidden><h3>{sync_title}</h3><dl id="p-sync-rows"></dl></div>
    <div id="p-errors-box" hidden><h3>{last_errors}</h3><ul id="p-errors"></ul></div>
    <p><a href="#" id="report" hidden>{report}</a></p>
  </div>
</section>
</main>
</body>
</html>
"##,
        html_lang = i18n::code(lang),
        sdk = esc(sdk),
        save_anyway = l("save_anyway"),
        awaiting = l("awaiting"),
        remaining = l("remaining"),
        sync_title = l("sync_title"),
        chats = l("chats"),
        c_waiting = l("c_waiting"),
        title = l("title"),
        domain = esc(domain),
        settings = l("settings"),
        edit = l("edit"),
        save = l("save"),
        cancel = l("cancel"),
        export = l("export"),
        start = l("start"),
        stop = l("stop"),
        idle = l("idle"),
        found = l("found"),
        uploaded = l("uploaded"),
        skipped = l("skipped"),
        failed = l("failed"),
        rate = l("rate"),
        eta = l("eta"),
        last_errors = l("last_errors"),
        report = l("report"),
    )
}

/// The answer to the iframe install: styled like the settings page, saying what to do next, and telling
/// Bitrix24 the installation is finished (`BX24.installFinish()`, from the SDK at `sdk`).
pub fn install_page(lang: Lang, sdk: &str) -> String {
    let l = |k: &str| esc(t(lang, k));
    let m = |msg: Msg| esc(msg.text(lang));
    format!(
        r##"<!doctype html>
<html lang="{html_lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="static/app.css">
<script src="{sdk}"></script>
</head>
<body>
<header><h1>{title}</h1></header>
<main>
<section class="card" id="installed">
  <div class="card-head"><h2 class="ok">{installed}</h2></div>
  <p>{how}</p>
  <p class="notice" id="next">{next}</p>
</section>
</main>
<script>if (window.BX24) {{ BX24.init(function () {{ BX24.installFinish(); }}); }}</script>
</body>
</html>
"##,
        html_lang = i18n::code(lang),
        title = l("title"),
        sdk = esc(sdk),
        installed = m(Msg::Installed),
        how = m(Msg::InstalledHow),
        next = m(Msg::InstalledNext),
    )
}
