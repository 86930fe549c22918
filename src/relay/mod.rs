//! The proxy's sockets: listeners, the connection cap, shutdown, and one
//! [`connection`] task per client.

mod connection;
mod handshake;
mod stream;

use crate::auth::{FingerprintKey, Redaction};
use crate::record::disk::{QUEUE_LIMIT, RecordQueue, Recorder};
use crate::server::{self, ServerConfig, ServerTls};
use crate::smtp::session::StartTlsPolicy;
use crate::tls::TlsMode;
use crate::tls::ca::{CaError, LocalCa};
use crate::tls::config::{self, TlsConfigError, UpstreamTls};
use rustls_pki_types::ServerName;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Everything `smtptap proxy` needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Vec<String>,
    /// `None`: start the built-in test server and relay to it.
    pub upstream: Option<String>,
    pub record_dir: PathBuf,
    pub keep_bodies: bool,
    pub max_connections: usize,
    /// No bytes from either side for this long ends a session.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub tls: TlsSettings,
    /// What AUTH data recordings keep.
    pub redaction: Redaction,
}

/// TLS on both sides, as given on the command line.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub client: TlsMode,
    pub upstream: TlsMode,
    pub upstream_ca: Option<PathBuf>,
    pub insecure_upstream: bool,
    pub ca_dir: PathBuf,
    /// `--cert`/`--key`: shown to clients instead of a leaf from the CA.
    pub cert: Option<(PathBuf, PathBuf)>,
    pub handshake_timeout: Duration,
}

impl TlsSettings {
    /// Who handles the client's STARTTLS (SPEC.md, "TLS translation rules").
    fn policy(&self) -> StartTlsPolicy {
        match (self.client, self.upstream) {
            (TlsMode::Starttls, TlsMode::Starttls) => StartTlsPolicy::Mirror,
            (TlsMode::Starttls, _) => StartTlsPolicy::ProxyOffers,
            (TlsMode::Off, _) => StartTlsPolicy::Refused,
            (TlsMode::Implicit, _) => StartTlsPolicy::AlreadyTls,
        }
    }
}

