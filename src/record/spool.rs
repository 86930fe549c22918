//! Holds one message's content until its exchange is written: in memory while
//! small, in an unlinked temporary file beside the recordings when large, so
//! the proxy's memory does not grow with message size.

use super::json_text;
use base64::engine::general_purpose::STANDARD as B64;
use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Content kept in memory up to this size; beyond it, on disk.
const IN_MEMORY: usize = 256 * 1024;
/// Read size when streaming a spilled body out.
const BLOCK: usize = 64 * 1024;

pub struct Spool {
    /// Bytes pushed so far.
    len: u64,
    memory: Vec<u8>,
    file: Option<File>,
    utf8: Utf8Check,
}

impl Spool {
    pub fn new() -> Spool {
        Spool { len: 0, memory: Vec::new(), file: None, utf8: Utf8Check::default() }
    }

    /// Adds the next piece of content. The first piece is kept as it is, not copied.
    pub fn push(&mut self, chunk: Vec<u8>, dir: &Path) -> io::Result<()> {
        let spills = self.spills_with(chunk.len());
        self.len += chunk.len() as u64;
        self.utf8.update(&chunk);
        if self.file.is_none() && !spills {
            if self.memory.is_empty() {
                self.memory = chunk;
            } else {
                self.memory.extend_from_slice(&chunk);
            }
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let mut f = tempfile::tempfile_in(dir)?;
                f.write_all(&self.memory)?;
                self.memory = Vec::new();
                self.file.insert(f)
            }
        };
        file.write_all(&chunk)
    }

    /// Whether pushing `more` bytes moves the content from memory to a file.
    pub fn spills_with(&self, more: usize) -> bool {
        self.file.is_none() && self.memory.len() + more > IN_MEMORY
    }

    /// Bytes of content so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Writes `{"encoding":…,"data":"…"}` for the content, streaming it
    /// from the file when it is there.
    pub fn write_json_body(&mut self, out: &mut impl Write) -> io::Result<()> {
        let utf8 = self.utf8.is_valid();
        out.write_all(if utf8 { br#"{"encoding":"utf8","data":"# } else { br#"{"encoding":"base64","data":"# })?;
        match (&mut self.file, utf8) {
            (None, true) => {
                debug_assert!(std::str::from_utf8(&self.memory).is_ok(), "escaped as UTF-8 only when it is");
                write_json_string(&mut &self.memory[..], out)?;
            }
            (None, false) => write_base64(&mut &self.memory[..], out)?,
            (Some(file), utf8) => {
                file.seek(SeekFrom::Start(0))?;
                let mut reader = io::BufReader::with_capacity(BLOCK, file);
                if utf8 {
                    write_json_string(&mut reader, out)?;
                } else {
                    write_base64(&mut reader, out)?;
                }
            }
        }
        out.write_all(b"}")
    }
}

/// Writes what `reader` holds as a JSON string of base64.
fn write_base64(reader: &mut impl Read, out: &mut impl Write) -> io::Result<()> {
    out.write_all(b"\"")?;
    {
        let mut encoder = base64::write::EncoderWriter::new(&mut *out, &B64);
        io::copy(reader, &mut encoder)?;
        encoder.finish()?;
    }
    out.write_all(b"\"")
}

/// Streams text known to be UTF-8 from `reader` as a JSON string. Escaping
/// works on bytes, so blocks may split characters anywhere.
fn write_json_string(reader: &mut impl BufRead, out: &mut impl Write) -> io::Result<()> {
    out.write_all(b"\"")?;
    loop {
        let block = reader.fill_buf()?;
        if block.is_empty() {
            break;
        }
        json_text::write_escaped(block, out)?;
        let n = block.len();
        reader.consume(n);
    }
    out.write_all(b"\"")
}

/// Incremental UTF-8 validation over arbitrary chunk splits.
#[derive(Default)]
struct Utf8Check {
    invalid: bool,
    /// The start of a character split by a chunk boundary.
    tail: Vec<u8>,
}

impl Utf8Check {
    fn update(&mut self, mut chunk: &[u8]) {
        if self.invalid {
            return;
        }
        if !self.tail.is_empty() {
            // Complete the split character with at most 3 more bytes.
            let need = (4 - self.tail.len()).min(chunk.len());
            self.tail.extend_from_slice(&chunk[..need]);
            match std::str::from_utf8(&self.tail) {
                Ok(_) => {
                    chunk = &chunk[need..];
                    self.tail.clear();
                }
                Err(e) if e.valid_up_to() > 0 => {
                    let used = e.valid_up_to() - (self.tail.len() - need);
                    chunk = &chunk[used..];
                    self.tail.clear();
                }
                Err(e) if e.error_len().is_none() => return, // still incomplete
                Err(_) => {
                    self.invalid = true;
                    return;
                }
            }
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => {}
            Err(e) if e.error_len().is_none() => self.tail = chunk[e.valid_up_to()..].to_vec(),
            Err(_) => self.invalid = true,
        }
    }

    fn is_valid(&self) -> bool {
        !self.invalid && self.tail.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(parts: &[&[u8]]) -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new();
        for p in parts {
            spool.push(p.to_vec(), dir.path()).unwrap();
        }
        let mut out = Vec::new();
        spool.write_json_body(&mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn utf8_split_characters_at_every_point() {
        let text = "Grüße, 世界! 🎉\r\n\"quoted\"\t\\".as_bytes();
        for split in 0..=text.len() {
            let v = body_json(&[&text[..split], &text[split..]]);
            assert_eq!(v["encoding"], "utf8", "split {split}");
            assert_eq!(v["data"].as_str().unwrap().as_bytes(), text);
        }
    }

    #[test]
    fn binary_goes_base64() {
        let v = body_json(&[b"abc\xff", b"\x00def"]);
        assert_eq!(v["encoding"], "base64");
        assert_eq!(v["data"], "YWJj/wBkZWY=");
    }

    #[test]
    fn truncated_character_at_end_is_not_utf8() {
        let v = body_json(&["é".as_bytes()[..1].as_ref()]);
        assert_eq!(v["encoding"], "base64");
    }

    #[test]
    fn large_bodies_spill_to_disk_and_come_back_whole() {
        let line = "Zeile mit Umlauten: äöü — 1234567890\r\n".repeat(20_000); // ~800 KiB
        let bytes = line.as_bytes();
        let parts: Vec<&[u8]> = bytes.chunks(7001).collect();
        let v = body_json(&parts);
        assert_eq!(v["encoding"], "utf8");
        assert_eq!(v["data"].as_str().unwrap(), line);
        let mut binary = bytes.to_vec();
        binary.push(0xfe);
        let v = body_json(&[&binary]);
        use base64::Engine as _;
        assert_eq!(B64.decode(v["data"].as_str().unwrap()).unwrap(), binary);
    }
}
