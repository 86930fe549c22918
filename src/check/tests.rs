//! One test per finding: a crafted session that triggers it, and the clean
//! session that triggers nothing.

use super::testkit::*;
use super::*;
use crate::record::format::{EndReason, NoteKind, TlsSide};

fn rules(rec: &Recording) -> Vec<(&'static str, Severity, Option<u64>)> {
    check(rec).into_iter().map(|f| (f.rule, f.severity, f.seq)).collect()
}

/// The findings of `rule` only.
fn only(rec: &Recording, rule: &str) -> Vec<Finding> {
    check(rec).into_iter().filter(|f| f.rule == rule).collect()
}

#[test]
fn a_clean_session_has_no_findings() {
    assert_eq!(check(&clean()), []);
}

#[test]
fn a_clean_plain_session_to_a_server_without_tls_has_no_findings() {
    let rec = Script::new()
        .ehlo(&["PIPELINING", "8BITMIME"])
        .send("a@x.test", "b@y.test", &good_message("a@x.test", "b@y.test"))
        .quit();
    assert_eq!(check(&rec), []);
}

#[test]
fn auth_before_tls() {
    let rec = Script::new()
        .ehlo(TLS_EXTENSIONS)
        .auth("AUTH PLAIN <redacted>", Some(auth("PLAIN", "ann@x.test")), 235, "2.7.0 ok")
        .quit();
    let found = only(&rec, "auth-before-tls");
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].severity, found[0].seq), (Severity::Error, Some(2)));
    assert!(found[0].message.contains("AUTH PLAIN as ann@x.test"), "{}", found[0].message);
    assert!(found[0].advice.contains("Thunderbird: Connection security is 'None' — set STARTTLS"));
    assert!(only(&clean(), "auth-before-tls").is_empty());
}

#[test]
fn starttls_offered_but_not_used() {
    let rec =
        Script::new().ehlo(PLAIN_EXTENSIONS).send("a@x.test", "b@y.test", &good_message("a@x.test", "b@y.test")).quit();
    assert_eq!(rules(&rec), [("starttls-not-used", Severity::Warning, Some(1))]);
    // Offered, but only a probe: info.
    let probe = Script::new().ehlo(PLAIN_EXTENSIONS).quit();
    assert_eq!(rules(&probe), [("starttls-not-used", Severity::Info, Some(1))]);
    // smtptap removed it from what the client saw (--client-tls off): not offered.
    let removed = Script::new()
        .note(NoteKind::StarttlsWithdrawn, "STARTTLS removed from the EHLO reply relayed to the client")
        .ehlo(PLAIN_EXTENSIONS)
        .quit();
    assert!(only(&removed, "starttls-not-used").is_empty());
    // smtptap added it: offered.
    let added = Script::new()
        .note(NoteKind::StarttlsOffered, "STARTTLS added to the EHLO reply relayed to the client")
        .ehlo(&["PIPELINING"])
        .quit();
    assert_eq!(only(&added, "starttls-not-used").len(), 1);
    assert!(only(&clean(), "starttls-not-used").is_empty());
}

#[test]
fn authentication_failure_names_the_identity() {
    let rec = Script::new()
        .ehlo(PLAIN_EXTENSIONS)
        .starttls()
        .ehlo(TLS_EXTENSIONS)
        .auth("AUTH LOGIN", None, 334, "VXNlcm5hbWU6")
        .sasl(Some(auth("LOGIN", "joe@x.test")), 334, "UGFzc3dvcmQ6")
        .sasl(Some(auth("LOGIN", "joe@x.test")), 535, "5.7.8 Error: authentication failed")
        .quit();
    let found = only(&rec, "auth-failed");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].severity, found[0].seq), (Severity::Error, Some(6)));
    assert!(found[0].message.contains("for joe@x.test (AUTH LOGIN): 535 5.7.8"), "{}", found[0].message);
    assert!(found[0].advice.contains("user name and password"));
    // Not also reported as a generic refusal.
    assert!(only(&rec, "server-rejected").is_empty());
    assert!(only(&clean(), "auth-failed").is_empty());
}

