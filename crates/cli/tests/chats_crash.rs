//! Open Lines chats through the real `b24sense` binary when it is killed (`kill -9` mid chat export) or
//! interrupted (one Ctrl-C stops the call run and the chat run together): every session ends up uploaded once.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::chats::*;
use common::{until, wait, SEARCH};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_chat_export_leaves_each_session_uploaded_once() {
    let started = Instant::now();
    let w = world(5, 120, Duration::from_millis(150)).await;
    let expected = w.expected(1);
    let args = [
        &[
            "--chat-connection-id",
            CHATS,
            "--concurrency",
            "2",
            "--lease-seconds",
            "1.5",
        ][..],
        &SEARCH[..],
    ]
    .concat();
    let mut rng = StdRng::seed_from_u64(0x0c4a_7017);
    let mut killed = 0;
    for i in 0..8 {
        let stored = w.talks_on(CHATS);
        let mut child = spawn(&w, &args, &format!("kill{i}"));
        // Kill while chat talks are being uploaded: after this run's first one.
        until(
            Duration::from_secs(20),
            "the run's first chat upload",
            || w.talks_on(CHATS) > stored || child.try_wait().unwrap().is_some(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..=600))).await;
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "run {i}: {}",
                log(&w, &format!("kill{i}"))
            );
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        killed += 1;
    }
    assert!(killed >= 4, "the runs finished too early to test anything");
    let before = w.talks_on(CHATS);
    assert!(
        before > 0 && before < expected.len(),
        "the kills landed mid-export ({before} of {})",
        expected.len()
    );
    let mut last = spawn(&w, &[&args[..], &["--json"][..]].concat(), "final");
    let status = wait(&mut last, Duration::from_secs(60), "the final run").await;
    assert!(status.success(), "{}", log(&w, "final"));
    let talks = w.chat_talks();
    assert_eq!(talks.keys().copied().collect::<BTreeSet<_>>(), expected);
    let twice: Vec<_> = talks
        .iter()
        .filter(|(_, t)| t.len() != 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "sessions stored more than once: {twice:?}"
    );
    assert!(
        w.speech.stats().searches > 0,
        "in-doubt sessions were searched"
    );
    let out = std::fs::read_to_string(w.dir.path().join("final.out")).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let c = &v["chats"];
    assert_eq!(
        c["uploaded"].as_u64().unwrap() + c["already_uploaded"].as_u64().unwrap(),
        expected.len() as u64,
        "{v}"
    );
    println!(
        "{killed} kills, {before} talks before the final run, {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(90));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ctrl_c_stops_both_runs_and_the_next_run_finishes_them() {
    let w = world(60, 60, Duration::from_millis(200)).await;
    let expected = w.expected(1);
    let args = [
        "--connection-id",
        CALLS,
        "--chat-connection-id",
        CHATS,
        "--concurrency",
        "2",
        "--json",
    ];
    let mut child = spawn(&w, &args, "int");
    until(Duration::from_secs(30), "uploads of both kinds", || {
        (w.talks_on(CALLS) >= 2 && w.talks_on(CHATS) >= 2) || child.try_wait().unwrap().is_some()
    })
    .await;
    common::signal(&child, "-INT");
    let status = wait(&mut child, Duration::from_secs(15), "after Ctrl-C").await;
    assert_eq!(status.code(), Some(130), "{}", log(&w, "int"));
    let out = std::fs::read_to_string(w.dir.path().join("int.out")).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["stopped"], "shutdown requested", "{v}");
    assert_eq!(v["chats"]["stopped"], "shutdown requested", "{v}");
    let (calls, chats) = (w.talks_on(CALLS), w.talks_on(CHATS));
    assert!(chats < expected.len(), "the chat run stopped early: {v}");
    assert_eq!(
        v["chats"]["uploaded"].as_u64(),
        Some(chats as u64),
        "in-flight uploads were recorded"
    );
    assert_eq!(v["uploaded"].as_u64(), Some(calls as u64), "{v}");

    let mut child = spawn(&w, &args, "after");
    let status = wait(&mut child, Duration::from_secs(60), "the next run").await;
    assert!(status.success(), "{}", log(&w, "after"));
    let talks = w.chat_talks();
    assert_eq!(talks.keys().copied().collect::<BTreeSet<_>>(), expected);
    assert!(talks.values().all(|t| t.len() == 1), "each session once");
    let mut call_ids = BTreeSet::new();
    for t in w.speech.talks().iter().filter(|t| t.connection_id == CALLS) {
        assert!(
            call_ids.insert(t.fields["id"].clone()),
            "call {} twice",
            t.fields["id"]
        );
    }
}
