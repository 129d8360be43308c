//! The chart's `secrets.namespaces`: the operator runs with exactly the narrow RBAC the chart
//! renders for a list of namespaces (Secrets only there) and the flags its Deployment gets,
//! serves a route with its key in a listed namespace, and says why a route elsewhere gets no key.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::api::Api;
use llmesh_api::LLMRoute;
use llmesh_testenv::CHART_RBAC_TEMPLATES;
use serde_json::{Value, json};

use crate::harness::{
    Env, Operator, SYSTEM_NS, env, eventually, fetch_snapshot_trusting, injected_pod_token,
    output_text, secret_and_route, serial, webhook_ready_for,
};
use crate::rbac::can_i_as;

/// The chart's `operator.name` for the narrow install. The shared control plane also holds the
/// default install's objects (`llmesh-operator`), so this one is a second release with its own
/// name: its ServiceAccount, ClusterRole, Roles, Lease and TLS Secret are all `NARROW...`.
const NARROW: &str = "llmesh-operator-narrow";

/// The chart rendered with `secrets.namespaces` = `namespaces` and `operator.name` [`NARROW`]:
/// its ServiceAccount and RBAC (to apply), and the operator flags its Deployment carries that
/// name its own objects, plus `--secret-namespaces` from the Deployment's
/// `LLMESH_SECRET_NAMESPACES`.
async fn render(env: &Env, namespaces: &[&str]) -> Result<(String, Vec<String>)> {
    let values = env.dir.join("values-narrow.json");
    let v = json!({"operator": {"name": NARROW}, "secrets": {"namespaces": namespaces}});
    std::fs::write(&values, serde_json::to_vec(&v)?)?;
    let rbac = env
        .cp
        .render_chart("narrow", &[&values], &CHART_RBAC_TEMPLATES)
        .await?;
    let text = env
        .cp
        .render_chart("narrow", &[&values], &["templates/deployment.yaml"])
        .await?;
    let deployment: Value = serde_saphyr::from_str(&text).context("the chart's Deployment")?;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut flags: Vec<String> = container["args"]
        .as_array()
        .context("the Deployment's args")?
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| {
            ["--tls-secret=", "--lease-name=", "--webhook-config="]
                .iter()
                .any(|p| a.starts_with(p))
        })
        .map(String::from)
        .collect();
    let listed = container["env"]
        .as_array()
        .context("the Deployment's env")?
        .iter()
        .find(|e| e["name"] == "LLMESH_SECRET_NAMESPACES")
        .and_then(|e| e["value"].as_str())
        .context("LLMESH_SECRET_NAMESPACES on the Deployment")?;
    flags.push(format!("--secret-namespaces={listed}"));
    Ok((rbac, flags))
}

/// The route's `ResolvedRefs` condition for its current generation, once written.
async fn resolved_refs(ns: &str) -> Result<llmesh_api::condition::Condition> {
    let env = env().await;
    let routes: Api<LLMRoute> = Api::namespaced(env.cp.client()?, ns);
    eventually(
        &format!("{ns}/private-model ResolvedRefs"),
        Duration::from_secs(20),
        || async {
            let r = routes.get("private-model").await?;
            let status = r.status.clone().unwrap_or_default();
            if status.observed_generation != r.metadata.generation {
                bail!("status not written for this generation yet: {status:?}");
            }
            let c = status
                .conditions
                .iter()
                .find(|c| c.type_ == "ResolvedRefs")
                .cloned();
            c.with_context(|| format!("no ResolvedRefs yet: {status:?}"))
        },
    )
    .await
}

#[tokio::test]
async fn with_namespaced_rbac_the_operator_reads_secrets_only_in_listed_namespaces() -> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    const KEY_A: &str = "sk-listed-TOPSECRET-4711";
    const KEY_B: &str = "sk-unlisted-TOPSECRET-0815";
    let listed = env.cp.create_namespace("secrets-listed").await?;
    let unlisted = env.cp.create_namespace("secrets-unlisted").await?;
    let (rbac, flags) = render(env, &[&listed]).await?;
    let out = env
        .cp
        .kubectl_with_stdin(["apply", "-f", "-"], rbac.as_bytes())
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let tls = format!("{NARROW}-tls");
    assert!(
        flags.contains(&format!("--tls-secret={tls}"))
            && flags.contains(&format!("--secret-namespaces={listed}")),
        "{flags:?}"
    );

    // Exactly the narrow rules: Secrets in the listed namespace and the operator's own TLS
    // Secret, nothing else.
    let allowed = [
        ("get", "secrets", Some(listed.as_str())),
        ("list", "secrets", Some(listed.as_str())),
        ("watch", "secrets", Some(listed.as_str())),
        ("get", "secrets/llmesh-operator-narrow-tls", Some(SYSTEM_NS)),
        ("list", "pods", None),
        ("create", "tokenreviews.authentication.k8s.io", None),
    ];
    let denied = [
        ("get", "secrets", Some(unlisted.as_str())),
        ("list", "secrets", Some(unlisted.as_str())),
        ("get", "secrets", Some("kube-system")),
        ("list", "secrets", None),
        ("watch", "secrets", None),
        ("get", "secrets/other", Some(SYSTEM_NS)),
        ("get", "secrets/llmesh-operator-tls", Some(SYSTEM_NS)),
        ("update", "secrets", Some(listed.as_str())),
    ];
    let mut wrong = Vec::new();
    for (verb, res, ns) in allowed {
        if !can_i_as(NARROW, verb, res, ns).await? {
            wrong.push(format!("missing: {verb} {res} in {ns:?}"));
        }
    }
    for (verb, res, ns) in denied {
        if can_i_as(NARROW, verb, res, ns).await? {
            wrong.push(format!("excess: {verb} {res} in {ns:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    secret_and_route(env, &listed, KEY_A).await?;
    secret_and_route(env, &unlisted, KEY_B).await?;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut op = Operator::start_as(env, NARROW, &flags).await?;
    webhook_ready_for(env, &tls).await?;

    // The listed namespace: resolved, and its pods receive the key.
    let c = resolved_refs(&listed).await?;
    assert_eq!(c.status, "True", "{c:?}");
    let (_pod, token) = injected_pod_token(env, &listed, "web").await?;
    let (code, body) = eventually(
        "the listed namespace's snapshot",
        Duration::from_secs(10),
        || async {
            let (code, body) = fetch_snapshot_trusting(env, &tls, &token).await?;
            if code != 200 || !body.contains("private-model") {
                bail!("{code}: {body}");
            }
            Ok((code, body))
        },
    )
    .await?;
    assert_eq!(code, 200);
    assert!(
        body.contains(KEY_A),
        "the listed namespace's pod has no key"
    );

    // Elsewhere: not resolved, saying why and what to change; not served.
    let c = resolved_refs(&unlisted).await?;
    assert_eq!(c.status, "False", "{c:?}");
    assert!(
        c.message.contains("--secret-namespaces") && c.message.contains(&unlisted),
        "{c:?}"
    );
    let (_pod, token) = injected_pod_token(env, &unlisted, "web").await?;
    let (code, body) = fetch_snapshot_trusting(env, &tls, &token).await?;
    assert_eq!(code, 200, "{body}");
    assert!(
        !body.contains("private-model") && !body.contains(KEY_B),
        "{body}"
    );

    op.stop().await;
    let log = op.log_text();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    assert!(!log.contains(KEY_A) && !log.contains(KEY_B));
    Ok(())
}
