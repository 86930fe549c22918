//! The sans-IO SMTP core: parsers and the session observer. Nothing below
//! this module touches a socket, a file or a clock of its own.

pub mod command;
pub mod data;
pub mod ehlo;
pub mod forward;
pub mod line;
pub mod message;
pub mod reply;
pub mod session;