/// TLS ready to use for every session.
struct TlsPlan {
    settings: TlsSettings,
    /// Towards clients; `None` when the client side is plaintext.
    client: Option<Arc<rustls::ServerConfig>>,
    /// Towards the upstream; `None` when the upstream side is plaintext.
    upstream: Option<UpstreamTls>,
    /// The name the upstream's certificate must carry (and SNI, for a DNS name).
    upstream_name: ServerName<'static>,
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot create the recordings directory {}: {source} (choose another with --record-dir)", dir.display())]
    RecordDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot start the built-in test server: {0}")]
    BuiltinServer(std::io::Error),
    #[error("local CA: {0}")]
    Ca(#[from] CaError),
    #[error("{0}")]
    TlsConfig(#[from] TlsConfigError),
    #[error("--upstream {0:?} is not HOST:PORT")]
    UpstreamAddress(String),
    #[error("cannot start the recorder thread: {0}")]
    Recorder(std::io::Error),
    #[error("cannot load or create the fingerprint key in {}: {source} (choose another with --ca-dir)", dir.display())]
    FingerprintKey { dir: PathBuf, source: std::io::Error },
}

/// What every session of this proxy shares.
struct Shared {
    config: ProxyConfig,
    /// Where to connect for each session.
    upstream_addr: String,
    /// How the upstream is named in recordings and logs.
    upstream_label: String,
    tls: TlsPlan,
    /// Key of the fingerprints of hidden secrets, kept beside the CA.
    fingerprint_key: FingerprintKey,
    /// Where sessions send their records, to be written off the relay path.
    recorder: RecordQueue,
}

/// Runs the proxy until `shutdown` completes, then stops accepting, ends live
/// sessions (each with a complete recording) and returns.
pub async fn run(config: ProxyConfig, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
    raise_open_file_limit(config.max_connections);
    crate::record::writer::ensure_dir(&config.record_dir)
        .map_err(|source| ProxyError::RecordDir { dir: config.record_dir.clone(), source })?;
    let settings = &config.tls;
    let fingerprint_key = FingerprintKey::load_or_create(&settings.ca_dir)
        .map_err(|source| ProxyError::FingerprintKey { dir: settings.ca_dir.clone(), source })?;
    if config.redaction == Redaction::None {
        tracing::warn!("--redact none: recordings will hold passwords and tokens in clear; keep them safe");
    }
    let builtin = config.upstream.is_none();
    let needs_ca =
        (settings.client != TlsMode::Off && settings.cert.is_none()) || (builtin && settings.upstream != TlsMode::Off);
    let ca = if needs_ca { Some(Arc::new(LocalCa::load_or_create_logged(&settings.ca_dir)?)) } else { None };
    let (upstream_addr, upstream_label) = match &config.upstream {
        Some(addr) => (addr.clone(), addr.clone()),
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await.map_err(ProxyError::BuiltinServer)?;
            let addr = listener.local_addr().map_err(ProxyError::BuiltinServer)?;
            let tls = match (&ca, settings.upstream) {
                (Some(ca), mode @ (TlsMode::Starttls | TlsMode::Implicit)) => Some(ServerTls {
                    acceptor: tokio_rustls::TlsAcceptor::from(config::client_facing(ca.clone(), "127.0.0.1")?),
                    implicit: mode == TlsMode::Implicit,
                }),
                _ => None,
            };
            tokio::spawn(server::serve(listener, ServerConfig::default(), tls));
            (addr.to_string(), format!("builtin:{addr}"))
        }
    };
    let upstream_host = host_of(&upstream_addr).ok_or_else(|| ProxyError::UpstreamAddress(upstream_addr.clone()))?;
    let upstream_name = ServerName::try_from(upstream_host.to_owned())
        .map_err(|_| ProxyError::UpstreamAddress(upstream_addr.clone()))?;
    let client_tls = match (settings.client, &settings.cert, &ca) {
        (TlsMode::Off, _, _) => None,
        (_, Some((cert, key)), _) => Some(config::client_facing_fixed(cert, key)?),
        (_, None, Some(ca)) => Some(config::client_facing(ca.clone(), upstream_host)?),
        (_, None, None) => unreachable!("the CA is loaded whenever the client side needs it"),
    };
    let upstream_tls = if settings.upstream == TlsMode::Off {
        None
    } else {
        // The built-in server's certificate comes from the local CA.
        let extra = match (&settings.upstream_ca, &ca) {
            (Some(file), _) => Some(file.clone()),
            (None, Some(ca)) if builtin => Some(ca.cert_path()),
            _ => None,
        };
        if settings.insecure_upstream {
            tracing::warn!(
                "--insecure-upstream: the upstream's certificate is NOT verified; anyone on the path \
                could read and change this mail. Use it only with test servers"
            );
        }
        let roots = config::upstream_roots(extra.as_deref())?;
        Some(UpstreamTls::new(roots, settings.insecure_upstream)?)
    };
    let tls = TlsPlan { settings: settings.clone(), client: client_tls, upstream: upstream_tls, upstream_name };
    let mut listeners = Vec::new();
    for addr in &config.listen {
        let listener =
            TcpListener::bind(addr).await.map_err(|source| ProxyError::Listen { addr: addr.clone(), source })?;
        let local = listener.local_addr().map_err(|source| ProxyError::Listen { addr: addr.clone(), source })?;
        // Machine-readable readiness line (tests and scripts wait for it).
        println!("listening on {local}");
        listeners.push((listener, local));
    }
    tracing::info!(upstream = %upstream_label, record_dir = %config.record_dir.display(), "relaying");
    let max = config.max_connections;
    let recorder = Recorder::start(QUEUE_LIMIT).map_err(ProxyError::Recorder)?;
    let shared =
        Arc::new(Shared { config, upstream_addr, upstream_label, tls, fingerprint_key, recorder: recorder.queue() });
    let sessions = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_loops = Vec::new();
    for (listener, local) in listeners {
        accept_loops.push(tokio::spawn(accept_loop(
            listener,
            local,
            shared.clone(),
            sessions.clone(),
            stop_rx.clone(),
        )));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections; ending live sessions");
    let _ = stop_tx.send(true);
    for task in accept_loops {
        let _ = task.await;
    }
    // Every session holds a permit until its recording is complete.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(Duration::from_secs(10), sessions.acquire_many(all)).await.is_err() {
        tracing::warn!("some sessions did not end within 10 s of shutdown");
    }
    // Every record queued so far reaches the disk before the proxy exits.
    let _ = tokio::task::spawn_blocking(move || recorder.finish()).await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    shared: Arc<Shared>,
    sessions: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match sessions.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    connection::handle(stream, peer, local, &shared, stop).await;
                    drop(permit);
                });
            }
            Err(_) => {
                let limit = shared.config.max_connections;
                tracing::warn!(%peer, limit, "connection refused: too many connections");
                tokio::spawn(refuse(stream, limit));
            }
        }
    }
}

/// Tells a client over the connection cap to come back later.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let reply = format!("421 4.7.0 smtptap: too many connections (limit {limit}), try again later\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Each session holds two sockets (and a recording file): lift the soft limit
/// on open files to the hard one, as servers do, and warn if that is still
/// short of what `--max-connections` needs.
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
    if limit.current != limit.maximum && setrlimit(Resource::Nofile, raised).is_err() {
        tracing::debug!("could not raise the open-files limit");
    }
    let available = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = 3 * max_connections as u64 + 64;
    if available < needed {
        tracing::warn!(
            available,
            needed,
            "the open-files limit is low for --max-connections; \
            raise it (ulimit -n) or lower --max-connections"
        );
    }
}

/// The host part of `HOST:PORT` or `[V6]:PORT`.
pub fn host_of(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_addresses() {
        assert_eq!(super::host_of("mail.example.com:587"), Some("mail.example.com"));
        assert_eq!(super::host_of("[::1]:25"), Some("::1"));
        assert_eq!(super::host_of("127.0.0.1:2525"), Some("127.0.0.1"));
        assert_eq!(super::host_of("nohost"), None);
        assert_eq!(super::host_of(":25"), None);
        assert_eq!(super::host_of("h:port"), None);
    }
}
