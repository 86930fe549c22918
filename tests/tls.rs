//! TLS on both sides (issue 3): the real binary between real clients that
//! verify the proxy's certificate and real TLS upstreams.
//!
//! Clients: swaks (`--tls`, `--tlsc`, with `--tls-verify`), curl (`smtp://`
//! with `--ssl-reqd`, `smtps://`), Python smtplib (`starttls()`, `SMTP_SSL`,
//! tests/peers/smtplib_tls.py) and a hand-driven rustls client for the
//! injection cases. Upstreams: the built-in test server (its certificate comes
//! from the local CA), aiosmtpd with STARTTLS or implicit TLS or none
//! (tests/peers/aiosmtpd_tls.py, which keeps each message and logs each
//! command with whether it came inside TLS), and a hand-written STARTTLS
//! server that pushes bytes after its `220`.
//!
//! Every peer must be installed: a missing one fails its test. Each test owns
//! its ports (all from 127.0.0.1:0), waits for readiness by reading a line,
//! never by sleeping, and kills its processes on drop, also when it panics.

mod common;
use common::*;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, mpsc};
use std::thread;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A message with what TLS must carry unchanged: leading dots, UTF-8, a long line.
fn test_message(subject: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{FROM}>\r\nTo: <{TO}>\r\nSubject: {subject}\r\nMessage-ID: <tls@x.test>\r\n\r\n\
         first line\r\n.leading dot\r\n..two dots\r\nGr\u{fc}\u{df}e, \u{65e5}\u{672c}\r\n"
    )
    .into_bytes();
    m.extend(std::iter::repeat_n(b'x', 900));
    m.extend_from_slice(b"\r\nlast line\r\n");
    m
}

// ---------------------------------------------------------------------------
// Reading recordings
// ---------------------------------------------------------------------------

/// The `tls` records of one side, in order.
fn tls_records<'a>(session: &'a [Value], side: &str) -> Vec<&'a Value> {
    session.iter().filter(|r| r["type"] == "tls" && r["side"] == side).collect()
}

/// The one `tls` record of `side`; it must describe a completed handshake.
fn tls_ok<'a>(session: &'a [Value], side: &str) -> &'a Value {
    let records = tls_records(session, side);
    assert_eq!(records.len(), 1, "one {side} tls record expected: {records:?}");
    let r = records[0];
    assert!(r["error"].is_null(), "{side} handshake failed: {r}");
    assert!(r["version"].as_str().is_some_and(|v| v.starts_with("TLSv1.")), "{r}");
    assert!(r["cipher"].as_str().is_some_and(|c| c.starts_with("TLS")), "{r}");
    assert!(r["t"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
    r
}

/// The one `tls` record of `side`; it must describe a failed handshake.
fn tls_failed<'a>(session: &'a [Value], side: &str) -> &'a str {
    let records = tls_records(session, side);
    assert_eq!(records.len(), 1, "one {side} tls record expected: {records:?}");
    records[0]["error"].as_str().unwrap_or_else(|| panic!("no error in {}", records[0]))
}

fn notes(session: &[Value]) -> Vec<&Value> {
    session.iter().filter(|r| r["type"] == "note").collect()
}

fn end(session: &[Value]) -> &Value {
    let end = session.last().expect("a recording");
    assert_eq!(end["type"], "end", "{end}");
    end
}

/// The session ended with QUIT and counts its exchanges right.
fn assert_quit(session: &[Value]) {
    let end = end(session);
    assert_eq!(end["reason"], "quit", "{end}");
    assert!(end["error"].is_null(), "{end}");
    assert_eq!(end["exchanges"], exchanges(session).len(), "{end}");
}

/// The session ended in `tls-failed`; returns `end.error`.
fn assert_tls_failed(session: &[Value]) -> &str {
    let end = end(session);
    assert_eq!(end["reason"], "tls-failed", "{end}");
    end["error"].as_str().unwrap_or_else(|| panic!("tls-failed without an error: {end}"))
}

/// Exchanges numbered from 0 without gaps, each answered.
fn assert_well_formed(session: &[Value]) {
    assert_eq!(session[0]["type"], "session", "{}", session[0]);
    for (i, e) in exchanges(session).iter().enumerate() {
        assert_eq!(e["seq"], i, "{e}");
        assert!(e["reply"]["code"].is_u64(), "{e}");
    }
}

/// Every exchange the client took part in has `tls` false before the
/// client-side handshake and true after it; smtptap's own commands to the
/// upstream travel before the upstream's handshake, so they are plaintext.
fn assert_tls_flags(session: &[Value]) {
    let mut client_tls = false;
    for r in session {
        match r["type"].as_str() {
            Some("tls") if r["side"] == "client" && r["error"].is_null() => client_tls = true,
            Some("exchange") if r["origin"] == "proxy" && !r["command"].is_null() => {
                assert_eq!(r["tls"], false, "smtptap's own command before the upstream handshake: {r}");
            }
            Some("exchange") => assert_eq!(r["tls"], client_tls, "{r}"),
            _ => {}
        }
    }
}

/// `(verb, code)` of the commands smtptap sent itself.
fn proxy_commands(session: &[Value]) -> Vec<(String, u64)> {
    exchanges(session)
        .iter()
        .filter(|e| e["origin"] == "proxy" && !e["command"].is_null())
        .map(|e| (e["command"]["verb"].as_str().unwrap().to_owned(), e["reply"]["code"].as_u64().unwrap()))
        .collect()
}

/// The exchange of the first command `verb`.
fn exchange_of<'a>(session: &'a [Value], verb: &str) -> &'a Value {
    exchanges(session)
        .into_iter()
        .find(|e| e["command"]["verb"] == verb && e["origin"] != "proxy")
        .unwrap_or_else(|| panic!("no {verb} from the client in the recording"))
}

/// The exchanges the client took part in: all but smtptap's own commands.
fn client_exchanges(session: &[Value]) -> Vec<&Value> {
    exchanges(session).into_iter().filter(|e| e["origin"] != "proxy" || e["command"].is_null()).collect()
}

fn has_verb(session: &[Value], verb: &str) -> bool {
    exchanges(session).iter().any(|e| e["command"]["verb"] == verb)
}

/// The recorded message exchanges' bodies, in order.
fn recorded_bodies(session: &[Value]) -> Vec<Vec<u8>> {
    exchanges(session).into_iter().filter(|e| e.get("message").is_some()).map(body_bytes).collect()
}

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