#[test]
fn authentication_failure_with_an_unoffered_mechanism_says_so() {
    let rec = Script::new()
        .ehlo(PLAIN_EXTENSIONS)
        .starttls()
        .ehlo(TLS_EXTENSIONS)
        .auth("AUTH CRAM-MD5", None, 504, "5.5.4 Unrecognized authentication type")
        .quit();
    let found = only(&rec, "auth-failed");
    assert!(found[0].advice.starts_with("The server offered AUTH PLAIN LOGIN, not CRAM-MD5."), "{}", found[0].advice);
    assert!(found[0].advice.contains("'Normal password'"));
    assert!(found[0].message.contains("no user name was decoded"));
}

#[test]
fn relaying_denied() {
    let rec = Script::new()
        .ehlo(&["PIPELINING", "8BITMIME"])
        .cmd("MAIL FROM:<a@x.test>", 250, "2.1.0 Ok")
        .cmd("RCPT TO:<b@y.test>", 554, "5.7.1 <b@y.test>: Relay access denied")
        .cmd("RCPT TO:<c@y.test>", 554, "5.7.1 <c@y.test>: Relay access denied")
        .quit();
    let found = only(&rec, "relay-denied");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].severity, found[0].seq), (Severity::Error, Some(3)));
    assert!(found[0].message.starts_with("`RCPT TO:<b@y.test>` was refused: 554 5.7.1"), "{}", found[0].message);
    assert!(found[0].message.ends_with("(2 times)"), "{}", found[0].message);
    assert!(found[0].advice.starts_with("The client did not log in."));
    assert!(only(&clean(), "relay-denied").is_empty());
}

#[test]
fn starttls_and_auth_required_are_decoded() {
    let rec = Script::new()
        .ehlo(PLAIN_EXTENSIONS)
        .cmd("MAIL FROM:<a@x.test>", 530, "5.7.0 Must issue a STARTTLS command first")
        .quit();
    let found = only(&rec, "starttls-required");
    assert_eq!(found.len(), 1);
    assert!(found[0].advice.contains("STARTTLS"));
    let rec = Script::new()
        .ehlo(PLAIN_EXTENSIONS)
        .starttls()
        .ehlo(TLS_EXTENSIONS)
        .cmd("MAIL FROM:<a@x.test>", 530, "5.7.0 Authentication required")
        .quit();
    assert_eq!(rules(&rec), [("auth-required", Severity::Error, Some(4))]);
}

#[test]
fn other_refusals_are_explained() {
    let rec = Script::new()
        .ehlo(&["PIPELINING"])
        .cmd("MAIL FROM:<a@x.test>", 250, "2.1.0 Ok")
        .cmd("RCPT TO:<nobody@y.test>", 550, "5.1.1 <nobody@y.test>: Recipient address rejected: User unknown")
        .cmd("RCPT TO:<b@y.test>", 450, "4.7.1 <b@y.test>: Recipient address rejected: Greylisted")
        .quit();
    let found = only(&rec, "server-rejected");
    assert_eq!(found.len(), 2);
    assert_eq!((found[0].severity, found[1].severity), (Severity::Error, Severity::Warning));
    assert!(found[0].message.contains("the recipient address does not exist"), "{}", found[0].message);
    assert!(found[1].message.contains("greylisting"), "{}", found[1].message);
}

#[test]
fn header_from_differs_from_mail_from() {
    let content = good_message("other@z.test", "b@y.test");
    let rec = Script::new().ehlo(&["PIPELINING", "8BITMIME"]).send("a@x.test", "b@y.test", &content).quit();
    let found = only(&rec, "from-mismatch");
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].severity, found[0].seq), (Severity::Warning, Some(5)));
    assert!(
        found[0]
            .message
            .contains("(Ann <other@z.test>) differs from the envelope sender MAIL FROM:<a@x.test>, at another domain"),
        "{}",
        found[0].message
    );
    // Case does not matter; a bounce (MAIL FROM:<>) is never compared.
    let same = Script::new()
        .ehlo(&["8BITMIME"])
        .send("ANN@X.test", "b@y.test", &good_message("ann@x.TEST", "b@y.test"))
        .quit();
    assert!(only(&same, "from-mismatch").is_empty());
    let bounce = Script::new().ehlo(&["8BITMIME"]).send("", "b@y.test", &content).quit();
    assert!(only(&bounce, "from-mismatch").is_empty());
    assert!(only(&clean(), "from-mismatch").is_empty());
}

