//! One client connection: connect upstream, relay bytes both ways unchanged,
//! hand a copy of each read to the session observer, record, and end cleanly.
//!
//! The loop `select!`s only on the two reads (cancel-safe), a timer and the
//! shutdown signal; writes happen outside the `select!`.

use super::Shared;
use crate::record::format::{EndReason, SessionEnd, SessionInfo};
use crate::record::writer::SessionRecorder;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Clock, Observer, StartTlsPolicy, format_time};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Read buffer per direction.
const BUFFER: usize = 16 * 1024;

/// How a session ended, for its `end` record.
struct Ending {
    reason: EndReason,
    error: Option<String>,
}

impl Ending {
    fn new(reason: EndReason) -> Ending {
        Ending { reason, error: None }
    }
    fn with_error(reason: EndReason, error: impl std::fmt::Display) -> Ending {
        Ending { reason, error: Some(error.to_string()) }
    }
}

/// Per-session state shared by the relay loop's steps.
struct Session {
    id: String,
    peer: SocketAddr,
    started: Instant,
    observer: Observer,
    recorder: Option<SessionRecorder>,
    /// smtptap's own last reply to the client (`421`), recorded last.
    farewell: Option<Reply>,
    from_client: u64,
    from_upstream: u64,
}

pub(super) async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
    shared: &Shared,
    stop: watch::Receiver<bool>,
) {
    let clock = Clock::now();
    let id = session_id();
    let info = SessionInfo {
        format: crate::record::format::FORMAT,
        id: id.clone(),
        started: format_time(clock.started_wall),
        listen: listen.to_string(),
        client: peer.to_string(),
        upstream: shared.upstream_label.clone(),
        tool: concat!("smtptap ", env!("CARGO_PKG_VERSION")).into(),
    };
    let recorder = match SessionRecorder::create(&shared.config.record_dir, &info, shared.config.keep_bodies) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(session = %id, error = %e, dir = %shared.config.record_dir.display(),
                "cannot create the recording; relaying this session unrecorded");
            None
        }
    };
    let mut session = Session {
        id,
        peer,
        started: clock.started,
        // Plaintext towards the client: STARTTLS is withdrawn and refused (SPEC: client `off`).
        observer: Observer::new(clock, StartTlsPolicy::Refused),
        recorder,
        farewell: None,
        from_client: 0,
        from_upstream: 0,
    };
    let _ = client.set_nodelay(true);
    let connect = tokio::time::timeout(shared.config.connect_timeout, TcpStream::connect(&shared.upstream_addr));
    let ending = match connect.await {
        Ok(Ok(upstream)) => {
            let _ = upstream.set_nodelay(true);
            session.relay(&mut client, upstream, shared.config.idle_timeout, stop).await
        }
        Ok(Err(e)) => session.unreachable(&mut client, &shared.upstream_addr, &e.to_string()).await,
        Err(_) => session.unreachable(&mut client, &shared.upstream_addr, "connection timed out").await,
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
    session.finish(ending, &shared.upstream_label);
}

impl Session {
    async fn unreachable(&mut self, client: &mut TcpStream, addr: &str, error: &str) -> Ending {
        let text = format!("4.4.0 smtptap: cannot connect to upstream {addr} ({error}); try again later");
        self.say_to_client(client, 421, &text).await;
        Ending::with_error(EndReason::UpstreamUnreachable, format!("connecting to {addr}: {error}"))
    }

