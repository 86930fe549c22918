//! `smtptap replay`: sessions recorded through the real proxy from real
//! clients (swaks, Python's smtplib, a hand-written client) are replayed
//! against a fresh server of the same kind — the built-in one, aiosmtpd with
//! STARTTLS and AUTH (PLAIN, LOGIN, CRAM-MD5) or implicit TLS — which must
//! receive the very bytes and messages the first one did, and against servers
//! whose rules changed (a recipient denied, another password): exit 1 and the
//! differing line. Load mode runs against Postfix's smtp-sink and ends by
//! itself. Recordings that cannot be replayed are refused before connecting.

mod common;

use common::*;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};

fn replay(args: &[&str]) -> Output {
    replay_env(args, &[])
}

/// `smtptap replay ARGS` with environment variables set.
fn replay_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("replay").args(args).env_remove(PASSWORD_VAR);
    cmd.envs(env.iter().copied()).output().expect("run smtptap replay")
}

/// The environment variable the tests pass passwords in.
const PASSWORD_VAR: &str = "SMTPTAP_TEST_PASSWORD";
const USER: &str = "ann@local.test";
const PASSWORD: &str = "correct horse";

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

/// Records swaks (plain, and pipelined to two recipients) and the
/// hand-written session through a plaintext proxy into a built-in server;
/// returns the proxy and that server.
fn record_sessions() -> (Proxy, CaptureServer) {
    let upstream = CaptureServer::start();
    let target = upstream.addr.to_string();
    let proxy = Proxy::start(&[&PLAINTEXT[..], &["--upstream", &target]].concat());
    swaks(proxy.addr, &[]);
    swaks(proxy.addr, &["--pipeline", "--to", "b@y.test,c@y.test", "--body", ".leading dot\n..two\nend"]);
    raw_session(proxy.addr);
    proxy.sessions(3);
    (proxy, upstream)
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn replay_against_a_fresh_builtin_server_matches_and_sends_the_same_bytes() {
    let (proxy, upstream) = record_sessions();
    let recorded = sorted(upstream.wait_connections(3));

    let fresh = CaptureServer::start();
    let report = proxy.dir.path().join("report.json");
    let junit = proxy.dir.path().join("junit.xml");
    let target = fresh.addr.to_string();
    let out = replay(&[
        path_str(&proxy.record_dir()),
        "--target",
        &target,
        "--report",
        path_str(&report),
        "--junit",
        path_str(&junit),
    ]);
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
    assert!(report.get("load").is_none(), "no load figures outside load mode");

    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(junit.contains(r#"tests="3" failures="0" errors="0""#), "{junit}");
    assert_eq!(junit.matches(r#"classname="smtptap.replay""#).count(), 3, "{junit}");
    assert!(!junit.contains("<failure") && !junit.contains("<error"), "{junit}");
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
fn a_missing_secret_is_exit_2_before_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let out = replay(&[&fixture("swaks-auth-login-failed.jsonl"), "--target", &target]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("exchange #6: AUTH LOGIN for ann@local.test needs the password, which the recording redacted")
            && err.contains("--auth-password-env VAR"),
        "{err}"
    );
    assert!(err.contains("nothing was sent"), "{err}");

    let out = replay(&[
        &fixture("swaks-auth-login-failed.jsonl"),
        "--target",
        &target,
        "--auth-password-env",
        "NO_SUCH_VAR_X",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(stderr(&out).contains("the environment variable NO_SUCH_VAR_X is not set"), "{}", output_text(&out));
    assert!(!connected(&listener), "replay connected although it could not run");
}

#[test]
fn tls_off_replays_a_starttls_recording_in_plaintext() {
    let fresh = CaptureServer::start();
    let out = replay(&[&fixture("swaks-pipeline.jsonl"), "--target", &fresh.addr.to_string(), "--tls", "off"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stderr(&out).contains("STARTTLS left out (--tls off)"), "{}", output_text(&out));
    let received = String::from_utf8(fresh.wait_connections(1).remove(0)).unwrap();
    assert!(
        !received.contains("STARTTLS") && received.starts_with("EHLO swaks.test\r\nEHLO swaks.test\r\n"),
        "{received}"
    );
}

#[test]
fn a_recording_without_bodies_sends_placeholders_of_the_recorded_size() {
    let upstream = CaptureServer::start();
    let target = upstream.addr.to_string();
    let proxy = Proxy::start(&[&PLAINTEXT[..], &["--upstream", &target, "--no-bodies"]].concat());
    swaks(proxy.addr, &["--header", "Subject: kept"]);
    let session = proxy.sessions(1).remove(0);
    let size = exchanges(&session).iter().find_map(|e| e["message"]["size"].as_u64()).expect("a message");

    let fresh = CaptureServer::start();
    let out = replay(&[path_str(&proxy.record_dir()), "--target", &fresh.addr.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("the body was not recorded (--no-bodies); sending a placeholder"),
        "{}",
        output_text(&out)
    );
    let received = fresh.wait_connections(1).remove(0);
    let text = String::from_utf8(received).unwrap();
    let start = text.find("DATA\r\n").unwrap() + 6;
    let end = text.rfind("\r\n.\r\n").unwrap() + 2;
    let content = &text[start..end];
    assert_eq!(content.len() as u64, size, "{content}");
    assert!(content.contains("Subject: kept\r\n") && content.contains("[smtptap replay: placeholder"), "{content}");
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
    let err = stderr(&out);
    assert!(err.contains("notes.jsonl") && err.contains("not an smtptap recording"), "{err}");
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

// ---------------------------------------------------------------------------
// aiosmtpd: STARTTLS, AUTH and implicit TLS
// ---------------------------------------------------------------------------

fn swaks_auth(proxy: SocketAddr, mechanism: &str, extra: &[&str]) {
    let args = [&["--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD][..], extra].concat();
    swaks(proxy, &args);
}

/// An aiosmtpd peer from tests/peers with its own self-signed certificate,
/// storing messages and its log under `<dir>/out`:
/// - `aiosmtpd_auth.py` (STARTTLS and AUTH for `USER` with one password),
///   logging `tls=0|1 MECHANISM USER ok|fail` per AUTH in `auth.log`;
/// - `aiosmtpd_tls.py` in a TLS mode, logging `tls=0|1 LINE` per command in
///   `commands.log`.
struct TlsPeer {
    // Fields drop in order: the process dies before its directory goes.
    _child: ChildGuard,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    cert: std::path::PathBuf,
}

impl TlsPeer {
    fn auth(password: &str) -> TlsPeer {
        TlsPeer::start("aiosmtpd_auth.py", "starttls", Some(password))
    }

    fn tls(mode: &str) -> TlsPeer {
        TlsPeer::start("aiosmtpd_tls.py", mode, None)
    }

    fn start(script: &str, mode: &str, password: Option<&str>) -> TlsPeer {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let (cert, key) = self_signed(dir.path(), "server");
        let mut cmd = Command::new("python3");
        cmd.arg(peer_script(script)).arg(mode).arg(&out);
        if let Some(password) = password {
            cmd.arg(write_file(dir.path(), "credentials", format!("{USER}\t{password}\n").as_bytes()));
        }
        cmd.arg(&cert).arg(&key);
        let (child, addr) = spawn_ready_peer(&mut cmd, script, &dir.path().join("stderr"));
        TlsPeer { _child: child, addr, dir, cert }
    }

    fn messages(&self, n: usize) -> Vec<Vec<u8>> {
        wait_messages(&self.dir.path().join("out"), n, &self.dir.path().join("stderr"))
    }

    /// The lines of `out/<name>`.
    fn log(&self, name: &str) -> Vec<String> {
        read_text(&self.dir.path().join("out").join(name)).lines().map(str::to_owned).collect()
    }

    /// `smtptap proxy` in front of this server: plaintext towards clients,
    /// `mode` towards the server, whose certificate it trusts.
    fn proxy_for_plaintext_clients(&self, mode: &str) -> Proxy {
        let upstream = self.addr.to_string();
        let cert = path_str(&self.cert);
        Proxy::start(&["--upstream", &upstream, "--upstream-ca", cert, "--client-tls", "off", "--upstream-tls", mode])
    }

    /// Replays `dir` against this server, trusting its certificate.
    fn replay(&self, dir: &Path, extra: &[&str]) -> Output {
        let target = self.addr.to_string();
        let args = [path_str(dir), "--target", &target, "--target-ca", path_str(&self.cert)];
        replay(&[&args[..], extra].concat())
    }
}

#[test]
fn starttls_and_auth_sessions_replay_into_a_fresh_aiosmtpd_byte_for_byte() {
    let first = TlsPeer::auth(PASSWORD);
    let upstream = first.addr.to_string();
    let proxy = Proxy::start(&["--upstream", &upstream, "--upstream-ca", path_str(&first.cert)]);
    swaks_auth(proxy.addr, "PLAIN", &["--tls"]);
    swaks_auth(proxy.addr, "LOGIN", &["--tls", "--to", "b@y.test,c@y.test"]);
    swaks_auth(proxy.addr, "CRAM-MD5", &[]);
    let body = write_file(proxy.dir.path(), "body.eml", b"Subject: smtplib\r\n\r\n.dot\r\nend\r\n");
    let port = proxy.addr.port().to_string();
    let out = run_peer(
        "python3",
        &[path_str(&peer_script("smtplib_send.py")), "127.0.0.1", &port, FROM, TO, path_str(&body)],
        None,
    );
    assert_success(&out, "smtplib_send.py");
    proxy.sessions(4);
    let recorded = first.messages(4);
    // In replay order: by file name.
    let sessions: Vec<_> = recording_files(&proxy.record_dir()).iter().map(|f| read_records(f)).collect();
    let plain =
        sessions.iter().position(|s| exchanges(s).iter().any(|e| e["command"]["line"] == "AUTH PLAIN <redacted>"));
    let plain = plain.expect("the AUTH PLAIN session");
    let auth = exchanges(&sessions[plain]).iter().find(|e| e["command"]["verb"] == "AUTH").unwrap()["seq"].clone();
    let dir = path_str(&proxy.record_dir()).to_owned();
    // The JUnit report at `junit`, the JSON one beside it.
    let replay_to = |server: &TlsPeer, junit: &Path| {
        let target = server.addr.to_string();
        let args =
            [&dir, "--target", &target, "--target-ca", path_str(&server.cert), "--auth-password-env", PASSWORD_VAR];
        let report = junit.with_file_name("report.json");
        let reports = ["--junit", path_str(junit), "--report", path_str(&report)];
        replay_env(&[&args[..], &reports[..]].concat(), &[(PASSWORD_VAR, PASSWORD)])
    };

    // Same rules: every reply matches; the same messages arrive, byte for
    // byte, and the same logins over the same TLS.
    let fresh = TlsPeer::auth(PASSWORD);
    let junit = proxy.dir.path().join("junit.xml");
    let out = replay_to(&fresh, &junit);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stdout(&out).starts_with("4 sessions, ") && stdout(&out).contains(" 0 differed, 0 errors"));
    assert_eq!(sorted(fresh.messages(4)), sorted(recorded));
    assert_eq!(sorted(fresh.log("auth.log")), sorted(first.log("auth.log")));
    assert_eq!(fresh.log("auth.log").len(), 3, "{:?}", fresh.log("auth.log"));
    assert!(std::fs::read_to_string(&junit).unwrap().contains(r#"tests="4" failures="0" errors="0""#));

    // Another password: the AUTH reply differs, and says how.
    let changed = TlsPeer::auth("another password");
    let out = replay_to(&changed, &junit);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let want = format!(
        "session {} #{auth} AUTH PLAIN <redacted>  expected 235 2.7.0  got 535 5.7.8 Authentication credentials invalid",
        plain + 1
    );
    assert!(stdout(&out).lines().any(|l| l == want), "no line {want:?} in:\n{}", stdout(&out));
    assert!(!stdout(&out).contains(PASSWORD), "{}", stdout(&out));
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(junit.contains(r#"tests="4" failures="3" errors="0""#), "{junit}");
    assert!(junit.contains(&want.replace('<', "&lt;").replace('>', "&gt;")), "{junit}");
    // The password given, in no form, in the output or the reports.
    let report = read_text(&proxy.dir.path().join("report.json"));
    assert!(report.contains(&want), "{report}");
    let written = [("stdout", stdout(&out)), ("stderr", stderr(&out)), ("junit", junit), ("report", report)];
    for form in secret_forms(PASSWORD) {
        for (what, text) in &written {
            assert!(!text.contains(&form), "{what} holds the password as {form:?}:\n{text}");
        }
    }
}

#[test]
fn implicit_tls_and_the_proxys_own_starttls_are_replayed_as_the_server_saw_them() {
    for mode in ["implicit", "starttls"] {
        // A plaintext client; the proxy speaks `mode` to the server.
        let first = TlsPeer::tls(mode);
        let proxy = first.proxy_for_plaintext_clients(mode);
        swaks(proxy.addr, &[]);
        proxy.sessions(1);
        let recorded = first.messages(1);

        let fresh = TlsPeer::tls(mode);
        let out = fresh.replay(&proxy.record_dir(), &[]);
        assert_eq!(out.status.code(), Some(0), "{mode}: {}", output_text(&out));
        assert_eq!(fresh.messages(1), recorded, "{mode}");
        assert_eq!(fresh.log("commands.log"), first.log("commands.log"), "{mode}");
        let inside = first.log("commands.log").iter().filter(|c| c.starts_with("tls=1 ")).count();
        assert!(inside >= 4, "{mode}: the client's commands went inside TLS: {:?}", first.log("commands.log"));

        if mode == "implicit" {
            // The same recording with STARTTLS asked for: the replay upgrades
            // right after the greeting.
            let starttls = TlsPeer::tls("starttls");
            let out = starttls.replay(&proxy.record_dir(), &["--tls", "starttls"]);
            assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
            let commands = starttls.log("commands.log");
            assert_eq!(
                commands[..3],
                ["tls=0 EHLO swaks.test", "tls=0 STARTTLS", "tls=1 EHLO swaks.test"],
                "{commands:?}"
            );
            assert_eq!(starttls.messages(1), recorded);
        }
    }
}

#[test]
fn an_untrusted_target_certificate_is_exit_2_unless_insecure() {
    let first = TlsPeer::tls("implicit");
    let proxy = first.proxy_for_plaintext_clients("implicit");
    swaks(proxy.addr, &[]);
    proxy.sessions(1);
    let fresh = TlsPeer::tls("implicit");
    let target = fresh.addr.to_string();
    let out = replay(&[path_str(&proxy.record_dir()), "--target", &target]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(stdout(&out).contains("session 1 error: TLS handshake with the target failed"), "{}", output_text(&out));
    let out = replay(&[path_str(&proxy.record_dir()), "--target", &target, "--insecure"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stderr(&out).contains("warning: --insecure"), "{}", output_text(&out));
}

// ---------------------------------------------------------------------------
// Load mode
// ---------------------------------------------------------------------------

#[test]
fn load_mode_against_smtp_sink_prints_throughput_and_latencies_and_ends() {
    let sink = SmtpSink::start(&["-u", "nobody", "-c"], "smtp-sink");
    let upstream = sink.addr.to_string();
    let proxy = Proxy::start(&[&PLAINTEXT[..], &["--upstream", &upstream]].concat());
    swaks(proxy.addr, &[]);
    swaks(proxy.addr, &["--pipeline", "--to", "b@y.test,c@y.test"]);
    proxy.sessions(2);

    let fresh = SmtpSink::start(&["-u", "nobody", "-c"], "smtp-sink");
    let report = proxy.dir.path().join("report.json");
    let target = fresh.addr.to_string();
    let started = std::time::Instant::now();
    let out = replay(&[
        path_str(&proxy.record_dir()),
        "--target",
        &target,
        "--concurrency",
        "8",
        "--repeat",
        "100",
        "--report",
        path_str(&report),
    ]);
    eprintln!("{}", stdout(&out));
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "a bounded run ends by itself");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("200 sessions, ") && lines[0].ends_with(" 0 differed, 0 errors"), "{text}");
    assert!(
        lines[1].starts_with("load: ") && lines[1].contains(" sessions/s, ") && lines[1].contains("(200 messages)")
    );
    assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["latency", "ms", "count", "p50", "p90", "p99", "max"]);
    let verbs: Vec<&str> = lines[3..].iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(verbs, ["connect", "greeting", "EHLO", "MAIL", "RCPT", "DATA", "message", "QUIT"], "{text}");
    assert!(stderr(&out).is_empty(), "no progress bar when stderr is not a terminal: {}", stderr(&out));

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["sessions"], 200);
    assert_eq!(report["load"]["messages"], 200);
    assert_eq!(report["load"]["concurrency"], 8);
    assert!(report["load"]["sessions_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(report["results"].as_array().unwrap().len(), 2);
    assert_eq!(report["results"][0]["runs"], 100);
    let rcpt = report["load"]["latency"].as_array().unwrap().iter().find(|r| r["verb"] == "RCPT").unwrap().clone();
    assert_eq!(rcpt["count"], 300);
    assert!(rcpt["p50_ms"].as_f64().unwrap() <= rcpt["p99_ms"].as_f64().unwrap());
}
