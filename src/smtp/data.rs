//! DATA content framing (RFC 5321 §4.5.2): finds the end-of-data marker and
//! removes dot-stuffing, for the record only.
//!
//! Only `CRLF . CRLF` ends a message. A bare LF or bare CR never starts a line
//! here, which is what keeps SMTP-smuggling inputs (`\n.\n`, `\r.\r`,
//! `\n.\r\n`, …) inside the message, as a strict server would.

/// Where the decoder stands in the line structure of the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// At the start of a line (the content starts at one).
    #[default]
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR inside a line; an LF next ends the line.
    Cr,
    /// After a `.` at the start of a line; not yet emitted.
    Dot,
    /// After `.` CR at the start of a line; neither yet emitted.
    DotCr,
}

/// Streams DATA content: end-of-data detection and dot-unstuffing, across any
/// read split, without buffering the content.
#[derive(Debug, Default)]
pub struct DotDecoder {
    state: State,
}

impl DotDecoder {
    /// Decodes `input`, passing unstuffed content to `out` in order. Returns the
    /// bytes consumed and whether the end-of-data line was among them; bytes
    /// after it belong to whatever follows the message.
    pub fn decode(&mut self, input: &[u8], out: &mut impl FnMut(&[u8])) -> (usize, bool) {
        let mut i = 0;
        let mut from = 0; // start of the slice not yet passed to `out`
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Text => match memchr::memchr(b'\r', &input[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.state = State::Cr;
                        continue;
                    }
                    None => {
                        i = input.len();
                        continue;
                    }
                },
                State::Cr => {
                    self.state = match b {
                        b'\n' => State::LineStart,
                        b'\r' => State::Cr,
                        _ => State::Text,
                    }
                }
                State::LineStart => {
                    if b == b'.' {
                        flush(input, from, i, out);
                        from = i + 1; // held back: stuffing or terminator
                        self.state = State::Dot;
                    } else {
                        self.state = if b == b'\r' { State::Cr } else { State::Text };
                    }
                }
                State::Dot => {
                    if b == b'\r' {
                        from = i + 1;
                        self.state = State::DotCr;
                    } else {
                        // A stuffed dot: dropped. The byte is content.
                        self.state = State::Text;
                        continue;
                    }
                }
                State::DotCr => {
                    if b == b'\n' {
                        return (i + 1, true);
                    }
                    // `.` CR then something else: the dot was stuffing, the CR is content.
                    out(b"\r");
                    from = i;
                    self.state = State::Cr;
                    continue;
                }
            }
            i += 1;
        }
        flush(input, from, input.len(), out);
        (input.len(), false)
    }
}

fn flush(input: &[u8], from: usize, to: usize, out: &mut impl FnMut(&[u8])) {
    if from < to {
        out(&input[from..to]);
    }
}

/// Applies dot-stuffing and appends the end-of-data line: the inverse of
/// [`DotDecoder`] for content that ends with CRLF (or is empty).
pub fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    let (mut at_line_start, mut prev) = (true, 0u8);
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = prev == b'\r' && b == b'\n';
        prev = b;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` cut at `splits`; returns (content, consumed, ended).
    fn run(input: &[u8], splits: &[usize]) -> (Vec<u8>, usize, bool) {
        let mut d = DotDecoder::default();
        let mut content = Vec::new();
        let mut bounds: Vec<usize> = splits.iter().copied().filter(|&s| s <= input.len()).collect();
        bounds.push(0);
        bounds.push(input.len());
        bounds.sort_unstable();
        let mut consumed = 0;
        for w in bounds.windows(2) {
            if w[0] < consumed {
                continue;
            }
            let (n, end) = d.decode(&input[w[0]..w[1]], &mut |s| content.extend_from_slice(s));
            consumed = w[0] + n;
            if end {
                return (content, consumed, true);
            }
        }
        (content, consumed, false)
    }

    fn at_every_split(input: &[u8], want: &[u8], ends_at: Option<usize>) {
        for split in 0..=input.len() {
            let (content, consumed, ended) = run(input, &[split]);
            assert_eq!(ended, ends_at.is_some(), "split {split} of {:?}", String::from_utf8_lossy(input));
            if let Some(end) = ends_at {
                assert_eq!(consumed, end, "split {split}");
            }
            assert_eq!(content, want, "split {split} of {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn simple_message() {
        at_every_split(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n", b"Subject: x\r\n\r\nhello\r\n", Some(24));
    }

    #[test]
    fn empty_message() {
        at_every_split(b".\r\n", b"", Some(3));
    }

    #[test]
    fn dot_stuffing_is_removed() {
        at_every_split(b"..leading\r\n...\r\n. \r\n.\r\n", b".leading\r\n..\r\n \r\n", Some(23));
    }

    #[test]
    fn dot_cr_not_lf_keeps_the_cr() {
        at_every_split(b".\rx\r\n.\r\n", b"\rx\r\n", Some(8));
    }

    /// SMTP smuggling (CVE-2023-51764/51765/51766 class): none of these end
    /// the message; only the final CRLF.CRLF does.
    #[test]
    fn smuggling_table() {
        let cases: &[&[u8]] = &[
            b"a\n.\nMAIL FROM:<x>\n",
            b"a\r.\rMAIL FROM:<x>\r",
            b"a\n.\r\nMAIL FROM:<x>\r\n",
            b"a\r\n.\nMAIL FROM:<x>\r\n",
            b"a\r.\r\nMAIL FROM:<x>\r\n",
            b"a\r\n.\rMAIL FROM:<x>\r\n",
            b"a\r\n\x00.\r\nMAIL FROM:<x>\r\n",
        ];
        for case in cases {
            let mut input = case.to_vec();
            input.extend_from_slice(b"\r\n.\r\n");
            let end = input.len();
            // What a strict server delivers: every line-initial dot after CRLF removed.
            let mut want = Vec::new();
            let (c, consumed, ended) = run(&input, &[]);
            assert!(ended && consumed == end, "{:?} ended early", String::from_utf8_lossy(case));
            want.extend_from_slice(&c);
            at_every_split(&input, &want, Some(end));
            // Nothing of the smuggled "command" may be cut off the message.
            assert!(memchr::memmem::find(&want, b"MAIL FROM:<x>").is_some(), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn stuff_then_decode_round_trips() {
        for content in [&b""[..], b"x\r\n", b".\r\n", b"..\r\n.a\r\n", b"no final crlf"] {
            let mut wire = Vec::new();
            dot_stuff(content, &mut wire);
            let (got, consumed, ended) = run(&wire, &[]);
            assert!(ended);
            assert_eq!(consumed, wire.len());
            let mut want = content.to_vec();
            if !want.is_empty() && !want.ends_with(b"\r\n") {
                want.extend_from_slice(b"\r\n");
            }
            assert_eq!(got, want);
        }
    }

    proptest! {
        /// Any content, stuffed and cut anywhere, decodes to itself and ends
        /// exactly at the terminator.
        #[test]
        fn random_content_and_splits(
            lines in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..20), 0..20),
            splits in proptest::collection::vec(0usize..600, 0..6),
        ) {
            let mut content = Vec::new();
            for l in &lines {
                content.extend_from_slice(l);
                content.extend_from_slice(b"\r\n");
            }
            let mut wire = Vec::new();
            dot_stuff(&content, &mut wire);
            let end = wire.len();
            wire.extend_from_slice(b"RSET\r\n");
            let (got, consumed, ended) = run(&wire, &splits);
            prop_assert!(ended);
            prop_assert_eq!(consumed, end);
            prop_assert_eq!(got, content);
        }
    }
}
