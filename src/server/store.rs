//! Saving accepted messages (`smtptap sink --save-dir`): each message's
//! content as `DIR/msg-N.eml`, streamed to a temporary file in the directory
//! and renamed once complete, so a reader never sees part of a message.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tempfile::NamedTempFile;

/// The directory messages are saved in, and the next number to try.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    next: AtomicU64,
}

impl Store {
    /// Saves into `dir`, creating it if missing.
    pub fn open(dir: &Path) -> io::Result<Store> {
        fs::create_dir_all(dir)?;
        Ok(Store { dir: dir.to_owned(), next: AtomicU64::new(0) })
    }

    /// Starts a message; its content goes to a hidden temporary file until
    /// [`Draft::commit`]. Dropping the draft removes that file.
    pub fn begin(self: &Arc<Self>) -> io::Result<Draft> {
        let file = tempfile::Builder::new().prefix(".msg-").suffix(".tmp").tempfile_in(&self.dir)?;
        Ok(Draft { file: BufWriter::new(file), store: self.clone() })
    }
}

/// A message being saved.
#[derive(Debug)]
pub struct Draft {
    file: BufWriter<NamedTempFile>,
    store: Arc<Store>,
}

impl Draft {
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    /// Completes the message as `msg-N.eml` with the lowest free N (counting
    /// on from the last one saved, from 0 at start); never replaces a file.
    pub fn commit(self) -> io::Result<PathBuf> {
        let mut file = self.file.into_inner().map_err(io::IntoInnerError::into_error)?;
        loop {
            let n = self.store.next.fetch_add(1, Ordering::Relaxed);
            let path = self.store.dir.join(format!("msg-{n}.eml"));
            match file.persist_noclobber(&path) {
                Ok(_) => return Ok(path),
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => file = e.file,
                Err(e) => return Err(e.error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn messages_appear_whole_and_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("new")).unwrap());
        let mut draft = store.begin().unwrap();
        draft.write(b"Subject: one\r\n\r\n").unwrap();
        draft.write(b"body\r\n").unwrap();
        assert_eq!(names(&store.dir).len(), 1);
        assert!(names(&store.dir)[0].starts_with(".msg-"), "only the hidden temporary file while writing");
        let first = draft.commit().unwrap();
        let mut second = store.begin().unwrap();
        second.write(b"two").unwrap();
        let second = second.commit().unwrap();
        assert_eq!(fs::read(&first).unwrap(), b"Subject: one\r\n\r\nbody\r\n");
        assert_eq!(fs::read(&second).unwrap(), b"two");
        assert_eq!(names(&store.dir), ["msg-0.eml", "msg-1.eml"]);
    }

    #[test]
    fn existing_messages_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("msg-0.eml"), b"old").unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut draft = store.begin().unwrap();
        draft.write(b"new").unwrap();
        assert_eq!(draft.commit().unwrap(), dir.path().join("msg-1.eml"));
        assert_eq!(fs::read(dir.path().join("msg-0.eml")).unwrap(), b"old");
    }

    #[test]
    fn a_dropped_draft_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut draft = store.begin().unwrap();
        draft.write(b"half a message").unwrap();
        drop(draft);
        assert!(names(dir.path()).is_empty());
    }
}
