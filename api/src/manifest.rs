//! The standalone config file: the very `LLMRoute` and `LLMBudget` manifests one would
//! `kubectl apply`, as multi-document YAML (or a `kind: List`), compiled by [`crate::compile`].

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::API_VERSION;
use crate::budget::LLMBudgetSpec;
use crate::compile::{self, CompiledRoute, FieldError, ObjectError, SecretSource};
use crate::route::{LLMRouteSpec, SecretKeyRef};
use crate::snapshot::Snapshot;

/// A parsed manifest of one of the kinds llmesh reads.
#[derive(Clone, Debug)]
pub enum Manifest {
    /// An `LLMRoute`.
    Route {
        /// metadata.namespace (default `default`).
        namespace: String,
        /// metadata.name.
        name: String,
        /// The spec.
        spec: Box<LLMRouteSpec>,
    },
    /// An `LLMBudget`.
    Budget {
        /// metadata.namespace (default `default`).
        namespace: String,
        /// metadata.name.
        name: String,
        /// The spec.
        spec: Box<LLMBudgetSpec>,
    },
    /// A `v1` `Secret` (only from a secrets file).
    Secret {
        /// metadata.namespace (default `default`).
        namespace: String,
        /// metadata.name.
        name: String,
        /// Decoded data and stringData.
        data: HashMap<String, String>,
    },
}

/// A problem with a config file, naming the document and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML itself is malformed.
    #[error("{source_name}: not valid YAML: {message}")]
    Yaml {
        /// File name.
        source_name: String,
        /// Parser message with line and column.
        message: String,
    },
    /// A document has the wrong shape.
    #[error("{source_name}: document {doc} ({what}): {field}: {message}")]
    Document {
        /// File name.
        source_name: String,
        /// 1-based document index.
        doc: usize,
        /// `LLMRoute default/chat` or the kind.
        what: String,
        /// Field path.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The specs are well-formed but do not compile.
    #[error("{source_name}: {error}")]
    Compile {
        /// File name.
        source_name: String,
        /// The compiler's error.
        error: ObjectError,
    },
}

/// Reads every document of a YAML file into manifests. `allow_secrets` is false for the routes
/// file: keys are never written next to routes.
pub fn parse(
    source_name: &str,
    text: &str,
    allow_secrets: bool,
) -> Result<Vec<Manifest>, ConfigError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ConfigError::Yaml {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut n = 0;
    for doc in docs {
        if doc.is_null() {
            continue;
        }
        n += 1;
        let items = if doc.get("kind").and_then(Value::as_str) == Some("List") {
            doc.get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        } else {
            vec![doc]
        };
        for item in items {
            out.push(parse_one(source_name, n, item, allow_secrets)?);
        }
    }
    Ok(out)
}

fn parse_one(
    source_name: &str,
    doc: usize,
    v: Value,
    allow_secrets: bool,
) -> Result<Manifest, ConfigError> {
    let err = |what: &str, field: &str, message: String| ConfigError::Document {
        source_name: source_name.to_string(),
        doc,
        what: what.to_string(),
        field: field.to_string(),
        message,
    };
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let api_version = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let namespace = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let what = format!("{kind} {namespace}/{name}");
    match kind.as_str() {
        "LLMRoute" | "LLMBudget" => {
            if api_version != API_VERSION {
                return Err(err(
                    &what,
                    "apiVersion",
                    format!("`{api_version}` is not served: use `{API_VERSION}`"),
                ));
            }
        }
        "Secret" => {
            if !allow_secrets {
                return Err(err(
                    &what,
                    "kind",
                    "API keys do not belong in the routes file: put Secret manifests in a file passed with --secrets, or export the key as an environment variable".into(),
                ));
            }
        }
        "" => {
            return Err(err(
                "?",
                "kind",
                "missing: every document needs `kind: LLMRoute` or `kind: LLMBudget`".into(),
            ));
        }
        other => {
            return Err(err(
                other,
                "kind",
                format!(
                    "`{other}` is not something llmesh reads: use LLMRoute or LLMBudget (and Secret in --secrets files)"
                ),
            ));
        }
    }
    if name.is_empty() {
        return Err(err(
            &what,
            "metadata.name",
            "missing: every object needs a name".into(),
        ));
    }
    match kind.as_str() {
        "LLMRoute" => Ok(Manifest::Route {
            spec: typed(v.get("spec")).map_err(|(f, m)| err(&what, &f, m))?,
            namespace,
            name,
        }),
        "LLMBudget" => Ok(Manifest::Budget {
            spec: typed(v.get("spec")).map_err(|(f, m)| err(&what, &f, m))?,
            namespace,
            name,
        }),
        _ => {
            let mut data = HashMap::new();
            if let Some(map) = v.get("stringData").and_then(Value::as_object) {
                for (k, val) in map {
                    data.insert(k.clone(), val.as_str().unwrap_or_default().to_string());
                }
            }
            if let Some(map) = v.get("data").and_then(Value::as_object) {
                for (k, val) in map {
                    let decoded = val
                        .as_str()
                        .and_then(base64_decode)
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| {
                            err(
                                &what,
                                &format!("data.{k}"),
                                "not base64 of UTF-8 text".into(),
                            )
                        })?;
                    data.entry(k.clone()).or_insert(decoded);
                }
            }
            Ok(Manifest::Secret {
                namespace,
                name,
                data,
            })
        }
    }
}

