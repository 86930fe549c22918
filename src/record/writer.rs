//! A session's side of its recording: turns what the observer reports into
//! JSON lines and hands them to the recorder thread ([`super::disk`]), which
//! writes them. Nothing here touches the disk.
//!
//! Lines gather in memory while the relay handles one read, and go to the
//! thread at [`SessionRecorder::flush`], which the relay calls before it
//! waits for the network again; so each line is on its way to disk as soon
//! as the read that made it has been relayed.

use super::disk::{Job, RecordQueue};
use super::format::{Exchange, Note, NoteKind, Record, SessionEnd, SessionInfo};
use crate::smtp::session::Output;
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Creates the recordings directory (0700) if it is missing.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The file name of a session, `<UTC start, YYYYMMDDTHHMMSSZ>-<id>.jsonl`,
/// from its `started` time as the record has it (RFC 3339, UTC).
pub fn file_name(started: &str, id: &str) -> String {
    debug_assert!(started.ends_with('Z'), "UTC, as format_time writes it: {started}");
    let seconds = started.split(['.', 'Z']).next().unwrap_or(started);
    let mut name = String::with_capacity(seconds.len() + id.len() + 8);
    name.extend(seconds.chars().filter(|c| !matches!(c, '-' | ':')));
    name.push_str("Z-");
    name.push_str(id);
    name.push_str(".jsonl");
    name
}

/// The most formatting buffer a session keeps between reads (a few records'
/// worth), so that an idle session holds little memory.
const KEPT_CAPACITY: usize = 4096;

/// One session's recording, as the relay sees it. Dropping it closes the file.
pub struct SessionRecorder {
    queue: RecordQueue,
    session: u64,
    path: PathBuf,
    keep_bodies: bool,
    /// Whole lines not yet handed to the thread.
    lines: Vec<u8>,
}

impl SessionRecorder {
    /// Asks for `<dir>/<name>` (0600, never an existing file) and queues the
    /// `session` line. A file that cannot be made is logged by the thread;
    /// the session is relayed all the same.
    pub fn create(queue: &RecordQueue, dir: &Path, info: SessionInfo, keep_bodies: bool) -> SessionRecorder {
        let path = dir.join(file_name(&info.started, &info.id));
        let session = queue.new_session();
        queue.send(Job::Open { session, id: info.id.clone(), path: path.clone(), dir: dir.to_owned() });
        let mut recorder = SessionRecorder { queue: queue.clone(), session, path, keep_bodies, lines: Vec::new() };
        recorder.write_record(&Record::Session(info));
        recorder.flush();
        recorder
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn end(&mut self, end: SessionEnd) {
        self.write_record(&Record::End(end));
    }

    /// Writes a record that is not an exchange (a `tls` record, say).
    pub fn record(&mut self, record: &Record) {
        self.write_record(record);
    }

    /// Hands the lines gathered so far to the recorder thread, as a copy of
    /// exactly their size: `lines` keeps its capacity, so formatting the next
    /// records does not grow a buffer from nothing again.
    pub fn flush(&mut self) {
        if !self.lines.is_empty() {
            self.queue.send(Job::Lines { session: self.session, bytes: self.lines.clone() });
            self.lines.clear();
            if self.lines.capacity() > KEPT_CAPACITY {
                self.lines.shrink_to(KEPT_CAPACITY);
            }
        }
    }

    /// Flushes, then waits while the recorder is too far behind (see [`super::disk`]).
    pub async fn flush_and_wait_for_room(&mut self) {
        self.flush();
        let started = std::time::Instant::now();
        if self.queue.room().await {
            tracing::warn!(file = %self.path.display(), waited_ms = started.elapsed().as_millis(),
                "the disk is behind the traffic: this session waited for its recording to be written");
        }
    }

    fn write_record(&mut self, record: &Record) {
        serde_json::to_writer(&mut self.lines, record).expect("records serialize");
        self.lines.push(b'\n');
    }

    /// Sends a job after the lines before it, keeping the record's order.
    fn send_in_order(&mut self, job: Job) {
        self.flush();
        self.queue.send(job);
    }
}

impl Drop for SessionRecorder {
    fn drop(&mut self) {
        self.send_in_order(Job::Close { session: self.session });
    }
}

impl Output for SessionRecorder {
    fn exchange(&mut self, mut exchange: Exchange) {
        let message = match exchange.message.take() {
            Some(message) if self.keep_bodies => message,
            message => {
                exchange.message = message;
                return self.write_record(&Record::Exchange(exchange));
            }
        };
        // The line up to `"body":`; the thread streams the spooled body after it.
        let mut head = Vec::with_capacity(512);
        serde_json::to_writer(&mut head, &Record::Exchange(exchange)).expect("records serialize");
        head.pop(); // the closing brace
        head.extend_from_slice(br#","message":"#);
        serde_json::to_writer(&mut head, &message).expect("records serialize");
        head.pop();
        head.extend_from_slice(br#","body":"#);
        self.send_in_order(Job::Body { session: self.session, head });
    }

    fn message_start(&mut self) {
        if self.keep_bodies {
            self.send_in_order(Job::MessageStart { session: self.session });
        }
    }

    fn content(&mut self, chunk: &[u8]) {
        if self.keep_bodies && !chunk.is_empty() {
            self.send_in_order(Job::Content { session: self.session, bytes: chunk.to_vec() });
        }
    }

    fn note(&mut self, t: String, kind: NoteKind, text: String, data: Option<&[u8]>) {
        use base64::Engine as _;
        let data_base64 = data.map(|d| base64::engine::general_purpose::STANDARD.encode(d));
        self.write_record(&Record::Note(Note { t, kind: Some(kind), text, data_base64 }));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_carry_the_start_to_the_second() {
        assert_eq!(super::file_name("2026-11-28T19:36:24.123456Z", "k3x9"), "20261128T193624Z-k3x9.jsonl");
        assert_eq!(super::file_name("0999-01-02T03:04:05Z", "a1"), "09990102T030405Z-a1.jsonl");
    }
}
