//! Packaging, over the real binary: the shell completions and man pages the Debian package ships, and the
//! deployment files (systemd unit, environment file, compose file) naming only settings `serve` knows.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Every subcommand a user can type (the contract the completions and the man page must cover).
const SUBCOMMANDS: [&str; 10] = [
    "export",
    "check",
    "status",
    "retry",
    "demo",
    "emulate",
    "serve",
    "keys",
    "completions",
    "man",
];

fn b24sense(args: &[&str]) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("b24sense"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout_of(args: &[&str]) -> String {
    let out = b24sense(args);
    assert!(
        out.status.success(),
        "b24sense {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Loads the bash completion script into bash and asks it to complete `words` (the last one being completed).
fn bash_complete(script: &str, words: &[&str]) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b24sense.bash");
    std::fs::write(&path, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'; COMP_WORDS=(b24sense {}); COMP_CWORD={}; _b24sense b24sense '{}' '{}'; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display(),
        quoted.join(" "),
        words.len(),
        words[words.len() - 1],
        if words.len() > 1 {
            words[words.len() - 2]
        } else {
            "b24sense"
        },
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&program)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_completes_subcommands_flags_and_shells() {
    let script = stdout_of(&["completions", "bash"]);
    assert!(script.contains("complete -F _b24sense"), "{script}");

    let all = bash_complete(&script, &[""]);
    for sub in SUBCOMMANDS {
        assert!(all.contains(sub), "`b24sense <TAB>` lacks {sub}: {all:?}");
    }
    assert_eq!(
        bash_complete(&script, &["se"]),
        BTreeSet::from(["serve".to_string()])
    );
    assert_eq!(
        bash_complete(&script, &["serve", "--pub"]),
        BTreeSet::from(["--public-url".to_string()])
    );
    let shells = bash_complete(&script, &["completions", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.contains(shell), "{shells:?}");
    }
}

#[test]
fn zsh_and_fish_completions_cover_every_subcommand() {
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef b24sense"), "{zsh}");
    let fish = stdout_of(&["completions", "fish"]);
    assert!(fish.contains("complete -c b24sense"), "{fish}");
    for script in [&zsh, &fish] {
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "no {sub} in\n{script}");
        }
        assert!(script.contains("public-url"));
    }
}

#[test]
fn completions_refuse_an_unknown_shell_and_name_the_known_ones() {
    let out = b24sense(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tcsh") && err.contains("bash") && err.contains("zsh") && err.contains("fish")
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn man_prints_a_roff_page_listing_the_subcommands() {
    let page = stdout_of(&["man"]);
    assert!(
        page.lines().any(|l| l.starts_with(".TH b24sense 1")),
        "{page}"
    );
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "no {section} in\n{page}");
    }
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!("b24sense\\-{sub}(1)")),
            "no b24sense-{sub}(1) in\n{page}"
        );
    }
}

#[test]
fn man_dir_writes_a_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = b24sense(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert!(page("b24sense.1").contains(".TH b24sense 1"));
    for sub in SUBCOMMANDS {
        let p = page(&format!("b24sense-{sub}.1"));
        assert!(p.contains(&format!(".TH b24sense-{sub} 1")), "{p}");
    }
    let serve = page("b24sense-serve.1");
    assert!(serve.contains("\\-\\-public\\-url") && serve.contains("\\-\\-client\\-secret"));
    assert!(page("b24sense-emulate-bitrix24.1").contains(".TH b24sense-emulate-bitrix24 1"));
}

#[test]
fn man_dir_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let out = b24sense(&["man", "--dir", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--dir") && err.contains("no-such-dir") && err.contains("mkdir"),
        "{err}"
    );
    assert!(!missing.exists());
}

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `B24SENSE_*` names in `text` (assignments, commented-out ones included).
fn b24sense_vars(text: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for (i, _) in text.match_indices("B24SENSE_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        // `B24SENSE_*` in prose is no variable.
        if name.len() > "B24SENSE_".len() {
            vars.insert(name);
        }
    }
    vars
}

