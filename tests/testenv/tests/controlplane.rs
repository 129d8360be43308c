//! Proves the test control plane recipe: a real kube-apiserver and etcd with CEL validation,
//! Pod-bound service-account tokens, admission webhooks by URL, and RBAC.
//!
//! Needs `tests/controlplane/install.sh` to have run. All tests share one control plane
//! (`llmesh_testenv::shared`) and each uses its own namespace.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use llmesh_testenv::output_text;
use llmesh_testenv::{ControlPlane, LLMESH_AUDIENCE, TestCa};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

async fn control_plane() -> &'static ControlPlane {
    match llmesh_testenv::shared().await {
        Ok(cp) => cp,
        Err(e) => panic!("starting the test control plane failed: {e:#}"),
    }
}

/// Retries `f` every 200 ms until it succeeds or `timeout` passes (caches in the apiserver,
/// e.g. RBAC, webhook configurations and discovery, are eventually consistent).
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{what}: still failing after {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn pod(name: &str, service_account: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app".into(), name.into())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(service_account.into()),
            containers: vec![Container {
                name: "main".into(),
                image: Some("registry.invalid/llmesh/app:1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn api_error_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn apiserver_is_the_built_version_and_admin_works() -> Result<()> {
    let cp = control_plane().await;
    eprintln!("control plane startup took {:.2?}", cp.startup_time());
    let version = cp.client()?.apiserver_version().await?;
    assert_eq!(version.git_version, "v1.36.3");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "36")
    );

    let out = cp.kubectl(["auth", "whoami", "-o", "json"]).await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let whoami: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(whoami["status"]["userInfo"]["username"], "admin");
    let groups = whoami["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("system:masters"), "groups: {groups}");
    Ok(())
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: scalers.testenv.llmesh.dev
spec:
  group: testenv.llmesh.dev
  scope: Namespaced
  names: {plural: scalers, singular: scaler, kind: Scaler, listKind: ScalerList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [minReplicas, maxReplicas]
            properties:
              minReplicas: {type: integer, minimum: 0}
              maxReplicas: {type: integer, minimum: 0}
            x-kubernetes-validations:
            - rule: "self.minReplicas <= self.maxReplicas"
              message: "minReplicas must not exceed maxReplicas"
"#;

fn scaler(ns: &str, name: &str, min: i64, max: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "testenv.llmesh.dev/v1",
        "kind": "Scaler",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"minReplicas": min, "maxReplicas": max},
    }))
    .expect("serializable")
}

#[tokio::test]
async fn crd_with_cel_rule_is_enforced() -> Result<()> {
    let cp = control_plane().await;
    let ns = cp.create_namespace("cel").await?;

    let out = cp
        .kubectl_with_stdin(["apply", "-f", "-"], CRD.as_bytes())
        .await?;
    assert!(out.status.success(), "apply CRD: {}", output_text(&out));
    let out = cp
        .kubectl([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/scalers.testenv.llmesh.dev",
        ])
        .await?;
    assert!(
        out.status.success(),
        "wait Established: {}",
        output_text(&out)
    );

    // Valid: min <= max. Discovery of the new resource can lag Established; retry.
    eventually(
        "applying a valid Scaler",
        Duration::from_secs(30),
        || async {
            let out = cp
                .kubectl_with_stdin(["apply", "-f", "-"], &scaler(&ns, "ok", 1, 3))
                .await?;
            if !out.status.success() {
                bail!("{}", output_text(&out));
            }
            Ok(())
        },
    )
    .await?;
    let out = cp
        .kubectl([
            "get",
            "scalers.testenv.llmesh.dev",
            "ok",
            "-n",
            &ns,
            "-o",
            "json",
        ])
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let stored: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(stored["spec"]["maxReplicas"], 3);

    // Invalid: min > max is rejected with the rule's message.
    let out = cp
        .kubectl_with_stdin(["apply", "-f", "-"], &scaler(&ns, "bad", 5, 2))
        .await?;
    assert!(
        !out.status.success(),
        "invalid Scaler was accepted: {}",
        output_text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("minReplicas must not exceed maxReplicas") && stderr.contains("Invalid"),
        "unexpected rejection: {stderr}"
    );
    let out = cp
        .kubectl(["get", "scalers.testenv.llmesh.dev", "bad", "-n", &ns])
        .await?;
    assert!(!out.status.success(), "the invalid Scaler was stored");
    Ok(())
}

async fn token_review(cp: &ControlPlane, token: &str, audiences: &[&str]) -> Result<TokenReview> {
    let api: Api<TokenReview> = Api::all(cp.client()?);
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
        },
        ..Default::default()
    };
    Ok(api.create(&PostParams::default(), &review).await?)
}