#[test]
fn missing_date_and_message_id() {
    let content = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: s\r\n\r\nbody\r\n";
    let rec = Script::new().ehlo(&["8BITMIME"]).send("a@x.test", "b@y.test", content).quit();
    assert_eq!(
        rules(&rec),
        [("missing-date", Severity::Warning, Some(5)), ("missing-message-id", Severity::Warning, Some(5))]
    );
    let no_from = b"Date: Sat, 28 Nov 2026 19:36:24 +0000\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n";
    let rec = Script::new().ehlo(&["8BITMIME"]).send("a@x.test", "b@y.test", no_from).quit();
    assert_eq!(rules(&rec), [("missing-from", Severity::Error, Some(5))]);
}

#[test]
fn bare_lf_and_bare_cr_in_the_content() {
    let content = b"Date: x\r\nFrom: a@x.test\r\nMessage-ID: <1@x>\r\n\r\none\ntwo\nthree\r\nfour\rfive\r\n";
    let rec = Script::new().ehlo(&["8BITMIME"]).send("a@x.test", "b@y.test", content).quit();
    let lf = only(&rec, "bare-lf");
    assert_eq!(lf.len(), 1);
    assert!(lf[0].message.contains("2 bare LF (first on line 5)"), "{}", lf[0].message);
    let cr = only(&rec, "bare-cr");
    assert!(cr[0].message.contains("a bare CR (first on line 8)"), "{}", cr[0].message);
    assert_eq!(lf[0].seq, Some(5));
    assert!(only(&clean(), "bare-lf").is_empty() && only(&clean(), "bare-cr").is_empty());
}

#[test]
fn without_bodies_the_content_checks_are_skipped_with_an_info() {
    let content = b"Date: x\r\nFrom: a@x.test\r\nMessage-ID: <1@x>\r\n\r\none\ntwo\r\n";
    let rec = Script::new().ehlo(&["8BITMIME"]).send("a@x.test", "b@y.test", content).without_bodies().quit();
    assert_eq!(rules(&rec), [("bodies-not-recorded", Severity::Info, Some(5))]);
}

#[test]
fn lines_over_998_octets() {
    let mut content = good_message("a@x.test", "b@y.test");
    content.extend_from_slice(&[b'x'; 998]);
    content.extend_from_slice(b"\r\n");
    content.extend_from_slice(&[b'y'; 1500]);
    content.extend_from_slice(b"\r\n");
    let rec = Script::new().ehlo(&["8BITMIME"]).send("a@x.test", "b@y.test", &content).quit();
    let found = only(&rec, "long-line");
    assert_eq!(found.len(), 1);
    assert!(
        found[0].message.contains("a line over 998 octets (first on line 9, longest 1500 octets)"),
        "{}",
        found[0].message
    );
}

#[test]
fn eight_bit_data_without_8bitmime() {
    let mut content = good_message("a@x.test", "b@y.test");
    content.extend_from_slice("Grüße\r\n".as_bytes());
    let rec = Script::new().ehlo(&["PIPELINING"]).send("a@x.test", "b@y.test", &content).quit();
    assert_eq!(rules(&rec), [("8bit-without-8bitmime", Severity::Warning, Some(5))]);
    // Offered but not declared: info. Offered and declared: nothing.
    let rec = Script::new().ehlo(&["8BITMIME"]).send("a@x.test", "b@y.test", &content).quit();
    assert_eq!(rules(&rec), [("8bit-without-8bitmime", Severity::Info, Some(5))]);
    let rec = Script::new()
        .ehlo(&["8BITMIME"])
        .cmd("MAIL FROM:<a@x.test> BODY=8BITMIME", 250, "2.1.0 Ok")
        .cmd("RCPT TO:<b@y.test>", 250, "2.1.5 Ok")
        .cmd("DATA", 354, "go ahead")
        .content(&content, 250, "2.0.0 Ok")
        .quit();
    assert_eq!(check(&rec), []);
}

