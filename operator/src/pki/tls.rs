//! The serving certificate for the config server and the webhook, from one of two sources:
//!
//! - [`Source::Secret`] (the default): the operator's own CA and certificate, created on first
//!   start, kept in a Secret in the operator's namespace so every replica serves the same one,
//!   renewed before it expires (or when it lacks a name), and its CA written into the
//!   MutatingWebhookConfiguration's `caBundle` by the leader.
//! - [`Source::Dir`] (`--tls-cert-dir`): `tls.crt`, `tls.key` and `ca.crt` in a directory that
//!   another issuer keeps, such as a cert-manager Certificate's Secret mounted into the pod. The
//!   operator makes no CA and leaves the `caBundle` to that issuer's CA injector; it re-reads the
//!   files every check interval and serves a renewed certificate as soon as it appears.
//!
//! Either way the certificate is hot-swapped into the TLS listener, and the CA is what the
//! webhook hands injected sidecars.
//!
//! The Secret is written with create / replace-with-resourceVersion rather than server-side
//! apply: replicas race to create and renew it, and compare-and-swap makes exactly one win.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use arc_swap::ArcSwap;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::pki::certs::{self, Bundle};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "llmesh-operator";

/// Hands the current certificate to each TLS handshake.
#[derive(Debug)]
pub struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn certified_key(b: &Bundle) -> Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(b.cert.as_bytes())
        .collect::<Result<_, _>>()
        .context("reading tls.crt")?;
    let key = PrivateKeyDer::from_pem_slice(b.key.as_bytes()).context("reading tls.key")?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key).context("loading tls.key")?;
    let certified = CertifiedKey::new(chain, key);
    // Files read while their issuer swaps them could pair an old key with a new certificate.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        bail!("tls.key does not belong to tls.crt");
    }
    Ok(certified)
}

/// Where the serving certificate lives and what it must cover.
pub struct Params {
    /// Client with the operator's RBAC.
    pub client: Client,
    /// The operator's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// DNS names and IPs the certificate must cover.
    pub names: BTreeSet<String>,
    /// Lifetime of a serving certificate.
    pub validity: Duration,
    /// The MutatingWebhookConfiguration whose `caBundle` the leader keeps (None: none).
    pub webhook_config: Option<String>,
}

/// Where the serving certificate comes from.
pub enum Source {
    /// The operator's own CA, kept in a Secret.
    Secret(Params),
    /// `tls.crt`, `tls.key` and `ca.crt` in this directory, kept by another issuer.
    Dir(PathBuf),
}

impl Source {
    /// The bundle to serve now (making or renewing it, for [`Source::Secret`]).
    async fn sync(&self) -> Result<Bundle> {
        match self {
            Self::Secret(params) => params.sync().await,
            Self::Dir(dir) => read_dir_bundle(dir).await,
        }
    }
}

/// The certificate, key and CA in `dir`, as a cert-manager Certificate's Secret mounted there
/// has them. The CA key is not there (nor needed): the operator issues nothing in this mode.
async fn read_dir_bundle(dir: &std::path::Path) -> Result<Bundle> {
    let read = |name: &'static str| {
        let path = dir.join(name);
        async move {
            let text = tokio::fs::read_to_string(&path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            if text.trim().is_empty() {
                bail!("{} is empty", path.display());
            }
            Ok::<_, anyhow::Error>(text)
        }
    };
    Ok(Bundle {
        ca_cert: read(CA_CERT).await?,
        ca_key: String::new(),
        cert: read(TLS_CERT).await?,
        key: read(TLS_KEY).await?,
    })
}

/// Keeps the serving certificate.
pub struct TlsManager {
    source: Source,
    metrics: Arc<Metrics>,
    resolver: Arc<Resolver>,
    current: Mutex<Bundle>,
}

impl TlsManager {
    /// Loads the certificate (for [`Source::Secret`], creating or renewing it as needed) and
    /// returns a manager serving it.
    pub async fn start(source: Source, metrics: Arc<Metrics>) -> Result<Arc<Self>> {
        let bundle = source.sync().await?;
        let this = Self {
            resolver: Arc::new(Resolver(ArcSwap::from_pointee(certified_key(&bundle)?))),
            current: Mutex::new(bundle.clone()),
            source,
            metrics,
        };
        this.install(bundle)?;
        Ok(Arc::new(this))
    }

    /// The resolver for the TLS listener.
    pub fn resolver(&self) -> Arc<Resolver> {
        self.resolver.clone()
    }

    /// The CA certificate (PEM) sidecars and the API server trust.
    pub fn ca_pem(&self) -> String {
        self.current.lock().ca_cert.clone()
    }

    fn install(&self, bundle: Bundle) -> Result<()> {
        let key = certified_key(&bundle)?;
        if let Ok(f) = certs::facts(&bundle.cert) {
            self.metrics.cert_expiry.set(f.not_after.unix_timestamp());
        }
        self.resolver.0.store(Arc::new(key));
        *self.current.lock() = bundle;
        Ok(())
    }

