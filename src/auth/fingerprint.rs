//! The fingerprint key: an HMAC-SHA256 key kept beside the CA, so the same
//! secret gives the same fingerprint across sessions and proxy restarts,
//! while a recording alone reveals nothing about the secret.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use std::fs::{DirBuilder, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The key's file name inside the CA directory.
pub const FINGERPRINT_KEY_FILE: &str = "fingerprint.key";

/// Length of the key in bytes; the file holds exactly these raw bytes.
const KEY_LEN: usize = 32;

/// Prefix of every fingerprint in a recording.
const PREFIX: &str = "hmac:";

/// Domain separation for identities (`--redact identities`), so an identity
/// and a secret that are equal (a password that is the user name) do not get
/// the same fingerprint.
const IDENTITY_LABEL: &[u8] = b"smtptap identity\0";

/// HMAC-SHA256 key for fingerprints, kept in `<ca-dir>/fingerprint.key`
/// (mode 0600, 32 random bytes): created when missing, never overwritten.
/// `Debug` does not show the key.
#[derive(Clone)]
pub struct FingerprintKey {
    key: [u8; KEY_LEN],
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(<redacted>)")
    }
}

impl FingerprintKey {
    /// Reads `dir/fingerprint.key`, or creates it (and `dir`, mode 0700) with
    /// 32 random bytes when it does not exist. An existing file is never
    /// replaced: one of the wrong length is an error. Two processes creating
    /// the key at once end up with the same key (the file appears atomically
    /// and the loser reads the winner's).
    pub fn load_or_create(dir: &Path) -> io::Result<FingerprintKey> {
        let path = dir.join(FINGERPRINT_KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&bytes, &path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::create(dir, &path),
            Err(e) => Err(context(e, "cannot read", &path)),
        }
    }

    /// A key from its bytes (tests, or a key kept elsewhere).
    pub fn from_bytes(key: [u8; KEY_LEN]) -> FingerprintKey {
        FingerprintKey { key }
    }

    /// The fingerprint of a secret: `hmac:` and the lower-case hex
    /// HMAC-SHA256 of the secret's bytes under this key.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        self.hmac(&[secret])
    }

    /// The fingerprint that stands for an identity with
    /// `--redact identities`: like [`fingerprint`](Self::fingerprint), but
    /// domain-separated, so it never equals the fingerprint of an equal
    /// secret.
    pub fn identity_fingerprint(&self, identity: &[u8]) -> String {
        self.hmac(&[IDENTITY_LABEL, identity])
    }

    fn hmac(&self, parts: &[&[u8]]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(part);
        }
        let digest = mac.finalize().into_bytes();
        format!("{PREFIX}{}", crate::hex::lower_hex(&digest))
    }

    fn parse(bytes: &[u8], path: &Path) -> io::Result<FingerprintKey> {
        let key = <[u8; KEY_LEN]>::try_from(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds {} bytes, not a {KEY_LEN}-byte key; restore it, or move it away to make a new key \
                     (fingerprints will then differ from earlier recordings)",
                    path.display(),
                    bytes.len()
                ),
            )
        })?;
        Ok(FingerprintKey { key })
    }

    fn create(dir: &Path, path: &Path) -> io::Result<FingerprintKey> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| context(e, "cannot create", dir))?;
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(|e| context(io::Error::other(e), "no randomness for", path))?;
        // Written in full under a temporary name, then linked into place
        // without replacing anything: the key file is never seen half written.
        let write = |e| context(e, "cannot write", path);
        let mut tmp = tempfile::Builder::new()
            .prefix(".fingerprint.key.")
            .permissions(Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(write)?;
        tmp.write_all(&key).map_err(write)?;
        tmp.as_file().sync_all().map_err(write)?;
        match tmp.persist_noclobber(path) {
            Ok(_) => Ok(FingerprintKey { key }),
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                let bytes = std::fs::read(path).map_err(|e| context(e, "cannot read", path))?;
                Self::parse(&bytes, path)
            }
            Err(e) => Err(write(e.error)),
        }
    }
}

fn context(e: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{action} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_with_mode_0600_and_stable_across_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let key = FingerprintKey::load_or_create(&ca).unwrap();
        let meta = std::fs::metadata(ca.join(FINGERPRINT_KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert_eq!(std::fs::metadata(&ca).unwrap().permissions().mode() & 0o777, 0o700);
        let again = FingerprintKey::load_or_create(&ca).unwrap();
        assert_eq!(key.fingerprint(b"hunter2"), again.fingerprint(b"hunter2"));
        // Nothing but the key is left behind.
        assert_eq!(std::fs::read_dir(&ca).unwrap().count(), 1);
    }

    #[test]
    fn fingerprints_differ_by_secret_and_by_key() {
        let a = FingerprintKey::from_bytes([1; 32]);
        let b = FingerprintKey::from_bytes([2; 32]);
        let fp = a.fingerprint(b"hunter2");
        assert!(fp.starts_with("hmac:"));
        assert_eq!(fp.len(), 5 + 64);
        assert!(fp[5..].bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(fp, a.fingerprint(b"hunter3"));
        assert_ne!(fp, a.fingerprint(b""));
        assert_ne!(fp, b.fingerprint(b"hunter2"));
        assert_ne!(fp, a.identity_fingerprint(b"hunter2"));
        assert_eq!(a.identity_fingerprint(b"joe"), a.identity_fingerprint(b"joe"));
    }

    #[test]
    fn known_answer() {
        // RFC 4231 test case 2 (key "Jefe"), padded: HMAC pads short keys with
        // zeros, so a 32-byte key of "Jefe" and zeros is the same key.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            FingerprintKey::from_bytes(key).fingerprint(b"what do ya want for nothing?"),
            "hmac:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn existing_key_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FINGERPRINT_KEY_FILE), [7u8; 32]).unwrap();
        let key = FingerprintKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.fingerprint(b"x"), FingerprintKey::from_bytes([7; 32]).fingerprint(b"x"));
        assert_eq!(std::fs::read(dir.path().join(FINGERPRINT_KEY_FILE)).unwrap(), [7u8; 32]);
    }

    #[test]
    fn wrong_length_is_an_error_and_the_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FINGERPRINT_KEY_FILE);
        std::fs::write(&path, b"short").unwrap();
        let err = FingerprintKey::load_or_create(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("fingerprint.key"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
    }

    #[test]
    fn concurrent_creation_agrees_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let prints: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..8).map(|_| s.spawn(|| FingerprintKey::load_or_create(&ca).unwrap().fingerprint(b"s"))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(prints.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn debug_hides_the_key() {
        let key = FingerprintKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains("ab") && !shown.contains("171"), "{shown}");
    }
}
