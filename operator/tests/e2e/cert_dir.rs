//! `--tls-cert-dir`: the operator serves a certificate another issuer keeps (cert-manager's
//! Certificate Secret, mounted), hands sidecars that issuer's CA, picks up renewals from disk,
//! and leaves the webhook's `caBundle` to the issuer's CA injector.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use llmesh_operator::pki::certs::{self, Bundle};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use time::OffsetDateTime;

use crate::harness::{
    Env, OPERATOR_SA, Operator, apply, env, eventually, fetch_snapshot_with_ca, injected_pod_token,
    serial,
};

const WEBHOOK: &str = "llmesh-sidecar-injector";
const VALIDITY: Duration = Duration::from_secs(24 * 3600);

fn names() -> BTreeSet<String> {
    ["127.0.0.1", "llmesh-operator.llmesh-system.svc"]
        .map(String::from)
        .into()
}

/// Writes the files as a mounted Secret has them, each replaced whole (a rename), as the
/// kubelet swaps a Secret volume's contents.
fn write_certs(dir: &Path, ca: &str, cert: &str, key: &str) -> Result<()> {
    for (name, text) in [("ca.crt", ca), ("tls.crt", cert), ("tls.key", key)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

fn der(pem: &str) -> Result<Vec<u8>> {
    let first = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .context("no certificate in PEM")??;
    Ok(first.as_ref().to_vec())
}

/// The certificate the operator presents to a TLS client that trusts only `ca`.
async fn served_cert(env: &Env, ca: &str) -> Result<Vec<u8>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", env.port)).await?;
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .context("no peer certificate")?;
    Ok(chain[0].as_ref().to_vec())
}

async fn ca_bundles(env: &Env) -> Result<Vec<Option<Vec<u8>>>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(env.cp.client()?);
    let mwc = api.get(WEBHOOK).await?;
    Ok(mwc
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| w.client_config.ca_bundle.map(|b| b.0))
        .collect())
}

/// Sets every webhook's `caBundle`, as cert-manager's CA injector does, under its own field
/// manager.
async fn inject_ca_bundle(env: &Env, bundle: &str) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(env.cp.client()?);
    let mwc = api.get(WEBHOOK).await?;
    let webhooks: Vec<_> = mwc
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": k8s_openapi::ByteString(bundle.as_bytes().to_vec())}}))
        .collect();
    let patch = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": webhooks,
    });
    api.patch(
        WEBHOOK,
        &PatchParams::apply("cert-manager-cainjector").force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn env_value(p: &Pod, name: &str) -> Option<String> {
    let spec = p.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == "llmesh-sidecar")
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[tokio::test]
async fn a_mounted_certificate_is_served_renewed_from_disk_and_the_ca_bundle_is_left_alone()
-> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    let issuer: Bundle = certs::new_bundle(&names(), VALIDITY, OffsetDateTime::now_utc())?;
    let dir = tempfile::tempdir()?;
    write_certs(dir.path(), &issuer.ca_cert, &issuer.cert, &issuer.key)?;
    // The bundle the issuer's injector keeps: its CA plus another (as during a CA rotation),
    // so that the operator writing its CA there would show.
    let other_ca = certs::new_bundle(&names(), VALIDITY, OffsetDateTime::now_utc())?.ca_cert;
    let bundle = format!("{}{}", issuer.ca_cert, other_ca);
    inject_ca_bundle(env, &bundle).await?;

    let dir_arg = dir.path().to_string_lossy().into_owned();
    let mut op = Operator::start_as(
        env,
        OPERATOR_SA,
        &["--tls-cert-dir", &dir_arg, "--cert-check-interval", "200ms"],
    )
    .await?;

    // It serves the given certificate.
    assert_eq!(served_cert(env, &issuer.ca_cert).await?, der(&issuer.cert)?);

    // The API server calls the webhook trusting the injected bundle, and the sidecar is handed
    // the issuer's CA; a client trusting only that CA fetches the pod's snapshot.
    let ns = env.cp.create_namespace("certdir").await?;
    let (pod, token) = injected_pod_token(env, &ns, "web").await?;
    assert_eq!(
        env_value(&pod, "LLMESH_OPERATOR_CA_PEM").as_deref(),
        Some(issuer.ca_cert.as_str()),
        "the sidecar trusts ca.crt from the directory"
    );
    let (code, body) = eventually("snapshot", Duration::from_secs(30), || async {
        let (code, body) = fetch_snapshot_with_ca(env, &issuer.ca_cert, &token).await?;
        if code != 200 {
            bail!("{code} {body}");
        }
        Ok((code, body))
    })
    .await?;
    assert_eq!(code, 200, "{body}");

    // It leads: a route gets its status.
    let out = apply(
        env,
        &ns,
        "apiVersion: llmesh.io/v1alpha1\nkind: LLMRoute\nmetadata: {name: chat}\nspec:\n  backends: [{name: a, provider: mock, model: m}]\n",
    )
    .await?;
    assert!(
        out.status.success(),
        "{}",
        llmesh_testenv::output_text(&out)
    );
    let routes: Api<llmesh_api::LLMRoute> = Api::namespaced(env.cp.client()?, &ns);
    eventually("route status", Duration::from_secs(30), || async {
        let r = routes.get("chat").await?;
        match r.status.and_then(|s| s.observed_generation) {
            Some(1) => Ok(()),
            other => bail!("observedGeneration {other:?}"),
        }
    })
    .await?;

    // The issuer renews the certificate (same CA, new key) twice; each is served once on disk.
    // After the second is served, the check that picked up the first has run to its end as
    // leader, which with the operator's own CA is where it writes the caBundle.
    for round in 1..=2 {
        let (cert, key) = certs::issue(
            &issuer.ca_cert,
            &issuer.ca_key,
            &names(),
            VALIDITY,
            OffsetDateTime::now_utc(),
        )?;
        write_certs(dir.path(), &issuer.ca_cert, &cert, &key)?;
        let want = der(&cert)?;
        eventually(
            &format!("renewal {round} served"),
            Duration::from_secs(30),
            || async {
                let got = served_cert(env, &issuer.ca_cert).await?;
                if got != want {
                    bail!("still the old certificate");
                }
                Ok(())
            },
        )
        .await?;
    }
    let log = op.log_text();
    assert!(log.contains("became the leader"), "{log}");
    assert!(log.contains("serving a renewed certificate"), "{log}");
    assert!(
        ca_bundles(env)
            .await?
            .iter()
            .all(|b| b.as_deref() == Some(bundle.as_bytes())),
        "the caBundle is the issuer injector's, untouched"
    );
    let tls_secret_made = log.contains("created the operator CA");
    assert!(!tls_secret_made, "no CA of its own: {log}");
    op.stop().await;
    Ok(())
}
