//! `smtptap serve`: sessions recorded through the real proxy from real
//! clients (swaks, Python smtplib, a hand-written client; plaintext,
//! STARTTLS, AUTH PLAIN and LOGIN into aiosmtpd) are served back, and the
//! same client run again against serve succeeds with no divergence. Clients
//! that depart from the recording get the recorded reply (other arguments) or
//! `503` (another verb), and serve reports the exact line.

mod common;

use common::*;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// A running `smtptap serve` on 127.0.0.1:0 with its CA in a temp dir;
/// killed on drop.
struct Serve {
    child: ChildGuard,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl Serve {
    fn start(recording: &Path, args: &[&str]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr");
        let mut child = ChildGuard::spawn(
            Command::new(BIN)
                .arg("serve")
                .arg(recording)
                .args(["--listen", "127.0.0.1:0", "--ca-dir"])
                .arg(dir.path().join("certs"))
                .args(args)
                .env("RUST_LOG", "smtptap=debug")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(File::create(&stderr).unwrap()),
            "smtptap serve",
        );
        let out = child.child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let store = lines.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("address"));
                }
                store.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("smtptap serve did not start listening; stderr:\n{}", read_text(&stderr)));
        Serve { child, addr, lines, reader: Some(reader), dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.pem")
    }

    fn stderr(&self) -> String {
        read_text(&self.dir.path().join("stderr"))
    }

    /// Waits until a line starting with `prefix` is printed; returns it.
    fn wait_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "no line `{prefix}…`; stdout:\n{}", self.output());
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit; its exit code and everything it printed.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = wait_exit(&mut self.child.child);
        self.reader.take().unwrap().join().unwrap();
        (status.code(), self.output())
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// Runs one client through `proxy` and returns the path of its recording.
fn recording(proxy: &Proxy) -> PathBuf {
    proxy.sessions(1);
    let mut files: Vec<PathBuf> = std::fs::read_dir(proxy.record_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.remove(0)
}

/// The `seq` of the first exchange with `verb` in the recording.
fn seq_of(path: &Path, verb: &str) -> u64 {
    let records = read_records(path);
    exchanges(&records).iter().find(|e| e["command"]["verb"] == verb).expect(verb)["seq"].as_u64().unwrap()
}

fn swaks(addr: SocketAddr, extra: &[&str]) -> std::process::Output {
    let server = addr.to_string();
    let mut args = vec!["--server", server.as_str(), "--helo", "swaks.test", "--from", FROM, "--to", TO];
    args.extend_from_slice(extra);
    run_peer("swaks", &args, None)
}

/// tests/peers/smtplib_tls.py: `message` over `mode` TLS to `addr`, trusting only `ca`.
fn smtplib_tls(mode: &str, addr: SocketAddr, ca: &Path, message: &Path) -> std::process::Output {
    let (script, port) = (peer_script("smtplib_tls.py"), addr.port().to_string());
    run_peer("python3", &[path_str(&script), mode, "127.0.0.1", &port, path_str(ca), path_str(message)], None)
}

/// The summary line of connection `n` says `diverged` divergences.
fn assert_summary(output: &str, n: usize, diverged: usize) {
    let prefix = format!("connection {n}: ");
    let line = output.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no summary:\n{output}"));
    assert!(line.ends_with(&format!(" commands, {diverged} diverged")), "{line}");
}

#[test]
fn swaks_and_smtplib_sessions_are_served_back_without_divergence() {
    let proxy = Proxy::start(&PLAINTEXT);
    assert_success(&swaks(proxy.addr, &[]), "swaks through the proxy");
    let recorded = recording(&proxy);
    let serve = Serve::start(&recorded, &["--once"]);
    let out = swaks(serve.addr, &[]);
    assert_success(&out, "swaks against serve");
    assert!(stdout(&out).contains("<-  250 2.0.0 Ok: queued as"), "{}", output_text(&out));
    let (code, output) = serve.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_summary(&output, 1, 0);
    assert_eq!(output.lines().count(), 2, "the readiness and summary lines only:\n{output}");

    let dir = tempfile::tempdir().unwrap();
    let message = write_file(dir.path(), "m.eml", b"Subject: hi\r\n\r\n.dot first\r\nbody\r\n");
    let proxy = Proxy::start(&PLAINTEXT);
    let script = peer_script("smtplib_send.py");
    let send = |addr: SocketAddr| {
        let port = addr.port().to_string();
        run_peer("python3", &[path_str(&script), "127.0.0.1", &port, FROM, TO, path_str(&message)], None)
    };
    assert_success(&send(proxy.addr), "smtplib through the proxy");
    let serve = Serve::start(&recording(&proxy), &["--once"]);
    assert_success(&send(serve.addr), "smtplib against serve");
    let (code, output) = serve.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_summary(&output, 1, 0);
}

#[test]
fn a_pipelining_client_gets_its_replies_in_order() {
    let proxy = Proxy::start(&PLAINTEXT);
    let pipelined = ["--pipeline", "--body", ".leading dot\n..two\nend"];
    assert_success(&swaks(proxy.addr, &pipelined), "swaks --pipeline through the proxy");
    let recorded = recording(&proxy);
    let records = read_records(&recorded);
    assert!(exchanges(&records).iter().any(|e| e["pipelined"] == true), "swaks did not pipeline");
    let serve = Serve::start(&recorded, &["--once"]);
    assert_success(&swaks(serve.addr, &pipelined), "swaks --pipeline against serve");
    let (code, output) = serve.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_summary(&output, 1, 0);
}

#[test]
fn another_recipient_is_answered_as_recorded_and_reported() {
    let proxy = Proxy::start(&PLAINTEXT);
    assert_success(&swaks(proxy.addr, &[]), "swaks through the proxy");
    let recorded = recording(&proxy);
    let rcpt = seq_of(&recorded, "RCPT");
    let serve = Serve::start(&recorded, &["--once"]);
    assert_success(&swaks(serve.addr, &["--to", "other@y.test"]), "swaks against serve");
    let (code, output) = serve.finish();
    assert_eq!(code, Some(1), "{output}");
    let want = format!("connection 1 #{rcpt} expected RCPT TO:<{TO}>  got RCPT TO:<other@y.test>");
    assert!(output.lines().any(|l| l == want), "no line {want:?} in:\n{output}");
    assert_summary(&output, 1, 1);
}

#[test]
fn another_verb_gets_503_and_a_client_back_on_track_finishes() {
    let proxy = Proxy::start(&PLAINTEXT);
    assert_success(&swaks(proxy.addr, &[]), "swaks through the proxy");
    let recorded = recording(&proxy);
    let mail = seq_of(&recorded, "MAIL");
    let serve = Serve::start(&recorded, &["--once"]);

    let mut client = RawClient::connect(serve.addr);
    client.read_replies(1);
    client.send(b"EHLO swaks.test\r\n");
    client.read_replies(2);
    client.send(format!("RCPT TO:<{TO}>\r\n").as_bytes());
    let replies = client.read_replies(3);
    assert_eq!(replies[2], "503 5.5.1 Bad sequence of commands (recording expects MAIL here)");
    let want = format!("connection 1 #{mail} expected MAIL FROM:<{FROM}>  got RCPT TO:<{TO}>");
    assert_eq!(serve.wait_line("connection 1 #"), want);
    // Back on track: the rest of the recording, message included.
    client.send(format!("MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n").as_bytes());
    let replies = client.read_replies(6);
    assert!(replies[5].starts_with("354 "), "{replies:?}");
    client.send(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    let all = String::from_utf8(client.read_to_close()).unwrap();
    assert!(all.contains("\r\n250 2.0.0 Ok: queued as ") && all.ends_with("\r\n221 2.0.0 Bye\r\n"), "{all}");
    let (code, output) = serve.finish();
    assert_eq!(code, Some(1), "{output}");
    assert_summary(&output, 1, 1);
}

#[test]
fn starttls_is_served_with_a_certificate_from_the_ca_dir() {
    let dir = tempfile::tempdir().unwrap();
    let message = write_file(dir.path(), "m.eml", b"Subject: tls\r\n\r\nhello\r\n");
    let proxy = Proxy::start(&[]);
    let send = |addr, ca: &Path| smtplib_tls("starttls", addr, ca, &message);
    assert_success(&send(proxy.addr, &proxy.ca_cert()), "smtplib STARTTLS through the proxy");
    let recorded = recording(&proxy);
    assert!(seq_of(&recorded, "STARTTLS") > 0);

    let serve = Serve::start(&recorded, &["--once"]);
    let out = send(serve.addr, &serve.ca());
    assert_success(&out, "smtplib STARTTLS against serve");
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("smtplib_tls.py JSON");
    let before = facts["ehlo_before"].as_array().unwrap();
    let after = facts["ehlo_after"].as_array().unwrap();
    assert!(before.iter().any(|k| k == "STARTTLS") && !after.iter().any(|k| k == "STARTTLS"), "{facts}");
    let (code, output) = serve.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_summary(&output, 1, 0);
}

#[test]
fn implicit_tls_is_served_as_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let message = write_file(dir.path(), "m.eml", b"Subject: implicit\r\n\r\nhello\r\n");
    let proxy = Proxy::start(&["--client-tls", "implicit"]);
    let send = |addr, ca: &Path| smtplib_tls("implicit", addr, ca, &message);
    assert_success(&send(proxy.addr, &proxy.ca_cert()), "smtplib implicit TLS through the proxy");
    let serve = Serve::start(&recording(&proxy), &["--once"]);
    assert_success(&send(serve.addr, &serve.ca()), "smtplib implicit TLS against serve");
    let (code, output) = serve.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_summary(&output, 1, 0);
}

#[test]
fn starttls_can_be_served_for_a_plaintext_recording() {
    let proxy = Proxy::start(&PLAINTEXT);
    assert_success(&swaks(proxy.addr, &[]), "swaks through the proxy");
    let serve = Serve::start(&recording(&proxy), &["--once", "--tls", "starttls"]);
    let ca = serve.ca();
    let out = swaks(serve.addr, &["--tls", "--tls-verify", "--tls-ca-path", path_str(&ca)]);
    assert_success(&out, "swaks STARTTLS against serve");
    assert!(stdout(&out).contains("<~  250 2.0.0 Ok: queued as"), "{}", output_text(&out));
    let (code, output) = serve.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_summary(&output, 1, 0);
}

#[test]
fn auth_plain_and_login_are_served_whatever_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let credentials = write_file(dir.path(), "credentials", b"ann@x.test\ts3cr3t-pw\n");
    let mut cmd = Command::new("python3");
    cmd.arg(peer_script("aiosmtpd_auth.py")).arg("none").arg(&out).arg(&credentials);
    let (_upstream, upstream) = spawn_ready_peer(&mut cmd, "aiosmtpd_auth.py", &dir.path().join("stderr"));

    for mech in ["PLAIN", "LOGIN"] {
        let auth = |password| ["--auth", mech, "--auth-user", "ann@x.test", "--auth-password", password];
        let proxy = Proxy::start(&[&PLAINTEXT[..], &["--upstream", &upstream.to_string()]].concat());
        assert_success(&swaks(proxy.addr, &auth("s3cr3t-pw")), "swaks AUTH through the proxy");
        let recorded = recording(&proxy);
        assert!(seq_of(&recorded, "AUTH") > 0);
        assert!(!read_text(&recorded).contains("s3cr3t"), "the recording holds the password");

        // The secret is redacted in the recording, so any password is accepted.
        let serve = Serve::start(&recorded, &["--once"]);
        let client = swaks(serve.addr, &auth("another"));
        assert_success(&client, "swaks AUTH against serve");
        assert!(stdout(&client).contains("<-  235 "), "{}", output_text(&client));
        serve.wait_line("connection 1: ");
        let log = serve.stderr();
        let (code, output) = serve.finish();
        assert_eq!(code, Some(0), "AUTH {mech}: {output}");
        assert_summary(&output, 1, 0);
        assert!(!output.contains("another"), "{output}");
        // The client sends it in base64: look for every form, in the output and the debug log.
        for form in secret_forms("another") {
            assert!(!output.contains(&form) && !log.contains(&form), "AUTH {mech}: the password shown ({form})");
        }
    }
}

