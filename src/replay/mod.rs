//! `smtptap replay`: sends the client side of recordings to a target server
//! and compares its replies with the recorded ones (SPEC.md).
//!
//! - [`script`] (sans-IO): a recording as groups of bytes to send and the
//!   replies expected for them; refuses what cannot be replayed faithfully.
//! - [`compare`] (sans-IO): `--match code|enhanced|text` and the output line.
//! - [`client`]: the plaintext TCP client.
//!
//! Every recording is read and scripted before anything connects, so a
//! recording that cannot be replayed stops the run with exit 2 and no
//! connection made. Then sessions are replayed one after another.
//!
//! Not yet: TLS towards the target, credential substitution, placeholder
//! bodies for `--no-bodies` recordings, load mode (see issue 5).

pub mod client;
pub mod compare;
pub mod script;

use crate::record::reader::{Recording, list_recordings};
use crate::tls::TlsMode;
use client::{Client, ClientError};
use compare::MatchMode;
use script::{Expected, Script, TlsPlan};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Recordings, or directories of them (every *.jsonl inside, in name order).
    #[arg(value_name = "RECORDING", required = true)]
    pub recordings: Vec<PathBuf>,
    /// The server to replay against.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,
    /// TLS towards the target; only `off` is implemented (plaintext, even where the recording used TLS).
    #[arg(long, value_enum)]
    pub tls: Option<TlsMode>,
    /// What must agree: the 3-digit code; code + enhanced status; or the whole text.
    #[arg(long = "match", value_enum, default_value_t = MatchMode::Enhanced)]
    pub match_mode: MatchMode,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// User to put in place of a redacted one (not implemented yet).
    #[arg(long, value_name = "USER")]
    pub auth_user: Option<String>,
    /// Environment variable holding the password to put in place of a redacted one (not implemented yet).
    #[arg(long, value_name = "VAR")]
    pub auth_password_env: Option<String>,
    /// Longest wait for the connection and for each reply.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

/// The JSON report (`--report`), and the totals of the summary line.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub target: String,
    #[serde(rename = "match")]
    pub match_mode: MatchMode,
    pub sessions: usize,
    pub exchanges: usize,
    pub matched: usize,
    pub differed: usize,
    pub errors: usize,
    pub results: Vec<SessionResult>,
}

#[derive(Debug, Default, Serialize)]
pub struct SessionResult {
    /// Numbered from 1 in replay order.
    pub session: usize,
    pub path: PathBuf,
    pub exchanges: usize,
    pub matched: usize,
    pub differed: usize,
    pub errors: usize,
    /// Why the session could not be replayed to its end.
    pub error: Option<String>,
    pub differences: Vec<Difference>,
}

/// One exchange whose reply differed, or that got none.
#[derive(Debug, Serialize)]
pub struct Difference {
    pub seq: u64,
    pub command: String,
    pub expected: crate::record::format::ReplyRecord,
    /// The reply received; null when none came.
    pub got: Option<crate::record::format::ReplyRecord>,
    /// What happened instead of a reply.
    pub problem: Option<String>,
    /// The output line.
    pub line: String,
}

/// Runs `smtptap replay`; returns the exit code (0 all matched, 1 some
/// differed, 2 could not run).
pub async fn run(args: ReplayArgs) -> u8 {
    match prepare(&args) {
        Ok(scripts) => {
            let report = replay_all(&args, scripts).await;
            finish(&args, &report)
        }
        Err(message) => {
            eprintln!("smtptap replay: {message}");
            2
        }
    }
}

/// Reads and scripts every recording; the first that cannot be replayed
/// stops the run before anything connects.
fn prepare(args: &ReplayArgs) -> Result<Vec<(PathBuf, Script)>, String> {
    if args.auth_user.is_some() || args.auth_password_env.is_some() {
        return Err("--auth-user / --auth-password-env: credential substitution is not implemented yet".into());
    }
    let plan = match args.tls {
        None => TlsPlan::AsRecorded,
        Some(TlsMode::Off) => TlsPlan::Off,
        Some(mode) => {
            let mode = format!("{mode:?}").to_lowercase();
            return Err(format!("--tls {mode}: TLS replay is not implemented yet; only --tls off (plaintext) is"));
        }
    };
    let files = expand(&args.recordings)?;
    if files.is_empty() {
        return Err("no recordings (*.jsonl) found".into());
    }
    // Every recording is checked, so one run names every problem.
    let mut scripts = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        match Recording::read(&path) {
            // A skipped line may be a command: replaying without it would
            // send something other than what was recorded.
            Ok(recording) if !recording.problems.is_empty() => {
                let lines: Vec<String> = recording.problems.iter().map(ToString::to_string).collect();
                problems.push(format!(
                    "{}: damaged, cannot be replayed as recorded: {}",
                    path.display(),
                    lines.join("; ")
                ));
            }
            Ok(recording) => match script::build(&recording, plan) {
                Ok(script) => scripts.push((path, script)),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            },
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(scripts)
    } else {
        let n = problems.len();
        let which = if n == 1 { "1 recording".to_owned() } else { format!("{n} recordings") };
        Err(format!("{which} cannot be replayed; nothing was sent:\n  {}", problems.join("\n  ")))
    }
}

