//! The cluster side: CRDs and RBAC on the test control plane, the real `llmesh-operator`
//! process running as its ServiceAccount (as `operator/tests/e2e/harness.rs` does), the pods
//! and their Pod-bound tokens, and the routes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use llmesh_api::LLMRoute;
use llmesh_api::protocol::AUDIENCE;
use llmesh_testenv::ControlPlane;
use serde_json::json;
use tokio::process::{Child, Command};

/// The operator's namespace.
pub use llmesh_testenv::SYSTEM_NS;
const OPERATOR_SA: &str = "llmesh-operator";
/// The ServiceAccount of the benchmark's pods.
const POD_SA: &str = "app";
/// The label the injection webhook sets and the operator's pod watch selects.
const INJECTED: (&str, &str) = ("llmesh.io/sidecar", "injected");
/// Field manager of the benchmark's applies.
const MANAGER: &str = "llmesh-cpbench";
/// The route whose weights the change phases edit.
pub const EDITED_ROUTE: &str = "chat";

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `llmesh-operator` binary: `explicit`, else the one next to this benchmark's binary
/// (same target directory and profile).
pub fn operator_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("llmesh-operator"),
    };
    if !path.is_file() {
        bail!(
            "no operator binary at {}: build it (`cargo build --release -p llmesh-operator --bin llmesh-operator`) or pass --operator-bin",
            path.display()
        );
    }
    Ok(path)
}

/// The running operator.
pub struct Operator {
    child: Option<Child>,
    /// Its process id.
    pub pid: u32,
    /// Where sidecars connect.
    pub port: u16,
    /// `/metrics`, `/readyz`.
    pub admin_port: u16,
    /// stdout and stderr.
    pub log: PathBuf,
    /// From spawn to `/readyz` answering 200.
    pub startup: Duration,
}

impl Operator {
    /// Starts `bin` as the operator's ServiceAccount (a TokenRequest token in a kubeconfig),
    /// logging to `log` at `level`, and waits for `/readyz`.
    pub async fn start(cp: &ControlPlane, bin: &Path, log: &Path, level: &str) -> Result<Self> {
        Self::start_on(cp, bin, log, level, (free_port()?, free_port()?)).await
    }

    /// As [`Operator::start`], listening on `(port, admin_port)` (a restart where the sidecars
    /// expect it).
    pub async fn start_on(
        cp: &ControlPlane,
        bin: &Path,
        log: &Path,
        level: &str,
        (port, admin_port): (u16, u16),
    ) -> Result<Self> {
        let token = cp
            .service_account_token(SYSTEM_NS, OPERATOR_SA, &[], None)
            .await?;
        let kubeconfig = cp.dir().join("operator.kubeconfig");
        cp.write_kubeconfig(&kubeconfig, &token)?;
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let t0 = Instant::now();
        let child = Command::new(bin)
            .env("KUBECONFIG", &kubeconfig)
            .env("LLMESH_LOG", level)
            .args([
                "--namespace",
                SYSTEM_NS,
                "--identity",
                "cpbench-operator",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
                "--tls-san",
                "127.0.0.1",
                "--operator-url",
                &format!("https://127.0.0.1:{port}"),
                // No webhook: the pods are created as injected pods directly.
                "--webhook-config",
                "",
                "--sidecar-image",
                "registry.invalid/llmesh-sidecar:cpbench",
            ])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("operator pid")?;
        let mut op = Operator {
            child: Some(child),
            pid,
            port,
            admin_port,
            log: log.to_path_buf(),
            startup: Duration::ZERO,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = op.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("the operator exited ({status}); log:\n{}", op.log_tail(40));
            }
            if matches!(op.get_admin("/readyz").await, Ok((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                op.stop().await;
                bail!(
                    "the operator was not ready in 60 s; log:\n{}",
                    op.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        op.startup = t0.elapsed();
        Ok(op)
    }

    /// The last `n` lines of the operator's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `GET` on the admin listener: status and body.
    pub async fn get_admin(&self, path: &str) -> Result<(u16, String)> {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let uri: http::Uri = format!("http://127.0.0.1:{}{path}", self.admin_port).parse()?;
        let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri)).await??;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The operator's counters and histogram sums, by full series name.
    pub async fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let (code, body) = self.get_admin("/metrics").await?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// SIGTERM, as a rollout would; SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

/// The operator's CA (PEM) from its TLS Secret.
pub async fn operator_ca(client: &kube::Client) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NS);
    let s = secrets.get("llmesh-operator-tls").await?;
    let ca = s
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .context("ca.crt missing from the operator's TLS Secret")?;
    Ok(String::from_utf8(ca.0)?)
}

/// Creates the pods' ServiceAccount in `ns`.
pub async fn service_account(client: &kube::Client, ns: &str) -> Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(POD_SA.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &sa).await?;
    Ok(())
}

/// Creates `n` pods (objects only: there is no kubelet) as the webhook would have injected them
/// (the label, and the sidecar as a native sidecar, which the operator checks on a pod's first
/// poll), `concurrency` at a time; returns `(name, uid)` in index order.
pub async fn create_pods(
    client: &kube::Client,
    ns: &str,
    n: usize,
    concurrency: usize,
) -> Result<Vec<(String, String)>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let api = &api;
    let mut pods: Vec<(usize, String, String)> = futures::stream::iter(0..n)
        .map(|i| async move {
            let name = format!("sc-{i:05}");
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {
                    "name": name,
                    "labels": {INJECTED.0: INJECTED.1, "app": "cpbench"},
                },
                "spec": {
                    "serviceAccountName": POD_SA,
                    "initContainers": [{
                        "name": "llmesh-sidecar",
                        "image": "registry.invalid/llmesh-sidecar:cpbench",
                        "restartPolicy": "Always",
                    }],
                    "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
                },
            }))?;
            let created = api
                .create(&PostParams::default(), &pod)
                .await
                .with_context(|| format!("creating pod {name}"))?;
            let uid = created.metadata.uid.context("created pod has no uid")?;
            anyhow::Ok((i, name, uid))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    pods.sort_by_key(|(i, _, _)| *i);
    Ok(pods.into_iter().map(|(_, n, u)| (n, u)).collect())
}

