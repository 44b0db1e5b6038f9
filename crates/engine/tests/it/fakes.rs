//! In-memory stand-ins for the engine's ports, scriptable per test.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use b24sense_core::{
    Call, CallFilter, Container, CrmEntityType, CrmInfo, CrmRef, ErrorClass, TalkFields, UserInfo,
};
use b24sense_engine::ports::{CallPage, CallSource, Classified, Names, Recording, TalkSink};
use bytes::Bytes;
use chrono::FixedOffset;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use serde_json::json;
use url::Url;

#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct FakeError {
    pub class: ErrorClass,
    pub msg: String,
}

impl Classified for FakeError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

fn err(class: ErrorClass, msg: &str) -> FakeError {
    FakeError {
        class,
        msg: msg.into(),
    }
}

/// A 16-bit PCM WAV file with `channels` channels and `samples` frames of a simple pattern.
pub fn wav(channels: u16, samples: u32, seed: u8) -> Vec<u8> {
    let rate = 8000u32;
    let data = samples * u32::from(channels) * 2;
    let mut v = b"RIFF".to_vec();
    v.extend((36 + data).to_le_bytes());
    v.extend(b"WAVEfmt ");
    v.extend(16u32.to_le_bytes());
    v.extend(1u16.to_le_bytes());
    v.extend(channels.to_le_bytes());
    v.extend(rate.to_le_bytes());
    v.extend((rate * u32::from(channels) * 2).to_le_bytes());
    v.extend((channels * 2).to_le_bytes());
    v.extend(16u16.to_le_bytes());
    v.extend(b"data");
    v.extend(data.to_le_bytes());
    v.extend((0..data).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    v
}

pub fn call(id: u64, record_url: Option<&str>, file_id: Option<u64>) -> Call {
    let row = json!({
        "ID": id.to_string(), "PORTAL_USER_ID": (id % 3 + 1).to_string(), "PHONE_NUMBER": format!("+7900{id:07}"),
        "CALL_ID": format!("call.{id}"), "CALL_DURATION": "45", "CALL_START_DATE": "2025-03-01T10:00:00+03:00",
        "CALL_TYPE": if id.is_multiple_of(2) { "1" } else { "2" }, "CALL_RECORD_URL": record_url.unwrap_or(""),
        "RECORD_FILE_ID": file_id, "CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": (100 + id % 5).to_string(),
    });
    Call::from_bitrix(&row, FixedOffset::east_opt(3 * 3600).unwrap()).unwrap()
}

/// How a download of one URL behaves.
#[derive(Clone)]
pub enum Download {
    Bytes(Vec<u8>),
    /// 404-like: permanent.
    Dead,
    /// Yields the first half, then an error — the first `n` times.
    BreaksMidway(Vec<u8>, u32),
    /// Waits this long before it starts, as behind a rate limiter, and says so (`Recording::queued`).
    Queued(Vec<u8>, Duration),
}

#[derive(Default)]
pub struct FakeSource {
    pub calls: Vec<Call>,
    pub downloads: Mutex<HashMap<String, Download>>,
    pub disk: HashMap<u64, String>,
    pub list_requests: AtomicU64,
    pub lookup_requests: AtomicU64,
    pub resolve_requests: AtomicU64,
    pub resolved_ids: Mutex<Vec<usize>>,
    pub fatal_listing: bool,
}

impl FakeSource {
    pub fn rec_url(id: u64) -> String {
        format!("http://recordings.test/rec/{id}.wav")
    }

    pub fn disk_url(file_id: u64) -> String {
        format!("http://portal.test/rest/download.json?token=disk|{file_id}")
    }

    /// `n` calls: every 5th has no recording, every 7th only a Disk file, the rest a direct URL (plus a Disk file).
    pub fn portal(n: u64) -> FakeSource {
        let mut source = FakeSource::default();
        let mut downloads = HashMap::new();
        for id in 1..=n {
            let file_id = 9000 + id;
            let audio = wav(2, 800 + id as u32, id as u8);
            let c = if id % 5 == 0 {
                call(id, None, None)
            } else if id % 7 == 0 {
                source.disk.insert(file_id, Self::disk_url(file_id));
                downloads.insert(Self::disk_url(file_id), Download::Bytes(audio));
                call(id, None, Some(file_id))
            } else {
                source.disk.insert(file_id, Self::disk_url(file_id));
                downloads.insert(Self::rec_url(id), Download::Bytes(audio.clone()));
                downloads.insert(Self::disk_url(file_id), Download::Bytes(audio));
                call(id, Some(&Self::rec_url(id)), Some(file_id))
            };
            source.calls.push(c);
        }
        source.downloads = Mutex::new(downloads);
        source
    }

    pub fn set_download(&self, url: &str, d: Download) {
        self.downloads.lock().unwrap().insert(url.to_string(), d);
    }

    pub fn audio_of(&self, url: &str) -> Vec<u8> {
        match self.downloads.lock().unwrap().get(url) {
            Some(Download::Bytes(b))
            | Some(Download::BreaksMidway(b, _))
            | Some(Download::Queued(b, _)) => b.clone(),
            _ => panic!("no audio for {url}"),
        }
    }
}

impl CallSource for FakeSource {
    type Error = FakeError;

    async fn calls_by_id(&self, ids: &[u64]) -> Result<CallPage, FakeError> {
        self.list_requests.fetch_add(1, Ordering::SeqCst);
        let calls: Vec<Call> = self
            .calls
            .iter()
            .filter(|c| ids.contains(&c.id))
            .cloned()
            .collect();
        Ok(CallPage {
            last_id: calls.last().map(|c| c.id),
            calls,
            exhausted: true,
            bad_rows: vec![],
        })
    }

    async fn list_calls(&self, filter: &CallFilter, after_id: u64) -> Result<CallPage, FakeError> {
        self.list_requests.fetch_add(1, Ordering::SeqCst);
        if self.fatal_listing {
            return Err(err(
                ErrorClass::Fatal,
                "INVALID_CREDENTIALS: Invalid request credentials",
            ));
        }
        // Pages of 120 to exercise several listing rounds.
        let calls: Vec<Call> = self
            .calls
            .iter()
            .filter(|c| c.id > after_id && filter.matches(c))
            .take(120)
            .cloned()
            .collect();
        let exhausted = calls.len() < 120;
        Ok(CallPage {
            last_id: calls.last().map(|c| c.id),
            calls,
            exhausted,
            bad_rows: vec![],
        })
    }

    async fn lookup(&self, users: &[u64], crm: &[CrmRef]) -> Result<Names, FakeError> {
        self.lookup_requests.fetch_add(1, Ordering::SeqCst);
        let mut names = Names::default();
        for &u in users {
            names.users.insert(
                u,
                UserInfo {
                    id: u,
                    name: Some(format!("Op{u}")),
                    last_name: Some("Test".into()),
                },
            );
        }
        for r in crm {
            assert_eq!(r.kind, CrmEntityType::Contact);
            names.crm.insert(
                r.clone(),
                CrmInfo {
                    entity: r.clone(),
                    title: None,
                    name: Some(format!("Client{}", r.id)),
                    last_name: None,
                },
            );
        }
        Ok(names)
    }

    async fn resolve_files(
        &self,
        file_ids: &[u64],
    ) -> Result<HashMap<u64, Result<Url, String>>, FakeError> {
        self.resolve_requests.fetch_add(1, Ordering::SeqCst);
        self.resolved_ids.lock().unwrap().push(file_ids.len());
        assert!(
            file_ids.len() <= 50,
            "disk.file.get batches hold at most 50 commands"
        );
        Ok(file_ids
            .iter()
            .map(|id| {
                let r = self
                    .disk
                    .get(id)
                    .map(|u| Url::parse(u).unwrap())
                    .ok_or_else(|| "ERROR_NOT_FOUND".to_string());
                (*id, r)
            })
            .collect())
    }

    async fn download(&self, url: &Url) -> Result<Recording, FakeError> {
        let queued = match self.downloads.lock().unwrap().get(url.as_str()) {
            Some(Download::Queued(b, wait)) => Some((b.clone(), *wait)),
            _ => None,
        };
        if let Some((b, wait)) = queued {
            tokio::time::sleep(wait).await;
            let mut recording = self.download_bytes(b)?;
            recording.queued = wait;
            return Ok(recording);
        }
        let mut map = self.downloads.lock().unwrap();
        let d = map.get_mut(url.as_str()).cloned();
        match d {
            None | Some(Download::Dead) => Err(err(ErrorClass::Permanent, "HTTP 404")),
            Some(Download::Bytes(b)) => self.download_bytes(b),
            Some(Download::Queued(..)) => unreachable!("answered above"),
            Some(Download::BreaksMidway(b, n)) => {
                if n == 0 {
                    map.insert(url.to_string(), Download::Bytes(b.clone()));
                    drop(map);
                    return self.download_bytes(b);
                }
                map.insert(url.to_string(), Download::BreaksMidway(b.clone(), n - 1));
                let half = Bytes::copy_from_slice(&b[..b.len() / 2]);
                let items: Vec<Result<Bytes, String>> =
                    vec![Ok(half), Err("connection reset".into())];
                Ok(Recording {
                    content_length: Some(b.len() as u64),
                    bytes: stream::iter(items).boxed(),
                    queued: Duration::ZERO,
                })
            }
        }
    }
}

impl FakeSource {
    fn download_bytes(&self, b: Vec<u8>) -> Result<Recording, FakeError> {
        Ok(Recording {
            content_length: Some(b.len() as u64),
            bytes: stream::iter(
                b.chunks(1000)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            )
            .boxed(),
            queued: Duration::ZERO,
        })
    }
}

/// How the next upload behaves.
#[derive(Clone, Copy, Debug)]
pub enum Upload {
    Store,
    /// Fail before storing anything.
    Fail(ErrorClass),
    /// Store the talk, then report an in-doubt error (lost response).
    StoreThenInDoubt,
}

#[derive(Debug, Clone)]
pub struct Talk {
    pub id: String,
    pub connection_id: String,
    pub fields: TalkFields,
    pub container: Container,
    pub audio: Vec<u8>,
}

#[derive(Default)]
pub struct FakeSink {
    pub talks: Mutex<Vec<Talk>>,
    pub script: Mutex<VecDeque<Upload>>,
    pub searchable: bool,
    pub uploads: AtomicU64,
    /// Time each upload takes after the audio is read.
    pub delay: std::time::Duration,
}

impl FakeSink {
    pub fn with_script(script: &[Upload], searchable: bool) -> FakeSink {
        FakeSink {
            script: Mutex::new(script.iter().copied().collect()),
            searchable,
            ..Default::default()
        }
    }

    pub fn talks(&self) -> Vec<Talk> {
        self.talks.lock().unwrap().clone()
    }

    /// Talks per Bitrix24 call ID.
    pub fn per_call(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for t in self.talks() {
            *m.entry(t.fields["id"].clone()).or_default() += 1;
        }
        m
    }
}

impl TalkSink for FakeSink {
    type Error = FakeError;

    async fn upload_audio(
        &self,
        connection_id: &str,
        fields: &TalkFields,
        container: Container,
        mut audio: BoxStream<'static, Result<Bytes, String>>,
    ) -> Result<String, FakeError> {
        self.uploads.fetch_add(1, Ordering::SeqCst);
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Upload::Store);
        let mut bytes = Vec::new();
        while let Some(chunk) = audio.next().await {
            match chunk {
                Ok(c) => bytes.extend_from_slice(&c),
                Err(e) => {
                    return Err(err(
                        ErrorClass::Retryable { after: None },
                        &format!("source failed: {e}"),
                    ))
                }
            }
        }
        tokio::time::sleep(self.delay).await;
        if let Upload::Fail(class) = step {
            return Err(err(class, &format!("scripted failure {class:?}")));
        }
        let mut talks = self.talks.lock().unwrap();
        let id = format!("aud{:05}", talks.len() + 1);
        talks.push(Talk {
            id: id.clone(),
            connection_id: connection_id.into(),
            fields: fields.clone(),
            container,
            audio: bytes,
        });
        match step {
            Upload::StoreThenInDoubt => Err(err(
                ErrorClass::InDoubt,
                "DEADLINE_EXCEEDED after the stream was sent",
            )),
            _ => Ok(id),
        }
    }

    async fn find_talks(
        &self,
        connection_id: &str,
        call_id: u64,
    ) -> Result<Option<Vec<String>>, FakeError> {
        if !self.searchable {
            return Ok(None);
        }
        let ids = self
            .talks()
            .into_iter()
            .filter(|t| t.connection_id == connection_id && t.fields["id"] == call_id.to_string())
            .map(|t| t.id)
            .collect();
        Ok(Some(ids))
    }
}
