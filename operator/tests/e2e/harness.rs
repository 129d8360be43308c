//! The end-to-end harness: the shared test control plane with llmesh's CRDs, RBAC and webhook
//! configuration installed once, rendered from the Helm chart `charts/llmesh` by `helm template`
//! at test time; the real `llmesh-operator` binary running with its ServiceAccount's token, so
//! with exactly the chart's RBAC (a permission missing from the chart fails the tests); real
//! `llmesh-sidecar` processes holding Pod-bound tokens.
//!
//! Operators watch the whole cluster, so tests that run one take [`serial`] and run one at a
//! time; each test still has its own namespaces.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use llmesh_testenv::ControlPlane;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub use llmesh_testenv::SYSTEM_NS;
pub const OPERATOR_SA: &str = "llmesh-operator";

/// The installed control plane and the fixed ports operators listen on in this test binary.
pub struct Env {
    pub cp: &'static ControlPlane,
    pub port: u16,
    pub admin_port: u16,
    pub dir: PathBuf,
}

static ENV: tokio::sync::OnceCell<Env> = tokio::sync::OnceCell::const_new();
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One operator-running test at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub use llmesh_testenv::output_text;

/// Installs CRDs, RBAC and the webhook configuration once per test binary.
pub async fn env() -> &'static Env {
    ENV.get_or_try_init(install)
        .await
        .unwrap_or_else(|e| panic!("setting up the e2e environment failed: {e:#}"))
}

async fn install() -> Result<Env> {
    let cp = llmesh_testenv::shared().await?;
    cp.install_llmesh().await?;
    let port = free_port();
    let admin_port = free_port();
    // The chart's webhook configuration, pointed at this machine instead of the Service.
    let text = cp
        .render_chart("llmesh", &[], &["templates/webhook.yaml"])
        .await?;
    let mut mwc: Value = serde_saphyr::from_str(&text).context("parsing the chart's webhook")?;
    for w in mwc["webhooks"].as_array_mut().context("webhooks")? {
        w["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}/mutate-pods")});
    }
    let out = cp
        .kubectl_with_stdin(["apply", "-f", "-"], &serde_json::to_vec(&mwc)?)
        .await?;
    if !out.status.success() {
        bail!("applying the webhook configuration: {}", output_text(&out));
    }
    let dir = cp.dir().join("e2e");
    std::fs::create_dir_all(&dir)?;
    Ok(Env {
        cp,
        port,
        admin_port,
        dir,
    })
}

/// Retries `f` every 50 ms until it succeeds or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
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
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// What `Drop` does when a test fails midway: SIGTERM and a short wait, so an operator still
/// releases its Lease and the next test does not wait for it to expire.
fn terminate_blocking(child: &mut Child) {
    sigterm(child);
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.start_kill();
}

fn sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

