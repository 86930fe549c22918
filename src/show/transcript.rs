//! The transcript of one session, in swaks' convention: `<-  ` the server,
//! ` -> ` the client, `<~  `/` ~> ` the same inside TLS, and `** ` for what
//! smtptap adds: session facts, TLS handshakes, notes, commands the proxy
//! sent or answered itself, message summaries (and with `--body`, content).

use super::text::{RESET, body_bytes, clock, fmt_duration, fmt_ms, fmt_size, parse_time, printable};
use super::{Options, Timing};
use crate::auth::AuthRecord;
use crate::record::format::{Exchange, MessageRecord, Record, ReplyRecord, SessionEnd, SessionInfo, TlsInfo, TlsSide};
use crate::record::reader::{self, Problem, ReadError, Reader};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

/// Lines of message content printed with `--body`.
pub const BODY_LINES: usize = 20;

/// Longest message line shown whole with `--body`.
pub const BODY_LINE_CHARS: usize = 200;

/// Streams one recording's transcript to `out`. The outer error is from
/// writing; the inner one from reading the recording.
pub(super) fn transcript_of(path: &Path, opts: Options, out: &mut impl Write) -> io::Result<Result<(), ReadError>> {
    let (mut reader, info) = match Reader::open(path) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let mut t = Transcript::new(opts);
    let mut text = String::new();
    t.header(&info, &mut text);
    let mut saw_end = false;
    while let Some(record) = reader.next_record() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                out.write_all(text.as_bytes())?;
                return Ok(Err(e));
            }
        };
        saw_end |= matches!(record, Record::End(_));
        t.record(record, &mut text);
        if text.len() > 64 * 1024 {
            out.write_all(text.as_bytes())?;
            text.clear();
        }
    }
    t.finish(saw_end, reader.truncated, &reader.problems, &mut text);
    out.write_all(text.as_bytes())?;
    Ok(Ok(()))
}

/// A whole recording's transcript.
pub fn render(recording: &reader::Recording, opts: Options) -> String {
    let mut t = Transcript::new(opts);
    let mut text = String::new();
    t.header(&recording.session, &mut text);
    for record in &recording.records {
        t.record(record.clone(), &mut text);
    }
    t.finish(recording.end().is_some(), recording.truncated, &recording.problems, &mut text);
    text
}

/// Who a line is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Client,
    Server(u16),
    /// smtptap's own commands towards the upstream and their replies.
    ProxyClient,
    ProxyServer(u16),
    Note,
}

/// When a line happened: `ms` after the time `t`; `latency` is shown in the
/// `--latency` column.
#[derive(Debug, Clone, Copy)]
struct Stamp<'a> {
    t: &'a str,
    ms: f64,
    latency: Option<f64>,
}

impl Stamp<'_> {
    fn at(t: &str) -> Stamp<'_> {
        Stamp { t, ms: 0.0, latency: None }
    }
}

/// Renders one session, record by record. Pipelined commands are held until
/// their batch is complete, then shown as they travelled: the commands,
/// then the replies.
pub struct Transcript {
    opts: Options,
    group: Vec<Exchange>,
    /// The reply in progress answers AUTH (so a `334` text is SASL data).
    in_auth: bool,
}

impl Transcript {
    pub fn new(opts: Options) -> Transcript {
        Transcript { opts, group: Vec::new(), in_auth: false }
    }