/// swaks against `addr`: `tls` is `off` (plaintext), `starttls` (`--tls`) or
/// `implicit` (`--tlsc`); with TLS it verifies the server against `ca`.
fn swaks(addr: SocketAddr, tls: &str, ca: Option<&Path>, extra: &[&str]) -> Output {
    let server = addr.to_string();
    let mut args = vec!["--server", server.as_str(), "--from", FROM, "--to", TO, "--helo", "swaks.test"];
    match tls {
        "off" => {}
        "starttls" => args.extend(["--tls", "--tls-verify"]),
        "implicit" => args.extend(["--tlsc", "--tls-verify"]),
        other => panic!("no such mode {other}"),
    }
    if let Some(ca) = ca {
        args.extend(["--tls-ca-path", path_str(ca)]);
    }
    args.extend_from_slice(extra);
    run_peer("swaks", &args, None)
}

/// The reply lines swaks printed (`<-  ` plaintext, `<~  ` inside TLS), as
/// `(inside TLS, line without code and separator)`.
fn swaks_replies(transcript: &str) -> Vec<(bool, String)> {
    transcript
        .lines()
        .filter_map(|l| {
            l.strip_prefix("<-  ").map(|r| (false, r)).or_else(|| l.strip_prefix("<~  ").map(|r| (true, r)))
        })
        .map(|(tls, r)| (tls, r.get(4..).unwrap_or("").to_owned()))
        .collect()
}

/// Whether swaks was offered STARTTLS in plaintext / inside TLS.
fn swaks_offered_starttls(transcript: &str) -> (bool, bool) {
    let offers: Vec<bool> = swaks_replies(transcript)
        .into_iter()
        .filter(|(_, text)| text.eq_ignore_ascii_case("STARTTLS"))
        .map(|(tls, _)| tls)
        .collect();
    (offers.contains(&false), offers.contains(&true))
}

/// curl uploading `file` to `url` (`--cacert ca` when given); `extra` flags
/// come first. Returns its output, whatever the exit status.
fn curl(url: &str, ca: Option<&Path>, file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["-sS", "-v", "--max-time", "30"];
    args.extend_from_slice(extra);
    if let Some(ca) = ca {
        args.extend(["--cacert", path_str(ca)]);
    }
    args.extend(["--url", url, "--mail-from", FROM, "--mail-rcpt", TO, "--upload-file", path_str(file)]);
    run_peer("curl", &args, None)
}

/// `--resolve` pinning `localhost:PORT` to the proxy's loopback address.
fn resolve_localhost(addr: SocketAddr) -> String {
    format!("localhost:{}:127.0.0.1", addr.port())
}

/// tests/peers/smtplib_tls.py: one message over `starttls` or `implicit`
/// TLS, verifying against `ca` for `host`. Returns what the script reports.
fn smtplib_tls(mode: &str, host: &str, addr: SocketAddr, ca: &Path, message: &Path) -> Value {
    let script = peer_script("smtplib_tls.py");
    let port = addr.port().to_string();
    let out = run_peer("python3", &[path_str(&script), mode, host, &port, path_str(ca), path_str(message)], None);
    assert_success(&out, "smtplib_tls.py");
    serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

fn smtplib_subject_cn(result: &Value) -> String {
    let subject = result["subject"].as_array().expect("subject");
    let cn = subject.iter().find(|p| p[0] == "commonName").expect("a CN");
    cn[1].as_str().unwrap().to_owned()
}

/// aiosmtpd as the upstream (tests/peers/aiosmtpd_tls.py): `none`,
/// `starttls` or `implicit`, with its own self-signed certificate.
struct Aiosmtpd {
    // Fields drop in order: the process dies before its directory goes.
    _child: ChildGuard,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    cert: PathBuf,
}

impl Aiosmtpd {
    fn start(mode: &str) -> Aiosmtpd {
        Self::start_with(mode, "basicConstraints=critical,CA:FALSE")
    }

    fn start_with(mode: &str, constraints: &str) -> Aiosmtpd {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let (cert, key) = self_signed_with(dir.path(), "aiosmtpd", constraints);
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new("python3");
        cmd.arg(peer_script("aiosmtpd_tls.py")).arg(mode).arg(&out);
        if mode != "none" {
            cmd.arg(&cert).arg(&key);
        }
        let (child, addr) = spawn_ready_peer(&mut cmd, "aiosmtpd_tls.py", &stderr);
        Aiosmtpd { _child: child, addr, dir, cert }
    }

    fn upstream(&self) -> String {
        self.addr.to_string()
    }

    fn cert(&self) -> &str {
        path_str(&self.cert)
    }

    /// Waits until exactly `n` messages have been stored; returns them in order.
    fn messages(&self, n: usize) -> Vec<Vec<u8>> {
        wait_messages(&self.dir.path().join("out"), n, &self.dir.path().join("stderr"))
    }

    /// Every command aiosmtpd received, as `tls=0|1 LINE`.
    fn commands(&self) -> Vec<String> {
        read_text(&self.dir.path().join("out/commands.log")).lines().map(str::to_owned).collect()
    }
}

// --- A rustls client driven by hand -----------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts only the certificates in `ca`.
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA").map(|c| c.expect("PEM certificate")) {
        roots.add(cert).expect("trust anchor");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Final reply lines in `received`.
fn finals(received: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(received)
        .split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ' || l.len() == 3)
        .map(str::to_owned)
        .collect()
}

/// A TLS session over a connection that began as a [`RawClient`].
struct TlsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    received: Vec<u8>,
}

impl TlsClient {
    /// Completes the handshake on `raw` (which must have nothing unread),
    /// verifying the server against `ca` for `name`.
    fn handshake(raw: RawClient, ca: &Path, name: &str) -> TlsClient {
        let RawClient { mut stream, received } = raw;
        assert!(received.ends_with(b"\r\n"), "a partial reply before the handshake: {received:?}");
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        let mut conn = rustls::ClientConnection::new(client_config(ca), name).expect("client connection");
        while conn.is_handshaking() {
            conn.complete_io(&mut stream).expect("TLS handshake with the proxy");
        }
        TlsClient { stream: rustls::StreamOwned::new(conn, stream), received: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send inside TLS");
        self.stream.flush().expect("flush");
    }

    /// Reads until `n` final reply lines have arrived inside TLS in total.
    fn read_replies(&mut self, n: usize) -> Vec<String> {
        let mut buf = [0u8; 16384];
        loop {
            let got = finals(&self.received);
            if got.len() >= n {
                return got;
            }
            let k = self.stream.read(&mut buf).expect("read reply inside TLS");
            assert!(k > 0, "closed after {} replies: {:?}", got.len(), String::from_utf8_lossy(&self.received));
            self.received.extend_from_slice(&buf[..k]);
        }
    }
}

/// Reads a plaintext reply and nothing more: the bytes received so far must
/// end with the reply's last line.
fn read_exactly_replies(raw: &mut RawClient, n: usize) -> Vec<String> {
    let replies = raw.read_replies(n);
    assert_eq!(replies.len(), n, "more replies than expected: {replies:?}");
    assert!(raw.received.ends_with(b"\r\n"), "{:?}", String::from_utf8_lossy(&raw.received));
    replies
}

// --- A STARTTLS server that says too much -------------------------------------

/// A STARTTLS upstream (the built-in server's protocol logic over rustls with
/// an rcgen certificate) that sends `after_220` right behind its `220` to
/// STARTTLS, in the same write, before the handshake: a server-side injection.
struct PushyServer {
    addr: SocketAddr,
    cert: PathBuf,
    _dir: tempfile::TempDir,
    /// What each finished connection received inside TLS.
    inside_tls: mpsc::Receiver<Vec<u8>>,
}

impl PushyServer {
    fn start(after_220: &'static [u8]) -> PushyServer {
        let dir = tempfile::tempdir().unwrap();
        let issued = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("rcgen certificate");
        let cert = write_file(dir.path(), "pushy.pem", issued.cert.pem().as_bytes());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![issued.cert.der().clone()], key)
            .expect("server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, inside_tls) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (config, tx) = (config.clone(), tx.clone());
                thread::spawn(move || {
                    if let Some(received) = pushy_session(stream, config, after_220) {
                        let _ = tx.send(received);
                    }
                });
            }
        });
        PushyServer { addr, cert, _dir: dir, inside_tls }
    }

    /// What the first connection received inside TLS, once it has closed.
    fn received_inside_tls(&self) -> Vec<u8> {
        self.inside_tls.recv_timeout(PATIENCE).expect("the pushy server's session to end")
    }
}

