//! Sans-IO: turns a recording into what `smtptap serve` expects from the
//! client, step by step, and the reply it answers each step with.
//!
//! What the client saw is served: replies smtptap answered itself
//! (`answered_by: proxy`, a STARTTLS) included. What the client never saw is
//! left out: commands smtptap sent upstream on its own (`origin: proxy`) and
//! replies nobody asked for. The script ends where the recording stops
//! having replies: a command cut short, or one whose reply never came.

use crate::record::format::{Exchange, ReplyRecord};
use crate::record::reader::Recording;
use crate::smtp::command::{Command, CommandKind};
use crate::tls::TlsMode;

/// The server side of one recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// The recorded greeting as wire bytes; `None` when the recording has none.
    pub greeting: Option<Vec<u8>>,
    pub steps: Vec<Step>,
    /// STARTTLS exchanges left out because TLS is not served by STARTTLS.
    pub skipped_starttls: usize,
}

/// One thing the client is expected to send, and the recorded answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub seq: u64,
    pub expect: Expect,
    /// The recorded reply, as wire bytes.
    pub reply: Vec<u8>,
    pub code: u16,
}

/// What the client is expected to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// A command line: `verb` upper-cased, `line` the exact recorded bytes.
    Command { verb: String, line: Vec<u8> },
    /// A SASL response after a `334` (recorded redacted: never compared).
    SaslResponse,
    /// Message content after `354`.
    Message,
}

impl Expect {
    /// How the step is named in the report; AUTH secrets are never shown.
    pub fn label(&self) -> String {
        match self {
            Expect::Command { line, .. } => shown(line),
            Expect::SaslResponse => "(AUTH response)".into(),
            Expect::Message => "(message content)".into(),
        }
    }

    pub fn verb(&self) -> Option<&str> {
        match self {
            Expect::Command { verb, .. } => Some(verb),
            _ => None,
        }
    }
}

