//! The running emulator ([`Bitrix24Emulator`]): starts the portal's two listeners (the portal and the "external"
//! recording host), and is what tests hold to read and steer the portal; [`serve_forever`] for the CLI.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;

use super::config::PortalConfig;
use super::data::{self, CrmKind};
use super::faults::FaultConfig;
use super::recordings::RecordingInfo;
use super::server::{accept_loop, router};
use super::state::PortalState;
use super::stats::PortalStats;

/// A running emulator. Dropping it (or [`Bitrix24Emulator::shutdown`]) stops the server.
pub struct Bitrix24Emulator {
    pub(crate) inner: Arc<PortalState>,
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Bitrix24Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitrix24Emulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Bitrix24Emulator {
    /// Generates the portal and serves it on 127.0.0.1 with an OS-chosen port.
    pub async fn start(config: PortalConfig) -> std::io::Result<Bitrix24Emulator> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(
        config: PortalConfig,
        addr: SocketAddr,
    ) -> std::io::Result<Bitrix24Emulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Bound to 0.0.0.0/[::]: advertise loopback, which always reaches it from this host.
        let shown = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        let base = format!("http://{shown}/");
        let records_listener = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
        let records_base = format!(
            "http://{}:{}/",
            shown.ip(),
            records_listener.local_addr()?.port()
        );
        // Generating 100,000 calls takes a moment: keep it off the async workers.
        let cfg = config.clone();
        let data = tokio::task::spawn_blocking(move || data::generate(&cfg))
            .await
            .map_err(|e| std::io::Error::other(format!("portal generation failed: {e}")))?;
        let inner = Arc::new(PortalState::new(config, data, base, records_base));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let records_task = tokio::spawn(accept_loop(
            records_listener,
            router(inner.clone()),
            inner.clone(),
            stop_rx.clone(),
        ));
        let portal_task = tokio::spawn(accept_loop(
            listener,
            router(inner.clone()),
            inner.clone(),
            stop_rx,
        ));
        let task = tokio::spawn(async move {
            let _ = tokio::join!(records_task, portal_task);
        });
        Ok(Bitrix24Emulator {
            inner,
            addr,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&self.inner.base).expect("base URL is valid")
    }

    /// `http://127.0.0.1:OTHER_PORT/`: the "external" host `CALL_RECORD_URL`s point to (not the portal's bucket).
    pub fn records_base_url(&self) -> url::Url {
        url::Url::parse(&self.inner.records_base).expect("records URL is valid")
    }

    /// `http://127.0.0.1:PORT/rest/{user}/{secret}/` — contains the secret: do not log it.
    pub fn webhook_url(&self) -> String {
        format!(
            "{}rest/{}/{}/",
            self.inner.base, self.inner.config.webhook_user, self.inner.config.webhook_secret
        )
    }

    pub fn config(&self) -> &PortalConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> PortalStats {
        self.inner.stats_snapshot()
    }

    pub fn reset_stats(&self) {
        self.inner.reset_stats();
    }

    /// Replaces the fault settings (and restarts the fault counters).
    pub fn set_faults(&self, faults: FaultConfig) {
        self.inner.faults.set(faults);
    }

    /// The fault settings as they stand ("next N" counts used up so far).
    pub fn faults(&self) -> FaultConfig {
        self.inner.faults.current()
    }

    /// Every call exactly as `voximplant.statistic.get` returns it, ascending ID.
    pub fn call_rows(&self) -> Vec<Value> {
        let live = self.inner.live.view();
        live.visible(&self.inner.data.calls)
            .iter()
            .map(|c| live.row(c).to_json(&self.inner.records_base))
            .collect()
    }

    /// From now on only calls with statistic `ID` ≤ `id` exist: the later ones have not happened yet.
    pub fn hide_calls_after(&self, id: u64) {
        self.inner.live.hide_after(id);
    }

    /// Calls up to `id` end (their rows appear); send `send_call_end` for them to play the portal's events.
    pub fn reveal_calls_up_to(&self, id: u64) {
        self.inner.live.reveal_up_to(id);
    }

    /// The call's row shows no recording (no `CALL_RECORD_URL`, no `RECORD_FILE_ID`) until
    /// [`attach_recording`](Self::attach_recording), like a recording the portal attaches late.
    pub fn withhold_recording(&self, call_stat_id: u64) {
        self.inner.live.withhold(call_stat_id);
    }

    /// Attaches a withheld recording (no event fires, as with `telephony.externalCall.attachRecord`).
    /// False when it was not withheld.
    pub fn attach_recording(&self, call_stat_id: u64) -> bool {
        self.inner.live.attach(call_stat_id)
    }

    /// The recording of the call with this statistic `ID` (computes its SHA-256 on first use).
    pub fn recording(&self, call_stat_id: u64) -> Option<RecordingInfo> {
        let idx = self
            .inner
            .data
            .calls
            .binary_search_by_key(&call_stat_id, |c| c.id)
            .ok()?;
        self.inner.recording_info(idx)
    }

    /// `(NAME, LAST_NAME)` of a user.
    pub fn user_name(&self, id: u64) -> Option<(String, String)> {
        self.inner
            .data
            .user_by_id(id)
            .map(|u| (u.name.clone(), u.last_name.clone()))
    }
    /// The record's display name as `docs/mapping.md` builds `client_name`: contact → `NAME LAST_NAME`;
    /// company/deal → `TITLE`; lead → `TITLE`, or `NAME LAST_NAME` when the title is empty (some are).
    /// `kind`: CONTACT, COMPANY, LEAD, DEAL (any case).
    pub fn crm_title(&self, kind: &str, id: u64) -> Option<String> {
        let kind = CrmKind::parse(kind)?;
        let r = self.inner.data.crm_by_id(kind, id)?;
        let person = format!("{} {}", r.name, r.last_name).trim().to_string();
        Some(match kind {
            CrmKind::Contact => person,
            CrmKind::Lead if r.title.trim().is_empty() => person,
            _ => r.title.clone(),
        })
    }

    /// The raw CRM record as `crm.<kind>.get` returns it.
    pub fn crm_record(&self, kind: &str, id: u64) -> Option<Value> {
        let kind = CrmKind::parse(kind)?;
        self.inner.data.crm_by_id(kind, id).map(|r| r.to_json())
    }

    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Bitrix24Emulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// Runs an emulator until Ctrl-C, printing its webhook URL (for `b24sense emulate bitrix24`).
pub async fn serve_forever(config: PortalConfig, addr: SocketAddr) -> std::io::Result<()> {
    let calls = config.calls;
    let emu = Bitrix24Emulator::start_on(config, addr).await?;
    println!("Bitrix24 emulator: {calls} calls");
    println!("webhook URL: {}", emu.webhook_url());
    println!("stats: {}_emulator/stats", emu.base_url());
    tokio::signal::ctrl_c().await?;
    emu.shutdown();
    Ok(())
}
