//! The config compiler: YAML manifests (`manifest::parse`) compiled into a snapshot
//! (`manifest::compile`). Properties: a file either compiles or its error names a field (a
//! document's field path, or each of an object's field errors); a compiled snapshot survives
//! its JSON encoding and has a stable content version; no message shows a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_api::compile::content_version;
use llmesh_api::manifest::{self, ConfigError, LocalSecrets};
use llmesh_api::snapshot::Snapshot;
use llmesh_fuzz::{KEY, no_key};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let checked = |e: ConfigError| {
        match &e {
            ConfigError::Yaml { message, .. } | ConfigError::Empty { message, .. } => {
                assert!(!message.is_empty(), "{e}");
            }
            ConfigError::Document { field, message, .. } => {
                assert!(!field.is_empty() && !message.is_empty(), "{e}");
            }
            ConfigError::Compile { error, .. } => {
                assert!(!error.errors.is_empty(), "{e}");
                for f in &error.errors {
                    assert!(!f.field.is_empty() && !f.message.is_empty(), "{e}");
                }
            }
        }
        no_key("a config error", e.to_string().as_bytes());
    };
    let manifests = match manifest::parse("fuzz.yaml", text, true) {
        Ok(m) => m,
        Err(e) => return checked(e),
    };
    let env = [
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "OPENAI_KEY",
        "KEYS_API_KEY",
    ]
    .map(|v| (v.to_string(), KEY.to_string()));
    let secrets = LocalSecrets::new(&manifests, env);
    match manifest::compile("fuzz.yaml", &manifests, &secrets) {
        Ok((snapshot, warnings)) => {
            for w in &warnings {
                no_key("a warning", w.as_bytes());
            }
            let json = serde_json::to_vec(&snapshot).unwrap();
            let back: Snapshot = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, snapshot);
            assert_eq!(content_version(&back), content_version(&snapshot));
        }
        Err(e) => checked(e),
    }
});
