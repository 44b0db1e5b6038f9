//! The settings page's JSON API (`/api/*`): state, save, check connection, start/stop an export, progress, the
//! user picker, the per-call CSV report, and the session's renewal (sessions expire after an idle hour; the open
//! page renews its own every few minutes). Every handler takes its caller's session as an extractor
//! ([`PageSession`] to read, [`WriteSession`] to change).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use b24sense_speechsense::ConnectionCheck;
use b24sense_store::Portal;
use chrono::Utc;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::auth::{PageSession, WriteSession};
use crate::check::{check_connections, FieldCheck};
use crate::i18n::{self, Lang, Msg};
use crate::runner::Progress;
use crate::settings::{check_form, read_form, SettingsForm};
use crate::trigger::Trigger;
use crate::{report, settings_page, sync, AppState};

type ApiResult = Result<Json<Value>, ApiError>;

pub async fn state(
    State(state): State<Arc<AppState>>,
    PageSession { session, portal }: PageSession,
) -> ApiResult {
    let stored = state
        .store
        .settings(&state.key, &portal.member_id)
        .await
        .ok()
        .flatten();
    let (settings, has_key) = match stored {
        Some(st) => (Some(st.settings), st.api_key.is_some()),
        None => (None, false),
    };
    Ok(Json(json!({
        "lang": i18n::code(session.lang), "domain": portal.domain, "saved": settings.is_some(),
        "settings": settings.unwrap_or_default(), "api_key_set": has_key,
        "progress": current_progress(&state, &portal, session.lang).await,
        "token_problem": token_problem(&portal, session.lang),
    })))
}

/// Saves the settings once SpeechSense accepted the key and the connection (the same check as «Проверить
/// подключение»); a refused check blocks the save unless the form says `save_anyway` (the administrator
/// confirmed). Turning continuous sync on records when, for what the page shows it delivered.
pub async fn save(
    State(state): State<Arc<AppState>>,
    WriteSession(PageSession { session, portal }): WriteSession,
    Json(form): Json<SettingsForm>,
) -> ApiResult {
    let lang = session.lang;
    let stored = match state.store.settings(&state.key, &portal.member_id).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the settings");
            return Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                Msg::CannotSave.text(lang),
            ));
        }
    };
    let has_key = stored.as_ref().is_some_and(|st| st.api_key.is_some());
    let (mut settings, api_key) = read_form(&form, lang, has_key).map_err(ApiError::Fields)?;
    settings.sync_since = match stored.as_ref().map(|st| &st.settings) {
        _ if !settings.sync_enabled => None,
        Some(old) if old.sync_enabled && old.sync_since.is_some() => old.sync_since.clone(),
        _ => Some(Utc::now().to_rfc3339()),
    };
    let key = api_key
        .clone()
        .or_else(|| stored.and_then(|st| st.api_key))
        .ok_or_else(|| {
            ApiError::status(
                StatusCode::UNPROCESSABLE_ENTITY,
                Msg::EnterApiKey.text(lang),
            )
        })?;
    let checks = check_connections(
        &state.config.speechsense_endpoint,
        key,
        &settings.connection_id,
        settings.chat_connection_id.as_deref(),
        lang,
    )
    .await;
    let (verified, check) = summed(&checks);
    if !verified && !form.save_anyway {
        // Next to the field the first refusal is about (the key, the check itself, or one of the connections).
        let (field, words) = checks
            .iter()
            .find(|c| !c.ok)
            .map(|c| match c.not_about_connection {
                true => (refused_field(&c.message, lang), c.message.clone()),
                false => (c.field, c.message.clone()),
            })
            .unwrap_or(("connection", check.clone()));
        return Err(ApiError::Unverified {
            field,
            check: words,
            message: Msg::UnverifiedSave.text(lang).to_string(),
        });
    }
    if let Err(e) = state
        .store
        .save_settings(&state.key, &portal.member_id, &settings, api_key.as_ref())
        .await
    {
        tracing::error!(error = %e, "cannot save settings");
        return Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            Msg::CannotSave.text(lang),
        ));
    }
    if !verified {
        tracing::info!(member_id = ?portal.member_id, "settings saved without a passing connection check (confirmed)");
    }
    Ok(Json(
        json!({"saved": true, "settings": settings, "api_key_set": true, "verified": verified, "check": check}),
    ))
}

/// The field a refused check is about: the key when SpeechSense refused the key, the check itself when
/// SpeechSense was out of reach, else the connection ID (unknown, no access, or of the wrong type).
fn refused_field(check: &str, lang: Lang) -> &'static str {
    if check.starts_with(&ConnectionCheck::BadKey(String::new()).message(lang)) {
        "api_key"
    } else if check == i18n::unreachable_text(lang) || check == Msg::SpeechSenseTimeout.text(lang) {
        "connection"
    } else {
        "connection_id"
    }
}

pub async fn check(
    State(state): State<Arc<AppState>>,
    WriteSession(PageSession { session, portal }): WriteSession,
    Json(form): Json<SettingsForm>,
) -> ApiResult {
    // The stored key only when the form leaves the key empty.
    let stored_key = if form.api_key.trim().is_empty() {
        state
            .store
            .settings(&state.key, &portal.member_id)
            .await
            .ok()
            .flatten()
            .and_then(|st| st.api_key)
    } else {
        None
    };
    let form = check_form(&form, session.lang, stored_key).map_err(ApiError::Fields)?;
    let checks = check_connections(
        &state.config.speechsense_endpoint,
        form.key,
        &form.connection_id,
        form.chat_connection_id.as_deref(),
        session.lang,
    )
    .await;
    let (ok, message) = summed(&checks);
    let each: Vec<Value> = checks
        .iter()
        .map(|c| json!({"field": c.field, "ok": c.ok, "message": c.message}))
        .collect();
    Ok(Json(json!({"ok": ok, "message": message, "checks": each})))
}

