//! Who the operator serves: only a pod's token for audience `llmesh` (not its ordinary API
//! token), and only pods that really run the injected sidecar (not pods that carry the
//! injected label by hand).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::harness::{
    Operator, create_pod, env, eventually, fetch_snapshot, injected_pod_token, secret_and_route,
    serial, service_account, webhook_ready,
};

const KEY: &str = "sk-security-TOPSECRET-2323";

/// A namespace with a Secret and a route that reads it.
async fn namespace_with_a_key(prefix: &str) -> Result<String> {
    let env = env().await;
    let ns = env.cp.create_namespace(prefix).await?;
    secret_and_route(env, &ns, KEY).await?;
    Ok(ns)
}

/// The snapshot of an injected pod in `ns` (the positive control): it holds the key.
async fn injected_pod_gets_the_key(ns: &str) -> Result<()> {
    let env = env().await;
    let (_pod, token) = injected_pod_token(env, ns, "web").await?;
    eventually(
        "the injected pod's snapshot",
        Duration::from_secs(10),
        || async {
            let (code, body) = fetch_snapshot(env, &token).await?;
            if code != 200 || !body.contains(KEY) {
                bail!("{code}: {body}");
            }
            Ok(())
        },
    )
    .await
}

/// Issue 23, item 10: a pod's ordinary token carries the API server's audiences; `llmesh` is
/// not one of them, so the operator refuses it.
#[tokio::test]
async fn a_pod_token_for_the_api_server_is_refused() -> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    let mut op = Operator::start(env).await?;
    webhook_ready(env).await?;
    let ns = namespace_with_a_key("audience").await?;
    injected_pod_gets_the_key(&ns).await?;

    let (pod, _) = injected_pod_token(env, &ns, "api").await?;
    let uid = pod.metadata.uid.clone().context("uid")?;
    let ordinary = env
        .cp
        .service_account_token(&ns, "app", &[], Some(("api", &uid)))
        .await?;
    let (code, body) = fetch_snapshot(env, &ordinary).await?;
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("audience llmesh") && !body.contains(KEY),
        "{body}"
    );
    op.stop().await;
    Ok(())
}

/// Issue 23, item 11: a pod that opted out and has no sidecar, but carries
/// `llmesh.io/sidecar=injected` by hand, gets nothing, and the refusal does not name the label.
#[tokio::test]
async fn a_hand_set_injected_label_gets_nothing() -> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    let mut op = Operator::start(env).await?;
    webhook_ready(env).await?;
    let ns = namespace_with_a_key("forged").await?;
    injected_pod_gets_the_key(&ns).await?;

    service_account(env, &ns, "app").await?;
    let forged: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "forged",
            "labels": {"llmesh.io/inject": "disabled", "llmesh.io/sidecar": "injected"},
        },
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        },
    }))?;
    let stored = create_pod(env, &ns, &forged).await?;
    assert_eq!(
        stored
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref()),
        None,
        "the opted-out pod was injected"
    );
    let uid = stored.metadata.uid.clone().context("uid")?;
    let token = env
        .cp
        .token_for_pod(&ns, "app", "forged", &uid, "llmesh")
        .await?;
    let (code, body) = fetch_snapshot(env, &token).await?;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains(KEY), "the forged pod received the key");
    assert!(
        !body.contains("llmesh.io/sidecar"),
        "the refusal names the label to forge: {body}"
    );
    // Asked again (the verdict is cached), the same.
    let (code, body) = fetch_snapshot(env, &token).await?;
    assert_eq!(code, 403, "{body}");
    op.stop().await;
    Ok(())
}
