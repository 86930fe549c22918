//! `smtptap replay`: sends the client side of recordings to a target server
//! and compares its replies with the recorded ones (SPEC.md); with
//! `--concurrency`/`--repeat`, a load generator.
//!
//! - [`script`] (sans-IO): a recording as groups of bytes to send and the
//!   replies expected for them, over the TLS the recorded server saw (see
//!   there for the rules); refuses what cannot be replayed faithfully.
//! - [`credentials`] (sans-IO): `--auth-user`/`--auth-password-env` in place
//!   of redacted AUTH data; [`placeholder`]: content for `--no-bodies`.
//! - [`compare`] (sans-IO): `--match code|enhanced|text` and the output line.
//! - [`client`]: the TCP/TLS client; [`session`]: one run of one script.
//! - [`pool`]: the runs on worker tasks; [`stats`]: latency histograms.
//! - [`report`]: totals, summary, JSON and exit code; [`junit`]: JUnit XML.
//!
//! Every recording is read and scripted before anything connects, so a
//! recording that cannot be replayed (a secret redacted and none given, a
//! damaged file) stops the run with exit 2 and no connection made.

pub mod client;
pub mod compare;
pub mod credentials;
pub mod junit;
pub mod placeholder;
pub mod pool;
pub mod report;
pub mod script;
pub mod session;
pub mod stats;

use crate::record::reader::{Recording, list_recordings};
use crate::tls::TlsMode;
use crate::tls::config::{TlsConfigError, UpstreamTls, upstream_roots};
use client::TlsTarget;
use compare::MatchMode;
use credentials::Credentials;
use report::{Load, Report};
use rustls_pki_types::ServerName;
use script::{Plan, Script, TlsPlan};
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
    /// TLS towards the target [default: as the recorded server saw it].
    #[arg(long, value_enum)]
    pub tls: Option<TlsMode>,
    /// Extra trust anchors for the target's certificate (PEM), besides the system's.
    #[arg(long, value_name = "FILE")]
    pub target_ca: Option<PathBuf>,
    /// Do not verify the target's certificate (a test server's).
    #[arg(long)]
    pub insecure: bool,
    /// User to put in place of the recorded one in redacted AUTH data.
    #[arg(long, value_name = "USER")]
    pub auth_user: Option<String>,
    /// Environment variable holding the password (or OAuth token) to put in place of a redacted one.
    #[arg(long, value_name = "VAR")]
    pub auth_password_env: Option<String>,
    /// What must agree: the 3-digit code; code + enhanced status; or the whole text.
    #[arg(long = "match", value_enum, default_value_t = MatchMode::Enhanced)]
    pub match_mode: MatchMode,
    /// Sessions replayed at once (load mode).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Times each recording is replayed (load mode).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the results as JUnit XML to FILE, one test case per recording.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Longest wait for the connection, the TLS handshake and each reply.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

/// A recording ready to replay.
#[derive(Debug)]
pub struct Prepared {
    pub path: PathBuf,
    pub script: Script,
    /// TLS towards the target, when the script uses it.
    pub tls: Option<TlsTarget>,
    /// What is replayed other than recorded.
    pub notes: Vec<String>,
}

/// Runs `smtptap replay`; returns the exit code (0 all matched, 1 some
/// differed, 2 could not run).
pub async fn run(args: ReplayArgs) -> u8 {
    let prepared = match prepare(&args) {
        Ok(prepared) => prepared,
        Err(message) => {
            eprintln!("smtptap replay: {message}");
            return 2;
        }
    };
    let job = pool::Job {
        prepared,
        target: args.target.clone(),
        mode: args.match_mode,
        timeout: Duration::from_secs(args.timeout),
        concurrency: args.concurrency as usize,
        repeat: args.repeat as usize,
    };
    let load = job.is_load();
    let done = pool::run(job).await;
    let mut report = Report { target: args.target.clone(), match_mode: args.match_mode, ..Report::default() };
    report.results = done.results;
    report.total();
    if load {
        let seconds = done.elapsed.as_secs_f64().max(1e-6);
        report.load = Some(Load {
            concurrency: args.concurrency as usize,
            repeat: args.repeat as usize,
            seconds,
            sessions_per_second: report.sessions as f64 / seconds,
            messages: done.messages,
            messages_per_second: done.messages as f64 / seconds,
            latency: done.latencies.rows(),
        });
    }
    finish(&args, &report)
}