async fn stop_child(child: &mut Child) {
    sigterm(child);
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A running `llmesh-operator` process with the ServiceAccount's credentials.
pub struct Operator {
    child: Option<Child>,
    pub log: PathBuf,
    /// From spawn to `/readyz` answering 200.
    pub startup: Duration,
}

impl Operator {
    /// The operator as the chart's ServiceAccount (default values), with the chart's RBAC.
    pub async fn start(env: &Env) -> Result<Self> {
        Self::start_as(env, OPERATOR_SA, &[]).await
    }

    /// The operator as ServiceAccount `SYSTEM_NS/sa`, with more flags.
    pub async fn start_as(env: &Env, sa: &str, extra_args: &[&str]) -> Result<Self> {
        Self::start_on(env, sa, extra_args, env.port, env.admin_port).await
    }

    /// Another replica: the chart's ServiceAccount, listening on `port` (sidecars) and
    /// `admin_port` (probes, metrics) instead of the environment's.
    pub async fn replica(env: &Env, port: u16, admin_port: u16) -> Result<Self> {
        Self::start_on(env, OPERATOR_SA, &[], port, admin_port).await
    }

    async fn start_on(
        env: &Env,
        sa: &str,
        extra_args: &[&str],
        port: u16,
        admin_port: u16,
    ) -> Result<Self> {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = env
            .cp
            .service_account_token(SYSTEM_NS, sa, &[], None)
            .await?;
        let kubeconfig = env.dir.join(format!("operator-{n}.kubeconfig"));
        env.cp.write_kubeconfig(&kubeconfig, &token)?;
        let log = env.dir.join(format!("operator-{n}.log"));
        let file = std::fs::File::create(&log)?;
        let t0 = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_llmesh-operator"))
            .env("KUBECONFIG", &kubeconfig)
            .env("LLMESH_LOG", "info,llmesh_operator=debug")
            .args([
                "--namespace",
                SYSTEM_NS,
                "--identity",
                &format!("e2e-operator-{n}"),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
                "--tls-san",
                "127.0.0.1",
                "--operator-url",
                &format!("https://127.0.0.1:{port}"),
                "--sidecar-image",
                "registry.invalid/llmesh-sidecar:e2e",
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("starting llmesh-operator")?;
        let mut op = Operator {
            child: Some(child),
            log,
            startup: Duration::ZERO,
        };
        let url = format!("http://127.0.0.1:{admin_port}/readyz");
        let waited = eventually("operator /readyz", Duration::from_secs(30), || async {
            let (code, _) = http_get(&url).await?;
            if code != 200 {
                bail!("readyz {code}");
            }
            Ok(())
        })
        .await;
        if let Err(e) = waited {
            op.stop().await;
            bail!("{e:#}\noperator log:\n{}", read_log(&op.log));
        }
        op.startup = t0.elapsed();
        Ok(op)
    }

    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// SIGTERM, as a Deployment rollout would; waits for the exit.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c).await;
        }
    }

    /// SIGKILL, as an OOM kill or a lost node would; waits for the exit.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            terminate_blocking(c);
        }
    }
}

/// The `llmesh-sidecar` binary, built (or found up to date) once per test binary. Cargo
/// releases its build lock before it runs tests, so this nested build does not deadlock.
///
/// It is built with `--workspace` so that features are unified across the workspace as in
/// `cargo build --workspace --bins`, which CI runs first: then this build finds everything up to
/// date. With `-p llmesh-sidecar` alone the sidecar's dependencies resolve to other features
/// (no `kube` on `llmesh-api`), and 49 crates were compiled again inside the first test that
/// needed the binary: the suite took 240 s in CI against 20 s when rerun.
pub fn sidecar_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        // Cargo sets CARGO_MANIFEST_DIR and friends for the test process; passed on, they look
        // like a changed environment to build scripts and rebuild half the tree next time.
        const KEEP: [&str; 8] = [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_",
            "CARGO_NET_",
            "CARGO_REGISTR",
            "CARGO_HTTP_",
            "CARGO_TERM_",
            "CARGO_PROFILE_",
        ];
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            let keep = KEEP.iter().any(|p| k.starts_with(p));
            if (k.starts_with("CARGO_") && !keep) || k == "OUT_DIR" {
                cmd.env_remove(&k);
            }
        }
        let status = cmd
            .current_dir(repo())
            .args(["build", "-q", "--workspace", "--bin", "llmesh-sidecar"])
            .status()
            .expect("running cargo build for llmesh-sidecar");
        assert!(
            status.success(),
            "cargo build --workspace --bin llmesh-sidecar failed"
        );
        let operator = PathBuf::from(env!("CARGO_BIN_EXE_llmesh-operator"));
        let bin = operator.with_file_name("llmesh-sidecar");
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
}

/// A running `llmesh-sidecar --operator ...` process.
pub struct Sidecar {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Sidecar {
    /// Starts a sidecar holding `token`, trusting the operator's CA, caching at `cache`.
    pub async fn start(env: &Env, name: &str, token: &str, cache: &Path) -> Result<Self> {
        Self::start_to(env, env.port, name, token, cache).await
    }

