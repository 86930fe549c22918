//! Interop: the real binary between real SMTP peers that nobody here wrote.
//!
//! Clients: swaks, Python smtplib, lettre, curl, msmtp, Postfix smtp-source
//! and a hand-written BDAT client. Upstreams: the built-in test server,
//! aiosmtpd (tests/peers/aiosmtpd_capture.py, which keeps every message it
//! received) and Postfix smtp-sink. Every peer must be installed: a missing
//! one fails its test (scripts/test installs them), it is never skipped.
//!
//! Each test owns its ports (all from 127.0.0.1:0), waits for readiness by
//! reading a line or a greeting, never by sleeping, and kills its processes
//! and removes its temp dirs on drop, also when it panics.

mod common;
use common::*;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::process::Command;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The proxy, relaying to `upstream` or to its built-in test server.
fn start_proxy(upstream: Option<SocketAddr>) -> Proxy {
    let mut args = PLAINTEXT.to_vec();
    let upstream = upstream.map(|a| a.to_string());
    if let Some(up) = &upstream {
        args.extend(["--upstream", up.as_str()]);
    }
    Proxy::start(&args)
}

/// Up to 2,000 octets of `bytes`, for failure messages.
fn preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(2000)]).into_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The summary of a plain one-message session after EHLO (or `hello`).
fn one_message(hello: &str) -> Vec<(String, u64)> {
    want(&[("-", 220), (hello, 250), ("MAIL", 250), ("RCPT", 250), ("DATA", 354), ("-", 250), ("QUIT", 221)])
}

/// The exchanges that carry a message, in order.
fn message_exchanges(session: &[Value]) -> Vec<&Value> {
    exchanges(session).into_iter().filter(|e| e.get("message").is_some()).collect()
}

/// The recorded message equals `content`: body, size and digest, complete.
fn assert_message(exchange: &Value, content: &[u8]) {
    let message = &exchange["message"];
    let body = body_bytes(exchange);
    assert!(
        body == content,
        "recorded body ({} octets) differs from what was sent ({} octets)\nrecorded: {:?}\nsent:     {:?}",
        body.len(),
        content.len(),
        preview(&body),
        preview(content)
    );
    assert_eq!(message["size"], content.len(), "{message}");
    assert_eq!(message["sha256"], sha256_hex(content), "{message}");
    assert!(message.get("complete").is_none_or(|c| c == true), "{message}");
}

/// The recorded message is self-consistent: size and digest are those of the body.
fn assert_message_consistent(exchange: &Value) -> Vec<u8> {
    let body = body_bytes(exchange);
    assert_message(exchange, &body);
    body
}

/// The session ended with QUIT, and the `end` counters agree with its lines.
fn assert_quit(session: &[Value]) -> &Value {
    assert_well_formed(session);
    let end = session.last().expect("a recording");
    assert_eq!(end["type"], "end", "{end}");
    assert_eq!(end["reason"], "quit", "{end}");
    assert!(end["error"].is_null(), "{end}");
    assert_eq!(end["exchanges"], exchanges(session).len(), "{end}");
    assert_eq!(end["messages"], message_exchanges(session).len(), "{end}");
    end
}

