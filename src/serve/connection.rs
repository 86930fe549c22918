//! One client connection: moves bytes between the socket (plaintext or TLS)
//! and a [`ServeSession`], and prints each divergence as it is found.

use super::session::{End, Flow, ServeSession};
use super::{Served, Shared, out};
use crate::tls::TlsMode;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Serves connection `number` to its end; prints its summary line.
pub async fn serve(stream: TcpStream, number: usize, shared: &Shared) -> Served {
    let peer = stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    tracing::info!(connection = number, %peer, "client connected");
    let mut conn = Connection {
        number,
        session: ServeSession::new(shared.script.clone(), shared.tls_mode == TlsMode::Starttls),
        idle: shared.idle_timeout,
    };
    let result = conn.talk(stream, shared).await;
    if let Err(end) = &result {
        conn.session.finish(end);
    }
    conn.report();
    let session = &conn.session;
    tracing::info!(connection = number, end = ?result.err(), diverged = session.diverged, "connection ended");
    out(&format!("connection {number}: {} commands, {} diverged", session.commands, session.diverged));
    Served { diverged: session.diverged > 0 }
}

struct Connection {
    number: usize,
    session: ServeSession,
    idle: Duration,
}

impl Connection {
    /// `Ok` when the session closed the connection; else why it ended.
    async fn talk(&mut self, mut stream: TcpStream, shared: &Shared) -> Result<(), End> {
        match (&shared.acceptor, shared.tls_mode) {
            (Some(acceptor), TlsMode::Implicit) => {
                let mut stream = self.handshake(acceptor, stream).await?;
                self.converse(&mut stream, true).await?;
                let _ = stream.shutdown().await;
            }
            (Some(acceptor), TlsMode::Starttls) => {
                if self.converse(&mut stream, true).await? == Flow::StartTls {
                    let mut stream = self.handshake(acceptor, stream).await?;
                    self.converse(&mut stream, false).await?;
                    let _ = stream.shutdown().await;
                }
            }
            _ => {
                self.converse(&mut stream, true).await?;
                let _ = stream.shutdown().await;
            }
        }
        Ok(())
    }

    async fn handshake(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
        stream: TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, End> {
        let failed = |why: String| End::Failed(format!("TLS handshake failed: {why}"));
        match tokio::time::timeout(self.idle, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                tracing::debug!(connection = self.number, "TLS started");
                self.session.tls_started();
                Ok(stream)
            }
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed("timed out".into())),
        }
    }

    /// Exchanges SMTP until the session closes or switches to TLS.
    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut S, greet: bool) -> Result<Flow, End> {
        let failed = |e: std::io::Error| End::Failed(e.to_string());
        let mut reply = Vec::new();
        if greet && self.session.greeting(&mut reply) == Flow::Close {
            stream.write_all(&reply).await.map_err(failed)?;
            return Ok(Flow::Close);
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            stream.write_all(&reply).await.map_err(failed)?;
            reply.clear();
            let Some(n) = crate::server::read_before_idle(stream, &mut buf, self.idle).await.map_err(failed)? else {
                return Err(End::Timeout);
            };
            if n == 0 {
                return Err(End::Closed);
            }
            let flow = self.session.feed(&buf[..n], &mut reply);
            self.report();
            if flow != Flow::Continue {
                stream.write_all(&reply).await.map_err(failed)?;
                return Ok(flow);
            }
        }
    }

    /// Prints the divergences found since the last call.
    fn report(&mut self) {
        for divergence in self.session.take_report() {
            tracing::info!(connection = self.number, %divergence, "the client diverged from the recording");
            out(&format!("connection {} {divergence}", self.number));
        }
    }
}
