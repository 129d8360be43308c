//! `--secret-namespaces` with `deploy/rbac-namespaced.yaml`: the operator runs with exactly the
//! narrow RBAC (Secrets only in the listed namespaces), serves a route with its key in a listed
//! namespace, and says why a route elsewhere gets no key.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::api::Api;
use llmesh_api::LLMRoute;
use serde_json::{Value, json};

use crate::harness::{
    Operator, SYSTEM_NS, apply, env, eventually, fetch_snapshot, injected_pod_token, output_text,
    repo, serial, webhook_ready,
};
use crate::rbac::can_i_as;

/// The ServiceAccount the narrow operator runs as. The shared control plane also holds
/// `deploy/rbac.yaml`'s objects, so the narrow ones are renamed.
const NARROW_SA: &str = "llmesh-operator-narrow";

/// `deploy/rbac-namespaced.yaml` as a chart would render it for `namespaces`: the objects of
/// its first listed namespace (`team-a`) repeated for each of `namespaces`, those of the others
/// dropped, and every `llmesh-operator...` object and subject renamed `llmesh-operator-narrow...`.
/// `resourceNames` stay: this operator uses the same Lease, TLS Secret and webhook.
fn render(namespaces: &[&str]) -> Result<Value> {
    let text = std::fs::read_to_string(repo().join("deploy/rbac-namespaced.yaml"))?;
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(serde_saphyr::from_str::<Value>)
        .collect::<Result<_, _>>()
        .context("parsing deploy/rbac-namespaced.yaml")?;
    let rename = |v: &mut Value| {
        if let Some(name) = v.as_str().and_then(|n| n.strip_prefix("llmesh-operator")) {
            *v = json!(format!("{NARROW_SA}{name}"));
        }
    };
    let mut items = Vec::new();
    for mut doc in docs.into_iter().filter(|d| d.is_object()) {
        rename(&mut doc["metadata"]["name"]);
        if doc.get("roleRef").is_some() {
            rename(&mut doc["roleRef"]["name"]);
        }
        if let Some(subjects) = doc.get_mut("subjects").and_then(Value::as_array_mut) {
            subjects.iter_mut().for_each(|s| rename(&mut s["name"]));
        }
        match doc["metadata"]["namespace"].as_str() {
            Some("team-a") => {
                for ns in namespaces {
                    let mut d = doc.clone();
                    d["metadata"]["namespace"] = json!(ns);
                    items.push(d);
                }
            }
            Some("team-b") => {}
            _ => items.push(doc),
        }
    }
    Ok(json!({"apiVersion": "v1", "kind": "List", "items": items}))
}

const ROUTE: &str = "
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: private-model}
spec:
  backends:
    - name: upstream
      provider: openaiCompatible
      model: llama-3.1-8b-instruct
      baseUrl: http://127.0.0.1:9/v1
      secretRef: {name: upstream, key: api-key}
";

async fn secret_and_route(ns: &str, key: &str) -> Result<()> {
    let env = env().await;
    let out = env
        .cp
        .kubectl([
            "create",
            "secret",
            "generic",
            "upstream",
            "-n",
            ns,
            &format!("--from-literal=api-key={key}"),
        ])
        .await?;
    if !out.status.success() {
        bail!("creating the Secret: {}", output_text(&out));
    }
    let out = apply(env, ns, ROUTE).await?;
    if !out.status.success() {
        bail!("applying the route: {}", output_text(&out));
    }
    Ok(())
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
    let rbac = render(&[&listed])?;
    let out = env
        .cp
        .kubectl_with_stdin(["apply", "-f", "-"], &serde_json::to_vec(&rbac)?)
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));

    // Exactly the narrow rules: Secrets in the listed namespace and the operator's own TLS
    // Secret, nothing else.
    let allowed = [
        ("get", "secrets", Some(listed.as_str())),
        ("list", "secrets", Some(listed.as_str())),
        ("watch", "secrets", Some(listed.as_str())),
        ("get", "secrets/llmesh-operator-tls", Some(SYSTEM_NS)),
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
        ("update", "secrets", Some(listed.as_str())),
    ];
    let mut wrong = Vec::new();
    for (verb, res, ns) in allowed {
        if !can_i_as(NARROW_SA, verb, res, ns).await? {
            wrong.push(format!("missing: {verb} {res} in {ns:?}"));
        }
    }
    for (verb, res, ns) in denied {
        if can_i_as(NARROW_SA, verb, res, ns).await? {
            wrong.push(format!("excess: {verb} {res} in {ns:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    secret_and_route(&listed, KEY_A).await?;
    secret_and_route(&unlisted, KEY_B).await?;
    let mut op = Operator::start_as(env, NARROW_SA, &["--secret-namespaces", &listed]).await?;
    webhook_ready(env).await?;

    // The listed namespace: resolved, and its pods receive the key.
    let c = resolved_refs(&listed).await?;
    assert_eq!(c.status, "True", "{c:?}");
    let (_pod, token) = injected_pod_token(env, &listed, "web").await?;
    let (code, body) = eventually(
        "the listed namespace's snapshot",
        Duration::from_secs(10),
        || async {
            let (code, body) = fetch_snapshot(env, &token).await?;
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
    let (code, body) = fetch_snapshot(env, &token).await?;
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