/// Files as given; directories as their `*.jsonl` files in name order.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(list_recordings(path).map_err(|e| format!("{}: {e}", path.display()))?);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

async fn replay_all(args: &ReplayArgs, scripts: Vec<(PathBuf, Script)>) -> Report {
    let mut report = Report { target: args.target.clone(), match_mode: args.match_mode, ..Report::default() };
    let timeout = Duration::from_secs(args.timeout);
    for (i, (path, script)) in scripts.into_iter().enumerate() {
        let result = replay_session(i + 1, &path, &script, &args.target, args.match_mode, timeout).await;
        report.sessions += 1;
        report.exchanges += result.exchanges;
        report.matched += result.matched;
        report.differed += result.differed;
        report.errors += result.errors;
        report.results.push(result);
    }
    report
}

/// Replays one session. Differences are printed as they are found.
async fn replay_session(
    number: usize,
    path: &Path,
    script: &Script,
    target: &str,
    mode: MatchMode,
    timeout: Duration,
) -> SessionResult {
    let mut s = Session {
        number,
        mode,
        result: SessionResult {
            session: number,
            path: path.to_owned(),
            exchanges: script.expected_count(),
            ..SessionResult::default()
        },
    };
    let mut client = match Client::connect(target, timeout).await {
        Ok(c) => c,
        Err(e) => {
            // Nothing was compared: every expected reply counts as an error.
            out(&format!("session {number} error: {e}"));
            s.result.errors = s.result.exchanges;
            s.result.error = Some(e);
            return s.result;
        }
    };
    if let Some(greeting) = &script.greeting {
        let got = client.read_reply().await;
        if let Err(e) = s.check(greeting, got) {
            s.abort(script.groups.iter().flat_map(|g| &g.expects), &e);
            client.close().await;
            return s.result;
        }
    }
    // The last reply received, to know whether DATA was accepted.
    let mut last_code = 0u16;
    for (i, group) in script.groups.iter().enumerate() {
        let rest = || script.groups[i..].iter().flat_map(|g| &g.expects);
        if group.after_data && last_code != 354 {
            let why = format!("nothing: message not sent, DATA was answered {last_code}");
            s.abort(rest(), &why);
            break;
        }
        if let Err(e) = client.send(&group.bytes).await {
            s.abort(rest(), &e.to_string());
            break;
        }
        let mut failed = None;
        for (j, expected) in group.expects.iter().enumerate() {
            if expected.reply.is_none() {
                continue; // the recording ended before this reply
            }
            let got = client.read_reply().await;
            if let Ok(reply) = &got {
                last_code = reply.code;
            }
            if let Err(e) = s.check(expected, got) {
                failed = Some((j, e));
                break;
            }
        }
        if let Some((j, e)) = failed {
            s.abort(group.expects[j + 1..].iter().chain(script.groups[i + 1..].iter().flat_map(|g| &g.expects)), &e);
            break;
        }
        // DATA accepted although the recording has no content next: the
        // server now reads everything as message data, so stop here.
        let next_is_content = script.groups.get(i + 1).is_some_and(|g| g.after_data);
        if last_code == 354 && !next_is_content && i + 1 < script.groups.len() {
            let why = "nothing: DATA was accepted (354) but the recording sends no message content";
            s.abort(script.groups[i + 1..].iter().flat_map(|g| &g.expects), why);
            break;
        }
    }
    client.close().await;
    s.result
}

struct Session {
    number: usize,
    mode: MatchMode,
    result: SessionResult,
}

