//! CPU time and memory of processes, from `/proc`.
//!
//! CPU is `utime + stime` of `/proc/PID/stat` (ticks of `USER_HZ`); memory is `VmRSS` and
//! `VmHWM` (the peak RSS over the process's life) of `/proc/PID/status`. A sampler reads the
//! operator's `VmRSS` every 50 ms so each phase also gets its own peak.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

/// Memory and threads of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size since the process started, KiB.
    pub hwm_kib: u64,
    /// Threads.
    pub threads: u64,
}

/// Ticks per second of the CPU times in `/proc/PID/stat` (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/PID/stat` after the command name (which may contain spaces and
/// parentheses, so it is skipped up to the last `)`). Index 0 is field 3 (`state`).
fn stat_fields(pid: u32) -> Result<(String, Vec<String>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let open = text.find('(').context("no command in stat")?;
    let close = text.rfind(')').context("no command in stat")?;
    let comm = text[open + 1..close].to_string();
    let rest = text[close + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Ok((comm, rest))
}

/// CPU seconds (user + system) of `pid`.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let (_, f) = stat_fields(pid)?;
    // utime and stime are fields 14 and 15, i.e. indices 11 and 12 here.
    let ticks: u64 = f
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .zip(f.get(12).and_then(|s| s.parse::<u64>().ok()))
        .map(|(u, s)| u + s)
        .context("utime/stime missing from stat")?;
    Ok(ticks as f64 / ticks_per_second())
}

fn status_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Memory and threads of `pid`.
pub fn sample(pid: u32) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(Sample {
        rss_kib: status_kib(&status, "VmRSS:"),
        hwm_kib: status_kib(&status, "VmHWM:"),
        threads: status_kib(&status, "Threads:"),
    })
}

/// The children of this process named `comm` (e.g. the test control plane's `kube-apiserver`
/// and `etcd`).
pub fn children_named(comm: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid)
                .map(|(c, f)| c == comm && f.get(1) == Some(&me))
                .unwrap_or(false)
        })
        .collect()
}

/// Established TCP connections of `pid`: `(to remote port `to`, on local port `on`, open fds)`.
pub fn connections(pid: u32, to: u16, on: u16) -> (usize, usize, usize) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0, 0);
    };
    let mut count = 0;
    let mut inodes = std::collections::HashSet::new();
    for fd in fds.flatten() {
        count += 1;
        if let Ok(link) = std::fs::read_link(fd.path())
            && let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let (mut out, mut inbound) = (0, 0);
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
                continue;
            }
            let port = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            if port(f[2]) == Some(to) {
                out += 1;
            }
            if port(f[1]) == Some(on) {
                inbound += 1;
            }
        }
    }
    (out, inbound, count)
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The soft limit on open files of this process (children inherit it).
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string(Path::new("/proc/self/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Tracks the highest `VmRSS` of a process between [`PeakRss::take`] calls.
#[derive(Clone)]
pub struct PeakRss(Arc<AtomicU64>);

impl PeakRss {
    /// Starts sampling `pid` every 50 ms on the current runtime, until the process is gone.
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    return;
                };
                p.fetch_max(status_kib(&text, "VmRSS:"), Ordering::Relaxed);
            }
        });
        Self(peak)
    }

    /// The peak since the last call (KiB), restarting the count.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        assert!(s.threads >= 1, "{s:?}");
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
        assert!(open_files_limit().unwrap() > 0);
    }

    #[test]
    fn status_values_are_kib() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t7\n";
        assert_eq!(status_kib(text, "VmRSS:"), 1024);
        assert_eq!(status_kib(text, "VmHWM:"), 2048);
        assert_eq!(status_kib(text, "Threads:"), 7);
        assert_eq!(status_kib(text, "VmSwap:"), 0);
    }
}
