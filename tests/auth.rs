//! AUTH (issue 4): real clients authenticate through the real binary against
//! a server that checks the password, and the recording shows who tried
//! what and how it ended, while no password reaches disk or logs.
//!
//! Upstream: aiosmtpd (tests/peers/aiosmtpd_auth.py) with an authenticator
//! that accepts exactly the listed user/password pairs over PLAIN, LOGIN and
//! CRAM-MD5, with or without STARTTLS, logging each attempt (never the
//! password). Clients: swaks, Python smtplib `login()`
//! (tests/peers/smtplib_auth.py), curl and msmtp, each with the right and a
//! wrong password for each mechanism it speaks.
//!
//! smtplib encodes SASL data as ASCII (a non-ASCII password raises
//! `UnicodeEncodeError` before anything is sent), so it logs in as a second
//! user with an ASCII password; every other client uses `PASSWORD`, whose
//! `ä`/`ö` make its UTF-8, base64 and hex forms differ from Latin-1 ones.
//!
//! Every peer must be installed: a missing one fails its test. Each test owns
//! its ports (all from 127.0.0.1:0), waits for readiness by reading a line,
//! never by sleeping, and kills its processes on drop, also when it panics.

mod common;
use common::*;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

const USER: &str = "moonpoint@example.com";
const PASSWORD: &str = "S3cr3t-pässwörd!";
const WRONG: &str = "Wr0ng-pässwörd?";
/// smtplib's user: its SASL data must be ASCII.
const ASCII_USER: &str = "smtplib@example.com";
const ASCII_PASSWORD: &str = "Asc11-0nly-s3cret!";
const ASCII_WRONG: &str = "Asc11-wr0ng-guess";

const MESSAGE: &[u8] = b"From: <a@x.test>\r\nTo: <b@y.test>\r\nSubject: auth test\r\n\r\nhello\r\n";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// aiosmtpd checking passwords (tests/peers/aiosmtpd_auth.py): `USER` with
/// `PASSWORD` and `ASCII_USER` with `ASCII_PASSWORD`, nothing else.
struct AuthServer {
    // Fields drop in order: the process dies before its directory goes.
    _child: ChildGuard,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    cert: Option<PathBuf>,
}

impl AuthServer {
    /// Plaintext only (`starttls` false) or offering STARTTLS.
    fn start(starttls: bool) -> AuthServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let credentials = dir.path().join("credentials");
        std::fs::write(&credentials, format!("{USER}\t{PASSWORD}\n{ASCII_USER}\t{ASCII_PASSWORD}\n")).unwrap();
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new("python3");
        cmd.arg(peer_script("aiosmtpd_auth.py")).arg(if starttls { "starttls" } else { "none" });
        cmd.arg(&out).arg(&credentials);
        let mut cert = None;
        if starttls {
            let (c, k) = self_signed(dir.path(), "server");
            cmd.arg(&c).arg(&k);
            cert = Some(c);
        }
        let (child, addr) = spawn_ready_peer(&mut cmd, "aiosmtpd_auth.py", &stderr);
        AuthServer { _child: child, addr, dir, cert }
    }

    fn upstream(&self) -> String {
        self.addr.to_string()
    }

    fn cert(&self) -> &str {
        path_str(self.cert.as_deref().expect("a STARTTLS server"))
    }

    /// What the server made of each AUTH: `tls=0|1 MECHANISM USER ok|fail`.
    /// Written before its reply, so complete once the clients have finished.
    fn auth_log(&self) -> Vec<String> {
        read_text(&self.dir.path().join("out/auth.log")).lines().map(str::to_owned).collect()
    }
}

/// The proxy in plaintext on both sides, relaying to `server`.
fn plaintext_proxy(server: &AuthServer, extra: &[&str]) -> Proxy {
    let upstream = server.upstream();
    let args = [&["--upstream", upstream.as_str()][..], &PLAINTEXT, extra].concat();
    Proxy::start(&args)
}

/// The proxy mirroring STARTTLS to `server`, trusting its certificate.
fn starttls_proxy(server: &AuthServer, extra: &[&str]) -> Proxy {
    let upstream = server.upstream();
    let mut args = vec!["--upstream", upstream.as_str(), "--upstream-ca", server.cert()];
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

/// `smtptap proxy` as the harness starts it, but with `RUST_LOG=trace` and
/// its stderr in `<dir>/stderr.log` (the harness passes the test's own
/// RUST_LOG, which a test cannot change without racing the others).
struct TracedProxy {
    _child: ChildGuard,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl TracedProxy {
    fn start(args: &[&str]) -> TracedProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr = dir.path().join("stderr.log");
        let (child, addr) = spawn_listening(
            Command::new(BIN)
                .arg("proxy")
                .args(["--listen", "127.0.0.1:0", "--record-dir"])
                .arg(dir.path().join("recordings"))
                .arg("--ca-dir")
                .arg(dir.path().join("certs"))
                .args(args)
                .env("RUST_LOG", "trace"),
            "smtptap proxy",
            &stderr,
        );
        TracedProxy { _child: child, addr, dir }
    }

    fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("certs/ca.pem")
    }

    fn stderr(&self) -> String {
        read_text(&self.dir.path().join("stderr.log"))
    }

    /// Waits until `n` recordings have their `end` line; returns them, oldest first.
    fn sessions(&self, n: usize) -> Vec<Vec<Value>> {
        wait_sessions(&self.dir.path().join("recordings"), n, || self.stderr())
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mech {
    Plain,
    Login,
    CramMd5,
}

impl Mech {
    fn name(self) -> &'static str {
        match self {
            Mech::Plain => "PLAIN",
            Mech::Login => "LOGIN",
            Mech::CramMd5 => "CRAM-MD5",
        }
    }
}

const ALL_MECHS: &[Mech] = &[Mech::Plain, Mech::Login, Mech::CramMd5];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Swaks,
    Smtplib,
    Curl,
    Msmtp,
}

