//! The server side of one SMTP session, sans IO: client bytes in, replies
//! out. Message content goes to the configured [`Store`](super::store::Store),
//! if any, as it arrives.

use super::ServerConfig;
use super::auth::{Exchange, MECHANISMS, Outcome, Step};
use super::rules::TOO_BIG;
use super::store::{Draft, Store};
use crate::smtp::command::{Command, CommandKind};
use crate::smtp::data::DotDecoder;
use crate::smtp::line::LineAssembler;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; we are lenient).
const MAX_COMMAND: usize = 4096;

/// Whether the connection stays open after some input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
    /// A TLS handshake follows; input after the STARTTLS line was discarded
    /// (RFC 3207 §5: nothing sent before the handshake counts).
    StartTls,
}

#[derive(Debug)]
enum Mode {
    Commands,
    /// An AUTH exchange waits for the client's next line.
    Auth(Exchange),
    Data(DotDecoder),
    Chunk {
        remaining: u64,
        last: bool,
    },
}

/// The message being received: its size so far and where its content goes.
#[derive(Debug, Default)]
struct Incoming {
    size: u64,
    /// The content being saved; dropped (and its file removed) once the
    /// message is over the size limit or saving failed.
    draft: Option<Draft>,
    /// Why saving failed; the message is refused with `451` at its end.
    error: Option<String>,
}

impl Incoming {
    fn start(store: Option<&Arc<Store>>) -> Incoming {
        match store.map(Store::begin) {
            Some(Ok(draft)) => Incoming { draft: Some(draft), ..Incoming::default() },
            Some(Err(e)) => Incoming { error: Some(e.to_string()), ..Incoming::default() },
            None => Incoming::default(),
        }
    }

    fn take(&mut self, content: &[u8], limit: u64) {
        self.size += content.len() as u64;
        if self.size > limit {
            self.draft = None;
        }
        if let Some(Err(e)) = self.draft.as_mut().map(|draft| draft.write(content)) {
            self.error = Some(e.to_string());
            self.draft = None;
        }
    }

    /// Saves the message if there is a store: where it went, or why it could not.
    fn finish(self) -> Result<Option<PathBuf>, String> {
        match (self.error, self.draft) {
            (Some(e), _) => Err(e),
            (None, Some(draft)) => draft.commit().map(Some).map_err(|e| e.to_string()),
            (None, None) => Ok(None),
        }
    }
}

/// The server side of one SMTP session, sans IO.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    lines: LineAssembler,
    mode: Mode,
    greeted: bool,
    sender: bool,
    recipients: usize,
    /// The message being received (DATA, or BDAT chunks so far).
    message: Option<Incoming>,
    /// A BDAT transaction failed; its remaining chunks are read and refused.
    chunk_error: bool,
    /// STARTTLS is advertised (until TLS is active).
    starttls: bool,
    tls_active: bool,
    /// The user the client authenticated as.
    user: Option<String>,
}

impl ServerSession {
    pub fn new(config: ServerConfig) -> ServerSession {
        ServerSession {
            config,
            lines: LineAssembler::default(),
            mode: Mode::Commands,
            greeted: false,
            sender: false,
            recipients: 0,
            message: None,
            chunk_error: false,
            starttls: false,
            tls_active: false,
            user: None,
        }
    }

    /// How long the client may stay silent.
    pub fn idle_timeout(&self) -> std::time::Duration {
        self.config.idle_timeout
    }

    pub fn offer_starttls(&mut self) {
        self.starttls = true;
    }

