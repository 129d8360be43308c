//! A real Kubernetes control plane for llmesh's end-to-end tests.
//!
//! [`ControlPlane::start`] runs etcd (from the `etcd-bin-vendored` crate) and kube-apiserver
//! (built by `tests/controlplane/install.sh`) on loopback ports, with RBAC, token
//! authentication, service-account token signing and admission webhooks enabled. There is no
//! kubelet, scheduler or controller-manager: Pods exist only as objects, and namespaces are
//! never finalized.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cp = llmesh_testenv::shared().await?; // one control plane per test binary
//! let ns = cp.create_namespace("my-test").await?; // one namespace per test
//! let client = cp.client()?;
//! let out = cp.kubectl(["get", "ns", ns.as_str()]).await?;
//! assert!(out.status.success());
//! # let _ = client; Ok(()) }
//! ```
//!
//! Processes never outlive the test process: see [`ControlPlane`]'s teardown notes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod paths;
mod process;
mod tls;

use std::ffi::OsStr;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use paths::{
    CACHE_ENV, ETCD_ENV, HELM_ENV, KUBE_APISERVER_ENV, KUBECTL_ENV, cache_dir, etcd_path,
    helm_path, install_script, kube_apiserver_path, kubectl_path, repo_root,
};
pub use tls::{IssuedCert, TestCa};

use process::{Proc, Watchdog};

/// The service-account token issuer the apiserver is configured with.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";
/// The audience llmesh's sidecars and operator validate tokens for.
pub const LLMESH_AUDIENCE: &str = "llmesh";
/// The API audiences the apiserver accepts (`--api-audiences`): the issuer only, as in a real
/// cluster. `llmesh` must not be among them: then every sidecar's token would also be a
/// credential for the Kubernetes API, and a pod's ordinary token (which carries the API
/// audiences) would be accepted by the operator. The operator's TokenReview names its audience
/// in `spec.audiences`, which needs no flag.
pub const API_AUDIENCES: [&str; 1] = [SERVICE_ACCOUNT_ISSUER];
/// The admin user in the token-auth file (member of `system:masters`).
pub const ADMIN_USER: &str = "admin";

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const APISERVER_GRACE: Duration = Duration::from_secs(5);
const ETCD_GRACE: Duration = Duration::from_secs(5);

/// A running etcd + kube-apiserver pair on loopback.
///
/// # Teardown
///
/// Dropping the value (or [`ControlPlane::stop`]) stops kube-apiserver first (SIGTERM, 5 s
/// grace, SIGKILL), then etcd, then removes the temporary directory; `Drop` does this
/// synchronously, so it also happens when a test panics. If the test process dies without
/// running destructors (the [`shared`] instance lives in a `static`, `panic = "abort"`,
/// SIGKILL, Ctrl-C), a tiny `/bin/sh` watchdog notices that its stdin pipe from this process
/// was closed by the kernel and does the same teardown.
pub struct ControlPlane {
    apiserver: Option<Proc>,
    etcd: Option<Proc>,
    watchdog: Option<Watchdog>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    server_url: String,
    etcd_url: String,
    admin_token: String,
    ca_pem: String,
    ca_der: Vec<u8>,
    kubeconfig: PathBuf,
    startup: Duration,
}

static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();