impl Session {
    /// Compares one reply; an error (no reply) is returned for the caller to stop.
    fn check(
        &mut self,
        expected: &Expected,
        got: Result<crate::smtp::reply::Reply, ClientError>,
    ) -> Result<(), String> {
        let Some(want) = &expected.reply else { return Ok(()) };
        match got {
            Ok(reply) if compare::matches(self.mode, want, &reply) => {
                self.result.matched += 1;
                Ok(())
            }
            Ok(reply) => {
                let line = compare::diff_line(
                    self.number,
                    expected.seq,
                    &expected.label,
                    &compare::show_expected(self.mode, want, Some(&reply)),
                    &compare::show_got(self.mode, want, &reply),
                );
                self.result.differed += 1;
                self.emit(expected, want, Some((&reply).into()), None, line);
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.no_reply(expected, &why);
                Err(why)
            }
        }
    }

    /// An exchange that got no reply: counted as an error.
    fn no_reply(&mut self, expected: &Expected, why: &str) {
        let Some(want) = &expected.reply else { return };
        let line = compare::diff_line(
            self.number,
            expected.seq,
            &expected.label,
            &compare::show_expected(self.mode, want, None),
            why,
        );
        self.result.errors += 1;
        if self.result.error.is_none() {
            self.result.error = Some(why.to_owned());
        }
        self.emit(expected, want, None, Some(why.to_owned()), line);
    }

    /// The rest of the session cannot be replayed: the first is reported, the
    /// others only counted.
    fn abort<'a>(&mut self, rest: impl Iterator<Item = &'a Expected>, why: &str) {
        let mut rest = rest.filter(|e| e.reply.is_some());
        if let Some(first) = rest.next() {
            self.no_reply(first, why);
        } else if self.result.error.is_none() {
            self.result.error = Some(why.to_owned());
        }
        self.result.errors += rest.count();
    }

    fn emit(
        &mut self,
        expected: &Expected,
        want: &crate::record::format::ReplyRecord,
        got: Option<crate::record::format::ReplyRecord>,
        problem: Option<String>,
        line: String,
    ) {
        out(&line);
        self.result.differences.push(Difference {
            seq: expected.seq,
            command: expected.label.clone(),
            expected: want.clone(),
            got,
            problem,
            line,
        });
    }
}

/// Prints the summary line, writes the report; the exit code.
fn finish(args: &ReplayArgs, report: &Report) -> u8 {
    out(&format!(
        "{} session{}, {} exchanges: {} matched, {} differed, {} errors",
        report.sessions,
        if report.sessions == 1 { "" } else { "s" },
        report.exchanges,
        report.matched,
        report.differed,
        report.errors
    ));
    if let Some(path) = &args.report {
        let written = serde_json::to_vec_pretty(report).map_err(|e| e.to_string()).and_then(|mut json| {
            json.push(b'\n');
            std::fs::write(path, json).map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            eprintln!("smtptap replay: cannot write the report {}: {e}", path.display());
            return 2;
        }
    }
    exit_code(report)
}

/// One line of output. A reader that went away (`| head`) does not stop
/// the replay or change its exit code.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// 2 when some session could not be replayed at all (no connection, no
/// greeting); 1 when some reply differed or never came; else 0.
pub fn exit_code(report: &Report) -> u8 {
    let unreachable = report.results.iter().any(|r| r.error.is_some() && r.matched + r.differed == 0);
    if unreachable {
        2
    } else if report.differed > 0 || report.errors > 0 {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(matched: usize, differed: usize, errors: usize, error: Option<&str>) -> SessionResult {
        SessionResult { matched, differed, errors, error: error.map(str::to_owned), ..SessionResult::default() }
    }

    fn report(results: Vec<SessionResult>) -> Report {
        Report {
            matched: results.iter().map(|r| r.matched).sum(),
            differed: results.iter().map(|r| r.differed).sum(),
            errors: results.iter().map(|r| r.errors).sum(),
            results,
            ..Report::default()
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&report(vec![session(5, 0, 0, None)])), 0);
        assert_eq!(exit_code(&report(vec![session(4, 1, 0, None)])), 1);
        // The server closed in the middle: a difference in behaviour.
        assert_eq!(exit_code(&report(vec![session(3, 0, 2, Some("no reply (connection closed)"))])), 1);
        // A session that could not run at all.
        let refused = session(0, 0, 5, Some("cannot connect"));
        assert_eq!(exit_code(&report(vec![session(5, 0, 0, None), refused])), 2);
    }
}
