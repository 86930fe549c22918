//! Bounded assembly of LF-terminated lines from arbitrary read splits.
//!
//! SMTP lines end in CRLF (RFC 5321 §2.3.8); the observer also accepts a bare
//! LF so that it can follow what lenient peers do. It never changes the bytes
//! that are relayed; it only decides where the recorder sees a line end.

/// Longest line kept for the record. Longer lines are relayed untouched and
/// recorded truncated to this length, with their full length noted.
pub const MAX_LINE: usize = 64 * 1024;

/// Accumulates one line at a time; memory is bounded by [`MAX_LINE`].
#[derive(Debug, Default)]
pub struct LineAssembler {
    /// The start of the line, LF excluded: at most `MAX_LINE + 1` bytes, so a
    /// CR right after the cap can still be told apart from text.
    buf: Vec<u8>,
    /// Bytes of the current line seen so far, LF excluded.
    len: usize,
    /// Whether the last byte seen (before any LF) was a CR.
    ends_cr: bool,
    /// Set once a full line is held; the next `feed` starts a new one.
    complete: bool,
}

/// A completed line, terminator (LF or CRLF) removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// The kept bytes: the whole line unless it was longer than `MAX_LINE`.
    pub text: &'a [u8],
    /// The line's full length without its terminator.
    pub len: usize,
}

impl Line<'_> {
    /// True when the line was longer than [`MAX_LINE`] and `text` is cut.
    pub fn truncated(&self) -> bool {
        self.len > self.text.len()
    }
}

impl LineAssembler {
    /// Consumes bytes up to and including the next LF. Returns how many bytes
    /// were consumed and whether a line is now complete (see [`Self::line`]).
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        if self.complete {
            self.buf.clear();
            self.len = 0;
            self.ends_cr = false;
            self.complete = false;
        }
        let (taken, content) = match memchr::memchr(b'\n', input) {
            Some(i) => (i + 1, &input[..i]),
            None => (input.len(), input),
        };
        let room = (MAX_LINE + 1).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&content[..content.len().min(room)]);
        if let Some(&last) = content.last() {
            self.ends_cr = last == b'\r';
        }
        self.len += content.len();
        self.complete = taken > content.len();
        (taken, self.complete)
    }

    /// The completed line. Only meaningful after `feed` returned `true`.
    pub fn line(&self) -> Line<'_> {
        let len = self.len - usize::from(self.ends_cr);
        let kept = self.buf.len().min(len).min(MAX_LINE);
        Line { text: &self.buf[..kept], len }
    }

    /// The unfinished line so far (for a session that ended inside it).
    pub fn partial(&self) -> Line<'_> {
        if self.complete {
            return Line { text: &[], len: 0 };
        }
        Line { text: &self.buf[..self.buf.len().min(MAX_LINE)], len: self.len }
    }

    /// True when no byte of an unfinished line is held.
    pub fn is_idle(&self) -> bool {
        self.complete || self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], split: usize) -> Vec<(Vec<u8>, usize)> {
        let mut a = LineAssembler::default();
        let mut out = Vec::new();
        for part in [&input[..split], &input[split..]] {
            let mut rest = part;
            while !rest.is_empty() {
                let (n, done) = a.feed(rest);
                rest = &rest[n..];
                if done {
                    let l = a.line();
                    out.push((l.text.to_vec(), l.len));
                }
            }
        }
        out
    }

    #[test]
    fn crlf_and_bare_lf_at_every_split() {
        let input = b"EHLO a\r\nNOOP\nQUIT\r\n";
        for split in 0..=input.len() {
            assert_eq!(
                lines(input, split),
                vec![(b"EHLO a".to_vec(), 6), (b"NOOP".to_vec(), 4), (b"QUIT".to_vec(), 4)],
                "split at {split}"
            );
        }
    }

    #[test]
    fn overlong_line_is_cut_and_measured() {
        let mut input = vec![b'x'; MAX_LINE + 100];
        input.extend_from_slice(b"\r\nNEXT\r\n");
        let got = lines(&input, 7);
        assert_eq!(got[0].0.len(), MAX_LINE);
        assert_eq!(got[0].1, MAX_LINE + 100);
        assert_eq!(got[1], (b"NEXT".to_vec(), 4));
    }

    #[test]
    fn line_exactly_at_cap_keeps_its_crlf_out() {
        let mut input = vec![b'y'; MAX_LINE];
        input.extend_from_slice(b"\r\n");
        let got = lines(&input, MAX_LINE / 2);
        assert_eq!(got[0].0.len(), MAX_LINE);
        assert_eq!(got[0].1, MAX_LINE);
    }

    #[test]
    fn partial_line_is_reported() {
        let mut a = LineAssembler::default();
        assert!(a.is_idle());
        a.feed(b"MAIL FR");
        assert!(!a.is_idle());
        assert_eq!(a.partial(), Line { text: b"MAIL FR", len: 7 });
    }
}
