//! What the rules need to know about a session, derived once from its
//! records: the client's exchanges in order with the extensions in force
//! when each was sent, the AUTH dialogs, and the parsing of envelope and
//! header addresses.

use crate::record::format::{Exchange, Note, NoteKind, Record, ReplyRecord, TlsInfo};
use crate::record::reader::Recording;

/// Extensions a server offered in its `EHLO` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    pub pipelining: bool,
    /// `SIZE n`; `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    pub starttls: bool,
    /// AUTH mechanisms, upper-cased.
    pub auth: Vec<String>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub chunking: bool,
}

impl Caps {
    /// Reads an `EHLO` reply (its first line is the server's name).
    pub fn from_ehlo(reply: &ReplyRecord) -> Caps {
        let mut caps = Caps::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else { continue };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "STARTTLS" => caps.starttls = true,
                "AUTH" => caps.auth.extend(words.map(str::to_ascii_uppercase)),
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "CHUNKING" => caps.chunking = true,
                _ => {}
            }
        }
        caps
    }
}

/// How the client last greeted the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    None,
    Ehlo,
    Helo,
}

/// One exchange of the client's (not one smtptap sent itself), with what
/// was in force when the client sent it.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    pub ex: &'a Exchange,
    /// Upper-cased verb; `None` for the greeting, message content and SASL
    /// continuation lines.
    pub verb: Option<&'a str>,
    /// Index into [`Facts::caps`] of the last accepted `EHLO` reply before
    /// this exchange, since the connection or the last TLS upgrade.
    pub caps: Option<usize>,
    pub hello: Hello,
    /// Index into [`Facts::auth`] when this exchange is part of an AUTH dialog.
    pub auth: Option<usize>,
}

impl Step<'_> {
    pub fn seq(&self) -> u64 {
        self.ex.seq
    }

    pub fn code(&self) -> Option<u16> {
        self.ex.reply.as_ref().map(|r| r.code)
    }

    pub fn is(&self, verb: &str) -> bool {
        self.verb == Some(verb)
    }

    /// The greeting (or a reply nobody asked for): no command, no message.
    pub fn is_greeting(&self) -> bool {
        self.ex.command.is_none() && self.ex.message.is_none()
    }

    pub fn line(&self) -> &str {
        self.ex.command.as_ref().map_or("", |c| c.line.as_str())
    }
}

/// An `AUTH` command and the continuation lines that answered its `334`s.
#[derive(Debug, Clone)]
pub struct AuthDialog {
    /// Step indexes, first (the `AUTH`) to last.
    pub first: usize,
    pub last: usize,
    pub mechanism: String,
    /// The decoded identity (authcid, or user), when one was seen.
    pub identity: Option<String>,
    pub authzid: Option<String>,
    pub cancelled: bool,
    pub tls: bool,
}

/// A session, prepared for the rules.
#[derive(Debug)]
pub struct Facts<'a> {
    pub rec: &'a Recording,
    pub steps: Vec<Step<'a>>,
    pub caps: Vec<Caps>,
    pub auth: Vec<AuthDialog>,
    pub notes: Vec<&'a Note>,
    pub tls: Vec<&'a TlsInfo>,
}

