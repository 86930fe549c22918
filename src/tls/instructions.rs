//! What `smtptap ca show` prints: where the CA is, its fingerprint, and how
//! to make each common client trust it.

use super::ca::LocalCa;

pub fn describe(ca: &LocalCa) -> String {
    let path = ca.cert_path();
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let path = path.display();
    let fingerprint = ca.fingerprint();
    format!(
        "\
smtptap local CA
  certificate: {path}
  SHA-256:     {fingerprint}

Clients must trust this certificate to accept the proxy's TLS. Compare the
fingerprint above with what each system shows before you trust it; trust it
only on machines you use for testing, and remove it when you are done.

Thunderbird (it keeps its own certificate store):
  1. Settings > Privacy & Security > Certificates > Manage Certificates...
  2. Authorities tab > Import..., choose {path}
  3. Tick \"This certificate can identify websites\", OK, and restart Thunderbird.

Outlook / Windows (uses the Windows store):
  1. Copy {path} to the Windows machine and rename it to smtptap-ca.crt.
  2. As administrator: certutil -addstore -f Root smtptap-ca.crt
     (or double-click it > Install Certificate > Local Machine >
     \"Trusted Root Certification Authorities\").
  3. Restart Outlook.

macOS (Mail and most applications):
  sudo security add-trusted-cert -d -r trustRoot \\
      -k /Library/Keychains/System.keychain {path}

Debian / Ubuntu (OpenSSL, GnuTLS, swaks, curl, msmtp, Python):
  sudo cp {path} /usr/local/share/ca-certificates/smtptap-ca.crt
  sudo update-ca-certificates
  or per command: swaks --tls-ca-path {path}, curl --cacert {path},
  msmtp --tls-trust-file={path}, SSL_CERT_FILE={path} python3 ...
"
    )
}
