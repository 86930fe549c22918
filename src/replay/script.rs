//! Sans-IO: turns a recording into what the replaying client sends and the
//! replies it expects, in order.
//!
//! A [`Script`] is a list of [`Group`]s: bytes written together (one command,
//! a pipelined run of commands, BDAT chunks with their data, or message
//! content after `354`), then one expected reply per recorded exchange in
//! the group.
//!
//! What is replayed is the conversation the recorded *server* had, since its
//! replies are what the target's are compared with: the client's commands,
//! over the TLS the upstream side used. So the proxy's own upgrade of the
//! upstream (`origin: proxy` EHLO and STARTTLS, when the client side was
//! plaintext or implicit TLS) is replayed, and a STARTTLS that smtptap
//! answered itself (`answered_by: proxy`) is not; a recording whose upstream
//! spoke TLS from the first byte is replayed with implicit TLS. `--tls`
//! overrides: `off` and `implicit` leave STARTTLS exchanges out; `starttls`
//! on a recording that never upgraded has the replay send its own EHLO and
//! STARTTLS right after the greeting (not compared, but STARTTLS must get
//! `220`).
//!
//! Redacted AUTH data is rebuilt from the credentials given
//! ([`credentials`](super::credentials)); message content recorded with
//! `--no-bodies` is replaced by a [`placeholder`](super::placeholder) of the
//! recorded size and headers. What cannot be replayed faithfully is refused
//! with a [`ScriptError`] before anything connects: missing credentials,
//! lines cut at the recording's cap, damaged records.

use super::credentials::{Answer, CramMd5, CredentialError, Credentials, answer};
use super::placeholder::placeholder;
use crate::auth::REDACTED;
use crate::record::format::{CommandRecord, Exchange, MessageRecord, Record, ReplyRecord, TlsSide};
use crate::record::reader::Recording;
use crate::smtp::command::{Command, CommandKind};
use crate::smtp::data::dot_stuff;
use std::fmt;

/// TLS towards the target (`--tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPlan {
    /// No `--tls` flag: as the recorded upstream side did.
    AsRecorded,
    /// Plaintext; recorded STARTTLS upgrades are left out.
    Off,
    /// STARTTLS: where the recording upgraded, else right after the greeting.
    Starttls,
    /// TLS from the first byte; recorded STARTTLS upgrades are left out.
    Implicit,
}

/// How to replay: `--tls` and the credentials given.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tls: TlsPlan,
    pub credentials: Credentials,
}

/// What the script needs to know about a recording besides its exchanges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The upstream side spoke TLS from the first byte.
    pub implicit_tls: bool,
    /// Identities were recorded as fingerprints (`--redact identities`).
    pub identities_redacted: bool,
    /// The server name sent in the recorded TLS handshake, if any.
    pub sni: Option<String>,
}

impl Facts {
    fn of(recording: &Recording) -> Facts {
        let mut facts = Facts {
            identities_redacted: recording.session.redact == Some(crate::auth::Redaction::Identities),
            ..Facts::default()
        };
        let mut commands_seen = false;
        for record in &recording.records {
            match record {
                Record::Exchange(e) if e.command.is_some() => commands_seen = true,
                Record::Tls(t) if t.error.is_none() => {
                    facts.implicit_tls |= t.side == TlsSide::Upstream && !commands_seen;
                    // The upstream side's name first: that is the side replayed.
                    if t.sni.is_some() && (facts.sni.is_none() || t.side == TlsSide::Upstream) {
                        facts.sni.clone_from(&t.sni);
                    }
                }
                _ => {}
            }
        }
        facts
    }
}

/// The client side of one recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// The recorded greeting, when there is one.
    pub greeting: Option<Expected>,
    /// Connect with TLS from the first byte.
    pub implicit_tls: bool,
    /// The replay's own EHLO line (CRLF included), to send with STARTTLS
    /// right after the greeting (`--tls starttls` on a recording that never
    /// upgraded).
    pub own_starttls: Option<Vec<u8>>,
    pub groups: Vec<Group>,
    /// The server name the recording used for TLS, if any.
    pub sni: Option<String>,
    /// Recorded STARTTLS exchanges left out because of `--tls`.
    pub skipped_starttls: usize,
    /// Messages sent as placeholders (recorded with `--no-bodies`): `seq`s.
    pub placeholders: Vec<u64>,
}

impl Script {
    /// Replies the script expects, greeting included.
    pub fn expected_count(&self) -> usize {
        usize::from(self.greeting.is_some()) + self.groups.iter().map(|g| g.expects.len()).sum::<usize>()
    }

