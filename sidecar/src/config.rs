//! Standalone mode: routes and budgets from a file of `LLMRoute`/`LLMBudget` manifests, keys
//! from the environment or `--secrets` files, watched for changes. A bad edit is refused with a
//! message naming the field, and the last good config keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use llmesh_api::Snapshot;
use llmesh_api::manifest::{self, LocalSecrets, Manifest};

use crate::app::App;

/// A compiled config, its warnings, and the (file name, text) pairs it came from.
pub type Loaded = (Snapshot, Vec<String>, Vec<(String, String)>);

/// Where a standalone sidecar's config comes from.
#[derive(Clone, Debug)]
pub struct FileSource {
    /// The routes file.
    pub path: PathBuf,
    /// Files of `v1` Secret manifests.
    pub secrets: Vec<PathBuf>,
}

impl FileSource {
    fn read_all(&self) -> Result<Vec<(String, String)>, String> {
        std::iter::once(&self.path)
            .chain(&self.secrets)
            .map(|p| {
                std::fs::read_to_string(p)
                    .map(|text| (p.display().to_string(), text))
                    .map_err(|e| format!("{}: cannot read: {e}", p.display()))
            })
            .collect()
    }

    /// Reads and compiles everything. Returns the snapshot, its warnings, and the raw text (to
    /// notice changes).
    pub fn load(&self) -> Result<Loaded, String> {
        let files = self.read_all()?;
        let (snapshot, warnings) = compile(&files)?;
        Ok((snapshot, warnings, files))
    }
}

fn compile(files: &[(String, String)]) -> Result<(Snapshot, Vec<String>), String> {
    let (name, text) = &files[0];
    let routes = manifest::parse(name, text, false).map_err(|e| e.to_string())?;
    let mut secret_docs: Vec<Manifest> = Vec::new();
    for (n, t) in &files[1..] {
        let docs = manifest::parse(n, t, true).map_err(|e| e.to_string())?;
        if let Some(other) = docs.iter().find(|d| !matches!(d, Manifest::Secret { .. })) {
            let kind = match other {
                Manifest::Route { .. } => "LLMRoute",
                Manifest::Budget { .. } => "LLMBudget",
                Manifest::Secret { .. } => "Secret",
            };
            return Err(format!(
                "{n}: a secrets file holds only Secret manifests, found {kind}: move it to the config file"
            ));
        }
        secret_docs.extend(docs);
    }
    let secrets = LocalSecrets::new(&secret_docs, std::env::vars());
    manifest::compile(name, &routes, &secrets).map_err(|e| e.to_string())
}

/// Polls the files every `interval`; applies valid changes, refuses invalid ones.
pub async fn watch(
    app: Arc<App>,
    source: FileSource,
    interval: Duration,
    mut last: Vec<(String, String)>,
) {
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(interval).await;
        let files = match source.read_all() {
            Ok(f) => f,
            Err(e) => {
                if e != last_error {
                    tracing::error!(error = %e, "config file unreadable; still serving the last good config");
                    last_error = e;
                }
                continue;
            }
        };
        if files == last {
            continue;
        }
        match compile(&files) {
            Ok((snapshot, warnings)) => {
                for w in &warnings {
                    tracing::warn!("{w}");
                }
                app.apply(&snapshot);
                app.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(version = %snapshot.version, routes = snapshot.routes.len(), "config reloaded");
                last_error.clear();
            }
            Err(e) => {
                app.metrics.reloads.with_label_values(&["invalid"]).inc();
                tracing::error!(error = %e, "config change refused; still serving the last good config");
                last_error = e;
            }
        }
        last = files;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = "apiVersion: llmesh.io/v1alpha1\nkind: LLMRoute\nmetadata: {name: chat}\nspec:\n  backends:\n    - {name: m, provider: mock, model: m}\n";

    fn reloads(app: &App, result: &str) -> u64 {
        app.metrics.reloads.with_label_values(&[result]).get()
    }

    #[tokio::test(start_paused = true)]
    async fn an_emptied_file_is_refused_at_start_and_on_reload() {
        let dir = std::env::temp_dir().join(format!("llmesh-config-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.yaml");
        let source = FileSource {
            path: path.clone(),
            secrets: Vec::new(),
        };

        // At start: a clear message, no config.
        std::fs::write(&path, "# routes go here\n").unwrap();
        let e = source.load().unwrap_err();
        assert!(
            e.contains("routes.yaml: holds no LLMRoute or LLMBudget"),
            "{e}"
        );

        std::fs::write(&path, CHAT).unwrap();
        let (snapshot, _, files) = source.load().unwrap();
        let app = App::builder().build();
        app.apply(&snapshot);
        let watcher = tokio::spawn(watch(
            app.clone(),
            source.clone(),
            Duration::from_secs(1),
            files,
        ));

        // An editor (or `>`) truncates before writing: the reload is refused and counted, and
        // `chat` keeps being served.
        for (i, text) in ["", "  \n", "---\n# saving...\n"].into_iter().enumerate() {
            std::fs::write(&path, text).unwrap();
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            assert_eq!(reloads(&app, "invalid"), i as u64 + 1, "{text:?}");
            let rt = app.runtime().unwrap();
            assert!(rt.resolve("chat").is_some(), "{text:?} dropped the routes");
            assert_eq!(rt.version, snapshot.version);
        }

        // The write completes: the new file is served.
        std::fs::write(&path, CHAT.replace("name: chat", "name: chat-v2")).unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(reloads(&app, "ok"), 1);
        let rt = app.runtime().unwrap();
        assert!(rt.resolve("chat-v2").is_some() && rt.resolve("chat").is_none());

        watcher.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
