//! The session observer: both directions of an SMTP session in, paired
//! command/reply exchanges out. Plain code over bytes; it never does I/O and
//! never changes what is relayed.
//!
//! Client bytes are framed by the mode the conversation is in: command lines,
//! SASL response lines, DATA content or BDAT chunks. A command whose reply
//! decides the framing of what follows (DATA, AUTH, a SASL line, STARTTLS)
//! makes the observer hold later client bytes, unread, until that reply has
//! been seen; the relay does not wait for this, only the observer does.

use super::command::{Command, CommandKind};
use super::data::DotDecoder;
use super::line::{Line, LineAssembler};
use super::message::{MessageDigest, MessageSummary};
use super::reply::{Reply, ReplyParser};
use crate::record::format::{CommandRecord, Exchange, MessageRecord, ReplyRecord};
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most client bytes held while a framing-deciding reply is outstanding. A
/// client sending more than this without waiting is misbehaving; the excess
/// is relayed but only counted in the record.
const MAX_HELD: usize = 64 * 1024;

/// Where the observer's results go: the recorder, or a test's collector.
pub trait Output {
    /// A completed exchange, in `seq` order.
    fn exchange(&mut self, exchange: Exchange);
    /// A new message's content starts; `content` calls follow.
    fn message_start(&mut self);
    /// Message content as delivered (dot-stuffing removed), in order.
    fn content(&mut self, chunk: &[u8]);
    /// An observation that is not an exchange, with the bytes it concerns.
    fn note(&mut self, t: String, text: String, data: Option<&[u8]>);
}

/// Maps monotonic instants to the UTC wall-clock strings of the record.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub started_wall: DateTime<Utc>,
    pub started: Instant,
}

impl Clock {
    pub fn now() -> Clock {
        Clock { started_wall: Utc::now(), started: Instant::now() }
    }

    pub fn wall(&self, at: Instant) -> String {
        let offset = chrono::Duration::from_std(at.saturating_duration_since(self.started)).unwrap_or_default();
        format_time(self.started_wall + offset)
    }
}

/// RFC 3339 UTC with microseconds, as in the record.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// How the next client bytes are framed.
#[derive(Debug)]
enum Mode {
    Commands,
    /// The next line answers a 334 challenge.
    SaslResponse,
    Data(DotDecoder),
    Chunk {
        remaining: u64,
        last: bool,
    },
    /// After a STARTTLS the server accepted: TLS records this observer does not
    /// read (the relay terminates TLS itself when it is configured to).
    Opaque,
}

/// What an outstanding reply will answer.
#[derive(Debug, Clone, PartialEq)]
enum Awaited {
    Greeting,
    Command(CommandKind),
    SaslResponse,
    Content,
}

#[derive(Debug)]
struct Pending {
    awaited: Awaited,
    command: Option<CommandRecord>,
    message: Option<MessageSummary>,
    sent: Instant,
    pipelined: bool,
}

/// Counters for the session's `end` record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub exchanges: u64,
    pub messages: u64,
}

/// Pairs a session's commands with their replies.
pub struct Observer {
    clock: Clock,
    lines: LineAssembler,
    mode: Mode,
    replies: ReplyParser,
    pending: VecDeque<Pending>,
    /// Client bytes that wait for a reply deciding their framing.
    held: Vec<u8>,
    held_since: Option<Instant>,
    held_dropped: u64,
    /// The message whose content is being received, if any.
    message: Option<MessageDigest>,
    /// Whether the session is inside TLS (set by the relay).
    tls: bool,
    seq: u64,
    counts: Counts,
    quit_accepted: bool,
}