/// One control plane per test binary, started on first use and shared by all its tests.
///
/// Give each test its own namespace with [`ControlPlane::create_namespace`]. The processes are
/// stopped by the watchdog when the test binary exits (statics are never dropped).
/// Clients are per call ([`ControlPlane::client`]): a `kube::Client` is bound to the Tokio
/// runtime it was created in, and each `#[tokio::test]` has its own.
pub async fn shared() -> Result<&'static ControlPlane> {
    SHARED.get_or_try_init(ControlPlane::start).await
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until `/readyz` is OK.
    ///
    /// Fails with instructions if kube-apiserver is not installed (run
    /// `tests/controlplane/install.sh`), and with the tail of the server's log if a server
    /// exits or does not become ready in time. Retries twice if a port was taken meanwhile.
    pub async fn start() -> Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once().await {
                Ok(cp) => return Ok(cp),
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    eprintln!("llmesh-testenv: port collision, retrying: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once() -> Result<Self> {
        let t0 = Instant::now();
        let apiserver_bin = kube_apiserver_path()?;
        let etcd_bin = etcd_path()?;
        // kubectl is not needed to start, but fail early rather than in the middle of a test.
        kubectl_path()?;

        let dir = tempfile::Builder::new()
            .prefix("llmesh-controlplane-")
            .tempdir()
            .context("creating a temporary directory for the control plane")?;
        let dir_path = dir.path().to_path_buf();
        let mut cp = ControlPlane {
            apiserver: None,
            etcd: None,
            watchdog: Some(Watchdog::spawn(&dir_path)?),
            dir: Some(dir),
            dir_path: dir_path.clone(),
            server_url: String::new(),
            etcd_url: String::new(),
            admin_token: random_hex(32)?,
            ca_pem: String::new(),
            ca_der: Vec::new(),
            kubeconfig: dir_path.join("kubeconfig"),
            startup: Duration::ZERO,
        };

        let [etcd_client_port, etcd_peer_port, apiserver_port] = free_ports::<3>()?;

        // --- etcd ---------------------------------------------------------------------------
        let etcd_client = format!("http://127.0.0.1:{etcd_client_port}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let mut cmd = Command::new(&etcd_bin);
        cmd.arg("--name=llmesh-test")
            .arg(format!("--data-dir={}", dir_path.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_client}"))
            .arg(format!("--advertise-client-urls={etcd_client}"))
            .arg(format!("--listen-peer-urls={etcd_peer}"))
            .arg(format!("--initial-advertise-peer-urls={etcd_peer}"))
            .arg(format!("--initial-cluster=llmesh-test={etcd_peer}"))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let etcd = Proc::spawn("etcd", cmd, &dir_path.join("etcd.log"))?;
        cp.watchdog_register(&etcd)?;
        cp.etcd = Some(etcd);
        cp.etcd_url = etcd_client;
        cp.wait_for_etcd(etcd_client_port).await?;
        let etcd_ready = t0.elapsed();

        // --- credentials ----------------------------------------------------------------------
        let ca = TestCa::new("llmesh-testenv-ca")?;
        let serving = ca.issue_server_cert(&["127.0.0.1", "localhost"])?;
        let sa_key = rcgen::KeyPair::generate().context("generating service-account key")?;
        let files = [
            ("ca.crt", ca.cert_pem().to_string()),
            ("apiserver.crt", serving.cert_pem.clone()),
            ("apiserver.key", serving.key_pem.clone()),
            ("sa.key", sa_key.serialize_pem()),
            ("sa.pub", sa_key.public_key_pem()),
            (
                "tokens.csv",
                format!(
                    "{},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n",
                    cp.admin_token
                ),
            ),
        ];
        for (name, contents) in &files {
            write_private(&dir_path.join(name), contents.as_bytes())?;
        }
        cp.ca_pem = ca.cert_pem().to_string();
        cp.ca_der = ca.cert_der().to_vec();

        // --- kube-apiserver -------------------------------------------------------------------
        let p = |name: &str| dir_path.join(name).display().to_string();
        let mut cmd = Command::new(&apiserver_bin);
        cmd.arg(format!("--etcd-servers={}", cp.etcd_url))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={apiserver_port}"))
            .arg(format!("--cert-dir={}", p("certs")))
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg(format!("--token-auth-file={}", p("tokens.csv")))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p("sa.key")
            ))
            .arg(format!("--api-audiences={}", API_AUDIENCES.join(",")))
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .arg("--v=1");
        let apiserver = Proc::spawn("kube-apiserver", cmd, &dir_path.join("kube-apiserver.log"))?;
        cp.watchdog_register(&apiserver)?;
        cp.apiserver = Some(apiserver);
        cp.server_url = format!("https://127.0.0.1:{apiserver_port}");
        cp.wait_for_apiserver().await?;
        cp.write_kubeconfig(&cp.kubeconfig, &cp.admin_token)?;

        cp.startup = t0.elapsed();
        eprintln!(
            "llmesh-testenv: control plane ready in {:.2?} (etcd {:.2?}) at {}; KUBECONFIG={}",
            cp.startup,
            etcd_ready,
            cp.server_url,
            cp.kubeconfig.display()
        );
        Ok(cp)
    }

    fn watchdog_register(&mut self, proc: &Proc) -> Result<()> {
        self.watchdog
            .as_mut()
            .context("watchdog missing")?
            .register(proc)
    }

    async fn wait_for_etcd(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(proc) = self.etcd.as_mut()
                && let Some(status) = proc.exited()
            {
                bail!("{}", proc.exit_report(status));
            }
            if etcd_healthy(port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail = self
                    .etcd
                    .as_ref()
                    .map(|p| p.log_tail(40))
                    .unwrap_or_default();
                bail!(
                    "etcd did not become healthy on 127.0.0.1:{port} within {READY_TIMEOUT:?}; last log lines:\n{tail}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for_apiserver(&mut self) -> Result<()> {
        let client = self.client()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error;
        loop {
            if let Some(proc) = self.apiserver.as_mut()
                && let Some(status) = proc.exited()
            {
                bail!("{}", proc.exit_report(status));
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(req).await {
                Ok(_) => return Ok(()),
                Err(e) => last_error = e.to_string(),
            }
            if Instant::now() > deadline {
                let (log, tail) = self
                    .apiserver
                    .as_ref()
                    .map(|p| (p.log().display().to_string(), p.log_tail(40)))
                    .unwrap_or_default();
                bail!(
                    "kube-apiserver at {} was not ready within {READY_TIMEOUT:?} (last /readyz: {last_error}); \
                     last lines of {log}:\n{tail}",
                    self.server_url
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Path of a kubeconfig for the admin user (`system:masters`), current context set.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver's URL, `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The etcd client URL, `http://127.0.0.1:PORT`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The admin bearer token (user `admin`, group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// PEM of the CA that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The temporary directory holding etcd's data, keys, logs and the kubeconfig.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The kube-apiserver log file (stdout and stderr).
    pub fn apiserver_log_path(&self) -> PathBuf {
        self.dir_path.join("kube-apiserver.log")
    }

    /// How long [`ControlPlane::start`] took until `/readyz` answered 200.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// A `kube::Config` for the apiserver that authenticates with `token`.
    pub fn config_with_token(&self, token: &str) -> Result<kube::Config> {
        let mut config = kube::Config::new(self.server_url.parse().context("server URL")?);
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config.auth_info.token = Some(secrecy::SecretString::from(token.to_string()));
        config.default_namespace = "default".into();
        Ok(config)
    }

    /// A `kube::Config` for the admin user.
    pub fn config(&self) -> Result<kube::Config> {
        self.config_with_token(&self.admin_token)
    }

    /// A client for the admin user. Call it inside the Tokio runtime that will use the client.
    pub fn client(&self) -> Result<kube::Client> {
        kube::Client::try_from(self.config()?).context("building admin kube client")
    }

    /// A client that authenticates with `token`. Call it inside the Tokio runtime that will use it.
    pub fn client_with_token(&self, token: &str) -> Result<kube::Client> {
        kube::Client::try_from(self.config_with_token(token)?).context("building kube client")
    }

    /// Writes a kubeconfig that authenticates with `token` to `path` (e.g. for a child
    /// process that must run with a ServiceAccount's RBAC).
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "llmesh-test",
                "cluster": {
                    "server": self.server_url,
                    "certificate-authority": self.dir_path.join("ca.crt"),
                },
            }],
            "users": [{ "name": "llmesh-test", "user": { "token": token } }],
            "contexts": [{
                "name": "llmesh-test",
                "context": { "cluster": "llmesh-test", "user": "llmesh-test", "namespace": "default" },
            }],
            "current-context": "llmesh-test",
        });
        write_private(path, serde_json::to_string_pretty(&kubeconfig)?.as_bytes())
    }

    /// Requests a token for ServiceAccount `ns/name` (TokenRequest API, 1 hour) for `audiences`
    /// (empty means the apiserver's default audiences), optionally bound to a Pod
    /// (`(pod_name, pod_uid)`).
    pub async fn service_account_token(
        &self,
        ns: &str,
        name: &str,
        audiences: &[&str],
        bound_pod: Option<(&str, &str)>,
    ) -> Result<String> {
        request_token(&self.client()?, ns, name, audiences, bound_pod).await
    }

    /// A client authenticated as ServiceAccount `ns/name` through a TokenRequest token, so the
    /// caller has exactly that ServiceAccount's RBAC. The ServiceAccount must exist.
    pub async fn client_for_service_account(&self, ns: &str, name: &str) -> Result<kube::Client> {
        let token = self.service_account_token(ns, name, &[], None).await?;
        self.client_with_token(&token)
    }

    /// A token for ServiceAccount `ns/sa` bound to Pod `ns/pod_name` (uid `pod_uid`) with the
    /// given audience, as a kubelet would project it. The Pod's `spec.serviceAccountName` must
    /// be `sa`. A TokenReview of it reports the pod in `status.user.extra`.
    pub async fn token_for_pod(
        &self,
        ns: &str,
        sa: &str,
        pod_name: &str,
        pod_uid: &str,
        audience: &str,
    ) -> Result<String> {
        self.service_account_token(ns, sa, &[audience], Some((pod_name, pod_uid)))
            .await
    }

    /// Creates a namespace named `<prefix>-<n>-<random>` (unique per call) and returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let mut base: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        base.truncate(40);
        let base = base.trim_matches('-');
        let base = if base.is_empty() { "test" } else { base };
        let name = format!(
            "{base}-{}-{}",
            SEQ.fetch_add(1, Ordering::Relaxed),
            random_hex(3)?
        );
        let api: Api<Namespace> = Api::all(self.client()?);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// Runs the cached kubectl with `--kubeconfig` set to the admin kubeconfig.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_with_stdin(args, &[]).await
    }

    /// Runs the cached kubectl with `stdin` as its standard input (e.g. `apply -f -`).
    pub async fn kubectl_with_stdin<I, S>(&self, args: I, stdin: &[u8]) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = tokio::process::Command::new(kubectl_path()?);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir_path.join("kube-cache").display()
            ))
            .args(args);
        run_with_stdin(cmd, "kubectl", stdin).await
    }

    /// Runs the cached helm against this control plane (`KUBECONFIG` set, helm's cache, config
    /// and data directories inside the control plane's temporary directory).
    pub async fn helm<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = tokio::process::Command::new(helm_path()?);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir_path.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir_path.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir_path.join("helm/data"))
            .args(args);
        run_with_stdin(cmd, "helm", &[]).await
    }

    /// Stops kube-apiserver, then etcd, and removes the temporary directory.
    pub async fn stop(self) -> Result<()> {
        let mut this = self;
        tokio::task::spawn_blocking(move || this.teardown())
            .await
            .context("control plane teardown task panicked")?
    }

    fn teardown(&mut self) -> Result<()> {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.terminate(APISERVER_GRACE);
        }
        if let Some(mut etcd) = self.etcd.take() {
            etcd.terminate(ETCD_GRACE);
        }
        // Disarmed only now, so it still covers us if this process dies mid-teardown.
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            dir.close()
                .with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("llmesh-testenv: teardown: {e:#}");
        }
    }
}

