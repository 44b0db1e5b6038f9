//! What a well-behaved command-line tool does besides its work: writes that survive a closed pipe (`… | head -1`),
//! colour only on a terminal (and never with `NO_COLOR`), and a `--database` path whose directory must exist.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::lang::pick;
use crate::{exit, Failure};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// One line on stdout. A reader that went away (`| head -1`) ends the output quietly: no panic, no message, the
/// rest of the output is dropped and the command ends with its own exit code.
pub fn out_line(args: std::fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .is_err()
    {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// One line on stderr; a closed stderr is ignored (there is nowhere left to say anything).
pub fn err_line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `println!` that does not panic on a closed pipe.
macro_rules! out {
    ($($t:tt)*) => { crate::hygiene::out_line(format_args!($($t)*)) };
}

/// `eprintln!` that does not panic on a closed stderr.
macro_rules! err {
    ($($t:tt)*) => { crate::hygiene::err_line(format_args!($($t)*)) };
}

/// A `println!`/`eprintln!` elsewhere that meets a closed pipe panics with "failed printing to stdout: Broken
/// pipe": end the process quietly instead (exit 0 — the reader asked for no more), keeping every other panic as it
/// was.
pub fn quiet_broken_pipe_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if text.starts_with("failed printing to std") && text.contains("Broken pipe") {
            std::process::exit(i32::from(exit::OK));
        }
        previous(info);
    }));
}

/// Colour in logs and the progress bar: only on a terminal, and never when `NO_COLOR` is set (to anything
/// non-empty, <https://no-color.org>).
pub fn colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// [`colour`] for stderr, where logs and the progress bar go.
pub fn stderr_colour() -> bool {
    colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// A `--database sqlite:PATH` given by the user must name a file in an existing directory: a typo must not
/// silently create directories and an empty ledger. (The default ledger's directory is created.)
pub fn check_database_dir(url: &str) -> Result<(), Failure> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(());
    };
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() || path == ":memory:" || path.contains('?') {
        return Ok(()); // the store explains these itself
    }
    let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    let shown = dir.display();
    Err(Failure::new(
        exit::USAGE,
        pick(
            format!(
                "--database: каталога {shown} нет. Создайте его (mkdir -p {shown}) или укажите файл в \
                 существующем каталоге; без --database журнал хранится в каталоге данных пользователя."
            ),
            format!(
                "--database: the directory {shown} does not exist. Create it (mkdir -p {shown}) or name a file \
                 in an existing directory; without --database the ledger lives in the user's data directory."
            ),
        ),
    ))
}

/// Prints the error that ends a command: `error:`/`ошибка:` and the message; the raw technical detail, if any, on
/// its own marked lines (in a Russian run it is often a library's or a server's English text).
pub fn print_failure(f: &Failure) {
    err!("{} {}", pick("ошибка:", "error:"), f.message);
    if let Some(detail) = f.detail.as_deref().filter(|d| !d.trim().is_empty()) {
        err!(
            "  {}",
            pick(
                "техническая причина, как её сообщила система:",
                "technical detail, as reported:"
            )
        );
        err!("    {}", detail.trim());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(colour(true, Some(OsStr::new(""))));
    }

    #[test]
    fn database_directory_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let ok = format!("sqlite:{}/ledger.db", dir.path().display());
        assert!(check_database_dir(&ok).is_ok());
        assert!(check_database_dir("sqlite:ledger.db").is_ok());
        assert!(check_database_dir("sqlite::memory:").is_ok());
        assert!(check_database_dir("postgres://u@h/db").is_ok());
        let missing = format!("sqlite://{}/no/such/x.db", dir.path().display());
        let f = check_database_dir(&missing).unwrap_err();
        assert_eq!(f.code, exit::USAGE);
        assert!(f.message.contains("--database") && f.message.contains("no/such"));
    }
}
