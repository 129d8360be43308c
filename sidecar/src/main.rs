//! `llmesh-sidecar --config routes.yaml`: the data plane, standalone from a file; or
//! `llmesh-sidecar --operator https://HOST:PORT ...`: config pushed by the llmesh operator.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use llmesh_api::duration::parse_duration;
use llmesh_sidecar::App;
use llmesh_sidecar::accesslog;
use llmesh_sidecar::config::{self, FileSource};
use llmesh_sidecar::limits::{self, Limits};
use llmesh_sidecar::operator_client::{self, OperatorSource};
use llmesh_sidecar::usage::UsageReports;

/// How long a stopping sidecar tries to deliver its last usage report.
const USAGE_FLUSH: Duration = Duration::from_secs(3);
use llmesh_sidecar::server;

/// `--log-format`: how operational logs (stderr) are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// An OpenAI- and Anthropic-compatible LLM gateway for one pod (or one laptop).
#[derive(Parser, Debug)]
#[command(name = "llmesh-sidecar", version, about)]
struct Args {
    /// A YAML file of LLMRoute and LLMBudget manifests (the same ones you would kubectl apply).
    #[arg(
        long,
        env = "LLMESH_CONFIG",
        required_unless_present = "operator",
        conflicts_with = "operator"
    )]
    config: Option<PathBuf>,

    /// Take config from the llmesh operator at this URL (https://HOST:PORT) instead of a file.
    #[arg(long, env = "LLMESH_OPERATOR")]
    operator: Option<String>,

    /// A PEM file with the CA that signs the operator's certificate.
    #[arg(long, env = "LLMESH_OPERATOR_CA", requires = "operator")]
    operator_ca: Option<PathBuf>,

    /// The operator's CA as PEM text (what the injection webhook sets), instead of a file.
    #[arg(
        long,
        env = "LLMESH_OPERATOR_CA_PEM",
        requires = "operator",
        hide_env_values = true
    )]
    operator_ca_pem: Option<String>,

    /// The projected service-account token (audience llmesh), re-read on every poll.
    #[arg(
        long,
        env = "LLMESH_TOKEN_FILE",
        default_value = "/var/run/secrets/llmesh/token"
    )]
    token_file: PathBuf,

    /// Where the last snapshot from the operator is kept, to serve while the operator is away.
    #[arg(
        long,
        env = "LLMESH_SNAPSHOT_CACHE",
        default_value = "/var/lib/llmesh/snapshot.json"
    )]
    snapshot_cache: PathBuf,

    /// A YAML file of v1 Secret manifests holding provider keys (repeatable). Without one, a
    /// secretRef {name: openai, key: api-key} is read from the environment variable OPENAI_API_KEY.
    #[arg(long = "secrets", env = "LLMESH_SECRETS", value_delimiter = ',')]
    secrets: Vec<PathBuf>,

    /// Address to listen on. Loopback unless told otherwise.
    #[arg(long, env = "LLMESH_LISTEN", default_value = "127.0.0.1:4000")]
    listen: SocketAddr,

    /// A second address serving only GET /metrics, /healthz and /readyz, never the model API
    /// (the injected sidecar: 0.0.0.0:PORT, for probes and Prometheus on the pod IP). Unset:
    /// they are served on --listen only.
    #[arg(long, env = "LLMESH_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,

    /// How often to check the config files for changes.
    #[arg(long, default_value = "1s", value_parser = duration)]
    watch_interval: Duration,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "30s", value_parser = duration)]
    shutdown_grace: Duration,

    /// Write one JSON access-log line per request to stdout.
    #[arg(long, value_enum, default_value_t = accesslog::Mode::On)]
    access_log: accesslog::Mode,

    /// Log format for operational logs (stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Name of an environment variable holding comma-separated API keys clients must send
    /// (required when listening beyond loopback).
    #[arg(long, env = "LLMESH_API_KEYS_ENV")]
    api_keys_env: Option<String>,

    /// A file with one client API key per line (required when listening beyond loopback, unless
    /// --api-keys-env is given).
    #[arg(long, env = "LLMESH_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,

    /// How many Responses API responses to keep in memory for `previous_response_id` and
    /// `GET /v1/responses/{id}` (least recently used go first; 0 keeps none).
    #[arg(long, env = "LLMESH_RESPONSES_STORE_ENTRIES", default_value_t = 1000)]
    responses_store_entries: usize,

    /// How long to keep each stored Responses API response.
    #[arg(long, env = "LLMESH_RESPONSES_STORE_TTL", default_value = "1h", value_parser = duration)]
    responses_store_ttl: Duration,

    /// Generation requests in flight at once; more are refused at once with a 503 and
    /// `retry-after: 1` instead of queueing without bound (0: no limit).
    #[arg(long, env = "LLMESH_MAX_IN_FLIGHT", default_value_t = llmesh_sidecar::app::DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: usize,

    /// How long a client may take to send a request's headers, counted from when the connection
    /// waits for it (on HTTP/1.1 also the pause before the next request on a kept-alive
    /// connection); then the connection is closed (0: no limit).
    #[arg(long, env = "LLMESH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = limit)]
    header_read_timeout: Duration,

    /// How long a connection may stay open with no request in progress (0: no limit).
    #[arg(long, env = "LLMESH_IDLE_TIMEOUT", default_value = "60s", value_parser = limit)]
    idle_timeout: Duration,

    /// How long a client may take to send a whole request body; then the request is answered
    /// 408 (0: no limit).
    #[arg(long, env = "LLMESH_BODY_READ_TIMEOUT", default_value = "30s", value_parser = limit)]
    body_read_timeout: Duration,

    /// Connections open at once; past it the oldest idle connection is closed to make room, or,
    /// when all are busy, the new one is refused with a 503. Default: half the open-files limit,
    /// at most 4096 (0: no limit).
    #[arg(long, env = "LLMESH_MAX_CONNECTIONS")]
    max_connections: Option<usize>,

    /// Bytes of request and answer bodies held in memory at once, all requests together (Ki, Mi
    /// and Gi suffixes); past it a request is answered 503 (0: no limit).
    #[arg(long, env = "LLMESH_MAX_BUFFERED_BYTES", default_value = "64Mi", value_parser = llmesh_sidecar::limits::parse_bytes)]
    max_buffered_bytes: usize,

    /// Worker threads serving requests. 1 runs everything on one thread (lowest latency, one
    /// core); 0 uses one per CPU.
    #[arg(long, env = "LLMESH_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,

    /// Check the config, print warnings, and exit.
    #[arg(long)]
    check: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// A duration, or `0` for none (the limits' "off").
