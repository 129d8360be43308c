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
    /// The file holds no document llmesh reads: empty, only comments, or only `---`. Editors
    /// and shell redirections truncate a file before writing it, so a reload that read it
    /// then would otherwise drop every route.
    #[error("{source_name}: {message}")]
    Empty {
        /// File name.
        source_name: String,
        /// What is missing and what to do.
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
///
/// A file with no manifest at all is refused ([`ConfigError::Empty`]): it is what a reload
/// reads while an editor or `>` has truncated the file and not yet written it again.
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
    for (raw_index, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        n += 1;
        let list = doc.get("kind").and_then(Value::as_str) == Some("List");
        let items = if list {
            doc.get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        } else {
            vec![doc]
        };
        for (i, item) in items.into_iter().enumerate() {
            let at = Doc {
                source_name,
                text,
                number: n,
                raw_index,
                item: list.then_some(i),
            };
            out.push(parse_one(&at, item, allow_secrets)?);
        }
    }
    if out.is_empty() {
        let message = if allow_secrets {
            "holds no Secret manifest (the file is empty or only comments): write the Secrets into it, or drop the --secrets flag that names it"
        } else {
            "holds no LLMRoute or LLMBudget (the file is empty or only comments), so nothing would be served: \
             write at least one LLMRoute into it (see examples/). A running sidecar keeps serving its last good config \
             and loads the file again once it holds one"
        };
        return Err(ConfigError::Empty {
            source_name: source_name.to_string(),
            message: message.to_string(),
        });
    }
    Ok(out)
}

/// Where a manifest sits: the file, its 1-based document number, and (to find a scalar's
/// spelling again) the document's index among all documents and its index in a `kind: List`.
struct Doc<'a> {
    source_name: &'a str,
    text: &'a str,
    number: usize,
    raw_index: usize,
    item: Option<usize>,
}

impl Doc<'_> {
    /// The value at `path` under this manifest, read again with YAML 1.2 booleans: there,
    /// unquoted `no`, `off` or `yes` stay the words the user wrote.
    fn as_written(&self, path: &[&str]) -> Option<Value> {
        let mut options = serde_saphyr::Options::default();
        options.strict_booleans = true;
        let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(self.text, options).ok()?;
        let mut v = docs.into_iter().nth(self.raw_index)?;
        if let Some(i) = self.item {
            v = v.get_mut("items")?.get_mut(i)?.take();
        }
        for p in path {
            v = match v {
                Value::Array(mut a) => {
                    let i: usize = p.parse().ok()?;
                    (i < a.len()).then(|| a.swap_remove(i))?
                }
                Value::Object(mut m) => m.remove(*p)?,
                _ => return None,
            };
        }
        Some(v)
    }

    /// The message for a YAML boolean or number given where text is expected: YAML 1.1 reads
    /// unquoted `no`, `off`, `yes` and `on` as booleans (as `kubectl` does), so the fix is quotes.
    fn quote_hint(&self, path: &[&str], found: &Value) -> Option<String> {
        let what = match found {
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            _ => return None,
        };
        let written = match self.as_written(path) {
            Some(Value::String(s)) => s,
            Some(v @ (Value::Bool(_) | Value::Number(_))) => v.to_string(),
            _ => found.to_string(),
        };
        let example = match path.last() {
            Some(key) if key.parse::<usize>().is_err() => format!("{key}: \"{written}\""),
            _ => format!("- \"{written}\""),
        };
        Some(format!(
            "YAML reads the unquoted `{written}` as {what}, but this field is text: quote it, like `{example}`"
        ))
    }
}

