//! SMTP replies (RFC 5321 §4.2) and an incremental multi-line reply parser.

use super::line::{Line, LineAssembler};

/// Most reply lines kept for the record; further lines are counted only.
pub const MAX_REPLY_LINES: usize = 1000;

/// Most bytes of reply text kept per reply (a thousand long lines would
/// otherwise be 64 MiB); further lines are counted only.
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

/// One complete reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// The three-digit code of the last line; 0 when a line was no reply at all.
    pub code: u16,
    /// The text after `NNN-` / `NNN ` of each kept line, verbatim bytes.
    pub lines: Vec<Vec<u8>>,
    /// Lines beyond [`MAX_REPLY_LINES`], not kept.
    pub omitted_lines: usize,
    /// True when some kept line was cut at the line-length cap.
    pub truncated: bool,
}

impl Reply {
    /// The enhanced status code (RFC 3463) the first line starts with, if any.
    /// Its class must agree with the reply code's first digit.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.lines.first()?;
        let class = u8::try_from(self.code / 100).ok()?;
        parse_enhanced(first, class)
    }

    /// 2xx and 3xx: the command was accepted (or continues).
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// Parses `class.subject.detail` at the start of `text`, followed by a space
/// or the end of the text. Subject and detail have 1-3 digits.
fn parse_enhanced(text: &[u8], class: u8) -> Option<String> {
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let token = std::str::from_utf8(&text[..end]).ok()?;
    let mut parts = token.split('.');
    let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |p: &str, max: usize| !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit());
    let ok = parts.next().is_none()
        && matches!(c, "2" | "4" | "5")
        && c.as_bytes()[0] - b'0' == class
        && digits(s, 3)
        && digits(d, 3);
    ok.then(|| token.to_owned())
}

/// Assembles replies from the server's byte stream, across any read split.
#[derive(Debug, Default)]
pub struct ReplyParser {
    line: LineAssembler,
    current: Reply,
    /// Bytes of text kept in `current`.
    kept: usize,
}

impl ReplyParser {
    /// Consumes bytes until a reply completes or the input ends. Returns the
    /// bytes consumed and the completed reply, if any; call again with the rest.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Reply>) {
        let mut used = 0;
        while used < input.len() {
            let (n, complete) = self.line.feed(&input[used..]);
            used += n;
            if complete && self.take_line() {
                return (used, Some(std::mem::take(&mut self.current)));
            }
        }
        (used, None)
    }

    /// True when no part of a reply is held (a reply boundary).
    pub fn is_idle(&self) -> bool {
        self.line.is_idle() && self.current.lines.is_empty() && self.current.omitted_lines == 0
    }

    /// The part of a reply that the stream ended in the middle of: its
    /// complete lines and the unfinished one, marked `truncated`; `None` at a
    /// reply boundary. The parser is at a boundary afterwards.
    pub fn take_partial(&mut self) -> Option<Reply> {
        if self.is_idle() {
            return None;
        }
        let partial = self.line.partial();
        if partial.len > 0 {
            // An unfinished line cannot change the code the reply's first line gave.
            let earlier = (!self.current.lines.is_empty()).then_some(self.current.code);
            add_line(&mut self.current, &mut self.kept, partial);
            if let Some(code) = earlier {
                self.current.code = code;
            }
        }
        let mut reply = std::mem::take(&mut self.current);
        reply.truncated = true;
        self.line = LineAssembler::default();
        self.kept = 0;
        Some(reply)
    }

    /// Adds the completed line to the current reply; true when it was the last.
    fn take_line(&mut self) -> bool {
        add_line(&mut self.current, &mut self.kept, self.line.line())
    }
}

/// Adds a reply line to `reply`, within the limits on a reply's lines and
/// bytes (`kept` so far); true when it was the reply's last line.
fn add_line(reply: &mut Reply, kept: &mut usize, Line { text, len }: Line<'_>) -> bool {
    let (code, last, body) = split_reply_line(text);
    reply.code = code;
    if reply.lines.len() < MAX_REPLY_LINES && *kept + body.len() <= MAX_REPLY_BYTES {
        *kept += body.len();
        reply.lines.push(body.to_vec());
        reply.truncated |= len > text.len();
    } else {
        reply.omitted_lines += 1;
    }
    if last {
        *kept = 0;
    }
    last
}

