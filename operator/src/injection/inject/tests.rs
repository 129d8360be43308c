use super::*;
use serde_json::json;

fn template() -> SidecarTemplate {
    SidecarTemplate {
        image: "ghcr.io/llmesh/llmesh-sidecar:test".into(),
        image_pull_policy: None,
        operator_url: "https://llmesh-operator.llmesh-system.svc:8443".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        port: 4000,
        admin_port: 4001,
        cpu_request: "50m".into(),
        cpu_limit: None,
        memory_request: "32Mi".into(),
        memory_limit: "128Mi".into(),
        max_in_flight: 1024,
        log_format: "text".into(),
        log_level: None,
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
            "127.0.0.1:4000",
            "--admin-listen",
            "0.0.0.0:4001",
            "--max-in-flight",
            "1024",
            "--log-format",
            "text"
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

#[test]
fn the_sidecar_has_a_named_admin_port_and_probes_on_it_so_apps_wait_for_a_config() {
    let after = inject(&pod(json!({}), json!([])), &template());
    let v = serde_json::to_value(&after).unwrap();
    let sidecar = &v["spec"]["initContainers"][0];
    assert_eq!(
        sidecar["ports"],
        json!([{"name": "llmesh-admin", "containerPort": 4001, "protocol": "TCP"}])
    );
    for probe in ["startupProbe", "readinessProbe"] {
        let p = &sidecar[probe];
        assert_eq!(p["httpGet"]["path"], "/readyz", "{probe}: {p}");
        assert_eq!(p["httpGet"]["port"], "llmesh-admin", "{probe}: {p}");
    }
    assert_eq!(sidecar["startupProbe"]["periodSeconds"], 1);
    assert_eq!(sidecar["startupProbe"]["failureThreshold"], 600);
    assert!(sidecar.get("livenessProbe").is_none());
    assert!(
        sidecar["resources"]["limits"].get("cpu").is_none(),
        "no CPU limit by default"
    );
    assert!(
        !sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "LLMESH_LOG")
    );
}

fn env_values(c: &serde_json::Value, name: &str) -> Vec<String> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn placeholder_keys_are_added_only_where_the_app_has_none() {
    let before: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {"containers": [
            {"name": "bare", "image": "app:1"},
            {"name": "own-key", "image": "app:1",
             "env": [{"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "k", "key": "k"}}}]},
            {"name": "env-from", "image": "app:1", "envFrom": [{"secretRef": {"name": "keys"}}]}
        ]}
    }))
    .unwrap();
    let after = serde_json::to_value(inject(&before, &template())).unwrap();
    let c = &after["spec"]["containers"];
    assert_eq!(env_values(&c[0], "OPENAI_API_KEY"), ["llmesh-placeholder"]);
    assert_eq!(
        env_values(&c[0], "ANTHROPIC_API_KEY"),
        ["llmesh-placeholder"]
    );
    // Its own key (from a Secret) is kept, and the missing Anthropic one added.
    let own: Vec<_> = c[1]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "OPENAI_API_KEY")
        .collect();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0]["valueFrom"]["secretKeyRef"]["name"], "k");
    assert_eq!(
        env_values(&c[1], "ANTHROPIC_API_KEY"),
        ["llmesh-placeholder"]
    );
    // envFrom may hold a real key the webhook cannot see: an env entry would override it.
    assert!(env_values(&c[2], "OPENAI_API_KEY").is_empty());
    assert!(env_values(&c[2], "ANTHROPIC_API_KEY").is_empty());
    assert_eq!(
        env_values(&c[2], "OPENAI_BASE_URL"),
        ["http://127.0.0.1:4000/v1"]
    );
}

fn annotated(annotations: &[(&str, &str)]) -> Pod {
    let mut p = pod(json!({"llmesh.io/inject": "enabled"}), json!([]));
    p.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    p
}