    /// Like [`Sidecar::start`], connecting to the operator replica on `operator_port`.
    pub async fn start_to(
        env: &Env,
        operator_port: u16,
        name: &str,
        token: &str,
        cache: &Path,
    ) -> Result<Self> {
        let dir = env.dir.join(format!("sidecar-{name}"));
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, token)?;
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, operator_ca(env).await?)?;
        let port = free_port();
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("sidecar-{n}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(sidecar_bin())
            .env_remove("LLMESH_CONFIG")
            .args([
                "--operator",
                &format!("https://127.0.0.1:{operator_port}"),
                "--operator-ca",
                &ca_file.display().to_string(),
                "--token-file",
                &token_file.display().to_string(),
                "--snapshot-cache",
                &cache.display().to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--access-log",
                "off",
            ])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("starting llmesh-sidecar")?;
        let sc = Sidecar {
            child: Some(child),
            port,
            log,
        };
        eventually("sidecar listening", Duration::from_secs(10), || async {
            sc.readyz().await.map(|_| ())
        })
        .await?;
        Ok(sc)
    }

    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// `/readyz`: status and body.
    pub async fn readyz(&self) -> Result<(u16, String)> {
        http_get(&format!("http://127.0.0.1:{}/readyz", self.port)).await
    }

    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        eventually("sidecar ready", timeout, || async {
            let (code, body) = self.readyz().await?;
            if code != 200 {
                bail!("readyz {code}: {body}");
            }
            Ok(())
        })
        .await
        .with_context(|| format!("sidecar log:\n{}", self.log_text()))
    }

    /// Sends a chat completion for `model` as `user`; the response, its body unread.
    async fn send_chat(
        &self,
        model: &str,
        user: &str,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let body = json!({
            "model": model,
            "user": user,
            "messages": [{"role": "user", "content": "hello"}],
        });
        let req = http::Request::post(format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            self.port
        ))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        Ok(tokio::time::timeout(Duration::from_secs(10), client.request(req)).await??)
    }

    /// A chat completion for `model` as `user`: status, `x-llmesh-backend`, body.
    pub async fn chat(&self, model: &str, user: &str) -> Result<(u16, String, String)> {
        let resp = self.send_chat(model, user).await?;
        let code = resp.status().as_u16();
        let backend = resp
            .headers()
            .get("x-llmesh-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((code, backend, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A chat completion for `model` as `user`: its response headers (the answer must be 200).
    pub async fn chat_headers(
        &self,
        model: &str,
        user: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let resp = self.send_chat(model, user).await?;
        anyhow::ensure!(resp.status() == 200, "{}", resp.status());
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let _ = resp.into_body().collect().await?;
        Ok(headers)
    }

    /// Waits until `model` is answered by `backend`; returns how long that took.
    pub async fn wait_backend(
        &self,
        model: &str,
        backend: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let t0 = Instant::now();
        eventually(&format!("{model} served by {backend}"), timeout, || async {
            let (code, b, body) = self.chat(model, "u").await?;
            if code != 200 || b != backend {
                bail!("{code} from `{b}`: {body}");
            }
            Ok(())
        })
        .await
        .with_context(|| format!("sidecar log:\n{}", self.log_text()))?;
        Ok(t0.elapsed())
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            terminate_blocking(c);
        }
    }
}

/// GET over plain HTTP: status and body.
pub async fn http_get(url: &str) -> Result<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(url.parse::<http::Uri>()?),
    )
    .await??;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// The TLS Secret of the operator the chart installs with default values.
pub const OPERATOR_TLS: &str = "llmesh-operator-tls";

/// The operator's CA (PEM), from its TLS Secret.
pub async fn operator_ca(env: &Env) -> Result<String> {
    operator_ca_in(env, OPERATOR_TLS).await
}

/// The CA (PEM) of an operator run with `--tls-secret tls_secret`.
pub async fn operator_ca_in(env: &Env, tls_secret: &str) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(env.cp.client()?, SYSTEM_NS);
    let s = secrets
        .get(tls_secret)
        .await
        .with_context(|| format!("the operator's TLS Secret {SYSTEM_NS}/{tls_secret}"))?;
    let ca = s
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .context("ca.crt missing")?;
    Ok(String::from_utf8(ca.0)?)
}

