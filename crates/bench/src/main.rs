//! `b24sense-bench`: runs benchmark scenarios and prints one row per run (a table, or JSON with `--json`).
//! The emulators run in this process; each scenario's export runs in a child process of this binary
//! (`--scenario NAME --child`, the emulators' addresses on its stdin) so its peak RSS and CPU are its own.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use b24sense_bench::measure::cpu_seconds;
use b24sense_bench::{
    loopback, make_row, render_table, run_export_side, run_scenario, scenario, BenchError,
    Emulators, ExportMeasure, Placement, RunOptions, RunRow, Scenario, Target, NAMES,
};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Parser)]
#[command(
    name = "b24sense-bench",
    about = "Benchmark the export against the emulators"
)]
struct Args {
    /// Comma-separated scenarios, or `all`: smoke, issue3-10k, big-recording, scale-1k, scale-10k, scale-100k,
    /// cpu-10k, realistic-2k, realistic-2k-counted, chats-1k, chats-10k (Open Lines sessions to a chat connection).
    #[arg(long, default_value = "smoke", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// One scenario (with --child: run it in this process and print its row as one JSON line).
    #[arg(long)]
    scenario: Option<String>,
    /// Internal: this process is the child running `--scenario`'s export (the target JSON on stdin).
    #[arg(long, hide = true, requires = "scenario")]
    child: bool,
    /// Run the exports in this process, next to the emulators, instead of one child each (RSS and CPU then
    /// include the emulators, and peaks accumulate over scenarios).
    #[arg(long)]
    in_process: bool,
    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Per-scenario time limit, e.g. 30m, 90s, 1h (plain numbers are seconds).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    timeout: Duration,
    /// Megabytes copied over loopback to measure its throughput (0 skips it).
    #[arg(long, default_value = "256")]
    loopback_mb: u64,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value = "10")]
    progress_secs: u64,
    /// Pin the calls (or chat uploads) in flight in every scenario (as the CLI's `--concurrency N`) instead of the
    /// scenario's setting.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: use e.g. 30m, 90s, 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: use e.g. 30m, 90s, 1h")),
    };
    if secs == 0 {
        return Err("the timeout must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

impl Args {
    fn options(&self) -> RunOptions {
        RunOptions {
            timeout: self.timeout,
            loopback_probe_bytes: self.loopback_mb * 1024 * 1024,
            progress_every: Duration::from_secs(self.progress_secs.max(1)),
        }
    }

    /// The scenario called `name`, with `--concurrency` applied.
    fn scenario(&self, name: &str) -> Result<Scenario, BenchError> {
        let mut s = scenario(name).ok_or_else(|| BenchError::UnknownScenario(name.to_string()))?;
        if let Some(n) = self.concurrency {
            s.concurrency = Some(usize::from(n));
        }
        Ok(s)
    }

    fn names(&self) -> Result<Vec<String>, BenchError> {
        let mut out = Vec::new();
        for n in &self.scenarios {
            let n = n.trim();
            if n == "all" {
                out.extend(NAMES.iter().map(|s| s.to_string()));
            } else if scenario(n).is_some() {
                out.push(n.to_string());
            } else if !n.is_empty() {
                return Err(BenchError::UnknownScenario(n.to_string()));
            }
        }
        Ok(out)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The export child runs on the runtime `b24sense export` uses (one worker thread, one malloc arena).
    let rt = if args.child {
        b24sense_engine::runtime::export_runtime()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match rt {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    if args.child {
        return match child(&args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let names = match args.names() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rows = Vec::new();
    let mut failed = false;
    for name in &names {
        let result = if args.in_process {
            match args.scenario(name) {
                Ok(s) => run_scenario(&s, &args.options()).await,
                Err(e) => Err(e),
            }
        } else {
            run_with_child(&args, name).await
        };
        match result {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("[{name}] failed: {e}");
                failed = true;
            }
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&rows) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", render_table(&rows));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The child: reads the target from stdin, runs the scenario's export and prints what it measured as one JSON line.
async fn child(args: &Args) -> Result<(), BenchError> {
    let name = args.scenario.clone().unwrap_or_default();
    let s = args.scenario(&name)?;
    let mut input = String::new();
    tokio::io::stdin().read_to_string(&mut input).await?;
    let target: Target = serde_json::from_str(&input)?;
    let m = run_export_side(&s, &target, &args.options()).await?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// Starts the emulators here and runs the export in a child process of this binary; kills the child if it
/// outlives its timeout by 3 minutes.
async fn run_with_child(args: &Args, name: &str) -> Result<RunRow, BenchError> {
    let s = args.scenario(name)?;
    let loopback_bps = loopback(name, args.loopback_mb * 1024 * 1024).await?;
    eprintln!("[{name}] starting emulators: {}", s.describe());
    let emulators = Emulators::start(&s).await?;
    let cpu_before = cpu_seconds().unwrap_or(0.0);

    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--scenario")
        .arg(name)
        .arg("--child")
        .arg("--timeout")
        .arg(args.timeout.as_secs().to_string())
        .arg("--progress-secs")
        .arg(args.progress_secs.to_string())
        .args(
            args.concurrency
                .map(|n| vec!["--concurrency".to_string(), n.to_string()])
                .unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    // The target carries the emulators' credentials: stdin keeps them out of the process list.
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| BenchError::Child("no stdin".into()))?;
    stdin
        .write_all(serde_json::to_string(emulators.target())?.as_bytes())
        .await?;
    drop(stdin);

    let limit = args.timeout + Duration::from_secs(180);
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| BenchError::Child(format!("no result after {limit:?}; killed")))??;
    let emulator_cpu_s = cpu_seconds().unwrap_or(0.0) - cpu_before;
    if !output.status.success() {
        return Err(BenchError::Child(format!("exited with {}", output.status)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| BenchError::Child("printed no result".into()))?;
    let m: ExportMeasure = serde_json::from_str(line)?;
    Ok(make_row(
        &s,
        &emulators,
        &m,
        Placement::Child { emulator_cpu_s },
        loopback_bps,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