/// Format 1 framing: a `session` line first, exchanges numbered from 0 without
/// gaps, all in plaintext, each with its reply and a duration.
fn assert_well_formed(session: &[Value]) {
    assert_eq!(session[0]["type"], "session", "{}", session[0]);
    assert_eq!(session[0]["format"], 1, "{}", session[0]);
    for (i, e) in exchanges(session).iter().enumerate() {
        assert_eq!(e["seq"], i, "{e}");
        assert_eq!(e["tls"], false, "{e}");
        assert!(e["reply"]["code"].is_u64(), "every exchange has its reply: {e}");
        assert!(e["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{e}");
        assert!(e["t"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    }
}

/// `pipelined` of every exchange that has a command, in order.
fn pipelined_flags(session: &[Value]) -> Vec<bool> {
    exchanges(session)
        .iter()
        .filter(|e| !e["command"].is_null())
        .map(|e| e["pipelined"].as_bool().expect("pipelined on a command exchange"))
        .collect()
}

fn command_line<'a>(session: &'a [Value], verb: &str) -> &'a str {
    exchanges(session)
        .into_iter()
        .find(|e| e["command"]["verb"] == verb)
        .and_then(|e| e["command"]["line"].as_str())
        .unwrap_or_else(|| panic!("no {verb} in the recording"))
}

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

/// Runs swaks against `addr`; returns its transcript (stdout).
fn swaks(addr: SocketAddr, extra: &[&str]) -> String {
    let server = addr.to_string();
    let mut args = vec!["--server", server.as_str(), "--from", FROM, "--to", TO, "--helo", "swaks.test"];
    args.extend_from_slice(extra);
    let out = run_peer("swaks", &args, None);
    assert_success(&out, "swaks");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The message content swaks says it sent: the ` -> ` lines between the
/// `354` and the lone dot, dot-unstuffed, each ending in CRLF.
fn swaks_content(transcript: &str) -> Vec<u8> {
    let mut lines = transcript.lines().skip_while(|l| !l.starts_with("<-  354"));
    assert!(lines.next().is_some(), "no 354 in the swaks transcript:\n{transcript}");
    let mut content = Vec::new();
    for line in lines {
        let text = line.strip_prefix(" -> ").or_else(|| line.strip_prefix(" ->")).expect("a client line");
        if text == "." {
            return content;
        }
        content.extend_from_slice(text.strip_prefix('.').unwrap_or(text).as_bytes());
        content.extend_from_slice(b"\r\n");
    }
    panic!("no end of data in the swaks transcript:\n{transcript}");
}

/// The reply lines swaks printed for the command ` -> {command}`.
fn swaks_reply(transcript: &str, command: &str) -> Vec<String> {
    let mut lines = transcript.lines().skip_while(|l| *l != format!(" -> {command}"));
    assert!(lines.next().is_some(), "no `{command}` in the swaks transcript:\n{transcript}");
    let mut reply = Vec::new();
    for line in lines.filter_map(|l| l.strip_prefix("<-  ")) {
        reply.push(line.get(4..).unwrap_or("").to_owned());
        if line.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
    panic!("unterminated reply to `{command}` in the swaks transcript:\n{transcript}");
}

/// Sends each of `messages` from `from` to `to` in one smtplib session
/// (tests/peers/smtplib_send.py).
fn smtplib_send(addr: SocketAddr, from: &str, to: &str, messages: &[&[u8]]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let files: Vec<String> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| write_file(dir.path(), &format!("m{i}.eml"), m).to_string_lossy().into_owned())
        .collect();
    let script = peer_script("smtplib_send.py");
    let port = addr.port().to_string();
    let mut args = vec![script.to_str().unwrap(), "127.0.0.1", &port, from, to];
    args.extend(files.iter().map(String::as_str));
    let out = run_peer("python3", &args, None);
    assert_success(&out, "smtplib_send.py");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("sent {}", messages.len()));
}

/// aiosmtpd as the upstream, keeping each message's content as a file.
struct Aiosmtpd {
    // Fields drop in order: the process dies before its directory goes.
    _child: ChildGuard,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Aiosmtpd {
    fn start() -> Aiosmtpd {
        let dir = tempfile::tempdir().expect("temp dir");
        let messages = dir.path().join("messages");
        std::fs::create_dir(&messages).unwrap();
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new("python3");
        cmd.arg(peer_script("aiosmtpd_capture.py")).arg(&messages);
        let (child, addr) = spawn_ready_peer(&mut cmd, "aiosmtpd_capture.py", &stderr);
        Aiosmtpd { _child: child, addr, dir }
    }

    /// Waits until exactly `n` messages have been stored; returns them in order.
    fn messages(&self, n: usize) -> Vec<Vec<u8>> {
        wait_messages(&self.dir.path().join("messages"), n, &self.dir.path().join("stderr"))
    }
}

/// Postfix smtp-sink as the upstream: accepts and discards, pipelining its replies.
fn smtp_sink() -> SmtpSink {
    SmtpSink::start(&["-u", "nobody", "-c"], "smtp-sink")
}

// ---------------------------------------------------------------------------
// 1. Clients through the proxy to the built-in server
// ---------------------------------------------------------------------------

#[test]
fn swaks_plain_send_to_builtin_server() {
    let proxy = start_proxy(None);
    let transcript = swaks(proxy.addr, &[]);

    let session = &proxy.sessions(1)[0];
    assert_eq!(summary(session), one_message("EHLO"));
    assert_eq!(command_line(session, "EHLO"), "EHLO swaks.test");
    assert_eq!(command_line(session, "MAIL"), format!("MAIL FROM:<{FROM}>"));
    assert_eq!(command_line(session, "RCPT"), format!("RCPT TO:<{TO}>"));
    assert_eq!(pipelined_flags(session), [false; 5], "swaks without --pipeline waits for every reply");
    let ex = exchanges(session);
    assert_eq!(ex[1]["reply"]["lines"][0], "smtptap.test");
    assert_eq!(swaks_reply(&transcript, "EHLO swaks.test"), ex[1]["reply"]["lines"].as_array().unwrap().clone());
    assert_eq!(ex[5]["reply"]["enhanced"], "2.0.0");

    assert_message(ex[5], &swaks_content(&transcript));
    let headers = &ex[5]["message"]["headers"];
    assert_eq!(headers["from"], FROM);
    assert_eq!(headers["to"], TO);
    assert!(headers["subject"].as_str().unwrap().starts_with("test "), "{headers}");
    assert!(headers["message-id"].as_str().unwrap().starts_with('<'), "{headers}");
    assert!(headers["date"].is_string(), "{headers}");
    assert!(body_bytes(ex[5]).ends_with(b"\r\n\r\nThis is a test mailing\r\n\r\n\r\n"));
    assert_quit(session);
}

#[test]
fn swaks_pipelined_send_to_builtin_server() {
    let proxy = start_proxy(None);
    let transcript = swaks(proxy.addr, &["--pipeline"]);
    assert!(!transcript.contains("did not advertise PIPELINING"), "{transcript}");

    let session = &proxy.sessions(1)[0];
    assert_eq!(summary(session), one_message("EHLO"));
    // swaks writes MAIL, RCPT and DATA in one go after the EHLO reply.
    assert_eq!(pipelined_flags(session), [false, false, true, true, false]);
    let ex = exchanges(session);
    assert_eq!(ex[2]["reply"]["enhanced"], "2.1.0");
    assert_eq!(ex[3]["reply"]["enhanced"], "2.1.5");
    assert_eq!(ex[4]["reply"]["code"], 354);
    assert_message(ex[5], &swaks_content(&transcript));
    assert_quit(session);
}

#[test]
fn swaks_utf8_body_with_leading_dots_to_builtin_server() {
    let proxy = start_proxy(None);
    let body = "Grüße aus Köln — ünïcødé ✓\n.leading dot line\n..two dots\n.\nlast";
    let transcript = swaks(proxy.addr, &["--header", "Subject: Grüße aus Köln", "--body", body]);
    assert!(transcript.lines().any(|l| l == " -> ..leading dot line"), "swaks dot-stuffs on the wire:\n{transcript}");

    let session = &proxy.sessions(1)[0];
    assert_eq!(summary(session), one_message("EHLO"));
    let ex = exchanges(session);
    assert_eq!(ex[5]["message"]["body"]["encoding"], "utf8");
    assert_eq!(ex[5]["message"]["headers"]["subject"], "Grüße aus Köln");
    let recorded = assert_message_consistent(ex[5]);
    assert_eq!(recorded, swaks_content(&transcript));
    let unstuffed = "\r\n\r\nGrüße aus Köln — ünïcødé ✓\r\n.leading dot line\r\n..two dots\r\n.\r\nlast\r\n";
    let text = String::from_utf8(recorded).unwrap();
    assert!(text.contains(unstuffed), "dot-stuffing must be removed exactly once: {text:?}");
    assert_quit(session);
}

/// A text message and one with 8-bit, NUL and lone-dot lines, as smtplib sends them.
const SMTPLIB_TEXT: &[u8] =
    b"From: <a@x.test>\r\nTo: <b@y.test>\r\nSubject: smtplib text\r\n\r\nplain text\r\n.leading dot\r\n";
const SMTPLIB_BINARY: &[u8] =
    b"From: <a@x.test>\r\nTo: <b@y.test>\r\nSubject: smtplib binary\r\nMessage-ID: <bin@x.test>\r\n\r\n\
NUL:\x00 FF:\xff FE:\xfe 80:\x80\r\n.\r\n..\r\n.\x00\xff\r\n\xe2\x9c\x93 valid utf-8 too\r\nend\r\n";

#[test]
fn smtplib_text_and_binary_messages_to_builtin_server() {
    let proxy = start_proxy(None);
    smtplib_send(proxy.addr, FROM, TO, &[SMTPLIB_TEXT, SMTPLIB_BINARY]);

    let session = &proxy.sessions(1)[0];
    let one = [("MAIL", 250), ("RCPT", 250), ("DATA", 354), ("-", 250)];
    let mut expected = vec![("-", 220), ("EHLO", 250)];
    expected.extend(one);
    expected.extend(one);
    expected.push(("QUIT", 221));
    assert_eq!(summary(session), want(&expected));
    assert_eq!(command_line(session, "EHLO"), "ehlo smtplib.test");

    let messages = message_exchanges(session);
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["message"]["body"]["encoding"], "utf8");
    assert_message(messages[0], SMTPLIB_TEXT);
    assert_eq!(messages[0]["message"]["headers"]["subject"], "smtplib text");
    assert_eq!(messages[1]["message"]["body"]["encoding"], "base64");
    assert_message(messages[1], SMTPLIB_BINARY);
    assert_eq!(messages[1]["message"]["headers"]["message-id"], "<bin@x.test>");

    // smtplib declares SIZE= of the content before stuffing: the recorded size.
    let mails: Vec<&str> = exchanges(session)
        .into_iter()
        .filter(|e| e["command"]["verb"] == "MAIL")
        .map(|e| e["command"]["line"].as_str().unwrap())
        .collect();
    assert_eq!(mails[0], format!("mail FROM:<{FROM}> size={}", SMTPLIB_TEXT.len()));
    assert_eq!(mails[1], format!("mail FROM:<{FROM}> size={} BODY=8BITMIME", SMTPLIB_BINARY.len()));
    assert_quit(session);
}

#[test]
fn lettre_send_to_builtin_server() {
    use lettre::{Message, SmtpTransport, Transport};
    let proxy = start_proxy(None);
    let email = Message::builder()
        .from("Alice <a@x.test>".parse().unwrap())
        .to("Bob <b@y.test>".parse().unwrap())
        .subject("lettre interop")
        .message_id(Some("<lettre@x.test>".into()))
        .body(String::from("Hello from lettre.\r\n.a line with a leading dot\r\nGrüße ✓\r\n"))
        .expect("build message");
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1").port(proxy.addr.port()).build();
    let response = mailer.send(&email).expect("lettre send through the proxy");
    assert!(response.is_positive(), "{response:?}");
    drop(mailer);

    let session = &proxy.sessions(1)[0];
    assert_eq!(summary(session), one_message("EHLO"));
    let ex = exchanges(session);
    // lettre always ends with CRLF "." CRLF: the first CRLF is content.
    let mut sent = email.formatted();
    sent.extend_from_slice(b"\r\n");
    assert_message(ex[5], &sent);
    let headers = &ex[5]["message"]["headers"];
    assert_eq!(headers["from"], "Alice <a@x.test>");
    assert_eq!(headers["to"], "Bob <b@y.test>");
    assert_eq!(headers["subject"], "lettre interop");
    assert_eq!(headers["message-id"], "<lettre@x.test>");
    assert_quit(session);
}

#[test]
fn curl_upload_to_builtin_server() {
    let proxy = start_proxy(None);
    let dir = tempfile::tempdir().unwrap();
    let content: &[u8] =
        b"From: <a@x.test>\r\nTo: <b@y.test>\r\nSubject: curl interop\r\n\r\nline one\r\n.leading dot\r\n.\r\nlast line\r\n";
    let file = write_file(dir.path(), "message.eml", content);
    let url = format!("smtp://127.0.0.1:{}/curl.test", proxy.addr.port());
    let out = run_peer(
        "curl",
        &["-sS", "--url", &url, "--mail-from", FROM, "--mail-rcpt", TO, "--upload-file", file.to_str().unwrap()],
        None,
    );
    assert_success(&out, "curl");

    let session = &proxy.sessions(1)[0];
    assert_eq!(summary(session), one_message("EHLO"));
    assert_eq!(command_line(session, "EHLO"), "EHLO curl.test", "curl says hello with the URL path");
    assert_eq!(command_line(session, "MAIL"), format!("MAIL FROM:<{FROM}> SIZE={}", content.len()));
    let ex = exchanges(session);
    assert_message(ex[5], content);
    assert_eq!(ex[5]["message"]["headers"]["subject"], "curl interop");
    assert_quit(session);
}

#[test]
fn msmtp_send_to_builtin_server() {
    let proxy = start_proxy(None);
    let dir = tempfile::tempdir().unwrap();
    // An empty configuration, so nothing from the machine's msmtprc applies.
    let config = write_file(dir.path(), "msmtprc", b"");
    let port = format!("--port={}", proxy.addr.port());
    let config = format!("--file={}", config.display());
    let input = "Subject: msmtp interop\nTo: <b@y.test>\n\nhello\n.\n.leading dot\nGrüße ✓\n";
    let out = run_peer(
        "msmtp",
        &[&config, "--host=127.0.0.1", &port, "--from=a@x.test", "--tls=off", "--auth=off", TO],
        Some(input.as_bytes()),
    );
    assert_success(&out, "msmtp");

    let session = &proxy.sessions(1)[0];
    // msmtp pipelines MAIL/RCPT/DATA in separate writes: whether the proxy
    // sees them as pipelined depends on timing, so only pairing is asserted.
    assert_eq!(summary(session), one_message("EHLO"));
    assert_eq!(command_line(session, "MAIL"), format!("MAIL FROM:<{FROM}>"));
    let ex = exchanges(session);
    let body = assert_message_consistent(ex[5]);
    // msmtp converts LF to CRLF, stuffs dots, and adds From, Date, Message-ID.
    let expected_tail = input.replace('\n', "\r\n");
    assert!(body.ends_with(expected_tail.as_bytes()), "{:?}", String::from_utf8_lossy(&body));
    let headers = &ex[5]["message"]["headers"];
    assert_eq!(headers["subject"], "msmtp interop");
    assert_eq!(headers["from"], FROM);
    assert!(headers["date"].is_string() && headers["message-id"].is_string(), "{headers}");
    assert_quit(session);
}

// ---------------------------------------------------------------------------
// 2. aiosmtpd as the upstream; BDAT against the built-in server
// ---------------------------------------------------------------------------

#[test]
fn aiosmtpd_receives_exactly_what_swaks_sent() {
    let upstream = Aiosmtpd::start();
    let proxy = start_proxy(Some(upstream.addr));
    let body = "aiosmtpd via smtptap: Grüße ✓\n.leading dot\n.\n..\nend";
    let transcript = swaks(proxy.addr, &["--body", body]);

    let stored = upstream.messages(1).remove(0);
    assert_eq!(stored, swaks_content(&transcript), "aiosmtpd must receive what swaks sent, unstuffed");

    let session = &proxy.sessions(1)[0];
    assert_eq!(summary(session), one_message("EHLO"));
    assert_eq!(session[0]["upstream"], upstream.addr.to_string());
    let ex = exchanges(session);
    assert_eq!(ex[1]["reply"]["lines"][0], "aiosmtpd.test");
    assert_eq!(swaks_reply(&transcript, "EHLO swaks.test"), ex[1]["reply"]["lines"].as_array().unwrap().clone());
    assert_eq!(ex[5]["reply"]["lines"], serde_json::json!(["2.0.0 Ok: stored as msg-0"]));
    assert_eq!(ex[5]["reply"]["enhanced"], "2.0.0");
    assert_message(ex[5], &stored);
    assert_eq!(ex[5]["message"]["sha256"], sha256_hex(&stored));
    assert_quit(session);
}

#[test]
fn aiosmtpd_receives_exactly_what_smtplib_sent() {
    let upstream = Aiosmtpd::start();
    let proxy = start_proxy(Some(upstream.addr));
    smtplib_send(proxy.addr, FROM, TO, &[SMTPLIB_TEXT, SMTPLIB_BINARY]);

    let stored = upstream.messages(2);
    assert_eq!(stored[0], SMTPLIB_TEXT);
    assert_eq!(stored[1], SMTPLIB_BINARY, "aiosmtpd must receive the 8-bit message byte for byte");

    let session = &proxy.sessions(1)[0];
    let messages = message_exchanges(session);
    assert_eq!(messages.len(), 2);
    for (i, (exchange, file)) in messages.iter().zip(&stored).enumerate() {
        assert_message(exchange, file);
        assert_eq!(exchange["message"]["sha256"], sha256_hex(file));
        assert_eq!(exchange["reply"]["lines"][0], format!("2.0.0 Ok: stored as msg-{i}"));
    }
    assert_eq!(messages[1]["message"]["body"]["encoding"], "base64");
    assert_eq!(summary(session).last().unwrap(), &("QUIT".to_owned(), 221));
    assert_quit(session);
}

/// About 1 MiB of deterministic 8-bit content: 70-octet lines of every byte
/// value but CR and LF (NUL and 0xFF included), many starting with a dot.
fn large_binary_message() -> Vec<u8> {
    let mut content = b"Subject: large binary\r\nFrom: <a@x.test>\r\n\r\n".to_vec();
    let mut state: u32 = 0x2545_f491;
    for line in 0..15_000 {
        if line % 3 == 0 {
            content.push(b'.');
        }
        for _ in 0..70 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let b = (state >> 24) as u8;
            content.push(if b == b'\r' || b == b'\n' { 0 } else { b });
        }
        content.extend_from_slice(b"\r\n");
    }
    content
}