impl<'a> Facts<'a> {
    pub fn new(rec: &'a Recording) -> Facts<'a> {
        let mut facts =
            Facts { rec, steps: Vec::new(), caps: Vec::new(), auth: Vec::new(), notes: Vec::new(), tls: Vec::new() };
        let mut caps = None;
        let mut hello = Hello::None;
        let mut dialog: Option<usize> = None;
        for record in &rec.records {
            let ex = match record {
                Record::Exchange(ex) if ex.origin.is_none() => ex,
                Record::Note(n) => {
                    facts.notes.push(n);
                    continue;
                }
                Record::Tls(t) => {
                    facts.tls.push(t);
                    continue;
                }
                _ => continue,
            };
            let command = ex.command.as_ref();
            let verb = command.and_then(|c| c.verb.as_deref());
            let index = facts.steps.len();
            // AUTH dialogs: AUTH, then continuation lines while the server says 334.
            let continues = dialog.is_some_and(|d| {
                let last = &facts.steps[facts.auth[d].last];
                last.code() == Some(334) && command.is_some() && verb.is_none()
            });
            let step_auth = if verb == Some("AUTH") {
                let line = command.map_or("", |c| c.line.as_str());
                let mechanism = line.split_whitespace().nth(1).unwrap_or("").to_ascii_uppercase();
                facts.auth.push(AuthDialog {
                    first: index,
                    last: index,
                    mechanism,
                    identity: None,
                    authzid: None,
                    cancelled: false,
                    tls: ex.tls,
                });
                dialog = Some(facts.auth.len() - 1);
                dialog
            } else if continues {
                dialog
            } else {
                dialog = None;
                None
            };
            if let (Some(d), Some(a)) = (step_auth, command.and_then(|c| c.auth.as_ref())) {
                let d = &mut facts.auth[d];
                d.last = index;
                if let Some(who) = a.authcid.clone().or_else(|| a.user.clone()) {
                    d.identity = Some(who);
                }
                if let Some(z) = a.authzid.clone().filter(|z| !z.is_empty()) {
                    d.authzid = Some(z);
                }
                d.cancelled |= a.cancelled;
            } else if let Some(d) = step_auth {
                facts.auth[d].last = index;
            }
            facts.steps.push(Step { ex, verb, caps, hello, auth: step_auth });
            // What this exchange changes for the ones after it.
            let code = ex.reply.as_ref().map(|r| r.code);
            match (verb, code) {
                (Some("EHLO"), Some(250)) => {
                    facts.caps.push(Caps::from_ehlo(ex.reply.as_ref().expect("a reply")));
                    caps = Some(facts.caps.len() - 1);
                    hello = Hello::Ehlo;
                }
                (Some("HELO"), Some(250)) => {
                    facts.caps.push(Caps::default());
                    caps = Some(facts.caps.len() - 1);
                    hello = Hello::Helo;
                }
                (Some("STARTTLS"), Some(220)) => {
                    caps = None;
                    hello = Hello::None;
                }
                _ => {}
            }
        }
        facts
    }

    pub fn caps_of(&self, step: &Step<'_>) -> Option<&Caps> {
        step.caps.map(|i| &self.caps[i])
    }

    /// The reply that ended an AUTH dialog (not a `334`), if it came.
    pub fn auth_outcome(&self, d: &AuthDialog) -> Option<&'a ReplyRecord> {
        self.steps[d.last].ex.reply.as_ref()
    }

    /// The `MAIL` of the transaction a message (at step `index`) belongs to.
    pub fn mail_for(&self, index: usize) -> Option<&Step<'a>> {
        self.steps[..index]
            .iter()
            .rev()
            .take_while(|s| s.ex.message.is_none() && !matches!(s.verb, Some("RSET" | "EHLO" | "HELO" | "STARTTLS")))
            .find(|s| s.is("MAIL"))
    }

    /// What the client was offered in the EHLO reply smtptap relayed to it:
    /// the recorded reply, as edited by smtptap (noted beside it).
    pub fn starttls_offered_to_client(&self) -> Option<&Step<'a>> {
        let removed = self.notes.iter().any(|n| n.kind == Some(NoteKind::StarttlsWithdrawn));
        let added = self.notes.iter().any(|n| n.kind == Some(NoteKind::StarttlsOffered));
        self.steps.iter().find(|s| {
            let offered = s.ex.reply.as_ref().is_some_and(|r| Caps::from_ehlo(r).starttls);
            s.is("EHLO") && !s.ex.tls && s.code() == Some(250) && ((offered && !removed) || added)
        })
    }
}