#[test]
fn repeated_connections_each_replay_the_recording_until_a_signal() {
    let proxy = Proxy::start(&PLAINTEXT);
    assert_success(&swaks(proxy.addr, &[]), "swaks through the proxy");
    let serve = Serve::start(&recording(&proxy), &[]);
    assert_success(&swaks(serve.addr, &[]), "swaks, first connection");
    serve.wait_line("connection 1: ");
    assert_success(&swaks(serve.addr, &["--to", "c@y.test"]), "swaks, second connection");
    serve.wait_line("connection 2: ");
    signal(&serve.child.child, "TERM");
    let stderr = serve.stderr();
    let (code, output) = serve.finish();
    assert_eq!(code, Some(0), "{output}\n{stderr}");
    assert_summary(&output, 1, 0);
    assert_summary(&output, 2, 1);
    assert!(output.contains("connection 2 #") && output.contains("got RCPT TO:<c@y.test>"), "{output}");
}

#[test]
fn a_file_that_is_no_recording_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = write_file(dir.path(), "notes.jsonl", b"hello world\n");
    let out = Command::new(BIN).args(["serve", path_str(&junk), "--listen", "127.0.0.1:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(stderr(&out).contains("not an smtptap recording"), "{}", output_text(&out));
    assert!(stdout(&out).is_empty(), "no readiness line: {}", output_text(&out));
}
