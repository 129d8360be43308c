//! `crdgen`: writes llmesh's CRDs to `crds/` and `charts/llmesh/crds/`, and their reference to
//! `docs/crd-reference.md`.
//! `crdgen --check` fails when a committed file differs from what the types generate.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            _ => {
                println!("usage: crdgen [--check]");
                return ExitCode::from(if arg == "-h" || arg == "--help" { 0 } else { 2 });
            }
        }
    }
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let files = match llmesh_operator::crd::generated_files() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = Vec::new();
    for (rel, text) in files {
        let path = root.join(&rel);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(rel);
            }
            continue;
        }
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        if let Err(e) = written {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {rel}");
    }
    if !stale.is_empty() {
        eprintln!(
            "crdgen: stale: {}; run `cargo run -p llmesh-operator --bin crdgen` and commit",
            stale.join(", ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
