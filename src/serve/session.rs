//! Sans-IO: the server side of one connection, played from a [`Script`].
//!
//! Each client command is compared with the step the recording expects:
//! - same verb (case-insensitively): answered as recorded; when the
//!   arguments differ (AUTH: the mechanism, or whether an initial response
//!   came; never the secret), the difference is reported;
//! - another verb: reported, answered `503 5.5.1` (`500 5.5.2` for a verb
//!   SMTP does not know), and the script does not advance, so a client that
//!   then sends what the recording expects is back on track;
//! - `QUIT`: always answered `221` (the recorded reply where QUIT is expected)
//!   and the connection closes; a divergence unless it is expected or the
//!   recording has ended;
//! - past the end of the recording: `421 4.3.0 recording ends here`, close.
//!
//! Message content (after a `354`, up to CRLF.CRLF; or a BDAT chunk of the
//! size the client names) is read and answered as recorded, not compared:
//! its headers carry dates and ids that change with every run. SASL
//! responses after a `334` are not compared either: the recording holds
//! them redacted.
//!
//! STARTTLS is advertised in EHLO replies exactly when it is served (`--tls
//! starttls`, before TLS). A client that takes up the offer where the
//! recording has no STARTTLS gets `220` and TLS, and the script goes back to
//! its last EHLO, which the client repeats inside TLS.

use super::script::{Expect, Script, is_hello, shown};
use crate::smtp::command::{Command, CommandKind, is_known_verb};
use crate::smtp::data::DotDecoder;
use crate::smtp::ehlo::with_starttls;
use crate::smtp::line::LineAssembler;
use std::fmt;
use std::sync::Arc;

/// What the connection does after some input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
    /// A TLS handshake follows; input after the STARTTLS line is discarded.
    StartTls,
}

/// Why a connection ended before the session closed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Closed,
    Timeout,
    Failed(String),
}

/// Where the client departed from the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// The recorded exchange expected; `None` past the end of the recording.
    pub seq: Option<u64>,
    pub expected: String,
    pub got: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(seq) = self.seq {
            write!(f, "#{seq} ")?;
        }
        write!(f, "expected {}  got {}", self.expected, self.got)
    }
}

#[derive(Debug)]
enum Mode {
    Commands,
    /// After a `334`: the next line is a SASL response.
    Sasl,
    Data(DotDecoder),
    /// Reading a BDAT chunk; its reply and flow wait for the last octet.
    Chunk {
        remaining: u64,
        reply: Vec<u8>,
    },
}

/// The server side of one connection, sans IO.
#[derive(Debug)]
pub struct ServeSession {
    script: Arc<Script>,
    /// TLS is served by STARTTLS (and advertised until it is active).
    starttls: bool,
    tls_active: bool,
    /// The next step expected.
    pos: usize,
    /// The step of the last EHLO/HELO answered.
    last_hello: Option<usize>,
    mode: Mode,
    lines: LineAssembler,
    /// The session closed the connection itself (QUIT, end of recording).
    closed: bool,
    /// Lines received in command mode (SASL responses included).
    pub commands: usize,
    /// Divergences so far.
    pub diverged: usize,
    /// Divergences not yet taken by [`Self::take_report`].
    report: Vec<Divergence>,
}

impl ServeSession {
    pub fn new(script: Arc<Script>, starttls: bool) -> ServeSession {
        ServeSession {
            script,
            starttls,
            tls_active: false,
            pos: 0,
            last_hello: None,
            mode: Mode::Commands,
            lines: LineAssembler::default(),
            closed: false,
            commands: 0,
            diverged: 0,
            report: Vec::new(),
        }
    }

    /// The recorded greeting; without one, the recording ends at once.
    pub fn greeting(&mut self, out: &mut Vec<u8>) -> Flow {
        match &self.script.greeting {
            Some(greeting) => {
                out.extend_from_slice(greeting);
                Flow::Continue
            }
            None => {
                self.closed = true;
                out.extend_from_slice(RECORDING_ENDS);
                Flow::Close
            }
        }
    }