    /// TLS is now active: the client starts over with EHLO and must
    /// authenticate again (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.greeted = false;
        self.user = None;
        self.lines = LineAssembler::default();
        self.reset();
    }

    pub fn greeting(&self, out: &mut Vec<u8>) {
        reply(out, &format!("220 {} ESMTP smtptap test server", self.config.hostname));
    }

    /// Consumes client input, appending every reply it calls for to `out`.
    /// Pipelined commands are all answered, in order, in one `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Flow {
        let limit = self.config.max_message_size;
        while !input.is_empty() {
            let used = match &mut self.mode {
                Mode::Commands | Mode::Auth(_) => {
                    let (used, complete) = self.lines.feed(input);
                    if complete {
                        match self.line(out) {
                            Flow::Continue => {}
                            stop => return stop,
                        }
                    }
                    used
                }
                Mode::Data(decoder) => {
                    let message = &mut self.message;
                    let (used, ended) = decoder.decode(input, &mut |c| {
                        if let Some(m) = message.as_mut() {
                            m.take(c, limit);
                        }
                    });
                    if ended {
                        self.mode = Mode::Commands;
                        self.end_of_message(out);
                    }
                    used
                }
                Mode::Chunk { remaining, last } => {
                    let take = input.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= take as u64;
                    if let Some(m) = self.message.as_mut() {
                        m.take(&input[..take], limit);
                    }
                    if *remaining == 0 {
                        let last = *last;
                        self.chunk_complete(last, out);
                    }
                    take
                }
            };
            input = &input[used..];
        }
        Flow::Continue
    }

    /// A complete line: a command, or the client's answer to a `334`.
    fn line(&mut self, out: &mut Vec<u8>) -> Flow {
        let line = self.lines.line();
        let too_long = line.len > MAX_COMMAND;
        let text = line.text.to_vec();
        match std::mem::replace(&mut self.mode, Mode::Commands) {
            _ if too_long => reply(out, "500 5.5.6 Line too long"),
            Mode::Auth(exchange) => {
                let step = exchange.respond(&text, &self.config.accounts);
                self.auth_step(step, out);
            }
            _ => return self.command(&text, out),
        }
        Flow::Continue
    }

    fn command(&mut self, text: &[u8], out: &mut Vec<u8>) -> Flow {
        let command = Command::parse(text);
        let arg = text.get(command.verb.len() + 1..).unwrap_or_default();
        match (command.verb.as_str(), &command.kind) {
            ("EHLO", _) => {
                self.reset();
                self.greeted = true;
                reply(out, &self.ehlo_reply());
            }
            ("HELO", _) => {
                self.reset();
                self.greeted = true;
                reply(out, &format!("250 {}", self.config.hostname));
            }
            ("MAIL", _) => self.mail(arg, out),
            ("RCPT", _) if !self.sender => reply(out, "503 5.5.1 Error: need MAIL command"),
            ("RCPT", _) => match self.config.rules.recipient(arg) {
                Some(refusal) => reply(out, refusal),
                None => {
                    self.recipients += 1;
                    reply(out, "250 2.1.5 Ok");
                }
            },
            (_, CommandKind::Data) if self.recipients == 0 => reply(out, "554 5.5.1 Error: no valid recipients"),
            (_, CommandKind::Data) => {
                self.message = Some(Incoming::start(self.config.store.as_ref()));
                self.mode = Mode::Data(DotDecoder::default());
                reply(out, "354 End data with <CR><LF>.<CR><LF>");
            }
            (_, CommandKind::Bdat { size, last }) => {
                if self.recipients == 0 {
                    self.chunk_error = true;
                } else if self.message.is_none() {
                    self.message = Some(Incoming::start(self.config.store.as_ref()));
                }
                self.mode = Mode::Chunk { remaining: *size, last: *last };
                if *size == 0 {
                    self.chunk_complete(*last, out);
                }
            }
            ("BDAT", _) => reply(out, "501 5.5.4 Syntax: BDAT size [LAST]"),
            (_, CommandKind::Auth { .. }) => self.auth(arg, out),
            ("RSET", _) => {
                self.reset();
                reply(out, "250 2.0.0 Ok");
            }
            ("NOOP", _) => reply(out, "250 2.0.0 Ok"),
            ("VRFY", _) => reply(out, "252 2.0.0 Cannot VRFY user, but will accept message"),
            ("HELP", _) => reply(out, "214 2.0.0 See RFC 5321"),
            (_, CommandKind::Quit) => {
                reply(out, "221 2.0.0 Bye");
                return Flow::Close;
            }
            (_, CommandKind::StartTls) if self.tls_active => reply(out, "503 5.5.1 Error: TLS already active"),
            (_, CommandKind::StartTls) if self.starttls => {
                reply(out, "220 2.0.0 Ready to start TLS");
                return Flow::StartTls;
            }
            (_, CommandKind::StartTls) => reply(out, "502 5.5.1 Error: command not implemented"),
            _ => reply(out, "500 5.5.2 Error: command not recognized"),
        }
        Flow::Continue
    }

    fn ehlo_reply(&self) -> String {
        let mut lines = vec![self.config.hostname.clone(), "PIPELINING".into()];
        lines.push(format!("SIZE {}", self.config.max_message_size));
        if self.starttls && !self.tls_active {
            lines.push("STARTTLS".into());
        }
        if !self.config.accounts.is_empty() {
            lines.push(format!("AUTH {MECHANISMS}"));
        }
        lines.extend(["8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"].map(String::from));
        let last = lines.len() - 1;
        let lines = lines.iter().enumerate().map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }));
        lines.collect::<Vec<_>>().join("\r\n")
    }

    fn mail(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        if !self.greeted {
            return reply(out, "503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.config.require_auth && self.user.is_none() {
            return reply(out, "530 5.7.0 Authentication required");
        }
        if self.sender {
            return reply(out, "503 5.5.1 Error: nested MAIL command");
        }
        if let Some(refusal) = self.config.rules.sender(arg, self.config.max_message_size) {
            return reply(out, refusal);
        }
        self.sender = true;
        reply(out, "250 2.1.0 Ok");
    }

    fn auth(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        let refusal = if self.config.accounts.is_empty() {
            "502 5.5.1 Error: command not implemented"
        } else if !self.greeted {
            "503 5.5.1 Error: send EHLO first"
        } else if self.user.is_some() {
            "503 5.5.1 Error: already authenticated"
        } else if self.sender {
            "503 5.5.1 Error: AUTH not permitted during a mail transaction"
        } else {
            let step = Exchange::start(arg, &self.config.accounts, &self.config.hostname);
            return self.auth_step(step, out);
        };
        reply(out, refusal);
    }

    fn auth_step(&mut self, step: Step, out: &mut Vec<u8>) {
        match step {
            Step::Continue(exchange, challenge) => {
                self.mode = Mode::Auth(exchange);
                reply(out, &challenge);
            }
            Step::Done(outcome) => {
                match &outcome {
                    Outcome::Authenticated(user) => {
                        tracing::info!(user, "client authenticated");
                        self.user = Some(user.clone());
                    }
                    other => tracing::info!(reply = other.reply(), "authentication failed"),
                }
                reply(out, outcome.reply());
            }
        }
    }

    fn chunk_complete(&mut self, last: bool, out: &mut Vec<u8>) {
        self.mode = Mode::Commands;
        if self.chunk_error {
            reply(out, "503 5.5.1 Error: need RCPT command");
            if last {
                self.reset();
            }
        } else if last {
            self.end_of_message(out);
        } else {
            let size = self.message.as_ref().map_or(0, |m| m.size);
            reply(out, &format!("250 2.0.0 {size} octets received"));
        }
    }

    fn end_of_message(&mut self, out: &mut Vec<u8>) {
        let message = self.message.take().unwrap_or_default();
        if message.size > self.config.max_message_size {
            tracing::info!(size = message.size, "message refused: over the size limit");
            reply(out, TOO_BIG);
        } else {
            let size = message.size;
            match message.finish() {
                Ok(saved) => {
                    let id = queue_id();
                    let saved = saved.map(|path| path.display().to_string()).unwrap_or_default();
                    tracing::info!(id, size, saved, "message accepted");
                    reply(out, &format!("250 2.0.0 Ok: queued as {id}"));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot save a message; refused it with 451");
                    reply(out, "451 4.3.0 Cannot save the message; see the server's log");
                }
            }
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.sender = false;
        self.recipients = 0;
        self.message = None;
        self.chunk_error = false;
    }
}

fn reply(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A queue id in the style of Postfix's, unique within the process.
fn queue_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0x1_0000);
    format!("{:X}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests;
