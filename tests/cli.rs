//! The command line: flags that are refused say why, with exit code 2.

mod common;
use common::BIN;
use std::process::Command;

#[test]
fn tls_modes_are_refused_clearly_not_downgraded() {
    for (flag, mode) in [("--client-tls", "starttls"), ("--upstream-tls", "implicit")] {
        let out = Command::new(BIN).args(["proxy", "--listen", "127.0.0.1:0", flag, mode]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {mode}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not supported yet") && err.contains(&format!("{flag} off")), "{err}");
        assert!(out.stdout.is_empty(), "it must not start listening");
    }
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
