//! `llmesh-operator`: see `llmesh_operator::settings::Settings` for its flags.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use llmesh_operator::settings::Settings;

fn main() -> ExitCode {
    let settings = Settings::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("LLMESH_LOG").unwrap_or_else(|_| "info".into());
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if settings.log_format == "json" {
        sub.json().init();
    } else {
        sub.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("llmesh-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "llmesh-operator: no Kubernetes credentials ({e}): run in a pod with a service account, or set KUBECONFIG"
                );
                return ExitCode::from(2);
            }
        };
        match llmesh_operator::run::run(settings, client, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("llmesh-operator: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
