//! Config push: real sidecars with Pod-bound tokens follow `kubectl` edits within a second, and
//! never see another namespace's routes or keys.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use llmesh_api::LLMRoute;
use serde_json::json;

use crate::harness::{
    Operator, Sidecar, apply, env, eventually, fetch_snapshot, http_get, injected_pod_token,
    output_text, secret_and_route, serial, webhook_ready,
};

const ROUTE: &str = "
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: chat}
spec:
  backends:
    - {name: blue, provider: mock, model: m-blue, weight: 100}
    - {name: green, provider: mock, model: m-green, weight: 0}
  fallbacks: []
";

const OTHER: &str = "
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: other}
spec:
  backends:
    - {name: one, provider: mock, model: m-one, weight: 50}
    - {name: two, provider: mock, model: m-two, weight: 50}
";

/// Applies the weights and measures until the sidecar answers from the expected backend.
async fn set_weights(routes: &Api<LLMRoute>, blue: u32, green: u32) -> Result<Instant> {
    let patch = json!({"spec": {"backends": [
        {"name": "blue", "provider": "mock", "model": "m-blue", "weight": blue},
        {"name": "green", "provider": "mock", "model": "m-green", "weight": green},
    ]}});
    routes
        .patch("chat", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(Instant::now())
}

#[tokio::test]
async fn a_sidecar_serves_the_route_and_follows_edits_within_a_second() -> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    let mut op = Operator::start(env).await?;
    webhook_ready(env).await?;
    let ns = env.cp.create_namespace("push").await?;
    let out = apply(env, &ns, ROUTE).await?;
    assert!(out.status.success(), "{}", output_text(&out));
    // A second route, left alone: an edit of `chat` is sent as a delta without it.
    let out = apply(env, &ns, OTHER).await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let (_pod, token) = injected_pod_token(env, &ns, "web").await?;
    let cache = env.dir.join(format!("{ns}-web.json"));
    let mut sc = Sidecar::start(env, &format!("{ns}-web"), &token, &cache).await?;
    sc.wait_ready(Duration::from_secs(10)).await?;
    sc.wait_backend("chat", "blue", Duration::from_secs(5))
        .await?;
    let routes: Api<LLMRoute> = Api::namespaced(env.cp.client()?, &ns);
    eventually("readySidecars 1", Duration::from_secs(20), || async {
        let s = routes.get("chat").await?.status.unwrap_or_default();
        if s.ready_sidecars != Some(1) {
            bail!("{s:?}");
        }
        Ok(())
    })
    .await?;

    // Flip the split: apply -> first answer from the new backend.
    let applied = set_weights(&routes, 0, 100).await?;
    sc.wait_backend("chat", "green", Duration::from_secs(5))
        .await?;
    let flip = applied.elapsed();
    eprintln!("weights edit -> sidecar serving it: {flip:.1?}");
    assert!(flip < Duration::from_secs(1), "took {flip:?}");

    // A 50/50 split: blue (weight 0 until now) answers within a second, and users spread.
    let applied = set_weights(&routes, 50, 50).await?;
    let mut u = 0;
    eventually("blue answers again", Duration::from_secs(5), || {
        u += 1;
        let user = format!("probe-{u}");
        let sc = &sc;
        async move {
            match sc.chat("chat", &user).await? {
                (200, b, _) if b == "blue" => Ok(()),
                (code, b, body) => bail!("{code} {b}: {body}"),
            }
        }
    })
    .await?;
    let visible = applied.elapsed();
    let mut blue = 0;
    for u in 0..200 {
        let (code, b, body) = sc.chat("chat", &format!("user-{u}")).await?;
        assert_eq!(code, 200, "{body}");
        blue += usize::from(b == "blue");
    }
    eprintln!(
        "50/50 edit -> visible at the sidecar: {visible:.1?}; 200 users: {blue} blue, {} green",
        200 - blue
    );
    assert!(visible < Duration::from_secs(1), "took {visible:?}");
    assert!(
        (60..=140).contains(&blue),
        "{blue} of 200 users on blue for a 50/50 split"
    );

    // Deleting the route makes the model unknown.
    routes.delete("chat", &DeleteParams::default()).await?;
    let deleted = Instant::now();
    eventually("model unknown", Duration::from_secs(5), || async {
        let (code, _, body) = sc.chat("chat", "u").await?;
        if code != 404 || !body.contains("model_not_found") {
            bail!("{code}: {body}");
        }
        Ok(())
    })
    .await?;
    let gone = deleted.elapsed();
    eprintln!("route delete -> 404 at the sidecar: {gone:.1?}");
    assert!(gone < Duration::from_secs(1), "took {gone:?}");

    // After the first snapshot every change came as a delta (three edits: two splits and the
    // delete), none was refused, and the copy on disk is what the sidecar serves (written just
    // after the swap, so it may trail the 404 by a moment).
    let disk: llmesh_api::Snapshot =
        eventually("the delete on disk", Duration::from_secs(5), || async {
            let disk: llmesh_api::Snapshot = serde_json::from_slice(&std::fs::read(&cache)?)?;
            let names: Vec<&str> = disk.routes.iter().map(|r| r.name.as_str()).collect();
            if names != ["other"] {
                bail!("routes on disk: {names:?}");
            }
            Ok(disk)
        })
        .await?;
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{}/metrics", sc.port)).await?;
    let applied = sample(&metrics, "llmesh_config_deltas_total{result=\"applied\"}");
    assert!(applied >= 3.0, "{applied} deltas applied:\n{metrics}");
    let refused = sample(&metrics, "llmesh_config_deltas_total{result=\"refused\"}");
    assert_eq!(refused, 0.0, "{metrics}");
    let info = format!("llmesh_config_info{{version=\"{}\"}} 1", disk.version);
    assert!(metrics.contains(&info), "serving {info}?\n{metrics}");
    let (_, op_metrics) = http_get(&format!("http://127.0.0.1:{}/metrics", env.admin_port)).await?;
    let sent = sample(
        &op_metrics,
        "llmesh_operator_snapshot_bytes_total{form=\"delta\"}",
    );
    assert!(sent > 0.0, "{op_metrics}");

    sc.stop().await;
    op.stop().await;
    assert!(!op.log_text().to_lowercase().contains("forbidden"));
    Ok(())
}