    fn line(&self, out: &mut String, at: Stamp<'_>, who: Who, tls: bool, text: &str) {
        let text = printable(text);
        match self.opts.timing {
            Timing::None => {}
            Timing::Timestamps => {
                let stamp = clock(at.t, at.ms);
                self.paint(out, "2", &stamp);
                out.push(' ');
            }
            Timing::Latency => {
                let shown = at.latency.map(fmt_ms).unwrap_or_default();
                self.paint(out, "2", &format!("{shown:>9}"));
                out.push(' ');
            }
        }
        let arrow = match (who, tls) {
            (Who::Client, false) => " -> ",
            (Who::Client, true) => " ~> ",
            (Who::Server(_), false) => "<-  ",
            (Who::Server(_), true) => "<~  ",
            (Who::ProxyClient, false) => "** proxy  -> ",
            (Who::ProxyClient, true) => "** proxy  ~> ",
            (Who::ProxyServer(_), false) => "** proxy <-  ",
            (Who::ProxyServer(_), true) => "** proxy <~  ",
            (Who::Note, _) => "** ",
        };
        let colour = match who {
            Who::Client => "36",
            Who::Server(code) | Who::ProxyServer(code) => match code {
                400..=499 => "33",
                500.. => "1;31",
                _ => "32",
            },
            Who::ProxyClient | Who::Note => "35",
        };
        self.paint(out, colour, &format!("{arrow}{text}"));
        out.push('\n');
    }

    fn paint(&self, out: &mut String, colour: &str, text: &str) {
        if self.opts.color {
            let _ = write!(out, "\x1b[{colour}m{text}{RESET}");
        } else {
            out.push_str(text);
        }
    }

    pub(super) fn note(&self, out: &mut String, t: &str, text: &str) {
        self.line(out, Stamp::at(t), Who::Note, false, text);
    }