#[test]
fn aiosmtpd_receives_large_binary_message_with_utf8_addresses() {
    let upstream = Aiosmtpd::start();
    let proxy = start_proxy(Some(upstream.addr));
    let content = large_binary_message();
    let (from, to) = ("ä@x.test", "ünï@y.test");
    smtplib_send(proxy.addr, from, to, &[&content]);

    let stored = upstream.messages(1).remove(0);
    assert!(stored == content, "aiosmtpd received {} octets, not the {} sent", stored.len(), content.len());

    let session = &proxy.sessions(1)[0];
    assert_eq!(summary(session), one_message("EHLO"));
    let mail = format!("mail FROM:<{from}> size={} SMTPUTF8 BODY=8BITMIME", content.len());
    assert_eq!(command_line(session, "MAIL"), mail);
    assert_eq!(command_line(session, "RCPT"), format!("rcpt TO:<{to}>"));
    let ex = exchanges(session);
    assert_eq!(ex[5]["message"]["body"]["encoding"], "base64");
    assert_message(ex[5], &stored);
    assert_eq!(ex[5]["message"]["headers"]["subject"], "large binary");
    let end = assert_quit(session);
    assert!(end["bytes_from_client"].as_u64().unwrap() > content.len() as u64, "{end}");
}

#[test]
fn bdat_chunks_with_binary_content_to_builtin_server() {
    // aiosmtpd and smtp-sink do not offer CHUNKING; the built-in server does.
    let proxy = start_proxy(None);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    client.send(b"EHLO raw.test\r\n");
    let finals = client.read_replies(2);
    assert_eq!(finals[1], "250 CHUNKING", "the built-in server offers CHUNKING");

    // Chunks are not dot-stuffed: "\r\n.\r\n" inside a chunk is content.
    let chunks: [&[u8]; 3] =
        [b"Subject: bdat chunks\r\nFrom: <a@x.test>\r\n\r\n", b"\x00\xff\xfe\r\n.\r\n..as is\r\n", b"\xffend\x00"];
    let mut first = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n".to_vec();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i == chunks.len() - 1 { " LAST" } else { "" };
        first.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        first.extend_from_slice(chunk);
    }
    client.send(&first);
    client.read_replies(7);
    // A second transaction, all in one write: a chunk, then an empty LAST one.
    let second: &[u8] = b"MAIL FROM:<>\r\nRCPT TO:<c@y.test>\r\nBDAT 5\r\nhelloBDAT 0 LAST\r\nQUIT\r\n";
    client.send(second);
    let received = client.read_to_close();
    let text = String::from_utf8_lossy(&received);
    assert!(text.ends_with("221 2.0.0 Bye\r\n"), "{text}");

    let session = &proxy.sessions(1)[0];
    let expected = [
        ("-", 220),
        ("EHLO", 250),
        ("MAIL", 250),
        ("RCPT", 250),
        ("BDAT", 250),
        ("BDAT", 250),
        ("BDAT", 250),
        ("MAIL", 250),
        ("RCPT", 250),
        ("BDAT", 250),
        ("BDAT", 250),
        ("QUIT", 221),
    ];
    assert_eq!(summary(session), want(&expected));
    let ex = exchanges(session);
    assert_eq!(ex[4]["command"]["line"], format!("BDAT {}", chunks[0].len()));
    assert_eq!(ex[4]["reply"]["lines"][0], format!("2.0.0 {} octets received", chunks[0].len()));
    assert_eq!(ex[6]["command"]["line"], format!("BDAT {} LAST", chunks[2].len()));
    for i in [4, 5, 9] {
        assert!(ex[i].get("message").is_none(), "only BDAT … LAST carries the message: {}", ex[i]);
    }
    let content = chunks.concat();
    assert_eq!(ex[6]["message"]["body"]["encoding"], "base64");
    assert_message(ex[6], &content);
    assert_eq!(ex[6]["message"]["headers"]["subject"], "bdat chunks");
    assert!(ex[6]["reply"]["lines"][0].as_str().unwrap().starts_with("2.0.0 Ok: queued as "));
    assert_eq!(ex[10]["command"]["line"], "BDAT 0 LAST");
    assert_message(ex[10], b"hello");
    assert_eq!(ex[10]["message"]["body"]["encoding"], "utf8");

    let end = assert_quit(session);
    assert_eq!(end["messages"], 2);
    assert_eq!(end["bytes_from_client"], b"EHLO raw.test\r\n".len() + first.len() + second.len());
    assert_eq!(end["bytes_from_upstream"], received.len());
}

