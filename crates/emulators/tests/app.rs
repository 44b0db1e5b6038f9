//! The emulated application flow over real sockets: install POST to the app's handler, OAuth refresh with
//! rotation and expiry, event.bind/event.get, event delivery, app.info and uninstall.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, RawQuery};
use axum::routing::post;
use axum::Router;
use b24sense_emulators::bitrix24::{Bitrix24Emulator, PortalConfig};
use serde_json::Value;

type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// A stand-in application: records every POST and answers the install with `BX24.installFinish()`.
async fn app_server() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let router = Router::new().route(
        "/{*path}",
        post(
            move |RawQuery(q): RawQuery, Form(form): Form<Vec<(String, String)>>| {
                let s = s.clone();
                async move {
                    s.lock().unwrap().push((q.unwrap_or_default(), form));
                    "<script>BX24.installFinish();</script>"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/"), seen)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn get<'a>(form: &'a [(String, String)], k: &str) -> &'a str {
    form.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

async fn rest(emu: &Bitrix24Emulator, method: &str, token: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}rest/{method}.json", emu.base_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn refresh(emu: &Bitrix24Emulator, refresh_token: &str) -> (u16, Value) {
    let (id, secret) = emu.app_credentials();
    token_grant(emu, id, secret, refresh_token).await
}

/// `GET /oauth/token/` with a refresh grant as this client.
async fn token_grant(
    emu: &Bitrix24Emulator,
    id: &str,
    secret: &str,
    refresh_token: &str,
) -> (u16, Value) {
    let r = client()
        .get(format!("{}oauth/token/", emu.base_url()))
        .query(&[
            ("grant_type", "refresh_token"),
            ("client_id", id),
            ("client_secret", secret),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn install_oauth_events_uninstall() {
    let emu = Bitrix24Emulator::start(PortalConfig {
        calls: 20,
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let (app, seen) = app_server().await;

    // The application binds ONAPPINSTALL while installing (here with a token of an earlier frame).
    let early = emu.app_frame_request(1, "ru");
    let (st, _) = rest(
        &emu,
        "event.bind",
        get(&early.form, "AUTH_ID"),
        serde_json::json!({"event": "ONAPPINSTALL", "handler": format!("{app}install")}),
    )
    .await;
    assert_eq!(st, 200);

    // Install: the form reaches the handler with tokens and identity, only the documented fields; the answer
    // finishes the install, and then ONAPPINSTALL brings the application token and the installer's tokens.
    assert!(!emu.app_installed());
    let done = emu
        .install_app(&format!("{app}install"), "ru")
        .await
        .unwrap();
    assert!(done.installed, "{done:?}");
    assert_eq!(done.install_event, vec![200]);
    assert!(emu.app_installed());
    let (query, form) = seen.lock().unwrap()[0].clone();
    assert!(query.contains("DOMAIN=127.0.0.1"), "{query}");
    assert_eq!(get(&form, "member_id"), emu.app_member_id());
    for undocumented in ["APPLICATION_TOKEN", "SERVER_ENDPOINT", "APPLICATION_SCOPE"] {
        assert!(form.iter().all(|(k, _)| k != undocumented), "{form:?}");
    }
    let (_, ev) = seen.lock().unwrap()[1].clone();
    assert_eq!(get(&ev, "event"), "ONAPPINSTALL");
    assert_eq!(
        get(&ev, "auth[application_token]"),
        emu.app_application_token()
    );
    assert_eq!(get(&ev, "auth[member_id]"), emu.app_member_id());
    // The event's refresh token is the installer's: the OAuth server names the portal for it.
    let (st, t) = refresh(&emu, get(&ev, "auth[refresh_token]")).await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["member_id"], emu.app_member_id());
    assert_eq!(t["client_endpoint"], format!("{}rest/", emu.base_url()));
    // Portals that also send the undocumented fields (the legacy option).
    emu.set_frame_extras(true);
    let legacy = emu.app_frame_request(1, "ru");
    assert_eq!(
        get(&legacy.form, "APPLICATION_TOKEN"),
        emu.app_application_token()
    );
    assert_eq!(
        get(&legacy.form, "SERVER_ENDPOINT"),
        emu.app_server_endpoint()
    );
    emu.set_frame_extras(false);
    let access = get(&form, "AUTH_ID").to_string();
    let refresh_id = get(&form, "REFRESH_ID").to_string();

    // REST with the access token; app.info says installed; profile names the admin.
    let (st, v) = rest(&emu, "app.info", &access, Value::Null).await;
    assert_eq!(st, 200);
    assert_eq!(v["result"]["INSTALLED"], true);
    let (_, v) = rest(&emu, "profile", &access, Value::Null).await;
    assert_eq!(v["result"]["ADMIN"], true);

    // Refresh rotates: new pair works, the old refresh token and its access token are dead.
    let (st, t) = refresh(&emu, &refresh_id).await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["member_id"], emu.app_member_id());
    let access2 = t["access_token"].as_str().unwrap().to_string();
    assert_ne!(access2, access);
    let (st, v) = refresh(&emu, &refresh_id).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_grant")));
    let (st, _) = rest(&emu, "profile", &access, Value::Null).await;
    assert_eq!(st, 401);
    assert_eq!(emu.oauth_refreshes(), (2, 1));
    // A wrong client secret is refused.
    let (st, _) = token_grant(&emu, "x", "y", t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(st, 401);

    // event.bind (app only), duplicate refused, event.get lists it.
    let handler = format!("{app}events");
    let bind = serde_json::json!({"event": "OnVoximplantCallEnd", "handler": handler});
    let (st, v) = rest(&emu, "event.bind", &access2, bind.clone()).await;
    assert_eq!((st, &v["result"]), (200, &Value::Bool(true)), "{v}");
    let (st, v) = rest(&emu, "event.bind", &access2, bind).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("ERROR_CORE")));
    let (_, v) = rest(&emu, "event.get", &access2, Value::Null).await;
    assert_eq!(v["result"][1]["event"], "ONVOXIMPLANTCALLEND");
    let wh = client()
        .post(format!("{}event.bind.json", emu.webhook_url()))
        .json(&serde_json::json!({"event": "ONAPPUNINSTALL", "handler": handler}))
        .send()
        .await
        .unwrap();
    assert_eq!(wh.status().as_u16(), 401);
    let (st, _) = rest(
        &emu,
        "event.bind",
        &access2,
        serde_json::json!({"event": "ONAPPUNINSTALL", "handler": format!("{app}uninstall")}),
    )
    .await;
    assert_eq!(st, 200);

    // Call-end event: data without ID or recording fields, auth with the application token.
    let row = emu.call_rows()[3].clone();
    let id: u64 = row["ID"].as_str().unwrap().parse().unwrap();
    assert_eq!(emu.send_call_end(id).await, Some(vec![200]));
    let (_, ev) = seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(get(&ev, "event"), "ONVOXIMPLANTCALLEND");
    assert_eq!(get(&ev, "data[CALL_ID]"), row["CALL_ID"].as_str().unwrap());
    assert_eq!(
        get(&ev, "auth[application_token]"),
        emu.app_application_token()
    );
    assert!(ev
        .iter()
        .all(|(k, _)| k != "data[ID]" && k != "data[CALL_RECORD_URL]"));

    // Expired access tokens answer expired_token.
    emu.expire_access_tokens();
    let (st, v) = rest(&emu, "profile", &access2, Value::Null).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("expired_token")));

    // Uninstall: ONAPPUNINSTALL without tokens, then no more events and no tokens.
    assert_eq!(emu.uninstall_app(true).await, vec![200]);
    let (_, ev) = seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(get(&ev, "event"), "ONAPPUNINSTALL");
    assert_eq!(get(&ev, "data[CLEAN]"), "1");
    assert!(ev.iter().all(|(k, _)| k != "auth[access_token]"));
    assert!(!emu.app_installed());
    assert!(emu.event_bindings().is_empty());
    assert_eq!(emu.send_call_end(id).await, Some(vec![]));
}