/// Whether every connection checked passed, and the checks' words together.
fn summed(checks: &[FieldCheck]) -> (bool, String) {
    let ok = !checks.is_empty() && checks.iter().all(|c| c.ok);
    let words: Vec<&str> = checks.iter().map(|c| c.message.as_str()).collect();
    (ok, words.join(" · "))
}

/// A fresh session token (and its CSRF token) for the same installation, user and language, with a new idle
/// expiry: the open page calls this every few minutes, so only a closed page's session runs out.
pub async fn renew(
    State(state): State<Arc<AppState>>,
    WriteSession(PageSession { session, .. }): WriteSession,
) -> ApiResult {
    let (token, csrf) = settings_page::issue(&state, session);
    Ok(Json(json!({"session": token, "csrf": csrf})))
}

pub async fn start(
    State(state): State<Arc<AppState>>,
    WriteSession(PageSession { portal, .. }): WriteSession,
) -> ApiResult {
    let member = portal.member_id.clone();
    sync::start_for(&state, portal, Trigger::Page, false)
        .await
        .map_err(|e| ApiError::status(StatusCode::CONFLICT, e))?;
    Ok(Json(
        json!({"started": true, "progress": state.runner.progress(&member)}),
    ))
}

pub async fn stop(
    State(state): State<Arc<AppState>>,
    WriteSession(PageSession { portal, .. }): WriteSession,
) -> ApiResult {
    Ok(Json(
        json!({"stopping": state.runner.stop(&portal.member_id)}),
    ))
}

pub async fn progress(
    State(state): State<Arc<AppState>>,
    PageSession { session, portal }: PageSession,
) -> ApiResult {
    Ok(Json(json!({
        "progress": current_progress(&state, &portal, session.lang).await,
        "token_problem": token_problem(&portal, session.lang),
    })))
}

/// The live progress while this process runs the portal's export, else its last journaled run (another
/// replica's live one, or one whose process is gone: then shown as interrupted).
async fn current_progress(state: &AppState, portal: &Portal, lang: Lang) -> Option<Progress> {
    let mut p = last_progress(state, portal, lang).await?;
    // What sync delivered today: nothing yet on a new day.
    if let Some(totals) = p.sync.as_mut() {
        totals.roll_day(Utc::now());
    }
    Some(p)
}

async fn last_progress(state: &AppState, portal: &Portal, lang: Lang) -> Option<Progress> {
    if let Some(p) = state.runner.live_progress(&portal.member_id) {
        return Some(p);
    }
    let stored = tokio::time::timeout(
        Duration::from_secs(5),
        state
            .store
            .last_run_progress(&portal.member_id, state.config.run_stale_after),
    )
    .await;
    match stored {
        Ok(Ok(Some(run))) => {
            let p: Progress = serde_json::from_value(run.progress).unwrap_or_default();
            Some(if run.stale {
                p.into_interrupted(lang)
            } else {
                p
            })
        }
        Ok(Ok(None)) => state.runner.progress(&portal.member_id),
        // The store is unreachable: what this process remembers is better than nothing.
        Ok(Err(_)) | Err(_) => state.runner.progress(&portal.member_id),
    }
}

/// What the administrator must do when the OAuth server refused to refresh the portal's tokens.
fn token_problem(portal: &Portal, lang: Lang) -> Option<String> {
    let code = portal.refresh_refused.as_deref()?;
    Some(i18n::token_problem(lang, code))
}

/// The portal's active users for the "List of users" picker (`user.get`, at most 10 pages of 50).
pub async fn users(
    State(state): State<Arc<AppState>>,
    PageSession { portal, .. }: PageSession,
) -> ApiResult {
    let client = state
        .portal_client(&portal)
        .map_err(|e| ApiError::status(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let mut users = Vec::new();
    let mut start = 0u64;
    for _ in 0..10 {
        let r = client
            .call(
                "user.get",
                json!({"FILTER": {"ACTIVE": true}, "SORT": "ID", "ORDER": "ASC", "start": start}),
            )
            .await
            .map_err(|e| ApiError::status(StatusCode::BAD_GATEWAY, e.to_string()))?;
        if let Some(rows) = r.result.as_array() {
            for u in rows {
                let id = u.get("ID").and_then(b24sense_core::lenient::id);
                let name = [u.get("NAME"), u.get("LAST_NAME")]
                    .iter()
                    .filter_map(|v| v.and_then(|v| v.as_str()))
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                if let Some(id) = id {
                    users.push(json!({"id": id, "name": name}));
                }
            }
        }
        match r.next {
            Some(n) => start = n,
            None => break,
        }
    }
    Ok(Json(json!({"users": users})))
}

/// The per-call report: every ledger row of the portal as CSV, read page by page and streamed.
pub async fn report_csv(
    State(state): State<Arc<AppState>>,
    PageSession { portal, .. }: PageSession,
) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"b24sense-report.csv\"",
            ),
        ],
        axum::body::Body::from_stream(report::csv_stream(state.store.clone(), portal.member_id)),
    )
        .into_response()
}