fn pushy_session(mut tcp: TcpStream, config: Arc<rustls::ServerConfig>, after_220: &[u8]) -> Option<Vec<u8>> {
    use smtptap::server::{Flow, ServerConfig, ServerSession};
    tcp.set_read_timeout(Some(PATIENCE)).ok()?;
    let mut session = ServerSession::new(ServerConfig::default());
    session.offer_starttls();
    let mut out = Vec::new();
    session.greeting(&mut out);
    tcp.write_all(&out).ok()?;
    let mut buf = [0u8; 16384];
    loop {
        let n = tcp.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        out.clear();
        let flow = session.feed(&buf[..n], &mut out);
        if flow == Flow::StartTls {
            out.extend_from_slice(after_220);
            tcp.write_all(&out).ok()?;
            break;
        }
        tcp.write_all(&out).ok()?;
        if flow == Flow::Close {
            return None;
        }
    }
    let conn = rustls::ServerConnection::new(config).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    session.tls_started();
    let mut received = Vec::new();
    loop {
        let n = match tls.read(&mut buf) {
            Ok(0) | Err(_) => return Some(received),
            Ok(n) => n,
        };
        received.extend_from_slice(&buf[..n]);
        out.clear();
        let flow = session.feed(&buf[..n], &mut out);
        if tls.write_all(&out).and_then(|()| tls.flush()).is_err() || flow == Flow::Close {
            tls.conn.send_close_notify();
            let _ = tls.flush();
            return Some(received);
        }
    }
}

// ---------------------------------------------------------------------------
// 1. All nine mode combinations against the built-in server, with swaks
// ---------------------------------------------------------------------------

/// One swaks session through `--client-tls client --upstream-tls upstream`
/// to the built-in server, with every rule of SPEC.md's TLS translation
/// checked on the recording and on what swaks saw.
fn mode_combination(client: &str, upstream: &str) {
    let proxy = Proxy::start(&["--client-tls", client, "--upstream-tls", upstream]);
    let ca = proxy.ca_cert();
    let out = swaks(proxy.addr, client, (client != "off").then_some(ca.as_path()), &[]);
    assert_success(&out, "swaks");
    let transcript = stdout(&out);
    let replies = swaks_replies(&transcript);
    assert!(
        replies.iter().any(|(_, r)| r.starts_with("2.0.0 Ok: queued")),
        "the message was not queued:\n{transcript}"
    );
    if client != "off" {
        assert!(transcript.contains("=== TLS started"), "{transcript}");
        // Everything after the handshake was inside TLS, as swaks saw it.
        assert!(replies.iter().any(|(tls, r)| *tls && r.starts_with("2.0.0 Ok: queued")), "{transcript}");
    } else {
        assert!(replies.iter().all(|(tls, _)| !tls), "{transcript}");
    }

    let session = &proxy.sessions(1)[0];
    assert_well_formed(session);
    assert_quit(session);
    let info = &session[0];
    assert_eq!(info["client_tls"], client, "{info}");
    assert_eq!(info["upstream_tls"], upstream, "{info}");
    assert!(info["insecure_upstream"].is_null() || info["insecure_upstream"] == false, "{info}");

    // A `tls` record per encrypted side, and only then.
    if client == "off" {
        assert!(tls_records(session, "client").is_empty(), "{session:?}");
    } else {
        let r = tls_ok(session, "client");
        assert!(r["sni"].is_null(), "swaks connected by address and sent no SNI: {r}");
    }
    if upstream == "off" {
        assert!(tls_records(session, "upstream").is_empty(), "{session:?}");
    } else {
        let r = tls_ok(session, "upstream");
        let peer = &r["peer"];
        assert_eq!(peer["verified"], true, "{r}");
        assert!(peer["verify_error"].is_null(), "{r}");
        assert_eq!(peer["subject"], "CN=127.0.0.1", "{r}");
        assert!(peer["issuer"].as_str().unwrap().contains("smtptap local CA"), "{r}");
        assert_eq!(peer["sha256"].as_str().map(str::len), Some(64), "{r}");
    }
    assert_tls_flags(session);

    // smtptap upgrades the upstream itself exactly when the client does not
    // do STARTTLS and the upstream wants it, right after the greeting.
    let proxy_initiated = client != "starttls" && upstream == "starttls";
    let own = proxy_commands(session);
    if proxy_initiated {
        assert_eq!(own, want(&[("EHLO", 250), ("STARTTLS", 220)]), "{session:?}");
        let ex = exchanges(session);
        assert_eq!((ex[1]["origin"].as_str(), ex[2]["origin"].as_str()), (Some("proxy"), Some("proxy")));
        assert_eq!(ex[1]["command"]["line"], "EHLO smtptap");
    } else {
        assert!(own.is_empty(), "no command of smtptap's own expected: {own:?}");
    }

    // The client's STARTTLS: mirrored to the server, or answered by smtptap.
    let hello = want(&[("-", 220), ("EHLO", 250)]);
    let mail = want(&[("MAIL", 250), ("RCPT", 250), ("DATA", 354), ("-", 250), ("QUIT", 221)]);
    let middle = match (client, proxy_initiated) {
        ("starttls", _) => want(&[("STARTTLS", 220), ("EHLO", 250)]),
        (_, true) => want(&[("EHLO", 250), ("STARTTLS", 220), ("EHLO", 250)]),
        _ => Vec::new(),
    };
    let expected: Vec<(String, u64)> =
        if proxy_initiated { [want(&[("-", 220)]), middle, mail].concat() } else { [hello, middle, mail].concat() };
    assert_eq!(summary(session), expected);
    if client == "starttls" {
        let starttls = exchange_of(session, "STARTTLS");
        assert_eq!(starttls["tls"], false, "{starttls}");
        if upstream == "starttls" {
            assert!(starttls["answered_by"].is_null(), "mirrored to the server: {starttls}");
        } else {
            assert_eq!(starttls["answered_by"], "proxy", "{starttls}");
        }
    }

    // STARTTLS as the client saw it offered: before TLS when the client side
    // does STARTTLS, never when it is off or already TLS.
    let (plain_offer, tls_offer) = swaks_offered_starttls(&transcript);
    assert!(!tls_offer, "STARTTLS offered inside TLS:\n{transcript}");
    assert_eq!(plain_offer, client == "starttls", "STARTTLS offered in plaintext:\n{transcript}");
    if client == "starttls" && upstream != "starttls" {
        let texts: Vec<&str> = notes(session).iter().filter_map(|n| n["text"].as_str()).collect();
        assert!(texts.iter().any(|t| t.contains("STARTTLS added to the EHLO reply")), "{texts:?}");
    }
}

