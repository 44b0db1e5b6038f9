//! Runs the `smoke` scenario through the binary (child process, real sockets on 127.0.0.1) and checks that the
//! row it prints is consistent. No timing asserts: CI machines vary.

use std::process::Command;

use serde_json::Value;

/// Runs the bench with `args` (plus `--json`) and returns its rows; fails the test if it fails.
fn json_rows(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_b24sense-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run b24sense-bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).expect("JSON rows on stdout");
    rows.as_array().expect("an array of rows").clone()
}

#[test]
fn smoke_scenario_completes_with_consistent_counts() {
    let rows = json_rows(&[
        "--scenarios",
        "smoke",
        "--timeout",
        "120",
        "--loopback-mb",
        "16",
    ]);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {r}"))
    };

    assert_eq!(r["scenario"], "smoke");
    assert_eq!(r["timed_out"], false);
    assert!(r["stopped"].is_null(), "run stopped: {}", r["stopped"]);
    assert_eq!(n("calls"), 300);
    // Every call is listed and settled; every upload is a stored talk.
    assert_eq!(n("found"), 300);
    assert_eq!(n("uploaded") + n("skipped") + n("failed"), 300);
    assert_eq!(n("failed"), 0);
    assert!(n("uploaded") > 0);
    assert_eq!(n("uploaded"), n("talks_stored"));
    // Rate-limit rejections are reported (300 calls fit in the bucket's burst, so none are expected).
    assert_eq!(n("rate_limited"), 0);
    // The portal's requests split into listing/lookup batches and Disk batches.
    assert_eq!(
        n("batch_requests"),
        n("listing_enrichment_requests") + n("disk_batches")
    );
    assert!(n("disk_batches") >= 1);
    // Disk-only recordings come through the portal's host; the client counts them only after a refusal.
    assert!(n("portal_downloads") >= 1);
    assert!(n("counted_downloads") <= n("portal_downloads"));
    // The run says whether it ended up counting them.
    assert!(
        matches!(
            r["download_accounting"].as_str(),
            Some("counted" | "uncounted")
        ),
        "{}",
        r["download_accounting"]
    );
    let by_method = r["by_method"].as_object().expect("by_method");
    assert_eq!(
        by_method["disk.file.get"].as_u64(),
        Some(n("disk_resolved"))
    );
    assert!(n("http_requests") >= n("batch_requests") + n("portal_downloads"));
    assert!(r["peak_rss_mb"].as_f64().is_some_and(|m| m > 0.0));
    assert_eq!(r["export_in_child"], true);
    assert!(r["emulator_cpu_s"].as_f64().is_some());
    assert!(r["bound"]["bound_s"].as_f64().is_some());
}

#[test]
fn table_output_names_the_columns() {
    let out = Command::new(env!("CARGO_BIN_EXE_b24sense-bench"))
        .args(["--scenarios", "smoke", "--loopback-mb", "0"])
        .output()
        .expect("run b24sense-bench");
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    for col in ["scenario", "rate-limited", "peak RSS MiB", "wall/bound"] {
        assert!(header.contains(col), "{col} missing in {header}");
    }
    assert!(table.lines().any(|l| l.starts_with("smoke ")));
}

#[test]
fn unknown_scenario_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_b24sense-bench"))
        .args(["--scenarios", "nope"])
        .output()
        .expect("run b24sense-bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario"));
}

#[test]
fn in_process_run_reports_the_shared_process() {
    let rows = json_rows(&["--scenarios", "smoke", "--in-process", "--loopback-mb", "0"]);
    let r = &rows[0];
    assert_eq!(r["export_in_child"], false);
    assert!(r["emulator_cpu_s"].is_null());
    assert_eq!(r["uploaded"], r["talks_stored"]);
    assert_eq!(r["found"], 300);
}

#[test]
fn concurrency_flag_pins_the_calls_in_flight() {
    let rows = json_rows(&[
        "--scenarios",
        "smoke",
        "--concurrency",
        "3",
        "--loopback-mb",
        "0",
    ]);
    let r = &rows[0];
    let settings = r["settings"].as_str().unwrap_or_default();
    assert!(settings.contains("concurrency pinned 3"), "{settings}");
    // The child ran with it: its limit started and peaked at 3.
    let trace = r["concurrency_trace"].as_str().unwrap_or_default();
    assert!(trace.starts_with("3 → peak 3 → final 3"), "{trace}");
}
