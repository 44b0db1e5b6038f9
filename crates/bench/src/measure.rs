//! Process measurements read from `/proc` (Linux), and the loopback throughput that bounds byte-heavy runs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

/// Clock ticks per second of `/proc/self/stat` (`sysconf(_SC_CLK_TCK)`, 100 on every Linux we run on).
const CLK_TCK: f64 = 100.0;

/// A `kB` field of `/proc/self/status` (`VmHWM`, `VmRSS`), in bytes; `None` off Linux.
pub fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Peak resident set size of this process so far.
pub fn peak_rss() -> Option<u64> {
    status_bytes("VmHWM")
}

/// Current resident set size.
pub fn current_rss() -> Option<u64> {
    status_bytes("VmRSS")
}

/// User + system CPU seconds of this process (all threads) so far.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces and parentheses: fields are counted after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 3 of the full line, so utime (14) and stime (15) are at 11 and 12 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// Copies `bytes` through a 127.0.0.1 TCP connection (one writer thread, one reader) and returns bytes per second.
/// Buffers are 256 KiB, so the measurement itself adds nothing noticeable to the peak RSS.
pub fn loopback_throughput(bytes: u64) -> std::io::Result<f64> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let addr = listener.local_addr()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stream = TcpStream::connect(addr)?;
        let buf = vec![0x5au8; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            stream.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let (mut conn, _) = listener.accept()?;
    let started = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-6);
    writer
        .join()
        .map_err(|_| std::io::Error::other("loopback writer panicked"))??;
    if got != bytes {
        return Err(std::io::Error::other(format!(
            "loopback copy moved {got} of {bytes} bytes"
        )));
    }
    Ok(got as f64 / elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readings_are_present_on_linux() {
        if cfg!(target_os = "linux") {
            // The current size first: the high-water mark read after it can only be as large or larger.
            let now = current_rss().expect("VmRSS");
            let peak = peak_rss().expect("VmHWM");
            assert!(peak >= now && now > 0);
            assert!(cpu_seconds().expect("cpu") >= 0.0);
        }
    }

    #[test]
    fn loopback_copy_moves_every_byte() {
        let rate = loopback_throughput(8 * 1024 * 1024).expect("loopback copy");
        assert!(rate > 0.0);
    }
}
