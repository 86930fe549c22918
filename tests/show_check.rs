//! `smtptap show` and `smtptap check` on sessions captured through the real
//! proxy from real clients (swaks, smtplib, curl, a hand-written client),
//! against real upstreams (the built-in server, aiosmtpd with a submission
//! server's policies in tests/peers/aiosmtpd_policy.py, Postfix smtp-sink).
//!
//! 1. One test per finding: a captured session that triggers it, and clean
//!    sessions that trigger nothing.
//! 2. Golden tests: `show` and `check` on the committed recordings in
//!    tests/fixtures (captured by the same scenarios; regenerate them with
//!    `UPDATE_FIXTURES=1 cargo test --test show_check golden`), compared
//!    with tests/golden (rewrite them with `UPDATE_GOLDEN=1`).
//! 3. Tolerance: recordings cut short and with unknown fields are read;
//!    anything else is refused with exit code 2. `--follow`, colour, pipes.
//!
//! Every peer must be installed (scripts/test installs them); a missing one
//! fails its test. Each test owns its ports and temp dirs.

mod common;
use common::*;

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `smtptap ARGS` in the crate's directory, output piped.
fn smtptap(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(MANIFEST)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .expect("run smtptap")
}

/// A finding as `(rule, severity, seq)`.
type Found = (String, String, Option<u64>);

/// `smtptap check --format json PATH`: the exit code, each finding, and the document.
fn check_json(path: &Path) -> (i32, Vec<Found>, Value) {
    let out = smtptap(&["check", "--format", "json", path_str(path)]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    let findings = doc["recordings"][0]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (f["rule"].as_str().unwrap().to_owned(), f["severity"].as_str().unwrap().to_owned(), f["seq"].as_u64())
        })
        .collect();
    (out.status.code().expect("exit code"), findings, doc)
}

fn rules(findings: &[Found]) -> BTreeSet<String> {
    findings.iter().map(|f| f.0.clone()).collect()
}

fn set(rules: &[&str]) -> BTreeSet<String> {
    rules.iter().map(|r| (*r).to_owned()).collect()
}

/// The finding of `rule`; panics unless there is exactly one.
fn the<'a>(findings: &'a [Found], rule: &str) -> &'a Found {
    let found: Vec<_> = findings.iter().filter(|f| f.0 == rule).collect();
    assert_eq!(found.len(), 1, "one `{rule}` finding expected: {findings:?}");
    found[0]
}

/// `smtptap show ARGS`, which must succeed; its standard output.
fn show(args: &[&str]) -> String {
    let out = smtptap(&[&["show"], args].concat());
    assert_success(&out, "smtptap show");
    stdout(&out)
}

