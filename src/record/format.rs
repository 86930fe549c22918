//! Recording format 1 (see SPEC.md): one JSON object per line, each with a
//! `type`. Readers ignore fields they do not know.

use crate::smtp::line::Line;
use crate::smtp::message::MessageSummary;
use crate::smtp::reply::Reply;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const FORMAT: u32 = 1;

/// One line of a recording. Built one at a time to be written or read, so the
/// size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    Session(SessionInfo),
    Exchange(Exchange),
    Tls(TlsInfo),
    Note(Note),
    End(SessionEnd),
}

/// The first line of every recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub format: u32,
    pub id: String,
    /// UTC, RFC 3339 with microseconds.
    pub started: String,
    pub listen: String,
    pub client: String,
    pub upstream: String,
    pub tool: String,
    /// TLS modes towards each side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<crate::tls::TlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<crate::tls::TlsMode>,
    /// The upstream's certificate was not verified (`--insecure-upstream`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_upstream: bool,
    /// What AUTH data is hidden (`none`: this recording holds secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<crate::auth::Redaction>,
}

/// One command and the reply it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub seq: u64,
    /// When the command (or message content) was complete; for the greeting,
    /// when the session started.
    pub t: String,
    pub tls: bool,
    /// The client sent this before the reply to the previous command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipelined: Option<bool>,
    /// Null for the greeting, message content, and replies nobody asked for.
    pub command: Option<CommandRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageRecord>,
    /// Null when the session ended before the reply came.
    pub reply: Option<ReplyRecord>,
    /// Milliseconds from `t` to the complete reply.
    pub ms: Option<f64>,
    /// `"proxy"` for what smtptap itself sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `"proxy"` when smtptap answered the command itself (STARTTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
}

/// A command line as recorded (secrets already redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Upper-cased verb; null for a SASL continuation line.
    pub verb: Option<String>,
    /// The line without CRLF; non-UTF-8 bytes replaced (see `line_base64`).
    pub line: String,
    /// The exact bytes, when `line` could not hold them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_base64: Option<String>,
    /// The full length, when the line was longer than what was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// The session ended in the middle of this line.
    #[serde(default, skip_serializing_if = "is_false")]
    pub incomplete: bool,
    /// Decoded AUTH data that became known with this line (secrets redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::auth::AuthRecord>,
}

impl CommandRecord {
    pub fn from_line(verb: Option<String>, line: Line<'_>) -> CommandRecord {
        let (text, exact) = lossless_text(line.text);
        CommandRecord {
            verb,
            line: text,
            line_base64: exact,
            length: line.truncated().then_some(line.len),
            incomplete: false,
            auth: None,
        }
    }

    /// The exact bytes of the line: `line_base64` when the record has it.
    pub fn exact_line(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match &self.line_base64 {
            Some(b64) => B64.decode(b64),
            None => Ok(self.line.clone().into_bytes()),
        }
    }

