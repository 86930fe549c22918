//! The session observer: both directions of an SMTP session in, paired
//! command/reply exchanges and relay decisions out. Plain code over bytes; it
//! never does I/O.
//!
//! Client bytes are framed by the mode the conversation is in: command lines,
//! SASL response lines, DATA content or BDAT chunks. A command whose reply
//! decides the framing of what follows (DATA, AUTH, a SASL line, STARTTLS)
//! makes the observer hold later client bytes, unread, until that reply has
//! been seen. The relay does not wait for this; only around STARTTLS does the
//! observer tell the relay to withhold bytes (see [`Actions`]).

use super::command::{Command, CommandKind, is_known_verb};
use super::data::DotDecoder;
use super::ehlo;
use super::forward::Forward;
use super::line::{Line, LineAssembler};
use super::message::{MessageDigest, MessageSummary};
use super::reply::{Reply, ReplyParser};
use crate::auth::{FingerprintKey, REDACTED, Recorded, Redaction, SaslSession};
use crate::record::format::{CommandRecord, Exchange, MessageRecord, NoteKind, ReplyRecord};
use chrono::{DateTime, Utc};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most client bytes held while a framing-deciding reply is outstanding. A
/// client sending more than this without waiting is misbehaving; the excess
/// is relayed but only counted in the record.
const MAX_HELD: usize = 64 * 1024;

/// Longest partial line withheld because it might be a STARTTLS the proxy
/// answers itself (`STARTTLS` and a few spaces); longer lines are relayed.
const MAX_GATED: usize = 32;

/// Longest EHLO reply held back for editing; a longer one is relayed as is.
const MAX_EHLO_REPLY: usize = 64 * 1024;

/// Message content must come at least this fast (bytes per second) once the
/// idle timeout's grace is spent, as Postfix's `smtpd_min_data_rate`: a client
/// trickling content a byte at a time cannot hold its session for ever.
pub const MIN_CONTENT_RATE: u64 = 500;

/// What the client is in the middle of sending, for its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    /// A command or AUTH line.
    Line,
    /// Message content (DATA, or a BDAT chunk): `bytes` of it so far.
    Content { bytes: u64 },
}

/// By when the client must have finished what it is sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDeadline {
    pub at: Instant,
    /// When it began sending it.
    pub since: Instant,
    pub sending: Sending,
}

/// Why a session the relay's timer ended is closed: the `421` text for the
/// client and the error for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    pub reply: String,
    pub why: String,
}

/// Where the observer's results go: the recorder, or a test's collector.
pub trait Output {
    /// A completed exchange, in `seq` order.
    fn exchange(&mut self, exchange: Exchange);
    /// A new message's content starts; `content` calls follow.
    fn message_start(&mut self);
    /// Message content as delivered (dot-stuffing removed), in order.
    fn content(&mut self, chunk: &[u8]);
    /// An observation that is not an exchange, with the bytes it concerns.
    fn note(&mut self, t: String, kind: NoteKind, text: String, data: Option<&[u8]>);
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
    use chrono::{Datelike, Timelike};
    // Digit by digit: this is per record, and `format!` with widths is slow.
    let micros = (t.nanosecond() / 1000).min(999_999); // a leap second counts as :59.999999
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let fields = [
        (0, 4, u32::try_from(t.year()).unwrap_or(0).min(9999)),
        (5, 2, t.month()),
        (8, 2, t.day()),
        (11, 2, t.hour()),
        (14, 2, t.minute()),
        (17, 2, t.second()),
        (20, 6, micros),
    ];
    for (at, width, mut value) in fields {
        for digit in out[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    String::from_utf8(out.to_vec()).expect("ASCII digits")
}

/// Who handles the client's STARTTLS, from the TLS modes of both sides
/// (SPEC.md, "TLS translation rules").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTlsPolicy {
    /// Both sides `starttls`: the client's STARTTLS goes to the server, and on
    /// the server's 220 both sides upgrade.
    Mirror,
    /// Client `starttls`, upstream not: the proxy offers STARTTLS in EHLO
    /// replies and answers it itself.
    ProxyOffers,
    /// Client `off`: STARTTLS is withdrawn from EHLO replies and refused.
    Refused,
    /// Client `implicit`: already TLS; STARTTLS is withdrawn and refused.
    AlreadyTls,
}

impl StartTlsPolicy {
    /// Whether relayed EHLO replies must offer STARTTLS (`None`: as the server said).
    fn ehlo_offers(self, client_tls: bool) -> Option<bool> {
        match self {
            StartTlsPolicy::Mirror => None,
            StartTlsPolicy::ProxyOffers => Some(!client_tls),
            StartTlsPolicy::Refused | StartTlsPolicy::AlreadyTls => Some(false),
        }
    }
}

/// What a session's observer is told when it starts.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    pub policy: StartTlsPolicy,
    /// What AUTH data the record may keep.
    pub redaction: Redaction,
    /// Key of the fingerprints of hidden secrets.
    pub key: FingerprintKey,
}

/// Which sides start a TLS handshake now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// The proxy answered the client's STARTTLS itself.
    Client,
    /// The proxy's own STARTTLS to the upstream was accepted.
    Upstream,
    /// The server accepted the client's STARTTLS (mirrored). The relay must
    /// complete the upstream handshake before it relays the server's 220, so
    /// that a failure can still be told to the client in plaintext.
    Both,
}

/// What the relay does with one read, as the observer decided.
#[derive(Debug, Default)]
pub struct Actions<'a> {
    /// Bytes for the upstream, in order.
    pub to_upstream: Cow<'a, [u8]>,
    /// Bytes for the client, in order.
    pub to_client: Cow<'a, [u8]>,
    /// Handshakes to make once the bytes above are written (but see [`Upgrade::Both`]).
    pub upgrade: Option<Upgrade>,
    /// The upstream refused the proxy's own STARTTLS: this reply.
    pub refused: Option<Reply>,
}

/// Whether held client bytes are being read again, once the reply they
/// waited for is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rereading {
    /// No: these bytes just arrived.
    No,
    /// Yes, and they were withheld: whether to relay them is decided now.
    Withheld,
    /// Yes, and they were relayed when they came: only their framing is
    /// left, so a STARTTLS among them can no longer be intercepted.
    Relayed,
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
}

/// What an outstanding reply will answer.
#[derive(Debug, Clone, PartialEq)]
enum Awaited {
    Greeting,
    Command(CommandKind),
    SaslResponse,
    Content,
    /// A STARTTLS the proxy answers itself, once every earlier reply is in.
    LocalStartTls,
}

#[derive(Debug)]
struct Pending {
    awaited: Awaited,
    command: Option<CommandRecord>,
    message: Option<MessageSummary>,
    sent: Instant,
    pipelined: bool,
    /// smtptap sent this command itself.
    by_proxy: bool,
    /// The hop the command travelled was inside TLS.
    tls: bool,
}

impl Pending {
    fn new(awaited: Awaited, sent: Instant) -> Pending {
        Pending { awaited, command: None, message: None, sent, pipelined: false, by_proxy: false, tls: false }
    }
}

/// Counters for the session's `end` record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub exchanges: u64,
    pub messages: u64,
}

/// Pairs a session's commands with their replies and decides what the relay
/// withholds or adds around STARTTLS and EHLO.
pub struct Observer {
    clock: Clock,
    policy: StartTlsPolicy,
    redaction: Redaction,
    key: FingerprintKey,
    /// The SASL exchange in progress, from `AUTH` to its final reply.
    sasl: Option<SaslSession>,
    /// An AUTH exchange was refused, or ended while client lines were held:
    /// what the client sent ahead of a challenge that never came may be SASL
    /// responses (held, or still on the way), so lines that are no SMTP
    /// command are recorded redacted until one that is comes.
    after_refused_auth: bool,
    /// The AUTH mechanisms the server's last EHLO reply offered.
    offered_auth: Vec<String>,
    /// Whether held client bytes are being read again (`release_held`).
    rereading: Rereading,
    lines: LineAssembler,
    mode: Mode,
    replies: ReplyParser,
    pending: VecDeque<Pending>,
    /// Client bytes that wait for a reply deciding their framing.
    held: Vec<u8>,
    held_since: Option<Instant>,
    held_dropped: u64,
    /// While the current client line might be a STARTTLS the proxy answers
    /// itself: its bytes so far, not yet relayed.
    gate: Option<Vec<u8>>,
    /// An EHLO reply held back for editing.
    ehlo_reply: Vec<u8>,
    /// When the client's last bytes came.
    client_heard: Instant,
    /// When the client's unfinished command line began (slow-client defence).
    line_since: Option<Instant>,
    /// When the current message content (or BDAT chunk) began, and its bytes so far.
    content_since: Instant,
    content_bytes: u64,
    /// The message whose content is being received, if any.
    message: Option<MessageDigest>,
    client_tls: bool,
    upstream_tls: bool,
    /// A handshake is due on these sides; bytes read before it are discarded.
    tls_due: Option<Upgrade>,
    seq: u64,
    counts: Counts,
    quit_accepted: bool,
    /// The server greeted with 220 (ready for service).
    greeted: bool,
}