/// A Pod-bound token (audience llmesh, one hour) per pod, as the kubelet would project it,
/// through the TokenRequest API, `concurrency` at a time, in the pods' order.
pub async fn pod_tokens(
    client: &kube::Client,
    ns: &str,
    pods: &[(String, String)],
    concurrency: usize,
) -> Result<Vec<String>> {
    let mut tokens: Vec<(usize, String)> = futures::stream::iter(pods.iter().enumerate())
        .map(|(i, (name, uid))| async move {
            let token = llmesh_testenv::request_token(
                client,
                ns,
                POD_SA,
                &[AUDIENCE],
                Some((name.as_str(), uid.as_str())),
            )
            .await
            .with_context(|| format!("token for pod {name}"))?;
            anyhow::Ok((i, token))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    tokens.sort_by_key(|(i, _)| *i);
    Ok(tokens.into_iter().map(|(_, t)| t).collect())
}

/// The spec of the edited route for edit number `k` (`None`: the initial 100/0 split). Every
/// `k` below 98 gives a different split, so every edit changes the snapshot.
fn edited_spec(k: Option<usize>) -> serde_json::Value {
    let (blue, green) = match k {
        None => (100, 0),
        Some(k) => {
            let blue = 99 - (k % 98) as u32;
            (blue, 100 - blue)
        }
    };
    json!({
        "backends": [
            {"name": "blue", "provider": "mock", "model": "m-blue", "weight": blue},
            {"name": "green", "provider": "mock", "model": "m-green", "weight": green},
        ],
        "fallbacks": [],
    })
}

/// Server-side applies the edited route (edit `k`, or the initial version); returns when the
/// API server has answered.
pub async fn apply_edited_route(api: &Api<LLMRoute>, k: Option<usize>) -> Result<()> {
    let obj = json!({
        "apiVersion": "llmesh.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": EDITED_ROUTE},
        "spec": edited_spec(k),
    });
    api.patch(
        EDITED_ROUTE,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("applying LLMRoute {EDITED_ROUTE}"))?;
    Ok(())
}

/// Creates `r` small mock-provider routes with distinct model names, `concurrency` at a time.
pub async fn create_routes(api: &Api<LLMRoute>, r: usize, concurrency: usize) -> Result<()> {
    futures::stream::iter(0..r)
        .map(|i| async move {
            let name = format!("r-{i:05}");
            let route: LLMRoute = serde_json::from_value(json!({
                "apiVersion": "llmesh.io/v1alpha1",
                "kind": "LLMRoute",
                "metadata": {"name": name},
                "spec": {
                    "backends": [{"name": "main", "provider": "mock", "model": format!("mock-{i}")}],
                },
            }))?;
            api.create(&PostParams::default(), &route)
                .await
                .with_context(|| format!("creating LLMRoute {name}"))?;
            anyhow::Ok(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
}

/// How many of the routes in `api`'s namespace report `readySidecars >= n` and `Ready=True`
/// for their current generation, and how many routes there are.
pub async fn routes_ready(api: &Api<LLMRoute>, n: usize) -> Result<(usize, usize)> {
    let list = api.list(&Default::default()).await?;
    let total = list.items.len();
    let ready = list
        .items
        .iter()
        .filter(|r| {
            let Some(s) = &r.status else { return false };
            s.observed_generation == r.metadata.generation
                && s.ready_sidecars.is_some_and(|r| r >= n as i32)
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .count();
    Ok((ready, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_edit_changes_the_split_and_keeps_100_percent() {
        let mut seen = std::collections::BTreeSet::new();
        seen.insert(edited_spec(None).to_string());
        for k in 0..98 {
            let s = edited_spec(Some(k));
            let w: Vec<u64> = s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["weight"].as_u64().unwrap())
                .collect();
            assert_eq!(w.iter().sum::<u64>(), 100);
            assert!(w[0] > 0, "blue keeps a weight");
            assert!(seen.insert(s.to_string()), "edit {k} repeats a split");
        }
    }
}
