//! `smtptap show`: the command — its arguments, which recordings it shows
//! (`--since`, `--last`, oldest first) and which view shows them.
//!
//! A recording file is shown as a transcript (`transcript`), a directory is
//! listed one line per session (`list`), and `--follow` tails a directory
//! (or one file) and prints sessions as they grow (`follow`). Times, sizes
//! and terminal-safe text shared by these (and by `smtptap check`) are in
//! `text`.
//!
//! Rendering ([`Transcript`], [`summarize`], [`list_table`]) is plain code
//! over parsed records writing into a `String`; only [`run`] and the follow
//! loop touch files, clocks and the terminal.

mod follow;
mod list;
mod text;
mod transcript;

pub use list::{Row, list_table, summarize};
pub use text::{body_bytes, fmt_size, parse_time, printable};
pub use transcript::{BODY_LINE_CHARS, BODY_LINES, Transcript, auth_suffix, render};

use crate::record::reader::{self, Reader};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Recording files (shown as transcripts) or directories of recordings
    /// (listed one line per session).
    #[arg(value_name = "RECORDING|DIR", required = true)]
    pub paths: Vec<PathBuf>,
    /// Only sessions started at or after TIME: RFC 3339 (2026-11-28T19:36:24Z),
    /// a UTC date or date and time (2026-11-28, 2026-11-28T19:36), or a time
    /// ago (90s, 10m, 2h, 1d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only the last N sessions.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Prefix every line with its UTC time.
    #[arg(long, conflicts_with = "latency")]
    pub timestamps: bool,
    /// Show how long each reply took.
    #[arg(long)]
    pub latency: bool,
    /// Print the first lines of each message's content, not only its summary.
    #[arg(long)]
    pub body: bool,
    /// Keep watching: print sessions as they are recorded, until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// With a directory: print each session's transcript instead of the list.
    #[arg(long)]
    pub transcripts: bool,
    /// Colour: on a terminal unless NO_COLOR is set (auto), always, or never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Whether to colour: `auto` means a terminal, and `NO_COLOR` unset or empty
/// (https://no-color.org).
pub fn use_color(choice: ColorChoice, is_terminal: bool, no_color: Option<&str>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_terminal && no_color.is_none_or(str::is_empty),
    }
}

/// What a transcript shows besides the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timing {
    #[default]
    None,
    /// Every line prefixed with its UTC time.
    Timestamps,
    /// A column with each reply's latency.
    Latency,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub timing: Timing,
    pub body: bool,
    pub color: bool,
}

// ---------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------

/// Runs `smtptap show`; returns the exit code (2 when some input could not
/// be read). Errors writing standard output are returned (a closed pipe is
/// the caller's to forgive).
pub fn run(args: &ShowArgs) -> io::Result<u8> {
    let stdout = io::stdout();
    let no_color = std::env::var("NO_COLOR").ok();
    let opts = Options {
        timing: if args.timestamps {
            Timing::Timestamps
        } else if args.latency {
            Timing::Latency
        } else {
            Timing::None
        },
        body: args.body,
        color: use_color(args.color, stdout.is_terminal(), no_color.as_deref()),
    };
    let since = match args.since.as_deref().map(|s| parse_since(s, Utc::now())).transpose() {
        Ok(since) => since,
        Err(e) => {
            eprintln!("smtptap: --since: {e}");
            return Ok(2);
        }
    };
    let mut out = io::BufWriter::new(stdout.lock());
    if args.follow {
        return follow::follow(args, opts, since, &mut out);
    }
    let mut code = 0;
    let mut files = Vec::new();
    let mut any_dir = false;
    for path in &args.paths {
        if path.is_dir() {
            any_dir = true;
            match reader::list_recordings(path) {
                Ok(found) => files.extend(found),
                Err(e) => {
                    eprintln!("smtptap: {}: {e}", path.display());
                    code = 2;
                }
            }
        } else {
            files.push(path.clone());
        }
    }
    let selected = select(&files, since, args.last, &mut code);
    if any_dir && !args.transcripts {
        let mut rows = Vec::new();
        for path in selected {
            match Reader::open(&path) {
                Ok((reader, info)) => rows.push(summarize(&path, &info, reader)),
                Err(e) => {
                    eprintln!("smtptap: {e}");
                    code = 2;
                }
            }
        }
        out.write_all(list_table(&rows, opts.color).as_bytes())?;
    } else {
        for (i, path) in selected.iter().enumerate() {
            if i > 0 {
                out.write_all(b"\n")?;
            }
            if let Err(e) = transcript::transcript_of(path, opts, &mut out)? {
                eprintln!("smtptap: {e}");
                code = 2;
            }
        }
    }
    out.flush()?;
    Ok(code)
}

/// Orders recordings by their start (from their first line; unreadable
/// ones keep their place at the end, to be reported when shown), then
/// applies `--since` and `--last`.
fn select(files: &[PathBuf], since: Option<DateTime<Utc>>, last: Option<usize>, code: &mut u8) -> Vec<PathBuf> {
    let mut dated: Vec<(Option<DateTime<Utc>>, bool, &PathBuf)> = files
        .iter()
        .map(|path| match Reader::open(path) {
            Ok((_, info)) => (parse_time(&info.started), true, path),
            Err(_) => (None, false, path),
        })
        .collect();
    if files.len() > 1 {
        dated.sort_by(|a, b| (!a.1, a.0, a.2).cmp(&(!b.1, b.0, b.2)));
    }
    let mut kept: Vec<PathBuf> = dated
        .into_iter()
        .filter(|(started, readable, path)| match (since, readable) {
            (None, _) => true,
            (Some(since), true) => started.is_none_or(|t| t >= since),
            (Some(_), false) => {
                if let Err(e) = Reader::open(path) {
                    eprintln!("smtptap: {e}");
                }
                *code = 2;
                false
            }
        })
        .map(|(_, _, path)| path.clone())
        .collect();
    if let Some(n) = last {
        kept.drain(..kept.len().saturating_sub(n));
    }
    kept
}

/// `--since`: RFC 3339, a UTC date or date-time, or a duration ago.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Some(t) = parse_time(s) {
        return Ok(t);
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if seconds > 0 && !number.is_empty() => Ok(now - chrono::Duration::seconds(n.saturating_mul(seconds))),
        _ => Err(format!(
            "cannot read `{s}` as a time: give RFC 3339 (2026-11-28T19:36:24Z), a UTC date (2026-11-28), \
             a UTC date and time (2026-11-28T19:36) or a time ago (90s, 10m, 2h, 1d)"
        )),
    }
}

#[cfg(test)]
mod tests;
