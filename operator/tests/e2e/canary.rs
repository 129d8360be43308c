//! The control-plane half of the canary sweep (issue 23): a provider key held in a Secret never
//! reaches an Event, an LLMRoute or LLMBudget status, the operator's log or metrics, nor the
//! sidecar's log, metrics or answers, while the operator reconciles routes that use it, a route
//! that names a key the Secret lacks, a budget, and a sidecar sends failing requests to a
//! hostile upstream that hands the key back in every field of its errors.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use llmesh_api::{LLMBudget, LLMRoute};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::harness::{
    Env, OPERATOR_SA, SYSTEM_NS, apply, env, eventually, http_get, injected_pod_token, operator_ca,
    output_text, serial, sidecar_bin, webhook_ready,
};

/// The shortest piece of the key that counts as a leak.
const WINDOW: usize = 8;

/// Every piece of `key` of [`WINDOW`] characters, and the key as a Secret's `data` holds it.
struct Canary {
    key: String,
    pieces: Vec<String>,
    base64: String,
}

impl Canary {
    fn new() -> Self {
        let key: String = (0..39).map(|_| random_alnum()).collect();
        let pieces = (0..=key.len() - WINDOW)
            .map(|i| key[i..i + WINDOW].to_string())
            .collect();
        let base64 = serde_json::to_value(ByteString(key.as_bytes().to_vec()))
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Self {
            key,
            pieces,
            base64,
        }
    }

    /// Where in `text` a piece of the key (or its base64) first appears, with its surroundings.
    fn find(&self, text: &str) -> Option<String> {
        let text = unescape(text);
        let hit = self
            .pieces
            .iter()
            .chain(std::iter::once(&self.base64))
            .filter_map(|p| text.find(p.as_str()).map(|i| (i, p.len())))
            .min()?;
        let from = (hit.0.saturating_sub(80)..=hit.0)
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let to = (hit.0 + hit.1 + 80).min(text.len());
        let to = (to..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        Some(text[from..to].replace('\n', "\\n"))
    }
}

/// One random letter or digit (`RandomState` is seeded randomly for each instance).
fn random_alnum() -> char {
    use std::hash::{BuildHasher, Hasher};
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let h = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    ALNUM[(h % ALNUM.len() as u64) as usize] as char
}

/// `\uXXXX` and `\/` decoded, as any JSON reader of the text would see it.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(hex) = tail.strip_prefix("\\u").and_then(|t| t.get(..4))
            && let Some(c) = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
        {
            out.push(c);
            rest = &tail[6..];
        } else if let Some(t) = tail.strip_prefix("\\/") {
            out.push('/');
            rest = t;
        } else {
            out.push('\\');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// An upstream that answers every request with an error carrying `key` in each field, in each
/// provider's shape, and in its headers. The path's first segment picks the status.
async fn hostile_upstream(key: String) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let key = Arc::new(key);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let key = key.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let status = if head.starts_with("post /s400/") {
                    400
                } else {
                    503
                };
                let k = key.as_str();
                // A 400 whose message is clean is handed back to the client as it came.
                let message = if status == 400 {
                    "Invalid value.".to_string()
                } else {
                    format!("bad key {k}")
                };
                let body = json!({
                    "type": "error",
                    "error": {"message": message, "type": k, "param": k, "code": k, "status": k,
                              "details": [{"reason": "API_KEY_INVALID", "metadata": {"key": k}}]},
                    "request_id": k,
                })
                .to_string();
                let out = format!(
                    "HTTP/1.1 {status} Bad key {k}\r\ncontent-type: application/json\r\nx-echo: {k}\r\nwww-authenticate: Bearer key=\"{k}\"\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(out.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(port)
}

fn read_log(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A process logging at trace level to a file; SIGTERM and a wait on `stop`.
struct Traced {
    child: Option<Child>,
    log: PathBuf,
}

impl Traced {
    async fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
        read_log(&self.log)
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.start_kill();
        }
    }
}

/// The operator as `harness::Operator` starts it, logging at trace level.
async fn operator(env: &Env) -> Result<Traced> {
    let token = env
        .cp
        .service_account_token(SYSTEM_NS, OPERATOR_SA, &[], None)
        .await?;
    let kubeconfig = env.dir.join("canary-operator.kubeconfig");
    env.cp.write_kubeconfig(&kubeconfig, &token)?;
    let log = env.dir.join("canary-operator.log");
    let file = std::fs::File::create(&log)?;
    let child = Command::new(env!("CARGO_BIN_EXE_llmesh-operator"))
        .env("KUBECONFIG", &kubeconfig)
        .env("LLMESH_LOG", "trace")
        .args([
            "--namespace",
            SYSTEM_NS,
            "--identity",
            "e2e-canary-operator",
            "--listen",
            &format!("127.0.0.1:{}", env.port),
            "--admin-listen",
            &format!("127.0.0.1:{}", env.admin_port),
            "--tls-san",
            "127.0.0.1",
            "--operator-url",
            &format!("https://127.0.0.1:{}", env.port),
            "--sidecar-image",
            "registry.invalid/llmesh-sidecar:e2e",
        ])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .context("starting llmesh-operator")?;
    let mut op = Traced {
        child: Some(child),
        log,
    };
    let url = format!("http://127.0.0.1:{}/readyz", env.admin_port);
    let ready = eventually("operator /readyz", Duration::from_secs(30), || async {
        match http_get(&url).await? {
            (200, _) => Ok(()),
            (code, _) => bail!("readyz {code}"),
        }
    })
    .await;
    if let Err(e) = ready {
        let log = op.stop().await;
        bail!("{e:#}\noperator log:\n{log}");
    }
    Ok(op)
}

/// A sidecar as `harness::Sidecar` starts it, logging at trace level with its access log on.
async fn sidecar(env: &Env, ns: &str, token: &str) -> Result<(Traced, u16)> {
    let dir = env.dir.join(format!("sidecar-{ns}-canary"));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token)?;
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, operator_ca(env).await?)?;
    let port = free_port();
    let log = dir.join("sidecar.log");
    let file = std::fs::File::create(&log)?;
    let child = Command::new(sidecar_bin())
        .env_remove("LLMESH_CONFIG")
        .env("LLMESH_LOG", "trace")
        .args([
            "--operator",
            &format!("https://127.0.0.1:{}", env.port),
            "--operator-ca",
            &ca_file.display().to_string(),
            "--token-file",
            &token_file.display().to_string(),
            "--snapshot-cache",
            &dir.join("snapshot.json").display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--access-log",
            "on",
        ])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .context("starting llmesh-sidecar")?;
    Ok((
        Traced {
            child: Some(child),
            log,
        },
        port,
    ))
}

