//! A Bitrix24 portal emulator: the REST API b24sense uses (call history, users, CRM, Disk downloads, the
//! application flow; `docs/mapping.md` says what b24sense reads from it) over a generated, deterministic portal,
//! with the portal's quirks (string numbers, `RECORD_FILE_ID` as a number, nulls, `[]` for empty maps, exact
//! error envelopes and statuses), its leaky bucket and operating-time limiter, `batch` with `$result[...]`
//! references, recordings generated while streaming, and fault injection.
//!
//! Routes: `/rest/{uid}/{secret}/{method}[.json]` (webhook), `/rest/{method}[.json]` (OAuth token),
//! `/rest/download.json` (Disk downloads), `/records/{CALL_ID}.{ext}` (the "external" recording host, never
//! rate-limited), `/oauth/token/` (the OAuth server of the application flow), `/_emulator/stats`.
//!
//! The parts:
//! - `config`: what portal to generate and how it behaves ([`PortalConfig`], [`OperatingConfig`]).
//! - `emulator`: the running emulator ([`Bitrix24Emulator`]) that tests hold, and [`serve_forever`].
//! - `state`: the running portal's shared state and one method call under the operating limiter.
//! - `server`: listeners, the fault layer in front of the routes, the route table, `/_emulator/stats`.
//! - `rest`: the REST routes (credentials, parameters, bucket, envelope); `reply`: JSON answers.
//! - `methods`: the REST methods; `batch`: `batch`; `filter` and `params`: `FILTER`/`ORDER` and PHP parameters.
//! - `recordings`: [`RecordingInfo`], Disk download links and the two download routes; `audio`: the bytes.
//! - `app`: the application flow (install, OAuth, events; [`AppInstall`], [`FrameRequest`]).
//! - `data`: the generated portal (users, CRM, calls); `live`: calls still to come, recordings attached late.
//! - `openlines`: Open Lines chats (sessions, their CRM activities and histories; [`OpenLinesConfig`]).
//! - `faults`: fault injection ([`FaultConfig`], [`fault_kind`]); `limits`: the bucket and operating-time limiter.
//! - `stats`: the counters ([`PortalStats`]); `error`: the REST error; `clock`: time and the portal's date format.

mod app;
mod audio;
mod batch;
mod clock;
mod config;
mod data;
mod emulator;
mod error;
mod faults;
mod filter;
mod limits;
mod live;
mod methods;
mod openlines;
mod params;
mod recordings;
mod reply;
mod rest;
mod server;
mod state;
mod stats;

pub use app::{AppInstall, FrameRequest};
pub use config::{OperatingConfig, PortalConfig};
pub use emulator::{serve_forever, Bitrix24Emulator};
pub use faults::{kind as fault_kind, FaultConfig};
pub use openlines::{ChatSessionInfo, OpenLinesConfig};
pub use recordings::RecordingInfo;
pub use stats::PortalStats;