/// The address of `MAIL FROM:<a@b> …` (`""` for the null sender).
pub fn mail_from_address(line: &str) -> Option<String> {
    let upper = line.to_ascii_uppercase();
    let at = upper.find("FROM:")? + 5;
    let rest = line[at..].trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        return Some(inner.split('>').next().unwrap_or("").to_owned());
    }
    rest.split_whitespace().next().map(str::to_owned)
}

/// The `KEY` or `KEY=VALUE` parameters after the path of `MAIL FROM:<…>`,
/// keys upper-cased.
pub fn mail_params(line: &str) -> Vec<(String, Option<String>)> {
    let words: Vec<&str> = match line.find('>') {
        Some(i) => line[i + 1..].split_whitespace().collect(),
        None => line.split_whitespace().skip(2).collect(),
    };
    words
        .into_iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v.to_owned())),
            None => (p.to_ascii_uppercase(), None),
        })
        .collect()
}

/// The addresses in a header such as `From: "Name" <a@b>, c@d (comment)`.
pub fn header_addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    let mut bracketed = false;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else { break };
        out.push(rest[open + 1..open + close].trim().to_owned());
        rest = &rest[open + close + 1..];
        bracketed = true;
    }
    if !bracketed {
        for part in value.split(',') {
            let part = strip_comments(part);
            let part = part.trim().trim_matches('"');
            if part.contains('@') {
                out.push(part.rsplit(':').next().unwrap_or(part).trim().to_owned());
            }
        }
    }
    out.retain(|a| !a.is_empty());
    out
}

fn strip_comments(s: &str) -> String {
    let mut depth = 0usize;
    s.chars()
        .filter(|&c| {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => return depth == 0,
            }
            false
        })
        .collect()
}

/// Addresses compared as mail systems do in practice: case-insensitively.
pub fn same_address(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_from_ehlo() {
        let reply = ReplyRecord {
            code: 250,
            enhanced: None,
            lines: ["mx", "PIPELINING", "SIZE 1000", "auth plain LOGIN", "8BITMIME", "STARTTLS"]
                .map(String::from)
                .to_vec(),
            lines_base64: None,
            omitted_lines: 0,
            truncated: false,
        };
        let caps = Caps::from_ehlo(&reply);
        assert!(caps.pipelining && caps.starttls && caps.eightbitmime && !caps.smtputf8 && !caps.chunking);
        assert_eq!(caps.size, Some(1000));
        assert_eq!(caps.auth, ["PLAIN", "LOGIN"]);
    }

    #[test]
    fn envelope_addresses_and_params() {
        assert_eq!(mail_from_address("MAIL FROM:<a@x.test> SIZE=10").as_deref(), Some("a@x.test"));
        assert_eq!(mail_from_address("mail from: <> ").as_deref(), Some(""));
        assert_eq!(mail_from_address("MAIL FROM:a@x.test").as_deref(), Some("a@x.test"));
        assert_eq!(mail_from_address("MAIL"), None);
        let params = mail_params("MAIL FROM:<a@x> size=10 BODY=8BITMIME SMTPUTF8");
        assert_eq!(
            params,
            [
                ("SIZE".to_owned(), Some("10".to_owned())),
                ("BODY".to_owned(), Some("8BITMIME".to_owned())),
                ("SMTPUTF8".to_owned(), None)
            ]
        );
    }

    #[test]
    fn header_address_forms() {
        assert_eq!(header_addresses("\"Ann, B\" <ann@x.test>"), ["ann@x.test"]);
        assert_eq!(header_addresses("ann@x.test (Ann), bob@y.test"), ["ann@x.test", "bob@y.test"]);
        assert_eq!(header_addresses("A <a@x>, B <b@y>"), ["a@x", "b@y"]);
        assert_eq!(header_addresses("undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(domain_of("a@X.test"), "X.test");
        assert!(same_address("A@X.test", "a@x.TEST"));
    }
}