fn limit(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

fn local_keys(args: &Args) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    if let Some(var) = &args.api_keys_env {
        let v = std::env::var(var)
            .map_err(|_| format!("--api-keys-env names {var}, which is not set"))?;
        keys.extend(
            v.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string),
        );
    }
    if let Some(path) = &args.api_keys_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--api-keys-file {}: {e}", path.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|k| !k.is_empty() && !k.starts_with('#'))
                .map(str::to_string),
        );
    }
    if (args.api_keys_env.is_some() || args.api_keys_file.is_some()) && keys.is_empty() {
        return Err("the API key sources given hold no keys".into());
    }
    Ok(keys)
}

/// The runtime `--worker-threads` asks for. One worker is a current-thread runtime, with no
/// cross-thread wake-ups on the request path.
fn runtime(args: &Args) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if args.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if args.worker_threads > 1 {
            b.worker_threads(args.worker_threads);
        }
        b
    };
    builder.enable_all().build()
}

/// The app as the flags configure it, in either mode; `open_files` is the open-files limit.
fn app(
    args: &Args,
    keys: Vec<String>,
    open_files: u64,
    usage: Option<std::sync::Arc<UsageReports>>,
) -> std::sync::Arc<App> {
    let limits = Limits {
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        body_read_timeout: if args.body_read_timeout.is_zero() {
            Duration::MAX
        } else {
            args.body_read_timeout
        },
        // Half the files for clients: upstream connections, the config and the log need the rest.
        max_connections: args.max_connections.unwrap_or_else(|| {
            (open_files / 2).clamp(1, limits::DEFAULT_MAX_CONNECTIONS as u64) as usize
        }),
    };
    let builder = App::builder();
    let builder = match usage {
        Some(u) => builder.report_usage(u),
        None => builder,
    };
    builder
        .access_log(args.access_log == accesslog::Mode::On)
        .local_keys(keys)
        .responses_store(args.responses_store_entries, args.responses_store_ttl)
        .max_in_flight(args.max_in_flight)
        .limits(limits)
        .max_buffered_bytes(args.max_buffered_bytes)
        .build()
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("import") {
        return llmesh_sidecar::import::main(std::env::args().skip(2));
    }
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("LLMESH_LOG").unwrap_or_else(|_| "info".into());
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_format == LogFormat::Json {
        sub.json().init();
    } else {
        sub.init();
    }
    // Every connection is a file: a burst of clients must not meet a soft limit of 1,024 when
    // the hard limit allows more (Go's runtime and nginx's worker_rlimit_nofile do the same).
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::debug!(open_files = n, "open files limit");
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };

    if let Some(url) = args.operator.clone() {
        return operator_mode(&args, url, open_files);
    }
    let Some(config) = args.config.clone() else {
        eprintln!("llmesh-sidecar: pass --config FILE or --operator URL");
        return ExitCode::from(2);
    };
    let source = FileSource {
        path: config.clone(),
        secrets: args.secrets.clone(),
    };
    let (snapshot, warnings, files) = match source.load() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("llmesh-sidecar: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if args.check {
        println!(
            "{}: ok: {} route(s), {} budget(s), version {}",
            config.display(),
            snapshot.routes.len(),
            snapshot.budgets.len(),
            snapshot.version
        );
        return ExitCode::SUCCESS;
    }
    let keys = match local_keys(&args) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("llmesh-sidecar: {e}");
            return ExitCode::from(2);
        }
    };
    if !args.listen.ip().is_loopback() && keys.is_empty() {
        eprintln!(
            "llmesh-sidecar: refusing to listen on {} without client API keys: anyone who can reach it could spend your provider keys. \
             Pass --api-keys-env VAR or --api-keys-file FILE, or listen on 127.0.0.1",
            args.listen
        );
        return ExitCode::from(2);
    }

    let runtime = match runtime(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("llmesh-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let app = app(&args, keys, open_files, None);
        tokio::spawn(llmesh_sidecar::memory::trim_loop());
        app.apply(&snapshot);
        app.metrics.reloads.with_label_values(&["ok"]).inc();
        let listener = match server::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("llmesh-sidecar: cannot listen on {}: {e}", args.listen);
                return ExitCode::from(1);
            }
        };
        let Ok(mut admin) = Admin::bind(args.admin_listen).await else {
            return ExitCode::from(1);
        };
        tracing::info!(
            listen = %args.listen,
            admin_listen = ?args.admin_listen,
            routes = snapshot.routes.len(),
            version = %snapshot.version,
            "llmesh-sidecar serving; point OpenAI clients at http://{}/v1",
            args.listen
        );
        tokio::spawn(config::watch(
            app.clone(),
            source,
            args.watch_interval,
            files,
        ));
        let shutdown = admin.start(&app, args.shutdown_grace);
        server::serve(app.clone(), listener, shutdown, args.shutdown_grace).await;
        admin.stopped().await;
        app.log.flush(Duration::from_secs(5));
        ExitCode::SUCCESS
    })
}

