//! The contents of a JSON string for text already known to be UTF-8, escaped
//! byte by byte.
//!
//! Escaping only ever touches ASCII bytes (controls, `"` and `\`), and every
//! byte of a multi-byte UTF-8 character is 0x80 or above, so text can be
//! escaped in pieces split anywhere, without first being checked again as a
//! `str`. The output is what `serde_json` writes for the same string.

use std::io::{self, Write};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Writes `text`'s escaped contents (no surrounding quotes) to `out`.
pub fn write_escaped(text: &[u8], out: &mut impl Write) -> io::Result<()> {
    let mut plain_from = 0; // start of the bytes not written yet, none needing escape
    let mut i = 0;
    while i < text.len() {
        // Eight bytes at a time while none needs escaping: text is mostly runs.
        if let Some(word) = text.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok())
            && !any_special(u64::from_le_bytes(word))
        {
            i += 8;
            continue;
        }
        let byte = text[i];
        if needs_escape(byte) {
            out.write_all(&text[plain_from..i])?;
            write_escape(byte, out)?;
            plain_from = i + 1;
        }
        i += 1;
    }
    out.write_all(&text[plain_from..])
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether any of the eight bytes in `word` needs escaping. Exact (no false
/// negatives nor positives) for the question "any?", by the classic
/// has-zero-byte and has-byte-less-than tests.
fn any_special(word: u64) -> bool {
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    below_space | quote | backslash != 0
}

fn write_escape(byte: u8, out: &mut impl Write) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' => out.write_all(b"\\\""),
        b'\\' => out.write_all(b"\\\\"),
        b'\n' => out.write_all(b"\\n"),
        b'\r' => out.write_all(b"\\r"),
        b'\t' => out.write_all(b"\\t"),
        0x08 => out.write_all(b"\\b"),
        0x0c => out.write_all(b"\\f"),
        _ => out.write_all(&[b'\\', b'u', b'0', b'0', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escaped(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_escaped(text, &mut out).unwrap();
        out
    }

    fn serde(text: &str) -> Vec<u8> {
        let quoted = serde_json::to_vec(text).unwrap();
        quoted[1..quoted.len() - 1].to_vec()
    }

    #[test]
    fn every_ascii_byte_as_serde_json_escapes_it() {
        for byte in 0u8..0x80 {
            let text = [b'a', byte, b'b', b'c', b'd', b'e', b'f', b'g', b'h', byte];
            let s = std::str::from_utf8(&text).unwrap();
            assert_eq!(escaped(&text), serde(s), "byte {byte:#04x}");
        }
    }

    #[test]
    fn word_test_agrees_with_the_byte_test() {
        for byte in 0..=u8::MAX {
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = byte;
                assert_eq!(any_special(u64::from_le_bytes(word)), needs_escape(byte), "byte {byte:#04x} at {at}");
            }
        }
    }

    #[test]
    fn word_test_agrees_for_every_pair_of_bytes() {
        // Borrows run from low lanes to high: pairs at the ends and in the middle.
        for (p, q) in [(0, 7), (3, 4), (6, 7)] {
            for a in 0..=u8::MAX {
                for b in 0..=u8::MAX {
                    let mut word = *b"abcdefgh";
                    (word[p], word[q]) = (a, b);
                    let want = needs_escape(a) || needs_escape(b);
                    assert_eq!(any_special(u64::from_le_bytes(word)), want, "{a:#04x} at {p}, {b:#04x} at {q}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn matches_serde_json_split_anywhere(text in "(?s).{0,200}", split in 0usize..200) {
            let bytes = text.as_bytes();
            let split = split.min(bytes.len());
            let mut out = Vec::new();
            write_escaped(&bytes[..split], &mut out).unwrap();
            write_escaped(&bytes[split..], &mut out).unwrap();
            prop_assert_eq!(out, serde(&text));
        }
    }
}