impl Observer {
    /// A new session; the server's greeting is the first reply expected.
    pub fn new(clock: Clock) -> Observer {
        let greeting =
            Pending { awaited: Awaited::Greeting, command: None, message: None, sent: clock.started, pipelined: false };
        Observer {
            clock,
            lines: LineAssembler::default(),
            mode: Mode::Commands,
            replies: ReplyParser::default(),
            pending: VecDeque::from([greeting]),
            held: Vec::new(),
            held_since: None,
            held_dropped: 0,
            message: None,
            tls: false,
            seq: 0,
            counts: Counts::default(),
            quit_accepted: false,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// True once the server accepted the client's QUIT.
    pub fn quit_accepted(&self) -> bool {
        self.quit_accepted
    }

    /// True when the server is not in the middle of a reply, so the proxy may
    /// speak to the client itself without corrupting one.
    pub fn between_replies(&self) -> bool {
        self.replies.is_idle()
    }

    /// Bytes the client sent towards the server.
    pub fn client_bytes(&mut self, now: Instant, mut input: &[u8], out: &mut impl Output) {
        if matches!(self.mode, Mode::Opaque) {
            return;
        }
        if !self.held.is_empty() || self.blocked() {
            self.hold(now, input);
            return;
        }
        while !input.is_empty() {
            let used = self.client_step(now, input, out);
            input = &input[used..];
            if !input.is_empty() && self.blocked() {
                self.hold(now, input);
                return;
            }
        }
    }

    /// Bytes the server sent towards the client.
    pub fn server_bytes(&mut self, now: Instant, mut input: &[u8], out: &mut impl Output) {
        while !input.is_empty() {
            if matches!(self.mode, Mode::Opaque) && self.pending.is_empty() {
                return;
            }
            let (used, reply) = self.replies.feed(input);
            input = &input[used..];
            if let Some(reply) = reply {
                self.on_reply(now, reply, out);
            }
        }
    }

    /// A reply smtptap itself sent to the client (e.g. `421` on a fault).
    pub fn proxy_reply(&mut self, now: Instant, reply: &Reply, out: &mut impl Output) {
        let exchange = Exchange {
            seq: self.next_seq(),
            t: self.clock.wall(now),
            tls: self.tls,
            pipelined: None,
            command: None,
            message: None,
            reply: Some(ReplyRecord::from(reply)),
            ms: None,
            origin: Some("proxy".into()),
        };
        out.exchange(exchange);
    }

    /// The session is over: records whatever is unfinished, so that nothing
    /// received is lost from the record.
    pub fn finish(&mut self, now: Instant, out: &mut impl Output) {
        if let Some(digest) = self.message.take() {
            self.close_message(now, digest.finish(false), out);
        }
        if !self.lines.is_idle() && !matches!(self.mode, Mode::Opaque) {
            let partial = self.lines.partial();
            let mut record = command_record(&Command::parse(partial.text), partial);
            record.incomplete = true;
            let pipelined = !self.pending.is_empty();
            self.pending.push_back(Pending {
                awaited: Awaited::Command(CommandKind::Other),
                command: Some(record),
                message: None,
                sent: now,
                pipelined,
            });
        }
        while let Some(p) = self.pending.pop_front() {
            self.emit(p, None, now, out);
        }
        if !self.held.is_empty() {
            let t = self.clock.wall(self.held_since.unwrap_or(now));
            let text = format!("the client sent {} bytes that no reply came for; kept here unparsed", self.held.len());
            out.note(t, text, Some(&self.held));
            self.held.clear();
        }
        if self.held_dropped > 0 {
            let text =
                format!("{} further client bytes were relayed but not kept (over the hold limit)", self.held_dropped);
            out.note(self.clock.wall(now), text, None);
        }
        if !self.replies.is_idle() {
            out.note(self.clock.wall(now), "the server closed in the middle of a reply".into(), None);
        }
    }

    /// A reply decides the framing of what the client sends after the last
    /// outstanding command: hold client bytes until it comes.
    fn blocked(&self) -> bool {
        match self.pending.back().map(|p| &p.awaited) {
            Some(Awaited::SaslResponse) => true,
            Some(Awaited::Command(k)) => {
                matches!(k, CommandKind::Data | CommandKind::Auth { .. } | CommandKind::StartTls)
            }
            _ => false,
        }
    }

    fn hold(&mut self, now: Instant, input: &[u8]) {
        self.held_since.get_or_insert(now);
        let room = MAX_HELD.saturating_sub(self.held.len());
        let kept = input.len().min(room);
        self.held.extend_from_slice(&input[..kept]);
        self.held_dropped += (input.len() - kept) as u64;
    }

    /// Frames some client bytes in the current mode; returns how many it used.
    fn client_step(&mut self, now: Instant, input: &[u8], out: &mut impl Output) -> usize {
        match &mut self.mode {
            Mode::Commands | Mode::SaslResponse => {
                let (used, complete) = self.lines.feed(input);
                if complete {
                    self.on_line(now, out);
                }
                used
            }
            Mode::Data(decoder) => {
                let digest = self.message.get_or_insert_with(MessageDigest::default);
                let (used, ended) = decoder.decode(input, &mut |chunk| {
                    digest.update(chunk);
                    out.content(chunk);
                });
                if ended {
                    self.mode = Mode::Commands;
                    let summary = self.message.take().unwrap_or_default().finish(true);
                    self.counts.messages += 1;
                    let pipelined = !self.pending.is_empty();
                    self.pending.push_back(Pending {
                        awaited: Awaited::Content,
                        command: None,
                        message: Some(summary),
                        sent: now,
                        pipelined,
                    });
                }
                used
            }
            Mode::Chunk { remaining, last } => {
                let take = input.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                let chunk = &input[..take];
                *remaining -= take as u64;
                let done = *remaining == 0;
                let last = *last;
                if let Some(digest) = self.message.as_mut() {
                    digest.update(chunk);
                }
                out.content(chunk);
                if done {
                    self.chunk_done(now, last, out);
                }
                take
            }
            Mode::Opaque => input.len(),
        }
    }

    fn chunk_done(&mut self, now: Instant, last: bool, out: &mut impl Output) {
        self.mode = Mode::Commands;
        if !last {
            return;
        }
        let summary = self.message.take().unwrap_or_default().finish(true);
        self.counts.messages += 1;
        match self.pending.back_mut() {
            Some(p) if matches!(p.awaited, Awaited::Command(CommandKind::Bdat { last: true, .. })) => {
                p.message = Some(summary);
            }
            // The server answered before the chunk was complete.
            _ => self.close_message(now, summary, out),
        }
    }

    /// Records a message that has no exchange of its own to ride on.
    fn close_message(&mut self, now: Instant, summary: MessageSummary, out: &mut impl Output) {
        let p =
            Pending { awaited: Awaited::Content, command: None, message: Some(summary), sent: now, pipelined: false };
        self.emit(p, None, now, out);
    }

    /// A complete client line in command or SASL mode.
    fn on_line(&mut self, now: Instant, out: &mut impl Output) {
        let pipelined = !self.pending.is_empty();
        if matches!(self.mode, Mode::SaslResponse) {
            self.mode = Mode::Commands;
            let cancel = self.lines.line().text == b"*";
            let shown = if cancel { "*" } else { "<redacted>" };
            self.pending.push_back(Pending {
                awaited: Awaited::SaslResponse,
                command: Some(CommandRecord::redacted(None, shown.into())),
                message: None,
                sent: now,
                pipelined,
            });
            return;
        }
        let line = self.lines.line();
        let command = Command::parse(line.text);
        let record = command_record(&command, line);
        match command.kind {
            CommandKind::Bdat { size, last } => {
                if self.message.is_none() {
                    self.message = Some(MessageDigest::default());
                    out.message_start();
                }
                self.mode = Mode::Chunk { remaining: size, last };
            }
            _ => {
                // BDAT chunks without LAST, then another command: the message was abandoned.
                if let Some(digest) = self.message.take() {
                    self.close_message(now, digest.finish(false), out);
                }
            }
        }
        self.pending.push_back(Pending {
            awaited: Awaited::Command(command.kind),
            command: Some(record),
            message: None,
            sent: now,
            pipelined,
        });
        if matches!(self.mode, Mode::Chunk { remaining: 0, .. }) {
            let Mode::Chunk { last, .. } = self.mode else { unreachable!() };
            self.chunk_done(now, last, out);
        }
    }

    fn on_reply(&mut self, now: Instant, reply: Reply, out: &mut impl Output) {
        let Some(pending) = self.pending.pop_front() else {
            // A reply nobody asked for (e.g. a 421 before closing).
            let p = Pending { awaited: Awaited::Content, command: None, message: None, sent: now, pipelined: false };
            self.emit(p, Some(&reply), now, out);
            return;
        };
        let code = reply.code;
        match &pending.awaited {
            Awaited::Command(CommandKind::Data) if code == 354 => {
                self.mode = Mode::Data(DotDecoder::default());
                self.message = Some(MessageDigest::default());
                out.message_start();
            }
            Awaited::Command(CommandKind::Auth { .. }) | Awaited::SaslResponse if code == 334 => {
                self.mode = Mode::SaslResponse;
            }
            Awaited::Command(CommandKind::StartTls) if code == 220 => {
                self.mode = Mode::Opaque;
                let text = "the server accepted STARTTLS; what follows is encrypted end to end and not recorded";
                out.note(self.clock.wall(now), text.into(), None);
                if !self.held.is_empty() {
                    // Plaintext pipelined after STARTTLS: the CVE-2011-0411 injection pattern.
                    let text = format!("the client sent {} bytes after STARTTLS, before its reply", self.held.len());
                    out.note(self.clock.wall(self.held_since.unwrap_or(now)), text, Some(&self.held));
                    self.held.clear();
                }
            }
            Awaited::Command(CommandKind::Quit) if reply.is_positive() => self.quit_accepted = true,
            _ => {}
        }
        self.emit(pending, Some(&reply), now, out);
        if !self.held.is_empty() && !self.blocked() && !matches!(self.mode, Mode::Opaque) {
            let held = std::mem::take(&mut self.held);
            let since = self.held_since.take().unwrap_or(now);
            self.client_bytes(since, &held, out);
        }
    }

    fn emit(&mut self, p: Pending, reply: Option<&Reply>, now: Instant, out: &mut impl Output) {
        let ms = reply.map(|_| millis(now.saturating_duration_since(p.sent)));
        let exchange = Exchange {
            seq: self.next_seq(),
            t: self.clock.wall(p.sent),
            tls: self.tls,
            pipelined: p.command.is_some().then_some(p.pipelined),
            command: p.command,
            message: p.message.map(MessageRecord::from),
            reply: reply.map(ReplyRecord::from),
            ms,
            origin: None,
        };
        out.exchange(exchange);
    }

    fn next_seq(&mut self) -> u64 {
        self.counts.exchanges += 1;
        self.seq += 1;
        self.seq - 1
    }
}

/// Milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// The record of a command line, with any SASL initial response redacted:
/// `AUTH <mechanism>` stays as typed, the rest becomes `<redacted>`.
fn command_record(command: &Command, line: Line<'_>) -> CommandRecord {
    let verb = Some(command.verb.clone());
    match command.kind {
        CommandKind::Auth { initial_response: true, .. } => {
            let words: Vec<&[u8]> = line.text.split(|&b| b == b' ').filter(|w| !w.is_empty()).take(2).collect();
            CommandRecord::redacted(verb, format!("{} <redacted>", String::from_utf8_lossy(&words.join(&b' '))))
        }
        _ => CommandRecord::from_line(verb, line),
    }
}

/// No output at all, e.g. when a recording could not be created.
impl<T: Output> Output for Option<T> {
    fn exchange(&mut self, exchange: Exchange) {
        if let Some(o) = self {
            o.exchange(exchange);
        }
    }
    fn message_start(&mut self) {
        if let Some(o) = self {
            o.message_start();
        }
    }
    fn content(&mut self, chunk: &[u8]) {
        if let Some(o) = self {
            o.content(chunk);
        }
    }
    fn note(&mut self, t: String, text: String, data: Option<&[u8]>) {
        if let Some(o) = self {
            o.note(t, text, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Collects what the observer emits; `content` is per message.
    #[derive(Default, Debug)]
    struct Collect {
        exchanges: Vec<Exchange>,
        contents: Vec<Vec<u8>>,
        notes: Vec<String>,
    }

    impl Output for Collect {
        fn exchange(&mut self, e: Exchange) {
            self.exchanges.push(e);
        }
        fn message_start(&mut self) {
            self.contents.push(Vec::new());
        }
        fn content(&mut self, chunk: &[u8]) {
            self.contents.last_mut().expect("content after message_start").extend_from_slice(chunk);
        }
        fn note(&mut self, _t: String, text: String, _data: Option<&[u8]>) {
            self.notes.push(text);
        }
    }

    enum Step {
        C(&'static [u8]),
        S(&'static [u8]),
    }
    use Step::{C, S};

    /// Feeds the steps, each cut at `cuts` (offsets, wrapped to the step's length).
    fn observe(steps: &[Step], cuts: &[usize]) -> Collect {
        let clock = Clock::now();
        let now = clock.started;
        let mut obs = Observer::new(clock);
        let mut out = Collect::default();
        for (i, step) in steps.iter().enumerate() {
            let (bytes, client) = match step {
                C(b) => (*b, true),
                S(b) => (*b, false),
            };
            let cut = cuts.get(i).map_or(0, |c| c % (bytes.len() + 1));
            for part in [&bytes[..cut], &bytes[cut..]] {
                if client {
                    obs.client_bytes(now, part, &mut out);
                } else {
                    obs.server_bytes(now, part, &mut out);
                }
            }
        }
        obs.finish(now, &mut out);
        out
    }

    fn verbs(out: &Collect) -> Vec<(Option<String>, Option<u16>)> {
        out.exchanges
            .iter()
            .map(|e| (e.command.as_ref().and_then(|c| c.verb.clone()), e.reply.as_ref().map(|r| r.code)))
            .collect()
    }

    fn v(verb: &str, code: u16) -> (Option<String>, Option<u16>) {
        ((!verb.is_empty()).then(|| verb.to_owned()), Some(code))
    }

    const PIPELINED: &[Step] = &[
        S(b"220 mx ESMTP\r\n"),
        C(b"EHLO c\r\n"),
        S(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n"),
        C(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n"),
        S(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.7.1 Relaying denied\r\n354 go\r\n"),
        C(b"Subject: t\r\n\r\n..dot\r\n.\r\nQUIT\r\n"),
        S(b"250 2.0.0 queued\r\n221 2.0.0 Bye\r\n"),
    ];

    #[test]
    fn pipelined_batch_pairs_in_order() {
        let out = observe(PIPELINED, &[]);
        assert_eq!(
            verbs(&out),
            [
                v("", 220),
                v("EHLO", 250),
                v("MAIL", 250),
                v("RCPT", 250),
                v("RCPT", 550),
                v("DATA", 354),
                v("", 250),
                v("QUIT", 221)
            ]
        );
        let pipelined: Vec<Option<bool>> = out.exchanges.iter().map(|e| e.pipelined).collect();
        let (t, f) = (Some(true), Some(false));
        assert_eq!(pipelined, [None, f, f, t, t, t, None, t], "QUIT came with the end of data");
        assert_eq!(out.exchanges[4].reply.as_ref().unwrap().enhanced.as_deref(), Some("5.7.1"));
        assert_eq!(out.contents, [b"Subject: t\r\n\r\n.dot\r\n".to_vec()]);
        let message = out.exchanges[6].message.as_ref().unwrap();
        assert_eq!((message.size, message.complete), (20, true));
        assert_eq!(message.headers.get("subject").map(String::as_str), Some("t"));
        assert_eq!(out.exchanges.iter().map(|e| e.seq).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
        assert!(out.notes.is_empty());
    }

    #[test]
    fn body_sent_before_354_waits_for_the_reply() {
        let steps = [
            S(b"220 mx\r\n"),
            C(b"DATA\r\nSubject: early\r\n\r\nbody\r\n.\r\nNOOP\r\n"),
            S(b"354 go\r\n250 ok\r\n250 noop\r\n"),
        ];
        let out = observe(&steps, &[]);
        assert_eq!(verbs(&out), [v("", 220), v("DATA", 354), v("", 250), v("NOOP", 250)]);
        assert_eq!(out.contents, [b"Subject: early\r\n\r\nbody\r\n".to_vec()]);
    }

    #[test]
    fn rejected_data_leaves_command_mode() {
        let steps =
            [S(b"220 mx\r\n"), C(b"DATA\r\n"), S(b"554 5.5.1 no recipients\r\n"), C(b"RSET\r\n"), S(b"250 ok\r\n")];
        let out = observe(&steps, &[]);
        assert_eq!(verbs(&out), [v("", 220), v("DATA", 554), v("RSET", 250)]);
        assert!(out.contents.is_empty());
    }

    #[test]
    fn bdat_chunks_pipelined_with_binary_content() {
        let steps = [
            S(b"220 mx\r\n"),
            C(b"MAIL FROM:<a>\r\nRCPT TO:<b>\r\nBDAT 6\r\nA\r\n\x00\xff\rBDAT 3 LAST\r\n.\r\nMAIL FROM:<c>\r\n"),
            S(b"250 ok\r\n250 ok\r\n250 6 octets\r\n250 queued\r\n250 ok\r\n"),
        ];
        for cut in 0..120 {
            let out = observe(&steps, &[0, cut, cut]);
            assert_eq!(
                verbs(&out),
                [v("", 220), v("MAIL", 250), v("RCPT", 250), v("BDAT", 250), v("BDAT", 250), v("MAIL", 250)]
            );
            assert_eq!(out.contents, [b"A\r\n\x00\xff\r.\r\n".to_vec()], "cut {cut}");
            let message = out.exchanges[4].message.as_ref().expect("message on BDAT LAST");
            assert_eq!(message.size, 9);
            assert!(out.exchanges[3].message.is_none());
        }
    }

    #[test]
    fn bdat_abandoned_by_rset_is_recorded_incomplete() {
        let steps = [S(b"220 mx\r\n"), C(b"BDAT 2\r\nhiRSET\r\n"), S(b"250 2 octets\r\n250 reset\r\n")];
        let out = observe(&steps, &[]);
        assert_eq!(verbs(&out), [v("", 220), (None, None), v("BDAT", 250), v("RSET", 250)]);
        let message = out.exchanges[1].message.as_ref().unwrap();
        assert_eq!((message.size, message.complete), (2, false));
    }

    #[test]
    fn auth_secrets_never_reach_the_record() {
        let steps = [
            S(b"220 mx\r\n"),
            C(b"AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n"),
            S(b"535 5.7.8 bad\r\n"),
            C(b"AUTH LOGIN\r\n"),
            S(b"334 VXNlcm5hbWU6\r\n"),
            C(b"am9l\r\n"),
            S(b"334 UGFzc3dvcmQ6\r\n"),
            C(b"c2VjcmV0\r\n"),
            S(b"235 2.7.0 ok\r\n"),
            C(b"AUTH CRAM-MD5\r\n"),
            S(b"334 PDEyMz4=\r\n"),
            C(b"*\r\n"),
            S(b"501 5.7.0 cancelled\r\n"),
        ];
        let out = observe(&steps, &[]);
        assert_eq!(
            verbs(&out),
            [v("", 220), v("AUTH", 535), v("AUTH", 334), v("", 334), v("", 235), v("AUTH", 334), v("", 501)]
        );
        let lines: Vec<&str> =
            out.exchanges.iter().filter_map(|e| e.command.as_ref()).map(|c| c.line.as_str()).collect();
        assert_eq!(lines, ["AUTH PLAIN <redacted>", "AUTH LOGIN", "<redacted>", "<redacted>", "AUTH CRAM-MD5", "*"]);
        let json = serde_json::to_string(&out.exchanges).unwrap();
        for secret in ["AGpvZQBzZWNyZXQ=", "am9l", "c2VjcmV0"] {
            assert!(!json.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn starttls_accepted_makes_the_rest_opaque() {
        let steps = [
            S(b"220 mx\r\n"),
            C(b"STARTTLS\r\n"),
            S(b"220 go ahead\r\n"),
            C(b"\x16\x03\x01 tls"),
            S(b"\x16\x03\x03 tls"),
        ];
        let out = observe(&steps, &[]);
        assert_eq!(verbs(&out), [v("", 220), v("STARTTLS", 220)]);
        assert_eq!(out.notes.len(), 1);
    }

    #[test]
    fn session_ending_early_keeps_everything() {
        let steps = [
            S(b"220 mx\r\n"),
            C(b"MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n"),
            S(b"250 ok\r\n250-partial\r\n"),
            C(b"QU"),
        ];
        let out = observe(&steps, &[]);
        assert_eq!(verbs(&out), [v("", 220), v("MAIL", 250), (Some("RCPT".into()), None), (Some("DATA".into()), None)]);
        assert_eq!(out.notes.len(), 2, "held client bytes and the partial reply: {:?}", out.notes);
        let steps = [S(b"220 mx\r\n"), C(b"DATA\r\n"), S(b"354 go\r\n"), C(b"Subject: x\r\n\r\npart")];
        let out = observe(&steps, &[]);
        let last = out.exchanges.last().unwrap();
        let message = last.message.as_ref().unwrap();
        assert_eq!((message.size, message.complete, last.reply.is_none()), (18, false, true));
        let steps = [S(b"220 mx\r\n"), C(b"MAIL FR")];
        let out = observe(&steps, &[]);
        let partial = out.exchanges.last().unwrap().command.as_ref().unwrap();
        assert_eq!((partial.line.as_str(), partial.incomplete), ("MAIL FR", true));
    }

    #[test]
    fn unsolicited_reply_and_talking_before_greeting() {
        let steps = [C(b"EHLO early\r\n"), S(b"220 mx\r\n250 hi\r\n421 4.4.2 bye\r\n")];
        let out = observe(&steps, &[]);
        assert_eq!(verbs(&out), [v("", 220), v("EHLO", 250), v("", 421)]);
        assert_eq!(out.exchanges[1].pipelined, Some(true));
    }

    #[test]
    fn non_utf8_and_overlong_lines_are_lossless_or_measured() {
        let long: &'static [u8] = Box::leak(
            [b"NOOP ".as_slice(), &vec![b'x'; super::super::line::MAX_LINE + 10], b"\r\n"].concat().into_boxed_slice(),
        );
        let steps = [S(b"220 mx\r\n"), C(b"HELO \xff\xfe\r\n"), S(b"250 h\xe9llo\r\n"), C(long), S(b"250 ok\r\n")];
        let out = observe(&steps, &[]);
        let helo = &out.exchanges[1];
        assert_eq!(helo.command.as_ref().unwrap().line_base64.as_deref(), Some("SEVMTyD//g=="));
        assert_eq!(helo.reply.as_ref().unwrap().lines_base64.as_ref().unwrap()[0], "aOlsbG8=");
        let noop = out.exchanges[2].command.as_ref().unwrap();
        assert_eq!(noop.length, Some(long.len() - 2));
        assert_eq!(noop.line.len(), super::super::line::MAX_LINE);
    }

    proptest! {
        /// Any read split of either direction gives the same exchanges.
        #[test]
        fn pairing_is_independent_of_read_splits(cuts in proptest::collection::vec(0usize..200, PIPELINED.len())) {
            let whole = observe(PIPELINED, &[]);
            let split = observe(PIPELINED, &cuts);
            prop_assert_eq!(verbs(&split), verbs(&whole));
            prop_assert_eq!(&split.contents, &whole.contents);
            let lines = |o: &Collect| o.exchanges.iter().map(|e| (e.command.clone(), e.reply.clone(), e.pipelined)).collect::<Vec<_>>();
            prop_assert_eq!(lines(&split), lines(&whole));
        }
    }
}
