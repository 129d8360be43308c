//! `llmesh-cpbench`: the control-plane fan-out benchmark (DESIGN.md section 6: "kubectl apply ->
//! all sidecars serving the new snapshot in < 1 s p99 with 1,000 sidecars connected; operator
//! memory <= 64 MiB at 1,000 routes").
//!
//! In one run, on a real etcd + kube-apiserver (`llmesh-testenv`) with the real
//! `llmesh-operator` binary running as its least-privilege ServiceAccount:
//! 1. N Pods (objects only) and N Pod-bound tokens (TokenRequest, audience llmesh);
//! 2. N simulated sidecars, each long-polling over its own HTTPS connection as the real one;
//! 3. K server-side applies of one LLMRoute's weights, each timed from the apply call returning
//!    to every sidecar holding the new snapshot;
//! 4. R more LLMRoutes created, timed until every sidecar holds a snapshot with all of them and
//!    until every route's status reports all sidecars ready; then edits at that scale;
//! 5. operator CPU and memory (from `/proc`) and its counters (from `/metrics`) per phase, and
//!    the bytes pushed.
//!
//! See `bench/controlplane/README.md`.
#![forbid(unsafe_code)]

mod cluster;
mod procstat;
mod report;
mod reports;
mod sidecars;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use kube::api::Api;
use llmesh_api::LLMRoute;
use llmesh_api::duration::parse_duration;
use llmesh_testenv::ControlPlane;
use serde_json::json;

use crate::cluster::Operator;
use crate::report::{Dist, Meter, Phase, Procs, dist, dist_row, ms, round3};
use crate::sidecars::{Fleet, Target, Tracker};

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// Control-plane fan-out benchmark: N simulated sidecars on the real operator.
#[derive(Parser, Debug)]
#[command(name = "llmesh-cpbench", about)]
struct Args {
    /// Simulated sidecars (one Pod and one Pod-bound token each).
    #[arg(short = 'n', long, default_value_t = 1000)]
    sidecars: usize,
    /// Timed edits of one route while it is the only one.
    #[arg(short = 'k', long, default_value_t = 20)]
    changes: usize,
    /// LLMRoutes to create for the scale phase (0 skips it).
    #[arg(short = 'r', long, default_value_t = 1000)]
    routes: usize,
    /// Timed edits of the same route once the R routes exist (every push carries all of them).
    #[arg(long, default_value_t = 5)]
    changes_at_scale: usize,
    /// The llmesh-operator binary. Default: the one next to this binary.
    #[arg(long)]
    operator_bin: Option<PathBuf>,
    /// Pause after every sidecar has an edit, before the next edit.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    pause: Duration,
    /// Length of the idle measurements (after connecting, and at scale).
    #[arg(long, default_value = "10s", value_parser = duration)]
    idle: Duration,
    /// Extra polls per second from one more pod, each abandoned before its hold ends, as other
    /// sidecars' re-polls arrive all the time in a large cluster (1,000 sidecars polling every
    /// 30 s make 33/s). 0: none.
    #[arg(long, default_value_t = 0.0)]
    background_polls: f64,
    /// API calls in flight while creating pods, tokens and routes.
    #[arg(long, default_value_t = 32)]
    api_concurrency: usize,
    /// Longest wait for all sidecars in any one step.
    #[arg(long, default_value = "120s", value_parser = duration)]
    timeout: Duration,
    /// Longest wait for every route's status to report all sidecars ready (0s skips it).
    #[arg(long, default_value = "180s", value_parser = duration)]
    status_timeout: Duration,
    /// Directory for the JSON result. Default: <repo>/bench/results.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// The operator's log filter (LLMESH_LOG).
    #[arg(long, default_value = "info")]
    operator_log_level: String,
    /// Keep the operator's log at this path (default: deleted with the control plane).
    #[arg(long)]
    operator_log: Option<PathBuf>,
    /// Sidecars ask for whole snapshots only (the protocol before deltas), for comparison.
    #[arg(long)]
    no_deltas: bool,
    /// The simulated sidecars' longest backoff between failed polls. Default: the sidecar's
    /// `BACKOFF_MAX` (`sidecar/src/operator_client.rs`); `30s` was the cap before issue 23.
    #[arg(long, default_value = "4s", value_parser = duration)]
    backoff_max: Duration,
    /// After the edits: every sidecar also reports usage once a second for this long against one
    /// LLMBudget; the operator's CPU, memory and answer times are measured, and the budget's
    /// status is checked against what was acknowledged (0s skips it).
    #[arg(long, default_value = "0s", value_parser = duration)]
    reports: Duration,
    /// After the edits: stop the operator for this long, edit the route while it is down, start
    /// it again on the same port, and time until every sidecar serves the edit (0s skips it).
    #[arg(long, default_value = "0s", value_parser = duration)]
    outage: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llmesh-cpbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let operator_bin = cluster::operator_bin(args.operator_bin.as_deref())?;
    // Each sidecar is a socket here and one in the operator (which inherits this limit).
    let nofile = procstat::open_files_limit();
    if let Some(limit) = nofile
        && (limit as usize) < args.sidecars + 512
    {
        bail!(
            "open-files limit {limit} is too low for {} sidecars (each holds a socket in this process and one in the operator): raise it with `ulimit -n {}`",
            args.sidecars,
            args.sidecars + 1024
        );
    }
    let load_before = procstat::load1();
    if load_before > 0.5 {
        eprintln!(
            "llmesh-cpbench: the 1-minute load average is {load_before:.2} before starting: other work on this machine will show in the numbers"
        );
    }
    let t0 = Instant::now();
    let cp = ControlPlane::start().await?;
    let control_plane_s = t0.elapsed();
    let result = tokio::select! {
        r = bench(&cp, &args, &operator_bin) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let stopped = cp.stop().await;
    let mut result = result?;
    stopped?;

    let (stamp, rfc3339) = report::timestamps();
    let repo = llmesh_testenv::repo_root();
    result["timestamp"] = json!(rfc3339);
    result["git"] = report::git_state(&repo);
    result["machine"] = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "open_files_limit": nofile,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "load1_before": load_before,
        "load1_after": procstat::load1(),
    });
    result["setup"]["control_plane_s"] = json!(round3(control_plane_s.as_secs_f64()));
    result["operator_bin"] = json!(operator_bin.display().to_string());
    let dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| repo.join("bench/results"));
    let path = report::write_json(&dir, &stamp, &result)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// Everything that needs the control plane; the operator and sidecars stop before it returns.
