use super::*;
use crate::record::format::{Body, CommandRecord};
use std::collections::BTreeMap;

fn reply(code: u16, enhanced: Option<&str>) -> Option<ReplyRecord> {
    Some(ReplyRecord {
        code,
        enhanced: enhanced.map(str::to_owned),
        lines: vec![enhanced.map_or("Ok".to_owned(), |e| format!("{e} Ok"))],
        lines_base64: None,
        omitted_lines: 0,
        truncated: false,
    })
}

fn exchange(seq: u64, line: Option<&str>, pipelined: bool, code: u16) -> Exchange {
    Exchange {
        seq,
        t: "2026-11-28T19:36:24.123456Z".into(),
        tls: false,
        pipelined: line.map(|_| pipelined),
        command: line.map(|l| CommandRecord {
            verb: Some(l.split(' ').next().unwrap().to_ascii_uppercase()),
            line: l.to_owned(),
            line_base64: None,
            length: None,
            incomplete: false,
            auth: None,
        }),
        message: None,
        reply: reply(code, None),
        ms: Some(0.1),
        origin: None,
        answered_by: None,
    }
}

fn message(content: &str) -> Option<MessageRecord> {
    Some(MessageRecord {
        size: content.len() as u64,
        sha256: String::new(),
        headers: BTreeMap::new(),
        body: Some(Body { encoding: BodyEncoding::Utf8, data: content.to_owned() }),
        complete: true,
    })
}

fn build_all(exchanges: &[Exchange]) -> Result<Script, ScriptError> {
    build_from(&exchanges.iter().collect::<Vec<_>>(), TlsPlan::AsRecorded)
}

fn sent(script: &Script) -> Vec<String> {
    script.groups.iter().map(|g| String::from_utf8_lossy(&g.bytes).into_owned()).collect()
}

fn seqs(script: &Script) -> Vec<Vec<u64>> {
    script.groups.iter().map(|g| g.expects.iter().map(|e| e.seq).collect()).collect()
}

#[test]
fn pipelined_commands_are_sent_together() {
    let mut content = exchange(6, None, false, 250);
    content.message = message("Subject: x\r\n\r\nhi\r\n");
    let script = build_all(&[
        exchange(0, None, false, 220),
        exchange(1, Some("EHLO c.test"), false, 250),
        exchange(2, Some("MAIL FROM:<a@x.test>"), false, 250),
        exchange(3, Some("RCPT TO:<b@y.test>"), true, 250),
        exchange(4, Some("RCPT TO:<c@y.test>"), true, 250),
        exchange(5, Some("DATA"), true, 354),
        content,
        exchange(7, Some("QUIT"), false, 221),
    ])
    .unwrap();
    assert_eq!(script.greeting.as_ref().unwrap().label, "(greeting)");
    assert_eq!(seqs(&script), [vec![1], vec![2, 3, 4, 5], vec![6], vec![7]]);
    assert_eq!(
        sent(&script),
        [
            "EHLO c.test\r\n",
            "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n",
            "Subject: x\r\n\r\nhi\r\n.\r\n",
            "QUIT\r\n",
        ]
    );
    assert!(script.groups[2].after_data && !script.groups[1].after_data);
    assert_eq!(script.groups[2].expects[0].label, "(message, 18 octets)");
    assert_eq!(script.expected_count(), 8);
}

#[test]
fn message_content_is_dot_stuffed_again() {
    let mut content = exchange(3, None, false, 250);
    content.message = message(".hidden\r\nmid.dle\r\n..two\r\n.\r\n");
    let script = build_all(&[exchange(2, Some("DATA"), false, 354), content]).unwrap();
    assert_eq!(sent(&script)[1], "..hidden\r\nmid.dle\r\n...two\r\n..\r\n.\r\n");
}

#[test]
fn base64_bodies_and_exact_lines_are_sent_byte_for_byte() {
    let mut content = exchange(3, None, false, 250);
    content.message = Some(MessageRecord {
        body: Some(Body { encoding: BodyEncoding::Base64, data: B64.encode(b"caf\xe9\r\n") }),
        ..message("").unwrap()
    });
    let mut mail = exchange(1, Some("MAIL FROM:<caf\u{fffd}@x>"), false, 250);
    mail.command.as_mut().unwrap().line_base64 = Some(B64.encode(b"MAIL FROM:<caf\xe9@x>"));
    let script = build_all(&[mail, exchange(2, Some("DATA"), false, 354), content]).unwrap();
    assert_eq!(script.groups[0].bytes, b"MAIL FROM:<caf\xe9@x>\r\n");
    assert_eq!(script.groups[2].bytes, b"caf\xe9\r\n.\r\n");
}

#[test]
fn bdat_chunks_are_split_by_the_recorded_sizes() {
    let body = "Subject: chunks\r\n\r\nsent with BDAT\r\n"; // 35 octets
    let mut last = exchange(5, Some("BDAT 15 LAST"), true, 250);
    last.message = message(body);
    let script = build_all(&[
        exchange(2, Some("MAIL FROM:<a@x.test>"), false, 250),
        exchange(3, Some("RCPT TO:<b@y.test>"), true, 250),
        exchange(4, Some("BDAT 20"), true, 250),
        last,
        exchange(6, Some("QUIT"), false, 221),
    ])
    .unwrap();
    assert_eq!(seqs(&script), [vec![2, 3, 4, 5], vec![6]]);
    assert_eq!(
        sent(&script)[0],
        "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 20\r\nSubject: chunks\r\n\r\nsBDAT 15 LAST\r\nent with BDAT\r\n"
    );
}