    pub fn header(&mut self, s: &SessionInfo, out: &mut String) {
        let when = parse_time(&s.started)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| s.started.clone());
        let t = &s.started;
        self.note(out, t, &format!("session {} at {when} ({})", s.id, s.tool));
        self.note(out, t, &format!("client {} -> smtptap {} -> upstream {}", s.client, s.listen, s.upstream));
        if let (Some(c), Some(u)) = (s.client_tls, s.upstream_tls) {
            let mode = |m| serde_json::to_value(m).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            self.note(out, t, &format!("TLS towards the client: {}, towards the upstream: {}", mode(c), mode(u)));
        }
        if s.insecure_upstream {
            self.note(out, t, "the upstream's certificate is not verified (--insecure-upstream)");
        }
        match s.redact {
            Some(crate::auth::Redaction::None) => self.note(out, t, "this recording keeps secrets (--redact none)"),
            Some(crate::auth::Redaction::Identities) => {
                self.note(out, t, "identities are replaced by fingerprints (--redact identities)")
            }
            _ => {}
        }
    }

    pub fn record(&mut self, record: Record, out: &mut String) {
        match record {
            Record::Exchange(e) => {
                let joins = e.pipelined == Some(true) && e.origin.is_none() && !self.group.is_empty();
                if !joins {
                    self.flush(out);
                }
                if e.origin.is_some() {
                    self.exchanges(&[e], out);
                } else {
                    self.group.push(e);
                }
            }
            Record::Tls(tls) => {
                self.flush(out);
                self.tls(&tls, out);
            }
            Record::Note(n) => {
                self.flush(out);
                self.note(out, &n.t, &n.text);
            }
            Record::End(end) => {
                self.flush(out);
                self.end(&end, out);
            }
            Record::Session(s) => {
                self.flush(out);
                self.note(out, &s.started, &format!("another session record ({}) inside this one", s.id));
            }
        }
    }

    /// Prints what is held (a pipelined batch whose end is not known yet).
    pub fn flush(&mut self, out: &mut String) {
        let group = std::mem::take(&mut self.group);
        if !group.is_empty() {
            self.exchanges(&group, out);
        }
    }

    /// After the last record: says how the recording ends if it has no `end`.
    pub fn finish(&mut self, saw_end: bool, truncated: bool, problems: &[Problem], out: &mut String) {
        self.flush(out);
        for p in problems {
            self.note(out, "", &format!("{p}: skipped"));
        }
        if truncated {
            self.note(out, "", "the last line of the recording is cut short");
        }
        if !saw_end {
            self.note(
                out,
                "",
                "the recording stops here, without an end (the proxy was stopped, or the session is still going)",
            );
        }
    }

    fn exchanges(&mut self, group: &[Exchange], out: &mut String) {
        for e in group {
            self.client_side(e, out);
        }
        for e in group {
            self.server_side(e, out);
        }
    }

    fn client_side(&mut self, e: &Exchange, out: &mut String) {
        let who = if e.origin.is_some() { Who::ProxyClient } else { Who::Client };
        if let Some(c) = &e.command {
            let mut text = c.line.clone();
            if let Some(a) = &c.auth {
                text.push_str(&auth_suffix(a));
            }
            self.line(out, Stamp::at(&e.t), who, e.tls, &text);
            if let Some(length) = c.length {
                self.note(out, &e.t, &format!("the line above is cut: {length} octets in all"));
            }
            if c.incomplete {
                self.note(out, &e.t, "the session ended in the middle of this line");
            }
            let verb = c.verb.as_deref().unwrap_or("");
            if verb.eq_ignore_ascii_case("AUTH") {
                self.in_auth = true;
            } else if c.verb.is_some() {
                self.in_auth = false;
            }
        }
        if let Some(m) = &e.message {
            self.message(e, m, out);
            if e.command.is_none() && m.complete {
                self.line(out, Stamp::at(&e.t), who, e.tls, ".");
            }
        }
    }

    fn message(&self, e: &Exchange, m: &MessageRecord, out: &mut String) {
        let t = &e.t;
        let state = if m.complete { String::new() } else { ", incomplete: the session ended before its end".into() };
        self.note(out, t, &format!("message: {}, sha256 {}{state}", fmt_size(m.size), short_hash(&m.sha256)));
        for (key, name) in [("from", "From"), ("to", "To"), ("cc", "Cc"), ("subject", "Subject")] {
            if let Some(v) = m.headers.get(key) {
                self.note(out, t, &format!("  {name}: {v}"));
            }
        }
        if !self.opts.body {
            return;
        }
        let Some(bytes) = m.body.as_ref().and_then(body_bytes) else {
            self.note(out, t, "  (the body was not recorded: --no-bodies)");
            return;
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut lines = text.split("\r\n").collect::<Vec<_>>();
        if lines.last() == Some(&"") {
            lines.pop();
        }
        let who = if e.origin.is_some() { Who::ProxyClient } else { Who::Client };
        for line in lines.iter().take(BODY_LINES) {
            match line.char_indices().nth(BODY_LINE_CHARS) {
                Some((cut, _)) => {
                    let shown = format!("{}… ({} octets in all)", &line[..cut], line.len());
                    self.line(out, Stamp::at(t), who, e.tls, &shown);
                }
                None => self.line(out, Stamp::at(t), who, e.tls, line),
            }
        }
        if lines.len() > BODY_LINES {
            self.note(out, t, &format!("  … {} more lines", lines.len() - BODY_LINES));
        }
    }

    fn server_side(&mut self, e: &Exchange, out: &mut String) {
        let Some(r) = &e.reply else {
            if e.command.is_some() || e.message.is_some() {
                self.note(out, &e.t, "no reply: the session ended first");
            }
            return;
        };
        let who = if e.origin.is_some() { Who::ProxyServer(r.code) } else { Who::Server(r.code) };
        let ms = e.ms.unwrap_or(0.0);
        for (i, text) in reply_lines(r, self.in_auth).iter().enumerate() {
            let latency = (i == 0).then_some(ms).filter(|_| e.ms.is_some());
            self.line(out, Stamp { t: &e.t, ms, latency }, who, e.tls, text);
        }
        if r.omitted_lines > 0 {
            self.note(out, &e.t, &format!("  … {} more reply lines, not kept", r.omitted_lines));
        }
        if e.answered_by.is_some() {
            self.note(out, &e.t, "answered by smtptap itself, not by the upstream");
        }
        if r.code != 334 {
            self.in_auth = false;
        }
    }

    fn tls(&self, tls: &TlsInfo, out: &mut String) {
        let side = match tls.side {
            TlsSide::Client => "with the client",
            TlsSide::Upstream => "with the upstream",
        };
        if let Some(error) = &tls.error {
            let text =
                if error.starts_with("TLS handshake") { error.clone() } else { format!("TLS {side} failed: {error}") };
            self.note(out, &tls.t, &text);
            return;
        }
        let mut text = format!(
            "TLS {side}: {}",
            [tls.version.as_deref(), tls.cipher.as_deref()].iter().flatten().cloned().collect::<Vec<_>>().join(", ")
        );
        if let Some(sni) = &tls.sni {
            let _ = write!(text, ", SNI {sni}");
        }
        self.note(out, &tls.t, &text);
        if let Some(peer) = &tls.peer {
            let verdict = match (&peer.verified, &peer.verify_error) {
                (true, _) => "verified".to_owned(),
                (false, Some(e)) => format!("NOT verified: {e}"),
                (false, None) => "NOT verified".to_owned(),
            };
            self.note(
                out,
                &tls.t,
                &format!(
                    "  certificate {} issued by {} ({verdict}), sha256 {}",
                    peer.subject,
                    peer.issuer,
                    short_hash(&peer.sha256)
                ),
            );
        }
    }

    fn end(&self, end: &SessionEnd, out: &mut String) {
        let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut text = format!(
            "end: {} after {} ({}, {}; {} from the client, {} from the upstream)",
            end.reason,
            fmt_duration(end.duration_ms),
            plural(end.exchanges, "exchange", "exchanges"),
            plural(end.messages, "message", "messages"),
            plural(end.bytes_from_client, "byte", "bytes"),
            plural(end.bytes_from_upstream, "byte", "bytes"),
        );
        if let Some(error) = &end.error {
            let _ = write!(text, ": {error}");
        }
        self.note(out, "", &text);
    }
}

