//! The proxy's sockets: listeners, the connection cap, shutdown, and one
//! [`connection`] task per client.

mod connection;

use crate::server::{self, ServerConfig};
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
}

/// What every session of this proxy shares.
struct Shared {
    config: ProxyConfig,
    /// Where to connect for each session.
    upstream_addr: String,
    /// How the upstream is named in recordings and logs.
    upstream_label: String,
}

/// Runs the proxy until `shutdown` completes, then stops accepting, ends live
/// sessions (each with a complete recording) and returns.
pub async fn run(config: ProxyConfig, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
    crate::record::writer::ensure_dir(&config.record_dir)
        .map_err(|source| ProxyError::RecordDir { dir: config.record_dir.clone(), source })?;
    let (upstream_addr, upstream_label) = match &config.upstream {
        Some(addr) => (addr.clone(), addr.clone()),
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await.map_err(ProxyError::BuiltinServer)?;
            let addr = listener.local_addr().map_err(ProxyError::BuiltinServer)?;
            tokio::spawn(server::serve(listener, ServerConfig::default(), None));
            (addr.to_string(), format!("builtin:{addr}"))
        }
    };
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
    let shared = Arc::new(Shared { config, upstream_addr, upstream_label });
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
