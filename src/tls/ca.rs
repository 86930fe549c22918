//! smtptap's local certificate authority: created once in the CA directory,
//! never overwritten, and used to issue leaf certificates on the fly for the
//! names clients ask for, so a client that trusts the CA accepts the proxy.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
/// Leaf certificates kept; the cache is emptied when it is full.
const MAX_CACHED_LEAVES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{} exists but {} is missing; restore it, or move both away to make a new CA", cert.display(), key.display())]
    Incomplete { cert: PathBuf, key: PathBuf },
    #[error("the CA in {} is unusable: {0}", dir.display())]
    Invalid {
        dir: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot issue a certificate for {name:?}: {source}")]
    Issue { name: String, source: rcgen::Error },
    #[error("cannot use the issued key: {0}")]
    Key(rustls::Error),
}

/// The CA, loaded, with a cache of the leaves it issued.
pub struct LocalCa {
    dir: PathBuf,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl LocalCa {
    /// [`Self::load_or_create`] for a command that serves TLS: a CA made now
    /// is logged with its fingerprint, since clients must be told to trust it.
    pub fn load_or_create_logged(dir: &Path) -> Result<LocalCa, CaError> {
        let (ca, created) = Self::load_or_create(dir)?;
        if created {
            tracing::info!(cert = %ca.cert_path().display(), sha256 = %ca.fingerprint(),
                "created the local CA; clients must trust it (see `smtptap ca show`)");
        }
        Ok(ca)
    }

    /// Loads the CA from `dir`, creating it first if it does not exist.
    /// Returns the CA and whether it was created now.
    pub fn load_or_create(dir: &Path) -> Result<(LocalCa, bool), CaError> {
        let cert = dir.join(CA_CERT);
        let key = dir.join(CA_KEY);
        let created = match (cert.exists(), key.exists()) {
            (true, true) => false,
            (true, false) => return Err(CaError::Incomplete { cert, key }),
            (false, _) => {
                create(dir)?;
                true
            }
        };
        Ok((load(dir)?, created))
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// SHA-256 of the CA certificate, as colon-separated upper-case hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// A leaf certificate for `name` (a DNS name or IP address), issued now
    /// or taken from the cache.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let name = name.to_ascii_lowercase();
        let mut leaves = self.leaves.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(leaf) = leaves.get(&name) {
            return Ok(leaf.clone());
        }
        let issue = |e| CaError::Issue { name: name.clone(), source: e };
        let key = KeyPair::generate().map_err(issue)?;
        let mut params = CertificateParams::new(vec![name.clone()]).map_err(issue)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        // Clients reject leaves valid for longer than 398 days.
        params.not_after = now + Duration::days(397);
        let cert = params.signed_by(&key, &self.issuer).map_err(issue)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(CaError::Key)?;
        let leaf = Arc::new(CertifiedKey::new(vec![cert.der().clone(), self.cert_der.clone()], signing));
        if leaves.len() >= MAX_CACHED_LEAVES {
            leaves.clear();
        }
        leaves.insert(name, leaf.clone());
        Ok(leaf)
    }
}

/// SHA-256 of a DER certificate as colon-separated upper-case hex, the form
/// browsers and `openssl x509 -fingerprint -sha256` show.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn create(dir: &Path) -> Result<(), CaError> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|source| CaError::Io {
        action: "create the CA directory",
        path: dir.to_owned(),
        source,
    })?;
    let invalid = |source| CaError::Invalid { dir: dir.to_owned(), source };
    let key = KeyPair::generate().map_err(invalid)?;
    let cert = ca_params().self_signed(&key).map_err(invalid)?;
    // The key first, so that a crash in between leaves no certificate without its key.
    write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)
}

fn load(dir: &Path) -> Result<LocalCa, CaError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CaError::Io { action: "read", path, source })
    };
    let (cert_pem, key_pem) = (read(CA_CERT)?, read(CA_KEY)?);
    let invalid = |source| CaError::Invalid { dir: dir.to_owned(), source };
    let key = KeyPair::from_pem(&key_pem).map_err(invalid)?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(invalid)?;
    let cert_der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| invalid(rcgen::Error::CouldNotParseCertificate))?;
    Ok(LocalCa { dir: dir.to_owned(), cert_der, issuer, leaves: Mutex::new(HashMap::new()) })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::OrganizationName, "smtptap");
    params.distinguished_name.push(DnType::CommonName, "smtptap local CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(3650);
    params
}

/// Writes a file that must not exist yet, with `mode`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let io = |source| CaError::Io { action: "write", path: path.to_owned(), source };
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_private_key_mode_and_reloaded_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("certs");
        let (ca, created) = LocalCa::load_or_create(&ca_dir).unwrap();
        assert!(created);
        let mode = |name: &str| std::fs::metadata(ca_dir.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(CA_KEY), 0o600);
        assert_eq!(std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777, 0o700);
        let pem = std::fs::read(ca_dir.join(CA_CERT)).unwrap();
        let (again, created) = LocalCa::load_or_create(&ca_dir).unwrap();
        assert!(!created);
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(std::fs::read(ca_dir.join(CA_CERT)).unwrap(), pem, "never overwritten");
        assert_eq!(ca.fingerprint().len(), 32 * 3 - 1);
    }

    #[test]
    fn missing_key_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let err = LocalCa::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, CaError::Incomplete { .. }), "{err}");
    }

    #[test]
    fn leaves_are_issued_per_name_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = LocalCa::load_or_create(dir.path()).unwrap();
        let a = ca.leaf("mail.example.com").unwrap();
        let b = ca.leaf("MAIL.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let ip = ca.leaf("127.0.0.1").unwrap();
        assert!(!Arc::ptr_eq(&a, &ip));
        assert_eq!(a.cert.len(), 2, "leaf and CA");
        // A client that trusts the CA accepts the leaf for that name, and only for it.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let verify = |leaf: &CertifiedKey, name: &str| {
            use rustls::client::danger::ServerCertVerifier;
            let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
            let now = rustls_pki_types::UnixTime::now();
            verifier.verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &name, &[], now).is_ok()
        };
        assert!(verify(&a, "mail.example.com"));
        assert!(verify(&ip, "127.0.0.1"));
        assert!(!verify(&a, "other.example.com"));
    }
}
