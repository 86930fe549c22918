//! Client commands (RFC 5321 §4.1, RFC 3030 BDAT, RFC 4954 AUTH, RFC 3207
//! STARTTLS): the verb, and what the observer must know to follow framing.

/// What a command line means for the framing of what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// `DATA`: message content follows once the server answers 354.
    Data,
    /// `BDAT size [LAST]`: exactly `size` octets of content follow the line.
    Bdat { size: u64, last: bool },
    /// `AUTH mechanism [initial-response]`: SASL lines follow while the server
    /// answers 334. The initial response is a secret and is never kept.
    Auth { mechanism: String, initial_response: bool },
    /// `STARTTLS`: a TLS handshake follows the server's 220.
    StartTls,
    /// `QUIT`: the session ends after the server's reply.
    Quit,
    /// `EHLO`: its reply lists the extensions (and may be edited for STARTTLS).
    Ehlo,
    /// Any other verb, known or not: one line, one reply.
    Other,
}

/// Verbs of SMTP and its extensions, upper-case as [`Command::verb`] has them.
pub const KNOWN_VERBS: &[&str] = &[
    "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "STARTTLS",
    "AUTH", "ETRN", "ATRN",
];

/// Whether `verb` (upper-case) is one of [`KNOWN_VERBS`].
pub fn is_known_verb(verb: &str) -> bool {
    KNOWN_VERBS.contains(&verb)
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The verb upper-cased (`MAIL`, `EHLO`, …), as far as it is printable ASCII.
    pub verb: String,
    pub kind: CommandKind,
}

impl Command {
    /// Parses a command line without its CRLF. Never fails: anything is a
    /// command with some verb, since the server, not the observer, judges it.
    pub fn parse(line: &[u8]) -> Command {
        let mut words = line.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty());
        let verb: String = words
            .next()
            .unwrap_or_default()
            .iter()
            .take(32)
            .map(|&b| if b.is_ascii_graphic() { b.to_ascii_uppercase() as char } else { '?' })
            .collect();
        let kind = match verb.as_str() {
            "DATA" => CommandKind::Data,
            "STARTTLS" => CommandKind::StartTls,
            "QUIT" => CommandKind::Quit,
            "EHLO" => CommandKind::Ehlo,
            "BDAT" => parse_bdat(&mut words).unwrap_or(CommandKind::Other),
            "AUTH" => CommandKind::Auth {
                mechanism: words.next().map(|m| String::from_utf8_lossy(m).to_ascii_uppercase()).unwrap_or_default(),
                initial_response: words.next().is_some(),
            },
            _ => CommandKind::Other,
        };
        Command { verb, kind }
    }
}

/// `BDAT` needs a decimal size and at most the word `LAST` after it; anything
/// else is a syntax error the server rejects without reading a chunk.
fn parse_bdat<'a>(words: &mut impl Iterator<Item = &'a [u8]>) -> Option<CommandKind> {
    let size = words.next()?;
    if size.is_empty() || size.len() > 19 || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = std::str::from_utf8(size).ok()?.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some(CommandKind::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(line: &str) -> CommandKind {
        Command::parse(line.as_bytes()).kind
    }

    #[test]
    fn verbs_are_uppercased() {
        assert_eq!(Command::parse(b"ehlo moonpoint.com").verb, "EHLO");
        assert_eq!(Command::parse(b"MAIL FROM:<a@b>").verb, "MAIL");
        assert_eq!(Command::parse(b"").verb, "");
        assert_eq!(Command::parse(b"\xffOO x").verb, "?OO");
        assert_eq!(kind("XYZZY plugh"), CommandKind::Other);
    }

    #[test]
    fn framing_commands() {
        assert_eq!(kind("data"), CommandKind::Data);
        assert_eq!(kind("StartTLS"), CommandKind::StartTls);
        assert_eq!(kind("QUIT"), CommandKind::Quit);
        assert_eq!(kind("BDAT 100"), CommandKind::Bdat { size: 100, last: false });
        assert_eq!(kind("bdat 0 last"), CommandKind::Bdat { size: 0, last: true });
        assert_eq!(kind("BDAT"), CommandKind::Other);
        assert_eq!(kind("BDAT -1"), CommandKind::Other);
        assert_eq!(kind("BDAT 10 FIRST"), CommandKind::Other);
        assert_eq!(kind("BDAT 10 LAST extra"), CommandKind::Other);
        assert_eq!(kind("BDAT 99999999999999999999999"), CommandKind::Other);
        assert_eq!(
            kind("AUTH plain AHVzZXIAcGFzcw=="),
            CommandKind::Auth { mechanism: "PLAIN".into(), initial_response: true }
        );
        assert_eq!(kind("AUTH LOGIN"), CommandKind::Auth { mechanism: "LOGIN".into(), initial_response: false });
    }
}