fn parse_one(at: &Doc<'_>, v: Value, allow_secrets: bool) -> Result<Manifest, ConfigError> {
    let err = |what: &str, field: &str, message: String| ConfigError::Document {
        source_name: at.source_name.to_string(),
        doc: at.number,
        what: what.to_string(),
        field: field.to_string(),
        message,
    };
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    for key in ["name", "namespace"] {
        if let Some(found) = v.get("metadata").and_then(|m| m.get(key))
            && let Some(hint) = at.quote_hint(&["metadata", key], found)
        {
            return Err(err(&kind, &format!("metadata.{key}"), hint));
        }
    }
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
    let what = format!(
        "{kind} {}/{}",
        namespace.escape_debug(),
        name.escape_debug()
    );
    match kind.as_str() {
        "LLMRoute" | "LLMBudget" => {
            if api_version != API_VERSION {
                return Err(err(
                    &what,
                    "apiVersion",
                    format!(
                        "`{}` is not served: use `{API_VERSION}`",
                        api_version.escape_debug()
                    ),
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
            let other = other.escape_debug().to_string();
            return Err(err(
                &other,
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
            spec: typed(at, v.get("spec")).map_err(|(f, m)| err(&what, &f, m))?,
            namespace,
            name,
        }),
        "LLMBudget" => Ok(Manifest::Budget {
            spec: typed(at, v.get("spec")).map_err(|(f, m)| err(&what, &f, m))?,
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

fn typed<T: for<'de> Deserialize<'de>>(
    at: &Doc<'_>,
    spec: Option<&Value>,
) -> Result<Box<T>, (String, String)> {
    use serde_path_to_error::Segment;
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
            let steps: Option<Vec<String>> = e
                .path()
                .iter()
                .map(|s| match s {
                    Segment::Seq { index } => Some(index.to_string()),
                    Segment::Map { key } => Some(key.clone()),
                    _ => None,
                })
                .collect();
            let message = e.into_inner().to_string();
            let hint = steps
                .filter(|_| message.ends_with("expected a string"))
                .and_then(|steps| {
                    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
                    let found = steps.iter().try_fold(spec, |v, p| match v {
                        Value::Array(a) => a.get(p.parse::<usize>().ok()?),
                        Value::Object(m) => m.get(*p),
                        _ => None,
                    })?;
                    let full: Vec<&str> = std::iter::once("spec").chain(steps).collect();
                    at.quote_hint(&full, found)
                });
            (field, hint.unwrap_or(message))
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
    fn a_file_with_no_manifest_is_refused() {
        // What a reload reads while an editor or `>` has truncated the file.
        for text in [
            "",
            "\n  \n",
            "# routes for the team\n",
            "---\n---\n",
            "apiVersion: v1\nkind: List\nitems: []\n",
        ] {
            let e = parse("routes.yaml", text, false).unwrap_err();
            assert!(matches!(e, ConfigError::Empty { .. }), "{text:?}: {e}");
            let e = e.to_string();
            assert!(
                e.starts_with("routes.yaml: holds no LLMRoute or LLMBudget")
                    && e.contains("last good config"),
                "{e}"
            );
        }
        let e = parse("secrets.yaml", "", true).unwrap_err().to_string();
        assert!(e.contains("holds no Secret manifest"), "{e}");
    }

    #[test]
    fn a_yaml_boolean_or_number_where_text_belongs_asks_for_quotes() {
        for (from, to, field, hint) in [
            (
                "  backends:",
                "  model: no\n  backends:",
                "spec.model",
                "the unquoted `no` as a boolean, but this field is text: quote it, like `model: \"no\"`",
            ),
            (
                "  backends:",
                "  model: 'off'\n  aliases: [yes]\n  backends:",
                "spec.aliases[0]",
                "the unquoted `yes` as a boolean, but this field is text: quote it, like `- \"yes\"`",
            ),
            (
                "gpt-4o\n",
                "4\n",
                "spec.backends[1].model",
                "the unquoted `4` as a number",
            ),
            (
                "name: chat",
                "name: on",
                "metadata.name",
                "`on` as a boolean",
            ),
        ] {
            let bad = FILE.replacen(from, to, 1);
            let e = parse("routes.yaml", &bad, false).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{field}: YAML reads")) && e.contains(hint),
                "{e}"
            );
        }
        // Quoted, the same words are text.
        let good = FILE.replacen("  backends:", "  model: \"no\"\n  backends:", 1);
        let m = parse("routes.yaml", &good, false).unwrap();
        let (snap, _) = compile("routes.yaml", &m, &LocalSecrets::new(&[], env())).unwrap();
        assert_eq!(snap.routes[0].model, "no");
        // A boolean where a boolean belongs is still one.
        let flag = FILE.replacen("  backends:", "  allowModelPinning: yes\n  backends:", 1);
        assert!(parse("routes.yaml", &flag, false).is_ok());
    }

    #[test]
    fn control_characters_in_names_are_refused_at_compile_time() {
        for (from, to, field) in [
            ("name: chat", "name: \"chat\\r\\n\"", "metadata.name"),
            (
                "  backends:",
                "  model: \"chat\\u0000\"\n  backends:",
                "spec.model",
            ),
            (
                "  backends:",
                "  aliases: [\"\"]\n  backends:",
                "spec.aliases[0]",
            ),
            (
                "model: gpt-4o\n",
                "model: \"gpt-4o\\r\\nX-Injected: 1\"\n",
                "spec.backends[1].model",
            ),
        ] {
            let bad = FILE.replacen(from, to, 1);
            let m = parse("routes.yaml", &bad, false).unwrap();
            let e = compile("routes.yaml", &m, &LocalSecrets::new(&[], env()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{field}: ")), "{field}: {e}");
            assert!(
                !e.contains('\r') && !e.contains('\n') && !e.contains('\0'),
                "{e:?}"
            );
        }
    }

    #[test]
    fn broken_yaml_reports_a_location() {
        let e = parse("f", "kind: LLMRoute\n  bad: [", false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f: not valid YAML"), "{e}");
    }
}
