//! The admin listener (`--admin-listen`): on the pod IP it serves only `/metrics`, `/healthz` and
//! `/readyz`, never the model API; without the flag everything stays on the one `--listen` port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llmesh_api::Snapshot;
use llmesh_api::manifest::{self, LocalSecrets};
use llmesh_sidecar::{App, server};

const ROUTE: &str = "apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: chat}
spec:
  backends:
    - {name: m, provider: mock, model: mock-1, mock: {outputTokens: 4}}
";

/// How long a process or a listener may take to come up.
const PATIENCE: Duration = Duration::from_secs(20);

fn snapshot() -> Snapshot {
    let manifests = manifest::parse("admin.yaml", ROUTE, false).expect("manifests parse");
    let secrets = LocalSecrets::new(&manifests, std::iter::empty());
    manifest::compile("admin.yaml", &manifests, &secrets)
        .expect("manifests compile")
        .0
}

/// One HTTP/1.1 request on a fresh connection: status and body. `None` if nothing answers.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, "").unwrap_or_else(|| panic!("no answer to GET {path}"))
}

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;

/// Every way into the model API, each with the method it takes.
const MODEL_API: [(&str, &str); 9] = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/chat/completions"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/chat"),
    ("GET", "/v1/responses/resp_1"),
];

/// Asserts `addr` is an admin listener serving a loaded config: the three endpoints answer, and
/// the model API and everything else are 404.
fn assert_admin_only(addr: SocketAddr) {
    assert_eq!(get(addr, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(addr, "/readyz"), (200, "ready\n".into()));
    let (code, metrics) = get(addr, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("llmesh_config_info{"),
        "no llmesh_config_info in:\n{metrics}"
    );
    for (method, path) in MODEL_API {
        let (code, body) = request(addr, method, path, CHAT).expect("an answer");
        assert_eq!(code, 404, "{method} {path} on the admin listener: {body}");
        assert!(
            !body.contains("mock-1") && !body.contains("/v1/"),
            "{method} {path}: the refusal names what is served elsewhere: {body}"
        );
    }
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/debug"),
        ("GET", "/v1/healthz"),
        ("POST", "/metrics"),
        ("DELETE", "/readyz"),
        ("PUT", "/healthz"),
    ] {
        let (code, _) = request(addr, method, path, "").expect("an answer");
        assert_eq!(code, 404, "{method} {path} on the admin listener");
    }
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_health_and_readiness_and_refuses_the_model_api() {
    let app = App::builder().build();
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let served = tokio::spawn(server::serve_admin(
        app.clone(),
        listener,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
        Duration::from_secs(1),
    ));

    // Before a config arrives: alive, not ready (what the injected startupProbe waits on).
    let (code, body) = tokio::task::spawn_blocking(move || get(addr, "/readyz"))
        .await
        .unwrap();
    assert_eq!(
        (code, body.as_str()),
        (503, "not ready: no config loaded yet\n")
    );
    let healthz = tokio::task::spawn_blocking(move || get(addr, "/healthz"))
        .await
        .unwrap();
    assert_eq!(healthz.0, 200);

    app.apply(&snapshot());
    tokio::task::spawn_blocking(move || assert_admin_only(addr))
        .await
        .unwrap();

    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the admin listener stops on shutdown")
        .unwrap();
}

/// A `llmesh-sidecar --config` process on a free loopback port, killed when dropped.
struct Sidecar {
    child: Child,
    listen: SocketAddr,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_addr() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

impl Sidecar {
    fn start(flags: &[&str]) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llmesh-admin-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("routes.yaml");
        std::fs::write(&config, ROUTE).unwrap();
        let listen = free_addr();
        let child = Command::new(env!("CARGO_BIN_EXE_llmesh-sidecar"))
            .args(["--config", &config.display().to_string()])
            .args(["--listen", &listen.to_string(), "--access-log", "off"])
            .args(flags)
            .env_remove("LLMESH_ADMIN_LISTEN")
            .env("LLMESH_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let sc = Self {
            child,
            listen,
            _dir: TempDir(dir),
        };
        let t0 = Instant::now();
        while request(listen, "GET", "/readyz", "").map(|r| r.0) != Some(200) {
            assert!(t0.elapsed() < PATIENCE, "the sidecar did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        sc
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The model API on `addr` answers (the mock backend).
fn assert_model_api(addr: SocketAddr) {
    let (code, body) = request(addr, "POST", "/v1/chat/completions", CHAT).expect("an answer");
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(addr, "/v1/models").0, 200);
}

#[test]
fn with_admin_listen_the_binary_serves_the_admin_endpoints_on_a_second_port() {
    let admin = free_addr();
    let sc = Sidecar::start(&["--admin-listen", &admin.to_string()]);
    assert_admin_only(admin);
    // The main port is unchanged: the model API and the admin endpoints.
    assert_model_api(sc.listen);
    assert_eq!(get(sc.listen, "/metrics").0, 200);
}

#[test]
fn without_admin_listen_standalone_keeps_everything_on_one_loopback_port() {
    let sc = Sidecar::start(&[]);
    assert_model_api(sc.listen);
    assert_eq!(get(sc.listen, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(sc.listen, "/readyz"), (200, "ready\n".into()));
    let (code, metrics) = get(sc.listen, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("llmesh_config_info{"), "{metrics}");
}

#[test]
fn an_admin_address_that_is_taken_fails_the_start_naming_the_flag() {
    let taken = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("llmesh-admin-taken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let config = dir.join("routes.yaml");
    std::fs::write(&config, ROUTE).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_llmesh-sidecar"))
        .args(["--config", &config.display().to_string()])
        .args(["--listen", &free_addr().to_string()])
        .args(["--admin-listen", &addr.to_string()])
        .env("LLMESH_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on --admin-listen {addr}")),
        "{err}"
    );
}