    /// TLS is now active: parsing starts afresh.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.lines = LineAssembler::default();
        self.mode = Mode::Commands;
    }

    /// Divergences found since the last call.
    pub fn take_report(&mut self) -> Vec<Divergence> {
        std::mem::take(&mut self.report)
    }

    /// The connection ended without the session closing it: if the
    /// recording goes on, the client left it there.
    pub fn finish(&mut self, end: &End) {
        if self.closed {
            return;
        }
        self.closed = true;
        if let Some(step) = self.script.steps.get(self.pos) {
            let got = match end {
                End::Closed => "(connection closed)".to_owned(),
                End::Timeout => "(idle timeout)".to_owned(),
                End::Failed(why) => format!("({why})"),
            };
            let expected = step.expect.label();
            self.diverge(Some(step.seq), expected, got);
        }
    }

    /// Consumes client input, appending the replies it calls for to `out`.
    /// After `Close` or `StartTls`, the rest of the input is not used.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Flow {
        while !input.is_empty() {
            let (used, flow) = match &mut self.mode {
                Mode::Commands | Mode::Sasl => {
                    let (used, complete) = self.lines.feed(input);
                    (used, if complete { self.line(out) } else { Flow::Continue })
                }
                Mode::Data(decoder) => {
                    let (used, ended) = decoder.decode(input, &mut |_| {});
                    (used, if ended { self.message(out) } else { Flow::Continue })
                }
                Mode::Chunk { remaining, reply } => {
                    let take = input.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        out.append(reply);
                        self.mode = Mode::Commands;
                    }
                    (take, Flow::Continue)
                }
            };
            input = &input[used..];
            if flow != Flow::Continue {
                return flow;
            }
        }
        Flow::Continue
    }

    fn line(&mut self, out: &mut Vec<u8>) -> Flow {
        self.commands += 1;
        if matches!(self.mode, Mode::Sasl) {
            self.mode = Mode::Commands;
            return self.content(Expect::SaslResponse, out);
        }
        let text = self.lines.line().text.to_vec();
        let command = Command::parse(&text);
        let (reply, flow) = self.command(&text, &command);
        match command.kind {
            CommandKind::Bdat { size, .. } if size > 0 && flow == Flow::Continue => {
                self.mode = Mode::Chunk { remaining: size, reply };
            }
            _ => out.extend_from_slice(&reply),
        }
        flow
    }

    /// The reply to a command line, and what follows it.
    fn command(&mut self, text: &[u8], command: &Command) -> (Vec<u8>, Flow) {
        let script = self.script.clone();
        let step = script.steps.get(self.pos);
        let expected = step.map(|s| &s.expect);
        if command.kind == CommandKind::Quit {
            self.closed = true;
            return match step {
                Some(step) if step.expect.verb() == Some("QUIT") => {
                    self.pos += 1;
                    (step.reply.clone(), Flow::Close)
                }
                Some(_) => {
                    self.diverge_from(expected, shown(text));
                    (BYE.to_vec(), Flow::Close)
                }
                // Where the recording ends, leaving is no departure from it.
                None => (BYE.to_vec(), Flow::Close),
            };
        }
        let Some(step) = step else { return (self.recording_ends(shown(text)), Flow::Close) };
        let Expect::Command { verb, line } = &step.expect else {
            self.diverge_from(expected, shown(text));
            return (refusal(&command.verb, &step.expect), Flow::Continue);
        };
        if command.kind == CommandKind::StartTls && verb != "STARTTLS" && self.starttls && !self.tls_active {
            // Taken up where the recording has none: TLS, then its last EHLO again.
            self.pos = self.last_hello.unwrap_or(self.pos);
            return (b"220 2.0.0 Ready to start TLS\r\n".to_vec(), Flow::StartTls);
        }
        if *verb != command.verb {
            self.diverge_from(expected, shown(text));
            return (refusal(&command.verb, &step.expect), Flow::Continue);
        }
        if !same_arguments(line, text) {
            self.diverge(Some(step.seq), shown(line), shown(text));
        }
        self.pos += 1;
        let mut flow = Flow::Continue;
        match (&command.kind, step.code) {
            (CommandKind::Data, 354) => self.mode = Mode::Data(DotDecoder::default()),
            (CommandKind::Auth { .. }, 334) => self.mode = Mode::Sasl,
            (CommandKind::StartTls, 220) if !self.tls_active => flow = Flow::StartTls,
            _ => {}
        }
        if is_hello(Some(verb)) {
            self.last_hello = Some(self.pos - 1);
        }
        if matches!(verb.as_str(), "EHLO" | "LHLO") {
            let offer = self.starttls && !self.tls_active;
            if let Some(edited) = with_starttls(&step.reply, offer) {
                return (edited, flow);
            }
        }
        (step.reply.clone(), flow)
    }

    /// Message content or a SASL response arrived: answered as recorded
    /// where the recording expects it.
    fn content(&mut self, got: Expect, out: &mut Vec<u8>) -> Flow {
        let script = self.script.clone();
        let Some(step) = script.steps.get(self.pos) else {
            out.extend_from_slice(&self.recording_ends(got.label()));
            return Flow::Close;
        };
        if step.expect != got {
            self.diverge(Some(step.seq), step.expect.label(), got.label());
            out.extend_from_slice(&refusal("", &step.expect));
            return Flow::Continue;
        }
        self.pos += 1;
        if got == Expect::SaslResponse && step.code == 334 {
            self.mode = Mode::Sasl;
        }
        out.extend_from_slice(&step.reply);
        Flow::Continue
    }

    fn message(&mut self, out: &mut Vec<u8>) -> Flow {
        self.mode = Mode::Commands;
        self.content(Expect::Message, out)
    }

    fn recording_ends(&mut self, got: String) -> Vec<u8> {
        self.closed = true;
        self.diverge(None, "(end of recording)".into(), got);
        RECORDING_ENDS.to_vec()
    }

    fn diverge_from(&mut self, expected: Option<&Expect>, got: String) {
        let seq = self.script.steps.get(self.pos).map(|s| s.seq);
        let expected = expected.map_or_else(|| "(end of recording)".into(), Expect::label);
        self.diverge(seq, expected, got);
    }

    fn diverge(&mut self, seq: Option<u64>, expected: String, got: String) {
        self.diverged += 1;
        self.report.push(Divergence { seq, expected, got });
    }
}