/// POST `body` to the sidecar: the whole answer as text (status line, headers, body).
async fn post(port: u16, path: &str, body: &Value) -> Result<(u16, String)> {
    let req = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req)).await??;
    let code = resp.status().as_u16();
    let mut text = format!("HTTP {}\n", resp.status());
    for (k, v) in resp.headers() {
        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await??
        .to_bytes();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&body));
    Ok((code, text))
}

#[tokio::test]
async fn a_provider_key_reaches_no_event_status_log_or_metric() -> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    let canary = Canary::new();
    let upstream = hostile_upstream(canary.key.clone()).await?;
    let mut op = operator(env).await?;
    webhook_ready(env).await?;
    let ns = env.cp.create_namespace("canary").await?;

    // The key, a route using it with every provider adapter, one whose 400s are handed back, one
    // naming a key the Secret lacks, and a budget over them.
    let out = env
        .cp
        .kubectl([
            "create",
            "secret",
            "generic",
            "provider-keys",
            "-n",
            &ns,
            &format!("--from-literal=api-key={}", canary.key),
        ])
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let base = format!("http://127.0.0.1:{upstream}");
    let manifests = format!(
        "
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {{name: leaky}}
spec:
  backends:
    - {{name: oai, provider: openai, model: gpt-4o-2024-08-06, baseUrl: '{base}/s503/v1', secretRef: {{name: provider-keys, key: api-key}}, weight: 1}}
    - {{name: claude, provider: anthropic, model: claude-sonnet-4-20250514, baseUrl: '{base}/s503/v1', secretRef: {{name: provider-keys, key: api-key}}, weight: 0}}
    - {{name: gem, provider: gemini, model: gemini-2.5-flash-001, baseUrl: '{base}/s503/v1beta', secretRef: {{name: provider-keys, key: api-key}}, weight: 0}}
  retry: {{attempts: 1}}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {{name: refused}}
spec:
  backends:
    - {{name: oai, provider: openai, model: gpt-4o-2024-08-06, baseUrl: '{base}/s400/v1', secretRef: {{name: provider-keys, key: api-key}}}}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {{name: missing}}
spec:
  backends:
    - {{name: oai, provider: openai, model: gpt-4o-2024-08-06, secretRef: {{name: provider-keys, key: no-such-key}}}}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMBudget
metadata: {{name: tiny}}
spec:
  routes: [leaky, refused, missing]
  limit: {{usd: \"0.000001\"}}
  period: day
  action: alert
  alertThresholds: [1, 50, 100]
"
    );
    let out = apply(env, &ns, &manifests).await?;
    assert!(out.status.success(), "{}", output_text(&out));

    // A sidecar for the namespace, serving the routes from the operator.
    let (_pod, token) = injected_pod_token(env, &ns, "app").await?;
    let (mut sc, port) = sidecar(env, &ns, &token).await?;
    eventually(
        "the sidecar serves `leaky`",
        Duration::from_secs(20),
        || async {
            let (code, text) = post(
                port,
                "/v1/chat/completions",
                &json!({"model": "leaky", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await?;
            if code == 404 || (code == 503 && text.contains("no config loaded")) {
                bail!("{code}: {text}");
            }
            Ok(())
        },
    )
    .await
    .with_context(|| read_log(&sc.log))?;

    // Failing requests of every kind: each backend answers with the key everywhere.
    let mut answers = Vec::new();
    for model in ["leaky", "refused", "missing"] {
        for stream in [false, true] {
            for (path, body) in [
                (
                    "/v1/chat/completions",
                    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}),
                ),
                (
                    "/v1/responses",
                    json!({"model": model, "input": "hi", "stream": stream}),
                ),
                (
                    "/v1/messages",
                    json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "stream": stream}),
                ),
            ] {
                let (_, text) = post(port, path, &body).await?;
                answers.push((format!("{model} {path} stream={stream}"), text));
            }
        }
    }
    let started = Instant::now();

    // Status settles: the missing key is reported, the sidecar is counted.
    let client = env.cp.client()?;
    let routes: Api<LLMRoute> = Api::namespaced(client.clone(), &ns);
    let budgets: Api<LLMBudget> = Api::namespaced(client.clone(), &ns);
    eventually("statuses written", Duration::from_secs(20), || async {
        let missing = routes.get("missing").await?;
        let leaky = routes.get("leaky").await?;
        let m = serde_json::to_string(&missing.status)?;
        let l = leaky.status.unwrap_or_default();
        if !m.contains("MissingSecret") || l.ready_sidecars != Some(1) {
            bail!("missing: {m}; leaky: {l:?}");
        }
        Ok(())
    })
    .await?;
    eprintln!(
        "statuses settled {:.1?} after the requests",
        started.elapsed()
    );

    // Everything the cluster, the operator and the sidecar show.
    let mut shown: Vec<(String, String)> = answers
        .into_iter()
        .map(|(what, text)| (format!("client answer {what}"), text))
        .collect();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    shown.push((
        "events.k8s.io Events".into(),
        serde_json::to_string_pretty(&events.list(&ListParams::default()).await?.items)?,
    ));
    let core_events: Api<CoreEvent> = Api::namespaced(client.clone(), &ns);
    shown.push((
        "core Events".into(),
        serde_json::to_string_pretty(&core_events.list(&ListParams::default()).await?.items)?,
    ));
    shown.push((
        "LLMRoutes".into(),
        serde_json::to_string_pretty(&routes.list(&ListParams::default()).await?.items)?,
    ));
    shown.push((
        "LLMBudgets".into(),
        serde_json::to_string_pretty(&budgets.list(&ListParams::default()).await?.items)?,
    ));
    let out = env
        .cp
        .kubectl(["describe", "llmroutes,llmbudgets", "-n", &ns])
        .await?;
    shown.push(("kubectl describe".into(), output_text(&out)));
    let (_, op_metrics) = http_get(&format!("http://127.0.0.1:{}/metrics", env.admin_port)).await?;
    shown.push(("operator /metrics".into(), op_metrics));
    let (_, sc_metrics) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await?;
    let upstream_errors: f64 = sc_metrics
        .lines()
        .filter(|l| l.starts_with("llmesh_upstream_errors_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(
        upstream_errors >= 6.0,
        "the requests did not reach the upstream:\n{sc_metrics}"
    );
    shown.push(("sidecar /metrics".into(), sc_metrics));
    let sc_log = sc.stop().await;
    let op_log = op.stop().await;
    for (name, log) in [("sidecar log", sc_log), ("operator log", op_log)] {
        for (i, line) in log.lines().enumerate() {
            shown.push((format!("{name} line {}", i + 1), line.to_string()));
        }
    }

    let leaks: Vec<String> = shown
        .iter()
        .filter_map(|(what, text)| canary.find(text).map(|ctx| format!("{what}: ...{ctx}...")))
        .collect();
    assert!(
        leaks.is_empty(),
        "{} place(s) show the provider key (or {WINDOW}+ characters of it):\n{}",
        leaks.len(),
        leaks
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