/// Runs with config from the operator: the snapshot on disk first (if any), then long-polls.
fn operator_mode(args: &Args, url: String, open_files: u64) -> ExitCode {
    if args.check {
        eprintln!(
            "llmesh-sidecar: --check validates a --config file; there is none in operator mode"
        );
        return ExitCode::from(2);
    }
    let ca_pem = match (&args.operator_ca_pem, &args.operator_ca) {
        (Some(pem), _) => pem.clone(),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("llmesh-sidecar: --operator-ca {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!(
                "llmesh-sidecar: --operator needs the operator's CA: --operator-ca FILE or LLMESH_OPERATOR_CA_PEM"
            );
            return ExitCode::from(2);
        }
    };
    if !url.starts_with("https://") {
        eprintln!(
            "llmesh-sidecar: --operator must be an https:// URL (the snapshot carries provider keys)"
        );
        return ExitCode::from(2);
    }
    let keys = match local_keys(args) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("llmesh-sidecar: {e}");
            return ExitCode::from(2);
        }
    };
    if !args.listen.ip().is_loopback() && keys.is_empty() {
        eprintln!(
            "llmesh-sidecar: refusing to listen on {} without client API keys; pass --api-keys-env or --api-keys-file, or listen on 127.0.0.1",
            args.listen
        );
        return ExitCode::from(2);
    }
    let source = OperatorSource {
        url,
        ca_pem,
        token_file: args.token_file.clone(),
        cache_path: args.snapshot_cache.clone(),
    };
    let runtime = match runtime(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("llmesh-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = args.listen;
    let grace = args.shutdown_grace;
    runtime.block_on(async move {
        let usage = std::sync::Arc::new(UsageReports::new(UsageReports::process_nonce()));
        let app = app(args, keys, open_files, Some(usage.clone()));
        tokio::spawn(llmesh_sidecar::memory::trim_loop());
        let served = operator_client::start_from_disk(&app, &source);
        let listener = match server::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("llmesh-sidecar: cannot listen on {listen}: {e}");
                return ExitCode::from(1);
            }
        };
        let Ok(mut admin) = Admin::bind(args.admin_listen).await else {
            return ExitCode::from(1);
        };
        tracing::info!(
            listen = %listen,
            admin_listen = ?args.admin_listen,
            operator = %source.url,
            "llmesh-sidecar listening; point OpenAI clients at http://{listen}/v1"
        );
        let client = match operator_client::client(&source.ca_pem) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("llmesh-sidecar: {e}");
                return ExitCode::from(2);
            }
        };
        let reporter = std::sync::Arc::new(operator_client::UsageSender::new(
            &source,
            client.clone(),
            usage,
        ));
        tokio::spawn(reporter.clone().run(app.clone()));
        tokio::spawn(operator_client::run(app.clone(), source, served, client));
        let shutdown = admin.start(&app, grace);
        server::serve(app.clone(), listener, shutdown, grace).await;
        // Every request has settled: send what is left before exiting.
        reporter.flush(&app, USAGE_FLUSH).await;
        admin.stopped().await;
        app.log.flush(Duration::from_secs(5));
        ExitCode::SUCCESS
    })
}

