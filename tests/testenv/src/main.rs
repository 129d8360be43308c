//! `llmesh-testenv up`: runs the test control plane until Ctrl-C or SIGTERM, for local demos.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Result;
use llmesh_testenv::ControlPlane;
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str = "\
usage: llmesh-testenv up

Starts a real etcd and kube-apiserver on loopback (the same control plane the end-to-end
tests use), prints the kubeconfig, and runs until Ctrl-C or SIGTERM, then tears down.
Needs the binaries from tests/controlplane/install.sh.";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up"] => match up().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("llmesh-testenv: {e:#}");
                ExitCode::FAILURE
            }
        },
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn up() -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let cp = ControlPlane::start().await?;
    let kubeconfig = cp.kubeconfig_path().display();
    println!("kube-apiserver: {}", cp.server_url());
    println!("etcd:           {}", cp.etcd_url());
    println!("started in:     {:.2?}", cp.startup_time());
    println!("kubeconfig:     {kubeconfig}");
    println!("logs:           {}", cp.dir().display());
    println!();
    println!("export KUBECONFIG={kubeconfig}");
    println!();
    println!("Press Ctrl-C to stop.");
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    eprintln!("llmesh-testenv: stopping");
    let t = std::time::Instant::now();
    cp.stop().await?;
    eprintln!("llmesh-testenv: stopped in {:.2?}", t.elapsed());
    Ok(())
}
