//! Errors that are retried (query limit, HTML 502, truncated JSON), bounded retries and typed final errors.

use b24sense_bitrix24::*;
use b24sense_core::ErrorClass;
use serde_json::json;

use crate::mock::{bounded, spawn_mock, webhook_client, Reply};

#[tokio::test]
async fn query_limit_exceeded_is_retried_and_counted() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.push(Reply::Json(
            503,
            json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
        ));
        mock.push(Reply::Json(
            503,
            json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
        ));
        mock.ok(json!(true));
        let c = webhook_client(addr);
        let r = c.call("app.info", json!({})).await.unwrap();
        assert_eq!(r.result, json!(true));
        let s = c.stats();
        assert_eq!((s.requests, s.rate_limited, s.retries), (3, 2, 2));
        assert_eq!(
            mock.seen()[2].body,
            mock.seen()[0].body,
            "same body re-sent"
        );
    })
    .await
}

#[tokio::test]
async fn retries_are_bounded_and_final_error_is_typed() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        for _ in 0..4 {
            mock.push(Reply::Json(500, json!({"error": "INTERNAL_SERVER_ERROR", "error_description": "x"})));
        }
        let c = webhook_client(addr);
        let e = c.call("profile", json!({})).await.unwrap_err();
        assert_eq!(e.api_code(), Some("INTERNAL_SERVER_ERROR"));
        assert!(e.class().is_retryable());
        assert_eq!(c.stats().requests, 4, "max_attempts");

        // Non-transient errors are not retried; empty codes are classified by description.
        mock.push(Reply::Json(400, json!({"error": "", "error_description": "Not found"})));
        let e = c.call("crm.contact.get", json!({"id": 1})).await.unwrap_err();
        let Error::Api(api) = &e else { panic!("{e:?}") };
        assert_eq!(api.kind(), ApiErrorKind::NotFound);
        assert_eq!(api.status, 400);
        assert_eq!(e.class(), ErrorClass::Permanent);
        mock.push(Reply::Json(401, json!({"error": "INVALID_CREDENTIALS", "error_description": "Invalid request credentials"})));
        let e = c.call("profile", json!({})).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert!(!e.to_string().contains("s3cr3tw3bh00k"));
        assert_eq!(c.stats().requests, 6);
    })
    .await
}

#[tokio::test]
async fn html_502_and_truncated_json_are_retried() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.push(Reply::Raw(
            502,
            "text/html",
            b"<html><body>502 Bad Gateway</body></html>".to_vec(),
        ));
        mock.push(Reply::Raw(
            200,
            "application/json",
            br#"{"result": [1, 2"#.to_vec(),
        ));
        mock.ok(json!([1, 2, 3]));
        let c = webhook_client(addr);
        assert_eq!(
            c.call("scope", json!({})).await.unwrap().result,
            json!([1, 2, 3])
        );
        assert_eq!(c.stats().retries, 2);

        // An HTML 404 is not a Bitrix24 endpoint at all: no retry, the run stops.
        mock.push(Reply::Raw(404, "text/html", b"<html>nginx</html>".to_vec()));
        let e = c.call("scope", json!({})).await.unwrap_err();
        assert!(matches!(e, Error::Http { status: 404, .. }), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert_eq!(c.stats().requests, 4);
    })
    .await
}

#[tokio::test]
async fn connection_failures_end_in_a_transport_error_without_the_secret() {
    bounded(async {
        // A port nothing listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = webhook_client(addr);
        let e = c.call("profile", json!({})).await.unwrap_err();
        assert!(matches!(e, Error::Transport { .. }), "{e:?}");
        assert!(e.class().is_retryable());
        assert!(!format!("{e} {e:?}").contains("s3cr3tw3bh00k"));
        assert_eq!(c.stats().requests, 4);
    })
    .await
}
