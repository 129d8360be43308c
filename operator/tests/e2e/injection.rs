//! The mutating webhook, called by the real API server.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::harness::{
    Operator, create_pod, env, operator_ca, pod, serial, service_account, webhook_ready,
};

fn sidecars(p: &Pod) -> Vec<&k8s_openapi::api::core::v1::Container> {
    p.spec
        .as_ref()
        .map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(&s.containers)
                .filter(|c| c.name == "llmesh-sidecar")
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn opted_in_pods_get_a_hardened_native_sidecar_and_others_are_untouched() -> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    let mut op = Operator::start(env).await?;
    webhook_ready(env).await?;
    let ns = env.cp.create_namespace("inject").await?;
    service_account(env, &ns, "app").await?;

    // Opted in by pod label.
    let stored = create_pod(
        env,
        &ns,
        &pod("web", "app", &[("llmesh.io/inject", "enabled")]),
    )
    .await?;
    let v: Value = serde_json::to_value(&stored)?;
    let init = &v["spec"]["initContainers"];
    assert_eq!(init.as_array().map(Vec::len), Some(1), "{init}");
    let sc = &init[0];
    assert_eq!(sc["name"], "llmesh-sidecar");
    assert_eq!(sc["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(sc["image"], "registry.invalid/llmesh-sidecar:e2e");
    let args = sc["args"].to_string();
    assert!(
        args.contains(&format!("https://127.0.0.1:{}", env.port)),
        "{args}"
    );
    assert!(
        args.contains("/var/run/secrets/llmesh/token")
            && args.contains("/var/lib/llmesh/snapshot.json"),
        "{args}"
    );
    let sec = &sc["securityContext"];
    assert_eq!(sec["runAsNonRoot"], true);
    assert_eq!(sec["readOnlyRootFilesystem"], true);
    assert_eq!(sec["allowPrivilegeEscalation"], false);
    assert_eq!(sec["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sec["seccompProfile"]["type"], "RuntimeDefault");
    assert!(
        sc["resources"]["requests"]["memory"].is_string()
            && sc["resources"]["limits"]["memory"].is_string()
    );
    let env_of = |c: &Value, name: &str| -> Option<Value> {
        c["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    };
    assert_eq!(
        env_of(sc, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_of(sc, "POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env_of(sc, "LLMESH_OPERATOR_CA_PEM").unwrap()["value"].as_str(),
        Some(operator_ca(env).await?.as_str()),
        "the sidecar trusts the operator's CA"
    );
    let volumes = v["spec"]["volumes"].as_array().context("volumes")?;
    let token = volumes
        .iter()
        .find(|x| x["name"] == "llmesh-token")
        .context("token volume")?;
    let projection = &token["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(projection["audience"], "llmesh");
    assert_eq!(projection["expirationSeconds"], 3600);
    let mount = sc["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "llmesh-token")
        .cloned()
        .unwrap();
    assert_eq!(mount["readOnly"], true);
    assert!(
        volumes
            .iter()
            .any(|x| x["name"] == "llmesh-cache" && x["emptyDir"].is_object())
    );
    let app = &v["spec"]["containers"][0];
    assert_eq!(
        env_of(app, "OPENAI_BASE_URL").unwrap()["value"],
        "http://127.0.0.1:4000/v1"
    );
    assert_eq!(
        env_of(app, "ANTHROPIC_BASE_URL").unwrap()["value"],
        "http://127.0.0.1:4000"
    );
    assert_eq!(v["metadata"]["labels"]["llmesh.io/sidecar"], "injected");
    // The admin port on the pod IP, and probes on it: the kubelet starts the app only once the
    // sidecar serves a config.
    assert_eq!(sc["ports"][0]["name"], "llmesh-admin", "{}", sc["ports"]);
    assert_eq!(sc["ports"][0]["containerPort"], 4001);
    assert!(args.contains("0.0.0.0:4001"), "{args}");
    for probe in ["startupProbe", "readinessProbe"] {
        assert_eq!(
            sc[probe]["httpGet"]["path"], "/readyz",
            "{probe}: {}",
            sc[probe]
        );
        assert_eq!(sc[probe]["httpGet"]["port"], "llmesh-admin", "{probe}");
    }
    // An unchanged OpenAI() or Anthropic() client finds a key.
    assert_eq!(
        env_of(app, "OPENAI_API_KEY").unwrap()["value"],
        "llmesh-placeholder"
    );
    assert_eq!(
        env_of(app, "ANTHROPIC_API_KEY").unwrap()["value"],
        "llmesh-placeholder"
    );

    // Per-pod settings by annotation.
    let mut tuned = pod("tuned", "app", &[("llmesh.io/inject", "enabled")]);
    tuned.metadata.annotations = Some(
        [
            ("llmesh.io/sidecar-cpu-request", "100m"),
            ("llmesh.io/sidecar-cpu-limit", "2"),
            ("llmesh.io/sidecar-memory-limit", "512Mi"),
            ("llmesh.io/sidecar-max-in-flight", "32"),
            ("llmesh.io/sidecar-log-level", "debug"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
    );
    let tuned: Value = serde_json::to_value(create_pod(env, &ns, &tuned).await?)?;
    let tsc = &tuned["spec"]["initContainers"][0];
    assert_eq!(tsc["resources"]["requests"]["cpu"], "100m");
    assert_eq!(tsc["resources"]["limits"]["cpu"], "2");
    assert_eq!(tsc["resources"]["limits"]["memory"], "512Mi");
    assert!(
        tsc["args"]
            .to_string()
            .contains(r#""--max-in-flight","32""#),
        "{}",
        tsc["args"]
    );
    assert_eq!(
        env_of(tsc, "LLMESH_LOG").unwrap()["value"],
        "info,llmesh_sidecar=debug"
    );

    // A bad value is refused by the API server with the webhook's message, naming it.
    let mut bad = pod("bad-annotation", "app", &[("llmesh.io/inject", "enabled")]);
    bad.metadata.annotations = Some(
        [(
            "llmesh.io/sidecar-memory-limit".to_string(),
            "lots".to_string(),
        )]
        .into(),
    );
    let refused = create_pod(env, &ns, &bad)
        .await
        .expect_err("a bad annotation was accepted");
    let msg = format!("{refused:#}");
    assert!(
        msg.contains("llmesh.io/sidecar-memory-limit") && msg.contains("not a memory quantity"),
        "{msg}"
    );

    // Not opted in: stored exactly as submitted.
    let plain = pod("plain", "app", &[("app", "plain")]);
    let stored_plain = create_pod(env, &ns, &plain).await?;
    let spec = stored_plain.spec.as_ref().unwrap();
    assert_eq!(spec.init_containers, None);
    assert_eq!(spec.volumes, None);
    assert_eq!(spec.containers.len(), 1);
    assert_eq!(
        spec.containers[0].env, None,
        "base URLs added to a pod that did not opt in"
    );
    assert_eq!(stored_plain.metadata.labels, plain.metadata.labels);

    // Re-injection is a no-op: a pod that already carries the sidecar comes back unchanged.
    let mut again = stored.clone();
    again.metadata = kube::api::ObjectMeta {
        name: Some("web-again".into()),
        labels: stored.metadata.labels.clone(),
        ..Default::default()
    };
    again.status = None;
    let stored_again = create_pod(env, &ns, &again).await?;
    assert_eq!(sidecars(&stored_again).len(), 1, "sidecar injected twice");
    assert_eq!(
        stored_again.spec.as_ref().unwrap().volumes,
        stored.spec.as_ref().unwrap().volumes
    );
    assert_eq!(
        stored_again.spec.as_ref().unwrap().containers,
        stored.spec.as_ref().unwrap().containers
    );

    // Opted in by namespace label; a pod may still opt out.
    let ns2 = env.cp.create_namespace("inject-ns").await?;
    service_account(env, &ns2, "app").await?;
    let namespaces: Api<Namespace> = Api::all(env.cp.client()?);
    namespaces
        .patch(
            &ns2,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"llmesh.io/inject": "enabled"}}})),
        )
        .await?;
    // The API server matches namespaceSelector against its namespace cache; give it a moment.
    let injected = crate::harness::eventually(
        "namespace opt-in",
        std::time::Duration::from_secs(10),
        || async {
            let name = format!(
                "by-ns-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos()
            );
            let p = create_pod(env, &ns2, &pod(&name, "app", &[])).await?;
            if sidecars(&p).is_empty() {
                anyhow::bail!("not injected yet");
            }
            Ok(p)
        },
    )
    .await?;
    assert_eq!(sidecars(&injected).len(), 1);
    let out_out = create_pod(
        env,
        &ns2,
        &pod("opted-out", "app", &[("llmesh.io/inject", "disabled")]),
    )
    .await?;
    assert!(
        sidecars(&out_out).is_empty(),
        "a pod opting out was injected"
    );
    let labels: BTreeMap<String, String> = out_out.metadata.labels.unwrap_or_default();
    assert!(!labels.contains_key("llmesh.io/sidecar"));

    op.stop().await;
    let log = op.log_text();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    let pods: Api<Pod> = Api::namespaced(env.cp.client()?, &ns);
    assert_eq!(pods.get("plain").await?.spec.unwrap().init_containers, None);
    Ok(())
}
