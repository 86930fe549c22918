//! smtptap: a man-in-the-middle SMTP recording proxy.
//!
//! How the parts fit, in the order bytes flow:
//! - [`relay`]: the sockets. Accepts clients, connects upstream, makes the TLS
//!   handshakes, and hands each read to the session observer, then relays
//!   what it says: the very bytes read, except where the proxy intervenes
//!   (STARTTLS, EHLO lists).
//! - [`smtp`]: the sans-IO protocol core. Line, reply, DATA and BDAT framing,
//!   and [`smtp::session::Observer`], which pairs commands with replies and
//!   emits exchanges. No sockets, files or clocks below it.
//! - [`auth`]: SASL (AUTH) decoding and redaction, sans-IO: follows an
//!   exchange across `334` continuations and says what may be recorded.
//! - [`tls`]: the local CA and its leaf certificates, rustls configurations
//!   for both sides, and certificate facts for the record.
//! - [`record`]: the recording format (version 1), the per-session writer
//!   that turns exchanges into JSON lines, and the recorder thread that does
//!   all their file I/O off the relay path, spooling large bodies to disk.
//! - [`server`]: the built-in test SMTP server, the default upstream, and on
//!   its own `smtptap sink`.
//! - [`show`]: recordings as swaks-style transcripts and a one-line-per-session
//!   list; `--follow` tails a recordings directory.
//! - [`check`]: findings about misconfigured clients, as pure rules over
//!   parsed recordings ([`record::reader`]), with advice in plain words.
//! - [`replay`]: `smtptap replay`, the client side of recordings sent to a
//!   target server, its replies compared with the recorded ones.
//! - [`serve`]: `smtptap serve`, the server side of a recording played to
//!   any client, reporting where the client departs from it.
//! - [`hex`]: lower-case hex, the form of every digest in the record.
//! - [`cli`]: command-line flags, resolved into config structs.
//! - [`shutdown`]: SIGINT and SIGTERM, for the commands that run until stopped.

pub mod auth;
pub mod check;
pub mod cli;
pub mod hex;
pub mod record;
pub mod relay;
pub mod replay;
pub mod serve;
pub mod server;
pub mod show;
pub mod shutdown;
pub mod smtp;
pub mod tls;
