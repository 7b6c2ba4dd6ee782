//! The server's TLS: rustls with ring's provider, a certificate chain and private key read
//! from PEM files, and a certificate that a reload replaces while the receiver serves.
//!
//! The acceptor's configuration never changes; its certificate resolver ([`ServerCert`])
//! answers every handshake with the certificate in force, which [`ServerCert::reload`]
//! replaces whole. A connection keeps the certificate it was handshaken with; the next
//! handshake gets the new one. A certificate and key that cannot be read, or do not match,
//! leave the one in force.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

/// The server's certificate in force.
#[derive(Debug)]
pub struct ServerCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ServerCert {
    /// Reads the certificate chain at `cert` and the private key at `key` (PEM).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<ServerCert> {
        Ok(ServerCert {
            current: ArcSwap::from_pointee(certified_key(cert, key)?),
        })
    }

    /// Replaces the certificate in force with the one at `cert` and `key`, for the next
    /// handshakes; on an error, keeps the one in force.
    pub fn reload(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        self.current.store(Arc::new(certified_key(cert, key)?));
        Ok(())
    }

    /// The DER of the end-entity certificate in force.
    pub fn end_entity(&self) -> Vec<u8> {
        self.current
            .load()
            .cert
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key, checked to match.
fn certified_key(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", cert.display());
    }
    let private =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    CertifiedKey::from_der(certs, private, &provider()).with_context(|| {
        format!(
            "loading the TLS certificate {} and key {}",
            cert.display(),
            key.display()
        )
    })
}

/// An acceptor answering every handshake with `cert`'s certificate in force (HTTP/1.1 only).
pub fn acceptor(cert: Arc<ServerCert>) -> anyhow::Result<TlsAcceptor> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
