//! `smtptap proxy --check`: the findings of each session, printed as it ends.
//!
//! Works from the recordings themselves, as `smtptap check` does, so the
//! relay knows nothing about it: a [`Watcher`] looks at the record
//! directory now and then and reports every recording that has gained its
//! `end` record since it last looked.

use super::{check, text_report};
use crate::record::reader::{self, Recording};
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the record directory is looked at.
pub const POLL: Duration = Duration::from_millis(250);

/// Reports sessions recorded in a directory as they end.
pub struct Watcher {
    dir: PathBuf,
    color: bool,
    /// Recordings already reported, or there before the watcher started.
    done: HashSet<PathBuf>,
    /// Sizes of recordings seen without an `end`, to re-read only what grew.
    sizes: HashMap<PathBuf, u64>,
}

impl Watcher {
    /// Starts watching `dir`; what is in it already is not reported.
    pub fn new(dir: PathBuf, color: bool) -> Watcher {
        let done = reader::list_recordings(&dir).unwrap_or_default().into_iter().collect();
        Watcher { dir, color, done, sizes: HashMap::new() }
    }

    /// Writes the report of every recording that ended since the last call.
    pub fn poll(&mut self, out: &mut impl Write) -> io::Result<()> {
        let Ok(files) = reader::list_recordings(&self.dir) else { return Ok(()) };
        for path in files {
            if self.done.contains(&path) {
                continue;
            }
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if self.sizes.get(&path) == Some(&size) {
                continue;
            }
            self.sizes.insert(path.clone(), size);
            let Ok(rec) = Recording::read(&path) else { continue };
            if rec.end().is_none() {
                continue;
            }
            out.write_all(text_report(&rec, &check(&rec), self.color).as_bytes())?;
            out.flush()?;
            self.sizes.remove(&path);
            self.done.insert(path);
        }
        Ok(())
    }
}

/// A [`Watcher`] on its own thread, printing to standard output.
pub struct LiveCheck {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl LiveCheck {
    /// Starts reporting sessions that end in `dir` from now on.
    pub fn spawn(dir: PathBuf) -> LiveCheck {
        let no_color = std::env::var("NO_COLOR").ok();
        let color =
            crate::show::use_color(crate::show::ColorChoice::Auto, io::stdout().is_terminal(), no_color.as_deref());
        let mut watcher = Watcher::new(dir, color);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            loop {
                let last = stopping.load(Ordering::Relaxed);
                if let Err(e) = watcher.poll(&mut io::stdout()) {
                    if e.kind() != io::ErrorKind::BrokenPipe {
                        tracing::warn!(error = %e, "--check cannot print findings");
                    }
                    return;
                }
                if last {
                    return;
                }
                std::thread::sleep(POLL);
            }
        });
        LiveCheck { stop, thread }
    }

    /// Reports what ended meanwhile, then stops.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = r#"{"type":"session","format":1,"id":"k3x9","started":"2026-11-28T19:36:24.123456Z","listen":"127.0.0.1:2525","client":"127.0.0.1:50412","upstream":"mx:25","tool":"smtptap 0.1.0"}"#;
    const HELO: &str = r#"{"type":"exchange","seq":0,"t":"2026-11-28T19:36:24.123456Z","tls":false,"pipelined":false,"command":{"verb":"HELO","line":"HELO x"},"reply":{"code":250,"enhanced":null,"lines":["mx"]},"ms":0.8}"#;
    const END: &str = r#"{"type":"end","reason":"quit","error":null,"duration_ms":3,"exchanges":1,"messages":0,"bytes_from_client":8,"bytes_from_upstream":4}"#;

    #[test]
    fn reports_each_session_once_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.jsonl"), format!("{SESSION}\n{HELO}\n{END}\n")).unwrap();
        let mut watcher = Watcher::new(dir.path().to_owned(), false);
        let mut out = Vec::new();
        watcher.poll(&mut out).unwrap();
        assert!(out.is_empty(), "what was there before is not reported");
        let new = dir.path().join("new.jsonl");
        std::fs::write(&new, format!("{SESSION}\n{HELO}\n")).unwrap();
        watcher.poll(&mut out).unwrap();
        assert!(out.is_empty(), "not before it ends");
        std::fs::write(&new, format!("{SESSION}\n{HELO}\n{END}\n")).unwrap();
        watcher.poll(&mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("new.jsonl: session k3x9") && text.contains("[helo-not-ehlo]"), "{text}");
        out.clear();
        watcher.poll(&mut out).unwrap();
        assert!(out.is_empty(), "reported once");
    }
}
