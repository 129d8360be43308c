//! The operator's own PKI, made with rcgen: a CA (ten years) and a serving certificate it signs
//! (90 days by default) for the config server and the admission webhook. Pure functions of the
//! current time, so renewal decisions are tested without a cluster.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

/// The CA lives long: sidecars and the webhook configuration pin it, and rotating it means
/// restarting every injected pod.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A CA and the serving certificate it signed, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// CA certificate.
    pub ca_cert: String,
    /// CA private key.
    pub ca_key: String,
    /// Serving certificate.
    pub cert: String,
    /// Serving private key.
    pub key: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bundle(<pem redacted>)")
    }
}

/// A certificate problem, for logs (never contains key material).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertError(String);

fn err(what: &str, e: impl std::fmt::Display) -> CertError {
    CertError(format!("{what}: {e}"))
}

/// A fresh CA and a serving certificate for `names`.
pub fn new_bundle(
    names: &BTreeSet<String>,
    validity: Duration,
    now: OffsetDateTime,
) -> Result<Bundle, CertError> {
    let ca_key = KeyPair::generate().map_err(|e| err("generating the CA key", e))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "llmesh-operator-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // An hour of slack for clocks that run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    let ca = params
        .self_signed(&ca_key)
        .map_err(|e| err("self-signing the CA", e))?;
    let ca_cert = ca.pem();
    let ca_key = ca_key.serialize_pem();
    let (cert, key) = issue(&ca_cert, &ca_key, names, validity, now)?;
    Ok(Bundle {
        ca_cert,
        ca_key,
        cert,
        key,
    })
}

/// A serving certificate for `names` (DNS names or IP addresses) signed by the CA.
pub fn issue(
    ca_cert: &str,
    ca_key: &str,
    names: &BTreeSet<String>,
    validity: Duration,
    now: OffsetDateTime,
) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::from_pem(ca_key).map_err(|e| err("reading the CA key", e))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key)
        .map_err(|e| err("reading the CA certificate", e))?;
    let key = KeyPair::generate().map_err(|e| err("generating the serving key", e))?;
    let mut params = CertificateParams::new(names.iter().cloned().collect::<Vec<_>>())
        .map_err(|e| err("certificate names", e))?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.iter().next().cloned().unwrap_or_default(),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + validity;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| err("signing the serving certificate", e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What a stored certificate covers and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// DNS names and IP addresses.
    pub names: BTreeSet<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// Reads the names and validity of a PEM certificate.
pub fn facts(cert_pem: &str) -> Result<Facts, CertError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| err("reading the certificate PEM", e))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| err("parsing the certificate", e))?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.insert(d.to_string());
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Ok(Facts {
        names,
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
    })
}

/// Why a serving certificate must be reissued now, if it must: a required name is missing, or
/// less than a third of its lifetime is left (so a replica that checks hourly always renews
/// well before expiry).
pub fn renewal_reason(
    facts: &Facts,
    required: &BTreeSet<String>,
    now: OffsetDateTime,
) -> Option<String> {
    let missing: Vec<&String> = required.difference(&facts.names).collect();
    if !missing.is_empty() {
        return Some(format!("it does not cover {missing:?}"));
    }
    let life = facts.not_after - facts.not_before;
    let left = facts.not_after - now;
    if left < life / 3 {
        return Some(format!(
            "it expires at {} (less than a third of its lifetime left)",
            facts.not_after
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_bundle_covers_its_names_and_chains_to_its_ca() {
        use rustls::client::danger::ServerCertVerifier;
        let now = OffsetDateTime::now_utc();
        let want = names(&["llmesh-operator.llmesh-system.svc", "127.0.0.1"]);
        let b = new_bundle(&want, Duration::from_secs(90 * 86400), now).unwrap();
        let f = facts(&b.cert).unwrap();
        assert_eq!(f.names, want);
        assert!(renewal_reason(&f, &want, now).is_none());
        let ca = facts(&b.ca_cert).unwrap();
        assert!(ca.not_after - now > time::Duration::days(3600));

        // rustls accepts the chain for both names.
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = x509_parser::pem::parse_x509_pem(b.ca_cert.as_bytes())
            .unwrap()
            .1
            .contents;
        roots.add(ca_der.into()).unwrap();
        let leaf = x509_parser::pem::parse_x509_pem(b.cert.as_bytes())
            .unwrap()
            .1
            .contents;
        let verifier = rustls::client::WebPkiServerVerifier::builder(roots.into())
            .build()
            .unwrap();
        for n in ["llmesh-operator.llmesh-system.svc", "127.0.0.1"] {
            let name = rustls::pki_types::ServerName::try_from(n).unwrap();
            verifier
                .verify_server_cert(
                    &leaf.clone().into(),
                    &[],
                    &name,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }

    #[test]
    fn renews_for_new_names_and_near_expiry_but_not_before() {
        let now = OffsetDateTime::now_utc();
        let want = names(&["a.svc"]);
        let b = new_bundle(&want, Duration::from_secs(90 * 86400), now).unwrap();
        let f = facts(&b.cert).unwrap();
        let more = names(&["a.svc", "b.svc"]);
        assert!(renewal_reason(&f, &more, now).unwrap().contains("b.svc"));
        assert!(renewal_reason(&f, &want, now + time::Duration::days(55)).is_none());
        assert!(renewal_reason(&f, &want, now + time::Duration::days(61)).is_some());
        let (cert, _) = issue(
            &b.ca_cert,
            &b.ca_key,
            &more,
            Duration::from_secs(86400),
            now,
        )
        .unwrap();
        assert_eq!(facts(&cert).unwrap().names, more);
    }
}