    /// Every `period`: picks up a certificate another replica (or the issuer keeping the
    /// directory) renewed, renews it when due, and (as leader, with the operator's own CA)
    /// keeps the webhook's `caBundle` equal to the CA.
    pub async fn maintain(self: Arc<Self>, period: Duration, mut leader: watch::Receiver<bool>) {
        loop {
            let mut retry_soon = false;
            match self.source.sync().await {
                Ok(bundle) => {
                    if *self.current.lock() != bundle {
                        tracing::info!("serving a renewed certificate");
                        if let Err(e) = self.install(bundle) {
                            tracing::error!(error = %e, "cannot load the renewed certificate; keeping the old one");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "checking the serving certificate failed; retrying");
                }
            }
            // Applied every period, not only on change: a chart upgrade may reset the field,
            // and an unchanged server-side apply is a no-op.
            let leading = *leader.borrow();
            if leading && let Err(e) = self.patch_ca_bundle(&self.ca_pem()).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot set the webhook caBundle; retrying");
                retry_soon = true;
            }
            let wait = if retry_soon {
                period.min(Duration::from_secs(5))
            } else {
                period
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = leader.changed() => {}
            }
        }
    }

    /// Server-side applies the CA as the `caBundle` of every webhook in the configuration.
    async fn patch_ca_bundle(&self, ca: &str) -> Result<()> {
        // With certificates from a directory, the issuer's CA injector keeps the caBundle.
        let Source::Secret(params) = &self.source else {
            return Ok(());
        };
        let Some(name) = &params.webhook_config else {
            return Ok(());
        };
        let api: Api<MutatingWebhookConfiguration> = Api::all(params.client.clone());
        let Some(config) = api
            .get_opt(name)
            .await
            .context("reading the webhook configuration")?
        else {
            tracing::info!(config = %name, "no MutatingWebhookConfiguration yet; injection is off until it exists");
            bail!("MutatingWebhookConfiguration {name} not found");
        };
        let bundle = ByteString(ca.as_bytes().to_vec());
        let webhooks: Vec<serde_json::Value> = config
            .webhooks
            .unwrap_or_default()
            .iter()
            .map(|w| serde_json::json!({"name": w.name, "clientConfig": {"caBundle": bundle}}))
            .collect();
        let patch = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": webhooks,
        });
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .context("applying the webhook caBundle")?;
        tracing::debug!(config = %name, "webhook caBundle applied");
        Ok(())
    }
}

impl Params {
    /// Reads the Secret and makes it right: creates it when absent, replaces a broken one,
    /// renews a certificate that is expiring or lacks a name. Returns the bundle to serve.
    async fn sync(&self) -> Result<Bundle> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for _ in 0..5 {
            let now = OffsetDateTime::now_utc();
            let Some(existing) = api
                .get_opt(&self.secret)
                .await
                .with_context(|| format!("reading Secret {}/{}", self.namespace, self.secret))?
            else {
                let bundle = certs::new_bundle(&self.names, self.validity, now)?;
                match api
                    .create(&PostParams::default(), &self.secret_object(&bundle, None))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(secret = %self.secret, "created the operator CA and serving certificate");
                        return Ok(bundle);
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(e).context("creating the TLS Secret"),
                }
            };
            let rv = existing.metadata.resource_version.clone();
            let renewed = match read_bundle(&existing) {
                None => {
                    tracing::warn!(secret = %self.secret, "the TLS Secret is incomplete; replacing it with a new CA");
                    Some(certs::new_bundle(&self.names, self.validity, now)?)
                }
                Some(b) => match certs::facts(&b.cert) {
                    Err(e) => {
                        tracing::warn!(error = %e, "the stored certificate is unreadable; reissuing it");
                        let (cert, key) =
                            certs::issue(&b.ca_cert, &b.ca_key, &self.names, self.validity, now)?;
                        Some(Bundle { cert, key, ..b })
                    }
                    Ok(f) => match certs::renewal_reason(&f, &self.names, now) {
                        None => return Ok(b),
                        Some(why) => {
                            tracing::info!(reason = %why, "renewing the serving certificate");
                            // Keep the names other replicas asked for.
                            let names: BTreeSet<String> =
                                f.names.union(&self.names).cloned().collect();
                            let (cert, key) =
                                certs::issue(&b.ca_cert, &b.ca_key, &names, self.validity, now)?;
                            Some(Bundle { cert, key, ..b })
                        }
                    },
                },
            };
            let Some(bundle) = renewed else { continue };
            match api
                .replace(
                    &self.secret,
                    &PostParams::default(),
                    &self.secret_object(&bundle, rv),
                )
                .await
            {
                Ok(_) => return Ok(bundle),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e).context("replacing the TLS Secret"),
            }
        }
        bail!("the TLS Secret kept changing under us; giving up for now")
    }

    fn secret_object(&self, b: &Bundle, resource_version: Option<String>) -> Secret {
        let data: BTreeMap<String, ByteString> = [
            (CA_CERT, &b.ca_cert),
            (CA_KEY, &b.ca_key),
            (TLS_CERT, &b.cert),
            (TLS_KEY, &b.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    FIELD_MANAGER.to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

fn read_bundle(s: &Secret) -> Option<Bundle> {
    let data = s.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|v| !v.is_empty())
    };
    Some(Bundle {
        ca_cert: get(CA_CERT)?,
        ca_key: get(CA_KEY)?,
        cert: get(TLS_CERT)?,
        key: get(TLS_KEY)?,
    })
}
