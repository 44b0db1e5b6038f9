//! The answers injected faults give instead of the portal's: its JSON errors, the proxy's HTML 502 page, a
//! broken JSON body. Not counted in the bytes sent.

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use serde_json::{json, Value};

use crate::bitrix24::reply::json_bytes;

/// The portal's error envelope, with a `time` object when given.
pub(super) fn json_error(
    status: u16,
    code: &str,
    description: &str,
    time: Option<Value>,
) -> Response<Body> {
    let mut body = json!({"error": code, "error_description": description});
    if let Some(t) = time {
        body["time"] = t;
    }
    json_bytes(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// 401 `expired_token`.
pub(super) fn expired_token() -> Response<Body> {
    json_error(
        401,
        "expired_token",
        "The access token provided has expired.",
        None,
    )
}

/// nginx's 502 page, as a proxy in front of the portal sends it.
pub(super) fn html_502() -> Response<Body> {
    let page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from(page))
        .unwrap_or_default()
}

/// A complete 200 answer whose JSON is broken (as a misbehaving proxy or a PHP notice before the JSON makes it).
pub(super) fn malformed_json() -> Response<Body> {
    let body = "<b>Notice</b>: Undefined index in /home/bitrix/www/rest.php\n{\"result\":{\"result\":{\"p00\":[{\"ID\":\"1\",,]";
    json_bytes(200, body)
}