impl Observer {
    /// A new session; the server's greeting is the first reply expected.
    pub fn new(clock: Clock, config: ObserverConfig) -> Observer {
        let ObserverConfig { policy, redaction, key } = config;
        let client_tls = policy == StartTlsPolicy::AlreadyTls;
        let mut greeting = Pending::new(Awaited::Greeting, clock.started);
        greeting.tls = client_tls;
        Observer {
            clock,
            policy,
            redaction,
            key,
            sasl: None,
            after_refused_auth: false,
            offered_auth: Vec::new(),
            rereading: Rereading::No,
            lines: LineAssembler::default(),
            mode: Mode::Commands,
            replies: ReplyParser::default(),
            pending: VecDeque::from([greeting]),
            held: Vec::new(),
            held_since: None,
            held_dropped: 0,
            gate: None,
            ehlo_reply: Vec::new(),
            client_heard: clock.started,
            line_since: None,
            content_since: clock.started,
            content_bytes: 0,
            message: None,
            client_tls,
            upstream_tls: false,
            tls_due: None,
            seq: 0,
            counts: Counts::default(),
            quit_accepted: false,
            greeted: false,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// True once the server greeted with 220 (ready for service).
    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// True once the server accepted the client's QUIT.
    pub fn quit_accepted(&self) -> bool {
        self.quit_accepted
    }

    /// Where the conversation stands, in words for a timeout's error.
    pub fn phase(&self) -> String {
        // A BDAT chunk is owed by the client even while the server's reply to
        // its command is due (servers answer once the chunk is in).
        if let (Mode::Chunk { .. }, Some(_)) = (&self.mode, self.pending.front()) {
            return "waiting for the client: a BDAT chunk".into();
        }
        if let Some(front) = self.pending.front() {
            let what = match (&front.awaited, &front.command) {
                (Awaited::Greeting, _) => "the greeting".to_owned(),
                (Awaited::Content, _) => "the reply to the message content".to_owned(),
                (_, Some(c)) => format!("the reply to {}", c.verb.as_deref().unwrap_or("an AUTH continuation")),
                (_, None) => "a reply".to_owned(),
            };
            return format!("waiting for the upstream: {what}");
        }
        match self.mode {
            Mode::Data(_) => "waiting for the client: message content (DATA)".into(),
            Mode::Chunk { .. } => "waiting for the client: a BDAT chunk".into(),
            Mode::SaslResponse => "waiting for the client: an AUTH response".into(),
            Mode::Commands if !self.lines.is_idle() => "waiting for the client: the rest of a command line".into(),
            Mode::Commands => "waiting for the client: its next command".into(),
        }
    }

    /// What the client is in the middle of sending, and by when it must be
    /// done: a command or AUTH line within `idle` of its first byte (however
    /// fast the bytes come); message content within `idle` plus the time its
    /// size takes at [`MIN_CONTENT_RATE`]. `None` between commands.
    pub fn client_deadline(&self, idle: Duration) -> Option<ClientDeadline> {
        if let Mode::Data(_) | Mode::Chunk { .. } = self.mode {
            let sending = Sending::Content { bytes: self.content_bytes };
            let earned = Duration::from_millis(self.content_bytes.saturating_mul(1000) / MIN_CONTENT_RATE);
            let at = self.content_since + idle + earned;
            return Some(ClientDeadline { at, since: self.content_since, sending });
        }
        let since = self.line_since?;
        Some(ClientDeadline { at: since + idle, since, sending: Sending::Line })
    }

    /// Why the session is closed when the relay's timer fires at `now`: after
    /// `idle` without a byte, or at [`Observer::client_deadline`].
    pub fn timed_out(&self, now: Instant, idle: Duration) -> TimedOut {
        let secs = idle.as_secs();
        // A client silent for the idle timeout is idle, whatever else is overdue.
        let silent = now.duration_since(self.client_heard) >= idle;
        let late = self.client_deadline(idle).filter(|d| d.at <= now && !silent);
        let phase = self.phase();
        let (reply, why) = match late {
            Some(ClientDeadline { sending: Sending::Line, .. }) => (
                format!("4.4.2 smtptap: command line not completed within {secs} s, closing connection"),
                format!("a command line took over {secs} s, {phase}"),
            ),
            Some(ClientDeadline { sending: Sending::Content { bytes }, since, .. }) => (
                format!(
                    "4.4.2 smtptap: message content too slow (under {MIN_CONTENT_RATE} bytes/s \
                    after the first {secs} s), closing connection"
                ),
                format!(
                    "message content too slow: {bytes} bytes in {} s, {phase}",
                    now.duration_since(since).as_secs()
                ),
            ),
            None => (
                format!("4.4.2 smtptap: no data for {secs} s, closing connection"),
                format!("nothing for {secs} s, {phase}"),
            ),
        };
        TimedOut { reply, why }
    }

    /// True while some reply (the greeting included) is still due.
    pub fn awaiting_replies(&self) -> bool {
        !self.pending.is_empty()
    }

    /// True when the server is not in the middle of a reply, so the proxy may
    /// speak to the client itself without corrupting one.
    pub fn between_replies(&self) -> bool {
        self.replies.is_idle()
    }

    /// The upstream connection is TLS from its first byte.
    pub fn upstream_is_tls(&mut self) {
        self.upstream_tls = true;
    }

    /// Bytes the client sent towards the server.
    pub fn client_bytes<'a>(&mut self, now: Instant, input: &'a [u8], out: &mut impl Output) -> Actions<'a> {
        if !input.is_empty() {
            self.client_heard = now;
        }
        let mut actions = Actions::default();
        let mut forward = Forward::new(input);
        self.client_input(now, input, &mut forward, &mut actions, out);
        actions.to_upstream = forward.finish();
        actions
    }