impl Client {
    fn user(self) -> &'static str {
        if self == Client::Smtplib { ASCII_USER } else { USER }
    }

    fn password(self, correct: bool) -> &'static str {
        match (self == Client::Smtplib, correct) {
            (true, true) => ASCII_PASSWORD,
            (true, false) => ASCII_WRONG,
            (false, true) => PASSWORD,
            (false, false) => WRONG,
        }
    }

    /// Whether it sends `mech`'s first data with the AUTH command (an
    /// initial response) rather than after a `334`: curl never does (no
    /// `--sasl-ir`), swaks and msmtp for PLAIN, smtplib for PLAIN and LOGIN.
    fn initial_response(self, mech: Mech) -> bool {
        match mech {
            Mech::Plain => self != Client::Curl,
            Mech::Login => self == Client::Smtplib,
            Mech::CramMd5 => false,
        }
    }
}

/// One client run: one session, whose AUTH attempts are expected to be
/// `attempts` (mechanism, final reply code), in order.
struct Run {
    client: Client,
    user: &'static str,
    attempts: Vec<(Mech, u64)>,
    /// The peer's stdout and stderr (swaks and curl show what they sent).
    transcript: String,
}

/// Runs `client` authenticating with `mech` (smtplib: `None` lets login()
/// choose) against `addr`, with the right or a wrong password; checks its
/// exit status. `tls_ca`: swaks only, STARTTLS verified against that CA.
fn authenticate(client: Client, mech: Option<Mech>, addr: SocketAddr, correct: bool, tls_ca: Option<&Path>) -> Run {
    let user = client.user();
    let password = client.password(correct);
    let port = addr.port().to_string();
    let server = addr.to_string();
    assert!(tls_ca.is_none() || client == Client::Swaks, "only swaks runs over TLS here");
    let out = match client {
        Client::Swaks => {
            let mech = mech.expect("swaks needs a mechanism").name();
            let mut args = vec!["--server", &server, "--from", FROM, "--to", TO, "--helo", "swaks.test"];
            args.extend(["--auth", mech, "--auth-user", user, "--auth-password", password]);
            if let Some(ca) = tls_ca {
                args.extend(["--tls", "--tls-verify", "--tls-ca-path", path_str(ca)]);
            }
            run_peer("swaks", &args, None)
        }
        Client::Smtplib => {
            let script = peer_script("smtplib_auth.py");
            let mech = mech.map_or("auto", Mech::name);
            run_peer("python3", &[path_str(&script), "127.0.0.1", &port, mech, user, password], None)
        }
        Client::Curl => {
            let url = format!("smtp://127.0.0.1:{port}/curl.test");
            let login = format!("AUTH={}", mech.expect("curl needs a mechanism").name());
            let userpass = format!("{user}:{password}");
            let args = [
                "-sS",
                "-v",
                "--max-time",
                "30",
                "--url",
                &url,
                "--user",
                &userpass,
                "--login-options",
                &login,
                "--mail-from",
                FROM,
                "--mail-rcpt",
                TO,
                "--upload-file",
                "-",
            ];
            run_peer("curl", &args, Some(MESSAGE))
        }
        Client::Msmtp => {
            let auth = format!("--auth={}", mech.expect("msmtp needs a mechanism").name().to_ascii_lowercase());
            let port = format!("--port={port}");
            let user = format!("--user={user}");
            // The passwords hold no single quote.
            let eval = format!("--passwordeval=echo '{password}'");
            // An empty configuration, so nothing from the machine's msmtprc applies.
            let args = ["--file=/dev/null", "--host=127.0.0.1", &port, "--from=a@x.test", "--tls=off", &auth, &user];
            let mut args = args.to_vec();
            args.extend([eval.as_str(), TO]);
            run_peer("msmtp", &args, Some(MESSAGE))
        }
    };
    let transcript = output_text(&out);
    let what = format!("{client:?} {} with the {} password", mech.map_or("auto", Mech::name), word(correct));
    if correct {
        assert!(out.status.success(), "{what} failed ({}):\n{transcript}", out.status);
    } else {
        assert!(!out.status.success(), "{what} should have failed:\n{transcript}");
    }
    let code = if correct { 235 } else { 535 };
    let attempts = match mech {
        Some(m) => vec![(m, code)],
        // login() prefers CRAM-MD5, and after a 535 tries PLAIN, then LOGIN.
        None if correct => vec![(Mech::CramMd5, 235)],
        None => vec![(Mech::CramMd5, 535), (Mech::Plain, 535), (Mech::Login, 535)],
    };
    Run { client, user, attempts, transcript }
}

