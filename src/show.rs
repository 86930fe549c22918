//! `smtptap show`: recordings as transcripts a person reads.
//!
//! The transcript follows swaks' convention: `<-  ` the server, ` -> ` the
//! client, `<~  `/` ~> ` the same inside TLS, and `** ` for what smtptap
//! adds: session facts, TLS handshakes, notes, commands the proxy sent or
//! answered itself, message summaries. A directory is listed one line per
//! session; `--follow` tails a directory (or one file) and prints sessions
//! as they grow.
//!
//! Rendering ([`Transcript`], [`summarize`], [`list_table`]) is plain code
//! over parsed records writing into a `String`; only [`run`] and the follow
//! loop touch files, clocks and the terminal.

use crate::auth::AuthRecord;
use crate::record::format::{
    Body, BodyEncoding, Exchange, MessageRecord, Record, ReplyRecord, SessionEnd, SessionInfo, TlsInfo, TlsSide,
};
use crate::record::reader::{self, Parsed, Problem, ReadError, Reader};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Lines of message content printed with `--body`.
pub const BODY_LINES: usize = 20;

/// Longest message line shown whole with `--body`.
pub const BODY_LINE_CHARS: usize = 200;

/// How often `--follow` looks for new sessions and new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// At `--follow` start, a session without an `end` that was written to this
/// recently is taken to be live and followed from its start.
const LIVE_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Recording files (shown as transcripts) or directories of recordings
    /// (listed one line per session).
    #[arg(value_name = "RECORDING|DIR", required = true)]
    pub paths: Vec<PathBuf>,
    /// Only sessions started at or after TIME: RFC 3339 (2026-11-28T19:36:24Z),
    /// a UTC date or date and time (2026-11-28, 2026-11-28T19:36), or a time
    /// ago (90s, 10m, 2h, 1d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only the last N sessions.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Prefix every line with its UTC time.
    #[arg(long, conflicts_with = "latency")]
    pub timestamps: bool,
    /// Show how long each reply took.
    #[arg(long)]
    pub latency: bool,
    /// Print the first lines of each message's content, not only its summary.
    #[arg(long)]
    pub body: bool,
    /// Keep watching: print sessions as they are recorded, until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// With a directory: print each session's transcript instead of the list.
    #[arg(long)]
    pub transcripts: bool,
    /// Colour: on a terminal unless NO_COLOR is set (auto), always, or never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Whether to colour: `auto` means a terminal, and `NO_COLOR` unset or empty
/// (https://no-color.org).
pub fn use_color(choice: ColorChoice, is_terminal: bool, no_color: Option<&str>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_terminal && no_color.is_none_or(str::is_empty),
    }
}

/// What a transcript shows besides the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timing {
    #[default]
    None,
    /// Every line prefixed with its UTC time.
    Timestamps,
    /// A column with each reply's latency.
    Latency,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub timing: Timing,
    pub body: bool,
    pub color: bool,
}

// ---------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------

