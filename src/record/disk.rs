//! The recorder thread: every file operation of every recording happens on
//! one thread of its own, so the relay never waits for the disk.
//!
//! Sessions hand it [`Job`]s through a channel, in order. It works in turns:
//! woken by a job, it lets more gather for [`GATHER`] (10 ms), then writes
//! each session's lines with one `write`: whole lines only, so a killed
//! proxy leaves whole lines. A line is on disk at most a turn after it is
//! known; under load one wake-up and one write serve many lines.
//!
//! Back-pressure, never loss: the bytes queued and not yet on disk are
//! bounded by [`QUEUE_LIMIT`]. When the disk falls that far behind, sessions
//! wait before their next read (the relay slows to the disk's pace), and
//! each wait is logged. A disk that refuses writes (full, say) ends that
//! recording, never the relay; that is logged too.

use super::spool::Spool;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use tokio::sync::Notify;

/// Most record bytes queued and not yet written, across all sessions.
pub const QUEUE_LIMIT: usize = 8 << 20;
/// Bodies up to this size are written with the turn's lines.
const INLINE_BODY: u64 = 16 * 1024;
/// Larger bodies are written in blocks of about this size.
const WRITE_BLOCK: usize = 256 * 1024;
/// Most jobs taken in one turn, so one busy turn cannot starve the writes.
const TURN_JOBS: usize = 4096;
/// How long a turn waits for work to gather after the first job: the most a
/// line waits before it is written.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// What a session asks of the recorder thread.
pub(super) enum Job {
    /// A new recording: its file is made (`create_new`, 0600) with its first
    /// lines, remaking the directory if it vanished.
    Open { session: u64, id: String, path: PathBuf, dir: PathBuf },
    /// Whole JSON lines to append.
    Lines { session: u64, bytes: Vec<u8> },
    /// A message starts; its content follows.
    MessageStart { session: u64 },
    /// Message content, spooled until its exchange is written.
    Content { session: u64, bytes: Vec<u8> },
    /// An exchange line up to `"body":`; the oldest spooled message completes it.
    Body { session: u64, head: Vec<u8> },
    /// The session is over: close its file.
    Close { session: u64 },
}

impl Job {
    fn session(&self) -> u64 {
        match self {
            Job::Open { session, .. }
            | Job::Lines { session, .. }
            | Job::MessageStart { session }
            | Job::Content { session, .. }
            | Job::Body { session, .. }
            | Job::Close { session } => *session,
        }
    }

    /// Bytes held in memory until the job is done.
    fn size(&self) -> usize {
        match self {
            Job::Lines { bytes, .. } | Job::Content { bytes, .. } => bytes.len(),
            Job::Body { head, .. } => head.len(),
            Job::Open { .. } | Job::MessageStart { .. } | Job::Close { .. } => 0,
        }
    }
}

/// Where sessions send their jobs. Cheap to clone.
#[derive(Clone)]
pub struct RecordQueue {
    inner: Arc<Shared>,
    jobs: Sender<Message>,
}

struct Shared {
    /// Most bytes queued before sessions wait.
    limit: usize,
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    /// Woken whenever the recorder thread has written a turn's worth.
    written: Notify,
    next_session: AtomicU64,
}

enum Message {
    Job(Job),
    /// Finish what is queued, then stop.
    Stop,
}

impl RecordQueue {
    fn new(limit: usize) -> (RecordQueue, Receiver<Message>) {
        let (jobs, rx) = channel();
        let inner = Arc::new(Shared {
            limit,
            queued: AtomicUsize::new(0),
            written: Notify::new(),
            next_session: AtomicU64::new(0),
        });
        (RecordQueue { inner, jobs }, rx)
    }

    /// A number that names a new session's jobs.
    pub(super) fn new_session(&self) -> u64 {
        self.inner.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn send(&self, job: Job) {
        self.inner.queued.fetch_add(job.size(), Ordering::Relaxed);
        // The thread outlives every session; if it died, there is nothing to record to.
        let _ = self.jobs.send(Message::Job(job));
    }

    /// Completes at once unless the disk is the queue's limit behind; then when
    /// it has caught up. Returns whether it had to wait.
    pub async fn room(&self) -> bool {
        let mut waited = false;
        loop {
            let written = self.inner.written.notified();
            if self.inner.queued.load(Ordering::Relaxed) < self.inner.limit {
                return waited;
            }
            waited = true;
            written.await;
        }
    }
}

/// The recorder thread and the queue to it.
pub struct Recorder {
    queue: RecordQueue,
    thread: JoinHandle<()>,
}

impl Recorder {
    /// Starts the thread; sessions wait once `limit` bytes (normally
    /// [`QUEUE_LIMIT`]) are queued and not yet written.
    pub fn start(limit: usize) -> io::Result<Recorder> {
        let (queue, rx) = RecordQueue::new(limit);
        let thread_inner = queue.inner.clone();
        let thread =
            std::thread::Builder::new().name("smtptap-recorder".into()).spawn(move || run(&rx, &thread_inner))?;
        Ok(Recorder { queue, thread })
    }

