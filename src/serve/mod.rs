//! `smtptap serve`: plays the server side of a recording to any client that
//! connects, and reports where the client's commands diverge (SPEC.md).
//!
//! - [`script`] (sans-IO): the recording as the steps a client is expected
//!   to take and the recorded reply to each.
//! - [`session`] (sans-IO): one connection played from the script; the
//!   divergence policy is documented there.
//! - [`connection`]: the socket loop, STARTTLS and implicit TLS.
//!
//! Every connection replays the recording from its start; connections are
//! served concurrently. Output: one line per divergence,
//! `connection N #SEQ expected <recorded>  got <client>`, and one summary
//! line per connection, `connection N: M commands, K diverged`.

mod connection;
pub mod script;
pub mod session;

use crate::record::reader::Recording;
use crate::tls::TlsMode;
use crate::tls::config::ServerCertificates;
use script::Script;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const POLICY: &str = "\
Each client command is compared with the recorded one. Same verb, other arguments: answered as recorded, \
the difference reported. Another verb: reported and answered 503 5.5.1 (500 5.5.2 for an unknown verb); the \
recording does not advance, so a client that then sends the expected command is back on track. QUIT is always \
answered 221. Past the end of the recording: 421 4.3.0 and the connection closes. Message content and AUTH \
responses are read and answered as recorded, not compared (AUTH is matched by mechanism, never by secret).

Output: `connection N #SEQ expected <recorded>  got <client>` per divergence, and \
`connection N: M commands, K diverged` when a connection ends. Exit code: 0 after SIGINT/SIGTERM; with --once, \
0 if the client followed the recording, 1 if it diverged; 2 when serve cannot run.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = POLICY)]
pub struct ServeArgs {
    /// The recording whose server side is played.
    #[arg(value_name = "RECORDING")]
    pub recording: PathBuf,
    /// Address to accept clients on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2525")]
    pub listen: String,
    /// TLS towards clients [default: as recorded: implicit if the recorded client used implicit TLS, starttls if it
    /// sent STARTTLS, else off].
    #[arg(long, value_enum)]
    pub tls: Option<TlsMode>,
    #[command(flatten)]
    pub certs: crate::cli::CertArgs,
    /// Serve one connection, then exit: 0 if the client followed the recording, 1 if it diverged.
    #[arg(long)]
    pub once: bool,
    /// Close a connection (421) when the client sends nothing for this long.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

/// What every connection shares.
pub(crate) struct Shared {
    script: Arc<Script>,
    tls_mode: TlsMode,
    /// Present unless `tls_mode` is off.
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    idle_timeout: Duration,
}

/// How one connection went.
pub(crate) struct Served {
    diverged: bool,
}

/// Runs `smtptap serve` until `shutdown` completes (exit 0) or, with
/// `--once`, until the first connection ends (0 followed, 1 diverged).
/// Exit 2 when it cannot run.
pub async fn run(args: ServeArgs, shutdown: impl Future<Output = ()>) -> u8 {
    let (shared, listener) = match prepare(&args).await {
        Ok(ready) => ready,
        Err(message) => {
            eprintln!("smtptap serve: {message}");
            return 2;
        }
    };
    let addr = listener.local_addr().map_or_else(|_| args.listen.clone(), |a| a.to_string());
    out(&format!("listening on {addr}"));
    tracing::info!(%addr, recording = %args.recording.display(), tls = ?shared.tls_mode, "serving the recording");
    let shared = Arc::new(shared);
    tokio::pin!(shutdown);
    let mut number = 0;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => {
                if args.once {
                    eprintln!("smtptap serve: interrupted before a client was served");
                    return 2;
                }
                return 0;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        number += 1;
        tracing::debug!(connection = number, %peer, "accepted");
        if args.once {
            return tokio::select! {
                () = &mut shutdown => {
                    eprintln!("smtptap serve: interrupted before the connection ended");
                    2
                }
                served = connection::serve(stream, number, &shared) => u8::from(served.diverged),
            };
        }
        let shared = shared.clone();
        tokio::spawn(async move { connection::serve(stream, number, &shared).await });
    }
}

/// Reads and scripts the recording, sets up TLS, binds the listener.
async fn prepare(args: &ServeArgs) -> Result<(Shared, TcpListener), String> {
    let recording = Recording::read(&args.recording).map_err(|e| e.to_string())?;
    if !recording.problems.is_empty() {
        let lines: Vec<String> = recording.problems.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{}: damaged, cannot be served as recorded: {}",
            args.recording.display(),
            lines.join("; ")
        ));
    }
    let tls_mode = args.tls.unwrap_or_else(|| script::recorded_tls(&recording));
    let script = script::build(&recording, tls_mode == TlsMode::Starttls)
        .map_err(|e| format!("{}: {e}", args.recording.display()))?;
    if script.skipped_starttls > 0 {
        tracing::info!(
            skipped = script.skipped_starttls,
            "the recorded STARTTLS is left out: TLS is not served by STARTTLS"
        );
    }
    let listener = TcpListener::bind(&args.listen).await.map_err(|e| {
        format!(
            "cannot listen on {}: {e} (is another process using the port? choose another with --listen)",
            args.listen
        )
    })?;
    let acceptor = match tls_mode {
        TlsMode::Off => None,
        _ => Some(tokio_rustls::TlsAcceptor::from(tls_config(args, &listener)?)),
    };
    let shared =
        Shared { script: Arc::new(script), tls_mode, acceptor, idle_timeout: Duration::from_secs(args.timeout) };
    Ok((shared, listener))
}

/// `--cert/--key`, or leaves from the local CA for the name the client asks
/// for (SNI), else for the listening address (`localhost` when it is a wildcard).
fn tls_config(args: &ServeArgs, listener: &TcpListener) -> Result<Arc<rustls::ServerConfig>, String> {
    let certificates = ServerCertificates::load(&args.certs.ca_dir, args.certs.fixed()).map_err(|e| e.to_string())?;
    let local = listener.local_addr().map_err(|e| format!("cannot read the listening address: {e}"))?;
    certificates.for_listener(local, "localhost").map_err(|e| e.to_string())
}

/// One line of output. A reader that went away does not stop serving.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}