/// Runs `smtptap show`; returns the exit code (2 when some input could not
/// be read). Errors writing standard output are returned (a closed pipe is
/// the caller's to forgive).
pub fn run(args: &ShowArgs) -> io::Result<u8> {
    let stdout = io::stdout();
    let no_color = std::env::var("NO_COLOR").ok();
    let opts = Options {
        timing: if args.timestamps {
            Timing::Timestamps
        } else if args.latency {
            Timing::Latency
        } else {
            Timing::None
        },
        body: args.body,
        color: use_color(args.color, stdout.is_terminal(), no_color.as_deref()),
    };
    let since = match args.since.as_deref().map(|s| parse_since(s, Utc::now())).transpose() {
        Ok(since) => since,
        Err(e) => {
            eprintln!("smtptap: --since: {e}");
            return Ok(2);
        }
    };
    let mut out = io::BufWriter::new(stdout.lock());
    if args.follow {
        return follow(args, opts, since, &mut out);
    }
    let mut code = 0;
    let mut files = Vec::new();
    let mut any_dir = false;
    for path in &args.paths {
        if path.is_dir() {
            any_dir = true;
            match reader::list_recordings(path) {
                Ok(found) => files.extend(found),
                Err(e) => {
                    eprintln!("smtptap: {}: {e}", path.display());
                    code = 2;
                }
            }
        } else {
            files.push(path.clone());
        }
    }
    let selected = select(&files, since, args.last, &mut code);
    if any_dir && !args.transcripts {
        let mut rows = Vec::new();
        for path in selected {
            match Reader::open(&path) {
                Ok((reader, info)) => rows.push(summarize(&path, &info, reader)),
                Err(e) => {
                    eprintln!("smtptap: {e}");
                    code = 2;
                }
            }
        }
        out.write_all(list_table(&rows, opts.color).as_bytes())?;
    } else {
        for (i, path) in selected.iter().enumerate() {
            if i > 0 {
                out.write_all(b"\n")?;
            }
            if let Err(e) = transcript_of(path, opts, &mut out)? {
                eprintln!("smtptap: {e}");
                code = 2;
            }
        }
    }
    out.flush()?;
    Ok(code)
}

/// Orders recordings by their start (from their first line; unreadable
/// ones keep their place at the end, to be reported when shown), then
/// applies `--since` and `--last`.
fn select(files: &[PathBuf], since: Option<DateTime<Utc>>, last: Option<usize>, code: &mut u8) -> Vec<PathBuf> {
    let mut dated: Vec<(Option<DateTime<Utc>>, bool, &PathBuf)> = files
        .iter()
        .map(|path| match Reader::open(path) {
            Ok((_, info)) => (parse_time(&info.started), true, path),
            Err(_) => (None, false, path),
        })
        .collect();
    if files.len() > 1 {
        dated.sort_by(|a, b| (!a.1, a.0, a.2).cmp(&(!b.1, b.0, b.2)));
    }
    let mut kept: Vec<PathBuf> = dated
        .into_iter()
        .filter(|(started, readable, path)| match (since, readable) {
            (None, _) => true,
            (Some(since), true) => started.is_none_or(|t| t >= since),
            (Some(_), false) => {
                if let Err(e) = Reader::open(path) {
                    eprintln!("smtptap: {e}");
                }
                *code = 2;
                false
            }
        })
        .map(|(_, _, path)| path.clone())
        .collect();
    if let Some(n) = last {
        kept.drain(..kept.len().saturating_sub(n));
    }
    kept
}

/// Streams one recording's transcript to `out`. The outer error is from
/// writing; the inner one from reading the recording.
fn transcript_of(path: &Path, opts: Options, out: &mut impl Write) -> io::Result<Result<(), ReadError>> {
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

// ---------------------------------------------------------------------------
// Times
// ---------------------------------------------------------------------------

pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// `--since`: RFC 3339, a UTC date or date-time, or a duration ago.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Some(t) = parse_time(s) {
        return Ok(t);
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if seconds > 0 && !number.is_empty() => Ok(now - chrono::Duration::seconds(n.saturating_mul(seconds))),
        _ => Err(format!(
            "cannot read `{s}` as a time: give RFC 3339 (2026-11-28T19:36:24Z), a UTC date (2026-11-28), \
             a UTC date and time (2026-11-28T19:36) or a time ago (90s, 10m, 2h, 1d)"
        )),
    }
}