#[tokio::test]
async fn a_sidecar_receives_nothing_from_another_namespace() -> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    let mut op = Operator::start(env).await?;
    webhook_ready(env).await?;
    const KEY: &str = "sk-team-a-TOPSECRET-0123";

    // Team A: a Secret and a route that reads it.
    let a = env.cp.create_namespace("team-a").await?;
    secret_and_route(env, &a, KEY).await?;
    let (_pa, token_a) = injected_pod_token(env, &a, "web").await?;
    let (code, body) = eventually(
        "team A snapshot has its route",
        Duration::from_secs(10),
        || async {
            let (code, body) = fetch_snapshot(env, &token_a).await?;
            if code != 200 || !body.contains("private-model") {
                bail!("{code}: {body}");
            }
            Ok((code, body))
        },
    )
    .await?;
    assert_eq!(code, 200);
    assert!(
        body.contains(KEY),
        "positive control: team A's own pod receives its key"
    );

    // Team B: its sidecar and its direct fetch see none of it.
    let b = env.cp.create_namespace("team-b").await?;
    let (_pb, token_b) = injected_pod_token(env, &b, "web").await?;
    let (code, body) = fetch_snapshot(env, &token_b).await?;
    assert_eq!(code, 200, "{body}");
    assert!(
        !body.contains(KEY) && !body.contains("private-model") && !body.contains("sk-team-a"),
        "{body}"
    );
    let cache = env.dir.join(format!("{b}-web.json"));
    let mut sc = Sidecar::start(env, &format!("{b}-web"), &token_b, &cache).await?;
    sc.wait_ready(Duration::from_secs(10)).await?;
    let (code, _, body) = sc.chat("private-model", "u").await?;
    assert_eq!(code, 404, "{body}");
    assert!(!std::fs::read_to_string(&cache)?.contains(KEY));

    // Tokens that are not a pod's llmesh token are refused, saying why.
    let other_audience = env
        .cp
        .token_for_pod(
            &b,
            "app",
            "web",
            &_pb.metadata.uid.clone().unwrap(),
            "https://kubernetes.default.svc",
        )
        .await?;
    let (code, body) = fetch_snapshot(env, &other_audience).await?;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("llmesh"), "{body}");
    let unbound = env
        .cp
        .service_account_token(&b, "app", &["llmesh"], None)
        .await?;
    let (code, body) = fetch_snapshot(env, &unbound).await?;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("not bound to a Pod"), "{body}");
    let (code, _) = fetch_snapshot(env, "not-a-token").await?;
    assert_eq!(code, 401);

    // Keys never reach logs, metrics, Events or status.
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{}/metrics", env.admin_port)).await?;
    assert!(metrics.contains("llmesh_operator_snapshot_polls_total"));
    sc.stop().await;
    op.stop().await;
    for (what, text) in [
        ("operator log", op.log_text()),
        ("sidecar log", sc.log_text()),
        ("operator metrics", metrics),
        (
            "events",
            String::from_utf8_lossy(
                &env.cp
                    .kubectl(["get", "events", "-n", &a, "-o", "yaml"])
                    .await?
                    .stdout,
            )
            .into_owned(),
        ),
        (
            "route",
            String::from_utf8_lossy(
                &env.cp
                    .kubectl(["get", "llmr", "-n", &a, "-o", "yaml"])
                    .await?
                    .stdout,
            )
            .into_owned(),
        ),
    ] {
        assert!(!text.contains(KEY), "the key leaked into the {what}");
    }
    Ok(())
}

