//! Crafted sessions for unit tests: a builder that writes records the way
//! the proxy does.

use crate::auth::AuthRecord;
use crate::record::format::{
    Body, BodyEncoding, CommandRecord, EndReason, Exchange, MessageRecord, Note, NoteKind, Record, ReplyRecord,
    SessionEnd, SessionInfo, TlsInfo, TlsSide,
};
use crate::record::reader::Recording;
use crate::smtp::message::MessageDigest;
use base64::Engine as _;
use std::path::PathBuf;

pub const T0: &str = "2026-11-28T19:36:24.000000Z";

pub struct Script {
    records: Vec<Record>,
    seq: u64,
    tls: bool,
    ms: u64,
}

/// A reply record from `code` and the text after the code (lines split on `\n`).
pub fn reply(code: u16, text: &str) -> ReplyRecord {
    let lines: Vec<String> = text.split('\n').filter(|l| !l.is_empty()).map(str::to_owned).collect();
    let enhanced = lines.last().and_then(|l| {
        let first = l.split(' ').next()?;
        let parts: Vec<&str> = first.split('.').collect();
        (parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
            .then(|| first.to_owned())
    });
    ReplyRecord { code, enhanced, lines, lines_base64: None, omitted_lines: 0, truncated: false }
}

pub fn auth(mechanism: &str, user: &str) -> AuthRecord {
    let mut a = AuthRecord { mechanism: mechanism.into(), ..Default::default() };
    if mechanism == "PLAIN" {
        a.authzid = Some(String::new());
        a.authcid = Some(user.into());
    } else {
        a.user = Some(user.into());
    }
    a
}

impl Default for Script {
    fn default() -> Self {
        Script::new()
    }
}

impl Script {
    /// A session that starts with the server's greeting.
    pub fn new() -> Script {
        Script::bare().server(220, "mx.test ESMTP")
    }

    /// A session with no greeting yet.
    pub fn bare() -> Script {
        Script { records: Vec::new(), seq: 0, tls: false, ms: 0 }
    }

    fn t(&mut self) -> String {
        self.ms += 10;
        format!("2026-11-28T19:36:{:02}.{:03}000Z", 24 + self.ms / 1000, self.ms % 1000)
    }

    fn push(&mut self, command: Option<CommandRecord>, message: Option<MessageRecord>, reply: Option<ReplyRecord>) {
        let t = self.t();
        let pipelined = command.is_some().then_some(false);
        let ms = reply.as_ref().map(|_| 1.5);
        self.records.push(Record::Exchange(Exchange {
            seq: self.seq,
            t,
            tls: self.tls,
            pipelined,
            command,
            message,
            reply,
            ms,
            origin: None,
            answered_by: None,
        }));
        self.seq += 1;
    }

    fn last(&mut self) -> &mut Exchange {
        self.records
            .iter_mut()
            .rev()
            .find_map(|r| match r {
                Record::Exchange(e) => Some(e),
                _ => None,
            })
            .expect("an exchange")
    }

    /// A reply with no command (the greeting, or one nobody asked for).
    pub fn server(mut self, code: u16, text: &str) -> Script {
        self.push(None, None, Some(reply(code, text)));
        self
    }

    /// A command and its reply; `text` may hold several lines split by `\n`.
    pub fn cmd(mut self, line: &str, code: u16, text: &str) -> Script {
        let verb = line.split(' ').next().map(str::to_ascii_uppercase);
        self.push(Some(CommandRecord::redacted(verb, line.into())), None, Some(reply(code, text)));
        self
    }

    /// `EHLO client.test` answered with these extensions.
    pub fn ehlo(self, extensions: &[&str]) -> Script {
        let mut text = String::from("mx.test");
        for e in extensions {
            text.push('\n');
            text.push_str(e);
        }
        self.cmd("EHLO client.test", 250, &text)
    }

    /// The last exchange was sent before the previous reply came.
    pub fn piped(mut self) -> Script {
        self.last().pipelined = Some(true);
        self
    }

    /// STARTTLS accepted and both handshakes done.
    pub fn starttls(mut self) -> Script {
        self = self.cmd("STARTTLS", 220, "2.0.0 Ready to start TLS");
        for side in [TlsSide::Upstream, TlsSide::Client] {
            let t = self.t();
            self.records.push(Record::Tls(TlsInfo {
                side,
                t,
                version: Some("TLSv1.3".into()),
                cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
                sni: None,
                peer: None,
                error: None,
            }));
        }
        self.tls = true;
        self
    }

    /// A failed handshake on `side`.
    pub fn tls_error(mut self, side: TlsSide, error: &str) -> Script {
        let t = self.t();
        self.records.push(Record::Tls(TlsInfo {
            side,
            t,
            version: None,
            cipher: None,
            sni: None,
            peer: None,
            error: Some(error.into()),
        }));
        self
    }

    /// `AUTH …` with decoded data on it, answered `code text`.
    pub fn auth(mut self, line: &str, data: Option<AuthRecord>, code: u16, text: &str) -> Script {
        let mut c = CommandRecord::redacted(Some("AUTH".into()), line.into());
        c.auth = data;
        self.push(Some(c), None, Some(reply(code, text)));
        self
    }

    /// A SASL continuation line (the client's answer to a 334).
    pub fn sasl(mut self, data: Option<AuthRecord>, code: u16, text: &str) -> Script {
        let mut c = CommandRecord::redacted(None, "<redacted>".into());
        c.auth = data;
        self.push(Some(c), None, Some(reply(code, text)));
        self
    }

    /// A note from the proxy.
    pub fn note(mut self, kind: NoteKind, text: &str) -> Script {
        let t = self.t();
        self.records.push(Record::Note(Note { t, kind: Some(kind), text: text.into(), data_base64: None }));
        self
    }

    /// MAIL, RCPT, DATA (354) and the content, each accepted.
    pub fn send(self, from: &str, to: &str, content: &[u8]) -> Script {
        self.cmd(&format!("MAIL FROM:<{from}>"), 250, "2.1.0 Ok")
            .cmd(&format!("RCPT TO:<{to}>"), 250, "2.1.5 Ok")
            .cmd("DATA", 354, "End data with <CR><LF>.<CR><LF>")
            .content(content, 250, "2.0.0 Ok: queued")
    }

    /// Message content (after a 354) with its body kept, answered `code text`.
    pub fn content(mut self, content: &[u8], code: u16, text: &str) -> Script {
        let message = message(content, true);
        self.push(None, Some(message), Some(reply(code, text)));
        self
    }

    /// Drops the body of every message (as `--no-bodies` records them).
    pub fn without_bodies(mut self) -> Script {
        for r in &mut self.records {
            if let Record::Exchange(Exchange { message: Some(m), .. }) = r {
                m.body = None;
            }
        }
        self
    }

    /// Ends with `QUIT` and an `end` record.
    pub fn quit(self) -> Recording {
        self.cmd("QUIT", 221, "2.0.0 Bye").end(EndReason::Quit)
    }

    pub fn end(mut self, reason: EndReason) -> Recording {
        let end = SessionEnd {
            reason,
            error: None,
            duration_ms: self.ms,
            exchanges: self.seq,
            messages: 0,
            bytes_from_client: 0,
            bytes_from_upstream: 0,
        };
        self.records.push(Record::End(end));
        self.unended()
    }

    /// The recording as it stands, without an `end`.
    pub fn unended(self) -> Recording {
        Recording {
            path: PathBuf::from("crafted.jsonl"),
            session: session_info(),
            records: self.records,
            truncated: false,
            problems: Vec::new(),
        }
    }
}

pub fn session_info() -> SessionInfo {
    SessionInfo {
        format: 1,
        id: "test".into(),
        started: T0.into(),
        listen: "127.0.0.1:2525".into(),
        client: "127.0.0.1:50000".into(),
        upstream: "mx.test:587".into(),
        tool: "smtptap 0.1.0".into(),
        client_tls: None,
        upstream_tls: None,
        insecure_upstream: false,
        redact: None,
    }
}

/// A message record for `content`, as the proxy makes it.
pub fn message(content: &[u8], keep_body: bool) -> MessageRecord {
    let mut digest = MessageDigest::default();
    digest.update(content);
    let mut m = MessageRecord::from(digest.finish(true));
    if keep_body {
        m.body = Some(match std::str::from_utf8(content) {
            Ok(s) => Body { encoding: BodyEncoding::Utf8, data: s.into() },
            Err(_) => {
                Body { encoding: BodyEncoding::Base64, data: base64::engine::general_purpose::STANDARD.encode(content) }
            }
        });
    }
    m
}

/// A well-formed message from `from` to `to`.
pub fn good_message(from: &str, to: &str) -> Vec<u8> {
    format!(
        "Date: Sat, 28 Nov 2026 19:36:24 +0000\r\nFrom: Ann <{from}>\r\nTo: {to}\r\nSubject: hello\r\nMessage-ID: <1@client.test>\r\n\r\nHello.\r\n"
    )
    .into_bytes()
}

/// The extensions a modern submission server offers before STARTTLS.
pub const PLAIN_EXTENSIONS: &[&str] = &["PIPELINING", "SIZE 10240000", "STARTTLS", "ENHANCEDSTATUSCODES", "8BITMIME"];
/// … and after.
pub const TLS_EXTENSIONS: &[&str] =
    &["PIPELINING", "SIZE 10240000", "AUTH PLAIN LOGIN", "ENHANCEDSTATUSCODES", "8BITMIME"];

/// A clean session: STARTTLS, AUTH PLAIN, one good message, QUIT.
pub fn clean() -> Recording {
    Script::new()
        .ehlo(PLAIN_EXTENSIONS)
        .starttls()
        .ehlo(TLS_EXTENSIONS)
        .auth("AUTH PLAIN <redacted>", Some(auth("PLAIN", "ann@x.test")), 235, "2.7.0 Authentication successful")
        .send("ann@x.test", "bob@y.test", &good_message("ann@x.test", "bob@y.test"))
        .quit()
}