/// The `seq` of the first exchange in `path` whose command verb is `verb`
/// (`-` for the message content).
fn seq_of(path: &Path, verb: &str) -> u64 {
    read_records(path)
        .iter()
        .filter(|r| r["type"] == "exchange")
        .find(|e| match verb {
            "-" => e.get("message").is_some() && e["command"].is_null(),
            v => e["command"]["verb"] == v,
        })
        .unwrap_or_else(|| panic!("no {verb} exchange in {}", path.display()))["seq"]
        .as_u64()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

/// tests/peers/aiosmtpd_policy.py: AUTH for one user, relaying only after
/// login, optionally a SIZE limit or STARTTLS required.
struct Policy {
    _child: ChildGuard,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Policy {
    const USER: &str = "ann@local.test";
    const PASSWORD: &str = "s3cret-Pa55";

    fn start(extra: &[&str]) -> Policy {
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr = dir.path().join("stderr");
        let user = format!("{}:{}", Self::USER, Self::PASSWORD);
        let mut cmd = Command::new("python3");
        cmd.arg(peer_script("aiosmtpd_policy.py")).args(["--user", &user]).args(extra);
        let (child, addr) = spawn_ready_peer(&mut cmd, "aiosmtpd_policy.py", &stderr);
        Policy { _child: child, addr, _dir: dir }
    }
}

/// Postfix smtp-sink with `flags` (`-8`: no 8BITMIME, `-p`: no PIPELINING).
fn smtp_sink(flags: &[&str]) -> SmtpSink {
    let args = [flags, &["-u", "nobody", "-h", "sink.test"]].concat();
    SmtpSink::start(&args, "sink.test")
}

/// swaks against `addr` with `extra` flags; its output, whatever the status.
fn swaks(addr: SocketAddr, extra: &[&str]) -> Output {
    let server = addr.to_string();
    let mut args = vec!["--server", server.as_str(), "--helo", "swaks.test"];
    args.extend_from_slice(extra);
    run_peer("swaks", &args, None)
}

/// `--tls` verified against the proxy's CA.
fn swaks_tls(ca: &str) -> [&str; 4] {
    ["--tls", "--tls-verify", "--tls-ca-path", ca]
}

/// Python smtplib running `code` (the module is imported as `smtplib`, the
/// port is `PORT`).
fn smtplib(addr: SocketAddr, code: &str) -> Output {
    let script = format!("import smtplib, sys\nPORT = {}\n{code}", addr.port());
    run_peer("python3", &["-c", &script], None)
}

// ---------------------------------------------------------------------------
// Scenarios: each captures one session through the proxy
// ---------------------------------------------------------------------------

/// A captured session: its recording, with the processes that made it.
struct Captured {
    path: PathBuf,
    _proxy: Proxy,
    _peers: Vec<Box<dyn std::any::Any>>,
}

/// Waits for the proxy's one recording to end.
fn captured(proxy: Proxy, peers: Vec<Box<dyn std::any::Any>>) -> Captured {
    proxy.sessions(1);
    let files: Vec<PathBuf> = std::fs::read_dir(proxy.record_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(files.len(), 1);
    Captured { path: files[0].clone(), _proxy: proxy, _peers: peers }
}

fn ca(proxy: &Proxy) -> String {
    path_str(&proxy.ca_cert()).to_owned()
}

/// swaks with STARTTLS to the built-in server: the clean session.
fn swaks_starttls() -> Captured {
    let proxy = Proxy::start(&[]);
    let ca = ca(&proxy);
    let out = swaks(proxy.addr, &[&["--from", "ann@x.test", "--to", "bob@y.test"], &swaks_tls(&ca)[..]].concat());
    assert_success(&out, "swaks");
    captured(proxy, vec![])
}

/// swaks --pipeline with STARTTLS: MAIL, RCPT and DATA in one batch.
fn swaks_pipeline() -> Captured {
    let proxy = Proxy::start(&[]);
    let ca = ca(&proxy);
    let args = [&["--from", "ann@x.test", "--to", "bob@y.test", "--pipeline"], &swaks_tls(&ca)[..]].concat();
    assert_success(&swaks(proxy.addr, &args), "swaks");
    captured(proxy, vec![])
}

/// swaks logging in with AUTH PLAIN in plaintext, though STARTTLS was offered.
fn swaks_auth_plain_before_tls() -> Captured {
    let policy = Policy::start(&[]);
    let up = policy.addr.to_string();
    let proxy = Proxy::start(&["--upstream", &up, "--upstream-tls", "off"]);
    let args = [
        "--from",
        Policy::USER,
        "--to",
        "bob@remote.test",
        "--auth",
        "PLAIN",
        "--auth-user",
        Policy::USER,
        "--auth-password",
        Policy::PASSWORD,
    ];
    assert_success(&swaks(proxy.addr, &args), "swaks");
    captured(proxy, vec![Box::new(policy)])
}

/// swaks over STARTTLS with AUTH LOGIN and the wrong password.
fn swaks_auth_login_failed() -> Captured {
    let policy = Policy::start(&[]);
    let up = policy.addr.to_string();
    let proxy = Proxy::start(&["--upstream", &up, "--upstream-tls", "off"]);
    let ca = ca(&proxy);
    let auth = ["--auth", "LOGIN", "--auth-user", Policy::USER, "--auth-password", "wrong-password"];
    let args = [&["--from", Policy::USER, "--to", "bob@remote.test"], &auth[..], &swaks_tls(&ca)[..]].concat();
    let out = swaks(proxy.addr, &args);
    assert!(!out.status.success(), "the login must fail: {}", stdout(&out));
    captured(proxy, vec![Box::new(policy)])
}

/// swaks over STARTTLS without logging in, to another domain: relay denied.
fn swaks_relay_denied() -> Captured {
    let policy = Policy::start(&[]);
    let up = policy.addr.to_string();
    let proxy = Proxy::start(&["--upstream", &up, "--upstream-tls", "off"]);
    let ca = ca(&proxy);
    let args = [&["--from", Policy::USER, "--to", "bob@remote.test"], &swaks_tls(&ca)[..]].concat();
    let out = swaks(proxy.addr, &args);
    assert!(stdout(&out).contains("Relay access denied"), "{}", stdout(&out));
    captured(proxy, vec![Box::new(policy)])
}

/// swaks with a header From: that is not the envelope sender.
fn swaks_spoofed_from() -> Captured {
    let proxy = Proxy::start(&[]);
    let ca = ca(&proxy);
    let header = ["--from", "ann@x.test", "--to", "bob@y.test", "--header", "From: The Boss <boss@other.test>"];
    assert_success(&swaks(proxy.addr, &[&header[..], &swaks_tls(&ca)[..]].concat()), "swaks");
    captured(proxy, vec![])
}

/// swaks over STARTTLS without trusting smtptap's CA: the handshake fails.
fn swaks_untrusted_ca() -> Captured {
    let proxy = Proxy::start(&[]);
    let out = swaks(proxy.addr, &["--from", "ann@x.test", "--to", "bob@y.test", "--tls", "--tls-verify"]);
    assert!(!out.status.success(), "swaks must refuse the certificate: {}", stdout(&out));
    captured(proxy, vec![])
}

/// swaks sending more than the server's SIZE.
fn swaks_size_exceeded() -> Captured {
    let policy = Policy::start(&["--size", "2000"]);
    let up = policy.addr.to_string();
    let proxy = Proxy::start(&["--upstream", &up, "--upstream-tls", "off"]);
    let ca = ca(&proxy);
    let body = "a line of text that takes up some room in the message\n".repeat(60);
    let args = [&["--from", Policy::USER, "--to", "bob@local.test", "--body", &body], &swaks_tls(&ca)[..]].concat();
    let out = swaks(proxy.addr, &args);
    assert!(stdout(&out).contains("<~* 552"), "{}", stdout(&out));
    captured(proxy, vec![Box::new(policy)])
}

/// curl over STARTTLS uploading a message with no Date: or Message-ID:.
fn curl_no_date() -> Captured {
    let proxy = Proxy::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("message.eml");
    std::fs::write(
        &file,
        b"From: Ann <ann@x.test>\r\nTo: bob@y.test\r\nSubject: from curl\r\n\r\nHello from curl.\r\n",
    )
    .unwrap();
    let url = format!("smtp://localhost:{}/curl.test", proxy.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", proxy.addr.port());
    let ca = ca(&proxy);
    let out = run_peer(
        "curl",
        &[
            "-sS",
            "--max-time",
            "30",
            "--ssl-reqd",
            "--resolve",
            &resolve,
            "--cacert",
            &ca,
            "--url",
            &url,
            "--mail-from",
            "ann@x.test",
            "--mail-rcpt",
            "bob@y.test",
            "--upload-file",
            path_str(&file),
        ],
        None,
    );
    assert_success(&out, "curl");
    captured(proxy, vec![Box::new(dir)])
}

/// smtplib sending bytes with a bare LF, a bare CR, a long line and 8-bit
/// text to a server without 8BITMIME (smtp-sink -8).
fn smtplib_bare_lf() -> Captured {
    let sink = smtp_sink(&["-8"]);
    let up = sink.addr.to_string();
    let proxy = Proxy::start(&[&PLAINTEXT[..], &["--upstream", &up]].concat());
    let code = r#"
msg = (b"Date: Sat, 28 Nov 2026 19:36:24 +0000\r\nFrom: ann@x.test\r\nTo: bob@y.test\r\n"
       b"Subject: line endings\r\nMessage-ID: <lf@x.test>\r\n\r\n"
       b"first line ends in a bare LF\nsecond line\r\nan old Mac line\rstill the same line\r\n"
       + "Gr\u00fc\u00dfe, 8-bit text\r\n".encode() + b"x" * 1200 + b"\r\n")
with smtplib.SMTP("127.0.0.1", PORT, local_hostname="smtplib.test") as s:
    s.sendmail("ann@x.test", ["bob@y.test"], msg)
print("sent")
"#;
    assert_success(&smtplib(proxy.addr, code), "smtplib");
    captured(proxy, vec![Box::new(sink)])
}

/// smtplib greeting with HELO.
fn smtplib_helo() -> Captured {
    let proxy = Proxy::start(&PLAINTEXT);
    let code = r#"
msg = b"Date: Sat, 28 Nov 2026 19:36:24 +0000\r\nFrom: ann@x.test\r\nMessage-ID: <h@x.test>\r\nSubject: helo\r\n\r\nhi\r\n"
with smtplib.SMTP("127.0.0.1", PORT, local_hostname="smtplib.test") as s:
    s.helo("smtplib.test")
    s.sendmail("ann@x.test", ["bob@y.test"], msg)
print("sent")
"#;
    assert_success(&smtplib(proxy.addr, code), "smtplib");
    captured(proxy, vec![])
}

/// smtplib trying STARTTLS (which smtptap refuses with --client-tls off)
/// and sending in plaintext anyway.
fn smtplib_starttls_refused() -> Captured {
    let proxy = Proxy::start(&PLAINTEXT);
    let code = r#"
msg = b"Date: Sat, 28 Nov 2026 19:36:24 +0000\r\nFrom: ann@x.test\r\nMessage-ID: <r@x.test>\r\nSubject: fallback\r\n\r\nhi\r\n"
with smtplib.SMTP("127.0.0.1", PORT, local_hostname="smtplib.test") as s:
    s.ehlo()
    code, text = s.docmd("STARTTLS")
    assert code == 454, (code, text)
    s.sendmail("ann@x.test", ["bob@y.test"], msg)
print("sent")
"#;
    assert_success(&smtplib(proxy.addr, code), "smtplib");
    captured(proxy, vec![])
}

/// swaks in plaintext to a server that wants STARTTLS first (which smtptap
/// hides from the client with --client-tls off).
fn swaks_starttls_required() -> Captured {
    let dir = tempfile::tempdir().unwrap();
    // As `openssl req -x509` makes it by default; nobody verifies it here.
    let (cert, key) = self_signed_with(dir.path(), "cert", "basicConstraints=CA:TRUE");
    let policy = Policy::start(&["--require-starttls", path_str(&cert), path_str(&key)]);
    let up = policy.addr.to_string();
    let proxy = Proxy::start(&[&PLAINTEXT[..], &["--upstream", &up]].concat());
    let out = swaks(proxy.addr, &["--from", "ann@local.test", "--to", "bob@local.test"]);
    assert!(stdout(&out).contains("530"), "{}", stdout(&out));
    captured(proxy, vec![Box::new(policy), Box::new(dir)])
}

/// A hand-written client that talks before the greeting, says HELO and
/// pipelines MAIL, RCPT and DATA to a server without PIPELINING (smtp-sink
/// -p, greeting a second late so that the client surely speaks first).
fn raw_early_talker() -> Captured {
    let sink = smtp_sink(&["-p", "-W", "CONNECT:1"]);
    let up = sink.addr.to_string();
    let proxy = Proxy::start(&[&PLAINTEXT[..], &["--upstream", &up]].concat());
    let mut client = RawClient::connect(proxy.addr);
    client.send(b"HELO raw.test\r\n");
    client.read_replies(2);
    client.send(b"MAIL FROM:<ann@x.test>\r\nRCPT TO:<bob@y.test>\r\nDATA\r\n");
    client.read_replies(5);
    client.send(
        b"Date: Sat, 28 Nov 2026 19:36:24 +0000\r\nFrom: ann@x.test\r\nMessage-ID: <raw@x.test>\r\n\r\nhi\r\n.\r\n",
    );
    client.read_replies(6);
    client.send(b"QUIT\r\n");
    client.read_to_close();
    captured(proxy, vec![Box::new(sink)])
}

/// A hand-written client sending a message in pipelined BDAT chunks.
fn raw_bdat() -> Captured {
    let proxy = Proxy::start(&PLAINTEXT);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    client.send(b"EHLO raw.test\r\n");
    client.read_replies(2);
    let chunks: [&[u8]; 2] = [
        b"Date: Sat, 28 Nov 2026 19:36:24 +0000\r\nFrom: ann@x.test\r\nTo: bob@y.test\r\n",
        b"Message-ID: <bdat@x.test>\r\nSubject: in chunks\r\n\r\nsent with BDAT\r\n",
    ];
    let mut batch = b"MAIL FROM:<ann@x.test>\r\nRCPT TO:<bob@y.test>\r\n".to_vec();
    batch.extend_from_slice(format!("BDAT {}\r\n", chunks[0].len()).as_bytes());
    batch.extend_from_slice(chunks[0]);
    batch.extend_from_slice(format!("BDAT {} LAST\r\n", chunks[1].len()).as_bytes());
    batch.extend_from_slice(chunks[1]);
    client.send(&batch);
    client.read_replies(6);
    client.send(b"QUIT\r\n");
    client.read_to_close();
    captured(proxy, vec![])
}

/// Every scenario with the fixture name its recording is kept under.
type Scenario = fn() -> Captured;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("swaks-starttls", swaks_starttls),
    ("swaks-pipeline", swaks_pipeline),
    ("swaks-auth-plain-before-tls", swaks_auth_plain_before_tls),
    ("swaks-auth-login-failed", swaks_auth_login_failed),
    ("swaks-relay-denied", swaks_relay_denied),
    ("swaks-spoofed-from", swaks_spoofed_from),
    ("swaks-untrusted-ca", swaks_untrusted_ca),
    ("swaks-size-exceeded", swaks_size_exceeded),
    ("swaks-starttls-required", swaks_starttls_required),
    ("curl-no-date", curl_no_date),
    ("smtplib-bare-lf", smtplib_bare_lf),
    ("smtplib-helo", smtplib_helo),
    ("smtplib-starttls-refused", smtplib_starttls_refused),
    ("raw-early-talker", raw_early_talker),
    ("raw-bdat", raw_bdat),
];

// ---------------------------------------------------------------------------
// 1. One test per finding, on sessions captured live
// ---------------------------------------------------------------------------

#[test]
fn clean_sessions_have_no_findings() {
    for (name, scenario) in [("swaks-starttls", swaks_starttls as Scenario), ("raw-bdat", raw_bdat)] {
        let c = scenario();
        let (code, findings, _) = check_json(&c.path);
        assert_eq!((code, findings.clone()), (0, vec![]), "{name}: {findings:?}");
        let out = smtptap(&["check", path_str(&c.path)]);
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout(&out).contains("  no problems found\n1 recording checked: 0 errors, 0 warnings, 0 info\n"));
    }
}

#[test]
fn swaks_starttls_transcript() {
    let c = swaks_starttls();
    let text = show(&[path_str(&c.path)]);
    for want in [
        "\n<-  220 smtptap.test ESMTP smtptap test server\n -> EHLO swaks.test\n<-  250-smtptap.test\n",
        "\n -> STARTTLS\n<-  220 2.0.0 Ready to start TLS\n** TLS with the upstream: TLSv1.3",
        "\n** TLS with the client: TLSv1.3",
        "\n ~> EHLO swaks.test\n<~  250-smtptap.test\n",
        "\n ~> MAIL FROM:<ann@x.test>\n<~  250 2.1.0 Ok\n",
        "\n**   From: ann@x.test\n**   To: bob@y.test\n**   Subject: test ",
        "\n ~> .\n<~  250 2.0.0 Ok: queued as ",
        "\n** end: quit after ",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains('\x1b'), "no colour when piped");
}

#[test]
fn auth_before_tls_and_starttls_not_used() {
    let c = swaks_auth_plain_before_tls();
    let (code, findings, doc) = check_json(&c.path);
    assert_eq!(code, 1);
    assert_eq!(rules(&findings), set(&["auth-before-tls", "starttls-not-used"]), "{findings:?}");
    let auth = the(&findings, "auth-before-tls");
    assert_eq!((auth.1.as_str(), auth.2), ("error", Some(seq_of(&c.path, "AUTH"))));
    let starttls = the(&findings, "starttls-not-used");
    assert_eq!((starttls.1.as_str(), starttls.2), ("warning", Some(seq_of(&c.path, "EHLO"))));
    let text = doc.to_string();
    assert!(text.contains("AUTH PLAIN as ann@local.test"), "{text}");
    assert!(text.contains("Thunderbird: Connection security is 'None' — set STARTTLS"), "{text}");
    // The transcript decodes the identity, never the password.
    let transcript = show(&[path_str(&c.path)]);
    assert!(transcript.contains("\n -> AUTH PLAIN <redacted> (authcid=ann@local.test)\n<-  235 "), "{transcript}");
    assert!(transcript.contains("** the client sent AUTH before TLS"), "{transcript}");
    assert!(!transcript.contains(Policy::PASSWORD));
}

#[test]
fn auth_failure_names_the_decoded_identity() {
    let c = swaks_auth_login_failed();
    let (code, findings, doc) = check_json(&c.path);
    assert_eq!(code, 1);
    assert_eq!(rules(&findings), set(&["auth-failed"]), "{findings:?}");
    let f = &doc["recordings"][0]["findings"][0];
    assert_eq!(f["severity"], "error");
    assert!(
        f["message"].as_str().unwrap().contains("authentication failed for ann@local.test (AUTH LOGIN): 535 5.7.8"),
        "{f}"
    );
    assert!(f["advice"].as_str().unwrap().contains("user name and password"), "{f}");
    let transcript = show(&[path_str(&c.path)]);
    assert!(
        transcript.contains(
            "\n ~> AUTH LOGIN\n<~  334 VXNlciBOYW1lAA==  (User Name)\n ~> <redacted> (user=ann@local.test)\n"
        ),
        "{transcript}"
    );
    assert!(!transcript.contains("wrong-password"));
}

#[test]
fn relaying_denied() {
    let c = swaks_relay_denied();
    let (code, findings, doc) = check_json(&c.path);
    assert_eq!(code, 1);
    assert_eq!(rules(&findings), set(&["relay-denied"]), "{findings:?}");
    assert_eq!(the(&findings, "relay-denied").2, Some(seq_of(&c.path, "RCPT")));
    let f = &doc["recordings"][0]["findings"][0];
    assert!(f["message"].as_str().unwrap().contains("554 5.7.1 <bob@remote.test>: Relay access denied"), "{f}");
    assert!(f["advice"].as_str().unwrap().starts_with("The client did not log in."), "{f}");
}

#[test]
fn header_from_differs_from_mail_from() {
    let c = swaks_spoofed_from();
    let (code, findings, doc) = check_json(&c.path);
    assert_eq!(code, 1);
    assert_eq!(rules(&findings), set(&["from-mismatch"]), "{findings:?}");
    assert_eq!(the(&findings, "from-mismatch").2, Some(seq_of(&c.path, "-")));
    let message = doc["recordings"][0]["findings"][0]["message"].as_str().unwrap();
    assert!(message.contains("(The Boss <boss@other.test>) differs from the envelope sender MAIL FROM:<ann@x.test>"));
}

#[test]
fn missing_date_and_message_id() {
    let c = curl_no_date();
    let (code, findings, _) = check_json(&c.path);
    assert_eq!(code, 1);
    assert_eq!(rules(&findings), set(&["missing-date", "missing-message-id"]), "{findings:?}");
    let seq = seq_of(&c.path, "-");
    assert!(findings.iter().all(|f| f.1 == "warning" && f.2 == Some(seq)), "{findings:?}");
}

#[test]
fn bare_lf_bare_cr_long_lines_and_8bit_without_8bitmime() {
    let c = smtplib_bare_lf();
    let (code, findings, doc) = check_json(&c.path);
    assert_eq!(code, 1);
    assert_eq!(rules(&findings), set(&["bare-lf", "bare-cr", "long-line", "8bit-without-8bitmime"]), "{findings:?}");
    let text = doc.to_string();
    assert!(text.contains("a bare LF (first on line 7)"), "{text}");
    assert!(text.contains("a bare CR (first on line 9)"), "{text}");
    assert!(text.contains("longest 1200 octets"), "{text}");
    assert!(text.contains("8-bit data but the server did not offer 8BITMIME"), "{text}");
    // The body view makes the bare LF and CR visible.
    let transcript = show(&["--body", path_str(&c.path)]);
    assert!(transcript.contains("\n -> first line ends in a bare LF\\nsecond line\n"), "{transcript}");
    assert!(transcript.contains("\n -> an old Mac line\\rstill the same line\n"), "{transcript}");
}

#[test]
fn without_bodies_line_checks_are_skipped_with_an_info() {
    let sink = smtp_sink(&["-8"]);
    let up = sink.addr.to_string();
    let proxy = Proxy::start(&[&PLAINTEXT[..], &["--upstream", &up, "--no-bodies"]].concat());
    let code = r#"
msg = b"Date: Sat, 28 Nov 2026 19:36:24 +0000\r\nFrom: ann@x.test\r\nMessage-ID: <n@x.test>\r\n\r\nbare\nLF\r\n"
with smtplib.SMTP("127.0.0.1", PORT) as s:
    s.sendmail("ann@x.test", ["bob@y.test"], msg)
"#;
    assert_success(&smtplib(proxy.addr, code), "smtplib");
    let c = captured(proxy, vec![Box::new(sink)]);
    let (code, findings, _) = check_json(&c.path);
    assert_eq!((code, rules(&findings)), (0, set(&["bodies-not-recorded"])), "{findings:?}");
    assert_eq!(the(&findings, "bodies-not-recorded").1, "info");
}

#[test]
fn size_exceeded() {
    let c = swaks_size_exceeded();
    let (code, findings, doc) = check_json(&c.path);
    assert_eq!(code, 1);
    assert_eq!(rules(&findings), set(&["size-exceeded"]), "{findings:?}");
    assert_eq!(the(&findings, "size-exceeded").2, Some(seq_of(&c.path, "-")));
    let message = doc["recordings"][0]["findings"][0]["message"].as_str().unwrap();
    assert!(message.contains("was refused as too large: 552"), "{message}");
    assert!(message.contains("server limit 2000 octets"), "{message}");
}

#[test]
fn helo_instead_of_ehlo() {
    let c = smtplib_helo();
    let (code, findings, _) = check_json(&c.path);
    assert_eq!(code, 1);
    assert_eq!(rules(&findings), set(&["helo-not-ehlo"]), "{findings:?}");
    assert_eq!(the(&findings, "helo-not-ehlo").2, Some(seq_of(&c.path, "HELO")));
}

#[test]
fn early_talker_and_pipelining_without_pipelining() {
    let c = raw_early_talker();
    let (code, findings, _) = check_json(&c.path);
    assert_eq!(code, 1);
    assert_eq!(rules(&findings), set(&["early-talker", "helo-not-ehlo", "pipelining-not-offered"]), "{findings:?}");
    assert_eq!(the(&findings, "early-talker").2, Some(seq_of(&c.path, "HELO")));
    assert_eq!(the(&findings, "pipelining-not-offered").2, Some(seq_of(&c.path, "RCPT")));
    // The transcript shows the commands as they travelled.
    let transcript = show(&[path_str(&c.path)]);
    assert!(transcript.contains("\n -> HELO raw.test\n<-  220 sink.test ESMTP\n<-  250 sink.test\n"), "{transcript}");
    assert!(
        transcript.contains("\n -> MAIL FROM:<ann@x.test>\n -> RCPT TO:<bob@y.test>\n -> DATA\n<-  250 2.1.0 Ok\n"),
        "{transcript}"
    );
}

#[test]
fn pipelining_the_server_offered_is_fine() {
    let c = swaks_pipeline();
    let (code, findings, _) = check_json(&c.path);
    assert_eq!((code, findings), (0, vec![]));
    let transcript = show(&[path_str(&c.path)]);
    assert!(
        transcript.contains(" ~> MAIL FROM:<ann@x.test>\n ~> RCPT TO:<bob@y.test>\n ~> DATA\n<~  250 2.1.0 Ok\n<~  250 2.1.5 Ok\n<~  354 "),
        "{transcript}"
    );
}

#[test]
fn plaintext_after_starttls_was_refused() {
    let c = smtplib_starttls_refused();
    let (code, findings, doc) = check_json(&c.path);
    assert_eq!(code, 1);
    assert_eq!(rules(&findings), set(&["plaintext-after-starttls-refused", "server-rejected"]), "{findings:?}");
    let f = the(&findings, "plaintext-after-starttls-refused");
    assert_eq!((f.1.as_str(), f.2), ("error", Some(seq_of(&c.path, "MAIL"))));
    let rejected = the(&findings, "server-rejected");
    assert_eq!((rejected.1.as_str(), rejected.2), ("warning", Some(seq_of(&c.path, "STARTTLS"))));
    assert!(doc.to_string().contains("the server would not start TLS"));
    assert!(doc.to_string().contains("can be downgraded"));
}

#[test]
fn starttls_required_is_decoded() {
    let c = swaks_starttls_required();
    let (code, findings, doc) = check_json(&c.path);
    assert_eq!(code, 1);
    assert!(rules(&findings).contains("starttls-required"), "{findings:?}");
    let text = doc.to_string();
    assert!(text.contains("530 Must issue a STARTTLS command first"), "{text}");
    assert!(text.contains("the server wants the connection encrypted first"), "{text}");
}

#[test]
fn tls_handshake_failure_with_the_client() {
    let c = swaks_untrusted_ca();
    let (code, findings, doc) = check_json(&c.path);
    assert_eq!(code, 1);
    assert!(rules(&findings).contains("tls-failed"), "{findings:?}");
    assert!(doc.to_string().contains("smtptap ca show"));
    let transcript = show(&[path_str(&c.path)]);
    assert!(transcript.contains("** TLS handshake with the client failed: "), "{transcript}");
}

// ---------------------------------------------------------------------------
// 2. Golden tests on committed recordings
// ---------------------------------------------------------------------------

fn fixtures() -> PathBuf {
    Path::new(MANIFEST).join("tests/fixtures")
}

/// Compares `actual` with tests/golden/NAME, or writes it with UPDATE_GOLDEN=1.
fn golden(name: &str, actual: &str) {
    let path = Path::new(MANIFEST).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if expected != actual {
        let diff = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("first difference at line {}:\nexpected: {a}\nactual:   {b}", i + 1))
            .unwrap_or_else(|| "one is a prefix of the other".into());
        panic!("{} differs from the output ({diff}); UPDATE_GOLDEN=1 rewrites it\n\nactual:\n{actual}", path.display());
    }
}

/// With UPDATE_FIXTURES=1 the fixtures are captured afresh, once per run,
/// before the golden tests read them.
fn refresh_fixtures_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("UPDATE_FIXTURES").is_none() {
        return;
    }
    ONCE.call_once(|| {
        std::fs::create_dir_all(fixtures()).unwrap();
        for (name, scenario) in SCENARIOS {
            let c = scenario();
            std::fs::copy(&c.path, fixtures().join(format!("{name}.jsonl"))).unwrap();
        }
    });
}

