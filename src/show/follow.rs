//! `--follow`: tails a directory (or one recording) and prints sessions as
//! they are recorded, until interrupted.

use super::transcript::Transcript;
use super::{Options, ShowArgs, select};
use crate::record::format::Record;
use crate::record::reader::{self, Parsed, Problem, Reader};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often `--follow` looks for new sessions and new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// At `--follow` start, a session without an `end` that was written to this
/// recently is taken to be live and followed from its start.
const LIVE_WINDOW: Duration = Duration::from_secs(600);

/// A recording being tailed: complete lines are rendered as they arrive.
struct Tailed {
    path: PathBuf,
    file: std::fs::File,
    partial: Vec<u8>,
    started: bool,
    id: String,
    transcript: Transcript,
    ended: bool,
    line_no: u64,
}

impl Tailed {
    fn open(path: &Path, opts: Options) -> io::Result<Tailed> {
        Ok(Tailed {
            path: path.to_owned(),
            file: std::fs::File::open(path)?,
            partial: Vec::new(),
            started: false,
            id: String::new(),
            transcript: Transcript::new(opts),
            ended: false,
            line_no: 0,
        })
    }

    /// Renders whatever complete lines arrived since the last poll; true
    /// when that began with the session's header.
    fn poll(&mut self, out: &mut String) -> Result<bool, String> {
        let mut fresh = Vec::new();
        self.file.read_to_end(&mut fresh).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if fresh.is_empty() {
            return Ok(false);
        }
        let mut header = false;
        self.partial.extend_from_slice(&fresh);
        let mut at = 0;
        while let Some(nl) = self.partial[at..].iter().position(|&b| b == b'\n') {
            let line = self.partial[at..at + nl + 1].to_vec();
            at += nl + 1;
            self.line_no += 1;
            if !self.started {
                let info = reader::parse_first_line(&line, &self.path).map_err(|e| e.to_string())?;
                self.started = true;
                self.id = info.id.clone();
                self.transcript.header(&info, out);
                header = true;
                continue;
            }
            match reader::parse_line(&line) {
                Parsed::Record(r) => {
                    if matches!(*r, Record::End(_)) {
                        self.ended = true;
                    }
                    self.transcript.record(*r, out);
                }
                Parsed::UnknownType(_) => {}
                Parsed::Invalid(what) => {
                    let problem = Problem { line: self.line_no, what };
                    self.transcript.note(out, "", &format!("{problem}: skipped"));
                }
            }
        }
        self.partial.drain(..at);
        if !self.ended {
            // Show a held pipelined batch now rather than at the next record.
            self.transcript.flush(out);
        }
        Ok(header)
    }
}

pub(super) fn follow(
    args: &ShowArgs,
    opts: Options,
    since: Option<DateTime<Utc>>,
    out: &mut impl Write,
) -> io::Result<u8> {
    if args.paths.len() != 1 {
        eprintln!("smtptap: --follow takes one directory or one recording");
        return Ok(2);
    }
    let path = &args.paths[0];
    if path.is_file() {
        let mut tailed = match Tailed::open(path, opts) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("smtptap: {}: {e}", path.display());
                return Ok(2);
            }
        };
        loop {
            let mut text = String::new();
            if let Err(e) = tailed.poll(&mut text) {
                eprintln!("smtptap: {e}");
                return Ok(2);
            }
            out.write_all(text.as_bytes())?;
            out.flush()?;
            if tailed.ended {
                return Ok(0);
            }
            std::thread::sleep(FOLLOW_POLL);
        }
    }
    let mut tracked: Vec<Tailed> = Vec::new();
    let mut done: HashSet<PathBuf> = HashSet::new();
    let mut first_scan = true;
    let mut said_waiting = false;
    let mut last_shown: Option<PathBuf> = None;
    let mut failed: HashSet<PathBuf> = HashSet::new();
    loop {
        let files = match reader::list_recordings(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !said_waiting {
                    eprintln!("smtptap: waiting for {} to appear", path.display());
                    said_waiting = true;
                }
                Vec::new()
            }
            Err(e) => {
                eprintln!("smtptap: {}: {e}", path.display());
                return Ok(2);
            }
        };
        let picked: HashSet<PathBuf> = if first_scan && (since.is_some() || args.last.is_some()) {
            let mut ignore = 0;
            select(&files, since, args.last, &mut ignore).into_iter().collect()
        } else {
            HashSet::new()
        };
        for file in files {
            if done.contains(&file) || tracked.iter().any(|t| t.path == file) {
                continue;
            }
            if first_scan && !picked.contains(&file) && !is_live(&file) {
                done.insert(file);
                continue;
            }
            match Tailed::open(&file, opts) {
                Ok(t) => tracked.push(t),
                Err(e) => {
                    if failed.insert(file.clone()) {
                        eprintln!("smtptap: {}: {e}", file.display());
                    }
                }
            }
        }
        if first_scan {
            // Readiness: from here on, every new session is shown.
            eprintln!("smtptap: following {} (Ctrl-C to stop)", path.display());
        }
        first_scan = false;
        for t in &mut tracked {
            let mut text = String::new();
            let header = match t.poll(&mut text) {
                Ok(header) => header,
                Err(e) => {
                    // Not a recording (or not yet one: an empty file stays pending).
                    if !e.contains("the file is empty") {
                        eprintln!("smtptap: {e}");
                        t.ended = true;
                    }
                    false
                }
            };
            if text.is_empty() {
                continue;
            }
            if last_shown.as_ref() != Some(&t.path) {
                if last_shown.is_some() {
                    out.write_all(b"\n")?;
                }
                if !header {
                    let mut again = String::new();
                    t.transcript.note(&mut again, "", &format!("session {} continues", t.id));
                    out.write_all(again.as_bytes())?;
                }
                last_shown = Some(t.path.clone());
            }
            out.write_all(text.as_bytes())?;
        }
        out.flush()?;
        tracked.retain(|t| {
            if t.ended {
                done.insert(t.path.clone());
            }
            !t.ended
        });
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// A recording without an `end` that was written to recently.
fn is_live(path: &Path) -> bool {
    let recent = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age < LIVE_WINDOW);
    if !recent {
        return false;
    }
    match Reader::open(path) {
        Ok((mut reader, _)) => !reader.any(|r| matches!(r, Ok(Record::End(_)))),
        Err(_) => true,
    }
}