/// `HH:MM:SS.mmm` of an RFC 3339 time, `ms` later (blank for no time).
fn clock(t: &str, ms: f64) -> String {
    if t.is_empty() {
        return " ".repeat(12);
    }
    match parse_time(t) {
        Some(t) => {
            let t = t + chrono::Duration::microseconds((ms * 1000.0).round() as i64);
            t.format("%H:%M:%S%.3f").to_string()
        }
        None => "??:??:??.???".into(),
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

fn fmt_duration(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

/// `248 octets`, with a binary-prefixed size for large ones.
pub fn fmt_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 10 * 1024 {
        return format!("{n} octets");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{n} octets ({value:.1} {})", UNITS[unit])
}

// ---------------------------------------------------------------------------
// Text safety
// ---------------------------------------------------------------------------

/// `s` with control characters made visible (`\r`, `\n`, `\x1b`…), so that
/// recorded bytes can neither break lines nor drive the terminal.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if is_unsafe(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.into()
}

fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The message content as bytes, when the recording kept it.
pub fn body_bytes(body: &Body) -> Option<Vec<u8>> {
    match body.encoding {
        BodyEncoding::Utf8 => Some(body.data.as_bytes().to_vec()),
        BodyEncoding::Base64 => B64.decode(&body.data).ok(),
    }
}

// ---------------------------------------------------------------------------
// The transcript
// ---------------------------------------------------------------------------

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

const RESET: &str = "\x1b[0m";

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

    fn note(&self, out: &mut String, t: &str, text: &str) {
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

// ---------------------------------------------------------------------------
// The list view
// ---------------------------------------------------------------------------

/// One session, in a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub started: String,
    pub client: String,
    pub upstream: String,
    pub tls: String,
    pub auth: String,
    pub messages: String,
    pub outcome: String,
    pub file: String,
}

/// Folds a recording's records into its list line, holding no bodies.
pub fn summarize(path: &Path, info: &SessionInfo, records: impl IntoIterator<Item = Result<Record, ReadError>>) -> Row {
    let mut tls = None::<String>;
    let mut identity = None::<String>;
    let mut auth_in_progress = false;
    let mut auth_ok = None::<bool>;
    let (mut accepted, mut attempted) = (0u64, 0u64);
    let mut failure = None::<(u16, String)>;
    let mut end = None;
    let mut unreadable = None;
    for record in records {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                unreadable = Some(e.to_string());
                break;
            }
        };
        match record {
            Record::Tls(t) if t.side == TlsSide::Client => {
                tls = Some(match (&t.error, &t.version) {
                    (Some(_), _) => "failed".into(),
                    (None, Some(v)) => v.clone(),
                    (None, None) => "TLS".into(),
                });
            }
            Record::Exchange(e) if e.origin.is_none() => {
                if e.tls && tls.is_none() {
                    tls = Some("TLS".into());
                }
                let verb = e.command.as_ref().and_then(|c| c.verb.as_deref());
                if verb.is_some_and(|v| v.eq_ignore_ascii_case("AUTH")) {
                    auth_in_progress = true;
                    identity = None;
                } else if verb.is_some() {
                    auth_in_progress = false;
                }
                if let Some(a) = e.command.as_ref().and_then(|c| c.auth.as_ref()) {
                    if let Some(who) = a.authcid.clone().or_else(|| a.user.clone()) {
                        identity = Some(who);
                    }
                }
                if let Some(r) = &e.reply {
                    if auth_in_progress && r.code != 334 {
                        auth_ok = Some((200..300).contains(&r.code));
                        auth_in_progress = false;
                    }
                    if e.message.is_some() {
                        attempted += 1;
                        accepted += u64::from((200..300).contains(&r.code));
                    }
                    let worse = failure.as_ref().is_none_or(|(code, _)| *code < 500 && r.code >= 500);
                    if r.code >= 400 && worse {
                        let what = match (verb, &e.message) {
                            (Some(v), _) => v.to_owned(),
                            (None, Some(_)) => "message".into(),
                            (None, None) if e.command.is_some() => "AUTH".into(),
                            (None, None) => "greeting".into(),
                        };
                        let code = r.enhanced.as_ref().map(|x| format!("{} {x}", r.code)).unwrap_or(r.code.to_string());
                        failure = Some((r.code, format!("{code} to {what}")));
                    }
                } else if e.message.is_some() {
                    attempted += 1;
                }
            }
            Record::End(e) => end = Some(e),
            _ => {}
        }
    }
    let auth = match (identity, auth_ok) {
        (Some(who), Some(false)) => format!("{who} (failed)"),
        (Some(who), _) => who,
        (None, Some(false)) => "(failed)".into(),
        (None, Some(true)) => "(ok)".into(),
        (None, None) => "-".into(),
    };
    let mut outcome = match (&end, &unreadable) {
        (Some(e), _) => e.reason.to_string(),
        (None, Some(_)) => "unreadable".into(),
        (None, None) => "no end yet".into(),
    };
    if let Some((_, f)) = failure {
        let _ = write!(outcome, "; {f}");
    }
    let started = parse_time(&info.started)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| info.started.clone());
    Row {
        started,
        client: info.client.clone(),
        upstream: info.upstream.clone(),
        tls: tls.unwrap_or_else(|| "none".into()),
        auth,
        messages: if accepted == attempted { accepted.to_string() } else { format!("{accepted}/{attempted}") },
        outcome,
        file: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }
}