fn word(correct: bool) -> &'static str {
    if correct { "right" } else { "wrong" }
}

/// Every mechanism `client` is tested with (smtplib: each forced, then
/// login()'s own choice), each with the right then a wrong password.
fn run_client(client: Client, addr: SocketAddr) -> Vec<Run> {
    let mut mechs: Vec<Option<Mech>> = ALL_MECHS.iter().copied().map(Some).collect();
    if client == Client::Smtplib {
        mechs.push(None);
    }
    let mut runs = Vec::new();
    for mech in mechs {
        for correct in [true, false] {
            runs.push(authenticate(client, mech, addr, correct, None));
        }
    }
    runs
}

// ---------------------------------------------------------------------------
// Reading recordings
// ---------------------------------------------------------------------------

/// The AUTH attempts of a session: each the `AUTH` exchange and the
/// continuation exchanges that answered its `334`s.
fn attempts(session: &[Value]) -> Vec<Vec<&Value>> {
    let mut out: Vec<Vec<&Value>> = Vec::new();
    let mut open = false;
    for e in exchanges(session) {
        let command = &e["command"];
        let continuation = command.is_object() && command["verb"].is_null();
        if command["verb"] == "AUTH" {
            out.push(vec![e]);
        } else if continuation {
            assert!(open, "a continuation line with no AUTH awaiting it: {e}");
            out.last_mut().unwrap().push(e);
        }
        open = (command["verb"] == "AUTH" || continuation) && e["reply"]["code"] == 334;
    }
    out
}

fn pretty(exchanges: &[&Value]) -> String {
    exchanges.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
}

/// `hmac:` and lower-case hex of a SHA-256 MAC.
fn assert_fingerprint(fp: &Value) -> String {
    let fp = fp.as_str().unwrap_or_else(|| panic!("no fingerprint: {fp}"));
    let hex = fp.strip_prefix("hmac:").unwrap_or_else(|| panic!("fingerprint without hmac: {fp}"));
    assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{fp}");
    fp.to_owned()
}

/// Checks one AUTH attempt recorded with `--redact secrets`: its shape (`ir`:
/// the client sent an initial response), its reply codes, and the decoded
/// `auth` objects, exactly. Returns the password's fingerprint (CRAM-MD5 has
/// none: its digest changes with every challenge).
fn assert_attempt(attempt: &[&Value], mech: Mech, user: &str, code: u64, ir: bool) -> Option<String> {
    let all = pretty(attempt);
    let m = mech.name();
    let (last, before) = attempt.split_last().unwrap();
    for e in before {
        assert_eq!(e["reply"]["code"], 334, "only the last reply ends the exchange:\n{all}");
    }
    assert_eq!(last["reply"]["code"], code, "{all}");
    let enhanced = if code == 235 { "2.7.0" } else { "5.7.8" };
    assert_eq!(last["reply"]["enhanced"], enhanced, "{all}");
    for e in &attempt[1..] {
        assert_eq!(e["command"]["verb"], Value::Null, "a continuation has no verb:\n{all}");
        assert_eq!(e["command"]["line"], "<redacted>", "continuation lines are redacted:\n{all}");
    }
    let first = &attempt[0]["command"];
    assert_eq!(first["verb"], "AUTH");
    let with_data: Vec<&Value> = attempt.iter().map(|e| &e["command"]).filter(|c| c.get("auth").is_some()).collect();
    assert_eq!(first.get("auth").is_some(), ir, "decoded data on the AUTH exchange iff it carried some:\n{all}");
    if ir {
        assert_eq!(first["line"], format!("AUTH {m} <redacted>"), "an initial response is redacted:\n{all}");
    } else {
        assert_eq!(first["line"], format!("AUTH {m}"), "{all}");
    }
    // Exchanges: AUTH, then one per continuation line.
    let items = match mech {
        Mech::Plain | Mech::CramMd5 => 1,
        Mech::Login => 2,
    };
    assert_eq!(attempt.len(), 1 + items - usize::from(ir), "{all}");
    assert_eq!(with_data.len(), items, "{all}");
    match mech {
        Mech::Plain => {
            let fp = assert_fingerprint(&with_data[0]["auth"]["fingerprint"]);
            let want = json!({
                "mechanism": "PLAIN", "authzid": "", "authcid": user, "secret": "<redacted>", "fingerprint": fp
            });
            assert_eq!(with_data[0]["auth"], want, "{all}");
            Some(fp)
        }
        Mech::Login => {
            assert_eq!(with_data[0]["auth"], json!({"mechanism": "LOGIN", "user": user}), "the user's line:\n{all}");
            let fp = assert_fingerprint(&with_data[1]["auth"]["fingerprint"]);
            let want = json!({"mechanism": "LOGIN", "user": user, "secret": "<redacted>", "fingerprint": fp});
            assert_eq!(with_data[1]["auth"], want, "the password's line:\n{all}");
            Some(fp)
        }
        Mech::CramMd5 => {
            let challenge = base64::engine::general_purpose::STANDARD
                .decode(attempt[0]["reply"]["lines"][0].as_str().unwrap())
                .expect("a base64 challenge");
            let challenge = String::from_utf8(challenge).unwrap();
            let want = json!({"mechanism": "CRAM-MD5", "user": user, "secret": "<redacted>", "challenge": challenge});
            assert_eq!(attempt[1]["command"]["auth"], want, "the user kept, the digest redacted:\n{all}");
            None
        }
    }
}