#[tokio::test]
async fn token_request_bound_to_a_pod_is_reviewed_with_the_pod_name() -> Result<()> {
    let cp = control_plane().await;
    let ns = cp.create_namespace("tokenreq").await?;
    let client = cp.client()?;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta("sidecar"),
                ..Default::default()
            },
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let created = pods
        .create(&PostParams::default(), &pod("app", "sidecar"))
        .await?;
    let uid = created.metadata.uid.context("pod has no uid")?;

    let token = cp
        .token_for_pod(&ns, "sidecar", "app", &uid, LLMESH_AUDIENCE)
        .await?;

    let status = token_review(cp, &token, &[LLMESH_AUDIENCE])
        .await?
        .status
        .context("TokenReview has no status")?;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.audiences, Some(vec![LLMESH_AUDIENCE.to_string()]));
    let user = status.user.context("no user")?;
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{ns}:sidecar").as_str())
    );
    let extra = user.extra.context("no extra")?;
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec!["app".to_string()])
    );
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-uid"),
        Some(&uid.to_string()).map(|u| vec![u.clone()]).as_ref()
    );

    // The token is not valid for another audience (`authenticated` is omitted when false).
    let other = token_review(cp, &token, &["someone-else"])
        .await?
        .status
        .context("TokenReview has no status")?;
    assert_ne!(other.authenticated, Some(true), "{other:?}");
    assert!(
        other
            .error
            .as_deref()
            .is_some_and(|e| e.contains("audience")),
        "{other:?}"
    );

    // Deleting the pod invalidates the bound token (unscheduled pods are deleted at once).
    pods.delete("app", &DeleteParams::default()).await?;
    eventually(
        "bound token rejected after pod deletion",
        Duration::from_secs(20),
        || async {
            let review = token_review(cp, &token, &[LLMESH_AUDIENCE]).await?;
            match review.status.and_then(|s| s.authenticated) {
                Some(true) => bail!("still authenticated"),
                _ => Ok(()),
            }
        },
    )
    .await?;
    Ok(())
}

/// `POST selfsubjectreviews` with `token`: the HTTP status the API server answers.
async fn self_subject_review(cp: &ControlPlane, token: &str) -> Result<u16> {
    let client = cp.client_with_token(token)?;
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body)?)?;
    match client.request_text(req).await {
        Ok(_) => Ok(201),
        Err(e) => api_error_code(&e).with_context(|| format!("SelfSubjectReview: {e}")),
    }
}

/// Audience separation (llmesh issue 23, item 10): `llmesh` is not an API audience, so a
/// sidecar's token is no credential for the Kubernetes API, and a pod's ordinary token is not
/// one for llmesh.
#[tokio::test]
async fn a_sidecar_token_is_no_credential_for_the_api_server() -> Result<()> {
    let cp = control_plane().await;
    let ns = cp.create_namespace("audiences").await?;
    let client = cp.client()?;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta("sidecar"),
                ..Default::default()
            },
        )
        .await?;
    let created = Api::<Pod>::namespaced(client, &ns)
        .create(&PostParams::default(), &pod("app", "sidecar"))
        .await?;
    let uid = created.metadata.uid.context("pod has no uid")?;

    let sidecar = cp
        .token_for_pod(&ns, "sidecar", "app", &uid, LLMESH_AUDIENCE)
        .await?;
    assert_eq!(
        self_subject_review(cp, &sidecar).await?,
        401,
        "the API server accepts a token for audience llmesh: `--api-audiences` must not list it"
    );

    // The pod's ordinary token (default audiences) is a credential for the API server, but
    // not for llmesh.
    let ordinary = cp
        .service_account_token(&ns, "sidecar", &[], Some(("app", &uid)))
        .await?;
    assert_eq!(self_subject_review(cp, &ordinary).await?, 201);
    let review = token_review(cp, &ordinary, &[LLMESH_AUDIENCE])
        .await?
        .status
        .context("TokenReview has no status")?;
    assert_ne!(review.authenticated, Some(true), "{review:?}");
    Ok(())
}