async fn bench(
    cp: &ControlPlane,
    args: &Args,
    operator_bin: &std::path::Path,
) -> Result<serde_json::Value> {
    let client = cp.client()?;
    cp.install_llmesh().await?;
    let log = args
        .operator_log
        .clone()
        .unwrap_or_else(|| cp.dir().join("operator.log"));
    let mut op = Operator::start(cp, operator_bin, &log, &args.operator_log_level).await?;
    let outcome = measure(cp, &client, args, &mut op, operator_bin, &log).await;
    let alive = op.running();
    op.stop().await;
    match outcome {
        Ok(v) => Ok(v),
        Err(e) if !alive => Err(e.context(format!(
            "the operator died; last lines of its log:\n{}",
            op.log_tail(40)
        ))),
        Err(e) => Err(e),
    }
}

/// One change phase's results.
struct Changes {
    per_sidecar: Vec<f64>,
    per_sidecar_from_start: Vec<f64>,
    all: Vec<f64>,
    rows: Vec<serde_json::Value>,
    incomplete: usize,
}

async fn measure(
    cp: &ControlPlane,
    client: &kube::Client,
    args: &Args,
    op: &mut Operator,
    operator_bin: &std::path::Path,
    log: &std::path::Path,
) -> Result<serde_json::Value> {
    let n = args.sidecars;
    let apiserver_port = cp
        .server_url()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0);
    let mut procs = Procs::find(op.pid, op.port, apiserver_port);
    let ns = cp.create_namespace("cpbench").await?;
    let routes: Api<LLMRoute> = Api::namespaced(client.clone(), &ns);
    cluster::service_account(client, &ns).await?;
    cluster::apply_edited_route(&routes, None).await?;
    println!(
        "llmesh-cpbench: {n} sidecars, {} edits, {} routes, {} edits at scale; operator {} (pid {}, ready in {:.2?})",
        args.changes,
        args.routes,
        args.changes_at_scale,
        op.log.display(),
        op.pid,
        op.startup
    );

    // --- pods and tokens --------------------------------------------------------------------
    let t = Instant::now();
    // One more pod for the background polls, if any: the last one. And one that reads the
    // whole snapshot now and then (the sidecars may receive only deltas), so that no
    // measured sidecar's poll is disturbed.
    let extra = usize::from(args.background_polls > 0.0);
    let pods = cluster::create_pods(client, &ns, n + 1 + extra, args.api_concurrency).await?;
    let pods_s = t.elapsed();
    let t = Instant::now();
    let mut tokens = cluster::pod_tokens(client, &ns, &pods, args.api_concurrency).await?;
    let background_token = if extra > 0 { tokens.pop() } else { None };
    let probe = tokens.pop().unwrap_or_default();
    let tokens_s = t.elapsed();
    println!(
        "setup: {n} pods in {:.2?}, {n} Pod-bound tokens in {:.2?}",
        pods_s, tokens_s
    );
    let mut phases: Vec<Phase> = Vec::new();

    // --- connect ----------------------------------------------------------------------------
    let target = Target::new(
        SocketAddr::from(([127, 0, 0, 1], op.port)),
        &cluster::operator_ca(client).await?,
    )?;
    let meter = Meter::start("connect", &procs, op).await;
    let t = Instant::now();
    let report_tokens = if args.reports > Duration::ZERO {
        tokens.clone()
    } else {
        Vec::new()
    };
    let (fleet, rx) = Fleet::start(&target, tokens, !args.no_deltas, args.backoff_max);
    let mut tracker = Tracker::new(n, rx);
    tracker.expect_routes(1);
    let all_connected = tracker.wait_all(t + args.timeout).await;
    let connect_all = t.elapsed();
    let connect = arrivals(&tracker, t);
    phases.push(meter.finish(&procs, op, tracker.take_phase()).await);
    if !all_connected {
        fleet.stop().await;
        bail!(
            "only {} of {n} sidecars received their first snapshot within {:?}; answers: {:?}",
            tracker.reached_count(),
            args.timeout,
            phases[0].pushes
        );
    }
    let first_snapshot_bytes = sidecars::whole_snapshot_bytes(&target, &probe).await?;
    println!(
        "connect: all {n} sidecars serving the first snapshot ({}) {:.2?} after starting them (per sidecar p50 {:.1} ms, p99 {:.1} ms)",
        report::bytes(first_snapshot_bytes as f64),
        connect_all,
        connect.p50,
        connect.p99
    );

    let background = background_token
        .map(|token| sidecars::background_polls(&target, token, args.background_polls));

    let meter = Meter::start("idle", &procs, op).await;
    tracker.pump_for(args.idle).await;
    phases.push(meter.finish(&procs, op, tracker.take_phase()).await);

    // --- edits with one route ---------------------------------------------------------------
    let meter = Meter::start("edits", &procs, op).await;
    let edits = change_phase(&mut tracker, &routes, args, 0, args.changes).await?;
    phases.push(meter.finish(&procs, op, tracker.take_phase()).await);

    // --- usage reports ------------------------------------------------------------------------
    let mut usage = json!(null);
    if args.reports > Duration::ZERO {
        usage = report_phase(
            client,
            &ns,
            &target,
            &report_tokens,
            args,
            op,
            &procs,
            &mut tracker,
            &mut phases,
        )
        .await?;
    }

    // --- operator outage -------------------------------------------------------------------
    let mut outage = json!(null);
    let mut next_edit = args.changes;
    if args.outage > Duration::ZERO {
        outage = outage_phase(
            cp,
            &mut tracker,
            &routes,
            args,
            next_edit,
            (op, operator_bin, log),
            &mut phases,
            &mut procs,
            apiserver_port,
        )
        .await?;
        next_edit += 1;
    }

    // --- R routes ---------------------------------------------------------------------------
    let mut scale = json!(null);
    let mut edits_at_scale = None;
    if args.routes > 0 {
        let r = args.routes;
        let meter = Meter::start("create-routes", &procs, op).await;
        tracker.expect_routes(r + 1);
        let t = Instant::now();
        cluster::create_routes(&routes, r, args.api_concurrency).await?;
        let created = t.elapsed();
        let all = tracker.wait_all(Instant::now() + args.timeout).await;
        let all_serving = t.elapsed();
        let from_first = arrivals(&tracker, t);
        let from_last = arrivals(&tracker, t + created);
        let size = sidecars::whole_snapshot_bytes(&target, &probe).await?;
        phases.push(meter.finish(&procs, op, tracker.take_phase()).await);
        println!(
            "routes: {r} created in {:.2?}; {} of {n} sidecars serving all {} routes {:.2?} after the first create ({:.2?} after the last); snapshot {}",
            created,
            tracker.reached_count(),
            r + 1,
            all_serving,
            all_serving.saturating_sub(created),
            report::bytes(size as f64)
        );

        let mut status = json!(null);
        if args.status_timeout > Duration::ZERO {
            let meter = Meter::start("route-status", &procs, op).await;
            let t = Instant::now();
            let mut last = (0, 0);
            while t.elapsed() < args.status_timeout {
                last = cluster::routes_ready(&routes, n).await?;
                if last.0 == last.1 {
                    break;
                }
                tracker.pump_for(Duration::from_millis(500)).await;
            }
            let waited = t.elapsed();
            phases.push(meter.finish(&procs, op, tracker.take_phase()).await);
            println!(
                "status: {} of {} routes Ready with readySidecars={n} after {:.2?} more",
                last.0, last.1, waited
            );
            status = json!({
                "routes_ready": last.0,
                "routes": last.1,
                "converged": last.0 == last.1,
                "after_all_serving_s": round3(waited.as_secs_f64()),
            });
        }

        let meter = Meter::start("idle-at-scale", &procs, op).await;
        tracker.pump_for(args.idle).await;
        phases.push(meter.finish(&procs, op, tracker.take_phase()).await);

        if args.changes_at_scale > 0 {
            let meter = Meter::start("edits-at-scale", &procs, op).await;
            let c = change_phase(
                &mut tracker,
                &routes,
                args,
                next_edit,
                args.changes_at_scale,
            )
            .await?;
            phases.push(meter.finish(&procs, op, tracker.take_phase()).await);
            edits_at_scale = Some(c);
        }

        scale = json!({
            "routes_created": r,
            "create_s": round3(created.as_secs_f64()),
            "all_sidecars_serving": all,
            "first_create_to_all_serving_s": round3(all_serving.as_secs_f64()),
            "last_create_to_all_serving_s": round3(all_serving.saturating_sub(created).as_secs_f64()),
            "per_sidecar_from_first_create_ms": from_first,
            "per_sidecar_from_last_create_ms": from_last,
            "snapshot_bytes": size,
            "status": status,
        });
    }
    if let Some(b) = background {
        b.abort();
    }
    fleet.stop().await;

    // --- report -----------------------------------------------------------------------------
    let edits_json = changes_json(&edits, n);
    let scale_edits_json = edits_at_scale.as_ref().map(|c| changes_json(c, n));
    let peak_rss = phases
        .iter()
        .map(|p| p.operator_rss_peak_mib)
        .fold(0.0, f64::max);
    let at_scale_rss = phases
        .iter()
        .find(|p| p.name == "idle-at-scale")
        .map(|p| p.operator_rss_mib);
    let p99_all = dist(&edits.all).p99;
    let target = json!({
        "apply_to_all_serving_p99_limit_ms": 1000,
        "apply_to_all_serving_p99_ms": round3(p99_all),
        "apply_to_all_serving_met": edits.incomplete == 0 && p99_all < 1000.0,
        "operator_memory_limit_mib": 64,
        "operator_rss_idle_at_scale_mib": at_scale_rss,
        "operator_rss_peak_mib": peak_rss,
        "operator_memory_met": at_scale_rss.map(|m| m <= 64.0),
        "operator_memory_peak_met": peak_rss <= 64.0,
    });

    println!("\n== apply -> sidecar holding the new snapshot (ms; from the apply call returning)");
    println!(
        "  {:<34} {:>9} {:>9} {:>9} {:>9}",
        "", "p50", "p90", "p99", "max"
    );
    println!(
        "{}",
        dist_row(
            &format!("per sidecar ({} edits x {n})", edits.rows.len()),
            &dist(&edits.per_sidecar)
        )
    );
    println!("{}", dist_row("all sidecars, per edit", &dist(&edits.all)));
    println!(
        "{}",
        dist_row(
            "per sidecar, from apply call start",
            &dist(&edits.per_sidecar_from_start)
        )
    );
    if let Some(c) = &edits_at_scale {
        println!(
            "{}",
            dist_row(
                &format!("per sidecar, {} routes", args.routes + 1),
                &dist(&c.per_sidecar)
            )
        );
        println!(
            "{}",
            dist_row(
                &format!("all sidecars, {} routes", args.routes + 1),
                &dist(&c.all)
            )
        );
    }
    println!(
        "  pushed per edit: {} in total, {} per sidecar (1 route){}",
        report::bytes(edits_json["bytes_per_edit"].as_f64().unwrap_or(0.0)),
        report::bytes(
            edits_json["bytes_per_edit_per_sidecar"]
                .as_f64()
                .unwrap_or(0.0)
        ),
        scale_edits_json.as_ref().map_or(String::new(), |s| format!(
            "; {} in total, {} per sidecar ({} routes)",
            report::bytes(s["bytes_per_edit"].as_f64().unwrap_or(0.0)),
            report::bytes(s["bytes_per_edit_per_sidecar"].as_f64().unwrap_or(0.0)),
            args.routes + 1
        ))
    );
    if edits.incomplete > 0 {
        println!(
            "  {} edits did not reach every sidecar within {:?}",
            edits.incomplete, args.timeout
        );
    }
    println!(
        "\n== resources per phase (CPU seconds; the machine has all of these on the same cores)"
    );
    print!("{}", report::phase_table(&phases));
    println!(
        "\n== targets: apply -> all {n} serving p99 {:.1} ms (< 1000: {}); operator RSS at {} routes {} MiB, peak {:.1} MiB (<= 64)",
        p99_all,
        if target["apply_to_all_serving_met"] == json!(true) {
            "met"
        } else {
            "NOT met"
        },
        args.routes,
        at_scale_rss.map_or("-".into(), |m| format!("{m:.1}")),
        peak_rss
    );

    Ok(json!({
        "benchmark": "controlplane-fanout",
        "params": {
            "sidecars": n,
            "changes": args.changes,
            "routes": args.routes,
            "changes_at_scale": args.changes_at_scale,
            "pause_ms": ms(args.pause),
            "idle_s": args.idle.as_secs_f64(),
            "api_concurrency": args.api_concurrency,
            "background_polls_per_s": args.background_polls,
            "backoff_max_s": args.backoff_max.as_secs_f64(),
            "outage_s": args.outage.as_secs_f64(),
        },
        "setup": {
            "operator_ready_s": round3(op.startup.as_secs_f64()),
            "pods_s": round3(pods_s.as_secs_f64()),
            "tokens_s": round3(tokens_s.as_secs_f64()),
        },
        "connect": {
            "all_serving_s": round3(connect_all.as_secs_f64()),
            "per_sidecar_ms": connect,
            "snapshot_bytes": first_snapshot_bytes,
        },
        "edits": edits_json,
        "outage": outage,
        "usage_reports": usage,
        "scale": scale,
        "edits_at_scale": scale_edits_json,
        "phases": phases,
        "target": target,
    }))
}

