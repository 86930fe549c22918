//! The session's replies to scripted input, and what it saves.

use super::*;
use crate::server::rules::Rules;
use std::fs;

fn talk(input: &[u8]) -> (String, Flow) {
    talk_with(ServerConfig::default(), input)
}

fn talk_with(config: ServerConfig, input: &[u8]) -> (String, Flow) {
    let mut s = ServerSession::new(config);
    let mut out = Vec::new();
    let flow = s.feed(input, &mut out);
    (String::from_utf8(out).unwrap(), flow)
}

#[test]
fn pipelined_transaction_answers_in_order() {
    let (out, flow) = talk(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhi\r\n..x\r\n.\r\nQUIT\r\n");
    let codes: Vec<&str> = out.lines().map(|l| &l[..4]).collect();
    assert_eq!(codes, ["250-", "250-", "250-", "250-", "250-", "250 ", "250 ", "250 ", "354 ", "250 ", "221 "]);
    assert_eq!(flow, Flow::Close);
}

#[test]
fn bdat_chunks_with_binary_content() {
    let (out, _) =
        talk(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nBDAT 5\r\n\r\n\x00\xff.BDAT 3 LAST\r\nabcNOOP\r\n");
    let tail: Vec<&str> = out.lines().skip(8).collect();
    assert_eq!(tail.len(), 3, "{out}");
    assert!(tail[0].starts_with("250 2.0.0 5 octets"));
    assert!(tail[1].starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(tail[2], "250 2.0.0 Ok");
}

#[test]
fn sequence_errors_and_limits() {
    let (out, _) =
        talk(b"MAIL FROM:<a>\r\nEHLO c\r\nRCPT TO:<b>\r\nMAIL FROM:<a> SIZE=999999999999\r\nDATA\r\nFOO\r\n");
    let codes: Vec<&str> = out.lines().filter(|l| !l.starts_with("250-")).map(|l| &l[..3]).collect();
    assert_eq!(codes, ["503", "250", "503", "552", "554", "500"]);
    let long = format!("NOOP {}\r\n", "x".repeat(5000));
    assert!(talk(long.as_bytes()).0.starts_with("500 5.5.6"));
}

#[test]
fn starttls_is_offered_then_discards_pipelined_input() {
    let mut s = ServerSession::new(ServerConfig::default());
    s.offer_starttls();
    let mut out = Vec::new();
    assert_eq!(s.feed(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected>\r\n", &mut out), Flow::StartTls);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("250-STARTTLS\r\n"));
    assert!(text.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{text}");
    s.tls_started();
    let mut out = Vec::new();
    s.feed(b"MAIL FROM:<a>\r\nEHLO c\r\nSTARTTLS\r\n", &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("503 5.5.1 Error: send HELO/EHLO first"), "greeting state reset: {text}");
    assert!(!text.contains("STARTTLS"), "{text}");
    assert!(text.ends_with("503 5.5.1 Error: TLS already active\r\n"));
}

/// The final reply lines (`NNN text`) of `out`, in order.
fn finals(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.as_bytes().get(3) != Some(&b'-')).collect()
}

fn with_accounts() -> ServerConfig {
    ServerConfig { accounts: vec!["ann:pw".parse().unwrap()], ..ServerConfig::default() }
}

/// `AUTH PLAIN` with ann's credentials as the initial response.
const AUTH_ANN: &[u8] = b"AUTH PLAIN AGFubgBwdw==\r\n";

#[test]
fn the_default_offers_no_auth() {
    let (out, _) = talk(b"EHLO c\r\nAUTH PLAIN AGFubgBwdw==\r\n");
    assert!(!out.contains("AUTH"), "{out}");
    assert_eq!(finals(&out)[1], "502 5.5.1 Error: command not implemented");
}

#[test]
fn auth_is_offered_with_accounts_and_checked() {
    let input = [b"AUTH PLAIN\r\nEHLO c\r\n", AUTH_ANN, b"AUTH LOGIN\r\nMAIL FROM:<a@x>\r\nAUTH PLAIN\r\n"].concat();
    let (out, _) = talk_with(with_accounts(), &input);
    assert!(out.contains("250-AUTH PLAIN LOGIN CRAM-MD5\r\n"), "{out}");
    let finals = finals(&out);
    assert_eq!(finals[0], "503 5.5.1 Error: send EHLO first");
    assert_eq!(
        &finals[2..],
        [
            "235 2.7.0 Authentication successful",
            "503 5.5.1 Error: already authenticated",
            "250 2.1.0 Ok",
            "503 5.5.1 Error: already authenticated",
        ]
    );
}

#[test]
fn auth_continuations_cancel_and_failures() {
    let input =
        b"EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n%%%\r\nAUTH PLAIN AGFubgB4\r\nMAIL FROM:<a@x>\r\nAUTH LOGIN\r\n";
    let (out, _) = talk_with(with_accounts(), input);
    assert_eq!(
        &finals(&out)[1..],
        [
            "334 VXNlcm5hbWU6",
            "501 5.7.0 Authentication cancelled",
            "334 ",
            "501 5.5.2 Cannot decode the response",
            "535 5.7.8 Authentication credentials invalid",
            "250 2.1.0 Ok",
            "503 5.5.1 Error: AUTH not permitted during a mail transaction",
        ]
    );
}

#[test]
fn require_auth_refuses_mail_until_authenticated() {
    let config = ServerConfig { require_auth: true, ..with_accounts() };
    let input = [b"EHLO c\r\nMAIL FROM:<a@x>\r\n", AUTH_ANN, b"MAIL FROM:<a@x>\r\n"].concat();
    let (out, _) = talk_with(config, &input);
    assert_eq!(
        &finals(&out)[1..],
        ["530 5.7.0 Authentication required", "235 2.7.0 Authentication successful", "250 2.1.0 Ok",]
    );
}

#[test]
fn tls_forgets_the_authentication() {
    let mut s = ServerSession::new(ServerConfig { require_auth: true, ..with_accounts() });
    s.offer_starttls();
    let mut out = Vec::new();
    s.feed(&[b"EHLO c\r\n", AUTH_ANN].concat(), &mut out);
    assert!(String::from_utf8_lossy(&out).ends_with("235 2.7.0 Authentication successful\r\n"));
    s.tls_started();
    out.clear();
    s.feed(b"EHLO c\r\nMAIL FROM:<a@x>\r\n", &mut out);
    assert!(String::from_utf8_lossy(&out).ends_with("530 5.7.0 Authentication required\r\n"));
}

#[test]
fn rules_refuse_senders_recipients_and_sizes() {
    let rules = Rules { reject_rcpt_domains: vec!["no.test".into()], reject_senders: vec!["bad@x".into()] };
    let config = ServerConfig { rules, max_message_size: 10, ..ServerConfig::default() };
    let input = b"EHLO c\r\nMAIL FROM:<bad@x>\r\nMAIL FROM:<a@x> SIZE=11\r\nMAIL FROM:<a@x> SIZE=10\r\n\
        RCPT TO:<b@no.test>\r\nDATA\r\nRCPT TO:<b@yes.test>\r\nDATA\r\n12345678901\r\n.\r\n";
    let (out, _) = talk_with(config, input);
    assert!(out.contains("250-SIZE 10\r\n"), "{out}");
    assert_eq!(
        &finals(&out)[1..],
        [
            "550 5.7.1 Sender rejected",
            "552 5.3.4 Message size exceeds fixed limit",
            "250 2.1.0 Ok",
            "550 5.7.1 Relaying denied",
            "554 5.5.1 Error: no valid recipients",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
            "552 5.3.4 Message size exceeds fixed limit",
        ]
    );
}

/// A config saving into a fresh directory, and that directory.
fn saving() -> (ServerConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    (ServerConfig { store: Some(store), max_message_size: 100, ..ServerConfig::default() }, dir)
}

fn saved(dir: &tempfile::TempDir) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    names.iter().map(|n| fs::read(dir.path().join(n)).unwrap()).collect()
}

#[test]
fn data_and_bdat_content_is_saved_exactly() {
    let (config, dir) = saving();
    let mut s = ServerSession::new(config);
    let mut out = Vec::new();
    // Byte by byte, to cross every split.
    let input = b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nA: b\r\n\r\n..dot\r\nbare\nlf\r\n.\r\n\
        MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 4\r\n\x00\r\n.BDAT 2 LAST\r\n\xff\n";
    for byte in input {
        s.feed(&[*byte], &mut out);
    }
    let out = String::from_utf8_lossy(&out);
    assert_eq!(finals(&out).iter().filter(|l| l.starts_with("250 2.0.0 Ok: queued as")).count(), 2, "{out}");
    assert_eq!(saved(&dir), [&b"A: b\r\n\r\n.dot\r\nbare\nlf\r\n"[..], b"\x00\r\n.\xff\n"]);
}

#[test]
fn refused_messages_are_not_saved() {
    let (config, dir) = saving();
    let big = format!("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n{}\r\n.\r\n", "x".repeat(101));
    let (out, _) = talk_with(config.clone(), big.as_bytes());
    assert!(out.ends_with("552 5.3.4 Message size exceeds fixed limit\r\n"), "{out}");
    let (out, _) = talk_with(config, b"EHLO c\r\nMAIL FROM:<a@x>\r\nBDAT 3 LAST\r\nabc");
    assert!(out.ends_with("503 5.5.1 Error: need RCPT command\r\n"), "{out}");
    assert!(saved(&dir).is_empty());
}

#[test]
fn a_message_that_cannot_be_saved_gets_451() {
    let (config, dir) = saving();
    fs::remove_dir(dir.path()).unwrap();
    let (out, _) = talk_with(config, b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n");
    assert_eq!(
        &finals(&out)[3..],
        [
            "354 End data with <CR><LF>.<CR><LF>",
            "451 4.3.0 Cannot save the message; see the server's log",
            "250 2.0.0 Ok",
        ]
    );
}
