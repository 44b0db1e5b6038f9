//! CLI hygiene over the real binary: no colour codes where the output is not a terminal, a closed pipe ends the
//! program quietly, and a `--database` in a directory that does not exist is refused naming the flag.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin(home: &std::path::Path) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("b24sense"));
    c.env_clear().env("HOME", home).stdin(Stdio::null());
    c
}

/// Waits at most `limit` for the child (kills it and panics after).
fn wait(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("demo.log");
    let out = bin(home.path())
        .env("RUST_LOG", "debug,h2=info,hyper=info")
        .args(["demo", "--calls", "20", "--json"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("DEBUG"),
        "some log lines were written: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI escape codes in a file: {text:?}"
    );
}

/// The reader of stdout is gone before anything is written (`| head -1` that already has its line).
fn with_closed_stdout(cmd: &mut Command) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let status = wait(&mut child, Duration::from_secs(120));
    (status, reader.join().unwrap())
}

#[test]
fn a_closed_pipe_ends_the_program_quietly() {
    let home = tempfile::tempdir().unwrap();
    let (status, err) =
        with_closed_stdout(bin(home.path()).args(["demo", "--calls", "20", "--json"]));
    assert_eq!(status.code(), Some(0), "demo --json | head -1: {err}");
    assert!(!err.contains("panicked"), "{err}");

    let db = format!("sqlite:{}/ledger.db", home.path().display());
    let (status, err) = with_closed_stdout(bin(home.path()).args(["status", "--database", &db]));
    assert_eq!(status.code(), Some(0), "status | head -1: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );

    // A real pipeline, as a user types it.
    let exe = assert_cmd::cargo::cargo_bin("b24sense");
    let out = Command::new("bash")
        .env_clear()
        .env("HOME", home.path())
        .args([
            "-c",
            &format!(
                "'{}' demo --calls 20 --json | head -1; echo \"status ${{PIPESTATUS[0]}}\"",
                exe.display()
            ),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().next(), Some("{"), "{stdout}");
    assert!(
        stdout.contains("status 0"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn a_database_in_a_missing_directory_is_refused_naming_the_flag() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("no/such/dir");
    let db = format!("sqlite:{}/x.db", missing.display());
    for args in [
        &["status", "--database", &db][..],
        &["retry", "--failed", "--database", &db],
        &[
            "export",
            "--bitrix24-webhook",
            "http://127.0.0.1:9/rest/1/x/",
            "--connection-id",
            "c",
            "--api-key",
            "k",
            "--database",
            &db,
        ],
    ] {
        let out = bin(home.path())
            .args(["--lang", "en"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--database")
                && err.contains("does not exist")
                && err.contains("no/such/dir"),
            "{args:?}: {err}"
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }

    // The default ledger's directory is still created.
    let out = bin(home.path()).args(["status"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(home.path().join(".local/share/b24sense/ledger.db").exists());
}

/// On a terminal (a pseudo-terminal from util-linux `script`), logs are in colour — unless `NO_COLOR` is set.
#[test]
fn colour_on_a_terminal_unless_no_color() {
    let home = tempfile::tempdir().unwrap();
    let exe = assert_cmd::cargo::cargo_bin("b24sense");
    let on_a_terminal = |no_color: bool| {
        let mut cmd = Command::new("script");
        cmd.env_clear()
            .env("HOME", home.path())
            .env("PATH", "/usr/bin:/bin")
            .env("RUST_LOG", "debug,h2=info,hyper=info")
            .args([
                "-qec",
                &format!("'{}' demo --calls 3 --json", exe.display()),
                "/dev/null",
            ])
            .stdin(Stdio::null());
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd
            .output()
            .expect("util-linux `script` runs the command on a pseudo-terminal");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_a_terminal(false);
    assert!(coloured.contains("DEBUG"), "{coloured}");
    assert!(coloured.contains("\u{1b}["), "colour on a terminal");
    let plain = on_a_terminal(true);
    assert!(plain.contains("DEBUG"), "{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "NO_COLOR: no escape codes at all"
    );
}