#[test]
fn client_off_upstream_off() {
    mode_combination("off", "off");
}

#[test]
fn client_off_upstream_starttls() {
    mode_combination("off", "starttls");
}

#[test]
fn client_off_upstream_implicit() {
    mode_combination("off", "implicit");
}

#[test]
fn client_starttls_upstream_off() {
    mode_combination("starttls", "off");
}

#[test]
fn client_starttls_upstream_starttls() {
    mode_combination("starttls", "starttls");
}

#[test]
fn client_starttls_upstream_implicit() {
    mode_combination("starttls", "implicit");
}

#[test]
fn client_implicit_upstream_off() {
    mode_combination("implicit", "off");
}

#[test]
fn client_implicit_upstream_starttls() {
    mode_combination("implicit", "starttls");
}

#[test]
fn client_implicit_upstream_implicit() {
    mode_combination("implicit", "implicit");
}

/// With an upstream that offers STARTTLS but `--upstream-tls off`, smtptap
/// must withdraw the offer from a plaintext or implicit-TLS client, and answer
/// a STARTTLS client's STARTTLS itself: the server never sees STARTTLS.
#[test]
fn starttls_offered_by_the_server_is_stripped_or_answered_per_client_mode() {
    let server = Aiosmtpd::start("starttls");
    let upstream = server.upstream();
    for (client, n) in [("off", 0), ("implicit", 1), ("starttls", 2)] {
        let proxy = Proxy::start(&["--upstream", &upstream, "--client-tls", client, "--upstream-tls", "off"]);
        let ca = proxy.ca_cert();
        let out = swaks(proxy.addr, client, (client != "off").then_some(ca.as_path()), &[]);
        assert_success(&out, "swaks");
        let transcript = stdout(&out);
        let (plain_offer, tls_offer) = swaks_offered_starttls(&transcript);
        assert!(!tls_offer, "{client}: STARTTLS offered inside TLS:\n{transcript}");
        assert_eq!(plain_offer, client == "starttls", "{client}: offered in plaintext?\n{transcript}");

        let session = &proxy.sessions(1)[0];
        assert_quit(session);
        assert_tls_flags(session);
        let ehlo = exchange_of(session, "EHLO");
        assert!(
            ehlo["reply"]["lines"].as_array().unwrap().iter().any(|l| l == "STARTTLS"),
            "the record keeps the server's reply as it was: {ehlo}"
        );
        let texts: Vec<&str> = notes(session).iter().filter_map(|n| n["text"].as_str()).collect();
        if client == "starttls" {
            assert_eq!(exchange_of(session, "STARTTLS")["answered_by"], "proxy");
        } else {
            assert!(texts.iter().any(|t| t.contains("STARTTLS removed from the EHLO reply")), "{texts:?}");
        }
        assert_eq!(server.messages(n + 1).len(), n + 1);
    }
    let commands = server.commands();
    assert!(commands.iter().all(|c| c.starts_with("tls=0 ")), "the upstream hop stayed plaintext: {commands:?}");
    assert!(!commands.iter().any(|c| c.contains("STARTTLS")), "STARTTLS reached the server: {commands:?}");
}

// ---------------------------------------------------------------------------
// 2. curl and smtplib verify the proxy; SNI picks the certificate
// ---------------------------------------------------------------------------

/// The client-side record of a session that sent one message and quit.
fn one_tls_session(proxy: &Proxy) -> Vec<Value> {
    let session = proxy.sessions(1).remove(0);
    assert_well_formed(&session);
    assert_quit(&session);
    assert_tls_flags(&session);
    assert_eq!(recorded_bodies(&session).len(), 1, "one message recorded");
    session
}

#[test]
fn curl_smtp_ssl_reqd_by_name_sends_sni_and_gets_a_certificate_for_it() {
    let proxy = Proxy::start(&["--client-tls", "starttls"]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "m.eml", &test_message("curl starttls"));
    let url = format!("smtp://localhost:{}/curl.test", proxy.addr.port());
    let resolve = resolve_localhost(proxy.addr);
    let out = curl(&url, Some(&proxy.ca_cert()), &file, &["--ssl-reqd", "--resolve", &resolve]);
    assert_success(&out, "curl smtp:// --ssl-reqd");
    let log = stderr(&out);
    assert!(log.contains("subject: CN=localhost"), "curl saw no certificate for localhost:\n{log}");
    assert!(log.contains("issuer: CN=smtptap local CA"), "{log}");

    let session = one_tls_session(&proxy);
    let r = tls_ok(&session, "client");
    assert_eq!(r["sni"], "localhost", "{r}");
    assert_eq!(recorded_bodies(&session)[0], test_message("curl starttls"));
    assert_eq!(exchange_of(&session, "STARTTLS")["tls"], false);
    assert_eq!(exchange_of(&session, "MAIL")["tls"], true);
}

