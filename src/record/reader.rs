//! Reading recordings back, line by line.
//!
//! Tolerant of what real recordings look like: the last line may be cut
//! short (a killed proxy, or a session still being written), fields and
//! record types newer than this reader are ignored (SPEC.md: "readers ignore
//! unknown fields"), and a damaged line in the middle is skipped with a
//! problem noted rather than losing the rest. What is not a recording at all
//! — a file whose first line is not a `session` record — is refused with an
//! error saying so.
//!
//! [`parse_line`] is the sans-IO core; [`Reader`] drives it over any
//! [`BufRead`]; [`Recording`] is a whole session in memory.

use crate::record::format::{Exchange, FORMAT, Record, SessionEnd, SessionInfo};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The longest first line looked at before deciding a file is no recording
/// (a `session` record is a few hundred bytes; a binary file may have no
/// newline at all).
const MAX_FIRST_LINE: u64 = 64 * 1024;

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not an smtptap recording ({reason})", path.display())]
    NotARecording { path: PathBuf, reason: String },
    #[error("{}: recording format {format} is newer than this smtptap understands (format {FORMAT})", path.display())]
    UnsupportedFormat { path: PathBuf, format: u32 },
}

/// What one line of a recording turned out to be.
#[derive(Debug)]
pub enum Parsed {
    Record(Box<Record>),
    /// A JSON object with a `type` this reader does not know: skipped.
    UnknownType(String),
    /// Not a record this reader can use (bad JSON, or a known type with
    /// fields it cannot read).
    Invalid(String),
}

/// Parses one line (without its newline). Unknown fields are ignored.
pub fn parse_line(line: &[u8]) -> Parsed {
    let line = trim_line_end(line);
    match serde_json::from_slice::<Record>(line) {
        Ok(record) => Parsed::Record(Box::new(record)),
        Err(e) => match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(value) => match value.get("type").and_then(|t| t.as_str()) {
                Some(t @ ("session" | "exchange" | "tls" | "note" | "end")) => {
                    Parsed::Invalid(format!("a `{t}` record this smtptap cannot read: {e}"))
                }
                Some(t) => Parsed::UnknownType(t.to_owned()),
                None => Parsed::Invalid("a JSON value without a `type`".into()),
            },
            Err(_) => Parsed::Invalid(format!("not JSON: {e}")),
        },
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Checks a recording's first line: a `session` record in a format this
/// reader knows. `path` is only for the error.
pub fn parse_first_line(line: &[u8], path: &Path) -> Result<SessionInfo, ReadError> {
    let not = |reason: String| ReadError::NotARecording { path: path.to_owned(), reason };
    if line.is_empty() {
        return Err(not("the file is empty".into()));
    }
    let value: serde_json::Value = serde_json::from_slice(trim_line_end(line))
        .map_err(|_| not("the first line is not JSON; a recording starts with a `session` record".into()))?;
    match value.get("type").and_then(|t| t.as_str()) {
        Some("session") => {}
        Some(other) => {
            return Err(not(format!(
                "the first line is a `{other}` record; a recording starts with a `session` record"
            )));
        }
        None => return Err(not("the first line has no `type`; a recording starts with a `session` record".into())),
    }
    if let Some(format) = value.get("format").and_then(|f| f.as_u64())
        && format > u64::from(FORMAT)
    {
        return Err(ReadError::UnsupportedFormat { path: path.to_owned(), format: format as u32 });
    }
    serde_json::from_value::<SessionInfo>(value)
        .map_err(|e| not(format!("the `session` record is missing what every recording has: {e}")))
}

/// Something in a recording that was skipped, with its line number (from 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: u64,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

/// Reads a recording one record at a time.
pub struct Reader<R> {
    input: R,
    path: PathBuf,
    line_no: u64,
    buf: Vec<u8>,
    /// The last line was cut short (no newline, and not a whole record).
    pub truncated: bool,
    /// Damaged lines that were skipped.
    pub problems: Vec<Problem>,
    /// Records of types this reader does not know, skipped.
    pub unknown: u64,
}

impl Reader<BufReader<File>> {
    /// Opens a recording and reads its `session` record.
    pub fn open(path: &Path) -> Result<(Reader<BufReader<File>>, SessionInfo), ReadError> {
        let file = File::open(path).map_err(|source| ReadError::Io { path: path.to_owned(), source })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            let source = io::Error::new(io::ErrorKind::IsADirectory, "is a directory, not a recording");
            return Err(ReadError::Io { path: path.to_owned(), source });
        }
        Reader::new(BufReader::new(file), path)
    }
}