    pub fn queue(&self) -> RecordQueue {
        self.queue.clone()
    }

    /// Writes everything queued so far, then stops the thread. Jobs sent
    /// after this (by sessions that outlived the shutdown) are dropped.
    pub fn finish(self) {
        let _ = self.queue.jobs.send(Message::Stop);
        let _ = self.thread.join();
    }
}

/// One session's file, as the thread sees it.
struct OpenRecording {
    id: String,
    path: PathBuf,
    dir: PathBuf,
    file: FileState,
    /// Lines gathered this turn.
    out: Vec<u8>,
    /// Spooled messages whose exchange is not written yet, oldest first.
    spools: std::collections::VecDeque<Spool>,
}

/// The file is made with its first lines, so no recording is ever seen empty.
enum FileState {
    NotYet,
    Open(File),
    /// Recording this session failed (logged); the rest is dropped.
    Failed,
}

impl OpenRecording {
    fn new(id: String, path: PathBuf, dir: PathBuf) -> OpenRecording {
        let file = FileState::NotYet;
        OpenRecording { id, path, dir, file, out: Vec::new(), spools: Default::default() }
    }

    /// The file, made (`create_new`, 0600) on first use; `None` once failed.
    fn file(&mut self) -> Option<&File> {
        if let FileState::NotYet = self.file {
            let create = || OpenOptions::new().write(true).create_new(true).mode(0o600).open(&self.path);
            let made = match create() {
                // The directory was removed while the proxy ran: make it again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    super::writer::ensure_dir(&self.dir).and_then(|()| create())
                }
                other => other,
            };
            self.file = match made {
                Ok(file) => FileState::Open(file),
                Err(e) => {
                    tracing::error!(session = %self.id, error = %e, dir = %self.dir.display(),
                        "cannot create the recording; relaying this session unrecorded");
                    FileState::Failed
                }
            };
        }
        match &self.file {
            FileState::Open(file) => Some(file),
            _ => None,
        }
    }

    fn failed(&self) -> bool {
        matches!(self.file, FileState::Failed)
    }

    /// Does one job; `scratch` is the thread's buffer for large bodies.
    fn apply(&mut self, job: Job, scratch: &mut Vec<u8>) {
        match job {
            Job::Open { .. } => unreachable!("Files::apply opens recordings"),
            Job::Lines { bytes, .. } if self.out.is_empty() => self.out = bytes,
            Job::Lines { bytes, .. } => self.out.extend_from_slice(&bytes),
            // Sent only when bodies are kept.
            Job::MessageStart { .. } => self.spools.push_back(Spool::new()),
            Job::Content { bytes, .. } => {
                if self.failed() {
                    return;
                }
                // The lines before a body reach the file before the body can fill the disk.
                if self.spools.back().is_some_and(|spool| spool.spills_with(bytes.len())) {
                    self.write_out();
                }
                if let Some(spool) = self.spools.back_mut() {
                    let result = spool.push(bytes, &self.dir);
                    self.fail_on(result);
                }
            }
            Job::Body { head, .. } => {
                let spool = self.spools.pop_front();
                if self.failed() {
                    return;
                }
                // A small body joins the turn's lines; a larger one is
                // written on its own, after the lines before it.
                let result = match spool {
                    Some(spool) if spool.len() > INLINE_BODY => {
                        self.write_out();
                        match self.file() {
                            Some(file) => write_with_body(file, &head, spool, scratch),
                            None => Ok(()),
                        }
                    }
                    spool => {
                        // Room for the escaped (or base64) body: one allocation, not a series.
                        let body = spool.as_ref().map_or(0, |s| s.len() as usize);
                        self.out.reserve(head.len() + body + body / 3 + 64);
                        self.out.extend_from_slice(&head);
                        body_and_end(&mut self.out, spool)
                    }
                };
                self.fail_on(result);
            }
            Job::Close { .. } => self.write_out(),
        }
    }

