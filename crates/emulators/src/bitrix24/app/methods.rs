//! The application's REST methods: `event.bind`, `event.unbind`, `event.get` (OAuth only, as on the portal) and
//! `app.info` with `INSTALLED` for tokens of the application flow.

use serde_json::{json, Value};

use super::state::{Binding, CLIENT_ID};
use crate::bitrix24::error::ApiError;
use crate::bitrix24::methods::{Ctx, MethodOk};
use crate::bitrix24::params::P;
use crate::bitrix24::state::PortalState;

/// The application methods; `None` for every other method.
pub(crate) fn dispatch(
    inner: &PortalState,
    ctx: &Ctx,
    method: &str,
    p: &P,
) -> Option<Result<MethodOk, ApiError>> {
    let plain = |v: Value| Ok(MethodOk::plain(v));
    let app_only = || {
        Err(ApiError::new(
            401,
            "WRONG_AUTH_TYPE",
            "Current authorization type is denied for this method",
        ))
    };
    let text = |name: &str| p.text_ci(name);
    Some(match method {
        "event.bind" | "event.unbind" | "event.get" if ctx.webhook => app_only(),
        "event.bind" => {
            let event = text("event").to_ascii_uppercase();
            let handler = text("handler");
            if event.is_empty() {
                return Some(Err(ApiError::argument("event")));
            }
            let host = url::Url::parse(&handler)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string));
            match host {
                Some(h) if h.contains('.') => {}
                _ => {
                    return Some(Err(ApiError::new(
                        400,
                        "ERROR_WRONG_HANDLER_URL",
                        "Wrong handler URL",
                    )))
                }
            }
            let mut s = inner.app.lock();
            if s.bindings
                .iter()
                .any(|b| b.event == event && b.handler == handler)
            {
                return Some(Err(ApiError::new(
                    400,
                    "ERROR_CORE",
                    "Unable to set event handler: Handler already binded",
                )));
            }
            s.next_binding += 1;
            let id = s.next_binding;
            s.bindings.push(Binding { id, event, handler });
            plain(json!(true))
        }
        "event.unbind" => {
            let event = text("event").to_ascii_uppercase();
            let handler = text("handler");
            let mut s = inner.app.lock();
            let before = s.bindings.len();
            s.bindings
                .retain(|b| !(b.event == event && (handler.is_empty() || b.handler == handler)));
            plain(json!({"count": before - s.bindings.len()}))
        }
        "event.get" => {
            let s = inner.app.lock();
            plain(Value::Array(
                s.bindings
                    .iter()
                    .map(|b| json!({"event": b.event, "handler": b.handler, "auth_type": "0", "offline": 0}))
                    .collect(),
            ))
        }
        // Tokens from the application flow see the installation state; static test tokens keep `methods.rs`.
        "app.info" if ctx.cred.starts_with("app:") => {
            let installed = inner.app.lock().installed;
            plain(
                json!({"ID": "1", "CODE": CLIENT_ID, "VERSION": "1", "STATUS": "L", "INSTALLED": installed,
                "PAYMENT_EXPIRED": "N", "DAYS": null, "LANGUAGE_ID": "ru", "LICENSE": "ru_project",
                "LICENSE_TYPE": "project", "LICENSE_FAMILY": "project"}),
            )
        }
        _ => return None,
    })
}
