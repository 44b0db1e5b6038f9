//! The named benchmark scenarios: a portal (calls, latency, bucket, recordings) and a SpeechSense (upload latency).

use std::time::Duration;

use b24sense_emulators::bitrix24::PortalConfig;

/// Every scenario name, in the order `--scenarios all` runs them.
pub const NAMES: [&str; 7] = [
    "smoke",
    "issue3-10k",
    "big-recording",
    "scale-1k",
    "scale-10k",
    "scale-100k",
    "cpu-10k",
];

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// One benchmark setting.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub portal: PortalConfig,
    /// SpeechSense emulator's delay before answering each upload.
    pub upload_latency: Duration,
    /// Uploads in flight (`--concurrency` of the CLI; 8 is its default).
    pub concurrency: usize,
}

impl Scenario {
    fn new(name: &str, portal: PortalConfig, upload_latency: Duration) -> Scenario {
        Scenario {
            name: name.to_string(),
            portal,
            upload_latency,
            concurrency: 8,
        }
    }

    /// The settings in one line, printed with the results.
    pub fn describe(&self) -> String {
        let p = &self.portal;
        let cap = match p.max_recording_bytes {
            Some(b) if b >= MIB => format!("≤{} MB", b / MIB),
            Some(b) => format!("≤{} KB", b / KIB),
            None => "uncapped".into(),
        };
        let big = p
            .big_recording
            .map(|b| format!(", one {} MB recording", b / MIB))
            .unwrap_or_default();
        format!(
            "{} calls, REST latency {} ms, bucket {}/{}, upload latency {} ms, concurrency {}, recordings {cap}{big} \
             at {} kbit/s (MP3), disk-only {:.0}%, no-record {:.0}%, downloads {}",
            p.calls,
            p.latency.as_millis(),
            p.rate.0,
            p.rate.1,
            self.upload_latency.as_millis(),
            self.concurrency,
            p.recording_bytes_per_second * 8 / 1000,
            p.disk_only_share * 100.0,
            p.no_record_share * 100.0,
            if p.count_downloads {
                "counted"
            } else {
                "not counted"
            },
        )
    }
}

/// The scenario called `name`, or `None`.
pub fn scenario(name: &str) -> Option<Scenario> {
    let base = PortalConfig::default();
    let ms = Duration::from_millis;
    // Every scenario keeps the portal defaults (bucket 50/2, 10 % disk-only, 15 % without recording, downloads
    // counted) unless it says otherwise.
    let s = match name {
        "smoke" => Scenario::new(
            name,
            PortalConfig {
                calls: 300,
                max_recording_bytes: Some(16 * KIB),
                ..base
            },
            Duration::ZERO,
        ),
        "issue3-10k" => Scenario::new(
            name,
            PortalConfig {
                calls: 10_000,
                latency: ms(150),
                rate: (50, 2),
                max_recording_bytes: Some(100 * KIB),
                disk_only_share: 0.10,
                count_downloads: true,
                ..base
            },
            ms(100),
        ),
        // 200 MiB at 64 kbit/s would be 7 h, over SpeechSense's 4 h: 160 kbit/s (MPEG-2's top rate) makes it 2.9 h.
        "big-recording" => Scenario::new(
            name,
            PortalConfig {
                calls: 5,
                recording_bytes_per_second: 20_000,
                max_recording_bytes: Some(64 * KIB),
                big_recording: Some(200 * MIB),
                ..base
            },
            Duration::ZERO,
        ),
        "scale-1k" => Scenario::new(
            name,
            PortalConfig {
                calls: 1_000,
                latency: ms(150),
                max_recording_bytes: Some(100 * KIB),
                ..base
            },
            ms(100),
        ),
        "scale-10k" => Scenario::new(
            name,
            PortalConfig {
                calls: 10_000,
                latency: ms(150),
                max_recording_bytes: Some(100 * KIB),
                ..base
            },
            ms(100),
        ),
        // At 2 req/s every counted download costs 0.5 s: 10 % disk-only of 100,000 calls would take over an hour,
        // so this one has 1 % disk-only, short recordings and shorter latencies.
        "scale-100k" => Scenario::new(
            name,
            PortalConfig {
                calls: 100_000,
                latency: ms(50),
                max_recording_bytes: Some(8 * KIB),
                disk_only_share: 0.01,
                ..base
            },
            ms(20),
        ),
        // The export's own cost per call with nothing to wait for: no latencies and a bucket that never fills, so
        // the run is as fast as the two processes' CPUs allow. The CPU target (s per 1,000 calls of 100 KB) is read
        // here; the wall time means nothing against the real limits.
        "cpu-10k" => Scenario::new(
            name,
            PortalConfig {
                calls: 10_000,
                rate: (100_000, 100_000),
                max_recording_bytes: Some(100 * KIB),
                ..base
            },
            Duration::ZERO,
        ),
        _ => return None,
    };
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_scenario() {
        for name in NAMES {
            let s = scenario(name).expect(name);
            assert_eq!(s.name, name);
            assert!(s.describe().contains("calls"));
        }
        assert!(scenario("nope").is_none());
    }
}