async fn run_with_stdin(
    mut cmd: tokio::process::Command,
    name: &str,
    stdin: &[u8],
) -> Result<Output> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).await?;
        drop(input);
    }
    child
        .wait_with_output()
        .await
        .with_context(|| format!("waiting for {name}"))
}

async fn etcd_healthy(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        std::io::Result::Ok(response.contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

/// Picks `N` distinct free loopback ports (all bound at once, then released).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding a free loopback port")?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// `n` random bytes from the OS, hex-encoded.
fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents)
        .with_context(|| format!("writing {}", path.display()))
}

/// [`ControlPlane::service_account_token`] through a client the caller already holds (many
/// tokens over one connection pool).
pub async fn request_token(
    client: &kube::Client,
    ns: &str,
    name: &str,
    audiences: &[&str],
    bound_pod: Option<(&str, &str)>,
) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(3600),
            bound_object_ref: bound_pod.map(|(pod, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                uid: Some(uid.into()),
            }),
        },
        ..Default::default()
    };
    let response = api
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for serviceaccount {ns}/{name} (does it exist?)"))?;
    response
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("TokenRequest for {ns}/{name} returned no token"))
}

/// A finished command's status, stdout and stderr, for error messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The namespace llmesh's operator runs in (the chart's release namespace in the tests).
pub const SYSTEM_NS: &str = "llmesh-system";

