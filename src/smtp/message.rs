//! What the record keeps of a message's content (RFC 5322): its size, its
//! SHA-256 and its main header fields, computed as the content streams by.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Most header-section bytes kept for header extraction.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Header fields copied into the record, lower-cased.
const MAIN_HEADERS: &[&str] = &["from", "to", "cc", "subject", "message-id", "date", "reply-to", "sender"];

/// Summary of one message's content, as delivered (dot-stuffing removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// The first occurrence of each of [`MAIN_HEADERS`], unfolded.
    pub headers: BTreeMap<String, String>,
    /// False when the session ended before the end of the content.
    pub complete: bool,
}

/// Accumulates a message's summary from content chunks in order.
pub struct MessageDigest {
    size: u64,
    hasher: Sha256,
    /// The header section so far (up to the first empty line), bounded.
    header: Vec<u8>,
    header_done: bool,
}

impl Default for MessageDigest {
    fn default() -> Self {
        MessageDigest { size: 0, hasher: Sha256::new(), header: Vec::new(), header_done: false }
    }
}

impl MessageDigest {
    pub fn update(&mut self, chunk: &[u8]) {
        self.size += chunk.len() as u64;
        self.hasher.update(chunk);
        if !self.header_done {
            let room = MAX_HEADER_BYTES - self.header.len();
            let before = self.header.len();
            self.header.extend_from_slice(&chunk[..chunk.len().min(room)]);
            // Look for the blank line only in the new bytes (and 3 before them).
            let from = before.saturating_sub(3);
            if self.header.starts_with(b"\r\n") || self.header.starts_with(b"\n") {
                self.header.clear();
                self.header_done = true;
            } else if let Some(end) = find_header_end(&self.header[from..]) {
                self.header.truncate(from + end);
                self.header_done = true;
            } else if self.header.len() == MAX_HEADER_BYTES {
                self.header_done = true;
            }
        }
    }

    pub fn finish(self, complete: bool) -> MessageSummary {
        let digest = self.hasher.finalize();
        let sha256 = crate::hex::lower_hex(&digest);
        MessageSummary { size: self.size, sha256, headers: main_headers(&self.header), complete }
    }
}

/// Offset just past the end of the header section's last line (the blank
/// line excluded), if the blank line is in `buf`.
fn find_header_end(buf: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 2);
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| i + 1);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Unfolds header fields (RFC 5322 §2.2.3) and keeps the first of each main one.
fn main_headers(section: &[u8]) -> BTreeMap<String, String> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in section.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match (line.first(), fields.last_mut()) {
            (Some(b' ' | b'\t'), Some(field)) => field.extend_from_slice(line),
            (Some(_), _) => fields.push(line.to_vec()),
            (None, _) => {}
        }
    }
    let mut out = BTreeMap::new();
    for field in fields {
        let Some(colon) = field.iter().position(|&b| b == b':') else { continue };
        let name = String::from_utf8_lossy(&field[..colon]).trim().to_ascii_lowercase();
        if MAIN_HEADERS.contains(&name.as_str()) && !out.contains_key(&name) {
            out.insert(name, String::from_utf8_lossy(&field[colon + 1..]).trim().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summarize(chunks: &[&[u8]]) -> MessageSummary {
        let mut d = MessageDigest::default();
        for c in chunks {
            d.update(c);
        }
        d.finish(true)
    }

    #[test]
    fn headers_unfolded_first_wins_any_split() {
        let msg = b"From: A <a@x>\r\nSubject: hello\r\n  world\r\nX-Other: 1\r\nsubject: second\r\n\r\nFrom: not a header\r\n";
        for split in 0..msg.len() {
            let s = summarize(&[&msg[..split], &msg[split..]]);
            assert_eq!(s.headers.get("from").map(String::as_str), Some("A <a@x>"), "split {split}");
            assert_eq!(s.headers.get("subject").map(String::as_str), Some("hello  world"));
            assert_eq!(s.headers.len(), 2);
            assert_eq!(s.size, msg.len() as u64);
        }
    }

    #[test]
    fn sha256_of_known_content() {
        let s = summarize(&[b"abc"]);
        assert_eq!(s.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(s.headers.is_empty());
    }

    #[test]
    fn header_capture_is_bounded() {
        let big = vec![b'X'; 200 * 1024];
        let mut d = MessageDigest::default();
        d.update(b"Subject: s\r\nX-Big: ");
        d.update(&big);
        assert!(d.header.len() <= MAX_HEADER_BYTES);
        assert_eq!(d.finish(true).headers.get("subject").map(String::as_str), Some("s"));
    }
}