/// The list view: a header and one aligned line per session.
pub fn list_table(rows: &[Row], color: bool) -> String {
    let header = Row {
        started: "STARTED (UTC)".into(),
        client: "CLIENT".into(),
        upstream: "UPSTREAM".into(),
        tls: "TLS".into(),
        auth: "AUTH".into(),
        messages: "MSGS".into(),
        outcome: "OUTCOME".into(),
        file: "FILE".into(),
    };
    let cells = |r: &Row| -> [String; 8] {
        [&r.started, &r.client, &r.upstream, &r.tls, &r.auth, &r.messages, &r.outcome, &r.file]
            .map(|c| printable(c).into_owned())
    };
    let all: Vec<[String; 8]> = std::iter::once(&header).chain(rows).map(cells).collect();
    let mut widths = [0usize; 8];
    for row in &all {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in all.iter().enumerate() {
        let mut line = String::new();
        for (j, c) in row.iter().enumerate() {
            if j == row.len() - 1 {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[j]);
            }
        }
        let line = line.trim_end();
        let failed = i > 0 && rows[i - 1].outcome.contains("; ");
        match (color, i == 0, failed) {
            (true, true, _) => {
                let _ = writeln!(out, "\x1b[1m{line}{RESET}");
            }
            (true, false, true) => {
                let _ = writeln!(out, "\x1b[31m{line}{RESET}");
            }
            _ => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// --follow
// ---------------------------------------------------------------------------

/// A recording being tailed: complete lines are rendered as they arrive.
struct Tailed {
    path: PathBuf,
    file: std::fs::File,
    partial: Vec<u8>,
    started: bool,
    id: String,
    transcript: Transcript,
    ended: bool,
    line_no: u64,
}

impl Tailed {
    fn open(path: &Path, opts: Options) -> io::Result<Tailed> {
        Ok(Tailed {
            path: path.to_owned(),
            file: std::fs::File::open(path)?,
            partial: Vec::new(),
            started: false,
            id: String::new(),
            transcript: Transcript::new(opts),
            ended: false,
            line_no: 0,
        })
    }

    /// Renders whatever complete lines arrived since the last poll; true
    /// when that began with the session's header.
    fn poll(&mut self, out: &mut String) -> Result<bool, String> {
        let mut fresh = Vec::new();
        self.file.read_to_end(&mut fresh).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if fresh.is_empty() {
            return Ok(false);
        }
        let mut header = false;
        self.partial.extend_from_slice(&fresh);
        let mut at = 0;
        while let Some(nl) = self.partial[at..].iter().position(|&b| b == b'\n') {
            let line = self.partial[at..at + nl + 1].to_vec();
            at += nl + 1;
            self.line_no += 1;
            if !self.started {
                let info = reader::parse_first_line(&line, &self.path).map_err(|e| e.to_string())?;
                self.started = true;
                self.id = info.id.clone();
                self.transcript.header(&info, out);
                header = true;
                continue;
            }
            match reader::parse_line(&line) {
                Parsed::Record(r) => {
                    if matches!(*r, Record::End(_)) {
                        self.ended = true;
                    }
                    self.transcript.record(*r, out);
                }
                Parsed::UnknownType(_) => {}
                Parsed::Invalid(what) => {
                    let problem = Problem { line: self.line_no, what };
                    self.transcript.note(out, "", &format!("{problem}: skipped"));
                }
            }
        }
        self.partial.drain(..at);
        if !self.ended {
            // Show a held pipelined batch now rather than at the next record.
            self.transcript.flush(out);
        }
        Ok(header)
    }
}

fn follow(args: &ShowArgs, opts: Options, since: Option<DateTime<Utc>>, out: &mut impl Write) -> io::Result<u8> {
    if args.paths.len() != 1 {
        eprintln!("smtptap: --follow takes one directory or one recording");
        return Ok(2);
    }
    let path = &args.paths[0];
    if path.is_file() {
        let mut tailed = match Tailed::open(path, opts) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("smtptap: {}: {e}", path.display());
                return Ok(2);
            }
        };
        loop {
            let mut text = String::new();
            if let Err(e) = tailed.poll(&mut text) {
                eprintln!("smtptap: {e}");
                return Ok(2);
            }
            out.write_all(text.as_bytes())?;
            out.flush()?;
            if tailed.ended {
                return Ok(0);
            }
            std::thread::sleep(FOLLOW_POLL);
        }
    }
    let mut tracked: Vec<Tailed> = Vec::new();
    let mut done: HashSet<PathBuf> = HashSet::new();
    let mut first_scan = true;
    let mut said_waiting = false;
    let mut last_shown: Option<PathBuf> = None;
    let mut failed: HashSet<PathBuf> = HashSet::new();
    loop {
        let files = match reader::list_recordings(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !said_waiting {
                    eprintln!("smtptap: waiting for {} to appear", path.display());
                    said_waiting = true;
                }
                Vec::new()
            }
            Err(e) => {
                eprintln!("smtptap: {}: {e}", path.display());
                return Ok(2);
            }
        };
        let picked: HashSet<PathBuf> = if first_scan && (since.is_some() || args.last.is_some()) {
            let mut ignore = 0;
            select(&files, since, args.last, &mut ignore).into_iter().collect()
        } else {
            HashSet::new()
        };
        for file in files {
            if done.contains(&file) || tracked.iter().any(|t| t.path == file) {
                continue;
            }
            if first_scan && !picked.contains(&file) && !is_live(&file) {
                done.insert(file);
                continue;
            }
            match Tailed::open(&file, opts) {
                Ok(t) => tracked.push(t),
                Err(e) => {
                    if failed.insert(file.clone()) {
                        eprintln!("smtptap: {}: {e}", file.display());
                    }
                }
            }
        }
        if first_scan {
            // Readiness: from here on, every new session is shown.
            eprintln!("smtptap: following {} (Ctrl-C to stop)", path.display());
        }
        first_scan = false;
        for t in &mut tracked {
            let mut text = String::new();
            let header = match t.poll(&mut text) {
                Ok(header) => header,
                Err(e) => {
                    // Not a recording (or not yet one: an empty file stays pending).
                    if !e.contains("the file is empty") {
                        eprintln!("smtptap: {e}");
                        t.ended = true;
                    }
                    false
                }
            };
            if text.is_empty() {
                continue;
            }
            if last_shown.as_ref() != Some(&t.path) {
                if last_shown.is_some() {
                    out.write_all(b"\n")?;
                }
                if !header {
                    let mut again = String::new();
                    t.transcript.note(&mut again, "", &format!("session {} continues", t.id));
                    out.write_all(again.as_bytes())?;
                }
                last_shown = Some(t.path.clone());
            }
            out.write_all(text.as_bytes())?;
        }
        out.flush()?;
        tracked.retain(|t| {
            if t.ended {
                done.insert(t.path.clone());
            }
            !t.ended
        });
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// A recording without an `end` that was written to recently.
fn is_live(path: &Path) -> bool {
    let recent = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age < LIVE_WINDOW);
    if !recent {
        return false;
    }
    match Reader::open(path) {
        Ok((mut reader, _)) => !reader.any(|r| matches!(r, Ok(Record::End(_)))),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests;
