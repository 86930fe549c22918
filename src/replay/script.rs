//! Sans-IO: turns a recording into what the replaying client sends and the
//! replies it expects, in order.
//!
//! A [`Script`] is a list of [`Group`]s: bytes written together (one command,
//! a pipelined run of commands, BDAT chunks with their data, or message
//! content after `354`), then one expected reply per recorded exchange in
//! the group. What the client never sent to the server is left out: commands
//! smtptap itself sent (`origin: proxy`), STARTTLS that smtptap answered
//! itself (`answered_by: proxy`), and replies nobody asked for.
//!
//! What cannot be replayed faithfully is refused with a [`ScriptError`]
//! before anything connects: redacted AUTH secrets, bodies recorded with
//! `--no-bodies`, TLS unless `--tls off` was asked for, lines cut at the
//! recording's cap.

use crate::record::format::{BodyEncoding, Exchange, MessageRecord, ReplyRecord};
use crate::record::reader::Recording;
use crate::smtp::data::dot_stuff;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// How the replay treats TLS that the recording used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPlan {
    /// No `--tls` flag: replay as recorded (plaintext only, for now).
    AsRecorded,
    /// `--tls off`: plaintext even where the recording used TLS; recorded
    /// STARTTLS exchanges are left out.
    Off,
}

/// The client side of one recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// The recorded greeting, when there is one.
    pub greeting: Option<Expected>,
    pub groups: Vec<Group>,
    /// Recorded STARTTLS exchanges left out because of `--tls off`.
    pub skipped_starttls: usize,
}

impl Script {
    /// Replies the script expects, greeting included.
    pub fn expected_count(&self) -> usize {
        usize::from(self.greeting.is_some()) + self.groups.iter().map(|g| g.expects.len()).sum::<usize>()
    }
}

/// Bytes sent in one write, and the replies they should get.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub bytes: Vec<u8>,
    pub expects: Vec<Expected>,
    /// Message content after `DATA`: only sent when `DATA` got `354`.
    pub after_data: bool,
}

/// One recorded exchange's reply, and how to name it in the output.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub seq: u64,
    /// The command line as recorded, or `(greeting)` / `(message, N octets)`.
    pub label: String,
    /// `None` when the recording ended before the reply: sent, not compared.
    pub reply: Option<ReplyRecord>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScriptError {
    #[error(
        "exchange #{seq} holds a redacted AUTH secret; substituting credentials (--auth-user / --auth-password-env) is not implemented yet, so this recording cannot be replayed (record with --redact none to replay AUTH)"
    )]
    RedactedAuth { seq: u64 },
    #[error(
        "the recording used TLS (exchange #{seq}) and TLS replay is not implemented yet; pass --tls off to replay it in plaintext"
    )]
    TlsNotImplemented { seq: u64 },
    #[error(
        "exchange #{seq}: the message body was not recorded (--no-bodies); replaying a placeholder body is not implemented yet"
    )]
    NoBody { seq: u64 },
    #[error("exchange #{seq}: the recording ends inside the message content, so it cannot be sent as recorded")]
    IncompleteMessage { seq: u64 },
    #[error("exchange #{seq}: the command line was longer than the recording keeps, so it cannot be sent as recorded")]
    TruncatedLine { seq: u64 },
    #[error("exchange #{seq}: {what}")]
    Damaged { seq: u64, what: String },
    /// More than one of the refusals above, each named once.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<ScriptError>),
}

/// Builds the script for `recording`.
pub fn build(recording: &Recording, tls: TlsPlan) -> Result<Script, ScriptError> {
    let exchanges: Vec<&Exchange> = recording.exchanges().collect();
    build_from(&exchanges, tls)
}

