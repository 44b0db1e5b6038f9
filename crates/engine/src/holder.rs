//! Who holds a portal's lease, and whether that process is still alive: so that a run restarted after a crash
//! (`kill -9`, OOM) on the same machine takes the portal over at once instead of waiting a whole lease for the
//! dead process's lease to expire.
//!
//! A holder is this process as the operating system knows it: the host name, the boot (so that a reboot, which
//! starts PIDs over, is told apart), the PID namespace and user (so that a container, or another user's process
//! hidden by `hidepid`, is never judged by a PID it cannot see), the PID, and the process's start time (so that a
//! reused PID is told apart). Only a holder on this very host, boot, namespace and user can be judged; any other —
//! another replica's, or one from a system without Linux's `/proc` — is "unknown" and waited for as before.

use std::fmt;
use std::sync::OnceLock;

/// A process that holds (or held) a portal's lease; written to the ledger as text ([`fmt::Display`]) and read
/// back with [`Holder::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: new on every boot.
    pub boot: String,
    /// The PID namespace (`/proc/self/ns/pid`, e.g. `pid:[4026531836]`): PIDs mean something only within it.
    pub pid_ns: String,
    pub uid: u32,
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot when the process started.
    pub start: u64,
}

/// What can be said about a holder from this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Its process has exited (or its PID now belongs to another process): its leases can be taken at once.
    Gone,
    /// Another host, boot, namespace or user, or no `/proc`: wait for its lease as for any replica's.
    Unknown,
}

impl Holder {
    /// This process; `None` where it cannot be told (no Linux `/proc`), and then no lease records a holder.
    pub fn this_process() -> Option<Holder> {
        static THIS: OnceLock<Option<Holder>> = OnceLock::new();
        THIS.get_or_init(read_this_process).clone()
    }

    /// Reads what [`fmt::Display`] wrote; `None` for anything else (an older or foreign holder text).
    pub fn parse(text: &str) -> Option<Holder> {
        let mut fields = std::collections::HashMap::new();
        for part in text.split_whitespace() {
            let (key, value) = part.split_once('=')?;
            fields.insert(key, value);
        }
        let get = |key: &str| fields.get(key).map(|v| v.to_string());
        Some(Holder {
            host: get("host")?,
            boot: get("boot")?,
            pid_ns: get("pidns")?,
            uid: get("uid")?.parse().ok()?,
            pid: get("pid")?.parse().ok()?,
            start: get("start")?.parse().ok()?,
        })
    }

    /// Whether this holder's process still runs, as far as `here` (this process) can tell.
    pub fn liveness(&self, here: &Holder) -> Liveness {
        let same_place = (&self.host, &self.boot, &self.pid_ns, self.uid)
            == (&here.host, &here.boot, &here.pid_ns, here.uid);
        if !same_place {
            return Liveness::Unknown;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Liveness::Gone,
            Err(_) => Liveness::Unknown,
            Ok(stat) => match parse_stat(&stat) {
                // A zombie has exited; only its parent has not collected its status yet.
                Some((state, start)) if start == self.start && !matches!(state, 'Z' | 'X') => {
                    Liveness::Alive
                }
                Some(_) => Liveness::Gone,
                None => Liveness::Unknown,
            },
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host={} boot={} pidns={} uid={} pid={} start={}",
            self.host, self.boot, self.pid_ns, self.uid, self.pid, self.start
        )
    }
}

#[cfg(target_os = "linux")]
fn read_this_process() -> Option<Holder> {
    use std::os::unix::fs::MetadataExt as _;
    let read = |path: &str| Some(std::fs::read_to_string(path).ok()?.trim().to_string());
    let pid = std::process::id();
    let (_, start) = process_stat(pid)?;
    Some(Holder {
        host: read("/proc/sys/kernel/hostname")?,
        boot: read("/proc/sys/kernel/random/boot_id")?,
        pid_ns: std::fs::read_link("/proc/self/ns/pid")
            .ok()?
            .to_string_lossy()
            .into_owned(),
        uid: std::fs::metadata("/proc/self").ok()?.uid(),
        pid,
        start,
    })
}

#[cfg(not(target_os = "linux"))]
fn read_this_process() -> Option<Holder> {
    None
}

/// The state letter and start time of a running process.
#[cfg(target_os = "linux")]
fn process_stat(pid: u32) -> Option<(char, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `/proc/PID/stat`: `pid (comm) state ppid …`, the start time being field 22. The command name may hold spaces
/// and parentheses, so the fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn here() -> Holder {
        Holder::this_process().expect("Linux has /proc")
    }

    #[test]
    fn the_text_form_reads_back() {
        let me = here();
        assert_eq!(Holder::parse(&me.to_string()), Some(me.clone()));
        assert!(me
            .to_string()
            .contains(&format!("pid={}", std::process::id())));
        assert_eq!(Holder::parse("replica-7"), None);
        assert_eq!(Holder::parse(""), None);
    }

    #[test]
    fn the_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 1";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_alive() {
        assert_eq!(here().liveness(&here()), Liveness::Alive);
    }

    #[test]
    fn an_exited_process_is_gone_whether_or_not_it_was_reaped() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (_, start) = process_stat(pid).unwrap();
        let holder = Holder {
            pid,
            start,
            ..here()
        };
        assert_eq!(holder.liveness(&here()), Liveness::Alive);
        child.kill().unwrap();
        // Not reaped yet: a zombie, which has exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_stat(pid).is_some_and(|(state, _)| state != 'Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(holder.liveness(&here()), Liveness::Gone, "zombie");
        child.wait().unwrap();
        assert_eq!(holder.liveness(&here()), Liveness::Gone, "reaped");
    }

    #[test]
    fn a_reused_pid_is_gone() {
        let me = here();
        let earlier = Holder {
            start: me.start.saturating_sub(1),
            ..me.clone()
        };
        assert_eq!(earlier.liveness(&me), Liveness::Gone);
    }

    #[test]
    fn a_holder_elsewhere_is_unknown_even_if_its_pid_is_free_here() {
        let me = here();
        let free_pid = u32::MAX - 1;
        for elsewhere in [
            Holder {
                host: "other-host".into(),
                ..me.clone()
            },
            Holder {
                boot: "another-boot".into(),
                ..me.clone()
            },
            Holder {
                pid_ns: "pid:[1]".into(),
                ..me.clone()
            },
            Holder {
                uid: me.uid + 1,
                ..me.clone()
            },
        ] {
            let gone_pid = Holder {
                pid: free_pid,
                ..elsewhere
            };
            assert_eq!(gone_pid.liveness(&me), Liveness::Unknown, "{gone_pid}");
        }
        let here_gone = Holder {
            pid: free_pid,
            ..me.clone()
        };
        assert_eq!(here_gone.liveness(&me), Liveness::Gone);
    }
}
