//! Transcript and list rendering, on crafted sessions.

use super::text::fmt_ms;
use super::*;
use crate::check::testkit::*;
use crate::record::format::NoteKind;
use crate::record::format::{EndReason, Record};
use std::path::Path;

fn plain() -> Options {
    Options::default()
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn clean_session_in_swaks_convention() {
    let text = render(&clean(), plain());
    let l = lines(&text);
    assert_eq!(l[0], "** session test at 2026-11-28 19:36:24 UTC (smtptap 0.1.0)");
    assert_eq!(l[1], "** client 127.0.0.1:50000 -> smtptap 127.0.0.1:2525 -> upstream mx.test:587");
    assert_eq!(l[2], "<-  220 mx.test ESMTP");
    assert_eq!(l[3], " -> EHLO client.test");
    assert_eq!(l[4], "<-  250-mx.test");
    assert_eq!(l[9], "<-  250 8BITMIME");
    assert_eq!(l[10], " -> STARTTLS");
    assert_eq!(l[11], "<-  220 2.0.0 Ready to start TLS");
    assert_eq!(l[12], "** TLS with the upstream: TLSv1.3, TLS13_AES_256_GCM_SHA384");
    assert_eq!(l[14], " ~> EHLO client.test");
    assert!(
        text.contains("\n ~> AUTH PLAIN <redacted> (authcid=ann@x.test)\n<~  235 2.7.0 Authentication successful\n")
    );
    assert!(text.contains("\n ~> DATA\n<~  354 End data with <CR><LF>.<CR><LF>\n** message: 134 octets, sha256 "));
    assert!(text.contains(
        "\n**   From: Ann <ann@x.test>\n**   To: bob@y.test\n**   Subject: hello\n ~> .\n<~  250 2.0.0 Ok: queued\n"
    ));
    assert!(text.ends_with(" ~> QUIT\n<~  221 2.0.0 Bye\n** end: quit after 120 ms (10 exchanges, 0 messages; 0 bytes from the client, 0 bytes from the upstream)\n"), "{text}");
    assert!(!text.contains('\x1b'), "no colour unless asked");
}

#[test]
fn pipelined_batches_show_commands_then_replies() {
    let rec = Script::new()
        .ehlo(&["PIPELINING"])
        .cmd("MAIL FROM:<a@x.test>", 250, "2.1.0 Ok")
        .cmd("RCPT TO:<b@y.test>", 550, "5.1.1 unknown")
        .piped()
        .cmd("DATA", 554, "5.5.1 no valid recipients")
        .piped()
        .quit();
    let text = render(&rec, plain());
    assert!(
        text.contains(
            " -> MAIL FROM:<a@x.test>\n -> RCPT TO:<b@y.test>\n -> DATA\n<-  250 2.1.0 Ok\n<-  550 5.1.1 unknown\n<-  554 5.5.1 no valid recipients\n -> QUIT\n"
        ),
        "{text}"
    );
}

#[test]
fn a_client_that_talks_first_is_shown_before_the_greeting() {
    let text = render(&Script::new().ehlo(&[]).piped().quit(), plain());
    assert!(text.contains("\n -> EHLO client.test\n<-  220 mx.test ESMTP\n<-  250 mx.test\n"), "{text}");
}

#[test]
fn auth_login_continuations_are_decoded_beside_the_redacted_lines() {
    let rec = Script::new()
        .auth("AUTH LOGIN", None, 334, "VXNlcm5hbWU6")
        .sasl(Some(auth("LOGIN", "joe@x.test")), 334, "UGFzc3dvcmQ6")
        .sasl(Some(auth("LOGIN", "joe@x.test")), 535, "5.7.8 failed")
        .cmd("NOOP", 250, "2.0.0 Ok")
        .quit();
    let text = render(&rec, plain());
    assert!(
        text.contains(
            " -> AUTH LOGIN\n<-  334 VXNlcm5hbWU6  (Username:)\n -> <redacted> (user=joe@x.test)\n<-  334 UGFzc3dvcmQ6  (Password:)\n -> <redacted> (user=joe@x.test)\n<-  535 5.7.8 failed\n"
        ),
        "{text}"
    );
}

#[test]
fn notes_proxy_commands_and_answers_are_marked() {
    let mut script = Script::new()
        .note(NoteKind::StarttlsOffered, "STARTTLS added to the EHLO reply relayed to the client")
        .ehlo(&[]);
    script = script.cmd("STARTTLS", 220, "2.0.0 Ready");
    let mut rec = script.quit();
    for r in &mut rec.records {
        if let Record::Exchange(e) = r {
            match e.seq {
                1 => e.origin = Some("proxy".into()),
                2 => e.answered_by = Some("proxy".into()),
                _ => {}
            }
        }
    }
    let text = render(&rec, plain());
    assert!(text.contains("** STARTTLS added to the EHLO reply relayed to the client\n"), "{text}");
    assert!(text.contains("** proxy  -> EHLO client.test\n** proxy <-  250 mx.test\n"), "{text}");
    assert!(text.contains("<-  220 2.0.0 Ready\n** answered by smtptap itself, not by the upstream\n"), "{text}");
}

#[test]
fn recorded_control_characters_cannot_reach_the_terminal() {
    let rec = Script::new().cmd("NOOP \x1b[2J\x07\u{202e}x", 250, "ok \x1b]0;title\x07").quit();
    let text = render(&rec, plain());
    assert!(!text.contains('\x1b') && !text.contains('\x07') && !text.contains('\u{202e}'));
    assert!(text.contains(" -> NOOP \\x1b[2J\\x07\\u{202e}x\n"), "{text}");
    assert_eq!(printable("a\tb\r\n"), "a\tb\\r\\n");
}

#[test]
fn colour_only_when_asked() {
    let rec = Script::new().cmd("RCPT TO:<x@y>", 550, "5.1.1 unknown").quit();
    let text = render(&rec, Options { color: true, ..plain() });
    assert!(text.contains("\x1b[36m -> RCPT TO:<x@y>\x1b[0m\n"), "{text:?}");
    assert!(text.contains("\x1b[1;31m<-  550 5.1.1 unknown\x1b[0m\n"), "{text:?}");
    assert!(text.contains("\x1b[32m<-  220 mx.test ESMTP\x1b[0m\n"), "{text:?}");
    assert!(use_color(ColorChoice::Auto, true, None));
    assert!(use_color(ColorChoice::Auto, true, Some("")));
    assert!(!use_color(ColorChoice::Auto, true, Some("1")));
    assert!(!use_color(ColorChoice::Auto, false, None));
    assert!(use_color(ColorChoice::Always, false, Some("1")));
    assert!(!use_color(ColorChoice::Never, true, None));
}

#[test]
fn timestamps_and_latency_columns() {
    let rec = Script::new().cmd("NOOP", 250, "ok").quit();
    let text = render(&rec, Options { timing: Timing::Timestamps, ..plain() });
    assert!(text.contains("\n19:36:24.020  -> NOOP\n19:36:24.021 <-  250 ok\n"), "{text}");
    let text = render(&rec, Options { timing: Timing::Latency, ..plain() });
    assert!(text.contains("\n           -> NOOP\n   1.50ms <-  250 ok\n"), "{text}");
    assert_eq!(fmt_ms(0.25), "0.25ms");
    assert_eq!(fmt_ms(42.04), "42.0ms");
    assert_eq!(fmt_ms(1500.0), "1.50s");
}

#[test]
fn body_shows_the_first_lines() {
    let mut content = good_message("a@x.test", "b@y.test");
    for i in 0..30 {
        content.extend_from_slice(format!("line {i}\r\n").as_bytes());
    }
    let rec = Script::new().send("a@x.test", "b@y.test", &content).quit();
    let text = render(&rec, Options { body: true, ..plain() });
    assert!(text.contains("\n -> Date: Sat, 28 Nov 2026 19:36:24 +0000\n -> From: Ann <a@x.test>\n"), "{text}");
    assert!(text.contains("\n -> line 12\n**   … 17 more lines\n -> .\n"), "{text}");
    assert!(!render(&rec, plain()).contains("line 12"));
    let bare = Script::new().send("a@x.test", "b@y.test", b"Subject: s\r\n\r\na\nb\r\n").without_bodies().quit();
    let text = render(&bare, Options { body: true, ..plain() });
    assert!(text.contains("**   (the body was not recorded: --no-bodies)\n"), "{text}");
    let lf = Script::new().send("a@x.test", "b@y.test", b"Subject: s\r\n\r\na\nb\r\n").quit();
    assert!(render(&lf, Options { body: true, ..plain() }).contains("\n -> a\\nb\n"), "a bare LF is made visible");
}

#[test]
fn an_unfinished_recording_says_so() {
    let mut rec = Script::new().cmd("EHLO x", 250, "mx").unended();
    if let Some(Record::Exchange(e)) = rec.records.last_mut() {
        e.reply = None;
        e.ms = None;
    }
    rec.truncated = true;
    let text = render(&rec, plain());
    assert!(text.ends_with(
        " -> EHLO x\n** no reply: the session ended first\n** the last line of the recording is cut short\n** the recording stops here, without an end (the proxy was stopped, or the session is still going)\n"
    ), "{text}");
}

#[test]
fn list_rows_summarise_sessions() {
    let failed = Script::new()
        .ehlo(PLAIN_EXTENSIONS)
        .starttls()
        .ehlo(TLS_EXTENSIONS)
        .auth("AUTH PLAIN <redacted>", Some(auth("PLAIN", "ann@x.test")), 535, "5.7.8 bad")
        .cmd("MAIL FROM:<ann@x.test>", 250, "2.1.0 Ok")
        .cmd("RCPT TO:<b@y.test>", 554, "5.7.1 Relay access denied")
        .quit();
    let row = summarize(Path::new("dir/s1.jsonl"), &failed.session, failed.records.iter().cloned().map(Ok));
    assert_eq!(row.started, "2026-11-28 19:36:24");
    assert_eq!(row.tls, "TLSv1.3");
    assert_eq!(row.auth, "ann@x.test (failed)");
    assert_eq!(row.messages, "0");
    assert_eq!(row.outcome, "quit; 535 5.7.8 to AUTH");
    assert_eq!(row.file, "s1.jsonl");
    let ok = clean();
    let row2 = summarize(Path::new("s2.jsonl"), &ok.session, ok.records.iter().cloned().map(Ok));
    assert_eq!((row2.auth.as_str(), row2.messages.as_str(), row2.outcome.as_str()), ("ann@x.test", "1", "quit"));
    let unended = Script::new().ehlo(&[]).unended();
    let row3 = summarize(Path::new("s3.jsonl"), &unended.session, unended.records.iter().cloned().map(Ok));
    assert_eq!((row3.tls.as_str(), row3.auth.as_str(), row3.outcome.as_str()), ("none", "-", "no end yet"));
    let table = list_table(&[row, row2, row3], false);
    let l = lines(&table);
    assert_eq!(l.len(), 4);
    assert!(l[0].starts_with("STARTED (UTC)        CLIENT           UPSTREAM     TLS      AUTH"), "{table}");
    assert!(l[1].ends_with("quit; 535 5.7.8 to AUTH  s1.jsonl"), "{table}");
    let _ = EndReason::Quit;
}

#[test]
fn since_accepts_dates_times_and_ages() {
    let now = parse_time("2026-11-28T12:00:00Z").unwrap();
    let at = |s: &str| parse_since(s, now).unwrap().to_rfc3339();
    assert_eq!(at("2026-11-28T10:00:00+02:00"), "2026-11-28T08:00:00+00:00");
    assert_eq!(at("2026-11-27"), "2026-11-27T00:00:00+00:00");
    assert_eq!(at("2026-11-27T10:30"), "2026-11-27T10:30:00+00:00");
    assert_eq!(at("2026-11-27 10:30:05"), "2026-11-27T10:30:05+00:00");
    assert_eq!(at("90s"), "2026-11-28T11:58:30+00:00");
    assert_eq!(at("10m"), "2026-11-28T11:50:00+00:00");
    assert_eq!(at("2h"), "2026-11-28T10:00:00+00:00");
    assert_eq!(at("1d"), "2026-11-27T12:00:00+00:00");
    for bad in ["yesterday", "10", "m", "10x", ""] {
        assert!(parse_since(bad, now).unwrap_err().contains("cannot read"), "{bad}");
    }
}

#[test]
fn sizes_read_well() {
    assert_eq!(fmt_size(248), "248 octets");
    assert_eq!(fmt_size(26_214_400), "26214400 octets (25.0 MiB)");
}
