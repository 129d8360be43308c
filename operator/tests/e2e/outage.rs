//! The operator goes away: sidecars keep serving their last snapshot (also across a sidecar
//! restart, from disk); a brand-new sidecar says it is not ready; when the operator is back,
//! everyone resyncs.

use std::time::{Duration, Instant};

use anyhow::Result;
use kube::api::{Api, Patch, PatchParams};
use llmesh_api::LLMRoute;
use serde_json::json;

use crate::harness::{
    Operator, Sidecar, apply, env, injected_pod_token, output_text, serial, webhook_ready,
};

#[tokio::test]
async fn sidecars_serve_the_last_snapshot_while_the_operator_is_away_and_resync() -> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    let mut op = Operator::start(env).await?;
    webhook_ready(env).await?;
    let ns = env.cp.create_namespace("outage").await?;
    let out = apply(
        env,
        &ns,
        "
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: chat}
spec:
  backends:
    - {name: before, provider: mock, model: m1}
",
    )
    .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let (_p1, token1) = injected_pod_token(env, &ns, "one").await?;
    let (_p2, token2) = injected_pod_token(env, &ns, "two").await?;
    let cache1 = env.dir.join(format!("{ns}-one.json"));
    let mut one = Sidecar::start(env, &format!("{ns}-one"), &token1, &cache1).await?;
    one.wait_backend("chat", "before", Duration::from_secs(10))
        .await?;

    // Operator down: the sidecar keeps serving.
    op.stop().await;
    let (code, backend, body) = one.chat("chat", "u").await?;
    assert_eq!((code, backend.as_str()), (200, "before"), "{body}");

    // A sidecar restart serves the snapshot from disk, and says so.
    one.stop().await;
    let restarted = Instant::now();
    let one = Sidecar::start(env, &format!("{ns}-one"), &token1, &cache1).await?;
    one.wait_ready(Duration::from_secs(5)).await?;
    let (code, backend, body) = one.chat("chat", "u").await?;
    assert_eq!((code, backend.as_str()), (200, "before"), "{body}");
    eprintln!(
        "sidecar restart without operator -> serving from disk: {:.0?}",
        restarted.elapsed()
    );
    assert!(
        one.log_text()
            .contains("serving the last snapshot from disk"),
        "{}",
        one.log_text()
    );

    // A new sidecar with nothing on disk is not ready, and says why.
    let cache2 = env.dir.join(format!("{ns}-two.json"));
    let two = Sidecar::start(env, &format!("{ns}-two"), &token2, &cache2).await?;
    let (code, body) = two.readyz().await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = two.log_text();
    assert!(
        log.contains("no snapshot on disk") && log.contains("operator unreachable"),
        "{log}"
    );

    // The route changes while the operator is away; when it is back, both catch up.
    let routes: Api<LLMRoute> = Api::namespaced(env.cp.client()?, &ns);
    routes
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backends": [{"name": "after", "provider": "mock", "model": "m2"}]}})),
        )
        .await?;
    let mut op = Operator::start(env).await?;
    let back = Instant::now();
    // Sidecars back off up to 30 s between tries while the operator is down.
    one.wait_backend("chat", "after", Duration::from_secs(40))
        .await?;
    two.wait_ready(Duration::from_secs(40)).await?;
    two.wait_backend("chat", "after", Duration::from_secs(5))
        .await?;
    eprintln!(
        "operator back -> both sidecars resynced: {:.1?}",
        back.elapsed()
    );
    assert!(
        one.log_text().contains("resynced=true"),
        "{}",
        one.log_text()
    );
    op.stop().await;
    Ok(())
}