    /// Whether replaying needs TLS.
    pub fn uses_tls(&self) -> bool {
        self.implicit_tls
            || self.own_starttls.is_some()
            || self.groups.iter().any(|g| g.starttls == Some(RecordedStartTls::Upgraded))
    }
}

/// Bytes sent in one write, and the replies they should get.
#[derive(Clone, PartialEq)]
pub struct Group {
    pub bytes: Vec<u8>,
    /// A CRAM-MD5 answer: `bytes` are computed from the last reply (the
    /// target's challenge) when it is sent.
    pub cram_md5: Option<CramMd5>,
    pub expects: Vec<Expected>,
    /// Message content after `DATA`: only sent when `DATA` got `354`.
    pub after_data: bool,
    /// The group ends with STARTTLS, and this is how it went when recorded.
    pub starttls: Option<RecordedStartTls>,
}

/// How a STARTTLS went in the recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedStartTls {
    /// The session upgraded after it: the replay does too, on `220`.
    Upgraded,
    /// The server refused it: a `220` now ends the replay, since what
    /// followed was recorded in plaintext.
    Refused,
}

/// Message content and AUTH lines may hold what must not be printed.
impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("bytes", &format_args!("{} octets", self.bytes.len()))
            .field("cram_md5", &self.cram_md5)
            .field("expects", &self.expects)
            .field("after_data", &self.after_data)
            .field("starttls", &self.starttls)
            .finish()
    }
}

/// One recorded exchange's reply, and how to name it in the output.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub seq: u64,
    /// The command line as recorded (SASL client data shown as `<redacted>`),
    /// or `(greeting)` / `(message, N octets)`.
    pub label: String,
    /// What latencies are filed under: the verb, `AUTH` for SASL
    /// continuations, `message`, `greeting`.
    pub verb: String,
    /// `None` when the recording ended before the reply: sent, not compared.
    pub reply: Option<ReplyRecord>,
    /// A positive reply means a message was accepted (content after DATA,
    /// `BDAT … LAST`).
    pub completes_message: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScriptError {
    #[error("exchange #{seq}: {source}")]
    Credentials { seq: u64, source: CredentialError },
    #[error("exchange #{seq}: the recording ends inside the message content, so it cannot be sent as recorded")]
    IncompleteMessage { seq: u64 },
    #[error("exchange #{seq}: the command line was longer than the recording keeps, so it cannot be sent as recorded")]
    TruncatedLine { seq: u64 },
    #[error("exchange #{seq}: {what}")]
    Damaged { seq: u64, what: String },
    /// More than one of the refusals above, each kind named once.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<ScriptError>),
}

/// Builds the script for `recording`.
pub fn build(recording: &Recording, plan: &Plan) -> Result<Script, ScriptError> {
    let exchanges: Vec<&Exchange> = recording.exchanges().collect();
    build_from(&exchanges, &Facts::of(recording), plan)
}

