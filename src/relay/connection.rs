//! One client connection: TLS as configured on each side, connect upstream,
//! relay bytes both ways (unchanged but where the observer says the proxy
//! intervenes), hand a copy of each read to the session observer, record,
//! and end cleanly.
//!
//! The loop `select!`s only on the two reads (cancel-safe), a timer and the
//! shutdown signal; writes and handshakes happen outside the `select!`.

use super::stream::Stream;
use super::{Shared, handshake};
use crate::record::format::{EndReason, Record, SessionEnd, SessionInfo, TlsInfo};
use crate::record::writer::SessionRecorder;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Actions, Clock, Observer, ObserverConfig, TimedOut, Upgrade, format_time};
use crate::tls::TlsMode;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Read buffer per direction.
const BUFFER: usize = 16 * 1024;

/// What the client side of a session can still do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientSide {
    /// Sends and reads.
    Open,
    /// Has half-closed: sends no more, may still read the server's last word.
    HalfClosed,
    /// Has gone entirely: the server's last word is only recorded.
    Gone,
}

impl ClientSide {
    fn reads(self) -> bool {
        self != ClientSide::Gone
    }
}

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
    recorder: SessionRecorder,
    /// smtptap's own last reply to the client (`421`), recorded last.
    farewell: Option<Reply>,
    /// The upstream is connected (and in TLS, where it must be from the start).
    conversing: bool,
    from_client: u64,
    from_upstream: u64,
}

pub(super) async fn handle(
    client: TcpStream,
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
        client_tls: Some(shared.tls.settings.client),
        upstream_tls: Some(shared.tls.settings.upstream),
        insecure_upstream: shared.tls.settings.insecure_upstream && shared.tls.settings.upstream != TlsMode::Off,
        redact: Some(shared.config.redaction),
    };
    let recorder =
        SessionRecorder::create(&shared.recorder, &shared.config.record_dir, info, shared.config.keep_bodies);
    let mut session = Session {
        id,
        peer,
        started: clock.started,
        observer: Observer::new(
            clock,
            ObserverConfig {
                policy: shared.tls.settings.policy(),
                redaction: shared.config.redaction,
                key: shared.fingerprint_key.clone(),
            },
        ),
        recorder,
        farewell: None,
        conversing: false,
        from_client: 0,
        from_upstream: 0,
    };
    let _ = client.set_nodelay(true);
    let mut client = Stream::Plain(client);
    let ending = session.run(&mut client, shared, stop).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
    session.finish(ending, &shared.upstream_label);
}

