//! The built-in test SMTP server: the default upstream of `smtptap proxy`,
//! so the tool works out of the box. It accepts all mail and discards it,
//! speaking ESMTP (RFC 5321) with PIPELINING (RFC 2920), SIZE (RFC 1870),
//! 8BITMIME, ENHANCEDSTATUSCODES (RFC 2034) and CHUNKING (RFC 3030).
//!
//! The protocol logic is [`ServerSession`], plain code over bytes; [`serve`]
//! only moves bytes between it and sockets.

pub mod sink;

use crate::smtp::command::{Command, CommandKind};
use crate::smtp::data::DotDecoder;
use crate::smtp::line::LineAssembler;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; we are lenient).
const MAX_COMMAND: usize = 4096;

/// What the test server advertises and enforces.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub hostname: String,
    /// Largest message accepted, in octets (advertised as `SIZE`).
    pub max_message_size: u64,
    /// A client silent this long is disconnected with `421`.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "smtptap.test".into(),
            max_message_size: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// TLS for the test server: STARTTLS offered after EHLO, or TLS from the first byte.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub implicit: bool,
}

/// Accepts connections on `listener` forever, one task per session.
pub async fn serve(listener: TcpListener, config: ServerConfig, tls: Option<ServerTls>) {
    let shared = Arc::new((config, tls));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let (config, tls) = &*shared;
                    if let Err(e) = run_connection(stream, config, tls.as_ref()).await {
                        tracing::debug!(%peer, error = %e, "test server session ended with an error");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "test server could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs one session on a connection, with TLS as configured.
pub async fn run_connection(mut stream: TcpStream, config: &ServerConfig, tls: Option<&ServerTls>) -> io::Result<()> {
    let mut session = ServerSession::new(config.clone());
    match tls {
        Some(tls) if tls.implicit => {
            let mut stream = tls.acceptor.accept(stream).await?;
            session.tls_started();
            converse(&mut stream, &mut session, true).await?;
            stream.shutdown().await
        }
        Some(tls) => {
            session.offer_starttls();
            if converse(&mut stream, &mut session, true).await? == Flow::StartTls {
                let mut stream = tls.acceptor.accept(stream).await?;
                session.tls_started();
                converse(&mut stream, &mut session, false).await?;
                stream.shutdown().await?;
            }
            Ok(())
        }
        None => converse(&mut stream, &mut session, true).await.map(drop),
    }
}

/// Exchanges SMTP until the session closes or switches to TLS.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut ServerSession,
    greet: bool,
) -> io::Result<Flow> {
    let mut out = Vec::new();
    if greet {
        session.greeting(&mut out);
        stream.write_all(&out).await?;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(session.config.idle_timeout, stream.read(&mut buf)).await {
            Ok(n) => n?,
            Err(_) => {
                stream.write_all(b"421 4.4.2 Idle timeout, closing connection\r\n").await?;
                return Ok(Flow::Close);
            }
        };
        if n == 0 {
            return Ok(Flow::Close);
        }
        out.clear();
        let flow = session.feed(&buf[..n], &mut out);
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        match flow {
            Flow::Continue => {}
            Flow::Close => {
                stream.shutdown().await?;
                return Ok(Flow::Close);
            }
            Flow::StartTls => return Ok(Flow::StartTls),
        }
    }
}

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
    Data(DotDecoder),
    Chunk { remaining: u64, last: bool },
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
    /// Size of the message being received so far.
    received: u64,
    /// A BDAT transaction failed; its remaining chunks are read and refused.
    chunk_error: bool,
    /// STARTTLS is advertised (until TLS is active).
    starttls: bool,
    tls_active: bool,
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
            received: 0,
            chunk_error: false,
            starttls: false,
            tls_active: false,
        }
    }

    pub fn offer_starttls(&mut self) {
        self.starttls = true;
    }

    /// TLS is now active: the client starts over with EHLO (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.greeted = false;
        self.lines = LineAssembler::default();
        self.reset();
    }

    pub fn greeting(&self, out: &mut Vec<u8>) {
        reply(out, &format!("220 {} ESMTP smtptap test server", self.config.hostname));
    }

    /// Consumes client input, appending every reply it calls for to `out`.
    /// Pipelined commands are all answered, in order, in one `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Flow {
        while !input.is_empty() {
            let used = match &mut self.mode {
                Mode::Commands => {
                    let (used, complete) = self.lines.feed(input);
                    if complete {
                        match self.command(out) {
                            Flow::Continue => {}
                            stop => return stop,
                        }
                    }
                    used
                }
                Mode::Data(decoder) => {
                    let mut size = 0u64;
                    let (used, ended) = decoder.decode(input, &mut |c| size += c.len() as u64);
                    self.received += size;
                    if ended {
                        self.mode = Mode::Commands;
                        self.end_of_message(out);
                    }
                    used
                }
                Mode::Chunk { remaining, last } => {
                    let take = input.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= take as u64;
                    self.received += take as u64;
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

    fn command(&mut self, out: &mut Vec<u8>) -> Flow {
        let line = self.lines.line();
        if line.len > MAX_COMMAND {
            reply(out, "500 5.5.6 Line too long");
            return Flow::Continue;
        }
        let text = line.text.to_vec();
        let command = Command::parse(&text);
        let arg = text.get(command.verb.len() + 1..).unwrap_or_default();
        match (command.verb.as_str(), &command.kind) {
            ("EHLO", _) => {
                self.reset();
                self.greeted = true;
                let max = self.config.max_message_size;
                let host = &self.config.hostname;
                let tls = if self.starttls && !self.tls_active { "250-STARTTLS\r\n" } else { "" };
                let extensions = "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING";
                reply(out, &format!("250-{host}\r\n250-PIPELINING\r\n250-SIZE {max}\r\n{tls}{extensions}"));
            }
            ("HELO", _) => {
                self.reset();
                self.greeted = true;
                reply(out, &format!("250 {}", self.config.hostname));
            }
            ("MAIL", _) => self.mail(arg, out),
            ("RCPT", _) if !self.sender => reply(out, "503 5.5.1 Error: need MAIL command"),
            ("RCPT", _) => {
                self.recipients += 1;
                reply(out, "250 2.1.5 Ok");
            }
            (_, CommandKind::Data) if self.recipients == 0 => reply(out, "554 5.5.1 Error: no valid recipients"),
            (_, CommandKind::Data) => {
                self.mode = Mode::Data(DotDecoder::default());
                reply(out, "354 End data with <CR><LF>.<CR><LF>");
            }
            (_, CommandKind::Bdat { size, last }) => {
                if self.recipients == 0 {
                    self.chunk_error = true;
                }
                self.mode = Mode::Chunk { remaining: *size, last: *last };
                if *size == 0 {
                    self.chunk_complete(*last, out);
                }
            }
            ("BDAT", _) => reply(out, "501 5.5.4 Syntax: BDAT size [LAST]"),
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
            (_, CommandKind::StartTls | CommandKind::Auth { .. }) => {
                reply(out, "502 5.5.1 Error: command not implemented")
            }
            _ => reply(out, "500 5.5.2 Error: command not recognized"),
        }
        Flow::Continue
    }

    fn mail(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        if !self.greeted {
            return reply(out, "503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.sender {
            return reply(out, "503 5.5.1 Error: nested MAIL command");
        }
        let declared = String::from_utf8_lossy(arg)
            .split_ascii_whitespace()
            .find_map(|p| p.get(..5).filter(|k| k.eq_ignore_ascii_case("SIZE=")).and(p[5..].parse::<u64>().ok()));
        if declared.is_some_and(|s| s > self.config.max_message_size) {
            return reply(out, "552 5.3.4 Message size exceeds fixed limit");
        }
        self.sender = true;
        reply(out, "250 2.1.0 Ok");
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
            reply(out, &format!("250 2.0.0 {} octets received", self.received));
        }
    }

    fn end_of_message(&mut self, out: &mut Vec<u8>) {
        if self.received > self.config.max_message_size {
            reply(out, "552 5.3.4 Message size exceeds fixed limit");
        } else {
            reply(out, &format!("250 2.0.0 Ok: queued as {}", queue_id()));
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.sender = false;
        self.recipients = 0;
        self.received = 0;
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
mod tests {
    use super::*;

    fn talk(input: &[u8]) -> (String, Flow) {
        let mut s = ServerSession::new(ServerConfig::default());
        let mut out = Vec::new();
        let flow = s.feed(input, &mut out);
        (String::from_utf8(out).unwrap(), flow)
    }

    #[test]
    fn pipelined_transaction_answers_in_order() {
        let (out, flow) = talk(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhi\r\n..x\r\n.\r\nQUIT\r\n");
        let codes: Vec<&str> = out.lines().map(|l| &l[..4]).collect();
        assert_eq!(codes, ["250-", "250-", "250-", "250-", "250-", "250 ", "250 ", "250 ", "354 ", "250 ", "221 "]);
        assert_eq!(flow, Flow::Close);
    }

    #[test]
    fn bdat_chunks_with_binary_content() {
        let (out, _) =
            talk(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nBDAT 5\r\n\r\n\x00\xff.BDAT 3 LAST\r\nabcNOOP\r\n");
        let tail: Vec<&str> = out.lines().skip(8).collect();
        assert_eq!(tail.len(), 3, "{out}");
        assert!(tail[0].starts_with("250 2.0.0 5 octets"));
        assert!(tail[1].starts_with("250 2.0.0 Ok: queued as"));
        assert_eq!(tail[2], "250 2.0.0 Ok");
    }

    #[test]
    fn sequence_errors_and_limits() {
        let (out, _) =
            talk(b"MAIL FROM:<a>\r\nEHLO c\r\nRCPT TO:<b>\r\nMAIL FROM:<a> SIZE=999999999999\r\nDATA\r\nFOO\r\n");
        let codes: Vec<&str> = out.lines().filter(|l| !l.starts_with("250-")).map(|l| &l[..3]).collect();
        assert_eq!(codes, ["503", "250", "503", "552", "554", "500"]);
        let long = format!("NOOP {}\r\n", "x".repeat(5000));
        assert!(talk(long.as_bytes()).0.starts_with("500 5.5.6"));
    }

    #[test]
    fn starttls_is_offered_then_discards_pipelined_input() {
        let mut s = ServerSession::new(ServerConfig::default());
        s.offer_starttls();
        let mut out = Vec::new();
        assert_eq!(s.feed(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected>\r\n", &mut out), Flow::StartTls);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("250-STARTTLS\r\n"));
        assert!(text.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{text}");
        s.tls_started();
        let mut out = Vec::new();
        s.feed(b"MAIL FROM:<a>\r\nEHLO c\r\nSTARTTLS\r\n", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("503 5.5.1 Error: send HELO/EHLO first"), "greeting state reset: {text}");
        assert!(!text.contains("STARTTLS"), "{text}");
        assert!(text.ends_with("503 5.5.1 Error: TLS already active\r\n"));
    }
}
