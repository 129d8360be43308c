//! Provider keys from Kubernetes Secrets, with little memory and little exposure: the operator
//! watches Secret *metadata* only (names and resourceVersions), GETs the data of a Secret only
//! when a route references it and its resourceVersion changed, keeps only the referenced keys,
//! and forgets Secrets no route references any more. Values never reach a log line or an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::Client;
use llmesh_api::compile::SecretSource;
use llmesh_api::route::SecretKeyRef;
use parking_lot::Mutex;

/// `(namespace, name)` of a Secret.
pub type SecretKey = (String, String);

/// A Secret a route needs: where it is, the resourceVersion the metadata watch saw, and keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// Namespace and name.
    pub key: SecretKey,
    /// resourceVersion from the metadata watch.
    pub resource_version: String,
    /// The keys routes read from it.
    pub keys: BTreeSet<String>,
}

#[derive(Clone)]
enum Fetched {
    Data {
        resource_version: String,
        keys: BTreeSet<String>,
        values: BTreeMap<String, String>,
    },
    Failed {
        resource_version: String,
        message: String,
    },
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Data {
                resource_version,
                keys,
                ..
            } => write!(
                f,
                "Data(rv={resource_version}, keys={keys:?}, values=<redacted>)"
            ),
            Self::Failed {
                resource_version,
                message,
            } => write!(f, "Failed(rv={resource_version}, {message})"),
        }
    }
}

/// The data of referenced Secrets.
pub struct SecretCache {
    client: Client,
    fetched: Mutex<HashMap<SecretKey, Fetched>>,
}

impl SecretCache {
    /// An empty cache reading with `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            fetched: Mutex::new(HashMap::new()),
        }
    }

    /// GETs every wanted Secret whose data is not cached at its resourceVersion (with all the
    /// keys asked for), 8 at a time; forgets Secrets not wanted any more. Returns how many
    /// Secrets were read.
    pub async fn refresh(&self, wanted: &[Wanted]) -> usize {
        let stale: Vec<Wanted> = {
            let cache = self.fetched.lock();
            wanted
                .iter()
                .filter(|w| match cache.get(&w.key) {
                    Some(Fetched::Data {
                        resource_version,
                        keys,
                        ..
                    }) => *resource_version != w.resource_version || !w.keys.is_subset(keys),
                    Some(Fetched::Failed {
                        resource_version, ..
                    }) => *resource_version != w.resource_version,
                    None => true,
                })
                .cloned()
                .collect()
        };
        let n = stale.len();
        let results: Vec<(SecretKey, Fetched)> = futures::stream::iter(stale)
            .map(|w| async move {
                let fetched = self.fetch(&w).await;
                (w.key, fetched)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut cache = self.fetched.lock();
        for (key, fetched) in results {
            cache.insert(key, fetched);
        }
        let keep: BTreeSet<&SecretKey> = wanted.iter().map(|w| &w.key).collect();
        cache.retain(|k, _| keep.contains(k));
        n
    }

    async fn fetch(&self, w: &Wanted) -> Fetched {
        let (ns, name) = &w.key;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(secret)) => {
                let resource_version = secret.metadata.resource_version.clone().unwrap_or_default();
                let mut values = BTreeMap::new();
                for key in &w.keys {
                    let raw = secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|b| b.0.clone())
                        .or_else(|| {
                            secret
                                .string_data
                                .as_ref()
                                .and_then(|d| d.get(key))
                                .map(|s| s.clone().into_bytes())
                        });
                    if let Some(bytes) = raw
                        && let Ok(text) = String::from_utf8(bytes)
                    {
                        values.insert(key.clone(), text);
                    }
                }
                Fetched::Data {
                    resource_version,
                    keys: w.keys.clone(),
                    values,
                }
            }
            Ok(None) => Fetched::Failed {
                resource_version: w.resource_version.clone(),
                message: not_found(ns, name),
            },
            Err(e) => Fetched::Failed {
                resource_version: w.resource_version.clone(),
                message: format!(
                    "the operator cannot read Secret {ns}/{name} ({}): check its RBAC (get secrets)",
                    api_reason(&e)
                ),
            },
        }
    }

    /// A [`SecretSource`] over the cache. `exists(ns, name)` says whether the metadata watch
    /// knows the Secret, so a deleted Secret is missing even while its data is still cached,
    /// or why the operator cannot know (a namespace outside `--secret-namespaces`).
    pub fn source<'a>(&'a self, exists: &'a Exists<'a>) -> CachedSource<'a> {
        CachedSource {
            cache: self.fetched.lock(),
            exists,
        }
    }

    /// How many Secrets' data are held.
    pub fn len(&self) -> usize {
        self.fetched.lock().len()
    }

    /// Whether no Secret data is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Status code and reason of an API error, without its body (which could echo a request).
fn api_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
        _ => "connection error".into(),
    }
}

fn not_found(ns: &str, name: &str) -> String {
    format!(
        "Secret {ns}/{name} not found: create it with `kubectl create secret generic {name} -n {ns} --from-literal=api-key=<your key>`"
    )
}

/// Whether Secret `(ns, name)` exists, or why the operator cannot know.
pub type Exists<'a> = dyn Fn(&str, &str) -> Result<bool, String> + 'a;

/// Reads keys from the cache, locked for one compile pass.
pub struct CachedSource<'a> {
    cache: parking_lot::MutexGuard<'a, HashMap<SecretKey, Fetched>>,
    exists: &'a Exists<'a>,
}

impl SecretSource for CachedSource<'_> {
    fn get(&self, namespace: &str, r: &SecretKeyRef) -> Result<String, String> {
        if !(self.exists)(namespace, &r.name)? {
            return Err(not_found(namespace, &r.name));
        }
        match self.cache.get(&(namespace.to_string(), r.name.clone())) {
            Some(Fetched::Data { values, .. }) => values.get(&r.key).cloned().ok_or_else(|| {
                format!(
                    "Secret {namespace}/{} has no key `{}`: add it with `kubectl patch secret {} -n {namespace} --type merge -p '{{\"stringData\":{{\"{}\":\"<your key>\"}}}}'` or fix secretRef.key",
                    r.name, r.key, r.name, r.key
                )
            }),
            Some(Fetched::Failed { message, .. }) => Err(message.clone()),
            None => Err(format!(
                "Secret {namespace}/{} has not been read yet; the operator retries",
                r.name
            )),
        }
    }
}