/// Checks each run's session (`--redact secrets`, plaintext); returns the
/// fingerprints of the right and of the wrong passwords, per user.
fn assert_runs(runs: &[Run], sessions: &[Vec<Value>]) -> Vec<(&'static str, bool, String)> {
    assert_eq!(runs.len(), sessions.len());
    let mut fingerprints = Vec::new();
    for (run, session) in runs.iter().zip(sessions) {
        assert_eq!(session[0]["redact"], "secrets", "{}", session[0]);
        let found = attempts(session);
        let context =
            || format!("{:?} expected {:?}; session:\n{}", run.client, run.attempts, pretty(&exchanges(session)));
        assert_eq!(found.len(), run.attempts.len(), "{}", context());
        for (attempt, &(mech, code)) in found.iter().zip(&run.attempts) {
            let fp = assert_attempt(attempt, mech, run.user, code, run.client.initial_response(mech));
            if let Some(fp) = fp {
                fingerprints.push((run.user, code == 235, fp));
            }
        }
        assert_eq!(session.last().unwrap()["type"], "end");
    }
    fingerprints
}

/// What the server logged for `runs` over plaintext: it got every
/// credential exactly as the client sent it.
fn expected_auth_log(runs: &[Run], tls: bool) -> Vec<String> {
    runs.iter()
        .flat_map(|r| {
            r.attempts.iter().map(move |(m, code)| {
                format!("tls={} {} {} {}", u8::from(tls), m.name(), r.user, if *code == 235 { "ok" } else { "fail" })
            })
        })
        .collect()
}

/// Per user: one fingerprint for the right password, a different one for
/// the wrong one, whatever the mechanism, client or session.
fn assert_fingerprints_consistent(fingerprints: &[(&str, bool, String)]) {
    for user in [USER, ASCII_USER] {
        for correct in [true, false] {
            let mut fps: Vec<&str> =
                fingerprints.iter().filter(|f| f.0 == user && f.1 == correct).map(|f| f.2.as_str()).collect();
            fps.dedup();
            assert!(fps.len() <= 1, "{user}, {} password: several fingerprints {fps:?}", word(correct));
        }
        let right: Vec<&str> = fingerprints.iter().filter(|f| f.0 == user && f.1).map(|f| f.2.as_str()).collect();
        let wrong: Vec<&str> = fingerprints.iter().filter(|f| f.0 == user && !f.1).map(|f| f.2.as_str()).collect();
        if let (Some(r), Some(w)) = (right.first(), wrong.first()) {
            assert_ne!(r, w, "{user}: the right and the wrong password have the same fingerprint");
        }
    }
}

fn notes(session: &[Value]) -> Vec<&str> {
    session.iter().filter(|r| r["type"] == "note").map(|r| r["text"].as_str().expect("note text")).collect()
}

// ---------------------------------------------------------------------------
// Finding secrets
// ---------------------------------------------------------------------------

/// Every form `secret` could be found in: `(form, text)`. Clear text; the
/// longest run of ASCII in it (catches escaped forms such as `p\xc3\xa4`
/// or `p\u00e4`); base64 of it at each of the three alignments inside a
/// longer blob (only the characters that depend on the secret alone); and
/// hex, lower and upper case.
fn leak_forms(secret: &str) -> Vec<(String, String)> {
    let mut forms = vec![("clear text".to_owned(), secret.to_owned())];
    let run = secret.split(|c: char| !c.is_ascii()).max_by_key(|r| r.len()).unwrap_or("");
    if run.len() < secret.len() && run.len() >= 6 {
        forms.push(("its ASCII run".into(), run.to_owned()));
    }
    for pad in 0..3 {
        let mut bytes = vec![0u8; pad];
        bytes.extend_from_slice(secret.as_bytes());
        let encoded = b64(&bytes);
        let start = (pad * 4).div_ceil(3) + 1;
        let end = encoded.trim_end_matches('=').len() - 2;
        forms.push((format!("base64 at offset {pad}"), encoded[start..end].to_owned()));
    }
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    forms.push(("upper-case hex".into(), hex.to_ascii_uppercase()));
    forms.push(("hex".into(), hex));
    forms
}

/// Every file under `dir`, as lossy text.
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").map_while(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), read_text(&path)));
        }
    }
    out
}