/// `GET /v1/snapshot?version=` straight from the operator with `token`: status and body.
pub async fn fetch_snapshot(env: &Env, token: &str) -> Result<(u16, String)> {
    fetch_snapshot_trusting(env, OPERATOR_TLS, token).await
}

/// [`fetch_snapshot`] from an operator run with `--tls-secret tls_secret`.
pub async fn fetch_snapshot_trusting(
    env: &Env,
    tls_secret: &str,
    token: &str,
) -> Result<(u16, String)> {
    let ca = operator_ca_in(env, tls_secret).await?;
    fetch_snapshot_with_ca(env, &ca, token).await
}

/// [`fetch_snapshot`] as a sidecar trusting only the CA `ca` (PEM) does it.
pub async fn fetch_snapshot_with_ca(env: &Env, ca: &str, token: &str) -> Result<(u16, String)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https);
    let req = http::Request::get(format!(
        "https://127.0.0.1:{}/v1/snapshot?version=",
        env.port
    ))
    .header("authorization", format!("Bearer {token}"))
    .body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(40), client.request(req)).await??;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// Creates ServiceAccount `sa` in `ns` (no controller-manager makes `default` here).
pub async fn service_account(env: &Env, ns: &str, sa: &str) -> Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(env.cp.client()?, ns);
    let obj = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(sa.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A Pod running as `sa` with `labels`, as submitted (before admission).
pub fn pod(name: &str, sa: &str, labels: &[(&str, &str)]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "spec": {
            "serviceAccountName": sa,
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        },
    }))
    .expect("valid pod")
}

/// Creates `pod` in `ns` (through admission) and returns it as stored.
pub async fn create_pod(env: &Env, ns: &str, pod: &Pod) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(env.cp.client()?, ns);
    Ok(api.create(&PostParams::default(), pod).await?)
}

/// A Pod with the opt-in label, created, and a token for it (audience llmesh).
pub async fn injected_pod_token(env: &Env, ns: &str, name: &str) -> Result<(Pod, String)> {
    service_account(env, ns, "app").await?;
    let p = create_pod(
        env,
        ns,
        &pod(
            name,
            "app",
            &[("llmesh.io/inject", "enabled"), ("app", name)],
        ),
    )
    .await?;
    let uid = p.metadata.uid.clone().context("uid")?;
    let token = env
        .cp
        .token_for_pod(ns, "app", name, &uid, "llmesh")
        .await?;
    Ok((p, token))
}

/// `kubectl apply -n ns -f -` of a YAML document; the output.
pub async fn apply(env: &Env, ns: &str, yaml: &str) -> Result<std::process::Output> {
    env.cp
        .kubectl_with_stdin(["apply", "-n", ns, "-f", "-"], yaml.as_bytes())
        .await
}

/// A route `private-model` in `ns` whose only backend reads `key` from the Secret `upstream`
/// (created here), pointing nowhere: what a test needs to see who receives the key.
pub async fn secret_and_route(env: &Env, ns: &str, key: &str) -> Result<()> {
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
    let route = "
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
    let out = apply(env, ns, route).await?;
    if !out.status.success() {
        bail!("applying the route: {}", output_text(&out));
    }
    Ok(())
}

/// Waits until the webhook configuration carries the operator's CA (the leader applies it).
pub async fn webhook_ready(env: &Env) -> Result<()> {
    webhook_ready_for(env, OPERATOR_TLS).await
}

/// [`webhook_ready`] for an operator run with `--tls-secret tls_secret`.
pub async fn webhook_ready_for(env: &Env, tls_secret: &str) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let api: Api<MutatingWebhookConfiguration> = Api::all(env.cp.client()?);
    let ca = operator_ca_in(env, tls_secret).await?;
    eventually("webhook caBundle", Duration::from_secs(30), || async {
        let mwc = api.get("llmesh-sidecar-injector").await?;
        let all = mwc.webhooks.unwrap_or_default().iter().all(|w| {
            w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(ca.as_bytes())
        });
        if !all {
            bail!("caBundle not set yet");
        }
        Ok(())
    })
    .await
}