/// The Helm chart, relative to the repository root: the one source of the install manifests.
pub const CHART: &str = "charts/llmesh";

/// The chart's templates that make the operator's identity and permissions: its
/// ServiceAccount, ClusterRole, Role and their bindings (and, with `secrets.namespaces`, a Role
/// and RoleBinding in each listed namespace).
pub const CHART_RBAC_TEMPLATES: [&str; 2] =
    ["templates/serviceaccount.yaml", "templates/rbac.yaml"];

impl ControlPlane {
    /// The chart [`CHART`] rendered by `helm template` as release `release` in [`SYSTEM_NS`],
    /// with the values files `values` (none: the defaults) and only the templates `show_only`
    /// (none: all but the `helm test` hooks): YAML documents, for `kubectl apply -f -`.
    pub async fn render_chart(
        &self,
        release: &str,
        values: &[&Path],
        show_only: &[&str],
    ) -> Result<String> {
        let chart = repo_root().join(CHART).display().to_string();
        let mut args: Vec<String> = [
            "template",
            release,
            &chart,
            "--namespace",
            SYSTEM_NS,
            "--skip-tests",
        ]
        .map(String::from)
        .to_vec();
        for v in values {
            args.extend(["--values".into(), v.display().to_string()]);
        }
        for t in show_only {
            args.extend(["--show-only".into(), t.to_string()]);
        }
        let out = self.helm(&args).await?;
        if !out.status.success() {
            bail!("helm {}: {}", args.join(" "), output_text(&out));
        }
        String::from_utf8(out.stdout).context("helm template printed something not UTF-8")
    }