/// Reads and scripts every recording and sets up TLS; the first problem
/// stops the run before anything connects.
fn prepare(args: &ReplayArgs) -> Result<Vec<Prepared>, String> {
    let credentials = credentials(args)?;
    let tls = match args.tls {
        None => TlsPlan::AsRecorded,
        Some(TlsMode::Off) => TlsPlan::Off,
        Some(TlsMode::Starttls) => TlsPlan::Starttls,
        Some(TlsMode::Implicit) => TlsPlan::Implicit,
    };
    let plan = Plan { tls, credentials };
    let host = target_host(&args.target)?;
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
            Ok(recording) => match script::build(&recording, &plan) {
                Ok(script) => scripts.push((path, script)),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            },
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        let which = if n == 1 { "1 recording".to_owned() } else { format!("{n} recordings") };
        return Err(format!("{which} cannot be replayed; nothing was sent:\n  {}", problems.join("\n  ")));
    }
    let config = if scripts.iter().any(|(_, s)| s.uses_tls()) { Some(tls_config(args)?) } else { None };
    let mut prepared = Vec::with_capacity(scripts.len());
    for (path, script) in scripts {
        let tls = match &config {
            Some(config) if script.uses_tls() => {
                Some(TlsTarget { config: config.clone(), name: server_name(&host, script.sni.as_deref())? })
            }
            _ => None,
        };
        let notes = notes(&script, args.tls);
        for note in &notes {
            eprintln!("smtptap replay: {}: {note}", path.display());
        }
        prepared.push(Prepared { path, script, tls, notes });
    }
    Ok(prepared)
}

/// `--auth-user` and the value of `--auth-password-env`'s variable.
fn credentials(args: &ReplayArgs) -> Result<Credentials, String> {
    let password = match &args.auth_password_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => {
                return Err(format!("--auth-password-env {var}: the environment variable {var} is not set"));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!("--auth-password-env {var}: the value of {var} is not UTF-8"));
            }
        },
    };
    Ok(Credentials { user: args.auth_user.clone(), password })
}

/// The host part of `HOST:PORT` (brackets of an IPv6 address removed).
fn target_host(target: &str) -> Result<String, String> {
    crate::relay::host_of(target)
        .map(str::to_owned)
        .ok_or_else(|| format!("--target {target}: expected HOST:PORT, e.g. mail.example.com:587"))
}

/// The name sent as SNI and verified: the target's host name; for a target
/// given as an address, the name the recording used for TLS, if any.
fn server_name(host: &str, recorded: Option<&str>) -> Result<ServerName<'static>, String> {
    let name = match (host.parse::<std::net::IpAddr>(), recorded) {
        (Ok(_), Some(recorded)) => recorded,
        _ => host,
    };
    ServerName::try_from(name.to_owned()).map_err(|e| format!("{name} cannot be used as a TLS server name: {e}"))
}

/// The client TLS configuration: system roots plus `--target-ca`, or none
/// checked with `--insecure`.
fn tls_config(args: &ReplayArgs) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let trust = upstream_roots(args.target_ca.as_deref()).map_err(|e| match e {
        TlsConfigError::NoRoots => {
            "no trust anchors for the target: the system has no CA certificates; pass --target-ca FILE".to_owned()
        }
        e => format!("--target-ca: {e}"),
    })?;
    if args.insecure {
        eprintln!(
            "smtptap replay: warning: --insecure: the target's certificate is not verified; anyone on the path can read and change the sessions, credentials included"
        );
    }
    UpstreamTls::new(trust, args.insecure).map(|t| t.config).map_err(|e| e.to_string())
}

/// What a script sends other than recorded, said once before the run.
fn notes(script: &Script, tls: Option<TlsMode>) -> Vec<String> {
    let mut notes: Vec<String> = script
        .placeholders
        .iter()
        .map(|seq| {
            format!(
                "exchange #{seq}: the body was not recorded (--no-bodies); sending a placeholder of the recorded size with the recorded headers"
            )
        })
        .collect();
    if script.skipped_starttls > 0 {
        let mode = if tls == Some(TlsMode::Implicit) { "implicit" } else { "off" };
        notes.push(format!("STARTTLS left out (--tls {mode})"));
    }
    if script.own_starttls.is_some() {
        notes
            .push("the recording never upgraded: sending EHLO and STARTTLS after the greeting (--tls starttls)".into());
    }
    notes
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

/// Prints the differences (load mode: each distinct line once, at the
/// end), the summary and load figures; writes the reports; the exit code.
fn finish(args: &ReplayArgs, report: &Report) -> u8 {
    match &report.load {
        Some(load) => load_output(report, load).iter().for_each(|line| out(line)),
        None => out(&report.summary()),
    }
    let mut code = report.exit_code();
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(report).map(|mut json| {
            json.push(b'\n');
            json
        });
        if let Err(e) = json.map_err(|e| e.to_string()).and_then(|j| write_file(path, &j)) {
            eprintln!("smtptap replay: cannot write the report {}: {e}", path.display());
            code = 2;
        }
    }
    if let Some(path) = &args.junit
        && let Err(e) = write_file(path, junit::junit(report).as_bytes())
    {
        eprintln!("smtptap replay: cannot write the JUnit report {}: {e}", path.display());
        code = 2;
    }
    code
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| e.to_string())
}