    /// Bytes the server sent towards the client.
    pub fn server_bytes<'a>(&mut self, now: Instant, input: &'a [u8], out: &mut impl Output) -> Actions<'a> {
        let mut actions = Actions::default();
        let mut forward = Forward::new(input);
        let mut at = 0;
        while at < input.len() {
            if matches!(self.tls_due, Some(Upgrade::Both | Upgrade::Upstream)) {
                // RFC 3207 §5: nothing the server sent before the handshake counts.
                let rest = &input[at..];
                let text = format!("the server sent {} bytes after its 220 to STARTTLS; discarded", rest.len());
                out.note(self.clock.wall(now), NoteKind::ServerAfterStarttls, text, Some(rest));
                break;
            }
            let front = self.pending.front();
            let by_proxy = front.is_some_and(|p| p.by_proxy);
            let edit = match front.map(|p| &p.awaited) {
                Some(Awaited::Command(CommandKind::Ehlo)) if !by_proxy => self.policy.ehlo_offers(self.client_tls),
                _ => None,
            };
            let (used, reply) = self.replies.feed(&input[at..]);
            let end = at + used;
            if by_proxy {
                forward.skip(end);
            } else if edit.is_some() && self.ehlo_reply.len() + used <= MAX_EHLO_REPLY {
                self.ehlo_reply.extend_from_slice(&input[at..end]);
                forward.skip(end);
            } else {
                forward.insert(&std::mem::take(&mut self.ehlo_reply));
                forward.pass(end);
            }
            at = end;
            let Some(reply) = reply else { continue };
            if let (Some(offer), false) = (edit, self.ehlo_reply.is_empty()) {
                let held = std::mem::take(&mut self.ehlo_reply);
                match ehlo::with_starttls(&held, offer) {
                    Some(edited) => {
                        forward.insert(&edited);
                        let (kind, what) = match offer {
                            true => (NoteKind::StarttlsOffered, "added to"),
                            false => (NoteKind::StarttlsWithdrawn, "removed from"),
                        };
                        let text = format!("STARTTLS {what} the EHLO reply relayed to the client");
                        out.note(self.clock.wall(now), kind, text, None);
                    }
                    None => forward.insert(&held),
                }
            }
            self.on_reply(now, reply, &mut actions, out);
            // Replies the proxy gave itself to commands that reply released follow it.
            forward.insert(&std::mem::take(&mut actions.to_client));
            while self.pending.front().is_some_and(|p| p.awaited == Awaited::LocalStartTls) {
                let wire = self.answer_starttls_locally(now, &mut actions, out);
                forward.insert(&wire);
                forward.insert(&std::mem::take(&mut actions.to_client));
            }
        }
        actions.to_client = forward.finish();
        actions
    }

    /// A command smtptap sends to the upstream itself; returns its wire form.
    pub fn proxy_command(&mut self, now: Instant, line: &str) -> Vec<u8> {
        let command = Command::parse(line.as_bytes());
        let record = CommandRecord::redacted(Some(command.verb.clone()), line.to_owned());
        let mut pending = Pending::new(Awaited::Command(command.kind), now);
        pending.pipelined = !self.pending.is_empty();
        pending.command = Some(record);
        pending.by_proxy = true;
        pending.tls = self.upstream_tls;
        self.pending.push_back(pending);
        format!("{line}\r\n").into_bytes()
    }

    /// The handshakes of `upgrade` completed: parsing starts afresh inside TLS.
    pub fn tls_started(&mut self, upgrade: Upgrade) {
        if matches!(upgrade, Upgrade::Client | Upgrade::Both) {
            self.client_tls = true;
            self.lines = LineAssembler::default();
            self.mode = Mode::Commands;
        }
        if matches!(upgrade, Upgrade::Upstream | Upgrade::Both) {
            self.upstream_tls = true;
            self.replies = ReplyParser::default();
        }
        self.tls_due = None;
    }

    /// Bytes held back from relaying (a line that might have been STARTTLS, an
    /// EHLO reply being edited), for when a side closes and they must go on
    /// as they are: `(to_upstream, to_client)`.
    pub fn take_withheld(&mut self) -> (Vec<u8>, Vec<u8>) {
        (self.gate.take().unwrap_or_default(), std::mem::take(&mut self.ehlo_reply))
    }

    /// A reply smtptap itself sent to the client (e.g. `421` on a fault).
    pub fn proxy_reply(&mut self, now: Instant, reply: &Reply, out: &mut impl Output) {
        let exchange = Exchange {
            seq: self.next_seq(),
            t: self.clock.wall(now),
            tls: self.client_tls,
            pipelined: None,
            command: None,
            message: None,
            reply: Some(ReplyRecord::from(reply)),
            ms: None,
            origin: Some("proxy".into()),
            answered_by: None,
        };
        out.exchange(exchange);
    }

    /// The session is over: records whatever is unfinished, so that nothing
    /// received is lost from the record.
    pub fn finish(&mut self, now: Instant, out: &mut impl Output) {
        if let Some(digest) = self.message.take() {
            self.close_message(now, digest.finish(false), out);
        }
        if let Some(partial) = self.replies.take_partial() {
            // What came of the reply answers the command it was for (or none):
            // never the client's unfinished line below, which nothing can answer.
            let text = "the session ended in the middle of a server reply; the part that came is recorded, truncated";
            out.note(self.clock.wall(now), NoteKind::PartialReply, text.into(), None);
            let p = self.pending.pop_front().unwrap_or_else(|| Pending::new(Awaited::Content, now));
            self.emit(p, Some(&partial), now, out);
        }
        if !self.lines.is_idle() {
            let partial = self.lines.partial();
            let command = Command::parse(partial.text);
            // As for whole lines: a SASL response, or what may be one after a refused AUTH.
            let response =
                matches!(self.mode, Mode::SaslResponse) || (self.after_refused_auth && !is_known_verb(&command.verb));
            let secret = response || matches!(command.kind, CommandKind::Auth { .. });
            let mut record = if secret && self.redaction != Redaction::None {
                CommandRecord::redacted(Some(command.verb).filter(|_| !response), REDACTED.into())
            } else {
                CommandRecord::from_line(Some(command.verb), partial)
            };
            record.incomplete = true;
            let mut pending = Pending::new(Awaited::Command(CommandKind::Other), now);
            pending.pipelined = !self.pending.is_empty();
            pending.command = Some(record);
            pending.tls = self.client_tls;
            self.pending.push_back(pending);
        }
        while let Some(p) = self.pending.pop_front() {
            self.emit(p, None, now, out);
        }
        if !self.held.is_empty() {
            let t = self.clock.wall(self.held_since.unwrap_or(now));
            let held = std::mem::take(&mut self.held);
            let text = format!("the client sent {} bytes that no reply came for", held.len());
            self.note_bytes(t, NoteKind::UnansweredClientData, text, &held, out);
        }
        if self.held_dropped > 0 {
            let text =
                format!("{} further client bytes were relayed but not kept (over the hold limit)", self.held_dropped);
            out.note(self.clock.wall(now), NoteKind::UnansweredClientData, text, None);
        }
    }

    /// Frames client input and decides which of it is relayed (via `forward`).
    fn client_input(
        &mut self,
        now: Instant,
        input: &[u8],
        forward: &mut Forward<'_>,
        actions: &mut Actions<'_>,
        out: &mut impl Output,
    ) {
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            if matches!(self.tls_due, Some(Upgrade::Client | Upgrade::Both)) {
                // The CVE-2011-0411 pattern: plaintext after STARTTLS, before the handshake.
                let text =
                    format!("the client sent {} bytes after STARTTLS, before the TLS handshake; discarded", rest.len());
                self.note_bytes(self.clock.wall(now), NoteKind::ClientAfterStarttls, text, rest, out);
                forward.skip(input.len());
                return;
            }
            if !self.held.is_empty() || self.blocked() {
                self.hold(now, rest);
                if self.withheld() {
                    forward.skip(input.len());
                } else {
                    forward.pass(input.len());
                }
                return;
            }
            at += self.client_step(now, rest, at, forward, actions, out);
        }
    }

    /// Frames some client bytes in the current mode; returns how many it used.
    /// `offset` is where `input` starts in the read that `forward` covers.
    fn client_step(
        &mut self,
        now: Instant,
        input: &[u8],
        offset: usize,
        forward: &mut Forward<'_>,
        actions: &mut Actions<'_>,
        out: &mut impl Output,
    ) -> usize {
        match &mut self.mode {
            Mode::Commands | Mode::SaslResponse => {
                // Bytes relayed already cannot be withheld any more: no gate for them.
                let gated = self.policy != StartTlsPolicy::Mirror
                    && matches!(self.mode, Mode::Commands)
                    && self.rereading != Rereading::Relayed;
                if gated && self.lines.is_idle() && self.gate.is_none() {
                    self.gate = Some(Vec::new());
                }
                let line_started = self.lines.is_idle();
                let (used, complete) = self.lines.feed(input);
                self.line_since = match (complete, line_started) {
                    (true, _) => None,
                    (false, true) => Some(now),
                    (false, false) => self.line_since,
                };
                let end = offset + used;
                let line_text = if complete { self.lines.line().text } else { self.lines.partial().text };
                let intercept =
                    complete && self.gate.is_some() && Command::parse(line_text).kind == CommandKind::StartTls;
                match &mut self.gate {
                    Some(_) if intercept => {
                        self.gate = None;
                        forward.skip(end);
                    }
                    Some(gate) if !complete && gate.len() + used <= MAX_GATED && could_be_starttls(line_text) => {
                        gate.extend_from_slice(&input[..used]);
                        forward.skip(end);
                    }
                    _ => {
                        if let Some(gate) = self.gate.take() {
                            forward.insert(&gate);
                        }
                        forward.pass(end);
                    }
                }
                if intercept {
                    self.intercept_starttls(now, actions, out);
                } else if complete {
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
                self.content_bytes += used as u64;
                forward.pass(offset + used);
                if ended {
                    self.mode = Mode::Commands;
                    let summary = self.message.take().unwrap_or_default().finish(true);
                    self.counts.messages += 1;
                    let mut pending = Pending::new(Awaited::Content, now);
                    pending.message = Some(summary);
                    pending.tls = self.client_tls;
                    self.pending.push_back(pending);
                }
                used
            }
            Mode::Chunk { remaining, last } => {
                let take = input.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                let chunk = &input[..take];
                *remaining -= take as u64;
                self.content_bytes += take as u64;
                let done = *remaining == 0;
                let last = *last;
                if let Some(digest) = self.message.as_mut() {
                    digest.update(chunk);
                }
                out.content(chunk);
                forward.pass(offset + take);
                if done {
                    self.chunk_done(now, last, out);
                }
                take
            }
        }
    }

    /// A reply decides the framing of what the client sends after the last
    /// outstanding command: hold client bytes until it comes.
    fn blocked(&self) -> bool {
        match self.pending.back().map(|p| &p.awaited) {
            Some(Awaited::SaslResponse | Awaited::LocalStartTls) => true,
            Some(Awaited::Command(k)) => {
                matches!(k, CommandKind::Data | CommandKind::Auth { .. } | CommandKind::StartTls)
            }
            _ => false,
        }
    }

    /// Client bytes after a STARTTLS are not relayed until its reply: if it is
    /// 220 they were never meant for the server in plaintext.
    fn withheld(&self) -> bool {
        matches!(
            self.pending.back().map(|p| &p.awaited),
            Some(Awaited::LocalStartTls | Awaited::Command(CommandKind::StartTls))
        )
    }

    fn hold(&mut self, now: Instant, input: &[u8]) {
        self.held_since.get_or_insert(now);
        let room = MAX_HELD.saturating_sub(self.held.len());
        let kept = input.len().min(room);
        self.held.extend_from_slice(&input[..kept]);
        self.held_dropped += (input.len() - kept) as u64;
    }

    /// Processes held client bytes once the reply they waited for is in; what
    /// was withheld from the upstream goes there now.
    fn release_held(&mut self, now: Instant, was_withheld: bool, actions: &mut Actions<'_>, out: &mut impl Output) {
        if self.held.is_empty() || self.blocked() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let since = self.held_since.take().unwrap_or(now);
        let mut forward = Forward::new(&held);
        self.rereading = if was_withheld { Rereading::Withheld } else { Rereading::Relayed };
        self.client_input(since, &held, &mut forward, actions, out);
        self.rereading = Rereading::No;
        if was_withheld {
            actions.to_upstream.to_mut().extend_from_slice(&forward.finish());
        }
    }

    /// Drops held client bytes that came after an accepted STARTTLS.
    fn discard_held_after_starttls(&mut self, now: Instant, out: &mut impl Output) {
        if !self.held.is_empty() {
            let t = self.clock.wall(self.held_since.take().unwrap_or(now));
            let held = std::mem::take(&mut self.held);
            let text = format!("the client sent {} bytes after STARTTLS, before its reply; discarded", held.len());
            self.note_bytes(t, NoteKind::ClientAfterStarttls, text, &held, out);
        }
    }

    /// A note about client bytes that were not framed: they are kept with it
    /// unless they may carry credentials the record must not hold.
    fn note_bytes(&self, t: String, kind: NoteKind, text: String, bytes: &[u8], out: &mut impl Output) {
        let auth_line =
            bytes.split(|&b| b == b'\n').any(|l| matches!(Command::parse(l).kind, CommandKind::Auth { .. }));
        if self.redaction != Redaction::None && (self.sasl.is_some() || auth_line) {
            out.note(t, kind, format!("{text}; not kept, as they may hold credentials"), None);
        } else {
            out.note(t, kind, format!("{text}; kept here"), Some(bytes));
        }
    }

    fn content_started(&mut self, now: Instant) {
        self.content_since = now;
        self.content_bytes = 0;
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
        let mut p = Pending::new(Awaited::Content, now);
        p.message = Some(summary);
        p.tls = self.client_tls;
        self.emit(p, None, now, out);
    }

    /// Whether the client line being framed was sent before the replies to
    /// what came before it.
    fn sent_pipelined(&self) -> bool {
        // Held bytes were all sent before the reply that released them, even
        // if nothing is outstanding now.
        self.rereading != Rereading::No || !self.pending.is_empty()
    }

    /// A complete client line in command or SASL mode.
    fn on_line(&mut self, now: Instant, out: &mut impl Output) {
        let mut pending = Pending::new(Awaited::SaslResponse, now);
        pending.pipelined = self.sent_pipelined();
        pending.tls = self.client_tls;
        if matches!(self.mode, Mode::SaslResponse) {
            self.mode = Mode::Commands;
            let line = self.lines.line();
            let mut record = CommandRecord::redacted(None, REDACTED.into());
            if let Some(sasl) = &mut self.sasl {
                let Recorded { line: shown, auth, .. } = sasl.response(line.text);
                record = self.sasl_line(None, line, shown);
                record.auth = auth;
            }
            pending.command = Some(record);
            self.pending.push_back(pending);
            return;
        }
        let line = self.lines.line();
        let command = Command::parse(line.text);
        let mut record = CommandRecord::from_line(Some(command.verb.clone()), line);
        if self.after_refused_auth {
            self.after_refused_auth = !is_known_verb(&command.verb);
            if self.after_refused_auth && self.redaction != Redaction::None {
                record = CommandRecord::redacted(None, REDACTED.into());
            }
        }
        if let CommandKind::Auth { mechanism, .. } = &command.kind {
            record = CommandRecord::redacted(Some(command.verb.clone()), format!("{} {REDACTED}", command.verb));
            if let Some((sasl, Recorded { line: shown, auth, .. })) =
                SaslSession::from_command_line(line.text, self.redaction, &self.key)
            {
                record = self.sasl_line(Some(command.verb.clone()), line, shown);
                record.auth = auth;
                self.sasl = Some(sasl);
            }
            self.note_auth(now, mechanism, out);
        }
        pending.command = Some(record);
        match command.kind {
            CommandKind::Bdat { size, last } => {
                if self.message.is_none() {
                    self.message = Some(MessageDigest::default());
                    out.message_start();
                }
                self.mode = Mode::Chunk { remaining: size, last };
                self.content_started(now);
            }
            _ => {
                // BDAT chunks without LAST, then another command: the message was abandoned.
                if let Some(digest) = self.message.take() {
                    self.close_message(now, digest.finish(false), out);
                }
            }
        }
        pending.awaited = Awaited::Command(command.kind);
        self.pending.push_back(pending);
        if let Mode::Chunk { remaining: 0, last } = self.mode {
            self.chunk_done(now, last, out);
        }
    }

    /// The record of a line of an AUTH exchange: as the SASL decoder shows it,
    /// or exactly as sent when nothing is redacted.
    fn sasl_line(&self, verb: Option<String>, line: Line<'_>, shown: String) -> CommandRecord {
        match self.redaction {
            Redaction::None => CommandRecord::from_line(verb, line),
            _ => CommandRecord::redacted(verb, shown),
        }
    }

    /// Notes what a person debugging authentication should know.
    fn note_auth(&mut self, now: Instant, mechanism: &str, out: &mut impl Output) {
        let t = self.clock.wall(now);
        if !self.client_tls {
            let text = "the client sent AUTH before TLS: its credentials crossed the network unencrypted";
            out.note(t.clone(), NoteKind::AuthBeforeTls, text.into(), None);
        }
        let unused: Vec<&str> =
            self.offered_auth.iter().map(String::as_str).filter(|m| !m.eq_ignore_ascii_case(mechanism)).collect();
        if !unused.is_empty() {
            let text = format!("the server also offered AUTH {}; the client used {mechanism}", unused.join(" "));
            out.note(t, NoteKind::AuthMechanismsUnused, text, None);
        }
    }

    /// The client's STARTTLS, which the proxy answers itself (it was not relayed).
    fn intercept_starttls(&mut self, now: Instant, actions: &mut Actions<'_>, out: &mut impl Output) {
        let line = self.lines.line();
        let mut pending = Pending::new(Awaited::LocalStartTls, now);
        pending.pipelined = self.sent_pipelined();
        pending.command = Some(CommandRecord::from_line(Some(Command::parse(line.text).verb), line));
        pending.tls = self.client_tls;
        self.pending.push_back(pending);
        if self.pending.len() == 1 {
            let wire = self.answer_starttls_locally(now, actions, out);
            actions.to_client.to_mut().extend_from_slice(&wire);
        }
    }

    /// Answers the STARTTLS at the front of the queue; returns the reply's wire form.
    fn answer_starttls_locally(&mut self, now: Instant, actions: &mut Actions<'_>, out: &mut impl Output) -> Vec<u8> {
        let Some(pending) = self.pending.pop_front() else { return Vec::new() };
        let (code, text) = match self.policy {
            StartTlsPolicy::ProxyOffers if !self.client_tls => (220, "2.0.0 Ready to start TLS"),
            StartTlsPolicy::Refused => {
                (454, "4.7.0 TLS not available: smtptap runs this side in plaintext (--client-tls off)")
            }
            _ => (503, "5.5.1 TLS already active"),
        };
        let reply = Reply { code, lines: vec![text.as_bytes().to_vec()], ..Reply::default() };
        self.emit_answered_by_proxy(pending, &reply, now, out);
        if code == 220 {
            self.tls_due = Some(Upgrade::Client);
            actions.upgrade = Some(Upgrade::Client);
            self.discard_held_after_starttls(now, out);
        } else {
            self.release_held(now, true, actions, out);
        }
        format!("{code} {text}\r\n").into_bytes()
    }

    fn on_reply(&mut self, now: Instant, mut reply: Reply, actions: &mut Actions<'_>, out: &mut impl Output) {
        let Some(pending) = self.pending.pop_front() else {
            // A reply nobody asked for (e.g. a 421 before closing).
            let mut p = Pending::new(Awaited::Content, now);
            p.tls = self.client_tls;
            self.emit(p, Some(&reply), now, out);
            return;
        };
        let code = reply.code;
        let was_withheld = matches!(pending.awaited, Awaited::Command(CommandKind::StartTls));
        let mut accepted_starttls = false;
        match &pending.awaited {
            Awaited::Command(CommandKind::Data) if code == 354 => {
                self.mode = Mode::Data(DotDecoder::default());
                self.content_started(now);
                self.message = Some(MessageDigest::default());
                out.message_start();
            }
            Awaited::Command(CommandKind::Auth { .. }) | Awaited::SaslResponse if code == 334 => {
                self.mode = Mode::SaslResponse;
                let text = reply.lines.first().cloned().unwrap_or_default();
                if let Some(shown) = self.sasl.as_mut().and_then(|sasl| sasl.challenge(&text)) {
                    // Some challenges (SCRAM's server signature) could help guess the password.
                    reply.lines = vec![shown.into_bytes()];
                }
            }
            Awaited::Command(CommandKind::Auth { .. }) | Awaited::SaslResponse => {
                self.sasl = None;
                self.after_refused_auth = !self.held.is_empty() || !(200..300).contains(&code);
            }
            Awaited::Command(CommandKind::Ehlo) if code == 250 => self.offered_auth = auth_mechanisms(&reply),
            Awaited::Command(CommandKind::StartTls) if code == 220 => {
                accepted_starttls = true;
                let upgrade = if pending.by_proxy { Upgrade::Upstream } else { Upgrade::Both };
                self.tls_due = Some(upgrade);
                actions.upgrade = Some(upgrade);
            }
            Awaited::Command(CommandKind::StartTls) if pending.by_proxy => actions.refused = Some(reply.clone()),
            Awaited::Command(CommandKind::Quit) if reply.is_positive() => self.quit_accepted = true,
            Awaited::Greeting => self.greeted = code == 220,
            _ => {}
        }
        self.emit(pending, Some(&reply), now, out);
        if accepted_starttls {
            self.discard_held_after_starttls(now, out);
        } else {
            self.release_held(now, was_withheld, actions, out);
        }
    }

    fn emit(&mut self, p: Pending, reply: Option<&Reply>, now: Instant, out: &mut impl Output) {
        let exchange = self.exchange(p, reply, now);
        out.exchange(exchange);
    }

    fn emit_answered_by_proxy(&mut self, p: Pending, reply: &Reply, now: Instant, out: &mut impl Output) {
        let mut exchange = self.exchange(p, Some(reply), now);
        exchange.answered_by = Some("proxy".into());
        out.exchange(exchange);
    }

    fn exchange(&mut self, p: Pending, reply: Option<&Reply>, now: Instant) -> Exchange {
        Exchange {
            seq: self.next_seq(),
            t: self.clock.wall(p.sent),
            tls: p.tls,
            pipelined: p.command.is_some().then_some(p.pipelined),
            command: p.command,
            message: p.message.map(MessageRecord::from),
            reply: reply.map(ReplyRecord::from),
            ms: reply.map(|_| millis(now.saturating_duration_since(p.sent))),
            origin: p.by_proxy.then(|| "proxy".into()),
            answered_by: None,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.counts.exchanges += 1;
        self.seq += 1;
        self.seq - 1
    }
}

/// Whether a partial line may still turn out to be `STARTTLS` (the proxy
/// withholds such a line until it knows).
fn could_be_starttls(partial: &[u8]) -> bool {
    const WORD: &[u8] = b"STARTTLS";
    let n = partial.len().min(WORD.len());
    partial[..n].eq_ignore_ascii_case(&WORD[..n]) && partial[n..].iter().all(|&b| b == b' ' || b == b'\r')
}

/// Milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// The mechanisms of an EHLO reply's `AUTH` line (RFC 4954 §3), also in
/// the old `AUTH=` form.
fn auth_mechanisms(reply: &Reply) -> Vec<String> {
    let mut mechanisms: Vec<String> = Vec::new();
    for line in reply.lines.iter().skip(1) {
        let text = String::from_utf8_lossy(line);
        let Some(rest) = text
            .get(..5)
            .filter(|k| k.eq_ignore_ascii_case("AUTH ") || k.eq_ignore_ascii_case("AUTH="))
            .map(|_| &text[5..])
        else {
            continue;
        };
        for m in rest.split_ascii_whitespace().map(str::to_ascii_uppercase) {
            if !mechanisms.contains(&m) {
                mechanisms.push(m);
            }
        }
    }
    mechanisms
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
    fn note(&mut self, t: String, kind: NoteKind, text: String, data: Option<&[u8]>) {
        if let Some(o) = self {
            o.note(t, kind, text, data);
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
        /// The bytes kept with notes, all together.
        noted: Vec<u8>,
        /// What the relay was told to send each way.
        to_upstream: Vec<u8>,
        to_client: Vec<u8>,
        upgrades: Vec<Upgrade>,
        refused: Vec<u16>,
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
        fn note(&mut self, _t: String, _kind: NoteKind, text: String, data: Option<&[u8]>) {
            self.notes.push(text);
            self.noted.extend_from_slice(data.unwrap_or_default());
        }
    }

    enum Step {
        C(&'static [u8]),
        S(&'static [u8]),
        /// A command the proxy sends itself.
        P(&'static str),
    }
    use Step::{C, P, S};

    fn config(policy: StartTlsPolicy) -> ObserverConfig {
        ObserverConfig { policy, redaction: Redaction::Secrets, key: FingerprintKey::from_bytes([7; 32]) }
    }

    /// Feeds the steps, each cut at `cuts` (offsets, wrapped to the step's length).
    fn observe(steps: &[Step], cuts: &[usize]) -> Collect {
        observe_with(StartTlsPolicy::Mirror, steps, cuts)
    }

    /// As `observe`, under `policy`, acting on upgrades as the relay would.
    fn observe_with(policy: StartTlsPolicy, steps: &[Step], cuts: &[usize]) -> Collect {
        let clock = Clock::now();
        let now = clock.started;
        let mut obs = Observer::new(clock, config(policy));
        let mut out = Collect::default();
        for (i, step) in steps.iter().enumerate() {
            let (bytes, client) = match step {
                C(b) => (*b, true),
                S(b) => (*b, false),
                P(line) => {
                    out.to_upstream.extend_from_slice(&obs.proxy_command(now, line));
                    continue;
                }
            };
            let cut = cuts.get(i).map_or(0, |c| c % (bytes.len() + 1));
            for part in [&bytes[..cut], &bytes[cut..]] {
                let actions =
                    if client { obs.client_bytes(now, part, &mut out) } else { obs.server_bytes(now, part, &mut out) };
                out.to_upstream.extend_from_slice(&actions.to_upstream);
                out.to_client.extend_from_slice(&actions.to_client);
                out.refused.extend(actions.refused.map(|r| r.code));
                out.upgrades.extend(actions.upgrade);
            }
            // The relay handshakes right after the read that called for it; a
            // step is one read that the cut may have split.
            if let Some(&upgrade) = out.upgrades.last()
                && obs.tls_due.is_some()
            {
                obs.tls_started(upgrade);
            }
        }
        obs.finish(now, &mut out);
        out
    }

    /// All bytes of one direction, in order.
    fn sent(steps: &[Step], client: bool) -> Vec<u8> {
        steps
            .iter()
            .filter_map(|s| match (s, client) {
                (C(b), true) | (S(b), false) => Some(*b),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
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

    fn without(all: Vec<u8>, cut: &[u8]) -> Vec<u8> {
        let at = memchr::memmem::find(&all, cut).expect("present");
        [&all[..at], &all[at + cut.len()..]].concat()
    }

    #[test]
    fn mirrored_starttls_upgrades_both_and_drops_injections() {
        let steps = [
            S(b"220 mx\r\n"),
            C(b"EHLO c\r\n"),
            S(b"250-mx\r\n250 STARTTLS\r\n"),
            C(b"STARTTLS\r\nMAIL FROM:<injected>\r\n"),
            S(b"220 go ahead\r\n250 injected reply\r\n"),
            C(b"EHLO c\r\n"),
            S(b"250 mx\r\n"),
        ];
        for cut in 0..40 {
            let out = observe(&steps, &[0, 0, cut, cut, cut]);
            assert_eq!(verbs(&out), [v("", 220), v("EHLO", 250), v("STARTTLS", 220), v("EHLO", 250)], "cut {cut}");
            assert_eq!(out.upgrades, [Upgrade::Both]);
            assert_eq!(out.to_upstream, without(sent(&steps, true), b"MAIL FROM:<injected>\r\n"), "cut {cut}");
            assert_eq!(out.to_client, without(sent(&steps, false), b"250 injected reply\r\n"));
            let tls: Vec<bool> = out.exchanges.iter().map(|e| e.tls).collect();
            assert_eq!(tls, [false, false, false, true]);
            assert!(out.notes.iter().any(|n| n.contains("after STARTTLS, before its reply")), "{:?}", out.notes);
            assert!(out.notes.iter().any(|n| n.contains("after its 220")), "{:?}", out.notes);
        }
    }

    #[test]
    fn mirrored_starttls_refused_releases_what_followed() {
        let steps = [S(b"220 mx\r\n"), C(b"STARTTLS\r\nNOOP\r\n"), S(b"454 4.7.0 not now\r\n250 ok\r\n")];
        let out = observe(&steps, &[]);
        assert_eq!(verbs(&out), [v("", 220), v("STARTTLS", 454), v("NOOP", 250)]);
        assert_eq!(out.to_upstream, sent(&steps, true), "NOOP relayed once the refusal was in");
        assert_eq!(out.to_client, sent(&steps, false));
        assert!(out.upgrades.is_empty());
    }

    #[test]
    fn proxy_offers_and_answers_starttls_itself() {
        let steps = [
            S(b"220 mx\r\n"),
            C(b"EHLO c\r\n"),
            S(b"250-mx\r\n250 PIPELINING\r\n"),
            C(b"starttls\r\n"),
            C(b"EHLO c\r\n"),
            S(b"250-mx\r\n250 STARTTLS\r\n"),
        ];
        for cut in 0..30 {
            let out = observe_with(StartTlsPolicy::ProxyOffers, &steps, &[0, 0, cut, cut, cut, cut]);
            assert_eq!(verbs(&out), [v("", 220), v("EHLO", 250), v("STARTTLS", 220), v("EHLO", 250)], "cut {cut}");
            assert_eq!(out.exchanges[2].answered_by.as_deref(), Some("proxy"));
            assert_eq!(out.upgrades, [Upgrade::Client]);
            assert_eq!(out.to_upstream, b"EHLO c\r\nEHLO c\r\n", "STARTTLS never reaches the server");
            let to_client = String::from_utf8(out.to_client.clone()).unwrap();
            assert_eq!(
                to_client,
                "220 mx\r\n250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n250 mx\r\n",
                "offered before TLS, withdrawn inside it"
            );
            assert!(out.exchanges[3].tls);
        }
    }

    #[test]
    fn refused_policy_withdraws_and_answers_454_but_relays_lookalikes() {
        let steps = [
            S(b"220 mx\r\n"),
            C(b"EHLO c\r\n"),
            S(b"250-mx\r\n250-STARTTLS\r\n250 SIZE 5\r\n"),
            C(b"STARTTLS\r\nSTART\r\nSTARTTLSX\r\n"),
            S(b"500 what\r\n500 what\r\n"),
        ];
        for cut in 0..40 {
            let out = observe_with(StartTlsPolicy::Refused, &steps, &[0, 0, cut, cut, cut]);
            assert_eq!(
                verbs(&out),
                [v("", 220), v("EHLO", 250), v("STARTTLS", 454), v("START", 500), v("STARTTLSX", 500)],
                "cut {cut}"
            );
            assert_eq!(out.to_upstream, b"EHLO c\r\nSTART\r\nSTARTTLSX\r\n");
            let to_client = String::from_utf8(out.to_client.clone()).unwrap();
            assert!(to_client.starts_with("220 mx\r\n250-mx\r\n250 SIZE 5\r\n454 4.7.0 "), "{to_client}");
            assert!(out.upgrades.is_empty());
        }
    }

    #[test]
    fn a_line_of_starttls_and_endless_spaces_is_not_withheld_for_ever() {
        let clock = Clock::now();
        let now = clock.started;
        let mut obs = Observer::new(clock, config(StartTlsPolicy::Refused));
        let mut out = Collect::default();
        obs.server_bytes(now, b"220 mx\r\n", &mut out);
        assert!(obs.client_bytes(now, b"STARTTLS   ", &mut out).to_upstream.is_empty(), "might still be STARTTLS");
        let spaces = vec![b' '; 100_000];
        let relayed = obs.client_bytes(now, &spaces, &mut out).to_upstream.len();
        assert_eq!(relayed, 100_000 + 11, "withheld bytes released once the line is too long to be STARTTLS");
        assert_eq!(obs.take_withheld().0, b"");
    }

    #[test]
    fn withheld_bytes_are_handed_back_when_a_side_closes() {
        let clock = Clock::now();
        let now = clock.started;
        let mut obs = Observer::new(clock, config(StartTlsPolicy::Refused));
        let mut out = Collect::default();
        obs.server_bytes(now, b"220 mx\r\n", &mut out);
        assert!(obs.client_bytes(now, b"EHLO c\r\nSTAR", &mut out).to_upstream.ends_with(b"EHLO c\r\n"));
        assert!(obs.server_bytes(now, b"250-mx\r\n", &mut out).to_client.is_empty());
        assert_eq!(obs.take_withheld(), (b"STAR".to_vec(), b"250-mx\r\n".to_vec()));
        assert_eq!(obs.take_withheld(), (Vec::new(), Vec::new()));
    }

    #[test]
    fn proxy_upgrades_the_upstream_on_its_own() {
        let steps = [
            S(b"220 mx\r\n"),
            P("EHLO smtptap"),
            S(b"250-mx\r\n250 STARTTLS\r\n"),
            P("STARTTLS"),
            S(b"220 go\r\n"),
            C(b"EHLO c\r\n"),
            S(b"250 mx\r\n"),
        ];
        let out = observe_with(StartTlsPolicy::Refused, &steps, &[]);
        assert_eq!(verbs(&out), [v("", 220), v("EHLO", 250), v("STARTTLS", 220), v("EHLO", 250)]);
        let origins: Vec<Option<&str>> = out.exchanges.iter().map(|e| e.origin.as_deref()).collect();
        assert_eq!(origins, [None, Some("proxy"), Some("proxy"), None]);
        assert_eq!(out.upgrades, [Upgrade::Upstream]);
        assert_eq!(out.to_client, b"220 mx\r\n250 mx\r\n", "replies to the proxy stay with the proxy");
        let steps = [S(b"220 mx\r\n"), P("STARTTLS"), S(b"502 5.5.1 no\r\n")];
        let out = observe_with(StartTlsPolicy::Refused, &steps, &[]);
        assert_eq!(out.refused, [502]);
        assert!(out.upgrades.is_empty());
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
        assert_eq!(verbs(&out), [v("", 220), v("MAIL", 250), v("RCPT", 250), (Some("DATA".into()), None)]);
        let cut_short = out.exchanges[2].reply.as_ref().unwrap();
        assert_eq!((cut_short.lines.as_slice(), cut_short.truncated), (&["partial".to_owned()][..], true));
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

    /// Every form a secret could leak in: clear, base64 at each alignment, hex.
    fn leak_forms(secret: &str) -> Vec<String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut forms = vec![secret.to_owned(), secret.bytes().map(|b| format!("{b:02x}")).collect()];
        for pad in 0..3 {
            let mut bytes = vec![0u8; pad];
            bytes.extend_from_slice(secret.as_bytes());
            let encoded = b64.encode(&bytes);
            // The characters that depend only on the secret's bytes.
            let start = (pad * 4).div_ceil(3) + 1;
            let end = encoded.trim_end_matches('=').len().saturating_sub(2);
            if end > start + 3 {
                forms.push(encoded[start..end].to_owned());
            }
        }
        forms
    }

    #[test]
    fn greeted_only_by_a_220() {
        for (greeting, ready) in [(&b"220 mx ESMTP\r\n"[..], true), (b"554 5.7.1 go away\r\n", false)] {
            let clock = Clock::now();
            let mut obs = Observer::new(clock, config(StartTlsPolicy::Refused));
            assert!(!obs.greeted());
            obs.server_bytes(clock.started, greeting, &mut Collect::default());
            assert_eq!(obs.greeted(), ready);
        }
    }

    #[test]
    fn phase_names_who_is_awaited() {
        let clock = Clock::now();
        let now = clock.started;
        let mut obs = Observer::new(clock, config(StartTlsPolicy::Mirror));
        let mut out = Collect::default();
        assert_eq!(obs.phase(), "waiting for the upstream: the greeting");
        obs.server_bytes(now, b"220 mx\r\n", &mut out);
        assert_eq!(obs.phase(), "waiting for the client: its next command");
        obs.client_bytes(now, b"DATA\r\n", &mut out);
        assert_eq!(obs.phase(), "waiting for the upstream: the reply to DATA");
        obs.server_bytes(now, b"354 go\r\n", &mut out);
        assert_eq!(obs.phase(), "waiting for the client: message content (DATA)");
    }

    #[test]
    fn times_are_rfc3339_utc_with_microseconds() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-28T19:36:24.123456789Z").unwrap().with_timezone(&Utc);
        assert_eq!(format_time(t), "2026-11-28T19:36:24.123456Z");
        let t = chrono::DateTime::parse_from_rfc3339("0999-01-02T03:04:05Z").unwrap().with_timezone(&Utc);
        assert_eq!(format_time(t), "0999-01-02T03:04:05.000000Z");
    }

    #[test]
    fn leak_forms_find_a_password_inside_any_base64_blob() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        for prefix in ["", "\0u\0", "\0us\0", "\0use\0"] {
            let blob = b64.encode(format!("{prefix}S3cr3t-password"));
            assert!(leak_forms("S3cr3t-password").iter().any(|f| blob.contains(f.as_str())), "{prefix:?}");
        }
    }

    /// SMTP smuggling (CVE-2023-51764/51765/51766) through the whole
    /// observer: at every read split, none of these ends the message, the
    /// smuggled command never becomes an exchange, every byte is relayed as
    /// sent, and the message ends exactly at the real `CRLF . CRLF`.
    #[test]
    fn smuggled_end_of_data_never_ends_the_message_at_any_split() {
        let smuggled: &[&[u8]] = &[b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r"];
        for mark in smuggled {
            let content: &'static [u8] =
                [b"Subject: s\r\n\r\nhi".as_slice(), mark, b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n"].concat().leak();
            let client: &'static [u8] = [content, b".\r\nQUIT\r\n"].concat().leak();
            let steps = [
                S(b"220 mx\r\n"),
                C(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"),
                S(b"250 ok\r\n250 ok\r\n354 go\r\n"),
                C(client),
                S(b"250 queued\r\n221 bye\r\n"),
            ];
            // What a strict server delivers: the content in one piece, unstuffed.
            let mut want = Vec::new();
            let (used, ended) = DotDecoder::default().decode(client, &mut |c| want.extend_from_slice(c));
            assert_eq!((used, ended), (content.len() + 3, true), "{mark:?}");
            for cut in 0..=client.len() {
                let out = observe(&steps, &[0, 0, 0, cut]);
                assert_eq!(
                    verbs(&out),
                    [v("", 220), v("MAIL", 250), v("RCPT", 250), v("DATA", 354), v("", 250), v("QUIT", 221)],
                    "{mark:?} cut {cut}"
                );
                assert_eq!(out.contents, [want.clone()], "{mark:?} cut {cut}");
                assert_eq!(out.to_upstream, sent(&steps, true), "relayed unchanged: {mark:?} cut {cut}");
                assert_eq!(out.to_client, sent(&steps, false));
                let message = out.exchanges[4].message.as_ref().expect("message");
                assert_eq!((message.size, message.complete), (want.len() as u64, true));
            }
        }
    }

    /// An AUTH written with a tab is still an AUTH: the SASL response
    /// pipelined behind it is never kept, even when no reply ever came.
    #[test]
    fn a_held_sasl_response_is_never_kept_whatever_separates_the_auth_words() {
        for auth in [&b"AUTH PLAIN\r\n"[..], b"auth\tplain\r\n", b" AUTH \t PLAIN\r\n"] {
            let client: &'static [u8] = [auth, b"AGpvZQBTM2NyM3QtcGFzcw==\r\n"].concat().leak();
            let out = observe(&[S(b"220 mx\r\n"), C(client)], &[]);
            let json = serde_json::to_string(&out.exchanges).unwrap();
            let noted = String::from_utf8_lossy(&out.noted);
            for form in leak_forms("S3cr3t-pass") {
                assert!(!json.contains(&form) && !noted.contains(&form), "{auth:?}: {form} leaked: {json} {noted}");
            }
            assert_eq!(out.exchanges[1].command.as_ref().unwrap().verb.as_deref(), Some("AUTH"), "{auth:?}");
        }
    }

    /// SASL responses a client sent ahead of a challenge that never came
    /// (the server refused the AUTH) are recorded redacted, not as commands,
    /// whether they reached the proxy before the refusal (held) or after it;
    /// the first real command after them is recorded as usual.
    #[test]
    fn responses_sent_ahead_of_a_refused_auth_are_redacted() {
        let held: &[Step] = &[
            S(b"220 mx\r\n"),
            C(b"AUTH LOGIN\r\ndXNlckB4LnRlc3Q=\r\nUzNjcjN0LXBhc3M=\r\nNOOP\r\n"),
            S(b"504 5.5.4 no LOGIN\r\n500 what\r\n500 what\r\n250 ok\r\n"),
        ];
        let after: &[Step] = &[
            S(b"220 mx\r\n"),
            C(b"AUTH LOGIN\r\n"),
            S(b"504 5.5.4 no LOGIN\r\n"),
            C(b"dXNlckB4LnRlc3Q=\r\nUzNjcjN0LXBhc3M=\r\nNOOP\r\n"),
            S(b"500 what\r\n500 what\r\n250 ok\r\n"),
        ];
        for steps in [held, after] {
            let out = observe(steps, &[]);
            assert_eq!(verbs(&out), [v("", 220), v("AUTH", 504), (None, Some(500)), (None, Some(500)), v("NOOP", 250)]);
            let lines: Vec<&str> =
                out.exchanges[2..].iter().map(|e| e.command.as_ref().unwrap().line.as_str()).collect();
            assert_eq!(lines, ["<redacted>", "<redacted>", "NOOP"]);
            let json = serde_json::to_string(&out.exchanges).unwrap();
            for form in leak_forms("S3cr3t-pass") {
                assert!(!json.contains(&form), "{form} leaked: {json}");
            }
        }
    }

    /// Commands held behind AUTH or DATA were sent without waiting, so they
    /// are recorded as pipelined even when their release leaves nothing
    /// outstanding.
    #[test]
    fn commands_held_behind_a_blocking_command_are_pipelined() {
        let behind_auth: &[Step] =
            &[S(b"220 mx\r\n"), C(b"AUTH PLAIN AHVzZXIAcGFzcw==\r\nMAIL FROM:<a@b>\r\n"), S(b"235 ok\r\n250 ok\r\n")];
        let behind_data: &[Step] =
            &[S(b"220 mx\r\n"), C(b"MAIL FROM:<a@b>\r\nDATA\r\nQUIT\r\n"), S(b"250 ok\r\n554 no\r\n221 bye\r\n")];
        let (t, f) = (Some(true), Some(false));
        for (steps, want) in [(behind_auth, vec![f, t]), (behind_data, vec![f, t, t])] {
            for cut in 0..50 {
                let out = observe(steps, &[0, cut]);
                let pipelined: Vec<Option<bool>> = out.exchanges[1..].iter().map(|e| e.pipelined).collect();
                assert_eq!(pipelined, want, "cut {cut}: {:?}", verbs(&out));
            }
        }
    }

    /// Held client bytes that were relayed when they came (behind DATA or
    /// AUTH) are only framed when released: a STARTTLS among them went to
    /// the server and is its to answer, and nothing is relayed twice.
    #[test]
    fn held_bytes_relayed_already_are_neither_intercepted_nor_relayed_again() {
        let split_after_data: &[Step] = &[
            S(b"220 mx\r\n"),
            C(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nST"),
            S(b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n"),
            C(b"AT\r\n"),
            S(b"211 stat\r\n"),
        ];
        let starttls_after_data: &[Step] = &[
            S(b"220 mx\r\n"),
            C(b"MAIL FROM:<a@b>\r\nDATA\r\nSTARTTLS\r\n"),
            S(b"250 ok\r\n554 no\r\n502 no tls here\r\n"),
        ];
        for policy in [StartTlsPolicy::ProxyOffers, StartTlsPolicy::Refused] {
            for steps in [split_after_data, starttls_after_data] {
                let out = observe_with(policy, steps, &[]);
                assert_eq!(out.to_upstream, sent(steps, true), "{policy:?}: relayed once, unchanged");
                assert_eq!(out.to_client, sent(steps, false), "{policy:?}: only the server answered");
                assert!(out.upgrades.is_empty(), "{policy:?}");
            }
            let out = observe_with(policy, starttls_after_data, &[]);
            assert_eq!(verbs(&out).last(), Some(&v("STARTTLS", 502)));
            assert!(out.exchanges.iter().all(|e| e.answered_by.is_none()));
        }
    }

    /// Two pipelined STARTTLS the proxy refuses itself: both refusals reach
    /// the client, the second one released by the first.
    #[test]
    fn every_local_starttls_answer_reaches_the_client() {
        let steps: &[Step] = &[S(b"220 mx\r\n"), C(b"EHLO c\r\nSTARTTLS\r\nSTARTTLS\r\n"), S(b"250 mx\r\n")];
        let out = observe_with(StartTlsPolicy::Refused, steps, &[]);
        let text = String::from_utf8_lossy(&out.to_client).into_owned();
        assert_eq!(text.matches("454 4.7.0").count(), 2, "{text}");
        assert_eq!(out.to_upstream, b"EHLO c\r\n");
    }

    /// A reply the session ended in the middle of is recorded as far as it
    /// came, with the command it answered, marked truncated; with no command
    /// outstanding it is unsolicited, never paired with an unfinished line.
    #[test]
    fn a_reply_cut_short_is_recorded_as_far_as_it_came() {
        let out = observe(&[S(b"220 mx\r\n"), C(b"MAIL FR"), S(b"421-4.3.2 bye\r\n421-mo")], &[]);
        let with_command: Vec<_> = out.exchanges.iter().map(|e| (e.command.is_some(), e.reply.is_some())).collect();
        assert_eq!(with_command, [(false, true), (false, true), (true, false)], "{:?}", verbs(&out));
        let steps: &[Step] =
            &[S(b"220 mx\r\n"), C(b"MAIL FROM:<a@b>\r\n"), S(b"421-4.3.2 shutting down\r\n421-disk fu")];
        for cut in 0..40 {
            let out = observe(steps, &[0, 0, cut]);
            assert_eq!(verbs(&out), [v("", 220), v("MAIL", 421)], "cut {cut}");
            let reply = out.exchanges[1].reply.as_ref().unwrap();
            assert_eq!(reply.lines, ["4.3.2 shutting down", "disk fu"], "cut {cut}");
            assert!(reply.truncated);
        }
    }

    /// An unfinished line the session ends on is redacted as a whole one
    /// would be: here a SASL response to an AUTH the server refused.
    #[test]
    fn an_unfinished_response_after_a_refused_auth_is_redacted() {
        let out = observe(
            &[S(b"220 mx\r\n"), C(b"AUTH PLAIN\r\n"), S(b"504 5.5.4 no\r\n"), C(b"AHVzZXIAUzNjcjN0LXBhc3M=")],
            &[],
        );
        let last = out.exchanges.last().unwrap().command.as_ref().unwrap();
        assert!(last.incomplete && last.verb.is_none() && last.line == "<redacted>", "{last:?}");
        let json = serde_json::to_string(&out.exchanges).unwrap();
        for form in leak_forms("S3cr3t-pass") {
            assert!(!json.contains(&form), "{form} leaked: {json}");
        }
    }

    /// A client trickling message content runs out of time at the rate floor.
    #[test]
    fn content_deadline_grows_with_the_bytes_received() {
        let clock = Clock::now();
        let t0 = clock.started;
        let idle = Duration::from_secs(10);
        let mut obs = Observer::new(clock, config(StartTlsPolicy::Mirror));
        let mut out = Collect::default();
        obs.server_bytes(t0, b"220 mx\r\n", &mut out);
        assert_eq!(obs.client_deadline(idle), None, "between commands only the idle timeout applies");
        obs.client_bytes(t0, b"DA", &mut out);
        let line = obs.client_deadline(idle).unwrap();
        assert_eq!((line.at, line.sending), (t0 + idle, Sending::Line));
        obs.client_bytes(t0 + Duration::from_secs(1), b"TA\r\n", &mut out);
        let t1 = t0 + Duration::from_secs(2);
        obs.server_bytes(t1, b"354 go\r\n", &mut out);
        let content = obs.client_deadline(idle).unwrap();
        assert_eq!((content.at, content.since, content.sending), (t1 + idle, t1, Sending::Content { bytes: 0 }));
        obs.client_bytes(t1 + Duration::from_secs(5), &vec![b'x'; 5000], &mut out);
        let grown = obs.client_deadline(idle).unwrap();
        assert_eq!(grown.at, t1 + idle + Duration::from_secs(5000 / MIN_CONTENT_RATE));
        assert_eq!(grown.sending, Sending::Content { bytes: 5000 });
        obs.client_bytes(t1, b"\r\n.\r\n", &mut out);
        assert_eq!(obs.client_deadline(idle), None, "the content ended");
        obs.server_bytes(t1, b"250 ok\r\n", &mut out);
        obs.client_bytes(t1, b"BDAT 10 LAST\r\nabc", &mut out);
        assert_eq!(obs.client_deadline(idle).map(|d| d.sending), Some(Sending::Content { bytes: 3 }));
    }

    /// The timer's reason: an overdue line or message while the client still
    /// sends, plain idleness once it has been silent for the idle timeout.
    #[test]
    fn a_timeout_names_what_was_overdue() {
        let clock = Clock::now();
        let t0 = clock.started;
        let idle = Duration::from_secs(10);
        let s = Duration::from_secs;
        let mut obs = Observer::new(clock, config(StartTlsPolicy::Mirror));
        let mut out = Collect::default();
        obs.server_bytes(t0, b"220 mx\r\n", &mut out);
        assert!(obs.timed_out(t0 + idle, idle).reply.contains("no data for 10 s"));
        obs.client_bytes(t0, b"NO", &mut out);
        obs.client_bytes(t0 + s(9), b"O", &mut out);
        let line = obs.timed_out(t0 + idle, idle);
        assert!(line.reply.contains("command line not completed within 10 s"), "{line:?}");
        assert_eq!(line.why, "a command line took over 10 s, waiting for the client: the rest of a command line");
        let silent = obs.timed_out(t0 + s(19), idle);
        assert!(silent.reply.contains("no data for 10 s") && silent.why.starts_with("nothing for 10 s"), "{silent:?}");
        obs.client_bytes(t0 + s(19), b"P\r\nDATA\r\n", &mut out);
        obs.server_bytes(t0 + s(20), b"250 ok\r\n354 go\r\n", &mut out);
        obs.client_bytes(t0 + s(29), b"x", &mut out);
        let content = obs.timed_out(t0 + s(31), idle);
        assert!(content.reply.contains("message content too slow"), "{content:?}");
        assert_eq!(
            content.why,
            "message content too slow: 1 bytes in 11 s, waiting for the client: message content (DATA)"
        );
    }

    proptest! {
        /// Random credentials over PLAIN and LOGIN, cut anywhere: nothing the
        /// observer emits holds the password in any form.
        #[test]
        fn auth_secrets_never_leak_at_any_split(
            user in "[a-z]{1,8}@[a-z]{1,6}\\.test",
            password in "[ -~]{8,24}",
            cuts in proptest::collection::vec(0usize..64, 8),
        ) {
            use base64::Engine as _;
            let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
            let plain = b64(format!("\0{user}\0{password}").as_bytes());
            let client: Vec<Vec<u8>> = vec![
                format!("AUTH PLAIN {plain}\r\n").into_bytes(),
                b"AUTH LOGIN\r\n".to_vec(),
                format!("{}\r\n", b64(user.as_bytes())).into_bytes(),
                format!("{}\r\n", b64(password.as_bytes())).into_bytes(),
            ];
            let server: Vec<&[u8]> =
                vec![b"535 5.7.8 no\r\n", b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", b"235 2.7.0 ok\r\n"];
            let clock = Clock::now();
            let now = clock.started;
            let mut obs = Observer::new(clock, config(StartTlsPolicy::Refused));
            let mut out = Collect::default();
            obs.server_bytes(now, b"220 mx\r\n", &mut out);
            for (i, (c, s)) in client.iter().zip(&server).enumerate() {
                let cut = cuts[i] % (c.len() + 1);
                obs.client_bytes(now, &c[..cut], &mut out);
                obs.client_bytes(now, &c[cut..], &mut out);
                let cut = cuts[i + 4] % (s.len() + 1);
                obs.server_bytes(now, &s[..cut], &mut out);
                obs.server_bytes(now, &s[cut..], &mut out);
            }
            obs.finish(now, &mut out);
            prop_assert_eq!(out.exchanges.len(), 5);
            let json = serde_json::to_string(&out.exchanges).unwrap() + &out.notes.join("\n");
            for form in leak_forms(&password).iter().chain([&plain]) {
                prop_assert!(!json.contains(form.as_str()), "{} leaked in {}", form, json);
            }
            prop_assert!(json.contains(&user), "the identity is kept");
        }

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

        /// Random garbage both ways, framing words included, cut anywhere:
        /// the observer never panics, relays every byte as it came (no
        /// STARTTLS, so nothing is withheld), and its record stays bounded.
        #[test]
        fn garbage_is_relayed_unchanged_and_recorded_in_bounds(
            reads in proptest::collection::vec((any::<bool>(), proptest::collection::vec(token(), 0..12)), 0..40),
        ) {
            let clock = Clock::now();
            let now = clock.started;
            let mut obs = Observer::new(clock, config(StartTlsPolicy::Mirror));
            let mut out = Collect::default();
            let (mut client, mut server) = (Vec::new(), Vec::new());
            for (from_client, tokens) in &reads {
                let bytes = tokens.concat();
                let actions = if *from_client {
                    client.extend_from_slice(&bytes);
                    obs.client_bytes(now, &bytes, &mut out)
                } else {
                    server.extend_from_slice(&bytes);
                    obs.server_bytes(now, &bytes, &mut out)
                };
                out.to_upstream.extend_from_slice(&actions.to_upstream);
                out.to_client.extend_from_slice(&actions.to_client);
                prop_assert!(actions.upgrade.is_none());
            }
            obs.finish(now, &mut out);
            let (to_upstream, to_client) = obs.take_withheld();
            prop_assert!(to_upstream.is_empty() && to_client.is_empty());
            prop_assert_eq!(&out.to_upstream, &client);
            prop_assert_eq!(&out.to_client, &server);
            let lines = [&client, &server].iter().map(|b| b.iter().filter(|&&c| c == b'\n').count()).sum::<usize>();
            prop_assert!(out.exchanges.len() <= lines + 4, "{} exchanges for {lines} lines", out.exchanges.len());
            let json = serde_json::to_string(&out.exchanges).unwrap();
            prop_assert!(json.len() <= 8 * (client.len() + server.len()) + 600 * out.exchanges.len());
        }
    }

    /// Pieces of SMTP and of garbage, for random sessions.
    fn token() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                &b"MAIL FROM:<a@x>"[..],
                b"DATA",
                b"BDAT 7",
                b"BDAT 3 LAST",
                b"AUTH PLAIN",
                b"AUTH LOGIN x",
                b"EHLO c",
                b"QUIT",
                b"RSET",
                b".",
                b"\r\n",
                b"\n",
                b"\r",
                b"\0",
                b"\xff\xfe",
                b"250 ok",
                b"250-",
                b"354 go",
                b"334 VXNlcg==",
                b"220 mx",
                b"535 no",
                b"421 bye",
                b"\r\n.\r\n",
            ])
            .prop_map(<[u8]>::to_vec),
            proptest::collection::vec(any::<u8>(), 0..8),
        ]
    }
}