/// The reconnect storm: SIGTERM the operator (held polls get `503`, `retry-after: 1`), edit
/// Every sidecar reports usage once a second for `--reports` against one budget; then waits for
/// the budget's status to show exactly what the operator acknowledged.
#[allow(clippy::too_many_arguments)]
async fn report_phase(
    client: &kube::Client,
    ns: &str,
    target: &sidecars::Target,
    tokens: &[String],
    args: &Args,
    op: &Operator,
    procs: &Procs,
    tracker: &mut Tracker,
    phases: &mut Vec<Phase>,
) -> Result<serde_json::Value> {
    use kube::api::PostParams;
    use llmesh_api::{BudgetLimit, BudgetPeriod, LLMBudget, LLMBudgetSpec};
    let budgets: Api<LLMBudget> = Api::namespaced(client.clone(), ns);
    let spec = LLMBudgetSpec {
        limit: BudgetLimit {
            usd: Some("1000000.00".into()),
            tokens: None,
        },
        period: Some(BudgetPeriod::Month),
        ..LLMBudgetSpec::default()
    };
    budgets
        .create(&PostParams::default(), &LLMBudget::new("fleet", spec))
        .await?;
    // Let the budget reach the snapshots (the operator counts reports only for budgets it
    // enforces).
    tracker.pump_for(Duration::from_secs(3)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (period_start, _) = llmesh_api::period::period_bounds(BudgetPeriod::Month, now);
    let meter = Meter::start("reports", procs, op).await;
    let pump = async {
        tracker
            .pump_for(args.reports + Duration::from_secs(1))
            .await;
    };
    let (outcome, ()) = tokio::join!(
        reports::run(target, tokens, "fleet", period_start, args.reports),
        pump
    );
    phases.push(meter.finish(procs, op, tracker.take_phase()).await);
    let t = Instant::now();
    let want = format!("${}", llmesh_api::money::format_usd(outcome.micro_usd));
    let mut shown = None;
    while t.elapsed() < Duration::from_secs(60) {
        shown = budgets.get("fleet").await?.status.and_then(|s| s.spent);
        if shown.as_deref() == Some(want.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exact = shown.as_deref() == Some(want.as_str());
    let latency = dist(&outcome.latencies_ms);
    let phase = phases.last().expect("pushed above");
    println!(
        "reports: {} sidecars x {:.0?}: {} acknowledged, {} failed (resent), ack p50 {:.1} ms p99 {:.1} ms; operator CPU {:.2} s, peak RSS {:.1} MiB; status.spent {} (acknowledged {want}) {:.2?} after the last report",
        tokens.len(),
        args.reports,
        outcome.acked,
        outcome.failed,
        latency.p50,
        latency.p99,
        phase.cpu_s.get("operator").copied().unwrap_or_default(),
        phase.operator_rss_peak_mib,
        shown.as_deref().unwrap_or("none"),
        t.elapsed()
    );
    if !exact {
        bail!("LLMBudget status.spent is {shown:?}, the operator acknowledged {want}");
    }
    Ok(json!({
        "sidecars": tokens.len(),
        "seconds": args.reports.as_secs_f64(),
        "acknowledged": outcome.acked,
        "failed": outcome.failed,
        "ack_ms": latency,
        "status_exact": exact,
        "status_after_ms": ms(t.elapsed()),
    }))
}

/// the route while it is down (`edit`), start it again on the same ports after `--outage`,
/// and time from `/readyz` answering to every sidecar serving the edit. The sidecars' failed
/// attempts are counted during the outage (their backoff) and after the restart (errors seen
/// on the way back).
#[allow(clippy::too_many_arguments)]
async fn outage_phase(
    cp: &ControlPlane,
    tracker: &mut Tracker,
    routes: &Api<LLMRoute>,
    args: &Args,
    edit: usize,
    (op, operator_bin, log): (&mut Operator, &std::path::Path, &std::path::Path),
    phases: &mut Vec<Phase>,
    procs: &mut Procs,
    apiserver_port: u16,
) -> Result<serde_json::Value> {
    let n = tracker.len();
    tracker.pump_for(args.pause).await;
    tracker.take_window();
    op.stop().await;
    let down = Instant::now();
    tracker.expect_change();
    cluster::apply_edited_route(routes, Some(edit)).await?;
    let remaining = args.outage.saturating_sub(down.elapsed());
    tracker.pump_for(remaining).await;
    let during = tracker.take_window();
    let restarted_log = log.with_extension("after-outage.log");
    let spawned = Instant::now();
    *op = Operator::start_on(
        cp,
        operator_bin,
        &restarted_log,
        &args.operator_log_level,
        (op.port, op.admin_port),
    )
    .await?;
    let ready = Instant::now();
    let down_for = spawned - down;
    *procs = Procs::find(op.pid, op.port, apiserver_port);
    let meter = Meter::start("reconnect", procs, op).await;
    let complete = tracker.wait_all(ready + args.timeout).await;
    let from_ready = arrivals(tracker, ready);
    let from_spawn = arrivals(tracker, spawned);
    tracker.pump_for(args.pause).await;
    let after = tracker.take_window();
    phases.push(meter.finish(procs, op, tracker.take_phase()).await);
    let failures = |p: &sidecars::Pushes| p.failures.values().sum::<u64>();
    println!(
        "outage: operator down {:.1?} (route edited meanwhile), ready {:.2?} after its start; {} {}/{n} sidecars serving the edit {:.0} ms after ready (p50 {:.0}, p90 {:.0}, p99 {:.0}); backoff max {:?}; failed polls: {} during the outage, {} after the restart {:?}",
        down_for,
        op.startup,
        if complete { "all" } else { "ONLY" },
        tracker.reached_count(),
        from_ready.max,
        from_ready.p50,
        from_ready.p90,
        from_ready.p99,
        args.backoff_max,
        failures(&during),
        failures(&after),
        after.failures,
    );
    Ok(json!({
        "down_s": round3(down_for.as_secs_f64()),
        "operator_ready_s": round3(op.startup.as_secs_f64()),
        "all_serving": complete,
        "reached": tracker.reached_count(),
        "per_sidecar_from_ready_ms": from_ready,
        "per_sidecar_from_start_ms": from_spawn,
        "during_outage": during,
        "after_restart": after,
    }))
}

/// Per sidecar, milliseconds from `from` to reaching the goal (those that did).
fn arrivals(tracker: &Tracker, from: Instant) -> Dist {
    let v: Vec<f64> = tracker
        .reached
        .iter()
        .flatten()
        .map(|at| ms(at.saturating_duration_since(from)))
        .collect();
    let mut d = dist(&v);
    for x in [&mut d.p50, &mut d.p90, &mut d.p99, &mut d.max, &mut d.mean] {
        *x = round3(*x);
    }
    d
}

/// `count` edits numbered from `first`, each timed from the apply call returning to every
/// sidecar holding the new version.
async fn change_phase(
    tracker: &mut Tracker,
    routes: &Api<LLMRoute>,
    args: &Args,
    first: usize,
    count: usize,
) -> Result<Changes> {
    let n = tracker.len();
    let mut out = Changes {
        per_sidecar: Vec::new(),
        per_sidecar_from_start: Vec::new(),
        all: Vec::new(),
        rows: Vec::new(),
        incomplete: 0,
    };
    for k in first..first + count {
        tracker.take_window();
        tracker.expect_change();
        let t0 = Instant::now();
        cluster::apply_edited_route(routes, Some(k)).await?;
        let applied = Instant::now();
        let complete = tracker.wait_all(applied + args.timeout).await;
        let mut lat = Vec::with_capacity(n);
        let mut early = 0;
        for at in tracker.reached.iter().flatten() {
            if *at < applied {
                early += 1;
            }
            lat.push(ms(at.saturating_duration_since(applied)));
            out.per_sidecar_from_start
                .push(ms(at.saturating_duration_since(t0)));
        }
        let d = dist(&lat);
        let all_ms = complete.then_some(d.max);
        let reached = tracker.reached_count();
        // Answers that come after the last sidecar (repeats, 304s) still belong to this edit.
        tracker.pump_for(args.pause).await;
        let w = tracker.take_window();
        let versions = tracker.serving_versions();
        let size = versions
            .first()
            .and_then(|(v, _)| v.as_ref())
            .and_then(|v| v.bytes);
        println!(
            "edit {:>3}: {} {reached}/{n} sidecars in {:>7.1} ms (p50 {:>6.1}, p99 {:>6.1}); apply call {:>5.1} ms ({early} had it before it returned); pushed {}",
            k + 1,
            if complete { "all" } else { "ONLY" },
            d.max,
            d.p50,
            d.p99,
            ms(applied - t0),
            report::bytes(w.bytes as f64)
        );
        if complete {
            out.all.push(d.max);
        } else {
            out.incomplete += 1;
        }
        out.per_sidecar.extend(lat);
        out.rows.push(json!({
            "edit": k + 1,
            "apply_call_ms": round3(ms(applied - t0)),
            "reached": reached,
            "all_ms": all_ms.map(round3),
            "p50_ms": round3(d.p50),
            "p99_ms": round3(d.p99),
            "arrived_before_apply_returned": early,
            "snapshot_bytes": size,
            "versions_served_after": versions.len(),
            "pushes": w,
        }));
    }
    Ok(out)
}

fn changes_json(c: &Changes, n: usize) -> serde_json::Value {
    let bytes: Vec<f64> = c
        .rows
        .iter()
        .map(|r| r["pushes"]["bytes"].as_f64().unwrap_or(0.0))
        .collect();
    let per_edit = bytes.iter().sum::<f64>() / bytes.len().max(1) as f64;
    let round = |mut d: Dist| {
        for x in [&mut d.p50, &mut d.p90, &mut d.p99, &mut d.max, &mut d.mean] {
            *x = round3(*x);
        }
        d
    };
    json!({
        "per_sidecar_ms": round(dist(&c.per_sidecar)),
        "per_sidecar_from_apply_start_ms": round(dist(&c.per_sidecar_from_start)),
        "all_sidecars_ms": round(dist(&c.all)),
        "incomplete_edits": c.incomplete,
        "bytes_per_edit": round3(per_edit),
        "bytes_per_edit_per_sidecar": round3(per_edit / n.max(1) as f64),
        "per_edit": c.rows,
    })
}
