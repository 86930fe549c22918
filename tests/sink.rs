//! `smtptap sink`, the built-in test server on its own, against real
//! clients: swaks, Python smtplib (tests/peers/smtplib_*.py) and curl, for
//! AUTH (PLAIN, LOGIN, CRAM-MD5), the refusal rules, STARTTLS and implicit
//! TLS with the local CA, and messages saved byte for byte; a raw client for
//! the exact AUTH error replies; and `smtptap proxy`'s default built-in
//! upstream, which must still offer no AUTH.
//!
//! Every peer must be installed: a missing one fails its test. Each sink
//! listens on 127.0.0.1:0 and is used once it prints `listening on`; each
//! process is killed on drop.

mod common;
use common::*;

use base64::Engine as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The account the sinks in these tests accept.
const USER: &str = "ann@x.test";
const PASSWORD: &str = "s3cr:t pw";
const ACCOUNT: &str = "ann@x.test:s3cr:t pw";

/// A running `smtptap sink`, killed on drop.
struct Sink {
    child: ChildGuard,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Sink {
    /// Starts `smtptap sink --listen 127.0.0.1:0` with its CA (`--ca-dir`)
    /// and `--save-dir` in a fresh temp dir, and `args`.
    fn start(args: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr = dir.path().join("stderr");
        let (child, addr) = spawn_listening(
            Command::new(BIN)
                .args(["sink", "--listen", "127.0.0.1:0", "--ca-dir"])
                .arg(dir.path().join("certs"))
                .arg("--save-dir")
                .arg(dir.path().join("saved"))
                .args(args)
                .env("RUST_LOG", "smtptap=debug"),
            "smtptap sink",
            &stderr,
        );
        Sink { child, addr, dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.pem")
    }

    /// Everything the sink logged (at debug).
    fn log(&self) -> String {
        read_text(&self.dir.path().join("stderr"))
    }

    fn save_dir(&self) -> PathBuf {
        self.dir.path().join("saved")
    }

    /// Waits for exactly `n` saved messages; returns them in order.
    fn saved(&self, n: usize) -> Vec<Vec<u8>> {
        wait_messages(&self.save_dir(), n, &self.dir.path().join("stderr"))
    }

    /// Asserts that no message was saved (call once the client saw the refusal).
    fn assert_nothing_saved(&self) {
        let names: Vec<_> = std::fs::read_dir(self.save_dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.is_empty(), "saved {names:?}");
    }
}

/// swaks from [`FROM`] to [`TO`] with `extra` flags; its output whatever the status.
fn swaks(sink: &Sink, extra: &[&str]) -> Output {
    let server = sink.addr.to_string();
    let mut args = vec!["--server", &server, "--from", FROM, "--to", TO, "--helo", "swaks.test"];
    args.extend_from_slice(extra);
    run_peer("swaks", &args, None)
}

/// A message with what must arrive unchanged: leading dots, UTF-8, a long line.
fn test_message() -> Vec<u8> {
    format!(
        "From: <{FROM}>\r\nTo: <{TO}>\r\nSubject: sink\r\n\r\n.leading dot\r\n..two dots\r\n\
         Gr\u{fc}\u{df}e\r\n{}\r\n.\r\nlast\r\n",
        "x".repeat(2000)
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------
// AUTH
// ---------------------------------------------------------------------------

#[test]
fn swaks_authenticates_with_each_mechanism_and_fails_with_a_wrong_password() {
    let sink = Sink::start(&["--tls", "off", "--user", ACCOUNT, "--user", "bob:other"]);
    for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5"] {
        let out = swaks(&sink, &["--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD]);
        assert_success(&out, &format!("swaks --auth {mechanism}"));
        assert!(stdout(&out).contains("<-  235 2.7.0 Authentication successful"), "{}", output_text(&out));

        let out = swaks(&sink, &["--auth", mechanism, "--auth-user", USER, "--auth-password", "wrong"]);
        assert_failure(&out, &format!("swaks --auth {mechanism} with a wrong password"));
        assert!(stdout(&out).contains("535 5.7.8 Authentication credentials invalid"), "{}", output_text(&out));
    }
    assert_eq!(sink.saved(3).len(), 3, "one message per successful login");
    let log = sink.log();
    assert!(log.contains("client authenticated"), "{log}");
    for form in secret_forms(PASSWORD) {
        assert!(!log.contains(&form), "the sink logged the password ({form}):\n{log}");
    }
}

/// tests/peers/smtplib_auth.py: `(exit status, reply code)`.
fn smtplib_login(sink: &Sink, mechanism: &str, password: &str) -> (Option<i32>, u64) {
    let port = sink.addr.port().to_string();
    let script = peer_script("smtplib_auth.py");
    let out = run_peer("python3", &[path_str(&script), "127.0.0.1", &port, mechanism, USER, password], None);
    let result: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
    (out.status.code(), result["code"].as_u64().expect("code"))
}

#[test]
fn smtplib_authenticates_with_each_mechanism_and_fails_with_a_wrong_password() {
    let sink = Sink::start(&["--tls", "off", "--user", ACCOUNT]);
    for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5", "auto"] {
        assert_eq!(smtplib_login(&sink, mechanism, PASSWORD), (Some(0), 235), "{mechanism}");
        assert_eq!(smtplib_login(&sink, mechanism, "wrong"), (Some(3), 535), "{mechanism}");
    }
}

/// curl sending [`test_message`] to `url` as [`USER`], with `extra` flags;
/// its output whatever the status.
fn curl(sink: &Sink, url: &str, extra: &[&str]) -> Output {
    let file = write_file(sink.dir.path(), "m.eml", &test_message());
    let user = format!("{USER}:{PASSWORD}");
    let mut args = vec!["-sS", "-v", "--max-time", "30", "--url", url, "--user", &user];
    args.extend_from_slice(extra);
    args.extend(["--mail-from", FROM, "--mail-rcpt", TO, "--upload-file", path_str(&file)]);
    run_peer("curl", &args, None)
}

#[test]
fn curl_authenticates_and_the_message_is_saved_byte_for_byte() {
    let sink = Sink::start(&["--tls", "off", "--user", ACCOUNT, "--require-auth"]);
    let url = format!("smtp://{}/curl.test", sink.addr);
    for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5"] {
        let options = format!("AUTH={mechanism}");
        let out = curl(&sink, &url, &["--login-options", &options]);
        assert_success(&out, &format!("curl AUTH={mechanism}"));
        assert!(stderr(&out).contains(&format!("> AUTH {mechanism}")), "{}", output_text(&out));
    }
    for saved in sink.saved(3) {
        assert_eq!(saved, test_message());
    }
}

/// Sends `lines` one at a time on a raw connection, after its greeting and
/// EHLO; returns the final reply line to each.
fn raw_dialogue(sink: &Sink, lines: &[&str]) -> Vec<String> {
    let mut client = RawClient::connect(sink.addr);
    client.send(b"EHLO raw.test\r\n");
    let before = client.read_replies(2).len();
    let mut replies = Vec::new();
    for (seen, line) in (before..).zip(lines) {
        client.send(format!("{line}\r\n").as_bytes());
        replies.push(client.read_replies(seen + 1)[seen].clone());
    }
    replies
}

#[test]
fn auth_errors_have_their_rfc_4954_replies() {
    let sink = Sink::start(&["--tls", "off", "--user", ACCOUNT]);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let plain = format!("AUTH PLAIN {}", b64(&format!("\0{USER}\0{PASSWORD}")));
    let replies = raw_dialogue(
        &sink,
        &[
            "AUTH LOGIN",
            "*",
            "AUTH PLAIN",
            "not base64!",
            "AUTH PLAIN =",
            "AUTH CRAM-MD5 =",
            "AUTH DIGEST-MD5",
            "MAIL FROM:<a@x.test>",
            &plain,
            "RSET",
            &plain,
            &plain,
        ],
    );
    assert_eq!(
        replies,
        [
            "334 VXNlcm5hbWU6",
            "501 5.7.0 Authentication cancelled",
            "334 ",
            "501 5.5.2 Cannot decode the response",
            "501 5.5.2 Cannot decode the response",
            "501 5.5.2 Cannot decode the response",
            "504 5.5.4 Unrecognized authentication type",
            "250 2.1.0 Ok",
            "503 5.5.1 Error: AUTH not permitted during a mail transaction",
            "250 2.0.0 Ok",
            "235 2.7.0 Authentication successful",
            "503 5.5.1 Error: already authenticated",
        ]
    );
}

#[test]
fn require_auth_refuses_mail_before_authentication() {
    let sink = Sink::start(&["--tls", "off", "--user", ACCOUNT, "--require-auth"]);
    let out = swaks(&sink, &[]);
    assert_failure(&out, "swaks without AUTH");
    assert!(stdout(&out).contains("530 5.7.0 Authentication required"), "{}", output_text(&out));
    let out = swaks(&sink, &["--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD]);
    assert_success(&out, "swaks with AUTH");
    assert_eq!(sink.saved(1).len(), 1);
}

#[test]
fn without_accounts_auth_is_neither_offered_nor_accepted() {
    let sink = Sink::start(&["--tls", "off"]);
    let out = swaks(&sink, &["--quit-after", "EHLO"]);
    assert_success(&out, "swaks EHLO");
    assert!(!stdout(&out).contains("AUTH"), "{}", stdout(&out));
    assert_eq!(raw_dialogue(&sink, &["AUTH PLAIN AGEAYg=="]), ["502 5.5.1 Error: command not implemented"]);
}

// ---------------------------------------------------------------------------
// Refusal rules
// ---------------------------------------------------------------------------

#[test]
fn recipients_at_a_denied_domain_and_denied_senders_get_550() {
    let sink = Sink::start(&["--tls", "off", "--reject-rcpt-domain", "denied.test", "--reject-sender", "spam@x.test"]);
    let out = swaks(&sink, &["--to", "bob@Denied.test"]);
    assert_failure(&out, "swaks to a denied domain");
    assert!(stdout(&out).contains("550 5.7.1 Relaying denied"), "{}", output_text(&out));
    let out = swaks(&sink, &["--from", "spam@x.test"]);
    assert_failure(&out, "swaks from a denied sender");
    assert!(stdout(&out).contains("550 5.7.1 Sender rejected"), "{}", output_text(&out));
    sink.assert_nothing_saved();
    let out = swaks(&sink, &["--to", "bob@allowed.test"]);
    assert_success(&out, "swaks to an allowed domain");
    assert_eq!(sink.saved(1).len(), 1);
}

#[test]
fn messages_over_max_size_get_552_at_mail_or_after_the_data() {
    let sink = Sink::start(&["--tls", "off", "--max-size", "1000"]);
    let dir = tempfile::tempdir().unwrap();
    let big = write_file(dir.path(), "big.eml", &[test_message(), b"y\r\n".repeat(400)].concat());
    // smtplib declares SIZE= when the server offers SIZE: refused at MAIL.
    let port = sink.addr.port().to_string();
    let script = peer_script("smtplib_send.py");
    let out = run_peer("python3", &[path_str(&script), "127.0.0.1", &port, FROM, TO, path_str(&big)], None);
    assert_failure(&out, "smtplib_send.py with a message over SIZE");
    assert!(stderr(&out).contains("552"), "{}", output_text(&out));
    // swaks declares no size: refused after the end of data.
    let data = format!("@{}", path_str(&big));
    let out = swaks(&sink, &["--data", &data]);
    assert_failure(&out, "swaks with a message over SIZE");
    let transcript = stdout(&out);
    assert!(transcript.contains("250-SIZE 1000"), "{transcript}");
    let refusal = transcript.find("552 5.3.4 Message size exceeds fixed limit").expect("552 after the data");
    assert!(transcript[..refusal].contains("354 "), "552 comes after the data: {transcript}");
    sink.assert_nothing_saved();
}

// ---------------------------------------------------------------------------
// TLS and saved messages
// ---------------------------------------------------------------------------

#[test]
fn swaks_starttls_verifies_the_local_ca_and_authenticates_inside() {
    let sink = Sink::start(&["--user", ACCOUNT]);
    let ca = sink.ca();
    let out = swaks(
        &sink,
        &[
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            path_str(&ca),
            "--auth",
            "CRAM-MD5",
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
        ],
    );
    assert_success(&out, "swaks --tls --tls-verify");
    let transcript = stdout(&out);
    assert!(transcript.contains("<-  220 2.0.0 Ready to start TLS"), "{transcript}");
    assert!(transcript.contains("<~  235 2.7.0 Authentication successful"), "{transcript}");
    assert_eq!(sink.saved(1).len(), 1);
}

/// tests/peers/smtplib_tls.py: [`test_message`] over `mode` TLS to 127.0.0.1,
/// trusting only `ca`; returns what the script reports.
fn smtplib_tls(sink: &Sink, mode: &str, ca: &Path) -> serde_json::Value {
    let file = write_file(sink.dir.path(), "m.eml", &test_message());
    let port = sink.addr.port().to_string();
    let script = peer_script("smtplib_tls.py");
    let out = run_peer("python3", &[path_str(&script), mode, "127.0.0.1", &port, path_str(ca), path_str(&file)], None);
    assert_success(&out, &format!("smtplib_tls.py {mode}"));
    serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

#[test]
fn smtplib_over_starttls_and_implicit_tls_delivers_byte_identical_messages() {
    for mode in ["starttls", "implicit"] {
        let sink = Sink::start(&["--tls", mode]);
        let report = smtplib_tls(&sink, mode, &sink.ca());
        assert!(report["san"].to_string().contains("127.0.0.1"), "a leaf for the address: {report}");
        assert_eq!(sink.saved(1), [test_message()], "{mode}");
    }
}

#[test]
fn curl_over_implicit_tls_by_name_gets_a_certificate_for_that_name() {
    let sink = Sink::start(&["--tls", "implicit", "--user", ACCOUNT]);
    let url = format!("smtps://localhost:{}/curl.test", sink.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", sink.addr.port());
    let ca = sink.ca();
    let out = curl(&sink, &url, &["--cacert", path_str(&ca), "--resolve", &resolve]);
    assert_success(&out, "curl smtps://");
    assert!(stderr(&out).contains("subject: CN=localhost"), "{}", output_text(&out));
    assert_eq!(sink.saved(1), [test_message()]);
}

#[test]
fn a_given_certificate_is_presented_instead_of_the_local_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "own");
    let sink = Sink::start(&["--tls", "implicit", "--cert", path_str(&cert), "--key", path_str(&key)]);
    let report = smtplib_tls(&sink, "implicit", &cert);
    assert!(report["subject"].to_string().contains("localhost"), "the given certificate: {report}");
    assert!(!sink.ca().exists(), "no local CA is made when --cert is given");
}

// ---------------------------------------------------------------------------
// Process: signals and startup errors
// ---------------------------------------------------------------------------

#[test]
fn sigterm_and_sigint_exit_0() {
    for name in ["TERM", "INT"] {
        let mut sink = Sink::start(&["--tls", "off"]);
        signal(&sink.child.child, name);
        let status = wait_exit(&mut sink.child.child);
        assert!(status.success(), "SIG{name}: {status}");
    }
}

/// Runs `smtptap sink ARGS` expecting it to fail at once; returns its stderr.
fn sink_fails(args: &[&str]) -> String {
    let out = run_peer(BIN, &[&["sink"], args].concat(), None);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(stdout(&out).is_empty(), "no readiness line: {}", stdout(&out));
    stderr(&out)
}

#[test]
fn startup_errors_say_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = sink_fails(&["--tls", "off", "--listen", &addr]);
    assert!(err.contains(&format!("cannot listen on {addr}")) && err.contains("--listen"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "a-file", b"");
    let err = sink_fails(&["--tls", "off", "--listen", "127.0.0.1:0", "--save-dir", path_str(&file)]);
    assert!(err.contains("cannot save messages in") && err.contains("--save-dir"), "{err}");

    let err = sink_fails(&["--require-auth"]);
    assert!(err.contains("--user"), "{err}");
    let err = sink_fails(&["--user", "no-colon"]);
    assert!(err.contains("expected NAME:PASSWORD"), "{err}");
    for value in [":hunter2", "hunter2"] {
        let err = sink_fails(&["--user", value]);
        assert!(err.contains("expected NAME:PASSWORD") && !err.contains("hunter2"), "the password echoed: {err}");
    }
}

// ---------------------------------------------------------------------------
// The proxy's built-in upstream is unchanged
// ---------------------------------------------------------------------------

#[test]
fn proxy_builtin_upstream_offers_no_auth_and_accepts_mail() {
    let proxy = Proxy::start(&PLAINTEXT);
    let server = proxy.addr.to_string();
    let out = run_peer("swaks", &["--server", &server, "--from", FROM, "--to", TO, "--helo", "swaks.test"], None);
    assert_success(&out, "swaks through the proxy");
    let transcript = stdout(&out);
    assert!(!transcript.contains("AUTH"), "{transcript}");
    assert!(transcript.contains("<-  250 2.0.0 Ok: queued as"), "{transcript}");
    let sessions = proxy.sessions(1);
    assert!(summary(&sessions[0]).contains(&("-".to_owned(), 250)), "the message was accepted");
}

/// 40 MiB through the sink: saved unchanged, while the sink's peak memory
/// stays well below the message's size.
#[test]
fn a_large_message_is_streamed_to_disk_unchanged() {
    let sink = Sink::start(&["--tls", "off"]);
    let line = "0123456789 .abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n.";
    let message = [b"Subject: large\r\n\r\n".to_vec(), line.repeat(512 * 1024).into_bytes(), b"\r\n".to_vec()].concat();
    let file = write_file(sink.dir.path(), "large.eml", &message);
    let port = sink.addr.port().to_string();
    let script = peer_script("smtplib_send.py");
    let out = run_peer("python3", &[path_str(&script), "127.0.0.1", &port, FROM, TO, path_str(&file)], None);
    assert_success(&out, "smtplib_send.py with a large message");
    assert!(sink.saved(1)[0] == message, "the saved message differs from the one sent");
    let status = std::fs::read_to_string(format!("/proc/{}/status", sink.child.child.id())).unwrap();
    let peak_kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    assert!(
        peak_kib < 32 * 1024,
        "the sink held the message in memory: peak {peak_kib} KiB for {} bytes",
        message.len()
    );
}