/// ` (authcid=user@example.com)`: the decoded AUTH data worth showing.
pub fn auth_suffix(a: &AuthRecord) -> String {
    let mut parts = Vec::new();
    if let Some(z) = a.authzid.as_deref().filter(|z| !z.is_empty()) {
        parts.push(format!("authzid={z}"));
    }
    if let Some(c) = &a.authcid {
        parts.push(format!("authcid={c}"));
    }
    if let Some(u) = &a.user {
        parts.push(format!("user={u}"));
    }
    if a.cancelled {
        parts.push("cancelled".into());
    }
    if a.undecodable {
        parts.push(format!("undecodable{}", a.problem.as_deref().map(|p| format!(": {p}")).unwrap_or_default()));
    } else if let Some(p) = &a.problem {
        parts.push(p.clone());
    }
    if let Some(e) = &a.server_error {
        parts.push(format!("server error {e}"));
    }
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) }
}

/// `NNN-text` … `NNN text`; inside AUTH, a `334`'s base64 shown decoded beside it.
fn reply_lines(r: &ReplyRecord, in_auth: bool) -> Vec<String> {
    if r.lines.is_empty() {
        return vec![format!("{}", r.code)];
    }
    let last = r.lines.len() - 1;
    r.lines
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let sep = if i == last { ' ' } else { '-' };
            let mut line = format!("{}{sep}{text}", r.code);
            if r.code == 334 && in_auth {
                if let Some(decoded) = decode_challenge(text) {
                    let _ = write!(line, "  ({decoded})");
                }
            }
            line
        })
        .collect()
}

/// A `334` text as readable text, when it is base64 of something printable.
fn decode_challenge(text: &str) -> Option<String> {
    let bytes = B64.decode(text.trim()).ok()?;
    let s = String::from_utf8(bytes).ok()?;
    let s = s.trim_end_matches('\0').to_owned();
    (!s.is_empty() && !s.chars().any(|c| c.is_control())).then_some(s)
}

fn short_hash(h: &str) -> String {
    if h.len() > 16 { format!("{}…", &h[..16]) } else { h.to_owned() }
}