#[test]
fn size_exceeded() {
    let content = good_message("a@x.test", "b@y.test");
    let rec = Script::new()
        .ehlo(&["SIZE 100", "8BITMIME"])
        .cmd("MAIL FROM:<a@x.test>", 250, "2.1.0 Ok")
        .cmd("RCPT TO:<b@y.test>", 250, "2.1.5 Ok")
        .cmd("DATA", 354, "go ahead")
        .content(&content, 552, "5.3.4 Message size exceeds fixed limit")
        .quit();
    let found = only(&rec, "size-exceeded");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].severity, found[0].seq), (Severity::Error, Some(5)));
    assert!(found[0].message.contains("(message 130 octets, server limit 100 octets)"), "{}", found[0].message);
    assert!(only(&rec, "server-rejected").is_empty());
    // Declared up front with MAIL FROM … SIZE=.
    let rec = Script::new()
        .ehlo(&["SIZE 100"])
        .cmd("MAIL FROM:<a@x.test> SIZE=5000", 552, "5.3.4 Message size exceeds fixed limit")
        .quit();
    assert_eq!(rules(&rec), [("size-exceeded", Severity::Error, Some(2))]);
    // Over the advertised limit, yet accepted: a warning.
    let rec = Script::new().ehlo(&["SIZE 100", "8BITMIME"]).send("a@x.test", "b@y.test", &content).quit();
    assert_eq!(rules(&rec), [("size-exceeded", Severity::Warning, Some(5))]);
    assert!(only(&clean(), "size-exceeded").is_empty());
}

#[test]
fn helo_instead_of_ehlo() {
    let rec = Script::new()
        .cmd("HELO client.test", 250, "mx.test")
        .send("a@x.test", "b@y.test", &good_message("a@x.test", "b@y.test"))
        .quit();
    assert_eq!(rules(&rec), [("helo-not-ehlo", Severity::Warning, Some(1))]);
    // A fallback after EHLO was refused is only worth an info.
    let rec = Script::new()
        .cmd("EHLO client.test", 502, "5.5.1 not implemented")
        .cmd("HELO client.test", 250, "mx.test")
        .quit();
    let found = only(&rec, "helo-not-ehlo");
    assert_eq!(found[0].severity, Severity::Info);
}

#[test]
fn pipelining_without_the_server_offering_it() {
    let rec = Script::new()
        .ehlo(&["8BITMIME"])
        .cmd("MAIL FROM:<a@x.test>", 250, "2.1.0 Ok")
        .cmd("RCPT TO:<b@y.test>", 250, "2.1.5 Ok")
        .piped()
        .cmd("DATA", 354, "go ahead")
        .piped()
        .content(&good_message("a@x.test", "b@y.test"), 250, "2.0.0 Ok")
        .quit();
    let found = only(&rec, "pipelining-not-offered");
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].severity, found[0].seq), (Severity::Warning, Some(3)));
    assert!(found[0].message.contains("2 commands"), "{}", found[0].message);
    // Offered: fine.
    let rec = Script::new()
        .ehlo(&["PIPELINING", "8BITMIME"])
        .cmd("MAIL FROM:<a@x.test>", 250, "2.1.0 Ok")
        .cmd("RCPT TO:<b@y.test>", 250, "2.1.5 Ok")
        .piped()
        .quit();
    assert_eq!(check(&rec), []);
    // Right after EHLO, before its reply: never allowed.
    let rec = Script::new().ehlo(&["PIPELINING"]).cmd("MAIL FROM:<a@x.test>", 250, "2.1.0 Ok").piped().quit();
    let found = only(&rec, "pipelining-not-offered");
    assert!(found[0].message.contains("without waiting for the reply to EHLO"), "{}", found[0].message);
}

#[test]
fn client_talks_before_the_greeting() {
    let rec = Script::new().ehlo(&["PIPELINING"]).piped().quit();
    assert_eq!(rules(&rec), [("early-talker", Severity::Warning, Some(1))]);
    assert!(only(&clean(), "early-talker").is_empty());
}

