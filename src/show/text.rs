//! Times, sizes and terminal-safe text, shared by the transcript, the list
//! and `smtptap check`.

use crate::record::format::Body;
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

/// Ends a coloured span.
pub(super) const RESET: &str = "\x1b[0m";

pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// `HH:MM:SS.mmm` of an RFC 3339 time, `ms` later (blank for no time).
pub(super) fn clock(t: &str, ms: f64) -> String {
    if t.is_empty() {
        return " ".repeat(12);
    }
    match parse_time(t) {
        Some(t) => {
            let t = t + chrono::Duration::microseconds((ms * 1000.0).round() as i64);
            t.format("%H:%M:%S%.3f").to_string()
        }
        None => "??:??:??.???".into(),
    }
}

pub(super) fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

pub(super) fn fmt_duration(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

/// `248 octets`, with a binary-prefixed size for large ones.
pub fn fmt_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 10 * 1024 {
        return format!("{n} octets");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{n} octets ({value:.1} {})", UNITS[unit])
}

/// `s` with control characters made visible (`\r`, `\n`, `\x1b`…), so that
/// recorded bytes can neither break lines nor drive the terminal.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if is_unsafe(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.into()
}

fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The message content as bytes, when the recording kept it.
pub fn body_bytes(body: &Body) -> Option<Vec<u8>> {
    body.bytes().ok()
}
