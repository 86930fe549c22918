//! Recordings: the format-1 types, the per-session writer, body spooling.

pub mod format;
pub mod reader;
mod spool;
pub mod writer;
