//! Throwaway X.509 material for tests: a CA and server certificates it signs.
//!
//! Used for the kube-apiserver's serving certificate and for test webhook servers, whose
//! `caBundle` is [`TestCa::cert_pem`].

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority that lives only as long as a test.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
    cert_der: Vec<u8>,
}

/// A certificate issued by a [`TestCa`], with its private key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM-encoded.
    pub cert_pem: String,
    /// The certificate, DER-encoded.
    pub cert_der: Vec<u8>,
    /// The private key (ECDSA P-256), PKCS#8 PEM.
    pub key_pem: String,
    /// The private key (ECDSA P-256), PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl TestCa {
    /// Creates a self-signed CA (ECDSA P-256) with the given common name.
    pub fn new(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate().context("generating CA key")?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .context("self-signing CA certificate")?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            params,
            key,
        })
    }

    /// The CA certificate, PEM-encoded (what goes into a `caBundle` or a kubeconfig).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues a TLS server certificate for `names` (DNS names or IP addresses, e.g.
    /// `["127.0.0.1", "localhost"]`); the first name is also the common name.
    pub fn issue_server_cert(&self, names: &[&str]) -> Result<IssuedCert> {
        let key = KeyPair::generate().context("generating server key")?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .with_context(|| format!("invalid certificate names {names:?}"))?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing server certificate")?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }
}