// ---------------------------------------------------------------------------
// 3. Postfix smtp-sink as the upstream; smtp-source as a load client
// ---------------------------------------------------------------------------

#[test]
fn swaks_through_proxy_to_smtp_sink() {
    let sink = smtp_sink();
    let proxy = start_proxy(Some(sink.addr));
    let runs: [&[&str]; 3] = [&[], &["--pipeline"], &["--pipeline", "--body", "one\n.two\n..three\n.\nfour"]];
    let transcripts: Vec<String> = runs.iter().map(|extra| swaks(proxy.addr, extra)).collect();

    let sessions = proxy.sessions(3);
    for ((session, transcript), extra) in sessions.iter().zip(&transcripts).zip(runs) {
        assert_eq!(summary(session), one_message("EHLO"), "swaks {extra:?}");
        assert_eq!(session[0]["upstream"], sink.addr.to_string());
        let ex = exchanges(session);
        assert_eq!(ex[0]["reply"]["lines"][0], "smtp-sink ESMTP");
        // The reply lines are recorded as swaks saw them (smtp-sink's last EHLO line is "250 ").
        assert_eq!(swaks_reply(transcript, "EHLO swaks.test"), ex[1]["reply"]["lines"].as_array().unwrap().clone());
        assert!(ex[1]["reply"]["lines"].as_array().unwrap().contains(&"PIPELINING".into()));
        // smtp-sink answers pipelined commands in one write; each reply must
        // still be paired with its own command.
        assert_eq!(ex[2]["reply"]["enhanced"], "2.1.0", "MAIL: {}", ex[2]);
        assert_eq!(ex[3]["reply"]["enhanced"], "2.1.5", "RCPT: {}", ex[3]);
        assert_eq!(ex[4]["reply"]["code"], 354, "DATA: {}", ex[4]);
        assert_eq!(ex[5]["reply"]["enhanced"], "2.0.0", "content: {}", ex[5]);
        assert_eq!(ex[6]["reply"]["lines"][0], "Bye");
        let expected_pipelining =
            if extra.contains(&"--pipeline") { [false, false, true, true, false] } else { [false; 5] };
        assert_eq!(pipelined_flags(session), expected_pipelining, "swaks {extra:?}");
        assert_message(ex[5], &swaks_content(transcript));
        assert_quit(session);
    }
    let last = body_bytes(exchanges(&sessions[2])[5]);
    assert!(last.ends_with(b"\r\n\r\none\r\n.two\r\n..three\r\n.\r\nfour\r\n\r\n\r\n"), "{last:?}");
}

