//! `smtptap replay`: sessions recorded through the real proxy from real
//! clients (swaks, a hand-written client) are replayed against a fresh
//! built-in server (every reply matches, and it receives the very bytes the
//! first one did) and against a server whose rules differ (aiosmtpd in
//! tests/peers/aiosmtpd_policy.py refuses to relay: exit 1 and the differing
//! line). Recordings that cannot be replayed are refused before connecting.

mod common;

use common::*;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};

fn replay(args: &[&str]) -> Output {
    Command::new(BIN).arg("replay").args(args).output().expect("run smtptap replay")
}

fn swaks(addr: SocketAddr, extra: &[&str]) -> Output {
    let server = addr.to_string();
    let mut args = vec!["--server", server.as_str(), "--helo", "swaks.test", "--from", FROM, "--to", TO];
    args.extend_from_slice(extra);
    let out = run_peer("swaks", &args, None);
    assert_success(&out, "swaks");
    out
}

/// A hand-written session: pipelined BDAT chunks, then DATA with dot-stuffed
/// lines and a bare LF.
fn raw_session(addr: SocketAddr) {
    let mut client = RawClient::connect(addr);
    client.read_replies(1);
    client.send(b"EHLO raw.test\r\n");
    client.read_replies(2);
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 10\r\nSubject: cBDAT 9 LAST\r\nhunks\r\n\r\n");
    client.read_replies(6);
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n");
    client.read_replies(9);
    client.send(b"Subject: dots\r\n\r\n..hidden\r\nbare\nlf\r\n...two\r\n.\r\n");
    client.read_replies(10);
    client.send(b"NOOP\r\nQUIT\r\n");
    client.read_to_close();
}