    /// Writes the lines gathered this turn in one call.
    fn write_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.out);
        if let Some(mut file) = self.file() {
            let result = file.write_all(&out);
            self.fail_on(result);
        }
    }

    fn fail_on(&mut self, result: io::Result<()>) {
        if let Err(e) = result {
            tracing::error!(session = %self.id, file = %self.path.display(), error = %e,
                "recording failed; the session was relayed but its recording is incomplete");
            self.file = FileState::Failed;
        }
    }
}

/// Writes an exchange line with a large body, streamed from its spool
/// through `scratch` (at most [`WRITE_BLOCK`] at a time, so a spilled body
/// never sits in memory whole). `scratch` keeps its capacity for the next.
fn write_with_body(file: &File, head: &[u8], spool: Spool, scratch: &mut Vec<u8>) -> io::Result<()> {
    scratch.clear();
    let mut out = Blocks { file, buf: scratch };
    out.write_all(head)?;
    body_and_end(&mut out, Some(spool))?;
    out.flush()
}

/// A `BufWriter` over a borrowed buffer.
struct Blocks<'a> {
    file: &'a File,
    buf: &'a mut Vec<u8>,
}

impl Write for Blocks<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= WRITE_BLOCK {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.file.write_all(self.buf);
        self.buf.clear();
        result
    }
}

/// The rest of an exchange line after `"body":`. Without a spool (no content
/// was seen) the body is `null`.
fn body_and_end(out: &mut impl Write, spool: Option<Spool>) -> io::Result<()> {
    match spool {
        Some(mut spool) => spool.write_json_body(out)?,
        None => out.write_all(b"null")?,
    }
    out.write_all(b"}}\n")
}

fn run(rx: &Receiver<Message>, shared: &Shared) {
    let mut files = Files::default();
    while let Ok(first) = rx.recv() {
        // Let a turn's work gather: the thread is woken once per turn, not
        // once per line, and each session's lines go out in one write. A
        // thread that is behind has gathered enough and goes straight on.
        if shared.queued.load(Ordering::Relaxed) < shared.limit / 8 {
            std::thread::sleep(GATHER);
        }
        if files.turn(first, rx, shared) == Turn::Stop {
            return;
        }
    }
}

#[derive(Debug, PartialEq)]
enum Turn {
    Go,
    Stop,
}

/// The recordings the thread has open.
#[derive(Default)]
struct Files {
    open: HashMap<u64, OpenRecording>,
    /// Sessions with lines gathered this turn.
    touched: Vec<u64>,
    /// Where large bodies are escaped on their way to disk; reused.
    scratch: Vec<u8>,
}

impl Files {
    /// Does `first` and whatever else has queued (up to [`TURN_JOBS`]), then
    /// writes each session's gathered lines.
    fn turn(&mut self, first: Message, rx: &Receiver<Message>, shared: &Shared) -> Turn {
        let mut next = Some(first);
        let mut done = 0;
        let mut turn = Turn::Go;
        for _ in 0..TURN_JOBS {
            let Some(message) = next.take().or_else(|| rx.try_recv().ok()) else { break };
            let Message::Job(job) = message else {
                turn = Turn::Stop;
                break;
            };
            done += job.size();
            self.apply(job);
        }
        for session in self.touched.drain(..) {
            if let Some(recording) = self.open.get_mut(&session) {
                recording.write_out();
            }
        }
        if turn == Turn::Stop {
            for (_, mut recording) in self.open.drain() {
                recording.write_out();
            }
        }
        shared.queued.fetch_sub(done, Ordering::Relaxed);
        shared.written.notify_waiters();
        turn
    }