#[test]
fn annotations_set_the_sidecars_resources_max_in_flight_and_log_level() {
    let p = annotated(&[
        ("llmesh.io/sidecar-cpu-request", "200m"),
        ("llmesh.io/sidecar-cpu-limit", "1"),
        ("llmesh.io/sidecar-memory-request", "256Mi"),
        ("llmesh.io/sidecar-memory-limit", "1Gi"),
        ("llmesh.io/sidecar-max-in-flight", "64"),
        ("llmesh.io/sidecar-log-level", "debug"),
        ("other.example/unrelated", "kept"),
    ]);
    let t = annotations::apply(&p, &template()).unwrap();
    let v = serde_json::to_value(inject(&p, &t)).unwrap();
    let sidecar = &v["spec"]["initContainers"][0];
    assert_eq!(
        sidecar["resources"],
        json!({"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}})
    );
    let args = sidecar["args"].as_array().unwrap();
    let after = |flag: &str| {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1].clone()
    };
    assert_eq!(after("--max-in-flight"), "64");
    assert_eq!(
        env_values(sidecar, "LLMESH_LOG"),
        ["info,llmesh_sidecar=debug"]
    );
    // A pod without annotations gets the operator's defaults.
    let plain = annotations::apply(&annotated(&[]), &template()).unwrap();
    assert_eq!(
        (plain.cpu_request.as_str(), plain.max_in_flight),
        ("50m", 1024)
    );
    let warn = annotations::apply(
        &annotated(&[("llmesh.io/sidecar-log-level", "warn")]),
        &template(),
    )
    .unwrap();
    assert_eq!(
        annotations::log_filter(warn.log_level.as_deref().unwrap()),
        "warn"
    );
}

#[test]
fn bad_annotation_values_are_refused_naming_the_annotation() {
    for (name, value, says) in [
        (
            "llmesh.io/sidecar-cpu-request",
            "fast",
            "not a CPU quantity",
        ),
        ("llmesh.io/sidecar-cpu-limit", "-1", "not a CPU quantity"),
        (
            "llmesh.io/sidecar-memory-request",
            "64MB",
            "not a memory quantity",
        ),
        (
            "llmesh.io/sidecar-memory-limit",
            "",
            "not a memory quantity",
        ),
        (
            "llmesh.io/sidecar-max-in-flight",
            "-5",
            "not a whole number",
        ),
        (
            "llmesh.io/sidecar-max-in-flight",
            "lots",
            "not a whole number",
        ),
        (
            "llmesh.io/sidecar-log-level",
            "verbose",
            "error, warn, info, debug, trace",
        ),
        ("llmesh.io/sidecar-cpu", "100m", "is not one llmesh reads"),
    ] {
        let err = annotations::apply(&annotated(&[(name, value)]), &template()).unwrap_err();
        assert!(
            err.contains(name) && err.contains(says),
            "{name}={value}: {err}"
        );
        assert!(
            err.contains("llmesh.io/sidecar-cpu-request") || err.contains(value),
            "{err}"
        );
    }
    // A request above the operator's default limit names the annotation that would raise it.
    let err = annotations::apply(
        &annotated(&[("llmesh.io/sidecar-memory-request", "256Mi")]),
        &template(),
    )
    .unwrap_err();
    assert!(
        err.contains("256Mi")
            && err.contains("128Mi")
            && err.contains("llmesh.io/sidecar-memory-limit"),
        "{err}"
    );
    let err = annotations::apply(
        &annotated(&[
            ("llmesh.io/sidecar-cpu-request", "2"),
            ("llmesh.io/sidecar-cpu-limit", "500m"),
        ]),
        &template(),
    )
    .unwrap_err();
    assert!(
        err.contains("CPU request 2") && err.contains("500m"),
        "{err}"
    );
}

#[test]
fn quantities_are_read_as_kubernetes_reads_them() {
    use annotations::quantity;
    assert_eq!(quantity("100m"), Some(0.1));
    assert_eq!(quantity("0.5"), Some(0.5));
    assert_eq!(quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
    assert_eq!(quantity("1e3"), Some(1000.0));
    assert_eq!(quantity("+2"), Some(2.0));
    for bad in ["", "m", "1.2.3", "1 Gi", "1GB", "-1", "1e", "Mi"] {
        assert_eq!(quantity(bad), None, "{bad}");
    }
}

#[test]
fn clusters_without_native_sidecars_are_refused_with_the_minimum_version() {
    assert_eq!(native_sidecars("1", "29"), Ok(()));
    assert_eq!(native_sidecars("1", "33+"), Ok(()));
    assert_eq!(native_sidecars("2", "0"), Ok(()));
    let err = native_sidecars("1", "28+").unwrap_err();
    assert!(
        err.contains("Kubernetes 1.28+") && err.contains("1.29 or newer"),
        "{err}"
    );
    assert!(native_sidecars("1", "27").is_err());
}
