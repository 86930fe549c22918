//! Recordings: the format-1 types, the per-session writer, the recorder
//! thread that does their file I/O, body spooling.

pub mod disk;
pub mod format;
pub mod json_text;
pub mod reader;
mod spool;
pub mod writer;