#[test]
fn curl_smtps_by_name_sends_sni_and_gets_a_certificate_for_it() {
    let proxy = Proxy::start(&["--client-tls", "implicit"]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "m.eml", &test_message("curl smtps"));
    let url = format!("smtps://localhost:{}/curl.test", proxy.addr.port());
    let resolve = resolve_localhost(proxy.addr);
    let out = curl(&url, Some(&proxy.ca_cert()), &file, &["--resolve", &resolve]);
    assert_success(&out, "curl smtps://");
    let log = stderr(&out);
    assert!(log.contains("subject: CN=localhost"), "curl saw no certificate for localhost:\n{log}");

    let session = one_tls_session(&proxy);
    let r = tls_ok(&session, "client");
    assert_eq!(r["sni"], "localhost", "{r}");
    assert!(client_exchanges(&session).iter().all(|e| e["tls"] == true), "implicit TLS from the greeting on");
    assert!(!client_exchanges(&session).iter().any(|e| e["command"]["verb"] == "STARTTLS"), "no client STARTTLS");
    assert_eq!(proxy_commands(&session), want(&[("EHLO", 250), ("STARTTLS", 220)]), "smtptap's own, upstream");
}

#[test]
fn smtplib_starttls_by_name_sends_sni_and_gets_a_certificate_for_it() {
    let proxy = Proxy::start(&["--client-tls", "starttls"]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "m.eml", &test_message("smtplib starttls"));
    let result = smtplib_tls("starttls", "localhost", proxy.addr, &proxy.ca_cert(), &file);
    assert_eq!(smtplib_subject_cn(&result), "localhost", "{result}");
    assert_eq!(result["san"], serde_json::json!([["DNS", "localhost"]]), "{result}");
    let before = result["ehlo_before"].as_array().unwrap();
    assert!(before.iter().any(|k| k == "STARTTLS"), "{result}");
    assert!(!result["ehlo_after"].as_array().unwrap().iter().any(|k| k == "STARTTLS"), "{result}");

    let session = one_tls_session(&proxy);
    let r = tls_ok(&session, "client");
    assert_eq!(r["sni"], "localhost", "{r}");
    assert_eq!(r["version"], result["version"], "the record names the version the client negotiated");
    assert_eq!(recorded_bodies(&session)[0], test_message("smtplib starttls"));
}

#[test]
fn smtplib_ssl_by_address_sends_no_sni_and_gets_a_certificate_for_the_upstream_host() {
    let proxy = Proxy::start(&["--client-tls", "implicit"]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "m.eml", &test_message("smtplib ssl"));
    let result = smtplib_tls("implicit", "127.0.0.1", proxy.addr, &proxy.ca_cert(), &file);
    assert_eq!(smtplib_subject_cn(&result), "127.0.0.1", "{result}");
    assert_eq!(result["san"], serde_json::json!([["IP Address", "127.0.0.1"]]), "{result}");

    let session = one_tls_session(&proxy);
    let r = tls_ok(&session, "client");
    assert!(r["sni"].is_null(), "no SNI for an address: {r}");
    assert_eq!(r["version"], result["version"]);
    assert!(client_exchanges(&session).iter().all(|e| e["tls"] == true));
}

// ---------------------------------------------------------------------------
// 3. aiosmtpd upstreams with STARTTLS and with implicit TLS
// ---------------------------------------------------------------------------

/// The upstream's record: its self-signed certificate, verified.
fn assert_aiosmtpd_peer(session: &[Value]) {
    let r = tls_ok(session, "upstream");
    let peer = &r["peer"];
    assert!(peer["subject"].as_str().unwrap().contains("localhost"), "{r}");
    assert_eq!(peer["issuer"], peer["subject"], "self-signed: {r}");
    assert_eq!(peer["verified"], true, "{r}");
    assert!(peer["verify_error"].is_null(), "{r}");
}

#[test]
fn aiosmtpd_starttls_upstream_receives_the_message_byte_identical() {
    let server = Aiosmtpd::start("starttls");
    let upstream = server.upstream();
    let proxy = Proxy::start(&["--upstream", &upstream, "--upstream-ca", server.cert()]);
    let dir = tempfile::tempdir().unwrap();
    let content = test_message("to aiosmtpd via STARTTLS");
    let file = write_file(dir.path(), "m.eml", &content);
    let result = smtplib_tls("starttls", "127.0.0.1", proxy.addr, &proxy.ca_cert(), &file);
    assert_eq!(smtplib_subject_cn(&result), "127.0.0.1", "the proxy's leaf, not the server's: {result}");

    assert_eq!(server.messages(1)[..], [&content[..]]);
    let session = one_tls_session(&proxy);
    assert_eq!(recorded_bodies(&session), [content]);
    assert_aiosmtpd_peer(&session);
    tls_ok(&session, "client");
    assert!(exchange_of(&session, "STARTTLS")["answered_by"].is_null(), "mirrored");
    // The server saw STARTTLS in plaintext, the rest inside TLS.
    let commands = server.commands();
    let split = commands.iter().position(|c| c == "tls=0 STARTTLS").expect("STARTTLS reached the server");
    assert!(commands[..split].iter().all(|c| c.starts_with("tls=0 ")), "{commands:?}");
    assert!(commands[split + 1..].iter().all(|c| c.starts_with("tls=1 ")), "{commands:?}");
    assert!(commands.iter().any(|c| c.starts_with("tls=1 DATA")), "{commands:?}");
}

#[test]
fn aiosmtpd_implicit_tls_upstream_receives_the_message_byte_identical() {
    let server = Aiosmtpd::start("implicit");
    let upstream = server.upstream();
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream,
        "--upstream-ca",
        server.cert(),
        "--client-tls",
        "implicit",
        "--upstream-tls",
        "implicit",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let content = test_message("to aiosmtpd via implicit TLS");
    let file = write_file(dir.path(), "m.eml", &content);
    let url = format!("smtps://127.0.0.1:{}/curl.test", proxy.addr.port());
    let out = curl(&url, Some(&proxy.ca_cert()), &file, &[]);
    assert_success(&out, "curl smtps://");

    assert_eq!(server.messages(1)[..], [&content[..]]);
    let session = one_tls_session(&proxy);
    assert_eq!(recorded_bodies(&session), [content]);
    assert_aiosmtpd_peer(&session);
    let commands = server.commands();
    assert!(!commands.is_empty() && commands.iter().all(|c| c.starts_with("tls=1 ")), "{commands:?}");
}

/// A self-signed certificate as `openssl req -x509` makes it by default
/// (`CA:TRUE`), named by `--upstream-ca`, is trusted: WebPKI alone refuses a
/// CA certificate as a server's own, so smtptap pins the exact certificates
/// the user named.
#[test]
fn upstream_ca_names_a_default_openssl_self_signed_certificate() {
    let server = Aiosmtpd::start_with("implicit", "basicConstraints=critical,CA:TRUE");
    let upstream = server.upstream();
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream,
        "--upstream-ca",
        server.cert(),
        "--client-tls",
        "off",
        "--upstream-tls",
        "implicit",
    ]);
    let out = swaks(proxy.addr, "off", None, &[]);
    assert_success(&out, "swaks through a pinned upstream");
    assert_eq!(server.messages(1).len(), 1);
    let session = one_tls_session(&proxy);
    assert_eq!(tls_ok(&session, "upstream")["peer"]["verified"], true);
}