/// A bulk apply is sent to sidecars in passes at least 100 ms apart (`RECOMPUTE_GAP`), not once
/// per change: each pass that changes a snapshot is a fan-out to every sidecar that runs it.
/// Passes that send nothing (status writes) are not held, so what is counted is the snapshots
/// encoded: here, one pod in one namespace, one per pass that sent it something.
#[tokio::test]
async fn a_bulk_apply_is_sent_in_paced_passes() -> Result<()> {
    const ROUTES: usize = 40;
    const SENT: &str = "llmesh_operator_snapshots_encoded_total";
    const CHANGES: [&str; 2] = [
        "llmesh_operator_route_compiles_total",
        "llmesh_operator_status_writes_total{kind=\"LLMRoute\"}",
    ];
    let _serial = serial().await;
    let env = env().await;
    let mut op = Operator::start(env).await?;
    webhook_ready(env).await?;
    let ns = env.cp.create_namespace("bulk").await?;
    let (_pod, token) = injected_pod_token(env, &ns, "web").await?;
    // One poll makes the pod known: every pass after it sends the pod its new snapshots.
    let (code, body) = fetch_snapshot(env, &token).await?;
    assert_eq!(code, 200, "{body}");
    let url = format!("http://127.0.0.1:{}/metrics", env.admin_port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, before) = http_get(&url).await?;
    let yaml: Vec<String> = (0..ROUTES)
        .map(|i| {
            format!(
                "apiVersion: llmesh.io/v1alpha1\nkind: LLMRoute\nmetadata: {{name: bulk-{i}}}\n\
                 spec:\n  backends: [{{name: a, provider: mock, model: m-{i}}}]\n"
            )
        })
        .collect();
    let t0 = Instant::now();
    let out = apply(env, &ns, &yaml.join("---\n")).await?;
    assert!(out.status.success(), "{}", output_text(&out));
    // Every route compiled and its status written: each of those was a change to recompute.
    let after = eventually("every route's status", Duration::from_secs(20), || async {
        let (_, now) = http_get(&url).await?;
        let done = CHANGES
            .iter()
            .all(|c| sample(&now, c) - sample(&before, c) >= ROUTES as f64);
        if !done {
            bail!("not yet");
        }
        Ok(now)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, end) = http_get(&url).await?;
    let window = t0.elapsed();
    let sent = sample(&end, SENT) - sample(&before, SENT);
    let changes: f64 = CHANGES
        .iter()
        .map(|c| sample(&after, c) - sample(&before, c))
        .sum();
    // A pass that sent starts at least 100 ms after the one before: at most one per 100 ms of
    // the window, plus the one that may have been running when it opened.
    let most = (window.as_millis() / 100) as f64 + 2.0;
    assert!(
        sent <= most,
        "{sent} snapshots sent in {window:?} for {changes} changes (at most {most})"
    );
    assert!(
        changes > most,
        "{changes} changes in {window:?}: too few to tell paced passes from one per change"
    );
    op.stop().await;
    Ok(())
}

/// The value of the Prometheus sample `series` (name and labels as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
