//! Authentication errors and unknown methods.

use b24sense_emulators::bitrix24::PortalConfig;
use serde_json::{json, Value};

use crate::support::{call_json, client, emu, roomy};

#[tokio::test]
async fn auth_errors_and_unknown_methods() {
    let e = emu(PortalConfig {
        calls: 10,
        ..roomy()
    })
    .await;
    let c = client();
    let base = e.base_url();
    let invalid = ("INVALID_CREDENTIALS", "Invalid request credentials");
    let no_auth = ("NO_AUTH_FOUND", "Wrong authorization data");
    for (case, path, (error, description)) in [
        ("wrong secret", "rest/1/wrongsecret/profile", invalid),
        (
            "another user's webhook",
            "rest/2/emulatorsecret0001/profile",
            invalid,
        ),
        (
            "unknown token, none configured",
            "rest/profile.json?auth=abc",
            no_auth,
        ),
    ] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{case}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"error": error, "error_description": description}),
            "{case}"
        );
    }
    let (st, v) = call_json(&e, "no.such.method", json!({})).await;
    assert_eq!(
        (st, v),
        (
            404,
            json!({"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"})
        )
    );
    let (st, v) = call_json(&e, "PROFILE.json", json!({})).await;
    assert_eq!(st, 200, "method names are case-insensitive");
    assert_eq!(v["result"]["ADMIN"], json!(true));
    assert_eq!(v["result"]["ID"], "1");

    let e2 = emu(PortalConfig {
        calls: 10,
        access_tokens: vec!["tok1".into()],
        ..roomy()
    })
    .await;
    let base = e2.base_url();
    let r = c
        .get(format!("{base}rest/app.info"))
        .bearer_auth("tok1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["result"]["INSTALLED"],
        json!(true)
    );
    let r = c
        .post(format!("{base}rest/scope.json"))
        .form(&[("auth", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_token");
}
