//! Recordings: the format-1 types, the per-session writer, body spooling.

pub mod format;
mod spool;
pub mod writer;