    /// Installs llmesh's CRDs (waiting until they are Established), the `llmesh-system`
    /// namespace (kept if it exists) and the chart's ServiceAccount and RBAC with default values
    /// ([`CHART_RBAC_TEMPLATES`], rendered now by `helm template`): the operator run with that
    /// ServiceAccount's token has exactly the permissions a `helm install` gives it. Safe to
    /// call again on a shared control plane.
    pub async fn install_llmesh(&self) -> Result<()> {
        let repo = repo_root();
        let crds = repo.join("crds").display().to_string();
        let out = self.kubectl(["apply", "-f", &crds]).await?;
        if !out.status.success() {
            bail!("applying crds/: {}", output_text(&out));
        }
        let out = self
            .kubectl([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/llmroutes.llmesh.io",
                "crd/llmbudgets.llmesh.io",
            ])
            .await?;
        if !out.status.success() {
            bail!("CRDs not established: {}", output_text(&out));
        }
        let out = self.kubectl(["create", "namespace", SYSTEM_NS]).await?;
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("AlreadyExists")
        {
            bail!("creating {SYSTEM_NS}: {}", output_text(&out));
        }
        let rbac = self
            .render_chart("llmesh", &[], &CHART_RBAC_TEMPLATES)
            .await?;
        let out = self
            .kubectl_with_stdin(["apply", "-f", "-"], rbac.as_bytes())
            .await?;
        if !out.status.success() {
            bail!(
                "applying the chart's RBAC ({CHART} {}): {}",
                CHART_RBAC_TEMPLATES.join(", "),
                output_text(&out)
            );
        }
        Ok(())
    }
}