// ---------------------------------------------------------------------------
// 4. An upstream certificate nobody vouches for
// ---------------------------------------------------------------------------

/// A raw client that has had the greeting and the reply to `EHLO raw.test`.
fn greeted_after_ehlo(addr: SocketAddr) -> RawClient {
    let mut raw = RawClient::connect(addr);
    raw.read_replies(1);
    raw.send(b"EHLO raw.test\r\n");
    raw.read_replies(2);
    raw
}

/// A plaintext client hears `421 4.7.0` and the connection closes: nothing
/// was relayed in plaintext after the failure.
fn assert_refused_with_421(raw: &mut RawClient) -> String {
    let all = raw.read_to_close();
    let text = String::from_utf8_lossy(&all).into_owned();
    let last = text.trim_end().lines().last().unwrap_or("").to_owned();
    assert!(last.starts_with("421 4.7.0 "), "expected a closing 421 4.7.0, got {text:?}");
    last
}

#[test]
fn untrusted_upstream_certificate_on_mirrored_starttls_is_a_421_not_a_fallback() {
    let server = Aiosmtpd::start("starttls");
    let upstream = server.upstream();
    let proxy = Proxy::start(&["--upstream", &upstream]);
    let mut raw = greeted_after_ehlo(proxy.addr);
    raw.send(b"STARTTLS\r\n");
    let said = assert_refused_with_421(&mut raw);
    assert!(said.contains("certificate"), "{said}");

    let session = &proxy.sessions(1)[0];
    let error = assert_tls_failed(session);
    assert!(error.contains("certificate"), "{error}");
    let upstream_error = tls_failed(session, "upstream");
    assert!(upstream_error.contains("certificate"), "{upstream_error}");
    assert!(tls_records(session, "client").is_empty(), "the client was never told 220");
    let last = exchanges(session).last().copied().unwrap();
    assert_eq!((last["origin"].as_str(), last["reply"]["code"].as_u64()), (Some("proxy"), Some(421)), "{last}");
    assert_eq!(server.commands(), ["tls=0 EHLO raw.test", "tls=0 STARTTLS"]);
}

#[test]
fn untrusted_upstream_certificate_on_implicit_tls_is_a_421_not_a_fallback() {
    let server = Aiosmtpd::start("implicit");
    let upstream = server.upstream();
    let proxy = Proxy::start(&["--upstream", &upstream, "--client-tls", "off", "--upstream-tls", "implicit"]);
    let mut raw = RawClient::connect(proxy.addr);
    let said = assert_refused_with_421(&mut raw);
    assert!(finals(&raw.received).len() == 1, "the 421 is all the client hears: {said}");

    let session = &proxy.sessions(1)[0];
    assert!(assert_tls_failed(session).contains("certificate"));
    assert!(tls_failed(session, "upstream").contains("certificate"));
    let last = exchanges(session).last().copied().unwrap();
    assert_eq!((last["origin"].as_str(), last["reply"]["code"].as_u64()), (Some("proxy"), Some(421)), "{last}");
    assert!(!has_verb(session, "EHLO"));
    assert!(server.commands().is_empty());
}

#[test]
fn untrusted_upstream_certificate_on_proxy_initiated_starttls_is_a_421() {
    let server = Aiosmtpd::start("starttls");
    let upstream = server.upstream();
    let proxy = Proxy::start(&["--upstream", &upstream, "--client-tls", "off", "--upstream-tls", "starttls"]);
    let mut raw = RawClient::connect(proxy.addr);
    let said = assert_refused_with_421(&mut raw);
    assert!(!said.contains("aiosmtpd"), "the server's greeting was not relayed: {said}");
    assert_eq!(finals(&raw.received).len(), 1, "{said}");

    let session = &proxy.sessions(1)[0];
    assert!(assert_tls_failed(session).contains("certificate"));
    assert!(tls_failed(session, "upstream").contains("certificate"));
    assert_eq!(proxy_commands(session), want(&[("EHLO", 250), ("STARTTLS", 220)]));
    assert_eq!(server.commands(), ["tls=0 EHLO smtptap", "tls=0 STARTTLS"]);
}

#[test]
fn insecure_upstream_relays_and_records_the_unverified_certificate() {
    let server = Aiosmtpd::start("starttls");
    let upstream = server.upstream();
    let proxy = Proxy::start(&["--upstream", &upstream, "--insecure-upstream"]);
    let out = swaks(proxy.addr, "starttls", Some(&proxy.ca_cert()), &[]);
    assert_success(&out, "swaks --tls");
    assert_eq!(server.messages(1).len(), 1);

    let session = &proxy.sessions(1)[0];
    assert_quit(session);
    assert_eq!(session[0]["insecure_upstream"], true, "{}", session[0]);
    let r = tls_ok(session, "upstream");
    assert_eq!(r["peer"]["verified"], false, "{r}");
    let why = r["peer"]["verify_error"].as_str().unwrap_or_else(|| panic!("no verify_error: {r}"));
    assert!(why.contains("certificate"), "{why}");
    assert!(r["peer"]["subject"].as_str().unwrap().contains("localhost"), "{r}");
    assert!(proxy.stderr().contains("insecure-upstream"), "a loud warning at start:\n{}", proxy.stderr());
}

// ---------------------------------------------------------------------------
// 5. An upstream that refuses STARTTLS
// ---------------------------------------------------------------------------

#[test]
fn mirrored_starttls_refused_by_the_server_reaches_the_client_which_may_go_on() {
    let server = Aiosmtpd::start("none");
    let upstream = server.upstream();
    let proxy = Proxy::start(&["--upstream", &upstream]);
    let mut raw = greeted_after_ehlo(proxy.addr);
    raw.send(b"STARTTLS\r\n");
    let replies = read_exactly_replies(&mut raw, 3);
    assert!(replies[2].starts_with("454 "), "the server's refusal, as it said it: {replies:?}");
    // The client carries on in plaintext (its choice; `smtptap check` flags it).
    raw.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    let replies = raw.read_replies(6);
    assert!(replies[5].starts_with("354"), "{replies:?}");
    raw.send(b"Subject: plain\r\n\r\nafter a refused STARTTLS\r\n.\r\nQUIT\r\n");
    let replies = raw.read_replies(8);
    assert!(replies[6].starts_with("250") && replies[7].starts_with("221"), "{replies:?}");

    assert_eq!(server.messages(1), [b"Subject: plain\r\n\r\nafter a refused STARTTLS\r\n".to_vec()]);
    let session = &proxy.sessions(1)[0];
    assert_quit(session);
    let starttls = exchange_of(session, "STARTTLS");
    assert_eq!(starttls["reply"]["code"], 454, "{starttls}");
    assert!(starttls["answered_by"].is_null(), "the server's own answer: {starttls}");
    assert!(tls_records(session, "client").is_empty() && tls_records(session, "upstream").is_empty());
    assert!(exchanges(session).iter().all(|e| e["tls"] == false));
    assert!(server.commands().contains(&"tls=0 STARTTLS".to_owned()));
}