impl<R: BufRead> Reader<R> {
    /// Reads the first line, which must be a `session` record. `path` names
    /// the input in errors.
    pub fn new(mut input: R, path: &Path) -> Result<(Reader<R>, SessionInfo), ReadError> {
        let mut first = Vec::new();
        (&mut input)
            .take(MAX_FIRST_LINE)
            .read_until(b'\n', &mut first)
            .map_err(|source| ReadError::Io { path: path.to_owned(), source })?;
        let session = parse_first_line(&first, path)?;
        let reader = Reader {
            input,
            path: path.to_owned(),
            line_no: 1,
            buf: Vec::new(),
            truncated: false,
            problems: Vec::new(),
            unknown: 0,
        };
        Ok((reader, session))
    }

    /// The next record after the `session` line; `None` at the end. Skips
    /// (and counts) what it cannot use.
    pub fn next_record(&mut self) -> Option<Result<Record, ReadError>> {
        loop {
            self.buf.clear();
            match self.input.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(source) => return Some(Err(ReadError::Io { path: self.path.clone(), source })),
            }
            self.line_no += 1;
            let whole = self.buf.ends_with(b"\n");
            if trim_line_end(&self.buf).iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(&self.buf) {
                Parsed::Record(record) => return Some(Ok(*record)),
                Parsed::UnknownType(_) => self.unknown += 1,
                Parsed::Invalid(_) if !whole => {
                    // The last line, cut short: what a killed proxy leaves.
                    self.truncated = true;
                    return None;
                }
                Parsed::Invalid(what) => self.problems.push(Problem { line: self.line_no, what }),
            }
        }
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Record, ReadError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record()
    }
}

/// A whole recording in memory.
#[derive(Debug, Clone)]
pub struct Recording {
    pub path: PathBuf,
    pub session: SessionInfo,
    /// Every record after the `session` line, in order.
    pub records: Vec<Record>,
    /// The last line was cut short.
    pub truncated: bool,
    pub problems: Vec<Problem>,
}

impl Recording {
    pub fn read(path: &Path) -> Result<Recording, ReadError> {
        let (reader, session) = Reader::open(path)?;
        Recording::collect(reader, session)
    }

    /// Reads a recording from bytes; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Recording, ReadError> {
        let (reader, session) = Reader::new(bytes, path)?;
        Recording::collect(reader, session)
    }

    fn collect<R: BufRead>(mut reader: Reader<R>, session: SessionInfo) -> Result<Recording, ReadError> {
        let records = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
        Ok(Recording {
            path: reader.path.clone(),
            session,
            records,
            truncated: reader.truncated,
            problems: reader.problems,
        })
    }

    pub fn exchanges(&self) -> impl Iterator<Item = &Exchange> {
        self.records.iter().filter_map(|r| match r {
            Record::Exchange(e) => Some(e),
            _ => None,
        })
    }

    /// The `end` record, absent when the recording stops early.
    pub fn end(&self) -> Option<&SessionEnd> {
        self.records.iter().find_map(|r| match r {
            Record::End(e) => Some(e),
            _ => None,
        })
    }
}

