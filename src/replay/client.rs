//! The replaying client's socket: plaintext TCP, replies read with
//! [`ReplyParser`], each within a timeout.

use crate::smtp::reply::{Reply, ReplyParser};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

pub struct Client {
    stream: TcpStream,
    parser: ReplyParser,
    /// Received bytes the parser has not consumed yet.
    pending: Vec<u8>,
    timeout: Duration,
}

impl Client {
    /// Connects to `target` within `timeout`.
    pub async fn connect(target: &str, timeout: Duration) -> Result<Client, String> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("cannot connect to {target}: {e}")),
            Err(_) => return Err(format!("cannot connect to {target}: no answer within {} s", timeout.as_secs())),
        };
        let _ = stream.set_nodelay(true);
        Ok(Client { stream, parser: ReplyParser::default(), pending: Vec::new(), timeout })
    }

    /// Writes `bytes` in one go.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match tokio::time::timeout(self.timeout, self.stream.write_all(bytes)).await {
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
            let mut buf = [0u8; 16384];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) => return Err(ClientError::Closed),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(io_error(e)),
                Err(_) => return Err(ClientError::Timeout(self.timeout.as_secs())),
            };
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Closes the write side and drops the connection.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

fn io_error(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => ClientError::Closed,
        _ => ClientError::Io(e.to_string()),
    }
}