#[test]
fn plaintext_after_starttls_was_refused() {
    let rec = Script::new()
        .ehlo(PLAIN_EXTENSIONS)
        .cmd("STARTTLS", 454, "4.7.0 TLS not available due to local problem")
        .cmd("MAIL FROM:<a@x.test>", 250, "2.1.0 Ok")
        .quit();
    let found = only(&rec, "plaintext-after-starttls-refused");
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].severity, found[0].seq), (Severity::Error, Some(3)));
    assert!(found[0].message.contains("(454 4.7.0 TLS not available due to local problem)"));
    // Giving up instead is right.
    let rec = Script::new().ehlo(PLAIN_EXTENSIONS).cmd("STARTTLS", 454, "4.7.0 TLS not available").quit();
    assert!(only(&rec, "plaintext-after-starttls-refused").is_empty());
}

#[test]
fn starttls_command_injection() {
    let rec = Script::new()
        .ehlo(PLAIN_EXTENSIONS)
        .note(
            NoteKind::ClientAfterStarttls,
            "the client sent 12 bytes after STARTTLS, before the TLS handshake; discarded; kept here",
        )
        .starttls()
        .quit();
    let found = only(&rec, "starttls-injection");
    assert_eq!(found.len(), 1);
    assert!(found[0].advice.contains("CVE-2011-0411"));
}

#[test]
fn tls_handshake_failures() {
    let rec = Script::new()
        .ehlo(PLAIN_EXTENSIONS)
        .cmd("STARTTLS", 220, "2.0.0 Ready")
        .tls_error(TlsSide::Client, "received fatal alert: UnknownCA")
        .end(EndReason::TlsFailed);
    let found = only(&rec, "tls-failed");
    assert_eq!((found[0].severity, found[0].seq), (Severity::Error, Some(2)));
    assert!(found[0].advice.contains("smtptap ca show"));
}

#[test]
fn incomplete_recordings_are_noted_not_failed() {
    let rec = Script::new().ehlo(PLAIN_EXTENSIONS).starttls().unended();
    assert_eq!(rules(&rec), [("recording-incomplete", Severity::Info, Some(2))]);
}

#[test]
fn upstream_unreachable() {
    let rec = Script::bare().server(421, "4.4.1 upstream unreachable").end(EndReason::UpstreamUnreachable);
    assert!(rules(&rec).contains(&("upstream-unreachable", Severity::Error, Some(0))));
}

#[test]
fn findings_come_in_exchange_order() {
    let rec = Script::new()
        .ehlo(&["AUTH PLAIN"])
        .auth("AUTH PLAIN <redacted>", Some(auth("PLAIN", "a@x.test")), 535, "5.7.8 bad")
        .cmd("MAIL FROM:<a@x.test>", 250, "2.1.0 Ok")
        .cmd("RCPT TO:<b@y.test>", 550, "5.7.1 Relaying denied")
        .quit();
    let seqs: Vec<Option<u64>> = check(&rec).iter().map(|f| f.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(seqs, sorted);
    assert_eq!(rules(&rec).iter().map(|r| r.0).collect::<Vec<_>>(), ["auth-before-tls", "auth-failed", "relay-denied"]);
}

#[test]
fn text_report_is_readable() {
    let rec = Script::new().ehlo(&["8BITMIME"]).cmd("HELO x", 250, "mx").quit();
    let text = text_report(&rec, &check(&rec), false);
    assert!(
        text.starts_with("crafted.jsonl: session test, 127.0.0.1:50000 -> mx.test:587, 2026-11-28 19:36:24 UTC\n"),
        "{text}"
    );
    assert!(
        text.contains("  warning  #2   the client greeted with `HELO x` instead of EHLO [helo-not-ehlo]\n"),
        "{text}"
    );
    assert!(text.contains("\n                → After HELO"), "{text}");
    let clean_text = text_report(&clean(), &[], false);
    assert!(clean_text.ends_with("  no problems found\n"));
}