#[test]
fn golden_transcripts() {
    refresh_fixtures_if_asked();
    for (name, _) in SCENARIOS {
        let fixture = format!("tests/fixtures/{name}.jsonl");
        golden(&format!("{name}.txt"), &show(&[&fixture]));
    }
    golden("swaks-starttls.timestamps.txt", &show(&["--timestamps", "tests/fixtures/swaks-starttls.jsonl"]));
    golden("swaks-pipeline.latency.txt", &show(&["--latency", "tests/fixtures/swaks-pipeline.jsonl"]));
    golden("smtplib-bare-lf.body.txt", &show(&["--body", "tests/fixtures/smtplib-bare-lf.jsonl"]));
    golden("raw-bdat.body.txt", &show(&["--body", "tests/fixtures/raw-bdat.jsonl"]));
}

#[test]
fn golden_list_view() {
    refresh_fixtures_if_asked();
    golden("list.txt", &show(&["tests/fixtures"]));
    golden("list-last-3.txt", &show(&["--last", "3", "tests/fixtures"]));
}

#[test]
fn golden_check_reports() {
    refresh_fixtures_if_asked();
    let out = smtptap(&["check", "tests/fixtures"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    golden("check.txt", &stdout(&out));
    let out = smtptap(&["check", "--format", "json", "tests/fixtures/swaks-relay-denied.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    golden("check-relay-denied.json", &stdout(&out));
    let out = smtptap(&["check", "tests/fixtures/swaks-starttls.jsonl", "tests/fixtures/raw-bdat.jsonl"]);
    assert_eq!(out.status.code(), Some(0));
}

/// Captures every scenario again and keeps its recording as a fixture.
/// `UPDATE_FIXTURES=1 cargo test --test show_check -- --ignored`, then
/// `UPDATE_GOLDEN=1 cargo test --test show_check golden`.
// ---------------------------------------------------------------------------
// 3. Tolerance, refusal, --follow, colour and pipes
// ---------------------------------------------------------------------------

#[test]
fn a_recording_cut_mid_line_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(fixtures().join("swaks-starttls.jsonl")).unwrap();
    let cut_at = full.len() - 40; // inside the `end` record
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, &full[..cut_at]).unwrap();
    let text = show(&[path_str(&cut)]);
    assert!(text.contains(" ~> QUIT\n<~  221 2.0.0 Bye\n** the last line of the recording is cut short\n** the recording stops here, without an end"), "{text}");
    let (code, findings, _) = check_json(&cut);
    assert_eq!((code, rules(&findings)), (0, set(&["recording-incomplete"])));
    let list = show(&[path_str(dir.path())]);
    assert!(list.contains("no end yet"), "{list}");
}

#[test]
fn unknown_fields_and_record_types_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let original = fixtures().join("swaks-auth-login-failed.jsonl");
    let mut lines = Vec::new();
    for line in read_text(&original).lines() {
        let mut v: Value = serde_json::from_str(line).unwrap();
        v["added_in_a_later_version"] = serde_json::json!({"nested": [1, 2, 3]});
        if v["type"] == "exchange" {
            v["reply"]["future"] = Value::Bool(true);
        }
        lines.push(v.to_string());
        if v["type"] == "exchange" {
            lines.push(r#"{"type":"hologram","t":"2026-01-01T00:00:00Z"}"#.into());
        }
    }
    let extended = dir.path().join("extended.jsonl");
    std::fs::write(&extended, lines.join("\n") + "\n").unwrap();
    assert_eq!(show(&[path_str(&extended)]), show(&[path_str(&original)]));
    assert_eq!(check_json(&extended).1, check_json(&original).1);
}

#[test]
fn non_recordings_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello\nworld\n").unwrap();
    let exchange_first = dir.path().join("headless.jsonl");
    let lines: Vec<String> = read_text(&fixtures().join("raw-bdat.jsonl")).lines().skip(1).map(str::to_owned).collect();
    std::fs::write(&exchange_first, lines.join("\n")).unwrap();
    for (path, says) in [
        (&text, "not an smtptap recording (the first line is not JSON"),
        (&exchange_first, "not an smtptap recording (the first line is a `exchange` record"),
    ] {
        for cmd in ["show", "check"] {
            let out = smtptap(&[cmd, path_str(path)]);
            assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
            assert!(stderr(&out).contains(says), "{cmd}: {}", stderr(&out));
        }
    }
    let missing = dir.path().join("missing.jsonl");
    for cmd in ["show", "check"] {
        let out = smtptap(&[cmd, path_str(&missing)]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(stderr(&out).contains("No such file"), "{}", stderr(&out));
    }
    // A directory with a non-recording in it: the rest is still checked.
    std::fs::copy(fixtures().join("raw-bdat.jsonl"), dir.path().join("good.jsonl")).unwrap();
    let out = smtptap(&["check", path_str(dir.path())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("good.jsonl: session"), "{}", stdout(&out));
    let empty = tempfile::tempdir().unwrap();
    let out = smtptap(&["check", path_str(empty.path())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no recordings"), "{}", stderr(&out));
}

#[test]
fn since_and_last_select_sessions() {
    let all = show(&["tests/fixtures"]).lines().count();
    assert_eq!(all, SCENARIOS.len() + 1);
    assert_eq!(show(&["--last", "2", "tests/fixtures"]).lines().count(), 3);
    assert_eq!(show(&["--since", "2000-01-01", "tests/fixtures"]).lines().count(), all);
    assert_eq!(show(&["--since", "2100-01-01", "tests/fixtures"]).lines().count(), 1, "only the header");
    let out = smtptap(&["show", "--since", "someday", "tests/fixtures"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read `someday` as a time"));
    // --transcripts prints the sessions of a directory in full.
    let full = show(&["--transcripts", "--last", "1", "tests/fixtures"]);
    assert!(full.starts_with("** session "), "{full}");
}

#[test]
fn colour_on_request_never_when_piped() {
    let plain = show(&["tests/fixtures/swaks-relay-denied.jsonl"]);
    assert!(!plain.contains('\x1b'));
    let coloured = show(&["--color", "always", "tests/fixtures/swaks-relay-denied.jsonl"]);
    assert!(coloured.contains("\x1b[1;31m<~  554 5.7.1 <bob@remote.test>: Relay access denied\x1b[0m"), "{coloured}");
    let out = smtptap(&["check", "--color", "always", "tests/fixtures/swaks-relay-denied.jsonl"]);
    assert!(stdout(&out).contains("\x1b[1;31merror  \x1b[0m"), "{}", stdout(&out));
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let fixture = "tests/fixtures/swaks-starttls.jsonl";
    let args: Vec<&str> = std::iter::once("show").chain(std::iter::repeat_n(fixture, 400)).collect();
    let mut child = Command::new(BIN)
        .args(&args)
        .current_dir(MANIFEST)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let status = wait_exit(&mut child);
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(err.is_empty(), "{err}");
}

/// A running `smtptap show --follow` (or `proxy --check`), killed on drop.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// The lines of `out`, read on a thread.
fn lines_of(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

impl Follower {
    fn start(dir: &Path) -> Follower {
        let mut child = Command::new(BIN)
            .args(["show", "--follow", path_str(dir)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        // Ready once it says it follows: it has taken stock of what exists.
        let errors = lines_of(child.stderr.take().unwrap());
        loop {
            match errors.recv_timeout(PATIENCE) {
                Ok(line) if line.starts_with("smtptap: following ") => break,
                Ok(_) => {}
                Err(e) => panic!("show --follow never said it was following: {e}"),
            }
        }
        Follower { child, lines: lines_of(out) }
    }

    /// Lines up to and including the first that starts with `prefix`.
    fn until(&self, prefix: &str) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with(prefix);
                    got.push(line);
                    if done {
                        return got;
                    }
                }
                Err(_) => panic!("no line starting with {prefix:?}; got:\n{}", got.join("\n")),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn follow_prints_sessions_as_they_happen() {
    let proxy = Proxy::start(&[]);
    let ca = ca(&proxy);
    // A session before --follow starts is history: not printed.
    assert_success(&swaks(proxy.addr, &["--from", "old@x.test", "--to", "bob@y.test"]), "swaks");
    proxy.sessions(1);
    let follower = Follower::start(&proxy.record_dir());
    let args = [&["--from", "new@x.test", "--to", "bob@y.test"], &swaks_tls(&ca)[..]].concat();
    assert_success(&swaks(proxy.addr, &args), "swaks");
    let lines = follower.until("** end: ").join("\n");
    assert!(lines.starts_with("** session "), "{lines}");
    assert!(lines.contains(" ~> MAIL FROM:<new@x.test>\n<~  250 2.1.0 Ok"), "{lines}");
    assert!(!lines.contains("old@x.test"), "{lines}");
    // And the next one.
    assert_success(&swaks(proxy.addr, &["--from", "third@x.test", "--to", "bob@y.test"]), "swaks");
    let lines = follower.until("** end: ").join("\n");
    assert!(lines.contains(" -> MAIL FROM:<third@x.test>"), "{lines}");
}

#[test]
fn follow_waits_for_a_directory_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("recordings");
    let follower = Follower::start(&records);
    let proxy = Proxy::start_in(dir, &PLAINTEXT);
    assert_success(&swaks(proxy.addr, &["--from", "ann@x.test", "--to", "bob@y.test"]), "swaks");
    let lines = follower.until("** end: ").join("\n");
    assert!(lines.contains(" -> MAIL FROM:<ann@x.test>"), "{lines}");
}

#[test]
fn proxy_check_prints_findings_as_each_session_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["proxy", "--check", "--listen", "127.0.0.1:0", "--record-dir"])
        .arg(dir.path().join("recordings"))
        .arg("--ca-dir")
        .arg(dir.path().join("certs"))
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let follower = Follower { child, lines: lines_of(out) };
    let addr: SocketAddr = follower.until("listening on ").pop().unwrap()["listening on ".len()..].parse().unwrap();
    assert_success(&swaks(addr, &["--from", "ann@x.test", "--to", "bob@y.test"]), "swaks");
    let report = follower.until("  warning ").join("\n");
    assert!(report.contains(".jsonl: session "), "{report}");
    assert!(report.contains("the server offered STARTTLS but the client never used it"), "{report}");
    let ca = dir.path().join("certs/ca.pem");
    let tls = [&["--from", "ann@x.test", "--to", "bob@y.test"], &swaks_tls(path_str(&ca))[..]].concat();
    assert_success(&swaks(addr, &tls), "swaks");
    follower.until("  no problems found");
}