/// The `--admin-listen` listener, when there is one: bound before anything is served, so a taken
/// port fails the start, and stopped with the main listener.
struct Admin {
    listener: Option<tokio::net::TcpListener>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Admin {
    /// Binds `addr`; prints why and fails when it cannot.
    async fn bind(addr: Option<SocketAddr>) -> Result<Self, ()> {
        let listener = match addr {
            None => None,
            Some(a) => match server::bind(a).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("llmesh-sidecar: cannot listen on --admin-listen {a}: {e}");
                    return Err(());
                }
            },
        };
        Ok(Self {
            listener,
            task: None,
        })
    }

    /// Starts serving; the returned future is the main listener's shutdown: it resolves on
    /// SIGTERM or Ctrl-C, and stops this listener too.
    fn start(
        &mut self,
        app: &std::sync::Arc<App>,
        grace: Duration,
    ) -> impl std::future::Future<Output = ()> + use<> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        if let Some(listener) = self.listener.take() {
            let mut stopped = stopped;
            self.task = Some(tokio::spawn(server::serve_admin(
                app.clone(),
                listener,
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
                grace,
            )));
        }
        async move {
            shutdown_signal().await;
            stop.send_replace(true);
        }
    }

    /// Waits for the admin listener to finish.
    async fn stopped(self) {
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
