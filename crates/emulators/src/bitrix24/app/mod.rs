//! The application flow of the emulated portal: one local application with an install POST to the
//! application's handler (only the documented frame fields unless `set_frame_extras`; the application token comes
//! with `ONAPPINSTALL` after `BX24.installFinish()`), the OAuth token endpoint (its answer names the portal the
//! refresh token was issued for: `member_id`, `client_endpoint`, `server_endpoint`) (`GET /oauth/token/`, refresh-token rotation: a used refresh
//! token and its access token die; expired access tokens answer `expired_token`), `event.bind`/`event.get`/
//! `event.unbind`, event delivery to bound handlers (form-encoded, at most once, only after the installation is
//! finished), `app.info` with `INSTALLED`, and uninstall.
//!
//! The emulator is its own OAuth server: `server_endpoint` is `{base}oauth/rest/`, so the token URL
//! (server origin + `/oauth/token/`) is on the same listener.
//!
//! The parts:
//! - `state`: the application's state (tokens, bindings, installed) and checking the tokens it issued.
//! - `methods`: its REST methods; `oauth`: the token endpoint.
//! - `frame`: opening and installing the application ([`FrameRequest`], [`AppInstall`]).
//! - `events`: events sent to its handlers.

mod events;
mod frame;
mod methods;
mod oauth;
mod state;

pub(crate) use events::{activity_update_data, send_event_in};
pub(crate) use frame::{app_frame, sdk_stub};
pub use frame::{AppInstall, FrameRequest};
pub(crate) use methods::dispatch;
pub(crate) use oauth::oauth_token;
pub(crate) use state::{authorize, download_auth_ok, AppState};