    fn apply(&mut self, job: Job) {
        let session = job.session();
        match job {
            Job::Open { session, id, path, dir } => {
                self.open.insert(session, OpenRecording::new(id, path, dir));
            }
            Job::Close { .. } => {
                if let Some(mut recording) = self.open.remove(&session) {
                    recording.apply(job, &mut self.scratch);
                }
            }
            job => {
                if let Some(recording) = self.open.get_mut(&session) {
                    recording.apply(job, &mut self.scratch);
                    self.touched.push(session);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Duration;

    fn open(queue: &RecordQueue, dir: &Path, name: &str) -> u64 {
        let session = queue.new_session();
        let (id, path) = (name.to_owned(), dir.join(name));
        queue.send(Job::Open { session, id, path, dir: dir.to_owned() });
        session
    }

    fn lines(queue: &RecordQueue, session: u64, text: &str) {
        queue.send(Job::Lines { session, bytes: text.as_bytes().to_vec() });
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn interleaved_sessions_land_in_their_own_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::start(QUEUE_LIMIT).unwrap();
        let queue = recorder.queue();
        let a = open(&queue, dir.path(), "a.jsonl");
        let b = open(&queue, dir.path(), "b.jsonl");
        lines(&queue, a, "a1\n");
        lines(&queue, b, "b1\n");
        lines(&queue, a, "a2\na3\n");
        queue.send(Job::Close { session: a });
        lines(&queue, b, "b2\n");
        recorder.finish();
        assert_eq!(std::fs::read_to_string(dir.path().join("a.jsonl")).unwrap(), "a1\na2\na3\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("b.jsonl")).unwrap(), "b1\nb2\n");
        assert_eq!(mode(&dir.path().join("a.jsonl")), 0o600);
        assert_eq!(queue.inner.queued.load(Ordering::Relaxed), 0, "every queued byte is accounted for");
    }

    #[test]
    fn bodies_of_every_size_land_in_their_exchange_line_in_order() {
        // Inline with the lines, written on its own, and spilled to disk first.
        for repeat in [1, 5_000, 40_000] {
            let dir = tempfile::tempdir().unwrap();
            let recorder = Recorder::start(QUEUE_LIMIT).unwrap();
            let queue = recorder.queue();
            let s = open(&queue, dir.path(), "s.jsonl");
            lines(&queue, s, "{\"n\":1}\n");
            queue.send(Job::MessageStart { session: s });
            let mut want = String::from("Subject: x\r\n\r\n");
            queue.send(Job::Content { session: s, bytes: want.clone().into_bytes() });
            for _ in 0..repeat {
                let part = "caf\u{e9} \"quoted\"\r\n";
                queue.send(Job::Content { session: s, bytes: part.as_bytes().to_vec() });
                want.push_str(part);
            }
            queue.send(Job::Body { session: s, head: br#"{"n":2,"message":{"body":"#.to_vec() });
            lines(&queue, s, "{\"n\":3}\n");
            recorder.finish();
            let text = std::fs::read_to_string(dir.path().join("s.jsonl")).unwrap();
            let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(records.iter().map(|r| r["n"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
            let body = &records[1]["message"]["body"];
            assert_eq!(body["encoding"], "utf8", "{repeat}");
            assert!(body["data"] == want.as_str(), "{repeat}: the body differs");
        }
    }

    #[test]
    fn a_recording_that_cannot_be_made_leaves_the_others_alone() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"").unwrap();
        let recorder = Recorder::start(QUEUE_LIMIT).unwrap();
        let queue = recorder.queue();
        let lost = open(&queue, &not_a_dir, "x.jsonl");
        let kept = open(&queue, dir.path(), "kept.jsonl");
        lines(&queue, lost, "nowhere\n");
        queue.send(Job::MessageStart { session: lost });
        queue.send(Job::Content { session: lost, bytes: b"body".to_vec() });
        lines(&queue, kept, "here\n");
        recorder.finish();
        assert_eq!(std::fs::read_to_string(dir.path().join("kept.jsonl")).unwrap(), "here\n");
    }

    #[test]
    fn a_vanished_directory_is_made_again_private() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("gone");
        let recorder = Recorder::start(QUEUE_LIMIT).unwrap();
        let queue = recorder.queue();
        let s = open(&queue, &records, "s.jsonl");
        lines(&queue, s, "line\n");
        recorder.finish();
        assert_eq!(std::fs::read_to_string(records.join("s.jsonl")).unwrap(), "line\n");
        assert_eq!(mode(&records), 0o700);
    }

    #[tokio::test]
    async fn sessions_wait_only_while_the_disk_is_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, rx) = RecordQueue::new(10);
        assert!(!queue.room().await, "an empty queue has room");
        let s = open(&queue, dir.path(), "s.jsonl");
        lines(&queue, s, "more than ten bytes\n");
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.room().await }
        });
        // Nothing is written yet, so the session cannot go on.
        assert!(tokio::time::timeout(Duration::from_millis(50), queue.room()).await.is_err());
        let first = rx.recv().unwrap();
        assert_eq!(Files::default().turn(first, &rx, &queue.inner), Turn::Go);
        assert!(waiting.await.unwrap(), "the waiting session goes on once the lines are written");
        assert!(!queue.room().await);
    }
}