impl Session {
    /// TLS set-up on each side as configured, then the relay loop.
    async fn run(&mut self, client: &mut Stream, shared: &Shared, stop: watch::Receiver<bool>) -> Ending {
        let tls = &shared.tls;
        if tls.settings.client == TlsMode::Implicit
            && let Err(ending) = self.client_handshake(client, shared).await
        {
            return ending;
        }
        let connect = tokio::time::timeout(shared.config.connect_timeout, TcpStream::connect(&shared.upstream_addr));
        let mut upstream = match connect.await {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                Stream::Plain(upstream)
            }
            // It accepted, then reset before saying a word: closed, not unreachable.
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                return self.upstream_gone_silent(client, Some(e)).await;
            }
            Ok(Err(e)) => return self.unreachable(client, &shared.upstream_addr, &e.to_string()).await,
            Err(_) => return self.unreachable(client, &shared.upstream_addr, "connection timed out").await,
        };
        if tls.settings.upstream == TlsMode::Implicit {
            if let Err(ending) = self.upstream_handshake(client, &mut upstream, shared).await {
                return ending;
            }
            self.observer.upstream_is_tls();
        }
        self.conversing = true;
        if tls.settings.upstream == TlsMode::Starttls
            && tls.settings.client != TlsMode::Starttls
            && let Err(ending) = self.upgrade_upstream_first(client, &mut upstream, shared).await
        {
            return ending;
        }
        self.relay(client, &mut upstream, shared, stop).await
    }

    /// An upstream that closed or reset before sending a byte: the client
    /// hears why, instead of a bare close.
    async fn upstream_gone_silent(&mut self, client: &mut Stream, error: Option<io::Error>) -> Ending {
        let how = if error.is_some() { "reset" } else { "closed" };
        let text = format!("4.4.0 smtptap: the upstream {how} the connection before its greeting; try again later");
        self.say_to_client(client, 421, &text).await;
        self.closed_by(EndReason::UpstreamClosed, error)
    }

    async fn unreachable(&mut self, client: &mut Stream, addr: &str, error: &str) -> Ending {
        let text = format!("4.4.0 smtptap: cannot connect to upstream {addr} ({error}); try again later");
        self.say_to_client(client, 421, &text).await;
        Ending::with_error(EndReason::UpstreamUnreachable, format!("connecting to {addr}: {error}"))
    }

    /// The TLS handshake with the client; a failure ends the session (the
    /// client is mid-handshake and cannot be told anything in plaintext).
    async fn client_handshake(&mut self, client: &mut Stream, shared: &Shared) -> Result<(), Ending> {
        let Some(config) = shared.tls.client.clone() else {
            return Err(Ending::with_error(EndReason::Error, "no TLS configuration for the client side"));
        };
        let t = format_time(chrono::Utc::now());
        let limit = shared.tls.settings.handshake_timeout;
        let result = handshake::with_client(client, config, limit, t).await;
        self.tls_record(result).map_err(|e| Ending::with_error(EndReason::TlsFailed, e))
    }

    /// The TLS handshake with the upstream. On failure the client is told
    /// `421` (the upstream connection is unusable): never a plaintext fallback.
    async fn upstream_handshake(
        &mut self,
        client: &mut Stream,
        upstream: &mut Stream,
        shared: &Shared,
    ) -> Result<(), Ending> {
        let Some(tls) = &shared.tls.upstream else {
            return Err(Ending::with_error(EndReason::Error, "no TLS configuration for the upstream side"));
        };
        let t = format_time(chrono::Utc::now());
        let limit = shared.tls.settings.handshake_timeout;
        let result = handshake::with_upstream(upstream, tls, shared.tls.upstream_name.clone(), limit, t).await;
        match self.tls_record(result) {
            Ok(()) => Ok(()),
            Err(e) => {
                let text = format!("4.7.0 smtptap: TLS with the upstream failed ({e}); not relaying in plaintext");
                self.say_to_client(client, 421, &text).await;
                Err(Ending::with_error(EndReason::TlsFailed, e))
            }
        }
    }

    /// Records a handshake's outcome; the error text on failure.
    fn tls_record(&mut self, result: Result<TlsInfo, TlsInfo>) -> Result<(), String> {
        let (record, ok) = match result {
            Ok(r) => (r, true),
            Err(r) => (r, false),
        };
        let error = record.error.clone();
        self.recorder.record(&Record::Tls(record));
        if ok { Ok(()) } else { Err(error.unwrap_or_else(|| "TLS handshake failed".into())) }
    }

    /// Client side plaintext or implicit TLS, upstream STARTTLS: smtptap
    /// upgrades the upstream itself (EHLO, STARTTLS) before it relays the
    /// greeting, so the client only ever talks to the server inside TLS.
    async fn upgrade_upstream_first(
        &mut self,
        client: &mut Stream,
        upstream: &mut Stream,
        shared: &Shared,
    ) -> Result<(), Ending> {
        let limit = shared.config.idle_timeout;
        let mut buf = vec![0u8; BUFFER];
        let mut greeting = Vec::new();
        self.read_replies(upstream, &mut buf, limit, |actions| greeting.extend_from_slice(&actions.to_client)).await?;
        if !self.observer.greeted() {
            // The server turned us away; the client hears it as it is.
            let _ = write_within(client, &greeting, limit).await;
            return Ok(());
        }
        for command in ["EHLO smtptap", "STARTTLS"] {
            let wire = self.observer.proxy_command(Instant::now(), command);
            write_within(upstream, &wire, limit)
                .await
                .map_err(|e| self.closed_by(EndReason::UpstreamClosed, Some(e)))?;
            let mut outcome = None;
            self.read_replies(upstream, &mut buf, limit, |actions| {
                if let Some(r) = &actions.refused {
                    outcome = Some(Err(r.clone()));
                } else if actions.upgrade == Some(Upgrade::Upstream) {
                    outcome = Some(Ok(()));
                }
            })
            .await?;
            if let Some(Err(refusal)) = outcome {
                let said = refusal.lines.first().map(|l| String::from_utf8_lossy(l).into_owned()).unwrap_or_default();
                let why = format!("the upstream refused STARTTLS: {} {said}", refusal.code);
                let text = format!("4.7.0 smtptap: {why}; not relaying in plaintext");
                self.say_to_client(client, 421, &text).await;
                return Err(Ending::with_error(EndReason::TlsFailed, why));
            }
        }
        self.upstream_handshake(client, upstream, shared).await?;
        self.observer.tls_started(Upgrade::Upstream);
        write_within(client, &greeting, limit).await.map_err(|e| self.closed_by(EndReason::ClientClosed, Some(e)))
    }

    /// Reads the upstream until every outstanding reply is in, passing each
    /// read's actions to `each`.
    async fn read_replies(
        &mut self,
        upstream: &mut Stream,
        buf: &mut [u8],
        limit: Duration,
        mut each: impl FnMut(&Actions<'_>),
    ) -> Result<(), Ending> {
        while self.observer.awaiting_replies() {
            let n = match tokio::time::timeout(limit, upstream.read(buf)).await {
                Ok(Ok(0)) => return Err(self.closed_by(EndReason::UpstreamClosed, None)),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(self.closed_by(EndReason::UpstreamClosed, Some(e))),
                Err(_) => {
                    let why = format!("the upstream did not answer within {} s", limit.as_secs());
                    return Err(Ending::with_error(EndReason::Timeout, why));
                }
            };
            self.from_upstream += n as u64;
            let actions = self.observer.server_bytes(Instant::now(), &buf[..n], &mut self.recorder);
            each(&actions);
        }
        Ok(())
    }

    /// Relays until either side is done, the session idles out, or shutdown.
    async fn relay(
        &mut self,
        client: &mut Stream,
        upstream: &mut Stream,
        shared: &Shared,
        mut stop: watch::Receiver<bool>,
    ) -> Ending {
        let idle = shared.config.idle_timeout;
        // Read into spare capacity (`read_buf`): nothing is zeroed, and an idle
        // session's buffers stay untouched, so they cost no resident memory.
        let mut from_client = Vec::with_capacity(BUFFER);
        let mut from_upstream = Vec::with_capacity(BUFFER);
        let mut client_side = ClientSide::Open;
        let mut deadline = tokio::time::Instant::now() + idle;
        // One timer for the whole session, moved on each turn: pushing a
        // deadline later is an atomic store, not a trip through the timer wheel.
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            enum Event {
                Client(io::Result<usize>),
                Upstream(io::Result<usize>),
                Idle,
                Stop,
            }
            // Each read is fully handled before the next select.
            self.recorder.flush_and_wait_for_room().await;
            from_client.clear();
            from_upstream.clear();
            timer.as_mut().reset(self.deadline(deadline, idle));
            let event = tokio::select! {
                r = client.read_buf(&mut from_client), if client_side == ClientSide::Open => Event::Client(r),
                r = upstream.read_buf(&mut from_upstream) => Event::Upstream(r),
                () = &mut timer => Event::Idle,
                _ = stop.changed() => Event::Stop,
            };
            deadline = tokio::time::Instant::now() + idle;
            let now = Instant::now();
            match event {
                Event::Client(Ok(0)) => {
                    // Pass the half-close on and let the server have its last word.
                    client_side = ClientSide::HalfClosed;
                    let (to_upstream, _) = self.observer.take_withheld();
                    let _ = write_within(upstream, &to_upstream, idle).await;
                    let _ = upstream.shutdown().await;
                }
                Event::Client(Ok(n)) => {
                    self.from_client += n as u64;
                    let actions = self.observer.client_bytes(now, &from_client[..n], &mut self.recorder);
                    if let Err(e) = write_within(upstream, &actions.to_upstream, idle).await {
                        return self.closed_by(EndReason::UpstreamClosed, Some(e));
                    }
                    if let Err(e) = write_within(client, &actions.to_client, idle).await {
                        return self.closed_by(EndReason::ClientClosed, Some(e));
                    }
                    if actions.upgrade == Some(Upgrade::Client) {
                        drop(actions);
                        if let Err(ending) = self.client_handshake(client, shared).await {
                            return ending;
                        }
                        self.observer.tls_started(Upgrade::Client);
                    }
                }
                Event::Client(Err(e)) => return self.closed_by(EndReason::ClientClosed, Some(e)),
                Event::Upstream(Ok(0)) if self.from_upstream == 0 && client_side == ClientSide::Open => {
                    return self.upstream_gone_silent(client, None).await;
                }
                Event::Upstream(Err(e)) if self.from_upstream == 0 && client_side == ClientSide::Open => {
                    return self.upstream_gone_silent(client, Some(e)).await;
                }
                Event::Upstream(Ok(0)) => {
                    let (_, to_client) = self.observer.take_withheld();
                    if client_side.reads() {
                        let _ = write_within(client, &to_client, idle).await;
                    }
                    let first = match client_side {
                        ClientSide::Open => EndReason::UpstreamClosed,
                        _ => EndReason::ClientClosed,
                    };
                    return self.closed_by(first, None);
                }
                Event::Upstream(Ok(n)) => {
                    self.from_upstream += n as u64;
                    let actions = self.observer.server_bytes(now, &from_upstream[..n], &mut self.recorder);
                    let upgrade = actions.upgrade;
                    if upgrade == Some(Upgrade::Both) {
                        // Secure the upstream before the client hears the server's 220,
                        // so a failure can still be told to the client in plaintext.
                        if let Err(ending) = self.upstream_handshake(client, upstream, shared).await {
                            return ending;
                        }
                    }
                    if client_side.reads()
                        && let Err(e) = write_within(client, &actions.to_client, idle).await
                    {
                        if client_side == ClientSide::Open {
                            return self.closed_by(EndReason::ClientClosed, Some(e));
                        }
                        // Gone after its half-close: still record the server's last word.
                        client_side = ClientSide::Gone;
                    }
                    if let Err(e) = write_within(upstream, &actions.to_upstream, idle).await {
                        return self.closed_by(EndReason::UpstreamClosed, Some(e));
                    }
                    drop(actions);
                    if let Some(upgrade @ (Upgrade::Both | Upgrade::Client)) = upgrade {
                        if let Err(ending) = self.client_handshake(client, shared).await {
                            return ending;
                        }
                        self.observer.tls_started(upgrade);
                    }
                }
                Event::Upstream(Err(e)) => return self.closed_by(EndReason::UpstreamClosed, Some(e)),
                Event::Idle => {
                    let TimedOut { reply, why } = self.observer.timed_out(now, idle);
                    if client_side.reads() && self.observer.between_replies() {
                        self.say_to_client(client, 421, &reply).await;
                    }
                    return Ending::with_error(EndReason::Timeout, why);
                }
                Event::Stop => {
                    if client_side.reads() && self.observer.between_replies() {
                        self.say_to_client(client, 421, "4.3.2 smtptap: shutting down, try again later").await;
                    }
                    return Ending::new(EndReason::Shutdown);
                }
            }
        }
    }

    /// When to give up waiting: after `idle` without a byte, or when what the
    /// client is sending is overdue (a client dribbling a line or a message a
    /// byte at a time would otherwise hold its session for ever).
    fn deadline(&self, idle_deadline: tokio::time::Instant, idle: Duration) -> tokio::time::Instant {
        match self.observer.client_deadline(idle) {
            Some(d) => idle_deadline.min(tokio::time::Instant::from_std(d.at)),
            None => idle_deadline,
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
        // Without a usable upstream there was no conversation: no greeting was
        // ever due, and the proxy's own 421 (if any) is the whole record.
        if self.conversing {
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
        self.recorder.end(end);
        let file = self.recorder.path().display().to_string();
        tracing::info!(
            session = %self.id, client = %self.peer, upstream, reason = %ending.reason,
            error = ending.error.as_deref().unwrap_or(""), exchanges = counts.exchanges, messages = counts.messages,
            bytes_from_client = self.from_client, bytes_from_upstream = self.from_upstream, file,
            "session ended"
        );
    }
}

/// Writes and flushes (TLS buffers writes), bounded in time.
async fn write_within<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], limit: Duration) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let write = async {
        w.write_all(bytes).await?;
        w.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "peer did not accept data in time")),
    }
}

/// A short random id, unique enough to tell sessions apart within a second.
/// Drawn from std's per-process random hash keys: no system call per session.
fn session_id() -> String {
    use std::hash::BuildHasher;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut bits = std::hash::RandomState::new().hash_one(COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    (0..8)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char;
            bits /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_ids_are_short_distinct_and_safe_in_file_names() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| super::session_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 8 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())));
    }
}
