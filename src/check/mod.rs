//! `smtptap check`: a doctor for misconfigured clients.
//!
//! Reads recordings and reports what went wrong or is risky — AUTH before
//! TLS, relaying denied, a header `From:` that is not the envelope sender,
//! bare LFs, pipelining the server did not offer… (the list is in SPEC.md).
//! Each finding has a severity, the exchange it points at, and one line of
//! advice for a person who is not an SMTP expert.
//!
//! The rules ([`findings`]) are pure functions over a parsed recording
//! ([`facts::Facts`]); [`advice`] decodes what servers say when they refuse.
//! Only [`run`] reads files and writes output.

pub mod advice;
pub mod facts;
pub mod findings;
pub mod live;

use crate::record::reader::{self, Recording};
use serde::Serialize;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 when nothing at warning level or above was found, 1 when something was, \
                        2 when some input could not be read.")]
pub struct CheckArgs {
    /// Recording files, or directories of recordings.
    #[arg(value_name = "RECORDING|DIR", required = true)]
    pub paths: Vec<PathBuf>,
    /// Output for people (text) or for programs (json).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Colour: on a terminal unless NO_COLOR is set (auto), always, or never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = crate::show::ColorChoice::Auto)]
    pub color: crate::show::ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One problem found in a session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// A stable name, e.g. `auth-before-tls`.
    pub rule: &'static str,
    pub severity: Severity,
    /// The exchange it points at (`seq` in the recording).
    pub seq: Option<u64>,
    /// What happened.
    pub message: String,
    /// What to change, for a person who is not an SMTP expert.
    pub advice: String,
}

/// Every finding in a recording, in exchange order.
pub fn check(rec: &Recording) -> Vec<Finding> {
    let facts = facts::Facts::new(rec);
    let mut all: Vec<Finding> = findings::RULES.iter().flat_map(|rule| rule(&facts)).collect();
    all.sort_by_key(|f| f.seq.unwrap_or(u64::MAX));
    all
}

/// A checked recording, as `--format json` prints it.
#[derive(Debug, Serialize)]
struct Checked<'a> {
    path: &'a Path,
    session: &'a str,
    client: &'a str,
    upstream: &'a str,
    started: &'a str,
    findings: &'a [Finding],
}

#[derive(Debug, Default, Serialize)]
struct Totals {
    error: usize,
    warning: usize,
    info: usize,
}

impl Totals {
    fn add(&mut self, findings: &[Finding]) {
        for f in findings {
            match f.severity {
                Severity::Error => self.error += 1,
                Severity::Warning => self.warning += 1,
                Severity::Info => self.info += 1,
            }
        }
    }
}

/// Runs `smtptap check`: exit code 1 when a warning or error was found, 2
/// when some input could not be read, else 0. Errors writing standard
/// output are returned.
pub fn run(args: &CheckArgs) -> io::Result<u8> {
    let stdout = io::stdout();
    let no_color = std::env::var("NO_COLOR").ok();
    let color = crate::show::use_color(args.color, stdout.is_terminal(), no_color.as_deref());
    let mut out = io::BufWriter::new(stdout.lock());
    let mut unreadable = Vec::new();
    let mut files = Vec::new();
    for path in &args.paths {
        if path.is_dir() {
            match reader::list_recordings(path) {
                Ok(found) if found.is_empty() => {
                    unreadable.push(format!("{}: no recordings (*.jsonl) in it", path.display()))
                }
                Ok(found) => files.extend(found),
                Err(e) => unreadable.push(format!("{}: {e}", path.display())),
            }
        } else {
            files.push(path.clone());
        }
    }
    let mut totals = Totals::default();
    let mut checked = 0;
    let mut json = Vec::new();
    for path in &files {
        let rec = match Recording::read(path) {
            Ok(rec) => rec,
            Err(e) => {
                unreadable.push(e.to_string());
                continue;
            }
        };
        let found = check(&rec);
        totals.add(&found);
        checked += 1;
        match args.format {
            Format::Text => out.write_all(text_report(&rec, &found, color).as_bytes())?,
            Format::Json => json.push(serde_json::to_value(Checked {
                path,
                session: &rec.session.id,
                client: &rec.session.client,
                upstream: &rec.session.upstream,
                started: &rec.session.started,
                findings: &found,
            })?),
        }
    }
    for e in &unreadable {
        eprintln!("smtptap: {e}");
    }
    match args.format {
        Format::Text => {
            if checked > 0 {
                let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
                writeln!(
                    out,
                    "{} checked: {}, {}, {}",
                    plural(checked, "recording", "recordings"),
                    plural(totals.error, "error", "errors"),
                    plural(totals.warning, "warning", "warnings"),
                    totals.info.to_string() + " info"
                )?;
            }
        }
        Format::Json => {
            let doc = serde_json::json!({ "recordings": json, "unreadable": unreadable, "totals": totals });
            serde_json::to_writer_pretty(&mut out, &doc)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(if !unreadable.is_empty() {
        2
    } else if totals.error + totals.warning > 0 {
        1
    } else {
        0
    })
}

/// The findings of one recording, for people.
pub fn text_report(rec: &Recording, found: &[Finding], color: bool) -> String {
    use std::fmt::Write as _;
    let s = &rec.session;
    let started = crate::show::parse_time(&s.started)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| s.started.clone());
    let mut out = String::new();
    let head = format!("{}: session {}, {} -> {}, {started}", rec.path.display(), s.id, s.client, s.upstream);
    if color {
        let _ = writeln!(out, "\x1b[1m{}\x1b[0m", crate::show::printable(&head));
    } else {
        let _ = writeln!(out, "{}", crate::show::printable(&head));
    }
    if found.is_empty() {
        let _ = writeln!(out, "  no problems found");
    }
    for f in found {
        let severity = format!("{:<7}", f.severity.as_str());
        let severity = match (color, f.severity) {
            (false, _) => severity,
            (true, Severity::Error) => format!("\x1b[1;31m{severity}\x1b[0m"),
            (true, Severity::Warning) => format!("\x1b[33m{severity}\x1b[0m"),
            (true, Severity::Info) => format!("\x1b[36m{severity}\x1b[0m"),
        };
        let at = f.seq.map(|s| format!("#{s}")).unwrap_or_default();
        let _ = writeln!(out, "  {severity}  {at:<4} {} [{}]", crate::show::printable(&f.message), f.rule);
        let _ = writeln!(out, "  {:<7}  {:<4} → {}", "", "", f.advice);
    }
    out
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
