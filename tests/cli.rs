//! The command line: flags that are refused say why, with exit code 2.

mod common;
use common::BIN;
use std::process::Command;

#[test]
fn ca_init_creates_once_and_show_explains_trust() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("certs");
    let run = |cmd: &str| {
        let out = Command::new(BIN).args(["ca", cmd, "--ca-dir"]).arg(&ca_dir).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run("init");
    assert!(first.starts_with("created "), "{first}");
    let again = run("init");
    assert!(again.starts_with("already exists: "), "{again}");
    let fingerprint = first.rsplit("SHA-256 ").next().unwrap().trim_end_matches([')', '\n']);
    assert_eq!(fingerprint.len(), 95);
    let show = run("show");
    for needle in [fingerprint, "Thunderbird", "Outlook", "macOS", "update-ca-certificates", "ca.pem"] {
        assert!(show.contains(needle), "{needle} missing from:\n{show}");
    }
    // The fingerprint is that of the certificate on disk, as openssl computes it.
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(ca_dir.join("ca.pem"))
        .output()
        .expect("openssl");
    assert!(String::from_utf8_lossy(&out.stdout).contains(fingerprint));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca_dir.join("ca-key.pem")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn listen_failure_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["proxy", "--listen", &addr, "--record-dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[test]
fn help_documents_every_proxy_flag() {
    let out = Command::new(BIN).args(["proxy", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--upstream",
        "--client-tls",
        "--upstream-tls",
        "--record-dir",
        "--no-bodies",
        "--max-connections",
        "--idle-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
}