#[test]
fn proxy_initiated_starttls_refused_by_the_server_is_a_421_and_tls_failed() {
    let server = Aiosmtpd::start("none");
    let upstream = server.upstream();
    let proxy = Proxy::start(&["--upstream", &upstream, "--client-tls", "off", "--upstream-tls", "starttls"]);
    let mut raw = RawClient::connect(proxy.addr);
    let said = assert_refused_with_421(&mut raw);
    assert_eq!(finals(&raw.received).len(), 1, "{said}");
    assert!(said.contains("refused STARTTLS"), "{said}");

    let session = &proxy.sessions(1)[0];
    let error = assert_tls_failed(session);
    assert!(error.contains("refused STARTTLS") && error.contains("454"), "{error}");
    assert_eq!(proxy_commands(session), want(&[("EHLO", 250), ("STARTTLS", 454)]));
    assert!(tls_records(session, "upstream").is_empty(), "no handshake was attempted");
    assert_eq!(server.commands(), ["tls=0 EHLO smtptap", "tls=0 STARTTLS"]);
}

// ---------------------------------------------------------------------------
// 6. STARTTLS injection (CVE-2011-0411 class), both directions
// ---------------------------------------------------------------------------

/// Sends `STARTTLS\r\nRSET\r\n` in one write after EHLO, completes the
/// handshake, then EHLO and QUIT inside TLS. Returns the replies seen inside TLS.
fn inject_after_starttls(proxy: &Proxy) -> Vec<String> {
    let mut raw = greeted_after_ehlo(proxy.addr);
    raw.send(b"STARTTLS\r\nRSET\r\n");
    let replies = read_exactly_replies(&mut raw, 3);
    assert!(replies[2].starts_with("220 "), "{replies:?}");
    let mut tls = TlsClient::handshake(raw, &proxy.ca_cert(), "127.0.0.1");
    tls.send(b"EHLO raw.test\r\n");
    let first = tls.read_replies(1);
    tls.send(b"QUIT\r\n");
    let both = tls.read_replies(2);
    assert_eq!(first.len(), 1, "one reply inside TLS before QUIT, the EHLO's: {first:?}");
    assert!(tls.received.starts_with(b"250-"), "the first reply inside TLS is the EHLO's: {both:?}");
    assert!(both[1].starts_with("221"), "{both:?}");
    both
}

/// The recording kept the injected RSET as a note and never as an exchange.
fn assert_injection_noted(session: &[Value]) {
    assert_quit(session);
    assert!(!has_verb(session, "RSET"), "the injected RSET was executed: {:?}", summary(session));
    let note = notes(session)
        .into_iter()
        .find(|n| n["text"].as_str().is_some_and(|t| t.contains("after STARTTLS") && t.contains("discarded")))
        .unwrap_or_else(|| panic!("no note about the discarded bytes: {session:?}"));
    let data = base64::engine::general_purpose::STANDARD.decode(note["data_base64"].as_str().unwrap()).unwrap();
    assert_eq!(data, b"RSET\r\n", "{note}");
    assert_tls_flags(session);
    let after: Vec<(String, u64)> = summary(session).into_iter().skip(3).collect();
    assert_eq!(after, want(&[("EHLO", 250), ("QUIT", 221)]));
}

#[test]
fn injection_after_mirrored_starttls_to_the_builtin_server_is_discarded() {
    let proxy = Proxy::start(&["--client-tls", "starttls", "--upstream-tls", "starttls"]);
    inject_after_starttls(&proxy);
    let session = &proxy.sessions(1)[0];
    assert_injection_noted(session);
    assert!(exchange_of(session, "STARTTLS")["answered_by"].is_null());
}

#[test]
fn injection_after_mirrored_starttls_never_reaches_aiosmtpd() {
    let server = Aiosmtpd::start("starttls");
    let upstream = server.upstream();
    let proxy = Proxy::start(&["--upstream", &upstream, "--upstream-ca", server.cert()]);
    inject_after_starttls(&proxy);
    assert_injection_noted(&proxy.sessions(1)[0]);
    assert_eq!(
        server.commands(),
        ["tls=0 EHLO raw.test", "tls=0 STARTTLS", "tls=1 EHLO raw.test", "tls=1 QUIT"],
        "the RSET reached the server"
    );
}

#[test]
fn injection_after_starttls_answered_by_the_proxy_never_reaches_the_server() {
    let server = Aiosmtpd::start("none");
    let upstream = server.upstream();
    let proxy = Proxy::start(&["--upstream", &upstream, "--client-tls", "starttls", "--upstream-tls", "off"]);
    inject_after_starttls(&proxy);
    let session = &proxy.sessions(1)[0];
    assert_injection_noted(session);
    assert_eq!(exchange_of(session, "STARTTLS")["answered_by"], "proxy");
    assert_eq!(
        server.commands(),
        ["tls=0 EHLO raw.test", "tls=0 EHLO raw.test", "tls=0 QUIT"],
        "STARTTLS or the RSET reached the server"
    );
}

/// The server side of the same attack: bytes a server (or someone on the
/// path) pushes right behind its `220` to STARTTLS are not acted on.
#[test]
fn server_bytes_after_its_220_to_proxy_initiated_starttls_are_discarded() {
    let server = PushyServer::start(b"250 injected\r\n");
    let upstream = server.addr.to_string();
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream,
        "--upstream-ca",
        path_str(&server.cert),
        "--client-tls",
        "off",
        "--upstream-tls",
        "starttls",
    ]);
    let mut raw = RawClient::connect(proxy.addr);
    raw.read_replies(1);
    raw.send(b"EHLO raw.test\r\n");
    let replies = raw.read_replies(2);
    assert!(replies[0].starts_with("220 smtptap.test"), "{replies:?}");
    let text = String::from_utf8_lossy(&raw.received).into_owned();
    assert!(text.contains("250-smtptap.test\r\n") && !text.contains("injected"), "{text:?}");
    raw.send(b"QUIT\r\n");
    let replies = raw.read_replies(3);
    assert!(replies[2].starts_with("221"), "{replies:?}");
    assert_eq!(server.received_inside_tls(), b"EHLO raw.test\r\nQUIT\r\n");

    let session = &proxy.sessions(1)[0];
    assert_quit(session);
    assert_eq!(summary(session), want(&[("-", 220), ("EHLO", 250), ("STARTTLS", 220), ("EHLO", 250), ("QUIT", 221)]));
    tls_ok(session, "upstream");
    let note = notes(session)
        .into_iter()
        .find(|n| n["text"].as_str().is_some_and(|t| t.contains("after its 220 to STARTTLS")))
        .unwrap_or_else(|| panic!("no note about the server's early bytes: {session:?}"));
    let data = base64::engine::general_purpose::STANDARD.decode(note["data_base64"].as_str().unwrap()).unwrap();
    assert_eq!(data, b"250 injected\r\n");
    assert!(!session.iter().any(|r| r.to_string().contains("\"injected\"")), "paired with a command");
}

