//! The results of a replay: per recording, totals, the summary line, the
//! JSON report (`--report`) and the exit code.

use super::compare::MatchMode;
use super::stats::Row;
use crate::record::format::ReplyRecord;
use serde::Serialize;
use std::path::PathBuf;

/// The JSON report, and the totals of the summary line.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub target: String,
    #[serde(rename = "match")]
    pub match_mode: MatchMode,
    /// Sessions replayed: recordings × `--repeat`.
    pub sessions: usize,
    pub exchanges: usize,
    pub matched: usize,
    pub differed: usize,
    pub errors: usize,
    /// Throughput and latencies, in load mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    /// One per recording, in replay order.
    pub results: Vec<SessionResult>,
}

/// Load-mode figures (`--concurrency`, `--repeat`).
#[derive(Debug, Default, Serialize)]
pub struct Load {
    pub concurrency: usize,
    pub repeat: usize,
    pub seconds: f64,
    pub sessions_per_second: f64,
    /// Messages the target accepted.
    pub messages: usize,
    pub messages_per_second: f64,
    pub latency: Vec<Row>,
}

/// One recording's results, summed over its runs.
#[derive(Debug, Default, Serialize)]
pub struct SessionResult {
    /// Numbered from 1 in replay order.
    pub session: usize,
    pub path: PathBuf,
    /// Times replayed.
    pub runs: usize,
    /// Runs that compared nothing: no connection, no greeting, no TLS.
    pub failed_runs: usize,
    /// What was replayed other than recorded (placeholder bodies, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(flatten)]
    pub tally: Tally,
}

/// Counts and differences, of one run or summed over several.
#[derive(Debug, Default, Serialize)]
pub struct Tally {
    pub exchanges: usize,
    pub matched: usize,
    pub differed: usize,
    pub errors: usize,
    /// Why the (first) run that did not reach its end stopped.
    pub error: Option<String>,
    /// Time spent replaying.
    pub ms: f64,
    pub differences: Vec<Difference>,
}

/// One exchange whose reply differed, or that got none.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub seq: u64,
    pub command: String,
    pub expected: ReplyRecord,
    /// The reply received; null when none came.
    pub got: Option<ReplyRecord>,
    /// What happened instead of a reply.
    pub problem: Option<String>,
    /// The output line.
    pub line: String,
    /// Runs in which this very line came up.
    pub count: usize,
}

#[cfg(test)]
impl Difference {
    /// A command that got no reply where a `250` was recorded, for tests.
    pub fn unanswered(seq: u64, command: &str, line: &str) -> Difference {
        let expected = ReplyRecord {
            code: 250,
            enhanced: None,
            lines: vec![],
            lines_base64: None,
            omitted_lines: 0,
            truncated: false,
        };
        let (command, line) = (command.into(), line.into());
        Difference { seq, command, expected, got: None, problem: None, line, count: 1 }
    }
}

/// What one run of one recording found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub tally: Tally,
    /// Messages the target accepted.
    pub messages: usize,
}

impl Tally {
    /// Nothing could be compared: the run did not start.
    pub fn failed(&self) -> bool {
        self.error.is_some() && self.matched + self.differed == 0
    }

    fn add(&mut self, other: Tally) {
        self.exchanges += other.exchanges;
        self.matched += other.matched;
        self.differed += other.differed;
        self.errors += other.errors;
        self.ms += other.ms;
        if self.error.is_none() {
            self.error = other.error;
        }
        for d in other.differences {
            match self.differences.iter_mut().find(|known| known.line == d.line) {
                Some(known) => known.count += d.count,
                None => self.differences.push(d),
            }
        }
    }
}

impl SessionResult {
    pub fn add(&mut self, run: Tally) {
        self.runs += 1;
        self.failed_runs += usize::from(run.failed());
        self.tally.add(run);
    }

    /// Adds another worker's runs of the same recording.
    pub fn merge(&mut self, other: SessionResult) {
        self.runs += other.runs;
        self.failed_runs += other.failed_runs;
        self.tally.add(other.tally);
    }
}

impl Report {
    /// Totals from the results.
    pub fn total(&mut self) {
        self.sessions = self.results.iter().map(|r| r.runs).sum();
        self.exchanges = self.results.iter().map(|r| r.tally.exchanges).sum();
        self.matched = self.results.iter().map(|r| r.tally.matched).sum();
        self.differed = self.results.iter().map(|r| r.tally.differed).sum();
        self.errors = self.results.iter().map(|r| r.tally.errors).sum();
    }

    pub fn summary(&self) -> String {
        format!(
            "{} session{}, {} exchanges: {} matched, {} differed, {} errors",
            self.sessions,
            if self.sessions == 1 { "" } else { "s" },
            self.exchanges,
            self.matched,
            self.differed,
            self.errors
        )
    }

    /// 2 when some run could not start at all (no connection, no greeting);
    /// 1 when some reply differed or never came; else 0.
    pub fn exit_code(&self) -> u8 {
        if self.results.iter().any(|r| r.failed_runs > 0) {
            2
        } else if self.differed > 0 || self.errors > 0 {
            1
        } else {
            0
        }
    }
}