#[test]
fn bdat_chunks_in_separate_groups_get_their_own_data() {
    let mut last = exchange(3, Some("BDAT 3 LAST"), false, 250);
    last.message = message("abcdef");
    let script = build_all(&[exchange(2, Some("BDAT 3"), false, 250), last]).unwrap();
    assert_eq!(sent(&script), ["BDAT 3\r\nabc", "BDAT 3 LAST\r\ndef"]);
}

#[test]
fn bdat_sizes_that_do_not_add_up_are_refused() {
    let mut last = exchange(3, Some("BDAT 3 LAST"), false, 250);
    last.message = message("abcdef");
    let err = build_all(&[last]).unwrap_err();
    assert!(err.to_string().contains("add up to 3 octets but the message has 6"), "{err}");
}

#[test]
fn what_the_client_never_sent_is_left_out() {
    let mut proxy_ehlo = exchange(1, Some("EHLO smtptap"), false, 250);
    proxy_ehlo.origin = Some("proxy".into());
    let mut local_starttls = exchange(3, Some("STARTTLS"), false, 220);
    local_starttls.answered_by = Some("proxy".into());
    let unasked = exchange(5, None, false, 421);
    let script = build_all(&[
        exchange(0, None, false, 220),
        proxy_ehlo,
        exchange(2, Some("EHLO c.test"), false, 250),
        local_starttls,
        exchange(4, Some("NOOP"), false, 250),
        unasked,
    ])
    .unwrap();
    assert_eq!(seqs(&script), [vec![2], vec![4]]);
    assert_eq!(sent(&script), ["EHLO c.test\r\n", "NOOP\r\n"]);
}

#[test]
fn redacted_auth_is_refused() {
    let auth = exchange(2, Some("AUTH PLAIN <redacted>"), false, 235);
    let err = build_all(&[exchange(1, Some("EHLO c"), false, 250), auth]).unwrap_err();
    assert_eq!(err, ScriptError::RedactedAuth { seq: 2 });
    assert!(err.to_string().contains("--auth-user / --auth-password-env"), "{err}");
}

#[test]
fn tls_is_refused_unless_off_is_asked_for() {
    let mut after = exchange(3, Some("EHLO c"), false, 250);
    after.tls = true;
    let exchanges = [exchange(1, Some("EHLO c"), false, 250), exchange(2, Some("STARTTLS"), false, 220), after];
    let err = build_all(&exchanges).unwrap_err();
    assert_eq!(err, ScriptError::TlsNotImplemented { seq: 3 });
    assert!(err.to_string().contains("--tls off"), "{err}");
    let script = build_from(&exchanges.iter().collect::<Vec<_>>(), TlsPlan::Off).unwrap();
    assert_eq!(sent(&script), ["EHLO c\r\n", "EHLO c\r\n"]);
    assert_eq!(script.skipped_starttls, 1);
}

#[test]
fn refused_starttls_is_replayed() {
    let script = build_all(&[exchange(2, Some("STARTTLS"), false, 454)]).unwrap();
    assert_eq!(sent(&script), ["STARTTLS\r\n"]);
}

#[test]
fn bodies_not_recorded_are_refused() {
    let mut content = exchange(3, None, false, 250);
    content.message = Some(MessageRecord { body: None, ..message("x").unwrap() });
    let err = build_all(&[exchange(2, Some("DATA"), false, 354), content]).unwrap_err();
    assert_eq!(err, ScriptError::NoBody { seq: 3 });
    assert!(err.to_string().contains("--no-bodies"));
}

#[test]
fn a_line_cut_at_the_end_of_the_recording_ends_the_script() {
    let mut cut = exchange(2, Some("RCPT TO:<b@"), false, 0);
    cut.command.as_mut().unwrap().incomplete = true;
    cut.reply = None;
    let script = build_all(&[exchange(1, Some("MAIL FROM:<a@x>"), false, 250), cut]).unwrap();
    assert_eq!(sent(&script), ["MAIL FROM:<a@x>\r\n"]);
}

#[test]
fn every_kind_of_refusal_is_named_once() {
    let mut auth = exchange(4, Some("AUTH PLAIN <redacted>"), false, 235);
    auth.tls = true;
    let mut again = exchange(5, Some("AUTH LOGIN <redacted>"), false, 535);
    again.tls = true;
    let err = build_all(&[exchange(1, Some("EHLO c"), false, 250), auth, again]).unwrap_err();
    assert_eq!(
        err,
        ScriptError::Several(vec![ScriptError::TlsNotImplemented { seq: 4 }, ScriptError::RedactedAuth { seq: 4 }])
    );
    let text = err.to_string();
    assert!(text.contains("--tls off") && text.contains("--auth-user"), "{text}");
}
