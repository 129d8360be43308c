//! Percentiles, per-phase resource use, the printed table and the JSON file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cluster::Operator;
use crate::procstat::{self, PeakRss};
use crate::sidecars::Pushes;

/// A distribution in milliseconds (nearest-rank percentiles).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Dist {
    /// Values.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The distribution of `values`.
pub fn dist(values: &[f64]) -> Dist {
    if values.is_empty() {
        return Dist::default();
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Dist {
        n: v.len(),
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Rounds for the JSON file (microsecond resolution is plenty).
pub fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// The processes whose CPU time each phase reports.
pub struct Procs {
    /// `(label, pid)`: the operator, kube-apiserver, etcd and this benchmark.
    pub list: Vec<(&'static str, u32)>,
    /// The operator's RSS sampler.
    pub peak: PeakRss,
    /// The API server's port.
    pub apiserver_port: u16,
    /// The operator's HTTPS port.
    pub operator_port: u16,
}

impl Procs {
    /// The operator plus the control plane's servers (children of this process) plus us.
    pub fn find(operator: u32, operator_port: u16, apiserver_port: u16) -> Self {
        let mut list = vec![("operator", operator)];
        for name in ["kube-apiserver", "etcd"] {
            if let Some(pid) = procstat::children_named(name).first() {
                list.push((name, *pid));
            }
        }
        list.push(("bench", std::process::id()));
        Self {
            list,
            peak: PeakRss::start(operator),
            apiserver_port,
            operator_port,
        }
    }
}

/// Operator series whose change over a phase is reported.
const SERIES: [&str; 9] = [
    "llmesh_operator_snapshot_polls_total",
    "llmesh_operator_token_reviews_total",
    "llmesh_operator_route_compiles_total",
    "llmesh_operator_snapshots_encoded_total",
    "llmesh_operator_recompute_duration_seconds_sum",
    "llmesh_operator_recompute_duration_seconds_count",
    "llmesh_operator_reconciles_total",
    "llmesh_operator_status_writes_total",
    "llmesh_operator_events_total",
];

/// Resource use and operator counters over one phase.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// What ran.
    pub name: String,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// CPU seconds per process (`operator`, `kube-apiserver`, `etcd`, `bench`).
    pub cpu_s: BTreeMap<String, f64>,
    /// Operator CPU as a share of one core over the phase.
    pub operator_cores: f64,
    /// Operator RSS at the end, MiB.
    pub operator_rss_mib: f64,
    /// Highest operator RSS sampled during the phase (every 50 ms), MiB.
    pub operator_rss_peak_mib: f64,
    /// Operator `VmHWM` at the end (peak since start), MiB.
    pub operator_hwm_mib: f64,
    /// Operator threads at the end.
    pub operator_threads: u64,
    /// Operator file descriptors at the end.
    pub operator_fds: usize,
    /// Established connections from the operator to the API server at the end.
    pub operator_apiserver_connections: usize,
    /// Established connections on the operator's HTTPS port at the end.
    pub operator_sidecar_connections: usize,
    /// 1-minute load average at the end.
    pub load1: f64,
    /// What the sidecars received.
    pub pushes: Pushes,
    /// Changes of the operator's counters (and recompute time) over the phase.
    pub operator_metrics: BTreeMap<String, f64>,
}

/// A phase being measured.
pub struct Meter {
    name: String,
    t0: Instant,
    cpu0: Vec<f64>,
    metrics0: BTreeMap<String, f64>,
}

fn mib(kib: u64) -> f64 {
    round3(kib as f64 / 1024.0)
}

impl Meter {
    /// Starts measuring (resets the operator's RSS peak).
    pub async fn start(name: &str, procs: &Procs, op: &Operator) -> Self {
        procs.peak.take();
        Self {
            name: name.to_string(),
            t0: Instant::now(),
            cpu0: procs
                .list
                .iter()
                .map(|(_, pid)| procstat::cpu_seconds(*pid).unwrap_or(f64::NAN))
                .collect(),
            metrics0: op.metrics().await.unwrap_or_default(),
        }
    }

    /// Ends the phase.
    pub async fn finish(self, procs: &Procs, op: &Operator, pushes: Pushes) -> Phase {
        let wall = self.t0.elapsed().as_secs_f64();
        let peak = procs.peak.take();
        let mut cpu_s = BTreeMap::new();
        for ((label, pid), c0) in procs.list.iter().zip(&self.cpu0) {
            let c1 = procstat::cpu_seconds(*pid).unwrap_or(f64::NAN);
            cpu_s.insert(label.to_string(), round3(c1 - c0));
        }
        let s = procstat::sample(procs.list[0].1).unwrap_or_default();
        let metrics1 = op.metrics().await.unwrap_or_default();
        let (api_conns, sidecar_conns, fds) =
            procstat::connections(procs.list[0].1, procs.apiserver_port, procs.operator_port);
        let operator_metrics = metrics1
            .iter()
            .filter(|(k, _)| SERIES.iter().any(|s| k.starts_with(s)))
            .map(|(k, v)| (k.clone(), v - self.metrics0.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d != 0.0)
            .map(|(k, d)| (k, round3(d)))
            .collect();
        Phase {
            operator_cores: round3(cpu_s.get("operator").copied().unwrap_or(0.0) / wall),
            name: self.name,
            wall_s: round3(wall),
            cpu_s,
            operator_rss_mib: mib(s.rss_kib),
            operator_rss_peak_mib: mib(peak.max(s.rss_kib)),
            operator_hwm_mib: mib(s.hwm_kib),
            operator_threads: s.threads,
            operator_fds: fds,
            operator_apiserver_connections: api_conns,
            operator_sidecar_connections: sidecar_conns,
            load1: procstat::load1(),
            pushes,
            operator_metrics,
        }
    }
}

/// `YYYYMMDD-HHMMSS` (UTC) and the RFC 3339 form of now.
pub fn timestamps() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    (
        format!("{y:04}{mo:02}{d:02}-{h:02}{m:02}{s:02}"),
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z"),
    )
}

/// The commit and whether the tree has changes, for the record.
pub fn git_state(repo: &Path) -> serde_json::Value {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    serde_json::json!({
        "commit": run(&["rev-parse", "HEAD"]),
        "dirty": run(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
    })
}

/// Writes `value` as `controlplane-<stamp>.json` in `dir`.
pub fn write_json(dir: &Path, stamp: &str, value: &serde_json::Value) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("controlplane-{stamp}.json"));
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// One line of a latency table.
pub fn dist_row(label: &str, d: &Dist) -> String {
    format!(
        "  {label:<34} {:>9.1} {:>9.1} {:>9.1} {:>9.1}   (n={})",
        d.p50, d.p90, d.p99, d.max, d.n
    )
}

/// Bytes in words.
pub fn bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// The resource table: one row per phase.
pub fn phase_table(phases: &[Phase]) -> String {
    let mut out = String::from(
        "  phase                 wall s  operator cpu s (cores)  apiserver s  etcd s  bench s   RSS end / peak MiB  conns to API   200s      bytes pushed\n",
    );
    for p in phases {
        let c = |k: &str| p.cpu_s.get(k).copied().unwrap_or(f64::NAN);
        out.push_str(&format!(
            "  {:<20} {:>7.1}  {:>8.2} ({:>4.2})        {:>9.2}  {:>6.2}  {:>7.2}   {:>7.1} / {:>7.1}  {:>12}  {:>5}  {:>16}\n",
            p.name,
            p.wall_s,
            c("operator"),
            p.operator_cores,
            c("kube-apiserver"),
            c("etcd"),
            c("bench"),
            p.operator_rss_mib,
            p.operator_rss_peak_mib,
            p.operator_apiserver_connections,
            p.pushes.snapshots,
            bytes(p.pushes.bytes as f64),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let d = dist(&v);
        assert_eq!((d.p50, d.p90, d.p99, d.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(d.mean, 50.5);
        let one = dist(&[7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert_eq!(dist(&[]).n, 0);
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let (stamp, rfc) = timestamps();
        assert_eq!(stamp.len(), 15);
        assert_eq!(&stamp[..4], &rfc[..4]);
        assert!(rfc.ends_with('Z'));
    }
}
