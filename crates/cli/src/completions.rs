//! `b24sense completions SHELL` and `b24sense man`: shell completion scripts and roff man pages, generated from the
//! same clap definition that parses the command line, so they cannot drift from it. The Debian package ships both
//! (`packaging/build-deb.sh` runs these commands on the binary it packages).

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::Cli;
use crate::{exit, Failure};

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> Result<u8, Failure> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "b24sense", &mut script);
    print(&script)
}

/// Prints the man page b24sense(1) on stdout, or, with `dir`, writes it and one page per subcommand
/// (b24sense-export.1, b24sense-emulate-bitrix24.1, …) into that existing directory.
pub fn man(dir: Option<&Path>) -> Result<u8, Failure> {
    let cmd = Cli::command();
    match dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map_err(|e| Failure::new(exit::UNAVAILABLE, format!("man: {e}")))?;
            print(&page)
        }
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Failure::new(
                    exit::USAGE,
                    format!(
                        "--dir {}: not a directory; create it first (mkdir -p)",
                        dir.display()
                    ),
                ));
            }
            clap_mangen::generate_to(cmd, dir).map_err(|e| {
                Failure::new(
                    exit::UNAVAILABLE,
                    format!("--dir {}: cannot write the man pages: {e}", dir.display()),
                )
            })?;
            Ok(exit::OK)
        }
    }
}

/// Writes to stdout; a reader that went away (`… | head`) ends the command quietly.
fn print(bytes: &[u8]) -> Result<u8, Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(exit::OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(Failure::new(
            exit::UNAVAILABLE,
            format!("cannot write to stdout: {e}"),
        )),
    }
}
