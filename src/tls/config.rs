//! rustls configurations: towards clients (leaves from the local CA, chosen by
//! SNI) and towards the upstream (system roots, extra anchors, or none).

use super::ca::LocalCa;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("no trust anchors: the system has no CA certificates and no --upstream-ca was given")]
    NoRoots,
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    #[error("local CA: {0}")]
    Ca(#[from] super::ca::CaError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Presents a leaf for the name the client asked for (SNI), else for the
/// default name (the upstream host).
#[derive(Debug)]
pub struct LeafResolver {
    ca: Arc<LocalCa>,
    default_name: String,
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().unwrap_or(&self.default_name);
        match self.ca.leaf(name) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::error!(name, error = %e, "cannot issue a certificate");
                None
            }
        }
    }
}

/// Where a server's certificate comes from (`serve`, `sink`): `--cert/--key`,
/// or leaves from the local CA.
pub enum ServerCertificates {
    Fixed(Arc<rustls::ServerConfig>),
    LocalCa(Arc<LocalCa>),
}

impl ServerCertificates {
    /// `fixed` (certificate and key files) when given, else the CA in `ca_dir`
    /// (created and announced on first use).
    pub fn load(ca_dir: &Path, fixed: Option<(&PathBuf, &PathBuf)>) -> Result<ServerCertificates, TlsConfigError> {
        Ok(match fixed {
            Some((cert, key)) => ServerCertificates::Fixed(client_facing_fixed(cert, key)?),
            None => ServerCertificates::LocalCa(Arc::new(LocalCa::load_or_create_logged(ca_dir)?)),
        })
    }

    /// The configuration for a listener on `local`: a leaf for the name the
    /// client asks for (SNI), else [`listener_name`]`(local, wildcard)`.
    pub fn for_listener(
        &self,
        local: std::net::SocketAddr,
        wildcard: &str,
    ) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        match self {
            ServerCertificates::Fixed(config) => Ok(config.clone()),
            ServerCertificates::LocalCa(ca) => client_facing(ca.clone(), &listener_name(local, wildcard)),
        }
    }
}

/// The name a listener's certificate is for when a client sends no SNI: its
/// address, or `wildcard` when it listens on all addresses.
pub fn listener_name(local: std::net::SocketAddr, wildcard: &str) -> String {
    if local.ip().is_unspecified() { wildcard.to_owned() } else { local.ip().to_string() }
}

/// The configuration for TLS towards clients.
pub fn client_facing(ca: Arc<LocalCa>, default_name: &str) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let resolver = Arc::new(LeafResolver { ca, default_name: default_name.to_owned() });
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    Ok(Arc::new(config))
}

/// The configuration for TLS towards clients with a given certificate (`--cert/--key`).
pub fn client_facing_fixed(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let chain = read_certs(cert)?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|source| TlsConfigError::Read { path: key.to_owned(), source })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// What the upstream's certificate is checked against.
#[derive(Debug, Clone)]
pub struct UpstreamTrust {
    /// The system's roots plus the certificates of `--upstream-ca`.
    pub roots: Arc<RootCertStore>,
    /// The certificates of `--upstream-ca` themselves: a server presenting
    /// exactly one of them is trusted even when it is not a valid chain on
    /// its own (a self-signed certificate marked as a CA, as `openssl req
    /// -x509` makes by default, is refused as an end entity by WebPKI).
    pub pinned: Vec<CertificateDer<'static>>,
}

/// Trust anchors for the upstream: the system's, plus `extra` (PEM).
pub fn upstream_roots(extra: Option<&Path>) -> Result<UpstreamTrust, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    let mut pinned = Vec::new();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "while loading system CA certificates");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra {
        for cert in read_certs(path)? {
            roots.add(cert.clone())?;
            pinned.push(cert);
        }
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    Ok(UpstreamTrust { roots: Arc::new(roots), pinned })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsConfigError::Read { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// TLS towards the upstream, and a way to tell afterwards whether the
/// server's certificate verified (also when verification is not enforced).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    verifier: Arc<UpstreamVerifier>,
}

impl UpstreamTls {
    /// `insecure`: complete handshakes whatever the certificate (it is still
    /// checked, and the result recorded).
    pub fn new(trust: UpstreamTrust, insecure: bool) -> Result<UpstreamTls, TlsConfigError> {
        let webpki = WebPkiServerVerifier::builder_with_provider(trust.roots, provider()).build()?;
        let verifier = Arc::new(UpstreamVerifier { pinned: trust.pinned, webpki, insecure });
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        Ok(UpstreamTls { config: Arc::new(config), verifier })
    }

    /// Whether `chain` verifies for `name` against the trust anchors.
    pub fn verifies(&self, chain: &[CertificateDer<'_>], name: &ServerName<'_>) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verifier.verify(leaf, intermediates, name, &[], UnixTime::now()).map(|_| ())
    }
}

/// WebPKI verification, plus exact matches of certificates the user named;
/// with `--insecure-upstream`, any certificate completes the handshake
/// (handshake signatures are still checked, so the session is at least bound
/// to the certificate shown).
#[derive(Debug)]
struct UpstreamVerifier {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
    insecure: bool,
}

impl UpstreamVerifier {
    /// The verdict on a certificate, whatever `insecure` says.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(_) if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                Ok(ServerCertVerified::assertion())
            }
            result => result,
        }
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.verify(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(_) if self.insecure => Ok(ServerCertVerified::assertion()),
            verdict => verdict,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listener_is_named_by_its_address_unless_it_listens_on_all() {
        let name = |addr: &str| super::listener_name(addr.parse().unwrap(), "mail.test");
        assert_eq!(name("127.0.0.1:25"), "127.0.0.1");
        assert_eq!(name("[::1]:25"), "::1");
        assert_eq!(name("0.0.0.0:25"), "mail.test");
        assert_eq!(name("[::]:25"), "mail.test");
    }
}