/// Builds the script from a recording's exchanges, in order.
pub fn build_from(exchanges: &[&Exchange], facts: &Facts, plan: &Plan) -> Result<Script, ScriptError> {
    let leave_out_starttls = matches!(plan.tls, TlsPlan::Off | TlsPlan::Implicit);
    let recorded_upgrade = exchanges.iter().any(|e| upgraded_after(e));
    let mut script = Script {
        greeting: None,
        implicit_tls: match plan.tls {
            TlsPlan::AsRecorded => facts.implicit_tls,
            TlsPlan::Implicit => true,
            TlsPlan::Off | TlsPlan::Starttls => false,
        },
        own_starttls: (plan.tls == TlsPlan::Starttls && !recorded_upgrade).then(|| own_ehlo(exchanges)),
        groups: Vec::new(),
        sni: facts.sni.clone(),
        skipped_starttls: 0,
        placeholders: Vec::new(),
    };
    // Refusals for want of credentials: each kind named once, so one run
    // says everything that is missing.
    let mut refusals: Vec<ScriptError> = Vec::new();
    // Sizes of the BDAT chunks sent so far in this transaction, and where
    // their (yet unknown) data goes: (size, group index, offset in its bytes).
    let mut bdat: Vec<(u64, usize, usize)> = Vec::new();
    // The next command starts a group of its own (after STARTTLS, CRAM-MD5).
    let mut fresh = false;
    for (i, e) in exchanges.iter().enumerate() {
        if e.answered_by.as_deref() == Some("proxy") {
            // The client's STARTTLS, answered by smtptap: what follows came after a handshake.
            fresh = true;
            continue;
        }
        let Some(command) = &e.command else {
            if let Some(message) = &e.message {
                // Content after `354`: its own group, sent once DATA is accepted.
                let content = content(e.seq, message, &mut script.placeholders)?;
                let mut bytes = Vec::with_capacity(content.len() + content.len() / 64 + 5);
                dot_stuff(&content, &mut bytes);
                let label = content_label(e.seq, &content, &script.placeholders);
                script.groups.push(Group {
                    bytes,
                    cram_md5: None,
                    expects: vec![expected(e, label, "message")],
                    after_data: true,
                    starttls: None,
                });
            } else if i == 0 && script.groups.is_empty() && script.greeting.is_none() {
                script.greeting = Some(expected(e, "(greeting)".into(), "greeting"));
            }
            // Otherwise a reply nobody asked for: nothing to send.
            continue;
        };
        if command.incomplete {
            // The session ended in the middle of this line: the replay ends here.
            break;
        }
        if command.length.is_some() {
            return Err(ScriptError::TruncatedLine { seq: e.seq });
        }
        let verb = command.verb.as_deref().unwrap_or("");
        let is_starttls = verb == "STARTTLS";
        if is_starttls && leave_out_starttls && upgraded_after(e) {
            script.skipped_starttls += 1;
            fresh = true;
            continue;
        }
        let (mut line, cram_md5) = match line_bytes(e, facts, plan) {
            Ok(sent) => sent,
            Err(refusal) => {
                if !refusals.iter().any(|r| std::mem::discriminant(r) == std::mem::discriminant(&refusal)) {
                    refusals.push(refusal);
                }
                (Vec::new(), None)
            }
        };
        if cram_md5.is_none() {
            line.extend_from_slice(b"\r\n");
        }
        let join = e.pipelined == Some(true)
            && !fresh
            && cram_md5.is_none()
            && script.groups.last().is_some_and(|g| !g.after_data);
        fresh = is_starttls || cram_md5.is_some();
        if !join {
            script.groups.push(Group {
                bytes: Vec::new(),
                cram_md5: None,
                expects: Vec::new(),
                after_data: false,
                starttls: None,
            });
        }
        let group_index = script.groups.len() - 1;
        let group = &mut script.groups[group_index];
        group.bytes.extend_from_slice(&line);
        group.cram_md5 = cram_md5;
        group.expects.push(expected(e, label(command), if verb.is_empty() { "AUTH" } else { verb }));
        if is_starttls {
            group.starttls =
                Some(if upgraded_after(e) { RecordedStartTls::Upgraded } else { RecordedStartTls::Refused });
        }
        if verb == "BDAT" {
            let CommandKind::Bdat { size, last } = Command::parse(command.line.as_bytes()).kind else {
                return Err(ScriptError::Damaged {
                    seq: e.seq,
                    what: format!("cannot read the chunk size of `{}`", command.line),
                });
            };
            bdat.push((size, group_index, group.bytes.len()));
            if last {
                let message = e.message.as_ref().ok_or_else(|| ScriptError::Damaged {
                    seq: e.seq,
                    what: "BDAT LAST without the message content".into(),
                })?;
                let content = content(e.seq, message, &mut script.placeholders)?;
                fill_bdat(&mut script.groups, std::mem::take(&mut bdat), &content, e.seq)?;
            }
        } else if !bdat.is_empty() {
            // A BDAT transaction that never reached LAST (refused, or RSET):
            // its chunk data is not in the recording.
            return Err(ScriptError::Damaged {
                seq: e.seq,
                what: "BDAT chunks without a LAST chunk: their content is not in the recording".into(),
            });
        }
    }
    if !bdat.is_empty() {
        let seq = exchanges.last().map_or(0, |e| e.seq);
        return Err(ScriptError::Damaged {
            seq,
            what: "BDAT chunks without a LAST chunk: their content is not in the recording".into(),
        });
    }
    match refusals.len() {
        0 => Ok(script),
        1 => Err(refusals.remove(0)),
        _ => Err(ScriptError::Several(refusals)),
    }
}

/// A STARTTLS the server accepted, after which the upstream side spoke TLS.
fn upgraded_after(e: &Exchange) -> bool {
    e.answered_by.is_none()
        && e.command.as_ref().is_some_and(|c| c.verb.as_deref() == Some("STARTTLS"))
        && e.reply.as_ref().is_some_and(|r| r.code == 220)
}

