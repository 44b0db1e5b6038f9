//! Generates the call history: start times spread over the window with a working-hours bias, call types,
//! missed calls, CRM bindings, external PBX calls (some backdated), and recordings (MP3 or WAV, mono or stereo,
//! some reachable only through Disk).

use std::collections::HashMap;

use chrono::Duration as ChronoDuration;
use rand::rngs::StdRng;
use rand::Rng;

use super::call::CallRec;
use super::names::{hex_upper, phone, talk_seconds, REST_APPS};
use super::people::CrmKind;
use super::people_gen::People;
use crate::bitrix24::audio::{mp3_kbps, Container, RecordingSpec};
use crate::bitrix24::config::PortalConfig;

/// The generated calls, ascending by ID, with their lookups.
pub(super) struct Calls {
    pub(super) calls: Vec<CallRec>,
    /// Disk file id → index into `calls`.
    pub(super) files: HashMap<u64, usize>,
    /// CALL_ID → index into `calls`.
    pub(super) by_call_id: HashMap<String, usize>,
}

/// Draws the calls from `rng` (after the people they refer to).
pub(super) fn generate(cfg: &PortalConfig, rng: &mut StdRng, people: &People) -> Calls {
    let tz = cfg.utc_offset;
    let n_users = people.users.len() as u64;
    let (contacts, companies, leads) = (&people.contacts, &people.companies, &people.leads);
    // Start times: sorted, spread over the window with a working-hours bias.
    let window_secs = (i64::from(cfg.days.max(1)) * 86_400).max(1);
    let mut offsets: Vec<i64> = (0..cfg.calls)
        .map(|_| {
            let day = rng.random_range(0..i64::from(cfg.days.max(1)));
            let in_day = if rng.random_bool(0.85) {
                rng.random_range(9 * 3600..19 * 3600)
            } else {
                rng.random_range(0..86_400)
            };
            (day * 86_400 + in_day).min(window_secs - 1)
        })
        .collect();
    offsets.sort_unstable();

    let mut calls = Vec::with_capacity(cfg.calls);
    let mut files = HashMap::new();
    let mut by_call_id = HashMap::with_capacity(cfg.calls);
    let mut next_file_id = 9000u64;
    let mut next_activity = 7000u64;
    let mut big_assigned = false;
    for (i, off) in offsets.into_iter().enumerate() {
        let id = 1 + i as u64;
        let call_type: u8 = match rng.random_range(0..100) {
            0..=39 => 1,
            40..=84 => 2,
            85..=92 => 3,
            93..=97 => 4,
            _ => 5,
        };
        let rest_app = rng
            .random_bool(0.06)
            .then(|| REST_APPS[rng.random_range(0..REST_APPS.len())]);
        let mut start = cfg.start + ChronoDuration::seconds(off);
        if rest_app.is_some() && rng.random_bool(0.3) {
            // External PBXs report late and backdate: the row's ID is new, its start time older.
            start -= ChronoDuration::minutes(rng.random_range(30..600));
        }
        let start = start.with_timezone(&tz);
        let no_record = rng.random_bool(cfg.no_record_share.clamp(0.0, 1.0));
        let missed = no_record && rng.random_bool(0.7);
        let (failed_code, failed_reason, duration) = if missed {
            match rng.random_range(0..10) {
                0 => ("486", "Занято", 0),
                1 => ("603", "Отклонено", 0),
                _ => ("304", "Пропущенный звонок", 0),
            }
        } else {
            ("200", "", talk_seconds(rng))
        };
        let unix = start.timestamp();
        let call_id = if rest_app.is_some() {
            format!(
                "externalCall.{}.{unix}",
                hex_upper(rng, 32).to_ascii_lowercase()
            )
        } else {
            format!(
                "{}.{unix}.{}",
                hex_upper(rng, 16),
                rng.random_range(10_000_000..99_999_999u64)
            )
        };
        let crm = match rng.random_range(0..100) {
            0..=44 if !contacts.is_empty() => Some((
                CrmKind::Contact,
                rng.random_range(1..=contacts.len() as u64),
            )),
            45..=59 if !companies.is_empty() => Some((
                CrmKind::Company,
                rng.random_range(1..=companies.len() as u64),
            )),
            60..=79 if !leads.is_empty() => {
                Some((CrmKind::Lead, rng.random_range(1..=leads.len() as u64)))
            }
            _ => None,
        };
        let user = (call_type != 5).then(|| rng.random_range(1..=n_users));
        let record = if no_record || duration == 0 {
            None
        } else {
            let wav = rng.random_bool(cfg.wav_share.clamp(0.0, 1.0));
            let channels = if rng.random_bool(cfg.stereo_share.clamp(0.0, 1.0)) {
                2
            } else {
                1
            };
            let container = if wav { Container::Wav } else { Container::Mp3 };
            let mut bytes =
                container.natural_size(duration, channels, cfg.recording_bytes_per_second);
            if let Some(cap) = cfg.max_recording_bytes {
                bytes = container.capped(bytes, cap, channels, cfg.recording_bytes_per_second);
            }
            if let (Some(big), false) = (cfg.big_recording, big_assigned) {
                bytes = big.max(container.header_len() + 1);
                big_assigned = true;
            }
            next_file_id += 1 + rng.random_range(0..3);
            files.insert(next_file_id, i);
            Some(RecordingSpec {
                file_id: next_file_id,
                container,
                channels,
                bytes,
                disk_only: rng.random_bool(cfg.disk_only_share.clamp(0.0, 1.0)),
                seed: cfg.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                kbps: mp3_kbps(cfg.recording_bytes_per_second),
            })
        };
        let has_record = record.is_some();
        by_call_id.insert(call_id.clone(), i);
        let activity = crm.map(|_| {
            next_activity += 1 + rng.random_range(0..2);
            next_activity
        });
        calls.push(CallRec {
            id,
            user,
            portal_number: if rest_app.is_some() {
                format!("7495{:07}", rng.random_range(0..10_000_000u64))
            } else if rng.random_bool(0.7) {
                format!("reg{}", 1000 + rng.random_range(0..3) * 111)
            } else {
                format!("sip{}", rng.random_range(1..5))
            },
            phone: match rng.random_range(0..20) {
                0 => "hidden".to_string(),
                1 | 2 => format!("89{:09}", rng.random_range(0..1_000_000_000u64)),
                _ => phone(rng),
            },
            external_call_id: rest_app.map(|_| format!("pbx-{}", 500_000 + id * 7)),
            call_log: rest_app.is_none().then(|| {
                format!(
                    "https://storage-gw-ru-01.voximplant.com/voximplant-logs/2026/{}/{}.log",
                    id % 28 + 1,
                    call_id
                )
            }),
            call_id,
            duration,
            start,
            empty_url_is_null: rng.random_bool(0.5),
            vote: match rng.random_range(0..10) {
                0 => Some(5),
                1 => Some(4),
                2 => Some(0),
                _ => None,
            },
            cost: if call_type == 1 && duration > 0 {
                format!("{:.4}", duration as f64 / 60.0 * 1.5)
            } else {
                "0.0000".into()
            },
            failed_code,
            failed_reason,
            crm,
            unbound_id_zero: crm.is_none() && rng.random_bool(0.5),
            activity,
            rest_app,
            session_id: rest_app
                .is_none()
                .then(|| rng.random_range(1_000_000_000..4_000_000_000u64)),
            redial: (call_type == 4).then(|| rng.random_range(1..3)),
            comment: rng
                .random_bool(0.03)
                .then(|| "Перезвонить после обеда".to_string()),
            record_duration: (has_record && rng.random_bool(0.5)).then_some(duration),
            record,
            call_type,
        });
    }
    Calls {
        calls,
        files,
        by_call_id,
    }
}