/// Splits `250-text` into (250, false, "text"). A line that does not start
/// with three digits is taken whole as the last line of a reply with code 0,
/// so that garbage from a server still pairs with the command it answered.
fn split_reply_line(text: &[u8]) -> (u16, bool, &[u8]) {
    let code = match text.get(..3) {
        Some(d) if d.iter().all(u8::is_ascii_digit) => d.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')),
        _ => return (0, true, text),
    };
    match text.get(3) {
        None => (code, true, &[]),
        Some(b'-') => (code, false, &text[4..]),
        Some(b' ') => (code, true, &text[4..]),
        Some(_) => (0, true, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8], splits: &[usize]) -> Vec<Reply> {
        let mut p = ReplyParser::default();
        let mut out = Vec::new();
        let mut bounds = vec![0];
        bounds.extend(splits.iter().copied().filter(|&s| s <= input.len()));
        bounds.push(input.len());
        bounds.sort_unstable();
        for w in bounds.windows(2) {
            let mut part = &input[w[0]..w[1]];
            while !part.is_empty() {
                let (n, r) = p.feed(part);
                part = &part[n..];
                out.extend(r);
            }
        }
        out
    }

    #[test]
    fn multiline_reply_at_every_split() {
        let input = b"250-mail.example.com\r\n250-PIPELINING\r\n250 SIZE 1000\r\n221 2.0.0 Bye\r\n";
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let got = parse_all(input, &[a, b]);
                assert_eq!(got.len(), 2, "splits {a},{b}");
                assert_eq!(got[0].code, 250);
                assert_eq!(
                    got[0].lines,
                    vec![b"mail.example.com".to_vec(), b"PIPELINING".to_vec(), b"SIZE 1000".to_vec()]
                );
                assert_eq!(got[0].enhanced(), None);
                assert_eq!(got[1].code, 221);
                assert_eq!(got[1].enhanced().as_deref(), Some("2.0.0"));
            }
        }
    }

    #[test]
    fn enhanced_codes_must_match_class_and_shape() {
        let r = |code, text: &str| Reply { code, lines: vec![text.as_bytes().to_vec()], ..Reply::default() };
        assert_eq!(r(550, "5.7.1 Relaying denied").enhanced().as_deref(), Some("5.7.1"));
        assert_eq!(r(250, "2.1.5").enhanced().as_deref(), Some("2.1.5"));
        assert_eq!(r(250, "5.7.1 mismatch").enhanced(), None);
        assert_eq!(r(250, "2.0 short").enhanced(), None);
        assert_eq!(r(250, "2.0.0.1 long").enhanced(), None);
        assert_eq!(r(250, "2.1234.0 wide").enhanced(), None);
        assert_eq!(r(220, "mail ESMTP").enhanced(), None);
    }

    #[test]
    fn bare_code_and_garbage_lines() {
        let got = parse_all(b"250\r\nhello world\r\n25x oops\r\n", &[]);
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].code, got[0].lines.clone()), (250, vec![Vec::new()]));
        assert_eq!((got[1].code, got[1].lines.clone()), (0, vec![b"hello world".to_vec()]));
        assert_eq!(got[2].code, 0);
    }

    #[test]
    fn thousands_of_continuation_lines_are_bounded() {
        let mut input = Vec::new();
        for i in 0..5000 {
            input.extend_from_slice(format!("250-line {i}\r\n").as_bytes());
        }
        input.extend_from_slice(b"250 end\r\n");
        let got = parse_all(&input, &[1234]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].lines.len(), MAX_REPLY_LINES);
        assert_eq!(got[0].omitted_lines, 5001 - MAX_REPLY_LINES);
    }

    #[test]
    fn long_lines_are_bounded_in_total_too() {
        let line = format!("250-{}\r\n", "x".repeat(60 * 1024));
        let input = [line.repeat(20).as_bytes(), b"250 end\r\n250 ok\r\n"].concat();
        let got = parse_all(&input, &[]);
        assert_eq!(got.len(), 2);
        let kept: usize = got[0].lines.iter().map(Vec::len).sum();
        assert!(kept <= MAX_REPLY_BYTES, "{kept}");
        assert_eq!(got[0].lines.len() + got[0].omitted_lines, 21);
        assert_eq!(got[1].lines, [b"ok".to_vec()], "the next reply starts with a fresh budget");
    }

    #[test]
    fn idle_only_between_replies() {
        let mut p = ReplyParser::default();
        assert!(p.is_idle());
        assert_eq!(p.feed(b"250-a\r\n"), (7, None));
        assert!(!p.is_idle());
        let (_, r) = p.feed(b"250 b\r\n");
        assert!(r.is_some());
        assert!(p.is_idle());
    }
}
