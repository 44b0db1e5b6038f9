//! Recordings: Disk download URLs, and streaming a download (counted per portal).

use b24sense_bitrix24::*;
use b24sense_core::ErrorClass;
use futures::StreamExt;
use serde_json::json;

use crate::mock::{bounded, commands, spawn_mock, webhook_client, Reply};

#[tokio::test]
async fn disk_download_urls_reports_per_file_failures() {
    bounded(async {
        let (mock, addr) = spawn_mock().await;
        mock.ok(json!({
            "result": {
                "d1": {"ID": "1", "DELETED_TYPE": "0", "DOWNLOAD_URL": "https://acme.bitrix24.ru/rest/download.json?auth=tok&token=disk%7C1"},
                "d3": {"ID": "3", "DELETED_TYPE": "3", "DOWNLOAD_URL": "https://acme.bitrix24.ru/rest/download.json?auth=tok"}},
            "result_error": {"d2": {"error": "ERROR_NOT_FOUND", "error_description": "Could not find entity with id `2`"}}}));
        let c = webhook_client(addr);
        let m = c.disk_download_urls(&[1, 2, 3, 4, 1]).await.unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[&1].as_ref().unwrap().host_str(), Some("acme.bitrix24.ru"));
        assert_eq!(m[&2].as_ref().unwrap_err().kind(), ApiErrorKind::NotFound);
        let e3 = m[&3].as_ref().unwrap_err();
        assert_eq!(e3.kind(), ApiErrorKind::NotFound);
        assert!(e3.description.contains("DELETED_TYPE 3") && !e3.description.contains("tok"));
        assert!(m[&4].is_err(), "absent from the answer");
        let cmds = commands(&mock.seen()[0]);
        assert_eq!(cmds[0], ("d1".to_string(), "disk.file.get?id=1".to_string()));
        assert_eq!(cmds.len(), 4);
    })
    .await
}

async fn collect(d: Download) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = d.stream;
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn download_streams_and_counts_portal_downloads() {
    bounded(async {
        let (portal, portal_addr) = spawn_mock().await;
        let (pbx, pbx_addr) = spawn_mock().await;
        let audio: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        portal.push(Reply::Raw(503, "text/html", b"<html>busy</html>".to_vec()));
        portal.push(Reply::Raw(200, "audio/mpeg", audio.clone()));
        pbx.push(Reply::Raw(200, "audio/x-wav", b"RIFF....WAVE".to_vec()));
        pbx.push(Reply::Raw(404, "text/html", b"<html>nginx 404</html>".to_vec()));
        portal.push(Reply::Json(401, json!({"error": "expired_token", "error_description": "The access token provided has expired"})));
        let c = webhook_client(portal_addr);

        let url: url::Url = format!("http://{portal_addr}/rest/download.json?auth=SECRETTOKEN&token=disk%7C1").parse().unwrap();
        let d = c.download(&url).await.unwrap();
        assert_eq!(d.content_length, Some(audio.len() as u64));
        assert_eq!(collect(d).await, audio);
        let seen = portal.seen();
        assert_eq!(seen.len(), 2, "503 before the body → retried");
        assert_eq!(seen[1].query.as_deref(), Some("auth=SECRETTOKEN&token=disk%7C1"));
        assert_eq!(seen[1].header("accept"), "*/*");
        assert_eq!(seen[1].header("referer"), format!("http://{portal_addr}/"));
        assert!(seen[1].header("user-agent").starts_with("b24sense/"));

        // An external recording URL (here: another host name) does not take a limiter token.
        let ext: url::Url = format!("http://localhost:{}/rec/1.wav", pbx_addr.port()).parse().unwrap();
        assert_eq!(collect(c.download(&ext).await.unwrap()).await, b"RIFF....WAVE");
        let s = c.stats();
        assert_eq!((s.downloads, s.download_bytes), (2, audio.len() as u64 + 12));
        assert_eq!((s.portal_downloads, s.uncounted_portal_downloads), (0, 2), "uncounted until refused");

        let e = c.download(&ext).await.unwrap_err();
        assert!(matches!(e, Error::Download { status: 404 }), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Permanent);
        let e = c.download(&url).await.unwrap_err();
        assert_eq!(e.api_code(), Some("expired_token"));
        assert!(matches!(e, Error::DownloadLink(_)), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Permanent, "a dead link is re-requested, not fatal for the run");
        assert!(!format!("{e} {e:?}").contains("SECRETTOKEN"));
    })
    .await
}
