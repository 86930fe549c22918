//! The list view: a directory of recordings, one line per session.

use super::text::{RESET, parse_time, printable};
use crate::record::format::{Record, SessionInfo, TlsSide};
use crate::record::reader::ReadError;
use std::fmt::Write as _;
use std::path::Path;

/// One session, in a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub started: String,
    pub client: String,
    pub upstream: String,
    pub tls: String,
    pub auth: String,
    pub messages: String,
    pub outcome: String,
    pub file: String,
}

/// Folds a recording's records into its list line, holding no bodies.
pub fn summarize(path: &Path, info: &SessionInfo, records: impl IntoIterator<Item = Result<Record, ReadError>>) -> Row {
    let mut tls = None::<String>;
    let mut identity = None::<String>;
    let mut auth_in_progress = false;
    let mut auth_ok = None::<bool>;
    let (mut accepted, mut attempted) = (0u64, 0u64);
    let mut failure = None::<(u16, String)>;
    let mut end = None;
    let mut unreadable = None;
    for record in records {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                unreadable = Some(e.to_string());
                break;
            }
        };
        match record {
            Record::Tls(t) if t.side == TlsSide::Client => {
                tls = Some(match (&t.error, &t.version) {
                    (Some(_), _) => "failed".into(),
                    (None, Some(v)) => v.clone(),
                    (None, None) => "TLS".into(),
                });
            }
            Record::Exchange(e) if e.origin.is_none() => {
                if e.tls && tls.is_none() {
                    tls = Some("TLS".into());
                }
                let verb = e.command.as_ref().and_then(|c| c.verb.as_deref());
                if verb.is_some_and(|v| v.eq_ignore_ascii_case("AUTH")) {
                    auth_in_progress = true;
                    identity = None;
                } else if verb.is_some() {
                    auth_in_progress = false;
                }
                if let Some(a) = e.command.as_ref().and_then(|c| c.auth.as_ref()) {
                    if let Some(who) = a.authcid.clone().or_else(|| a.user.clone()) {
                        identity = Some(who);
                    }
                }
                if let Some(r) = &e.reply {
                    if auth_in_progress && r.code != 334 {
                        auth_ok = Some((200..300).contains(&r.code));
                        auth_in_progress = false;
                    }
                    if e.message.is_some() {
                        attempted += 1;
                        accepted += u64::from((200..300).contains(&r.code));
                    }
                    let worse = failure.as_ref().is_none_or(|(code, _)| *code < 500 && r.code >= 500);
                    if r.code >= 400 && worse {
                        let what = match (verb, &e.message) {
                            (Some(v), _) => v.to_owned(),
                            (None, Some(_)) => "message".into(),
                            (None, None) if e.command.is_some() => "AUTH".into(),
                            (None, None) => "greeting".into(),
                        };
                        let code = r.enhanced.as_ref().map(|x| format!("{} {x}", r.code)).unwrap_or(r.code.to_string());
                        failure = Some((r.code, format!("{code} to {what}")));
                    }
                } else if e.message.is_some() {
                    attempted += 1;
                }
            }
            Record::End(e) => end = Some(e),
            _ => {}
        }
    }
    let auth = match (identity, auth_ok) {
        (Some(who), Some(false)) => format!("{who} (failed)"),
        (Some(who), _) => who,
        (None, Some(false)) => "(failed)".into(),
        (None, Some(true)) => "(ok)".into(),
        (None, None) => "-".into(),
    };
    let mut outcome = match (&end, &unreadable) {
        (Some(e), _) => e.reason.to_string(),
        (None, Some(_)) => "unreadable".into(),
        (None, None) => "no end yet".into(),
    };
    if let Some((_, f)) = failure {
        let _ = write!(outcome, "; {f}");
    }
    let started = parse_time(&info.started)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| info.started.clone());
    Row {
        started,
        client: info.client.clone(),
        upstream: info.upstream.clone(),
        tls: tls.unwrap_or_else(|| "none".into()),
        auth,
        messages: if accepted == attempted { accepted.to_string() } else { format!("{accepted}/{attempted}") },
        outcome,
        file: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }
}

/// The list view: a header and one aligned line per session.
pub fn list_table(rows: &[Row], color: bool) -> String {
    let header = Row {
        started: "STARTED (UTC)".into(),
        client: "CLIENT".into(),
        upstream: "UPSTREAM".into(),
        tls: "TLS".into(),
        auth: "AUTH".into(),
        messages: "MSGS".into(),
        outcome: "OUTCOME".into(),
        file: "FILE".into(),
    };
    let cells = |r: &Row| -> [String; 8] {
        [&r.started, &r.client, &r.upstream, &r.tls, &r.auth, &r.messages, &r.outcome, &r.file]
            .map(|c| printable(c).into_owned())
    };
    let all: Vec<[String; 8]> = std::iter::once(&header).chain(rows).map(cells).collect();
    let mut widths = [0usize; 8];
    for row in &all {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in all.iter().enumerate() {
        let mut line = String::new();
        for (j, c) in row.iter().enumerate() {
            if j == row.len() - 1 {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[j]);
            }
        }
        let line = line.trim_end();
        let failed = i > 0 && rows[i - 1].outcome.contains("; ");
        match (color, i == 0, failed) {
            (true, true, _) => {
                let _ = writeln!(out, "\x1b[1m{line}{RESET}");
            }
            (true, false, true) => {
                let _ = writeln!(out, "\x1b[31m{line}{RESET}");
            }
            _ => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}