const RECORDING_ENDS: &[u8] = b"421 4.3.0 recording ends here\r\n";
const BYE: &[u8] = b"221 2.0.0 Bye\r\n";

/// The reply to a verb the recording does not expect here.
fn refusal(verb: &str, expected: &Expect) -> Vec<u8> {
    let wanted = match expected {
        Expect::Command { verb, .. } => verb.as_str(),
        Expect::SaslResponse => "an AUTH response",
        Expect::Message => "message content",
    };
    let status = if verb.is_empty() || is_known_verb(verb) {
        "503 5.5.1 Bad sequence of commands"
    } else {
        "500 5.5.2 Command not recognized"
    };
    format!("{status} (recording expects {wanted} here)\r\n").into_bytes()
}

/// Whether two lines with the same verb have the same arguments; for AUTH,
/// the same mechanism and both with or both without an initial response.
fn same_arguments(recorded: &[u8], got: &[u8]) -> bool {
    match (Command::parse(recorded).kind, Command::parse(got).kind) {
        (
            CommandKind::Auth { mechanism: a, initial_response: x },
            CommandKind::Auth { mechanism: b, initial_response: y },
        ) => a == b && x == y,
        _ => after_verb(recorded) == after_verb(got),
    }
}

/// What follows the first word of a line.
fn after_verb(line: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = line.iter().position(|b| !blank(b)).unwrap_or(line.len());
    let end = line[start..].iter().position(blank).map_or(line.len(), |i| start + i);
    &line[end..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::script::Step;

    fn step(seq: u64, expect: Expect, reply: &str) -> Step {
        let code = reply[..3].parse().unwrap();
        Step { seq, expect, reply: reply.as_bytes().to_vec(), code }
    }

    fn cmd(line: &str) -> Expect {
        let verb = line.split(' ').next().unwrap().to_ascii_uppercase();
        Expect::Command { verb, line: line.as_bytes().to_vec() }
    }

    /// The greeting `220 mx`, then `steps`.
    fn script(steps: Vec<Step>) -> Arc<Script> {
        Arc::new(Script { greeting: Some(b"220 mx\r\n".to_vec()), steps, skipped_starttls: 0 })
    }

    /// EHLO, MAIL, RCPT, DATA + message, QUIT.
    fn mail_script() -> Arc<Script> {
        Arc::new(Script {
            greeting: Some(b"220 mx ESMTP\r\n".to_vec()),
            steps: vec![
                step(1, cmd("EHLO c.test"), "250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
                step(2, cmd("MAIL FROM:<a@x>"), "250 2.1.0 Ok\r\n"),
                step(3, cmd("RCPT TO:<b@y>"), "250 2.1.5 Ok\r\n"),
                step(4, cmd("DATA"), "354 go\r\n"),
                step(5, Expect::Message, "250 2.0.0 queued\r\n"),
                step(6, cmd("QUIT"), "221 2.0.0 Bye\r\n"),
            ],
            skipped_starttls: 0,
        })
    }

    fn one_noop() -> Arc<Script> {
        script(vec![step(1, cmd("NOOP"), "250 ok\r\n")])
    }

    /// Feeds `input` in one piece; the replies, the flow and the report.
    fn talk(session: &mut ServeSession, input: &str) -> (String, Flow, Vec<String>) {
        let mut out = Vec::new();
        let flow = session.feed(input.as_bytes(), &mut out);
        let report = session.take_report().iter().map(ToString::to_string).collect();
        (String::from_utf8(out).unwrap(), flow, report)
    }

    fn greeted(script: Arc<Script>, starttls: bool) -> ServeSession {
        let mut s = ServeSession::new(script, starttls);
        let mut out = Vec::new();
        assert_eq!(s.greeting(&mut out), Flow::Continue);
        s
    }

    #[test]
    fn a_client_that_follows_gets_the_recorded_replies() {
        let mut s = greeted(mail_script(), false);
        let (out, flow, report) = talk(
            &mut s,
            "ehlo c.test\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\nNOOP\r\n",
        );
        assert_eq!(
            out,
            "250-mx\r\n250 8BITMIME\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n250 2.0.0 queued\r\n221 2.0.0 Bye\r\n",
            "STARTTLS is not advertised when it is not served"
        );
        assert_eq!(flow, Flow::Close);
        assert!(report.is_empty(), "{report:?}");
        assert_eq!((s.commands, s.diverged), (5, 0));
        s.finish(&End::Closed);
        assert!(s.take_report().is_empty());
    }

    #[test]
    fn other_arguments_are_reported_and_answered_as_recorded() {
        let mut s = greeted(mail_script(), false);
        talk(&mut s, "EHLO c.test\r\nMAIL FROM:<a@x>\r\n");
        let (out, flow, report) = talk(&mut s, "RCPT TO:<other@y>\r\n");
        assert_eq!((out.as_str(), flow), ("250 2.1.5 Ok\r\n", Flow::Continue));
        assert_eq!(report, ["#3 expected RCPT TO:<b@y>  got RCPT TO:<other@y>"]);
    }

    #[test]
    fn another_verb_is_refused_without_advancing() {
        let mut s = greeted(mail_script(), false);
        talk(&mut s, "EHLO c.test\r\n");
        let (out, _, report) = talk(&mut s, "RCPT TO:<b@y>\r\nXYZZY\r\nMAIL FROM:<a@x>\r\n");
        assert_eq!(
            out,
            "503 5.5.1 Bad sequence of commands (recording expects MAIL here)\r\n\
             500 5.5.2 Command not recognized (recording expects MAIL here)\r\n\
             250 2.1.0 Ok\r\n"
        );
        assert_eq!(
            report,
            ["#2 expected MAIL FROM:<a@x>  got RCPT TO:<b@y>", "#2 expected MAIL FROM:<a@x>  got XYZZY"]
        );
        assert_eq!(s.diverged, 2);
    }

    #[test]
    fn quit_early_is_answered_and_reported() {
        let mut s = greeted(mail_script(), false);
        let (out, flow, report) = talk(&mut s, "QUIT\r\n");
        assert_eq!((out.as_str(), flow), ("221 2.0.0 Bye\r\n", Flow::Close));
        assert_eq!(report, ["#1 expected EHLO c.test  got QUIT"]);
    }

    #[test]
    fn past_the_end_the_recording_says_so_and_closes() {
        let mut s = greeted(one_noop(), false);
        let (out, flow, report) = talk(&mut s, "NOOP\r\nRSET\r\n");
        assert_eq!((out.as_str(), flow), ("250 ok\r\n421 4.3.0 recording ends here\r\n", Flow::Close));
        assert_eq!(report, ["expected (end of recording)  got RSET"]);
        let mut s = greeted(one_noop(), false);
        let (out, flow, report) = talk(&mut s, "NOOP\r\nQUIT\r\n");
        assert_eq!((out.as_str(), flow), ("250 ok\r\n221 2.0.0 Bye\r\n", Flow::Close));
        assert!(report.is_empty(), "{report:?}");
        let mut s =
            ServeSession::new(Arc::new(Script { greeting: None, steps: Vec::new(), skipped_starttls: 0 }), false);
        let mut out = Vec::new();
        assert_eq!(s.greeting(&mut out), Flow::Close);
        assert_eq!(out, RECORDING_ENDS);
    }

    #[test]
    fn a_client_that_stops_early_is_reported() {
        let mut s = greeted(mail_script(), false);
        talk(&mut s, "EHLO c.test\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhalf a mess");
        s.finish(&End::Timeout);
        let report: Vec<String> = s.take_report().iter().map(ToString::to_string).collect();
        assert_eq!(report, ["#5 expected (message content)  got (idle timeout)"]);
    }

    #[test]
    fn starttls_is_served_and_advertised_only_before_tls() {
        let script = script(vec![
            step(1, cmd("EHLO c"), "250-mx\r\n250 SIZE 10\r\n"),
            step(2, cmd("STARTTLS"), "220 2.0.0 go\r\n"),
            step(3, cmd("EHLO c"), "250-mx\r\n250 SIZE 10\r\n"),
        ]);
        let mut s = greeted(script, true);
        let (out, flow, _) = talk(&mut s, "EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected>\r\n");
        assert_eq!(out, "250-mx\r\n250-SIZE 10\r\n250 STARTTLS\r\n220 2.0.0 go\r\n");
        assert_eq!(flow, Flow::StartTls);
        s.tls_started();
        let (out, _, report) = talk(&mut s, "EHLO c\r\n");
        assert_eq!(out, "250-mx\r\n250 SIZE 10\r\n");
        assert!(report.is_empty(), "{report:?}");
    }

    #[test]
    fn helo_replies_have_no_extensions_to_edit() {
        let script = script(vec![step(1, cmd("HELO c"), "250 mx\r\n")]);
        let (out, _, _) = talk(&mut greeted(script, true), "HELO c\r\n");
        assert_eq!(out, "250 mx\r\n");
    }

    #[test]
    fn starttls_taken_up_where_the_recording_has_none_repeats_the_ehlo() {
        let mut s = greeted(mail_script(), true);
        let (out, flow, _) = talk(&mut s, "EHLO c.test\r\nSTARTTLS\r\n");
        assert!(out.contains("250-STARTTLS\r\n") && out.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{out}");
        assert_eq!(flow, Flow::StartTls);
        s.tls_started();
        let (out, _, report) = talk(&mut s, "EHLO c.test\r\nMAIL FROM:<a@x>\r\n");
        assert_eq!(out, "250-mx\r\n250 8BITMIME\r\n250 2.1.0 Ok\r\n");
        assert!(report.is_empty(), "{report:?}");
        // Not served: STARTTLS is a verb the recording does not expect.
        let mut s = greeted(mail_script(), false);
        let (out, _, _) = talk(&mut s, "EHLO c.test\r\nSTARTTLS\r\n");
        assert!(out.ends_with("503 5.5.1 Bad sequence of commands (recording expects MAIL here)\r\n"), "{out}");
    }

    #[test]
    fn auth_is_matched_by_mechanism_never_by_secret() {
        let script = script(vec![
            step(1, cmd("AUTH PLAIN <redacted>"), "235 2.7.0 ok\r\n"),
            step(2, cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n"),
            step(3, Expect::SaslResponse, "334 UGFzc3dvcmQ6\r\n"),
            step(4, Expect::SaslResponse, "535 5.7.8 no\r\n"),
            step(5, cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n"),
        ]);
        let mut s = greeted(script, false);
        let (out, _, report) = talk(&mut s, "auth plain AHVAeABzZWNyZXQ=\r\nAUTH LOGIN\r\ndQ==\r\nc2VjcmV0\r\n");
        assert_eq!(out, "235 2.7.0 ok\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 no\r\n");
        assert!(report.is_empty(), "{report:?}");
        let (_, _, report) = talk(&mut s, "AUTH LOGIN dQ==\r\n");
        assert_eq!(report, ["#5 expected AUTH LOGIN  got AUTH LOGIN <redacted>"]);
        assert_eq!(s.commands, 5);
    }

    #[test]
    fn bdat_chunks_are_read_whole_before_the_reply() {
        let script = script(vec![
            step(1, cmd("BDAT 5"), "250 2.0.0 5 octets\r\n"),
            step(2, cmd("BDAT 3 LAST"), "250 2.0.0 queued\r\n"),
            step(3, cmd("NOOP"), "250 ok\r\n"),
        ]);
        let mut s = greeted(script, false);
        let (out, _, _) = talk(&mut s, "BDAT 5\r\nNOO");
        assert_eq!(out, "", "the chunk is not complete yet");
        let (out, _, report) = talk(&mut s, "P\rBDAT 4 LAST\r\nabcdNOOP\r\n");
        assert_eq!(out, "250 2.0.0 5 octets\r\n250 2.0.0 queued\r\n250 ok\r\n");
        assert_eq!(report, ["#2 expected BDAT 3 LAST  got BDAT 4 LAST"]);
    }

    #[test]
    fn arguments_are_compared_exactly_after_the_verb() {
        assert!(same_arguments(b"ehlo a", b"EHLO a"));
        assert!(!same_arguments(b"EHLO a", b"EHLO  a"));
        assert!(!same_arguments(b"MAIL FROM:<a>", b"MAIL FROM:<A>"));
        assert!(same_arguments(b"AUTH PLAIN <redacted>", b"AUTH plain AAAA"));
        assert!(!same_arguments(b"AUTH PLAIN <redacted>", b"AUTH PLAIN"));
        assert!(!same_arguments(b"AUTH PLAIN", b"AUTH LOGIN"));
        assert_eq!(after_verb(b"  NOOP"), b"");
    }
}