/// A command line as the report shows it: AUTH's initial response hidden.
pub fn shown(line: &[u8]) -> String {
    match Command::parse(line).kind {
        CommandKind::Auth { mechanism, initial_response: true } => format!("AUTH {mechanism} <redacted>"),
        _ => String::from_utf8_lossy(line).into_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("exchange #{seq}: {what}")]
pub struct ScriptError {
    pub seq: u64,
    pub what: String,
}

/// The TLS the recorded client used: implicit, STARTTLS, or none.
pub fn recorded_tls(recording: &Recording) -> TlsMode {
    let served = |e: &&Exchange| e.origin.as_deref() != Some("proxy");
    let implicit = match recording.session.client_tls {
        Some(mode) => mode == TlsMode::Implicit,
        None => recording.exchanges().next().is_some_and(|e| e.tls),
    };
    let starttls = recording.exchanges().filter(served).any(is_starttls_accepted);
    if implicit {
        TlsMode::Implicit
    } else if starttls {
        TlsMode::Starttls
    } else {
        TlsMode::Off
    }
}

fn is_starttls_accepted(e: &Exchange) -> bool {
    e.command.as_ref().is_some_and(|c| c.verb.as_deref() == Some("STARTTLS"))
        && e.reply.as_ref().is_some_and(|r| r.code == 220)
}

/// Whether `verb` opens a session: EHLO, HELO or LHLO.
pub fn is_hello(verb: Option<&str>) -> bool {
    matches!(verb, Some("EHLO" | "HELO" | "LHLO"))
}

/// Builds the script. `starttls`: TLS is served by STARTTLS, so recorded
/// STARTTLS exchanges are kept. Without it they are left out, and so is the
/// plaintext EHLO before each one when an EHLO inside TLS follows: the client
/// says EHLO once and gets the capabilities the recorded client saw in TLS.
pub fn build(recording: &Recording, starttls: bool) -> Result<Script, ScriptError> {
    let mut script = Script { greeting: None, steps: Vec::new(), skipped_starttls: 0 };
    // A plaintext EHLO step to replace by the next one (its STARTTLS was left out).
    let mut replace_hello = false;
    for (i, e) in recording.exchanges().enumerate() {
        let Some(command) = &e.command else {
            if e.message.is_some() {
                let Some(reply) = &e.reply else { break };
                script.steps.push(step(e.seq, Expect::Message, reply)?);
            } else if i == 0 {
                script.greeting = e.reply.as_ref().map(|r| wire(e.seq, r)).transpose()?;
            }
            // Otherwise a reply nobody asked for: not part of the conversation.
            continue;
        };
        if e.origin.as_deref() == Some("proxy") {
            continue;
        }
        let Some(reply) = e.reply.as_ref().filter(|_| !command.incomplete) else { break };
        if !starttls && is_starttls_accepted(e) {
            script.skipped_starttls += 1;
            replace_hello = is_hello(script.steps.last().and_then(|s| s.expect.verb()));
            continue;
        }
        let expect = match &command.verb {
            None => Expect::SaslResponse,
            Some(verb) => {
                let line = command
                    .exact_line()
                    .map_err(|err| ScriptError { seq: e.seq, what: format!("line_base64 is not base64: {err}") })?;
                Expect::Command { verb: verb.clone(), line }
            }
        };
        if replace_hello && is_hello(expect.verb()) {
            script.steps.pop();
        }
        replace_hello = false;
        script.steps.push(step(e.seq, expect, reply)?);
    }
    Ok(script)
}

fn step(seq: u64, expect: Expect, reply: &ReplyRecord) -> Result<Step, ScriptError> {
    Ok(Step { seq, expect, reply: wire(seq, reply)?, code: reply.code })
}

/// A recorded reply as the server sent it: `NNN-text` lines, `NNN text` last.
/// A reply recorded with code 0 (a line that was no reply) is sent as it was.
pub fn wire(seq: u64, reply: &ReplyRecord) -> Result<Vec<u8>, ScriptError> {
    let lines =
        reply.exact_lines().map_err(|err| ScriptError { seq, what: format!("lines_base64 is not base64: {err}") })?;
    let mut out = Vec::new();
    if lines.is_empty() {
        out.extend_from_slice(format!("{:03}\r\n", reply.code).as_bytes());
    }
    for (i, line) in lines.iter().enumerate() {
        if reply.code != 0 {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("{:03}{sep}", reply.code).as_bytes());
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use std::path::Path;

    const SESSION: &str = r#"{"type":"session","format":1,"id":"t","started":"2026-11-28T19:36:24.123456Z","listen":"l","client":"c","upstream":"u","tool":"smtptap"}"#;

    /// An exchange line: `command` is a JSON value (`null` or an object).
    fn ex(seq: u64, tls: bool, command: &str, code: u16, lines: &[&str], extra: &str) -> String {
        let lines = serde_json::to_string(lines).unwrap();
        format!(
            r#"{{"type":"exchange","seq":{seq},"t":"x","tls":{tls},"command":{command},"reply":{{"code":{code},"enhanced":null,"lines":{lines}}},"ms":1.0{extra}}}"#
        )
    }

    fn cmd(line: &str) -> String {
        let verb = line.split(' ').next().unwrap().to_ascii_uppercase();
        format!(r#"{{"verb":"{verb}","line":"{line}"}}"#)
    }

    fn recording(session: &str, lines: &[String]) -> Recording {
        let text = format!("{session}\n{}\n", lines.join("\n"));
        Recording::from_bytes(text.as_bytes(), Path::new("t.jsonl")).unwrap()
    }

    fn labels(script: &Script) -> Vec<String> {
        script.steps.iter().map(|s| s.expect.label()).collect()
    }

    fn starttls_session() -> Recording {
        recording(
            SESSION,
            &[
                ex(0, false, "null", 220, &["mx ESMTP"], ""),
                ex(1, false, &cmd("EHLO c"), 250, &["mx", "STARTTLS"], ""),
                ex(2, false, &cmd("STARTTLS"), 220, &["2.0.0 go"], r#","answered_by":"proxy""#),
                ex(3, true, &cmd("EHLO c"), 250, &["mx", "AUTH PLAIN"], ""),
                ex(4, true, r#"{"verb":"AUTH","line":"AUTH LOGIN"}"#, 334, &["VXNlcm5hbWU6"], ""),
                ex(5, true, r#"{"verb":null,"line":"<redacted>"}"#, 235, &["2.7.0 ok"], ""),
                ex(6, true, &cmd("DATA"), 354, &["go"], ""),
                ex(7, true, "null", 250, &["2.0.0 queued"], r#","message":{"size":0,"sha256":"x","headers":{}}"#),
                ex(8, true, &cmd("QUIT"), 221, &["bye"], ""),
            ],
        )
    }

    #[test]
    fn steps_follow_what_the_client_saw() {
        let r = starttls_session();
        assert_eq!(recorded_tls(&r), TlsMode::Starttls);
        let script = build(&r, true).unwrap();
        assert_eq!(script.greeting.as_deref(), Some(&b"220 mx ESMTP\r\n"[..]));
        assert_eq!(
            labels(&script),
            ["EHLO c", "STARTTLS", "EHLO c", "AUTH LOGIN", "(AUTH response)", "DATA", "(message content)", "QUIT"]
        );
        assert_eq!(script.steps[0].reply, b"250-mx\r\n250 STARTTLS\r\n");
        assert_eq!(script.steps[4].code, 235);
    }

    #[test]
    fn without_starttls_the_plaintext_ehlo_gives_way_to_the_one_in_tls() {
        let script = build(&starttls_session(), false).unwrap();
        assert_eq!(script.skipped_starttls, 1);
        assert_eq!(labels(&script)[..2], ["EHLO c", "AUTH LOGIN"]);
        assert_eq!(script.steps[0].seq, 3);
        assert_eq!(script.steps[0].reply, b"250-mx\r\n250 AUTH PLAIN\r\n");
    }

    #[test]
    fn proxy_commands_and_unasked_replies_are_left_out() {
        let r = recording(
            SESSION,
            &[
                ex(0, false, "null", 220, &["mx"], ""),
                ex(1, false, &cmd("EHLO smtptap"), 250, &["mx"], r#","origin":"proxy""#),
                ex(2, false, &cmd("STARTTLS"), 220, &["go"], r#","origin":"proxy""#),
                ex(3, false, &cmd("HELO c"), 250, &["mx"], ""),
                ex(4, false, "null", 421, &["4.4.2 timeout"], r#","origin":"proxy""#),
            ],
        );
        assert_eq!(recorded_tls(&r), TlsMode::Off);
        let script = build(&r, true).unwrap();
        assert_eq!(labels(&script), ["HELO c"]);
    }

    #[test]
    fn the_script_ends_where_the_replies_do() {
        let cut = r#"{"type":"exchange","seq":2,"t":"x","tls":false,"command":{"verb":"MAIL","line":"MAIL FROM:<a>"},"reply":null,"ms":null}"#;
        let r = recording(
            SESSION,
            &[ex(0, false, "null", 220, &["mx"], ""), ex(1, false, &cmd("NOOP"), 250, &["ok"], ""), cut.into()],
        );
        assert_eq!(labels(&build(&r, false).unwrap()), ["NOOP"]);
        let no_greeting = r#"{"type":"exchange","seq":0,"t":"x","tls":false,"command":null,"reply":null,"ms":null}"#;
        assert_eq!(build(&recording(SESSION, &[no_greeting.into()]), false).unwrap().greeting, None);
    }

    #[test]
    fn implicit_tls_is_read_from_the_session() {
        let session = SESSION.replace(r#""tool":"smtptap""#, r#""tool":"smtptap","client_tls":"implicit""#);
        let r = recording(&session, &[ex(0, true, "null", 220, &["mx"], "")]);
        assert_eq!(recorded_tls(&r), TlsMode::Implicit);
    }

    #[test]
    fn replies_are_rebuilt_byte_for_byte() {
        let reply = |code, lines: &[&str]| ReplyRecord {
            code,
            enhanced: None,
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
            lines_base64: None,
            omitted_lines: 0,
            truncated: false,
        };
        assert_eq!(wire(0, &reply(250, &["a", "b c"])).unwrap(), b"250-a\r\n250 b c\r\n");
        assert_eq!(wire(0, &reply(250, &[""])).unwrap(), b"250 \r\n");
        assert_eq!(wire(0, &reply(354, &[])).unwrap(), b"354\r\n");
        assert_eq!(wire(0, &reply(0, &["garbage"])).unwrap(), b"garbage\r\n");
        let mut exact = reply(250, &["\u{fffd}"]);
        exact.lines_base64 = Some(vec![B64.encode(b"\xff")]);
        assert_eq!(wire(0, &exact).unwrap(), b"250 \xff\r\n");
        exact.lines_base64 = Some(vec!["!".into()]);
        assert!(wire(7, &exact).unwrap_err().to_string().starts_with("exchange #7: lines_base64"));
    }

    #[test]
    fn auth_secrets_are_never_shown() {
        assert_eq!(shown(b"auth plain AHVAeABw"), "AUTH PLAIN <redacted>");
        assert_eq!(shown(b"AUTH LOGIN"), "AUTH LOGIN");
        assert_eq!(shown(b"MAIL FROM:<a>"), "MAIL FROM:<a>");
    }
}