/// A tiny HTTPS admission webhook: adds the label `testenv.llmesh.dev/mutated=true`.
async fn start_webhook(cert: &llmesh_testenv::IssuedCert, calls: Arc<AtomicUsize>) -> Result<u16> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req| mutate(req, calls.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(port)
}

async fn mutate(
    req: Request<Incoming>,
    calls: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    calls.fetch_add(1, Ordering::SeqCst);
    let body = req.into_body().collect().await?.to_bytes();
    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let patch = json!([
        {"op": "add", "path": "/metadata/labels/testenv.llmesh.dev~1mutated", "value": "true"}
    ]);
    let response = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": review["request"]["uid"],
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": ByteString(serde_json::to_vec(&patch).expect("serializable")),
        },
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(response.to_string())))
        .expect("valid response"))
}

#[tokio::test]
async fn mutating_webhook_by_url_patches_created_pods() -> Result<()> {
    let cp = control_plane().await;
    let ns = cp.create_namespace("webhook").await?;
    let client = cp.client()?;

    let ca = TestCa::new("webhook-test-ca")?;
    let cert = ca.issue_server_cert(&["127.0.0.1"])?;
    let calls = Arc::new(AtomicUsize::new(0));
    let port = start_webhook(&cert, calls.clone()).await?;

    let name = format!("{ns}-label");
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = MutatingWebhookConfiguration {
        metadata: meta(&name),
        webhooks: Some(vec![MutatingWebhook {
            name: "label.testenv.llmesh.dev".into(),
            client_config: WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{port}/mutate")),
                ca_bundle: Some(ByteString(ca.cert_pem().as_bytes().to_vec())),
                service: None,
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["".into()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            // Only this test's namespace: the control plane is shared with other tests.
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".into(),
                    ns.clone(),
                )])),
                ..Default::default()
            }),
            side_effects: "None".into(),
            admission_review_versions: vec!["v1".into()],
            failure_policy: Some("Fail".into()),
            timeout_seconds: Some(10),
            ..Default::default()
        }]),
    };
    webhooks.create(&PostParams::default(), &config).await?;

    // The apiserver picks up new webhook configurations asynchronously: dry-run until mutated.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(
        "webhook becomes active",
        Duration::from_secs(30),
        || async {
            let p = pods.create(&dry_run, &pod("probe", "default")).await?;
            match p
                .metadata
                .labels
                .unwrap_or_default()
                .get("testenv.llmesh.dev/mutated")
            {
                Some(_) => Ok(()),
                None => bail!("dry-run pod not mutated yet"),
            }
        },
    )
    .await?;

    pods.create(&PostParams::default(), &pod("web", "default"))
        .await?;
    let stored = pods.get("web").await?;
    let labels = stored.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("testenv.llmesh.dev/mutated").map(String::as_str),
        Some("true")
    );
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "webhook was not called for the real create"
    );

    webhooks.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn rbac_is_enforced_for_service_accounts() -> Result<()> {
    let cp = control_plane().await;
    let ns = cp.create_namespace("rbac").await?;
    let admin = cp.client()?;
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta("reader"),
                ..Default::default()
            },
        )
        .await?;

    let reader = cp.client_for_service_account(&ns, "reader").await?;
    let reader_pods: Api<Pod> = Api::namespaced(reader.clone(), &ns);
    let err = reader_pods
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without bindings listed pods");
    assert_eq!(api_error_code(&err), Some(403), "{err:?}");

    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &Role {
                metadata: meta("pod-reader"),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["".into()]),
                    resources: Some(vec!["pods".into()]),
                    verbs: vec!["list".into()],
                    ..Default::default()
                }]),
            },
        )
        .await?;
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta("reader-pods"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "pod-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "reader".into(),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                }]),
            },
        )
        .await?;

    eventually(
        "listing pods after the RoleBinding",
        Duration::from_secs(20),
        || async { Ok(reader_pods.list(&ListParams::default()).await?) },
    )
    .await?;

    // Still exactly that: secrets stay forbidden, and so do pods in another namespace.
    let err = Api::<Secret>::namespaced(reader.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect_err("the reader listed secrets");
    assert_eq!(api_error_code(&err), Some(403), "{err:?}");
    let err = Api::<Pod>::namespaced(reader, "default")
        .list(&ListParams::default())
        .await
        .expect_err("the reader listed pods in another namespace");
    assert_eq!(api_error_code(&err), Some(403), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn helm_runs_against_the_control_plane() -> Result<()> {
    let cp = control_plane().await;
    let out = cp.helm(["list", "--all-namespaces", "-o", "json"]).await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let releases: Value = serde_json::from_slice(&out.stdout)?;
    assert!(releases.is_array(), "unexpected helm output: {releases}");
    Ok(())
}

/// `install_llmesh` installs the chart's own ServiceAccount and RBAC (rendered from
/// charts/llmesh now, not a copy): the objects carry the chart's labels and the ServiceAccount
/// has the chart's rules, no more.
#[tokio::test]
async fn install_llmesh_applies_the_charts_rbac() -> Result<()> {
    let cp = control_plane().await;
    cp.install_llmesh().await?;
    let ns = llmesh_testenv::SYSTEM_NS;
    for object in [
        format!("serviceaccount/llmesh-operator -n {ns}"),
        "clusterrole/llmesh-operator".to_string(),
        "clusterrolebinding/llmesh-operator".to_string(),
        format!("role/llmesh-operator -n {ns}"),
        format!("rolebinding/llmesh-operator -n {ns}"),
    ] {
        let mut args: Vec<&str> = vec!["get"];
        args.extend(object.split(' '));
        args.extend(["-o", "jsonpath={.metadata.labels.helm\\.sh/chart}"]);
        let out = cp.kubectl(&args).await?;
        assert!(out.status.success(), "{object}: {}", output_text(&out));
        let chart = String::from_utf8_lossy(&out.stdout);
        assert!(
            chart.starts_with("llmesh-"),
            "{object}: label helm.sh/chart is {chart:?}"
        );
    }
    let who = format!("--as=system:serviceaccount:{ns}:llmesh-operator");
    for (verb, resource, want) in [
        ("watch", "llmroutes.llmesh.io", "yes"),
        ("create", "tokenreviews.authentication.k8s.io", "yes"),
        ("list", "configmaps", "no"),
    ] {
        let out = cp
            .kubectl(["auth", "can-i", verb, resource, &who, "--all-namespaces"])
            .await?;
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(got, want, "can llmesh-operator {verb} {resource}?");
    }
    // Again on the same control plane: nothing to create, no error.
    cp.install_llmesh().await?;
    Ok(())
}

#[tokio::test]
async fn a_private_control_plane_stops_cleanly() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let dir = cp.dir().to_path_buf();
    let port: u16 = cp
        .server_url()
        .rsplit(':')
        .next()
        .context("port")?
        .parse()?;
    let etcd_port: u16 = cp.etcd_url().rsplit(':').next().context("port")?.parse()?;
    assert!(dir.join("kubeconfig").is_file());
    let t = Instant::now();
    cp.stop().await?;
    eprintln!("teardown took {:.2?}", t.elapsed());
    assert!(!dir.exists(), "{} was not removed", dir.display());
    for p in [port, etcd_port] {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", p))
                .await
                .is_err(),
            "something still listens on 127.0.0.1:{p}"
        );
    }
    Ok(())
}
