//! Facts about a TLS connection for the record: version, cipher, and the
//! peer certificate's subject, issuer, digest and verification result.

use crate::record::format::PeerCertificate;
use rustls::ProtocolVersion;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

/// `TLSv1.3`-style name of the negotiated version.
pub fn version(conn: &rustls::CommonState) -> Option<String> {
    let name = match conn.protocol_version()? {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        other => return Some(format!("{other:?}")),
    };
    Some(name.to_owned())
}

/// IANA-style name of the negotiated cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
pub fn cipher(conn: &rustls::CommonState) -> Option<String> {
    conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()))
}

/// The record of a peer's end-entity certificate.
pub fn peer_certificate(leaf: &CertificateDer<'_>, verified: Result<(), rustls::Error>) -> PeerCertificate {
    let (subject, issuer) = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) => (cert.subject().to_string(), cert.issuer().to_string()),
        Err(e) => (format!("(unparsable certificate: {e})"), String::new()),
    };
    PeerCertificate {
        subject,
        issuer,
        sha256: crate::hex::lower_hex(&Sha256::digest(leaf)),
        verified: verified.is_ok(),
        verify_error: verified.err().map(|e| e.to_string()),
    }
}
