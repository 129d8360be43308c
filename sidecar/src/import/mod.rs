//! `llmesh-sidecar import litellm config.yaml`: turns another gateway's config into the
//! `LLMRoute` and `LLMBudget` manifests that behave the same, printed on stdout.

pub mod litellm;

use std::process::ExitCode;

/// Runs `import <format> FILE` (the arguments after `import`).
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args: Vec<String> = args.into_iter().collect();
    let usage = "usage: llmesh-sidecar import litellm CONFIG.yaml > routes.yaml";
    match args.as_slice() {
        [format, file] if format == "litellm" => {
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("llmesh-sidecar import: cannot read {file}: {e}");
                    return ExitCode::from(2);
                }
            };
            let name = std::path::Path::new(file)
                .file_name()
                .map_or_else(|| file.clone(), |n| n.to_string_lossy().into_owned());
            // Only `api_base` and `api_version` references are looked up; keys never are.
            match litellm::convert(&name, &text, &|var| std::env::var(var).ok()) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("llmesh-sidecar import: {name}: {e}");
                    ExitCode::from(2)
                }
            }
        }
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{usage}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}
