//! Writes one session's recording: a file of JSON lines, each written with a
//! single `write` as soon as it is known, so a killed proxy leaves whole lines.

use super::format::{Exchange, Note, NoteKind, Record, SessionEnd, SessionInfo};
use super::spool::Spool;
use crate::smtp::session::Output;
use std::collections::VecDeque;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Creates the recordings directory (0700) if it is missing.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The file name of a session: `<UTC start>-<id>.jsonl`.
pub fn file_name(started: chrono::DateTime<chrono::Utc>, id: &str) -> String {
    format!("{}-{id}.jsonl", started.format("%Y%m%dT%H%M%SZ"))
}

/// A session's recording file. Write errors (a full disk, say) stop the
/// recording but never the relay: the first error is kept for the caller.
pub struct SessionRecorder {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    /// Reused buffer for one line.
    line: Vec<u8>,
    /// Content of messages whose exchange is not written yet, oldest first.
    /// `None` when bodies are not kept.
    spools: Option<VecDeque<Spool>>,
    error: Option<io::Error>,
}

impl SessionRecorder {
    /// Creates `<dir>/<name>` (0600, never an existing file) and writes the `session` line.
    pub fn create(dir: &Path, info: &SessionInfo, keep_bodies: bool) -> io::Result<SessionRecorder> {
        let path = dir.join(file_name_for(info));
        let open = || OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
        let file = match open() {
            // The directory was removed while the proxy ran: make it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                ensure_dir(dir)?;
                open()?
            }
            other => other?,
        };
        let mut recorder = SessionRecorder {
            file,
            path,
            dir: dir.to_owned(),
            line: Vec::with_capacity(1024),
            spools: keep_bodies.then(VecDeque::new),
            error: None,
        };
        recorder.write_record(&Record::Session(info.clone()));
        match recorder.error.take() {
            Some(e) => Err(e),
            None => Ok(recorder),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first write error, if recording has failed.
    pub fn error(&self) -> Option<&io::Error> {
        self.error.as_ref()
    }

    pub fn end(&mut self, end: SessionEnd) {
        self.write_record(&Record::End(end));
    }

    /// Writes a record that is not an exchange (a `tls` record, say).
    pub fn record(&mut self, record: &Record) {
        self.write_record(record);
    }

    fn write_record(&mut self, record: &Record) {
        if self.error.is_some() {
            return;
        }
        self.line.clear();
        let result = serde_json::to_writer(&mut self.line, record).map_err(io::Error::from).and_then(|()| {
            self.line.push(b'\n');
            self.file.write_all(&self.line)
        });
        self.fail_on(result);
    }

    fn fail_on(&mut self, result: io::Result<()>) {
        if let Err(e) = result {
            self.error = Some(e);
        }
    }

    /// Writes an exchange whose message body comes from a spool: the line is
    /// assembled around the streamed body, so its size never sits in memory.
    fn write_with_body(&mut self, mut exchange: Exchange, spool: &mut Spool) -> io::Result<()> {
        let message = exchange.message.take().unwrap_or_else(|| unreachable!("caller checked"));
        self.line.clear();
        serde_json::to_writer(&mut self.line, &Record::Exchange(exchange))?;
        self.line.pop(); // the closing brace
        self.line.extend_from_slice(br#","message":"#);
        serde_json::to_writer(&mut self.line, &message)?;
        self.line.pop();
        self.line.extend_from_slice(br#","body":"#);
        let mut out = BufWriter::with_capacity(256 * 1024, &self.file);
        out.write_all(&self.line)?;
        spool.write_json_body(&mut out)?;
        out.write_all(b"}}\n")?;
        out.flush()
    }
}

fn file_name_for(info: &SessionInfo) -> String {
    let started = chrono::DateTime::parse_from_rfc3339(&info.started)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    file_name(started, &info.id)
}

impl Output for SessionRecorder {
    fn exchange(&mut self, exchange: Exchange) {
        let spool = match (&exchange.message, &mut self.spools) {
            (Some(_), Some(spools)) => spools.pop_front(),
            _ => None,
        };
        match spool {
            Some(mut spool) if self.error.is_none() => {
                let result = self.write_with_body(exchange, &mut spool);
                self.fail_on(result);
            }
            _ => self.write_record(&Record::Exchange(exchange)),
        }
    }

    fn message_start(&mut self) {
        if let Some(spools) = &mut self.spools {
            spools.push_back(Spool::new());
        }
    }

    fn content(&mut self, chunk: &[u8]) {
        let Some(spool) = self.spools.as_mut().and_then(|s| s.back_mut()) else { return };
        if self.error.is_none() {
            let result = spool.push(chunk, &self.dir);
            self.fail_on(result);
        }
    }

    fn note(&mut self, t: String, kind: NoteKind, text: String, data: Option<&[u8]>) {
        use base64::Engine as _;
        let data_base64 = data.map(|d| base64::engine::general_purpose::STANDARD.encode(d));
        self.write_record(&Record::Note(Note { t, kind: Some(kind), text, data_base64 }));
    }
}
