//! One fault at a time, table-driven: each run rides its fault out with every call uploaded exactly once.

use std::time::Duration;

use b24sense_core::CallFilter;
use b24sense_emulators::bitrix24::{fault_kind, FaultConfig, PortalConfig};
use b24sense_emulators::speechsense::{Code, SpeechSenseEmulator};

use crate::support::test_store;

use super::env::{big_portal, long_calls, small_portal, Env};

/// One fault that a run rides out: every qualifying call still uploaded exactly once ([`Env::check_all_once`]),
/// then `fired` checks that the fault really happened.
struct Fault {
    label: &'static str,
    portal: PortalConfig,
    filter: CallFilter,
    /// Resolve in-doubt uploads by a SpeechSense search.
    search: bool,
    inject: Inject,
    fired: fn(&Env, &str),
}

/// Where the fault is injected, right before the export (a time window starts then).
enum Inject {
    Portal(FaultConfig),
    SpeechSense(fn(&SpeechSenseEmulator)),
}

impl Fault {
    /// A fault of the portal's, on a small portal and every call.
    fn portal(
        label: &'static str,
        calls: usize,
        faults: FaultConfig,
        fired: fn(&Env, &str),
    ) -> Fault {
        Fault {
            label,
            portal: small_portal(calls),
            filter: CallFilter::default(),
            search: false,
            inject: Inject::Portal(faults),
            fired,
        }
    }

    async fn ride_out(self) {
        let mut env = Env::start(self.portal, self.filter).await;
        env.case = self.label;
        let (store, _dir) = test_store().await;
        match self.inject {
            Inject::Portal(faults) => env.portal.set_faults(faults),
            Inject::SpeechSense(inject) => inject(&env.speech),
        }
        let s = env.export(&store, self.search).await;
        env.check_all_once(&store, &s).await;
        (self.fired)(&env, self.label);
    }
}

/// Rides out each fault in turn, in an environment of its own. In turn, not together: the runs are busy, not
/// waiting (together they took longer), and the test binary's other tests run alongside.
async fn ride_out_each(faults: Vec<Fault>) {
    for fault in faults {
        fault.ride_out().await;
    }
}

#[tokio::test]
async fn bitrix24_faults_one_at_a_time() {
    let none = FaultConfig::none;
    ride_out_each(vec![
        Fault::portal(
            "query limit storm by count",
            40,
            none().with_query_limit_next(3),
            |env, case| {
                assert_eq!(env.injected(fault_kind::QUERY_LIMIT), 3, "{case}");
                assert!(env.bitrix.stats().rate_limited >= 3, "{case}");
            },
        ),
        Fault::portal(
            "query limit storm for a time window",
            40,
            none().with_query_limit_for(Duration::from_millis(700)),
            |env, case| assert!(env.injected(fault_kind::QUERY_LIMIT) >= 1, "{case}"),
        ),
        Fault::portal(
            "OPERATION_TIME_LIMIT on batch",
            40,
            none().with_operation_time_limit("batch", 2),
            |env, case| assert_eq!(env.injected(fault_kind::OPERATION_TIME_LIMIT), 2, "{case}"),
        ),
        Fault::portal(
            "internal server errors",
            40,
            none().with_internal_error_next(3),
            |env, case| assert_eq!(env.injected(fault_kind::INTERNAL_ERROR), 3, "{case}"),
        ),
        // Some on REST calls, and every 7th request of any kind (downloads included).
        Fault::portal(
            "HTML 502 pages",
            40,
            none().with_html_502_next(2).with_html_502_every(7),
            |env, case| assert!(env.injected(fault_kind::HTML_502) >= 4, "{case}"),
        ),
        Fault::portal(
            "an expired-token fault does not touch a webhook",
            30,
            none().with_expire_token_at(1),
            |env, case| assert_eq!(env.injected(fault_kind::EXPIRED_TOKEN), 0, "{case}"),
        ),
        Fault::portal(
            "connection resets",
            40,
            none().with_reset_connection_next(4),
            |env, case| assert_eq!(env.injected(fault_kind::RESET_CONNECTION), 4, "{case}"),
        ),
        Fault::portal(
            "REST answers cut mid-body",
            40,
            none().with_cut_rest_next(3),
            |env, case| assert_eq!(env.injected(fault_kind::CUT_REST), 3, "{case}"),
        ),
        // `check_all_once` also asserts each talk's audio is the whole recording: no truncated talk was stored.
        Fault::portal(
            "recording downloads cut mid-body",
            40,
            none().with_cut_download_next(4),
            |env, case| {
                assert_eq!(env.injected(fault_kind::CUT_DOWNLOAD), 4, "{case}");
                assert!(
                    env.speech.stats().streams_aborted >= 1,
                    "{case}: a broken download aborts its upload"
                );
            },
        ),
        Fault::portal(
            "slow recording downloads",
            30,
            none().with_slow_download(Duration::from_millis(25)),
            |_, _| {},
        ),
        Fault::portal(
            "malformed JSON answers",
            40,
            none().with_malformed_json_next(3),
            |env, case| assert_eq!(env.injected(fault_kind::MALFORMED_JSON), 3, "{case}"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn speechsense_faults_one_at_a_time() {
    ride_out_each(vec![
        // Refused before the stream was accepted: provably nothing stored, retried without the in-doubt step.
        Fault {
            label: "UNAVAILABLE",
            portal: big_portal(40),
            filter: long_calls(),
            search: false,
            inject: Inject::SpeechSense(|ss| ss.inject(Code::Unavailable, 3)),
            fired: |env, case| {
                assert_eq!(env.speech.stats().rejected(Code::Unavailable), 3, "{case}")
            },
        },
        Fault {
            label: "RESOURCE_EXHAUSTED",
            portal: small_portal(40),
            filter: CallFilter::default(),
            search: false,
            inject: Inject::SpeechSense(|ss| ss.inject(Code::ResourceExhausted, 3)),
            fired: |env, case| {
                let rejected = env.speech.stats().rejected(Code::ResourceExhausted);
                assert_eq!(rejected, 3, "{case}")
            },
        },
        Fault {
            label: "stream reset mid-upload",
            portal: big_portal(40),
            filter: long_calls(),
            search: false,
            inject: Inject::SpeechSense(|ss| ss.inject_reset_after(512 * 1024, 3)),
            fired: |env, case| assert_eq!(env.speech.stats().streams_reset, 3, "{case}"),
        },
        Fault {
            label: "DEADLINE_EXCEEDED after the store, with search: no duplicate",
            portal: small_portal(40),
            filter: CallFilter::default(),
            search: true,
            inject: Inject::SpeechSense(|ss| ss.inject_after_store(Code::DeadlineExceeded, 2)),
            fired: |env, case| {
                let n = env.qualifying().len();
                assert_eq!(env.speech.talk_count(), n, "{case}: zero duplicates");
                assert!(
                    env.speech.stats().searches >= 2,
                    "{case}: the in-doubt uploads were looked up"
                );
            },
        },
    ])
    .await;
}