    /// A line whose content must not be kept, shown as `shown`.
    pub fn redacted(verb: Option<String>, shown: String) -> CommandRecord {
        CommandRecord { verb, line: shown, line_base64: None, length: None, incomplete: false, auth: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyRecord {
    pub code: u16,
    pub enhanced: Option<String>,
    /// Text after `NNN-`/`NNN ` of each line; non-UTF-8 bytes replaced.
    pub lines: Vec<String>,
    /// The exact bytes of each line, when some line is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines_base64: Option<Vec<String>>,
    /// Lines beyond the per-reply cap, counted but not kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_lines: usize,
    /// Some line was longer than the line cap and is cut.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

impl ReplyRecord {
    /// The exact bytes of each line: `lines_base64` when the record has it.
    pub fn exact_lines(&self) -> Result<Vec<Vec<u8>>, base64::DecodeError> {
        match &self.lines_base64 {
            Some(lines) => lines.iter().map(|l| B64.decode(l)).collect(),
            None => Ok(self.lines.iter().map(|l| l.clone().into_bytes()).collect()),
        }
    }
}

impl From<&Reply> for ReplyRecord {
    fn from(reply: &Reply) -> ReplyRecord {
        let exact = reply.lines.iter().any(|l| std::str::from_utf8(l).is_err());
        ReplyRecord {
            code: reply.code,
            enhanced: reply.enhanced(),
            lines: reply.lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect(),
            lines_base64: exact.then(|| reply.lines.iter().map(|l| B64.encode(l)).collect()),
            omitted_lines: reply.omitted_lines,
            truncated: reply.truncated,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Octets of content as delivered: dot-stuffing removed, terminator excluded.
    pub size: u64,
    pub sha256: String,
    pub headers: BTreeMap<String, String>,
    /// The whole content (header section included), unless `--no-bodies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// False when the session ended before the content did.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub complete: bool,
}

impl From<MessageSummary> for MessageRecord {
    fn from(m: MessageSummary) -> MessageRecord {
        MessageRecord { size: m.size, sha256: m.sha256, headers: m.headers, body: None, complete: m.complete }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    /// `utf8` when the content is valid UTF-8, else `base64`.
    pub encoding: BodyEncoding,
    pub data: String,
}

impl Body {
    /// The content as delivered.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self.encoding {
            BodyEncoding::Utf8 => Ok(self.data.clone().into_bytes()),
            BodyEncoding::Base64 => B64.decode(&self.data),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    Utf8,
    Base64,
}

/// A TLS handshake on one side of the proxy, or its failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsInfo {
    pub side: TlsSide,
    pub t: String,
    /// `TLSv1.3`, `TLSv1.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// The name the client asked for (client side) or smtptap sent (upstream side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The upstream's certificate (upstream side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerCertificate>,
    /// Why the handshake failed, with the TLS alert when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsSide {
    Client,
    Upstream,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerCertificate {
    pub subject: String,
    pub issuer: String,
    /// Lower-case hex SHA-256 of the DER certificate.
    pub sha256: String,
    /// Whether it verified against the trust anchors for the name used.
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_error: Option<String>,
}

/// Something the proxy observed that is not an exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub t: String,
    /// What the note is about, for programs (`check`); `text` is for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<NoteKind>,
    pub text: String,
    /// Bytes the note is about, when they could not be paired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

/// The kinds of [`Note`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoteKind {
    /// smtptap added STARTTLS to an EHLO reply it relayed to the client.
    StarttlsOffered,
    /// smtptap removed STARTTLS from an EHLO reply it relayed to the client.
    StarttlsWithdrawn,
    /// The client sent plaintext after STARTTLS, before TLS (discarded).
    ClientAfterStarttls,
    /// The server sent bytes after its 220 to STARTTLS (discarded).
    ServerAfterStarttls,
    /// The client authenticated before TLS.
    AuthBeforeTls,
    /// The server offered AUTH mechanisms the client did not use.
    AuthMechanismsUnused,
    /// Client bytes that no reply came for, or that went over the hold limit.
    UnansweredClientData,
    /// The session ended in the middle of a server reply.
    PartialReply,
    /// A kind this version does not know.
    #[serde(other)]
    Other,
}

/// The last line of a complete recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEnd {
    pub reason: EndReason,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub exchanges: u64,
    pub messages: u64,
    pub bytes_from_client: u64,
    pub bytes_from_upstream: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    Quit,
    ClientClosed,
    UpstreamClosed,
    Timeout,
    TlsFailed,
    UpstreamUnreachable,
    Error,
    Shutdown,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(v.as_str().unwrap_or("?"))
    }
}

/// A string for JSON, plus the exact bytes in base64 when they are not UTF-8.
pub fn lossless_text(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), Some(B64.encode(bytes))),
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_zero(n: &usize) -> bool {
    *n == 0
}
fn yes() -> bool {
    true
}