/// Records swaks (plain and pipelined) and the hand-written session through a
/// plaintext proxy into a built-in server; returns the proxy and that server.
fn record_sessions() -> (Proxy, CaptureServer) {
    let upstream = CaptureServer::start();
    let target = upstream.addr.to_string();
    let proxy = Proxy::start(&[&PLAINTEXT[..], &["--upstream", &target]].concat());
    swaks(proxy.addr, &[]);
    swaks(proxy.addr, &["--pipeline", "--body", ".leading dot\n..two\nend"]);
    raw_session(proxy.addr);
    proxy.sessions(3);
    (proxy, upstream)
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

#[test]
fn replay_against_a_fresh_builtin_server_matches_and_sends_the_same_bytes() {
    let (proxy, upstream) = record_sessions();
    let recorded = sorted(upstream.wait_connections(3));

    let fresh = CaptureServer::start();
    let report = proxy.dir.path().join("report.json");
    let out =
        replay(&[path_str(&proxy.record_dir()), "--target", &fresh.addr.to_string(), "--report", path_str(&report)]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let text = stdout(&out);
    assert!(text.contains("3 sessions, ") && text.contains("0 differed, 0 errors"), "{text}");
    assert_eq!(text.lines().count(), 1, "only the summary line: {text}");

    // The server got exactly what the clients sent the first time.
    let replayed = sorted(fresh.wait_connections(3));
    assert_eq!(replayed.len(), recorded.len());
    for (a, b) in recorded.iter().zip(&replayed) {
        assert_eq!(String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    }

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["sessions"], 3);
    assert_eq!(report["differed"], 0);
    assert_eq!(report["matched"], report["exchanges"]);
    assert_eq!(report["match"], "enhanced");
}

/// tests/peers/aiosmtpd_policy.py: relays only to local.test unless logged in.
fn policy_server() -> (ChildGuard, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let mut cmd = Command::new("python3");
    cmd.arg(peer_script("aiosmtpd_policy.py"));
    let (child, addr) = spawn_ready_peer(&mut cmd, "aiosmtpd_policy.py", &stderr);
    (child, addr, dir)
}

/// The `seq` of the first exchange with `verb` in the only recording in `dir`.
fn seq_of(dir: &Path, verb: &str) -> u64 {
    let session = &read_dir_sessions(dir)[0];
    exchanges(session).iter().find(|e| e["command"]["verb"] == verb).expect(verb)["seq"].as_u64().unwrap()
}

#[test]
fn replay_against_a_server_that_denies_relaying_reports_the_differing_line() {
    let upstream = CaptureServer::start();
    let proxy = Proxy::start(&[&PLAINTEXT[..], &["--upstream", &upstream.addr.to_string()]].concat());
    swaks(proxy.addr, &[]);
    proxy.sessions(1);
    let rcpt = seq_of(&proxy.record_dir(), "RCPT");
    let (_policy, addr, dir) = policy_server();
    let target = addr.to_string();

    let report = dir.path().join("report.json");
    let out = replay(&[path_str(&proxy.record_dir()), "--target", &target, "--report", path_str(&report)]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = stdout(&out);
    let want =
        format!("session 1 #{rcpt} RCPT TO:<{TO}>  expected 250 2.1.5  got 554 5.7.1 <{TO}>: Relay access denied");
    assert!(text.lines().any(|l| l == want), "no line {want:?} in:\n{text}");
    let summary = text.lines().last().unwrap();
    assert!(summary.starts_with("1 session, ") && !summary.contains(" 0 differed"), "{summary}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let differences = report["results"][0]["differences"].as_array().unwrap();
    let denied = differences.iter().find(|d| d["seq"] == rcpt).expect("the RCPT difference");
    assert_eq!(denied["line"], want.as_str());
    assert_eq!(denied["got"]["code"], 554);
    assert_eq!(denied["expected"]["enhanced"], "2.1.5");

    // Comparing codes only, aiosmtpd's replies without enhanced codes agree
    // until the recipient is refused; the message is then not sent.
    let out = replay(&[path_str(&proxy.record_dir()), "--target", &target, "--match", "code"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let want = format!("session 1 #{rcpt} RCPT TO:<{TO}>  expected 250  got 554 5.7.1 <{TO}>: Relay access denied");
    assert_eq!(lines[0], want, "{text}");
    assert!(lines.iter().any(|l| l.contains("DATA  expected 354  got 503")), "{text}");
    assert!(lines.iter().any(|l| l.contains("message not sent")), "{text}");
}

/// A listener that must not be connected to; true if someone did.
fn connected(listener: &TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    listener.accept().is_ok()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_redacted_secret_is_refused_before_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let out = replay(&[&fixture("swaks-auth-login-failed.jsonl"), "--target", &target]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("redacted AUTH secret") && err.contains("--auth-user") && err.contains("--auth-password-env"),
        "{err}"
    );
    assert!(err.contains("nothing was sent"), "{err}");
    assert!(!connected(&listener), "replay connected although it could not run");
}

#[test]
fn a_tls_recording_is_refused_unless_tls_off_is_asked_for() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let out = replay(&[&fixture("swaks-pipeline.jsonl"), "--target", &target]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let err = stderr(&out);
    assert!(err.contains("TLS replay is not implemented yet") && err.contains("--tls off"), "{err}");
    assert!(!connected(&listener));

    let out = replay(&[&fixture("swaks-pipeline.jsonl"), "--target", &target, "--tls", "starttls"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(stderr(&out).contains("not implemented yet"), "{}", output_text(&out));

    // In plaintext, without the STARTTLS, against the built-in server: all match.
    let fresh = CaptureServer::start();
    let out = replay(&[&fixture("swaks-pipeline.jsonl"), "--target", &fresh.addr.to_string(), "--tls", "off"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let received = String::from_utf8(fresh.wait_connections(1).remove(0)).unwrap();
    assert!(
        !received.contains("STARTTLS") && received.starts_with("EHLO swaks.test\r\nEHLO swaks.test\r\n"),
        "{received}"
    );
}

#[test]
fn what_is_not_a_recording_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = write_file(dir.path(), "notes.jsonl", b"hello world\n");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let out = replay(&[path_str(&junk), "--target", &target]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(stderr(&out).contains("not an smtptap recording"), "{}", output_text(&out));
    let out = replay(&[path_str(dir.path()), "--target", &target]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let recording = std::fs::read_to_string(fixture("raw-bdat.jsonl")).unwrap();
    let damaged =
        recording.replacen("\n{\"type\":\"exchange\",\"seq\":2,", "\n{garbage\n{\"type\":\"exchange\",\"seq\":2,", 1);
    assert_ne!(damaged, recording);
    let damaged = write_file(dir.path(), "damaged.jsonl", damaged.as_bytes());
    let out = replay(&[path_str(&damaged), "--target", &target]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("damaged.jsonl: damaged, cannot be replayed as recorded: line 4"),
        "{}",
        output_text(&out)
    );
    let empty = tempfile::tempdir().unwrap();
    let out = replay(&[path_str(empty.path()), "--target", &target]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(stderr(&out).contains("no recordings"), "{}", output_text(&out));
    assert!(!connected(&listener));
}

#[test]
fn an_unreachable_target_is_exit_2() {
    let out = replay(&[&fixture("raw-bdat.jsonl"), "--target", &dead_address().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let text = stdout(&out);
    assert!(text.starts_with("session 1 error: cannot connect to "), "{text}");
    assert!(text.contains("0 matched, 0 differed, 7 errors"), "{text}");
}
