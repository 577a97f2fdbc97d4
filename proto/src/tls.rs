//! The cluster CA and TLS identities. The coordinator holds the CA key; nodes and clients
//! generate their own key, send a CSR with a join token, and get a certificate back. Every
//! QUIC connection is mutual TLS 1.3 with certificates chained to the cluster CA.
//!
//! Server names: the coordinator is `coordinator.gridback`; node `N` is `N.node.gridback`, so a
//! client dialling a node also proves it reached the node it meant to.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::ids::{CertFingerprint, ClientId, NodeId};
use crate::wire::ALPN;

/// TLS server name of the coordinator.
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.gridback";

/// TLS server name of a node.
pub fn node_server_name(id: NodeId) -> String {
    format!("{id}.node.gridback")
}

/// TLS name written into a client certificate.
pub fn client_server_name(id: ClientId) -> String {
    format!("{id}.client.gridback")
}

/// Errors building identities and TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration error: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A PEM file is unreadable or holds the wrong thing.
    #[error("bad PEM data: {0}")]
    Pem(String),
}

/// The crypto provider used everywhere (ring), passed explicitly so that no process-wide
/// default is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster certificate authority (coordinator only).
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClusterCa({:?})",
            CertFingerprint::of_der(&self.cert_der)
        )
    }
}

fn leaf_params(server_name: &str, label: &str) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(vec![server_name.to_string()])?;
    p.distinguished_name.push(DnType::CommonName, label);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

impl ClusterCa {
    /// A fresh CA.
    pub fn generate(label: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::CommonName, format!("gridback cluster CA {label}"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        Ok(Self {
            cert_der: cert.der().clone(),
            issuer: Issuer::new(p, key),
            key_pem,
        })
    }

    /// Load a CA from its certificate and key PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            issuer,
            cert_der,
            key_pem: Zeroizing::new(key_pem.to_string()),
        })
    }

    /// CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        der_to_pem("CERTIFICATE", &self.cert_der)
    }

    /// CA private key (PEM), to be written to a file only the coordinator reads.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issue a certificate for the public key in a CSR. Only the key is taken from the
    /// request: names, usages and the CA flag are set here, never by the requester.
    pub fn issue_from_csr(
        &self,
        csr_der: &[u8],
        server_name: &str,
        label: &str,
    ) -> Result<CertificateDer<'static>, TlsError> {
        let der = CertificateSigningRequestDer::from(csr_der);
        let mut csr = CertificateSigningRequestParams::from_der(&der)?;
        csr.params = leaf_params(server_name, label)?;
        Ok(csr.signed_by(&self.issuer)?.der().clone())
    }

    /// Issue a certificate together with a fresh key (for the coordinator itself and tests).
    pub fn issue_with_key(&self, server_name: &str, label: &str) -> Result<Identity, TlsError> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(server_name, label)?.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert_der: cert.der().clone(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            ca_der: self.cert_der.clone(),
        })
    }
}

/// A fresh key pair and a CSR for it, for joining. Returns (key PEM, CSR DER).
pub fn new_key_and_csr(label: &str) -> Result<(Zeroizing<String>, Vec<u8>), TlsError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec!["joining.gridback".to_string()])?;
    p.distinguished_name.push(DnType::CommonName, label);
    let csr = p.serialize_request(&key)?;
    Ok((Zeroizing::new(key.serialize_pem()), csr.der().to_vec()))
}

/// Encode DER as PEM.
pub fn der_to_pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

/// A certificate, its private key and the CA it chains to: everything needed for mutual TLS.
#[derive(Clone)]
pub struct Identity {
    /// This peer's certificate (DER).
    pub cert_der: CertificateDer<'static>,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: Zeroizing<String>,
    /// The cluster CA certificate (DER).
    pub ca_der: CertificateDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({:?}, key: <redacted>)", self.fingerprint())
    }
}

impl Identity {
    /// Fingerprint of this identity's certificate.
    pub fn fingerprint(&self) -> CertFingerprint {
        CertFingerprint::of_der(&self.cert_der)
    }

    /// Certificate as PEM.
    pub fn cert_pem(&self) -> String {
        der_to_pem("CERTIFICATE", &self.cert_der)
    }

    /// CA certificate as PEM.
    pub fn ca_pem(&self) -> String {
        der_to_pem("CERTIFICATE", &self.ca_der)
    }

    /// Build from PEM strings (certificate, key, CA certificate).
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, TlsError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
        Ok(Self {
            cert_der,
            key_pem: Zeroizing::new(key_pem.to_string()),
            ca_der,
        })
    }

    fn key_der(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("private key: {e}")))
    }

    /// Server side of mutual TLS. With `allow_anonymous`, clients without a certificate may
    /// connect (the coordinator accepts them only for `Join`).
    pub fn server_config(&self, allow_anonymous: bool) -> Result<rustls::ServerConfig, TlsError> {
        let p = provider();
        let roots = Arc::new(root_store(&self.ca_der)?);
        let builder = WebPkiClientVerifier::builder_with_provider(roots, p.clone());
        let verifier = if allow_anonymous {
            builder.allow_unauthenticated().build()?
        } else {
            builder.build()?
        };
        let mut cfg = rustls::ServerConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert_der.clone()], self.key_der()?)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// Client side of mutual TLS: presents this identity and trusts only the cluster CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(root_store(&self.ca_der)?)
            .with_client_auth_cert(vec![self.cert_der.clone()], self.key_der()?)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// Client configuration for joining: trusts the CA, presents no certificate.
pub fn anonymous_client_config(
    ca_der: &CertificateDer<'static>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(ca_der)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Parse the first certificate from PEM.
pub fn cert_from_pem(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem(e.to_string()))
}

fn root_store(ca: &CertificateDer<'static>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_from_csr_and_reloads() {
        let ca = ClusterCa::generate("test").unwrap();
        let (key_pem, csr) = new_key_and_csr("node-a").unwrap();
        let cert = ca
            .issue_from_csr(&csr, &node_server_name(NodeId::random()), "node-a")
            .unwrap();
        let id = Identity::from_pem(&der_to_pem("CERTIFICATE", &cert), &key_pem, &ca.cert_pem())
            .unwrap();
        id.server_config(false).unwrap();
        id.client_config().unwrap();
        let again = ClusterCa::from_pem(&ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        again
            .issue_with_key(COORDINATOR_SERVER_NAME, "coordinator")
            .unwrap();
        assert!(ca.issue_from_csr(b"not a csr", "x", "x").is_err());
    }
}