/// The EHLO the replay sends before its own STARTTLS: the recording's first.
fn own_ehlo(exchanges: &[&Exchange]) -> Vec<u8> {
    let recorded = exchanges.iter().filter_map(|e| e.command.as_ref()).find(|c| c.verb.as_deref() == Some("EHLO"));
    let mut line = recorded.map_or_else(|| b"EHLO localhost".to_vec(), |c| c.line.clone().into_bytes());
    line.extend_from_slice(b"\r\n");
    line
}

/// The bytes of a command line (CRLF not included), with redacted AUTH data
/// rebuilt; or, for CRAM-MD5, the answer to compute once the challenge came.
fn line_bytes(e: &Exchange, facts: &Facts, plan: &Plan) -> Result<(Vec<u8>, Option<CramMd5>), ScriptError> {
    let Some(command) = &e.command else { return Ok((Vec::new(), None)) };
    let redacted = command.line.strip_suffix(REDACTED).zip(command.auth.as_ref());
    let Some((recorded, auth)) = redacted else {
        let line = command
            .exact_line()
            .map_err(|err| ScriptError::Damaged { seq: e.seq, what: format!("line_base64 is not base64: {err}") })?;
        return Ok((line, None));
    };
    match answer(auth, &plan.credentials, facts.identities_redacted) {
        Ok(Answer::Text(text)) => Ok(([recorded.as_bytes(), text.0.as_bytes()].concat(), None)),
        Ok(Answer::CramMd5(cram)) => Ok((Vec::new(), Some(cram))),
        Err(source) => Err(ScriptError::Credentials { seq: e.seq, source }),
    }
}

fn expected(e: &Exchange, label: String, verb: &str) -> Expected {
    let completes_message = e.message.is_some();
    Expected { seq: e.seq, label, verb: verb.to_owned(), reply: e.reply.clone(), completes_message }
}

/// How a command is named in the output and the reports: SASL client data
/// is never shown, not even from a recording that kept it (`--redact none`).
fn label(command: &CommandRecord) -> String {
    let line = &command.line;
    match command.verb.as_deref() {
        _ if line.ends_with(REDACTED) => line.clone(),
        // A SASL continuation: client data and nothing else.
        None => REDACTED.to_owned(),
        Some("AUTH") => match line.split_ascii_whitespace().collect::<Vec<_>>()[..] {
            [auth, mechanism, _, ..] => format!("{auth} {mechanism} {REDACTED}"),
            _ => line.clone(),
        },
        Some(_) => line.clone(),
    }
}

fn content_label(seq: u64, content: &[u8], placeholders: &[u64]) -> String {
    if placeholders.last() == Some(&seq) {
        format!("(placeholder message, {} octets)", content.len())
    } else {
        format!("(message, {} octets)", content.len())
    }
}

/// Splits `content` by the recorded chunk sizes and inserts each chunk right
/// after its BDAT command line.
fn fill_bdat(
    groups: &mut [Group],
    chunks: Vec<(u64, usize, usize)>,
    content: &[u8],
    seq: u64,
) -> Result<(), ScriptError> {
    let total: u64 = chunks.iter().map(|c| c.0).sum();
    if total != content.len() as u64 {
        return Err(ScriptError::Damaged {
            seq,
            what: format!("the BDAT chunk sizes add up to {total} octets but the message has {}", content.len()),
        });
    }
    // Insert from the back so earlier offsets stay valid.
    let mut starts = Vec::with_capacity(chunks.len());
    let mut at = 0usize;
    for (size, _, _) in &chunks {
        starts.push(at);
        at += *size as usize;
    }
    for ((size, group, offset), start) in chunks.into_iter().zip(starts).rev() {
        let data = &content[start..start + size as usize];
        groups[group].bytes.splice(offset..offset, data.iter().copied());
    }
    Ok(())
}

/// The message content as delivered (dot-stuffing removed), or a
/// placeholder when the body was not recorded (its `seq` noted).
fn content(seq: u64, message: &MessageRecord, placeholders: &mut Vec<u64>) -> Result<Vec<u8>, ScriptError> {
    if !message.complete {
        return Err(ScriptError::IncompleteMessage { seq });
    }
    let Some(body) = &message.body else {
        placeholders.push(seq);
        return Ok(placeholder(message));
    };
    body.bytes().map_err(|err| ScriptError::Damaged { seq, what: format!("the message body is not base64: {err}") })
}

#[cfg(test)]
mod tests;