/// The `*.jsonl` files directly in `dir`, in name order — which is start
/// order, as recordings are named by their UTC start.
pub fn list_recordings(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "jsonl") && entry.file_type().is_ok_and(|t| !t.is_dir()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::format::EndReason;

    const SESSION: &str = r#"{"type":"session","format":1,"id":"k3x9","started":"2026-11-28T19:36:24.123456Z","listen":"127.0.0.1:2525","client":"127.0.0.1:50412","upstream":"mail.example.com:587","tool":"smtptap 0.1.0"}"#;
    const GREETING: &str = r#"{"type":"exchange","seq":0,"t":"2026-11-28T19:36:24.123456Z","tls":false,"command":null,"reply":{"code":220,"enhanced":null,"lines":["mx ESMTP"]},"ms":0.8}"#;
    const END: &str = r#"{"type":"end","reason":"quit","error":null,"duration_ms":1234,"exchanges":1,"messages":0,"bytes_from_client":6,"bytes_from_upstream":10}"#;

    fn read(text: &str) -> Result<Recording, ReadError> {
        Recording::from_bytes(text.as_bytes(), Path::new("t.jsonl"))
    }

    #[test]
    fn reads_a_complete_recording() {
        let r = read(&format!("{SESSION}\n{GREETING}\n{END}\n")).unwrap();
        assert_eq!(r.session.id, "k3x9");
        assert_eq!(r.exchanges().count(), 1);
        assert_eq!(r.end().unwrap().reason, EndReason::Quit);
        assert!(!r.truncated && r.problems.is_empty());
    }

    #[test]
    fn a_cut_last_line_is_tolerated_and_flagged() {
        let cut = &END[..END.len() / 2];
        let r = read(&format!("{SESSION}\n{GREETING}\n{cut}")).unwrap();
        assert_eq!(r.exchanges().count(), 1);
        assert!(r.end().is_none());
        assert!(r.truncated);
        assert!(r.problems.is_empty());
    }

    #[test]
    fn a_whole_last_line_without_newline_is_kept() {
        let r = read(&format!("{SESSION}\n{GREETING}\n{END}")).unwrap();
        assert!(r.end().is_some());
        assert!(!r.truncated);
    }

    #[test]
    fn unknown_fields_and_types_are_ignored() {
        let greeting = GREETING.replace(r#""tls":false"#, r#""tls":false,"future":{"x":[1,2]}"#);
        let session = SESSION.replace(r#""format":1"#, r#""format":1,"new_field":"y""#);
        let text = format!("{session}\n{greeting}\n{{\"type\":\"hologram\",\"t\":1}}\n{END}\n");
        let r = read(&text).unwrap();
        assert_eq!(r.records.len(), 2);
        assert!(r.problems.is_empty());
    }

    #[test]
    fn a_damaged_middle_line_is_skipped_with_a_problem() {
        let r = read(&format!("{SESSION}\n{{garbage\n{GREETING}\n\n{END}\n")).unwrap();
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].line, 2);
    }

    #[test]
    fn non_recordings_are_refused_clearly() {
        for (text, says) in [
            ("", "empty"),
            ("hello world\n", "not JSON"),
            (GREETING, "`exchange` record"),
            ("{\"a\":1}\n", "no `type`"),
            ("{\"type\":\"session\"}\n", "missing"),
            ("\u{0}\u{1}binary", "not JSON"),
        ] {
            let err = read(text).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, ReadError::NotARecording { .. }), "{text:?}: {message}");
            assert!(message.contains("t.jsonl: not an smtptap recording") && message.contains(says), "{message}");
        }
    }

    #[test]
    fn a_newer_format_is_refused() {
        let err = read(&SESSION.replace(r#""format":1"#, r#""format":2"#)).unwrap_err();
        assert!(matches!(err, ReadError::UnsupportedFormat { format: 2, .. }), "{err}");
    }

    #[test]
    fn parse_line_classifies() {
        assert!(matches!(parse_line(GREETING.as_bytes()), Parsed::Record(_)));
        assert!(matches!(parse_line(b"{\"type\":\"x\"}\r\n"), Parsed::UnknownType(t) if t == "x"));
        assert!(matches!(parse_line(b"{\"type\":\"exchange\"}"), Parsed::Invalid(_)));
        assert!(matches!(parse_line(b"[1,"), Parsed::Invalid(_)));
    }

    #[test]
    fn lists_jsonl_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.jsonl", "a.jsonl", "c.txt", "20261128T000000Z-z.jsonl"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("d.jsonl")).unwrap();
        let names: Vec<String> = list_recordings(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["20261128T000000Z-z.jsonl", "a.jsonl", "b.jsonl"]);
    }
}
