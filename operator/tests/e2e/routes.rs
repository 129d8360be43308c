//! CRDs, validation and status: what `kubectl apply` and `kubectl get` show.

use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use llmesh_api::LLMRoute;
use llmesh_api::condition::Condition;

use crate::harness::{self, Operator, apply, env, eventually, output_text, serial};

fn condition<'a>(r: &'a LLMRoute, t: &str) -> Option<&'a Condition> {
    r.status.as_ref()?.conditions.iter().find(|c| c.type_ == t)
}

/// Waits until route `name` has condition `t` with `status`, for its current generation.
async fn wait_condition(
    api: &Api<LLMRoute>,
    name: &str,
    t: &str,
    status: &str,
) -> Result<LLMRoute> {
    eventually(
        &format!("{name} {t}={status}"),
        Duration::from_secs(20),
        || async {
            let r = api.get(name).await?;
            let observed = r.status.as_ref().and_then(|s| s.observed_generation);
            match condition(&r, t) {
                Some(c) if c.status == status && observed == r.metadata.generation => Ok(r),
                other => bail!("{t} is {other:?}"),
            }
        },
    )
    .await
}

#[tokio::test]
async fn example_route_becomes_ready_and_bad_routes_are_explained() -> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    let ns = env.cp.create_namespace("routes").await?;
    let mut op = Operator::start(env).await?;
    eprintln!("operator startup (spawn -> /readyz): {:.0?}", op.startup);
    let client = env.cp.client()?;
    let routes: Api<LLMRoute> = Api::namespaced(client.clone(), &ns);

    // The example applies and reaches Ready, with status in words.
    let example = harness::repo().join("examples/k8s/route.yaml");
    let out = env
        .cp
        .kubectl(["apply", "-n", &ns, "-f", &example.display().to_string()])
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let chat = wait_condition(&routes, "chat", "Ready", "True").await?;
    let status = chat.status.clone().unwrap_or_default();
    assert_eq!(status.model.as_deref(), Some("chat"));
    let words = status.backends.unwrap_or_default();
    assert!(
        words.contains("primary=mock/gpt-4o-mini-2024-07-18 80%")
            && words.contains("backup=mock/gpt-4.1-nano-2025-04-14 fallback"),
        "{words}"
    );
    for t in ["Accepted", "ResolvedRefs"] {
        assert_eq!(
            condition(&chat, t).map(|c| c.status.as_str()),
            Some("True"),
            "{t}"
        );
    }
    let out = env.cp.kubectl(["get", "llmr", "-n", &ns]).await?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("MODEL") && table.contains("READY SIDECARS") && table.contains("chat"),
        "{table}"
    );

    // Status is not rewritten when nothing but time passes, nor when unrelated objects change.
    let rv = chat.metadata.resource_version.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut unrelated = Secret::default();
    unrelated.metadata.name = Some("unrelated".into());
    secrets.create(&PostParams::default(), &unrelated).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        routes.get("chat").await?.metadata.resource_version,
        rv,
        "status rewritten for nothing"
    );

    // `kubectl explain` teaches the schema.
    let out = env
        .cp
        .kubectl(["explain", "llmroute.spec.backends"])
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("The upstream models behind this route"),
        "{text}"
    );
    assert!(
        text.contains("weight") && text.contains("secretRef"),
        "{text}"
    );

    // The API server refuses what the schema and CEL can see, naming the field.
    let out = apply(
        env,
        &ns,
        "
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: zero-weights}
spec:
  backends:
    - {name: a, provider: mock, model: m1, weight: 0}
    - {name: b, provider: mock, model: m2, weight: 0}
  fallbacks: [c]
",
    )
    .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.backends") && err.contains("weight above 0"),
        "{err}"
    );
    assert!(
        err.contains("spec.fallbacks") && err.contains("name of a backend"),
        "{err}"
    );
    let out = apply(
        env,
        &ns,
        "
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: bad-duration}
spec:
  backends: [{name: a, provider: mock, model: m1}]
  retry: {backoff: 10seconds}
",
    )
    .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.retry.backoff"),
        "{err}"
    );

    // What only the operator can see is reported by a condition and an Event, with the fix.
    let out = apply(
        env,
        &ns,
        "
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: real}
spec:
  backends:
    - {name: primary, provider: openai, model: gpt-4o, secretRef: {name: openai, key: api-key}}
",
    )
    .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let real = wait_condition(&routes, "real", "ResolvedRefs", "False").await?;
    let c = condition(&real, "ResolvedRefs").unwrap();
    assert_eq!(c.reason, "MissingSecret");
    assert!(
        c.message.contains("spec.backends[0].secretRef")
            && c.message.contains("kubectl create secret generic openai"),
        "{}",
        c.message
    );
    assert_eq!(
        condition(&real, "Ready").map(|c| c.reason.as_str()),
        Some("NotServed")
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons = |evs: Vec<Event>| -> Vec<(String, String)> {
        evs.into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("real"))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    };
    eventually("MissingSecret event", Duration::from_secs(10), || async {
        let r = reasons(events.list(&ListParams::default()).await?.items);
        if !r.iter().any(|(reason, note)| {
            reason == "MissingSecret" && note.contains("spec.backends[0].secretRef")
        }) {
            bail!("{r:?}");
        }
        Ok(())
    })
    .await?;

    // The key arrives: the route is served, and the unpinned model is warned about once.
    let out = env
        .cp
        .kubectl([
            "create",
            "secret",
            "generic",
            "openai",
            "-n",
            &ns,
            "--from-literal=api-key=sk-e2e-routes",
        ])
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    wait_condition(&routes, "real", "Ready", "True").await?;
    eventually("UnpinnedModel event", Duration::from_secs(10), || async {
        let r = reasons(events.list(&ListParams::default()).await?.items);
        if !r.iter().any(|(reason, note)| {
            reason == "UnpinnedModel" && note.contains("spec.backends[0].model")
        }) {
            bail!("{r:?}");
        }
        Ok(())
    })
    .await?;

    // A second route claiming a served model name is refused by a condition.
    let out = apply(
        env,
        &ns,
        "
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: copycat}
spec:
  model: chat
  backends: [{name: a, provider: mock, model: m1}]
",
    )
    .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let copycat = wait_condition(&routes, "copycat", "Accepted", "False").await?;
    let c = condition(&copycat, "Accepted").unwrap();
    assert_eq!(c.reason, "ModelConflict");
    assert!(
        c.message.contains("spec.model") && c.message.contains(&format!("{ns}/chat")),
        "{}",
        c.message
    );

    op.stop().await;
    let log = op.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator hit RBAC limits:\n{log}"
    );
    assert!(!log.contains("sk-e2e-routes"), "a key reached the log");
    Ok(())
}
