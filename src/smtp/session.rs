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
const MAX_HELD: usize = 1024 * 1024;

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