#[test]
fn server_bytes_after_its_220_to_mirrored_starttls_are_discarded() {
    let server = PushyServer::start(b"250 injected\r\n");
    let upstream = server.addr.to_string();
    let proxy = Proxy::start(&["--upstream", &upstream, "--upstream-ca", path_str(&server.cert)]);
    let mut raw = greeted_after_ehlo(proxy.addr);
    raw.send(b"STARTTLS\r\n");
    let replies = read_exactly_replies(&mut raw, 3);
    assert!(replies[2].starts_with("220 "), "{replies:?}");
    assert!(!String::from_utf8_lossy(&raw.received).contains("injected"));
    let mut tls = TlsClient::handshake(raw, &proxy.ca_cert(), "127.0.0.1");
    tls.send(b"EHLO raw.test\r\n");
    tls.read_replies(1);
    tls.send(b"QUIT\r\n");
    let replies = tls.read_replies(2);
    assert!(tls.received.starts_with(b"250-smtptap.test\r\n"), "{replies:?}");
    assert!(replies[1].starts_with("221"), "{replies:?}");
    assert_eq!(server.received_inside_tls(), b"EHLO raw.test\r\nQUIT\r\n");

    let session = &proxy.sessions(1)[0];
    assert_quit(session);
    assert!(notes(session).iter().any(|n| n["text"].as_str().unwrap().contains("after its 220 to STARTTLS")));
    assert_eq!(summary(session).into_iter().skip(3).collect::<Vec<_>>(), want(&[("EHLO", 250), ("QUIT", 221)]));
}

// ---------------------------------------------------------------------------
// 7. A client that does not trust the CA
// ---------------------------------------------------------------------------

/// The client's failed handshake is recorded with the alert it sent.
fn assert_client_alert(session: &[Value]) {
    let error = tls_failed(session, "client");
    assert!(error.contains("alert") && error.contains("UnknownCA"), "{error}");
    assert_eq!(assert_tls_failed(session), error);
}

#[test]
fn swaks_starttls_that_does_not_trust_the_ca_is_recorded_with_its_alert() {
    let proxy = Proxy::start(&["--client-tls", "starttls"]);
    // Verification against the system store only: smtptap's CA is not in it.
    let out = swaks(proxy.addr, "starttls", None, &[]);
    assert_failure(&out, "swaks --tls --tls-verify without the CA");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("certificate verify failed"), "{said}");
    let session = &proxy.sessions(1)[0];
    assert_client_alert(session);
    assert!(!has_verb(session, "MAIL"));
}

#[test]
fn curl_smtps_that_does_not_trust_the_ca_is_recorded_with_its_alert() {
    let proxy = Proxy::start(&["--client-tls", "implicit"]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "m.eml", b"Subject: x\r\n\r\nnever sent\r\n");
    let url = format!("smtps://127.0.0.1:{}/curl.test", proxy.addr.port());
    let out = curl(&url, None, &file, &[]);
    assert_eq!(out.status.code(), Some(60), "curl: certificate problem expected:\n{}", stderr(&out));
    let session = &proxy.sessions(1)[0];
    assert_client_alert(session);
    // It failed before smtptap connected upstream: no greeting was ever due,
    // so none may be in the record (as for an unreachable upstream).
    assert_eq!(summary(session), [], "no greeting was ever due: {session:?}");
    assert_eq!(end(session)["exchanges"], 0);
}

// ---------------------------------------------------------------------------
// 8. --cert/--key: a certificate of the user's own
// ---------------------------------------------------------------------------

#[test]
fn given_certificate_is_presented_to_clients_that_trust_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "mine");
    let proxy = Proxy::start(&["--client-tls", "implicit", "--cert", path_str(&cert), "--key", path_str(&key)]);
    let file = write_file(dir.path(), "m.eml", &test_message("own certificate"));

    // curl by name and smtplib by address, each trusting only the given certificate.
    let url = format!("smtps://localhost:{}/curl.test", proxy.addr.port());
    let out = curl(&url, Some(&cert), &file, &["--resolve", &resolve_localhost(proxy.addr)]);
    assert_success(&out, "curl smtps:// trusting only the given certificate");
    let log = stderr(&out);
    assert!(log.contains("subject: CN=localhost") && log.contains("issuer: CN=localhost"), "{log}");
    let result = smtplib_tls("implicit", "127.0.0.1", proxy.addr, &cert, &file);
    assert_eq!(smtplib_subject_cn(&result), "localhost", "{result}");
    // A client trusting only smtptap's CA (made for the built-in server)
    // refuses it: the CA's leaves are not in use.
    let ca = proxy.ca_cert();
    assert!(ca.exists());
    let out = curl(&url, Some(&ca), &file, &["--resolve", &resolve_localhost(proxy.addr)]);
    assert_eq!(out.status.code(), Some(60), "{}", stderr(&out));

    let sessions = proxy.sessions(3);
    for session in &sessions[..2] {
        assert_quit(session);
        tls_ok(session, "client");
        assert_eq!(recorded_bodies(session), [test_message("own certificate")]);
    }
    assert_eq!(tls_ok(&sessions[0], "client")["sni"], "localhost");
}

// ---------------------------------------------------------------------------
// Known bugs
// ---------------------------------------------------------------------------

/// An implicit-TLS upstream whose certificate is rejected must not leave a
/// greeting exchange in the record that never happened: as for an
/// unreachable upstream, the proxy's own `421` is the whole record. (The
/// client-side case is `curl_smtps_that_does_not_trust_the_ca_is_recorded_with_its_alert`.)
#[test]
fn no_phantom_greeting_when_tls_fails_before_the_greeting() {
    let server = Aiosmtpd::start("implicit");
    let upstream = server.upstream();
    let proxy = Proxy::start(&["--upstream", &upstream, "--client-tls", "off", "--upstream-tls", "implicit"]);
    let mut raw = RawClient::connect(proxy.addr);
    assert_refused_with_421(&mut raw);
    let session = &proxy.sessions(1)[0];
    assert_tls_failed(session);
    assert_eq!(summary(session), want(&[("-", 421)]), "the proxy's 421 is the whole record: {session:?}");
    assert_eq!(end(session)["exchanges"], 1);
}
