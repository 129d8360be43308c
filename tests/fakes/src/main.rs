//! `llmesh-fake-provider --listen 127.0.0.1:0`: prints `listening on ADDR`, then serves.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use llmesh_fakes::scenario::parse_duration;
use llmesh_fakes::{Fake, serve};

/// A fake LLM provider (OpenAI, Azure OpenAI, Anthropic Messages and Gemini wire formats) whose
/// path prefix picks its behaviour: `/s/ok/v1`, `/s/fast/v1`, `/s/429/v1`, `/s/hang-before-first-byte/v1`, ...
#[derive(Parser, Debug)]
#[command(name = "llmesh-fake-provider", version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free one. The first stdout line is
    /// `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// Worker threads; 1 runs everything on the calling thread (one core, for benchmarks).
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// How long `hang` and `hang-before-first-byte` hold a request before giving up.
    #[arg(long, default_value = "300s", value_parser = duration)]
    hang_limit: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("`{s}` is not a duration like 300s or 500ms"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("llmesh-fake-provider: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "llmesh-fake-provider: cannot listen on {}: {e}",
                    args.listen
                );
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().unwrap_or(args.listen);
        let mut out = std::io::stdout().lock();
        // Test harnesses read this line to learn the port.
        if writeln!(out, "listening on {addr}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
        drop(out);
        serve(listener, Fake::new(args.hang_limit)).await;
        ExitCode::SUCCESS
    })
}