/// Where any of `needles` (`(what, text)`) occurs in `haystacks`: one line
/// per find, with the line it is on.
fn find(needles: &[(String, String)], haystacks: &[(PathBuf, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (what, needle) in needles {
        for (path, text) in haystacks {
            if let Some(line) = text.lines().find(|l| l.contains(needle.as_str())) {
                let line: String = line.chars().take(400).collect();
                found.push(format!("{what} ({needle}) in {}: {line}", path.display()));
            }
        }
    }
    found
}

/// Every form of every password the tests use, and of the PLAIN blobs that
/// carry them.
fn password_needles() -> Vec<(String, String)> {
    let mut needles = Vec::new();
    for (user, password) in [(USER, PASSWORD), (USER, WRONG), (ASCII_USER, ASCII_PASSWORD), (ASCII_USER, ASCII_WRONG)] {
        for (form, text) in leak_forms(password) {
            needles.push((format!("password {password:?} as {form}"), text));
        }
        let blob = b64(format!("\0{user}\0{password}").as_bytes());
        needles.push((format!("the PLAIN blob of {password:?}"), blob));
    }
    needles
}

/// The SASL data the client put on the wire, as its transcript shows it
/// (swaks ` -> `/` ~> `, curl `> `): the argument of `AUTH MECH data` and
/// each line answering a `334`, with what a CRAM-MD5 response decodes to.
fn sasl_lines_sent(transcript: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut after_334 = false;
    for line in transcript.lines() {
        let client = [" -> ", " ~> ", "> "].iter().find_map(|p| line.strip_prefix(p));
        let server = ["<-  ", "<~  ", "< "].iter().find_map(|p| line.strip_prefix(p));
        if let Some(sent) = client {
            let after_334 = std::mem::take(&mut after_334);
            let words: Vec<&str> = sent.split(' ').collect();
            let (what, data) = if words.len() == 3 && words[0].eq_ignore_ascii_case("AUTH") {
                ("the initial response sent", words[2])
            } else if after_334 && !sent.is_empty() && sent != "*" {
                ("a SASL line sent", sent)
            } else {
                continue;
            };
            let decoded = base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default();
            let decoded = String::from_utf8_lossy(&decoded).into_owned();
            // LOGIN's user name is no secret (identities are kept).
            if decoded == USER || decoded == ASCII_USER {
                continue;
            }
            out.push((what.to_owned(), data.to_owned()));
            // CRAM-MD5: `user hexdigest`.
            if let Some((_, digest)) = decoded.rsplit_once(' ').filter(|(_, d)| d.len() == 32) {
                out.push(("a CRAM-MD5 digest sent".to_owned(), digest.to_owned()));
            }
        } else if let Some(reply) = server {
            after_334 = reply.starts_with("334 ");
        }
    }
    out
}

// ---------------------------------------------------------------------------
// 1. Real clients, right and wrong passwords, the decoded identity
// ---------------------------------------------------------------------------

/// `client` with every mechanism, right and wrong password, through a
/// plaintext proxy: the recorded codes (235 vs 535, which aiosmtpd decided
/// on the real credentials: the relay is untouched), the decoded identity,
/// redacted secrets, and consistent fingerprints.
fn client_through_the_proxy(client: Client) {
    let server = AuthServer::start(false);
    let proxy = plaintext_proxy(&server, &[]);
    let runs = run_client(client, proxy.addr);
    let sessions = proxy.sessions(runs.len());
    let fingerprints = assert_runs(&runs, &sessions);
    assert_fingerprints_consistent(&fingerprints);
    assert_eq!(server.auth_log(), expected_auth_log(&runs, false), "what aiosmtpd decided");
    let stderr = proxy.stderr();
    assert!(!stderr.contains("--redact none"), "no warning about redaction by default:\n{stderr}");
}

#[test]
fn swaks_plain_login_cram_md5_with_right_and_wrong_password() {
    client_through_the_proxy(Client::Swaks);
}

#[test]
fn smtplib_login_with_each_mechanism_and_its_own_choice() {
    client_through_the_proxy(Client::Smtplib);
}

#[test]
fn curl_plain_login_cram_md5_with_right_and_wrong_password() {
    client_through_the_proxy(Client::Curl);
}

#[test]
fn msmtp_plain_login_cram_md5_with_right_and_wrong_password() {
    client_through_the_proxy(Client::Msmtp);
}

// ---------------------------------------------------------------------------
// 2. No password anywhere, even at RUST_LOG=trace
// ---------------------------------------------------------------------------

/// Every client and mechanism through one traced plaintext proxy, and swaks
/// over STARTTLS through another; returns the runs and both proxies.
fn run_everything(extra: &[&str]) -> (Vec<Run>, Vec<Run>, TracedProxy, TracedProxy, AuthServer, AuthServer) {
    let server = AuthServer::start(false);
    let upstream = server.upstream();
    let args = [&["--upstream", upstream.as_str()][..], &PLAINTEXT, extra].concat();
    let proxy = TracedProxy::start(&args);
    let mut runs = Vec::new();
    for client in [Client::Swaks, Client::Smtplib, Client::Curl, Client::Msmtp] {
        runs.extend(run_client(client, proxy.addr));
    }

    let tls_server = AuthServer::start(true);
    let upstream = tls_server.upstream();
    let mut args = vec!["--upstream", upstream.as_str(), "--upstream-ca", tls_server.cert()];
    args.extend_from_slice(extra);
    let tls_proxy = TracedProxy::start(&args);
    let mut tls_runs = Vec::new();
    for &mech in ALL_MECHS {
        for correct in [true, false] {
            tls_runs.push(authenticate(Client::Swaks, Some(mech), tls_proxy.addr, correct, Some(&tls_proxy.ca_cert())));
        }
    }
    (runs, tls_runs, proxy, tls_proxy, server, tls_server)
}

/// Everything the proxies wrote: every file of their directories
/// (recordings, CA, fingerprint key) and their stderr.
fn everything_written(proxies: &[&TracedProxy]) -> Vec<(PathBuf, String)> {
    proxies.iter().flat_map(|p| files_under(p.dir.path())).collect()
}

#[test]
fn no_password_in_any_form_in_recordings_or_trace_logs() {
    let (runs, tls_runs, proxy, tls_proxy, server, tls_server) = run_everything(&[]);
    // The sessions are what they should be, so the search looks at real AUTH exchanges.
    let fingerprints = assert_runs(&runs, &proxy.sessions(runs.len()));
    assert_fingerprints_consistent(&fingerprints);
    assert_eq!(server.auth_log(), expected_auth_log(&runs, false));
    let tls_sessions = tls_proxy.sessions(tls_runs.len());
    for session in &tls_sessions {
        let auth = exchanges(session).into_iter().find(|e| e["command"]["verb"] == "AUTH").expect("an AUTH");
        assert_eq!(auth["tls"], true, "{auth}");
    }
    assert_eq!(tls_server.auth_log(), expected_auth_log(&tls_runs, true));

    let written = everything_written(&[&proxy, &tls_proxy]);
    let stderr = proxy.stderr() + &tls_proxy.stderr();
    // smtptap itself logs little below INFO; rustls logs the TLS sessions at TRACE.
    let head: String = stderr.chars().take(2000).collect();
    assert!(stderr.contains(" TRACE "), "trace logging was on:\n{head}");
    assert!(written.iter().any(|(_, text)| text.contains(USER)), "the recordings were searched");

    let mut needles = password_needles();
    for run in runs.iter().chain(&tls_runs) {
        needles.extend(sasl_lines_sent(&run.transcript));
    }
    for run in runs.iter().chain(&tls_runs).filter(|r| matches!(r.client, Client::Swaks | Client::Curl)) {
        let sent = sasl_lines_sent(&run.transcript);
        assert!(!sent.is_empty(), "the SASL data {:?} sent, from its transcript:\n{}", run.client, run.transcript);
    }
    let leaks = find(&needles, &written);
    assert!(leaks.is_empty(), "secrets written to disk or logs:\n{}", leaks.join("\n"));
}

/// The same search finds the password when nothing is redacted: the test
/// above can fail.
#[test]
fn the_leak_search_finds_passwords_when_redaction_is_off() {
    let (runs, tls_runs, proxy, tls_proxy, _server, _tls_server) = run_everything(&["--redact", "none"]);
    proxy.sessions(runs.len());
    tls_proxy.sessions(tls_runs.len());
    let written = everything_written(&[&proxy, &tls_proxy]);
    let mut needles = password_needles();
    for run in runs.iter().chain(&tls_runs) {
        needles.extend(sasl_lines_sent(&run.transcript));
    }
    let leaks = find(&needles, &written);
    let joined = leaks.join("\n");
    for what in [
        format!("password {PASSWORD:?} as clear text"),
        format!("password {PASSWORD:?} as its ASCII run"),
        format!("password {PASSWORD:?} as base64 at offset"),
        format!("password {WRONG:?} as clear text"),
        format!("password {ASCII_PASSWORD:?} as clear text"),
        format!("password {ASCII_WRONG:?} as base64 at offset"),
        format!("the PLAIN blob of {PASSWORD:?}"),
        format!("the PLAIN blob of {ASCII_WRONG:?}"),
        "the initial response sent".into(),
        "a SASL line sent".into(),
        "a CRAM-MD5 digest sent".into(),
    ] {
        assert!(joined.contains(&what), "the search did not find {what}; it found:\n{joined}");
    }
}

/// Each form is found where it hides, and an unrelated blob is not flagged.
#[test]
fn leak_forms_find_the_password_in_every_encoding() {
    let forms = leak_forms(PASSWORD);
    let finds = |text: &str| find(&forms, &[(PathBuf::from("t"), text.to_owned())]);
    for prefix in ["", "\0", "\0u\0", "\0us\0", "\0moonpoint@example.com\0"] {
        for suffix in ["", "x", "xy", "\r\n"] {
            let blob = b64(format!("{prefix}{PASSWORD}{suffix}").as_bytes());
            assert!(!finds(&format!("line {blob} end")).is_empty(), "{prefix:?} {suffix:?}: {blob}");
        }
    }
    let hex: String = PASSWORD.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!finds(&hex).is_empty());
    assert!(!finds(&hex.to_ascii_uppercase()).is_empty());
    assert!(!finds(&format!("{:?}", PASSWORD.as_bytes().escape_ascii().to_string())).is_empty());
    assert!(!finds(&serde_json::to_string(&json!({"s": PASSWORD})).unwrap()).is_empty());
    assert!(finds(&b64(format!("\0{USER}\0{WRONG}").as_bytes())).is_empty(), "another password is no find");
}

// ---------------------------------------------------------------------------
// 3. Fingerprints
// ---------------------------------------------------------------------------

/// The fingerprint of the PLAIN/LOGIN password in a session.
fn session_fingerprint(session: &[Value]) -> String {
    let found = attempts(session);
    assert_eq!(found.len(), 1, "{}", pretty(&exchanges(session)));
    let auth = &found[0].last().unwrap()["command"]["auth"];
    assert_fingerprint(&auth["fingerprint"])
}

fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn fingerprints_are_stable_across_sessions_and_restarts_and_differ_by_password() {
    let server = AuthServer::start(false);
    let mut first = plaintext_proxy(&server, &[]);
    let swaks = |proxy: &Proxy, mech, correct| authenticate(Client::Swaks, Some(mech), proxy.addr, correct, None);
    swaks(&first, Mech::Plain, true);
    swaks(&first, Mech::Plain, true);
    swaks(&first, Mech::Login, true);
    swaks(&first, Mech::Plain, false);
    let sessions = first.sessions(4);
    let fps: Vec<String> = sessions.iter().map(|s| session_fingerprint(s)).collect();
    assert_eq!(fps[0], fps[1], "the same password in two sessions");
    assert_eq!(fps[0], fps[2], "the same password over LOGIN");
    assert_ne!(fps[0], fps[3], "a different password");

    let certs = first.dir.path().join("certs");
    let key_file = certs.join("fingerprint.key");
    let mode = std::fs::metadata(&key_file).expect("fingerprint.key beside the CA").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "fingerprint.key is mode {:o}", mode & 0o777);
    let key = std::fs::read(&key_file).unwrap();
    assert_eq!(fps[0], format!("hmac:{}", hmac_hex(&key, PASSWORD.as_bytes())), "HMAC-SHA256 of the password");

    // Restart on the same CA directory (clap refuses a second --ca-dir, so
    // the new proxy's certs directory is a symlink to the first one's).
    assert!(first.terminate().success());
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&certs, dir.path().join("certs")).unwrap();
    let upstream = server.upstream();
    let second = Proxy::start_in(dir, &[&["--upstream", upstream.as_str()][..], &PLAINTEXT].concat());
    swaks(&second, Mech::Plain, true);
    swaks(&second, Mech::Login, false);
    let again: Vec<String> = second.sessions(2).iter().map(|s| session_fingerprint(s)).collect();
    assert_eq!(again, [fps[0].clone(), fps[3].clone()], "fingerprints after a restart");
    assert_eq!(std::fs::read(&key_file).unwrap(), key, "the key was kept");

    // Another CA directory has another random key.
    let third = plaintext_proxy(&server, &[]);
    swaks(&third, Mech::Plain, true);
    let other = session_fingerprint(&third.sessions(1)[0]);
    assert_ne!(other, fps[0], "a fresh key gives other fingerprints");
}