/// Builds the script from a recording's exchanges, in order.
pub fn build_from(exchanges: &[&Exchange], tls: TlsPlan) -> Result<Script, ScriptError> {
    // What needs a flag or a feature not built yet: every kind is named
    // (once), so one run says everything that is missing.
    let mut refusals = Vec::new();
    if tls == TlsPlan::AsRecorded
        && let Some(e) = exchanges.iter().find(|e| e.tls)
    {
        refusals.push(ScriptError::TlsNotImplemented { seq: e.seq });
    }
    let mut refuse = |refusal: ScriptError| {
        if !refusals.iter().any(|r| std::mem::discriminant(r) == std::mem::discriminant(&refusal)) {
            refusals.push(refusal);
        }
    };
    let mut script = Script { greeting: None, groups: Vec::new(), skipped_starttls: 0 };
    // Sizes of the BDAT chunks sent so far in this transaction, and where
    // their (yet unknown) data goes: (group index, offset in its bytes).
    let mut bdat: Vec<(u64, usize, usize)> = Vec::new();
    for (i, e) in exchanges.iter().enumerate() {
        if e.origin.as_deref() == Some("proxy") || e.answered_by.as_deref() == Some("proxy") {
            continue;
        }
        let Some(command) = &e.command else {
            if let Some(message) = &e.message {
                // Content after `354`: its own group, sent once DATA is accepted.
                let content = match message_bytes(e.seq, message) {
                    Err(refusal @ ScriptError::NoBody { .. }) => {
                        refuse(refusal);
                        Vec::new()
                    }
                    other => other?,
                };
                let mut bytes = Vec::with_capacity(content.len() + content.len() / 64 + 5);
                dot_stuff(&content, &mut bytes);
                script.groups.push(Group {
                    bytes,
                    expects: vec![expected(e, format!("(message, {} octets)", content.len()))],
                    after_data: true,
                });
            } else if i == 0 && script.groups.is_empty() && script.greeting.is_none() {
                script.greeting = Some(expected(e, "(greeting)".into()));
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
        if command.line.contains("<redacted>")
            || command.auth.as_ref().is_some_and(|a| a.secret.as_ref().is_some_and(|s| s.is_redacted()))
        {
            refuse(ScriptError::RedactedAuth { seq: e.seq });
        }
        let verb = command.verb.as_deref().unwrap_or("");
        if verb == "STARTTLS" && tls == TlsPlan::Off && e.reply.as_ref().is_some_and(|r| r.code == 220) {
            script.skipped_starttls += 1;
            continue;
        }
        let mut line = match &command.line_base64 {
            Some(b64) => B64.decode(b64).map_err(|err| ScriptError::Damaged {
                seq: e.seq,
                what: format!("line_base64 is not base64: {err}"),
            })?,
            None => command.line.clone().into_bytes(),
        };
        line.extend_from_slice(b"\r\n");
        let pipelined = e.pipelined == Some(true);
        let join = pipelined && script.groups.last().is_some_and(|g| !g.after_data);
        if !join {
            script.groups.push(Group { bytes: Vec::new(), expects: Vec::new(), after_data: false });
        }
        let group_index = script.groups.len() - 1;
        let group = &mut script.groups[group_index];
        group.bytes.extend_from_slice(&line);
        group.expects.push(expected(e, command.line.clone()));
        if verb == "BDAT" {
            let (size, last) = parse_bdat(&command.line).ok_or_else(|| ScriptError::Damaged {
                seq: e.seq,
                what: format!("cannot read the chunk size of `{}`", command.line),
            })?;
            bdat.push((size, group_index, group.bytes.len()));
            if last {
                let message = e.message.as_ref().ok_or_else(|| ScriptError::Damaged {
                    seq: e.seq,
                    what: "BDAT LAST without the message content".into(),
                })?;
                match message_bytes(e.seq, message) {
                    Err(refusal @ ScriptError::NoBody { .. }) => {
                        refuse(refusal);
                        bdat.clear();
                    }
                    content => fill_bdat(&mut script.groups, std::mem::take(&mut bdat), &content?, e.seq)?,
                }
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

fn expected(e: &Exchange, label: String) -> Expected {
    Expected { seq: e.seq, label, reply: e.reply.clone() }
}

/// `BDAT <size> [LAST]`: the size, and whether it is the last chunk.
fn parse_bdat(line: &str) -> Option<(u64, bool)> {
    let mut words = line.split_ascii_whitespace();
    words.next()?;
    let size = words.next()?.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
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

/// The message content as delivered (dot-stuffing removed).
fn message_bytes(seq: u64, message: &MessageRecord) -> Result<Vec<u8>, ScriptError> {
    if !message.complete {
        return Err(ScriptError::IncompleteMessage { seq });
    }
    let body = message.body.as_ref().ok_or(ScriptError::NoBody { seq })?;
    match body.encoding {
        BodyEncoding::Utf8 => Ok(body.data.clone().into_bytes()),
        BodyEncoding::Base64 => B64
            .decode(&body.data)
            .map_err(|err| ScriptError::Damaged { seq, what: format!("the message body is not base64: {err}") }),
    }
}

#[cfg(test)]
mod tests;
