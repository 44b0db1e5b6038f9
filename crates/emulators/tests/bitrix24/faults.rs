//! Injected faults: HTML 502 pages, dropped connections, latency and slow downloads.

use std::time::Duration;

use b24sense_emulators::bitrix24::{FaultConfig, PortalConfig};

use crate::support::{client, emu, fetch, roomy};

#[tokio::test]
async fn faults_html_502_dropped_connections_and_latency() {
    let e = emu(PortalConfig {
        calls: 10,
        latency: Duration::from_millis(40),
        ..roomy()
    })
    .await;
    let c = client();
    let url = format!("{}scope", e.webhook_url());
    let t = std::time::Instant::now();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(40));

    e.set_faults(FaultConfig::none().with_html_502_every(2));
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("502 Bad Gateway"));

    e.set_faults(FaultConfig::none().with_drop_connection_every(1));
    let err = c.get(&url).send().await.unwrap_err();
    assert!(!err.is_status(), "{err}");
    e.set_faults(FaultConfig::none());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn slow_downloads_and_uncounted_record_urls() {
    let e = emu(PortalConfig {
        calls: 40,
        rate: (1, 1),
        ..Default::default()
    })
    .await;
    let (id, info) = e
        .call_rows()
        .iter()
        .filter_map(|r| {
            let id: u64 = r["ID"].as_str().unwrap().parse().unwrap();
            e.recording(id).map(|i| (id, i))
        })
        .find(|(_, i)| i.record_url.is_some() && i.bytes > 3 * 64 * 1024)
        .unwrap();
    e.set_faults(FaultConfig::none().with_slow_download(Duration::from_millis(30)));
    let t = std::time::Instant::now();
    let url = info.record_url.clone().unwrap();
    for _ in 0..3 {
        // The bucket holds one request, yet `/records/*` is never counted.
        let (_, body) = fetch(&url).await;
        assert_eq!(body.len() as u64, info.bytes, "call {id}");
    }
    assert!(t.elapsed() >= Duration::from_millis(3 * 3 * 30));
    assert_eq!(e.stats().rate_limited, 0);
    assert_eq!(e.stats().downloads, 3);
}