    /// Relays until either side is done, the session idles out, or shutdown.
    async fn relay<C, U>(
        &mut self,
        client: &mut C,
        mut upstream: U,
        idle: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> Ending
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let mut from_client = vec![0u8; BUFFER];
        let mut from_upstream = vec![0u8; BUFFER];
        // The client still sends; after its half-close it may still read.
        let mut client_open = true;
        let mut client_reads = true;
        let mut deadline = tokio::time::Instant::now() + idle;
        loop {
            enum Event {
                Client(io::Result<usize>),
                Upstream(io::Result<usize>),
                Idle,
                Stop,
            }
            let event = tokio::select! {
                r = client.read(&mut from_client), if client_open => Event::Client(r),
                r = upstream.read(&mut from_upstream) => Event::Upstream(r),
                () = tokio::time::sleep_until(deadline) => Event::Idle,
                _ = stop.changed() => Event::Stop,
            };
            deadline = tokio::time::Instant::now() + idle;
            let now = Instant::now();
            match event {
                Event::Client(Ok(0)) => {
                    // Pass the half-close on and let the server have its last word.
                    client_open = false;
                    let (to_upstream, _) = self.observer.take_withheld();
                    let _ = write_within(&mut upstream, &to_upstream, idle).await;
                    let _ = upstream.shutdown().await;
                }
                Event::Client(Ok(n)) => {
                    self.from_client += n as u64;
                    let actions = self.observer.client_bytes(now, &from_client[..n], &mut self.recorder);
                    if let Err(e) = write_within(&mut upstream, &actions.to_upstream, idle).await {
                        return self.closed_by(EndReason::UpstreamClosed, Some(e));
                    }
                    if let Err(e) = write_within(client, &actions.to_client, idle).await {
                        return self.closed_by(EndReason::ClientClosed, Some(e));
                    }
                }
                Event::Client(Err(e)) => return self.closed_by(EndReason::ClientClosed, Some(e)),
                Event::Upstream(Ok(0)) => {
                    let (_, to_client) = self.observer.take_withheld();
                    if client_reads {
                        let _ = write_within(client, &to_client, idle).await;
                    }
                    let first = if client_open { EndReason::UpstreamClosed } else { EndReason::ClientClosed };
                    return self.closed_by(first, None);
                }
                Event::Upstream(Ok(n)) => {
                    self.from_upstream += n as u64;
                    let actions = self.observer.server_bytes(now, &from_upstream[..n], &mut self.recorder);
                    if client_reads && let Err(e) = write_within(client, &actions.to_client, idle).await {
                        if client_open {
                            return self.closed_by(EndReason::ClientClosed, Some(e));
                        }
                        // Gone after its half-close: still record the server's last word.
                        client_reads = false;
                    }
                    if let Err(e) = write_within(&mut upstream, &actions.to_upstream, idle).await {
                        return self.closed_by(EndReason::UpstreamClosed, Some(e));
                    }
                }
                Event::Upstream(Err(e)) => return self.closed_by(EndReason::UpstreamClosed, Some(e)),
                Event::Idle => {
                    let text = format!("4.4.2 smtptap: no data for {} s, closing connection", idle.as_secs());
                    if client_reads && self.observer.between_replies() {
                        self.say_to_client(client, 421, &text).await;
                    }
                    return Ending::with_error(EndReason::Timeout, format!("idle for {} s", idle.as_secs()));
                }
                Event::Stop => {
                    if client_reads && self.observer.between_replies() {
                        self.say_to_client(client, 421, "4.3.2 smtptap: shutting down, try again later").await;
                    }
                    return Ending::new(EndReason::Shutdown);
                }
            }
        }
    }

    /// The end of a session where a side closed or failed. A QUIT the server
    /// accepted makes any close that follows a normal `quit`.
    fn closed_by(&self, reason: EndReason, error: Option<io::Error>) -> Ending {
        if self.observer.quit_accepted() {
            return Ending::new(EndReason::Quit);
        }
        match error {
            Some(e) => Ending::with_error(reason, e),
            None => Ending::new(reason),
        }
    }

    /// Sends smtptap's own last reply to the client; it is recorded at the end.
    async fn say_to_client<C: AsyncWrite + Unpin>(&mut self, client: &mut C, code: u16, text: &str) {
        let wire = format!("{code} {text}\r\n");
        let _ = write_within(client, wire.as_bytes(), Duration::from_secs(5)).await;
        self.farewell = Some(Reply { code, lines: vec![text.as_bytes().to_vec()], ..Reply::default() });
    }

    /// Writes what is left of the record and the `end` line, and logs the summary.
    fn finish(mut self, ending: Ending, upstream: &str) {
        let now = Instant::now();
        // Without an upstream there was no conversation: no greeting was ever
        // due, and the proxy's own 421 is the whole record.
        if ending.reason != EndReason::UpstreamUnreachable {
            self.observer.finish(now, &mut self.recorder);
        }
        if let Some(reply) = self.farewell.take() {
            self.observer.proxy_reply(now, &reply, &mut self.recorder);
        }
        let counts = self.observer.counts();
        let end = SessionEnd {
            reason: ending.reason,
            error: ending.error.clone(),
            duration_ms: u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX),
            exchanges: counts.exchanges,
            messages: counts.messages,
            bytes_from_client: self.from_client,
            bytes_from_upstream: self.from_upstream,
        };
        let file = match &mut self.recorder {
            Some(recorder) => {
                recorder.end(end);
                if let Some(e) = recorder.error() {
                    tracing::error!(session = %self.id, file = %recorder.path().display(), error = %e,
                        "recording failed; the session was relayed but its recording is incomplete");
                }
                recorder.path().display().to_string()
            }
            None => "(not recorded)".into(),
        };
        tracing::info!(
            session = %self.id, client = %self.peer, upstream, reason = %ending.reason,
            error = ending.error.as_deref().unwrap_or(""), exchanges = counts.exchanges, messages = counts.messages,
            bytes_from_client = self.from_client, bytes_from_upstream = self.from_upstream, file,
            "session ended"
        );
    }
}

async fn write_within<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], limit: Duration) -> io::Result<()> {
    match tokio::time::timeout(limit, w.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "peer did not accept data in time")),
    }
}

/// A short random id, unique enough to tell sessions apart within a second.
fn session_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes = (nanos as u64).to_le_bytes();
    }
    bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}
