//! The replaying client's socket: TCP, TLS from the first byte or after
//! STARTTLS; replies read with [`ReplyParser`], each within a timeout. The
//! receive buffer is handed back on close, so load-mode workers reuse it.

use crate::smtp::reply::{Reply, ReplyParser};
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Why no reply came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("no reply within {0} s")]
    Timeout(u64),
    #[error("no reply (connection closed)")]
    Closed,
    #[error("no reply ({0})")]
    Io(String),
}

/// TLS towards the target: the configuration and the name to verify (SNI).
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Between taking the plain stream and the end of the handshake.
    Gone,
}

pub struct Client {
    conn: Conn,
    parser: ReplyParser,
    /// Received bytes the parser has not consumed yet.
    pending: Vec<u8>,
    timeout: Duration,
}

impl Client {
    /// Connects to `target` within `timeout`, with TLS at once when `tls` is
    /// given. `buffer` is reused for received bytes.
    pub async fn connect(
        target: &str,
        timeout: Duration,
        tls: Option<&TlsTarget>,
        mut buffer: Vec<u8>,
    ) -> Result<Client, String> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("cannot connect to {target}: {e}")),
            Err(_) => return Err(format!("cannot connect to {target}: no answer within {} s", timeout.as_secs())),
        };
        let _ = stream.set_nodelay(true);
        buffer.clear();
        let mut client = Client { conn: Conn::Plain(stream), parser: ReplyParser::default(), pending: buffer, timeout };
        if let Some(tls) = tls {
            client.start_tls(tls).await?;
        }
        Ok(client)
    }

    /// Makes the TLS handshake; bytes received before it are discarded (a
    /// server must send nothing after its `220` to STARTTLS).
    pub async fn start_tls(&mut self, tls: &TlsTarget) -> Result<(), String> {
        let Conn::Plain(tcp) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            return Err("TLS is already on".into());
        };
        self.pending.clear();
        self.parser = ReplyParser::default();
        let connect = tokio_rustls::TlsConnector::from(tls.config.clone()).connect(tls.name.clone(), tcp);
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(stream)) => {
                self.conn = Conn::Tls(Box::new(stream));
                Ok(())
            }
            Ok(Err(e)) => Err(format!("TLS handshake with the target failed: {e}")),
            Err(_) => Err(format!("TLS handshake with the target timed out after {} s", self.timeout.as_secs())),
        }
    }

    /// Writes `bytes` in one go.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let write = async {
            match &mut self.conn {
                Conn::Plain(s) => s.write_all(bytes).await,
                Conn::Tls(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
                Conn::Gone => Err(std::io::ErrorKind::NotConnected.into()),
            }
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_error(e)),
            Err(_) => Err(ClientError::Timeout(self.timeout.as_secs())),
        }
    }

    /// The next complete reply.
    pub async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if !self.pending.is_empty() {
                let (used, reply) = self.parser.feed(&self.pending);
                self.pending.drain(..used);
                if let Some(reply) = reply {
                    return Ok(reply);
                }
            }
            self.pending.reserve(16 * 1024);
            let read = async {
                match &mut self.conn {
                    Conn::Plain(s) => s.read_buf(&mut self.pending).await,
                    Conn::Tls(s) => s.read_buf(&mut self.pending).await,
                    Conn::Gone => Err(std::io::ErrorKind::NotConnected.into()),
                }
            };
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(0)) => return Err(ClientError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(io_error(e)),
                Err(_) => return Err(ClientError::Timeout(self.timeout.as_secs())),
            }
        }
    }

    /// Closes the connection; returns the receive buffer for reuse.
    pub async fn close(self) -> Vec<u8> {
        let limit = Duration::from_secs(1);
        match self.conn {
            Conn::Plain(mut s) => drop(tokio::time::timeout(limit, s.shutdown()).await),
            Conn::Tls(mut s) => drop(tokio::time::timeout(limit, s.shutdown()).await),
            Conn::Gone => {}
        }
        self.pending
    }
}

fn io_error(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::UnexpectedEof => {
            ClientError::Closed
        }
        _ => ClientError::Io(e.to_string()),
    }
}
