use super::*;
use serde_json::json;

fn template() -> SidecarTemplate {
    SidecarTemplate {
        image: "ghcr.io/llmesh/llmesh-sidecar:test".into(),
        image_pull_policy: None,
        operator_url: "https://llmesh-operator.llmesh-system.svc:8443".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        port: 4000,
        cpu_request: "50m".into(),
        memory_request: "32Mi".into(),
        memory_limit: "128Mi".into(),
        run_as: 65532,
    }
}

fn pod(labels: serde_json::Value, env: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "team", "labels": labels},
        "spec": {
            "containers": [
                {"name": "main", "image": "app:1", "env": env},
                {"name": "helper", "image": "helper:1"}
            ]
        }
    }))
    .unwrap()
}

fn ns(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn opt_in_by_pod_or_namespace_label_and_opt_out_by_pod() {
    let plain = pod(json!({"app": "x"}), json!([]));
    assert!(matches!(decide(&plain, &ns(&[])), Decision::Skip(_)));
    assert_eq!(
        decide(&plain, &ns(&[("llmesh.io/inject", "enabled")])),
        Decision::Inject
    );
    let opted_in = pod(json!({"llmesh.io/inject": "enabled"}), json!([]));
    assert_eq!(decide(&opted_in, &ns(&[])), Decision::Inject);
    let opted_out = pod(json!({"llmesh.io/inject": "disabled"}), json!([]));
    assert!(matches!(
        decide(&opted_out, &ns(&[("llmesh.io/inject", "enabled")])),
        Decision::Skip(_)
    ));
    let other_value = pod(json!({"llmesh.io/inject": "yes"}), json!([]));
    assert!(matches!(decide(&other_value, &ns(&[])), Decision::Skip(_)));
}

#[test]
fn injects_a_hardened_native_sidecar_with_token_cache_and_downward_env() {
    let before = pod(json!({"llmesh.io/inject": "enabled"}), json!([]));
    let after = inject(&before, &template());
    let v = serde_json::to_value(&after).unwrap();
    let sidecar = &v["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "llmesh-sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["image"], "ghcr.io/llmesh/llmesh-sidecar:test");
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "--operator",
            "https://llmesh-operator.llmesh-system.svc:8443",
            "--token-file",
            "/var/run/secrets/llmesh/token",
            "--snapshot-cache",
            "/var/lib/llmesh/snapshot.json",
            "--listen",
            "127.0.0.1:4000"
        ]
    );
    let sc = &sidecar["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sidecar["resources"]["requests"]["memory"], "32Mi");
    assert_eq!(sidecar["resources"]["limits"]["memory"], "128Mi");
    let env = sidecar["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "LLMESH_OPERATOR_CA_PEM"
        && e["value"].as_str().unwrap().contains("BEGIN CERTIFICATE")));
    assert!(
        env.iter().any(|e| e["name"] == "POD_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name")
    );
    assert!(env.iter().any(|e| e["name"] == "POD_NAMESPACE"
        && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"));
    let mounts = sidecar["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/var/run/secrets/llmesh" && m["readOnly"] == true)
    );

    let volumes = v["spec"]["volumes"].as_array().unwrap();
    let token = volumes
        .iter()
        .find(|v| v["name"] == "llmesh-token")
        .unwrap();
    let projection = &token["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(projection["audience"], "llmesh");
    assert_eq!(projection["expirationSeconds"], 3600);
    let cache = volumes
        .iter()
        .find(|v| v["name"] == "llmesh-cache")
        .unwrap();
    assert_eq!(cache["emptyDir"]["medium"], "Memory");
    assert_eq!(v["metadata"]["labels"]["llmesh.io/sidecar"], "injected");
}

#[test]
fn base_urls_are_added_only_where_missing() {
    let before = pod(
        json!({"llmesh.io/inject": "enabled"}),
        json!([{"name": "OPENAI_BASE_URL", "value": "https://proxy.example/v1"}]),
    );
    let after = serde_json::to_value(inject(&before, &template())).unwrap();
    let main = after["spec"]["containers"][0]["env"].as_array().unwrap();
    let get = |env: &[serde_json::Value], n: &str| {
        env.iter()
            .filter(|e| e["name"] == n)
            .map(|e| e["value"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(get(main, "OPENAI_BASE_URL"), ["https://proxy.example/v1"]);
    assert_eq!(get(main, "ANTHROPIC_BASE_URL"), ["http://127.0.0.1:4000"]);
    let helper = after["spec"]["containers"][1]["env"].as_array().unwrap();
    assert_eq!(get(helper, "OPENAI_BASE_URL"), ["http://127.0.0.1:4000/v1"]);
}

#[test]
fn an_injected_pod_is_recognised_so_reinjection_changes_nothing() {
    let before = pod(json!({"llmesh.io/inject": "enabled"}), json!([]));
    let once = inject(&before, &template());
    assert_eq!(decide(&once, &ns(&[])), Decision::AlreadyInjected);
    assert_eq!(
        decide(&once, &ns(&[("llmesh.io/inject", "enabled")])),
        Decision::AlreadyInjected
    );
}