#[test]
fn smtp_source_load_through_proxy_to_smtp_sink() {
    let sink = smtp_sink();
    let proxy = start_proxy(Some(sink.addr));
    let target = proxy.addr.to_string();
    let out = run_peer(
        "/usr/sbin/smtp-source",
        &["-c", "-m", "20", "-s", "4", "-l", "2048", "-f", FROM, "-t", TO, &target],
        None,
    );
    assert_success(&out, "smtp-source");

    let sessions = proxy.sessions(20);
    let mut ids = Vec::new();
    for session in &sessions {
        assert_eq!(summary(session), one_message("HELO"));
        let ex = exchanges(session);
        let messages = message_exchanges(session);
        assert_eq!(messages.len(), 1);
        let content = assert_message_consistent(messages[0]);
        // 2048 octets of generated text (80-octet lines) and a final CRLF,
        // after a header section of variable length.
        let split = content.windows(4).position(|w| w == b"\r\n\r\n").expect("header section") + 4;
        let body = &content[split..];
        assert_eq!(body.len(), 2048 + 2, "{:?}", String::from_utf8_lossy(body));
        assert!(body.starts_with(b"1XXXX") && body.ends_with(b"XXXX\r\n"));
        assert!(body.split(|&b| b == b'\n').all(|l| l.len() <= 80));
        let headers = &messages[0]["message"]["headers"];
        assert_eq!(headers["from"], format!("<{FROM}>"));
        assert_eq!(headers["to"], format!("<{TO}>"));
        ids.push(headers["message-id"].as_str().expect("message-id").to_owned());
        assert_eq!(ex[5]["reply"]["enhanced"], "2.0.0");
        assert_quit(session);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "every message is recorded once");
}