// ---------------------------------------------------------------------------
// 4. --redact identities and --redact none
// ---------------------------------------------------------------------------

#[test]
fn redact_identities_replaces_every_user_name_with_a_fingerprint() {
    let server = AuthServer::start(false);
    let proxy = plaintext_proxy(&server, &["--redact", "identities"]);
    let runs: Vec<Run> =
        ALL_MECHS.iter().map(|&m| authenticate(Client::Swaks, Some(m), proxy.addr, true, None)).collect();
    assert_eq!(server.auth_log(), expected_auth_log(&runs, false), "the server got the real user");
    let sessions = proxy.sessions(3);

    let mut identities = Vec::new();
    let mut secrets = Vec::new();
    for (session, mech) in sessions.iter().zip(ALL_MECHS) {
        assert_eq!(session[0]["redact"], "identities", "{}", session[0]);
        let found = attempts(session);
        assert_eq!(found.len(), 1);
        let all = pretty(&found[0]);
        assert_eq!(found[0].last().unwrap()["reply"]["code"], 235, "{all}");
        for e in &found[0][1..] {
            assert_eq!(e["command"]["line"], "<redacted>", "{all}");
        }
        let auth = &found[0].last().unwrap()["command"]["auth"];
        assert_eq!(auth["mechanism"], mech.name(), "{all}");
        assert_eq!(auth["secret"], "<redacted>", "{all}");
        let identity = if *mech == Mech::Plain {
            assert_eq!(auth["authzid"], "", "an empty authzid stays empty: {all}");
            &auth["authcid"]
        } else {
            &auth["user"]
        };
        identities.push(assert_fingerprint(identity));
        if *mech != Mech::CramMd5 {
            secrets.push(assert_fingerprint(&auth["fingerprint"]));
        }
    }
    identities.dedup();
    assert_eq!(identities.len(), 1, "one user, one fingerprint: {identities:?}");
    assert!(!secrets.contains(&identities[0]), "the identity's fingerprint is not the password's");

    let written = files_under(&proxy.record_dir());
    let needles: Vec<(String, String)> =
        leak_forms(USER).into_iter().map(|(form, text)| (format!("the user name as {form}"), text)).collect();
    let leaks = find(&needles, &written);
    assert!(leaks.is_empty(), "the user name was recorded:\n{}", leaks.join("\n"));
    let password_leaks = find(&password_needles(), &written);
    assert!(password_leaks.is_empty(), "{}", password_leaks.join("\n"));
}