fn typed<T: for<'de> Deserialize<'de>>(spec: Option<&Value>) -> Result<Box<T>, (String, String)> {
    let Some(spec) = spec else {
        return Err(("spec".into(), "missing".into()));
    };
    serde_path_to_error::deserialize::<_, T>(spec)
        .map(Box::new)
        .map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            (field, e.into_inner().to_string())
        })
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

/// Standalone secrets: Secret manifests from `--secrets` files first, then the environment
/// (`{name: openai, key: api-key}` -> `OPENAI_API_KEY`).
#[derive(Default, Clone)]
pub struct LocalSecrets {
    manifests: HashMap<(String, String), HashMap<String, String>>,
    env: HashMap<String, String>,
}

impl std::fmt::Debug for LocalSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSecrets")
            .field("secrets", &self.manifests.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl LocalSecrets {
    /// Secrets from the given manifests and environment variables.
    pub fn new(manifests: &[Manifest], env: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut s = Self {
            env: env.into_iter().collect(),
            ..Self::default()
        };
        for m in manifests {
            if let Manifest::Secret {
                namespace,
                name,
                data,
            } = m
            {
                s.manifests
                    .insert((namespace.clone(), name.clone()), data.clone());
            }
        }
        s
    }
}

impl SecretSource for LocalSecrets {
    fn get(&self, namespace: &str, r: &SecretKeyRef) -> Result<String, String> {
        if let Some(data) = self.manifests.get(&(namespace.to_string(), r.name.clone())) {
            return data.get(&r.key).cloned().ok_or_else(|| {
                format!(
                    "Secret {namespace}/{} has no key `{}`: add it to the secrets file",
                    r.name, r.key
                )
            });
        }
        let var = r.env_var();
        self.env.get(&var).cloned().ok_or_else(|| {
            format!(
                "secret `{}` key `{}` not found: export {var}=<your key>, or pass a Secret manifest named `{}` with --secrets",
                r.name, r.key, r.name
            )
        })
    }
}

/// Compiles manifests into a snapshot, returning the warnings too. Any invalid object fails the
/// whole file: a standalone sidecar keeps its last good config instead.
pub fn compile(
    source_name: &str,
    manifests: &[Manifest],
    secrets: &dyn SecretSource,
) -> Result<(Snapshot, Vec<String>), ConfigError> {
    let wrap = |error: ObjectError| ConfigError::Compile {
        source_name: source_name.to_string(),
        error,
    };
    let mut routes = Vec::new();
    let mut budgets = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = HashMap::new();
    for m in manifests {
        match m {
            Manifest::Route {
                namespace,
                name,
                spec,
            } => {
                if seen
                    .insert(("LLMRoute", namespace.clone(), name.clone()), ())
                    .is_some()
                {
                    return Err(wrap(duplicate("LLMRoute", namespace, name)));
                }
                let CompiledRoute { route, warnings: w } =
                    compile::compile_route(namespace, name, spec, secrets).map_err(wrap)?;
                warnings.extend(
                    w.into_iter()
                        .map(|w| format!("LLMRoute {namespace}/{name}: {w}")),
                );
                routes.push(route);
            }
            Manifest::Budget {
                namespace,
                name,
                spec,
            } => {
                if seen
                    .insert(("LLMBudget", namespace.clone(), name.clone()), ())
                    .is_some()
                {
                    return Err(wrap(duplicate("LLMBudget", namespace, name)));
                }
                budgets.push(compile::compile_budget(namespace, name, spec).map_err(wrap)?);
            }
            Manifest::Secret { .. } => {}
        }
    }
    let snapshot = compile::assemble(routes, budgets).map_err(wrap)?;
    Ok((snapshot, warnings))
}

fn duplicate(kind: &'static str, namespace: &str, name: &str) -> ObjectError {
    ObjectError {
        kind,
        object: format!("{namespace}/{name}"),
        errors: vec![FieldError {
            field: "metadata.name".into(),
            message: "defined twice in the file: names must be unique per kind and namespace"
                .into(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata:
  name: chat
spec:
  backends:
    - name: primary
      provider: openai
      model: gpt-4o-mini-2024-07-18
      secretRef: {name: openai, key: api-key}
      weight: 90
    - name: canary
      provider: mock
      model: gpt-4o
      weight: 10
---
apiVersion: llmesh.io/v1alpha1
kind: LLMBudget
metadata:
  name: team
spec:
  limit: {usd: "25.00"}
  period: day
"#;

    fn env() -> Vec<(String, String)> {
        vec![("OPENAI_API_KEY".into(), "sk-test".into())]
    }

    #[test]
    fn compiles_a_multi_document_file() {
        let m = parse("routes.yaml", FILE, false).unwrap();
        let (snap, _) = compile("routes.yaml", &m, &LocalSecrets::new(&[], env())).unwrap();
        assert_eq!(snap.routes.len(), 1);
        let r = &snap.routes[0];
        assert_eq!(
            (r.namespace.as_str(), r.model.as_str()),
            ("default", "chat")
        );
        assert_eq!(r.backends[0].api_key.as_ref().unwrap().expose(), "sk-test");
        assert_eq!(r.backends[0].weight, 90);
        assert_eq!(snap.budgets[0].limit_usd, Some(25_000_000));
        assert!(!snap.version.is_empty());
    }

    #[test]
    fn a_wrong_type_names_the_document_and_field() {
        let bad = FILE.replace("weight: 90", "weight: ninety");
        let e = parse("routes.yaml", &bad, false).unwrap_err().to_string();
        assert!(
            e.contains("routes.yaml: document 1 (LLMRoute default/chat): spec.backends[0].weight"),
            "{e}"
        );
    }

    #[test]
    fn a_typo_in_a_field_name_is_refused() {
        let bad = FILE.replace("secretRef:", "secretRefs:");
        let e = parse("routes.yaml", &bad, false).unwrap_err().to_string();
        assert!(
            e.contains("spec.backends[0]") && e.contains("secretRefs"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_key_says_which_variable_to_export() {
        let m = parse("routes.yaml", FILE, false).unwrap();
        let e = compile("routes.yaml", &m, &LocalSecrets::new(&[], vec![]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.backends[0].secretRef") && e.contains("export OPENAI_API_KEY"),
            "{e}"
        );
        assert!(!e.contains("sk-"), "{e}");
    }

    #[test]
    fn secrets_come_from_manifests_before_the_environment() {
        let secrets = parse(
            "secrets.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: openai}\ndata:\n  api-key: c2stZnJvbS1maWxl\n",
            true,
        )
        .unwrap();
        let m = parse("routes.yaml", FILE, false).unwrap();
        let (snap, _) = compile("routes.yaml", &m, &LocalSecrets::new(&secrets, env())).unwrap();
        assert_eq!(
            snap.routes[0].backends[0]
                .api_key
                .as_ref()
                .unwrap()
                .expose(),
            "sk-from-file"
        );
    }

    #[test]
    fn secrets_are_refused_in_the_routes_file() {
        let text = format!(
            "{FILE}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: openai}}\nstringData: {{api-key: x}}\n"
        );
        let e = parse("routes.yaml", &text, false).unwrap_err().to_string();
        assert!(e.contains("--secrets"), "{e}");
    }

    #[test]
    fn wrong_kind_and_api_version_are_explained() {
        let e = parse(
            "f",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("LLMRoute or LLMBudget"), "{e}");
        let e = parse(
            "f",
            &FILE.replace("llmesh.io/v1alpha1", "llmesh.io/v1"),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("apiVersion") && e.contains("llmesh.io/v1alpha1"),
            "{e}"
        );
    }

    #[test]
    fn broken_yaml_reports_a_location() {
        let e = parse("f", "kind: LLMRoute\n  bad: [", false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f: not valid YAML"), "{e}");
    }
}