#[test]
fn smtp_source_many_messages_in_one_session_to_smtp_sink() {
    let sink = smtp_sink();
    let proxy = start_proxy(Some(sink.addr));
    let target = proxy.addr.to_string();
    // -d: one session for all 10 messages; -r 3: three recipients each.
    let out = run_peer(
        "/usr/sbin/smtp-source",
        &["-d", "-m", "10", "-s", "1", "-r", "3", "-l", "500", "-f", FROM, "-t", TO, &target],
        None,
    );
    assert_success(&out, "smtp-source");

    let session = &proxy.sessions(1)[0];
    let mut expected = vec![("-", 220), ("HELO", 250)];
    for _ in 0..10 {
        expected.extend([("MAIL", 250), ("RCPT", 250), ("RCPT", 250), ("RCPT", 250), ("DATA", 354), ("-", 250)]);
    }
    expected.push(("QUIT", 221));
    assert_eq!(summary(session), want(&expected));
    let messages = message_exchanges(session);
    assert_eq!(messages.len(), 10);
    for m in &messages {
        let content = assert_message_consistent(m);
        let split = content.windows(4).position(|w| w == b"\r\n\r\n").expect("header section") + 4;
        assert_eq!(content.len() - split, 500 + 2);
        assert_eq!(m["reply"]["enhanced"], "2.0.0");
    }
    let end = assert_quit(session);
    assert_eq!(end["messages"], 10);
    assert_eq!(end["exchanges"], expected.len());
}
