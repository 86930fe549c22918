//! Runs the prepared scripts: `--repeat` times each, on `--concurrency`
//! worker tasks that take the next run from a shared counter. Each worker
//! keeps its own results, latencies and receive buffer; they are merged at
//! the end, so a run costs no locking. With one worker and one repeat this
//! is the plain replay, printing differences as they are found.

use super::Prepared;
use super::compare::MatchMode;
use super::report::SessionResult;
use super::session::{self, Run};
use super::stats::Latencies;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What every worker shares.
pub struct Job {
    pub prepared: Vec<Prepared>,
    pub target: String,
    pub mode: MatchMode,
    pub timeout: Duration,
    pub concurrency: usize,
    pub repeat: usize,
}

/// What the runs found, merged.
pub struct Done {
    /// One per recording, in order.
    pub results: Vec<SessionResult>,
    pub latencies: Latencies,
    /// Messages the target accepted.
    pub messages: usize,
    pub elapsed: Duration,
}

impl Job {
    fn runs(&self) -> usize {
        self.prepared.len() * self.repeat
    }

    /// Load mode: more than one run of something, or at once.
    pub fn is_load(&self) -> bool {
        self.concurrency > 1 || self.repeat > 1
    }
}

/// Runs everything; a progress line on stderr in load mode when it is a terminal.
pub async fn run(job: Job) -> Done {
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let progress = (job.is_load() && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(progress(job.runs(), finished.clone(), started)));
    let workers: Vec<_> = (0..job.concurrency.min(job.runs()))
        .map(|_| tokio::spawn(worker(job.clone(), next.clone(), finished.clone())))
        .collect();
    let mut done = Done {
        results: job
            .prepared
            .iter()
            .enumerate()
            .map(|(i, p)| SessionResult {
                session: i + 1,
                path: p.path.clone(),
                notes: p.notes.clone(),
                ..SessionResult::default()
            })
            .collect(),
        latencies: Latencies::default(),
        messages: 0,
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        // A worker only ends by finishing its loop; a panic is a bug to surface.
        let (results, latencies, messages) = worker.await.expect("replay worker panicked");
        for (mine, theirs) in done.results.iter_mut().zip(results) {
            mine.merge(theirs);
        }
        done.latencies.merge(&latencies);
        done.messages += messages;
    }
    done.elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        eprint!("\r\x1b[K");
    }
    done
}

async fn worker(
    job: Arc<Job>,
    next: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
) -> (Vec<SessionResult>, Latencies, usize) {
    let mut results: Vec<SessionResult> = job.prepared.iter().map(|_| SessionResult::default()).collect();
    let mut latencies = Latencies::default();
    let mut messages = 0;
    let mut buffer = Vec::new();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= job.runs() {
            break;
        }
        let i = n % job.prepared.len();
        let prepared = &job.prepared[i];
        let run = Run {
            number: i + 1,
            script: &prepared.script,
            target: &job.target,
            tls: prepared.tls.as_ref(),
            mode: job.mode,
            timeout: job.timeout,
            live: !job.is_load(),
        };
        let outcome = session::replay(&run, &mut latencies, &mut buffer).await;
        messages += outcome.messages;
        results[i].add(outcome.tally);
        finished.fetch_add(1, Ordering::Relaxed);
    }
    (results, latencies, messages)
}

/// `\r1234/5000 sessions, 812/s` every 200 ms until aborted.
async fn progress(total: usize, finished: Arc<AtomicUsize>, started: Instant) {
    let every = Duration::from_millis(200);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let n = finished.load(Ordering::Relaxed);
        let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{n}/{total} sessions, {rate:.0}/s\x1b[K");
        let _ = err.flush();
    }
}