#[test]
fn redact_none_keeps_everything_marks_the_session_and_warns_at_start() {
    let server = AuthServer::start(false);
    let proxy = plaintext_proxy(&server, &["--redact", "none"]);
    // The warning comes at start, before any client.
    let deadline = Instant::now() + PATIENCE;
    while !proxy.stderr().lines().any(|l| l.contains("WARN") && l.contains("--redact none")) {
        assert!(Instant::now() < deadline, "no warning about --redact none:\n{}", proxy.stderr());
        thread::sleep(Duration::from_millis(10));
    }
    authenticate(Client::Swaks, Some(Mech::Plain), proxy.addr, true, None);
    authenticate(Client::Swaks, Some(Mech::Login), proxy.addr, false, None);
    let sessions = proxy.sessions(2);
    for session in &sessions {
        assert_eq!(session[0]["redact"], "none", "{}", session[0]);
    }

    let plain = &attempts(&sessions[0])[0];
    let all = pretty(plain);
    assert_eq!(plain.len(), 1, "{all}");
    let blob = b64(format!("\0{USER}\0{PASSWORD}").as_bytes());
    assert_eq!(plain[0]["command"]["line"], format!("AUTH PLAIN {blob}"), "the real line: {all}");
    let auth = &plain[0]["command"]["auth"];
    assert_eq!(auth["authcid"], USER, "{all}");
    assert_eq!(auth["secret"], PASSWORD, "{all}");
    assert_eq!(plain[0]["reply"]["code"], 235);

    let login = &attempts(&sessions[1])[0];
    let all = pretty(login);
    let lines: Vec<&str> = login.iter().map(|e| e["command"]["line"].as_str().unwrap()).collect();
    assert_eq!(lines, ["AUTH LOGIN".to_owned(), b64(USER.as_bytes()), b64(WRONG.as_bytes())], "{all}");
    assert_eq!(login[2]["command"]["auth"]["secret"], WRONG, "{all}");
    assert_eq!(login[2]["reply"]["code"], 535, "{all}");
}

