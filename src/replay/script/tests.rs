use super::*;
use crate::record::format::{Body, BodyEncoding, CommandRecord};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::BTreeMap;

fn plan(tls: TlsPlan) -> Plan {
    Plan { tls, credentials: Credentials::default() }
}

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
    build_with(exchanges, &plan(TlsPlan::AsRecorded))
}

fn build_with(exchanges: &[Exchange], plan: &Plan) -> Result<Script, ScriptError> {
    build_from(&exchanges.iter().collect::<Vec<_>>(), &Facts::default(), plan)
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
fn the_proxys_own_upgrade_is_replayed_and_its_own_answers_are_not() {
    let mut proxy_ehlo = exchange(1, Some("EHLO smtptap"), false, 250);
    proxy_ehlo.origin = Some("proxy".into());
    let mut proxy_starttls = exchange(2, Some("STARTTLS"), false, 220);
    proxy_starttls.origin = Some("proxy".into());
    let mut client_ehlo = exchange(3, Some("EHLO c.test"), false, 250);
    client_ehlo.tls = false; // the client side stayed plaintext
    let exchanges = [exchange(0, None, false, 220), proxy_ehlo, proxy_starttls, client_ehlo];
    let script = build_all(&exchanges).unwrap();
    assert_eq!(sent(&script), ["EHLO smtptap\r\n", "STARTTLS\r\n", "EHLO c.test\r\n"]);
    assert_eq!(script.groups[1].starttls, Some(RecordedStartTls::Upgraded));
    assert!(script.uses_tls() && !script.implicit_tls && script.own_starttls.is_none());

    let mut local_starttls = exchange(3, Some("STARTTLS"), false, 220);
    local_starttls.answered_by = Some("proxy".into());
    let unasked = exchange(5, None, false, 421);
    let script = build_all(&[
        exchange(0, None, false, 220),
        exchange(2, Some("EHLO c.test"), false, 250),
        local_starttls,
        exchange(4, Some("NOOP"), true, 250),
        unasked,
    ])
    .unwrap();
    assert_eq!(seqs(&script), [vec![2], vec![4]]);
    assert_eq!(sent(&script), ["EHLO c.test\r\n", "NOOP\r\n"]);
    assert!(!script.uses_tls());
}

fn with_auth(mut e: Exchange, auth: serde_json::Value) -> Exchange {
    e.command.as_mut().unwrap().auth = Some(serde_json::from_value(auth).unwrap());
    e
}

/// `AUTH PLAIN <redacted>`, then LOGIN's user and password, then CRAM-MD5.
fn auth_exchanges() -> Vec<Exchange> {
    let secret = |m: &str, user: &str| serde_json::json!({"mechanism": m, "user": user, "secret": "<redacted>"});
    let mut login_user = exchange(4, Some("<redacted>"), false, 334);
    login_user.command.as_mut().unwrap().verb = None;
    let mut login_password = login_user.clone();
    login_password.seq = 5;
    let mut cram = login_user.clone();
    cram.seq = 7;
    vec![
        with_auth(
            exchange(2, Some("AUTH PLAIN <redacted>"), false, 535),
            serde_json::json!({"mechanism": "PLAIN", "authzid": "", "authcid": "ann", "secret": "<redacted>"}),
        ),
        exchange(3, Some("AUTH LOGIN"), false, 334),
        with_auth(login_user, serde_json::json!({"mechanism": "LOGIN", "user": "ann"})),
        with_auth(login_password, secret("LOGIN", "ann")),
        exchange(6, Some("AUTH CRAM-MD5"), false, 334),
        with_auth(cram, secret("CRAM-MD5", "ann")),
    ]
}

#[test]
fn redacted_secrets_are_rebuilt_from_the_credentials() {
    let credentials = Credentials { user: None, password: Some("pw".into()) };
    let script = build_with(&auth_exchanges(), &Plan { tls: TlsPlan::AsRecorded, credentials }).unwrap();
    let b64 = |s: &str| B64.encode(s);
    assert_eq!(
        sent(&script),
        [
            format!("AUTH PLAIN {}\r\n", b64("\0ann\0pw")),
            "AUTH LOGIN\r\n".into(),
            format!("{}\r\n", b64("ann")),
            format!("{}\r\n", b64("pw")),
            "AUTH CRAM-MD5\r\n".into(),
            String::new(),
        ]
    );
    let cram = script.groups[5].cram_md5.as_ref().expect("computed from the challenge");
    assert_eq!(cram.user, "ann");
    assert_eq!(script.groups[5].expects[0].label, "<redacted>", "the label never shows the secret");
    assert_eq!(script.groups[5].expects[0].verb, "AUTH");
    assert!(!format!("{script:?}").contains(&b64("\0ann\0pw")), "Debug shows no secret");
}

#[test]
fn secrets_a_recording_kept_are_sent_but_never_in_a_label() {
    // Recorded with `--redact none`: PLAIN with an initial response, then LOGIN.
    let plain = B64.encode("\0ann\0hunter2");
    let password = B64.encode("hunter2");
    let mut login_password = exchange(4, Some(&password), false, 235);
    login_password.command.as_mut().unwrap().verb = None;
    let exchanges = [
        exchange(1, Some(&format!("AUTH PLAIN {plain}")), false, 535),
        exchange(2, Some("AUTH LOGIN"), false, 334),
        login_password,
        exchange(5, Some("QUIT"), false, 221),
    ];
    let script = build_all(&exchanges).unwrap();
    assert_eq!(
        sent(&script),
        [format!("AUTH PLAIN {plain}\r\n"), "AUTH LOGIN\r\n".into(), format!("{password}\r\n"), "QUIT\r\n".into()]
    );
    let labels: Vec<&str> = script.groups.iter().flat_map(|g| &g.expects).map(|e| e.label.as_str()).collect();
    assert_eq!(labels, ["AUTH PLAIN <redacted>", "AUTH LOGIN", "<redacted>", "QUIT"]);
}

#[test]
fn a_missing_secret_is_refused_once_naming_the_flag() {
    let err = build_all(&auth_exchanges()).unwrap_err();
    assert!(matches!(err, ScriptError::Credentials { seq: 2, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("exchange #2: AUTH PLAIN for ann") && text.contains("--auth-password-env VAR"), "{text}");
}

#[test]
fn tls_as_recorded_or_as_asked() {
    let mut after = exchange(3, Some("EHLO c"), false, 250);
    after.tls = true;
    after.pipelined = Some(true); // a new group all the same: TLS started in between
    let exchanges = [exchange(1, Some("EHLO c"), false, 250), exchange(2, Some("STARTTLS"), false, 220), after];
    let script = build_all(&exchanges).unwrap();
    assert_eq!(sent(&script), ["EHLO c\r\n", "STARTTLS\r\n", "EHLO c\r\n"]);
    assert_eq!(
        script.groups.iter().map(|g| g.starttls).collect::<Vec<_>>(),
        [None, Some(RecordedStartTls::Upgraded), None]
    );
    assert_eq!(build_with(&exchanges, &plan(TlsPlan::Starttls)).unwrap(), script);

    for tls in [TlsPlan::Off, TlsPlan::Implicit] {
        let script = build_with(&exchanges, &plan(tls)).unwrap();
        assert_eq!(sent(&script), ["EHLO c\r\n", "EHLO c\r\n"]);
        assert_eq!(script.skipped_starttls, 1);
        assert_eq!(script.implicit_tls, tls == TlsPlan::Implicit);
    }

    let plain = [exchange(1, Some("EHLO c"), false, 250), exchange(2, Some("QUIT"), false, 221)];
    let script = build_with(&plain, &plan(TlsPlan::Starttls)).unwrap();
    assert_eq!(script.own_starttls.as_deref(), Some(&b"EHLO c\r\n"[..]));
    assert_eq!(sent(&script), ["EHLO c\r\n", "QUIT\r\n"]);
    let implicit = Facts { implicit_tls: true, ..Facts::default() };
    let refs: Vec<&Exchange> = plain.iter().collect();
    assert!(build_from(&refs, &implicit, &plan(TlsPlan::AsRecorded)).unwrap().implicit_tls);
    assert!(!build_from(&refs, &implicit, &plan(TlsPlan::Off)).unwrap().uses_tls());
}

#[test]
fn refused_starttls_is_replayed() {
    let script = build_all(&[exchange(2, Some("STARTTLS"), false, 454)]).unwrap();
    assert_eq!(sent(&script), ["STARTTLS\r\n"]);
    assert_eq!(script.groups[0].starttls, Some(RecordedStartTls::Refused));
}

#[test]
fn bodies_not_recorded_are_sent_as_placeholders() {
    let mut content = exchange(3, None, false, 250);
    let mut headers = BTreeMap::new();
    headers.insert("subject".to_owned(), "x".to_owned());
    content.message = Some(MessageRecord { body: None, headers, ..message(&"y".repeat(60)).unwrap() });
    let script = build_all(&[exchange(2, Some("DATA"), false, 354), content]).unwrap();
    assert_eq!(script.placeholders, [3]);
    let content = &sent(&script)[1];
    assert!(content.starts_with("Subject: x\r\n\r\n[smtptap replay: placeholder") && content.ends_with("\r\n.\r\n"));
    assert_eq!(content.len(), 60 + 3);
    assert_eq!(script.groups[1].expects[0].label, "(placeholder message, 60 octets)");

    let mut last = exchange(5, Some("BDAT 25 LAST"), true, 250);
    last.message = Some(MessageRecord { body: None, ..message(&"z".repeat(35)).unwrap() });
    let script = build_all(&[exchange(4, Some("BDAT 10"), false, 250), last]).unwrap();
    assert_eq!(sent(&script)[0].len(), "BDAT 10\r\n".len() + 10 + "BDAT 25 LAST\r\n".len() + 25);
}

#[test]
fn a_line_cut_at_the_end_of_the_recording_ends_the_script() {
    let mut cut = exchange(2, Some("RCPT TO:<b@"), false, 0);
    cut.command.as_mut().unwrap().incomplete = true;
    cut.reply = None;
    let script = build_all(&[exchange(1, Some("MAIL FROM:<a@x>"), false, 250), cut]).unwrap();
    assert_eq!(sent(&script), ["MAIL FROM:<a@x>\r\n"]);
}
