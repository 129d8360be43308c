//! Golden tests of `llmesh-sidecar import litellm`: every LiteLLM config in tests/litellm/ (each
//! mirrors a shape from LiteLLM's documentation) is imported and compared with the committed
//! output in tests/litellm/expected/. A changed output fails; `LLMESH_UPDATE_GOLDEN=1` rewrites
//! the expected files (review the diff). Each output must also load as a `--config` file with
//! the keys exported, and hold none of the config's literal secrets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llmesh_api::manifest::{self, LocalSecrets, Manifest};
use llmesh_sidecar::import::litellm;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/litellm")
}

/// The non-secret variables the fixtures' `os.environ/...` URLs and versions refer to.
fn env(var: &str) -> Option<String> {
    match var {
        "AZURE_API_BASE" => Some("https://example-resource.openai.azure.com/".into()),
        "AZURE_API_VERSION" => Some("2024-10-21".into()),
        "VLLM_API_BASE" => Some("http://vllm.inference:8000/v1".into()),
        _ => None,
    }
}

fn import(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    match litellm::convert(&name, &text, &env) {
        Ok(out) => out,
        Err(e) => format!("error: {e}\n"),
    }
}

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 10, "fixtures missing: {v:?}");
    v
}

#[test]
fn every_fixture_imports_to_its_golden_output() {
    let update = std::env::var_os("LLMESH_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for path in fixtures() {
        let got = import(&path);
        let expected_path = dir().join("expected").join(path.file_name().unwrap());
        if update {
            std::fs::create_dir_all(expected_path.parent().unwrap()).unwrap();
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}: the import changed (LLMESH_UPDATE_GOLDEN=1 rewrites the expected file; review the diff):\n{got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_expected_file_has_its_fixture() {
    let names: Vec<_> = fixtures()
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    for e in std::fs::read_dir(dir().join("expected")).unwrap() {
        let name = e.unwrap().file_name();
        assert!(names.contains(&name), "stale expected file {name:?}");
    }
}

/// Every value in the config that is a key or password written out (not `os.environ/...`).
fn literal_secrets(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let k = k.to_ascii_lowercase();
                let secretish = ["key", "password", "secret", "token", "database_url"]
                    .iter()
                    .any(|w| k.contains(w));
                match v {
                    serde_json::Value::String(s)
                        if secretish
                            && !s.starts_with("os.environ/")
                            && s.len() >= 4
                            && !s.eq_ignore_ascii_case("none") =>
                    {
                        out.push(s.clone())
                    }
                    _ => literal_secrets(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| literal_secrets(v, out)),
        _ => {}
    }
}

#[test]
fn every_import_loads_and_copies_no_secret() {
    let mut loaded = 0;
    for path in fixtures() {
        let text = std::fs::read_to_string(&path).unwrap();
        let out = import(&path);
        let config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let mut secrets = Vec::new();
        literal_secrets(&config, &mut secrets);
        if let Some(env) = config
            .get("environment_variables")
            .and_then(|e| e.as_object())
        {
            secrets.extend(
                env.values()
                    .filter_map(|v| v.as_str())
                    .filter(|s| !s.starts_with("http"))
                    .map(str::to_string),
            );
        }
        for s in &secrets {
            assert!(
                !out.contains(s.as_str()),
                "{}: the literal secret {s:?} is in the output",
                path.display()
            );
        }
        if out.starts_with("error: ") {
            continue;
        }
        // Load it as the sidecar does, with every key variable the header names exported.
        let manifests = manifest::parse("imported", &out, false)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let vars: HashMap<String, String> = manifests
            .iter()
            .filter_map(|m| match m {
                Manifest::Route { spec, .. } => Some(spec),
                _ => None,
            })
            .flat_map(|s| s.backends.iter())
            .filter_map(|b| b.secret_ref.as_ref())
            .map(|r| (r.env_var(), "sk-test".to_string()))
            .collect();
        for var in vars.keys() {
            assert!(
                out.lines().next().is_some() && out.contains(var.as_str()),
                "{}: {var} is not named in the output",
                path.display()
            );
        }
        let (snap, _) = manifest::compile("imported", &manifests, &LocalSecrets::new(&[], vars))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!snap.routes.is_empty());
        loaded += 1;
    }
    assert!(loaded >= 8, "only {loaded} fixtures imported");
}