#[test]
fn deployment_files_name_only_settings_serve_reads() {
    // What `serve` reads: the variables its flags take (shown by --help), plus those read outside clap.
    let help = stdout_of(&["serve", "--help"]);
    let mut known: BTreeSet<String> = help
        .match_indices("[env: ")
        .map(|(i, _)| {
            help[i + 6..]
                .chars()
                .take_while(|c| *c != '=' && *c != ']')
                .collect()
        })
        .collect();
    assert!(known.contains("B24SENSE_PUBLIC_URL"), "{help}");
    known.extend(
        [
            "B24SENSE_SECRET_KEY",
            "B24SENSE_SECRET_KEY_FILE",
            "B24SENSE_OLD_SECRET_KEY",
            "B24SENSE_OLD_SECRET_KEY_FILE",
            "B24SENSE_LOG_FORMAT",
        ]
        .map(String::from),
    );
    // compose.yaml's .env names its own variables (the domain, Caddy's site address); the rest must be serve's.
    let compose_only = BTreeSet::from(["B24SENSE_DOMAIN".to_string()]);
    for file in [
        "packaging/b24sense.env",
        "packaging/systemd/b24sense.service",
        "packaging/compose.env.example",
        "compose.yaml",
        "Dockerfile",
    ] {
        let vars = b24sense_vars(&repo_file(file));
        assert!(!vars.is_empty(), "{file} names no B24SENSE_ variable");
        let unknown: Vec<_> = vars
            .difference(&known)
            .filter(|v| !compose_only.contains(*v))
            .collect();
        assert!(unknown.is_empty(), "{file}: serve reads no {unknown:?}");
    }
    // The environment file the package installs carries every setting serve cannot start without.
    let env = repo_file("packaging/b24sense.env");
    for required in [
        "B24SENSE_SECRET_KEY=",
        "B24SENSE_PUBLIC_URL=",
        "B24SENSE_CLIENT_ID=",
        "B24SENSE_CLIENT_SECRET=",
    ] {
        assert!(
            env.lines().any(|l| l.starts_with(required)),
            "packaging/b24sense.env lacks {required}"
        );
    }
}

#[test]
fn the_unit_runs_serve_unprivileged_and_hardened() {
    let unit = repo_file("packaging/systemd/b24sense.service");
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    let exec = value("ExecStart");
    assert_eq!(exec.len(), 1, "{unit}");
    let args: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(args[0], "/usr/bin/b24sense");
    assert!(args.contains(&"serve"));
    // The same arguments parse: `--help` after them exits 0 only if every flag before it is known.
    let mut probe: Vec<&str> = args[1..].to_vec();
    probe.push("--help");
    stdout_of(&probe);
    assert_eq!(value("User"), ["b24sense"]);
    assert_eq!(value("EnvironmentFile"), ["/etc/b24sense/b24sense.env"]);
    assert_eq!(value("StateDirectory"), ["b24sense"]);
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
    ] {
        assert!(
            value(key).iter().any(|v| v == want),
            "{key}={want} missing in the unit"
        );
    }
    // The ledger the unit points at lives in its state directory (the only place it may write).
    assert!(value("Environment")
        .iter()
        .any(|v| v == "B24SENSE_DATABASE_URL=sqlite:/var/lib/b24sense/b24sense.db"));
}

/// The Dockerfile's HEALTHCHECK command (its exec form), with the port it asks for.
fn docker_healthcheck() -> Vec<String> {
    let dockerfile = repo_file("Dockerfile").replace("\\\n", " ");
    let line = dockerfile
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("the Dockerfile has a HEALTHCHECK");
    let json = &line[line.find("CMD [").expect("exec-form CMD") + 4..];
    serde_json::from_str(json).unwrap()
}

#[test]
fn the_docker_healthcheck_asks_healthz_without_curl() {
    let check = docker_healthcheck();
    assert!(check.iter().any(|a| a.contains("/healthz")), "{check:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("b24sense"))
        .env("B24SENSE_SECRET_KEY", "ab".repeat(32))
        .env_remove("B24SENSE_SECRET_KEY_FILE")
        .env_remove("B24SENSE_DATABASE_URL")
        .args(["serve", "--public-url", "https://b24sense.example.com/"])
        .args(["--client-id", "local.x.1", "--client-secret", "s3cret"])
        .args(["--listen", "127.0.0.1:0"])
        .arg("--database")
        .arg(format!("sqlite:{}/d.db", dir.path().display()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let port = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("serve printed no address");
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            break digits;
        }
    };
    let run_check = |port: &str| {
        let args: Vec<String> = check.iter().map(|a| a.replace("8080", port)).collect();
        Command::new(&args[0]).args(&args[1..]).output().unwrap()
    };
    let healthy = run_check(&port);
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // With the server gone the same check fails.
    assert!(!run_check(&port).status.success());
}