// ---------------------------------------------------------------------------
// 5. Notes: AUTH before TLS, mechanisms offered but not used
// ---------------------------------------------------------------------------

#[test]
fn auth_before_tls_and_unused_mechanisms_are_noted() {
    let server = AuthServer::start(false);
    let proxy = plaintext_proxy(&server, &[]);
    authenticate(Client::Swaks, Some(Mech::Plain), proxy.addr, true, None);
    authenticate(Client::Swaks, Some(Mech::CramMd5), proxy.addr, true, None);
    let sessions = proxy.sessions(2);
    for (session, (used, others)) in
        sessions.iter().zip([("PLAIN", ["LOGIN", "CRAM-MD5"]), ("CRAM-MD5", ["LOGIN", "PLAIN"])])
    {
        let notes = notes(session);
        assert_eq!(notes.len(), 2, "{notes:?}");
        let before_tls: Vec<&&str> = notes.iter().filter(|n| n.contains("before TLS")).collect();
        assert_eq!(before_tls.len(), 1, "one note on AUTH before TLS: {notes:?}");
        assert!(before_tls[0].contains("AUTH"), "{notes:?}");
        let unused: Vec<&&str> = notes.iter().filter(|n| others.iter().all(|m| n.contains(m))).collect();
        assert_eq!(unused.len(), 1, "one note naming {others:?}: {notes:?}");
        assert!(unused[0].contains(used), "it says what the client used: {notes:?}");
        let auth = exchanges(session).into_iter().find(|e| e["command"]["verb"] == "AUTH").unwrap();
        assert_eq!(auth["tls"], false);
    }
}

#[test]
fn auth_inside_tls_is_not_noted_as_sent_before_tls() {
    let server = AuthServer::start(true);
    let proxy = starttls_proxy(&server, &[]);
    let run = authenticate(Client::Swaks, Some(Mech::Plain), proxy.addr, true, Some(&proxy.ca_cert()));
    assert!(run.transcript.contains("<~  235"), "swaks authenticated inside TLS:\n{}", run.transcript);
    assert_eq!(server.auth_log(), [format!("tls=1 PLAIN {USER} ok")], "the server got AUTH inside TLS");

    let session = &proxy.sessions(1)[0];
    for side in ["client", "upstream"] {
        let tls = session.iter().find(|r| r["type"] == "tls" && r["side"] == side);
        assert!(tls.is_some_and(|r| r["error"].is_null()), "a {side} handshake: {tls:?}");
    }
    let found = attempts(session);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0][0]["tls"], true, "{}", found[0][0]);
    assert_attempt(&found[0], Mech::Plain, USER, 235, true);
    let notes = notes(session);
    assert_eq!(notes.len(), 1, "only the unused mechanisms are noted: {notes:?}");
    assert!(notes[0].contains("LOGIN") && notes[0].contains("CRAM-MD5"), "{notes:?}");
    assert!(!notes[0].contains("before TLS"), "{notes:?}");
}