/// Load mode's output: runs that could not start and distinct differences,
/// each once with how often; the summary; throughput and latencies.
fn load_output(report: &Report, load: &Load) -> Vec<String> {
    let mut lines = Vec::new();
    for r in &report.results {
        if let (n @ 1.., Some(error)) = (r.failed_runs, &r.tally.error) {
            lines.push(format!("session {} error: {error}  ({n} of {} runs)", r.session, r.runs));
        }
        for d in &r.tally.differences {
            lines.push(match d.count {
                1 => d.line.clone(),
                n => format!("{}  ({n} times)", d.line),
            });
        }
    }
    lines.push(report.summary());
    lines.push(format!(
        "load: {:.2} s at concurrency {}: {:.1} sessions/s, {:.1} messages/s ({} messages)",
        load.seconds, load.concurrency, load.sessions_per_second, load.messages_per_second, load.messages
    ));
    lines.push(format!("{:<12} {:>8} {:>9} {:>9} {:>9} {:>9}", "latency ms", "count", "p50", "p90", "p99", "max"));
    for row in &load.latency {
        lines.push(format!(
            "{:<12} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            row.verb, row.count, row.p50_ms, row.p90_ms, row.p99_ms, row.max_ms
        ));
    }
    lines
}

/// One line of output. A reader that went away (`| head`) does not stop
/// the replay or change its exit code.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::{SessionResult, Tally};

    fn session(matched: usize, differed: usize, errors: usize, error: Option<&str>) -> SessionResult {
        let mut result = SessionResult::default();
        result.add(Tally { matched, differed, errors, error: error.map(str::to_owned), ..Tally::default() });
        result
    }

    fn report(results: Vec<SessionResult>) -> Report {
        let mut report = Report { results, ..Report::default() };
        report.total();
        report
    }

    #[test]
    fn exit_codes() {
        assert_eq!(report(vec![session(5, 0, 0, None)]).exit_code(), 0);
        assert_eq!(report(vec![session(4, 1, 0, None)]).exit_code(), 1);
        // The server closed in the middle: a difference in behaviour.
        assert_eq!(report(vec![session(3, 0, 2, Some("no reply (connection closed)"))]).exit_code(), 1);
        // A session that could not run at all.
        let refused = session(0, 0, 5, Some("cannot connect"));
        assert_eq!(report(vec![session(5, 0, 0, None), refused]).exit_code(), 2);
    }

    #[test]
    fn load_output_names_each_difference_once() {
        let difference = |line: &str| report::Difference::unanswered(4, "RCPT TO:<b@y>", line);
        let mut denied = SessionResult { session: 1, ..SessionResult::default() };
        for _ in 0..3 {
            let tally = Tally { exchanges: 2, matched: 1, differed: 1, ..Tally::default() };
            denied.add(Tally { differences: vec![difference("session 1 #4 RCPT  expected 250  got 550")], ..tally });
        }
        let mut refused = SessionResult { session: 2, ..SessionResult::default() };
        refused.add(Tally { exchanges: 2, errors: 2, error: Some("cannot connect".into()), ..Tally::default() });
        refused.add(Tally { exchanges: 2, matched: 2, ..Tally::default() });
        let load = Load { concurrency: 2, repeat: 3, seconds: 0.5, sessions_per_second: 10.0, ..Load::default() };
        let lines = load_output(&report(vec![denied, refused]), &load);
        assert_eq!(
            lines,
            [
                "session 1 #4 RCPT  expected 250  got 550  (3 times)",
                "session 2 error: cannot connect  (1 of 2 runs)",
                "5 sessions, 10 exchanges: 5 matched, 3 differed, 2 errors",
                "load: 0.50 s at concurrency 2: 10.0 sessions/s, 0.0 messages/s (0 messages)",
                "latency ms      count       p50       p90       p99       max",
            ]
        );
    }

    #[test]
    fn target_names() {
        assert_eq!(target_host("mx.test:25").unwrap(), "mx.test");
        assert_eq!(target_host("[::1]:2525").unwrap(), "::1");
        assert!(target_host("mx.test").unwrap_err().contains("expected HOST:PORT"));
        let name = |host, recorded| format!("{:?}", server_name(host, recorded).unwrap());
        assert_eq!(
            name("mx.test", Some("mail.example.com")),
            format!("{:?}", ServerName::try_from("mx.test").unwrap())
        );
        assert_eq!(
            name("127.0.0.1", Some("mail.example.com")),
            format!("{:?}", ServerName::try_from("mail.example.com").unwrap())
        );
        assert_eq!(name("127.0.0.1", None), format!("{:?}", ServerName::try_from("127.0.0.1").unwrap()));
    }
}
